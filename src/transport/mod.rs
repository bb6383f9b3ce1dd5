//! Transports: how a target's agent is started. A [`Spec`] names the target; [`command`]
//! turns it into an argv (ssh flags parsed, never pasted into a shell); [`bootstrap`] holds
//! the stage-0/stage-1 text and the compressed agent; [`classify`] turns a failed start into
//! an error an operator understands.

pub mod bootstrap;
pub mod classify;
mod command;
mod enter;

pub use command::{command, hop_command, CommandError, Launch};

use serde::{Deserialize, Serialize};

/// How to reach a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TransportKind {
    /// The `ssh` binary.
    #[default]
    Ssh,
    /// A local interpreter (no network).
    Local,
    /// The agent protocol on a Unix socket at `host` (no bootstrap; used by the scale-test
    /// fleet simulator, which answers as thousands of agents).
    Unix,
    /// `docker exec -i` into the running container named by `host`.
    Docker,
    /// `podman exec -i` into the running container named by `host`.
    Podman,
    /// `buildah run` in the working container named by `host`.
    Buildah,
    /// `lxc-attach --name host` (LXC).
    Lxc,
    /// `lxc exec [REMOTE:]host` (the LXD client; `--project` in `extra_args`).
    Lxd,
    /// `incus exec [REMOTE:]host` (the Incus client; `--project` in `extra_args`).
    Incus,
    /// `kubectl exec -i host [-c container]` (pod; namespace, kubeconfig, context in
    /// `extra_args`).
    Kubectl,
    /// `chroot host` (an absolute directory on this machine).
    Chroot,
    /// `nsenter --target host` into the mount, UTS, IPC, net and PID namespaces of a process.
    Setns,
    /// `jexec host` (FreeBSD jail).
    Jail,
    /// `systemd-run --machine=host --pipe` (systemd-nspawn machine).
    Machinectl,
}

/// A connection spec: everything that identifies one target stream. See `docs/api.md`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// Transport.
    #[serde(default)]
    pub transport: TransportKind,
    /// Host name or address (a label for `local`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// ssh port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Remote user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Private key file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity_file: Option<String>,
    /// ssh client binary (default `ssh`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_executable: Option<String>,
    /// Extra ssh arguments (shell word rules).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_args: Option<String>,
    /// Extra ssh arguments (shell word rules).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_common_args: Option<String>,
    /// Extra ssh arguments (shell word rules).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_extra_args: Option<String>,
    /// Password for ssh password authentication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// Interpreter that starts the stream's agent (`None` = discovery). A start hint, not
    /// part of the stream identity: one stream per host, whatever interpreters its tasks name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub python: Option<String>,
    /// The interpreter this call's module must run under (Ansible's resolved
    /// `ansible_python_interpreter`). When the stream's agent runs another one, the call goes
    /// to a nested agent started under this one on the same stream (an interpreter context,
    /// like a become context; with `become`, the become context runs it). Plain path or name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interpreter: Option<String>,
    /// Seconds from spawn to HELLO (default 30).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<u64>,
    /// Container transports: the engine's client binary (default `docker` / `podman`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executable: Option<String>,
    /// Container transports: arguments before `exec` (shell word rules), like Ansible's
    /// `docker_extra_args` / `podman_extra_args`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra_args: Option<String>,
    /// kubectl: the container of the pod (`-c`), when it has more than one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// lxd/incus: the program run inside the instance to switch to `user` when it is not
    /// `root` (`<su> USER -c`, like the lxd/incus plugins' `become_method`; default `/bin/su`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub su: Option<String>,
    /// Environment added to the local command that starts the agent (the transport tool:
    /// `kubectl`, `lxc`, `ssh`, ...), e.g. kubectl's `local_env_vars`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<std::collections::BTreeMap<String, String>>,
    /// Label used in errors and reports (Ansible's inventory_hostname).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Privilege escalation: the stream is a nested agent started by the agent of this spec
    /// without `become` (see [`Become`]).
    #[serde(default, rename = "become", skip_serializing_if = "Option::is_none")]
    pub escalate: Option<Become>,
    /// Connection delegation: the target is reached through this hop (bastion, jump host),
    /// itself any spec (with its own `via`, recursively). The hop's agent starts this target's
    /// transport command (ssh, ...) and relays its frames; see `docs/api.md`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<Box<Spec>>,
}

