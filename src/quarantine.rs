//! The quarantine: where an event goes that Kafka refuses for good on the topic and on the dead-letter
//! topic too, so that it is never dropped.
//!
//! Why not keep retrying it in the spool: the record would hold every later one behind it until an
//! operator raised a topic limit, and the spool would fill and refuse webhooks. Why not drop it: it
//! was answered OK. So it is parked in `<spool dir>/quarantine/`, one file per event (the spool record
//! encoding, [`KafkaRecord::encode`](crate::message::KafkaRecord::encode)), made durable before the spool lets
//! go of it; `bridge_kafka_quarantined_total` counts it and the `BridgeEventQuarantined` alert fires.
//! `tim-kafka-bridge drain` publishes what the quarantine holds once the topic takes it (after the
//! cause, usually a topic's `max.message.bytes`, is fixed) and removes each file once Kafka
//! acknowledged it. A parked event comes out of its group's order: like a dead-lettered one, it was
//! going to.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// The quarantine directory of a spool directory.
#[derive(Debug, Clone)]
pub struct Quarantine {
    dir: PathBuf,
}

impl Quarantine {
    pub fn of_spool(spool_dir: &Path) -> Self {
        Self { dir: spool_dir.join("quarantine") }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Parks the record spooled as `seq` (its encoded bytes): written to a temporary file, synced,
    /// renamed, and the directory synced, so that once this returns `Ok` the event survives a crash.
    pub fn park(&self, seq: u64, record: &[u8]) -> io::Result<PathBuf> {
        failpoint!("quarantine::park", |arg| Err(crate::spool::injected(arg)));
        if !self.dir.exists() {
            fs::create_dir_all(&self.dir)?;
            // The new directory's entry must be durable too.
            if let Some(parent) = self.dir.parent() {
                File::open(parent)?.sync_all()?;
            }
        }
        // The time in the name too: a sequence number can come again (a spool started afresh), and a
        // parked event is never replaced by another.
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let name = format!("{seq:020}-{now}");
        let path = self.dir.join(format!("{name}.rec"));
        let tmp = self.dir.join(format!("{name}.rec.tmp"));
        {
            let mut f = File::create(&tmp)?;
            f.write_all(record)?;
            f.sync_all()?;
        }
        fs::rename(&tmp, &path)?;
        File::open(&self.dir)?.sync_all()?;
        Ok(path)
    }

    /// The parked records, oldest first (by the sequence number they had in the spool, then the time
    /// they were parked).
    pub fn list(&self) -> io::Result<Vec<PathBuf>> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        for entry in entries {
            let path = entry?.path();
            if path.extension().is_some_and(|x| x == "rec") {
                out.push(path);
            }
        }
        out.sort();
        Ok(out)
    }

    /// Removes a parked record once Kafka has it (the directory synced after).
    pub fn remove(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)?;
        File::open(&self.dir)?.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_parked_record_reads_back_whole_in_order_and_is_gone_once_removed() {
        let spool = tempfile::tempdir().unwrap();
        let q = Quarantine::of_spool(spool.path());
        assert!(q.list().unwrap().is_empty(), "no directory yet: nothing parked");
        q.park(12, b"twelve").unwrap();
        q.park(3, b"three").unwrap();
        let parked = q.list().unwrap();
        assert_eq!(parked.len(), 2);
        assert_eq!(fs::read(&parked[0]).unwrap(), b"three");
        assert_eq!(fs::read(&parked[1]).unwrap(), b"twelve");
        q.remove(&parked[0]).unwrap();
        assert_eq!(q.list().unwrap(), vec![parked[1].clone()]);
    }
}
