//! Micro-benchmarks of the daemon's hot paths, without I/O: frame encode/decode
//! (`src/proto`), router dispatch of a call and its reply (`src/router/`, driven with
//! requests and agent reply bytes only), blob-cache lookup (`src/cache.rs`).
//!
//! `cargo bench --bench hot_paths` (figures and the exact command in bench/README.md).

use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use spindle::api::Request;
use spindle::cache::{sha256_hex, BlobCache};
use spindle::proto::{self, encode_frame, Decoder, FrameHeader, Kind};
use spindle::router::{Action, Router};
use std::time::Instant;

fn header(kind: Kind, handle: u32, reply_to: u32) -> FrameHeader {
    FrameHeader {
        kind,
        flags: 0,
        dst: proto::CTX_CONTROLLER,
        src: proto::CTX_AGENT,
        handle,
        reply_to,
    }
}

fn frames(c: &mut Criterion) {
    let mut g = c.benchmark_group("frame");
    for size in [64usize, 4096, 256 * 1024] {
        let payload = vec![0x5au8; size];
        let h = header(Kind::Reply, 7, 7);
        g.throughput(Throughput::Bytes(size as u64));
        let mut out = Vec::with_capacity(size + proto::HEADER_LEN);
        g.bench_function(format!("encode/{size}B"), |b| {
            b.iter(|| {
                out.clear();
                encode_frame(&mut out, black_box(&h), black_box(&payload));
                out.len()
            })
        });
        // 16 frames per push, as a read of a busy stream delivers them.
        let mut wire = Vec::new();
        for _ in 0..16 {
            encode_frame(&mut wire, &h, &payload);
        }
        let mut dec = Decoder::default();
        g.throughput(Throughput::Bytes(16 * size as u64));
        g.bench_function(format!("decode/16x{size}B"), |b| {
            b.iter(|| {
                dec.push(black_box(&wire));
                let mut n = 0;
                while let Ok(Some((fh, p))) = dec.next_frame() {
                    n += p.len() + fh.handle as usize;
                }
                n
            })
        });
    }
    g.finish();
}

fn request(id: u64, target: usize) -> Request {
    let v = serde_json::json!({"id": id, "op": "exec", "argv": ["hostname"],
        "target": {"transport": "unix", "host": format!("/nonexistent/agent-{target}.sock")}});
    serde_json::from_value(v).expect("a valid exec request")
}

/// A router with `targets` streams whose agents have said HELLO.
fn ready_router(targets: usize) -> Router {
    let mut r = Router::new();
    let now = Instant::now();
    let hello = br#"{"proto": 1, "python": "3.11.2", "hostname": "bench", "uid": 0}"#;
    for t in 0..targets {
        r.request(0, request(0, t), now);
        let mut b = Vec::new();
        encode_frame(&mut b, &header(Kind::Hello, 0, 0), hello);
        encode_frame(&mut b, &header(Kind::Reply, 0, 1), br#"{"rc": 0}"#);
        r.target_bytes(t, &b, now);
    }
    while r.poll_action().is_some() {}
    r
}

const REPLY: &[u8] =
    br#"{"rc": 0, "stdout_b64": "YmVuY2gK", "stderr_b64": "", "timed_out": false}"#;

fn router(c: &mut Criterion) {
    let mut g = c.benchmark_group("router");
    let calls = 256usize;
    g.throughput(Throughput::Elements(calls as u64));
    // One stream, 256 exec calls one after another: request in, CALL frame queued, REPLY
    // bytes in, client reply out.
    g.bench_function("exec_round_trip/1_target", |b| {
        b.iter_batched(
            || {
                let reqs: Vec<Request> = (0..calls as u64).map(|i| request(i, 0)).collect();
                (ready_router(1), reqs)
            },
            |(mut r, reqs)| {
                let now = Instant::now();
                let mut replies = 0;
                let mut frame = Vec::with_capacity(256);
                for (i, req) in reqs.into_iter().enumerate() {
                    r.request(1, req, now);
                    frame.clear();
                    encode_frame(&mut frame, &header(Kind::Reply, 0, i as u32 + 2), REPLY);
                    r.target_bytes(0, &frame, now);
                    while let Some(a) = r.poll_action() {
                        replies += matches!(a, Action::Reply(..)) as usize;
                    }
                }
                assert_eq!(replies, calls);
                r
            },
            BatchSize::SmallInput,
        )
    });
    // 256 streams, one call each (stream lookup by key, then the same round trip).
    g.bench_function("exec_round_trip/256_targets", |b| {
        b.iter_batched(
            || {
                let reqs: Vec<Request> = (0..calls).map(|t| request(t as u64, t)).collect();
                (ready_router(calls), reqs)
            },
            |(mut r, reqs)| {
                let now = Instant::now();
                let mut frame = Vec::with_capacity(256);
                for (t, req) in reqs.into_iter().enumerate() {
                    r.request(1, req, now);
                    frame.clear();
                    encode_frame(&mut frame, &header(Kind::Reply, 0, 2), REPLY);
                    r.target_bytes(t, &frame, now);
                }
                let mut replies = 0;
                while let Some(a) = r.poll_action() {
                    replies += matches!(a, Action::Reply(..)) as usize;
                }
                assert_eq!(replies, calls);
                r
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn cache(c: &mut Criterion) {
    let mut g = c.benchmark_group("blob_cache");
    let mut cache = BlobCache::default();
    let hashes: Vec<String> = (0..1000u32)
        .map(|i| {
            let data: Vec<u8> = (0..4096u32)
                .map(|j| (i ^ j) as u8)
                .chain(i.to_be_bytes())
                .collect();
            let h = sha256_hex(&data);
            cache.put(&h, data).expect("blob fits");
            h
        })
        .collect();
    let missing = sha256_hex(b"not in the cache");
    g.throughput(Throughput::Elements(1));
    let mut i = 0usize;
    g.bench_function("get/hit_of_1000", |b| {
        b.iter(|| {
            i = (i + 7) % hashes.len();
            cache.get(black_box(&hashes[i])).map(|d| d.len())
        })
    });
    g.bench_function("get/miss", |b| {
        b.iter(|| cache.get(black_box(&missing)).is_none())
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2))
        .sample_size(30);
    targets = frames, router, cache
}
criterion_main!(benches);
