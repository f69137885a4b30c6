//! tim-group-directory: a reference consumer of the group-change topic that keeps a table of groups.
//!
//! Why it exists: docs/event.md tells a consumer what it can rely on (at least once, per-group
//! partition order that is Tencent's delivery order, not the order of the changes) and what it must do
//! about it (order by `event_time_ms` then `event_id`, drop duplicates, skip unknown types). This is
//! that advice as running code, small enough to read and copy: every field of a group is a
//! last-writer-wins register, so replays, duplicates and out-of-order delivery all converge to the same
//! table; a `created` starts the group afresh (registers older than it are hidden), and `destroyed` is
//! a tombstone. docs/event.md ("How to consume") states the rule for any consumer.
//!
//! Why a crate of its own: a consumer knows the topic only through its documented format
//! (docs/event.md), as any other consumer does, never through the bridge's code; and the bridge's
//! library neither carries the database drivers (SQLite bundled, PostgreSQL) nor changes its API with
//! a feature. So this crate does not depend on the bridge (only on `tim-partition`, Kafka's
//! partitioner, which both use), and the bridge's library does not depend on it. The
//! `tim-group-directory` binary, thin (settings, logs, signals, the worker thread), stays in the
//! bridge's package to share its telemetry and shutdown; the bridge's `directory` feature, which that
//! binary requires, only adds this crate.
//!
//! ## Layout
//! - [`update`]: a record's value → the register writes it makes (lenient, as the versioning policy
//!   asks of consumers).
//! - [`store`]: the registers in SQLite (default) or PostgreSQL, and the `groups` view.
//! - [`run`]: the Kafka loop: poll a batch, apply it in one transaction, then commit the offsets.
//! - [`metrics`]: what the loop counts (applied events, skipped records, lag) and the `/metrics`
//!   server that exports it.

pub mod metrics;
pub mod store;
pub mod update;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

pub use metrics::Metrics;
pub use store::{Group, Store, StoreError};
pub use update::{Change, Kind, Skip, Stamp, Sweep, Update, Write};

/// At most this many records per transaction: bounds the work redone after a crash.
const MAX_BATCH: usize = 500;
/// How long one poll waits for a record; also how soon a stop is noticed.
const POLL: Duration = Duration::from_millis(200);
/// How often `directory_lag_records` is refreshed. Each refresh asks the partitions' leaders for their
/// high watermarks (a round trip per partition, on the consumer's thread): rare enough to cost nothing.
const LAG_REFRESH: Duration = Duration::from_secs(5);
/// How long one of those requests may take; the first to fail ends the refresh (the gauge keeps its
/// value), so a broker in trouble delays consuming by at most this much per refresh.
const LAG_QUERY_TIMEOUT: Duration = Duration::from_secs(1);

/// The consumer's settings, from `DIRECTORY_*` variables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// `sqlite://<path>` (or `sqlite:<path>`) or `postgres://…`.
    pub database_url: String,
    pub kafka_brokers: String,
    pub topic: String,
    /// Kafka consumer group: its committed offsets are where a restart resumes.
    pub consumer_group: String,
    /// Kafka static membership (`group.instance.id`), empty for none: a consumer restarted with the same
    /// id (after a crash, by systemd or a StatefulSet) takes its partitions back at once, instead of
    /// waiting out the session timeout of the process it replaces.
    pub instance_id: String,
    /// Where `GET /metrics` is served; `None` (the variable set to an empty value): nowhere.
    pub metrics_listen: Option<SocketAddr>,
}

