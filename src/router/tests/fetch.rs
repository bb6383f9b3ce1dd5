use super::*;

#[test]
fn fetch_data_past_the_announced_size_fails_the_call_not_the_stream() {
    let scratch_dir = tempfile::tempdir().expect("scratch dir");
    let dir = scratch_dir.path();
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
    files(&mut r, now);
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
    for bad in [
        (crate::router::FETCH_MAX + 1).to_be_bytes().to_vec(),
        vec![1, 2, 3],
    ] {
        r.request(1, fetch(2), now);
        files(&mut r, now);
        let h = only_call(&r, 0);
        agent_frame(&mut r, 0, Kind::Data, size, h, &bad);
        let e = errors(&mut r);
        assert!(e.len() == 1 && e[0].starts_with("protocol"), "{e:?}");
    }
    // Without an announcement, FETCH_MAX still bounds it (checked arithmetic, no panic).
    r.request(1, fetch(3), now);
    files(&mut r, now);
    let h = only_call(&r, 0);
    if let crate::router::calls::Op::Fetch { received, .. } =
        &mut r.targets[0].calls.get_mut(&h).expect("call").op
    {
        *received = crate::router::FETCH_MAX;
    }
    agent_frame(&mut r, 0, Kind::Data, 0, h, &[0u8; 1]);
    assert!(errors(&mut r)[0].contains("fetch limit"));
    // The stream lives on.
    assert_eq!(r.streams(), 1);
    assert_ne!(r.targets[0].phase, crate::router::target::Phase::Dead);
    assert_eq!(scratch::names(dir), Vec::<String>::new(), "temp files left");
}

#[test]
fn a_reply_read_with_refused_fetch_data_does_not_complete_it() {
    let scratch_dir = tempfile::tempdir().expect("scratch dir");
    let dir = scratch_dir.path();
    let mut r = Router::new();
    let now = Instant::now();
    let dest = dir.join("f");
    let f = serde_json::json!({"id": 1, "op": "fetch", "src": "/x", "dest": dest,
        "target": target(serde_json::json!({}))});
    r.request(1, request(f), now);
    files(&mut r, now);
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
}

#[test]
fn a_fetch_cut_short_fails_and_leaves_no_file() {
    use crate::proto::flags::{EOF, SIZE};
    let dir = tempfile::tempdir().expect("scratch dir");
    let mut r = Router::new();
    let now = Instant::now();
    let t = target(serde_json::json!({}));
    let s = ready(&mut r, &t, now);
    let fetch = |id: u64, name: &str| {
        request(
            serde_json::json!({"id": id, "op": "fetch", "src": "/var/log/syslog",
            "dest": dir.path().join(name), "target": t}),
        )
    };
    let data = b"0123456789";
    let answer = |size: usize| {
        let sha = crate::cache::sha256_hex(&data[..size]);
        serde_json::json!({"size": size, "sha256": sha, "mode": 420}).to_string()
    };
    let start = |r: &mut Router, id: u64, name: &str| {
        r.request(1, fetch(id, name), now);
        files(r, now);
        let h = only_call(r, s);
        frame_from(
            r,
            s,
            CTX_AGENT,
            Kind::Data,
            SIZE,
            h,
            &10u64.to_be_bytes(),
            now,
        );
        frame_from(r, s, CTX_AGENT, Kind::Data, 0, h, &data[..6], now);
        h
    };
    // Whole: 10 bytes announced, sent and reported.
    let h = start(&mut r, 1, "whole");
    frame_from(&mut r, s, CTX_AGENT, Kind::Data, EOF, h, &data[6..], now);
    frame_from(
        &mut r,
        s,
        CTX_AGENT,
        Kind::Reply,
        0,
        h,
        answer(10).as_bytes(),
        now,
    );
    assert_eq!(answered(&mut r), vec![1]);
    assert_eq!(
        scratch::read(&dir.path().join("whole")).expect("fetched"),
        data
    );
    // The reply comes after 6 of the 10 bytes, claiming 10: refused.
    let h = start(&mut r, 2, "short");
    frame_from(&mut r, s, CTX_AGENT, Kind::Data, EOF, h, &[], now);
    frame_from(
        &mut r,
        s,
        CTX_AGENT,
        Kind::Reply,
        0,
        h,
        answer(10).as_bytes(),
        now,
    );
    let e = only_error(&mut r, 2);
    assert_eq!(e["kind"], "protocol", "{e}");
    assert_eq!(e["message"], "fetched 6 bytes, agent reported 10", "{e}");
    // A file that shrank while read: the agent reports what it sent (the announced size is
    // a maximum), and that is the file.
    let h = start(&mut r, 3, "shrank");
    frame_from(&mut r, s, CTX_AGENT, Kind::Data, EOF, h, &[], now);
    frame_from(
        &mut r,
        s,
        CTX_AGENT,
        Kind::Reply,
        0,
        h,
        answer(6).as_bytes(),
        now,
    );
    assert_eq!(answered(&mut r), vec![3]);
    assert_eq!(
        scratch::read(&dir.path().join("shrank")).expect("fetched"),
        &data[..6]
    );
    // The stream ends after 6 of the 10 bytes.
    start(&mut r, 4, "lost");
    r.target_closed(s, "");
    assert_eq!(only_error(&mut r, 4)["kind"], "connection_lost");
    // Neither a destination nor a temp file of the failed ones is left.
    assert_eq!(scratch::names(dir.path()), vec!["shrank", "whole"]);
}

