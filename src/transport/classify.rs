//! Turning a failed connection (ssh's stderr, the stage-0 marker) into its API error kind.

use super::bootstrap::NO_PYTHON_MARKER;
use crate::api::ErrorKind;

/// Classifies a stream that ended; `connected` is whether the agent had said HELLO.
pub fn classify(stderr: &str, connected: bool) -> ErrorKind {
    let has = |s: &str| stderr.contains(s);
    if has(NO_PYTHON_MARKER) {
        return ErrorKind::NoPython;
    }
    if connected {
        return ErrorKind::ConnectionLost;
    }
    if has("REMOTE HOST IDENTIFICATION HAS CHANGED")
        || has("Host key verification failed")
        || has("host key is known")
        || has("Host key for")
    {
        ErrorKind::HostKeyMismatch
    } else if has("Permission denied") || has("Too many authentication failures") {
        ErrorKind::AuthFailed
    } else if has("timed out") {
        ErrorKind::Timeout
    } else if has("Connection refused")
        || has("No route to host")
        || has("Could not resolve hostname")
        || has("Network is unreachable")
        || has("Name or service not known")
        || has("Connection closed by")
        || has("Connection reset")
        || has("kex_exchange_identification")
    {
        ErrorKind::Unreachable
    } else {
        ErrorKind::ConnectionLost
    }
}

/// Lines ssh (or a login) prints on a connection that works: never the reason a start failed.
const NOISE: &[&str] = &[
    "Warning: Permanently added",
    "** WARNING: connection is not using a post-quantum key exchange",
    "** This session may be vulnerable to",
    "** The server may need to be upgraded",
    "Pseudo-terminal will not be allocated",
    "Warning: No xauth data",
    "X11 forwarding request failed",
    "Warning: untrusted X11 forwarding",
];

/// ssh's complaints about the user's own key or configuration, which say why the refusal on
/// its last line happened (stock Ansible shows ssh's whole stderr; these are the lines of it an
/// operator needs: a key file that is missing, unreadable or too open, a bad option).
const EXPLAINS: &[&str] = &[
    "no such identity:",
    "not accessible:", // "Warning: Identity file K not accessible: ..." (ssh -i)
    "Load key ",
    "UNPROTECTED PRIVATE KEY FILE",
    "are too open",
    "Bad owner or permissions on",
    "Bad configuration option",
    "Unsupported option",
];

/// What OpenSSH's client prints when an established connection breaks (its `fatal` and
/// `logit` lines in clientloop.c, packet.c and mux.c).
const CONNECTION_BROKE: &[&str] = &[
    "closed by remote host",
    "Connection closed by",
    "Connection reset",
    "Broken pipe",
    "not responding",
    "Read from remote host",
    "Write failed",
    "packet_write_wait",
    "ssh_dispatch_run_fatal",
    "Received disconnect",
    "Disconnected from",
    "Corrupted MAC",
    "Bad packet length",
    "client_loop:",
    "mux_client",
    "timed out",
    "Network is unreachable",
    "No route to host",
];

/// Whether ssh's output (after the agent was up) says the connection broke. When the remote
/// command ends on a signal instead (the agent killed on the target), ssh exits 255 and
/// prints nothing: what is there then is the agent's own stderr (a nested agent's, a shell's
/// "Killed").
pub fn connection_broke(output: &str) -> bool {
    output
        .lines()
        .any(|l| CONNECTION_BROKE.iter().any(|c| l.contains(c)))
}

