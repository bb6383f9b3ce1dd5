//! Transport `unix` connects without blocking the event loop: a listener whose backlog is full
//! and that never accepts leaves its targets waiting (then failing with `timeout` at their
//! connect timeout) while every other client and target keeps being served; a listener that
//! starts accepting late gets every waiting connect. Backend from SPINDLE_IO (the daemon reads
//! it), so CI runs this once per backend.

mod common;
use common::*;
use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
use serde_json::{json, Value};
use spindle::client::{Client, ClientError};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A Unix listener with backlog 1 that accepts nothing until asked.
fn listener(path: &Path, backlog: i32) -> OwnedFd {
    let fd = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )
    .expect("socket");
    let addr = SocketAddrUnix::new(path).expect("socket path");
    rustix::net::bind_unix(&fd, &addr).expect("bind");
    rustix::net::listen(&fd, backlog).expect("listen");
    fd
}

struct Sim(Child);

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The fleet simulator on `path` (a healthy agent per connection).
fn sim(path: &Path) -> Sim {
    let child = Command::new(env!("CARGO_BIN_EXE_spindle-fleet-sim"))
        .arg("--socket")
        .arg(path)
        .args(["--lifetime", "120"])
        .stderr(Stdio::null())
        .spawn()
        .expect("start spindle-fleet-sim");
    let end = Instant::now() + Duration::from_secs(10);
    while std::os::unix::net::UnixStream::connect(path).is_err() {
        assert!(Instant::now() < end, "simulator did not come up");
        std::thread::sleep(Duration::from_millis(20));
    }
    Sim(child)
}

fn spec(path: &Path, name: &str, connect_timeout: u64) -> Value {
    json!({"transport": "unix", "host": path, "name": name, "connect_timeout": connect_timeout})
}

fn kind(r: &Result<Value, ClientError>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(ClientError::Api { kind, .. }) => kind.clone(),
        Err(e) => format!("client error: {e}"),
    }
}

/// Sends pings to `targets` on a new client from a thread; replies (by kind) come back on the
/// channel, so a stalled daemon fails the test by timeout instead of hanging it.
fn ping_in_background(sock: PathBuf, targets: Vec<Value>) -> mpsc::Receiver<(String, Instant)> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut c = Client::connect(&sock).expect("client");
        for t in &targets {
            c.send(json!({"op": "ping", "target": t})).expect("send");
        }
        for _ in &targets {
            let r = match c.recv() {
                Ok(r) => kind(&r.result),
                Err(e) => format!("client error: {e}"),
            };
            let _ = tx.send((r, Instant::now()));
        }
    });
    rx
}

#[test]
fn listener_that_never_accepts_does_not_stall_other_targets() {
    let dir = scratch("unix_connect_stall");
    let daemon = Daemon::start(&dir);
    let healthy = dir.join("sim.sock");
    let _sim = sim(&healthy);
    let stuck = dir.join("stuck.sock");
    let _l = listener(&stuck, 1);

    // Backlog 1 holds two unaccepted connections; the other four find it full (EAGAIN).
    // Before the fix, the first of those blocked the daemon's only thread in connect(2).
    let t0 = Instant::now();
    let stuck_targets: Vec<Value> = (0..6)
        .map(|i| spec(&stuck, &format!("stuck-{i}"), 3))
        .collect();
    let stuck_replies = ping_in_background(daemon.socket.clone(), stuck_targets);
    std::thread::sleep(Duration::from_millis(300));

    // Meanwhile another client gets `stats` and 20 fresh simulated targets answered promptly.
    let (tx, rx) = mpsc::channel();
    let sock = daemon.socket.clone();
    let sim_sock = healthy.clone();
    std::thread::spawn(move || {
        let mut c = Client::connect(&sock).expect("client");
        for i in 0..20 {
            let t = Instant::now();
            let stats = c.call(json!({"op": "stats"}));
            let ping =
                c.call(json!({"op": "ping", "target": spec(&sim_sock, &format!("ok-{i}"), 5)}));
            let _ = tx.send((kind(&stats), kind(&ping), t.elapsed()));
        }
    });
    for i in 0..20 {
        let (stats, ping, took) = rx
            .recv_timeout(Duration::from_secs(2))
            .unwrap_or_else(|_| panic!("round {i}: daemon stopped answering other clients"));
        assert_eq!((stats.as_str(), ping.as_str()), ("ok", "ok"), "round {i}");
        assert!(
            took < Duration::from_millis(1500),
            "round {i} took {took:?}"
        );
    }
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "the healthy rounds ran while the stuck targets were still connecting"
    );

    // The stuck targets fail with `timeout` at their 3 s connect timeout, not before, not never.
    for n in 0..6 {
        let (k, at) = stuck_replies
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("stuck target {n} got no reply"));
        assert_eq!(k, "timeout", "stuck target {n}");
        let after = at.duration_since(t0);
        assert!(
            after >= Duration::from_millis(2500) && after < Duration::from_secs(6),
            "stuck target {n} failed after {after:?}"
        );
    }
    let mut c = daemon.client();
    let st = c
        .call(json!({"op": "stats"}))
        .expect("stats after the timeouts");
    assert!(st.is_object());
}

#[test]
fn full_backlog_connect_is_retried_until_accepted() {
    let dir = scratch("unix_connect_retry");
    let daemon = Daemon::start(&dir);
    let late = dir.join("late.sock");
    let l = listener(&late, 1);
    let targets: Vec<Value> = (0..5)
        .map(|i| spec(&late, &format!("late-{i}"), 20))
        .collect();
    let replies = ping_in_background(daemon.socket.clone(), targets);
    // Let the daemon find the backlog full and back off for a while.
    std::thread::sleep(Duration::from_millis(700));
    assert!(
        replies.try_recv().is_err(),
        "no reply before the listener accepts"
    );
    // Start accepting: every waiting connect must arrive (retries, not a one-shot attempt).
    let t = Instant::now();
    let mut accepted = Vec::new();
    rustix::io::ioctl_fionbio(&l, true).expect("nonblocking listener");
    while accepted.len() < 5 && t.elapsed() < Duration::from_secs(5) {
        match rustix::net::accept(&l) {
            Ok(s) => accepted.push(s),
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
    assert_eq!(accepted.len(), 5, "accepted within {:?}", t.elapsed());
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "retries are prompt: {:?}",
        t.elapsed()
    );
    // Closing them without a HELLO fails each target promptly (not by its 20 s timeout).
    drop(accepted);
    for n in 0..5 {
        let (k, _) = replies
            .recv_timeout(Duration::from_secs(5))
            .unwrap_or_else(|_| panic!("target {n} got no reply"));
        assert_ne!(k, "ok", "target {n}");
        assert!(!k.starts_with("client error"), "target {n}: {k}");
    }
}
