//! Settings, read once at start from `BRIDGE_*` environment variables.
//!
//! [`VARIABLES`] is the single list of what the bridge reads: `--help` prints it, the defaults used
//! below come from it, and the test that guards `docker-compose.yml` checks against it. Every value is
//! parsed into its type here, so a malformed one stops the process at start with one line naming the
//! variable, never later in a request.
//!
//! A part with settings of its own owns their type ([`KafkaSettings`] in the publisher, [`TlsFiles`]
//! in tls, [`LogFormat`] in telemetry, [`FsyncMode`] in the spool); this module imports them and
//! assembles [`Settings`], never the other way round.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::domain::SdkAppId;
pub use crate::exactly_once::ExactlyOnce;
pub use crate::publisher::RDKAFKA_PREFIX;
use crate::publisher::{KafkaSettings, RdkafkaOverrides};
pub use crate::spool::FsyncMode;
use crate::telemetry::LogFormat;
use crate::tencent::SecretKey;
use crate::tls::TlsFiles;
use crate::webhook::{CallbackToken, Command};

/// One environment variable the bridge reads.
pub struct Variable {
    pub name: &'static str,
    /// The default, or `None` when the variable is required or its absence means "off".
    pub default: Option<&'static str>,
    pub meaning: &'static str,
    /// For a whole number: the values taken. Anything else stops the bridge at start, naming the
    /// variable: a value out of range is refused, never clamped.
    pub range: Option<Range>,
}

/// The whole numbers a variable takes, both ends included, and why when that is not obvious.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub min: u64,
    /// `u64::MAX`: no upper bound.
    pub max: u64,
    /// Why the range is what it is, added to the refusal ("" when the meaning says it).
    pub why: &'static str,
}

/// As `--help`, the README and the refusals spell it: `1–86400`, or `at least 16384`.
impl std::fmt::Display for Range {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.max == u64::MAX {
            write!(f, "at least {}", self.min)
        } else {
            write!(f, "{}–{}", self.min, self.max)
        }
    }
}

const fn var(name: &'static str, default: Option<&'static str>, meaning: &'static str) -> Variable {
    Variable { name, default, meaning, range: None }
}

/// A whole-number variable: its default, meaning and range (`min..=max`, and why).
const fn num(
    name: &'static str,
    default: Option<&'static str>,
    meaning: &'static str,
    (min, max): (u64, u64),
    why: &'static str,
) -> Variable {
    Variable { name, default, meaning, range: Some(Range { min, max, why }) }
}

/// Every variable, in the order `--help` shows them.
pub const VARIABLES: &[Variable] = &[
    var("BRIDGE_SDK_APP_ID", None, "required: the SdkAppid accepted, or a comma list of them"),
    var(
        "BRIDGE_CALLBACK_TOKEN",
        None,
        "callback authentication token; when set, Sign and RequestTime are checked",
    ),
    num(
        "BRIDGE_SIGN_MAX_SKEW_SECS",
        Some("60"),
        "how far RequestTime may be from now, in seconds",
        (1, 3600),
        "0 refuses a webhook whose second ticks over on its way, and beyond an hour a signed URL is a long-lived credential",
    ),
    var("BRIDGE_LISTEN", Some("0.0.0.0:8080"), "address and port of the webhook listener (the webhook path only)"),
    var(
        "BRIDGE_ADMIN_LISTEN",
        Some("0.0.0.0:9464"),
        "address and port of the admin listener: /metrics, /healthz, /readyz and the status page (plain HTTP)",
    ),
    var("BRIDGE_WEBHOOK_PATH", Some("/webhook"), "path Tencent POSTs the webhook to"),
    var(
        "BRIDGE_COMMANDS",
        Some(DEFAULT_COMMANDS),
        "callback commands published, comma separated; every other command is answered OK (or relayed) and not published",
    ),
    var(
        "BRIDGE_RELAY_URL",
        None,
        "http(s) URL of the app's own callback handler: commands not published are relayed to it, query and body as sent",
    ),
    var(
        "BRIDGE_FORWARD_URL",
        None,
        "the old name of BRIDGE_RELAY_URL, still read; when both are set they must be the same",
    ),
    num(
        "BRIDGE_FORWARD_TIMEOUT_MS",
        Some("1500"),
        "how long a relayed command may take (under Tencent's 2 s) before the bridge answers OK itself",
        (1, 1999),
        "under Tencent's 2000 ms, leaving time to answer",
    ),
    var("BRIDGE_TLS_CERT", None, "PEM certificate chain: with BRIDGE_TLS_KEY, serve HTTPS instead of HTTP"),
    var("BRIDGE_TLS_KEY", None, "PEM private key of BRIDGE_TLS_CERT"),
    num(
        "BRIDGE_MAX_BODY_BYTES",
        Some("65536"),
        "largest webhook body accepted; larger ones get 413",
        (1, MAX_BODY_BYTES),
        "an event must fit one spool record (16 MiB) with room for its headers and the query's fields",
    ),
    var("BRIDGE_KAFKA_BROKERS", Some("127.0.0.1:9092"), "Kafka bootstrap servers, comma separated"),
    var("BRIDGE_TOPIC", Some("group-change"), "topic the events are published to"),
    var(
        "BRIDGE_DLQ_TOPIC",
        None,
        "dead-letter topic for events Kafka refuses for good (default <topic>.dlq)",
    ),
    var(
        "BRIDGE_DELIVERY",
        Some("spool"),
        "spool: answer once the event is on local disk; sync: answer once Kafka has it",
    ),
    num(
        "BRIDGE_SYNC_TIMEOUT_MS",
        Some("1500"),
        "sync delivery: how long to wait for Kafka before answering 503",
        (1, 1999),
        "Tencent stops waiting after 2000 ms: a later answer reaches no one",
    ),
    var(
        "BRIDGE_EXACTLY_ONCE",
        Some("false"),
        "true: publish the spool in Kafka transactions with its position inside them (each event once for read_committed consumers)",
    ),
    num(
        "BRIDGE_EOS_COMMIT_INTERVAL_MS",
        Some("25"),
        "exactly-once: a transaction is committed at most this long after its first event",
        (1, 10_000),
        "",
    ),
    num(
        "BRIDGE_EOS_COMMIT_RECORDS",
        Some("4096"),
        "exactly-once: a transaction holds at most this many events",
        (1, 1_000_000),
        "",
    ),
    num(
        "BRIDGE_EOS_TRANSACTION_TIMEOUT_SECS",
        Some("60"),
        "exactly-once: Kafka aborts a transaction left open this long (transaction.timeout.ms)",
        (1, 900),
        "Kafka refuses more than its transaction.max.timeout.ms, 15 min by default",
    ),
    var(
        "BRIDGE_POSITION_TOPIC",
        None,
        "exactly-once: compacted topic of the spool positions committed with the events (default <topic>.positions)",
    ),
    var("BRIDGE_SPOOL_DIR", Some("./spool"), "directory of the durable spool"),
    var("BRIDGE_SPOOL_FSYNC", Some("always"), "always | interval | never: when the spool is fsynced"),
    num(
        "BRIDGE_SPOOL_FSYNC_INTERVAL_MS",
        Some("50"),
        "fsync period with BRIDGE_SPOOL_FSYNC=interval",
        (1, 60_000),
        "power loss may lose this much; for longer, BRIDGE_SPOOL_FSYNC=never says what it means",
    ),
    num(
        "BRIDGE_SPOOL_MAX_BYTES",
        Some("1073741824"),
        "spool size at which webhooks get 503",
        (16_384, u64::MAX),
        "a smaller spool holds no more than a handful of webhooks",
    ),
    num(
        "BRIDGE_SHUTDOWN_GRACE_SECS",
        Some("10"),
        "on SIGTERM, how long to keep forwarding the spool to Kafka",
        (0, 3600),
        "",
    ),
    num(
        "BRIDGE_KAFKA_STALL_SECS",
        Some("60"),
        "a producer that confirms nothing for this long while Kafka answers is replaced",
        (1, 86_400),
        "",
    ),
    num(
        "BRIDGE_DRAIN_STALL_SECS",
        Some("120"),
        "tim-kafka-bridge drain: give up (exit 1) when Kafka took nothing for this long",
        (1, 86_400),
        "",
    ),
    var(
        "BRIDGE_TENCENT_API_URL",
        Some("https://console.tim.qq.com"),
        "snapshot: Tencent's REST API of your app's data centre (adminapisgp.im.qcloud.com, …; http:// accepted)",
    ),
    var("BRIDGE_TENCENT_ADMIN", Some("administrator"), "snapshot: the App admin account the REST calls are made as"),
    var(
        "BRIDGE_TENCENT_SECRET_KEY",
        None,
        "snapshot (required there): the app's secret key; with several apps, APPID:KEY pairs, comma separated",
    ),
    var(
        "BRIDGE_TENCENT_CUSTOM_FIELDS",
        None,
        "snapshot: the group custom field keys to read (comma list, as set up in Tencent's console; at most 10)",
    ),
    num(
        "BRIDGE_TENCENT_PAGE_SIZE",
        Some("10000"),
        "snapshot: group ids per get_appid_group_list page",
        (1, 10_000),
        "Tencent's limit",
    ),
    num(
        "BRIDGE_TENCENT_INFO_RATE",
        Some("100"),
        "snapshot: get_group_info calls per second (Tencent allows 200; 50 groups a call)",
        (1, 200),
        "Tencent's limit",
    ),
    num(
        "BRIDGE_TENCENT_TIMEOUT_MS",
        Some("10000"),
        "snapshot: per REST request (Tencent's backend gives up after 3000)",
        (3001, 60_000),
        "above 3000: Tencent's backend itself takes up to 3 s",
    ),
    num(
        "BRIDGE_TENCENT_MAX_ATTEMPTS",
        Some("8"),
        "snapshot: attempts per REST call on frequency limits, transient errors and timeouts",
        (1, 100),
        "",
    ),
    var("BRIDGE_LOG_FORMAT", Some("text"), "text | json"),
    num(
        "BRIDGE_READY_KAFKA_WINDOW_SECS",
        Some("10"),
        "/readyz fails when Kafka has not answered a metadata request for this long",
        (1, 3600),
        "",
    ),
    var(
        "BRIDGE_READY_SPOOL_HIGH_WATER",
        Some("0.9"),
        "/readyz fails when the spool is this full (fraction of BRIDGE_SPOOL_MAX_BYTES)",
    ),
    var(
        "BRIDGE_RDKAFKA_<PROPERTY>",
        None,
        "any librdkafka property: BRIDGE_RDKAFKA_SECURITY_PROTOCOL=SASL_SSL sets security.protocol",
    ),
    var("RUST_LOG", Some("info"), "log filter, e.g. info or tim_kafka_bridge=debug,rdkafka=warn"),
];

