//! Agent LOG records in the daemon's log, with a target unable to flood or forge it: each
//! record is escaped (control characters, newlines and Unicode line/bidi controls shown as
//! `\n`, `\x1b`, `\u{2028}`, ...) and truncated to [`LOG_RECORD_MAX`] bytes (saying how much
//! was cut), and each target may log at most [`LOG_RATE`] records a second with bursts of
//! [`LOG_BURST`] (a token bucket); the records dropped are counted and reported at most once
//! per [`DROP_REPORT_EVERY`] in one line naming the target. Time is an input (sans-IO). The
//! same limiter bounds the lines of a target's transport stderr (ssh's, or the remote
//! shell's) that the server logs at debug level.

use std::time::{Duration, Instant};

/// Bytes of one agent log record (message, escaped) written to the daemon's log at most.
pub const LOG_RECORD_MAX: usize = 4096;
/// Bytes of a record's logger name written at most.
const LOGGER_NAME_MAX: usize = 128;
/// Agent log records per second a target may have written to the daemon's log (sustained).
pub const LOG_RATE: f64 = 20.0;
/// Agent log records a target may have written in one burst.
pub const LOG_BURST: f64 = 100.0;
/// Dropped records are reported at most this often per target.
pub const DROP_REPORT_EVERY: Duration = Duration::from_secs(1);

/// A target's log budget: a token bucket and the count of records dropped since the last
/// report.
#[derive(Debug)]
pub struct LogLimiter {
    tokens: f64,
    refilled: Option<Instant>,
    dropped: u64,
    reported: Option<Instant>,
}

impl Default for LogLimiter {
    fn default() -> Self {
        LogLimiter {
            tokens: LOG_BURST,
            refilled: None,
            dropped: 0,
            reported: None,
        }
    }
}

impl LogLimiter {
    /// Whether one more record may be written at `now` (else it is counted as dropped).
    pub fn allow(&mut self, now: Instant) -> bool {
        if let Some(at) = self.refilled {
            let secs = now.saturating_duration_since(at).as_secs_f64();
            self.tokens = (self.tokens + secs * LOG_RATE).min(LOG_BURST);
        }
        self.refilled = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            self.dropped = self.dropped.saturating_add(1);
            false
        }
    }

    /// When the next drop report is due (None: nothing dropped since the last one): the
    /// router's tick is woken for it.
    pub fn report_due_at(&self, now: Instant) -> Option<Instant> {
        if self.dropped == 0 {
            return None;
        }
        Some(
            self.reported
                .map_or(now, |at| (at + DROP_REPORT_EVERY).max(now)),
        )
    }

    /// The number of records dropped since the last report, when there are some and the
    /// last report is at least [`DROP_REPORT_EVERY`] old.
    pub fn due_report(&mut self, now: Instant) -> Option<u64> {
        if self.dropped == 0
            || self
                .reported
                .is_some_and(|at| now.saturating_duration_since(at) < DROP_REPORT_EVERY)
        {
            return None;
        }
        self.reported = Some(now);
        Some(std::mem::take(&mut self.dropped))
    }
}

/// `s` made safe for one log line: control characters, line and paragraph separators and
/// bidirectional controls escaped, at most `max` bytes of output, then a note of how many
/// bytes of `s` were cut.
pub fn escape_for_log(s: &str, max: usize) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(s.len().min(max) + 32);
    for (i, c) in s.char_indices() {
        let before = out.len();
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x100 && c.is_control() => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
        if out.len() > max {
            out.truncate(before);
            let _ = write!(out, " [... {} bytes cut]", s.len() - i);
            break;
        }
    }
    out
}

