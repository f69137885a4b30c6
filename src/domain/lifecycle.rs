//! [`LifecycleEvent`]: a group was created, changed owner, or was destroyed (schema version 2).
//!
//! These types came after the first release, whose consumers read every record as an info_changed
//! value. Rather than change that layout under them, the lifecycle types are a second layout: the
//! same envelope fields, plus `type` and the type's own fields, under `schema_version` 2. A version 1
//! consumer tells them apart by `schema_version` (or the `ce_type` header) and skips them; a version 2
//! consumer reads `type`, or takes a record without one as info_changed (docs/event.md, "Versions").

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::event::{record, RecordHead};
use super::ids::ContentHash;
use super::snapshot::Snapshot;
use super::{Changes, EventId, EventTime, GroupId, SdkAppId, UserId};
use crate::message::KafkaRecord;

/// Version of the lifecycle values' JSON layout.
pub const LIFECYCLE_SCHEMA_VERSION: u32 = 2;

/// Custom group fields given at creation (`UserDefinedDataList`), by key. Each key appears once: the
/// webhook parser refuses a list that names a key twice, since which value was meant is unknowable.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CustomFields(BTreeMap<String, String>);

impl CustomFields {
    /// Builds the fields from `(key, value)` pairs; a repeated key is returned as the error.
    pub fn from_pairs(pairs: impl IntoIterator<Item = (String, String)>) -> Result<Self, String> {
        let mut map = BTreeMap::new();
        for (k, v) in pairs {
            if map.contains_key(&k) {
                return Err(k);
            }
            map.insert(k, v);
        }
        Ok(Self(map))
    }
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// What a lifecycle event says beyond the envelope; its serde tag is the value's `type`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Lifecycle {
    Created(Created),
    OwnerChanged(OwnerChanged),
    Destroyed(Destroyed),
    /// Not a callback: the group's state as `tim-kafka-bridge snapshot` read it from the REST API.
    Snapshot(Snapshot),
}

/// `Group.CallbackAfterCreateGroup`: the group's initial profile. The member list itself is left out
/// (it grows with the group and would make a record of any size); its length is kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Created {
    /// `Owner_Account`; `null` when absent.
    pub owner_account: Option<String>,
    /// `Name`, `Introduction`, `Notification` (and `FaceUrl`, should Tencent ever send it): only the
    /// fields the webhook carried, as in info_changed's `changes`.
    pub profile: Changes,
    /// `UserDefinedDataList`: empty when absent.
    pub custom_fields: CustomFields,
    /// Entries of `MemberList`; `null` when absent. Whether Tencent lists the owner is undocumented.
    pub member_count: Option<u64>,
}

/// `Group.CallbackAfterChangeGroupOwner`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnerChanged {
    /// `OldOwner_Account`; `null` when absent.
    pub old_owner_account: Option<String>,
    /// `NewOwner_Account`: the one field without which the event says nothing.
    pub new_owner_account: UserId,
}

/// `Group.CallbackAfterGroupDestroyed`: a tombstone for the group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Destroyed {
    /// `Owner_Account` at disband time; `null` when absent.
    pub owner_account: Option<String>,
    /// `Name`, which Tencent's sample carries though its field table does not; `null` when absent.
    pub name: Option<String>,
}

impl Lifecycle {
    /// The value's `type`.
    pub fn type_name(&self) -> &'static str {
        super::EventType::of_lifecycle(self).as_str()
    }

    /// The Tencent command the event comes from (the first input of its id).
    fn command(&self) -> &'static str {
        match self {
            Lifecycle::Created(_) => "Group.CallbackAfterCreateGroup",
            Lifecycle::OwnerChanged(_) => "Group.CallbackAfterChangeGroupOwner",
            Lifecycle::Destroyed(_) => "Group.CallbackAfterGroupDestroyed",
            Lifecycle::Snapshot(_) => "snapshot",
        }
    }

    fn hash_into(&self, h: &mut ContentHash) {
        match self {
            Lifecycle::Created(c) => {
                h.field(c.owner_account.as_deref())
                    .field(c.profile.name.as_deref())
                    .field(c.profile.introduction.as_deref())
                    .field(c.profile.notification.as_deref())
                    .field(c.profile.face_url.as_deref())
                    .count(c.member_count)
                    .count(Some(c.custom_fields.len() as u64));
                for (k, v) in c.custom_fields.iter() {
                    h.field(Some(k)).field(Some(v));
                }
            }
            Lifecycle::OwnerChanged(o) => {
                h.field(o.old_owner_account.as_deref()).field(Some(o.new_owner_account.as_str()));
            }
            Lifecycle::Destroyed(d) => {
                h.field(d.owner_account.as_deref()).field(d.name.as_deref());
            }
            Lifecycle::Snapshot(s) => s.hash_into(h),
        }
    }
}

/// One lifecycle event, normalized: the envelope every type shares and what the type adds. Serializes
/// to the Kafka value documented in docs/event.md (`type` and the type's fields first).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LifecycleEvent {
    schema_version: u32,
    #[serde(flatten)]
    detail: Lifecycle,
    event_id: EventId,
    sdk_app_id: SdkAppId,
    group_id: GroupId,
    group_type: Option<String>,
    operator_account: Option<String>,
    event_time_ms: EventTime,
    received_at_ms: i64,
    client_ip: Option<String>,
    opt_platform: Option<String>,
}

