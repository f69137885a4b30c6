//! tim-group-directory: keeps a table of groups from the bridge's topic (the `tim-group-directory`
//! crate, crates/tim-group-directory). Thin: settings, logs, a worker thread for the consumer, the
//! `/metrics` server, and a stop on SIGTERM or Ctrl-C; `dump` and `get` print the table as JSON lines.

use std::io::Write;
use std::net::TcpListener;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tim_group_directory::{self as directory, Metrics, Settings, VARIABLES};
use tim_kafka_bridge::shutdown;
use tim_kafka_bridge::telemetry::{self, LogFormat};

const NAME: &str = "tim-group-directory";

const USAGE: &str = "usage: tim-group-directory [run | dump | get GROUP_ID | --help]";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        [] | ["run"] => run(),
        ["dump"] => print(None),
        ["get", group_id] => print(Some(group_id)),
        ["-h" | "--help"] => {
            println!("{NAME}: keeps a groups table (SQLite or PostgreSQL) from tim-kafka-bridge's topic\n");
            println!("  {NAME} [run]         consume the topic into the table until SIGTERM or Ctrl-C");
            println!("  {NAME} dump          print every group, one JSON object per line");
            println!(
                "  {NAME} get GROUP_ID  print that group (one line per app that has it); exit 1 if none\n"
            );
            for (name, default, meaning) in VARIABLES {
                let default = if default.is_empty() { "none" } else { default };
                println!("  {name}\n      {meaning} [default: {default}]");
            }
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!(
                "{NAME}: {USAGE}; everything else is configured through DIRECTORY_* variables (see --help)"
            );
            ExitCode::from(2)
        }
    }
}

/// `dump` and `get`: the groups, one JSON object per line: the `groups` view's columns and the custom
/// fields.
fn print(group_id: Option<&str>) -> ExitCode {
    let Some(settings) = settings() else { return ExitCode::from(2) };
    let groups = match directory::store::open(&settings.database_url).and_then(|mut s| s.groups()) {
        Ok(groups) => groups,
        Err(e) => {
            eprintln!("{NAME}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut out = std::io::stdout().lock();
    let mut found = false;
    for g in groups.iter().filter(|g| group_id.is_none_or(|id| g.group_id == id)) {
        found = true;
        let line = serde_json::to_string(g).expect("a group serializes");
        if writeln!(out, "{line}").is_err() {
            return ExitCode::FAILURE;
        }
    }
    match (group_id, found) {
        (Some(id), false) => {
            eprintln!("{NAME}: no group {id:?} in the table");
            ExitCode::FAILURE
        }
        _ => ExitCode::SUCCESS,
    }
}

/// The settings from the environment; a variable that does not parse is said on stderr.
fn settings() -> Option<Settings> {
    Settings::from_vars(std::env::vars()).map_err(|e| eprintln!("{NAME}: {e}")).ok()
}

/// `run`: consume until a signal.
fn run() -> ExitCode {
    let Some(settings) = settings() else { return ExitCode::from(2) };
    let format = match std::env::var("DIRECTORY_LOG_FORMAT").as_deref() {
        Ok("json") => LogFormat::Json,
        _ => LogFormat::Text,
    };
    telemetry::init(format, std::io::stdout);

    // Bound before consuming starts: a port already taken is an error now, not metrics silently missing.
    let listener = match settings.metrics_listen.map(|addr| (addr, TcpListener::bind(addr))) {
        None => None,
        Some((_, Ok(listener))) => Some(listener),
        Some((addr, Err(e))) => {
            eprintln!("{NAME}: DIRECTORY_METRICS_LISTEN={addr}: cannot listen: {e}");
            return ExitCode::FAILURE;
        }
    };
    let metrics = Arc::new(Metrics::new());
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime starts");
    // The metrics server runs on this runtime (its one worker on a thread of its own), the consumer on
    // another thread: a scrape reads counters and never waits for, nor holds up, a batch.
    let server = match runtime
        .block_on(async { listener.map(|l| directory::metrics::serve(l, metrics.clone())).transpose() })
    {
        Ok(server) => server,
        Err(e) => {
            eprintln!("{NAME}: the metrics server does not start: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(addr) = settings.metrics_listen {
        tracing::info!(%addr, "serving GET /metrics");
    }

    // The consumer and its database driver are blocking: they get a thread of their own, and the
    // runtime only serves metrics and waits for a signal or for that thread to end.
    let stop = Arc::new(AtomicBool::new(false));
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let worker = std::thread::spawn({
        let (stop, metrics) = (stop.clone(), metrics.clone());
        move || {
            let result = directory::run(&settings, &stop, &metrics);
            let _ = done_tx.send(());
            result
        }
    });
    let server_failed = runtime.block_on(async {
        let handle = server.as_ref().map(|s| s.handle());
        let mut serving = server.map(tokio::spawn);
        let ended = async {
            match serving.as_mut() {
                Some(s) => s.await,
                None => std::future::pending().await,
            }
        };
        let failed = tokio::select! {
            () = shutdown::signal() => false,
            _ = done_rx => false,
            r = ended => {
                let why = match r {
                    Ok(Ok(())) => "stopped".to_owned(),
                    Ok(Err(e)) => e.to_string(),
                    Err(e) => e.to_string(),
                };
                eprintln!("{NAME}: the metrics server ended: {why}");
                true
            }
        };
        if let Some(h) = handle {
            h.stop(false).await;
        }
        failed
    });
    stop.store(true, Ordering::Relaxed);
    match worker.join().expect("the consumer thread does not panic") {
        Ok(()) if !server_failed => ExitCode::SUCCESS,
        Ok(()) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("{NAME}: {e}");
            ExitCode::FAILURE
        }
    }
}
