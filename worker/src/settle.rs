//! Settling a task message, exactly once. Each accepted message gets a [`Ticket`]; every
//! way of settling consumes it, so the type system sees to "at most once", and a ticket
//! dropped unsettled (a stage panicked, a channel closed, a batch failed on its device)
//! sends its message back to the queue from its `Drop`, the way Vector's finalizers
//! report what no stage finished: "at least once" holds on every path.
//!
//! - written: the result object is durable; the task is reported on the progress queue
//!   (fleet mode), then the message is acked. A report that cannot be sent is retried,
//!   never answered by recomputing what is written.
//! - unwritten: the message goes back for another try, unless this was its last
//!   delivery: then the task is given up.
//! - given up: reported as such (so its job ends, with the images counted as never run),
//!   then dead-lettered, where an operator can still find it.

use std::sync::Arc;
use std::time::Duration;

use tagfleet_contracts::TaskMessage;
use tagfleet_contracts::schema::{GivenUp, ProgressMessage, ResultLine, SCHEMA_VERSION, Status};
use tagfleet_io::{Delivery, Queue, QueueError};

use crate::writer::Event;

/// How long a progress report is retried (the broker may be restarting) before the
/// message goes back to the queue; its redelivery finds the result written and only
/// reports it.
const REPORT_HOLD: Duration = Duration::from_secs(60);

/// Longest wait for one report's publisher confirm.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);

/// Settles task messages on one queue.
pub struct Settler {
    queue: Arc<dyn Queue>,
    /// Where finished tasks are reported for the scheduler's counts (fleet mode).
    progress: Option<Arc<dyn Queue>>,
    /// Deliveries of a message before the queue dead-letters it: the last one gives up.
    delivery_limit: u32,
    /// Where a dropped ticket sends its message back from (drops happen on OS threads).
    runtime: tokio::runtime::Handle,
}

/// The identity of a task, as reports name it.
#[derive(Debug, Clone)]
struct TaskName {
    tenant: String,
    job_id: String,
    task_id: String,
}

impl Settler {
    /// Must be called inside the tokio runtime that settles the messages.
    pub fn new(
        queue: Arc<dyn Queue>,
        progress: Option<Arc<dyn Queue>>,
        delivery_limit: u32,
    ) -> Arc<Self> {
        Arc::new(Self {
            queue,
            progress,
            delivery_limit: delivery_limit.max(1),
            runtime: tokio::runtime::Handle::current(),
        })
    }

    /// The ticket of an accepted message.
    pub fn ticket(self: &Arc<Self>, delivery: Delivery, msg: &TaskMessage) -> Ticket {
        Ticket {
            delivery: Some(delivery),
            task: TaskName {
                tenant: msg.tenant.clone(),
                job_id: msg.job_id.clone(),
                task_id: msg.task_id.clone(),
            },
            settler: self.clone(),
        }
    }

    async fn settle(&self, delivery: &Delivery, outcome: Outcome, task: &TaskName) {
        let result = match outcome {
            Outcome::Acked | Outcome::Unprocessed(_) => self.queue.ack(delivery).await,
            Outcome::Requeued => self.queue.nack(delivery, true).await,
            Outcome::GivenUp => self.queue.nack(delivery, false).await,
        };
        crate::metrics::MESSAGES
            .with_label_values(&[outcome.name()])
            .inc();
        if let Err(e) = result {
            // The connection is gone: the broker returns the message itself. If it was
            // written, its redelivery only reports it.
            tracing::warn!(job = %task.job_id, task = %task.task_id, outcome = outcome.name(), error = %e, "settling the message failed");
        }
    }

