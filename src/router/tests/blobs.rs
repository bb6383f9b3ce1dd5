use super::*;
use base64::Engine as _;
use std::collections::BTreeMap;

/// Puts `data` in the daemon's blob cache as the plugin does (`blob_put`); its hash.
fn blob_put(r: &mut Router, data: &str) -> String {
    let hash = crate::cache::sha256_hex(data.as_bytes());
    let b64 = base64::engine::general_purpose::STANDARD.encode(data);
    let req = serde_json::json!({"id": 900, "op": "blob_put", "hash": hash, "data_b64": b64});
    r.request(1, request(req), Instant::now());
    assert_eq!(answered(r), vec![900]);
    hash
}

/// A module run naming its code by hash, with `blobs` as the plugin sends it
/// (`modexec.call_with_blobs`).
fn run_with(id: u64, t: &serde_json::Value, blobs: &[&String]) -> Request {
    let manifest: serde_json::Map<String, serde_json::Value> = blobs
        .iter()
        .enumerate()
        .map(|(i, h)| (format!("ansible/module_utils/m{i}.py"), (*h).clone().into()))
        .collect();
    let payload = serde_json::json!({"op": "run_module", "mode": "inproc",
        "req": {"ansible_module": "ping", "params": {}}, "manifest": manifest,
        "interpreter": "/usr/bin/python3"});
    request(
        serde_json::json!({"id": id, "op": "call", "target": t, "payload": payload,
        "blobs": blobs}),
    )
}

/// The blobs a CALL carries inline, decompressed, by hash.
fn inline(call: &serde_json::Value) -> BTreeMap<String, String> {
    use std::io::Read as _;
    let mut out = BTreeMap::new();
    for (h, z) in call["blobs_z"].as_object().into_iter().flatten() {
        let packed = base64::engine::general_purpose::STANDARD
            .decode(z.as_str().expect("a string"))
            .expect("base64");
        let mut s = String::new();
        flate2::read::ZlibDecoder::new(&packed[..])
            .read_to_string(&mut s)
            .expect("zlib");
        out.insert(h.clone(), s);
    }
    out
}

#[test]
fn a_calls_blobs_go_to_a_stream_once() {
    let mut r = Router::new();
    let now = Instant::now();
    let t = target(serde_json::json!({}));
    let s = ready(&mut r, &t, now);
    let (a, b, c) = ("A = 1\n", "B = 2\n", "C = 3\n");
    let (ha, hb, hc) = (
        blob_put(&mut r, a),
        blob_put(&mut r, b),
        blob_put(&mut r, c),
    );
    let expect = |pairs: &[(&String, &str)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(h, d)| ((*h).clone(), d.to_string()))
            .collect()
    };
    r.request(1, run_with(1, &t, &[&ha, &hb]), now);
    r.request(1, run_with(2, &t, &[&ha, &hb]), now);
    r.request(1, run_with(3, &t, &[&ha, &hc]), now);
    let calls = sent_calls(&r, s);
    assert_eq!(calls.len(), 3);
    assert_eq!(inline(&calls[0].1), expect(&[(&ha, a), (&hb, b)]));
    assert!(
        calls[1].1.get("blobs_z").is_none(),
        "sent twice: {}",
        calls[1].1
    );
    assert_eq!(inline(&calls[2].1), expect(&[(&hc, c)]));
    assert!(calls
        .iter()
        .all(|(h, v)| h.flags == 0 && v.get("blob_refs").is_none()));
    assert_eq!(r.targets[s].counters.blobs_pushed, 3);
    // Per stream: another host gets them too.
    let other = target(serde_json::json!({"name": "u"}));
    r.request(1, run_with(4, &other, &[&ha]), now);
    let u = id_of(&r, &other);
    assert_eq!(inline(&sent_calls(&r, u)[0].1), expect(&[(&ha, a)]));
    // An agent that says it lacks code it was sent gets it again with the next call.
    written(&mut r, s);
    let h = *r.targets[s].calls.keys().min().expect("calls");
    let err = br#"{"error": "missing_blobs", "message": "not held: ..."}"#;
    frame_from(
        &mut r,
        s,
        CTX_AGENT,
        Kind::Reply,
        crate::proto::flags::ERROR,
        h,
        err,
        now,
    );
    assert_eq!(only_error(&mut r, 1)["kind"], "remote");
    r.request(1, run_with(5, &t, &[&ha]), now);
    assert_eq!(inline(&sent_calls(&r, s)[0].1), expect(&[(&ha, a)]));
}

