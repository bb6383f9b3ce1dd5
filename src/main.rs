//! The `spindle` command: `serve` (the daemon), and ad-hoc fan-out without Ansible (`run`,
//! `ping`, `put`, `fetch`), plus `stats` and `capacity` (the capacity model over bench results).
//! Errors become `anyhow` here, at the edge.

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use spindle::api::server::{spawn_in_thread, ServeOptions, Server};
use spindle::client::{Client, ClientError};
use spindle::fanout::{fan_out, summary, Outcome, Status};
use spindle::reactor::IoBackend;
use spindle::transport::Spec;
use std::path::{Path, PathBuf};

#[derive(Parser)]
#[command(
    name = "spindle",
    version,
    about = "Persistent-agent execution for Ansible fleets"
)]
struct Cli {
    /// More output: -v info, -vvv debug (spawned commands, agent logs), -vvvv trace (every syscall).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the daemon on a Unix socket (mode 0600, same-uid clients only).
    Serve {
        /// Socket path.
        #[arg(long, env = "SPINDLE_SOCKET")]
        socket: PathBuf,
        /// Event-loop backend (auto: io_uring where the kernel has it, else epoll).
        #[arg(long, value_enum, env = "SPINDLE_IO", default_value_t = IoBackend::Auto)]
        io: IoBackend,
        /// Copy put payload through user space instead of splice(2) (for comparison runs).
        #[arg(long)]
        no_splice: bool,
        /// Become contexts (nested agents, one per become method/user/password) kept per
        /// target; beyond it the least recently used idle one is closed.
        #[arg(long, env = "SPINDLE_MAX_INTERPRETERS", default_value_t = spindle::router::DEFAULT_MAX_INTERPRETERS)]
        max_interpreters: usize,
        /// Send files and module code for targets behind a via hop (and for become contexts)
        /// once per target instead of through the hops' caches (also SPINDLE_NO_HOP_CACHE=1).
        #[arg(long)]
        no_hop_cache: bool,
        /// MiB buffered for API clients, all together: partial requests and unread replies.
        /// A request waits for room before it is read (small ones never do); over it, the
        /// client holding the most unread replies is disconnected.
        #[arg(long, env = "SPINDLE_CLIENT_BUFFER_MIB", default_value_t = (spindle::api::server::DEFAULT_BUDGET >> 20) as u64,
              value_parser = clap::value_parser!(u64).range(1..=1 << 20))]
        client_buffer_mib: u64,
        /// Seconds a client may leave a request half-sent before it is disconnected (an idle
        /// client, with nothing half-sent, is kept).
        #[arg(long, env = "SPINDLE_PARTIAL_REQUEST_TIMEOUT", default_value_t = spindle::api::server::DEFAULT_PARTIAL_TIMEOUT.as_secs(),
              value_parser = clap::value_parser!(u64).range(1..=86_400))]
        partial_request_timeout: u64,
        /// Exit after this many seconds with no API client connected (0: never). The Ansible
        /// plugin starts its shared per-user daemon with this (SPINDLE_PERSIST, default 60 s)
        /// so the next run finds live agents, like ssh's ControlPersist.
        #[arg(long, env = "SPINDLE_IDLE_EXIT", default_value_t = 0, value_parser = clap::value_parser!(u32))]
        idle_exit: u32,
    },
    /// Run a command on every host (one argument: a shell command line; several: an argv).
    Run {
        #[command(flatten)]
        fleet: Fleet,
        /// Per-host timeout in seconds (the command is killed).
        #[arg(long)]
        timeout: Option<f64>,
        /// The command.
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
    /// Start (or reuse) the agent on every host and report its Python and hostname.
    Ping {
        #[command(flatten)]
        fleet: Fleet,
    },
    /// Copy a local file to DEST on every host (atomic rename on the target).
    Put {
        #[command(flatten)]
        fleet: Fleet,
        /// Local source file.
        src: PathBuf,
        /// Remote destination path; `{host}` is replaced by each host's inventory name.
        dest: String,
        /// Mode, octal (e.g. 0644).
        #[arg(long)]
        mode: Option<String>,
    },
    /// Fetch a remote file from every host into DEST_DIR/<host>/<file name>.
    Fetch {
        #[command(flatten)]
        fleet: Fleet,
        /// Remote source path.
        src: String,
        /// Local destination directory.
        dest_dir: PathBuf,
    },
    /// Print a running daemon's counters.
    Stats {
        /// Socket path.
        #[arg(long, env = "SPINDLE_SOCKET")]
        socket: PathBuf,
    },
    /// Predict wall time, controller CPU and memory, and bytes for N hosts x T tasks, from
    /// bench/run results (model: docs/capacity.md).
    #[command(after_help = "Examples:\n  \
        spindle capacity --results bench/reports/default-3 --hosts 500 --tasks 100 --rtt 50 --forks 50 --mode spindle\n  \
        spindle capacity --results bench/reports/default-3 --validate\n  \
        spindle capacity --results bench/reports/default-3 --show\n  \
        spindle capacity --results bench/reports/default-5 --slices --hosts 2000 --tasks 50 --rtt-ms 40 --cores 8 --separate-targets --mem-gib 16")]
    Capacity(CapacityArgs),
}