    /// Publishes a report, retrying while the queue is unreachable.
    async fn report(&self, task: &TaskName, report: ProgressMessage) -> bool {
        let Some(progress) = &self.progress else {
            return true;
        };
        let body = report.to_json();
        let started = tokio::time::Instant::now();
        let mut delay = Duration::from_millis(100);
        loop {
            // A blocked connection (a broker alarm) never confirms: bound each try.
            let published = tokio::time::timeout(PUBLISH_TIMEOUT, progress.publish(body.clone()))
                .await
                .unwrap_or_else(|_| {
                    Err(QueueError::Connection(
                        "no publisher confirm in time".into(),
                    ))
                });
            match published {
                Ok(()) => return true,
                Err(e) if e.is_transient() && started.elapsed() < REPORT_HOLD => {
                    tracing::debug!(job = %task.job_id, task = %task.task_id, error = %e, "reporting progress failed; trying again");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(1));
                }
                Err(e) => {
                    tracing::warn!(job = %task.job_id, task = %task.task_id, error = %e, "reporting progress failed");
                    return false;
                }
            }
        }
    }

    /// Not written this time: back to the queue, or given up on the last delivery.
    async fn unwritten(&self, delivery: &Delivery, task: &TaskName) {
        if delivery.attempt >= self.delivery_limit {
            self.give_up(delivery, task, GivenUp::Attempts).await;
        } else {
            self.settle(delivery, Outcome::Requeued, task).await;
        }
    }

    async fn give_up(&self, delivery: &Delivery, task: &TaskName, reason: GivenUp) {
        tracing::error!(job = %task.job_id, task = %task.task_id, attempt = delivery.attempt, reason = reason.name(), "giving the task up: reported, then dead-lettered");
        let report = ProgressMessage {
            v: SCHEMA_VERSION,
            tenant: task.tenant.clone(),
            job_id: task.job_id.clone(),
            task_id: task.task_id.clone(),
            ok: 0,
            failed: 0,
            given_up: Some(reason),
        };
        self.report(task, report).await;
        self.settle(delivery, Outcome::GivenUp, task).await;
    }
}

#[derive(Debug, Clone, Copy)]
enum Outcome {
    Acked,
    /// Acked without running: `skipped` (its job was cancelled) or `expired`.
    Unprocessed(&'static str),
    Requeued,
    GivenUp,
}

impl Outcome {
    fn name(self) -> &'static str {
        match self {
            Outcome::Acked => "acked",
            Outcome::Unprocessed(result) => result,
            Outcome::Requeued => "requeued",
            Outcome::GivenUp => "given_up",
        }
    }
}

/// One task message's settlement, owed exactly once. See the module's documentation.
pub struct Ticket {
    delivery: Option<Delivery>,
    task: TaskName,
    settler: Arc<Settler>,
}

impl Ticket {
    /// Which delivery of its message this is (1 for the first).
    pub fn attempt(&self) -> u32 {
        self.delivery.as_ref().map_or(0, |d| d.attempt)
    }

    /// Whether the queue dead-letters the message if it is returned once more.
    pub fn is_last_attempt(&self) -> bool {
        self.attempt() >= self.settler.delivery_limit
    }

    fn take(&mut self) -> Delivery {
        self.delivery
            .take()
            .expect("a ticket is settled once: every settling method consumes it")
    }

    /// The task's result object at `key` is durable: report the task, then ack. When the
    /// report cannot be sent, the message goes back and its redelivery reports it.
    pub async fn written(mut self, key: String, lines: Vec<ResultLine>) -> Event {
        let delivery = self.take();
        let task = &self.task;
        let report = progress_of(task, &lines);
        if self.settler.report(task, report).await {
            self.settler.settle(&delivery, Outcome::Acked, task).await;
        } else {
            self.settler
                .settle(&delivery, Outcome::Requeued, task)
                .await;
        }
        Event::TaskWritten {
            job_id: task.job_id.clone(),
            task_id: task.task_id.clone(),
            key,
            lines,
        }
    }

    /// The task is not to run (its job was cancelled, or it is too old): acked as it is,
    /// since redelivering or dead-lettering it would only keep its refs.
    pub async fn acked_unprocessed(mut self, result: &'static str) {
        let delivery = self.take();
        self.settler
            .settle(&delivery, Outcome::Unprocessed(result), &self.task)
            .await;
    }

    /// The task did not finish this time: back to the queue for another try, or given up
    /// when this was its last delivery.
    pub async fn unwritten(mut self) -> Event {
        let delivery = self.take();
        self.settler.unwritten(&delivery, &self.task).await;
        self.failed()
    }

    /// The task can never finish (its output refuses it): report it given up, so its
    /// job ends, and dead-letter it.
    pub async fn give_up(mut self, reason: GivenUp) -> Event {
        let delivery = self.take();
        self.settler.give_up(&delivery, &self.task, reason).await;
        self.failed()
    }

