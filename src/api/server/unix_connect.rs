//! Transport `unix`: connecting a target's socket without blocking the loop (EINPROGRESS
//! waits for writability, EAGAIN retries with backoff), then watching it both ways.

use super::procs::Proc;
use super::{key, Server, TAG_STDOUT};
use crate::reactor::Interest;
use crate::router::TargetId;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

/// First retry delay of a `unix` connect refused with EAGAIN (listener backlog full); doubles
/// up to [`CONNECT_RETRY_MAX`] until it connects or the router's connect timeout fails it.
const CONNECT_RETRY_MIN: Duration = Duration::from_millis(2);
const CONNECT_RETRY_MAX: Duration = Duration::from_millis(50);

/// A nonblocking `connect` that did not complete at once.
pub(super) struct Connecting {
    addr: rustix::net::SocketAddrUnix,
    /// EAGAIN (Unix listener backlog full): the socket stays unconnected and unregistered
    /// (polling it reports hang-up, not "connect possible"), so connect is retried at this
    /// time. `None`: EINPROGRESS, the socket is registered for writability and SO_ERROR
    /// tells the outcome.
    retry_at: Option<Instant>,
    backoff: Duration,
}

/// What one nonblocking connect attempt gave.
enum ConnectStep {
    Done,
    InProgress,
    Retry,
}

impl Server {
    /// Transport `unix`: the agent protocol over a Unix socket (the scale-test fleet
    /// simulator serves thousands of targets this way). One socket, one fd, registered once
    /// for reading and, while bytes wait, writing: ten thousand streams fit in 10,000 fds.
    ///
    /// The connect never blocks the loop: the socket is nonblocking, and a listener that
    /// does not accept (backlog full: EAGAIN) is retried with backoff, an EINPROGRESS connect
    /// waits for writability and reads SO_ERROR. Either way the router's connect timeout
    /// bounds the wait (its `Kill` drops the half-made stream).
    pub(super) fn connect_unix(&mut self, t: TargetId, spec: &crate::transport::Spec) {
        use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
        let path = spec.host.clone().unwrap_or_default();
        let made = SocketAddrUnix::new(path.as_str()).and_then(|addr| {
            let flags = SocketFlags::NONBLOCK | SocketFlags::CLOEXEC;
            let fd =
                rustix::net::socket_with(AddressFamily::UNIX, SocketType::STREAM, flags, None)?;
            Ok((addr, fd))
        });
        let (addr, sock) = match made {
            Ok(x) => x,
            Err(e) => {
                let m = format!("Connection refused: {path}: {}", io::Error::from(e));
                return self.router.target_closed(t, &m);
            }
        };
        let step = match try_connect(&sock, &addr) {
            Ok(s) => s,
            Err(e) => {
                let m = format!("Connection refused: {path}: {e}");
                return self.router.target_closed(t, &m);
            }
        };
        let connecting = match step {
            ConnectStep::Done => None,
            ConnectStep::InProgress => Some(Box::new(Connecting {
                addr,
                retry_at: None,
                backoff: CONNECT_RETRY_MIN,
            })),
            ConnectStep::Retry => Some(Box::new(Connecting {
                addr,
                retry_at: Some(Instant::now() + CONNECT_RETRY_MIN),
                backoff: CONNECT_RETRY_MIN,
            })),
        };
        let interest = match &connecting {
            None => Some(Interest {
                read: true,
                write: true,
            }),
            Some(c) if c.retry_at.is_none() => Some(Interest::WRITE),
            Some(_) => None,
        };
        if let Some(i) = interest {
            if self
                .backend
                .add(sock.as_fd(), key(t, TAG_STDOUT), i)
                .is_err()
            {
                return self.router.target_closed(t, "cannot watch the socket");
            }
        }
        if connecting.as_ref().is_some_and(|c| c.retry_at.is_some()) {
            tracing::debug!(
                target_id = t,
                path,
                "unix connect: listener backlog full; retrying"
            );
            self.retrying.insert(t);
        }
        self.procs.insert(
            t,
            Proc {
                child: None,
                stdin: None,
                stdout: Some(sock),
                stderr: None,
                tail: Vec::new(),
                late: 0,
                stderr_log: crate::router::LogLimiter::default(),
                duplex: true,
                writing: true,
                stdout_eof_at: None,
                connecting,
                _askpass: None,
            },
        );
    }

    /// When the earliest connect retry is due.
    pub(super) fn next_retry(&self) -> Option<Instant> {
        self.retrying
            .iter()
            .filter_map(|t| self.procs.get(t)?.connecting.as_ref()?.retry_at)
            .min()
    }

