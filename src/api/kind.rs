//! The error kinds of the daemon's API: one enum for every `"kind"` a reply's error object can
//! carry. Its wire names are exactly the table in `docs/api.md` (a test below reads the table).

use std::fmt;

/// Why a request failed (the `error.kind` of a reply).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// No TCP connection (refused, no route, DNS), or an ssh host name that cannot be one.
    Unreachable,
    /// ssh authentication failed.
    AuthFailed,
    /// Host key unknown or changed.
    HostKeyMismatch,
    /// No Python interpreter found on the target.
    NoPython,
    /// A connect or call deadline passed.
    Timeout,
    /// The stream died mid-call (or for a reason not recognised).
    ConnectionLost,
    /// The agent's process ended while ssh said nothing of a lost connection (killed on the
    /// target: by a task, the OOM killer), or a become or interpreter context's did.
    AgentEnded,
    /// The target sent malformed or oversize frames.
    Protocol,
    /// The agent reported an error.
    Remote,
    /// Reading `src` / writing `dest` on the controller failed.
    LocalIo,
    /// The request itself is wrong.
    BadRequest,
    /// The target's queue is full.
    Busy,
    /// A `call` named blobs the daemon's cache does not hold.
    MissingBlobs,
    /// A become context did not start.
    BecomeFailed,
    /// An interpreter context did not start.
    InterpreterFailed,
}

impl ErrorKind {
    /// Every kind, in docs/api.md's order.
    pub const ALL: [ErrorKind; 15] = [
        ErrorKind::Unreachable,
        ErrorKind::AuthFailed,
        ErrorKind::HostKeyMismatch,
        ErrorKind::NoPython,
        ErrorKind::Timeout,
        ErrorKind::ConnectionLost,
        ErrorKind::AgentEnded,
        ErrorKind::Protocol,
        ErrorKind::Remote,
        ErrorKind::LocalIo,
        ErrorKind::BadRequest,
        ErrorKind::Busy,
        ErrorKind::MissingBlobs,
        ErrorKind::BecomeFailed,
        ErrorKind::InterpreterFailed,
    ];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Unreachable => "unreachable",
            ErrorKind::AuthFailed => "auth_failed",
            ErrorKind::HostKeyMismatch => "host_key_mismatch",
            ErrorKind::NoPython => "no_python",
            ErrorKind::Timeout => "timeout",
            ErrorKind::ConnectionLost => "connection_lost",
            ErrorKind::AgentEnded => "agent_ended",
            ErrorKind::Protocol => "protocol",
            ErrorKind::Remote => "remote",
            ErrorKind::LocalIo => "local_io",
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::Busy => "busy",
            ErrorKind::MissingBlobs => "missing_blobs",
            ErrorKind::BecomeFailed => "become_failed",
            ErrorKind::InterpreterFailed => "interpreter_failed",
        }
    }

    /// The kind with this wire name (a reply read back by the CLI client).
    pub fn from_name(name: &str) -> Option<ErrorKind> {
        ErrorKind::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for ErrorKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kinds in docs/api.md's "Error kinds" table, in order.
    fn documented() -> Vec<String> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/api.md");
        let text = std::fs::read_to_string(path).expect("docs/api.md");
        let table = text
            .split("Error kinds:")
            .nth(1)
            .expect("docs/api.md has an \"Error kinds:\" table");
        table
            .lines()
            .skip_while(|l| !l.starts_with('|'))
            .take_while(|l| l.starts_with('|'))
            .filter_map(|l| l.split('`').nth(1).map(str::to_string))
            .collect()
    }

    #[test]
    fn the_enum_is_exactly_the_documented_table() {
        let names: Vec<String> = ErrorKind::ALL
            .iter()
            .map(|k| k.as_str().to_string())
            .collect();
        assert_eq!(documented(), names);
    }

    #[test]
    fn names_round_trip_and_serialise_as_strings() {
        for k in ErrorKind::ALL {
            assert_eq!(ErrorKind::from_name(k.as_str()), Some(k));
            assert_eq!(
                serde_json::to_value(k).ok(),
                Some(serde_json::json!(k.as_str()))
            );
        }
        assert_eq!(ErrorKind::from_name("nope"), None);
    }
}
