//! The end of the pipeline: collect each task's lines and write them as one JSON Lines
//! object at the task's deterministic key (and the job's own output, when it has one);
//! then the message is settled ([`crate::settle`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use async_channel::Receiver;
use tagfleet_contracts::ErrorKind;
use tagfleet_contracts::keys::{Key, output_key};
use tagfleet_contracts::schema::GivenUp;
use tagfleet_contracts::schema::{ResultLine, Status};
use tagfleet_contracts::secrets::Access;
use tagfleet_io::store::S3Store;
use tagfleet_io::{ObjectStore, StoreError};

use tokio::sync::mpsc::UnboundedSender;
use tokio::task::JoinSet;

use crate::health::{Health, retry_until};
use crate::task::{Completed, TaskState};

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
    outputs: Option<S3Store>,
    health: Health,
    events: Option<UnboundedSender<Event>>,
) -> Summary {
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
                crate::metrics::observe_stages(&line.timings_ms);
                emit(Event::Image { error });
                if work.task.complete(work.index, line) {
                    writes.spawn(finish(work.task.clone(), store.clone(), outputs.clone(), health.clone()));
                }
            }
            Some(done) = writes.join_next(), if !writes.is_empty() => {
                record(done, &mut summary, &emit, &health);
            }
        }
    }
    while let Some(done) = writes.join_next().await {
        record(done, &mut summary, &emit, &health);
    }
    summary
}

fn record(
    done: Result<Event, tokio::task::JoinError>,
    summary: &mut Summary,
    emit: &impl Fn(Event),
    health: &Health,
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
            // Its task's ticket was dropped with it: the message is back in the queue.
            summary.tasks_failed += 1;
            let why = match e.try_into_panic() {
                Ok(panic) => crate::health::panic_message(&*panic),
                Err(e) => e.to_string(),
            };
            health.fail(format!("a result write panicked: {why}"));
        }
    }
}

/// Writes the task's result object, then settles its message: reported and acked once
/// the object is durable. A store that is unavailable is waited out, holding the message
/// (see [`Health::persist`]); a store or output that refuses the write for good gives the
/// task up at once, reported so that its job ends. A crash between any two steps means
/// redelivery: the write lands on the same key and the scheduler counts the task once.
async fn finish(
    task: Arc<TaskState>,
    store: Arc<dyn ObjectStore>,
    outputs: Option<S3Store>,
    health: Health,
) -> Event {
    let msg = &task.msg;
    let Some(ticket) = task.take_ticket() else {
        tracing::error!(job = %msg.job_id, task = %msg.task_id, "a task was finished twice");
        return Event::TaskFailed {
            job_id: msg.job_id.clone(),
            task_id: msg.task_id.clone(),
        };
    };
    let lines = task.take_lines();
    let key = Key::result(&msg.tenant, &msg.job_id, &msg.task_id).to_string();
    let mut body = Vec::new();
    for line in &lines {
        serde_json::to_writer(&mut body, line).expect("result lines serialise");
        body.push(b'\n');
    }
    let started = std::time::Instant::now();
    match write(&*store, outputs.as_ref(), &health, &task, &key, &body).await {
        Ok(()) => {
            crate::metrics::STAGE_SECONDS
                .with_label_values(&["write"])
                .observe(started.elapsed().as_secs_f64());
            ticket.written(key, lines).await
        }
        Err(WriteError::Refused(reason, given_up)) => {
            tracing::error!(job = %msg.job_id, task = %msg.task_id, reason, "the task's results cannot be written there");
            ticket.give_up(given_up).await
        }
        Err(WriteError::Unavailable(e)) => {
            tracing::warn!(job = %msg.job_id, task = %msg.task_id, error = %e, "the store stayed unavailable; returning the task");
            ticket.unwritten().await
        }
    }
}

/// Why a result object was not written.
enum WriteError {
    /// Writing there cannot work (an output outside the tenant's allow-list, access
    /// denied, no such bucket): trying again cannot help.
    Refused(String, GivenUp),
    /// The store did not answer for as long as a message may be held.
    Unavailable(StoreError),
}

impl WriteError {
    fn from_store(e: StoreError, refused: GivenUp) -> Self {
        if e.is_transient() {
            WriteError::Unavailable(e)
        } else {
            WriteError::Refused(e.to_string(), refused)
        }
    }
}

/// Writes a task's result object where its job wants it: our store, unless the job keeps
/// nothing (`retain: false`) and has its own `output`; the client's `output`, when given,
/// if the tenant may write there (the scheduler checked; this is the second line).
async fn write(
    store: &dyn ObjectStore,
    outputs: Option<&S3Store>,
    health: &Health,
    task: &TaskState,
    key: &str,
    body: &[u8],
) -> Result<(), WriteError> {
    let msg = &task.msg;
    if let Some(location) = &msg.output {
        let refused = |reason: String| WriteError::Refused(reason, GivenUp::OutputRefused);
        let base = outputs
            .ok_or_else(|| refused("this worker has no S3 access for output locations".into()))?;
        task.tenant
            .check(location, Access::Write, Some(base.location()))
            .map_err(|denied| refused(denied.to_string()))?;
        let output = base.elsewhere(location);
        let output_key = output_key(&msg.job_id, &msg.task_id);
        // The job's own bucket: its outages are waited out, but are not the store's.
        retry_until("writing to an output location", task.hold_until, || {
            output.put(&output_key, body.to_vec())
        })
        .await
        .map_err(|e| WriteError::from_store(e, GivenUp::OutputRefused))?;
    }
    if msg.options.retain || msg.output.is_none() {
        health
            .persist("writing a result", task.hold_until, || {
                store.put(key, body.to_vec())
            })
            .await
            .map_err(|e| WriteError::from_store(e, GivenUp::StoreRefused))?;
    }
    Ok(())
}
