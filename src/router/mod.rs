//! The router: sans-IO state of every target stream and every call in flight.
//!
//! It takes API requests, bytes read from targets, the current time and the answers to its
//! file requests as inputs, and yields [`Action`]s (spawn a target, reply to a client, kill a
//! target), [`FileOp`]s and per-target outbound queues. It makes no system call: no socket,
//! pipe, file or clock, so it is tested deterministically and both reactor backends share it
//! unchanged (the quinn-proto pattern). The server does every syscall:
//!
//! - it writes each stream's outbound queue ([`Router::poll_transmit`], then
//!   [`Router::transmitted`]): protocol bytes by `write`, a put's file ranges by `splice` from
//!   the source into the pipe (zero-copy, [`crate::transfer`]);
//! - it does the controller's local file I/O for `put` and `fetch` ([`Router::poll_file_op`],
//!   answers by [`Router::file_done`]; [`crate::fileio`]): opening a put's source (hashing it
//!   when it goes through a hop's file cache), creating a fetch's temp file, appending each
//!   DATA frame's bytes to it, syncing and renaming it over the destination, removing it. The
//!   open and the sync + rename run off the loop thread; a call waiting for its file is
//!   answered when the answer comes (tests: `a_put_waits_for_its_source_to_open_and_one_that_
//!   cannot_fails_alone`, `a_fetch_is_answered_once_its_file_is_synced_and_renamed`).
//!
//! The router holds a put's open source only as an opaque [`Source`] handle, to queue ranges of
//! it: a large file never sits in memory (a fetch's data is handed over frame by frame).
//!
//! Time: [`Router::poll_timeout`] tells the I/O loop how long it may wait before
//! [`Router::tick`] is due (the earliest connect or call deadline, ticks at most every
//! [`TICK_MIN`], at least every [`TICK_MAX`] while a stream lives; None when nothing is timed),
//! so an idle daemon does not wake to scan its streams (test:
//! `poll_timeout_wakes_the_loop_for_the_earliest_deadline_and_not_otherwise`).
//!
//! Bounds, each with the in-memory test (`tests/`) that checks it:
//!
//! - at most [`MAX_INFLIGHT`] calls per target, then `busy` (test:
//!   `busy_at_the_inflight_limit`);
//! - at most [`MAX_OUTBOUND`] bytes queued to a target's stream, then `busy`, for it and the
//!   contexts it carries (test: `busy_at_the_outbound_limit_when_the_target_stops_reading`);
//! - outbound bytes per target are refilled from file transfers only below [`LOW_WATER`]
//!   (test: `put_data_is_queued_only_below_the_low_water_mark`): a slow target therefore
//!   holds at most about `LOW_WATER + CHUNK` bytes of file data, and stalls only its own
//!   stream;
//! - a reply is capped at [`crate::api::MAX_MESSAGE`] over all its MORE frames: past it the
//!   call fails, not the stream (tests: `a_reply_split_over_frames_is_reassembled`,
//!   `a_split_reply_over_the_message_limit_fails_its_call_not_the_stream`);
//! - replies being assembled, all targets together, hold at most [`replies::REPLIES_MAX`]
//!   bytes: the call whose frame would pass it fails, not the stream (test:
//!   `replies_in_assembly_over_the_daemons_budget_fail_the_call_that_passes_it`);
//! - a nested context (become, via) has at most [`CONTEXT_WINDOW`] bytes in flight to the
//!   agent that feeds it, more going as its CREDIT frames come (tests:
//!   `a_context_gets_at_most_its_window_in_flight_until_credit`,
//!   `a_put_into_a_become_context_goes_a_window_at_a_time`);
//! - at most [`DEFAULT_MAX_INTERPRETERS`] (`max_interpreters`) become and interpreter contexts
//!   per stream: opening one more closes the least recently used idle one, never one with
//!   hosts behind it, and hosts behind a via hop are not counted (tests:
//!   `the_least_recently_used_idle_become_context_is_recycled`,
//!   `hosts_behind_a_hop_and_contexts_with_hosts_behind_them_are_not_recycled`);
//! - a fetch takes at most the size its agent announced, never over [`FETCH_MAX`], and
//!   succeeds only with as many bytes as its reply reports (tests:
//!   `fetch_data_past_the_announced_size_fails_the_call_not_the_stream`,
//!   `a_fetch_cut_short_fails_and_leaves_no_file`,
//!   `a_failed_fetch_leaves_the_file_at_its_destination_alone`);
//! - deadlines, answered `timeout`: a call's `call_timeout` (test:
//!   `a_call_past_its_call_timeout_gets_timeout_and_a_cancel`); an exec's own `timeout` plus
//!   `EXEC_GRACE` (test:
//!   `an_exec_gets_its_own_timeout_plus_grace_or_its_call_timeout_if_sooner`);
//!   a become context's start, twice its prompt timeout plus `SPAWN_GRACE` (test:
//!   `a_become_start_gets_its_prompt_timeout_plus_grace`); an agent's start, its bootstrap
//!   period (tests: `a_slow_agent_start_is_not_a_timeout`,
//!   `progress_moves_the_start_deadline_within_its_limit`);
//! - a call given up on (deadline, client gone, data over a limit) is stopped on the target
//!   too (`calls::abandon`: a `cancel` CALL, or DATA ABORT for a put) (tests:
//!   `a_timed_out_exec_or_fetch_is_cancelled_on_the_target`,
//!   `a_gone_clients_exec_is_cancelled_without_a_reply`,
//!   `a_timed_out_put_is_aborted_and_a_gone_clients_put_completes`,
//!   `a_timed_out_put_behind_a_hop_is_not_relayed_and_is_aborted`);
//! - a file of at least [`HOP_CACHE_MIN`] for targets behind a via hop crosses each link
//!   once, through the hop's cache of at most [`HOP_CACHE_BYTES`] (tests:
//!   `a_large_put_to_hosts_behind_a_hop_crosses_the_link_once`,
//!   `a_hops_file_cache_drops_the_least_recently_used_file_for_room`), and so does module
//!   code, pushed once per stream and by reference to a context's parent (`blob_refs`; tests:
//!   `a_calls_blobs_go_to_a_stream_once`,
//!   `a_call_naming_blobs_the_daemon_lacks_gets_missing_blobs`,
//!   `a_become_context_gets_blob_refs_its_parent_fills_in`,
//!   `code_for_a_host_behind_two_hops_crosses_each_link_once`);
//! - a failure stays within its stream or context: malformed bytes fail their stream alone
//!   (tests: `malformed_bytes_from_an_agent_fail_its_stream_and_no_other`,
//!   `replies_read_before_malformed_bytes_count_for_contexts_too`,
//!   `an_agent_speaking_another_protocol_is_refused`), a hop that fails fails the targets
//!   behind it and no other (tests: `a_hop_that_ends_fails_the_targets_behind_it_and_no_other`,
//!   `a_lost_hop_stream_fails_every_target_behind_it_and_no_other`,
//!   `a_host_its_hop_cannot_reach_fails_with_the_hops_reason_and_no_other`).
//!
//! This file holds the [`Router`] itself, its public API and the decoding of bytes read from
//! a stream; the parts that own one idea live beside it: `agent_frames` (one frame applied to
//! its target), `target` (a stream's or context's
//! state), `calls` (calls in flight, their replies and put data), `contexts` (become and
//! via contexts: start, recycle, close), `hop_cache` (files relayed from a via hop's
//! cache), `blob_refs` (module code a nested context gets from its parent's store) and `probe`
//! (an ssh stream idle for [`PROBE_AFTER`] is checked alive before it is used again: the
//! persistent daemon's streams outlive playbooks, and hosts reboot in between (test:
//! `an_idle_ssh_stream_is_checked_before_use_and_then_used`); held requests per stream: at
//! most [`MAX_INFLIGHT`] (test: `busy_when_too_many_requests_wait_for_a_liveness_check`)),
//! and `retire` (an agent whose interpreter a task replaced: no new requests, closed once idle;
//! tests: `router::tests::retire`).

