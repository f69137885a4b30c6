//! The writer thread: group commit, segment rolling, acknowledgements, and recovery at start.
//!
//! With `fsync=always`, each new segment is a *spare* zero-filled and synced ahead of time by a helper
//! thread (`spare.zero`, see `Writer::prepare_spare`): a record written inside already-allocated,
//! already-written blocks is made durable by an `fdatasync` that flushes data only, where an appending
//! write also commits the file's new size (on ext4 a journal commit). In the micro-benchmark one
//! append with `fsync=always` takes 126 µs instead of 159. Recovery reads a segment's zero tail as
//! the end of its records, not as damage.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::record::{self, frame_at, resync, HEADER_LEN};
use super::segment::{list_segments, report_damage, segment_path};
use super::{Command, Committed, Damage, FsyncMode, SpoolConfig, SpoolError, SpoolStats};

/// At most this many commands are folded into one group commit, so one batch's answers never wait
/// behind an unbounded queue.
const MAX_BATCH: usize = 4096;

const ACK_FILE: &str = "ack";
/// A spare segment, zero-filled and synced (not a `.seg`: never read as one). It is filled under
/// [`SPARE_TMP`] and renamed when complete, so a file by this name is always ready.
const SPARE_FILE: &str = "spare.zero";
const SPARE_TMP: &str = "spare.zero.tmp";
/// A spare is prepared only while the filesystem has this many segments' worth of room: it must
/// never be what fills a disk the records need.
const SPARE_ROOM: u64 = 4;
/// The ack file holds two slots, written in turn, the next write always going to the slot not
/// written last by a write that succeeded: a torn or failed write damages that slot only, and the
/// other keeps the last position on record. Each slot has a 4 KiB page of its own, so no write of one
/// (a sector, or a page the kernel writes back whole) touches the other.
const ACK_SLOTS: [u64; 2] = [0, 4096];
const ACK_PAGE: usize = 4096;
const ACK_MAGIC: &[u8; 4] = b"TKB2";
const ACK_SLOT_LEN: usize = 32;
/// Earlier versions wrote 16-byte slots (`TKBA`, the sequence number, a CRC-32) at 0 and 512, or one
/// at 0. They are read, and the file is rewritten in the current layout at open.
const LEGACY_ACK_MAGIC: &[u8; 4] = b"TKBA";
const LEGACY_ACK_SLOTS: [u64; 2] = [0, 512];
const LEGACY_ACK_SLOT_LEN: usize = 16;

#[derive(Debug, Clone)]
pub(super) struct Segment {
    /// The sequence number in the file's name: no record in it is older.
    pub first_seq: u64,
    pub last_seq: u64,
    pub bytes: u64,
    pub path: PathBuf,
}

pub(super) struct Recovered {
    segments: VecDeque<Segment>,
    /// Up to the last record that can be read back.
    pub committed: Committed,
    /// The first sequence number new appends get: after every number seen, damaged ones included.
    pub next_seq: u64,
    pub acked: u64,
    /// A refused batch's numbers, as the ack file records them (see [`AckState::refused`]).
    pub refused: Option<(u64, u64)>,
    /// Held (locked) for as long as the writer lives.
    pub lock: File,
    pub damage: Damage,
}

/// What an ack slot records.
///
/// ```text
/// | "TKB2" | acked: u64 LE | refused from: u64 LE | refused to: u64 LE | crc32 of the 28 bytes before: u32 LE |
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct AckState {
    /// Kafka has every record up to this sequence number.
    pub acked: u64,
    /// The sequence numbers of a refused batch (answered 5xx) whose bytes could not be durably cut
    /// off its segment: recovery drops them. Encoded as `0, 0` when there is none.
    pub refused: Option<(u64, u64)>,
}

impl AckState {
    fn to_bytes(self) -> [u8; ACK_SLOT_LEN] {
        let (from, to) = self.refused.unwrap_or((0, 0));
        let mut b = [0u8; ACK_SLOT_LEN];
        b[0..4].copy_from_slice(ACK_MAGIC);
        b[4..12].copy_from_slice(&self.acked.to_le_bytes());
        b[12..20].copy_from_slice(&from.to_le_bytes());
        b[20..28].copy_from_slice(&to.to_le_bytes());
        let crc = crc32fast::hash(&b[0..28]);
        b[28..32].copy_from_slice(&crc.to_le_bytes());
        b
    }

    fn parse(b: &[u8]) -> Option<Self> {
        let u64_at = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap());
        let crc = u32::from_le_bytes(b.get(28..32)?.try_into().unwrap());
        if &b[0..4] != ACK_MAGIC || crc32fast::hash(&b[0..28]) != crc {
            return None;
        }
        let refused = Some((u64_at(12), u64_at(20))).filter(|(from, _)| *from > 0);
        Some(AckState { acked: u64_at(4), refused })
    }

    /// A slot of an earlier version.
    fn parse_legacy(b: &[u8]) -> Option<Self> {
        let crc = u32::from_le_bytes(b.get(12..16)?.try_into().unwrap());
        (&b[0..4] == LEGACY_ACK_MAGIC && crc32fast::hash(&b[0..12]) == crc)
            .then(|| AckState { acked: u64::from_le_bytes(b[4..12].try_into().unwrap()), refused: None })
    }

    /// Which of two slots is newer: each write records an acknowledged number no lower than the one
    /// before, and a refusal recorded at the same acknowledged number a higher range.
    fn age(&self) -> (u64, u64) {
        (self.acked, self.refused.map_or(0, |(_, to)| to))
    }
}

/// What the ack file records: the newer of the slots whose checksum holds, or `None` when the file is
/// missing or no slot is whole. A file written by an earlier version (slots at 0 and 512, or one at
/// 0) reads too.
///
/// This version never writes a slot of the earlier layout (its first page overwrites them), so a whole
/// earlier-layout slot means an earlier version wrote last (a rollback): its slots are the truth, and a
/// slot of this layout left from before the rollback is stale and ignored (taking the greater of all
/// would acknowledge what the earlier version spooled since and never published). While migrating,
/// both hold the same position.
pub(super) fn read_ack(dir: &Path) -> Option<AckState> {
    let b = fs::read(dir.join(ACK_FILE)).ok()?;
    let slot = |at: u64, len: usize| b.get(at as usize..at as usize + len);
    let legacy = LEGACY_ACK_SLOTS
        .iter()
        .filter_map(|at| AckState::parse_legacy(slot(*at, LEGACY_ACK_SLOT_LEN)?))
        .max_by_key(AckState::age);
    legacy.or_else(|| {
        ACK_SLOTS.iter().filter_map(|at| AckState::parse(slot(*at, ACK_SLOT_LEN)?)).max_by_key(AckState::age)
    })
}

/// Checks every record left by an earlier run.
///
/// A damaged record costs that record only: the scan resumes at the next record whose checksum holds
/// and whose sequence number continues (below the next segment's first), with one warning naming the
/// segment, the offset and the sequence numbers lost. Only the newest segment's tail, where a crash
/// mid-write leaves a torn record, is cut off. Segments that are fully acknowledged or empty are
/// removed.
///
/// Each segment's bytes are walked by [`scan_segment`], which only reads; what it found is then acted
/// on here: the damage reported, the file cut where its records end, and the segment rewritten, set
/// aside, removed or kept.
pub(super) fn recover(dir: &Path, stats: &SpoolStats) -> Result<Recovered, SpoolError> {
    let open_err = |source| SpoolError::Open { path: dir.to_owned(), source };
    let lock = lock_dir(dir)?;
    let on_record = read_ack(dir);
    if on_record.is_none() && dir.join(ACK_FILE).exists() {
        tracing::warn!("spool: ack file is damaged; every spooled event will be published again");
    }
    let AckState { acked, refused } = on_record.unwrap_or_default();
    // A spare being filled when the last run stopped is half-filled: the writer makes a new one.
    match fs::remove_file(dir.join(SPARE_TMP)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(SpoolError::from(e)),
        _ => {}
    }
    let listed = list_segments(dir).map_err(open_err)?;
    let mut segments = VecDeque::new();
    let mut damage = Damage::new();
    let mut last_seq = 0u64;
    let mut committed = Committed::default();
    for (i, (first_seq, path)) in listed.iter().enumerate() {
        let first_seq = *first_seq;
        let place = SegmentPlace {
            first_seq,
            before_seq: listed.get(i + 1).map_or(u64::MAX, |(next, _)| *next),
            newest: i + 1 == listed.len(),
            seen_upto: last_seq,
        };
        let (mut buf, unreadable) = read_segment(path)?;
        let scan = scan_segment(&buf, &unreadable, place, refused);
        for d in &scan.damaged {
            report_damage(stats, &path.display(), d.offset as u64, d.bytes, d.lost_from, d.lost_to, acked);
            damage.insert((first_seq, d.offset as u64));
        }
        last_seq = scan.seen_upto;
        cut_where_records_end(path, &scan, buf.len())?;
        buf.truncate(scan.len);
        let (records, seg_last) = (scan.records.len(), scan.last_seq);
        if !unreadable.is_empty() && records > 0 && seg_last > acked {
            // Readers must never meet the bad blocks again: the segment is written anew, its records
            // only, on other blocks (the damage was counted above).
            buf = rewrite_segment(path, &buf, &scan.records)?;
            damage.retain(|(segment, _)| *segment != first_seq);
        }
        if (records == 0 || seg_last <= acked) && !unreadable.is_empty() {
            // Nothing left to deliver in it, but what could not be read stays for an operator: a
            // disk may give it back (the count of what it cost is in the damage report above).
            set_aside(path)?;
        } else if records == 0 || seg_last <= acked {
            fs::remove_file(path)?;
        } else {
            committed = Committed { seq: seg_last, segment: first_seq, offset: buf.len() as u64 };
            segments.push_back(Segment {
                first_seq,
                last_seq: seg_last,
                bytes: buf.len() as u64,
                path: path.clone(),
            });
        }
    }
    // A fresh spool continues numbering after the acknowledged sequence number; the reader's bound is
    // the last record that can be read (a damaged tail of an older segment is not waited for).
    committed.seq = committed.seq.max(acked);
    // Nor are refused numbers given again.
    let next_seq = last_seq.max(acked).max(refused.map_or(0, |(_, to)| to)) + 1;
    Ok(Recovered { segments, committed, next_seq, acked, refused, lock, damage })
}

