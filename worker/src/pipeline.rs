//! The worker pipeline, wired: consume -> fetch -> decode+preprocess -> batch -> execute
//! -> write -> ack. Stages are joined by bounded channels, so a slow stage slows the ones
//! before it instead of filling memory; closing the first channel drains the rest in order.

use std::sync::Arc;
use std::time::Duration;

use async_channel::{Receiver, Sender, bounded};
use tagfleet_contracts::TaskMessage;
use tagfleet_contracts::schema::SchemaError;
use tagfleet_io::{Delivery, ObjectStore, Queue};
use tagfleet_models::{Backend, DecodeLimits, ModelSpec};
use tokio::sync::Semaphore;
use tokio::sync::mpsc::UnboundedSender;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::batcher::{self, BatchPolicy};
use crate::budget::PixelBudget;
use crate::executor;
use crate::fetch::{Sources, fetch};
use crate::gate::JobGate;
use crate::prepare::{self, Fetched, Preprocessing};
use crate::task::{Completed, TaskState, Tenants, Timings, Work};
use crate::writer::{self, Event, Summary};

/// How long one receive call waits for a message before checking for shutdown.
const RECEIVE_WAIT: Duration = Duration::from_millis(200);

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
    /// Where jobs' own output locations are written from (the S3 client and encryption
    /// of the worker's store); without it, tasks with an output fail their write.
    pub outputs: Option<tagfleet_io::store::S3Store>,
}

/// Everything a worker needs to run.
pub struct Pipeline {
    pub queue: Arc<dyn Queue>,
    pub store: Arc<dyn ObjectStore>,
    pub tenants: Tenants,
    pub spec: ModelSpec,
    pub labels: Arc<Vec<String>>,
    /// One per device; every one pulls from the same batch queue.
    pub backends: Vec<Box<dyn Backend>>,
    pub config: PipelineConfig,
}

impl Pipeline {
    /// Runs until `shutdown` (or, with `exit_when_drained`, until the queue is drained),
    /// then finishes what is in flight and returns the counts.
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
            labels,
            backends,
            config,
        } = self;
        assert!(
            !backends.is_empty(),
            "a pipeline needs at least one backend"
        );
        let threads = config.prepare_threads.max(1);
        let max_batch = config.batch.max_batch.max(1);
        // Decoded pixels go to the executors when one of them preprocesses on its GPU.
        let preprocessing = if backends.iter().any(|b| b.preprocesses()) {
            tracing::info!(
                budget_mib = config.pixel_budget >> 20,
                "decode threads hand uint8 pixels to the executors, which preprocess"
            );
            Preprocessing::Executors(PixelBudget::new(config.pixel_budget))
        } else {
            Preprocessing::Cpu
        };

        let (work_tx, work_rx) = bounded::<Work>(max_batch * 2);
        let (fetched_tx, fetched_rx) = bounded::<Fetched>(threads * 2);
        let (prepared_tx, prepared_rx) = bounded(max_batch * 2);
        // Capacity 1: the next batch is formed while the current one runs.
        let (batch_tx, batch_rx) = bounded(1);
        let (done_tx, done_rx) = bounded::<Completed>(max_batch * 4);

        let gate = Arc::new(JobGate::new(store.clone(), config.job_check_interval));
        let consumer = tokio::spawn(consume(
            queue.clone(),
            gate,
            tenants,
            spec.id(),
            Arc::new(Semaphore::new(config.max_tasks_in_flight.max(1))),
            work_tx,
            shutdown,
            config.exit_when_drained,
        ));
        let fetcher = tokio::spawn(fetch_stage(
            work_rx,
            fetched_tx,
            done_tx.clone(),
            config.sources.clone(),
            config.limits.max_bytes,
            config.fetch_concurrency.max(1),
        ));
        let preparers = prepare::spawn(
            threads,
            fetched_rx,
            prepared_tx,
            done_tx.clone(),
            spec.input.clone(),
            config.limits,
            preprocessing,
        );
        let batcher = tokio::spawn(batcher::run(prepared_rx, batch_tx, config.batch));
        let executors: Vec<_> = backends
            .into_iter()
            .map(|backend| {
                executor::spawn(
                    backend,
                    &spec.input,
                    batch_rx.clone(),
                    done_tx.clone(),
                    labels.clone(),
                )
            })
            .collect();
        drop((batch_rx, done_tx));
        let summary = writer::run(
            done_rx,
            store,
            queue,
            config.progress.clone(),
            config.outputs.clone(),
            events,
        )
        .await;

        for task in [consumer, fetcher, batcher] {
            if let Err(e) = task.await {
                tracing::error!(error = %e, "pipeline stage panicked");
            }
        }
        let threads: Vec<_> = preparers.into_iter().chain(executors).collect();
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
        summary
    }
}

