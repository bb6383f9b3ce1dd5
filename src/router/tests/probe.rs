use super::*;

/// The targets that are not dead.
fn live_targets(r: &Router) -> Vec<TargetId> {
    r.targets
        .iter()
        .filter(|(_, x)| x.phase != crate::router::Phase::Dead)
        .map(|(t, _)| t)
        .collect()
}

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
    let fresh = live_targets(&r);
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

fn open(id: u64, t: serde_json::Value) -> Request {
    request(serde_json::json!({"id": id, "op": "open", "target": t}))
}

/// The `stream` field of the one reply sent so far (to request `id`).
fn open_answer(r: &mut Router, id: u64) -> String {
    let got = replies(r);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["id"], id, "{got:?}");
    assert_eq!(got[0]["ok"], true, "{got:?}");
    got[0]["result"]["stream"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

#[test]
fn open_starts_a_stream_and_answers_before_it_is_up() {
    let mut r = Router::new();
    let t0 = Instant::now();
    let spec =
        serde_json::json!({"transport": "ssh", "host": "h1", "python": "/usr/bin/python3.12"});
    r.request(1, open(7, spec.clone()), t0);
    assert_eq!(open_answer(&mut r, 7), "opening");
    assert_eq!(r.streams(), 1);
    assert!(matches!(
        r.targets[0].phase,
        crate::router::Phase::Connecting { .. }
    ));
    assert_eq!(
        r.targets[0].spec.python.as_deref(),
        Some("/usr/bin/python3.12"),
        "started under the interpreter the client named"
    );
    // The request that follows goes to that stream, not a second one.
    r.request(1, exec(8, spec.clone()), t0);
    assert_eq!(r.streams(), 1);
    hello(&mut r, 0, "/usr/bin/python3.12", t0);
    let h = only_call(&r, 0);
    reply(&mut r, 0, h, r#"{"rc": 0}"#, t0);
    assert_eq!(answered(&mut r), vec![8]);
    // Open again: ready, nothing sent to the target.
    r.targets[0].out.clear();
    r.request(1, open(9, spec), t0);
    assert_eq!(open_answer(&mut r, 9), "ready");
    assert!(queued(&r, 0).is_empty());
}

#[test]
fn open_checks_an_idle_stream_and_the_next_request_waits_for_that_check() {
    let mut r = Router::new();
    let t0 = Instant::now();
    used_ssh_stream(&mut r, t0);
    let later = t0 + crate::router::PROBE_AFTER * 3;
    r.targets[0].out.clear();
    r.request(1, open(2, ssh_target()), later);
    assert_eq!(open_answer(&mut r, 2), "checking");
    let probe = only_call(&r, 0);
    assert!(queued(&r, 0).contains("\"ping\""));
    // A request while the check runs is held, not checked a second time.
    r.request(1, exec(3, ssh_target()), later);
    r.request(1, open(4, ssh_target()), later);
    assert_eq!(open_answer(&mut r, 4), "checking");
    assert_eq!(r.targets[0].calls.len(), 1, "only the check");
    reply(&mut r, 0, probe, r#"{"pong": true}"#, later);
    let h = only_call(&r, 0);
    reply(&mut r, 0, h, r#"{"rc": 0}"#, later);
    assert_eq!(answered(&mut r), vec![3]);
}

#[test]
fn a_failed_check_started_by_open_leaves_the_next_request_a_fresh_stream() {
    let mut r = Router::new();
    let t0 = Instant::now();
    used_ssh_stream(&mut r, t0);
    let later = t0 + crate::router::PROBE_AFTER * 3;
    r.request(1, open(2, ssh_target()), later);
    assert_eq!(open_answer(&mut r, 2), "checking");
    r.target_closed(0, "Connection reset by peer");
    assert!(errors(&mut r).is_empty(), "open was answered already");
    r.request(1, exec(3, ssh_target()), later);
    let live = live_targets(&r);
    assert_eq!(live.len(), 1);
    assert_ne!(live[0], 0);
    assert!(queued(&r, live[0]).contains("\"exec\""));
}

#[test]
fn open_without_a_target_is_refused() {
    // (parsed: only a target that is given is checked there; the router refuses a missing one)
    let req = crate::api::parse_request(br#"{"id": 3, "op": "open"}"#).expect("parsed");
    let mut r = Router::new();
    r.request(1, req, Instant::now());
    let e = only_error(&mut r, 3);
    assert_eq!(e["kind"], "bad_request", "{e}");
    assert_eq!(r.streams(), 0);
}

#[test]
fn an_agent_killed_mid_call_is_told_from_a_broken_connection() {
    // ssh says nothing after the agent was up (the agent was killed on the target): its
    // calls fail `agent_ended`, which the plugin checks with a ping, not as unreachable.
    let t0 = Instant::now();
    for (after_up, kind) in [
        ("", "agent_ended"),
        ("Killed\n", "agent_ended"),
        (
            "Connection to web1 closed by remote host.\r\n",
            "connection_lost",
        ),
        (
            "client_loop: send disconnect: Broken pipe\r\n",
            "connection_lost",
        ),
    ] {
        let mut r = Router::new();
        used_ssh_stream(&mut r, t0);
        r.request(1, exec(2, ssh_target()), t0);
        let banner = "Authorized use only. Connection closed by admins on abuse.\n";
        r.process_ended(0, &format!("{banner}{after_up}"), after_up);
        let e = errors(&mut r);
        assert_eq!(e.len(), 1, "{after_up:?}: {e:?}");
        assert!(e[0].starts_with(kind), "{after_up:?}: {e:?}");
    }
    // Before HELLO nothing was up to be killed: the start failed, classified as ever.
    let mut r = Router::new();
    r.request(1, exec(1, ssh_target()), t0);
    r.process_ended(0, "", "");
    let e = errors(&mut r);
    assert!(
        e.len() == 1 && e[0].starts_with("connection_lost: \"agent failed to start"),
        "{e:?}"
    );
}
