//! `tim-kafka-bridge snapshot`: every group of each app, read from Tencent's REST API and published as a
//! `snapshot` event, then a `snapshot_completed` mark on every partition.
//!
//! Why: callbacks are at most once (Tencent retries an after-callback only when told to), carry no
//! member count, say nothing when custom fields change, and know nothing of groups older than the
//! bridge. A snapshot is the truth a consumer reconciles with (docs/directory.md, "Snapshots"), as a
//! change-data-capture system starts from a snapshot and then follows the stream.
//!
//! How: for one app, the group list is read page by page (1 call/s, Tencent's limit), then the
//! profiles 50 at a time, several calls in flight at the API's rate (a limiter, see
//! [`crate::tencent::client`]); each profile becomes an event sent at once through a producer of its
//! own (idempotent, `acks=all`, the bridge's partitioner and `BRIDGE_RDKAFKA_*`), so it runs beside a
//! serving bridge without touching its spool or ports. Only when Kafka has acknowledged every group's
//! event does it send the marks: a consumer that reads a mark has read the snapshot before it on that
//! partition. Any error ends the run without marks (exit 1): an incomplete snapshot never lets a
//! consumer take a missing group as destroyed.

use std::collections::HashSet;
use std::future::Future;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::FutureExt;

use crate::configuration::Settings;
use crate::domain::{
    Changes, CustomFields, EventHead, EventTime, GroupId, Lifecycle, LifecycleEvent, SdkAppId, Snapshot,
    SnapshotCompleted,
};
use crate::metrics::Metrics;
use crate::publisher::{Confirmations, Pending, ProducerConfigError, PublishError, Publisher};
use crate::tencent::{ClientSettings, GroupInfo, Lookup, RestClient, RestError};

