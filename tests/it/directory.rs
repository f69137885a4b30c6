//! tim-group-directory end to end: webhooks in through the bridge, out of order, a groups table out.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use tim_kafka_bridge::directory::{store, Group};

use crate::helpers::*;

/// The directory binary as a child process, killed when dropped.
struct Directory(Child);

impl Directory {
    fn spawn(database_url: &str, topic: &str, consumer_group: &str) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_tim-group-directory"))
            .env_clear()
            .env("DIRECTORY_DATABASE_URL", database_url)
            .env("DIRECTORY_KAFKA_BROKERS", broker().bootstrap())
            .env("DIRECTORY_TOPIC", topic)
            .env("DIRECTORY_CONSUMER_GROUP", consumer_group)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(if std::env::var_os("TEST_LOG").is_some() { Stdio::inherit() } else { Stdio::null() })
            .stderr(Stdio::inherit())
            .spawn()
            .expect("tim-group-directory starts");
        Self(child)
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

/// The same on PostgreSQL, when `TEST_POSTGRES_URL` names a database to use.
#[tokio::test]
async fn on_postgres_too_when_a_server_is_given() {
    match std::env::var("TEST_POSTGRES_URL") {
        Ok(url) => converges(&url).await,
        Err(_) => eprintln!("TEST_POSTGRES_URL not set: PostgreSQL not tested"),
    }
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
