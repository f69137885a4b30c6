//! `POST {BRIDGE_WEBHOOK_PATH}`: check, normalize, hand to the [pipeline](crate::pipeline), answer. A
//! command the bridge does not publish is answered OK at once, or relayed to the app's own handler.

use std::sync::Arc;
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use futures_util::StreamExt;

use crate::domain::GroupEvent;
use crate::metrics::{Metrics, WebhookOutcome};
use crate::pipeline::{Pipeline, PipelineError};
use crate::relay::{Answer, Relay, RelayError};
use crate::spool::SpoolError;
use crate::webhook::{Envelope, Refusal, Route, Verifier};

/// Everything the webhook handler shares across requests.
pub struct WebhookState {
    pub verifier: Verifier,
    pub metrics: Arc<Metrics>,
    pub max_body_bytes: usize,
    /// The whole body must arrive within this time once the head has; slower clients get 408. One of
    /// the server's limits against slow clients, set with the others at startup.
    pub body_timeout: Duration,
    pub pipeline: Pipeline,
    /// `BRIDGE_RELAY_URL`: where commands not published go; `None` answers them OK here.
    pub relay: Option<Relay>,
}

/// How a webhook that was not refused was answered.
// Made once per request and moved once: a box would cost an allocation to save a copy.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum Answered {
    /// Published: on the spool (or in Kafka, in sync mode).
    Accepted(GroupEvent),
    /// A command not published, answered with the allow envelope.
    Ignored { command: String },
    /// A command not published, relayed; the handler's answer goes back as it is.
    Relayed { command: String, answer: Answer },
    /// A command not published whose relay failed; answered with the allow envelope.
    RelayFailed { command: String, error: RelayError },
}

impl Answered {
    /// The `outcome` label of `bridge_webhooks_total`.
    fn outcome(&self) -> &'static str {
        match self {
            Answered::Accepted(_) => WebhookOutcome::Accepted,
            Answered::Ignored { .. } => WebhookOutcome::IgnoredCommand,
            Answered::Relayed { .. } => WebhookOutcome::Relayed,
            Answered::RelayFailed { .. } => WebhookOutcome::RelayFailed,
        }
        .as_str()
    }

    fn response(self) -> HttpResponse {
        match self {
            Answered::Relayed { answer, .. } => {
                let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::BAD_GATEWAY);
                let mut response = HttpResponse::build(status);
                if let Some(ct) = answer.content_type {
                    response.insert_header((actix_web::http::header::CONTENT_TYPE, ct));
                }
                response.body(answer.body)
            }
            _ => HttpResponse::Ok().json(Envelope::ok()),
        }
    }
}

/// Why a webhook was not answered OK. Each variant maps to an HTTP status and a FAIL envelope; the
/// cause chain goes to the log, never to the caller.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error("could not read the request body: {0}")]
    Body(String),
    /// The pipeline did not take the event (spool, Kafka, or the event itself).
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error("method not allowed: the webhook is a POST")]
    Method,
    #[error("the body did not arrive within {} s", .0.as_secs())]
    BodyTimeout(Duration),
}

impl WebhookError {
    pub fn code(&self) -> u32 {
        match self {
            WebhookError::Refused(r) => r.code(),
            WebhookError::Body(_) => 60024,
            WebhookError::Pipeline(e) => match e {
                PipelineError::Spool(e) if e.is_full() => 60040,
                PipelineError::Spool(SpoolError::Busy { .. }) => 60043,
                PipelineError::Spool(_) => 60041,
                PipelineError::Kafka(_) | PipelineError::KafkaTimeout(_) => 60042,
                PipelineError::TooLargeForTopic { .. } => 60031,
                PipelineError::Unencodable(_) => 60027,
            },
            WebhookError::Method => 60405,
            WebhookError::BodyTimeout(_) => 60408,
        }
    }

