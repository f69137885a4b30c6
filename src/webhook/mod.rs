//! Tencent Cloud Chat's webhook wire protocol, and nothing else.
//!
//! A webhook arrives as a query string (who is calling, with which command, signed how) and a JSON body.
//! This module turns those bytes into a [`GroupEvent`](crate::domain::GroupEvent), into the verdict
//! that the command is not one this bridge publishes, or into a [`Refusal`] that says exactly what was
//! wrong. It does no I/O, so the fuzz target and the property tests drive the very code the HTTP
//! handler runs.
//!
//! The check runs in two steps because the HTTP handler should not read a body for a caller it will
//! refuse anyway: [`Verifier::authenticate`] looks only at the query string and routes the command
//! ([`Route`]), [`Verifier::event`] parses the body of an authenticated request whose command is
//! published, [`Verifier::not_published`] checks the body of one whose command is not.
//!
//! Every command an app enables in Tencent's console is POSTed to the same URL, so a command the
//! bridge does not publish is normal traffic, not an error: it is still authenticated (SdkAppid,
//! Sign) and its body must name the same command as the query, and then it is answered without being
//! published.

mod command;
mod envelope;
mod payload;
mod query;
mod signature;

pub use command::Command;
pub use envelope::Envelope;
pub use query::CallbackQuery;
pub use signature::{sign, CallbackToken};

use crate::domain::{EventHead, GroupEvent, InfoChangedEvent, LifecycleEvent, SdkAppId};
use payload::{Body, Detail};

/// What to do with an authenticated webhook, by its command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// A command this bridge publishes: its body becomes an event.
    Publish(Command),
    /// Any other command (another callback, a "before" callback, or one left out of
    /// `BRIDGE_COMMANDS`): answered, never published. Holds the command as the query names it.
    NotPublished(String),
}

/// An authenticated request: its query string and where its command goes.
#[derive(Debug, Clone)]
pub struct Authenticated {
    pub query: CallbackQuery,
    pub route: Route,
}

/// The outcome of the whole check of an acceptable webhook.
// Made once per request and moved once: a box would cost an allocation to save a copy.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The event to publish.
    Publish(GroupEvent),
    /// A command the bridge does not publish, authenticated and consistent.
    NotPublished,
}

impl Verdict {
    /// The event, when there is one to publish.
    pub fn event(self) -> Option<GroupEvent> {
        match self {
            Verdict::Publish(e) => Some(e),
            Verdict::NotPublished => None,
        }
    }
}

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
    #[error("GroupId is {bytes} bytes long; at most {max} are accepted")]
    GroupIdTooLong { bytes: usize, max: usize },
    #[error("EventTime is missing")]
    MissingEventTime,
    #[error("EventTime must be an integer of milliseconds (a JSON number or a string of digits)")]
    BadEventTime,
    #[error("{0} must be a string")]
    NotAString(&'static str),
    #[error("{field} must be {expected}")]
    BadField { field: &'static str, expected: &'static str },
    #[error("{0} is missing or empty")]
    MissingField(&'static str),
    #[error("UserDefinedDataList names the key {0:?} more than once")]
    DuplicateCustomField(String),
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
            Refusal::MissingCommand => 60011,
            Refusal::CommandMismatch { .. } => 60012,
            Refusal::NotAnObject | Refusal::BadJson(_) => 60020,
            Refusal::MissingGroupId | Refusal::GroupIdTooLong { .. } => 60021,
            Refusal::MissingEventTime | Refusal::BadEventTime => 60022,
            Refusal::NotAString(_) | Refusal::BadField { .. } => 60023,
            Refusal::MissingField(_) => 60025,
            Refusal::DuplicateCustomField(_) => 60026,
            Refusal::TooLarge { .. } => 60030,
        }
    }

    /// A short, stable name for metrics and logs (`bridge_webhooks_total{outcome}`).
    pub fn outcome(&self) -> &'static str {
        use crate::metrics::WebhookOutcome;
        match self.status() {
            403 => WebhookOutcome::RejectedApp,
            401 => WebhookOutcome::RejectedSign,
            413 => WebhookOutcome::TooLarge,
            _ => WebhookOutcome::BadRequest,
        }
        .as_str()
    }
}

