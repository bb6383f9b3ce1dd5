//! What a stream's stdout carries before the agent's first frame.
//!
//! A stream's agent is started by a command its login shell runs (ssh) or a shell it is given
//! (local, container engines). What that shell prints first is not the agent's: a greeting an
//! rc file echoes (`~/.bashrc` runs for ssh commands too), a banner, a `motd`-like script.
//! Stock Ansible copes with it (it looks for a module's JSON past such lines), so an inventory
//! whose login shells talk must work here too. Stage 1 (see `transport::bootstrap`) writes
//! [`BOOT_MARKER`] on stdout before it reads the agent; [`BootScan`] skips everything before
//! it, at most [`MAX_PREAMBLE`] bytes (bounded memory: a shell printing more is an error that
//! says so, not a hang), and hands what follows it to the frame decoder.

/// Stage 1's first write on stdout: the agent's frames follow it.
pub const BOOT_MARKER: &[u8] = b"SPINDLE-AGENT-BOOT-1\n";

/// What a login shell may print before the marker (then the stream fails with what it printed).
pub const MAX_PREAMBLE: usize = 64 * 1024;

/// What [`BootScan::push`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum BootStep {
    /// No marker yet: every byte so far is kept (at most [`MAX_PREAMBLE`] plus the marker).
    Waiting,
    /// The marker: what came before it (`preamble`, empty when the shell printed nothing) and
    /// the bytes after it, the agent's first frames (may be empty).
    Started { preamble: Vec<u8>, rest: Vec<u8> },
    /// Over [`MAX_PREAMBLE`] bytes and no marker; `preamble` is what was read (its first
    /// [`MAX_PREAMBLE`] bytes).
    Overflow { preamble: Vec<u8> },
}

/// Finds the boot marker in a stream's first bytes (see the module doc).
#[derive(Debug, Default)]
pub struct BootScan {
    buf: Vec<u8>,
}

impl BootScan {
    /// Appends `bytes` and looks for the marker (only where a new byte can complete it).
    pub fn push(&mut self, bytes: &[u8]) -> BootStep {
        let from = self.buf.len().saturating_sub(BOOT_MARKER.len() - 1);
        self.buf.extend_from_slice(bytes);
        if let Some(at) = find(&self.buf[from..], BOOT_MARKER) {
            let at = from + at;
            let rest = self.buf.split_off(at + BOOT_MARKER.len());
            self.buf.truncate(at);
            return BootStep::Started {
                preamble: std::mem::take(&mut self.buf),
                rest,
            };
        }
        // Keep a possible start of the marker past the limit, never more.
        if self.buf.len() >= MAX_PREAMBLE + BOOT_MARKER.len() {
            self.buf.truncate(MAX_PREAMBLE);
            return BootStep::Overflow {
                preamble: std::mem::take(&mut self.buf),
            };
        }
        BootStep::Waiting
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// `preamble` for a log line: its first 200 characters, lossy UTF-8, control characters
/// escaped (a shell's output must not forge log lines).
pub fn preview(preamble: &[u8]) -> String {
    let text = String::from_utf8_lossy(&preamble[..preamble.len().min(600)]);
    let mut out: String = text
        .chars()
        .take(200)
        .flat_map(char::escape_default)
        .collect();
    if text.chars().count() > 200 || preamble.len() > 600 {
        out.push_str("...");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(chunks: &[&[u8]]) -> Vec<BootStep> {
        let mut s = BootScan::default();
        chunks.iter().map(|c| s.push(c)).collect()
    }

    #[test]
    fn a_quiet_shell_starts_at_once() {
        let mut s = BootScan::default();
        let mut bytes = BOOT_MARKER.to_vec();
        bytes.extend_from_slice(b"SP\x01");
        assert_eq!(
            s.push(&bytes),
            BootStep::Started {
                preamble: vec![],
                rest: b"SP\x01".to_vec()
            }
        );
    }

    #[test]
    fn what_a_shell_prints_first_is_skipped_even_without_a_line_end() {
        let mut bytes = b"Welcome to web1\nno newline".to_vec();
        bytes.extend_from_slice(BOOT_MARKER);
        let steps = feed(&[&bytes]);
        assert_eq!(
            steps,
            vec![BootStep::Started {
                preamble: b"Welcome to web1\nno newline".to_vec(),
                rest: vec![]
            }]
        );
    }

    #[test]
    fn a_marker_split_across_reads_is_found() {
        for cut in 1..BOOT_MARKER.len() {
            let (a, b) = BOOT_MARKER.split_at(cut);
            let mut first = b"motd ".to_vec();
            first.extend_from_slice(a);
            let mut second = b.to_vec();
            second.extend_from_slice(b"frames");
            let steps = feed(&[&first, &second]);
            assert_eq!(steps[0], BootStep::Waiting, "cut {cut}");
            assert_eq!(
                steps[1],
                BootStep::Started {
                    preamble: b"motd ".to_vec(),
                    rest: b"frames".to_vec()
                },
                "cut {cut}"
            );
        }
    }

    #[test]
    fn a_shell_that_never_stops_talking_is_cut_off_at_the_limit() {
        let mut s = BootScan::default();
        let chunk = vec![b'y'; 4096];
        let mut last = BootStep::Waiting;
        for _ in 0..(MAX_PREAMBLE / 4096 + 2) {
            last = s.push(&chunk);
            if last != BootStep::Waiting {
                break;
            }
        }
        match last {
            BootStep::Overflow { preamble } => assert_eq!(preamble.len(), MAX_PREAMBLE),
            other => panic!("expected overflow, got {other:?}"),
        }
    }

    #[test]
    fn the_preview_escapes_control_characters_and_is_short() {
        assert_eq!(preview(b"hi\n\x1b[0m"), "hi\\n\\u{1b}[0m");
        assert!(preview(&[b'x'; 5000]).ends_with("..."));
        assert!(preview(&[b'x'; 5000]).len() < 210);
    }
}
