//! One target stream or nested context as the router keeps it: its connection phase, frame
//! decoder, outbound queue, calls in flight, and its place in a chain of contexts.

use super::calls::Call;
use super::hop_cache::HopEntry;
use super::TargetId;
use crate::metrics::TargetCounters;
use crate::proto::{BootScan, Decoder};
use crate::transfer::Outbound;
use crate::transport::Spec;
use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Instant;

#[derive(Debug, PartialEq, Eq)]
pub(super) enum Phase {
    /// Starting: fails at `deadline`, which each sign of progress (bytes from the target,
    /// bytes it read from us) moves to a full bootstrap period from then, never past `until`.
    Connecting {
        deadline: Instant,
        until: Instant,
    },
    Ready,
    Dead,
}

pub(super) struct Target {
    pub(super) spec: Spec,
    pub(super) label: String,
    pub(super) key: String,
    pub(super) phase: Phase,
    pub(super) decoder: Decoder,
    /// A stream started by stage 1, until its boot marker: what its shell printed first is
    /// skipped (see `proto::boot`). None for a context or a unix-socket stream.
    pub(super) boot: Option<BootScan>,
    pub(super) out: Outbound,
    pub(super) hello: Option<Vec<u8>>,
    pub(super) next_handle: u32,
    pub(super) calls: HashMap<u32, Call>,
    pub(super) puts: VecDeque<u32>,
    pub(super) sent_blobs: HashSet<String>,
    /// Ids of the module file sets (run_module manifest + core list) its agent keeps.
    pub(super) sent_sets: HashSet<String>,
    pub(super) counters: TargetCounters,
    /// For a context (become, or a target behind a via hop): the target whose agent started
    /// it, itself a stream or a context. Frames travel on the root stream of that chain.
    pub(super) parent: Option<TargetId>,
    /// Context id on the root stream: `CTX_AGENT` for a stream's own agent, > 1 for a nested
    /// one (unique per root stream, at any depth).
    pub(super) ctx: u32,
    /// Contexts this target's agent started, by context id.
    pub(super) children: HashMap<u32, TargetId>,
    /// On a root stream: every context under it at any depth, by context id (frames coming
    /// up carry it as `src`).
    pub(super) routes: HashMap<u32, TargetId>,
    /// On a via hop: files its agent keeps for the targets behind it, by sha256.
    pub(super) hop_files: HashMap<String, HopEntry>,
    pub(super) next_ctx: u32,
    /// For a context: bytes of its frames moved to its stream and not yet credited back by
    /// the agent that writes them into its input (at most about [`super::CONTEXT_WINDOW`]).
    pub(super) unacked: usize,
    /// For a context still starting: `store_blobs` frames for it, queued on its root stream
    /// ahead of its other frames once it runs (see `blob_refs`).
    pub(super) held_stores: Vec<u8>,
    pub(super) last_used: Instant,
    /// Starting, and its process read bytes we wrote since the last `tick` (progress).
    pub(super) read_since_tick: bool,
    /// When bytes last came from it (a root stream idle since long is checked before use).
    pub(super) last_in: Instant,
    /// A liveness check in flight and the requests it holds (see `probe`).
    pub(super) probe: Option<super::probe::Probe>,
    /// Its agent's LOG records: rate limit and dropped count (see `agent_log`).
    pub(super) logs: super::agent_log::LogLimiter,
    /// Its agent asked to serve no new request (`retire`: a task replaced its interpreter on
    /// the target), and why. New requests for its spec go to a new stream or context; it is
    /// closed once nothing runs in it or behind it.
    pub(super) retiring: Option<String>,
}

impl Target {
    /// The next call handle on this stream (never 0).
    pub(super) fn take_handle(&mut self) -> u32 {
        let h = self.next_handle;
        self.next_handle = self.next_handle.wrapping_add(1).max(1);
        h
    }
}
