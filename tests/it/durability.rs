//! Answered OK means in Kafka eventually: through kill -9, broker outages, refusals, damage and
//! shutdown.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tim_kafka_bridge::spool::record::frame_at;

use crate::delivery::assert_valid;
use crate::helpers::*;

fn names(records: &[Record]) -> HashSet<(String, usize)> {
    records.iter().map(rename_of).collect()
}

/// A bridge that accepted `n` changes of `group` while Kafka was unreachable, then was stopped with
/// SIGTERM (exit 0): the spool in `dir` holds all `n`. Restart it to deliver them.
async fn spooled_backlog(dir: &std::path::Path, group: &str, n: usize) -> Bridge {
    let mut bridge = Bridge::spawn(
        BridgeOptions::new(dir)
            .env("BRIDGE_KAFKA_BROKERS", "127.0.0.1:1")
            .env("BRIDGE_SHUTDOWN_GRACE_SECS", 1),
    )
    .await;
    for i in 0..n {
        assert_eq!(bridge.send(&Webhook::rename(group, i)).await.0, 200);
    }
    assert!(bridge.terminate(Duration::from_secs(20)).success());
    bridge
}

/// Reads until every `(group, n)` in `expected` is on the topic.
fn read_all_of(topic: &str, expected: &HashSet<(String, usize)>, timeout: Duration) -> Vec<Record> {
    read_until(topic, timeout, |r| expected.is_subset(&names(r)))
}

#[tokio::test]
async fn every_event_answered_ok_survives_kill_9_mid_stream() {
    let _up = broker().shared().await;
    let spool = tempfile::tempdir().unwrap();
    let bridge = Bridge::spawn(BridgeOptions::new(spool.path())).await;
    let acked = Arc::new(std::sync::Mutex::new(HashSet::new()));

    // Four steady streams; the bridge is killed while they run.
    let b = Arc::new(bridge);
    let mut streams = Vec::new();
    for s in 0..4 {
        let (b, acked) = (b.clone(), acked.clone());
        streams.push(tokio::spawn(async move {
            let group = format!("@TGS#kill{s}");
            for n in 0.. {
                match b.try_send(&Webhook::rename(&group, n)).await {
                    Some(200) => {
                        acked.lock().unwrap().insert((group.clone(), n));
                    }
                    Some(other) => panic!("unexpected status {other}"),
                    None => return,
                }
            }
        }));
    }
    while acked.lock().unwrap().len() < 400 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    b.kill9();
    for s in streams {
        s.await.unwrap();
    }
    let mut bridge = Arc::try_unwrap(b).unwrap_or_else(|_| panic!("streams are done"));
    bridge.restart(&[]).await;
    assert_eq!(bridge.send(&Webhook::rename("@TGS#after", 0)).await.0, 200);
    let mut expected = acked.lock().unwrap().clone();
    expected.insert(("@TGS#after".into(), 0));

    let records = read_all_of(&bridge.topic, &expected, Duration::from_secs(60));

    assert!(expected.is_subset(&names(&records)));
    assert_per_group_order(&records);
    assert_valid(&records);
}

