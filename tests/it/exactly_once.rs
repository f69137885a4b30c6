//! `BRIDGE_EXACTLY_ONCE=true`: the spool published in Kafka transactions, with its position inside
//! them. Every check reads the topic the way a `read_committed` consumer does and compares identities
//! (`event_id`, and each change's `(group, n)`), never counts: a loss and a repeat add up to the right
//! number. Where a fault must have hit an open transaction, a `read_uncommitted` read shows the copies
//! Kafka holds but aborted, proving the test reached the window it is about.

use std::collections::HashSet;
use std::time::Duration;

use crate::helpers::*;

const EOS: &str = "BRIDGE_EXACTLY_ONCE";

fn eos_options(spool: &std::path::Path) -> BridgeOptions {
    BridgeOptions::new(spool).env(EOS, "true")
}

/// The load's changes answered 200 are each on the topic exactly once for a `read_committed` reader,
/// in per-group order; nothing else of the load is there twice. Returns what a `read_uncommitted`
/// reader sees beyond that (aborted copies).
fn assert_committed_exactly_once(bootstrap: &str, topic: &str, answers: &Answers) -> usize {
    let committed = read_all_as(bootstrap, topic, "read_committed", Duration::from_secs(60));
    let tally = Tally::of(answers, &committed);
    tally.assert_nothing_lost_nor_reordered();
    assert_eq!(tally.repeats, 0, "{tally}: an event_id is on the topic twice for a read_committed reader");
    let mut seen = HashSet::new();
    for r in &committed {
        if let Some(change) = try_rename_of(r) {
            assert!(seen.insert(change.clone()), "{change:?} is on the topic twice ({tally})");
        }
    }
    let uncommitted = read_all_as(bootstrap, topic, "read_uncommitted", Duration::from_secs(60));
    uncommitted.len() - committed.len()
}

/// Waits until the bridge's spool holds nothing it has not published (committed, in this mode).
async fn wait_until_published(bridge: &Bridge, timeout: Duration) {
    wait_for("the bridge to publish everything", timeout, || async {
        sample(&scrape(bridge).await, "bridge_spool_pending_events") == Some(0.0)
    })
    .await;
}

/// The committed position the bridge wrote for its spool (the position topic's last record of that
/// key, read committed).
fn committed_position(bootstrap: &str, topic: &str, spool: &std::path::Path) -> Option<u64> {
    let id = std::fs::read_to_string(spool.join("id")).expect("the spool has an id").trim().to_owned();
    read_all_as(bootstrap, &format!("{topic}.positions"), "read_committed", Duration::from_secs(30))
        .iter()
        .filter(|r| r.key == id)
        .map(|r| r.value["seq"].as_u64().expect("a position's seq"))
        .next_back()
}

#[tokio::test]
async fn under_load_through_five_kill_9s_every_event_is_on_the_topic_exactly_once_in_group_order() {
    let _up = broker().shared().await;
    let spool = tempfile::tempdir().unwrap();
    // A fixed port: the load goes on sending to it across restarts.
    let listen = format!("127.0.0.1:{}", free_port());
    let mut bridge = Bridge::spawn(eos_options(spool.path()).env("BRIDGE_LISTEN", &listen)).await;
    let load = Load::start(
        bridge.url("/webhook"),
        "eos-kill",
        LoadShape { senders: 8, groups: 200, rate_per_sender: 60, fresh_connections: false },
    );
    // Five crashes: three plain kill -9 at whatever moment the load has reached (mostly inside an open
    // transaction), one in the middle of a commit, one between a commit and the ack file's update.
    let faults = [
        None,
        Some("publisher::mid_commit=5*off->1*return(3)"),
        None,
        Some("forwarder::after_commit=5*off->1*return"),
        None,
    ];
    for (round, failpoint) in faults.iter().enumerate() {
        load.wait_for_more_ok(300, Duration::from_secs(60)).await;
        match failpoint {
            None => bridge.kill9(),
            Some(f) => {
                bridge.kill9();
                let _ = bridge.wait_exit(Duration::from_secs(10));
                bridge.restart(&[("FAILPOINTS", f)]).await;
                load.wait_for_more_ok(50, Duration::from_secs(60)).await;
                // The failpoint kills the process itself (while the load goes on).
                let status = bridge.exited(Duration::from_secs(60)).await;
                assert!(!status.success(), "round {round}: the failpoint {f} did not fire");
            }
        }
        let _ = bridge.wait_exit(Duration::from_secs(10));
        bridge.restart(&[("FAILPOINTS", "")]).await;
    }
    load.wait_for_more_ok(300, Duration::from_secs(60)).await;
    let answers = load.stop().await;
    assert!(bridge.terminate(Duration::from_secs(30)).success(), "{}", bridge.logs());

    let aborted = assert_committed_exactly_once(&broker().bootstrap(), &bridge.topic, &answers);
    assert!(aborted > 0, "no kill hit an open transaction: the test proved nothing");
    // The ack file followed the last commit.
    let position = committed_position(&broker().bootstrap(), &bridge.topic, spool.path());
    let logs = bridge.logs();
    assert!(position.is_some(), "{logs}");
    assert!(
        logs.contains("the committed position is ahead of the ack file"),
        "the crash between a commit and its ack was not repaired from the position: {logs}"
    );
}