/// Least time an agent gets to start once its transport runs (see [`Spec::bootstrap_secs`]).
pub const BOOTSTRAP_MIN_SECS: u64 = 120;
/// Longest connect timeout a spec may ask for, in seconds (one week).
pub const MAX_CONNECT_TIMEOUT_SECS: u64 = 7 * 24 * 3600;

/// Most hops allowed in one `via` chain.
pub const MAX_VIA_DEPTH: usize = 8;

/// Placeholder in [`Become::cmd`] that the target's agent replaces with the command starting
/// the nested agent (its interpreter and stage 1).
pub const BOOT_PLACEHOLDER: &str = "__SPINDLE_BOOT__";

/// A become (sudo, su, doas, ...) context: a second agent on the target, started through the
/// command Ansible's become plugin built, reused for every task with the same method, user,
/// flags and password. See `docs/protocol.md` (nested contexts).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Become {
    /// Method name (`sudo`, `su`, ...).
    pub method: String,
    /// User to become.
    #[serde(default)]
    pub user: String,
    /// Everything else that changes what the command does (executable, flags), as one string.
    #[serde(default)]
    pub flags: String,
    /// Password typed when the prompt appears (never logged; hashed in the stream key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// The shell command, containing [`BOOT_PLACEHOLDER`]. Not part of the stream identity.
    pub cmd: String,
    /// Marker the command prints on stdout once escalation succeeded. Not part of the identity.
    pub success: String,
    /// Regular expression (Python `re`) matching the password prompt. Not part of the identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
}

impl Become {
    /// Checks what the agent cannot recover from.
    pub fn validate(&self) -> Result<(), String> {
        if !self.cmd.contains(BOOT_PLACEHOLDER) {
            return Err(format!("become.cmd must contain {BOOT_PLACEHOLDER}"));
        }
        if self.success.trim().is_empty() || self.success.contains('\n') {
            return Err("become.success must be a non-empty single line".into());
        }
        if self.method.is_empty() {
            return Err("become.method must be set".into());
        }
        Ok(())
    }
}

impl Spec {
    /// The stream identity: every field but `connect_timeout` and `python` (a start hint).
    /// (`name` is part of it: two inventory hosts are two connections, as in Ansible.)
    /// A become context's identity leaves out its per-task command text and hashes the
    /// password.
    pub fn key(&self) -> String {
        serde_json::to_string(&self.identity()).unwrap_or_default()
    }

    /// The spec with what is not identity left out (recursively through `via`).
    /// Passwords (ssh's and become's) appear only as their SHA-256: the key is a map key and
    /// may be logged, the secrets must not be.
    fn identity(&self) -> Spec {
        let hash = |p: &String| crate::cache::sha256_hex(p.as_bytes());
        let mut k = self.clone();
        k.connect_timeout = None;
        k.python = None;
        k.password = self.password.as_ref().map(hash);
        k.via = self.via.as_ref().map(|v| Box::new(v.identity()));
        if let Some(b) = &mut k.escalate {
            b.cmd.clear();
            b.success.clear();
            b.prompt = None;
            b.password = b.password.as_ref().map(hash);
        }
        k
    }

    /// Number of hops in the `via` chain.
    pub fn via_depth(&self) -> usize {
        let mut n = 0;
        let mut s = self;
        while let Some(v) = &s.via {
            n += 1;
            s = v;
        }
        n
    }

    /// The spec of the stream that starts this context (itself without `become` and
    /// `interpreter`).
    pub fn parent(&self) -> Spec {
        Spec {
            escalate: None,
            interpreter: None,
            ..self.clone()
        }
    }

