//! `tim-kafka-bridge snapshot` against the fake Tencent REST API (tests/it/tencent.rs) and a real Kafka,
//! and the proof that tim-group-directory, given a snapshot, ends equal to Tencent's state.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::delivery::assert_valid;
use crate::directory::{dump, Directory, Rng};
use crate::helpers::*;
use crate::tencent::{FakeGroup, FakeTencent, Inject, State};

const KEY: &str = "it-secret-key-5bd2850fff3ecb11";
const ADMIN: &str = "administrator";
const CUSTOM_KEYS: [&str; 4] = ["tier", "region", "level", "colour"];
const TYPES: [&str; 4] = ["Public", "Private", "ChatRoom", "Work"];

fn app_id() -> u64 {
    APP_ID.parse().unwrap()
}

/// `tim-kafka-bridge snapshot` against `fake`, publishing on `topic`, with `extra` variables.
fn snapshot_command(fake: &FakeTencent, topic: &str, key: &str, extra: &[(&str, &str)]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tim-kafka-bridge"));
    c.arg("snapshot")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("BRIDGE_SDK_APP_ID", APP_ID)
        .env("BRIDGE_KAFKA_BROKERS", broker().bootstrap())
        .env("BRIDGE_TOPIC", topic)
        .env("BRIDGE_TENCENT_API_URL", fake.url())
        .env("BRIDGE_TENCENT_ADMIN", ADMIN)
        .env("BRIDGE_TENCENT_SECRET_KEY", key)
        .env("BRIDGE_TENCENT_CUSTOM_FIELDS", CUSTOM_KEYS.join(","))
        .env("BRIDGE_LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in extra {
        c.env(k, v);
    }
    c
}

/// Runs the command to its end off the test's runtime, printing what it said with `TEST_LOG`.
async fn run(mut c: Command) -> Output {
    let out = tokio::task::spawn_blocking(move || c.output().expect("the snapshot runs")).await.unwrap();
    if std::env::var_os("TEST_LOG").is_some() {
        eprintln!("snapshot stdout:\n{}", String::from_utf8_lossy(&out.stdout));
        eprintln!("snapshot stderr:\n{}", String::from_utf8_lossy(&out.stderr));
    }
    out
}

/// A group with random fields, created at `t` (ms).
fn random_group(rng: &mut Rng, id: String, t: i64) -> FakeGroup {
    let mut custom = BTreeMap::new();
    for k in CUSTOM_KEYS {
        if rng.percent(40) {
            custom.insert(k.to_owned(), rng.word(k));
        }
    }
    let mut text = |what: &str, p: usize| if rng.percent(p) { rng.word(what) } else { String::new() };
    FakeGroup {
        id,
        alive: true,
        group_type: String::new(),
        name: text("name", 90),
        introduction: text("intro", 50),
        notification: text("notice", 50),
        face_url: text("face", 20),
        owner: text("owner", 100),
        custom,
        member_num: 0,
        create_time_s: t / 1000,
        last_info_time_s: t / 1000,
        info_seq: 1,
    }
    .typed(TYPES[rng.below(TYPES.len())], 1 + rng.below(200) as u64)
}

trait Typed {
    fn typed(self, group_type: &str, members: u64) -> Self;
}

impl Typed for FakeGroup {
    fn typed(mut self, group_type: &str, members: u64) -> Self {
        self.group_type = group_type.to_owned();
        self.member_num = members;
        self
    }
}

/// One callback Tencent would send, and whether it reached the bridge.
#[derive(Clone)]
struct Hook {
    command: &'static str,
    body: Value,
}

