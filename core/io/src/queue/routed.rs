//! The task queues of a fleet, one per model (named by
//! [`tagfleet_contracts::routing::task_queue`]): what publishes tasks holds them all and
//! sends each task to its model's queue, so a worker only receives tasks it can run.

use std::collections::BTreeMap;
use std::sync::Arc;

use tagfleet_contracts::TaskMessage;

use super::{Queue, QueueError};

/// Why tasks could not be published.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RouteError {
    /// No queue for the task's model: the fleet does not serve it. Nothing was published.
    #[error("no task queue for the model {0}: the fleet does not serve it")]
    Unrouted(String),
    #[error(transparent)]
    Queue(#[from] QueueError),
}

/// A task queue per model id (`name@version`).
#[derive(Clone, Default)]
pub struct TaskQueues {
    by_model: BTreeMap<String, Arc<dyn Queue>>,
}

impl TaskQueues {
    pub fn new(by_model: impl IntoIterator<Item = (String, Arc<dyn Queue>)>) -> Self {
        Self {
            by_model: by_model.into_iter().collect(),
        }
    }

    /// Every model's tasks on `queue`: for one process that both publishes and runs them
    /// (the in-memory queue), and for tests.
    pub fn shared<'a>(models: impl IntoIterator<Item = &'a str>, queue: Arc<dyn Queue>) -> Self {
        Self::new(models.into_iter().map(|m| (m.to_owned(), queue.clone())))
    }

    /// The task queue of `model`, if the fleet serves it.
    pub fn get(&self, model: &str) -> Option<&Arc<dyn Queue>> {
        self.by_model.get(model)
    }

    /// Each model with its queue, by model id.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Arc<dyn Queue>)> {
        self.by_model.iter().map(|(m, q)| (m.as_str(), q))
    }

    /// Publishes each message to its model's queue, in order within each model (with
    /// confirms, where the broker has them). A model without a queue fails the call before
    /// anything is published; a broker failure may leave the models before it published.
    pub async fn publish(&self, messages: &[TaskMessage]) -> Result<(), RouteError> {
        let mut batches: BTreeMap<&str, Vec<Vec<u8>>> = BTreeMap::new();
        for msg in messages {
            if !self.by_model.contains_key(&msg.model) {
                return Err(RouteError::Unrouted(msg.model.clone()));
            }
            batches.entry(&msg.model).or_default().push(msg.to_json());
        }
        for (model, bodies) in batches {
            self.by_model[model].publish_batch(bodies).await?;
        }
        Ok(())
    }
}

impl std::fmt::Debug for TaskQueues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.by_model.keys()).finish()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tagfleet_contracts::schema::TaskPlan;
    use tagfleet_contracts::{Analysis, TaskOptions};

    use super::*;
    use crate::queue::MemoryQueue;

    /// One task per ref, for `model`.
    fn tasks(model: &str, refs: &[&str]) -> Vec<TaskMessage> {
        let plan = TaskPlan {
            job_id: "j".into(),
            tenant: "t".into(),
            analyses: vec![Analysis::Tags],
            model: model.into(),
            options: TaskOptions::default(),
            output: None,
        };
        let refs: Vec<String> = refs.iter().map(|r| r.to_string()).collect();
        plan.messages(0, &refs, 1)
    }

    /// The refs of the tasks waiting in `queue`, in order.
    async fn refs_in(queue: &MemoryQueue) -> Vec<String> {
        let got = queue.receive(100, Duration::from_millis(10)).await.unwrap();
        got.iter()
            .map(|d| {
                TaskMessage::from_json(&d.body).unwrap().items[0]
                    .reference
                    .clone()
            })
            .collect()
    }

    #[tokio::test]
    async fn each_task_goes_to_its_models_queue_in_order() {
        let (a, b) = (Arc::new(MemoryQueue::new(3)), Arc::new(MemoryQueue::new(3)));
        let queues = TaskQueues::new([
            ("a@1".to_owned(), a.clone() as Arc<dyn Queue>),
            ("b@1".to_owned(), b.clone() as Arc<dyn Queue>),
        ]);
        let mut messages = tasks("a@1", &["1.jpg", "3.jpg"]);
        messages.insert(1, tasks("b@1", &["2.jpg"]).remove(0));
        queues.publish(&messages).await.unwrap();
        assert_eq!(refs_in(&a).await, ["1.jpg", "3.jpg"]);
        assert_eq!(refs_in(&b).await, ["2.jpg"]);
    }

    #[tokio::test]
    async fn a_model_without_a_queue_publishes_nothing() {
        let a = Arc::new(MemoryQueue::new(3));
        let queues = TaskQueues::shared(["a@1"], a.clone());
        let messages = [tasks("a@1", &["1.jpg"]), tasks("c@1", &["2.jpg"])].concat();
        assert!(matches!(
            queues.publish(&messages).await,
            Err(RouteError::Unrouted(m)) if m == "c@1"
        ));
        assert!(refs_in(&a).await.is_empty());
    }
}
