//! Against a replicated Kafka: a three-node KRaft cluster (replication factor 3,
//! `min.insync.replicas=2`) losing its partition leader, losing two nodes, and restarted node by node,
//! each under load from concurrent senders over many groups. Every webhook answered OK must reach the
//! topic, each group's changes in order once repeats are dropped by `event_id`.
//!
//! The cluster is started once for the run and shared; each test breaks it, so they take it one at a
//! time ([`Cluster::exclusive`]), each on a topic of its own.

use std::time::{Duration, Instant};

use crate::helpers::*;

/// A bridge with its own spool, publishing to a new topic of the cluster whose three partitions are
/// all led by node `leader`.
async fn bridge_on_cluster(spool: &std::path::Path, leader: u8, extra: &[(&str, &str)]) -> Bridge {
    let mut opts = BridgeOptions::new(spool).env("BRIDGE_KAFKA_BROKERS", cluster().bootstrap());
    for (k, v) in extra {
        opts = opts.env(k, v);
    }
    opts.topic = unique("it-cluster");
    // Before the bridge starts: its first metadata request would create the topic as the cluster's
    // defaults make it.
    topic_led_by(&opts.topic, leader).await;
    Bridge::spawn(opts).await
}

/// Creates the bridge's topic with `leader` leading all three partitions, and waits until it does.
async fn topic_led_by(topic: &str, leader: u8) {
    let kafka = cluster();
    kafka.create_topic(topic, leader);
    wait_for(&format!("node {leader} to lead every partition of {topic}"), Duration::from_secs(30), || {
        let topic = topic.to_owned();
        async move {
            let leaders = tokio::task::spawn_blocking(move || cluster().leaders(&topic)).await.unwrap();
            leaders.len() == 3 && leaders.values().all(|l| *l == i32::from(leader))
        }
    })
    .await;
}

async fn metric(bridge: &Bridge, name: &str) -> f64 {
    sample(&scrape(bridge).await, name).unwrap_or(0.0)
}

/// Waits until Kafka has acknowledged `more` events beyond those it had.
async fn wait_delivered_more(bridge: &Bridge, more: usize, timeout: Duration) {
    let target = metric(bridge, "bridge_kafka_delivered_total").await as usize + more;
    wait_delivered(bridge, target, timeout).await;
}

/// Waits until Kafka has acknowledged `target` events in all.
async fn wait_delivered(bridge: &Bridge, target: usize, timeout: Duration) {
    wait_for(&format!("{target} events delivered"), timeout, || async {
        metric(bridge, "bridge_kafka_delivered_total").await >= target as f64
    })
    .await;
}

