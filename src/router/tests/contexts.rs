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
fn another_path_the_agent_lists_for_its_interpreter_needs_no_context() {
    // A venv's python3 (the login PATH's): no realpath, and discovery finds its python3.11.
    let mut r = Router::new();
    let now = Instant::now();
    r.request(1, exec(1, target(serde_json::json!({}))), now);
    let mut aliases: Vec<String> = (0..16)
        .map(|i| format!("/opt/v/bin/python3.{i}x"))
        .collect();
    aliases[3] = "/opt/v/bin/python3.11".into();
    aliases.push("/opt/v/bin/python-too-far".into()); // past the 16 looked at
    let body = serde_json::json!({"proto": 1, "python": "3.11.2", "executable": "/opt/v/bin/python3",
        "realpath": null, "aliases": aliases, "hostname": "h", "uid": 0, "pid": 1});
    hello_body(&mut r, 0, body, now);
    let py = serde_json::json!({"interpreter": "/opt/v/bin/python3.11"});
    r.request(1, module_call(2, target(py)), now);
    assert_eq!(
        r.targets.len(),
        1,
        "a second agent for a path of the agent's own interpreter"
    );
    let far = serde_json::json!({"interpreter": "/opt/v/bin/python-too-far"});
    r.request(1, module_call(3, target(far)), now);
    assert_eq!(r.targets.len(), 2, "only the first 16 aliases count");
    let odd = serde_json::json!({"interpreter": "/usr/bin/python3"});
    r.request(1, module_call(4, target(odd)), now);
    assert_eq!(
        r.targets.len(),
        3,
        "another interpreter still gets its context"
    );
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
    // A bad interpreter is refused when the request is parsed: nothing starts.
    let bad = serde_json::json!({"id": 3, "op": "call", "payload": {"op": "ping"},
        "target": target(serde_json::json!({"interpreter": "python3; rm -rf /"}))});
    let refused = crate::api::parse_request(&serde_json::to_vec(&bad).unwrap_or_default());
    let r3 = refused.expect_err("an interpreter that is not a path or a name");
    assert_eq!(
        (r3.id, r3.kind, r3.host.as_str()),
        (
            3,
            crate::api::ErrorKind::BadRequest,
            "t [python3; rm -rf /]"
        )
    );
    assert_eq!(r.targets.len(), 1);
}

#[test]
fn a_context_gets_at_most_its_window_in_flight_until_credit() {
    use crate::router::CONTEXT_WINDOW;
    let mut r = Router::new();
    let now = Instant::now();
    let t = target(serde_json::json!({}));
    let s = ready(&mut r, &t, now);
    let bt = target(serde_json::json!({"become": sudo("app")}));
    // Five calls of 700 KiB for a become context (3.5 MiB): they wait for its HELLO.
    let big = |id: u64| {
        let payload = serde_json::json!({"op": "run_module", "mode": "warm",
            "req": {"ansible_module": "copy", "params": {"content": "x".repeat(700 << 10)}},
            "manifest": {}, "interpreter": "/usr/bin/python3"});
        request(serde_json::json!({"id": id, "op": "call", "target": bt, "payload": payload}))
    };
    for id in 1..=5 {
        r.request(1, big(id), now);
    }
    let c = id_of(&r, &bt);
    let ctx = r.targets[c].ctx;
    let calls = sent_calls(&r, s);
    assert_eq!(
        calls.len(),
        1,
        "only the spawn_context goes before the HELLO"
    );
    assert_eq!(calls[0].1["op"], "spawn_context");
    written(&mut r, s);
    context_hello(&mut r, c, now);
    // A window's worth moves to the stream (whole frames: it may be passed by one chunk).
    let moved = r.targets[s].out.len();
    assert!(
        (CONTEXT_WINDOW..2 * CONTEXT_WINDOW).contains(&moved),
        "{moved} bytes in flight"
    );
    assert_eq!(r.targets[c].unacked, moved);
    let first = sent_calls(&r, s);
    assert!(first.len() < 5 && !r.targets[c].out.is_empty(), "no window");
    assert!(first
        .iter()
        .all(|(h, v)| h.dst == ctx && v["op"] == "run_module"));
    // No credit, no more: not even for a new call, nor for a CREDIT of the stream's own agent.
    written(&mut r, s);
    r.request(1, exec(6, bt.clone()), now);
    frame_from(&mut r, s, CTX_AGENT, Kind::Credit, 0, 1 << 20, &[], now);
    r.take_touched();
    assert!(r.targets[s].out.is_empty(), "sent past the window");
    // The agent wrote 1 MiB into the context's input: as much more may go.
    frame_from(&mut r, s, ctx, Kind::Credit, 0, 1 << 20, &[], now);
    let second = sent_calls(&r, s);
    assert!(!second.is_empty(), "credit released nothing");
    assert!(r.targets[c].unacked <= CONTEXT_WINDOW + r.targets[s].out.len());
    // Credit for everything: the rest goes, in order.
    written(&mut r, s);
    let all = u32::try_from(r.targets[c].unacked).expect("small");
    frame_from(&mut r, s, ctx, Kind::Credit, 0, all, &[], now);
    let third = sent_calls(&r, s);
    assert!(r.targets[c].out.is_empty(), "frames left behind");
    let handles: Vec<u32> = [first, second, third]
        .concat()
        .iter()
        .map(|(h, _)| h.handle)
        .collect();
    assert_eq!(handles.len(), 6, "{handles:?}");
    assert!(handles.windows(2).all(|w| w[0] < w[1]), "{handles:?}");
}

