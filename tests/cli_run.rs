//! `spindle run` fans a command out through one daemon: 50 real sshd namespace targets, and 50
//! local-transport agents.

mod common;
use common::*;
use std::process::Command;

fn run_cli(inventory: &std::path::Path, extra: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_spindle"))
        .arg("run")
        .arg("-i")
        .arg(inventory)
        .args(extra)
        .args(["--", "hostname; id -u"])
        .env("TMPDIR", env!("CARGO_TARGET_TMPDIR"))
        .output()
        .expect("run spindle");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn run_on_50_ssh_targets() {
    let Some(fleet) = Fleet::up("cli", 50) else {
        return;
    };
    let (code, stdout, stderr) = run_cli(&fleet.inventory, &[]);
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stderr.contains("ok=50 failed=0 unreachable=0"), "{stderr}");
    assert_eq!(
        stdout.matches("| CHANGED | rc=0 >>").count(),
        50,
        "{stdout}"
    );
    for s in &fleet.specs {
        assert!(
            stdout.contains(&format!("{} | CHANGED", s.label())),
            "{stdout}"
        );
    }
}

#[test]
fn run_on_50_local_targets() {
    let dir = scratch("cli_local");
    let inv = local_inventory(&dir, 50);
    let (code, stdout, stderr) = run_cli(&inv, &[]);
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stderr.contains("ok=50 failed=0 unreachable=0"), "{stderr}");
}

#[test]
fn failing_command_is_reported_failed() {
    let dir = scratch("cli_fail");
    let inv = local_inventory(&dir, 3);
    let out = Command::new(env!("CARGO_BIN_EXE_spindle"))
        .args(["run", "-i"])
        .arg(&inv)
        .args(["--", "exit 3"])
        .env("TMPDIR", env!("CARGO_TARGET_TMPDIR"))
        .output()
        .expect("run spindle");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("ok=0 failed=3"), "{stderr}");
}

#[test]
fn every_subcommand_has_help() {
    for sub in ["serve", "run", "ping", "put", "fetch", "stats"] {
        let out = Command::new(env!("CARGO_BIN_EXE_spindle"))
            .args([sub, "--help"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{sub} --help");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("Usage"),
            "{sub}"
        );
    }
}
