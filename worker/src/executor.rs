//! Executors: one OS thread per device, owning one [`Backend`], pulling batches from the
//! queue all executors share. Postprocessing runs here too: it is cheap next to inference
//! and keeps the batch's outputs local.
//!
//! A batch of decoded pixels goes to a backend that preprocesses on its GPU as it is;
//! any other backend gets float tensors, preprocessed on this thread where the decode
//! threads left it to the executors.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Instant;

use async_channel::{Receiver, Sender};
use tagfleet_contracts::schema::{Analysis, ResultLine, SCHEMA_VERSION, Status};
use tagfleet_contracts::{ErrorKind, ImageError};
use tagfleet_models::postprocess::{l2_normalised, top_k_tags};
use tagfleet_models::preprocess::Crop;
use tagfleet_models::spec::InputSpec;
use tagfleet_models::{Backend, BackendError, BatchOutput, Decoded, Preprocessor};

use crate::batcher::Batch;
use crate::prepare::{ModelInput, Prepared};
use crate::task::Completed;

/// Starts the executor thread for `backend`; it stops when `input` closes.
pub fn spawn(
    mut backend: Box<dyn Backend>,
    spec: &InputSpec,
    input: Receiver<Batch>,
    output: Sender<Completed>,
    labels: Arc<Vec<String>>,
) -> std::thread::JoinHandle<()> {
    let name = format!("executor-{}", backend.device());
    let device = backend.requested_device();
    crate::metrics::EXECUTORS
        .with_label_values(&[
            device.to_string().as_str(),
            backend.device().kind(),
            if backend.preprocesses() { "gpu" } else { "cpu" },
        ])
        .set(1);
    let mut pre = Preprocessor::new(spec);
    std::thread::Builder::new()
        .name(name)
        .spawn(move || {
            while let Ok(batch) = input.recv_blocking() {
                for done in execute(backend.as_mut(), &mut pre, batch, &labels) {
                    if output.send_blocking(done).is_err() {
                        return;
                    }
                }
            }
        })
        .expect("spawning an executor thread")
}

/// Runs one batch and turns its outputs into result lines, one per image.
pub fn execute(
    backend: &mut dyn Backend,
    pre: &mut Preprocessor,
    batch: Batch,
    labels: &[String],
) -> Vec<Completed> {
    let n = batch.items.len();
    let want_embedding = batch
        .items
        .iter()
        .any(|p| p.work.task.msg.analyses.contains(&Analysis::Embedding));
    let start = Instant::now();
    // A panicking backend costs this batch, not the worker (nor the tasks waiting on it).
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
        match backend
            .preprocesses()
            .then(|| pixels(&batch.items))
            .flatten()
        {
            Some(images) => backend.run_pixels(&images, want_embedding),
            None => backend.run(&tensors(&batch.items, pre), n, want_embedding),
        }
    }))
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

/// The batch's decoded images with their crops, when all of them came as pixels.
fn pixels(items: &[Prepared]) -> Option<Vec<(&Decoded, Crop)>> {
    items
        .iter()
        .map(|p| match &p.input {
            ModelInput::Pixels { image, crop, .. } => Some((image, *crop)),
            ModelInput::Tensor(_) => None,
        })
        .collect()
}

/// The batch as one NCHW float buffer, preprocessing the images that came as pixels.
fn tensors(items: &[Prepared], pre: &mut Preprocessor) -> Vec<f32> {
    let per_image = pre.tensor_len();
    let mut input = vec![0.0; items.len() * per_image];
    for (item, slot) in items.iter().zip(input.chunks_exact_mut(per_image)) {
        match &item.input {
            ModelInput::Tensor(tensor) => slot.copy_from_slice(tensor),
            ModelInput::Pixels { image, crop, .. } => pre.run_crop(image, *crop, slot),
        }
    }
    input
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
