//! A record's value → the register writes it makes.
//!
//! Read as docs/event.md tells a consumer to: the layout by `type` (absent: info_changed, schema
//! version 1), unknown members ignored, unknown types and versions skipped rather than guessed at. So
//! these structs are this consumer's own, lenient ones, not the bridge's domain types (which refuse
//! what they do not know, as a producer should).

use std::collections::BTreeMap;

use serde::Deserialize;

/// The order of writes to one register: last writer wins by `EventTime`, ties broken by `event_id`
/// (arbitrary but the same on every replica and every replay, so all converge).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Stamp {
    pub event_time_ms: i64,
    pub event_id: String,
}

/// One register write: `field` of a group takes `value` (`None`: known to be unset).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    pub field: String,
    pub value: Option<String>,
}

/// The type of a group event, as docs/event.md names it (`info_changed`: schema version 1, no `type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Created,
    InfoChanged,
    OwnerChanged,
    Destroyed,
    /// A group's state read from Tencent's REST API.
    Snapshot,
    /// A snapshot's mark on one partition: the groups it did not list may be swept.
    SnapshotCompleted,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::Created,
        Kind::InfoChanged,
        Kind::OwnerChanged,
        Kind::Destroyed,
        Kind::Snapshot,
        Kind::SnapshotCompleted,
    ];

    /// The name docs/event.md gives it (and the `type` label of `directory_applied_events_total`).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Created => "created",
            Kind::InfoChanged => "info_changed",
            Kind::OwnerChanged => "owner_changed",
            Kind::Destroyed => "destroyed",
            Kind::Snapshot => "snapshot",
            Kind::SnapshotCompleted => "snapshot_completed",
        }
    }
}

/// What one event writes, all under one stamp.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    /// Which event made it: the store does not read it (every write is a register write); metrics do.
    pub kind: Kind,
    pub sdk_app_id: String,
    pub group_id: String,
    pub stamp: Stamp,
    pub writes: Vec<Write>,
}

/// What a snapshot's mark asks of the store: on one partition, every group of the app that it
/// knows of, that is not destroyed, and about which nothing happened at or after `sweep_before_ms`
/// (so the snapshot, which lists every group that existed when it began, did not list it) is
/// destroyed, under the stamp `(started_at_ms, event_id)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sweep {
    pub sdk_app_id: String,
    pub snapshot_id: String,
    pub sweep_before_ms: i64,
    /// The tombstone's stamp: later than every write a swept group has, earlier than any change
    /// the listing could have missed.
    pub stamp: Stamp,
    pub partition: i32,
    pub partitions: i32,
}

/// What one record asks of the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Register writes: one [`Update`] for a callback; a snapshot writes under up to three stamps.
    Updates(Vec<Update>),
    Sweep(Sweep),
}

impl Change {
    pub fn kind(&self) -> Kind {
        match self {
            Change::Updates(u) => u.first().map_or(Kind::Snapshot, |u| u.kind),
            Change::Sweep(_) => Kind::SnapshotCompleted,
        }
    }

    /// The event's time: `event_time_ms` of a callback, the read of a snapshot, the listing's start
    /// of a mark.
    pub fn event_time_ms(&self) -> i64 {
        match self {
            Change::Updates(u) => u.iter().map(|u| u.stamp.event_time_ms).max().unwrap_or(0),
            Change::Sweep(s) => s.stamp.event_time_ms,
        }
    }
}

impl From<Update> for Change {
    fn from(u: Update) -> Self {
        Change::Updates(vec![u])
    }
}

/// Why a record is skipped. A skipped record is logged and its offset committed: waiting would not
/// make it readable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Skip {
    #[error("not a group event this consumer reads: {0}")]
    Unreadable(String),
    #[error("schema_version {0} is unknown to this consumer")]
    UnknownVersion(u64),
    #[error("type {0:?} is unknown to this consumer")]
    UnknownType(String),
}

impl Skip {
    /// Every value of [`reason`](Self::reason).
    pub const REASONS: [&'static str; 3] = ["unreadable", "unknown_version", "unknown_type"];

    /// Why, as one word (the `reason` label of `directory_skipped_records_total`).
    pub fn reason(&self) -> &'static str {
        match self {
            Skip::Unreadable(_) => Self::REASONS[0],
            Skip::UnknownVersion(_) => Self::REASONS[1],
            Skip::UnknownType(_) => Self::REASONS[2],
        }
    }
}

