//! The operations port: `/healthz` (the process is up), `/readyz` (queue, store and model
//! are ready) and `/metrics` (Prometheus text format).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;

/// Flipped to true once the service can do its work; while true, also asks `check` (the
/// worker's health: no dead stage, the store answers).
#[derive(Clone, Default)]
pub struct Readiness {
    flag: Arc<AtomicBool>,
    check: Option<Arc<dyn Fn() -> bool + Send + Sync>>,
}

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.flag.store(ready, Ordering::SeqCst);
    }

    /// Ready only while `check` also says so.
    pub fn also(mut self, check: impl Fn() -> bool + Send + Sync + 'static) -> Self {
        self.check = Some(Arc::new(check));
        self
    }

    fn get(&self) -> bool {
        self.flag.load(Ordering::SeqCst) && self.check.as_ref().is_none_or(|check| check())
    }
}

/// Binds `addr` now (so a taken port fails start-up) and serves in the background.
pub async fn serve(addr: SocketAddr, readiness: Readiness) -> anyhow::Result<SocketAddr> {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route(
            "/metrics",
            get(|| async { tagfleet_worker::metrics::render() }),
        )
        .with_state(readiness);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening on {addr}"))?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "operations server stopped");
        }
    });
    tracing::info!(addr = %bound, "serving /healthz, /readyz and /metrics");
    Ok(bound)
}

async fn ready(State(readiness): State<Readiness>) -> (StatusCode, &'static str) {
    if readiness.get() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}
