//! The generic `call` op with content-addressed blobs: a blob is pushed to a target inline with
//! the first CALL that needs it (zlib-compressed, one frame out, one frame in), never twice to
//! the same stream;
//! a blob the daemon lacks is reported as `missing_blobs`; CALLs over 4 MiB are split in
//! MORE-flagged frames and reassembled by the agent.

mod common;
use base64::Engine as _;
use common::*;
use serde_json::json;
use spindle::cache::sha256_hex;
use spindle::client::ClientError;

#[test]
fn blobs_are_pushed_once_per_stream_inline_with_the_call() {
    let dir = scratch("call_blobs");
    let daemon = Daemon::start(&dir);
    let mut c = daemon.client();
    let spec = &local_specs(1)[0];
    let t = target(spec);
    let small = b"print('hello from a blob')\n".to_vec();
    // Incompressible (blobs travel zlib-compressed), so its CALL still spans frames.
    let big = noise(5 << 20, 0);
    let (hs, hb) = (sha256_hex(&small), sha256_hex(&big));
    let b64 = |d: &[u8]| base64::engine::general_purpose::STANDARD.encode(d);

    // Unknown to the daemon: a clear error naming what is missing.
    match c.call(json!({"op": "call", "target": t, "payload": {"op": "blob_list"}, "blobs": [hs]}))
    {
        Err(ClientError::Api { kind, .. }) => assert_eq!(kind, "missing_blobs"),
        other => panic!("{other:?}"),
    }
    // A wrong hash is refused.
    let bad = c.call(json!({"op": "blob_put", "hash": hb, "data_b64": b64(&small)}));
    assert!(
        matches!(bad, Err(ClientError::Api { ref kind, .. }) if kind == "bad_request"),
        "{bad:?}"
    );

    c.call(json!({"op": "blob_put", "hash": hs, "data_b64": b64(&small)}))
        .unwrap();
    c.call(json!({"op": "blob_put", "hash": hb, "data_b64": b64(&big)}))
        .unwrap();
    c.call(json!({"op": "ping", "target": t})).unwrap();
    let stats = c.call(json!({"op": "stats"})).unwrap();
    match std::env::var("SPINDLE_IO").as_deref() {
        Ok("uring") => assert_eq!(stats["io"], "io_uring"),
        Ok("epoll") => assert_eq!(stats["io"], "epoll"),
        _ => assert!(
            stats["io"] == "io_uring" || stats["io"] == "epoll",
            "{stats}"
        ),
    }
    let before = c.call(json!({"op": "stats"})).unwrap()["targets"]["local0"].clone();

    let v = c
        .call(json!({"op": "call", "target": t, "payload": {"op": "blob_list"}, "blobs": [hs, hb]}))
        .unwrap();
    let mut want = vec![hs.clone(), hb.clone()];
    want.sort();
    assert_eq!(v["hashes"], json!(want));
    let mid = c.call(json!({"op": "stats"})).unwrap()["targets"]["local0"].clone();
    assert_eq!(
        mid["blobs_pushed"].as_u64().unwrap() - before["blobs_pushed"].as_u64().unwrap(),
        2
    );
    assert_eq!(
        mid["calls"].as_u64().unwrap() - before["calls"].as_u64().unwrap(),
        1
    );
    assert_eq!(
        mid["frames_in"].as_u64().unwrap() - before["frames_in"].as_u64().unwrap(),
        1,
        "one REPLY frame"
    );
    assert!(
        mid["frames_out"].as_u64().unwrap() - before["frames_out"].as_u64().unwrap() >= 2,
        "the 7 MiB CALL is split"
    );

    // Second use: nothing pushed again; exactly one frame each way.
    c.call(json!({"op": "call", "target": t, "payload": {"op": "blob_list"}, "blobs": [hs, hb]}))
        .unwrap();
    let after = c.call(json!({"op": "stats"})).unwrap()["targets"]["local0"].clone();
    let d = |k: &str| after[k].as_u64().unwrap() - mid[k].as_u64().unwrap();
    assert_eq!(
        (
            d("blobs_pushed"),
            d("calls"),
            d("frames_out"),
            d("frames_in")
        ),
        (0, 1, 1, 1)
    );
    assert!(
        d("bytes_out") < 1024,
        "no blob bytes re-sent: {}",
        d("bytes_out")
    );
}