/// Every command the bridge can publish (`webhook::Command::ALL`, spelled out for the table above).
const DEFAULT_COMMANDS: &str = "Group.CallbackAfterCreateGroup,Group.CallbackAfterGroupInfoChanged,Group.CallbackAfterChangeGroupOwner,Group.CallbackAfterGroupDestroyed";

/// The largest `BRIDGE_MAX_BODY_BYTES`: half the largest spool record
/// ([`MAX_PAYLOAD`](crate::spool::record::MAX_PAYLOAD)), so that the event of a body this large, with
/// its headers and the fields it takes from the query string, always fits one record. (The event's
/// JSON strings are never longer than the body's: serde_json escapes only what the sender had to.)
const MAX_BODY_BYTES: u64 = (crate::spool::record::MAX_PAYLOAD / 2) as u64;

/// A variable that is missing or does not parse. Its text is the one line the process prints.
#[derive(Debug, thiserror::Error)]
#[error("{name}: {problem}")]
pub struct ConfigError {
    pub name: String,
    pub problem: String,
}

fn bad(name: &str, problem: impl Into<String>) -> ConfigError {
    ConfigError { name: name.to_owned(), problem: problem.into() }
}

/// When the webhook is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryMode {
    /// After the event is durable in the local spool (default).
    Spool,
    /// After Kafka acknowledged it, waiting at most the given time.
    Sync { timeout: Duration },
}

/// Spelled as `BRIDGE_DELIVERY` takes it, for the start line.
impl std::fmt::Display for DeliveryMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DeliveryMode::Spool => "spool",
            DeliveryMode::Sync { .. } => "sync",
        })
    }
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    /// The admin listener: metrics, health and the status page, apart from the internet-facing webhook.
    pub admin_listen: SocketAddr,
    pub webhook_path: String,
    /// HTTPS: certificate chain and key PEM files.
    pub tls: Option<TlsFiles>,
    pub app_ids: Vec<SdkAppId>,
    pub callback_token: Option<CallbackToken>,
    pub sign_max_skew_secs: u64,
    pub max_body_bytes: usize,
    /// The commands published (`BRIDGE_COMMANDS`), each once.
    pub commands: Vec<Command>,
    /// Where commands not published are relayed; `None`: they are answered OK by the bridge.
    pub relay: Option<RelaySettings>,
    /// What the producer is built from: brokers, topics and the `BRIDGE_RDKAFKA_*` overrides.
    pub kafka: KafkaSettings,
    pub delivery: DeliveryMode,
    /// `BRIDGE_EXACTLY_ONCE=true` and its settings; `None`: at least once.
    pub exactly_once: Option<ExactlyOnce>,
    pub spool_dir: PathBuf,
    pub spool_fsync: FsyncMode,
    pub spool_max_bytes: u64,
    pub shutdown_grace: Duration,
    /// `drain`: how long without progress before giving up.
    pub drain_stall: Duration,
    /// How long deliveries may go unconfirmed, while Kafka answers, before the producer is replaced.
    pub kafka_stall: Duration,
    pub log_format: LogFormat,
    pub ready_kafka_window: Duration,
    pub ready_spool_high_water: f64,
    /// `tim-kafka-bridge snapshot`: how to read Tencent's REST API.
    pub tencent: TencentSettings,
}

