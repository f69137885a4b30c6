//! Segment files, as the writer and the reader both see them: how a segment is named and found, and
//! the one report of a damaged stretch either may meet (recovery at start, the reader while
//! forwarding).
//!
//! A segment is an append-only run of [records](crate::record) in a file named by the sequence number of
//! its first record (`NNNNNNNNNNNNNNNNNNNN.seg`, 20 digits so names sort as numbers do). What is inside
//! a record is [`record`](crate::record)'s; who writes, rolls and deletes segments is the writer's.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use crate::SpoolStats;

/// The file of the segment whose first record is `first_seq`.
pub(crate) fn segment_path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("{first_seq:020}.seg"))
}

/// The segments in `dir`, oldest first, by the sequence number in their names.
pub(crate) fn list_segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
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

/// One warning for a damaged stretch and the count of the records it cost (those not yet delivered).
pub(crate) fn report_damage(
    stats: &SpoolStats,
    segment: &dyn std::fmt::Display,
    offset: u64,
    bytes: usize,
    lost_from: u64,
    lost_to: u64,
    delivered_upto: u64,
) {
    let lost = (lost_from.max(delivered_upto + 1)..=lost_to).count() as u64;
    if lost == 0 {
        tracing::info!(%segment, offset, bytes, "spool: damaged bytes among records already in Kafka; skipped");
        return;
    }
    stats.corrupt_records.fetch_add(lost, Ordering::Relaxed);
    tracing::error!(
        %segment,
        offset,
        damaged_bytes = bytes,
        lost_from_seq = lost_from.max(delivered_upto + 1),
        lost_to_seq = lost_to,
        lost_records = lost,
        "spool: damaged record(s) cannot be read and are lost; reading resumes at the next valid record"
    );
}