/// A group not listed is taken as destroyed only if nothing about it happened in this long before the
/// listing began: a listing may lag behind a creation that just happened.
pub const SWEEP_MARGIN: Duration = Duration::from_secs(60);
/// How long Kafka may take to acknowledge one event before the run fails.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(120);
/// `get_group_info` calls in flight at once, at least: the limiter sets the rate, this only hides the
/// round trip. A second's worth of calls at the configured rate (when more) keeps a distant data
/// centre's round trip from capping the rate.
const MIN_INFO_CALLS_IN_FLIGHT: usize = 8;
/// Events handed to librdkafka and not yet acknowledged, at most.
const MAX_UNACKNOWLEDGED: usize = 20_000;
/// How often a run whose output is not a terminal logs its progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// Why a snapshot did not complete.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("app {app}: {source}")]
    Rest {
        app: String,
        #[source]
        source: RestError,
    },
    #[error("app {app}: the group list did not end (cursor {next} came back a second time)")]
    ListLoops { app: String, next: u64 },
    #[error("app {app}: Tencent returned a group id that is not one: {id:?}")]
    BadGroup { app: String, id: String },
    #[error("the REST client could not be built: {0}")]
    Client(#[from] reqwest::Error),
    #[error(transparent)]
    Producer(#[from] ProducerConfigError),
    #[error("Kafka did not take a snapshot event: {0}")]
    Publish(#[from] PublishError),
    #[error("Kafka: could not read topic {topic}'s partitions: {source}")]
    Metadata {
        topic: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    #[error("stopped by a signal before the snapshot was complete (no snapshot_completed was published)")]
    Interrupted,
}

/// What a completed snapshot of one app did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppSummary {
    pub sdk_app_id: String,
    pub snapshot_id: String,
    /// Ids the list gave (each once).
    pub listed: u64,
    /// `snapshot` events in Kafka.
    pub published: u64,
    /// Listed, then gone when its profile was read (10010).
    pub gone: u64,
    /// `snapshot_completed` marks (one per partition).
    pub marks: u64,
}

/// Snapshots every app in `settings` in turn, or stops at the first failure or at `interrupt`.
pub async fn run(
    settings: Settings,
    interrupt: impl Future<Output = ()>,
) -> Result<Vec<AppSummary>, SnapshotError> {
    let publisher = Publisher::new(
        &settings.kafka,
        Some(DELIVERY_TIMEOUT),
        Duration::from_millis(5),
        Arc::new(Metrics::new()),
        Confirmations::PerRecord,
    )?;
    if let Ok(true) = publisher.refresh_limits(Duration::from_secs(3)).await {
        publisher.rebuild()?;
    }
    let publisher = Arc::new(publisher);
    let work = async {
        let mut done = Vec::new();
        for (app, key) in &settings.tencent.secret_keys {
            let t = &settings.tencent;
            let client = RestClient::new(ClientSettings {
                base_url: t.api_url.clone(),
                sdk_app_id: app.as_str().parse().expect("an SdkAppId is digits"),
                admin: t.admin.clone(),
                key: key.clone(),
                timeout: t.timeout,
                list_rate: std::num::NonZeroU32::MIN,
                info_rate: t.info_rate,
                max_attempts: t.max_attempts,
            })?;
            done.push(snapshot_app(&client, &publisher, &settings, app).await?);
        }
        Ok(done)
    };
    tokio::pin!(interrupt);
    let result = tokio::select! {
        r = work => r,
        () = &mut interrupt => Err(SnapshotError::Interrupted),
    };
    // Whatever librdkafka still holds is either acknowledged already or part of a failed run.
    let flush = publisher.clone();
    let _ = tokio::task::spawn_blocking(move || flush.flush(Duration::from_secs(5))).await;
    result
}

async fn snapshot_app(
    client: &RestClient,
    publisher: &Arc<Publisher>,
    settings: &Settings,
    app: &SdkAppId,
) -> Result<AppSummary, SnapshotError> {
    let started_at_ms = crate::now_ms();
    let snapshot_id = format!("{}-{}-{:08x}", app.as_str(), started_at_ms, rand32());
    let rest = |source| SnapshotError::Rest { app: app.as_str().to_owned(), source };
    let progress = Arc::new(Progress::default());
    let reporter = Reporter::start(progress.clone(), app.as_str());
    tracing::info!(app = app.as_str(), %snapshot_id, topic = %settings.kafka.topic, "snapshot started");

    // The list, page by page, each id once.
    let mut ids = Vec::new();
    let mut seen = HashSet::new();
    let mut cursors = HashSet::new();
    let mut next = 0;
    loop {
        let page = client.list_groups(next, settings.tencent.page_size).await.map_err(rest)?;
        progress.total.store(page.total, Ordering::Relaxed);
        ids.extend(page.ids.into_iter().filter(|id| seen.insert(id.clone())));
        progress.listed.store(ids.len() as u64, Ordering::Relaxed);
        if page.next == 0 {
            break;
        }
        if !cursors.insert(page.next) {
            return Err(SnapshotError::ListLoops { app: app.as_str().to_owned(), next: page.next });
        }
        next = page.next;
    }
    drop(seen);

    // The profiles, as many calls in flight as the limiter lets through; each event sent at once.
    let custom = &settings.tencent.custom_fields;
    let mut calls = futures_util::stream::iter(ids.chunks(crate::tencent::client::MAX_IDS_PER_INFO_CALL))
        .map(|chunk| client.group_info(chunk, custom))
        .buffered(MIN_INFO_CALLS_IN_FLIGHT.max(settings.tencent.info_rate.get() as usize));
    let mut deliveries: FuturesUnordered<Pending> = FuturesUnordered::new();
    let (mut published, mut gone) = (0u64, 0u64);
    while let Some(batch) = calls.next().await {
        let batch = batch.map_err(rest)?;
        let received_at_ms = crate::now_ms();
        for lookup in batch.groups {
            match lookup {
                Lookup::Gone(_) => gone += 1,
                Lookup::Found(info) => {
                    let event = event(app, &snapshot_id, batch.sent_at_ms, received_at_ms, *info, custom)?;
                    deliveries.push(publisher.send(&event.to_message())?);
                }
            }
            progress.fetched.fetch_add(1, Ordering::Relaxed);
        }
        progress.gone.store(gone, Ordering::Relaxed);
        while let Some(Some(delivered)) = deliveries.next().now_or_never() {
            delivered?;
            published += 1;
        }
        while deliveries.len() > MAX_UNACKNOWLEDGED {
            deliveries.next().await.expect("not empty")?;
            published += 1;
        }
        progress.published.store(published, Ordering::Relaxed);
    }
    while let Some(delivered) = deliveries.next().await {
        delivered?;
        published += 1;
        progress.published.store(published, Ordering::Relaxed);
    }

    // Every event is in Kafka: the marks, one per partition.
    let partitions = {
        let p = publisher.clone();
        let topic = settings.kafka.topic.clone();
        tokio::task::spawn_blocking(move || p.partition_count(Duration::from_secs(10)))
            .await
            .expect("a metadata request does not panic")
            .map_err(|source| SnapshotError::Metadata { topic, source })?
    };
    let completed = EventTime::from_millis(crate::now_ms()).expect("the clock is after 1970");
    let sweep_before_ms = started_at_ms - SWEEP_MARGIN.as_millis() as i64;
    let marks: Vec<Pending> = (0..partitions)
        .map(|p| {
            let mark = SnapshotCompleted::new(
                app.clone(),
                snapshot_id.clone(),
                started_at_ms,
                sweep_before_ms,
                published,
                p,
                partitions,
                completed,
            );
            publisher.send_to_partition(&mark.to_message(), p)
        })
        .collect::<Result<_, _>>()?;
    for mark in marks {
        mark.await?;
    }
    reporter.finish(&progress);
    let summary = AppSummary {
        sdk_app_id: app.as_str().to_owned(),
        snapshot_id,
        listed: ids.len() as u64,
        published,
        gone,
        marks: partitions as u64,
    };
    tracing::info!(
        app = app.as_str(),
        snapshot_id = %summary.snapshot_id,
        listed = summary.listed,
        published = summary.published,
        gone = summary.gone,
        partitions,
        "snapshot complete"
    );
    Ok(summary)
}

/// The `snapshot` event of one group, read by a request sent at `read_at_ms`.
fn event(
    app: &SdkAppId,
    snapshot_id: &str,
    read_at_ms: i64,
    received_at_ms: i64,
    info: GroupInfo,
    custom_keys: &[String],
) -> Result<LifecycleEvent, SnapshotError> {
    let group_id = GroupId::parse(info.group_id.clone())
        .map_err(|_| SnapshotError::BadGroup { app: app.as_str().to_owned(), id: info.group_id.clone() })?;
    let mut seen = HashSet::new();
    let custom_fields = CustomFields::from_pairs(
        info.app_defined_data
            .into_iter()
            .filter(|kv| custom_keys.contains(&kv.key) && seen.insert(kv.key.clone()))
            .map(|kv| (kv.key, kv.value)),
    )
    .expect("each key kept once");
    let head = EventHead {
        sdk_app_id: app.clone(),
        group_id,
        group_type: info.group_type,
        operator_account: None,
        event_time: EventTime::from_millis(read_at_ms).expect("the clock is after 1970"),
        received_at_ms,
        client_ip: None,
        opt_platform: None,
    };
    let snapshot = Snapshot {
        snapshot_id: snapshot_id.to_owned(),
        read_at_ms,
        owner_account: info.owner_account,
        profile: Changes {
            name: info.name,
            introduction: info.introduction,
            notification: info.notification,
            face_url: info.face_url,
        },
        custom_fields,
        custom_field_keys: custom_keys.to_vec(),
        member_count: info.member_num,
        max_member_count: info.max_member_num,
        created_at_s: info.create_time,
        last_info_time_s: info.last_info_time,
        info_seq: info.info_seq,
    };
    Ok(LifecycleEvent::new(head, Lifecycle::Snapshot(snapshot)))
}

/// A random 32-bit number (a snapshot id's suffix), from the standard library's random hasher keys.
fn rand32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_i64(crate::now_ms());
    h.finish() as u32
}

/// Counters of one app's run, read by the [`Reporter`].
#[derive(Default)]
struct Progress {
    total: AtomicU64,
    listed: AtomicU64,
    fetched: AtomicU64,
    published: AtomicU64,
    gone: AtomicU64,
}

/// Shows progress: a bar on a terminal (stderr), else a log line every [`PROGRESS_EVERY`].
struct Reporter {
    task: tokio::task::JoinHandle<()>,
    bar: Option<indicatif::ProgressBar>,
}

impl Reporter {
    fn start(progress: Arc<Progress>, app: &str) -> Self {
        let started = Instant::now();
        let app = app.to_owned();
        if std::io::stderr().is_terminal() {
            let bar = indicatif::ProgressBar::new(0);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{prefix} {msg} [{bar:30}] {pos}/{len} groups read ({per_sec}, ETA {eta})",
                )
                .expect("a valid template")
                .progress_chars("=> "),
            );
            bar.set_prefix(format!("app {app}"));
            let shown = bar.clone();
            let task = tokio::spawn(async move {
                loop {
                    let listed = progress.listed.load(Ordering::Relaxed);
                    shown.set_length(progress.total.load(Ordering::Relaxed).max(listed));
                    shown.set_position(progress.fetched.load(Ordering::Relaxed));
                    shown.set_message(format!(
                        "listed {listed}, published {}, gone {}",
                        progress.published.load(Ordering::Relaxed),
                        progress.gone.load(Ordering::Relaxed)
                    ));
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            });
            return Self { task, bar: Some(bar) };
        }
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(PROGRESS_EVERY).await;
                let total = progress.total.load(Ordering::Relaxed);
                let fetched = progress.fetched.load(Ordering::Relaxed);
                let elapsed = started.elapsed().as_secs_f64();
                let rate = fetched as f64 / elapsed.max(0.001);
                let eta_secs = match rate > 0.0 {
                    true => (total.saturating_sub(fetched) as f64 / rate).round() as u64,
                    false => 0,
                };
                tracing::info!(
                    app = %app,
                    total,
                    listed = progress.listed.load(Ordering::Relaxed),
                    fetched,
                    published = progress.published.load(Ordering::Relaxed),
                    gone = progress.gone.load(Ordering::Relaxed),
                    rate_per_sec = rate.round() as u64,
                    eta_secs,
                    "snapshot progress"
                );
            }
        });
        Self { task, bar: None }
    }

    fn finish(self, progress: &Progress) {
        self.task.abort();
        if let Some(bar) = &self.bar {
            bar.set_position(progress.fetched.load(Ordering::Relaxed));
            bar.finish();
        }
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        self.task.abort();
    }
}
