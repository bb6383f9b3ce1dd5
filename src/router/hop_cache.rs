//! Via hops' file caches: a file put to targets behind a hop crosses each link once
//! (`cache_put` fills the hop's cache, `relay_put` sends it on from there), with the daemon's
//! view of each hop's cache ([`HopEntry`]), its least-recently-used eviction, and the fallback
//! to a plain put when the cache cannot be used.

use super::calls::{Call, Op};
use super::target::Phase;
use super::{header, ClientId, Router, TargetId, HOP_CACHE_BYTES, HOP_CACHE_MIN};
use crate::proto::{encode_frame, Kind};
use crate::transfer::Source;
use serde_json::json;
use std::time::Instant;

/// A file in a hop's cache, as the daemon knows it.
#[derive(Debug)]
pub(super) enum HopEntry {
    /// Being sent to the hop; these relays go out once it is there.
    Filling { size: u64, waiting: Vec<Relay> },
    /// In the hop's RAM; `seq` orders use (least recently used dropped first).
    Ready { size: u64, seq: u64 },
}

/// A cached file to send from a hop to its child `to`: a target's put, or the child hop's
/// own cache fill.
#[derive(Debug)]
pub(super) struct Relay {
    to: TargetId,
    key: String,
    handle: u32,
    call: serde_json::Value,
    file: Source,
    size: u64,
    sha: String,
    fill: bool,
}

impl Router {
    /// The via hop whose file cache a put of `size` bytes to `t` goes through, if any.
    pub(super) fn cache_hop(&self, t: TargetId, size: u64) -> Option<TargetId> {
        let x = self.targets.get(t)?;
        if !self.hop_cache
            || x.spec.via.is_none()
            || x.spec.is_context()
            || !(HOP_CACHE_MIN..=HOP_CACHE_BYTES / 4).contains(&size)
        {
            return None;
        }
        let p = x.parent?;
        self.targets.get(p).filter(|h| h.phase != Phase::Dead)?;
        Some(p)
    }

    /// Starts a put to `t` that its hop sends from its file cache.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn relayed_put(
        &mut self,
        t: TargetId,
        hop: TargetId,
        client: ClientId,
        id: u64,
        deadline: Option<Instant>,
        payload: serde_json::Value,
        file: Source,
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
        if let Some(d) = deadline {
            self.deadline_at(d);
        }
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
            Some(HopEntry::Ready { seq: s, .. }) => {
                *s = seq;
                return self.send_relay(hop, r);
            }
            Some(HopEntry::Filling { waiting, .. }) => return waiting.push(r),
            None => {}
        }
        if !self.make_room(hop, r.size) {
            return self.relay_fallback(r);
        }
        let (sha, size, file) = (r.sha.clone(), r.size, r.file.clone());
        let h = &mut self.targets[hop];
        h.hop_files.insert(
            sha.clone(),
            HopEntry::Filling {
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
                    HopEntry::Filling { size, .. } | HopEntry::Ready { size, .. } => *size,
                })
                .sum();
            if used + size <= HOP_CACHE_BYTES {
                return true;
            }
            let victim = h
                .hop_files
                .iter()
                .filter_map(|(k, f)| match f {
                    HopEntry::Ready { seq, .. } => Some((*seq, k.clone())),
                    HopEntry::Filling { .. } => None,
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
        // (not for a put given up on while the file went into the cache)
        let Some(ctx) = self
            .targets
            .get(r.to)
            .filter(|y| y.key == r.key && y.phase != Phase::Dead)
            .filter(|y| r.fill || y.calls.contains_key(&r.handle))
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
    pub(super) fn hop_filled(&mut self, hop: TargetId, sha: &str, ok: bool) {
        let Some(h) = self.targets.get_mut(hop) else {
            return;
        };
        let Some(HopEntry::Filling { size, waiting }) = h.hop_files.remove(sha) else {
            return;
        };
        if ok {
            self.hop_seq += 1;
            let seq = self.hop_seq;
            h.hop_files
                .insert(sha.to_string(), HopEntry::Ready { size, seq });
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
