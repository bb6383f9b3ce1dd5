//! Calls in flight: what each one is ([`Op`], [`Call`]), starting a client's call on a
//! target (one `*_call` function per op builds its CALL), queuing the daemon's own calls,
//! feeding put data below the low-water mark, and giving a call up. What a completed reply
//! means is `answers`.

use super::target::Phase;
use super::{
    encode_call, header, Action, ClientId, FileDone, FileOp, FileToken, Opened, Router, TargetId,
    CHUNK, EXEC_GRACE, HOP_CACHE_BYTES, HOP_CACHE_MIN, LOW_WATER, MAX_INFLIGHT, MAX_OUTBOUND,
};
use crate::api::ErrorKind;
use crate::api::{
    self, validate::deadline_after, CallArgs, ExecArgs, FetchArgs, Op as ApiOp, PutArgs, Request,
};
use crate::proto::{encode_frame, flags, Kind};
use crate::transfer::Source;
use base64::Engine as _;
use serde_json::json;
use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Debug)]
pub(super) enum Op {
    Ping,
    /// The daemon's liveness check of an idle stream (see `probe`).
    Probe,
    Exec,
    /// An agent operation; `path`: where it runs a module, if it does (counted on its answer).
    Call {
        path: Option<crate::metrics::AgentPath>,
    },
    Put {
        file: Option<Source>,
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
        /// Its temp file (created by the server), written while `writing`.
        file: FileToken,
        writing: bool,
        tmp: PathBuf,
        dest: PathBuf,
        received: u64,
        /// The size the agent announced (DATA with flag SIZE): no more bytes are taken.
        /// Until it comes, [`super::FETCH_MAX`].
        announced: Option<u64>,
    },
    /// Starting the become context `child` (its key guards against a reused slab slot).
    Spawn {
        child: TargetId,
        key: String,
    },
    /// Closing a become context (or dropping a cached file); the reply is not awaited.
    CloseContext,
    /// Module code for the contexts this agent starts (see `blob_refs`).
    StoreBlobs,
}

#[derive(Debug)]
pub(super) struct Call {
    pub(super) client: Option<ClientId>,
    pub(super) id: u64,
    pub(super) op: Op,
    pub(super) reply: super::replies::ReplyBuf,
    pub(super) deadline: Option<Instant>,
}

impl Call {
    pub(super) fn new(
        client: Option<ClientId>,
        id: u64,
        op: Op,
        deadline: Option<Instant>,
    ) -> Call {
        Call {
            client,
            id,
            op,
            reply: Default::default(),
            deadline,
        }
    }
}

/// A client's call waiting for the answer to a [`FileOp`]: a put for its source to open, a
/// fetch for its temp file to be created (then its CALL goes), or a fetch done on the target
/// for its file to be synced and renamed (then its client is answered).
#[derive(Debug)]
pub(super) enum Waiting {
    Start {
        t: TargetId,
        /// Guards against a reused slab slot.
        key: String,
        /// None: the client went away meanwhile.
        client: Option<ClientId>,
        req: Box<Request>,
        deadline: Option<Instant>,
        /// The fetch's temp file.
        tmp: Option<PathBuf>,
    },
    Finish {
        client: Option<ClientId>,
        id: u64,
        label: String,
        body: Vec<u8>,
    },
}

impl Waiting {
    /// When the client stops waiting: a call's deadline while its file is opened or created
    /// (None once its client is gone or answered).
    pub(super) fn deadline(&self) -> Option<Instant> {
        match self {
            Waiting::Start {
                client: Some(_),
                deadline,
                ..
            } => *deadline,
            _ => None,
        }
    }
}

/// A target op's CALL, built by its `*_call` function: the payload, the call's state and
/// the frame flags (REFS when module code is named by hash, see blob_refs).
pub(super) struct Outgoing {
    payload: serde_json::Value,
    op: Op,
    flags: u8,
}