/// `BRIDGE_TENCENT_*`: the REST API a snapshot reads.
#[derive(Debug, Clone)]
pub struct TencentSettings {
    pub api_url: String,
    pub admin: String,
    /// Each app's secret key, in `BRIDGE_SDK_APP_ID`'s order (empty when unset: only `snapshot` needs
    /// them, and checks).
    pub secret_keys: Vec<(SdkAppId, SecretKey)>,
    pub custom_fields: Vec<String>,
    pub page_size: u32,
    pub info_rate: std::num::NonZeroU32,
    pub timeout: Duration,
    pub max_attempts: u32,
}

/// `BRIDGE_RELAY_URL` (or its old name `BRIDGE_FORWARD_URL`) and its deadline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelaySettings {
    pub url: String,
    pub timeout: Duration,
}

/// What envy reads: every known variable as text, so that parsing (and its error messages) stays here.
#[derive(Deserialize, Default)]
struct Raw {
    sdk_app_id: Option<String>,
    callback_token: Option<String>,
    sign_max_skew_secs: Option<String>,
    listen: Option<String>,
    admin_listen: Option<String>,
    webhook_path: Option<String>,
    commands: Option<String>,
    relay_url: Option<String>,
    /// The old name of `relay_url`.
    forward_url: Option<String>,
    forward_timeout_ms: Option<String>,
    tls_cert: Option<String>,
    tls_key: Option<String>,
    max_body_bytes: Option<String>,
    kafka_brokers: Option<String>,
    topic: Option<String>,
    dlq_topic: Option<String>,
    delivery: Option<String>,
    sync_timeout_ms: Option<String>,
    exactly_once: Option<String>,
    eos_commit_interval_ms: Option<String>,
    eos_commit_records: Option<String>,
    eos_transaction_timeout_secs: Option<String>,
    position_topic: Option<String>,
    spool_dir: Option<String>,
    spool_fsync: Option<String>,
    spool_fsync_interval_ms: Option<String>,
    spool_max_bytes: Option<String>,
    shutdown_grace_secs: Option<String>,
    drain_stall_secs: Option<String>,
    kafka_stall_secs: Option<String>,
    log_format: Option<String>,
    ready_kafka_window_secs: Option<String>,
    ready_spool_high_water: Option<String>,
    tencent_api_url: Option<String>,
    tencent_admin: Option<String>,
    tencent_secret_key: Option<String>,
    tencent_custom_fields: Option<String>,
    tencent_page_size: Option<String>,
    tencent_info_rate: Option<String>,
    tencent_timeout_ms: Option<String>,
    tencent_max_attempts: Option<String>,
}

