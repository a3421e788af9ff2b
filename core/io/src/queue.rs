//! The task queue abstraction. Delivery is at-least-once: a message is acknowledged only
//! after its results are durable, so a crash means redelivery, never loss.

use std::time::Duration;

use async_trait::async_trait;

pub mod memory;
pub mod rabbitmq;
pub mod routed;
pub mod sqs;

pub use memory::MemoryQueue;
pub use rabbitmq::{RabbitOptions, RabbitQueue};
pub use routed::{RouteError, TaskQueues};
pub use sqs::{SqsOptions, SqsQueue};

/// Deliveries of one message before it is dead-lettered (RabbitMQ's `x-delivery-limit`,
/// SQS's `maxReceiveCount`, the in-memory queue's limit), unless configured otherwise.
pub const DEFAULT_DELIVERY_LIMIT: u32 = 5;

/// A received message, to be acked or nacked exactly once.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub body: Vec<u8>,
    /// Backend-specific handle (delivery tag, receipt handle) naming this delivery.
    pub handle: String,
    /// How many times this message has been delivered, this time included.
    pub attempt: u32,
}

/// How many messages wait, for metrics and autoscaling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Depth {
    pub ready: u64,
    pub dead_lettered: u64,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum QueueError {
    #[error("queue connection lost: {0}")]
    Connection(String),
    #[error("unknown delivery handle {0}")]
    UnknownDelivery(String),
    #[error("queue is closed")]
    Closed,
    /// The broker holds the queue with other settings than this build declares: an
    /// operator must act (see the upgrade notes), retrying cannot help.
    #[error("{0}")]
    Declaration(String),
}

impl QueueError {
    /// Whether retrying the same call later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, QueueError::Connection(_))
    }
}

#[async_trait]
pub trait Queue: Send + Sync {
    /// Publishes one message durably.
    async fn publish(&self, body: Vec<u8>) -> Result<(), QueueError>;

    /// Publishes several messages; brokers with a batch call override this.
    async fn publish_batch(&self, bodies: Vec<Vec<u8>>) -> Result<(), QueueError> {
        for body in bodies {
            self.publish(body).await?;
        }
        Ok(())
    }

    /// Waits up to `wait` for at least one message, returns up to `max`.
    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>, QueueError>;

    /// The message is done: its results are durable.
    async fn ack(&self, delivery: &Delivery) -> Result<(), QueueError>;

    /// The message was not done. With `requeue` it is delivered again (up to the
    /// queue's delivery limit, then dead-lettered); without, it is dead-lettered now.
    async fn nack(&self, delivery: &Delivery, requeue: bool) -> Result<(), QueueError>;

    /// Stops the flow of new messages, for a worker that drains: the broker stops
    /// pushing, and messages it had already pushed that were not received yet go back
    /// now, unstarted (each push a draining worker would never start costs a delivery).
    /// Messages already received stay to be settled. Queues that only hand out what is
    /// asked for have nothing to do.
    async fn stop_receiving(&self) -> Result<(), QueueError> {
        Ok(())
    }

    /// Messages waiting in the queue and in its dead-letter queue, where the backend can
    /// tell (approximately, on SQS). For metrics.
    async fn depth(&self) -> Result<Option<Depth>, QueueError> {
        Ok(None)
    }

    /// True when nothing is waiting and nothing is unacknowledged. Only queues that know
    /// this exactly (the in-memory one) say so; brokers always answer false, so a worker
    /// on a broker runs until it is told to stop.
    fn is_drained(&self) -> bool {
        false
    }
}
