//! The daemon-wide budget of bytes buffered for API clients, and the deadline of a partial
//! request. Sans-IO: the server reports what each client holds and the time; this decides
//! whether a client may be read, which client to disconnect, and which have stalled.
//!
//! What is counted for a client: the request bytes received and not yet handled (at most one
//! partial message once the complete ones are handled) and the reply bytes not yet written.
//! A message in progress whose length prefix has arrived is *admitted* before more of it is
//! read: its whole size is then charged (so every admitted message can complete within the
//! budget; no two half-received messages wait for each other's room). Until then its client is
//! read [`SMALL_READ`] bytes at a time: a small request arrives whole, and a client left
//! waiting holds little. A message fits when the admitted messages and the unread replies
//! leave room for it (bytes of messages not admitted, the waiting ones', are not in the way:
//! waiting clients cannot block each other); one that does not fit waits, its client not
//! read, until enough is freed (backpressure); one larger than the whole budget is refused. A
//! message of at most [`RESERVE`] bytes is always admitted, so a well-behaved client with
//! small requests is served while others hold the budget.
//!
//! The total can still pass the budget: replies are produced by the router whatever a client
//! reads, small messages are taken unconditionally, and so is the first read of a message
//! (before its length is known). Then the client with the most bytes
//! not backed by a progressing request (unread replies, or a message still waiting for
//! admission) is disconnected, the largest first, until the total fits again ([`over`]).
//! An admitted message is not a candidate: it either completes or stalls, and a stall is
//! ended by the partial-request deadline ([`expired`]): a client that has sent part of a
//! message and then nothing for the deadline is disconnected. A client with nothing partial is
//! never timed out (the plugin keeps its connection open between tasks), nor is one waiting
//! for admission (its wait is the daemon's doing; its deadline restarts when admitted).
//!
//! [`over`]: ClientBudget::over
//! [`expired`]: ClientBudget::expired

use crate::router::ClientId;
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// Default budget of buffered client bytes, all clients together (256 MiB).
pub const DEFAULT_BUDGET: usize = 256 * 1024 * 1024;
/// Default deadline for the rest of a partial request (30 s).
pub const DEFAULT_PARTIAL_TIMEOUT: Duration = Duration::from_secs(30);
/// A message of at most this many bytes (length prefix included) is admitted whatever the
/// budget holds (one read's worth): small requests are never made to wait.
pub const RESERVE: usize = 256 * 1024;

/// Bytes read at once from a client whose message is not admitted (its length prefix not in
/// yet, or waiting for room): a small request still arrives whole (or in a few reads), and a
/// client left waiting holds little.
pub const SMALL_READ: usize = 16 * 1024;

/// What one client holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Held {
    /// Request bytes received and not yet handled.
    pub inbound: usize,
    /// Size (length prefix included) of the message in progress, once its prefix is in.
    pub announced: Option<usize>,
    /// The size admitted for the message in progress (charged in full).
    pub admitted: Option<usize>,
    /// Reply bytes not yet written.
    pub outbound: usize,
    /// Waiting for admission: the client is not read.
    pub waiting: bool,
    /// Since when a partial message has had no new byte (None: nothing partial).
    pub partial_since: Option<Instant>,
}

impl Held {
    /// Bytes charged to the budget.
    pub fn charge(&self) -> usize {
        let inbound = match (self.admitted, self.announced) {
            (Some(a), Some(n)) if a == n => self.inbound.max(a),
            _ => self.inbound,
        };
        inbound.saturating_add(self.outbound)
    }

    /// Bytes not backed by an admitted request: what disconnecting the client frees for sure
    /// and what it holds for no progress of its own.
    pub fn evictable(&self) -> usize {
        self.unadmitted().saturating_add(self.outbound)
    }

    /// Request bytes of a message not admitted.
    fn unadmitted(&self) -> usize {
        if self.is_admitted() {
            0
        } else {
            self.inbound
        }
    }

    fn is_admitted(&self) -> bool {
        self.announced.is_some() && self.admitted == self.announced
    }
}

/// Whether a client may be read now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Read it.
    Read,
    /// Do not read it until [`ClientBudget::resume`] names it.
    Wait,
    /// Its message (this many bytes) can never fit: refuse it.
    TooLarge(usize),
}

/// Counts reported by `stats` (under `clients`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct BudgetCounters {
    /// Clients disconnected because the total was over the budget.
    pub evicted: u64,
    /// Clients disconnected at the partial-request deadline.
    pub timed_out: u64,
    /// Messages refused as larger than the whole budget.
    pub refused: u64,
    /// Times a client was made to wait for room.
    pub waits: u64,
}

