use super::*;

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
fn a_host_name_that_cannot_be_a_host_is_unreachable_as_under_stock() {
    let mut r = Router::new();
    let now = Instant::now();
    // Refused when the request is parsed, as ssh would refuse it: the router never sees it.
    for host in ["-oProxyCommand=touch /tmp/x", "bad host", ""] {
        let t = serde_json::json!({"transport": "ssh", "host": host});
        let v = serde_json::json!({"id": 1, "op": "exec", "argv": ["true"], "target": t});
        let e =
            crate::api::parse_request(&serde_json::to_vec(&v).unwrap_or_default()).expect_err(host);
        assert_eq!(e.kind, crate::api::ErrorKind::Unreachable, "{e:?}");
        assert!(e.message.contains("invalid host name"), "{e:?}");
    }
    // A password without the askpass helper is the daemon's to check at spawn time.
    let t = serde_json::json!({"transport": "ssh", "host": "h", "password": "pw"});
    r.request(1, exec(2, t), now);
    assert!(errors(&mut r).is_empty());
    assert_eq!(r.streams(), 1);
}
