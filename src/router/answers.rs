//! A call's reply came back whole: what it means, one function per kind of call. The
//! daemon's own calls (starting a context, a probe, code for a hop, a hop's file cache) change
//! the router's state; a client's call becomes its answer (`*_answer`), or an error reply
//! when the reply broke a limit, the agent reported an error, or it is not JSON.

use super::calls::{Call, Op, Waiting};
use super::replies::{Overflow, REPLIES_MAX};
use super::target::Phase;
use super::{Action, FileOp, FileToken, Router, TargetId};
use crate::api::{self, ErrorKind};
use crate::metrics::AgentPath;
use crate::proto::flags;
use crate::transport::classify::classify;
use std::path::PathBuf;

/// An error reply's `error` and `message` (the agent's `{"error": kind, "message": text}`).
fn agent_error(body: &[u8]) -> (String, String) {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let kind = v["error"].as_str().unwrap_or("unknown").to_string();
    let text = v["message"].as_str().unwrap_or("").to_string();
    (kind, text)
}

impl Router {
    /// Call `handle` of target `t` got its whole reply `body` (flags `fl`).
    pub(super) fn complete(&mut self, t: TargetId, handle: u32, fl: u8, body: Vec<u8>) {
        let Some(c) = self.targets[t].calls.remove(&handle) else {
            return;
        };
        let failed = fl & flags::ERROR != 0;
        match c.op {
            Op::Spawn { child, ref key } => {
                if failed {
                    self.context_refused(child, key, &body);
                }
            }
            Op::CloseContext => {}
            Op::Probe => self.probe_answered(t),
            Op::StoreBlobs => {
                if failed {
                    self.store_failed(t, &agent_error(&body).1);
                }
            }
            Op::HopFill { ref sha }
            | Op::Put {
                fill: Some(ref sha),
                ..
            } => {
                let sha = sha.clone();
                self.hop_filled(t, &sha, !failed);
            }
            Op::Relay {
                to,
                ref key,
                handle,
                ref sha,
                fill,
            } => {
                if failed {
                    let (key, sha) = (key.clone(), sha.clone());
                    self.relay_failed(t, to, &key, handle, &sha, fill, &body);
                }
            }
            _ => self.answer(t, c, failed, body),
        }
    }

    /// The agent could not start context `child` (become, interpreter, or a host behind a
    /// hop): the context fails with the kind its error means.
    fn context_refused(&mut self, child: TargetId, key: &str, body: &[u8]) {
        let alive = self
            .targets
            .get(child)
            .is_some_and(|x| x.key == key && x.phase != Phase::Dead);
        if !alive {
            return;
        }
        let (kind, text) = agent_error(body);
        let spec = &self.targets[child].spec;
        if !spec.is_context() && spec.via.is_some() {
            // The hop ran ssh (or another transport): classify its output.
            let hop = spec.via.as_ref().map(|v| v.label()).unwrap_or_default();
            let class = match (kind.as_str(), classify(&text, false)) {
                ("timeout", _) => ErrorKind::Timeout,
                (_, ErrorKind::ConnectionLost) => ErrorKind::Unreachable,
                (_, k) => k,
            };
            let last = crate::transport::classify::reason_line(&text);
            let m = format!("via {hop}: {kind}: {last}");
            self.fail_target(child, class, &m);
        } else if spec.escalate.is_none() {
            // An interpreter context: that Python did not start an agent.
            let m = format!("{kind}: {text}");
            self.fail_target(child, ErrorKind::InterpreterFailed, &m);
        } else {
            let m = format!("{kind}: {text}");
            self.fail_target(child, ErrorKind::BecomeFailed, &m);
        }
    }

    /// Hop `hop` could not send its cached file to child `to` (call `handle` there): a fill
    /// of the child's own cache is marked failed, a client's put is answered `remote`.
    #[allow(clippy::too_many_arguments)]
    fn relay_failed(
        &mut self,
        hop: TargetId,
        to: TargetId,
        key: &str,
        handle: u32,
        sha: &str,
        fill: bool,
        body: &[u8],
    ) {
        let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
        let m = format!("relay from the hop failed: {}", v["message"]);
        tracing::debug!(hop = %self.targets[hop].label, "{m}");
        if fill {
            return self.hop_filled(to, sha, false);
        }
        let Some(y) = self.targets.get_mut(to).filter(|y| y.key == key) else {
            return;
        };
        if let Some(call) = y.calls.remove(&handle) {
            let label = y.label.clone();
            if let Some(client) = call.client {
                let msg = api::error(call.id, ErrorKind::Remote, &label, &m);
                self.actions.push_back(Action::Reply(client, msg));
            }
        }
    }