mod agent_frames;
mod agent_log;
mod answers;
mod blob_refs;
mod calls;
mod contexts;
mod hop_cache;
mod probe;
mod replies;
mod requests;
mod retire;
mod target;
#[cfg(test)]
mod tests;

use crate::api::{self, ErrorKind, Request};
use crate::cache::BlobCache;
use crate::metrics::{ClientUsage, Counters, FdUsage};
use crate::proto::{self, encode_frame, flags, BootStep, FrameHeader, Kind};
use crate::transfer::{Outbound, Source, TransferCounters};
use crate::transport::Spec;
use agent_frames::on_frame;
use calls::Op;
use slab::Slab;
use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use target::{Phase, Target};

pub use agent_log::{escape_for_log, LogLimiter, LOG_BURST, LOG_RATE, LOG_RECORD_MAX};
pub use probe::{PROBE_AFTER, PROBE_MIN};

/// Client connection id (assigned by the server).
pub type ClientId = usize;
/// Target stream id.
pub type TargetId = usize;

/// Calls in flight per target before new ones are refused with `busy`.
pub const MAX_INFLIGHT: usize = 1024;
/// Outbound bytes below which file data is refilled.
pub const LOW_WATER: usize = 512 * 1024;
/// Bytes of a nested context's frames (become, via) in flight at most, between the daemon and
/// the agent that writes them into the context's input: that agent queues them without
/// blocking its other children, and this bounds its queue (docs/protocol.md, "Memory on
/// hops"). Moves stop at frame boundaries, so it may be exceeded by one queued chunk. Large
/// files behind via hops mostly go through the hops' caches instead; a plain put into a
/// context runs at up to this window per round trip.
pub const CONTEXT_WINDOW: usize = 2 * 1024 * 1024;
/// Outbound bytes queued to one target above which new calls are refused with `busy`: a
/// target that stops reading cannot grow the daemon's memory (calls that timed out leave
/// their CALL frames queued, so counting calls alone is not enough).
pub const MAX_OUTBOUND: usize = 8 * 1024 * 1024;
/// File data per DATA frame.
pub const CHUNK: usize = 256 * 1024;
/// Bytes one `fetch` may bring at most, whatever the agent announces (it announces the size it
/// found at open, and sends no more; a hostile target could announce anything): past it the
/// call fails and the agent is told to stop.
pub const FETCH_MAX: u64 = 64 * 1024 * 1024 * 1024;
/// The shortest time between two [`Router::tick`]s: deadlines are kept to this precision.
pub const TICK_MIN: Duration = Duration::from_millis(100);
/// The longest time between two ticks while any stream lives.
pub const TICK_MAX: Duration = Duration::from_secs(1);
/// Extra time the daemon waits past an exec's own timeout before giving up on the agent.
const EXEC_GRACE: Duration = Duration::from_secs(30);
/// Default limit of become contexts (nested agents) per target; beyond it the least recently
/// used idle one is closed (`SPINDLE_MAX_INTERPRETERS`, `serve --max-interpreters`).
pub const DEFAULT_MAX_INTERPRETERS: usize = 20;
/// Files at least this large sent to a target behind a via hop go through the hop's file
/// cache (they cross each link once for all the targets behind it).
pub const HOP_CACHE_MIN: u64 = 64 * 1024;
/// Bytes of files a hop's agent keeps in RAM at most (least recently used dropped first).
pub const HOP_CACHE_BYTES: u64 = 256 * 1024 * 1024;
/// Extra time past its own timeout the daemon gives a become context's start, so the agent's
/// precise error (wrong password, prompt timeout) arrives before the daemon's own deadline.
const SPAWN_GRACE: Duration = Duration::from_secs(5);

