//! The router: sans-IO state of every target stream and every call in flight.
//!
//! It takes API requests, bytes read from targets and the current time as inputs, and yields
//! [`Action`]s (spawn a target, reply to a client, kill a target) plus per-target outbound
//! bytes. It never touches a socket, a pipe or the clock, so it is tested deterministically and
//! both reactor backends share it unchanged (the quinn-proto pattern). The one I/O it does is
//! on the controller's local files for `put`/`fetch` (reading the source in bounded chunks,
//! writing the destination as data arrives), which keeps a large file out of memory.
//!
//! Bounds: at most [`MAX_INFLIGHT`] calls per target (then `busy`); outbound bytes per target
//! are refilled from file transfers only below [`LOW_WATER`]; a reply is capped at
//! [`crate::api::MAX_MESSAGE`]. A slow target therefore holds at most about
//! `LOW_WATER + CHUNK` bytes of file data, and stalls only its own stream.

use crate::api::{self, Request};
use crate::cache::BlobCache;
use crate::metrics::{Counters, TargetCounters};
use crate::proto::{self, encode_frame, flags, Decoder, FrameHeader, Kind};
use crate::transfer::{Outbound, TransferCounters};
use crate::transport::{classify::classify, classify::FailKind, Spec};
use base64::Engine as _;
use serde_json::json;
use slab::Slab;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fs::File;
use std::io::Write;
use std::os::fd::BorrowedFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Client connection id (assigned by the server).
pub type ClientId = usize;
/// Target stream id.
pub type TargetId = usize;

/// Calls in flight per target before new ones are refused with `busy`.
pub const MAX_INFLIGHT: usize = 1024;
/// Outbound bytes below which file data is refilled.
pub const LOW_WATER: usize = 512 * 1024;
/// Outbound bytes queued to one target above which new calls are refused with `busy`: a
/// target that stops reading cannot grow the daemon's memory (calls that timed out leave
/// their CALL frames queued, so counting calls alone is not enough).
pub const MAX_OUTBOUND: usize = 8 * 1024 * 1024;
/// File data per DATA frame.
pub const CHUNK: usize = 256 * 1024;
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

#[derive(Debug)]
enum Op {
    Ping,
    Exec,
    Call,
    Put {
        file: Option<Arc<File>>,
        offset: u64,
        remaining: u64,
        /// A `cache_put` filling this hop's file cache (no client): the content's sha256.
        fill: Option<String>,
    },
    /// A put whose CALL and data a hop sends from its file cache (`relay_put`); the reply
    /// comes from the target as for any put. The file is kept for a fallback to a plain put.
    RelayedPut,
    /// A `cache_put` to this hop sent by the hop above it (the reply says it is cached).
    HopFill {
        sha: String,
    },
    /// A `relay_put` on a hop, sending a cached file to child `to` as call `handle`.
    Relay {
        to: TargetId,
        key: String,
        handle: u32,
        sha: String,
        fill: bool,
    },
    Fetch {
        file: Option<File>,
        tmp: PathBuf,
        dest: PathBuf,
        received: u64,
    },
    /// Starting the become context `child` (its key guards against a reused slab slot).
    Spawn {
        child: TargetId,
        key: String,
    },
    /// Closing a become context (or dropping a cached file); the reply is not awaited.
    CloseContext,
}

/// A file in a hop's cache, as the daemon knows it.
#[derive(Debug)]
enum HopFile {
    /// Being sent to the hop; these relays go out once it is there.
    Filling { size: u64, waiting: Vec<Relay> },
    /// In the hop's RAM; `seq` orders use (least recently used dropped first).
    Ready { size: u64, seq: u64 },
}

/// A cached file to send from a hop to its child `to`: a target's put, or the child hop's
/// own cache fill.
#[derive(Debug)]
struct Relay {
    to: TargetId,
    key: String,
    handle: u32,
    call: serde_json::Value,
    file: Arc<File>,
    size: u64,
    sha: String,
    fill: bool,
}

#[derive(Debug)]
struct Call {
    client: Option<ClientId>,
    id: u64,
    op: Op,
    reply: Vec<u8>,
    overflow: bool,
    local_error: Option<String>,
    deadline: Option<Instant>,
}

