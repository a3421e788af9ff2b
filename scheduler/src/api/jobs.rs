//! The `/v1/jobs` handlers: create, list, show, cancel, retry, read results.

use std::collections::HashMap;

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use tagfleet_contracts::job::JobState;
use tagfleet_contracts::keys::job_results_prefix;
use tagfleet_io::StoreError;

use super::{Shared, Tenant, body_of, checked};
use crate::error::{ApiError, ErrorBody};
use crate::jobs::{JobPage, Retried};
use crate::record::JobView;
use crate::spec::{self, Invalid, JobSpec};

/// Creates a job from a spec and publishes its tasks.
#[utoipa::path(post, path = "/v1/jobs", request_body = JobSpec, tag = "jobs",
    responses(
        (status = 201, description = "Job created; its tasks are published", body = JobView),
        (status = 400, description = "The spec is invalid or the source is empty", body = ErrorBody),
        (status = 403, description = "A location outside the tenant's allow-lists, or the fleet's own store", body = ErrorBody),
        (status = 401, description = "Missing or unknown token", body = ErrorBody),
        (status = 408, description = "The request body was not sent in time", body = ErrorBody),
        (status = 413, description = "Request body too large", body = ErrorBody),
        (status = 429, description = "Over the tenant's jobs_in_flight or images_in_flight quota", body = ErrorBody),
        (status = 503, description = "The store or queue failed", body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn create_job(
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
pub(super) async fn list_jobs(
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
pub(super) async fn get_job(
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
pub(super) async fn cancel_job(
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
              (status = 404, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 429, description = "Over the tenant's jobs_in_flight or images_in_flight quota", body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn retry_job(
    State(service): State<Shared>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    Path(id): Path<String>,
) -> Result<Json<Retried>, ApiError> {
    checked(&id, "job")?;
    Ok(Json(service.book.retry(&tenant, &id).await?))
}

/// The job's result lines as JSON Lines: one `ResultLine` per image, named by pseudonym.
#[utoipa::path(get, path = "/v1/jobs/{id}/results", tag = "jobs",
    params(("id" = String, Path, description = "Job id")),
    responses((status = 200, description = "JSON Lines, one ResultLine (see the schemas) per image", content_type = "application/x-ndjson", body = String),
              (status = 404, body = ErrorBody), (status = 410, description = "Cancelled or expired, or (retain: false) read once already: the results are gone", body = ErrorBody),
              (status = 409, description = "retain: false: the job has not ended, or another request is reading its results", body = ErrorBody),
              (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn job_results(
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
    // retain: false: this read claims the results before anything is listed, so a second
    // read at the same time is refused; once the last object is out, they are deleted.
    let claim = match keep_nothing {
        true => Some(service.book.claim_results(&tenant, &id).await?),
        false => None,
    };
    let store = service.book.store().clone();
    let keys: Vec<String> = store
        .list(&job_results_prefix(&tenant, &id))
        .await
        .map_err(|e| ApiError::Unavailable(format!("listing the results: {e}")))?
        .into_iter()
        .map(|o| o.key)
        .collect();
    let stream = futures_util::stream::unfold((keys.into_iter(), claim), move |state| {
        let (store, service, id) = (store.clone(), service.clone(), id.clone());
        async move {
            let (mut keys, mut claim) = state;
            loop {
                let Some(key) = keys.next() else {
                    if let Some(claim) = claim.take()
                        && let Err(e) = claim.delivered(&service.book).await
                    {
                        tracing::error!(job = %id, error = %e, "deleting delivered results failed");
                    }
                    return None;
                };
                match store.get(&key).await {
                    Ok(body) => {
                        return Some((Ok::<_, StoreError>(Bytes::from(body)), (keys, claim)));
                    }
                    // Past its retention or erased meanwhile: never served.
                    Err(StoreError::Expired(_) | StoreError::NotFound(_)) => continue,
                    // The read is broken off: nothing more is sent, and the claim is freed
                    // for another read rather than the results deleted.
                    Err(e) => return Some((Err(e), (Vec::new().into_iter(), None))),
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
