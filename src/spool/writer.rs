//! The writer thread: group commit, segment rolling, acknowledgements, and recovery at start.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::Instant;

use tokio::sync::watch;

use super::record::{self, Header, HEADER_LEN};
use super::{Command, SpoolConfig, SpoolError, SpoolStats};
use crate::configuration::FsyncMode;

/// At most this many commands are folded into one group commit, so one batch's answers never wait
/// behind an unbounded queue.
const MAX_BATCH: usize = 4096;

const ACK_FILE: &str = "ack";
const ACK_MAGIC: &[u8; 4] = b"TKBA";

#[derive(Debug, Clone)]
pub(super) struct Segment {
    pub last_seq: u64,
    pub bytes: u64,
    pub path: PathBuf,
}

pub(super) struct Recovered {
    segments: VecDeque<Segment>,
    pub last_seq: u64,
    pub acked: u64,
    /// Held (locked) for as long as the writer lives.
    pub lock: File,
}

pub(super) fn segment_path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("{first_seq:020}.seg"))
}

/// The segments in `dir`, oldest first, by the sequence number in their names.
pub(super) fn list_segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let seq = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".seg"))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(seq) = seq {
            out.push((seq, path));
        }
    }
    out.sort();
    Ok(out)
}

/// One step of reading a segment.
pub(super) enum Next {
    Record(u64, Vec<u8>),
    /// Clean end: the file ends exactly at a record boundary.
    End,
    /// A torn or corrupt record starts here.
    Corrupt,
}

pub(super) fn read_next(r: &mut impl Read) -> io::Result<Next> {
    let mut h = [0u8; HEADER_LEN];
    let mut got = 0;
    while got < HEADER_LEN {
        match r.read(&mut h[got..]) {
            Ok(0) => return Ok(if got == 0 { Next::End } else { Next::Corrupt }),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let Some(header) = Header::parse(&h) else {
        return Ok(Next::Corrupt);
    };
    let mut payload = vec![0u8; header.len];
    match r.read_exact(&mut payload) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(Next::Corrupt),
        Err(e) => return Err(e),
    }
    Ok(if header.matches(&payload) { Next::Record(header.seq, payload) } else { Next::Corrupt })
}

/// The acknowledged sequence number, or `None` when the file is missing or damaged.
pub(super) fn read_ack(dir: &Path) -> Option<u64> {
    let b = fs::read(dir.join(ACK_FILE)).ok()?;
    if b.len() != 16 || &b[0..4] != ACK_MAGIC {
        return None;
    }
    let seq = u64::from_le_bytes(b[4..12].try_into().unwrap());
    let crc = u32::from_le_bytes(b[12..16].try_into().unwrap());
    (crc32fast::hash(&b[0..12]) == crc).then_some(seq)
}

fn ack_bytes(seq: u64) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[0..4].copy_from_slice(ACK_MAGIC);
    b[4..12].copy_from_slice(&seq.to_le_bytes());
    let crc = crc32fast::hash(&b[0..12]);
    b[12..16].copy_from_slice(&crc.to_le_bytes());
    b
}