/// What the I/O layer must do.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Start the process for this target (its spec is [`Router::spec`]); its first outbound
    /// bytes (the agent) are already queued.
    Spawn(TargetId),
    /// Send this message body to a client.
    Reply(ClientId, Vec<u8>),
    /// Stop this target's process; call [`Router::release`] once its descriptors are gone.
    Kill(TargetId),
    /// Stop the daemon.
    Shutdown,
}

/// Names a local file the router asked the server to open or create, in [`FileOp`]s and
/// their [`FileDone`] answers (unique per router).
pub type FileToken = u64;

/// Local file I/O the router asks the server for ([`Router::poll_file_op`]); the answer, for
/// those that have one, comes back through [`Router::file_done`] with the same token.
#[derive(Debug, PartialEq, Eq)]
pub enum FileOp {
    /// Open a put's source for reading, a regular file; answered [`FileDone::Opened`], with
    /// its sha256 when its size is within `hash` (for a hop's file cache).
    Open {
        /// Names the answer.
        token: FileToken,
        /// The client's `src`.
        path: String,
        /// Hash the content when the size is within these bounds (inclusive).
        hash: Option<(u64, u64)>,
    },
    /// Create (or truncate) a fetch's temp file for writing; answered [`FileDone::Created`].
    Create {
        /// Names the file from now on.
        token: FileToken,
        /// Beside the destination.
        path: PathBuf,
    },
    /// Append a DATA frame's bytes to the created file. Not answered: a failed write is
    /// reported by the file's [`FileOp::Finish`].
    Write {
        /// The file.
        token: FileToken,
        /// The bytes, in order.
        data: Vec<u8>,
    },
    /// Sync the file, close it and rename `tmp` over `dest`, after its writes; on a failure
    /// (this or a write's) remove `tmp`. Answered [`FileDone::Finished`].
    Finish {
        /// The file.
        token: FileToken,
        /// Where it was created.
        tmp: PathBuf,
        /// The client's `dest`.
        dest: PathBuf,
    },
    /// Close the file if open and remove `path` (a fetch that failed). Not answered.
    Remove {
        /// The file.
        token: FileToken,
        /// Where it was created.
        path: PathBuf,
    },
}

