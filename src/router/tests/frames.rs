use super::*;
use crate::proto::flags::MORE;

#[test]
fn a_reply_split_over_frames_is_reassembled() {
    let mut r = Router::new();
    let now = Instant::now();
    let t = target(serde_json::json!({}));
    let s = ready(&mut r, &t, now);
    r.request(1, exec(1, t.clone()), now);
    r.request(1, exec(2, t), now);
    let mut h: Vec<u32> = r.targets[s].calls.keys().copied().collect();
    h.sort();
    // The two replies' parts interleave; each is whole only at its frame without MORE.
    let parts: [(u32, u8, &str); 5] = [
        (h[0], MORE, r#"{"rc": 0, "stdout_b64": "aGVs"#),
        (h[1], MORE, r#"{"rc": 3, "#),
        (h[0], MORE, r#"bG8=", "stderr_b64": """#),
        (
            h[1],
            0,
            r#""stdout_b64": "", "stderr_b64": "", "timed_out": false}"#,
        ),
        (h[0], 0, r#", "timed_out": false}"#),
    ];
    for (i, (handle, fl, p)) in parts.into_iter().enumerate() {
        frame_from(
            &mut r,
            s,
            CTX_AGENT,
            Kind::Reply,
            fl,
            handle,
            p.as_bytes(),
            now,
        );
        if i < 3 {
            assert!(replies(&mut r).is_empty(), "answered before its last part");
        }
        if i == 3 {
            let v = replies(&mut r);
            assert_eq!(v.len(), 1);
            assert_eq!(v[0]["id"], 2);
            assert_eq!(v[0]["result"]["rc"], 3);
        }
    }
    let v = replies(&mut r);
    assert_eq!(v.len(), 1);
    assert_eq!(v[0]["id"], 1);
    let want = serde_json::json!({"rc": 0, "stdout_b64": "aGVsbG8=", "stderr_b64": "",
        "timed_out": false});
    assert_eq!(v[0]["result"], want);
}

#[test]
fn a_split_reply_over_the_message_limit_fails_its_call_not_the_stream() {
    let mut r = Router::new();
    let now = Instant::now();
    let t = target(serde_json::json!({}));
    let s = ready(&mut r, &t, now);
    r.request(1, module_run(1, t.clone(), serde_json::json!({})), now);
    let h = only_call(&r, s);
    r.request(1, exec(2, t), now);
    // Full frames up to exactly the limit are kept...
    let mut b = Vec::new();
    let hd = FrameHeader {
        kind: Kind::Reply,
        flags: MORE,
        dst: CTX_CONTROLLER,
        src: CTX_AGENT,
        handle: h,
        reply_to: h,
    };
    encode_frame(&mut b, &hd, &vec![b' '; crate::proto::MAX_PAYLOAD]);
    let full = crate::api::MAX_MESSAGE / crate::proto::MAX_PAYLOAD;
    for _ in 0..full {
        r.target_bytes(s, &b, now);
    }
    assert_eq!(r.targets[s].calls[&h].reply.len(), crate::api::MAX_MESSAGE);
    // ... one byte more and the call's reply is dropped (its memory freed at once) ...
    frame_from(&mut r, s, CTX_AGENT, Kind::Reply, MORE, h, b"{", now);
    assert!(r.targets[s].calls[&h].reply.is_empty());
    r.target_bytes(s, &b, now);
    assert!(r.targets[s].calls[&h].reply.is_empty());
    assert!(replies(&mut r).is_empty());
    // ... and its end fails the call with `protocol`.
    frame_from(&mut r, s, CTX_AGENT, Kind::Reply, 0, h, b"}", now);
    let e = only_error(&mut r, 1);
    assert_eq!(e["kind"], "protocol", "{e}");
    assert!(
        e["message"]
            .as_str()
            .is_some_and(|m| m.contains("reply larger than")),
        "{e}"
    );
    // The stream and its other call carry on.
    let h2 = only_call(&r, s);
    reply(&mut r, s, h2, r#"{"rc": 0}"#, now);
    assert_eq!(answered(&mut r), vec![2]);
    assert_eq!(r.targets[s].phase, crate::router::Phase::Ready);
}

/// A REPLY frame's bytes from stream agent to call `h`, with its header bytes then patched by
/// `patch`.
fn patched_reply(h: u32, patch: impl Fn(&mut [u8])) -> Vec<u8> {
    let mut b = Vec::new();
    let hd = FrameHeader {
        kind: Kind::Reply,
        flags: 0,
        dst: CTX_CONTROLLER,
        src: CTX_AGENT,
        handle: h,
        reply_to: h,
    };
    encode_frame(&mut b, &hd, br#"{"rc": 0}"#);
    patch(&mut b);
    b
}

/// A change to a frame's bytes.
type Patch = Box<dyn Fn(&mut [u8])>;

#[test]
fn malformed_bytes_from_an_agent_fail_its_stream_and_no_other() {
    let over = (crate::proto::MAX_PAYLOAD as u32 + 1).to_be_bytes();
    let cases: [(&str, Patch); 4] = [
        (
            "bad frame magic",
            Box::new(|b| b[..2].copy_from_slice(b"Tr")),
        ),
        ("unknown frame kind 9", Box::new(|b| b[2] = 9)),
        (
            "exceeds the",
            Box::new(move |b| b[4..8].copy_from_slice(&over)),
        ),
        ("bad frame magic", Box::new(|b| b.fill(0))),
    ];
    for (want, patch) in cases {
        let mut r = Router::new();
        let now = Instant::now();
        let a = target(serde_json::json!({"name": "a"}));
        let b = target(serde_json::json!({"name": "b"}));
        let sa = ready(&mut r, &a, now);
        let sb = ready(&mut r, &b, now);
        r.request(1, exec(1, a.clone()), now);
        r.request(1, exec(2, a.clone()), now);
        r.request(1, exec(3, b.clone()), now);
        let mut ha: Vec<u32> = r.targets[sa].calls.keys().copied().collect();
        ha.sort();
        // One read: a good reply, then bad bytes.
        let mut bytes = patched_reply(ha[0], |_| {});
        bytes.extend(patched_reply(ha[1], &patch));
        r.target_bytes(sa, &bytes, now);
        let mut kill = false;
        let mut v = Vec::new();
        while let Some(act) = r.poll_action() {
            match act {
                Action::Reply(_, body) => {
                    v.push(serde_json::from_slice::<serde_json::Value>(&body).expect("JSON"))
                }
                Action::Kill(t) => kill |= t == sa,
                other => panic!("{want}: {other:?}"),
            }
        }
        assert_eq!(v.len(), 2, "{want}: {v:?}");
        assert_eq!(
            (&v[0]["id"], &v[0]["ok"]),
            (&1.into(), &true.into()),
            "{want}"
        );
        let e = &v[1]["error"];
        assert_eq!(
            (&v[1]["id"], &e["kind"]),
            (&2.into(), &"protocol".into()),
            "{want}"
        );
        let m = e["message"].as_str().unwrap_or_default();
        assert!(
            m.starts_with("malformed frame from agent") && m.contains(want),
            "{m}"
        );
        assert!(kill, "{want}: the stream is not killed");
        assert_eq!(r.targets[sa].phase, crate::router::Phase::Dead);
        // Later bytes from it are ignored; the other stream carries on.
        r.target_bytes(sa, &patched_reply(ha[1], |_| {}), now);
        assert!(replies(&mut r).is_empty());
        let hb = only_call(&r, sb);
        reply(&mut r, sb, hb, r#"{"rc": 0}"#, now);
        assert_eq!(answered(&mut r), vec![3]);
        // The next request for `a` starts a new stream.
        r.request(1, exec(4, a.clone()), now);
        assert_ne!(id_of(&r, &a), sa);
        assert!(matches!(r.poll_action(), Some(Action::Spawn(_))));
    }
}

#[test]
fn an_agent_speaking_another_protocol_is_refused() {
    let mut r = Router::new();
    let now = Instant::now();
    let t = target(serde_json::json!({}));
    r.request(1, exec(1, t.clone()), now);
    r.target_bytes(0, crate::proto::BOOT_MARKER, now);
    let body =
        serde_json::json!({"proto": 2, "python": "3.11.2", "executable": "/usr/bin/python3"});
    frame_from(
        &mut r,
        0,
        CTX_AGENT,
        Kind::Hello,
        0,
        0,
        body.to_string().as_bytes(),
        now,
    );
    let e = only_error(&mut r, 1);
    assert_eq!(e["kind"], "protocol", "{e}");
    assert!(
        e["message"]
            .as_str()
            .is_some_and(|m| m.contains("speaks protocol Some(2)")),
        "{e}"
    );
    assert_eq!(r.streams(), 0);
}

#[test]
fn replies_read_before_malformed_bytes_count_for_contexts_too() {
    let mut r = Router::new();
    let now = Instant::now();
    let t = target(serde_json::json!({}));
    let bt = target(serde_json::json!({"become": sudo("app")}));
    let s = ready(&mut r, &t, now);
    let c = ready(&mut r, &bt, now);
    r.request(1, exec(1, t.clone()), now);
    r.request(1, exec(2, bt.clone()), now);
    r.request(1, exec(3, bt), now);
    let hs = only_call(&r, s);
    let mut hc: Vec<u32> = r.targets[c].calls.keys().copied().collect();
    hc.sort();
    // One read: whole replies for the stream's call and the context's first, then garbage.
    let mut bytes = Vec::new();
    for (src, h) in [(CTX_AGENT, hs), (r.targets[c].ctx, hc[0])] {
        let hd = FrameHeader {
            kind: Kind::Reply,
            flags: 0,
            dst: CTX_CONTROLLER,
            src,
            handle: h,
            reply_to: h,
        };
        encode_frame(&mut bytes, &hd, br#"{"rc": 0}"#);
    }
    bytes.extend_from_slice(b"Traceback (most recent call last):\n");
    r.target_bytes(s, &bytes, now);
    let mut v: Vec<(u64, bool)> = replies(&mut r)
        .iter()
        .map(|v| (v["id"].as_u64().unwrap_or(0), v["ok"] == true))
        .collect();
    v.sort();
    assert_eq!(v, vec![(1, true), (2, true), (3, false)]);
}

#[test]
fn replies_in_assembly_over_the_daemons_budget_fail_the_call_that_passes_it() {
    let mut r = Router::new();
    r.replies = crate::router::replies::ReplyBudget::new(10 << 20);
    let now = Instant::now();
    let (ta, tb) = (target(serde_json::json!({})), ssh_target());
    let a = ready(&mut r, &ta, now);
    let b = ready(&mut r, &tb, now);
    r.request(1, exec(1, ta), now);
    r.request(2, exec(2, tb), now);
    let (ha, hb) = (only_call(&r, a), only_call(&r, b));
    let part = vec![b' '; 4 << 20];
    // A holds 8 MiB of its reply; B's first 4 MiB would pass the 10 MiB budget.
    frame_from(&mut r, a, CTX_AGENT, Kind::Reply, MORE, ha, &part, now);
    frame_from(&mut r, a, CTX_AGENT, Kind::Reply, MORE, ha, &part, now);
    frame_from(&mut r, b, CTX_AGENT, Kind::Reply, MORE, hb, &part, now);
    assert_eq!(r.replies.used(), 8 << 20, "B's part was dropped, A's kept");
    frame_from(&mut r, b, CTX_AGENT, Kind::Reply, 0, hb, b"}", now);
    let e = only_error(&mut r, 2);
    assert_eq!(e["kind"], "protocol", "{e}");
    assert!(
        e["message"].as_str().is_some_and(|m| m.contains("budget")),
        "{e}"
    );
    // A completes (its reply is not JSON here; what matters is that it was kept whole).
    frame_from(&mut r, a, CTX_AGENT, Kind::Reply, 0, ha, b"", now);
    assert_eq!(r.replies.used(), 0, "every byte released");
    // A call dropped with its reply half assembled releases its bytes too.
    r.request(1, exec(3, target(serde_json::json!({}))), now);
    let h3 = only_call(&r, a);
    frame_from(&mut r, a, CTX_AGENT, Kind::Reply, MORE, h3, &part, now);
    assert_eq!(r.replies.used(), 4 << 20);
    r.targets[a].calls.remove(&h3);
    assert_eq!(r.replies.used(), 0);
}

#[test]
fn what_a_login_shell_prints_before_the_agent_is_skipped() {
    let mut r = Router::new();
    let now = Instant::now();
    let t = target(serde_json::json!({}));
    r.request(1, exec(1, t.clone()), now);
    // an rc file's greeting, in two reads, the marker cut between them, then HELLO
    let marker = crate::proto::BOOT_MARKER;
    let mut first = b"Welcome to web1\r\n\x1b[0mmanaged by ops\n".to_vec();
    first.extend_from_slice(&marker[..4]);
    r.target_bytes(0, &first, now);
    assert!(!r.started(0));
    let mut rest = marker[4..].to_vec();
    push_hello(&mut rest, &hello_of("/usr/bin/python3"));
    r.target_bytes(0, &rest, now);
    assert!(r.started(0), "the agent's HELLO after the marker is read");
    assert!(errors(&mut r).is_empty());
}

#[test]
fn a_shell_that_prints_without_end_fails_its_stream_and_no_other() {
    let mut r = Router::new();
    let now = Instant::now();
    let a = target(serde_json::json!({"name": "a"}));
    let b = target(serde_json::json!({"name": "b"}));
    r.request(1, exec(1, a.clone()), now);
    let sb = ready(&mut r, &b, now);
    let chunk = vec![b'y'; 8192];
    for _ in 0..(crate::proto::boot::MAX_PREAMBLE / chunk.len() + 1) {
        r.target_bytes(0, &chunk, now);
    }
    let e = only_error(&mut r, 1);
    assert_eq!(e["kind"], "protocol", "{e}");
    let m = e["message"].as_str().unwrap_or_default();
    assert!(m.contains("login script") && m.contains("yyyy"), "{m}");
    assert_eq!(r.streams(), 1);
    assert!(r.started(sb));
}
