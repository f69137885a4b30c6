//! [`InfoChangedEvent`]: one group-profile change (`info_changed`), as published on Kafka since the
//! first version, and the record layout every event type shares.

use serde::{Deserialize, Serialize};

use super::ids::ContentHash;
use super::{EventId, EventTime, GroupId, SdkAppId};
use crate::message::{KafkaRecord, Text};

/// Version of the info_changed value's JSON layout, unchanged since the first release: version 1
/// consumers keep reading these records byte for byte (docs/event.md, "Versions"). The lifecycle
/// types added later are [`LIFECYCLE_SCHEMA_VERSION`](super::LIFECYCLE_SCHEMA_VERSION).
pub const INFO_CHANGED_SCHEMA_VERSION: u32 = 1;

/// The profile fields a webhook carried. A field the webhook did not carry is `None` and absent from
/// the JSON; `Some("")` means the field was cleared.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Changes {
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub introduction: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub notification: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub face_url: Option<String>,
}

/// One change of a group's profile, normalized. Serializes to the Kafka value documented in
/// docs/event.md; deserializes back from it (the spool stores exactly that value).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InfoChangedEvent {
    schema_version: u32,
    event_id: EventId,
    sdk_app_id: SdkAppId,
    group_id: GroupId,
    group_type: Option<String>,
    operator_account: Option<String>,
    changes: Changes,
    event_time_ms: EventTime,
    received_at_ms: i64,
    client_ip: Option<String>,
    opt_platform: Option<String>,
}

impl InfoChangedEvent {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        sdk_app_id: SdkAppId,
        group_id: GroupId,
        group_type: Option<String>,
        operator_account: Option<String>,
        changes: Changes,
        event_time: EventTime,
        received_at_ms: i64,
        client_ip: Option<String>,
        opt_platform: Option<String>,
    ) -> Self {
        let event_id =
            derive_id(&sdk_app_id, &group_id, &group_type, &operator_account, &changes, event_time);
        Self {
            schema_version: INFO_CHANGED_SCHEMA_VERSION,
            event_id,
            sdk_app_id,
            group_id,
            group_type,
            operator_account,
            changes,
            event_time_ms: event_time,
            received_at_ms,
            client_ip,
            opt_platform,
        }
    }

    pub fn event_id(&self) -> &EventId {
        &self.event_id
    }
    pub fn sdk_app_id(&self) -> &SdkAppId {
        &self.sdk_app_id
    }
    pub fn group_id(&self) -> &GroupId {
        &self.group_id
    }
    pub fn changes(&self) -> &Changes {
        &self.changes
    }
    pub fn event_time(&self) -> EventTime {
        self.event_time_ms
    }
    pub fn received_at_ms(&self) -> i64 {
        self.received_at_ms
    }

    /// The Kafka value: this event as JSON.
    pub fn to_json(&self) -> Vec<u8> {
        // One allocation for the usual event (a few hundred bytes) instead of three doublings.
        let mut out = Vec::with_capacity(512);
        serde_json::to_writer(&mut out, self).expect("an event always serializes");
        out
    }

    /// Reads a value written by [`to_json`](Self::to_json).
    pub fn from_json(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

/// CloudEvents `type` of a group-profile change.
pub const CE_TYPE: &str = super::EventType::InfoChanged.ce_type();

impl InfoChangedEvent {
    /// The Kafka record: key = GroupId (every change of one group on one partition, in order),
    /// timestamp = EventTime, CloudEvents' Kafka binding in binary mode plus the content type, value =
    /// the event's JSON.
    pub fn to_message(&self) -> KafkaRecord {
        self.message_with_value(self.to_json())
    }

    /// A record spooled by a version that stored the bare JSON value (spool format 1).
    pub fn message_from_v1_spool(value: &[u8]) -> Result<KafkaRecord, String> {
        let event = Self::from_json(value).map_err(|e| e.to_string())?;
        Ok(event.message_with_value(value.to_vec()))
    }

    fn message_with_value(&self, value: Vec<u8>) -> KafkaRecord {
        record(RecordHead {
            event_id: &self.event_id,
            sdk_app_id: &self.sdk_app_id,
            group_id: &self.group_id,
            ce_type: CE_TYPE,
            event_time: self.event_time_ms,
            received_at_ms: self.received_at_ms,
            value,
        })
    }
}

/// What every event type's Kafka record is made of.
pub(super) struct RecordHead<'a> {
    pub event_id: &'a EventId,
    pub sdk_app_id: &'a SdkAppId,
    pub group_id: &'a GroupId,
    pub ce_type: &'static str,
    pub event_time: EventTime,
    pub received_at_ms: i64,
    pub value: Vec<u8>,
}

