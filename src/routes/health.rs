use actix_web::{web, HttpResponse};

use crate::health::Health;
use crate::webhook::Envelope;

/// Readiness: 200 when Kafka answers and the spool has room; otherwise 503 naming every reason.
pub async fn readyz(health: web::Data<Health>) -> HttpResponse {
    match health.readiness() {
        Ok(()) => HttpResponse::Ok().json(serde_json::json!({ "status": "ready" })),
        Err(reasons) => HttpResponse::ServiceUnavailable()
            .json(serde_json::json!({ "status": "not ready", "reasons": reasons })),
    }
}

/// Prometheus text format.
pub async fn metrics(health: web::Data<Health>) -> HttpResponse {
    health.refresh();
    HttpResponse::Ok().content_type("text/plain; version=0.0.4; charset=utf-8").body(health.metrics.render())
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

/// Any other path: 404 with a FAIL envelope, so a misconfigured callback URL reads clearly in
/// Tencent's console.
pub async fn not_found() -> HttpResponse {
    HttpResponse::NotFound()
        .json(Envelope::fail(60404, "no such path; the webhook path is set by BRIDGE_WEBHOOK_PATH"))
}

/// Any other path on the admin listener.
pub async fn admin_not_found() -> HttpResponse {
    HttpResponse::NotFound().json(serde_json::json!({
        "error": "no such path; the admin listener serves /, /status.json, /metrics, /healthz and /readyz"
    }))
}
