//! Reads spooled records in sequence order for the forwarder.

use std::fs::File;
use std::io::{self, BufReader};
use std::path::PathBuf;

use super::writer::{list_segments, read_next, Next};

/// One event as it was spooled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpooledRecord {
    pub seq: u64,
    pub payload: Vec<u8>,
}

/// A cursor over the spool's segments. Blocking: the forwarder calls it from `spawn_blocking`.
pub struct SpoolReader {
    dir: PathBuf,
    /// The segment being read, by its first sequence number.
    current: Option<(u64, BufReader<File>)>,
    /// The next sequence number to hand out; records below it are skipped.
    next_seq: u64,
}

impl SpoolReader {
    pub(super) fn new(dir: PathBuf, next_seq: u64) -> Self {
        Self { dir, current: None, next_seq }
    }

    /// The next sequence number [`read`](Self::read) will return (or the first one after it).
    pub fn position(&self) -> u64 {
        self.next_seq
    }

    /// Goes back (or forward) to `seq`: the next read starts there. Used to publish again what a
    /// failed delivery left unacknowledged.
    pub fn seek(&mut self, seq: u64) {
        self.current = None;
        self.next_seq = seq;
    }

    /// Up to `max_records` records (at most about `max_bytes`), none past `committed`, the last
    /// durable sequence number. Returns an empty batch when nothing more is committed.
    pub fn read(
        &mut self,
        committed: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> io::Result<Vec<SpooledRecord>> {
        let mut out = Vec::new();
        let mut bytes = 0;
        while self.next_seq <= committed && out.len() < max_records && bytes < max_bytes {
            if self.current.is_none() && !self.open_segment()? {
                break;
            }
            let (first, r) = self.current.as_mut().expect("opened above");
            match read_next(r)? {
                Next::Record(seq, payload) if seq >= self.next_seq => {
                    self.next_seq = seq + 1;
                    bytes += payload.len();
                    out.push(SpooledRecord { seq, payload });
                }
                Next::Record(..) => {}
                Next::End => {
                    // The rest is in a later segment.
                    let first = *first;
                    if !self.open_segment_after(first)? {
                        break;
                    }
                }
                Next::Corrupt => {
                    let first = *first;
                    tracing::error!(
                        segment = first,
                        position = self.next_seq,
                        "spool: corrupt record while forwarding; skipping the rest of the segment"
                    );
                    if !self.open_segment_after(first)? {
                        break;
                    }
                }
            }
        }
        Ok(out)
    }

    /// Opens the segment that holds `next_seq`.
    fn open_segment(&mut self) -> io::Result<bool> {
        let segments = list_segments(&self.dir)?;
        let pick =
            segments.iter().rev().find(|(first, _)| *first <= self.next_seq).or_else(|| segments.first());
        match pick {
            Some((first, path)) => {
                self.current = Some((*first, BufReader::with_capacity(256 << 10, File::open(path)?)));
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn open_segment_after(&mut self, first: u64) -> io::Result<bool> {
        let next = list_segments(&self.dir)?.into_iter().find(|(f, _)| *f > first);
        match next {
            Some((f, path)) => {
                self.next_seq = self.next_seq.max(f);
                self.current = Some((f, BufReader::with_capacity(256 << 10, File::open(path)?)));
                Ok(true)
            }
            None => {
                self.current = None;
                Ok(false)
            }
        }
    }
}
