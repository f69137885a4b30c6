//! The last 15 minutes, in process: what the status page (`GET /` on the admin listener) plots.
//!
//! A developer on `scripts/dev` has no Prometheus or Grafana at hand, yet wants to see that webhooks
//! arrive and reach Kafka. A sampler reads the same [`Metrics`] that `/metrics` exports every
//! [`SAMPLE_EVERY`] and keeps the last [`SAMPLES`] samples in a ring buffer; `/status.json` serves
//! them. Rates and latency quantiles are computed per interval from the counters' and histogram's
//! differences, as Prometheus' `rate()` and `histogram_quantile()` would. Nothing here is needed for
//! the bridge to work: it costs one small struct per 2 s and about 60 KB.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::core::{Collector, Metric};
use serde::Serialize;

use crate::metrics::Metrics;

/// How often a sample is taken.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(2);
/// How many samples are kept: 15 minutes' worth.
pub const SAMPLES: usize = 450;

/// One interval's worth of what the page plots.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Sample {
    /// End of the interval, ms since the epoch.
    pub t: i64,
    /// Webhooks per second over the interval, by outcome (only outcomes seen so far).
    pub rate: BTreeMap<String, f64>,
    /// `bridge_produce_lag_seconds` at the end of the interval.
    pub lag: f64,
    /// `bridge_spool_pending_events` at the end of the interval.
    pub pending: i64,
    /// Delivery latency (webhook received → Kafka acknowledged) quantiles over the interval, seconds;
    /// `None` when nothing was delivered in it.
    pub p50: Option<f64>,
    pub p99: Option<f64>,
}

/// The ring buffer, shared between the sampler and the handler.
#[derive(Default)]
pub struct History {
    /// A std `Mutex`: held to push one sample or to clone the buffer, never across an `.await`.
    samples: Mutex<VecDeque<Sample>>,
}

impl History {
    pub fn push(&self, sample: Sample) {
        let mut samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        if samples.len() == SAMPLES {
            samples.pop_front();
        }
        samples.push_back(sample);
    }

    pub fn samples(&self) -> Vec<Sample> {
        self.samples.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect()
    }
}

/// The cumulative values a sample is the difference of.
struct Totals {
    webhooks: BTreeMap<String, u64>,
    /// Cumulative counts of `bridge_kafka_delivery_seconds`' buckets, with their upper bounds.
    buckets: Vec<(f64, u64)>,
    delivered: u64,
}

impl Totals {
    fn read(metrics: &Metrics) -> Self {
        let mut webhooks = BTreeMap::new();
        for family in metrics.webhooks.collect() {
            for m in family.get_metric() {
                let outcome = m.get_label().iter().find(|l| l.name() == "outcome");
                if let Some(outcome) = outcome {
                    webhooks.insert(outcome.value().to_owned(), m.get_counter().get_value() as u64);
                }
            }
        }
        let h = metrics.kafka_delivery_seconds.metric();
        let h = h.get_histogram();
        let buckets = h.get_bucket().iter().map(|b| (b.upper_bound(), b.cumulative_count())).collect();
        Self { webhooks, buckets, delivered: h.get_sample_count() }
    }
}

/// The `q` quantile of the observations between two cumulative bucket readings, interpolated linearly
/// inside its bucket as `histogram_quantile` does; `None` without observations.
fn quantile(q: f64, before: &[(f64, u64)], after: &[(f64, u64)], count: u64) -> Option<f64> {
    if count == 0 {
        return None;
    }
    let rank = q * count as f64;
    let mut lower = (0.0, 0u64);
    for (i, (bound, cumulative)) in after.iter().enumerate() {
        let cumulative = cumulative - before.get(i).map_or(0, |b| b.1);
        if cumulative as f64 >= rank {
            let in_bucket = (cumulative - lower.1) as f64;
            let share = if in_bucket > 0.0 { (rank - lower.1 as f64) / in_bucket } else { 1.0 };
            return Some(lower.0 + (bound - lower.0) * share);
        }
        lower = (*bound, cumulative);
    }
    // Above the last finite bucket: say the last bound, as histogram_quantile does.
    Some(lower.0)
}

/// The sample for the interval from `before` to `after`, `elapsed` long.
fn sample(before: &Totals, after: &Totals, elapsed: Duration, metrics: &Metrics) -> Sample {
    let secs = elapsed.as_secs_f64().max(1e-3);
    let rate = after
        .webhooks
        .iter()
        .map(|(outcome, n)| {
            let delta = n.saturating_sub(before.webhooks.get(outcome).copied().unwrap_or(0));
            (outcome.clone(), delta as f64 / secs)
        })
        .collect();
    let delivered = after.delivered.saturating_sub(before.delivered);
    Sample {
        t: crate::now_ms(),
        rate,
        lag: metrics.produce_lag_seconds.get(),
        pending: metrics.spool_pending_events.get(),
        p50: quantile(0.5, &before.buckets, &after.buckets, delivered),
        p99: quantile(0.99, &before.buckets, &after.buckets, delivered),
    }
}

/// Takes a sample of `metrics` every [`SAMPLE_EVERY`], forever (the task is aborted at shutdown),
/// calling `refresh_gauges` first (the gauges that are read on demand: the spool's, the lag).
pub async fn run_sampler(metrics: Arc<Metrics>, refresh_gauges: impl Fn(), history: Arc<History>) {
    let mut ticks = tokio::time::interval(SAMPLE_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    let mut before = Totals::read(&metrics);
    let mut taken = tokio::time::Instant::now();
    loop {
        ticks.tick().await;
        refresh_gauges();
        let after = Totals::read(&metrics);
        let now = tokio::time::Instant::now();
        history.push(sample(&before, &after, now - taken, &metrics));
        (before, taken) = (after, now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_keeps_the_last_15_minutes() {
        let h = History::default();
        for t in 0..(SAMPLES as i64 + 10) {
            h.push(Sample { t, rate: BTreeMap::new(), lag: 0.0, pending: 0, p50: None, p99: None });
        }
        let s = h.samples();
        assert_eq!(s.len(), SAMPLES);
        assert_eq!(s.first().unwrap().t, 10);
        assert_eq!(s.last().unwrap().t, SAMPLES as i64 + 9);
    }

    #[test]
    fn rates_and_quantiles_come_from_the_interval_alone() {
        let metrics = Metrics::new();
        metrics.webhooks.with_label_values(&["accepted"]).inc_by(100);
        metrics.kafka_delivery_seconds.observe(30.0);
        let before = Totals::read(&metrics);
        metrics.webhooks.with_label_values(&["accepted"]).inc_by(20);
        metrics.webhooks.with_label_values(&["rejected_sign"]).inc_by(2);
        for _ in 0..99 {
            metrics.kafka_delivery_seconds.observe(0.002);
        }
        metrics.kafka_delivery_seconds.observe(0.2);
        let after = Totals::read(&metrics);

        let s = sample(&before, &after, Duration::from_secs(2), &metrics);

        assert_eq!(s.rate["accepted"], 10.0);
        assert_eq!(s.rate["rejected_sign"], 1.0);
        let p50 = s.p50.unwrap();
        assert!(p50 > 0.001 && p50 <= 0.0025, "p50 {p50}");
        assert!(s.p99.unwrap() <= 0.0025, "the earlier 30 s observation is not in this interval");
        let none = sample(&after, &after, Duration::from_secs(2), &metrics);
        assert_eq!((none.p50, none.rate["accepted"]), (None, 0.0));
    }
}