impl Call {
    fn new(client: Option<ClientId>, id: u64, op: Op, deadline: Option<Instant>) -> Call {
        Call {
            client,
            id,
            op,
            reply: Vec::new(),
            overflow: false,
            local_error: None,
            deadline,
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Phase {
    Connecting { deadline: Instant },
    Ready,
    Dead,
}

struct Target {
    spec: Spec,
    label: String,
    key: String,
    phase: Phase,
    decoder: Decoder,
    out: Outbound,
    hello: Option<Vec<u8>>,
    next_handle: u32,
    calls: HashMap<u32, Call>,
    puts: VecDeque<u32>,
    sent_blobs: HashSet<String>,
    counters: TargetCounters,
    /// For a context (become, or a target behind a via hop): the target whose agent started
    /// it, itself a stream or a context. Frames travel on the root stream of that chain.
    parent: Option<TargetId>,
    /// Context id on the root stream: `CTX_AGENT` for a stream's own agent, > 1 for a nested
    /// one (unique per root stream, at any depth).
    ctx: u32,
    /// Contexts this target's agent started, by context id.
    children: HashMap<u32, TargetId>,
    /// On a root stream: every context under it at any depth, by context id (frames coming
    /// up carry it as `src`).
    routes: HashMap<u32, TargetId>,
    /// On a via hop: files its agent keeps for the targets behind it, by sha256.
    hop_files: HashMap<String, HopFile>,
    next_ctx: u32,
    last_used: Instant,
}

impl Target {
    /// The next call handle on this stream (never 0).
    fn take_handle(&mut self) -> u32 {
        let h = self.next_handle;
        self.next_handle = self.next_handle.wrapping_add(1).max(1);
        h
    }
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
    /// Become contexts per target before the least recently used idle one is closed.
    pub max_interpreters: usize,
    /// Send files for targets behind a via hop through the hop's file cache.
    pub hop_cache: bool,
    /// Use order of hop cache entries.
    hop_seq: u64,
    /// sha256 of local files by (device, inode, size, mtime), so a file sent to many targets
    /// is read for hashing once.
    hashes: HashMap<(u64, u64, u64, i64, i64), String>,
}

impl Default for Router {
    fn default() -> Self {
        Router::new()
    }
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
            max_interpreters: DEFAULT_MAX_INTERPRETERS,
            hop_cache: true,
            hop_seq: 0,
            hashes: HashMap::new(),
        }
    }

    /// Next action for the I/O layer.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
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
        let mut moved = std::mem::take(&mut self.targets[t].out);
        self.targets[p].out.append(&mut moved);
        self.targets[t].out = moved;
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

    /// Whether a target has bytes waiting to be written.
    pub fn wants_write(&self, t: TargetId) -> bool {
        self.targets.get(t).is_some_and(|x| !x.out.is_empty())
    }

    /// Writes a target's outbound queue into its (nonblocking) transport pipe: protocol bytes
    /// by `write`, file payload by `splice` (see [`crate::transfer`]); then refills file data.
    /// A source file that shrank mid-send fails the target (its framing is broken).
    pub fn flush_into(&mut self, t: TargetId, fd: BorrowedFd<'_>) -> std::io::Result<usize> {
        let mut total = 0;
        loop {
            let Some(x) = self.targets.get_mut(t) else {
                return Ok(total);
            };
            if x.out.is_empty() {
                return Ok(total);
            }
            match x.out.write_to(fd, &mut self.transfer) {
                Ok(0) => return Ok(total),
                Ok(n) => {
                    total += n;
                    x.counters.bytes_out += n as u64;
                    self.counters.bytes_out += n as u64;
                    let children: Vec<TargetId> = x.routes.values().copied().collect();
                    self.refill(t);
                    for c in children {
                        self.refill(c);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    let m = format!("put aborted: {e}");
                    self.fail_target(t, "local_io", &m);
                    return Ok(total);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(total),
                Err(e) => return Err(e),
            }
        }
    }

    /// Number of live target streams.
    pub fn streams(&self) -> usize {
        self.by_key.len()
    }

    /// Handles one API request from `client`.
    pub fn request(&mut self, client: ClientId, req: Request, now: Instant) {
        let id = req.id;
        match req.op.as_str() {
            "stats" => {
                // Keyed by label; become contexts sharing one (other flags or password) get
                // their context id appended.
                let mut targets: BTreeMap<String, TargetCounters> = BTreeMap::new();
                for &t in self.by_key.values() {
                    let x = &self.targets[t];
                    let mut label = x.label.clone();
                    if targets.contains_key(&label) {
                        label = format!("{label} [ctx {}]", x.ctx);
                    }
                    targets.insert(label, x.counters);
                }
                let v = json!({"streams": self.streams(), "io": self.backend, "counters": self.counters, "transfer": self.transfer,
                    "blobs": {"count": self.cache.len(), "bytes": self.cache.bytes()},
                    "targets": targets});
                self.actions
                    .push_back(Action::Reply(client, api::ok_value(id, &v)));
                return;
            }
            "blob_put" => {
                let (Some(hash), Some(data)) = (&req.hash, &req.data_b64) else {
                    let m = "blob_put needs \"hash\" and \"data_b64\"";
                    return self.reply_err(client, id, "bad_request", "", m);
                };
                let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(data) else {
                    return self.reply_err(client, id, "bad_request", "", "data_b64 is not base64");
                };
                let msg = match self.cache.put(hash, bytes) {
                    Ok(()) => api::ok_raw(id, b"{}"),
                    Err(e) => api::error(id, "bad_request", "", &e.to_string()),
                };
                self.actions.push_back(Action::Reply(client, msg));
                return;
            }
            "shutdown" => {
                self.actions
                    .push_back(Action::Reply(client, api::ok_raw(id, b"{}")));
                self.actions.push_back(Action::Shutdown);
                return;
            }
            "ping" | "exec" | "put" | "fetch" | "close" | "call" => {}
            other => {
                let m = format!("unknown op {other:?}");
                return self.reply_err(client, id, "bad_request", "", &m);
            }
        }
        let Some(spec) = req.target.clone() else {
            return self.reply_err(client, id, "bad_request", "", "this op needs a \"target\"");
        };
        if let Err(e) = crate::transport::command(&spec, None).or_else(|e| match e {
            // A password is checked again when the process is spawned (askpass available).
            crate::transport::CommandError::BadSpec { ref reason, .. }
                if reason.contains("askpass") =>
            {
                Ok(Default::default())
            }
            e => Err(e),
        }) {
            return self.reply_err(client, id, "bad_request", &spec.label(), &e.to_string());
        }
        if let Err(m) = validate_chain(&spec) {
            return self.reply_err(client, id, "bad_request", &spec.label(), &m);
        }
        if req.op == "close" {
            if let Some(&t) = self.by_key.get(&spec.key()) {
                // A hop that carries other targets stays (their streams depend on it): only
                // its own become contexts are closed (Ansible's reset_connection on a
                // bastion must not cut the hosts behind it).
                let x = &self.targets[t];
                let (carried, own): (Vec<TargetId>, Vec<TargetId>) = x
                    .children
                    .values()
                    .copied()
                    .filter(|&c| self.targets.get(c).is_some_and(|y| y.phase != Phase::Dead))
                    .partition(|&c| self.targets[c].spec.escalate.is_none());
                if carried.is_empty() {
                    self.fail_target(t, "connection_lost", "stream closed by request");
                } else {
                    for c in own {
                        self.close_target(c, "connection_lost", "stream closed by request", false);
                    }
                }
            }
            self.actions
                .push_back(Action::Reply(client, api::ok_raw(id, b"{}")));
            return;
        }
        let t = self.target_for(spec, now);
        self.start_call(t, client, req, now);
    }

    fn target_for(&mut self, spec: Spec, now: Instant) -> TargetId {
        let key = spec.key();
        if let Some(&t) = self.by_key.get(&key) {
            return t;
        }
        let parent = if spec.escalate.is_some() {
            Some(self.target_for(spec.parent(), now))
        } else {
            let hop = spec.via.as_deref().cloned();
            hop.map(|h| self.target_for(h, now))
        };
        let mut out = Outbound::new(self.splice);
        if parent.is_none() && spec.transport != crate::transport::TransportKind::Unix {
            out.with_bytes(|b| b.extend_from_slice(crate::transport::bootstrap::agent_blob()));
        }
        // A context starts once its parent runs: its own time counts from the parent's
        // deadline (every hop of a chain gets its full connect timeout).
        let mut deadline = now + Duration::from_secs(spec.connect_timeout_secs());
        if let Some(p) = parent {
            let from = match self.targets[p].phase {
                Phase::Connecting { deadline } => deadline.max(now),
                _ => now,
            };
            let own = Duration::from_secs(spec.connect_timeout_secs());
            // (and at least twice its timeout from now, as become contexts always had)
            deadline = (from + own).max(now + own * 2) + SPAWN_GRACE;
        }
        let ctx = match parent {
            Some(p) => {
                if spec.escalate.is_some() {
                    self.evict_idle_context(p);
                }
                // Context ids are unique on the root stream, whatever the depth.
                let root = self.root_of(p);
                let r = &mut self.targets[root];
                loop {
                    r.next_ctx = r.next_ctx.wrapping_add(1).max(proto::CTX_AGENT + 1);
                    if !r.routes.contains_key(&r.next_ctx) {
                        break r.next_ctx;
                    }
                }
            }
            None => proto::CTX_AGENT,
        };
        let t = self.targets.insert(Target {
            label: spec.label(),
            spec,
            key: key.clone(),
            phase: Phase::Connecting { deadline },
            decoder: Decoder::default(),
            out,
            hello: None,
            next_handle: 1,
            calls: HashMap::new(),
            puts: VecDeque::new(),
            sent_blobs: HashSet::new(),
            counters: TargetCounters::default(),
            parent,
            ctx,
            children: HashMap::new(),
            routes: HashMap::new(),
            hop_files: HashMap::new(),
            next_ctx: proto::CTX_AGENT,
            last_used: now,
        });
        self.by_key.insert(key.clone(), t);
        self.counters.connects += 1;
        tracing::debug!(target_id = t, host = %self.targets[t].label, "opening stream");
        match parent {
            None => self.actions.push_back(Action::Spawn(t)),
            Some(p) => {
                self.targets[p].children.insert(ctx, t);
                let root = self.root_of(p);
                self.targets[root].routes.insert(ctx, t);
                let spec = &self.targets[t].spec;
                let secs = spec.connect_timeout_secs();
                let payload = match &spec.escalate {
                    Some(b) => json!({"op": "spawn_context", "ctx": ctx, "cmd": b.cmd,
                        "success": b.success, "password": b.password, "prompt": b.prompt,
                        "timeout": secs}),
                    None => {
                        // A via hop: its agent runs the transport command for this target.
                        let marker = format!("SPINDLE-VIA-{ctx}");
                        let cmd = crate::transport::hop_command(spec, &marker).unwrap_or_default();
                        let python = spec.python.as_deref().filter(|p| {
                            !p.starts_with('-')
                                && p.chars()
                                    .all(|c| c.is_ascii_alphanumeric() || "_./+-".contains(c))
                        });
                        let prompt = spec.password.as_ref().map(|_| r"(?i)password:\s*$");
                        json!({"op": "spawn_context", "ctx": ctx, "cmd": cmd,
                            "success": marker, "password": spec.password, "prompt": prompt,
                            "timeout": secs, "python": python})
                    }
                };
                self.internal_call(p, payload, Op::Spawn { child: t, key });
            }
        }
        t
    }

    /// Queues a CALL of the daemon's own (no client waits for its reply).
    fn internal_call(&mut self, t: TargetId, payload: serde_json::Value, op: Op) {
        let x = &mut self.targets[t];
        let handle = x.take_handle();
        let body = serde_json::to_vec(&payload).unwrap_or_default();
        let h = header(Kind::Call, 0, handle, x.ctx);
        x.out.with_bytes(|b| encode_frame(b, &h, &body));
        x.counters.frames_out += 1;
        self.counters.frames_out += 1;
        let call = Call::new(None, 0, op, None);
        x.calls.insert(handle, call);
        self.touched.push(t);
    }

    /// Keeps at most `max_interpreters` become contexts on stream `p`: closes the least
    /// recently used one that has no call in flight (a busy one is never closed).
    /// Targets behind a via hop are not interpreters of the hop: they are neither counted
    /// nor closed, and a context that has contexts of its own is never closed.
    fn evict_idle_context(&mut self, p: TargetId) {
        let children: Vec<TargetId> = self.targets[p]
            .children
            .values()
            .copied()
            .filter(|&c| {
                self.targets
                    .get(c)
                    .is_some_and(|x| x.spec.escalate.is_some())
            })
            .collect();
        if children.len() < self.max_interpreters.max(1) {
            return;
        }
        let victim = children
            .into_iter()
            .filter_map(|c| self.targets.get(c).map(|x| (c, x)))
            .filter(|(_, x)| x.calls.is_empty() && x.phase == Phase::Ready)
            .filter(|(_, x)| x.children.is_empty())
            .min_by_key(|(_, x)| x.last_used)
            .map(|(c, _)| c);
        if let Some(c) = victim {
            tracing::debug!(host = %self.targets[c].label, "closing the least recently used become context");
            self.counters.recycled += 1;
            self.close_target(
                c,
                "recycled",
                "closed to stay within the interpreter limit",
                false,
            );
        }
    }

    fn start_call(&mut self, t: TargetId, client: ClientId, req: Request, now: Instant) {
        let label = self.targets[t].label.clone();
        let id = req.id;
        if self.targets[t].calls.len() >= MAX_INFLIGHT {
            let m = format!("{MAX_INFLIGHT} calls already in flight to this target");
            return self.reply_err(client, id, "busy", &label, &m);
        }
        self.targets[t].last_used = now;
        if self.queued(t) > MAX_OUTBOUND {
            let m = format!(
                "the target is not reading: over {} MiB already queued to it",
                MAX_OUTBOUND >> 20
            );
            return self.reply_err(client, id, "busy", &label, &m);
        }
        let mut deadline = req
            .call_timeout
            .map(|s| now + Duration::from_secs_f64(s.max(0.0)));
        let (payload, op) = match req.op.as_str() {
            "ping" => (json!({"op": "ping"}), Op::Ping),
            "exec" => {
                if req.argv.is_none() == req.shell.is_none() {
                    let m = "exec needs exactly one of \"argv\" or \"shell\"";
                    return self.reply_err(client, id, "bad_request", &label, m);
                }
                if let Some(s) = &req.stdin_b64 {
                    if base64::engine::general_purpose::STANDARD.decode(s).is_err() {
                        let m = "stdin_b64 is not valid base64";
                        return self.reply_err(client, id, "bad_request", &label, m);
                    }
                }
                if let Some(tmo) = req.timeout {
                    let d = now + Duration::from_secs_f64(tmo.max(0.0)) + EXEC_GRACE;
                    deadline = Some(deadline.map_or(d, |x| x.min(d)));
                }
                let p = json!({"op": "exec", "argv": req.argv, "shell": req.shell,
                    "stdin_b64": req.stdin_b64, "env": req.env, "cwd": req.cwd,
                    "timeout": req.timeout});
                (p, Op::Exec)
            }
            "put" => {
                let (Some(src), Some(dest)) = (&req.src, &req.dest) else {
                    let m = "put needs \"src\" and \"dest\"";
                    return self.reply_err(client, id, "bad_request", &label, m);
                };
                let opened = File::open(src).and_then(|f| {
                    let md = f.metadata()?;
                    if !md.is_file() {
                        return Err(std::io::Error::other("not a regular file"));
                    }
                    Ok((f, md.len()))
                });
                let (file, size) = match opened {
                    Ok(x) => x,
                    Err(e) => {
                        let m = format!("cannot read {src}: {e}");
                        return self.reply_err(client, id, "local_io", &label, &m);
                    }
                };
                let p = json!({"op": "put_file", "path": dest, "size": size, "mode": req.mode,
                    "owner": req.owner, "group": req.group, "apply_umask": req.apply_umask});
                let file = Arc::new(file);
                if let Some(hop) = self.cache_hop(t, size) {
                    if let Some(sha) = self.file_sha(&file) {
                        return self.relayed_put(t, hop, client, id, deadline, p, file, size, sha);
                    }
                }
                (
                    p,
                    Op::Put {
                        file: Some(file),
                        offset: 0,
                        remaining: size,
                        fill: None,
                    },
                )
            }
            "fetch" => {
                let (Some(src), Some(dest)) = (&req.src, &req.dest) else {
                    let m = "fetch needs \"src\" and \"dest\"";
                    return self.reply_err(client, id, "bad_request", &label, m);
                };
                let dest = PathBuf::from(dest);
                let tmp = tmp_path_for(&dest, t, self.targets[t].next_handle);
                let file = match File::create(&tmp) {
                    Ok(f) => f,
                    Err(e) => {
                        let m = format!("cannot write {}: {e}", tmp.display());
                        return self.reply_err(client, id, "local_io", &label, &m);
                    }
                };
                let p = json!({"op": "fetch_file", "path": src});
                let op = Op::Fetch {
                    file: Some(file),
                    tmp,
                    dest,
                    received: 0,
                };
                (p, op)
            }
            "call" => {
                let Some(serde_json::Value::Object(mut p)) = req.payload.clone() else {
                    let m = "call needs a \"payload\" object";
                    return self.reply_err(client, id, "bad_request", &label, m);
                };
                if !p.get("op").is_some_and(|o| o.is_string()) || p.contains_key("blobs") {
                    let m = "call payload needs a string \"op\" and no \"blobs\" key";
                    return self.reply_err(client, id, "bad_request", &label, m);
                }
                let mut push = serde_json::Map::new();
                let mut missing = Vec::new();
                for h in req.blobs.iter().flatten() {
                    if self.targets[t].sent_blobs.contains(h) || push.contains_key(h) {
                        continue;
                    }
                    match self.cache.get(h) {
                        Some(data) => {
                            let b = base64::engine::general_purpose::STANDARD.encode(&data[..]);
                            push.insert(h.clone(), b.into());
                        }
                        None => missing.push(h.clone()),
                    }
                }
                if !missing.is_empty() {
                    let m = format!(
                        "{} blob(s) not in the daemon cache; blob_put them first",
                        missing.len()
                    );
                    let msg = api::error_with(
                        id,
                        "missing_blobs",
                        &label,
                        &m,
                        json!({"missing": missing}),
                    );
                    self.actions.push_back(Action::Reply(client, msg));
                    return;
                }
                let x = &mut self.targets[t];
                x.counters.blobs_pushed += push.len() as u64;
                for h in push.keys() {
                    x.sent_blobs.insert(h.clone());
                }
                if !push.is_empty() {
                    p.insert("blobs".into(), serde_json::Value::Object(push));
                }
                (serde_json::Value::Object(p), Op::Call)
            }
            _ => unreachable!("ops filtered in request()"),
        };
        let x = &mut self.targets[t];
        let handle = x.take_handle();
        let body = serde_json::to_vec(&payload).unwrap_or_default();
        // A CALL larger than one frame continues in MORE-flagged frames.
        let mut parts = body.chunks(proto::MAX_PAYLOAD).peekable();
        let mut frames = 0;
        while let Some(part) = parts.next() {
            let fl = if parts.peek().is_some() {
                flags::MORE
            } else {
                0
            };
            let h = header(Kind::Call, fl, handle, x.ctx);
            x.out.with_bytes(|b| encode_frame(b, &h, part));
            frames += 1;
        }
        self.counters.frames_out += frames;
        self.counters.calls += 1;
        x.counters.frames_out += frames;
        x.counters.calls += 1;
        if matches!(op, Op::Put { .. }) {
            x.puts.push_back(handle);
        }
        let call = Call::new(Some(client), id, op, deadline);
        x.calls.insert(handle, call);
        tracing::debug!(host = %x.label, handle, op = %req.op, "call");
        self.touched.push(t);
        self.refill(t);
    }

    /// Queues file data of active puts (as file ranges, not bytes) while the outbound queue is
    /// below LOW_WATER.
    fn refill(&mut self, t: TargetId) {
        let base = self.queued(t) - self.targets.get(t).map_or(0, |x| x.out.len());
        self.refill_below(t, base);
        self.pump(t);
    }

    fn refill_below(&mut self, t: TargetId, base: usize) {
        let Some(x) = self.targets.get_mut(t) else {
            return;
        };
        while base + x.out.len() < LOW_WATER {
            let Some(&handle) = x.puts.front() else {
                return;
            };
            let Some(call) = x.calls.get_mut(&handle) else {
                x.puts.pop_front();
                continue;
            };
            let Op::Put {
                file: Some(f),
                offset,
                remaining,
                ..
            } = &mut call.op
            else {
                x.puts.pop_front();
                continue;
            };
            let n = (*remaining).min(CHUNK as u64) as usize;
            *remaining -= n as u64;
            let done = *remaining == 0;
            let fl = if done { flags::EOF } else { 0 };
            let h = header(Kind::Data, fl, handle, x.ctx);
            x.out.with_bytes(|b| {
                let at = b.len();
                encode_frame(b, &h, &[]);
                b[at + 4..at + 8].copy_from_slice(&(n as u32).to_be_bytes());
            });
            x.out.push_file(f.clone(), *offset, n);
            *offset += n as u64;
            self.counters.frames_out += 1;
            x.counters.frames_out += 1;
            if done {
                if let Op::Put { file, .. } = &mut call.op {
                    *file = None;
                }
                x.puts.pop_front();
            }
        }
    }

    /// Handles bytes read from a target's stdout. Frames from a become context (`src` > 1)
    /// are handled as that context's after the stream's own.
    pub fn target_bytes(&mut self, t: TargetId, bytes: &[u8], _now: Instant) {
        let Some(x) = self.targets.get_mut(t) else {
            return;
        };
        if x.phase == Phase::Dead {
            return;
        }
        self.counters.bytes_in += bytes.len() as u64;
        x.counters.bytes_in += bytes.len() as u64;
        // The decoder is moved out while frames borrow from it and the target is updated.
        let mut decoder = std::mem::take(&mut x.decoder);
        decoder.push(bytes);
        let mut done: Vec<(u32, u8, Vec<u8>)> = Vec::new();
        let mut nested: Vec<(TargetId, FrameHeader, Vec<u8>)> = Vec::new();
        let mut fatal: Option<(String, String)> = None;
        loop {
            let (h, payload) = match decoder.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    let m = format!("malformed frame from agent: {e}");
                    fatal = Some(("protocol".into(), m));
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
            if let Err(f) = on_frame(x, &h, payload, &mut done) {
                fatal = Some(f);
                break;
            }
        }
        x.decoder = decoder;
        for (handle, fl, body) in done {
            self.complete(t, handle, fl, body);
        }
        if let Some((kind, m)) = fatal {
            self.fail_target(t, &kind, &m);
        }
        for (c, h, payload) in nested {
            self.context_frame(c, &h, &payload);
        }
    }

    /// One frame relayed from become context `c`.
    fn context_frame(&mut self, c: TargetId, h: &FrameHeader, payload: &[u8]) {
        let Some(x) = self.targets.get_mut(c) else {
            return;
        };
        if x.phase == Phase::Dead {
            return;
        }
        x.counters.frames_in += 1;
        x.counters.bytes_in += (proto::HEADER_LEN + payload.len()) as u64;
        let was_ready = x.phase == Phase::Ready;
        let mut done = Vec::new();
        let res = on_frame(x, h, payload, &mut done);
        let now_ready = x.phase == Phase::Ready;
        for (handle, fl, body) in done {
            self.complete(c, handle, fl, body);
        }
        match res {
            Err((kind, m)) => self.fail_target(c, &kind, &m),
            // Calls queued while it started were held back: it exists on the target now.
            Ok(()) if now_ready && !was_ready => self.pump(c),
            Ok(()) => {}
        }
    }

    fn complete(&mut self, t: TargetId, handle: u32, fl: u8, body: Vec<u8>) {
        let x = &mut self.targets[t];
        let Some(c) = x.calls.remove(&handle) else {
            return;
        };
        match &c.op {
            Op::Spawn { child, key } => {
                let alive = self
                    .targets
                    .get(*child)
                    .is_some_and(|x| &x.key == key && x.phase != Phase::Dead);
                if fl & flags::ERROR != 0 && alive {
                    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                    let kind = v["error"].as_str().unwrap_or("unknown");
                    let text = v["message"].as_str().unwrap_or("");
                    let child = *child;
                    let spec = &self.targets[child].spec;
                    if spec.escalate.is_none() && spec.via.is_some() {
                        // The hop ran ssh (or another transport): classify its output.
                        let hop = spec.via.as_ref().map(|v| v.label()).unwrap_or_default();
                        let class = match (kind, classify(text, false)) {
                            ("timeout", _) => "timeout",
                            (_, FailKind::ConnectionLost) => "unreachable",
                            (_, k) => k.as_str(),
                        };
                        let last = text.lines().rev().find(|l| !l.trim().is_empty());
                        let m = format!("via {hop}: {kind}: {}", last.unwrap_or(text).trim());
                        self.fail_target(child, class, &m);
                    } else {
                        self.fail_target(child, "become_failed", &format!("{kind}: {text}"));
                    }
                }
                return;
            }
            Op::CloseContext => return,
            Op::HopFill { sha }
            | Op::Put {
                fill: Some(sha), ..
            } => {
                let sha = sha.clone();
                return self.hop_filled(t, &sha, fl & flags::ERROR == 0);
            }
            Op::Relay {
                to,
                key,
                handle,
                sha,
                fill,
            } => {
                if fl & flags::ERROR != 0 {
                    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                    let m = format!("relay from the hop failed: {}", v["message"]);
                    tracing::debug!(hop = %x.label, "{m}");
                    if *fill {
                        self.hop_filled(*to, sha, false);
                    } else if self.targets.get(*to).is_some_and(|y| &y.key == key) {
                        let y = &mut self.targets[*to];
                        if let Some(call) = y.calls.remove(handle) {
                            let label = y.label.clone();
                            if let Some(client) = call.client {
                                let msg = api::error(call.id, "remote", &label, &m);
                                self.actions.push_back(Action::Reply(client, msg));
                            }
                        }
                    }
                }
                return;
            }
            _ => {}
        }
        let label = x.label.clone();
        let hello = x.hello.clone();
        let msg = if let Some(m) = c.local_error {
            if let Op::Fetch { tmp, .. } = &c.op {
                let _ = std::fs::remove_file(tmp);
            }
            api::error(c.id, "local_io", &label, &m)
        } else if c.overflow {
            api::error(c.id, "protocol", &label, "reply larger than 64 MiB")
        } else if fl & flags::ERROR != 0 {
            if let Op::Fetch { tmp, .. } = &c.op {
                let _ = std::fs::remove_file(tmp);
            }
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            let kind = v["error"].as_str().unwrap_or("unknown");
            let text = v["message"].as_str().unwrap_or("");
            api::error(c.id, "remote", &label, &format!("{kind}: {text}"))
        } else if serde_json::from_slice::<serde::de::IgnoredAny>(&body).is_err() {
            api::error(c.id, "protocol", &label, "agent reply is not JSON")
        } else {
            match c.op {
                Op::Ping => {
                    let mut v: serde_json::Value =
                        serde_json::from_slice(&body).unwrap_or_default();
                    if let (Some(o), Some(h)) = (v.as_object_mut(), hello) {
                        let hv = serde_json::from_slice(&h).unwrap_or_default();
                        o.insert("hello".into(), hv);
                    }
                    api::ok_value(c.id, &v)
                }
                Op::Exec | Op::Call | Op::Put { .. } | Op::RelayedPut => api::ok_raw(c.id, &body),
                Op::Spawn { .. } | Op::CloseContext | Op::HopFill { .. } | Op::Relay { .. } => {
                    return
                }
                Op::Fetch {
                    file,
                    tmp,
                    dest,
                    received,
                } => {
                    let res = file
                        .map(|f| f.sync_all())
                        .unwrap_or(Ok(()))
                        .and_then(|_| std::fs::rename(&tmp, &dest));
                    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                    if let Err(e) = res {
                        let _ = std::fs::remove_file(&tmp);
                        let m = format!("cannot write {}: {e}", dest.display());
                        api::error(c.id, "local_io", &label, &m)
                    } else if v["size"].as_u64() != Some(received) {
                        let _ = std::fs::remove_file(&dest);
                        let m = format!("fetched {received} bytes, agent reported {}", v["size"]);
                        api::error(c.id, "protocol", &label, &m)
                    } else {
                        api::ok_raw(c.id, &body)
                    }
                }
            }
        };
        if let Some(client) = c.client {
            self.actions.push_back(Action::Reply(client, msg));
        }
    }

    /// The target's process ended (stdout and stderr closed); `stderr` is its last output.
    pub fn target_closed(&mut self, t: TargetId, stderr: &str) {
        let Some(x) = self.targets.get(t) else { return };
        if x.phase == Phase::Dead {
            return;
        }
        let connected = x.hello.is_some();
        let kind = classify(stderr, connected);
        let last = stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
            .trim();
        let m = match kind {
            FailKind::NoPython => "no Python interpreter found on the target".to_string(),
            FailKind::ConnectionLost if connected => {
                format!("connection lost (agent or ssh ended){}", suffix(last))
            }
            FailKind::ConnectionLost => format!("agent failed to start{}", suffix(last)),
            _ => last.to_string(),
        };
        self.fail_target(t, kind.as_str(), &m);
    }

    /// Fails every call of a target and schedules its process to be killed.
    fn fail_target(&mut self, t: TargetId, kind: &str, message: &str) {
        self.close_target(t, kind, message, true);
    }

    /// Ends a stream or become context: its calls (and its contexts' calls) fail with `kind`;
    /// a context is closed on its stream's agent. `warn` logs it as a failure.
    fn close_target(&mut self, t: TargetId, kind: &str, message: &str, warn: bool) {
        let Some(x) = self.targets.get_mut(t) else {
            return;
        };
        if x.phase == Phase::Dead {
            return;
        }
        if warn {
            tracing::warn!(host = %x.label, kind, message, "target failed");
            self.counters.failures += 1;
        }
        x.phase = Phase::Dead;
        if self.by_key.get(&x.key) == Some(&t) {
            self.by_key.remove(&x.key);
        }
        let children: Vec<TargetId> = x.children.drain().map(|(_, c)| c).collect();
        let (parent, ctx) = (x.parent, x.ctx);
        let label = x.label.clone();
        let calls: Vec<Call> = x.calls.drain().map(|(_, c)| c).collect();
        x.puts.clear();
        x.out.clear();
        for c in calls {
            if let Op::Fetch { tmp, .. } = &c.op {
                let _ = std::fs::remove_file(tmp);
            }
            if let Some(client) = c.client {
                let msg = api::error(c.id, kind, &label, message);
                self.actions.push_back(Action::Reply(client, msg));
            }
        }
        // A context has no process of its own: the I/O layer only releases it.
        self.actions.push_back(Action::Kill(t));
        for c in children {
            self.close_target(c, kind, message, false);
        }
        if let Some(p) = parent {
            let root = self.root_of(p);
            if let Some(r) = self.targets.get_mut(root) {
                if r.routes.get(&ctx) == Some(&t) {
                    r.routes.remove(&ctx);
                }
            }
            if self.targets.get(p).is_some_and(|r| r.phase != Phase::Dead) {
                self.targets[p].children.remove(&ctx);
                let payload = json!({"op": "close_context", "ctx": ctx});
                self.internal_call(p, payload, Op::CloseContext);
            }
        }
    }

    /// Forgets a dead target after the I/O layer has released its process.
    pub fn release(&mut self, t: TargetId) {
        if self.targets.get(t).is_some_and(|x| x.phase == Phase::Dead) {
            self.targets.remove(t);
        }
    }

    /// Expires connect and call deadlines.
    pub fn tick(&mut self, now: Instant) {
        let mut expired_targets = Vec::new();
        let mut expired_calls = Vec::new();
        for (t, x) in self.targets.iter() {
            if let Phase::Connecting { deadline } = x.phase {
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
        for t in expired_targets {
            let secs = self.targets[t].spec.connect_timeout_secs();
            let m = format!("no agent answer within the {secs} s connect timeout");
            self.fail_target(t, "timeout", &m);
        }
        for (t, h) in expired_calls {
            let x = &mut self.targets[t];
            let Some(c) = x.calls.remove(&h) else {
                continue;
            };
            if matches!(c.op, Op::Put { .. }) {
                x.puts.retain(|p| *p != h);
                let hd = header(Kind::Data, flags::ABORT, h, x.ctx);
                x.out.with_bytes(|b| encode_frame(b, &hd, &[]));
                self.touched.push(t);
            }
            if let Op::Fetch { tmp, .. } = &c.op {
                let _ = std::fs::remove_file(tmp);
            }
            let label = x.label.clone();
            if let Some(client) = c.client {
                let msg = api::error(c.id, "timeout", &label, "the call's deadline passed");
                self.actions.push_back(Action::Reply(client, msg));
            }
        }
    }

    /// A client went away: its pending calls complete, but their replies are dropped.
    pub fn client_gone(&mut self, client: ClientId) {
        for (_, x) in self.targets.iter_mut() {
            for c in x.calls.values_mut() {
                if c.client == Some(client) {
                    c.client = None;
                }
            }
        }
    }

    fn reply_err(&mut self, client: ClientId, id: u64, kind: &str, host: &str, m: &str) {
        self.actions
            .push_back(Action::Reply(client, api::error(id, kind, host, m)));
    }
}

impl Router {
    /// The via hop whose file cache a put of `size` bytes to `t` goes through, if any.
    fn cache_hop(&self, t: TargetId, size: u64) -> Option<TargetId> {
        let x = self.targets.get(t)?;
        if !self.hop_cache
            || x.spec.via.is_none()
            || x.spec.escalate.is_some()
            || !(HOP_CACHE_MIN..=HOP_CACHE_BYTES / 4).contains(&size)
        {
            return None;
        }
        let p = x.parent?;
        self.targets.get(p).filter(|h| h.phase != Phase::Dead)?;
        Some(p)
    }

    /// The sha256 of an open local file (cached by identity and modification time).
    fn file_sha(&mut self, file: &File) -> Option<String> {
        use sha2::Digest as _;
        use std::os::unix::fs::MetadataExt as _;
        let md = file.metadata().ok()?;
        let id = (md.dev(), md.ino(), md.size(), md.mtime(), md.mtime_nsec());
        if let Some(h) = self.hashes.get(&id) {
            return Some(h.clone());
        }
        let mut buf = vec![0u8; 256 * 1024];
        let mut d = sha2::Sha256::new();
        let mut pos = 0u64;
        loop {
            let n = std::os::unix::fs::FileExt::read_at(file, &mut buf, pos).ok()?;
            if n == 0 {
                break;
            }
            d.update(&buf[..n]);
            pos += n as u64;
        }
        if pos != md.size() {
            return None;
        }
        let h: String = d.finalize().iter().map(|b| format!("{b:02x}")).collect();
        if self.hashes.len() >= 4096 {
            self.hashes.clear();
        }
        self.hashes.insert(id, h.clone());
        Some(h)
    }

    /// Starts a put to `t` that its hop sends from its file cache.
    #[allow(clippy::too_many_arguments)]
    fn relayed_put(
        &mut self,
        t: TargetId,
        hop: TargetId,
        client: ClientId,
        id: u64,
        deadline: Option<Instant>,
        payload: serde_json::Value,
        file: Arc<File>,
        size: u64,
        sha: String,
    ) {
        let x = &mut self.targets[t];
        let handle = x.take_handle();
        x.counters.calls += 1;
        self.counters.calls += 1;
        let call = Call::new(Some(client), id, Op::RelayedPut, deadline);
        x.calls.insert(handle, call);
        tracing::debug!(host = %x.label, handle, "put through the hop's file cache");
        let r = Relay {
            to: t,
            key: x.key.clone(),
            handle,
            call: payload,
            file,
            size,
            sha,
            fill: false,
        };
        self.relay_via(hop, r);
    }

    /// Sends `r` from `hop`'s file cache, filling the cache first (from the hop above it, or
    /// from the controller) if needed.
    fn relay_via(&mut self, hop: TargetId, r: Relay) {
        self.hop_seq += 1;
        let seq = self.hop_seq;
        let Some(h) = self.targets.get_mut(hop).filter(|h| h.phase != Phase::Dead) else {
            return self.relay_fallback(r);
        };
        match h.hop_files.get_mut(&r.sha) {
            Some(HopFile::Ready { seq: s, .. }) => {
                *s = seq;
                return self.send_relay(hop, r);
            }
            Some(HopFile::Filling { waiting, .. }) => return waiting.push(r),
            None => {}
        }
        if !self.make_room(hop, r.size) {
            return self.relay_fallback(r);
        }
        let (sha, size, file) = (r.sha.clone(), r.size, r.file.clone());
        let h = &mut self.targets[hop];
        h.hop_files.insert(
            sha.clone(),
            HopFile::Filling {
                size,
                waiting: vec![r],
            },
        );
        let call = json!({"op": "cache_put", "sha256": sha, "size": size});
        let handle = h.take_handle();
        let up = self.cache_hop(hop, size);
        let h = &mut self.targets[hop];
        match up {
            // The hop above sends it from its own cache: each link carries it once.
            Some(up) => {
                h.calls.insert(
                    handle,
                    Call::new(None, 0, Op::HopFill { sha: sha.clone() }, None),
                );
                let key = h.key.clone();
                let fill = Relay {
                    to: hop,
                    key,
                    handle,
                    call,
                    file,
                    size,
                    sha,
                    fill: true,
                };
                self.relay_via(up, fill);
            }
            // The first hop: from the controller, streamed like a put.
            None => {
                let op = Op::Put {
                    file: Some(file),
                    offset: 0,
                    remaining: size,
                    fill: Some(sha),
                };
                h.calls.insert(handle, Call::new(None, 0, op, None));
                let body = serde_json::to_vec(&call).unwrap_or_default();
                let hd = header(Kind::Call, 0, handle, h.ctx);
                h.out.with_bytes(|b| encode_frame(b, &hd, &body));
                h.counters.frames_out += 1;
                self.counters.frames_out += 1;
                h.puts.push_back(handle);
                self.touched.push(hop);
                self.refill(hop);
            }
        }
    }

    /// Drops least recently used files from `hop`'s cache until `size` more bytes fit.
    fn make_room(&mut self, hop: TargetId, size: u64) -> bool {
        loop {
            let h = &self.targets[hop];
            let used: u64 = h
                .hop_files
                .values()
                .map(|f| match f {
                    HopFile::Filling { size, .. } | HopFile::Ready { size, .. } => *size,
                })
                .sum();
            if used + size <= HOP_CACHE_BYTES {
                return true;
            }
            let victim = h
                .hop_files
                .iter()
                .filter_map(|(k, f)| match f {
                    HopFile::Ready { seq, .. } => Some((*seq, k.clone())),
                    HopFile::Filling { .. } => None,
                })
                .min();
            let Some((_, sha)) = victim else {
                return false;
            };
            self.targets[hop].hop_files.remove(&sha);
            let payload = json!({"op": "cache_drop", "sha256": sha});
            self.internal_call(hop, payload, Op::CloseContext);
        }
    }

    fn send_relay(&mut self, hop: TargetId, r: Relay) {
        let Some(ctx) = self
            .targets
            .get(r.to)
            .filter(|y| y.key == r.key && y.phase != Phase::Dead)
            .map(|y| y.ctx)
        else {
            return;
        };
        let payload = json!({"op": "relay_put", "ctx": ctx, "sha256": r.sha,
            "handle": r.handle, "call": r.call});
        let op = Op::Relay {
            to: r.to,
            key: r.key,
            handle: r.handle,
            sha: r.sha,
            fill: r.fill,
        };
        self.internal_call(hop, payload, op);
    }

    /// A hop's cache fill finished: waiting relays go out, or (it failed) fall back.
    fn hop_filled(&mut self, hop: TargetId, sha: &str, ok: bool) {
        let Some(h) = self.targets.get_mut(hop) else {
            return;
        };
        let Some(HopFile::Filling { size, waiting }) = h.hop_files.remove(sha) else {
            return;
        };
        if ok {
            self.hop_seq += 1;
            let seq = self.hop_seq;
            h.hop_files
                .insert(sha.to_string(), HopFile::Ready { size, seq });
            for r in waiting {
                self.send_relay(hop, r);
            }
        } else {
            tracing::debug!(hop = %h.label, "file cache fill failed: plain puts instead");
            for r in waiting {
                self.relay_fallback(r);
            }
        }
    }

    /// A relay that cannot go through the hop's cache: a target's put is sent as a plain
    /// put; a child hop's fill fails (and its waiting relays fall back in turn).
    fn relay_fallback(&mut self, r: Relay) {
        if r.fill {
            if let Some(y) = self.targets.get_mut(r.to).filter(|y| y.key == r.key) {
                y.calls.remove(&r.handle);
            }
            return self.hop_filled(r.to, &r.sha, false);
        }
        let Some(y) = self
            .targets
            .get_mut(r.to)
            .filter(|y| y.key == r.key && y.phase != Phase::Dead)
        else {
            return;
        };
        let Some(call) = y.calls.get_mut(&r.handle) else {
            return;
        };
        call.op = Op::Put {
            file: Some(r.file),
            offset: 0,
            remaining: r.size,
            fill: None,
        };
        let body = serde_json::to_vec(&r.call).unwrap_or_default();
        let hd = header(Kind::Call, 0, r.handle, y.ctx);
        y.out.with_bytes(|b| encode_frame(b, &hd, &body));
        y.counters.frames_out += 1;
        self.counters.frames_out += 1;
        y.puts.push_back(r.handle);
        self.touched.push(r.to);
        self.refill(r.to);
    }
}

/// Checks a spec and every hop of its `via` chain before anything starts.
fn validate_chain(spec: &Spec) -> Result<(), String> {
    if spec.via_depth() > crate::transport::MAX_VIA_DEPTH {
        return Err(format!(
            "more than {} hops in the via chain",
            crate::transport::MAX_VIA_DEPTH
        ));
    }
    let mut s = spec;
    loop {
        if let Some(b) = &s.escalate {
            b.validate()?;
        }
        if s.via.is_some() && s.escalate.is_none() {
            crate::transport::hop_command(s, "M").map_err(|e| e.to_string())?;
        }
        match &s.via {
            Some(v) => s = v,
            None => break,
        }
    }
    // The first hop is started by the daemon (a password is checked again at spawn time,
    // with the askpass helper).
    match crate::transport::command(s, None) {
        Err(crate::transport::CommandError::BadSpec { reason, .. })
            if reason.contains("askpass") =>
        {
            Ok(())
        }
        Err(e) => Err(e.to_string()),
        Ok(_) => Ok(()),
    }
}

/// One frame for target (or become context) `x`. Completed replies go to `done`; an error
/// means the stream cannot continue.
fn on_frame(
    x: &mut Target,
    h: &FrameHeader,
    payload: &[u8],
    done: &mut Vec<(u32, u8, Vec<u8>)>,
) -> Result<(), (String, String)> {
    match h.kind {
        Kind::Hello => {
            parse_hello(payload).map_err(|m| ("protocol".to_string(), m))?;
            x.hello = Some(payload.to_vec());
            x.phase = Phase::Ready;
            tracing::debug!(host = %x.label, hello = %String::from_utf8_lossy(payload), "agent up");
        }
        // A become context ended; its stream's agent says so in its name.
        Kind::Reply if h.reply_to == 0 && h.flags & flags::EOF != 0 && x.parent.is_some() => {
            let v: serde_json::Value = serde_json::from_slice(payload).unwrap_or_default();
            let m = v["message"].as_str().unwrap_or("become context ended");
            return Err(("connection_lost".into(), m.to_string()));
        }
        Kind::Reply => {
            let Some(c) = x.calls.get_mut(&h.reply_to) else {
                tracing::debug!(host = %x.label, reply_to = h.reply_to, "reply for no call (timed out?)");
                return Ok(());
            };
            if c.reply.len() + payload.len() > api::MAX_MESSAGE {
                c.overflow = true;
                c.reply = Vec::new();
            } else if !c.overflow {
                c.reply.extend_from_slice(payload);
            }
            if h.flags & flags::MORE == 0 {
                let body = std::mem::take(&mut c.reply);
                done.push((h.reply_to, h.flags, body));
            }
        }
        Kind::Data => {
            let Some(c) = x.calls.get_mut(&h.handle) else {
                return Ok(());
            };
            if let Op::Fetch { file, received, .. } = &mut c.op {
                *received += payload.len() as u64;
                if let Some(f) = file {
                    if let Err(e) = f.write_all(payload) {
                        c.local_error = Some(format!("writing the destination failed: {e}"));
                        *file = None;
                    }
                }
            }
        }
        Kind::Log => log_record(&x.label, payload),
        Kind::Call => {
            tracing::warn!(host = %x.label, "agent sent a CALL frame; ignored");
        }
    }
    Ok(())
}

fn suffix(last: &str) -> String {
    if last.is_empty() {
        String::new()
    } else {
        format!(": {last}")
    }
}

fn parse_hello(payload: &[u8]) -> Result<(), String> {
    let v: serde_json::Value =
        serde_json::from_slice(payload).map_err(|e| format!("agent HELLO is not JSON: {e}"))?;
    match v["proto"].as_u64() {
        Some(proto::PROTO_VERSION) => Ok(()),
        other => Err(format!(
            "agent speaks protocol {other:?}, this controller speaks {}",
            proto::PROTO_VERSION
        )),
    }
}

fn log_record(label: &str, payload: &[u8]) {
    let v: serde_json::Value = serde_json::from_slice(payload).unwrap_or_default();
    let msg = v["msg"].as_str().unwrap_or("");
    let name = v["name"].as_str().unwrap_or("");
    match v["level"].as_str().unwrap_or("INFO") {
        "DEBUG" => tracing::debug!(host = %label, logger = name, "agent: {msg}"),
        "INFO" => tracing::info!(host = %label, logger = name, "agent: {msg}"),
        "WARNING" => tracing::warn!(host = %label, logger = name, "agent: {msg}"),
        _ => tracing::error!(host = %label, logger = name, "agent: {msg}"),
    }
}

fn tmp_path_for(dest: &std::path::Path, t: TargetId, h: u32) -> PathBuf {
    let name = dest
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    dest.with_file_name(format!(".{name}.spindle-{}-{t}-{h}", std::process::id()))
}
