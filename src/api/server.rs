//! The daemon's I/O loop: accepts API clients on a private Unix socket, spawns target
//! processes, and moves bytes between them and the sans-IO [`Router`]. One thread drives every
//! stream; no thread per target. Every descriptor is nonblocking and level-triggered.

use super::{MessageDecoder, Request};
use crate::reactor::{new_backend, Backend, Interest, IoBackend, Ready};
use crate::router::{Action, ClientId, Router, TargetId};
use std::collections::{HashMap, HashSet};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const TAG_LISTENER: usize = 0;
const TAG_CLIENT: usize = 1;
const TAG_STDOUT: usize = 2;
const TAG_STDIN: usize = 3;
const TAG_STDERR: usize = 4;
/// A client whose unread replies exceed this is disconnected (it is not reading).
const CLIENT_OUT_LIMIT: usize = 256 * 1024 * 1024;
/// Bytes of a target's stderr kept for error messages.
const STDERR_TAIL: usize = 8 * 1024;
/// How long to wait for stderr to close after stdout did, before classifying the failure.
const STDERR_GRACE: Duration = Duration::from_millis(500);
const TICK: Duration = Duration::from_millis(100);
/// First retry delay of a `unix` connect refused with EAGAIN (listener backlog full); doubles
/// up to [`CONNECT_RETRY_MAX`] until it connects or the router's connect timeout fails it.
const CONNECT_RETRY_MIN: Duration = Duration::from_millis(2);
const CONNECT_RETRY_MAX: Duration = Duration::from_millis(50);

fn key(id: usize, tag: usize) -> usize {
    (id << 3) | tag
}

/// Why the daemon could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Binding the socket failed.
    #[error("cannot listen on {path}: {source}")]
    Bind {
        /// Socket path.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
    /// A socket of that name is in use by a live daemon.
    #[error("{0} is already served by a running daemon")]
    InUse(PathBuf),
    /// The event loop failed.
    #[error("event loop: {0}")]
    Reactor(#[from] io::Error),
}

/// Daemon settings.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Socket path.
    pub socket: PathBuf,
    /// Event-loop backend.
    pub io: IoBackend,
    /// Move `put` payload with splice(2); false forces read/write (for comparison runs).
    pub splice: bool,
    /// Become contexts kept per target (see [`crate::router::DEFAULT_MAX_INTERPRETERS`]).
    pub max_interpreters: usize,
}

struct Client {
    stream: UnixStream,
    dec: MessageDecoder,
    out: Vec<u8>,
    out_pos: usize,
    writing: bool,
    closing: bool,
}

/// A target's I/O: a child process's pipes, or (transport `unix`) one socket used both ways.
struct Proc {
    child: Option<Child>,
    stdin: Option<OwnedFd>,
    stdout: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
    tail: Vec<u8>,
    /// One socket both ways (in `stdout`; `stdin` is None).
    duplex: bool,
    writing: bool,
    stdout_eof_at: Option<Instant>,
    /// A `unix` socket whose connect has not completed (its fd is in `stdout`). Boxed: a
    /// socket address is ~110 bytes, and every stream's `Proc` would carry it.
    connecting: Option<Box<Connecting>>,
}

/// A nonblocking `connect` that did not complete at once.
struct Connecting {
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

/// The running daemon.
pub struct Server {
    backend: Box<dyn Backend>,
    listener: UnixListener,
    socket: PathBuf,
    clients: slab::Slab<Client>,
    procs: HashMap<TargetId, Proc>,
    router: Router,
    uid: u32,
    askpass: Option<PathBuf>,
    zombies: Vec<Child>,
    /// `unix` targets waiting to retry a connect (see [`Connecting::retry_at`]).
    retrying: HashSet<TargetId>,
    shutdown: bool,
    buf: Vec<u8>,
}

/// Binds `path` with mode 0600 (a stale socket file is replaced; a live one is an error).
fn bind_private(path: &Path) -> Result<UnixListener, ServerError> {
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(ServerError::InUse(path.into()));
        }
        let _ = std::fs::remove_file(path);
    }
    let old = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o177));
    let res = UnixListener::bind(path);
    rustix::process::umask(old);
    res.map_err(|source| ServerError::Bind {
        path: path.into(),
        source,
    })
}