    fn failed(&self) -> Event {
        Event::TaskFailed {
            job_id: self.task.job_id.clone(),
            task_id: self.task.task_id.clone(),
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let Some(delivery) = self.delivery.take() else {
            return;
        };
        tracing::warn!(job = %self.task.job_id, task = %self.task.task_id, "a task was dropped unfinished; returning its message to the queue");
        let (settler, task) = (self.settler.clone(), self.task.clone());
        settler
            .runtime
            .clone()
            .spawn(async move { settler.unwritten(&delivery, &task).await });
    }
}

fn progress_of(task: &TaskName, lines: &[ResultLine]) -> ProgressMessage {
    let failed = lines.iter().filter(|l| l.status == Status::Error).count() as u32;
    ProgressMessage {
        v: SCHEMA_VERSION,
        tenant: task.tenant.clone(),
        job_id: task.job_id.clone(),
        task_id: task.task_id.clone(),
        ok: lines.len() as u32 - failed,
        failed,
        given_up: None,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tagfleet_contracts::schema::{Analysis, TaskItem, TaskOptions};
    use tagfleet_contracts::{Pseudonymiser, TenantKey};
    use tagfleet_io::queue::MemoryQueue;

    use super::*;
    use crate::health::{Health, spawn_thread};
    use crate::task::{TaskState, Tenants};

    fn message() -> TaskMessage {
        TaskMessage {
            v: SCHEMA_VERSION,
            job_id: "j".into(),
            task_id: "t000001".into(),
            tenant: "local".into(),
            analyses: vec![Analysis::Tags],
            model: "m@1".into(),
            options: TaskOptions::default(),
            output: None,
            created_at: None,
            items: vec![TaskItem {
                reference: "file:///img/0.jpg".into(),
            }],
        }
    }

    /// A stage thread that panics holding an image fails the worker, and the image's task
    /// returns its message to the queue when the last piece of it is dropped.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stage_that_panics_fails_the_worker_and_its_task_goes_back() {
        let queue = Arc::new(MemoryQueue::new(5));
        queue.publish(message().to_json()).await.unwrap();
        let delivery = queue
            .receive(1, Duration::from_millis(10))
            .await
            .unwrap()
            .remove(0);
        let settler = Settler::new(queue.clone(), None, 5);
        let ticket = settler.ticket(delivery, &message());
        let key = Pseudonymiser::new(TenantKey::new(vec![7; 32]).unwrap());
        let tenant = Tenants::single("local", key).get("local").unwrap().clone();
        let permit = Arc::new(tokio::sync::Semaphore::new(1))
            .try_acquire_owned()
            .unwrap();
        let task = TaskState::new(message(), Some(ticket), "m@1".into(), tenant, permit);
        let work = task.items().next().unwrap();
        drop(task);

        let health = Health::default();
        let thread = spawn_thread(&health, "prepare-0".into(), move || {
            let _holding = work;
            panic!("the decoder's state is corrupt");
        });
        tokio::task::spawn_blocking(move || thread.join())
            .await
            .unwrap()
            .unwrap();
        let failure = health.failure().expect("the worker failed");
        assert!(
            failure.starts_with("prepare-0 panicked: the decoder"),
            "{failure}"
        );
        for _ in 0..100 {
            if queue.ready_len() == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!((queue.ready_len(), queue.unacked_len()), (1, 0));
    }

    /// On the last delivery, a task that did not finish is given up: reported, so that its
    /// job ends, and dead-lettered. Before that, it goes back to the queue.
    #[tokio::test]
    async fn only_the_last_delivery_gives_a_task_up() {
        let queue = Arc::new(MemoryQueue::new(2));
        let progress = Arc::new(MemoryQueue::default());
        let settler = Settler::new(queue.clone(), Some(progress.clone()), 2);
        queue.publish(message().to_json()).await.unwrap();
        for attempt in 1..=2 {
            let delivery = queue
                .receive(1, Duration::from_millis(10))
                .await
                .unwrap()
                .remove(0);
            assert_eq!(delivery.attempt, attempt);
            settler.ticket(delivery, &message()).unwritten().await;
        }
        assert_eq!((queue.ready_len(), queue.dead_letters().len()), (0, 1));
        let reports = progress
            .receive(10, Duration::from_millis(10))
            .await
            .unwrap();
        assert_eq!(reports.len(), 1, "one report, at the end");
        let report = ProgressMessage::from_json(&reports[0].body).unwrap();
        assert_eq!(
            (report.ok, report.failed, report.given_up),
            (0, 0, Some(GivenUp::Attempts))
        );
    }
}
