//! The worker pipeline, wired: consume -> fetch -> decode+preprocess -> batch -> execute
//! -> write -> ack. Stages are joined by bounded channels, so a slow stage slows the ones
//! before it instead of filling memory; closing the first channel drains the rest in order.

use std::sync::Arc;
use std::time::Duration;

use async_channel::bounded;
use tagfleet_io::{ObjectStore, Queue};
use tagfleet_models::{Backend, Classes, DecodeLimits, ModelSpec};
use tokio::sync::Semaphore;
use tokio::sync::mpsc::UnboundedSender;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::batcher::{self, BatchPolicy};
use crate::budget::PixelBudget;
use crate::consume::Consumer;
use crate::executor::{self, Executors};
use crate::fetch::{Sources, fetch_stage};
use crate::gate::JobGate;
use crate::health::{Health, spawn_task};
use crate::prepare::{self, Fetched, Preprocessing};
use crate::settle::Settler;
use crate::task::{Completed, LiveTenants, Work};
use crate::writer::{self, Event, Summary};

#[derive(Clone)]
pub struct PipelineConfig {
    pub batch: BatchPolicy,
    /// Decode+preprocess threads; the cores, by default.
    pub prepare_threads: usize,
    /// Images fetched at once.
    pub fetch_concurrency: usize,
    /// Task messages taken from the queue and not yet acked.
    pub max_tasks_in_flight: usize,
    pub limits: DecodeLimits,
    /// Where images may be read from.
    pub sources: Sources,
    /// Bytes of decoded images waiting for executors that preprocess on their GPU.
    pub pixel_budget: usize,
    /// Stop once the queue says it is drained (the embedded mode), instead of waiting
    /// for more work until shutdown.
    pub exit_when_drained: bool,
    /// Where finished tasks are reported for the scheduler's counts (fleet mode).
    pub progress: Option<Arc<dyn Queue>>,
    /// How long a job's state is trusted before its record is read again.
    pub job_check_interval: Duration,
    /// Tasks older than this are acked unprocessed, and so are tasks of unknown age whose
    /// job the store does not know (see [`JobGate::admits`]): the fleet's retention.
    /// `None` in the embedded mode, whose tasks live only as long as its process.
    pub max_task_age: Option<Duration>,
    /// Where jobs' own output locations are written from (the S3 client and encryption
    /// of the worker's store); without it, tasks with an output fail their write.
    pub outputs: Option<tagfleet_io::store::S3Store>,
    /// Deliveries of a message before the queue dead-letters it (the queue's setting):
    /// a task that fails on its last delivery is given up and reported.
    pub delivery_limit: u32,
    /// The longest one batch may run on a device before the device is taken to be hung
    /// and the worker fails (and exits, so the orchestrator restarts it).
    pub batch_timeout: Duration,
}

/// Everything a worker needs to run.
pub struct Pipeline {
    pub queue: Arc<dyn Queue>,
    pub store: Arc<dyn ObjectStore>,
    pub tenants: LiveTenants,
    pub spec: ModelSpec,
    /// What the model's outputs mean: labels, synsets, categorizers.
    pub classes: Arc<Classes>,
    /// One per device; every one pulls from the same batch queue.
    pub backends: Vec<Box<dyn Backend>>,
    pub config: PipelineConfig,
    /// Shared with `/readyz`: a stage that dies or a device that hangs fails it, and the
    /// pipeline stops taking work; a store that does not answer pauses it.
    pub health: Health,
}