#[test]
fn the_least_recently_used_idle_become_context_is_recycled() {
    use crate::router::DEFAULT_MAX_INTERPRETERS as MAX;
    let mut r = Router::new();
    let t0 = Instant::now();
    let at = |s: u64| t0 + Duration::from_secs(s);
    let s = ready(&mut r, &target(serde_json::json!({})), t0);
    let user = |i: usize| target(serde_json::json!({"become": sudo(&format!("u{i}"))}));
    let ctxs: Vec<TargetId> = (0..MAX)
        .map(|i| ready(&mut r, &user(i), at(i as u64)))
        .collect();
    // u0 is used again, u1 has a call in flight: u2 is the least recently used idle one.
    let _ = ready(&mut r, &user(0), at(100));
    r.request(1, exec(1, user(1)), at(101));
    let u2 = (ctxs[2], r.targets[ctxs[2]].ctx);
    r.request(1, exec(2, user(MAX)), at(102));
    let mut killed = Vec::new();
    while let Some(a) = r.poll_action() {
        match a {
            Action::Kill(t) => killed.push(t),
            Action::Reply(..) => panic!("a reply: {a:?}"),
            _ => {}
        }
    }
    assert_eq!(killed, vec![u2.0]);
    assert_eq!(r.counters.recycled, 1);
    let close = serde_json::json!({"op": "close_context", "ctx": u2.1});
    let calls = sent_calls(&r, s);
    assert!(
        calls.iter().any(|(h, v)| h.dst == CTX_AGENT && v == &close),
        "{calls:?}"
    );
    assert!(calls.iter().any(|(_, v)| v["op"] == "spawn_context"));
    assert_eq!(r.targets[s].children.len(), MAX);
    assert_eq!(
        r.targets[ctxs[1]].calls.len(),
        1,
        "the busy one was touched"
    );
    for i in (0..MAX).filter(|&i| i != 2) {
        assert_ne!(r.targets[ctxs[i]].phase, crate::router::Phase::Dead, "u{i}");
    }
    // u2 again: a new context, and the next least recently used idle one (u3) goes.
    written(&mut r, s);
    r.request(1, exec(3, user(2)), at(103));
    assert_ne!(id_of(&r, &user(2)), u2.0);
    assert!(r.by_key.len() == MAX + 1 && r.targets[ctxs[3]].phase == crate::router::Phase::Dead);
    assert_eq!(r.counters.recycled, 2);
}

/// A gateway, a bastion behind it, a web host behind the bastion, and a db host behind the
/// gateway (ssh targets as the plugin sends them, `via` nested).
fn hop_tree() -> [serde_json::Value; 4] {
    let gw = serde_json::json!({"transport": "ssh", "host": "gw.example", "name": "gw"});
    let bastion = serde_json::json!({"transport": "ssh", "host": "10.0.0.2", "name": "bastion",
        "via": gw});
    let web = serde_json::json!({"transport": "ssh", "host": "10.0.1.5", "name": "web",
        "via": bastion});
    let db = serde_json::json!({"transport": "ssh", "host": "10.0.0.9", "name": "db",
        "via": gw});
    [gw, bastion, web, db]
}