#[test]
fn a_call_naming_blobs_the_daemon_lacks_gets_missing_blobs() {
    let mut r = Router::new();
    let now = Instant::now();
    let t = target(serde_json::json!({}));
    let s = ready(&mut r, &t, now);
    let a = blob_put(&mut r, "A = 1\n");
    let (b, c) = ("B = 2\n", "C = 3\n");
    let (hb, hc) = (
        crate::cache::sha256_hex(b.as_bytes()),
        crate::cache::sha256_hex(c.as_bytes()),
    );
    r.request(1, run_with(1, &t, &[&a, &hb, &hc]), now);
    let e = only_error(&mut r, 1);
    assert_eq!(e["kind"], "missing_blobs", "{e}");
    assert_eq!(e["missing"], serde_json::json!([hb, hc]), "{e}");
    assert!(sent_calls(&r, s).is_empty(), "the call went out");
    assert!(r.targets[s].calls.is_empty() && r.targets[s].sent_blobs.is_empty());
    // The plugin puts them and asks again: all three go, with the call.
    blob_put(&mut r, b);
    blob_put(&mut r, c);
    r.request(1, run_with(2, &t, &[&a, &hb, &hc]), now);
    let calls = sent_calls(&r, s);
    assert_eq!(calls.len(), 1);
    let mut want = vec![a, hb, hc];
    want.sort();
    assert_eq!(inline(&calls[0].1).into_keys().collect::<Vec<_>>(), want);
}

#[test]
fn a_become_context_gets_blob_refs_its_parent_fills_in() {
    let now = Instant::now();
    let t = target(serde_json::json!({}));
    let bt = target(serde_json::json!({"become": sudo("app")}));
    let mut r = Router::new();
    let s = ready(&mut r, &t, now);
    let c = ready(&mut r, &bt, now);
    let ctx = r.targets[c].ctx;
    let a = blob_put(&mut r, "A = 1\n");
    r.request(1, run_with(1, &bt, &[&a]), now);
    let calls = sent_calls(&r, s);
    assert_eq!(calls.len(), 2, "{calls:?}");
    // First its parent (the stream's agent) stores the code, inline...
    let (h0, store) = &calls[0];
    assert_eq!((h0.dst, h0.flags), (CTX_AGENT, 0));
    assert_eq!(store["op"], "store_blobs");
    assert_eq!(
        inline(store).into_keys().collect::<Vec<_>>(),
        vec![a.clone()]
    );
    // ... then the context's CALL names it by hash, flag REFS.
    let (h1, call) = &calls[1];
    assert_eq!((h1.dst, h1.flags), (ctx, crate::proto::flags::REFS));
    assert_eq!(call["blob_refs"], serde_json::json!([a]));
    assert!(call.get("blobs_z").is_none());
    // Neither the stream's agent nor the context gets it again.
    written(&mut r, s);
    r.request(1, run_with(2, &t, &[&a]), now);
    r.request(1, run_with(3, &bt, &[&a]), now);
    let calls = sent_calls(&r, s);
    assert_eq!(calls.len(), 2);
    assert!(calls
        .iter()
        .all(|(h, v)| h.flags == 0 && v.get("blobs_z").is_none() && v.get("blob_refs").is_none()));
    // `serve --no-hop-cache`: inline to the context.
    let mut r = Router::new();
    r.hop_cache = false;
    let s = ready(&mut r, &t, now);
    ready(&mut r, &bt, now);
    let a = blob_put(&mut r, "A = 1\n");
    r.request(1, run_with(1, &bt, &[&a]), now);
    let calls = sent_calls(&r, s);
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].0.flags, 0);
    assert_eq!(inline(&calls[0].1).into_keys().collect::<Vec<_>>(), vec![a]);
}

