//! Module code for nested contexts by reference: the code blobs a call to a context (a target
//! behind a via hop, a become context) needs cross each link once.
//!
//! A context's CALL names its missing blobs by hash (`"blob_refs"`, flag
//! [`flags::REFS`](crate::proto::flags::REFS)) instead of carrying them; the agent that writes
//! the frame into the context's input (its parent) puts them in from its own blob store. The
//! parent gets each blob once, by a `store_blobs` call that is itself inline (a stream's own
//! agent) or by reference to the parent's parent, recursively. So 20 web hosts behind one
//! gateway pull a module's code over the controller–gateway link once, and a become task reuses
//! the code its login agent already holds.
//!
//! Ordering: the `store_blobs` frames must reach the parent's agent before the context's CALL.
//! They go straight onto the root stream's queue when the call is made (not into the parent's
//! own queue, whose window may hold them back), or, while the parent itself is still starting,
//! wait beside it (`held_stores`) and go onto the root stream's queue the moment it runs,
//! ahead of its own queued frames (among them the one that starts this context). The
//! context's CALL leaves only once the context runs, so after them. Their bytes count against
//! the parent's window (`unacked`): the agent that feeds the parent credits them as for any of
//! its frames. `serve --no-hop-cache` sends every blob inline instead. Inline blobs travel
//! zlib-compressed (`"blobs_z"`, [`crate::cache::BlobCache::packed`]), and an agent passes
//! the compressed form on as it came.

use super::calls::{Call, Op};
use super::target::Phase;
use super::{encode_call, Router, TargetId};
use crate::proto::{self, flags};
use serde_json::json;

/// Room left in one frame for the refs themselves: a CALL named by refs is never split.
const REFS_SLACK: usize = 64 * 1024;

impl Router {
    /// Whether a call to `t` that needs `hashes` (blobs its agent lacks, all in the daemon's
    /// cache: the caller checked) can name them by
    /// reference: then its parent will hold them before the call arrives (their `store_blobs`
    /// is queued), and the CALL of `body_len` bytes carries only the hashes.
    pub(super) fn blobs_by_ref(&mut self, t: TargetId, hashes: &[String], body_len: usize) -> bool {
        let refs_len = hashes.iter().map(|h| h.len() + 3).sum::<usize>();
        if !self.hop_cache || body_len + refs_len + REFS_SLACK > proto::MAX_PAYLOAD {
            return false;
        }
        let Some(p) = self.live_parent(t) else {
            return false;
        };
        self.store_on(p, hashes);
        true
    }

    /// `t`'s parent, if `t` is a context whose parent has not failed.
    fn live_parent(&self, t: TargetId) -> Option<TargetId> {
        let p = self.targets.get(t)?.parent?;
        self.targets.get(p).filter(|x| x.phase != Phase::Dead)?;
        Some(p)
    }

    /// Makes `p`'s agent hold `hashes` (all in the daemon's cache): a `store_blobs` call for
    /// those it lacks, inline for a stream's own agent, else by reference to its parent.
    fn store_on(&mut self, p: TargetId, hashes: &[String]) {
        let need: Vec<String> = hashes
            .iter()
            .filter(|h| !self.targets[p].sent_blobs.contains(*h))
            .cloned()
            .collect();
        if need.is_empty() {
            return;
        }
        let pp = self.live_parent(p);
        let (payload, fl) = match pp {
            Some(pp) => {
                self.store_on(pp, &need);
                (json!({"op": "store_blobs", "blob_refs": need}), flags::REFS)
            }
            None => {
                let blobs = self.packed_blobs(&need);
                (json!({"op": "store_blobs", "blobs_z": blobs}), 0)
            }
        };
        let body = serde_json::to_vec(&payload).unwrap_or_default();
        let x = &mut self.targets[p];
        let handle = x.take_handle();
        let mut frames = Vec::new();
        let n = encode_call(&mut frames, &body, fl, handle, x.ctx);
        x.counters.frames_out += n;
        self.counters.frames_out += n;
        x.counters.blobs_pushed += need.len() as u64;
        x.sent_blobs.extend(need);
        x.calls
            .insert(handle, Call::new(None, 0, Op::StoreBlobs, None));
        tracing::debug!(host = %x.label, bytes = frames.len(), by_ref = pp.is_some(), "store_blobs");
        if pp.is_some() && x.phase != Phase::Ready {
            x.held_stores.extend_from_slice(&frames);
        } else {
            self.queue_on_root(p, &frames);
        }
    }

    /// Context `p` runs now: its held `store_blobs` frames go out ahead of its queue.
    pub(super) fn release_held_stores(&mut self, p: TargetId) {
        let Some(x) = self.targets.get_mut(p) else {
            return;
        };
        if !x.held_stores.is_empty() {
            let frames = std::mem::take(&mut x.held_stores);
            self.queue_on_root(p, &frames);
        }
    }

    /// Appends `p`'s frames to its root stream's queue at once (past its window; counted in it).
    fn queue_on_root(&mut self, p: TargetId, frames: &[u8]) {
        let root = self.root_of(p);
        self.targets[root]
            .out
            .with_bytes(|b| b.extend_from_slice(frames));
        if root != p {
            // Credited back by the agent that writes them into p's input.
            self.targets[p].unacked += frames.len();
        }
        self.touched.push(root);
    }

    /// `"blobs_z"` of a CALL: each blob (all in the cache) as base64 of its zlib compression.
    pub(super) fn packed_blobs(&mut self, hashes: &[String]) -> serde_json::Value {
        let mut blobs = serde_json::Map::new();
        for h in hashes {
            if let Some(packed) = self.cache.packed(h) {
                blobs.insert(h.clone(), serde_json::Value::String(packed.to_string()));
            }
        }
        serde_json::Value::Object(blobs)
    }

    /// A `store_blobs` failed on `p`'s agent: forget what it was sent, so the next call that
    /// needs a blob sends it again.
    pub(super) fn store_failed(&mut self, p: TargetId, message: &str) {
        if let Some(x) = self.targets.get_mut(p) {
            tracing::warn!(host = %x.label, message, "storing module code on the agent failed");
            x.sent_blobs.clear();
        }
    }
}
