//! Jobs past their retention: expired, their record and results deleted.

use chrono::{DateTime, Utc};
use tagfleet_contracts::job::JobState;
use tagfleet_contracts::keys::Key;
use tagfleet_io::StoreError;

use super::{JobBook, JobId, gauges::refresh_gauges};

impl JobBook {
    /// Jobs past their retention become `expired`: their record, source and results are deleted
    /// now (the sweeper and the lifecycle rule are the backstops). Returns how many.
    pub async fn expire(&self, now: DateTime<Utc>) -> Result<usize, StoreError> {
        let _writing = self.writing.lock().await;
        let due: Vec<JobId> = {
            let mut jobs = self.jobs.lock().await;
            let due: Vec<JobId> = jobs
                .iter()
                .filter(|(_, r)| r.state != JobState::Expired && self.past_retention(r, now))
                .map(|(k, _)| k.clone())
                .collect();
            // Expired before anything is deleted, and no flush writes them back.
            for key in &due {
                if let Some(r) = jobs.get_mut(key) {
                    r.state = JobState::Expired;
                }
            }
            self.dirty.lock().await.retain(|k| !due.contains(k));
            due
        };
        for (tenant, id) in &due {
            self.erase_results(tenant, id).await?;
            for key in [
                Key::job_source(tenant, id),
                Key::job(tenant, id),
                Key::job_state(tenant, id),
            ] {
                self.store.delete(&key.to_string()).await?;
            }
        }
        // Expired jobs are remembered for one more retention, then forgotten.
        let mut jobs = self.jobs.lock().await;
        let forget_after = self.config.retention.saturating_mul(2);
        jobs.retain(|_, r| !(r.state == JobState::Expired && self.past(r, forget_after, now)));
        refresh_gauges(&jobs);
        Ok(due.len())
    }
}