/// The budget and every client's share of it.
#[derive(Debug)]
pub struct ClientBudget {
    limit: usize,
    partial_timeout: Duration,
    clients: HashMap<ClientId, Held>,
    total: usize,
    /// Bytes of messages not admitted (part of `total`).
    unadmitted: usize,
    queue: VecDeque<ClientId>,
    /// No waiting client fits while the committed bytes (`total - unadmitted`) are at least
    /// this (each failed to fit at a figure no higher, and fitting only gets harder as it
    /// grows): [`resume`] is then a comparison, not a walk of the queue.
    ///
    /// [`resume`]: ClientBudget::resume
    blocked_at: usize,
    /// What the budget did so far.
    pub counters: BudgetCounters,
}

impl ClientBudget {
    /// A budget of `limit` bytes; a partial request may stall for `partial_timeout`.
    pub fn new(limit: usize, partial_timeout: Duration) -> ClientBudget {
        ClientBudget {
            limit,
            partial_timeout,
            clients: HashMap::new(),
            total: 0,
            unadmitted: 0,
            queue: VecDeque::new(),
            blocked_at: 0,
            counters: BudgetCounters::default(),
        }
    }

    /// The budget in bytes.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes charged, all clients together.
    pub fn total(&self) -> usize {
        self.total
    }

    /// Clients waiting for admission.
    pub fn waiting(&self) -> usize {
        self.queue.len()
    }

    /// What `id` holds (default if unknown).
    pub fn held(&self, id: ClientId) -> Held {
        self.clients.get(&id).copied().unwrap_or_default()
    }

    /// Bytes of admitted messages and unread replies: what admission must fit beside.
    fn committed(&self) -> usize {
        self.total.saturating_sub(self.unadmitted)
    }

    /// Changes what `id` holds, keeping the sums (saturating: never panics).
    fn update(&mut self, id: ClientId, f: impl FnOnce(&mut Held)) {
        let h = self.clients.entry(id).or_default();
        let (old, old_un) = (h.charge(), h.unadmitted());
        f(h);
        let (new, new_un) = (h.charge(), h.unadmitted());
        self.total = self.total.saturating_sub(old).saturating_add(new);
        self.unadmitted = self
            .unadmitted
            .saturating_sub(old_un)
            .saturating_add(new_un);
    }

    /// After a read (or handling requests): `id` holds `inbound` request bytes, of a message
    /// of `announced` bytes if its prefix is in. Any byte received restarts its deadline.
    pub fn inbound(
        &mut self,
        id: ClientId,
        inbound: usize,
        announced: Option<usize>,
        now: Instant,
    ) {
        self.update(id, |h| {
            h.inbound = inbound;
            h.announced = announced;
            if announced.is_none() || h.admitted != announced {
                h.admitted = None;
            }
            h.partial_since = (inbound > 0).then_some(now);
        });
    }

    /// `id` has `outbound` reply bytes not yet written.
    pub fn outbound(&mut self, id: ClientId, outbound: usize) {
        self.update(id, |h| h.outbound = outbound);
    }

    /// `id` is gone: its bytes are freed.
    pub fn remove(&mut self, id: ClientId) {
        if let Some(h) = self.clients.remove(&id) {
            self.total = self.total.saturating_sub(h.charge());
            self.unadmitted = self.unadmitted.saturating_sub(h.unadmitted());
            if h.waiting {
                self.queue.retain(|&c| c != id);
            }
        }
    }

    /// Whether admitting `h`'s message of `n` bytes keeps the admitted messages and unread
    /// replies within the budget.
    fn fits(&self, h: &Held, n: usize) -> bool {
        let mut with = *h;
        with.admitted = Some(n);
        let own = h.charge().saturating_sub(h.unadmitted());
        let committed = self
            .committed()
            .saturating_sub(own)
            .saturating_add(with.charge());
        committed <= self.limit
    }