/// Checks every record left by an earlier run. A torn or corrupt record ends its segment: the file is
/// cut there (one warning says where and how much) and everything before it is kept. Segments that are
/// fully acknowledged or empty are removed.
pub(super) fn recover(dir: &Path, stats: &SpoolStats) -> Result<Recovered, SpoolError> {
    let open_err = |source| SpoolError::Open { path: dir.to_owned(), source };
    fs::create_dir_all(dir).map_err(open_err)?;
    // Two bridges appending to one spool would interleave records: the second one refuses to start.
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("lock"))
        .map_err(open_err)?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => return Err(SpoolError::Locked { path: dir.to_owned() }),
        Err(fs::TryLockError::Error(e)) => return Err(open_err(e)),
    }
    let acked_file = read_ack(dir);
    let mut segments = VecDeque::new();
    let mut last_seq = 0u64;
    for (first_seq, path) in list_segments(dir).map_err(open_err)? {
        let file = File::open(&path)?;
        let len = file.metadata()?.len();
        let mut r = BufReader::with_capacity(256 << 10, file);
        let (mut valid_end, mut seg_last, mut records) = (0u64, 0u64, 0u64);
        loop {
            match read_next(&mut r)? {
                Next::Record(seq, payload) if seq > last_seq && seq >= first_seq => {
                    valid_end += (HEADER_LEN + payload.len()) as u64;
                    seg_last = seq;
                    last_seq = seq;
                    records += 1;
                }
                Next::End => break,
                Next::Record(..) | Next::Corrupt => {
                    tracing::warn!(
                        segment = %path.display(),
                        offset = valid_end,
                        skipped_bytes = len - valid_end,
                        kept_records = records,
                        "spool: torn or corrupt record; cutting the segment there and keeping everything before it"
                    );
                    stats.corrupt_records_skipped.fetch_add(1, Ordering::Relaxed);
                    OpenOptions::new().write(true).open(&path)?.set_len(valid_end)?;
                    break;
                }
            }
        }
        let acked = acked_file.unwrap_or(0);
        if records == 0 || seg_last <= acked {
            fs::remove_file(&path)?;
        } else {
            segments.push_back(Segment { last_seq: seg_last, bytes: valid_end, path });
        }
    }
    let acked = match acked_file {
        Some(a) => a,
        None if segments.is_empty() => 0,
        None => {
            if dir.join(ACK_FILE).exists() {
                tracing::warn!("spool: ack file is damaged; every spooled event will be published again");
            }
            0
        }
    };
    // A fresh spool continues numbering after the acknowledged sequence number.
    let last_seq = last_seq.max(acked);
    Ok(Recovered { segments, last_seq, acked, lock })
}

pub(super) struct Writer {
    config: SpoolConfig,
    segment_bytes: u64,
    /// Closed segments, oldest first, then the active one (if any) last.
    segments: VecDeque<Segment>,
    /// The file appends go to; `None` until the first append after start or after it was reclaimed.
    active: Option<File>,
    next_seq: u64,
    acked: u64,
    ack_file: File,
    disk_bytes: u64,
    /// With `fsync=interval`: when the oldest unsynced write happened.
    dirty_since: Option<Instant>,
    /// Set after a write or sync failed in a way that leaves the files in doubt; from then on every
    /// append is refused rather than risk answering OK for what may not be kept.
    failed: bool,
    /// Set by [`Command::Close`]: appends queued behind it are refused.
    closed: bool,
    committed: watch::Sender<u64>,
    stats: Arc<SpoolStats>,
    /// The spool directory's lock, released when the writer exits.
    _lock: File,
}

