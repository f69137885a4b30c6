//! Spool → Kafka: publishes spooled records in order and acknowledges the spool only after delivery.
//!
//! Up to [`WINDOW`] records (and [`WINDOW_BYTES`]) are in flight at once. librdkafka reports on each
//! through one callback into one channel ([`Report`], tagged with the record's sequence number and
//! the producer's generation); reports of different partitions arrive in any order, and the loop
//! settles records strictly in the order they were sent, so the acknowledged position is always a
//! clean prefix of the spool. The loop is a small state machine ([`State`]):
//!
//! - **Delivering**: records go out as they are committed.
//! - **Recovering** after a failure: nothing new is sent. Reports of records before the failed one
//!   still count; the ones after it do not (they will be sent again, in order). Once everything in
//!   flight has settled and the backoff (100 ms doubling to [`MAX_BACKOFF`]) has passed, publishing
//!   starts again from the first unacknowledged record. After a fatal producer error a new producer is
//!   built first; after [`MAX_FATAL_RESTARTS`] in a row without a delivery the forwarder gives up with
//!   an error (the process exits non-zero so an orchestrator restarts it).
//!
//!   A producer can also wedge without saying so: records in flight, Kafka answering, and no report
//!   for minutes (seen after a broker restart while the producer held a backlog). When the oldest
//!   record in flight has not settled for the stall time (`BRIDGE_KAFKA_STALL_SECS`; reports of later
//!   records do not count: one stuck partition can hold it while the others deliver) and Kafka answered a
//!   metadata request (asked through another client) at that check and at the one a stall time
//!   before, the producer is replaced the same way (counted as a restart, but not towards
//!   giving up: Kafka may be slow for reasons a new producer cannot fix, such as too few in-sync
//!   replicas). While Kafka does not answer, waiting is right and nothing is replaced.
//! - **Isolating**: one record at a time: to probe a Kafka that failed, or to find, among the records
//!   of a batch Kafka refused for good, the one it refuses alone (that one goes to the dead-letter
//!   topic with the reason; the rest flow on).
//! - **Draining** at shutdown: nothing new is sent; what is in flight settles, the final position is
//!   acknowledged to the spool, and the forwarder returns.
//!
//! **A partition a producer has not written to yet is warmed with one record.** A broker keeps no
//! state for a producer id it has not seen on a partition (a new producer, or one idle there longer
//! than `producer.id.expiration.ms`), so it takes that producer's first batch there at any sequence
//! number. If that first batch fails (seen: "not leader" from a partition created a moment before)
//! while a later batch of the same partition is already in flight, the broker takes the later one,
//! and librdkafka, which trusts the broker to refuse a gap, reports the failed batch as delivered
//! ("implicitly acked") though it is not on the topic. So until the current producer has a
//! confirmation from a partition (or none for [`COLD_AFTER`]), at most one record to it is in
//! flight; while the topic's partition count is unknown, at most one such record in all. The rest
//! wait in order (`Books::held`). As a second guard, a delivery reported without an offset (librdkafka's
//! mark of an implicit acknowledgement) counts as a failure: the record is published again.
//!
//! Records in flight at a failure may reach Kafka twice (the `event_id` lets consumers drop the
//! copy); none is ever dropped or reordered. In spool mode librdkafka never expires a record (the
//! configuration refuses a `message.timeout.ms`), so a retriable failure is rare: Kafka refusing a
//! record for good or a fatal producer error.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use rdkafka::message::Headers as _;
use rdkafka::Message as _;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::exactly_once::{ExactlyOnce, Position, PositionError};
use crate::message::{read_spooled, KafkaRecord, KafkaRecordRef};
use crate::publisher::{
    error_kind, KafkaSettings, Outcome, Pending, PublishError, Publisher, Report, TxnError,
};
use crate::quarantine::Quarantine;
use crate::spool::{Committed, Spool, SpoolReader, SpooledRecord};

/// Most records in flight to Kafka at once: enough to keep librdkafka's batches full, small enough
/// that a retry republishes little.
pub const WINDOW: usize = 4096;
/// Most payload bytes in flight at once (each record is held by the forwarder and by librdkafka).
pub const WINDOW_BYTES: usize = 16 << 20;
/// Most bytes read from the spool in one step.
const READ_BYTES: usize = 4 << 20;
const MIN_BACKOFF: Duration = Duration::from_millis(100);
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Fatal producer errors in a row, each followed by a new producer, before the forwarder gives up.
pub const MAX_FATAL_RESTARTS: u32 = 5;
/// Acknowledge the spool at least every this many records.
const ACK_EVERY: u64 = 256;

/// What the forwarder reports while it runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// Every spooled record up to this sequence number is in Kafka (or on the dead-letter topic).
    pub acked_seq: u64,
    /// When the oldest record not yet in Kafka was received (ms since epoch), if any is pending.
    pub oldest_pending_received_ms: Option<i64>,
    /// Since when reading the spool fails (ms since epoch), if the last read failed: `/healthz` turns
    /// unhealthy once it has for [`READ_FAILURE_GRACE`].
    pub read_failing_since_ms: Option<i64>,
}

/// How long the spool may stay unreadable (an I/O error on every try) before `/healthz` asks for a
/// restart, which starts past the unreadable region.
pub const READ_FAILURE_GRACE: Duration = Duration::from_secs(10);
/// A record the producer has not confirmed this long after it confirmed a later record of the same
/// partition is one it lost track of (an idempotent producer confirms a partition's records in
/// order): it is replaced at once, without waiting for the stall time. Also how often that is looked
/// at.
pub const OVERTAKEN_AFTER: Duration = Duration::from_secs(5);
/// A partition the producer has had no confirmation from for this long is warmed again with one
/// record (see the module docs): well under Kafka's default `producer.id.expiration.ms` of a day.
pub const COLD_AFTER: Duration = Duration::from_secs(600);
/// The longest wait between two tries of a failing spool read.
const MAX_READ_RETRY: Duration = Duration::from_secs(1);

/// Why the forwarder stopped before it was told to.
#[derive(Debug, thiserror::Error)]
pub enum ForwarderError {
    #[error("the Kafka producer failed for good {restarts} times in a row without delivering anything; last: {last}")]
    ProducerKeepsFailing { restarts: u32, last: String },
    #[error("cannot build a new Kafka producer: {0}")]
    Rebuild(#[from] crate::publisher::ProducerConfigError),
    #[error("another process publishes spool {spool_id} (same transactional id; a copy of this spool directory?) and fenced this bridge; stopping without fencing it back: {reason}")]
    Fenced { spool_id: String, reason: String },
    #[error("Kafka transactions cannot start: {0}")]
    Transactions(TxnError),
    #[error(transparent)]
    Position(#[from] PositionError),
}

/// What the loop is doing; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    Delivering,
    Recovering {
        /// The first record that failed: reports of records before it still count.
        failed_seq: u64,
        /// When to publish again (once nothing is in flight).
        until: Instant,
        /// Which producer publishes again.
        producer: Producer,
        /// How many records to send one at a time afterwards.
        isolate: usize,
    },
    Isolating {
        left: usize,
    },
    Draining {
        /// A failure while draining: reports from this record on do not count.
        failed_seq: Option<u64>,
    },
}

impl State {
    /// Whether a successful report of record `seq` moves the acknowledged position.
    fn counts(&self, seq: u64) -> bool {
        match self {
            State::Recovering { failed_seq, .. } | State::Draining { failed_seq: Some(failed_seq) } => {
                seq < *failed_seq
            }
            _ => true,
        }
    }

    fn window(&self) -> usize {
        match self {
            State::Delivering => WINDOW,
            State::Isolating { .. } => 1,
            State::Recovering { .. } | State::Draining { .. } => 0,
        }
    }
}

/// Which producer publishes again once a recovery ends.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Producer {
    /// The same one: a delivery failed, or Kafka refused a batch. Everything in flight settles first.
    Same,
    /// A new one, after librdkafka's fatal error: the old one may never report again, so its records
    /// are abandoned with it. Counts towards giving up ([`MAX_FATAL_RESTARTS`]).
    NewAfterFatal,
    /// A new one, because it confirmed nothing while Kafka answered, or lost track of a record. Does
    /// not count towards giving up: Kafka may be slow for reasons a new producer cannot fix.
    NewAfterStall,
}

/// Tells the forwarder to wind down: `Some(deadline)` means publish what is committed, then stop,
/// and stop sending anything new at the deadline in any case.
pub type StopSignal = watch::Receiver<Option<Instant>>;

pub struct Forwarder {
    spool: Spool,
    publisher: Arc<Publisher>,
    reader: Option<SpoolReader>,
    progress: watch::Sender<Progress>,
    /// The main producer's delivery reports (see [`Publisher::send_spooled`]).
    reports: mpsc::UnboundedReceiver<Report>,
    /// How long records may stay in flight with no report before the producer is suspected.
    stall_after: Duration,
    /// Set only by the `forwarder::wedge` failpoint: the producer swallows records until replaced.
    wedged: std::sync::atomic::AtomicBool,
    /// Where an event refused by both topics is parked.
    quarantine: Quarantine,
    /// The reader of records spooled in format 1 (the bare event JSON), which only the event module
    /// knows.
    legacy: LegacyReader,
    /// Exactly-once mode (see [`crate::exactly_once`]); `None`: at least once.
    eos: Option<Eos>,
}

