//! Recurring jobs: a cron expression (seconds optional) in a time zone, and the job spec
//! each firing creates. Schedules are kept at `schedules/<tenant>/<id>.json` (not swept:
//! they hold no results). A firing missed while the scheduler was down runs once when it
//! comes back, not once per missed occurrence.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds};
use serde::{Deserialize, Serialize};
use tagfleet_contracts::keys::{Area, Key};
use tagfleet_io::{ObjectStore, StoreError};
use tokio::sync::Mutex;
use utoipa::ToSchema;

use crate::error::ApiError;
use crate::jobs::JobBook;
use crate::metrics;
use crate::spec::{Invalid, JobSpec};

/// What a user sends to create a schedule.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSpec {
    /// Cron expression: `min hour day month weekday`, or with seconds first.
    pub cron: String,
    /// IANA time zone the expression is read in, e.g. `Europe/Berlin`.
    #[serde(default = "utc")]
    pub time_zone: String,
    /// The job each firing creates.
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
}

fn parse_cron(expr: &str) -> Result<Cron, Invalid> {
    CronParser::builder()
        .seconds(Seconds::Optional)
        .build()
        .parse(expr)
        .map_err(|e| Invalid::new("cron", e.to_string()))
}

fn parse_tz(name: &str) -> Result<Tz, Invalid> {
    name.parse::<Tz>()
        .map_err(|_| Invalid::new("time_zone", format!("{name:?} is not an IANA time zone")))
}

impl Schedule {
    fn key(&self) -> String {
        Key::schedule(&self.tenant, &self.id).to_string()
    }

    /// The first occurrence after the last firing (or creation).
    fn next_after(&self) -> Option<DateTime<Utc>> {
        let cron = parse_cron(&self.cron).ok()?;
        let tz = parse_tz(&self.time_zone).ok()?;
        let from = self
            .last_fired
            .unwrap_or(self.created_at)
            .with_timezone(&tz);
        cron.find_next_occurrence(&from, false)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }

    /// The latest occurrence at or before `now`: what a (late) firing stands for.
    fn latest_due(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let cron = parse_cron(&self.cron).ok()?;
        let tz = parse_tz(&self.time_zone).ok()?;
        cron.find_previous_occurrence(&now.with_timezone(&tz), true)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }
}

pub struct Schedules {
    store: Arc<dyn ObjectStore>,
    all: Mutex<BTreeMap<(String, String), Schedule>>,
}

impl Schedules {
    pub fn new(store: Arc<dyn ObjectStore>) -> Self {
        Self {
            store,
            all: Mutex::new(BTreeMap::new()),
        }
    }

    pub async fn load(&self) -> Result<usize, StoreError> {
        let mut all = BTreeMap::new();
        for object in self.store.list(Area::Schedules.prefix()).await? {
            let body = match self.store.get(&object.key).await {
                Ok(body) => body,
                Err(StoreError::NotFound(_)) => continue,
                Err(e) => return Err(e),
            };
            match serde_json::from_slice::<Schedule>(&body) {
                Ok(s) => {
                    all.insert((s.tenant.clone(), s.id.clone()), s);
                }
                Err(e) => {
                    tracing::warn!(key = %object.key, error = %e, "skipping an unreadable schedule")
                }
            }
        }
        let count = all.len();
        let mut known = self.all.lock().await;
        for (key, schedule) in all {
            known.entry(key).or_insert(schedule);
        }
        Ok(count)
    }