    /// A client's call answered: the reply it gets (none for a fetch until its file is
    /// synced and renamed).
    fn answer(&mut self, t: TargetId, c: Call, failed: bool, body: Vec<u8>) {
        let label = self.targets[t].label.clone();
        if let Op::Fetch { file, ref tmp, .. } = c.op {
            // Kept (renamed over its destination) only when the agent sent it all.
            if c.reply.overflow.is_some() || failed {
                let path = tmp.clone();
                self.file_ops
                    .push_back(FileOp::Remove { token: file, path });
            }
        }
        let msg = if let Some(over) = c.reply.overflow {
            let m = match over {
                Overflow::Message => "reply larger than 64 MiB".to_string(),
                Overflow::Budget => format!(
                    "replies being assembled, all targets together, passed the daemon's {} MiB budget",
                    REPLIES_MAX >> 20
                ),
            };
            api::error(c.id, ErrorKind::Protocol, &label, &m)
        } else if failed {
            let (kind, text) = agent_error(&body);
            if kind == "missing_blobs" {
                // The agent (or the parent that was to put the code in) no longer holds code
                // it was sent (its store is bounded): send it again, up the chain, next time.
                self.forget_sent_blobs(t);
            }
            api::error(c.id, ErrorKind::Remote, &label, &format!("{kind}: {text}"))
        } else if serde_json::from_slice::<serde::de::IgnoredAny>(&body).is_err() {
            api::error(c.id, ErrorKind::Protocol, &label, "agent reply is not JSON")
        } else {
            match c.op {
                Op::Ping => self.ping_answer(t, c.id, &body),
                Op::Call { path } => self.call_answer(c.id, path, &body),
                Op::Fetch {
                    file,
                    tmp,
                    dest,
                    received,
                    ..
                } => {
                    let finish = FetchDone {
                        file,
                        tmp,
                        dest,
                        received,
                    };
                    match self.fetch_answer(c.client, c.id, label, finish, body) {
                        Some(msg) => msg,
                        None => return,
                    }
                }
                _ => api::ok_raw(c.id, &body),
            }
        };
        if let Some(client) = c.client {
            self.actions.push_back(Action::Reply(client, msg));
        }
    }

    /// What `t` and the contexts above it were sent is forgotten: the next call that needs
    /// code pushes it again.
    fn forget_sent_blobs(&mut self, t: TargetId) {
        let mut at = Some(t);
        let mut hops = 0;
        while let Some(x) = at.and_then(|i| self.targets.get_mut(i)) {
            x.sent_blobs.clear();
            at = x.parent;
            hops += 1;
            if hops > 64 {
                break; // (chains are a few links deep: never loop on a reused slot)
            }
        }
    }

    /// `ping`: the agent's pong with the stream's HELLO added.
    fn ping_answer(&self, t: TargetId, id: u64, body: &[u8]) -> Vec<u8> {
        let mut v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
        if let (Some(o), Some(h)) = (v.as_object_mut(), &self.targets[t].hello) {
            let hv = serde_json::from_slice(h).unwrap_or_default();
            o.insert("hello".into(), hv);
        }
        api::ok_value(id, &v)
    }

    /// `call`: passed through; a module run counts on its path unless the agent answered
    /// `{"fallback": why}` (it cannot run that module).
    fn call_answer(&mut self, id: u64, path: Option<AgentPath>, body: &[u8]) -> Vec<u8> {
        if let Some(path) = path.filter(|_| !body.starts_with(b"{\"fallback\"")) {
            self.paths.ran(path);
        }
        api::ok_raw(id, body)
    }

    /// `fetch`: the agent sent it all. Checked against the size it reports before the rename
    /// (a failed fetch leaves `dest` as it was); then the server syncs and renames the temp
    /// file off the loop, and the client is answered at that ([`Waiting::Finish`]). `Some`:
    /// the error answer now.
    fn fetch_answer(
        &mut self,
        client: Option<super::ClientId>,
        id: u64,
        label: String,
        f: FetchDone,
        body: Vec<u8>,
    ) -> Option<Vec<u8>> {
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let (token, tmp) = (f.file, f.tmp);
        if v["size"].as_u64() != Some(f.received) {
            self.file_ops.push_back(FileOp::Remove { token, path: tmp });
            let m = format!("fetched {} bytes, agent reported {}", f.received, v["size"]);
            return Some(api::error(id, ErrorKind::Protocol, &label, &m));
        }
        let dest = f.dest;
        self.file_ops.push_back(FileOp::Finish { token, tmp, dest });
        let w = Waiting::Finish {
            client,
            id,
            label,
            body,
        };
        self.waiting.insert(token, w);
        None
    }
}

/// A fetch whose data all came: its temp file and destination.
struct FetchDone {
    file: FileToken,
    tmp: PathBuf,
    dest: PathBuf,
    received: u64,
}
