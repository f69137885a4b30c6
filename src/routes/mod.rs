//! HTTP routes: the webhook, liveness, and the FAIL envelope for everything else.

mod health;
mod webhook;

pub use health::{healthz, not_found};
pub use webhook::{method_not_allowed, webhook, Pipeline, WebhookError, WebhookState};

use crate::configuration::Settings;
use crate::webhook::Verifier;

/// The handler's shared state, built from the settings.
pub fn webhook_state(settings: &Settings, pipeline: Pipeline) -> webhook::WebhookState {
    webhook::WebhookState {
        verifier: Verifier {
            app_ids: settings.app_ids.clone(),
            token: settings.callback_token.clone(),
            max_skew_secs: settings.sign_max_skew_secs,
        },
        max_body_bytes: settings.max_body_bytes,
        pipeline,
    }
}
