//! Target processes: spawning a target's transport command with its pipes watched by the
//! loop, writing the router's outbound bytes to it, reading its stdout (frames) and stderr
//! (kept for error messages; its lines logged at debug level at most `LOG_RATE` a second,
//! bursts of `LOG_BURST`, the rest counted), noticing it ended, and killing it.

use super::unix_connect::Connecting;
use super::{key, Server, TAG_STDERR, TAG_STDIN, TAG_STDOUT};
use crate::reactor::{Backend, Interest};
use crate::router::{Router, TargetId};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Bytes of a target's stderr kept for error messages.
const STDERR_TAIL: usize = 8 * 1024;
/// How long to wait for stderr to close after stdout did, before classifying the failure.
const STDERR_GRACE: Duration = Duration::from_millis(500);

/// A target's I/O: a child process's pipes, or (transport `unix`) one socket used both ways.
pub(super) struct Proc {
    pub(super) child: Option<Child>,
    pub(super) stdin: Option<OwnedFd>,
    pub(super) stdout: Option<OwnedFd>,
    pub(super) stderr: Option<OwnedFd>,
    pub(super) tail: Vec<u8>,
    /// Bytes of stderr that came once the agent was up (the end of `tail` holds the last of
    /// them): a connection that breaks says why there, a killed agent leaves nothing.
    pub(super) late: usize,
    /// Rate of stderr lines written to the daemon's debug log.
    pub(super) stderr_log: crate::router::LogLimiter,
    /// One socket both ways (in `stdout`; `stdin` is None).
    pub(super) duplex: bool,
    pub(super) writing: bool,
    pub(super) stdout_eof_at: Option<Instant>,
    /// A `unix` socket whose connect has not completed (its fd is in `stdout`). Boxed: a
    /// socket address is ~110 bytes, and every stream's `Proc` would carry it.
    pub(super) connecting: Option<Box<Connecting>>,
    /// The private directory holding the ssh password for the askpass helper (which deletes
    /// the file on first read); held only to be removed (dropped) with the `Proc`.
    pub(super) _askpass: Option<tempfile::TempDir>,
}

/// Writes `secret` to a new 0600 file in a new 0700 directory (under `$XDG_RUNTIME_DIR`,
/// else the temp dir) for the askpass helper to read once.
fn askpass_file(secret: &str) -> io::Result<(tempfile::TempDir, std::path::PathBuf)> {
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let base = std::env::var_os("XDG_RUNTIME_DIR")
        .map(std::path::PathBuf::from)
        .filter(|d| d.is_dir())
        .unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::Builder::new()
        .prefix("spindle-askpass-")
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir_in(base)?;
    let path = dir.path().join("password");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)?;
    io::Write::write_all(&mut f, secret.as_bytes())?;
    Ok((dir, path))
}

impl Server {
    pub(super) fn spawn(&mut self, t: TargetId) {
        let Some(spec) = self.router.spec(t).cloned() else {
            return;
        };
        if spec.transport == crate::transport::TransportKind::Unix {
            return self.connect_unix(t, &spec);
        }
        let (argv, env, secret) = match crate::transport::command(&spec, self.askpass.as_deref()) {
            Ok(l) => (l.argv, l.env, l.askpass_secret),
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
        let mut askpass = None;
        if let Some(secret) = &secret {
            match askpass_file(secret) {
                Ok((dir, path)) => {
                    cmd.env("SPINDLE_ASKPASS_MODE", "1");
                    cmd.env("SPINDLE_ASKPASS_FILE", path);
                    askpass = Some(dir);
                }
                Err(e) => {
                    let m = format!("cannot hand the password to ssh (private file): {e}");
                    return self.router.target_closed(t, &m);
                }
            }
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
                late: 0,
                stderr_log: crate::router::LogLimiter::default(),
                duplex: false,
                writing: true,
                stdout_eof_at: None,
                connecting: None,
                _askpass: askpass,
            },
        );
    }

