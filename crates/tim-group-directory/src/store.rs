//! The groups table: one last-writer-wins register per (app, group, field), in SQLite or PostgreSQL.
//!
//! Registers rather than one row per group with a column per field: Tencent promises no order, so each
//! field must keep the stamp of the write it holds, custom fields have keys known only at run time, and
//! one conditional upsert then serves every field on both databases. The `groups` view pivots the
//! registers into a row per group for people and tools that want a table.
//!
//! The upsert only replaces a register with a write of a greater stamp, so applying the same events in
//! any order, any number of times, ends in the same table: replays after a crash and duplicates are
//! harmless. `destroyed` is a register like the others (the tombstone): an older event arriving later
//! still fills in the field it wrote, but cannot bring the group back; only a newer `created` can.
//! Tombstones are kept for that reason.
//!
//! A `created` starts a new life of its GroupId: it writes the `created` register, and a register whose
//! stamp is less than the `created` register's belongs to an earlier life, so it is not shown (the
//! registers of [`visible_sql`]). The rule is in the reading, not in the writing, so it too holds whatever the
//! order: a change older than the latest creation, delivered after it, may still win its register but
//! stays hidden; a custom field of an earlier life, whose key the new creation does not know, is hidden
//! rather than deleted.

use std::collections::BTreeMap;

use rusqlite::OptionalExtension;

use super::update::{field, Change, Sweep, Update};

/// A database failure, with the statement's context.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("SQLite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("PostgreSQL: {0}")]
    Postgres(#[from] postgres::Error),
    #[error("DIRECTORY_DATABASE_URL must start with sqlite: or postgres(ql)://, got {0:?}")]
    UnknownUrl(String),
}

/// A group as `tim-group-directory dump` prints it (one JSON object per line, with these member names):
/// the columns of the `groups` view, plus `custom_fields`, which the view does not have.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Group {
    pub sdk_app_id: String,
    pub group_id: String,
    pub group_type: Option<String>,
    pub name: Option<String>,
    pub introduction: Option<String>,
    pub notification: Option<String>,
    pub face_url: Option<String>,
    pub owner_account: Option<String>,
    pub initial_member_count: Option<u64>,
    /// `MemberNum` as of the latest snapshot.
    pub member_count: Option<u64>,
    pub custom_fields: BTreeMap<String, String>,
    pub destroyed: bool,
    /// The `event_time_ms` of its latest `created` (none seen: `None`, and no register is hidden).
    pub created_at_ms: Option<i64>,
    /// The greatest `event_time_ms` among its shown registers: the time of its latest event.
    pub updated_at_ms: i64,
}

/// Where the registers live.
pub trait Store: Send {
    /// Applies the changes, in order, in one transaction.
    fn apply_changes(&mut self, changes: &[Change]) -> Result<(), StoreError>;
    /// Applies the updates in one transaction.
    fn apply(&mut self, updates: &[Update]) -> Result<(), StoreError> {
        self.apply_changes(&updates.iter().cloned().map(Change::from).collect::<Vec<_>>())
    }
    /// Every group, by app and id.
    fn groups(&mut self) -> Result<Vec<Group>, StoreError>;
}

/// Opens `sqlite:<path>` (`sqlite::memory:` for a throwaway one) or `postgres://…`, creating the table
/// and the view when missing.
pub fn open(url: &str) -> Result<Box<dyn Store>, StoreError> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(Box::new(Postgres::connect(url)?));
    }
    match url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")) {
        Some(path) => Ok(Box::new(Sqlite::open(path)?)),
        None => Err(StoreError::UnknownUrl(url.to_owned())),
    }
}

/// The registers shown: those of a group without a `created` register, and those whose stamp is not less
/// than the `created` register's (the creation's own writes and everything after it). Row values compare
/// `event_id` byte by byte in both databases (BINARY in SQLite, the column's C collation in PostgreSQL).
fn visible_sql() -> String {
    format!(
        "SELECT f.sdk_app_id, f.group_id, f.field, f.value, f.event_time_ms, f.event_id \
         FROM group_fields f LEFT JOIN group_fields c \
         ON c.sdk_app_id = f.sdk_app_id AND c.group_id = f.group_id AND c.field = '{}' \
         WHERE c.field IS NULL OR (f.event_time_ms, f.event_id) >= (c.event_time_ms, c.event_id)",
        field::CREATED
    )
}

