//! The JSON body of the callback commands the bridge publishes.
//!
//! Fields are first captured as raw JSON slices so that a field of the wrong type is refused with its
//! own name ("Name must be a string") rather than serde's column number, and so that a field one
//! command documents is only looked at for that command (an info_changed body may carry a
//! `UserDefinedDataList` of any shape: it is skipped, as every unknown field is, since Tencent adds
//! fields over time). A field given twice is refused, since which value was meant is unknowable; so is
//! `GroupId` given in both of Tencent's documented spellings (`GroupId`, and `groupID` in one field
//! table).

use serde::Deserialize;
use serde_json::value::RawValue;

use super::{Command, Refusal};
use crate::domain::{
    Changes, Created, CustomFields, Destroyed, EventTime, GroupId, Lifecycle, OwnerChanged, UserId,
};

#[derive(Deserialize)]
struct Raw<'a> {
    #[serde(rename = "CallbackCommand", borrow, default)]
    callback_command: Option<&'a RawValue>,
    #[serde(rename = "GroupId", alias = "groupID", borrow, default)]
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
    #[serde(rename = "Owner_Account", borrow, default)]
    owner_account: Option<&'a RawValue>,
    #[serde(rename = "OldOwner_Account", borrow, default)]
    old_owner_account: Option<&'a RawValue>,
    #[serde(rename = "NewOwner_Account", borrow, default)]
    new_owner_account: Option<&'a RawValue>,
    #[serde(rename = "MemberList", borrow, default)]
    member_list: Option<&'a RawValue>,
    #[serde(rename = "UserDefinedDataList", borrow, default)]
    user_defined_data_list: Option<&'a RawValue>,
}

/// What a body says beyond the fields every command shares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Detail {
    InfoChanged(Changes),
    Lifecycle(Lifecycle),
}

/// A parsed body: every field has the type Tencent documents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Body {
    pub callback_command: Option<String>,
    pub group_id: GroupId,
    pub group_type: Option<String>,
    pub operator_account: Option<String>,
    pub event_time: EventTime,
    pub detail: Detail,
}

/// Refuses what is not a JSON object before serde sees it (serde would say "expected struct").
fn object(body: &[u8]) -> Result<(), Refusal> {
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => Ok(()),
        Some(_) => Err(Refusal::NotAnObject),
        None => Err(Refusal::BadJson("body is empty".into())),
    }
}

/// The body's `CallbackCommand`, for a command the bridge does not publish: only what it takes to
/// check that the body and the query name the same command.
pub(super) fn command_of(body: &[u8]) -> Result<Option<String>, Refusal> {
    #[derive(Deserialize)]
    struct JustCommand<'a> {
        #[serde(rename = "CallbackCommand", borrow, default)]
        callback_command: Option<&'a RawValue>,
    }
    object(body)?;
    let raw: JustCommand = serde_json::from_slice(body).map_err(|e| Refusal::BadJson(e.to_string()))?;
    string(raw.callback_command, "CallbackCommand")
}

impl Body {
    /// Parses the body of `command`.
    pub fn parse(body: &[u8], command: Command) -> Result<Self, Refusal> {
        object(body)?;
        let raw: Raw = serde_json::from_slice(body).map_err(|e| Refusal::BadJson(e.to_string()))?;
        let group_id = match string(raw.group_id, "GroupId")? {
            Some(s) if s.len() > GroupId::MAX_BYTES => {
                return Err(Refusal::GroupIdTooLong { bytes: s.len(), max: GroupId::MAX_BYTES })
            }
            Some(s) => GroupId::parse(s).map_err(|_| Refusal::MissingGroupId)?,
            None => return Err(Refusal::MissingGroupId),
        };
        let event_time = event_time(raw.event_time.ok_or(Refusal::MissingEventTime)?)?;
        let profile = |raw: &Raw| -> Result<Changes, Refusal> {
            Ok(Changes {
                name: string(raw.name, "Name")?,
                introduction: string(raw.introduction, "Introduction")?,
                notification: string(raw.notification, "Notification")?,
                face_url: string(raw.face_url, "FaceUrl")?,
            })
        };
        let detail = match command {
            Command::GroupInfoChanged => Detail::InfoChanged(profile(&raw)?),
            Command::CreateGroup => Detail::Lifecycle(Lifecycle::Created(Created {
                owner_account: string(raw.owner_account, "Owner_Account")?,
                profile: profile(&raw)?,
                custom_fields: custom_fields(raw.user_defined_data_list)?,
                member_count: member_count(raw.member_list)?,
            })),
            Command::ChangeGroupOwner => Detail::Lifecycle(Lifecycle::OwnerChanged(OwnerChanged {
                old_owner_account: string(raw.old_owner_account, "OldOwner_Account")?,
                new_owner_account: string(raw.new_owner_account, "NewOwner_Account")?
                    .and_then(|s| UserId::parse(s).ok())
                    .ok_or(Refusal::MissingField("NewOwner_Account"))?,
            })),
            Command::GroupDestroyed => Detail::Lifecycle(Lifecycle::Destroyed(Destroyed {
                owner_account: string(raw.owner_account, "Owner_Account")?,
                name: string(raw.name, "Name")?,
            })),
        };
        Ok(Self {
            callback_command: string(raw.callback_command, "CallbackCommand")?,
            group_id,
            group_type: string(raw.group_type, "Type")?,
            operator_account: string(raw.operator_account, "Operator_Account")?,
            event_time,
            detail,
        })
    }

