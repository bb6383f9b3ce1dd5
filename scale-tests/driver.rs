//! spindle-scale: the scale-test driver. Starts (or attaches to) `spindle serve` and the fleet
//! simulator, opens N target streams through the daemon, drives a paced `exec` load, and
//! reports memory per stream, CPU per request, latency percentiles and reply accounting
//! (zero lost, zero duplicated, the right error kind per faulty target) as JSON.
//! See scale-tests/README.md.

#[path = "load.rs"]
mod load;
#[path = "procs.rs"]
mod procs;
#[path = "shared.rs"]
mod shared;

use clap::Parser;
use load::{Live, LoadCfg, LoadOp, Target};
use procs::Proc;
use serde_json::{json, Value};
use shared::FaultMode;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Parser, Debug, Clone)]
#[command(
    name = "spindle-scale",
    about = "Scale and fault test of the spindle daemon"
)]
struct Opts {
    /// Target streams to open: a number, or `max` (as many as the daemon's descriptor limit
    /// allows at two descriptors per stream).
    #[arg(long, default_value = "1000")]
    streams: String,
    /// Requests per second per stream.
    #[arg(long, default_value_t = 1.0)]
    rate: f64,
    /// Seconds of load.
    #[arg(long, default_value_t = 30.0)]
    duration: f64,
    /// Event-loop backend of the daemon the driver starts.
    #[arg(long, default_value = "epoll")]
    io: String,
    /// Targets: `unix` (the fleet simulator) or `local` (one real Python agent per stream,
    /// spawned by the daemon; no simulator, no fault injection).
    #[arg(long, default_value = "unix")]
    transport: String,
    /// Load request: `sim` (exec to the simulator; default for `unix`), `ping` (a round trip
    /// through the agent, no fork; default for `local`) or `echo` (exec `echo TOKEN`).
    #[arg(long)]
    op: Option<String>,
    /// Interpreter of `local` agents (default: the daemon's discovery).
    #[arg(long)]
    python: Option<String>,
    /// `connect_timeout` of `local` targets, seconds (hundreds of agents bootstrap at once).
    #[arg(long, default_value_t = 120)]
    connect_timeout: u64,
    /// Fault mix, e.g. `die=1%,hang=1%,garbage=1%,oversize=0.5%,slow-reader=0.5%`; the flag
    /// alone means that default mix.
    #[arg(long, num_args = 0..=1, default_missing_value = "default")]
    faults: Option<String>,
    /// Every request's `call_timeout` (seconds): how `hang` and `slow-reader` targets fail.
    #[arg(long, default_value_t = 5.0)]
    call_timeout: f64,
    /// Also run a client that disconnects with requests in flight, halfway through the load.
    #[arg(long)]
    client_disconnect: bool,
    /// Soak: load for this many seconds (overrides --duration) and report the RSS slope.
    #[arg(long)]
    soak: Option<f64>,
    /// Seconds between RSS samples.
    #[arg(long, default_value_t = 10.0)]
    sample_secs: f64,
    /// Client connections carrying the load.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Simulator service time per exec, ms.
    #[arg(long, default_value_t = 0.0)]
    service_ms: f64,
    /// Simulator stdout bytes per exec reply.
    #[arg(long, default_value_t = 64)]
    reply_bytes: usize,
    /// Fraction of healthy exec calls the simulator fails (expected as kind `remote`).
    #[arg(long, default_value_t = 0.0)]
    fail_rate: f64,
    /// Seed shared with the simulator.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// stdin bytes (base64) of each exec to slow-reader targets, so their socket backs up.
    #[arg(long, default_value_t = 65536)]
    slow_stdin_bytes: usize,
    /// Seconds to let the daemon settle with N idle streams before measuring RSS.
    #[arg(long, default_value_t = 2.0)]
    idle_secs: f64,
    /// Pings in flight per client connection while opening streams.
    #[arg(long, default_value_t = 256)]
    open_window: usize,
    /// Carry on (and measure) even when some streams failed to open.
    #[arg(long)]
    allow_open_failures: bool,
    /// Scheduling niceness for the driver, the daemon and the simulator, and for their
    /// autogroup (e.g. -10 on a machine shared with other jobs; recorded in the results).
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    nice: i32,
    /// Results file (JSON).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Label of this run in reports.
    #[arg(long)]
    label: Option<String>,
    /// Scratch directory for sockets and logs (keep its path short: socket paths ≤ 107 bytes).
    #[arg(long)]
    workdir: Option<PathBuf>,
    /// The spindle binary (default: next to this one).
    #[arg(long)]
    spindle_bin: Option<PathBuf>,
    /// The simulator binary (default: next to this one).
    #[arg(long)]
    sim_bin: Option<PathBuf>,
    /// Use this running daemon instead of starting one (needs --daemon-pid for /proc readings).
    #[arg(long, requires = "daemon_pid")]
    daemon_socket: Option<PathBuf>,
    /// Pid of the daemon given by --daemon-socket.
    #[arg(long)]
    daemon_pid: Option<u32>,
    /// Use this running simulator (started with --fault-sockets and the same --seed).
    #[arg(long)]
    sim_socket: Option<PathBuf>,
}

