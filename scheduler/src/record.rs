//! Job records: what the scheduler knows about a job, persisted at `jobs/<tenant>/<job>.json`
//! after every change, so a restarted scheduler knows every job and its counts. A record
//! stays small: a source that lists refs (an inline manifest, URLs) is kept apart, at
//! `jobs/<tenant>/<job>/source.json`, and read back only for a retry.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tagfleet_contracts::TaskId;
use tagfleet_contracts::job::JobState;
use tagfleet_contracts::schema::TaskPlan;
use utoipa::ToSchema;

use crate::spec::{JobSpec, Source};

/// Version of the record layout.
pub const RECORD_VERSION: u32 = 1;

/// Images of a job by outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Counts {
    /// Images in the job.
    pub total: u64,
    /// Images with a result.
    pub done: u64,
    /// Images that ended in an error line (see their `error.kind` in the results).
    pub failed: u64,
}

impl Counts {
    pub fn finished(&self) -> u64 {
        self.done + self.failed
    }
}

/// A set of task numbers (1-based), as a bitmap written in hex: 3,125 tasks take 782
/// characters, so even large jobs rewrite their record cheaply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskSet {
    bits: Vec<u8>,
}

impl TaskSet {
    pub fn with_capacity(tasks: u32) -> Self {
        Self {
            bits: vec![0; (tasks as usize).div_ceil(8)],
        }
    }

    /// Adds task `n`; false when it was there already (or is out of range).
    pub fn insert(&mut self, n: u32) -> bool {
        let Some(i) = (n as usize).checked_sub(1) else {
            return false;
        };
        let Some(byte) = self.bits.get_mut(i / 8) else {
            return false;
        };
        let mask = 1 << (i % 8);
        let fresh = *byte & mask == 0;
        *byte |= mask;
        fresh
    }

    pub fn len(&self) -> u32 {
        self.bits.iter().map(|b| b.count_ones()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Serialize for TaskSet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(&self.bits))
    }
}

impl<'de> Deserialize<'de> for TaskSet {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let bits = hex::decode(text).map_err(serde::de::Error::custom)?;
        Ok(Self { bits })
    }
}

/// One round of publishing: the first one, then one per retry. Task ids of round 0 are
/// `t000001`…, of round r `r<r>-t000001`….
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Round {
    pub tasks: u32,
    pub done: TaskSet,
}

impl Round {
    pub fn new(tasks: u32) -> Self {
        Self {
            tasks,
            done: TaskSet::with_capacity(tasks),
        }
    }

    pub fn is_complete(&self) -> bool {
        self.done.len() >= self.tasks
    }
}

/// Everything the scheduler keeps about a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    pub v: u32,
    pub id: String,
    pub tenant: String,
    pub state: JobState,
    pub spec: JobSpec,
    /// The model that runs, `name@version`.
    pub model: String,
    pub created_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule_id: Option<String>,
    pub counts: Counts,
    pub rounds: Vec<Round>,
    /// Why the job failed, when it did as a whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// `retain: false`: the source is not kept (the record holds counts only).
    #[serde(default)]
    pub source_withheld: bool,
    /// The source lists refs and is kept apart (`Key::JobSource`); `spec.source` holds
    /// its kind only (see [`without_refs`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub source_apart: bool,
    /// `retain: false`: the results were read once, completely, and deleted.
    #[serde(default)]
    pub results_delivered: bool,
}

