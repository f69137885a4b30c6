//! The Kafka producer: turns a [`KafkaRecord`] into a record, and a delivery report into a verdict.
//!
//! One main producer is created at start and shared. Enqueued is not delivered: a record counts only
//! once librdkafka reports it delivered, which with `acks=all` means every in-sync replica has it. In
//! spool mode every report goes through one delivery callback into one channel, tagged with the
//! record's spool sequence number ([`Report`], [`Publisher::send_spooled`]): no future, oneshot
//! channel or allocation per record. In `sync` mode, where each webhook's answer waits on its own
//! record, the record's [`Pending`] future resolves with the report.
//! The publisher never decides to drop anything; it only says whether a failure is worth retrying
//! ([`PublishError::Retriable`]), final for this record ([`PublishError::Permanent`]: Kafka will refuse
//! it whatever we do), or final for the producer ([`PublishError::Fatal`]: librdkafka's idempotent
//! producer can no longer guarantee order, and only a new producer can go on), and the
//! [forwarder](crate::forwarder) acts on that.
//!
//! Kafka refuses some records for good: larger than the topic's `max.message.bytes`, or with a
//! timestamp outside its `message.timestamp.*` window (Kafka 4 refuses anything more than an hour
//! ahead by default). A refused record is a record the bridge said OK to and cannot deliver in
//! order, so [`TopicLimits`] reads those settings from the cluster and the bridge stops such records
//! before they are answered (413) or gives them a timestamp Kafka takes (the receive time).
//!
//! What the producer is built from is its own type ([`KafkaSettings`]), and so is the list of
//! librdkafka overrides it refuses ([`RdkafkaOverrides::check`]); the configuration reads them from
//! the environment.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message as _, OwnedHeaders, OwnedMessage};
use rdkafka::metadata::Metadata;
use rdkafka::producer::future_producer::Delivery;
use rdkafka::producer::{
    BaseRecord, DeliveryFuture, DeliveryResult, FutureProducer, FutureRecord, Producer, ProducerContext,
    PurgeConfig, ThreadedProducer,
};
use rdkafka::statistics::Statistics;
use rdkafka::ClientContext;
use tokio::sync::mpsc;

use crate::message::{KafkaRecord, KafkaRecordRef};
use crate::metrics::Metrics;

/// What the producer is built from: `BRIDGE_KAFKA_BROKERS`, `BRIDGE_TOPIC`, `BRIDGE_DLQ_TOPIC` and
/// the `BRIDGE_RDKAFKA_*` overrides (read and checked by the configuration).
#[derive(Debug, Clone)]
pub struct KafkaSettings {
    pub brokers: String,
    pub topic: String,
    pub dlq_topic: String,
    pub rdkafka: RdkafkaOverrides,
}

/// Prefix of the pass-through librdkafka properties.
pub const RDKAFKA_PREFIX: &str = "BRIDGE_RDKAFKA_";

/// A `BRIDGE_RDKAFKA_*` override refused because it would void what the bridge promises: the variable,
/// and why.
#[derive(Debug, thiserror::Error)]
#[error("{variable}: {problem}")]
pub struct RefusedOverride {
    pub variable: String,
    pub problem: String,
}

/// librdkafka properties from `BRIDGE_RDKAFKA_*`. `Debug` hides the values of anything secret.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct RdkafkaOverrides(pub BTreeMap<String, String>);

impl RdkafkaOverrides {
    /// Whether a librdkafka property holds a secret (`sasl.password`, `ssl.key.password`, …).
    pub fn is_secret(property: &str) -> bool {
        ["password", "secret", "sasl", "key", "token", "credential"].iter().any(|w| property.contains(w))
            && property != "sasl.mechanisms"
            && property != "sasl.mechanism"
    }
}

/// librdkafka properties whose override would void what the bridge promises, and why. `allowed` says
/// which values keep the promise, given whether librdkafka may give up on a record by itself (see
/// [`RdkafkaOverrides::check`]).
struct Guarded {
    properties: &'static [&'static str],
    allowed: fn(&str, bool) -> bool,
    why: &'static str,
}

const GUARDED: &[Guarded] = &[
    Guarded {
        properties: &["enable.idempotence"],
        allowed: |v, _| v.eq_ignore_ascii_case("true"),
        why: "without the idempotent producer a retry can write a record twice or out of order",
    },
    Guarded {
        properties: &["acks", "request.required.acks"],
        allowed: |v, _| v == "all" || v == "-1",
        why: "an event counts as delivered only once every in-sync replica has it (acks=all)",
    },
    Guarded {
        properties: &["max.in.flight.requests.per.connection", "max.in.flight"],
        allowed: |v, _| v.parse::<u32>().is_ok_and(|n| (1..=5).contains(&n)),
        why: "the idempotent producer keeps order only with at most 5 requests in flight",
    },
    Guarded {
        properties: &["retries", "message.send.max.retries"],
        allowed: |_, _| false,
        why: "a record that runs out of retries fails while the ones behind it are written: they overtake it",
    },
    Guarded {
        properties: &["enable.gapless.guarantee"],
        allowed: |_, _| false,
        why: "the bridge keeps order itself; gapless mode turns every gap into a fatal producer error",
    },
    Guarded {
        properties: &["message.timeout.ms", "delivery.timeout.ms"],
        allowed: |v, expiry_allowed| expiry_allowed || v == "0",
        why: "in spool mode the bridge owns retries: a record librdkafka expires is overtaken by the ones behind it (use BRIDGE_SYNC_TIMEOUT_MS in sync mode)",
    },
    Guarded {
        properties: &["partitioner"],
        allowed: |v, _| v == "murmur2_random",
        why: "only murmur2_random puts a key where a Java client does: another partitioner can split a group's events over two partitions (out of order) and breaks the snapshot's sweep, which computes each group's partition that way",
    },
    Guarded {
        properties: &["delivery.report.only.error"],
        allowed: |v, _| v.eq_ignore_ascii_case("false"),
        why: "a record leaves the spool only on its delivery report: with reports of failures only, nothing is ever settled",
    },
    Guarded {
        properties: &["transactional.id"],
        allowed: |_, _| false,
        why: "the bridge names its transactions itself (BRIDGE_EXACTLY_ONCE=true derives the id from the spool's): another id would not fence an earlier instance of this spool's producer",
    },
];

