//! The REST client: two read-only APIs, their documented limits, and what each error code calls for.
//!
//! Every call goes through one function ([`RestClient::call`]) that waits for its API's limiter, signs
//! the URL, reads Tencent's envelope and decides by [`Class`] what to do with a non-zero `ErrorCode`:
//! wait and retry (frequency limits, transient failures, timeouts, 5xx), sign anew once (an expired
//! or invalidated UserSig), or stop with the code and Tencent's words. Both APIs only read, so a retry
//! can never do anything twice.

use std::hash::{BuildHasher, Hasher};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::usersig::{self, SecretKey};

/// `get_group_info` takes at most this many ids a call (documented).
pub const MAX_IDS_PER_INFO_CALL: usize = 50;
/// `get_appid_group_list` returns at most this many ids a page (documented).
pub const MAX_PAGE_SIZE: u32 = 10_000;
/// A UserSig is asked for this long (Tencent advises at least a day)...
const USERSIG_LIFETIME_SECS: i64 = 86_400;
/// ...and replaced this long before it runs out, so that no call carries one about to expire.
const USERSIG_RENEW_BEFORE_SECS: i64 = 3_600;
/// The first wait after a frequency-limit answer; doubled each time, up to [`MAX_BACKOFF`].
const FREQUENCY_BACKOFF: Duration = Duration::from_secs(1);
/// The first wait after a transient failure; doubled each time, up to [`MAX_BACKOFF`].
const TRANSIENT_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The two APIs a snapshot calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    GroupList,
    GroupInfo,
}

impl Api {
    pub fn path(self) -> &'static str {
        match self {
            Api::GroupList => "group_open_http_svc/get_appid_group_list",
            Api::GroupInfo => "group_open_http_svc/get_group_info",
        }
    }
}

impl std::fmt::Display for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.path().rsplit('/').next().unwrap_or_default())
    }
}

/// What an `ErrorCode` calls for (the REST API notes, §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// 0.
    Ok,
    /// A frequency limit (60007, 60011, 60018, 60019, 10006): wait longer, then retry.
    Frequency,
    /// A transient failure (10002, 60008, 70169): retry soon.
    Transient,
    /// The UserSig expired or was invalidated (70001, 70052): sign anew, then retry.
    Resign,
    /// Anything else: a configuration error or a bug; retrying would not help.
    Final,
}

impl Class {
    pub fn of(code: i64) -> Self {
        match code {
            0 => Class::Ok,
            60007 | 60011 | 60018 | 60019 | 10006 => Class::Frequency,
            10002 | 60008 | 70169 => Class::Transient,
            70001 | 70052 => Class::Resign,
            _ => Class::Final,
        }
    }
}

/// Why a call failed for good.
#[derive(Debug, thiserror::Error)]
pub enum RestError {
    #[error("Tencent refused {api} with ErrorCode {code}: {info}{hint}", hint = hint(*code))]
    Refused { api: Api, code: i64, info: String },
    #[error("{api} still failing after {attempts} attempts, the last: {last}")]
    GaveUp { api: Api, attempts: u32, last: String },
    #[error("{api} answered what is not Tencent's JSON envelope: {detail}")]
    Malformed { api: Api, detail: String },
}

