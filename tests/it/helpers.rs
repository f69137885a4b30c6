//! The test harness: one real Kafka broker per test run, the bridge as a real process, a signing
//! webhook client and a topic reader.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tim_kafka_bridge::webhook::{sign, CallbackToken, Envelope};
use tokio::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

pub const APP_ID: &str = "1400000000";
pub const TOKEN: &str = "it-callback-token-7f3a";

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A name no other test (or earlier run) uses.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64;
    format!("{prefix}-{:x}-{}", nanos & 0xffff_ffff, N.fetch_add(1, Ordering::Relaxed))
}

pub fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

// ---------------------------------------------------------------------------------------------------
// Kafka

/// The run's broker, started by `scripts/kafka` on its own ports and data directory, and stopped by a
/// watchdog when the test process exits.
pub struct Broker {
    port: u16,
    data: PathBuf,
}

static BROKER: OnceLock<Broker> = OnceLock::new();
/// Tests that stop the broker hold it exclusively; all others share it.
static AVAILABILITY: RwLock<()> = RwLock::const_new(());

fn free_port_pair() -> u16 {
    for _ in 0..50 {
        let a = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = a.local_addr().unwrap().port();
        if port < 65000 && TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
    panic!("no free pair of ports for the test broker");
}

pub fn broker() -> &'static Broker {
    BROKER.get_or_init(|| {
        let port = match std::env::var("TEST_KAFKA_PORT") {
            Ok(p) => p.parse().expect("TEST_KAFKA_PORT is a port"),
            Err(_) => free_port_pair(),
        };
        let data = repo().join("target").join("it-kafka").join(port.to_string());
        let b = Broker { port, data };
        b.script("reset");
        b.script("start");
        // Stop and wipe the broker once this process is gone, however it ends. The watchdog outlives
        // this process on purpose, so it is never waited for.
        let watchdog = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; exec '{script}' reset",
            pid = std::process::id(),
            script = repo().join("scripts/kafka").display()
        );
        #[allow(clippy::zombie_processes)]
        Command::new("setsid")
            .args(["bash", "-c", &watchdog])
            .envs(b.env())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("watchdog starts");
        b
    })
}

impl Broker {
    fn env(&self) -> Vec<(&'static str, String)> {
        vec![("KAFKA_PORT", self.port.to_string()), ("KAFKA_DATA_DIR", self.data.display().to_string())]
    }

    pub fn script(&self, args: &str) -> String {
        let out = Command::new(repo().join("scripts/kafka"))
            .args(args.split_whitespace())
            .envs(self.env())
            .output()
            .expect("scripts/kafka runs");
        let text =
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "scripts/kafka {args} failed:\n{text}");
        text
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Shared use: the broker stays up while the guard lives.
    pub async fn shared(&self) -> RwLockReadGuard<'static, ()> {
        AVAILABILITY.read().await
    }

    /// Exclusive use, for tests that stop and start it.
    pub async fn exclusive(&self) -> RwLockWriteGuard<'static, ()> {
        AVAILABILITY.write().await
    }

    pub fn stop(&self) {
        self.script("stop");
    }

    pub fn start(&self) {
        self.script("start");
    }

    /// Runs `scripts/kafka produce` (Kafka's own Java producer) with one `key\tvalue` line.
    pub fn java_produce(&self, topic: &str, key: &str, value: &str) {
        let mut child = Command::new(repo().join("scripts/kafka"))
            .args(["produce", topic])
            .envs(self.env())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        writeln!(child.stdin.take().unwrap(), "{key}\t{value}").unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "java producer failed: {}", String::from_utf8_lossy(&out.stderr));
    }
}

/// One record read back from Kafka.
#[derive(Debug, Clone)]
pub struct Record {
    pub key: String,
    pub partition: i32,
    pub offset: i64,
    pub timestamp: Option<i64>,
    pub headers: HashMap<String, String>,
    pub value: serde_json::Value,
}

impl Record {
    pub fn header(&self, k: &str) -> Option<&str> {
        self.headers.get(k).map(String::as_str)
    }
}