/// What the forwarder needs in exactly-once mode.
pub struct Eos {
    pub settings: ExactlyOnce,
    /// The spool's id: the position record's key.
    pub spool_id: String,
    /// For reading the position again after a new producer fenced the old one.
    pub kafka: KafkaSettings,
}

/// How one try at opening transactions ended, short of success.
enum Opening {
    /// Kafka did not answer as needed (yet): try again.
    Retry(String),
    Fail(ForwarderError),
}

/// The longest one `init_transactions` call blocks: a retriable timeout resumes at the next call, and
/// the stop signal is looked at in between.
const INIT_TRY: Duration = Duration::from_secs(10);

/// The longest one `abort_transaction` call blocks before the producer is replaced instead.
const ABORT_TRY: Duration = Duration::from_secs(5);

/// The open transaction (exactly-once mode).
struct Txn {
    began: Instant,
    /// Records sent (or settled in place) in it.
    records: usize,
    /// Delivered records' receive and event times, for the latency metrics once it commits.
    delivered: Vec<(i64, i64)>,
}

/// Turns a record spooled in format 1 into a message (see [`read_spooled`]).
pub type LegacyReader = fn(&[u8]) -> Result<KafkaRecord, String>;

/// One record in flight: what the loop needs once its report arrives.
struct InFlight {
    seq: u64,
    bytes: usize,
    received_at_ms: i64,
    event_time_ms: i64,
    /// Sent alone (isolating): a permanent refusal is this record's own, and it is dead-lettered.
    solo: bool,
    /// Its outcome, once reported (records settle in send order, reports arrive in any).
    outcome: Option<Result<(), PublishError>>,
    /// Kafka's murmur2 of its key (where it lands: see [`crate::partition`]); `None` without a key.
    key_hash: Option<i32>,
    /// When it was handed to the producer.
    sent_at: Instant,
    /// Exactly-once mode: the CRC-32 of its spooled bytes (the position's fingerprint); else 0.
    crc: u32,
}

impl InFlight {
    /// A record Kafka acknowledged before (see `Books::delivered_ahead`), settled as delivered.
    fn already_delivered(record: &SpooledRecord) -> Self {
        let (received_at_ms, event_time_ms) = match KafkaRecordRef::parse(&record.payload) {
            Ok(m) => (m.received_at_ms, m.event_time_ms),
            Err(_) => (crate::now_ms(), crate::now_ms()),
        };
        Self {
            seq: record.seq,
            bytes: record.payload.len(),
            received_at_ms,
            event_time_ms,
            solo: false,
            outcome: Some(Ok(())),
            key_hash: None,
            sent_at: Instant::now(),
            crc: crc32fast::hash(&record.payload),
        }
    }
}

/// A record on its way to the dead-letter topic: its sequence number and the outcome.
type DeadLetterSend =
    std::pin::Pin<Box<dyn std::future::Future<Output = (u64, Result<(), PublishError>)> + Send>>;

/// The loop's bookkeeping, apart from its state: the acknowledged position, the window in flight,
/// the retry state, the stall clock, and what the loop knows of the producer and the topic.
struct Books {
    acked: u64,
    acked_sent: u64,
    window: Window,
    retry: Retry,
    clock: StallClock,
    /// The generation of the producer whose reports count (a replaced producer's are stale).
    generation: u64,
    /// Reading the spool fails: since when (ms since epoch) and how many tries in a row.
    read_failing: Option<(i64, u32)>,
    /// After a failed read, when to try the next one (meanwhile reports are taken as usual).
    next_read_at: Option<Instant>,
    /// Records after the first unacknowledged one that a producer replaced since (a stall, a fatal
    /// error) had confirmed, in increasing order: publishing again from the spool skips them, so a
    /// stall confined to some partitions does not republish what the others delivered. (With the
    /// idempotent producer nothing later on a partition is confirmed before what is stuck on it, so
    /// skipping keeps each partition's order.)
    delivered_ahead: VecDeque<u64>,
    /// Per partition, the greatest sequence number the current producer confirmed there, and when
    /// it last confirmed one: a partition missing here, or quiet for [`COLD_AFTER`], is cold.
    confirmed: std::collections::HashMap<i32, (u64, Instant)>,
    /// Records read but not sent yet, in order: the first waits for its partition to warm up.
    held: VecDeque<SpooledRecord>,
    /// The first of `held` waits: nothing more is sent until a report or a dead-letter outcome
    /// arrives (or, while the partition count is unknown, a second has passed).
    gated: bool,
    /// Reports taken in this wake-up that confirmed a record only implicitly (logged once per wake-up).
    unconfirmed: usize,
    /// When the partition count was last asked for (at most once a second while it is unknown).
    partitions_asked: Option<Instant>,
    /// The topic's partition count, once read (for where a record lands).
    partitions: Option<i32>,
    /// Exactly-once mode: the open transaction, if any.
    txn: Option<Txn>,
    /// Exactly-once mode: the position last committed (`acked` is then what the open transaction
    /// holds so far). At least once: equal to `acked`.
    committed: u64,
    /// Exactly-once mode: the CRC-32 of record `acked`'s, and of record `committed`'s, spooled bytes.
    acked_crc: u32,
    committed_crc: u32,
    /// Exactly-once mode: the generation of the producer whose `init_transactions` succeeded (a
    /// second call on the same producer is refused; a later try only reads the position again).
    initialized: Option<u64>,
    /// Exactly-once mode: records since the last commit that went to the dead-letter topic (or the
    /// quarantine) outside the transaction: an abort does not take them back, so they are not sent
    /// again.
    dead_lettered: std::collections::BTreeSet<u64>,
}

/// What is in flight.
#[derive(Default)]
struct Window {
    /// The records sent and not yet settled, in send order (increasing sequence numbers).
    inflight: VecDeque<InFlight>,
    /// Their payload bytes.
    bytes: usize,
    /// Dead-letter sends under way (rare: records Kafka refuses for good).
    dead_letter_sends: FuturesUnordered<DeadLetterSend>,
}

/// How the loop backs off after failures.
struct Retry {
    backoff: Duration,
    /// Fatal producer errors since the last delivery.
    fatal_in_a_row: u32,
    /// The oldest record a failure left pending (for the produce-lag gauge).
    stalled_received_ms: Option<i64>,
}

/// When the producer last showed it is alive, and what the last checks saw.
struct StallClock {
    /// When the front record last settled, or the window went from empty to busy.
    last_report: Instant,
    /// Kafka answered at the last stall check too: a producer still silent one stall time after
    /// Kafka was seen answering is wedged (one that is reconnecting after an outage is not).
    answered_at_last_check: bool,
    /// When to look next whether the oldest record in flight was overtaken on its partition.
    next_overtaken_check: Instant,
}

impl Forwarder {
    /// `stall_after`: see the module docs (`BRIDGE_KAFKA_STALL_SECS`). `legacy`: the reader of records
    /// spooled in format 1.
    /// `reports`: the receiving end of the channel the publisher was built with
    /// ([`Confirmations::Reports`](crate::publisher::Confirmations::Reports)).
    pub fn new(
        spool: Spool,
        publisher: Arc<Publisher>,
        reports: mpsc::UnboundedReceiver<Report>,
        stall_after: Duration,
        legacy: LegacyReader,
    ) -> (Self, watch::Receiver<Progress>) {
        let reader = spool.reader();
        let quarantine = Quarantine::of_spool(spool.dir());
        let start = Progress {
            acked_seq: reader.position().saturating_sub(1),
            oldest_pending_received_ms: None,
            read_failing_since_ms: None,
        };
        let (progress, rx) = watch::channel(start);
        (
            Self {
                spool,
                publisher,
                reader: Some(reader),
                progress,
                reports,
                stall_after,
                wedged: Default::default(),
                quarantine,
                legacy,
                eos: None,
            },
            rx,
        )
    }

    /// Publishes in Kafka transactions (see [`crate::exactly_once`]). The transactions are opened
    /// when [`run`](Self::run) starts (retried while Kafka does not answer; webhooks are spooled
    /// meanwhile), and publishing resumes right after the position last committed.
    pub fn exactly_once(mut self, eos: Eos) -> Self {
        self.eos = Some(eos);
        self
    }

