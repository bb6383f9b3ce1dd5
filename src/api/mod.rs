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

/// One client request: the fields every op shares, and the op with its own fields (a typed
/// [`Op`]: an op's unknown or missing field is refused at parse time, so typos fail loudly).
#[derive(Debug, Clone)]
pub struct Request {
    /// Client-chosen id echoed in the reply.
    pub id: u64,
    /// Target connection spec (all ops but `stats`, `blob_put`, `shutdown`).
    pub target: Option<Spec>,
    /// Any op: seconds after which the daemon gives up on the call (`timeout` error).
    pub call_timeout: Option<f64>,
    /// The operation and its fields.
    pub op: Op,
}

/// The operations of docs/api.md, each with its fields (`"op"` names the variant).
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// The agent's pong and HELLO.
    Ping(NoFields),
    /// Run a command.
    Exec(ExecArgs),
    /// Copy a controller file to the target.
    Put(PutArgs),
    /// Copy a target file to the controller.
    Fetch(FetchArgs),
    /// An agent operation passed through, with the module code it needs.
    Call(CallArgs),
    /// Store a code blob in the daemon's cache.
    BlobPut(BlobPutArgs),
    /// Shut the target's stream down.
    Close(NoFields),
    /// Start the target's stream (or check an idle one) and answer at once.
    Open(NoFields),
    /// A module task the client runs on Ansible's stock path.
    Note(NoteArgs),
    /// The daemon's counters.
    Stats(NoFields),
    /// Whether the daemon still answers (a client waiting long for a reply asks).
    Alive(NoFields),
    /// Stop the daemon.
    Shutdown(NoFields),
}

impl Op {
    /// Whether the op goes to a target's stream (its `target` is started if need be).
    pub fn on_stream(&self) -> bool {
        matches!(
            self,
            Op::Ping(_)
                | Op::Exec(_)
                | Op::Put(_)
                | Op::Fetch(_)
                | Op::Call(_)
                | Op::Close(_)
                | Op::Open(_)
        )
    }

    /// The op's wire name (logs).
    pub fn name(&self) -> &'static str {
        match self {
            Op::Ping(_) => "ping",
            Op::Exec(_) => "exec",
            Op::Put(_) => "put",
            Op::Fetch(_) => "fetch",
            Op::Call(_) => "call",
            Op::BlobPut(_) => "blob_put",
            Op::Close(_) => "close",
            Op::Open(_) => "open",
            Op::Note(_) => "note",
            Op::Stats(_) => "stats",
            Op::Alive(_) => "alive",
            Op::Shutdown(_) => "shutdown",
        }
    }
}

/// An op without fields of its own.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoFields {}

/// `exec`'s fields.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecArgs {
    /// The command as argv.
    #[serde(default)]
    pub argv: Option<Vec<String>>,
    /// Or as a shell command string.
    #[serde(default)]
    pub shell: Option<String>,
    /// stdin bytes, base64.
    #[serde(default)]
    pub stdin_b64: Option<String>,
    /// Environment additions.
    #[serde(default)]
    pub env: Option<BTreeMap<String, String>>,
    /// Run `shell` with the target user's login shell (`<shell> -c`, as sshd does) instead
    /// of `/bin/sh`.
    #[serde(default)]
    pub login_shell: Option<bool>,
    /// Run on a new pseudo-terminal (as `ssh -tt`): the output, stderr included, comes back
    /// as stdout with the terminal's line ends; no `stdin_b64`.
    #[serde(default)]
    pub tty: Option<bool>,
    /// Working directory.
    #[serde(default)]
    pub cwd: Option<String>,
    /// Timeout in seconds (the agent kills the command).
    #[serde(default)]
    pub timeout: Option<f64>,
}

/// `put`'s fields.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutArgs {
    /// Source path on the controller.
    pub src: String,
    /// Destination path on the target.
    pub dest: String,
    /// File mode.
    #[serde(default)]
    pub mode: Option<u32>,
    /// The target's umask applies to `mode` (as for a file created by sftp).
    #[serde(default)]
    pub apply_umask: Option<bool>,
    /// Owner name.
    #[serde(default)]
    pub owner: Option<String>,
    /// Group name.
    #[serde(default)]
    pub group: Option<String>,
    /// Digests of the content the agent takes while receiving it (`sha1`, `md5`, `sha256`;
    /// default `sha256`), in the reply, and remembered for modules run on the file after.
    #[serde(default)]
    pub digests: Option<Vec<String>>,
    /// `false`: no fsync before the rename (a file staged for a module that moves it).
    #[serde(default)]
    pub sync: Option<bool>,
}

/// `fetch`'s fields.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FetchArgs {
    /// Source path on the target.
    pub src: String,
    /// Destination path on the controller.
    pub dest: String,
}

/// `call`'s fields.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallArgs {
    /// The agent operation (a JSON object with an `op`).
    pub payload: serde_json::Value,
    /// Content hashes of blobs the agent needs for this call (pushed if it lacks them).
    #[serde(default)]
    pub blobs: Option<Vec<String>>,
}

/// `blob_put`'s fields.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlobPutArgs {
    /// The blob's SHA-256 (hex).
    pub hash: String,
    /// The blob's content, base64.
    pub data_b64: String,
}

/// `note`'s fields.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoteArgs {
    /// The path a module task took (`stock`).
    pub path: String,
    /// Why it took that path.
    pub reason: String,
    /// The playbook run it belongs to (each run is warned once per host and reason).
    #[serde(default)]
    pub run: Option<String>,
}