fn main() {
    let opts = Opts::parse();
    if opts.nice != 0 && std::env::var_os("SPINDLE_SCALE_SESSION").is_none() {
        // Run in a session (hence an autogroup) of our own, so that --nice lifts only this run.
        std::process::exit(in_new_session());
    }
    let code = match run(&opts) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("spindle-scale: {e}");
            2
        }
    };
    std::process::exit(code);
}

/// Re-runs this command as the leader of a new session; returns its exit code.
fn in_new_session() -> i32 {
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new(procs::sibling("spindle-scale"));
    cmd.args(std::env::args_os().skip(1))
        .env("SPINDLE_SCALE_SESSION", "1");
    // SAFETY: setsid and prctl are async-signal-safe and touch no parent memory.
    unsafe {
        cmd.pre_exec(|| {
            rustix::process::setsid().map_err(std::io::Error::from)?;
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::Term))
                .map_err(std::io::Error::from)
        });
    }
    match cmd.status() {
        Ok(s) => s.code().unwrap_or(2),
        Err(e) => {
            eprintln!("spindle-scale: cannot start a new session: {e}");
            2
        }
    }
}

/// Infrastructure started for one run (stopped on drop).
struct Rig {
    daemon: Proc,
    sim: Option<Proc>,
    dsock: PathBuf,
    ssock: PathBuf,
    workdir: PathBuf,
}

fn start(o: &Opts) -> Result<Rig, String> {
    let workdir = o
        .workdir
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("/tmp/spindle-scale-{}", std::process::id())));
    std::fs::create_dir_all(&workdir).map_err(|e| format!("{}: {e}", workdir.display()))?;
    let (sim, ssock) = match &o.sim_socket {
        Some(s) => (None, s.clone()),
        None if o.transport == "local" => (None, PathBuf::new()),
        None => {
            let ssock = workdir.join("sim.sock");
            let bin = o
                .sim_bin
                .clone()
                .unwrap_or_else(|| procs::sibling("spindle-fleet-sim"));
            let life = (o.soak.unwrap_or(o.duration) + o.call_timeout + 900.0) as u64;
            let args: Vec<String> = vec![
                "--socket".into(),
                ssock.display().to_string(),
                "--fault-sockets".into(),
                format!("--service-ms={}", o.service_ms),
                format!("--reply-bytes={}", o.reply_bytes),
                format!("--fail-rate={}", o.fail_rate),
                format!("--seed={}", o.seed),
                format!("--lifetime={life}"),
            ];
            let mut p = procs::spawn(&bin, &args, &workdir.join("sim.log"))?;
            procs::wait_connectable(&ssock, Duration::from_secs(10), &mut p)?;
            (Some(p), ssock)
        }
    };
    let (daemon, dsock) = match (&o.daemon_socket, o.daemon_pid) {
        (Some(s), Some(pid)) => (Proc { child: None, pid }, s.clone()),
        _ => {
            let dsock = workdir.join("d.sock");
            let bin = o
                .spindle_bin
                .clone()
                .unwrap_or_else(|| procs::sibling("spindle"));
            let args = vec![
                "serve".into(),
                "--socket".into(),
                dsock.display().to_string(),
                "--io".into(),
                o.io.clone(),
            ];
            let mut p = procs::spawn(&bin, &args, &workdir.join("daemon.log"))?;
            procs::wait_connectable(&dsock, Duration::from_secs(10), &mut p)?;
            (p, dsock)
        }
    };
    Ok(Rig {
        daemon,
        sim,
        dsock,
        ssock,
        workdir,
    })
}