/// Checks webhooks against this bridge's settings: which apps it serves, which commands it publishes
/// and, when callback authentication is on, the token and the allowed clock skew.
#[derive(Debug, Clone)]
pub struct Verifier {
    /// The SdkAppids this bridge accepts (Tencent's guidance: check that the caller is your app).
    pub app_ids: Vec<SdkAppId>,
    /// The callback token; `None` turns the Sign check off.
    pub token: Option<CallbackToken>,
    /// How far `RequestTime` may be from now, in seconds, before a signed URL counts as a replay.
    pub max_skew_secs: u64,
    /// The commands published (`BRIDGE_COMMANDS`); every other one is [`Route::NotPublished`].
    pub commands: Vec<Command>,
}

impl Verifier {
    /// Step one: the query string alone. `now_secs` is the current unix time.
    pub fn authenticate(&self, query: &str, now_secs: u64) -> Result<Authenticated, Refusal> {
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
        let route = match q.callback_command.as_deref() {
            None | Some("") => return Err(Refusal::MissingCommand),
            Some(name) => match Command::from_name(name).filter(|c| self.commands.contains(c)) {
                Some(c) => Route::Publish(c),
                None => Route::NotPublished(name.to_owned()),
            },
        };
        Ok(Authenticated { query: q, route })
    }

    /// Step two for a published command: the body becomes the normalized event.
    pub fn event(
        &self,
        query: &CallbackQuery,
        command: Command,
        body: &[u8],
        received_at_ms: i64,
    ) -> Result<GroupEvent, Refusal> {
        let body = Body::parse(body, command)?;
        agree(command.name(), body.callback_command.as_deref())?;
        let app = SdkAppId::parse(query.sdk_app_id.as_deref().unwrap_or_default())
            .map_err(|_| Refusal::MissingAppId)?;
        Ok(match body.detail {
            Detail::InfoChanged(changes) => InfoChangedEvent::new(
                app,
                body.group_id,
                body.group_type,
                body.operator_account,
                changes,
                body.event_time,
                received_at_ms,
                query.client_ip.clone(),
                query.opt_platform.clone(),
            )
            .into(),
            Detail::Lifecycle(detail) => LifecycleEvent::new(
                EventHead {
                    sdk_app_id: app,
                    group_id: body.group_id,
                    group_type: body.group_type,
                    operator_account: body.operator_account,
                    event_time: body.event_time,
                    received_at_ms,
                    client_ip: query.client_ip.clone(),
                    opt_platform: query.opt_platform.clone(),
                },
                detail,
            )
            .into(),
        })
    }

    /// Step two for a command the bridge does not publish: the body must be a JSON object whose
    /// `CallbackCommand`, if it has one, is the query's. Nothing else in it is looked at.
    pub fn not_published(&self, query_command: &str, body: &[u8]) -> Result<(), Refusal> {
        agree(query_command, payload::command_of(body)?.as_deref())
    }

    /// Both steps at once: what the fuzz target and property tests call.
    pub fn check(&self, query: &str, body: &[u8], now_ms: i64) -> Result<Verdict, Refusal> {
        let auth = self.authenticate(query, (now_ms.max(0) / 1000) as u64)?;
        match &auth.route {
            Route::Publish(c) => self.event(&auth.query, *c, body, now_ms).map(Verdict::Publish),
            Route::NotPublished(name) => self.not_published(name, body).map(|()| Verdict::NotPublished),
        }
    }
}

/// The body's `CallbackCommand`, when it has one, must be the query's.
fn agree(query: &str, body: Option<&str>) -> Result<(), Refusal> {
    match body {
        Some(b) if b != query => Err(Refusal::CommandMismatch {
            query: query.chars().take(128).collect(),
            body: b.chars().take(128).collect(),
        }),
        _ => Ok(()),
    }
}