/// A put's source, opened by the server.
#[derive(Debug)]
pub struct Opened {
    /// The open file (the router queues ranges of it).
    pub source: Source,
    /// Its size at open.
    pub size: u64,
    /// Its sha256, when asked for and read whole at that size.
    pub sha: Option<String>,
}

/// The answer to a [`FileOp`]; `Err` holds the message for the client.
#[derive(Debug)]
pub enum FileDone {
    /// To [`FileOp::Open`].
    Opened(Result<Opened, String>),
    /// To [`FileOp::Create`].
    Created(Result<(), String>),
    /// To [`FileOp::Finish`].
    Finished(Result<(), String>),
}

/// All target streams and calls.
pub struct Router {
    targets: Slab<Target>,
    by_key: HashMap<String, TargetId>,
    actions: VecDeque<Action>,
    touched: Vec<TargetId>,
    cache: BlobCache,
    /// Move put payload with splice(2) (else read/write; for comparison runs).
    pub splice: bool,
    /// File bytes spliced vs copied (reported by `stats`).
    pub transfer: TransferCounters,
    /// Name of the event-loop backend (reported by `stats`).
    pub backend: &'static str,
    /// Daemon-wide counters.
    pub counters: Counters,
    /// Where module tasks ran (in an agent, forked, stock path and why).
    pub paths: crate::metrics::Paths,
    /// The daemon's file descriptors (reported by `stats`; kept current by the server).
    pub fds: FdUsage,
    /// API clients and their buffered bytes (filled in by the server before `stats`).
    pub clients: ClientUsage,
    /// Become contexts per target before the least recently used idle one is closed.
    pub max_interpreters: usize,
    /// Send files for targets behind a via hop through the hop's file cache, and module code
    /// for any nested context by reference to its parent's (`blob_refs`).
    pub hop_cache: bool,
    /// Use order of hop cache entries.
    hop_seq: u64,
    /// Local file I/O for the server to do (see [`FileOp`]).
    file_ops: VecDeque<FileOp>,
    /// Calls waiting for the answer to a [`FileOp`] (see `calls::Waiting`).
    waiting: HashMap<FileToken, calls::Waiting>,
    /// The next [`FileToken`].
    next_file: FileToken,
    /// Requests a liveness check released or orphaned, to handle at the next input.
    replay: Vec<(ClientId, Request)>,
    /// No deadline is earlier than this (a lower bound: set when a deadline is made, exact
    /// after each [`Router::tick`]); None: nothing is timed.
    next_deadline: Option<Instant>,
    /// A starting stream made progress since the last tick (its start deadline moves).
    progress_pending: bool,
    /// When [`Router::tick`] last ran.
    last_tick: Option<Instant>,
    /// Reply bytes in assembly, all calls together (`replies`).
    pub(super) replies: replies::ReplyBudget,
}

