//! The daemon's I/O loop: accepts API clients on a private Unix socket, spawns target
//! processes, and moves bytes between them and the sans-IO [`Router`]. One thread drives every
//! stream; no thread per target. Every descriptor is nonblocking and level-triggered.
//!
//! Bounds on clients: bytes buffered for all clients together (partial requests and unread
//! replies) stay within [`ServeOptions::client_budget`] (`budget`: a message is admitted
//! before it is read, small ones always; over the budget the client holding the most unread
//! replies or unadmitted bytes is disconnected); a partial request that gets no byte for
//! [`ServeOptions::partial_timeout`] is dropped; one client's unread replies never pass
//! [`CLIENT_OUT_LIMIT`]. An idle client (nothing partial) is kept however long.
//!
//! This file holds the loop and the listener; `clients` owns the API clients' connections
//! (read, write, disconnect), `budget` the accounting of their bytes, `procs` the target
//! processes' pipes (spawn, read, write, kill) and `unix_connect` the nonblocking connect of
//! transport `unix` sockets. The router's local file requests (put sources, fetch files) go to
//! [`crate::fileio::Files`], whose workers wake the loop through an eventfd.

mod budget;
mod clients;
mod procs;
mod unix_connect;

use budget::ClientBudget;
pub use budget::{BudgetCounters, DEFAULT_BUDGET, DEFAULT_PARTIAL_TIMEOUT};
use clients::Client;

use super::MessageDecoder;
use crate::fileio::Files;
use crate::reactor::{new_backend, Backend, Interest, IoBackend, Ready};
use crate::router::{Action, Router, TargetId};
use procs::Proc;
use std::collections::{HashMap, HashSet};
use std::io;
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const TAG_LISTENER: usize = 0;
const TAG_CLIENT: usize = 1;
const TAG_STDOUT: usize = 2;
const TAG_STDIN: usize = 3;
const TAG_STDERR: usize = 4;
/// The file workers' wake-up eventfd (see [`crate::fileio`]).
const TAG_FILES: usize = 5;
/// A client whose unread replies exceed this is disconnected (it is not reading).
const CLIENT_OUT_LIMIT: usize = 256 * 1024 * 1024;
/// How often the server's own chores run while any is pending (a partial request's deadline,
/// clients waiting for budget, a half-closed target, an unreaped child); with none pending
/// the loop sleeps until the router's next deadline ([`Router::poll_timeout`]), the idle
/// limit, or input.
const TICK: Duration = Duration::from_millis(100);
/// The longest wait for input: how soon a stop requested by a signal is seen.
const STOP_CHECK: Duration = Duration::from_millis(500);
/// After `accept` fails for want of descriptors (EMFILE, ENFILE, ...), the listener is not
/// polled for this long: the loop does not spin on a connection it cannot take.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);
/// Failed accepts are logged at most this often (with their count).
const ACCEPT_LOG_EVERY: Duration = Duration::from_secs(1);

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
    /// Something other than a socket is at the path: it is left alone.
    #[error("{path} exists and is {what}, not a socket: refusing to replace it (choose another --socket / SPINDLE_SOCKET, or remove it yourself)")]
    NotASocket {
        /// Socket path.
        path: PathBuf,
        /// What is there (`a regular file`, `a directory`, `a symbolic link`, ...).
        what: &'static str,
    },
    /// A socket is at the path but a connect to it failed otherwise than "refused", so it is
    /// not known to be stale: it is left alone.
    #[error(
        "{path} is a socket that may still be in use (connect: {source}): refusing to replace it"
    )]
    NotStale {
        /// Socket path.
        path: PathBuf,
        /// Why the connect failed.
        source: io::Error,
    },
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
    /// Send files for targets behind a via hop through the hops' file caches.
    pub hop_cache: bool,
    /// Bytes buffered for API clients, all together (see [`DEFAULT_BUDGET`]).
    pub client_budget: usize,
    /// How long a partial request may go without a byte (see [`DEFAULT_PARTIAL_TIMEOUT`]).
    pub partial_timeout: Duration,
    /// Exit once no API client has been connected for this long (a daemon that outlives the
    /// playbook, like ssh's ControlPersist); `None`: run until `shutdown` or a signal.
    pub idle_exit: Option<Duration>,
}

