//! The load benchmark behind `scripts/bench`: the bridge against a real Kafka, next to a minimal
//! actix-web server that only answers Tencent's OK envelope (the ceiling), under the same load.
//!
//! For each target: a closed loop (64 keep-alive connections, as fast as answers come) gives the
//! highest sustained rate; open loops at fixed offered rates measure each request from its *scheduled*
//! send time, so a stall shows up in the percentiles instead of silently slowing the sender. A Kafka
//! consumer reads the topic meanwhile for end-to-end latency and checks that every webhook answered OK
//! arrived. Peak RSS and CPU time come from /proc. The generator is a minimal HTTP/1.1 keep-alive
//! client ([`Conn`]); `wrk` runs against the ceiling too, to show it is not the limit.
//!
//! The peer is Benthos 4.27 (`bench/peer`, built by `scripts/bench` from the Go module proxy):
//! `http_server` → `kafka_franz`, answering after Kafka's ack (`peer-sync`) or after its SQLite buffer
//! (`peer-spool`, which Benthos opens without fsync). It checks nothing of Tencent's protocol and
//! publishes the request body as it came; the same load is sent to it.
//!
//! The bridge measured is the binary a user gets: `BENCH_BRIDGE` names a plain `cargo build --release`
//! of it, which `scripts/bench` makes and copies aside. Not the binary `cargo bench` builds beside this
//! benchmark: the crate's dev-dependency on itself turns the `failpoints` feature on for that one. A
//! binary that says `(failpoints)` in its `--version` is refused, and the results name the version
//! measured.
//!
//! Environment (scripts/bench sets them): `BENCH_BRIDGE` (the bridge binary; required unless
//! `BENCH_TARGETS` names no bridge target), `BENCH_KAFKA` (bootstrap servers), `BENCH_SECONDS` (per
//! phase, default 10), `BENCH_RATES` (default `2000,10000,30000`), `BENCH_TARGETS` (default
//! `ceiling,always,always-eos,interval,never,sync,peer-sync,peer-spool`; `always-eos` is `always` with
//! `BRIDGE_EXACTLY_ONCE=true`, its end-to-end latency measured as a `read_committed` consumer sees it), `BENCH_PEER` (the Benthos binary; the
//! peer targets are left out, with a line saying so, without it), `BENCH_PEER_CONFIGS` (the directory
//! of `sync.yaml` and `spool.yaml`), `BENCH_OUT` (results directory).

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tim_kafka_bridge::webhook::{sign, CallbackToken};

const APP_ID: &str = "1400000000";
const TOKEN: &str = "bench-callback-token";
const CONNECTIONS: usize = 64;
const MAX_IN_FLIGHT: usize = 1024;
/// Closed-loop warm-up before each target's phases: long enough for the broker's JIT too (the first
/// Kafka target of a run otherwise measures a cold broker).
const WARM_UP_SECS: u64 = 5;

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64
}

// ---------------------------------------------------------------------------------------------------
// The ceiling: read the body, answer OK, nothing else.

fn run_ceiling(port: u16) {
    use actix_web::{web, App, HttpResponse, HttpServer};
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async move {
        HttpServer::new(|| {
            App::new().route(
                "/webhook",
                web::post().to(|_body: web::Bytes| async {
                    HttpResponse::Ok()
                        .content_type("application/json")
                        .body(r#"{"ActionStatus":"OK","ErrorInfo":"","ErrorCode":0}"#)
                }),
            )
        })
        .bind(("127.0.0.1", port))
        .unwrap()
        .run()
        .await
        .unwrap();
    });
}

// ---------------------------------------------------------------------------------------------------
// Targets

