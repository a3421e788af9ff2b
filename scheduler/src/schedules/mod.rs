//! Recurring jobs: a cron expression in a time zone ([`timing`]), and the job spec each
//! firing creates. Schedules are kept at `schedules/<tenant>/<id>.json`.
//!
//! - Every schedule fires, and never more often than the minimum interval: an expression
//!   with no next date or with firings closer than that is refused.
//! - Its next firing is computed when it is created, loaded or fired, and kept with it:
//!   a tick compares times and evaluates no expression.
//! - A firing missed while the scheduler was down runs once when it comes back, not once
//!   per missed occurrence.
//! - What it keeps: a schedule whose job keeps nothing (`retain: false`) may not hold
//!   refs (an inline manifest, URLs), only where images are (an S3 prefix or manifest
//!   uri); one that holds refs expires [`ScheduleLimits::retention`] after its creation.
//!   Deleting a schedule, expiring it or erasing its tenant deletes it from the store.
//! - Creating, firing, deleting, expiring and erasing exclude each other, so an erasure
//!   never lands in the middle of a firing (which would write the schedule back and
//!   create a job after the tenant's data was erased).

mod timing;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tagfleet_contracts::keys::{Area, Key};
use tagfleet_io::{ObjectStore, StoreError};
use tokio::sync::Mutex;
use utoipa::ToSchema;

use crate::error::{ApiError, QuotaExceeded};
use crate::jobs::{Erased, JobBook};
use crate::metrics;
use crate::spec::{Invalid, JobSpec, Source};
use timing::Timing;

/// What a user sends to create a schedule.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSpec {
    /// Cron expression: `min hour day month weekday`, or with seconds first. Firings
    /// must be at least the scheduler's minimum interval apart (5 minutes by default).
    pub cron: String,
    /// IANA time zone the expression is read in, e.g. `Europe/Berlin`.
    #[serde(default = "utc")]
    pub time_zone: String,
    /// The job each firing creates. With `options.retain: false` its source must say
    /// where the images are (`s3_prefix`, manifest `uri`), not list them.
    pub job: JobSpec,
}

fn utc() -> String {
    "UTC".into()
}

/// A schedule as stored and shown.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Schedule {
    pub id: String,
    pub tenant: String,
    pub cron: String,
    pub time_zone: String,
    pub job: JobSpec,
    pub created_at: DateTime<Utc>,
    /// The occurrence the last firing stood for.
    pub last_fired: Option<DateTime<Utc>>,
    /// The job the last firing created.
    pub last_job: Option<String>,
    /// Why the last firing created no job.
    pub last_error: Option<String>,
    /// When it fires next.
    #[serde(default)]
    pub next_firing: Option<DateTime<Utc>>,
    /// When it is deleted, with the refs it holds: set when its job's source lists refs
    /// (an inline manifest, URLs); a schedule naming only where images are has none.
    #[serde(default)]
    pub expires_at: Option<DateTime<Utc>>,
}

/// The rules every schedule keeps.
#[derive(Debug, Clone)]
pub struct ScheduleLimits {
    /// One schedule fires at most this often.
    pub min_interval: Duration,
    /// How long a schedule holding refs is kept after its creation.
    pub retention: Duration,
}

impl Default for ScheduleLimits {
    fn default() -> Self {
        Self {
            min_interval: Duration::from_secs(300),
            retention: Duration::from_secs(30 * 24 * 3600),
        }
    }
}

/// Whether a job's source is the refs themselves rather than where they are.
fn holds_refs(job: &JobSpec) -> bool {
    matches!(
        job.source,
        Source::Urls { .. }
            | Source::Manifest {
                inline: Some(_),
                ..
            }
    )
}

impl Schedule {
    fn key(&self) -> String {
        Key::schedule(&self.tenant, &self.id).to_string()
    }

    fn expired(&self, now: DateTime<Utc>) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }
}

type ScheduleId = (String, String);

pub struct Schedules {
    store: Arc<dyn ObjectStore>,
    limits: ScheduleLimits,
    all: Mutex<BTreeMap<ScheduleId, Schedule>>,
    /// Held while schedules change in the store and in memory: creating, firing (the job
    /// included), deleting, expiring and erasing a tenant take turns.
    changing: Mutex<()>,
    /// Cron expressions parsed since start: a tick compares stored times and parses none.
    cron_parses: AtomicU64,
}

impl Schedules {
    pub fn new(store: Arc<dyn ObjectStore>, limits: ScheduleLimits) -> Self {
        Self {
            store,
            limits,
            all: Mutex::new(BTreeMap::new()),
            changing: Mutex::new(()),
            cron_parses: AtomicU64::new(0),
        }
    }

    fn timing(&self, cron: &str, time_zone: &str) -> Result<Timing, Invalid> {
        self.cron_parses.fetch_add(1, Ordering::Relaxed);
        Timing::parse(cron, time_zone)
    }

