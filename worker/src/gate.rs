//! Skips the tasks that must not run any more. The scheduler marks a cancelled job (or one
//! that failed to start, expired or was erased) in the job's small state object, and
//! queued tasks of such a job are acked unprocessed. A task older than the retention is
//! refused whatever its job says: its results could not be kept, and once the job's record
//! or tombstone is swept nothing else would stop it. State objects are read at most once
//! per job every few seconds.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use tagfleet_contracts::TaskMessage;
use tagfleet_contracts::job::JobHead;
use tagfleet_contracts::keys::Key;
use tagfleet_io::{ObjectStore, StoreError};
use tokio::sync::Mutex;

/// How long a job's state is trusted before it is read again, by default.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(3);

/// What the gate decides about one task message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Run,
    /// Its job was cancelled, failed to start, expired or was erased.
    Skip,
    /// Older than the retention, or of unknown age and of a job the store does not know.
    TooOld,
}

/// What the store says of a job, as cached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Known {
    Accepts,
    Refuses,
    /// No state object: a job without a record (the embedded mode, `submit` straight to
    /// the queue) or one whose record and tombstone were swept.
    Unknown,
}

pub struct JobGate {
    store: Arc<dyn ObjectStore>,
    ttl: Duration,
    /// Tasks older than this are refused; `None` in the embedded mode, whose tasks live
    /// only as long as the process that made them.
    max_age: Option<Duration>,
    seen: Mutex<HashMap<(String, String), (Known, Instant)>>,
}

impl JobGate {
    pub fn new(store: Arc<dyn ObjectStore>, ttl: Duration, max_age: Option<Duration>) -> Self {
        Self {
            store,
            ttl,
            max_age,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Whether this task should be processed. With a maximum age: a task older than it is
    /// refused, and so is one without a creation time (written before messages carried
    /// one) whose job has no state object. A job without a record runs its younger
    /// tasks; so does one whose record cannot be read now: the write would meet the same
    /// store, and skipping would lose work.
    pub async fn admits(&self, msg: &TaskMessage) -> Admission {
        let max_age = self.max_age;
        let too_old = |at: chrono::DateTime<Utc>| {
            max_age.is_some_and(|max| (Utc::now() - at).to_std().is_ok_and(|age| age >= max))
        };
        if msg.created_at.is_some_and(too_old) {
            return Admission::TooOld;
        }
        match self.job(&msg.tenant, &msg.job_id).await {
            Known::Accepts => Admission::Run,
            Known::Refuses => Admission::Skip,
            Known::Unknown if msg.created_at.is_none() && max_age.is_some() => Admission::TooOld,
            Known::Unknown => Admission::Run,
        }
    }

    async fn job(&self, tenant: &str, job_id: &str) -> Known {
        let id = (tenant.to_owned(), job_id.to_owned());
        if let Some((known, at)) = self.seen.lock().await.get(&id)
            && at.elapsed() < self.ttl
        {
            return *known;
        }
        let known = match self
            .store
            .get(&Key::job_state(tenant, job_id).to_string())
            .await
        {
            Ok(body) if JobHead::from_json(&body).is_none_or(|h| h.state.accepts_tasks()) => {
                Known::Accepts
            }
            Ok(_) | Err(StoreError::Expired(_)) => Known::Refuses,
            Err(StoreError::NotFound(_)) => Known::Unknown,
            Err(e) => {
                tracing::warn!(job = %job_id, error = %e, "reading the job record failed; processing the task");
                Known::Accepts
            }
        };
        let mut seen = self.seen.lock().await;
        if seen.len() > 10_000 {
            seen.retain(|_, (_, at)| at.elapsed() < self.ttl);
        }
        seen.insert(id, (known, Instant::now()));
        known
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tagfleet_contracts::job::TOMBSTONE;
    use tagfleet_io::store::FsStore;

    const HOUR: Duration = Duration::from_secs(3600);

    fn task(job: &str, age: Option<Duration>) -> TaskMessage {
        let mut msg = crate::task::tests::works(1).pop().unwrap().task.msg.clone();
        msg.tenant = "acme".into();
        msg.job_id = job.into();
        msg.created_at = age.map(|a| Utc::now() - chrono::Duration::from_std(a).unwrap());
        msg
    }

    async fn gate(max_age: Option<Duration>) -> (tempfile::TempDir, Arc<dyn ObjectStore>, JobGate) {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ObjectStore> =
            Arc::new(FsStore::new(dir.path().to_path_buf(), None).unwrap());
        let gate = JobGate::new(store.clone(), Duration::ZERO, max_age);
        (dir, store, gate)
    }

    async fn set_state(store: &Arc<dyn ObjectStore>, job: &str, body: &[u8]) {
        store
            .put(&Key::job_state("acme", job).to_string(), body.to_vec())
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn cancelled_and_erased_jobs_are_skipped_and_young_unknown_ones_run() {
        let (_dir, store, gate) = gate(Some(HOUR)).await;
        let young = Some(Duration::from_secs(5));
        assert_eq!(
            gate.admits(&task("j1", young)).await,
            Admission::Run,
            "no record"
        );
        set_state(&store, "j1", br#"{"state":"running","id":"j1"}"#).await;
        assert_eq!(gate.admits(&task("j1", young)).await, Admission::Run);
        set_state(&store, "j1", br#"{"state":"cancelled"}"#).await;
        assert_eq!(gate.admits(&task("j1", young)).await, Admission::Skip);
        set_state(&store, "j2", TOMBSTONE).await;
        assert_eq!(gate.admits(&task("j2", young)).await, Admission::Skip);
        assert_eq!(gate.admits(&task("j3", young)).await, Admission::Run);
    }

    #[tokio::test]
    async fn tasks_past_the_retention_or_of_unknown_age_and_job_are_refused() {
        let (_dir, store, gate) = gate(Some(HOUR)).await;
        let old = Some(HOUR + Duration::from_secs(1));
        assert_eq!(gate.admits(&task("gone", old)).await, Admission::TooOld);
        assert_eq!(gate.admits(&task("gone", None)).await, Admission::TooOld);
        // A job the store knows: its state decides for a message without a time (one
        // published by an older scheduler), and age still wins.
        set_state(&store, "live", br#"{"state":"running"}"#).await;
        assert_eq!(gate.admits(&task("live", None)).await, Admission::Run);
        assert_eq!(gate.admits(&task("live", old)).await, Admission::TooOld);
        // A clock ahead of ours makes a task young, not old.
        let mut ahead = task("gone", None);
        ahead.created_at = Some(Utc::now() + chrono::Duration::minutes(5));
        assert_eq!(gate.admits(&ahead).await, Admission::Run);
    }

    #[tokio::test]
    async fn without_a_maximum_age_every_unknown_job_runs() {
        let (_dir, _store, gate) = gate(None).await;
        assert_eq!(
            gate.admits(&task("j1", Some(48 * HOUR))).await,
            Admission::Run
        );
        assert_eq!(gate.admits(&task("j1", None)).await, Admission::Run);
    }
}