struct Target {
    child: Child,
    port: u16,
    /// The bridge's admin listener (metrics); the ceiling has none.
    admin_port: u16,
    topic: Option<String>,
    _spool: Option<tempfile::TempDir>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The bridge binary to measure (`BENCH_BRIDGE`) and its `--version` line; `Err` says why it is not one
/// a user gets.
fn bridge_binary() -> Result<(std::path::PathBuf, String), String> {
    let path = std::env::var_os("BENCH_BRIDGE").map(std::path::PathBuf::from).ok_or(
        "BENCH_BRIDGE is unset: name a plain `cargo build --release` binary of tim-kafka-bridge \
         (scripts/bench builds one); the one `cargo bench` builds has failpoints compiled in",
    )?;
    let out = Command::new(&path)
        .arg("--version")
        .env_clear()
        .output()
        .map_err(|e| format!("BENCH_BRIDGE cannot be run: {e}"))?;
    let version = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if !out.status.success() || !version.starts_with("tim-kafka-bridge ") {
        return Err(format!("BENCH_BRIDGE is not a tim-kafka-bridge binary (--version: {version:?})"));
    }
    if version.contains("failpoints") {
        return Err(format!(
            "BENCH_BRIDGE is a build with failpoints ({version}), not the binary a user gets: \
             build it with `cargo build --release` (scripts/bench does)"
        ));
    }
    Ok((path, version))
}

fn start(name: &str, kafka: &str, bridge: &std::path::Path) -> Target {
    let port = free_port();
    if name == "ceiling" {
        let child = Command::new(std::env::current_exe().unwrap())
            .args(["--ceiling-server", &port.to_string()])
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        return Target { child, port, admin_port: 0, topic: None, _spool: None };
    }
    let spool = tempfile::tempdir().unwrap();
    let admin_port = free_port();
    let topic = format!("bench-{name}-{}", now_ns() % 1_000_000_000);
    if let Some(mode) = name.strip_prefix("peer-") {
        let configs = std::path::PathBuf::from(env_or("BENCH_PEER_CONFIGS", "bench/peer"));
        let child = Command::new(std::env::var("BENCH_PEER").expect("BENCH_PEER names the peer binary"))
            .arg("-c")
            .arg(configs.join(format!("{mode}.yaml")))
            .env("LISTEN", format!("127.0.0.1:{port}"))
            .env("BROKERS", kafka)
            .env("TOPIC", &topic)
            .env("SPOOL", spool.path().join("buffer.db"))
            .env("LOG_LEVEL", "WARN")
            .stdout(Stdio::null())
            .spawn()
            .expect("the peer starts");
        return Target { child, port, admin_port: 0, topic: Some(topic), _spool: Some(spool) };
    }
    let mut cmd = Command::new(bridge);
    cmd.env_clear()
        .env("BRIDGE_SDK_APP_ID", APP_ID)
        .env("BRIDGE_CALLBACK_TOKEN", TOKEN)
        .env("BRIDGE_LISTEN", format!("127.0.0.1:{port}"))
        .env("BRIDGE_ADMIN_LISTEN", format!("127.0.0.1:{admin_port}"))
        .env("BRIDGE_KAFKA_BROKERS", kafka)
        .env("BRIDGE_TOPIC", &topic)
        .env("BRIDGE_SPOOL_DIR", spool.path())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null());
    match name {
        "always" => {}
        "always-eos" => {
            cmd.env("BRIDGE_EXACTLY_ONCE", "true");
        }
        "interval" => {
            cmd.env("BRIDGE_SPOOL_FSYNC", "interval");
        }
        "never" => {
            cmd.env("BRIDGE_SPOOL_FSYNC", "never");
        }
        "sync" => {
            cmd.env("BRIDGE_DELIVERY", "sync");
        }
        other => panic!("unknown target {other}"),
    }
    let child = cmd.spawn().unwrap();
    Target { child, port, admin_port, topic: Some(topic), _spool: Some(spool) }
}

impl Target {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// utime + stime of the process, in seconds.
    fn cpu_seconds(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap_or_default();
        let after_comm = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let f: Vec<&str> = after_comm.split_whitespace().collect();
        let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
            + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
        ticks / clock_ticks()
    }

