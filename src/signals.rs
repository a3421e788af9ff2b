//! How the long-running commands (`worker`, `scheduler`) learn that they must stop.

/// Waits for SIGTERM or SIGINT; returns its name.
pub async fn stop_signal() -> &'static str {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = tokio::signal::ctrl_c() => "SIGINT",
    }
}
