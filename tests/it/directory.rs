//! tim-group-directory end to end: webhooks in through the bridge, out of order, a groups table out;
//! on SQLite and on the run's PostgreSQL server (`helpers::postgres`, started by `scripts/postgres`).

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::json;
use tim_group_directory::{store, Group};

use crate::helpers::*;

/// The directory binary as a child process, killed when dropped.
pub(crate) struct Directory(Child);

impl Directory {
    /// Without a metrics listener: tests run side by side, and the default port is one.
    pub(crate) fn spawn(database_url: &str, topic: &str, consumer_group: &str) -> Self {
        Self::spawn_with_metrics(database_url, topic, consumer_group, "")
    }

    fn spawn_with_metrics(
        database_url: &str,
        topic: &str,
        consumer_group: &str,
        metrics_listen: &str,
    ) -> Self {
        // Static membership: a restart (after a kill -9 too) takes the partitions back at once.
        let child = Command::new(env!("CARGO_BIN_EXE_tim-group-directory"))
            .env_clear()
            .env("DIRECTORY_DATABASE_URL", database_url)
            .env("DIRECTORY_KAFKA_BROKERS", broker().bootstrap())
            .env("DIRECTORY_TOPIC", topic)
            .env("DIRECTORY_CONSUMER_GROUP", consumer_group)
            .env("DIRECTORY_INSTANCE_ID", format!("{consumer_group}-0"))
            .env("DIRECTORY_METRICS_LISTEN", metrics_listen)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(if std::env::var_os("TEST_LOG").is_some() { Stdio::inherit() } else { Stdio::null() })
            .stderr(Stdio::inherit())
            .spawn()
            .expect("tim-group-directory starts");
        Self(child)
    }

