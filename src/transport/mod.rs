//! Transports: how a target's agent is started. A [`Spec`] names the target; [`command`]
//! turns it into an argv (ssh flags parsed, never pasted into a shell); [`bootstrap`] holds
//! the stage-0/stage-1 text and the compressed agent; [`classify`] turns a failed start into
//! an error an operator understands.

pub mod bootstrap;
pub mod classify;
mod command;

pub use command::{command, CommandError, Launch};

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
    /// Interpreter on the target (`None` = discovery).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub python: Option<String>,
    /// Seconds from spawn to HELLO (default 30).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<u64>,
    /// Label used in errors and reports (Ansible's inventory_hostname).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl Spec {
    /// The stream identity: every field but `connect_timeout`. (`name` is part of it: two
    /// inventory hosts are two connections, as in Ansible.)
    pub fn key(&self) -> String {
        let mut k = self.clone();
        k.connect_timeout = None;
        serde_json::to_string(&k).unwrap_or_default()
    }

    /// The label for messages.
    pub fn label(&self) -> String {
        self.name
            .clone()
            .or_else(|| self.host.clone())
            .unwrap_or_else(|| "localhost".into())
    }

    /// Connect timeout in seconds.
    pub fn connect_timeout_secs(&self) -> u64 {
        self.connect_timeout.unwrap_or(30).max(1)
    }
}