/// Every variable, with its default, for `--help`.
pub const VARIABLES: &[(&str, &str, &str)] = &[
    (
        "DIRECTORY_DATABASE_URL",
        "sqlite://groups.db",
        "sqlite://<path> (or sqlite:<path>) or postgres://user:pass@host/db",
    ),
    ("DIRECTORY_KAFKA_BROKERS", "127.0.0.1:9092", "Kafka bootstrap servers"),
    ("DIRECTORY_TOPIC", "group-change", "the bridge's topic"),
    ("DIRECTORY_CONSUMER_GROUP", "tim-group-directory", "Kafka consumer group (where a restart resumes)"),
    (
        "DIRECTORY_INSTANCE_ID",
        "",
        "Kafka group.instance.id (static membership: a restart with the same id resumes at once)",
    ),
    (
        "DIRECTORY_METRICS_LISTEN",
        "127.0.0.1:9466",
        "address of the HTTP listener serving GET /metrics (Prometheus text format); empty: none",
    ),
    ("DIRECTORY_LOG_FORMAT", "text", "text | json (level from RUST_LOG)"),
];

/// A variable that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name}={value:?} is not an address (host-IP:port, such as 127.0.0.1:9466)")]
pub struct SettingsError {
    pub name: &'static str,
    pub value: String,
}

impl Settings {
    /// Reads the variables from `vars`, defaults for what is missing or empty; except that
    /// `DIRECTORY_METRICS_LISTEN` set to an empty value turns the metrics listener off.
    pub fn from_vars(vars: impl IntoIterator<Item = (String, String)>) -> Result<Self, SettingsError> {
        let mut vars: std::collections::HashMap<String, String> = vars.into_iter().collect();
        let metrics_off = vars.get("DIRECTORY_METRICS_LISTEN").is_some_and(|v| v.trim().is_empty());
        vars.retain(|_, v| !v.trim().is_empty());
        let get = |name: &str| {
            vars.get(name).cloned().unwrap_or_else(|| {
                VARIABLES.iter().find(|v| v.0 == name).expect("a known variable").1.to_owned()
            })
        };
        let metrics_listen = match metrics_off {
            true => None,
            false => {
                let value = get("DIRECTORY_METRICS_LISTEN");
                let addr = value
                    .trim()
                    .parse()
                    .map_err(|_| SettingsError { name: "DIRECTORY_METRICS_LISTEN", value })?;
                Some(addr)
            }
        };
        Ok(Self {
            database_url: get("DIRECTORY_DATABASE_URL"),
            kafka_brokers: get("DIRECTORY_KAFKA_BROKERS"),
            topic: get("DIRECTORY_TOPIC"),
            consumer_group: get("DIRECTORY_CONSUMER_GROUP"),
            instance_id: get("DIRECTORY_INSTANCE_ID"),
            metrics_listen,
        })
    }
}

/// Why the consumer stopped.
#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("Kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
}

