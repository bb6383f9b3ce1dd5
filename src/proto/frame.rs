//! Frame header layout and encoding.

/// First two bytes of every frame.
pub const MAGIC: [u8; 2] = *b"SP";
/// Header length in bytes.
pub const HEADER_LEN: usize = 24;
/// Largest payload a frame may carry (4 MiB).
pub const MAX_PAYLOAD: usize = 4 * 1024 * 1024;

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Agent → controller, first frame: JSON facts about the agent.
    Hello = 1,
    /// Controller → agent: JSON request; `handle` is the call id.
    Call = 2,
    /// Agent → controller: JSON answer; `reply_to` is the call id.
    Reply = 3,
    /// Raw bytes of a file transfer; `handle` is the transfer's call id.
    Data = 4,
    /// Agent → controller: a forwarded Python logging record (JSON).
    Log = 5,
    /// Agent → controller: `handle` bytes the controller sent to nested context `src` were
    /// written into that context's input (flow control of relayed frames; no payload).
    Credit = 6,
}

impl Kind {
    /// Maps a wire byte to a kind.
    pub fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Hello,
            2 => Kind::Call,
            3 => Kind::Reply,
            4 => Kind::Data,
            5 => Kind::Log,
            6 => Kind::Credit,
            _ => return None,
        })
    }
}

/// A decoded frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Payload kind.
    pub kind: Kind,
    /// Flag bits (see [`crate::proto::flags`]).
    pub flags: u8,
    /// Destination context id.
    pub dst: u32,
    /// Source context id.
    pub src: u32,
    /// Call or transfer id.
    pub handle: u32,
    /// Call id this frame answers.
    pub reply_to: u32,
}

/// Appends one frame (header and payload) to `out`.
///
/// # Panics
/// Never on peer input; a payload longer than [`MAX_PAYLOAD`] is a caller bug and is checked
/// with a debug assertion (callers split large payloads).
pub fn encode_frame(out: &mut Vec<u8>, h: &FrameHeader, payload: &[u8]) {
    debug_assert!(payload.len() <= MAX_PAYLOAD);
    out.reserve(HEADER_LEN + payload.len());
    out.extend_from_slice(&MAGIC);
    out.push(h.kind as u8);
    out.push(h.flags);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(&h.dst.to_be_bytes());
    out.extend_from_slice(&h.src.to_be_bytes());
    out.extend_from_slice(&h.handle.to_be_bytes());
    out.extend_from_slice(&h.reply_to.to_be_bytes());
    out.extend_from_slice(payload);
}
