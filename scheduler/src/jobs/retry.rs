//! Re-publishing the images of a finished job that have no result: those that failed and
//! those that never ran (their task was given up).

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
    /// Images published again: those that failed or never ran.
    pub images: u64,
}

impl JobBook {
    /// Re-publishes every image of a finished job's source that has no result: those that
    /// ended in an error line and those that never ran. Error lines are taken out of the
    /// results first, so each image keeps one line; the counts follow (`total` too, when
    /// the source has changed since: it is what the job covers now).
    pub async fn retry(&self, tenant: &str, id: &str) -> Result<Retried, ApiError> {
        let record = self.record(tenant, id).await?;
        if !matches!(record.state, JobState::Succeeded | JobState::Failed) {
            return Err(ApiError::Conflict(format!(
                "the job is {}; only a finished job can be retried",
                record.state.name()
            )));
        }
        let missing = record.counts.failed + record.counts.unfinished;
        if missing == 0 {
            return Err(ApiError::Conflict(
                "every image of the job has a result".into(),
            ));
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
                 images without a result again"
                    .into(),
            ));
        }
        // Its images are in flight again: within the quotas, before anything changes.
        let mut reservation = self.reserve(tenant, missing).await?;
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
        let ok = self
            .results_by_status(tenant, id, Status::Ok)
            .await
            .map_err(|e| unavailable("reading the results", e))?;
        let refs: Vec<String> = source
            .into_iter()
            .filter(|r| !ok.contains(&pseudonymiser.pseudonym(r)))
            .collect();
        if refs.is_empty() {
            return Err(ApiError::Conflict(
                "the images without a result are no longer in the source".into(),
            ));
        }
        if refs.len() as u64 > missing {
            // The source has grown: the new images count against the quotas too.
            drop(reservation);
            reservation = self.reserve(tenant, refs.len() as u64).await?;
        }
        let failed = self
            .take_error_lines(tenant, id)
            .await
            .map_err(|e| unavailable("reading the results", e))?;
        let round = record.rounds.len();
        let messages = self.messages(&record, round, &refs);
        let job = (tenant.to_owned(), id.to_owned());
        let writing = self.writing.lock().await;
        let updated = {
            let mut jobs = self.jobs.lock().await;
            let r = jobs.get_mut(&job).ok_or(ApiError::NotFound("job"))?;
            for round in &mut r.rounds {
                round.given_up.clear();
            }
            r.rounds.push(Round::published(&messages));
            r.counts.failed = r.counts.failed.saturating_sub(failed);
            r.counts.unfinished = 0;
            r.counts.total = r.counts.done + r.counts.failed + refs.len() as u64;
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
        drop(reservation);
        let images = refs.len() as u64;
        let view = self.publish(&job, messages, images).await?;
        tracing::info!(tenant, job = %id, images, "images without a result re-published");
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

    /// The pseudonyms of a job's result lines with `status`.
    async fn results_by_status(
        &self,
        tenant: &str,
        id: &str,
        status: Status,
    ) -> Result<HashSet<String>, StoreError> {
        let mut found = HashSet::new();
        for object in self.store.list(&job_results_prefix(tenant, id)).await? {
            let body = match self.store.get(&object.key).await {
                Ok(body) => body,
                Err(StoreError::Expired(_) | StoreError::NotFound(_)) => continue,
                Err(e) => return Err(e),
            };
            found.extend(
                result_lines(&body)
                    .filter_map(Result::ok)
                    .filter(|l| l.status == status)
                    .map(|l| l.image),
            );
        }
        Ok(found)
    }

    /// Removes the error lines from a job's result objects; returns how many it removed.
    async fn take_error_lines(&self, tenant: &str, id: &str) -> Result<u64, StoreError> {
        let mut removed = 0;
        for object in self.store.list(&job_results_prefix(tenant, id)).await? {
            let body = match self.store.get(&object.key).await {
                Ok(body) => body,
                Err(StoreError::Expired(_) | StoreError::NotFound(_)) => continue,
                Err(e) => return Err(e),
            };
            let mut kept = Vec::with_capacity(body.len());
            let before = removed;
            for line in body.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                match serde_json::from_slice::<ResultLine>(line) {
                    Ok(l) if l.status == Status::Error => removed += 1,
                    _ => {
                        kept.extend_from_slice(line);
                        kept.push(b'\n');
                    }
                }
            }
            if removed > before {
                if kept.is_empty() {
                    self.store.delete(&object.key).await?;
                } else {
                    self.store.put(&object.key, kept).await?;
                }
            }
        }
        Ok(removed)
    }
}

/// The lines of a result object, each parsed on its own.
pub(super) fn result_lines(
    body: &[u8],
) -> impl Iterator<Item = Result<ResultLine, serde_json::Error>> + '_ {
    body.split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(serde_json::from_slice::<ResultLine>)
}
