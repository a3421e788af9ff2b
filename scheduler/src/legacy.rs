//! The upgrade to per-model task queues: versions before them published every task to one
//! queue named as the base (`--queue-name`, `sqs://NAME`). With `--drain-legacy-queue`
//! the scheduler moves what waits there to each task's model queue, and keeps looking
//! while it runs, for tasks that old workers return or old clients still publish.
//!
//! A task is published to its new queue before it is acked in the old one: a crash in
//! between leaves it in both, and the copy runs twice at worst (its result key is
//! deterministic, its progress counted once). A task of a model the fleet does not serve,
//! or a message that is no task, is dead-lettered: no worker would ever take it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tagfleet_contracts::TaskMessage;
use tagfleet_io::queue::{RouteError, TaskQueues};
use tagfleet_io::{Delivery, Queue};
use tokio_util::sync::CancellationToken;

/// Messages taken from the old queue at once.
const BATCH: usize = 64;

/// How long a receive waits before the old queue counts as empty for now.
const RECEIVE_WAIT: Duration = Duration::from_secs(2);

/// What one pass over the old queue did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Drained {
    /// Tasks now in their model's queue.
    pub moved: u64,
    /// Tasks of models the fleet does not serve, and messages that are no task.
    pub dead_lettered: u64,
}

/// Moves every task waiting in `legacy` to its model's queue in `queues`, until a receive
/// finds nothing (or `stop`). Fails when a queue fails; what was not acked stays behind.
pub async fn drain(
    legacy: &dyn Queue,
    queues: &TaskQueues,
    stop: &CancellationToken,
) -> Result<Drained, RouteError> {
    let mut drained = Drained::default();
    loop {
        let batch = tokio::select! {
            batch = legacy.receive(BATCH, RECEIVE_WAIT) => batch?,
            () = stop.cancelled() => return Ok(drained),
        };
        if batch.is_empty() {
            return Ok(drained);
        }
        let mut by_model: BTreeMap<String, Vec<Delivery>> = BTreeMap::new();
        for delivery in batch {
            match TaskMessage::from_json(&delivery.body) {
                Ok(task) if queues.get(&task.model).is_some() => {
                    by_model.entry(task.model).or_default().push(delivery);
                }
                Ok(task) => {
                    tracing::warn!(job = %task.job_id, task = %task.task_id, model = %task.model, "dead-lettering a task of a model the fleet does not serve");
                    legacy.nack(&delivery, false).await?;
                    drained.dead_lettered += 1;
                }
                Err(_) => {
                    tracing::warn!(
                        "dead-lettering a message of the old task queue that is no task"
                    );
                    legacy.nack(&delivery, false).await?;
                    drained.dead_lettered += 1;
                }
            }
        }
        for (model, deliveries) in by_model {
            let bodies = deliveries.iter().map(|d| d.body.clone()).collect();
            queues
                .get(&model)
                .expect("checked above")
                .publish_batch(bodies)
                .await?;
            for delivery in &deliveries {
                legacy.ack(delivery).await?;
            }
            drained.moved += deliveries.len() as u64;
        }
    }
}

/// Drains `legacy` now and every `every` until `stop`, logging what moved. A failed pass
/// is logged and tried again at the next.
pub async fn drain_until_stopped(
    legacy: Arc<dyn Queue>,
    queues: TaskQueues,
    every: Duration,
    stop: CancellationToken,
) {
    loop {
        match drain(&*legacy, &queues, &stop).await {
            Ok(Drained {
                moved: 0,
                dead_lettered: 0,
            }) => {}
            Ok(d) => tracing::info!(
                moved = d.moved,
                dead_lettered = d.dead_lettered,
                "moved tasks from the old task queue to their models' queues"
            ),
            Err(e) => tracing::warn!(error = %e, "moving tasks from the old task queue failed"),
        }
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = stop.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use tagfleet_contracts::schema::TaskPlan;
    use tagfleet_contracts::{Analysis, TaskOptions};
    use tagfleet_io::queue::MemoryQueue;

    use super::*;

    fn task(model: &str, image: &str) -> Vec<u8> {
        let plan = TaskPlan {
            job_id: "j".into(),
            tenant: "t".into(),
            analyses: vec![Analysis::Tags],
            model: model.into(),
            options: TaskOptions::default(),
            output: None,
        };
        plan.messages(0, &[image.to_owned()], 1)[0].to_json()
    }

    // Paused: the last receive waits out its time on an empty queue.
    #[tokio::test(start_paused = true)]
    async fn each_task_moves_to_its_models_queue_and_the_rest_is_dead_lettered() {
        let legacy = MemoryQueue::new(3);
        let (m, n) = (Arc::new(MemoryQueue::new(3)), Arc::new(MemoryQueue::new(3)));
        let queues = TaskQueues::new([
            ("m@1".to_owned(), m.clone() as Arc<dyn Queue>),
            ("n@2".to_owned(), n.clone() as Arc<dyn Queue>),
        ]);
        let bodies = [
            task("m@1", "a.jpg"),
            task("n@2", "b.jpg"),
            task("gone@1", "c.jpg"),
            b"{\"not\": \"a task\"}".to_vec(),
            task("m@1", "d.jpg"),
        ];
        legacy.publish_batch(bodies.to_vec()).await.unwrap();
        let drained = drain(&legacy, &queues, &CancellationToken::new())
            .await
            .unwrap();
        assert_eq!(
            drained,
            Drained {
                moved: 3,
                dead_lettered: 2
            }
        );
        let waiting = |q: &MemoryQueue| q.ready_len();
        assert_eq!((waiting(&m), waiting(&n), waiting(&legacy)), (2, 1, 0));
        assert_eq!(legacy.unacked_len(), 0);
        assert_eq!(legacy.dead_letters(), bodies[2..4].to_vec());
        let got = m.receive(10, Duration::from_millis(10)).await.unwrap();
        let bodies_m: Vec<Vec<u8>> = got.into_iter().map(|d| d.body).collect();
        assert_eq!(bodies_m, [bodies[0].clone(), bodies[4].clone()]);
    }
}
