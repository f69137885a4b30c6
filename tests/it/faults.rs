//! The promise under the faults a disk and librdkafka really produce: every event answered OK reaches
//! Kafka, in per-group order, and every event refused is refused honestly and never published.
//! Faults come from failpoints (`FAILPOINTS`, the `fail` crate, compiled into the test build only) and
//! from the real thing (a size-limited tmpfs, which needs root: the test fails without it).

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tim_kafka_bridge::spool::record::{frame_at, HEADER_LEN};

use crate::delivery::assert_valid;
use crate::helpers::*;

fn names(records: &[Record]) -> HashSet<(String, usize)> {
    records.iter().map(rename_of).collect()
}

/// What `streams` concurrent senders got for their webhooks: `(group, n) -> status`.
async fn send_streams(
    bridge: &Arc<Bridge>,
    prefix: &str,
    streams: usize,
    each: usize,
) -> HashMap<(String, usize), u16> {
    let answers = Arc::new(Mutex::new(HashMap::new()));
    let mut tasks = Vec::new();
    for s in 0..streams {
        let (bridge, answers, group) = (bridge.clone(), answers.clone(), format!("@TGS#{prefix}{s}"));
        tasks.push(tokio::spawn(async move {
            for n in 0..each {
                let (status, _) = bridge.send(&Webhook::rename(&group, n)).await;
                answers.lock().unwrap().insert((group.clone(), n), status);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    Arc::try_unwrap(answers).unwrap().into_inner().unwrap()
}

/// The `(group, n)` answered with `status`.
fn answered(answers: &HashMap<(String, usize), u16>, status: u16) -> HashSet<(String, usize)> {
    answers.iter().filter(|(_, s)| **s == status).map(|(k, _)| k.clone()).collect()
}

#[tokio::test]
async fn disk_full_on_a_real_size_limited_filesystem_answers_503_and_appends_resume_when_space_returns() {
    let mount = tempfile::tempdir().unwrap();
    // A test that cannot make its fault must fail, not pass: mounting needs root (CI runs as root).
    let mounted =
        Command::new("mount").args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"]).arg(mount.path()).output();
    match mounted {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "the real disk-full test could not mount its 256 KiB tmpfs (it needs root, as in CI): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => panic!("the real disk-full test could not run mount (it needs root, as in CI): {e}"),
    }
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(self.0).status();
        }
    }
    let _unmount = Unmount(mount.path());
    let kafka = broker();
    let _exclusive = kafka.exclusive().await;
    let bridge =
        Bridge::spawn(BridgeOptions::new(mount.path()).env("BRIDGE_SPOOL_MAX_BYTES", 100 << 20)).await;
    bridge.warm_up("@TGS#diskfull").await;

    kafka.stop();
    let mut ok = HashSet::from([("@TGS#diskfull".to_owned(), 0)]);
    let mut refused = 0;
    for n in 1..2000 {
        let (status, answer) = bridge.send(&Webhook::rename("@TGS#diskfull", n)).await;
        match status {
            200 => {
                ok.insert(("@TGS#diskfull".to_owned(), n));
            }
            503 => {
                assert_eq!((answer.action_status.as_str(), answer.error_code), ("FAIL", 60040));
                refused += 1;
                if refused == 20 {
                    break;
                }
            }
            other => panic!("disk full must answer 503, got {other}: {}", answer.error_info),
        }
    }
    assert!(refused == 20 && ok.len() > 50, "{} accepted, {refused} refused", ok.len());
    let text = scrape(&bridge).await;
    assert_eq!(sample(&text, "bridge_webhooks_total{outcome=\"spool_full\"}"), Some(20.0));
    assert_eq!(sample(&text, "bridge_webhooks_total{outcome=\"spool_error\"}"), Some(0.0));
    assert_eq!(bridge.get("/healthz").await.status(), 200, "a full disk passes: no restart needed");
    kafka.start();

    let records = read_until(&bridge.topic, Duration::from_secs(90), |r| ok.is_subset(&names(r)));
    assert_per_group_order(&records);
    // Delivered segments are deleted: the same bridge takes webhooks again by itself.
    wait_for("appends to resume", Duration::from_secs(30), || async {
        bridge.send(&Webhook::rename("@TGS#diskfull-again", 0)).await.0 == 200
    })
    .await;
}

#[tokio::test]
async fn injected_enospc_mid_write_answers_503_and_never_publishes_a_refused_event_nor_loses_an_accepted_one()
{
    let _up = broker().shared().await;
    let spool = tempfile::tempdir().unwrap();
    // One write in five stops half-way with ENOSPC; one segment roll in three fails the same way.
    let bridge = Bridge::spawn(
        BridgeOptions::new(spool.path())
            .env("BRIDGE_SPOOL_MAX_BYTES", 256 << 10)
            .env("FAILPOINTS", "spool::write=20%return(enospc);spool::roll=33%return(enospc)"),
    )
    .await;
    let bridge = Arc::new(bridge);

    let answers = send_streams(&bridge, "enospc", 8, 60).await;

    let ok = answered(&answers, 200);
    let refused = answered(&answers, 503);
    assert_eq!(ok.len() + refused.len(), answers.len(), "only 200 or 503: {answers:?}");
    assert!(!refused.is_empty() && ok.len() > 100, "{} accepted, {} refused", ok.len(), refused.len());
    let records = read_until(&bridge.topic, Duration::from_secs(60), |r| ok.is_subset(&names(r)));
    let published = names(&records);
    assert!(
        published.is_disjoint(&refused),
        "a refused event was published: {:?}",
        published.intersection(&refused).next()
    );
    assert_eq!(records.len(), ok.len(), "each accepted event exactly once");
    assert_per_group_order(&records);
    assert_valid(&records);
    let text = scrape(&bridge).await;
    assert_eq!(sample(&text, "bridge_webhooks_total{outcome=\"spool_full\"}"), Some(refused.len() as f64));
}

#[tokio::test]
async fn a_flipped_byte_costs_that_record_only_and_is_counted() {
    let _up = broker().shared().await;
    let spool = tempfile::tempdir().unwrap();
    spool_directly(spool.path(), "@TGS#rot", 200).await;
    let segs = segments(spool.path());
    assert_eq!(segs.len(), 1);
    // Flip one byte inside record 100's payload.
    let mut bytes = std::fs::read(&segs[0]).unwrap();
    let mut at = 0;
    for _ in 0..99 {
        at += frame_at(&bytes, at).unwrap().size();
    }
    assert_eq!(frame_at(&bytes, at).unwrap().seq, 100);
    bytes[at + HEADER_LEN + 40] ^= 0x20;
    std::fs::write(&segs[0], &bytes).unwrap();

    let bridge = Bridge::spawn(BridgeOptions::new(spool.path())).await;

    let records = read_exactly(&bridge.topic, 199, Duration::from_secs(60));
    let expected: HashSet<_> = (0..200).filter(|n| *n != 99).map(|n| ("@TGS#rot".to_owned(), n)).collect();
    assert_eq!(names(&records), expected, "the 100 records after the damaged one are delivered");
    assert_per_group_order(&records);
    let text = scrape(&bridge).await;
    assert_eq!(sample(&text, "bridge_spool_corrupt_records_total"), Some(1.0));
    let logs = bridge.logs();
    let line = logs.lines().find(|l| l.contains("damaged record")).expect("one line names the damage");
    assert!(
        line.contains(&format!("\"offset\":{at}"))
            && line.contains("\"lost_from_seq\":100")
            && line.contains("\"lost_to_seq\":100"),
        "{line}"
    );
    assert_eq!(logs.matches("damaged record").count(), 1, "reported once: {logs}");
}

#[tokio::test]
async fn read_errors_in_the_middle_of_a_batch_lose_nothing() {
    let _up = broker().shared().await;
    let spool = tempfile::tempdir().unwrap();
    // Small segments (4 KiB, about eight records each), so one batch spans many files.
    let bridge = Bridge::spawn(
        BridgeOptions::new(spool.path())
            .env("BRIDGE_KAFKA_BROKERS", "127.0.0.1:1")
            .env("BRIDGE_SPOOL_MAX_BYTES", 64 << 10)
            .env("BRIDGE_SHUTDOWN_GRACE_SECS", 1),
    )
    .await;
    for n in 0..100 {
        assert_eq!(bridge.send(&Webhook::rename("@TGS#readerr", n)).await.0, 200);
    }
    let mut bridge = bridge;
    assert!(bridge.terminate(Duration::from_secs(20)).success());
    assert!(segments(spool.path()).len() > 5);

    // EMFILE opening the third segment, EIO on the 30th and 31st record reads.
    bridge
        .restart(&[
            ("BRIDGE_KAFKA_BROKERS", broker().bootstrap().as_str()),
            ("FAILPOINTS", "spool::open_segment=2*off->1*return(emfile);spool::read=29*off->2*return(eio)"),
        ])
        .await;

    let records = read_exactly(&bridge.topic, 100, Duration::from_secs(60));
    let expected: HashSet<_> = (0..100).map(|n| ("@TGS#readerr".to_owned(), n)).collect();
    assert_eq!(names(&records), expected);
    assert_per_group_order(&records);
    assert!(bridge.logs().contains("spool read failed"), "the failpoints fired");
}

/// A spool that stays unreadable (EIO on every read from some record on) must not look healthy: the
/// produce lag shows the age of the oldest unacknowledged event though nothing is in flight, the read
/// errors are counted (the alert's metric), and `/healthz` asks for a restart with the reason after
/// `READ_FAILURE_GRACE`. The events stay in the spool: a restart (here, one where the disk reads
/// again) delivers every one.
#[tokio::test]
async fn a_spool_read_that_keeps_failing_shows_in_the_lag_the_metrics_and_liveness_and_loses_nothing() {
    let _up = broker().shared().await;
    let spool = tempfile::tempdir().unwrap();
    let mut bridge = Bridge::spawn(
        BridgeOptions::new(spool.path())
            .env("FAILPOINTS", "spool::read=3*off->return(eio)")
            .env("BRIDGE_SHUTDOWN_GRACE_SECS", 1),
    )
    .await;
    let sent: HashSet<_> = (0..60).map(|n| ("@TGS#unreadable".to_owned(), n)).collect();
    for n in 0..60 {
        assert_eq!(bridge.send(&Webhook::rename("@TGS#unreadable", n)).await.0, 200, "the event is durable");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let started = std::time::Instant::now();
    wait_for("the produce lag to show the stuck events", Duration::from_secs(20), || async {
        let text = scrape(&bridge).await;
        sample(&text, "bridge_produce_lag_seconds").is_some_and(|lag| lag >= 2.0)
            && sample(&text, "bridge_spool_read_errors_total").is_some_and(|n| n >= 2.0)
    })
    .await;
    assert_eq!(bridge.get("/healthz").await.status(), 200, "not before the grace");
    wait_for("/healthz to ask for a restart", Duration::from_secs(30), || async {
        bridge.get("/healthz").await.status() == 503
    })
    .await;
    assert!(started.elapsed() >= tim_kafka_bridge::forwarder::READ_FAILURE_GRACE - Duration::from_secs(3));
    let reason = bridge.get("/healthz").await.text().await.unwrap();
    assert!(reason.contains("the spool cannot be read at event"), "{reason}");
    assert!(topic_len(&bridge.topic) < 60, "some events are stuck behind the unreadable record");

    assert!(bridge.terminate(Duration::from_secs(20)).success());
    bridge.restart(&[("FAILPOINTS", "")]).await;
    let records = read_to_end(&broker().bootstrap(), &bridge.topic, &sent, Duration::from_secs(60));
    assert_eq!(names(&records), sent);
    assert_per_group_order(&records);
    assert_eq!(bridge.get("/healthz").await.status(), 200);
}

/// While reads of the spool keep failing, the records read before the failure still settle: their
/// reports are taken between the tries (the retry wait is one of the loop's wake-ups, not a sleep in
/// its way), so they are acknowledged and leave the spool.
#[tokio::test]
async fn records_read_before_a_spool_read_starts_failing_are_acknowledged_while_it_fails() {
    let _up = broker().shared().await;
    let spool = tempfile::tempdir().unwrap();
    let bridge = Bridge::spawn(
        BridgeOptions::new(spool.path())
            .env("FAILPOINTS", "spool::read=3*off->return(eio)")
            .env("BRIDGE_SHUTDOWN_GRACE_SECS", 1),
    )
    .await;
    // A burst: the first read finds more than three records committed, so the failure comes right
    // after three are handed to the producer.
    let hooks: Vec<Webhook> =
        (0..20).map(|n| Webhook::rename(&format!("@TGS#read-then-fail{n}"), 0)).collect();
    let answers = futures_util::future::join_all(hooks.iter().map(|h| bridge.send(h))).await;
    assert!(answers.iter().all(|(status, _)| *status == 200));
    wait_for("the three records read to be acknowledged", Duration::from_secs(15), || async {
        let text = scrape(&bridge).await;
        sample(&text, "bridge_kafka_delivered_total") == Some(3.0)
            && sample(&text, "bridge_spool_pending_events") == Some(17.0)
    })
    .await;
    assert_eq!(topic_len(&bridge.topic), 3);
    assert!(sample(&scrape(&bridge).await, "bridge_spool_read_errors_total").is_some_and(|n| n >= 1.0));
}

/// A spool block the disk cannot read at start (EIO: a bad sector) no longer stops the bridge from
/// starting: recovery skips past it as past damage, counts the records it held, and every other event
/// is delivered in order.
#[tokio::test]
async fn recovery_starts_past_a_block_the_disk_cannot_read_and_counts_what_it_held() {
    let _up = broker().shared().await;
    let spool = tempfile::tempdir().unwrap();
    // Small segments (4 KiB, about eight records each); Kafka unreachable, so everything stays spooled.
    let mut bridge = Bridge::spawn(
        BridgeOptions::new(spool.path())
            .env("BRIDGE_KAFKA_BROKERS", "127.0.0.1:1")
            .env("BRIDGE_SPOOL_MAX_BYTES", 64 << 10)
            .env("BRIDGE_SHUTDOWN_GRACE_SECS", 1),
    )
    .await;
    for n in 0..60 {
        assert_eq!(bridge.send(&Webhook::rename("@TGS#badblock", n)).await.0, 200);
    }
    assert!(bridge.terminate(Duration::from_secs(20)).success());
    assert!(segments(spool.path()).len() > 3);

    // The first block of the oldest segment cannot be read (three tries: a bad sector, not a blip).
    bridge
        .restart(&[
            ("BRIDGE_KAFKA_BROKERS", broker().bootstrap().as_str()),
            ("FAILPOINTS", "spool::recover_read=3*return(0)"),
        ])
        .await;
    assert!(bridge.logs().contains("a block of the segment cannot be read"), "{}", bridge.logs());
    assert!(bridge.logs().contains("is set aside"), "kept for an operator: {}", bridge.logs());
    let lost = loop {
        if let Some(n) =
            sample(&scrape(&bridge).await, "bridge_spool_corrupt_records_total").filter(|n| *n > 0.0)
        {
            break n as usize;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // What the unreadable block held is the oldest events; every later one arrives, in order.
    let expected: HashSet<_> = (lost..60).map(|n| ("@TGS#badblock".to_owned(), n)).collect();
    let records = read_to_end(&broker().bootstrap(), &bridge.topic, &expected, Duration::from_secs(60));
    assert_eq!(names(&records), expected, "{lost} lost to the bad block, the rest delivered");
    assert!((1..=12).contains(&lost), "{lost}");
    assert_per_group_order(&records);
}

#[tokio::test]
async fn a_failed_fsync_refuses_every_event_after_it_and_fails_liveness() {
    let _up = broker().shared().await;
    let spool = tempfile::tempdir().unwrap();
    let bridge =
        Bridge::spawn(BridgeOptions::new(spool.path()).env("FAILPOINTS", "spool::fsync=5*off->return(eio)"))
            .await;
    let mut ok = HashSet::new();
    let mut failed = 0;
    for n in 0..20 {
        let (status, answer) = bridge.send(&Webhook::rename("@TGS#fsync", n)).await;
        match status {
            200 => {
                assert_eq!(failed, 0, "once failed, the spool stays failed");
                ok.insert(("@TGS#fsync".to_owned(), n));
            }
            500 => {
                assert_eq!((answer.action_status.as_str(), answer.error_code), ("FAIL", 60041));
                failed += 1;
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert!(failed > 0 && !ok.is_empty(), "{} accepted, {failed} failed", ok.len());
    let health = bridge.get("/healthz").await;
    assert_eq!(health.status(), 503);
    let body = health.text().await.unwrap();
    assert!(body.contains("fsync failed"), "{body}");
    let ready = bridge.get("/readyz").await;
    assert_eq!(ready.status(), 503);
    assert!(ready.text().await.unwrap().contains("fsync failed"));
    // What was answered OK before the failure is still delivered.
    let records = read_until(&bridge.topic, Duration::from_secs(60), |r| ok.is_subset(&names(r)));
    assert_eq!(names(&records), ok);
}

/// A refused event must never reach the topic, also after a crash: a failed fsync left the batch's
/// bytes in the segment, where the next start found whole records; a cut that fails (or cannot be
/// synced) is recorded as a refused range the next start honours; a cut after a full disk is synced.
#[tokio::test]
async fn events_refused_for_a_failed_fsync_or_write_are_not_published_after_kill_9_and_a_restart() {
    let _up = broker().shared().await;
    for (failpoints, refusal) in [
        ("spool::fsync=5*off->return(eio)", 500),
        ("spool::fsync=5*off->return(eio);spool::cut=return(eio)", 500),
        ("spool::write=5*off->1*return(enospc)", 503),
    ] {
        let spool = tempfile::tempdir().unwrap();
        // Kafka out of reach: nothing is delivered before the crash.
        let mut bridge = Bridge::spawn(
            BridgeOptions::new(spool.path())
                .env("BRIDGE_KAFKA_BROKERS", "127.0.0.1:1")
                .env("FAILPOINTS", failpoints),
        )
        .await;
        let (mut ok, mut refused) = (HashSet::new(), HashSet::new());
        for n in 0..10 {
            let (status, answer) = bridge.send(&Webhook::rename("@TGS#refused", n)).await;
            match status {
                200 => {
                    ok.insert(("@TGS#refused".to_owned(), n));
                }
                s if s == refusal => {
                    assert_eq!(answer.action_status, "FAIL");
                    refused.insert(("@TGS#refused".to_owned(), n));
                }
                other => panic!("{failpoints}: unexpected status {other}: {}", answer.error_info),
            }
        }
        assert!(ok.len() >= 5 && !refused.is_empty(), "{failpoints}: {ok:?} {refused:?}");

        bridge.kill9();
        // Gone, and its lock on the spool with it, before the next start.
        assert!(!bridge.wait_exit(Duration::from_secs(10)).success());
        bridge.restart(&[("BRIDGE_KAFKA_BROKERS", broker().bootstrap().as_str()), ("FAILPOINTS", "")]).await;

        wait_for("the spool to be forwarded", Duration::from_secs(60), || async {
            sample(&scrape(&bridge).await, "bridge_spool_pending_events") == Some(0.0)
        })
        .await;
        let total = topic_len(&bridge.topic) as usize;
        let records = read_until(&bridge.topic, Duration::from_secs(30), |r| r.len() >= total);
        assert_eq!(names(&records), ok, "{failpoints}: every event answered OK, and none refused");
        assert_eq!(records.len(), ok.len(), "{failpoints}");
    }
}

#[tokio::test]
async fn a_dead_writer_thread_or_a_dead_forwarder_fails_liveness() {
    let _up = broker().shared().await;
    let spool = tempfile::tempdir().unwrap();
    let writer =
        Bridge::spawn(BridgeOptions::new(spool.path()).env("FAILPOINTS", "spool::commit=3*off->panic")).await;
    // The fourth group commit (appends and acknowledgements both commit) kills the writer thread.
    let mut answers = Vec::new();
    for n in 0..50 {
        let status = writer.send(&Webhook::rename("@TGS#writer", n)).await.0;
        answers.push(status);
        if status != 200 {
            break;
        }
    }
    assert_eq!(answers.last(), Some(&500), "{answers:?}");
    assert!(answers.len() > 1, "{answers:?}");
    let health = writer.get("/healthz").await;
    assert_eq!(health.status(), 503);
    assert!(health.text().await.unwrap().contains("writer thread has stopped"));

    let spool = tempfile::tempdir().unwrap();
    let forwarder =
        Bridge::spawn(BridgeOptions::new(spool.path()).env("FAILPOINTS", "forwarder::dispatch=panic")).await;
    assert_eq!(forwarder.send(&Webhook::rename("@TGS#forwarder", 0)).await.0, 200);
    wait_for("liveness to fail", Duration::from_secs(10), || async {
        let r = forwarder.get("/healthz").await;
        r.status() == 503 && r.text().await.unwrap().contains("forwarder")
    })
    .await;
}

#[tokio::test]
async fn a_fatal_producer_error_builds_a_new_producer_and_loses_nothing() {
    let _up = broker().shared().await;
    let spool = tempfile::tempdir().unwrap();
    let bridge = Bridge::spawn(
        BridgeOptions::new(spool.path()).env("FAILPOINTS", "publisher::fatal=30*off->1*return"),
    )
    .await;
    let bridge = Arc::new(bridge);

    let answers = send_streams(&bridge, "fatal", 4, 50).await;

    let ok = answered(&answers, 200);
    assert_eq!(ok.len(), 200);
    let records = read_until(&bridge.topic, Duration::from_secs(60), |r| ok.is_subset(&names(r)));
    assert_per_group_order(&records);
    let text = scrape(&bridge).await;
    assert_eq!(sample(&text, "bridge_kafka_producer_restarts_total"), Some(1.0), "{}", bridge.logs());
    assert!(bridge.logs().contains("failed for good"));
}

#[tokio::test]
async fn a_producer_that_confirms_nothing_while_kafka_answers_is_replaced_and_nothing_is_lost() {
    let _up = broker().shared().await;
    let spool = tempfile::tempdir().unwrap();
    // After 20 records the producer wedges: it takes records and reports on none (a wedged
    // librdkafka: seen after a broker restart while it held a backlog).
    let bridge = Bridge::spawn(
        BridgeOptions::new(spool.path())
            .env("FAILPOINTS", "forwarder::wedge=20*off->1*return")
            .env("BRIDGE_KAFKA_STALL_SECS", 2),
    )
    .await;
    let bridge = Arc::new(bridge);

    let answers = send_streams(&bridge, "wedged", 4, 40).await;

    let ok = answered(&answers, 200);
    assert_eq!(ok.len(), 160);
    let records = read_until(&bridge.topic, Duration::from_secs(60), |r| ok.is_subset(&names(r)));
    assert_per_group_order(&records);
    assert_valid(&records);
    let text = scrape(&bridge).await;
    let restarts = sample(&text, "bridge_kafka_producer_restarts_total").unwrap_or(0.0);
    assert!(restarts >= 1.0, "{}", bridge.logs());
    assert!(bridge.logs().contains("confirmed no delivery for the stall time"));
    assert_eq!(bridge.get("/healthz").await.status().as_u16(), 200, "a stall is not a reason to stop");
}

#[tokio::test]
async fn a_producer_that_keeps_failing_stops_the_bridge_with_an_error() {
    let _up = broker().shared().await;
    let spool = tempfile::tempdir().unwrap();
    let mut bridge =
        Bridge::spawn(BridgeOptions::new(spool.path()).env("FAILPOINTS", "publisher::fatal=return")).await;
    assert_eq!(bridge.send(&Webhook::rename("@TGS#doomed", 0)).await.0, 200);

    let status = bridge.wait_exit(Duration::from_secs(60));

    assert!(!status.success(), "{status:?}");
    assert!(bridge.logs().contains("failed for good 5 times in a row"), "{}", bridge.logs());
    // The event stays in the spool for the next start, with a working producer.
    bridge.restart(&[("FAILPOINTS", "")]).await;
    read_exactly(&bridge.topic, 1, Duration::from_secs(60));
}

#[tokio::test]
async fn an_event_time_two_hours_ahead_is_published_with_the_receive_time() {
    let _up = broker().shared().await;
    let spool = tempfile::tempdir().unwrap();
    let bridge = Bridge::spawn(BridgeOptions::new(spool.path())).await;
    let ahead = tim_kafka_bridge::now_ms() + 2 * 3600 * 1000;
    let mut hook = Webhook::rename("@TGS#future", 0);
    hook.0["EventTime"] = serde_json::json!(ahead);
    let before = tim_kafka_bridge::now_ms();

    assert_eq!(bridge.send(&hook).await.0, 200);
    assert_eq!(bridge.send(&Webhook::rename("@TGS#future", 1)).await.0, 200);

    let records = read_exactly(&bridge.topic, 2, Duration::from_secs(60));
    let future = records.iter().find(|r| rename_of(r).1 == 0).unwrap();
    let ts = future.timestamp.unwrap();
    assert!(ts >= before && ts <= tim_kafka_bridge::now_ms(), "timestamp {ts} is the receive time");
    assert_eq!(future.value["event_time_ms"], ahead, "the value keeps the event's own time");
    assert_eq!(sample(&scrape(&bridge).await, "bridge_kafka_dead_lettered_total"), Some(0.0));
}

#[tokio::test]
async fn sigterm_with_deliveries_in_flight_leaves_no_duplicates() {
    let _up = broker().shared().await;
    let spool = tempfile::tempdir().unwrap();
    spool_directly(spool.path(), "@TGS#clean", 50_000).await;
    // A grace period far too short for the backlog: the stop comes with deliveries in flight. The
    // forwarder sends faster than the test can stop it, so the failpoint slows it to a few thousand
    // records a second (a millisecond's pause before one record in five).
    let mut bridge = Bridge::spawn(
        BridgeOptions::new(spool.path())
            .env("BRIDGE_SHUTDOWN_GRACE_SECS", 1)
            .env("FAILPOINTS", "forwarder::dispatch=20%sleep(1)"),
    )
    .await;
    wait_for("the first deliveries", Duration::from_secs(30), || async {
        sample(&scrape(&bridge).await, "bridge_kafka_delivered_total").unwrap_or(0.0) > 0.0
    })
    .await;

    assert!(bridge.terminate(Duration::from_secs(20)).success());
    let first_run = topic_len(&bridge.topic);
    bridge.restart(&[("BRIDGE_SHUTDOWN_GRACE_SECS", "30"), ("FAILPOINTS", "")]).await;

    let records = read_exactly(&bridge.topic, 50_000, Duration::from_secs(180));
    assert!(first_run > 0 && first_run < 50_000, "the first run stopped part-way ({first_run})");
    assert_exactly_once(&records, &changes("@TGS#clean", 50_000));
    assert_per_group_order(&records);
}

#[tokio::test]
async fn a_spooled_record_this_version_cannot_read_is_dead_lettered_whole_and_a_version_1_record_is_published(
) {
    let _up = broker().shared().await;
    let spool = tempfile::tempdir().unwrap();
    let (s, thread) = open_spool(spool.path());
    let verifier = verifier();
    let event = |n| {
        let body = Webhook::rename("@TGS#formats", n).body();
        verifier
            .check(&signed_query(now_secs()), body.as_bytes(), tim_kafka_bridge::now_ms())
            .unwrap()
            .event()
            .unwrap()
    };
    s.append(event(0).to_message().to_bytes()).await.unwrap();
    // Written by a future version: format byte 7.
    s.append(b"\x07from a newer bridge".to_vec()).await.unwrap();
    // Written by the version before the record format carried key and headers: the bare JSON.
    s.append(event(2).to_json()).await.unwrap();
    s.close();
    drop(s);
    thread.join();

    let bridge = Bridge::spawn(BridgeOptions::new(spool.path())).await;

    let main = read_exactly(&bridge.topic, 2, Duration::from_secs(60));
    assert_eq!(names(&main), HashSet::from([("@TGS#formats".to_owned(), 0), ("@TGS#formats".to_owned(), 2)]));
    assert_valid(&main);
    assert!(main.iter().all(|r| r.key == "@TGS#formats" && r.header("ce_id").is_some()));
    let dlq = read_exactly(&format!("{}.dlq", bridge.topic), 1, Duration::from_secs(60));
    assert!(dlq[0].header("bridge_dlq_reason").unwrap().contains("unreadable spool record"));
    assert_eq!(sample(&scrape(&bridge).await, "bridge_kafka_dead_lettered_total"), Some(1.0));
}

/// The topic's `max.message.bytes` shrank after an event was answered OK (the bridge checks the limit
/// before answering, so only a change of the topic gets a record this far): Kafka refuses the batch,
/// its records go one at a time, the one refused alone goes whole to the dead-letter topic with the
/// reason (from the producer's own delivery report), and every other record arrives, in order.
#[tokio::test]
async fn a_spooled_record_kafka_refuses_goes_alone_to_the_dead_letter_topic_and_the_rest_arrive_in_order() {
    let kafka = broker();
    let _up = kafka.shared().await;
    let spool = tempfile::tempdir().unwrap();
    let opts = BridgeOptions::new(spool.path());
    kafka.create_topic_taking_at_most(&opts.topic, 20_000);
    spool_renames_one_too_large(spool.path(), "@TGS#refused", 200, 101).await;

    let bridge = Bridge::spawn(opts).await;

    // Records delivered after the refused one in the failed batch are sent again after it: repeats
    // (consumers drop them by event_id), never a gap or a reorder.
    let expected: HashSet<_> =
        (0..200).filter(|n| *n != 101).map(|n| (format!("@TGS#refused{}", n % 4), n)).collect();
    let main = read_to_end(&broker().bootstrap(), &bridge.topic, &expected, Duration::from_secs(60));
    assert_eq!(names(&main), expected, "every other record, and not the refused one");
    assert_per_group_order(&main);
    let dlq = read_exactly(&format!("{}.dlq", bridge.topic), 1, Duration::from_secs(60));
    assert_eq!(dlq[0].key, "@TGS#refused1");
    assert!(
        dlq[0].header("bridge_dlq_reason").unwrap().contains("too large"),
        "{:?}",
        dlq[0].header("bridge_dlq_reason")
    );
    assert_eq!(dlq[0].header("bridge_dlq_topic"), Some(bridge.topic.as_str()));
    assert!(dlq[0].header("ce_id").is_some(), "the record's own headers travel with it");
    assert_eq!(rename_of(&dlq[0]), ("@TGS#refused1".to_owned(), 101));
    assert_eq!(sample(&scrape(&bridge).await, "bridge_kafka_dead_lettered_total"), Some(1.0));
    // Refused by the broker (a delivery report), not by librdkafka before sending.
    assert!(
        bridge.logs().contains("Kafka refused a batch; publishing its records one at a time"),
        "{}",
        bridge.logs()
    );
}

/// Spools `n` renames over four groups (`<prefix>0` to `<prefix>3`), the one numbered `big` carrying
/// 40 000 hex digits, which lz4 cannot squeeze under a topic's 20 000 bytes: answered OK, then refused
/// by Kafka.
pub(crate) async fn spool_renames_one_too_large(dir: &Path, prefix: &str, n: usize, big: usize) {
    let (s, thread) = open_spool(dir);
    let verifier = verifier();
    let noise = incompressible(40_000);
    for i in 0..n {
        let mut hook = Webhook::rename(&format!("{prefix}{}", i % 4), i);
        if i == big {
            hook.0["Introduction"] = serde_json::Value::String(noise.clone());
        }
        let checked =
            verifier.check(&signed_query(now_secs()), hook.body().as_bytes(), tim_kafka_bridge::now_ms());
        s.append(checked.unwrap().event().unwrap().to_message().to_bytes()).await.unwrap();
    }
    s.close();
    drop(s);
    thread.join();
}

/// An event Kafka refuses on the topic and on the dead-letter topic too was answered OK: it is never
/// dropped. It is parked in the spool's quarantine (counted, the alert's metric), the rest flow on, and
/// `drain` publishes it once the topic takes it.
#[tokio::test]
async fn an_event_both_topics_refuse_is_quarantined_not_dropped_and_drain_publishes_it_once_the_topic_takes_it(
) {
    let kafka = broker();
    let _up = kafka.shared().await;
    let spool = tempfile::tempdir().unwrap();
    let opts = BridgeOptions::new(spool.path());
    let topic = opts.topic.clone();
    kafka.create_topic_taking_at_most(&topic, 20_000);
    kafka.create_topic_taking_at_most(&format!("{topic}.dlq"), 20_000);
    spool_renames_one_too_large(spool.path(), "@TGS#parked", 100, 41).await;

    let mut bridge = Bridge::spawn(opts).await;
    let expected: HashSet<_> =
        (0..100).filter(|n| *n != 41).map(|n| (format!("@TGS#parked{}", n % 4), n)).collect();
    let main = read_to_end(&broker().bootstrap(), &topic, &expected, Duration::from_secs(60));
    assert_eq!(names(&main), expected, "every other record flows on");
    assert_per_group_order(&main);
    wait_for("the event to be quarantined", Duration::from_secs(30), || async {
        sample(&scrape(&bridge).await, "bridge_kafka_quarantined_total") == Some(1.0)
    })
    .await;
    assert_eq!(sample(&scrape(&bridge).await, "bridge_kafka_dead_lettered_total"), Some(0.0));
    let parked: Vec<_> =
        std::fs::read_dir(spool.path().join("quarantine")).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(parked.len(), 1, "{parked:?}");
    assert!(bridge.logs().contains("it is parked in the quarantine"), "{}", bridge.logs());
    // The spool let go of it only once it was parked: a restart does not send it again.
    assert!(bridge.terminate(Duration::from_secs(20)).success());

    // The topic takes it now; drain publishes it and empties the quarantine.
    let admin: rdkafka::admin::AdminClient<_> =
        rdkafka::ClientConfig::new().set("bootstrap.servers", kafka.bootstrap()).create().unwrap();
    let raise = rdkafka::admin::AlterConfig::new(rdkafka::admin::ResourceSpecifier::Topic(&topic))
        .set("max.message.bytes", "1000000");
    let altered = admin.alter_configs([&raise], &rdkafka::admin::AdminOptions::new()).await.unwrap();
    assert!(altered.iter().all(|r| r.is_ok()), "{altered:?}");
    let out = tokio::task::spawn_blocking({
        let (dir, topic, brokers) = (spool.path().to_owned(), topic.clone(), kafka.bootstrap());
        move || crate::drain::drain(&dir, &topic, &brokers, &[])
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // (The records after the refused one in its batch were published again: repeats, as documented.)
    let everything: HashSet<_> = (0..100).map(|n| (format!("@TGS#parked{}", n % 4), n)).collect();
    let all = read_to_end(&broker().bootstrap(), &topic, &everything, Duration::from_secs(30));
    assert_eq!(names(&all), everything);
    assert_eq!(all.iter().filter(|r| try_rename_of(r) == Some(("@TGS#parked1".to_owned(), 41))).count(), 1);
    assert!(
        std::fs::read_dir(spool.path().join("quarantine")).unwrap().next().is_none(),
        "the quarantine is empty"
    );
}

/// The bridge's stdout is a pipe nobody reads once the bridge has said where it listens: at debug
/// level the pipe fills within the first webhooks, and every webhook is still answered. (The port is
/// read from the bridge's own line, not picked beforehand: a port picked free can be taken by another
/// process before the bridge binds it.)
#[tokio::test]
async fn a_blocked_stdout_does_not_stall_webhooks() {
    use std::io::{BufRead, BufReader, Read};

    let _up = broker().shared().await;
    let spool = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tim-kafka-bridge"))
        .env_clear()
        .envs([
            ("BRIDGE_SDK_APP_ID", APP_ID),
            ("BRIDGE_CALLBACK_TOKEN", TOKEN),
            ("BRIDGE_LISTEN", "127.0.0.1:0"),
            ("BRIDGE_KAFKA_BROKERS", &broker().bootstrap()),
            ("BRIDGE_SPOOL_DIR", &spool.path().display().to_string()),
            ("BRIDGE_LOG_FORMAT", "json"),
            ("RUST_LOG", "debug"),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read up to the "listening" line, then hand the pipe back unread (kept open: the bridge's writes
    // block, they do not fail).
    let (tx, rx) = std::sync::mpsc::channel();
    let mut stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        let mut port = None;
        let mut reader = BufReader::new(&mut stdout);
        let mut line = String::new();
        while port.is_none() && reader.read_line(&mut line).unwrap_or(0) > 0 {
            if line.contains("tim-kafka-bridge listening") {
                let v: serde_json::Value = serde_json::from_str(&line).unwrap();
                port = v["port"].as_u64();
            }
            line.clear();
        }
        drop(reader);
        let _ = tx.send((port, stdout));
    });
    let (port, mut stdout) = match rx.recv_timeout(Duration::from_secs(30)) {
        Ok((Some(port), stdout)) => (port, stdout),
        _ => {
            let _ = child.kill();
            let mut stderr = String::new();
            let _ = child.stderr.take().unwrap().read_to_string(&mut stderr);
            panic!("the bridge did not say where it listens; its stderr:\n{stderr}");
        }
    };
    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
    let url = format!("http://127.0.0.1:{port}");
    for n in 0..2000 {
        let resp = http
            .post(format!("{url}/webhook?{}", signed_query(now_secs())))
            .body(Webhook::rename("@TGS#quiet", n).body())
            .send()
            .await
            .unwrap_or_else(|e| panic!("webhook {n} was not answered: {e}"));
        assert_eq!(resp.status(), 200);
    }
    let _ = child.kill();
    let _ = child.wait();
    // What the bridge wrote and nobody read: a full pipe (64 KiB on Linux), or the test proved nothing.
    let mut unread = Vec::new();
    stdout.read_to_end(&mut unread).unwrap();
    assert!(unread.len() >= 60 * 1024, "the pipe never filled: {} bytes were waiting", unread.len());
}

/// The topic's `max.message.bytes` lowered under load, below the producer's batches: batches Kafka now
/// refuses are sent again record by record, and nothing is lost. What librdkafka holds unsent behind a
/// refused batch is purged and sent again after it, and the producer is refitted to the smaller limit
/// before more is sent; a batch already on the wire to the partition's leader may still land before
/// the refused one, and is then published again after it: each group's last copies are in order (and
/// the first copies out of order are counted and printed, not asserted away).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lowering_max_message_bytes_under_load_loses_nothing_and_keeps_each_groups_last_copies_in_order() {
    let kafka = broker();
    let _up = kafka.shared().await;
    let spool = tempfile::tempdir().unwrap();
    let bridge = Bridge::spawn(BridgeOptions::new(spool.path())).await;
    let topic = bridge.topic.clone();
    bridge.warm_up("@TGS#shrink-warm").await;
    // Each record about 1.6 KB even compressed: the topic's new limit takes one, not a batch of three.
    let noise = incompressible(1200);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let ok: Mutex<HashSet<(String, usize)>> = Mutex::new(HashSet::new());
    let senders = (0..8).map(|s| {
        let (bridge, noise, stop, ok) = (&bridge, &noise, &stop, &ok);
        async move {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for g in 0..3 {
                    let group = format!("@TGS#shrink{s}-{g}");
                    let mut hook = Webhook::rename(&group, n);
                    hook.0["Introduction"] = serde_json::Value::String(noise.clone());
                    if bridge.send(&hook).await.0 == 200 {
                        ok.lock().unwrap().insert((group, n));
                    }
                }
                n += 1;
            }
        }
    });
    let shrink = async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let admin: rdkafka::admin::AdminClient<_> =
            rdkafka::ClientConfig::new().set("bootstrap.servers", kafka.bootstrap()).create().unwrap();
        let lower = rdkafka::admin::AlterConfig::new(rdkafka::admin::ResourceSpecifier::Topic(&topic))
            .set("max.message.bytes", "4000");
        let altered = admin.alter_configs([&lower], &rdkafka::admin::AdminOptions::new()).await.unwrap();
        assert!(altered.iter().all(|r| r.is_ok()), "{altered:?}");
        tokio::time::sleep(Duration::from_secs(6)).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    };
    tokio::join!(futures_util::future::join_all(senders), shrink);
    let ok = ok.into_inner().unwrap();
    let records = read_to_end(&kafka.bootstrap(), &topic, &ok, Duration::from_secs(90));
    let answers = Answers { sent: ok.len(), ok, ..Answers::default() };
    let tally = Tally::of(&answers, &records);
    println!(
        "max.message.bytes lowered under load: {tally}; {}",
        scrape(&bridge)
            .await
            .lines()
            .filter(|l| l.starts_with("bridge_kafka_producer_restarts_total")
                || l.starts_with("bridge_kafka_dead_lettered_total"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    assert!(tally.lost.is_empty(), "{tally}; lost: {:?}", &tally.lost[..tally.lost.len().min(10)]);
    // Each change's last copy, in the order the partition holds them: a group's must be in order.
    let mut sorted: Vec<&Record> = records.iter().filter(|r| try_rename_of(r).is_some()).collect();
    sorted.sort_by_key(|r| (r.partition, r.offset));
    let mut last_copy: HashMap<(String, usize), usize> = HashMap::new();
    for (i, r) in sorted.iter().enumerate() {
        last_copy.insert(rename_of(r), i);
    }
    let mut by_group: HashMap<String, Vec<(usize, usize)>> = HashMap::new();
    for ((g, n), at) in last_copy {
        by_group.entry(g).or_default().push((at, n));
    }
    for (g, mut copies) in by_group {
        copies.sort();
        assert!(copies.windows(2).all(|w| w[0].1 < w[1].1), "group {g}: last copies out of order");
    }
    // Either a batch was refused, or the limits read every 10 s saw the shrink first and a producer
    // that fits it was built before any was: the shrink was met one way or the other.
    let logs = bridge.logs();
    assert!(
        logs.contains("Kafka refused a batch")
            || logs.contains("a new producer will fit it before more is sent"),
        "the limit did bite"
    );
}

/// A producer that loses track of one record (never reports on it) while it confirms the later records
/// of the same partition is replaced within seconds, not after the stall time (an hour here): the
/// lost record is published again, the confirmed ones are not. (The second record loses its report:
/// the first warms the partition, see `forwarder`.)
#[tokio::test]
async fn a_record_the_producer_never_reports_on_while_it_confirms_later_ones_is_sent_again_within_seconds() {
    let _up = broker().shared().await;
    let spool = tempfile::tempdir().unwrap();
    let bridge = Bridge::spawn(
        BridgeOptions::new(spool.path())
            .env("FAILPOINTS", "publisher::lose_report=1*off->1*return->off")
            .env("BRIDGE_KAFKA_STALL_SECS", 3600),
    )
    .await;
    let started = std::time::Instant::now();
    let sent: HashSet<_> = (0..30).map(|n| ("@TGS#lost-report".to_owned(), n)).collect();
    for n in 0..30 {
        assert_eq!(bridge.send(&Webhook::rename("@TGS#lost-report", n)).await.0, 200);
    }
    wait_for("the spool to be empty", Duration::from_secs(30), || async {
        sample(&scrape(&bridge).await, "bridge_spool_pending_events") == Some(0.0)
    })
    .await;
    let took = started.elapsed();
    let records = read_to_end(&broker().bootstrap(), &bridge.topic, &sent, Duration::from_secs(30));
    assert_eq!(names(&records), sent);
    assert_per_group_order(&records);
    assert_eq!(sample(&scrape(&bridge).await, "bridge_kafka_producer_restarts_total"), Some(1.0));
    assert!(
        bridge.logs().contains("confirmed a later record of this partition but never this one"),
        "{}",
        bridge.logs()
    );
    // The lost one twice (it was in Kafka all along), no other repeated.
    assert_eq!(records.len(), 31, "{records:?}");
    println!("a lost delivery report: everything on the topic {took:?} after the first webhook");
    assert!(took < Duration::from_secs(20), "{took:?}");
}