impl RdkafkaOverrides {
    /// Refuses an override that would break order or durability, naming the variable.
    /// `expiry_allowed`: whether librdkafka may give up on a record by itself, as it does when each
    /// record's answer waits on it (sync delivery); with a spool, the spool owns retries.
    pub fn check(&self, expiry_allowed: bool) -> Result<(), RefusedOverride> {
        for (property, value) in &self.0 {
            if let Some(g) = GUARDED.iter().find(|g| g.properties.contains(&property.as_str())) {
                if !(g.allowed)(value.trim(), expiry_allowed) {
                    let variable =
                        format!("{RDKAFKA_PREFIX}{}", property.replace('.', "_").to_ascii_uppercase());
                    let problem = format!("{property}={value} is refused: {}", g.why);
                    return Err(RefusedOverride { variable, problem });
                }
            }
        }
        Ok(())
    }
}

impl std::fmt::Debug for RdkafkaOverrides {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(
                self.0.iter().map(|(k, v)| (k, if Self::is_secret(k) { "[redacted]" } else { v.as_str() })),
            )
            .finish()
    }
}

/// Why a record is not (yet) in Kafka.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// Kafka or the network is unavailable, slow, or the local queue is full: try again later.
    #[error("Kafka delivery failed, will retry: {0}")]
    Retriable(KafkaError),
    /// Kafka refuses this record for good (too large, invalid): retrying cannot help.
    #[error("Kafka refused the record: {0}")]
    Permanent(KafkaError),
    /// The producer is in librdkafka's fatal state (e.g. the idempotent producer lost sequence): it
    /// takes nothing more, and must be replaced.
    #[error("the Kafka producer failed for good: {0}")]
    Fatal(KafkaError),
}

impl PublishError {
    /// A delivery librdkafka reported as successful without an offset: it acknowledged the record
    /// only implicitly, because Kafka took a later batch of the same partition. That proves nothing
    /// when the broker did not know the producer on that partition yet (it takes any sequence number
    /// then), so the record may not be on the topic: treated as a retriable failure. Counted as
    /// `bridge_kafka_errors_total{kind="Inconsistent"}`.
    pub fn unconfirmed() -> Self {
        PublishError::Retriable(KafkaError::MessageProduction(RDKafkaErrorCode::Inconsistent))
    }

    /// Whether this is [`PublishError::unconfirmed`].
    pub fn is_unconfirmed(&self) -> bool {
        matches!(self, PublishError::Retriable(KafkaError::MessageProduction(RDKafkaErrorCode::Inconsistent)))
    }

    pub fn kafka_error(&self) -> &KafkaError {
        let (PublishError::Retriable(e) | PublishError::Permanent(e) | PublishError::Fatal(e)) = self;
        e
    }
}

/// A producer that cannot be built from the settings. The text never holds a secret's value.
#[derive(Debug, thiserror::Error)]
#[error("{variable}: {problem}")]
pub struct ProducerConfigError {
    variable: String,
    problem: String,
}

impl ProducerConfigError {
    fn new(error: &KafkaError, overrides: &RdkafkaOverrides) -> Self {
        let mut problem = error.to_string();
        for (k, v) in &overrides.0 {
            if RdkafkaOverrides::is_secret(k) && !v.is_empty() {
                problem = problem.replace(v.as_str(), "[redacted]");
            }
        }
        Self { variable: blame(error, overrides), problem }
    }
}

/// Routes librdkafka's own log lines and errors into `tracing`, its statistics into metrics.
pub struct BridgeContext {
    metrics: Arc<Metrics>,
}

impl ClientContext for BridgeContext {
    /// Through [`telemetry::librdkafka_line`](crate::telemetry::librdkafka_line): identical lines are
    /// collapsed, transient start-up warnings logged at INFO.
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        use tracing::Level;
        let level = match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => Level::ERROR,
            RDKafkaLogLevel::Warning => Level::WARN,
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => Level::INFO,
            RDKafkaLogLevel::Debug => Level::DEBUG,
        };
        crate::telemetry::librdkafka_line(level, fac, message);
    }

    /// Every error is counted; its log line goes through the same gate as [`log`](Self::log)'s.
    fn error(&self, error: KafkaError, reason: &str) {
        let kind = error_kind(&error);
        self.metrics.kafka_errors.with_label_values(&[&kind]).inc();
        crate::telemetry::librdkafka_line(
            tracing::Level::WARN,
            &kind,
            &format!("Kafka client error: {reason}"),
        );
    }

    fn stats(&self, statistics: Statistics) {
        self.metrics.observe_kafka_statistics(&statistics);
    }
}

/// What the main producer says about one record sent with [`Publisher::send_spooled`]: every report
/// goes through one callback into one channel (no future, no allocation per record).
#[derive(Debug)]
pub struct Report {
    /// Which producer sent it (see [`Publisher::generation`]): reports of a replaced producer are
    /// stale.
    pub generation: u64,
    /// The spool sequence number the record was sent with.
    pub seq: u64,
    /// The partition it went to (or was to go to).
    pub partition: i32,
    pub outcome: Outcome,
}

/// What became of one record.
#[derive(Debug)]
pub enum Outcome {
    Delivered,
    /// Not delivered; retriable or fatal for the producer (never [`PublishError::Permanent`]).
    Failed(PublishError),
    /// Kafka refused it for good; the record comes back whole, for the dead-letter topic.
    Refused(KafkaError, OwnedMessage),
}

// The record's sequence number travels as librdkafka's delivery opaque, a pointer-sized integer.
const _: () = assert!(usize::BITS >= u64::BITS, "spool sequence numbers need a 64-bit usize");

/// [`BridgeContext`] plus the delivery callback of the spool's producer: the record's sequence number
/// is its delivery opaque, the report goes to the forwarder's channel.
pub struct ReportingContext {
    base: BridgeContext,
    generation: u64,
    reports: mpsc::UnboundedSender<Report>,
}

impl ClientContext for ReportingContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        self.base.log(level, fac, message)
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.base.error(error, reason)
    }

    fn stats(&self, statistics: Statistics) {
        self.base.stats(statistics)
    }
}

