//! # tim-kafka-bridge
//!
//! Tencent Cloud Chat calls this service with a webhook every time a group is created, changes its
//! profile or owner, or is destroyed; it answers at once and republishes each as one normalized event on
//! a Kafka topic, keyed by GroupId. The other callbacks an app enables reach the same URL: they are
//! answered (or relayed to the app's own handler) and never published.
//!
//! ## Layout
//! The modules follow an event's path:
//!
//! - [`webhook`]: Tencent's wire protocol: query string, `Sign`, body, answer envelope. Pure functions.
//! - [`domain`]: the normalized [`GroupEvent`](domain::GroupEvent) (info_changed, created,
//!   owner_changed, destroyed) and its newtypes; how it becomes a Kafka record.
//! - [`message`]: the Kafka record (key, timestamp, headers, value) as it is spooled and sent.
//! - [`spool`]: the durable, checksummed on-disk log an event is written to before the webhook is
//!   answered.
//! - [`forwarder`]: spool → Kafka, in order, acknowledging the spool only after Kafka acknowledged.
//! - [`publisher`]: the Kafka producer and the verdict on each delivery (retry, or dead-letter).
//!
//! Around them: [`routes`] (HTTP handlers), [`relay`] (commands not published, handed to the app's own
//! callback handler), [`startup`] (build, run, graceful stop),
//! [`configuration`] (`BRIDGE_*` variables), [`metrics`] (the Prometheus catalogue), [`health`]
//! (readiness and the Kafka probe), [`status`] (the samples behind the status page), [`tls`] (HTTPS),
//! [`telemetry`] (logs), [`shutdown`] (signals).
//!
//! Apart from the webhook path: [`snapshot`] (`tim-kafka-bridge snapshot`: every group's state read
//! from Tencent's REST API through [`tencent`], published as events), and, with the `directory` feature: `directory`, the reference consumer behind
//! the `tim-group-directory` binary (a groups table in SQLite or PostgreSQL, kept from the topic).

/// `fail::fail_point!` when built with the `failpoints` feature (the test suite turns it on), nothing
/// otherwise: the release build carries no failpoint.
macro_rules! failpoint {
    ($($arg:tt)*) => {
        #[cfg(feature = "failpoints")]
        fail::fail_point!($($arg)*);
    };
}

pub mod configuration;
#[cfg(feature = "directory")]
pub mod directory;
pub mod domain;
pub mod forwarder;
pub mod health;
pub mod message;
pub mod metrics;
pub mod publisher;
pub mod quarantine;
pub mod relay;
pub mod routes;
pub mod shutdown;
pub mod snapshot;
pub mod spool;
pub mod startup;
pub mod status;
pub mod telemetry;
pub mod tencent;
pub mod tls;
pub mod webhook;

/// Milliseconds since the Unix epoch, by the system clock.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}