impl Default for Router {
    fn default() -> Self {
        Router::new()
    }
}

/// Appends a CALL of `body` to `buf`: one frame, or MORE-flagged frames when it is larger
/// than one frame may be. Returns the number of frames.
fn encode_call(buf: &mut Vec<u8>, body: &[u8], fl: u8, handle: u32, dst: u32) -> u64 {
    let mut parts = body.chunks(proto::MAX_PAYLOAD).peekable();
    let mut frames = 0;
    while let Some(part) = parts.next() {
        let more = if parts.peek().is_some() {
            flags::MORE
        } else {
            0
        };
        encode_frame(buf, &header(Kind::Call, fl | more, handle, dst), part);
        frames += 1;
    }
    frames
}

fn header(kind: Kind, flags: u8, handle: u32, dst: u32) -> FrameHeader {
    FrameHeader {
        kind,
        flags,
        dst,
        src: proto::CTX_CONTROLLER,
        handle,
        reply_to: 0,
    }
}

impl Router {
    /// An empty router.
    pub fn new() -> Self {
        Router {
            targets: Slab::new(),
            by_key: HashMap::new(),
            actions: VecDeque::new(),
            touched: Vec::new(),
            cache: BlobCache::default(),
            backend: "none",
            transfer: TransferCounters::default(),
            splice: true,
            counters: Counters::default(),
            paths: Default::default(),
            fds: FdUsage::default(),
            clients: ClientUsage::default(),
            max_interpreters: DEFAULT_MAX_INTERPRETERS,
            hop_cache: true,
            hop_seq: 0,
            file_ops: VecDeque::new(),
            waiting: HashMap::new(),
            next_file: 1,
            replay: Vec::new(),
            next_deadline: None,
            progress_pending: false,
            last_tick: None,
            replies: Default::default(),
        }
    }

    /// Notes a deadline just made (a call's, a stream's start): [`Router::poll_timeout`]
    /// wakes the loop for it.
    pub(super) fn deadline_at(&mut self, at: Instant) {
        self.next_deadline = Some(self.next_deadline.map_or(at, |d| d.min(at)));
    }

    /// How long the I/O loop may wait before [`Router::tick`] is due: until the earliest
    /// deadline, but ticks at most every [`TICK_MIN`] (deadlines of busy streams expire
    /// together), within [`TICK_MIN`] when a starting stream made progress, and at least every
    /// [`TICK_MAX`] while any stream lives (rate-limited log reports). None: nothing is timed
    /// (wait for input).
    pub fn poll_timeout(&self, now: Instant) -> Option<Duration> {
        let last = self.last_tick.unwrap_or(now);
        let mut at = self.next_deadline;
        if self.progress_pending {
            at = Some(at.map_or(last + TICK_MIN, |d| d.min(last + TICK_MIN)));
        }
        if !self.targets.is_empty() {
            at = Some(at.map_or(last + TICK_MAX, |d| d.min(last + TICK_MAX)));
        }
        let floor = self.last_tick.map(|l| l + TICK_MIN);
        at.map(|d| floor.map_or(d, |f| d.max(f)).saturating_duration_since(now))
    }

    /// Next action for the I/O layer.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// Next local file request for the I/O layer (see [`FileOp`]), in the order asked.
    pub fn poll_file_op(&mut self) -> Option<FileOp> {
        self.file_ops.pop_front()
    }

    /// Targets whose outbound bytes grew since the last call (may repeat).
    /// Become contexts have no pipe of their own: their bytes move to their stream's queue
    /// and the stream is reported instead.
    pub fn take_touched(&mut self) -> Vec<TargetId> {
        let mut touched = std::mem::take(&mut self.touched);
        for t in touched.iter_mut() {
            if self.targets.get(*t).is_some_and(|x| x.parent.is_some()) {
                self.pump(*t);
                *t = self.root_of(*t);
            }
        }
        touched
    }

    /// The stream (process) that carries `t`'s frames: `t` itself, or the root of its chain
    /// of parents.
    fn root_of(&self, mut t: TargetId) -> TargetId {
        while let Some(p) = self.targets.get(t).and_then(|x| x.parent) {
            if !self.targets.contains(p) {
                break;
            }
            t = p;
        }
        t
    }

