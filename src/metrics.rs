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
