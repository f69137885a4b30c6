//! The directory's metric catalogue, and the small HTTP server that exports it on `GET /metrics` in
//! Prometheus' text format (`DIRECTORY_METRICS_LISTEN`).
//!
//! Every metric is a field of [`Metrics`], registered in [`Metrics::new`] with its help text;
//! docs/directory.md lists them. The consumer loop ([`run`](super::run)) owns the updates: it counts an
//! event only once the transaction that applied it has committed, and refreshes the lag itself (see
//! [`run`](super::run)), so a scrape only reads.

use std::net::TcpListener;
use std::sync::Arc;

use actix_web::{web, App, HttpResponse, HttpServer};
use prometheus::{Encoder, Gauge, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};

use super::update::{Change, Kind, Skip};

pub struct Metrics {
    registry: Registry,
    /// Events applied to the table, by `type`, counted after their transaction committed (a batch
    /// replayed after a crash is counted again: the registers make the replay harmless, not invisible).
    pub applied_events: IntCounterVec,
    /// Records read and skipped, by `reason` ([`Skip::reason`]).
    pub skipped_records: IntCounterVec,
    /// Σ over the partitions assigned to this consumer of (high watermark − next offset to apply);
    /// -1 until first measured.
    pub lag_records: IntGauge,
    /// The greatest `event_time_ms` applied since start, in seconds; 0 before the first.
    pub last_applied_event_time_seconds: Gauge,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        macro_rules! reg {
            ($m:expr) => {{
                let m = $m.expect("metric definition is valid");
                registry.register(Box::new(m.clone())).expect("metric names are unique");
                m
            }};
        }
        let m = Self {
            applied_events: reg!(IntCounterVec::new(
                Opts::new(
                    "directory_applied_events_total",
                    "Events applied to the table (their transaction committed), by type."
                ),
                &["type"]
            )),
            skipped_records: reg!(IntCounterVec::new(
                Opts::new(
                    "directory_skipped_records_total",
                    "Records skipped (logged at warn, offset committed), by reason."
                ),
                &["reason"]
            )),
            lag_records: reg!(IntGauge::new(
                "directory_lag_records",
                "Records on the partitions assigned to this consumer not applied yet (high watermark - \
                 next offset), refreshed every 5 s; 0 while none is assigned, -1 until first measured."
            )),
            last_applied_event_time_seconds: reg!(Gauge::new(
                "directory_last_applied_event_time_seconds",
                "The greatest EventTime (Unix seconds) among the events applied since start; 0 before the first."
            )),
            registry,
        };
        // Every label value is present from the start, so rate() and alerts see zeros rather than nothing.
        for kind in Kind::ALL {
            m.applied_events.with_label_values(&[kind.as_str()]);
        }
        for reason in Skip::REASONS {
            m.skipped_records.with_label_values(&[reason]);
        }
        m.lag_records.set(-1);
        m
    }

    /// Counts `batch` as applied: call once its transaction has committed.
    pub fn applied(&self, batch: &[Change]) {
        for c in batch {
            self.applied_events.with_label_values(&[c.kind().as_str()]).inc();
        }
        if let Some(latest) = batch.iter().map(Change::event_time_ms).max() {
            let latest = latest as f64 / 1000.0;
            if latest > self.last_applied_event_time_seconds.get() {
                self.last_applied_event_time_seconds.set(latest);
            }
        }
    }

    /// Counts a skipped record.
    pub fn skipped(&self, skip: &Skip) {
        self.skipped_records.with_label_values(&[skip.reason()]).inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out).expect("text encoding does not fail");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

async fn metrics(metrics: web::Data<Metrics>) -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain; version=0.0.4; charset=utf-8").body(metrics.render())
}

async fn not_found() -> HttpResponse {
    HttpResponse::NotFound().body("no such path; this listener serves /metrics\n")
}

/// The `/metrics` server on `listener`: one worker (a scrape only reads counters), no signal handling
/// of its own (the binary stops it). It runs on the runtime that polls the returned server, apart from
/// the consumer's thread, so a slow scraper never holds up consuming.
pub fn serve(listener: TcpListener, metrics: Arc<Metrics>) -> std::io::Result<actix_web::dev::Server> {
    let metrics = web::Data::from(metrics);
    Ok(HttpServer::new(move || {
        App::new()
            .app_data(metrics.clone())
            .route("/metrics", web::get().to(self::metrics))
            .default_service(web::to(not_found))
    })
    .workers(1)
    .disable_signals()
    .shutdown_timeout(1)
    .listen(listener)?
    .run())
}

#[cfg(test)]
mod tests {
    use super::super::update::parse;
    use super::*;

    #[test]
    fn every_type_and_reason_is_exported_from_the_start_and_applied_events_count_by_type() {
        let m = Metrics::new();
        let text = m.render();
        for kind in Kind::ALL {
            assert!(text.contains(&format!("directory_applied_events_total{{type=\"{}\"}} 0", kind.as_str())));
        }
        for reason in Skip::REASONS {
            assert!(text.contains(&format!("directory_skipped_records_total{{reason=\"{reason}\"}} 0")));
        }
        let d = parse(br#"{"schema_version":2,"type":"destroyed","event_id":"d","sdk_app_id":"1","group_id":"g","event_time_ms":5000}"#)
            .unwrap();
        m.applied(&[d.clone(), d]);
        m.skipped(&parse(b"x").unwrap_err());
        let text = m.render();
        assert!(text.contains("directory_applied_events_total{type=\"destroyed\"} 2"), "{text}");
        assert!(text.contains("directory_skipped_records_total{reason=\"unreadable\"} 1"), "{text}");
        assert!(text.contains("directory_last_applied_event_time_seconds 5"), "{text}");
        assert!(text.contains("directory_lag_records -1"), "not measured yet: {text}");
    }
}
