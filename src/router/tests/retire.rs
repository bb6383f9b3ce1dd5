use super::*;

const RETIRE: &[u8] = br#"{"retire": "its interpreter /usr/bin/python3 was replaced on the target since it started"}"#;

#[test]
fn a_retiring_agent_finishes_its_calls_while_new_requests_open_a_new_stream() {
    let mut r = Router::new();
    let now = Instant::now();
    let spec = target(serde_json::json!({}));
    let s = ready(&mut r, &spec, now);
    let root = ready(
        &mut r,
        &target(serde_json::json!({"become": sudo("root")})),
        now,
    );
    r.request(1, exec(1, spec.clone()), now);
    let h = client_call(&r, s);
    // The agent ran a task that replaced its interpreter: it says so once.
    agent_frame(&mut r, s, Kind::Reply, 0, 0, RETIRE);
    assert!(r.targets[s].retiring.is_some());
    assert_ne!(
        r.targets[s].phase,
        crate::router::Phase::Dead,
        "its call still runs"
    );
    // A new request for the same spec (and for its become context) opens anew.
    r.request(1, exec(2, spec.clone()), now);
    let fresh = id_of(&r, &spec);
    assert_ne!(fresh, s);
    assert!(
        !r.by_key.values().any(|&t| t == root),
        "the context behind it is forgotten too"
    );
    // Its call ends: answered, and the retired stream (with its idle context) is closed,
    // nothing failed.
    reply(&mut r, s, h, r#"{"rc": 0}"#, now);
    assert_eq!(answered(&mut r), vec![1]);
    assert_eq!(r.targets[s].phase, crate::router::Phase::Dead);
    assert_eq!(r.targets[root].phase, crate::router::Phase::Dead);
    assert_eq!(r.counters.retired, 1);
    assert!(errors(&mut r).is_empty());
    assert_ne!(r.targets[fresh].phase, crate::router::Phase::Dead);
}

#[test]
fn an_idle_retiring_agent_is_closed_at_once_and_said_once() {
    let mut r = Router::new();
    let now = Instant::now();
    let spec = target(serde_json::json!({}));
    let s = ready(&mut r, &spec, now);
    agent_frame(&mut r, s, Kind::Reply, 0, 0, RETIRE);
    assert_eq!(r.targets[s].phase, crate::router::Phase::Dead);
    assert_eq!(r.counters.retired, 1);
    // Anything else unsolicited is ignored, as before.
    let t = ready(&mut r, &spec, now);
    agent_frame(&mut r, t, Kind::Reply, 0, 0, br#"{"something": "else"}"#);
    assert_ne!(r.targets[t].phase, crate::router::Phase::Dead);
    assert!(errors(&mut r).is_empty());
}

#[test]
fn a_retiring_agent_whose_last_call_timed_out_is_closed_by_the_clock() {
    let mut r = Router::new();
    let now = Instant::now();
    let spec = target(serde_json::json!({}));
    let s = ready(&mut r, &spec, now);
    let call = serde_json::json!({"id": 1, "op": "exec", "target": spec, "argv": ["sleep", "9"], "call_timeout": 1});
    r.request(1, request(call), now);
    agent_frame(&mut r, s, Kind::Reply, 0, 0, RETIRE);
    assert_ne!(
        r.targets[s].phase,
        crate::router::Phase::Dead,
        "its call still runs"
    );
    // No frame comes again: the call's deadline passes, then the tick closes the agent.
    for secs in [2, 3] {
        r.tick(now + Duration::from_secs(secs));
    }
    assert!(errors(&mut r).iter().any(|e| e.starts_with("timeout")));
    assert_eq!(r.targets[s].phase, crate::router::Phase::Dead);
    assert_eq!(r.counters.retired, 1);
}