/// The Kafka record of any event type: key = GroupId (every event of one group, whatever its type, on
/// one partition, in order), timestamp = EventTime, CloudEvents' Kafka binding in binary mode plus the
/// content type.
pub(super) fn record(h: RecordHead<'_>) -> KafkaRecord {
    let headers = vec![
        (Text::Borrowed("ce_specversion"), Text::Borrowed("1.0")),
        (Text::Borrowed("ce_id"), Text::Owned(h.event_id.as_str().to_owned())),
        (Text::Borrowed("ce_source"), Text::Owned(format!("/tencent-cloud-chat/{}", h.sdk_app_id.as_str()))),
        (Text::Borrowed("ce_type"), Text::Borrowed(h.ce_type)),
        (Text::Borrowed("ce_time"), Text::Owned(h.event_time.rfc3339())),
        (Text::Borrowed("ce_subject"), Text::Owned(h.group_id.as_str().to_owned())),
        (Text::Borrowed("content-type"), Text::Borrowed("application/json")),
    ];
    KafkaRecord {
        key: h.group_id.as_str().as_bytes().to_vec(),
        timestamp_ms: h.event_time.as_millis(),
        headers,
        value: h.value,
        received_at_ms: h.received_at_ms,
        event_time_ms: h.event_time.as_millis(),
    }
}

/// The id of an info_changed webhook: its command, app, group, type, operator, each change field and
/// EventTime (the layout every version-1 id was derived with; keep it, or duplicates stop matching).
fn derive_id(
    app: &SdkAppId,
    group: &GroupId,
    group_type: &Option<String>,
    operator: &Option<String>,
    changes: &Changes,
    time: EventTime,
) -> EventId {
    let mut h = ContentHash::new("Group.CallbackAfterGroupInfoChanged");
    h.field(Some(app.as_str()))
        .field(Some(group.as_str()))
        .field(group_type.as_deref())
        .field(operator.as_deref())
        .field(changes.name.as_deref())
        .field(changes.introduction.as_deref())
        .field(changes.notification.as_deref())
        .field(changes.face_url.as_deref());
    h.finish(time)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(received_at_ms: i64, notification: &str) -> InfoChangedEvent {
        InfoChangedEvent::new(
            SdkAppId::parse("1400000000").unwrap(),
            GroupId::parse("@TGS#2J4SZEAEL".into()).unwrap(),
            Some("Public".into()),
            Some("leckie".into()),
            Changes { notification: Some(notification.into()), ..Changes::default() },
            EventTime::from_millis(1670574414123).unwrap(),
            received_at_ms,
            Some("127.0.0.1".into()),
            None,
        )
    }

    #[test]
    fn the_same_webhook_received_twice_has_the_same_id() {
        assert_eq!(event(1, "n").event_id(), event(2, "n").event_id());
        assert_ne!(event(1, "n").event_id(), event(1, "m").event_id());
    }

    #[test]
    fn the_id_of_the_documented_sample_is_the_one_version_1_derived() {
        // Pinned: a consumer dropping duplicates across a bridge upgrade relies on it not moving.
        assert_eq!(event(1, "NewNotification").event_id().as_str(), "f53350cc238e7eda2d4319c8aea4279a");
    }

    #[test]
    fn a_cleared_field_and_an_absent_field_have_different_ids() {
        let cleared = event(1, "");
        let mut absent = cleared.clone();
        absent.changes.notification = None;
        let absent = InfoChangedEvent::new(
            absent.sdk_app_id,
            absent.group_id,
            absent.group_type,
            absent.operator_account,
            absent.changes,
            absent.event_time_ms,
            1,
            None,
            None,
        );
        assert_ne!(cleared.event_id(), absent.event_id());
    }

    #[test]
    fn the_value_carries_only_the_changed_fields_and_round_trips() {
        let e = event(5, "NewNotification");
        let v: serde_json::Value = serde_json::from_slice(&e.to_json()).unwrap();
        assert_eq!(v["changes"], serde_json::json!({"notification": "NewNotification"}));
        assert_eq!(v["schema_version"], 1);
        assert_eq!(v["event_time_ms"], 1670574414123i64);
        assert_eq!(InfoChangedEvent::from_json(&e.to_json()).unwrap(), e);
    }

    #[test]
    fn headers_follow_the_cloudevents_kafka_binding() {
        let e = event(5, "n");
        let m = e.to_message();
        let get = |k: &str| m.headers.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_ref());
        assert_eq!(get("ce_specversion"), Some("1.0"));
        assert_eq!(get("ce_id"), Some(e.event_id().as_str()));
        assert_eq!(get("ce_time"), Some("2022-12-09T08:26:54.123Z"));
        assert_eq!(get("ce_subject"), Some("@TGS#2J4SZEAEL"));
        assert_eq!(get("content-type"), Some("application/json"));
        assert_eq!(m.key, b"@TGS#2J4SZEAEL");
        assert_eq!(m.timestamp_ms, 1670574414123);
        assert_eq!((m.received_at_ms, m.event_time_ms), (5, 1670574414123));
        assert_eq!(m.value, e.to_json());
    }

    #[test]
    fn a_version_1_spool_record_reads_as_the_same_message() {
        let e = event(5, "n");
        assert_eq!(InfoChangedEvent::message_from_v1_spool(&e.to_json()).unwrap(), e.to_message());
        assert!(InfoChangedEvent::message_from_v1_spool(b"{\"schema_version\":1}").is_err());
    }
}