    /// Whether this is a nested agent on its host's own stream (a become or interpreter
    /// context), as opposed to a stream or a target behind a via hop.
    pub fn is_context(&self) -> bool {
        self.escalate.is_some() || self.interpreter.is_some()
    }

    /// The label for messages: the host, plus `(method:user)` for a become context.
    pub fn label(&self) -> String {
        let host = self
            .name
            .clone()
            .or_else(|| self.host.clone())
            .unwrap_or_else(|| "localhost".into());
        let host = match &self.escalate {
            Some(b) => format!("{host} ({}:{})", b.method, b.user),
            None => host,
        };
        let host = match &self.interpreter {
            Some(p) => format!("{host} [{p}]"),
            None => host,
        };
        match &self.via {
            Some(v) => {
                let hop = v.name.clone().or_else(|| v.host.clone());
                format!("{host} via {}", hop.unwrap_or_else(|| "localhost".into()))
            }
            None => host,
        }
    }

    /// Checks `interpreter`: a plain path or command name the agent can quote safely.
    pub fn validate_interpreter(&self) -> Result<(), String> {
        match &self.interpreter {
            Some(p) if !plain_program(p) => Err(format!(
                "interpreter {p:?} must be a plain path or name (letters, digits, _./+-)"
            )),
            _ => Ok(()),
        }
    }

    /// Connect timeout in seconds: what ssh gets as `ConnectTimeout` (TCP connect and the
    /// ssh handshake, as Ansible's `timeout`), and a become context's prompt timeout; within
    /// 1..=[`MAX_CONNECT_TIMEOUT_SECS`] (requests outside it are refused at parse time; the
    /// clamp keeps deadline arithmetic total regardless).
    pub fn connect_timeout_secs(&self) -> u64 {
        self.connect_timeout
            .unwrap_or(30)
            .clamp(1, MAX_CONNECT_TIMEOUT_SECS)
    }

    /// Seconds the agent has to start once its transport runs (login, stage 0/1, HELLO), as
    /// long as nothing moves: 4 connect timeouts, at least [`BOOTSTRAP_MIN_SECS`]. A loaded
    /// target is slow, not unreachable: progress restarts this period (see
    /// [`Spec::bootstrap_limit_secs`]).
    /// The `unix` transport has no bootstrap (the agent protocol on a socket): its connect
    /// timeout is all it gets.
    pub fn bootstrap_secs(&self) -> u64 {
        if self.transport == TransportKind::Unix {
            return self.connect_timeout_secs();
        }
        self.connect_timeout_secs()
            .saturating_mul(4)
            .max(BOOTSTRAP_MIN_SECS)
    }

    /// The most an agent start may take while it keeps making progress: 5 bootstrap periods.
    pub fn bootstrap_limit_secs(&self) -> u64 {
        if self.transport == TransportKind::Unix {
            return self.connect_timeout_secs();
        }
        self.bootstrap_secs().saturating_mul(5)
    }
}

/// A program path or name that needs no shell quoting: `[A-Za-z0-9_./+-]`, not starting with
/// `-` (what the agent accepts for a nested agent's interpreter).
pub fn plain_program(p: &str) -> bool {
    !p.is_empty()
        && !p.starts_with('-')
        && p.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_./+-".contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stream_key_holds_no_password() {
        let s: Spec = serde_json::from_value(serde_json::json!({
            "host": "h", "password": "ssh-secret",
            "via": {"host": "hop", "password": "hop-secret"},
            "become": {"method": "sudo", "user": "root", "cmd": "sudo -S", "success": "OK",
                       "password": "become-secret"}
        }))
        .expect("a spec");
        let key = s.key();
        for secret in ["ssh-secret", "hop-secret", "become-secret"] {
            assert!(!key.contains(secret), "{key}");
        }
        let mut other = s.clone();
        other.password = Some("another".into());
        assert_ne!(
            other.key(),
            key,
            "a different password is a different stream"
        );
    }
}
