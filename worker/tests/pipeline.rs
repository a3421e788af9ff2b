//! The pipeline end to end with the real model on real photos: redelivery, poison
//! messages, several executors sharing one batch queue, and executors that preprocess on
//! their device.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Harness, PHOTOS, ort, spec, task};
use tagfleet_contracts::schema::Status;
use tagfleet_io::{ObjectStore, Queue};
use tagfleet_models::gpu_preprocess;
use tagfleet_models::preprocess::Crop;
use tagfleet_models::{Backend, BackendError, BatchOutput, Decoded, Device};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redelivery_rewrites_the_same_key() {
    let h = Harness::new();
    let msg = task("t000001", &["coffee.png", "chelsea.png"]);
    h.queue.publish(msg.to_json()).await.unwrap();
    h.run(vec![ort()], 4).await;
    let first = h.lines("t000001").await;

    // The broker hands the same message out again (a worker died before its ack).
    h.queue.publish(msg.to_json()).await.unwrap();
    let summary = h.run(vec![ort()], 4).await;
    assert_eq!(summary.tasks_written, 1);

    let objects = h
        .store
        .list(tagfleet_contracts::keys::Area::Results.prefix())
        .await
        .unwrap();
    assert_eq!(
        objects.len(),
        1,
        "one object per task, however often it is delivered"
    );
    let again = h.lines("t000001").await;
    assert_eq!(again.len(), 2);
    for (a, b) in first.iter().zip(&again) {
        assert_eq!(
            (&a.image, &a.tags.as_ref().unwrap()[0].label),
            (&b.image, &b.tags.as_ref().unwrap()[0].label)
        );
    }
    assert_eq!(
        first[0].tags.as_ref().unwrap()[0].label,
        "espresso",
        "lines keep item order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_message_is_dead_lettered_and_the_rest_completes() {
    let h = Harness::new();
    h.queue
        .publish(b"{\"v\": 1, \"this is\": \"not a task\"}".to_vec())
        .await
        .unwrap();
    let mut unknown_tenant = task("t000002", &["coffee.png"]);
    unknown_tenant.tenant = "nobody".into();
    h.queue.publish(unknown_tenant.to_json()).await.unwrap();
    h.queue
        .publish(task("t000001", &["coffee.png"]).to_json())
        .await
        .unwrap();

    let summary = h.run(vec![ort()], 4).await;
    assert_eq!((summary.tasks_written, summary.images_ok), (1, 1));
    assert_eq!(h.queue.dead_letters().len(), 2);
    assert!(h.queue.is_drained());
    assert_eq!(h.lines("t000001").await[0].status, Status::Ok);
}

/// Counts the images each executor ran, then delegates to a real backend.
/// Holds each executor's first batch until every executor has one, so that no executor
/// can drain the queue alone however fast it runs: "each took batches" then holds on any
/// machine, not only where a sleep happened to be long enough. Gives up after a minute
/// with an error (the images fail, and the test says which executor got nothing).
#[derive(Clone)]
struct Rendezvous {
    arrived: Arc<AtomicUsize>,
    parties: usize,
}

impl Rendezvous {
    fn new(parties: usize) -> Self {
        Self {
            arrived: Arc::new(AtomicUsize::new(0)),
            parties,
        }
    }

    /// Called once per executor, with its first batch.
    fn arrive(&self) -> Result<(), BackendError> {
        self.arrived.fetch_add(1, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.arrived.load(Ordering::SeqCst) < self.parties {
            if Instant::now() > deadline {
                return Err(BackendError::new(
                    "another executor never took a batch in a minute",
                ));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    }
}

struct Counting {
    inner: Box<dyn Backend>,
    images: Arc<AtomicUsize>,
    batches: Arc<AtomicUsize>,
    /// Met with the first batch, then dropped.
    first_batch: Option<Rendezvous>,
}

impl Backend for Counting {
    fn device(&self) -> Device {
        self.inner.device()
    }
    fn run(
        &mut self,
        input: &[f32],
        n: usize,
        want_embedding: bool,
    ) -> Result<BatchOutput, BackendError> {
        self.images.fetch_add(n, Ordering::SeqCst);
        self.batches.fetch_add(1, Ordering::SeqCst);
        if let Some(rendezvous) = self.first_batch.take() {
            rendezvous.arrive()?;
        }
        self.inner.run(input, n, want_embedding)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_executors_share_the_batches_and_run_each_once() {
    let h = Harness::new();
    h.publish_four_tasks_of_the_photos().await;
    let counters: Vec<_> = (0..2)
        .map(|_| (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0))))
        .collect();
    let rendezvous = Rendezvous::new(counters.len());
    let backends: Vec<Box<dyn Backend>> = counters
        .iter()
        .map(|(images, batches)| {
            Box::new(Counting {
                inner: ort(),
                images: images.clone(),
                batches: batches.clone(),
                first_batch: Some(rendezvous.clone()),
            }) as Box<dyn Backend>
        })
        .collect();

    let summary = h.run(backends, 2).await;
    let per_executor: Vec<usize> = counters
        .iter()
        .map(|(i, _)| i.load(Ordering::SeqCst))
        .collect();
    assert_eq!(
        per_executor.iter().sum::<usize>(),
        24,
        "every image ran exactly once: {per_executor:?}"
    );
    assert!(
        per_executor.iter().all(|n| *n > 0),
        "both executors took batches: {per_executor:?}"
    );
    assert_eq!((summary.images_ok, summary.tasks_written), (24, 4));
    for t in 1..=4 {
        let lines = h.lines(&format!("t{t:06}")).await;
        assert_eq!(lines.len(), 6);
        assert_eq!(lines[0].tags.as_ref().unwrap()[0].label, "espresso");
    }
}

/// A device that preprocesses itself, as a GPU executor does, with the GPU kernel's
/// arithmetic run on the CPU ([`gpu_preprocess::reference`]), then runs the real model.
/// Counts the images that reach it as pixels and as tensors.
struct PreprocessingDevice {
    inner: Box<dyn Backend>,
    as_pixels: Arc<AtomicUsize>,
    as_tensors: Arc<AtomicUsize>,
    /// Met with the first batch when it shares the queue with other executors.
    first_batch: Option<Rendezvous>,
}

impl PreprocessingDevice {
    fn new() -> (Self, Arc<AtomicUsize>, Arc<AtomicUsize>) {
        let (pixels, tensors) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let device = Self {
            inner: ort(),
            as_pixels: pixels.clone(),
            as_tensors: tensors.clone(),
            first_batch: None,
        };
        (device, pixels, tensors)
    }
}

impl Backend for PreprocessingDevice {
    fn device(&self) -> Device {
        Device::Cuda(0)
    }
    fn run(&mut self, input: &[f32], n: usize, embed: bool) -> Result<BatchOutput, BackendError> {
        self.as_tensors.fetch_add(n, Ordering::SeqCst);
        self.inner.run(input, n, embed)
    }
    fn preprocesses(&self) -> bool {
        true
    }
    fn run_pixels(
        &mut self,
        images: &[(&Decoded, Crop)],
        embed: bool,
    ) -> Result<BatchOutput, BackendError> {
        self.as_pixels.fetch_add(images.len(), Ordering::SeqCst);
        if let Some(rendezvous) = self.first_batch.take() {
            rendezvous.arrive()?;
        }
        let input_spec = spec().input;
        let per_image = 3 * (input_spec.width * input_spec.height) as usize;
        let mut input = vec![0.0; images.len() * per_image];
        for ((image, crop), slot) in images.iter().zip(input.chunks_exact_mut(per_image)) {
            gpu_preprocess::reference(image, *crop, &input_spec, slot);
        }
        self.inner.run(&input, images.len(), embed)
    }
}

/// With an executor that preprocesses, the decode threads hand over pixels and their crop,
/// and the results are the CPU path's: the same top tag, confidences close (the two
/// preprocessings differ by at most one uint8 step). The pixel budget is smaller than two
/// photos, so images pass a few at a time and the run finishes only if every reservation
/// is given back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_executor_that_preprocesses_gets_pixels_and_gives_the_cpu_results() {
    let cpu = Harness::new();
    let device = Harness::new();
    for h in [&cpu, &device] {
        h.queue
            .publish(task("t000001", &PHOTOS).to_json())
            .await
            .unwrap();
    }
    cpu.run(vec![ort()], 4).await;
    let (backend, as_pixels, as_tensors) = PreprocessingDevice::new();
    let summary = device.run_with(vec![Box::new(backend)], 4, 1 << 20).await;
    assert_eq!(summary.images_ok, PHOTOS.len());
    assert_eq!(
        (
            as_pixels.load(Ordering::SeqCst),
            as_tensors.load(Ordering::SeqCst)
        ),
        (PHOTOS.len(), 0),
        "every image reached the device as pixels"
    );
    let (want, got) = (cpu.lines("t000001").await, device.lines("t000001").await);
    let mut differences = Vec::new();
    for (w, g) in want.iter().zip(&got) {
        assert_eq!(
            (w.image.as_str(), w.width, w.height),
            (g.image.as_str(), g.width, g.height)
        );
        let (w, g) = (&w.tags.as_ref().unwrap()[0], &g.tags.as_ref().unwrap()[0]);
        assert_eq!(w.label, g.label);
        differences.push((w.confidence - g.confidence).abs());
    }
    // An ambiguous photo (the rocket: missile or projectile) moves most, by about 0.08.
    let mean = differences.iter().sum::<f32>() / differences.len() as f32;
    assert!(
        differences.iter().all(|d| *d < 0.1) && mean < 0.03,
        "top-tag confidence differences {differences:?}"
    );
}

/// A GPU executor that preprocesses and a CPU one share the pixel batches: each image
/// runs exactly once, and the CPU executor preprocesses what it takes itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preprocessing_and_a_cpu_executor_share_pixel_batches() {
    let h = Harness::new();
    h.publish_four_tasks_of_the_photos().await;
    let (mut device, as_pixels, as_tensors) = PreprocessingDevice::new();
    let rendezvous = Rendezvous::new(2);
    device.first_batch = Some(rendezvous.clone());
    let (cpu_images, cpu_batches) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let cpu = Counting {
        inner: ort(),
        images: cpu_images.clone(),
        batches: cpu_batches,
        first_batch: Some(rendezvous),
    };
    let summary = h.run(vec![Box::new(device), Box::new(cpu)], 2).await;
    let (pixels, tensors, cpu) = (
        as_pixels.load(Ordering::SeqCst),
        as_tensors.load(Ordering::SeqCst),
        cpu_images.load(Ordering::SeqCst),
    );
    assert_eq!(
        pixels + cpu,
        24,
        "every image ran exactly once: {pixels} + {cpu}"
    );
    assert!(
        pixels > 0 && cpu > 0,
        "both executors took batches: {pixels}, {cpu}"
    );
    assert_eq!(tensors, 0, "the preprocessing executor always got pixels");
    assert_eq!((summary.images_ok, summary.tasks_written), (24, 4));
    for t in 1..=4 {
        let lines = h.lines(&format!("t{t:06}")).await;
        assert_eq!(lines[0].tags.as_ref().unwrap()[0].label, "espresso");
    }
}
