//! The test harness: one real Kafka broker per test run (and a three-node cluster for the tests that
//! need one), one PostgreSQL server per run for tim-group-directory ([`postgres`]), the bridge as a real
//! process, a signing webhook client, a topic reader, and for tests of load: concurrent senders
//! ([`Load`]), a round-robin load balancer ([`RoundRobin`]) and the check of what reached the topic
//! ([`Tally`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{BorrowedMessage, Headers, Message};
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

/// A loopback port free now for a child process told to listen on it, below the kernel's ephemeral
/// range: ports there are never handed to outgoing connections (a client's to Kafka, say) nor to a
/// listener binding port 0, which could take a port picked with `bind(0)` before the child binds it.
/// Each call in this process returns another port.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    const LOW: u16 = 20_000;
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .filter(|&p| p > LOW + 1000)
        .unwrap_or(32_768);
    let span = ephemeral_low - LOW;
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let start = (std::process::id() % u32::from(span)) as u16;
    for _ in 0..span {
        let port = LOW + (start + NEXT.fetch_add(1, Ordering::Relaxed) % span) % span;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {LOW}..{ephemeral_low}");
}

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

/// Runs the repository's `script` with `args` (split on whitespace) and `env`: whether it succeeded,
/// and what it printed (stdout, then stderr).
fn run_script(script: &str, args: &str, env: Vec<(&'static str, String)>) -> (bool, String) {
    let out = Command::new(repo().join(script))
        .args(args.split_whitespace())
        .envs(env)
        .output()
        .unwrap_or_else(|e| panic!("{script} runs: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// Runs `script args` (with `env`) once this test process is gone, however it ends: how the servers
/// the tests start get stopped and wiped. The watchdog outlives this process on purpose, so it is never
/// waited for.
fn after_this_process<K: AsRef<std::ffi::OsStr>, V: AsRef<std::ffi::OsStr>>(
    script: &str,
    args: &str,
    env: impl IntoIterator<Item = (K, V)>,
) {
    let watchdog = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 1; done; exec '{script}' {args}",
        pid = std::process::id(),
        script = repo().join(script).display()
    );
    #[allow(clippy::zombie_processes)]
    Command::new("setsid")
        .args(["bash", "-c", &watchdog])
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("watchdog starts");
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
        // Stop and wipe the broker once this process is gone, however it ends.
        after_this_process("scripts/kafka", "reset", b.env());
        b
    })
}

impl Broker {
    fn env(&self) -> Vec<(&'static str, String)> {
        vec![("KAFKA_PORT", self.port.to_string()), ("KAFKA_DATA_DIR", self.data.display().to_string())]
    }

    pub fn script(&self, args: &str) -> String {
        let (ok, text) = run_script("scripts/kafka", args, self.env());
        assert!(ok, "scripts/kafka {args} failed:\n{text}");
        text
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Creates `topic` (three partitions) taking records of at most `bytes` (`max.message.bytes`).
    pub fn create_topic_taking_at_most(&self, topic: &str, bytes: u32) {
        self.script(&format!(
            "topics --create --topic {topic} --partitions 3 --config max.message.bytes={bytes}"
        ));
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

    /// SIGKILL: no controlled shutdown, no flush.
    pub fn kill(&self) {
        self.script("kill");
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

/// The run's three-node KRaft cluster (`scripts/kafka cluster`), started on first use on free ports
/// with its own data directory, and wiped by a watchdog when the test process exits. Every topic has
/// replication factor 3 and `min.insync.replicas=2`.
pub struct Cluster {
    base_port: u16,
    dir: PathBuf,
}

pub const CLUSTER_NODES: u8 = 3;

static CLUSTER: OnceLock<Cluster> = OnceLock::new();
/// Every cluster test stops or kills nodes, so they take the cluster one at a time.
static CLUSTER_USE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A base port `p` with `p..p + 2n` free: node `i` listens on `p + 2(i-1)`, its controller on the next.
fn free_ports(n: u16) -> u16 {
    for _ in 0..50 {
        let a = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = a.local_addr().unwrap().port();
        if base < 65000 && (1..n).all(|i| TcpListener::bind(("127.0.0.1", base + i)).is_ok()) {
            return base;
        }
    }
    panic!("no {n} free ports in a row for the test cluster");
}

pub fn cluster() -> &'static Cluster {
    CLUSTER.get_or_init(|| {
        let base_port = free_ports(2 * u16::from(CLUSTER_NODES));
        let dir = repo().join("target").join("it-kafka").join(format!("cluster-{base_port}"));
        let c = Cluster { base_port, dir };
        c.script("cluster reset");
        // As for the single broker: wiped once this process is gone, however it ends.
        after_this_process("scripts/kafka", "cluster reset", c.env());
        c.script(&format!("cluster start {CLUSTER_NODES}"));
        c
    })
}

impl Cluster {
    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("KAFKA_CLUSTER_BASE_PORT", self.base_port.to_string()),
            ("KAFKA_CLUSTER_DIR", self.dir.display().to_string()),
        ]
    }

    /// Runs `scripts/kafka ARGS`; whether it succeeded, and what it said.
    fn try_script(&self, args: &str) -> (bool, String) {
        run_script("scripts/kafka", args, self.env())
    }

    pub fn script(&self, args: &str) -> String {
        let (ok, text) = self.try_script(args);
        assert!(ok, "scripts/kafka {args} failed:\n{text}");
        text
    }

    /// [`script`](Self::script) off the runtime's threads, so that the load of a test goes on meanwhile.
    pub async fn run(&'static self, args: String) -> String {
        tokio::task::spawn_blocking(move || self.script(&args)).await.unwrap()
    }

    pub fn bootstrap(&self) -> String {
        (1..=CLUSTER_NODES).map(|i| format!("127.0.0.1:{}", self.node_port(i))).collect::<Vec<_>>().join(",")
    }

    fn node_port(&self, node: u8) -> u16 {
        self.base_port + 2 * (u16::from(node) - 1)
    }

    /// The cluster to this test alone, with every node running and caught up (a test that failed
    /// half-way may have left one down).
    pub async fn exclusive(&'static self) -> tokio::sync::MutexGuard<'static, ()> {
        let guard = CLUSTER_USE.lock().await;
        tokio::task::spawn_blocking(move || {
            if !self.try_script("cluster status").0 {
                let starts: Vec<_> = (1..=CLUSTER_NODES)
                    .map(|i| std::thread::spawn(move || self.script(&format!("cluster start-node {i}"))))
                    .collect();
                for s in starts {
                    s.join().unwrap();
                }
            }
        })
        .await
        .unwrap();
        guard
    }

    /// SIGKILL node `node` (1-based; its Kafka `node.id`).
    pub async fn kill(&'static self, node: u8) {
        self.run(format!("cluster kill {node}")).await;
    }

    /// Stops node `node` cleanly (SIGTERM: it hands its leaderships over first).
    pub async fn stop_node(&'static self, node: u8) {
        self.run(format!("cluster stop-node {node}")).await;
    }

    /// Starts the given nodes together and returns once they answer and no partition is
    /// under-replicated (together: with two nodes down, one alone never gets the others in sync).
    pub async fn start_nodes(&'static self, nodes: &[u8]) {
        let starts: Vec<_> = nodes.iter().map(|i| self.run(format!("cluster start-node {i}"))).collect();
        futures_util::future::join_all(starts).await;
    }

    /// Creates `topic` with 3 partitions whose replicas are on every node, `leader` first: the leader
    /// of every partition while it runs.
    pub fn create_topic(&self, topic: &str, leader: u8) {
        let others: Vec<u8> = (1..=CLUSTER_NODES).filter(|i| *i != leader).collect();
        let replicas = format!("{leader}:{}:{}", others[0], others[1]);
        self.script(&format!(
            "cluster topics --create --topic {topic} --replica-assignment {replicas},{replicas},{replicas} \
             --config min.insync.replicas=2"
        ));
    }

    /// The leader (node id) of each partition of `topic`, as the cluster's metadata says now; -1 for a
    /// partition without one.
    pub fn leaders(&self, topic: &str) -> BTreeMap<i32, i32> {
        let c = consumer(&self.bootstrap());
        let md = c.fetch_metadata(Some(topic), Duration::from_secs(10)).expect("metadata");
        md.topics()[0].partitions().iter().map(|p| (p.id(), p.leader())).collect()
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
    fn of(m: &BorrowedMessage) -> Record {
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
        Record {
            key: String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
            partition: m.partition(),
            offset: m.offset(),
            timestamp: m.timestamp().to_millis(),
            headers,
            value: serde_json::from_slice(m.payload().unwrap_or_default()).unwrap_or(serde_json::Value::Null),
        }
    }

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
    topic_len_on(&broker().bootstrap(), topic)
}

/// [`topic_len`] on the Kafka at `bootstrap`.
pub fn topic_len_on(bootstrap: &str, topic: &str) -> i64 {
    let c = consumer(bootstrap);
    let deadline = Instant::now() + Duration::from_secs(30);
    partitions(&c, topic, deadline)
        .into_iter()
        .map(|p| c.fetch_watermarks(topic, p, Duration::from_secs(10)).expect("watermarks").1)
        .sum()
}

/// How many records of `topic` the consumer group `group` has not committed yet (its lag, as
/// `kafka-consumer-groups --describe` reports it): the sum over partitions of the high watermark less
/// the committed offset (none committed: the whole partition). Asks the group coordinator without
/// joining the group. An error (the coordinator busy with a rebalance, say) is for the caller to retry.
pub fn consumer_group_lag(bootstrap: &str, topic: &str, group: &str) -> rdkafka::error::KafkaResult<i64> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let parts = partitions(&c, topic, Instant::now() + Duration::from_secs(30));
    let mut tpl = TopicPartitionList::new();
    for p in &parts {
        tpl.add_partition(topic, *p);
    }
    let committed = c.committed_offsets(tpl, Duration::from_secs(10))?;
    let mut lag = 0;
    for p in &parts {
        let end = c.fetch_watermarks(topic, *p, Duration::from_secs(10))?.1;
        let done = match committed.find_partition(topic, *p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => o,
            _ => 0,
        };
        lag += end - done;
    }
    Ok(lag)
}

/// Reads `topic` from the beginning until `until` says the records are all there, or panics at
/// `timeout` with what it has.
pub fn read_until(topic: &str, timeout: Duration, until: impl Fn(&[Record]) -> bool) -> Vec<Record> {
    let deadline = Instant::now() + timeout;
    let (c, _) = reader(&broker().bootstrap(), topic, deadline);
    let mut out = Vec::new();
    while !until(&out) {
        assert!(Instant::now() < deadline, "timed out reading {topic}: have {} records", out.len());
        if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
            out.push(Record::of(&m));
        }
    }
    out
}

/// A consumer assigned every partition of `topic` from the beginning, and those partitions.
fn reader(bootstrap: &str, topic: &str, deadline: Instant) -> (BaseConsumer, Vec<i32>) {
    let c = consumer(bootstrap);
    let parts = partitions(&c, topic, deadline);
    let mut tpl = TopicPartitionList::new();
    for p in &parts {
        tpl.add_partition_offset(topic, *p, Offset::Beginning).unwrap();
    }
    c.assign(&tpl).unwrap();
    (c, parts)
}

/// Reads `topic` on the Kafka at `bootstrap` from the beginning until every change in `expected` is
/// there and then every partition up to its end as of that moment, so that repeats and changes whose
/// answer was lost are read too. Panics at `timeout` naming what is missing. Incremental: fit for
/// tens of thousands of records.
pub fn read_to_end(
    bootstrap: &str,
    topic: &str,
    expected: &HashSet<(String, usize)>,
    timeout: Duration,
) -> Vec<Record> {
    let deadline = Instant::now() + timeout;
    let (c, parts) = reader(bootstrap, topic, deadline);
    let mut missing = expected.clone();
    let mut next: HashMap<i32, i64> = HashMap::new();
    let mut ends: Option<HashMap<i32, i64>> = None;
    let mut out = Vec::new();
    loop {
        if missing.is_empty() {
            let ends = ends.get_or_insert_with(|| {
                let end =
                    |p: i32| c.fetch_watermarks(topic, p, Duration::from_secs(10)).expect("watermarks").1;
                parts.iter().map(|p| (*p, end(*p))).collect()
            });
            if ends.iter().all(|(p, end)| next.get(p).copied().unwrap_or(0) >= *end) {
                return out;
            }
        }
        assert!(
            Instant::now() < deadline,
            "timed out reading {topic}: {} records read, {} of the {} changes expected missing, e.g. {:?}",
            out.len(),
            missing.len(),
            expected.len(),
            missing.iter().take(5).collect::<Vec<_>>()
        );
        if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
            let r = Record::of(&m);
            if let Some(change) = try_rename_of(&r) {
                missing.remove(&change);
            }
            next.insert(r.partition, r.offset + 1);
            out.push(r);
        }
    }
}

/// Everything `topic` holds now, as a consumer with `isolation.level` `isolation` reads it: every
/// partition from the beginning up to the end it reports (`read_committed`: the last stable offset,
/// aborted records skipped; commit markers take offsets, so the end is not a record count).
pub fn read_all_as(bootstrap: &str, topic: &str, isolation: &str, timeout: Duration) -> Vec<Record> {
    let deadline = Instant::now() + timeout;
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique("it-reader"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("isolation.level", isolation)
        .create()
        .expect("consumer");
    let parts = partitions(&c, topic, deadline);
    let mut tpl = TopicPartitionList::new();
    for p in &parts {
        tpl.add_partition_offset(topic, *p, Offset::Beginning).unwrap();
    }
    c.assign(&tpl).unwrap();
    let mut at_end: HashSet<i32> = HashSet::new();
    let mut out = Vec::new();
    while at_end.len() < parts.len() {
        assert!(Instant::now() < deadline, "timed out reading {topic} ({isolation}): {} records", out.len());
        match c.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                at_end.remove(&m.partition());
                out.push(Record::of(&m));
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                at_end.insert(p);
            }
            _ => {}
        }
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
// PostgreSQL

/// The run's PostgreSQL server, for tim-group-directory: Debian's binaries run by `scripts/postgres` on a
/// free port with their own data directory, started on first use and stopped and wiped by a watchdog when
/// the test process exits; or the server `TEST_POSTGRES_URL` names (a role that may create databases).
pub struct PostgresServer {
    /// The URL of a database to connect to for `CREATE DATABASE`.
    admin_url: String,
}

static POSTGRES: OnceLock<PostgresServer> = OnceLock::new();

pub fn postgres() -> &'static PostgresServer {
    POSTGRES.get_or_init(|| {
        if let Ok(url) = std::env::var("TEST_POSTGRES_URL") {
            return PostgresServer { admin_url: url };
        }
        let port = free_port();
        // The data directory is the script's choice: inside the checkout, or a private one in the temp
        // directory when the server's user cannot enter the checkout (a clone as root in a 0700 directory).
        let env = [("POSTGRES_PORT", port.to_string())];
        let script = |args: &str| {
            let (ok, text) = run_script("scripts/postgres", args, env.to_vec());
            assert!(ok, "scripts/postgres {args} failed:\n{text}");
            text
        };
        script("reset");
        // As for the broker: stopped and wiped once this process is gone, however it ends.
        after_this_process("scripts/postgres", "reset", env.clone());
        script("start");
        PostgresServer { admin_url: script("url").trim().to_owned() }
    })
}

impl PostgresServer {
    /// A new, empty database of its own; its URL. Blocking (call it off the runtime's threads, or from
    /// a plain `#[test]`).
    pub fn database(&self) -> String {
        let name = unique("it_directory").replace('-', "_").to_lowercase();
        let admin = self.admin_url.clone();
        let create = name.clone();
        // The postgres client runs a runtime of its own: on a thread of its own, wherever this is called.
        std::thread::spawn(move || {
            let mut client = postgres::Client::connect(&admin, postgres::NoTls).expect("PostgreSQL answers");
            client.batch_execute(&format!("CREATE DATABASE {create}")).expect("CREATE DATABASE");
        })
        .join()
        .expect("the database is created");
        // The same server and credentials, the new database (any query string dropped).
        let base = self.admin_url.split('?').next().unwrap();
        let (server, _) = base.rsplit_once('/').filter(|(s, _)| s.contains("://")).unwrap_or((base, ""));
        format!("{server}/{name}")
    }
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
        // The run's broker unless the test names other Kafka servers (then it is not started for it).
        let brokers = match opts.env.iter().find(|(k, _)| k == "BRIDGE_KAFKA_BROKERS") {
            Some((_, servers)) => servers.clone(),
            None => broker().bootstrap(),
        };
        let mut env: Vec<(String, String)> = vec![
            ("BRIDGE_SDK_APP_ID".into(), APP_ID.into()),
            ("BRIDGE_CALLBACK_TOKEN".into(), TOKEN.into()),
            ("BRIDGE_LISTEN".into(), "127.0.0.1:0".into()),
            ("BRIDGE_ADMIN_LISTEN".into(), "127.0.0.1:0".into()),
            ("BRIDGE_KAFKA_BROKERS".into(), brokers),
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

    /// [`wait_exit`](Self::wait_exit) that lets the test's other tasks (a [`Load`]) run meanwhile.
    pub async fn exited(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "bridge did not exit within {timeout:?}:\n{}", self.logs());
            tokio::time::sleep(Duration::from_millis(50)).await;
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

/// The spool at `dir`, opened in this process (fsync=never) as a bridge would open it, to leave
/// records in it before a bridge starts there.
pub fn open_spool(dir: &Path) -> (tim_kafka_bridge::spool::Spool, tim_kafka_bridge::spool::SpoolThread) {
    tim_kafka_bridge::spool::Spool::open(tim_kafka_bridge::spool::SpoolConfig {
        dir: dir.to_owned(),
        fsync: tim_kafka_bridge::spool::FsyncMode::Never,
        max_bytes: 1 << 30,
        max_queued_bytes: tim_kafka_bridge::spool::MAX_QUEUED_BYTES,
        observer: None,
    })
    .unwrap()
}

/// The bridge's request check with the tests' app and token, for turning webhooks into spooled
/// records without HTTP.
pub fn verifier() -> tim_kafka_bridge::webhook::Verifier {
    tim_kafka_bridge::webhook::Verifier {
        app_ids: vec![tim_kafka_bridge::domain::SdkAppId::parse(APP_ID).unwrap()],
        token: CallbackToken::new(TOKEN.into()),
        max_skew_secs: 60,
        commands: tim_kafka_bridge::webhook::Command::ALL.to_vec(),
    }
}

/// `n` hex digits from xorshift: lz4 cannot squeeze them to half their size.
pub fn incompressible(n: usize) -> String {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from_digit((x & 0xf) as u32, 16).unwrap()
        })
        .collect()
}

/// Writes changes `0..n` of `group` into the spool at `dir` as a stopped bridge would have left
/// them, through the library's own spool (no HTTP, so a large backlog takes a second).
pub async fn spool_directly(dir: &Path, group: &str, n: usize) {
    let (spool, thread) = open_spool(dir);
    let verifier = verifier();
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
    try_rename_of(r).expect("a rename")
}

/// `(group, n)` of a record produced from [`Webhook::rename`], `None` for any other record.
pub fn try_rename_of(r: &Record) -> Option<(String, usize)> {
    let name = r.value["changes"]["name"].as_str()?;
    let (group, n) = name.rsplit_once(" #")?;
    Some((group.to_owned(), n.parse().ok()?))
}

/// The changes `0..n` of `group`, as [`Webhook::rename`] makes them.
pub fn changes(group: &str, n: usize) -> HashSet<(String, usize)> {
    (0..n).map(|i| (group.to_owned(), i)).collect()
}

/// Checks the records are the changes in `expected`, each exactly once: none missing, none that was
/// not expected, none twice (by `(group, n)`, and by `event_id`). A count cannot tell this: a lost
/// change and a repeated one add up to the right number.
pub fn assert_exactly_once(records: &[Record], expected: &HashSet<(String, usize)>) {
    let mut times: HashMap<(String, usize), usize> = HashMap::new();
    let mut ids = HashSet::new();
    let mut repeated_ids = Vec::new();
    for r in records {
        *times.entry(rename_of(r)).or_default() += 1;
        let id = r.value["event_id"].as_str().expect("an event_id");
        if !ids.insert(id) {
            repeated_ids.push(id.to_owned());
        }
    }
    let first = |mut v: Vec<(String, usize)>| {
        v.sort();
        v.truncate(10);
        v
    };
    let missing = first(expected.iter().filter(|c| !times.contains_key(*c)).cloned().collect());
    let unexpected = first(times.keys().filter(|c| !expected.contains(*c)).cloned().collect());
    let twice = first(times.iter().filter(|(_, n)| **n > 1).map(|(c, _)| c.clone()).collect());
    assert!(
        missing.is_empty() && unexpected.is_empty() && twice.is_empty() && repeated_ids.is_empty(),
        "{} records for {} changes expected: missing {missing:?}, not expected {unexpected:?}, more than once \
         {twice:?}, event_ids repeated {:?} (at most 10 of each)",
        records.len(),
        expected.len(),
        &repeated_ids[..repeated_ids.len().min(10)]
    );
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

// ---------------------------------------------------------------------------------------------------
// Load, a load balancer, and what reached the topic

/// The shape of a [`Load`].
#[derive(Debug, Clone, Copy)]
pub struct LoadShape {
    /// Concurrent senders; each owns `groups / senders` groups and sends their changes in turn.
    pub senders: usize,
    pub groups: usize,
    /// Most webhooks per second per sender.
    pub rate_per_sender: u32,
    /// A new connection per webhook (behind a [`RoundRobin`], every webhook goes to the next bridge)
    /// instead of keep-alive.
    pub fresh_connections: bool,
}

impl Default for LoadShape {
    fn default() -> Self {
        Self { senders: 8, groups: 200, rate_per_sender: 30, fresh_connections: false }
    }
}

/// What a [`Load`] sent and how it was answered.
#[derive(Debug, Default, Clone)]
pub struct Answers {
    pub sent: usize,
    /// The changes answered 200: each must reach the topic.
    pub ok: HashSet<(String, usize)>,
    /// Every other answer by HTTP status; 0 is no answer (refused, reset, timed out).
    pub other: BTreeMap<u16, usize>,
    /// Per group, the last change answered 200.
    pub last_ok: HashMap<String, usize>,
}

/// Signed renames posted to a webhook URL by concurrent senders until stopped, the way Tencent sends
/// them: each group's changes one after the other (change `n + 1` once `n` was answered, whatever
/// the answer), many groups at once.
pub struct Load {
    answers: Arc<Mutex<Answers>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    senders: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// Starts sending to `url` (the webhook path of a bridge or a balancer) changes of the groups
    /// `@TGS#<prefix><i>`.
    pub fn start(url: String, prefix: &str, shape: LoadShape) -> Load {
        let mut http = reqwest::Client::builder().timeout(Duration::from_secs(10));
        if shape.fresh_connections {
            http = http.pool_max_idle_per_host(0);
        }
        let http = http.build().unwrap();
        let answers = Arc::new(Mutex::new(Answers::default()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let senders = (0..shape.senders)
            .map(|s| {
                let groups: Vec<String> =
                    (s..shape.groups).step_by(shape.senders).map(|g| format!("@TGS#{prefix}{g}")).collect();
                let (http, url, answers, stop) = (http.clone(), url.clone(), answers.clone(), stop.clone());
                let period = Duration::from_secs(1) / shape.rate_per_sender.max(1);
                tokio::spawn(async move {
                    let mut tick = tokio::time::interval(period);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    for n in 0.. {
                        for group in &groups {
                            if stop.load(Ordering::Relaxed) {
                                return;
                            }
                            tick.tick().await;
                            let status = post_webhook(&http, &url, &Webhook::rename(group, n)).await;
                            let mut a = answers.lock().unwrap();
                            a.sent += 1;
                            if status == 200 {
                                a.ok.insert((group.clone(), n));
                                a.last_ok.insert(group.clone(), n);
                            } else {
                                *a.other.entry(status).or_default() += 1;
                            }
                        }
                    }
                })
            })
            .collect();
        Load { answers, stop, senders }
    }

    /// How many webhooks were answered 200 so far.
    pub fn ok_count(&self) -> usize {
        self.answers.lock().unwrap().ok.len()
    }

    /// Waits until `more` webhooks beyond those answered so far were answered 200.
    pub async fn wait_for_more_ok(&self, more: usize, timeout: Duration) {
        let target = self.ok_count() + more;
        wait_for(&format!("{target} webhooks answered 200"), timeout, || async { self.ok_count() >= target })
            .await;
    }

    /// Stops the senders (each finishes the webhook it is sending) and returns what they got.
    pub async fn stop(self) -> Answers {
        self.stop.store(true, Ordering::Relaxed);
        for s in self.senders {
            s.await.unwrap();
        }
        let answers = self.answers.lock().unwrap().clone();
        answers
    }
}

/// POSTs a signed `hook` to `url`; the HTTP status, or 0 when no answer came.
pub async fn post_webhook(http: &reqwest::Client, url: &str, hook: &Webhook) -> u16 {
    let sent = http
        .post(format!("{url}?{}", signed_query(now_secs())))
        .header("content-type", "application/json")
        .body(hook.body())
        .send()
        .await;
    match sent {
        Ok(resp) => {
            let status = resp.status().as_u16();
            match resp.bytes().await {
                Ok(_) => status,
                Err(_) => 0,
            }
        }
        Err(_) => 0,
    }
}

/// A round-robin TCP load balancer, as in front of several bridges in production: each connection
/// it accepts goes to the next backend, bytes copied both ways. Stops accepting when dropped.
pub struct RoundRobin {
    pub port: u16,
    accept: tokio::task::JoinHandle<()>,
}

impl RoundRobin {
    /// Balances over the listeners on 127.0.0.1 at `backends` (e.g. each bridge's `port`).
    pub async fn start(backends: Vec<u16>) -> RoundRobin {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accept = tokio::spawn(async move {
            for backend in backends.iter().cycle() {
                let Ok((mut inbound, _)) = listener.accept().await else { continue };
                let backend = *backend;
                tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(("127.0.0.1", backend)).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        RoundRobin { port, accept }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }
}

impl Drop for RoundRobin {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// What the topic holds against what a [`Load`] was answered.
#[derive(Debug)]
pub struct Tally {
    pub sent: usize,
    pub ok: usize,
    /// Records of the load's groups on the topic, repeats included.
    pub on_topic: usize,
    /// Records whose `event_id` came earlier on the topic.
    pub repeats: usize,
    pub non_200: BTreeMap<u16, usize>,
    /// Changes answered 200 and not on the topic.
    pub lost: Vec<(String, usize)>,
    /// Changes that came on the topic after a later change of their group (repeats dropped by
    /// `event_id`), as `group: n after m`.
    pub reordered: Vec<String>,
}

impl Tally {
    pub fn of(answers: &Answers, records: &[Record]) -> Tally {
        let mut sorted: Vec<&Record> = records.iter().filter(|r| try_rename_of(r).is_some()).collect();
        sorted.sort_by_key(|r| (r.partition, r.offset));
        let mut ids = HashSet::new();
        let mut on_topic = HashSet::new();
        let mut last: HashMap<String, usize> = HashMap::new();
        let (mut repeats, mut reordered) = (0, Vec::new());
        for r in &sorted {
            let id = r.value["event_id"].as_str().expect("an event_id").to_owned();
            if !ids.insert(id) {
                repeats += 1;
                continue;
            }
            let (group, n) = rename_of(r);
            if let Some(prev) = last.insert(group.clone(), n) {
                if n < prev {
                    reordered.push(format!("{group}: {n} after {prev}"));
                }
            }
            on_topic.insert((group, n));
        }
        let mut lost: Vec<_> = answers.ok.difference(&on_topic).cloned().collect();
        lost.sort();
        Tally {
            sent: answers.sent,
            ok: answers.ok.len(),
            on_topic: sorted.len(),
            repeats,
            non_200: answers.other.clone(),
            lost,
            reordered,
        }
    }

    /// Every change answered 200 is on the topic, and no group's changes are out of order.
    pub fn assert_nothing_lost_nor_reordered(&self) {
        assert!(self.lost.is_empty(), "{self}; lost (first 10): {:?}", &self.lost[..self.lost.len().min(10)]);
        assert!(
            self.reordered.is_empty(),
            "{self}; reordered (first 10): {:?}",
            &self.reordered[..self.reordered.len().min(10)]
        );
    }
}

impl std::fmt::Display for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "sent {}, OK'd {}, on topic {}, repeats {}, non-200 answers {:?}, lost {}, reordered {}",
            self.sent,
            self.ok,
            self.on_topic,
            self.repeats,
            self.non_200,
            self.lost.len(),
            self.reordered.len()
        )
    }
}

/// Each group's state as a consumer that applies changes by last writer wins builds it: per group,
/// the rename `n` of the record with the greatest `(event_time_ms, event_id)`, in whatever order the
/// records came.
pub fn last_writer_wins(records: &[Record]) -> HashMap<String, usize> {
    let mut newest: HashMap<String, (u64, String, usize)> = HashMap::new();
    for r in records {
        let Some((group, n)) = try_rename_of(r) else { continue };
        let key = (
            r.value["event_time_ms"].as_u64().expect("event_time_ms"),
            r.value["event_id"].as_str().expect("event_id").to_owned(),
            n,
        );
        let slot = newest.entry(group).or_insert_with(|| key.clone());
        if (key.0, &key.1) > (slot.0, &slot.1) {
            *slot = key;
        }
    }
    newest.into_iter().map(|(group, (_, _, n))| (group, n)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(group: &str, n: usize) -> Record {
        Record {
            key: group.to_owned(),
            partition: 0,
            offset: n as i64,
            timestamp: None,
            headers: HashMap::new(),
            value: serde_json::json!({"event_id": format!("{group}-{n}"), "changes": {"name": format!("{group} #{n}")}}),
        }
    }

    /// What the "once" tests rely on: the right count is not enough.
    #[test]
    fn exactly_once_tells_a_loss_plus_a_repeat_from_every_change_once() {
        let expected = changes("@TGS#g", 3);
        let once: Vec<Record> = (0..3).map(|n| record("@TGS#g", n)).collect();
        assert_exactly_once(&once, &expected);
        let lost_and_repeated = vec![record("@TGS#g", 0), record("@TGS#g", 1), record("@TGS#g", 1)];
        let lost_and_other = vec![record("@TGS#g", 0), record("@TGS#g", 1), record("@TGS#h", 2)];
        for (what, records) in
            [("a loss and a repeat", lost_and_repeated), ("a loss and a stranger", lost_and_other)]
        {
            let caught = std::panic::catch_unwind(|| assert_exactly_once(&records, &expected));
            assert!(caught.is_err(), "{what} passed for exactly once");
        }
    }
}