/// The registers of a group, as columns of the `groups` view.
pub mod field {
    pub const GROUP_TYPE: &str = "group_type";
    pub const NAME: &str = "name";
    pub const INTRODUCTION: &str = "introduction";
    pub const NOTIFICATION: &str = "notification";
    pub const FACE_URL: &str = "face_url";
    pub const OWNER_ACCOUNT: &str = "owner_account";
    pub const INITIAL_MEMBER_COUNT: &str = "initial_member_count";
    /// `MemberNum` as of the latest snapshot (no callback carries it).
    pub const MEMBER_COUNT: &str = "member_count";
    /// `"true"` once destroyed: the tombstone. A later `created` (a GroupId used again) writes `"false"`.
    pub const DESTROYED: &str = "destroyed";
    /// The stamp of the group's latest `created` (its value: that `event_time_ms`). A creation starts a
    /// new life of the GroupId: a register whose stamp is older than this one's belongs to an earlier
    /// life and is not shown (see [`store`](crate::store)).
    pub const CREATED: &str = "created";
    /// Prefix of a custom group field's register: `custom:<key>`.
    pub const CUSTOM_PREFIX: &str = "custom:";
    /// The profile registers a `created` sets, to the value it carries or to unset.
    pub const PROFILE: [&str; 4] = [NAME, INTRODUCTION, NOTIFICATION, FACE_URL];
}

#[derive(Deserialize, Default)]
struct Profile {
    name: Option<String>,
    introduction: Option<String>,
    notification: Option<String>,
    face_url: Option<String>,
}

impl Profile {
    fn get(&self, f: &str) -> Option<&String> {
        match f {
            field::NAME => self.name.as_ref(),
            field::INTRODUCTION => self.introduction.as_ref(),
            field::NOTIFICATION => self.notification.as_ref(),
            _ => self.face_url.as_ref(),
        }
    }
}

#[derive(Deserialize)]
struct Value {
    schema_version: u64,
    #[serde(rename = "type")]
    kind: Option<String>,
    event_id: String,
    sdk_app_id: String,
    group_id: String,
    group_type: Option<String>,
    event_time_ms: i64,
    changes: Option<Profile>,
    profile: Option<Profile>,
    owner_account: Option<String>,
    new_owner_account: Option<String>,
    custom_fields: Option<BTreeMap<String, String>>,
    member_count: Option<u64>,
    // A snapshot's (its `snapshot_completed` is a [`Mark`]).
    read_at_ms: Option<i64>,
    custom_field_keys: Option<Vec<String>>,
    created_at_s: Option<i64>,
    last_info_time_s: Option<i64>,
}

/// The mark's value: it names no group.
#[derive(Deserialize)]
struct Mark {
    event_id: String,
    sdk_app_id: String,
    snapshot_id: String,
    started_at_ms: i64,
    sweep_before_ms: i64,
    partition: i32,
    partitions: i32,
}

fn set(field: &str, value: impl Into<String>) -> Write {
    Write { field: field.to_owned(), value: Some(value.into()) }
}

/// What a record's value asks of the store.
pub fn parse(value: &[u8]) -> Result<Change, Skip> {
    #[derive(Deserialize)]
    struct Head {
        schema_version: u64,
        #[serde(rename = "type")]
        kind: Option<String>,
    }
    let head: Head = serde_json::from_slice(value).map_err(|e| Skip::Unreadable(e.to_string()))?;
    match (head.schema_version, head.kind.as_deref()) {
        (2, Some("snapshot_completed")) => {
            let m: Mark = serde_json::from_slice(value).map_err(|e| Skip::Unreadable(e.to_string()))?;
            if m.partitions < 1 || !(0..m.partitions).contains(&m.partition) {
                return Err(Skip::Unreadable(format!("partition {} of {}", m.partition, m.partitions)));
            }
            Ok(Change::Sweep(Sweep {
                sdk_app_id: m.sdk_app_id,
                snapshot_id: m.snapshot_id,
                sweep_before_ms: m.sweep_before_ms,
                stamp: Stamp { event_time_ms: m.started_at_ms, event_id: m.event_id },
                partition: m.partition,
                partitions: m.partitions,
            }))
        }
        (2, Some("snapshot")) => {
            let v: Value = serde_json::from_slice(value).map_err(|e| Skip::Unreadable(e.to_string()))?;
            snapshot(v).map(Change::Updates)
        }
        _ => parse_callback(value).map(Change::from),
    }
}