    /// When a schedule fires next, counting from its last firing (or its creation).
    fn plan(&self, schedule: &Schedule) -> Option<DateTime<Utc>> {
        let timing = self.timing(&schedule.cron, &schedule.time_zone).ok()?;
        let from = schedule.last_fired.unwrap_or(schedule.created_at);
        timing.next_firing(schedule.last_fired, from, self.limits.min_interval)
    }

    /// Reads every schedule in the store, plans its next firing, and deletes those past
    /// their retention. Returns how many remain.
    pub async fn load(&self) -> Result<usize, StoreError> {
        let mut loaded = BTreeMap::new();
        for object in self.store.list(Area::Schedules.prefix()).await? {
            let body = match self.store.get(&object.key).await {
                Ok(body) => body,
                Err(StoreError::NotFound(_)) => continue,
                Err(StoreError::Expired(_)) => {
                    // Stores keep schedules past the results' retention; one that does not
                    // costs this schedule, not the start of the scheduler.
                    tracing::warn!(key = %object.key, "skipping a schedule the store calls expired");
                    continue;
                }
                Err(e) => return Err(e),
            };
            let mut schedule = match serde_json::from_slice::<Schedule>(&body) {
                Ok(s) => s,
                Err(e) => {
                    // Where, not what: serde quotes the values it could not take.
                    tracing::warn!(key = %object.key, line = e.line(), column = e.column(),
                        "skipping an unreadable schedule");
                    continue;
                }
            };
            schedule.next_firing = self.plan(&schedule);
            if schedule.next_firing.is_none() {
                tracing::warn!(tenant = %schedule.tenant, schedule = %schedule.id,
                    "a stored schedule never fires; it stays until deleted");
            }
            // Written before schedules expired: it expires as if it always had.
            if schedule.expires_at.is_none() && holds_refs(&schedule.job) {
                schedule.expires_at = Some(later(schedule.created_at, self.limits.retention));
            }
            loaded.insert((schedule.tenant.clone(), schedule.id.clone()), schedule);
        }
        {
            let mut all = self.all.lock().await;
            for (key, schedule) in loaded {
                // A schedule created while loading is newer than the store's.
                all.entry(key).or_insert(schedule);
            }
        }
        self.expire(Utc::now()).await?;
        Ok(self.all.lock().await.len())
    }

    pub async fn create(
        &self,
        book: &JobBook,
        tenant: &str,
        spec: ScheduleSpec,
    ) -> Result<Schedule, ApiError> {
        let now = Utc::now();
        let first = self
            .timing(&spec.cron, &spec.time_zone)?
            .check(now, self.limits.min_interval)?;
        spec.job
            .validate(book.models(), book.categorizers())
            .map_err(|mut e| {
                e.field = format!("job.{}", e.field);
                e
            })?;
        let holds_refs = holds_refs(&spec.job);
        if holds_refs && !spec.job.options.retain {
            return Err(Invalid::new(
                "job.source",
                "a schedule keeps its job's source to fire again, and a job with \
                 `retain: false` keeps nothing: name where the images are (an s3_prefix \
                 or a manifest uri), not the images",
            )
            .into());
        }
        let schedule = Schedule {
            id: uuid::Uuid::new_v4().simple().to_string(),
            tenant: tenant.to_owned(),
            cron: spec.cron,
            time_zone: spec.time_zone,
            job: spec.job,
            created_at: now,
            last_fired: None,
            last_job: None,
            last_error: None,
            next_firing: Some(first),
            expires_at: holds_refs.then(|| later(now, self.limits.retention)),
        };
        let _changing = self.changing.lock().await;
        let used = self
            .all
            .lock()
            .await
            .keys()
            .filter(|(t, _)| t == tenant)
            .count();
        let limit = book.tenant(tenant)?.quotas.schedules;
        QuotaExceeded::check("schedules", limit as u64, used as u64, 1)?;
        self.write(&schedule).await?;
        self.all
            .lock()
            .await
            .insert((tenant.to_owned(), schedule.id.clone()), schedule.clone());
        tracing::info!(tenant, schedule = %schedule.id, cron = %schedule.cron, "schedule created");
        Ok(schedule)
    }

    async fn write(&self, schedule: &Schedule) -> Result<(), ApiError> {
        let body = serde_json::to_vec(schedule).expect("schedules serialise");
        self.store
            .put(&schedule.key(), body)
            .await
            .map_err(|e| ApiError::Unavailable(format!("writing the schedule: {e}")))
    }

    pub async fn list(&self, tenant: &str) -> Vec<Schedule> {
        self.all
            .lock()
            .await
            .iter()
            .filter(|((t, _), _)| t == tenant)
            .map(|(_, s)| s.clone())
            .collect()
    }

    pub async fn get(&self, tenant: &str, id: &str) -> Result<Schedule, ApiError> {
        self.all
            .lock()
            .await
            .get(&(tenant.to_owned(), id.to_owned()))
            .cloned()
            .ok_or(ApiError::NotFound("schedule"))
    }