#[derive(Args)]
struct CapacityArgs {
    /// A bench/run results directory (results.json, or runs/*.json); repeat to fit on several.
    #[arg(long = "results", value_name = "DIR", required = true)]
    results: Vec<PathBuf>,
    /// Hosts in the play.
    #[arg(long, required_unless_present_any = ["validate", "show"])]
    hosts: Option<u32>,
    /// Tasks per host.
    #[arg(long, required_unless_present_any = ["validate", "show"])]
    tasks: Option<f64>,
    /// Round-trip time to the targets, ms.
    #[arg(long, visible_alias = "rtt-ms", default_value_t = 0.0)]
    rtt: f64,
    /// Ansible forks (default: as many as hosts); with --slices, at most this many per slice.
    #[arg(long)]
    forks: Option<u32>,
    /// Controller cores (default: those of the machine the results come from); with --slices,
    /// of each controller (execution node).
    #[arg(long)]
    cores: Option<f64>,
    /// Recommend job slices and forks for a fleet larger than one controller drives (AWX job
    /// slicing: each slice its own job, controller and spindle daemon; docs/scaling.md).
    #[arg(long, conflicts_with_all = ["validate", "show"])]
    slices: bool,
    /// With --slices: memory per controller for Ansible, GiB (limits forks).
    #[arg(long, requires = "slices", value_name = "GIB")]
    mem_gib: Option<f64>,
    /// With --slices: the wall time wanted, s (the fewest slices that meet it).
    #[arg(long, requires = "slices", value_name = "SECONDS")]
    deadline: Option<f64>,
    /// The targets have their own CPUs (the bench fleet shares the controller's): their CPU
    /// no longer slows the controller down.
    #[arg(long)]
    separate_targets: bool,
    /// One mode: stock, stock-nopipe, mitogen, spindle (default: every fitted mode).
    #[arg(long)]
    mode: Option<String>,
    /// Workload family: hostname, mixed, bigcopy, manyfiles100, ...
    #[arg(long, default_value = "hostname")]
    workload: String,
    /// Held-out check: fit on the smaller fleets, predict the largest, print the errors.
    #[arg(long, conflicts_with = "show")]
    validate: bool,
    /// With --validate: the fleet size to predict (default: the largest measured).
    #[arg(long, requires = "validate", value_name = "HOSTS")]
    hold_out: Option<u32>,
    /// Print the fitted coefficients.
    #[arg(long)]
    show: bool,
    /// JSON output.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct Fleet {
    /// Inventory: an Ansible INI file, or a comma-separated host list.
    #[arg(short, long)]
    inventory: String,
    /// Use this running daemon (default: start one inside this process for the command).
    #[arg(long, env = "SPINDLE_SOCKET")]
    socket: Option<PathBuf>,
    /// Event-loop backend of the in-process daemon.
    #[arg(long, value_enum, env = "SPINDLE_IO", default_value_t = IoBackend::Auto)]
    io: IoBackend,
}

