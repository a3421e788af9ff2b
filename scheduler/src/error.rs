//! API errors: every one is JSON with the reason, and 400s name the field at fault.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::spec::Invalid;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Invalid(#[from] Invalid),
    #[error("missing or unknown bearer token")]
    Unauthorized,
    /// A location the tenant may not use: the field and a fixed reason.
    #[error("{0}")]
    Forbidden(Invalid),
    #[error("no such {0}")]
    NotFound(&'static str),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Gone(String),
    #[error("{0}")]
    TooLarge(String),
    /// The client did not send its request in time.
    #[error("{0}")]
    RequestTimeout(String),
    /// A backend (store, queue) failed; the request can be retried.
    #[error("{0}")]
    Unavailable(String),
    /// The tenant is at one of its quotas (see `tagfleet_contracts::secrets::Quotas`).
    #[error("{0}")]
    QuotaExceeded(QuotaExceeded),
}

/// A tenant quota a request would go over: which one, its limit, what is in use and
/// what the request asked for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, ToSchema)]
#[error("over the {quota} quota: {used} in use and {requested} more asked, {limit} allowed")]
pub struct QuotaExceeded {
    /// `schedules`, `jobs_in_flight` or `images_in_flight`.
    pub quota: String,
    /// The tenant's limit.
    pub limit: u64,
    /// In use now (jobs and images of jobs that have not ended; schedules).
    pub used: u64,
    /// What the request would add.
    pub requested: u64,
}

impl QuotaExceeded {
    /// Refuses (429) a request adding `requested` to `used` past `limit`.
    pub fn check(quota: &str, limit: u64, used: u64, requested: u64) -> Result<(), ApiError> {
        if used.saturating_add(requested) <= limit {
            return Ok(());
        }
        Err(ApiError::QuotaExceeded(QuotaExceeded {
            quota: quota.to_owned(),
            limit,
            used,
            requested,
        }))
    }
}

/// The body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong, in words.
    pub error: String,
    /// The request field at fault (400 and 403), e.g. `options.top_k`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// The valid values, when the field is a closed choice.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub valid: Option<Vec<String>>,
    /// The quota a 429 is about: `quota`, `limit`, `used`, `requested`.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub quota: Option<QuotaExceeded>,
}

impl ApiError {
    /// The same error with its field named inside `parent` (`output` -> `job.output`).
    pub fn within(self, parent: &str) -> Self {
        match self {
            ApiError::Invalid(mut e) => {
                e.field = format!("{parent}.{}", e.field);
                ApiError::Invalid(e)
            }
            ApiError::Forbidden(mut e) => {
                e.field = format!("{parent}.{}", e.field);
                ApiError::Forbidden(e)
            }
            other => other,
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Invalid(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Gone(_) => StatusCode::GONE,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::QuotaExceeded(_) => StatusCode::TOO_MANY_REQUESTS,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = match &self {
            ApiError::Invalid(invalid) | ApiError::Forbidden(invalid) => ErrorBody {
                error: invalid.to_string(),
                field: Some(invalid.field.clone()),
                valid: invalid.valid.clone(),
                quota: None,
            },
            ApiError::QuotaExceeded(over) => ErrorBody {
                error: over.to_string(),
                field: None,
                valid: None,
                quota: Some(over.clone()),
            },
            other => ErrorBody {
                error: other.to_string(),
                field: None,
                valid: None,
                quota: None,
            },
        };
        let mut response = (status, Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
