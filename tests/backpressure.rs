//! A stuck target stalls only its own stream: with one agent stopped (SIGSTOP) mid-put, a put
//! to another target completes, other calls are served, and the daemon's memory stays bounded;
//! when the stuck agent resumes, its put completes intact. Killing the daemon leaves no agent
//! behind (agents exit when their stdin closes).

mod common;
use common::*;
use serde_json::json;
use std::time::{Duration, Instant};

fn pid_alive(pid: u64) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

#[test]
fn stuck_target_stalls_only_itself_with_bounded_memory() {
    let dir = scratch("backpressure");
    let src = dir.join("src.bin");
    let size = 256usize << 20;
    {
        use std::io::Write;
        let mut f = std::io::BufWriter::new(std::fs::File::create(&src).unwrap());
        let block: Vec<u8> = (0..1 << 20)
            .map(|i: u32| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        for _ in 0..size >> 20 {
            f.write_all(&block).unwrap();
        }
    }
    let daemon = Daemon::start(&dir);
    let mut c = daemon.client();
    let specs = local_specs(2);
    let stuck_pid = c
        .call(json!({"op": "ping", "target": target(&specs[0])}))
        .unwrap()["pid"]
        .as_u64()
        .unwrap();
    c.call(json!({"op": "ping", "target": target(&specs[1])}))
        .unwrap();
    let rss_before = daemon.peak_rss_kib();

    assert!(std::process::Command::new("kill")
        .args(["-STOP", &stuck_pid.to_string()])
        .status()
        .unwrap()
        .success());
    let stuck = c.send(json!({"op": "put", "target": target(&specs[0]), "src": src, "dest": dir.join("stuck.bin")})).unwrap();
    let healthy = c.send(json!({"op": "put", "target": target(&specs[1]), "src": src, "dest": dir.join("healthy.bin")})).unwrap();
    let r = c.recv().unwrap();
    assert_eq!(r.id, healthy, "the healthy target finishes first");
    let want = r.result.unwrap()["sha256"].clone();
    let e = c
        .send(json!({"op": "exec", "target": target(&specs[1]), "argv": ["echo", "served"]}))
        .unwrap();
    let r = c.recv().unwrap();
    assert_eq!(r.id, e);
    assert_eq!(b64(&r.result.unwrap(), "stdout_b64"), "served\n");

    let rss_stalled = daemon.peak_rss_kib();
    eprintln!(
        "daemon peak RSS: {rss_before} KiB before, {rss_stalled} KiB with a 256 MiB put stalled"
    );
    assert!(
        rss_stalled < rss_before + 16 * 1024,
        "memory grew with the stalled put: {rss_before} -> {rss_stalled} KiB"
    );

    assert!(std::process::Command::new("kill")
        .args(["-CONT", &stuck_pid.to_string()])
        .status()
        .unwrap()
        .success());
    let r = c.recv().unwrap();
    assert_eq!(r.id, stuck);
    assert_eq!(r.result.unwrap()["sha256"], want);
    for f in ["stuck.bin", "healthy.bin", "src.bin"] {
        let _ = std::fs::remove_file(dir.join(f));
    }
}

#[test]
fn agents_exit_when_the_daemon_dies() {
    let dir = scratch("orphans");
    let mut daemon = Daemon::start(&dir);
    let mut c = daemon.client();
    let pids: Vec<u64> = local_specs(3)
        .iter()
        .map(|s| {
            c.call(json!({"op": "ping", "target": target(s)})).unwrap()["pid"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert!(pids.iter().all(|p| pid_alive(*p)));
    daemon.child.kill().unwrap();
    daemon.child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while pids.iter().any(|p| pid_alive(*p)) {
        assert!(
            Instant::now() < deadline,
            "agents outlived the daemon: {pids:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn calls_to_a_target_that_stopped_reading_are_refused_not_buffered() {
    use base64::Engine as _;
    let dir = scratch("outbound_bound");
    let daemon = Daemon::start(&dir);
    let mut c = daemon.client();
    let spec = &local_specs(1)[0];
    let pid = c
        .call(json!({"op": "ping", "target": target(spec)}))
        .unwrap()["pid"]
        .as_u64()
        .unwrap();
    assert!(std::process::Command::new("kill")
        .args(["-STOP", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    let rss_before = daemon.peak_rss_kib();
    let stdin = base64::engine::general_purpose::STANDARD.encode(vec![b'x'; 64 * 1024]);
    let n = 300; // ~26 MB of CALLs, far over the per-target bound
    for _ in 0..n {
        c.send(json!({"op": "exec", "target": target(spec), "argv": ["cat"], "stdin_b64": stdin, "call_timeout": 0.5}))
            .unwrap();
    }
    let mut kinds = std::collections::BTreeMap::new();
    for _ in 0..n {
        let r = c.recv().unwrap();
        let k = match r.result {
            Err(spindle::client::ClientError::Api { kind, .. }) => kind,
            Ok(_) => "ok".into(),
            Err(e) => format!("{e}"),
        };
        *kinds.entry(k).or_insert(0) += 1;
    }
    let rss_after = daemon.peak_rss_kib();
    eprintln!("outcomes {kinds:?}; daemon peak RSS {rss_before} -> {rss_after} KiB");
    assert!(kinds.get("busy").copied().unwrap_or(0) > 0, "{kinds:?}");
    assert_eq!(
        kinds
            .keys()
            .filter(|k| *k != "busy" && *k != "timeout")
            .count(),
        0,
        "{kinds:?}"
    );
    assert!(
        rss_after < rss_before + 24 * 1024,
        "memory grew: {rss_before} -> {rss_after} KiB"
    );
    let _ = std::process::Command::new("kill")
        .args(["-CONT", &pid.to_string()])
        .status();
}