#[test]
fn a_failed_fetch_leaves_the_file_at_its_destination_alone() {
    use crate::proto::flags::SIZE;
    let dir = tempfile::tempdir().expect("scratch dir");
    let dest = dir.path().join("motd");
    scratch::write(&dest, "the fetch of last week\n");
    let mut r = Router::new();
    let now = Instant::now();
    let t = target(serde_json::json!({}));
    let s = ready(&mut r, &t, now);
    let f = serde_json::json!({"id": 1, "op": "fetch", "src": "/etc/motd", "dest": dest,
        "target": t});
    r.request(1, request(f), now);
    files(&mut r, now);
    let h = only_call(&r, s);
    frame_from(
        &mut r,
        s,
        CTX_AGENT,
        Kind::Data,
        SIZE,
        h,
        &10u64.to_be_bytes(),
        now,
    );
    frame_from(&mut r, s, CTX_AGENT, Kind::Data, 0, h, b"012345", now);
    let sha = crate::cache::sha256_hex(b"0123456789");
    let body = serde_json::json!({"size": 10, "sha256": sha, "mode": 420}).to_string();
    frame_from(
        &mut r,
        s,
        CTX_AGENT,
        Kind::Reply,
        0,
        h,
        body.as_bytes(),
        now,
    );
    assert_eq!(only_error(&mut r, 1)["kind"], "protocol");
    // "dest is written through a temp file renamed on success" (docs/api.md): not on failure.
    assert_eq!(
        scratch::read(&dest).as_deref(),
        Some(&b"the fetch of last week\n"[..])
    );
    assert_eq!(scratch::names(dir.path()).len(), 1, "temp file left");
}

#[test]
fn a_fetch_is_answered_once_its_file_is_synced_and_renamed() {
    use crate::proto::flags::{EOF, SIZE};
    let dir = tempfile::tempdir().expect("scratch dir");
    let mut r = Router::new();
    let now = Instant::now();
    let t = target(serde_json::json!({}));
    let s = ready(&mut r, &t, now);
    let fetch = |id: u64, dest: &std::path::Path| {
        request(
            serde_json::json!({"id": id, "op": "fetch", "src": "/etc/motd",
            "dest": dest, "target": t}),
        )
    };
    let dest = dir.path().join("motd");
    r.request(1, fetch(1, &dest), now);
    // Its temp file is created (by the server) before its CALL goes.
    let op = r.poll_file_op().expect("a file request");
    let FileOp::Create { token, path: tmp } = op else {
        panic!("{op:?}")
    };
    assert_eq!(tmp.parent(), Some(dir.path()));
    assert!(r.targets[s].calls.is_empty());
    scratch::write(&tmp, b"");
    r.file_done(token, FileDone::Created(Ok(())), now);
    let h = only_call(&r, s);
    frame_from(
        &mut r,
        s,
        CTX_AGENT,
        Kind::Data,
        SIZE,
        h,
        &4u64.to_be_bytes(),
        now,
    );
    frame_from(&mut r, s, CTX_AGENT, Kind::Data, EOF, h, b"motd", now);
    assert_eq!(scratch::read(&tmp).as_deref(), Some(&b"motd"[..]));
    // The agent's reply asks for the sync and rename; the client waits for them.
    let sha = crate::cache::sha256_hex(b"motd");
    let body = serde_json::json!({"size": 4, "sha256": sha, "mode": 420}).to_string();
    reply(&mut r, s, h, &body, now);
    let op = r.poll_file_op().expect("a file request");
    assert_eq!(
        op,
        FileOp::Finish {
            token,
            tmp: tmp.clone(),
            dest: dest.clone()
        }
    );
    assert!(
        r.poll_action().is_none(),
        "answered before its file was renamed"
    );
    scratch::rename(&tmp, &dest);
    r.file_done(token, FileDone::Finished(Ok(())), now);
    assert_eq!(answered(&mut r), vec![1]);
    assert_eq!(scratch::read(&dest).as_deref(), Some(&b"motd"[..]));
    // A failed sync or rename fails the call (local_io) with the server's reason.
    r.request(1, fetch(2, &dir.path().join("full")), now);
    files(&mut r, now);
    let h = only_call(&r, s);
    frame_from(&mut r, s, CTX_AGENT, Kind::Data, EOF, h, b"", now);
    let body = serde_json::json!({"size": 0, "sha256": "", "mode": 420}).to_string();
    reply(&mut r, s, h, &body, now);
    let Some(FileOp::Finish { token, .. }) = r.poll_file_op() else {
        panic!("no finish asked for")
    };
    r.file_done(
        token,
        FileDone::Finished(Err("cannot write full: disk full".into())),
        now,
    );
    let e = only_error(&mut r, 2);
    assert_eq!(
        (&e["kind"], &e["message"]),
        (&"local_io".into(), &"cannot write full: disk full".into())
    );
    // A temp file that cannot be created fails the call before anything goes to the target.
    written(&mut r, s);
    r.request(1, fetch(3, &dir.path().join("no-such-dir").join("f")), now);
    files(&mut r, now);
    assert_eq!(only_error(&mut r, 3)["kind"], "local_io");
    assert!(r.targets[s].calls.is_empty() && r.targets[s].out.is_empty());
}
