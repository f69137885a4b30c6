//! The metric catalogue, exported on `GET /metrics` in Prometheus' text format.
//!
//! Every metric the bridge exports is a field of [`Metrics`], registered in [`Metrics::new`] with its
//! help text; docs/operations.md explains each and what to do when it looks wrong. Gauges that mirror
//! state owned elsewhere (spool depth, produce lag) are refreshed when scraped, so they cost nothing
//! between scrapes.

use std::collections::HashMap;
use std::sync::Mutex;

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use rdkafka::statistics::Statistics;

/// Latency buckets from 0.5 ms to 60 s: ack latency lives at the bottom, outage recovery at the top.
const LATENCY_BUCKETS: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

pub struct Metrics {
    registry: Registry,
    /// Webhooks by outcome ([`WebhookOutcome`]): `accepted`, a command not published
    /// (`ignored_command`, `forwarded`, `forward_failed`) or the refusal kind.
    pub webhooks: IntCounterVec,
    pub spool_pending_events: IntGauge,
    pub spool_bytes: IntGauge,
    pub spool_max_bytes: IntGauge,
    /// Age of the oldest event Kafka has not acknowledged yet; 0 when none.
    pub produce_lag_seconds: Gauge,
    /// Receipt of the webhook → Kafka's acknowledgement.
    pub kafka_delivery_seconds: Histogram,
    pub kafka_delivered: IntCounter,
    pub kafka_dead_lettered: IntCounter,
    pub kafka_quarantined: IntCounter,
    pub spool_read_errors: IntCounter,
    pub kafka_errors: IntCounterVec,
    /// The webhook's `EventTime` → Kafka's acknowledgement (includes Tencent's own delay).
    pub event_age_seconds: Histogram,
    /// 1 while Kafka answers metadata requests.
    pub kafka_up: IntGauge,
    pub kafka_broker_up: IntGaugeVec,
    pub kafka_broker_rtt_seconds: GaugeVec,
    pub kafka_broker_tx_errors: IntCounterVec,
    pub kafka_producer_queue_messages: IntGauge,
    pub http_request_duration_seconds: HistogramVec,
    /// How long each spool fsync took.
    pub spool_fsync_seconds: Histogram,
    /// Events per group commit (one write, at most one fsync).
    pub spool_commit_events: Histogram,
    /// Spooled events lost to damage (bit rot, a torn write), found at start or while forwarding.
    pub spool_corrupt_records: IntCounter,
    /// New producers built after librdkafka's fatal error.
    pub kafka_producer_restarts: IntCounter,
    /// Exactly-once mode: transactions ended, by outcome (`committed`, `aborted`).
    pub kafka_transactions: IntCounterVec,
    /// Exactly-once mode: how long a commit took (the position record, the flush and EndTxn).
    pub kafka_transaction_commit_seconds: Histogram,
    /// Last cumulative `txerrs` per broker, to turn librdkafka's totals into counter increments.
    tx_errors_seen: Mutex<HashMap<String, u64>>,
}

impl Metrics {
    /// An event Kafka acknowledged: counted, with its delivery time (since it was received) and its
    /// age (since Tencent's EventTime).
    pub fn delivered(&self, received_at_ms: i64, event_time_ms: i64) {
        let now = crate::now_ms();
        self.kafka_delivered.inc();
        self.kafka_delivery_seconds.observe((now - received_at_ms).max(0) as f64 / 1e3);
        self.event_age_seconds.observe((now - event_time_ms).max(0) as f64 / 1e3);
    }

