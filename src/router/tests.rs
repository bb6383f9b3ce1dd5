//! The router in memory: requests, target bytes and time in, actions and queued bytes out
//! (no sockets, no processes, a fake clock made of `Instant` offsets).

use super::{Action, Router, TargetId};
use crate::api::Request;
use crate::proto::{encode_frame, FrameHeader, Kind, CTX_AGENT, CTX_CONTROLLER};
use std::time::{Duration, Instant};

fn request(v: serde_json::Value) -> Request {
    serde_json::from_value(v).expect("a valid request")
}

/// A `local` target (the router never spawns it here: the `Spawn` action is not carried out).
fn target(extra: serde_json::Value) -> serde_json::Value {
    let mut t = serde_json::json!({"transport": "local", "name": "t"});
    if let (Some(o), Some(x)) = (t.as_object_mut(), extra.as_object()) {
        o.extend(x.clone());
    }
    t
}

fn exec(id: u64, t: serde_json::Value) -> Request {
    request(serde_json::json!({"id": id, "op": "exec", "argv": ["true"], "target": t}))
}

fn module_call(id: u64, t: serde_json::Value) -> Request {
    let payload = serde_json::json!({"op": "run_module", "mode": "warm", "req": {}});
    request(serde_json::json!({"id": id, "op": "call", "payload": payload, "target": t}))
}

fn hello(r: &mut Router, t: TargetId, executable: &str, now: Instant) {
    let body = serde_json::json!({"proto": 1, "python": "3.11.2", "executable": executable,
        "realpath": executable, "hostname": "h", "uid": 0, "pid": 1});
    let mut b = Vec::new();
    let h = FrameHeader {
        kind: Kind::Hello,
        flags: 0,
        dst: CTX_CONTROLLER,
        src: CTX_AGENT,
        handle: 0,
        reply_to: 0,
    };
    encode_frame(&mut b, &h, body.to_string().as_bytes());
    r.target_bytes(t, &b, now);
}

/// Error kinds of the replies sent so far.
fn errors(r: &mut Router) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(a) = r.poll_action() {
        if let Action::Reply(_, body) = a {
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            if let Some(k) = v["error"]["kind"].as_str() {
                out.push(format!("{k}: {}", v["error"]["message"]));
            }
        }
    }
    out
}

fn queued(r: &Router, t: TargetId) -> String {
    String::from_utf8_lossy(&r.targets[t].out.queued_bytes()).into_owned()
}

#[test]
fn a_slow_agent_start_is_not_a_timeout() {
    let mut r = Router::new();
    let t0 = Instant::now();
    // connect_timeout 1 s: ssh's network limit; the agent gets its bootstrap period.
    r.request(
        1,
        exec(1, target(serde_json::json!({"connect_timeout": 1}))),
        t0,
    );
    r.tick(t0 + Duration::from_secs(5));
    assert!(
        errors(&mut r).is_empty(),
        "failed within the bootstrap period"
    );
    r.tick(t0 + Duration::from_secs(121));
    let e = errors(&mut r);
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].starts_with("timeout") && e[0].contains("no progress"),
        "{e:?}"
    );
}

#[test]
fn a_unix_target_gets_its_connect_timeout_only() {
    let mut r = Router::new();
    let t0 = Instant::now();
    let t = serde_json::json!({"transport": "unix", "host": "/nonexistent/a.sock", "connect_timeout": 3});
    r.request(1, exec(1, t), t0);
    r.tick(t0 + Duration::from_secs(2));
    assert!(errors(&mut r).is_empty());
    r.tick(t0 + Duration::from_millis(3001));
    assert_eq!(errors(&mut r).len(), 1);
}

#[test]
fn progress_moves_the_start_deadline_within_its_limit() {
    let mut r = Router::new();
    let t0 = Instant::now();
    r.request(
        1,
        exec(1, target(serde_json::json!({"connect_timeout": 1}))),
        t0,
    );
    let at = |s| t0 + Duration::from_secs(s);
    // Something happens every 100 s: never 120 s without progress, so it lives on...
    for s in (100..=500).step_by(100) {
        r.progress(0, at(s));
        r.tick(at(s + 10));
        assert!(
            errors(&mut r).is_empty(),
            "failed at {s} s despite progress"
        );
    }
    // ... until the overall limit (5 bootstrap periods), progress or not.
    r.progress(0, at(590));
    r.tick(at(601));
    assert_eq!(errors(&mut r).len(), 1);
}