impl ProducerContext for ReportingContext {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, seq: usize) {
        let partition = match result {
            Ok(m) => m.partition(),
            Err((_, m)) => m.partition(),
        };
        #[cfg(feature = "failpoints")]
        if result.is_ok()
            && crate::failpoints::here()
            && fail::eval("publisher::lose_report", |_| ()).is_some()
        {
            // As a producer that lost track of a record: it is in Kafka, and never reported on.
            return;
        }
        let outcome = match result {
            // No offset: implicitly acknowledged (see `PublishError::unconfirmed`).
            Ok(m) if m.offset() < 0 => Outcome::Failed(PublishError::unconfirmed()),
            Ok(_) => Outcome::Delivered,
            Err((e, m)) => match classify(e.clone()) {
                PublishError::Permanent(e) => Outcome::Refused(e, m.detach()),
                other => Outcome::Failed(other),
            },
        };
        // The forwarder may be gone (shutdown): nobody needs the report then.
        let _ =
            self.reports.send(Report { generation: self.generation, seq: seq as u64, partition, outcome });
    }
}

/// The main producer: a future per record when the webhook's answer waits on it (`sync` mode), one
/// callback for all when the forwarder publishes the spool.
#[derive(Clone)]
enum MainProducer {
    Futures(FutureProducer<BridgeContext>),
    Reports(ThreadedProducer<ReportingContext>),
}

impl MainProducer {
    fn fatal_error(&self) -> Option<(RDKafkaErrorCode, String)> {
        match self {
            MainProducer::Futures(p) => p.client().fatal_error(),
            MainProducer::Reports(p) => p.client().fatal_error(),
        }
    }

    fn fetch_metadata(&self, topic: Option<&str>, timeout: Duration) -> Result<Metadata, KafkaError> {
        match self {
            MainProducer::Futures(p) => p.client().fetch_metadata(topic, timeout),
            MainProducer::Reports(p) => p.client().fetch_metadata(topic, timeout),
        }
    }

    fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        match self {
            MainProducer::Futures(p) => p.flush(timeout),
            MainProducer::Reports(p) => p.flush(timeout),
        }
    }

    #[cfg(feature = "failpoints")]
    fn native_ptr(&self) -> *mut rdkafka::bindings::rd_kafka_t {
        match self {
            MainProducer::Futures(p) => p.client().native_ptr(),
            MainProducer::Reports(p) => p.client().native_ptr(),
        }
    }
}

/// How the main producer confirms deliveries.
pub enum Confirmations {
    /// A future per record ([`Publisher::send`]).
    PerRecord,
    /// One report per record through `reports` ([`Publisher::send_spooled`]).
    Reports(mpsc::UnboundedSender<Report>),
    /// As `Reports`, from a transactional producer (`BRIDGE_EXACTLY_ONCE`): every record is sent
    /// inside a transaction the caller begins and commits ([`Publisher::begin_transaction`]), and a
    /// delivery report only says it is in the open transaction.
    Transactions { reports: mpsc::UnboundedSender<Report>, transactional_id: String, timeout: Duration },
}

/// What a failed transactional call means (librdkafka's three classes).
#[derive(Debug, thiserror::Error)]
pub enum TxnError {
    /// Call the same function again (a timeout, a transport failure; the call resumes).
    #[error("{0} (retriable)")]
    Retriable(KafkaError),
    /// The transaction cannot commit: abort it and publish again from the last committed position.
    #[error("{0} (the transaction must be aborted)")]
    Abortable(KafkaError),
    /// The producer can do nothing more (fenced, or a protocol error): replace it.
    #[error("{0} (fatal for the producer)")]
    Fatal(KafkaError),
}

impl TxnError {
    fn of(error: KafkaError) -> Self {
        match &error {
            KafkaError::Transaction(e) if e.is_fatal() => TxnError::Fatal(error),
            KafkaError::Transaction(e) if e.txn_requires_abort() => TxnError::Abortable(error),
            KafkaError::Transaction(e) if e.is_retriable() => TxnError::Retriable(error),
            // rust-rdkafka flushes before it commits: a flush that timed out left the transaction open
            // and untouched.
            KafkaError::Flush(_) => TxnError::Retriable(error),
            // No flag: librdkafka says to treat it as fatal.
            _ => TxnError::Fatal(error),
        }
    }

    pub fn kafka_error(&self) -> &KafkaError {
        let (TxnError::Retriable(e) | TxnError::Abortable(e) | TxnError::Fatal(e)) = self;
        e
    }
}

/// The delivery opaque of the position record a transaction ends with (never a spool sequence
/// number): its report is not a record's.
pub const POSITION_OPAQUE: u64 = u64::MAX;

/// Whether librdkafka's fatal error `code` says another producer with the same transactional id
/// fenced this one (or the coordinator did, after the transaction outlived its timeout).
pub fn is_fenced(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::Fenced | RDKafkaErrorCode::ProducerFenced | RDKafkaErrorCode::InvalidProducerEpoch
    )
}

/// A low-cardinality name for a Kafka error: librdkafka's error code.
pub fn error_kind(error: &KafkaError) -> String {
    match error.rdkafka_error_code() {
        Some(code) => format!("{code:?}"),
        None => "Other".to_owned(),
    }
}

/// What the topic accepts, as read from the cluster (Kafka's defaults until then).
#[derive(Debug)]
pub struct TopicLimits {
    /// `max.message.bytes`: the largest record batch the topic takes.
    max_message_bytes: AtomicU64,
    /// `message.timestamp.before.max.ms`: how far in the past a record's timestamp may be.
    before_max_ms: AtomicI64,
    /// `message.timestamp.after.max.ms`: how far in the future (Kafka 4: one hour by default).
    after_max_ms: AtomicI64,
    /// `message.timestamp.type=LogAppendTime`: the broker stamps records itself.
    log_append_time: AtomicBool,
    /// Whether the values came from the cluster.
    known: AtomicBool,
}