    /// `kill -9`, and reaps it.
    fn kill9(&mut self) {
        assert!(Command::new("kill").args(["-KILL", &self.0.id().to_string()]).status().unwrap().success());
        self.0.wait().unwrap();
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        Command::new("kill").args(["-TERM", &self.0.id().to_string()]).status().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "tim-group-directory did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Directory {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn send(bridge: &Bridge, command: &str, body: serde_json::Value) {
    let (status, answer) = bridge.post(&signed_query_for(command, now_secs()), body.to_string()).await;
    assert_eq!(status, 200, "{command}: {answer:?}");
}

/// Polls the table until `until` holds for its groups.
async fn wait_for_groups(url: &str, until: impl Fn(&[Group]) -> bool) -> Vec<Group> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // The database drivers block (PostgreSQL's runs a runtime of its own): off the test's runtime.
        let u = url.to_owned();
        let groups = tokio::task::spawn_blocking(move || store::open(&u).and_then(|mut s| s.groups()))
            .await
            .unwrap()
            .unwrap_or_default();
        if until(&groups) {
            return groups;
        }
        assert!(Instant::now() < deadline, "the table never got there: {groups:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn the_directory_converges_on_the_latest_state_whatever_the_delivery_order() {
    let db = tempfile::tempdir().unwrap();
    converges(&format!("sqlite:{}", db.path().join("groups.db").display())).await;
}

#[tokio::test]
async fn the_directory_converges_on_the_latest_state_whatever_the_delivery_order_on_postgres() {
    let url = tokio::task::spawn_blocking(|| postgres().database()).await.unwrap();
    converges(&url).await;
}

/// The registers and the view on PostgreSQL: the SQL is shared, the dialects are not (row values, the C
/// collation of `event_id`, a boolean `destroyed`).
#[test]
fn postgres_keeps_the_same_registers_and_view_as_sqlite() {
    use tim_group_directory::{Kind, Stamp, Update, Write};
    let update = |time: i64, id: &str, writes: &[(&str, Option<&str>)]| Update {
        kind: Kind::InfoChanged,
        sdk_app_id: "1".into(),
        group_id: "g".into(),
        stamp: Stamp { event_time_ms: time, event_id: id.into() },
        writes: writes
            .iter()
            .map(|(f, v)| Write { field: f.to_string(), value: v.map(str::to_owned) })
            .collect(),
    };
    let updates = [
        update(2, "b", &[("name", Some("second")), ("custom:k", Some("v"))]),
        update(2, "B", &[("name", Some("upper-case id sorts first in C"))]),
        update(1, "z", &[("name", Some("first")), ("destroyed", Some("true")), ("custom:old", Some("x"))]),
        update(0, "a", &[("owner_account", None)]),
        // A new life from (1, "zz") on: what (1, "z") and (0, "a") wrote is hidden.
        update(1, "zz", &[("created", Some("1")), ("destroyed", Some("false"))]),
    ];
    let url = postgres().database();
    let mut pg = store::open(&url).unwrap();
    let mut sqlite = store::open("sqlite::memory:").unwrap();
    for store in [&mut pg, &mut sqlite] {
        store.apply(&updates).unwrap();
    }
    let g = &pg.groups().unwrap()[0];
    assert_eq!(g.name.as_deref(), Some("second"));
    assert!(!g.destroyed);
    assert_eq!((g.owner_account.as_deref(), g.created_at_ms, g.updated_at_ms), (None, Some(1), 2));
    assert_eq!(g.custom_fields, BTreeMap::from([("k".to_owned(), "v".to_owned())]));
    assert_eq!(pg.groups().unwrap(), sqlite.groups().unwrap());
    // Opened again (a restart): the view is replaced in place, and reads the same.
    drop(store::open(&url).unwrap());
    let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let row = client
        .query_one("SELECT name, destroyed, created_at_ms FROM groups WHERE group_id = 'g'", &[])
        .unwrap();
    assert_eq!(
        (row.get::<_, Option<String>>(0), row.get::<_, bool>(1), row.get::<_, Option<i64>>(2)),
        (Some("second".into()), false, Some(1))
    );
}

/// Registers of a few groups in every state the table knows: a profile and custom fields from a
/// creation, a destroyed group, a GroupId used again (its earlier life hidden), a member count from a
/// snapshot, a group seen only through a profile change, and a second app.
fn every_kind_of_group() -> Vec<tim_group_directory::Update> {
    use tim_group_directory::{Kind, Stamp, Update, Write};
    let update = |app: &str, group: &str, time: i64, kind: Kind, writes: &[(&str, Option<&str>)]| Update {
        kind,
        sdk_app_id: app.into(),
        group_id: group.into(),
        stamp: Stamp { event_time_ms: time, event_id: format!("{group}-{time}") },
        writes: writes
            .iter()
            .map(|(f, v)| Write { field: f.to_string(), value: v.map(str::to_owned) })
            .collect(),
    };
    let created = |app, group, time, name| {
        update(
            app,
            group,
            time,
            Kind::Created,
            &[
                ("created", Some("1")),
                ("destroyed", Some("false")),
                ("group_type", Some("Public")),
                ("name", Some(name)),
                ("introduction", None),
                ("notification", Some("")),
                ("face_url", None),
                ("owner_account", Some("leckie")),
                ("initial_member_count", Some("3")),
                ("custom:level", Some("gold")),
            ],
        )
    };
    vec![
        created("1400000000", "@TGS#alive", 10, "alive"),
        update("1400000000", "@TGS#alive", 20, Kind::InfoChanged, &[("face_url", Some("https://f/x.png"))]),
        update("1400000000", "@TGS#alive", 30, Kind::Snapshot, &[("member_count", Some("42"))]),
        created("1400000000", "@TGS#gone", 10, "gone"),
        update("1400000000", "@TGS#gone", 40, Kind::Destroyed, &[("destroyed", Some("true"))]),
        created("1400000000", "@TGS#again", 10, "first life"),
        update("1400000000", "@TGS#again", 15, Kind::InfoChanged, &[("custom:old", Some("x"))]),
        created("1400000000", "@TGS#again", 50, "second life"),
        update("1400000000", "@TGS#changed-only", 60, Kind::InfoChanged, &[("name", Some("n"))]),
        created("1400000001", "@TGS#alive", 70, "other app"),
    ]
}

/// Checks that the rows of the `groups` view (each as a JSON object: column → value) are the groups
/// `tim-group-directory dump` prints for the same database: the same groups, the same columns but
/// `custom_fields` (which only dump and get show), the same values. The dialects' own spellings are
/// the same value: SQLite has no booleans (`destroyed` is 0 or 1), and counts are registers of text.
fn assert_view_is_dump(url: &str, view: Vec<serde_json::Map<String, serde_json::Value>>) {
    use serde_json::Value;
    let key = |row: &serde_json::Map<String, Value>| {
        (row["sdk_app_id"].as_str().unwrap().to_owned(), row["group_id"].as_str().unwrap().to_owned())
    };
    let view: BTreeMap<(String, String), serde_json::Map<String, Value>> =
        view.into_iter().map(|row| (key(&row), row)).collect();
    // Every line as printed (`dump()` keys lines by group id alone; two apps share one here).
    let dumped: Vec<serde_json::Map<String, Value>> = {
        let out = Command::new(env!("CARGO_BIN_EXE_tim-group-directory"))
            .arg("dump")
            .env_clear()
            .env("DIRECTORY_DATABASE_URL", url)
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    };
    assert_eq!(view.len(), dumped.len(), "the view has {} rows, dump {}", view.len(), dumped.len());
    let same = |d: &Value, v: &Value| match (d, v) {
        (Value::Bool(b), Value::Number(n)) => n.as_i64() == Some(*b as i64),
        (Value::Number(n), Value::String(s)) => n.to_string() == *s,
        _ => d == v,
    };
    for row in &dumped {
        let v = view.get(&key(row)).unwrap_or_else(|| panic!("dump's {:?} is not in the view", key(row)));
        let mut dump_columns: Vec<&String> = row.keys().filter(|k| *k != "custom_fields").collect();
        let mut view_columns: Vec<&String> = v.keys().collect();
        dump_columns.sort();
        view_columns.sort();
        assert_eq!(dump_columns, view_columns, "the view's columns are dump's but custom_fields");
        for column in dump_columns {
            assert!(
                same(&row[column], &v[column]),
                "{:?} {column}: dump {}, view {}",
                key(row),
                row[column],
                v[column]
            );
        }
    }
}

/// The README says `sqlite3 groups.db 'SELECT * FROM groups'` reads what `dump` prints: on one
/// database, the view's rows and dump's lines hold the same groups and values (custom fields aside).
#[test]
fn the_groups_view_reads_what_dump_prints_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("groups.db");
    let url = format!("sqlite:{}", path.display());
    store::open(&url).unwrap().apply(&every_kind_of_group()).unwrap();

