//! What operators see: the admin listener (/metrics, /readyz, /healthz), the dashboard, the alert
//! rules (unit-tested by promtool, and seen firing in a real Prometheus), and the log of an outage.

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

#[test]
fn every_alert_rule_fires_when_it_should_and_stays_quiet_when_healthy() {
    let tests = repo().join("deploy/prometheus/alerts.test.yml");
    let text = std::fs::read_to_string(&tests).unwrap();
    let rules = std::fs::read_to_string(repo().join("deploy/prometheus/alerts.yml")).unwrap();
    for alert in rules.lines().filter_map(|l| l.trim().strip_prefix("- alert: ")) {
        assert!(text.contains(&format!("alertname: {alert}")), "{alert} has no promtool unit test");
    }

    let (ok, out) = promtool(&["test", "rules", tests.to_str().unwrap()], None);

    assert!(ok, "promtool test rules: {out}");
    assert!(out.contains("SUCCESS"), "{out}");
}

#[tokio::test]
async fn metrics_and_health_are_served_on_the_admin_listener_only() {
    let _up = broker().shared().await;
    let spool = tempfile::tempdir().unwrap();
    let bridge = Bridge::spawn(BridgeOptions::new(spool.path())).await;
    assert_ne!(bridge.port, bridge.admin_port);

    for path in ADMIN_PATHS {
        let public = bridge.get_webhook_listener(path).await;
        assert_eq!(public.status(), 404, "{path} on the webhook listener");
        let envelope: tim_kafka_bridge::webhook::Envelope = public.json().await.unwrap();
        assert_eq!(envelope.action_status, "FAIL", "{path}");
        let admin = bridge.get(path).await;
        assert!([200, 503].contains(&admin.status().as_u16()), "{path} on the admin listener");
    }
    assert_eq!(bridge.get("/healthz").await.status(), 200);
    assert!(bridge.get("/metrics").await.text().await.unwrap().contains("bridge_webhooks_total"));
    let lost = reqwest::get(bridge.admin_url("/webhook")).await.unwrap();
    assert_eq!(lost.status(), 404, "the webhook is not served on the admin listener");
    let start = bridge.logs().lines().find(|l| l.contains("tim-kafka-bridge listening")).unwrap().to_owned();
    let start: serde_json::Value = serde_json::from_str(&start).unwrap();
    assert_eq!((start["delivery"].as_str(), start["fsync"].as_str()), (Some("spool"), Some("always")));
}

