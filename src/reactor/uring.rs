//! Bindings to io_uring (Linux 5.11+) through the `io-uring` crate: readiness by one-shot
//! `IORING_OP_POLL_ADD`, re-armed after each completion, which gives the same level-triggered
//! surface as the epoll backend (a still-ready descriptor completes again at once).
//!
//! Re-arms and interest changes are queued in the submission ring and reach the kernel with the
//! next wait, in the same `io_uring_enter` call: one syscall per loop turn however many streams
//! changed. Each armed poll carries `fd << 32 | generation` as user data; a generation that no
//! longer matches the registration (after `modify` or `delete`) marks a stale completion,
//! which is dropped. Removal requests carry the top bit and their completions are ignored.

use super::{Backend, Interest, Ready};
use io_uring::{opcode, types, IoUring};
use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::time::Duration;

// poll(2) event bits (Linux ABI).
const POLLIN: u32 = 0x001;
const POLLOUT: u32 = 0x004;
const POLLERR: u32 = 0x008;
const POLLHUP: u32 = 0x010;
const POLLRDHUP: u32 = 0x2000;
const REMOVE_TAG: u64 = 1 << 63;
const RING_ENTRIES: u32 = 1024;

struct Reg {
    key: usize,
    interest: Interest,
    gen: u32,
    armed: bool,
}

/// io_uring readiness backend.
pub struct Uring {
    ring: IoUring,
    regs: HashMap<RawFd, Reg>,
    next_gen: u32,
}

fn user_data(fd: RawFd, gen: u32) -> u64 {
    ((fd as u32 as u64) << 32) | gen as u64
}

impl Uring {
    /// Creates the ring and checks that the kernel supports poll operations on it.
    pub fn new() -> io::Result<Self> {
        let ring = IoUring::new(RING_ENTRIES)?;
        let mut probe = io_uring::Probe::new();
        ring.submitter().register_probe(&mut probe)?;
        for code in [opcode::PollAdd::CODE, opcode::PollRemove::CODE] {
            if !probe.is_supported(code) {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "io_uring lacks POLL_ADD/POLL_REMOVE",
                ));
            }
        }
        if !ring.params().is_feature_ext_arg() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "io_uring lacks EXT_ARG (kernel < 5.11)",
            ));
        }
        Ok(Uring {
            ring,
            regs: HashMap::new(),
            next_gen: 0,
        })
    }

    fn push(&mut self, entry: io_uring::squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: poll add/remove entries reference no user memory (only an fd and flags),
            // so nothing must outlive the submission. The fd stays open until `delete`, whose
            // removal request is queued before the caller closes it.
            let pushed = unsafe { self.ring.submission().push(&entry) };
            match pushed {
                Ok(()) => return Ok(()),
                Err(_) => {
                    tracing::trace!("uring submission queue full; submitting");
                    self.ring.submit()?;
                }
            }
        }
    }

    fn arm(&mut self, fd: RawFd) -> io::Result<()> {
        let Some(r) = self.regs.get_mut(&fd) else {
            return Ok(());
        };
        if r.armed || (!r.interest.read && !r.interest.write) {
            return Ok(());
        }
        let mut mask = POLLERR | POLLHUP;
        if r.interest.read {
            mask |= POLLIN | POLLRDHUP;
        }
        if r.interest.write {
            mask |= POLLOUT;
        }
        r.armed = true;
        let e = opcode::PollAdd::new(types::Fd(fd), mask)
            .build()
            .user_data(user_data(fd, r.gen));
        tracing::trace!(fd, gen = r.gen, mask, "uring poll_add");
        self.push(e)
    }

    fn disarm(&mut self, fd: RawFd) -> io::Result<()> {
        let Some(r) = self.regs.get_mut(&fd) else {
            return Ok(());
        };
        if !r.armed {
            return Ok(());
        }
        r.armed = false;
        let old = user_data(fd, r.gen);
        self.next_gen = self.next_gen.wrapping_add(1);
        r.gen = self.next_gen;
        tracing::trace!(fd, "uring poll_remove");
        let e = opcode::PollRemove::new(old)
            .build()
            .user_data(REMOVE_TAG | old);
        self.push(e)
    }
}

impl Backend for Uring {
    fn add(&mut self, fd: BorrowedFd<'_>, key: usize, interest: Interest) -> io::Result<()> {
        let fd = fd.as_raw_fd();
        self.next_gen = self.next_gen.wrapping_add(1);
        let gen = self.next_gen;
        self.regs.insert(
            fd,
            Reg {
                key,
                interest,
                gen,
                armed: false,
            },
        );
        self.arm(fd)
    }

