//! The status page on the admin listener: one self-contained HTML page and the JSON it plots.

use actix_web::{web, HttpResponse};

use crate::health::Health;
use crate::status::{History, SAMPLES, SAMPLE_EVERY};

/// The page: inline CSS and JS, no external asset, so it works offline and behind any proxy.
const PAGE: &str = include_str!("../status.html");

/// `GET /`: the status page.
pub async fn status_page() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header(("cache-control", "no-store"))
        .body(PAGE)
}

/// `GET /status.json`: the samples of the last 15 minutes, and whether the bridge is ready now.
pub async fn status_json(health: web::Data<Health>, history: web::Data<History>) -> HttpResponse {
    let readiness = health.readiness();
    HttpResponse::Ok().insert_header(("cache-control", "no-store")).json(serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "interval_secs": SAMPLE_EVERY.as_secs(),
        "window_secs": SAMPLE_EVERY.as_secs() * SAMPLES as u64,
        "ready": readiness.is_ok(),
        "reasons": readiness.err().unwrap_or_default(),
        "samples": history.samples(),
    }))
}
