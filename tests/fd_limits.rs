//! File descriptor limits (issue 13, item 10): the daemon raises its soft RLIMIT_NOFILE to the
//! hard limit; out of descriptors (`ulimit -n 64`, 100 clients) it neither spins nor floods its
//! log (accepts pause 100 ms, one line a second), and serves again once clients leave; `stats`
//! reports descriptors open, the limit and how many more targets fit.

mod common;
use common::*;
use serde_json::json;
use spindle::client::Client;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `spindle serve` under `sh -c 'ulimit ...; exec spindle serve'`, its log in `log`.
fn serve_limited(dir: &Path, ulimit: &str, log: &Path) -> (Child, std::path::PathBuf) {
    let sock = dir.join("spindle.sock");
    let child = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit {ulimit} && exec \"$0\" -v serve --socket \"$1\""
        ))
        .arg(env!("CARGO_BIN_EXE_spindle"))
        .arg(&sock)
        .stderr(std::fs::File::create(log).expect("log file"))
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn serve");
    let end = Instant::now() + Duration::from_secs(10);
    while Client::connect(&sock).is_err() {
        assert!(Instant::now() < end, "daemon did not come up");
        std::thread::sleep(Duration::from_millis(20));
    }
    (child, sock)
}

fn stop(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn out_of_descriptors_the_daemon_neither_spins_nor_floods_its_log() {
    let dir = scratch("fd_exhaustion");
    let log = dir.join("daemon.log");
    let (child, sock) = serve_limited(&dir, "-n 64", &log);
    let mut first = Client::connect(&sock).expect("first client");
    let st = first.call(json!({"op": "stats"})).expect("stats");
    assert_eq!(st["fds"]["limit"], 64, "{st}");
    assert_eq!(st["fds"]["per_target"], 3, "{st}");
    assert!(
        st["fds"]["open"].as_u64().is_some_and(|n| n > 3 && n < 64),
        "{st}"
    );

    let cpu_before = cpu_ticks(child.id());
    let others: Vec<UnixStream> = (0..100)
        .map(|_| UnixStream::connect(&sock).expect("connect (backlog)"))
        .collect();
    std::thread::sleep(Duration::from_secs(4));
    let cpu = cpu_ticks(child.id()).saturating_sub(cpu_before);
    let size = std::fs::metadata(&log).unwrap().len();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    eprintln!(
        "daemon log {size} bytes, {cpu} CPU ticks in 4 s with 100 clients over the limit; accept lines: {}",
        text.matches("accept failed").count()
    );
    assert!(size < 100 * 1024, "daemon log of {size} bytes");
    assert!(text.contains("Too many open files"), "{text}");
    assert!(text.matches("accept failed").count() <= 8, "{text}");
    // 4 s of spinning would be ~400 ticks; pausing costs a few.
    assert!(cpu < 100, "daemon used {cpu} ticks of CPU");

    // An accepted client is served meanwhile; once the others leave, a new one is too.
    let st = first
        .call(json!({"op": "stats"}))
        .expect("stats while full");
    assert!(st["fds"]["open"].as_u64().is_some_and(|n| n <= 64), "{st}");
    drop(others);
    let end = Instant::now() + Duration::from_secs(10);
    let served = loop {
        if let Ok(mut c) = Client::connect(&sock) {
            if let Ok(v) = c.call(json!({"op": "stats"})) {
                break v;
            }
        }
        assert!(
            Instant::now() < end,
            "no new client served after the others left"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(served["fds"]["targets_fit"].as_u64().is_some(), "{served}");
    stop(child);
}

#[test]
fn the_soft_fd_limit_is_raised_to_the_hard_limit() {
    let dir = scratch("fd_raise");
    let log = dir.join("daemon.log");
    let (child, sock) = serve_limited(&dir, "-S -n 64", &log);
    let st = Client::connect(&sock)
        .unwrap()
        .call(json!({"op": "stats"}))
        .unwrap();
    let fds = &st["fds"];
    assert_eq!(fds["limit"], fds["hard_limit"], "{st}");
    assert!(fds["limit"].as_u64().map_or(true, |n| n > 64), "{st}");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(text.contains("open file limit raised from 64"), "{text}");
    stop(child);
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = s.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let num = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
    num(11) + num(12)
}
