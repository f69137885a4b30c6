//! Exactly once onto the topic (`BRIDGE_EXACTLY_ONCE=true`): the spool's position travels with the
//! events, in the same Kafka transaction.
//!
//! At least once, a crash, a fatal producer error or a replaced producer republishes what was in
//! flight: consumers see repeats. With this mode on, the forwarder publishes spooled records inside
//! Kafka transactions and, last in each, writes the spool sequence number it has reached to a
//! compacted position topic (key: the spool's id). The transaction commits both or neither. So the
//! committed position says exactly which events are on the topic for a `read_committed` reader, and a
//! restart resumes right after it, whatever the local ack file says (the ack file follows the commit,
//! never leads it: a crash between the two is repaired at start).
//!
//! This is how Kafka Connect's exactly-once source connectors (KIP-618) keep their source offsets.
//! The transactional id is derived from the spool's id, so a restarted bridge fences its predecessor
//! (`init_transactions` aborts whatever that one left open, or waits for its commit to end) before it
//! reads the position. A bridge fenced by another process holding the same spool id (a copied spool
//! directory) stops with an error instead of fencing back.
//!
//! This module holds the settings, the position record, and the position topic's creation and
//! reading; the transaction discipline itself is the [forwarder](crate::forwarder)'s.

use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::{Message as _, Offset, TopicPartitionList};

use crate::publisher::KafkaSettings;

/// `BRIDGE_EXACTLY_ONCE=true` and its settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExactlyOnce {
    /// `BRIDGE_EOS_COMMIT_INTERVAL_MS`: a transaction commits at most this long after its first record.
    pub commit_interval: Duration,
    /// `BRIDGE_EOS_COMMIT_RECORDS`: most records in one transaction.
    pub commit_records: usize,
    /// `BRIDGE_EOS_TRANSACTION_TIMEOUT_SECS`: librdkafka's `transaction.timeout.ms`.
    pub transaction_timeout: Duration,
    /// `BRIDGE_POSITION_TOPIC`.
    pub position_topic: String,
}

/// The transactional id of the bridge publishing the spool `spool_id`: stable across restarts, so a
/// new instance fences the old one; different for every spool.
pub fn transactional_id(spool_id: &str) -> String {
    format!("tim-kafka-bridge-{spool_id}")
}

/// The value of a position record: every spooled record up to `seq` is on the topic (or on the
/// dead-letter topic), committed in the same transaction as this record. `crc` is the CRC-32 of
/// record `seq`'s spooled bytes: a position is applied to a spool (its ack moved) only if the spool's
/// record `seq` has it, so the position of a copy of the spool that took other events under the same
/// numbers is refused rather than taken for this one's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Position {
    /// Format version (1).
    pub v: u8,
    pub seq: u64,
    pub crc: u32,
}

impl Position {
    pub fn new(seq: u64, crc: u32) -> Self {
        Self { v: 1, seq, crc }
    }

    pub fn to_bytes(self) -> Vec<u8> {
        serde_json::to_vec(&self).expect("a position serializes")
    }

    /// `None` for a value this version does not read.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        serde_json::from_slice::<Self>(bytes).ok().filter(|p| p.v == 1)
    }
}

/// Why the committed position could not be read, or does not fit the spool.
#[derive(Debug, thiserror::Error)]
pub enum PositionError {
    #[error("BRIDGE_POSITION_TOPIC {topic}: {error}")]
    Kafka { topic: String, error: KafkaError },
    #[error("BRIDGE_POSITION_TOPIC {topic}: the committed position could not be read within {} s (a transaction of another producer on it stays open)", .waited.as_secs())]
    Timeout { topic: String, waited: Duration },
    #[error("BRIDGE_POSITION_TOPIC {topic} says spool {spool_id} reached event {position}, but the spool holds events up to {committed} only: the position belongs to another spool with the same id (copied?); refusing to publish")]
    Ahead { topic: String, spool_id: String, position: u64, committed: u64 },
    #[error("BRIDGE_POSITION_TOPIC {topic} says spool {spool_id} reached event {position}, but this spool's event {position} is another one (checksum differs): the position belongs to a copy of this spool that took other events; refusing to publish")]
    NotThisSpool { topic: String, spool_id: String, position: u64 },
}

/// A client configuration from the bridge's Kafka settings (brokers and the `BRIDGE_RDKAFKA_*`
/// overrides that concern connecting: security, SASL, SSL, socket and broker settings).
fn client_config(settings: &KafkaSettings) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &settings.brokers);
    for (k, v) in &settings.rdkafka.0 {
        let connecting = ["security.", "ssl.", "sasl.", "socket.", "broker.", "client.dns", "api.version"];
        if connecting.iter().any(|p| k.starts_with(p)) {
            config.set(k, v);
        }
    }
    config.set_log_level(RDKafkaLogLevel::Error);
    config
}

