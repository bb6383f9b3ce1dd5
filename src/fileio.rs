//! The controller's local file I/O for `put` and `fetch`, done for the sans-IO router: it asks
//! with a [`FileOp`] ([`Router::poll_file_op`](crate::router::Router::poll_file_op)) and gets
//! the answer back as a [`FileDone`] input
//! ([`Router::file_done`](crate::router::Router::file_done)).
//!
//! [`Files`] carries the requests out. Quick ones run on the caller's (the loop's) thread:
//! creating a fetch's temp file, appending a DATA frame's bytes to it (so a fetch's data never
//! waits in memory behind a slow disk: the loop reads no more from that target meanwhile),
//! removing it. Slow ones run on a small pool of worker threads, their answers queued and the
//! loop woken through an eventfd: opening a put's source with the sha256 of its content when a
//! hop's file cache needs it (a whole-file read, remembered by file identity and mtime), and
//! finishing a fetch (`fsync`, then `rename` over the destination). A fetch's writes all run
//! on the loop before its finish is asked for, so the finish sees them all.

use crate::router::{FileDone, FileOp, FileToken, Opened};
use crate::transfer::Source;
use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::Write as _;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};

/// Worker threads of the daemon's file pool.
pub const WORKERS: usize = 2;
/// Content hashes remembered at most (then forgotten all at once).
const HASHES_MAX: usize = 4096;

/// A file's identity and version: device, inode, size, mtime (s, ns).
pub type FileId = (u64, u64, u64, i64, i64);
/// Content hashes by [`FileId`].
pub type Hashes = Arc<Mutex<HashMap<FileId, String>>>;
type Job = Box<dyn FnOnce() -> (FileToken, FileDone) + Send>;

/// A fetch's temp file being written; a failed write is kept for its finish to report.
struct Sink {
    file: Option<File>,
    error: Option<String>,
}

/// Carries out the router's file requests (see the module doc).
pub struct Files {
    sinks: HashMap<FileToken, Sink>,
    hashes: Hashes,
    /// To the workers; None: every job runs inline (tests, or no thread could start).
    jobs: Option<mpsc::Sender<Job>>,
    done_tx: mpsc::Sender<(FileToken, FileDone)>,
    done_rx: mpsc::Receiver<(FileToken, FileDone)>,
    /// Answers of jobs run inline.
    inline: VecDeque<(FileToken, FileDone)>,
    /// Written once per answer from a worker (the loop polls it readable).
    wake: Option<Arc<OwnedFd>>,
}

impl Files {
    /// `workers` threads for the slow requests (0: all inline), waking the loop through an
    /// eventfd (see [`Files::wake_fd`]).
    pub fn new(workers: usize) -> std::io::Result<Files> {
        let (done_tx, done_rx) = mpsc::channel();
        let mut f = Files {
            sinks: HashMap::new(),
            hashes: Arc::default(),
            jobs: None,
            done_tx,
            done_rx,
            inline: VecDeque::new(),
            wake: None,
        };
        if workers == 0 {
            return Ok(f);
        }
        use rustix::event::{eventfd, EventfdFlags};
        let wake = Arc::new(eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?);
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..workers {
            let (rx, done, wake) = (Arc::clone(&rx), f.done_tx.clone(), Arc::clone(&wake));
            std::thread::Builder::new()
                .name(format!("spindle-files-{i}"))
                .spawn(move || loop {
                    let job = match rx.lock() {
                        Ok(r) => r.recv(),
                        Err(_) => return,
                    };
                    let Ok(job) = job else { return };
                    if done.send(job()).is_err() {
                        return;
                    }
                    let _ = rustix::io::write(&*wake, &1u64.to_ne_bytes());
                })?;
        }
        f.jobs = Some(tx);
        f.wake = Some(wake);
        Ok(f)
    }

