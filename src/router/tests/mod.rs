//! The router in memory: requests, target bytes and time in, actions and queued bytes out
//! (no sockets, no processes, a fake clock made of `Instant` offsets).
//!
//! This file holds the fake agent and client helpers; the tests are grouped by theme:
//! `start` (agent start deadlines, refused specs), `probe` (idle ssh streams checked before
//! use, requests held meanwhile), `deadlines` (call, exec and context start deadlines, cancels), `limits` (`busy`),
//! `frames` (replies in parts, malformed frames), `put` (low-water refill, abort, hop file
//! cache), `fetch` (fetch size limits, a fetch cut short), `contexts` (interpreter, become and via contexts: window, recycling, hops that
//! fail), `retire` (an agent whose interpreter was replaced) and `blobs` (module code pushed
//! once, by reference to a context's parent).

mod blobs;
mod contexts;
mod deadlines;
mod fetch;
mod frames;
mod limits;
mod probe;
mod put;
mod retire;
mod start;

use super::{Action, FileDone, FileOp, FileToken, Router, TargetId};
use crate::api::Request;
use crate::fileio::scratch;
use crate::proto::{encode_frame, FrameHeader, Kind, CTX_AGENT, CTX_CONTROLLER};
use std::time::{Duration, Instant};

/// A request as the server hands it to the router: parsed and validated.
fn request(v: serde_json::Value) -> Request {
    crate::api::parse_request(&serde_json::to_vec(&v).unwrap_or_default()).expect("a valid request")
}

/// A `local` target (the router never spawns it here: the `Spawn` action is not carried out).
fn target(extra: serde_json::Value) -> serde_json::Value {
    let mut t = serde_json::json!({"transport": "local", "name": "t"});
    if let (Some(o), Some(x)) = (t.as_object_mut(), extra.as_object()) {
        o.extend(x.clone());
    }
    t
}

fn exec(id: u64, t: serde_json::Value) -> Request {
    request(serde_json::json!({"id": id, "op": "exec", "argv": ["true"], "target": t}))
}

fn module_call(id: u64, t: serde_json::Value) -> Request {
    let payload = serde_json::json!({"op": "run_module", "mode": "warm", "req": {}});
    request(serde_json::json!({"id": id, "op": "call", "payload": payload, "target": t}))
}

fn hello(r: &mut Router, t: TargetId, executable: &str, now: Instant) {
    hello_body(r, t, hello_of(executable), now);
}

/// A stream agent's HELLO body, its interpreter `executable`.
fn hello_of(executable: &str) -> serde_json::Value {
    serde_json::json!({"proto": 1, "python": "3.11.2", "executable": executable,
        "realpath": executable, "hostname": "h", "uid": 0, "pid": 1})
}

/// `out` with a HELLO frame of `body` from a stream's own agent appended.
fn push_hello(out: &mut Vec<u8>, body: &serde_json::Value) {
    let h = FrameHeader {
        kind: Kind::Hello,
        flags: 0,
        dst: CTX_CONTROLLER,
        src: CTX_AGENT,
        handle: 0,
        reply_to: 0,
    };
    encode_frame(out, &h, body.to_string().as_bytes());
}

/// The stream's first bytes from its (fake) agent: stage 1's boot marker, when the stream
/// waits for one, and the HELLO frame with `body`.
fn hello_body(r: &mut Router, t: TargetId, body: serde_json::Value, now: Instant) {
    if r.targets[t].boot.is_some() {
        r.target_bytes(t, crate::proto::BOOT_MARKER, now);
    }
    let mut b = Vec::new();
    push_hello(&mut b, &body);
    r.target_bytes(t, &b, now);
    files(r, now);
}

/// Error kinds of the replies sent so far.
fn errors(r: &mut Router) -> Vec<String> {
    files(r, Instant::now());
    let mut out = Vec::new();
    while let Some(a) = r.poll_action() {
        if let Action::Reply(_, body) = a {
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            if let Some(k) = v["error"]["kind"].as_str() {
                out.push(format!("{k}: {}", v["error"]["message"]));
            }
        }
    }
    out
}

fn queued(r: &Router, t: TargetId) -> String {
    String::from_utf8_lossy(&r.targets[t].out.queued_bytes()).into_owned()
}

/// Feeds the router one frame from target `t`'s own agent.
fn agent_frame(r: &mut Router, t: TargetId, kind: Kind, flags: u8, handle: u32, p: &[u8]) {
    let mut b = Vec::new();
    let h = FrameHeader {
        kind,
        flags,
        dst: CTX_CONTROLLER,
        src: CTX_AGENT,
        handle,
        reply_to: 0,
    };
    encode_frame(&mut b, &h, p);
    r.target_bytes(t, &b, Instant::now());
    files(r, Instant::now());
}

