//! Memory for API clients is bounded overall, not per client (issue 13, item 6): with a budget
//! of 64 MiB and a 2 s partial-request deadline (`serve --client-buffer-mib 64
//! --partial-request-timeout 2`), 50 misbehaving clients (half send a 60 MiB length prefix and
//! part of the body, then stall; half send requests without end and never read the replies)
//! keep the daemon's RSS under budget + 64 MiB, while a well-behaved client gets every `stats`
//! answered promptly and another's 1 MiB request is answered too. A request larger than the whole budget is refused with a clear error; a
//! half-sent request is dropped at the deadline; an idle client is kept. The backend comes
//! from SPINDLE_IO.

mod common;
use common::*;
use serde_json::{json, Value};
use spindle::api::{frame_message, MessageDecoder};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const MIB: usize = 1024 * 1024;
const BUDGET_MIB: u64 = 64;
/// The stated bound: the budget plus 64 MiB for the daemon itself and transient copies.
const RSS_LIMIT_KIB: u64 = (BUDGET_MIB + 64) * 1024;

/// Sends a request body over a raw stream and reads one reply (30 s read timeout).
fn call_raw(s: &mut UnixStream, body: &[u8]) -> Result<Value, String> {
    let mut msg = Vec::new();
    frame_message(&mut msg, body);
    s.write_all(&msg).map_err(|e| format!("write: {e}"))?;
    read_reply(s)
}

fn read_reply(s: &mut UnixStream) -> Result<Value, String> {
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    let mut dec = MessageDecoder::default();
    let mut buf = vec![0u8; 65536];
    loop {
        if let Some(m) = dec.next_message().map_err(|e| e.to_string())? {
            return serde_json::from_slice(&m).map_err(|e| e.to_string());
        }
        match s.read(&mut buf) {
            Ok(0) => return Err("daemon closed the connection".into()),
            Ok(n) => dec.push(&buf[..n]),
            Err(e) => return Err(format!("read: {e}")),
        }
    }
}

