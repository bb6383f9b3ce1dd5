use super::*;

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
