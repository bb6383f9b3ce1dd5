//! The daemon's socket path (issue 13, items 2 and 9): `serve --socket PATH` replaces only a
//! stale socket (connect refused) and refuses a regular file, a directory, a symbolic link or
//! a live socket, leaving it untouched; SIGTERM/SIGINT stop `serve` and remove its socket;
//! `spindle run` puts its own daemon's socket in a fresh 0700 directory (not the predictable
//! `/tmp/spindle-<pid>.sock`) and removes it on exit and on SIGTERM.

mod common;
use common::*;
use rustix::process::{kill_process, Pid, Signal};
use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

fn spindle() -> Command {
    Command::new(env!("CARGO_BIN_EXE_spindle"))
}

/// Waits up to `secs` for the child to exit; kills it (and fails) if it does not.
fn wait_exit(child: &mut Child, secs: u64, what: &str) -> ExitStatus {
    let end = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            return st;
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: still running after {secs} s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `serve --socket path`, expected to refuse at once: its stderr.
fn serve_refused(path: &Path) -> String {
    let mut child = spindle()
        .args(["serve", "--socket"])
        .arg(path)
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn serve");
    let st = wait_exit(&mut child, 10, &format!("serve on {}", path.display()));
    assert!(!st.success(), "serve on {} must fail", path.display());
    let mut err = String::new();
    use std::io::Read as _;
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err)
        .expect("read stderr");
    err
}

fn wait_for_socket(path: &Path) {
    let end = Instant::now() + Duration::from_secs(10);
    while UnixStream::connect(path).is_err() {
        assert!(Instant::now() < end, "no daemon on {}", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn serve_replaces_only_a_stale_socket() {
    let dir = scratch("socket_refuse");

    let file = dir.join("typo.conf");
    std::fs::write(&file, b"precious").unwrap();
    let err = serve_refused(&file);
    assert!(
        err.contains("regular file") && err.contains("not a socket"),
        "{err}"
    );
    assert_eq!(std::fs::read(&file).unwrap(), b"precious");

    let sub = dir.join("adir");
    std::fs::create_dir(&sub).unwrap();
    std::fs::write(sub.join("inside"), b"x").unwrap();
    let err = serve_refused(&sub);
    assert!(err.contains("directory"), "{err}");
    assert!(sub.join("inside").exists());

    // A symbolic link, even to a stale socket, is not replaced.
    let stale_target = dir.join("stale-target.sock");
    drop(UnixListener::bind(&stale_target).unwrap());
    let link = dir.join("link.sock");
    std::os::unix::fs::symlink(&stale_target, &link).unwrap();
    let err = serve_refused(&link);
    assert!(err.contains("symbolic link"), "{err}");
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());

    // A live socket (someone listens) is in use.
    let live = dir.join("live.sock");
    let listener = UnixListener::bind(&live).unwrap();
    let err = serve_refused(&live);
    assert!(err.contains("already served"), "{err}");
    assert!(
        UnixStream::connect(&live).is_ok(),
        "the live socket still works"
    );
    drop(listener);

    // A stale socket (nobody listens: connect refused) is replaced.
    let stale = dir.join("stale.sock");
    drop(UnixListener::bind(&stale).unwrap());
    assert!(UnixStream::connect(&stale).is_err());
    let mut child = spindle()
        .args(["serve", "--socket"])
        .arg(&stale)
        .spawn()
        .expect("spawn serve");
    wait_for_socket(&stale);
    let mut c = spindle::client::Client::connect(&stale).unwrap();
    c.call(serde_json::json!({"op": "shutdown"})).unwrap();
    assert!(wait_exit(&mut child, 10, "serve after shutdown").success());
    assert!(!stale.exists(), "the socket is removed at shutdown");
}

#[test]
fn serve_removes_its_socket_on_sigterm_and_sigint() {
    let dir = scratch("socket_signals");
    for sig in [Signal::Term, Signal::Int] {
        let sock = dir.join(format!("{sig:?}.sock"));
        let mut child = spindle()
            .args(["serve", "--socket"])
            .arg(&sock)
            .spawn()
            .expect("spawn serve");
        wait_for_socket(&sock);
        // A live target, so stopping has an agent to end.
        let mut c = spindle::client::Client::connect(&sock).unwrap();
        let local = target(&local_specs(1)[0]);
        c.call(serde_json::json!({"op": "ping", "target": local}))
            .unwrap();
        let pid = Pid::from_child(&child);
        kill_process(pid, sig).unwrap();
        let st = wait_exit(&mut child, 10, "serve after a signal");
        assert!(st.success(), "{sig:?}: {st}");
        assert!(!sock.exists(), "{sig:?}: the socket is removed");
    }
}

/// `spindle-*` entries of `tmp`.
fn spindle_entries(tmp: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(tmp)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("spindle-"))
        })
        .collect()
}

/// Starts `spindle run` on one local target with TMPDIR = `tmp` (no XDG_RUNTIME_DIR), through
/// `sh` which first makes a directory at the old predictable path `$TMPDIR/spindle-<pid>.sock`
/// (the pid is the shell's, which `exec` hands to spindle).
fn run_in(tmp: &Path, inv: &Path, cmd: &str) -> Child {
    Command::new("sh")
        .arg("-c")
        .arg("mkdir \"$TMPDIR/spindle-$$.sock\" && exec \"$0\" run -i \"$1\" -- \"$2\"")
        .arg(env!("CARGO_BIN_EXE_spindle"))
        .arg(inv)
        .arg(cmd)
        .env("TMPDIR", tmp)
        .env_remove("XDG_RUNTIME_DIR")
        .env_remove("SPINDLE_SOCKET")
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn spindle run")
}

/// Waits for `run`'s private directory to hold its socket; returns the directory.
fn private_dir(tmp: &Path, squatted: &Path) -> PathBuf {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        for p in spindle_entries(tmp) {
            if p != squatted && p.join("spindle.sock").exists() {
                return p;
            }
        }
        assert!(
            Instant::now() < end,
            "no private socket directory in {} (entries: {:?})",
            tmp.display(),
            spindle_entries(tmp)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn run_uses_a_private_socket_dir_removed_on_exit_and_on_sigterm() {
    let dir = scratch("socket_run");
    let inv = local_inventory(&dir, 1);
    for sigterm in [false, true] {
        let tmp = dir.join(format!("tmp-{sigterm}"));
        std::fs::create_dir_all(&tmp).unwrap();
        let mut child = run_in(&tmp, &inv, if sigterm { "sleep 30" } else { "sleep 1" });
        let squatted = tmp.join(format!("spindle-{}.sock", child.id()));
        let pd = private_dir(&tmp, &squatted);
        let md = std::fs::metadata(&pd).unwrap();
        assert!(md.is_dir());
        assert_eq!(md.permissions().mode() & 0o777, 0o700, "{}", pd.display());
        let sock_md = std::fs::symlink_metadata(pd.join("spindle.sock")).unwrap();
        assert!(sock_md.file_type().is_socket());
        if sigterm {
            kill_process(Pid::from_child(&child), Signal::Term).unwrap();
        }
        let st = wait_exit(&mut child, 20, "spindle run");
        assert_eq!(st.success(), !sigterm, "exit status {st}");
        assert!(!pd.exists(), "{} is removed", pd.display());
        assert!(squatted.is_dir(), "what was at the old path is untouched");
        assert_eq!(spindle_entries(&tmp), vec![squatted]);
    }
}
