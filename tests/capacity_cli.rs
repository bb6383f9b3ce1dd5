//! `spindle capacity` on the committed bench reports: predictions, the held-out check, JSON,
//! and clear errors for bad input.

use std::path::{Path, PathBuf};
use std::process::Command;

fn reports() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/reports/default-3")
}

fn capacity(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_spindle"))
        .arg("capacity")
        .args(args)
        .output()
        .expect("run spindle capacity");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn predicts_every_mode_and_one_mode_as_json() {
    let r = reports();
    let dir = r.to_str().expect("utf-8 path");
    let (code, out, err) = capacity(&[
        "--results",
        dir,
        "--hosts",
        "500",
        "--tasks",
        "100",
        "--rtt",
        "50",
        "--forks",
        "50",
    ]);
    assert_eq!(code, 0, "{err}");
    for mode in ["stock", "stock-nopipe", "mitogen", "spindle"] {
        assert!(
            out.lines().any(|l| l.starts_with(mode)),
            "{mode} missing:\n{out}"
        );
    }
    assert!(out.contains("an extrapolation"), "{out}");

    let (code, out, err) = capacity(&[
        "--results",
        dir,
        "--hosts",
        "500",
        "--tasks",
        "100",
        "--rtt",
        "50",
        "--forks",
        "50",
        "--mode",
        "spindle",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON output");
    let p = &v["predictions"];
    assert_eq!(p.as_array().map(|a| a.len()), Some(1), "{out}");
    assert_eq!(p[0]["mode"], "spindle");
    for k in [
        "wall_s",
        "controller_cpu_s",
        "controller_mem_kb",
        "bytes",
        "bandwidth_mbit_s",
    ] {
        let x = p[0][k].as_f64().unwrap_or(-1.0);
        assert!(x > 0.0 && x.is_finite(), "{k} = {x}");
    }
    // Below the CPU floor, more tasks or more RTT take longer.
    let wall = |args: &[&str]| -> f64 {
        let mut a = vec!["--results", dir, "--mode", "spindle", "--json"];
        a.extend_from_slice(args);
        let (_, out, _) = capacity(&a);
        let v: serde_json::Value = serde_json::from_str(&out).expect("JSON");
        v["predictions"][0]["wall_s"].as_f64().unwrap_or(0.0)
    };
    let base = wall(&["--hosts", "10", "--tasks", "10"]);
    assert!(wall(&["--hosts", "10", "--tasks", "20"]) > base);
    assert!(wall(&["--hosts", "10", "--tasks", "10", "--rtt", "100"]) > base);
}

#[test]
fn validates_on_the_held_out_fleet() {
    let r = reports();
    let dir = r.to_str().expect("utf-8 path");
    let (code, out, err) = capacity(&["--results", dir, "--validate"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("fit on fleet sizes [1, 10], predicting 50"),
        "{out}"
    );
    assert!(out.contains("mean |error|"), "{out}");
    let (code, out, err) = capacity(&["--results", dir, "--validate", "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON output");
    assert_eq!(v["held_out"], 50);
    let rows = v["validation"].as_array().expect("rows");
    assert_eq!(rows.len(), 4, "{out}");
    for row in rows {
        let e = row["error_pct"].as_f64().expect("error_pct");
        // Loose bound: the check must run, not the machine be quiet.
        assert!(e.abs() < 100.0, "{row}");
    }
}

#[test]
fn bad_input_is_a_clear_error_not_a_panic() {
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("capacity-bad");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).expect("tmp");
    std::fs::write(tmp.join("results.json"), "{\"runs\": [").expect("write");
    let t = tmp.to_str().expect("utf-8");
    let (code, _, err) = capacity(&["--results", t, "--hosts", "5", "--tasks", "5"]);
    assert_eq!(code, 1);
    assert!(err.contains("not bench/run results JSON"), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    let (code, _, err) = capacity(&["--results", "/nonexistent/x", "--validate"]);
    assert_eq!(code, 1);
    assert!(err.contains("no results.json"), "{err}");

    let r = reports();
    let dir = r.to_str().expect("utf-8 path");
    let (code, _, err) = capacity(&[
        "--results",
        dir,
        "--hosts",
        "5",
        "--tasks",
        "5",
        "--workload",
        "nope",
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains("no fitted model for workload \"nope\""),
        "{err}"
    );
    let (code, _, err) = capacity(&["--results", dir]);
    assert_eq!(code, 2, "{err}"); // clap: --hosts/--tasks required
}

#[test]
fn slices_recommend_with_reasons_and_json() {
    let r = reports();
    let dir = r.to_str().expect("utf-8 path");
    let base = [
        "--results",
        dir,
        "--slices",
        "--hosts",
        "2000",
        "--tasks",
        "50",
        "--rtt-ms",
        "40",
        "--cores",
        "8",
        "--separate-targets",
    ];
    let (code, out, err) = capacity(&base);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("model: spindle"), "{out}");
    assert!(out.contains("recommended: "), "{out}");
    assert!(out.contains("a controller is full at"), "{out}");
    assert!(out.contains("<- recommended"), "{out}");

    let mut args = base.to_vec();
    args.extend_from_slice(&["--mem-gib", "4", "--deadline", "120", "--json"]);
    let (code, out, err) = capacity(&args);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    let a = &v["advice"];
    let slices = a["slices"].as_u64().expect("slices");
    let forks = a["forks"].as_u64().expect("forks");
    assert!(slices >= 1 && forks >= 1, "{a}");
    assert!(forks <= a["forks_mem"].as_u64().expect("forks_mem"), "{a}");
    assert!(forks * slices >= 2000 || a["deadline_met"] == true, "{a}");
    let row = a["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .find(|r| r["slices"].as_u64() == Some(slices))
        .expect("the recommended row");
    if a["deadline_met"] == true {
        assert!(
            row["prediction"]["wall_s"].as_f64().expect("wall") <= 120.0,
            "{row}"
        );
    }

    // --mem-gib without --slices, and bad values, are errors
    let (code, _, _) = capacity(&[
        "--results",
        dir,
        "--hosts",
        "5",
        "--tasks",
        "5",
        "--mem-gib",
        "4",
    ]);
    assert_eq!(code, 2);
    let mut bad = base.to_vec();
    bad.extend_from_slice(&["--deadline", "0"]);
    let (code, _, err) = capacity(&bad);
    assert_eq!(code, 1, "{err}");
    let mut bad = base.to_vec();
    bad.extend_from_slice(&["--mode", "nope"]);
    let (code, _, err) = capacity(&bad);
    assert_eq!(code, 1);
    assert!(err.contains("no fitted model for mode nope"), "{err}");
}