    /// Runs until stopped through `stop` (then returns `Ok` once the final position is acknowledged)
    /// or until it cannot go on. Whatever was not acknowledged stays in the spool. Each turn of the
    /// loop has three phases: wind down if stopping ([`winding_down`](Self::winding_down)), send more
    /// if there is room ([`send_more`](Self::send_more)), else wait for what comes next
    /// ([`wait`](Self::wait)).
    pub async fn run(mut self, mut stop: StopSignal) -> Result<(), ForwarderError> {
        let mut committed = self.spool.committed();
        let mut b = self.books();
        if self.eos.is_some() && !self.open_transactions(&mut b, Some(&mut stop)).await? {
            self.finish(&b);
            return Ok(());
        }
        let mut state = State::Delivering;
        let mut stopping: Option<Stopping> = None;
        loop {
            let upto = *committed.borrow_and_update();
            if let (Some(deadline), None) = (*stop.borrow_and_update(), &stopping) {
                stopping = Some(Stopping::new(deadline));
            }
            let position = self.reader.as_ref().map_or(u64::MAX, SpoolReader::position);
            let have_more = position <= upto.seq || !b.held.is_empty();
            if let Some(s) = &stopping {
                match self.winding_down(state, &b, s, have_more) {
                    Some(next) => state = next,
                    None => {
                        self.abort_left_open(&mut b).await;
                        self.finish(&b);
                        return Ok(());
                    }
                }
            }
            if self.publisher.refit_pending()
                && stopping.is_none()
                && matches!(state, State::Delivering | State::Isolating { .. })
            {
                // The topic takes smaller batches now: nothing more goes out until what is in flight
                // has settled and a producer that fits them is built (in `resume`).
                tracing::info!(
                    in_flight = b.window.inflight.len(),
                    "refitting the producer to the topic's smaller limit once what is in flight has settled"
                );
                state = State::Recovering {
                    failed_seq: u64::MAX,
                    until: Instant::now(),
                    producer: Producer::Same,
                    isolate: 1,
                };
            }
            let mut room = if b.gated || b.next_read_at.is_some() {
                0
            } else {
                state.window().saturating_sub(b.window.inflight.len())
            };
            if let Some(eos) = &self.eos {
                // A transaction takes at most its count; once due, nothing more goes into it.
                let (taken, due) = b.txn.as_ref().map_or((0, false), |t| (t.records, t.due(&eos.settings)));
                room = if due { 0 } else { room.min(eos.settings.commit_records.saturating_sub(taken)) };
            }
            let sending = have_more && room > 0 && b.window.bytes < WINDOW_BYTES;
            if !sending
                && b.txn.is_some()
                && b.window.inflight.is_empty()
                && b.window.dead_letter_sends.is_empty()
                && matches!(
                    state,
                    State::Delivering | State::Isolating { .. } | State::Draining { failed_seq: None }
                )
            {
                // Everything sent in the transaction has settled and it is due, or nothing more can
                // go into it now: commit.
                state = self.commit(state, &mut b).await;
                continue;
            }
            if sending {
                state = self.send_more(state, &mut b, upto, room).await;
                continue;
            }
            let waited = self
                .wait(state, &mut b, upto, have_more, stopping.is_some(), &mut committed, &mut stop)
                .await?;
            match waited {
                Some(next) => state = next,
                None => {
                    self.abort_left_open(&mut b).await;
                    self.finish(&b);
                    return Ok(());
                }
            }
        }
    }

    /// The books at the start: nothing in flight, the spool's acknowledged position.
    fn books(&self) -> Books {
        let acked = self.progress.borrow().acked_seq;
        Books {
            acked,
            acked_sent: acked,
            window: Window::default(),
            retry: Retry { backoff: MIN_BACKOFF, fatal_in_a_row: 0, stalled_received_ms: None },
            clock: StallClock {
                last_report: Instant::now(),
                answered_at_last_check: false,
                next_overtaken_check: Instant::now() + OVERTAKEN_AFTER,
            },
            generation: self.publisher.generation(),
            read_failing: None,
            next_read_at: None,
            delivered_ahead: VecDeque::new(),
            confirmed: Default::default(),
            held: VecDeque::new(),
            gated: false,
            unconfirmed: 0,
            partitions_asked: None,
            partitions: None,
            txn: None,
            committed: acked,
            acked_crc: 0,
            committed_crc: 0,
            initialized: None,
            dead_lettered: Default::default(),
        }
    }

    /// While stopping: `None` once done (everything committed sent and every report counted, or the
    /// time is up), else the state to go on in (draining once sending must stop).
    fn winding_down(&self, state: State, b: &Books, s: &Stopping, have_more: bool) -> Option<State> {
        let now = Instant::now();
        // (Exactly once: an open transaction is committed first, unless a failure left it to abort:
        // then the next start's `init_transactions`, or Kafka after the transaction timeout, aborts it.)
        let done = b.window.inflight.is_empty()
            && (b.txn.is_none() || matches!(state, State::Draining { failed_seq: Some(_) }))
            && match state {
                State::Draining { .. } => true,
                // Everything committed was sent and every report counted.
                State::Delivering | State::Isolating { .. } => !have_more,
                State::Recovering { .. } => false,
            };
        if done || now >= s.give_up_at {
            if !b.window.inflight.is_empty() {
                tracing::warn!(in_flight = b.window.inflight.len(), "stopping with deliveries not yet confirmed; they will be published again at the next start");
            }
            return None;
        }
        if !matches!(state, State::Draining { .. }) && now >= s.stop_sending_at {
            // A failure being recovered from carries over: reports after it must not count.
            let failed_seq = match state {
                State::Recovering { failed_seq, .. } => Some(failed_seq),
                _ => None,
            };
            return Some(State::Draining { failed_seq });
        }
        Some(state)
    }

