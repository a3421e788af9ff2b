//! The job book: every job the scheduler knows, in memory and in the store; every change
//! is written to the job's record before it is acknowledged. This file holds the book
//! and how it is read; each of its other jobs has a file of its own:
//! [`create`] (expand, chunk, persist, publish), [`progress`] (count what workers report,
//! once per task), [`reconcile`] (count tasks from their result objects), [`deliver`]
//! (deliver-once results), [`erase`] (cancel, the right to erasure), [`retry`]
//! (re-publish images without a result), [`expire`] (jobs past their retention),
//! [`quotas`] (jobs and images in flight per tenant) and [`gauges`] (metrics).

mod create;
mod deliver;
mod erase;
mod expire;
mod gauges;
mod progress;
mod quotas;
mod reconcile;
mod retry;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tagfleet_contracts::Secrets;
use tagfleet_contracts::job::{JobHead, JobState};
use tagfleet_contracts::keys::{Area, Key};
use tagfleet_contracts::retention::is_expired;
use tagfleet_contracts::secrets::TenantSecrets;
use tagfleet_io::queue::TaskQueues;
use tagfleet_io::{ObjectStore, StoreError};
use tokio::sync::Mutex;
use utoipa::ToSchema;

use crate::error::ApiError;
use crate::record::{JobRecord, JobView};
use crate::sources::SourceReader;
use gauges::refresh_gauges;

/// How the scheduler turns jobs into tasks.
#[derive(Debug, Clone)]
pub struct BookConfig {
    /// Models the fleet serves, `name@version`; the first is the default.
    pub models: Vec<String>,
    /// Categorizers the workers have, for `options.categorizer`.
    pub categorizers: Vec<String>,
    /// Refs per task message.
    pub chunk_size: usize,
    /// How long results and job records are kept.
    pub retention: Duration,
}

type JobId = (String, String);

pub struct JobBook {
    store: Arc<dyn ObjectStore>,
    /// A task queue per model the fleet serves.
    queues: TaskQueues,
    secrets: Secrets,
    sources: SourceReader,
    config: BookConfig,
    jobs: Mutex<BTreeMap<JobId, JobRecord>>,
    /// Jobs changed in memory and not yet written.
    dirty: Mutex<BTreeSet<JobId>>,
    /// Results of erased jobs that reports named, not yet deleted.
    stale: Mutex<BTreeSet<Key>>,
    /// Jobs erased with their tenant's data: results of their tasks still in flight are
    /// deleted as they are reported.
    erased: Mutex<HashSet<JobId>>,
    /// Held while records are written from memory (flush) and while they are erased or
    /// expired, so a flush never writes a record back over its tombstone or deletion.
    writing: Mutex<()>,
    /// Deliver-once jobs whose results a read holds now.
    readers: deliver::Readers,
    /// Jobs and images of creations and retries under way, counted against quotas.
    reserved: quotas::Reservations,
}

/// What replaces the record and the state object of an erased job.
pub(crate) use tagfleet_contracts::job::TOMBSTONE;

/// A page of the tenant's jobs, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobPage {
    pub jobs: Vec<JobView>,
    /// Pass as `after` for the next page; absent on the last page.
    pub next: Option<String>,
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> ApiError {
    ApiError::Unavailable(format!("{what}: {e}"))
}

pub use erase::Erased;
pub use retry::Retried;

impl JobBook {
    pub fn new(
        store: Arc<dyn ObjectStore>,
        queues: TaskQueues,
        secrets: Secrets,
        sources: SourceReader,
        config: BookConfig,
    ) -> Self {
        Self {
            store,
            queues,
            secrets,
            sources,
            config,
            jobs: Mutex::new(BTreeMap::new()),
            dirty: Mutex::new(BTreeSet::new()),
            stale: Mutex::new(BTreeSet::new()),
            erased: Mutex::new(HashSet::new()),
            writing: Mutex::new(()),
            readers: deliver::Readers::default(),
            reserved: quotas::Reservations::default(),
        }
    }

    pub fn secrets(&self) -> &Secrets {
        &self.secrets
    }

    /// The secrets of a tenant the book acts for: its key, allow-lists and quotas.
    pub(crate) fn tenant(&self, tenant: &str) -> Result<&TenantSecrets, ApiError> {
        self.secrets.get(tenant).ok_or_else(|| {
            ApiError::Conflict("the tenant is not in the secrets file any more".into())
        })
    }

    pub fn models(&self) -> &[String] {
        &self.config.models
    }

