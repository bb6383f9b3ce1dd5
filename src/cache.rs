//! Content-addressed blob cache on the controller: module and module_utils sources keyed by
//! their SHA-256, bounded in bytes with least-recently-used eviction. The router pushes a blob
//! to a target only when that target's stream has not received it yet, inline in the CALL that
//! needs it (one round trip), so the cache is what lets clients name code by hash alone.

use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Arc;

/// Default byte budget of the cache.
pub const DEFAULT_LIMIT: usize = 256 * 1024 * 1024;

/// Why a blob was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CacheError {
    /// The content does not hash to the name it was given.
    #[error("blob content hashes to {actual}, not {claimed}")]
    HashMismatch {
        /// Name given.
        claimed: String,
        /// Actual SHA-256.
        actual: String,
    },
    /// A single blob larger than the whole cache.
    #[error("blob of {0} bytes exceeds the cache size")]
    TooLarge(usize),
}

/// Hex SHA-256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

/// Lower-case hex of `bytes` (the one encoder: digests, set ids).
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0x0f)] as char);
    }
    s
}

struct Entry {
    data: Arc<[u8]>,
    /// Its form on the wire, made on first use: base64 of its zlib compression.
    packed: Option<Arc<str>>,
    used: u64,
}

/// The cache.
pub struct BlobCache {
    map: HashMap<String, Entry>,
    bytes: usize,
    limit: usize,
    clock: u64,
}

impl Default for BlobCache {
    fn default() -> Self {
        BlobCache::new(DEFAULT_LIMIT)
    }
}

impl BlobCache {
    /// A cache holding at most `limit` bytes of content.
    pub fn new(limit: usize) -> Self {
        BlobCache {
            map: HashMap::new(),
            bytes: 0,
            limit,
            clock: 0,
        }
    }

    /// Stores `data` under `hash` after checking it; evicts least recently used blobs to fit.
    pub fn put(&mut self, hash: &str, data: Vec<u8>) -> Result<(), CacheError> {
        let actual = sha256_hex(&data);
        if actual != hash {
            return Err(CacheError::HashMismatch {
                claimed: hash.into(),
                actual,
            });
        }
        if data.len() > self.limit {
            return Err(CacheError::TooLarge(data.len()));
        }
        self.clock += 1;
        if let Some(e) = self.map.get_mut(hash) {
            e.used = self.clock;
            return Ok(());
        }
        while self.bytes + data.len() > self.limit {
            let Some(oldest) = self
                .map
                .iter()
                .min_by_key(|(_, e)| e.used)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            if let Some(e) = self.map.remove(&oldest) {
                self.bytes -= e.data.len() + e.packed.map_or(0, |p| p.len());
            }
        }
        self.bytes += data.len();
        self.map.insert(
            hash.into(),
            Entry {
                data: data.into(),
                packed: None,
                used: self.clock,
            },
        );
        Ok(())
    }

    /// The blob named `hash`, marking it used.
    pub fn get(&mut self, hash: &str) -> Option<Arc<[u8]>> {
        self.clock += 1;
        let clock = self.clock;
        self.map.get_mut(hash).map(|e| {
            e.used = clock;
            e.data.clone()
        })
    }

    /// The blob named `hash` as it is sent to agents (`"blobs_z"`): base64 of its zlib
    /// compression, made once per blob (module sources shrink to about a quarter).
    pub fn packed(&mut self, hash: &str) -> Option<Arc<str>> {
        use base64::Engine as _;
        use std::io::Write as _;
        self.clock += 1;
        let clock = self.clock;
        let e = self.map.get_mut(hash)?;
        e.used = clock;
        if e.packed.is_none() {
            let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
            // Writing into a Vec cannot fail.
            let _ = z.write_all(&e.data);
            let packed =
                base64::engine::general_purpose::STANDARD.encode(z.finish().unwrap_or_default());
            self.bytes += packed.len();
            e.packed = Some(packed.into());
        }
        e.packed.clone()
    }

    /// Number of blobs held.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_lower_case_two_digits_per_byte() {
        assert_eq!(hex(&[0x00, 0x0f, 0xa0, 0xff]), "000fa0ff");
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn verifies_and_evicts_lru() {
        let mut c = BlobCache::new(10);
        let (a, b, d) = (b"aaaa".to_vec(), b"bbbb".to_vec(), b"dddd".to_vec());
        let (ha, hb, hd) = (sha256_hex(&a), sha256_hex(&b), sha256_hex(&d));
        assert!(matches!(
            c.put(&hb, a.clone()),
            Err(CacheError::HashMismatch { .. })
        ));
        c.put(&ha, a).unwrap();
        c.put(&hb, b).unwrap();
        assert!(c.get(&ha).is_some()); // a is now more recent than b
        c.put(&hd, d).unwrap();
        assert!(c.get(&hb).is_none(), "b was least recently used");
        assert!(c.get(&ha).is_some() && c.get(&hd).is_some());
        assert_eq!(c.bytes(), 8);
        assert_eq!(
            c.put(&sha256_hex(&[0u8; 11]), vec![0u8; 11]),
            Err(CacheError::TooLarge(11))
        );
    }
}
