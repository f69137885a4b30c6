//! The normalized event: what downstream consumers read, independent of Tencent's wire format.
//!
//! Every type here can only hold a valid value: a [`GroupId`] is never empty, an [`EventTime`] is a
//! non-negative millisecond instant that formats as RFC 3339, an [`EventId`] is always derived the same
//! way. The format is documented in docs/event.md and docs/group-change.schema.json.
//!
//! Two layouts share the topic: [`InfoChangedEvent`] (info_changed, schema version 1, unchanged since
//! the first release) and [`LifecycleEvent`] (created, owner_changed, destroyed: schema version 2).
//! [`GroupEvent`] is either, and is what the rest of the bridge handles. A snapshot adds a fifth
//! lifecycle type ([`Snapshot`]) and a mark per partition ([`SnapshotCompleted`]).

mod event;
mod ids;
mod lifecycle;
mod snapshot;

pub use event::{Changes, InfoChangedEvent, CE_TYPE, INFO_CHANGED_SCHEMA_VERSION};
pub use ids::{EventId, EventTime, GroupId, InvalidValue, SdkAppId, UserId};
pub use lifecycle::{
    Created, CustomFields, Destroyed, EventHead, Lifecycle, LifecycleEvent, OwnerChanged,
    LIFECYCLE_SCHEMA_VERSION,
};
pub use snapshot::{Snapshot, SnapshotCompleted, SNAPSHOT_COMPLETED_CE_TYPE};

use crate::message::KafkaRecord;

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

    fn of_lifecycle(l: &Lifecycle) -> Self {
        match l {
            Lifecycle::Created(_) => EventType::Created,
            Lifecycle::OwnerChanged(_) => EventType::OwnerChanged,
            Lifecycle::Destroyed(_) => EventType::Destroyed,
            Lifecycle::Snapshot(_) => EventType::Snapshot,
        }
    }
}

/// Each type's name, written once: it is the value's `type` and the end of the `ce_type` header.
macro_rules! event_type_names {
    ($($variant:ident => $name:literal,)*) => {
        impl EventType {
            /// The value's `type` (absent from info_changed values, which keep their version 1 layout).
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(EventType::$variant => $name,)*
                }
            }

            /// The `ce_type` header: `com.tencentcloud.im.group.<type>`.
            pub const fn ce_type(self) -> &'static str {
                match self {
                    $(EventType::$variant => concat!("com.tencentcloud.im.group.", $name),)*
                }
            }
        }
    };
}

event_type_names! {
    Created => "created",
    InfoChanged => "info_changed",
    OwnerChanged => "owner_changed",
    Destroyed => "destroyed",
    Snapshot => "snapshot",
}

/// One event as published: either layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupEvent {
    InfoChanged(InfoChangedEvent),
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
    pub fn as_info_changed(&self) -> Option<&InfoChangedEvent> {
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
    pub fn to_message(&self) -> KafkaRecord {
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
            INFO_CHANGED_SCHEMA_VERSION => InfoChangedEvent::from_json(bytes).map(GroupEvent::InfoChanged),
            LIFECYCLE_SCHEMA_VERSION => serde_json::from_slice(bytes).map(GroupEvent::Lifecycle),
            other => Err(serde::de::Error::custom(format!("schema_version {other} is unknown"))),
        }
    }
}

impl From<InfoChangedEvent> for GroupEvent {
    fn from(e: InfoChangedEvent) -> Self {
        GroupEvent::InfoChanged(e)
    }
}

impl From<LifecycleEvent> for GroupEvent {
    fn from(e: LifecycleEvent) -> Self {
        GroupEvent::Lifecycle(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The names the code gives the event types are the ones the published schema documents: each has
    /// its branch in `$defs` (info_changed's has no `type`: its layout is version 1's), every other
    /// branch says its name as `type`'s constant, and the schema has no event type the code lacks.
    #[test]
    fn every_event_type_is_named_as_docs_group_change_schema_json_names_it() {
        let schema: serde_json::Value =
            serde_json::from_str(include_str!("../../docs/group-change.schema.json")).unwrap();
        let defs = &schema["$defs"];
        for t in EventType::ALL {
            let name = t.as_str();
            assert!(defs[name].is_object(), "the schema has no branch for {name}");
            let constant = defs[name]["properties"]["type"]["const"].as_str();
            let expected = if t == EventType::InfoChanged { None } else { Some(name) };
            assert_eq!(constant, expected, "{name}");
            assert_eq!(t.ce_type(), format!("com.tencentcloud.im.group.{name}"));
        }
        let mut branches: Vec<&str> = schema["oneOf"]
            .as_array()
            .expect("the schema is a oneOf")
            .iter()
            .map(|b| b["$ref"].as_str().unwrap().trim_start_matches("#/$defs/"))
            .collect();
        let mut named: Vec<&str> = EventType::ALL.iter().map(|t| t.as_str()).collect();
        named.push("snapshot_completed");
        branches.sort_unstable();
        named.sort_unstable();
        assert_eq!(branches, named);
        assert_eq!(CE_TYPE, "com.tencentcloud.im.group.info_changed");
    }
}