    pub fn categorizers(&self) -> &[String] {
        &self.config.categorizers
    }

    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// Reads every job record in the store (a restarted scheduler picks up where it was).
    /// Records past their retention are left to the sweeper.
    pub async fn load(&self) -> Result<usize, StoreError> {
        let mut loaded = BTreeMap::new();
        for object in self.store.list(Area::Jobs.prefix()).await? {
            let Some(Key::Job { tenant, job }) = Key::parse(&object.key) else {
                continue; // state objects follow their records
            };
            let body = match self.store.get(&object.key).await {
                Ok(body) => body,
                Err(StoreError::Expired(_) | StoreError::NotFound(_)) => continue,
                Err(e) => return Err(e),
            };
            if body == TOMBSTONE {
                self.erased.lock().await.insert((tenant, job));
                continue;
            }
            match JobRecord::from_json(&body) {
                Ok(mut record) => {
                    record.assume_sizes(self.config.chunk_size);
                    loaded.insert((record.tenant.clone(), record.id.clone()), record);
                }
                Err(e) => {
                    tracing::warn!(key = %object.key, error = %e, "skipping an unreadable job record")
                }
            }
        }
        let count = loaded.len();
        let mut jobs = self.jobs.lock().await;
        for (key, record) in loaded {
            // A job created while loading is newer than its record.
            jobs.entry(key).or_insert(record);
        }
        refresh_gauges(&jobs);
        Ok(count)
    }

    /// Writes a job's record, then its state object (what workers read).
    async fn write(&self, record: &JobRecord) -> Result<(), StoreError> {
        self.store
            .put(
                &Key::job(&record.tenant, &record.id).to_string(),
                record.to_json(),
            )
            .await?;
        let head = JobHead {
            state: record.state,
        };
        self.store
            .put(
                &Key::job_state(&record.tenant, &record.id).to_string(),
                head.to_json(),
            )
            .await
    }

    pub async fn get(&self, tenant: &str, id: &str) -> Result<JobView, ApiError> {
        let jobs = self.jobs.lock().await;
        jobs.get(&(tenant.to_owned(), id.to_owned()))
            .map(|r| self.view_as_of(r, Utc::now()))
            .ok_or(ApiError::NotFound("job"))
    }

    /// The record as it stands now: a job past its retention is `expired` from that moment
    /// on, before the sweep has erased anything.
    pub async fn record(&self, tenant: &str, id: &str) -> Result<JobRecord, ApiError> {
        let jobs = self.jobs.lock().await;
        jobs.get(&(tenant.to_owned(), id.to_owned()))
            .map(|r| self.as_of(r, Utc::now()))
            .ok_or(ApiError::NotFound("job"))
    }

    /// Whether a job is past its retention at `now`: from then on it reads as expired.
    fn past_retention(&self, record: &JobRecord, now: DateTime<Utc>) -> bool {
        self.past(record, self.config.retention, now)
    }

    /// Whether `age` has passed since the job was created, by the retention rule.
    fn past(&self, record: &JobRecord, age: Duration, now: DateTime<Utc>) -> bool {
        is_expired(record.created_at.into(), Some(age), now.into())
    }

    /// The view of a record as it stands now, without copying the record (its spec may
    /// hold a whole inline manifest).
    fn view_as_of(&self, record: &JobRecord, now: DateTime<Utc>) -> JobView {
        let mut view = record.view(now);
        if self.past_retention(record, now) {
            view.state = JobState::Expired;
            view.eta_seconds = None;
        }
        view
    }

    fn as_of(&self, record: &JobRecord, now: DateTime<Utc>) -> JobRecord {
        let mut record = record.clone();
        if self.past_retention(&record, now) {
            record.state = JobState::Expired;
        }
        record
    }

    /// The tenant's jobs, newest first, `limit` at a time after the job `after`.
    pub async fn list(&self, tenant: &str, limit: usize, after: Option<&str>) -> JobPage {
        let now = Utc::now();
        let jobs = self.jobs.lock().await;
        let mut mine: Vec<&JobRecord> = jobs
            .range((tenant.to_owned(), String::new())..)
            .take_while(|((t, _), _)| t == tenant)
            .map(|(_, r)| r)
            .collect();
        mine.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(a.id.cmp(&b.id)));
        let start = after
            .and_then(|a| mine.iter().position(|r| r.id == a).map(|i| i + 1))
            .unwrap_or(0);
        let page: Vec<JobView> = mine
            .iter()
            .skip(start)
            .take(limit)
            .map(|r| self.view_as_of(r, now))
            .collect();
        let next = (start + page.len() < mine.len())
            .then(|| page.last().map(|v| v.id.clone()))
            .flatten();
        JobPage { jobs: page, next }
    }

    /// Writes every changed record.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let _writing = self.writing.lock().await;
        let keys: Vec<JobId> = std::mem::take(&mut *self.dirty.lock().await)
            .into_iter()
            .collect();
        for (i, key) in keys.iter().enumerate() {
            let record = self.jobs.lock().await.get(key).cloned();
            if let Some(record) = record
                && let Err(e) = self.write(&record).await
            {
                // Keep the rest for the next flush: nothing is acked before it is written.
                self.dirty.lock().await.extend(keys[i..].iter().cloned());
                return Err(e);
            }
        }
        Ok(())
    }
}