fn consumer(bootstrap: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique("it-reader"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()
        .expect("consumer")
}

fn partitions(c: &BaseConsumer, topic: &str, deadline: Instant) -> Vec<i32> {
    loop {
        if let Ok(md) = c.fetch_metadata(Some(topic), Duration::from_secs(2)) {
            if let Some(t) = md.topics().first() {
                if t.error().is_none() && !t.partitions().is_empty() {
                    return t.partitions().iter().map(|p| p.id()).collect();
                }
            }
        }
        assert!(Instant::now() < deadline, "topic {topic} never appeared");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// How many records `topic` holds (sum of high watermarks; nothing is deleted during a test).
pub fn topic_len(topic: &str) -> i64 {
    let c = consumer(&broker().bootstrap());
    let deadline = Instant::now() + Duration::from_secs(30);
    partitions(&c, topic, deadline)
        .into_iter()
        .map(|p| c.fetch_watermarks(topic, p, Duration::from_secs(10)).expect("watermarks").1)
        .sum()
}

/// Reads `topic` from the beginning until `until` says the records are all there, or panics at
/// `timeout` with what it has.
pub fn read_until(topic: &str, timeout: Duration, until: impl Fn(&[Record]) -> bool) -> Vec<Record> {
    let deadline = Instant::now() + timeout;
    let c = consumer(&broker().bootstrap());
    let mut tpl = TopicPartitionList::new();
    for p in partitions(&c, topic, deadline) {
        tpl.add_partition_offset(topic, p, Offset::Beginning).unwrap();
    }
    c.assign(&tpl).unwrap();
    let mut out = Vec::new();
    while !until(&out) {
        assert!(Instant::now() < deadline, "timed out reading {topic}: have {} records", out.len());
        let Some(m) = c.poll(Duration::from_millis(200)) else { continue };
        let m = match m {
            Ok(m) => m,
            Err(_) => continue,
        };
        let headers = m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| {
                        (h.key.to_owned(), String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned())
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.push(Record {
            key: String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
            partition: m.partition(),
            offset: m.offset(),
            timestamp: m.timestamp().to_millis(),
            headers,
            value: serde_json::from_slice(m.payload().unwrap_or_default()).unwrap_or(serde_json::Value::Null),
        });
    }
    out
}

/// Reads exactly `n` records and checks the topic holds no more.
pub fn read_exactly(topic: &str, n: usize, timeout: Duration) -> Vec<Record> {
    let records = read_until(topic, timeout, |r| r.len() >= n);
    assert_eq!(topic_len(topic), n as i64, "topic {topic} holds more than the {n} records expected");
    records
}

// ---------------------------------------------------------------------------------------------------
// The bridge

/// Paths served by the admin listener (`BRIDGE_ADMIN_LISTEN`); everything else goes to the webhook's.
pub const ADMIN_PATHS: &[&str] = &["/", "/status.json", "/metrics", "/healthz", "/readyz"];

/// The bridge binary, running as a child process with its JSON logs captured.
pub struct Bridge {
    child: Child,
    /// The webhook listener's port.
    pub port: u16,
    /// The admin listener's port: metrics, health, the status page.
    pub admin_port: u16,
    pub logs: Arc<Mutex<Vec<String>>>,
    pub topic: String,
    pub spool: PathBuf,
    env: Vec<(String, String)>,
    http: reqwest::Client,
}

/// What a test wants different from the defaults.
pub struct BridgeOptions {
    pub topic: String,
    pub spool: PathBuf,
    pub env: Vec<(String, String)>,
}

impl BridgeOptions {
    pub fn new(spool: &Path) -> Self {
        Self { topic: unique("it-group-change"), spool: spool.to_owned(), env: Vec::new() }
    }

    pub fn env(mut self, k: &str, v: impl ToString) -> Self {
        self.env.push((k.to_owned(), v.to_string()));
        self
    }
}

impl Bridge {
    pub async fn spawn(opts: BridgeOptions) -> Bridge {
        let mut env: Vec<(String, String)> = vec![
            ("BRIDGE_SDK_APP_ID".into(), APP_ID.into()),
            ("BRIDGE_CALLBACK_TOKEN".into(), TOKEN.into()),
            ("BRIDGE_LISTEN".into(), "127.0.0.1:0".into()),
            ("BRIDGE_ADMIN_LISTEN".into(), "127.0.0.1:0".into()),
            ("BRIDGE_KAFKA_BROKERS".into(), broker().bootstrap()),
            ("BRIDGE_TOPIC".into(), opts.topic.clone()),
            ("BRIDGE_SPOOL_DIR".into(), opts.spool.display().to_string()),
            ("BRIDGE_LOG_FORMAT".into(), "json".into()),
            ("BRIDGE_SHUTDOWN_GRACE_SECS".into(), "10".into()),
            ("RUST_LOG".into(), std::env::var("TEST_RUST_LOG").unwrap_or_else(|_| "info".into())),
        ];
        for (k, v) in opts.env {
            env.retain(|(e, _)| *e != k);
            env.push((k, v));
        }
        Self::start(env, opts.topic, opts.spool).await
    }

    async fn start(env: Vec<(String, String)>, topic: String, spool: PathBuf) -> Bridge {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tim-kafka-bridge"))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("bridge starts");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (port_tx, port_rx) = std::sync::mpsc::channel();
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let logs = logs.clone();
            let port_tx = port_tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if line.contains("tim-kafka-bridge listening") {
                        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                            let port = |k: &str| v[k].as_u64().unwrap_or(0) as u16;
                            let _ = port_tx.send((port("port"), port("admin_port")));
                        }
                    }
                    if std::env::var_os("TEST_LOG").is_some() {
                        eprintln!("bridge: {line}");
                    }
                    logs.lock().unwrap().push(line);
                }
            });
        }
        let (port, admin_port) = match port_rx.recv_timeout(Duration::from_secs(30)) {
            Ok(p) => p,
            Err(_) => {
                let _ = child.kill();
                panic!("bridge did not start:\n{}", logs.lock().unwrap().join("\n"));
            }
        };
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .pool_idle_timeout(Duration::from_secs(2))
            .build()
            .unwrap();
        assert!(
            port > 0 && admin_port > 0,
            "the start line names both ports:\n{}",
            logs.lock().unwrap().join("\n")
        );
        Bridge { child, port, admin_port, logs, topic, spool, env, http }
    }

    /// A URL on the webhook listener.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    /// A URL on the admin listener.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.admin_port, path)
    }

    /// POSTs `body` to the webhook path with `query`.
    pub async fn post(&self, query: &str, body: impl Into<reqwest::Body>) -> (u16, Envelope) {
        let resp = self
            .http
            .post(format!("{}?{}", self.url("/webhook"), query))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("bridge answers");
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.unwrap();
        let envelope = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            panic!("answer is not an envelope ({e}): {}", String::from_utf8_lossy(&bytes))
        });
        (status, envelope)
    }

    /// POSTs a correctly signed webhook.
    pub async fn send(&self, hook: &Webhook) -> (u16, Envelope) {
        self.post(&signed_query(now_secs()), hook.body()).await
    }

    /// Like [`send`](Self::send) but a connection error is `None` (the process may be gone).
    pub async fn try_send(&self, hook: &Webhook) -> Option<u16> {
        let resp = self
            .http
            .post(format!("{}?{}", self.url("/webhook"), signed_query(now_secs())))
            .body(hook.body())
            .send()
            .await
            .ok()?;
        let status = resp.status().as_u16();
        resp.bytes().await.ok()?;
        Some(status)
    }

    /// Sends change 0 of `group` and waits until it is on the topic: the producer is connected and
    /// the topic exists (what an outage test needs before it stops the broker).
    pub async fn warm_up(&self, group: &str) {
        assert_eq!(self.send(&Webhook::rename(group, 0)).await.0, 200);
        read_exactly(&self.topic, 1, Duration::from_secs(30));
    }

    /// GETs `path` from the listener that serves it: the admin listener for [`ADMIN_PATHS`], the
    /// webhook listener otherwise.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        let url = if ADMIN_PATHS.contains(&path) { self.admin_url(path) } else { self.url(path) };
        self.http.get(url).send().await.expect("bridge answers")
    }

    /// GETs `path` from the webhook listener, whatever the path.
    pub async fn get_webhook_listener(&self, path: &str) -> reqwest::Response {
        self.http.get(self.url(path)).send().await.expect("bridge answers")
    }

    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    /// `kill -9`: no chance to flush or sync anything. The process is reaped on restart or drop.
    pub fn kill9(&self) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill").args(["-KILL", &pid]).status().unwrap().success());
    }

    /// SIGTERM, then waits for the exit.
    pub fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        self.wait_exit(timeout)
    }

    /// Waits for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "bridge did not exit within {timeout:?}:\n{}", self.logs());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts the bridge again with the same settings and spool (after `kill9` or `terminate`); a
    /// change to an empty value removes the variable.
    pub async fn restart(&mut self, changes: &[(&str, &str)]) {
        let mut env = self.env.clone();
        for (k, v) in changes {
            env.retain(|(e, _)| e != k);
            if !v.is_empty() {
                env.push((k.to_string(), v.to_string()));
            }
        }
        let new = Self::start(env, self.topic.clone(), self.spool.clone()).await;
        let old_logs = std::mem::take(&mut *self.logs.lock().unwrap());
        new.logs.lock().unwrap().splice(0..0, old_logs);
        let _ = std::mem::replace(self, new);
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            // A failing test shows what the bridge said last (the rest with TEST_LOG=1).
            let logs = self.logs.lock().unwrap();
            let tail: Vec<&String> = logs.iter().rev().take(40).collect();
            eprintln!("--- last {} log lines of the bridge on port {}:", tail.len(), self.port);
            for line in tail.into_iter().rev() {
                eprintln!("bridge: {line}");
            }
        }
    }
}