impl Server {
    /// Binds the socket and sets up the loop.
    pub fn bind(opts: &ServeOptions) -> Result<Server, ServerError> {
        let listener = bind_private(&opts.socket)?;
        listener.set_nonblocking(true)?;
        let mut backend = new_backend(opts.io)?;
        backend.add(listener.as_fd(), key(0, TAG_LISTENER), Interest::READ)?;
        tracing::info!(socket = %opts.socket.display(), io = backend.name(), "spindle daemon listening");
        let mut router = Router::new();
        router.backend = backend.name();
        router.splice = opts.splice;
        router.max_interpreters = opts.max_interpreters;
        // SPINDLE_NO_HOP_CACHE=1: files for targets behind a via hop are sent once per target
        // (for comparison runs).
        router.hop_cache = std::env::var_os("SPINDLE_NO_HOP_CACHE").is_none();
        Ok(Server {
            backend,
            listener,
            socket: opts.socket.clone(),
            clients: slab::Slab::new(),
            procs: HashMap::new(),
            router,
            uid: rustix::process::getuid().as_raw(),
            askpass: std::env::current_exe().ok(),
            zombies: Vec::new(),
            retrying: HashSet::new(),
            shutdown: false,
            buf: vec![0u8; 256 * 1024],
        })
    }