/// A snapshot's writes, each under the stamp the read can vouch for (docs/directory.md, "Snapshots"):
/// - the profile (name, introduction, notification, face URL) under
///   `min(read_at_ms, max(LastInfoTime, CreateTime) s + 999 ms)`: every profile change is at or before
///   its `LastInfoTime`, so a change in a later second is one the read did not see (even a read
///   that lags), and one made after the request was sent cannot be in it either;
/// - owner, custom fields, member count, type and "not destroyed" under `read_at_ms`: no callback
///   exists for most of them, and whether an owner change moves `LastInfoTime` is undocumented;
///   a read reflects what happened before it was sent;
/// - `created` under `CreateTime` s: a life the consumer never heard begin starts there (one it did
///   hear of has a `created` at or after that instant, which stays).
fn snapshot(v: Value) -> Result<Vec<Update>, Skip> {
    let read = v.read_at_ms.unwrap_or(v.event_time_ms);
    let at = |event_time_ms: i64| Stamp { event_time_ms, event_id: v.event_id.clone() };
    let changed_s = v.last_info_time_s.max(v.created_at_s);
    let profile_at = changed_s.map_or(read, |s| read.min(s.saturating_mul(1000).saturating_add(999)));
    let mut now = Vec::new();
    if let Some(t) = &v.group_type {
        now.push(set(field::GROUP_TYPE, t));
    }
    now.push(Write { field: field::OWNER_ACCOUNT.to_owned(), value: v.owner_account.clone() });
    now.push(Write { field: field::MEMBER_COUNT.to_owned(), value: v.member_count.map(|n| n.to_string()) });
    let custom = v.custom_fields.clone().unwrap_or_default();
    for k in v.custom_field_keys.iter().flatten() {
        now.push(Write { field: format!("{}{k}", field::CUSTOM_PREFIX), value: custom.get(k).cloned() });
    }
    now.push(set(field::DESTROYED, "false"));
    let profile = v.profile.unwrap_or_default();
    let profile: Vec<Write> = field::PROFILE.iter().filter_map(|f| Some(set(f, profile.get(f)?))).collect();
    let update = |stamp: Stamp, writes: Vec<Write>| Update {
        kind: Kind::Snapshot,
        sdk_app_id: v.sdk_app_id.clone(),
        group_id: v.group_id.clone(),
        stamp,
        writes,
    };
    let mut updates = vec![update(at(read), now)];
    if !profile.is_empty() {
        updates.push(update(at(profile_at), profile));
    }
    if let Some(c) = v.created_at_s {
        let created_ms = c.saturating_mul(1000);
        updates.push(update(at(created_ms), vec![set(field::CREATED, created_ms.to_string())]));
    }
    Ok(updates)
}

