//! HTTP routes: the webhook, liveness, and the FAIL envelope for everything else.

mod health;
mod webhook;

pub use health::{healthz, metrics, not_found, readyz};
pub use webhook::{method_not_allowed, webhook, Pipeline, WebhookError, WebhookState};

use std::sync::Arc;

use crate::configuration::Settings;
use crate::metrics::Metrics;
use crate::webhook::Verifier;

/// The handler's shared state, built from the settings.
pub fn webhook_state(
    settings: &Settings,
    pipeline: Pipeline,
    metrics: Arc<Metrics>,
) -> webhook::WebhookState {
    webhook::WebhookState {
        metrics,
        verifier: Verifier {
            app_ids: settings.app_ids.clone(),
            token: settings.callback_token.clone(),
            max_skew_secs: settings.sign_max_skew_secs,
        },
        max_body_bytes: settings.max_body_bytes,
        pipeline,
    }
}
