//! Shared helpers for behaviour tests: a real network-namespace sshd fleet
//! (`containers/netns-fleet.sh`), a real `spindle serve` process, and small client helpers.
#![allow(dead_code)]

use spindle::client::Client;
use spindle::transport::Spec;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A scratch dir for one test, on disk (not /tmp, which a test inspects).
pub fn scratch(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("scratch dir");
    d
}

/// A directory on the shared file system that namespace targets see at the same path (their
/// /tmp, /var/tmp and /root are private mounts, and the checkout may itself be under /tmp).
pub fn shared_dir(name: &str) -> PathBuf {
    let d = PathBuf::from("/var/lib/spindle-tests").join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("shared test dir");
    d
}

/// A running fleet of namespace sshd targets; torn down on drop.
pub struct Fleet {
    pub name: String,
    pub inventory: PathBuf,
    pub specs: Vec<Spec>,
}

impl Fleet {
    /// Brings up `count` targets, or returns None (printing why) where this machine cannot.
    pub fn up(name: &str, count: usize) -> Option<Fleet> {
        let script = root().join("containers/netns-fleet.sh");
        let out = Command::new("bash")
            .arg(&script)
            .args(["up", name, &count.to_string()])
            .stderr(Stdio::inherit())
            .output()
            .expect("run netns-fleet.sh");
        if out.status.code() == Some(77) {
            eprintln!("SKIP: netns fleet unavailable on this machine (see message above)");
            return None;
        }
        assert!(
            out.status.success(),
            "netns-fleet.sh up failed: {:?}",
            out.status
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let inv = stdout
            .lines()
            .last()
            .expect("inventory path")
            .trim()
            .to_string();
        let specs = spindle::inventory::load(&inv).expect("inventory parses");
        assert_eq!(specs.len(), count);
        Some(Fleet {
            name: name.into(),
            inventory: inv.into(),
            specs,
        })
    }

    /// Runs the fleet script with extra arguments.
    pub fn script(&self, args: &[&str]) -> std::process::Output {
        Command::new("bash")
            .arg(root().join("containers/netns-fleet.sh"))
            .args(args)
            .output()
            .expect("run netns-fleet.sh")
    }

    /// Kills target `i`'s sshd and every session under it.
    pub fn kill_sshd(&self, i: usize) {
        let o = self.script(&["kill-sshd", &self.name, &i.to_string()]);
        assert!(
            o.status.success(),
            "kill-sshd: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        let _ = self.script(&["down", &self.name]);
    }
}

/// A `spindle serve` process on a private socket; killed on drop.
pub struct Daemon {
    pub child: Child,
    pub socket: PathBuf,
}

impl Daemon {
    pub fn start(dir: &Path) -> Daemon {
        Daemon::start_with(dir, &[])
    }

    /// A daemon with extra `serve` arguments.
    pub fn start_with(dir: &Path, extra: &[&str]) -> Daemon {
        Daemon::start_logged(dir, extra, Stdio::inherit())
    }

    /// A daemon with extra `serve` arguments and its stderr (its log) going to `log`.
    pub fn start_logged(dir: &Path, extra: &[&str], log: impl Into<Stdio>) -> Daemon {
        let socket = dir.join("spindle.sock");
        let child = Command::new(env!("CARGO_BIN_EXE_spindle"))
            .args(["serve", "--socket"])
            .arg(&socket)
            .args(extra)
            .stderr(log)
            .spawn()
            .expect("spawn spindle serve");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Client::connect(&socket).is_err() {
            assert!(Instant::now() < deadline, "daemon did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
        Daemon { child, socket }
    }

    pub fn client(&self) -> Client {
        Client::connect(&self.socket).expect("connect to daemon")
    }

    /// Peak resident set size of the daemon process, in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        self.status_kib("VmHWM:")
    }

    /// Resident set size of the daemon process now, in KiB.
    pub fn rss_kib(&self) -> u64 {
        self.status_kib("VmRSS:")
    }

    /// A `kB` figure of /proc/PID/status (`field` with its colon).
    fn status_kib(&self, field: &str) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        s.lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The target spec as JSON, for building requests.
pub fn target(spec: &Spec) -> serde_json::Value {
    serde_json::to_value(spec).expect("spec serialises")
}

/// Decodes a base64 field of an exec result.
pub fn b64(v: &serde_json::Value, k: &str) -> String {
    use base64::Engine as _;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(v[k].as_str().unwrap_or(""))
        .unwrap_or_default();
    String::from_utf8_lossy(&raw).into_owned()
}

/// `n` local-transport targets.
pub fn local_specs(n: usize) -> Vec<Spec> {
    (0..n)
        .map(|i| Spec {
            transport: spindle::transport::TransportKind::Local,
            host: Some(format!("local{i}")),
            name: Some(format!("local{i}")),
            ..Default::default()
        })
        .collect()
}

/// Writes an INI inventory of local targets.
pub fn local_inventory(dir: &Path, n: usize) -> PathBuf {
    let mut s = String::from("[local]\n");
    for i in 0..n {
        s.push_str(&format!("local{i} ansible_connection=local\n"));
    }
    let p = dir.join("local.ini");
    std::fs::write(&p, s).expect("write inventory");
    p
}

/// Whether sudo-based become tests can run here (root and /usr/bin/sudo; scripts/setup.sh
/// installs sudo).
pub fn can_sudo() -> bool {
    Path::new("/usr/bin/sudo").exists() && rustix::process::geteuid().is_root()
}

/// `len` pseudo-random bytes (xorshift, different per `seed`): incompressible, as blobs
/// travel zlib-compressed.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ seed;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect()
}