    /// Before reading `id`: read it, make it wait, or refuse its message. Admits the message
    /// in progress when it fits (or is small).
    pub fn before_read(&mut self, id: ClientId) -> Verdict {
        let h = self.held(id);
        let Some(n) = h.announced else {
            return Verdict::Read;
        };
        if h.is_admitted() {
            return Verdict::Read;
        }
        if h.waiting {
            return Verdict::Wait;
        }
        if n > self.limit {
            self.counters.refused += 1;
            return Verdict::TooLarge(n);
        }
        if n <= RESERVE || self.fits(&h, n) {
            self.update(id, |h| h.admitted = Some(n));
            return Verdict::Read;
        }
        self.counters.waits += 1;
        self.blocked_at = if self.queue.is_empty() {
            self.committed()
        } else {
            self.blocked_at.max(self.committed())
        };
        self.update(id, |h| {
            h.waiting = true;
            h.partial_since = None;
        });
        self.queue.push_back(id);
        Verdict::Wait
    }

    /// How many bytes to read from `id` at most, given a read buffer of `full` bytes: all of
    /// it for an admitted message, else [`SMALL_READ`] (enough for a small request and for the
    /// length prefix of a large one).
    pub fn read_size(&self, id: ClientId, full: usize) -> usize {
        if self.clients.get(&id).is_some_and(|h| h.is_admitted()) {
            full
        } else {
            full.min(SMALL_READ)
        }
    }

    /// Makes the next [`resume`](ClientBudget::resume) walk the whole queue (called once a
    /// tick: `blocked_at` is exact for everything but a waiting client's own unread replies
    /// growing while others' shrink).
    pub fn recheck(&mut self) {
        self.blocked_at = usize::MAX;
    }

    /// Admits the waiting clients whose message now fits, oldest first (a later, smaller one
    /// may pass one that does not fit yet). The server reads them again; their deadline
    /// starts now.
    pub fn resume(&mut self, now: Instant) -> Vec<ClientId> {
        let mut admitted = Vec::new();
        if self.queue.is_empty() || self.committed() >= self.blocked_at {
            return admitted;
        }
        let mut i = 0;
        while i < self.queue.len() {
            let id = self.queue[i];
            let h = self.held(id);
            let n = h.announced.unwrap_or(0);
            if self.fits(&h, n) {
                self.queue.remove(i);
                self.update(id, |h| {
                    h.waiting = false;
                    h.admitted = h.announced;
                    h.partial_since = (h.inbound > 0).then_some(now);
                });
                admitted.push(id);
            } else {
                i += 1;
            }
        }
        self.blocked_at = self.committed();
        admitted
    }

    /// While the total is over the budget: the client to disconnect (the most evictable
    /// bytes; the lowest id among equals), with what it holds. None when within the budget or
    /// when no client holds evictable bytes.
    pub fn over(&self) -> Option<(ClientId, Held)> {
        if self.total <= self.limit {
            return None;
        }
        self.clients
            .iter()
            .filter(|(_, h)| h.evictable() > 0)
            .max_by(|(a, x), (b, y)| x.evictable().cmp(&y.evictable()).then(b.cmp(a)))
            .map(|(&id, &h)| (id, h))
    }

    /// Clients whose partial message had no new byte for the deadline (not those waiting
    /// for admission), lowest id first.
    pub fn expired(&self, now: Instant) -> Vec<(ClientId, Held)> {
        let mut v: Vec<(ClientId, Held)> = self
            .clients
            .iter()
            .filter(|(_, h)| {
                !h.waiting
                    && h.partial_since
                        .is_some_and(|t| now.saturating_duration_since(t) >= self.partial_timeout)
            })
            .map(|(&id, &h)| (id, h))
            .collect();
        v.sort_by_key(|(id, _)| *id);
        v
    }

    /// Whether a client has part of a request and is not waiting for admission (its deadline
    /// runs: [`ClientBudget::expired`]).
    pub fn partial_pending(&self) -> bool {
        self.clients
            .values()
            .any(|h| !h.waiting && h.partial_since.is_some())
    }