impl Writer {
    pub fn new(
        config: SpoolConfig,
        recovered: Recovered,
        committed: watch::Sender<u64>,
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
            next_seq: recovered.last_seq + 1,
            acked: recovered.acked,
            ack_file,
            disk_bytes,
            dirty_since: None,
            failed: false,
            closed: false,
            committed,
            stats,
            _lock: recovered.lock,
        };
        w.ack_file.write_all_at(&ack_bytes(w.acked), 0)?;
        w.publish_stats();
        Ok(w)
    }

    pub fn run(mut self, rx: mpsc::Receiver<Command>) {
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
        // Every handle is gone: make what was written durable whatever the mode, for the next start.
        self.sync();
        let _ = self.ack_file.sync_data();
    }

    fn commit(&mut self, batch: &mut Vec<Command>) {
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
                Command::Close => self.closed = true,
                Command::Append { payload, reply } => {
                    if self.closed {
                        let _ = reply.send(Err(SpoolError::Closed));
                        continue;
                    }
                    if self.failed {
                        let _ = reply.send(Err(SpoolError::Failed));
                        continue;
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
                    self.committed.send_replace(self.next_seq - 1);
                    for (seq, reply) in replies {
                        let _ = reply.send(Ok(seq));
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, events = replies.len(), "spool: append failed; answering 503");
                    let kind = e.kind();
                    for (_, reply) in replies {
                        let _ = reply.send(Err(SpoolError::Io(io::Error::new(kind, e.to_string()))));
                    }
                }
            }
        }
        self.publish_stats();
    }

    /// Writes one batch to the active segment and syncs it as the mode says; returns how long the
    /// fsync took, if one ran.
    fn write(&mut self, buf: &[u8], first_seq: u64) -> io::Result<Option<std::time::Duration>> {
        if self.active.is_none() || self.segments.back().is_some_and(|s| s.bytes >= self.segment_bytes) {
            self.roll(first_seq)?;
        }
        let file = self.active.as_mut().expect("rolled above");
        let seg = self.segments.back_mut().expect("active segment is listed");
        if let Err(e) = file.write_all(buf) {
            // Take the partial write back so the file holds only whole records; if even that fails,
            // refuse everything from now on.
            if file.set_len(seg.bytes).is_err() {
                self.failed = true;
            }
            self.next_seq = first_seq;
            return Err(e);
        }
        seg.bytes += buf.len() as u64;
        seg.last_seq = self.next_seq - 1;
        self.disk_bytes += buf.len() as u64;
        match self.config.fsync {
            FsyncMode::Always => {
                let started = Instant::now();
                if let Err(e) = file.sync_data() {
                    // After a failed fsync the kernel may have dropped the dirty pages: nothing written
                    // since can be trusted to be durable.
                    self.failed = true;
                    return Err(e);
                }
                Ok(Some(started.elapsed()))
            }
            FsyncMode::Interval(_) => {
                self.dirty_since.get_or_insert_with(Instant::now);
                Ok(None)
            }
            FsyncMode::Never => Ok(None),
        }
    }

    fn roll(&mut self, first_seq: u64) -> io::Result<()> {
        if let Some(old) = self.active.take() {
            if self.config.fsync != FsyncMode::Never {
                old.sync_data()?;
            }
        }
        let path = segment_path(&self.config.dir, first_seq);
        let file = OpenOptions::new().create_new(true).append(true).open(&path)?;
        if self.config.fsync == FsyncMode::Always {
            // The new file's directory entry must be durable too.
            File::open(&self.config.dir)?.sync_all()?;
        }
        self.segments.push_back(Segment { last_seq: first_seq - 1, bytes: 0, path });
        self.active = Some(file);
        Ok(())
    }

    fn sync(&mut self) {
        if let Some(f) = &self.active {
            let started = Instant::now();
            if let Err(e) = f.sync_data() {
                tracing::error!(error = %e, "spool: fsync failed; refusing new events");
                self.failed = true;
            } else if let Some(o) = &self.config.observer {
                o.committed(0, Some(started.elapsed()));
            }
        }
        self.dirty_since = None;
    }

    /// Kafka has everything up to `seq`: record it and delete segments nothing unacknowledged lives in.
    fn acknowledge(&mut self, seq: u64) {
        if seq <= self.acked {
            return;
        }
        self.acked = seq.min(self.next_seq - 1);
        if let Err(e) = self.ack_file.write_all_at(&ack_bytes(self.acked), 0) {
            tracing::warn!(error = %e, "spool: could not record acknowledgements; they will be published again after a restart");
        }
        while let Some(front) = self.segments.front() {
            let is_active = self.segments.len() == 1 && self.active.is_some();
            if front.last_seq > self.acked || front.bytes == 0 {
                break;
            }
            if is_active {
                self.active = None;
            }
            let seg = self.segments.pop_front().expect("front exists");
            match fs::remove_file(&seg.path) {
                Ok(()) => self.disk_bytes -= seg.bytes,
                Err(e) => {
                    tracing::warn!(segment = %seg.path.display(), error = %e, "spool: could not delete an acknowledged segment");
                    self.disk_bytes -= seg.bytes;
                }
            }
        }
    }

    fn publish_stats(&self) {
        let committed = *self.committed.borrow();
        self.stats.pending_events.store(committed.saturating_sub(self.acked), Ordering::Relaxed);
        self.stats.bytes.store(self.disk_bytes, Ordering::Relaxed);
    }
}