/// The `groups` view, for both databases (`destroyed` compares as a boolean in PostgreSQL, 0/1 in
/// SQLite). The columns later versions added (`created_at_ms`, then `member_count`) come last, so that
/// PostgreSQL's `CREATE OR REPLACE VIEW` can add them to the view of an earlier version.
fn view_sql() -> String {
    let column = |f: &str| format!("MAX(CASE WHEN field = '{f}' THEN value END) AS {f}");
    let columns: Vec<String> = [
        field::GROUP_TYPE,
        field::NAME,
        field::INTRODUCTION,
        field::NOTIFICATION,
        field::FACE_URL,
        field::OWNER_ACCOUNT,
        field::INITIAL_MEMBER_COUNT,
    ]
    .iter()
    .map(|f| column(f))
    .collect();
    format!(
        "SELECT sdk_app_id, group_id, {}, \
         COALESCE(MAX(CASE WHEN field = '{d}' THEN value END), 'false') = 'true' AS {d}, \
         MAX(event_time_ms) AS updated_at_ms, \
         MAX(CASE WHEN field = '{c}' THEN event_time_ms END) AS created_at_ms, \
         {} \
         FROM ({}) v GROUP BY sdk_app_id, group_id",
        columns.join(", "),
        column(field::MEMBER_COUNT),
        visible_sql(),
        d = field::DESTROYED,
        c = field::CREATED,
    )
}

/// The conditional upsert, with `$n` placeholders (SQLite reads them as `?n`).
const UPSERT: &str =
    "INSERT INTO group_fields (sdk_app_id, group_id, field, value, event_time_ms, event_id) \
     VALUES ($1, $2, $3, $4, $5, $6) \
     ON CONFLICT (sdk_app_id, group_id, field) DO UPDATE SET \
     value = excluded.value, event_time_ms = excluded.event_time_ms, event_id = excluded.event_id \
     WHERE (excluded.event_time_ms, excluded.event_id) > (group_fields.event_time_ms, group_fields.event_id)";

/// The shown registers of every group, as [`pivot`] takes them.
fn select_sql() -> String {
    format!(
        "SELECT sdk_app_id, group_id, field, value, event_time_ms FROM ({}) v ORDER BY sdk_app_id, group_id, field",
        visible_sql()
    )
}

/// Pivots `(app, group, field, value, time)` rows, sorted by app and group, into groups.
fn pivot(rows: impl IntoIterator<Item = (String, String, String, Option<String>, i64)>) -> Vec<Group> {
    let mut groups: Vec<Group> = Vec::new();
    for (app, group, f, value, time) in rows {
        if groups.last().is_none_or(|g| g.sdk_app_id != app || g.group_id != group) {
            groups.push(Group { sdk_app_id: app, group_id: group, ..Group::default() });
        }
        let g = groups.last_mut().expect("just pushed");
        g.updated_at_ms = g.updated_at_ms.max(time);
        match f.as_str() {
            field::GROUP_TYPE => g.group_type = value,
            field::NAME => g.name = value,
            field::INTRODUCTION => g.introduction = value,
            field::NOTIFICATION => g.notification = value,
            field::FACE_URL => g.face_url = value,
            field::OWNER_ACCOUNT => g.owner_account = value,
            field::INITIAL_MEMBER_COUNT => g.initial_member_count = value.and_then(|v| v.parse().ok()),
            field::MEMBER_COUNT => g.member_count = value.and_then(|v| v.parse().ok()),
            field::DESTROYED => g.destroyed = value.as_deref() == Some("true"),
            field::CREATED => g.created_at_ms = Some(time),
            other => {
                if let (Some(key), Some(value)) = (other.strip_prefix(field::CUSTOM_PREFIX), value) {
                    g.custom_fields.insert(key.to_owned(), value);
                }
            }
        }
    }
    groups
}

/// The groups a sweep may take as destroyed, before the partition filter: of the app, not destroyed,
/// and with no register (shown or hidden: a hidden one is older than a shown `created`) written at or
/// after the sweep's instant. `$1` app, `$2` that instant.
fn sweep_candidates_sql(destroyed_false: &str) -> String {
    format!(
        "SELECT group_id FROM groups WHERE sdk_app_id = $1 AND updated_at_ms < $2 AND destroyed = {destroyed_false} \
         ORDER BY group_id"
    )
}

pub use tim_partition::{murmur2, partition_of};

/// The tombstones of a sweep: one per candidate on the sweep's partition.
fn tombstones(sweep: &Sweep, candidates: Vec<String>) -> Vec<Update> {
    candidates
        .into_iter()
        .filter(|g| partition_of(g.as_bytes(), sweep.partitions) == sweep.partition)
        .map(|group_id| Update {
            kind: super::update::Kind::SnapshotCompleted,
            sdk_app_id: sweep.sdk_app_id.clone(),
            group_id,
            stamp: sweep.stamp.clone(),
            writes: vec![super::update::Write {
                field: field::DESTROYED.to_owned(),
                value: Some("true".into()),
            }],
        })
        .collect()
}

