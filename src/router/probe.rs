//! Liveness checks of idle ssh streams before they are used again.
//!
//! A daemon that outlives a playbook (the plugin's persistent daemon) keeps streams to hosts
//! that may have rebooted or vanished since: ssh notices only at its next keepalive (up to
//! `ServerAliveInterval` x `ServerAliveCountMax` = 45 s for a silent peer). A request for a
//! root ssh stream that has received nothing for [`PROBE_AFTER`] is therefore held, and the
//! agent is sent a `ping` first; its answer releases the held requests onto the stream. If
//! the stream dies or the ping goes unanswered for the connect timeout (at least
//! [`PROBE_MIN`]), the stream is closed and the held requests are replayed on a fresh one:
//! none of them was sent, so nothing runs twice. The cost is one round trip for the first
//! request after an idle period. Held requests per stream: at most [`super::MAX_INFLIGHT`]
//! (then `busy`).

use super::calls::Op;
use super::target::Phase;
use super::{ClientId, Router, TargetId, MAX_INFLIGHT};
use crate::api::{ErrorKind, Request};
use crate::transport::{Spec, TransportKind};
use serde_json::json;
use std::time::{Duration, Instant};

/// Idle time (nothing received) after which a root ssh stream is checked before use.
pub const PROBE_AFTER: Duration = Duration::from_secs(10);
/// Shortest time a liveness check waits for its answer.
pub const PROBE_MIN: Duration = Duration::from_secs(10);

/// A liveness check in flight: the requests it holds back.
#[derive(Debug, Default)]
pub(super) struct Probe {
    pub(super) held: Vec<(ClientId, Request)>,
}

impl Router {
    /// The live root stream that `spec` would travel on, if there is one already.
    fn live_root(&self, spec: &Spec) -> Option<TargetId> {
        if let Some(&t) = self.by_key.get(&spec.key()) {
            return Some(self.root_of(t));
        }
        let next = if spec.is_context() {
            spec.parent()
        } else {
            spec.via.as_deref()?.clone()
        };
        self.live_root(&next)
    }

    /// Passes `req` on (Some) unless its stream must be checked first or is being checked:
    /// then it is held (None) until [`Router::probe_answered`] or the stream's end.
    pub(super) fn probe_gate(
        &mut self,
        spec: &Spec,
        client: ClientId,
        req: Request,
        now: Instant,
    ) -> Option<Request> {
        let Some(r) = self.live_root(spec) else {
            return Some(req);
        };
        let x = &mut self.targets[r];
        if let Some(p) = &mut x.probe {
            if p.held.len() >= MAX_INFLIGHT {
                let m = format!("{MAX_INFLIGHT} requests already wait for a liveness check");
                let label = x.label.clone();
                self.reply_err(client, req.id, ErrorKind::Busy, &label, &m);
                return None;
            }
            p.held.push((client, req));
            return None;
        }
        if !self.wants_check(r, now) {
            return Some(req);
        }
        self.start_check(r, vec![(client, req)], now);
        None
    }

    /// Starts the liveness check of live root stream `spec` travels on when it has been idle
    /// long enough (`open`: the check overlaps what the client does before its first request;
    /// a request arriving meanwhile is held as usual). Whether a check runs now.
    pub(super) fn check_if_idle(&mut self, spec: &Spec, now: Instant) -> bool {
        let Some(r) = self.live_root(spec) else {
            return false;
        };
        if self.targets[r].probe.is_some() {
            return true;
        }
        if !self.wants_check(r, now) {
            return false;
        }
        self.start_check(r, Vec::new(), now);
        true
    }

    /// Whether root stream `r` must be checked before its next request (module doc).
    fn wants_check(&self, r: TargetId, now: Instant) -> bool {
        let x = &self.targets[r];
        let idle = now.saturating_duration_since(x.last_in);
        x.phase == Phase::Ready
            && x.parent.is_none()
            && x.spec.transport == TransportKind::Ssh
            && x.calls.is_empty()
            && idle >= PROBE_AFTER
    }

    /// Sends root stream `r` its liveness check, holding `held` until it is answered.
    fn start_check(&mut self, r: TargetId, held: Vec<(ClientId, Request)>, now: Instant) {
        let x = &mut self.targets[r];
        let idle = now.saturating_duration_since(x.last_in);
        let wait = Duration::from_secs(x.spec.connect_timeout_secs()).max(PROBE_MIN);
        tracing::debug!(host = %x.label, idle_secs = idle.as_secs(), "idle stream: checking it is alive");
        x.probe = Some(Probe { held });
        let handle = self.internal_call(r, json!({"op": "ping"}), Op::Probe);
        if let Some(c) = self.targets[r].calls.get_mut(&handle) {
            c.deadline = Some(now + wait);
            self.deadline_at(now + wait);
        }
    }

    /// The agent answered the liveness check of stream `t`: its held requests go on.
    pub(super) fn probe_answered(&mut self, t: TargetId) {
        if let Some(p) = self.targets.get_mut(t).and_then(|x| x.probe.take()) {
            self.replay.extend(p.held);
        }
    }

    /// Stream `t` ends: requests held for its check are replayed (on a fresh stream).
    pub(super) fn probe_dropped(&mut self, t: TargetId) {
        if let Some(p) = self.targets.get_mut(t).and_then(|x| x.probe.take()) {
            if !p.held.is_empty() {
                let label = &self.targets[t].label;
                tracing::info!(host = %label, requests = p.held.len(), "the idle stream was gone: starting a new one");
            }
            self.replay.extend(p.held);
        }
    }

    /// A client left: its held requests are dropped.
    pub(super) fn probe_client_gone(&mut self, client: ClientId) {
        for (_, x) in self.targets.iter_mut() {
            if let Some(p) = &mut x.probe {
                p.held.retain(|(c, _)| *c != client);
            }
        }
        self.replay.retain(|(c, _)| *c != client);
    }

    /// Requests released or orphaned by liveness checks, handled now.
    pub(super) fn run_replay(&mut self, now: Instant) {
        // Bounded: each replayed request either starts a call or is held by a new check
        // (a fresh stream is Connecting, never checked), so this does not loop.
        while !self.replay.is_empty() {
            let batch = std::mem::take(&mut self.replay);
            for (client, req) in batch {
                self.request(client, req, now);
            }
        }
    }
}