impl ServeOptions {
    /// Defaults for everything but the socket.
    pub fn new(socket: PathBuf) -> ServeOptions {
        ServeOptions {
            socket,
            io: IoBackend::Auto,
            splice: true,
            max_interpreters: crate::router::DEFAULT_MAX_INTERPRETERS,
            hop_cache: true,
            client_budget: DEFAULT_BUDGET,
            partial_timeout: DEFAULT_PARTIAL_TIMEOUT,
            idle_exit: None,
        }
    }
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
    /// `unix` targets waiting to retry a connect (see [`unix_connect::Connecting::retry_at`]).
    retrying: HashSet<TargetId>,
    shutdown: bool,
    /// See [`ServeOptions::idle_exit`].
    idle_exit: Option<Duration>,
    /// When the last API client left (or the daemon started); reset while any is connected.
    idle_since: Instant,
    buf: Vec<u8>,
    /// The listener is not polled until then (see [`ACCEPT_PAUSE`]).
    accept_paused_until: Option<Instant>,
    /// Failed accepts since the last report, and when that was.
    accept_failures: u64,
    accept_reported: Option<Instant>,
    /// Bytes buffered for clients (see `budget`).
    budget: ClientBudget,
    /// The router's local file requests, carried out (see [`crate::fileio`]).
    files: Files,
}