/// Writes one agent LOG record (JSON `{"level", "name", "msg"}`) of target `label` to the
/// daemon's log, escaped and truncated.
pub(super) fn emit(label: &str, payload: &[u8]) {
    #[derive(serde::Deserialize, Default)]
    struct Record<'a> {
        #[serde(default, borrow)]
        level: std::borrow::Cow<'a, str>,
        #[serde(default, borrow)]
        name: std::borrow::Cow<'a, str>,
        #[serde(default, borrow)]
        msg: std::borrow::Cow<'a, str>,
    }
    let (level, name, msg) = match serde_json::from_slice::<Record>(payload) {
        Ok(r) => (
            r.level.into_owned(),
            escape_for_log(&r.name, LOGGER_NAME_MAX),
            escape_for_log(&r.msg, LOG_RECORD_MAX),
        ),
        Err(_) => {
            let raw = String::from_utf8_lossy(payload);
            let m = format!(
                "(not a log record) {}",
                escape_for_log(&raw, LOG_RECORD_MAX)
            );
            ("WARNING".to_string(), String::new(), m)
        }
    };
    match level.as_str() {
        "DEBUG" => tracing::debug!(host = %label, logger = %name, "agent: {msg}"),
        "INFO" => tracing::info!(host = %label, logger = %name, "agent: {msg}"),
        "WARNING" => tracing::warn!(host = %label, logger = %name, "agent: {msg}"),
        _ => tracing::error!(host = %label, logger = %name, "agent: {msg}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_rate_then_one_report_per_second() {
        let t0 = Instant::now();
        let mut l = LogLimiter::default();
        let allowed = (0..1000).filter(|_| l.allow(t0)).count();
        assert_eq!(allowed, LOG_BURST as usize);
        assert_eq!(l.due_report(t0), Some(900));
        assert_eq!(l.due_report(t0), None, "nothing new dropped");
        // One second later: LOG_RATE more.
        let t1 = t0 + Duration::from_secs(1);
        let allowed = (0..1000).filter(|_| l.allow(t1)).count();
        assert_eq!(allowed, LOG_RATE as usize);
        assert_eq!(l.due_report(t1), Some(1000 - LOG_RATE as u64));
        // Drops within a second of a report wait for the next one.
        let t2 = t1 + Duration::from_millis(100);
        let allowed = (0..10).filter(|_| l.allow(t2)).count();
        assert_eq!(allowed, 2);
        assert_eq!(l.due_report(t2), None);
        assert_eq!(l.due_report(t1 + DROP_REPORT_EVERY), Some(8));
        // Idle for long: the bucket is full again, not more.
        let t3 = t2 + Duration::from_secs(3600);
        assert_eq!(
            (0..1000).filter(|_| l.allow(t3)).count(),
            LOG_BURST as usize
        );
        // Time going backwards (a caller bug) neither panics nor refills.
        assert!(!l.allow(t0));
    }

    #[test]
    fn records_cannot_forge_lines_or_colours() {
        let s = "ok\n2026-12-05T00:00:00Z ERROR forged\r\x1b[31mred\u{2028}\u{202e}x\\";
        let e = escape_for_log(s, LOG_RECORD_MAX);
        assert_eq!(
            e,
            "ok\\n2026-12-05T00:00:00Z ERROR forged\\r\\x1b[31mred\\u{2028}\\u{202e}x\\\\"
        );
        assert!(!e.chars().any(|c| c.is_control()));
        assert_eq!(escape_for_log("héllo wörld", 64), "héllo wörld");
    }

    #[test]
    fn long_records_are_cut_with_a_note() {
        let s = "é".repeat(10_000); // 20,000 bytes
        let e = escape_for_log(&s, LOG_RECORD_MAX);
        assert!(e.len() <= LOG_RECORD_MAX + 40, "{}", e.len());
        assert!(
            e.ends_with(" [... 15904 bytes cut]"),
            "{}",
            &e[e.len() - 40..]
        );
        let e = escape_for_log(&"\n".repeat(5000), LOG_RECORD_MAX);
        assert!(e.starts_with("\\n\\n"));
        assert!(
            e.ends_with(" [... 2952 bytes cut]"),
            "{}",
            &e[e.len() - 40..]
        );
    }
}
