use std::process::ExitCode;

use tim_kafka_bridge::configuration::{help, Settings};
use tim_kafka_bridge::startup::{self, Application};
use tim_kafka_bridge::{shutdown, telemetry};

fn main() -> ExitCode {
    let drain = std::env::args().nth(1).as_deref() == Some("drain");
    match std::env::args().nth(1).as_deref() {
        Some("-h" | "--help") => {
            print!("{}", help());
            return ExitCode::SUCCESS;
        }
        Some("-V" | "--version") => {
            println!("{} {}", env!("CARGO_PKG_NAME"), env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Some("drain") => {}
        Some(other) => {
            eprintln!("{}: unknown argument {other:?}; everything is configured through BRIDGE_* variables (see --help)", env!("CARGO_PKG_NAME"));
            return ExitCode::from(2);
        }
        None => {}
    }
    let settings = match if drain { Settings::for_drain() } else { Settings::from_env() } {
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
    let result = runtime.block_on(async {
        if drain {
            return startup::drain(settings, shutdown::signal()).await;
        }
        let app = Application::build(settings).await?;
        app.run_until_stopped(shutdown::signal()).await
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
