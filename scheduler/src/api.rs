//! The HTTP API, versioned under `/v1`, plus `/healthz`, `/readyz`, `/metrics` and the
//! OpenAPI document at `/openapi.json` (generated from the handlers below).
//!
//! Every `/v1` request carries `Authorization: Bearer <token>`; the token names the tenant.
//! A tenant sees only its own jobs and schedules: another tenant's id answers 404, exactly
//! like an id that does not exist. Each request is logged once (time, tenant, route
//! template, status, bytes, duration), never with its query string or body.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, MatchedPath, Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use tagfleet_contracts::job::JobState;
use tagfleet_contracts::keys::{is_valid_id, job_results_prefix};
use tagfleet_io::StoreError;
use utoipa::OpenApi;

use crate::error::{ApiError, ErrorBody};
use crate::jobs::{Erased, JobBook, JobPage, Retried};
use crate::metrics;
use crate::record::{Counts, JobView};
use crate::schedules::{Schedule, ScheduleSpec, Schedules};
use crate::spec::{self, Invalid, JobSpec, ManifestFormat, Source};

/// Everything the handlers share.
pub struct Service {
    pub book: JobBook,
    pub schedules: Schedules,
    pub ready: AtomicBool,
}

type Shared = Arc<Service>;

/// The tenant a request authenticated as.
#[derive(Debug, Clone)]
pub struct Tenant(pub String);

/// The API router. `max_body` bounds request bodies (inline manifests are the big ones).
pub fn router(service: Shared, max_body: usize) -> Router {
    let v1 = Router::new()
        .route("/v1/jobs", post(create_job).get(list_jobs))
        .route("/v1/jobs/{id}", get(get_job).delete(cancel_job))
        .route("/v1/jobs/{id}/results", get(job_results))
        .route("/v1/jobs/{id}/retry", post(retry_job))
        .route("/v1/schedules", post(create_schedule).get(list_schedules))
        .route(
            "/v1/schedules/{id}",
            get(get_schedule).delete(delete_schedule),
        )
        .route("/v1/data", axum::routing::delete(erase_data));
    Router::new()
        .merge(v1)
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
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

async fn readyz(State(service): State<Shared>) -> (StatusCode, &'static str) {
    if service.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n")
    }
}

async fn metrics_text() -> Response {
    let text = prometheus::TextEncoder::new()
        .encode_to_string(&prometheus::gather())
        .unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

fn body_of(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::TooLarge(format!(
            "the request body is over the limit ({e}); send big manifests by S3 uri"
        )),
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

/// Creates a job from a spec and publishes its tasks.
#[utoipa::path(post, path = "/v1/jobs", request_body = JobSpec, tag = "jobs",
    responses(
        (status = 201, description = "Job created; its tasks are published", body = JobView),
        (status = 400, description = "The spec is invalid or the source is empty", body = ErrorBody),
        (status = 401, description = "Missing or unknown token", body = ErrorBody),
        (status = 413, description = "Request body too large", body = ErrorBody),
        (status = 503, description = "The store or queue failed", body = ErrorBody)),
    security(("bearer" = [])))]
async fn create_job(
    State(service): State<Shared>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<JobView>), ApiError> {
    let spec: JobSpec = spec::parse(&body_of(body)?)?;
    let view = service.book.create(&tenant, spec, None).await?;
    Ok((StatusCode::CREATED, Json(view)))
}

