//! The operations listener: `/metrics`, `/healthz` and `/readyz`, on an address of their
//! own. Metrics answer without a token, so they live apart from the API: the operator
//! opens this port to Prometheus and the kubelet only, and the label sets are fixed
//! (no tenant, no job: per-job progress is the API's, `GET /v1/jobs/{id}`).

use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::Shared;

/// `/metrics` (Prometheus text), `/healthz` (the process answers) and `/readyz` (the
/// store is loaded), for the metrics listener.
pub fn operations_router(service: Shared) -> Router {
    Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(service)
}

/// Ready once the job records and schedules are loaded.
pub(super) async fn readyz(State(service): State<Shared>) -> (StatusCode, &'static str) {
    if service.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n")
    }
}

async fn metrics_text() -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::metrics::render(),
    )
        .into_response()
}