/// Sends a 60 MiB length prefix and `body` bytes of it (as far as the daemon takes them),
/// then stalls until `stop` or until the daemon hangs up.
fn staller(path: &Path, body: usize, stop: Arc<AtomicBool>) {
    let Ok(mut s) = UnixStream::connect(path) else {
        return;
    };
    let _ = s.set_write_timeout(Some(Duration::from_millis(200)));
    let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
    if s.write_all(&((60 * MIB) as u32).to_be_bytes()).is_err() {
        return;
    }
    let chunk = vec![b' '; 256 * 1024];
    let mut sent = 0;
    while sent < body && !stop.load(Ordering::Relaxed) {
        match s.write(&chunk[..chunk.len().min(body - sent)]) {
            Ok(n) => sent += n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
    }
    let mut b = [0u8; 4096];
    while !stop.load(Ordering::Relaxed) {
        match s.read(&mut b) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
    }
}

/// Sends requests (each answered with a ~60 kB error echoing its op) and never reads.
/// Returns how many it sent before the daemon hung up (or `stop`).
fn non_reader(path: &Path, stop: Arc<AtomicBool>) -> usize {
    let Ok(mut s) = UnixStream::connect(path) else {
        return 0;
    };
    let _ = s.set_write_timeout(Some(Duration::from_millis(200)));
    let body = json!({"id": 1, "op": "x".repeat(60_000)}).to_string();
    let mut msg = Vec::new();
    for _ in 0..16 {
        frame_message(&mut msg, body.as_bytes());
    }
    let mut sent = 0;
    let mut pos = 0;
    while !stop.load(Ordering::Relaxed) {
        match s.write(&msg[pos..]) {
            Ok(n) => {
                pos += n;
                if pos == msg.len() {
                    pos = 0;
                    sent += 16;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
    }
    sent
}

#[test]
fn fifty_misbehaving_clients_stay_within_the_budget_while_a_good_one_is_served() {
    let dir = scratch("client_budget_fifty");
    let log = dir.join("daemon.log");
    let mut d = Daemon::start_logged(
        &dir,
        &[
            "--client-buffer-mib",
            &BUDGET_MIB.to_string(),
            "--partial-request-timeout",
            "2",
        ],
        std::fs::File::create(&log).expect("log file"),
    );
    let mut good = UnixStream::connect(&d.socket).expect("connect");
    let stats = br#"{"id":1,"op":"stats"}"#;
    let st = call_raw(&mut good, stats).expect("stats")["result"].clone();
    assert_eq!(st["clients"]["budget_bytes"], BUDGET_MIB << 20, "{st}");
    eprintln!("daemon RSS at start: {} KiB", d.rss_kib());

    let stop = Arc::new(AtomicBool::new(false));
    let mut stallers = Vec::new();
    let mut readers = Vec::new();
    for i in 0..50 {
        let (path, stop) = (d.socket.clone(), Arc::clone(&stop));
        if i % 2 == 0 {
            stallers.push(std::thread::spawn(move || staller(&path, 30 * MIB, stop)));
        } else {
            readers.push(std::thread::spawn(move || non_reader(&path, stop)));
        }
    }

    // A good client with a 1 MiB request: it fits beside a staller's admitted 60 MiB once the
    // non-readers' replies are gone, else it waits for the staller's deadline (2 s).
    let big_path = d.socket.clone();
    let big = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(2));
        let mut s = UnixStream::connect(&big_path).expect("connect");
        let body = json!({"id": 9, "op": "stats", "pad": " ".repeat(MIB)}).to_string();
        let t = Instant::now();
        let v = call_raw(&mut s, body.as_bytes());
        (v, t.elapsed())
    });

    // The good client, for 8 s: every stats answered, RSS sampled meanwhile.
    let start = Instant::now();
    let (mut calls, mut slowest, mut max_rss) = (0u32, Duration::ZERO, 0u64);
    while start.elapsed() < Duration::from_secs(8) {
        let t = Instant::now();
        let st = call_raw(&mut good, stats)
            .unwrap_or_else(|e| panic!("the well-behaved client was not served: {e}"))["result"]
            .clone();
        slowest = slowest.max(t.elapsed());
        calls += 1;
        assert!(
            st["clients"]["connected"].as_u64().is_some(),
            "stats has clients: {st}"
        );
        max_rss = max_rss.max(d.rss_kib());
        std::thread::sleep(Duration::from_millis(50));
    }
    let st = call_raw(&mut good, stats).expect("stats at the end")["result"].clone();
    let hwm = d.peak_rss_kib();
    max_rss = max_rss.max(d.rss_kib());
    let (big_reply, big_wait) = big.join().expect("the 1 MiB client");
    let big_reply = big_reply.expect("the 1 MiB request is answered");
    assert_eq!(big_reply["id"], 9, "{big_reply}");
    assert!(
        big_wait < Duration::from_secs(10),
        "the 1 MiB request took {big_wait:?}"
    );
    stop.store(true, Ordering::Relaxed);
    let sent: usize = readers.into_iter().map(|h| h.join().unwrap_or(0)).sum();
    for h in stallers {
        let _ = h.join();
    }
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let c = &st["clients"];
    eprintln!(
        "{calls} stats calls, slowest {slowest:?}; 1 MiB request answered in {big_wait:?}; daemon RSS max {max_rss} KiB, peak (VmHWM) \
         {hwm} KiB, limit {RSS_LIMIT_KIB} KiB; non-readers sent {sent} requests; clients: {c}"
    );
    assert!(
        d.child.try_wait().is_ok_and(|s| s.is_none()),
        "the daemon died; log:\n{text}"
    );
    assert!(
        hwm < RSS_LIMIT_KIB,
        "daemon peak RSS {hwm} KiB over {RSS_LIMIT_KIB} KiB"
    );
    assert!(
        // Tens of ms on an idle machine; generous for a loaded one.
        slowest < Duration::from_secs(5),
        "a stats call took {slowest:?}"
    );
    assert!(
        c["evicted"].as_u64().is_some_and(|n| n > 0),
        "no non-reading client was disconnected: {st}"
    );
    assert!(
        c["timed_out"].as_u64().is_some_and(|n| n > 0),
        "no stalled client was timed out: {st}"
    );
    assert!(
        c["buffered_bytes"]
            .as_u64()
            .is_some_and(|n| n <= BUDGET_MIB << 20),
        "{st}"
    );
    assert!(
        text.contains("over the budget") && text.contains("unread_reply_bytes"),
        "no eviction logged:\n{}",
        &text[..text.len().min(4000)]
    );
    assert!(
        text.contains("sent part of a request and then nothing"),
        "no deadline logged"
    );
}

#[test]
fn a_request_over_the_whole_budget_is_refused_and_one_that_fits_is_taken() {
    let dir = scratch("client_budget_sizes");
    let d = Daemon::start_with(&dir, &["--client-buffer-mib", "4"]);
    // 5 MiB: over the whole budget (but under the 64 MiB message limit).
    let mut s = UnixStream::connect(&d.socket).expect("connect");
    s.write_all(&((5 * MIB) as u32).to_be_bytes()).unwrap();
    s.write_all(&vec![b' '; 300 * 1024]).unwrap();
    let v = read_reply(&mut s).expect("an answer to the oversize request");
    assert_eq!(v["error"]["kind"], "bad_request", "{v}");
    let m = v["error"]["message"].as_str().unwrap_or("");
    assert!(
        m.contains("5242880 bytes") && m.contains("client buffer budget"),
        "{v}"
    );
    // 3 MiB fits: read whole and answered (here: an unknown field).
    let mut s = UnixStream::connect(&d.socket).expect("connect");
    let big = json!({"id": 7, "op": "stats", "pad": " ".repeat(3 * MIB)}).to_string();
    let v = call_raw(&mut s, big.as_bytes()).expect("an answer to a 3 MiB request");
    assert_eq!(v["id"], 7, "{v}");
    assert_eq!(v["error"]["kind"], "bad_request", "{v}");
    let st = d.client().call(json!({"op": "stats"})).expect("stats");
    assert_eq!(st["clients"]["refused"], 1, "{st}");
}

#[test]
fn a_half_sent_request_is_dropped_at_the_deadline_and_an_idle_client_kept() {
    let dir = scratch("client_budget_deadline");
    let d = Daemon::start_with(&dir, &["--partial-request-timeout", "1"]);
    let mut idle = d.client();
    idle.call(json!({"op": "stats"})).expect("stats");
    let mut half = UnixStream::connect(&d.socket).expect("connect");
    let mut msg = Vec::new();
    frame_message(&mut msg, br#"{"id":1,"op":"stats"}"#);
    half.write_all(&msg[..10]).unwrap();
    let t = Instant::now();
    let e = read_reply(&mut half).expect_err("the half-sent request is not answered");
    let waited = t.elapsed();
    assert!(e.contains("closed"), "{e}");
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "dropped after {waited:?}"
    );
    std::thread::sleep(Duration::from_millis(500));
    let st = idle
        .call(json!({"op": "stats"}))
        .expect("the idle client is still served");
    assert_eq!(st["clients"]["timed_out"], 1, "{st}");
    assert_eq!(st["clients"]["connected"], 1, "{st}");
}
