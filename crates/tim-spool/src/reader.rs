//! Reads spooled records in sequence order for the forwarder.
//!
//! Two rules keep what it hands out exactly what was answered OK:
//! - it never reads past the [`Committed`] position, not even into its read-ahead buffer, so the
//!   bytes of a write that later failed (and were cut off) can never be handed out;
//! - a read error leaves its position on the first record not yet handed out, and what was read
//!   before the error is still returned, so nothing is skipped.
//!
//! It also lets go of a segment's file whenever it has read all that is committed: the writer deletes
//! a segment once Kafka has all of it, and a deleted file held open keeps its space, which on a full
//! disk is the space new appends wait for.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom, Take};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

use super::record::{resync, Header, HEADER_LEN};
use super::segment::{list_segments, report_damage, segment_path};
use super::{Committed, Damage, SpoolStats};

/// The read-ahead buffer: under the allocator's mmap threshold, as a segment is reopened often.
const READ_BUFFER: usize = 64 << 10;

/// One event as it was spooled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpooledRecord {
    pub seq: u64,
    pub payload: Vec<u8>,
}

/// An open segment: a buffered reader that the [`Take`] keeps below the committed offset.
struct Open {
    /// The segment's first sequence number (its name).
    first: u64,
    reader: BufReader<Take<File>>,
    /// Bytes consumed from the start of the file: where the next record starts.
    pos: u64,
    /// The file offset the `Take` lets the buffer read up to.
    allowed: u64,
    /// The last sequence number read in this segment (handed out or skipped as already read).
    last_seq: u64,
}

/// A cursor over the spool's segments. Blocking: the forwarder calls it from `spawn_blocking`.
pub struct SpoolReader {
    dir: PathBuf,
    current: Option<Open>,
    /// Where reading stopped at the committed end, with the file let go: (segment, offset, last
    /// sequence number read).
    parked: Option<(u64, u64, u64)>,
    /// The next sequence number to hand out; records below it are skipped.
    next_seq: u64,
    stats: Arc<SpoolStats>,
    /// Damage already reported (by recovery, or by this reader): skipped without a word.
    damage: Damage,
}

enum Step {
    Record(u64, Vec<u8>),
    /// No more committed bytes in this segment.
    End,
    Damaged,
}

impl SpoolReader {
    pub(super) fn new(dir: PathBuf, next_seq: u64, stats: Arc<SpoolStats>, damage: Damage) -> Self {
        Self { dir, current: None, parked: None, next_seq, stats, damage }
    }

    /// The next sequence number [`read`](Self::read) will return (or the first one after it).
    pub fn position(&self) -> u64 {
        self.next_seq
    }

    /// Goes back (or forward) to `seq`: the next read starts there. Used to publish again what a
    /// failed delivery left unacknowledged.
    pub fn seek(&mut self, seq: u64) {
        self.current = None;
        self.parked = None;
        self.next_seq = seq;
    }

    /// Up to `max_records` records (at most about `max_bytes`), none past `committed`. Returns an
    /// empty batch when nothing more is committed. On an I/O error, what was read before it is
    /// returned (the error is logged and the next call starts where this one stopped); an error before
    /// any record is returned as the error.
    pub fn read(
        &mut self,
        committed: Committed,
        max_records: usize,
        max_bytes: usize,
    ) -> io::Result<Vec<SpooledRecord>> {
        let mut out = Vec::new();
        let mut bytes = 0;
        let result = self.fill(committed, max_records, max_bytes, &mut out, &mut bytes);
        match result {
            Ok(()) => Ok(out),
            Err(e) => {
                // The position is the record after the last one in `out`: reopen there next time.
                self.current = None;
                if out.is_empty() {
                    Err(e)
                } else {
                    tracing::warn!(error = %e, records = out.len(), next_seq = self.next_seq,
                        "spool read failed after some records; forwarding those, the rest next time");
                    Ok(out)
                }
            }
        }
    }

    fn fill(
        &mut self,
        committed: Committed,
        max_records: usize,
        max_bytes: usize,
        out: &mut Vec<SpooledRecord>,
        bytes: &mut usize,
    ) -> io::Result<()> {
        while self.next_seq <= committed.seq && out.len() < max_records && *bytes < max_bytes {
            if self.current.is_none() && !self.unpark()? && !self.open_segment()? {
                return Ok(());
            }
            let cur = self.current.as_mut().expect("opened above");
            let limit = if cur.first == committed.segment { committed.offset } else { u64::MAX };
            cur.allow(limit);
            failpoint!("spool::read", |arg| Err(super::injected(arg)));
            match next(&mut cur.reader)? {
                Step::Record(seq, _) if seq <= cur.last_seq.max(cur.first.saturating_sub(1)) => {
                    // Out of sequence: not a record of this place in the log.
                    self.skip_damage(committed)?;
                }
                Step::Record(seq, payload) => {
                    cur.pos += (HEADER_LEN + payload.len()) as u64;
                    cur.last_seq = seq;
                    if seq >= self.next_seq {
                        self.next_seq = seq + 1;
                        *bytes += payload.len();
                        out.push(SpooledRecord { seq, payload });
                    }
                }
                Step::End if cur.first == committed.segment => {
                    self.park();
                    return Ok(());
                }
                Step::End => {
                    let first = cur.first;
                    if !self.open_segment_after(first)? {
                        return Ok(());
                    }
                }
                Step::Damaged => self.skip_damage(committed)?,
            }
        }
        if self.next_seq > committed.seq
            && self.current.as_ref().is_some_and(|c| c.first == committed.segment)
        {
            self.park();
        }
        Ok(())
    }

