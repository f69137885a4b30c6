//! The JSON body of `Group.CallbackAfterGroupInfoChanged`.
//!
//! Fields are first captured as raw JSON slices so that a field of the wrong type is refused with its
//! own name ("Name must be a string") rather than serde's column number. Unknown fields are skipped
//! (Tencent adds fields over time); a field given twice is refused, since which value was meant is
//! unknowable.

use serde::Deserialize;
use serde_json::value::RawValue;

use super::Refusal;
use crate::domain::{Changes, EventTime, GroupId};

#[derive(Deserialize)]
struct Raw<'a> {
    #[serde(rename = "CallbackCommand", borrow, default)]
    callback_command: Option<&'a RawValue>,
    #[serde(rename = "GroupId", borrow, default)]
    group_id: Option<&'a RawValue>,
    #[serde(rename = "Type", borrow, default)]
    group_type: Option<&'a RawValue>,
    #[serde(rename = "Operator_Account", borrow, default)]
    operator_account: Option<&'a RawValue>,
    #[serde(rename = "Name", borrow, default)]
    name: Option<&'a RawValue>,
    #[serde(rename = "Introduction", borrow, default)]
    introduction: Option<&'a RawValue>,
    #[serde(rename = "Notification", borrow, default)]
    notification: Option<&'a RawValue>,
    #[serde(rename = "FaceUrl", borrow, default)]
    face_url: Option<&'a RawValue>,
    #[serde(rename = "EventTime", borrow, default)]
    event_time: Option<&'a RawValue>,
}

/// A parsed body: every field has the type Tencent documents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct GroupInfoChanged {
    pub callback_command: Option<String>,
    pub group_id: GroupId,
    pub group_type: Option<String>,
    pub operator_account: Option<String>,
    pub changes: Changes,
    pub event_time: EventTime,
}

impl GroupInfoChanged {
    pub fn parse(body: &[u8]) -> Result<Self, Refusal> {
        match body.iter().find(|b| !b.is_ascii_whitespace()) {
            Some(b'{') => {}
            Some(_) => return Err(Refusal::NotAnObject),
            None => return Err(Refusal::BadJson("body is empty".into())),
        }
        let raw: Raw = serde_json::from_slice(body).map_err(|e| Refusal::BadJson(e.to_string()))?;
        let group_id = string(raw.group_id, "GroupId")?
            .and_then(|s| GroupId::parse(s).ok())
            .ok_or(Refusal::MissingGroupId)?;
        let event_time = event_time(raw.event_time.ok_or(Refusal::MissingEventTime)?)?;
        Ok(Self {
            callback_command: string(raw.callback_command, "CallbackCommand")?,
            group_id,
            group_type: string(raw.group_type, "Type")?,
            operator_account: string(raw.operator_account, "Operator_Account")?,
            changes: Changes {
                name: string(raw.name, "Name")?,
                introduction: string(raw.introduction, "Introduction")?,
                notification: string(raw.notification, "Notification")?,
                face_url: string(raw.face_url, "FaceUrl")?,
            },
            event_time,
        })
    }
}

fn string(raw: Option<&RawValue>, field: &'static str) -> Result<Option<String>, Refusal> {
    raw.map(|r| serde_json::from_str::<String>(r.get()).map_err(|_| Refusal::NotAString(field))).transpose()
}

/// `EventTime` is documented as an Integer, and Tencent's own sample sends `"1670574414123"`: both are
/// accepted. Anything else (a fraction, a sign, an exponent, a number past i64) is refused.
fn event_time(raw: &RawValue) -> Result<EventTime, Refusal> {
    let text = raw.get();
    let digits = match text.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
        Some(inner) => inner,
        None => text,
    };
    if digits.is_empty() || digits.len() > 19 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Refusal::BadEventTime);
    }
    digits.parse::<i64>().ok().and_then(|ms| EventTime::from_millis(ms).ok()).ok_or(Refusal::BadEventTime)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"{
        "CallbackCommand": "Group.CallbackAfterGroupInfoChanged",
        "GroupId" : "@TGS#2J4SZEAEL",
        "Type": "Public",
        "Operator_Account": "leckie",
        "Notification": "NewNotification",
        "EventTime":"1670574414123"
    }"#;

    #[test]
    fn the_documented_sample_parses() {
        let p = GroupInfoChanged::parse(SAMPLE.as_bytes()).unwrap();
        assert_eq!(p.group_id.as_str(), "@TGS#2J4SZEAEL");
        assert_eq!(p.event_time.as_millis(), 1670574414123);
        assert_eq!(p.changes.notification.as_deref(), Some("NewNotification"));
        assert_eq!(p.changes.name, None);
        assert_eq!(p.group_type.as_deref(), Some("Public"));
    }

    #[test]
    fn event_time_may_be_a_number_or_a_string_of_digits() {
        for et in ["1670574414123", "\"1670574414123\""] {
            let body = format!(r#"{{"GroupId":"g","EventTime":{et}}}"#);
            assert_eq!(
                GroupInfoChanged::parse(body.as_bytes()).unwrap().event_time.as_millis(),
                1670574414123
            );
        }
    }

    #[test]
    fn event_time_that_is_not_an_integer_is_refused() {
        for et in ["1.5", "-1", "\"\"", "\"12a\"", "1e3", "99999999999999999999", "\" 1\"", "true"] {
            let body = format!(r#"{{"GroupId":"g","EventTime":{et}}}"#);
            assert_eq!(GroupInfoChanged::parse(body.as_bytes()), Err(Refusal::BadEventTime), "{et}");
        }
    }

    #[test]
    fn a_missing_or_empty_group_id_is_refused() {
        assert_eq!(GroupInfoChanged::parse(br#"{"EventTime":1}"#), Err(Refusal::MissingGroupId));
        assert_eq!(GroupInfoChanged::parse(br#"{"GroupId":"","EventTime":1}"#), Err(Refusal::MissingGroupId));
        assert_eq!(GroupInfoChanged::parse(br#"{"GroupId":"g"}"#), Err(Refusal::MissingEventTime));
    }

    #[test]
    fn an_empty_string_is_a_real_value_and_is_kept() {
        let p = GroupInfoChanged::parse(br#"{"GroupId":"g","EventTime":1,"Name":""}"#).unwrap();
        assert_eq!(p.changes.name.as_deref(), Some(""));
    }

    #[test]
    fn unknown_fields_are_ignored_but_duplicates_and_wrong_types_are_not() {
        let ok = br#"{"GroupId":"g","EventTime":1,"UserDefinedDataList":[{"Key":"k","Value":"v"}]}"#;
        assert!(GroupInfoChanged::parse(ok).is_ok());
        let dup = br#"{"GroupId":"g","GroupId":"h","EventTime":1}"#;
        assert!(matches!(GroupInfoChanged::parse(dup), Err(Refusal::BadJson(_))));
        let typed = br#"{"GroupId":"g","EventTime":1,"Name":5}"#;
        assert_eq!(GroupInfoChanged::parse(typed), Err(Refusal::NotAString("Name")));
    }

    #[test]
    fn a_body_that_is_not_an_object_is_refused() {
        assert_eq!(GroupInfoChanged::parse(b"[1]"), Err(Refusal::NotAnObject));
        assert!(matches!(GroupInfoChanged::parse(b""), Err(Refusal::BadJson(_))));
        assert!(matches!(GroupInfoChanged::parse(b"{\"GroupId\":"), Err(Refusal::BadJson(_))));
    }
}
