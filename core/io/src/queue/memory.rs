//! An in-process queue for the embedded mode and unit tests. It keeps the broker
//! semantics the pipeline relies on: unacked messages, redelivery, a delivery limit and a
//! dead-letter list.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;

use super::{DEFAULT_DELIVERY_LIMIT, Delivery, Queue, QueueError};

#[derive(Debug)]
struct Message {
    body: Vec<u8>,
    deliveries: u32,
}

#[derive(Debug, Default)]
struct State {
    ready: VecDeque<Message>,
    unacked: HashMap<u64, Message>,
    dead: Vec<Vec<u8>>,
    next_handle: u64,
}

#[derive(Debug)]
pub struct MemoryQueue {
    state: Mutex<State>,
    ready: Notify,
    delivery_limit: u32,
}

impl Default for MemoryQueue {
    fn default() -> Self {
        Self::new(DEFAULT_DELIVERY_LIMIT)
    }
}

impl MemoryQueue {
    pub fn new(delivery_limit: u32) -> Self {
        Self {
            state: Mutex::default(),
            ready: Notify::new(),
            delivery_limit: delivery_limit.max(1),
        }
    }

    /// Bodies of the dead-lettered messages, oldest first.
    pub fn dead_letters(&self) -> Vec<Vec<u8>> {
        self.lock().dead.clone()
    }

    /// Messages waiting to be delivered.
    pub fn ready_len(&self) -> usize {
        self.lock().ready.len()
    }

    /// Messages delivered and not yet acked or nacked.
    pub fn unacked_len(&self) -> usize {
        self.lock().unacked.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock leaves plain data behind: still consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn take(&self, max: usize) -> Vec<Delivery> {
        let mut state = self.lock();
        let mut out = Vec::new();
        while out.len() < max {
            let Some(mut msg) = state.ready.pop_front() else {
                break;
            };
            msg.deliveries += 1;
            state.next_handle += 1;
            let handle = state.next_handle;
            out.push(Delivery {
                body: msg.body.clone(),
                handle: handle.to_string(),
                attempt: msg.deliveries,
            });
            state.unacked.insert(handle, msg);
        }
        out
    }

    fn settle(&self, delivery: &Delivery) -> Result<Message, QueueError> {
        let handle: u64 = delivery
            .handle
            .parse()
            .map_err(|_| QueueError::UnknownDelivery(delivery.handle.clone()))?;
        self.lock()
            .unacked
            .remove(&handle)
            .ok_or_else(|| QueueError::UnknownDelivery(delivery.handle.clone()))
    }
}

#[async_trait]
impl Queue for MemoryQueue {
    async fn publish(&self, body: Vec<u8>) -> Result<(), QueueError> {
        self.lock().ready.push_back(Message {
            body,
            deliveries: 0,
        });
        self.ready.notify_one();
        Ok(())
    }

    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>, QueueError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.ready.notified();
            let got = self.take(max.max(1));
            if !got.is_empty() {
                // Others may be waiting and more may be ready.
                if self.ready_len() > 0 {
                    self.ready.notify_one();
                }
                return Ok(got);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Ok(Vec::new());
            }
        }
    }

    async fn ack(&self, delivery: &Delivery) -> Result<(), QueueError> {
        self.settle(delivery).map(drop)
    }

    async fn nack(&self, delivery: &Delivery, requeue: bool) -> Result<(), QueueError> {
        let msg = self.settle(delivery)?;
        let mut state = self.lock();
        if requeue && msg.deliveries < self.delivery_limit {
            state.ready.push_back(msg);
            drop(state);
            self.ready.notify_one();
        } else {
            state.dead.push(msg.body);
        }
        Ok(())
    }

    fn is_drained(&self) -> bool {
        let state = self.lock();
        state.ready.is_empty() && state.unacked.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NO_WAIT: Duration = Duration::from_millis(1);

    #[tokio::test]
    async fn ack_removes_and_nack_redelivers() {
        let q = MemoryQueue::default();
        q.publish(b"a".to_vec()).await.unwrap();
        let first = q.receive(10, NO_WAIT).await.unwrap();
        assert_eq!(first.len(), 1);
        assert!(!q.is_drained(), "an unacked message is outstanding");
        q.nack(&first[0], true).await.unwrap();
        let again = q.receive(10, NO_WAIT).await.unwrap();
        assert_eq!((again[0].body.as_slice(), again[0].attempt), (&b"a"[..], 2));
        q.ack(&again[0]).await.unwrap();
        assert!(q.is_drained());
        assert!(q.ack(&again[0]).await.is_err(), "a delivery settles once");
    }

    #[tokio::test]
    async fn poison_message_is_dead_lettered_at_the_limit() {
        let q = MemoryQueue::new(3);
        q.publish(b"poison".to_vec()).await.unwrap();
        for attempt in 1..=3 {
            let d = q
                .receive(1, NO_WAIT)
                .await
                .unwrap()
                .pop()
                .expect("delivered");
            assert_eq!(d.attempt, attempt);
            q.nack(&d, true).await.unwrap();
        }
        assert!(q.receive(1, NO_WAIT).await.unwrap().is_empty());
        assert_eq!(q.dead_letters(), vec![b"poison".to_vec()]);
        assert!(q.is_drained());
    }

    #[tokio::test]
    async fn receive_wakes_on_publish() {
        let q = std::sync::Arc::new(MemoryQueue::default());
        let waiter = {
            let q = q.clone();
            tokio::spawn(async move { q.receive(1, Duration::from_secs(10)).await })
        };
        tokio::task::yield_now().await;
        q.publish(b"x".to_vec()).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn receive_returns_at_most_max() {
        let q = MemoryQueue::default();
        for i in 0..5u8 {
            q.publish(vec![i]).await.unwrap();
        }
        assert_eq!(q.receive(3, NO_WAIT).await.unwrap().len(), 3);
        assert_eq!(q.ready_len(), 2);
        assert_eq!(q.unacked_len(), 3);
    }
}