/// Kafka's `max.message.bytes` default (1 MiB + the batch overhead).
const DEFAULT_MAX_MESSAGE_BYTES: u64 = 1_048_588;
/// Kafka 4's `message.timestamp.after.max.ms` default.
const DEFAULT_AFTER_MAX_MS: i64 = 3_600_000;
/// Room for the difference between the bridge's clock and the broker's.
const CLOCK_MARGIN_MS: i64 = 60_000;
/// librdkafka's default `batch.size`.
const DEFAULT_BATCH_SIZE: u64 = 1_000_000;

impl Default for TopicLimits {
    fn default() -> Self {
        Self {
            max_message_bytes: AtomicU64::new(DEFAULT_MAX_MESSAGE_BYTES),
            before_max_ms: AtomicI64::new(i64::MAX),
            after_max_ms: AtomicI64::new(DEFAULT_AFTER_MAX_MS),
            log_append_time: AtomicBool::new(false),
            known: AtomicBool::new(false),
        }
    }
}

impl TopicLimits {
    pub fn max_message_bytes(&self) -> u64 {
        self.max_message_bytes.load(Ordering::Relaxed)
    }

    /// `Err((size, limit))` when Kafka would refuse the record for its size alone.
    pub fn check_size(&self, message: &KafkaRecord) -> Result<(), (usize, u64)> {
        let (size, limit) = (message.kafka_size(), self.max_message_bytes());
        if size as u64 > limit {
            Err((size, limit))
        } else {
            Ok(())
        }
    }

    /// The timestamp to send `message` with at `now_ms`: its own when the topic takes it, else the
    /// receive time, else now. (The value keeps the event's own time in `event_time_ms`.)
    pub fn timestamp_for(&self, message: &KafkaRecordRef<'_>, now_ms: i64) -> i64 {
        if self.log_append_time.load(Ordering::Relaxed) {
            return message.timestamp_ms;
        }
        let before = self.before_max_ms.load(Ordering::Relaxed);
        let after = self.after_max_ms.load(Ordering::Relaxed);
        let takes = |t: i64| {
            t.saturating_sub(now_ms) < after.saturating_sub(CLOCK_MARGIN_MS)
                && now_ms.saturating_sub(t) < before.saturating_sub(CLOCK_MARGIN_MS)
        };
        [message.timestamp_ms, message.received_at_ms].into_iter().find(|t| takes(*t)).unwrap_or(now_ms)
    }

    /// Takes the settings of a `describe_configs` answer (topic or broker names).
    fn update(&self, entries: &[(String, Option<String>)]) {
        let get = |names: &[&str]| {
            entries.iter().find(|(n, _)| names.contains(&n.as_str())).and_then(|(_, v)| v.clone())
        };
        if let Some(v) = get(&["max.message.bytes", "message.max.bytes"]).and_then(|v| v.parse().ok()) {
            self.max_message_bytes.store(v, Ordering::Relaxed);
        }
        let ms = |names: &[&str]| get(names).and_then(|v| v.parse::<i64>().ok());
        if let Some(v) = ms(&["message.timestamp.before.max.ms", "log.message.timestamp.before.max.ms"]) {
            self.before_max_ms.store(v, Ordering::Relaxed);
        }
        if let Some(v) = ms(&["message.timestamp.after.max.ms", "log.message.timestamp.after.max.ms"]) {
            self.after_max_ms.store(v, Ordering::Relaxed);
        }
        if let Some(v) = get(&["message.timestamp.type", "log.message.timestamp.type"]) {
            self.log_append_time.store(v == "LogAppendTime", Ordering::Relaxed);
        }
        self.known.store(true, Ordering::Relaxed);
    }
}

pub struct Publisher {
    /// The main producer; replaced by a new one after a fatal error (see [`Publisher::rebuild`]).
    producer: RwLock<MainProducer>,
    /// Counts the main producers built: the generation of the current one.
    generation: AtomicU64,
    /// Where a reporting producer sends its reports (`None`: futures).
    reports: Option<mpsc::UnboundedSender<Report>>,
    /// The settings the main producer is built from, for rebuilding it.
    config: ClientConfig,
    /// The dead-letter topic's own producer: the same settings, except that it keeps librdkafka's
    /// default `message.max.bytes`, so a record refused for its size by the main producer can still
    /// be dead-lettered whole.
    dlq_producer: FutureProducer<BridgeContext>,
    /// Reads the topic's settings (`describe_configs`).
    admin: AdminClient<DefaultClientContext>,
    topic: String,
    dlq_topic: String,
    limits: TopicLimits,
    metrics: Arc<Metrics>,
    overrides: RdkafkaOverrides,
    /// The topic's `max.message.bytes` shrank below the main producer's batches: it must be rebuilt
    /// to fit before more is sent (the forwarder does it, see [`Publisher::take_refit`]).
    refit: AtomicBool,
    /// The main producer is transactional ([`Confirmations::Transactions`]).
    transactional: bool,
}