impl Rig {
    fn stop(&mut self) {
        if self.daemon.child.is_some() {
            if let Ok(mut c) = spindle::client::Client::connect(&self.dsock) {
                let _ = c.call(json!({"op": "shutdown"}));
            }
            self.daemon.stop(Duration::from_secs(5));
        }
        if let Some(s) = self.sim.as_mut() {
            s.stop(Duration::ZERO);
        }
    }
}

/// Opens a few probe streams, counts the daemon's descriptors, closes them again; returns
/// descriptors per stream (rounded up, at least 1).
fn probe_fds_per_stream(rig: &Rig, fds0: usize, local: bool) -> Result<usize, String> {
    let probes = if local { 4 } else { 20 };
    let specs: Vec<Value> = (0..probes)
        .map(|i| {
            let name = format!("fd-probe-{i}");
            if local {
                json!({"transport": "local", "name": name})
            } else {
                json!({"transport": "unix", "host": rig.ssock, "name": name})
            }
        })
        .collect();
    let mut c = spindle::client::Client::connect(&rig.dsock).map_err(|e| e.to_string())?;
    for t in &specs {
        c.call(json!({"op": "ping", "target": t}))
            .map_err(|e| format!("probe stream: {e}"))?;
    }
    let held = procs::fd_count(rig.daemon.pid).saturating_sub(fds0 + 1); // +1: this client
    for t in &specs {
        let _ = c.call(json!({"op": "close", "target": t}));
    }
    drop(c);
    let end = Instant::now() + Duration::from_secs(3);
    while procs::fd_count(rig.daemon.pid) > fds0 && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(held.div_ceil(probes).max(1))
}

