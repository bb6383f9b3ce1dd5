use super::*;
use crate::proto::flags::{ABORT, EOF};
use crate::router::{CHUNK, LOW_WATER};

/// A local file of `len` bytes in `dir`: its path and content.
fn source(dir: &tempfile::TempDir, len: usize) -> (std::path::PathBuf, Vec<u8>) {
    let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    let path = dir.path().join(format!("src-{len}"));
    scratch::write(&path, &data);
    (path, data)
}

/// A `put` as the plugin sends it (`Client.put`).
fn put(id: u64, src: &std::path::Path, t: &serde_json::Value, extra: serde_json::Value) -> Request {
    let mut v = serde_json::json!({"id": id, "op": "put", "target": t, "src": src,
        "dest": "/etc/motd", "mode": 420});
    if let (Some(o), Some(x)) = (v.as_object_mut(), extra.as_object()) {
        o.extend(x.clone());
    }
    request(v)
}

#[test]
fn put_data_is_queued_only_below_the_low_water_mark() {
    let dir = tempfile::tempdir().expect("scratch dir");
    let (src, data) = source(&dir, 3 << 20);
    let mut r = Router::new();
    let now = Instant::now();
    let t = target(serde_json::json!({}));
    let s = ready(&mut r, &t, now);
    r.request(1, put(1, &src, &t, serde_json::json!({})), now);
    files(&mut r, now);
    let h = only_call(&r, s);
    let (mut got, mut rounds) = (Vec::new(), 0);
    loop {
        // What is queued: under the mark plus one chunk (and its frame header, the CALL).
        let q = r.targets[s].out.len();
        assert!(q < LOW_WATER + CHUNK + 1024, "{q} bytes queued");
        let mut eof = false;
        for (hd, p) in sent(&r, s) {
            if hd.kind == Kind::Call {
                let v: serde_json::Value = serde_json::from_slice(&p).expect("JSON");
                assert_eq!(v["op"], "put_file");
                assert_eq!(
                    (&v["path"], &v["size"], &v["mode"]),
                    (&"/etc/motd".into(), &data.len().into(), &420.into())
                );
                continue;
            }
            assert_eq!((hd.kind, hd.handle), (Kind::Data, h));
            assert!(p.len() <= CHUNK);
            got.extend_from_slice(&p);
            eof = hd.flags & EOF != 0;
        }
        if eof {
            break;
        }
        // The target read it all: the I/O layer refills.
        written(&mut r, s);
        r.refill(s);
        rounds += 1;
    }
    assert_eq!(got, data);
    assert_eq!(rounds, 5, "3 MiB in rounds of 512 KiB + 256 KiB");
    let sha = crate::cache::sha256_hex(&data);
    let answer = serde_json::json!({"path": "/etc/motd", "size": data.len(), "sha256": sha});
    reply(&mut r, s, h, &answer.to_string(), now);
    assert_eq!(answered(&mut r), vec![1]);
}

#[test]
fn a_timed_out_put_is_aborted_and_a_gone_clients_put_completes() {
    let dir = tempfile::tempdir().expect("scratch dir");
    let (src, _) = source(&dir, 2 << 20);
    let mut r = Router::new();
    let t0 = Instant::now();
    let t = target(serde_json::json!({}));
    let s = ready(&mut r, &t, t0);
    r.request(
        1,
        put(1, &src, &t, serde_json::json!({"call_timeout": 2})),
        t0,
    );
    files(&mut r, t0);
    let h = only_call(&r, s);
    written(&mut r, s);
    r.tick(t0 + Duration::from_secs(2));
    assert_eq!(only_error(&mut r, 1)["kind"], "timeout");
    // DATA with ABORT tells the agent to drop the partial file; no more data follows.
    let frames = sent(&r, s);
    assert_eq!(frames.len(), 1, "{frames:?}");
    let (hd, p) = &frames[0];
    assert_eq!(
        (hd.kind, hd.flags, hd.handle, p.len()),
        (Kind::Data, ABORT, h, 0)
    );
    written(&mut r, s);
    r.refill(s);
    assert!(r.targets[s].out.is_empty() && r.targets[s].puts.is_empty());
    // A client that goes away leaves its put to complete (no ABORT), its reply dropped.
    r.request(2, put(2, &src, &t, serde_json::json!({})), t0);
    files(&mut r, t0);
    let h = only_call(&r, s);
    r.client_gone(2);
    assert!(sent(&r, s).iter().all(|(hd, _)| hd.flags & ABORT == 0));
    assert_eq!(r.targets[s].puts.len(), 1, "the put stopped");
    reply(
        &mut r,
        s,
        h,
        r#"{"path": "/etc/motd", "size": 2097152}"#,
        t0,
    );
    assert!(r.poll_action().is_none(), "a reply for a gone client");
}