    /// Peak resident set size, in MiB.
    fn peak_rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    }

    fn stop(mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.pid().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// `wrk` against the ceiling, for the same time and connections as the closed loop: a check that the
/// load generator is not what limits the ceiling's rate. `None` when wrk is not installed.
fn wrk_rate(port: u16, seconds: u64) -> Option<f64> {
    let (path, body) = (path_and_query(now_ns()), body("wrk", 0, now_ns()));
    let script = tempfile::NamedTempFile::new().ok()?;
    let lua = format!(
        "wrk.method = \"POST\"\nwrk.body = {body:?}\nwrk.headers[\"Content-Type\"] = \"application/json\"\n"
    );
    std::fs::write(script.path(), lua).ok()?;
    let out = Command::new("wrk")
        .args(["-t1", &format!("-c{CONNECTIONS}"), &format!("-d{seconds}s"), "-s"])
        .arg(script.path())
        .arg(format!("http://127.0.0.1:{port}{path}"))
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let rate = text.lines().find_map(|l| l.strip_prefix("Requests/sec:"))?.trim().parse().ok()?;
    eprintln!("load: ceiling with wrk: {rate:.0}/s");
    Some(rate)
}

fn clock_ticks() -> f64 {
    let out = Command::new("getconf").arg("CLK_TCK").output().ok();
    out.and_then(|o| String::from_utf8(o.stdout).ok()).and_then(|s| s.trim().parse().ok()).unwrap_or(100.0)
}

// ---------------------------------------------------------------------------------------------------
// Load

/// The path and query of a webhook sent at `sent_ns`: the Sign changes once a second, so it is
/// computed once a second per thread, not per request (the generator must cost less than the target).
fn path_and_query(sent_ns: u64) -> String {
    thread_local! {
        static LAST: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((u64::MAX, String::new())) };
    }
    let secs = sent_ns / 1_000_000_000;
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        if last.0 != secs {
            let t = secs.to_string();
            let token = CallbackToken::new(TOKEN.into()).unwrap();
            last.1 = format!(
                "/webhook?SdkAppid={APP_ID}&CallbackCommand=Group.CallbackAfterGroupInfoChanged&contenttype=json&ClientIP=10.1.2.3&OptPlatform=Android&RequestTime={t}&Sign={}",
                sign(&token, &t)
            );
            last.0 = secs;
        }
        last.1.clone()
    })
}

/// A webhook's body. Distinct content and many groups: no two webhooks are alike, nothing can be
/// deduplicated.
fn body(phase: &str, id: u64, sent_ns: u64) -> String {
    format!(
        r#"{{"CallbackCommand":"Group.CallbackAfterGroupInfoChanged","GroupId":"@TGS#bench{}","Type":"Public","Operator_Account":"admin","Name":"{phase} {id} {sent_ns}","EventTime":{}}}"#,
        id % 5000,
        sent_ns / 1_000_000
    )
}

/// One webhook as the bytes of an HTTP/1.1 request.
fn webhook(phase: &str, id: u64, sent_ns: u64) -> Vec<u8> {
    let body = body(phase, id, sent_ns);
    format!(
        "POST {} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        path_and_query(sent_ns),
        body.len()
    )
    .into_bytes()
}

/// The load generator's HTTP/1.1 client: one keep-alive connection that writes a request and reads
/// the status and the body (by Content-Length) of its answer. Hand-written rather than reqwest: the
/// generator shares two cores with the target and Kafka, and with reqwest it reached only 40–70 % of
/// `wrk`'s rate against the ceiling; this needs no URL parsing, header maps or pool per request.
struct Conn {
    stream: tokio::net::TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    async fn open(port: u16) -> std::io::Result<Conn> {
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        stream.set_nodelay(true)?;
        Ok(Conn { stream, buf: Vec::with_capacity(4096) })
    }

    /// Sends `request`; the answer's status code.
    async fn send(&mut self, request: &[u8]) -> std::io::Result<u16> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        self.stream.write_all(request).await?;
        self.buf.clear();
        let broken = || std::io::Error::new(std::io::ErrorKind::InvalidData, "not an HTTP/1.1 answer");
        let head_end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        };
        let head = std::str::from_utf8(&self.buf[..head_end]).map_err(|_| broken())?;
        let status = head.get(9..12).and_then(|s| s.parse().ok()).ok_or_else(broken)?;
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-length").then(|| value.trim().parse().ok())?
            })
            .ok_or_else(broken)?;
        while self.buf.len() < head_end + length {
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
        Ok(status)
    }
}

/// Idle connections to one target, shared by the requests of an open loop.
#[derive(Clone)]
struct Pool {
    port: u16,
    idle: Arc<Mutex<Vec<Conn>>>,
}