fn main() {
    // ssh runs this binary as its SSH_ASKPASS helper when a password is configured.
    if std::env::var_os("SPINDLE_ASKPASS_MODE").is_some() {
        std::process::exit(askpass());
    }
    let cli = Cli::parse();
    init_logging(cli.verbose);
    match real_main(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("spindle: {e:#}");
            std::process::exit(1);
        }
    }
}

/// The SSH_ASKPASS helper: prints the password from the private file the daemon named in
/// `SPINDLE_ASKPASS_FILE` and deletes it (a second prompt, or anything ssh started that
/// inherited its environment, finds nothing). A yes/no question (an unknown host key) is not
/// answered with the password.
fn askpass() -> i32 {
    let prompt = std::env::args().nth(1).unwrap_or_default();
    if prompt.contains("(yes/no") || prompt.contains("fingerprint") {
        eprintln!("spindle: not answering ssh's question {prompt:?} (is the host key known?)");
        return 1;
    }
    let Some(path) = std::env::var_os("SPINDLE_ASKPASS_FILE").map(PathBuf::from) else {
        return 1;
    };
    let Ok(pw) = std::fs::read_to_string(&path) else {
        eprintln!("spindle: no password to give (asked twice?)");
        return 1;
    };
    let _ = std::fs::remove_file(&path);
    println!("{pw}");
    0
}

