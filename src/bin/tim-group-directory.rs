//! tim-group-directory: keeps a table of groups from the bridge's topic (see `directory` in the
//! library). Thin: settings, logs, a worker thread for the consumer, and a stop on SIGTERM or Ctrl-C;
//! `dump` and `get` print the table as JSON lines.

use std::io::Write;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tim_kafka_bridge::configuration::LogFormat;
use tim_kafka_bridge::directory::{self, Settings, VARIABLES};
use tim_kafka_bridge::{shutdown, telemetry};

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

/// `dump` and `get`: the groups as the `groups` view shows them, one JSON object per line.
fn print(group_id: Option<&str>) -> ExitCode {
    let settings = Settings::from_vars(std::env::vars());
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

/// `run`: consume until a signal.
fn run() -> ExitCode {
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