/// The bridge's `/metrics` text.
pub async fn scrape(bridge: &Bridge) -> String {
    bridge.get("/metrics").await.text().await.unwrap()
}

/// The value of the sample `name_and_labels` (e.g. `bridge_webhooks_total{outcome="accepted"}`).
pub fn sample(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(name_and_labels)?.strip_prefix(' ')?.parse().ok())
}

/// Polls `check` every 100 ms until it holds, or panics naming `what` after `timeout`.
pub async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------------------------------------------
// Spools

/// Writes changes `0..n` of `group` into the spool at `dir` as a stopped bridge would have left
/// them, through the library's own spool (no HTTP, so a large backlog takes a second).
pub async fn spool_directly(dir: &Path, group: &str, n: usize) {
    let (spool, thread) = tim_kafka_bridge::spool::Spool::open(tim_kafka_bridge::spool::SpoolConfig {
        dir: dir.to_owned(),
        fsync: tim_kafka_bridge::spool::FsyncMode::Never,
        max_bytes: 1 << 30,
        observer: None,
    })
    .unwrap();
    let verifier = tim_kafka_bridge::webhook::Verifier {
        app_ids: vec![tim_kafka_bridge::domain::SdkAppId::parse(APP_ID).unwrap()],
        token: CallbackToken::new(TOKEN.into()),
        max_skew_secs: 60,
        commands: tim_kafka_bridge::webhook::Command::ALL.to_vec(),
    };
    let query = signed_query(now_secs());
    for chunk in (0..n).collect::<Vec<_>>().chunks(512) {
        let appends = chunk.iter().map(|i| {
            let event = verifier.check(
                &query,
                Webhook::rename(group, *i).body().as_bytes(),
                tim_kafka_bridge::now_ms(),
            );
            let bytes = event.expect("a valid webhook").event().expect("published").to_message().to_bytes();
            let spool = spool.clone();
            async move { spool.append(bytes).await.unwrap() }
        });
        futures_util::future::join_all(appends).await;
    }
    spool.close();
    drop(spool);
    thread.join();
}