impl JobRecord {
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("job records serialise")
    }

    pub fn from_json(body: &[u8]) -> Result<Self, String> {
        let record: JobRecord = serde_json::from_slice(body).map_err(|e| e.to_string())?;
        if record.v != RECORD_VERSION {
            return Err(format!("job record version {} is unknown", record.v));
        }
        Ok(record)
    }

    /// What every task of this job shares.
    pub fn task_plan(&self) -> TaskPlan {
        TaskPlan {
            job_id: self.id.clone(),
            tenant: self.tenant.clone(),
            analyses: self.spec.analyses.clone(),
            model: self.model.clone(),
            options: self.spec.options.clone(),
            output: self.spec.output.clone(),
        }
    }

    /// Counts one finished task; false when it was counted before (a redelivery) or is
    /// not a task of this job.
    pub fn count(&mut self, task_id: &str, ok: u64, failed: u64, now: DateTime<Utc>) -> bool {
        let Ok(TaskId { round, n }) = task_id.parse() else {
            return false;
        };
        let Some(r) = self.rounds.get_mut(round) else {
            return false;
        };
        if n == 0 || n > r.tasks || !r.done.insert(n) {
            return false;
        }
        self.counts.done += ok;
        self.counts.failed += failed;
        if self.state == JobState::Queued {
            self.state = JobState::Running;
            self.started_at.get_or_insert(now);
        }
        if self.state == JobState::Running && self.rounds.iter().all(Round::is_complete) {
            self.state = if self.counts.done == 0 {
                JobState::Failed
            } else {
                JobState::Succeeded
            };
            if self.state == JobState::Failed {
                self.error = Some("every image failed; see the error lines".into());
            }
            self.finished_at = Some(now);
        }
        true
    }

    /// What the API shows.
    pub fn view(&self, now: DateTime<Utc>) -> JobView {
        let end = self.finished_at.unwrap_or(now);
        let rate = self.started_at.and_then(|start| {
            let secs = (end - start).num_milliseconds() as f64 / 1000.0;
            (secs > 0.0).then(|| self.counts.finished() as f64 / secs)
        });
        let remaining = self.counts.total.saturating_sub(self.counts.finished());
        let eta = match (self.state.is_final(), rate) {
            (true, _) => None,
            (false, Some(rate)) if rate > 0.0 => Some(remaining as f64 / rate),
            _ => None,
        };
        JobView {
            id: self.id.clone(),
            state: self.state,
            counts: self.counts,
            images_per_second: rate,
            eta_seconds: eta,
            model: self.model.clone(),
            analyses: self
                .spec
                .analyses
                .iter()
                .map(|a| a.name().to_owned())
                .collect(),
            retain: self.spec.options.retain,
            created_at: self.created_at,
            started_at: self.started_at,
            finished_at: self.finished_at,
            schedule_id: self.schedule_id.clone(),
            error: self.error.clone(),
        }
    }
}

/// What a record keeps of a source that lists refs: its kind, without the refs. `None`
/// for a source that is only a location (an S3 prefix or manifest uri).
pub fn without_refs(source: &Source) -> Option<Source> {
    match source {
        Source::Manifest {
            inline: Some(_),
            format,
            ..
        } => Some(Source::Manifest {
            uri: None,
            inline: None,
            format: *format,
        }),
        Source::Urls { .. } => Some(Source::Urls { urls: Vec::new() }),
        _ => None,
    }
}

/// A job as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JobView {
    pub id: String,
    pub state: JobState,
    pub counts: Counts,
    /// Images finished per second since the first one.
    pub images_per_second: Option<f64>,
    /// Seconds until the job ends at the current rate.
    pub eta_seconds: Option<f64>,
    pub model: String,
    pub analyses: Vec<String>,
    pub retain: bool,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub schedule_id: Option<String>,
    pub error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Source;

    fn record(tasks: u32, total: u64) -> JobRecord {
        JobRecord {
            v: RECORD_VERSION,
            id: "j1".into(),
            tenant: "acme".into(),
            state: JobState::Queued,
            spec: JobSpec {
                source: Source::Urls {
                    urls: vec!["https://a.example/x.jpg".into()],
                },
                analyses: vec![tagfleet_contracts::Analysis::Tags],
                model: None,
                options: Default::default(),
                output: None,
            },
            model: "m@1".into(),
            created_at: Utc::now(),
            started_at: None,
            finished_at: None,
            schedule_id: None,
            counts: Counts {
                total,
                ..Counts::default()
            },
            rounds: vec![Round::new(tasks)],
            error: None,
            source_withheld: false,
            source_apart: false,
            results_delivered: false,
        }
    }

    #[test]
    fn a_redelivered_task_is_counted_once_and_the_job_ends_with_its_last_task() {
        let mut r = record(3, 70);
        let now = Utc::now();
        assert!(r.count("t000001", 30, 2, now));
        assert_eq!(r.state, JobState::Running);
        assert!(!r.count("t000001", 30, 2, now), "redelivery");
        assert!(!r.count("t000004", 1, 0, now), "not a task of the job");
        assert!(r.count("t000002", 32, 0, now));
        assert_eq!(r.state, JobState::Running);
        assert!(r.count("t000003", 5, 1, now));
        assert_eq!(r.state, JobState::Succeeded);
        assert_eq!(
            r.counts,
            Counts {
                total: 70,
                done: 67,
                failed: 3
            }
        );
        // The record survives a round trip through its JSON, bitmap included.
        let back = JobRecord::from_json(&r.to_json()).unwrap();
        assert_eq!(back, r);
        let mut again = back;
        assert!(!again.count("t000002", 32, 0, now));
    }

    #[test]
    fn a_job_whose_every_image_failed_is_failed() {
        let mut r = record(1, 2);
        r.count("t000001", 0, 2, Utc::now());
        assert_eq!(r.state, JobState::Failed);
        assert!(r.error.is_some());
    }
}
