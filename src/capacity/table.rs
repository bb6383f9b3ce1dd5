//! Plain-text tables of `spindle capacity`: predictions, the held-out check, coefficients.

use super::model::{Model, Prediction, Query};
use super::validate::Validation;
use std::fmt::Write as _;

/// The predictions for one query, one line per mode.
pub fn predictions(q: &Query, family: &str, cores: f64, rows: &[(&Model, Prediction)]) -> String {
    let mut s = String::new();
    let forks = q.forks.unwrap_or(q.hosts);
    let targets = if q.separate_targets {
        "targets on their own machines"
    } else {
        "targets sharing the controller's cores, as measured"
    };
    let _ = writeln!(
        s,
        "{} hosts x {} tasks ({family}), RTT {} ms, forks {forks}, {cores} controller cores, {targets}",
        q.hosts, q.tasks, q.rtt_ms
    );
    let _ = writeln!(
        s,
        "{:<13} {:>10} {:>12} {:>10} {:>12} {:>10}",
        "mode", "wall s", "ctl CPU s", "mem MiB", "bytes MiB", "Mbit/s"
    );
    for (m, p) in rows {
        let _ = writeln!(
            s,
            "{:<13} {:>10.1} {:>12.1} {:>10.1} {:>12.1} {:>10.2}{}",
            m.mode,
            p.wall_s,
            p.controller_cpu_s,
            p.controller_mem_kb / 1024.0,
            p.bytes / 1_048_576.0,
            p.bandwidth_mbit_s,
            if p.cpu_bound { "  (CPU-bound)" } else { "" }
        );
    }
    if let Some((m, _)) = rows.iter().find(|(_, p)| p.extrapolated) {
        let largest = m.hosts.iter().max().copied().unwrap_or(0);
        let _ = writeln!(
            s,
            "note: {} hosts is far beyond the fleet sizes fitted (up to {largest}): an extrapolation",
            q.hosts
        );
    }
    s
}

/// The held-out check.
pub fn validation(v: &Validation) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "fit on fleet sizes {:?}, predicting {} targets ({} cores):",
        v.fit_sizes, v.held_out, v.cores
    );
    let _ = writeln!(
        s,
        "{:<13} {:<12} {:>6} {:>11} {:>11} {:>7} {:>9} {:>9} {:>7}",
        "mode",
        "workload",
        "hosts",
        "measured s",
        "predicted s",
        "error",
        "CPU s",
        "pred CPU",
        "error"
    );
    for x in &v.validation {
        let _ = writeln!(
            s,
            "{:<13} {:<12} {:>6} {:>11.1} {:>11.1} {:>+6.0}% {:>9.1} {:>9.1} {:>+6.0}%",
            x.mode,
            x.workload,
            x.hosts,
            x.measured_s,
            x.predicted_s,
            x.error_pct,
            x.measured_cpu_s,
            x.predicted_cpu_s,
            x.cpu_error_pct
        );
    }
    let f = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{v:.1}%"));
    let _ = writeln!(
        s,
        "wall: mean |error| {}, max |error| {}; controller CPU: mean |error| {}; in-sample (all sizes fitted) wall mean |error| {}",
        f(v.mean_abs_error_pct),
        f(v.max_abs_error_pct),
        f(v.cpu_mean_abs_error_pct),
        f(v.in_sample_mean_abs_error_pct)
    );
    s
}

/// The fitted coefficients, one block per model.
pub fn coefficients(models: &[Model]) -> String {
    let mut s = String::new();
    for m in models {
        let _ = writeln!(
            s,
            "{}/{} (n={}, hosts {:?}, rtts {:?} ms, {} cores; contention q={:.4} s/task/host)",
            m.mode,
            m.family,
            m.n,
            m.hosts,
            m.rtts,
            m.cores,
            m.contention(m.cores, false)
        );
        for (name, c) in [
            ("wall", &m.wall),
            ("cpu", &m.cpu),
            ("tcpu", &m.target_cpu),
            ("mem", &m.mem),
            ("bytes", &m.bytes),
        ] {
            let kv: Vec<String> = c.iter().map(|(k, v)| format!("{k}={v:.4}")).collect();
            let _ = writeln!(s, "   {name:<5} {}", kv.join("  "));
        }
    }
    s
}
