//! The stop signal: SIGTERM (what an orchestrator sends) or Ctrl-C.

use std::future::Future;

/// Installs the SIGTERM and SIGINT handlers now, and returns what resolves at the first of either.
/// Installed before anything is announced (the "listening" line): a SIGTERM sent the moment the
/// bridge says it listens must stop it cleanly, not kill it with the default action. Call it inside
/// the runtime.
pub fn signal() -> impl Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler installs");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler installs");
    async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    }
}