/// Request ids of the failed replies sent so far, with their kinds, sorted.
fn failed(r: &mut Router) -> Vec<(u64, String)> {
    let mut out: Vec<(u64, String)> = replies(r)
        .iter()
        .filter(|v| v["ok"] == false)
        .map(|v| {
            (
                v["id"].as_u64().unwrap_or(0),
                v["error"]["kind"].to_string(),
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn a_hop_that_ends_fails_the_targets_behind_it_and_no_other() {
    let mut r = Router::new();
    let now = Instant::now();
    let [gw, bastion, web, db] = hop_tree();
    let ids: Vec<TargetId> = [&gw, &bastion, &web, &db]
        .into_iter()
        .map(|s| ready(&mut r, s, now))
        .collect();
    let (g, b, w) = (ids[0], ids[1], ids[2]);
    assert_eq!(r.targets[w].label, "web via bastion");
    for (id, spec) in [(1, &web), (2, &db), (3, &gw), (4, &bastion)] {
        r.request(1, exec(id, spec.clone()), now);
    }
    let web_call = only_call(&r, w);
    let (bctx, wctx) = (r.targets[b].ctx, r.targets[w].ctx);
    written(&mut r, g);
    // The bastion's agent ends (its ssh from the gateway dropped): the gateway says so.
    let end = br#"{"error": "connection_lost", "message": "context 2 ended: Connection reset"}"#;
    let fl = crate::proto::flags::ERROR | crate::proto::flags::EOF;
    frame_from(&mut r, g, bctx, Kind::Reply, fl, 0, end, now);
    let lost = "\"connection_lost\"".to_string();
    assert_eq!(failed(&mut r), vec![(1, lost.clone()), (4, lost)]);
    let close = serde_json::json!({"op": "close_context", "ctx": bctx});
    assert_eq!(sent_calls(&r, g).last().map(|c| &c.1), Some(&close));
    assert!(!r.targets[g].routes.contains_key(&bctx) && !r.targets[g].routes.contains_key(&wctx));
    // A late frame of the web host is dropped; the gateway and the db host carry on.
    frame_from(
        &mut r,
        g,
        wctx,
        Kind::Reply,
        0,
        web_call,
        br#"{"rc": 0}"#,
        now,
    );
    assert!(replies(&mut r).is_empty());
    let (hd, hg) = (client_call(&r, ids[3]), client_call(&r, g));
    let dctx = r.targets[ids[3]].ctx;
    frame_from(&mut r, g, dctx, Kind::Reply, 0, hd, br#"{"rc": 0}"#, now);
    frame_from(
        &mut r,
        g,
        CTX_AGENT,
        Kind::Reply,
        0,
        hg,
        br#"{"rc": 0}"#,
        now,
    );
    assert_eq!(answered(&mut r), vec![2, 3]);
    // The next request for the web host starts the bastion again through the gateway.
    written(&mut r, g);
    r.request(1, exec(5, web), now);
    let calls = sent_calls(&r, g);
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0].1["op"], "spawn_context");
    assert!(calls[0].1["cmd"]
        .as_str()
        .is_some_and(|c| c.contains("10.0.0.2")));
}

#[test]
fn a_lost_hop_stream_fails_every_target_behind_it_and_no_other() {
    let mut r = Router::new();
    let now = Instant::now();
    let [gw, bastion, web, db] = hop_tree();
    let other = target(serde_json::json!({}));
    let ids: Vec<TargetId> = [&gw, &bastion, &web, &db, &other]
        .into_iter()
        .map(|s| ready(&mut r, s, now))
        .collect();
    for (id, spec) in [(1, &web), (2, &db), (3, &gw), (4, &bastion), (5, &other)] {
        r.request(1, exec(id, spec.clone()), now);
    }
    r.target_closed(ids[0], "Connection to gw.example closed by remote host.");
    let lost = "\"connection_lost\"".to_string();
    assert_eq!(
        failed(&mut r),
        (1..=4).map(|i| (i, lost.clone())).collect::<Vec<_>>()
    );
    assert!(ids[..4]
        .iter()
        .all(|&t| r.targets[t].phase == crate::router::Phase::Dead));
    assert_eq!(r.streams(), 1);
    let h = only_call(&r, ids[4]);
    reply(&mut r, ids[4], h, r#"{"rc": 0}"#, now);
    assert_eq!(answered(&mut r), vec![5]);
    // The next request for a host behind it opens the chain anew, from the gateway.
    r.request(1, exec(6, db), now);
    assert!(matches!(r.poll_action(), Some(Action::Spawn(t)) if t != ids[0]));
    assert_eq!(r.streams(), 3, "other, gw and db");
}

#[test]
fn a_host_its_hop_cannot_reach_fails_with_the_hops_reason_and_no_other() {
    let mut r = Router::new();
    let now = Instant::now();
    let [gw, _, _, db] = hop_tree();
    let g = ready(&mut r, &gw, now);
    let d = ready(&mut r, &db, now);
    let web = serde_json::json!({"transport": "ssh", "host": "10.0.0.7", "name": "web7",
        "via": gw});
    r.request(1, exec(1, web.clone()), now);
    r.request(1, exec(2, db), now);
    let w = id_of(&r, &web);
    let spawn = sent_calls(&r, g)
        .into_iter()
        .find(|(_, v)| v["op"] == "spawn_context" && v["ctx"] == r.targets[w].ctx)
        .expect("a spawn_context for web7");
    let cmd = spawn.1["cmd"].as_str().unwrap_or_default();
    assert!(
        cmd.contains("10.0.0.7") && cmd.contains("SPINDLE-VIA-"),
        "{cmd}"
    );
    // The gateway's ssh to it fails: the error says so, classified as a direct start's.
    let err = serde_json::json!({"error": "exited",
        "message": "ssh: connect to host 10.0.0.7 port 22: Connection refused\r\n"});
    let fl = crate::proto::flags::ERROR;
    let body = err.to_string();
    frame_from(
        &mut r,
        g,
        CTX_AGENT,
        Kind::Reply,
        fl,
        spawn.0.handle,
        body.as_bytes(),
        now,
    );
    let e = only_error(&mut r, 1);
    assert_eq!(e["kind"], "unreachable", "{e}");
    assert_eq!(e["host"], "web7 via gw", "{e}");
    let m = e["message"].as_str().unwrap_or_default();
    assert!(
        m.starts_with("via gw: exited: ") && m.contains("Connection refused"),
        "{m}"
    );
    // The gateway and the db host behind it carry on.
    let (h, dctx) = (client_call(&r, d), r.targets[d].ctx);
    frame_from(&mut r, g, dctx, Kind::Reply, 0, h, br#"{"rc": 0}"#, now);
    assert_eq!(answered(&mut r), vec![2]);
    assert_eq!(r.targets[g].phase, crate::router::Phase::Ready);
}

#[test]
fn hosts_behind_a_hop_and_contexts_with_hosts_behind_them_are_not_recycled() {
    let mut r = Router::new();
    r.max_interpreters = 2;
    let t0 = Instant::now();
    let at = |s: u64| t0 + Duration::from_secs(s);
    let gw = serde_json::json!({"transport": "ssh", "host": "gw.example", "name": "gw"});
    let as_user = |u: &str| {
        let mut s = gw.clone();
        s["become"] = sudo(u);
        s
    };
    let behind = |hop: &serde_json::Value, i: u32| {
        serde_json::json!({"transport": "ssh", "host": format!("10.0.0.{i}"),
            "name": format!("db{i}"), "via": hop})
    };
    let g = ready(&mut r, &gw, at(0));
    // The oldest context carries a host of its own; three hosts are behind the gateway.
    let app = ready(&mut r, &as_user("app"), at(1));
    let web = ready(&mut r, &behind(&as_user("app"), 9), at(1));
    let u1 = ready(&mut r, &as_user("u1"), at(2));
    let dbs: Vec<TargetId> = (1..=3)
        .map(|i| ready(&mut r, &behind(&gw, i), at(3)))
        .collect();
    // A third context: the idle one without hosts behind it goes, though it is newer.
    r.request(1, exec(1, as_user("u2")), at(10));
    assert_eq!(r.counters.recycled, 1);
    let dead = |r: &Router, t: TargetId| r.targets[t].phase == crate::router::Phase::Dead;
    assert!(dead(&r, u1));
    assert!(![g, app, web].iter().chain(&dbs).any(|&t| dead(&r, t)));
    assert!(replies(&mut r).is_empty());
}

#[test]
fn close_on_a_hop_that_carries_hosts_closes_only_its_own_contexts() {
    let mut r = Router::new();
    let now = Instant::now();
    let [gw, _, _, db] = hop_tree();
    let mut gw_app = gw.clone();
    gw_app["become"] = sudo("app");
    let g = ready(&mut r, &gw, now);
    let d = ready(&mut r, &db, now);
    let app = ready(&mut r, &gw_app, now);
    r.request(1, exec(1, db.clone()), now);
    r.request(1, exec(2, gw_app.clone()), now);
    // Ansible's reset_connection on the bastion host.
    r.request(
        1,
        request(serde_json::json!({"id": 3, "op": "close", "target": gw})),
        now,
    );
    let mut v: Vec<(u64, serde_json::Value)> = replies(&mut r)
        .into_iter()
        .map(|v| (v["id"].as_u64().unwrap_or(0), v))
        .collect();
    v.sort_by_key(|(id, _)| *id);
    assert_eq!(v.len(), 2, "{v:?}");
    assert_eq!(
        (v[0].0, &v[0].1["error"]["kind"]),
        (2, &"connection_lost".into())
    );
    assert_eq!((v[1].0, &v[1].1["ok"]), (3, &true.into()));
    assert_eq!(r.targets[app].phase, crate::router::Phase::Dead);
    assert_eq!(r.targets[g].phase, crate::router::Phase::Ready);
    let h = client_call(&r, d);
    let dctx = r.targets[d].ctx;
    frame_from(&mut r, g, dctx, Kind::Reply, 0, h, br#"{"rc": 0}"#, now);
    assert_eq!(answered(&mut r), vec![1]);
    // Without hosts behind it, close ends the stream.
    r.request(
        1,
        request(serde_json::json!({"id": 4, "op": "close", "target": db})),
        now,
    );
    r.request(
        1,
        request(serde_json::json!({"id": 5, "op": "close", "target": gw})),
        now,
    );
    assert_eq!(answered(&mut r), vec![4, 5]);
    assert_eq!(r.streams(), 0);
}

#[test]
fn a_become_context_whose_agent_ends_fails_its_calls_as_agent_ended() {
    // Its task killed it (`kill -9 $PPID` under sudo): the stream lives, so the kind is not
    // a lost connection; the stream's own calls carry on.
    let mut r = Router::new();
    let now = Instant::now();
    let plain = target(serde_json::json!({}));
    let root = target(serde_json::json!({"become": sudo("root")}));
    let s = ready(&mut r, &plain, now);
    let c = ready(&mut r, &root, now);
    r.request(1, exec(1, root.clone()), now);
    r.request(1, exec(2, plain.clone()), now);
    written(&mut r, s);
    let end = br#"{"error": "connection_lost", "message": "nested agent ended (exit status 137): Killed"}"#;
    let fl = crate::proto::flags::ERROR | crate::proto::flags::EOF;
    let ctx = r.targets[c].ctx;
    frame_from(&mut r, s, ctx, Kind::Reply, fl, 0, end, now);
    let v = replies(&mut r);
    assert_eq!(v.len(), 1, "{v:?}");
    assert_eq!(
        (&v[0]["id"], &v[0]["error"]["kind"]),
        (&1.into(), &"agent_ended".into())
    );
    assert!(
        v[0]["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("exit status 137")),
        "{v:?}"
    );
    assert_eq!(r.targets[s].phase, crate::router::Phase::Ready);
    assert_eq!(r.targets[c].phase, crate::router::Phase::Dead);
}

/// The gateway, bastion and web host of [`hop_tree`] up, an exec in flight on the web host
/// (id 1) and on the bastion (id 2); then the gateway's agent says the nested agent of the
/// bastion (`bastion`) or of the web host ends with `message`. The failed replies.
fn a_nested_agent_ends(bastion: bool, message: &str) -> (Router, Vec<(u64, String)>) {
    let mut r = Router::new();
    let now = Instant::now();
    let [gw, bastion_spec, web, _db] = hop_tree();
    let ids: Vec<TargetId> = [&gw, &bastion_spec, &web]
        .into_iter()
        .map(|s| ready(&mut r, s, now))
        .collect();
    r.request(1, exec(1, web.clone()), now);
    r.request(1, exec(2, bastion_spec.clone()), now);
    written(&mut r, ids[0]);
    let end = serde_json::json!({"error": "connection_lost", "message": message}).to_string();
    let fl = crate::proto::flags::ERROR | crate::proto::flags::EOF;
    let ctx = r.targets[ids[if bastion { 1 } else { 2 }]].ctx;
    frame_from(&mut r, ids[0], ctx, Kind::Reply, fl, 0, end.as_bytes(), now);
    let f = failed(&mut r);
    (r, f)
}

#[test]
fn a_stream_behind_a_hop_whose_ssh_says_nothing_ended_with_its_agent() {
    // The web host's agent was killed; the bastion's ssh to it exits 255 and says nothing.
    let (r, f) = a_nested_agent_ends(false, "nested agent ended (exit status 255): Killed");
    assert_eq!(f, vec![(1, "\"agent_ended\"".to_string())]);
    assert_eq!(
        r.targets[1].phase,
        crate::router::Phase::Ready,
        "the bastion lives"
    );
}

#[test]
fn behind_a_hop_whose_agent_ended_the_way_in_is_lost() {
    // The bastion's agent was killed by its own task (its ssh from the gateway says nothing).
    let (_, f) = a_nested_agent_ends(true, "nested agent ended (exit status 255)");
    let lost = "\"connection_lost\"".to_string();
    assert_eq!(f, vec![(1, lost), (2, "\"agent_ended\"".to_string())]);
}
