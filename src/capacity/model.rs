//! The capacity model: its terms, fitting them to measured runs, and evaluating a query.
//!
//! Per (mode, workload family), with `W = ceil(hosts / forks)` waves and `E = min(hosts,
//! forks)` hosts served at once (docs/capacity.md has the why of every term):
//!
//! ```text
//! cpu     = c0 + c_host·hosts + c_task·tasks·hosts         controller CPU, s
//! tcpu    = g_host·hosts + g_task·tasks·hosts               target CPU (all targets), s
//! q       = (c_task + σ·g_task) / cores                     s per task per host served at once
//! wall    = s0 + s_rtt·RTT + tasks·W·(a + r·RTT + q·E)      and  ≥ (cpu + σ·tcpu) / cores
//! mem     = m0 + m_host·E                                   controller peak RSS, kB
//! bytes   = w_host·hosts + w_task·tasks·hosts               both directions
//! ```
//!
//! σ is 1 when the targets share the controller's cores (every bench fleet: the fit always
//! uses 1), 0 for separate targets. `q` is not fitted from wall times: it is the CPU work each
//! extra host adds to every task, divided by the cores that do it, so it is measured at every
//! fleet size (CPU is what the noisy shared machine disturbs least).

use super::nnls::{nnls, nnls_relative, Coefs};
use super::runs::Run;
use super::{family, mode_rank, CapacityError};
use serde::Serialize;
use std::collections::BTreeMap;

/// The fitted model of one (mode, workload family).
#[derive(Debug, Clone, Serialize)]
pub struct Model {
    /// Mode.
    pub mode: String,
    /// Workload family (`hostname`, `mixed`, ...).
    pub family: String,
    /// Runs it rests on.
    pub n: usize,
    /// Fleet sizes it rests on.
    pub hosts: Vec<u32>,
    /// RTTs (ms) it rests on (0 for the direct link).
    pub rtts: Vec<f64>,
    /// Cores of the machine that measured it.
    pub cores: f64,
    /// `s0`, `s_rtt` (per s of RTT), `a`, `r` (round trips per task).
    pub wall: Coefs,
    /// `c0`, `c_host`, `c_task`.
    pub cpu: Coefs,
    /// `g_host`, `g_task`.
    pub target_cpu: Coefs,
    /// `m0`, `m_host` (kB).
    pub mem: Coefs,
    /// `w_host`, `w_task`.
    pub bytes: Coefs,
}

/// A question: this many hosts and tasks, this link and forks, this controller.
#[derive(Debug, Clone, Copy)]
pub struct Query {
    /// Hosts in the play.
    pub hosts: u32,
    /// Tasks per host.
    pub tasks: f64,
    /// Round-trip time to the targets, ms.
    pub rtt_ms: f64,
    /// Ansible forks (`None`: as many as hosts).
    pub forks: Option<u32>,
    /// Controller cores (`None`: those of the machine that measured).
    pub cores: Option<f64>,
    /// The targets do not share the controller's cores (real targets).
    pub separate_targets: bool,
}

impl Query {
    /// A query with forks = hosts, the measuring machine's cores, shared cores.
    pub fn new(hosts: u32, tasks: f64, rtt_ms: f64) -> Self {
        Query {
            hosts,
            tasks,
            rtt_ms,
            forks: None,
            cores: None,
            separate_targets: false,
        }
    }
}

/// The model's answer.
#[derive(Debug, Clone, Serialize)]
pub struct Prediction {
    /// Wall time, s.
    pub wall_s: f64,
    /// The CPU floor set the wall time (the controller's cores are the limit).
    pub cpu_bound: bool,
    /// Controller CPU, s.
    pub controller_cpu_s: f64,
    /// CPU on all targets together, s.
    pub target_cpu_s: f64,
    /// Controller peak memory (sum of RSS), kB.
    pub controller_mem_kb: f64,
    /// Bytes on the wire, both directions.
    pub bytes: f64,
    /// Mean bandwidth over the play, Mbit/s.
    pub bandwidth_mbit_s: f64,
    /// Time of one task across all waves, s.
    pub per_task_s: f64,
    /// Hosts more than twice the largest fleet the model was fitted on.
    pub extrapolated: bool,
}

