//! The end of the pipeline: collect each task's lines and write them as one JSON Lines
//! object at the task's deterministic key (and the job's own output, when it has one);
//! then the message is settled ([`crate::settle`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_channel::Receiver;
use tagfleet_contracts::ErrorKind;
use tagfleet_contracts::keys::{Key, output_key};
use tagfleet_contracts::schema::{ResultLine, Status};
use tagfleet_contracts::secrets::Access;
use tagfleet_io::store::S3Store;
use tagfleet_io::{ObjectStore, Queue};

use tokio::sync::mpsc::UnboundedSender;
use tokio::task::JoinSet;

use crate::settle::Settler;
use crate::task::{Completed, TaskState};

/// Attempts at writing one result object before the message goes back to the queue.
const WRITE_ATTEMPTS: u32 = 3;

/// What the pipeline reports as it goes, for progress displays.
#[derive(Debug, Clone)]
pub enum Event {
    /// One image finished (before its task is written).
    Image { error: Option<ErrorKind> },
    /// A task's result object is durable and its message acked.
    TaskWritten {
        job_id: String,
        task_id: String,
        key: String,
        lines: Vec<ResultLine>,
    },
    /// A task's result could not be written; its message went back to the queue.
    TaskFailed { job_id: String, task_id: String },
}

/// Counts over the whole run: images of written tasks only.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    pub images_ok: usize,
    pub errors: BTreeMap<ErrorKind, usize>,
    pub tasks_written: usize,
    pub tasks_failed: usize,
}

impl Summary {
    pub fn images(&self) -> usize {
        self.images_ok + self.image_errors()
    }

    pub fn image_errors(&self) -> usize {
        self.errors.values().sum()
    }

    fn add(&mut self, lines: &[ResultLine]) {
        self.tasks_written += 1;
        for line in lines {
            match (&line.status, &line.error) {
                (Status::Ok, _) => self.images_ok += 1,
                (Status::Error, Some(e)) => *self.errors.entry(e.kind).or_default() += 1,
                (Status::Error, None) => *self.errors.entry(ErrorKind::Inference).or_default() += 1,
            }
        }
    }
}

/// Collects completed images until every stage before has closed; returns the summary
/// once every write has finished.
pub async fn run(
    input: Receiver<Completed>,
    store: Arc<dyn ObjectStore>,
    queue: Arc<dyn Queue>,
    progress: Option<Arc<dyn Queue>>,
    outputs: Option<S3Store>,
    events: Option<UnboundedSender<Event>>,
) -> Summary {
    let settler = Arc::new(Settler::new(queue, progress));
    let mut writes = JoinSet::new();
    let mut summary = Summary::default();
    let emit = |event: Event| {
        if let Some(tx) = &events {
            let _ = tx.send(event);
        }
    };
    loop {
        tokio::select! {
            completed = input.recv() => {
                let Ok(Completed { work, line }) = completed else { break };
                let error = line.error.as_ref().map(|e| e.kind);
                let outcome = error.map_or("ok", |k| k.name());
                crate::metrics::IMAGES.with_label_values(&[outcome, &work.task.model_id]).inc();
                crate::metrics::IN_FLIGHT.dec();
                crate::metrics::observe_stages(&line.timings_ms);
                emit(Event::Image { error });
                if work.task.complete(work.index, line) {
                    writes.spawn(finish(work.task, store.clone(), outputs.clone(), settler.clone()));
                }
            }
            Some(done) = writes.join_next(), if !writes.is_empty() => {
                record(done, &mut summary, &emit);
            }
        }
    }
    while let Some(done) = writes.join_next().await {
        record(done, &mut summary, &emit);
    }
    summary
}

fn record(
    done: Result<Event, tokio::task::JoinError>,
    summary: &mut Summary,
    emit: &impl Fn(Event),
) {
    match done {
        Ok(event) => {
            match &event {
                Event::TaskWritten { lines, .. } => summary.add(lines),
                _ => summary.tasks_failed += 1,
            }
            emit(event);
        }
        Err(e) => {
            summary.tasks_failed += 1;
            tracing::error!(error = %e, "result writer panicked");
        }
    }
}

/// Writes the task's result object, retrying a few times, then settles its message:
/// reported and acked once the object is durable, back to the queue when it is not. A
/// crash between any two steps means redelivery: the write lands on the same key and the
/// scheduler counts the task once.
async fn finish(
    task: Arc<TaskState>,
    store: Arc<dyn ObjectStore>,
    outputs: Option<S3Store>,
    settler: Arc<Settler>,
) -> Event {
    let msg = &task.msg;
    let lines = task.take_lines();
    let key = Key::result(&msg.tenant, &msg.job_id, &msg.task_id).to_string();
    let mut body = Vec::new();
    for line in &lines {
        serde_json::to_writer(&mut body, line).expect("result lines serialise");
        body.push(b'\n');
    }
    let mut delay = Duration::from_millis(100);
    for attempt in 1..=WRITE_ATTEMPTS {
        let started = std::time::Instant::now();
        match write(&*store, outputs.as_ref(), &task, &key, &body).await {
            Ok(()) => {
                crate::metrics::STAGE_SECONDS
                    .with_label_values(&["write"])
                    .observe(started.elapsed().as_secs_f64());
                return settler.written(&task, key, lines).await;
            }
            Err(WriteError::Refused(reason)) => {
                tracing::error!(job = %msg.job_id, task = %msg.task_id, reason, "refusing to write the task's output");
                return settler.refused(&task).await;
            }
            Err(WriteError::Failed(e)) => {
                tracing::warn!(job = %msg.job_id, task = %msg.task_id, attempt, error = %e, "writing result failed");
                if attempt < WRITE_ATTEMPTS {
                    tokio::time::sleep(delay).await;
                    delay *= 4;
                }
            }
        }
    }
    settler.unwritten(&task).await
}

/// Why a result object was not written.
enum WriteError {
    /// Writing would break a rule (an output outside the tenant's allow-list): trying
    /// again cannot help.
    Refused(String),
    Failed(String),
}

/// Writes a task's result object where its job wants it: our store, unless the job keeps
/// nothing (`retain: false`) and has its own `output`; the client's `output`, when given,
/// if the tenant may write there (the scheduler checked; this is the second line).
async fn write(
    store: &dyn ObjectStore,
    outputs: Option<&S3Store>,
    task: &TaskState,
    key: &str,
    body: &[u8],
) -> Result<(), WriteError> {
    let msg = &task.msg;
    if let Some(location) = &msg.output {
        let base = outputs.ok_or_else(|| {
            WriteError::Refused("this worker has no S3 access for output locations".into())
        })?;
        task.tenant
            .check(location, Access::Write, Some(base.location()))
            .map_err(|denied| WriteError::Refused(denied.to_string()))?;
        base.elsewhere(location)
            .put(&output_key(&msg.job_id, &msg.task_id), body.to_vec())
            .await
            .map_err(|e| WriteError::Failed(format!("writing to the output location: {e}")))?;
    }
    if msg.options.retain || msg.output.is_none() {
        store
            .put(key, body.to_vec())
            .await
            .map_err(|e| WriteError::Failed(e.to_string()))?;
    }
    Ok(())
}
