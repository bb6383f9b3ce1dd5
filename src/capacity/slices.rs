//! Beyond one controller: how many job slices (AWX job slicing: slice k of K gets the hosts
//! `k-1, k-1+K, ...`, each slice its own job, possibly on its own execution node, each with its
//! own Ansible and spindle daemon) and how many forks per slice, for a fleet, from the same
//! fitted [`Model`] `spindle capacity` predicts with (docs/scaling.md derives the rule).
//!
//! Per slice of `h` hosts with `f` forks on a controller of `cores` cores, the model's time per
//! task is `W·(a + r·RTT) + q·h` (`W = ceil(h/f)` waves; the contention `q·E·W` is `q·h`
//! whatever the forks): forks only cut the latency part. A controller is **full** at
//! `f_full = 10·(a + r·RTT)/q` forks: there the latency left is a tenth of the CPU work, its
//! cores are busy 90% of every task, and more hosts only queue. So a fleet runs in one wave
//! on `ceil(hosts / f_full)` controllers; memory (`m0 + m_host·forks`) and `--forks` can lower
//! the forks a controller holds. With a deadline: the fewest slices whose predicted wall time
//! meets it.

use super::model::{Model, Prediction, Query};
use serde::Serialize;
use std::fmt::Write as _;

/// Share of a task's time left to latency when a controller is full (1/10: cores busy 90%).
pub const FULL_LATENCY_SHARE: f64 = 0.1;

/// Slices searched at most when looking for a deadline.
const MAX_SLICES: u32 = 100_000;

/// A fleet to split.
#[derive(Debug, Clone, Copy)]
pub struct SliceQuery {
    /// Hosts in the inventory (all slices together).
    pub hosts: u32,
    /// Tasks per host.
    pub tasks: f64,
    /// Round-trip time to the targets, ms.
    pub rtt_ms: f64,
    /// Cores of each controller (execution node); `None`: the measuring machine's.
    pub cores: Option<f64>,
    /// The targets do not share the controllers' cores (real targets).
    pub separate_targets: bool,
    /// Memory of each controller for Ansible, MiB; `None`: not a limit (the need is printed).
    pub mem_mib: Option<f64>,
    /// At most this many forks per job (`None`: no limit but the model's and memory's).
    pub max_forks: Option<u32>,
    /// Wanted wall time of the whole (sliced) job, s.
    pub deadline_s: Option<f64>,
}

/// One way to split the fleet.
#[derive(Debug, Clone, Serialize)]
pub struct SliceRow {
    /// Slices (jobs, controllers).
    pub slices: u32,
    /// Hosts in the largest slice (it sets the wall time).
    pub hosts_per_slice: u32,
    /// Forks per slice.
    pub forks: u32,
    /// Waves of forks per task in the largest slice.
    pub waves: u32,
    /// The largest slice's prediction (wall time = the sliced job's).
    pub prediction: Prediction,
    /// Controller-seconds paid: slices × wall time (what the split costs).
    pub node_s: f64,
}

/// The recommendation, with what it rests on.
#[derive(Debug, Clone, Serialize)]
pub struct SliceAdvice {
    /// Mode of the model used.
    pub mode: String,
    /// Workload family of the model used.
    pub family: String,
    /// Cores per controller.
    pub cores: f64,
    /// `a + r·RTT`: one task's latency on one host, s.
    pub latency_s: f64,
    /// `q`: s each host served at once adds to every task on this controller.
    pub contention_s: f64,
    /// Forks at which a controller is full (`None` when the model has no CPU cost per task).
    pub forks_full: Option<u32>,
    /// Forks that fit the controller's memory, if `mem_mib` was given.
    pub forks_mem: Option<u32>,
    /// Forks per job allowed: the smallest of full, memory and `--forks`.
    pub forks_limit: u32,
    /// Recommended slices.
    pub slices: u32,
    /// Recommended forks per slice.
    pub forks: u32,
    /// Whether the deadline is met (`None`: no deadline asked).
    pub deadline_met: Option<bool>,
    /// The reasoning, line by line.
    pub reasons: Vec<String>,
    /// The recommendation and its neighbours (1, half, double), by slices.
    pub rows: Vec<SliceRow>,
}

fn get(c: &super::nnls::Coefs, k: &str) -> f64 {
    c.get(k).copied().unwrap_or(0.0)
}

/// Hosts of the largest slice when `hosts` are dealt round-robin into `slices`.
pub fn slice_hosts(hosts: u32, slices: u32) -> u32 {
    hosts.div_ceil(slices.max(1))
}

