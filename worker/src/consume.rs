//! The first stage: take task messages from the queue (as many as there are free task
//! slots), check each against its schema, model, tenant and job, and hand its images on.
//! Messages refused here are settled here. While the store does not answer, no message is
//! taken: waiting costs nothing, a task that fails for it would cost a delivery.

use std::sync::Arc;
use std::time::Duration;

use async_channel::Sender;
use tagfleet_contracts::TaskMessage;
use tagfleet_contracts::keys::Key;
use tagfleet_contracts::schema::{GivenUp, ResultLine, SchemaError};
use tagfleet_io::{Delivery, ObjectStore, Queue};
use tagfleet_models::Classes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::gate::{Admission, JobGate};
use crate::health::Health;
use crate::settle::{Settler, Ticket};
use crate::task::{LiveTenants, TaskState, Work};

/// How long one receive call waits for a message before checking for shutdown.
const RECEIVE_WAIT: Duration = Duration::from_millis(200);

/// The longest pause between two tries to reach the queue: after a broker restart, work
/// resumes within about this long of its return.
const MAX_RECEIVE_BACKOFF: Duration = Duration::from_secs(1);

/// How long a task of a tenant this worker does not know is held, waiting for its
/// secrets file to be reloaded, before it goes back to the queue.
const UNKNOWN_TENANT_HOLD: Duration = Duration::from_secs(30);

/// How long a task for another model is held before it goes back. Each model has its own
/// queue, so such a task was put in the wrong one (by hand, or by an old client): back it
/// goes, and at the delivery limit to the dead-letter queue. Returning it at once would
/// spin on it.
const OTHER_MODEL_HOLD: Duration = Duration::from_secs(2);

/// What the consumer works with.
pub(crate) struct Consumer {
    pub queue: Arc<dyn Queue>,
    pub store: Arc<dyn ObjectStore>,
    pub gate: Arc<JobGate>,
    pub tenants: LiveTenants,
    pub model_id: String,
    /// What this worker's model offers: a task asking for more is given up.
    pub classes: Arc<Classes>,
    pub settler: Arc<Settler>,
    pub health: Health,
    pub in_flight: Arc<Semaphore>,
    pub out: Sender<Work>,
    pub stop: CancellationToken,
    pub exit_when_drained: bool,
}

impl Consumer {
    pub(crate) async fn run(self) {
        let mut backoff = Duration::from_millis(100);
        loop {
            if !self.health.store_up() {
                // The broker must not push messages that would sit unreceived (RabbitMQ's
                // consumer timeout runs on them too); the next receive consumes again.
                if let Err(e) = self.queue.stop_receiving().await {
                    tracing::warn!(error = %e, "pausing the consumer failed");
                }
                tokio::select! {
                    () = self.health.store_answers(&*self.store) => {}
                    () = self.stop.cancelled() => break,
                }
            }
            // Biased: once stopped, a free slot must not win the race and take more work.
            let first = tokio::select! {
                biased;
                () = self.stop.cancelled() => break,
                permit = self.in_flight.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            };
            // Ask for as many messages as there are free slots: fewer round trips.
            let mut permits = vec![first];
            while let Ok(p) = self.in_flight.clone().try_acquire_owned() {
                permits.push(p);
            }
            let received = tokio::select! {
                biased;
                () = self.stop.cancelled() => break,
                r = self.queue.receive(permits.len(), RECEIVE_WAIT) => r,
            };
            let deliveries = match received {
                Ok(deliveries) if deliveries.is_empty() => {
                    if self.exit_when_drained && self.queue.is_drained() {
                        break;
                    }
                    continue;
                }
                Ok(deliveries) => deliveries,
                Err(e) => {
                    tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "receiving from the queue failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_RECEIVE_BACKOFF);
                    continue;
                }
            };
            backoff = Duration::from_millis(100);
            // Unused permits go back when `permits` drops at the end of this turn.
            let mut deliveries = deliveries.into_iter();
            let mut closed = false;
            for (delivery, permit) in deliveries.by_ref().zip(permits.drain(..)) {
                let Some(task) = self.accept(delivery, permit).await else {
                    continue;
                };
                // A closed channel means the next stage died: the task's ticket returns
                // its message when the unsent images drop.
                closed = stream_items(&task, &self.out).await.is_err();
                if closed {
                    break;
                }
            }
            if closed {
                for delivery in deliveries {
                    refuse(&*self.queue, delivery, true).await;
                }
                break;
            }
        }
        // Draining: no new pushes from the broker; what it pushed unasked goes back.
        if let Err(e) = self.queue.stop_receiving().await {
            tracing::warn!(error = %e, "stopping the consumer failed");
        }
    }

