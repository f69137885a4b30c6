//! Builds the bridge from [`Settings`] and runs it until told to stop.

use std::future::Future;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::{Server, Service};
use actix_web::{web, App, HttpServer};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::configuration::{DeliveryMode, Settings};
use crate::exactly_once::PositionError;
use crate::forwarder::{Eos, Forwarder, ForwarderError, Progress, SETTLE_TIME};
use crate::health::Health;
use crate::metrics::Metrics;
use crate::pipeline::Pipeline;
use crate::publisher::{Confirmations, ProducerConfigError, Publisher, Report};
use crate::routes;
use crate::spool::{Spool, SpoolConfig, SpoolError, SpoolObserver, SpoolThread};
use crate::status::History;

/// Why the bridge could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Producer(#[from] ProducerConfigError),
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error(transparent)]
    Position(#[from] PositionError),
    #[error("{variable}: cannot bind {addr}: {source}")]
    Bind { variable: &'static str, addr: String, source: std::io::Error },
    #[error("HTTP server failed: {0}")]
    Server(std::io::Error),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("BRIDGE_RELAY_URL: {0}")]
    Relay(#[from] crate::relay::RelaySetupError),
    #[error("forwarding to Kafka stopped: {0}")]
    Forwarder(#[from] ForwarderError),
    #[error("forwarding to Kafka stopped unexpectedly: {0}")]
    ForwarderPanicked(String),
    #[error("Kafka took no event for {} s; {pending} events remain in the spool", .stalled.as_secs())]
    DrainStalled { stalled: Duration, pending: u64 },
    #[error("interrupted; {pending} events remain in the spool")]
    DrainInterrupted { pending: u64 },
    #[error("quarantined event {file} could not be published ({problem}); it stays in the quarantine")]
    QuarantineReplay { file: String, problem: String },
}

/// Limits of the HTTP server against slow, idle and numerous clients (docs/security.md).
pub mod limits {
    use std::time::Duration;

    /// A client must send its request head within this time of connecting (or of its previous request).
    pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
    /// The whole body must arrive within this time once the head has; slower clients get 408.
    pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);
    /// An idle keep-alive connection is closed after this; long enough for Tencent's persistent
    /// connections not to race a close.
    pub const KEEP_ALIVE: Duration = Duration::from_secs(75);
    /// A TLS handshake must finish within this time.
    pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
    /// Open connections per HTTP worker (one worker per core); beyond it, new connections wait in the
    /// listen backlog.
    pub const MAX_CONNECTIONS_PER_WORKER: usize = 10_000;
}

/// `linger.ms` in spool mode: the answer does not wait for Kafka, so a few ms of batching cost nothing.
/// In sync mode the answer waits for it, so the producer does not linger.
const SPOOL_LINGER: Duration = Duration::from_millis(5);

/// The spool side of a running bridge (absent with `BRIDGE_DELIVERY=sync`).
struct Spooling {
    spool: Spool,
    thread: SpoolThread,
    forwarder: tokio::task::JoinHandle<Result<(), ForwarderError>>,
    /// Tells the forwarder to wind down by a deadline.
    stop: watch::Sender<Option<tokio::time::Instant>>,
    progress: watch::Receiver<Progress>,
}

/// Clears a flag when dropped: the task holding it has ended, normally or by a panic.
struct ClearOnDrop(Arc<std::sync::atomic::AtomicBool>);

impl Drop for ClearOnDrop {
    fn drop(&mut self) {
        self.0.store(false, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A built bridge: listening, forwarding, not yet serving until [`run_until_stopped`](Self::run_until_stopped).
pub struct Application {
    port: u16,
    server: Server,
    /// The admin listener's port and server: metrics, health and the status page.
    admin_port: u16,
    admin: Server,
    publisher: Arc<Publisher>,
    spooling: Option<Spooling>,
    /// The tasks that only serve the others, stopped together (and aborted if the application is
    /// dropped unstarted): the Kafka metadata probe behind readiness, the watch that keeps the topic's
    /// limits current, the sampler behind the status page. (The forwarder is not one of them: it is
    /// told to stop with a deadline, after the webhook server has finished its requests.)
    background: JoinSet<()>,
    grace: Duration,
}

impl Application {
    /// Opens the spool (recovering what an earlier run left), starts forwarding it, creates the
    /// producer and binds the listener (port 0 picks a free port; see [`port`](Self::port)).
    pub async fn build(settings: Settings) -> Result<Self, StartupError> {
        // What can fail without side effects first: the certificate and the ports.
        let tls = settings.tls.as_ref().map(crate::tls::server_config).transpose()?;
        let relay = settings
            .relay
            .as_ref()
            .map(|r| crate::relay::Relay::new(r.url.clone(), r.timeout))
            .transpose()?;
        let bind = |variable, addr: std::net::SocketAddr| {
            let listener = TcpListener::bind(addr).map_err(|source| StartupError::Bind {
                variable,
                addr: addr.to_string(),
                source,
            })?;
            let port = listener.local_addr().map_err(StartupError::Server)?.port();
            Ok::<_, StartupError>((listener, port))
        };
        let (listener, port) = bind("BRIDGE_LISTEN", settings.listen)?;
        let (admin_listener, admin_port) = bind("BRIDGE_ADMIN_LISTEN", settings.admin_listen)?;
        let metrics = Arc::new(Metrics::new());
        // The spool first: in exactly-once mode its id names the producer's transactions.
        let opened = match settings.delivery {
            DeliveryMode::Spool => Some(open_spool(&settings, Some(metrics.clone())).await?),
            DeliveryMode::Sync { .. } => None,
        };
        let spool_id = opened.as_ref().map(|(spool, _)| spool.id().to_owned());
        let (publisher, reports) =
            create_publisher(&settings, settings.delivery, spool_id.as_deref(), metrics.clone()).await?;

        let forwarder_running = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (pipeline, spooling) =
            start_spooling(&settings, opened, &publisher, reports, &forwarder_running).await?;

        let health = Arc::new(Health::new(
            metrics.clone(),
            spooling.as_ref().map(|s| s.spool.clone()),
            spooling.as_ref().map(|s| (s.progress.clone(), forwarder_running.clone())),
            settings.ready_kafka_window,
            settings.ready_spool_high_water,
        ));
        let mut background = JoinSet::new();
        background.spawn(crate::probe::probe_kafka(publisher.clone(), health.clone()));
        background.spawn(publisher.clone().watch_limits());
        let history = Arc::new(History::default());
        background.spawn(crate::status::run_sampler(
            metrics.clone(),
            {
                let health = health.clone();
                move || health.refresh_gauges()
            },
            history.clone(),
        ));
        let health = web::Data::from(health);
        let history = web::Data::from(history);
        let state = web::Data::new(routes::webhook_state(
            &settings,
            limits::BODY_TIMEOUT,
            pipeline,
            relay,
            metrics.clone(),
        ));
        let server = webhook_server(&settings, listener, tls, state, metrics)?;
        let admin = admin_server(admin_listener, health, history)?;

        tracing::info!(
            address = %settings.listen.ip(),
            port,
            admin_address = %settings.admin_listen.ip(),
            admin_port,
            webhook_path = %settings.webhook_path,
            topic = %settings.kafka.topic,
            brokers = %settings.kafka.brokers,
            delivery = %settings.delivery,
            fsync = %settings.spool_fsync,
            sign_check = settings.callback_token.is_some(),
            commands = %settings.commands.iter().map(|c| c.name()).collect::<Vec<_>>().join(","),
            forward_url = settings.relay.as_ref().map(|r| r.url.as_str()),
            https = settings.tls.is_some(),
            "tim-kafka-bridge listening"
        );
        if settings.callback_token.is_none() {
            tracing::warn!(
                "BRIDGE_CALLBACK_TOKEN is not set: webhooks are not authenticated (Sign is not checked)"
            );
        }
        Ok(Self {
            port,
            server,
            admin_port,
            admin,
            publisher,
            spooling,
            background,
            grace: settings.shutdown_grace,
        })
    }

    /// The port the webhook listener listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The port the admin listener listens on.
    pub fn admin_port(&self) -> u16 {
        self.admin_port
    }

    /// Serves until `shutdown` resolves, then stops in order: no new connections, requests in flight
    /// finish, the spool keeps being forwarded for up to the grace period, the producer is flushed,
    /// the spool is synced. What is not in Kafka by then stays in the spool for the next start. The
    /// admin listener keeps answering until the end, so the drain can be watched; if either server
    /// fails, the other is stopped too.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()>) -> Result<(), StartupError> {
        let handle = self.server.handle();
        let admin_handle = self.admin.handle();
        let mut server = tokio::spawn(self.server);
        let mut admin = tokio::spawn(self.admin);
        let mut spooling = self.spooling;
        let mut background = self.background;
        // A forwarder that gives up (the producer keeps failing) stops the bridge with an error.
        let forwarder_failed = async {
            match spooling.as_mut() {
                Some(s) => match (&mut s.forwarder).await {
                    Ok(Err(e)) => e,
                    // It ended without being asked, or panicked: health says so; keep serving.
                    _ => std::future::pending().await,
                },
                None => std::future::pending().await,
            }
        };
        let failure = tokio::select! {
            r = &mut server => Err(r),
            r = &mut admin => Err(r),
            () = shutdown => Ok(None),
            e = forwarder_failed => Ok(Some(e)),
        };
        let failure = match failure {
            Ok(f) => f,
            Err(r) => {
                // One server failed: stop the other too.
                handle.stop(false).await;
                admin_handle.stop(false).await;
                background.shutdown().await;
                return r.expect("server task does not panic").map_err(StartupError::Server);
            }
        };
        let deadline = tokio::time::Instant::now() + self.grace;
        match &failure {
            None => tracing::info!(
                grace_secs = self.grace.as_secs(),
                "shutting down: finishing requests, then forwarding the spool"
            ),
            Some(e) => tracing::error!(error = %e, "forwarding failed for good; shutting down"),
        }
        handle.stop(true).await;
        let _ = server.await;
        background.shutdown().await;

        if let Some(s) = spooling {
            if failure.is_none() {
                // Forward what is committed, then drain what is in flight and record the final
                // position, all within the grace period.
                let _ = s.stop.send(Some(deadline));
                // (A forwarder that already ended, and whose handle may have been polled to the end
                // above, is not awaited again.)
                if !s.forwarder.is_finished() {
                    let settled_by =
                        deadline.max(tokio::time::Instant::now()) + SETTLE_TIME + Duration::from_secs(1);
                    let ended = tokio::time::timeout_at(settled_by, s.forwarder).await;
                    if let Ok(Ok(Err(e))) = ended {
                        tracing::error!(error = %e, "forwarding failed while shutting down");
                    }
                }
                let committed = s.spool.committed().borrow().seq;
                let acked = s.progress.borrow().acked_seq;
                if acked >= committed {
                    tracing::info!("spool drained: every accepted event is in Kafka");
                } else {
                    tracing::warn!(
                        pending = s.spool.pending_events(),
                        "grace period over; events not yet in Kafka stay in the spool for the next start"
                    );
                }
            }
            s.spool.close();
            drop(s.spool);
            tokio::task::spawn_blocking(move || s.thread.join()).await.ok();
        }
        let remaining =
            deadline.saturating_duration_since(tokio::time::Instant::now()).max(Duration::from_millis(100));
        let publisher = self.publisher;
        let _ = tokio::task::spawn_blocking(move || publisher.flush(remaining)).await;
        admin_handle.stop(true).await;
        let _ = admin.await;
        match failure {
            None => {
                tracing::info!("stopped");
                Ok(())
            }
            Some(e) => Err(e.into()),
        }
    }
}

/// The spool side, in spool mode: the spool opened (what an earlier run left recovered), the
/// forwarder started on it; and the pipeline the webhook handler hands accepted events to.
async fn start_spooling(
    settings: &Settings,
    opened: Option<(Spool, SpoolThread)>,
    publisher: &Arc<Publisher>,
    reports: Option<tokio::sync::mpsc::UnboundedReceiver<crate::publisher::Report>>,
    forwarder_running: &Arc<std::sync::atomic::AtomicBool>,
) -> Result<(Pipeline, Option<Spooling>), StartupError> {
    Ok(match (settings.delivery, opened) {
        (DeliveryMode::Spool, Some((spool, thread))) => {
            let pending = spool.pending_events();
            if pending > 0 {
                tracing::info!(pending, "spool holds events from an earlier run; publishing them first");
            }
            let reports = reports.expect("spool mode has a report channel");
            let (forwarder, progress) = Forwarder::new(
                spool.clone(),
                publisher.clone(),
                reports,
                settings.kafka_stall,
                crate::domain::InfoChangedEvent::message_from_v1_spool,
            );
            let forwarder = with_transactions(settings, &spool, forwarder);
            let (stop, stop_rx) = watch::channel(None);
            let running = ClearOnDrop(forwarder_running.clone());
            let forwarder = tokio::spawn(async move {
                let _running = running;
                forwarder.run(stop_rx).await
            });
            let pipeline = Pipeline::Spool { spool: spool.clone(), publisher: publisher.clone() };
            (pipeline, Some(Spooling { spool, thread, forwarder, stop, progress }))
        }
        (DeliveryMode::Sync { timeout }, _) => {
            (Pipeline::Sync { publisher: publisher.clone(), timeout }, None)
        }
        (DeliveryMode::Spool, None) => unreachable!("spool mode opens the spool first"),
    })
}

/// The forwarder in exactly-once mode when it is asked for (its transactions open when it runs).
fn with_transactions(settings: &Settings, spool: &Spool, forwarder: Forwarder) -> Forwarder {
    match &settings.exactly_once {
        Some(eos) => forwarder.exactly_once(Eos {
            settings: eos.clone(),
            spool_id: spool.id().to_owned(),
            kafka: settings.kafka.clone(),
        }),
        None => forwarder,
    }
}

/// The webhook listener's server: the webhook route, request metrics, and the limits that keep a
/// flood or idle connections from taking it over.
fn webhook_server(
    settings: &Settings,
    listener: TcpListener,
    tls: Option<rustls::ServerConfig>,
    state: web::Data<routes::WebhookState>,
    metrics: Arc<Metrics>,
) -> Result<Server, StartupError> {
    let path = settings.webhook_path.clone();
    let server = HttpServer::new(move || {
        let metrics = metrics.clone();
        App::new()
            .wrap_fn(move |req, srv| {
                let started = std::time::Instant::now();
                let call = srv.call(req);
                let metrics = metrics.clone();
                async move {
                    let res = call.await?;
                    let route = res.request().match_pattern().unwrap_or_else(|| "unmatched".to_owned());
                    metrics
                        .http_request_duration_seconds
                        .with_label_values(&[&route, res.status().as_str()])
                        .observe(started.elapsed().as_secs_f64());
                    Ok(res)
                }
            })
            .app_data(state.clone())
            .service(
                web::resource(path.as_str())
                    .route(web::post().to(routes::webhook))
                    .default_service(web::to(routes::method_not_allowed)),
            )
            .default_service(web::to(routes::not_found))
    })
    .disable_signals()
    .keep_alive(limits::KEEP_ALIVE)
    .client_request_timeout(limits::HEADER_TIMEOUT)
    .client_disconnect_timeout(Duration::from_secs(1))
    .tls_handshake_timeout(limits::TLS_HANDSHAKE_TIMEOUT)
    .max_connections(limits::MAX_CONNECTIONS_PER_WORKER)
    .shutdown_timeout(settings.shutdown_grace.as_secs().max(1));
    let server = match tls {
        Some(config) => server.listen_rustls_0_23(listener, config),
        None => server.listen(listener),
    }
    .map_err(StartupError::Server)?
    .run();
    Ok(server)
}

/// The admin listener's server: metrics, health and the status page.
fn admin_server(
    listener: TcpListener,
    health: web::Data<Health>,
    history: web::Data<History>,
) -> Result<Server, StartupError> {
    // The admin listener is a server of its own rather than a second listener of the webhook's
    // server routing by local port: its route table cannot leak onto the public port, it stays
    // plain HTTP when the webhook is HTTPS, and its one worker answers a scrape or a liveness probe
    // even while the webhook's workers are saturated by a flood or by idle connections.
    let admin = HttpServer::new(move || {
        App::new()
            .app_data(health.clone())
            .app_data(history.clone())
            .route("/", web::get().to(routes::status_page))
            .route("/status.json", web::get().to(routes::status_json))
            .route("/healthz", web::get().to(routes::healthz))
            .route("/readyz", web::get().to(routes::readyz))
            .route("/metrics", web::get().to(routes::metrics))
            .default_service(web::to(routes::admin_not_found))
    })
    .workers(1)
    .disable_signals()
    .client_request_timeout(limits::HEADER_TIMEOUT)
    .shutdown_timeout(1)
    .listen(listener)
    .map_err(StartupError::Server)?
    .run();
    Ok(admin)
}

/// The producer for `delivery`, with the topic's size and timestamp limits read (Kafka's defaults, and a
/// warning, when Kafka does not answer within 3 s). With spool delivery its reports come through the
/// returned channel, for the forwarder; with sync delivery each record has its own future.
async fn create_publisher(
    settings: &Settings,
    delivery: DeliveryMode,
    spool_id: Option<&str>,
    metrics: Arc<Metrics>,
) -> Result<(Arc<Publisher>, Option<mpsc::UnboundedReceiver<Report>>), StartupError> {
    let (message_timeout, linger, confirmations, reports) = match delivery {
        DeliveryMode::Spool => {
            let (tx, rx) = mpsc::unbounded_channel();
            let confirmations = match (&settings.exactly_once, spool_id) {
                (Some(eos), Some(id)) => Confirmations::Transactions {
                    reports: tx,
                    transactional_id: crate::exactly_once::transactional_id(id),
                    timeout: eos.transaction_timeout,
                },
                _ => Confirmations::Reports(tx),
            };
            (None, SPOOL_LINGER, confirmations, Some(rx))
        }
        DeliveryMode::Sync { timeout } => (Some(timeout), Duration::ZERO, Confirmations::PerRecord, None),
    };
    let publisher =
        Arc::new(Publisher::new(&settings.kafka, message_timeout, linger, metrics, confirmations)?);
    // The topic's size and timestamp limits, before the first event is checked against them.
    match publisher.refresh_limits(Duration::from_secs(3)).await {
        Ok(true) => publisher.rebuild()?,
        Ok(false) => {}
        Err(e) => {
            tracing::warn!(error = %e, "could not read the topic's limits yet; assuming Kafka's defaults until Kafka answers")
        }
    }
    Ok((publisher, reports))
}

/// Opens the spool of `BRIDGE_SPOOL_DIR`, recovering what an earlier run left (on a blocking thread:
/// recovery reads the segments). `metrics`, when given, are told about every group commit.
async fn open_spool(
    settings: &Settings,
    metrics: Option<Arc<Metrics>>,
) -> Result<(Spool, SpoolThread), StartupError> {
    let config = SpoolConfig {
        dir: settings.spool_dir.clone(),
        fsync: settings.spool_fsync,
        max_bytes: settings.spool_max_bytes,
        max_queued_bytes: crate::spool::MAX_QUEUED_BYTES,
        observer: metrics.map(|m| m as Arc<dyn SpoolObserver>),
    };
    Ok(tokio::task::spawn_blocking(move || Spool::open(config)).await.expect("spool open does not panic")?)
}

/// `tim-kafka-bridge drain`: forwards everything the spool directory holds to Kafka without serving
/// HTTP, and returns once it is all in Kafka. For the spool of a replica that was scaled away, or one
/// moved by hand. It takes the spool's lock like a bridge does, so it never runs beside one. Gives up
/// with [`StartupError::DrainStalled`] when Kafka takes nothing for `BRIDGE_DRAIN_STALL_SECS`.
pub async fn drain(settings: Settings, interrupt: impl Future<Output = ()>) -> Result<(), StartupError> {
    // Whatever BRIDGE_DELIVERY says: what drains is a spool (in exactly-once mode, in transactions
    // under the spool's own transactional id: a bridge still running on a copy of it is fenced).
    let (spool, thread) = open_spool(&settings, None).await?;
    let (publisher, reports) =
        create_publisher(&settings, DeliveryMode::Spool, Some(spool.id()), Arc::new(Metrics::new())).await?;
    let reports = reports.expect("spool mode has a report channel");
    let committed = spool.committed().borrow().seq;
    let pending = spool.pending_events();
    tracing::info!(pending, spool = %settings.spool_dir.display(), topic = %settings.kafka.topic, "draining the spool");
    let (forwarder, mut progress) = Forwarder::new(
        spool.clone(),
        publisher.clone(),
        reports,
        settings.kafka_stall,
        crate::domain::InfoChangedEvent::message_from_v1_spool,
    );
    let forwarder = with_transactions(&settings, &spool, forwarder);
    let start = progress.borrow().acked_seq;
    let (stop, stop_rx) = watch::channel(None);
    let mut task = tokio::spawn(forwarder.run(stop_rx));
    tokio::pin!(interrupt);
    let outcome = loop {
        if progress.borrow_and_update().acked_seq >= committed {
            break Ok(());
        }
        tokio::select! {
            changed = tokio::time::timeout(settings.drain_stall, progress.changed()) => {
                if changed.is_err() {
                    break Err(StartupError::DrainStalled { stalled: settings.drain_stall, pending: committed - progress.borrow().acked_seq });
                }
            }
            ended = &mut task => {
                break match ended {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(e.into()),
                    // A forwarder that panicked drained nothing more: say so, never "drained".
                    Err(e) => Err(StartupError::ForwarderPanicked(e.to_string())),
                };
            }
            () = &mut interrupt => {
                break Err(StartupError::DrainInterrupted { pending: committed - progress.borrow().acked_seq });
            }
        }
    };
    let _ = stop.send(Some(tokio::time::Instant::now()));
    if !task.is_finished() {
        let _ = tokio::time::timeout(SETTLE_TIME + Duration::from_secs(1), task).await;
    }
    let acked = progress.borrow().acked_seq;
    spool.close();
    drop(spool);
    tokio::task::spawn_blocking(move || thread.join()).await.ok();
    if outcome.is_ok() {
        tracing::info!(
            events = acked.saturating_sub(start),
            "spool drained: every event it held is in Kafka"
        );
    }
    let outcome = match outcome {
        Ok(()) => replay_quarantine(&publisher, &settings.spool_dir).await,
        failed => failed,
    };
    let _ = tokio::task::spawn_blocking(move || publisher.flush(Duration::from_secs(5))).await;
    outcome
}

/// Publishes, oldest first, each event parked in the spool's quarantine (see [`crate::quarantine`]),
/// removing its file once Kafka acknowledged it; stops at the first that Kafka still refuses.
async fn replay_quarantine(publisher: &Publisher, spool_dir: &std::path::Path) -> Result<(), StartupError> {
    let quarantine = crate::quarantine::Quarantine::of_spool(spool_dir);
    let failed = |file: &std::path::Path, problem: String| StartupError::QuarantineReplay {
        file: file.display().to_string(),
        problem,
    };
    let parked = quarantine.list().map_err(|e| failed(quarantine.dir(), e.to_string()))?;
    let mut unreadable = Vec::new();
    for file in &parked {
        let bytes = std::fs::read(file).map_err(|e| failed(file, e.to_string()))?;
        let decoded = crate::message::KafkaRecord::decode(
            bytes,
            crate::domain::InfoChangedEvent::message_from_v1_spool,
        );
        let message = match decoded {
            Ok(m) => m,
            Err((e, _)) => {
                // A record this version cannot read (written by a newer one): it stays, the rest go on.
                tracing::error!(file = %file.display(), error = %e, "a quarantined record this version cannot read stays in the quarantine");
                unreadable.push(file);
                continue;
            }
        };
        publisher
            .send_parked(&message)
            .map_err(|e| failed(file, e.to_string()))?
            .await
            .map_err(|e| failed(file, e.to_string()))?;
        quarantine.remove(file).map_err(|e| failed(file, e.to_string()))?;
        tracing::info!(file = %file.display(), "quarantined event published");
    }
    if let Some(first) = unreadable.first() {
        return Err(failed(
            first,
            format!("{} quarantined record(s) this version cannot read", unreadable.len()),
        ));
    }
    if !parked.is_empty() {
        tracing::info!(events = parked.len(), "quarantine emptied: every event it held is in Kafka");
    }
    Ok(())
}