/// SQLite, in WAL mode so that readers (a test, a report) do not block the consumer.
pub struct Sqlite {
    conn: rusqlite::Connection,
}

impl Sqlite {
    pub fn open(path: &str) -> Result<Self, StoreError> {
        let mut conn = if path == ":memory:" {
            rusqlite::Connection::open_in_memory()?
        } else {
            rusqlite::Connection::open(path)?
        };
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS group_fields (
                sdk_app_id TEXT NOT NULL, group_id TEXT NOT NULL, field TEXT NOT NULL, value TEXT,
                event_time_ms INTEGER NOT NULL, event_id TEXT NOT NULL,
                PRIMARY KEY (sdk_app_id, group_id, field));",
        )?;
        // SQLite has no CREATE OR REPLACE VIEW: the view of an earlier version is replaced when its
        // text differs, in one write transaction (two consumers starting at once take turns).
        let view = format!("CREATE VIEW groups AS {}", view_sql());
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let current: Option<String> = tx
            .query_row("SELECT sql FROM sqlite_master WHERE type = 'view' AND name = 'groups'", [], |r| {
                r.get(0)
            })
            .optional()?;
        if current.as_deref() != Some(view.as_str()) {
            tx.execute_batch(&format!("DROP VIEW IF EXISTS groups; {view};"))?;
        }
        tx.commit()?;
        Ok(Self { conn })
    }
}

impl Store for Sqlite {
    fn apply_changes(&mut self, changes: &[Change]) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(&UPSERT.replace('$', "?"))?;
            let mut write = |u: &Update| -> Result<(), StoreError> {
                for w in &u.writes {
                    stmt.execute(rusqlite::params![
                        u.sdk_app_id,
                        u.group_id,
                        w.field,
                        w.value,
                        u.stamp.event_time_ms,
                        u.stamp.event_id
                    ])?;
                }
                Ok(())
            };
            for change in changes {
                match change {
                    Change::Updates(updates) => updates.iter().try_for_each(&mut write)?,
                    Change::Sweep(sweep) => {
                        let candidates = tx
                            .prepare_cached(&sweep_candidates_sql("0").replace('$', "?"))?
                            .query_map(rusqlite::params![sweep.sdk_app_id, sweep.sweep_before_ms], |r| {
                                r.get(0)
                            })?
                            .collect::<Result<Vec<String>, _>>()?;
                        tombstones(sweep, candidates).iter().try_for_each(&mut write)?;
                    }
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn groups(&mut self) -> Result<Vec<Group>, StoreError> {
        let mut stmt = self.conn.prepare(&select_sql())?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(pivot(rows))
    }
}

/// PostgreSQL (no TLS in this reference consumer: keep it on a private network). `event_id` compares in
/// the C collation, byte by byte, as in SQLite, so both order ties the same way.
pub struct Postgres {
    client: postgres::Client,
}

impl Postgres {
    pub fn connect(url: &str) -> Result<Self, StoreError> {
        let mut client = postgres::Client::connect(url, postgres::NoTls)?;
        client.batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS group_fields (
                sdk_app_id TEXT NOT NULL, group_id TEXT NOT NULL, field TEXT NOT NULL, value TEXT,
                event_time_ms BIGINT NOT NULL, event_id TEXT COLLATE \"C\" NOT NULL,
                PRIMARY KEY (sdk_app_id, group_id, field));
             CREATE OR REPLACE VIEW groups AS {};",
            view_sql()
        ))?;
        Ok(Self { client })
    }
}

impl Store for Postgres {
    fn apply_changes(&mut self, changes: &[Change]) -> Result<(), StoreError> {
        let mut tx = self.client.transaction()?;
        let stmt = tx.prepare(UPSERT)?;
        let write = |tx: &mut postgres::Transaction<'_>, u: &Update| -> Result<(), StoreError> {
            for w in &u.writes {
                tx.execute(
                    &stmt,
                    &[
                        &u.sdk_app_id,
                        &u.group_id,
                        &w.field,
                        &w.value,
                        &u.stamp.event_time_ms,
                        &u.stamp.event_id,
                    ],
                )?;
            }
            Ok(())
        };
        for change in changes {
            match change {
                Change::Updates(updates) => {
                    for u in updates {
                        write(&mut tx, u)?;
                    }
                }
                Change::Sweep(sweep) => {
                    let candidates = tx
                        .query(&sweep_candidates_sql("false"), &[&sweep.sdk_app_id, &sweep.sweep_before_ms])?
                        .iter()
                        .map(|r| r.get(0))
                        .collect();
                    for u in tombstones(sweep, candidates) {
                        write(&mut tx, &u)?;
                    }
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn groups(&mut self) -> Result<Vec<Group>, StoreError> {
        let rows = self.client.query(&select_sql(), &[])?;
        Ok(pivot(rows.iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))))
    }
}

#[cfg(test)]
mod tests {
    use super::super::update::{Kind, Stamp, Write};
    use super::*;

