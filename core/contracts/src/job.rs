//! What workers need to know about a job record the scheduler keeps: its state. A job that
//! was cancelled (or failed to start) has its queued tasks skipped instead of processed.

use serde::{Deserialize, Serialize};

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Tasks published, nothing finished yet.
    Queued,
    /// Some tasks finished.
    Running,
    /// Every task finished (single images may still have failed or never run: see the
    /// counts and the job's `error`).
    Succeeded,
    /// No image has a result (each one failed or never ran), or the job could not be
    /// published.
    Failed,
    /// Cancelled by its tenant; its results are deleted.
    Cancelled,
    /// Past its retention; its results are gone.
    Expired,
}

impl JobState {
    pub const ALL: [JobState; 6] = [
        JobState::Queued,
        JobState::Running,
        JobState::Succeeded,
        JobState::Failed,
        JobState::Cancelled,
        JobState::Expired,
    ];

    pub fn name(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
            JobState::Expired => "expired",
        }
    }

    /// Whether the job will not change any more.
    pub fn is_final(self) -> bool {
        !matches!(self, JobState::Queued | JobState::Running)
    }

    /// Whether workers should still process the job's tasks. A job that ended normally
    /// still takes redelivered and retried tasks; a cancelled, failed-to-start or
    /// expired one takes nothing.
    pub fn accepts_tasks(self) -> bool {
        matches!(
            self,
            JobState::Queued | JobState::Running | JobState::Succeeded
        )
    }
}

/// What replaces the record and the state object of an erased job (by the scheduler's
/// erasure and by `tagfleet erase --store`): workers skip its tasks, since it reads as
/// `cancelled`, and nothing of the job but its id remains. It lives under `jobs/`, so it
/// is swept after the retention; by then any task of the job is too old to run anyway.
pub const TOMBSTONE: &[u8] = br#"{"state":"cancelled","erased":true}"#;

/// A job's state object (`keys::Key::JobState`): all a worker reads of a job, to skip
/// the tasks of jobs that must not run any more. The scheduler writes it with the job's
/// record; the record itself can be large and belongs to the scheduler.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobHead {
    pub state: JobState,
}

impl JobHead {
    pub fn from_json(body: &[u8]) -> Option<Self> {
        serde_json::from_slice(body).ok()
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a job state always serialises")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tombstone_reads_as_a_job_that_takes_no_tasks() {
        let head = JobHead::from_json(TOMBSTONE).expect("a tombstone is a state object");
        assert!(!head.state.accepts_tasks());
    }
}
