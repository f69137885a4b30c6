//! `tim-kafka-bridge drain`: a spool left by a stopped bridge is forwarded to Kafka without HTTP.

use std::process::{Command, Output};
use std::time::Duration;

use crate::helpers::*;

pub(crate) fn drain(spool: &std::path::Path, topic: &str, brokers: &str, extra: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tim-kafka-bridge"))
        .arg("drain")
        .env_clear()
        .env("BRIDGE_SPOOL_DIR", spool)
        .env("BRIDGE_TOPIC", topic)
        .env("BRIDGE_KAFKA_BROKERS", brokers)
        .env("BRIDGE_LOG_FORMAT", "json")
        .envs(extra.iter().copied())
        .output()
        .expect("drain runs")
}

#[tokio::test]
async fn drain_forwards_a_stopped_bridges_backlog_and_exits_0_once_the_spool_is_empty() {
    let _up = broker().shared().await;
    let spool = tempfile::tempdir().unwrap();
    spool_directly(spool.path(), "@TGS#drain", 500).await;
    let topic = unique("it-drain");

    let out = tokio::task::spawn_blocking({
        let (dir, topic) = (spool.path().to_owned(), topic.clone());
        move || drain(&dir, &topic, &broker().bootstrap(), &[])
    })
    .await
    .unwrap();

    let logs = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {logs}", out.status);
    assert!(logs.contains("spool drained"), "{logs}");
    // Everything, once: each change spooled is on the topic, and none twice.
    let records = read_exactly(&topic, 500, Duration::from_secs(60));
    assert_exactly_once(&records, &changes("@TGS#drain", 500));
    assert_per_group_order(&records);
    assert!(segments(spool.path()).is_empty(), "nothing left in the spool");
    // Draining an empty spool is a no-op that succeeds.
    let again = drain(spool.path(), &topic, &broker().bootstrap(), &[]);
    assert!(again.status.success());
    assert_exactly_once(&read_exactly(&topic, 500, Duration::from_secs(60)), &changes("@TGS#drain", 500));
}

#[tokio::test]
async fn drain_exits_non_zero_with_the_reason_when_kafka_takes_nothing_or_a_bridge_holds_the_spool() {
    let spool = tempfile::tempdir().unwrap();
    spool_directly(spool.path(), "@TGS#stuck", 10).await;

    let stalled = drain(spool.path(), "t", "127.0.0.1:1", &[("BRIDGE_DRAIN_STALL_SECS", "2")]);
    assert_eq!(stalled.status.code(), Some(1));
    let err = String::from_utf8_lossy(&stalled.stderr);
    assert!(err.contains("Kafka took no event for 2 s; 10 events remain"), "{err}");
    assert_eq!(segments(spool.path()).len(), 1, "the backlog is kept");

    let _bridge =
        Bridge::spawn(BridgeOptions::new(spool.path()).env("BRIDGE_KAFKA_BROKERS", "127.0.0.1:1")).await;
    let locked = drain(spool.path(), "t", "127.0.0.1:1", &[]);
    assert_eq!(locked.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&locked.stderr).contains("in use by another process"));
}