impl Publisher {
    /// Builds the producer. `message_timeout` is librdkafka's `message.timeout.ms`: `None` lets a record
    /// wait for Kafka indefinitely (spool mode, where the spool and not librdkafka decides when to
    /// give up, which is never). `linger` is `linger.ms`. A `BRIDGE_RDKAFKA_*` property overrides any
    /// default set here (those that would void the guarantees are refused by the configuration).
    /// `confirmations`: a future per record, or reports through a channel (see [`Report`]).
    pub fn new(
        settings: &KafkaSettings,
        message_timeout: Option<Duration>,
        linger: Duration,
        metrics: Arc<Metrics>,
        confirmations: Confirmations,
    ) -> Result<Self, ProducerConfigError> {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &settings.brokers)
            .set("client.id", env!("CARGO_PKG_NAME"))
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("compression.type", "lz4")
            .set("linger.ms", linger.as_millis().to_string())
            .set("partitioner", "murmur2_random")
            .set("statistics.interval.ms", "5000")
            .set("message.timeout.ms", message_timeout.map_or(0, |t| t.as_millis() as u64).to_string());
        for (k, v) in &settings.rdkafka.0 {
            config.set(k, v);
        }
        // Warnings and worse, unless librdkafka's debug contexts were asked for (`BRIDGE_RDKAFKA_DEBUG`):
        // then its debug lines too (logged at DEBUG, target `librdkafka`).
        let debug = settings.rdkafka.0.iter().any(|(k, _)| k == "debug");
        config.set_log_level(if debug { RDKafkaLogLevel::Debug } else { RDKafkaLogLevel::Warning });
        let overrides = settings.rdkafka.clone();
        let (reports, transactional) = match confirmations {
            Confirmations::PerRecord => (None, false),
            Confirmations::Reports(tx) => (Some(tx), false),
            Confirmations::Transactions { reports, transactional_id, timeout } => (Some(reports), {
                config.set("transactional.id", transactional_id);
                config.set("transaction.timeout.ms", timeout.as_millis().to_string());
                // librdkafka takes transaction.timeout.ms as the records' timeout: a record never
                // outlives the transaction it is in.
                config.remove("message.timeout.ms");
                true
            }),
        };
        let producer = create_main(&config, &metrics, &overrides, reports.as_ref(), 0)?;
        let mut dlq = config.clone();
        // The dead-letter producer and the admin client are never transactional.
        for property in ["transactional.id", "transaction.timeout.ms"] {
            dlq.remove(property);
        }
        if transactional {
            dlq.set("message.timeout.ms", "0");
        }
        dlq.remove("message.max.bytes");
        dlq.set("statistics.interval.ms", "0");
        let dlq_producer = create(&dlq, &metrics, &overrides)?;
        // librdkafka's admin client is a producer handle underneath: the same settings apply.
        let mut admin = dlq.clone();
        admin.remove("statistics.interval.ms");
        admin.set("client.id", concat!(env!("CARGO_PKG_NAME"), "-admin"));
        admin.set_log_level(RDKafkaLogLevel::Error);
        let admin = admin.create().map_err(|e| ProducerConfigError::new(&e, &overrides))?;
        Ok(Self {
            producer: RwLock::new(producer),
            generation: AtomicU64::new(0),
            reports,
            config,
            dlq_producer,
            admin,
            topic: settings.topic.clone(),
            dlq_topic: settings.dlq_topic.clone(),
            limits: TopicLimits::default(),
            metrics,
            overrides,
            refit: AtomicBool::new(false),
            transactional,
        })
    }

    fn producer(&self) -> MainProducer {
        self.producer.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The generation of the current main producer: 0 for the first, one more for each
    /// [`rebuild`](Self::rebuild).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Replaces the main producer with a new one (after a fatal error). Records in flight in the old
    /// one are abandoned: the caller publishes them again. The new producer's batches fit the topic's
    /// `max.message.bytes` as last read.
    pub fn rebuild(&self) -> Result<(), ProducerConfigError> {
        let mut config = self.config.clone();
        self.fit_batches(&mut config);
        // Built before the lock is taken: readers (the health probe, sends) never wait for it. Its
        // generation is reserved first; it reports nothing before it has been sent anything.
        let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        let fresh = create_main(&config, &self.metrics, &self.overrides, self.reports.as_ref(), generation)?;
        let old = std::mem::replace(&mut *self.producer.write().unwrap_or_else(|e| e.into_inner()), fresh);
        // Dropping purges what the old producer still held (nobody waits for it any more) and
        // blocks for up to half a second: not on the caller's thread.
        std::thread::spawn(move || drop(old));
        Ok(())
    }

    /// Batches no larger than the topic takes (librdkafka's default 1 MB is under Kafka's default).
    fn fit_batches(&self, config: &mut ClientConfig) {
        let max = self.limits.max_message_bytes();
        if max < DEFAULT_BATCH_SIZE && !self.overrides.0.contains_key("batch.size") {
            config.set("batch.size", max.saturating_sub(1024).max(1024).to_string());
        }
    }

    /// Reads the topic's size and timestamp settings from the cluster (the broker's defaults while
    /// the topic does not exist yet, as it will be created with them). `Ok(true)` when the producer
    /// should be rebuilt to fit smaller batches.
    pub async fn refresh_limits(&self, timeout: Duration) -> Result<bool, KafkaError> {
        let opts = AdminOptions::new().request_timeout(Some(timeout));
        let topic = self.admin.describe_configs([&ResourceSpecifier::Topic(&self.topic)], &opts).await?;
        let entries = match topic.into_iter().next() {
            Some(Ok(resource)) => resource.entries,
            _ => {
                let producer = self.producer();
                let broker = tokio::task::spawn_blocking(move || {
                    let metadata = producer.fetch_metadata(None, Duration::from_secs(2))?;
                    Ok::<_, KafkaError>(metadata.brokers().first().map(|b| b.id()))
                })
                .await
                .map_err(|_| KafkaError::Canceled)??
                .ok_or(KafkaError::MetadataFetch(RDKafkaErrorCode::BrokerNotAvailable))?;
                let answer = self.admin.describe_configs([&ResourceSpecifier::Broker(broker)], &opts).await?;
                match answer.into_iter().next() {
                    Some(Ok(resource)) => resource.entries,
                    Some(Err(code)) => return Err(KafkaError::AdminOp(code)),
                    None => return Err(KafkaError::AdminOp(RDKafkaErrorCode::Unknown)),
                }
            }
        };
        let before = self.limits.max_message_bytes();
        let first = !self.limits.known.load(Ordering::Relaxed);
        self.limits.update(&entries.into_iter().map(|e| (e.name, e.value)).collect::<Vec<_>>());
        let after = self.limits.max_message_bytes();
        if first || before != after {
            tracing::info!(
                topic = %self.topic,
                max_message_bytes = after,
                timestamp_after_max_ms = self.limits.after_max_ms.load(Ordering::Relaxed),
                "read the topic's limits"
            );
        }
        Ok(after < DEFAULT_BATCH_SIZE && after != before)
    }

    /// Keeps the topic's limits current: every 10 s (a `describe_configs`, cheap), every 5 s while they
    /// have not been read yet. A limit that shrank below the producer's batches asks for a refit.
    pub async fn watch_limits(self: Arc<Self>) {
        loop {
            let known = self.limits.known.load(Ordering::Relaxed);
            tokio::time::sleep(if known { Duration::from_secs(10) } else { Duration::from_secs(5) }).await;
            match self.refresh_limits(Duration::from_secs(5)).await {
                Ok(true) => self.request_refit(),
                Ok(false) => {}
                Err(e) => tracing::debug!(error = %e, "could not read the topic's limits"),
            }
        }
    }

    /// Asks for the main producer to be rebuilt with batches the topic's current limit takes.
    pub fn request_refit(&self) {
        if !self.refit.swap(true, Ordering::AcqRel) {
            tracing::warn!(
                max_message_bytes = self.limits.max_message_bytes(),
                "the topic's max.message.bytes shrank below the producer's batch size; a new producer will fit it before more is sent"
            );
        }
    }

    /// Whether a refit was asked for and not done yet.
    pub fn refit_pending(&self) -> bool {
        self.refit.load(Ordering::Acquire)
    }

    /// Takes the request for a refit (the caller rebuilds the producer).
    pub fn take_refit(&self) -> bool {
        self.refit.swap(false, Ordering::AcqRel)
    }

    /// Drops what the main producer holds and has not sent yet (it reports each as failed): after a
    /// batch was refused, records of its partition queued behind it must not overtake it.
    pub fn purge_queued(&self) {
        match self.producer() {
            MainProducer::Futures(p) => p.purge(PurgeConfig::default().queue()),
            MainProducer::Reports(p) => p.purge(PurgeConfig::default().queue()),
        }
    }

    pub fn limits(&self) -> &TopicLimits {
        &self.limits
    }

    /// Enqueues `message` on the main topic, with a timestamp the topic takes. The record is in Kafka
    /// once the returned future resolves `Ok`. For a publisher built with
    /// [`Confirmations::PerRecord`].
    pub fn send(&self, message: &KafkaRecord) -> Result<Pending, PublishError> {
        let MainProducer::Futures(producer) = self.producer() else {
            return Err(PublishError::Fatal(KafkaError::Canceled));
        };
        let m = message.as_ref();
        let timestamp = self.limits.timestamp_for(&m, crate::now_ms());
        let record = FutureRecord::to(&self.topic)
            .key(m.key)
            .payload(m.value)
            .headers(headers(&m, &[]))
            .timestamp(timestamp);
        producer.send_result(record).map(Pending).map_err(|(e, _)| classify(e))
    }

    /// Enqueues `message` on partition `partition` of the main topic, without a key when its key is
    /// empty (the snapshot's per-partition marks). For a publisher built with
    /// [`Confirmations::PerRecord`].
    pub fn send_to_partition(&self, message: &KafkaRecord, partition: i32) -> Result<Pending, PublishError> {
        let MainProducer::Futures(producer) = self.producer() else {
            return Err(PublishError::Fatal(KafkaError::Canceled));
        };
        let m = message.as_ref();
        let timestamp = self.limits.timestamp_for(&m, crate::now_ms());
        let record = FutureRecord::<[u8], [u8]>::to(&self.topic)
            .partition(partition)
            .payload(m.value)
            .headers(headers(&m, &[]))
            .timestamp(timestamp);
        let record = if m.key.is_empty() { record } else { record.key(m.key) };
        producer.send_result(record).map(Pending).map_err(|(e, _)| classify(e))
    }

    /// Enqueues a message from the quarantine on the main topic, through the dead-letter producer (same
    /// settings, librdkafka's default `message.max.bytes`, a future per record whatever the main
    /// producer reports through), with the timestamp it was parked with.
    pub fn send_parked(&self, message: &KafkaRecord) -> Result<Pending, PublishError> {
        let m = message.as_ref();
        let record = FutureRecord::to(&self.topic)
            .key(m.key)
            .payload(m.value)
            .headers(headers(&m, &[]))
            .timestamp(self.limits.timestamp_for(&m, crate::now_ms()));
        self.dlq_producer.send_result(record).map(Pending).map_err(|(e, _)| classify(e))
    }

    /// How many partitions the main topic has, from the cluster's metadata. Blocking.
    pub fn partition_count(&self, timeout: Duration) -> Result<i32, KafkaError> {
        let metadata = self.producer().fetch_metadata(Some(&self.topic), timeout)?;
        let topic =
            metadata.topics().first().ok_or(KafkaError::MetadataFetch(RDKafkaErrorCode::UnknownTopic))?;
        if let Some(e) = topic.error() {
            return Err(KafkaError::MetadataFetch(e.into()));
        }
        Ok(topic.partitions().len() as i32)
    }

    /// Enqueues `message`, spooled as `seq`, on the main topic, with a timestamp the topic takes. Its
    /// [`Report`] comes through the channel given to [`Publisher::new`] (a publisher built with
    /// [`Confirmations::Reports`]).
    pub fn send_spooled(&self, message: &KafkaRecordRef<'_>, seq: u64) -> Result<(), PublishError> {
        #[cfg(feature = "failpoints")]
        fail::eval("publisher::fatal", |_| self.inject_fatal_error());
        let MainProducer::Reports(producer) = self.producer() else {
            return Err(PublishError::Fatal(KafkaError::Canceled));
        };
        let timestamp = self.limits.timestamp_for(message, crate::now_ms());
        let record = BaseRecord::with_opaque_to(&self.topic, seq as usize)
            .key(message.key)
            .payload(message.value)
            .headers(headers(message, &[]))
            .timestamp(timestamp);
        producer.send(record).map_err(|(e, _)| classify(e))
    }

    /// Enqueues a record Kafka refused for good (or one the bridge cannot read) on the dead-letter
    /// topic, with the reason in the `bridge_dlq_reason` header and the original topic in
    /// `bridge_dlq_topic`. Its timestamp is now, not the event's (an invalid timestamp may be why it is
    /// here).
    pub fn send_dead_letter(
        &self,
        message: &KafkaRecordRef<'_>,
        reason: &str,
    ) -> Result<Pending, PublishError> {
        let extra = [("bridge_dlq_reason", reason), ("bridge_dlq_topic", self.topic.as_str())];
        let record = FutureRecord::to(&self.dlq_topic)
            .key(message.key)
            .payload(message.value)
            .headers(headers(message, &extra));
        self.dlq_producer.send_result(record).map(Pending).map_err(|(e, _)| classify(e))
    }

    /// [`send_dead_letter`](Self::send_dead_letter) for a record a [`Report`] gave back.
    pub fn send_refused_dead_letter(
        &self,
        refused: &OwnedMessage,
        reason: &str,
    ) -> Result<Pending, PublishError> {
        let mut h = refused.headers().cloned().unwrap_or_else(|| OwnedHeaders::new_with_capacity(2));
        for (key, value) in [("bridge_dlq_reason", reason), ("bridge_dlq_topic", self.topic.as_str())] {
            h = h.insert(Header { key, value: Some(value.as_bytes()) });
        }
        let mut record =
            FutureRecord::to(&self.dlq_topic).payload(refused.payload().unwrap_or_default()).headers(h);
        if let Some(key) = refused.key() {
            record = record.key(key);
        }
        self.dlq_producer.send_result(record).map(Pending).map_err(|(e, _)| classify(e))
    }

    /// librdkafka's fatal error, if the main producer is in that state.
    pub fn fatal_error(&self) -> Option<String> {
        self.producer().fatal_error().map(|(code, reason)| format!("{code:?}: {reason}"))
    }

    /// The code of librdkafka's fatal error, if the main producer is in that state.
    pub fn fatal_code(&self) -> Option<RDKafkaErrorCode> {
        self.producer().fatal_error().map(|(code, _)| code)
    }

    /// Whether the main producer is transactional (`BRIDGE_EXACTLY_ONCE`).
    pub fn is_transactional(&self) -> bool {
        self.transactional
    }

    fn reporting(&self) -> Result<ThreadedProducer<ReportingContext>, TxnError> {
        match self.producer() {
            MainProducer::Reports(p) => Ok(p),
            MainProducer::Futures(_) => Err(TxnError::Fatal(KafkaError::Canceled)),
        }
    }

    /// Registers the producer's transactional id with the coordinator, fencing any earlier producer
    /// with the same id (its open transaction is aborted, or its commit awaited). Blocking: at most
    /// `timeout`.
    pub fn init_transactions(&self, timeout: Duration) -> Result<(), TxnError> {
        self.reporting()?.init_transactions(timeout).map_err(TxnError::of)
    }

    /// Opens a transaction (local: no request to Kafka).
    pub fn begin_transaction(&self) -> Result<(), TxnError> {
        self.reporting()?.begin_transaction().map_err(TxnError::of)
    }

    /// Commits the open transaction: every record sent in it (and their delivery reports have all
    /// been taken when this returns `Ok`). Blocking: at most about twice `timeout` (rust-rdkafka
    /// flushes first).
    pub fn commit_transaction(&self, timeout: Duration) -> Result<(), TxnError> {
        #[cfg(feature = "failpoints")]
        if crate::failpoints::here() {
            if let Some(e) = fail::eval("publisher::commit", |arg| arg.unwrap_or_default()) {
                return Err(match e.as_str() {
                    "abortable" => {
                        TxnError::Abortable(KafkaError::MessageProduction(RDKafkaErrorCode::Inconsistent))
                    }
                    _ => TxnError::Retriable(KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut)),
                });
            }
            // Dies as `kill -9` would, the given milliseconds into the commit: whether Kafka got the
            // EndTxn or not is left to chance, as in a real crash.
            if let Some(ms) = fail::eval("publisher::mid_commit", |arg| {
                arg.and_then(|a| a.parse::<u64>().ok()).unwrap_or(2)
            }) {
                std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_millis(ms));
                    crate::failpoints::kill_self();
                });
            }
        }
        let producer = self.reporting()?;
        // Wait here for what is still in flight (the position record): rust-rdkafka's own flush before
        // the commit polls for up to 100 ms at a time while the polling thread takes the reports, which
        // would make every commit last 100 ms.
        let deadline = std::time::Instant::now() + timeout;
        while producer.in_flight_count() > 0 {
            if std::time::Instant::now() >= deadline {
                return Err(TxnError::Retriable(KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut)));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        producer.commit_transaction(timeout).map_err(TxnError::of)
    }

    /// Aborts the open transaction: what was sent in it is dropped by Kafka for `read_committed`
    /// readers, and what librdkafka still held is purged. Returns once the purged records' reports
    /// have all been delivered to the report channel too (or `timeout` passed), so that none of them
    /// arrives after the caller sent the same records again. Blocking.
    pub fn abort_transaction(&self, timeout: Duration) -> Result<(), TxnError> {
        let producer = self.reporting()?;
        producer.abort_transaction(timeout).map_err(TxnError::of)?;
        let deadline = std::time::Instant::now() + timeout;
        while producer.in_flight_count() > 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    }

    /// Enqueues the position record that ends a transaction (see [`crate::exactly_once`]), on
    /// partition 0 of `topic`. Its report carries [`POSITION_OPAQUE`].
    pub fn send_position(&self, topic: &str, key: &str, value: &[u8]) -> Result<(), PublishError> {
        let MainProducer::Reports(producer) = self.producer() else {
            return Err(PublishError::Fatal(KafkaError::Canceled));
        };
        let record = BaseRecord::with_opaque_to(topic, POSITION_OPAQUE as usize)
            .partition(0)
            .key(key)
            .payload(value)
            .timestamp(crate::now_ms());
        producer.send(record).map_err(|(e, _)| classify(e))
    }

    /// Puts the producer in librdkafka's fatal state, as a broker that fenced it would (tests only).
    #[cfg(feature = "failpoints")]
    fn inject_fatal_error(&self) {
        let producer = self.producer();
        let reason = std::ffi::CString::new("injected by the publisher::fatal failpoint").unwrap();
        // SAFETY: the pointer is the live client of `producer`, which outlives the call.
        unsafe {
            rdkafka::bindings::rd_kafka_test_fatal_error(
                producer.native_ptr(),
                rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER,
                reason.as_ptr(),
            );
        }
    }

    /// Waits until every enqueued record is delivered or `timeout` passes.
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.dlq_producer.flush(timeout / 4)?;
        self.producer().flush(timeout)
    }

    /// Asks the cluster for the topic's metadata: whether Kafka answers at all. Blocking.
    pub fn probe(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.producer().fetch_metadata(Some(&self.topic), timeout).map(drop)
    }

    /// [`probe`](Self::probe) through the admin client: whether Kafka answers, asked by a client other
    /// than the producer (whose own connections may be what is stuck). Blocking.
    pub fn probe_apart(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.admin.inner().fetch_metadata(Some(&self.topic), timeout).map(drop)
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    pub fn dlq_topic(&self) -> &str {
        &self.dlq_topic
    }
}