struct Shape {
    tasks: f64,
    rtt: f64,
    waves: f64,
    at_once: f64,
    hosts: f64,
}

fn shape(hosts: u32, forks: u32, tasks: f64, rtt_ms: f64) -> Shape {
    let forks = forks.max(1);
    Shape {
        tasks,
        rtt: rtt_ms / 1000.0,
        waves: f64::from(hosts.div_ceil(forks)),
        at_once: f64::from(hosts.min(forks)),
        hosts: f64::from(hosts),
    }
}

fn run_shape(r: &Run) -> Shape {
    shape(r.hosts, r.forks, r.tasks, r.rtt_ms.unwrap_or(0.0))
}

fn get(c: &Coefs, k: &str) -> f64 {
    c.get(k).copied().unwrap_or(0.0)
}

impl Model {
    /// Seconds each host served at once adds to every task (the contention term `q`).
    pub fn contention(&self, cores: f64, separate_targets: bool) -> f64 {
        let sigma = if separate_targets { 0.0 } else { 1.0 };
        (get(&self.cpu, "c_task") + sigma * get(&self.target_cpu, "g_task")) / cores.max(1e-9)
    }

    /// Evaluates the model for `q`.
    pub fn predict(&self, q: &Query) -> Prediction {
        let cores = q.cores.unwrap_or(self.cores).max(1e-9);
        let s = shape(q.hosts, q.forks.unwrap_or(q.hosts), q.tasks, q.rtt_ms);
        let (w, c, g) = (&self.wall, &self.cpu, &self.target_cpu);
        let per_task = s.waves
            * (get(w, "a")
                + get(w, "r") * s.rtt
                + self.contention(cores, q.separate_targets) * s.at_once);
        let mut wall = get(w, "s0") + get(w, "s_rtt") * s.rtt + s.tasks * per_task;
        let cpu = get(c, "c0") + get(c, "c_host") * s.hosts + get(c, "c_task") * s.tasks * s.hosts;
        let tcpu = get(g, "g_host") * s.hosts + get(g, "g_task") * s.tasks * s.hosts;
        let sigma = if q.separate_targets { 0.0 } else { 1.0 };
        let floor = (cpu + sigma * tcpu) / cores;
        let cpu_bound = floor > wall;
        if cpu_bound {
            wall = floor;
        }
        let bytes =
            get(&self.bytes, "w_host") * s.hosts + get(&self.bytes, "w_task") * s.tasks * s.hosts;
        let largest = self.hosts.iter().copied().max().unwrap_or(0);
        Prediction {
            wall_s: wall,
            cpu_bound,
            controller_cpu_s: cpu,
            target_cpu_s: tcpu,
            controller_mem_kb: get(&self.mem, "m0") + get(&self.mem, "m_host") * s.at_once,
            bytes,
            bandwidth_mbit_s: if wall > 0.0 {
                bytes * 8.0 / 1e6 / wall
            } else {
                0.0
            },
            per_task_s: per_task,
            extrapolated: q.hosts > 2 * largest,
        }
    }
}