impl RestError {
    /// The ErrorCode Tencent gave, when it gave one.
    pub fn code(&self) -> Option<i64> {
        match self {
            RestError::Refused { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// What an operator most likely has to fix for a final code.
fn hint(code: i64) -> &'static str {
    match code {
        60006 | 60012 | 70016 | 70020 => {
            " (unknown SDKAppID here: check BRIDGE_SDK_APP_ID and BRIDGE_TENCENT_API_URL's data centre)"
        }
        70001..=70099 | 60004 | 60005 => {
            " (the UserSig was refused: check BRIDGE_TENCENT_SECRET_KEY and BRIDGE_TENCENT_ADMIN for this app)"
        }
        60010 | 10007 => " (BRIDGE_TENCENT_ADMIN must be an App admin account)",
        _ => "",
    }
}

/// How the client reaches one app.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    /// `https://console.tim.qq.com` or a regional domain (or `http://` for a local stand-in).
    pub base_url: String,
    pub sdk_app_id: u64,
    /// The App admin account the calls are made as.
    pub admin: String,
    pub key: SecretKey,
    /// Per request; above Tencent's own 3 s.
    pub timeout: Duration,
    /// `get_appid_group_list` calls per second (documented: 1).
    pub list_rate: NonZeroU32,
    /// `get_group_info` calls per second (documented: 200).
    pub info_rate: NonZeroU32,
    /// Attempts per call before giving up on retriable failures.
    pub max_attempts: u32,
}

/// One page of the group list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupPage {
    /// `TotalCount`: all groups of the app, whatever the page.
    pub total: u64,
    pub ids: Vec<String>,
    /// The cursor of the next page; 0 (or absent): this was the last.
    pub next: u64,
}

/// A group's profile as `get_group_info` returns it (the fields a snapshot keeps).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct GroupInfo {
    #[serde(rename = "GroupId")]
    pub group_id: String,
    #[serde(rename = "ErrorCode")]
    pub error_code: i64,
    #[serde(rename = "ErrorInfo")]
    pub error_info: String,
    #[serde(rename = "Type")]
    pub group_type: Option<String>,
    #[serde(rename = "Name")]
    pub name: Option<String>,
    #[serde(rename = "Introduction")]
    pub introduction: Option<String>,
    #[serde(rename = "Notification")]
    pub notification: Option<String>,
    #[serde(rename = "FaceUrl")]
    pub face_url: Option<String>,
    #[serde(rename = "Owner_Account")]
    pub owner_account: Option<String>,
    #[serde(rename = "CreateTime")]
    pub create_time: Option<i64>,
    #[serde(rename = "InfoSeq")]
    pub info_seq: Option<u64>,
    #[serde(rename = "LastInfoTime")]
    pub last_info_time: Option<i64>,
    #[serde(rename = "MemberNum")]
    pub member_num: Option<u64>,
    #[serde(rename = "MaxMemberNum")]
    pub max_member_num: Option<u64>,
    #[serde(rename = "AppDefinedData")]
    pub app_defined_data: Vec<KeyValue>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default)]
pub struct KeyValue {
    #[serde(rename = "Key")]
    pub key: String,
    #[serde(rename = "Value")]
    pub value: String,
}

/// One group of a `get_group_info` answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    Found(Box<GroupInfo>),
    /// 10010: the group does not exist (any more).
    Gone(String),
}

/// The answer to one `get_group_info` call, and when the request that read it was sent: the profiles
/// reflect every change made before then (see docs/directory.md, "Snapshots").
#[derive(Debug, Clone)]
pub struct InfoBatch {
    pub sent_at_ms: i64,
    pub groups: Vec<Lookup>,
}