impl Outgoing {
    fn new(payload: serde_json::Value, op: Op) -> Outgoing {
        Outgoing {
            payload,
            op,
            flags: 0,
        }
    }
}

/// Why a target op sends no CALL: refused (the client gets this error), or already answered
/// (a put relayed through a hop's cache, a `missing_blobs` reply with its hashes).
pub(super) enum Refused {
    Error(ErrorKind, String),
    Answered,
}

impl Refused {
    fn bad(m: &str) -> Refused {
        Refused::Error(ErrorKind::BadRequest, m.to_string())
    }
}

/// `exec`: argv or shell, stdin checked as base64; the call's deadline is the command's own
/// timeout plus EXEC_GRACE when that is sooner.
fn exec_call(
    req: &ExecArgs,
    now: Instant,
    deadline: &mut Option<Instant>,
) -> Result<Outgoing, Refused> {
    if req.argv.is_none() == req.shell.is_none() {
        return Err(Refused::bad(
            "exec needs exactly one of \"argv\" or \"shell\"",
        ));
    }
    if let Some(s) = &req.stdin_b64 {
        if base64::engine::general_purpose::STANDARD.decode(s).is_err() {
            return Err(Refused::bad("stdin_b64 is not valid base64"));
        }
    }
    let exec_end = req.timeout.and_then(|s| deadline_after(now, s));
    if let Some(d) = exec_end.and_then(|d| d.checked_add(EXEC_GRACE)) {
        *deadline = Some(deadline.map_or(d, |x| x.min(d)));
    }
    let mut p = json!({"op": "exec", "argv": req.argv, "shell": req.shell,
        "stdin_b64": req.stdin_b64, "env": req.env, "cwd": req.cwd,
        "timeout": req.timeout});
    for (k, v) in [("login_shell", req.login_shell), ("tty", req.tty)] {
        if v == Some(true) {
            p[k] = json!(true);
        }
    }
    Ok(Outgoing::new(p, Op::Exec))
}

impl Router {
    /// Queues a CALL of the daemon's own (no client waits for its reply); its handle.
    pub(super) fn internal_call(&mut self, t: TargetId, payload: serde_json::Value, op: Op) -> u32 {
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
        handle
    }

    /// Starts one client request on target `t`: the checks every op shares (in-flight and
    /// outbound limits, the call's deadline), then the op's own `*_call` builds its CALL.
    pub(super) fn start_call(&mut self, t: TargetId, client: ClientId, req: Request, now: Instant) {
        let label = self.targets[t].label.clone();
        let id = req.id;
        if self.targets[t].calls.len() >= MAX_INFLIGHT {
            let m = format!("{MAX_INFLIGHT} calls already in flight to this target");
            return self.reply_err(client, id, ErrorKind::Busy, &label, &m);
        }
        self.targets[t].last_used = now;
        if self.queued(t) > MAX_OUTBOUND {
            let m = format!(
                "the target is not reading: over {} MiB already queued to it",
                MAX_OUTBOUND >> 20
            );
            return self.reply_err(client, id, ErrorKind::Busy, &label, &m);
        }
        // Validated at parse time (api::validate); an unrepresentable deadline is none.
        let mut deadline = req.call_timeout.and_then(|s| deadline_after(now, s));
        let prepared = match &req.op {
            ApiOp::Ping(_) => Ok(Outgoing::new(json!({"op": "ping"}), Op::Ping)),
            ApiOp::Exec(e) => exec_call(e, now, &mut deadline),
            ApiOp::Put(_) | ApiOp::Fetch(_) => return self.wait_for_file(t, client, req, deadline),
            ApiOp::Call(c) => self.agent_call(t, client, id, c),
            other => Err(Refused::Error(
                ErrorKind::BadRequest,
                format!("{} is not an op on a target's stream", other.name()),
            )),
        };
        self.send_call(t, client, &req, prepared, deadline);
    }

