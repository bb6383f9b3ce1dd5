//! Range checks of every number and string a client sends, done when a request is parsed
//! (ARCHITECTURE.md rule 11): a value outside its documented range is answered `bad_request`
//! naming the field, so nothing later (deadlines, `Duration`s, the agent) sees it. The ranges
//! are listed in `docs/api.md` and `docs/security.md`.

use super::{ErrorKind, ExecArgs, Op, Request};
use crate::transport::Spec;
use std::time::{Duration, Instant};

/// Longest `call_timeout` and exec `timeout` accepted, in seconds (one week).
pub const MAX_TIMEOUT_SECS: f64 = 7.0 * 24.0 * 3600.0;
pub use crate::transport::MAX_CONNECT_TIMEOUT_SECS;
/// The digests a put may ask the agent for (its `PUT_DIGESTS`).
pub const PUT_DIGESTS: [&str; 3] = ["sha1", "md5", "sha256"];
/// Largest `mode` of a put (all permission bits, set-id and sticky bits).
pub const MAX_MODE: u32 = 0o7777;

/// A request field outside its range: the message names the field and the range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} {problem}")]
pub struct BadField {
    /// The field's name as the client wrote it (`target.via.port`, `env`, ...).
    pub field: String,
    /// What is wrong with it.
    pub problem: String,
}

fn bad(field: &str, problem: impl Into<String>) -> BadField {
    BadField {
        field: field.to_string(),
        problem: problem.into(),
    }
}

/// A number of seconds within (0, [`MAX_TIMEOUT_SECS`]].
fn seconds(field: &str, v: Option<f64>) -> Result<(), BadField> {
    match v {
        None => Ok(()),
        Some(s) if s.is_finite() && s > 0.0 && s <= MAX_TIMEOUT_SECS => Ok(()),
        Some(s) => Err(bad(
            field,
            format!(
                "must be a number of seconds > 0 and <= {MAX_TIMEOUT_SECS} (one week), not {s}"
            ),
        )),
    }
}

/// A string that can reach a C API (argv, environment, path): no NUL byte.
fn no_nul(field: &str, s: &str) -> Result<(), BadField> {
    if s.contains('\0') {
        return Err(bad(field, "must not contain a NUL byte"));
    }
    Ok(())
}

/// Longest `note` run id (the plugin sends a few dozen bytes).
pub const MAX_RUN_ID_LEN: usize = 128;

/// Checks every client-supplied number and C string of `req` (the target spec too).
pub fn request(req: &Request) -> Result<(), BadField> {
    seconds("call_timeout", req.call_timeout)?;
    match &req.op {
        Op::Exec(e) => exec(e)?,
        Op::Put(p) => {
            if let Some(m) = p.mode {
                if m > MAX_MODE {
                    return Err(bad(
                        "mode",
                        format!("must be a permission value 0..=0o7777, not {m:#o}"),
                    ));
                }
            }
            no_nul("src", &p.src)?;
            no_nul("dest", &p.dest)?;
            if let Some(d) = &p.digests {
                let known = |n: &String| PUT_DIGESTS.contains(&n.as_str());
                if d.len() > PUT_DIGESTS.len() || !d.iter().all(known) {
                    return Err(bad(
                        "digests",
                        format!("must be a list of at most {PUT_DIGESTS:?}, not {d:?}"),
                    ));
                }
            }
            for (field, v) in [("owner", &p.owner), ("group", &p.group)] {
                if let Some(s) = v {
                    no_nul(field, s)?;
                }
            }
        }
        Op::Fetch(f) => {
            no_nul("src", &f.src)?;
            no_nul("dest", &f.dest)?;
        }
        Op::Note(n) => {
            if let Some(run) = &n.run {
                if run.len() > MAX_RUN_ID_LEN {
                    return Err(bad(
                        "run",
                        format!("must be at most {MAX_RUN_ID_LEN} bytes, not {}", run.len()),
                    ));
                }
            }
        }
        Op::Ping(_)
        | Op::Call(_)
        | Op::BlobPut(_)
        | Op::Close(_)
        | Op::Open(_)
        | Op::Stats(_)
        | Op::Alive(_)
        | Op::Shutdown(_) => {}
    }
    if let Some(t) = &req.target {
        spec("target", t)?;
    }
    Ok(())
}

