//! Counting what workers report: each task once, whatever redelivery does.

use chrono::Utc;
use tagfleet_contracts::job::JobState;
use tagfleet_contracts::keys::Key;
use tagfleet_contracts::schema::ProgressMessage;
use tagfleet_io::StoreError;

use super::{JobBook, gauges::refresh_gauges};
use crate::metrics;
use crate::record::{Counted, JobRecord, Outcome};

impl JobBook {
    /// Counts a batch of progress reports and writes the changed records; the caller acks
    /// the messages after this returns `Ok`, so a crash in between means recounting, which
    /// the per-task bitmap makes harmless.
    pub async fn apply_progress(&self, reports: &[ProgressMessage]) -> Result<(), StoreError> {
        self.count_progress(reports).await;
        self.persist_progress().await
    }

    /// Counts a batch of progress reports in memory. What they changed is written by
    /// [`JobBook::persist_progress`], which may be called again until it succeeds.
    pub async fn count_progress(&self, reports: &[ProgressMessage]) {
        let now = Utc::now();
        let mut jobs = self.jobs.lock().await;
        let mut dirty = self.dirty.lock().await;
        let erased = self.erased.lock().await;
        let mut stale = self.stale.lock().await;
        for report in reports {
            let key = (report.tenant.clone(), report.job_id.clone());
            if erased.contains(&key) {
                stale.insert(Key::result(&report.tenant, &report.job_id, &report.task_id));
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
                stale.insert(Key::result(&report.tenant, &report.job_id, &report.task_id));
                metrics::PROGRESS_MESSAGES
                    .with_label_values(&["duplicate"])
                    .inc();
                continue;
            }
            let outcome = match report.given_up {
                Some(reason) => Outcome::GivenUp(reason),
                None => Outcome::Ran {
                    ok: report.ok.into(),
                    failed: report.failed.into(),
                },
            };
            let result = match report.given_up {
                Some(_) => "given_up",
                None => "counted",
            };
            if count_task(record, &report.task_id, outcome, now) {
                metrics::PROGRESS_MESSAGES
                    .with_label_values(&[result])
                    .inc();
                dirty.insert(key);
            } else {
                metrics::PROGRESS_MESSAGES
                    .with_label_values(&["duplicate"])
                    .inc();
            }
        }
        refresh_gauges(&jobs);
    }

    /// Deletes the results of erased jobs that reports named, then writes every changed
    /// record. What fails stays to do for the next call.
    pub async fn persist_progress(&self) -> Result<(), StoreError> {
        let stale: Vec<Key> = self.stale.lock().await.iter().cloned().collect();
        for key in stale {
            self.store.delete(&key.to_string()).await?;
            self.stale.lock().await.remove(&key);
        }
        self.flush().await
    }
}

/// Counts one task of a job (from a report or from its result object) with its metrics
/// and a log line when the job ends; false when it changed nothing.
pub(super) fn count_task(
    record: &mut JobRecord,
    task_id: &str,
    outcome: Outcome,
    now: chrono::DateTime<Utc>,
) -> bool {
    let was_final = record.state.is_final();
    let before = record.counts;
    let counted = record.count(task_id, outcome, now);
    if counted == Counted::Duplicate {
        return false;
    }
    let after = record.counts;
    for (event, was, is) in [
        ("done", before.done, after.done),
        ("failed", before.failed, after.failed),
        ("unfinished", before.unfinished, after.unfinished),
    ] {
        // A replaced give-up takes images out of `unfinished`: counters only go up.
        metrics::IMAGES
            .with_label_values(&[event])
            .inc_by(is.saturating_sub(was));
    }
    if record.state.is_final() && !was_final {
        tracing::info!(tenant = %record.tenant, job = %record.id, state = record.state.name(),
            done = after.done, failed = after.failed, unfinished = after.unfinished,
            error = record.error.as_deref().unwrap_or(""), "job ended");
    } else if counted == Counted::Replaced {
        tracing::info!(tenant = %record.tenant, job = %record.id, task = task_id,
            state = record.state.name(), done = after.done, unfinished = after.unfinished,
            "a task given up ran after all");
    }
    true
}
