//! What each listener answers for a path it does not serve.

use actix_web::HttpResponse;

use crate::webhook::Envelope;

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