fn row(m: &Model, q: &SliceQuery, cores: f64, slices: u32, forks_limit: u32) -> SliceRow {
    let h = slice_hosts(q.hosts, slices);
    let forks = h.min(forks_limit).max(1);
    let prediction = m.predict(&Query {
        forks: Some(forks),
        cores: Some(cores),
        separate_targets: q.separate_targets,
        ..Query::new(h, q.tasks, q.rtt_ms)
    });
    SliceRow {
        slices,
        hosts_per_slice: h,
        forks,
        waves: h.div_ceil(forks),
        node_s: f64::from(slices) * prediction.wall_s,
        prediction,
    }
}

/// Slices and forks for `q` by model `m` (see the module's doc for the rule).
pub fn recommend(m: &Model, q: &SliceQuery) -> SliceAdvice {
    let hosts = q.hosts.max(1);
    let cores = q.cores.unwrap_or(m.cores).max(1e-9);
    let latency = get(&m.wall, "a") + get(&m.wall, "r") * q.rtt_ms / 1000.0;
    let contention = m.contention(cores, q.separate_targets);
    let mut reasons = Vec::new();

    let forks_full = (contention > 0.0).then(|| {
        let f = (latency / FULL_LATENCY_SHARE / contention).ceil();
        if f >= f64::from(u32::MAX) {
            u32::MAX
        } else {
            (f as u32).max(1)
        }
    });
    match forks_full {
        Some(f) => reasons.push(format!(
            "a task's latency on a host is a + r*RTT = {:.3} s; each host served at once adds \
             q = {:.4} s of CPU work to every task on {cores} cores: a controller is full at \
             {:.0}*{:.3}/{:.4} = {f} forks (latency a tenth of the CPU work, cores busy 90%)",
            latency,
            contention,
            1.0 / FULL_LATENCY_SHARE,
            latency,
            contention
        )),
        None => reasons.push(
            "the model has no controller CPU per task: forks are limited by memory and --forks only"
                .into(),
        ),
    }
    let (m0, m_host) = (get(&m.mem, "m0"), get(&m.mem, "m_host"));
    let forks_mem = q.mem_mib.map(|mib| {
        let room = mib * 1024.0 - m0;
        if m_host <= 0.0 {
            u32::MAX
        } else if room < m_host {
            0
        } else {
            (room / m_host).floor().min(f64::from(u32::MAX)) as u32
        }
    });
    if let (Some(f), Some(mib)) = (forks_mem, q.mem_mib) {
        reasons.push(format!(
            "memory: {mib:.0} MiB holds {f} forks ({:.0} MiB base + {:.0} MiB per fork, as measured)",
            m0 / 1024.0,
            m_host / 1024.0
        ));
        if f == 0 {
            reasons.push("not even one fork fits that memory: the answer assumes 1".into());
        }
    }
    let mut forks_limit = hosts;
    for f in [forks_full, forks_mem, q.max_forks].into_iter().flatten() {
        forks_limit = forks_limit.min(f.max(1));
    }
    let one_wave = hosts.div_ceil(forks_limit);
    reasons.push(format!(
        "at most {forks_limit} forks per controller: {hosts} hosts run in one wave on \
         ceil({hosts}/{forks_limit}) = {one_wave} slice(s)"
    ));

    let mut slices = one_wave;
    let mut deadline_met = None;
    if let Some(deadline) = q.deadline_s {
        // The wall time falls (almost) monotonically with slices; search the fewest that meet
        // the deadline: doubling, then bisection.
        let meets = |k: u32| row(m, q, cores, k, forks_limit).prediction.wall_s <= deadline;
        let limit = hosts.min(MAX_SLICES);
        if meets(1) {
            slices = 1;
            deadline_met = Some(true);
        } else if !meets(limit) {
            slices = limit;
            deadline_met = Some(false);
            reasons.push(format!(
                "deadline {deadline:.0} s: not met even with {limit} slices (the latency floor \
                 s0 + tasks*(a + r*RTT) is {:.1} s)",
                get(&m.wall, "s0") + q.tasks * latency
            ));
        } else {
            let (mut lo, mut hi) = (1u32, 2u32.min(limit));
            while !meets(hi) {
                lo = hi;
                hi = hi.saturating_mul(2).min(limit);
            }
            while hi - lo > 1 {
                let mid = lo + (hi - lo) / 2;
                if meets(mid) {
                    hi = mid;
                } else {
                    lo = mid;
                }
            }
            slices = hi;
            deadline_met = Some(true);
        }
        if deadline_met == Some(true) {
            reasons.push(format!(
                "deadline {deadline:.0} s: the fewest slices that meet it: {slices}"
            ));
        }
    } else if one_wave > 1 {
        reasons.push(
            "fewer slices run in waves (slower in proportion); more split the CPU work further \
             (faster, each controller waiting more on the network): --deadline picks for a wall \
             time"
                .into(),
        );
    }
    let chosen = row(m, q, cores, slices, forks_limit);
    let mut ks = vec![1, slices / 2, slices, slices.saturating_mul(2)];
    if one_wave != slices {
        ks.push(one_wave);
    }
    ks.retain(|&k| k >= 1 && k <= hosts);
    ks.sort_unstable();
    ks.dedup();
    let rows = ks
        .into_iter()
        .map(|k| row(m, q, cores, k, forks_limit))
        .collect();
    SliceAdvice {
        mode: m.mode.clone(),
        family: m.family.clone(),
        cores,
        latency_s: latency,
        contention_s: contention,
        forks_full,
        forks_mem,
        forks_limit,
        slices,
        forks: chosen.forks,
        deadline_met,
        reasons,
        rows,
    }
}