impl Settings {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_vars(std::env::vars())
    }

    /// Reads the process environment for `tim-kafka-bridge drain`, which serves no webhook and so needs
    /// no `BRIDGE_SDK_APP_ID`.
    pub fn for_drain() -> Result<Self, ConfigError> {
        let mut vars: Vec<(String, String)> = std::env::vars().collect();
        if !vars.iter().any(|(k, v)| k == "BRIDGE_SDK_APP_ID" && !v.trim().is_empty()) {
            vars.push(("BRIDGE_SDK_APP_ID".to_owned(), "0".to_owned()));
        }
        Self::from_vars(vars)
    }

    /// Reads the given variables as if they were the environment (tests use this).
    pub fn from_vars(vars: impl IntoIterator<Item = (String, String)>) -> Result<Self, ConfigError> {
        let vars: Vec<(String, String)> = vars.into_iter().collect();
        let bridge = vars
            .iter()
            .filter_map(|(k, v)| Some((k.strip_prefix("BRIDGE_")?.to_owned(), v.clone())))
            .filter(|(k, _)| !k.starts_with("RDKAFKA_"));
        let raw: Raw = envy::from_iter(bridge).map_err(|e| bad("BRIDGE_*", e.to_string()))?;
        let rdkafka = RdkafkaOverrides(
            vars.iter()
                .filter_map(|(k, v)| {
                    let prop = k.strip_prefix(RDKAFKA_PREFIX)?;
                    Some((prop.to_ascii_lowercase().replace('_', "."), v.clone()))
                })
                .collect(),
        );
        Self::parse(raw, rdkafka)
    }

    fn parse(raw: Raw, rdkafka: RdkafkaOverrides) -> Result<Self, ConfigError> {
        let app_ids = {
            let name = "BRIDGE_SDK_APP_ID";
            let text = raw.sdk_app_id.clone().filter(|s| !s.trim().is_empty()).ok_or_else(|| {
                bad(name, "is required: the SdkAppid of your Tencent Cloud Chat app (e.g. 1400000000), or a comma list")
            })?;
            text.split(',')
                .map(|s| SdkAppId::parse(s.trim()).map_err(|e| bad(name, format!("{e}, got {s:?}"))))
                .collect::<Result<Vec<_>, _>>()?
        };
        let tencent = tencent(&raw, &app_ids)?;
        let topic = text("BRIDGE_TOPIC", raw.topic)?;
        let dlq_topic = match raw.dlq_topic {
            Some(t) => text("BRIDGE_DLQ_TOPIC", Some(t))?,
            None => format!("{topic}.dlq"),
        };
        let delivery = match choice("BRIDGE_DELIVERY", raw.delivery, &["spool", "sync"])? {
            "spool" => DeliveryMode::Spool,
            _ => DeliveryMode::Sync { timeout: millis("BRIDGE_SYNC_TIMEOUT_MS", raw.sync_timeout_ms)? },
        };
        // (Read and checked whether or not the mode is on: a value out of range is refused either way.)
        let eos = ExactlyOnce {
            commit_interval: millis("BRIDGE_EOS_COMMIT_INTERVAL_MS", raw.eos_commit_interval_ms)?,
            commit_records: whole("BRIDGE_EOS_COMMIT_RECORDS", raw.eos_commit_records)? as usize,
            transaction_timeout: secs(
                "BRIDGE_EOS_TRANSACTION_TIMEOUT_SECS",
                raw.eos_transaction_timeout_secs,
            )?,
            position_topic: match raw.position_topic {
                Some(t) => text("BRIDGE_POSITION_TOPIC", Some(t))?,
                None => format!("{topic}.positions"),
            },
        };
        let exactly_once = match choice("BRIDGE_EXACTLY_ONCE", raw.exactly_once, &["true", "false"])? {
            "true" => {
                if let DeliveryMode::Sync { .. } = delivery {
                    return Err(bad(
                        "BRIDGE_EXACTLY_ONCE",
                        "needs BRIDGE_DELIVERY=spool: sync delivery would commit one transaction per webhook",
                    ));
                }
                Some(eos)
            }
            _ => None,
        };
        if let Some(eos) = &exactly_once {
            if eos.commit_interval >= eos.transaction_timeout {
                return Err(bad(
                    "BRIDGE_EOS_COMMIT_INTERVAL_MS",
                    "must be shorter than BRIDGE_EOS_TRANSACTION_TIMEOUT_SECS: Kafka would abort every transaction",
                ));
            }
            for property in ["message.timeout.ms", "delivery.timeout.ms"] {
                if rdkafka.0.contains_key(property) {
                    return Err(bad(
                        &format!("{RDKAFKA_PREFIX}{}", property.replace('.', "_").to_ascii_uppercase()),
                        format!("{property} is refused with BRIDGE_EXACTLY_ONCE=true: a record's timeout is the transaction's (BRIDGE_EOS_TRANSACTION_TIMEOUT_SECS)"),
                    ));
                }
            }
        }
        let spool_fsync =
            match choice("BRIDGE_SPOOL_FSYNC", raw.spool_fsync, &["always", "interval", "never"])? {
                "always" => FsyncMode::Always,
                "interval" => FsyncMode::Interval(millis(
                    "BRIDGE_SPOOL_FSYNC_INTERVAL_MS",
                    raw.spool_fsync_interval_ms,
                )?),
                _ => FsyncMode::Never,
            };
        let webhook_path = text("BRIDGE_WEBHOOK_PATH", raw.webhook_path)?;
        if !webhook_path.starts_with('/') {
            return Err(bad("BRIDGE_WEBHOOK_PATH", format!("must start with '/', got {webhook_path:?}")));
        }
        let ready_spool_high_water: f64 =
            number("BRIDGE_READY_SPOOL_HIGH_WATER", raw.ready_spool_high_water)?;
        if !(ready_spool_high_water > 0.0 && ready_spool_high_water <= 1.0) {
            return Err(bad("BRIDGE_READY_SPOOL_HIGH_WATER", "must be a fraction in (0, 1]"));
        }
        let max_body_bytes = whole("BRIDGE_MAX_BODY_BYTES", raw.max_body_bytes)? as usize;
        let tls = match (raw.tls_cert.filter(|s| !s.is_empty()), raw.tls_key.filter(|s| !s.is_empty())) {
            (Some(cert), Some(key)) => Some(TlsFiles { cert: cert.into(), key: key.into() }),
            (None, None) => None,
            (Some(_), None) => return Err(bad("BRIDGE_TLS_KEY", "is required when BRIDGE_TLS_CERT is set")),
            (None, Some(_)) => return Err(bad("BRIDGE_TLS_CERT", "is required when BRIDGE_TLS_KEY is set")),
        };
        let expiry_allowed = matches!(delivery, DeliveryMode::Sync { .. });
        rdkafka.check(expiry_allowed).map_err(|e| bad(&e.variable, e.problem))?;
        let commands = commands(raw.commands)?;
        let relay = relay(raw.relay_url, raw.forward_url, raw.forward_timeout_ms)?;
        Ok(Self {
            listen: number("BRIDGE_LISTEN", raw.listen)?,
            admin_listen: number("BRIDGE_ADMIN_LISTEN", raw.admin_listen)?,
            webhook_path,
            tls,
            app_ids,
            callback_token: raw.callback_token.and_then(CallbackToken::new),
            sign_max_skew_secs: whole("BRIDGE_SIGN_MAX_SKEW_SECS", raw.sign_max_skew_secs)?,
            max_body_bytes,
            commands,
            relay,
            kafka: KafkaSettings {
                brokers: text("BRIDGE_KAFKA_BROKERS", raw.kafka_brokers)?,
                topic,
                dlq_topic,
                rdkafka,
            },
            delivery,
            exactly_once,
            spool_dir: PathBuf::from(text("BRIDGE_SPOOL_DIR", raw.spool_dir)?),
            spool_fsync,
            spool_max_bytes: whole("BRIDGE_SPOOL_MAX_BYTES", raw.spool_max_bytes)?,
            shutdown_grace: secs("BRIDGE_SHUTDOWN_GRACE_SECS", raw.shutdown_grace_secs)?,
            drain_stall: secs("BRIDGE_DRAIN_STALL_SECS", raw.drain_stall_secs)?,
            kafka_stall: secs("BRIDGE_KAFKA_STALL_SECS", raw.kafka_stall_secs)?,
            log_format: match choice("BRIDGE_LOG_FORMAT", raw.log_format, &["text", "json"])? {
                "json" => LogFormat::Json,
                _ => LogFormat::Text,
            },
            ready_kafka_window: secs("BRIDGE_READY_KAFKA_WINDOW_SECS", raw.ready_kafka_window_secs)?,
            ready_spool_high_water,
            tencent,
        })
    }

    /// Reads the process environment for `tim-kafka-bridge snapshot`, which needs the apps' secret
    /// keys.
    pub fn for_snapshot() -> Result<Self, ConfigError> {
        Self::from_vars(std::env::vars())?.require_secret_keys()
    }

    /// Fails unless every app has its secret key.
    pub fn require_secret_keys(self) -> Result<Self, ConfigError> {
        let name = "BRIDGE_TENCENT_SECRET_KEY";
        if self.tencent.secret_keys.is_empty() {
            return Err(bad(
                name,
                "is required by snapshot: the secret key of the app (Tencent's console, app configuration)",
            ));
        }
        Ok(self)
    }
}

fn tencent(raw: &Raw, app_ids: &[SdkAppId]) -> Result<TencentSettings, ConfigError> {
    let api_url =
        text("BRIDGE_TENCENT_API_URL", raw.tencent_api_url.clone())?.trim().trim_end_matches('/').to_owned();
    if !(api_url.starts_with("https://") || api_url.starts_with("http://")) {
        return Err(bad("BRIDGE_TENCENT_API_URL", format!("must be an http(s):// URL, got {api_url:?}")));
    }
    let secret_keys = match raw.tencent_secret_key.as_deref().map(str::trim).filter(|k| !k.is_empty()) {
        None => Vec::new(),
        Some(text) => secret_keys(text, app_ids)?,
    };
    let custom_fields: Vec<String> = raw
        .tencent_custom_fields
        .as_deref()
        .unwrap_or_default()
        .split(',')
        .map(|k| k.trim().to_owned())
        .filter(|k| !k.is_empty())
        .collect();
    if custom_fields.len() > 10 {
        return Err(bad("BRIDGE_TENCENT_CUSTOM_FIELDS", "Tencent allows at most 10 group custom fields"));
    }
    // Within their ranges, these fit a u32 (and the rate is not 0).
    let page_size = whole("BRIDGE_TENCENT_PAGE_SIZE", raw.tencent_page_size.clone())? as u32;
    let info_rate = whole("BRIDGE_TENCENT_INFO_RATE", raw.tencent_info_rate.clone())?;
    let info_rate = std::num::NonZeroU32::new(info_rate as u32).expect("at least 1");
    let timeout = millis("BRIDGE_TENCENT_TIMEOUT_MS", raw.tencent_timeout_ms.clone())?;
    let max_attempts = whole("BRIDGE_TENCENT_MAX_ATTEMPTS", raw.tencent_max_attempts.clone())? as u32;
    Ok(TencentSettings {
        api_url,
        admin: text("BRIDGE_TENCENT_ADMIN", raw.tencent_admin.clone())?.trim().to_owned(),
        secret_keys,
        custom_fields,
        page_size,
        info_rate,
        timeout,
        max_attempts,
    })
}