    /// Reads up to `room` records (those held back first) and hands them to the producer, in order;
    /// records already in Kafka settle in their place, a record whose partition is cold waits.
    async fn send_more(&mut self, mut state: State, b: &mut Books, upto: Committed, room: usize) -> State {
        let position = self.reader.as_ref().map_or(u64::MAX, SpoolReader::position);
        let read = if b.held.is_empty() {
            self.read(upto, room, WINDOW_BYTES - b.window.bytes).await
        } else {
            // As many as fit the window's records and bytes (at least one).
            let budget = WINDOW_BYTES - b.window.bytes;
            let (mut n, mut bytes) = (0, 0);
            while n < room.min(b.held.len()) && (n == 0 || bytes + b.held[n].payload.len() <= budget) {
                bytes += b.held[n].payload.len();
                n += 1;
            }
            Ok(b.held.drain(..n).collect())
        };
        let batch = match read {
            Ok(batch) => {
                if let Some((since, tries)) = b.read_failing.take() {
                    tracing::info!(
                        tries,
                        failed_for_ms = crate::now_ms() - since,
                        "the spool is readable again"
                    );
                }
                batch
            }
            Err(e) => {
                self.publisher.metrics().spool_read_errors.inc();
                let (since, tries) = b.read_failing.get_or_insert((crate::now_ms(), 0));
                *tries += 1;
                // The first failure, then one line a minute or so (at most a try a second).
                if *tries == 1 || *tries % 60 == 0 {
                    tracing::error!(error = %e, position, tries = *tries, failing_for_ms = crate::now_ms() - *since,
                        "spool read failed; retrying (a restart starts past a region that stays unreadable)");
                }
                let wait = (Duration::from_millis(20) * 2u32.pow((*tries).min(6))).min(MAX_READ_RETRY);
                self.report(b, upto);
                b.next_read_at = Some(Instant::now() + wait);
                return state;
            }
        };
        if batch.is_empty() {
            // Committed but not readable now (the error was logged): do not spin.
            tracing::debug!(position, committed = ?upto, "nothing readable yet");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut skipped = false;
        let mut batch = VecDeque::from(batch);
        while let Some(record) = batch.pop_front() {
            let seq = record.seq;
            if self.eos.is_some() && b.txn.is_none() {
                // Exactly once: every record goes out in a transaction (opening one asks nothing of
                // Kafka).
                if let Err(e) = self.publisher.begin_transaction() {
                    tracing::error!(error = %e, "cannot open a Kafka transaction");
                    state = self.txn_failed(state, e, b);
                    break;
                }
                b.txn = Some(Txn { began: Instant::now(), records: 0, delivered: Vec::new() });
            }
            while b.delivered_ahead.front().is_some_and(|d| *d < seq) {
                b.delivered_ahead.pop_front();
            }
            if b.delivered_ahead.front() == Some(&seq) {
                // Already in Kafka: it settles as delivered, in its place, without being sent.
                b.delivered_ahead.pop_front();
                if let Some(t) = b.txn.as_mut() {
                    t.records += 1;
                }
                if b.window.inflight.is_empty() {
                    b.clock.last_report = Instant::now();
                }
                b.window.bytes += record.payload.len();
                b.window.inflight.push_back(InFlight::already_delivered(&record));
                skipped = true;
                continue;
            }
            if !self.may_send(&record, b).await {
                // Its partition is cold and has a record in flight: it waits for a report.
                batch.push_front(record);
                while let Some(r) = batch.pop_back() {
                    b.held.push_front(r);
                }
                b.gated = true;
                break;
            }
            if let Some(t) = b.txn.as_mut() {
                t.records += 1;
            }
            match self.dispatch(record, matches!(state, State::Isolating { .. })) {
                Ok((m, dead_letter)) => {
                    if b.window.inflight.is_empty() {
                        b.clock.last_report = Instant::now();
                    }
                    b.window.bytes += m.bytes;
                    b.window.inflight.push_back(m);
                    b.window.dead_letter_sends.extend(dead_letter);
                }
                Err((received_at_ms, e)) => {
                    // Not enqueued (e.g. librdkafka's queue is full): what is in flight is
                    // all before it and still counts; publish again from this one.
                    self.count_error(&e);
                    tracing::warn!(error = %e, seq, "could not enqueue to Kafka; retrying from the spool");
                    b.retry.stalled_received_ms.get_or_insert(received_at_ms);
                    state = self.failed(state, seq, &e, b);
                    break;
                }
            }
        }
        if skipped {
            state = self.settle_ready(state, b, upto);
        }
        self.report(b, upto);
        state
    }

    /// Waits for the next thing that moves the loop: reports, a dead-letter outcome, the end of a
    /// backoff, the stall clock, a commit, the next read try, the stop signal. `None` when the spool
    /// is gone.
    #[allow(clippy::too_many_arguments)]
    async fn wait(
        &mut self,
        mut state: State,
        b: &mut Books,
        upto: Committed,
        have_more: bool,
        stopping: bool,
        committed: &mut watch::Receiver<Committed>,
        stop: &mut StopSignal,
    ) -> Result<Option<State>, ForwarderError> {
        let recovering_until = match state {
            // After a fatal error the old producer may never report again: its records are
            // abandoned with it (and published again).
            State::Recovering {
                until, producer: Producer::NewAfterFatal | Producer::NewAfterStall, ..
            } => Some(until),
            State::Recovering { until, .. } if b.window.inflight.is_empty() => Some(until),
            // Exactly once, the transaction is aborted without waiting: a transaction librdkafka
            // marked for abort sends nothing more, so what is queued would never report (the abort
            // purges it, and its reports are taken before anything is sent again).
            State::Recovering { until, .. } if self.eos.is_some() => Some(until),
            _ => None,
        };
        // (`stopping` is whether the stop signal was seen at the top of this turn: if it came since,
        // `stop.changed()` fires at once.)
        let wait_for_commit = !have_more && !stopping;
        // The stall clock runs while something counts in flight and no replacement is pending; not
        // while stopping (the next start publishes again whatever is unconfirmed).
        let watch_stall = !b.window.inflight.is_empty()
            && !stopping
            && !matches!(
                state,
                State::Recovering { producer: Producer::NewAfterFatal | Producer::NewAfterStall, .. }
                    | State::Draining { .. }
            );
        tokio::select! {
            Some(report) = self.reports.recv() => {
                b.gated = false;
                // Take every report already there before settling: one wake-up, many records.
                self.take(report, b);
                while let Ok(report) = self.reports.try_recv() {
                    self.take(report, b);
                }
                if b.unconfirmed > 0 {
                    // One line for the lot (one failed request can leave hundreds).
                    tracing::error!(records = std::mem::take(&mut b.unconfirmed),
                        "Kafka confirmed records only implicitly (no offset): they may not be on the topic (or be there already); publishing them again");
                }
                state = self.settle_ready(state, b, upto);
            }
            Some((seq, result)) = b.window.dead_letter_sends.next(), if !b.window.dead_letter_sends.is_empty() => {
                b.gated = false;
                match b.window.inflight.binary_search_by_key(&seq, |m| m.seq) {
                    Ok(i) => {
                        if self.eos.is_some() && result.is_ok() {
                            // Outside the transaction: an abort does not take it back.
                            b.dead_lettered.insert(seq);
                        }
                        b.window.inflight[i].outcome = Some(result)
                    }
                    // Dead-letter sends are dropped with the records they belong to: a bug if seen.
                    Err(_) => tracing::warn!(seq, "a dead-letter outcome for a record not in flight; ignored"),
                }
                state = self.settle_ready(state, b, upto);
            }
            _ = tokio::time::sleep_until(recovering_until.unwrap_or_else(Instant::now)), if recovering_until.is_some() => {
                state = self.resume(state, b).await?;
            }
            _ = tokio::time::sleep_until(b.clock.last_report + self.stall_after), if watch_stall => {
                state = self.stalled(state, b).await;
            }
            _ = tokio::time::sleep_until(b.clock.next_overtaken_check), if watch_stall => {
                b.clock.next_overtaken_check = Instant::now() + OVERTAKEN_AFTER;
                state = self.overtaken(state, b).await;
            }
            changed = committed.changed(), if wait_for_commit => {
                if changed.is_err() {
                    // The spool is gone: nothing more will be committed.
                    return Ok(None);
                }
            }
            // The next try of a failing spool read.
            _ = tokio::time::sleep_until(b.next_read_at.unwrap_or_else(Instant::now)), if b.next_read_at.is_some() => {
                b.next_read_at = None;
            }
            // Held back while the partition count is unknown: ask for it again in a second.
            _ = tokio::time::sleep(Duration::from_secs(1)), if b.gated && b.partitions.is_none() => {
                b.gated = false;
            }
            _ = stop.changed(), if !stopping => {}
            // While stopping, look at the clock every 100 ms.
            _ = tokio::time::sleep(Duration::from_millis(100)), if stopping => {}
        }
        Ok(Some(state))
    }

    /// Notes a report's outcome on its record; a record Kafka refused for good, sent alone, is
    /// dead-lettered first. Reports of a replaced producer, or of records no longer in flight, are
    /// stale and ignored.
    fn take(&self, report: Report, b: &mut Books) {
        // (The stall clock is not reset here: only the front record settling shows the producer is
        // not stuck, since one stuck partition can hold the front while the others deliver.)
        if report.generation != b.generation {
            return;
        }
        let Ok(i) = b.window.inflight.binary_search_by_key(&report.seq, |m| m.seq) else { return };
        if b.window.inflight[i].outcome.is_some() {
            return;
        }
        // (Only a delivery says where a record went: a failure may come before it was partitioned.)
        if let (Some(n), Some(hash), Outcome::Delivered) =
            (b.partitions, b.window.inflight[i].key_hash, &report.outcome)
        {
            if crate::partition::partition_of_hash(hash, n) != report.partition {
                // The topic has more partitions than read: learn them again, and warm every one.
                tracing::info!(partitions = n, "the topic's partition count changed");
                b.partitions = None;
                b.partitions_asked = None;
                b.confirmed.clear();
            }
        }
        if matches!(report.outcome, Outcome::Delivered) {
            if b.partitions.is_none() {
                // The topic exists now: its partition count can be learnt at once (not a second on).
                b.partitions_asked = None;
            }
            let (highest, at) = b.confirmed.entry(report.partition).or_insert((report.seq, Instant::now()));
            *highest = (*highest).max(report.seq);
            *at = Instant::now();
        }
        if let Outcome::Failed(e) = &report.outcome {
            if e.is_unconfirmed() {
                b.unconfirmed += 1;
            }
        }
        let m = &mut b.window.inflight[i];
        m.outcome = Some(match report.outcome {
            Outcome::Delivered => Ok(()),
            Outcome::Failed(e) => Err(e),
            Outcome::Refused(e, refused) if m.solo => {
                let key = refused.key().unwrap_or_default().to_vec();
                let record = KafkaRecord {
                    key: key.clone(),
                    timestamp_ms: refused.timestamp().to_millis().unwrap_or(m.event_time_ms),
                    headers: refused
                        .headers()
                        .map(|h| {
                            h.iter()
                                .map(|h| {
                                    let value = String::from_utf8_lossy(h.value.unwrap_or_default());
                                    (h.key.to_owned().into(), value.into_owned().into())
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                    value: refused.payload().unwrap_or_default().to_vec(),
                    received_at_ms: m.received_at_ms,
                    event_time_ms: m.event_time_ms,
                }
                .to_bytes();
                b.window.dead_letter_sends.push(send_to_dead_letter(
                    m.seq,
                    self.publisher.clone(),
                    self.quarantine.clone(),
                    e.to_string(),
                    key,
                    record,
                    move |p, reason| p.send_refused_dead_letter(&refused, reason),
                ));
                return;
            }
            Outcome::Refused(e, _) => Err(PublishError::Permanent(e)),
        });
    }

    /// Settles, in send order, every record at the front whose outcome is known.
    fn settle_ready(&self, mut state: State, b: &mut Books, upto: Committed) -> State {
        while b.window.inflight.front().is_some_and(|m| m.outcome.is_some()) {
            let mut m = b.window.inflight.pop_front().expect("checked above");
            b.window.bytes -= m.bytes;
            let result = m.outcome.take().expect("checked above");
            state = self.settled(state, m, result, b);
            if self.eos.is_none()
                && b.acked != b.acked_sent
                && (b.window.inflight.is_empty() || b.acked - b.acked_sent >= ACK_EVERY)
            {
                self.spool.ack(b.acked);
                b.acked_sent = b.acked;
            }
        }
        self.report(b, upto);
        state
    }

    /// A record's outcome, in send order.
    fn settled(&self, state: State, m: InFlight, result: Result<(), PublishError>, b: &mut Books) -> State {
        // Any report, good or bad, shows the producer is alive: the stall clock starts again.
        b.clock.last_report = Instant::now();
        b.clock.answered_at_last_check = false;
        match result {
            Ok(()) if state.counts(m.seq) => {
                match b.txn.as_mut() {
                    // Visible to consumers once the transaction commits: counted then.
                    Some(t) => t.delivered.push((m.received_at_ms, m.event_time_ms)),
                    None => self.publisher.metrics().delivered(m.received_at_ms, m.event_time_ms),
                }
                b.acked = m.seq;
                b.acked_crc = m.crc;
                if self.eos.is_none() {
                    // (Exactly once, a delivery counts as progress only once its transaction commits.)
                    b.retry.backoff = MIN_BACKOFF;
                    b.retry.fatal_in_a_row = 0;
                }
                b.retry.stalled_received_ms = None;
                match state {
                    State::Isolating { left } if left <= 1 => State::Delivering,
                    State::Isolating { left } => State::Isolating { left: left - 1 },
                    other => other,
                }
            }
            // Delivered after an earlier record failed: published again after it. (Not skipped: after
            // a batch Kafka refused, librdkafka may deliver a later batch of the same partition, and
            // only publishing it again keeps its last copy after the refused record.)
            Ok(()) => state,
            Err(e) if !state.counts(m.seq) => {
                self.count_error(&e);
                state
            }
            Err(e) => {
                b.retry.stalled_received_ms = Some(m.received_at_ms);
                self.count_error(&e);
                self.failed(state, m.seq, &e, b)
            }
        }
    }

    /// The state after record `seq` failed with `e`.
    fn failed(&self, state: State, seq: u64, e: &PublishError, b: &mut Books) -> State {
        if let State::Draining { failed_seq } = state {
            return State::Draining { failed_seq: Some(failed_seq.map_or(seq, |f| f.min(seq))) };
        }
        let fatal = matches!(e, PublishError::Fatal(_)) || self.publisher.fatal_error().is_some();
        let now = Instant::now();
        match e {
            PublishError::Permanent(_) if !fatal => {
                // Kafka refused a whole batch (its size counts against the topic's limit): send its
                // records alone; the one still refused alone is dead-lettered. What librdkafka holds
                // unsent behind it goes back to the spool (it is sent again after it, in order), and
                // the topic's limit is read again: if it shrank, a new producer fits it first.
                if self.eos.is_none() {
                    // (Exactly once, the abort that follows purges it.)
                    self.publisher.purge_queued();
                }
                let publisher = self.publisher.clone();
                tokio::spawn(async move {
                    if let Ok(true) = publisher.refresh_limits(Duration::from_secs(2)).await {
                        publisher.request_refit();
                    }
                });
                let isolate = b.window.inflight.len() + 1;
                tracing::info!(error = %e, seq, records = isolate, "Kafka refused a batch; publishing its records one at a time");
                State::Recovering { failed_seq: seq, until: now, producer: Producer::Same, isolate }
            }
            _ => {
                if fatal {
                    tracing::error!(error = %e, seq, reason = self.publisher.fatal_error().unwrap_or_default(),
                        "the Kafka producer failed for good; a new one will publish again from the first unacknowledged event");
                } else {
                    tracing::warn!(error = %e, seq, backoff_ms = b.retry.backoff.as_millis() as u64,
                        "Kafka delivery failed; the event stays in the spool and is retried");
                }
                let until = now + b.retry.backoff;
                b.retry.backoff = (b.retry.backoff * 2).min(MAX_BACKOFF);
                let producer = if fatal { Producer::NewAfterFatal } else { Producer::Same };
                State::Recovering { failed_seq: seq, until, producer, isolate: 1 }
            }
        }
    }

    /// The oldest record in flight has not settled for the stall time. If Kafka answered at the last check too
    /// (a whole stall time ago), the producer is wedged: replace it and publish again from the first
    /// unacknowledged record. If Kafka does not answer, the producer is right to wait; if it has just
    /// come back, the producer gets one more stall time to reconnect.
    async fn stalled(&self, state: State, b: &mut Books) -> State {
        let publisher = self.publisher.clone();
        let answers = tokio::task::spawn_blocking(move || publisher.probe_apart(Duration::from_secs(2)))
            .await
            .map(|r| r.is_ok())
            .unwrap_or(false);
        b.clock.last_report = Instant::now();
        let answered_before = std::mem::replace(&mut b.clock.answered_at_last_check, answers);
        let Some(first) = b.window.inflight.front().map(|m| m.seq) else { return state };
        if !answers {
            tracing::info!(
                in_flight = b.window.inflight.len(),
                "no delivery confirmed for the stall time, and Kafka does not answer: waiting for it"
            );
            return state;
        }
        if !answered_before {
            tracing::info!(
                in_flight = b.window.inflight.len(),
                "no delivery confirmed for the stall time; Kafka answers: the producer gets one more"
            );
            return state;
        }
        tracing::error!(
            in_flight = b.window.inflight.len(),
            stalled_secs = self.stall_after.as_secs(),
            from_seq = first,
            "Kafka answers but the producer confirmed no delivery for the stall time; replacing it"
        );
        b.retry.stalled_received_ms.get_or_insert(b.window.inflight.front().map_or(0, |m| m.received_at_ms));
        match state {
            // While draining, the next start publishes them again.
            State::Draining { .. } => state,
            State::Recovering { failed_seq, isolate, .. } => State::Recovering {
                failed_seq: failed_seq.min(first),
                until: Instant::now(),
                producer: Producer::NewAfterStall,
                isolate,
            },
            State::Delivering | State::Isolating { .. } => State::Recovering {
                failed_seq: first,
                until: Instant::now(),
                producer: Producer::NewAfterStall,
                isolate: match state {
                    State::Isolating { left } => left,
                    _ => 1,
                },
            },
        }
    }

    /// Whether the producer lost track of the oldest record in flight: unconfirmed for
    /// [`OVERTAKEN_AFTER`] while it confirmed a later record of the same partition, which an idempotent
    /// producer never does. If so, it is replaced now, not after the stall time: its confirmed records
    /// are not sent again, the lost one is.
    async fn overtaken(&self, state: State, b: &mut Books) -> State {
        let Some(front) = b.window.inflight.front() else { return state };
        let (Some(hash), None, seq) = (front.key_hash, &front.outcome, front.seq) else { return state };
        let (sent_at, received_at_ms) = (front.sent_at, front.received_at_ms);
        if sent_at.elapsed() < OVERTAKEN_AFTER
            || !matches!(state, State::Delivering | State::Isolating { .. })
        {
            return state;
        }
        let Some(partitions) = self.partitions(b).await else { return state };
        let partition = crate::partition::partition_of_hash(hash, partitions);
        let Some(later) = b.confirmed.get(&partition).map(|(c, _)| *c).filter(|c| *c > seq) else {
            return state;
        };
        tracing::error!(
            seq,
            partition,
            confirmed_after_it = later,
            unconfirmed_for_ms = sent_at.elapsed().as_millis() as u64,
            "the producer confirmed a later record of this partition but never this one; replacing it"
        );
        b.retry.stalled_received_ms.get_or_insert(received_at_ms);
        State::Recovering {
            failed_seq: seq,
            until: Instant::now(),
            producer: Producer::NewAfterStall,
            isolate: 1,
        }
    }

    /// Everything in flight has settled after a failure and the backoff has passed: publish again
    /// from the first unacknowledged record (with a new producer after a fatal error or a stall).
    async fn resume(&mut self, state: State, b: &mut Books) -> Result<State, ForwarderError> {
        let State::Recovering { producer, isolate, failed_seq, .. } = state else { return Ok(state) };
        if self.eos.is_some() {
            return self.resume_transactions(producer, isolate, failed_seq, b).await;
        }
        // A replaced producer's records that Kafka acknowledged are in Kafka: not published again. (In
        // flight here only after a stall or a fatal error: other failures wait for everything to settle.)
        // Only up to the first record that failed: a record confirmed after it, on its partition, must
        // be published again after it to keep the partition's order.
        let delivered = b
            .window
            .inflight
            .iter()
            .take_while(|m| !matches!(m.outcome, Some(Err(_))))
            .filter(|m| matches!(m.outcome, Some(Ok(()))))
            .map(|m| m.seq);
        let mut ahead: Vec<u64> =
            b.delivered_ahead.drain(..).chain(delivered).filter(|s| *s > b.acked).collect();
        ahead.sort_unstable();
        ahead.dedup();
        b.delivered_ahead = ahead.into();
        b.drop_window();
        if producer == Producer::NewAfterFatal {
            self.count_fatal_restart(b)?;
        }
        let refit = self.publisher.take_refit();
        if producer != Producer::Same || refit {
            self.replace_producer(b)?;
            tracing::warn!(
                from_seq = b.acked + 1,
                "built a new Kafka producer; publishing again from the first unacknowledged event"
            );
        }
        if let Some(r) = self.reader.as_mut() {
            r.seek(b.acked + 1);
        }
        Ok(State::Isolating { left: isolate.max(1) })
    }

    /// Ends the open transaction (exactly-once mode): the position record, then the commit, on the
    /// blocking pool; then the spool's ack follows. A commit that fails retriably is tried again (it
    /// resumes where it was), for at most the transaction timeout; one that must be aborted, or whose
    /// producer failed for good, goes to recovery, which aborts or replaces the producer and publishes
    /// again from the last committed position.
    async fn commit(&mut self, state: State, b: &mut Books) -> State {
        let eos = self.eos.as_ref().expect("commit only in exactly-once mode");
        let position = Position::new(b.acked, b.acked_crc).to_bytes();
        if let Err(e) = self.publisher.send_position(&eos.settings.position_topic, &eos.spool_id, &position) {
            self.count_error(&e);
            let fatal = matches!(e, PublishError::Fatal(_));
            let e = if fatal {
                TxnError::Fatal(e.kafka_error().clone())
            } else {
                TxnError::Abortable(e.kafka_error().clone())
            };
            return self.txn_failed(state, e, b);
        }
        let started = Instant::now();
        let timeout = eos.settings.transaction_timeout;
        let mut tries = 0u32;
        loop {
            let publisher = self.publisher.clone();
            let outcome = tokio::task::spawn_blocking(move || publisher.commit_transaction(timeout))
                .await
                .unwrap_or_else(|_| Err(TxnError::Fatal(rdkafka::error::KafkaError::Canceled)));
            match outcome {
                Ok(()) => break,
                Err(TxnError::Retriable(e)) if started.elapsed() < timeout => {
                    tries += 1;
                    if tries == 1 {
                        tracing::warn!(error = %e, "committing the Kafka transaction failed for now; trying again");
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(TxnError::Retriable(e)) => {
                    // Past the transaction timeout Kafka aborts it anyway: a new producer fences this
                    // one (waiting for a commit in progress) and the position says what committed.
                    tracing::error!(error = %e, tries, "the Kafka transaction did not commit within the transaction timeout; replacing the producer");
                    return self.txn_failed(state, TxnError::Fatal(e), b);
                }
                Err(e) => return self.txn_failed(state, e, b),
            }
        }
        // The failpoint dies here as `kill -9` would: committed, the ack file not yet moved.
        #[cfg(feature = "failpoints")]
        if crate::failpoints::here() && fail::eval("forwarder::after_commit", |_| ()).is_some() {
            crate::failpoints::kill_self();
        }
        let metrics = self.publisher.metrics();
        metrics.kafka_transaction_commit_seconds.observe(started.elapsed().as_secs_f64());
        metrics.kafka_transactions.with_label_values(&["committed"]).inc();
        let txn = b.txn.take().expect("a transaction was open");
        tracing::debug!(
            records = txn.records,
            position = b.acked,
            commit_ms = started.elapsed().as_millis() as u64,
            "committed a Kafka transaction"
        );
        for (received_at_ms, event_time_ms) in txn.delivered {
            metrics.delivered(received_at_ms, event_time_ms);
        }
        b.committed = b.acked;
        b.committed_crc = b.acked_crc;
        let committed = b.committed;
        b.dead_lettered.retain(|s| *s > committed);
        b.retry.fatal_in_a_row = 0;
        b.retry.backoff = MIN_BACKOFF;
        if b.acked != b.acked_sent {
            self.spool.ack(b.acked);
            b.acked_sent = b.acked;
        }
        self.report(b, *self.spool.committed().borrow());
        state
    }

    /// The state after a transactional call failed with `e` (exactly-once mode): recovery, which
    /// aborts the transaction (or replaces the producer) and publishes again from the last committed
    /// position.
    fn txn_failed(&self, state: State, e: TxnError, b: &mut Books) -> State {
        self.publisher.metrics().kafka_errors.with_label_values(&[&error_kind(e.kafka_error())]).inc();
        let fatal = matches!(e, TxnError::Fatal(_)) || self.publisher.fatal_error().is_some();
        tracing::warn!(error = %e, committed = b.committed, "the Kafka transaction failed; it is aborted and what it held is published again");
        if let State::Draining { .. } = state {
            return State::Draining { failed_seq: Some(b.committed + 1) };
        }
        let until = Instant::now() + b.retry.backoff;
        b.retry.backoff = (b.retry.backoff * 2).min(MAX_BACKOFF);
        State::Recovering {
            failed_seq: b.committed + 1,
            until,
            producer: if fatal { Producer::NewAfterFatal } else { Producer::Same },
            isolate: 1,
        }
    }

    /// [`resume`](Self::resume) in exactly-once mode: the open transaction is aborted (or its producer
    /// replaced, which fences it), so nothing after the committed position is on the topic for a
    /// `read_committed` reader; publishing starts again right after that position. Only records that
    /// went to the dead-letter topic (outside the transaction) are not sent again.
    async fn resume_transactions(
        &mut self,
        mut producer: Producer,
        isolate: usize,
        failed_seq: u64,
        b: &mut Books,
    ) -> Result<State, ForwarderError> {
        let eos = self.eos.as_ref().expect("exactly-once mode");
        let timeout = eos.settings.transaction_timeout;
        if self.publisher.fatal_error().is_some() {
            // Never abort after a fatal error: only a new producer can go on.
            producer = Producer::NewAfterFatal;
        }
        // Publishing starts again at the last committed position, which may be well before the record
        // that failed: records sent one at a time must reach through it (else a batch Kafka refuses is
        // sent whole again, and aborted again, for ever).
        let isolate = if failed_seq == u64::MAX {
            isolate
        } else {
            isolate.saturating_add(failed_seq.saturating_sub(b.committed + 1) as usize)
        };
        if producer == Producer::Same && b.txn.is_some() {
            let publisher = self.publisher.clone();
            // One try, short: an abort waits for the records in flight, and librdkafka can hold some
            // of them until the very epoch bump the abort makes (seen after Kafka refused a batch:
            // "skipped sequence numbers, requires epoch bump"). A new producer fences the transaction
            // just as well.
            let aborted =
                tokio::task::spawn_blocking(move || publisher.abort_transaction(timeout.min(ABORT_TRY)))
                    .await
                    .unwrap_or_else(|_| Err(TxnError::Fatal(rdkafka::error::KafkaError::Canceled)));
            match aborted {
                Ok(()) => {
                    self.publisher.metrics().kafka_transactions.with_label_values(&["aborted"]).inc();
                    // The reports of what the abort purged (and of anything settled meanwhile) are
                    // all in the channel now: none may be taken for the records sent again.
                    while self.reports.try_recv().is_ok() {}
                }
                Err(e) => {
                    tracing::warn!(error = %e, "aborting the Kafka transaction did not finish; replacing the producer (a new one fences the transaction)");
                    producer = if self.publisher.fatal_error().is_some() {
                        Producer::NewAfterFatal
                    } else {
                        Producer::NewAfterStall
                    };
                }
            }
        }
        if producer == Producer::NewAfterFatal {
            if let Some(code) = self.publisher.fatal_code().filter(|c| crate::publisher::is_fenced(*c)) {
                // Fenced while the transaction was younger than its timeout: not Kafka aborting it,
                // another producer with this spool's transactional id. Fencing it back would make the
                // two take turns; stop instead.
                let timed_out = b.txn.as_ref().is_some_and(|t| t.began.elapsed() >= timeout);
                if !timed_out {
                    self.finish(b);
                    return Err(ForwarderError::Fenced {
                        spool_id: eos.spool_id.clone(),
                        reason: self.publisher.fatal_error().unwrap_or_else(|| format!("{code:?}")),
                    });
                }
            }
            self.count_fatal_restart(b)?;
        }
        let refit = self.publisher.take_refit();
        if producer != Producer::Same || refit {
            self.replace_producer(b)?;
            self.open_transactions(b, None).await?;
            tracing::warn!(
                from_seq = b.committed + 1,
                "built a new Kafka producer; publishing again from the last committed position"
            );
        }
        b.txn = None;
        b.acked = b.committed;
        b.acked_crc = b.committed_crc;
        b.acked_sent = b.committed;
        // What the aborted transaction delivered confirmed nothing that stays: warm every partition
        // again.
        b.confirmed.clear();
        let committed = b.committed;
        b.delivered_ahead = b.dead_lettered.iter().copied().filter(|s| *s > committed).collect();
        b.drop_window();
        if let Some(r) = self.reader.as_mut() {
            r.seek(b.committed + 1);
        }
        self.report(b, *self.spool.committed().borrow());
        Ok(State::Isolating { left: isolate.max(1) })
    }

    /// A transactional producer's start (exactly-once mode): the position topic exists,
    /// `init_transactions` fences any earlier producer of this spool (aborting its transaction, or
    /// waiting for its commit to end), and the position last committed is read and adopted: a commit
    /// whose answer was lost may have gone through, and at start the ack file may lag the last commit.
    /// While Kafka does not answer this is tried again (webhooks are spooled meanwhile), until `stop`
    /// says to stop (then `Ok(false)`). Anything else (a fatal producer error, a position that is not
    /// this spool's) is an error.
    async fn open_transactions(
        &mut self,
        b: &mut Books,
        mut stop: Option<&mut StopSignal>,
    ) -> Result<bool, ForwarderError> {
        let mut backoff = MIN_BACKOFF;
        let mut tries = 0u32;
        loop {
            let retry = match self.try_open_transactions(b).await {
                Ok(()) => return Ok(true),
                Err(Opening::Fail(e)) => return Err(e),
                Err(Opening::Retry(e)) => e,
            };
            tries += 1;
            if tries == 1 || tries.is_multiple_of(20) {
                tracing::warn!(error = %retry, tries,
                    "exactly-once: Kafka's transactions are not ready yet; events stay in the spool until they are");
            }
            match stop.as_deref_mut() {
                Some(stop) => {
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        changed = stop.changed() => {
                            if changed.is_err() || stop.borrow().is_some() {
                                return Ok(false);
                            }
                        }
                    }
                }
                None => tokio::time::sleep(backoff).await,
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    async fn try_open_transactions(&mut self, b: &mut Books) -> Result<(), Opening> {
        let eos = self.eos.as_ref().expect("exactly-once mode");
        let (kafka, topic, id) =
            (eos.kafka.clone(), eos.settings.position_topic.clone(), eos.spool_id.clone());
        let timeout = eos.settings.transaction_timeout;
        crate::exactly_once::ensure_position_topic(&kafka, &topic)
            .await
            .map_err(|e| Opening::Retry(e.to_string()))?;
        let generation = self.publisher.generation();
        if b.initialized != Some(generation) {
            let publisher = self.publisher.clone();
            // One try of at most 10 s: a retriable timeout resumes at the next call.
            let init =
                tokio::task::spawn_blocking(move || publisher.init_transactions(timeout.min(INIT_TRY)))
                    .await
                    .unwrap_or_else(|_| Err(TxnError::Fatal(rdkafka::error::KafkaError::Canceled)));
            match init {
                Ok(()) => b.initialized = Some(generation),
                Err(TxnError::Retriable(e)) => return Err(Opening::Retry(e.to_string())),
                Err(e) => return Err(Opening::Fail(ForwarderError::Transactions(e))),
            }
        }
        let read = tokio::task::spawn_blocking({
            let topic = topic.clone();
            move || crate::exactly_once::read_position(&kafka, &topic, &id, timeout + Duration::from_secs(30))
        })
        .await
        .expect("reading the position does not panic")
        .map_err(|e| Opening::Retry(e.to_string()))?;
        let spool_id = eos.spool_id.clone();
        self.adopt(read, b).await.map_err(Opening::Fail)?;
        tracing::info!(spool_id = %spool_id, position_topic = %topic, committed_position = read.map(|p| p.seq),
            "exactly-once: Kafka transactions ready");
        Ok(())
    }

    /// Takes the position last committed: when it is ahead of what the books say (at start, a stop
    /// between a commit and the ack file's update; later, a commit whose answer was lost), the spool is
    /// acknowledged up to it and reading resumes after it. Refused when it is not this spool's.
    async fn adopt(&mut self, read: Option<Position>, b: &mut Books) -> Result<(), ForwarderError> {
        let eos = self.eos.as_ref().expect("exactly-once mode");
        let Some(p) = read.filter(|p| p.seq > b.committed) else { return Ok(()) };
        let committed = *self.spool.committed().borrow();
        if p.seq > committed.seq {
            return Err(PositionError::Ahead {
                topic: eos.settings.position_topic.clone(),
                spool_id: eos.spool_id.clone(),
                position: p.seq,
                committed: committed.seq,
            }
            .into());
        }
        let mut reader = self.spool.reader();
        let found = tokio::task::spawn_blocking(move || {
            reader.seek(p.seq);
            reader.read(committed, 1, READ_BYTES)
        })
        .await
        .expect("a spool read does not panic");
        match found.as_deref() {
            Ok([r, ..]) if r.seq == p.seq && crc32fast::hash(&r.payload) != p.crc => {
                return Err(PositionError::NotThisSpool {
                    topic: eos.settings.position_topic.clone(),
                    spool_id: eos.spool_id.clone(),
                    position: p.seq,
                }
                .into())
            }
            Ok([r, ..]) if r.seq == p.seq => {}
            // Lost to damage (counted and logged by the spool): nothing to compare it with.
            other => tracing::warn!(position = p.seq, found = ?other.map(|r| r.first().map(|r| r.seq)),
                "cannot read the spool's record at the committed position to check it; taking the position"),
        }
        tracing::info!(
            position = p.seq,
            ack_file = b.committed,
            "the committed position is ahead of the ack file (stopped between a commit and its ack, or a commit's answer was lost): resuming after the committed position"
        );
        b.committed = p.seq;
        b.committed_crc = p.crc;
        b.acked = p.seq;
        b.acked_crc = p.crc;
        b.acked_sent = p.seq;
        self.spool.ack(p.seq);
        if let Some(r) = self.reader.as_mut() {
            r.seek(p.seq + 1);
        }
        self.report(b, committed);
        Ok(())
    }

    /// One more fatal producer error in a row: past [`MAX_FATAL_RESTARTS`] the forwarder gives up.
    fn count_fatal_restart(&self, b: &mut Books) -> Result<(), ForwarderError> {
        b.retry.fatal_in_a_row += 1;
        if b.retry.fatal_in_a_row > MAX_FATAL_RESTARTS {
            let last = self.publisher.fatal_error().unwrap_or_else(|| "unknown".into());
            self.finish(b);
            return Err(ForwarderError::ProducerKeepsFailing { restarts: MAX_FATAL_RESTARTS, last });
        }
        Ok(())
    }

    /// Builds a new main producer. The old producer's reports (it purges what it held as it goes) no
    /// longer count, and no partition is warm for the new one.
    fn replace_producer(&self, b: &mut Books) -> Result<(), ForwarderError> {
        self.publisher.rebuild()?;
        b.generation = self.publisher.generation();
        b.confirmed.clear();
        self.wedged.store(false, std::sync::atomic::Ordering::Relaxed);
        self.publisher.metrics().kafka_producer_restarts.inc();
        Ok(())
    }

    /// Whether `record` may be sent now: its partition is warm (the current producer confirmed a
    /// record there less than [`COLD_AFTER`] ago), or nothing else unconfirmed is in flight to it (to
    /// any partition, while their number is unknown). See the module docs for why.
    async fn may_send(&self, record: &SpooledRecord, b: &mut Books) -> bool {
        let Some(hash) = key_hash(&record.payload, self.legacy) else {
            // No key (a record this version cannot read goes to the dead-letter topic): not gated.
            return true;
        };
        let warm = |b: &Books, p: i32| b.confirmed.get(&p).is_some_and(|(_, at)| at.elapsed() < COLD_AFTER);
        let pending = |b: &Books, p: Option<i32>| {
            b.window.inflight.iter().any(|m| {
                m.outcome.is_none()
                    && m.key_hash.is_some_and(|h| {
                        p.is_none_or(|p| {
                            b.partitions.is_some_and(|n| crate::partition::partition_of_hash(h, n) == p)
                        })
                    })
            })
        };
        let mut partition = b.partitions.map(|n| crate::partition::partition_of_hash(hash, n));
        if partition.is_some_and(|p| warm(b, p)) {
            return true;
        }
        if !pending(b, partition) {
            return true;
        }
        if partition.is_none() {
            // Worth learning where it goes: records to other partitions need not wait.
            if let Some(n) = self.partitions(b).await {
                partition = Some(crate::partition::partition_of_hash(hash, n));
                return partition.is_some_and(|p| warm(b, p)) || !pending(b, partition);
            }
        }
        false
    }

    /// The topic's partition count: as read before, or asked of Kafka (at most once a second while
    /// the topic does not exist yet); `None` while unknown.
    async fn partitions(&self, b: &mut Books) -> Option<i32> {
        if b.partitions.is_some() || b.partitions_asked.is_some_and(|t| t.elapsed() < Duration::from_secs(1))
        {
            return b.partitions;
        }
        b.partitions_asked = Some(Instant::now());
        let publisher = self.publisher.clone();
        match tokio::task::spawn_blocking(move || publisher.partition_count(Duration::from_secs(1))).await {
            Ok(Ok(n)) if n > 0 => Some(*b.partitions.insert(n)),
            _ => None,
        }
    }

    /// Stopping with a transaction still open (a failure left it, or the time ran out): abort it now
    /// (for at most a second), so that `read_committed` readers of its partitions are not held back
    /// until Kafka's transaction timeout. The next start would abort it anyway.
    async fn abort_left_open(&self, b: &mut Books) {
        if b.txn.take().is_none() || self.publisher.fatal_error().is_some() {
            return;
        }
        let publisher = self.publisher.clone();
        let aborted =
            tokio::task::spawn_blocking(move || publisher.abort_transaction(Duration::from_secs(1))).await;
        if let Ok(Err(e)) = aborted {
            tracing::info!(error = %e, "could not abort the open Kafka transaction while stopping; the next start (or Kafka, after the transaction timeout) aborts it");
        }
    }

    /// Acknowledges the final position to the spool (the spool writes it before it closes).
    fn finish(&self, b: &Books) {
        if self.eos.is_none() && b.acked != b.acked_sent {
            self.spool.ack(b.acked);
        }
        self.report(b, *self.spool.committed().borrow());
    }

    /// Reads the next records on the blocking pool (file I/O never runs on the async workers).
    async fn read(
        &mut self,
        committed: Committed,
        max: usize,
        max_bytes: usize,
    ) -> std::io::Result<Vec<SpooledRecord>> {
        let mut reader = self.reader.take().expect("reader is put back after every read");
        let (reader, batch) = tokio::task::spawn_blocking(move || {
            let batch = reader.read(committed, max, max_bytes.min(READ_BYTES));
            (reader, batch)
        })
        .await
        .expect("spool read does not panic");
        self.reader = Some(reader);
        batch
    }

    /// Enqueues one record; a record Kafka refuses outright, or one this version cannot read, goes to
    /// the dead-letter topic (the returned [`DeadLetterSend`]). A `solo` record is one Kafka may have refused
    /// only for its neighbours: refused alone, it is dead-lettered; refused in a batch, the failure
    /// goes back to the loop.
    #[allow(clippy::result_large_err)]
    fn dispatch(
        &self,
        record: SpooledRecord,
        solo: bool,
    ) -> Result<(InFlight, Option<DeadLetterSend>), (i64, PublishError)> {
        let seq = record.seq;
        let bytes = record.payload.len();
        failpoint!("forwarder::dispatch");
        let spooled = match read_spooled(&record.payload, self.legacy) {
            Ok(s) => s,
            Err(e) => {
                // Checksummed, so written by a bridge whose format this one cannot read (a newer
                // version, rolled back): never drop it silently; the dead-letter topic keeps it whole.
                let now = crate::now_ms();
                tracing::error!(seq, error = %e, dlq_topic = self.publisher.dlq_topic(),
                    "spooled record is not one this version reads; sending it to the dead-letter topic as it is");
                let raw = KafkaRecord {
                    key: Vec::new(),
                    timestamp_ms: now,
                    headers: Vec::new(),
                    value: record.payload,
                    received_at_ms: now,
                    event_time_ms: now,
                };
                let m = InFlight {
                    seq,
                    bytes,
                    received_at_ms: now,
                    event_time_ms: now,
                    solo,
                    outcome: None,
                    key_hash: None,
                    sent_at: Instant::now(),
                    crc: if self.eos.is_some() { crc32fast::hash(&raw.value) } else { 0 },
                };
                let reason = format!("unreadable spool record: {e}");
                let d = send_to_dead_letter(
                    seq,
                    self.publisher.clone(),
                    self.quarantine.clone(),
                    reason,
                    Vec::new(),
                    raw.value.clone(),
                    move |p, reason| p.send_dead_letter(&raw.as_ref(), reason),
                );
                return Ok((m, Some(d)));
            }
        };
        let message = spooled.message();
        let m = InFlight {
            seq,
            bytes,
            received_at_ms: message.received_at_ms,
            event_time_ms: message.event_time_ms,
            solo,
            outcome: None,
            key_hash: (!message.key.is_empty()).then(|| crate::partition::murmur2(message.key)),
            sent_at: Instant::now(),
            crc: if self.eos.is_some() { crc32fast::hash(&record.payload) } else { 0 },
        };
        // The failpoint wedges the producer: from then on it takes records and reports on none, until
        // it is replaced (a wedged librdkafka).
        #[cfg(feature = "failpoints")]
        if fail::eval("forwarder::wedge", |_| ()).is_some() {
            self.wedged.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        if self.wedged.load(std::sync::atomic::Ordering::Relaxed) {
            return Ok((m, None));
        }
        match self.publisher.send_spooled(&message, seq) {
            Ok(()) => Ok((m, None)),
            Err(PublishError::Permanent(e)) => {
                let owned = message.to_message();
                let d = send_to_dead_letter(
                    seq,
                    self.publisher.clone(),
                    self.quarantine.clone(),
                    e.to_string(),
                    owned.key.clone(),
                    owned.to_bytes(),
                    move |p, reason| p.send_dead_letter(&owned.as_ref(), reason),
                );
                Ok((m, Some(d)))
            }
            Err(e) => Err((m.received_at_ms, e)),
        }
    }

    fn count_error(&self, e: &PublishError) {
        self.publisher.metrics().kafka_errors.with_label_values(&[&error_kind(e.kafka_error())]).inc();
    }

    fn report(&self, b: &Books, committed: Committed) {
        // Nothing in flight (a read that fails, a backoff) does not make the lag 0: the spool knows
        // when the oldest unacknowledged record was committed.
        // (Exactly once, what the open transaction holds is not published yet.)
        let acked = if self.eos.is_some() { b.committed } else { b.acked };
        let oldest = b
            .retry
            .stalled_received_ms
            .or_else(|| b.window.inflight.front().filter(|_| self.eos.is_none()).map(|m| m.received_at_ms))
            .or_else(|| self.spool.oldest_pending_since_ms(acked));
        let pending = committed.seq > acked;
        self.progress.send_if_modified(|p| {
            let next = Progress {
                acked_seq: acked,
                oldest_pending_received_ms: if pending { oldest } else { None },
                read_failing_since_ms: b.read_failing.map(|(since, _)| since),
            };
            let changed = *p != next;
            *p = next;
            changed
        });
    }
}

/// Kafka's murmur2 of a spooled record's key, whichever format it was spooled in; `None` for a record
/// this version cannot read (it goes to the dead-letter topic unkeyed).
fn key_hash(payload: &[u8], legacy: LegacyReader) -> Option<i32> {
    let spooled = read_spooled(payload, legacy).ok()?;
    let key = spooled.message().key;
    (!key.is_empty()).then(|| crate::partition::murmur2(key))
}

impl Books {
    /// Forgets everything in flight or held back (publishing starts again from the spool).
    fn drop_window(&mut self) {
        self.window.inflight.clear();
        self.held.clear();
        self.gated = false;
        self.window.dead_letter_sends = FuturesUnordered::new();
        self.window.bytes = 0;
    }
}

impl Txn {
    /// Whether the transaction must commit now: it holds its count or is as old as the interval.
    fn due(&self, settings: &ExactlyOnce) -> bool {
        self.records >= settings.commit_records || self.began.elapsed() >= settings.commit_interval
    }
}

/// After the stop signal, the time left for deliveries already sent to be confirmed, beyond the
/// grace period: confirmations take milliseconds when Kafka is up, and each one not taken is an event
/// published twice.
pub const SETTLE_TIME: Duration = Duration::from_secs(2);

/// When a stopping forwarder stops sending and when it stops waiting.
struct Stopping {
    stop_sending_at: Instant,
    give_up_at: Instant,
}

impl Stopping {
    /// Sending goes on until a quarter of the time left before `deadline` (at most 2 s) remains;
    /// confirmations are awaited until [`SETTLE_TIME`] after the deadline (or after now, when the
    /// signal came late).
    fn new(deadline: Instant) -> Self {
        let now = Instant::now();
        let reserve = (deadline.saturating_duration_since(now) / 4).min(Duration::from_secs(2));
        Self { stop_sending_at: deadline - reserve, give_up_at: deadline.max(now) + SETTLE_TIME }
    }
}

/// Sends a record to the dead-letter topic (through `send`) and resolves to its outcome: `Ok` once
/// the dead-letter topic has it, or, when that topic refuses it too, once it is parked in the
/// quarantine (`record`: its bytes as the spool keeps them). If it cannot be parked either, the outcome
/// is a retriable failure: the record stays in the spool and is tried again, never dropped.
fn send_to_dead_letter(
    seq: u64,
    publisher: Arc<Publisher>,
    quarantine: Quarantine,
    reason: String,
    key: Vec<u8>,
    record: Vec<u8>,
    send: impl FnOnce(&Publisher, &str) -> Result<Pending, PublishError> + Send + 'static,
) -> DeadLetterSend {
    Box::pin(async move {
        let key = String::from_utf8_lossy(&key).into_owned();
        tracing::error!(
            key = %key,
            reason = %reason,
            dlq_topic = publisher.dlq_topic(),
            "Kafka refused the event for good; sending it to the dead-letter topic"
        );
        let sent = match send(&publisher, &reason) {
            Ok(p) => p.await.map(drop),
            Err(e) => Err(e),
        };
        let result = match sent {
            Ok(()) => {
                publisher.metrics().kafka_dead_lettered.inc();
                Ok(())
            }
            Err(PublishError::Permanent(e)) => {
                let parked = tokio::task::spawn_blocking(move || quarantine.park(seq, &record))
                    .await
                    .unwrap_or_else(|_| Err(std::io::Error::other("the quarantine write panicked")));
                match parked {
                    Ok(path) => {
                        publisher.metrics().kafka_quarantined.inc();
                        tracing::error!(error = %e, key = %key, file = %path.display(),
                            "the dead-letter topic refused the event too; it is parked in the quarantine (tim-kafka-bridge drain publishes it once the topic takes it)");
                        Ok(())
                    }
                    Err(io) => {
                        tracing::error!(error = %e, key = %key, quarantine_error = %io,
                            "the dead-letter topic refused the event too and the quarantine cannot take it; it stays in the spool and is tried again");
                        Err(PublishError::Retriable(e))
                    }
                }
            }
            Err(e) => Err(e),
        };
        (seq, result)
    })
}
