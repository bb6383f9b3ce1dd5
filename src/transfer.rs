//! A target stream's outbound queue, and moving it into the transport pipe.
//!
//! The queue holds protocol bytes (frame headers, CALL payloads) and *file ranges*: the payload
//! of a `put` DATA frame is never read into the daemon. [`Outbound::write_to`] writes bytes with
//! `write(2)` and moves file ranges with `splice(2)` from the file into the pipe (the page
//! cache feeds every target that receives the same file, so a file sent to many targets is read
//! from disk once). Where splice is impossible (the destination is not a pipe, the source's
//! file system does not support it) it falls back to `pread` + `write` for that stream, logging
//! why once, and counts those bytes as copied through user space.
//!
//! The router owns an `Outbound` per target and stays sans-IO; the server takes it
//! (`Router::poll_transmit`), calls `write_to` and reports what went (`Router::transmitted`).
//!
//! ## Why not `IORING_OP_SPLICE` under `--io uring`
//!
//! With the io_uring backend the payload still moves by the `splice(2)` syscall, on purpose.
//! Issuing it as an io_uring op is feasible without touching the router (a per-`Outbound`
//! token, the op pushed to the reactor's ring, its completion handed back to the stream by
//! the server before it writes the queue again), but it costs more than it saves:
//!
//! - The kernel never runs `IORING_OP_SPLICE` inline: `io_splice` refuses the nonblocking
//!   attempt (`IO_URING_F_NONBLOCK` → `-EAGAIN`, or `REQ_F_FORCE_ASYNC` in newer kernels), so
//!   every op is handed to an io-wq worker thread and its completion handed back: two thread
//!   switches per op where the syscall has none. Without `SPLICE_F_NONBLOCK` a worker also
//!   blocks on a full pipe, i.e. one kernel thread per stream waiting on a slow target;
//!   with it, the op fails `EAGAIN` and the readiness poll is needed anyway.
//! - What it would save is the syscall entry of `splice(2)` (the readiness wait is already
//!   batched in the ring's one `io_uring_enter` per loop turn).
//!
//! Measured (`cargo test --release --lib transfer::uring_splice_cost -- --ignored
//! --nocapture`: 2 GiB from the page cache into a 64 KiB pipe drained by a reader thread, one
//! splice in flight as a stream would have; 2 cores, kernel 6.18, shared machine, load
//! average 11–28): `splice(2)` + `poll` 7.0–7.6 µs of process CPU per 64 KiB splice
//! (reader included), 1–2 context switches per splice, 0.36–0.49 s wall; `IORING_OP_SPLICE`
//! 11.9–13.7 µs per splice (io-wq workers included, 2 alive), 3.3–3.4 context switches per
//! splice, 0.59–0.86 s wall. That is +5–6 µs per 64 KiB on top of a daemon that spends
//! 0.45 s of CPU to put 1 GiB (4 targets × 256 MiB, `SPINDLE_IO=uring bench/zero_copy.sh 4
//! 256`, 0 bytes copied; read/write fallback 0.62 s): ~16,400 splices, so about +0.08 s
//! (+18%) of daemon CPU for at most ~0.02 s of syscall entries saved. The lever that does
//! cut per-byte cost on both backends is fewer, larger splices (a bigger transport pipe,
//! `F_SETPIPE_SZ`), not a different way to issue them.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::FileExt;
use std::sync::Arc;

/// How many file bytes went which way (daemon-wide, reported by `stats`).
#[derive(Debug, Default, Clone, Copy, serde::Serialize, PartialEq, Eq)]
pub struct TransferCounters {
    /// File payload moved by splice (no user-space copy).
    pub file_bytes_spliced: u64,
    /// File payload copied through user space (fallback).
    pub file_bytes_copied: u64,
}

/// A `put` source the server opened for reading: the router holds it only as a handle, to
/// queue ranges of it (it never reads it; [`Outbound::write_to`] splices from it).
#[derive(Debug, Clone)]
pub struct Source(Arc<File>);