/// The tenant's jobs, newest first.
#[utoipa::path(get, path = "/v1/jobs", tag = "jobs",
    params(("limit" = Option<usize>, Query, description = "Jobs per page, 1 to 1000 (default 50)"),
           ("after" = Option<String>, Query, description = "The `next` of the previous page")),
    responses((status = 200, body = JobPage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
async fn list_jobs(
    State(service): State<Shared>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<JobPage>, ApiError> {
    let limit = match query.get("limit") {
        None => 50,
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|l| (1..=1000).contains(l))
            .ok_or_else(|| {
                Invalid::new("limit", format!("{l:?} is not a number from 1 to 1000"))
            })?,
    };
    if let Some(unknown) = query
        .keys()
        .find(|k| !["limit", "after"].contains(&k.as_str()))
    {
        return Err(Invalid::new(unknown.clone(), "unknown query parameter")
            .with_valid(vec!["limit".into(), "after".into()])
            .into());
    }
    Ok(Json(
        service
            .book
            .list(&tenant, limit, query.get("after").map(String::as_str))
            .await,
    ))
}

/// A job's state, counts, rate and ETA.
#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "jobs",
    params(("id" = String, Path, description = "Job id")),
    responses((status = 200, body = JobView), (status = 404, body = ErrorBody), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
async fn get_job(
    State(service): State<Shared>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    Path(id): Path<String>,
) -> Result<Json<JobView>, ApiError> {
    checked(&id, "job")?;
    Ok(Json(service.book.get(&tenant, &id).await?))
}

/// Cancels a job: workers skip its queued tasks and all its results are deleted now.
#[utoipa::path(delete, path = "/v1/jobs/{id}", tag = "jobs",
    params(("id" = String, Path, description = "Job id")),
    responses((status = 200, description = "Cancelled; its results are erased", body = JobView),
              (status = 404, body = ErrorBody), (status = 401, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
async fn cancel_job(
    State(service): State<Shared>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    Path(id): Path<String>,
) -> Result<Json<JobView>, ApiError> {
    checked(&id, "job")?;
    Ok(Json(service.book.cancel(&tenant, &id).await?))
}

/// Re-publishes the images of a finished job that failed.
#[utoipa::path(post, path = "/v1/jobs/{id}/retry", tag = "jobs",
    params(("id" = String, Path, description = "Job id")),
    responses((status = 200, body = Retried), (status = 409, description = "Nothing to retry", body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
async fn retry_job(
    State(service): State<Shared>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    Path(id): Path<String>,
) -> Result<Json<Retried>, ApiError> {
    checked(&id, "job")?;
    Ok(Json(service.book.retry(&tenant, &id).await?))
}

/// The job's result lines as JSON Lines (one per image, named by pseudonym).
#[utoipa::path(get, path = "/v1/jobs/{id}/results", tag = "jobs",
    params(("id" = String, Path, description = "Job id")),
    responses((status = 200, description = "JSON Lines, one result line per image", content_type = "application/x-ndjson", body = String),
              (status = 404, body = ErrorBody), (status = 410, description = "Cancelled or expired: the results are gone", body = ErrorBody),
              (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
async fn job_results(
    State(service): State<Shared>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    checked(&id, "job")?;
    let record = service.book.record(&tenant, &id).await?;
    if matches!(record.state, JobState::Cancelled | JobState::Expired) {
        return Err(ApiError::Gone(format!(
            "the job is {}: its results are deleted",
            record.state.name()
        )));
    }
    let keep_nothing = !record.spec.options.retain;
    if keep_nothing && record.spec.output.is_some() {
        return Err(ApiError::Gone(
            "the job keeps nothing (retain: false): its results went to its output only".into(),
        ));
    }
    if keep_nothing && record.results_delivered {
        return Err(ApiError::Gone(
            "the job keeps nothing (retain: false): its results were read once and deleted".into(),
        ));
    }
    if keep_nothing && !record.state.is_final() {
        return Err(ApiError::Conflict(
            "the job keeps nothing (retain: false): its results are served once, complete, \
             when it has ended"
                .into(),
        ));
    }
    let store = service.book.store().clone();
    let keys: Vec<String> = store
        .list(&job_results_prefix(&tenant, &id))
        .await
        .map_err(|e| ApiError::Unavailable(format!("listing the results: {e}")))?
        .into_iter()
        .map(|o| o.key)
        .collect();
    // retain: false: once the last object is out, the results are deleted.
    let delivered = keep_nothing.then(|| (service.clone(), tenant.clone(), id.clone()));
    let stream = futures_util::stream::unfold(keys.into_iter(), move |mut keys| {
        let store = store.clone();
        let delivered = delivered.clone();
        async move {
            loop {
                let Some(key) = keys.next() else {
                    if let Some((service, tenant, id)) = delivered
                        && let Err(e) = service.book.results_delivered(&tenant, &id).await
                    {
                        tracing::error!(job = %id, error = %e, "deleting delivered results failed");
                    }
                    return None;
                };
                match store.get(&key).await {
                    Ok(body) => return Some((Ok::<_, StoreError>(Bytes::from(body)), keys)),
                    // Past its retention or erased meanwhile: never served.
                    Err(StoreError::Expired(_) | StoreError::NotFound(_)) => continue,
                    Err(e) => return Some((Err(e), keys)),
                }
            }
        }
    });
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(stream),
    )
        .into_response())
}

/// Creates a recurring job.
#[utoipa::path(post, path = "/v1/schedules", request_body = ScheduleSpec, tag = "schedules",
    responses((status = 201, body = Schedule), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
async fn create_schedule(
    State(service): State<Shared>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Schedule>), ApiError> {
    let spec: ScheduleSpec = spec::parse(&body_of(body)?)?;
    let schedule = service
        .schedules
        .create(&service.book, &tenant, spec)
        .await?;
    Ok((StatusCode::CREATED, Json(schedule)))
}

/// The tenant's schedules.
#[utoipa::path(get, path = "/v1/schedules", tag = "schedules",
    responses((status = 200, body = Vec<Schedule>), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
async fn list_schedules(
    State(service): State<Shared>,
    Extension(Tenant(tenant)): Extension<Tenant>,
) -> Json<Vec<Schedule>> {
    Json(service.schedules.list(&tenant).await)
}

/// One schedule, with its last and next firing.
#[utoipa::path(get, path = "/v1/schedules/{id}", tag = "schedules",
    params(("id" = String, Path, description = "Schedule id")),
    responses((status = 200, body = Schedule), (status = 404, body = ErrorBody), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
async fn get_schedule(
    State(service): State<Shared>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    Path(id): Path<String>,
) -> Result<Json<Schedule>, ApiError> {
    checked(&id, "schedule")?;
    Ok(Json(service.schedules.get(&tenant, &id).await?))
}

/// Deletes a schedule; jobs it created stay.
#[utoipa::path(delete, path = "/v1/schedules/{id}", tag = "schedules",
    params(("id" = String, Path, description = "Schedule id")),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
async fn delete_schedule(
    State(service): State<Shared>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    checked(&id, "schedule")?;
    service.schedules.delete(&tenant, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Erases all of the calling tenant's data at once: every job (results deleted, queued
/// tasks skipped), every job record and every schedule. `tenant` must name the token's
/// tenant, so a token mixed up cannot erase the wrong data.
#[utoipa::path(delete, path = "/v1/data", tag = "erasure",
    params(("tenant" = String, Query, description = "The tenant whose data goes; must be the token's")),
    responses((status = 200, body = Erased), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
async fn erase_data(
    State(service): State<Shared>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Erased>, ApiError> {
    match query.get("tenant") {
        Some(t) if *t == tenant => {}
        Some(_) => {
            return Err(Invalid::new("tenant", "the token belongs to another tenant").into());
        }
        None => return Err(Invalid::new("tenant", "name the tenant to erase").into()),
    }
    let unavailable = |e: StoreError| ApiError::Unavailable(format!("erasing: {e}"));
    let schedules = service
        .schedules
        .erase_tenant(&tenant)
        .await
        .map_err(unavailable)?;
    let (jobs, objects) = service
        .book
        .erase_tenant(&tenant)
        .await
        .map_err(unavailable)?;
    tracing::info!(tenant = %tenant, jobs, schedules, objects, "tenant data erased");
    Ok(Json(Erased {
        jobs,
        schedules,
        objects: objects + schedules,
    }))
}

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme(
                "bearer",
                SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
            );
    }
}

/// The OpenAPI document of the API.
#[derive(OpenApi)]
#[openapi(
    info(title = "tagfleet scheduler API", description = "Batch image analysis jobs: create, watch, read results, cancel and erase, schedule."),
    paths(create_job, list_jobs, get_job, cancel_job, retry_job, job_results,
          create_schedule, list_schedules, get_schedule, delete_schedule, erase_data),
    components(schemas(JobSpec, Source, ManifestFormat, JobView, JobPage, Counts, Retried,
                       Schedule, ScheduleSpec, ErrorBody, JobState, Erased,
                       tagfleet_contracts::Analysis, tagfleet_contracts::TaskOptions)),
    modifiers(&BearerAuth),
    tags((name = "jobs", description = "Batch jobs"), (name = "schedules", description = "Recurring jobs"),
         (name = "erasure", description = "The right to erasure"))
)]
pub struct ApiDoc;
