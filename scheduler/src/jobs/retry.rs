//! Re-publishing the images of a finished job that failed.

use std::collections::HashSet;

use serde::Serialize;
use tagfleet_contracts::Pseudonymiser;
use tagfleet_contracts::job::JobState;
use tagfleet_contracts::keys::{Key, job_results_prefix};
use tagfleet_contracts::schema::{ResultLine, Status};
use tagfleet_io::StoreError;
use utoipa::ToSchema;

use super::{JobBook, gauges::refresh_gauges, unavailable};
use crate::error::ApiError;
use crate::record::{JobRecord, JobView, Round};
use crate::spec::Source;

/// What a retry re-published.
#[derive(Debug, Serialize, ToSchema)]
pub struct Retried {
    pub job: JobView,
    /// Failed images published again.
    pub images: u64,
}

impl JobBook {
    /// Re-publishes the images of a finished job that failed. Their error lines are taken
    /// out of the results first, so each image keeps one line; the counts follow.
    pub async fn retry(&self, tenant: &str, id: &str) -> Result<Retried, ApiError> {
        let record = self.record(tenant, id).await?;
        if !matches!(record.state, JobState::Succeeded | JobState::Failed) {
            return Err(ApiError::Conflict(format!(
                "the job is {}; only a finished job can be retried",
                record.state.name()
            )));
        }
        if record.counts.failed == 0 {
            return Err(ApiError::Conflict("no image of the job failed".into()));
        }
        if self.queues.get(&record.model).is_none() {
            return Err(ApiError::Conflict(format!(
                "the fleet does not serve the job's model {} any more",
                record.model
            )));
        }
        if record.source_withheld {
            return Err(ApiError::Conflict(
                "the job keeps nothing (retain: false), not even its source: submit the \
                 failed images again"
                    .into(),
            ));
        }
        // Its failed images are in flight again: within the quotas, before anything changes.
        let _reservation = self.reserve(tenant, record.counts.failed).await?;
        let secrets = self.tenant(tenant)?;
        let pseudonymiser = Pseudonymiser::new(secrets.key.clone());
        // The source first, under today's allow-list: a refusal leaves the results as
        // they were.
        let source = self.source_of(&record).await?;
        let source = self
            .sources
            .expand(&source, secrets)
            .await
            .map_err(|e| match e {
                ApiError::Forbidden(_) => e,
                other => ApiError::Conflict(format!("re-reading the source: {other}")),
            })?;
        let failed = self
            .take_error_lines(tenant, id)
            .await
            .map_err(|e| unavailable("reading the results", e))?;
        let refs: Vec<String> = source
            .into_iter()
            .filter(|r| failed.contains(&pseudonymiser.pseudonym(r)))
            .collect();
        if refs.is_empty() {
            return Err(ApiError::Conflict(
                "the failed images are no longer in the source".into(),
            ));
        }
        let round = record.rounds.len();
        let messages = self.messages(&record, round, &refs);
        let job = (tenant.to_owned(), id.to_owned());
        let writing = self.writing.lock().await;
        let updated = {
            let mut jobs = self.jobs.lock().await;
            let r = jobs.get_mut(&job).ok_or(ApiError::NotFound("job"))?;
            r.rounds.push(Round::new(messages.len() as u32));
            r.counts.failed = r.counts.failed.saturating_sub(failed.len() as u64);
            r.state = JobState::Running;
            r.finished_at = None;
            r.error = None;
            refresh_gauges(&jobs);
            jobs[&job].clone()
        };
        self.write(&updated)
            .await
            .map_err(|e| unavailable("writing the job record", e))?;
        drop(writing);
        let images = refs.len() as u64;
        let view = self.publish(&job, messages, images).await?;
        tracing::info!(tenant, job = %id, images, "failed images re-published");
        Ok(Retried { job: view, images })
    }

    /// The job's source: in its record, or kept apart when it lists refs.
    async fn source_of(&self, record: &JobRecord) -> Result<Source, ApiError> {
        if !record.source_apart {
            return Ok(record.spec.source.clone());
        }
        let key = Key::job_source(&record.tenant, &record.id).to_string();
        let body = match self.store.get(&key).await {
            Ok(body) => body,
            Err(StoreError::Expired(_) | StoreError::NotFound(_)) => {
                return Err(ApiError::Conflict(
                    "the job's source is gone (past its retention): submit the failed images \
                     again"
                        .into(),
                ));
            }
            Err(e) => return Err(unavailable("reading the job's source", e)),
        };
        serde_json::from_slice(&body).map_err(|e| unavailable("reading the job's source", e))
    }

    /// Removes the error lines from a job's result objects; returns their pseudonyms.
    async fn take_error_lines(
        &self,
        tenant: &str,
        id: &str,
    ) -> Result<HashSet<String>, StoreError> {
        let mut failed = HashSet::new();
        for object in self.store.list(&job_results_prefix(tenant, id)).await? {
            let body = match self.store.get(&object.key).await {
                Ok(body) => body,
                Err(StoreError::Expired(_) | StoreError::NotFound(_)) => continue,
                Err(e) => return Err(e),
            };
            let mut kept = Vec::with_capacity(body.len());
            let mut removed = false;
            for line in body.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                match serde_json::from_slice::<ResultLine>(line) {
                    Ok(l) if l.status == Status::Error => {
                        failed.insert(l.image);
                        removed = true;
                    }
                    _ => {
                        kept.extend_from_slice(line);
                        kept.push(b'\n');
                    }
                }
            }
            if removed {
                if kept.is_empty() {
                    self.store.delete(&object.key).await?;
                } else {
                    self.store.put(&object.key, kept).await?;
                }
            }
        }
        Ok(failed)
    }
}
