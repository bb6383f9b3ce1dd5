//! Streams and nested contexts: opening a target (a stream, a become context, or a target
//! behind a via hop), keeping become contexts within the interpreter limit (least recently
//! used idle one recycled), frames relayed from a context, failing and closing targets with
//! their contexts, and checking a via chain before anything starts.

use super::calls::{Call, Op};
use super::target::{Phase, Target};
use super::{on_frame, Action, FileOp, Router, TargetId, SPAWN_GRACE};
use crate::api::{self, ErrorKind};
use crate::metrics::TargetCounters;
use crate::proto::{self, Decoder, FrameHeader, Kind};
use crate::transfer::Outbound;
use crate::transport::{classify::classify, plain_program, Spec, TransportKind, BOOT_PLACEHOLDER};
use serde_json::json;
use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

impl Router {
    pub(super) fn target_for(&mut self, spec: Spec, now: Instant) -> TargetId {
        let key = spec.key();
        if let Some(&t) = self.by_key.get(&key) {
            return t;
        }
        let parent = if spec.is_context() {
            Some(self.target_for(spec.parent(), now))
        } else {
            let hop = spec.via.as_deref().cloned();
            hop.map(|h| self.target_for(h, now))
        };
        let mut out = Outbound::new(self.splice);
        if parent.is_none() && spec.transport != crate::transport::TransportKind::Unix {
            out.with_bytes(|b| b.extend_from_slice(crate::transport::bootstrap::agent_blob()));
        }
        // A stream's agent gets its bootstrap period (progress extends it, see `progress`);
        // ssh itself gives up on the network after the connect timeout. A context starts once
        // its parent runs: its own time counts from the parent's deadline (every hop of a
        // chain gets its full period). A become context is bounded by its prompt timeout on
        // the target (the agent answers then); this is the backstop.
        let own = Duration::from_secs(match spec.escalate {
            Some(_) => spec.connect_timeout_secs(),
            None => spec.bootstrap_secs(),
        });
        let mut deadline = now + own;
        let mut until = now + Duration::from_secs(spec.bootstrap_limit_secs());
        if let Some(p) = parent {
            let (from, parent_until) = match self.targets[p].phase {
                Phase::Connecting { deadline, until } => (deadline.max(now), until.max(now)),
                _ => (now, now),
            };
            // (and at least twice its timeout from now, as become contexts always had)
            deadline = (from + own).max(now + own * 2) + SPAWN_GRACE;
            until = (parent_until + own * 2).max(deadline) + SPAWN_GRACE;
        }
        let ctx = match parent {
            Some(p) => {
                if spec.is_context() {
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
        // A stream's agent is started by stage 1 (which writes the boot marker), except over a
        // unix socket (an agent already running); a context's by its parent agent.
        let boot = (parent.is_none() && spec.transport != TransportKind::Unix)
            .then(proto::BootScan::default);
        let t = self.targets.insert(Target {
            label: spec.label(),
            spec,
            key: key.clone(),
            phase: Phase::Connecting { deadline, until },
            decoder: Decoder::default(),
            boot,
            out,
            hello: None,
            next_handle: 1,
            calls: HashMap::new(),
            puts: VecDeque::new(),
            sent_blobs: HashSet::new(),
            sent_sets: HashSet::new(),
            counters: TargetCounters::default(),
            parent,
            ctx,
            children: HashMap::new(),
            routes: HashMap::new(),
            hop_files: HashMap::new(),
            next_ctx: proto::CTX_AGENT,
            unacked: 0,
            held_stores: Vec::new(),
            last_used: now,
            last_in: now,
            probe: None,
            read_since_tick: false,
            logs: Default::default(),
            retiring: None,
        });
        self.by_key.insert(key.clone(), t);
        self.counters.connects += 1;
        self.deadline_at(deadline);
        tracing::debug!(target_id = t, host = %self.targets[t].label, "opening stream");
        match parent {
            None => self.actions.push_back(Action::Spawn(t)),
            Some(p) => {
                self.targets[p].children.insert(ctx, t);
                let root = self.root_of(p);
                self.targets[root].routes.insert(ctx, t);
                let spec = &self.targets[t].spec;
                // The agent's own limit for starting the context (become: the prompt timeout,
                // as stock's; a via target or another interpreter: its bootstrap period).
                let secs = match spec.escalate {
                    Some(_) => spec.connect_timeout_secs(),
                    None => spec.bootstrap_secs(),
                };
                // The interpreter a become or interpreter context runs (checked plain by
                // validate_interpreter); a become context without one runs its parent's.
                let python = spec.interpreter.as_deref().filter(|p| plain_program(p));
                let payload = match (&spec.escalate, python) {
                    (Some(b), _) => json!({"op": "spawn_context", "ctx": ctx, "cmd": b.cmd,
                        "success": b.success, "password": b.password, "prompt": b.prompt,
                        "timeout": secs, "python": python}),
                    (None, Some(python)) => {
                        // An interpreter context: the same user, another Python.
                        let marker = format!("SPINDLE-PY-{ctx}");
                        let cmd = format!("echo {marker}; {BOOT_PLACEHOLDER}");
                        json!({"op": "spawn_context", "ctx": ctx, "cmd": cmd,
                            "success": marker, "timeout": secs, "python": python})
                    }
                    (None, None) => {
                        // A via hop: its agent runs the transport command for this target.
                        let marker = format!("SPINDLE-VIA-{ctx}");
                        let cmd = crate::transport::hop_command(spec, &marker).unwrap_or_default();
                        let python = spec.python.as_deref().filter(|p| plain_program(p));
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

    /// `spec` without its `interpreter` when the host's stream agent runs that interpreter
    /// already (no context needed). The agent's HELLO decides (its `executable`, that path
    /// resolved, or another path of the same interpreter it lists); before the HELLO, the interpreter the stream was started with (its
    /// `python`), or for a stream not opened yet, the one this spec would start it with.
    /// Anything else gets its own context (at worst a second agent under the same Python).
    pub(super) fn resolve_interpreter(&self, mut spec: Spec) -> Spec {
        let Some(want) = spec.interpreter.as_deref() else {
            return spec;
        };
        let stream = self
            .by_key
            .get(&spec.parent().key())
            .and_then(|&t| self.targets.get(t));
        let runs = match stream {
            Some(x) => match &x.hello {
                Some(h) => hello_runs(h, want),
                None => x.spec.python.as_deref() == Some(want),
            },
            None => spec.python.as_deref() == Some(want),
        };
        if runs {
            spec.interpreter = None;
        }
        spec
    }

    /// Keeps at most `max_interpreters` become and interpreter contexts on stream `p`: closes
    /// the least recently used one that has no call in flight (a busy one is never closed).
    /// Targets behind a via hop are not interpreters of the hop: they are neither counted
    /// nor closed, and a context that has contexts of its own is never closed.
    fn evict_idle_context(&mut self, p: TargetId) {
        let children: Vec<TargetId> = self.targets[p]
            .children
            .values()
            .copied()
            .filter(|&c| self.targets.get(c).is_some_and(|x| x.spec.is_context()))
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
            tracing::debug!(host = %self.targets[c].label, "closing the least recently used context");
            self.counters.recycled += 1;
            // Only a context without calls or children is recycled: no reply carries this.
            self.close_target(
                c,
                ErrorKind::ConnectionLost,
                "closed to stay within the interpreter limit",
                false,
            );
        }
    }

    /// One frame relayed from become context `c`.
    pub(super) fn context_frame(
        &mut self,
        c: TargetId,
        h: &FrameHeader,
        payload: &[u8],
        now: Instant,
    ) {
        let Some(x) = self.targets.get_mut(c) else {
            return;
        };
        if x.phase == Phase::Dead {
            return;
        }
        x.counters.frames_in += 1;
        x.counters.bytes_in += (proto::HEADER_LEN + payload.len()) as u64;
        let was_ready = x.phase == Phase::Ready;
        let (mut done, mut refused) = (Vec::new(), Vec::new());
        let ops = &mut self.file_ops;
        let res = on_frame(
            x,
            &self.replies,
            h,
            payload,
            &mut done,
            &mut refused,
            ops,
            now,
        );
        let now_ready = x.phase == Phase::Ready;
        for (handle, m) in refused {
            self.abandon(c, handle, Some((ErrorKind::Protocol, &m)));
        }
        for (handle, fl, body) in done {
            self.complete(c, handle, fl, body);
        }
        if h.kind == Kind::Log {
            self.log_report_due(c, now);
        }
        self.retire_idle(c);
        match res {
            Err((kind, m)) => self.fail_target(c, kind, &m),
            // Calls queued while it started were held back: it exists on the target now.
            Ok(()) if now_ready && !was_ready => {
                self.release_held_stores(c);
                self.pump(c)
            }
            // Room in its window: more of its frames (and file data) can go.
            Ok(()) if h.kind == Kind::Credit => self.refill(c),
            Ok(()) => {}
        }
    }

    /// The process the daemon ran for stream `t` (ssh, a container's exec) ended: its stdout
    /// and stderr closed. `stderr` is its last output, `after_up` the part of it that came
    /// once the agent was up. An agent that was up, where ssh did not say the connection broke
    /// there, was killed on the target (or its ssh client was): `agent_ended`, which the
    /// Ansible plugin tells from a lost connection by checking that the host answers.
    pub fn process_ended(&mut self, t: TargetId, stderr: &str, after_up: &str) {
        let agent_gone = self
            .targets
            .get(t)
            .is_some_and(|x| x.hello.is_some() && x.phase != Phase::Dead && x.parent.is_none())
            && !crate::transport::classify::connection_broke(after_up);
        if agent_gone {
            let m = "the agent's process ended, and its connection reported no problem: it was \
                     killed on the target (by the task, `pkill python3`, the OOM killer), or the \
                     process carrying it on the controller (ssh, podman exec...) was";
            return self.fail_target(t, ErrorKind::AgentEnded, m);
        }
        self.target_closed(t, stderr)
    }

    /// The target's process ended (stdout and stderr closed); `stderr` is its last output.
    pub fn target_closed(&mut self, t: TargetId, stderr: &str) {
        let Some(x) = self.targets.get(t) else { return };
        if x.phase == Phase::Dead {
            return;
        }
        let connected = x.hello.is_some();
        let kind = classify(stderr, connected);
        let last = crate::transport::classify::reason_line(stderr);
        let m = match kind {
            ErrorKind::NoPython => "no Python interpreter found on the target".to_string(),
            ErrorKind::ConnectionLost if connected => {
                format!("connection lost (agent or ssh ended){}", suffix(&last))
            }
            ErrorKind::ConnectionLost => format!("agent failed to start{}", suffix(&last)),
            _ => last,
        };
        self.fail_target(t, kind, &m);
    }

    /// Fails every call of a target and schedules its process to be killed.
    pub(super) fn fail_target(&mut self, t: TargetId, kind: ErrorKind, message: &str) {
        self.close_target(t, kind, message, true);
    }

    /// Ends a stream or become context: its calls (and its contexts' calls) fail with `kind`;
    /// a context is closed on its stream's agent. `warn` logs it as a failure.
    pub(super) fn close_target(&mut self, t: TargetId, kind: ErrorKind, message: &str, warn: bool) {
        let Some(x) = self.targets.get_mut(t) else {
            return;
        };
        if x.phase == Phase::Dead {
            return;
        }
        self.probe_dropped(t);
        let Some(x) = self.targets.get_mut(t) else {
            return;
        };
        if warn {
            tracing::warn!(host = %x.label, kind = kind.as_str(), message, "target failed");
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
            if let Op::Fetch { file, tmp, .. } = &c.op {
                let (token, path) = (*file, tmp.clone());
                self.file_ops.push_back(FileOp::Remove { token, path });
            }
            if let Some(client) = c.client {
                let msg = api::error(c.id, kind, &label, message);
                self.actions.push_back(Action::Reply(client, msg));
            }
        }
        // A context has no process of its own: the I/O layer only releases it.
        self.actions.push_back(Action::Kill(t));
        for c in children {
            // Behind a hop whose agent ended, a target lost its way in, not its own agent.
            let behind = self.targets.get(c).is_some_and(|y| !y.spec.is_context());
            if kind == ErrorKind::AgentEnded && behind {
                let m = format!("its hop {label} ended: {message}");
                self.close_target(c, ErrorKind::ConnectionLost, &m, false);
            } else {
                self.close_target(c, kind, message, false);
            }
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
}

/// Whether an agent whose HELLO is `hello` runs `python` (its `executable`, or the real
/// path the agent resolved it to).
/// Whether the agent whose HELLO is `hello` runs `python`: its `executable`, the program that
/// resolves to (`realpath`, absent in a venv), or one of the `aliases` the agent checked on
/// the target (at most [`MAX_HELLO_ALIASES`] are looked at).
fn hello_runs(hello: &[u8], python: &str) -> bool {
    let v: serde_json::Value = serde_json::from_slice(hello).unwrap_or_default();
    let named = ["executable", "realpath"]
        .iter()
        .any(|k| v[*k].as_str() == Some(python));
    named
        || v["aliases"].as_array().is_some_and(|a| {
            a.iter()
                .take(MAX_HELLO_ALIASES)
                .any(|x| x.as_str() == Some(python))
        })
}

/// The HELLO's `aliases` looked at, at most (the agent sends 16 at most).
const MAX_HELLO_ALIASES: usize = 16;

fn suffix(last: &str) -> String {
    if last.is_empty() {
        String::new()
    } else {
        format!(": {last}")
    }
}