/// A Prometheus server (Debian's `prometheus`) on a free loopback port with its own storage, scraping
/// one target every second with the project's alert rules, their `for:` shortened to 2 s.
struct Prometheus {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target_port: u16) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let rules = std::fs::read_to_string(repo().join("deploy/prometheus/alerts.yml")).unwrap();
        let rules: String = rules
            .lines()
            .map(|l| match l.trim_start().strip_prefix("for: ") {
                Some(_) => format!("{}for: 2s\n", &l[..l.len() - l.trim_start().len()]),
                None => format!("{l}\n"),
            })
            .collect();
        assert!(rules.contains("for: 2s"), "the rules have for: clauses to shorten");
        std::fs::write(dir.path().join("alerts.yml"), rules).unwrap();
        std::fs::write(
            dir.path().join("prometheus.yml"),
            format!(
                "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nrule_files: [alerts.yml]\n\
                 scrape_configs:\n  - job_name: tim-kafka-bridge\n    static_configs:\n      \
                 - targets: ['127.0.0.1:{target_port}']\n"
            ),
        )
        .unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", dir.path().join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("prometheus is installed (Debian package prometheus; scripts/test installs it)");
        Self { child, port, _dir: dir }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("prometheus.log")).unwrap_or_default()
    }

    async fn api(&self, path: &str) -> Option<serde_json::Value> {
        let url = format!("http://127.0.0.1:{}{path}", self.port);
        reqwest::get(url).await.ok()?.json().await.ok()
    }

    /// The state of alert `name` (`pending`, `firing`), or `None` when it is not active.
    async fn alert(&self, name: &str) -> Option<String> {
        let alerts = self.api("/api/v1/alerts").await?;
        alerts["data"]["alerts"]
            .as_array()?
            .iter()
            .find(|a| a["labels"]["alertname"] == name)
            .map(|a| a["state"].as_str().unwrap_or_default().to_owned())
    }

    /// The value of an instant query with one result.
    async fn value(&self, query: &str) -> Option<f64> {
        let r = self.api(&format!("/api/v1/query?query={query}")).await?;
        r["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn a_real_prometheus_sees_kafka_unreachable_fire_during_an_outage_and_resolve_after() {
    let kafka = broker();
    let _exclusive = kafka.exclusive().await;
    let spool = tempfile::tempdir().unwrap();
    let bridge =
        Bridge::spawn(BridgeOptions::new(spool.path()).env("BRIDGE_READY_KAFKA_WINDOW_SECS", 2)).await;
    bridge.warm_up("@TGS#alert").await;
    let prometheus = Prometheus::start(bridge.admin_port);
    let up = wait_until(Duration::from_secs(30), || async {
        prometheus.value("bridge_kafka_up").await == Some(1.0)
    })
    .await;
    assert!(up, "Prometheus never scraped bridge_kafka_up 1:\n{}", prometheus.log());
    assert_eq!(prometheus.alert("BridgeKafkaUnreachable").await, None, "quiet while Kafka answers");

    kafka.stop();
    let stopped = Instant::now();
    let fired = wait_until(Duration::from_secs(60), || async {
        prometheus.alert("BridgeKafkaUnreachable").await.as_deref() == Some("firing")
    })
    .await;
    assert!(fired, "BridgeKafkaUnreachable did not fire within 60 s:\n{}", prometheus.log());
    eprintln!("BridgeKafkaUnreachable fired {:?} after the broker was stopped", stopped.elapsed());
    // The log says so once three probes in a row agree (the alert can be quicker): an outage shorter
    // than that is, rightly, not logged at all.
    let logged = wait_until(Duration::from_secs(30), || async {
        bridge.logs().contains("Kafka does not answer metadata requests")
    })
    .await;
    assert!(logged, "the outage was not logged: {}", bridge.logs());

    kafka.start();
    let resolved = wait_until(Duration::from_secs(60), || async {
        prometheus.alert("BridgeKafkaUnreachable").await.is_none()
    })
    .await;
    assert!(resolved, "BridgeKafkaUnreachable did not resolve within 60 s of Kafka's return");

    // The outage reads as a few lines: reachability logged once each way, the recovery at INFO (the
    // log waits for three answers in a row, so it may come a little after the alert resolved).
    let recovered =
        wait_until(Duration::from_secs(30), || async { bridge.logs().contains("Kafka reachable again") })
            .await;
    assert!(recovered, "no recovery line: {}", bridge.logs());
    let logs = bridge.logs();
    let again: Vec<&str> = logs.lines().filter(|l| l.contains("Kafka reachable again")).collect();
    assert_eq!(again.len(), 1, "{logs}");
    assert!(again[0].contains("\"level\":\"INFO\""), "{}", again[0]);
    assert_eq!(logs.matches("Kafka does not answer metadata requests").count(), 1, "{logs}");
}

/// Polls `check` until it holds (`true`) or `timeout` passes (`false`).
async fn wait_until<F, Fut>(timeout: Duration, check: F) -> bool
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    true
}

/// librdkafka's debug output is there when asked for (`BRIDGE_RDKAFKA_DEBUG` with a `RUST_LOG` that
/// lets DEBUG through for target `librdkafka`), and absent otherwise: the producer's log level follows
/// the override instead of hiding it.
#[tokio::test]
async fn librdkafka_debug_lines_are_logged_when_asked_for_and_only_then() {
    let _up = broker().shared().await;
    // A line of the `msg` context about the warm-up record's batch: one librdkafka logs while
    // producing, not only while the client starts.
    let debug_line = |logs: &str| {
        logs.lines().any(|l| {
            l.contains("\"target\":\"librdkafka\"")
                && l.contains("\"level\":\"DEBUG\"")
                && l.contains("MessageSet")
        })
    };
    let spool = tempfile::tempdir().unwrap();
    let asked = Bridge::spawn(
        BridgeOptions::new(spool.path())
            .env("BRIDGE_RDKAFKA_DEBUG", "broker,msg")
            .env("RUST_LOG", "info,librdkafka=debug"),
    )
    .await;
    asked.warm_up("@TGS#debug").await;
    assert!(debug_line(&asked.logs()), "no librdkafka debug line:\n{}", asked.logs());

    let spool = tempfile::tempdir().unwrap();
    let plain =
        Bridge::spawn(BridgeOptions::new(spool.path()).env("RUST_LOG", "info,librdkafka=debug")).await;
    plain.warm_up("@TGS#no-debug").await;
    assert!(!debug_line(&plain.logs()), "debug lines without BRIDGE_RDKAFKA_DEBUG:\n{}", plain.logs());
}
