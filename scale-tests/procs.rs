//! Processes under test for the scale driver: starting (and stopping) the daemon and the fleet
//! simulator, raising the descriptor limit, and reading memory, CPU time and descriptor counts
//! from /proc.

use std::fs::File;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Clock ticks per second of /proc/<pid>/stat times (USER_HZ, 100 on Linux).
pub const USER_HZ: f64 = 100.0;

/// A process the driver started (killed on drop) or attached to.
pub struct Proc {
    /// The child, when the driver started it.
    pub child: Option<Child>,
    /// Its pid (for /proc readings).
    pub pid: u32,
}

impl Proc {
    /// Whether the process still runs (a started child that exited is reported dead).
    pub fn alive(&mut self) -> bool {
        match &mut self.child {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => Path::new(&format!("/proc/{}", self.pid)).exists(),
        }
    }

    /// Stops a started child: waits up to `grace` for it to exit on its own, then kills it.
    pub fn stop(&mut self, grace: Duration) {
        if let Some(mut c) = self.child.take() {
            let end = Instant::now() + grace;
            while Instant::now() < end {
                if !matches!(c.try_wait(), Ok(None)) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop(Duration::ZERO);
    }
}

/// Raises this process's soft descriptor limit to the hard one (children inherit it).
/// Returns (soft, hard) after the change.
pub fn raise_nofile() -> (u64, u64) {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut l = getrlimit(Resource::Nofile);
    l.current = l.maximum;
    let _ = setrlimit(Resource::Nofile, l);
    let l = getrlimit(Resource::Nofile);
    (l.current.unwrap_or(u64::MAX), l.maximum.unwrap_or(u64::MAX))
}

/// Waits until a Unix socket accepts connections.
pub fn wait_connectable(path: &Path, timeout: Duration, p: &mut Proc) -> Result<(), String> {
    let end = Instant::now() + timeout;
    while UnixStream::connect(path).is_err() {
        if !p.alive() {
            return Err(format!(
                "process {} exited before {} was up",
                p.pid,
                path.display()
            ));
        }
        if Instant::now() > end {
            return Err(format!("{} did not come up in {timeout:?}", path.display()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Starts `bin args...` with stderr (and stdout) appended to `log`.
pub fn spawn(bin: &Path, args: &[String], log: &Path) -> Result<Proc, String> {
    let f = File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
    let f2 = f.try_clone().map_err(|e| e.to_string())?;
    let mut cmd = Command::new(bin);
    cmd.args(args).stdin(Stdio::null()).stdout(f2).stderr(f);
    // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and touches no memory of the
    // parent: if the driver dies, its daemon and simulator are terminated with it.
    unsafe {
        cmd.pre_exec(|| {
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::Term))
                .map_err(std::io::Error::from)
        });
    }
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
    Ok(Proc {
        pid: child.id(),
        child: Some(child),
    })
}

/// A binary next to the running one (cargo puts all of a package's binaries together).
pub fn sibling(name: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join(name)))
        .unwrap_or_else(|| PathBuf::from(name))
}

/// A `Vm*:` field of /proc/<pid>/status, in KiB.
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Resident set size in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:").unwrap_or(0)
}

/// Peak resident set size in KiB.
pub fn hwm_kib(pid: u32) -> u64 {
    status_kib(pid, "VmHWM:").unwrap_or(0)
}

/// User plus system CPU time in clock ticks ([`USER_HZ`]).
pub fn cpu_ticks(pid: u32) -> u64 {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    // Fields after the command name (which may hold spaces) start at field 3 (state).
    let Some(rest) = s.rfind(')').map(|i| &s[i + 1..]) else {
        return 0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
    num(11) + num(12) // utime (field 14), stime (field 15)
}

/// Open descriptors of a process.
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// This process's own CPU time in seconds.
pub fn self_cpu_secs() -> f64 {
    cpu_ticks(std::process::id()) as f64 / USER_HZ
}

/// Busy CPU time of the whole machine (all cores, everything but idle and iowait), in ticks.
pub fn machine_busy_ticks() -> u64 {
    let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = s.lines().next() else {
        return 0;
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().sum();
    total.saturating_sub(v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0))
}

/// The 1-minute load average.
pub fn loadavg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|x| x.parse().ok()))
        .unwrap_or(0.0)
}

/// Nanoseconds a (single-threaded) process has waited on a run queue for a CPU: how much the
/// rest of the machine delayed it.
pub fn runqueue_wait_ns(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/schedstat"))
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|x| x.parse().ok()))
        .unwrap_or(0)
}

/// Direct children of a process (the daemon's agents for `local` targets), from
/// /proc/<pid>/task/*/children.
pub fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in tasks.flatten() {
        let s = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
        out.extend(s.split_whitespace().filter_map(|x| x.parse::<u32>().ok()));
    }
    out.sort_unstable();
    out.dedup();
    out
}
