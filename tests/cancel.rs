//! Calls the daemon gives up on stop on the target (issue 13 items 4, 7 and 8), with a real
//! daemon and `local` targets: a timed-out exec's process group is killed, a gone client's exec
//! too, a timed-out fetch stops streaming, `fetch` refuses an endless source, and 2 GiB of
//! stdout gets a clear, bounded answer while the agent's memory stays bounded.

mod common;
use common::*;
use serde_json::json;
use spindle::client::ClientError;
use std::path::Path;
use std::time::{Duration, Instant};

/// Processes whose command line contains `marker` (other than this test's own).
fn processes_with(marker: &str) -> Vec<u32> {
    let me = std::process::id();
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        if pid != me && String::from_utf8_lossy(&cmd).contains(marker) {
            found.push(pid);
        }
    }
    found
}

/// Waits until no process carries `marker`; false if some still do after `within`.
fn gone_within(marker: &str, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if processes_with(marker).is_empty() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("spindle-{name}-{}-{nanos}", std::process::id())
}

/// A command that runs until killed, in a process group with a busy child, each carrying
/// `marker` in its command line, writing to `beat` while it lives.
fn endless(marker: &str, beat: &Path) -> String {
    format!(
        "sh -c 'while :; do echo x >> {b}; sleep 0.05; done; : {marker}' & \
         while :; do sleep 1; done; : {marker}",
        b = beat.display()
    )
}

fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).map_or(0, |m| m.len())
}

/// The file stopped growing (checked over half a second).
fn still(p: &Path) -> bool {
    let a = file_len(p);
    std::thread::sleep(Duration::from_millis(500));
    file_len(p) == a
}

#[test]
fn a_timed_out_exec_is_killed_on_the_target() {
    let dir = scratch("cancel_exec_timeout");
    let daemon = Daemon::start(&dir);
    let mut c = daemon.client();
    let local = &local_specs(1)[0];
    let marker = unique("timeout");
    let beat = dir.join("beat");
    let started = Instant::now();
    let r = c.call(
        json!({"op": "exec", "target": target(local), "shell": endless(&marker, &beat),
        "call_timeout": 1}),
    );
    assert!(
        matches!(r, Err(ClientError::Api { ref kind, .. }) if kind == "timeout"),
        "{r:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(
        gone_within(&marker, Duration::from_secs(5)),
        "the timed-out command still runs on the target: {:?}",
        processes_with(&marker)
    );
    assert!(still(&beat), "its child still writes");
    // The daemon and the stream carry on.
    let v = c
        .call(json!({"op": "exec", "target": target(local), "argv": ["echo", "alive"]}))
        .expect("exec after the timeout");
    assert_eq!(b64(&v, "stdout_b64"), "alive\n");
}