fn created_hook(g: &FakeGroup, t: i64) -> Hook {
    let mut body = json!({"CallbackCommand": "Group.CallbackAfterCreateGroup", "GroupId": g.id, "Type": g.group_type,
        "Operator_Account": "admin", "Owner_Account": g.owner, "EventTime": t,
        "MemberList": (0..g.member_num.min(5)).map(|m| json!({"Member_Account": format!("m{m}")})).collect::<Vec<_>>(),
        "UserDefinedDataList": g.custom.iter().map(|(k, v)| json!({"Key": k, "Value": v})).collect::<Vec<_>>()});
    // Tencent's creation callback carries the fields given at creation: the empty ones are left out.
    for (k, v) in [
        ("Name", &g.name),
        ("Introduction", &g.introduction),
        ("Notification", &g.notification),
        ("FaceUrl", &g.face_url),
    ] {
        if !v.is_empty() {
            body[k] = v.clone().into();
        }
    }
    Hook { command: "Group.CallbackAfterCreateGroup", body }
}

/// What the history did, for the report.
#[derive(Debug, Default)]
struct Counts {
    before_the_bridge: usize,
    created: usize,
    info_changed: usize,
    owner_changed: usize,
    destroyed: usize,
    custom_changed_without_callback: usize,
    member_count_changed_without_callback: usize,
    callbacks: usize,
    lost: BTreeMap<&'static str, usize>,
}

/// One operation at `t` on a random group of `ids`, applied to Tencent's state; the callback it makes,
/// if any. `owner_moves_last_info_time`: whether an owner or custom-field change moves LastInfoTime
/// (undocumented: the proof runs once each way).
fn operate(
    s: &mut State,
    rng: &mut Rng,
    ids: &[String],
    t: i64,
    owner_moves_last_info_time: bool,
    counts: &mut Counts,
) -> Option<Hook> {
    let id = ids[rng.below(ids.len())].clone();
    let Some(g) = s.alive_mut(&id) else {
        counts.created += 1;
        let g = random_group(rng, id, t);
        let hook = created_hook(&g, t);
        s.create(g);
        return Some(hook);
    };
    let roll = rng.below(100);
    let head = |command| json!({"CallbackCommand": command, "GroupId": g.id, "Type": g.group_type, "Operator_Account": "admin", "EventTime": t});
    if roll < 45 {
        counts.info_changed += 1;
        let mut body = head("Group.CallbackAfterGroupInfoChanged");
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
                let v = if rng.percent(20) { String::new() } else { rng.word(key) };
                body[key] = v.clone().into();
                *slot = v;
            }
        }
        g.last_info_time_s = t / 1000;
        g.info_seq += 1;
        Some(Hook { command: "Group.CallbackAfterGroupInfoChanged", body })
    } else if roll < 65 {
        counts.owner_changed += 1;
        let mut body = head("Group.CallbackAfterChangeGroupOwner");
        let new = rng.word("owner");
        body["OldOwner_Account"] = g.owner.clone().into();
        body["NewOwner_Account"] = new.clone().into();
        g.owner = new;
        if owner_moves_last_info_time {
            g.last_info_time_s = t / 1000;
            g.info_seq += 1;
        }
        Some(Hook { command: "Group.CallbackAfterChangeGroupOwner", body })
    } else if roll < 75 {
        // No callback exists for a custom field changed after creation.
        counts.custom_changed_without_callback += 1;
        let k = CUSTOM_KEYS[rng.below(CUSTOM_KEYS.len())];
        if rng.percent(25) {
            g.custom.remove(k);
        } else {
            g.custom.insert(k.to_owned(), rng.word(k));
        }
        if owner_moves_last_info_time {
            g.last_info_time_s = t / 1000;
            g.info_seq += 1;
        }
        None
    } else if roll < 87 {
        counts.member_count_changed_without_callback += 1;
        g.member_num = 1 + rng.below(500) as u64;
        None
    } else {
        counts.destroyed += 1;
        let mut body = head("Group.CallbackAfterGroupDestroyed");
        body["Owner_Account"] = g.owner.clone().into();
        body["Name"] = g.name.clone().into();
        g.alive = false;
        Some(Hook { command: "Group.CallbackAfterGroupDestroyed", body })
    }
}

