//! Builds the bridge from [`Settings`] and runs it until told to stop.

use std::future::Future;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::{Server, Service};
use actix_web::{web, App, HttpServer};
use tokio::sync::watch;

use crate::configuration::{DeliveryMode, Settings};
use crate::forwarder::{Forwarder, Progress};
use crate::health::Health;
use crate::metrics::Metrics;
use crate::publisher::{ProducerConfigError, Publisher};
use crate::routes::{self, Pipeline};
use crate::spool::{Spool, SpoolConfig, SpoolError, SpoolThread};
use crate::status::History;

/// Why the bridge could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Producer(#[from] ProducerConfigError),
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error("{variable}: cannot bind {addr}: {source}")]
    Bind { variable: &'static str, addr: String, source: std::io::Error },
    #[error("HTTP server failed: {0}")]
    Server(std::io::Error),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
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

/// The spool side of a running bridge (absent with `BRIDGE_DELIVERY=sync`).
struct Spooling {
    spool: Spool,
    thread: SpoolThread,
    forwarder: tokio::task::JoinHandle<()>,
    progress: watch::Receiver<Progress>,
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
    /// The Kafka metadata probe behind readiness.
    probe: tokio::task::JoinHandle<()>,
    /// The sampler behind the status page.
    sampler: tokio::task::JoinHandle<()>,
    grace: Duration,
}

impl Application {
    /// Opens the spool (recovering what an earlier run left), starts forwarding it, creates the
    /// producer and binds the listener (port 0 picks a free port; see [`port`](Self::port)).
    pub async fn build(settings: Settings) -> Result<Self, StartupError> {
        let message_timeout = match settings.delivery {
            DeliveryMode::Spool => None,
            DeliveryMode::Sync { timeout } => Some(timeout),
        };
        // What can fail without side effects first: the certificate and the ports.
        let tls = settings.tls.as_ref().map(crate::tls::server_config).transpose()?;
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
        let publisher = Arc::new(Publisher::new(&settings, message_timeout, metrics.clone())?);

        let (pipeline, spooling) = match settings.delivery {
            DeliveryMode::Spool => {
                let config = SpoolConfig {
                    dir: settings.spool_dir.clone(),
                    fsync: settings.spool_fsync,
                    max_bytes: settings.spool_max_bytes,
                    observer: Some(metrics.clone()),
                };
                let (spool, thread) = tokio::task::spawn_blocking(move || Spool::open(config))
                    .await
                    .expect("spool open does not panic")?;
                let pending = spool.pending_events();
                if pending > 0 {
                    tracing::info!(pending, "spool holds events from an earlier run; publishing them first");
                }
                let (forwarder, progress) = Forwarder::new(spool.clone(), publisher.clone());
                let forwarder = tokio::spawn(forwarder.run());
                (Pipeline::Spool(spool.clone()), Some(Spooling { spool, thread, forwarder, progress }))
            }
            DeliveryMode::Sync { timeout } => {
                (Pipeline::Sync { publisher: publisher.clone(), timeout }, None)
            }
        };

        let health = Arc::new(Health::new(
            metrics.clone(),
            spooling.as_ref().map(|s| s.spool.clone()),
            spooling.as_ref().map(|s| s.progress.clone()),
            settings.ready_kafka_window,
            settings.ready_spool_high_water,
        ));
        let probe = tokio::spawn(health.clone().probe_kafka(publisher.clone()));
        let history = Arc::new(History::default());
        let sampler = tokio::spawn(crate::status::run_sampler(health.clone(), history.clone()));
        let health = web::Data::from(health);
        let history = web::Data::from(history);
        let state = web::Data::new(routes::webhook_state(&settings, pipeline, metrics.clone()));
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
        .listen(admin_listener)
        .map_err(StartupError::Server)?
        .run();

        tracing::info!(
            address = %settings.listen.ip(),
            port,
            admin_address = %settings.admin_listen.ip(),
            admin_port,
            webhook_path = %settings.webhook_path,
            topic = %settings.topic,
            brokers = %settings.kafka_brokers,
            delivery = %settings.delivery,
            fsync = %settings.spool_fsync,
            sign_check = settings.callback_token.is_some(),
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
            probe,
            sampler,
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
        let failed = tokio::select! {
            r = &mut server => Some(r),
            r = &mut admin => Some(r),
            () = shutdown => None,
        };
        if let Some(r) = failed {
            handle.stop(false).await;
            admin_handle.stop(false).await;
            self.probe.abort();
            self.sampler.abort();
            return r.expect("server task does not panic").map_err(StartupError::Server);
        }
        let deadline = tokio::time::Instant::now() + self.grace;
        tracing::info!(
            grace_secs = self.grace.as_secs(),
            "shutting down: finishing requests, then forwarding the spool"
        );
        handle.stop(true).await;
        let _ = server.await;
        self.probe.abort();
        self.sampler.abort();

        if let Some(mut s) = self.spooling {
            let committed = *s.spool.committed().borrow();
            let drained =
                tokio::time::timeout_at(deadline, s.progress.wait_for(|p| p.acked_seq >= committed)).await;
            s.forwarder.abort();
            let _ = s.forwarder.await;
            match drained {
                Ok(_) => tracing::info!("spool drained: every accepted event is in Kafka"),
                Err(_) => tracing::warn!(
                    pending = s.spool.pending_events(),
                    "grace period over; events not yet in Kafka stay in the spool for the next start"
                ),
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
        tracing::info!("stopped");
        Ok(())
    }
}
