//! The job book: creating jobs (expand, chunk, persist, publish), counting progress from
//! workers once per task, cancelling and erasing, retrying failed images, and expiring
//! jobs past their retention. The book lives in memory and in the store: every change is
//! written to `jobs/<tenant>/<job>.json` before it is acknowledged.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tagfleet_core::job::JobState;
use tagfleet_core::keys::{job_key, job_results_prefix, result_key};
use tagfleet_core::schema::{ProgressMessage, ResultLine, SCHEMA_VERSION, Status, TaskItem};
use tagfleet_core::{ObjectStore, Pseudonymiser, Queue, Secrets, StoreError, TaskMessage};
use tokio::sync::Mutex;
use utoipa::ToSchema;

use crate::error::ApiError;
use crate::metrics;
use crate::record::{Counts, JobRecord, JobView, RECORD_VERSION, Round, task_id};
use crate::sources::SourceReader;
use crate::spec::{JobSpec, Source};

/// How the scheduler turns jobs into tasks.
#[derive(Debug, Clone)]
pub struct BookConfig {
    /// Models the fleet serves, `name@version`; the first is the default.
    pub models: Vec<String>,
    /// Refs per task message.
    pub chunk_size: usize,
    /// How long results and job records are kept.
    pub retention: Duration,
}

type JobId = (String, String);

pub struct JobBook {
    store: Arc<dyn ObjectStore>,
    queue: Arc<dyn Queue>,
    secrets: Secrets,
    sources: SourceReader,
    config: BookConfig,
    jobs: Mutex<BTreeMap<JobId, JobRecord>>,
    /// Jobs changed in memory and not yet written.
    dirty: Mutex<BTreeSet<JobId>>,
    /// Jobs erased with their tenant's data: results of their tasks still in flight are
    /// deleted as they are reported.
    erased: Mutex<HashSet<JobId>>,
    /// Held while records are written from memory (flush) and while they are erased or
    /// expired, so a flush never writes a record back over its tombstone or deletion.
    writing: Mutex<()>,
}

/// What replaces the record of an erased job: workers skip its tasks, and nothing of the
/// job but its id remains.
const TOMBSTONE: &[u8] = br#"{"state":"cancelled","erased":true}"#;

/// What erasing a tenant's data deleted.
#[derive(Debug, Serialize, ToSchema)]
pub struct Erased {
    pub jobs: usize,
    pub schedules: usize,
    /// Objects deleted: results, job records, schedules.
    pub objects: usize,
}

/// A page of the tenant's jobs, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobPage {
    pub jobs: Vec<JobView>,
    /// Pass as `after` for the next page; absent on the last page.
    pub next: Option<String>,
}

/// What a retry re-published.
#[derive(Debug, Serialize, ToSchema)]
pub struct Retried {
    pub job: JobView,
    /// Failed images published again.
    pub images: u64,
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> ApiError {
    ApiError::Unavailable(format!("{what}: {e}"))
}

impl JobBook {
    pub fn new(
        store: Arc<dyn ObjectStore>,
        queue: Arc<dyn Queue>,
        secrets: Secrets,
        sources: SourceReader,
        config: BookConfig,
    ) -> Self {
        Self {
            store,
            queue,
            secrets,
            sources,
            config,
            jobs: Mutex::new(BTreeMap::new()),
            dirty: Mutex::new(BTreeSet::new()),
            erased: Mutex::new(HashSet::new()),
            writing: Mutex::new(()),
        }
    }

    pub fn secrets(&self) -> &Secrets {
        &self.secrets
    }