#[test]
fn a_gone_clients_exec_is_killed_on_the_target() {
    let dir = scratch("cancel_client_gone");
    let daemon = Daemon::start(&dir);
    let local = &local_specs(1)[0];
    let marker = unique("gone");
    let beat = dir.join("beat");
    {
        let mut c = daemon.client();
        c.call(json!({"op": "ping", "target": target(local)}))
            .expect("ping");
        c.send(json!({"op": "exec", "target": target(local), "shell": endless(&marker, &beat)}))
            .expect("send");
        let deadline = Instant::now() + Duration::from_secs(10);
        while file_len(&beat) == 0 {
            assert!(Instant::now() < deadline, "the command did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    } // the client goes away with its exec in flight
    assert!(
        gone_within(&marker, Duration::from_secs(5)),
        "the abandoned command still runs on the target: {:?}",
        processes_with(&marker)
    );
    assert!(still(&beat), "its child still writes");
    let mut c = daemon.client();
    let v = c
        .call(json!({"op": "ping", "target": target(local)}))
        .expect("ping after");
    assert_eq!(v["pong"], true);
}

#[test]
fn a_timed_out_fetch_stops_streaming_and_an_endless_source_is_refused() {
    let dir = scratch("cancel_fetch");
    let daemon = Daemon::start(&dir);
    let mut c = daemon.client();
    let local = &local_specs(1)[0];
    // An endless source: refused by name before any byte moves.
    let r = c.call(
        json!({"op": "fetch", "target": target(local), "src": "/dev/zero",
        "dest": dir.join("zero"), "call_timeout": 10}),
    );
    match r {
        Err(ClientError::Api { ref message, .. })
            if message.contains("/dev/zero") && message.contains("not a regular file") => {}
        other => panic!("fetch of /dev/zero: {other:?}"),
    }
    assert!(std::fs::read_dir(&dir).expect("dir").all(|e| e
        .map(|e| !e.file_name().to_string_lossy().contains("zero"))
        .unwrap_or(true)));
    // A large (sparse) file with a short deadline: the agent stops sending.
    let big = dir.join("big.bin");
    std::fs::File::create(&big)
        .and_then(|f| f.set_len(16 << 30))
        .expect("sparse file");
    c.call(json!({"op": "ping", "target": target(local)}))
        .expect("ping");
    let r = c.call(json!({"op": "fetch", "target": target(local), "src": big,
        "dest": dir.join("fetched.bin"), "call_timeout": 0.5}));
    assert!(
        matches!(r, Err(ClientError::Api { ref kind, .. }) if kind == "timeout"),
        "{r:?}"
    );
    let bytes_in = |c: &mut spindle::client::Client| {
        let s = c.call(json!({"op": "stats"})).expect("stats");
        s["counters"]["bytes_in"].as_u64().expect("bytes_in")
    };
    std::thread::sleep(Duration::from_secs(1)); // what was in the pipes arrives
    let a = bytes_in(&mut c);
    std::thread::sleep(Duration::from_secs(2));
    let b = bytes_in(&mut c);
    assert!(
        b - a < 1 << 20,
        "still streaming after the timeout: {} MiB in 2 s",
        (b - a) >> 20
    );
    eprintln!(
        "bytes in after the fetch's timeout: {} MiB in total",
        b >> 20
    );
    assert!(!dir.join("fetched.bin").exists());
    let left: Vec<_> = std::fs::read_dir(&dir)
        .expect("dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("spindle-"))
        .collect();
    assert!(left.is_empty(), "temp files left: {left:?}");
    // A small regular file still fetches.
    let small = dir.join("small.txt");
    std::fs::write(&small, b"hello\n").expect("small");
    let v = c
        .call(json!({"op": "fetch", "target": target(local), "src": small,
            "dest": dir.join("small.out")}))
        .expect("fetch small");
    assert_eq!(v["size"], 6);
    assert_eq!(
        std::fs::read(dir.join("small.out")).expect("fetched"),
        b"hello\n"
    );
}

#[test]
fn two_gib_of_stdout_get_a_clear_bounded_answer() {
    let dir = scratch("cancel_big_stdout");
    let daemon = Daemon::start(&dir);
    let mut c = daemon.client();
    let local = &local_specs(1)[0];
    let ping = c
        .call(json!({"op": "ping", "target": target(local)}))
        .expect("ping");
    let agent = ping["pid"].as_u64().expect("agent pid");
    let started = Instant::now();
    let v = c
        .call(json!({"op": "exec", "target": target(local),
            "shell": "yes | head -c 2147483648; echo finished >&2", "call_timeout": 120}))
        .expect("a reply, not a reply-size error");
    let took = started.elapsed();
    assert_eq!(v["output_truncated"], true, "no truncation flag");
    assert_eq!(v["rc"], -9);
    let err = b64(&v, "stderr_b64");
    assert!(err.contains("output truncated at 44 MiB"), "{err}");
    assert!(!err.contains("finished"), "the command was not stopped");
    assert_eq!(b64(&v, "stdout_b64").len(), 44 << 20);
    let status = std::fs::read_to_string(format!("/proc/{agent}/status")).expect("agent status");
    let hwm: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM");
    eprintln!(
        "2 GiB of stdout: answered in {took:?}; agent peak RSS {} MiB, daemon {} MiB",
        hwm >> 10,
        daemon.peak_rss_kib() >> 10
    );
    assert!(hwm < 512 << 10, "agent peak RSS {hwm} KiB");
    assert!(took < Duration::from_secs(30), "took {took:?}");
    // Small outputs keep their shape.
    let v = c
        .call(json!({"op": "exec", "target": target(local), "argv": ["echo", "small"]}))
        .expect("exec");
    assert!(v.get("output_truncated").is_none(), "{v}");
}

#[test]
fn a_timed_out_exec_in_a_become_context_is_killed_there() {
    // The cancel is a CALL like any other: relayed by the stream's agent to the context.
    if !can_sudo() {
        println!("SKIP: needs root and /usr/bin/sudo (scripts/setup.sh installs sudo)");
        return;
    }
    let dir = scratch("cancel_become");
    let daemon = Daemon::start(&dir);
    let mut c = daemon.client();
    let mut t = target(&local_specs(1)[0]);
    t["become"] = json!({
        "method": "sudo", "user": "nobody", "flags": "-H -S -n",
        "cmd": "sudo -H -S -n -u nobody /bin/sh -c 'echo SPINDLE-MARK-1 ; __SPINDLE_BOOT__'",
        "success": "SPINDLE-MARK-1",
    });
    let v = c
        .call(json!({"op": "exec", "target": t, "argv": ["id", "-un"]}))
        .expect("exec as nobody");
    assert_eq!(b64(&v, "stdout_b64").trim(), "nobody");
    let marker = unique("become");
    let beat = std::env::temp_dir().join(format!("{marker}.beat"));
    let r = c.call(
        json!({"op": "exec", "target": t, "shell": endless(&marker, &beat),
        "call_timeout": 1}),
    );
    assert!(
        matches!(r, Err(ClientError::Api { ref kind, .. }) if kind == "timeout"),
        "{r:?}"
    );
    assert!(
        gone_within(&marker, Duration::from_secs(5)),
        "the timed-out command still runs in the context: {:?}",
        processes_with(&marker)
    );
    let _ = std::fs::remove_file(&beat);
    let v = c
        .call(json!({"op": "exec", "target": t, "argv": ["id", "-un"]}))
        .expect("the context carries on");
    assert_eq!(b64(&v, "stdout_b64").trim(), "nobody");
}