    /// The eventfd that turns readable when a worker answered (None: no workers).
    pub fn wake_fd(&self) -> Option<BorrowedFd<'_>> {
        self.wake.as_deref().map(|w| w.as_fd())
    }

    /// Resets the wake-up eventfd (call when the loop saw it readable).
    pub fn woken(&self) {
        if let Some(w) = &self.wake {
            let mut b = [0u8; 8];
            let _ = rustix::io::read(&**w, &mut b);
        }
    }

    /// The next answer for the router, if any.
    pub fn poll_done(&mut self) -> Option<(FileToken, FileDone)> {
        self.inline
            .pop_front()
            .or_else(|| self.done_rx.try_recv().ok())
    }

    /// Carries out (or starts) one request.
    pub fn submit(&mut self, op: FileOp) {
        match op {
            FileOp::Open { token, path, hash } => {
                let memo = Arc::clone(&self.hashes);
                self.run(Box::new(move || {
                    let r = open_source(Path::new(&path), hash, &memo);
                    (token, FileDone::Opened(r))
                }));
            }
            FileOp::Create { token, path } => {
                let r = match File::create(&path) {
                    Ok(file) => {
                        let sink = Sink {
                            file: Some(file),
                            error: None,
                        };
                        self.sinks.insert(token, sink);
                        Ok(())
                    }
                    Err(e) => Err(format!("cannot write {}: {e}", path.display())),
                };
                tracing::trace!(token, path = %path.display(), ok = r.is_ok(), "create");
                self.inline.push_back((token, FileDone::Created(r)));
            }
            FileOp::Write { token, data } => {
                let Some(s) = self.sinks.get_mut(&token) else {
                    return;
                };
                if let Some(f) = &mut s.file {
                    if let Err(e) = f.write_all(&data) {
                        s.error = Some(format!("writing the destination failed: {e}"));
                        s.file = None;
                    }
                }
            }
            FileOp::Finish { token, tmp, dest } => {
                let sink = self.sinks.remove(&token);
                self.run(Box::new(move || (token, finish(sink, &tmp, &dest))));
            }
            FileOp::Remove { token, path } => {
                self.sinks.remove(&token);
                tracing::trace!(token, path = %path.display(), "remove");
                let _ = std::fs::remove_file(&path);
            }
        }
    }

    fn run(&mut self, job: Job) {
        let job = match &self.jobs {
            Some(tx) => match tx.send(job) {
                Ok(()) => return,
                Err(mpsc::SendError(job)) => job,
            },
            None => job,
        };
        let answer = job();
        self.inline.push_back(answer);
    }
}

/// Opens a put's source (a regular file) and, when its size is within `hash`, its sha256
/// (remembered by identity and mtime, so a file sent to many targets is read once for it).
pub fn open_source(path: &Path, hash: Option<(u64, u64)>, memo: &Hashes) -> Result<Opened, String> {
    use std::os::unix::fs::MetadataExt as _;
    let cannot = |e: &dyn std::fmt::Display| format!("cannot read {}: {e}", path.display());
    let file = File::open(path).map_err(|e| cannot(&e))?;
    let md = file.metadata().map_err(|e| cannot(&e))?;
    if !md.is_file() {
        return Err(cannot(&"not a regular file"));
    }
    let size = md.len();
    let sha = match hash {
        Some((lo, hi)) if (lo..=hi).contains(&size) => {
            let id = (md.dev(), md.ino(), size, md.mtime(), md.mtime_nsec());
            let known = memo.lock().ok().and_then(|m| m.get(&id).cloned());
            known.or_else(|| {
                let h = sha256_of(&file, size)?;
                if let Ok(mut m) = memo.lock() {
                    if m.len() >= HASHES_MAX {
                        m.clear();
                    }
                    m.insert(id, h.clone());
                }
                Some(h)
            })
        }
        _ => None,
    };
    Ok(Opened {
        source: Source::from(file),
        size,
        sha,
    })
}

/// The sha256 of `file`, if it still has `size` bytes when read to its end.
fn sha256_of(file: &File, size: u64) -> Option<String> {
    use sha2::Digest as _;
    let mut buf = vec![0u8; 256 * 1024];
    let mut d = sha2::Sha256::new();
    let mut pos = 0u64;
    loop {
        let n = std::os::unix::fs::FileExt::read_at(file, &mut buf, pos).ok()?;
        if n == 0 {
            break;
        }
        d.update(&buf[..n]);
        pos += n as u64;
    }
    (pos == size).then(|| crate::cache::hex(&d.finalize()))
}