    #[cfg(test)]
    fn changes(&self) -> &Changes {
        match &self.detail {
            Detail::InfoChanged(c) => c,
            Detail::Lifecycle(_) => panic!("not an info_changed body"),
        }
    }
}

/// `MemberList`: `[{"Member_Account": …}]`. Only its length is published; the entries are not looked at.
fn member_count(raw: Option<&RawValue>) -> Result<Option<u64>, Refusal> {
    let Some(raw) = raw else { return Ok(None) };
    let entries: Vec<serde::de::IgnoredAny> = serde_json::from_str(raw.get())
        .map_err(|_| Refusal::BadField { field: "MemberList", expected: "an array" })?;
    Ok(Some(entries.len() as u64))
}

/// `UserDefinedDataList`: `[{"Key": string, "Value": string}]` (lower-case `key`/`value`, as in
/// group attributes, is read too).
fn custom_fields(raw: Option<&RawValue>) -> Result<CustomFields, Refusal> {
    #[derive(Deserialize)]
    struct KeyValue {
        #[serde(rename = "Key", alias = "key")]
        key: String,
        #[serde(rename = "Value", alias = "value")]
        value: String,
    }
    let Some(raw) = raw else { return Ok(CustomFields::default()) };
    let list: Vec<KeyValue> = serde_json::from_str(raw.get()).map_err(|_| Refusal::BadField {
        field: "UserDefinedDataList",
        expected: "an array of {\"Key\": string, \"Value\": string}",
    })?;
    CustomFields::from_pairs(list.into_iter().map(|kv| (kv.key, kv.value)))
        .map_err(|key| Refusal::DuplicateCustomField(key.chars().take(64).collect()))
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

    fn info(body: &[u8]) -> Result<Body, Refusal> {
        Body::parse(body, Command::GroupInfoChanged)
    }

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
        let p = info(SAMPLE.as_bytes()).unwrap();
        assert_eq!(p.group_id.as_str(), "@TGS#2J4SZEAEL");
        assert_eq!(p.event_time.as_millis(), 1670574414123);
        assert_eq!(p.changes().notification.as_deref(), Some("NewNotification"));
        assert_eq!(p.changes().name, None);
        assert_eq!(p.group_type.as_deref(), Some("Public"));
    }

    #[test]
    fn event_time_may_be_a_number_or_a_string_of_digits() {
        for et in ["1670574414123", "\"1670574414123\""] {
            let body = format!(r#"{{"GroupId":"g","EventTime":{et}}}"#);
            assert_eq!(info(body.as_bytes()).unwrap().event_time.as_millis(), 1670574414123);
        }
    }

    #[test]
    fn event_time_that_is_not_an_integer_is_refused() {
        for et in ["1.5", "-1", "\"\"", "\"12a\"", "1e3", "99999999999999999999", "\" 1\"", "true"] {
            let body = format!(r#"{{"GroupId":"g","EventTime":{et}}}"#);
            assert_eq!(info(body.as_bytes()), Err(Refusal::BadEventTime), "{et}");
        }
    }

    #[test]
    fn a_missing_or_empty_group_id_is_refused() {
        assert_eq!(info(br#"{"EventTime":1}"#), Err(Refusal::MissingGroupId));
        assert_eq!(info(br#"{"GroupId":"","EventTime":1}"#), Err(Refusal::MissingGroupId));
        assert_eq!(info(br#"{"GroupId":"g"}"#), Err(Refusal::MissingEventTime));
    }

    #[test]
    fn a_group_id_over_64_bytes_is_refused_with_its_length() {
        let body = |id: &str| format!(r#"{{"GroupId":"{id}","EventTime":1}}"#);
        assert!(info(body(&"g".repeat(64)).as_bytes()).is_ok());
        assert_eq!(
            info(body(&"g".repeat(65)).as_bytes()),
            Err(Refusal::GroupIdTooLong { bytes: 65, max: 64 })
        );
        assert_eq!(
            info(body(&"长".repeat(30_000)).as_bytes()),
            Err(Refusal::GroupIdTooLong { bytes: 90_000, max: 64 })
        );
    }

    #[test]
    fn an_empty_string_is_a_real_value_and_is_kept() {
        let p = info(br#"{"GroupId":"g","EventTime":1,"Name":""}"#).unwrap();
        assert_eq!(p.changes().name.as_deref(), Some(""));
    }

    #[test]
    fn unknown_fields_are_ignored_but_duplicates_and_wrong_types_are_not() {
        let ok = br#"{"GroupId":"g","EventTime":1,"UserDefinedDataList":[{"Key":"k","Value":"v"}]}"#;
        assert!(info(ok).is_ok());
        let dup = br#"{"GroupId":"g","GroupId":"h","EventTime":1}"#;
        assert!(matches!(info(dup), Err(Refusal::BadJson(_))));
        let typed = br#"{"GroupId":"g","EventTime":1,"Name":5}"#;
        assert_eq!(info(typed), Err(Refusal::NotAString("Name")));
    }

    #[test]
    fn a_body_that_is_not_an_object_is_refused() {
        assert_eq!(info(b"[1]"), Err(Refusal::NotAnObject));
        assert!(matches!(info(b""), Err(Refusal::BadJson(_))));
        assert!(matches!(info(b"{\"GroupId\":"), Err(Refusal::BadJson(_))));
    }

    // The samples of Tencent's pages (docs: tencent-group-lifecycle.md), as sent.
    const CREATED: &str = r#"{"CallbackCommand":"Group.CallbackAfterCreateGroup","GroupId":"@TGS#2J4SZEAEL","Operator_Account":"group_root",
 "Owner_Account":"leckie","Type":"Public","Name":"MyFirstGroup",
 "MemberList":[{"Member_Account":"bob"},{"Member_Account":"peter"}],
 "UserDefinedDataList":[{"Key":"UserDefined1","Value":"hello"},{"Key":"UserDefined2","Value":"world"}],
 "EventTime":"1670574414123"}"#;
    const DESTROYED: &str = r#"{"CallbackCommand":"Group.CallbackAfterGroupDestroyed","GroupId":"@TGS#2J4SZEAEL","Type":"Public",
 "Owner_Account":"leckie","Name":"MyFirstGroup",
 "MemberList":[{"Member_Account":"leckie"},{"Member_Account":"peter"},{"Member_Account":"bob"}],
 "EventTime":"1670574414123"}"#;
    const OWNER: &str = r#"{"CallbackCommand":"Group.CallbackAfterChangeGroupOwner","GroupId":"@TGS#2TTV7VSII","Type":"Public",
 "Operator_Account":"admin","OldOwner_Account":"user1","NewOwner_Account":"user2","EventTime":"1670574414123"}"#;

    fn lifecycle(body: &str, command: Command) -> Lifecycle {
        match Body::parse(body.as_bytes(), command).unwrap().detail {
            Detail::Lifecycle(l) => l,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_documented_create_sample_keeps_the_profile_custom_fields_and_member_count() {
        let Lifecycle::Created(c) = lifecycle(CREATED, Command::CreateGroup) else { panic!() };
        assert_eq!(c.owner_account.as_deref(), Some("leckie"));
        assert_eq!(c.profile, Changes { name: Some("MyFirstGroup".into()), ..Changes::default() });
        assert_eq!(c.member_count, Some(2));
        assert_eq!(c.custom_fields.get("UserDefined1"), Some("hello"));
        assert_eq!(c.custom_fields.get("UserDefined2"), Some("world"));
        let b = Body::parse(CREATED.as_bytes(), Command::CreateGroup).unwrap();
        assert_eq!(b.operator_account.as_deref(), Some("group_root"));
        assert_eq!(b.event_time.as_millis(), 1670574414123);
    }

    #[test]
    fn a_create_with_introduction_and_notification_and_no_lists_parses() {
        let body = r#"{"GroupId":"g","EventTime":1,"Introduction":"i","Notification":""}"#;
        let Lifecycle::Created(c) = lifecycle(body, Command::CreateGroup) else { panic!() };
        assert_eq!(c.profile.introduction.as_deref(), Some("i"));
        assert_eq!(c.profile.notification.as_deref(), Some(""));
        assert_eq!((c.member_count, c.custom_fields.is_empty(), c.owner_account), (None, true, None));
    }

    #[test]
    fn malformed_create_lists_are_refused_by_name() {
        let bad_members = r#"{"GroupId":"g","EventTime":1,"MemberList":{"a":1}}"#;
        assert!(matches!(
            Body::parse(bad_members.as_bytes(), Command::CreateGroup),
            Err(Refusal::BadField { field: "MemberList", .. })
        ));
        let bad_fields = r#"{"GroupId":"g","EventTime":1,"UserDefinedDataList":[{"Key":"k","Value":1}]}"#;
        assert!(matches!(
            Body::parse(bad_fields.as_bytes(), Command::CreateGroup),
            Err(Refusal::BadField { field: "UserDefinedDataList", .. })
        ));
        let twice = r#"{"GroupId":"g","EventTime":1,"UserDefinedDataList":[{"Key":"k","Value":"1"},{"Key":"k","Value":"2"}]}"#;
        assert_eq!(
            Body::parse(twice.as_bytes(), Command::CreateGroup),
            Err(Refusal::DuplicateCustomField("k".into()))
        );
        // Not a field of info_changed: whatever its shape, it is skipped there.
        assert!(info(bad_fields.as_bytes()).is_ok());
    }

    #[test]
    fn the_documented_owner_change_and_destroy_samples_parse() {
        assert_eq!(
            lifecycle(OWNER, Command::ChangeGroupOwner),
            Lifecycle::OwnerChanged(OwnerChanged {
                old_owner_account: Some("user1".into()),
                new_owner_account: UserId::parse("user2".into()).unwrap(),
            })
        );
        assert_eq!(
            lifecycle(DESTROYED, Command::GroupDestroyed),
            Lifecycle::Destroyed(Destroyed {
                owner_account: Some("leckie".into()),
                name: Some("MyFirstGroup".into())
            })
        );
    }

    #[test]
    fn an_owner_change_without_a_new_owner_is_refused() {
        for body in
            [r#"{"GroupId":"g","EventTime":1}"#, r#"{"GroupId":"g","EventTime":1,"NewOwner_Account":""}"#]
        {
            assert_eq!(
                Body::parse(body.as_bytes(), Command::ChangeGroupOwner),
                Err(Refusal::MissingField("NewOwner_Account"))
            );
        }
    }

    #[test]
    fn group_id_may_be_spelled_as_either_documented_spelling_but_not_both() {
        for command in Command::ALL {
            let body = r#"{"groupID":"@TGS#x","EventTime":1,"NewOwner_Account":"u"}"#;
            assert_eq!(Body::parse(body.as_bytes(), command).unwrap().group_id.as_str(), "@TGS#x");
        }
        let both = br#"{"GroupId":"a","groupID":"b","EventTime":1}"#;
        assert!(matches!(info(both), Err(Refusal::BadJson(_))));
    }

    #[test]
    fn event_time_may_be_a_number_or_a_string_for_every_command() {
        for command in Command::ALL {
            for et in ["1670574414123", "\"1670574414123\""] {
                let body = format!(r#"{{"GroupId":"g","EventTime":{et},"NewOwner_Account":"u"}}"#);
                let b = Body::parse(body.as_bytes(), command).unwrap();
                assert_eq!(b.event_time.as_millis(), 1670574414123, "{command} {et}");
            }
        }
    }

    #[test]
    fn the_command_of_a_body_is_read_without_looking_at_anything_else() {
        let join =
            br#"{"CallbackCommand":"Group.CallbackAfterNewMemberJoin","GroupId":5,"NewMemberList":[]}"#;
        assert_eq!(command_of(join), Ok(Some("Group.CallbackAfterNewMemberJoin".into())));
        assert_eq!(command_of(b"{}"), Ok(None));
        assert_eq!(command_of(b"[]"), Err(Refusal::NotAnObject));
        assert_eq!(command_of(br#"{"CallbackCommand":1}"#), Err(Refusal::NotAString("CallbackCommand")));
    }
}
