use super::*;
use crate::router::{MAX_INFLIGHT, MAX_OUTBOUND};

#[test]
fn busy_at_the_inflight_limit() {
    let mut r = Router::new();
    let now = Instant::now();
    let t = target(serde_json::json!({}));
    let s = ready(&mut r, &t, now);
    for id in 1..=MAX_INFLIGHT as u64 {
        r.request(1, exec(id, t.clone()), now);
    }
    assert!(replies(&mut r).is_empty());
    assert_eq!(r.targets[s].calls.len(), MAX_INFLIGHT);
    r.request(1, exec(5000, t.clone()), now);
    let e = only_error(&mut r, 5000);
    assert_eq!(e["kind"], "busy", "{e}");
    assert!(
        e["message"]
            .as_str()
            .is_some_and(|m| m.contains(&format!("{MAX_INFLIGHT} calls already in flight"))),
        "{e}"
    );
    // Nothing was queued for it, and other targets are not concerned.
    assert_eq!(sent_calls(&r, s).len(), MAX_INFLIGHT);
    let other = target(serde_json::json!({"name": "u"}));
    r.request(1, exec(5001, other.clone()), now);
    assert!(replies(&mut r).is_empty());
    assert_eq!(r.targets[id_of(&r, &other)].calls.len(), 1);
    // One answer makes room for one more.
    let h = *r.targets[s].calls.keys().min().expect("calls");
    reply(&mut r, s, h, r#"{"rc": 0}"#, now);
    assert_eq!(answered(&mut r).len(), 1);
    r.request(1, exec(5002, t.clone()), now);
    assert!(replies(&mut r).is_empty());
    assert_eq!(r.targets[s].calls.len(), MAX_INFLIGHT);
    r.request(1, exec(5003, t), now);
    assert_eq!(only_error(&mut r, 5003)["kind"], "busy");
}

#[test]
fn busy_at_the_outbound_limit_when_the_target_stops_reading() {
    let mut r = Router::new();
    let now = Instant::now();
    let t = target(serde_json::json!({}));
    let s = ready(&mut r, &t, now);
    let become_target = target(serde_json::json!({"become": sudo("app")}));
    let c = ready(&mut r, &become_target, now);
    // Calls of 3 MiB each; the target reads none of them.
    let big = |id: u64| {
        let payload = serde_json::json!({"op": "run_module", "mode": "warm",
            "req": {"ansible_module": "copy", "params": {"content": "x".repeat(3 << 20)}},
            "manifest": {}, "interpreter": "/usr/bin/python3"});
        request(serde_json::json!({"id": id, "op": "call", "target": t, "payload": payload}))
    };
    let mut id = 1;
    while r.targets[s].out.len() <= MAX_OUTBOUND {
        r.request(1, big(id), now);
        assert!(replies(&mut r).is_empty(), "refused below the limit");
        id += 1;
    }
    assert_eq!(id, 4, "3 calls of 3 MiB pass the 8 MiB limit");
    // Any further request for the stream, or for a context it carries, is refused.
    r.request(1, big(10), now);
    let e = only_error(&mut r, 10);
    assert_eq!(e["kind"], "busy", "{e}");
    assert!(
        e["message"]
            .as_str()
            .is_some_and(|m| m.contains("not reading")),
        "{e}"
    );
    r.request(1, exec(11, t.clone()), now);
    assert_eq!(only_error(&mut r, 11)["kind"], "busy");
    r.request(1, exec(12, become_target.clone()), now);
    assert_eq!(only_error(&mut r, 12)["kind"], "busy");
    assert_eq!(r.targets[s].calls.len(), 3, "not the in-flight limit");
    assert!(r.targets[c].calls.is_empty());
    // Another stream is not concerned.
    r.request(1, exec(13, target(serde_json::json!({"name": "u"}))), now);
    assert!(replies(&mut r).is_empty());
    // Once the target reads, requests pass again.
    written(&mut r, s);
    r.request(1, exec(14, t), now);
    r.request(1, exec(15, become_target), now);
    assert!(replies(&mut r).is_empty());
    assert_eq!(r.targets[c].calls.len(), 1);
}