#[test]
fn a_large_put_to_hosts_behind_a_hop_crosses_the_link_once() {
    let dir = tempfile::tempdir().expect("scratch dir");
    let (src, data) = source(&dir, crate::router::HOP_CACHE_MIN as usize + 1000);
    let sha = crate::cache::sha256_hex(&data);
    let mut r = Router::new();
    let now = Instant::now();
    let gw = serde_json::json!({"transport": "ssh", "host": "gw.example", "name": "gw"});
    let web = |i: u32| {
        serde_json::json!({"transport": "ssh", "host": format!("10.0.1.{i}"),
            "name": format!("web{i}"), "via": gw})
    };
    let g = ready(&mut r, &gw, now);
    let w: Vec<TargetId> = (1..=2).map(|i| ready(&mut r, &web(i), now)).collect();
    r.request(1, put(1, &src, &web(1), serde_json::json!({})), now);
    files(&mut r, now);
    r.request(1, put(2, &src, &web(2), serde_json::json!({})), now);
    files(&mut r, now);
    // The file goes once, into the gateway's cache: no put_file to either web host yet.
    let frames = sent(&r, g);
    let (hd, call) = &frames[0];
    let call: serde_json::Value = serde_json::from_slice(call).expect("JSON");
    assert_eq!((hd.kind, hd.dst), (Kind::Call, CTX_AGENT));
    assert_eq!(
        call,
        serde_json::json!({"op": "cache_put", "sha256": sha, "size": data.len()})
    );
    let fill: Vec<u8> = frames[1..]
        .iter()
        .inspect(|(d, _)| {
            assert_eq!(
                (d.kind, d.handle, d.dst),
                (Kind::Data, hd.handle, CTX_AGENT)
            )
        })
        .flat_map(|(_, p)| p.clone())
        .collect();
    assert_eq!(fill, data);
    written(&mut r, g);
    // Once it is there, the gateway sends it on to each.
    let cached = serde_json::json!({"sha256": sha, "size": data.len()}).to_string();
    reply(&mut r, g, hd.handle, &cached, now);
    let relays = sent_calls(&r, g);
    assert_eq!(relays.len(), 2, "{relays:?}");
    for ((hd, v), &wt) in relays.iter().zip(&w) {
        let handle = client_call(&r, wt);
        assert_eq!(hd.dst, CTX_AGENT);
        assert_eq!(
            (&v["op"], &v["ctx"], &v["sha256"]),
            (
                &"relay_put".into(),
                &r.targets[wt].ctx.into(),
                &sha.clone().into()
            )
        );
        assert_eq!(v["handle"], handle);
        assert_eq!(
            (&v["call"]["op"], &v["call"]["size"]),
            (&"put_file".into(), &data.len().into())
        );
    }
    // Each web host answers its put (the relay's own answer goes to no client).
    for (i, &wt) in w.iter().enumerate() {
        let (ctx, handle) = (r.targets[wt].ctx, client_call(&r, wt));
        let answer = serde_json::json!({"path": "/etc/motd", "size": data.len(), "sha256": sha});
        frame_from(
            &mut r,
            g,
            ctx,
            Kind::Reply,
            0,
            handle,
            answer.to_string().as_bytes(),
            now,
        );
        assert_eq!(answered(&mut r), vec![i as u64 + 1]);
    }
    for (hd, _) in relays {
        reply(
            &mut r,
            g,
            hd.handle,
            &format!(r#"{{"size": {}}}"#, data.len()),
            now,
        );
    }
    assert!(replies(&mut r).is_empty());
    // Again to web1: straight from the cache.
    written(&mut r, g);
    r.request(1, put(3, &src, &web(1), serde_json::json!({})), now);
    files(&mut r, now);
    let calls = sent_calls(&r, g);
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0].1["op"], "relay_put");
}