impl Pool {
    fn new(port: u16) -> Pool {
        Pool { port, idle: Arc::default() }
    }

    /// Sends one webhook on an idle connection (or a new one); `Some(latency µs)` for a 200, timed
    /// from `scheduled`. A connection that failed is dropped.
    async fn send(&self, phase: &str, id: u64, scheduled: Instant, sent_ns: u64) -> Option<u64> {
        let request = webhook(phase, id, sent_ns);
        let idle = self.idle.lock().unwrap().pop();
        let (mut conn, status) = match idle {
            // An idle connection the server has closed fails at once: try a new one (as HTTP
            // clients do; a request the server did handle and then lost is only a repeat).
            Some(mut c) => match c.send(&request).await {
                Ok(status) => (c, status),
                Err(_) => {
                    let mut c = Conn::open(self.port).await.ok()?;
                    let status = c.send(&request).await.ok()?;
                    (c, status)
                }
            },
            None => {
                let mut c = Conn::open(self.port).await.ok()?;
                let status = c.send(&request).await.ok()?;
                (c, status)
            }
        };
        conn.buf.clear();
        self.idle.lock().unwrap().push(conn);
        (status == 200).then(|| scheduled.elapsed().as_micros() as u64)
    }
}

struct PhaseResult {
    offered: Option<u64>,
    achieved_per_sec: f64,
    ok: u64,
    failed: u64,
    ack: Option<Histogram<u64>>,
    e2e: Option<Histogram<u64>>,
    lost: Option<u64>,
    cpu_per_10k: f64,
}

/// Up to 120 s, our bound, not HdrHistogram's: values a little past it (up to ~134 s, the end of the
/// last bucket) are kept as they are, longer ones (a target far beyond its capacity) are recorded as
/// 120 s by `saturating_record`. A percentile of 120 s or more means "at least 120 s".
fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).unwrap()
}

async fn closed_loop(pool: &Pool, seconds: u64, phase: &str) -> (Vec<u64>, Histogram<u64>, u64) {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..CONNECTIONS {
        let (pool, next, phase) = (pool.clone(), next.clone(), phase.to_owned());
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut h, mut failed) = (Vec::new(), hist(), 0u64);
            while Instant::now() < deadline {
                let id = next.fetch_add(1, Ordering::Relaxed);
                match pool.send(&phase, id, Instant::now(), now_ns()).await {
                    Some(us) => {
                        h.saturating_record(us.max(1));
                        ok.push(id);
                    }
                    None => failed += 1,
                }
            }
            (ok, h, failed)
        }));
    }
    let (mut ok, mut h, mut failed) = (Vec::new(), hist(), 0);
    for t in tasks {
        let (o, th, f) = t.await.unwrap();
        ok.extend(o);
        h.add(th).unwrap();
        failed += f;
    }
    (ok, h, failed)
}

