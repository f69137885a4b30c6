//! The on-disk record, apart from any file I/O.
//!
//! ```text
//! | len: u32 LE | crc32: u32 LE | seq: u64 LE | payload: len bytes |
//! ```
//! The CRC-32 covers `seq` and the payload, so a torn write, a zeroed tail or flipped bits are all
//! caught; `len` is bounded, so garbage can never make the reader allocate much.
//!
//! After damage, [`resync`] finds the next record whose header and checksum are valid and whose
//! sequence number continues, so one bad record costs that record only. The payload is opaque here;
//! what it holds is the caller's business (the bridge spools a Kafka record).

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

/// A whole record whose checksum holds, found in a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    pub seq: u64,
    pub payload: &'a [u8],
}

impl Frame<'_> {
    /// Bytes the record takes on disk.
    pub fn size(&self) -> usize {
        HEADER_LEN + self.payload.len()
    }
}

/// The record starting at `buf[at..]`, if a whole and valid one does.
pub fn frame_at(buf: &[u8], at: usize) -> Option<Frame<'_>> {
    let head: &[u8; HEADER_LEN] = buf.get(at..at.checked_add(HEADER_LEN)?)?.try_into().ok()?;
    let h = Header::parse(head)?;
    let payload = buf.get(at + HEADER_LEN..(at + HEADER_LEN).checked_add(h.len)?)?;
    h.matches(payload).then_some(Frame { seq: h.seq, payload })
}

/// The first offset at or after `from` where a valid record with a sequence number in
/// `after_seq < seq < before_seq` starts: where reading resumes after a damaged record. The range
/// check keeps a stale copy of an older record (or random bytes that happen to checksum) from being
/// taken for the continuation.
pub fn resync(buf: &[u8], from: usize, after_seq: u64, before_seq: u64) -> Option<(usize, Frame<'_>)> {
    (from..buf.len().saturating_sub(HEADER_LEN - 1)).find_map(|at| {
        // Cheap checks before the checksum: a plausible length and a sequence number in range.
        let head: &[u8; HEADER_LEN] = buf[at..at + HEADER_LEN].try_into().ok()?;
        let h = Header::parse(head)?;
        if h.seq <= after_seq || h.seq >= before_seq {
            return None;
        }
        frame_at(buf, at).map(|f| (at, f))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(seqs: &[u64]) -> Vec<u8> {
        let mut buf = Vec::new();
        for s in seqs {
            encode(*s, format!("record {s}").as_bytes(), &mut buf);
        }
        buf
    }

    #[test]
    fn frames_are_found_where_they_start_and_nowhere_else() {
        let buf = log(&[1, 2]);
        let first = frame_at(&buf, 0).unwrap();
        assert_eq!((first.seq, first.payload), (1, &b"record 1"[..]));
        assert_eq!(frame_at(&buf, first.size()).unwrap().seq, 2);
        assert_eq!(frame_at(&buf, 1), None);
        assert_eq!(frame_at(&buf, buf.len()), None);
        assert_eq!(frame_at(&buf[..buf.len() - 1], first.size()), None, "a torn record is not a frame");
    }

    #[test]
    fn resync_skips_a_damaged_record_and_finds_the_next_one() {
        let mut buf = log(&[1, 2, 3, 4]);
        let size = frame_at(&buf, 0).unwrap().size();
        buf[size + HEADER_LEN + 2] ^= 0x40; // bit rot in record 2's payload
        assert_eq!(frame_at(&buf, size), None);
        let (at, f) = resync(&buf, size, 1, u64::MAX).unwrap();
        assert_eq!((at, f.seq), (2 * size, 3));
        // Nothing valid after the damage within the allowed range.
        assert_eq!(resync(&buf, size, 4, u64::MAX), None);
        assert_eq!(resync(&buf, size, 1, 3), None);
    }

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