    /// Moves a context's queued bytes and file ranges to its root stream's queue.
    fn pump(&mut self, t: TargetId) {
        if self.targets.get(t).and_then(|x| x.parent).is_none() {
            return;
        }
        let p = self.root_of(t);
        // Until its HELLO, the context does not exist on the target yet: hold its frames.
        let ready = |x: &Target| x.phase == Phase::Ready && !x.out.is_empty();
        if !self.targets.get(t).is_some_and(ready) || !self.targets.contains(p) {
            return;
        }
        // At most CONTEXT_WINDOW bytes in flight: the agent that writes into the context's
        // input credits them back (CREDIT frames) as it does.
        let allow = CONTEXT_WINDOW.saturating_sub(self.targets[t].unacked);
        if allow == 0 {
            return;
        }
        let mut out = std::mem::take(&mut self.targets[t].out);
        let moved = self.targets[p].out.move_prefix(&mut out, allow);
        self.targets[t].out = out;
        self.targets[t].unacked += moved;
        self.touched.push(p);
    }

    /// Bytes queued on the pipe that carries `t` (its stream's queue for a become context).
    fn queued(&self, t: TargetId) -> usize {
        let Some(x) = self.targets.get(t) else {
            return 0;
        };
        let root = match x.parent {
            Some(_) => self.targets.get(self.root_of(t)).map_or(0, |r| r.out.len()),
            None => 0,
        };
        root + x.out.len()
    }

    /// The spec of a target (for spawning).
    pub fn spec(&self, t: TargetId) -> Option<&Spec> {
        self.targets.get(t).map(|x| &x.spec)
    }

    /// Whether a target's agent said HELLO (it started).
    pub fn started(&self, t: TargetId) -> bool {
        self.targets.get(t).is_some_and(|x| x.hello.is_some())
    }

    /// Whether a target has bytes waiting to be written.
    pub fn wants_write(&self, t: TargetId) -> bool {
        self.targets.get(t).is_some_and(|x| !x.out.is_empty())
    }

    /// Stream `t`'s outbound queue for the I/O layer to write (quinn-proto's
    /// `poll_transmit`): protocol bytes and file ranges, which the server moves into the
    /// transport pipe (`write`, and `splice` for file payload: see [`crate::transfer`]) and
    /// reports with [`Router::transmitted`] (or [`Router::transmit_failed`]). None: nothing
    /// is queued. The counters are the daemon's (spliced vs copied file bytes).
    pub fn poll_transmit(&mut self, t: TargetId) -> Option<(&mut Outbound, &mut TransferCounters)> {
        let x = self.targets.get_mut(t)?;
        if x.out.is_empty() {
            return None;
        }
        Some((&mut x.out, &mut self.transfer))
    }

    /// The I/O layer wrote `n` bytes of stream `t`'s queue (taken from its front): a starting
    /// stream made progress, and file data of its puts (and its contexts') is refilled.
    pub fn transmitted(&mut self, t: TargetId, n: usize) {
        let Some(x) = self.targets.get_mut(t) else {
            return;
        };
        let starting = matches!(x.phase, Phase::Connecting { .. });
        x.read_since_tick |= starting;
        self.progress_pending |= starting;
        x.counters.bytes_out += n as u64;
        self.counters.bytes_out += n as u64;
        let children: Vec<TargetId> = x.routes.values().copied().collect();
        self.refill(t);
        for c in children {
            self.refill(c);
        }
    }

    /// The I/O layer could not move stream `t`'s queue for a local reason (a put's source
    /// file shrank while being sent): its framing is broken, so the stream fails.
    pub fn transmit_failed(&mut self, t: TargetId, why: &str) {
        let m = format!("put aborted: {why}");
        self.fail_target(t, ErrorKind::LocalIo, &m);
    }

    /// Number of live target streams.
    pub fn streams(&self) -> usize {
        self.by_key.len()
    }

