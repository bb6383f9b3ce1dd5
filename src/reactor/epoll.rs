//! Bindings to epoll (Linux) through the `polling` crate, level-triggered.

use super::{Backend, Interest, Ready};
use polling::{Event, Events, PollMode, Poller};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::Duration;

/// Level-triggered epoll backend.
pub struct Epoll {
    poller: Poller,
    events: Events,
}

impl Epoll {
    /// Creates the epoll instance.
    pub fn new() -> io::Result<Self> {
        Ok(Epoll {
            poller: Poller::new()?,
            events: Events::with_capacity(std::num::NonZeroUsize::new(1024).expect("nonzero")),
        })
    }
}

fn event(key: usize, i: Interest) -> Event {
    Event::new(key, i.read, i.write)
}

impl Backend for Epoll {
    fn add(&mut self, fd: BorrowedFd<'_>, key: usize, interest: Interest) -> io::Result<()> {
        tracing::trace!(fd = fd.as_raw_fd(), key, ?interest, "epoll add");
        // SAFETY: `polling` requires the fd to stay open until it is deleted from the poller.
        // Every caller in the daemon deletes a descriptor (`Backend::delete`) before dropping
        // the object that owns it (see `api::server::Proc::deregister`, `Client` removal).
        unsafe {
            self.poller
                .add_with_mode(fd.as_raw_fd(), event(key, interest), PollMode::Level)
        }
    }

    fn modify(&mut self, fd: BorrowedFd<'_>, key: usize, interest: Interest) -> io::Result<()> {
        tracing::trace!(fd = fd.as_raw_fd(), key, ?interest, "epoll modify");
        self.poller
            .modify_with_mode(fd, event(key, interest), PollMode::Level)
    }

    fn delete(&mut self, fd: BorrowedFd<'_>) -> io::Result<()> {
        tracing::trace!(fd = fd.as_raw_fd(), "epoll delete");
        self.poller.delete(fd)
    }

    fn wait(&mut self, timeout: Option<Duration>, out: &mut Vec<Ready>) -> io::Result<()> {
        self.events.clear();
        match self.poller.wait(&mut self.events, timeout) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            Err(e) => return Err(e),
        }
        for ev in self.events.iter() {
            out.push(Ready {
                key: ev.key,
                readable: ev.readable,
                writable: ev.writable,
            });
        }
        Ok(())
    }

    fn name(&self) -> &'static str {
        "epoll"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsFd;

    #[test]
    fn pipe_readiness() {
        let (r, w) = rustix::pipe::pipe().unwrap();
        let mut ep = Epoll::new().unwrap();
        ep.add(r.as_fd(), 7, Interest::READ).unwrap();
        let mut out = Vec::new();
        ep.wait(Some(Duration::from_millis(10)), &mut out).unwrap();
        assert!(out.is_empty());
        let mut wf = std::fs::File::from(w);
        wf.write_all(b"x").unwrap();
        ep.wait(Some(Duration::from_millis(1000)), &mut out)
            .unwrap();
        assert_eq!(
            out,
            vec![Ready {
                key: 7,
                readable: true,
                writable: false
            }]
        );
        // Level-triggered: still readable until drained.
        out.clear();
        ep.wait(Some(Duration::from_millis(10)), &mut out).unwrap();
        assert_eq!(out.len(), 1);
        ep.delete(r.as_fd()).unwrap();
    }
}