/// The recommendation as text: the query, the reasoning, the table.
pub fn table(q: &SliceQuery, a: &SliceAdvice) -> String {
    let mut s = String::new();
    let targets = if q.separate_targets {
        "targets on their own machines"
    } else {
        "targets sharing the controllers' cores, as measured"
    };
    let _ = writeln!(
        s,
        "{} hosts x {} tasks ({}), RTT {} ms, {} cores per controller, {targets}; model: {}",
        q.hosts, q.tasks, a.family, q.rtt_ms, a.cores, a.mode
    );
    let _ = writeln!(
        s,
        "recommended: {} slice(s) of {} hosts, forks {} (each slice its own job and controller{})",
        a.slices,
        slice_hosts(q.hosts, a.slices),
        a.forks,
        if a.mode == "spindle" {
            ", with its own spindle daemon"
        } else {
            ""
        }
    );
    for r in &a.reasons {
        let _ = writeln!(s, "  - {r}");
    }
    let _ = writeln!(
        s,
        "{:>7} {:>12} {:>7} {:>6} {:>9} {:>14} {:>16} {:>11}",
        "slices",
        "hosts/slice",
        "forks",
        "waves",
        "wall s",
        "ctl CPU s/node",
        "mem MiB/node",
        "node-s"
    );
    for r in &a.rows {
        let p = &r.prediction;
        let _ = writeln!(
            s,
            "{:>7} {:>12} {:>7} {:>6} {:>9.1} {:>14.1} {:>16.0} {:>11.0}{}{}",
            r.slices,
            r.hosts_per_slice,
            r.forks,
            r.waves,
            p.wall_s,
            p.controller_cpu_s,
            p.controller_mem_kb / 1024.0,
            r.node_s,
            if r.slices == a.slices {
                "  <- recommended"
            } else {
                ""
            },
            if p.cpu_bound { " (CPU-bound)" } else { "" }
        );
    }
    if let Some(r) = a.rows.iter().find(|r| r.slices == a.slices) {
        if r.prediction.extrapolated {
            let _ = writeln!(
                s,
                "note: {} hosts per slice is far beyond the fleet sizes fitted: an extrapolation",
                r.hosts_per_slice
            );
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capacity::nnls::Coefs;

    fn coefs(kv: &[(&'static str, f64)]) -> Coefs {
        kv.iter().copied().collect()
    }

    /// spindle's hostname model of bench/reports/default-5 (`spindle capacity --show`), rounded.
    fn spindle() -> Model {
        Model {
            mode: "spindle".into(),
            family: "hostname".into(),
            n: 12,
            hosts: vec![1, 10, 50],
            rtts: vec![0.0, 10.0, 50.0, 150.0],
            cores: 2.0,
            wall: coefs(&[("s0", 1.0), ("s_rtt", 0.0), ("a", 0.012), ("r", 1.39)]),
            cpu: coefs(&[("c0", 0.21), ("c_host", 0.16), ("c_task", 0.029)]),
            target_cpu: coefs(&[("g_host", 0.16), ("g_task", 0.0064)]),
            mem: coefs(&[("m0", 67_000.0), ("m_host", 57_600.0)]),
            bytes: coefs(&[("w_host", 621_000.0), ("w_task", 2_000.0)]),
        }
    }

    fn query(hosts: u32) -> SliceQuery {
        SliceQuery {
            hosts,
            tasks: 50.0,
            rtt_ms: 40.0,
            cores: Some(8.0),
            separate_targets: true,
            mem_mib: None,
            max_forks: None,
            deadline_s: None,
        }
    }

    #[test]
    fn full_forks_follow_latency_and_cores() {
        let m = spindle();
        let a = recommend(&m, &query(2000));
        // latency 0.012 + 1.39*0.04 = 0.0676 s; q = 0.029/8 = 0.003625: 10*0.0676/0.003625
        assert!((a.latency_s - 0.0676).abs() < 1e-9, "{}", a.latency_s);
        assert_eq!(a.forks_full, Some(187));
        assert_eq!(a.forks_limit, 187);
        assert_eq!(a.slices, 11); // ceil(2000/187)
        assert_eq!(a.forks, 182); // ceil(2000/11)
                                  // Higher RTT: more forks hide it, fewer slices.
        let far = recommend(
            &m,
            &SliceQuery {
                rtt_ms: 150.0,
                ..query(2000)
            },
        );
        assert!(far.forks_full > a.forks_full && far.slices < a.slices);
        // More cores per controller: each holds more forks.
        let big = recommend(
            &m,
            &SliceQuery {
                cores: Some(32.0),
                ..query(2000)
            },
        );
        assert!(big.forks_full > a.forks_full && big.slices < a.slices);
    }

    #[test]
    fn a_small_fleet_is_one_slice() {
        let a = recommend(&spindle(), &query(100));
        assert_eq!((a.slices, a.forks), (1, 100));
        assert_eq!(a.rows.len(), 2); // 1 and 2 slices
        assert!(a.rows[1].prediction.wall_s < a.rows[0].prediction.wall_s);
    }

    #[test]
    fn memory_limits_forks_and_adds_slices() {
        let m = spindle();
        // 4 GiB: (4096 - 65.4)/56.25 = 71 forks
        let a = recommend(
            &m,
            &SliceQuery {
                mem_mib: Some(4096.0),
                ..query(2000)
            },
        );
        assert_eq!(a.forks_mem, Some(71));
        assert_eq!(a.forks_limit, 71);
        assert_eq!(a.slices, 2000u32.div_ceil(71));
        let none = recommend(
            &m,
            &SliceQuery {
                mem_mib: Some(10.0),
                ..query(10)
            },
        );
        assert_eq!(none.forks_mem, Some(0));
        assert_eq!(none.forks_limit, 1);
        let capped = recommend(
            &m,
            &SliceQuery {
                max_forks: Some(50),
                ..query(2000)
            },
        );
        assert_eq!((capped.forks_limit, capped.slices), (50, 40));
    }

    #[test]
    fn deadline_picks_the_fewest_slices_that_meet_it() {
        let m = spindle();
        let q = SliceQuery {
            deadline_s: Some(60.0),
            ..query(2000)
        };
        let a = recommend(&m, &q);
        assert_eq!(a.deadline_met, Some(true));
        let wall = |k| row(&m, &q, 8.0, k, a.forks_limit).prediction.wall_s;
        assert!(wall(a.slices) <= 60.0);
        assert!(wall(a.slices - 1) > 60.0, "{} slices", a.slices);
        // An easy deadline: one slice (in waves) is enough.
        let easy = recommend(
            &m,
            &SliceQuery {
                deadline_s: Some(1e6),
                ..query(2000)
            },
        );
        assert_eq!((easy.slices, easy.deadline_met), (1, Some(true)));
        // Below the latency floor (s0 + 50 tasks * 0.0676 s = 4.4 s): not met.
        let hard = recommend(
            &m,
            &SliceQuery {
                deadline_s: Some(2.0),
                ..query(2000)
            },
        );
        assert_eq!(hard.deadline_met, Some(false));
        assert!(hard.reasons.iter().any(|r| r.contains("not met")));
    }

    #[test]
    fn slices_split_round_robin_and_table_prints() {
        assert_eq!(slice_hosts(9, 3), 3);
        assert_eq!(slice_hosts(10, 3), 4);
        assert_eq!(slice_hosts(5, 0), 5);
        let q = query(2000);
        let a = recommend(&spindle(), &q);
        let t = table(&q, &a);
        assert!(
            t.contains("recommended: 11 slice(s) of 182 hosts, forks 182"),
            "{t}"
        );
        assert!(t.contains("<- recommended"), "{t}");
        assert!(t.contains("controller is full at"), "{t}");
    }

    #[test]
    fn no_cpu_cost_means_no_cpu_limit() {
        let mut m = spindle();
        m.cpu = coefs(&[("c0", 0.0)]);
        m.target_cpu = coefs(&[]);
        let a = recommend(&m, &query(500));
        assert_eq!(a.forks_full, None);
        assert_eq!((a.slices, a.forks), (1, 500));
    }
}