/// Consumes the topic into the store until `stop` is set. Offsets are committed only after the batch
/// they cover is in the database (at least once; the registers make a replay harmless). `metrics`
/// counts what is applied once its transaction has committed, and what is skipped; every
/// [`LAG_REFRESH`] the lag is measured (between two batches, when every record polled is applied).
pub fn run(settings: &Settings, stop: &AtomicBool, metrics: &Metrics) -> Result<(), DirectoryError> {
    let mut store = store::open(&settings.database_url)?;
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &settings.kafka_brokers)
        .set("group.id", &settings.consumer_group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        // librdkafka's default, said out loud: a bridge in exactly-once mode leaves aborted copies in the
        // log, which only a read_committed reader skips.
        .set("isolation.level", "read_committed");
    if !settings.instance_id.is_empty() {
        config.set("group.instance.id", &settings.instance_id);
    }
    let consumer: BaseConsumer = config.create()?;
    consumer.subscribe(&[&settings.topic])?;
    tracing::info!(topic = %settings.topic, group = %settings.consumer_group, "tim-group-directory consuming");
    let (mut applied, mut skipped) = (0u64, 0u64);
    // The first measurement a refresh period after the start: by then the group has usually assigned
    // partitions (measured before, an empty assignment would read as a misleading 0). Until then -1.
    let mut lag_measured = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        if lag_measured.elapsed() >= LAG_REFRESH {
            lag_measured = Instant::now();
            match lag(&consumer) {
                Ok(records) => metrics.lag_records.set(records),
                Err(e) => tracing::debug!(error = %e, "lag not measured this time"),
            }
        }
        let mut batch = Vec::new();
        let mut next = TopicPartitionList::new();
        while batch.len() < MAX_BATCH {
            let Some(m) = consumer.poll(if batch.is_empty() { POLL } else { Duration::ZERO }) else { break };
            let m = match m {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %e, "Kafka error while consuming; retrying");
                    break;
                }
            };
            match update::parse(m.payload().unwrap_or_default()) {
                Ok(u) => batch.push(u),
                Err(skip) => {
                    skipped += 1;
                    metrics.skipped(&skip);
                    tracing::warn!(partition = m.partition(), offset = m.offset(), reason = %skip, "record skipped");
                }
            }
            next.add_partition_offset(m.topic(), m.partition(), Offset::Offset(m.offset() + 1))?;
        }
        if next.count() == 0 {
            continue;
        }
        store.apply_changes(&batch)?;
        metrics.applied(&batch);
        applied += batch.len() as u64;
        consumer.commit(&next, CommitMode::Sync)?;
        tracing::debug!(applied, skipped, "batch applied");
    }
    tracing::info!(applied, skipped, "tim-group-directory stopped");
    Ok(())
}

/// Σ over the partitions assigned to `consumer` of (high watermark − the next offset to apply). Called
/// between batches, when every record polled has been applied and committed: a partition's position
/// (the offset after the last record polled) is then its next offset to apply. A partition polled
/// nothing from since it was assigned has no position yet: its group's committed offset is used, or,
/// with none, its low watermark (where `auto.offset.reset=earliest` starts).
fn lag(consumer: &BaseConsumer) -> Result<i64, rdkafka::error::KafkaError> {
    let positions = consumer.position()?;
    let mut unknown = TopicPartitionList::new();
    for p in positions.elements() {
        if !matches!(p.offset(), Offset::Offset(_)) {
            unknown.add_partition(p.topic(), p.partition());
        }
    }
    let committed = match unknown.count() {
        0 => unknown,
        _ => consumer.committed_offsets(unknown, LAG_QUERY_TIMEOUT)?,
    };
    let mut total = 0;
    for p in positions.elements() {
        let (low, high) = consumer.fetch_watermarks(p.topic(), p.partition(), LAG_QUERY_TIMEOUT)?;
        let next = match p.offset() {
            Offset::Offset(next) => next,
            _ => match committed.find_partition(p.topic(), p.partition()).map(|c| c.offset()) {
                Some(Offset::Offset(next)) => next,
                _ => low,
            },
        };
        total += (high - next).max(0);
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(vars: &[(&str, &str)]) -> Result<Settings, SettingsError> {
        Settings::from_vars(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    #[test]
    fn the_metrics_listener_has_a_default_an_empty_value_turns_it_off_and_a_bad_one_is_refused() {
        assert_eq!(settings(&[]).unwrap().metrics_listen, Some("127.0.0.1:9466".parse().unwrap()));
        assert_eq!(settings(&[("DIRECTORY_METRICS_LISTEN", "")]).unwrap().metrics_listen, None);
        let any = settings(&[("DIRECTORY_METRICS_LISTEN", "0.0.0.0:9500")]).unwrap();
        assert_eq!(any.metrics_listen, Some("0.0.0.0:9500".parse().unwrap()));
        let e = settings(&[("DIRECTORY_METRICS_LISTEN", "localhost:9466")]).unwrap_err();
        assert_eq!(e.name, "DIRECTORY_METRICS_LISTEN");
        // An empty value of another variable still means its default.
        assert_eq!(settings(&[("DIRECTORY_TOPIC", " ")]).unwrap().topic, "group-change");
    }
}
