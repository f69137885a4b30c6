//! Newtypes for the identifiers and instants an event carries.

use serde::{Deserialize, Serialize};

/// A value that does not fit its type; the message says what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidValue(&'static str);

/// The id of the group whose profile changed, e.g. `@TGS#2J4SZEAEL`. Never empty, and at most
/// [`MAX_BYTES`](Self::MAX_BYTES) long. Its bytes are the Kafka key, so every change of one group lands
/// on one partition, in order.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct GroupId(String);

impl GroupId {
    /// The longest GroupId taken, in bytes of UTF-8. Tencent's custom group ids are at most 48 bytes
    /// and the ids it generates (`@TGS#2J4SZEAEL`) shorter; 64 leaves room for an id a little longer
    /// than documented, since a webhook refused for it is lost (Tencent does not retry). It bounds the
    /// record's key and `ce_subject` header far below their 64 KiB length prefixes in the spool.
    pub const MAX_BYTES: usize = 64;

    pub fn parse(s: String) -> Result<Self, InvalidValue> {
        if s.is_empty() {
            Err(InvalidValue("a GroupId is a non-empty string"))
        } else if s.len() > Self::MAX_BYTES {
            Err(InvalidValue("a GroupId is at most 64 bytes"))
        } else {
            Ok(Self(s))
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for GroupId {
    type Error = InvalidValue;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(s)
    }
}

impl From<GroupId> for String {
    fn from(g: GroupId) -> String {
        g.0
    }
}

/// A Tencent Cloud Chat user (a UserID such as `leckie`), where an event cannot mean anything without
/// one: the new owner of a group. Never empty.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct UserId(String);

impl UserId {
    pub fn parse(s: String) -> Result<Self, InvalidValue> {
        if s.is_empty() {
            Err(InvalidValue("a UserID is a non-empty string"))
        } else {
            Ok(Self(s))
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for UserId {
    type Error = InvalidValue;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(s)
    }
}

impl From<UserId> for String {
    fn from(u: UserId) -> String {
        u.0
    }
}

/// A Tencent Cloud Chat application id (SDKAppID): decimal digits, e.g. `1400000000`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SdkAppId(String);

impl SdkAppId {
    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
            Err(InvalidValue("an SdkAppid is 1 to 20 decimal digits"))
        } else {
            Ok(Self(s.to_owned()))
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for SdkAppId {
    type Error = InvalidValue;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<SdkAppId> for String {
    fn from(a: SdkAppId) -> String {
        a.0
    }
}

/// When the change happened, in milliseconds since the Unix epoch, from the webhook's `EventTime`.
/// Bounded to years 1970..=9999 so it is always a valid Kafka timestamp and RFC 3339 instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "i64")]
pub struct EventTime(i64);

impl EventTime {
    /// 9999-12-31T23:59:59.999Z.
    pub const MAX_MILLIS: i64 = 253_402_300_799_999;

    pub fn from_millis(ms: i64) -> Result<Self, InvalidValue> {
        if (0..=Self::MAX_MILLIS).contains(&ms) {
            Ok(Self(ms))
        } else {
            Err(InvalidValue("an EventTime is milliseconds between 1970 and 9999"))
        }
    }
    pub fn as_millis(self) -> i64 {
        self.0
    }
    /// RFC 3339 with milliseconds, UTC: the CloudEvents `time` attribute.
    pub fn rfc3339(self) -> String {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(self.0 as u64);
        humantime::format_rfc3339_millis(t).to_string()
    }
}

impl TryFrom<i64> for EventTime {
    type Error = InvalidValue;
    fn try_from(ms: i64) -> Result<Self, Self::Error> {
        Self::from_millis(ms)
    }
}

impl From<EventTime> for i64 {
    fn from(t: EventTime) -> i64 {
        t.0
    }
}

/// The event's identity: 32 lower-case hex digits, the first 128 bits of a SHA-256 over the webhook's
/// content (app, group, type, operator, changes, EventTime) and never over when or from where it was
/// received. The same webhook delivered twice gets the same id, so consumers can drop duplicates.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct EventId(String);

impl EventId {
    pub(super) fn from_digest(digest: &[u8]) -> Self {
        Self(hex::encode(&digest[..16]))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Builds an [`EventId`]: SHA-256 over the Tencent command and each content field, length-prefixed
/// and presence-tagged so that no two different webhooks can encode to the same bytes. The command
/// comes first, so two commands with equal fields never share an id.
pub(super) struct ContentHash(sha2::Sha256);

impl ContentHash {
    pub fn new(command: &str) -> Self {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update(command.as_bytes());
        h.update([0u8]);
        Self(h)
    }

    /// A text field, present or absent.
    pub fn field(&mut self, v: Option<&str>) -> &mut Self {
        use sha2::Digest;
        match v {
            None => self.0.update([0u8]),
            Some(s) => {
                self.0.update([1u8]);
                self.0.update((s.len() as u64).to_le_bytes());
                self.0.update(s.as_bytes());
            }
        }
        self
    }

    /// A count, present or absent.
    pub fn count(&mut self, n: Option<u64>) -> &mut Self {
        use sha2::Digest;
        match n {
            None => self.0.update([0u8]),
            Some(n) => {
                self.0.update([1u8]);
                self.0.update(n.to_le_bytes());
            }
        }
        self
    }

    pub fn finish(self, time: EventTime) -> EventId {
        use sha2::Digest;
        let mut h = self.0;
        h.update(time.as_millis().to_le_bytes());
        EventId::from_digest(&h.finalize())
    }
}

impl TryFrom<String> for EventId {
    type Error = InvalidValue;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        if s.len() == 32 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            Ok(Self(s))
        } else {
            Err(InvalidValue("an event_id is 32 lower-case hex digits"))
        }
    }
}

impl From<EventId> for String {
    fn from(e: EventId) -> String {
        e.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_group_id_cannot_exist() {
        assert!(GroupId::parse(String::new()).is_err());
        assert_eq!(GroupId::parse("@TGS#2J4SZEAEL".into()).unwrap().as_str(), "@TGS#2J4SZEAEL");
    }

    #[test]
    fn a_group_id_longer_than_64_bytes_cannot_exist() {
        assert!(GroupId::parse("g".repeat(64)).is_ok());
        assert!(GroupId::parse("g".repeat(65)).is_err());
        // Bytes, not characters: 22 three-byte characters are 66 bytes.
        assert!(GroupId::parse("长".repeat(21)).is_ok());
        assert!(GroupId::parse("长".repeat(22)).is_err());
        assert!(serde_json::from_str::<GroupId>(&format!("\"{}\"", "g".repeat(65))).is_err());
    }

    #[test]
    fn an_sdk_app_id_is_digits_only() {
        assert!(SdkAppId::parse("1400000000").is_ok());
        for bad in ["", "14x", " 1", "123456789012345678901"] {
            assert!(SdkAppId::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn event_time_formats_as_rfc3339_and_rejects_what_cannot() {
        assert_eq!(EventTime::from_millis(1670574414123).unwrap().rfc3339(), "2022-12-09T08:26:54.123Z");
        assert_eq!(
            EventTime::from_millis(EventTime::MAX_MILLIS).unwrap().rfc3339(),
            "9999-12-31T23:59:59.999Z"
        );
        assert!(EventTime::from_millis(-1).is_err());
        assert!(EventTime::from_millis(EventTime::MAX_MILLIS + 1).is_err());
    }
}
