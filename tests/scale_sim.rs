//! A small scale test through the fleet simulator: 200 targets with the fault mix (die, hang,
//! garbage, oversize, slow-reader), remote errors and a client that disconnects mid-request,
//! on the backend named by SPINDLE_IO (both when unset). Asserts zero lost or duplicated
//! replies and the right error kind for every faulty target; and 20 real Python agents over
//! the `local` transport (the driver's real-process mode). The full runs are scale-tests/.

use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

fn workdir(io: &str) -> PathBuf {
    // Socket paths must stay under 108 bytes; fall back to /tmp for a deep checkout.
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let base = if base.as_os_str().len() > 60 {
        std::env::temp_dir()
    } else {
        base
    };
    let d = base.join(format!("scale-sim-{io}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("workdir");
    d
}

fn run(io: &str) {
    let dir = workdir(io);
    let out = dir.join("result.json");
    let start = Instant::now();
    let status = Command::new(env!("CARGO_BIN_EXE_spindle-scale"))
        .args([
            "--io",
            io,
            "--streams",
            "200",
            "--rate",
            "2",
            "--duration",
            "5",
        ])
        .args([
            "--faults",
            "default",
            "--call-timeout",
            "2",
            "--fail-rate",
            "0.02",
        ])
        .args([
            "--client-disconnect",
            "--idle-secs",
            "0.2",
            "--service-ms",
            "1",
        ])
        .args(["--label", &format!("test-{io}")])
        .arg("--spindle-bin")
        .arg(env!("CARGO_BIN_EXE_spindle"))
        .arg("--sim-bin")
        .arg(env!("CARGO_BIN_EXE_spindle-fleet-sim"))
        .arg("--workdir")
        .arg(&dir)
        .arg("--out")
        .arg(&out)
        .status()
        .expect("run spindle-scale");
    let took = start.elapsed();
    let text = std::fs::read_to_string(&out).expect("driver wrote its results");
    let r: Value = serde_json::from_str(&text).expect("results are JSON");
    let load = &r["load"];
    assert_eq!(r["open"]["ok"], 200, "every stream opens: {}", r["open"]);
    assert!(
        load["sent"].as_u64().unwrap_or(0) >= 1900,
        "load ran: {load}"
    );
    for k in ["lost", "duplicates", "unknown", "mismatched", "wrong_kind"] {
        assert_eq!(load[k], 0, "{k}: {load}");
    }
    let modes = r["modes"].as_object().expect("per-mode tallies");
    for (mode, want) in [
        ("die", "agent_ended"),
        ("hang", "timeout"),
        ("garbage", "protocol"),
        ("oversize", "protocol"),
        ("slow-reader", "timeout"),
    ] {
        let m = &modes[mode];
        assert!(m["targets"].as_u64() >= Some(1), "{mode} present: {m}");
        let hits = m["outcomes"][want].as_u64().unwrap_or(0);
        assert_eq!(
            hits,
            m["requests"].as_u64().unwrap_or(u64::MAX),
            "{mode}: {m}"
        );
    }
    let healthy = &modes["healthy"];
    assert!(
        healthy["outcomes"]["remote"].as_u64() >= Some(1),
        "{healthy}"
    );
    assert_eq!(healthy["wrong"], 0, "{healthy}");
    assert_eq!(
        r["client_disconnect"]["pass"], true,
        "{}",
        r["client_disconnect"]
    );
    assert_eq!(r["daemon_alive"], true);
    assert!(status.success(), "driver failed: {}", r["failures"]);
    assert!(took < Duration::from_secs(30), "took {took:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn fault_mix_through_the_simulator() {
    match std::env::var("SPINDLE_IO").ok().as_deref() {
        Some("epoll") => run("epoll"),
        Some("uring") => run("uring"),
        _ => {
            run("epoll");
            run("uring");
        }
    }
}

/// The driver's real-process mode: 20 real Python agents over the `local` transport, `ping`
/// and `echo` loads; zero lost, duplicated or cross-wired replies (each `ping` reply must
/// carry its own agent's pid) and every agent alive at the end.
fn run_real(io: &str) {
    for op in ["ping", "echo"] {
        let dir = workdir(&format!("real-{io}-{op}"));
        let out = dir.join("result.json");
        let status = Command::new(env!("CARGO_BIN_EXE_spindle-scale"))
            .args(["--io", io, "--transport", "local", "--op", op])
            .args(["--streams", "20", "--rate", "5", "--duration", "3"])
            .args([
                "--idle-secs",
                "0.2",
                "--label",
                &format!("test-real-{io}-{op}"),
            ])
            .arg("--spindle-bin")
            .arg(env!("CARGO_BIN_EXE_spindle"))
            .arg("--workdir")
            .arg(&dir)
            .arg("--out")
            .arg(&out)
            .status()
            .expect("run spindle-scale");
        let text = std::fs::read_to_string(&out).expect("driver wrote its results");
        let r: Value = serde_json::from_str(&text).expect("results are JSON");
        assert_eq!(r["open"]["ok"], 20, "every agent starts: {}", r["open"]);
        let load = &r["load"];
        assert!(
            load["sent"].as_u64().unwrap_or(0) >= 280,
            "load ran: {load}"
        );
        for k in ["lost", "duplicates", "unknown", "mismatched", "wrong_kind"] {
            assert_eq!(load[k], 0, "{op} {k}: {load}");
        }
        assert_eq!(r["agents"]["count"], 20, "{}", r["agents"]);
        assert_eq!(r["agents"]["count_end"], 20, "{}", r["agents"]);
        assert!(status.success(), "driver failed: {}", r["failures"]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn real_agents_over_the_local_transport() {
    match std::env::var("SPINDLE_IO").ok().as_deref() {
        Some("epoll") => run_real("epoll"),
        Some("uring") => run_real("uring"),
        _ => {
            run_real("epoll");
            run_real("uring");
        }
    }
}