    fn modify(&mut self, fd: BorrowedFd<'_>, key: usize, interest: Interest) -> io::Result<()> {
        let fd = fd.as_raw_fd();
        let Some(r) = self.regs.get_mut(&fd) else {
            return Err(io::Error::from(io::ErrorKind::NotFound));
        };
        if r.interest == interest && r.key == key {
            return Ok(());
        }
        r.key = key;
        r.interest = interest;
        self.disarm(fd)?;
        self.arm(fd)
    }

    fn delete(&mut self, fd: BorrowedFd<'_>) -> io::Result<()> {
        let fd = fd.as_raw_fd();
        self.disarm(fd)?;
        self.regs.remove(&fd);
        // Submit now: the caller closes the fd right after, and the removal must be queued
        // against the poll that still holds it.
        self.ring.submit()?;
        Ok(())
    }

    fn wait(&mut self, timeout: Option<Duration>, out: &mut Vec<Ready>) -> io::Result<()> {
        let res = match timeout {
            Some(t) => {
                let ts = types::Timespec::new()
                    .sec(t.as_secs())
                    .nsec(t.subsec_nanos());
                let args = types::SubmitArgs::new().timespec(&ts);
                self.ring.submitter().submit_with_args(1, &args)
            }
            None => self.ring.submit_and_wait(1),
        };
        match res {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(62) => {} // ETIME: the timeout passed
            Err(e) if matches!(e.kind(), io::ErrorKind::Interrupted) => {}
            Err(e) if e.raw_os_error() == Some(16) => {} // EBUSY: completions pending, reap them
            Err(e) => return Err(e),
        }
        let mut rearm = Vec::new();
        for cqe in self.ring.completion() {
            let ud = cqe.user_data();
            if ud & REMOVE_TAG != 0 {
                continue;
            }
            let (fd, gen) = ((ud >> 32) as u32 as RawFd, ud as u32);
            let Some(r) = self.regs.get_mut(&fd) else {
                continue;
            };
            if r.gen != gen || !r.armed {
                continue; // stale: modified or deleted since it was armed
            }
            r.armed = false;
            let res = cqe.result();
            let mask = if res < 0 { POLLERR } else { res as u32 };
            let hup = mask & (POLLERR | POLLHUP | POLLRDHUP) != 0;
            out.push(Ready {
                key: r.key,
                readable: r.interest.read && (mask & POLLIN != 0 || hup),
                writable: r.interest.write && (mask & POLLOUT != 0 || hup),
            });
            rearm.push(fd);
        }
        for fd in rearm {
            self.arm(fd)?;
        }
        Ok(())
    }

    fn name(&self) -> &'static str {
        "io_uring"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsFd;

    #[test]
    fn level_triggered_readiness_and_rearm() {
        let mut u = Uring::new().expect("io_uring available");
        let (r, w) = rustix::pipe::pipe().unwrap();
        u.add(r.as_fd(), 7, Interest::READ).unwrap();
        let mut out = Vec::new();
        u.wait(Some(Duration::from_millis(20)), &mut out).unwrap();
        assert!(out.is_empty());
        let mut wf = std::fs::File::from(w);
        wf.write_all(b"xy").unwrap();
        u.wait(Some(Duration::from_secs(1)), &mut out).unwrap();
        assert_eq!(
            out,
            vec![Ready {
                key: 7,
                readable: true,
                writable: false
            }]
        );
        // Not drained: fires again (level-triggered).
        out.clear();
        u.wait(Some(Duration::from_secs(1)), &mut out).unwrap();
        assert_eq!(out.len(), 1);
        let mut rf = std::fs::File::from(r);
        let mut buf = [0u8; 2];
        rf.read_exact(&mut buf).unwrap();
        out.clear();
        u.wait(Some(Duration::from_millis(20)), &mut out).unwrap();
        assert!(out.is_empty(), "drained: {out:?}");
        // Interest change to write on the write end; delete.
        u.add(wf.as_fd(), 9, Interest::NONE).unwrap();
        u.modify(wf.as_fd(), 9, Interest::WRITE).unwrap();
        u.wait(Some(Duration::from_secs(1)), &mut out).unwrap();
        assert!(
            out.contains(&Ready {
                key: 9,
                readable: false,
                writable: true
            }),
            "{out:?}"
        );
        u.delete(wf.as_fd()).unwrap();
        u.delete(rf.as_fd()).unwrap();
        out.clear();
        u.wait(Some(Duration::from_millis(20)), &mut out).unwrap();
        assert!(out.is_empty());
    }
}