    let conn = rusqlite::Connection::open(&path).unwrap();
    let mut stmt = conn.prepare("SELECT * FROM groups").unwrap();
    let columns: Vec<String> = stmt.column_names().map(str::to_owned).collect();
    let rows = stmt
        .query_map([], |r| {
            let mut row = serde_json::Map::new();
            for (i, c) in columns.iter().enumerate() {
                let value = match r.get::<_, rusqlite::types::Value>(i)? {
                    rusqlite::types::Value::Null => serde_json::Value::Null,
                    rusqlite::types::Value::Integer(n) => json!(n),
                    rusqlite::types::Value::Real(x) => json!(x),
                    rusqlite::types::Value::Text(t) => json!(t),
                    rusqlite::types::Value::Blob(b) => json!(b),
                };
                row.insert(c.clone(), value);
            }
            Ok(row)
        })
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();

    assert_eq!(rows.len(), 5);
    assert_view_is_dump(&url, rows);
}

#[test]
fn the_groups_view_reads_what_dump_prints_on_postgres() {
    let url = postgres().database();
    store::open(&url).unwrap().apply(&every_kind_of_group()).unwrap();

    let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let rows = client
        .query("SELECT row_to_json(g)::text FROM groups g", &[])
        .unwrap()
        .iter()
        .map(|r| serde_json::from_str(r.get::<_, &str>(0)).unwrap())
        .collect::<Vec<_>>();

    assert_eq!(rows.len(), 5);
    assert_view_is_dump(&url, rows);
}

async fn converges(url: &str) {
    let kafka = broker();
    let _up = kafka.shared().await;
    let spool = tempfile::tempdir().unwrap();
    let bridge = Bridge::spawn(BridgeOptions::new(spool.path())).await;
    let url = url.to_owned();
    let consumer_group = unique("it-directory");
    let mut directory = Directory::spawn(&url, &bridge.topic, &consumer_group);
    let (g, live) = (unique("@TGS#dir"), unique("@TGS#live"));
    let t = 1_700_000_000_000u64;

    // Delivered in this order; made in the order of their EventTime.
    send(&bridge, "Group.CallbackAfterCreateGroup", json!({"GroupId": g, "Type": "Public", "Owner_Account": "u1",
        "Name": "A", "UserDefinedDataList": [{"Key": "tier", "Value": "gold"}], "MemberList": [{"Member_Account": "u1"}],
        "EventTime": t})).await;
    send(
        &bridge,
        "Group.CallbackAfterGroupInfoChanged",
        json!({"GroupId": g, "Name": "C", "EventTime": t + 3000}),
    )
    .await;
    send(
        &bridge,
        "Group.CallbackAfterGroupInfoChanged",
        json!({"GroupId": g, "Name": "B", "EventTime": t + 2000}),
    )
    .await;
    send(
        &bridge,
        "Group.CallbackAfterChangeGroupOwner",
        json!({"GroupId": g, "OldOwner_Account": "u1", "NewOwner_Account": "u2", "EventTime": t + 2500}),
    )
    .await;
    send(
        &bridge,
        "Group.CallbackAfterGroupDestroyed",
        json!({"GroupId": g, "Owner_Account": "u2", "EventTime": t + 4000}),
    )
    .await;
    send(
        &bridge,
        "Group.CallbackAfterGroupInfoChanged",
        json!({"GroupId": g, "Introduction": "late", "EventTime": t + 3500}),
    )
    .await;
    // The same webhook twice, as a retry would deliver it.
    for _ in 0..2 {
        send(
            &bridge,
            "Group.CallbackAfterCreateGroup",
            json!({"GroupId": live, "Type": "Work", "Name": "L", "EventTime": t}),
        )
        .await;
    }
    // A record no version of the bridge wrote: skipped, and what follows it still applied.
    kafka.java_produce(&bridge.topic, &live, "from-java");
    send(
        &bridge,
        "Group.CallbackAfterGroupInfoChanged",
        json!({"GroupId": live, "Notification": "n", "EventTime": t + 1}),
    )
    .await;

    let groups = wait_for_groups(&url, |gs| {
        gs.iter().any(|x| x.group_id == live && x.notification.is_some())
            && gs.iter().any(|x| x.group_id == g && x.destroyed && x.introduction.is_some())
    })
    .await;

    let dead = groups.iter().find(|x| x.group_id == g).unwrap();
    assert_eq!(dead.name.as_deref(), Some("C"), "the older rename, delivered later, lost");
    assert_eq!(dead.owner_account.as_deref(), Some("u2"));
    assert_eq!(dead.introduction.as_deref(), Some("late"));
    assert_eq!(dead.custom_fields.get("tier").map(String::as_str), Some("gold"));
    assert_eq!(dead.initial_member_count, Some(1));
    assert!(dead.destroyed, "an older event delivered after the tombstone does not revive the group");
    assert_eq!(dead.updated_at_ms, (t + 4000) as i64);
    let alive = groups.iter().find(|x| x.group_id == live).unwrap();
    assert_eq!(
        (alive.name.as_deref(), alive.group_type.as_deref(), alive.destroyed),
        (Some("L"), Some("Work"), false)
    );
    assert_eq!(groups.iter().filter(|x| x.group_id == g || x.group_id == live).count(), 2);

    // SIGTERM stops it cleanly; started again in the same consumer group, it resumes.
    assert!(directory.terminate().success());
    send(
        &bridge,
        "Group.CallbackAfterGroupInfoChanged",
        json!({"GroupId": live, "FaceUrl": "https://x/f.png", "EventTime": t + 2}),
    )
    .await;
    let _directory = Directory::spawn(&url, &bridge.topic, &consumer_group);
    let groups =
        wait_for_groups(&url, |gs| gs.iter().any(|x| x.group_id == live && x.face_url.is_some())).await;
    assert_eq!(groups.iter().find(|x| x.group_id == live).unwrap().notification.as_deref(), Some("n"));
}