    /// Name of the event-loop backend in use.
    pub fn backend_name(&self) -> &'static str {
        self.backend.name()
    }

    /// Runs until a `shutdown` request.
    pub fn run(mut self) -> Result<(), ServerError> {
        let mut events: Vec<Ready> = Vec::with_capacity(1024);
        let mut last_tick = Instant::now();
        loop {
            events.clear();
            let timeout = self.next_retry().map_or(TICK, |at| {
                at.saturating_duration_since(Instant::now()).min(TICK)
            });
            self.backend.wait(Some(timeout), &mut events)?;
            let now = Instant::now();
            if !self.retrying.is_empty() {
                self.retry_connects(now);
                self.drain_actions();
            }
            for ev in &events {
                self.dispatch(*ev, now);
                self.drain_actions();
            }
            if now.duration_since(last_tick) >= TICK {
                last_tick = now;
                self.router.tick(now);
                self.check_half_closed(now);
                self.zombies
                    .retain_mut(|c| !matches!(c.try_wait(), Ok(Some(_)) | Err(_)));
            }
            self.drain_actions();
            if self.shutdown && self.clients.iter().all(|(_, c)| c.out_pos == c.out.len()) {
                break;
            }
        }
        self.stop_all();
        let _ = std::fs::remove_file(&self.socket);
        tracing::info!("spindle daemon stopped");
        Ok(())
    }

    fn dispatch(&mut self, ev: Ready, now: Instant) {
        let (id, tag) = (ev.key >> 3, ev.key & 7);
        match tag {
            TAG_LISTENER => self.accept(),
            TAG_CLIENT => {
                if ev.readable {
                    self.client_read(id, now);
                }
                if ev.writable {
                    self.client_flush(id);
                }
            }
            TAG_STDOUT => {
                if self.procs.get(&id).is_some_and(|p| p.connecting.is_some()) {
                    return self.connect_ready(id);
                }
                // A duplex socket (transport `unix`) is one fd for both directions.
                if ev.readable {
                    self.proc_stdout(id, now);
                }
                if ev.writable {
                    self.proc_stdin(id);
                }
            }
            TAG_STDERR => self.proc_stderr(id),
            TAG_STDIN => self.proc_stdin(id),
            _ => {}
        }
    }

    fn accept(&mut self) {
        loop {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    return;
                }
            };
            match rustix::net::sockopt::get_socket_peercred(&stream) {
                Ok(cred) if cred.uid.as_raw() == self.uid => {}
                Ok(cred) => {
                    tracing::warn!(uid = cred.uid.as_raw(), "refused API client of another uid");
                    continue;
                }
                Err(e) => {
                    tracing::warn!("refused API client: no peer credentials: {e}");
                    continue;
                }
            }
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            let entry = self.clients.vacant_entry();
            let id = entry.key();
            if let Err(e) = self
                .backend
                .add(stream.as_fd(), key(id, TAG_CLIENT), Interest::READ)
            {
                tracing::warn!("cannot watch API client: {e}");
                continue;
            }
            tracing::debug!(client = id, "API client connected");
            entry.insert(Client {
                stream,
                dec: MessageDecoder::default(),
                out: Vec::new(),
                out_pos: 0,
                writing: false,
                closing: false,
            });
        }
    }

    fn client_read(&mut self, id: ClientId, now: Instant) {
        let Some(c) = self.clients.get_mut(id) else {
            return;
        };
        match c.stream.read(&mut self.buf) {
            Ok(0) => return self.drop_client(id),
            Ok(n) => c.dec.push(&self.buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return,
            Err(_) => return self.drop_client(id),
        }
        loop {
            let Some(c) = self.clients.get_mut(id) else {
                return;
            };
            if c.closing {
                return;
            }
            let body = match c.dec.next_message() {
                Ok(Some(b)) => b,
                Ok(None) => return,
                Err(e) => {
                    c.closing = true;
                    let msg = super::error(0, "bad_request", "", &e.to_string());
                    self.send(id, &msg);
                    return;
                }
            };
            match serde_json::from_slice::<Request>(&body) {
                Ok(req) => self.router.request(id, req, now),
                Err(e) => {
                    let rid = serde_json::from_slice::<serde_json::Value>(&body)
                        .ok()
                        .and_then(|v| v["id"].as_u64())
                        .unwrap_or(0);
                    let msg = super::error(rid, "bad_request", "", &format!("bad request: {e}"));
                    self.send(id, &msg);
                }
            }
            self.drain_actions();
        }
    }

    fn send(&mut self, id: ClientId, body: &[u8]) {
        let Some(c) = self.clients.get_mut(id) else {
            return;
        };
        super::frame_message(&mut c.out, body);
        if c.out.len() - c.out_pos > CLIENT_OUT_LIMIT {
            tracing::warn!(
                client = id,
                "API client is not reading its replies; disconnecting"
            );
            return self.drop_client(id);
        }
        self.client_flush(id);
    }

    fn client_flush(&mut self, id: ClientId) {
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
            c.out.clear();
            c.out_pos = 0;
            if c.closing {
                return self.drop_client(id);
            }
        }
        let want = c.out_pos < c.out.len();
        if want != c.writing {
            c.writing = want;
            let i = Interest {
                read: true,
                write: want,
            };
            let _ = self
                .backend
                .modify(c.stream.as_fd(), key(id, TAG_CLIENT), i);
        }
    }

    fn drop_client(&mut self, id: ClientId) {
        if let Some(c) = self.clients.try_remove(id) {
            let _ = self.backend.delete(c.stream.as_fd());
            self.router.client_gone(id);
            tracing::debug!(client = id, "API client gone");
        }
    }

    fn drain_actions(&mut self) {
        while let Some(a) = self.router.poll_action() {
            match a {
                Action::Spawn(t) => self.spawn(t),
                Action::Reply(c, body) => self.send(c, &body),
                Action::Kill(t) => self.kill(t),
                Action::Shutdown => self.shutdown = true,
            }
        }
        for t in self.router.take_touched() {
            self.proc_stdin(t);
        }
    }

    fn spawn(&mut self, t: TargetId) {
        let Some(spec) = self.router.spec(t).cloned() else {
            return;
        };
        if spec.transport == crate::transport::TransportKind::Unix {
            return self.connect_unix(t, &spec);
        }
        let (argv, env) = match crate::transport::command(&spec, self.askpass.as_deref()) {
            Ok(l) => (l.argv, l.env),
            Err(e) => return self.router.target_closed(t, &e.to_string()),
        };
        tracing::debug!(host = %spec.label(), argv = ?&argv[..argv.len() - 1], "spawning");
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        for (k, v) in &env {
            cmd.env(k, v);
        }
        if spec.password.is_some() {
            cmd.env("SPINDLE_ASKPASS_MODE", "1");
        }
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                let m = format!("cannot run {}: {e}", argv[0]);
                return self.router.target_closed(t, &m);
            }
        };
        let (stdin, stdout, stderr) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take());
        let (Some(stdin), Some(stdout), Some(stderr)) = (stdin, stdout, stderr) else {
            let _ = child.kill();
            return self.router.target_closed(t, "child pipes missing");
        };
        let (stdin, stdout, stderr) = (
            OwnedFd::from(stdin),
            OwnedFd::from(stdout),
            OwnedFd::from(stderr),
        );
        let regs = [
            (stdin.as_fd(), key(t, TAG_STDIN), Interest::WRITE),
            (stdout.as_fd(), key(t, TAG_STDOUT), Interest::READ),
            (stderr.as_fd(), key(t, TAG_STDERR), Interest::READ),
        ];
        for (fd, k, i) in regs {
            let ok =
                rustix::io::ioctl_fionbio(fd, true).is_ok() && self.backend.add(fd, k, i).is_ok();
            if !ok {
                for (fd, _, _) in regs {
                    let _ = self.backend.delete(fd);
                }
                let _ = child.kill();
                self.zombies.push(child);
                return self
                    .router
                    .target_closed(t, "cannot watch the child's pipes");
            }
        }
        self.procs.insert(
            t,
            Proc {
                child: Some(child),
                stdin: Some(stdin),
                stdout: Some(stdout),
                stderr: Some(stderr),
                tail: Vec::new(),
                duplex: false,
                writing: true,
                stdout_eof_at: None,
                connecting: None,
            },
        );
    }

    /// Transport `unix`: the agent protocol over a Unix socket (the scale-test fleet
    /// simulator serves thousands of targets this way). One socket, one fd, registered once
    /// for reading and, while bytes wait, writing: ten thousand streams fit in 10,000 fds.
    ///
    /// The connect never blocks the loop: the socket is nonblocking, and a listener that
    /// does not accept (backlog full: EAGAIN) is retried with backoff, an EINPROGRESS connect
    /// waits for writability and reads SO_ERROR. Either way the router's connect timeout
    /// bounds the wait (its `Kill` drops the half-made stream).
    fn connect_unix(&mut self, t: TargetId, spec: &crate::transport::Spec) {
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
                duplex: true,
                writing: true,
                stdout_eof_at: None,
                connecting,
            },
        );
    }

    /// When the earliest connect retry is due.
    fn next_retry(&self) -> Option<Instant> {
        self.retrying
            .iter()
            .filter_map(|t| self.procs.get(t)?.connecting.as_ref()?.retry_at)
            .min()
    }

    /// Calls connect again on every `unix` socket whose retry is due.
    fn retry_connects(&mut self, now: Instant) {
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
    fn connect_ready(&mut self, t: TargetId) {
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

    fn proc_stdin(&mut self, t: TargetId) {
        let Some(p) = self.procs.get_mut(&t) else {
            return;
        };
        if p.connecting.is_some() {
            return; // `connected` turns write interest on
        }
        let fd = if p.duplex {
            p.stdout.as_ref()
        } else {
            p.stdin.as_ref()
        };
        let Some(fd) = fd else {
            return;
        };
        if let Err(e) = self.router.flush_into(t, fd.as_fd()) {
            // The agent's side is gone; EOF on its output will follow and classify it.
            tracing::debug!(target_id = t, "write to agent failed: {e}");
            if !p.duplex {
                deregister(&mut *self.backend, &mut p.stdin);
                return;
            }
        }
        let Some(p) = self.procs.get_mut(&t) else {
            return;
        };
        let want = self.router.wants_write(t);
        if want == p.writing {
            return;
        }
        p.writing = want;
        let (fd, k, i) = if p.duplex {
            (
                p.stdout.as_ref(),
                key(t, TAG_STDOUT),
                Interest {
                    read: true,
                    write: want,
                },
            )
        } else {
            (
                p.stdin.as_ref(),
                key(t, TAG_STDIN),
                Interest {
                    read: false,
                    write: want,
                },
            )
        };
        if let Some(fd) = fd {
            let _ = self.backend.modify(fd.as_fd(), k, i);
        }
    }

    fn proc_stdout(&mut self, t: TargetId, now: Instant) {
        let Some(p) = self.procs.get_mut(&t) else {
            return;
        };
        let Some(out) = p.stdout.as_mut() else { return };
        match rustix::io::read(out.as_fd(), &mut self.buf[..]).map_err(io::Error::from) {
            Ok(0) => {
                deregister(&mut *self.backend, &mut p.stdout);
                p.stdout_eof_at = Some(now);
                if p.stderr.is_none() {
                    self.closed(t);
                }
            }
            Ok(n) => {
                self.router.target_bytes(t, &self.buf[..n], now);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) => {}
            Err(_) => {
                deregister(&mut *self.backend, &mut p.stdout);
                p.stdout_eof_at = Some(now);
            }
        }
    }

    fn proc_stderr(&mut self, t: TargetId) {
        let Some(p) = self.procs.get_mut(&t) else {
            return;
        };
        let Some(err) = p.stderr.as_mut() else { return };
        match rustix::io::read(err.as_fd(), &mut self.buf[..]).map_err(io::Error::from) {
            Ok(0) | Err(_) => {
                deregister(&mut *self.backend, &mut p.stderr);
                if p.stdout.is_none() {
                    self.closed(t);
                }
            }
            Ok(n) => {
                let chunk = &self.buf[..n];
                if tracing::enabled!(tracing::Level::DEBUG) {
                    for line in String::from_utf8_lossy(chunk).lines() {
                        tracing::debug!(target_id = t, "stderr: {line}");
                    }
                }
                p.tail.extend_from_slice(chunk);
                if p.tail.len() > STDERR_TAIL {
                    let cut = p.tail.len() - STDERR_TAIL;
                    p.tail.drain(..cut);
                }
            }
        }
    }

    fn check_half_closed(&mut self, now: Instant) {
        let late: Vec<TargetId> = self
            .procs
            .iter()
            .filter(|(_, p)| {
                p.stdout_eof_at
                    .is_some_and(|at| now.duration_since(at) > STDERR_GRACE)
            })
            .map(|(t, _)| *t)
            .collect();
        for t in late {
            self.closed(t);
        }
    }

    fn closed(&mut self, t: TargetId) {
        let tail = self
            .procs
            .get(&t)
            .map(|p| String::from_utf8_lossy(&p.tail).into_owned())
            .unwrap_or_default();
        self.router.target_closed(t, &tail);
        self.drain_actions();
    }

    fn kill(&mut self, t: TargetId) {
        self.retrying.remove(&t);
        if let Some(mut p) = self.procs.remove(&t) {
            deregister(&mut *self.backend, &mut p.stdin);
            deregister(&mut *self.backend, &mut p.stdout);
            deregister(&mut *self.backend, &mut p.stderr);
            if let Some(mut child) = p.child {
                let _ = child.kill();
                if !matches!(child.try_wait(), Ok(Some(_))) {
                    self.zombies.push(child);
                }
            }
        }
        self.router.release(t);
    }

    fn stop_all(&mut self) {
        let ts: Vec<TargetId> = self.procs.keys().copied().collect();
        for t in ts {
            if let Some(mut p) = self.procs.remove(&t) {
                // Closing stdin lets the agent exit on its own; then make sure of it.
                deregister(&mut *self.backend, &mut p.stdin);
                deregister(&mut *self.backend, &mut p.stdout);
                deregister(&mut *self.backend, &mut p.stderr);
                if let Some(mut child) = p.child {
                    let _ = child.kill();
                    let _ = child.wait();
                }
            }
        }
        for mut z in self.zombies.drain(..) {
            let _ = z.wait();
        }
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

/// Stops watching and closes one of a child's pipes.
fn deregister<T: AsFd>(backend: &mut dyn Backend, slot: &mut Option<T>) {
    if let Some(s) = slot.take() {
        let fd: BorrowedFd<'_> = s.as_fd();
        let _ = backend.delete(fd);
    }
}

/// Runs a daemon on `socket` in a background thread (used by the CLI when no daemon is given).
pub fn spawn_in_thread(
    opts: ServeOptions,
) -> Result<std::thread::JoinHandle<Result<(), ServerError>>, ServerError> {
    let server = Server::bind(&opts)?;
    std::thread::Builder::new()
        .name("spindle-daemon".into())
        .spawn(move || server.run())
        .map_err(ServerError::Reactor)
}
