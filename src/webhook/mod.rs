//! Tencent Cloud Chat's webhook wire protocol, and nothing else.
//!
//! A webhook arrives as a query string (who is calling, with which command, signed how) and a JSON body.
//! This module turns those bytes into a [`GroupChangeEvent`](crate::domain::GroupChangeEvent) or into a
//! [`Refusal`] that says exactly what was wrong. It does no I/O, so the fuzz target and the property
//! tests drive the very code the HTTP handler runs.
//!
//! The check runs in two steps because the HTTP handler should not read a body for a caller it will
//! refuse anyway: [`Verifier::authenticate`] looks only at the query string, [`Verifier::event`] parses
//! the body of an authenticated request.

mod envelope;
mod payload;
mod query;
mod signature;

pub use envelope::Envelope;
pub use query::CallbackQuery;
pub use signature::{sign, CallbackToken};

use crate::domain::{GroupChangeEvent, SdkAppId};

/// The one callback command this bridge republishes.
pub const GROUP_INFO_CHANGED: &str = "Group.CallbackAfterGroupInfoChanged";

/// Why a webhook was refused. Every variant names its HTTP status and our error code; the text is what
/// the caller reads in `ErrorInfo`, so it says what was wrong and never echoes a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("malformed query string: {0}")]
    BadQuery(String),
    #[error("SdkAppid is missing from the query string")]
    MissingAppId,
    #[error("SdkAppid {0:?} is not an app this bridge serves")]
    UnknownApp(String),
    #[error("callback authentication is on: Sign and RequestTime are required")]
    MissingSign,
    #[error("RequestTime must be unix seconds")]
    BadRequestTime,
    #[error("RequestTime is {skew_secs} s away from now; at most {max_skew_secs} s is accepted")]
    StaleRequestTime { skew_secs: u64, max_skew_secs: u64 },
    #[error("Sign does not match the callback token and RequestTime")]
    BadSign,
    #[error("CallbackCommand is missing from the query string")]
    MissingCommand,
    #[error("CallbackCommand {0:?} is not {GROUP_INFO_CHANGED}")]
    WrongCommand(String),
    #[error("CallbackCommand in the body ({body:?}) disagrees with the query string ({query:?})")]
    CommandMismatch { query: String, body: String },
    #[error("body is larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("body is not a JSON object")]
    NotAnObject,
    #[error("body is not valid JSON: {0}")]
    BadJson(String),
    #[error("GroupId is missing or empty")]
    MissingGroupId,
    #[error("EventTime is missing")]
    MissingEventTime,
    #[error("EventTime must be an integer of milliseconds (a JSON number or a string of digits)")]
    BadEventTime,
    #[error("{0} must be a string")]
    NotAString(&'static str),
}

impl Refusal {
    /// The HTTP status that fits the refusal: 403 for a stranger's app, 401 for a bad signature, 413 for
    /// an oversized body, 400 for everything malformed.
    pub fn status(&self) -> u16 {
        match self {
            Refusal::MissingAppId | Refusal::UnknownApp(_) => 403,
            Refusal::MissingSign
            | Refusal::BadRequestTime
            | Refusal::StaleRequestTime { .. }
            | Refusal::BadSign => 401,
            Refusal::TooLarge { .. } => 413,
            _ => 400,
        }
    }

    /// Our `ErrorCode` for the refusal (Tencent ignores it for "after" webhooks; people reading logs and
    /// answers do not). Listed in docs/event.md.
    pub fn code(&self) -> u32 {
        match self {
            Refusal::MissingAppId | Refusal::UnknownApp(_) => 60001,
            Refusal::MissingSign => 60002,
            Refusal::BadRequestTime | Refusal::StaleRequestTime { .. } => 60003,
            Refusal::BadSign => 60004,
            Refusal::BadQuery(_) => 60010,
            Refusal::MissingCommand | Refusal::WrongCommand(_) => 60011,
            Refusal::CommandMismatch { .. } => 60012,
            Refusal::NotAnObject | Refusal::BadJson(_) => 60020,
            Refusal::MissingGroupId => 60021,
            Refusal::MissingEventTime | Refusal::BadEventTime => 60022,
            Refusal::NotAString(_) => 60023,
            Refusal::TooLarge { .. } => 60030,
        }
    }

