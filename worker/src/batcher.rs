//! The dynamic batcher: a batch closes when it holds `max_batch` images or when its oldest
//! image has waited `max_delay` (Triton's dynamic batcher). Batches go to a channel of
//! capacity 1 that every executor pulls from, so the next batch is formed while the
//! current one runs and a faster device simply takes more.

use std::time::Duration;

use async_channel::{Receiver, Sender};
use tokio::time::Instant;

use crate::prepare::Prepared;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchPolicy {
    pub max_batch: usize,
    pub max_delay: Duration,
}

/// Images that run together.
pub struct Batch {
    pub items: Vec<Prepared>,
}

/// Forms batches until `input` closes, then flushes what it holds.
pub async fn run(input: Receiver<Prepared>, output: Sender<Batch>, policy: BatchPolicy) {
    let max_batch = policy.max_batch.max(1);
    while let Ok(first) = input.recv().await {
        let deadline = Instant::now() + policy.max_delay;
        let mut items = Vec::with_capacity(max_batch);
        items.push(first);
        while items.len() < max_batch {
            // Take what is already waiting without yielding to the timer.
            match input.try_recv() {
                Ok(item) => {
                    items.push(item);
                    continue;
                }
                Err(async_channel::TryRecvError::Closed) => break,
                Err(async_channel::TryRecvError::Empty) => {}
            }
            match tokio::time::timeout_at(deadline, input.recv()).await {
                Ok(Ok(item)) => items.push(item),
                // Closed, or the oldest image has waited long enough.
                Ok(Err(_)) | Err(_) => break,
            }
        }
        for item in &mut items {
            item.work.timings.lap("queue");
        }
        if output.send(Batch { items }).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prepare::ModelInput;
    use crate::task::tests::works;

    fn prepared(n: usize) -> Vec<Prepared> {
        works(n)
            .into_iter()
            .map(|work| Prepared {
                work,
                input: ModelInput::Tensor(vec![0.5; 3]),
                width: 1,
                height: 1,
                described: Default::default(),
            })
            .collect()
    }

    async fn sizes(rx: &Receiver<Batch>, count: usize) -> Vec<usize> {
        let mut out = Vec::new();
        for _ in 0..count {
            out.push(rx.recv().await.expect("a batch").items.len());
        }
        out
    }

    #[tokio::test]
    async fn closes_full_batches_and_flushes_the_rest_on_close() {
        let (in_tx, in_rx) = async_channel::bounded(16);
        let (out_tx, out_rx) = async_channel::bounded(1);
        let policy = BatchPolicy {
            max_batch: 2,
            max_delay: Duration::from_secs(3600),
        };
        let batcher = tokio::spawn(run(in_rx, out_tx, policy));
        for p in prepared(5) {
            in_tx.send(p).await.unwrap();
        }
        assert_eq!(sizes(&out_rx, 2).await, [2, 2]);
        drop(in_tx);
        assert_eq!(
            sizes(&out_rx, 1).await,
            [1],
            "closing the input flushes the partial batch"
        );
        batcher.await.unwrap();
        assert!(
            out_rx.recv().await.is_err(),
            "the batcher closes its output when done"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_lone_image_waits_at_most_max_delay() {
        let (in_tx, in_rx) = async_channel::bounded(16);
        let (out_tx, out_rx) = async_channel::bounded(1);
        let policy = BatchPolicy {
            max_batch: 8,
            max_delay: Duration::from_millis(50),
        };
        tokio::spawn(run(in_rx, out_tx, policy));
        let start = Instant::now();
        in_tx.send(prepared(1).pop().unwrap()).await.unwrap();
        assert_eq!(sizes(&out_rx, 1).await, [1]);
        // Paused time: the clock moved exactly by the delay, the input is still open.
        assert_eq!(start.elapsed(), Duration::from_millis(50));
        assert!(!in_tx.is_closed());
    }
}