/// Creates the spool directory if need be and locks it: two bridges appending to one spool would
/// interleave records, so the second one refuses to start. The lock is held while the file is open.
fn lock_dir(dir: &Path) -> Result<File, SpoolError> {
    let open_err = |source| SpoolError::Open { path: dir.to_owned(), source };
    fs::create_dir_all(dir).map_err(open_err)?;
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("lock"))
        .map_err(open_err)?;
    match lock.try_lock() {
        Ok(()) => Ok(lock),
        Err(fs::TryLockError::WouldBlock) => Err(SpoolError::Locked { path: dir.to_owned() }),
        Err(fs::TryLockError::Error(e)) => Err(open_err(e)),
    }
}

/// Where a segment sits in the log, as [`scan_segment`] needs to know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct SegmentPlace {
    /// The sequence number in the file's name: no record in it is older.
    pub first_seq: u64,
    /// The next segment's first sequence number (`u64::MAX` when there is none): no record of this
    /// segment reaches it.
    pub before_seq: u64,
    /// Whether no segment follows: the one a crash mid-write leaves a torn tail in.
    pub newest: bool,
    /// The highest sequence number seen in the segments before this one (lost ones included), 0 at
    /// the first: the next record continues from it.
    pub seen_upto: u64,
}

/// What [`scan_segment`] found in one segment's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct SegmentScan {
    /// How the walk ended.
    pub end: ScanEnd,
    /// The segment's length once recovered: where its file is cut (or its bytes end, for an
    /// unreadable tail left for the rewrite); all of it when nothing is cut ([`ScanEnd::Whole`],
    /// [`ScanEnd::DamagedTail`]).
    pub len: usize,
    /// The byte ranges of the records found, in order (what a rewrite without bad blocks keeps).
    pub records: Vec<Range<usize>>,
    /// The last record's sequence number; 0 when no record was found.
    pub last_seq: u64,
    /// The highest sequence number seen so far, this segment's and those before it, lost ones
    /// included: the next segment continues from it, and new appends after it.
    pub seen_upto: u64,
    /// The stretches skipped as damaged, in order; each is reported and counted once.
    pub damaged: Vec<DamagedStretch>,
}

/// How the walk of a segment ended; each variant's offset is where its records end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ScanEnd {
    /// Records, and any damage skipped between them, up to the last byte.
    Whole,
    /// A record of the batch the ack file records as refused starts here: it and everything after it
    /// are cut off (and the cut synced).
    Refused(usize),
    /// Zeros from here to the end (blocks the disk cannot read aside): the unwritten rest of a
    /// zero-filled segment, cut off (and the cut synced). In an older segment only when the next one
    /// continues the numbering.
    ZeroTail(usize),
    /// The newest segment: no valid record from here on (a crash mid-write); cut off.
    Torn(usize),
    /// The newest segment: no valid record from here on, and blocks the disk cannot read after it, so
    /// records answered OK may have been lost (one counted, in [`SegmentScan::damaged`]). The file is
    /// not cut: it is rewritten without the bad blocks or set aside.
    UnreadableTail(usize),
    /// An older segment: no valid record from here to its end; the numbers up to the next segment's
    /// first are lost (in [`SegmentScan::damaged`]). The file is kept as it is.
    DamagedTail(usize),
}

/// A stretch of a segment skipped as damaged, and the sequence numbers it cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct DamagedStretch {
    /// Where it starts, in bytes from the start of the segment.
    pub offset: usize,
    pub bytes: usize,
    /// The sequence numbers lost, inclusive (none when `lost_to < lost_from`: only records already
    /// counted, or none at all).
    pub lost_from: u64,
    pub lost_to: u64,
}

/// Walks one segment's bytes (as [`read_segment`] read them, `unreadable` its blocks the disk could
/// not read) to where its valid records end, and says what it found. Reads only: reporting, cutting
/// and rewriting are the caller's.
///
/// A record is taken when its checksum holds and its sequence number continues the numbering (above
/// `place.seen_upto` and the segment's first, below the next segment's first). Anything else is, in
/// this order: a record of the `refused` batch (the end of the records); a zero tail (the end, in the
/// newest segment or when the next one continues the numbering); damage skipped up to the next record
/// that continues ([`resync`]); failing that, the end of the records (see [`ScanEnd`]).
pub(super) fn scan_segment(
    buf: &[u8],
    unreadable: &[Range<usize>],
    place: SegmentPlace,
    refused: Option<(u64, u64)>,
) -> SegmentScan {
    let SegmentPlace { first_seq, before_seq, newest, seen_upto } = place;
    let readable = |i: usize| !unreadable.iter().any(|r| r.contains(&i));
    let mut scan = SegmentScan {
        end: ScanEnd::Whole,
        len: buf.len(),
        records: Vec::new(),
        last_seq: 0,
        seen_upto,
        damaged: Vec::new(),
    };
    let mut at = 0usize;
    while at < buf.len() {
        let expected = scan.seen_upto.max(first_seq.saturating_sub(1)) + 1;
        match frame_at(buf, at) {
            Some(f) if refused.is_some_and(|(from, to)| (from..=to).contains(&f.seq)) => {
                // A batch refused (answered 5xx) when its write or fsync failed, whose bytes could
                // not be cut off then: the end of this segment's records. Nothing was written after
                // it (the spool failed for good), and a restart starts a new segment.
                return SegmentScan { end: ScanEnd::Refused(at), len: at, ..scan };
            }
            Some(f) if f.seq >= expected && f.seq < before_seq => {
                scan.records.push(at..at + f.size());
                at += f.size();
                (scan.last_seq, scan.seen_upto) = (f.seq, f.seq);
                continue;
            }
            _ => {}
        }
        // (A block the disk cannot read inside that unwritten rest does not make it damage: the
        // zeros before it show nothing was written there.)
        let zero_tail =
            readable(at) && buf[at..].iter().enumerate().all(|(i, b)| *b == 0 || !readable(at + i));
        if zero_tail && (newest || expected == before_seq) {
            // The unwritten rest of a zero-filled segment: its records end here. (In an older
            // segment only when the next one continues the numbering: a zeroed stretch that lost
            // records is damage, below.)
            return SegmentScan { end: ScanEnd::ZeroTail(at), len: at, ..scan };
        }
        match resync(buf, at + 1, expected - 1, before_seq) {
            Some((to, f)) => {
                scan.damaged.push(DamagedStretch {
                    offset: at,
                    bytes: to - at,
                    lost_from: expected,
                    lost_to: f.seq - 1,
                });
                at = to;
            }
            None if newest && unreadable.iter().any(|r| r.end > at) => {
                // Not a torn write: records answered OK sat in the blocks the disk cannot read. How
                // many is unknown (nothing after them tells): at least one is counted.
                let lost = DamagedStretch {
                    offset: at,
                    bytes: buf.len() - at,
                    lost_from: expected,
                    lost_to: expected,
                };
                scan.damaged.push(lost);
                return SegmentScan { end: ScanEnd::UnreadableTail(at), len: at, ..scan };
            }
            // A torn or corrupt record at the end of the newest segment: a crash mid-write.
            None if newest => return SegmentScan { end: ScanEnd::Torn(at), len: at, ..scan },
            None => {
                let lost_to = before_seq - 1;
                scan.damaged.push(DamagedStretch {
                    offset: at,
                    bytes: buf.len() - at,
                    lost_from: expected,
                    lost_to,
                });
                scan.seen_upto = scan.seen_upto.max(lost_to);
                return SegmentScan { end: ScanEnd::DamagedTail(at), ..scan };
            }
        }
    }
    scan
}