/// The segment files of a spool, oldest first.
pub fn segments(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut s: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    s.sort();
    s
}

// ---------------------------------------------------------------------------------------------------
// Webhooks

/// The query string Tencent sends for a profile change, signed now.
pub fn signed_query(now: u64) -> String {
    signed_query_for("Group.CallbackAfterGroupInfoChanged", now)
}

/// The query string Tencent sends for `command`, signed now.
pub fn signed_query_for(command: &str, now: u64) -> String {
    let token = CallbackToken::new(TOKEN.into()).unwrap();
    let t = now.to_string();
    format!(
        "SdkAppid={APP_ID}&CallbackCommand={command}&contenttype=json&ClientIP=10.0.0.7&OptPlatform=RESTAPI&RequestTime={t}&Sign={}",
        sign(&token, &t)
    )
}

/// A group-profile change webhook body.
#[derive(Debug, Clone)]
pub struct Webhook(pub serde_json::Value);

impl Webhook {
    /// The sample of Tencent's documentation, without its `//` comments.
    pub fn sample() -> Self {
        Self(serde_json::json!({
            "CallbackCommand": "Group.CallbackAfterGroupInfoChanged",
            "GroupId" : "@TGS#2J4SZEAEL",
            "Type": "Public",
            "Operator_Account": "leckie",
            "Notification": "NewNotification",
            "EventTime":"1670574414123"
        }))
    }

    /// Change number `n` of `group`: the group's name becomes `"<group> #<n>"`.
    pub fn rename(group: &str, n: usize) -> Self {
        Self(serde_json::json!({
            "CallbackCommand": "Group.CallbackAfterGroupInfoChanged",
            "GroupId": group,
            "Type": "Public",
            "Operator_Account": "admin",
            "Name": format!("{group} #{n}"),
            "EventTime": 1_700_000_000_000u64 + n as u64,
        }))
    }

    pub fn body(&self) -> String {
        self.0.to_string()
    }
}

/// `(group, n)` of a record produced from [`Webhook::rename`].
pub fn rename_of(r: &Record) -> (String, usize) {
    let name = r.value["changes"]["name"].as_str().expect("a rename");
    let (group, n) = name.rsplit_once(" #").unwrap();
    (group.to_owned(), n.parse().unwrap())
}

/// Checks each group's changes appear in the order they were made (first occurrences; a retry may
/// repeat a record, never reorder it ahead of an earlier one).
pub fn assert_per_group_order(records: &[Record]) {
    let mut last: HashMap<String, usize> = HashMap::new();
    let mut seen = std::collections::HashSet::new();
    let mut sorted: Vec<&Record> = records.iter().collect();
    sorted.sort_by_key(|r| (r.partition, r.offset));
    for r in sorted {
        let (g, n) = rename_of(r);
        if !seen.insert((g.clone(), n)) {
            continue;
        }
        if let Some(prev) = last.insert(g.clone(), n) {
            assert!(n > prev, "group {g}: change {n} arrived after change {prev}");
        }
    }
}
