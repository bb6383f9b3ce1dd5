//! Daemon-wide counters (bytes, frames, calls) reported by the `stats` op. Latency
//! histograms per target and task come with the bench harness.

use serde::Serialize;

/// Monotonic counters.
#[derive(Debug, Default, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct Counters {
    /// Bytes read from targets.
    pub bytes_in: u64,
    /// Bytes written to targets.
    pub bytes_out: u64,
    /// Frames read from targets.
    pub frames_in: u64,
    /// Frames queued to targets.
    pub frames_out: u64,
    /// Calls sent to agents.
    pub calls: u64,
    /// Streams opened.
    pub connects: u64,
    /// Streams that failed or were closed.
    pub failures: u64,
    /// Idle become contexts closed to stay within the interpreter limit.
    pub recycled: u64,
    /// Streams and contexts closed because their agent retired (a task replaced its
    /// interpreter on the target).
    pub retired: u64,
}

/// Counters of one target stream (reported per target by `stats`).
#[derive(Debug, Default, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct TargetCounters {
    /// Calls sent.
    pub calls: u64,
    /// Frames queued to the agent.
    pub frames_out: u64,
    /// Frames received from the agent.
    pub frames_in: u64,
    /// Bytes written to the agent's stream.
    pub bytes_out: u64,
    /// Bytes read from it.
    pub bytes_in: u64,
    /// Blobs pushed to it.
    pub blobs_pushed: u64,
}

/// Most distinct stock-path reasons counted by name (more are counted as `other`).
pub const MAX_REASONS: usize = 64;
/// Most (host, reason) pairs remembered for "said once per host and reason".
pub const MAX_NOTED: usize = 16_384;
/// Longest reason kept (characters).
pub const MAX_REASON_LEN: usize = 300;

/// Where module tasks ran (`stats` → `paths`): in an agent (in-process), in a forked child of
/// an agent, or on Ansible's stock command path, with the reasons the plugin gave for that.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Paths {
    /// Module runs in an agent's process (run_module warm/inproc, copy_fast).
    pub in_agent: u64,
    /// Module runs in a forked child of an agent.
    pub forked: u64,
    /// Module runs on Ansible's stock command path (a new interpreter per task).
    pub stock: u64,
    /// `stock`, by reason.
    pub stock_reasons: std::collections::BTreeMap<String, u64>,
    /// (host, reason) pairs already noted, per run (the plugin's run id: a daemon that
    /// outlives a playbook warns again in the next run), the last [`MAX_NOTED_RUNS`] runs.
    #[serde(skip)]
    noted: std::collections::VecDeque<(String, std::collections::HashSet<(String, String)>)>,
}

/// Runs whose noted (host, reason) pairs [`Paths`] remembers.
pub const MAX_NOTED_RUNS: usize = 8;

/// Where an agent call runs a module (counted when it answers with a result, not a
/// `fallback`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentPath {
    /// In the agent's process (`run_module` warm/inproc, `copy_fast`).
    InAgent,
    /// In a forked child of the agent (`run_module` mode `fork`).
    Forked,
}

impl AgentPath {
    /// The path of an agent call payload's `op` and `mode`; None for calls that run no module.
    pub fn of(op: Option<&str>, mode: Option<&str>) -> Option<AgentPath> {
        match (op, mode) {
            (Some("run_module"), Some("fork")) => Some(AgentPath::Forked),
            (Some("run_module"), _) | (Some("copy_fast" | "copy_stream"), _) => {
                Some(AgentPath::InAgent)
            }
            _ => None,
        }
    }
}

impl Paths {
    /// Counts one module run an agent answered.
    pub fn ran(&mut self, path: AgentPath) {
        match path {
            AgentPath::InAgent => self.in_agent += 1,
            AgentPath::Forked => self.forked += 1,
        }
    }