/// POSTs each hook to the bridge, 8 at a time, each until it is answered 200.
async fn deliver(bridge: &Bridge, hooks: &[Hook]) {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let url = bridge.url("/webhook");
    futures_util::stream::iter(hooks)
        .for_each_concurrent(8, |h| {
            let (http, url) = (&http, &url);
            async move {
                let deadline = Instant::now() + Duration::from_secs(30);
                loop {
                    let sent = http
                        .post(format!("{url}?{}", signed_query_for(h.command, now_secs())))
                        .header("content-type", "application/json")
                        .body(h.body.to_string())
                        .send()
                        .await;
                    if sent.is_ok_and(|r| r.status() == 200) {
                        return;
                    }
                    assert!(Instant::now() < deadline, "{} was never answered 200", h.body);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        })
        .await;
}

/// The differences between the directory's table and Tencent's state. Every group Tencent has alive is
/// a row with the same fields (Tencent has no "unset": an empty string is), its member count too unless
/// its life began after the snapshot listed (no callback carries it: `skip_member_count`); every group
/// Tencent no longer has is, if the table knows it at all, destroyed; the table has no other group.
fn differences(
    s: &State,
    table: &BTreeMap<String, Value>,
    skip_member_count: &HashSet<String>,
) -> Vec<String> {
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    let mut out = Vec::new();
    let mut known = BTreeSet::new();
    for g in s.latest() {
        known.insert(g.id.clone());
        let row = table.get(&g.id);
        if !g.alive {
            if let Some(row) = row.filter(|r| r["destroyed"] != true) {
                out.push(format!("{}: destroyed at Tencent, not in the table: {row}", g.id));
            }
            continue;
        }
        let Some(row) = row else {
            out.push(format!("{}: alive at Tencent, missing from the table", g.id));
            continue;
        };
        let custom: BTreeMap<String, String> =
            serde_json::from_value(row["custom_fields"].clone()).unwrap_or_default();
        let checks = [
            ("destroyed", row["destroyed"].to_string(), "false".to_owned()),
            ("group_type", text(&row["group_type"]), g.group_type.clone()),
            ("name", text(&row["name"]), g.name.clone()),
            ("introduction", text(&row["introduction"]), g.introduction.clone()),
            ("notification", text(&row["notification"]), g.notification.clone()),
            ("face_url", text(&row["face_url"]), g.face_url.clone()),
            ("owner_account", text(&row["owner_account"]), g.owner.clone()),
            ("custom_fields", format!("{custom:?}"), format!("{:?}", g.custom)),
        ];
        for (field, got, want) in checks {
            if got != want {
                out.push(format!("{}: {field} is {got:?}, Tencent has {want:?}", g.id));
            }
        }
        if !skip_member_count.contains(&g.id) && row["member_count"].as_u64() != Some(g.member_num) {
            out.push(format!(
                "{}: member_count is {}, Tencent has {}",
                g.id, row["member_count"], g.member_num
            ));
        }
    }
    for id in table.keys().filter(|id| !known.contains(*id)) {
        out.push(format!("{id}: in the table, never at Tencent"));
    }
    out
}

const BEFORE_THE_BRIDGE: usize = 1500;
const IDS: usize = 1200;
const OPERATIONS: usize = 3000;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_a_snapshot_taken_while_changes_arrive_the_directory_equals_tencent_on_sqlite() {
    let db = tempfile::tempdir().unwrap();
    reconciles("sqlite", &format!("sqlite:{}", db.path().join("groups.db").display()), true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_a_snapshot_taken_while_changes_arrive_the_directory_equals_tencent_on_postgres() {
    let url = tokio::task::spawn_blocking(|| postgres().database()).await.unwrap();
    reconciles("postgres", &url, false).await;
}

/// The proof. Tencent (the fake) holds groups older than the bridge; a random history then changes
/// them and creates and destroys more, with ~15 % of the callbacks lost and custom fields and member
/// counts changed without any; then a snapshot runs while changes keep arriving (callbacks delivered,
/// some in the second of a read), a group destroyed between the list and its profile and one created
/// after the listing. Once the snapshot and the callbacks are consumed, the directory equals Tencent.
async fn reconciles(db: &str, url: &str, owner_moves_last_info_time: bool) {
    let started = Instant::now();
    let kafka = broker();
    let _up = kafka.shared().await;
    let seed = match std::env::var("TEST_SEED") {
        Ok(s) => s.parse().expect("TEST_SEED is a number"),
        Err(_) => tim_kafka_bridge::now_ms() as u64 ^ db.len() as u64,
    };
    println!("{db}: seed {seed} (TEST_SEED={seed} replays this history); LastInfoTime moves on owner changes: {owner_moves_last_info_time}");
    let mut rng = Rng(seed);
    let fake = FakeTencent::start(app_id(), ADMIN, KEY);
    let prefix = format!("{}s", rng.below(1 << 20));
    let now = tim_kafka_bridge::now_ms();
    let mut counts = Counts::default();

    // Groups older than the bridge: no callback will ever have named them.
    let old: Vec<String> = (0..BEFORE_THE_BRIDGE).map(|i| format!("@TGS#{prefix}o{i}")).collect();
    fake.with(|s| {
        for (i, id) in old.iter().enumerate() {
            let t = now - 30 * 86_400_000 + i as i64 * 1000;
            s.create(random_group(&mut rng, id.clone(), t));
        }
    });
    counts.before_the_bridge = old.len();

    // The history, in the past (the last of it more than the snapshot's sweep margin ago): over the
    // old groups and new ids; ~15 % of the callbacks lost.
    let mut ids: Vec<String> = (0..IDS).map(|i| format!("@TGS#{prefix}n{i}")).collect();
    ids.extend(old.iter().cloned());
    let mut t = now - 2 * 3_600_000;
    let mut delivered = Vec::new();
    fake.with(|s| {
        for _ in 0..OPERATIONS {
            t += 1 + rng.below(3) as i64;
            if let Some(hook) = operate(s, &mut rng, &ids, t, owner_moves_last_info_time, &mut counts) {
                counts.callbacks += 1;
                if rng.percent(15) {
                    *counts
                        .lost
                        .entry(hook.command.trim_start_matches("Group.CallbackAfter"))
                        .or_default() += 1;
                } else {
                    delivered.push(hook);
                }
            }
        }
    });

    let topic = unique("it-snapshot-proof");
    let spool = tempfile::tempdir().unwrap();
    let mut opts = BridgeOptions::new(spool.path());
    opts.topic = topic.clone();
    let bridge = Bridge::spawn(opts).await;
    let directory = Directory::spawn(url, &topic, &unique("it-snapshot-proof"));
    deliver(&bridge, &delivered).await;

    // During the snapshot: at its first profile read, the last group of the list (read last) is
    // destroyed and a new group is created; and every 20 ms a profile or owner change, each with its
    // callback delivered, until the snapshot has ended.
    let during: Arc<Mutex<Vec<Hook>>> = Arc::default();
    let created_during: Arc<Mutex<HashSet<String>>> = Arc::default();
    {
        let (during, created_during, prefix) = (during.clone(), created_during.clone(), prefix.clone());
        let mut rng = Rng(seed ^ 0x5eed);
        fake.with(move |s| {
            s.on_first_info_call = Some(Box::new(move |s: &mut State| {
                let t = tim_kafka_bridge::now_ms();
                let last = s.groups.iter().rev().find(|g| g.alive).unwrap().id.clone();
                let g = s.alive_mut(&last).unwrap();
                g.alive = false;
                let body = json!({"CallbackCommand": "Group.CallbackAfterGroupDestroyed", "GroupId": last,
                    "Type": g.group_type, "Owner_Account": g.owner, "EventTime": t});
                let new = random_group(&mut rng, format!("@TGS#{prefix}during"), t);
                let mut hooks = during.lock().unwrap();
                hooks.push(Hook { command: "Group.CallbackAfterGroupDestroyed", body });
                hooks.push(created_hook(&new, t));
                created_during.lock().unwrap().insert(new.id.clone());
                s.create(new);
            }));
            // Frequency limits and transient failures now and then, as Tencent answers under load.
            s.inject_info =
                vec![Inject { every: 9, at: 4, code: 60007 }, Inject { every: 13, at: 6, code: 10002 }];
            s.inject_list = vec![Inject { every: 4, at: 2, code: 70169 }];
        });
    }
    let snapshot = snapshot_command(
        &fake,
        &topic,
        KEY,
        &[("BRIDGE_TENCENT_PAGE_SIZE", "1000"), ("BRIDGE_TENCENT_INFO_RATE", "20")],
    );
    let snapshot = tokio::task::spawn_blocking({
        let mut c = snapshot;
        move || c.output().expect("the snapshot runs")
    });
    let mut live_rng = Rng(seed ^ 0x11fe);
    let mut live_changes: Vec<(String, i64)> = Vec::new();
    let mut sent = 0;
    while !snapshot.is_finished() {
        let t = tim_kafka_bridge::now_ms();
        let hook = fake.with(|s| {
            let alive: Vec<String> = ids.iter().filter(|id| s.alive(id).is_some()).cloned().collect();
            let g = s.alive_mut(&alive[live_rng.below(alive.len())]).unwrap();
            let id = g.id.clone();
            let hook = if live_rng.percent(70) {
                let name = live_rng.word("live");
                g.name = name.clone();
                g.last_info_time_s = t / 1000;
                g.info_seq += 1;
                Hook { command: "Group.CallbackAfterGroupInfoChanged", body: json!({"CallbackCommand": "Group.CallbackAfterGroupInfoChanged",
                    "GroupId": id, "Type": g.group_type, "Operator_Account": "admin", "Name": name, "EventTime": t}) }
            } else {
                let new = live_rng.word("live-owner");
                let body = json!({"CallbackCommand": "Group.CallbackAfterChangeGroupOwner", "GroupId": id, "Type": g.group_type,
                    "Operator_Account": "admin", "OldOwner_Account": g.owner, "NewOwner_Account": new, "EventTime": t});
                g.owner = new;
                if owner_moves_last_info_time {
                    g.last_info_time_s = t / 1000;
                    g.info_seq += 1;
                }
                Hook { command: "Group.CallbackAfterChangeGroupOwner", body }
            };
            live_changes.push((id, t));
            hook
        });
        let mut batch = vec![hook];
        batch.extend(during.lock().unwrap().drain(..));
        sent += batch.len();
        deliver(&bridge, &batch).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let out = snapshot.await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "the snapshot failed: {stderr}\n{stdout}");
    let late: Vec<Hook> = during.lock().unwrap().drain(..).collect();
    deliver(&bridge, &late).await;

    // The directory, once it has consumed everything, equals Tencent.
    let calls = fake.with(|s| s.calls.clone());
    let created_during = created_during.lock().unwrap().clone();
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut diff;
    loop {
        let u = url.to_owned();
        let table = tokio::task::spawn_blocking(move || dump(&u)).await.unwrap();
        diff = fake.with(|s| differences(s, &table, &created_during));
        if diff.is_empty() || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (alive, gone) = fake.with(|s| (s.alive_groups().count(), s.latest().filter(|g| !g.alive).count()));
    let same_second = live_changes
        .iter()
        .filter(|(id, t)| calls.reads.get(id).is_some_and(|r| r / 1000 == t / 1000))
        .count();
    println!(
        "{db}: {} groups at Tencent ({alive} alive, {gone} destroyed), {} older than the bridge; history {counts:?}; \
         during the snapshot {} live changes ({same_second} in the second of their group's read), {sent} callbacks, \
         1 group destroyed between the list and its read, 1 created after the listing; REST calls: {} list, {} info, \
         answers by code {:?}, {} gone (10010), {} refused for rate; {} differences; {:.1} s",
        alive + gone,
        counts.before_the_bridge,
        live_changes.len(),
        calls.list,
        calls.info,
        calls.answers,
        calls.gone,
        calls.rate_refused,
        diff.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(diff.is_empty(), "{} rows differ from Tencent:\n{}", diff.len(), diff.join("\n"));
    assert!(calls.gone >= 1, "the group destroyed between the list and its read was answered 10010");
    assert!(
        calls.answers.get(&60007).is_some_and(|n| *n > 0)
            && calls.answers.get(&10002).is_some_and(|n| *n > 0)
    );
    assert_eq!(calls.rate_refused, 0, "the limiter kept the documented rates");
    assert!(same_second > 0, "some changes landed in the second of their group's read");
    drop(directory);
}

/// Every record of `topic`, read to its end.
fn all_records(topic: &str, n: usize) -> Vec<Record> {
    read_until(topic, Duration::from_secs(30), |r| r.len() >= n)
}

#[tokio::test]
async fn a_long_snapshot_logs_its_progress_rides_out_every_retriable_answer_and_publishes_each_group_once_then_a_mark_per_partition(
) {
    let kafka = broker();
    let _up = kafka.shared().await;
    let mut rng = Rng(7);
    let fake = FakeTencent::start(app_id(), ADMIN, KEY);
    let now = tim_kafka_bridge::now_ms();
    let groups = 600;
    fake.with(|s| {
        for i in 0..groups {
            s.create(random_group(&mut rng, format!("@TGS#long{i}"), now - 86_400_000 + i as i64));
        }
        s.inject_list = vec![Inject { every: 1000, at: 2, code: 10002 }];
        s.inject_info =
            vec![Inject { every: 1000, at: 2, code: 60007 }, Inject { every: 1000, at: 5, code: 10006 }];
        s.invalidate_usersig_at_info_call = Some(3);
        s.bad_gateway_at_info_call = Some(4);
    });
    let topic = unique("it-snapshot-long");
    // 6 pages of 100 at 1 a second, then 12 profile calls at 2 a second: longer than a progress period.
    let out = run(snapshot_command(
        &fake,
        &topic,
        KEY,
        &[("BRIDGE_TENCENT_PAGE_SIZE", "100"), ("BRIDGE_TENCENT_INFO_RATE", "2")],
    ))
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    let progress: Vec<Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["message"] == "snapshot progress")
        .collect();
    assert!(!progress.is_empty(), "no progress line:\n{stdout}");
    for field in ["total", "listed", "fetched", "published", "gone", "rate_per_sec", "eta_secs"] {
        assert!(progress[0].get(field).is_some(), "{field} missing from {}", progress[0]);
    }
    assert_eq!(progress[0]["total"], groups);

    let calls = fake.with(|s| s.calls.clone());
    for code in [10002, 60007, 10006, 70052, 502] {
        assert_eq!(calls.answers.get(&code), Some(&1), "the {code} answer was served: {:?}", calls.answers);
    }
    assert_eq!(calls.rate_refused, 0, "the limiter kept 1 list call a second and the info rate");
    assert_eq!(calls.most_ids, 50, "50 ids per profile call, no more");

    let partitions = 3;
    let records = all_records(&topic, groups + partitions);
    assert_eq!(topic_len(&topic), (groups + partitions) as i64);
    assert_valid(&records);
    let (marks, events): (Vec<&Record>, Vec<&Record>) =
        records.iter().partition(|r| r.value["type"] == "snapshot_completed");
    let keys: BTreeSet<&str> = events.iter().map(|r| r.key.as_str()).collect();
    assert_eq!(keys.len(), groups, "each group once");
    let snapshot_id = events[0].value["snapshot_id"].as_str().unwrap();
    let mut on: BTreeSet<i32> = BTreeSet::new();
    for m in &marks {
        assert_eq!((m.value["snapshot_id"].as_str(), m.key.as_str()), (Some(snapshot_id), ""));
        assert_eq!(m.value["partition"], m.partition);
        assert_eq!(m.value["groups"], groups);
        assert_eq!(m.header("ce_type"), Some("com.tencentcloud.im.group.snapshot_completed"));
        on.insert(m.partition);
        // Every event of the snapshot on this partition comes before its mark.
        assert!(events.iter().filter(|e| e.partition == m.partition).all(|e| e.offset < m.offset));
    }
    assert_eq!(on, (0..partitions as i32).collect(), "a mark on every partition");
    // One event in full against what the fake holds.
    let e = events.iter().find(|e| e.key == "@TGS#long7").unwrap();
    let g = fake.with(|s| s.alive("@TGS#long7").unwrap().clone());
    let v = &e.value;
    assert_eq!(e.header("ce_type"), Some("com.tencentcloud.im.group.snapshot"));
    assert_eq!(
        (v["schema_version"].as_u64(), v["type"].as_str(), v["sdk_app_id"].as_str()),
        (Some(2), Some("snapshot"), Some(APP_ID))
    );
    assert_eq!(
        v["profile"],
        json!({"name": g.name, "introduction": g.introduction, "notification": g.notification, "face_url": g.face_url})
    );
    assert_eq!(
        (v["owner_account"].as_str(), v["group_type"].as_str()),
        (Some(g.owner.as_str()), Some(g.group_type.as_str()))
    );
    assert_eq!(v["custom_fields"], serde_json::to_value(&g.custom).unwrap());
    assert_eq!(v["custom_field_keys"], json!(CUSTOM_KEYS));
    assert_eq!(
        (v["member_count"].as_u64(), v["created_at_s"].as_i64()),
        (Some(g.member_num), Some(g.create_time_s))
    );
    assert_eq!(v["read_at_ms"], v["event_time_ms"]);
    assert_eq!(e.timestamp, v["read_at_ms"].as_i64());
}

#[tokio::test]
async fn a_wrong_secret_key_ends_the_snapshot_with_tencents_code_and_without_the_key_and_publishes_nothing() {
    let kafka = broker();
    let _up = kafka.shared().await;
    let fake = FakeTencent::start(app_id(), ADMIN, KEY);
    fake.with(|s| s.create(random_group(&mut Rng(1), "@TGS#wrongkey".into(), tim_kafka_bridge::now_ms())));
    let topic = unique("it-snapshot-wrong-key");
    let wrong = "not-the-key-93c1d0e8a7";
    let out = run(snapshot_command(&fake, &topic, wrong, &[])).await;
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let line = stderr.trim();
    assert_eq!(line.lines().count(), 1, "one line: {stderr}");
    assert!(line.contains("70003") && line.contains("BRIDGE_TENCENT_SECRET_KEY"), "{line}");
    assert!(!stdout.contains(wrong) && !stderr.contains(wrong), "the key was printed");
    assert_eq!(fake.with(|s| s.calls.info), 0, "nothing read after the refusal, so nothing published");
    // Without a key the snapshot does not start.
    let no_key = snapshot_command(&fake, &topic, "", &[]).output().unwrap();
    assert_eq!(no_key.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&no_key.stderr).contains("BRIDGE_TENCENT_SECRET_KEY"));
}

/// A run that cannot see everything publishes no `snapshot_completed`, so no consumer sweeps on it: a
/// backend that stays down (retries exhausted), a signal mid-run, a list whose cursor comes back. Each
/// exits 1 with one line saying why.
#[tokio::test]
async fn a_snapshot_that_cannot_finish_exits_1_with_the_reason_and_publishes_no_mark() {
    let kafka = broker();
    let _up = kafka.shared().await;
    let now = tim_kafka_bridge::now_ms();
    let fake = FakeTencent::start(app_id(), ADMIN, KEY);
    fake.with(|s| {
        for i in 0..300 {
            s.create(random_group(&mut Rng(i), format!("@TGS#unfinished{i}"), now - 86_400_000));
        }
    });
    let marks = |topic: &str| {
        let n = topic_len(topic) as usize;
        read_until(topic, Duration::from_secs(30), |r| r.len() >= n)
            .into_iter()
            .filter(|r| r.value["type"] == "snapshot_completed")
            .count()
    };

    // The backend fails for good from the third profile call on.
    fake.with(|s| s.fail_info_from_call = Some(3));
    let topic = unique("it-snapshot-gave-up");
    let out = run(snapshot_command(
        &fake,
        &topic,
        KEY,
        &[("BRIDGE_TENCENT_MAX_ATTEMPTS", "2"), ("BRIDGE_TENCENT_INFO_RATE", "1")],
    ))
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("get_group_info still failing after 2 attempts") && stderr.contains("10002"),
        "{stderr}"
    );
    assert!(topic_len(&topic) > 0, "what was read before is published");
    assert_eq!(marks(&topic), 0);

    // SIGTERM while it reads.
    fake.with(|s| s.fail_info_from_call = None);
    let topic = unique("it-snapshot-stopped");
    let mut c = snapshot_command(&fake, &topic, KEY, &[("BRIDGE_TENCENT_INFO_RATE", "1")]);
    let child = c.spawn().unwrap();
    let before = fake.with(|s| s.calls.info);
    wait_for("the snapshot to read profiles", Duration::from_secs(30), || async {
        fake.with(|s| s.calls.info) >= before + 2
    })
    .await;
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap()).await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("stopped by a signal before the snapshot was complete"), "{stderr}");
    assert_eq!(marks(&topic), 0);

    // A cursor that comes back.
    fake.with(|s| s.repeat_cursor = true);
    let topic = unique("it-snapshot-loop");
    let out = run(snapshot_command(&fake, &topic, KEY, &[("BRIDGE_TENCENT_PAGE_SIZE", "100")])).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("the group list did not end"), "{stderr}");
    assert!(fake.with(|s| s.calls.list) >= 2);
}