    /// Calls connect again on every `unix` socket whose retry is due.
    pub(super) fn retry_connects(&mut self, now: Instant) {
        let due: Vec<TargetId> = self
            .retrying
            .iter()
            .copied()
            .filter(
                |t| match self.procs.get(t).and_then(|p| p.connecting.as_ref()) {
                    Some(c) => c.retry_at.is_some_and(|at| at <= now),
                    None => false,
                },
            )
            .collect();
        // Forget targets that were killed (connect timeout) or connected meanwhile.
        let procs = &self.procs;
        self.retrying.retain(|t| {
            procs
                .get(t)
                .and_then(|p| p.connecting.as_ref())
                .is_some_and(|c| c.retry_at.is_some())
        });
        for t in due {
            self.connect_step(t, now);
        }
    }

    /// The socket of a connecting `unix` target became writable (EINPROGRESS finished).
    pub(super) fn connect_ready(&mut self, t: TargetId) {
        let Some(p) = self.procs.get(&t) else { return };
        let Some(fd) = p.stdout.as_ref() else { return };
        let res = match rustix::net::sockopt::get_socket_error(fd) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) | Err(e) => Err(io::Error::from(e)),
        };
        match res {
            Ok(()) => self.connected(t),
            Err(e) => self.connect_failed(t, &e),
        }
    }

    /// One more connect attempt after EAGAIN.
    fn connect_step(&mut self, t: TargetId, now: Instant) {
        let Some(p) = self.procs.get_mut(&t) else {
            return;
        };
        let (Some(fd), Some(c)) = (p.stdout.as_ref(), p.connecting.as_mut()) else {
            return;
        };
        match try_connect(fd, &c.addr) {
            Ok(ConnectStep::Done) => self.connected(t),
            Ok(ConnectStep::Retry) => {
                c.backoff = (c.backoff * 2).min(CONNECT_RETRY_MAX);
                c.retry_at = Some(now + c.backoff);
                self.retrying.insert(t);
            }
            Ok(ConnectStep::InProgress) => {
                c.retry_at = None;
                self.retrying.remove(&t);
                if self
                    .backend
                    .add(fd.as_fd(), key(t, TAG_STDOUT), Interest::WRITE)
                    .is_err()
                {
                    self.router.target_closed(t, "cannot watch the socket");
                }
            }
            Err(e) => self.connect_failed(t, &e),
        }
    }

    /// The connect completed: watch the socket both ways (bytes may already wait).
    fn connected(&mut self, t: TargetId) {
        let Some(p) = self.procs.get_mut(&t) else {
            return;
        };
        let Some(c) = p.connecting.take() else { return };
        self.retrying.remove(&t);
        let Some(fd) = p.stdout.as_ref() else { return };
        p.writing = true;
        let both = Interest {
            read: true,
            write: true,
        };
        let k = key(t, TAG_STDOUT);
        let res = if c.retry_at.is_some() {
            self.backend.add(fd.as_fd(), k, both)
        } else {
            self.backend.modify(fd.as_fd(), k, both)
        };
        tracing::debug!(target_id = t, "unix connect completed");
        if res.is_err() {
            self.router.target_closed(t, "cannot watch the socket");
        }
    }

    fn connect_failed(&mut self, t: TargetId, e: &io::Error) {
        let path = self
            .router
            .spec(t)
            .and_then(|s| s.host.clone())
            .unwrap_or_default();
        self.retrying.remove(&t);
        let m = format!("Connection refused: {path}: {e}");
        self.router.target_closed(t, &m);
    }
}

/// One nonblocking connect attempt. EAGAIN (a Unix listener's backlog is full) asks for a
/// retry: Unix sockets have no pending-connect state to wait on.
fn try_connect(fd: &OwnedFd, addr: &rustix::net::SocketAddrUnix) -> io::Result<ConnectStep> {
    use rustix::io::Errno;
    loop {
        return match rustix::net::connect_unix(fd, addr) {
            Ok(()) => Ok(ConnectStep::Done),
            Err(Errno::ISCONN) => Ok(ConnectStep::Done),
            Err(Errno::INPROGRESS) | Err(Errno::ALREADY) => Ok(ConnectStep::InProgress),
            Err(Errno::AGAIN) => Ok(ConnectStep::Retry),
            Err(Errno::INTR) => continue,
            Err(e) => Err(e.into()),
        };
    }
}