    fn update(group: &str, time: i64, id: &str, writes: &[(&str, Option<&str>)]) -> Update {
        Update {
            kind: Kind::InfoChanged,
            sdk_app_id: "1".into(),
            group_id: group.into(),
            stamp: Stamp { event_time_ms: time, event_id: id.into() },
            writes: writes
                .iter()
                .map(|(f, v)| Write { field: f.to_string(), value: v.map(str::to_owned) })
                .collect(),
        }
    }

    fn memory() -> Box<dyn Store> {
        open("sqlite::memory:").unwrap()
    }

    #[test]
    fn a_register_keeps_the_write_of_the_greatest_stamp_whatever_the_order() {
        let a = update("g", 1, "b", &[("name", Some("first"))]);
        let b = update("g", 2, "a", &[("name", Some("second"))]);
        let tie = update("g", 2, "c", &[("name", Some("tie, greater id"))]);
        for order in [[&a, &b, &tie], [&tie, &b, &a], [&b, &tie, &a]] {
            let mut store = memory();
            for u in order {
                store.apply(std::slice::from_ref(u)).unwrap();
            }
            assert_eq!(store.groups().unwrap()[0].name.as_deref(), Some("tie, greater id"));
        }
    }

    #[test]
    fn an_older_event_cannot_bring_back_a_destroyed_group_but_a_newer_creation_can() {
        let mut store = memory();
        store.apply(&[update("g", 5, "d", &[("destroyed", Some("true"))])]).unwrap();
        store.apply(&[update("g", 4, "x", &[("name", Some("late")), ("destroyed", Some("false"))])]).unwrap();
        let g = &store.groups().unwrap()[0];
        assert!(g.destroyed);
        assert_eq!(g.name.as_deref(), Some("late"), "the field still takes its last value before the end");
        store.apply(&[update("g", 9, "y", &[("destroyed", Some("false"))])]).unwrap();
        assert!(!store.groups().unwrap()[0].destroyed);
    }

    #[test]
    fn the_view_shows_one_row_per_group() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("groups.db");
        let mut store = open(&format!("sqlite:{}", path.display())).unwrap();
        store
            .apply(&[
                update("g", 1, "a", &[("name", Some("n")), ("custom:k", Some("v"))]),
                update("h", 2, "b", &[("destroyed", Some("true"))]),
            ])
            .unwrap();
        let conn = rusqlite::Connection::open(&path).unwrap();
        let rows: Vec<(String, Option<String>, bool, i64)> = conn
            .prepare("SELECT group_id, name, destroyed, updated_at_ms FROM groups ORDER BY group_id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(rows, [("g".into(), Some("n".into()), false, 1), ("h".into(), None, true, 2)]);
        assert_eq!(store.groups().unwrap()[0].custom_fields.get("k").map(String::as_str), Some("v"));
    }

    #[test]
    fn a_creation_hides_every_register_of_the_earlier_life_of_its_group_id() {
        let mut store = memory();
        store
            .apply(&[
                update(
                    "g",
                    1,
                    "a",
                    &[("created", Some("1")), ("name", Some("old")), ("custom:tier", Some("gold"))],
                ),
                update("g", 2, "b", &[("introduction", Some("old intro")), ("group_type", Some("Public"))]),
                update("g", 3, "c", &[("destroyed", Some("true"))]),
                update(
                    "g",
                    5,
                    "e",
                    &[("created", Some("5")), ("name", Some("new")), ("destroyed", Some("false"))],
                ),
            ])
            .unwrap();
        let g = &store.groups().unwrap()[0];
        assert_eq!(g.name.as_deref(), Some("new"));
        assert_eq!((g.introduction.as_deref(), g.group_type.as_deref()), (None, None), "not inherited");
        assert!(g.custom_fields.is_empty(), "a custom field of the earlier life is hidden: {g:?}");
        assert_eq!((g.destroyed, g.created_at_ms, g.updated_at_ms), (false, Some(5), 5));
    }