/// A fetch's end: its temp file synced and renamed over `dest`; on any failure (an earlier
/// write's too) the temp file is removed and `dest` left as it was.
fn finish(sink: Option<Sink>, tmp: &PathBuf, dest: &PathBuf) -> FileDone {
    let r = match sink {
        None => Err(format!(
            "cannot write {}: its temp file is gone",
            dest.display()
        )),
        Some(Sink { error: Some(e), .. }) => Err(e),
        Some(Sink { file, .. }) => file
            .map_or(Ok(()), |f| f.sync_all())
            .and_then(|()| std::fs::rename(tmp, dest))
            .map_err(|e| format!("cannot write {}: {e}", dest.display())),
    };
    if r.is_err() {
        let _ = std::fs::remove_file(tmp);
    }
    tracing::trace!(tmp = %tmp.display(), dest = %dest.display(), ok = r.is_ok(), "fsync + rename");
    FileDone::Finished(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wait_done(f: &mut Files) -> (FileToken, FileDone) {
        for _ in 0..500 {
            if let Some(d) = f.poll_done() {
                return d;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("no answer from the file workers");
    }

    #[test]
    fn a_fetch_file_is_created_written_and_renamed_by_a_worker() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (tmp, dest) = (dir.path().join(".d.tmp"), dir.path().join("d"));
        let mut f = Files::new(1).expect("files");
        f.submit(FileOp::Create {
            token: 7,
            path: tmp.clone(),
        });
        assert!(matches!(
            f.poll_done(),
            Some((7, FileDone::Created(Ok(()))))
        ));
        for part in ["ab", "cd"] {
            let data = part.as_bytes().to_vec();
            f.submit(FileOp::Write { token: 7, data });
        }
        f.submit(FileOp::Finish {
            token: 7,
            tmp: tmp.clone(),
            dest: dest.clone(),
        });
        let (t, done) = wait_done(&mut f);
        assert!(matches!((t, done), (7, FileDone::Finished(Ok(())))));
        f.woken();
        assert_eq!(std::fs::read_to_string(&dest).ok().as_deref(), Some("abcd"));
        assert!(!tmp.exists());
    }

    #[test]
    fn a_source_that_is_not_a_regular_file_is_refused_and_a_hash_is_remembered() {
        let dir = tempfile::tempdir().expect("tempdir");
        let memo = Hashes::default();
        let e = open_source(dir.path(), None, &memo).expect_err("a directory");
        assert!(e.contains("not a regular file"), "{e}");
        let p = dir.path().join("f");
        std::fs::write(&p, b"abc").expect("write");
        let o = open_source(&p, Some((1, 10)), &memo).expect("opened");
        assert_eq!(o.size, 3);
        assert_eq!(
            o.sha.as_deref(),
            Some("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        );
        assert_eq!(memo.lock().map(|m| m.len()).unwrap_or(0), 1);
        let o = open_source(&p, Some((4, 10)), &memo).expect("opened");
        assert_eq!(o.sha, None, "outside the range: not hashed");
    }
}

/// The disk side of the router's in-memory tests: the server's part of a put or fetch done at
/// once on real files (its [`FileOp`]s answered in order), and the scratch files the tests
/// set up and check. Kept here, with the file I/O it stands in for: `src/router` names none.
#[cfg(test)]
pub(crate) mod scratch {
    use super::*;

    /// Carries out `op` at once; the answer, if it has one. `tmp_of`: the temp file of a
    /// fetch's token, while the router knows it (a write for a fetch given up on in the same
    /// read is dropped; its Remove follows).
    pub(crate) fn answer(
        op: FileOp,
        tmp_of: impl Fn(FileToken) -> Option<PathBuf>,
    ) -> Option<(FileToken, FileDone)> {
        match op {
            FileOp::Open { token, path, hash } => {
                let o = open_source(Path::new(&path), hash, &Hashes::default());
                Some((token, FileDone::Opened(o)))
            }
            FileOp::Create { token, path } => {
                let c = File::create(&path).map(drop).map_err(|e| e.to_string());
                Some((token, FileDone::Created(c)))
            }
            FileOp::Write { token, data } => {
                if let Some(path) = tmp_of(token) {
                    let f = std::fs::OpenOptions::new().append(true).open(path);
                    f.and_then(|mut f| f.write_all(&data))
                        .expect("a fetch's temp file");
                }
                None
            }
            FileOp::Finish { token, tmp, dest } => {
                let done = std::fs::rename(tmp, dest).map_err(|e| e.to_string());
                Some((token, FileDone::Finished(done)))
            }
            FileOp::Remove { path, .. } => {
                let _ = std::fs::remove_file(path);
                None
            }
        }
    }

    /// A put's source as the server opens it.
    pub(crate) fn open(path: &Path) -> Result<Opened, String> {
        open_source(path, None, &Hashes::default())
    }

    /// Writes a file (a put's source, an earlier destination, an empty temp file).
    pub(crate) fn write(path: &Path, data: impl AsRef<[u8]>) {
        std::fs::write(path, data).expect("a scratch file");
    }

    /// A file's content, if it exists.
    pub(crate) fn read(path: &Path) -> Option<Vec<u8>> {
        std::fs::read(path).ok()
    }

    /// Renames a file (a fetch's temp file over its destination).
    pub(crate) fn rename(from: &Path, to: &Path) {
        std::fs::rename(from, to).expect("a rename");
    }

    /// The names in a directory, sorted.
    pub(crate) fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .expect("a scratch dir")
            .map(|e| {
                e.expect("an entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        v.sort();
        v
    }
}