#[allow(clippy::too_many_arguments)]
async fn consume(
    queue: Arc<dyn Queue>,
    gate: Arc<JobGate>,
    tenants: Tenants,
    model_id: String,
    in_flight: Arc<Semaphore>,
    out: Sender<Work>,
    shutdown: CancellationToken,
    exit_when_drained: bool,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let first = tokio::select! {
            permit = in_flight.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            () = shutdown.cancelled() => break,
        };
        // Ask for as many messages as there are free slots: fewer round trips to the broker.
        let mut permits = vec![first];
        while let Ok(p) = in_flight.clone().try_acquire_owned() {
            permits.push(p);
        }
        let received = tokio::select! {
            r = queue.receive(permits.len(), RECEIVE_WAIT) => r,
            () = shutdown.cancelled() => break,
        };
        let deliveries = match received {
            Ok(deliveries) if deliveries.is_empty() => {
                if exit_when_drained && queue.is_drained() {
                    break;
                }
                continue;
            }
            Ok(deliveries) => deliveries,
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "receiving from the queue failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        // Unused permits go back when `permits` drops at the end of this turn.
        for (delivery, permit) in deliveries.into_iter().zip(permits.drain(..)) {
            let Some(task) = accept(&queue, &gate, &tenants, &model_id, delivery, permit).await
            else {
                continue;
            };
            crate::metrics::IN_FLIGHT.add(task.msg.items.len() as i64);
            for work in task.items() {
                if out.send(work).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Parses and checks a delivery; refused messages are nacked here.
async fn accept(
    queue: &Arc<dyn Queue>,
    gate: &JobGate,
    tenants: &Tenants,
    model_id: &str,
    delivery: Delivery,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> Option<Arc<TaskState>> {
    let refuse = |delivery: Delivery, requeue: bool| async move {
        let result = if requeue { "requeued" } else { "dead_lettered" };
        crate::metrics::MESSAGES.with_label_values(&[result]).inc();
        if let Err(e) = queue.nack(&delivery, requeue).await {
            tracing::error!(error = %e, "nack failed");
        }
    };
    let msg = match TaskMessage::from_json(&delivery.body) {
        Ok(msg) => msg,
        Err(e) => {
            tracing::warn!(error = %loggable(&e), "dead-lettering a malformed task message");
            refuse(delivery, false).await;
            return None;
        }
    };
    if msg.model != model_id {
        // Another worker of the fleet may serve that model.
        tracing::warn!(job = %msg.job_id, task = %msg.task_id, wanted = %msg.model, serving = %model_id, "returning a task for another model");
        refuse(delivery, true).await;
        return None;
    }
    let Some(pseudonymiser) = tenants.get(&msg.tenant).cloned() else {
        tracing::warn!(job = %msg.job_id, task = %msg.task_id, tenant = %msg.tenant, "dead-lettering a task of an unknown tenant");
        refuse(delivery, false).await;
        return None;
    };
    if !gate.admits(&msg.tenant, &msg.job_id).await {
        tracing::debug!(job = %msg.job_id, task = %msg.task_id, "skipping a task of a cancelled job");
        crate::metrics::MESSAGES
            .with_label_values(&["skipped"])
            .inc();
        if let Err(e) = queue.ack(&delivery).await {
            tracing::warn!(error = %e, "ack of a skipped task failed");
        }
        return None;
    }
    Some(TaskState::new(
        msg,
        delivery,
        model_id.to_owned(),
        pseudonymiser,
        permit,
    ))
}

/// A schema error fit for logs: serde quotes offending values, which could be refs.
fn loggable(e: &SchemaError) -> String {
    let text = e.to_string();
    if text.contains('"') {
        "the message does not match the task schema".into()
    } else {
        text
    }
}

async fn fetch_stage(
    input: Receiver<Work>,
    output: Sender<Fetched>,
    failed: Sender<Completed>,
    sources: Sources,
    max_bytes: u64,
    concurrency: usize,
) {
    let slots = Arc::new(Semaphore::new(concurrency));
    let sources = Arc::new(sources);
    let mut fetches = JoinSet::new();
    while let Ok(mut work) = input.recv().await {
        let slot = slots
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let (output, failed, sources) = (output.clone(), failed.clone(), sources.clone());
        fetches.spawn(async move {
            work.timings = Timings::start();
            let result = fetch(work.reference(), &sources, max_bytes).await;
            work.timings.lap("fetch");
            drop(slot);
            let _ = match result {
                Ok(bytes) => output.send(Fetched { work, bytes }).await.map_err(drop),
                Err(error) => failed
                    .send(Completed {
                        line: work.failed(error),
                        work,
                    })
                    .await
                    .map_err(drop),
            };
        });
        while fetches.try_join_next().is_some() {}
    }
    while fetches.join_next().await.is_some() {}
}