    /// Handles bytes read from a target's stdout. Frames from a become context (`src` > 1)
    /// are handled as that context's after the stream's own.
    /// A starting target's process did something (wrote to stdout or stderr, or read what we
    /// sent it): it is slow, not stuck. Its start deadline moves to a full bootstrap period
    /// from `now`, within its overall limit.
    pub fn progress(&mut self, t: TargetId, now: Instant) {
        if let Some(x) = self.targets.get_mut(t) {
            if let Phase::Connecting { deadline, until } = x.phase {
                let next = (now + Duration::from_secs(x.spec.bootstrap_secs())).min(until);
                x.phase = Phase::Connecting {
                    deadline: deadline.max(next),
                    until,
                };
            }
        }
    }

    pub fn target_bytes(&mut self, t: TargetId, bytes: &[u8], now: Instant) {
        self.progress(t, now);
        let Some(x) = self.targets.get_mut(t) else {
            return;
        };
        if x.phase == Phase::Dead {
            return;
        }
        self.counters.bytes_in += bytes.len() as u64;
        x.counters.bytes_in += bytes.len() as u64;
        x.last_in = now;
        let started;
        let bytes = match x.boot.as_mut().map(|scan| scan.push(bytes)) {
            None => bytes,
            Some(BootStep::Waiting) => return,
            Some(BootStep::Started { preamble, rest }) => {
                x.boot = None;
                if !preamble.is_empty() {
                    tracing::info!(
                        host = %x.label,
                        bytes = preamble.len(),
                        "skipped what the login shell printed before the agent started: {}",
                        proto::boot::preview(&preamble)
                    );
                }
                started = rest;
                &started[..]
            }
            Some(BootStep::Overflow { preamble }) => {
                let m = format!(
                    "the agent did not start: its shell printed over {} bytes first (a login \
                     script on the target writing to stdout?): {}",
                    proto::boot::MAX_PREAMBLE,
                    proto::boot::preview(&preamble)
                );
                self.fail_target(t, ErrorKind::Protocol, &m);
                return;
            }
        };
        // The decoder is moved out while frames borrow from it and the target is updated.
        let mut decoder = std::mem::take(&mut x.decoder);
        decoder.push(bytes);
        let mut done: Vec<(u32, u8, Vec<u8>)> = Vec::new();
        let mut refused: Vec<(u32, String)> = Vec::new();
        let mut nested: Vec<(TargetId, FrameHeader, Vec<u8>)> = Vec::new();
        let mut fatal: Option<(ErrorKind, String)> = None;
        loop {
            let (h, payload) = match decoder.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    let m = format!("malformed frame from agent: {e}");
                    fatal = Some((ErrorKind::Protocol, m));
                    break;
                }
            };
            self.counters.frames_in += 1;
            if h.src > proto::CTX_AGENT {
                match x.routes.get(&h.src) {
                    Some(&c) => nested.push((c, h, payload.to_vec())),
                    None => {
                        tracing::debug!(host = %x.label, ctx = h.src, "frame from a closed context")
                    }
                }
                continue;
            }
            x.counters.frames_in += 1;
            let ops = &mut self.file_ops;
            if let Err(f) = on_frame(
                x,
                &self.replies,
                &h,
                payload,
                &mut done,
                &mut refused,
                ops,
                now,
            ) {
                fatal = Some(f);
                break;
            }
        }
        x.decoder = decoder;
        // Refused before completed: a reply read after the refused DATA finds no call.
        for (handle, m) in refused {
            self.abandon(t, handle, Some((ErrorKind::Protocol, &m)));
        }
        for (handle, fl, body) in done {
            self.complete(t, handle, fl, body);
        }
        // Frames read whole before bytes that broke the stream count, its contexts' too.
        for (c, h, payload) in nested {
            self.context_frame(c, &h, &payload, now);
        }
        if let Some((kind, m)) = fatal {
            self.fail_target(t, kind, &m);
        }
        self.retire_idle(t);
        self.log_report_due(t, now);
        self.run_replay(now);
    }

    /// Wakes the next tick for target `t`'s report of dropped log records, if one is due.
    pub(super) fn log_report_due(&mut self, t: TargetId, now: Instant) {
        if let Some(at) = self.targets.get(t).and_then(|x| x.logs.report_due_at(now)) {
            self.deadline_at(at);
        }
    }

    /// Expires connect and call deadlines.
    pub fn tick(&mut self, now: Instant) {
        self.last_tick = Some(now);
        self.progress_pending = false;
        let read: Vec<TargetId> = self
            .targets
            .iter()
            .filter(|(_, x)| x.read_since_tick)
            .map(|(t, _)| t)
            .collect();
        for t in read {
            self.targets[t].read_since_tick = false;
            self.progress(t, now);
        }
        let mut expired_targets = Vec::new();
        let mut expired_calls = Vec::new();
        // A retiring target whose last calls timed out or were cancelled: no frame came.
        let mut retiring = Vec::new();
        for (_, x) in self.targets.iter_mut() {
            if let Some(n) = x.logs.due_report(now) {
                tracing::warn!(
                    host = %x.label,
                    "{n} log records from {} dropped (more than {LOG_RATE}/s, bursts of {LOG_BURST})",
                    x.label
                );
            }
        }
        for (t, x) in self.targets.iter() {
            if x.retiring.is_some() && x.phase != Phase::Dead {
                retiring.push(t);
            }
            if let Phase::Connecting { deadline, .. } = x.phase {
                if now >= deadline {
                    expired_targets.push(t);
                    continue;
                }
            }
            for (h, c) in &x.calls {
                if c.deadline.is_some_and(|d| now >= d) {
                    expired_calls.push((t, *h));
                }
            }
        }
        for t in retiring {
            self.retire_idle(t);
        }
        for t in expired_targets {
            let spec = &self.targets[t].spec;
            let m = format!(
                "the agent did not start: no progress for {} s (bootstrap period: 4 x the {} s \
                 connect timeout, at least {} s; at most {} s in all)",
                spec.bootstrap_secs(),
                spec.connect_timeout_secs(),
                crate::transport::BOOTSTRAP_MIN_SECS,
                spec.bootstrap_limit_secs()
            );
            self.fail_target(t, ErrorKind::Timeout, &m);
        }
        for (t, h) in expired_calls {
            let probe = self.targets[t]
                .calls
                .get(&h)
                .is_some_and(|c| matches!(c.op, Op::Probe));
            if probe {
                // An idle stream that does not answer: a fresh one takes its requests.
                let m = "no answer to a liveness check of the idle stream";
                self.fail_target(t, ErrorKind::ConnectionLost, m);
                continue;
            }
            // Stopped on the target too: a put aborted, an exec or fetch cancelled.
            self.abandon(
                t,
                h,
                Some((ErrorKind::Timeout, "the call's deadline passed")),
            );
        }
        self.expire_waiting(now);
        // The exact earliest deadline left (the lower bound kept between ticks is reset).
        let waiting = self.waiting.values().filter_map(|w| w.deadline());
        self.next_deadline = self
            .targets
            .iter()
            .flat_map(|(_, x)| {
                let start = match x.phase {
                    Phase::Connecting { deadline, .. } => Some(deadline),
                    _ => None,
                };
                start
                    .into_iter()
                    .chain(x.calls.values().filter_map(|c| c.deadline))
                    .chain(x.logs.report_due_at(now))
            })
            .chain(waiting)
            .min();
        self.run_replay(now);
    }

    /// A client went away: its execs, fetches and agent calls are cancelled on their targets
    /// (nobody waits for them); its puts complete, their replies dropped (a put or fetch still
    /// waiting for its local file does not start).
    pub fn client_gone(&mut self, client: ClientId) {
        self.probe_client_gone(client);
        let mut gone = Vec::new();
        for (t, x) in self.targets.iter_mut() {
            for (h, c) in x.calls.iter_mut() {
                if c.client == Some(client) {
                    c.client = None;
                    if matches!(c.op, Op::Exec | Op::Fetch { .. } | Op::Call { .. }) {
                        gone.push((t, *h));
                    }
                }
            }
        }
        for (t, h) in gone {
            self.abandon(t, h, None);
        }
        for w in self.waiting.values_mut() {
            match w {
                calls::Waiting::Start { client: c, .. }
                | calls::Waiting::Finish { client: c, .. }
                    if *c == Some(client) =>
                {
                    *c = None
                }
                _ => {}
            }
        }
    }

    fn reply_err(&mut self, client: ClientId, id: u64, kind: ErrorKind, host: &str, m: &str) {
        self.actions
            .push_back(Action::Reply(client, api::error(id, kind, host, m)));
    }
}
