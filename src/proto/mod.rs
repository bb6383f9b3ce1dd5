//! The controller ↔ agent wire format: fixed 24-byte frame headers, payload kinds and flags.
//!
//! This is the one place that knows the byte layout; `docs/protocol.md` is its prose twin and
//! `src/agent/agent.py` its Python twin. Encoding appends to caller-owned buffers; decoding is
//! total (any byte string yields frames or a typed [`DecodeError`], never a panic).

mod decode;
mod frame;
pub mod python;

pub use decode::{DecodeError, Decoder};
pub use frame::{encode_frame, FrameHeader, Kind, HEADER_LEN, MAGIC, MAX_PAYLOAD};

/// Protocol version spoken by this controller; the agent reports its own in HELLO.
pub const PROTO_VERSION: u64 = 1;

/// Context id of the controller.
pub const CTX_CONTROLLER: u32 = 0;
/// Context id of the directly connected agent.
pub const CTX_AGENT: u32 = 1;

/// Frame flag bits (meaning depends on the kind; unknown bits are ignored).
pub mod flags {
    /// REPLY: the reply continues in the next REPLY frame with the same `reply_to`.
    pub const MORE: u8 = 0x01;
    /// REPLY: the call failed; payload is `{"error": kind, "message": text}`.
    pub const ERROR: u8 = 0x02;
    /// DATA: last chunk of the transfer.
    pub const EOF: u8 = 0x04;
    /// DATA: abandon the transfer.
    pub const ABORT: u8 = 0x08;
    /// CALL to a nested context: its `"blob_refs"` name code blobs by hash, which the agent
    /// writing the frame into the context's input puts in from its own store (the blobs
    /// cross the links above that agent once, not once per context).
    pub const REFS: u8 = 0x10;
    /// DATA, agent → controller, first frame of a `fetch_file`: the payload is the 8-byte
    /// big-endian size the agent found at open, the most bytes the transfer will carry.
    pub const SIZE: u8 = 0x20;
}