/// Acts on how a segment's scan ended: cuts its file where its records end (`file_len` is its length
/// before), with one log line. An unreadable or damaged tail is left as it is (the damage report says
/// what it cost).
fn cut_where_records_end(path: &Path, scan: &SegmentScan, file_len: usize) -> io::Result<()> {
    let records = scan.records.len() as u64;
    match scan.end {
        ScanEnd::Refused(at) => {
            tracing::warn!(segment = %path.display(), offset = at, cut_bytes = file_len - at, records,
                "spool: records of a batch refused when its write or fsync failed; cutting them off");
            let file = OpenOptions::new().write(true).open(path)?;
            file.set_len(at as u64)?;
            file.sync_data()?;
        }
        ScanEnd::ZeroTail(at) => {
            // Cut, so readers see the end of the file there.
            tracing::info!(segment = %path.display(), offset = at, cut_bytes = file_len - at, records,
                "spool: the segment's records end where its zero-filled tail starts; cutting it there");
            let file = OpenOptions::new().write(true).open(path)?;
            file.set_len(at as u64)?;
            file.sync_data()?;
        }
        ScanEnd::Torn(at) => {
            tracing::warn!(
                segment = %path.display(),
                offset = at,
                cut_bytes = file_len - at,
                kept_records = records,
                "spool: torn or corrupt record at the end of the newest segment (a crash mid-write); cutting the segment there"
            );
            OpenOptions::new().write(true).open(path)?.set_len(at as u64)?;
        }
        // Nothing to cut. (A file with an unreadable tail is written anew without the bad blocks, or
        // set aside whole: see `recover`.)
        ScanEnd::Whole | ScanEnd::UnreadableTail(_) | ScanEnd::DamagedTail(_) => {}
    }
    Ok(())
}

/// Blocks of a segment read at start: a block the disk cannot read is filled with 0xFF.
const RECOVERY_BLOCK: usize = 4096;

/// A segment's bytes for recovery, read block by block: a block that cannot be read (`EIO`: a bad
/// sector) is filled with 0xFF, where no record can start, so recovery resumes at the next record
/// after it and counts what it cost, as for any damage; its byte ranges are returned.
fn read_segment(path: &Path) -> io::Result<(Vec<u8>, Vec<Range<usize>>)> {
    let file = File::open(path)?;
    let len = file.metadata()?.len() as usize;
    let mut buf = vec![0u8; len];
    let mut unreadable = Vec::new();
    let mut at = 0;
    while at < len {
        let end = (at + RECOVERY_BLOCK).min(len);
        match read_block(&file, &mut buf[at..end], at) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(5) => {
                tracing::error!(segment = %path.display(), offset = at, bytes = end - at, error = %e,
                    "spool: a block of the segment cannot be read; skipping past it");
                buf[at..end].fill(0xFF);
                unreadable.push(at..end);
            }
            Err(e) => return Err(e),
        }
        at = end;
    }
    Ok((buf, unreadable))
}

/// Replaces the segment at `path` by one holding only `records` (ranges of `buf`): written to a new
/// file, synced, renamed over it, the directory synced. Returns its new contents.
fn rewrite_segment(path: &Path, buf: &[u8], records: &[Range<usize>]) -> io::Result<Vec<u8>> {
    let fresh: Vec<u8> = records.iter().flat_map(|r| buf[r.clone()].iter().copied()).collect();
    use std::io::Write;
    let tmp = path.with_extension("seg.rewrite");
    {
        let mut f = File::create(&tmp)?;
        f.write_all(&fresh)?;
        f.sync_all()?;
    }
    // The original, bad blocks and all, is kept aside for an operator (a disk may give them back).
    set_aside(path)?;
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    tracing::warn!(segment = %path.display(), bytes = fresh.len(), records = records.len(),
        "spool: segment rewritten without the blocks the disk cannot read");
    Ok(fresh)
}

/// Renames a segment with blocks the disk cannot read to `<name>.seg.unreadable`: no longer listed as a
/// segment, never read by the bridge again, kept for an operator.
fn set_aside(path: &Path) -> io::Result<()> {
    let aside = path.with_extension("seg.unreadable");
    fs::rename(path, &aside)?;
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    tracing::warn!(segment = %path.display(), kept_as = %aside.display(),
        "spool: a segment with blocks the disk cannot read is set aside");
    Ok(())
}

/// One block, tried three times: a read error can pass (a path failing over), a bad sector does not.
fn read_block(file: &File, buf: &mut [u8], offset: usize) -> io::Result<()> {
    let mut tries = 0;
    loop {
        tries += 1;
        match read_block_once(file, buf, offset) {
            Err(e) if tries < 3 && e.raw_os_error() == Some(5) => {
                std::thread::sleep(Duration::from_millis(50));
            }
            other => return other,
        }
    }
}

fn read_block_once(file: &File, buf: &mut [u8], offset: usize) -> io::Result<()> {
    // `spool::recover_read=return(<offset>)`: the block holding that offset of the segment read then
    // fails with EIO.
    #[cfg(feature = "failpoints")]
    if let Some(Some(arg)) =
        crate::failpoints::here().then(|| fail::eval("spool::recover_read", |arg| arg)).flatten()
    {
        if arg.parse::<usize>().is_ok_and(|o| (offset..offset + buf.len()).contains(&o)) {
            return Err(io::Error::from_raw_os_error(5));
        }
    }
    file.read_exact_at(buf, offset as u64)
}

/// What went wrong with a batch's write.
enum WriteFailure {
    /// No room on the disk; nothing of the batch remains in the file. Passes when space returns.
    DiskFull(io::Error),
    /// Nothing of the batch remains in the file, and the file is as it was (e.g. too many open files).
    Transient(io::Error),
    /// The files are in doubt: a sync failed, an `EIO`, or a refused batch could not be cut off.
    Sticky(String),
}

impl WriteFailure {
    fn of(e: io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => WriteFailure::DiskFull(e),
            _ if e.raw_os_error() == Some(5) => WriteFailure::Sticky(format!("write failed: {e}")),
            _ => WriteFailure::Transient(e),
        }
    }
}

/// Whether the writer takes appends.
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Open,
    /// A failure left the files in doubt: every append is refused, with this reason.
    Failed(String),
    /// [`Command::Close`] was seen: appends queued behind it are refused.
    Closed,
}

/// Marks the writer as gone when its thread ends, however it ends (a panic too), for health checks.
struct Running(Arc<SpoolStats>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.writer_running.store(false, Ordering::Relaxed);
    }
}

pub(super) struct Writer {
    config: SpoolConfig,
    segment_bytes: u64,
    /// Closed segments, oldest first, then the active one (if any) last.
    segments: VecDeque<Segment>,
    /// The file appends go to; `None` until the first append after start or after it was reclaimed.
    active: Option<File>,
    /// The helper thread zero-filling the next segment's file (`fsync=always` only).
    spare: Option<std::thread::JoinHandle<()>>,
    next_seq: u64,
    acked: u64,
    ack_file: File,
    /// The ack slot written last by a write that succeeded; the next write goes to the other one.
    ack_slot: usize,
    /// Recorded in the ack file with the acknowledged number: see [`AckState::refused`].
    refused: Option<(u64, u64)>,
    disk_bytes: u64,
    /// With `fsync=interval`: when the oldest unsynced write happened.
    dirty_since: Option<Instant>,
    state: State,
    /// Sequence numbers given to batches whose write failed: never reused, never pending.
    burnt: Burnt,
    committed: watch::Sender<Committed>,
    stats: Arc<SpoolStats>,
    /// The spool directory's lock, released when the writer exits.
    _lock: File,
}

impl Writer {
    pub fn new(
        config: SpoolConfig,
        recovered: Recovered,
        committed: watch::Sender<Committed>,
        stats: Arc<SpoolStats>,
    ) -> Result<Self, SpoolError> {
        let ack_file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(config.dir.join(ACK_FILE))?;
        let disk_bytes = recovered.segments.iter().map(|s| s.bytes).sum();
        let w = Self {
            segment_bytes: config.segment_bytes(),
            config,
            segments: recovered.segments,
            active: None,
            spare: None,
            next_seq: recovered.next_seq,
            acked: recovered.acked,
            ack_file,
            ack_slot: 0,
            refused: recovered.refused,
            disk_bytes,
            dirty_since: None,
            state: State::Open,
            burnt: Burnt::default(),
            committed,
            stats,
            _lock: recovered.lock,
        };
        // Both slots hold the recovered state, so neither is stale or damaged from here on: the
        // second first, synced, so that a torn write of the first leaves it whole; the first page is
        // written whole, which clears the slot an earlier version kept at 512.
        let slot = w.ack_state().to_bytes();
        w.ack_file.write_all_at(&slot, ACK_SLOTS[1])?;
        w.ack_file.sync_data()?;
        let mut page = [0u8; ACK_PAGE];
        page[..ACK_SLOT_LEN].copy_from_slice(&slot);
        w.ack_file.write_all_at(&page, ACK_SLOTS[0])?;
        w.ack_file.sync_data()?;
        w.publish_stats();
        let mut w = w;
        w.prepare_spare();
        Ok(w)
    }