    /// Queues the CALL a `*_call` function built for request `req` of `client` (or answers
    /// the client when it was refused), then file data if it is a put.
    fn send_call(
        &mut self,
        t: TargetId,
        client: ClientId,
        req: &Request,
        prepared: Result<Outgoing, Refused>,
        deadline: Option<Instant>,
    ) {
        let id = req.id;
        let out = match prepared {
            Ok(out) => out,
            Err(Refused::Error(kind, m)) => {
                let label = self.targets[t].label.clone();
                return self.reply_err(client, id, kind, &label, &m);
            }
            Err(Refused::Answered) => return,
        };
        let x = &mut self.targets[t];
        let handle = x.take_handle();
        let body = serde_json::to_vec(&out.payload).unwrap_or_default();
        let ctx = x.ctx;
        let mut frames = 0;
        x.out
            .with_bytes(|b| frames = encode_call(b, &body, out.flags, handle, ctx));
        self.counters.frames_out += frames;
        self.counters.calls += 1;
        x.counters.frames_out += frames;
        x.counters.calls += 1;
        if matches!(out.op, Op::Put { .. }) {
            x.puts.push_back(handle);
        }
        let call = Call::new(Some(client), id, out.op, deadline);
        x.calls.insert(handle, call);
        tracing::debug!(host = %x.label, handle, op = req.op.name(), "call");
        self.touched.push(t);
        if let Some(d) = deadline {
            self.deadline_at(d);
        }
        self.refill(t);
    }

    /// A put or fetch first needs a local file: its source opened (and hashed, if it may
    /// go through a hop's file cache), or its temp file created beside its destination. The
    /// server is asked ([`FileOp`]); the call goes on at the answer ([`Router::file_done`]).
    fn wait_for_file(
        &mut self,
        t: TargetId,
        client: ClientId,
        req: Request,
        deadline: Option<Instant>,
    ) {
        let token = self.next_file;
        self.next_file += 1;
        let (op, tmp) = match &req.op {
            ApiOp::Put(p) => {
                let hash = self
                    .cache_hop(t, HOP_CACHE_MIN)
                    .map(|_| (HOP_CACHE_MIN, HOP_CACHE_BYTES / 4));
                let path = p.src.clone();
                (FileOp::Open { token, path, hash }, None)
            }
            ApiOp::Fetch(f) => {
                let path = tmp_path_for(std::path::Path::new(&f.dest), token);
                let tmp = Some(path.clone());
                (FileOp::Create { token, path }, tmp)
            }
            _ => return,
        };
        self.file_ops.push_back(op);
        let key = self.targets[t].key.clone();
        let w = Waiting::Start {
            t,
            key,
            client: Some(client),
            req: Box::new(req),
            deadline,
            tmp,
        };
        self.waiting.insert(token, w);
        if let Some(d) = deadline {
            self.deadline_at(d);
        }
    }

    /// Calls whose deadline passed while their file was being opened or created (a hung
    /// file system) are answered `timeout`; the answer, when it comes, starts nothing.
    pub(super) fn expire_waiting(&mut self, now: Instant) {
        let mut late = Vec::new();
        for (token, w) in self.waiting.iter_mut() {
            if let Waiting::Start {
                client: client @ Some(_),
                req,
                deadline: Some(d),
                ..
            } = w
            {
                if now >= *d {
                    let host = req.target.as_ref().map(|s| s.label()).unwrap_or_default();
                    late.push((*token, client.take(), req.id, host));
                }
            }
        }
        late.sort_by_key(|l| l.0); // answered in the order asked
        for (_, client, id, host) in late {
            if let Some(c) = client {
                let m = "the call's deadline passed while its local file was opened";
                self.reply_err(c, id, ErrorKind::Timeout, &host, m);
            }
        }
    }

