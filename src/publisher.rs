//! The Kafka producer: turns a [`KafkaMessage`] into a record, and a delivery report into a verdict.
//!
//! One `FutureProducer` is created at start and shared. Enqueued is not delivered: a record counts only
//! when its [`Pending`] future resolves `Ok`, which with `acks=all` means every in-sync replica has it.
//! The publisher never decides to drop anything; it only says whether a failure is worth retrying
//! ([`PublishError::Retriable`]) or final ([`PublishError::Permanent`]: Kafka will refuse this record
//! whatever we do), and the [forwarder](crate::forwarder) acts on that.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::future_producer::Delivery;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::statistics::Statistics;
use rdkafka::ClientContext;

use crate::configuration::{RdkafkaOverrides, Settings, RDKAFKA_PREFIX};
use crate::domain::KafkaMessage;
use crate::metrics::Metrics;

/// Why a record is not (yet) in Kafka.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// Kafka or the network is unavailable, slow, or the local queue is full: try again later.
    #[error("Kafka delivery failed, will retry: {0}")]
    Retriable(KafkaError),
    /// Kafka refuses this record for good (too large, invalid): retrying cannot help.
    #[error("Kafka refused the record: {0}")]
    Permanent(KafkaError),
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

/// A low-cardinality name for a Kafka error: librdkafka's error code.
pub fn error_kind(error: &KafkaError) -> String {
    match error.rdkafka_error_code() {
        Some(code) => format!("{code:?}"),
        None => "Other".to_owned(),
    }
}

pub struct Publisher {
    producer: FutureProducer<BridgeContext>,
    /// The dead-letter topic's own producer: the same settings, except that it keeps librdkafka's
    /// default `message.max.bytes`, so a record refused for its size by the main producer (set to
    /// the topic's limit, see docs/operations.md) can still be dead-lettered whole.
    dlq_producer: FutureProducer<BridgeContext>,
    topic: String,
    dlq_topic: String,
    metrics: Arc<Metrics>,
}

impl Publisher {
    /// Builds the producer. `message_timeout` is librdkafka's `message.timeout.ms`: `None` lets a record
    /// wait for Kafka indefinitely (spool mode, where the spool and not librdkafka decides when to
    /// give up, which is never). A `BRIDGE_RDKAFKA_*` property overrides any default set here.
    pub fn new(
        settings: &Settings,
        message_timeout: Option<Duration>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, ProducerConfigError> {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &settings.kafka_brokers)
            .set("client.id", env!("CARGO_PKG_NAME"))
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("compression.type", "lz4")
            .set("linger.ms", "5")
            .set("partitioner", "murmur2_random")
            .set("statistics.interval.ms", "5000")
            .set("message.timeout.ms", message_timeout.map_or(0, |t| t.as_millis() as u64).to_string());
        for (k, v) in &settings.rdkafka.0 {
            config.set(k, v);
        }
        config.set_log_level(RDKafkaLogLevel::Warning);
        let create = |config: &ClientConfig| {
            config
                .create_with_context(BridgeContext { metrics: metrics.clone() })
                .map_err(|e| ProducerConfigError::new(&e, &settings.rdkafka))
        };
        let producer = create(&config)?;
        config.remove("message.max.bytes");
        config.set("statistics.interval.ms", "0");
        let dlq_producer = create(&config)?;
        Ok(Self {
            producer,
            dlq_producer,
            topic: settings.topic.clone(),
            dlq_topic: settings.dlq_topic.clone(),
            metrics,
        })
    }

    /// Enqueues `value` as a record of the main topic. The record is in Kafka once the returned future
    /// resolves `Ok`.
    pub fn send(&self, msg: &impl KafkaMessage, value: &[u8]) -> Result<Pending, PublishError> {
        self.enqueue(
            &self.producer,
            &self.topic,
            msg.key(),
            value,
            Some(msg.timestamp_ms()),
            headers(msg, None),
        )
    }

    /// Enqueues a record Kafka refused for good on the dead-letter topic, with the reason in the
    /// `bridge_dlq_reason` header and the original topic in `bridge_dlq_topic`. Its timestamp is now,
    /// not the event's (an invalid timestamp may be why it is here).
    pub fn send_dead_letter(
        &self,
        msg: &impl KafkaMessage,
        value: &[u8],
        reason: &str,
    ) -> Result<Pending, PublishError> {
        let extra = [("bridge_dlq_reason", reason), ("bridge_dlq_topic", self.topic.as_str())];
        self.enqueue(&self.dlq_producer, &self.dlq_topic, msg.key(), value, None, headers(msg, Some(&extra)))
    }

    fn enqueue(
        &self,
        producer: &FutureProducer<BridgeContext>,
        topic: &str,
        key: &[u8],
        value: &[u8],
        timestamp: Option<i64>,
        headers: OwnedHeaders,
    ) -> Result<Pending, PublishError> {
        let mut record = FutureRecord::to(topic).key(key).payload(value).headers(headers);
        if let Some(ts) = timestamp {
            record = record.timestamp(ts);
        }
        producer.send_result(record).map(Pending).map_err(|(e, _)| classify(e))
    }

    /// Waits until every enqueued record is delivered or `timeout` passes.
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.dlq_producer.flush(timeout / 4)?;
        self.producer.flush(timeout)
    }

    /// Asks the cluster for the topic's metadata: whether Kafka answers at all. Blocking.
    pub fn probe(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.producer.client().fetch_metadata(Some(&self.topic), timeout).map(drop)
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

fn headers(msg: &impl KafkaMessage, extra: Option<&[(&str, &str)]>) -> OwnedHeaders {
    let mut h = OwnedHeaders::new_with_capacity(9);
    for (key, value) in msg.headers() {
        h = h.insert(Header { key, value: Some(value.as_bytes()) });
    }
    for (key, value) in extra.unwrap_or_default() {
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

/// Whether Kafka will ever take this record.
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
        _ => PublishError::Retriable(error),
    }
}

/// A record on its way to Kafka.
pub struct Pending(DeliveryFuture);

impl Future for Pending {
    type Output = Result<Delivery, PublishError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx).map(|r| match r {
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
    fn a_record_too_large_is_final_and_a_timeout_is_not() {
        let big = classify(KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge));
        assert!(matches!(big, PublishError::Permanent(_)));
        let late = classify(KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut));
        assert!(matches!(late, PublishError::Retriable(_)));
        let down = classify(KafkaError::MessageProduction(RDKafkaErrorCode::AllBrokersDown));
        assert!(matches!(down, PublishError::Retriable(_)));
    }
}