    pub fn run(mut self, rx: mpsc::Receiver<Command>) {
        let _running = Running(self.stats.clone());
        let mut batch = Vec::with_capacity(MAX_BATCH);
        loop {
            let first = match (self.config.fsync, self.dirty_since) {
                (FsyncMode::Interval(every), Some(since)) => {
                    match rx.recv_timeout(every.saturating_sub(since.elapsed())) {
                        Ok(c) => Some(c),
                        Err(mpsc::RecvTimeoutError::Timeout) => None,
                        Err(mpsc::RecvTimeoutError::Disconnected) => break,
                    }
                }
                _ => match rx.recv() {
                    Ok(c) => Some(c),
                    Err(_) => break,
                },
            };
            batch.extend(first);
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(c) => batch.push(c),
                    Err(_) => break,
                }
            }
            let closing = batch.iter().any(|c| matches!(c, Command::Close));
            self.commit(&mut batch);
            if closing {
                break;
            }
            if let (FsyncMode::Interval(every), Some(since)) = (self.config.fsync, self.dirty_since) {
                if since.elapsed() >= every {
                    self.sync();
                }
            }
        }
        // Every handle is gone or the spool was closed: make what was written durable whatever the
        // mode, for the next start.
        self.sync();
        // The spare's helper touches the directory: done before the lock is let go.
        if let Some(helper) = self.spare.take() {
            let _ = helper.join();
        }
        if let Err(e) = self.ack_file.sync_data() {
            tracing::warn!(error = %e, "spool: could not sync the ack file; some events may be published again after a restart");
        }
    }

    fn commit(&mut self, batch: &mut Vec<Command>) {
        failpoint!("spool::commit");
        // Taken off the queued bytes once every append of the batch is answered.
        let queued: u64 = batch
            .iter()
            .map(|c| if let Command::Append { payload, .. } = c { super::queued_size(payload) } else { 0 })
            .sum();
        // Acknowledgements first: the space they free is there for the appends of the same batch.
        let ack =
            batch.iter().filter_map(|c| if let Command::Ack(seq) = c { Some(*seq) } else { None }).max();
        if let Some(seq) = ack {
            self.acknowledge(seq);
        }
        let mut buf = Vec::new();
        let mut replies = Vec::new();
        let first_seq = self.next_seq;
        for cmd in batch.drain(..) {
            match cmd {
                Command::Ack(_) => {}
                Command::Close => self.state = State::Closed,
                Command::Append { payload, reply } => {
                    match &self.state {
                        State::Open => {}
                        State::Closed => {
                            let _ = reply.send(Err(SpoolError::Closed));
                            continue;
                        }
                        State::Failed(reason) => {
                            let _ = reply.send(Err(SpoolError::Failed(reason.clone())));
                            continue;
                        }
                    }
                    let size = (HEADER_LEN + payload.len()) as u64;
                    if self.disk_bytes + buf.len() as u64 + size > self.config.max_bytes {
                        let bytes = self.disk_bytes + buf.len() as u64;
                        let _ = reply.send(Err(SpoolError::Full { bytes, max_bytes: self.config.max_bytes }));
                        continue;
                    }
                    record::encode(self.next_seq, &payload, &mut buf);
                    replies.push((self.next_seq, reply));
                    self.next_seq += 1;
                }
            }
        }
        if !buf.is_empty() {
            match self.write(&buf, first_seq) {
                Ok(fsync) => {
                    if let Some(o) = &self.config.observer {
                        o.committed(replies.len(), fsync);
                    }
                    let seg = self.segments.back().expect("written to the active segment");
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_millis());
                    self.stats.committed_at(self.next_seq - 1, now as i64);
                    self.burnt.committed_past();
                    self.committed.send_replace(Committed {
                        seq: self.next_seq - 1,
                        segment: seg.first_seq,
                        offset: seg.bytes,
                    });
                    // The gauges count the batch before anyone hears it is durable.
                    self.publish_stats();
                    for (seq, reply) in replies {
                        let _ = reply.send(Ok(seq));
                    }
                }
                Err(failure) => {
                    // These numbers are burnt: the next batch gets new ones, so nothing that read or
                    // buffered the failed bytes can mistake them for the next batch's records.
                    self.burnt.burn(first_seq, self.next_seq - 1);
                    let events = replies.len();
                    let answer = |failure: &WriteFailure| match failure {
                        WriteFailure::DiskFull(e) => {
                            SpoolError::DiskFull(io::Error::new(e.kind(), e.to_string()))
                        }
                        WriteFailure::Transient(e) => SpoolError::Io(io::Error::new(e.kind(), e.to_string())),
                        WriteFailure::Sticky(reason) => SpoolError::Failed(reason.clone()),
                    };
                    match &failure {
                        WriteFailure::DiskFull(e) => {
                            tracing::warn!(error = %e, events, "spool: disk full; answering 503 until space returns")
                        }
                        WriteFailure::Transient(e) => {
                            tracing::error!(error = %e, events, "spool: append failed; answering 500")
                        }
                        WriteFailure::Sticky(reason) => {
                            tracing::error!(reason, events, "spool: the spool's files are in doubt; refusing every event from now on (restart the bridge)");
                            self.stats.fail(reason.clone());
                            self.state = State::Failed(reason.clone());
                        }
                    }
                    for (_, reply) in replies {
                        let _ = reply.send(Err(answer(&failure)));
                    }
                }
            }
        }
        self.stats.queued_bytes.fetch_sub(queued, Ordering::Relaxed);
        self.publish_stats();
    }

    /// Writes one batch to the active segment and syncs it as the mode says; returns how long the
    /// fsync took, if one ran. On failure nothing of the batch is left for a reader, now or after a
    /// restart (see [`take_back`](Self::take_back)).
    fn write(&mut self, buf: &[u8], first_seq: u64) -> Result<Option<Duration>, WriteFailure> {
        if self.active.is_none() || self.segments.back().is_some_and(|s| s.bytes >= self.segment_bytes) {
            self.roll(first_seq)?;
        }
        let file = self.active.as_mut().expect("rolled above");
        let end = self.segments.back().expect("active segment is listed").bytes;
        let written =
            write_all(file, buf, end).map_err(WriteFailure::of).and_then(|()| match self.config.fsync {
                FsyncMode::Always => {
                    let started = Instant::now();
                    // After a failed fsync the kernel may have dropped the dirty pages: nothing written
                    // since the last good sync can be trusted to be durable.
                    sync_data(file).map_err(|e| WriteFailure::Sticky(format!("fsync failed: {e}")))?;
                    Ok(Some(started.elapsed()))
                }
                FsyncMode::Interval(_) => {
                    self.dirty_since.get_or_insert_with(Instant::now);
                    Ok(None)
                }
                FsyncMode::Never => Ok(None),
            });
        match written {
            Ok(fsync) => {
                let seg = self.segments.back_mut().expect("active segment is listed");
                seg.bytes += buf.len() as u64;
                seg.last_seq = self.next_seq - 1;
                self.disk_bytes += buf.len() as u64;
                Ok(fsync)
            }
            Err(failure) => Err(self.take_back(end, first_seq, failure)),
        }
    }

    /// Takes a refused batch's bytes (all of them, after a failed fsync; what reached the file, after
    /// a failed write) back off the active segment, which ends at `end` without them: cut there and
    /// synced, so that no restart reads them as records (after `kill -9` an uncut file would hand
    /// them out, and after a power cut an unsynced cut could be undone). When the cut or its sync
    /// fails, the batch's numbers are recorded as refused in the ack file, recovery drops them, and
    /// the spool fails for good.
    fn take_back(&mut self, end: u64, first_seq: u64, failure: WriteFailure) -> WriteFailure {
        let file = self.active.as_ref().expect("written to the active segment");
        let Err(e) = cut(file, end).and_then(|()| sync_data(file)) else { return failure };
        let what = match &failure {
            WriteFailure::DiskFull(e) | WriteFailure::Transient(e) => format!("write failed: {e}"),
            WriteFailure::Sticky(reason) => reason.clone(),
        };
        let (from, to) = (first_seq, self.next_seq - 1);
        self.refused = Some((from, to));
        let recorded = self.record_ack_state().and_then(|()| sync_data(&self.ack_file));
        match recorded {
            Ok(()) => tracing::error!(error = %e, from_seq = from, to_seq = to,
                "spool: a refused batch could not be cut off its segment; its numbers are recorded as refused and the next start drops them"),
            Err(r) => tracing::error!(error = %e, record_error = %r, from_seq = from, to_seq = to,
                "spool: a refused batch could not be cut off its segment nor durably recorded as refused; a restart may publish it"),
        }
        WriteFailure::Sticky(format!("{what}; the refused batch could not be cut off the segment ({e})"))
    }

    fn roll(&mut self, first_seq: u64) -> Result<(), WriteFailure> {
        if let Some(old) = self.active.take() {
            if self.config.fsync != FsyncMode::Never {
                sync_data(&old).map_err(|e| WriteFailure::Sticky(format!("fsync failed: {e}")))?;
            }
        }
        let path = segment_path(&self.config.dir, first_seq);
        let file = open_segment(&self.config.dir, &path, self.segment_bytes).map_err(WriteFailure::of)?;
        self.prepare_spare();
        if self.config.fsync == FsyncMode::Always {
            // The new file's directory entry must be durable too.
            sync_dir(&self.config.dir)
                .map_err(|e| WriteFailure::Sticky(format!("fsync of the spool directory failed: {e}")))?;
        }
        self.segments.push_back(Segment { first_seq, last_seq: first_seq - 1, bytes: 0, path });
        self.active = Some(file);
        Ok(())
    }

    /// Starts zero-filling the next segment's file on a helper thread, if `fsync=always`, no spare is
    /// ready or under way, and the filesystem has room for it (see [`SPARE_ROOM`]). A roll never waits
    /// for it: without a spare, it creates an empty file.
    fn prepare_spare(&mut self) {
        if self.config.fsync != FsyncMode::Always
            || self.spare.as_ref().is_some_and(|h| !h.is_finished())
            || self.config.dir.join(SPARE_FILE).exists()
        {
            return;
        }
        let room = rustix::fs::statvfs(&self.config.dir).map(|s| s.f_bavail.saturating_mul(s.f_frsize));
        if !room.is_ok_and(|r| r >= SPARE_ROOM * self.segment_bytes) {
            return;
        }
        let (dir, bytes) = (self.config.dir.clone(), self.segment_bytes);
        let started = std::thread::Builder::new().name("spool-spare".into()).spawn(move || {
            let (tmp, ready) = (dir.join(SPARE_TMP), dir.join(SPARE_FILE));
            if let Err(e) = zero_filled(&tmp, bytes).and_then(|()| fs::rename(&tmp, &ready)) {
                tracing::debug!(error = %e, "spool: could not prepare a spare segment");
                let _ = fs::remove_file(&tmp);
            }
        });
        self.spare = started.ok();
    }

    fn sync(&mut self) {
        if let Some(f) = &self.active {
            let started = Instant::now();
            if let Err(e) = sync_data(f) {
                let reason = format!("fsync failed: {e}");
                tracing::error!(%reason, "spool: the spool's files are in doubt; refusing every event from now on (restart the bridge)");
                self.stats.fail(reason.clone());
                self.state = State::Failed(reason);
            } else if let Some(o) = &self.config.observer {
                o.committed(0, Some(started.elapsed()));
            }
        }
        self.dirty_since = None;
    }

    /// Kafka has everything up to `seq`: record it, and delete the segments nothing unacknowledged
    /// lives in once the record of it is durable (so a power cut never leaves the deletions without
    /// the acknowledgement that allowed them, which would publish their neighbours again).
    fn acknowledge(&mut self, seq: u64) {
        if seq <= self.acked {
            return;
        }
        self.acked = seq.min(self.next_seq - 1);
        self.stats.forget_committed_upto(self.acked);
        self.burnt.acknowledged(self.acked, self.committed.borrow().seq);
        if let Err(e) = self.record_ack_state() {
            // Segments are deleted only once the acknowledgement that frees them is on record.
            tracing::warn!(error = %e, "spool: could not record acknowledgements; they will be published again after a restart");
            return;
        }
        let freeable = self.segments.iter().take_while(|s| s.last_seq <= self.acked && s.bytes > 0).count();
        if freeable == 0 {
            return;
        }
        if let Err(e) = sync_data(&self.ack_file) {
            tracing::warn!(error = %e, "spool: could not sync the ack file; keeping acknowledged segments for now");
            return;
        }
        let mut deleted = 0;
        for _ in 0..freeable {
            let seg = self.segments.front().expect("counted above");
            if let Err(e) = remove_segment(&seg.path) {
                // It stays listed, its bytes counted (they are still on the disk), and the next
                // acknowledgement tries again; failing that, the next start removes it.
                tracing::warn!(segment = %seg.path.display(), error = %e, "spool: could not delete an acknowledged segment; trying again at the next acknowledgement");
                break;
            }
            if self.segments.len() == 1 && self.active.is_some() {
                self.active = None;
            }
            let seg = self.segments.pop_front().expect("counted above");
            self.disk_bytes -= seg.bytes;
            deleted += 1;
        }
        if deleted > 0 && self.config.fsync != FsyncMode::Never {
            if let Err(e) = sync_dir(&self.config.dir) {
                tracing::warn!(error = %e, "spool: could not sync the spool directory after deleting segments");
            }
        }
    }

    fn ack_state(&self) -> AckState {
        AckState { acked: self.acked, refused: self.refused }
    }

    /// Writes the acknowledged number (and any refused range) to the slot not written last; only a
    /// write that succeeded makes that slot the one written last, so a failed one is retried there
    /// and the other slot keeps the last state on record. Not synced: the caller syncs.
    fn record_ack_state(&mut self) -> io::Result<()> {
        let slot = self.ack_slot ^ 1;
        write_ack(&self.ack_file, self.ack_state(), ACK_SLOTS[slot])?;
        self.ack_slot = slot;
        Ok(())
    }

    fn publish_stats(&self) {
        let committed = self.committed.borrow().seq;
        let pending = committed.saturating_sub(self.acked).saturating_sub(self.burnt.pending());
        self.stats.pending_events.store(pending, Ordering::Relaxed);
        self.stats.bytes.store(self.disk_bytes, Ordering::Relaxed);
    }
}