    /// The answer to file request `token` (see [`FileOp`]): a put or fetch waiting for it
    /// starts, or fails with the reason; a finished fetch is answered.
    pub fn file_done(&mut self, token: FileToken, done: FileDone, now: Instant) {
        let Some(w) = self.waiting.remove(&token) else {
            return;
        };
        let (t, key, client, req, deadline, tmp) = match (w, done) {
            (
                Waiting::Finish {
                    client,
                    id,
                    label,
                    body,
                },
                FileDone::Finished(r),
            ) => {
                let msg = match r {
                    Ok(()) => api::ok_raw(id, &body),
                    Err(m) => api::error(id, ErrorKind::LocalIo, &label, &m),
                };
                if let Some(client) = client {
                    self.actions.push_back(Action::Reply(client, msg));
                }
                return;
            }
            (
                Waiting::Start {
                    t,
                    key,
                    client,
                    req,
                    deadline,
                    tmp,
                },
                done,
            ) => (t, key, client, req, deadline, (tmp, done)),
            (w, done) => {
                tracing::debug!(token, ?w, ?done, "file answer of another kind; ignored");
                return;
            }
        };
        let (tmp, done) = tmp;
        let created = matches!(done, FileDone::Created(Ok(())));
        let label = self
            .targets
            .get(t)
            .filter(|x| x.key == key && x.phase != Phase::Dead)
            .map(|x| x.label.clone());
        let gone = match (client, &label) {
            (None, _) => Some(None),
            (Some(c), None) => {
                let host = req.target.as_ref().map(|s| s.label()).unwrap_or_default();
                let m = "the target's stream ended before the call could start";
                Some(Some((c, ErrorKind::ConnectionLost, host, m)))
            }
            (Some(c), Some(l)) if deadline.is_some_and(|d| now >= d) => Some(Some((
                c,
                ErrorKind::Timeout,
                l.clone(),
                "the call's deadline passed",
            ))),
            _ => None,
        };
        if let Some(answer) = gone {
            if let (true, Some(path)) = (created, tmp) {
                self.file_ops.push_back(FileOp::Remove { token, path });
            }
            if let Some((c, kind, host, m)) = answer {
                self.reply_err(c, req.id, kind, &host, m);
            }
            return;
        }
        let Some(client) = client else { return };
        let prepared = match (done, &req.op, tmp) {
            (FileDone::Opened(Ok(o)), ApiOp::Put(p), _) => {
                self.put_call(t, client, req.id, p, deadline, o)
            }
            (FileDone::Created(Ok(())), ApiOp::Fetch(f), Some(tmp)) => {
                Ok(fetch_call(f, token, tmp))
            }
            (FileDone::Opened(Err(m)) | FileDone::Created(Err(m)), _, _) => {
                Err(Refused::Error(ErrorKind::LocalIo, m))
            }
            (done, _, _) => {
                tracing::debug!(token, ?done, "file answer for another op; ignored");
                return;
            }
        };
        self.send_call(t, client, &req, prepared, deadline);
    }

    /// `put`: the `put_file` CALL of the local file the server opened; a large file to a host
    /// behind a via hop goes through the hop's cache instead (answered there).
    fn put_call(
        &mut self,
        t: TargetId,
        client: ClientId,
        id: u64,
        req: &PutArgs,
        deadline: Option<Instant>,
        o: Opened,
    ) -> Result<Outgoing, Refused> {
        let p = json!({"op": "put_file", "path": req.dest, "size": o.size, "mode": req.mode,
            "owner": req.owner, "group": req.group, "apply_umask": req.apply_umask,
            "digests": req.digests, "sync": req.sync});
        if let (Some(hop), Some(sha)) = (self.cache_hop(t, o.size), o.sha) {
            self.relayed_put(t, hop, client, id, deadline, p, o.source, o.size, sha);
            return Err(Refused::Answered);
        }
        let op = Op::Put {
            file: Some(o.source),
            offset: 0,
            remaining: o.size,
            fill: None,
        };
        Ok(Outgoing::new(p, op))
    }

