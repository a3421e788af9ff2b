//! Settling a task message, exactly once: once its result object is durable, the task is
//! reported on the progress queue (fleet mode) and the message acked; when the object
//! could not be written, or the report not sent, the message goes back to the queue.

use std::sync::Arc;

use tagfleet_contracts::TaskMessage;
use tagfleet_contracts::schema::{ProgressMessage, ResultLine, SCHEMA_VERSION, Status};
use tagfleet_io::Queue;

use crate::task::TaskState;
use crate::writer::Event;

pub struct Settler {
    queue: Arc<dyn Queue>,
    /// Where finished tasks are reported for the scheduler's counts (fleet mode).
    progress: Option<Arc<dyn Queue>>,
}

impl Settler {
    pub fn new(queue: Arc<dyn Queue>, progress: Option<Arc<dyn Queue>>) -> Self {
        Self { queue, progress }
    }

    /// The task's result object at `key` is durable: report the task, then ack.
    pub async fn written(&self, task: &TaskState, key: String, lines: Vec<ResultLine>) -> Event {
        let msg = &task.msg;
        if let Some(progress) = &self.progress
            && let Err(e) = progress.publish(progress_of(msg, &lines)).await
        {
            tracing::warn!(job = %msg.job_id, task = %msg.task_id, error = %e, "reporting progress failed");
            return self.unwritten(task).await;
        }
        crate::metrics::MESSAGES.with_label_values(&["acked"]).inc();
        if let Err(e) = self.queue.ack(&task.delivery).await {
            // The result is durable; a redelivery rewrites the same key.
            tracing::warn!(job = %msg.job_id, task = %msg.task_id, error = %e, "ack failed after write");
        }
        Event::TaskWritten {
            job_id: msg.job_id.clone(),
            task_id: msg.task_id.clone(),
            key,
            lines,
        }
    }

    /// The task must not be finished (its output is not the tenant's to write): its
    /// message is dead-lettered now instead of being tried again.
    pub async fn refused(&self, task: &TaskState) -> Event {
        self.nack(task, false).await
    }

    /// The task did not finish: its message goes back to the queue for another try.
    pub async fn unwritten(&self, task: &TaskState) -> Event {
        self.nack(task, true).await
    }

    async fn nack(&self, task: &TaskState, requeue: bool) -> Event {
        let msg = &task.msg;
        let outcome = if requeue { "requeued" } else { "dead_lettered" };
        crate::metrics::MESSAGES.with_label_values(&[outcome]).inc();
        if let Err(e) = self.queue.nack(&task.delivery, requeue).await {
            tracing::error!(job = %msg.job_id, task = %msg.task_id, outcome, error = %e, "returning the message failed");
        }
        Event::TaskFailed {
            job_id: msg.job_id.clone(),
            task_id: msg.task_id.clone(),
        }
    }
}

fn progress_of(msg: &TaskMessage, lines: &[ResultLine]) -> Vec<u8> {
    let failed = lines.iter().filter(|l| l.status == Status::Error).count() as u32;
    ProgressMessage {
        v: SCHEMA_VERSION,
        tenant: msg.tenant.clone(),
        job_id: msg.job_id.clone(),
        task_id: msg.task_id.clone(),
        ok: lines.len() as u32 - failed,
        failed,
        given_up: None,
    }
    .to_json()
}