/// The sequence numbers of batches whose write failed, above the acknowledged one, as ranges.
///
/// Consecutive failed batches take consecutive numbers and merge into one range, so a disk full for
/// hours costs one entry; a new range starts only after a batch committed, so there are never more
/// ranges than records pending, plus one. Counts are kept as the ranges change, so the pending count
/// after each group commit costs O(1).
#[derive(Debug, Default)]
struct Burnt {
    /// Inclusive, ascending, not adjacent.
    ranges: VecDeque<(u64, u64)>,
    /// The numbers the ranges hold.
    total: u64,
    /// Those of them above the committed sequence number: burnt since the last batch committed.
    uncommitted: u64,
}

impl Burnt {
    /// A batch with the numbers `from..=to` failed; they are above every number given before.
    fn burn(&mut self, from: u64, to: u64) {
        match self.ranges.back_mut() {
            Some(last) if last.1 + 1 == from => last.1 = to,
            _ => self.ranges.push_back((from, to)),
        }
        self.total += to - from + 1;
        self.uncommitted += to - from + 1;
    }

    /// A batch committed, above every burnt number.
    fn committed_past(&mut self) {
        self.uncommitted = 0;
    }

    /// Kafka has everything up to `acked`; `committed` is the committed sequence number.
    fn acknowledged(&mut self, acked: u64, committed: u64) {
        while let Some(first) = self.ranges.front_mut() {
            if first.0 > acked {
                break;
            }
            let to = first.1.min(acked);
            let gone = to - first.0 + 1;
            let gone_uncommitted = (to + 1).saturating_sub(first.0.max(committed + 1));
            self.total -= gone;
            self.uncommitted -= gone_uncommitted;
            if to == first.1 {
                self.ranges.pop_front();
            } else {
                first.0 = to + 1;
            }
        }
    }

    /// Burnt numbers between the acknowledged and the committed sequence numbers: numbers that no
    /// record holds.
    fn pending(&self) -> u64 {
        self.total - self.uncommitted
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.ranges.len()
    }
}

/// Creates `path` holding `bytes` zero bytes, written (not a sparse hole: the blocks must be
/// allocated and written for a later overwrite to need no metadata) and synced.
fn zero_filled(path: &Path, bytes: u64) -> io::Result<()> {
    // A static buffer: the helper thread allocates nothing (no malloc arena of its own).
    static ZEROS: [u8; 256 << 10] = [0; 256 << 10];
    let file = OpenOptions::new().create(true).truncate(true).write(true).open(path)?;
    let mut at = 0;
    while at < bytes {
        let n = (bytes - at).min(ZEROS.len() as u64);
        file.write_all_at(&ZEROS[..n as usize], at)?;
        at += n;
    }
    file.sync_data()
}

// The file operations below are where the failpoints sit, named `spool::<operation>`; a failpoint's
// argument names the error (see `failpoints::injected`).

/// Writes `buf` at `at`, the end of the segment's records (a zero-filled segment's file is longer).
fn write_all(file: &mut File, buf: &[u8], at: u64) -> io::Result<()> {
    failpoint!("spool::write", |arg| {
        // Half the batch reaches the file before the error, as a real short write would leave it.
        file.write_all_at(&buf[..buf.len() / 2], at)?;
        Err(super::injected(arg))
    });
    file.write_all_at(buf, at)
}

fn sync_data(file: &File) -> io::Result<()> {
    failpoint!("spool::fsync", |arg| Err(super::injected(arg)));
    file.sync_data()
}

