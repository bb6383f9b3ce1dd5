//! The held-out check: fit on the smaller fleets only, predict the runs of a larger one
//! (by default the largest measured), and report the error of each prediction.

use super::model::{fit, Model, Query};
use super::runs::Run;
use super::{family, CapacityError};
use serde::Serialize;
use std::collections::BTreeMap;

/// One held-out run, predicted.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Mode.
    pub mode: String,
    /// Workload.
    pub workload: String,
    /// Fleet size.
    pub hosts: u32,
    /// Measured wall time, s.
    pub measured_s: f64,
    /// Predicted wall time, s.
    pub predicted_s: f64,
    /// (predicted − measured) / measured, %.
    pub error_pct: f64,
    /// The prediction is the CPU floor.
    pub cpu_bound: bool,
    /// Measured controller CPU, s.
    pub measured_cpu_s: f64,
    /// Predicted controller CPU, s.
    pub predicted_cpu_s: f64,
    /// Its error, %.
    pub cpu_error_pct: f64,
}

/// The result of a held-out check (also what `capacity.json` holds).
#[derive(Debug, Clone, Serialize)]
pub struct Validation {
    /// Fleet sizes fitted.
    pub fit_sizes: Vec<u32>,
    /// Fleet size predicted.
    pub held_out: u32,
    /// Cores of the measuring machine.
    pub cores: f64,
    /// One row per held-out run with a fitted model.
    pub validation: Vec<Row>,
    /// Mean |wall error| over the rows, %.
    pub mean_abs_error_pct: Option<f64>,
    /// Largest |wall error|, %.
    pub max_abs_error_pct: Option<f64>,
    /// Mean |controller CPU error|, %.
    pub cpu_mean_abs_error_pct: Option<f64>,
    /// Mean |wall error| over every run when all sizes are fitted, %.
    pub in_sample_mean_abs_error_pct: Option<f64>,
    /// The models fitted on all sizes, by `mode/family`.
    pub model: BTreeMap<String, Model>,
}

fn pct(pred: f64, meas: f64) -> f64 {
    100.0 * (pred - meas) / meas.abs().max(1e-9)
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn mean(v: impl Iterator<Item = f64>) -> Option<f64> {
    let (s, n) = v.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    (n > 0).then(|| round1(s / n as f64))
}

fn find<'a>(models: &'a [Model], r: &Run) -> Option<&'a Model> {
    let fam = family(&r.workload);
    models.iter().find(|m| m.mode == r.mode && m.family == fam)
}

fn query(r: &Run) -> Query {
    Query {
        forks: Some(r.forks),
        cores: Some(r.cores),
        ..Query::new(r.hosts, r.tasks, r.rtt_ms.unwrap_or(0.0))
    }
}

/// Fits on every run (RTT series included) of fleets smaller than `hold_out` (default: the
/// largest fleet measured on the direct link) and predicts that fleet's direct-link runs.
pub fn validate(runs: &[Run], hold_out: Option<u32>) -> Result<Validation, CapacityError> {
    let mut sizes: Vec<u32> = runs
        .iter()
        .filter(|r| r.rtt_ms.is_none())
        .map(|r| r.hosts)
        .collect();
    sizes.sort_unstable();
    sizes.dedup();
    let held = match hold_out {
        Some(h) if sizes.contains(&h) => h,
        Some(h) => {
            return Err(CapacityError::NotEnoughData(format!(
                "no direct-link runs on {h} hosts to hold out (fleet sizes measured: {sizes:?})"
            )))
        }
        None => *sizes.last().ok_or_else(|| {
            CapacityError::NotEnoughData("no direct-link runs to hold out".into())
        })?,
    };
    let fit_runs: Vec<Run> = runs.iter().filter(|r| r.hosts < held).cloned().collect();
    if fit_runs.is_empty() {
        return Err(CapacityError::NotEnoughData(format!(
            "need a fleet smaller than {held} hosts to fit on (fleet sizes measured: {sizes:?})"
        )));
    }
    let mut fit_sizes: Vec<u32> = fit_runs.iter().map(|r| r.hosts).collect();
    fit_sizes.sort_unstable();
    fit_sizes.dedup();
    let small = fit(&fit_runs)?;
    let rows: Vec<Row> = runs
        .iter()
        .filter(|r| r.hosts == held && r.rtt_ms.is_none())
        .filter_map(|r| {
            let p = find(&small, r)?.predict(&query(r));
            Some(Row {
                mode: r.mode.clone(),
                workload: r.workload.clone(),
                hosts: r.hosts,
                measured_s: r.wall_s,
                predicted_s: (p.wall_s * 100.0).round() / 100.0,
                error_pct: round1(pct(p.wall_s, r.wall_s)),
                cpu_bound: p.cpu_bound,
                measured_cpu_s: r.cpu_s,
                predicted_cpu_s: (p.controller_cpu_s * 100.0).round() / 100.0,
                cpu_error_pct: round1(pct(p.controller_cpu_s, r.cpu_s)),
            })
        })
        .collect();
    let all = fit(runs)?;
    let in_sample = mean(runs.iter().filter_map(|r| {
        let p = find(&all, r)?.predict(&query(r));
        Some(pct(p.wall_s, r.wall_s).abs())
    }));
    Ok(Validation {
        fit_sizes,
        held_out: held,
        cores: runs.first().map_or(0.0, |r| r.cores),
        mean_abs_error_pct: mean(rows.iter().map(|x| x.error_pct.abs())),
        max_abs_error_pct: rows.iter().map(|x| x.error_pct.abs()).reduce(f64::max),
        cpu_mean_abs_error_pct: mean(rows.iter().map(|x| x.cpu_error_pct.abs())),
        in_sample_mean_abs_error_pct: in_sample,
        validation: rows,
        model: all
            .into_iter()
            .map(|m| (format!("{}/{}", m.mode, m.family), m))
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(hosts: u32, rtt: Option<f64>, wall: f64) -> Run {
        Run {
            id: format!("{hosts}"),
            mode: "stock".into(),
            workload: "hostname20".into(),
            hosts,
            forks: hosts,
            rtt_ms: rtt,
            tasks: 20.0,
            wall_s: wall,
            cpu_s: 1.0 + 0.04 * 20.0 * f64::from(hosts),
            target_cpu_s: Some(0.15 * 20.0 * f64::from(hosts)),
            mem_kb: Some(100_000.0),
            bytes: Some(1e6),
            cores: 2.0,
        }
    }

    #[test]
    fn holds_out_the_largest_fleet() {
        let runs = vec![
            run(1, None, 5.0),
            run(1, Some(50.0), 7.0),
            run(10, None, 30.0),
            run(50, None, 100.0),
        ];
        let v = validate(&runs, None).expect("validate");
        assert_eq!(v.held_out, 50);
        assert_eq!(v.fit_sizes, vec![1, 10]);
        assert_eq!(v.validation.len(), 1);
        assert!(v.validation[0].error_pct.is_finite());
        let v = validate(&runs, Some(10)).expect("validate 10");
        assert_eq!(v.fit_sizes, vec![1]);
        assert!(validate(&runs, Some(1)).is_err());
        assert!(validate(&runs, Some(7)).is_err());
        assert!(validate(&[], None).is_err());
    }
}
