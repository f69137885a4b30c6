//! Liveness, readiness and the gauges behind them.
//!
//! Readiness answers one question for a load balancer or an orchestrator: should webhooks be sent
//! here now? Not when Kafka has not answered for a while (the spool would only grow), and not when the
//! spool is near its cap (webhooks would soon get 503). Liveness (`/healthz`) asks whether a restart
//! would help: yes when the spool has failed for good (a failed fsync, `EIO`) or its writer thread or
//! the forwarder has died; never because Kafka is down (a restart would help nothing).
//!
//! Health observes; it drives nothing. Whether Kafka answers is what the [probe](crate::probe) last
//! told it ([`Health::kafka_answered`]).

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::forwarder::Progress;
use crate::metrics::Metrics;
use crate::spool::Spool;

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
        if let Some(p) = self.progress.as_ref().map(|p| *p.borrow()) {
            if let Some(since) = p.read_failing_since_ms {
                let failing = Duration::from_millis((now_ms() - since).max(0) as u64);
                if failing >= crate::forwarder::READ_FAILURE_GRACE {
                    reasons.push(format!(
                        "the spool cannot be read at event {} (an I/O error for {} s, see the log); a restart starts past the unreadable region",
                        p.acked_seq + 1,
                        failing.as_secs()
                    ));
                }
            }
        }
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(reasons)
        }
    }

    /// Kafka answered a metadata request just now.
    pub fn kafka_answered(&self) {
        self.kafka_ok_at_ms.store(now_ms(), Ordering::Relaxed);
    }

    fn kafka_reachable(&self) -> bool {
        now_ms() - self.kafka_ok_at_ms.load(Ordering::Relaxed) <= self.kafka_window.as_millis() as i64
    }

    /// Brings the state-mirroring gauges up to date (called on every scrape).
    pub fn refresh_gauges(&self) {
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
}
