//! # tim-spool
//!
//! The durable spool between tim-kafka-bridge's webhook and Kafka: an append-only, checksummed log on
//! disk, with its own configuration ([`SpoolConfig`]), instrumentation trait ([`SpoolObserver`]),
//! tests, benchmarks (`benches/spool.rs`) and failpoints. The bridge depends on this crate, never the
//! reverse: the spool knows nothing of events, Kafka or metric names; a record's payload is opaque
//! bytes.
//!
//! Tencent waits 2 s for an answer and, by default, never retries an "after" webhook: an event answered
//! OK and then lost is gone for good. So an accepted event is appended here, the answer goes out once
//! the append is durable, and the bridge's forwarder publishes from here (through a [`SpoolReader`])
//! and forgets an event ([`Spool::ack`]) only after Kafka acknowledged it.
//!
//! ## Layout
//! - this file: the handle ([`Spool`]), its configuration, errors and counters;
//! - [`record`]: the on-disk record, apart from any file I/O;
//! - `segment`: segment files (naming, listing) and the damage report, shared by reader and writer;
//! - `writer`: the writer thread (group commit, rolling, acknowledgements) and recovery at start (each
//!   segment walked by `scan_segment`, which only reads; `recover` acts on what it found);
//! - `reader`: the forwarder's cursor over the segments;
//! - `failpoints`: the `failpoints` feature's fault injection in the file I/O.
//!
//! ## Layout on disk
//! - `NNNNNNNNNNNNNNNNNNNN.seg`: segment files named by the sequence number of their first record, each
//!   an append-only run of checksummed [records](record). A segment is deleted once every record in it
//!   is acknowledged.
//! - `ack`: the highest sequence number Kafka acknowledged, in two checksummed slots (each in a 4 KiB
//!   page of its own) written in turn, so a torn or failed write of one leaves the other; made durable
//!   before the segments it frees are deleted. It also records the numbers of a refused batch whose
//!   bytes could not be cut off its segment, which recovery then drops.
//! - `lock`: locked (`flock`) by the running bridge, so a second one on the same directory refuses to
//!   start.
//! - `id`: the spool's identity, 32 random hex digits written once when the directory is first opened
//!   ([`Spool::id`]). Sequence numbers restart in a new directory; the id tells two spools apart (the
//!   bridge's exactly-once mode names its Kafka transactions and its position after it).
//!
//! ## Threads
//! One writer thread owns every file mutation ([`writer`]): appends from all HTTP workers queue on a
//! channel and the thread turns whatever has queued into one `write` and, with `fsync=always`, one
//! `fdatasync` (group commit) before any of their answers go out. At most [`MAX_QUEUED_BYTES`] of
//! appends wait for it: while the disk stalls, more are refused at once ([`SpoolError::Busy`], 503)
//! rather than held in memory. Disk I/O never runs on the async
//! runtime. The forwarder reads segments with its own [`SpoolReader`], only up to the [`Committed`]
//! position (sequence number, segment and byte offset) published on a `watch` channel after each group
//! commit, so it never sees a half-written record nor the bytes of a write that failed.
//!
//! ## Failures
//! - A sequence number is never given twice: a batch whose write failed burns its numbers.
//! - A refused batch is never published, not even after a restart: what its failed write or fsync left
//!   in the segment is cut off and the cut synced; when that fails, its numbers are recorded as
//!   refused in `ack`, recovery cuts them off, and the spool fails for good.
//! - Disk full (`ENOSPC`, `EDQUOT`) while appending or rolling: the partial write is cut off and the
//!   batch is refused as [`SpoolError::DiskFull`] (503); the next batch tries again, so appends resume by
//!   themselves once space returns.
//! - A failed `fsync`, `EIO`, or a refused batch that cannot be cut off: the kernel may have dropped
//!   pages we cannot name, so the spool refuses every append from then on ([`SpoolError::Failed`]) and
//!   says so through [`Spool::health`], which fails liveness so an orchestrator restarts the bridge.
//! - A damaged record (bit rot, a torn write) costs that record only: reading resumes at the next
//!   record whose checksum holds and whose sequence number continues ([`record::resync`]); only a torn
//!   tail of the newest segment is cut off. Every lost record is counted in
//!   [`SpoolStats::corrupt_records`] and logged with its segment, offset and sequence range.
//!
//! ## Why not an embedded database
//! See docs/architecture.md: the spool is a FIFO log, and the two crash guarantees of the `interval`
//! and `never` modes (survive `kill -9` without fsync) need a plain `write(2)` per batch.

// The macro first: the modules below use it.
#[macro_use]
mod failpoints;
mod reader;
pub mod record;
mod segment;
mod writer;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::{oneshot, watch};

#[cfg(feature = "failpoints")]
pub use failpoints::injected;
#[cfg(all(test, feature = "failpoints"))]
use failpoints::Faults;
pub use reader::{SpoolReader, SpooledRecord};

