//! The daemon's client API: message framing (4-byte length + JSON object), the request type,
//! reply builders, and the server loop ([`server`]). Documented in `docs/api.md`.

mod kind;
pub mod server;
pub mod validate;

pub use kind::ErrorKind;

use crate::transport::Spec;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::io::Write;

/// Largest API message either way (64 MiB).
pub const MAX_MESSAGE: usize = 64 * 1024 * 1024;

/// One client request. Unknown fields are refused so typos fail loudly.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    /// Client-chosen id echoed in the reply.
    pub id: u64,
    /// Operation name.
    pub op: String,
    /// Target connection spec (all ops but `stats`/`shutdown`).
    #[serde(default)]
    pub target: Option<Spec>,
    /// exec: argv.
    #[serde(default)]
    pub argv: Option<Vec<String>>,
    /// exec: shell command string.
    #[serde(default)]
    pub shell: Option<String>,
    /// exec: stdin bytes, base64.
    #[serde(default)]
    pub stdin_b64: Option<String>,
    /// exec: environment additions.
    #[serde(default)]
    pub env: Option<BTreeMap<String, String>>,
    /// exec: run `shell` with the target user's login shell (`<shell> -c`, as sshd does)
    /// instead of `/bin/sh`.
    #[serde(default)]
    pub login_shell: Option<bool>,
    /// exec: run on a new pseudo-terminal (as `ssh -tt`): the output, stderr included, comes
    /// back as stdout with the terminal's line ends; no `stdin_b64`.
    #[serde(default)]
    pub tty: Option<bool>,
    /// exec: working directory.
    #[serde(default)]
    pub cwd: Option<String>,
    /// exec: timeout in seconds (the agent kills the command).
    #[serde(default)]
    pub timeout: Option<f64>,
    /// put/fetch: source path.
    #[serde(default)]
    pub src: Option<String>,
    /// put/fetch: destination path.
    #[serde(default)]
    pub dest: Option<String>,
    /// put: file mode.
    #[serde(default)]
    pub mode: Option<u32>,
    /// put: the target's umask applies to `mode` (as for a file created by sftp).
    #[serde(default)]
    pub apply_umask: Option<bool>,
    /// put: owner name.
    #[serde(default)]
    pub owner: Option<String>,
    /// put: group name.
    #[serde(default)]
    pub group: Option<String>,
    /// call: the agent operation (a JSON object with an `op`).
    #[serde(default)]
    pub payload: Option<serde_json::Value>,
    /// call: content hashes of blobs the agent needs for this call (pushed if it lacks them).
    #[serde(default)]
    pub blobs: Option<Vec<String>>,
    /// blob_put: the blob's SHA-256 (hex).
    #[serde(default)]
    pub hash: Option<String>,
    /// blob_put: the blob's content, base64.
    #[serde(default)]
    pub data_b64: Option<String>,
    /// note: the path a module task took (`stock`).
    #[serde(default)]
    pub path: Option<String>,
    /// note: why it took that path.
    #[serde(default)]
    pub reason: Option<String>,
    /// note: the playbook run it belongs to (each run is warned once per host and reason).
    #[serde(default)]
    pub run: Option<String>,
    /// Any op: seconds after which the daemon gives up on the call (`timeout` error).
    #[serde(default)]
    pub call_timeout: Option<f64>,
}

/// Parses one request body: a JSON object (never an array, nor one where `target`, `via`,
/// `become`, `env` or `payload` is an array), with known fields only. The error carries the
/// request's `id` when the body had one, for the reply. Numbers and strings are range-checked
/// by [`validate::request`] (the router runs it on every request).
pub fn parse_request(body: &[u8]) -> Result<Request, (u64, String)> {
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| (0, format!("bad request: {e}")))?;
    let id = v.get("id").and_then(|i| i.as_u64()).unwrap_or(0);
    validate::objects_only(&v).map_err(|e| (id, e.to_string()))?;
    serde_json::from_value(v).map_err(|e| (id, format!("bad request: {e}")))
}

/// Appends a length-prefixed message.
pub fn frame_message(out: &mut Vec<u8>, body: &[u8]) {
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(body);
}

/// A successful reply whose `result` is `raw` (already valid JSON) passed through unparsed.
pub fn ok_raw(id: u64, raw: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(raw.len() + 40);
    let _ = write!(m, "{{\"id\":{id},\"ok\":true,\"result\":");
    m.extend_from_slice(raw);
    m.push(b'}');
    m
}

/// A successful reply.
pub fn ok_value(id: u64, v: &serde_json::Value) -> Vec<u8> {
    ok_raw(
        id,
        &serde_json::to_vec(v).unwrap_or_else(|_| b"{}".to_vec()),
    )
}