/// The new segment's file: the spare, when one of the right size is ready; else a new empty file.
/// The spare is opened before it is renamed (the descriptor follows the file), and renamed without
/// replacing anything, so a failure leaves no stray segment file behind.
fn open_segment(dir: &Path, path: &Path, segment_bytes: u64) -> io::Result<File> {
    failpoint!("spool::roll", |arg| Err(super::injected(arg)));
    let spare_path = dir.join(SPARE_FILE);
    let spare = OpenOptions::new().write(true).open(&spare_path).and_then(|f| {
        if f.metadata()?.len() == segment_bytes {
            Ok(f)
        } else {
            // Left by a run with another BRIDGE_SPOOL_MAX_BYTES: its zeros would outlast the roll.
            fs::remove_file(&spare_path)?;
            Err(io::ErrorKind::InvalidData.into())
        }
    });
    if let Ok(file) = spare {
        let cwd = rustix::fs::CWD;
        match rustix::fs::renameat_with(cwd, &spare_path, cwd, path, rustix::fs::RenameFlags::NOREPLACE) {
            Ok(()) => return Ok(file),
            Err(e) => tracing::debug!(error = %e, "spool: could not use the spare segment; creating one"),
        }
    }
    OpenOptions::new().create_new(true).write(true).open(path)
}