/// One key for a single app (bare, or `APPID:KEY`), else `APPID:KEY` pairs covering every app. The
/// key never appears in an error.
fn secret_keys(text: &str, app_ids: &[SdkAppId]) -> Result<Vec<(SdkAppId, SecretKey)>, ConfigError> {
    let name = "BRIDGE_TENCENT_SECRET_KEY";
    let pair = |item: &str| -> Option<(SdkAppId, SecretKey)> {
        let (app, key) = item.trim().split_once(':')?;
        Some((SdkAppId::parse(app.trim()).ok()?, SecretKey::new(key.trim())?))
    };
    if let ([app], false) = (app_ids, text.contains(':')) {
        let key = SecretKey::new(text).ok_or_else(|| bad(name, "must not be empty"))?;
        return Ok(vec![(app.clone(), key)]);
    }
    let mut pairs = Vec::new();
    for item in text.split(',') {
        let (app, key) = pair(item).ok_or_else(|| {
            bad(name, "with several apps (or a colon in it) must be APPID:KEY pairs, comma separated (value not shown)")
        })?;
        if !app_ids.contains(&app) {
            return Err(bad(
                name,
                format!("names app {} which BRIDGE_SDK_APP_ID does not list", app.as_str()),
            ));
        }
        pairs.push((app, key));
    }
    for app in app_ids {
        if !pairs.iter().any(|(a, _)| a == app) {
            return Err(bad(name, format!("has no key for app {}", app.as_str())));
        }
    }
    pairs.sort_by_key(|(a, _)| app_ids.iter().position(|x| x == a));
    Ok(pairs)
}

/// The variable's value, or its default from [`VARIABLES`].
fn value(name: &str, given: Option<String>) -> Result<String, ConfigError> {
    given
        .or_else(|| VARIABLES.iter().find(|v| v.name == name).and_then(|v| v.default).map(str::to_owned))
        .ok_or_else(|| bad(name, "is required"))
}

fn text(name: &str, given: Option<String>) -> Result<String, ConfigError> {
    let v = value(name, given)?;
    if v.trim().is_empty() {
        Err(bad(name, "must not be empty"))
    } else {
        Ok(v)
    }
}

fn number<T: std::str::FromStr>(name: &str, given: Option<String>) -> Result<T, ConfigError>
where
    T::Err: std::fmt::Display,
{
    let v = value(name, given)?;
    v.trim().parse().map_err(|e| bad(name, format!("{e}, got {v:?}")))
}

/// A whole number within the variable's [`Range`] in [`VARIABLES`]; outside it, one line naming the
/// variable, the range and why.
fn whole(name: &str, given: Option<String>) -> Result<u64, ConfigError> {
    let n: u64 = number(name, given)?;
    let range = VARIABLES
        .iter()
        .find(|v| v.name == name)
        .and_then(|v| v.range)
        .unwrap_or_else(|| panic!("{name} has a range in VARIABLES"));
    if (range.min..=range.max).contains(&n) {
        Ok(n)
    } else {
        let why = if range.why.is_empty() { String::new() } else { format!(" ({})", range.why) };
        Err(bad(name, format!("must be {range}, got {n}{why}")))
    }
}

fn millis(name: &str, given: Option<String>) -> Result<Duration, ConfigError> {
    whole(name, given).map(Duration::from_millis)
}

fn secs(name: &str, given: Option<String>) -> Result<Duration, ConfigError> {
    whole(name, given).map(Duration::from_secs)
}