#[tokio::test]
async fn a_second_bridge_on_a_copy_of_the_spool_fences_the_first_which_stops_and_says_why() {
    let _up = broker().shared().await;
    let spool = tempfile::tempdir().unwrap();
    let mut first = Bridge::spawn(eos_options(spool.path())).await;
    for n in 0..10 {
        assert_eq!(first.send(&Webhook::rename("@TGS#fence", n)).await.0, 200);
    }
    read_until(&first.topic, Duration::from_secs(30), |r| r.len() >= 10);
    let id = std::fs::read_to_string(spool.path().join("id")).unwrap().trim().to_owned();

    // A copy of the directory carries the id: a second bridge on it takes over the transactional id.
    let copy = tempfile::tempdir().unwrap();
    let status = std::process::Command::new("cp")
        .args(["-a", &format!("{}/.", spool.path().display()), &copy.path().display().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let second = Bridge::spawn(eos_options(copy.path()).env("BRIDGE_TOPIC", &first.topic)).await;
    // (The forwarder opens its transactions after the listener is up.)
    wait_for("the second to open its transactions", Duration::from_secs(60), || async {
        second.logs().contains("exactly-once: Kafka transactions ready")
    })
    .await;

    // The first learns it is fenced at its next send.
    for n in 10..13 {
        let _ = first.try_send(&Webhook::rename("@TGS#fence", n)).await;
    }
    let status = first.wait_exit(Duration::from_secs(60));
    assert!(!status.success(), "the fenced bridge kept running: {}", first.logs());
    let logs = first.logs();
    assert!(logs.contains("fenced this bridge") && logs.contains(&id), "{logs}");

    // The second resumed after the committed position: the shared ten are on the topic once each.
    for n in 13..15 {
        assert_eq!(second.send(&Webhook::rename("@TGS#fence", n)).await.0, 200);
    }
    let records = read_until(&first.topic, Duration::from_secs(30), |r| {
        r.iter().any(|r| try_rename_of(r) == Some(("@TGS#fence".into(), 14)))
    });
    let committed =
        read_all_as(&broker().bootstrap(), &first.topic, "read_committed", Duration::from_secs(30));
    let names: Vec<(String, usize)> = committed.iter().filter_map(try_rename_of).collect();
    let once: HashSet<_> = names.iter().cloned().collect();
    assert_eq!(once.len(), names.len(), "a change is on the topic twice: {names:?}");
    assert!(changes("@TGS#fence", 10).is_subset(&once), "{names:?}");
    assert!(once.contains(&("@TGS#fence".to_owned(), 14)), "{records:?}");
    assert_per_group_order(&committed);

    // The first's spool took other events under the numbers the second committed: restarted, it fences
    // the second, finds the position is not its spool's and refuses to publish (it would otherwise
    // acknowledge events of its own that are on no topic).
    first.restart(&[]).await;
    let status = first.wait_exit(Duration::from_secs(60));
    assert!(!status.success(), "{}", first.logs());
    assert!(first.logs().contains("refusing to publish"), "{}", first.logs());
    let after = read_all_as(&broker().bootstrap(), &first.topic, "read_committed", Duration::from_secs(30));
    assert_eq!(after.len(), committed.len(), "the refused bridge published something");
}

#[tokio::test]
async fn a_fatal_producer_error_aborts_and_a_new_producer_publishes_each_event_once() {
    let _up = broker().shared().await;
    let spool = tempfile::tempdir().unwrap();
    let bridge =
        Bridge::spawn(eos_options(spool.path()).env("FAILPOINTS", "publisher::fatal=300*off->1*return"))
            .await;
    let load = Load::start(
        bridge.url("/webhook"),
        "eos-fatal",
        LoadShape { senders: 4, groups: 40, rate_per_sender: 100, fresh_connections: false },
    );
    load.wait_for_more_ok(1000, Duration::from_secs(60)).await;
    let answers = load.stop().await;
    wait_until_published(&bridge, Duration::from_secs(60)).await;

    assert_committed_exactly_once(&broker().bootstrap(), &bridge.topic, &answers);
    let text = scrape(&bridge).await;
    assert_eq!(sample(&text, "bridge_kafka_producer_restarts_total"), Some(1.0), "{}", bridge.logs());
    assert!(bridge.logs().contains("publishing again from the last committed position"), "{}", bridge.logs());
}

#[tokio::test]
async fn commits_that_fail_retriably_or_must_abort_lose_and_repeat_nothing() {
    let _up = broker().shared().await;
    let spool = tempfile::tempdir().unwrap();
    // The 6th to 8th commits fail as timeouts (tried again), the 9th to 11th must abort.
    let bridge = Bridge::spawn(
        eos_options(spool.path())
            .env("FAILPOINTS", "publisher::commit=5*off->3*return(retriable)->3*return(abortable)"),
    )
    .await;
    let load = Load::start(
        bridge.url("/webhook"),
        "eos-commit",
        LoadShape { senders: 4, groups: 40, rate_per_sender: 50, fresh_connections: false },
    );
    load.wait_for_more_ok(600, Duration::from_secs(60)).await;
    let answers = load.stop().await;
    wait_until_published(&bridge, Duration::from_secs(60)).await;

    let aborted = assert_committed_exactly_once(&broker().bootstrap(), &bridge.topic, &answers);
    assert!(aborted > 0, "no transaction was aborted: {}", bridge.logs());
    let text = scrape(&bridge).await;
    assert!(sample(&text, r#"bridge_kafka_transactions_total{outcome="aborted"}"#) >= Some(3.0), "{text}");
    assert!(bridge.logs().contains("committing the Kafka transaction failed for now"));
}

#[tokio::test]
async fn a_wedged_producer_is_replaced_inside_the_transaction_discipline_and_nothing_repeats() {
    let _up = broker().shared().await;
    let spool = tempfile::tempdir().unwrap();
    let bridge = Bridge::spawn(
        eos_options(spool.path())
            .env("FAILPOINTS", "forwarder::wedge=200*off->1*return")
            .env("BRIDGE_KAFKA_STALL_SECS", 2),
    )
    .await;
    let load = Load::start(
        bridge.url("/webhook"),
        "eos-wedge",
        LoadShape { senders: 4, groups: 40, rate_per_sender: 50, fresh_connections: false },
    );
    load.wait_for_more_ok(600, Duration::from_secs(60)).await;
    let answers = load.stop().await;
    wait_until_published(&bridge, Duration::from_secs(60)).await;

    assert_committed_exactly_once(&broker().bootstrap(), &bridge.topic, &answers);
    let text = scrape(&bridge).await;
    assert!(sample(&text, "bridge_kafka_producer_restarts_total") >= Some(1.0), "{}", bridge.logs());
    assert!(bridge.logs().contains("confirmed no delivery for the stall time"));
}

#[tokio::test]
async fn a_broker_killed_under_load_and_restarted_leaves_every_event_once() {
    let _down = broker().exclusive().await;
    let spool = tempfile::tempdir().unwrap();
    let bridge =
        Bridge::spawn(eos_options(spool.path()).env("BRIDGE_EOS_TRANSACTION_TIMEOUT_SECS", 10)).await;
    assert_eq!(bridge.send(&Webhook::rename("@TGS#eos-broker-warm", 0)).await.0, 200);
    read_until(&bridge.topic, Duration::from_secs(30), |r| !r.is_empty());
    let load = Load::start(
        bridge.url("/webhook"),
        "eos-broker",
        LoadShape { senders: 4, groups: 40, rate_per_sender: 50, fresh_connections: false },
    );
    load.wait_for_more_ok(300, Duration::from_secs(60)).await;
    broker().kill();
    // Webhooks are still answered from the spool while the broker is gone.
    load.wait_for_more_ok(200, Duration::from_secs(60)).await;
    broker().start();
    load.wait_for_more_ok(300, Duration::from_secs(120)).await;
    let answers = load.stop().await;
    wait_until_published(&bridge, Duration::from_secs(120)).await;

    let mut answers = answers;
    answers.ok.insert(("@TGS#eos-broker-warm".into(), 0));
    assert_committed_exactly_once(&broker().bootstrap(), &bridge.topic, &answers);
}

#[tokio::test]
async fn with_kafka_down_at_start_webhooks_are_answered_ok_and_each_is_published_once_when_it_returns() {
    let _down = broker().exclusive().await;
    broker().stop();
    let spool = tempfile::tempdir().unwrap();
    let bridge = Bridge::spawn(eos_options(spool.path())).await;
    let mut answers = Answers::default();
    for n in 0..20 {
        assert_eq!(bridge.send(&Webhook::rename("@TGS#eos-down", n)).await.0, 200, "{}", bridge.logs());
        answers.sent += 1;
        answers.ok.insert(("@TGS#eos-down".to_owned(), n));
    }
    wait_for("the forwarder to say it waits for Kafka", Duration::from_secs(60), || async {
        bridge.logs().contains("Kafka's transactions are not ready yet")
    })
    .await;
    broker().start();
    wait_until_published(&bridge, Duration::from_secs(120)).await;

    assert_committed_exactly_once(&broker().bootstrap(), &bridge.topic, &answers);
}

/// A record Kafka refuses for good fails its whole transaction: the bridge aborts, sends the records
/// one at a time from the last committed position through the refused one, dead-letters the one
/// refused alone (outside the transaction, remembered so that the next abort does not send it again),
/// and commits the rest: each on the topic once, in order.
#[tokio::test]
async fn a_record_kafka_refuses_goes_alone_to_the_dead_letter_topic_and_every_other_is_on_the_topic_once() {
    let kafka = broker();
    let _up = kafka.shared().await;
    let spool = tempfile::tempdir().unwrap();
    let opts = eos_options(spool.path());
    kafka.create_topic_taking_at_most(&opts.topic, 20_000);
    crate::faults::spool_renames_one_too_large(spool.path(), "@TGS#eos-refused", 200, 101).await;

    let bridge = Bridge::spawn(opts).await;
    wait_until_published(&bridge, Duration::from_secs(120)).await;

    let answers = Answers {
        ok: (0..200).filter(|n| *n != 101).map(|n| (format!("@TGS#eos-refused{}", n % 4), n)).collect(),
        ..Default::default()
    };
    assert_committed_exactly_once(&broker().bootstrap(), &bridge.topic, &answers);
    let committed =
        read_all_as(&broker().bootstrap(), &bridge.topic, "read_committed", Duration::from_secs(30));
    assert!(!committed.iter().any(|r| try_rename_of(r) == Some(("@TGS#eos-refused1".into(), 101))));
    let dlq = read_all_as(
        &broker().bootstrap(),
        &format!("{}.dlq", bridge.topic),
        "read_committed",
        Duration::from_secs(30),
    );
    assert_eq!(dlq.len(), 1, "the refused record once on the dead-letter topic: {dlq:?}");
    assert_eq!(rename_of(&dlq[0]), ("@TGS#eos-refused1".to_owned(), 101));
    let text = scrape(&bridge).await;
    assert!(sample(&text, r#"bridge_kafka_transactions_total{outcome="aborted"}"#) >= Some(1.0), "{text}");
}

/// `tim-kafka-bridge drain` in exactly-once mode, killed (a real SIGKILL, from a failpoint) between a
/// commit and the ack file's update, then run again: the second run resumes after the committed
/// position, so every spooled change is on the topic once.
#[tokio::test]
async fn drain_killed_between_a_commit_and_its_ack_then_run_again_publishes_each_event_once() {
    let _up = broker().shared().await;
    let spool = tempfile::tempdir().unwrap();
    spool_directly(spool.path(), "@TGS#eos-drain", 1000).await;
    let topic = unique("it-eos-drain");
    let run = |extra: Vec<(&'static str, &'static str)>| {
        let (dir, topic) = (spool.path().to_owned(), topic.clone());
        tokio::task::spawn_blocking(move || {
            let mut env = vec![("BRIDGE_EXACTLY_ONCE", "true"), ("BRIDGE_EOS_COMMIT_RECORDS", "100")];
            env.extend(extra);
            crate::drain::drain(&dir, &topic, &broker().bootstrap(), &env)
        })
    };

    let killed = run(vec![("FAILPOINTS", "forwarder::after_commit=3*off->1*return")]).await.unwrap();
    assert!(
        !killed.status.success(),
        "the failpoint did not fire: {}",
        String::from_utf8_lossy(&killed.stdout)
    );
    let again = run(vec![]).await.unwrap();
    let logs = String::from_utf8_lossy(&again.stdout).into_owned() + &String::from_utf8_lossy(&again.stderr);
    assert!(again.status.success(), "{:?}: {logs}", again.status);
    assert!(logs.contains("the committed position is ahead of the ack file"), "{logs}");

    let records = read_all_as(&broker().bootstrap(), &topic, "read_committed", Duration::from_secs(60));
    assert_exactly_once(&records, &changes("@TGS#eos-drain", 1000));
    assert_per_group_order(&records);
    assert!(segments(spool.path()).is_empty(), "nothing left in the spool");
}
