//! Executors: one OS thread per device, owning one [`Backend`], pulling batches from the
//! queue all executors share. Postprocessing runs here too: it is cheap next to inference
//! and keeps the batch's outputs local.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Instant;

use async_channel::{Receiver, Sender};
use tagfleet_core::schema::{Analysis, ResultLine, SCHEMA_VERSION, Status};
use tagfleet_core::{ErrorKind, ImageError};
use tagfleet_models::postprocess::{l2_normalised, top_k_tags};
use tagfleet_models::{Backend, BackendError, BatchOutput};

use crate::batcher::Batch;
use crate::prepare::Prepared;
use crate::task::Completed;

/// Starts the executor thread for `backend`; it stops when `input` closes.
pub fn spawn(
    mut backend: Box<dyn Backend>,
    input: Receiver<Batch>,
    output: Sender<Completed>,
    labels: Arc<Vec<String>>,
) -> std::thread::JoinHandle<()> {
    let name = format!("executor-{}", backend.device());
    let device = backend.requested_device();
    crate::metrics::EXECUTORS
        .with_label_values(&[&device.to_string(), backend.device().kind()])
        .set(1);
    std::thread::Builder::new()
        .name(name)
        .spawn(move || {
            while let Ok(batch) = input.recv_blocking() {
                for done in execute(backend.as_mut(), batch, &labels) {
                    if output.send_blocking(done).is_err() {
                        return;
                    }
                }
            }
        })
        .expect("spawning an executor thread")
}

/// Runs one batch and turns its outputs into result lines, one per image.
pub fn execute(backend: &mut dyn Backend, batch: Batch, labels: &[String]) -> Vec<Completed> {
    let n = batch.items.len();
    let want_embedding = batch
        .items
        .iter()
        .any(|p| p.work.task.msg.analyses.contains(&Analysis::Embedding));
    let mut input = Vec::with_capacity(batch.items.iter().map(|p| p.tensor.len()).sum());
    for item in &batch.items {
        input.extend_from_slice(&item.tensor);
    }
    let start = Instant::now();
    // A panicking backend costs this batch, not the worker (nor the tasks waiting on it).
    let result =
        std::panic::catch_unwind(AssertUnwindSafe(|| backend.run(&input, n, want_embedding)))
            .unwrap_or_else(|_| Err(BackendError::new("the inference backend panicked")));
    let inference_ms = start.elapsed().as_secs_f64() * 1e3;
    crate::metrics::BATCH_SIZE.observe(n as f64);
    crate::metrics::EXECUTOR_BUSY
        .with_label_values(&[&backend.requested_device().to_string()])
        .inc_by(inference_ms / 1e3);
    if let Err(e) = &result {
        tracing::error!(device = %backend.device(), images = n, error = %e, "batch failed");
    }
    batch
        .items
        .into_iter()
        .enumerate()
        .map(|(i, mut prepared)| {
            prepared.work.timings.record("inference", inference_ms);
            let line = match &result {
                Ok(out) => ok_line(&mut prepared, out, i, labels),
                Err(e) => prepared
                    .work
                    .failed(ImageError::new(ErrorKind::Inference, e.to_string())),
            };
            Completed {
                work: prepared.work,
                line,
            }
        })
        .collect()
}

fn ok_line(
    prepared: &mut Prepared,
    out: &BatchOutput,
    row: usize,
    labels: &[String],
) -> ResultLine {
    let work = &mut prepared.work;
    let msg = &work.task.msg;
    let tags = msg.analyses.contains(&Analysis::Tags).then(|| {
        top_k_tags(
            out.logits_row(row),
            labels,
            msg.options.top_k,
            msg.options.threshold,
        )
    });
    let embedding = msg
        .analyses
        .contains(&Analysis::Embedding)
        .then(|| out.embedding_row(row).map(l2_normalised))
        .flatten();
    work.timings.lap("postprocess");
    ResultLine {
        v: SCHEMA_VERSION,
        image: work.pseudonym(),
        key_id: work.task.pseudonymiser_key_id().to_owned(),
        status: Status::Ok,
        model: work.task.model_id.clone(),
        width: Some(prepared.width),
        height: Some(prepared.height),
        tags,
        embedding,
        error: None,
        timings_ms: work.timings.ms.clone(),
    }
}
