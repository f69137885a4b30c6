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
//! - [`pipeline`]: where an accepted event goes before the webhook is answered: the spool, or (sync
//!   delivery) Kafka itself.
//! - [`spool`]: the durable, checksummed on-disk log an event is written to before the webhook is
//!   answered: the `tim-spool` crate (crates/tim-spool), re-exported here.
//! - [`forwarder`]: spool → Kafka, in order, acknowledging the spool only after Kafka acknowledged.
//! - [`publisher`]: the Kafka producer and the verdict on each delivery (retry, or dead-letter).
//! - [`partition`]: Kafka's default partitioner (murmur2), where a keyed record lands: the
//!   `tim-partition` crate (crates/tim-partition), re-exported here.
//!
//! Around them: [`routes`] (HTTP handlers), [`relay`] (commands not published, handed to the app's own
//! callback handler), [`startup`] (build, run, graceful stop),
//! [`configuration`] (`BRIDGE_*` variables), [`metrics`] (the Prometheus catalogue), [`health`]
//! (liveness and readiness), [`probe`] (the Kafka probe behind readiness), [`status`] (the samples
//! behind the status page), [`tls`] (HTTPS), [`telemetry`] (logs), [`shutdown`] (signals).
//!
//! Apart from the webhook path: [`snapshot`] (`tim-kafka-bridge snapshot`: every group's state read
//! from Tencent's REST API through [`tencent`], published as events).
//!
//! Not in this library: the reference consumer, a groups table in SQLite or PostgreSQL kept from the
//! topic, is the `tim-group-directory` crate (crates/tim-group-directory), which does not depend on
//! this one. This package's `tim-group-directory` binary runs it; the `directory` feature that binary
//! requires adds that crate as a dependency and nothing to this library.

/// `fail::fail_point!` when built with the `failpoints` feature (the test suite turns it on), nothing
/// otherwise: the release build carries no failpoint. In the library's own unit tests a failpoint fires
/// only on the threads a test opted in ([`failpoints`]). The spool's failpoints are the `tim-spool`
/// crate's (its own `failpoints` feature, which this crate's turns on).
macro_rules! failpoint {
    ($name:expr) => {
        #[cfg(feature = "failpoints")]
        crate::failpoints::plain($name);
    };
    ($name:expr, $e:expr) => {
        #[cfg(feature = "failpoints")]
        fail::fail_point!($name, crate::failpoints::here(), $e);
    };
}

/// Where this crate's failpoints fire. A bridge built with the `failpoints` feature (the integration
/// tests set them per process through `FAILPOINTS`) fires them on every thread. The library's unit
/// tests run side by side in one process, where `fail`'s configuration is global: there a failpoint
/// fires only on a thread that opted in (`enable_here`), so a test that injects a fault trips no other
/// test.
///
/// The spool's failpoints (`spool::*`) are `tim_spool`'s, which scopes them the same way in its own
/// unit tests. This module cannot be that one: `cfg(test)` holds only for the crate under test, so
/// `tim_spool`'s copy fires on every thread here, as in a binary. No unit test of this crate sets a
/// spool failpoint; those tests live with the spool.
#[cfg(feature = "failpoints")]
pub(crate) mod failpoints {
    #[cfg(test)]
    thread_local! {
        static HERE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }

    /// Whether failpoints fire on this thread.
    pub(crate) fn here() -> bool {
        #[cfg(test)]
        return HERE.with(|h| h.get());
        #[cfg(not(test))]
        true
    }

    /// A failpoint that returns nothing (`panic`, `sleep`, `pause` and the like).
    pub(crate) fn plain(name: &str) {
        if here() {
            fail::fail_point!(name);
        }
    }

    /// Ends the process as `kill -9` does (a real SIGKILL: nothing flushed, no handler run), for
    /// failpoints that stand for a crash at one exact point.
    pub(crate) fn kill_self() -> ! {
        let pid = std::process::id().to_string();
        tracing::warn!("a failpoint kills the process (SIGKILL)");
        let killed = std::process::Command::new("kill").args(["-KILL", &pid]).status();
        tracing::error!(?killed, "the failpoint could not kill the process");
        loop {
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
    }

    /// Lets this crate's failpoints fire on this thread, or no longer. No unit test here sets one
    /// today; the first that does opts its thread in with this.
    #[cfg(test)]
    #[allow(dead_code)]
    pub(crate) fn enable_here(on: bool) {
        HERE.with(|h| h.set(on));
    }
}

pub mod configuration;
pub mod domain;
pub mod exactly_once;
pub mod forwarder;
pub mod health;
pub mod message;
pub mod metrics;
/// Kafka's default partitioner: the `tim-partition` crate (crates/tim-partition), under its old path.
pub use tim_partition as partition;
pub mod pipeline;
pub mod probe;
pub mod publisher;
pub mod quarantine;
pub mod relay;
pub mod routes;
pub mod shutdown;
pub mod snapshot;
/// The durable spool: the `tim-spool` crate (crates/tim-spool), under its old path.
pub use tim_spool as spool;
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