#[test]
fn a_hops_file_cache_drops_the_least_recently_used_file_for_room() {
    use crate::router::hop_cache::HopEntry;
    use crate::router::HOP_CACHE_BYTES;
    let dir = tempfile::tempdir().expect("scratch dir");
    let (src, data) = source(&dir, crate::router::HOP_CACHE_MIN as usize);
    let mut r = Router::new();
    let now = Instant::now();
    let gw = serde_json::json!({"transport": "ssh", "host": "gw.example", "name": "gw"});
    let web = serde_json::json!({"transport": "ssh", "host": "10.0.1.1", "name": "web1",
        "via": gw});
    let g = ready(&mut r, &gw, now);
    ready(&mut r, &web, now);
    // The daemon's view of the gateway's cache: full, "old" used before "new".
    let half = HOP_CACHE_BYTES / 2;
    for (sha, seq) in [("old", 1), ("new", 2)] {
        let f = HopEntry::Ready { size: half, seq };
        r.targets[g].hop_files.insert(sha.into(), f);
    }
    r.hop_seq = 2;
    r.request(1, put(1, &src, &web, serde_json::json!({})), now);
    files(&mut r, now);
    let calls: Vec<serde_json::Value> = sent(&r, g)
        .into_iter()
        .filter(|(h, _)| h.kind == Kind::Call)
        .map(|(_, p)| serde_json::from_slice(&p).expect("JSON"))
        .collect();
    let sha = crate::cache::sha256_hex(&data);
    assert_eq!(
        calls,
        vec![
            serde_json::json!({"op": "cache_drop", "sha256": "old"}),
            serde_json::json!({"op": "cache_put", "sha256": sha, "size": data.len()}),
        ]
    );
    let kept: std::collections::BTreeSet<&str> =
        r.targets[g].hop_files.keys().map(|k| k.as_str()).collect();
    assert_eq!(kept, ["new", sha.as_str()].into());
}

#[test]
fn a_timed_out_put_behind_a_hop_is_not_relayed_and_is_aborted() {
    let dir = tempfile::tempdir().expect("scratch dir");
    let (src, data) = source(&dir, crate::router::HOP_CACHE_MIN as usize);
    let mut r = Router::new();
    let t0 = Instant::now();
    let gw = serde_json::json!({"transport": "ssh", "host": "gw.example", "name": "gw"});
    let web = |i: u32| {
        serde_json::json!({"transport": "ssh", "host": format!("10.0.1.{i}"),
            "name": format!("web{i}"), "via": gw})
    };
    let g = ready(&mut r, &gw, t0);
    let w1 = ready(&mut r, &web(1), t0);
    let w2 = ready(&mut r, &web(2), t0);
    let timeout = serde_json::json!({"call_timeout": 5});
    r.request(1, put(1, &src, &web(1), timeout.clone()), t0);
    files(&mut r, t0);
    let k1 = client_call(&r, w1);
    let fill = sent(&r, g)[0].0.handle;
    written(&mut r, g);
    // Its deadline passes while the file is still going into the gateway's cache.
    r.tick(t0 + Duration::from_secs(5));
    assert_eq!(only_error(&mut r, 1)["kind"], "timeout");
    let aborts = |r: &Router| -> Vec<(u32, u32)> {
        sent(r, g)
            .iter()
            .filter(|(h, _)| h.kind == Kind::Data && h.flags & crate::proto::flags::ABORT != 0)
            .map(|(h, _)| (h.dst, h.handle))
            .collect()
    };
    assert_eq!(aborts(&r), vec![(r.targets[w1].ctx, k1)]);
    written(&mut r, g);
    // The cache is filled all the same, but nothing is relayed for the forgotten put.
    let cached = serde_json::json!({"sha256": crate::cache::sha256_hex(&data), "size": data.len()});
    reply(
        &mut r,
        g,
        fill,
        &cached.to_string(),
        t0 + Duration::from_secs(6),
    );
    assert!(sent_calls(&r, g).is_empty(), "{:?}", sent_calls(&r, g));
    // A put whose relay is on its way when its deadline passes: aborted on the target.
    let t1 = t0 + Duration::from_secs(10);
    r.request(1, put(2, &src, &web(2), timeout), t1);
    files(&mut r, t1);
    let k2 = client_call(&r, w2);
    assert_eq!(sent_calls(&r, g)[0].1["op"], "relay_put");
    written(&mut r, g);
    r.tick(t1 + Duration::from_secs(5));
    assert_eq!(only_error(&mut r, 2)["kind"], "timeout");
    assert_eq!(aborts(&r), vec![(r.targets[w2].ctx, k2)]);
}

