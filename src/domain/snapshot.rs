//! The two snapshot events: a group's whole state as Tencent's REST API read it (`snapshot`), and the
//! mark that a snapshot of an app listed every group (`snapshot_completed`).
//!
//! Callbacks are at most once; a snapshot is how a consumer learns what it missed. A `snapshot` is a
//! lifecycle type (schema version 2, keyed by GroupId, on the group's partition), so that a group's
//! snapshot is ordered with its callbacks the way they are ordered among themselves. Its stamps are
//! not one instant but what the read can vouch for: `read_at_ms` (when the request that read it was
//! sent) and Tencent's `LastInfoTime` and `CreateTime` in seconds; docs/directory.md ("Snapshots")
//! derives from them which changes a snapshot reflects. `snapshot_completed` goes to every partition
//! once all of a snapshot's events are in Kafka: a consumer that has read it on a partition has read
//! the whole snapshot of that partition's groups, and may take a group it knew of, on that partition,
//! absent from the snapshot and quiet since before the listing began, as destroyed.

use serde::{Deserialize, Serialize};

use super::ids::ContentHash;
use super::lifecycle::{CustomFields, LIFECYCLE_SCHEMA_VERSION};
use super::{Changes, EventId, EventTime, SdkAppId};
use crate::message::{KafkaRecord, Text};

/// A group's state as one `get_group_info` answer gave it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The run this read belongs to (the same in its `snapshot_completed`).
    pub snapshot_id: String,
    /// When the request that read this state was sent (ms): the state reflects every change made
    /// before then.
    pub read_at_ms: i64,
    /// `Owner_Account`.
    pub owner_account: Option<String>,
    /// `Name`, `Introduction`, `Notification`, `FaceUrl` as Tencent returned them (`""`: unset); a field
    /// Tencent left out is absent.
    pub profile: Changes,
    /// `AppDefinedData`: the group's custom fields among `custom_field_keys`.
    pub custom_fields: CustomFields,
    /// The custom field keys the snapshot asked for: one of them absent from `custom_fields` is unset.
    pub custom_field_keys: Vec<String>,
    /// `MemberNum` (absent for an AVChatRoom, whose member count Tencent does not give).
    pub member_count: Option<u64>,
    /// `MaxMemberNum`.
    pub max_member_count: Option<u64>,
    /// `CreateTime`, Unix seconds.
    pub created_at_s: Option<i64>,
    /// `LastInfoTime`: the last change of the profile, Unix seconds.
    pub last_info_time_s: Option<i64>,
    /// `InfoSeq`: goes up with every profile change.
    pub info_seq: Option<u64>,
}

impl Snapshot {
    pub(super) fn hash_into(&self, h: &mut ContentHash) {
        h.field(Some(&self.snapshot_id))
            .count(Some(self.read_at_ms as u64))
            .field(self.owner_account.as_deref())
            .field(self.profile.name.as_deref())
            .field(self.profile.introduction.as_deref())
            .field(self.profile.notification.as_deref())
            .field(self.profile.face_url.as_deref())
            .count(self.member_count)
            .count(self.info_seq);
        for (k, v) in self.custom_fields.iter() {
            h.field(Some(k)).field(Some(v));
        }
    }
}

/// The `type` of [`SnapshotCompleted`].
const COMPLETED: &str = "snapshot_completed";
/// Its `ce_type`.
pub const SNAPSHOT_COMPLETED_CE_TYPE: &str = "com.tencentcloud.im.group.snapshot_completed";

/// A snapshot of one app listed every group and all its events are in Kafka; one record per partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotCompleted {
    schema_version: u32,
    #[serde(rename = "type")]
    kind: String,
    event_id: EventId,
    sdk_app_id: SdkAppId,
    snapshot_id: String,
    /// When the listing began (ms): a group created since may be missing from the snapshot.
    started_at_ms: i64,
    /// A group the snapshot did not list may be taken as destroyed only if nothing about it
    /// happened at or after this instant (`started_at_ms` minus a margin for a listing that lags).
    sweep_before_ms: i64,
    /// Groups published in this snapshot (all partitions).
    groups: u64,
    /// The partition this record is on, and how many the topic has.
    partition: i32,
    partitions: i32,
    event_time_ms: EventTime,
    received_at_ms: i64,
}

impl SnapshotCompleted {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        sdk_app_id: SdkAppId,
        snapshot_id: String,
        started_at_ms: i64,
        sweep_before_ms: i64,
        groups: u64,
        partition: i32,
        partitions: i32,
        completed: EventTime,
    ) -> Self {
        let mut h = ContentHash::new(COMPLETED);
        h.field(Some(sdk_app_id.as_str())).field(Some(&snapshot_id)).count(Some(partition as u64));
        Self {
            schema_version: LIFECYCLE_SCHEMA_VERSION,
            kind: COMPLETED.to_owned(),
            event_id: h.finish(completed),
            sdk_app_id,
            snapshot_id,
            started_at_ms,
            sweep_before_ms,
            groups,
            partition,
            partitions,
            event_time_ms: completed,
            received_at_ms: completed.as_millis(),
        }
    }

    pub fn partition(&self) -> i32 {
        self.partition
    }

    /// The record: no key (it is sent to its partition explicitly), the CloudEvents headers with the
    /// snapshot id as `ce_subject`.
    pub fn to_message(&self) -> KafkaRecord {
        let mut value = Vec::with_capacity(384);
        serde_json::to_writer(&mut value, self).expect("an event always serializes");
        let headers = vec![
            (Text::Borrowed("ce_specversion"), Text::Borrowed("1.0")),
            (Text::Borrowed("ce_id"), Text::Owned(self.event_id.as_str().to_owned())),
            (
                Text::Borrowed("ce_source"),
                Text::Owned(format!("/tencent-cloud-chat/{}", self.sdk_app_id.as_str())),
            ),
            (Text::Borrowed("ce_type"), Text::Borrowed(SNAPSHOT_COMPLETED_CE_TYPE)),
            (Text::Borrowed("ce_time"), Text::Owned(self.event_time_ms.rfc3339())),
            (Text::Borrowed("ce_subject"), Text::Owned(self.snapshot_id.clone())),
            (Text::Borrowed("content-type"), Text::Borrowed("application/json")),
        ];
        KafkaRecord {
            key: Vec::new(),
            timestamp_ms: self.event_time_ms.as_millis(),
            headers,
            value,
            received_at_ms: self.received_at_ms,
            event_time_ms: self.event_time_ms.as_millis(),
        }
    }
}
