//! Result objects are the truth: a task whose result object exists has run, whether or not
//! its report was counted (a report lost with a crashed scheduler, or dead-lettered by an
//! older one). Reconciling counts such tasks from their objects.

use chrono::Utc;
use tagfleet_contracts::TaskId;
use tagfleet_contracts::job::JobState;
use tagfleet_contracts::keys::{Key, job_results_prefix};
use tagfleet_contracts::schema::Status;
use tagfleet_io::StoreError;

use super::progress::count_task;
use super::retry::result_lines;
use super::{JobBook, JobId, gauges::refresh_gauges};
use crate::metrics;
use crate::record::{JobRecord, Outcome, Round};

/// What a result object says about its task.
struct Found {
    task: String,
    ok: u64,
    failed: u64,
}

impl JobBook {
    /// Counts, for every queued or running job, each task whose result object exists but
    /// which the record does not count as run (not counted at all, or counted as given up).
    /// Writes the records it changed; returns how many tasks it counted.
    ///
    /// Jobs whose results go only to the client's own output (`retain: false` with an
    /// `output`) leave nothing in the store to read, and cannot be reconciled this way:
    /// they are left to their reports.
    pub async fn reconcile(&self) -> Result<u64, StoreError> {
        let open: Vec<(JobId, Vec<Round>)> = {
            let jobs = self.jobs.lock().await;
            let erased = self.erased.lock().await;
            jobs.iter()
                .filter(|(key, r)| reconcilable(r) && !erased.contains(*key))
                .map(|(key, r)| (key.clone(), r.rounds.clone()))
                .collect()
        };
        let mut counted = 0;
        for (key, rounds) in open {
            let found = self.uncounted_results(&key, &rounds).await?;
            if found.is_empty() {
                continue;
            }
            let now = Utc::now();
            let mut jobs = self.jobs.lock().await;
            let mut dirty = self.dirty.lock().await;
            let Some(record) = jobs.get_mut(&key).filter(|r| reconcilable(r)) else {
                continue; // cancelled, erased or ended meanwhile
            };
            let mut tasks = 0u64;
            for Found { task, ok, failed } in found {
                // Counted once, whichever comes first: this or the task's report.
                if count_task(record, &task, Outcome::Ran { ok, failed }, now) {
                    tracing::debug!(tenant = %key.0, job = %key.1, task = %task, ok, failed,
                        "counted a task from its result object");
                    tasks += 1;
                }
            }
            if tasks > 0 {
                tracing::info!(tenant = %key.0, job = %key.1, tasks,
                    "counted tasks from their result objects: their reports were not counted");
                metrics::TASKS_RECONCILED.inc_by(tasks);
                dirty.insert(key.clone());
                counted += tasks;
            }
            refresh_gauges(&jobs);
        }
        if counted > 0 {
            self.flush().await?;
        }
        Ok(counted)
    }

    /// The result objects of a job's tasks that `rounds` do not count as run.
    async fn uncounted_results(
        &self,
        (tenant, job): &JobId,
        rounds: &[Round],
    ) -> Result<Vec<Found>, StoreError> {
        let mut found = Vec::new();
        for object in self.store.list(&job_results_prefix(tenant, job)).await? {
            let Some(Key::Result { task, .. }) = Key::parse(&object.key) else {
                continue;
            };
            let Ok(TaskId { round, n }) = task.parse() else {
                continue;
            };
            let Some(r) = rounds.get(round) else {
                continue;
            };
            if r.done.contains(n) && r.given_up_reason(n).is_none() {
                continue;
            }
            let body = match self.store.get(&object.key).await {
                Ok(body) => body,
                Err(StoreError::Expired(_) | StoreError::NotFound(_)) => continue,
                Err(e) => return Err(e),
            };
            let (mut ok, mut failed) = (0, 0);
            let mut readable = true;
            for line in result_lines(&body) {
                match line {
                    Ok(l) if l.status == Status::Ok => ok += 1,
                    Ok(_) => failed += 1,
                    Err(_) => readable = false,
                }
            }
            if !readable {
                // Writes are atomic: this is not a half-written object but a foreign one.
                tracing::warn!(key = %object.key, "skipping a result object with unreadable lines");
                continue;
            }
            found.push(Found { task, ok, failed });
        }
        Ok(found)
    }
}

/// Whether a job's counts may still change and its results are in the store.
fn reconcilable(record: &JobRecord) -> bool {
    let only_elsewhere = record.spec.output.is_some() && !record.spec.options.retain;
    matches!(record.state, JobState::Queued | JobState::Running) && !only_elsewhere
}
