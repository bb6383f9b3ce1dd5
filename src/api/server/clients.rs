//! API clients: reading their requests (as far as the budget of client bytes lets: see
//! `budget`), handing them to the router, queueing and writing their replies, disconnecting
//! them (gone, over the budget, a half-sent request past its deadline).

use super::budget::Verdict;
use super::{fd_usage, key, Server, CLIENT_OUT_LIMIT, TAG_CLIENT};
use crate::api::{self, ErrorKind, MessageDecoder};
use crate::reactor::Interest;
use crate::router::ClientId;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::time::Instant;

/// One API client's connection.
pub(super) struct Client {
    pub(super) stream: UnixStream,
    pub(super) dec: MessageDecoder,
    pub(super) out: Vec<u8>,
    pub(super) out_pos: usize,
    pub(super) writing: bool,
    /// Read interest (false while its message waits for room in the budget).
    pub(super) reading: bool,
    /// Its stream cannot continue (a refused message): once its last answer is written, the
    /// daemon's side is shut down and what it still sends is read and dropped until it closes
    /// (or the partial-request deadline), so a client still writing its message gets the
    /// answer rather than a broken pipe.
    pub(super) closing: bool,
}

impl Server {
    pub(super) fn client_read(&mut self, id: ClientId, now: Instant) {
        if self.client_read_some(id, now) {
            if let Some(c) = self.clients.get_mut(id) {
                c.dec.release();
                let (n, announced) = (c.dec.buffered(), c.dec.announced());
                self.budget.inbound(id, n, announced, now);
            }
            self.enforce_budget();
        }
    }