async fn open_loop(pool: &Pool, rate: u64, seconds: u64, phase: &str) -> (Vec<u64>, Histogram<u64>, u64) {
    let total = rate * seconds;
    let start = Instant::now() + Duration::from_millis(50);
    let limit = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    let results = Arc::new(Mutex::new((Vec::new(), hist(), 0u64)));
    let mut tasks = Vec::with_capacity(total as usize);
    for id in 0..total {
        let scheduled = start + Duration::from_nanos(id * 1_000_000_000 / rate);
        tokio::time::sleep_until(scheduled.into()).await;
        let sent_ns = now_ns();
        let (pool, limit, results, phase) = (pool.clone(), limit.clone(), results.clone(), phase.to_owned());
        tasks.push(tokio::spawn(async move {
            let _permit = limit.acquire_owned().await.unwrap();
            let r = pool.send(&phase, id, scheduled, sent_ns).await;
            let mut g = results.lock().unwrap();
            match r {
                Some(us) => {
                    g.1.saturating_record(us.max(1));
                    g.0.push(id);
                }
                None => g.2 += 1,
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut g = results.lock().unwrap();
    (std::mem::take(&mut g.0), std::mem::replace(&mut g.1, hist()), g.2)
}

// ---------------------------------------------------------------------------------------------------
// End to end: a consumer that notes when each record becomes visible.

struct Watcher {
    seen: Arc<Mutex<Vec<(String, u64, u64)>>>,
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

fn watch(kafka: &str, topic: &str) -> Watcher {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka)
        .set("group.id", format!("bench-{}", now_ns()))
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "5")
        .create()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let partitions = loop {
        let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(5)).unwrap();
        let t = &md.topics()[0];
        if t.error().is_none() && !t.partitions().is_empty() {
            break t.partitions().iter().map(|p| p.id()).collect::<Vec<_>>();
        }
        assert!(Instant::now() < deadline, "topic {topic} never appeared");
        std::thread::sleep(Duration::from_millis(100));
    };
    // Start at the current end, resolved now: `Offset::End` would be resolved at the first fetch,
    // after records of the first phase may already be there, and those would look lost.
    let mut tpl = TopicPartitionList::new();
    for p in partitions {
        let (_, high) = consumer.fetch_watermarks(topic, p, Duration::from_secs(10)).unwrap();
        tpl.add_partition_offset(topic, p, Offset::Offset(high)).unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let (s, st) = (seen.clone(), stop.clone());
    let thread = std::thread::spawn(move || {
        while !st.load(Ordering::Relaxed) {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(50)) {
                let now = now_ns();
                let v: serde_json::Value =
                    serde_json::from_slice(m.payload().unwrap_or_default()).unwrap_or_default();
                // The bridge's event carries the name in `changes`; the peer publishes the webhook body.
                let name = v["changes"]["name"].as_str().or_else(|| v["Name"].as_str()).unwrap_or_default();
                let mut parts = name.split(' ');
                if let (Some(phase), Some(id), Some(sent)) = (parts.next(), parts.next(), parts.next()) {
                    if let (Ok(id), Ok(sent)) = (id.parse(), sent.parse::<u64>()) {
                        s.lock().unwrap().push((phase.to_owned(), id, now.saturating_sub(sent)));
                    }
                }
            }
        }
    });
    Watcher { seen, stop, thread }
}

impl Watcher {
    /// Waits until every id in `ok` of `phase` was seen (at most 60 s); returns (lost, e2e histogram).
    fn settle(&self, phase: &str, ok: &[u64]) -> (u64, Histogram<u64>) {
        let want: HashSet<u64> = ok.iter().copied().collect();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (got, h) = {
                let seen = self.seen.lock().unwrap();
                let mut h = hist();
                let mut got = HashSet::new();
                for (p, id, ns) in seen.iter().filter(|(p, _, _)| p == phase) {
                    let _ = p;
                    if got.insert(*id) {
                        h.saturating_record((ns / 1000).max(1));
                    }
                }
                (got, h)
            };
            let lost = want.difference(&got).count() as u64;
            if lost == 0 || Instant::now() > deadline {
                return (lost, h);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
    }
}

/// Records on `topic` (sum of high watermarks), waiting up to 60 s for at least `ok` of them.
fn topic_total(kafka: &str, topic: &str, ok: u64) -> (u64, u64) {
    let consumer: BaseConsumer = ClientConfig::new().set("bootstrap.servers", kafka).create().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).unwrap();
        let total: i64 = md.topics()[0]
            .partitions()
            .iter()
            .map(|p| consumer.fetch_watermarks(topic, p.id(), Duration::from_secs(10)).map_or(0, |w| w.1))
            .sum();
        if total as u64 >= ok || Instant::now() > deadline {
            return (total as u64, ok);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

// ---------------------------------------------------------------------------------------------------

fn ms(h: &Option<Histogram<u64>>, q: f64) -> String {
    h.as_ref()
        .filter(|h| !h.is_empty())
        .map_or("–".into(), |h| format!("{:.2}", h.value_at_quantile(q) as f64 / 1000.0))
}

/// "fsync p50 ≤ …, p99 ≤ …, … events per commit" from a /metrics scrape (bucket upper bounds).
fn spool_summary(metrics: &str) -> Option<String> {
    let value = |name: &str| {
        metrics.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok())
    };
    let buckets: Vec<(f64, f64)> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix("bridge_spool_fsync_seconds_bucket{le=\""))
        .filter_map(|l| {
            let (le, rest) = l.split_once("\"} ")?;
            Some((le.parse::<f64>().unwrap_or(f64::INFINITY), rest.trim().parse::<f64>().ok()?))
        })
        .collect();
    // None without a spool (BRIDGE_DELIVERY=sync commits nothing locally).
    let commits = value("bridge_spool_commit_events_count").filter(|c| *c > 0.0)?;
    let events = value("bridge_spool_commit_events_sum")?;
    let mut line = format!("{:.1} events per group commit ({commits:.0} commits)", events / commits.max(1.0));
    let total = buckets.last().map_or(0.0, |b| b.1);
    if total > 0.0 {
        let q = |q: f64| buckets.iter().find(|b| b.1 >= q * total).map_or(f64::INFINITY, |b| b.0 * 1000.0);
        line.push_str(&format!("; {total:.0} fsyncs, p50 ≤ {} ms, p99 ≤ {} ms", q(0.5), q(0.99)));
    }
    Some(line)
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_default();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .map(|l| l.split_whitespace().nth(1).unwrap_or("0").parse::<f64>().unwrap_or(0.0) / 1048576.0)
        })
        .unwrap_or(0.0);
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cores} cores ({cpu}), {mem:.0} GiB, Linux {}", kernel.trim())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--ceiling-server") {
        run_ceiling(args[i + 1].parse().unwrap());
        return;
    }
    let Ok(kafka) = std::env::var("BENCH_KAFKA") else {
        eprintln!("load: set BENCH_KAFKA (scripts/bench does); skipping");
        return;
    };
    let seconds: u64 = env_or("BENCH_SECONDS", "10").parse().unwrap();
    let rates: Vec<u64> =
        env_or("BENCH_RATES", "2000,10000,30000").split(',').map(|r| r.trim().parse().unwrap()).collect();
    let mut targets: Vec<String> =
        env_or("BENCH_TARGETS", "ceiling,always,always-eos,interval,never,sync,peer-sync,peer-spool")
            .split(',')
            .map(str::to_owned)
            .collect();
    let mut skipped = Vec::new();
    if std::env::var_os("BENCH_PEER").is_none() {
        skipped.extend(targets.iter().filter(|t| t.starts_with("peer-")).cloned());
        targets.retain(|t| !t.starts_with("peer-"));
    }
    let bridge_targets = targets.iter().any(|t| t != "ceiling" && !t.starts_with("peer-"));
    let (bridge, bridge_version) = match bridge_binary() {
        Ok(found) => found,
        Err(why) if bridge_targets => {
            eprintln!("load: {why}");
            std::process::exit(2);
        }
        Err(_) => (std::path::PathBuf::new(), String::new()),
    };
    let out = std::path::PathBuf::from(env_or("BENCH_OUT", "bench/results"));
    std::fs::create_dir_all(&out).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();

    let mut rows = Vec::new(); // (target, phase, result, rss)
    let mut notes = Vec::new(); // spool commit statistics per bridge target
    let mut generator = None; // wrk's closed-loop rate against the ceiling, when wrk is installed
    for name in &targets {
        eprintln!("load: {name}");
        let target = start(name, &kafka, &bridge);
        let pool = Pool::new(target.port);
        let client = reqwest::Client::new();
        // Ready, and (for the bridge) the topic exists, with a short warm-up.
        let warm = rt.block_on(async {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if pool.send("warmup", 0, Instant::now(), now_ns()).await.is_some() {
                    break;
                }
                assert!(Instant::now() < deadline, "{name} did not come up");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            closed_loop(&pool, WARM_UP_SECS, "warmup").await
        });
        let watcher = target.topic.as_ref().map(|t| watch(&kafka, t));
        // Every webhook answered OK, warm-up included, for the whole-topic check at the end.
        let mut ok_total = 1 + warm.0.len() as u64;

        let mut phases: Vec<(String, Option<u64>)> = vec![("closed".into(), None)];
        phases.extend(rates.iter().map(|r| (format!("open{r}"), Some(*r))));
        for (phase, rate) in phases {
            let cpu0 = target.cpu_seconds();
            let started = Instant::now();
            let (ok, ack, failed) = rt.block_on(async {
                match rate {
                    None => closed_loop(&pool, seconds, &phase).await,
                    Some(r) => open_loop(&pool, r, seconds, &phase).await,
                }
            });
            let elapsed = started.elapsed().as_secs_f64();
            let (lost, e2e) = match &watcher {
                Some(w) => {
                    let (lost, h) = w.settle(&phase, &ok);
                    (Some(lost), Some(h))
                }
                None => (None, None),
            };
            ok_total += ok.len() as u64;
            let cpu = target.cpu_seconds() - cpu0;
            let r = PhaseResult {
                offered: rate,
                achieved_per_sec: ok.len() as f64 / elapsed.max(0.001),
                ok: ok.len() as u64,
                failed,
                ack: Some(ack),
                e2e,
                lost,
                cpu_per_10k: if ok.is_empty() { 0.0 } else { cpu / ok.len() as f64 * 10_000.0 },
            };
            eprintln!(
                "load: {name} {phase}: {:.0}/s ok={} failed={} ack p99={} ms e2e p99={} ms lost={:?}",
                r.achieved_per_sec,
                r.ok,
                r.failed,
                ms(&r.ack, 0.99),
                ms(&r.e2e, 0.99),
                r.lost
            );
            rows.push((name.clone(), phase, r));
        }
        if name == "ceiling" {
            if let Some(rate) = wrk_rate(target.port, seconds) {
                generator = Some(rate);
            }
        }
        if let Some(w) = watcher {
            w.stop();
        }
        if let Some(topic) = &target.topic {
            let (records, ok) = topic_total(&kafka, topic, ok_total);
            notes.push(format!(
                "- {name}: {records} records on the topic for {ok} webhooks answered OK{}",
                if records >= ok { "" } else { " — MISSING RECORDS" }
            ));
        }
        if target.admin_port != 0 {
            let text = rt.block_on(async {
                client
                    .get(format!("http://127.0.0.1:{}/metrics", target.admin_port))
                    .send()
                    .await
                    .ok()?
                    .text()
                    .await
                    .ok()
            });
            if let Some(line) = text.as_deref().and_then(spool_summary) {
                notes.push(format!("- {name}: {line}"));
            }
        }
        let rss = target.peak_rss_mib();
        for row in rows.iter_mut().filter(|r| &r.0 == name) {
            row.1 = format!("{}|{rss:.1}", row.1);
        }
        target.stop();
    }

    // The table.
    let ceiling =
        rows.iter().find(|r| r.0 == "ceiling" && r.1.starts_with("closed")).map(|r| r.2.achieved_per_sec);
    let mut md = format!("# Load benchmark\n\nMachine: {}. {seconds} s per phase; load generator, bridge and Kafka share the machine.\n\n", machine());
    if bridge_targets {
        md.push_str(&format!(
            "Bridge: `{bridge_version}`, a plain `cargo build --release`: the binary a user gets, without \
             the failpoints of the test and bench builds.\n\n"
        ));
    }
    md.push_str("| target | load | OK/s | failed | ack p50 ms | ack p99 ms | ack p99.9 ms | e2e p50 ms | e2e p99 ms | lost | CPU s / 10k | peak RSS MiB |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    let mut csv = String::from("target,offered,achieved,p50_ms,p99_ms,p999_ms\n");
    for (name, phase, r) in &rows {
        let (phase, rss) = phase.split_once('|').unwrap_or((phase, ""));
        let load = r.offered.map_or("closed loop".to_owned(), |o| format!("{o}/s offered"));
        md.push_str(&format!(
            "| {name} | {load} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {:.2} | {rss} |\n",
            r.achieved_per_sec,
            r.failed,
            ms(&r.ack, 0.5),
            ms(&r.ack, 0.99),
            ms(&r.ack, 0.999),
            ms(&r.e2e, 0.5),
            ms(&r.e2e, 0.99),
            r.lost.map_or("–".into(), |l| l.to_string()),
            r.cpu_per_10k
        ));
        if let Some(o) = r.offered {
            csv.push_str(&format!(
                "{name},{o},{:.0},{},{},{}\n",
                r.achieved_per_sec,
                ms(&r.ack, 0.5),
                ms(&r.ack, 0.99),
                ms(&r.ack, 0.999)
            ));
        }
        let _ = phase;
    }
    if let Some(c) = ceiling {
        md.push_str("\nClosed-loop throughput relative to the ceiling (same run):\n\n");
        for (name, phase, r) in rows.iter().filter(|r| r.0 != "ceiling" && r.1.starts_with("closed")) {
            let _ = phase;
            md.push_str(&format!(
                "- {name}: {:.0}/s = {:.0} % of the ceiling's {c:.0}/s\n",
                r.achieved_per_sec,
                100.0 * r.achieved_per_sec / c
            ));
        }
    }
    let closed = |target: &str| {
        rows.iter().find(|r| r.0 == target && r.1.starts_with("closed")).map(|r| r.2.achieved_per_sec)
    };
    // Exactly once against at least once, same run, same fsync mode.
    let row = |target: &str, phase: &str| {
        rows.iter().find(|r| r.0 == target && r.1.starts_with(phase)).map(|r| &r.2)
    };
    let mut eos = Vec::new();
    let mut phase_names = vec!["closed".to_owned()];
    phase_names.extend(rates.iter().map(|r| format!("open{r}|")));
    for phase in &phase_names {
        if let (Some(a), Some(e)) = (row("always", phase), row("always-eos", phase)) {
            let load = a.offered.map_or("closed loop".to_owned(), |o| format!("{o}/s offered"));
            eos.push(format!(
                "| {load} | {:.0} | {:.0} | {:.0} % | {:.2} | {:.2} | {} | {} | {} | {} |",
                a.achieved_per_sec,
                e.achieved_per_sec,
                100.0 * (e.achieved_per_sec / a.achieved_per_sec.max(1.0) - 1.0),
                a.cpu_per_10k,
                e.cpu_per_10k,
                ms(&a.ack, 0.99),
                ms(&e.ack, 0.99),
                ms(&a.e2e, 0.99),
                ms(&e.e2e, 0.99),
            ));
        }
    }
    if !eos.is_empty() {
        md.push_str("
Exactly once (`always-eos`) against at least once (`always`), same run:

| load | OK/s | OK/s EOS | change | CPU s/10k | CPU s/10k EOS | ack p99 ms | ack p99 ms EOS | e2e p99 ms | e2e p99 ms EOS |
|---|---|---|---|---|---|---|---|---|---|
");
        md.push_str(&eos.join("\n"));
        md.push('\n');
    }
    let pairs = [("sync", "peer-sync"), ("never", "peer-spool"), ("always", "peer-spool")];
    let against: Vec<String> = pairs
        .iter()
        .filter_map(|(bridge, peer)| Some((bridge, peer, closed(bridge)?, closed(peer)?)))
        .map(|(bridge, peer, b, p)| {
            format!("- {bridge}: {:.2}× {peer} ({b:.0}/s against {p:.0}/s)", b / p.max(1.0))
        })
        .collect();
    if !against.is_empty() {
        md.push_str("\nClosed-loop throughput relative to the peer (Benthos 4.27, same run):\n\n");
        md.push_str(&against.join("\n"));
        md.push('\n');
    }
    match (generator, ceiling) {
        (Some(w), Some(c)) => md.push_str(&format!(
            "\nLoad generator check: against the ceiling, this generator reached {c:.0}/s and `wrk` (1 thread, \
             {CONNECTIONS} connections, {seconds} s) {w:.0}/s: the generator drives {:.0} % of what wrk does.\n",
            100.0 * c / w.max(1.0)
        )),
        _ => md.push_str("\nLoad generator check not run (`wrk` is not installed).\n"),
    }
    if !skipped.is_empty() {
        md.push_str(&format!(
            "\nNot run: {} (BENCH_PEER unset: scripts/bench builds the peer when `go` is installed).\n",
            skipped.join(", ")
        ));
    }
    if !notes.is_empty() {
        md.push_str(
            "\nEvery webhook answered OK on the topic (bridge and peer), and the spool's group commits (from /metrics):\n\n",
        );
        md.push_str(&notes.join("\n"));
        md.push('\n');
    }
    println!("{md}");
    std::fs::write(out.join("latest.md"), &md).unwrap();
    std::fs::write(out.join("latest.csv"), &csv).unwrap();
}