fn init_logging(v: u8) {
    let level = match v {
        0 => "warn",
        1 | 2 => "info",
        3 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("SPINDLE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    // Colours only on a terminal: a log file (the Ansible callback's daemon.log) gets none.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn real_main(cli: Cli) -> Result<i32> {
    match cli.cmd {
        Cmd::Serve {
            socket,
            io,
            no_splice,
            max_interpreters,
            no_hop_cache,
            client_buffer_mib,
            partial_request_timeout,
            idle_exit,
        } => {
            spindle::api::server::raise_fd_limit();
            let client_budget = usize::try_from(client_buffer_mib)
                .ok()
                .and_then(|m| m.checked_mul(1 << 20))
                .context("--client-buffer-mib is too large for this machine")?;
            let server = Server::bind(&ServeOptions {
                io,
                splice: !no_splice,
                max_interpreters,
                hop_cache: !no_hop_cache && std::env::var_os("SPINDLE_NO_HOP_CACHE").is_none(),
                idle_exit: (idle_exit > 0)
                    .then(|| std::time::Duration::from_secs(u64::from(idle_exit))),
                client_budget,
                partial_timeout: std::time::Duration::from_secs(partial_request_timeout),
                ..ServeOptions::new(socket.clone())
            })?;
            spindle::api::server::stop_on_signals().context("installing signal handlers")?;
            eprintln!(
                "spindle: serving on {} (io: {})",
                socket.display(),
                server.backend_name()
            );
            server.run()?;
            Ok(0)
        }
        Cmd::Capacity(a) => capacity(&a),
        Cmd::Stats { socket } => {
            let mut c = Client::connect(&socket)
                .with_context(|| format!("connecting to {}", socket.display()))?;
            let v = c.call(json!({"op": "stats"}))?;
            println!("{}", serde_json::to_string_pretty(&v)?);
            Ok(0)
        }
        Cmd::Run {
            fleet,
            timeout,
            cmd,
        } => {
            let req = if cmd.len() == 1 {
                json!({"op": "exec", "shell": cmd[0], "timeout": timeout})
            } else {
                json!({"op": "exec", "argv": cmd, "timeout": timeout})
            };
            with_fleet(&fleet, |_| req.clone(), print_exec)
        }
        Cmd::Ping { fleet } => with_fleet(
            &fleet,
            |_| json!({"op": "ping"}),
            |o| {
                if let Ok(v) = &o.result {
                    let h = &v["hello"];
                    println!(
                        "{} | pong | python {} on {} (uid {})",
                        o.spec.label(),
                        h["python"].as_str().unwrap_or("?"),
                        h["hostname"].as_str().unwrap_or("?"),
                        h["uid"]
                    );
                } else {
                    print_failure(o);
                }
            },
        ),
        Cmd::Put {
            fleet,
            src,
            dest,
            mode,
        } => {
            let mode = match mode {
                Some(m) => Some(
                    u32::from_str_radix(m.trim_start_matches("0o"), 8)
                        .with_context(|| format!("mode {m:?} is not octal"))?,
                ),
                None => None,
            };
            let src = std::fs::canonicalize(&src).with_context(|| format!("{}", src.display()))?;
            let build = |s: &Spec| {
                let d = dest.replace("{host}", &s.label());
                json!({"op": "put", "src": src, "dest": d, "mode": mode})
            };
            with_fleet(&fleet, build, |o| match &o.result {
                Ok(v) => println!(
                    "{} | ok | {} bytes sha256 {}",
                    o.spec.label(),
                    v["size"],
                    v["sha256"].as_str().unwrap_or("")
                ),
                Err(_) => print_failure(o),
            })
        }
        Cmd::Fetch {
            fleet,
            src,
            dest_dir,
        } => {
            let base = Path::new(&src)
                .file_name()
                .map(|s| s.to_owned())
                .context("source has no file name")?;
            std::fs::create_dir_all(&dest_dir)?;
            let dest_dir = std::fs::canonicalize(&dest_dir)?;
            let build = |s: &Spec| {
                let d = dest_dir.join(s.label());
                let _ = std::fs::create_dir_all(&d);
                json!({"op": "fetch", "src": src, "dest": d.join(&base)})
            };
            with_fleet(&fleet, build, |o| match &o.result {
                Ok(v) => println!("{} | ok | {} bytes", o.spec.label(), v["size"]),
                Err(_) => print_failure(o),
            })
        }
    }
}

fn capacity(a: &CapacityArgs) -> Result<i32> {
    use spindle::capacity::{self, table, Query};
    let runs = capacity::load_runs(&a.results)?;
    if a.validate {
        let v = capacity::validate(&runs, a.hold_out)?;
        if a.json {
            println!("{}", serde_json::to_string_pretty(&v)?);
        } else {
            print!("{}", table::validation(&v));
        }
        return Ok(0);
    }
    let models = capacity::fit(&runs)?;
    if a.show {
        if a.json {
            println!("{}", serde_json::to_string_pretty(&models)?);
        } else {
            print!("{}", table::coefficients(&models));
        }
        return Ok(0);
    }
    let (Some(hosts), Some(tasks)) = (a.hosts, a.tasks) else {
        bail!("--hosts and --tasks are required (or --validate / --show)");
    };
    let non_negative = |x: f64| x.is_finite() && x >= 0.0;
    if hosts == 0 || a.forks == Some(0) || !non_negative(tasks) || !non_negative(a.rtt) {
        bail!("--hosts and --forks must be at least 1, --tasks and --rtt at least 0");
    }
    if a.cores.is_some_and(|c| !c.is_finite() || c <= 0.0) {
        bail!("--cores must be positive");
    }
    if a.mem_gib.is_some_and(|g| !g.is_finite() || g <= 0.0)
        || a.deadline.is_some_and(|d| !d.is_finite() || d <= 0.0)
    {
        bail!("--mem-gib and --deadline must be positive");
    }
    if a.slices {
        return capacity_slices(a, &models, hosts, tasks);
    }
    let q = Query {
        forks: a.forks,
        cores: a.cores,
        separate_targets: a.separate_targets,
        ..Query::new(hosts, tasks, a.rtt)
    };
    let rows: Vec<_> = models
        .iter()
        .filter(|m| m.family == a.workload && a.mode.as_ref().map_or(true, |x| *x == m.mode))
        .map(|m| (m, m.predict(&q)))
        .collect();
    if rows.is_empty() {
        let fitted: Vec<String> = models
            .iter()
            .map(|m| format!("{}/{}", m.mode, m.family))
            .collect();
        bail!(
            "no fitted model for workload {:?}{} (fitted: {})",
            a.workload,
            a.mode
                .as_ref()
                .map_or(String::new(), |m| format!(" mode {m}")),
            fitted.join(", ")
        );
    }
    let cores = a.cores.unwrap_or(rows[0].0.cores);
    if a.json {
        let preds: Vec<serde_json::Value> = rows
            .iter()
            .map(|(m, p)| {
                let mut v = serde_json::to_value(p).unwrap_or_default();
                if let Some(o) = v.as_object_mut() {
                    o.insert("mode".into(), json!(m.mode));
                    o.insert("workload".into(), json!(m.family));
                    o.insert("fitted_on_hosts".into(), json!(m.hosts));
                    o.insert("fitted_on_rtts_ms".into(), json!(m.rtts));
                }
                v
            })
            .collect();
        let out = json!({
            "query": {"hosts": hosts, "tasks": tasks, "rtt_ms": a.rtt, "forks": a.forks.unwrap_or(hosts),
                      "cores": cores, "separate_targets": a.separate_targets, "workload": a.workload},
            "predictions": preds,
            "results": a.results,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print!("{}", table::predictions(&q, &a.workload, cores, &rows));
    }
    Ok(0)
}

/// `spindle capacity --slices`: the model of --mode (default spindle) for --workload.
fn capacity_slices(
    a: &CapacityArgs,
    models: &[spindle::capacity::Model],
    hosts: u32,
    tasks: f64,
) -> Result<i32> {
    use spindle::capacity::{recommend, slices, SliceQuery};
    let mode = a.mode.as_deref().unwrap_or("spindle");
    let Some(m) = models
        .iter()
        .find(|m| m.family == a.workload && m.mode == mode)
    else {
        let fitted: Vec<String> = models
            .iter()
            .map(|m| format!("{}/{}", m.mode, m.family))
            .collect();
        bail!(
            "no fitted model for mode {mode} workload {:?} (fitted: {})",
            a.workload,
            fitted.join(", ")
        );
    };
    let q = SliceQuery {
        hosts,
        tasks,
        rtt_ms: a.rtt,
        cores: a.cores,
        separate_targets: a.separate_targets,
        mem_mib: a.mem_gib.map(|g| g * 1024.0),
        max_forks: a.forks,
        deadline_s: a.deadline,
    };
    let advice = recommend(m, &q);
    if a.json {
        let out = json!({
            "query": {"hosts": hosts, "tasks": tasks, "rtt_ms": a.rtt, "cores": advice.cores,
                      "separate_targets": a.separate_targets, "mem_gib": a.mem_gib,
                      "max_forks": a.forks, "deadline_s": a.deadline, "workload": a.workload},
            "advice": advice,
            "results": a.results,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print!("{}", slices::table(&q, &advice));
    }
    Ok(0)
}

fn print_failure(o: &Outcome) {
    let label = o.spec.label();
    match (&o.result, o.status()) {
        (Err(ClientError::Api { kind, message, .. }), Status::Unreachable) => {
            println!("{label} | UNREACHABLE! ({kind}) => {message}")
        }
        (Err(e), _) => println!("{label} | FAILED! => {e}"),
        (Ok(v), _) => println!("{label} | FAILED! => {v}"),
    }
}

fn print_exec(o: &Outcome) {
    use base64::Engine as _;
    let Ok(v) = &o.result else {
        return print_failure(o);
    };
    let dec = |k: &str| {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(v[k].as_str().unwrap_or(""))
            .unwrap_or_default();
        String::from_utf8_lossy(&raw).trim_end().to_string()
    };
    let word = if o.status() == Status::Ok {
        "CHANGED"
    } else {
        "FAILED"
    };
    let timed = if v["timed_out"].as_bool() == Some(true) {
        " (timed out)"
    } else {
        ""
    };
    println!("{} | {word} | rc={}{timed} >>", o.spec.label(), v["rc"]);
    let (out, err) = (dec("stdout_b64"), dec("stderr_b64"));
    if !out.is_empty() {
        println!("{out}");
    }
    if !err.is_empty() {
        println!("{err}");
    }
}

/// Connects to the given daemon or starts one in-process, fans the request out with a progress
/// bar, prints each outcome and the summary; exit code 0 all ok, 2 some failed, 4 unreachable.
fn with_fleet(
    fleet: &Fleet,
    build: impl Fn(&Spec) -> serde_json::Value,
    show: impl Fn(&Outcome),
) -> Result<i32> {
    let specs = spindle::inventory::load(&fleet.inventory)?;
    if specs.is_empty() {
        bail!("inventory {:?} names no hosts", fleet.inventory);
    }
    // The in-process daemon's socket is in a fresh private (0700) directory, removed when this
    // returns (the guard) and on SIGTERM/SIGINT (the daemon stops, then this returns): no
    // predictable name another user could take first.
    let mut private_dir = None;
    let (socket, own) = match &fleet.socket {
        Some(s) => (s.clone(), None),
        None => {
            let base = std::env::var_os("XDG_RUNTIME_DIR")
                .map(PathBuf::from)
                .filter(|d| d.is_dir())
                .unwrap_or_else(std::env::temp_dir);
            let dir = tempfile::Builder::new()
                .prefix("spindle-")
                .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
                .tempdir_in(&base)
                .with_context(|| format!("creating a private directory in {}", base.display()))?;
            let path = dir.path().join("spindle.sock");
            private_dir = Some(dir);
            spindle::api::server::stop_on_signals().context("installing signal handlers")?;
            spindle::api::server::raise_fd_limit();
            let h = spawn_in_thread(ServeOptions {
                io: fleet.io,
                hop_cache: std::env::var_os("SPINDLE_NO_HOP_CACHE").is_none(),
                ..ServeOptions::new(path.clone())
            })?;
            (path, Some(h))
        }
    };
    let mut client =
        Client::connect(&socket).with_context(|| format!("connecting to {}", socket.display()))?;
    let bar = ProgressBar::new(specs.len() as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} hosts {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let outcomes = fan_out(&mut client, &specs, build, |o| {
        bar.inc(1);
        if o.status() != Status::Ok {
            bar.set_message(format!("last failure: {}", o.spec.label()));
        }
    });
    let outcomes = match outcomes {
        Err(_) if spindle::api::server::stop_requested() => {
            bar.abandon();
            if let Some(h) = own {
                let _ = h.join();
            }
            drop(private_dir);
            bail!("interrupted by a signal");
        }
        o => o?,
    };
    bar.finish_and_clear();
    for o in &outcomes {
        show(o);
    }
    eprintln!("{}", summary(&outcomes));
    if let Some(h) = own {
        let _ = client.call(json!({"op": "shutdown"}));
        let _ = h.join();
    }
    drop(private_dir);
    let worst = outcomes.iter().map(|o| o.status()).fold(0, |acc, s| {
        acc.max(match s {
            Status::Ok => 0,
            Status::Failed => 2,
            Status::Unreachable => 4,
        })
    });
    Ok(worst)
}
