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