    /// The `outcome` label of `bridge_webhooks_total`.
    pub fn outcome(&self) -> &'static str {
        let outcome = match self {
            WebhookError::Refused(r) => return r.outcome(),
            WebhookError::Body(_) | WebhookError::Method => WebhookOutcome::BadRequest,
            WebhookError::BodyTimeout(_) => WebhookOutcome::BodyTimeout,
            WebhookError::Pipeline(e) => match e {
                PipelineError::Unencodable(_) => WebhookOutcome::BadRequest,
                PipelineError::Spool(e) if e.is_full() => WebhookOutcome::SpoolFull,
                PipelineError::Spool(SpoolError::Busy { .. }) => WebhookOutcome::SpoolBusy,
                PipelineError::TooLargeForTopic { .. } => WebhookOutcome::TooLarge,
                PipelineError::Spool(_) => WebhookOutcome::SpoolError,
                PipelineError::Kafka(_) | PipelineError::KafkaTimeout(_) => WebhookOutcome::KafkaUnavailable,
            },
        };
        outcome.as_str()
    }

    /// What the caller reads in `ErrorInfo`.
    fn info(&self) -> String {
        match self {
            WebhookError::Pipeline(PipelineError::Spool(SpoolError::Full { .. })) => {
                "spool is full: Kafka is behind; the event was not accepted".to_owned()
            }
            WebhookError::Pipeline(PipelineError::Spool(SpoolError::DiskFull(_))) => {
                "the spool's disk is full; the event was not accepted".to_owned()
            }
            WebhookError::Pipeline(PipelineError::Spool(SpoolError::Busy { .. })) => {
                "the spool's disk is slow and too many events wait for it; the event was not accepted"
                    .to_owned()
            }
            WebhookError::Pipeline(PipelineError::Spool(_)) => {
                "the event could not be stored; it was not accepted".to_owned()
            }
            WebhookError::Pipeline(PipelineError::Kafka(_)) => {
                "Kafka did not take the event; it was not accepted".to_owned()
            }
            other => other.to_string(),
        }
    }
}

impl ResponseError for WebhookError {
    fn status_code(&self) -> StatusCode {
        match self {
            WebhookError::Refused(r) => StatusCode::from_u16(r.status()).unwrap_or(StatusCode::BAD_REQUEST),
            WebhookError::Body(_) => StatusCode::BAD_REQUEST,
            WebhookError::Pipeline(e) => match e {
                PipelineError::Unencodable(_) => StatusCode::BAD_REQUEST,
                PipelineError::Spool(e) if e.is_full() => StatusCode::SERVICE_UNAVAILABLE,
                PipelineError::Spool(SpoolError::Busy { .. }) => StatusCode::SERVICE_UNAVAILABLE,
                PipelineError::TooLargeForTopic { .. } => StatusCode::PAYLOAD_TOO_LARGE,
                PipelineError::Spool(_) => StatusCode::INTERNAL_SERVER_ERROR,
                PipelineError::Kafka(_) | PipelineError::KafkaTimeout(_) => StatusCode::SERVICE_UNAVAILABLE,
            },
            WebhookError::Method => StatusCode::METHOD_NOT_ALLOWED,
            WebhookError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
        }
    }

    fn error_response(&self) -> HttpResponse {
        HttpResponse::build(self.status_code()).json(Envelope::fail(self.code(), self.info()))
    }
}

/// The webhook handler. The query string is checked before the body is read, so a stranger's request
/// costs no body read; the body limit is enforced while reading.
pub async fn webhook(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<WebhookState>,
) -> Result<HttpResponse, WebhookError> {
    let received_at_ms = crate::now_ms();
    let mut group_id = None;
    let result = accept(&req, body, &state, received_at_ms, &mut group_id).await;
    let outcome = result.as_ref().map_or_else(WebhookError::outcome, Answered::outcome);
    state.metrics.webhooks.with_label_values(&[outcome]).inc();
    match &result {
        Ok(Answered::Accepted(event)) => {
            tracing::debug!(
                group_id = event.group_id().as_str(),
                event_id = event.event_id().as_str(),
                event_type = event.event_type().as_str(),
                "webhook accepted"
            );
        }
        Ok(Answered::Ignored { command }) => {
            tracing::debug!(outcome, command, "command not published; answered OK");
        }
        Ok(Answered::Relayed { command, answer }) => {
            tracing::debug!(outcome, command, status = answer.status, "command not published; relayed");
        }
        Ok(Answered::RelayFailed { command, error }) => {
            tracing::warn!(outcome, command, reason = %error, "command not published; relay failed, answered OK");
        }
        Err(e) => {
            let app =
                crate::webhook::CallbackQuery::parse(req.query_string()).ok().and_then(|q| q.sdk_app_id);
            let (app, group_id) = (app.as_deref(), group_id.as_deref());
            let status = e.status_code().as_u16();
            if status >= 500 {
                tracing::warn!(outcome = e.outcome(), status, code = e.code(), sdk_app_id = app, group_id, reason = %e, "webhook not accepted");
            } else {
                tracing::info!(outcome = e.outcome(), status, code = e.code(), sdk_app_id = app, group_id, reason = %e, "webhook refused");
            }
        }
    }
    result.map(Answered::response)
}

