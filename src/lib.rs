//! # tim-kafka-bridge
//!
//! Tencent Cloud Chat calls this service with a webhook every time a group's profile changes; it answers
//! at once and republishes each change as one normalized event on a Kafka topic, keyed by GroupId.
//!
//! ## Layout
//! The modules follow an event's path:
//!
//! - [`webhook`]: Tencent's wire protocol: query string, `Sign`, body, answer envelope. Pure functions.
//! - [`domain`]: the normalized [`GroupChangeEvent`](domain::GroupChangeEvent) and its newtypes; how it
//!   becomes a Kafka record.
//! - [`spool`]: the durable, checksummed on-disk log an event is written to before the webhook is
//!   answered.
//! - [`forwarder`]: spool → Kafka, in order, acknowledging the spool only after Kafka acknowledged.
//! - [`publisher`]: the Kafka producer and the verdict on each delivery (retry, or dead-letter).
//!
//! Around them: [`routes`] (HTTP handlers), [`startup`] (build, run, graceful stop),
//! [`configuration`] (`BRIDGE_*` variables), [`metrics`] (the Prometheus catalogue), [`health`]
//! (readiness and the Kafka probe), [`status`] (the samples behind the status page), [`tls`] (HTTPS),
//! [`telemetry`] (logs), [`shutdown`] (signals).

pub mod configuration;
pub mod domain;
pub mod forwarder;
pub mod health;
pub mod metrics;
pub mod publisher;
pub mod routes;
pub mod shutdown;
pub mod spool;
pub mod startup;
pub mod status;
pub mod telemetry;
pub mod tls;
pub mod webhook;
