//! The job book's metrics: jobs by state, progress, queue depth.

use std::collections::BTreeMap;

use tagfleet_contracts::job::JobState;

use super::{JobBook, JobId};
use crate::metrics;
use crate::record::JobRecord;

impl JobBook {
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
pub(super) fn refresh_gauges(jobs: &BTreeMap<JobId, JobRecord>) {
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
