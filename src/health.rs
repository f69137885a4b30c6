//! Liveness, readiness and the gauges behind them.
//!
//! Readiness answers one question for a load balancer or an orchestrator: should webhooks be sent
//! here now? Not when Kafka has not answered for a while (the spool would only grow), and not when the
//! spool is near its cap (webhooks would soon get 503). Liveness (`/healthz`) asks whether a restart
//! would help: yes when the spool has failed for good (a failed fsync, `EIO`) or its writer thread or
//! the forwarder has died; never because Kafka is down (a restart would help nothing).

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::forwarder::Progress;
use crate::metrics::Metrics;
use crate::publisher::Publisher;
use crate::spool::Spool;

/// How often Kafka is asked for metadata.
const PROBE_EVERY: Duration = Duration::from_secs(1);
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

pub struct Health {
    pub metrics: Arc<Metrics>,
    spool: Option<Spool>,
    progress: Option<watch::Receiver<Progress>>,
    /// True while the forwarder task runs (cleared when it ends, a panic included).
    forwarder_running: Option<Arc<AtomicBool>>,
    /// When Kafka last answered a metadata request (ms since epoch; 0 = never).
    kafka_ok_at_ms: AtomicI64,
    /// Kafka counts as reachable if it answered within this window.
    kafka_window: Duration,
    /// Fraction of `BRIDGE_SPOOL_MAX_BYTES` above which the bridge is not ready.
    spool_high_water: f64,
}

use crate::now_ms;

impl Health {
    pub fn new(
        metrics: Arc<Metrics>,
        spool: Option<Spool>,
        forwarder: Option<(watch::Receiver<Progress>, Arc<AtomicBool>)>,
        kafka_window: Duration,
        spool_high_water: f64,
    ) -> Self {
        if let Some(s) = &spool {
            metrics.spool_max_bytes.set(s.max_bytes() as i64);
        }
        let (progress, forwarder_running) = forwarder.unzip();
        Self {
            metrics,
            spool,
            progress,
            forwarder_running,
            kafka_ok_at_ms: AtomicI64::new(0),
            kafka_window,
            spool_high_water,
        }
    }

    /// `Ok` while a restart would not help; else every reason one would.
    pub fn liveness(&self) -> Result<(), Vec<String>> {
        let mut reasons = Vec::new();
        if let Some(Err(reason)) = self.spool.as_ref().map(Spool::health) {
            reasons.push(reason);
        }
        if self.forwarder_running.as_ref().is_some_and(|r| !r.load(Ordering::Relaxed)) {
            reasons.push("the forwarder (spool → Kafka) has stopped".to_owned());
        }
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(reasons)
        }
    }

    fn kafka_reachable(&self) -> bool {
        now_ms() - self.kafka_ok_at_ms.load(Ordering::Relaxed) <= self.kafka_window.as_millis() as i64
    }

    /// Brings the state-mirroring gauges up to date (called on every scrape).
    pub fn refresh(&self) {
        let m = &self.metrics;
        m.kafka_up.set(i64::from(self.kafka_reachable()));
        if let Some(spool) = &self.spool {
            m.spool_pending_events.set(spool.pending_events() as i64);
            m.spool_bytes.set(spool.stats().bytes.load(Ordering::Relaxed) as i64);
            let corrupt = spool.stats().corrupt_records.load(Ordering::Relaxed);
            let seen = m.spool_corrupt_records.get();
            if corrupt > seen {
                m.spool_corrupt_records.inc_by(corrupt - seen);
            }
        }
        let lag = self
            .progress
            .as_ref()
            .and_then(|p| p.borrow().oldest_pending_received_ms)
            .map_or(0.0, |t| (now_ms() - t).max(0) as f64 / 1e3);
        m.produce_lag_seconds.set(lag);
    }

    /// `Ok` when ready, else every reason it is not.
    pub fn readiness(&self) -> Result<(), Vec<String>> {
        let mut reasons = self.liveness().err().unwrap_or_default();
        if !self.kafka_reachable() {
            reasons.push(format!(
                "Kafka has not answered a metadata request in the last {} s",
                self.kafka_window.as_secs()
            ));
        }
        if let Some(spool) = &self.spool {
            let bytes = spool.stats().bytes.load(Ordering::Relaxed) as f64;
            let cap = spool.max_bytes() as f64;
            if bytes >= cap * self.spool_high_water {
                reasons.push(format!(
                    "spool is {:.0}% full (high-water mark {:.0}%)",
                    100.0 * bytes / cap,
                    100.0 * self.spool_high_water
                ));
            }
        }
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(reasons)
        }
    }

    /// Asks Kafka for metadata every second, forever; logs when it stops or starts answering.
    pub async fn probe_kafka(self: Arc<Self>, publisher: Arc<Publisher>) {
        let mut answering: Option<bool> = None;
        loop {
            let p = publisher.clone();
            let result = tokio::task::spawn_blocking(move || p.probe(PROBE_TIMEOUT)).await;
            let ok = matches!(result, Ok(Ok(())));
            if ok {
                self.kafka_ok_at_ms.store(now_ms(), Ordering::Relaxed);
            }
            match (answering, ok) {
                (None, true) => tracing::info!("Kafka answers metadata requests"),
                (Some(false), true) => tracing::warn!("Kafka answers metadata requests again"),
                (Some(true) | None, false) => {
                    let error = result.map_or_else(
                        |e| e.to_string(),
                        |r| r.err().map(|e| e.to_string()).unwrap_or_default(),
                    );
                    tracing::warn!(%error, "Kafka does not answer metadata requests")
                }
                _ => {}
            }
            answering = Some(ok);
            tokio::time::sleep(PROBE_EVERY).await;
        }
    }
}