/// The line of a failed start's output to quote as its reason: the last non-empty line that
/// is not known noise (ssh's "Warning: Permanently added ..."), else the last non-empty line;
/// after at most three of ssh's lines that explain it ([`EXPLAINS`]), joined by "; ".
pub fn reason_line(output: &str) -> String {
    let lines = || {
        output
            .lines()
            .rev()
            .map(str::trim)
            .filter(|l| !l.is_empty())
    };
    let last = lines()
        .find(|l| !NOISE.iter().any(|n| l.starts_with(n)))
        .or_else(|| lines().next())
        .unwrap_or("");
    let mut why: Vec<&str> = output
        .lines()
        .map(|l| l.trim().trim_matches('@').trim())
        .filter(|l| *l != last && EXPLAINS.iter().any(|e| l.contains(e)))
        .collect();
    why.dedup();
    why.truncate(3);
    why.push(last);
    why.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reason_is_not_ssh_noise() {
        let out = "python3: can't open file: No such file\r\n\
                   Warning: Permanently added 'web1' (ED25519) to the list of known hosts.\r\n\n";
        assert_eq!(reason_line(out), "python3: can't open file: No such file");
        let only = "Warning: Permanently added 'web1' (ED25519) to the list of known hosts.";
        assert_eq!(reason_line(only), only);
        assert_eq!(reason_line(""), "");
        let pq = "bash: line 1: exec: nope: not found\n\
                  ** WARNING: connection is not using a post-quantum key exchange algorithm.\n\
                  ** This session may be vulnerable to \"store now, decrypt later\" attacks.\n\
                  ** The server may need to be upgraded. See https://openssh.com/pq.html\n";
        assert_eq!(reason_line(pq), "bash: line 1: exec: nope: not found");
    }

    #[test]
    fn a_broken_connection_is_told_from_a_killed_agent() {
        for broke in [
            "Connection to 10.0.0.2 closed by remote host.\r\n",
            "client_loop: send disconnect: Broken pipe\r\n",
            "Timeout, server web1 not responding.\r\n",
            "Read from remote host web1: Connection reset by peer\r\n",
            "ssh_dispatch_run_fatal: Connection to 10.0.0.2 port 22: Broken pipe\r\n",
        ] {
            assert!(connection_broke(broke), "{broke}");
        }
        for killed in [
            "",
            "\n\r\n",
            "Killed\n",
            "bash: line 1:  4242 Terminated  sleep 9\n",
        ] {
            assert!(!connection_broke(killed), "{killed}");
        }
    }

    #[test]
    fn what_explains_a_refusal_comes_with_it() {
        let missing = "no such identity: /keys/k: No such file or directory\r\n\
                       root@h: Permission denied (publickey).\r\n";
        assert_eq!(
            reason_line(missing),
            "no such identity: /keys/k: No such file or directory; root@h: Permission denied (publickey)."
        );
        let with_i = "Warning: Identity file /k not accessible: No such file or directory.\n\
                      Warning: Permanently added 'h' (ED25519) to the list of known hosts.\n\
                      root@h: Permission denied (publickey).\n";
        assert_eq!(
            reason_line(with_i),
            "Warning: Identity file /k not accessible: No such file or directory.; \
             root@h: Permission denied (publickey)."
        );
        let open = "@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@\n\
                    @         WARNING: UNPROTECTED PRIVATE KEY FILE!          @\n\
                    @@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@\n\
                    Permissions 0644 for '/k' are too open.\n\
                    It is required that your private key files are NOT accessible by others.\n\
                    This private key will be ignored.\n\
                    Load key \"/k\": bad permissions\n\
                    u@h: Permission denied (publickey).\n";
        assert_eq!(
            reason_line(open),
            "WARNING: UNPROTECTED PRIVATE KEY FILE!; Permissions 0644 for '/k' are too open.; \
             Load key \"/k\": bad permissions; u@h: Permission denied (publickey)."
        );
    }

    #[test]
    fn ssh_messages() {
        let c = |s| classify(s, false);
        assert_eq!(
            c("ssh: connect to host 10.0.0.1 port 22: Connection refused"),
            ErrorKind::Unreachable
        );
        assert_eq!(
            c("root@h: Permission denied (publickey)."),
            ErrorKind::AuthFailed
        );
        assert_eq!(
            c("Host key verification failed."),
            ErrorKind::HostKeyMismatch
        );
        assert_eq!(
            c("ssh: connect to host h port 22: Connection timed out"),
            ErrorKind::Timeout
        );
        assert_eq!(
            c("spindle: no python interpreter found"),
            ErrorKind::NoPython
        );
        assert_eq!(classify("", true), ErrorKind::ConnectionLost);
    }
}