/// The update a callback's record makes.
fn parse_callback(value: &[u8]) -> Result<Update, Skip> {
    let v: Value = serde_json::from_slice(value).map_err(|e| Skip::Unreadable(e.to_string()))?;
    let mut writes = Vec::new();
    let kind;
    if let Some(t) = &v.group_type {
        writes.push(set(field::GROUP_TYPE, t));
    }
    match (v.schema_version, v.kind.as_deref()) {
        (1, None) => {
            kind = Kind::InfoChanged;
            let changes = v.changes.unwrap_or_default();
            for f in field::PROFILE {
                if let Some(value) = changes.get(f) {
                    writes.push(set(f, value));
                }
            }
        }
        (1, Some(other)) => return Err(Skip::UnknownType(other.to_owned())),
        (2, Some("created")) => {
            kind = Kind::Created;
            // A creation says what the group is. It writes the `created` register, which hides every
            // register older than itself (a GroupId used again inherits nothing from its earlier life,
            // custom fields included); a field it does not carry is written unset all the same, so
            // that the table itself says so.
            writes.push(set(field::CREATED, v.event_time_ms.to_string()));
            let profile = v.profile.unwrap_or_default();
            for f in field::PROFILE {
                writes.push(Write { field: f.to_owned(), value: profile.get(f).cloned() });
            }
            writes.push(Write { field: field::OWNER_ACCOUNT.to_owned(), value: v.owner_account });
            writes.push(Write {
                field: field::INITIAL_MEMBER_COUNT.to_owned(),
                value: v.member_count.map(|n| n.to_string()),
            });
            for (k, value) in v.custom_fields.unwrap_or_default() {
                writes.push(set(&format!("{}{k}", field::CUSTOM_PREFIX), value));
            }
            writes.push(set(field::DESTROYED, "false"));
        }
        (2, Some("owner_changed")) => {
            let owner = v.new_owner_account.ok_or_else(|| Skip::Unreadable("no new_owner_account".into()))?;
            writes.push(set(field::OWNER_ACCOUNT, owner));
            kind = Kind::OwnerChanged;
        }
        (2, Some("destroyed")) => {
            writes.push(set(field::DESTROYED, "true"));
            kind = Kind::Destroyed;
        }
        (2, other) => return Err(Skip::UnknownType(other.unwrap_or("(none)").to_owned())),
        (version, _) => return Err(Skip::UnknownVersion(version)),
    }
    Ok(Update {
        kind,
        sdk_app_id: v.sdk_app_id,
        group_id: v.group_id,
        stamp: Stamp { event_time_ms: v.event_time_ms, event_id: v.event_id },
        writes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(u: &Update) -> Vec<(&str, Option<&str>)> {
        u.writes.iter().map(|w| (w.field.as_str(), w.value.as_deref())).collect()
    }

    #[test]
    fn an_info_change_writes_only_what_changed() {
        let v = br#"{"schema_version":1,"event_id":"a","sdk_app_id":"1","group_id":"g","group_type":"Public",
            "operator_account":null,"changes":{"notification":""},"event_time_ms":5,"received_at_ms":6}"#;
        let u = parse_callback(v).unwrap();
        assert_eq!(fields(&u), [("group_type", Some("Public")), ("notification", Some(""))]);
        assert_eq!(u.stamp, Stamp { event_time_ms: 5, event_id: "a".into() });
        assert_eq!(u.kind, Kind::InfoChanged);
    }

    #[test]
    fn a_creation_sets_the_whole_profile_and_revives_the_group() {
        let v = br#"{"schema_version":2,"type":"created","owner_account":"leckie","profile":{"name":"n"},
            "custom_fields":{"k":"v"},"member_count":2,"event_id":"b","sdk_app_id":"1","group_id":"g",
            "group_type":null,"event_time_ms":5}"#;
        assert_eq!(parse_callback(v).unwrap().kind, Kind::Created);
        assert_eq!(
            fields(&parse_callback(v).unwrap()),
            [
                ("created", Some("5")),
                ("name", Some("n")),
                ("introduction", None),
                ("notification", None),
                ("face_url", None),
                ("owner_account", Some("leckie")),
                ("initial_member_count", Some("2")),
                ("custom:k", Some("v")),
                ("destroyed", Some("false")),
            ]
        );
    }

    #[test]
    fn owner_changes_and_destruction_write_their_register() {
        let o = br#"{"schema_version":2,"type":"owner_changed","new_owner_account":"u2","event_id":"c","sdk_app_id":"1","group_id":"g","event_time_ms":5}"#;
        assert_eq!(fields(&parse_callback(o).unwrap()), [("owner_account", Some("u2"))]);
        assert_eq!(parse_callback(o).unwrap().kind, Kind::OwnerChanged);
        let d = br#"{"schema_version":2,"type":"destroyed","event_id":"d","sdk_app_id":"1","group_id":"g","event_time_ms":5}"#;
        assert_eq!(fields(&parse_callback(d).unwrap()), [("destroyed", Some("true"))]);
        assert_eq!(parse_callback(d).unwrap().kind, Kind::Destroyed);
    }

    #[test]
    fn unknown_members_are_ignored_and_unknown_types_and_versions_skipped() {
        let extra = br#"{"schema_version":2,"type":"destroyed","future":[1],"event_id":"d","sdk_app_id":"1","group_id":"g","event_time_ms":5}"#;
        assert!(parse(extra).is_ok());
        let t = br#"{"schema_version":2,"type":"archived","event_id":"d","sdk_app_id":"1","group_id":"g","event_time_ms":5}"#;
        assert_eq!(parse(t), Err(Skip::UnknownType("archived".into())));
        assert_eq!(parse(t).unwrap_err().reason(), "unknown_type");
        let v = br#"{"schema_version":3,"type":"created","event_id":"d","sdk_app_id":"1","group_id":"g","event_time_ms":5}"#;
        assert_eq!(parse(v), Err(Skip::UnknownVersion(3)));
        assert!(matches!(parse(b"from-java"), Err(Skip::Unreadable(_))));
        assert_eq!(parse(b"from-java").unwrap_err().reason(), "unreadable");
    }
}