    pub fn new() -> Self {
        let registry = Registry::new();
        macro_rules! reg {
            ($m:expr) => {{
                let m = $m.expect("metric definition is valid");
                registry.register(Box::new(m.clone())).expect("metric names are unique");
                m
            }};
        }
        let hist = |name: &str, help: &str| HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec());
        let m = Self {
            webhooks: reg!(IntCounterVec::new(
                Opts::new(
                    "bridge_webhooks_total",
                    "Webhooks received, by outcome (accepted, a command not published, or why refused)."
                ),
                &["outcome"]
            )),
            spool_pending_events: reg!(IntGauge::new(
                "bridge_spool_pending_events",
                "Events in the spool that Kafka has not acknowledged yet."
            )),
            spool_bytes: reg!(IntGauge::new("bridge_spool_bytes", "Bytes of spool segment files on disk.")),
            spool_max_bytes: reg!(IntGauge::new(
                "bridge_spool_max_bytes",
                "BRIDGE_SPOOL_MAX_BYTES: spool size at which webhooks get 503."
            )),
            produce_lag_seconds: reg!(Gauge::new(
                "bridge_produce_lag_seconds",
                "Age of the oldest event not yet acknowledged by Kafka; 0 when none."
            )),
            kafka_delivery_seconds: reg!(Histogram::with_opts(hist(
                "bridge_kafka_delivery_seconds",
                "From receipt of the webhook to Kafka's acknowledgement."
            ))),
            kafka_delivered: reg!(IntCounter::new(
                "bridge_kafka_delivered_total",
                "Events acknowledged by Kafka on the main topic."
            )),
            kafka_dead_lettered: reg!(IntCounter::new(
                "bridge_kafka_dead_lettered_total",
                "Events Kafka refused for good, sent to the dead-letter topic."
            )),
            spool_read_errors: reg!(IntCounter::new(
                "bridge_spool_read_errors_total",
                "Failed reads of the spool by the forwarder (an I/O error; retried, at most once a second)."
            )),
            kafka_quarantined: reg!(IntCounter::new(
                "bridge_kafka_quarantined_total",
                "Events the topic and the dead-letter topic both refused for good, parked in the spool's \
                 quarantine directory for tim-kafka-bridge drain to publish."
            )),
            kafka_errors: reg!(IntCounterVec::new(
                Opts::new("bridge_kafka_errors_total", "Kafka errors, by librdkafka error code."),
                &["kind"]
            )),
            event_age_seconds: reg!(Histogram::with_opts(hist(
                "bridge_event_age_seconds",
                "From the webhook's EventTime to Kafka's acknowledgement."
            ))),
            kafka_up: reg!(IntGauge::new(
                "bridge_kafka_up",
                "1 while Kafka answered a metadata request within the readiness window."
            )),
            kafka_broker_up: reg!(IntGaugeVec::new(
                Opts::new("bridge_kafka_broker_up", "librdkafka's broker connection state: 1 when UP."),
                &["broker"]
            )),
            kafka_broker_rtt_seconds: reg!(GaugeVec::new(
                Opts::new(
                    "bridge_kafka_broker_rtt_seconds",
                    "Broker round-trip time (librdkafka statistics)."
                ),
                &["broker", "quantile"]
            )),
            kafka_broker_tx_errors: reg!(IntCounterVec::new(
                Opts::new("bridge_kafka_broker_tx_errors_total", "Transmit errors per broker (librdkafka)."),
                &["broker"]
            )),
            kafka_producer_queue_messages: reg!(IntGauge::new(
                "bridge_kafka_producer_queue_messages",
                "Messages in librdkafka's producer queue (waiting or in flight)."
            )),
            http_request_duration_seconds: reg!(HistogramVec::new(
                hist("bridge_http_request_duration_seconds", "HTTP request duration, by route and status."),
                &["route", "status"]
            )),
            spool_fsync_seconds: reg!(Histogram::with_opts(hist(
                "bridge_spool_fsync_seconds",
                "Duration of each spool fdatasync (BRIDGE_SPOOL_FSYNC=always: one per group commit)."
            ))),
            spool_commit_events: reg!(Histogram::with_opts(
                HistogramOpts::new("bridge_spool_commit_events", "Events written per spool group commit.")
                    .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0])
            )),
            spool_corrupt_records: reg!(IntCounter::new(
                "bridge_spool_corrupt_records_total",
                "Spooled events lost to damage (bit rot, a torn write): they cannot be read back."
            )),
            kafka_producer_restarts: reg!(IntCounter::new(
                "bridge_kafka_producer_restarts_total",
                "New Kafka producers built after a fatal producer error (events republished, none lost)."
            )),
            kafka_transactions: reg!(IntCounterVec::new(
                Opts::new(
                    "bridge_kafka_transactions_total",
                    "Exactly-once mode: Kafka transactions ended, by outcome (committed, aborted)."
                ),
                &["outcome"]
            )),
            kafka_transaction_commit_seconds: reg!(Histogram::with_opts(hist(
                "bridge_kafka_transaction_commit_seconds",
                "Exactly-once mode: time to commit a transaction (position record, flush, EndTxn)."
            ))),
            tx_errors_seen: Mutex::new(HashMap::new()),
            registry,
        };
        // Every outcome is present from the start, so rate() and alerts see zeros rather than nothing.
        for outcome in ["committed", "aborted"] {
            m.kafka_transactions.with_label_values(&[outcome]);
        }
        for outcome in OUTCOMES {
            m.webhooks.with_label_values(&[outcome]);
        }
        for kind in COMMON_KAFKA_ERRORS {
            m.kafka_errors.with_label_values(&[kind]);
        }
        m
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out).expect("text encoding does not fail");
        String::from_utf8(out).expect("the text format is UTF-8")
    }

    /// Takes librdkafka's periodic statistics.
    pub fn observe_kafka_statistics(&self, stats: &Statistics) {
        self.kafka_producer_queue_messages.set(stats.msg_cnt as i64);
        let mut seen = self.tx_errors_seen.lock().expect("not poisoned");
        for b in stats.brokers.values() {
            // Skip librdkafka's internal pseudo-brokers (bootstrap placeholders have no node id).
            if b.nodeid < 0 {
                continue;
            }
            let name = b.nodename.as_str();
            self.kafka_broker_up.with_label_values(&[name]).set(i64::from(b.state == "UP"));
            if let Some(rtt) = &b.rtt {
                self.kafka_broker_rtt_seconds.with_label_values(&[name, "avg"]).set(rtt.avg as f64 / 1e6);
                self.kafka_broker_rtt_seconds.with_label_values(&[name, "p99"]).set(rtt.p99 as f64 / 1e6);
            }
            let last = seen.insert(name.to_owned(), b.txerrs).unwrap_or(0);
            // Created at the first sight of a broker, so it is exported as 0 before any error.
            let tx_errors = self.kafka_broker_tx_errors.with_label_values(&[name]);
            if b.txerrs > last {
                tx_errors.inc_by(b.txerrs - last);
            }
        }
    }
}

