//! The OpenAPI document, generated from the handlers' annotations.

use tagfleet_contracts::job::JobState;
use utoipa::OpenApi;

use super::{jobs, schedules};
use crate::error::ErrorBody;
use crate::jobs::{Erased, JobPage, Retried};
use crate::record::{Counts, JobView};
use crate::schedules::{Schedule, ScheduleSpec};
use crate::spec::{JobSpec, ManifestFormat, Source};

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
    paths(jobs::create_job, jobs::list_jobs, jobs::get_job, jobs::cancel_job, jobs::retry_job,
          jobs::job_results, schedules::create_schedule, schedules::list_schedules,
          schedules::get_schedule, schedules::delete_schedule, schedules::erase_data),
    components(schemas(JobSpec, Source, ManifestFormat, JobView, JobPage, Counts, Retried,
                       Schedule, ScheduleSpec, ErrorBody, JobState, Erased,
                       tagfleet_contracts::Analysis, tagfleet_contracts::TaskOptions,
                       tagfleet_contracts::ResultLine)),
    modifiers(&BearerAuth),
    tags((name = "jobs", description = "Batch jobs"), (name = "schedules", description = "Recurring jobs"),
         (name = "erasure", description = "The right to erasure"))
)]
pub struct ApiDoc;