    pub async fn create(
        &self,
        book: &JobBook,
        tenant: &str,
        spec: ScheduleSpec,
    ) -> Result<Schedule, ApiError> {
        parse_cron(&spec.cron)?;
        parse_tz(&spec.time_zone)?;
        spec.job.validate(book.models()).map_err(|mut e| {
            e.field = format!("job.{}", e.field);
            e
        })?;
        let mut schedule = Schedule {
            id: uuid::Uuid::new_v4().simple().to_string(),
            tenant: tenant.to_owned(),
            cron: spec.cron,
            time_zone: spec.time_zone,
            job: spec.job,
            created_at: Utc::now(),
            last_fired: None,
            last_job: None,
            last_error: None,
            next_firing: None,
        };
        schedule.next_firing = schedule.next_after();
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

    /// Deletes every schedule of a tenant; returns how many there were.
    pub async fn erase_tenant(&self, tenant: &str) -> Result<usize, StoreError> {
        let mut deleted = 0;
        for object in self.store.list(&Area::Schedules.of_tenant(tenant)).await? {
            self.store.delete(&object.key).await?;
            deleted += 1;
        }
        self.all.lock().await.retain(|(t, _), _| t != tenant);
        Ok(deleted)
    }

    /// Fires every schedule that is due at `now`, once each, however many occurrences were
    /// missed. Returns the number of firings.
    pub async fn fire_due(&self, book: &JobBook, now: DateTime<Utc>) -> usize {
        let due: Vec<Schedule> = self
            .all
            .lock()
            .await
            .values()
            .filter(|s| s.next_after().is_some_and(|next| next <= now))
            .cloned()
            .collect();
        for mut schedule in due.iter().cloned() {
            let occurrence = schedule.latest_due(now).unwrap_or(now);
            metrics::SCHEDULE_FIRINGS.inc();
            match book
                .create(
                    &schedule.tenant,
                    schedule.job.clone(),
                    Some(schedule.id.clone()),
                )
                .await
            {
                Ok(job) => {
                    tracing::info!(tenant = %schedule.tenant, schedule = %schedule.id, job = %job.id, "schedule fired");
                    schedule.last_job = Some(job.id);
                    schedule.last_error = None;
                }
                Err(e) => {
                    tracing::warn!(tenant = %schedule.tenant, schedule = %schedule.id, error = %e, "schedule fired but created no job");
                    schedule.last_error = Some(e.to_string());
                }
            }
            schedule.last_fired = Some(occurrence);
            schedule.next_firing = schedule.next_after();
            if let Err(e) = self.write(&schedule).await {
                tracing::error!(schedule = %schedule.id, error = %e, "recording the firing failed");
            }
            let mut all = self.all.lock().await;
            // Deleted while firing: stay deleted.
            if let Some(slot) = all.get_mut(&(schedule.tenant.clone(), schedule.id.clone())) {
                *slot = schedule;
            }
        }
        due.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn schedule(cron: &str, tz: &str, created: DateTime<Utc>) -> Schedule {
        Schedule {
            id: "s".into(),
            tenant: "acme".into(),
            cron: cron.into(),
            time_zone: tz.into(),
            job: crate::spec::parse(
                br#"{"source":{"kind":"urls","urls":["https://a.example/x.jpg"]}}"#,
            )
            .unwrap(),
            created_at: created,
            last_fired: None,
            last_job: None,
            last_error: None,
            next_firing: None,
        }
    }

    #[test]
    fn cron_is_read_in_the_schedules_time_zone() {
        let created = Utc.with_ymd_and_hms(2026, 11, 28, 12, 0, 0).unwrap();
        // 02:00 in Berlin (UTC+1 in winter) is 01:00 UTC.
        let s = schedule("0 2 * * *", "Europe/Berlin", created);
        assert_eq!(
            s.next_after().unwrap(),
            Utc.with_ymd_and_hms(2026, 11, 29, 1, 0, 0).unwrap()
        );
        let s = schedule("*/5 * * * * *", "UTC", created);
        assert_eq!(
            s.next_after().unwrap(),
            Utc.with_ymd_and_hms(2026, 11, 28, 12, 0, 5).unwrap()
        );
    }

    #[test]
    fn many_missed_occurrences_collapse_into_one_firing() {
        let created = Utc.with_ymd_and_hms(2026, 11, 20, 12, 0, 0).unwrap();
        let mut s = schedule("0 2 * * *", "UTC", created);
        let now = Utc.with_ymd_and_hms(2026, 11, 28, 9, 30, 0).unwrap();
        // Eight nights were missed; the firing stands for the latest one...
        let occurrence = s.latest_due(now).unwrap();
        assert_eq!(
            occurrence,
            Utc.with_ymd_and_hms(2026, 11, 28, 2, 0, 0).unwrap()
        );
        s.last_fired = Some(occurrence);
        // ...and the next one is tomorrow, not the next missed night.
        assert!(s.next_after().unwrap() > now);
    }

    #[test]
    fn bad_expressions_and_zones_name_their_field() {
        assert_eq!(parse_cron("61 * * * *").unwrap_err().field, "cron");
        assert_eq!(parse_tz("Mars/Olympus").unwrap_err().field, "time_zone");
    }
}