/// The envelope every answer has; missing fields default (Tencent's samples leave some out).
#[derive(Deserialize)]
struct Envelope<T> {
    #[serde(rename = "ActionStatus", default)]
    _action_status: String,
    #[serde(rename = "ErrorCode", default)]
    error_code: i64,
    #[serde(rename = "ErrorInfo", default)]
    error_info: String,
    #[serde(flatten)]
    body: T,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ListBody {
    #[serde(rename = "TotalCount")]
    total_count: u64,
    #[serde(rename = "GroupIdList")]
    group_id_list: Vec<GroupIdEntry>,
    #[serde(rename = "Next")]
    next: u64,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct GroupIdEntry {
    #[serde(rename = "GroupId")]
    group_id: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct InfoBody {
    #[serde(rename = "GroupInfo")]
    group_info: Vec<GroupInfo>,
}

/// The base profile fields a snapshot asks for (`ResponseFilter.GroupBaseInfoFilter`): with a filter,
/// Tencent leaves out the member list, which can make an answer larger than its 1 MB limit.
const BASE_INFO: [&str; 11] = [
    "Type",
    "Name",
    "Introduction",
    "Notification",
    "FaceUrl",
    "Owner_Account",
    "CreateTime",
    "InfoSeq",
    "LastInfoTime",
    "MemberNum",
    "MaxMemberNum",
];

/// A client of one app's REST API.
pub struct RestClient {
    http: reqwest::Client,
    settings: ClientSettings,
    /// The UserSig in use and the Unix second after which it is renewed.
    usersig: Mutex<Option<(String, i64)>>,
    list_limiter: DefaultDirectRateLimiter,
    info_limiter: DefaultDirectRateLimiter,
    /// Feeds `random`: a per-process random seed mixed with a counter.
    nonce: AtomicU64,
    seed: std::collections::hash_map::RandomState,
}

impl RestClient {
    pub fn new(settings: ClientSettings) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout.min(Duration::from_secs(5)))
            .pool_idle_timeout(Duration::from_secs(50))
            .build()?;
        Ok(Self {
            http,
            list_limiter: RateLimiter::direct(Quota::per_second(settings.list_rate)),
            info_limiter: RateLimiter::direct(Quota::per_second(settings.info_rate)),
            settings,
            usersig: Mutex::new(None),
            nonce: AtomicU64::new(0),
            seed: Default::default(),
        })
    }

    pub fn sdk_app_id(&self) -> u64 {
        self.settings.sdk_app_id
    }

    /// One page of the app's group ids, from cursor `next` (0 for the first page).
    pub async fn list_groups(&self, next: u64, limit: u32) -> Result<GroupPage, RestError> {
        let body = serde_json::json!({"Limit": limit.min(MAX_PAGE_SIZE), "Next": next});
        let (_, page) = self
            .call::<ListBody>(Api::GroupList, &body, |e| match e.error_code {
                0 => None,
                code => Some((code, e.error_info.clone())),
            })
            .await?;
        Ok(GroupPage {
            total: page.total_count,
            ids: page.group_id_list.into_iter().map(|g| g.group_id).filter(|g| !g.is_empty()).collect(),
            next: page.next,
        })
    }

    /// The profiles of `ids` (at most [`MAX_IDS_PER_INFO_CALL`]), with the custom group fields
    /// `custom_keys`. A group that does not exist comes back [`Lookup::Gone`]; any other per-group
    /// error fails the call (retried when it is transient).
    pub async fn group_info(&self, ids: &[String], custom_keys: &[String]) -> Result<InfoBatch, RestError> {
        assert!(ids.len() <= MAX_IDS_PER_INFO_CALL, "at most {MAX_IDS_PER_INFO_CALL} ids per call");
        let mut filter = serde_json::json!({"GroupBaseInfoFilter": BASE_INFO});
        if !custom_keys.is_empty() {
            filter["AppDefinedDataFilter_Group"] = serde_json::json!(custom_keys);
        }
        let body = serde_json::json!({"GroupIdList": ids, "ResponseFilter": filter});
        // The top-level ErrorCode of this API "is meaningless" once groups are listed: each group has
        // its own. Without a list (a frequency limit, a bad UserSig) the top level is the answer.
        let (sent_at_ms, info) = self
            .call::<InfoBody>(Api::GroupInfo, &body, |e| {
                if e.body.group_info.is_empty() {
                    return (e.error_code != 0).then(|| (e.error_code, e.error_info.clone()));
                }
                e.body
                    .group_info
                    .iter()
                    .find(|g| g.error_code != 0 && g.error_code != 10010)
                    .map(|g| (g.error_code, format!("group {}: {}", g.group_id, g.error_info)))
            })
            .await?;
        let groups = info
            .group_info
            .into_iter()
            .map(|g| match g.error_code {
                10010 => Lookup::Gone(g.group_id),
                _ => Lookup::Found(Box::new(g)),
            })
            .collect();
        Ok(InfoBatch { sent_at_ms, groups })
    }

    /// Calls `api` with `body` until it succeeds or fails for good. `failure` reads an answer's error
    /// code (and words), `None` for success. Returns when the successful request was sent, and its
    /// body.
    async fn call<T: DeserializeOwned + Default>(
        &self,
        api: Api,
        body: &serde_json::Value,
        failure: impl Fn(&Envelope<T>) -> Option<(i64, String)>,
    ) -> Result<(i64, T), RestError> {
        let limiter = match api {
            Api::GroupList => &self.list_limiter,
            Api::GroupInfo => &self.info_limiter,
        };
        let mut resigned = false;
        let mut attempt = 0;
        loop {
            attempt += 1;
            limiter.until_ready().await;
            let url = format!(
                "{}/v4/{}?sdkappid={}&identifier={}&usersig={}&random={}&contenttype=json",
                self.settings.base_url.trim_end_matches('/'),
                api.path(),
                self.settings.sdk_app_id,
                self.settings.admin,
                self.usersig(),
                self.random(),
            );
            let sent_at_ms = crate::now_ms();
            let (class, what) = match self.http.post(&url).json(body).send().await {
                Err(e) => (Class::Transient, format!("request failed: {}", e.without_url())),
                Ok(r) if r.status().is_server_error() || r.status().as_u16() == 429 => {
                    let class = match r.status().as_u16() {
                        429 => Class::Frequency,
                        _ => Class::Transient,
                    };
                    (class, format!("HTTP {}", r.status()))
                }
                Ok(r) => match r.bytes().await {
                    Err(e) => (Class::Transient, format!("reading the answer failed: {}", e.without_url())),
                    Ok(bytes) => match serde_json::from_slice::<Envelope<T>>(&bytes) {
                        Err(e) => {
                            return Err(RestError::Malformed { api, detail: e.to_string() });
                        }
                        Ok(envelope) => match failure(&envelope) {
                            None => return Ok((sent_at_ms, envelope.body)),
                            Some((code, info)) => match Class::of(code) {
                                Class::Ok => return Ok((sent_at_ms, envelope.body)),
                                Class::Final => return Err(RestError::Refused { api, code, info }),
                                Class::Resign if resigned => {
                                    return Err(RestError::Refused { api, code, info });
                                }
                                Class::Resign => {
                                    tracing::info!(%api, code, "UserSig refused as expired: signing anew");
                                    resigned = true;
                                    self.usersig.lock().unwrap_or_else(|e| e.into_inner()).take();
                                    attempt -= 1;
                                    continue;
                                }
                                class => (class, format!("ErrorCode {code}: {info}")),
                            },
                        },
                    },
                },
            };
            if attempt >= self.settings.max_attempts {
                return Err(RestError::GaveUp { api, attempts: attempt, last: what });
            }
            let first = match class {
                Class::Frequency => FREQUENCY_BACKOFF,
                _ => TRANSIENT_BACKOFF,
            };
            let wait = first.saturating_mul(1 << (attempt - 1).min(16)).min(MAX_BACKOFF);
            tracing::debug!(%api, attempt, ?wait, problem = %what, "retrying");
            tokio::time::sleep(wait).await;
        }
    }

    /// The UserSig to send: the current one, or a new one when there is none or it is due for renewal.
    fn usersig(&self) -> String {
        let now = crate::now_ms() / 1000;
        let mut current = self.usersig.lock().unwrap_or_else(|e| e.into_inner());
        match current.as_ref() {
            Some((sig, renew_at)) if now < *renew_at => sig.clone(),
            _ => {
                let s = &self.settings;
                let sig = usersig::generate(&s.key, &s.admin, s.sdk_app_id, now, USERSIG_LIFETIME_SECS);
                *current = Some((sig.clone(), now + USERSIG_LIFETIME_SECS - USERSIG_RENEW_BEFORE_SECS));
                sig
            }
        }
    }

    /// A random 32-bit unsigned integer for `random` (Tencent uses it to tell requests apart).
    fn random(&self) -> u32 {
        let mut h = self.seed.build_hasher();
        h.write_u64(self.nonce.fetch_add(1, Ordering::Relaxed));
        h.finish() as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_documented_code_has_its_class() {
        for code in [60007, 60011, 60018, 60019, 10006] {
            assert_eq!(Class::of(code), Class::Frequency, "{code}");
        }
        for code in [10002, 60008, 70169] {
            assert_eq!(Class::of(code), Class::Transient, "{code}");
        }
        for code in [70001, 70052] {
            assert_eq!(Class::of(code), Class::Resign, "{code}");
        }
        for code in [70003, 70009, 60010, 10004, 10007, 10015, 10018, 60006] {
            assert_eq!(Class::of(code), Class::Final, "{code}");
        }
    }

    #[test]
    fn a_next_above_two_to_the_thirty_second_reads_as_u64_and_missing_fields_default() {
        let e: Envelope<ListBody> = serde_json::from_str(
            r#"{"ActionStatus":"OK","ErrorCode":0,"TotalCount":2,"GroupIdList":[{"GroupId":"a"}],"Next":4454685361}"#,
        )
        .unwrap();
        assert_eq!((e.body.next, e.body.total_count, e.body.group_id_list.len()), (4454685361, 2, 1));
        let bare: Envelope<ListBody> = serde_json::from_str(r#"{"ActionStatus":"OK"}"#).unwrap();
        assert_eq!((bare.error_code, bare.body.next), (0, 0));
    }

    #[test]
    fn a_refusal_of_the_usersig_names_what_to_check_and_never_the_key() {
        let e = RestError::Refused { api: Api::GroupList, code: 70003, info: "sig invalid".into() };
        let text = e.to_string();
        assert!(text.contains("70003") && text.contains("BRIDGE_TENCENT_SECRET_KEY"), "{text}");
        assert!(text.contains("get_appid_group_list"), "{text}");
    }
}
