//! One frame from a target's agent (or a context's), applied to its `Target`: HELLO, replies
//! (in parts, or a context's end, or a retire notice), fetch data within its limits, LOG and
//! CREDIT. Split from the router's I/O (`mod.rs`), which decodes the frames and acts on what
//! this returns.

use super::agent_log::{self, escape_for_log, LOG_RECORD_MAX};
use super::calls::Op;
use super::target::{Phase, Target};
use super::{replies, FileOp, FETCH_MAX};
use crate::api::ErrorKind;
use crate::proto::{self, flags, FrameHeader, Kind};
use std::collections::VecDeque;
use std::time::Instant;

/// One frame for target (or become context) `x`. Completed replies go to `done`; an error
/// means the stream cannot continue.
/// A fetch whose data breaks its limits goes to `refused` with the reason (the caller
/// abandons it: its client gets `protocol`, the agent a cancel); a fetch's data goes to
/// `file_ops`, to be written.
#[allow(clippy::too_many_arguments)] // the router's parts it may touch, borrowed apart from `x`
pub(super) fn on_frame(
    x: &mut Target,
    replies: &replies::ReplyBudget,
    h: &FrameHeader,
    payload: &[u8],
    done: &mut Vec<(u32, u8, Vec<u8>)>,
    refused: &mut Vec<(u32, String)>,
    file_ops: &mut VecDeque<FileOp>,
    now: Instant,
) -> Result<(), (ErrorKind, String)> {
    match h.kind {
        Kind::Hello => {
            parse_hello(payload).map_err(|m| (ErrorKind::Protocol, m))?;
            x.hello = Some(payload.to_vec());
            x.phase = Phase::Ready;
            if tracing::enabled!(tracing::Level::DEBUG) {
                let hello = escape_for_log(&String::from_utf8_lossy(payload), LOG_RECORD_MAX);
                tracing::debug!(host = %x.label, %hello, "agent up");
            }
        }
        // A become context ended; its stream's agent says so in its name.
        Kind::Reply if h.reply_to == 0 && h.flags & flags::EOF != 0 && x.parent.is_some() => {
            let v: serde_json::Value = serde_json::from_slice(payload).unwrap_or_default();
            let m = v["message"].as_str().unwrap_or("become context ended");
            // A become or interpreter context that was up: its stream lives, only its agent
            // ended (killed by its task...). A stream through a hop that was up: its ssh on
            // the hop ended, saying why if the connection broke (the message carries what it
            // said), as a direct stream's does (`process_ended`).
            let up = x.hello.is_some();
            let broke = crate::transport::classify::connection_broke(m);
            let kind = if up && (x.spec.is_context() || !broke) {
                ErrorKind::AgentEnded
            } else {
                ErrorKind::ConnectionLost
            };
            return Err((kind, m.to_string()));
        }
        // The agent asks to serve nothing new (its interpreter was replaced on the target).
        Kind::Reply if h.reply_to == 0 && h.flags & (flags::EOF | flags::ERROR) == 0 => {
            let v: serde_json::Value = serde_json::from_slice(payload).unwrap_or_default();
            match v["retire"].as_str() {
                Some(why) if x.retiring.is_none() => {
                    let why = escape_for_log(why, LOG_RECORD_MAX);
                    tracing::info!(host = %x.label, "the agent retires: {why}");
                    x.retiring = Some(why);
                }
                _ => tracing::debug!(host = %x.label, "unsolicited reply ignored"),
            }
        }
        Kind::Reply => {
            let Some(c) = x.calls.get_mut(&h.reply_to) else {
                tracing::debug!(host = %x.label, reply_to = h.reply_to, "reply for no call (timed out?)");
                return Ok(());
            };
            c.reply.extend(payload, replies);
            if h.flags & flags::MORE == 0 {
                let body = c.reply.take();
                done.push((h.reply_to, h.flags, body));
            }
        }
        Kind::Data => {
            let Some(c) = x.calls.get_mut(&h.handle) else {
                return Ok(());
            };
            if let Op::Fetch {
                file,
                writing,
                received,
                announced,
                ..
            } = &mut c.op
            {
                if let Err(m) = fetch_limits(h.flags, payload, *received, announced) {
                    *writing = false;
                    refused.push((h.handle, m));
                    return Ok(());
                }
                if h.flags & flags::SIZE != 0 {
                    return Ok(());
                }
                *received += payload.len() as u64;
                if *writing {
                    let data = payload.to_vec();
                    file_ops.push_back(FileOp::Write { token: *file, data });
                }
            }
        }
        // Escaped, truncated, and at most LOG_RATE a second per target (agent_log).
        Kind::Log => {
            if x.logs.allow(now) {
                agent_log::emit(&x.label, payload);
            }
        }
        // Handled by the caller (it releases more of the context's frames).
        Kind::Credit if x.parent.is_some() => {
            x.unacked = x.unacked.saturating_sub(h.handle as usize);
        }
        Kind::Credit => {
            tracing::debug!(host = %x.label, "CREDIT for a stream's own agent; ignored");
        }
        Kind::Call => {
            tracing::warn!(host = %x.label, "agent sent a CALL frame; ignored");
        }
    }
    Ok(())
}

/// Checks one DATA frame of a fetch against the size its agent announced (a frame with flag
/// SIZE, recorded in `announced`) and [`FETCH_MAX`]: the error says what was broken.
fn fetch_limits(
    fl: u8,
    payload: &[u8],
    received: u64,
    announced: &mut Option<u64>,
) -> Result<(), String> {
    if fl & flags::SIZE != 0 {
        let size = <[u8; 8]>::try_from(payload).map(u64::from_be_bytes);
        return match size {
            Ok(n) if announced.is_some() || received > 0 => Err(format!(
                "the agent announced a size ({n}) twice or after sending data"
            )),
            Ok(n) if n > FETCH_MAX => Err(format!(
                "the file is {n} bytes, over the daemon's fetch limit of {FETCH_MAX} bytes"
            )),
            Ok(n) => {
                *announced = Some(n);
                Ok(())
            }
            Err(_) => Err(format!(
                "malformed size announcement ({} bytes, not 8)",
                payload.len()
            )),
        };
    }
    let limit = announced.unwrap_or(FETCH_MAX);
    match received.checked_add(payload.len() as u64) {
        Some(n) if n <= limit => Ok(()),
        _ => Err(match announced {
            Some(a) => format!("the agent sent more than the {a} bytes it announced"),
            None => format!("the agent sent more than the daemon's fetch limit of {limit} bytes"),
        }),
    }
}

fn parse_hello(payload: &[u8]) -> Result<(), String> {
    let v: serde_json::Value =
        serde_json::from_slice(payload).map_err(|e| format!("agent HELLO is not JSON: {e}"))?;
    match v["proto"].as_u64() {
        Some(proto::PROTO_VERSION) => Ok(()),
        other => Err(format!(
            "agent speaks protocol {other:?}, this controller speaks {}",
            proto::PROTO_VERSION
        )),
    }
}