/// Errors at the spool's boundary.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool is full ({bytes} of {max_bytes} bytes in use)")]
    Full { bytes: u64, max_bytes: u64 },
    #[error("the spool's disk is full: {0}")]
    DiskFull(std::io::Error),
    #[error("spool write failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("spool is unusable after an earlier failure ({0}); restart the bridge")]
    Failed(String),
    #[error(
        "the spool's writer is behind: {queued_bytes} bytes of events wait for it (at most {max_bytes})"
    )]
    Busy { queued_bytes: u64, max_bytes: u64 },
    #[error("spool is closed")]
    Closed,
    #[error("spool directory {path} is in use by another process (one bridge per spool directory)")]
    Locked { path: PathBuf },
    #[error("cannot open spool directory {path}: {source}")]
    Open { path: PathBuf, source: std::io::Error },
}

/// Reads the spool's `id` file, or creates it (random, written to a temporary file, synced, renamed,
/// and the directory synced, so a crash leaves either no id or a whole one).
fn read_or_create_id(dir: &Path) -> Result<String, SpoolError> {
    let path = dir.join("id");
    let valid = |s: &str| s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit());
    match std::fs::read_to_string(&path) {
        Ok(text) if valid(text.trim()) => return Ok(text.trim().to_owned()),
        Ok(text) => {
            return Err(SpoolError::Open {
                path,
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("not a spool id (32 hex digits): {:?}", text.trim()),
                ),
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => return Err(SpoolError::Open { path, source }),
    }
    let mut bytes = [0u8; 16];
    let mut filled = 0;
    while filled < bytes.len() {
        filled += rustix::rand::getrandom(&mut bytes[filled..], rustix::rand::GetRandomFlags::empty())
            .map_err(std::io::Error::from)?;
    }
    let id: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let tmp = dir.join("id.tmp");
    {
        use std::io::Write as _;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(format!("{id}\n").as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &path)?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(id)
}

impl SpoolError {
    /// Whether the event was refused for want of space (the cap or the disk): a 503, and it passes.
    pub fn is_full(&self) -> bool {
        matches!(self, SpoolError::Full { .. } | SpoolError::DiskFull(_))
    }
}

/// When the spool is flushed to stable storage. Every mode survives `kill -9` (the bytes are in the
/// kernel before the answer goes out); only `Always` also survives power loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncMode {
    Always,
    Interval(Duration),
    Never,
}

impl std::fmt::Display for FsyncMode {
    /// As `BRIDGE_SPOOL_FSYNC` spells it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FsyncMode::Always => "always",
            FsyncMode::Interval(_) => "interval",
            FsyncMode::Never => "never",
        })
    }
}

/// How many bytes of appends may wait for the writer thread (queued, or in the group commit under
/// way) before more are refused with [`SpoolError::Busy`] (503) instead of waiting in memory. A group
/// commit takes the whole queue, so it grows only while the disk stalls; then, without a bound, every
/// webhook in flight would hold its event in memory. 64 MiB is a thousand events of the largest body
/// `BRIDGE_MAX_BODY_BYTES` allows by default, and at the benchmark's peak rate (30 000 events a second
/// of about 600 bytes) over three seconds of appends; an append is never refused while nothing waits,
/// so no event is too large for it.
pub const MAX_QUEUED_BYTES: u64 = 64 << 20;

/// How the spool is set up.
#[derive(Clone)]
pub struct SpoolConfig {
    pub dir: PathBuf,
    pub fsync: FsyncMode,
    /// At this many bytes on disk, appends are refused ([`SpoolError::Full`]).
    pub max_bytes: u64,
    /// At this many bytes waiting for the writer, appends are refused ([`SpoolError::Busy`]);
    /// [`MAX_QUEUED_BYTES`] unless a test wants less.
    pub max_queued_bytes: u64,
    /// Told about every group commit (the metrics implement it); the spool knows no metric names.
    pub observer: Option<Arc<dyn SpoolObserver>>,
}

/// Receives what each group commit did, for metrics.
pub trait SpoolObserver: Send + Sync {
    /// `events` were written in one `write`; `fsync` is how long the `fdatasync` took, if one ran.
    fn committed(&self, events: usize, fsync: Option<std::time::Duration>);
}

impl SpoolConfig {
    /// Segments are a sixteenth of the cap (between 4 KiB and 64 MiB), so acknowledged space is given
    /// back in small steps and a full spool spans a handful of files.
    fn segment_bytes(&self) -> u64 {
        (self.max_bytes / 16).clamp(4 << 10, 64 << 20)
    }
}

/// How far the spool is durably written: the reader never reads past it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Committed {
    /// The last sequence number written (0 when none ever was).
    pub seq: u64,
    /// The segment being appended to, by its first sequence number.
    pub segment: u64,
    /// The end of the last whole record in that segment, in bytes.
    pub offset: u64,
}