    /// Parses and checks a delivery; messages that will not run here are settled here.
    async fn accept(
        &self,
        delivery: Delivery,
        permit: OwnedSemaphorePermit,
    ) -> Option<Arc<TaskState>> {
        let msg = match TaskMessage::from_json(&delivery.body) {
            Ok(msg) => msg,
            Err(e) => {
                tracing::warn!(error = %loggable(&e), "dead-lettering a malformed task message");
                refuse(&*self.queue, delivery, false).await;
                return None;
            }
        };
        if msg.model != self.model_id {
            // The last line behind per-model queues: back to the queue, after a pause so
            // that a worker alone with it does not spin.
            tracing::warn!(job = %msg.job_id, task = %msg.task_id, wanted = %msg.model, serving = %self.model_id, "returning a task for another model");
            let queue = self.queue.clone();
            tokio::spawn(async move {
                tokio::time::sleep(OTHER_MODEL_HOLD).await;
                refuse(&*queue, delivery, true).await;
                drop(permit);
            });
            return None;
        }
        let ticket = self.settler.ticket(delivery, &msg);
        if let Some(why) = self.classes.refuses(&msg) {
            // Every worker of this model is configured alike: redelivery cannot help.
            tracing::warn!(job = %msg.job_id, task = %msg.task_id, reason = %why, "giving up a task this worker cannot run");
            ticket.give_up(GivenUp::Unsupported).await;
            return None;
        }
        let Some(tenant) = self.tenants.get(&msg.tenant) else {
            if !self.tenants.can_change() {
                tracing::warn!(job = %msg.job_id, task = %msg.task_id, tenant = %msg.tenant, "giving up a task of an unknown tenant");
                ticket.give_up(GivenUp::UnknownTenant).await;
                return None;
            }
            tracing::warn!(job = %msg.job_id, task = %msg.task_id, tenant = %msg.tenant, "a task of a tenant this worker does not know: holding it for a reload of the secrets");
            tokio::spawn(hold_for_tenant(
                ticket,
                self.tenants.clone(),
                msg.tenant,
                permit,
                self.stop.clone(),
            ));
            return None;
        };
        let result = match self.gate.admits(&msg).await {
            Admission::Run => None,
            Admission::Skip => {
                tracing::debug!(job = %msg.job_id, task = %msg.task_id, "skipping a task of a cancelled job");
                Some("skipped")
            }
            Admission::TooOld => {
                tracing::warn!(job = %msg.job_id, task = %msg.task_id, created_at = ?msg.created_at, "refusing a task older than the retention (or of unknown age, of a job the store does not know)");
                Some("expired")
            }
        };
        if let Some(result) = result {
            // Acked unprocessed: redelivering or dead-lettering it would only keep its refs.
            ticket.acked_unprocessed(result).await;
            return None;
        }
        let ticket = match self.already_written(&msg, ticket).await {
            Ok(ticket) => ticket,
            Err(()) => return None,
        };
        Some(TaskState::new(
            msg,
            Some(ticket),
            self.model_id.clone(),
            tenant,
            permit,
        ))
    }

    /// A redelivered task whose result object is already durable (its report or ack was
    /// lost) is reported and acked without being run again.
    async fn already_written(&self, msg: &TaskMessage, ticket: Ticket) -> Result<Ticket, ()> {
        let ours = msg.output.is_none() || msg.options.retain;
        if ticket.attempt() <= 1 || !ours {
            return Ok(ticket);
        }
        let key = Key::result(&msg.tenant, &msg.job_id, &msg.task_id).to_string();
        let Ok(body) = self.store.get(&key).await else {
            return Ok(ticket);
        };
        let lines: Option<Vec<ResultLine>> = body
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).ok())
            .collect();
        match lines {
            Some(lines) if lines.len() == msg.items.len() => {
                tracing::info!(job = %msg.job_id, task = %msg.task_id, "the task was written before: reporting it without running it again");
                ticket.written(key, lines).await;
                Err(())
            }
            _ => Ok(ticket),
        }
    }
}

/// Hands a task's images to the fetch stage; fails when it is gone.
async fn stream_items(task: &Arc<TaskState>, out: &Sender<Work>) -> Result<(), ()> {
    for work in task.items() {
        out.send(work).await.map_err(drop)?;
    }
    Ok(())
}

/// Settles a message that never became a task.
async fn refuse(queue: &dyn Queue, delivery: Delivery, requeue: bool) {
    let result = if requeue { "requeued" } else { "dead_lettered" };
    crate::metrics::MESSAGES.with_label_values(&[result]).inc();
    if let Err(e) = queue.nack(&delivery, requeue).await {
        tracing::error!(error = %e, "nack failed");
    }
}

/// Holds a task of an unknown tenant until the tenants are reloaded (or a while), then
/// returns it to the queue: its next delivery finds the tenant if the reload brought it.
async fn hold_for_tenant(
    ticket: Ticket,
    mut tenants: LiveTenants,
    tenant: String,
    _permit: OwnedSemaphorePermit,
    stop: CancellationToken,
) {
    let deadline = tokio::time::Instant::now() + UNKNOWN_TENANT_HOLD;
    loop {
        tokio::select! {
            () = tenants.changed() => {
                if tenants.get(&tenant).is_some() {
                    break;
                }
            }
            () = tokio::time::sleep_until(deadline) => break,
            () = stop.cancelled() => break,
        }
    }
    if tenants.get(&tenant).is_some() {
        ticket.unwritten().await;
    } else if ticket.is_last_attempt() {
        ticket.give_up(GivenUp::UnknownTenant).await;
    } else {
        ticket.unwritten().await;
    }
}

/// A schema error fit for logs: serde quotes offending values, which could be refs.
fn loggable(e: &SchemaError) -> String {
    let text = e.to_string();
    if text.contains('"') {
        "the message does not match the task schema".into()
    } else {
        text
    }
}