#[test]
fn a_put_into_a_become_context_goes_a_window_at_a_time() {
    use crate::router::CONTEXT_WINDOW;
    let dir = tempfile::tempdir().expect("scratch dir");
    let (src, data) = source(&dir, 5 << 20);
    let mut r = Router::new();
    let now = Instant::now();
    let s = ready(&mut r, &target(serde_json::json!({})), now);
    let bt = target(serde_json::json!({"become": sudo("app")}));
    let c = ready(&mut r, &bt, now);
    let ctx = r.targets[c].ctx;
    r.request(1, put(1, &src, &bt, serde_json::json!({})), now);
    files(&mut r, now);
    let h = client_call(&r, c);
    let mut got = Vec::new();
    let mut eof = false;
    while !eof {
        // The stream writes what it has; the context's data goes on as far as its window.
        loop {
            for (hd, p) in sent(&r, s) {
                assert_eq!(hd.dst, ctx);
                if hd.kind == Kind::Data {
                    assert_eq!(hd.handle, h);
                    got.extend_from_slice(&p);
                    eof |= hd.flags & EOF != 0;
                }
            }
            let before = r.targets[c].unacked;
            written(&mut r, s);
            r.refill(s);
            r.refill(c);
            assert!(r.targets[c].unacked <= CONTEXT_WINDOW + CHUNK + 1024);
            if r.targets[c].unacked == before {
                break;
            }
        }
        assert!(
            eof || r.targets[c].unacked >= CONTEXT_WINDOW,
            "stalled below the window"
        );
        // The agent wrote it into the context's input.
        let n = u32::try_from(r.targets[c].unacked).expect("small");
        frame_from(&mut r, s, ctx, Kind::Credit, 0, n, &[], now);
    }
    assert_eq!(got, data);
}

#[test]
fn a_put_waits_for_its_source_to_open_and_one_that_cannot_fails_alone() {
    let dir = tempfile::tempdir().expect("scratch dir");
    let (src, data) = source(&dir, 1000);
    let mut r = Router::new();
    let now = Instant::now();
    let t = target(serde_json::json!({}));
    let s = ready(&mut r, &t, now);
    r.request(1, put(1, &src, &t, serde_json::json!({})), now);
    // The server is asked to open the source; nothing goes to the target meanwhile.
    let op = r.poll_file_op().expect("a file request");
    let FileOp::Open { token, path, hash } = op else {
        panic!("{op:?}")
    };
    assert_eq!((Some(path.as_str()), hash), (src.to_str(), None));
    assert!(r.targets[s].calls.is_empty() && r.targets[s].out.is_empty());
    // Opened later (by a worker): the CALL and the data go then.
    let o = scratch::open(&src);
    r.file_done(token, FileDone::Opened(o), now);
    let calls = sent_calls(&r, s);
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(
        (&calls[0].1["op"], &calls[0].1["size"]),
        (&"put_file".into(), &1000.into())
    );
    let payload: Vec<u8> = sent(&r, s)
        .into_iter()
        .filter(|(h, _)| h.kind == Kind::Data)
        .flat_map(|(_, p)| p)
        .collect();
    assert_eq!(payload, data);
    written(&mut r, s);
    // A source that cannot be opened fails its call (local_io), and nothing goes out.
    r.request(
        1,
        put(2, &dir.path().join("missing"), &t, serde_json::json!({})),
        now,
    );
    files(&mut r, now);
    let e = only_error(&mut r, 2);
    assert_eq!(e["kind"], "local_io", "{e}");
    assert!(
        e["message"]
            .as_str()
            .is_some_and(|m| m.contains("cannot read")),
        "{e}"
    );
    assert!(r.targets[s].out.is_empty());
    // Opened after its target's stream ended: the client is told so; nothing is queued.
    r.request(1, put(3, &src, &t, serde_json::json!({})), now);
    let Some(FileOp::Open { token, .. }) = r.poll_file_op() else {
        panic!("no open asked for")
    };
    r.target_closed(s, "");
    assert_eq!(only_error(&mut r, 1)["kind"], "connection_lost");
    let o = scratch::open(&src);
    r.file_done(token, FileDone::Opened(o), now);
    assert_eq!(only_error(&mut r, 3)["kind"], "connection_lost");
    assert!(r.targets[s].out.is_empty());
}