/// What every event carries besides its type's fields: who, which group, when, from where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventHead {
    pub sdk_app_id: SdkAppId,
    pub group_id: GroupId,
    pub group_type: Option<String>,
    pub operator_account: Option<String>,
    pub event_time: EventTime,
    pub received_at_ms: i64,
    pub client_ip: Option<String>,
    pub opt_platform: Option<String>,
}

impl LifecycleEvent {
    pub fn new(head: EventHead, detail: Lifecycle) -> Self {
        let mut h = ContentHash::new(detail.command());
        h.field(Some(head.sdk_app_id.as_str()))
            .field(Some(head.group_id.as_str()))
            .field(head.group_type.as_deref())
            .field(head.operator_account.as_deref());
        detail.hash_into(&mut h);
        let event_id = h.finish(head.event_time);
        Self {
            schema_version: LIFECYCLE_SCHEMA_VERSION,
            detail,
            event_id,
            sdk_app_id: head.sdk_app_id,
            group_id: head.group_id,
            group_type: head.group_type,
            operator_account: head.operator_account,
            event_time_ms: head.event_time,
            received_at_ms: head.received_at_ms,
            client_ip: head.client_ip,
            opt_platform: head.opt_platform,
        }
    }

    pub fn detail(&self) -> &Lifecycle {
        &self.detail
    }
    pub fn event_id(&self) -> &EventId {
        &self.event_id
    }
    pub fn group_id(&self) -> &GroupId {
        &self.group_id
    }
    pub fn event_time(&self) -> EventTime {
        self.event_time_ms
    }
    pub fn received_at_ms(&self) -> i64 {
        self.received_at_ms
    }

    pub fn to_json(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(512);
        serde_json::to_writer(&mut out, self).expect("an event always serializes");
        out
    }

    pub fn to_message(&self) -> KafkaRecord {
        record(RecordHead {
            event_id: &self.event_id,
            sdk_app_id: &self.sdk_app_id,
            group_id: &self.group_id,
            ce_type: super::EventType::of_lifecycle(&self.detail).ce_type(),
            event_time: self.event_time_ms,
            received_at_ms: self.received_at_ms,
            value: self.to_json(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(received_at_ms: i64) -> EventHead {
        EventHead {
            sdk_app_id: SdkAppId::parse("1400000000").unwrap(),
            group_id: GroupId::parse("@TGS#2J4SZEAEL".into()).unwrap(),
            group_type: Some("Public".into()),
            operator_account: Some("group_root".into()),
            event_time: EventTime::from_millis(1670574414123).unwrap(),
            received_at_ms,
            client_ip: None,
            opt_platform: Some("RESTAPI".into()),
        }
    }

    fn created() -> Lifecycle {
        Lifecycle::Created(Created {
            owner_account: Some("leckie".into()),
            profile: Changes { name: Some("MyFirstGroup".into()), ..Changes::default() },
            custom_fields: CustomFields::from_pairs([("UserDefined1".into(), "hello".into())]).unwrap(),
            member_count: Some(2),
        })
    }

    #[test]
    fn a_created_value_says_its_type_and_version_and_reads_back() {
        let e = LifecycleEvent::new(head(5), created());
        let v: serde_json::Value = serde_json::from_slice(&e.to_json()).unwrap();
        assert_eq!(v["schema_version"], 2);
        assert_eq!(v["type"], "created");
        assert_eq!(v["profile"], serde_json::json!({"name": "MyFirstGroup"}));
        assert_eq!(v["custom_fields"], serde_json::json!({"UserDefined1": "hello"}));
        assert_eq!(v["member_count"], 2);
        assert_eq!(v["client_ip"], serde_json::Value::Null);
        let back: LifecycleEvent = serde_json::from_slice(&e.to_json()).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn the_same_webhook_received_twice_has_the_same_id_and_other_types_never_share_it() {
        let a = LifecycleEvent::new(head(1), created());
        assert_eq!(a.event_id(), LifecycleEvent::new(head(2), created()).event_id());
        let destroyed = Lifecycle::Destroyed(Destroyed { owner_account: Some("leckie".into()), name: None });
        assert_ne!(a.event_id(), LifecycleEvent::new(head(1), destroyed).event_id());
    }

    #[test]
    fn a_repeated_custom_field_key_is_refused() {
        let pairs = [("k".to_owned(), "1".to_owned()), ("k".to_owned(), "2".to_owned())];
        assert_eq!(CustomFields::from_pairs(pairs), Err("k".to_owned()));
    }

    #[test]
    fn the_record_carries_the_types_ce_type_and_the_group_as_key() {
        let o = Lifecycle::OwnerChanged(OwnerChanged {
            old_owner_account: Some("user1".into()),
            new_owner_account: UserId::parse("user2".into()).unwrap(),
        });
        let m = LifecycleEvent::new(head(1), o).to_message();
        let get = |k: &str| m.headers.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_ref());
        assert_eq!(get("ce_type"), Some("com.tencentcloud.im.group.owner_changed"));
        assert_eq!(m.key, b"@TGS#2J4SZEAEL");
        assert_eq!(m.timestamp_ms, 1670574414123);
    }
}
