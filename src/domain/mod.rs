//! The normalized event: what downstream consumers read, independent of Tencent's wire format.
//!
//! Every type here can only hold a valid value: a [`GroupId`] is never empty, an [`EventTime`] is a
//! non-negative millisecond instant that formats as RFC 3339, an [`EventId`] is always derived the same
//! way. The format is documented in docs/event.md and docs/group-change.schema.json.
//!
//! Two layouts share the topic: [`GroupChangeEvent`] (info_changed, schema version 1, unchanged since
//! the first release) and [`LifecycleEvent`] (created, owner_changed, destroyed: schema version 2).
//! [`GroupEvent`] is either, and is what the rest of the bridge handles. A snapshot adds a fifth
//! lifecycle type ([`Snapshot`]) and a mark per partition ([`SnapshotCompleted`]).

mod event;
mod ids;
mod lifecycle;
mod snapshot;

pub use event::{Changes, GroupChangeEvent, CE_TYPE, SCHEMA_VERSION};
pub use ids::{EventId, EventTime, GroupId, InvalidValue, SdkAppId, UserId};
pub use lifecycle::{
    Created, CustomFields, Destroyed, EventHead, Lifecycle, LifecycleEvent, OwnerChanged,
    LIFECYCLE_SCHEMA_VERSION,
};
pub use snapshot::{Snapshot, SnapshotCompleted, SNAPSHOT_COMPLETED_CE_TYPE};

use crate::message::Message;

/// The kinds of event on the topic, each with its CloudEvents `type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventType {
    Created,
    InfoChanged,
    OwnerChanged,
    Destroyed,
    /// A group's state read from Tencent's REST API by `tim-kafka-bridge snapshot`.
    Snapshot,
}

impl EventType {
    pub const ALL: [EventType; 5] = [
        EventType::Created,
        EventType::InfoChanged,
        EventType::OwnerChanged,
        EventType::Destroyed,
        EventType::Snapshot,
    ];

    /// The value's `type` (absent from info_changed values, which keep their version 1 layout).
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Created => "created",
            EventType::InfoChanged => "info_changed",
            EventType::OwnerChanged => "owner_changed",
            EventType::Destroyed => "destroyed",
            EventType::Snapshot => "snapshot",
        }
    }

    /// The `ce_type` header: `com.tencentcloud.im.group.<type>`.
    pub fn ce_type(self) -> &'static str {
        match self {
            EventType::Created => "com.tencentcloud.im.group.created",
            EventType::InfoChanged => CE_TYPE,
            EventType::OwnerChanged => "com.tencentcloud.im.group.owner_changed",
            EventType::Destroyed => "com.tencentcloud.im.group.destroyed",
            EventType::Snapshot => "com.tencentcloud.im.group.snapshot",
        }
    }

    fn of_lifecycle(l: &Lifecycle) -> Self {
        match l {
            Lifecycle::Created(_) => EventType::Created,
            Lifecycle::OwnerChanged(_) => EventType::OwnerChanged,
            Lifecycle::Destroyed(_) => EventType::Destroyed,
            Lifecycle::Snapshot(_) => EventType::Snapshot,
        }
    }
}

/// One event as published: either layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupEvent {
    InfoChanged(GroupChangeEvent),
    Lifecycle(LifecycleEvent),
}

impl GroupEvent {
    pub fn event_type(&self) -> EventType {
        match self {
            GroupEvent::InfoChanged(_) => EventType::InfoChanged,
            GroupEvent::Lifecycle(e) => EventType::of_lifecycle(e.detail()),
        }
    }
    pub fn event_id(&self) -> &EventId {
        match self {
            GroupEvent::InfoChanged(e) => e.event_id(),
            GroupEvent::Lifecycle(e) => e.event_id(),
        }
    }
    pub fn group_id(&self) -> &GroupId {
        match self {
            GroupEvent::InfoChanged(e) => e.group_id(),
            GroupEvent::Lifecycle(e) => e.group_id(),
        }
    }
    pub fn event_time(&self) -> EventTime {
        match self {
            GroupEvent::InfoChanged(e) => e.event_time(),
            GroupEvent::Lifecycle(e) => e.event_time(),
        }
    }

    /// The info_changed event, if this is one.
    pub fn as_info_changed(&self) -> Option<&GroupChangeEvent> {
        match self {
            GroupEvent::InfoChanged(e) => Some(e),
            GroupEvent::Lifecycle(_) => None,
        }
    }

    /// The Kafka value.
    pub fn to_json(&self) -> Vec<u8> {
        match self {
            GroupEvent::InfoChanged(e) => e.to_json(),
            GroupEvent::Lifecycle(e) => e.to_json(),
        }
    }

    /// The Kafka record.
    pub fn to_message(&self) -> Message {
        match self {
            GroupEvent::InfoChanged(e) => e.to_message(),
            GroupEvent::Lifecycle(e) => e.to_message(),
        }
    }

    /// Reads a value written by [`to_json`](Self::to_json): the layout is chosen by `schema_version`.
    pub fn from_json(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        #[derive(serde::Deserialize)]
        struct Version {
            schema_version: u32,
        }
        let v: Version = serde_json::from_slice(bytes)?;
        match v.schema_version {
            SCHEMA_VERSION => GroupChangeEvent::from_json(bytes).map(GroupEvent::InfoChanged),
            LIFECYCLE_SCHEMA_VERSION => serde_json::from_slice(bytes).map(GroupEvent::Lifecycle),
            other => Err(serde::de::Error::custom(format!("schema_version {other} is unknown"))),
        }
    }
}

impl From<GroupChangeEvent> for GroupEvent {
    fn from(e: GroupChangeEvent) -> Self {
        GroupEvent::InfoChanged(e)
    }
}

impl From<LifecycleEvent> for GroupEvent {
    fn from(e: LifecycleEvent) -> Self {
        GroupEvent::Lifecycle(e)
    }
}