    /// Reads once from client `id` (if the budget lets it) and handles every whole request.
    /// Returns whether bytes were received.
    fn client_read_some(&mut self, id: ClientId, now: Instant) -> bool {
        let Some(c) = self.clients.get_mut(id) else {
            return false;
        };
        if c.closing {
            // Its last answer is queued: what it sends now is read and dropped.
            match c.stream.read(&mut self.buf) {
                Ok(0) => self.drop_client(id),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => self.drop_client(id),
            }
            return false;
        }
        match self.budget.before_read(id) {
            Verdict::Read => {}
            Verdict::Wait => {
                tracing::debug!(
                    client = id,
                    announced = ?self.budget.held(id).announced,
                    total = self.budget.total(),
                    "API client's request waits for room in the client buffer budget"
                );
                self.set_reading(id, false);
                return false;
            }
            Verdict::TooLarge(announced) => {
                // The message's own length, as the client wrote it (without the prefix).
                let n = announced.saturating_sub(4);
                let limit = self.budget.limit();
                tracing::warn!(
                    client = id,
                    bytes = n,
                    budget = limit,
                    "API client's request is larger than the whole client buffer budget; refused"
                );
                c.closing = true;
                let m = format!(
                    "API message of {n} bytes exceeds the daemon's client buffer budget of \
                     {limit} bytes (serve --client-buffer-mib, SPINDLE_CLIENT_BUFFER_MIB)"
                );
                let msg = api::error(0, ErrorKind::BadRequest, "", &m);
                self.send(id, &msg);
                return false;
            }
        }
        let want = self.budget.read_size(id, self.buf.len());
        match c.stream.read(&mut self.buf[..want]) {
            Ok(0) => {
                self.drop_client(id);
                return false;
            }
            Ok(n) => c.dec.push(&self.buf[..n.min(want)]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return false,
            Err(_) => {
                self.drop_client(id);
                return false;
            }
        }
        loop {
            let Some(c) = self.clients.get_mut(id) else {
                return true;
            };
            if c.closing {
                return true;
            }
            let body = match c.dec.next_message() {
                Ok(Some(b)) => b,
                Ok(None) => return true,
                Err(e) => {
                    c.closing = true;
                    let msg = api::error(0, ErrorKind::BadRequest, "", &e.to_string());
                    self.send(id, &msg);
                    return true;
                }
            };
            match api::parse_request(&body) {
                Ok(req) => {
                    if matches!(req.op, api::Op::Stats(_)) {
                        self.router.fds = fd_usage();
                        self.router.clients = self.client_usage();
                    }
                    self.router.request(id, req, now)
                }
                Err(r) => {
                    let msg = api::error(r.id, r.kind, &r.host, &r.message);
                    self.send(id, &msg);
                }
            }
            self.drain_actions();
        }
    }

    /// Clients and their buffered bytes, for `stats`.
    pub(super) fn client_usage(&self) -> crate::metrics::ClientUsage {
        crate::metrics::ClientUsage {
            connected: self.clients.len() as u64,
            buffered_bytes: self.budget.total() as u64,
            budget_bytes: self.budget.limit() as u64,
            waiting: self.budget.waiting() as u64,
            partial_timeout_s: self.budget.partial_timeout().as_secs_f64(),
            counters: self.budget.counters,
        }
    }

    /// Turns reading client `id` on or off (writing as its queue needs).
    pub(super) fn set_reading(&mut self, id: ClientId, on: bool) {
        let Some(c) = self.clients.get_mut(id) else {
            return;
        };
        if c.reading != on {
            c.reading = on;
            let i = Interest {
                read: on,
                write: c.writing,
            };
            if let Err(e) = self
                .backend
                .modify(c.stream.as_fd(), key(id, TAG_CLIENT), i)
            {
                tracing::debug!(
                    client = id,
                    "cannot change what the API client is watched for: {e}"
                );
            }
        }
    }

    /// While the clients' bytes are over the budget, disconnects the client holding the most
    /// that is not a request in progress (unread replies, a message waiting for room).
    pub(super) fn enforce_budget(&mut self) {
        while let Some((id, h)) = self.budget.over() {
            tracing::warn!(
                client = id,
                unread_reply_bytes = h.outbound,
                request_bytes = h.inbound,
                total = self.budget.total(),
                budget = self.budget.limit(),
                "API client disconnected: bytes buffered for clients are over the budget \
                 and it holds the most of them not being consumed"
            );
            self.budget.counters.evicted += 1;
            self.drop_client(id);
        }
    }

    /// Disconnects clients whose partial request got no byte for the deadline.
    pub(super) fn expire_partial_requests(&mut self, now: Instant) {
        for (id, h) in self.budget.expired(now) {
            tracing::warn!(
                client = id,
                received_bytes = h.inbound,
                announced_bytes = ?h.announced,
                "API client sent part of a request and then nothing for {:?}; disconnecting",
                self.budget.partial_timeout()
            );
            self.budget.counters.timed_out += 1;
            self.drop_client(id);
        }
    }

    pub(super) fn send(&mut self, id: ClientId, body: &[u8]) {
        let Some(c) = self.clients.get_mut(id) else {
            return;
        };
        // A client that reads while replies keep coming never empties its queue: drop what
        // it has read once that is at least half of the queue.
        if c.out_pos >= 64 * 1024 && c.out_pos >= c.out.len().saturating_sub(c.out_pos) {
            c.out.drain(..c.out_pos);
            c.out_pos = 0;
        }
        api::frame_message(&mut c.out, body);
        let unsent = c.out.len().saturating_sub(c.out_pos);
        if unsent > CLIENT_OUT_LIMIT {
            tracing::warn!(
                client = id,
                unread_reply_bytes = unsent,
                "API client is not reading its replies; disconnecting"
            );
            return self.drop_client(id);
        }
        self.budget.outbound(id, unsent);
        self.client_flush(id);
        self.enforce_budget();
    }

    pub(super) fn client_flush(&mut self, id: ClientId) {
        let Some(c) = self.clients.get_mut(id) else {
            return;
        };
        while c.out_pos < c.out.len() {
            match c.stream.write(&c.out[c.out_pos..]) {
                Ok(n) => c.out_pos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.drop_client(id),
            }
        }
        if c.out_pos == c.out.len() {
            if c.out.capacity() > 1024 * 1024 {
                c.out = Vec::new();
            } else {
                c.out.clear();
            }
            c.out_pos = 0;
            if c.closing {
                if let Err(e) = c.stream.shutdown(std::net::Shutdown::Write) {
                    tracing::debug!(client = id, "shutdown: {e}");
                    return self.drop_client(id);
                }
            }
        }
        self.budget
            .outbound(id, c.out.len().saturating_sub(c.out_pos));
        let want = c.out_pos < c.out.len();
        if want != c.writing {
            c.writing = want;
            let i = Interest {
                read: c.reading,
                write: want,
            };
            let _ = self
                .backend
                .modify(c.stream.as_fd(), key(id, TAG_CLIENT), i);
        }
    }

    pub(super) fn drop_client(&mut self, id: ClientId) {
        self.budget.remove(id);
        if let Some(c) = self.clients.try_remove(id) {
            let _ = self.backend.delete(c.stream.as_fd());
            self.router.client_gone(id);
            tracing::debug!(client = id, "API client gone");
        }
    }
}