    pub fn models(&self) -> &[String] {
        &self.config.models
    }

    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// Reads every job record in the store (a restarted scheduler picks up where it was).
    /// Records past their retention are left to the sweeper.
    pub async fn load(&self) -> Result<usize, StoreError> {
        let mut loaded = BTreeMap::new();
        for object in self.store.list("jobs/").await? {
            let body = match self.store.get(&object.key).await {
                Ok(body) => body,
                Err(StoreError::Expired(_) | StoreError::NotFound(_)) => continue,
                Err(e) => return Err(e),
            };
            if body == TOMBSTONE {
                if let Some((tenant, id)) = object
                    .key
                    .strip_prefix("jobs/")
                    .and_then(|k| k.strip_suffix(".json"))
                    .and_then(|k| k.split_once('/'))
                {
                    self.erased
                        .lock()
                        .await
                        .insert((tenant.to_owned(), id.to_owned()));
                }
                continue;
            }
            match JobRecord::from_json(&body) {
                Ok(record) => {
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

    /// Creates a job: validates, expands the source, writes the record, publishes the
    /// tasks. A refused spec leaves nothing behind.
    pub async fn create(
        &self,
        tenant: &str,
        spec: JobSpec,
        schedule_id: Option<String>,
    ) -> Result<JobView, ApiError> {
        let model = spec.validate(&self.config.models)?;
        let refs = self.sources.expand(&spec.source).await?;
        let id = uuid::Uuid::new_v4().simple().to_string();
        let now = Utc::now();
        let mut record = JobRecord {
            v: RECORD_VERSION,
            id: id.clone(),
            tenant: tenant.to_owned(),
            state: JobState::Queued,
            spec,
            model,
            created_at: now,
            started_at: None,
            finished_at: None,
            schedule_id,
            counts: Counts {
                total: refs.len() as u64,
                ..Counts::default()
            },
            rounds: Vec::new(),
            error: None,
            source_withheld: false,
            results_delivered: false,
        };
        let messages = self.messages(&record, 0, &refs);
        record.rounds.push(Round::new(messages.len() as u32));
        if !record.spec.options.retain {
            // Keep nothing: the record holds counts, not where the images were.
            record.spec.source = Source::Urls { urls: Vec::new() };
            record.source_withheld = true;
        }
        self.write(&record)
            .await
            .map_err(|e| unavailable("writing the job record", e))?;
        let key = (tenant.to_owned(), id.clone());
        self.jobs.lock().await.insert(key.clone(), record.clone());
        let view = self.publish(&key, messages, refs.len() as u64).await?;
        tracing::info!(tenant, job = %id, images = refs.len(), tasks = record.rounds[0].tasks, "job created");
        Ok(view)
    }

    /// The task messages of `refs` for round `round` of a job.
    fn messages(&self, record: &JobRecord, round: usize, refs: &[String]) -> Vec<TaskMessage> {
        refs.chunks(self.config.chunk_size.max(1))
            .enumerate()
            .map(|(n, chunk)| TaskMessage {
                v: SCHEMA_VERSION,
                job_id: record.id.clone(),
                task_id: task_id(round, n + 1),
                tenant: record.tenant.clone(),
                analyses: record.spec.analyses.clone(),
                model: record.model.clone(),
                options: record.spec.options.clone(),
                output: record.spec.output.clone(),
                items: chunk
                    .iter()
                    .map(|r| TaskItem {
                        reference: r.clone(),
                    })
                    .collect(),
            })
            .collect()
    }

    /// Publishes with confirms; a failure marks the job failed (its published tasks are
    /// then skipped by workers) and answers 503.
    async fn publish(
        &self,
        key: &JobId,
        messages: Vec<TaskMessage>,
        images: u64,
    ) -> Result<JobView, ApiError> {
        let tasks = messages.len() as u64;
        let bodies = messages.iter().map(TaskMessage::to_json).collect();
        match self.queue.publish_batch(bodies).await {
            Ok(()) => {
                metrics::TASKS_PUBLISHED.inc_by(tasks);
                metrics::IMAGES
                    .with_label_values(&["submitted"])
                    .inc_by(images);
                let jobs = self.jobs.lock().await;
                refresh_gauges(&jobs);
                Ok(jobs[key].view(Utc::now()))
            }
            Err(e) => {
                tracing::error!(job = %key.1, error = %e, "publishing the tasks failed");
                let record = {
                    let mut jobs = self.jobs.lock().await;
                    let record = jobs.get_mut(key).expect("the job was just inserted");
                    record.state = JobState::Failed;
                    record.error = Some("its tasks could not be published".into());
                    record.finished_at = Some(Utc::now());
                    refresh_gauges(&jobs);
                    jobs[key].clone()
                };
                if let Err(e) = self.write(&record).await {
                    tracing::error!(job = %key.1, error = %e, "writing the failed job record failed");
                }
                Err(unavailable("publishing the tasks", e))
            }
        }
    }

    async fn write(&self, record: &JobRecord) -> Result<(), StoreError> {
        self.store
            .put(&job_key(&record.tenant, &record.id), record.to_json())
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

    fn past_retention(&self, record: &JobRecord, now: DateTime<Utc>) -> bool {
        let retention =
            chrono::Duration::from_std(self.config.retention).unwrap_or(chrono::Duration::MAX);
        record.created_at + retention <= now
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

    /// Counts a batch of progress reports and writes the changed records; the caller acks
    /// the messages after this returns `Ok`, so a crash in between means recounting, which
    /// the per-task bitmap makes harmless.
    pub async fn apply_progress(&self, reports: &[ProgressMessage]) -> Result<(), StoreError> {
        let now = Utc::now();
        let mut stale = Vec::new();
        {
            let mut jobs = self.jobs.lock().await;
            let mut dirty = self.dirty.lock().await;
            let erased = self.erased.lock().await;
            for report in reports {
                let key = (report.tenant.clone(), report.job_id.clone());
                if erased.contains(&key) {
                    stale.push(result_key(&report.tenant, &report.job_id, &report.task_id));
                    metrics::PROGRESS_MESSAGES
                        .with_label_values(&["duplicate"])
                        .inc();
                    continue;
                }
                let Some(record) = jobs.get_mut(&key) else {
                    metrics::PROGRESS_MESSAGES
                        .with_label_values(&["unknown_job"])
                        .inc();
                    continue;
                };
                if matches!(record.state, JobState::Cancelled | JobState::Expired) {
                    // A task that was in flight when the job was cancelled: its result
                    // must not outlive the erasure.
                    stale.push(result_key(&report.tenant, &report.job_id, &report.task_id));
                    metrics::PROGRESS_MESSAGES
                        .with_label_values(&["duplicate"])
                        .inc();
                    continue;
                }
                let was_final = record.state.is_final();
                if record.count(&report.task_id, report.ok.into(), report.failed.into(), now) {
                    metrics::PROGRESS_MESSAGES
                        .with_label_values(&["counted"])
                        .inc();
                    metrics::IMAGES
                        .with_label_values(&["done"])
                        .inc_by(report.ok.into());
                    metrics::IMAGES
                        .with_label_values(&["failed"])
                        .inc_by(report.failed.into());
                    dirty.insert(key);
                    if record.state.is_final() && !was_final {
                        tracing::info!(tenant = %record.tenant, job = %record.id, state = record.state.name(),
                            done = record.counts.done, failed = record.counts.failed, "job ended");
                    }
                } else {
                    metrics::PROGRESS_MESSAGES
                        .with_label_values(&["duplicate"])
                        .inc();
                }
            }
            refresh_gauges(&jobs);
        }
        for key in stale {
            self.store.delete(&key).await?;
        }
        self.flush().await
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

    /// Cancels a job and erases its results at once. Workers skip its queued tasks; results
    /// of tasks in flight are deleted when their progress report arrives.
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
        let erased = self
            .erase_results(tenant, id)
            .await
            .map_err(|e| unavailable("deleting the results", e))?;
        tracing::info!(tenant, job = %id, objects = erased, "job cancelled and its results erased");
        Ok(record.view(Utc::now()))
    }

    /// A `retain: false` job's results were read once, completely: delete them now and
    /// remember, so the next read says why there is nothing.
    pub async fn results_delivered(&self, tenant: &str, id: &str) -> Result<(), StoreError> {
        let writing = self.writing.lock().await;
        let key = (tenant.to_owned(), id.to_owned());
        let record = {
            let mut jobs = self.jobs.lock().await;
            let Some(record) = jobs.get_mut(&key) else {
                return Ok(());
            };
            record.results_delivered = true;
            record.clone()
        };
        self.write(&record).await?;
        drop(writing);
        let erased = self.erase_results(tenant, id).await?;
        tracing::info!(tenant, job = %id, objects = erased, "results delivered once and deleted (retain: false)");
        Ok(())
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
            // The tombstone first: from here on workers skip the job's tasks.
            self.store.put(&job_key(t, id), TOMBSTONE.to_vec()).await?;
            objects += self.erase_results(t, id).await?;
        }
        for prefix in [format!("results/{tenant}/"), format!("jobs/{tenant}/")] {
            for object in self.store.list(&prefix).await? {
                let tombstone = object.key.starts_with("jobs/")
                    && ids.iter().any(|(t, id)| job_key(t, id) == object.key);
                if !tombstone {
                    self.store.delete(&object.key).await?;
                    objects += 1;
                }
            }
        }
        Ok((ids.len(), objects))
    }

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
        if record.source_withheld {
            return Err(ApiError::Conflict(
                "the job keeps nothing (retain: false), not even its source: submit the \
                 failed images again"
                    .into(),
            ));
        }
        let key = self
            .secrets
            .get(tenant)
            .ok_or_else(|| ApiError::Conflict("the tenant has no pseudonym key".into()))?;
        let pseudonymiser = Pseudonymiser::new(key.key.clone());
        let failed = self
            .take_error_lines(tenant, id)
            .await
            .map_err(|e| unavailable("reading the results", e))?;
        let refs: Vec<String> = self
            .sources
            .expand(&record.spec.source)
            .await
            .map_err(|e| ApiError::Conflict(format!("re-reading the source: {e}")))?
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

    /// Jobs past their retention become `expired`: their record and results are deleted
    /// now (the sweeper and the lifecycle rule are the backstops). Returns how many.
    pub async fn expire(&self, now: DateTime<Utc>) -> Result<usize, StoreError> {
        let retention =
            chrono::Duration::from_std(self.config.retention).unwrap_or(chrono::Duration::MAX);
        let _writing = self.writing.lock().await;
        let due: Vec<JobId> = {
            let mut jobs = self.jobs.lock().await;
            let due: Vec<JobId> = jobs
                .iter()
                .filter(|(_, r)| r.state != JobState::Expired && r.created_at + retention <= now)
                .map(|(k, _)| k.clone())
                .collect();
            // Expired before anything is deleted, and no flush writes them back.
            for key in &due {
                if let Some(r) = jobs.get_mut(key) {
                    r.state = JobState::Expired;
                }
            }
            self.dirty.lock().await.retain(|k| !due.contains(k));
            due
        };
        for (tenant, id) in &due {
            self.erase_results(tenant, id).await?;
            self.store.delete(&job_key(tenant, id)).await?;
        }
        // Expired jobs are remembered for one more retention, then forgotten.
        let mut jobs = self.jobs.lock().await;
        jobs.retain(|_, r| !(r.state == JobState::Expired && r.created_at + retention * 2 <= now));
        refresh_gauges(&jobs);
        Ok(due.len())
    }

    /// Updates the queue depth gauges.
    pub async fn sample_queue(&self) {
        match self.queue.depth().await {
            Ok(Some(depth)) => {
                metrics::QUEUE_MESSAGES
                    .with_label_values(&["tasks"])
                    .set(depth.ready as i64);
                metrics::QUEUE_MESSAGES
                    .with_label_values(&["dead_letter"])
                    .set(depth.dead_lettered as i64);
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "reading the queue depth failed"),
        }
    }
}

/// Jobs by state and the progress of unfinished ones.
fn refresh_gauges(jobs: &BTreeMap<JobId, JobRecord>) {
    let mut by_state: BTreeMap<&str, i64> = BTreeMap::new();
    metrics::JOB_PROGRESS.reset();
    for record in jobs.values() {
        *by_state.entry(record.state.name()).or_default() += 1;
        if !record.state.is_final() && record.counts.total > 0 {
            metrics::JOB_PROGRESS
                .with_label_values(&[&record.tenant, &record.id])
                .set(record.counts.finished() as f64 / record.counts.total as f64);
        }
    }
    for state in JobState::ALL {
        metrics::JOBS
            .with_label_values(&[state.name()])
            .set(by_state.get(state.name()).copied().unwrap_or(0));
    }
}