fn choice(name: &str, given: Option<String>, options: &[&'static str]) -> Result<&'static str, ConfigError> {
    let v = value(name, given)?;
    let v = v.trim().to_ascii_lowercase();
    options
        .iter()
        .find(|o| **o == v)
        .copied()
        .ok_or_else(|| bad(name, format!("expected one of {}, got {v:?}", options.join(" | "))))
}

/// `BRIDGE_COMMANDS`: Tencent's command names, each one the bridge can publish.
fn commands(given: Option<String>) -> Result<Vec<Command>, ConfigError> {
    let name = "BRIDGE_COMMANDS";
    let text = text(name, given)?;
    let mut commands = Vec::new();
    for piece in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let command = Command::from_name(piece).ok_or_else(|| {
            let known: Vec<&str> = Command::ALL.iter().map(|c| c.name()).collect();
            bad(name, format!("{piece:?} is not a command the bridge publishes; known: {}", known.join(", ")))
        })?;
        if !commands.contains(&command) {
            commands.push(command);
        }
    }
    if commands.is_empty() {
        return Err(bad(name, "must name at least one command"));
    }
    Ok(commands)
}

/// `BRIDGE_RELAY_URL` (or its old name, `BRIDGE_FORWARD_URL`) and `BRIDGE_FORWARD_TIMEOUT_MS`; `None`
/// when neither name is set. Both set to different URLs is refused rather than one silently winning.
fn relay(
    relay_url: Option<String>,
    forward_url: Option<String>,
    timeout_ms: Option<String>,
) -> Result<Option<RelaySettings>, ConfigError> {
    let given = |v: Option<String>| v.map(|u| u.trim().to_owned()).filter(|u| !u.is_empty());
    let (name, url) = match (given(relay_url), given(forward_url)) {
        (None, None) => return Ok(None),
        (Some(relay), Some(forward)) if relay != forward => {
            return Err(bad(
                "BRIDGE_RELAY_URL",
                "and BRIDGE_FORWARD_URL (its old name) are both set, to different URLs: set BRIDGE_RELAY_URL only",
            ))
        }
        (Some(url), _) => ("BRIDGE_RELAY_URL", url),
        (None, Some(url)) => ("BRIDGE_FORWARD_URL", url),
    };
    let scheme_ok = ["http://", "https://"].iter().any(|s| url.len() > s.len() && url.starts_with(s));
    if !scheme_ok {
        return Err(bad(name, format!("must be an http:// or https:// URL, got {url:?}")));
    }
    let timeout = millis("BRIDGE_FORWARD_TIMEOUT_MS", timeout_ms)?;
    Ok(Some(RelaySettings { url, timeout }))
}

/// The text of `--help`.
pub fn help() -> String {
    let mut out = format!(
        "{name} {version}\n{desc}\n\nUsage: {name} [drain | snapshot | --help | --version]\n\n  (no argument)  serve webhooks and forward them to Kafka\n  drain          forward everything the spool holds to Kafka, serving no HTTP; exit 0 once it is empty\n  snapshot       read every group of each app from Tencent's REST API and publish its state; exit 0\n                 once Kafka has all of it (serves no HTTP, leaves the spool alone)\n\nEverything is configured through the environment:\n\n",
        name = env!("CARGO_PKG_NAME"),
        version = env!("CARGO_PKG_VERSION"),
        desc = env!("CARGO_PKG_DESCRIPTION"),
    );
    for v in VARIABLES {
        let default = v.default.map(|d| format!(" [default: {d}]")).unwrap_or_default();
        let range = v.range.map(|r| format!(" [{r}]")).unwrap_or_default();
        out.push_str(&format!("  {}\n      {}{}{}\n", v.name, v.meaning, default, range));
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// Like an environment: a later pair replaces an earlier one of the same name.
    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        let map: BTreeMap<String, String> =
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        map.into_iter().collect()
    }

    #[test]
    fn only_the_app_id_is_required_and_defaults_fill_the_rest() {
        let s = Settings::from_vars(vars(&[("BRIDGE_SDK_APP_ID", "1400000000")])).unwrap();
        assert_eq!(s.listen.to_string(), "0.0.0.0:8080");
        assert_eq!(s.admin_listen.to_string(), "0.0.0.0:9464");
        assert_eq!(s.webhook_path, "/webhook");
        assert_eq!(s.kafka.topic, "group-change");
        assert_eq!(s.kafka.dlq_topic, "group-change.dlq");
        assert_eq!(s.spool_fsync, FsyncMode::Always);
        assert_eq!(s.delivery, DeliveryMode::Spool);
        assert_eq!(s.max_body_bytes, 65536);
        assert!(s.callback_token.is_none());
        assert_eq!(s.commands, Command::ALL.to_vec());
        assert_eq!(s.relay, None);
    }

    #[test]
    fn exactly_once_is_off_by_default_and_on_takes_its_settings_and_refuses_what_would_void_it() {
        let off = Settings::from_vars(vars(&[("BRIDGE_SDK_APP_ID", "1")])).unwrap();
        assert_eq!(off.exactly_once, None);
        let on = Settings::from_vars(vars(&[("BRIDGE_SDK_APP_ID", "1"), ("BRIDGE_EXACTLY_ONCE", "true")]))
            .unwrap()
            .exactly_once
            .expect("on");
        assert_eq!(on.commit_interval, Duration::from_millis(25));
        assert_eq!(on.commit_records, 4096);
        assert_eq!(on.transaction_timeout, Duration::from_secs(60));
        assert_eq!(on.position_topic, "group-change.positions");
        for (extra, refusal) in [
            (
                ("BRIDGE_DELIVERY", "sync"),
                "BRIDGE_EXACTLY_ONCE: needs BRIDGE_DELIVERY=spool: sync delivery would commit one transaction per webhook",
            ),
            (
                ("BRIDGE_RDKAFKA_MESSAGE_TIMEOUT_MS", "0"),
                "BRIDGE_RDKAFKA_MESSAGE_TIMEOUT_MS: message.timeout.ms is refused with BRIDGE_EXACTLY_ONCE=true",
            ),
            (("BRIDGE_EOS_TRANSACTION_TIMEOUT_SECS", "901"), "BRIDGE_EOS_TRANSACTION_TIMEOUT_SECS: "),
            (("BRIDGE_EOS_COMMIT_INTERVAL_MS", "60000"), "BRIDGE_EOS_COMMIT_INTERVAL_MS: "),
            (("BRIDGE_EXACTLY_ONCE", "yes"), "BRIDGE_EXACTLY_ONCE: "),
        ] {
            let mut given = vec![("BRIDGE_SDK_APP_ID", "1"), ("BRIDGE_EXACTLY_ONCE", "true")];
            given.retain(|(k, _)| *k != extra.0);
            given.push(extra);
            let e = Settings::from_vars(vars(&given)).unwrap_err().to_string();
            assert!(e.starts_with(refusal), "{e}");
        }
        let named = Settings::from_vars(vars(&[
            ("BRIDGE_SDK_APP_ID", "1"),
            ("BRIDGE_EXACTLY_ONCE", "TRUE"),
            ("BRIDGE_POSITION_TOPIC", "positions"),
        ]))
        .unwrap();
        assert_eq!(named.exactly_once.unwrap().position_topic, "positions");
    }

    #[test]
    fn the_default_commands_are_every_command_the_bridge_publishes() {
        let named: Vec<&str> = DEFAULT_COMMANDS.split(',').collect();
        let all: Vec<&str> = Command::ALL.iter().map(|c| c.name()).collect();
        assert_eq!(named, all);
    }

    #[test]
    fn commands_are_a_comma_list_of_known_names_and_an_unknown_one_is_named() {
        let s = Settings::from_vars(vars(&[
            ("BRIDGE_SDK_APP_ID", "1"),
            ("BRIDGE_COMMANDS", " Group.CallbackAfterGroupDestroyed, Group.CallbackAfterGroupInfoChanged,"),
        ]))
        .unwrap();
        assert_eq!(s.commands, vec![Command::GroupDestroyed, Command::GroupInfoChanged]);
        for (value, expected) in [
            (
                "Group.CallbackAfterGroupInfoChanged,Group.CallbackAfterNewMemberJoin",
                "BRIDGE_COMMANDS: \"Group.CallbackAfterNewMemberJoin\" is not a command the bridge publishes; known: Group.CallbackAfterCreateGroup, ",
            ),
            (",", "BRIDGE_COMMANDS: must name at least one command"),
            ("", "BRIDGE_COMMANDS: must not be empty"),
        ] {
            let e = Settings::from_vars(vars(&[("BRIDGE_SDK_APP_ID", "1"), ("BRIDGE_COMMANDS", value)]))
                .unwrap_err();
            assert!(e.to_string().starts_with(expected), "{value:?}: {e}");
            assert_eq!(e.to_string().lines().count(), 1);
        }
    }

    #[test]
    fn a_relay_url_under_its_old_name_takes_a_deadline_under_tencents_two_seconds() {
        let s = Settings::from_vars(vars(&[
            ("BRIDGE_SDK_APP_ID", "1"),
            ("BRIDGE_FORWARD_URL", "http://app.internal/im/callback"),
        ]))
        .unwrap();
        assert_eq!(
            s.relay,
            Some(RelaySettings {
                url: "http://app.internal/im/callback".into(),
                timeout: Duration::from_millis(1500)
            })
        );
        for (name, value, expected) in [
            (
                "BRIDGE_FORWARD_URL",
                "app.internal/cb",
                "BRIDGE_FORWARD_URL: must be an http:// or https:// URL",
            ),
            (
                "BRIDGE_FORWARD_TIMEOUT_MS",
                "2000",
                "BRIDGE_FORWARD_TIMEOUT_MS: must be 1–1999, got 2000 (under Tencent's 2000 ms",
            ),
            ("BRIDGE_FORWARD_TIMEOUT_MS", "0", "BRIDGE_FORWARD_TIMEOUT_MS: must be 1–1999, got 0"),
        ] {
            let e = Settings::from_vars(vars(&[
                ("BRIDGE_SDK_APP_ID", "1"),
                ("BRIDGE_FORWARD_URL", "http://app.internal/cb"),
                (name, value),
            ]))
            .unwrap_err();
            assert!(e.to_string().starts_with(expected), "{name}={value}: {e}");
        }
    }

    #[test]
    fn the_relay_url_is_read_under_its_new_name_and_both_names_disagreeing_is_refused_naming_both() {
        let url = "http://app.internal/im/callback";
        let expected = Some(RelaySettings { url: url.into(), timeout: Duration::from_millis(1500) });
        for pairs in [
            &[("BRIDGE_RELAY_URL", url)][..],
            &[("BRIDGE_RELAY_URL", url), ("BRIDGE_FORWARD_URL", url)],
            &[("BRIDGE_RELAY_URL", url), ("BRIDGE_FORWARD_URL", "")],
            &[("BRIDGE_RELAY_URL", " "), ("BRIDGE_FORWARD_URL", url)],
        ] {
            let mut pairs = pairs.to_vec();
            pairs.push(("BRIDGE_SDK_APP_ID", "1"));
            assert_eq!(Settings::from_vars(vars(&pairs)).unwrap().relay, expected, "{pairs:?}");
        }
        let e =
            Settings::from_vars(vars(&[("BRIDGE_SDK_APP_ID", "1"), ("BRIDGE_RELAY_URL", "app.internal/cb")]))
                .unwrap_err();
        assert!(e.to_string().starts_with("BRIDGE_RELAY_URL: must be an http:// or https:// URL"), "{e}");
        let e = Settings::from_vars(vars(&[
            ("BRIDGE_SDK_APP_ID", "1"),
            ("BRIDGE_RELAY_URL", url),
            ("BRIDGE_FORWARD_URL", "http://old.internal/cb"),
        ]))
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("BRIDGE_RELAY_URL: ") && e.contains("BRIDGE_FORWARD_URL"), "{e}");
        assert_eq!(e.lines().count(), 1, "{e}");
    }

    #[test]
    fn a_missing_app_id_names_the_variable() {
        let e = Settings::from_vars(vars(&[])).unwrap_err();
        assert!(e.to_string().starts_with("BRIDGE_SDK_APP_ID: is required"), "{e}");
    }

    #[test]
    fn a_malformed_value_names_the_variable_and_what_it_expects() {
        let cases = [
            ("BRIDGE_LISTEN", "8080", "BRIDGE_LISTEN: invalid socket address"),
            (
                "BRIDGE_SPOOL_FSYNC",
                "sometimes",
                "BRIDGE_SPOOL_FSYNC: expected one of always | interval | never",
            ),
            ("BRIDGE_MAX_BODY_BYTES", "lots", "BRIDGE_MAX_BODY_BYTES: invalid digit"),
            ("BRIDGE_WEBHOOK_PATH", "hook", "BRIDGE_WEBHOOK_PATH: must start with '/'"),
            ("BRIDGE_SDK_APP_ID", "14x", "BRIDGE_SDK_APP_ID: an SdkAppid is 1 to 20 decimal digits"),
        ];
        for (name, value, expected) in cases {
            let e = Settings::from_vars(vars(&[("BRIDGE_SDK_APP_ID", "1"), (name, value)])).unwrap_err();
            assert!(e.to_string().starts_with(expected), "{name}={value}: {e}");
        }
    }

    #[test]
    fn rdkafka_properties_pass_through_and_secrets_stay_hidden() {
        let s = Settings::from_vars(vars(&[
            ("BRIDGE_SDK_APP_ID", "1,2"),
            ("BRIDGE_RDKAFKA_SECURITY_PROTOCOL", "SASL_SSL"),
            ("BRIDGE_RDKAFKA_SASL_PASSWORD", "hunter2"),
            ("BRIDGE_CALLBACK_TOKEN", "s3cret-token"),
        ]))
        .unwrap();
        assert_eq!(s.app_ids.len(), 2);
        assert_eq!(s.kafka.rdkafka.0.get("security.protocol").map(String::as_str), Some("SASL_SSL"));
        assert_eq!(s.kafka.rdkafka.0.get("sasl.password").map(String::as_str), Some("hunter2"));
        let debug = format!("{s:?}");
        assert!(!debug.contains("hunter2") && !debug.contains("s3cret-token"), "{debug}");
    }

    #[test]
    fn overrides_that_void_order_or_durability_are_refused_naming_the_variable() {
        let refused = [
            ("BRIDGE_RDKAFKA_ENABLE_IDEMPOTENCE", "false"),
            ("BRIDGE_RDKAFKA_ACKS", "1"),
            ("BRIDGE_RDKAFKA_REQUEST_REQUIRED_ACKS", "0"),
            ("BRIDGE_RDKAFKA_MAX_IN_FLIGHT_REQUESTS_PER_CONNECTION", "10"),
            ("BRIDGE_RDKAFKA_RETRIES", "3"),
            ("BRIDGE_RDKAFKA_ENABLE_GAPLESS_GUARANTEE", "true"),
            ("BRIDGE_RDKAFKA_MESSAGE_TIMEOUT_MS", "5000"),
            ("BRIDGE_RDKAFKA_DELIVERY_TIMEOUT_MS", "5000"),
            ("BRIDGE_RDKAFKA_PARTITIONER", "consistent_random"),
            ("BRIDGE_RDKAFKA_PARTITIONER", "murmur2"),
            ("BRIDGE_RDKAFKA_DELIVERY_REPORT_ONLY_ERROR", "true"),
            ("BRIDGE_RDKAFKA_TRANSACTIONAL_ID", "bridge-1"),
        ];
        for (name, value) in refused {
            let e = Settings::from_vars(vars(&[("BRIDGE_SDK_APP_ID", "1"), (name, value)])).unwrap_err();
            assert!(e.to_string().starts_with(&format!("{name}: ")), "{name}={value}: {e}");
            assert!(e.to_string().contains("refused"), "{e}");
        }
        let kept = [
            ("BRIDGE_RDKAFKA_ENABLE_IDEMPOTENCE", "true"),
            ("BRIDGE_RDKAFKA_ACKS", "all"),
            ("BRIDGE_RDKAFKA_MAX_IN_FLIGHT_REQUESTS_PER_CONNECTION", "5"),
            ("BRIDGE_RDKAFKA_MESSAGE_TIMEOUT_MS", "0"),
            ("BRIDGE_RDKAFKA_LINGER_MS", "20"),
            ("BRIDGE_RDKAFKA_PARTITIONER", "murmur2_random"),
            ("BRIDGE_RDKAFKA_DELIVERY_REPORT_ONLY_ERROR", "false"),
        ];
        for (name, value) in kept {
            assert!(
                Settings::from_vars(vars(&[("BRIDGE_SDK_APP_ID", "1"), (name, value)])).is_ok(),
                "{name}"
            );
        }
        // In sync mode the answer waits for Kafka, so a delivery timeout is the user's to choose.
        let sync = vars(&[
            ("BRIDGE_SDK_APP_ID", "1"),
            ("BRIDGE_DELIVERY", "sync"),
            ("BRIDGE_RDKAFKA_MESSAGE_TIMEOUT_MS", "5000"),
        ]);
        assert!(Settings::from_vars(sync).is_ok());
    }

    #[test]
    fn the_partitioner_delivery_reports_and_transactions_are_refused_each_with_why() {
        for (name, value, why) in [
            ("BRIDGE_RDKAFKA_PARTITIONER", "random", "murmur2_random"),
            ("BRIDGE_RDKAFKA_DELIVERY_REPORT_ONLY_ERROR", "true", "nothing is ever settled"),
            ("BRIDGE_RDKAFKA_TRANSACTIONAL_ID", "t", "names its transactions itself"),
        ] {
            for delivery in ["spool", "sync"] {
                let e = Settings::from_vars(vars(&[
                    ("BRIDGE_SDK_APP_ID", "1"),
                    ("BRIDGE_DELIVERY", delivery),
                    (name, value),
                ]))
                .unwrap_err()
                .to_string();
                assert!(e.starts_with(&format!("{name}: ")) && e.contains(why), "{delivery}: {e}");
                assert_eq!(e.lines().count(), 1, "{e}");
            }
        }
    }

    /// Each whole-number variable, a value below its range (when there is one), one above it (when
    /// there is one), and its two ends.
    #[test]
    fn every_whole_number_outside_its_range_is_refused_with_one_line_naming_it_and_its_ends_are_taken() {
        let ranged: Vec<&Variable> = VARIABLES.iter().filter(|v| v.range.is_some()).collect();
        assert_eq!(ranged.len(), 17, "a new whole-number variable: give it a test case here");
        for v in ranged {
            let r = v.range.unwrap();
            // With the settings that make every variable read (a relay, sync delivery, interval fsync).
            let with = |value: String| {
                let mut pairs = vec![
                    ("BRIDGE_SDK_APP_ID".to_owned(), "1".to_owned()),
                    ("BRIDGE_FORWARD_URL".to_owned(), "http://app.internal/cb".to_owned()),
                    ("BRIDGE_DELIVERY".to_owned(), "sync".to_owned()),
                    ("BRIDGE_SPOOL_FSYNC".to_owned(), "interval".to_owned()),
                ];
                pairs.push((v.name.to_owned(), value));
                Settings::from_vars(pairs)
            };
            for end in [r.min, r.max.min(1 << 40)] {
                assert!(with(end.to_string()).is_ok(), "{}={end}: {:?}", v.name, with(end.to_string()).err());
            }
            let outside = [r.min.checked_sub(1), r.max.checked_add(1)];
            for value in outside.into_iter().flatten() {
                let e = with(value.to_string()).unwrap_err().to_string();
                assert!(e.starts_with(&format!("{}: must be {r}, got {value}", v.name)), "{e}");
                assert_eq!(e.lines().count(), 1, "{e}");
            }
        }
        // Never clamped: 0 s of stall time is refused, not read as 1 s.
        let e = Settings::from_vars(vars(&[("BRIDGE_SDK_APP_ID", "1"), ("BRIDGE_KAFKA_STALL_SECS", "0")]))
            .unwrap_err();
        assert_eq!(e.to_string(), "BRIDGE_KAFKA_STALL_SECS: must be 1–86400, got 0");
        let e =
            Settings::from_vars(vars(&[("BRIDGE_SDK_APP_ID", "1"), ("BRIDGE_MAX_BODY_BYTES", "8388609")]))
                .unwrap_err();
        assert!(e.to_string().starts_with("BRIDGE_MAX_BODY_BYTES: must be 1–8388608, got 8388609 ("), "{e}");
    }

    /// The README's configuration table gives each whole-number variable the range the bridge checks.
    #[test]
    fn the_readme_gives_each_range_the_bridge_checks() {
        let readme = include_str!("../README.md");
        for v in VARIABLES.iter().filter(|v| v.range.is_some()) {
            let row = readme
                .lines()
                .find(|l| l.starts_with(&format!("| `{}` |", v.name)))
                .unwrap_or_else(|| panic!("the README's table has no row for {}", v.name));
            let range = v.range.unwrap().to_string();
            assert!(row.contains(&range), "the README's row for {} does not say {range}: {row}", v.name);
        }
    }

    #[test]
    fn settings_display_as_the_variables_spell_them() {
        assert_eq!(FsyncMode::Always.to_string(), "always");
        assert_eq!(FsyncMode::Interval(Duration::from_millis(5)).to_string(), "interval");
        assert_eq!(DeliveryMode::Sync { timeout: Duration::from_secs(1) }.to_string(), "sync");
        assert_eq!(DeliveryMode::Spool.to_string(), "spool");
    }

    #[test]
    fn modes_are_spelled_as_the_variables_take_them() {
        let s = Settings::from_vars(vars(&[
            ("BRIDGE_SDK_APP_ID", "1"),
            ("BRIDGE_SPOOL_FSYNC", "Interval"),
            ("BRIDGE_DELIVERY", "SYNC"),
        ]))
        .unwrap();
        assert_eq!(
            format!("delivery={} fsync={}", s.delivery, s.spool_fsync),
            "delivery=sync fsync=interval"
        );
        let d = Settings::from_vars(vars(&[("BRIDGE_SDK_APP_ID", "1")])).unwrap();
        assert_eq!(format!("delivery={} fsync={}", d.delivery, d.spool_fsync), "delivery=spool fsync=always");
    }

    #[test]
    fn help_lists_every_variable_with_its_default() {
        let h = help();
        for v in VARIABLES {
            assert!(h.contains(v.name), "{}", v.name);
            if let Some(d) = v.default {
                assert!(h.contains(&format!("[default: {d}]")), "{}", v.name);
            }
        }
    }
}