/// On a terminal the snapshot draws a progress bar (on stderr) instead of logging progress lines: run in
/// a pseudo-terminal (`script`, util-linux), its screen shows the bar's counts.
#[tokio::test]
async fn on_a_terminal_the_snapshot_draws_a_progress_bar() {
    let kafka = broker();
    let _up = kafka.shared().await;
    let fake = FakeTencent::start(app_id(), ADMIN, KEY);
    let now = tim_kafka_bridge::now_ms();
    fake.with(|s| {
        for i in 0..200 {
            s.create(random_group(&mut Rng(i), format!("@TGS#tty{i}"), now - 86_400_000));
        }
    });
    let topic = unique("it-snapshot-tty");
    let c = snapshot_command(
        &fake,
        &topic,
        KEY,
        &[("BRIDGE_TENCENT_PAGE_SIZE", "100"), ("BRIDGE_TENCENT_INFO_RATE", "2")],
    );
    let env: Vec<(String, String)> =
        c.get_envs().filter_map(|(k, v)| Some((k.to_str()?.to_owned(), v?.to_str()?.to_owned()))).collect();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("script")
            .args([
                "-q",
                "-e",
                "-f",
                "-c",
                &format!("{} snapshot", env!("CARGO_BIN_EXE_tim-kafka-bridge")),
                "/dev/null",
            ])
            .env_clear()
            .envs(env)
            .env("TERM", "xterm")
            .stdin(Stdio::null())
            .output()
            .expect("script (util-linux) runs")
    })
    .await
    .unwrap();
    let screen = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{screen}");
    assert!(
        screen.contains("app 1400000000") && screen.contains("groups read"),
        "no progress bar:\n{screen}"
    );
    assert!(screen.contains("200/200"), "the bar ends full:\n{screen}");
    assert!(!screen.contains("snapshot progress"), "no progress log line on a terminal:\n{screen}");
}
