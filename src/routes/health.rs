//! Liveness and readiness on the admin listener.

use actix_web::{web, HttpResponse};

use crate::health::Health;

/// Readiness: 200 when Kafka answers and the spool has room; otherwise 503 naming every reason.
pub async fn readyz(health: web::Data<Health>) -> HttpResponse {
    match health.readiness() {
        Ok(()) => HttpResponse::Ok().json(serde_json::json!({ "status": "ready" })),
        Err(reasons) => HttpResponse::ServiceUnavailable()
            .json(serde_json::json!({ "status": "not ready", "reasons": reasons })),
    }
}

/// Liveness: 200 unless a restart would help (the spool failed for good, the writer thread or the
/// forwarder died); then 503 naming every reason.
pub async fn healthz(health: web::Data<Health>) -> HttpResponse {
    match health.liveness() {
        Ok(()) => HttpResponse::Ok().json(serde_json::json!({ "status": "ok" })),
        Err(reasons) => HttpResponse::ServiceUnavailable()
            .json(serde_json::json!({ "status": "failed", "reasons": reasons })),
    }
}