    /// Lets go of the current segment's file, remembering where reading stopped.
    fn park(&mut self) {
        if let Some(cur) = self.current.take() {
            self.parked = Some((cur.first, cur.pos, cur.last_seq));
        }
    }

    /// The current segment is damaged at its position: find the next valid record that continues the
    /// sequence and go on from there; report (once) and count what was lost.
    fn skip_damage(&mut self, committed: Committed) -> io::Result<()> {
        let cur = self.current.as_mut().expect("reading a segment");
        let (first, at) = (cur.first, cur.pos);
        let file = File::open(segment_path(&self.dir, first))?;
        let end = if first == committed.segment { committed.offset } else { file.metadata()?.len() };
        let mut buf = vec![0u8; end.saturating_sub(at) as usize];
        file.read_exact_at(&mut buf, at)?;
        let segments = list_segments(&self.dir)?;
        let before = if first == committed.segment {
            committed.seq + 1
        } else {
            segments.iter().map(|(f, _)| *f).find(|f| *f > first).unwrap_or(committed.seq + 1)
        };
        let after = cur.last_seq.max(first.saturating_sub(1));
        let (resume_at, lost_to) = match resync(&buf, 1, after, before) {
            Some((off, f)) => (at + off as u64, f.seq - 1),
            None => (end, before - 1),
        };
        if self.damage.insert((first, at)) {
            let segment = segment_path(&self.dir, first).display().to_string();
            report_damage(
                &self.stats,
                &segment,
                at,
                (resume_at - at) as usize,
                after + 1,
                lost_to,
                self.next_seq - 1,
            );
        }
        self.next_seq = self.next_seq.max(lost_to + 1);
        let mut reopened = Open::at(file, first, resume_at)?;
        reopened.last_seq = lost_to;
        self.current = Some(reopened);
        Ok(())
    }

    /// Reopens the parked segment where reading stopped; `false` when there is none (or it was
    /// deleted meanwhile, everything in it being in Kafka).
    fn unpark(&mut self) -> io::Result<bool> {
        let Some((first, pos, last_seq)) = self.parked.take() else { return Ok(false) };
        match open(&segment_path(&self.dir, first)) {
            Ok(file) => {
                let mut o = Open::at(file, first, pos)?;
                o.last_seq = last_seq;
                self.current = Some(o);
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => {
                self.parked = Some((first, pos, last_seq));
                Err(e)
            }
        }
    }

    /// Opens the segment that holds `next_seq`.
    fn open_segment(&mut self) -> io::Result<bool> {
        let segments = list_segments(&self.dir)?;
        let pick =
            segments.iter().rev().find(|(first, _)| *first <= self.next_seq).or_else(|| segments.first());
        match pick {
            Some((first, path)) => {
                self.current = Some(Open::at(open(path)?, *first, 0)?);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn open_segment_after(&mut self, first: u64) -> io::Result<bool> {
        let next = list_segments(&self.dir)?.into_iter().find(|(f, _)| *f > first);
        match next {
            Some((f, path)) => {
                self.current = Some(Open::at(open(&path)?, f, 0)?);
                Ok(true)
            }
            None => {
                self.current = None;
                Ok(false)
            }
        }
    }
}

impl Open {
    fn at(mut file: File, first: u64, pos: u64) -> io::Result<Self> {
        file.seek(SeekFrom::Start(pos))?;
        Ok(Self {
            first,
            reader: BufReader::with_capacity(READ_BUFFER, file.take(0)),
            pos,
            allowed: pos,
            last_seq: first.saturating_sub(1),
        })
    }

    /// Lets the buffer read up to `limit` (never back: committed bytes stay committed).
    fn allow(&mut self, limit: u64) {
        if limit <= self.allowed {
            return;
        }
        let take = self.reader.get_mut();
        // What the Take has not yet handed to the buffer, plus the new allowance.
        let remaining = take.limit().saturating_add(limit - self.allowed);
        take.set_limit(remaining);
        self.allowed = limit;
    }
}

fn open(path: &std::path::Path) -> io::Result<File> {
    failpoint!("spool::open_segment", |arg| Err(super::injected(arg)));
    File::open(path)
}

fn next(r: &mut impl Read) -> io::Result<Step> {
    let mut h = [0u8; HEADER_LEN];
    let mut got = 0;
    while got < HEADER_LEN {
        match r.read(&mut h[got..]) {
            Ok(0) => return Ok(if got == 0 { Step::End } else { Step::Damaged }),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let Some(header) = Header::parse(&h) else {
        return Ok(Step::Damaged);
    };
    let mut payload = vec![0u8; header.len];
    match r.read_exact(&mut payload) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(Step::Damaged),
        Err(e) => return Err(e),
    }
    Ok(if header.matches(&payload) { Step::Record(header.seq, payload) } else { Step::Damaged })
}