/// Gauges and counters the spool keeps current, read by metrics and health.
#[derive(Debug, Default)]
pub struct SpoolStats {
    /// Events appended and not yet acknowledged by Kafka.
    pub pending_events: AtomicU64,
    /// Bytes of segment files on disk.
    pub bytes: AtomicU64,
    /// Records lost to damage (found at start or while forwarding), never counted twice.
    pub corrupt_records: AtomicU64,
    /// Bytes of appends (record size: header and payload) sent to the writer and not yet answered.
    pub queued_bytes: AtomicU64,
    /// True while the writer thread runs; false once it has exited, normally or by a panic.
    writer_running: AtomicBool,
    /// Why the spool refuses every append for good, once it does.
    failure: Mutex<Option<String>>,
    /// When each batch was committed: (its last sequence number, ms since the epoch), oldest first;
    /// the writer drops those of acknowledged batches (see [`Spool::oldest_pending_since_ms`]).
    commit_times: Mutex<std::collections::VecDeque<(u64, i64)>>,
}

impl SpoolStats {
    fn fail(&self, reason: String) {
        self.failure.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(reason);
    }

    /// Notes that the records up to `last_seq` were committed now.
    pub(crate) fn committed_at(&self, last_seq: u64, now_ms: i64) {
        self.commit_times.lock().unwrap_or_else(|e| e.into_inner()).push_back((last_seq, now_ms));
    }

    /// Forgets the commit times of batches acknowledged up to `acked` (the writer, as it records them).
    pub(crate) fn forget_committed_upto(&self, acked: u64) {
        let mut times = self.commit_times.lock().unwrap_or_else(|e| e.into_inner());
        while times.front().is_some_and(|(last, _)| *last <= acked) {
            times.pop_front();
        }
    }
}

/// What an append counts for in [`SpoolStats::queued_bytes`]: its record's size.
fn queued_size(payload: &[u8]) -> u64 {
    (record::HEADER_LEN + payload.len()) as u64
}

/// Where damage was found, as (segment, byte offset), so that it is reported and counted once.
pub(crate) type Damage = HashSet<(u64, u64)>;

enum Command {
    Append { payload: Vec<u8>, reply: oneshot::Sender<Result<u64, SpoolError>> },
    Ack(u64),
    Close,
}

/// A handle on the spool; cheap to clone, shared by every HTTP worker and the forwarder.
#[derive(Clone)]
pub struct Spool {
    tx: mpsc::Sender<Command>,
    committed: watch::Receiver<Committed>,
    stats: Arc<SpoolStats>,
    dir: PathBuf,
    max_bytes: u64,
    max_queued_bytes: u64,
    /// The first sequence number not acknowledged when the spool was opened: where forwarding starts.
    start_seq: u64,
    /// Damage recovery found and reported, handed to the reader so it is not reported again.
    damage: Arc<Damage>,
    /// The spool's identity (the `id` file).
    id: Arc<str>,
}

/// Owns the writer thread; [`SpoolThread::join`] waits for its final sync.
pub struct SpoolThread(JoinHandle<()>);

impl SpoolThread {
    /// Waits until every handle is dropped and the writer has synced and exited.
    pub fn join(self) {
        let _ = self.0.join();
    }
}

