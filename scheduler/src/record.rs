//! Job records: what the scheduler knows about a job, persisted at `jobs/<tenant>/<job>.json`
//! after every change, so a restarted scheduler knows every job and its counts. A record
//! stays small: a source that lists refs (an inline manifest, URLs) is kept apart, at
//! `jobs/<tenant>/<job>/source.json`, and read back only for a retry.

mod rounds;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tagfleet_contracts::TaskId;
use tagfleet_contracts::job::JobState;
use tagfleet_contracts::schema::{GivenUp, TaskPlan};
use utoipa::ToSchema;

use crate::spec::{JobSpec, Source};
pub use rounds::{Round, TaskSet};

/// Version of the record layout.
pub const RECORD_VERSION: u32 = 1;

/// Images of a job by outcome. Once the job has ended, `done + failed + unfinished` is
/// `total`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Counts {
    /// Images in the job.
    pub total: u64,
    /// Images with a result.
    pub done: u64,
    /// Images that ended in an error line (see their `error.kind` in the results).
    pub failed: u64,
    /// Images that never ran and have no line in the results: a worker gave their task up
    /// (the job's `error` says why). `POST /v1/jobs/{id}/retry` publishes them again.
    #[serde(default)]
    pub unfinished: u64,
}

impl Counts {
    /// Images whose outcome is known: nothing more comes for them.
    pub fn finished(&self) -> u64 {
        self.done + self.failed + self.unfinished
    }

    /// Images that ran, with a result or an error line.
    pub fn ran(&self) -> u64 {
        self.done + self.failed
    }
}

/// What a worker reported for one task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Its result object is written: `ok` images with a result, `failed` with an error line.
    Ran { ok: u64, failed: u64 },
    /// It was given up: none of its images ran.
    GivenUp(GivenUp),
}