#[test]
fn code_for_a_host_behind_two_hops_crosses_each_link_once() {
    let now = Instant::now();
    let gw = serde_json::json!({"transport": "ssh", "host": "gw.example", "name": "gw"});
    let bastion = serde_json::json!({"transport": "ssh", "host": "10.0.0.2", "name": "bastion",
        "via": gw});
    let web = |i: u32| {
        serde_json::json!({"transport": "ssh", "host": format!("10.0.1.{i}"),
            "name": format!("web{i}"), "via": bastion})
    };
    let mut r = Router::new();
    let g = ready(&mut r, &gw, now);
    let b = ready(&mut r, &bastion, now);
    let w1 = ready(&mut r, &web(1), now);
    let w2 = ready(&mut r, &web(2), now);
    let a = blob_put(&mut r, "A = 1\n");
    let refs = crate::proto::flags::REFS;
    r.request(1, run_with(1, &web(1), &[&a]), now);
    let calls = sent_calls(&r, g);
    let got: Vec<(u32, u8, &serde_json::Value)> = calls
        .iter()
        .map(|(h, v)| (h.dst, h.flags, &v["op"]))
        .collect();
    let (bctx, w1ctx, w2ctx) = (r.targets[b].ctx, r.targets[w1].ctx, r.targets[w2].ctx);
    let (store, run) = (&"store_blobs".into(), &"run_module".into());
    // The gateway's agent gets the code inline, the bastion's by reference to it, web1's
    // call by reference to the bastion's: in that order on the one stream.
    assert_eq!(
        got,
        vec![
            (CTX_AGENT, 0, store),
            (bctx, refs, store),
            (w1ctx, refs, run)
        ]
    );
    assert_eq!(
        inline(&calls[0].1).into_keys().collect::<Vec<_>>(),
        vec![a.clone()]
    );
    assert_eq!(calls[1].1["blob_refs"], serde_json::json!([a]));
    assert_eq!(calls[2].1["blob_refs"], serde_json::json!([a]));
    // web2 needs it too: only its own call, by reference.
    written(&mut r, g);
    r.request(1, run_with(2, &web(2), &[&a]), now);
    let calls = sent_calls(&r, g);
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!((calls[0].0.dst, calls[0].0.flags), (w2ctx, refs));
    assert_eq!(calls[0].1["blob_refs"], serde_json::json!([a]));
}

#[test]
fn a_context_missing_code_makes_its_parents_send_it_again_too() {
    // A become context's code comes by reference through its stream's agent; when the context
    // says the code is not there (the parent's bounded store dropped it), both forget it.
    let mut r = Router::new();
    let now = Instant::now();
    let ha = blob_put(&mut r, "import a\n");
    let root = target(serde_json::json!({}));
    let ctx = target(serde_json::json!({"become": sudo("app")}));
    let s = ready(&mut r, &root, now);
    let c = ready(&mut r, &ctx, now);
    r.targets[s].sent_blobs.insert(ha.clone());
    r.targets[c].sent_blobs.insert(ha.clone());
    r.request(1, run_with(1, &ctx, &[&ha]), now);
    written(&mut r, s);
    let h = only_call(&r, c);
    let err = br#"{"error": "missing_blobs", "message": "not there"}"#;
    let cctx = r.targets[c].ctx;
    frame_from(
        &mut r,
        s,
        cctx,
        Kind::Reply,
        crate::proto::flags::ERROR,
        h,
        err,
        now,
    );
    assert_eq!(only_error(&mut r, 1)["kind"], "remote");
    assert!(r.targets[c].sent_blobs.is_empty());
    assert!(r.targets[s].sent_blobs.is_empty(), "the parent forgets too");
}