/// The daemon's soft descriptor limit, from /proc/<pid>/limits.
fn daemon_nofile(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = s.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

fn ms(h: &hdrhistogram::Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

fn latency_json(h: &hdrhistogram::Histogram<u64>) -> Value {
    json!({"count": h.len(), "p50": ms(h, 0.5), "p90": ms(h, 0.9), "p99": ms(h, 0.99),
        "p999": ms(h, 0.999), "max": h.max() as f64 / 1000.0, "mean": h.mean() / 1000.0})
}

/// Least-squares slope of (seconds, KiB) samples, in KiB per minute.
fn slope_kib_per_min(s: &[(f64, u64)]) -> Option<f64> {
    if s.len() < 3 {
        return None;
    }
    let n = s.len() as f64;
    let mx = s.iter().map(|p| p.0).sum::<f64>() / n;
    let my = s.iter().map(|p| p.1 as f64).sum::<f64>() / n;
    let sxx: f64 = s.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = s.iter().map(|p| (p.0 - mx) * (p.1 as f64 - my)).sum();
    (sxx > 0.0).then(|| sxy / sxx * 60.0)
}

fn run(o: &Opts) -> Result<i32, String> {
    if o.nice != 0 {
        // Before any thread or child exists: all of them inherit it.
        rustix::process::setpriority_process(None, o.nice)
            .map_err(|e| format!("--nice {}: {e}", o.nice))?;
        // With autogroup scheduling, niceness only ranks tasks within this session's group;
        // the group's own weight is set here (a no-op where autogroups are off).
        let _ = std::fs::write("/proc/self/autogroup", o.nice.to_string());
    }
    let (soft, hard) = procs::raise_nofile();
    let mix = match &o.faults {
        Some(m) => shared::parse_mix(m)?,
        None => Vec::new(),
    };
    let local = match o.transport.as_str() {
        "unix" => false,
        "local" => true,
        t => return Err(format!("--transport {t:?}: expected unix or local")),
    };
    let op = match (&o.op, local) {
        (Some(x), _) => LoadOp::parse(x)?,
        (None, true) => LoadOp::Ping,
        (None, false) => LoadOp::SimExec,
    };
    if local
        && (!mix.is_empty() || o.client_disconnect || o.fail_rate > 0.0 || op == LoadOp::SimExec)
    {
        return Err("--transport local runs healthy real agents: no --faults, \
                    --client-disconnect, --fail-rate or --op sim"
            .into());
    }
    let duration = o.soak.unwrap_or(o.duration);
    let mut rig = start(o)?;
    let pid = rig.daemon.pid;
    // Let the daemon's loop run once, then take the baseline.
    if let Ok(mut c) = spindle::client::Client::connect(&rig.dsock) {
        let _ = c.call(json!({"op": "stats"}));
    }
    std::thread::sleep(Duration::from_millis(300));
    let (rss0, fds0) = (procs::rss_kib(pid), procs::fd_count(pid));
    let d_limit = daemon_nofile(pid).unwrap_or(soft);
    // How many descriptors the daemon holds per stream, measured on a few probe streams.
    let per_fd = probe_fds_per_stream(&rig, fds0, local)?;
    let max_fit = ((d_limit as usize).saturating_sub(fds0 + o.clients + 4) / per_fd)
        .min((d_limit as usize).saturating_sub(16)); // the simulator holds one per stream
    let n: usize = if o.streams == "max" {
        max_fit
    } else {
        o.streams
            .parse()
            .map_err(|e| format!("--streams {:?}: {e}", o.streams))?
    };
    let label = o.label.clone().unwrap_or_else(|| {
        let f = if mix.is_empty() { "" } else { "-faults" };
        let r = if local { "-real" } else { "" };
        format!("{}{r}-{n}{f}", o.io)
    });
    eprintln!(
        "spindle-scale [{label}]: daemon pid {pid} ({}), {} streams, {} req/s each for {duration} s; \
         fd limit {d_limit}, {per_fd} per stream (max that fits: {max_fit}); workdir {}",
        o.io,
        n,
        o.rate,
        rig.workdir.display()
    );
    let ts = Arc::new(if local {
        load::local_targets(n, o.python.as_deref(), o.connect_timeout)
    } else {
        load::targets(n, &rig.ssock, &mix, o.seed)
    });

    let t_open = Instant::now();
    let open = load::open_all(&rig.dsock, &ts, o.clients, o.open_window);
    let agents0 = procs::children(pid);
    let open_secs = t_open.elapsed().as_secs_f64();
    eprintln!(
        "spindle-scale [{label}]: opened {}/{n} streams in {open_secs:.1} s{}",
        open.ok,
        open.first_failure
            .as_ref()
            .map(|f| format!("; failures {:?}, first: {f}", open.failures))
            .unwrap_or_default()
    );
    std::thread::sleep(Duration::from_secs_f64(o.idle_secs));
    let (rss_idle, fds_idle) = (procs::rss_kib(pid), procs::fd_count(pid));
    let per_stream = (rss_idle as f64 - rss0 as f64) / n.max(1) as f64;
    let mut report = json!({
        "label": label, "io": o.io, "transport": o.transport, "op": op.name(),
        "streams": n, "rate_per_stream": o.rate,
        "duration_s": duration, "clients": o.clients, "call_timeout_s": o.call_timeout,
        "service_ms": o.service_ms, "reply_bytes": o.reply_bytes, "fail_rate": o.fail_rate,
        "seed": o.seed, "faults": o.faults, "soak": o.soak.is_some(), "nice": o.nice,
        "fd": {"driver_soft": soft, "driver_hard": hard, "daemon_limit": d_limit,
               "daemon_fds_baseline": fds0, "daemon_fds_idle": fds_idle,
               "daemon_fds_per_stream": per_fd, "max_streams_fit": max_fit},
        "open": {"ok": open.ok, "failures": open.failures, "first_failure": open.first_failure,
                 "seconds": open_secs, "latency_ms": open.hist.as_ref().map(latency_json)},
        "rss": {"baseline_kib": rss0, "idle_kib": rss_idle, "per_stream_kib": per_stream},
    });
    if local {
        let kib: u64 = agents0.iter().map(|&a| procs::rss_kib(a)).sum();
        report["agents"] = json!({"count": agents0.len(), "rss_total_kib": kib,
            "rss_per_agent_kib": kib as f64 / agents0.len().max(1) as f64});
    }
    let mut failures: Vec<String> = Vec::new();
    if open.ok < n {
        let msg = format!(
            "{} of {n} streams failed to open: {:?}",
            n - open.ok,
            open.failures
        );
        if !o.allow_open_failures {
            report["pass"] = false.into();
            report["failures"] = json!([msg]);
            finish(o, &mut rig, &report);
            return Ok(3);
        }
        failures.push(msg);
    }

    let cfg = LoadCfg {
        rate: o.rate,
        duration,
        clients: o.clients,
        call_timeout: o.call_timeout,
        seed: o.seed,
        fail_rate: o.fail_rate,
        slow_stdin_b64: o.slow_stdin_bytes,
        op,
    };
    let live = Arc::new(Live::default());
    let stop = Arc::new(AtomicBool::new(false));
    let samples: Arc<Mutex<Vec<(f64, u64, usize)>>> = Arc::default();
    let (cpu_d0, cpu_s0) = (procs::cpu_ticks(pid), sim_ticks(&rig));
    let cpu_a0: u64 = agents0.iter().map(|&a| procs::cpu_ticks(a)).sum();
    let cpu_self0 = procs::self_cpu_secs();
    let (busy0, load0) = (procs::machine_busy_ticks(), procs::loadavg());
    let spid = rig.sim.as_ref().map_or(0, |s| s.pid);
    let (wait_d0, wait_s0) = (procs::runqueue_wait_ns(pid), procs::runqueue_wait_ns(spid));
    let t_load = Instant::now();
    let progress = {
        let (live, stop, samples) = (live.clone(), stop.clone(), samples.clone());
        let (label, spid) = (label.clone(), rig.sim.as_ref().map(|s| s.pid));
        let every = o.sample_secs;
        std::thread::spawn(move || progress_loop(&label, pid, spid, &live, &stop, &samples, every))
    };
    let disconnect = o.client_disconnect.then(|| {
        let ts = ts.clone();
        let sock = rig.dsock.clone();
        let wait = (duration / 2.0).min(10.0);
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs_f64(wait));
            let picks: Vec<&Target> = ts
                .iter()
                .filter(|t| t.mode == FaultMode::Healthy)
                .take(50)
                .collect();
            load::client_disconnect(&sock, &picks, 400)
        })
    });
    let res = load::run_load(&rig.dsock, ts.clone(), &cfg, live.clone())?;
    let load_wall = t_load.elapsed().as_secs_f64();
    let cpu_d = (procs::cpu_ticks(pid) - cpu_d0) as f64 / procs::USER_HZ;
    let cpu_s = sim_ticks(&rig).saturating_sub(cpu_s0) as f64 / procs::USER_HZ;
    let cpu_a_ticks: u64 = agents0.iter().map(|&a| procs::cpu_ticks(a)).sum();
    let cpu_a = cpu_a_ticks.saturating_sub(cpu_a0) as f64 / procs::USER_HZ;
    let cpu_self = procs::self_cpu_secs() - cpu_self0;
    let busy = procs::machine_busy_ticks().saturating_sub(busy0) as f64 / procs::USER_HZ;
    let other = ((busy - cpu_d - cpu_s - cpu_a - cpu_self) / load_wall).max(0.0);
    let wait_d = procs::runqueue_wait_ns(pid).saturating_sub(wait_d0) as f64 / 1e9;
    let wait_s = procs::runqueue_wait_ns(spid).saturating_sub(wait_s0) as f64 / 1e9;
    let disturbed = other > 0.2 || wait_d / load_wall > 0.02;
    if disturbed {
        eprintln!(
            "spindle-scale [{label}]: WARNING: other processes used {other:.2} cores during the \
             load and the daemon waited {wait_d:.2} s for a CPU; latency and CPU figures are \
             disturbed"
        );
    }
    let disc = disconnect.map(|h| h.join().unwrap_or(json!({"pass": false})));
    stop.store(true, Relaxed);
    let _ = progress.join();
    let alive = rig.daemon.alive();
    let (rss_end, hwm) = (procs::rss_kib(pid), procs::hwm_kib(pid));
    let samples = samples.lock().map(|s| s.clone()).unwrap_or_default();
    let warm = (duration / 4.0).min(30.0);
    let pts: Vec<(f64, u64)> = samples
        .iter()
        .filter(|s| s.0 >= warm)
        .map(|s| (s.0, s.1))
        .collect();

    let r = &res;
    let mut faults_ok = true;
    let modes: serde_json::Map<String, Value> = r
        .modes
        .iter()
        .map(|(m, t)| {
            let expected = m.expected_kind().unwrap_or("ok");
            let hit = t.outcomes.get(expected).copied().unwrap_or(0);
            if *m != FaultMode::Healthy && t.targets > 0 && t.requests > 0 && hit == 0 {
                faults_ok = false;
            }
            let mut v = serde_json::to_value(t).unwrap_or_default();
            v["expected"] = expected.into();
            (m.name().to_string(), v)
        })
        .collect();
    for (what, count) in [
        ("lost replies", r.lost),
        ("duplicated replies", r.duplicates),
        ("replies to unknown ids", r.unknown),
        ("cross-wired replies", r.mismatched),
        ("replies of the wrong kind", r.wrong),
    ] {
        if count > 0 {
            failures.push(format!("{count} {what}"));
        }
    }
    if !faults_ok {
        failures.push("a fault mode never produced its expected error kind".into());
    }
    if !alive {
        failures.push("the daemon exited".into());
    }
    if disc.as_ref().is_some_and(|d| d["pass"] != true) {
        failures.push("client-disconnect check failed".into());
    }
    let requests = r.sent.max(1) as f64;
    report["load"] = json!({
        "sent": r.sent, "replies": r.replies, "lost": r.lost, "duplicates": r.duplicates,
        "unknown": r.unknown, "mismatched": r.mismatched, "wrong_kind": r.wrong,
        "achieved_rate": r.sent as f64 / r.send_secs.max(1e-9), "target_rate": n as f64 * o.rate,
        "max_send_lag_ms": r.max_send_lag_ms, "wall_s": load_wall, "send_s": r.send_secs, "send_to_drained_s": r.elapsed, "samples": r.samples,
    });
    report["latency_ms"] = latency_json(&r.hist);
    report["modes"] = Value::Object(modes);
    report["cpu"] = json!({
        "daemon_s": cpu_d, "daemon_us_per_request": cpu_d * 1e6 / requests,
        "daemon_util": cpu_d / load_wall, "sim_util": cpu_s / load_wall,
        "driver_util": cpu_self / load_wall, "other_processes_util": other,
        "loadavg_before": load0, "loadavg_after": procs::loadavg(),
        "daemon_runqueue_wait_s": wait_d, "sim_runqueue_wait_s": wait_s, "disturbed": disturbed,
        "agents_util": cpu_a / load_wall, "agents_us_per_request": cpu_a * 1e6 / requests, "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
    });
    report["rss"]["end_kib"] = rss_end.into();
    if local {
        let now = procs::children(pid);
        let kib: u64 = now.iter().map(|&a| procs::rss_kib(a)).sum();
        report["agents"]["count_end"] = now.len().into();
        report["agents"]["rss_total_end_kib"] = kib.into();
        if now.len() != agents0.len() {
            failures.push(format!(
                "{} agents at the start of the load, {} at the end",
                agents0.len(),
                now.len()
            ));
        }
    }
    report["rss"]["hwm_kib"] = hwm.into();
    report["rss"]["samples"] = json!(samples);
    report["rss"]["slope_kib_per_min"] = json!(slope_kib_per_min(&pts));
    report["client_disconnect"] = json!(disc);
    report["daemon_alive"] = alive.into();
    report["pass"] = failures.is_empty().into();
    report["failures"] = json!(failures);
    finish(o, &mut rig, &report);
    Ok(if failures.is_empty() { 0 } else { 1 })
}

