//! HTTP routes. The webhook listener serves the webhook and a FAIL envelope for everything else; the
//! admin listener serves liveness, readiness, metrics and the status page.

mod fallback;
mod health;
mod metrics;
mod status;
mod webhook;

pub use fallback::{admin_not_found, not_found};
pub use health::{healthz, readyz};
pub use metrics::metrics;
pub use status::{status_json, status_page};
pub use webhook::{method_not_allowed, webhook, WebhookError, WebhookState};

use std::sync::Arc;
use std::time::Duration;

use crate::configuration::Settings;
use crate::metrics::Metrics;
use crate::pipeline::Pipeline;
use crate::relay::Relay;
use crate::webhook::Verifier;

/// The handler's shared state, built from the settings; `body_timeout` is the server's limit on a
/// slow body.
pub fn webhook_state(
    settings: &Settings,
    body_timeout: Duration,
    pipeline: Pipeline,
    relay: Option<Relay>,
    metrics: Arc<Metrics>,
) -> webhook::WebhookState {
    webhook::WebhookState {
        metrics,
        verifier: Verifier {
            app_ids: settings.app_ids.clone(),
            token: settings.callback_token.clone(),
            max_skew_secs: settings.sign_max_skew_secs,
            commands: settings.commands.clone(),
        },
        max_body_bytes: settings.max_body_bytes,
        body_timeout,
        pipeline,
        relay,
    }
}