/// Binds `path` with mode 0600. Only a stale socket is replaced: a socket whose connect is
/// refused (no daemon listens). A live socket, a regular file, a directory, a symbolic link
/// (even to a socket) or anything else at `path` is an error and is left untouched.
fn bind_private(path: &Path) -> Result<UnixListener, ServerError> {
    use std::os::unix::fs::FileTypeExt as _;
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(ServerError::Bind {
                path: path.into(),
                source,
            })
        }
        Ok(md) => {
            let ft = md.file_type();
            let what = if ft.is_socket() {
                None
            } else if ft.is_file() {
                Some("a regular file")
            } else if ft.is_dir() {
                Some("a directory")
            } else if ft.is_symlink() {
                Some("a symbolic link")
            } else if ft.is_fifo() {
                Some("a named pipe")
            } else {
                Some("a device or other special file")
            };
            if let Some(what) = what {
                return Err(ServerError::NotASocket {
                    path: path.into(),
                    what,
                });
            }
            match UnixStream::connect(path) {
                Ok(_) => return Err(ServerError::InUse(path.into())),
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    tracing::info!(socket = %path.display(), "replacing a stale socket");
                    std::fs::remove_file(path).map_err(|source| ServerError::Bind {
                        path: path.into(),
                        source,
                    })?;
                }
                Err(source) => {
                    return Err(ServerError::NotStale {
                        path: path.into(),
                        source,
                    })
                }
            }
        }
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
        let files = Files::new(crate::fileio::WORKERS)?;
        if let Some(fd) = files.wake_fd() {
            backend.add(fd, key(0, TAG_FILES), Interest::READ)?;
        }
        let mut router = Router::new();
        router.backend = backend.name();
        router.splice = opts.splice;
        router.max_interpreters = opts.max_interpreters;
        router.hop_cache = opts.hop_cache;
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
            idle_exit: opts.idle_exit,
            idle_since: Instant::now(),
            buf: vec![0u8; 256 * 1024],
            accept_paused_until: None,
            accept_failures: 0,
            accept_reported: None,
            budget: ClientBudget::new(opts.client_budget, opts.partial_timeout),
            files,
        })
    }

    /// Name of the event-loop backend in use.
    pub fn backend_name(&self) -> &'static str {
        self.backend.name()
    }

    /// Runs until a `shutdown` request, or SIGTERM/SIGINT once [`stop_on_signals`] was
    /// called. However it ends, the target processes are stopped and the socket file removed.
    pub fn run(mut self) -> Result<(), ServerError> {
        self.serve()
        // Drop stops the targets and removes the socket.
    }

    fn serve(&mut self) -> Result<(), ServerError> {
        let mut events: Vec<Ready> = Vec::with_capacity(1024);
        let mut last_tick = Instant::now();
        loop {
            if stop_requested() {
                tracing::info!("stopping on a signal");
                return Ok(());
            }
            events.clear();
            let before = Instant::now();
            let chores = self.chores_pending();
            let wake = [
                self.next_retry(),
                self.accept_paused_until,
                chores.then_some(last_tick + TICK),
                self.idle_deadline(),
                self.router.poll_timeout(before).map(|d| before + d),
            ]
            .into_iter()
            .flatten()
            .min();
            // A signal interrupts the wait only when this thread takes it: the stop flag is
            // looked at least every STOP_CHECK (nothing else runs on such a wake-up).
            let timeout = wake.map_or(STOP_CHECK, |at| {
                at.saturating_duration_since(before).min(STOP_CHECK)
            });
            let timeout = Some(timeout);
            self.backend.wait(timeout, &mut events)?;
            let now = Instant::now();
            if self.accept_paused_until.is_some_and(|at| now >= at) {
                self.accept_paused_until = None;
                let fd = self.listener.as_fd();
                self.backend
                    .modify(fd, key(0, TAG_LISTENER), Interest::READ)?;
            }
            if !self.retrying.is_empty() {
                self.retry_connects(now);
                self.drain_actions();
            }
            for ev in &events {
                self.dispatch(*ev, now);
                self.drain_actions();
            }
            if self.budget.waiting() > 0 {
                for id in self.budget.resume(now) {
                    self.set_reading(id, true);
                }
            }
            // (`chores` as found before the wait: one that became pending meanwhile is seen
            // at the next turn, before the next wait, so the scan of targets is done once.)
            if chores && now.duration_since(last_tick) >= TICK {
                last_tick = now;
                self.expire_partial_requests(now);
                self.budget.recheck();
                self.check_half_closed(now);
                if tracing::enabled!(tracing::Level::DEBUG) {
                    self.report_stderr_drops(now);
                }
                self.zombies
                    .retain_mut(|c| !matches!(c.try_wait(), Ok(Some(_)) | Err(_)));
            }
            if self.router.poll_timeout(now) == Some(Duration::ZERO) {
                self.router.tick(now);
            }
            if self.idle_expired(now) {
                return Ok(());
            }
            self.drain_actions();
            if self.shutdown && self.clients.iter().all(|(_, c)| c.out_pos == c.out.len()) {
                return Ok(());
            }
        }
    }

    /// Whether any of the server's own timed chores is pending (see [`TICK`]).
    fn chores_pending(&self) -> bool {
        self.budget.partial_pending()
            || self.budget.waiting() > 0
            || !self.zombies.is_empty()
            || self.procs.values().any(|p| p.stdout_eof_at.is_some())
            || tracing::enabled!(tracing::Level::DEBUG)
    }

    /// When the idle limit ends the daemon, if no client is connected.
    fn idle_deadline(&self) -> Option<Instant> {
        let limit = self.idle_exit?;
        self.clients
            .is_empty()
            .then(|| self.idle_since.checked_add(limit))
            .flatten()
    }

    /// True when `idle_exit` is set and no API client has been connected for that long.
    fn idle_expired(&mut self, now: Instant) -> bool {
        let Some(limit) = self.idle_exit else {
            return false;
        };
        if !self.clients.is_empty() {
            self.idle_since = now;
            return false;
        }
        let idle = now.saturating_duration_since(self.idle_since);
        if idle < limit {
            return false;
        }
        tracing::info!(
            idle_secs = idle.as_secs(),
            streams = self.router.streams(),
            "no API client for the idle limit: exiting"
        );
        true
    }

    fn dispatch(&mut self, ev: Ready, now: Instant) {
        let (id, tag) = (ev.key >> 3, ev.key & 7);
        match tag {
            TAG_LISTENER => self.accept(now),
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
            TAG_FILES => self.files.woken(), // the answers are taken in `drain_actions`
            TAG_STDIN => self.proc_stdin(id),
            _ => {}
        }
    }

    fn accept(&mut self, now: Instant) {
        loop {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return self.accept_failed(&e, now),
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
                reading: true,
                closing: false,
            });
        }
    }

    /// An accept failed: out of descriptors (or memory), stop polling the listener for
    /// [`ACCEPT_PAUSE`] (the pending connection stays in the backlog); log at most once per
    /// [`ACCEPT_LOG_EVERY`], with the count.
    fn accept_failed(&mut self, e: &io::Error, now: Instant) {
        use rustix::io::Errno;
        self.accept_failures += 1;
        let short = e.raw_os_error().is_some_and(|n| {
            [Errno::MFILE, Errno::NFILE, Errno::NOBUFS, Errno::NOMEM]
                .iter()
                .any(|x| x.raw_os_error() == n)
        });
        if short {
            self.accept_paused_until = now.checked_add(ACCEPT_PAUSE);
            let fd = self.listener.as_fd();
            if let Err(e) = self
                .backend
                .modify(fd, key(0, TAG_LISTENER), Interest::NONE)
            {
                tracing::debug!("cannot pause the listener: {e}");
            }
        }
        if self.accept_reported.map_or(true, |at| {
            now.saturating_duration_since(at) >= ACCEPT_LOG_EVERY
        }) {
            let n = std::mem::take(&mut self.accept_failures);
            let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
            tracing::warn!(
                failures = n,
                fd_limit = ?limit,
                "accept failed: {e}{}",
                if short { "; pausing new API clients for 100 ms" } else { "" }
            );
            self.accept_reported = Some(now);
        }
    }

    /// Carries out what the router asks for (actions, local file requests) until it asks for
    /// nothing more, handing file answers back; then writes to the targets whose queues grew.
    /// File requests go first, before any action the router asked for after them: a client
    /// answered sees the files as they end (a failed fetch's temp file already removed).
    fn drain_actions(&mut self) {
        loop {
            self.submit_file_ops();
            while let Some((token, done)) = self.files.poll_done() {
                self.router.file_done(token, done, Instant::now());
                self.submit_file_ops();
            }
            let Some(a) = self.router.poll_action() else {
                break;
            };
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

    /// Hands the router's pending file requests to [`Files`] (quick ones done at once).
    fn submit_file_ops(&mut self) {
        while let Some(op) = self.router.poll_file_op() {
            self.files.submit(op);
        }
    }
}

/// Descriptors per target stream of a spawned transport (stdin, stdout, stderr pipes).
const FDS_PER_TARGET: u64 = 3;

/// The process's descriptors now (counted in /proc/self/fd) and its limits.
fn fd_usage() -> crate::metrics::FdUsage {
    let open = std::fs::read_dir("/proc/self/fd")
        .map(|d| (d.count() as u64).saturating_sub(1)) // less the directory's own fd
        .unwrap_or(0);
    let lim = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    crate::metrics::FdUsage {
        open,
        limit: lim.current,
        hard_limit: lim.maximum,
        per_target: FDS_PER_TARGET,
        targets_fit: lim.current.map(|l| l.saturating_sub(open) / FDS_PER_TARGET),
    }
}

/// Raises the soft RLIMIT_NOFILE to the hard limit (a daemon holds 3 descriptors per target)
/// and logs both. Returns the soft limit in force.
pub fn raise_fd_limit() -> Option<u64> {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let lim = getrlimit(Resource::Nofile);
    let show = |v: Option<u64>| v.map_or("unlimited".to_string(), |n| n.to_string());
    if lim.current != lim.maximum {
        let raised = rustix::process::Rlimit {
            current: lim.maximum,
            maximum: lim.maximum,
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => {
                tracing::info!(
                    "open file limit raised from {} to the hard limit {}",
                    show(lim.current),
                    show(lim.maximum)
                );
                return lim.maximum;
            }
            Err(e) => tracing::warn!(
                "cannot raise the open file limit {} to the hard limit {}: {e}",
                show(lim.current),
                show(lim.maximum)
            ),
        }
    } else {
        tracing::info!("open file limit {} (the hard limit)", show(lim.current));
    }
    lim.current
}

/// Set by SIGTERM/SIGINT once [`stop_on_signals`] ran.
static STOP: std::sync::OnceLock<Arc<AtomicBool>> = std::sync::OnceLock::new();

/// Makes SIGTERM and SIGINT stop every [`Server`] of this process at its next loop turn
/// (within [`TICK`]): targets are stopped and socket files removed. A second signal exits at
/// once (status 130), for a daemon that does not stop.
pub fn stop_on_signals() -> io::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let flag = STOP.get_or_init(|| Arc::new(AtomicBool::new(false)));
    for sig in [SIGTERM, SIGINT] {
        signal_hook::flag::register_conditional_shutdown(sig, 130, Arc::clone(flag))?;
        signal_hook::flag::register(sig, Arc::clone(flag))?;
    }
    Ok(())
}

/// Whether a signal asked the servers of this process to stop.
pub fn stop_requested() -> bool {
    STOP.get().is_some_and(|f| f.load(Ordering::Relaxed))
}

impl Drop for Server {
    /// However the server ends (returned, failed, or a panic unwinding), its targets are
    /// stopped and its socket file removed: no stale socket is left behind.
    fn drop(&mut self) {
        self.stop_all();
        let _ = std::fs::remove_file(&self.socket);
        tracing::info!("spindle daemon stopped");
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