fn sim_ticks(rig: &Rig) -> u64 {
    rig.sim.as_ref().map_or(0, |s| procs::cpu_ticks(s.pid))
}

fn finish(o: &Opts, rig: &mut Rig, report: &Value) {
    rig.stop();
    let text = serde_json::to_string_pretty(report).unwrap_or_default();
    if let Some(p) = &o.out {
        if let Some(d) = p.parent() {
            let _ = std::fs::create_dir_all(d);
        }
        if let Err(e) = std::fs::write(p, &text) {
            eprintln!("spindle-scale: cannot write {}: {e}", p.display());
        }
    }
    summary_line(report);
    if o.workdir.is_none() && report["pass"] == true {
        let _ = std::fs::remove_dir_all(&rig.workdir);
    }
    let _ = Path::new(&rig.workdir);
}

fn summary_line(r: &Value) {
    let l = &r["latency_ms"];
    eprintln!(
        "spindle-scale [{}]: {} | streams {} | rss/stream {:.1} KiB | cpu/req {:.1} us | \
         p50 {} p99 {} p999 {} max {} ms | sent {} lost {} dup {} wrong {}{}",
        r["label"].as_str().unwrap_or("?"),
        if r["pass"] == true { "PASS" } else { "FAIL" },
        r["streams"],
        r["rss"]["per_stream_kib"].as_f64().unwrap_or(0.0),
        r["cpu"]["daemon_us_per_request"].as_f64().unwrap_or(0.0),
        l["p50"],
        l["p99"],
        l["p999"],
        l["max"],
        r["load"]["sent"],
        r["load"]["lost"],
        r["load"]["duplicates"],
        r["load"]["wrong_kind"],
        r["failures"]
            .as_array()
            .filter(|f| !f.is_empty())
            .map(|f| format!(" | {f:?}"))
            .unwrap_or_default()
    );
}