    pub(super) fn proc_stdin(&mut self, t: TargetId) {
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
        if let Err(e) = transmit(&mut self.router, t, fd.as_fd()) {
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

    pub(super) fn proc_stdout(&mut self, t: TargetId, now: Instant) {
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

    pub(super) fn proc_stderr(&mut self, t: TargetId) {
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
                let now = Instant::now();
                self.router.progress(t, now); // ssh or the shell said something
                let up = self.router.started(t);
                let Some(p) = self.procs.get_mut(&t) else {
                    return;
                };
                if up {
                    p.late = p.late.saturating_add(n);
                }
                let chunk = &self.buf[..n];
                if tracing::enabled!(tracing::Level::DEBUG) {
                    for line in String::from_utf8_lossy(chunk).lines() {
                        if !p.stderr_log.allow(now) {
                            continue;
                        }
                        let line =
                            crate::router::escape_for_log(line, crate::router::LOG_RECORD_MAX);
                        tracing::debug!(target_id = t, "stderr: {line}");
                    }
                    report_stderr_drops(t, p, now);
                }
                p.tail.extend_from_slice(chunk);
                if p.tail.len() > STDERR_TAIL {
                    let cut = p.tail.len() - STDERR_TAIL;
                    p.tail.drain(..cut);
                }
            }
        }
    }

    /// Reports stderr lines left out of the log (at most once a second per target).
    pub(super) fn report_stderr_drops(&mut self, now: Instant) {
        for (&t, p) in self.procs.iter_mut() {
            report_stderr_drops(t, p, now);
        }
    }

    pub(super) fn check_half_closed(&mut self, now: Instant) {
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

    pub(super) fn closed(&mut self, t: TargetId) {
        let (mut tail, late) = self
            .procs
            .get(&t)
            .map(|p| {
                let late = &p.tail[p.tail.len().saturating_sub(p.late)..];
                (
                    String::from_utf8_lossy(&p.tail).into_owned(),
                    String::from_utf8_lossy(late).into_owned(),
                )
            })
            .unwrap_or_default();
        // Stage 0 exits 127 when it finds no interpreter (so does a shell without the command).
        // `podman exec` sometimes loses a process's last stderr when it exits at once (seen
        // with podman 4.3), so the marker may be missing: the exit status still says it.
        if !self.router.started(t)
            && !tail.contains(crate::transport::bootstrap::NO_PYTHON_MARKER)
            && self.exit_code(t) == Some(127)
        {
            tail.push_str(crate::transport::bootstrap::NO_PYTHON_MARKER);
            tail.push_str(" (exit status 127)\n");
        }
        self.router.process_ended(t, &tail, &late);
        self.drain_actions();
    }

    /// The exit status of target `t`'s process once its pipes closed: it has usually exited
    /// by then; waits at most ~50 ms for it (only on this failure path).
    fn exit_code(&mut self, t: TargetId) -> Option<i32> {
        let child = self.procs.get_mut(&t)?.child.as_mut()?;
        for _ in 0..10 {
            match child.try_wait() {
                Ok(Some(status)) => return status.code(),
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                Err(_) => return None,
            }
        }
        None
    }

    pub(super) fn kill(&mut self, t: TargetId) {
        self.retrying.remove(&t);
        if let Some(mut p) = self.procs.remove(&t) {
            p.close_pipes(&mut *self.backend);
            if let Some(mut child) = p.child {
                let _ = child.kill();
                if !matches!(child.try_wait(), Ok(Some(_))) {
                    self.zombies.push(child);
                }
            }
        }
        self.router.release(t);
    }

    pub(super) fn stop_all(&mut self) {
        let ts: Vec<TargetId> = self.procs.keys().copied().collect();
        for t in ts {
            if let Some(mut p) = self.procs.remove(&t) {
                // Closing stdin lets the agent exit on its own; then make sure of it.
                p.close_pipes(&mut *self.backend);
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

/// One debug line saying how many of target `t`'s stderr lines were not logged, when due.
fn report_stderr_drops(t: TargetId, p: &mut Proc, now: Instant) {
    if let Some(n) = p.stderr_log.due_report(now) {
        tracing::debug!(
            target_id = t,
            "{n} stderr lines dropped from the log (more than {}/s, bursts of {})",
            crate::router::LOG_RATE,
            crate::router::LOG_BURST
        );
    }
}

impl Proc {
    /// Stops watching and closes all its pipes.
    fn close_pipes(&mut self, backend: &mut dyn Backend) {
        deregister(backend, &mut self.stdin);
        deregister(backend, &mut self.stdout);
        deregister(backend, &mut self.stderr);
    }
}

/// Stops watching and closes one of a child's pipes.
fn deregister<T: AsFd>(backend: &mut dyn Backend, slot: &mut Option<T>) {
    if let Some(s) = slot.take() {
        let fd: BorrowedFd<'_> = s.as_fd();
        let _ = backend.delete(fd);
    }
}

/// Writes stream `t`'s outbound queue into its nonblocking transport pipe, as much as it
/// takes: protocol bytes by `write`, file payload by `splice` ([`crate::transfer`]), each
/// write reported to the router (which refills file data). A source file that shrank mid-send
/// fails the target (its framing is broken); `Err` is the pipe's own error.
fn transmit(router: &mut Router, t: TargetId, fd: BorrowedFd<'_>) -> io::Result<usize> {
    let mut total = 0;
    loop {
        let Some((out, stats)) = router.poll_transmit(t) else {
            return Ok(total);
        };
        match out.write_to(fd, stats) {
            Ok(0) => return Ok(total),
            Ok(n) => {
                total += n;
                router.transmitted(t, n);
            }
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                router.transmit_failed(t, &e.to_string());
                return Ok(total);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(total),
            Err(e) => return Err(e),
        }
    }
}