    /// A short, stable name for metrics and logs (`bridge_webhooks_total{outcome}`).
    pub fn outcome(&self) -> &'static str {
        match self.status() {
            403 => "rejected_app",
            401 => "rejected_sign",
            413 => "too_large",
            _ => "bad_request",
        }
    }
}

/// Checks webhooks against this bridge's settings: which apps it serves and, when callback
/// authentication is on, the token and the allowed clock skew.
#[derive(Debug, Clone)]
pub struct Verifier {
    /// The SdkAppids this bridge accepts (Tencent's guidance: check that the caller is your app).
    pub app_ids: Vec<SdkAppId>,
    /// The callback token; `None` turns the Sign check off.
    pub token: Option<CallbackToken>,
    /// How far `RequestTime` may be from now, in seconds, before a signed URL counts as a replay.
    pub max_skew_secs: u64,
}

impl Verifier {
    /// Step one: the query string alone. `now_secs` is the current unix time.
    pub fn authenticate(&self, query: &str, now_secs: u64) -> Result<CallbackQuery, Refusal> {
        let q = CallbackQuery::parse(query)?;
        let app = q.sdk_app_id.as_deref().ok_or(Refusal::MissingAppId)?;
        if !self.app_ids.iter().any(|id| id.as_str() == app) {
            return Err(Refusal::UnknownApp(app.chars().take(64).collect()));
        }
        if let Some(token) = &self.token {
            signature::verify(
                token,
                q.request_time.as_deref(),
                q.sign.as_deref(),
                now_secs,
                self.max_skew_secs,
            )?;
        }
        match q.callback_command.as_deref() {
            None => return Err(Refusal::MissingCommand),
            Some(GROUP_INFO_CHANGED) => {}
            Some(other) => return Err(Refusal::WrongCommand(other.chars().take(128).collect())),
        }
        Ok(q)
    }

    /// Step two: the body of an authenticated request becomes the normalized event.
    pub fn event(
        &self,
        query: &CallbackQuery,
        body: &[u8],
        received_at_ms: i64,
    ) -> Result<GroupChangeEvent, Refusal> {
        let body = payload::GroupInfoChanged::parse(body)?;
        if let Some(cmd) = &body.callback_command {
            if cmd != GROUP_INFO_CHANGED {
                return Err(Refusal::CommandMismatch {
                    query: GROUP_INFO_CHANGED.to_owned(),
                    body: cmd.chars().take(128).collect(),
                });
            }
        }
        let app = SdkAppId::parse(query.sdk_app_id.as_deref().unwrap_or_default())
            .map_err(|_| Refusal::MissingAppId)?;
        Ok(GroupChangeEvent::new(
            app,
            body.group_id,
            body.group_type,
            body.operator_account,
            body.changes,
            body.event_time,
            received_at_ms,
            query.client_ip.clone(),
            query.opt_platform.clone(),
        ))
    }

    /// Both steps at once: what the fuzz target and property tests call.
    pub fn check(&self, query: &str, body: &[u8], now_ms: i64) -> Result<GroupChangeEvent, Refusal> {
        let q = self.authenticate(query, (now_ms.max(0) / 1000) as u64)?;
        self.event(&q, body, now_ms)
    }
}

/// The fuzz target's body, also run over the committed corpus by the test suite: splits `data` into a
/// query string (up to the first newline) and a body, runs the whole check with the callback token
/// `fuzz-token` at a fixed clock, and asserts what must hold whatever the input: no panic, and an
/// accepted event that serializes and reads back to itself.
pub fn fuzz_check(data: &[u8]) -> Result<GroupChangeEvent, Refusal> {
    let (query, body) = match data.iter().position(|b| *b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let verifier = Verifier {
        app_ids: vec![SdkAppId::parse("1400000000").expect("a valid id")],
        token: CallbackToken::new(FUZZ_TOKEN.to_owned()),
        max_skew_secs: 60,
    };
    let query = String::from_utf8_lossy(query);
    let result = verifier.check(&query, body, FUZZ_NOW_MS);
    if let Ok(event) = &result {
        let json = event.to_json();
        assert_eq!(&GroupChangeEvent::from_json(&json).expect("an event reads back"), event);
    }
    result
}

/// The callback token of [`fuzz_check`].
pub const FUZZ_TOKEN: &str = "fuzz-token";
/// The clock of [`fuzz_check`]: 2022-12-09T08:27:00Z; seeds sign `RequestTime=1670574420`.
pub const FUZZ_NOW_MS: i64 = 1_670_574_420_000;