    #[test]
    fn a_change_older_than_the_latest_creation_does_not_leak_into_the_new_life_whenever_it_comes() {
        let mut store = memory();
        store.apply(&[update("g", 5, "e", &[("created", Some("5")), ("name", Some("new"))])]).unwrap();
        // Delivered late: a change of the earlier life, to a field the creation set and to one it did not.
        store
            .apply(&[update("g", 4, "d", &[("name", Some("stale")), ("notification", Some("stale"))])])
            .unwrap();
        store.apply(&[update("g", 3, "c", &[("custom:tier", Some("stale"))])]).unwrap();
        let g = &store.groups().unwrap()[0];
        assert_eq!((g.name.as_deref(), g.notification.as_deref()), (Some("new"), None));
        assert!(g.custom_fields.is_empty());
        assert_eq!(g.updated_at_ms, 5, "hidden registers do not count");
        // A change after the creation shows, even with an event id that sorts first.
        store.apply(&[update("g", 6, "0", &[("notification", Some("fresh"))])]).unwrap();
        assert_eq!(store.groups().unwrap()[0].notification.as_deref(), Some("fresh"));
    }

    #[test]
    fn a_creation_with_the_same_time_and_a_greater_event_id_starts_the_new_life() {
        let mut store = memory();
        store.apply(&[update("g", 5, "b", &[("created", Some("5")), ("name", Some("second"))])]).unwrap();
        store.apply(&[update("g", 5, "a", &[("custom:k", Some("first life"))])]).unwrap();
        let g = &store.groups().unwrap()[0];
        assert_eq!((g.name.as_deref(), g.custom_fields.len()), (Some("second"), 0));
    }