fn fit_one(mode: &str, fam: &str, rs: &[&Run]) -> Model {
    let shapes: Vec<Shape> = rs.iter().map(|r| run_shape(r)).collect();
    let mut hosts: Vec<u32> = rs.iter().map(|r| r.hosts).collect();
    hosts.sort_unstable();
    hosts.dedup();
    let mut rtts: Vec<f64> = rs.iter().map(|r| r.rtt_ms.unwrap_or(0.0)).collect();
    rtts.sort_by(f64::total_cmp);
    rtts.dedup();
    let cores = rs.iter().map(|r| r.cores).sum::<f64>() / rs.len().max(1) as f64;

    let per_host = |s: &Shape| vec![s.hosts, s.tasks * s.hosts];
    let cpu_x: Vec<Vec<f64>> = shapes
        .iter()
        .map(|s| vec![1.0, s.hosts, s.tasks * s.hosts])
        .collect();
    let cpu_y: Vec<f64> = rs.iter().map(|r| r.cpu_s).collect();
    let cpu = nnls(
        &cpu_x,
        &cpu_y,
        &["c0", "c_host", "c_task"],
        &["c_task", "c0", "c_host"],
    );

    let (tx, ty): (Vec<_>, Vec<_>) = rs
        .iter()
        .zip(&shapes)
        .filter_map(|(r, s)| r.target_cpu_s.map(|v| (per_host(s), v)))
        .unzip();
    let target_cpu = nnls(&tx, &ty, &["g_host", "g_task"], &["g_task", "g_host"]);

    let (mx, my): (Vec<_>, Vec<_>) = rs
        .iter()
        .zip(&shapes)
        .filter_map(|(r, s)| r.mem_kb.map(|v| (vec![1.0, s.at_once], v)))
        .unzip();
    let mem = nnls(&mx, &my, &["m0", "m_host"], &["m0", "m_host"]);

    let (bx, by): (Vec<_>, Vec<_>) = rs
        .iter()
        .zip(&shapes)
        .filter_map(|(r, s)| r.bytes.map(|v| (per_host(s), v)))
        .unzip();
    let bytes = nnls(&bx, &by, &["w_host", "w_task"], &["w_task", "w_host"]);

    let mut m = Model {
        mode: mode.to_string(),
        family: fam.to_string(),
        n: rs.len(),
        hosts,
        rtts,
        cores,
        wall: Coefs::new(),
        cpu,
        target_cpu,
        mem,
        bytes,
    };
    // Wall time left once the contention term (from CPU, per run's own cores) is taken out.
    let wx: Vec<Vec<f64>> = shapes
        .iter()
        .map(|s| vec![1.0, s.rtt, s.tasks * s.waves, s.tasks * s.waves * s.rtt])
        .collect();
    let wy: Vec<f64> = rs
        .iter()
        .zip(&shapes)
        .map(|(r, s)| r.wall_s - s.tasks * s.waves * s.at_once * m.contention(r.cores, false))
        .collect();
    let walls: Vec<f64> = rs.iter().map(|r| r.wall_s).collect();
    m.wall = nnls_relative(
        &wx,
        &wy,
        &walls,
        &["s0", "s_rtt", "a", "r"],
        &["a", "r", "s0", "s_rtt"],
    );
    m
}

