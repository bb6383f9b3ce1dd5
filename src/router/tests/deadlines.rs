use super::*;

#[test]
fn a_timed_out_exec_or_fetch_is_cancelled_on_the_target() {
    let scratch_dir = tempfile::tempdir().expect("scratch dir");
    let dir = scratch_dir.path();
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
    files(&mut r, t0);
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
    assert_eq!(scratch::names(dir), Vec::<String>::new());
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
fn a_call_past_its_call_timeout_gets_timeout_and_a_cancel() {
    let mut r = Router::new();
    let t0 = Instant::now();
    let t = target(serde_json::json!({}));
    r.request(1, exec(1, t.clone()), t0);
    hello(&mut r, 0, "/usr/bin/python3", t0);
    let h = only_call(&r, 0);
    reply(&mut r, 0, h, r#"{"rc": 0}"#, t0);
    assert_eq!(answered(&mut r), vec![1]);
    written(&mut r, 0);
    r.request(
        1,
        module_run(2, t, serde_json::json!({"call_timeout": 5})),
        t0,
    );
    let h = only_call(&r, 0);
    r.tick(t0 + Duration::from_millis(4999));
    assert!(replies(&mut r).is_empty(), "timed out early");
    r.tick(t0 + Duration::from_secs(5));
    let e = only_error(&mut r, 2);
    assert_eq!(e["kind"], "timeout", "{e}");
    assert_eq!(e["host"], "t", "{e}");
    assert!(r.targets[0].calls.is_empty(), "the call is still awaited");
    // The agent is told to stop it: a cancel CALL to its context, after the call itself.
    let calls = sent_calls(&r, 0);
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert_eq!(calls[0].1["op"], "run_module");
    let (h1, cancel) = &calls[1];
    assert_eq!(h1.dst, CTX_AGENT);
    assert_eq!(cancel, &serde_json::json!({"op": "cancel", "handle": h}));
    // Its late reply (and the cancel's) find no call: no second answer, the stream lives on.
    reply(&mut r, 0, h, r#"{"rc": 0}"#, t0 + Duration::from_secs(6));
    reply(&mut r, 0, h1.handle, r#"{"cancelled": true}"#, t0);
    assert!(replies(&mut r).is_empty());
    assert_eq!(r.targets[0].phase, crate::router::Phase::Ready);
}

#[test]
fn an_exec_gets_its_own_timeout_plus_grace_or_its_call_timeout_if_sooner() {
    let grace = crate::router::EXEC_GRACE;
    let t = target(serde_json::json!({}));
    let ex = |id: u64, extra: serde_json::Value| {
        let mut v = serde_json::json!({"id": id, "op": "exec", "shell": "sleep 100",
            "target": t, "timeout": 10});
        if let (Some(o), Some(x)) = (v.as_object_mut(), extra.as_object()) {
            o.extend(x.clone());
        }
        request(v)
    };
    // (extra fields, when the daemon gives up)
    let cases = [
        (serde_json::json!({}), Duration::from_secs(10) + grace),
        (
            serde_json::json!({"call_timeout": 600}),
            Duration::from_secs(10) + grace,
        ),
        (
            serde_json::json!({"call_timeout": 12.5}),
            Duration::from_millis(12500),
        ),
    ];
    for (extra, limit) in cases {
        let mut r = Router::new();
        let t0 = Instant::now();
        r.request(1, ex(1, extra.clone()), t0);
        hello(&mut r, 0, "/usr/bin/python3", t0);
        let h = only_call(&r, 0);
        written(&mut r, 0);
        r.tick(t0 + limit - Duration::from_millis(1));
        assert!(
            replies(&mut r).is_empty(),
            "{extra}: gave up before {limit:?}"
        );
        r.tick(t0 + limit);
        let e = only_error(&mut r, 1);
        assert_eq!(e["kind"], "timeout", "{extra}: {e}");
        let calls = sent_calls(&r, 0);
        assert_eq!(
            calls.iter().map(|c| &c.1).collect::<Vec<_>>(),
            vec![&serde_json::json!({"op": "cancel", "handle": h})],
            "{extra}"
        );
    }
}

#[test]
fn a_become_start_gets_its_prompt_timeout_plus_grace() {
    let grace = crate::router::SPAWN_GRACE;
    let become_target = target(serde_json::json!({"become": sudo("app"), "connect_timeout": 10}));
    // The stream runs; the become context's start is bounded by twice its prompt timeout
    // (10 s) plus the grace, by which the agent's own error would have come.
    let start = |r: &mut Router, t0: Instant| {
        r.request(1, exec(1, target(serde_json::json!({}))), t0);
        hello(r, 0, "/usr/bin/python3", t0);
        let h = only_call(r, 0);
        reply(r, 0, h, r#"{"rc": 0}"#, t0);
        assert_eq!(answered(r), vec![1]);
        r.request(1, exec(2, become_target.clone()), t0);
        assert!(replies(r).is_empty());
        id_of(r, &become_target)
    };
    let mut r = Router::new();
    let t0 = Instant::now();
    let c = start(&mut r, t0);
    let limit = Duration::from_secs(20) + grace;
    r.tick(t0 + limit - Duration::from_millis(1));
    assert!(replies(&mut r).is_empty(), "gave up before {limit:?}");
    r.tick(t0 + limit);
    let e = only_error(&mut r, 2);
    assert_eq!(e["kind"], "timeout", "{e}");
    assert_eq!(e["host"], "t (sudo:app)", "{e}");
    let ctx = r.targets[c].ctx;
    let last = sent_calls(&r, 0).pop().expect("a CALL").1;
    assert_eq!(last, serde_json::json!({"op": "close_context", "ctx": ctx}));
    // Within it, the agent's answer to spawn_context decides: `become_failed` with its reason.
    let mut r = Router::new();
    let c = start(&mut r, t0);
    let ctx = r.targets[c].ctx;
    let spawn = sent_calls(&r, 0)
        .into_iter()
        .find(|(_, v)| v["op"] == "spawn_context")
        .expect("a spawn_context");
    assert_eq!(spawn.1["ctx"], ctx);
    assert_eq!(spawn.1["timeout"], 10);
    let err = r#"{"error": "incorrect_password", "message": "Sorry, try again."}"#;
    let at = t0 + Duration::from_secs(10);
    frame_from(
        &mut r,
        0,
        CTX_AGENT,
        Kind::Reply,
        crate::proto::flags::ERROR,
        spawn.0.handle,
        err.as_bytes(),
        at,
    );
    let e = only_error(&mut r, 2);
    assert_eq!(e["kind"], "become_failed", "{e}");
    assert_eq!(e["message"], "incorrect_password: Sorry, try again.", "{e}");
}

#[test]
fn poll_timeout_wakes_the_loop_for_the_earliest_deadline_and_not_otherwise() {
    use crate::router::{TICK_MAX, TICK_MIN};
    let mut r = Router::new();
    let t0 = Instant::now();
    assert_eq!(r.poll_timeout(t0), None, "nothing timed: wait for input");
    let t = target(serde_json::json!({}));
    let ex = serde_json::json!({"id": 1, "op": "exec", "argv": ["true"], "target": t,
        "call_timeout": 0.5});
    r.request(1, request(ex), t0);
    hello(&mut r, 0, "/usr/bin/python3", t0);
    // The call's deadline, sooner than the once-a-second tick while a stream lives.
    assert_eq!(r.poll_timeout(t0), Some(Duration::from_millis(500)));
    assert!(r.poll_timeout(t0 + Duration::from_millis(600)) == Some(Duration::ZERO));
    r.tick(t0 + Duration::from_millis(600));
    assert!(errors(&mut r)[0].starts_with("timeout"));
    // Nothing timed is left: a tick a second while the stream lives, never sooner than
    // TICK_MIN after the last one however near a new deadline is.
    let t1 = t0 + Duration::from_millis(600);
    assert_eq!(r.poll_timeout(t1), Some(TICK_MAX));
    let ex = serde_json::json!({"id": 2, "op": "exec", "argv": ["true"], "target": t,
        "call_timeout": 0.001});
    r.request(1, request(ex), t1);
    assert_eq!(r.poll_timeout(t1), Some(TICK_MIN));
    // The stream gone, nothing is timed again.
    r.tick(t1 + TICK_MIN);
    let _ = errors(&mut r);
    r.fail_target(0, crate::api::ErrorKind::ConnectionLost, "gone");
    r.release(0);
    r.tick(t1 + TICK_MIN * 2);
    assert_eq!(r.poll_timeout(t1 + TICK_MIN * 2), None);
}

#[test]
fn a_call_whose_local_file_is_not_ready_by_its_deadline_gets_timeout_and_never_starts() {
    let dir = tempfile::tempdir().expect("scratch dir");
    let src = dir.path().join("src");
    scratch::write(&src, b"data");
    let mut r = Router::new();
    let t0 = Instant::now();
    let t = target(serde_json::json!({}));
    let s = ready(&mut r, &t, t0);
    let put = serde_json::json!({"id": 1, "op": "put", "target": t, "src": src,
        "dest": "/tmp/x", "call_timeout": 1});
    let dest = dir.path().join("fetched");
    let fetch = serde_json::json!({"id": 2, "op": "fetch", "target": t, "src": "/x",
        "dest": dest, "call_timeout": 1});
    r.request(1, request(put), t0);
    r.request(1, request(fetch), t0);
    // The server's file system hangs: neither answer comes before the deadline.
    let (Some(open), Some(create)) = (r.poll_file_op(), r.poll_file_op()) else {
        panic!("no file requests")
    };
    assert_eq!(r.poll_timeout(t0), Some(Duration::from_secs(1)));
    r.tick(t0 + Duration::from_secs(2));
    let kinds: Vec<(u64, String)> = replies(&mut r)
        .iter()
        .map(|v| {
            (
                v["id"].as_u64().unwrap_or(0),
                v["error"]["kind"].to_string(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        vec![(1, "\"timeout\"".into()), (2, "\"timeout\"".into())]
    );
    // The answers come at last: nothing starts, the temp file is removed.
    let FileOp::Open { token, .. } = open else {
        panic!("{open:?}")
    };
    let o = scratch::open(&src);
    r.file_done(token, FileDone::Opened(o), t0 + Duration::from_secs(3));
    let FileOp::Create { token, path } = create else {
        panic!("{create:?}")
    };
    r.file_done(
        token,
        FileDone::Created(Ok(())),
        t0 + Duration::from_secs(3),
    );
    assert_eq!(r.poll_file_op(), Some(FileOp::Remove { token, path }));
    assert!(replies(&mut r).is_empty());
    assert!(r.targets[s].calls.is_empty() && r.targets[s].out.is_empty());
}
