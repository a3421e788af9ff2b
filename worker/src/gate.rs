//! Skips the tasks of jobs that must not run any more: the scheduler marks a cancelled job
//! (or one that failed to start, or expired) in the job's small state object, and queued
//! tasks of such a job are acked unprocessed. It is read at most once per job every few
//! seconds.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tagfleet_contracts::job::JobHead;
use tagfleet_contracts::keys::Key;
use tagfleet_io::{ObjectStore, StoreError};
use tokio::sync::Mutex;

/// How long a job's state is trusted before it is read again, by default.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(3);

pub struct JobGate {
    store: Arc<dyn ObjectStore>,
    ttl: Duration,
    seen: Mutex<HashMap<(String, String), (bool, Instant)>>,
}

impl JobGate {
    pub fn new(store: Arc<dyn ObjectStore>, ttl: Duration) -> Self {
        Self {
            store,
            ttl,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Whether tasks of this job should be processed. A job without a record (the embedded
    /// mode, `submit` straight to the queue) runs; so does one whose record cannot be read
    /// now: the write would meet the same store, and skipping would lose work.
    pub async fn admits(&self, tenant: &str, job_id: &str) -> bool {
        let id = (tenant.to_owned(), job_id.to_owned());
        if let Some((admits, at)) = self.seen.lock().await.get(&id)
            && at.elapsed() < self.ttl
        {
            return *admits;
        }
        let admits = match self
            .store
            .get(&Key::job_state(tenant, job_id).to_string())
            .await
        {
            Ok(body) => JobHead::from_json(&body).is_none_or(|head| head.state.accepts_tasks()),
            Err(StoreError::NotFound(_)) => true,
            Err(StoreError::Expired(_)) => false,
            Err(e) => {
                tracing::warn!(job = %job_id, error = %e, "reading the job record failed; processing the task");
                true
            }
        };
        let mut seen = self.seen.lock().await;
        if seen.len() > 10_000 {
            seen.retain(|_, (_, at)| at.elapsed() < self.ttl);
        }
        seen.insert(id, (admits, Instant::now()));
        admits
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tagfleet_io::store::FsStore;

    #[tokio::test]
    async fn cancelled_jobs_are_refused_and_unknown_ones_admitted() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ObjectStore> =
            Arc::new(FsStore::new(dir.path().to_path_buf(), None).unwrap());
        let gate = JobGate::new(store.clone(), Duration::ZERO);
        assert!(gate.admits("acme", "j1").await, "no record: run");
        store
            .put(
                &Key::job_state("acme", "j1").to_string(),
                br#"{"state":"running","id":"j1"}"#.to_vec(),
            )
            .await
            .unwrap();
        assert!(gate.admits("acme", "j1").await);
        store
            .put(
                &Key::job_state("acme", "j1").to_string(),
                br#"{"state":"cancelled"}"#.to_vec(),
            )
            .await
            .unwrap();
        assert!(!gate.admits("acme", "j1").await);
        assert!(gate.admits("acme", "j2").await, "other jobs unaffected");
    }
}