impl crate::spool::SpoolObserver for Metrics {
    fn committed(&self, events: usize, fsync: Option<std::time::Duration>) {
        if events > 0 {
            self.spool_commit_events.observe(events as f64);
        }
        if let Some(d) = fsync {
            self.spool_fsync_seconds.observe(d.as_secs_f64());
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Each value of `bridge_webhooks_total{outcome}`, written once: handlers name a variant, and the
/// label is [`as_str`](Self::as_str).
macro_rules! webhook_outcomes {
    ($($(#[$doc:meta])* $variant:ident => $label:literal,)*) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum WebhookOutcome {
            $($(#[$doc])* $variant,)*
        }

        impl WebhookOutcome {
            /// Every outcome, in the order they are exported.
            pub const ALL: &'static [WebhookOutcome] = &[$(WebhookOutcome::$variant,)*];

            /// The label value.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(WebhookOutcome::$variant => $label,)*
                }
            }
        }
    };
}

webhook_outcomes! {
    /// Published: on the spool (or in Kafka, in sync mode).
    Accepted => "accepted",
    /// A command the bridge does not publish, answered OK.
    IgnoredCommand => "ignored_command",
    /// A command not published, relayed to the app's handler (whatever it answered).
    Relayed => "forwarded",
    /// A command not published whose relay failed or was too slow; answered OK.
    RelayFailed => "forward_failed",
    RejectedApp => "rejected_app",
    RejectedSign => "rejected_sign",
    BadRequest => "bad_request",
    /// 408: the body did not arrive within the body timeout (a slow or stalled client).
    BodyTimeout => "body_timeout",
    TooLarge => "too_large",
    SpoolFull => "spool_full",
    /// The spool's writer is behind (a stalled disk): too many bytes wait for it.
    SpoolBusy => "spool_busy",
    SpoolError => "spool_error",
    KafkaUnavailable => "kafka_unavailable",
}

/// Every value of `bridge_webhooks_total{outcome}` ([`WebhookOutcome::ALL`], as labels).
pub const OUTCOMES: &[&str] = &{
    let mut labels = [""; WebhookOutcome::ALL.len()];
    let mut i = 0;
    while i < labels.len() {
        labels[i] = WebhookOutcome::ALL[i].as_str();
        i += 1;
    }
    labels
};

/// Kafka error kinds exported as 0 from the start: the ones an outage or an oversized record causes.
const COMMON_KAFKA_ERRORS: &[&str] =
    &["MessageTimedOut", "AllBrokersDown", "BrokerTransportFailure", "MessageSizeTooLarge"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_outcome_is_exported_from_the_start() {
        let text = Metrics::new().render();
        for o in OUTCOMES {
            assert!(text.contains(&format!("bridge_webhooks_total{{outcome=\"{o}\"}} 0")), "{o}");
        }
        assert!(text.contains("bridge_produce_lag_seconds 0"));
    }
}