/// `exec`'s timeout, argv, strings and environment.
fn exec(e: &ExecArgs) -> Result<(), BadField> {
    seconds("timeout", e.timeout)?;
    for (i, a) in e.argv.iter().flatten().enumerate() {
        no_nul(&format!("argv[{i}]"), a)?;
    }
    for (field, v) in [("shell", &e.shell), ("cwd", &e.cwd)] {
        if let Some(s) = v {
            no_nul(field, s)?;
        }
    }
    for (k, v) in e.env.iter().flatten() {
        if k.is_empty() || k.contains('=') {
            return Err(bad(
                "env",
                format!("names a variable {k:?} (empty or with '=')"),
            ));
        }
        no_nul("env", k)?;
        no_nul(&format!("env[{k:?}]"), v)?;
    }
    Ok(())
}

/// Checks the numbers of a target spec, through its `via` chain, and that none of its strings
/// (host, user, ssh arguments, env, become command, ...: they reach argv and environments)
/// holds a NUL byte.
pub fn spec(field: &str, s: &Spec) -> Result<(), BadField> {
    if serde_json::to_value(s).is_ok_and(|v| has_nul(&v)) {
        return Err(bad(
            field,
            "must not contain a NUL byte in any of its strings",
        ));
    }
    if let Some(t) = s.connect_timeout {
        if t == 0 || t > MAX_CONNECT_TIMEOUT_SECS {
            return Err(bad(
                &format!("{field}.connect_timeout"),
                format!("must be 1..={MAX_CONNECT_TIMEOUT_SECS} seconds (one week), not {t}"),
            ));
        }
    }
    if s.port == Some(0) {
        return Err(bad(&format!("{field}.port"), "must be 1..=65535, not 0"));
    }
    if let Some(v) = &s.via {
        spec(&format!("{field}.via"), v)?;
    }
    Ok(())
}

/// Checks that the daemon can start a stream to `spec`: its transport command builds (an ssh
/// host name that cannot be one is `unreachable`, as ssh would say), and every hop of its
/// `via` chain is well formed (depth, become method, interpreter, the hop's command).
/// A password is checked again when the process is spawned (askpass available).
pub fn target(spec: &Spec) -> Result<(), (ErrorKind, String)> {
    match crate::transport::command(spec, None) {
        Ok(_) | Err(crate::transport::CommandError::NeedsAskpass { .. }) => {}
        Err(e) => return Err((e.kind(), e.to_string())),
    }
    chain(spec).map_err(|m| (ErrorKind::BadRequest, m))
}