    pub async fn delete(&self, tenant: &str, id: &str) -> Result<(), ApiError> {
        let _changing = self.changing.lock().await;
        let key = (tenant.to_owned(), id.to_owned());
        if !self.all.lock().await.contains_key(&key) {
            return Err(ApiError::NotFound("schedule"));
        }
        self.store
            .delete(&Key::schedule(tenant, id).to_string())
            .await
            .map_err(|e| ApiError::Unavailable(format!("deleting the schedule: {e}")))?;
        self.all.lock().await.remove(&key);
        Ok(())
    }

    /// Deletes the schedules past their retention; returns how many.
    pub async fn expire(&self, now: DateTime<Utc>) -> Result<usize, StoreError> {
        let _changing = self.changing.lock().await;
        let expired: Vec<Schedule> = self
            .all
            .lock()
            .await
            .values()
            .filter(|s| s.expired(now))
            .cloned()
            .collect();
        for schedule in &expired {
            self.store.delete(&schedule.key()).await?;
            self.all
                .lock()
                .await
                .remove(&(schedule.tenant.clone(), schedule.id.clone()));
            tracing::info!(tenant = %schedule.tenant, schedule = %schedule.id,
                "schedule past its retention deleted with its refs");
        }
        Ok(expired.len())
    }

    /// Erases all of a tenant's data (the right to erasure): its schedules, then its jobs
    /// with their records and results (see [`JobBook::erase_tenant`]). No firing runs
    /// meanwhile: one in progress finishes first, and its job is erased too.
    pub async fn erase_tenant(&self, book: &JobBook, tenant: &str) -> Result<Erased, StoreError> {
        let _changing = self.changing.lock().await;
        // Forgotten first: nothing fires from here on, even if the store fails below.
        self.all.lock().await.retain(|(t, _), _| t != tenant);
        let mut schedules = 0;
        for object in self.store.list(&Area::Schedules.of_tenant(tenant)).await? {
            self.store.delete(&object.key).await?;
            schedules += 1;
        }
        let (jobs, objects) = book.erase_tenant(tenant).await?;
        Ok(Erased {
            jobs,
            schedules,
            objects: objects + schedules,
        })
    }

    /// Fires every schedule that is due at `now`, once each, however many occurrences
    /// were missed. Returns the number of firings.
    pub async fn fire_due(&self, book: &JobBook, now: DateTime<Utc>) -> usize {
        let due: Vec<ScheduleId> = self
            .all
            .lock()
            .await
            .iter()
            .filter(|(_, s)| !s.expired(now) && s.next_firing.is_some_and(|next| next <= now))
            .map(|(key, _)| key.clone())
            .collect();
        let mut fired = 0;
        for key in due {
            let _changing = self.changing.lock().await;
            // Deleted or erased since the tick looked: it stays so.
            let Some(mut schedule) = self.all.lock().await.get(&key).cloned() else {
                continue;
            };
            self.fire(book, &mut schedule, now).await;
            if let Err(e) = self.write(&schedule).await {
                tracing::error!(schedule = %schedule.id, error = %e, "recording the firing failed");
            }
            self.all.lock().await.insert(key, schedule);
            fired += 1;
        }
        fired
    }

    /// Creates the schedule's job and records the firing in `schedule`.
    async fn fire(&self, book: &JobBook, schedule: &mut Schedule, now: DateTime<Utc>) {
        metrics::SCHEDULE_FIRINGS.inc();
        let created = book
            .create(
                &schedule.tenant,
                schedule.job.clone(),
                Some(schedule.id.clone()),
            )
            .await;
        match created {
            Ok(job) => {
                tracing::info!(tenant = %schedule.tenant, schedule = %schedule.id, job = %job.id, "schedule fired");
                schedule.last_job = Some(job.id);
                schedule.last_error = None;
            }
            Err(e) => {
                // The reason is the tenant's, in `last_error`; the log names the field at
                // fault and no more, whatever a reason may quote in the future.
                let field = match &e {
                    ApiError::Invalid(invalid) => invalid.field.as_str(),
                    _ => "-",
                };
                tracing::warn!(tenant = %schedule.tenant, schedule = %schedule.id,
                    status = e.status().as_u16(), field, "schedule fired but created no job");
                schedule.last_error = Some(e.to_string());
            }
        }
        match self.timing(&schedule.cron, &schedule.time_zone) {
            Ok(timing) => {
                let occurrence = timing.latest(now).unwrap_or(now);
                schedule.last_fired = Some(occurrence);
                schedule.next_firing =
                    timing.next_firing(Some(occurrence), now, self.limits.min_interval);
            }
            Err(_) => {
                schedule.last_fired = Some(now);
                schedule.next_firing = None;
            }
        }
    }
}

/// `d` after `t`, or the end of time.
fn later(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    t.checked_add_signed(timing::delta(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

#[cfg(test)]
mod tests;
