//! Cancelling a job and the right to erasure: a tenant's data deleted at once.

use chrono::Utc;
use serde::Serialize;
use tagfleet_contracts::job::JobState;
use tagfleet_contracts::keys::{Area, Key, job_results_prefix};
use tagfleet_io::StoreError;
use utoipa::ToSchema;

use super::{JobBook, JobId, TOMBSTONE, gauges::refresh_gauges, unavailable};
use crate::error::ApiError;
use crate::record::JobView;

/// What erasing a tenant's data deleted.
#[derive(Debug, Serialize, ToSchema)]
pub struct Erased {
    pub jobs: usize,
    pub schedules: usize,
    /// Objects deleted: results, job records, schedules.
    pub objects: usize,
}

impl JobBook {
    /// Cancels a job and erases its results (and its source, when kept apart) at once.
    /// Workers skip its queued tasks; results of tasks in flight are deleted when their
    /// progress report arrives.
    pub async fn cancel(&self, tenant: &str, id: &str) -> Result<JobView, ApiError> {
        let writing = self.writing.lock().await;
        let key = (tenant.to_owned(), id.to_owned());
        let record = {
            let mut jobs = self.jobs.lock().await;
            let record = jobs.get_mut(&key).ok_or(ApiError::NotFound("job"))?;
            if record.state != JobState::Expired {
                record.state = JobState::Cancelled;
            }
            record.finished_at.get_or_insert(Utc::now());
            refresh_gauges(&jobs);
            jobs[&key].clone()
        };
        // The record first: from here on workers skip the job's tasks.
        self.write(&record)
            .await
            .map_err(|e| unavailable("writing the job record", e))?;
        drop(writing);
        self.store
            .delete(&Key::job_source(tenant, id).to_string())
            .await
            .map_err(|e| unavailable("deleting the job's source", e))?;
        let erased = self
            .erase_results(tenant, id)
            .await
            .map_err(|e| unavailable("deleting the results", e))?;
        tracing::info!(tenant, job = %id, objects = erased, "job cancelled and its results erased");
        Ok(record.view(Utc::now()))
    }

    /// Deletes every result object of a job; returns how many there were.
    pub async fn erase_results(&self, tenant: &str, id: &str) -> Result<usize, StoreError> {
        let objects = self.store.list(&job_results_prefix(tenant, id)).await?;
        for object in &objects {
            self.store.delete(&object.key).await?;
        }
        Ok(objects.len())
    }

    /// Erases every job of a tenant at once (the right to erasure): results deleted,
    /// records replaced by tombstones that make workers skip queued tasks, the jobs
    /// forgotten. Objects under the tenant's prefixes that no record names go too.
    pub async fn erase_tenant(&self, tenant: &str) -> Result<(usize, usize), StoreError> {
        let _writing = self.writing.lock().await;
        // Forgotten first: progress from now on deletes, and no flush writes them back.
        let ids: Vec<JobId> = {
            let mut jobs = self.jobs.lock().await;
            let ids: Vec<JobId> = jobs.keys().filter(|(t, _)| t == tenant).cloned().collect();
            jobs.retain(|(t, _), _| t != tenant);
            refresh_gauges(&jobs);
            self.erased.lock().await.extend(ids.iter().cloned());
            self.dirty.lock().await.retain(|(t, _)| t != tenant);
            ids
        };
        let mut objects = 0;
        for (t, id) in &ids {
            // The tombstones first: from here on workers skip the job's tasks.
            for key in [Key::job_state(t, id), Key::job(t, id)] {
                self.store.put(&key.to_string(), TOMBSTONE.to_vec()).await?;
            }
            objects += self.erase_results(t, id).await?;
        }
        for area in Area::SWEPT {
            for object in self.store.list(&area.of_tenant(tenant)).await? {
                let tombstone = match Key::parse(&object.key) {
                    Some(Key::Job { tenant, job } | Key::JobState { tenant, job }) => {
                        ids.contains(&(tenant, job))
                    }
                    _ => false,
                };
                if !tombstone {
                    self.store.delete(&object.key).await?;
                    objects += 1;
                }
            }
        }
        Ok((ids.len(), objects))
    }
}