/// The fuzz target's body, also run over the committed corpus by the test suite: splits `data` into a
/// query string (up to the first newline) and a body, runs the whole check with the callback token
/// `fuzz-token` at a fixed clock, and asserts what must hold whatever the input: no panic, and an
/// accepted event that serializes and reads back to itself.
pub fn fuzz_check(data: &[u8]) -> Result<Verdict, Refusal> {
    let (query, body) = match data.iter().position(|b| *b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let verifier = Verifier {
        app_ids: vec![SdkAppId::parse("1400000000").expect("a valid id")],
        token: CallbackToken::new(FUZZ_TOKEN.to_owned()),
        max_skew_secs: 60,
        commands: Command::ALL.to_vec(),
    };
    let query = String::from_utf8_lossy(query);
    let result = verifier.check(&query, body, FUZZ_NOW_MS);
    if let Ok(Verdict::Publish(event)) = &result {
        let json = event.to_json();
        assert_eq!(&GroupEvent::from_json(&json).expect("an event reads back"), event);
        let message = event.to_message();
        assert_eq!(message.check(), Ok(()), "an accepted event fits a spool record");
        let decoded = crate::message::KafkaRecord::decode(message.to_bytes(), |_| Err(String::new()));
        assert_eq!(decoded.expect("a spool record reads back"), message);
    }
    result
}

/// The callback token of [`fuzz_check`].
pub const FUZZ_TOKEN: &str = "fuzz-token";
/// The clock of [`fuzz_check`]: 2022-12-09T08:27:00Z; seeds sign `RequestTime=1670574420`.
pub const FUZZ_NOW_MS: i64 = 1_670_574_420_000;

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::message::KafkaRecord;

    fn verifier() -> Verifier {
        Verifier {
            app_ids: vec![SdkAppId::parse("14000000000000000000").expect("20 digits: the longest id")],
            token: CallbackToken::new(FUZZ_TOKEN.to_owned()),
            max_skew_secs: 60,
            commands: Command::ALL.to_vec(),
        }
    }

    fn query(command: Command) -> String {
        let t = (FUZZ_NOW_MS / 1000).to_string();
        let s = sign(&CallbackToken::new(FUZZ_TOKEN.to_owned()).expect("a token"), &t);
        format!(
            "SdkAppid=14000000000000000000&CallbackCommand={}&ClientIP=1.2.3.4&OptPlatform=RESTAPI&RequestTime={t}&Sign={s}",
            command.name()
        )
    }

    /// A GroupId of any length around the bound and far beyond it (up to 200 000 bytes, as a body
    /// limit of several MiB lets through), in one-, two-, three- and four-byte characters.
    fn group_id() -> impl Strategy<Value = String> {
        let unit = prop_oneof![Just("g"), Just("é"), Just("长"), Just("😀"), Just("#")];
        prop_oneof![
            (unit.clone(), 0usize..=70).prop_map(|(u, n)| u.repeat(n)),
            (unit, 0usize..=50_000).prop_map(|(u, n)| u.repeat(n)),
            "\\PC{0,80}",
        ]
    }

    fn text() -> impl Strategy<Value = String> {
        prop_oneof![Just(String::new()), "\\PC{0,40}", (0usize..20_000).prop_map(|n| "x".repeat(n))]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// Whatever a signed webhook carries, what the check accepts becomes a spool record without
        /// a panic and reads back whole; a GroupId over 64 bytes is refused, one up to 64 accepted.
        #[test]
        fn any_checked_event_fits_the_spool_record_and_reads_back(
            command in proptest::sample::select(Command::ALL.to_vec()),
            group in group_id(),
            name in text(),
            owner in text(),
            custom_key in text(),
            custom_value in text(),
            members in 0usize..600,
            event_time in 0i64..=crate::domain::EventTime::MAX_MILLIS,
        ) {
            let body = serde_json::json!({
                "CallbackCommand": command.name(),
                "GroupId": group,
                "Type": "Public",
                "Operator_Account": owner,
                "Owner_Account": owner,
                "NewOwner_Account": format!("n{owner}"),
                "OldOwner_Account": owner,
                "Name": name,
                "MemberList": vec![serde_json::json!({"Member_Account": "m"}); members],
                "UserDefinedDataList": [{"Key": custom_key, "Value": custom_value}],
                "EventTime": event_time,
            });
            let body = serde_json::to_vec(&body).expect("JSON");

            let result = verifier().check(&query(command), &body, FUZZ_NOW_MS);

            match (group.len(), &result) {
                (0, _) => prop_assert_eq!(result, Err(Refusal::MissingGroupId)),
                (1..=64, Ok(Verdict::Publish(event))) => {
                    let message = event.to_message();
                    prop_assert_eq!(message.check(), Ok(()));
                    let bytes = message.to_bytes();
                    prop_assert_eq!(KafkaRecord::decode(bytes, |_| Err(String::new())).unwrap(), message);
                }
                (1..=64, other) => prop_assert!(false, "refused: {other:?}"),
                (bytes, _) => prop_assert_eq!(result, Err(Refusal::GroupIdTooLong { bytes, max: 64 })),
            }
        }
    }
}