/// One model per (mode, workload family) present in `runs`, in table order.
pub fn fit(runs: &[Run]) -> Result<Vec<Model>, CapacityError> {
    if runs.is_empty() {
        return Err(CapacityError::NotEnoughData(
            "no successful runs to fit".into(),
        ));
    }
    let mut groups: BTreeMap<(usize, String, String), Vec<&Run>> = BTreeMap::new();
    for r in runs {
        let key = (
            mode_rank(&r.mode),
            r.mode.clone(),
            family(&r.workload).to_string(),
        );
        groups.entry(key).or_default().push(r);
    }
    Ok(groups
        .into_iter()
        .map(|((_, mode, fam), rs)| fit_one(&mode, &fam, &rs))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn coefs(kv: &[(&'static str, f64)]) -> Coefs {
        kv.iter().copied().collect()
    }

    fn truth() -> Model {
        Model {
            mode: "spindle".into(),
            family: "hostname".into(),
            n: 0,
            hosts: vec![1, 10, 50],
            rtts: vec![],
            cores: 2.0,
            wall: coefs(&[("s0", 4.0), ("s_rtt", 3.0), ("a", 0.04), ("r", 1.0)]),
            cpu: coefs(&[("c0", 0.9), ("c_host", 0.01), ("c_task", 0.03)]),
            target_cpu: coefs(&[("g_host", 0.02), ("g_task", 0.025)]),
            mem: coefs(&[("m0", 120_000.0), ("m_host", 55_000.0)]),
            bytes: coefs(&[("w_host", 600_000.0), ("w_task", 8_000.0)]),
        }
    }

    fn synthetic_run(m: &Model, hosts: u32, tasks: f64, rtt: Option<f64>) -> Run {
        let p = m.predict(&Query::new(hosts, tasks, rtt.unwrap_or(0.0)));
        Run {
            id: format!("h{hosts}-t{tasks}-{rtt:?}"),
            mode: m.mode.clone(),
            workload: if tasks > 50.0 {
                "hostname100"
            } else {
                "hostname20"
            }
            .into(),
            hosts,
            forks: hosts,
            rtt_ms: rtt,
            tasks,
            wall_s: p.wall_s,
            cpu_s: p.controller_cpu_s,
            target_cpu_s: Some(p.target_cpu_s),
            mem_kb: Some(p.controller_mem_kb),
            bytes: Some(p.bytes),
            cores: 2.0,
        }
    }

    #[test]
    fn fitting_synthetic_runs_recovers_the_parameters() {
        let t = truth();
        let mut runs = Vec::new();
        for (h, n, rtt) in [
            (1, 100.0, None),
            (1, 20.0, None),
            (10, 20.0, None),
            (50, 20.0, None),
            (1, 20.0, Some(50.0)),
            (1, 100.0, Some(50.0)),
            (1, 20.0, Some(150.0)),
            (10, 20.0, Some(150.0)),
        ] {
            runs.push(synthetic_run(&t, h, n, rtt));
        }
        assert!(runs
            .iter()
            .all(|r| !t.predict(&Query::new(r.hosts, r.tasks, 0.0)).cpu_bound));
        let models = fit(&runs).expect("fit");
        assert_eq!(models.len(), 1);
        let m = &models[0];
        assert_eq!(m.hosts, vec![1, 10, 50]);
        for (fitted, want) in [
            (&m.wall, &t.wall),
            (&m.cpu, &t.cpu),
            (&m.target_cpu, &t.target_cpu),
            (&m.mem, &t.mem),
            (&m.bytes, &t.bytes),
        ] {
            for (k, v) in want {
                let got = get(fitted, k);
                assert!(
                    (got - v).abs() <= 1e-6 * v.abs().max(1.0),
                    "{k}: {got} vs {v}"
                );
            }
        }
        let q = Query {
            forks: Some(50),
            ..Query::new(500, 40.0, 30.0)
        };
        let (a, b) = (m.predict(&q), t.predict(&q));
        assert!((a.wall_s - b.wall_s).abs() < 1e-6 * b.wall_s);
        assert!(a.extrapolated);
    }

    #[test]
    fn waves_cpu_floor_and_separate_targets() {
        let t = truth();
        let one = t.predict(&Query::new(50, 10.0, 0.0));
        let q = Query {
            forks: Some(25),
            ..Query::new(50, 10.0, 0.0)
        };
        let two = t.predict(&q);
        // Two waves of 25: the same contention in total, the per-task latency paid twice.
        assert!(two.per_task_s > one.per_task_s && two.per_task_s < 2.0 * one.per_task_s);
        assert!(two.controller_mem_kb < one.controller_mem_kb);
        let sep = t.predict(&Query {
            separate_targets: true,
            ..Query::new(50, 10.0, 0.0)
        });
        assert!(sep.wall_s < one.wall_s);
        // One core, no fixed latency: the CPU floor is the answer.
        let mut cpu_only = truth();
        cpu_only.wall = coefs(&[("s0", 0.0)]);
        cpu_only.cpu.insert("c0", 1000.0);
        let p = cpu_only.predict(&Query {
            cores: Some(1.0),
            ..Query::new(5, 1.0, 0.0)
        });
        assert!(p.cpu_bound);
        assert!(p.wall_s >= p.controller_cpu_s);
    }

    #[test]
    fn fit_needs_runs() {
        assert!(matches!(fit(&[]), Err(CapacityError::NotEnoughData(_))));
    }
}
