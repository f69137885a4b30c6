//! Several bridges, each with its own spool, behind one load balancer, as in production.

use std::time::{Duration, Instant};

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_bridges_behind_a_round_robin_balancer_deliver_every_ok_event() {
    let started = Instant::now();
    let _up = broker().shared().await;
    let (spool_a, spool_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Bridge::spawn(BridgeOptions::new(spool_a.path())).await;
    let mut opts_b = BridgeOptions::new(spool_b.path());
    opts_b.topic = a.topic.clone();
    let b = Bridge::spawn(opts_b).await;
    let balancer = RoundRobin::start(vec![a.port, b.port]).await;
    // A connection per webhook: consecutive changes of a group go to different bridges.
    let shape = LoadShape { fresh_connections: true, ..LoadShape::default() };

    let load = Load::start(balancer.url("/webhook"), "replicas", shape);
    load.wait_for_more_ok(3000, Duration::from_secs(60)).await;
    let answers = load.stop().await;
    let records = tokio::task::spawn_blocking({
        let (topic, expected) = (a.topic.clone(), answers.ok.clone());
        move || read_to_end(&broker().bootstrap(), &topic, &expected, Duration::from_secs(60))
    })
    .await
    .unwrap();
    let tally = Tally::of(&answers, &records);

    let accepted = |text: String| sample(&text, "bridge_webhooks_total{outcome=\"accepted\"}").unwrap_or(0.0);
    let (by_a, by_b) = (accepted(scrape(&a).await), accepted(scrape(&b).await));
    println!(
        "two bridges: {tally} (out of order across bridges: allowed, docs/event.md); accepted by each: \
         {by_a} + {by_b}; {:.0?}",
        started.elapsed()
    );
    assert!(tally.non_200.is_empty(), "every webhook answered 200: {tally}");
    assert!(tally.lost.is_empty(), "{tally}; lost (first 10): {:?}", &tally.lost[..tally.lost.len().min(10)]);
    assert!(by_a > 0.0 && by_b > 0.0, "the balancer used both bridges: {by_a} + {by_b}");
    assert_eq!(by_a + by_b, tally.ok as f64, "each OK came from one of the two");
    // Whatever order the two bridges' records landed in, a consumer ordering each group's changes by
    // event_time_ms (ties by event_id) ends with the last change made.
    assert_eq!(last_writer_wins(&records), answers.last_ok, "last writer wins by event_time_ms");
}