    /// Counts one stock-path run on `host` for `reason`; true the first time this host gives
    /// this reason (the plugin then warns). Bounded: reasons are cut to [`MAX_REASON_LEN`],
    /// at most [`MAX_REASONS`] are named, at most [`MAX_NOTED`] pairs remembered (past that,
    /// nothing is "first" again in that run: no warning flood). `run` names the playbook run
    /// (empty when the client gave none): each run gets its own warnings.
    pub fn stock(&mut self, run: &str, host: &str, reason: &str) -> bool {
        self.stock += 1;
        let reason: String = reason
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .take(MAX_REASON_LEN)
            .collect();
        let key =
            if self.stock_reasons.contains_key(&reason) || self.stock_reasons.len() < MAX_REASONS {
                reason.clone()
            } else {
                "other".to_string()
            };
        *self.stock_reasons.entry(key).or_insert(0) += 1;
        let at = match self.noted.iter().position(|(r, _)| r == run) {
            Some(at) => at,
            None => {
                if self.noted.len() >= MAX_NOTED_RUNS {
                    self.noted.pop_front();
                }
                self.noted.push_back((run.to_string(), Default::default()));
                self.noted.len() - 1
            }
        };
        let noted = &mut self.noted[at].1;
        if noted.len() >= MAX_NOTED {
            return false;
        }
        noted.insert((host.to_string(), reason))
    }
}

/// File descriptors of the daemon process (reported by `stats` as `fds`; the server fills it
/// in, the router never asks the kernel).
#[derive(Debug, Default, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct FdUsage {
    /// Descriptors open now.
    pub open: u64,
    /// The soft RLIMIT_NOFILE (raised to the hard limit at start); `None`: unlimited.
    pub limit: Option<u64>,
    /// The hard RLIMIT_NOFILE.
    pub hard_limit: Option<u64>,
    /// Descriptors one more target stream takes in the daemon (its stdin, stdout and stderr
    /// pipes; a `unix` target takes 1); an API client takes 1.
    pub per_target: u64,
    /// How many more process targets fit under `limit` (`(limit - open) / per_target`).
    pub targets_fit: Option<u64>,
}

/// API clients and the bytes buffered for them (reported by `stats` as `clients`; the server
/// fills it in).
#[derive(Debug, Default, Clone, Copy, Serialize, PartialEq)]
pub struct ClientUsage {
    /// Clients connected now.
    pub connected: u64,
    /// Bytes charged to the budget now: partial requests (an admitted message at its full
    /// size) and unread replies.
    pub buffered_bytes: u64,
    /// The budget (`serve --client-buffer-mib`).
    pub budget_bytes: u64,
    /// Clients whose message waits for room in the budget (not read meanwhile).
    pub waiting: u64,
    /// How long a partial request may go without a byte (`serve --partial-request-timeout`).
    pub partial_timeout_s: f64,
    /// Clients disconnected over the budget or at the deadline, messages refused, waits.
    #[serde(flatten)]
    pub counters: crate::api::server::BudgetCounters,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stock_reasons_are_bounded_and_first_once_per_host() {
        let mut p = Paths::default();
        assert!(p.stock("", "a", "why"));
        assert!(!p.stock("", "a", "why"));
        assert!(p.stock("", "b", "why"));
        for i in 0..200 {
            p.stock("", "a", &format!("reason {i}"));
        }
        assert_eq!(p.stock_reasons.len(), MAX_REASONS + 1);
        assert!(p.stock_reasons["other"] > 0);
        assert_eq!(p.stock, 203);
        assert!(p.stock("", "c", &"x\n".repeat(1000)));
        assert!(p
            .stock_reasons
            .keys()
            .all(|k| k.len() <= MAX_REASON_LEN && !k.contains('\n')));
        for (op, mode) in [
            ("run_module", Some("warm")),
            ("run_module", Some("fork")),
            ("copy_fast", None),
            ("exec", None),
        ] {
            if let Some(path) = AgentPath::of(Some(op), mode) {
                p.ran(path);
            }
        }
        assert_eq!((p.in_agent, p.forked), (2, 1));
    }

    #[test]
    fn each_run_is_warned_once_and_old_runs_are_forgotten() {
        let mut p = Paths::default();
        assert!(p.stock("run1", "a", "why"));
        assert!(!p.stock("run1", "a", "why"));
        assert!(p.stock("run2", "a", "why"));
        assert!(!p.stock("run1", "a", "why"));
        for i in 0..(MAX_NOTED_RUNS * 3) {
            assert!(p.stock(&format!("r{i}"), "a", "why"));
        }
        assert_eq!(p.noted.len(), MAX_NOTED_RUNS);
        assert!(p.stock("run1", "a", "why"), "forgotten: warned again");
        assert_eq!(p.stock_reasons["why"], 5 + MAX_NOTED_RUNS as u64 * 3);
    }
}
