//! The on-disk record, apart from any file I/O.
//!
//! ```text
//! | len: u32 LE | crc32: u32 LE | seq: u64 LE | payload: len bytes |
//! ```
//! The CRC-32 covers `seq` and the payload, so a torn write, a zeroed tail or flipped bits are all
//! caught; `len` is bounded, so garbage can never make the reader allocate much.

/// Bytes before the payload.
pub const HEADER_LEN: usize = 16;

/// No event comes near this (bodies are capped far lower); anything claiming more is corruption.
pub const MAX_PAYLOAD: usize = 16 << 20;

pub fn encode(seq: u64, payload: &[u8], out: &mut Vec<u8>) {
    let mut crc = crc32fast::Hasher::new();
    crc.update(&seq.to_le_bytes());
    crc.update(payload);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(payload);
}

/// What a record header says, before its payload is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub len: usize,
    pub crc: u32,
    pub seq: u64,
}

impl Header {
    /// `None` when the header cannot be a record's (an all-zero or oversized length).
    pub fn parse(b: &[u8; HEADER_LEN]) -> Option<Self> {
        let len = u32::from_le_bytes(b[0..4].try_into().unwrap()) as usize;
        let crc = u32::from_le_bytes(b[4..8].try_into().unwrap());
        let seq = u64::from_le_bytes(b[8..16].try_into().unwrap());
        (len > 0 && len <= MAX_PAYLOAD && seq > 0).then_some(Self { len, crc, seq })
    }

    pub fn matches(&self, payload: &[u8]) -> bool {
        let mut crc = crc32fast::Hasher::new();
        crc.update(&self.seq.to_le_bytes());
        crc.update(payload);
        crc.finalize() == self.crc
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_round_trips_and_a_flipped_bit_is_caught() {
        let mut buf = Vec::new();
        encode(7, b"hello", &mut buf);
        let h = Header::parse(buf[..HEADER_LEN].try_into().unwrap()).unwrap();
        assert_eq!((h.len, h.seq), (5, 7));
        assert!(h.matches(&buf[HEADER_LEN..]));
        buf[HEADER_LEN] ^= 1;
        assert!(!h.matches(&buf[HEADER_LEN..]));
    }

    #[test]
    fn zeroes_and_absurd_lengths_are_not_headers() {
        assert_eq!(Header::parse(&[0; HEADER_LEN]), None);
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        b[8] = 1;
        assert_eq!(Header::parse(&b), None);
    }
}
