//! Turning a failed connection (ssh's stderr, the stage-0 marker) into a typed error kind.

use super::bootstrap::NO_PYTHON_MARKER;

/// Error kinds shared with the API (`docs/api.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailKind {
    /// No TCP connection.
    Unreachable,
    /// Authentication refused.
    AuthFailed,
    /// Host key unknown or changed.
    HostKeyMismatch,
    /// No interpreter on the target.
    NoPython,
    /// A deadline passed.
    Timeout,
    /// The stream died after it was up (or for a reason not recognised).
    ConnectionLost,
}

impl FailKind {
    /// The API name.
    pub fn as_str(self) -> &'static str {
        match self {
            FailKind::Unreachable => "unreachable",
            FailKind::AuthFailed => "auth_failed",
            FailKind::HostKeyMismatch => "host_key_mismatch",
            FailKind::NoPython => "no_python",
            FailKind::Timeout => "timeout",
            FailKind::ConnectionLost => "connection_lost",
        }
    }
}

/// Classifies a stream that ended; `connected` is whether the agent had said HELLO.
pub fn classify(stderr: &str, connected: bool) -> FailKind {
    let has = |s: &str| stderr.contains(s);
    if has(NO_PYTHON_MARKER) {
        return FailKind::NoPython;
    }
    if connected {
        return FailKind::ConnectionLost;
    }
    if has("REMOTE HOST IDENTIFICATION HAS CHANGED")
        || has("Host key verification failed")
        || has("host key is known")
        || has("Host key for")
    {
        FailKind::HostKeyMismatch
    } else if has("Permission denied") || has("Too many authentication failures") {
        FailKind::AuthFailed
    } else if has("timed out") {
        FailKind::Timeout
    } else if has("Connection refused")
        || has("No route to host")
        || has("Could not resolve hostname")
        || has("Network is unreachable")
        || has("Name or service not known")
        || has("Connection closed by")
        || has("Connection reset")
        || has("kex_exchange_identification")
    {
        FailKind::Unreachable
    } else {
        FailKind::ConnectionLost
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssh_messages() {
        let c = |s| classify(s, false);
        assert_eq!(
            c("ssh: connect to host 10.0.0.1 port 22: Connection refused"),
            FailKind::Unreachable
        );
        assert_eq!(
            c("root@h: Permission denied (publickey)."),
            FailKind::AuthFailed
        );
        assert_eq!(
            c("Host key verification failed."),
            FailKind::HostKeyMismatch
        );
        assert_eq!(
            c("ssh: connect to host h port 22: Connection timed out"),
            FailKind::Timeout
        );
        assert_eq!(
            c("spindle: no python interpreter found"),
            FailKind::NoPython
        );
        assert_eq!(classify("", true), FailKind::ConnectionLost);
    }
}