    /// `call`: an agent operation passed through, with the module code (blobs) this stream
    /// lacks added inline (`blobs_z`) or, behind a parent that holds it, by reference
    /// (`blob_refs`, flag REFS); module sets the stream has already seen are named by id.
    fn agent_call(
        &mut self,
        t: TargetId,
        client: ClientId,
        id: u64,
        req: &CallArgs,
    ) -> Result<Outgoing, Refused> {
        let serde_json::Value::Object(mut p) = req.payload.clone() else {
            return Err(Refused::bad("call needs a \"payload\" object"));
        };
        let reserved = ["blobs", "blobs_z", "blob_refs"];
        if !p.get("op").is_some_and(|o| o.is_string())
            || reserved.iter().any(|k| p.contains_key(*k))
        {
            return Err(Refused::bad(
                "call payload needs a string \"op\" and no blobs keys",
            ));
        }
        let mut hashes: Vec<String> = Vec::new();
        let mut missing = Vec::new();
        for h in req.blobs.iter().flatten() {
            if self.targets[t].sent_blobs.contains(h) || hashes.contains(h) {
                continue;
            }
            match self.cache.get(h) {
                Some(_) => hashes.push(h.clone()),
                None => missing.push(h.clone()),
            }
        }
        if !missing.is_empty() {
            let m = format!(
                "{} blob(s) not in the daemon cache; blob_put them first",
                missing.len()
            );
            let label = &self.targets[t].label;
            let extra = json!({"missing": missing});
            let msg = api::error_with(id, ErrorKind::MissingBlobs, label, &m, extra);
            self.actions.push_back(Action::Reply(client, msg));
            return Err(Refused::Answered);
        }
        let by_ref = !hashes.is_empty() && {
            let body_len = serde_json::to_vec(&p).map_or(usize::MAX, |b| b.len());
            self.blobs_by_ref(t, &hashes, body_len)
        };
        let mut fl = 0;
        if by_ref {
            // Its parent puts them in: they do not cross the links above it again.
            p.insert("blob_refs".into(), json!(hashes));
            fl = flags::REFS;
        } else if !hashes.is_empty() {
            p.insert("blobs_z".into(), self.packed_blobs(&hashes));
        }
        let path = crate::metrics::AgentPath::of(
            p.get("op").and_then(|o| o.as_str()),
            p.get("mode").and_then(|m| m.as_str()),
        );
        let x = &mut self.targets[t];
        x.counters.blobs_pushed += hashes.len() as u64;
        x.sent_blobs.extend(hashes);
        match p.get("op").and_then(|o| o.as_str()) {
            Some("run_module") => dedup_module_set(&mut p, &mut x.sent_sets),
            // copy_fast carries the two module runs it chooses from.
            Some("copy_fast" | "copy_stream") => {
                for k in ["copy", "file"] {
                    if let Some(serde_json::Value::Object(run)) = p.get_mut(k) {
                        dedup_module_set(run, &mut x.sent_sets);
                    }
                }
            }
            _ => {}
        }
        let mut out = Outgoing::new(serde_json::Value::Object(p), Op::Call { path });
        out.flags = fl;
        Ok(out)
    }

