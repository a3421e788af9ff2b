//! Counting what workers report: each task once, whatever redelivery does.

use chrono::Utc;
use tagfleet_contracts::job::JobState;
use tagfleet_contracts::keys::Key;
use tagfleet_contracts::schema::ProgressMessage;
use tagfleet_io::StoreError;

use super::{JobBook, gauges::refresh_gauges};
use crate::metrics;

impl JobBook {
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
                    stale.push(Key::result(&report.tenant, &report.job_id, &report.task_id));
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
                    stale.push(Key::result(&report.tenant, &report.job_id, &report.task_id));
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
            self.store.delete(&key.to_string()).await?;
        }
        self.flush().await
    }
}