/// `directory_applied_events_total` by type, and its sum.
fn applied_by_type(text: &str) -> (BTreeMap<String, f64>, f64) {
    let by_type: BTreeMap<String, f64> = tim_group_directory::Kind::ALL
        .iter()
        .map(|k| {
            let name = format!("directory_applied_events_total{{type=\"{}\"}}", k.as_str());
            (k.as_str().to_owned(), sample(text, &name).unwrap_or(0.0))
        })
        .collect();
    let sum = by_type.values().sum();
    (by_type, sum)
}

#[tokio::test]
async fn the_directory_exports_applied_events_by_type_skipped_records_and_a_lag_of_0_once_caught_up() {
    let kafka = broker();
    let _up = kafka.shared().await;
    let spool = tempfile::tempdir().unwrap();
    let bridge = Bridge::spawn(BridgeOptions::new(spool.path())).await;
    let db = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", db.path().join("groups.db").display());
    let port = free_port();
    let _directory = Directory::spawn_with_metrics(
        &url,
        &bridge.topic,
        &unique("it-directory-metrics"),
        &format!("127.0.0.1:{port}"),
    );
    let t = 1_700_000_000_000u64;

    // 3 created, 4 info_changed, 2 owner_changed, 1 destroyed over three groups; and one record no
    // version of the bridge wrote.
    let groups = [unique("@TGS#m0"), unique("@TGS#m1"), unique("@TGS#m2")];
    for (i, g) in groups.iter().enumerate() {
        send(
            &bridge,
            "Group.CallbackAfterCreateGroup",
            json!({"GroupId": g, "Type": "Public", "Owner_Account": "u1", "EventTime": t + i as u64}),
        )
        .await;
    }
    for i in 0..4u64 {
        send(
            &bridge,
            "Group.CallbackAfterGroupInfoChanged",
            json!({"GroupId": groups[i as usize % 3], "Name": format!("n{i}"), "EventTime": t + 10 + i}),
        )
        .await;
    }
    for i in 0..2u64 {
        send(
            &bridge,
            "Group.CallbackAfterChangeGroupOwner",
            json!({"GroupId": groups[i as usize],
            "OldOwner_Account": "u1", "NewOwner_Account": "u2", "EventTime": t + 20 + i}),
        )
        .await;
    }
    send(
        &bridge,
        "Group.CallbackAfterGroupDestroyed",
        json!({"GroupId": groups[2], "Owner_Account": "u1", "EventTime": t + 30}),
    )
    .await;
    kafka.java_produce(&bridge.topic, &groups[0], "from-java");

    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
    let metrics_url = format!("http://127.0.0.1:{port}/metrics");
    let scrape = || async {
        match http.get(&metrics_url).send().await {
            Ok(r) if r.status() == 200 => r.text().await.ok(),
            _ => None,
        }
    };
    let mut last = String::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(text) = scrape().await {
            let caught_up = sample(&text, "directory_lag_records") == Some(0.0)
                && applied_by_type(&text).1 >= 10.0
                && sample(&text, "directory_skipped_records_total{reason=\"unreadable\"}") == Some(1.0);
            last = text;
            if caught_up {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the metrics never showed 10 events applied and a lag of 0:\n{last}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let (by_type, sum) = applied_by_type(&last);
    assert_eq!(
        by_type,
        BTreeMap::from(
            [
                ("created", 3.0),
                ("info_changed", 4.0),
                ("owner_changed", 2.0),
                ("destroyed", 1.0),
                ("snapshot", 0.0),
                ("snapshot_completed", 0.0)
            ]
            .map(|(k, v)| (k.to_owned(), v))
        ),
        "{last}"
    );
    assert_eq!(sum, 10.0);
    for reason in ["unknown_version", "unknown_type"] {
        let name = format!("directory_skipped_records_total{{reason=\"{reason}\"}}");
        assert_eq!(sample(&last, &name), Some(0.0), "{last}");
    }
    assert_eq!(sample(&last, "directory_last_applied_event_time_seconds"), Some((t + 30) as f64 / 1000.0));
    // The table agrees: the metrics count what is in it.
    let table = wait_for_groups(&url, |gs| gs.len() == 3).await;
    assert_eq!(table.iter().filter(|g| g.destroyed).count(), 1);
    let other = http.get(format!("http://127.0.0.1:{port}/")).send().await.unwrap();
    assert_eq!(other.status(), 404);
}

// ---------------------------------------------------------------------------------------------------
// The proof: a random history through two bridges with crashes converges exactly

/// splitmix64: small, seeded, good enough to shuffle a test history; the seed is printed, and
/// `TEST_SEED` replays it.
pub(crate) struct Rng(pub u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    pub(crate) fn percent(&mut self, p: usize) -> bool {
        self.below(100) < p
    }

    pub(crate) fn word(&mut self, what: &str) -> String {
        format!("{what}-{}", self.below(1000))
    }
}

/// One webhook of the history: its command and body.
struct Hook {
    command: &'static str,
    body: serde_json::Value,
}

/// What a history is made of, for the report.
#[derive(Debug, Default)]
struct Counts {
    created: usize,
    recreated: usize,
    info_changed: usize,
    cleared_fields: usize,
    owner_changed: usize,
    destroyed: usize,
    /// Two changes of one group's name in the same millisecond: the greater `event_id` wins.
    ties: usize,
    /// Of those, how many the greater `event_id` decided against the order of the history.
    ties_against_history: usize,
}

/// The `event_id` the bridge gives a webhook (derived from its content).
fn event_id_of(hook: &Hook) -> String {
    let now = now_secs();
    let checked = verifier()
        .check(
            &signed_query_for(hook.command, now),
            hook.body.to_string().as_bytes(),
            tim_kafka_bridge::now_ms(),
        )
        .expect("a valid webhook");
    checked.event().expect("a published command").event_id().as_str().to_owned()
}

/// A random history of `ops` operations over `groups` groups (`@TGS#<prefix><i>`), each with an
/// `EventTime` greater than the one before, and the directory it makes: each operation applied in
/// order, as the groups' owners did them. A `created` starts the group afresh (a GroupId used again
/// inherits nothing); a change sets the fields it carries ("" clears one); `destroyed` sets the tombstone.
fn history(
    rng: &mut Rng,
    prefix: &str,
    ops: usize,
    groups: usize,
) -> (Vec<Hook>, BTreeMap<String, Group>, Counts) {
    const TYPES: [&str; 4] = ["Public", "Private", "ChatRoom", "Work"];
    const KEYS: [&str; 4] = ["tier", "region", "level", "colour"];
    let mut t = tim_kafka_bridge::now_ms() as u64 - 3_600_000;
    let mut truth: BTreeMap<String, Group> = BTreeMap::new();
    let mut hooks = Vec::with_capacity(ops);
    let mut counts = Counts::default();
    // The last name change: (its hook's index, group, new name), for a tie in the same millisecond.
    let mut last_rename: Option<(usize, String, String)> = None;
    for _ in 0..ops {
        if let Some((i, id, name)) = last_rename.take().filter(|_| rng.percent(8)) {
            // Another change of the same group's name in the same millisecond: the stamps tie, and
            // every consumer takes the one with the greater event_id, whatever the order.
            let g = truth.get_mut(&id).expect("renamed before");
            let other = rng.word("Name");
            let body = json!({"CallbackCommand": "Group.CallbackAfterGroupInfoChanged", "GroupId": id,
                "Type": g.group_type, "Operator_Account": "admin", "Name": other, "EventTime": t});
            let hook = Hook { command: "Group.CallbackAfterGroupInfoChanged", body };
            counts.ties += 1;
            counts.info_changed += 1;
            if event_id_of(&hook) > event_id_of(&hooks[i]) {
                g.name = Some(other);
            } else {
                g.name = Some(name);
                counts.ties_against_history += 1;
            }
            hooks.push(hook);
            continue;
        }
        t += 1 + rng.below(3) as u64;
        let id = format!("@TGS#{prefix}{}", rng.below(groups));
        let alive = truth.get(&id).filter(|g| !g.destroyed).cloned();
        let Some(mut g) = alive else {
            // Created, or created again after it was disbanded.
            if truth.contains_key(&id) {
                counts.recreated += 1;
            }
            counts.created += 1;
            let (group_type, owner) = (TYPES[rng.below(TYPES.len())], rng.word("owner"));
            let mut body = json!({"CallbackCommand": "Group.CallbackAfterCreateGroup", "GroupId": id,
                "Type": group_type, "Operator_Account": "admin", "Owner_Account": owner, "EventTime": t});
            let mut g = Group {
                sdk_app_id: APP_ID.into(),
                group_id: id.clone(),
                group_type: Some(group_type.into()),
                owner_account: Some(owner),
                created_at_ms: Some(t as i64),
                updated_at_ms: t as i64,
                ..Group::default()
            };
            for (key, slot, p) in [
                ("Name", &mut g.name, 90),
                ("Introduction", &mut g.introduction, 50),
                ("Notification", &mut g.notification, 50),
                ("FaceUrl", &mut g.face_url, 20),
            ] {
                if rng.percent(p) {
                    let v = if rng.percent(10) { String::new() } else { rng.word(key) };
                    body[key] = v.clone().into();
                    *slot = Some(v);
                }
            }
            let members = 1 + rng.below(5);
            body["MemberList"] = (0..members).map(|m| json!({"Member_Account": format!("m{m}")})).collect();
            g.initial_member_count = Some(members as u64);
            let mut custom = Vec::new();
            for key in KEYS {
                if rng.percent(40) {
                    let v = rng.word(key);
                    custom.push(json!({"Key": key, "Value": v}));
                    g.custom_fields.insert(key.into(), v);
                }
            }
            body["UserDefinedDataList"] = custom.into();
            hooks.push(Hook { command: "Group.CallbackAfterCreateGroup", body });
            truth.insert(id, g);
            continue;
        };
        let group_type = g.group_type.clone().unwrap();
        let roll = rng.below(100);
        let hook = if roll < 60 {
            counts.info_changed += 1;
            let mut body = json!({"CallbackCommand": "Group.CallbackAfterGroupInfoChanged", "GroupId": id,
                "Type": group_type, "Operator_Account": "admin", "EventTime": t});
            // A non-empty subset of the four fields.
            let subset = 1 + rng.below(15);
            for (bit, (key, slot)) in [
                ("Name", &mut g.name),
                ("Introduction", &mut g.introduction),
                ("Notification", &mut g.notification),
                ("FaceUrl", &mut g.face_url),
            ]
            .into_iter()
            .enumerate()
            {
                if subset & (1 << bit) != 0 {
                    let v = if rng.percent(20) {
                        counts.cleared_fields += 1;
                        String::new()
                    } else {
                        rng.word(key)
                    };
                    body[key] = v.clone().into();
                    *slot = Some(v);
                }
            }
            if let Some(name) = body["Name"].as_str() {
                last_rename = Some((hooks.len(), id.clone(), name.to_owned()));
            }
            Hook { command: "Group.CallbackAfterGroupInfoChanged", body }
        } else if roll < 90 {
            counts.owner_changed += 1;
            let new = rng.word("owner");
            let body = json!({"CallbackCommand": "Group.CallbackAfterChangeGroupOwner", "GroupId": id,
                "Type": group_type, "Operator_Account": "admin", "OldOwner_Account": g.owner_account,
                "NewOwner_Account": new, "EventTime": t});
            g.owner_account = Some(new);
            Hook { command: "Group.CallbackAfterChangeGroupOwner", body }
        } else {
            counts.destroyed += 1;
            let body = json!({"CallbackCommand": "Group.CallbackAfterGroupDestroyed", "GroupId": id,
                "Type": group_type, "Operator_Account": "admin", "Owner_Account": g.owner_account,
                "Name": g.name, "EventTime": t});
            g.destroyed = true;
            Hook { command: "Group.CallbackAfterGroupDestroyed", body }
        };
        g.updated_at_ms = t as i64;
        hooks.push(hook);
        truth.insert(id, g);
    }
    (hooks, truth, counts)
}

/// The order of delivery: the history's, with reordering and repeats inside groups, as Tencent's
/// retries and concurrent callbacks deliver one group's changes: `reorder_percent` of the time an event
/// is swapped with the next event of its group (within 400 places), and `repeat_percent` of the time a
/// copy is delivered again right after a later event of its group (a late retry). Returns the indices,
/// how many swaps and late repeats it made.
fn delivery_order(
    rng: &mut Rng,
    hooks: &[Hook],
    reorder_percent: usize,
    repeat_percent: usize,
) -> (Vec<usize>, usize, usize) {
    let group = |i: usize| hooks[i].body["GroupId"].as_str().unwrap_or_default().to_owned();
    let n = hooks.len();
    let mut order: Vec<usize> = (0..n).collect();
    let mut swaps = 0;
    for at in 0..n {
        if rng.percent(reorder_percent) {
            let g = group(order[at]);
            if let Some(next) = (at + 1..n.min(at + 400)).find(|q| group(order[*q]) == g) {
                order.swap(at, next);
                swaps += 1;
            }
        }
    }
    let mut repeats = 0;
    let mut at = 0;
    while at < order.len() {
        if rng.percent(repeat_percent) {
            let g = group(order[at]);
            if let Some(later) = (at + 1..order.len().min(at + 400)).find(|q| group(order[*q]) == g) {
                order.insert(later + 1, order[at]);
                repeats += 1;
            }
        }
        at += 1;
    }
    (order, swaps, repeats)
}

/// Records applied after a newer record of their group, in the topic's (partition) order: what the
/// directory had to get right by stamps, not by arrival.
fn stale_after_newer(records: &[Record]) -> usize {
    let mut newest: std::collections::HashMap<&str, (i64, &str)> = std::collections::HashMap::new();
    let mut stale = 0;
    for r in records {
        let stamp =
            (r.value["event_time_ms"].as_i64().unwrap_or(0), r.value["event_id"].as_str().unwrap_or(""));
        let seen = newest.entry(r.key.as_str()).or_insert(stamp);
        if stamp < *seen {
            stale += 1;
        } else {
            *seen = stamp;
        }
    }
    stale
}

/// POSTs `hook` through the balancer until a bridge answers 200 (a webhook that reaches the killed
/// bridge gets no answer and is sent again, as Tencent's retry would: that may publish it twice).
/// Returns how many attempts failed.
async fn deliver(http: &reqwest::Client, url: &str, hook: &Hook) -> usize {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut failed = 0;
    loop {
        let sent = http
            .post(format!("{url}?{}", signed_query_for(hook.command, now_secs())))
            .header("content-type", "application/json")
            .body(hook.body.to_string())
            .send()
            .await;
        let status = match sent {
            Ok(r) => {
                let s = r.status().as_u16();
                r.bytes().await.map(|_| s).unwrap_or(0)
            }
            Err(_) => 0,
        };
        if status == 200 {
            return failed;
        }
        failed += 1;
        assert!(Instant::now() < deadline, "{} was never answered 200 (last: {status})", hook.body);
        // The next attempt goes to the next bridge; a pause keeps a dead one from being hammered.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Delivers `hooks[i]` for each `i` of `deliveries`, 8 at a time, counting each answered in `answered`;
/// how many attempts failed.
async fn deliver_all(
    http: &reqwest::Client,
    url: &str,
    hooks: &[Hook],
    deliveries: &[usize],
    answered: &std::sync::atomic::AtomicUsize,
) -> usize {
    futures_util::stream::iter(deliveries)
        .map(|i| async move {
            let failed = deliver(http, url, &hooks[*i]).await;
            answered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            failed
        })
        .buffer_unordered(8)
        .fold(0, |failed, f| async move { failed + f })
        .await
}

/// `tim-group-directory dump`: the table, one JSON object per row, by group id.
pub(crate) fn dump(database_url: &str) -> BTreeMap<String, serde_json::Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_tim-group-directory"))
        .arg("dump")
        .env_clear()
        .env("DIRECTORY_DATABASE_URL", database_url)
        .output()
        .expect("tim-group-directory dump runs");
    assert!(out.status.success(), "dump failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let row: serde_json::Value = serde_json::from_str(l).expect("a JSON row");
            (row["group_id"].as_str().expect("a group_id").to_owned(), row)
        })
        .collect()
}

const OPERATIONS: usize = 3000;
const GROUPS: usize = 300;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_random_history_through_two_bridges_with_crashes_converges_exactly_on_sqlite() {
    let db = tempfile::tempdir().unwrap();
    converges_exactly("sqlite", &format!("sqlite:{}", db.path().join("groups.db").display())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_random_history_through_two_bridges_with_crashes_converges_exactly_on_postgres() {
    let url = tokio::task::spawn_blocking(|| postgres().database()).await.unwrap();
    converges_exactly("postgres", &url).await;
}

async fn converges_exactly(db: &str, url: &str) {
    let started = Instant::now();
    let kafka = broker();
    let _up = kafka.shared().await;
    let seed = match std::env::var("TEST_SEED") {
        Ok(s) => s.parse().expect("TEST_SEED is a number"),
        // Each run and each database a history of its own.
        Err(_) => {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
                ^ db.len() as u64
        }
    };
    println!("{db}: seed {seed} (TEST_SEED={seed} replays this history)");
    let mut rng = Rng(seed);
    let prefix = format!("{}p", rng.below(1 << 20));
    let (hooks, truth, counts) = history(&mut rng, &prefix, OPERATIONS, GROUPS);
    let (order, swaps, repeats) = delivery_order(&mut rng, &hooks, 10, 5);

    // Two bridges on one topic behind a round-robin balancer; a fresh connection per webhook, so they
    // alternate; the directory consuming.
    let topic = unique("it-directory-proof");
    let spools = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let mut bridges = Vec::new();
    for spool in &spools {
        let mut opts = BridgeOptions::new(spool.path());
        opts.topic = topic.clone();
        bridges.push(Bridge::spawn(opts).await);
    }
    let balancer = RoundRobin::start(bridges.iter().map(|b| b.port).collect()).await;
    let url_in = balancer.url("/webhook");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let consumer_group = unique("it-directory-proof");
    let mut directory = Directory::spawn(url, &topic, &consumer_group);

    // Up to 8 webhooks in flight at once (more reordering still). The first few hundred, then a wait
    // until the directory has committed some of them (it is consuming); then the rest, and meanwhile,
    // once half of all are answered, one bridge and the directory are killed (-9) under load; once
    // three quarters are, both are started again.
    let answered = std::sync::atomic::AtomicUsize::new(0);
    let send = |deliveries| deliver_all(&http, &url_in, &hooks, deliveries, &answered);
    let warm_up = order.len() / 10;
    let bootstrap = kafka.bootstrap();
    let lag = || {
        let (b, t, g) = (bootstrap.clone(), topic.clone(), consumer_group.clone());
        async move { tokio::task::spawn_blocking(move || consumer_group_lag(&b, &t, &g).ok()).await.unwrap() }
    };
    let mut failed = send(&order[..warm_up]).await;
    wait_for("the directory to commit some of it", Duration::from_secs(60), || async {
        lag().await.is_some_and(|l| l < warm_up as i64)
    })
    .await;
    let answered_at_least = |n: usize| {
        let answered = &answered;
        move || async move { answered.load(std::sync::atomic::Ordering::Relaxed) >= n }
    };
    let chaos = async {
        wait_for("half the webhooks answered", Duration::from_secs(120), answered_at_least(order.len() / 2))
            .await;
        bridges[0].kill9();
        directory.kill9();
        let killed_at = answered.load(std::sync::atomic::Ordering::Relaxed);
        let lag_at_kill = lag().await;
        wait_for("three quarters answered", Duration::from_secs(120), answered_at_least(order.len() * 3 / 4))
            .await;
        let port = bridges[0].port.to_string();
        bridges[0].restart(&[("BRIDGE_LISTEN", &format!("127.0.0.1:{port}"))]).await;
        directory = Directory::spawn(url, &topic, &consumer_group);
        (killed_at, lag_at_kill)
    };
    let (rest, (killed_at, lag_at_kill)) = tokio::join!(send(&order[warm_up..]), chaos);
    failed += rest;
    assert!(killed_at < order.len() * 3 / 4, "the crash came while webhooks were still coming ({killed_at})");

    // Everything answered 200 is in a spool; wait until both spools are empty (all of it on the topic),
    // then until the directory's consumer group has committed all of the topic (lag 0): everything is
    // applied, since it commits only after the batch is in the database.
    for b in &bridges {
        wait_for("the bridges' spools to be forwarded", Duration::from_secs(60), || async {
            sample(&scrape(b).await, "bridge_spool_pending_events") == Some(0.0)
        })
        .await;
    }
    let on_topic = topic_len_on(&bootstrap, &topic);
    let stale = {
        let (t, n) = (topic.clone(), on_topic as usize);
        let records =
            tokio::task::spawn_blocking(move || read_until(&t, Duration::from_secs(60), |r| r.len() >= n))
                .await
                .unwrap();
        stale_after_newer(&records)
    };
    wait_for("the directory's lag to be 0", Duration::from_secs(90), || {
        let (b, t, g) = (bootstrap.clone(), topic.clone(), consumer_group.clone());
        async move {
            tokio::task::spawn_blocking(move || consumer_group_lag(&b, &t, &g))
                .await
                .unwrap()
                .is_ok_and(|l| l == 0)
        }
    })
    .await;

    let u = url.to_owned();
    let table = tokio::task::spawn_blocking(move || dump(&u)).await.unwrap();
    let expected: BTreeMap<String, serde_json::Value> =
        truth.iter().map(|(id, g)| (id.clone(), serde_json::to_value(g).unwrap())).collect();
    let mut differences = Vec::new();
    for id in expected.keys().chain(table.keys().filter(|id| !expected.contains_key(*id))) {
        let (want, got) = (expected.get(id), table.get(id));
        if want != got {
            differences.push(format!("{id}:\n  truth: {want:?}\n  table: {got:?}"));
        }
    }
    println!(
        "{db}: {} operations over {} groups ({counts:?}); {} webhooks delivered ({repeats} repeats, \
         {swaps} swaps within a group, {failed} attempts failed and retried), {on_topic} records on the topic, \
         {stale} of them older than one of their group before them; \
         crashes: 1 bridge and the directory (kill -9 after {killed_at} answers, the directory {lag_at_kill:?} \
         records behind), both restarted; \
         {} rows compared, {} differ; {:.1?}",
        hooks.len(),
        truth.len(),
        order.len(),
        expected.len(),
        differences.len(),
        started.elapsed()
    );
    assert!(
        differences.is_empty(),
        "seed {seed}: the table differs from the history's directory in {} rows; the first:\n{}",
        differences.len(),
        differences[..differences.len().min(5)].join("\n")
    );
    assert_eq!(table.len(), truth.len());
    assert!(
        counts.recreated > 0 && counts.cleared_fields > 0,
        "the history exercises re-creation: {counts:?}"
    );
    assert!(stale >= 100, "only {stale} records came after a newer one of their group");
    assert!(counts.ties > 10 && counts.ties_against_history > 0, "ties by event time: {counts:?}");
    assert!(directory.terminate().success());
}

#[test]
fn the_command_line_names_its_commands_and_variables_and_get_fails_for_an_unknown_group() {
    let bin = env!("CARGO_BIN_EXE_tim-group-directory");
    let help = Command::new(bin).arg("--help").output().unwrap();
    let text = String::from_utf8(help.stdout).unwrap();
    assert!(help.status.success());
    for word in ["dump", "get GROUP_ID", "run"] {
        assert!(text.contains(word), "--help names {word}:\n{text}");
    }
    for (name, _, _) in tim_group_directory::VARIABLES {
        assert!(text.contains(name), "--help lists {name}:\n{text}");
    }
    assert!(text.contains("DIRECTORY_METRICS_LISTEN") && text.contains("/metrics"), "{text}");
    assert_eq!(Command::new(bin).arg("nonsense").status().unwrap().code(), Some(2));
    let bad =
        Command::new(bin).arg("run").env_clear().env("DIRECTORY_METRICS_LISTEN", "nowhere").output().unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("DIRECTORY_METRICS_LISTEN=\"nowhere\""));

    let db = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", db.path().join("groups.db").display());
    let get = Command::new(bin)
        .args(["get", "@TGS#none"])
        .env_clear()
        .env("DIRECTORY_DATABASE_URL", &url)
        .output()
        .unwrap();
    assert_eq!(get.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&get.stderr).contains("no group \"@TGS#none\""));
    assert!(dump(&url).is_empty(), "an empty table dumps nothing");
}
