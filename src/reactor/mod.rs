//! The event loop's I/O surface: register file descriptors under integer keys, wait for
//! readiness, get `(key, readable, writable)` events back.
//!
//! The daemon never names a backend; it asks [`new_backend`] for one. Only this module talks
//! to the kernel's polling interfaces and holds the `unsafe` that registration needs. The
//! routing logic (`crate::router`) is sans-IO and takes bytes and time as inputs, so a
//! completion backend (io_uring) sits behind the same surface without touching it.

mod epoll;
mod uring;

pub use epoll::Epoll;
pub use uring::Uring;

use std::io;
use std::os::fd::BorrowedFd;
use std::time::Duration;

/// Which kernel interface drives the loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum IoBackend {
    /// io_uring where the kernel has it (and it is not disabled), else epoll.
    #[default]
    Auto,
    /// Readiness-based epoll through the `polling` crate.
    Epoll,
    /// io_uring (`IORING_OP_POLL_ADD` readiness); an error where the kernel lacks it.
    Uring,
}

/// What a registered descriptor should be watched for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Interest {
    /// Wake when readable (or at EOF/hang-up).
    pub read: bool,
    /// Wake when writable.
    pub write: bool,
}

impl Interest {
    /// Read interest only.
    pub const READ: Interest = Interest {
        read: true,
        write: false,
    };
    /// Write interest only.
    pub const WRITE: Interest = Interest {
        read: false,
        write: true,
    };
    /// No interest (registered but quiet).
    pub const NONE: Interest = Interest {
        read: false,
        write: false,
    };
}

/// One readiness event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ready {
    /// The key the descriptor was registered with.
    pub key: usize,
    /// Readable (or EOF/error pending).
    pub readable: bool,
    /// Writable.
    pub writable: bool,
}

/// A readiness backend: the small surface every backend provides.
pub trait Backend: Send {
    /// Starts watching `fd` under `key`. The caller must [`Backend::delete`] it before closing.
    fn add(&mut self, fd: BorrowedFd<'_>, key: usize, interest: Interest) -> io::Result<()>;
    /// Changes what `fd` is watched for.
    fn modify(&mut self, fd: BorrowedFd<'_>, key: usize, interest: Interest) -> io::Result<()>;
    /// Stops watching `fd`.
    fn delete(&mut self, fd: BorrowedFd<'_>) -> io::Result<()>;
    /// Waits up to `timeout` and appends ready events to `out`.
    fn wait(&mut self, timeout: Option<Duration>, out: &mut Vec<Ready>) -> io::Result<()>;
    /// The backend's name for logs and stats.
    fn name(&self) -> &'static str;
}

/// Builds the backend asked for; `auto` probes io_uring and falls back to epoll, saying why.
pub fn new_backend(choice: IoBackend) -> io::Result<Box<dyn Backend>> {
    match choice {
        IoBackend::Epoll => Ok(Box::new(Epoll::new()?)),
        IoBackend::Uring => Ok(Box::new(Uring::new()?)),
        IoBackend::Auto => match Uring::new() {
            Ok(u) => {
                tracing::info!("io backend: io_uring (auto)");
                Ok(Box::new(u))
            }
            Err(e) => {
                tracing::info!("io backend: epoll (auto; io_uring unavailable: {e})");
                Ok(Box::new(Epoll::new()?))
            }
        },
    }
}
