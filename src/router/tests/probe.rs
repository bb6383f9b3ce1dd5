use super::*;

/// A ready ssh stream that answered one exec at `t0`.
fn used_ssh_stream(r: &mut Router, t0: Instant) {
    r.request(1, exec(1, ssh_target()), t0);
    hello(r, 0, "/usr/bin/python3", t0);
    let h = only_call(r, 0);
    reply(r, 0, h, r#"{"rc": 0}"#, t0);
    assert_eq!(answered(r), vec![1]);
}

#[test]
fn an_idle_ssh_stream_is_checked_before_use_and_then_used() {
    let mut r = Router::new();
    let t0 = Instant::now();
    used_ssh_stream(&mut r, t0);
    // Within PROBE_AFTER: straight on.
    let soon = t0 + crate::router::PROBE_AFTER / 2;
    r.request(1, exec(2, ssh_target()), soon);
    let h = only_call(&r, 0);
    assert!(queued(&r, 0).contains("\"exec\""));
    reply(&mut r, 0, h, r#"{"rc": 0}"#, soon);
    assert_eq!(answered(&mut r), vec![2]);
    // Idle past it: a ping goes first, the exec waits for its answer.
    let later = soon + crate::router::PROBE_AFTER + Duration::from_secs(1);
    r.targets[0].out.clear();
    r.request(1, exec(3, ssh_target()), later);
    r.request(1, exec(4, ssh_target()), later);
    let probe = only_call(&r, 0);
    let q = queued(&r, 0);
    assert!(q.contains("\"ping\"") && !q.contains("\"exec\""), "{q}");
    reply(&mut r, 0, probe, r#"{"pong": true}"#, later);
    assert_eq!(
        r.targets[0].calls.len(),
        2,
        "both execs sent after the answer"
    );
    assert!(queued(&r, 0).contains("\"exec\""));
    assert!(
        answered(&mut r).is_empty(),
        "the probe's answer is no client's"
    );
}

#[test]
fn a_dead_idle_stream_gives_its_requests_to_a_fresh_one() {
    let mut r = Router::new();
    let t0 = Instant::now();
    used_ssh_stream(&mut r, t0);
    let later = t0 + crate::router::PROBE_AFTER * 3;
    r.request(1, exec(2, ssh_target()), later);
    assert_eq!(r.targets[0].calls.len(), 1, "only the probe");
    // ssh ends (the host rebooted: its kernel reset the connection).
    r.target_closed(0, "Connection reset by peer");
    let e = errors(&mut r);
    assert!(e.is_empty(), "the held request did not fail: {e:?}");
    r.tick(later + Duration::from_millis(100));
    let fresh: Vec<TargetId> = r
        .targets
        .iter()
        .filter(|(_, x)| x.phase != crate::router::Phase::Dead)
        .map(|(t, _)| t)
        .collect();
    assert_eq!(fresh.len(), 1, "one fresh stream");
    let t = fresh[0];
    assert_ne!(t, 0);
    assert!(
        queued(&r, t).contains("\"exec\""),
        "the request went to the fresh stream"
    );
    assert!(matches!(
        r.targets[t].phase,
        crate::router::Phase::Connecting { .. }
    ));
}

#[test]
fn an_unanswered_check_replaces_the_stream_and_a_gone_client_is_forgotten() {
    let mut r = Router::new();
    let t0 = Instant::now();
    used_ssh_stream(&mut r, t0);
    let later = t0 + crate::router::PROBE_AFTER * 3;
    r.request(1, exec(2, ssh_target()), later);
    r.request(2, exec(3, ssh_target()), later);
    r.client_gone(2);
    // No answer within the check's wait (the peer vanished without a reset).
    r.tick(later + crate::router::PROBE_MIN + Duration::from_secs(1));
    assert!(errors(&mut r).is_empty());
    let live: Vec<TargetId> = r
        .targets
        .iter()
        .filter(|(_, x)| x.phase != crate::router::Phase::Dead)
        .map(|(t, _)| t)
        .collect();
    assert_eq!(live.len(), 1);
    assert_eq!(
        r.targets[live[0]].calls.len(),
        1,
        "client 2's request was dropped"
    );
}

#[test]
fn local_streams_and_busy_streams_are_not_checked() {
    let mut r = Router::new();
    let t0 = Instant::now();
    r.request(1, exec(1, target(serde_json::json!({}))), t0);
    hello(&mut r, 0, "/usr/bin/python3", t0);
    let h = only_call(&r, 0);
    reply(&mut r, 0, h, r#"{"rc": 0}"#, t0);
    let later = t0 + crate::router::PROBE_AFTER * 3;
    r.request(1, exec(2, target(serde_json::json!({}))), later);
    assert!(
        !queued(&r, 0).contains("\"ping\""),
        "a local stream has no peer to lose"
    );
    // An ssh stream with a call in flight is in use: no check.
    let mut r = Router::new();
    r.request(1, exec(1, ssh_target()), t0);
    hello(&mut r, 0, "/usr/bin/python3", t0);
    r.request(1, exec(2, ssh_target()), later);
    assert_eq!(r.targets[0].calls.len(), 2);
    assert!(!queued(&r, 0).contains("\"ping\""));
}

#[test]
fn busy_when_too_many_requests_wait_for_a_liveness_check() {
    use crate::router::MAX_INFLIGHT;
    let mut r = Router::new();
    let t0 = Instant::now();
    used_ssh_stream(&mut r, t0);
    let later = t0 + crate::router::PROBE_AFTER * 3;
    for id in 0..MAX_INFLIGHT as u64 {
        r.request(1, exec(100 + id, ssh_target()), later);
    }
    assert!(replies(&mut r).is_empty());
    let probe = only_call(&r, 0);
    r.request(1, exec(5000, ssh_target()), later);
    let e = only_error(&mut r, 5000);
    assert_eq!(e["kind"], "busy", "{e}");
    assert!(
        e["message"]
            .as_str()
            .is_some_and(|m| m.contains("wait for a liveness check")),
        "{e}"
    );
    // The answer lets every held one go.
    reply(&mut r, 0, probe, r#"{"pong": true}"#, later);
    assert!(replies(&mut r).is_empty());
    assert_eq!(r.targets[0].calls.len(), MAX_INFLIGHT);
}
