//! Executors: one OS thread per device, owning one [`Backend`], pulling batches from the
//! queue all executors share. Postprocessing runs here too: it is cheap next to inference
//! and keeps the batch's outputs local.
//!
//! A batch of decoded pixels goes to a backend that preprocesses on its GPU as it is;
//! any other backend gets float tensors, preprocessed on this thread where the decode
//! threads left it to the executors.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_channel::{Receiver, Sender};
use tagfleet_contracts::schema::{Analysis, ResultLine, SCHEMA_VERSION, Status};
use tagfleet_models::postprocess::{l2_normalised, softmax};
use tagfleet_models::preprocess::Crop;
use tagfleet_models::spec::InputSpec;
use tagfleet_models::{Backend, BackendError, BatchOutput, Classes, Decoded, Preprocessor};

use crate::batcher::Batch;
use crate::health::Health;
use crate::prepare::{ModelInput, Prepared};
use crate::task::Completed;

/// Consecutive failed batches after which an executor stops taking batches: its device
/// is taken to be lost (a sticky CUDA error fails every batch, fast, and would otherwise
/// pull the whole queue through itself).
pub const BREAKER_FAILURES: u32 = 3;

/// What executors share: how many still run, and what each is running since when, for
/// the watchdog.
#[derive(Debug, Default)]
pub struct Executors {
    live: AtomicUsize,
    busy: Mutex<Vec<(String, Option<Instant>)>>,
}

impl Executors {
    /// The executor that has been running its current batch the longest, and how long.
    pub fn longest_batch(&self) -> Option<(String, Duration)> {
        let busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        busy.iter()
            .filter_map(|(name, since)| since.map(|s| (name.clone(), s.elapsed())))
            .max_by_key(|(_, elapsed)| *elapsed)
    }

    fn register(&self, name: String) -> usize {
        self.live.fetch_add(1, Ordering::SeqCst);
        let mut busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        busy.push((name, None));
        busy.len() - 1
    }

    fn set_busy(&self, slot: usize, busy: bool) {
        let mut all = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        all[slot].1 = busy.then(Instant::now);
    }
}

/// Starts the executor thread for `backend`; it stops when `input` closes, or after
/// [`BREAKER_FAILURES`] failed batches in a row. The last executor to stop that way
/// fails the worker: nothing is left to run its batches.
pub fn spawn(
    mut backend: Box<dyn Backend>,
    spec: &InputSpec,
    input: Receiver<Batch>,
    output: Sender<Completed>,
    classes: Arc<Classes>,
    executors: Arc<Executors>,
    health: Health,
) -> std::thread::JoinHandle<()> {
    let name = format!("executor-{}", backend.device());
    let device = backend.requested_device().to_string();
    let info = [
        device.clone(),
        backend.device().kind().to_owned(),
        if backend.preprocesses() { "gpu" } else { "cpu" }.to_owned(),
    ];
    crate::metrics::EXECUTORS.with_label_values(&info).inc();
    let slot = executors.register(name.clone());
    let mut pre = Preprocessor::new(spec);
    std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || {
            let mut failures = 0;
            while let Ok(batch) = input.recv_blocking() {
                executors.set_busy(slot, true);
                let done = execute(backend.as_mut(), &mut pre, batch, &classes);
                executors.set_busy(slot, false);
                match done {
                    Ok(done) => {
                        failures = 0;
                        for done in done {
                            if output.send_blocking(done).is_err() {
                                return;
                            }
                        }
                    }
                    Err(e) => {
                        failures += 1;
                        if failures >= BREAKER_FAILURES {
                            crate::metrics::EXECUTORS.with_label_values(&info).dec();
                            let left = executors.live.fetch_sub(1, Ordering::SeqCst) - 1;
                            tracing::error!(executor = %name, failures, left, error = %e, "stopping the executor: its device failed every batch");
                            if left == 0 {
                                health.fail(format!(
                                    "every executor stopped: {name} failed {failures} batches in a row ({e})"
                                ));
                            }
                            return;
                        }
                    }
                }
            }
        })
        .expect("spawning an executor thread")
}

/// Runs one batch and turns its outputs into result lines, one per image. A failed batch
/// gives its images back: dropping them returns their tasks to the queue (a device
/// failure says nothing about the images).
pub fn execute(
    backend: &mut dyn Backend,
    pre: &mut Preprocessor,
    batch: Batch,
    classes: &Classes,
) -> Result<Vec<Completed>, BackendError> {
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
    let device = backend.requested_device().to_string();
    crate::metrics::EXECUTOR_BUSY
        .with_label_values(&[&device])
        .inc_by(inference_ms / 1e3);
    let out = match result {
        Ok(out) => out,
        Err(e) => {
            crate::metrics::BATCH_FAILURES
                .with_label_values(&[&device])
                .inc();
            tracing::error!(device = %backend.device(), images = n, error = %e, "batch failed; its tasks go back to the queue");
            return Err(e);
        }
    };
    Ok(batch
        .items
        .into_iter()
        .enumerate()
        .map(|(i, mut prepared)| {
            prepared.work.timings.record("inference", inference_ms);
            let line = ok_line(&mut prepared, &out, i, classes);
            Completed {
                work: prepared.work,
                line,
            }
        })
        .collect())
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
    classes: &Classes,
) -> ResultLine {
    let work = &mut prepared.work;
    let msg = &work.task.msg;
    let wants = |a| msg.analyses.contains(&a);
    // Tags and categories read the same probabilities; each is timed as its own analysis.
    let probs = if wants(Analysis::Tags) || wants(Analysis::Categories) {
        softmax(out.logits_row(row))
    } else {
        Vec::new()
    };
    let tags = wants(Analysis::Tags).then(|| classes.tags(&probs, &msg.options));
    work.timings.lap_if(tags.is_some(), "tags");
    let categories = wants(Analysis::Categories).then(|| classes.categories(&probs, &msg.options));
    work.timings.lap_if(categories.is_some(), "categories");
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
        categories,
        colors: prepared.described.colors.take(),
        crops: prepared.described.crops.take(),
        error: None,
        timings_ms: work.timings.ms.clone(),
    }
}
