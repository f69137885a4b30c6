//! What operators see: /metrics, /readyz, the dashboard and the alert rules.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::helpers::*;

/// promtool, from Debian's `prometheus` package (.ci/run installs it).
fn promtool(args: &[&str], stdin: Option<&str>) -> (bool, String) {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool is installed (apt-get install prometheus; .ci/run does it)");
    child.stdin.take().unwrap().write_all(stdin.unwrap_or_default().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
    )
}

#[tokio::test]
async fn metrics_count_each_outcome_and_pass_promtool() {
    let _up = broker().shared().await;
    let spool = tempfile::tempdir().unwrap();
    let bridge = Bridge::spawn(BridgeOptions::new(spool.path())).await;

    for n in 0..200 {
        assert_eq!(bridge.send(&Webhook::rename("@TGS#metrics", n)).await.0, 200);
    }
    let stranger = signed_query(now_secs()).replace(APP_ID, "42");
    assert_eq!(bridge.post(&stranger, Webhook::sample().body()).await.0, 403);
    read_exactly(&bridge.topic, 200, Duration::from_secs(60));

    let text = scrape(&bridge).await;
    assert_eq!(sample(&text, "bridge_webhooks_total{outcome=\"accepted\"}"), Some(200.0));
    assert_eq!(sample(&text, "bridge_webhooks_total{outcome=\"rejected_app\"}"), Some(1.0));
    assert!(sample(&text, "bridge_kafka_delivered_total").unwrap() >= 200.0, "{text}");
    assert_eq!(
        sample(&text, "bridge_kafka_delivery_seconds_count"),
        sample(&text, "bridge_kafka_delivered_total")
    );
    assert!(
        text.contains("bridge_http_request_duration_seconds_count{route=\"/webhook\",status=\"200\"} 200")
    );
    let (ok, out) = promtool(&["check", "metrics"], Some(&text));
    assert!(ok, "promtool check metrics: {out}");
}

#[tokio::test]
async fn produce_lag_and_readiness_follow_a_kafka_outage() {
    let kafka = broker();
    let _exclusive = kafka.exclusive().await;
    let spool = tempfile::tempdir().unwrap();
    let bridge = Bridge::spawn(BridgeOptions::new(spool.path())).await;
    bridge.warm_up("@TGS#lag").await;
    wait_for("ready before the outage", Duration::from_secs(15), || async {
        bridge.get("/readyz").await.status() == 200
    })
    .await;

    kafka.stop();
    let stopped = Instant::now();
    let mut n = 1;
    let mut lagging = false;
    let mut unready = false;
    while !(lagging && unready) {
        assert!(stopped.elapsed() < Duration::from_secs(10), "lag {lagging}, unready {unready} after 10 s");
        assert_eq!(bridge.send(&Webhook::rename("@TGS#lag", n)).await.0, 200);
        n += 1;
        lagging |= sample(&scrape(&bridge).await, "bridge_produce_lag_seconds").unwrap() > 0.0;
        let ready = bridge.get("/readyz").await;
        if ready.status() == 503 {
            let body: serde_json::Value = ready.json().await.unwrap();
            assert!(body["reasons"][0].as_str().unwrap().contains("Kafka"), "{body}");
            unready = true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    kafka.start();
    let returned = Instant::now();
    wait_for("lag, pending and readiness to recover", Duration::from_secs(30), || async {
        let text = scrape(&bridge).await;
        sample(&text, "bridge_produce_lag_seconds") == Some(0.0)
            && sample(&text, "bridge_spool_pending_events") == Some(0.0)
            && bridge.get("/readyz").await.status() == 200
    })
    .await;
    assert!(returned.elapsed() < Duration::from_secs(30));
}

/// Polls `check` until it holds, or fails the test with `what`.
/// Metric names (`bridge_…`) used in a file, without histogram suffixes.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(pos) = text[i..].find("bridge_") {
        let start = i + pos;
        let preceded_by_word =
            start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let end = text[start..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .map_or(text.len(), |e| start + e);
        if !preceded_by_word {
            let name = &text[start..end];
            let base =
                ["_bucket", "_sum", "_count"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(name);
            names.insert(base.to_owned());
        }
        i = end;
    }
    names
}

#[tokio::test]
async fn the_dashboard_and_alert_rules_use_only_metrics_the_bridge_exports() {
    let _up = broker().shared().await;
    let spool = tempfile::tempdir().unwrap();
    let bridge = Bridge::spawn(BridgeOptions::new(spool.path())).await;
    assert_eq!(bridge.send(&Webhook::sample()).await.0, 200);
    read_exactly(&bridge.topic, 1, Duration::from_secs(30));
    // librdkafka's statistics arrive every 5 s; wait for the first.
    wait_for("librdkafka statistics", Duration::from_secs(20), || async {
        scrape(&bridge).await.contains("bridge_kafka_broker_rtt_seconds{")
    })
    .await;
    let exported = scrape(&bridge).await;
    let exported: BTreeSet<String> = exported
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(|n| ["_bucket", "_sum", "_count"].iter().find_map(|s| n.strip_suffix(s)).unwrap_or(n).to_owned())
        .collect();

    for file in ["deploy/grafana/dashboards/bridge.json", "deploy/prometheus/alerts.yml"] {
        let used = metric_names(&std::fs::read_to_string(repo().join(file)).unwrap());
        assert!(!used.is_empty(), "{file} uses no metric");
        let missing: Vec<_> = used.difference(&exported).collect();
        assert!(missing.is_empty(), "{file} uses metrics /metrics does not export: {missing:?}");
    }

    let rules = repo().join("deploy/prometheus/alerts.yml");
    let (ok, out) = promtool(&["check", "rules", rules.to_str().unwrap()], None);
    assert!(ok, "promtool check rules: {out}");
}
