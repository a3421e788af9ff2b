//! The `/v1/schedules` handlers, and `/v1/data` (the right to erasure).

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use tagfleet_io::StoreError;

use super::{Shared, Tenant, body_of, checked};
use crate::error::{ApiError, ErrorBody};
use crate::jobs::Erased;
use crate::schedules::{Schedule, ScheduleSpec};
use crate::spec::{self, Invalid};

/// Creates a recurring job.
#[utoipa::path(post, path = "/v1/schedules", request_body = ScheduleSpec, tag = "schedules",
    responses((status = 201, body = Schedule), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, description = "A location outside the tenant's allow-lists", body = ErrorBody),
              (status = 429, description = "Over the tenant's schedules quota", body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn create_schedule(
    State(service): State<Shared>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Schedule>), ApiError> {
    let spec: ScheduleSpec = spec::parse(&body_of(body)?)?;
    service
        .book
        .check_locations(&tenant, &spec.job)
        .map_err(|e| e.within("job"))?;
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
pub(super) async fn list_schedules(
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
pub(super) async fn get_schedule(
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
pub(super) async fn delete_schedule(
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
pub(super) async fn erase_data(
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
    let erased = service
        .schedules
        .erase_tenant(&service.book, &tenant)
        .await
        .map_err(|e: StoreError| ApiError::Unavailable(format!("erasing: {e}")))?;
    tracing::info!(tenant = %tenant, jobs = erased.jobs, schedules = erased.schedules,
        objects = erased.objects, "tenant data erased");
    Ok(Json(erased))
}
