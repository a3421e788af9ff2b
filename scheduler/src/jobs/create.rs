//! Creating a job: validate, check the quotas, expand the source, write the record,
//! publish the tasks.

use chrono::Utc;
use tagfleet_contracts::job::JobState;
use tagfleet_contracts::keys::Key;
use tagfleet_contracts::secrets::Access;
use tagfleet_contracts::{S3Location, TaskMessage};

use super::quotas::InFlight;
use super::{JobBook, JobId, gauges::refresh_gauges, unavailable};
use crate::error::ApiError;
use crate::metrics;
use crate::record::{Counts, JobRecord, JobView, RECORD_VERSION, Round, without_refs};
use crate::spec::{Invalid, JobSpec, Source};

impl JobBook {
    /// Creates a job: validates, expands the source, writes the record, publishes the
    /// tasks. A refused spec, or one over the tenant's quotas (429), leaves nothing behind.
    pub async fn create(
        &self,
        tenant: &str,
        spec: JobSpec,
        schedule_id: Option<String>,
    ) -> Result<JobView, ApiError> {
        let model = spec.validate(&self.config.models, &self.config.categorizers)?;
        self.check_locations(tenant, &spec)?;
        // At the jobs quota already: refused before the source is read.
        let one_job = InFlight { jobs: 1, images: 0 };
        self.check_quotas(&*self.jobs.lock().await, tenant, one_job, Utc::now())?;
        let refs = self
            .sources
            .expand(&spec.source, self.tenant(tenant)?)
            .await?;
        // Counted against the quotas from here until the job is in the book.
        let _reservation = self.reserve(tenant, refs.len() as u64).await?;
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
            source_apart: false,
            results_delivered: false,
        };
        let messages = self.messages(&record, 0, &refs);
        record.rounds.push(Round::published(&messages));
        if !record.spec.options.retain {
            // Keep nothing: the record holds counts, not where the images were.
            record.spec.source = Source::Urls { urls: Vec::new() };
            record.source_withheld = true;
        } else if let Some(kind) = without_refs(&record.spec.source) {
            // Refs stay out of the records held in memory (and loaded at every start):
            // they are read back only for a retry.
            let source = std::mem::replace(&mut record.spec.source, kind);
            let body = serde_json::to_vec(&source).expect("sources serialise");
            drop(source);
            self.store
                .put(&Key::job_source(tenant, &id).to_string(), body)
                .await
                .map_err(|e| unavailable("writing the job's source", e))?;
            record.source_apart = true;
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

    /// Refuses (403) a spec whose output, S3 prefix or stored manifest lies outside the
    /// tenant's allow-lists, without any S3 call. The refs inside a manifest are checked
    /// when it is read.
    pub fn check_locations(&self, tenant: &str, spec: &JobSpec) -> Result<(), ApiError> {
        let secrets = self.tenant(tenant)?;
        if let Some(output) = &spec.output {
            self.sources
                .fence(secrets, output, Access::Write, "output")?;
        }
        let stored = match &spec.source {
            Source::S3Prefix { uri, .. } => S3Location::parse(uri),
            Source::Manifest { uri: Some(uri), .. } => S3Location::parse_object(uri),
            _ => return Ok(()),
        };
        let location = stored.map_err(|e| Invalid::new("source.uri", e.to_string()))?;
        self.sources
            .fence(secrets, &location, Access::Read, "source.uri")
    }

    /// The task messages of `refs` for round `round` of a job.
    pub(super) fn messages(
        &self,
        record: &JobRecord,
        round: usize,
        refs: &[String],
    ) -> Vec<TaskMessage> {
        record
            .task_plan()
            .messages(round, refs, self.config.chunk_size)
    }

    /// Publishes with confirms; a failure marks the job failed (its published tasks are
    /// then skipped by workers) and answers 503.
    pub(super) async fn publish(
        &self,
        key: &JobId,
        messages: Vec<TaskMessage>,
        images: u64,
    ) -> Result<JobView, ApiError> {
        let tasks = messages.len() as u64;
        match self.queues.publish(&messages).await {
            Ok(()) => {
                metrics::TASKS_PUBLISHED.inc_by(tasks);
                metrics::IMAGES
                    .with_label_values(&["submitted"])
                    .inc_by(images);
                let jobs = self.jobs.lock().await;
                refresh_gauges(&jobs);
                // Gone when the tenant's data was erased meanwhile: its tasks are skipped.
                jobs.get(key)
                    .map(|record| record.view(Utc::now()))
                    .ok_or_else(erased_meanwhile)
            }
            Err(e) => {
                tracing::error!(job = %key.1, error = %e, "publishing the tasks failed");
                let record = {
                    let mut jobs = self.jobs.lock().await;
                    let record = jobs.get_mut(key).ok_or_else(erased_meanwhile)?;
                    record.state = JobState::Failed;
                    record.error = Some("its tasks could not be published".into());
                    record.finished_at = Some(Utc::now());
                    let record = record.clone();
                    refresh_gauges(&jobs);
                    record
                };
                if let Err(e) = self.write(&record).await {
                    tracing::error!(job = %key.1, error = %e, "writing the failed job record failed");
                }
                Err(unavailable("publishing the tasks", e))
            }
        }
    }
}

/// A job erased with its tenant's data while it was being created.
fn erased_meanwhile() -> ApiError {
    ApiError::Gone("the job was erased with the tenant's data while it was created".into())
}
