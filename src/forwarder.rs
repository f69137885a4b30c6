//! Spool → Kafka: publishes spooled events in order and acknowledges the spool only after delivery.
//!
//! Up to [`WINDOW`] records are in flight at once, and their reports are taken in the order they were
//! sent (`FuturesOrdered`), so the acknowledged position is always a clean prefix of the spool.
//!
//! - **Retriable failure** (Kafka down, timeout): nothing after the failed record is acknowledged. The
//!   forwarder stops sending, lets what is in flight settle, waits (exponential backoff up to
//!   [`MAX_BACKOFF`]) and publishes again from the first unacknowledged record, one record at a time
//!   until one gets through. Records in flight at the failure may reach Kafka twice; the `event_id`
//!   lets consumers drop the copy. No record is ever dropped for being late.
//! - **Permanent refusal** (record too large, invalid): Kafka judges a whole batch, so the records of
//!   a refused batch are sent again one at a time; the one refused alone goes to the dead-letter topic
//!   with the reason, and the records behind it carry on.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{FuturesOrdered, StreamExt};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::domain::GroupChangeEvent;
use crate::publisher::{error_kind, Pending, PublishError, Publisher};
use crate::spool::{Spool, SpoolReader, SpooledRecord};

/// Most records in flight to Kafka at once: enough to keep librdkafka's batches full, small enough
/// that a retry republishes little.
pub const WINDOW: usize = 4096;
/// Most bytes read from the spool in one step.
const READ_BYTES: usize = 4 << 20;
const MIN_BACKOFF: Duration = Duration::from_millis(100);
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// What the forwarder reports while it runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// Every spooled record up to this sequence number is in Kafka (or on the dead-letter topic).
    pub acked_seq: u64,
    /// When the oldest record not yet in Kafka was received (ms since epoch), if any is pending.
    pub oldest_pending_received_ms: Option<i64>,
}

pub struct Forwarder {
    spool: Spool,
    publisher: Arc<Publisher>,
    reader: Option<SpoolReader>,
    progress: watch::Sender<Progress>,
}

struct InFlight {
    seq: u64,
    received_at_ms: i64,
    event_time_ms: i64,
}

impl Forwarder {
    pub fn new(spool: Spool, publisher: Arc<Publisher>) -> (Self, watch::Receiver<Progress>) {
        let reader = spool.reader();
        let start =
            Progress { acked_seq: reader.position().saturating_sub(1), oldest_pending_received_ms: None };
        let (progress, rx) = watch::channel(start);
        (Self { spool, publisher, reader: Some(reader), progress }, rx)
    }

