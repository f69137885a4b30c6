use actix_web::HttpResponse;

use crate::webhook::Envelope;

/// Liveness: 200 while the process serves HTTP.
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "status": "ok" }))
}

/// Any other path: 404 with a FAIL envelope, so a misconfigured callback URL reads clearly in
/// Tencent's console.
pub async fn not_found() -> HttpResponse {
    HttpResponse::NotFound()
        .json(Envelope::fail(60404, "no such path; the webhook path is set by BRIDGE_WEBHOOK_PATH"))
}