/// What counting one report did to a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counted {
    /// Nothing: the task was counted before (a redelivery) or is not one of the job's.
    Duplicate,
    /// The task is counted now.
    Fresh,
    /// The task had been given up and has run after all (its dead letter was moved back):
    /// its images count as what they gave now, not as never run.
    Replaced,
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
    /// Why the job failed as a whole, or, when it ended with images that never ran, why
    /// they did not.
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

    /// Counts one task's report (see [`Counted`]), and ends the job with its last task.
    pub fn count(&mut self, task_id: &str, outcome: Outcome, now: DateTime<Utc>) -> Counted {
        let Ok(TaskId { round, n }) = task_id.parse() else {
            return Counted::Duplicate;
        };
        // A size the round cannot know exactly (a record written before sizes were kept)
        // never makes the counts add up to more than the job holds.
        let open = self.counts.total.saturating_sub(self.counts.finished());
        let Some(r) = self.rounds.get_mut(round) else {
            return Counted::Duplicate;
        };
        if n == 0 || n > r.tasks {
            return Counted::Duplicate;
        }
        let counted = if r.done.insert(n) {
            Counted::Fresh
        } else if matches!(outcome, Outcome::Ran { .. }) && r.take_back(n) {
            let images = r.task_images(n).unwrap_or(0);
            self.counts.unfinished = self.counts.unfinished.saturating_sub(images);
            Counted::Replaced
        } else {
            return Counted::Duplicate;
        };
        match outcome {
            Outcome::Ran { ok, failed } => {
                self.counts.done += ok;
                self.counts.failed += failed;
            }
            Outcome::GivenUp(reason) => {
                r.give_up(n, reason);
                self.counts.unfinished += r.task_images(n).unwrap_or(0).min(open);
            }
        }
        if self.state == JobState::Queued {
            self.state = JobState::Running;
            self.started_at.get_or_insert(now);
        }
        // A job that ended by its counts ends again with a task given up that ran after
        // all; one that failed otherwise (its tasks could not be published) stays failed.
        let settles = match self.state {
            JobState::Running => true,
            JobState::Succeeded | JobState::Failed => counted == Counted::Replaced,
            _ => false,
        };
        if settles {
            self.settle(now);
        }
        counted
    }

    /// Ends the job once every task of every round is counted: `failed` when no image has
    /// a result, else `succeeded`; either way with the counts, and an `error` that says
    /// why images failed or never ran.
    fn settle(&mut self, now: DateTime<Utc>) {
        if !self.rounds.iter().all(Round::is_complete) {
            return;
        }
        self.state = if self.counts.done == 0 {
            JobState::Failed
        } else {
            JobState::Succeeded
        };
        self.error = self.outcome_error();
        self.finished_at.get_or_insert(now);
    }

    /// What went wrong in a job that ran to its end, if anything the counts alone do not
    /// say: every image failed, or some never ran (and why).
    fn outcome_error(&self) -> Option<String> {
        let mut unfinished: BTreeMap<GivenUp, u64> = BTreeMap::new();
        for round in &self.rounds {
            for (reason, images) in round.unfinished_by_reason() {
                *unfinished.entry(reason).or_default() += images;
            }
        }
        let mut parts: Vec<String> = unfinished
            .into_iter()
            .map(|(reason, images)| {
                let noun = if images == 1 { "image" } else { "images" };
                format!("{images} {noun} never ran: {}", reason.explanation())
            })
            .collect();
        if self.counts.done == 0 && self.counts.failed > 0 {
            let all = if parts.is_empty() {
                "every"
            } else {
                "every other"
            };
            parts.insert(0, format!("{all} image failed; see the error lines"));
        }
        (!parts.is_empty()).then(|| parts.join("; "))
    }

    /// Fills in the task sizes of rounds written before records kept them, from today's
    /// `chunk_size` (see [`Round::assume_sizes`]).
    pub fn assume_sizes(&mut self, chunk_size: usize) {
        let total = self.counts.total;
        for (i, round) in self.rounds.iter_mut().enumerate() {
            round.assume_sizes((i == 0).then_some(total), chunk_size);
        }
    }

    /// What the API shows.
    pub fn view(&self, now: DateTime<Utc>) -> JobView {
        let end = self.finished_at.unwrap_or(now);
        let rate = self.started_at.and_then(|start| {
            let secs = (end - start).num_milliseconds() as f64 / 1000.0;
            (secs > 0.0).then(|| self.counts.ran() as f64 / secs)
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
    /// Images run (with a result or an error line) per second since the first one.
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
    /// Why the job failed as a whole, or why some of its images failed or never ran
    /// (`3 images never ran: every delivery of their task failed`).
    pub error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Source;

    /// A job of `total` images in tasks of `chunk`.
    fn record(total: u64, chunk: usize) -> JobRecord {
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
            rounds: vec![Round::new(total, chunk)],
            error: None,
            source_withheld: false,
            source_apart: false,
            results_delivered: false,
        }
    }

    fn ran(ok: u64, failed: u64) -> Outcome {
        Outcome::Ran { ok, failed }
    }

    #[test]
    fn a_redelivered_task_is_counted_once_and_the_job_ends_with_its_last_task() {
        let mut r = record(70, 32);
        let now = Utc::now();
        assert_eq!(r.count("t000001", ran(30, 2), now), Counted::Fresh);
        assert_eq!(r.state, JobState::Running);
        assert_eq!(r.count("t000001", ran(30, 2), now), Counted::Duplicate);
        assert_eq!(
            r.count("t000004", ran(1, 0), now),
            Counted::Duplicate,
            "not a task of the job"
        );
        assert_eq!(r.count("t000002", ran(32, 0), now), Counted::Fresh);
        assert_eq!(r.state, JobState::Running);
        assert_eq!(r.count("t000003", ran(5, 1), now), Counted::Fresh);
        assert_eq!(r.state, JobState::Succeeded);
        assert_eq!(r.error, None);
        assert_eq!(
            r.counts,
            Counts {
                total: 70,
                done: 67,
                failed: 3,
                unfinished: 0
            }
        );
        // The record survives a round trip through its JSON, bitmap included.
        let back = JobRecord::from_json(&r.to_json()).unwrap();
        assert_eq!(back, r);
        let mut again = back;
        assert_eq!(again.count("t000002", ran(32, 0), now), Counted::Duplicate);
    }

    #[test]
    fn a_job_whose_every_image_failed_is_failed() {
        let mut r = record(2, 32);
        r.count("t000001", ran(0, 2), Utc::now());
        assert_eq!(r.state, JobState::Failed);
        assert_eq!(
            r.error.as_deref(),
            Some("every image failed; see the error lines")
        );
    }

    #[test]
    fn a_given_up_task_ends_its_job_with_its_images_unfinished() {
        let mut r = record(70, 32);
        let now = Utc::now();
        r.count("t000001", ran(30, 2), now);
        assert_eq!(
            r.count("t000003", Outcome::GivenUp(GivenUp::Attempts), now),
            Counted::Fresh
        );
        assert_eq!(
            r.counts.unfinished, 6,
            "the last task holds the 6 left over"
        );
        assert_eq!(r.state, JobState::Running);
        r.count("t000002", Outcome::GivenUp(GivenUp::OutputRefused), now);
        assert_eq!(r.state, JobState::Succeeded);
        assert_eq!(
            r.counts,
            Counts {
                total: 70,
                done: 30,
                failed: 2,
                unfinished: 38
            }
        );
        assert_eq!(
            r.error.as_deref(),
            Some(
                "6 images never ran: every delivery of their task failed; 32 images never ran: \
                 the job's output location refused the results"
            )
        );
        assert_eq!(r.view(now).eta_seconds, None);
        let back = JobRecord::from_json(&r.to_json()).unwrap();
        assert_eq!(back, r, "given up tasks survive the round trip");
        // A redelivered give-up counts once.
        let mut again = back;
        assert_eq!(
            again.count("t000003", Outcome::GivenUp(GivenUp::Attempts), now),
            Counted::Duplicate
        );
        assert_eq!(again.counts.unfinished, 38);
    }

    #[test]
    fn a_job_whose_every_task_was_given_up_is_failed() {
        let mut r = record(1, 32);
        r.count(
            "t000001",
            Outcome::GivenUp(GivenUp::StoreRefused),
            Utc::now(),
        );
        assert_eq!(r.state, JobState::Failed);
        assert_eq!(r.counts.unfinished, 1);
        assert_eq!(
            r.error.as_deref(),
            Some("1 image never ran: the fleet's store refused the results")
        );
    }

    #[test]
    fn a_task_given_up_that_ran_after_all_replaces_its_unfinished_images() {
        let mut r = record(4, 2);
        let now = Utc::now();
        r.count("t000001", Outcome::GivenUp(GivenUp::Attempts), now);
        r.count("t000002", Outcome::GivenUp(GivenUp::Attempts), now);
        assert_eq!(r.state, JobState::Failed);
        assert_eq!(r.counts.unfinished, 4);
        let ended = r.finished_at;
        // An operator moved a dead letter back and it ran.
        assert_eq!(r.count("t000001", ran(1, 1), now), Counted::Replaced);
        assert_eq!(r.state, JobState::Succeeded);
        assert_eq!(
            r.counts,
            Counts {
                total: 4,
                done: 1,
                failed: 1,
                unfinished: 2
            }
        );
        assert_eq!(
            r.error.as_deref(),
            Some("2 images never ran: every delivery of their task failed")
        );
        assert_eq!(r.finished_at, ended);
        assert_eq!(r.count("t000001", ran(1, 1), now), Counted::Duplicate);
        assert_eq!(r.count("t000002", ran(2, 0), now), Counted::Replaced);
        assert_eq!(r.counts.unfinished, 0);
        assert_eq!(r.error, None);
    }

    #[test]
    fn a_record_written_before_counts_of_unfinished_images_reads_back() {
        let mut r = record(70, 32);
        r.count("t000001", ran(32, 0), Utc::now());
        let mut json: serde_json::Value = serde_json::from_slice(&r.to_json()).unwrap();
        json["counts"].as_object_mut().unwrap().remove("unfinished");
        let round = json["rounds"][0].as_object_mut().unwrap();
        round.remove("images");
        round.remove("chunk");
        let mut old = JobRecord::from_json(&serde_json::to_vec(&json).unwrap()).unwrap();
        assert_eq!(old.counts.unfinished, 0);
        old.assume_sizes(32);
        old.count("t000003", Outcome::GivenUp(GivenUp::Attempts), Utc::now());
        assert_eq!(old.counts.unfinished, 6);
    }
}