    /// Queues file data of active puts (as file ranges, not bytes) while the outbound queue is
    /// below LOW_WATER.
    pub(super) fn refill(&mut self, t: TargetId) {
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
            x.out.push_file(f, *offset, n);
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

    /// Gives up on call `handle` of `t` (its deadline passed, its client went away, or its
    /// data broke a limit): it is forgotten here, a fetch's temp file is removed, and the
    /// agent is told to stop it: a put's data is aborted (DATA with ABORT), an exec, fetch or
    /// agent call is cancelled (a `cancel` CALL: the agent kills the command's process group
    /// or stops sending, and never replies). `answer`, when the client still waits: the
    /// error kind and message it gets. Returns whether there was such a call.
    pub(super) fn abandon(
        &mut self,
        t: TargetId,
        handle: u32,
        answer: Option<(ErrorKind, &str)>,
    ) -> bool {
        let Some(x) = self.targets.get_mut(t) else {
            return false;
        };
        let Some(c) = x.calls.remove(&handle) else {
            return false;
        };
        let live = x.phase != Phase::Dead;
        match &c.op {
            // A relayed put's data comes from its hop's cache: the ABORT stops it as well.
            Op::Put { .. } | Op::RelayedPut => {
                x.puts.retain(|p| *p != handle);
                if live {
                    let hd = header(Kind::Data, flags::ABORT, handle, x.ctx);
                    x.out.with_bytes(|b| encode_frame(b, &hd, &[]));
                    self.touched.push(t);
                }
            }
            Op::Exec | Op::Fetch { .. } | Op::Call { .. } if live => {
                // Its reply is never awaited: the agent sends none for the cancelled call,
                // and the cancel's own is dropped as a reply for no call.
                let cancel = header(Kind::Call, 0, x.take_handle(), x.ctx);
                let body = serde_json::to_vec(&json!({"op": "cancel", "handle": handle}))
                    .unwrap_or_default();
                x.out.with_bytes(|b| encode_frame(b, &cancel, &body));
                x.counters.frames_out += 1;
                self.counters.frames_out += 1;
                self.touched.push(t);
            }
            _ => {}
        }
        if let Op::Fetch { file, tmp, .. } = &c.op {
            let (token, path) = (*file, tmp.clone());
            self.file_ops.push_back(FileOp::Remove { token, path });
        }
        let label = x.label.clone();
        tracing::debug!(host = %label, handle, "call abandoned");
        if let (Some(client), Some((kind, m))) = (c.client, answer) {
            let msg = api::error(c.id, kind, &label, m);
            self.actions.push_back(Action::Reply(client, msg));
        }
        self.refill(t);
        true
    }
}

/// `fetch`: the `fetch_file` CALL, its data written to temp file `token` at `tmp`.
fn fetch_call(req: &FetchArgs, token: FileToken, tmp: PathBuf) -> Outgoing {
    let p = json!({"op": "fetch_file", "path": req.src});
    let op = Op::Fetch {
        file: token,
        writing: true,
        tmp,
        dest: PathBuf::from(&req.dest),
        received: 0,
        announced: None,
    };
    Outgoing::new(p, op)
}

/// A fetch's temp file: beside its destination, named for the daemon and the file's token.
fn tmp_path_for(dest: &std::path::Path, token: FileToken) -> PathBuf {
    let name = dest
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    dest.with_file_name(format!(".{name}.spindle-{}-{token}", std::process::id()))
}

/// Module file sets an agent keeps at most (its `MAX_MODULE_SETS`); past it, sets are sent whole.
const MAX_MODULE_SETS: usize = 1024;

/// A run_module call names its files twice over per task: the manifest (path -> blob hash of
/// every module_utils file, ~5 KiB for `command`) and warm mode's core list. The same set
/// comes with every task of a module, so it is sent once per stream with a `set_id` the agent
/// keeps it under, and after that only the id (one round trip stays one round trip; bytes per
/// task drop to the parameters and the reply).
fn dedup_module_set(
    p: &mut serde_json::Map<String, serde_json::Value>,
    sent: &mut HashSet<String>,
) {
    use sha2::Digest as _;
    let Some(manifest) = p.get("manifest").filter(|m| m.is_object()) else {
        return;
    };
    if p.contains_key("set_id") {
        return;
    }
    let key = json!([manifest, p.get("core").unwrap_or(&serde_json::Value::Null)]);
    let digest = sha2::Sha256::digest(serde_json::to_vec(&key).unwrap_or_default());
    let id = crate::cache::hex(&digest[..16]);
    if sent.contains(&id) {
        p.remove("manifest");
        p.remove("core");
    } else if sent.len() < MAX_MODULE_SETS {
        sent.insert(id.clone());
    } else {
        return;
    }
    p.insert("set_id".into(), id.into());
}
