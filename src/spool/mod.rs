//! The durable spool between the webhook and Kafka.
//!
//! Tencent waits 2 s for an answer and, by default, never retries an "after" webhook: an event answered
//! OK and then lost is gone for good. So an accepted event is appended here, the answer goes out once
//! the append is durable, and the [forwarder](crate::forwarder) publishes from here and forgets an event
//! only after Kafka acknowledged it.
//!
//! ## Layout on disk
//! - `NNNNNNNNNNNNNNNNNNNN.seg`: segment files named by the sequence number of their first record, each
//!   an append-only run of checksummed [records](record). A segment is deleted once every record in it
//!   is acknowledged.
//! - `ack`: the highest sequence number Kafka acknowledged (with its own checksum).
//! - `lock`: locked (`flock`) by the running bridge, so a second one on the same directory refuses to
//!   start.
//!
//! ## Threads
//! One writer thread owns every file mutation ([`writer`]): appends from all HTTP workers queue on a
//! channel and the thread turns whatever has queued into one `write` and, with `fsync=always`, one
//! `fdatasync` (group commit) before any of their answers go out. Disk I/O never runs on the async
//! runtime. The forwarder reads segments with its own [`SpoolReader`], only up to the last committed
//! sequence number published on a `watch` channel, so it never sees a half-written record.
//!
//! ## Why not an embedded database
//! See docs/architecture.md: the spool is a FIFO log, and the two crash guarantees of the `interval`
//! and `never` modes (survive `kill -9` without fsync) need a plain `write(2)` per batch.

mod reader;
pub mod record;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use tokio::sync::{oneshot, watch};

pub use reader::{SpoolReader, SpooledRecord};

use crate::configuration::FsyncMode;

/// Errors at the spool's boundary.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool is full ({bytes} of {max_bytes} bytes in use)")]
    Full { bytes: u64, max_bytes: u64 },
    #[error("spool write failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("spool is unusable after an earlier write failure; restart the bridge")]
    Failed,
    #[error("spool is closed")]
    Closed,
    #[error("spool directory {path} is in use by another process (one bridge per spool directory)")]
    Locked { path: PathBuf },
    #[error("cannot open spool directory {path}: {source}")]
    Open { path: PathBuf, source: std::io::Error },
}

/// How the spool is set up.
#[derive(Clone)]
pub struct SpoolConfig {
    pub dir: PathBuf,
    pub fsync: FsyncMode,
    /// At this many bytes on disk, appends are refused ([`SpoolError::Full`]).
    pub max_bytes: u64,
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

/// Gauges the spool keeps current, read by metrics and readiness.
#[derive(Debug, Default)]
pub struct SpoolStats {
    /// Events appended and not yet acknowledged by Kafka.
    pub pending_events: AtomicU64,
    /// Bytes of segment files on disk.
    pub bytes: AtomicU64,
    /// Records cut off at start because they were torn or corrupt.
    pub corrupt_records_skipped: AtomicU64,
}

enum Command {
    Append { payload: Vec<u8>, reply: oneshot::Sender<Result<u64, SpoolError>> },
    Ack(u64),
    Close,
}

/// A handle on the spool; cheap to clone, shared by every HTTP worker and the forwarder.
#[derive(Clone)]
pub struct Spool {
    tx: mpsc::Sender<Command>,
    committed: watch::Receiver<u64>,
    stats: Arc<SpoolStats>,
    dir: PathBuf,
    max_bytes: u64,
    /// The first sequence number not acknowledged when the spool was opened: where forwarding starts.
    start_seq: u64,
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
    /// Opens (or creates) the spool: checks every record left by an earlier run, cuts off a torn or
    /// corrupt tail with one log line, and starts the writer thread. Blocking: call before serving.
    pub fn open(config: SpoolConfig) -> Result<(Spool, SpoolThread), SpoolError> {
        let stats = Arc::new(SpoolStats::default());
        let recovered = writer::recover(&config.dir, &stats)?;
        let (tx, rx) = mpsc::channel();
        let (committed_tx, committed) = watch::channel(recovered.last_seq);
        let dir = config.dir.clone();
        let max_bytes = config.max_bytes;
        let start_seq = recovered.acked + 1;
        let w = writer::Writer::new(config, recovered, committed_tx, stats.clone())?;
        let handle = std::thread::Builder::new()
            .name("spool-writer".into())
            .spawn(move || w.run(rx))
            .map_err(SpoolError::Io)?;
        Ok((Spool { tx, committed, stats, dir, max_bytes, start_seq }, SpoolThread(handle)))
    }

    /// Appends one event and resolves once it is as durable as the fsync mode promises. The returned
    /// sequence number orders it among all events.
    pub async fn append(&self, payload: Vec<u8>) -> Result<u64, SpoolError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Command::Append { payload, reply }).map_err(|_| SpoolError::Closed)?;
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

    /// The last durable sequence number, updated after every group commit.
    pub fn committed(&self) -> watch::Receiver<u64> {
        self.committed.clone()
    }

    /// A reader positioned at the oldest event not acknowledged when the spool was opened.
    pub fn reader(&self) -> SpoolReader {
        SpoolReader::new(self.dir.clone(), self.start_seq)
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &Path, max_bytes: u64) -> (Spool, SpoolThread) {
        Spool::open(SpoolConfig { dir: dir.to_owned(), fsync: FsyncMode::Never, max_bytes, observer: None })
            .unwrap()
    }

    fn close((spool, thread): (Spool, SpoolThread)) {
        spool.close();
        drop(spool);
        thread.join();
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
                observer: None,
            }),
            Err(SpoolError::Locked { .. })
        ));
        close((spool, thread));
    }
}
