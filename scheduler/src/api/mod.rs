//! The HTTP API, versioned under `/v1`, plus `/healthz`, `/readyz` and the OpenAPI
//! document at `/openapi.json` (generated from the handlers below). Metrics are served
//! on a listener of their own ([`operations_router`]).
//!
//! Every `/v1` request carries `Authorization: Bearer <token>`; the token names the tenant.
//! A tenant sees only its own jobs and schedules: another tenant's id answers 404, exactly
//! like an id that does not exist. Each request is logged once (time, tenant, route
//! template, status, bytes, duration), never with its query string or body.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use tagfleet_contracts::keys::is_valid_id;
use tagfleet_contracts::{S3Location, Secrets};
use tagfleet_io::ObjectStore;
use tagfleet_io::netguard::UrlPolicy;
use tagfleet_io::queue::TaskQueues;
use utoipa::OpenApi;

use crate::error::ApiError;
use crate::jobs::{BookConfig, JobBook};
use crate::metrics;
use crate::record::JobView;
use crate::schedules::{ScheduleLimits, Schedules};
use crate::sources::SourceReader;
use crate::spec::Invalid;
use crate::spec::JobSpec;

/// The scheduler: its job book and schedules, shared by the handlers and the background
/// work. Built by [`Service::new`]; served by [`router`] and [`crate::run_background`].
pub struct Service {
    pub(crate) book: JobBook,
    pub(crate) schedules: Schedules,
    pub(crate) ready: AtomicBool,
}

/// How a scheduler turns jobs into tasks and what it accepts.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// Models the fleet serves, `name@version`; the first is the default.
    pub models: Vec<String>,
    /// Categorizers the workers have (built in and from their --categorizers-dir), for
    /// `options.categorizer`.
    pub categorizers: Vec<String>,
    /// Refs per task message.
    pub chunk_size: usize,
    /// How long results and job records are kept.
    pub retention: std::time::Duration,
    /// Refs one job may hold at most.
    pub max_job_images: usize,
    /// Largest manifest read from S3, in bytes.
    pub max_manifest_bytes: u64,
    /// Which addresses image URLs may point to.
    pub urls: UrlPolicy,
    /// The folder of the fleet's own store when it is on S3: never a tenant's source
    /// or output.
    pub fleet_store: Option<S3Location>,
    /// How often schedules may fire and how long those holding refs are kept.
    pub schedules: ScheduleLimits,
}

impl Service {
    /// A scheduler keeping its records in `store` and publishing each model's tasks to its
    /// queue in `queues`, which holds one for each of `config.models`; `s3`
    /// lists and reads S3 sources (without it they are refused). Not ready until
    /// [`crate::run_background`] has loaded the store.
    pub fn new(
        store: Arc<dyn ObjectStore>,
        queues: TaskQueues,
        secrets: Secrets,
        s3: Option<aws_sdk_s3::Client>,
        config: SchedulerConfig,
    ) -> Arc<Self> {
        let sources = SourceReader {
            s3,
            urls: config.urls,
            max_refs: config.max_job_images,
            fleet_store: config.fleet_store,
            max_manifest_bytes: config.max_manifest_bytes,
        };
        let book = JobBook::new(
            store.clone(),
            queues,
            secrets,
            sources,
            BookConfig {
                models: config.models,
                categorizers: config.categorizers,
                chunk_size: config.chunk_size,
                retention: config.retention,
            },
        );
        Arc::new(Self {
            book,
            schedules: Schedules::new(store, config.schedules),
            ready: AtomicBool::new(false),
        })
    }

    /// Creates a job for `tenant`, as `POST /v1/jobs` does.
    pub async fn create_job(&self, tenant: &str, spec: JobSpec) -> Result<JobView, ApiError> {
        self.book.create(tenant, spec, None).await
    }
}

type Shared = Arc<Service>;

/// The tenant a request authenticated as.
#[derive(Debug, Clone)]
pub struct Tenant(pub String);

mod jobs;
mod openapi;
mod operations;
mod schedules;

pub use openapi::ApiDoc;
pub use operations::operations_router;
use operations::readyz;

/// The API router. `max_body` bounds request bodies (inline manifests are the big ones).
pub fn router(service: Shared, max_body: usize) -> Router {
    let v1 = Router::new()
        .route("/v1/jobs", post(jobs::create_job).get(jobs::list_jobs))
        .route("/v1/jobs/{id}", get(jobs::get_job).delete(jobs::cancel_job))
        .route("/v1/jobs/{id}/results", get(jobs::job_results))
        .route("/v1/jobs/{id}/retry", post(jobs::retry_job))
        .route(
            "/v1/schedules",
            post(schedules::create_schedule).get(schedules::list_schedules),
        )
        .route(
            "/v1/schedules/{id}",
            get(schedules::get_schedule).delete(schedules::delete_schedule),
        )
        .route("/v1/data", axum::routing::delete(schedules::erase_data));
    Router::new()
        .merge(v1)
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/openapi.json", get(|| async { Json(ApiDoc::openapi()) }))
        .layer(middleware::from_fn_with_state(
            service.clone(),
            authenticate_and_log,
        ))
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(service)
}

/// Authenticates `/v1` requests, then logs and counts every request.
async fn authenticate_and_log(
    State(service): State<Shared>,
    mut request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_owned();
    let method = request.method().clone();
    let tenant = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .and_then(|token| service.book.secrets().authenticate(token.trim()))
        .map(str::to_owned);
    let response = match (&tenant, route.starts_with("/v1/")) {
        (None, true) => ApiError::Unauthorized.into_response(),
        (Some(t), _) => {
            request.extensions_mut().insert(Tenant(t.clone()));
            next.run(request).await
        }
        (None, false) => next.run(request).await,
    };
    let status = response.status().as_u16();
    let elapsed = started.elapsed();
    // Streamed bodies (results) have no size yet.
    let bytes = axum::body::HttpBody::size_hint(response.body())
        .exact()
        .map_or("-".to_owned(), |b| b.to_string());
    metrics::HTTP_REQUESTS
        .with_label_values(&[&route, &status.to_string()])
        .inc();
    metrics::HTTP_SECONDS
        .with_label_values(&[&route])
        .observe(elapsed.as_secs_f64());
    if route.starts_with("/v1/") {
        tracing::info!(
            target: "tagfleet::access",
            tenant = %tenant.as_deref().unwrap_or("-"),
            method = %method,
            route = %route,
            status,
            bytes = %bytes,
            duration_ms = format_args!("{:.1}", elapsed.as_secs_f64() * 1e3),
            "request"
        );
    }
    response
}

fn body_of(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::TooLarge(format!(
            "the request body is over the limit ({e}); send big manifests by S3 uri"
        )),
        _ if crate::server::is_body_timeout(&e) => ApiError::RequestTimeout(
            "the request body was not sent in time; send big manifests by S3 uri".into(),
        ),
        _ => ApiError::Invalid(Invalid::new("body", e.body_text())),
    })
}

/// An id from the path; a malformed one cannot name anything.
fn checked(id: &str, what: &'static str) -> Result<(), ApiError> {
    if is_valid_id(id) {
        Ok(())
    } else {
        Err(ApiError::NotFound(what))
    }
}