#[tokio::test]
async fn webhooks_are_answered_ok_while_kafka_is_down_and_all_arrive_in_order_after() {
    let kafka = broker();
    let _exclusive = kafka.exclusive().await;
    let spool = tempfile::tempdir().unwrap();
    // A stall time far shorter than the outage: a producer waiting for a Kafka that does not answer
    // is right to wait, and must not be replaced.
    let bridge = Bridge::spawn(BridgeOptions::new(spool.path()).env("BRIDGE_KAFKA_STALL_SECS", 1)).await;
    bridge.warm_up("@TGS#warmup").await;

    kafka.stop();
    let bridge = Arc::new(bridge);
    let mut tasks = Vec::new();
    for g in 0..10 {
        let bridge = bridge.clone();
        tasks.push(tokio::spawn(async move {
            for n in 0..50 {
                let (status, _) = bridge.send(&Webhook::rename(&format!("@TGS#down{g}"), n)).await;
                assert_eq!(status, 200, "answered OK while Kafka is down");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let ready = bridge.get("/healthz").await;
    assert_eq!(ready.status().as_u16(), 200);
    wait_for("the stall check to find Kafka down", Duration::from_secs(30), || async {
        bridge.logs().contains("Kafka does not answer: waiting for it")
    })
    .await;
    assert_eq!(sample(&scrape(&bridge).await, "bridge_kafka_producer_restarts_total"), Some(0.0));
    kafka.start();

    let mut expected: HashSet<(String, usize)> =
        (0..10).flat_map(|g| (0..50).map(move |n| (format!("@TGS#down{g}"), n))).collect();
    expected.insert(("@TGS#warmup".into(), 0));
    let records = read_all_of(&bridge.topic, &expected, Duration::from_secs(90));
    assert!(expected.is_subset(&names(&records)));
    assert_per_group_order(&records);
}

#[tokio::test]
async fn an_event_larger_than_the_topic_takes_is_refused_413_and_never_answered_ok() {
    let kafka = broker();
    let _up = kafka.shared().await;
    let spool = tempfile::tempdir().unwrap();
    let opts = BridgeOptions::new(spool.path());
    kafka.create_topic_taking_at_most(&opts.topic, 20_000);
    let bridge = Bridge::spawn(opts).await;
    // lz4 cannot squeeze 40 000 hex digits under the topic's 20 000 bytes.
    let noise = incompressible(40_000);
    let mut big = Webhook::rename("@TGS#big", 1);
    big.0["Introduction"] = serde_json::Value::String(noise);

    assert_eq!(bridge.send(&Webhook::rename("@TGS#big", 0)).await.0, 200);
    let (status, answer) = bridge.send(&big).await;
    for n in 2..20 {
        assert_eq!(bridge.send(&Webhook::rename("@TGS#big", n)).await.0, 200);
    }

    assert_eq!(status, 413, "Kafka would refuse it for good: it is refused before it is answered");
    assert_eq!((answer.action_status.as_str(), answer.error_code), ("FAIL", 60031));
    assert!(answer.error_info.contains("20000"), "{}", answer.error_info);
    let main = read_exactly(&bridge.topic, 19, Duration::from_secs(60));
    let expected: HashSet<_> = (0..20).filter(|n| *n != 1).map(|n| ("@TGS#big".to_owned(), n)).collect();
    assert_eq!(names(&main), expected);
    assert_per_group_order(&main);
    let text = scrape(&bridge).await;
    assert_eq!(sample(&text, "bridge_webhooks_total{outcome=\"too_large\"}"), Some(1.0));
    assert_eq!(sample(&text, "bridge_kafka_dead_lettered_total"), Some(0.0));
}

#[tokio::test]
async fn a_full_spool_answers_503_and_every_ok_event_arrives_after_kafka_returns() {
    let kafka = broker();
    let _exclusive = kafka.exclusive().await;
    let spool = tempfile::tempdir().unwrap();
    let bridge = Bridge::spawn(BridgeOptions::new(spool.path()).env("BRIDGE_SPOOL_MAX_BYTES", 20_000)).await;
    bridge.warm_up("@TGS#full").await;

    kafka.stop();
    let mut ok = HashSet::from([("@TGS#full".to_owned(), 0)]);
    let mut refused = 0;
    for n in 1..200 {
        let (status, answer) = bridge.send(&Webhook::rename("@TGS#full", n)).await;
        match status {
            200 => {
                assert_eq!(refused, 0, "once full, the spool stays full while Kafka is down");
                ok.insert(("@TGS#full".to_owned(), n));
            }
            503 => {
                assert_eq!(answer.action_status, "FAIL");
                refused += 1;
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert!(ok.len() > 10 && refused > 0, "{} accepted, {refused} refused", ok.len());
    kafka.start();

    let records = read_all_of(&bridge.topic, &ok, Duration::from_secs(90));
    assert!(ok.is_subset(&names(&records)));
    // Space is given back once Kafka has the backlog.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, _) = bridge.send(&Webhook::rename("@TGS#full-again", 0)).await;
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the spool never freed up");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_torn_last_record_is_skipped_with_a_log_line_and_the_rest_is_delivered() {
    let _up = broker().shared().await;
    let spool = tempfile::tempdir().unwrap();
    let mut bridge = spooled_backlog(spool.path(), "@TGS#torn", 10).await;

    // Cut the last record short, as a crash mid-write would: its last 7 bytes never written. The
    // segment may be a zero-filled spare (fsync=always) longer than its records, or not (the spare
    // was not ready yet): the records' end is found by reading them, and the file keeps its length,
    // the lost bytes reading as zeros.
    let last = segments(spool.path()).pop().expect("a segment");
    let bytes = std::fs::read(&last).unwrap();
    let mut end = 0;
    while let Some(f) = frame_at(&bytes, end) {
        end += f.size();
    }
    let file = std::fs::OpenOptions::new().write(true).open(&last).unwrap();
    file.set_len(end as u64 - 7).unwrap();
    file.set_len(bytes.len() as u64).unwrap();

    bridge.restart(&[("BRIDGE_KAFKA_BROKERS", broker().bootstrap().as_str())]).await;

    let records = read_exactly(&bridge.topic, 9, Duration::from_secs(60));
    let expected: HashSet<_> = (0..9).map(|n| ("@TGS#torn".to_owned(), n)).collect();
    assert_eq!(names(&records), expected);
    let warnings = bridge.logs().matches("torn or corrupt record").count();
    assert_eq!(warnings, 1, "{}", bridge.logs());
}

#[tokio::test]
async fn sigterm_with_a_backlog_delivers_it_before_exiting_0() {
    let _up = broker().shared().await;
    let spool = tempfile::tempdir().unwrap();
    let mut bridge = spooled_backlog(spool.path(), "@TGS#term", 300).await;
    // Kafka was unreachable: the grace period ran out and the backlog stayed for the next start.
    assert!(bridge.logs().contains("stay in the spool"), "{}", bridge.logs());

    bridge
        .restart(&[
            ("BRIDGE_KAFKA_BROKERS", broker().bootstrap().as_str()),
            ("BRIDGE_SHUTDOWN_GRACE_SECS", "30"),
        ])
        .await;
    let status = bridge.terminate(Duration::from_secs(40));

    assert!(status.success(), "exit status {status:?}");
    assert_eq!(topic_len(&bridge.topic), 300, "the whole backlog is in Kafka when the process has exited");
    let records = read_exactly(&bridge.topic, 300, Duration::from_secs(30));
    // Each change answered OK, once: the right count could also be a loss and a repeat.
    assert_exactly_once(&records, &changes("@TGS#term", 300));
    assert_per_group_order(&records);
}
