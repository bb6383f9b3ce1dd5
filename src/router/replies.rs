//! Replies being assembled from an agent's frames: each call's is capped at
//! [`crate::api::MAX_MESSAGE`], and all of them together at [`REPLIES_MAX`], so N targets
//! answering huge outputs at once cannot hold N × 64 MiB (docs/security.md).
//!
//! Every call's buffer is charged to its router's [`ReplyBudget`] as bytes arrive and
//! released when the reply is taken or the call is dropped, whatever path drops it (done,
//! timed out, abandoned, stream lost), so the total cannot drift.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Bytes of replies in assembly, all targets together, before the call whose frame would
/// pass it fails (`protocol`, the stream and other calls carry on).
pub const REPLIES_MAX: usize = 256 * 1024 * 1024;

/// A router's total of reply bytes in assembly.
#[derive(Debug, Clone)]
pub struct ReplyBudget {
    used: Arc<AtomicUsize>,
    limit: usize,
}

impl Default for ReplyBudget {
    fn default() -> Self {
        ReplyBudget::new(REPLIES_MAX)
    }
}

impl ReplyBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Self {
        ReplyBudget {
            used: Arc::new(AtomicUsize::new(0)),
            limit,
        }
    }

    /// Bytes charged now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }
}

/// Why a call's reply was dropped while it was assembled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// Over [`crate::api::MAX_MESSAGE`] for this call.
    Message,
    /// Over the router's [`ReplyBudget`] for all calls.
    Budget,
}

/// One call's reply so far.
#[derive(Debug, Default)]
pub struct ReplyBuf {
    bytes: Vec<u8>,
    charged_to: Option<ReplyBudget>,
    /// Set once the reply was dropped for a limit; later frames are ignored.
    pub overflow: Option<Overflow>,
}

impl ReplyBuf {
    /// Appends `payload` unless that passes a limit: then the reply so far is dropped (its
    /// memory freed at once) and [`ReplyBuf::overflow`] says which limit.
    pub fn extend(&mut self, payload: &[u8], budget: &ReplyBudget) {
        if self.overflow.is_some() {
            return;
        }
        let own = self.bytes.len().saturating_add(payload.len());
        let all = budget.used().saturating_add(payload.len());
        let over = if own > crate::api::MAX_MESSAGE {
            Some(Overflow::Message)
        } else if all > budget.limit {
            Some(Overflow::Budget)
        } else {
            None
        };
        if over.is_some() {
            self.release();
            self.overflow = over;
            return;
        }
        let charged = self.charged_to.get_or_insert_with(|| budget.clone());
        charged.used.fetch_add(payload.len(), Ordering::Relaxed);
        self.bytes.extend_from_slice(payload);
    }

    /// The reply, uncharged.
    pub fn take(&mut self) -> Vec<u8> {
        let b = std::mem::take(&mut self.bytes);
        if let Some(c) = &self.charged_to {
            c.used.fetch_sub(b.len(), Ordering::Relaxed);
        }
        b
    }

    /// Bytes held.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether nothing is held.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    fn release(&mut self) {
        drop(self.take());
        self.bytes = Vec::new();
    }
}

impl Drop for ReplyBuf {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charged_while_held_released_when_taken_or_dropped() {
        let b = ReplyBudget::new(100);
        let mut r1 = ReplyBuf::default();
        r1.extend(&[0; 40], &b);
        let mut r2 = ReplyBuf::default();
        r2.extend(&[0; 50], &b);
        assert_eq!(b.used(), 90);
        // Over the budget: this call's reply is dropped, the other kept.
        r2.extend(&[0; 20], &b);
        assert_eq!(r2.overflow, Some(Overflow::Budget));
        assert!(r2.is_empty());
        assert_eq!(b.used(), 40);
        r2.extend(&[0; 1], &b);
        assert_eq!(b.used(), 40, "a dropped reply takes no more");
        assert_eq!(r1.take().len(), 40);
        assert_eq!(b.used(), 0);
        let mut r3 = ReplyBuf::default();
        r3.extend(&[0; 60], &b);
        assert_eq!(b.used(), 60);
        drop(r3);
        assert_eq!(b.used(), 0);
    }
}