/// An error reply.
pub fn error(id: u64, kind: ErrorKind, host: &str, message: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "id": id, "ok": false,
        "error": {"kind": kind, "host": host, "message": message},
    }))
    .unwrap_or_default()
}

/// An error reply with extra fields in the error object (e.g. `missing` blob hashes).
pub fn error_with(
    id: u64,
    kind: ErrorKind,
    host: &str,
    message: &str,
    extra: serde_json::Value,
) -> Vec<u8> {
    let mut e = serde_json::json!({"kind": kind, "host": host, "message": message});
    if let (Some(o), Some(x)) = (e.as_object_mut(), extra.as_object()) {
        for (k, v) in x {
            o.insert(k.clone(), v.clone());
        }
    }
    serde_json::to_vec(&serde_json::json!({"id": id, "ok": false, "error": e})).unwrap_or_default()
}

/// Incremental decoder of length-prefixed messages (total: never panics).
#[derive(Debug, Default)]
pub struct MessageDecoder {
    buf: Vec<u8>,
    start: usize,
}

/// A message stream that cannot continue.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("API message of {0} bytes exceeds the 64 MiB limit")]
pub struct Oversize(pub usize);

impl MessageDecoder {
    /// Appends bytes.
    pub fn push(&mut self, b: &[u8]) {
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > 64 * 1024 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(b);
    }

    /// Bytes received and not yet taken as messages.
    pub fn buffered(&self) -> usize {
        self.buf.len().saturating_sub(self.start)
    }

    /// Size of the next message, its 4-byte length prefix included, once the prefix is in.
    pub fn announced(&self) -> Option<usize> {
        let p = self.buf.get(self.start..self.start.checked_add(4)?)?;
        let len = u32::from_be_bytes([p[0], p[1], p[2], p[3]]) as usize;
        len.checked_add(4)
    }

    /// Frees the buffer's memory when nothing is buffered and it grew past one read's worth
    /// (a large message once received does not keep its memory for the connection's life).
    pub fn release(&mut self) {
        if self.buffered() == 0 && self.buf.capacity() > 1024 * 1024 {
            self.buf = Vec::new();
            self.start = 0;
        }
    }

    /// The next whole message body, if any.
    pub fn next_message(&mut self) -> Result<Option<Vec<u8>>, Oversize> {
        let avail = &self.buf[self.start..];
        if avail.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([avail[0], avail[1], avail[2], avail[3]]) as usize;
        if len > MAX_MESSAGE {
            return Err(Oversize(len));
        }
        if avail.len() < 4 + len {
            return Ok(None);
        }
        let body = avail[4..4 + len].to_vec();
        self.start += 4 + len;
        Ok(Some(body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_split_and_joined() {
        let mut wire = Vec::new();
        frame_message(&mut wire, b"{\"a\":1}");
        frame_message(&mut wire, b"{}");
        let mut d = MessageDecoder::default();
        let mut got = Vec::new();
        for b in wire.chunks(3) {
            d.push(b);
            while let Some(m) = d.next_message().unwrap() {
                got.push(m);
            }
        }
        assert_eq!(got, vec![b"{\"a\":1}".to_vec(), b"{}".to_vec()]);
        let mut d = MessageDecoder::default();
        d.push(&u32::MAX.to_be_bytes());
        assert!(d.next_message().is_err());
    }

    #[test]
    fn buffered_and_announced_sizes() {
        let mut d = MessageDecoder::default();
        assert_eq!((d.buffered(), d.announced()), (0, None));
        d.push(&[0, 0]);
        assert_eq!((d.buffered(), d.announced()), (2, None));
        d.push(&[1, 0, b'x']);
        assert_eq!((d.buffered(), d.announced()), (5, Some(260)));
        let mut wire = Vec::new();
        frame_message(&mut wire, &vec![b' '; 2 * 1024 * 1024]);
        let mut d = MessageDecoder::default();
        d.push(&wire);
        assert!(d.next_message().unwrap().is_some());
        assert_eq!((d.buffered(), d.announced()), (0, None));
        d.release();
        assert_eq!(d.buf.capacity(), 0);
        d.push(&u32::MAX.to_be_bytes());
        assert_eq!(d.announced(), Some(u32::MAX as usize + 4));
    }

    #[test]
    fn ok_raw_is_json() {
        let v: serde_json::Value = serde_json::from_slice(&ok_raw(5, b"{\"rc\":0}")).unwrap();
        assert_eq!(v["result"]["rc"], 0);
    }
}