/// Creates the position topic if it does not exist: one partition (reading it to its end is one
/// partition), compacted (one record per spool is kept), replicated like a data topic should be
/// (three replicas and `min.insync.replicas=2` on a cluster of three or more, fewer on a smaller one).
pub async fn ensure_position_topic(settings: &KafkaSettings, topic: &str) -> Result<(), PositionError> {
    let failed = |error| PositionError::Kafka { topic: topic.to_owned(), error };
    let metadata = {
        let config = client_config(settings);
        let topic = topic.to_owned();
        tokio::task::spawn_blocking(move || {
            let client: BaseConsumer = config.create()?;
            client.fetch_metadata(Some(&topic), Duration::from_secs(10))
        })
        .await
        .map_err(|_| failed(KafkaError::Canceled))?
        .map_err(failed)?
    };
    if metadata.topics().first().is_some_and(|t| t.error().is_none() && !t.partitions().is_empty()) {
        return Ok(());
    }
    let admin: AdminClient<DefaultClientContext> = client_config(settings).create().map_err(failed)?;
    let replicas = metadata.brokers().len().clamp(1, 3) as i32;
    let min_isr = replicas.min(2).to_string();
    let new = NewTopic::new(topic, 1, TopicReplication::Fixed(replicas))
        .set("cleanup.policy", "compact")
        .set("min.insync.replicas", &min_isr)
        .set("segment.ms", "3600000")
        .set("min.cleanable.dirty.ratio", "0.1");
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = admin.create_topics([&new], &opts).await.map_err(failed)?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((_, code)) => return Err(failed(KafkaError::AdminOp(code))),
        }
    }
    tracing::info!(topic, replicas, "created the position topic");
    Ok(())
}

/// The position last committed for `spool_id`, read with `read_committed` (`None`: none yet).
/// Blocking; call after `init_transactions`, which ends whatever an earlier instance left open.
///
/// "The end" is the high watermark as a `read_uncommitted` client sees it when the read starts (a
/// `read_committed` client would be told the last stable offset, below any open transaction, and
/// could stop short of a committed record): the read waits, up to `timeout`, until no open
/// transaction of another producer holds the partition back below that mark, then reads everything
/// committed before it. Kafka Connect reads its offsets topic the same way.
pub fn read_position(
    settings: &KafkaSettings,
    topic: &str,
    spool_id: &str,
    timeout: Duration,
) -> Result<Option<Position>, PositionError> {
    let failed = |error| PositionError::Kafka { topic: topic.to_owned(), error };
    let deadline = Instant::now() + timeout;
    let mut config = client_config(settings);
    config.set("group.id", "tim-kafka-bridge-positions").set("enable.auto.commit", "false");
    let uncommitted: BaseConsumer =
        config.clone().set("isolation.level", "read_uncommitted").create().map_err(failed)?;
    let (_, high) = uncommitted.fetch_watermarks(topic, 0, Duration::from_secs(10)).map_err(failed)?;
    if high == 0 {
        return Ok(None);
    }
    let committed: BaseConsumer<QuietAtEnd> = config
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .create_with_context(QuietAtEnd)
        .map_err(failed)?;
    // Wait until the last stable offset has reached the high watermark read above.
    let mut logged = false;
    loop {
        let (_, stable) = committed.fetch_watermarks(topic, 0, Duration::from_secs(10)).map_err(failed)?;
        if stable >= high {
            break;
        }
        if Instant::now() >= deadline {
            return Err(PositionError::Timeout { topic: topic.to_owned(), waited: timeout });
        }
        if !logged {
            tracing::info!(
                topic,
                stable,
                high,
                "waiting for another producer's open transaction on the position topic to end"
            );
            logged = true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning).map_err(failed)?;
    committed.assign(&tpl).map_err(failed)?;
    let mut last = None;
    loop {
        if Instant::now() >= deadline {
            return Err(PositionError::Timeout { topic: topic.to_owned(), waited: timeout });
        }
        match committed.poll(Duration::from_millis(200)) {
            Some(Ok(m)) if m.key() == Some(spool_id.as_bytes()) => {
                if let Some(p) = m.payload().and_then(Position::from_bytes) {
                    last = Some(p);
                }
            }
            Some(Ok(_)) => {}
            Some(Err(KafkaError::PartitionEOF(_))) => return Ok(last),
            Some(Err(e)) => return Err(failed(e)),
            None => {}
        }
    }
}

/// The position reader's client context: reaching the end of the partition is what it waits for,
/// not an error worth a log line.
struct QuietAtEnd;

impl rdkafka::ClientContext for QuietAtEnd {
    fn error(&self, error: KafkaError, reason: &str) {
        if !matches!(error, KafkaError::PartitionEOF(_)) {
            tracing::warn!(error = %error, reason, "reading the position topic");
        }
    }
}

impl rdkafka::consumer::ConsumerContext for QuietAtEnd {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_position_round_trips_and_an_unknown_version_is_not_read() {
        let p = Position::new(42, 7);
        assert_eq!(Position::from_bytes(&p.to_bytes()), Some(p));
        assert_eq!(String::from_utf8(p.to_bytes()).unwrap(), r#"{"v":1,"seq":42,"crc":7}"#);
        assert_eq!(Position::from_bytes(br#"{"v":2,"seq":42,"crc":7}"#), None);
        assert_eq!(Position::from_bytes(b"garbage"), None);
    }

    #[test]
    fn the_transactional_id_is_the_spool_id_with_a_prefix() {
        assert_eq!(transactional_id("0123"), "tim-kafka-bridge-0123");
    }
}
