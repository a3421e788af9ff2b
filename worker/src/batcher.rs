//! The dynamic batcher: a batch closes when it holds `max_batch` images, when its oldest
//! image has waited `max_delay` (Triton's dynamic batcher), or, for images that travel as
//! pixels to a GPU, when the next one would take its pixels past `max_batch_bytes`.
//! Batches go to a channel of capacity 1 that every executor pulls from, so the next
//! batch is formed while the current one runs and a faster device simply takes more.

use std::time::Duration;

use async_channel::{Receiver, Sender};
use tokio::time::Instant;

use crate::prepare::{ModelInput, Prepared};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchPolicy {
    pub max_batch: usize,
    pub max_delay: Duration,
    /// Most bytes of pixels one batch uploads; `None`: images are counted only. An image
    /// that alone is over it still runs, in a batch of its own.
    pub max_batch_bytes: Option<usize>,
}

/// Bytes of pixels an image brings to its batch: none for a ready tensor, whose size is
/// the model's.
fn pixel_bytes(item: &Prepared) -> usize {
    match &item.input {
        ModelInput::Pixels { image, .. } => image.pixels.as_raw().len(),
        ModelInput::Tensor(_) => 0,
    }
}

/// Images that run together.
pub struct Batch {
    pub items: Vec<Prepared>,
}

/// Forms batches until `input` closes, then flushes what it holds.
pub async fn run(input: Receiver<Prepared>, output: Sender<Batch>, policy: BatchPolicy) {
    let max_batch = policy.max_batch.max(1);
    let max_bytes = policy.max_batch_bytes.unwrap_or(usize::MAX);
    // The image that would have taken the last batch over its bytes opens the next one.
    let mut carried: Option<Prepared> = None;
    loop {
        let first = match carried.take() {
            Some(item) => item,
            None => match input.recv().await {
                Ok(item) => item,
                Err(_) => return,
            },
        };
        let deadline = Instant::now() + policy.max_delay;
        let mut bytes = pixel_bytes(&first);
        let mut items = Vec::with_capacity(max_batch);
        items.push(first);
        while items.len() < max_batch {
            // Take what is already waiting without yielding to the timer.
            let next = match input.try_recv() {
                Ok(item) => item,
                Err(async_channel::TryRecvError::Closed) => break,
                Err(async_channel::TryRecvError::Empty) => {
                    match tokio::time::timeout_at(deadline, input.recv()).await {
                        Ok(Ok(item)) => item,
                        // Closed, or the oldest image has waited long enough.
                        Ok(Err(_)) | Err(_) => break,
                    }
                }
            };
            let more = pixel_bytes(&next);
            if bytes + more > max_bytes {
                carried = Some(next);
                break;
            }
            bytes += more;
            items.push(next);
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
            max_batch_bytes: None,
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

    /// Images of `sizes` bytes of pixels each, in that order.
    fn pixels(sizes: &[u32]) -> Vec<Prepared> {
        let budget = crate::budget::PixelBudget::new(1 << 30);
        works(sizes.len())
            .into_iter()
            .zip(sizes)
            .map(|(work, &bytes)| {
                let image = tagfleet_models::Decoded::full(image::RgbImage::new(bytes / 3, 1));
                Prepared {
                    work,
                    input: ModelInput::Pixels {
                        _budget: budget.reserve(bytes as usize),
                        crop: (0.0, 0.0, f64::from(bytes / 3), 1.0),
                        image,
                    },
                    width: 1,
                    height: 1,
                    described: Default::default(),
                }
            })
            .collect()
    }

    #[tokio::test]
    async fn batches_of_pixels_close_on_their_bytes_and_carry_the_next_image_over() {
        let (in_tx, in_rx) = async_channel::bounded(16);
        let (out_tx, out_rx) = async_channel::bounded(1);
        let policy = BatchPolicy {
            max_batch: 4,
            max_delay: Duration::from_secs(3600),
            max_batch_bytes: Some(900),
        };
        let batcher = tokio::spawn(run(in_rx, out_tx, policy));
        // 300+300+300 fill 900; 600 opens the next; 1500 is over alone and runs alone;
        // then four small ones close on the count.
        for p in pixels(&[300, 300, 300, 600, 1500, 30, 30, 30, 30, 30]) {
            in_tx.send(p).await.unwrap();
        }
        drop(in_tx);
        let mut batches = Vec::new();
        while let Ok(batch) = out_rx.recv().await {
            batches.push(batch.items.iter().map(pixel_bytes).collect::<Vec<_>>());
        }
        batcher.await.unwrap();
        assert_eq!(
            batches,
            [
                vec![300, 300, 300],
                vec![600],
                vec![1500],
                vec![30, 30, 30, 30],
                vec![30]
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_lone_image_waits_at_most_max_delay() {
        let (in_tx, in_rx) = async_channel::bounded(16);
        let (out_tx, out_rx) = async_channel::bounded(1);
        let policy = BatchPolicy {
            max_batch: 8,
            max_delay: Duration::from_millis(50),
            max_batch_bytes: None,
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
