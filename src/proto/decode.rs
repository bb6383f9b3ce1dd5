//! Incremental, total frame decoder: bytes in, frames or a typed error out.

use super::frame::{FrameHeader, Kind, HEADER_LEN, MAGIC, MAX_PAYLOAD};

/// Why a byte stream is not a valid frame sequence. After any of these the stream's framing
/// cannot be trusted and it must be closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The first two bytes of a header were not `SP`.
    #[error("bad frame magic {0:02x?} (expected \"SP\")")]
    BadMagic([u8; 2]),
    /// The kind byte names no known kind.
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    /// The declared payload length exceeds the maximum.
    #[error("frame payload of {len} bytes exceeds the {max}-byte limit")]
    Oversize {
        /// Declared length.
        len: usize,
        /// Limit in force.
        max: usize,
    },
}

/// Accumulates bytes and yields whole frames.
///
/// Memory is bounded by `HEADER_LEN + max_payload` plus one read's worth of bytes.
#[derive(Debug)]
pub struct Decoder {
    buf: Vec<u8>,
    start: usize,
    max_payload: usize,
    failed: Option<DecodeError>,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::new(MAX_PAYLOAD)
    }
}

impl Decoder {
    /// A decoder refusing payloads over `max_payload` bytes.
    pub fn new(max_payload: usize) -> Self {
        Decoder {
            buf: Vec::new(),
            start: 0,
            max_payload,
            failed: None,
        }
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > 64 * 1024 && self.start * 2 > self.buf.len() {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes held but not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Returns the next whole frame, `Ok(None)` when more bytes are needed, or the error that
    /// ended the stream (returned again on every later call).
    pub fn next_frame(&mut self) -> Result<Option<(FrameHeader, &[u8])>, DecodeError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let avail = &self.buf[self.start..];
        if avail.len() < HEADER_LEN {
            // Check what we can early so garbage fails fast.
            if !avail.is_empty() && avail[0] != MAGIC[0] {
                let m = [avail[0], avail.get(1).copied().unwrap_or(0)];
                return Err(self.fail(DecodeError::BadMagic(m)));
            }
            return Ok(None);
        }
        let mut h = [0u8; HEADER_LEN];
        h.copy_from_slice(&avail[..HEADER_LEN]);
        if h[0..2] != MAGIC {
            return Err(self.fail(DecodeError::BadMagic([h[0], h[1]])));
        }
        let Some(kind) = Kind::from_u8(h[2]) else {
            return Err(self.fail(DecodeError::UnknownKind(h[2])));
        };
        let be = |i: usize| u32::from_be_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
        let len = be(4) as usize;
        if len > self.max_payload {
            return Err(self.fail(DecodeError::Oversize {
                len,
                max: self.max_payload,
            }));
        }
        if avail.len() < HEADER_LEN + len {
            return Ok(None);
        }
        let header = FrameHeader {
            kind,
            flags: h[3],
            dst: be(8),
            src: be(12),
            handle: be(16),
            reply_to: be(20),
        };
        let from = self.start + HEADER_LEN;
        self.start = from + len;
        Ok(Some((header, &self.buf[from..from + len])))
    }

    fn fail(&mut self, e: DecodeError) -> DecodeError {
        self.failed = Some(e.clone());
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::encode_frame;
    use proptest::prelude::*;

    fn hdr(kind: Kind, handle: u32) -> FrameHeader {
        FrameHeader {
            kind,
            flags: 0x05,
            dst: 1,
            src: 0,
            handle,
            reply_to: 9,
        }
    }

    #[test]
    fn roundtrip_split_anywhere() {
        let mut wire = Vec::new();
        encode_frame(&mut wire, &hdr(Kind::Call, 3), b"{\"op\":\"ping\"}");
        encode_frame(&mut wire, &hdr(Kind::Data, 4), &[7u8; 1000]);
        for cut in 0..wire.len() {
            let mut d = Decoder::default();
            let mut got = Vec::new();
            d.push(&wire[..cut]);
            while let Some((h, p)) = d.next_frame().unwrap() {
                got.push((h, p.to_vec()));
            }
            d.push(&wire[cut..]);
            while let Some((h, p)) = d.next_frame().unwrap() {
                got.push((h, p.to_vec()));
            }
            assert_eq!(got.len(), 2, "cut at {cut}");
            assert_eq!(got[0].0, hdr(Kind::Call, 3));
            assert_eq!(got[1].1.len(), 1000);
        }
    }

    #[test]
    fn oversize_is_refused_before_buffering() {
        let mut d = Decoder::new(16);
        let mut wire = Vec::new();
        encode_frame(&mut wire, &hdr(Kind::Data, 1), &[0u8; 17]);
        d.push(&wire[..HEADER_LEN]);
        assert_eq!(
            d.next_frame().unwrap_err(),
            DecodeError::Oversize { len: 17, max: 16 }
        );
        // Sticky.
        assert!(d.next_frame().is_err());
    }

    #[test]
    fn garbage_fails_fast() {
        let mut d = Decoder::default();
        d.push(b"Traceback (most recent call last):");
        assert!(matches!(d.next_frame(), Err(DecodeError::BadMagic(_))));
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..8)) {
            let mut d = Decoder::new(1024);
            for c in &chunks {
                d.push(c);
                while let Ok(Some((_, p))) = d.next_frame() {
                    prop_assert!(p.len() <= 1024);
                }
            }
        }

        #[test]
        fn valid_frames_roundtrip(frames in proptest::collection::vec((1u8..=5, any::<u8>(), any::<u32>(), proptest::collection::vec(any::<u8>(), 0..200)), 0..10), split in 1usize..64) {
            let mut wire = Vec::new();
            for (k, f, hnd, p) in &frames {
                let h = FrameHeader { kind: Kind::from_u8(*k).unwrap(), flags: *f, dst: 1, src: 0, handle: *hnd, reply_to: 0 };
                encode_frame(&mut wire, &h, p);
            }
            let mut d = Decoder::default();
            let mut got = Vec::new();
            for c in wire.chunks(split) {
                d.push(c);
                while let Some((h, p)) = d.next_frame().unwrap() {
                    got.push((h.kind as u8, h.flags, h.handle, p.to_vec()));
                }
            }
            prop_assert_eq!(got, frames);
        }
    }
}