/// A spec and every hop of its `via` chain, before anything starts.
fn chain(spec: &Spec) -> Result<(), String> {
    if spec.via_depth() > crate::transport::MAX_VIA_DEPTH {
        return Err(format!(
            "more than {} hops in the via chain",
            crate::transport::MAX_VIA_DEPTH
        ));
    }
    let mut s = spec;
    loop {
        if let Some(b) = &s.escalate {
            b.validate()?;
        }
        s.validate_interpreter()?;
        if s.via.is_some() && s.escalate.is_none() {
            crate::transport::hop_command(s, "M").map_err(|e| e.to_string())?;
        }
        match &s.via {
            Some(v) => s = v,
            None => break,
        }
    }
    // The first hop is started by the daemon.
    match crate::transport::command(s, None) {
        Err(crate::transport::CommandError::NeedsAskpass { .. }) | Ok(_) => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

/// Whether any string (or key) in `v` holds a NUL byte.
fn has_nul(v: &serde_json::Value) -> bool {
    use serde_json::Value;
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(a) => a.iter().any(has_nul),
        Value::Object(o) => o.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

/// Where a JSON object is required (`target`, `via`, `become`, `env`, the request itself),
/// serde's derived `Deserialize` also takes an array of the fields in order: refuse that.
/// Returns the path of the first non-object.
pub fn objects_only(v: &serde_json::Value) -> Result<(), BadField> {
    if !v.is_object() {
        return Err(bad("request", "must be a JSON object"));
    }
    for field in ["payload", "env"] {
        if !matches!(v.get(field), None | Some(serde_json::Value::Null)) && !v[field].is_object() {
            return Err(bad(field, "must be a JSON object"));
        }
    }
    let mut at = v.get("target");
    let mut path = String::from("target");
    while let Some(t) = at.filter(|t| !t.is_null()) {
        if !t.is_object() {
            return Err(bad(&path, "must be a JSON object"));
        }
        for sub in ["env", "become"] {
            if !matches!(t.get(sub), None | Some(serde_json::Value::Null)) && !t[sub].is_object() {
                return Err(bad(&format!("{path}.{sub}"), "must be a JSON object"));
            }
        }
        at = t.get("via");
        path.push_str(".via");
    }
    Ok(())
}

/// `now + secs` as a deadline; `None` when it cannot be represented (never for a value that
/// passed [`request`]).
pub fn deadline_after(now: Instant, secs: f64) -> Option<Instant> {
    let d = Duration::try_from_secs_f64(secs).ok()?;
    now.checked_add(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn req(v: serde_json::Value) -> Result<(), BadField> {
        let mut v = v;
        v["id"] = 1.into();
        objects_only(&v)?;
        let r: Request = serde_json::from_value(v).map_err(|e| bad("parse", e.to_string()))?;
        request(&r)
    }

    #[test]
    fn timeouts_are_bounded() {
        for t in [0.0, -1.0, 1e300, 1e19, f64::MAX, MAX_TIMEOUT_SECS * 2.0] {
            let e = req(json!({"op": "ping", "call_timeout": t})).unwrap_err();
            assert_eq!(e.field, "call_timeout", "{t}");
            let e = req(json!({"op": "exec", "timeout": t})).unwrap_err();
            assert_eq!(e.field, "timeout", "{t}");
        }
        assert!(req(json!({"op": "ping", "call_timeout": 0.001})).is_ok());
        assert!(req(json!({"op": "ping", "call_timeout": MAX_TIMEOUT_SECS})).is_ok());
        assert!(seconds("x", Some(f64::NAN)).is_err());
        assert!(seconds("x", Some(f64::INFINITY)).is_err());
    }

    #[test]
    fn spec_numbers_are_bounded() {
        let e = req(json!({"op": "ping", "target": {"host": "h", "connect_timeout": u64::MAX}}))
            .unwrap_err();
        assert_eq!(e.field, "target.connect_timeout");
        let e =
            req(json!({"op": "ping", "target": {"host": "h", "via": {"host": "b", "port": 0}}}))
                .unwrap_err();
        assert_eq!(e.field, "target.via.port");
        assert!(
            req(json!({"op": "ping", "target": {"host": "h", "connect_timeout": 604800}})).is_ok()
        );
    }

    #[test]
    fn nul_and_env_names_are_refused() {
        let e = req(json!({"op": "exec", "argv": ["a", "b\u{0}"]})).unwrap_err();
        assert_eq!(e.field, "argv[1]");
        assert!(req(json!({"op": "exec", "shell": "x\u{0}"})).is_err());
        assert!(req(json!({"op": "exec", "shell": "x", "cwd": "/\u{0}"})).is_err());
        assert!(req(json!({"op": "exec", "shell": "x", "env": {"A=B": "1"}})).is_err());
        assert!(req(json!({"op": "exec", "shell": "x", "env": {"A": "\u{0}"}})).is_err());
        for t in [
            json!({"host": "h\u{0}"}),
            json!({"host": "h", "ssh_args": "-o\u{0}"}),
            json!({"host": "h", "env": {"K": "\u{0}"}}),
            json!({"host": "h", "via": {"host": "b", "user": "u\u{0}"}}),
            json!({"host": "h", "become": {"method": "sudo", "cmd": "__SPINDLE_BOOT__\u{0}", "success": "ok"}}),
        ] {
            let e = req(json!({"op": "ping", "target": t})).unwrap_err();
            assert_eq!(e.field, "target", "{t}");
        }
        // A backslash-u in a string is not a NUL.
        assert!(
            req(json!({"op": "ping", "target": {"host": "h", "ssh_args": "-o x=\\u0000"}})).is_ok()
        );
        assert!(req(json!({"op": "put", "src": "/a", "dest": "/b", "mode": 0o10000})).is_err());
        assert!(req(json!({"op": "put", "src": "/a", "dest": "/b", "mode": 0o4755})).is_ok());
    }

    #[test]
    fn arrays_are_not_objects() {
        assert!(objects_only(&json!([1, "ping"])).is_err());
        let e = objects_only(&json!({"op": "ping", "target": ["ssh", "h"]})).unwrap_err();
        assert_eq!(e.field, "target");
        let e = objects_only(&json!({"op": "ping", "target": {"host": "h", "via": ["ssh"]}}))
            .unwrap_err();
        assert_eq!(e.field, "target.via");
        let e = objects_only(&json!({"op": "exec", "env": [["A", "1"]]})).unwrap_err();
        assert_eq!(e.field, "env");
        assert!(objects_only(&json!({"op": "call", "payload": [1]})).is_err());
        assert!(objects_only(&json!({"op": "ping", "target": {"host": "h", "env": null}})).is_ok());
    }

    #[test]
    fn deadlines_never_panic() {
        let now = Instant::now();
        assert!(deadline_after(now, 1e300).is_none());
        assert!(deadline_after(now, 1e19).is_none());
        assert!(deadline_after(now, f64::NAN).is_none());
        assert!(deadline_after(now, -1.0).is_none());
        assert!(deadline_after(now, 1.5).is_some());
    }
}
