//! Reading `bench/run` results: `DIR/results.json` (or, for a suite still running or
//! interrupted, `DIR/runs/*.json`) into the few figures per run the capacity model uses.

use super::CapacityError;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// One successful run, as the model sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    /// Run id (`003-stock-hostname100-h1-direct`).
    pub id: String,
    /// stock, stock-nopipe, mitogen, spindle.
    pub mode: String,
    /// Workload name (`hostname20`, `mixed`, ...).
    pub workload: String,
    /// Fleet size.
    pub hosts: u32,
    /// Ansible forks.
    pub forks: u32,
    /// Emulated round-trip time, ms; `None` for the direct link.
    pub rtt_ms: Option<f64>,
    /// Tasks per host.
    pub tasks: f64,
    /// Wall time of ansible-playbook, s.
    pub wall_s: f64,
    /// Controller CPU (user + sys), s.
    pub cpu_s: f64,
    /// CPU used on all targets together, s.
    pub target_cpu_s: Option<f64>,
    /// Peak RSS summed over the controller's process tree, kB.
    pub mem_kb: Option<f64>,
    /// Bytes on the wire, both directions.
    pub bytes: Option<f64>,
    /// Cores of the machine that measured it (this machine's when the results do not say).
    pub cores: f64,
}

#[derive(Deserialize)]
struct Results {
    #[serde(default)]
    meta: Meta,
    runs: Vec<RawRun>,
}

#[derive(Deserialize, Default)]
struct Meta {
    #[serde(default)]
    machine: Machine,
}

#[derive(Deserialize, Default)]
struct Machine {
    cpus: Option<f64>,
}

#[derive(Deserialize)]
struct RawRun {
    #[serde(default)]
    id: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    mode: String,
    #[serde(default)]
    workload: String,
    hosts: Option<u32>,
    forks: Option<u32>,
    rtt_ms: Option<f64>,
    tasks_per_host: Option<f64>,
    wall_s: Option<f64>,
    #[serde(default)]
    controller: Controller,
    #[serde(default)]
    targets: Targets,
    #[serde(default)]
    wire: Wire,
}

#[derive(Deserialize, Default)]
struct Controller {
    cpu_s: Option<f64>,
    peak_rss_tree_kb: Option<f64>,
}

#[derive(Deserialize, Default)]
struct Targets {
    cpu_s: Option<f64>,
}

#[derive(Deserialize, Default)]
struct Wire {
    bytes_total: Option<f64>,
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, CapacityError> {
    let text = std::fs::read(path).map_err(|source| CapacityError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_slice(&text).map_err(|source| CapacityError::Json {
        path: path.to_path_buf(),
        source,
    })
}

/// The successful runs (status `ok`, tasks > 0) of one results directory.
pub fn load_dir(dir: &Path) -> Result<Vec<Run>, CapacityError> {
    let results = dir.join("results.json");
    let (raw, cores, path) = if results.exists() {
        let r: Results = read_json(&results)?;
        (r.runs, r.meta.machine.cpus, results)
    } else {
        let runs_dir = dir.join("runs");
        let mut files: Vec<PathBuf> = std::fs::read_dir(&runs_dir)
            .map_err(|_| CapacityError::NoResults(dir.to_path_buf()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        if files.is_empty() {
            return Err(CapacityError::NoResults(dir.to_path_buf()));
        }
        files.sort();
        let raw = files
            .iter()
            .map(|p| read_json(p))
            .collect::<Result<Vec<RawRun>, _>>()?;
        (raw, None, runs_dir)
    };
    let cores = cores
        .filter(|&c| c > 0.0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64));
    let mut out = Vec::new();
    for r in raw {
        if r.status != "ok" || r.tasks_per_host.unwrap_or(0.0) <= 0.0 {
            continue;
        }
        let need = |v: Option<f64>, field: &'static str| {
            v.ok_or_else(|| CapacityError::Field {
                path: path.clone(),
                run: r.id.clone(),
                field,
            })
        };
        let hosts = need(r.hosts.map(f64::from), "hosts")? as u32;
        if hosts == 0 {
            return Err(CapacityError::Field {
                path: path.clone(),
                run: r.id.clone(),
                field: "hosts (it is 0)",
            });
        }
        out.push(Run {
            hosts,
            forks: r.forks.filter(|&f| f > 0).unwrap_or(hosts),
            rtt_ms: r.rtt_ms,
            tasks: need(r.tasks_per_host, "tasks_per_host")?,
            wall_s: need(r.wall_s, "wall_s")?,
            cpu_s: need(r.controller.cpu_s, "controller.cpu_s")?,
            target_cpu_s: r.targets.cpu_s,
            mem_kb: r.controller.peak_rss_tree_kb.filter(|&m| m > 0.0),
            bytes: r.wire.bytes_total,
            cores,
            id: r.id,
            mode: r.mode,
            workload: r.workload,
        });
    }
    Ok(out)
}

/// The successful runs of every directory given, in order.
pub fn load_runs<P: AsRef<Path>>(dirs: &[P]) -> Result<Vec<Run>, CapacityError> {
    let mut all = Vec::new();
    for d in dirs {
        all.extend(load_dir(d.as_ref())?);
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("spindle-cap-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("tmp dir");
        d
    }

    #[test]
    fn malformed_json_is_a_clear_error() {
        let d = tmpdir("bad");
        std::fs::write(d.join("results.json"), b"{\"runs\": [ {\"id\": ").expect("write");
        let e = load_dir(&d).expect_err("must fail");
        let m = e.to_string();
        assert!(
            m.contains("results.json") && m.contains("not bench/run results JSON"),
            "{m}"
        );
        std::fs::write(d.join("results.json"), b"[1, 2]").expect("write");
        assert!(matches!(load_dir(&d), Err(CapacityError::Json { .. })));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn missing_figure_names_the_run_and_field() {
        let d = tmpdir("field");
        let j = r#"{"runs": [{"id": "r1", "status": "ok", "mode": "stock", "workload": "mixed",
                    "hosts": 2, "tasks_per_host": 3, "controller": {"cpu_s": 1.0}}]}"#;
        std::fs::write(d.join("results.json"), j).expect("write");
        let m = load_dir(&d).expect_err("must fail").to_string();
        assert!(m.contains("\"r1\"") && m.contains("wall_s"), "{m}");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn skips_failed_runs_and_reads_runs_dir() {
        let d = tmpdir("runsdir");
        std::fs::create_dir_all(d.join("runs")).expect("mkdir");
        let ok = r#"{"id": "a", "status": "ok", "mode": "spindle", "workload": "hostname20",
                    "hosts": 10, "forks": null, "rtt_ms": 50, "tasks_per_host": 20, "wall_s": 9.5,
                    "controller": {"cpu_s": 6.0, "peak_rss_tree_kb": 640000},
                    "targets": {"cpu_s": 5.0}, "wire": {"bytes_total": 7700000}}"#;
        std::fs::write(d.join("runs/a.json"), ok).expect("write");
        std::fs::write(d.join("runs/b.json"), r#"{"id": "b", "status": "failed"}"#).expect("w");
        let runs = load_dir(&d).expect("load");
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].forks, 10);
        assert_eq!(runs[0].rtt_ms, Some(50.0));
        assert!(runs[0].cores >= 1.0);
        let _ = std::fs::remove_dir_all(&d);
        assert!(matches!(load_dir(&d), Err(CapacityError::NoResults(_))));
    }
}
