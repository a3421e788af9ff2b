//! The job book's metrics: jobs by state, images pending, queue depth by model.

use std::collections::BTreeMap;

use tagfleet_contracts::job::JobState;

use super::{JobBook, JobId};
use crate::metrics;
use crate::record::JobRecord;

impl JobBook {
    /// Updates the queue depth gauges, per model: each model's workers scale on its queue.
    pub async fn sample_queue(&self) {
        for (model, queue) in self.queues.iter() {
            match queue.depth().await {
                Ok(Some(depth)) => {
                    metrics::QUEUE_MESSAGES
                        .with_label_values(&["tasks", model])
                        .set(depth.ready as i64);
                    metrics::QUEUE_MESSAGES
                        .with_label_values(&["dead_letter", model])
                        .set(depth.dead_lettered as i64);
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(model, error = %e, "reading the queue depth failed"),
            }
        }
    }
}

/// Jobs by state and the images unfinished jobs still wait for.
pub(super) fn refresh_gauges(jobs: &BTreeMap<JobId, JobRecord>) {
    let mut by_state: BTreeMap<&str, i64> = BTreeMap::new();
    let mut pending = 0u64;
    for record in jobs.values() {
        *by_state.entry(record.state.name()).or_default() += 1;
        if !record.state.is_final() {
            pending += record.counts.total.saturating_sub(record.counts.finished());
        }
    }
    metrics::IMAGES_PENDING.set(i64::try_from(pending).unwrap_or(i64::MAX));
    for state in JobState::ALL {
        metrics::JOBS
            .with_label_values(&[state.name()])
            .set(by_state.get(state.name()).copied().unwrap_or(0));
    }
}