    #[test]
    fn the_view_applies_the_same_rule_and_is_replaced_when_it_is_of_an_earlier_version() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("groups.db");
        {
            // The view an earlier version created: no created_at_ms, no rule.
            let conn = rusqlite::Connection::open(&path).unwrap();
            conn.execute_batch(
                "CREATE TABLE group_fields (sdk_app_id TEXT NOT NULL, group_id TEXT NOT NULL, field TEXT NOT NULL,
                 value TEXT, event_time_ms INTEGER NOT NULL, event_id TEXT NOT NULL,
                 PRIMARY KEY (sdk_app_id, group_id, field));
                 CREATE VIEW groups AS SELECT sdk_app_id, group_id, 1 AS name FROM group_fields;",
            )
            .unwrap();
        }
        let url = format!("sqlite:{}", path.display());
        let mut store = open(&url).unwrap();
        store
            .apply(&[
                update("g", 1, "a", &[("name", Some("old")), ("custom:k", Some("v"))]),
                update("g", 2, "b", &[("created", Some("2")), ("owner_account", Some("u"))]),
            ])
            .unwrap();
        drop(open(&url).unwrap());
        let conn = rusqlite::Connection::open(&path).unwrap();
        let row: (Option<String>, Option<String>, i64, i64) = conn
            .query_row("SELECT name, owner_account, created_at_ms, updated_at_ms FROM groups", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })
            .unwrap();
        assert_eq!(row, (None, Some("u".into()), 2, 2));
        let views: i64 = conn
            .query_row("SELECT COUNT(*) FROM sqlite_master WHERE type = 'view'", [], |r| r.get(0))
            .unwrap();
        assert_eq!(views, 1);
    }

    mod convergence {
        use proptest::prelude::*;

        use super::*;

        fn write() -> impl Strategy<Value = (String, Option<String>)> {
            (
                prop_oneof![
                    Just("name"),
                    Just("owner_account"),
                    Just("destroyed"),
                    Just("custom:k"),
                    Just("created")
                ],
                proptest::option::of("[a-c]{0,2}"),
            )
                .prop_map(|(f, v)| (f.to_owned(), v))
        }

        fn updates() -> impl Strategy<Value = Vec<Update>> {
            // Few distinct times and ids, so that ties and equal stamps happen.
            proptest::collection::vec(
                ("[gh]", 0i64..4, "[ab]", proptest::collection::vec(write(), 1..4)),
                1..12,
            )
            .prop_map(|v| {
                v.into_iter()
                    .map(|(g, t, id, writes)| Update {
                        kind: Kind::InfoChanged,
                        sdk_app_id: "1".into(),
                        group_id: g,
                        // One event id per content: the same id never carries two different writes.
                        stamp: Stamp { event_time_ms: t, event_id: format!("{id}{writes:?}") },
                        writes: writes.into_iter().map(|(field, value)| Write { field, value }).collect(),
                    })
                    .collect()
            })
        }

        /// One event of a group's history, as the bridge publishes it.
        #[derive(Debug, Clone)]
        enum Op {
            Created { name: Option<String>, custom: Vec<(String, String)> },
            Renamed(String),
            Destroyed,
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                (proptest::option::of("[a-c]{0,2}"), proptest::collection::vec(("[kl]", "[a-c]{1,2}"), 0..3))
                    .prop_map(|(name, custom)| Op::Created { name, custom }),
                "[a-c]{0,2}".prop_map(Op::Renamed),
                Just(Op::Destroyed),
            ]
        }

        /// Event `i` of the history: two events share each `event_time_ms`, so ties are broken by
        /// `event_id`, which sorts as `i` does.
        fn record(i: usize, op: &Op) -> Vec<u8> {
            let mut v = serde_json::json!({"sdk_app_id": "1", "group_id": "g", "event_id": format!("{i:03}"),
                "event_time_ms": i / 2});
            match op {
                Op::Created { name, custom } => {
                    v["schema_version"] = 2.into();
                    v["type"] = "created".into();
                    v["profile"] = serde_json::json!({"name": name});
                    v["custom_fields"] =
                        custom.iter().cloned().collect::<BTreeMap<_, _>>().into_iter().collect();
                }
                Op::Renamed(name) => {
                    v["schema_version"] = 1.into();
                    v["changes"] = serde_json::json!({"name": name});
                }
                Op::Destroyed => {
                    v["schema_version"] = 2.into();
                    v["type"] = "destroyed".into();
                }
            }
            v.to_string().into_bytes()
        }

        /// The group the history makes when its events are applied one by one in the order they happened:
        /// a creation starts afresh.
        fn truth(ops: &[Op]) -> Group {
            let mut g = Group { sdk_app_id: "1".into(), group_id: "g".into(), ..Group::default() };
            for (i, op) in ops.iter().enumerate() {
                let t = (i / 2) as i64;
                match op {
                    Op::Created { name, custom } => {
                        g = Group {
                            sdk_app_id: "1".into(),
                            group_id: "g".into(),
                            name: name.clone(),
                            custom_fields: custom.iter().cloned().collect(),
                            created_at_ms: Some(t),
                            ..Group::default()
                        };
                    }
                    Op::Renamed(name) => g.name = Some(name.clone()),
                    Op::Destroyed => g.destroyed = true,
                }
                g.updated_at_ms = t;
            }
            g
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

            #[test]
            fn delivered_in_any_order_with_repeats_a_history_ends_as_applying_it_in_order_does(
                (ops, order) in proptest::collection::vec(op(), 1..14)
                    .prop_flat_map(|ops| { let n = ops.len(); (Just(ops), Just((0..n).collect::<Vec<_>>()).prop_shuffle()) }),
                repeat in 0usize..14,
            ) {
                let updates: Vec<Change> =
                    order.iter().map(|i| crate::update::parse(&record(*i, &ops[*i])).unwrap()).collect();
                let mut store = memory();
                for u in &updates {
                    store.apply_changes(std::slice::from_ref(u)).unwrap();
                }
                store.apply_changes(&updates[..repeat.min(updates.len())]).unwrap();
                prop_assert_eq!(store.groups().unwrap(), vec![truth(&ops)]);
            }

            #[test]
            fn any_order_with_any_repeats_ends_in_the_same_table(
                (events, shuffled) in updates().prop_flat_map(|u| (Just(u.clone()), Just(u).prop_shuffle())),
                repeat in 0usize..12,
            ) {
                let mut in_order = memory();
                for u in &events {
                    in_order.apply(std::slice::from_ref(u)).unwrap();
                }
                let mut scrambled = memory();
                scrambled.apply(&shuffled).unwrap();
                // A replay after a crash: some of it again.
                scrambled.apply(&shuffled[..repeat.min(shuffled.len())]).unwrap();
                prop_assert_eq!(in_order.groups().unwrap(), scrambled.groups().unwrap());
            }
        }
    }

    mod snapshots {
        use super::*;
        use crate::update::parse;

        const S: i64 = 1_700_000_000; // a LastInfoTime, in seconds

        fn snapshot(read_at_ms: i64, last_info_s: i64, fields: serde_json::Value) -> Change {
            let mut v = serde_json::json!({"schema_version": 2, "type": "snapshot", "event_id": format!("s{read_at_ms}"),
                "sdk_app_id": "1", "group_id": "g", "group_type": "Public", "event_time_ms": read_at_ms,
                "snapshot_id": "x", "read_at_ms": read_at_ms, "owner_account": "owner",
                "profile": {"name": "n", "introduction": "", "notification": "", "face_url": ""},
                "custom_fields": {}, "custom_field_keys": ["tier", "level"], "member_count": 7,
                "created_at_s": S - 100, "last_info_time_s": last_info_s});
            for (k, x) in fields.as_object().unwrap() {
                v[k] = x.clone();
            }
            parse(v.to_string().as_bytes()).unwrap()
        }

        fn callback(time: i64, id: &str, value: serde_json::Value) -> Change {
            let mut v = serde_json::json!({"sdk_app_id": "1", "group_id": "g", "event_id": id, "event_time_ms": time});
            for (k, x) in value.as_object().unwrap() {
                v[k] = x.clone();
            }
            parse(v.to_string().as_bytes()).unwrap()
        }

        fn renamed(time: i64, id: &str, name: &str) -> Change {
            callback(time, id, serde_json::json!({"schema_version": 1, "changes": {"name": name}}))
        }

        /// The group after applying `changes` in every order given.
        fn after(orders: &[&[&Change]]) -> Group {
            let mut seen: Option<Group> = None;
            for order in orders {
                let mut store = memory();
                for c in *order {
                    store.apply_changes(std::slice::from_ref(*c)).unwrap();
                }
                let g = store.groups().unwrap().remove(0);
                if let Some(first) = &seen {
                    assert_eq!(&g, first, "another order, another table");
                }
                seen = Some(g);
            }
            seen.unwrap()
        }

        #[test]
        fn a_group_older_than_the_bridge_appears_with_every_field_and_its_member_count() {
            let s = snapshot(
                S * 1000 + 5000,
                S,
                serde_json::json!({"custom_fields": {"tier": "gold"}, "profile": {"name": "n", "introduction": "i", "notification": "", "face_url": "f"}}),
            );
            let g = after(&[&[&s]]);
            assert_eq!(
                (g.name.as_deref(), g.introduction.as_deref(), g.face_url.as_deref()),
                (Some("n"), Some("i"), Some("f"))
            );
            assert_eq!(
                (g.owner_account.as_deref(), g.member_count, g.group_type.as_deref()),
                (Some("owner"), Some(7), Some("Public"))
            );
            assert_eq!(g.custom_fields, BTreeMap::from([("tier".to_owned(), "gold".to_owned())]));
            assert_eq!(
                (g.destroyed, g.created_at_ms, g.initial_member_count),
                (false, Some((S - 100) * 1000), None)
            );
        }

        #[test]
        fn a_snapshot_wins_over_the_changes_it_reflects_and_loses_to_those_after_its_read() {
            let before = renamed(S * 1000 - 3000, "a", "heard before");
            // Read at S+5 s; the last profile change (its callback lost) was in second S.
            let s = snapshot(S * 1000 + 5000, S, serde_json::json!({}));
            let after_read = renamed(S * 1000 + 6000, "b", "changed after the read");
            let g = after(&[
                &[&before, &s, &after_read],
                &[&after_read, &s, &before],
                &[&s, &after_read, &before],
            ]);
            assert_eq!(g.name.as_deref(), Some("changed after the read"));
            let g = after(&[&[&before, &s], &[&s, &before]]);
            assert_eq!(g.name.as_deref(), Some("n"), "the lost change the snapshot saw");
        }

        #[test]
        fn in_the_second_of_the_read_a_change_after_the_request_was_sent_wins_and_one_before_loses() {
            // Read mid-second S (at .500), LastInfoTime S: a change at .300 is in it, one at .800 is not.
            let s = snapshot(S * 1000 + 500, S, serde_json::json!({}));
            let early = renamed(S * 1000 + 300, "e", "before the read, older than what it saw");
            let late = renamed(S * 1000 + 800, "l", "after the read");
            assert_eq!(after(&[&[&early, &s], &[&s, &early]]).name.as_deref(), Some("n"));
            assert_eq!(after(&[&[&late, &s], &[&s, &late]]).name.as_deref(), Some("after the read"));
        }

        #[test]
        fn a_read_that_lags_cannot_undo_a_profile_change_of_a_later_second() {
            // Sent at S+3 s but served from a replica that had not seen the change of second S+1.
            let s = snapshot(S * 1000 + 3000, S, serde_json::json!({}));
            let missed = renamed((S + 1) * 1000 + 5, "m", "missed by the lagging read");
            assert_eq!(
                after(&[&[&missed, &s], &[&s, &missed]]).name.as_deref(),
                Some("missed by the lagging read")
            );
        }

        #[test]
        fn the_owner_follows_the_read_time_whether_or_not_an_owner_change_moves_last_info_time() {
            let owner = |t: i64, id: &str, o: &str| {
                callback(
                    t,
                    id,
                    serde_json::json!({"schema_version": 2, "type": "owner_changed", "new_owner_account": o}),
                )
            };
            // LastInfoTime did not move for the owner changes (second S - 50), the read is at S s.
            let s = snapshot(S * 1000, S - 50, serde_json::json!({"owner_account": "lost new owner"}));
            let heard = owner(S * 1000 - 20_000, "o1", "heard, then replaced by a lost change");
            let later = owner(S * 1000 + 10, "o2", "after the read");
            assert_eq!(
                after(&[&[&heard, &s], &[&s, &heard]]).owner_account.as_deref(),
                Some("lost new owner")
            );
            assert_eq!(
                after(&[&[&later, &s], &[&s, &later]]).owner_account.as_deref(),
                Some("after the read")
            );
        }

        #[test]
        fn custom_fields_asked_for_and_absent_are_unset_and_others_are_left_alone() {
            let created = callback(
                (S - 100) * 1000 + 10,
                "c",
                serde_json::json!({"schema_version": 2, "type": "created", "profile": {}, "custom_fields": {"tier": "gold", "level": "3", "color": "red"}}),
            );
            let s = snapshot(S * 1000, S, serde_json::json!({"custom_fields": {"level": "4"}}));
            let g = after(&[&[&created, &s], &[&s, &created]]);
            let want = [("color", "red"), ("level", "4")].map(|(k, v)| (k.to_owned(), v.to_owned()));
            assert_eq!(g.custom_fields, BTreeMap::from(want));
            assert_eq!(
                g.created_at_ms,
                Some((S - 100) * 1000 + 10),
                "the creation heard of stays the group's"
            );
        }

        #[test]
        fn a_destruction_after_the_read_wins_and_one_before_it_means_the_group_was_created_again() {
            let destroyed =
                |t: i64| callback(t, "d", serde_json::json!({"schema_version": 2, "type": "destroyed"}));
            let s = snapshot(S * 1000, S - 100, serde_json::json!({}));
            let g = after(&[&[&destroyed(S * 1000 + 1), &s], &[&s, &destroyed(S * 1000 + 1)]]);
            assert!(g.destroyed);
            // Destroyed at S-500 s, alive in a read at S s created at S-100 s (its created callback lost).
            let old = renamed((S - 600) * 1000, "o", "old life");
            let g = after(&[
                &[&old, &destroyed((S - 500) * 1000), &s],
                &[&s, &destroyed((S - 500) * 1000), &old],
            ]);
            assert_eq!(
                (g.destroyed, g.name.as_deref(), g.created_at_ms),
                (false, Some("n"), Some((S - 100) * 1000))
            );
        }

        #[test]
        fn a_mark_destroys_the_quiet_groups_of_its_partition_and_app_that_the_snapshot_did_not_list() {
            let mut store = memory();
            let info = |app: &str, group: &str, t: i64| {
                let v = serde_json::json!({"schema_version": 1, "sdk_app_id": app, "group_id": group, "event_id": format!("{group}{t}"),
                    "event_time_ms": t, "changes": {"name": group}});
                parse(v.to_string().as_bytes()).unwrap()
            };
            let start = S * 1000;
            let groups: Vec<String> = (0..40).map(|i| format!("@TGS#{i}")).collect();
            for g in &groups {
                store.apply_changes(&[info("1", g, start - 120_000)]).unwrap();
            }
            // On the swept partition: one group changed after the margin began (it may have been created
            // during the listing), and another app's group as quiet as the rest.
            let on_1: Vec<&String> = groups.iter().filter(|g| partition_of(g.as_bytes(), 3) == 1).collect();
            let (recent, other_app) = (on_1[0].clone(), on_1[1].clone());
            store
                .apply_changes(&[info("1", &recent, start - 30_000), info("2", &other_app, start - 120_000)])
                .unwrap();
            let mark = serde_json::json!({"schema_version": 2, "type": "snapshot_completed", "event_id": "m", "sdk_app_id": "1",
                "snapshot_id": "x", "started_at_ms": start, "sweep_before_ms": start - 60_000, "groups": 0,
                "partition": 1, "partitions": 3, "event_time_ms": start + 9000, "received_at_ms": start + 9000});
            store.apply_changes(&[parse(mark.to_string().as_bytes()).unwrap()]).unwrap();
            let swept: Vec<(String, String)> = store
                .groups()
                .unwrap()
                .into_iter()
                .filter(|g| g.destroyed)
                .map(|g| (g.sdk_app_id, g.group_id))
                .collect();
            let mut want: Vec<(String, String)> = groups
                .iter()
                .filter(|g| partition_of(g.as_bytes(), 3) == 1 && **g != recent)
                .map(|g| ("1".to_owned(), g.clone()))
                .collect();
            want.sort();
            assert!(want.len() > 5, "{want:?}");
            assert_eq!(swept, want);
            let others =
                store.groups().unwrap().into_iter().filter(|g| g.sdk_app_id == "2").collect::<Vec<_>>();
            assert_eq!((others.len(), others[0].destroyed), (1, false), "another app's group stays");
        }
    }

    #[test]
    fn a_url_of_another_database_is_refused() {
        assert!(matches!(open("mysql://x").err(), Some(StoreError::UnknownUrl(_))));
    }
}