impl Spool {
    /// Opens (or creates) the spool: checks every record left by an earlier run (skipping damaged ones
    /// and cutting off a torn tail, each with one log line) and starts the writer thread. Blocking:
    /// call before serving.
    pub fn open(config: SpoolConfig) -> Result<(Spool, SpoolThread), SpoolError> {
        let stats = Arc::new(SpoolStats::default());
        let recovered = writer::recover(&config.dir, &stats)?;
        // (Under the lock `recover` took: no other process writes it at the same time.)
        let id = read_or_create_id(&config.dir)?;
        if recovered.committed.seq > recovered.acked {
            // What an earlier run left is at least as old as this start.
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis());
            stats.committed_at(recovered.committed.seq, now as i64);
        }
        let (tx, rx) = mpsc::channel();
        let (committed_tx, committed) = watch::channel(recovered.committed);
        let dir = config.dir.clone();
        let (max_bytes, max_queued_bytes) = (config.max_bytes, config.max_queued_bytes);
        let start_seq = recovered.acked + 1;
        let damage = Arc::new(recovered.damage.clone());
        let w = writer::Writer::new(config, recovered, committed_tx, stats.clone())?;
        stats.writer_running.store(true, Ordering::Relaxed);
        #[cfg(all(test, feature = "failpoints"))]
        let faults = failpoints::here();
        let handle = std::thread::Builder::new()
            .name("spool-writer".into())
            .spawn(move || {
                #[cfg(all(test, feature = "failpoints"))]
                failpoints::enable_here(faults);
                w.run(rx)
            })
            .map_err(SpoolError::Io)?;
        let spool = Spool {
            tx,
            committed,
            stats,
            dir,
            max_bytes,
            max_queued_bytes,
            start_seq,
            damage,
            id: id.into(),
        };
        Ok((spool, SpoolThread(handle)))
    }

    /// Appends one event and resolves once it is as durable as the fsync mode promises. The returned
    /// sequence number orders it among all events. Refused at once ([`SpoolError::Busy`]) when
    /// [`SpoolConfig::max_queued_bytes`] already wait for the writer.
    pub async fn append(&self, payload: Vec<u8>) -> Result<u64, SpoolError> {
        let size = queued_size(&payload);
        let queued = self.stats.queued_bytes.fetch_add(size, Ordering::Relaxed);
        if queued > 0 && queued + size > self.max_queued_bytes {
            self.stats.queued_bytes.fetch_sub(size, Ordering::Relaxed);
            return Err(SpoolError::Busy { queued_bytes: queued, max_bytes: self.max_queued_bytes });
        }
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Command::Append { payload, reply }).is_err() {
            self.stats.queued_bytes.fetch_sub(size, Ordering::Relaxed);
            return Err(SpoolError::Closed);
        }
        // The writer takes the size off once it answered (even when this future is dropped first).
        rx.await.map_err(|_| SpoolError::Closed)?
    }

    /// Records that Kafka acknowledged every event up to `seq`; their space is reclaimed.
    pub fn ack(&self, seq: u64) {
        let _ = self.tx.send(Command::Ack(seq));
    }

    /// Asks the writer to sync and exit; appends after this fail with [`SpoolError::Closed`].
    pub fn close(&self) {
        let _ = self.tx.send(Command::Close);
    }

    /// The durable position, updated after every group commit.
    pub fn committed(&self) -> watch::Receiver<Committed> {
        self.committed.clone()
    }

    /// A reader positioned at the oldest event not acknowledged when the spool was opened.
    pub fn reader(&self) -> SpoolReader {
        SpoolReader::new(self.dir.clone(), self.start_seq, self.stats.clone(), (*self.damage).clone())
    }

    pub fn stats(&self) -> &SpoolStats {
        &self.stats
    }

    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    pub fn pending_events(&self) -> u64 {
        self.stats.pending_events.load(Ordering::Relaxed)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The spool's identity: 32 hex digits, random, kept in the `id` file from the directory's first
    /// opening on (a directory copied whole keeps it; a new or emptied one gets a new one).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// When the oldest record after `acked` was committed (ms since the epoch), if one is: the age of
    /// the oldest event not yet in Kafka, known whether or not anything was read or sent (a spool that
    /// cannot be read still shows its lag). The writer forgets batches as their acknowledgements reach
    /// it; those acknowledged since are skipped here.
    pub fn oldest_pending_since_ms(&self, acked: u64) -> Option<i64> {
        let times = self.stats.commit_times.lock().unwrap_or_else(|e| e.into_inner());
        times.iter().find(|(last, _)| *last > acked).map(|(_, at)| *at)
    }

    /// `Err` with the reason once the spool cannot take events any more: a write or sync failed in a
    /// way that leaves its files in doubt, or the writer thread is gone. Only a restart helps.
    pub fn health(&self) -> Result<(), String> {
        if let Some(reason) = self.stats.failure.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            return Err(format!("spool failed for good: {reason}"));
        }
        if !self.stats.writer_running.load(Ordering::Relaxed) {
            return Err("the spool writer thread has stopped".to_owned());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn open(dir: &Path, max_bytes: u64) -> (Spool, SpoolThread) {
        Spool::open(SpoolConfig {
            dir: dir.to_owned(),
            fsync: FsyncMode::Never,
            max_bytes,
            max_queued_bytes: MAX_QUEUED_BYTES,
            observer: None,
        })
        .unwrap()
    }

    fn close((spool, thread): (Spool, SpoolThread)) {
        spool.close();
        drop(spool);
        thread.join();
    }

    #[test]
    fn a_spool_keeps_its_id_across_openings_and_another_directory_gets_another() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let first = open(a.path(), 64 << 10);
        let id = first.0.id().to_owned();
        assert_eq!(id.len(), 32);
        assert!(id.bytes().all(|c| c.is_ascii_hexdigit()));
        close(first);
        let again = open(a.path(), 64 << 10);
        assert_eq!(again.0.id(), id);
        close(again);
        assert!(!a.path().join("id.tmp").exists());
        let other = open(b.path(), 64 << 10);
        assert_ne!(other.0.id(), id);
        close(other);
        // An id file that is not one stops the opening, naming the file.
        std::fs::write(b.path().join("id"), "not an id\n").unwrap();
        let e = Spool::open(SpoolConfig {
            dir: b.path().to_owned(),
            fsync: FsyncMode::Never,
            max_bytes: 64 << 10,
            max_queued_bytes: MAX_QUEUED_BYTES,
            observer: None,
        })
        .err()
        .expect("refused");
        assert!(e.to_string().contains("not a spool id"), "{e}");
    }

    #[tokio::test]
    async fn appended_events_read_back_in_order_and_acknowledged_space_is_reclaimed() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, thread) = open(dir.path(), 64 << 10);
        for i in 0..100u32 {
            assert_eq!(spool.append(format!("event {i}").into_bytes()).await.unwrap(), u64::from(i) + 1);
        }
        let mut reader = spool.reader();
        let records = reader.read(*spool.committed().borrow(), 1000, 1 << 20).unwrap();
        assert_eq!(records.len(), 100);
        assert_eq!(records[41].payload, b"event 41");
        assert!(spool.stats().bytes.load(Ordering::Relaxed) > 0);

        spool.ack(100);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while spool.stats().bytes.load(Ordering::Relaxed) > 0 || spool.pending_events() > 0 {
            assert!(std::time::Instant::now() < deadline, "the acknowledged segment was never deleted");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert_eq!(spool.append(b"one more".to_vec()).await.unwrap(), 101);
        close((spool, thread));
    }

    #[tokio::test]
    async fn a_full_spool_refuses_and_accepts_again_once_kafka_caught_up() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, thread) = open(dir.path(), 8 << 10);
        let mut accepted = 0;
        loop {
            match spool.append(vec![b'x'; 400]).await {
                Ok(seq) => accepted = seq,
                Err(SpoolError::Full { .. }) => break,
                Err(e) => panic!("{e}"),
            }
        }
        assert!(accepted >= 15, "{accepted}");
        spool.ack(accepted);
        assert!(spool.append(vec![b'x'; 400]).await.is_ok());
        close((spool, thread));
    }

    #[tokio::test]
    async fn appends_beyond_the_queue_bound_are_refused_at_once_while_the_writer_is_stalled() {
        let dir = tempfile::tempdir().unwrap();
        // The writer stalls in its group commit, as on a disk that does not answer.
        let faults = Faults::set(&[("spool::commit", "pause")]);
        let (spool, thread) = Spool::open(SpoolConfig {
            dir: dir.path().to_owned(),
            fsync: FsyncMode::Never,
            max_bytes: 1 << 20,
            max_queued_bytes: 4 << 10,
            observer: None,
        })
        .unwrap();
        let size = (record::HEADER_LEN + 1000) as u64;
        let queued_becomes = |bytes: u64| {
            let spool = spool.clone();
            async move {
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
                while spool.stats().queued_bytes.load(Ordering::Relaxed) != bytes {
                    assert!(std::time::Instant::now() < deadline, "{bytes} bytes never queued");
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                }
            }
        };
        let waiting: Vec<_> = (0..4u8)
            .map(|i| {
                let spool = spool.clone();
                tokio::spawn(async move { spool.append(vec![i; 1000]).await })
            })
            .collect();
        queued_becomes(4 * size).await;

        // A fifth would pass the bound: refused at once, not queued.
        let refused = tokio::time::timeout(std::time::Duration::from_secs(1), spool.append(vec![9; 1000]))
            .await
            .expect("refused at once, not queued behind the stalled writer");
        assert!(
            matches!(refused, Err(SpoolError::Busy { queued_bytes, max_bytes: 4096 }) if queued_bytes == 4 * size),
            "{refused:?}"
        );
        assert_eq!(spool.stats().queued_bytes.load(Ordering::Relaxed), 4 * size);

        // The disk answers again: every queued append is written, and the queue is empty.
        fail::cfg("spool::commit", "off").unwrap();
        let mut seqs = Vec::new();
        for w in waiting {
            seqs.push(w.await.unwrap().unwrap());
        }
        assert_eq!(seqs.len(), 4);
        // (Taken off once the writer has answered the whole batch.)
        queued_becomes(0).await;
        // With nothing waiting, even an append larger than the bound is taken.
        assert_eq!(spool.append(vec![1; 8 << 10]).await.unwrap(), 5);
        queued_becomes(0).await;
        drop(faults);
        close((spool, thread));
    }

    #[tokio::test]
    async fn a_reopened_spool_starts_after_what_was_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let first = open(dir.path(), 1 << 20);
        for i in 0..10u8 {
            first.0.append(vec![i]).await.unwrap();
        }
        first.0.ack(6);
        close(first);

        let (spool, thread) = open(dir.path(), 1 << 20);
        let mut reader = spool.reader();
        let records = reader.read(*spool.committed().borrow(), 100, 1 << 20).unwrap();
        let seqs: Vec<u64> = records.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, vec![7, 8, 9, 10]);
        assert_eq!(spool.append(vec![42]).await.unwrap(), 11);
        // A second bridge on the same directory is refused.
        assert!(matches!(
            Spool::open(SpoolConfig {
                dir: dir.path().to_owned(),
                fsync: FsyncMode::Never,
                max_bytes: 1 << 20,
                max_queued_bytes: MAX_QUEUED_BYTES,
                observer: None,
            }),
            Err(SpoolError::Locked { .. })
        ));
        close((spool, thread));
    }

    #[tokio::test]
    async fn damage_found_while_forwarding_costs_that_record_only_and_is_counted_once() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, thread) = open(dir.path(), 1 << 20);
        for i in 0..50u32 {
            spool.append(format!("event {i}").into_bytes()).await.unwrap();
        }
        // Bit rot in record 20 after the spool was opened: the reader finds it, not recovery.
        let seg = segment::list_segments(dir.path()).unwrap().remove(0).1;
        let mut bytes = std::fs::read(&seg).unwrap();
        let at = (0..19).fold(0, |at, _| at + record::frame_at(&bytes, at).unwrap().size());
        bytes[at + record::HEADER_LEN + 1] ^= 1;
        std::fs::write(&seg, &bytes).unwrap();

        let mut reader = spool.reader();
        let committed = *spool.committed().borrow();
        let seqs: Vec<u64> = reader.read(committed, 1000, 1 << 20).unwrap().iter().map(|r| r.seq).collect();
        assert_eq!(seqs, (1..=50).filter(|s| *s != 20).collect::<Vec<_>>());
        assert_eq!(spool.stats().corrupt_records.load(Ordering::Relaxed), 1);
        // Read again from the start (a retry): skipped again, not counted again.
        reader.seek(1);
        assert_eq!(reader.read(committed, 1000, 1 << 20).unwrap().len(), 49);
        assert_eq!(spool.stats().corrupt_records.load(Ordering::Relaxed), 1);
        close((spool, thread));

        // At the next start recovery finds it, and does not cut the segment there.
        let (spool, thread) = open(dir.path(), 1 << 20);
        assert_eq!(spool.stats().corrupt_records.load(Ordering::Relaxed), 1);
        let mut reader = spool.reader();
        assert_eq!(reader.read(*spool.committed().borrow(), 1000, 1 << 20).unwrap().len(), 49);
        assert_eq!(spool.stats().corrupt_records.load(Ordering::Relaxed), 1);
        assert_eq!(
            spool.append(b"next".to_vec()).await.unwrap(),
            51,
            "numbering continues after the last record"
        );
        close((spool, thread));
    }

    #[tokio::test]
    async fn the_reader_never_reads_past_what_is_committed() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, thread) = open(dir.path(), 1 << 20);
        for i in 0..10u32 {
            spool.append(format!("event {i}").into_bytes()).await.unwrap();
        }
        let committed = *spool.committed().borrow();
        // Bytes of a write in progress (or one that will fail) after the committed end.
        let seg = segment::list_segments(dir.path()).unwrap().remove(0).1;
        let mut stray = Vec::new();
        record::encode(11, b"not committed", &mut stray);
        std::fs::OpenOptions::new().append(true).open(&seg).unwrap().write_all(&stray).unwrap();

        let mut reader = spool.reader();
        let seqs: Vec<u64> = reader.read(committed, 1000, 1 << 20).unwrap().iter().map(|r| r.seq).collect();
        assert_eq!(seqs, (1..=10).collect::<Vec<_>>());
        assert!(reader.read(Committed { seq: 11, ..committed }, 1000, 1 << 20).unwrap().is_empty());
        close((spool, thread));
    }

    #[tokio::test]
    async fn a_reader_keeps_up_with_sparse_appends_while_acknowledged_segments_come_and_go() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, thread) = open(dir.path(), 64 << 10);
        let mut reader = spool.reader();
        let mut read = Vec::new();
        for i in 1..=3000u64 {
            assert_eq!(spool.append(format!("event {i}").into_bytes()).await.unwrap(), i);
            // Read what is committed, sometimes acknowledging it at once, sometimes later.
            let committed = *spool.committed().borrow();
            for r in reader.read(committed, 1000, 1 << 20).unwrap() {
                read.push(r.seq);
            }
            if i % 3 != 0 {
                spool.ack(*read.last().unwrap());
            }
            if i % 7 == 0 {
                tokio::task::yield_now().await;
            }
        }
        assert_eq!(read, (1..=3000).collect::<Vec<_>>());
        close((spool, thread));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reader_racing_concurrent_appends_and_acknowledgements_misses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, thread) = open(dir.path(), 1 << 30);
        let total = 4 * 1500u64;
        let mut writers = Vec::new();
        for w in 0..4 {
            let spool = spool.clone();
            writers.push(tokio::spawn(async move {
                for i in 0..1500 {
                    spool.append(format!("writer {w} event {i}").into_bytes()).await.unwrap();
                    if i % 5 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
            }));
        }
        let mut reader = Some(spool.reader());
        let mut committed = spool.committed();
        let mut read = Vec::new();
        while (read.len() as u64) < total {
            let upto = *committed.borrow_and_update();
            let mut r = reader.take().unwrap();
            let (r, batch) = tokio::task::spawn_blocking(move || {
                let b = r.read(upto, 7, 1 << 20);
                (r, b)
            })
            .await
            .unwrap();
            reader = Some(r);
            let batch = batch.unwrap();
            if batch.is_empty() {
                let caught_up = reader.as_ref().unwrap().position() > upto.seq;
                assert!(
                    caught_up,
                    "nothing read at {} with {upto:?} committed",
                    reader.as_ref().unwrap().position()
                );
                tokio::time::timeout(std::time::Duration::from_secs(5), committed.changed())
                    .await
                    .unwrap()
                    .unwrap();
                continue;
            }
            read.extend(batch.iter().map(|r| r.seq));
            spool.ack(*read.last().unwrap());
        }
        for w in writers {
            w.await.unwrap();
        }
        assert_eq!(read, (1..=total).collect::<Vec<_>>());
        close((spool, thread));
    }

    #[tokio::test]
    async fn a_wholly_damaged_older_segment_costs_its_records_only_and_nothing_waits_for_them() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, thread) = open(dir.path(), 64 << 10);
        for i in 0..30u32 {
            spool.append(vec![b'a' + (i % 26) as u8; 400]).await.unwrap();
        }
        close((spool, thread));
        let segs = segment::list_segments(dir.path()).unwrap();
        assert!(segs.len() >= 3, "{segs:?}");
        let (second, next) = (segs[1].0, segs[2].0);
        let len = std::fs::metadata(&segs[1].1).unwrap().len() as usize;
        std::fs::write(&segs[1].1, vec![0u8; len]).unwrap();

        let (spool, thread) = open(dir.path(), 64 << 10);
        let lost = next - second;
        assert_eq!(spool.stats().corrupt_records.load(Ordering::Relaxed), lost);
        let mut reader = spool.reader();
        let committed = *spool.committed().borrow();
        let seqs: Vec<u64> = reader.read(committed, 1000, 1 << 20).unwrap().iter().map(|r| r.seq).collect();
        assert_eq!(seqs, (1..=30).filter(|s| *s < second || *s >= next).collect::<Vec<_>>());
        assert!(reader.position() > committed.seq, "nothing is left to wait for");
        assert_eq!(spool.append(b"next".to_vec()).await.unwrap(), 31);
        close((spool, thread));
    }

    #[tokio::test]
    async fn with_fsync_always_a_zero_filled_spare_becomes_the_next_segment_and_its_tail_reads_as_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let config = || SpoolConfig {
            dir: dir.path().to_owned(),
            fsync: FsyncMode::Always,
            max_bytes: 64 << 10,
            max_queued_bytes: MAX_QUEUED_BYTES,
            observer: None,
        };
        let segment = config().segment_bytes();
        let (spool, thread) = Spool::open(config()).unwrap();
        let spare = dir.path().join("spare.zero");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        // The writer prepares one at start; a file by that name is complete.
        while !spare.exists() {
            assert!(std::time::Instant::now() < deadline, "no spare segment was prepared");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert_eq!(std::fs::metadata(&spare).unwrap().len(), segment);
        // The first append rolls the first segment: the spare, renamed.
        for i in 0..5u8 {
            spool.append(vec![i; 100]).await.unwrap();
        }
        let segs = segment::list_segments(dir.path()).unwrap();
        assert_eq!(segs.len(), 1);
        let written = 5 * (record::HEADER_LEN as u64 + 100);
        assert_eq!(
            std::fs::metadata(&segs[0].1).unwrap().len(),
            segment,
            "the spare, longer than its records"
        );
        let records = spool.reader().read(*spool.committed().borrow(), 100, 1 << 20).unwrap();
        assert_eq!(records.iter().map(|r| r.payload[0]).collect::<Vec<_>>(), vec![0, 1, 2, 3, 4]);
        close((spool, thread));

        // An older segment whose numbering the next one continues may end in zeros too (a cut that a
        // power cut undid): the end of its records, not damage.
        let (spool, thread) = Spool::open(config()).unwrap();
        assert_eq!(std::fs::metadata(&segs[0].1).unwrap().len(), written, "the zero tail is cut at start");
        for i in 5..10u8 {
            spool.append(vec![i; 100]).await.unwrap();
        }
        close((spool, thread));
        std::fs::OpenOptions::new().write(true).open(&segs[0].1).unwrap().set_len(segment).unwrap();

        let (spool, thread) = Spool::open(config()).unwrap();
        assert_eq!(spool.stats().corrupt_records.load(Ordering::Relaxed), 0);
        let records = spool.reader().read(*spool.committed().borrow(), 100, 1 << 20).unwrap();
        assert_eq!(records.iter().map(|r| r.seq).collect::<Vec<_>>(), (1..=10).collect::<Vec<_>>());
        assert_eq!(records.iter().map(|r| r.payload[0]).collect::<Vec<_>>(), (0..10).collect::<Vec<_>>());
        assert_eq!(spool.append(b"next".to_vec()).await.unwrap(), 11);
        close((spool, thread));
        assert!(!dir.path().join("spare.zero.tmp").exists());
    }

    /// A bad sector in a segment found at start: the records in that block (and those across its
    /// edges) are counted as lost, the rest kept, and the segment rewritten without it.
    #[tokio::test]
    async fn a_block_the_disk_cannot_read_at_start_is_skipped_counted_and_written_out_of_the_segment() {
        let dir = tempfile::tempdir().unwrap();
        let config = || SpoolConfig {
            dir: dir.path().to_owned(),
            fsync: FsyncMode::Never,
            max_bytes: 64 << 20,
            max_queued_bytes: MAX_QUEUED_BYTES,
            observer: None,
        };
        let mut bytes = Vec::new();
        for seq in 1..=40u64 {
            record::encode(seq, &[b'e'; 300], &mut bytes);
        }
        let segment = segment::segment_path(dir.path(), 1);
        std::fs::write(&segment, &bytes).unwrap();
        // The block at 4096..8192 fails on every try: a bad sector. Its records (and the ones that
        // straddle its edges) are lost, about 14 of these 320-byte ones.
        let faults = Faults::set(&[("spool::recover_read", "return(5000)")]);
        let (spool, thread) = Spool::open(config()).unwrap();
        drop(faults);
        let lost = spool.stats().corrupt_records.load(Ordering::Relaxed);
        let records = spool.reader().read(*spool.committed().borrow(), 100, 1 << 20).unwrap();
        let seqs: Vec<u64> = records.iter().map(|r| r.seq).collect();
        assert!((13..=15).contains(&lost), "{lost}");
        assert_eq!(seqs.len() as u64, 40 - lost);
        assert!(seqs.windows(2).all(|w| w[0] < w[1]));
        // The file no longer holds the bad block's stretch: a reader never meets it again; the original
        // is kept aside, out of the spool's listing.
        assert_eq!(
            std::fs::metadata(&segment).unwrap().len(),
            bytes.len() as u64 - lost * (bytes.len() as u64 / 40)
        );
        assert_eq!(std::fs::read(segment.with_extension("seg.unreadable")).unwrap(), bytes);
        spool.close();
        drop(spool);
        thread.join();
    }

    /// With `fsync=always` a segment is a zero-filled spare, so a crash mid-write leaves a torn last
    /// record followed by zeros, not a short file.
    #[tokio::test]
    async fn a_torn_last_record_followed_by_a_zero_tail_is_cut_off_and_every_whole_record_before_it_kept() {
        // Torn inside the header, just after it, and half-way through the payload.
        for torn_at in [7, record::HEADER_LEN, record::HEADER_LEN + 100] {
            let dir = tempfile::tempdir().unwrap();
            let config = || SpoolConfig {
                dir: dir.path().to_owned(),
                fsync: FsyncMode::Always,
                max_bytes: 64 << 10,
                max_queued_bytes: MAX_QUEUED_BYTES,
                observer: None,
            };
            let mut bytes = Vec::new();
            for seq in 1..=10u64 {
                record::encode(seq, format!("event {seq}").as_bytes(), &mut bytes);
            }
            let whole = bytes.len();
            let mut torn = Vec::new();
            record::encode(11, &[b'x'; 200], &mut torn);
            bytes.extend_from_slice(&torn[..torn_at]);
            bytes.resize(config().segment_bytes() as usize, 0);
            let segment = segment::segment_path(dir.path(), 1);
            std::fs::write(&segment, &bytes).unwrap();

            let (spool, thread) = Spool::open(config()).unwrap();

            assert_eq!(
                std::fs::metadata(&segment).unwrap().len(),
                whole as u64,
                "cut where the torn record starts"
            );
            // As for any torn tail of the newest segment: cut with a warning, not counted as damage.
            assert_eq!(spool.stats().corrupt_records.load(Ordering::Relaxed), 0, "torn at {torn_at}");
            let records = spool.reader().read(*spool.committed().borrow(), 100, 1 << 20).unwrap();
            assert_eq!(records.iter().map(|r| r.seq).collect::<Vec<_>>(), (1..=10).collect::<Vec<_>>());
            assert_eq!(records[9].payload, b"event 10");
            assert_eq!(spool.pending_events(), 10);
            assert_eq!(
                spool.append(b"next".to_vec()).await.unwrap(),
                11,
                "the torn record was never answered OK"
            );
            close((spool, thread));
        }
    }

    #[tokio::test]
    async fn a_spare_left_by_a_run_with_another_segment_size_is_not_used() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path()).unwrap();
        std::fs::write(dir.path().join("spare.zero"), vec![0u8; 1 << 20]).unwrap();
        let config = SpoolConfig {
            dir: dir.path().to_owned(),
            fsync: FsyncMode::Always,
            max_bytes: 64 << 10,
            max_queued_bytes: MAX_QUEUED_BYTES,
            observer: None,
        };
        let segment = config.segment_bytes();
        let (spool, thread) = Spool::open(config).unwrap();
        spool.append(vec![1; 100]).await.unwrap();
        let segs = segment::list_segments(dir.path()).unwrap();
        let written = record::HEADER_LEN as u64 + 100;
        assert_eq!(std::fs::metadata(&segs[0].1).unwrap().len(), written, "a new file, not the old spare");
        // A spare of this run's size is prepared in its place.
        let spare = dir.path().join("spare.zero");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::fs::metadata(&spare).map_or(true, |m| m.len() != segment) {
            assert!(std::time::Instant::now() < deadline, "no spare of the right size was prepared");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        close((spool, thread));
    }
}