/// Cuts a segment's file at `len`: takes back a refused batch's bytes.
fn cut(file: &File, len: u64) -> io::Result<()> {
    failpoint!("spool::cut", |arg| Err(super::injected(arg)));
    file.set_len(len)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn write_ack(file: &File, state: AckState, at: u64) -> io::Result<()> {
    failpoint!("spool::ack_write", |arg| {
        // A torn slot: half of it written.
        file.write_all_at(&state.to_bytes()[..ACK_SLOT_LEN / 2], at)?;
        Err(super::injected(arg))
    });
    file.write_all_at(&state.to_bytes(), at)
}

fn remove_segment(path: &Path) -> io::Result<()> {
    failpoint!("spool::unlink", |arg| Err(super::injected(arg)));
    fs::remove_file(path)
}

#[cfg(test)]
mod tests {
    use tokio::sync::oneshot;

    use super::super::{Faults, MAX_QUEUED_BYTES};
    use super::*;

    /// A writer on `dir`, driven by the test's own thread (no writer thread): each [`append`] is one
    /// group commit.
    fn writer(dir: &Path, fsync: FsyncMode) -> Writer {
        writer_of(dir, fsync, 1 << 30)
    }

    /// The same with the cap `max_bytes` (segments are a sixteenth of it, at least 4 KiB).
    fn writer_of(dir: &Path, fsync: FsyncMode, max_bytes: u64) -> Writer {
        let stats = Arc::new(SpoolStats::default());
        let config = SpoolConfig {
            dir: dir.to_owned(),
            fsync,
            max_bytes,
            max_queued_bytes: MAX_QUEUED_BYTES,
            observer: None,
        };
        let recovered = recover(dir, &stats).unwrap();
        let (committed, _) = watch::channel(recovered.committed);
        Writer::new(config, recovered, committed, stats).unwrap()
    }

    /// One group commit of `payloads`; what each append was answered.
    fn append(w: &mut Writer, payloads: &[&[u8]]) -> Vec<Result<u64, SpoolError>> {
        let (mut batch, mut answers) = (Vec::new(), Vec::new());
        for p in payloads {
            let (reply, answer) = oneshot::channel();
            batch.push(Command::Append { payload: p.to_vec(), reply });
            answers.push(answer);
        }
        w.commit(&mut batch);
        answers.into_iter().map(|mut a| a.try_recv().expect("answered in the commit")).collect()
    }

    fn pending(w: &Writer) -> u64 {
        w.stats.pending_events.load(Ordering::Relaxed)
    }

    /// The sequence numbers a spool opened on `dir` (as at the next start) hands the forwarder.
    fn delivered_after_reopen(dir: &Path) -> Vec<u64> {
        let (spool, thread) = super::super::Spool::open(SpoolConfig {
            dir: dir.to_owned(),
            fsync: FsyncMode::Never,
            max_bytes: 1 << 30,
            max_queued_bytes: MAX_QUEUED_BYTES,
            observer: None,
        })
        .unwrap();
        let seqs = spool.reader().read(*spool.committed().borrow(), 100_000, 1 << 30).unwrap();
        spool.close();
        drop(spool);
        thread.join();
        seqs.iter().map(|r| r.seq).collect()
    }

    #[test]
    fn after_failed_ack_writes_the_last_good_position_is_still_read_on_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = writer_of(dir.path(), FsyncMode::Always, 64 << 10);
        for _ in 0..200 {
            assert!(append(&mut w, &[&[7u8; 100]])[0].is_ok());
        }
        w.acknowledge(10);
        // Two writes of the ack file in a row fail half-way, each tearing the slot it wrote.
        let faults = Faults::set(&[("spool::ack_write", "2*return(eio)")]);
        w.acknowledge(100);
        w.acknowledge(150);
        drop(faults);
        let segments = list_segments(dir.path()).unwrap();
        drop(w); // A crash: nothing more is written.

        assert!(segments.len() > 3, "{segments:?}");
        assert_eq!(
            list_segments(dir.path()).unwrap(),
            segments,
            "nothing is deleted on an ack not on record"
        );
        assert_eq!(delivered_after_reopen(dir.path()), (11..=200).collect::<Vec<_>>());

        // Written but not synced: still nothing is deleted.
        let mut w = writer_of(dir.path(), FsyncMode::Always, 64 << 10);
        let segments = list_segments(dir.path()).unwrap();
        let faults = Faults::set(&[("spool::fsync", "return(eio)")]);
        w.acknowledge(150);
        drop(faults);
        assert_eq!(
            list_segments(dir.path()).unwrap(),
            segments,
            "nothing is deleted before the ack is synced"
        );
        w.acknowledge(151);
        assert_eq!(list_segments(dir.path()).unwrap()[0].0, segments[4].0, "{segments:?}");
    }

    #[test]
    fn after_a_failed_delete_nothing_acknowledged_is_lost_nor_delivered_again_and_the_delete_is_retried() {
        let dir = tempfile::tempdir().unwrap();
        // Not `always`: its zero-filled spare segments are longer than their records.
        let mut w = writer_of(dir.path(), FsyncMode::Interval(Duration::from_secs(3600)), 64 << 10);
        for _ in 0..200 {
            assert!(append(&mut w, &[&[7u8; 100]])[0].is_ok());
        }
        let segments = list_segments(dir.path()).unwrap();
        assert!(segments.len() > 4, "{segments:?}");
        let on_disk = |dir: &Path| {
            list_segments(dir).unwrap().iter().map(|(_, p)| fs::metadata(p).unwrap().len()).sum::<u64>()
        };
        // Everything in the first three segments is in Kafka, and the deletes fail.
        let acked = segments[3].0 - 1;
        let faults = Faults::set(&[("spool::unlink", "return(eio)")]);
        w.acknowledge(acked);
        drop(faults);
        w.publish_stats();
        assert_eq!(list_segments(dir.path()).unwrap(), segments, "the deletes failed");
        assert_eq!(w.stats.bytes.load(Ordering::Relaxed), on_disk(dir.path()), "their bytes still count");
        assert_eq!(pending(&w), 200 - acked);

        // The next acknowledgement deletes them.
        w.acknowledge(acked + 1);
        w.publish_stats();
        assert_eq!(list_segments(dir.path()).unwrap(), segments[3..]);
        assert_eq!(w.stats.bytes.load(Ordering::Relaxed), on_disk(dir.path()));

        // A crash after failed deletes: the next start delivers what follows the position, once.
        let faults = Faults::set(&[("spool::unlink", "return(eio)")]);
        let acked = segments[4].0 + 3;
        w.acknowledge(acked);
        drop(faults);
        drop(w);
        assert_eq!(delivered_after_reopen(dir.path()), (acked + 1..=200).collect::<Vec<_>>());
        assert_eq!(
            list_segments(dir.path()).unwrap()[0].0,
            segments[4].0,
            "the acknowledged segment is gone"
        );
    }

    #[test]
    fn a_batch_refused_for_a_failed_fsync_is_not_read_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = writer(dir.path(), FsyncMode::Always);
        for _ in 0..5 {
            assert!(append(&mut w, &[b"accepted"])[0].is_ok());
        }
        let faults = Faults::set(&[("spool::fsync", "1*return(eio)")]);
        let answers = append(&mut w, &[b"refused", b"refused too"]);
        drop(faults);
        assert!(answers.iter().all(|a| matches!(a, Err(SpoolError::Failed(_)))), "{answers:?}");
        assert!(matches!(append(&mut w, &[b"after"])[0], Err(SpoolError::Failed(_))), "failed for good");
        drop(w); // kill -9

        assert_eq!(delivered_after_reopen(dir.path()), (1..=5).collect::<Vec<_>>());
    }

    #[test]
    fn a_refused_batch_that_cannot_be_cut_off_is_recorded_and_dropped_at_the_next_start() {
        for (faults, refusal) in [
            // Disk full half-way through the batch (its first record whole in the file), and the cut
            // fails.
            ("spool::write=1*return(enospc);spool::cut=return(eio)", "write"),
            // The fsync fails, and so does every one after it: the cut is made but cannot be synced.
            ("spool::fsync=return(eio)", "fsync"),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let mut w = writer(dir.path(), FsyncMode::Always);
            for _ in 0..5 {
                assert!(append(&mut w, &[b"accepted"])[0].is_ok());
            }
            let points: Vec<(&str, &str)> = faults.split(';').map(|p| p.split_once('=').unwrap()).collect();
            let set = Faults::set(&points);
            let answers = append(&mut w, &[b"refused", b"refused"]);
            drop(set);
            assert!(
                answers.iter().all(|a| matches!(a, Err(SpoolError::Failed(_)))),
                "{refusal}: {answers:?}"
            );
            assert_eq!(read_ack(dir.path()).unwrap().refused, Some((6, 7)), "{refusal}");
            drop(w); // kill -9

            assert_eq!(delivered_after_reopen(dir.path()), (1..=5).collect::<Vec<_>>(), "{refusal}");
            // Numbering goes on above the refused numbers, which stay refused.
            let mut w = writer(dir.path(), FsyncMode::Always);
            assert_eq!(append(&mut w, &[b"next"])[0].as_ref().unwrap(), &8, "{refusal}");
            drop(w);
            assert_eq!(delivered_after_reopen(dir.path()), vec![1, 2, 3, 4, 5, 8], "{refusal}");
        }
    }

    #[test]
    fn many_failed_batches_in_a_row_keep_one_burnt_range_and_the_pending_count_exact() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = writer(dir.path(), FsyncMode::Never);
        for _ in 0..10 {
            assert!(append(&mut w, &[b"accepted"])[0].is_ok());
        }
        // The disk is full for a long while: every batch fails.
        let faults = Faults::set(&[("spool::write", "return(enospc)")]);
        for _ in 0..10_000 {
            let answers = append(&mut w, &[b"refused", b"refused too"]);
            assert!(answers.iter().all(|a| matches!(a, Err(SpoolError::DiskFull(_)))), "{answers:?}");
        }
        drop(faults);
        assert_eq!(w.burnt.len(), 1, "consecutive failures are one range");
        assert_eq!(pending(&w), 10);

        // Space returns: numbering goes on after the burnt ones, and only records are pending.
        assert_eq!(append(&mut w, &[b"accepted"])[0].as_ref().unwrap(), &20_011);
        assert_eq!(pending(&w), 11);
        let faults = Faults::set(&[("spool::write", "return(enospc)")]);
        for _ in 0..5 {
            assert!(append(&mut w, &[b"refused"])[0].is_err());
        }
        drop(faults);
        assert_eq!(w.burnt.len(), 2);
        assert_eq!(pending(&w), 11, "numbers burnt above the last record are not pending");
        w.acknowledge(5);
        w.publish_stats();
        assert_eq!(pending(&w), 6);
        w.acknowledge(20_011);
        w.publish_stats();
        assert_eq!((pending(&w), w.burnt.len()), (0, 1), "only the range above the last record is left");
        assert_eq!(append(&mut w, &[b"accepted"])[0].as_ref().unwrap(), &20_017);
        assert_eq!(pending(&w), 1);
        w.acknowledge(20_017);
        w.publish_stats();
        assert_eq!((pending(&w), w.burnt.len()), (0, 0));
    }

    // `scan_segment` on bytes alone: each case it tells apart, with the exact offsets and numbers.

    /// Bytes of a record with a 100-byte payload.
    const REC: usize = HEADER_LEN + 100;

    /// A segment's bytes: records numbered `seqs`, each with a payload of `payload` bytes.
    fn segment_of(seqs: impl IntoIterator<Item = u64>, payload: usize) -> Vec<u8> {
        let mut buf = Vec::new();
        for seq in seqs {
            record::encode(seq, &vec![b'r'; payload], &mut buf);
        }
        buf
    }

    /// The byte ranges of the records at these positions, each `size` bytes.
    fn nth(positions: impl IntoIterator<Item = usize>, size: usize) -> Vec<Range<usize>> {
        positions.into_iter().map(|i| i * size..(i + 1) * size).collect()
    }

    fn newest(first_seq: u64, seen_upto: u64) -> SegmentPlace {
        SegmentPlace { first_seq, before_seq: u64::MAX, newest: true, seen_upto }
    }

    fn older(first_seq: u64, before_seq: u64, seen_upto: u64) -> SegmentPlace {
        SegmentPlace { first_seq, before_seq, newest: false, seen_upto }
    }

    /// As [`read_segment`] leaves a block the disk cannot read: filled with 0xFF, its range returned.
    fn cannot_read(buf: &mut [u8], block: Range<usize>) -> Vec<Range<usize>> {
        buf[block.clone()].fill(0xFF);
        vec![block]
    }

    fn stretch(offset: usize, bytes: usize, lost_from: u64, lost_to: u64) -> DamagedStretch {
        DamagedStretch { offset, bytes, lost_from, lost_to }
    }

    #[test]
    fn a_clean_segment_is_read_to_its_last_byte() {
        let buf = segment_of(1..=5, 100);
        let whole = SegmentScan {
            end: ScanEnd::Whole,
            len: 5 * REC,
            records: nth(0..5, REC),
            last_seq: 5,
            seen_upto: 5,
            damaged: vec![],
        };
        assert_eq!(scan_segment(&buf, &[], newest(1, 0), None), whole);
        assert_eq!(scan_segment(&buf, &[], older(1, 6, 0), None), whole, "an older segment alike");
        // After earlier segments, and with numbers burnt between records: not damage.
        let buf = segment_of([11, 12, 15, 16], 100);
        assert_eq!(
            scan_segment(&buf, &[], newest(11, 10), None),
            SegmentScan {
                end: ScanEnd::Whole,
                len: 4 * REC,
                records: nth(0..4, REC),
                last_seq: 16,
                seen_upto: 16,
                damaged: vec![],
            }
        );
    }

    #[test]
    fn an_empty_segment_has_no_records_and_passes_the_numbering_on() {
        assert_eq!(
            scan_segment(&[], &[], newest(8, 7), None),
            SegmentScan {
                end: ScanEnd::Whole,
                len: 0,
                records: vec![],
                last_seq: 0,
                seen_upto: 7,
                damaged: vec![]
            }
        );
    }

    #[test]
    fn a_torn_last_record_of_the_newest_segment_ends_its_records_where_it_starts() {
        let whole = segment_of(1..=5, 100);
        let sixth = segment_of([6], 100);
        for torn_at in [1, 7, HEADER_LEN, HEADER_LEN + 50, REC - 1] {
            let mut buf = whole.clone();
            buf.extend_from_slice(&sixth[..torn_at]);
            assert_eq!(
                scan_segment(&buf, &[], newest(1, 0), None),
                SegmentScan {
                    end: ScanEnd::Torn(5 * REC),
                    len: 5 * REC,
                    records: nth(0..5, REC),
                    last_seq: 5,
                    seen_upto: 5,
                    damaged: vec![],
                },
                "torn at {torn_at}"
            );
        }
    }

    #[test]
    fn a_flipped_byte_costs_its_record_only_and_the_records_after_it_are_kept() {
        // Record 4's length, checksum, sequence number and payload in turn.
        for flipped in [0, 5, 8, HEADER_LEN + 10] {
            let mut buf = segment_of(1..=10, 100);
            buf[3 * REC + flipped] ^= 0x08;
            let expected = SegmentScan {
                end: ScanEnd::Whole,
                len: 10 * REC,
                records: nth((0..10).filter(|i| *i != 3), REC),
                last_seq: 10,
                seen_upto: 10,
                damaged: vec![stretch(3 * REC, REC, 4, 4)],
            };
            assert_eq!(scan_segment(&buf, &[], newest(1, 0), None), expected, "byte {flipped}");
            assert_eq!(scan_segment(&buf, &[], older(1, 11, 0), None), expected, "byte {flipped}, older");
        }
    }

    #[test]
    fn the_zero_filled_rest_of_the_newest_segment_ends_its_records() {
        let mut buf = segment_of(1..=5, 100);
        buf.resize(16 << 10, 0);
        assert_eq!(
            scan_segment(&buf, &[], newest(1, 0), None),
            SegmentScan {
                end: ScanEnd::ZeroTail(5 * REC),
                len: 5 * REC,
                records: nth(0..5, REC),
                last_seq: 5,
                seen_upto: 5,
                damaged: vec![],
            }
        );
        // A spare no record reached: all zeros.
        assert_eq!(
            scan_segment(&[0; 16 << 10], &[], newest(6, 5), None),
            SegmentScan {
                end: ScanEnd::ZeroTail(0),
                len: 0,
                records: vec![],
                last_seq: 0,
                seen_upto: 5,
                damaged: vec![],
            }
        );
    }

    #[test]
    fn zeros_in_an_older_segment_end_its_records_only_when_the_next_segment_continues_the_numbering() {
        let mut buf = segment_of(1..=5, 100);
        buf.resize(5 * REC + 1000, 0);
        assert_eq!(
            scan_segment(&buf, &[], older(1, 6, 0), None),
            SegmentScan {
                end: ScanEnd::ZeroTail(5 * REC),
                len: 5 * REC,
                records: nth(0..5, REC),
                last_seq: 5,
                seen_upto: 5,
                damaged: vec![],
            }
        );
        // The next segment starts at 9: the zeros hide records 6 to 8, lost; the file is kept whole.
        assert_eq!(
            scan_segment(&buf, &[], older(1, 9, 0), None),
            SegmentScan {
                end: ScanEnd::DamagedTail(5 * REC),
                len: 5 * REC + 1000,
                records: nth(0..5, REC),
                last_seq: 5,
                seen_upto: 8,
                damaged: vec![stretch(5 * REC, 1000, 6, 8)],
            }
        );
    }

    #[test]
    fn a_torn_tail_of_an_older_segment_is_kept_and_reported_as_damage() {
        let mut buf = segment_of(1..=5, 100);
        buf.extend_from_slice(&segment_of([6], 100)[..50]);
        assert_eq!(
            scan_segment(&buf, &[], older(1, 7, 0), None),
            SegmentScan {
                end: ScanEnd::DamagedTail(5 * REC),
                len: 5 * REC + 50,
                records: nth(0..5, REC),
                last_seq: 5,
                seen_upto: 6,
                damaged: vec![stretch(5 * REC, 50, 6, 6)],
            }
        );
        // The next segment continues right after record 5: the stretch is reported, no number lost.
        let scan = scan_segment(&buf, &[], older(1, 6, 0), None);
        assert_eq!((scan.end, scan.seen_upto), (ScanEnd::DamagedTail(5 * REC), 5));
        assert_eq!(scan.damaged, vec![stretch(5 * REC, 50, 6, 5)]);
    }

    #[test]
    fn a_record_of_the_refused_batch_ends_the_segment_s_records() {
        let buf = segment_of(1..=7, 100);
        assert_eq!(
            scan_segment(&buf, &[], newest(1, 0), Some((6, 7))),
            SegmentScan {
                end: ScanEnd::Refused(5 * REC),
                len: 5 * REC,
                records: nth(0..5, REC),
                last_seq: 5,
                seen_upto: 5,
                damaged: vec![],
            }
        );
        // A refused range no record holds changes nothing.
        assert_eq!(scan_segment(&buf, &[], newest(1, 0), Some((8, 9))).end, ScanEnd::Whole);
    }

    #[test]
    fn a_record_that_does_not_continue_the_numbering_is_skipped() {
        // A stale copy of record 3 between 11 and 12, in a segment starting at 10.
        let buf = segment_of([10, 11, 3, 12], 100);
        assert_eq!(
            scan_segment(&buf, &[], newest(10, 9), None),
            SegmentScan {
                end: ScanEnd::Whole,
                len: 4 * REC,
                records: nth([0, 1, 3], REC),
                last_seq: 12,
                seen_upto: 12,
                damaged: vec![stretch(2 * REC, REC, 12, 11)],
            }
        );
        // Records numbered from the next segment's first on are not this segment's: its records end
        // before them.
        let buf = segment_of(1..=5, 100);
        assert_eq!(
            scan_segment(&buf, &[], older(1, 4, 0), None),
            SegmentScan {
                end: ScanEnd::DamagedTail(3 * REC),
                len: 5 * REC,
                records: nth(0..3, REC),
                last_seq: 3,
                seen_upto: 3,
                damaged: vec![stretch(3 * REC, 2 * REC, 4, 3)],
            }
        );
    }

    #[test]
    fn a_block_the_disk_cannot_read_costs_the_records_across_it_and_the_scan_resumes_after_it() {
        // 316-byte records; the block 4096..8192 could not be read: records 13 (3792..4108) to 26
        // (7900..8216) touch it.
        let size = HEADER_LEN + 300;
        let mut buf = segment_of(1..=40, 300);
        let unreadable = cannot_read(&mut buf, 4096..8192);
        assert_eq!(
            scan_segment(&buf, &unreadable, newest(1, 0), None),
            SegmentScan {
                end: ScanEnd::Whole,
                len: 40 * size,
                records: nth((0..12).chain(26..40), size),
                last_seq: 40,
                seen_upto: 40,
                damaged: vec![stretch(12 * size, 14 * size, 13, 26)],
            }
        );
    }

    #[test]
    fn blocks_the_disk_cannot_read_at_the_end_of_the_newest_segment_cost_a_record_and_cut_nothing() {
        let size = HEADER_LEN + 300;
        let mut buf = segment_of(1..=20, 300);
        let unreadable = cannot_read(&mut buf, 4096..20 * size);
        assert_eq!(
            scan_segment(&buf, &unreadable, newest(1, 0), None),
            SegmentScan {
                end: ScanEnd::UnreadableTail(12 * size),
                len: 12 * size,
                records: nth(0..12, size),
                last_seq: 12,
                seen_upto: 12,
                damaged: vec![stretch(12 * size, 8 * size, 13, 13)],
            }
        );
        // The same bytes read without an error are a torn tail: cut, nothing counted.
        let scan = scan_segment(&buf, &[], newest(1, 0), None);
        assert_eq!((scan.end, scan.damaged), (ScanEnd::Torn(12 * size), vec![]));
    }

    #[test]
    fn a_block_the_disk_cannot_read_inside_the_zero_tail_does_not_make_it_damage() {
        let mut buf = segment_of(1..=5, 100);
        buf.resize(12 << 10, 0);
        let unreadable = cannot_read(&mut buf, 4096..8192);
        assert_eq!(
            scan_segment(&buf, &unreadable, newest(1, 0), None),
            SegmentScan {
                end: ScanEnd::ZeroTail(5 * REC),
                len: 5 * REC,
                records: nth(0..5, REC),
                last_seq: 5,
                seen_upto: 5,
                damaged: vec![],
            }
        );
        // But when the records end where such a block starts, what it held is unknown: a record lost.
        let size = HEADER_LEN + 240;
        let mut buf = segment_of(1..=16, 240);
        assert_eq!(buf.len(), 4096);
        buf.resize(12 << 10, 0);
        let unreadable = cannot_read(&mut buf, 4096..8192);
        assert_eq!(
            scan_segment(&buf, &unreadable, newest(1, 0), None),
            SegmentScan {
                end: ScanEnd::UnreadableTail(16 * size),
                len: 4096,
                records: nth(0..16, size),
                last_seq: 16,
                seen_upto: 16,
                damaged: vec![stretch(4096, 8192, 17, 17)],
            }
        );
    }

    fn ack_file(dir: &Path) -> File {
        OpenOptions::new().create(true).truncate(false).write(true).open(dir.join(ACK_FILE)).unwrap()
    }

    fn acked(acked: u64) -> AckState {
        AckState { acked, refused: None }
    }

    /// A slot as versions before the current layout wrote it.
    fn legacy_slot(seq: u64) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0..4].copy_from_slice(LEGACY_ACK_MAGIC);
        b[4..12].copy_from_slice(&seq.to_le_bytes());
        let crc = crc32fast::hash(&b[0..12]);
        b[12..16].copy_from_slice(&crc.to_le_bytes());
        b
    }

    #[test]
    fn the_newer_valid_ack_slot_wins_and_a_torn_one_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let f = ack_file(dir.path());
        f.write_all_at(&acked(7).to_bytes(), 0).unwrap();
        f.write_all_at(&acked(9).to_bytes(), 4096).unwrap();
        assert_eq!(read_ack(dir.path()), Some(acked(9)));
        // Slot two torn mid-write: slot one's older value stands.
        f.write_all_at(&acked(11).to_bytes()[..16], 4096).unwrap();
        assert_eq!(read_ack(dir.path()), Some(acked(7)));
        // A refused range recorded at the same position is the newer state.
        let refused = AckState { acked: 7, refused: Some((12, 15)) };
        f.write_all_at(&refused.to_bytes(), 4096).unwrap();
        assert_eq!(read_ack(dir.path()), Some(refused));
    }

    #[test]
    fn the_ack_slots_are_a_page_apart_and_the_earlier_layouts_read_and_are_rewritten() {
        // An earlier version's file: slots at 0 and 512, the newer one at 512.
        let dir = tempfile::tempdir().unwrap();
        let f = ack_file(dir.path());
        f.write_all_at(&legacy_slot(7), 0).unwrap();
        f.write_all_at(&legacy_slot(9), 512).unwrap();
        assert_eq!(read_ack(dir.path()), Some(acked(9)));
        // The version before: one slot.
        fs::write(dir.path().join(ACK_FILE), legacy_slot(5)).unwrap();
        assert_eq!(read_ack(dir.path()), Some(acked(5)));

        // Opened, the file is rewritten in the current layout: a slot in each of two pages, nothing
        // left of the earlier slots.
        f.write_all_at(&legacy_slot(9), 512).unwrap();
        let mut w = writer(dir.path(), FsyncMode::Never);
        for _ in 0..20 {
            append(&mut w, &[b"event"]);
        }
        w.acknowledge(12);
        w.acknowledge(14);
        drop(w);
        let b = fs::read(dir.path().join(ACK_FILE)).unwrap();
        assert_eq!(b.len(), 4096 + ACK_SLOT_LEN);
        assert_eq!(AckState::parse(&b[0..ACK_SLOT_LEN]), Some(acked(14)));
        assert_eq!(AckState::parse(&b[4096..]), Some(acked(12)));
        assert!(b[ACK_SLOT_LEN..4096].iter().all(|b| *b == 0), "the earlier layout's slot at 512 is gone");
    }
}