async fn accept(
    req: &HttpRequest,
    body: web::Payload,
    state: &WebhookState,
    received_at_ms: i64,
    group_id: &mut Option<String>,
) -> Result<Answered, WebhookError> {
    let arrived = tokio::time::Instant::now();
    let auth = state.verifier.authenticate(req.query_string(), (received_at_ms / 1000) as u64)?;
    let body = tokio::time::timeout(state.body_timeout, read_body(req, body, state.max_body_bytes))
        .await
        .map_err(|_| WebhookError::BodyTimeout(state.body_timeout))??;
    let command = match auth.route {
        Route::Publish(command) => command,
        Route::NotPublished(command) => {
            state.verifier.not_published(&command, &body)?;
            let Some(relay) = &state.relay else { return Ok(Answered::Ignored { command }) };
            let content_type =
                req.headers().get(actix_web::http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
            return Ok(match relay.relay(req.query_string(), content_type, body, arrived).await {
                Ok(answer) => Answered::Relayed { command, answer },
                Err(error) => Answered::RelayFailed { command, error },
            });
        }
    };
    let event = state.verifier.event(&auth.query, command, &body, received_at_ms).inspect_err(|_| {
        // For the refusal's log line: the GroupId, if the body has a readable one.
        #[derive(serde::Deserialize)]
        struct JustGroup {
            #[serde(rename = "GroupId", alias = "groupID")]
            group_id: String,
        }
        *group_id =
            serde_json::from_slice::<JustGroup>(&body).ok().map(|g| g.group_id.chars().take(64).collect());
    })?;
    *group_id = Some(event.group_id().as_str().to_owned());
    state.pipeline.submit(&event).await?;
    Ok(Answered::Accepted(event))
}

/// Reads at most `limit` bytes: a declared Content-Length over the limit is refused before reading,
/// and a body that grows past it is refused as soon as it does.
async fn read_body(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
) -> Result<Vec<u8>, WebhookError> {
    let declared = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(Refusal::TooLarge { limit }.into());
    }
    let mut body = Vec::with_capacity(declared.map_or(1024, |n| n as usize));
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| WebhookError::Body(e.to_string()))?;
        if body.len() + chunk.len() > limit {
            return Err(Refusal::TooLarge { limit }.into());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Anything but POST on the webhook path.
pub async fn method_not_allowed() -> Result<HttpResponse, WebhookError> {
    Err(WebhookError::Method)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the caller gets for `e`: status, and the envelope's ErrorCode and ActionStatus.
    async fn answer(e: &WebhookError) -> (u16, serde_json::Value) {
        let response = e.error_response();
        let status = response.status().as_u16();
        let body = actix_web::body::to_bytes(response.into_body()).await.unwrap();
        (status, serde_json::from_slice(&body).unwrap())
    }

    #[actix_web::test]
    async fn a_spool_whose_writer_is_behind_answers_503_with_a_fail_envelope_and_its_own_outcome() {
        let busy = WebhookError::Pipeline(PipelineError::Spool(SpoolError::Busy {
            queued_bytes: 64 << 20,
            max_bytes: 64 << 20,
        }));
        let (status, envelope) = answer(&busy).await;
        assert_eq!(status, 503);
        assert_eq!(
            (envelope["ActionStatus"].as_str(), envelope["ErrorCode"].as_u64()),
            (Some("FAIL"), Some(60043))
        );
        assert_eq!(busy.outcome(), "spool_busy");
        assert!(crate::metrics::OUTCOMES.contains(&busy.outcome()));
        // Apart from a full spool, which passes once Kafka catches up.
        let full = WebhookError::Pipeline(PipelineError::Spool(SpoolError::Full { bytes: 1, max_bytes: 1 }));
        assert_eq!((answer(&full).await.0, full.code(), full.outcome()), (503, 60040, "spool_full"));
    }
}
