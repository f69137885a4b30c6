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
//! ## Layout
//! - [`update`]: a record's value → the register writes it makes (lenient, as the versioning policy
//!   asks of consumers).
//! - [`store`]: the registers in SQLite (default) or PostgreSQL, and the `groups` view.
//! - [`run`]: the Kafka loop: poll a batch, apply it in one transaction, then commit the offsets.

pub mod store;
pub mod update;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

pub use store::{Group, Store, StoreError};
pub use update::{Skip, Stamp, Update, Write};

/// At most this many records per transaction: bounds the work redone after a crash.
const MAX_BATCH: usize = 500;
/// How long one poll waits for a record; also how soon a stop is noticed.
const POLL: Duration = Duration::from_millis(200);

/// The consumer's settings, from `DIRECTORY_*` variables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// `sqlite:<path>` or `postgres://…`.
    pub database_url: String,
    pub kafka_brokers: String,
    pub topic: String,
    /// Kafka consumer group: its committed offsets are where a restart resumes.
    pub consumer_group: String,
    /// Kafka static membership (`group.instance.id`), empty for none: a consumer restarted with the same
    /// id (after a crash, by systemd or a StatefulSet) takes its partitions back at once, instead of
    /// waiting out the session timeout of the process it replaces.
    pub instance_id: String,
}

/// Every variable, with its default, for `--help`.
pub const VARIABLES: &[(&str, &str, &str)] = &[
    ("DIRECTORY_DATABASE_URL", "sqlite:groups.db", "sqlite:<path> or postgres://user:pass@host/db"),
    ("DIRECTORY_KAFKA_BROKERS", "127.0.0.1:9092", "Kafka bootstrap servers"),
    ("DIRECTORY_TOPIC", "group-change", "the bridge's topic"),
    ("DIRECTORY_CONSUMER_GROUP", "tim-group-directory", "Kafka consumer group (where a restart resumes)"),
    (
        "DIRECTORY_INSTANCE_ID",
        "",
        "Kafka group.instance.id (static membership: a restart with the same id resumes at once)",
    ),
    ("DIRECTORY_LOG_FORMAT", "text", "text | json (level from RUST_LOG)"),
];

impl Settings {
    /// Reads the variables from `vars`, defaults for what is missing or empty.
    pub fn from_vars(vars: impl IntoIterator<Item = (String, String)>) -> Self {
        let vars: std::collections::HashMap<String, String> =
            vars.into_iter().filter(|(_, v)| !v.trim().is_empty()).collect();
        let get = |name: &str| {
            vars.get(name).cloned().unwrap_or_else(|| {
                VARIABLES.iter().find(|v| v.0 == name).expect("a known variable").1.to_owned()
            })
        };
        Self {
            database_url: get("DIRECTORY_DATABASE_URL"),
            kafka_brokers: get("DIRECTORY_KAFKA_BROKERS"),
            topic: get("DIRECTORY_TOPIC"),
            consumer_group: get("DIRECTORY_CONSUMER_GROUP"),
            instance_id: get("DIRECTORY_INSTANCE_ID"),
        }
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
/// they cover is in the database (at least once; the registers make a replay harmless).
pub fn run(settings: &Settings, stop: &AtomicBool) -> Result<(), DirectoryError> {
    let mut store = store::open(&settings.database_url)?;
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &settings.kafka_brokers)
        .set("group.id", &settings.consumer_group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest");
    if !settings.instance_id.is_empty() {
        config.set("group.instance.id", &settings.instance_id);
    }
    let consumer: BaseConsumer = config.create()?;
    consumer.subscribe(&[&settings.topic])?;
    tracing::info!(topic = %settings.topic, group = %settings.consumer_group, "tim-group-directory consuming");
    let (mut applied, mut skipped) = (0u64, 0u64);
    while !stop.load(Ordering::Relaxed) {
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
                    tracing::warn!(partition = m.partition(), offset = m.offset(), reason = %skip, "record skipped");
                }
            }
            next.add_partition_offset(m.topic(), m.partition(), Offset::Offset(m.offset() + 1))?;
        }
        if next.count() == 0 {
            continue;
        }
        store.apply(&batch)?;
        applied += batch.len() as u64;
        consumer.commit(&next, CommitMode::Sync)?;
        tracing::debug!(applied, skipped, "batch applied");
    }
    tracing::info!(applied, skipped, "tim-group-directory stopped");
    Ok(())
}