impl From<File> for Source {
    fn from(f: File) -> Source {
        Source(Arc::new(f))
    }
}

enum Chunk {
    Bytes {
        data: Vec<u8>,
        pos: usize,
    },
    File {
        file: Arc<File>,
        offset: u64,
        len: usize,
    },
}

impl Chunk {
    /// Bytes of it not yet written.
    fn remaining(&self) -> usize {
        match self {
            Chunk::Bytes { data, pos } => data.len() - pos,
            Chunk::File { len, .. } => *len,
        }
    }
}

/// Bytes and file ranges waiting to be written to one target.
#[derive(Default)]
pub struct Outbound {
    chunks: VecDeque<Chunk>,
    queued: usize,
    no_splice: bool,
}

/// Largest byte chunk extended in place (larger ones start a new chunk).
const COALESCE: usize = 1 << 20;

impl Outbound {
    /// An empty queue; `splice` false forces the read/write fallback (for comparison runs).
    pub fn new(splice: bool) -> Self {
        Outbound {
            no_splice: !splice,
            ..Default::default()
        }
    }

    /// The protocol bytes queued (file ranges left out), for in-memory tests.
    #[cfg(test)]
    pub(crate) fn queued_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for c in &self.chunks {
            if let Chunk::Bytes { data, pos } = c {
                out.extend_from_slice(&data[*pos..]);
            }
        }
        out
    }

    /// Everything queued, file ranges read from their files, for in-memory tests.
    #[cfg(test)]
    pub(crate) fn queued_with_files(&self) -> Vec<u8> {
        use std::os::unix::fs::FileExt as _;
        let mut out = Vec::new();
        for c in &self.chunks {
            match c {
                Chunk::Bytes { data, pos } => out.extend_from_slice(&data[*pos..]),
                Chunk::File { file, offset, len } => {
                    let at = out.len();
                    out.resize(at + len, 0);
                    file.read_exact_at(&mut out[at..], *offset)
                        .expect("a queued file range is readable");
                }
            }
        }
        out
    }

    /// Appends protocol bytes via a closure writing into a byte buffer (e.g. `encode_frame`).
    pub fn with_bytes(&mut self, f: impl FnOnce(&mut Vec<u8>)) {
        let extend =
            matches!(self.chunks.back(), Some(Chunk::Bytes { data, .. }) if data.len() < COALESCE);
        if !extend {
            self.chunks.push_back(Chunk::Bytes {
                data: Vec::new(),
                pos: 0,
            });
        }
        if let Some(Chunk::Bytes { data, .. }) = self.chunks.back_mut() {
            let before = data.len();
            f(data);
            self.queued += data.len() - before;
        }
    }

    /// Appends `len` bytes of `file` starting at `offset`.
    pub fn push_file(&mut self, file: &Source, offset: u64, len: usize) {
        if len > 0 {
            self.queued += len;
            let file = Arc::clone(&file.0);
            self.chunks.push_back(Chunk::File { file, offset, len });
        }
    }

    /// Moves everything queued in `other` to the end of this queue (a become context's
    /// frames joining its stream's).
    pub fn append(&mut self, other: &mut Outbound) {
        self.queued += std::mem::take(&mut other.queued);
        self.chunks.append(&mut other.chunks);
    }

    /// Moves whole chunks from the front of `other` to the end of this queue until at least
    /// `at_least` bytes moved (or `other` is empty), never splitting a frame: a file range
    /// moves with the byte chunk that ends in its DATA header. Returns the bytes moved (it
    /// may exceed `at_least` by up to one chunk). For a nested context's frames, released to
    /// its stream as its window allows.
    pub fn move_prefix(&mut self, other: &mut Outbound, at_least: usize) -> usize {
        let mut moved = 0;
        while moved < at_least {
            let Some(chunk) = other.chunks.pop_front() else {
                break;
            };
            moved += chunk.remaining();
            self.chunks.push_back(chunk);
            while matches!(other.chunks.front(), Some(Chunk::File { .. })) {
                if let Some(file) = other.chunks.pop_front() {
                    moved += file.remaining();
                    self.chunks.push_back(file);
                }
            }
        }
        other.queued -= moved;
        self.queued += moved;
        moved
    }

    /// Bytes queued.
    pub fn len(&self) -> usize {
        self.queued
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.queued == 0
    }

    /// Drops everything queued.
    pub fn clear(&mut self) {
        self.chunks.clear();
        self.queued = 0;
    }

    /// Writes as much as the nonblocking `fd` takes. Returns bytes written; `WouldBlock` only
    /// when nothing could be written.
    pub fn write_to(
        &mut self,
        fd: BorrowedFd<'_>,
        stats: &mut TransferCounters,
    ) -> io::Result<usize> {
        let mut total = 0;
        while let Some(front) = self.chunks.front_mut() {
            let res = match front {
                Chunk::Bytes { data, pos } => {
                    rustix::io::write(fd, &data[*pos..]).map_err(io::Error::from)
                }
                Chunk::File { file, offset, len } => {
                    if self.no_splice {
                        copy_range(file, *offset, *len, fd, stats)
                    } else {
                        let mut off = *offset;
                        match rustix::pipe::splice(
                            file.as_fd(),
                            Some(&mut off),
                            fd,
                            None,
                            *len,
                            rustix::pipe::SpliceFlags::NONBLOCK | rustix::pipe::SpliceFlags::MOVE,
                        ) {
                            Ok(0) => Err(io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                "the source file shrank while being sent",
                            )),
                            Ok(n) => {
                                stats.file_bytes_spliced += n as u64;
                                Ok(n)
                            }
                            Err(e)
                                if e == rustix::io::Errno::INVAL
                                    || e == rustix::io::Errno::NOSYS =>
                            {
                                tracing::info!("splice impossible here ({e}); copying file data through user space for this stream");
                                self.no_splice = true;
                                continue;
                            }
                            Err(e) => Err(e.into()),
                        }
                    }
                }
            };
            match res {
                Ok(n) => {
                    total += n;
                    self.queued -= n;
                    match front {
                        Chunk::Bytes { data, pos } => {
                            *pos += n;
                            if *pos == data.len() {
                                self.chunks.pop_front();
                            }
                        }
                        Chunk::File { offset, len, .. } => {
                            *offset += n as u64;
                            *len -= n;
                            if *len == 0 {
                                self.chunks.pop_front();
                            }
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && total > 0 => break,
                Err(e) => return Err(e),
            }
        }
        Ok(total)
    }
}

/// Fallback: `pread` a bounded piece of the range and write it.
fn copy_range(
    file: &File,
    offset: u64,
    len: usize,
    fd: BorrowedFd<'_>,
    stats: &mut TransferCounters,
) -> io::Result<usize> {
    let mut buf = vec![0u8; len.min(64 * 1024)];
    let n = file.read_at(&mut buf, offset)?;
    if n == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the source file shrank while being sent",
        ));
    }
    let w = rustix::io::write(fd, &buf[..n]).map_err(io::Error::from)?;
    stats.file_bytes_copied += w as u64;
    Ok(w)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn bytes_and_file_ranges_arrive_in_order_through_a_pipe() {
        let dir = std::env::temp_dir().join(format!("spindle-transfer-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("src");
        std::fs::File::create(&path)
            .unwrap()
            .write_all(b"0123456789abcdef")
            .unwrap();
        let file = Source::from(File::open(&path).unwrap());
        let mut o = Outbound::default();
        o.with_bytes(|b| b.extend_from_slice(b"<hdr>"));
        o.push_file(&file, 4, 8);
        o.with_bytes(|b| b.extend_from_slice(b"<end>"));
        assert_eq!(o.len(), 18);
        let (r, w) = rustix::pipe::pipe().unwrap();
        let mut stats = TransferCounters::default();
        let n = o.write_to(w.as_fd(), &mut stats).unwrap();
        assert_eq!(n, 18);
        assert!(o.is_empty());
        drop(w);
        let mut got = String::new();
        File::from(r).read_to_string(&mut got).unwrap();
        assert_eq!(got, "<hdr>456789ab<end>");
        assert_eq!(stats.file_bytes_spliced, 8);
        assert_eq!(stats.file_bytes_copied, 0);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn move_prefix_keeps_file_ranges_with_their_headers() {
        let file = Source::from(File::open("/proc/self/exe").unwrap());
        let mut ctx = Outbound::default();
        ctx.with_bytes(|b| b.extend_from_slice(&[1u8; 10])); // frames, then a DATA header
        ctx.push_file(&file, 0, 100);
        ctx.with_bytes(|b| b.extend_from_slice(&[2u8; 2 << 20])); // past COALESCE: 2 chunks
        ctx.with_bytes(|b| b.extend_from_slice(&[3u8; 5]));
        assert_eq!(ctx.len(), 10 + 100 + (2 << 20) + 5);
        let mut root = Outbound::default();
        assert_eq!(root.move_prefix(&mut ctx, 0), 0);
        // One byte of window moves the header chunk and its file range, nothing more.
        assert_eq!(root.move_prefix(&mut ctx, 1), 110);
        assert_eq!((root.len(), ctx.len()), (110, (2 << 20) + 5));
        assert_eq!(root.move_prefix(&mut ctx, usize::MAX), (2 << 20) + 5);
        assert!(ctx.is_empty());
        assert_eq!(root.len(), 110 + (2 << 20) + 5);
    }
}

/// Measures what issuing the payload splice as `IORING_OP_SPLICE` would cost against the
/// `splice(2)` syscall `Outbound::write_to` uses (see the module doc for the figures):
///
/// `cargo test --release --lib transfer::uring_splice_cost -- --ignored --nocapture`
#[cfg(test)]
mod uring_splice_cost {
    use std::fs::File;
    use std::io::{Read, Write};
    use std::os::fd::{AsFd, AsRawFd, OwnedFd};
    use std::time::Instant;

    const SIZE: usize = 256 << 20;
    /// Passes over the file per measurement (2 GiB moved: CPU time has 10 ms resolution).
    const PASSES: usize = 8;
    const ROUNDS: usize = 3;

    /// Process CPU seconds: every thread, io-wq workers included (they are threads of the
    /// process, named `iou-wrk-*`).
    fn cpu_secs() -> f64 {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        let rest = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
        let f: Vec<u64> = rest
            .split_whitespace()
            .map(|x| x.parse().unwrap_or(0))
            .collect();
        (f[11] + f[12]) as f64 / 100.0
    }

    fn switches(status: &str) -> u64 {
        status
            .lines()
            .filter(|l| l.contains("ctxt_switches"))
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum()
    }

    /// Context switches of this process's live threads, and how many are io-wq workers.
    fn task_switches() -> (u64, usize) {
        let (mut n, mut workers) = (0, 0);
        for t in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
            let st = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
            workers += usize::from(st.lines().next().is_some_and(|l| l.contains("iou-wrk")));
            n += switches(&st);
        }
        (n, workers)
    }

    /// A reader thread draining the pipe (as ssh would): bytes read and its own context
    /// switches (read before it exits, when /proc no longer lists it).
    fn drain(r: OwnedFd) -> std::thread::JoinHandle<(usize, u64)> {
        std::thread::spawn(move || {
            let mut f = File::from(r);
            let mut buf = vec![0u8; 256 * 1024];
            let mut n = 0;
            loop {
                match f.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(k) => n += k,
                }
            }
            let st = std::fs::read_to_string("/proc/thread-self/status").unwrap_or_default();
            (n, switches(&st))
        })
    }

    /// Current path: wait for writability, then `splice(2)` with SPLICE_F_NONBLOCK.
    fn by_syscall(file: &File) -> (usize, u64) {
        let (r, w) = rustix::pipe::pipe().unwrap();
        rustix::io::ioctl_fionbio(&w, true).unwrap();
        let reader = drain(r);
        let mut calls = 0;
        for _ in 0..PASSES {
            let mut off = 0u64;
            while (off as usize) < SIZE {
                let mut fds = [rustix::event::PollFd::new(
                    &w,
                    rustix::event::PollFlags::OUT,
                )];
                rustix::event::poll(&mut fds, -1).unwrap();
                let mut o = off;
                let flags = rustix::pipe::SpliceFlags::NONBLOCK | rustix::pipe::SpliceFlags::MOVE;
                match rustix::pipe::splice(
                    file.as_fd(),
                    Some(&mut o),
                    &w,
                    None,
                    SIZE - off as usize,
                    flags,
                ) {
                    Ok(n) => off += n as u64,
                    Err(rustix::io::Errno::AGAIN) => {}
                    Err(e) => panic!("splice: {e}"),
                }
                calls += 1;
            }
        }
        drop(w);
        let (n, cs) = reader.join().unwrap();
        assert_eq!(n, SIZE * PASSES);
        (calls, cs)
    }

    /// Candidate path: one `IORING_OP_SPLICE` in flight per stream (no readiness wait needed:
    /// the op waits for pipe space itself).
    fn by_uring(file: &File) -> (usize, u64) {
        use io_uring::{opcode, types, IoUring};
        let mut ring = IoUring::new(8).unwrap();
        let (r, w) = rustix::pipe::pipe().unwrap();
        let reader = drain(r);
        let mut ops = 0;
        for _ in 0..PASSES {
            let mut off = 0u64;
            while (off as usize) < SIZE {
                let e = opcode::Splice::new(
                    types::Fd(file.as_raw_fd()),
                    off as i64,
                    types::Fd(w.as_raw_fd()),
                    -1,
                    (SIZE - off as usize).min(1 << 30) as u32,
                )
                .flags(rustix::pipe::SpliceFlags::MOVE.bits())
                .build();
                // SAFETY: a splice entry references only two fds (no user memory); both stay open
                // until its completion is reaped below.
                unsafe { ring.submission().push(&e).unwrap() };
                ring.submit_and_wait(1).unwrap();
                let cqe = ring.completion().next().unwrap();
                assert!(cqe.result() > 0, "splice op: {}", cqe.result());
                off += cqe.result() as u64;
                ops += 1;
            }
        }
        let (_, workers) = task_switches();
        assert!(workers > 0, "IORING_OP_SPLICE ran in io-wq worker threads");
        drop(w);
        let (n, cs) = reader.join().unwrap();
        assert_eq!(n, SIZE * PASSES);
        (ops, cs)
    }

    #[test]
    #[ignore = "measurement; run with --release --ignored --nocapture"]
    fn uring_splice_cost() {
        let dir = std::env::temp_dir().join(format!("spindle-uring-splice-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("src.bin");
        let mut f = File::create(&path).unwrap();
        let chunk: Vec<u8> = (0..1 << 20).map(|i| (i * 7 % 251) as u8).collect();
        for _ in 0..SIZE >> 20 {
            f.write_all(&chunk).unwrap();
        }
        drop(f);
        let file = File::open(&path).unwrap();
        by_syscall(&file); // warm the page cache
        for round in 0..ROUNDS {
            for (name, run) in [
                ("splice(2) + poll", by_syscall as fn(&File) -> (usize, u64)),
                ("IORING_OP_SPLICE", by_uring),
            ] {
                let (c0, (s0, _)) = (cpu_secs(), task_switches());
                let t0 = Instant::now();
                let (calls, reader_cs) = run(&file);
                let wall = t0.elapsed().as_secs_f64();
                let (c1, (s1, workers)) = (cpu_secs(), task_switches());
                let cs = s1.saturating_sub(s0) + reader_cs;
                println!(
                    "round {round} {name:18} {} MiB: {calls:6} splices, wall {wall:.3} s, \
                     process CPU {:.2} s ({:.2} µs/splice), context switches {cs} \
                     ({:.2}/splice; io-wq workers alive {workers})",
                    (SIZE * PASSES) >> 20,
                    c1 - c0,
                    (c1 - c0) * 1e6 / calls as f64,
                    cs as f64 / calls as f64,
                );
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