/// The handle of the only call in flight on target `t`.
fn only_call(r: &Router, t: TargetId) -> u32 {
    let handles: Vec<u32> = r.targets[t].calls.keys().copied().collect();
    assert_eq!(handles.len(), 1, "{handles:?}");
    handles[0]
}

/// The handle of the only call of target `t` that a client waits for.
fn client_call(r: &Router, t: TargetId) -> u32 {
    let handles: Vec<u32> = r.targets[t]
        .calls
        .iter()
        .filter(|(_, c)| c.client.is_some())
        .map(|(h, _)| *h)
        .collect();
    assert_eq!(handles.len(), 1, "{handles:?}");
    handles[0]
}

/// The body of the CALL cancelling call `h`, as the router writes it.
fn cancel_of(h: u32) -> String {
    serde_json::json!({"op": "cancel", "handle": h}).to_string()
}

/// An ssh target (never spawned here).
fn ssh_target() -> serde_json::Value {
    serde_json::json!({"transport": "ssh", "host": "h.example", "name": "h"})
}

/// The agent answers call `h` of stream `t` with `body`, at `now`.
fn reply(r: &mut Router, t: TargetId, h: u32, body: &str, now: Instant) {
    let mut b = Vec::new();
    let hd = FrameHeader {
        kind: Kind::Reply,
        flags: 0,
        dst: CTX_CONTROLLER,
        src: CTX_AGENT,
        handle: h,
        reply_to: h,
    };
    encode_frame(&mut b, &hd, body.as_bytes());
    r.target_bytes(t, &b, now);
}

/// Replies (not errors) sent so far, by request id.
fn answered(r: &mut Router) -> Vec<u64> {
    files(r, Instant::now());
    let mut out = Vec::new();
    while let Some(a) = r.poll_action() {
        if let Action::Reply(_, body) = a {
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            if v["ok"] == true {
                out.push(v["id"].as_u64().unwrap_or(0));
            }
        }
    }
    out
}

/// Feeds the router one frame read from stream `t`: from its own agent (`src` 1) or from a
/// nested context behind it (`src` = the context id). `id` is the frame's handle, and for a
/// REPLY also the call it answers; for a CREDIT, the bytes credited.
#[allow(clippy::too_many_arguments)]
fn frame_from(
    r: &mut Router,
    t: TargetId,
    src: u32,
    kind: Kind,
    flags: u8,
    id: u32,
    p: &[u8],
    now: Instant,
) {
    let mut b = Vec::new();
    let h = FrameHeader {
        kind,
        flags,
        dst: CTX_CONTROLLER,
        src,
        handle: id,
        reply_to: if kind == Kind::Reply { id } else { 0 },
    };
    encode_frame(&mut b, &h, p);
    r.target_bytes(t, &b, now);
    files(r, now);
}

/// The HELLO of the nested agent `c` (a become, interpreter or via context), read from its
/// root stream.
fn context_hello(r: &mut Router, c: TargetId, now: Instant) {
    let root = r.root_of(c);
    let ctx = r.targets[c].ctx;
    let body = serde_json::json!({"proto": 1, "python": "3.11.2",
        "executable": "/usr/bin/python3", "hostname": "h", "uid": 0, "pid": 2});
    frame_from(
        r,
        root,
        ctx,
        Kind::Hello,
        0,
        0,
        body.to_string().as_bytes(),
        now,
    );
}

/// The frames queued on stream `t` (after the agent's bootstrap code, if that is still
/// queued), file data read from the files.
fn sent(r: &Router, t: TargetId) -> Vec<(FrameHeader, Vec<u8>)> {
    let bytes = r.targets[t].out.queued_with_files();
    let blob = crate::transport::bootstrap::agent_blob();
    let frames = bytes.strip_prefix(blob).unwrap_or(&bytes);
    let mut d = crate::proto::Decoder::default();
    d.push(frames);
    let mut out = Vec::new();
    while let Some((h, p)) = d
        .next_frame()
        .expect("the router queued well-formed frames")
    {
        out.push((h, p.to_vec()));
    }
    out
}

/// The CALLs queued on stream `t` (MORE continuations joined): the first frame's header and
/// the payload as JSON.
fn sent_calls(r: &Router, t: TargetId) -> Vec<(FrameHeader, serde_json::Value)> {
    let mut out = Vec::new();
    let mut body: Vec<u8> = Vec::new();
    let mut first: Option<FrameHeader> = None;
    for (h, p) in sent(r, t) {
        if h.kind != Kind::Call {
            continue;
        }
        let head = *first.get_or_insert(h);
        body.extend_from_slice(&p);
        if h.flags & crate::proto::flags::MORE == 0 {
            let v = serde_json::from_slice(&body).expect("a CALL payload is JSON");
            out.push((head, v));
            body.clear();
            first = None;
        }
    }
    out
}

/// The I/O layer wrote everything queued on stream `t` (the target read it).
fn written(r: &mut Router, t: TargetId) {
    r.targets[t].out.clear();
}

