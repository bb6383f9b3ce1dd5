//! A target cannot flood or forge the daemon's log (issue 13, item 5): a fake agent (transport
//! `unix`, speaking the frame protocol) sends hundreds of large ERROR records full of newlines,
//! forged log lines and colour codes; the daemon's log stays small, shows no forged line and
//! no escape byte, and says how many records it dropped. Its calls are still answered. A
//! target's transport stderr (ssh's, the remote shell's) logged at debug level is rate-limited
//! the same way.

mod common;
use common::*;
use serde_json::json;
use spindle::proto::{encode_frame, Decoder, FrameHeader, Kind};
use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::time::Duration;

const FORGED: &str = "2026-12-05T00:00:00.000000Z ERROR spindle: forged line";

fn frame(kind: Kind, reply_to: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let h = FrameHeader {
        kind,
        flags: 0,
        dst: 0,
        src: 1,
        handle: reply_to,
        reply_to,
    };
    encode_frame(&mut out, &h, payload);
    out
}

/// One connection: HELLO, `records` LOG records of about `size` bytes, then a pong to every
/// CALL until the daemon hangs up.
fn fake_agent(path: &Path, records: usize, size: usize) -> std::thread::JoinHandle<()> {
    let listener = UnixListener::bind(path).expect("bind fake agent");
    std::thread::spawn(move || {
        let Ok((mut s, _)) = listener.accept() else {
            return;
        };
        let hello = json!({"proto": 1, "python": "fake", "pid": 1, "hostname": "fake"});
        let _ = s.write_all(&frame(Kind::Hello, 0, hello.to_string().as_bytes()));
        let msg = format!("{}\n{FORGED}\x1b[31m red\r\n", "x".repeat(size));
        let rec = json!({"level": "ERROR", "name": "flood\nforged", "msg": msg}).to_string();
        let rec = frame(Kind::Log, 0, rec.as_bytes());
        for _ in 0..records {
            if s.write_all(&rec).is_err() {
                return;
            }
        }
        let mut dec = Decoder::default();
        let mut buf = vec![0u8; 65536];
        loop {
            let n = match s.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            dec.push(&buf[..n]);
            let mut calls = Vec::new();
            while let Ok(Some((h, _))) = dec.next_frame() {
                if h.kind == Kind::Call {
                    calls.push(h.handle);
                }
            }
            for c in calls {
                let _ = s.write_all(&frame(Kind::Reply, c, br#"{"pong":true,"pid":1}"#));
            }
        }
    })
}

#[test]
fn a_flooding_target_cannot_fill_or_forge_the_daemon_log() {
    let dir = scratch("log_flood");
    let log_path = dir.join("daemon.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let daemon = Daemon::start_logged(&dir, &[], log);
    let agent_path = dir.join("agent.sock");
    let agent = fake_agent(&agent_path, 500, 64 * 1024);
    let mut c = daemon.client();
    let spec = json!({"transport": "unix", "host": agent_path, "name": "flooder"});
    let v = c
        .call(json!({"op": "ping", "target": spec}))
        .expect("the flooding target's call is answered");
    assert_eq!(v["pong"], true);
    // The drop report comes within a second or so.
    std::thread::sleep(Duration::from_millis(1500));
    let _ = c.call(json!({"op": "close", "target": spec}));
    drop(daemon);
    let _ = agent.join();

    let text = std::fs::read(&log_path).unwrap();
    let size = text.len();
    let text = String::from_utf8_lossy(&text);
    eprintln!(
        "daemon log: {size} bytes for 500 records of 64 KiB; last lines:\n{}",
        text.lines()
            .rev()
            .take(3)
            .map(|l| &l[..l.len().min(300)])
            .collect::<Vec<_>>()
            .join("\n")
    );
    // 100 records (the burst) of at most 4 KiB each, 20 more a second while the 32 MB flood
    // lasts (a second or so, longer on a loaded machine), plus the daemon's own lines; without
    // the limit it is the whole 32 MB.
    assert!(size < 1536 * 1024, "daemon log of {size} bytes");
    assert!(
        text.contains("log records from flooder dropped"),
        "no drop report"
    );
    assert!(text.contains("bytes cut]"), "no truncation note");
    assert!(!text.contains('\x1b'), "an escape byte reached the log");
    for line in text.lines() {
        assert!(!line.starts_with(FORGED), "forged line: {line}");
        assert!(!line.starts_with("forged"), "forged logger name: {line}");
    }
}

#[test]
fn a_targets_stderr_flood_is_rate_limited_in_the_debug_log() {
    let dir = scratch("stderr_flood");
    // An interpreter that writes 200,000 lines to stderr before it starts the agent.
    let noisy = dir.join("noisy-python");
    std::fs::write(
        &noisy,
        "#!/bin/sh\nyes 'noise from the target' | head -n 200000 >&2\nexec python3 \"$@\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&noisy, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let log_path = dir.join("daemon.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let daemon = Daemon::start_logged(&dir, &["-vvv"], log);
    let mut c = daemon.client();
    let spec = json!({"transport": "local", "host": "noisy", "name": "noisy",
                      "python": noisy.to_str().unwrap()});
    let v = c
        .call(json!({"op": "ping", "target": spec}))
        .expect("the noisy target's call is answered");
    assert_eq!(v["pong"], true, "{v}");
    std::thread::sleep(Duration::from_millis(1500));
    let _ = c.call(json!({"op": "close", "target": spec}));
    drop(daemon);
    let text = std::fs::read_to_string(&log_path).unwrap_or_default();
    let lines = text.matches("stderr: noise from the target").count();
    eprintln!(
        "daemon log: {} bytes, {lines} of 200,000 stderr lines logged",
        text.len()
    );
    // The burst (100) and 20 a second while the flood lasts; unlimited it is 200,000 lines.
    assert!((100..1000).contains(&lines), "{lines} stderr lines logged");
    assert!(
        text.contains("stderr lines dropped from the log"),
        "no drop report"
    );
}