impl<'de> Deserialize<'de> for Request {
    /// The shared fields are taken out, the rest is the op's (its own unknown fields refused).
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Request, D::Error> {
        use serde::de::Error as _;
        let mut m = serde_json::Map::<String, serde_json::Value>::deserialize(d)?;
        let id = match m.remove("id") {
            Some(v) => u64::deserialize(v).map_err(|e| D::Error::custom(format!("id: {e}")))?,
            None => return Err(D::Error::missing_field("id")),
        };
        let target = match m.remove("target") {
            None | Some(serde_json::Value::Null) => None,
            Some(v) => {
                Some(Spec::deserialize(v).map_err(|e| D::Error::custom(format!("target: {e}")))?)
            }
        };
        let call_timeout = match m.remove("call_timeout") {
            None | Some(serde_json::Value::Null) => None,
            Some(v) => Some(
                f64::deserialize(v).map_err(|e| D::Error::custom(format!("call_timeout: {e}")))?,
            ),
        };
        let op = Op::deserialize(serde_json::Value::Object(m)).map_err(D::Error::custom)?;
        Ok(Request {
            id,
            target,
            call_timeout,
            op,
        })
    }
}

/// A request refused before it reaches the router: the reply's fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The request's `id` when the body had one (else 0).
    pub id: u64,
    /// `bad_request`, or `unreachable` for an ssh host name that cannot be one.
    pub kind: ErrorKind,
    /// The target's label when the request named one.
    pub host: String,
    /// What is wrong.
    pub message: String,
}

/// Parses and validates one request body, once, before the router sees it: a JSON object
/// (never an array, nor one where `target`, `via`, `become`, `env` or `payload` is an
/// array), with known fields only, every number and string in its range
/// ([`validate::request`]), and for an op on a target's stream a target spec the daemon can
/// start ([`validate::target`]). The refusal carries the request's `id` and target label.
pub fn parse_request(body: &[u8]) -> Result<Request, Refusal> {
    let refuse = |id, host: &str, message: String| Refusal {
        id,
        kind: ErrorKind::BadRequest,
        host: host.to_string(),
        message,
    };
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| refuse(0, "", format!("bad request: {e}")))?;
    let id = v.get("id").and_then(|i| i.as_u64()).unwrap_or(0);
    validate::objects_only(&v).map_err(|e| refuse(id, "", e.to_string()))?;
    let req: Request =
        serde_json::from_value(v).map_err(|e| refuse(id, "", format!("bad request: {e}")))?;
    let host = req.target.as_ref().map(|s| s.label()).unwrap_or_default();
    validate::request(&req).map_err(|e| refuse(id, &host, e.to_string()))?;
    if let (Some(spec), true) = (&req.target, req.op.on_stream()) {
        validate::target(spec).map_err(|(kind, message)| Refusal {
            id,
            kind,
            host,
            message,
        })?;
    }
    Ok(req)
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

    #[test]
    fn requests_parse_into_typed_ops_and_refuse_what_an_op_does_not_take() {
        let ok = |b: &str| parse_request(b.as_bytes()).map(|r| (r.id, r.op.name()));
        assert_eq!(ok(r#"{"id":1,"op":"stats"}"#), Ok((1, "stats")));
        assert_eq!(ok(r#"{"id":1,"op":"alive"}"#), Ok((1, "alive")));
        assert_eq!(
            ok(
                r#"{"id":2,"op":"exec","argv":["true"],"call_timeout":3,"target":{"transport":"local"}}"#
            ),
            Ok((2, "exec"))
        );
        // Each failure keeps the request's id for the reply and says what is wrong.
        let bad = |b: &str, says: &str| match parse_request(b.as_bytes()) {
            Err(Refusal { id, message, .. }) => {
                assert_eq!(id, 9, "{b}");
                assert!(message.contains(says), "{b}: {message}");
            }
            Ok(r) => panic!("{b} parsed: {r:?}"),
        };
        bad(r#"{"id":9,"op":"nope"}"#, "unknown variant");
        bad(
            r#"{"id":9,"op":"ping","argv":["x"]}"#,
            "unknown field `argv`",
        );
        bad(r#"{"id":9,"op":"exec","src":"/x"}"#, "unknown field `src`");
        bad(r#"{"id":9,"op":"put","src":"/x"}"#, "missing field `dest`");
        bad(
            r#"{"id":9,"op":"blob_put","hash":"h"}"#,
            "missing field `data_b64`",
        );
        bad(
            r#"{"id":9,"op":"note","reason":"r"}"#,
            "missing field `path`",
        );
        bad(r#"{"id":9,"op":"call"}"#, "missing field `payload`");
        bad(
            r#"{"id":9,"op":"exec","argv":["x"],"call_timeout":"soon"}"#,
            "call_timeout",
        );
        bad(r#"{"id":9}"#, "op");
        // Numbers are range-checked at parse time too; the refusal names the target.
        let r = parse_request(
            br#"{"id":4,"op":"exec","argv":["x"],"call_timeout":1e300,"target":{"transport":"local","name":"db"}}"#,
        );
        let r = r.expect_err("call_timeout 1e300");
        assert_eq!(
            (r.id, r.kind, r.host.as_str()),
            (4, ErrorKind::BadRequest, "db")
        );
        assert!(r.message.starts_with("call_timeout "), "{r:?}");
    }
}