/// Reads everything of `answers` back from the cluster and tallies it.
async fn tally(topic: &str, answers: &Answers) -> Tally {
    let (topic, expected) = (topic.to_owned(), answers.ok.clone());
    let records = tokio::task::spawn_blocking(move || {
        read_to_end(&cluster().bootstrap(), &topic, &expected, Duration::from_secs(180))
    })
    .await
    .unwrap();
    Tally::of(answers, &records)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_partition_leader_under_load_loses_no_ok_event_reorders_none_and_answers_only_200() {
    const LEADER: u8 = 2;
    let started = Instant::now();
    let kafka = cluster();
    let _only = kafka.exclusive().await;
    let spool = tempfile::tempdir().unwrap();
    let bridge = bridge_on_cluster(spool.path(), LEADER, &[]).await;
    let load = Load::start(bridge.url("/webhook"), "leader", LoadShape::default());
    wait_delivered_more(&bridge, 500, Duration::from_secs(60)).await;

    kafka.kill(LEADER).await;
    // The bridge finds the new leaders and publishes everything answered before the kill and more,
    // with the old leader still down.
    wait_delivered(&bridge, load.ok_count() + 1000, Duration::from_secs(120)).await;
    let answers = load.stop().await;
    let tally = tally(&bridge.topic, &answers).await;
    kafka.start_nodes(&[LEADER]).await;

    println!("leader killed: {tally}; {:.0?}", started.elapsed());
    assert!(tally.non_200.is_empty(), "every webhook answered 200: {tally}");
    tally.assert_nothing_lost_nor_reordered();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_two_of_three_brokers_down_webhooks_are_answered_ok_readyz_says_why_and_all_arrive_after() {
    let started = Instant::now();
    let kafka = cluster();
    let _only = kafka.exclusive().await;
    let spool = tempfile::tempdir().unwrap();
    let bridge = bridge_on_cluster(spool.path(), 1, &[("BRIDGE_READY_KAFKA_WINDOW_SECS", "3")]).await;
    let load = Load::start(bridge.url("/webhook"), "minority", LoadShape::default());
    wait_delivered_more(&bridge, 300, Duration::from_secs(60)).await;
    assert_eq!(bridge.get("/readyz").await.status().as_u16(), 200);

    kafka.kill(2).await;
    kafka.kill(3).await;
    // Below min.insync.replicas: Kafka takes nothing, the spool keeps everything answered OK.
    load.wait_for_more_ok(1000, Duration::from_secs(60)).await;
    wait_for("a backlog of 500 events in the spool", Duration::from_secs(60), || async {
        metric(&bridge, "bridge_spool_pending_events").await >= 500.0
    })
    .await;
    let said = std::sync::Mutex::new(String::new());
    wait_for("/readyz to answer 503", Duration::from_secs(30), || async {
        let resp = bridge.get("/readyz").await;
        let status = resp.status().as_u16();
        *said.lock().unwrap() = resp.text().await.unwrap();
        status == 503
    })
    .await;
    let not_ready = said.into_inner().unwrap();
    let answers = load.stop().await;
    kafka.start_nodes(&[2, 3]).await;
    let tally = tally(&bridge.topic, &answers).await;
    wait_for("/readyz to answer 200 again", Duration::from_secs(30), || async {
        bridge.get("/readyz").await.status().as_u16() == 200
    })
    .await;

    println!("two of three down: {tally}; /readyz said {not_ready}; {:.0?}", started.elapsed());
    let body: serde_json::Value = serde_json::from_str(&not_ready).unwrap();
    assert_eq!(body["status"], "not ready", "{not_ready}");
    let reasons = body["reasons"].as_array().expect("reasons").clone();
    assert!(reasons.iter().any(|r| r.as_str().unwrap().contains("Kafka")), "{not_ready}");
    assert!(tally.non_200.is_empty(), "every webhook answered 200 from the spool: {tally}");
    tally.assert_nothing_lost_nor_reordered();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_every_broker_under_load_loses_nothing_and_reorders_nothing() {
    let started = Instant::now();
    let kafka = cluster();
    let _only = kafka.exclusive().await;
    let spool = tempfile::tempdir().unwrap();
    let bridge = bridge_on_cluster(spool.path(), 1, &[]).await;
    let load = Load::start(bridge.url("/webhook"), "rolling", LoadShape::default());
    wait_delivered_more(&bridge, 300, Duration::from_secs(60)).await;

    for node in 1..=CLUSTER_NODES {
        kafka.stop_node(node).await;
        // Two nodes are enough for min.insync.replicas: Kafka goes on taking records.
        wait_delivered_more(&bridge, 300, Duration::from_secs(60)).await;
        kafka.start_nodes(&[node]).await;
    }
    let answers = load.stop().await;
    let tally = tally(&bridge.topic, &answers).await;

    println!("rolling restart: {tally}; {:.0?}", started.elapsed());
    assert!(tally.non_200.is_empty(), "every webhook answered 200: {tally}");
    tally.assert_nothing_lost_nor_reordered();
}

/// One partition below `min.insync.replicas` while the others and the metadata are fine: the front
/// record waits, the producer is replaced after the stall time (twice over), and the records the other
/// partitions delivered meanwhile are not published again. Each is on the topic exactly once; the stuck
/// partition's arrive in order once its replicas are back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stall_confined_to_one_partition_does_not_republish_what_the_others_delivered() {
    use tim_kafka_bridge::partition::partition_of;
    let started = Instant::now();
    let kafka = cluster();
    let _only = kafka.exclusive().await;
    // Partition 0 on nodes 1 and 2, partitions 1 and 2 on nodes 1 and 3, all led by node 1; two
    // in-sync replicas required. With node 2 stopped, only partition 0 cannot take a write.
    let topic = unique("it-cluster-one-stuck");
    kafka.script(&format!(
        "cluster topics --create --topic {topic} --replica-assignment 1:2,1:3,1:3 --config min.insync.replicas=2"
    ));
    wait_for("node 1 to lead every partition", Duration::from_secs(30), || {
        let topic = topic.clone();
        async move {
            let leaders = tokio::task::spawn_blocking(move || cluster().leaders(&topic)).await.unwrap();
            leaders.len() == 3 && leaders.values().all(|l| *l == 1)
        }
    })
    .await;
    let group_on = |p: i32, skip: usize| {
        (0..)
            .map(|i| format!("@TGS#stuck{i}"))
            .filter(|g| partition_of(g.as_bytes(), 3) == p)
            .nth(skip)
            .unwrap()
    };
    let stuck = group_on(0, 0);
    let others: Vec<String> = vec![group_on(1, 0), group_on(1, 1), group_on(2, 0), group_on(2, 1)];
    let spool = tempfile::tempdir().unwrap();
    let mut opts = BridgeOptions::new(spool.path())
        .env("BRIDGE_KAFKA_BROKERS", kafka.bootstrap())
        .env("BRIDGE_KAFKA_STALL_SECS", 2);
    opts.topic = topic.clone();
    let bridge = Bridge::spawn(opts).await;
    // The producer knows every partition's leader before the node goes.
    for g in &others {
        assert_eq!(bridge.send(&Webhook::rename(g, 0)).await.0, 200);
    }
    wait_delivered(&bridge, others.len(), Duration::from_secs(30)).await;

    kafka.stop_node(2).await;
    let mut sent: std::collections::HashSet<(String, usize)> =
        others.iter().map(|g| (g.clone(), 0)).collect();
    for n in 1..=20 {
        assert_eq!(bridge.send(&Webhook::rename(&stuck, n)).await.0, 200);
        sent.insert((stuck.clone(), n));
        for g in &others {
            assert_eq!(bridge.send(&Webhook::rename(g, n)).await.0, 200);
            sent.insert((g.clone(), n));
        }
    }
    // Two replacements at least: the first two stall times, then two more.
    wait_for("the producer to be replaced twice", Duration::from_secs(60), || async {
        metric(&bridge, "bridge_kafka_producer_restarts_total").await >= 2.0
    })
    .await;
    kafka.start_nodes(&[2]).await;
    let records = tokio::task::spawn_blocking({
        let (topic, sent) = (topic.clone(), sent.clone());
        move || read_to_end(&cluster().bootstrap(), &topic, &sent, Duration::from_secs(120))
    })
    .await
    .unwrap();
    let mut seen: std::collections::HashMap<(String, usize), usize> = std::collections::HashMap::new();
    for r in &records {
        *seen.entry(rename_of(r)).or_default() += 1;
    }
    let repeated: Vec<_> = seen.iter().filter(|(k, n)| **n > 1 && k.0 != stuck).collect();
    println!(
        "one partition stuck: {} records for {} sent, {} repeats on the stuck partition, {} elsewhere; {:.0?}",
        records.len(),
        sent.len(),
        seen.iter().filter(|(k, n)| **n > 1 && k.0 == stuck).count(),
        repeated.len(),
        started.elapsed()
    );
    assert_eq!(
        seen.keys().cloned().collect::<std::collections::HashSet<_>>(),
        sent,
        "every event, none other"
    );
    assert!(repeated.is_empty(), "the partitions that delivered were published again: {repeated:?}");
    assert_per_group_order(&records);
}

/// Exactly-once mode on the cluster: every node SIGKILLed in turn under load (among them the data
/// partitions' leader, and whichever node coordinates the bridge's transactions and leads its position
/// topic), each restarted before the next. A `read_committed` reader finds every event answered OK
/// exactly once, by `event_id`, in per-group order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_every_node_killed_in_turn_under_load_leaves_every_event_once_in_order() {
    let started = Instant::now();
    let kafka = cluster();
    let _only = kafka.exclusive().await;
    let spool = tempfile::tempdir().unwrap();
    let bridge = bridge_on_cluster(spool.path(), 2, &[("BRIDGE_EXACTLY_ONCE", "true")]).await;
    let load = Load::start(bridge.url("/webhook"), "eos-cluster", LoadShape::default());
    // (In this mode an event counts as delivered once its transaction committed.)
    wait_delivered_more(&bridge, 300, Duration::from_secs(60)).await;
    for node in [2, 1, 3] {
        kafka.kill(node).await;
        wait_delivered_more(&bridge, 300, Duration::from_secs(120)).await;
        kafka.start_nodes(&[node]).await;
    }
    let answers = load.stop().await;
    wait_for("every event committed", Duration::from_secs(120), || async {
        metric(&bridge, "bridge_spool_pending_events").await == 0.0
    })
    .await;
    let topic = bridge.topic.clone();
    let records = tokio::task::spawn_blocking(move || {
        read_all_as(&cluster().bootstrap(), &topic, "read_committed", Duration::from_secs(120))
    })
    .await
    .unwrap();
    let tally = Tally::of(&answers, &records);

    println!("exactly once, every node killed in turn: {tally}; {:.0?}", started.elapsed());
    tally.assert_nothing_lost_nor_reordered();
    assert_eq!(tally.repeats, 0, "an event_id is on the topic twice for a read_committed reader: {tally}");
}
