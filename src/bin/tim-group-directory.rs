//! tim-group-directory: keeps a table of groups from the bridge's topic (see `directory` in the
//! library). Thin: settings, logs, a worker thread for the consumer, and a stop on SIGTERM or Ctrl-C.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tim_kafka_bridge::configuration::LogFormat;
use tim_kafka_bridge::directory::{self, Settings, VARIABLES};
use tim_kafka_bridge::{shutdown, telemetry};

const NAME: &str = "tim-group-directory";

fn main() -> ExitCode {
    match std::env::args().nth(1).as_deref() {
        Some("-h" | "--help") => {
            println!("{NAME}: keeps a groups table (SQLite or PostgreSQL) from tim-kafka-bridge's topic\n");
            for (name, default, meaning) in VARIABLES {
                println!("  {name}\n      {meaning} [default: {default}]");
            }
            return ExitCode::SUCCESS;
        }
        Some(other) => {
            eprintln!("{NAME}: unknown argument {other:?}; everything is configured through DIRECTORY_* variables (see --help)");
            return ExitCode::from(2);
        }
        None => {}
    }
    let settings = Settings::from_vars(std::env::vars());
    let format = match std::env::var("DIRECTORY_LOG_FORMAT").as_deref() {
        Ok("json") => LogFormat::Json,
        _ => LogFormat::Text,
    };
    telemetry::init(format, std::io::stdout);

    // The consumer and its database driver are blocking: they get a thread of their own, and the
    // runtime only waits for a signal or for that thread to end.
    let stop = Arc::new(AtomicBool::new(false));
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let worker = std::thread::spawn({
        let stop = stop.clone();
        move || {
            let result = directory::run(&settings, &stop);
            let _ = done_tx.send(());
            result
        }
    });
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime starts");
    runtime.block_on(async {
        tokio::select! {
            () = shutdown::signal() => {}
            _ = done_rx => {}
        }
    });
    stop.store(true, Ordering::Relaxed);
    match worker.join().expect("the consumer thread does not panic") {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{NAME}: {e}");
            ExitCode::FAILURE
        }
    }
}