#[test]
fn a_module_under_the_agents_interpreter_needs_no_context() {
    let mut r = Router::new();
    let now = Instant::now();
    let py = serde_json::json!({"interpreter": "/usr/bin/python3"});
    r.request(1, exec(1, target(serde_json::json!({}))), now);
    hello(&mut r, 0, "/usr/bin/python3", now);
    r.request(1, module_call(2, target(py)), now);
    assert_eq!(
        r.targets.len(),
        1,
        "a second agent for the agent's own interpreter"
    );
    assert!(!queued(&r, 0).contains("spawn_context"));
}

#[test]
fn another_interpreter_gets_a_context_on_the_same_stream() {
    let mut r = Router::new();
    let now = Instant::now();
    r.request(1, exec(1, target(serde_json::json!({}))), now);
    hello(&mut r, 0, "/root/.pyenv/versions/3.12.1/bin/python3", now);
    let venv = serde_json::json!({"interpreter": "/opt/venv/bin/python"});
    r.request(1, module_call(2, target(venv.clone())), now);
    r.request(1, module_call(3, target(venv)), now);
    assert_eq!(r.streams(), 2, "one stream and one interpreter context");
    assert_eq!(r.targets.len(), 2);
    let q = queued(&r, 0);
    assert_eq!(q.matches("spawn_context").count(), 1, "{q}");
    assert!(q.contains(r#""python":"/opt/venv/bin/python""#), "{q}");
    assert!(q.contains("SPINDLE-PY-"), "{q}");
    assert!(!r
        .targets
        .iter()
        .any(|(_, x)| x.parent.is_none() && x.ctx != CTX_AGENT));
}

#[test]
fn before_hello_the_start_interpreter_decides() {
    let mut r = Router::new();
    let now = Instant::now();
    // The stream is opened by a module call naming its interpreter: it starts under it.
    let py = serde_json::json!({"interpreter": "/usr/bin/python3", "python": "/usr/bin/python3"});
    r.request(1, module_call(1, target(py.clone())), now);
    r.request(1, module_call(2, target(py)), now);
    assert_eq!(r.targets.len(), 1);
    // A bad interpreter is refused before anything starts.
    let bad = serde_json::json!({"interpreter": "python3; rm -rf /"});
    r.request(1, module_call(3, target(bad)), now);
    let e = errors(&mut r);
    assert!(e.iter().any(|m| m.starts_with("bad_request")), "{e:?}");
}

/// Feeds the router one frame from target `t`'s own agent.
fn agent_frame(r: &mut Router, t: TargetId, kind: Kind, flags: u8, handle: u32, p: &[u8]) {
    let mut b = Vec::new();
    let h = FrameHeader {
        kind,
        flags,
        dst: CTX_CONTROLLER,
        src: CTX_AGENT,
        handle,
        reply_to: 0,
    };
    encode_frame(&mut b, &h, p);
    r.target_bytes(t, &b, Instant::now());
}

/// The handle of the only call in flight on target `t`.
fn only_call(r: &Router, t: TargetId) -> u32 {
    let handles: Vec<u32> = r.targets[t].calls.keys().copied().collect();
    assert_eq!(handles.len(), 1, "{handles:?}");
    handles[0]
}

/// The body of the CALL cancelling call `h`, as the router writes it.
fn cancel_of(h: u32) -> String {
    serde_json::json!({"op": "cancel", "handle": h}).to_string()
}

#[test]
fn a_timed_out_exec_or_fetch_is_cancelled_on_the_target() {
    let dir = std::env::temp_dir().join(format!("spindle-router-cancel-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let mut r = Router::new();
    let t0 = Instant::now();
    let t = target(serde_json::json!({}));
    let ex = serde_json::json!({"id": 1, "op": "exec", "argv": ["sleep", "1000"], "target": t,
        "call_timeout": 1});
    r.request(1, request(ex), t0);
    hello(&mut r, 0, "/usr/bin/python3", t0);
    let h = only_call(&r, 0);
    r.tick(t0 + Duration::from_secs(2));
    let e = errors(&mut r);
    assert!(e.len() == 1 && e[0].starts_with("timeout"), "{e:?}");
    assert!(queued(&r, 0).contains(&cancel_of(h)), "no cancel queued");
    let dest = dir.join("fetched");
    let f = serde_json::json!({"id": 2, "op": "fetch", "src": "/big", "dest": dest,
        "target": t, "call_timeout": 1});
    r.request(1, request(f), t0);
    let h = only_call(&r, 0);
    agent_frame(
        &mut r,
        0,
        Kind::Data,
        crate::proto::flags::SIZE,
        h,
        &(1u64 << 30).to_be_bytes(),
    );
    agent_frame(&mut r, 0, Kind::Data, 0, h, &[0u8; 1000]);
    r.tick(t0 + Duration::from_secs(2));
    assert!(errors(&mut r)[0].starts_with("timeout"));
    assert!(queued(&r, 0).contains(&cancel_of(h)), "no cancel queued");
    // The temp file is gone, and later DATA for the forgotten call is dropped.
    agent_frame(&mut r, 0, Kind::Data, 0, h, &[0u8; 1000]);
    assert_eq!(std::fs::read_dir(&dir).expect("dir").count(), 0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_gone_clients_exec_is_cancelled_without_a_reply() {
    let mut r = Router::new();
    let now = Instant::now();
    r.request(7, exec(1, target(serde_json::json!({}))), now);
    hello(&mut r, 0, "/usr/bin/python3", now);
    let h = only_call(&r, 0);
    while r.poll_action().is_some() {} // the Spawn
    r.client_gone(7);
    assert!(queued(&r, 0).contains(&cancel_of(h)), "no cancel queued");
    assert!(r.targets[0].calls.is_empty());
    assert!(
        r.poll_action().is_none(),
        "a reply or action for a gone client"
    );
}

#[test]
fn fetch_data_past_the_announced_size_fails_the_call_not_the_stream() {
    let dir = std::env::temp_dir().join(format!("spindle-router-fetch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let mut r = Router::new();
    let now = Instant::now();
    let t = target(serde_json::json!({}));
    let fetch = |id: u64| {
        let dest = dir.join(format!("f{id}"));
        request(
            serde_json::json!({"id": id, "op": "fetch", "src": "/x", "dest": dest,
            "target": t}),
        )
    };
    let size = crate::proto::flags::SIZE;
    r.request(1, fetch(1), now);
    hello(&mut r, 0, "/usr/bin/python3", now);
    let h = only_call(&r, 0);
    agent_frame(&mut r, 0, Kind::Data, size, h, &10u64.to_be_bytes());
    agent_frame(&mut r, 0, Kind::Data, 0, h, &[7u8; 6]);
    assert!(errors(&mut r).is_empty());
    agent_frame(&mut r, 0, Kind::Data, 0, h, &[7u8; 5]);
    let e = errors(&mut r);
    assert!(
        e.len() == 1 && e[0].starts_with("protocol") && e[0].contains("the 10 bytes it announced"),
        "{e:?}"
    );
    assert!(queued(&r, 0).contains(&cancel_of(h)), "no cancel queued");
    // An announcement over the daemon's limit, or a malformed one, fails at once.
    for bad in [(super::FETCH_MAX + 1).to_be_bytes().to_vec(), vec![1, 2, 3]] {
        r.request(1, fetch(2), now);
        let h = only_call(&r, 0);
        agent_frame(&mut r, 0, Kind::Data, size, h, &bad);
        let e = errors(&mut r);
        assert!(e.len() == 1 && e[0].starts_with("protocol"), "{e:?}");
    }
    // Without an announcement, FETCH_MAX still bounds it (checked arithmetic, no panic).
    r.request(1, fetch(3), now);
    let h = only_call(&r, 0);
    if let super::calls::Op::Fetch { received, .. } =
        &mut r.targets[0].calls.get_mut(&h).expect("call").op
    {
        *received = super::FETCH_MAX;
    }
    agent_frame(&mut r, 0, Kind::Data, 0, h, &[0u8; 1]);
    assert!(errors(&mut r)[0].contains("fetch limit"));
    // The stream lives on.
    assert_eq!(r.streams(), 1);
    assert_ne!(r.targets[0].phase, super::target::Phase::Dead);
    assert_eq!(
        std::fs::read_dir(&dir).expect("dir").count(),
        0,
        "temp files left"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_reply_read_with_refused_fetch_data_does_not_complete_it() {
    let dir = std::env::temp_dir().join(format!("spindle-router-batch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let mut r = Router::new();
    let now = Instant::now();
    let dest = dir.join("f");
    let f = serde_json::json!({"id": 1, "op": "fetch", "src": "/x", "dest": dest,
        "target": target(serde_json::json!({}))});
    r.request(1, request(f), now);
    hello(&mut r, 0, "/usr/bin/python3", now);
    let h = only_call(&r, 0);
    // One read: a malformed SIZE frame, then a reply claiming an empty file.
    let mut b = Vec::new();
    let mut hd = FrameHeader {
        kind: Kind::Data,
        flags: crate::proto::flags::SIZE,
        dst: CTX_CONTROLLER,
        src: CTX_AGENT,
        handle: h,
        reply_to: 0,
    };
    encode_frame(&mut b, &hd, &[1]);
    hd.kind = Kind::Reply;
    hd.flags = 0;
    hd.reply_to = h;
    let sha_empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    let body = serde_json::json!({"size": 0, "sha256": sha_empty, "mode": 420});
    encode_frame(&mut b, &hd, body.to_string().as_bytes());
    r.target_bytes(0, &b, now);
    let e = errors(&mut r);
    assert!(e.len() == 1 && e[0].starts_with("protocol"), "{e:?}");
    assert!(!dest.exists());
    let _ = std::fs::remove_dir_all(&dir);
}

/// An ssh target (never spawned here).
fn ssh_target() -> serde_json::Value {
    serde_json::json!({"transport": "ssh", "host": "h.example", "name": "h"})
}

/// The agent answers call `h` of stream `t` with `body`, at `now`.
fn reply(r: &mut Router, t: TargetId, h: u32, body: &str, now: Instant) {
    let mut b = Vec::new();
    let hd = FrameHeader {
        kind: Kind::Reply,
        flags: 0,
        dst: CTX_CONTROLLER,
        src: CTX_AGENT,
        handle: h,
        reply_to: h,
    };
    encode_frame(&mut b, &hd, body.as_bytes());
    r.target_bytes(t, &b, now);
}

/// Replies (not errors) sent so far, by request id.
fn answered(r: &mut Router) -> Vec<u64> {
    let mut out = Vec::new();
    while let Some(a) = r.poll_action() {
        if let Action::Reply(_, body) = a {
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            if v["ok"] == true {
                out.push(v["id"].as_u64().unwrap_or(0));
            }
        }
    }
    out
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
    let soon = t0 + super::PROBE_AFTER / 2;
    r.request(1, exec(2, ssh_target()), soon);
    let h = only_call(&r, 0);
    assert!(queued(&r, 0).contains("\"exec\""));
    reply(&mut r, 0, h, r#"{"rc": 0}"#, soon);
    assert_eq!(answered(&mut r), vec![2]);
    // Idle past it: a ping goes first, the exec waits for its answer.
    let later = soon + super::PROBE_AFTER + Duration::from_secs(1);
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
    let later = t0 + super::PROBE_AFTER * 3;
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
        .filter(|(_, x)| x.phase != super::Phase::Dead)
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
        super::Phase::Connecting { .. }
    ));
}

#[test]
fn an_unanswered_check_replaces_the_stream_and_a_gone_client_is_forgotten() {
    let mut r = Router::new();
    let t0 = Instant::now();
    used_ssh_stream(&mut r, t0);
    let later = t0 + super::PROBE_AFTER * 3;
    r.request(1, exec(2, ssh_target()), later);
    r.request(2, exec(3, ssh_target()), later);
    r.client_gone(2);
    // No answer within the check's wait (the peer vanished without a reset).
    r.tick(later + super::PROBE_MIN + Duration::from_secs(1));
    assert!(errors(&mut r).is_empty());
    let live: Vec<TargetId> = r
        .targets
        .iter()
        .filter(|(_, x)| x.phase != super::Phase::Dead)
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
    let later = t0 + super::PROBE_AFTER * 3;
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
fn a_host_name_that_cannot_be_a_host_is_unreachable_as_under_stock() {
    let mut r = Router::new();
    let now = Instant::now();
    for host in ["-oProxyCommand=touch /tmp/x", "bad host", ""] {
        let t = serde_json::json!({"transport": "ssh", "host": host});
        r.request(1, exec(1, t), now);
        let e = errors(&mut r);
        assert!(
            e.len() == 1 && e[0].starts_with("unreachable: ") && e[0].contains("invalid host name"),
            "{e:?}"
        );
    }
    // A password without the askpass helper is the daemon's to check at spawn time.
    let t = serde_json::json!({"transport": "ssh", "host": "h", "password": "pw"});
    r.request(1, exec(2, t), now);
    assert!(errors(&mut r).is_empty());
    assert_eq!(r.streams(), 1);
}