    /// Runs until the task is dropped. Cancel-safe: whatever was not acknowledged stays in the spool.
    pub async fn run(mut self) {
        let mut committed = self.spool.committed();
        let mut acked = self.progress.borrow().acked_seq;
        let mut acked_sent = acked;
        let mut inflight: FuturesOrdered<Tagged> = FuturesOrdered::new();
        let mut meta: VecDeque<InFlight> = VecDeque::new();
        // Set by a failure: when to publish again from the first unacknowledged record.
        let mut retry_at: Option<Instant> = None;
        // The oldest record a failure left pending (for the produce-lag gauge).
        let mut stalled_received_ms: Option<i64> = None;
        let mut backoff = MIN_BACKOFF;
        // How many records to send one at a time after a failure: one to probe a Kafka that was
        // down, or every record of a batch Kafka refused, to find the one it refuses.
        let mut solo_left = 0usize;

        loop {
            let window = if solo_left > 0 { 1 } else { WINDOW };
            let position = self.reader.as_ref().map_or(u64::MAX, SpoolReader::position);
            let upto = *committed.borrow_and_update();
            let have_more = position <= upto;
            if retry_at.is_none() && have_more && inflight.len() < window {
                let batch = self.read(upto, window - inflight.len()).await;
                if batch.is_empty() {
                    // Committed but not readable yet (a read error was logged): do not spin.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                for record in batch {
                    match self.dispatch(record, solo_left > 0) {
                        Ok((tagged, m)) => {
                            inflight.push_back(tagged);
                            meta.push_back(m);
                        }
                        Err((seq, received_at_ms, e)) => {
                            self.count_error(&e);
                            tracing::warn!(error = %e, seq, "could not enqueue to Kafka; retrying from the spool");
                            stalled_received_ms.get_or_insert(received_at_ms);
                            retry_at = Some(Instant::now() + backoff);
                            backoff = (backoff * 2).min(MAX_BACKOFF);
                            solo_left = solo_left.max(1);
                            break;
                        }
                    }
                }
                self.report(acked, &meta, stalled_received_ms);
                continue;
            }

            tokio::select! {
                Some(done) = inflight.next(), if !inflight.is_empty() => {
                    let m = meta.pop_front().expect("one entry per record in flight");
                    match done.result {
                        Ok(()) if retry_at.is_none() => {
                            let metrics = self.publisher.metrics();
                            let now = now_ms();
                            metrics.kafka_delivered.inc();
                            metrics.kafka_delivery_seconds.observe((now - m.received_at_ms).max(0) as f64 / 1e3);
                            metrics.event_age_seconds.observe((now - m.event_time_ms).max(0) as f64 / 1e3);
                            acked = m.seq;
                            backoff = MIN_BACKOFF;
                            solo_left = solo_left.saturating_sub(1);
                            stalled_received_ms = None;
                        }
                        // Delivered after an earlier failure: it will be published again (in order).
                        Ok(()) => {}
                        Err(e) if retry_at.is_some() => self.count_error(&e),
                        Err(PublishError::Permanent(e)) => {
                            self.publisher.metrics().kafka_errors.with_label_values(&[&error_kind(&e)]).inc();
                            // Kafka refused a whole batch (its size counts against the topic's limit):
                            // send its records alone; the one still refused alone is dead-lettered.
                            let batch = meta.len() + 1;
                            tracing::info!(error = %e, seq = m.seq, records = batch,
                                "Kafka refused a batch; publishing its records one at a time");
                            retry_at = Some(Instant::now());
                            solo_left = batch;
                            stalled_received_ms = Some(m.received_at_ms);
                        }
                        Err(e) => {
                            self.count_error(&e);
                            tracing::warn!(error = %e, seq = m.seq, backoff_ms = backoff.as_millis() as u64,
                                "Kafka delivery failed; the event stays in the spool and is retried");
                            retry_at = Some(Instant::now() + backoff);
                            backoff = (backoff * 2).min(MAX_BACKOFF);
                            solo_left = solo_left.max(1);
                            stalled_received_ms = Some(m.received_at_ms);
                        }
                    }
                    if acked != acked_sent && (inflight.is_empty() || acked - acked_sent >= 256) {
                        self.spool.ack(acked);
                        acked_sent = acked;
                    }
                    self.report(acked, &meta, stalled_received_ms);
                }
                _ = tokio::time::sleep_until(retry_at.unwrap_or_else(Instant::now)), if retry_at.is_some() && inflight.is_empty() => {
                    retry_at = None;
                    if let Some(r) = self.reader.as_mut() {
                        r.seek(acked + 1);
                    }
                }
                changed = committed.changed(), if !have_more => {
                    if changed.is_err() {
                        return;
                    }
                }
            }
        }
    }

    /// Reads the next records on the blocking pool (file I/O never runs on the async workers).
    async fn read(&mut self, committed: u64, max: usize) -> Vec<SpooledRecord> {
        let mut reader = self.reader.take().expect("reader is put back after every read");
        let (reader, batch) = tokio::task::spawn_blocking(move || {
            let batch = reader.read(committed, max, READ_BYTES);
            (reader, batch)
        })
        .await
        .expect("spool read does not panic");
        self.reader = Some(reader);
        batch.unwrap_or_else(|e| {
            tracing::error!(error = %e, "spool read failed; retrying");
            Vec::new()
        })
    }

