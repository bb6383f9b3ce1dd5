use super::*;

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
