//! The router in memory: requests, target bytes and time in, actions and queued bytes out
//! (no sockets, no processes, a fake clock made of `Instant` offsets).
//!
//! This file holds the fake agent and client helpers; the tests are grouped by theme: `start`
//! (agent start deadlines, refused specs), `probe` (idle ssh streams checked before use),
//! `deadlines` (call deadlines, cancels), `fetch` (fetch size limits) and `contexts`
//! (interpreter contexts).

mod contexts;
mod deadlines;
mod fetch;
mod probe;
mod start;

use super::{Action, Router, TargetId};
use crate::api::Request;
use crate::proto::{encode_frame, FrameHeader, Kind, CTX_AGENT, CTX_CONTROLLER};
use std::time::{Duration, Instant};

fn request(v: serde_json::Value) -> Request {
    serde_json::from_value(v).expect("a valid request")
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
    let body = serde_json::json!({"proto": 1, "python": "3.11.2", "executable": executable,
        "realpath": executable, "hostname": "h", "uid": 0, "pid": 1});
    let mut b = Vec::new();
    let h = FrameHeader {
        kind: Kind::Hello,
        flags: 0,
        dst: CTX_CONTROLLER,
        src: CTX_AGENT,
        handle: 0,
        reply_to: 0,
    };
    encode_frame(&mut b, &h, body.to_string().as_bytes());
    r.target_bytes(t, &b, now);
}

/// Error kinds of the replies sent so far.
fn errors(r: &mut Router) -> Vec<String> {
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
}

/// The handle of the only call in flight on target `t`.
fn only_call(r: &Router, t: TargetId) -> u32 {
    let handles: Vec<u32> = r.targets[t].calls.keys().copied().collect();
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