fn progress_loop(
    label: &str,
    pid: u32,
    spid: Option<u32>,
    live: &Live,
    stop: &AtomicBool,
    samples: &Mutex<Vec<(f64, u64, usize)>>,
    every: f64,
) {
    let t0 = Instant::now();
    let (mut last, mut last_d, mut last_s) =
        (t0, procs::cpu_ticks(pid), spid.map_or(0, procs::cpu_ticks));
    let mut next_sample = 0.0;
    while !stop.load(Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
        let t = t0.elapsed().as_secs_f64();
        if t >= next_sample {
            next_sample += every;
            let s = (t, procs::rss_kib(pid), procs::fd_count(pid));
            if let Ok(mut v) = samples.lock() {
                v.push(s);
            }
        }
        if last.elapsed() < Duration::from_secs(2) {
            continue;
        }
        let dt = last.elapsed().as_secs_f64();
        last = Instant::now();
        let (d, s) = (procs::cpu_ticks(pid), spid.map_or(0, procs::cpu_ticks));
        let (sent, replies) = (live.sent.load(Relaxed), live.replies.load(Relaxed));
        eprintln!(
            "[{label} {t:6.1}s] sent {sent} replies {replies} in-flight {} problems {} \
             max {:.1} ms | daemon rss {:.1} MiB cpu {:.0}% | sim cpu {:.0}%",
            sent.saturating_sub(replies),
            live.problems.load(Relaxed),
            live.max_us.swap(0, Relaxed) as f64 / 1000.0,
            procs::rss_kib(pid) as f64 / 1024.0,
            (d - last_d) as f64 / procs::USER_HZ / dt * 100.0,
            s.saturating_sub(last_s) as f64 / procs::USER_HZ / dt * 100.0,
        );
        (last_d, last_s) = (d, s);
    }
}
