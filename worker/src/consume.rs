//! The first stage: take task messages from the queue (as many as there are free task
//! slots), check each against its schema, model, tenant and job, and hand its images on.
//! Messages refused here are settled here.

use std::sync::Arc;
use std::time::Duration;

use async_channel::Sender;
use tagfleet_contracts::TaskMessage;
use tagfleet_contracts::schema::SchemaError;
use tagfleet_io::{Delivery, Queue};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::gate::{Admission, JobGate};
use crate::task::{TaskState, Tenants, Work};

/// How long one receive call waits for a message before checking for shutdown.
const RECEIVE_WAIT: Duration = Duration::from_millis(200);

#[allow(clippy::too_many_arguments)]
pub(crate) async fn consume(
    queue: Arc<dyn Queue>,
    gate: Arc<JobGate>,
    tenants: Tenants,
    model_id: String,
    in_flight: Arc<Semaphore>,
    out: Sender<Work>,
    shutdown: CancellationToken,
    exit_when_drained: bool,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let first = tokio::select! {
            permit = in_flight.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            () = shutdown.cancelled() => break,
        };
        // Ask for as many messages as there are free slots: fewer round trips to the broker.
        let mut permits = vec![first];
        while let Ok(p) = in_flight.clone().try_acquire_owned() {
            permits.push(p);
        }
        let received = tokio::select! {
            r = queue.receive(permits.len(), RECEIVE_WAIT) => r,
            () = shutdown.cancelled() => break,
        };
        let deliveries = match received {
            Ok(deliveries) if deliveries.is_empty() => {
                if exit_when_drained && queue.is_drained() {
                    break;
                }
                continue;
            }
            Ok(deliveries) => deliveries,
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "receiving from the queue failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        // Unused permits go back when `permits` drops at the end of this turn.
        for (delivery, permit) in deliveries.into_iter().zip(permits.drain(..)) {
            let Some(task) = accept(&queue, &gate, &tenants, &model_id, delivery, permit).await
            else {
                continue;
            };
            crate::metrics::IN_FLIGHT.add(task.msg.items.len() as i64);
            for work in task.items() {
                if out.send(work).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Parses and checks a delivery; refused messages are nacked here.
async fn accept(
    queue: &Arc<dyn Queue>,
    gate: &JobGate,
    tenants: &Tenants,
    model_id: &str,
    delivery: Delivery,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> Option<Arc<TaskState>> {
    let refuse = |delivery: Delivery, requeue: bool| async move {
        let result = if requeue { "requeued" } else { "dead_lettered" };
        crate::metrics::MESSAGES.with_label_values(&[result]).inc();
        if let Err(e) = queue.nack(&delivery, requeue).await {
            tracing::error!(error = %e, "nack failed");
        }
    };
    let msg = match TaskMessage::from_json(&delivery.body) {
        Ok(msg) => msg,
        Err(e) => {
            tracing::warn!(error = %loggable(&e), "dead-lettering a malformed task message");
            refuse(delivery, false).await;
            return None;
        }
    };
    if msg.model != model_id {
        // Another worker of the fleet may serve that model.
        tracing::warn!(job = %msg.job_id, task = %msg.task_id, wanted = %msg.model, serving = %model_id, "returning a task for another model");
        refuse(delivery, true).await;
        return None;
    }
    let Some(tenant) = tenants.get(&msg.tenant).cloned() else {
        tracing::warn!(job = %msg.job_id, task = %msg.task_id, tenant = %msg.tenant, "dead-lettering a task of an unknown tenant");
        refuse(delivery, false).await;
        return None;
    };
    let result = match gate.admits(&msg).await {
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
        crate::metrics::MESSAGES.with_label_values(&[result]).inc();
        if let Err(e) = queue.ack(&delivery).await {
            tracing::warn!(error = %e, "ack of a refused task failed");
        }
        return None;
    }
    Some(TaskState::new(
        msg,
        delivery,
        model_id.to_owned(),
        tenant,
        permit,
    ))
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