    /// The partial-request deadline.
    pub fn partial_timeout(&self) -> Duration {
        self.partial_timeout
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1024 * 1024;

    fn budget(mib: usize) -> ClientBudget {
        ClientBudget::new(mib * MIB, Duration::from_secs(30))
    }

    fn sum(b: &ClientBudget) -> usize {
        b.clients.values().map(|h| h.charge()).sum()
    }

    #[test]
    fn a_large_message_is_charged_in_full_once_admitted() {
        let mut b = budget(100);
        let t = Instant::now();
        b.inbound(1, 4096, Some(60 * MIB), t);
        assert_eq!(b.total(), 4096);
        assert_eq!(b.before_read(1), Verdict::Read);
        assert_eq!(b.total(), 60 * MIB);
        // More of the same message: still charged its size, still read.
        b.inbound(1, 30 * MIB, Some(60 * MIB), t);
        assert_eq!(b.total(), 60 * MIB);
        assert_eq!(b.before_read(1), Verdict::Read);
        // Handled: nothing left.
        b.inbound(1, 0, None, t);
        assert_eq!(b.total(), 0);
        assert_eq!(b.total(), sum(&b));
    }

    #[test]
    fn a_message_that_does_not_fit_waits_and_is_admitted_when_room_is_freed() {
        let mut b = budget(100);
        let t = Instant::now();
        b.inbound(1, 1000, Some(60 * MIB), t);
        assert_eq!(b.before_read(1), Verdict::Read);
        b.inbound(2, 1000, Some(60 * MIB), t);
        assert_eq!(b.before_read(2), Verdict::Wait);
        assert_eq!(b.before_read(2), Verdict::Wait);
        assert_eq!(b.waiting(), 1);
        assert_eq!(b.counters.waits, 1);
        assert!(b.resume(t).is_empty());
        // A small request is still taken meanwhile.
        b.inbound(3, 100, Some(200), t);
        assert_eq!(b.before_read(3), Verdict::Read);
        b.recheck();
        assert!(b.resume(t).is_empty(), "a walk finds it still does not fit");
        b.remove(1);
        assert_eq!(b.resume(t), vec![2]);
        assert_eq!(b.before_read(2), Verdict::Read);
        assert_eq!(b.total(), 60 * MIB + 200);
        assert_eq!(b.total(), sum(&b));
    }

    #[test]
    fn a_client_is_read_in_small_pieces_until_its_message_is_admitted() {
        let mut b = budget(1);
        let t = Instant::now();
        let full = 256 * 1024;
        assert_eq!(b.read_size(1, full), SMALL_READ);
        b.inbound(1, 100, Some(200_000), t);
        assert_eq!(b.read_size(1, full), SMALL_READ);
        assert_eq!(b.before_read(1), Verdict::Read);
        assert_eq!(b.read_size(1, full), full);
        b.inbound(1, 100, Some(300_000), t);
        assert_eq!(b.read_size(1, full), SMALL_READ, "the next message");
    }

    #[test]
    fn waiting_clients_cannot_block_each_other() {
        // 25 clients each hold 256 KiB of a 60 MiB message (read while there was room): the
        // first one's message fits beside the admitted ones (none), whatever the others hold.
        let mut b = budget(64);
        let t = Instant::now();
        for id in 0..25 {
            b.inbound(id, 256 * 1024, Some(60 * MIB), t);
        }
        assert_eq!(b.before_read(0), Verdict::Read);
        for id in 1..25 {
            assert_eq!(b.before_read(id), Verdict::Wait);
        }
        // Over the budget: waiting clients' bytes go, the admitted message stays.
        let mut evicted = 0;
        while let Some((id, _)) = b.over() {
            assert_ne!(id, 0);
            b.remove(id);
            evicted += 1;
        }
        // 60 MiB + 24 × 256 KiB = 66 MiB: 8 of them go, 16 (4 MiB) stay.
        assert_eq!(evicted, 8);
        b.remove(0);
        assert_eq!(b.resume(t).len(), 1, "the next one is admitted");
        assert_eq!(b.total(), sum(&b));
    }

    #[test]
    fn a_message_larger_than_the_budget_is_refused() {
        let mut b = budget(8);
        b.inbound(1, 8, Some(9 * MIB), Instant::now());
        assert_eq!(b.before_read(1), Verdict::TooLarge(9 * MIB));
        assert_eq!(b.counters.refused, 1);
    }

    #[test]
    fn small_messages_are_admitted_over_the_budget() {
        let mut b = budget(1);
        let t = Instant::now();
        b.outbound(1, 2 * MIB);
        b.inbound(2, 10, Some(RESERVE), t);
        assert_eq!(b.before_read(2), Verdict::Read);
        b.inbound(3, 10, Some(RESERVE + 1), t);
        assert_eq!(b.before_read(3), Verdict::Wait);
    }

    #[test]
    fn over_the_budget_the_largest_unread_replies_go_first_not_an_admitted_request() {
        let mut b = budget(100);
        let t = Instant::now();
        b.inbound(1, 1000, Some(90 * MIB), t);
        assert_eq!(b.before_read(1), Verdict::Read);
        b.outbound(2, 5 * MIB);
        b.outbound(3, 8 * MIB);
        b.outbound(4, 8 * MIB);
        assert_eq!(b.total(), 111 * MIB);
        let (id, h) = b.over().unwrap();
        assert_eq!((id, h.outbound), (3, 8 * MIB), "largest, lowest id");
        b.remove(3);
        assert_eq!(b.over().map(|(id, _)| id), Some(4));
        b.remove(4);
        assert_eq!(b.over(), None);
        assert_eq!(b.total(), 95 * MIB);
        assert_eq!(b.total(), sum(&b));
    }

    #[test]
    fn a_waiting_clients_bytes_are_evictable() {
        let mut b = budget(10);
        let t = Instant::now();
        b.inbound(1, 100, Some(8 * MIB), t);
        assert_eq!(b.before_read(1), Verdict::Read);
        b.inbound(2, 200_000, Some(8 * MIB), t);
        assert_eq!(b.before_read(2), Verdict::Wait);
        b.outbound(3, 2 * MIB);
        let (id, _) = b.over().unwrap();
        assert_eq!(id, 3);
        b.remove(3);
        assert_eq!(b.over(), None);
        // Ten clients with 190 kB of unread replies each pass the budget: the waiting one
        // (200 kB) goes first.
        for id in 10..20 {
            b.outbound(id, 190_000);
        }
        assert_eq!(b.over().map(|(id, _)| id), Some(2), "waiting, 200 kB");
        b.remove(2);
        assert_eq!(b.waiting(), 0);
        assert_eq!(b.over(), None);
        assert_eq!(b.total(), sum(&b));
    }

    #[test]
    fn only_a_stalled_partial_message_times_out() {
        let mut b = budget(100);
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(31);
        // Idle: nothing partial.
        b.inbound(1, 0, None, t0);
        // Sent half a length prefix.
        b.inbound(2, 2, None, t0);
        // Sent part of a message, then more at t0 + 10 s.
        b.inbound(3, 100, Some(1000), t0);
        b.inbound(3, 500, Some(1000), t0 + Duration::from_secs(10));
        // Unread replies only.
        b.outbound(4, 1000);
        // Waiting for admission.
        b.inbound(5, 100, Some(90 * MIB), t0);
        b.inbound(6, 100, Some(90 * MIB), t0);
        assert_eq!(b.before_read(5), Verdict::Read);
        assert_eq!(b.before_read(6), Verdict::Wait);
        let ids: Vec<ClientId> = b.expired(later).iter().map(|(id, _)| *id).collect();
        assert_eq!(ids, vec![2, 5]);
        let ids: Vec<ClientId> = b
            .expired(t0 + Duration::from_secs(41))
            .iter()
            .map(|(id, _)| *id)
            .collect();
        assert_eq!(ids, vec![2, 3, 5]);
        // Admitted later: its deadline starts then.
        b.remove(5);
        assert_eq!(b.resume(later), vec![6]);
        assert!(b.expired(later).iter().all(|(id, _)| *id != 6));
        assert!(b
            .expired(later + Duration::from_secs(30))
            .iter()
            .any(|(id, _)| *id == 6));
    }

    #[test]
    fn a_new_message_after_an_admitted_one_is_admitted_afresh() {
        let mut b = budget(100);
        let t = Instant::now();
        b.inbound(1, 100, Some(60 * MIB), t);
        assert_eq!(b.before_read(1), Verdict::Read);
        b.inbound(2, 100, Some(30 * MIB), t);
        assert_eq!(b.before_read(2), Verdict::Read);
        // Client 1's message is handled; the next one (50 MiB) does not fit beside client 2's.
        b.inbound(1, 100, Some(80 * MIB), t);
        assert_eq!(b.total(), 30 * MIB + 100);
        assert_eq!(b.before_read(1), Verdict::Wait);
        b.inbound(2, 0, None, t);
        assert_eq!(b.resume(t), vec![1]);
        assert_eq!(b.total(), 80 * MIB);
    }

    #[test]
    fn arithmetic_saturates() {
        let mut b = ClientBudget::new(usize::MAX, Duration::from_secs(1));
        let t = Instant::now();
        b.outbound(1, usize::MAX);
        b.inbound(1, usize::MAX, Some(usize::MAX), t);
        assert_eq!(b.before_read(1), Verdict::Read);
        b.outbound(2, usize::MAX);
        assert_eq!(b.total(), usize::MAX);
        assert_eq!(b.over(), None);
        b.remove(1);
        b.remove(2);
        assert_eq!(b.total(), 0);
    }
}