impl Pipeline {
    /// Runs until `shutdown` (or, with `exit_when_drained`, until the queue is drained),
    /// then finishes what is in flight and returns the counts. When a stage dies it stops
    /// taking work and returns once the rest has drained; `health` then says why, and the
    /// caller should exit non-zero. A device that hangs never returns its thread: callers
    /// bound their wait once `health` has failed.
    pub async fn run(
        self,
        shutdown: CancellationToken,
        events: Option<UnboundedSender<Event>>,
    ) -> Summary {
        let Pipeline {
            queue,
            store,
            tenants,
            spec,
            classes,
            backends,
            config,
            health,
        } = self;
        assert!(
            !backends.is_empty(),
            "a pipeline needs at least one backend"
        );
        let threads = config.prepare_threads.max(1);
        let max_batch = config.batch.max_batch.max(1);
        let preprocessing = preprocessing_for(&backends, config.pixel_budget);

        let (work_tx, work_rx) = bounded::<Work>(max_batch * 2);
        let (fetched_tx, fetched_rx) = bounded::<Fetched>(threads * 2);
        let (prepared_tx, prepared_rx) = bounded(max_batch * 2);
        // Capacity 1: the next batch is formed while the current one runs.
        let (batch_tx, batch_rx) = bounded(1);
        let (done_tx, done_rx) = bounded::<Completed>(max_batch * 4);

        let gate = Arc::new(JobGate::new(
            store.clone(),
            config.job_check_interval,
            config.max_task_age,
        ));
        // Consumption stops on shutdown, and as soon as a stage dies.
        let stop = shutdown.child_token();
        let stopper = tokio::spawn({
            let (health, stop) = (health.clone(), stop.clone());
            async move {
                tokio::select! {
                    () = health.failed() => stop.cancel(),
                    () = stop.cancelled() => {}
                }
            }
        });
        let consumer = Consumer {
            queue: queue.clone(),
            store: store.clone(),
            gate,
            tenants,
            model_id: spec.id(),
            classes: classes.clone(),
            settler: Settler::new(queue, config.progress.clone(), config.delivery_limit),
            health: health.clone(),
            in_flight: Arc::new(Semaphore::new(config.max_tasks_in_flight.max(1))),
            out: work_tx,
            stop: stop.clone(),
            exit_when_drained: config.exit_when_drained,
        };
        let consumer = spawn_task(&health, "consume", consumer.run());
        let fetcher = spawn_task(
            &health,
            "fetch",
            fetch_stage(
                work_rx,
                fetched_tx,
                done_tx.clone(),
                config.sources.clone(),
                config.limits.max_bytes,
                config.fetch_concurrency.max(1),
                health.clone(),
            ),
        );
        let preparers = prepare::spawn(
            threads,
            fetched_rx,
            prepared_tx,
            done_tx.clone(),
            prepare::Recipe {
                spec: spec.input.clone(),
                limits: config.limits,
                preprocessing,
            },
            &health,
        );
        let batcher = spawn_task(
            &health,
            "batch",
            batcher::run(prepared_rx, batch_tx, config.batch),
        );
        let executors = Arc::new(Executors::default());
        let stages = Stages {
            tasks: vec![consumer, fetcher, batcher],
            threads: preparers,
        };
        let stages = stages.with_threads(backends.into_iter().map(|backend| {
            executor::spawn(
                backend,
                &spec.input,
                batch_rx.clone(),
                done_tx.clone(),
                classes.clone(),
                executors.clone(),
                health.clone(),
            )
        }));
        drop((batch_rx, done_tx));
        let watchdog = tokio::spawn(watch_batches(
            executors,
            config.batch_timeout,
            health.clone(),
        ));
        let summary = writer::run(
            done_rx,
            store,
            config.outputs.clone(),
            health.clone(),
            events,
        )
        .await;
        stages.join().await;
        watchdog.abort();
        stop.cancel();
        let _ = stopper.await;
        summary
    }
}

/// Fails the worker when a device has run one batch for longer than `limit`: a hung
/// device never returns, and its batch's tasks would wait for it for ever.
async fn watch_batches(executors: Arc<Executors>, limit: Duration, health: Health) {
    let mut tick = tokio::time::interval(Duration::from_secs(1).min(limit));
    loop {
        tick.tick().await;
        if let Some((executor, running)) = executors.longest_batch()
            && running > limit
        {
            health.fail(format!(
                "{executor} has run one batch for {} s (limit {} s): its device hung",
                running.as_secs(),
                limit.as_secs()
            ));
            return;
        }
    }
}

/// Whether decoded pixels go to the executors (and the pixel budget is spent): when one
/// of them preprocesses on its GPU.
pub fn preprocesses_on_executors(backends: &[Box<dyn Backend>]) -> bool {
    backends.iter().any(|b| b.preprocesses())
}

/// Decoded pixels go to the executors when one of them preprocesses on its GPU.
fn preprocessing_for(backends: &[Box<dyn Backend>], pixel_budget: usize) -> Preprocessing {
    if preprocesses_on_executors(backends) {
        tracing::info!(
            budget_mib = pixel_budget >> 20,
            "decode threads hand uint8 pixels to the executors, which preprocess"
        );
        Preprocessing::Executors(PixelBudget::new(pixel_budget))
    } else {
        Preprocessing::Cpu
    }
}

/// The stages before the writer: async tasks and OS threads (decode, executors).
struct Stages {
    tasks: Vec<JoinHandle<()>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Stages {
    fn with_threads(
        mut self,
        threads: impl IntoIterator<Item = std::thread::JoinHandle<()>>,
    ) -> Self {
        self.threads.extend(threads);
        self
    }

    /// Waits for every stage to end (the writer has seen all their output by now). Panics
    /// were caught where they happened ([`spawn_task`], [`spawn_thread`]) and failed the
    /// worker's health; nothing is left to report here.
    async fn join(self) {
        for task in self.tasks {
            let _ = task.await;
        }
        let threads = self.threads;
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
    }
}