fn create_main(
    config: &ClientConfig,
    metrics: &Arc<Metrics>,
    overrides: &RdkafkaOverrides,
    reports: Option<&mpsc::UnboundedSender<Report>>,
    generation: u64,
) -> Result<MainProducer, ProducerConfigError> {
    Ok(match reports {
        None => MainProducer::Futures(create(config, metrics, overrides)?),
        Some(tx) => MainProducer::Reports(
            config
                .create_with_context(ReportingContext {
                    base: BridgeContext { metrics: metrics.clone() },
                    generation,
                    reports: tx.clone(),
                })
                .map_err(|e| ProducerConfigError::new(&e, overrides))?,
        ),
    })
}

fn create(
    config: &ClientConfig,
    metrics: &Arc<Metrics>,
    overrides: &RdkafkaOverrides,
) -> Result<FutureProducer<BridgeContext>, ProducerConfigError> {
    config
        .create_with_context(BridgeContext { metrics: metrics.clone() })
        .map_err(|e| ProducerConfigError::new(&e, overrides))
}

fn headers(message: &KafkaRecordRef<'_>, extra: &[(&str, &str)]) -> OwnedHeaders {
    let mut h = OwnedHeaders::new_with_capacity(message.header_count() + extra.len());
    for (key, value) in message.headers() {
        h = h.insert(Header { key, value: Some(value.as_bytes()) });
    }
    for (key, value) in extra {
        h = h.insert(Header { key, value: Some(value.as_bytes()) });
    }
    h
}

