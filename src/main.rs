use std::process::ExitCode;

use tim_kafka_bridge::configuration::{help, Settings};
use tim_kafka_bridge::startup::{self, Application};
use tim_kafka_bridge::{shutdown, snapshot, telemetry};

/// What the process was asked to do.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Serve,
    Drain,
    Snapshot,
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `--help` and `--version` anywhere win: `drain --help` prints help, it does not drain.
    if args.iter().any(|a| a == "-h" || a == "--help") {
        print!("{}", help());
        return ExitCode::SUCCESS;
    }
    if args.iter().any(|a| a == "-V" || a == "--version") {
        // A build with failpoints compiled in (the test suite's) says so: the load benchmark checks
        // that it measures the binary a user gets.
        let build = if cfg!(feature = "failpoints") { " (failpoints)" } else { "" };
        println!("{} {}{build}", env!("CARGO_PKG_NAME"), env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    let mode = match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        [] => Mode::Serve,
        ["drain"] => Mode::Drain,
        ["snapshot"] => Mode::Snapshot,
        other => {
            eprintln!(
                "{}: unknown arguments {other:?}; the commands are drain and snapshot, everything else is configured through BRIDGE_* variables (see --help)",
                env!("CARGO_PKG_NAME")
            );
            return ExitCode::from(2);
        }
    };
    let settings = match mode {
        Mode::Serve => Settings::from_env(),
        Mode::Drain => Settings::for_drain(),
        Mode::Snapshot => Settings::for_snapshot(),
    };
    let settings = match settings {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{}: configuration error: {e}", env!("CARGO_PKG_NAME"));
            return ExitCode::from(2);
        }
    };
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
    #[cfg(not(feature = "failpoints"))]
    if std::env::var_os("FAILPOINTS").is_some() {
        eprintln!(
            "{}: FAILPOINTS is set, but this build has no failpoints (build with --features failpoints)",
            env!("CARGO_PKG_NAME")
        );
        return ExitCode::from(2);
    }
    // Log lines go through a buffer drained by their own thread: a slow or blocked stdout never
    // stalls a request (lines beyond the buffer are dropped and counted, not waited for).
    let (writer, _flush_on_exit) = tracing_appender::non_blocking(std::io::stdout());
    telemetry::init(settings.log_format, writer);
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime starts");
    let result: Result<(), Box<dyn std::error::Error>> = runtime.block_on(async {
        // The handlers are in place before anything starts.
        let stop = shutdown::signal();
        match mode {
            Mode::Drain => Ok(startup::drain(settings, stop).await?),
            Mode::Snapshot => snapshot::run(settings, stop).await.map(drop).map_err(Into::into),
            Mode::Serve => {
                let app = Application::build(settings).await?;
                Ok(app.run_until_stopped(stop).await?)
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // One line on stderr, like a configuration error: not also a log line on stdout.
        Err(e) => {
            eprintln!("{}: {e}", env!("CARGO_PKG_NAME"));
            ExitCode::FAILURE
        }
    }
}