/// Replies sent so far, as JSON (successes and errors).
fn replies(r: &mut Router) -> Vec<serde_json::Value> {
    files(r, Instant::now());
    let mut out = Vec::new();
    while let Some(a) = r.poll_action() {
        if let Action::Reply(_, body) = a {
            out.push(serde_json::from_slice(&body).expect("a reply is JSON"));
        }
    }
    out
}

/// A become spec as the Ansible plugin builds it for `sudo` to `user` (docs/api.md, `become`).
fn sudo(user: &str) -> serde_json::Value {
    let success = format!("BECOME-SUCCESS-{user}");
    serde_json::json!({"method": "sudo", "user": user, "flags": "sudo|-H -S -n",
        "password": null,
        "cmd": format!("sudo -H -S -n -u {user} /bin/sh -c 'echo {success}; __SPINDLE_BOOT__'"),
        "success": success, "prompt": r"(?i)password[^\n:]*[:：]\s*$"})
}

/// The target id the router keeps for `spec` (a stream or a context).
fn id_of(r: &Router, spec: &serde_json::Value) -> TargetId {
    let s: crate::transport::Spec = serde_json::from_value(spec.clone()).expect("a valid spec");
    *r.by_key.get(&s.key()).expect("a target for this spec")
}

/// A module run as the Ansible plugin sends it (`modexec.plan`), `extra` added to the request.
fn module_run(id: u64, t: serde_json::Value, extra: serde_json::Value) -> Request {
    let payload = serde_json::json!({"op": "run_module", "mode": "warm",
        "req": {"ansible_module": "command", "params": {"_raw_params": "sleep 100"}},
        "manifest": {}, "interpreter": "/usr/bin/python3"});
    let mut v = serde_json::json!({"id": id, "op": "call", "target": t, "payload": payload});
    if let (Some(o), Some(x)) = (v.as_object_mut(), extra.as_object()) {
        o.extend(x.clone());
    }
    request(v)
}

/// The error object of the only reply sent so far, which must be for request `id`.
fn only_error(r: &mut Router, id: u64) -> serde_json::Value {
    let v = replies(r);
    assert_eq!(v.len(), 1, "{v:?}");
    assert_eq!(v[0]["id"], id, "{v:?}");
    assert_eq!(v[0]["ok"], false, "{v:?}");
    v[0]["error"].clone()
}

/// Opens the target of `spec` (a stream, or a context on a ready parent), or uses it again,
/// with one exec (request id 0) that its agent answers; what was queued counts as written.
/// Its id.
fn ready(r: &mut Router, spec: &serde_json::Value, now: Instant) -> TargetId {
    let s: crate::transport::Spec = serde_json::from_value(spec.clone()).expect("a valid spec");
    let open = r.by_key.contains_key(&s.key());
    r.request(1, exec(0, spec.clone()), now);
    let t = id_of(r, spec);
    let root = r.root_of(t);
    if open {
        // Its agent runs already.
    } else if t == root {
        hello(r, t, "/usr/bin/python3", now);
    } else {
        context_hello(r, t, now);
        // Its parent's agent answers the spawn_context as well.
        let p = r.targets[t].parent.expect("a context has a parent");
        let spawn = r.targets[p].calls.iter().find_map(|(h, c)| {
            matches!(c.op, crate::router::calls::Op::Spawn { child, .. } if child == t)
                .then_some(*h)
        });
        let (pctx, h) = (r.targets[p].ctx, spawn.expect("a spawn_context in flight"));
        let body = format!(r#"{{"ctx": {}, "pid": 3}}"#, r.targets[t].ctx);
        frame_from(r, root, pctx, Kind::Reply, 0, h, body.as_bytes(), now);
    }
    let h = only_call(r, t);
    let ctx = r.targets[t].ctx;
    frame_from(r, root, ctx, Kind::Reply, 0, h, br#"{"rc": 0}"#, now);
    assert_eq!(answered(r), vec![0]);
    written(r, root);
    t
}

/// The server's part of puts and fetches: carries out the router's file requests on real
/// files, at once (as the server's workers would, in order), and hands the answers back at
/// `now`.
fn files(r: &mut Router, now: Instant) {
    while let Some(op) = r.poll_file_op() {
        if let Some((token, done)) = scratch::answer(op, |t| tmp_of(r, t)) {
            r.file_done(token, done, now);
        }
    }
}

/// The temp file of the fetch in flight whose file is `token`.
fn tmp_of(r: &Router, token: FileToken) -> Option<std::path::PathBuf> {
    r.targets.iter().find_map(|(_, x)| {
        x.calls.values().find_map(|c| match &c.op {
            crate::router::calls::Op::Fetch { file, tmp, .. } if *file == token => {
                Some(tmp.clone())
            }
            _ => None,
        })
    })
}