/// Which `BRIDGE_RDKAFKA_*` variable (or the brokers) a configuration error is about.
fn blame(error: &KafkaError, overrides: &RdkafkaOverrides) -> String {
    let text = error.to_string();
    overrides
        .0
        .keys()
        .find(|k| text.contains(k.as_str()))
        .map(|k| format!("{RDKAFKA_PREFIX}{}", k.replace('.', "_").to_ascii_uppercase()))
        .unwrap_or_else(|| "BRIDGE_KAFKA_BROKERS / BRIDGE_RDKAFKA_*".to_owned())
}

/// Whether Kafka will ever take this record, and whether this producer can still send anything.
pub fn classify(error: KafkaError) -> PublishError {
    use RDKafkaErrorCode::*;
    let code = match &error {
        KafkaError::MessageProduction(code) => Some(*code),
        _ => None,
    };
    match code {
        Some(
            MessageSizeTooLarge | InvalidMessageSize | InvalidMessage | InvalidRecord | MessageBatchTooLarge
            | InvalidTimestamp,
        ) => PublishError::Permanent(error),
        Some(
            Fatal | OutOfOrderSequenceNumber | ProducerFenced | InvalidProducerEpoch | UnknownProducerId,
        ) => PublishError::Fatal(error),
        _ => PublishError::Retriable(error),
    }
}

