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
//! The router owns an `Outbound` per target and stays sans-IO; the server calls `write_to`.

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
    pub fn push_file(&mut self, file: Arc<File>, offset: u64, len: usize) {
        if len > 0 {
            self.queued += len;
            self.chunks.push_back(Chunk::File { file, offset, len });
        }
    }

    /// Moves everything queued in `other` to the end of this queue (a become context's
    /// frames joining its stream's).
    pub fn append(&mut self, other: &mut Outbound) {
        self.queued += std::mem::take(&mut other.queued);
        self.chunks.append(&mut other.chunks);
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
        let file = Arc::new(File::open(&path).unwrap());
        let mut o = Outbound::default();
        o.with_bytes(|b| b.extend_from_slice(b"<hdr>"));
        o.push_file(file.clone(), 4, 8);
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
}
