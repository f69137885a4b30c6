//! `GET /metrics` on the admin listener.

use actix_web::{web, HttpResponse};

use crate::health::Health;

/// Prometheus text format.
pub async fn metrics(health: web::Data<Health>) -> HttpResponse {
    health.refresh_gauges();
    HttpResponse::Ok().content_type("text/plain; version=0.0.4; charset=utf-8").body(health.metrics.render())
}