/// A record on its way to Kafka.
pub struct Pending(DeliveryFuture);

impl Future for Pending {
    type Output = Result<Delivery, PublishError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx).map(|r| match r {
            Ok(Ok(delivery)) if delivery.offset < 0 => Err(PublishError::unconfirmed()),
            Ok(Ok(delivery)) => Ok(delivery),
            Ok(Err((e, _))) => Err(classify(e)),
            Err(_canceled) => Err(PublishError::Retriable(KafkaError::Canceled)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_too_large_is_final_a_timeout_is_not_and_a_fenced_producer_is_fatal() {
        let big = classify(KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge));
        assert!(matches!(big, PublishError::Permanent(_)));
        let late = classify(KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut));
        assert!(matches!(late, PublishError::Retriable(_)));
        let down = classify(KafkaError::MessageProduction(RDKafkaErrorCode::AllBrokersDown));
        assert!(matches!(down, PublishError::Retriable(_)));
        for code in [
            RDKafkaErrorCode::Fatal,
            RDKafkaErrorCode::OutOfOrderSequenceNumber,
            RDKafkaErrorCode::ProducerFenced,
        ] {
            assert!(
                matches!(classify(KafkaError::MessageProduction(code)), PublishError::Fatal(_)),
                "{code:?}"
            );
        }
    }

    fn message(timestamp_ms: i64, received_at_ms: i64) -> KafkaRecord {
        KafkaRecord {
            key: b"g".to_vec(),
            timestamp_ms,
            headers: vec![],
            value: vec![b'x'; 100],
            received_at_ms,
            event_time_ms: timestamp_ms,
        }
    }

    #[test]
    fn a_timestamp_the_topic_would_refuse_is_replaced_by_the_receive_time() {
        let limits = TopicLimits::default();
        let now = 1_800_000_000_000;
        assert_eq!(limits.timestamp_for(&message(now - 5_000, now).as_ref(), now), now - 5_000);
        // Two hours ahead: Kafka 4 refuses anything more than one hour ahead by default.
        assert_eq!(limits.timestamp_for(&message(now + 7_200_000, now - 10).as_ref(), now), now - 10);
        // Far in the past is fine by default (no before-limit) ...
        assert_eq!(limits.timestamp_for(&message(1, now).as_ref(), now), 1);
        // ... but not once the topic sets one; and a receive time too old falls back to now.
        limits.update(&[("message.timestamp.before.max.ms".into(), Some("86400000".into()))]);
        assert_eq!(limits.timestamp_for(&message(1, now - 10).as_ref(), now), now - 10);
        assert_eq!(limits.timestamp_for(&message(1, now - 172_800_000).as_ref(), now), now);
        limits.update(&[("message.timestamp.type".into(), Some("LogAppendTime".into()))]);
        assert_eq!(limits.timestamp_for(&message(1, 2).as_ref(), now), 1, "the broker stamps it anyway");
    }

    #[test]
    fn the_size_check_follows_the_topic_setting() {
        let limits = TopicLimits::default();
        assert!(limits.check_size(&message(1, 1)).is_ok());
        limits.update(&[("max.message.bytes".into(), Some("150".into()))]);
        assert!(matches!(limits.check_size(&message(1, 1)), Err((_, 150))));
    }
}