    /// Enqueues one record; a record Kafka refuses outright is dead-lettered here. A `solo` record is
    /// one Kafka may have refused only for its neighbours: refused alone, it is dead-lettered; refused
    /// in a batch, the failure goes back to the loop.
    #[allow(clippy::result_large_err)]
    fn dispatch(
        &self,
        record: SpooledRecord,
        solo: bool,
    ) -> Result<(Tagged, InFlight), (u64, i64, PublishError)> {
        let seq = record.seq;
        let event = match GroupChangeEvent::from_json(&record.payload) {
            Ok(e) => e,
            Err(e) => {
                // Checksummed, so written by a bridge whose format this one cannot read.
                tracing::error!(seq, error = %e, "spooled record is not an event this version reads; skipping it");
                let now = now_ms();
                return Ok((skipped(), InFlight { seq, received_at_ms: now, event_time_ms: now }));
            }
        };
        let received_at_ms = event.received_at_ms();
        let m = InFlight { seq, received_at_ms, event_time_ms: event.event_time().as_millis() };
        match self.publisher.send(&event, &record.payload) {
            Ok(p) => Ok((delivered(p, event, record.payload, self.publisher.clone(), solo), m)),
            Err(PublishError::Permanent(e)) => {
                let p = dead_lettered(e.to_string(), event, record.payload, self.publisher.clone());
                Ok((p, m))
            }
            Err(e) => Err((seq, received_at_ms, e)),
        }
    }

    fn count_error(&self, e: &PublishError) {
        let (PublishError::Retriable(k) | PublishError::Permanent(k)) = e;
        self.publisher.metrics().kafka_errors.with_label_values(&[&error_kind(k)]).inc();
    }

    fn report(&self, acked_seq: u64, meta: &VecDeque<InFlight>, stalled: Option<i64>) {
        let oldest = stalled.or_else(|| meta.front().map(|m| m.received_at_ms));
        let pending = *self.spool.committed().borrow() > acked_seq;
        self.progress.send_if_modified(|p| {
            let next =
                Progress { acked_seq, oldest_pending_received_ms: if pending { oldest } else { None } };
            let changed = *p != next;
            *p = next;
            changed
        });
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// The outcome of one record, once Kafka (or the dead-letter topic) has answered.
struct Done {
    result: Result<(), PublishError>,
}

/// A record's delivery, with the dead-letter detour for a permanent refusal folded in, so the main
/// loop sees one result per record, in order.
type Tagged = std::pin::Pin<Box<dyn std::future::Future<Output = Done> + Send>>;

fn skipped() -> Tagged {
    Box::pin(async { Done { result: Ok(()) } })
}

fn delivered(
    p: Pending,
    event: GroupChangeEvent,
    payload: Vec<u8>,
    publisher: Arc<Publisher>,
    solo: bool,
) -> Tagged {
    Box::pin(async move {
        match p.await {
            Ok(_) => Done { result: Ok(()) },
            Err(PublishError::Permanent(e)) if solo => {
                dead_letter(e.to_string(), &event, &payload, &publisher).await
            }
            Err(e) => Done { result: Err(e) },
        }
    })
}

fn dead_lettered(
    reason: String,
    event: GroupChangeEvent,
    payload: Vec<u8>,
    publisher: Arc<Publisher>,
) -> Tagged {
    Box::pin(async move { dead_letter(reason, &event, &payload, &publisher).await })
}

async fn dead_letter(
    reason: String,
    event: &GroupChangeEvent,
    payload: &[u8],
    publisher: &Publisher,
) -> Done {
    tracing::error!(
        event_id = event.event_id().as_str(),
        group_id = event.group_id().as_str(),
        reason = %reason,
        dlq_topic = publisher.dlq_topic(),
        "Kafka refused the event for good; sending it to the dead-letter topic"
    );
    let sent = match publisher.send_dead_letter(event, payload, &reason) {
        Ok(p) => p.await,
        Err(e) => Err(e),
    };
    match sent {
        Ok(_) => {
            publisher.metrics().kafka_dead_lettered.inc();
            Done { result: Ok(()) }
        }
        // The dead-letter topic refuses it too: nothing more can be done; say so loudly.
        Err(PublishError::Permanent(e)) => {
            tracing::error!(event_id = event.event_id().as_str(), error = %e,
                "the dead-letter topic refused the event too; it is dropped");
            Done { result: Ok(()) }
        }
        Err(e) => Done { result: Err(e) },
    }
}
