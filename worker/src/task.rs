//! One task message in work: its images travel through the stages independently and the
//! last one to finish hands the task to the writer.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tagfleet_contracts::secrets::{Access, Denied, TenantSecrets};
use tagfleet_contracts::{ImageError, Pseudonymiser, ResultLine, S3Location, Secrets, TaskMessage};
use tokio::sync::OwnedSemaphorePermit;

use crate::settle::Ticket;

/// The tenants this worker serves, each with its pseudonym key and allow-lists.
#[derive(Debug, Clone, Default)]
pub struct Tenants {
    by_name: HashMap<String, Arc<Tenant>>,
}

/// The tenants as last loaded: a worker reloads its secrets file when it changes
/// (Kubernetes updates a mounted Secret in place), and every stage sees the new set.
#[derive(Debug, Clone)]
pub struct LiveTenants(tokio::sync::watch::Receiver<Tenants>);

impl LiveTenants {
    /// Tenants and the sender that replaces them.
    pub fn channel(tenants: Tenants) -> (tokio::sync::watch::Sender<Tenants>, Self) {
        let (tx, rx) = tokio::sync::watch::channel(tenants);
        (tx, Self(rx))
    }

    pub fn get(&self, name: &str) -> Option<Arc<Tenant>> {
        self.0.borrow().get(name).cloned()
    }

    /// Whether anything can still replace the tenants (a reloader runs).
    pub fn can_change(&self) -> bool {
        self.0.has_changed().is_ok()
    }

    /// Completes when the tenants were replaced (never, once nothing can replace them).
    pub async fn changed(&mut self) {
        if self.0.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

impl From<Tenants> for LiveTenants {
    /// Tenants that never change (the embedded mode, tests).
    fn from(tenants: Tenants) -> Self {
        Self::channel(tenants).1
    }
}

/// One tenant as a worker knows it.
#[derive(Debug)]
pub struct Tenant {
    pub pseudonymiser: Pseudonymiser,
    /// Its S3 allow-lists; none in the embedded mode, which reads local files only.
    secrets: Option<TenantSecrets>,
}

impl Tenant {
    /// Whether the tenant may read or write at `location` (see [`TenantSecrets::check`]).
    pub fn check(
        &self,
        location: &S3Location,
        access: Access,
        fleet_store: Option<&S3Location>,
    ) -> Result<(), Denied> {
        match &self.secrets {
            Some(secrets) => secrets.check(location, access, fleet_store),
            None => Err(Denied::NotAllowed),
        }
    }
}

impl Tenants {
    /// One tenant with a key and no S3 access: the embedded mode.
    pub fn single(name: impl Into<String>, pseudonymiser: Pseudonymiser) -> Self {
        let tenant = Tenant {
            pseudonymiser,
            secrets: None,
        };
        Self {
            by_name: HashMap::from([(name.into(), Arc::new(tenant))]),
        }
    }

    /// Every tenant of a secrets file.
    pub fn from_secrets(secrets: &Secrets) -> Self {
        let by_name = secrets
            .iter()
            .map(|(name, s)| {
                let tenant = Tenant {
                    pseudonymiser: Pseudonymiser::new(s.key.clone()),
                    secrets: Some(s.clone()),
                };
                (name.to_owned(), Arc::new(tenant))
            })
            .collect();
        Self { by_name }
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Tenant>> {
        self.by_name.get(name)
    }
}

/// A task message being worked on.
pub struct TaskState {
    pub msg: TaskMessage,
    /// Its message's settlement: taken by the writer; when the task is dropped with it
    /// still here (an image was lost on the way), the message goes back to the queue.
    ticket: Mutex<Option<Ticket>>,
    pub model_id: String,
    pub tenant: Arc<Tenant>,
    /// Until when outages of the store are waited out for this task, all its calls
    /// together: its message must not be held past the broker's consumer timeout.
    pub hold_until: tokio::time::Instant,
    lines: Mutex<Vec<Option<ResultLine>>>,
    remaining: AtomicUsize,
    /// Held until the task is acked: bounds the messages in flight.
    _permit: OwnedSemaphorePermit,
}

impl TaskState {
    pub fn new(
        msg: TaskMessage,
        ticket: Option<Ticket>,
        model_id: String,
        tenant: Arc<Tenant>,
        permit: OwnedSemaphorePermit,
    ) -> Arc<Self> {
        let n = msg.items.len();
        Arc::new(Self {
            msg,
            ticket: Mutex::new(ticket),
            model_id,
            tenant,
            hold_until: tokio::time::Instant::now() + crate::health::MAX_OUTAGE_HOLD,
            lines: Mutex::new(vec![None; n]),
            remaining: AtomicUsize::new(n),
            _permit: permit,
        })
    }

    pub fn pseudonymiser_key_id(&self) -> &str {
        self.tenant.pseudonymiser.key_id()
    }

    /// The work items of this task, one per image.
    pub fn items(self: &Arc<Self>) -> impl Iterator<Item = Work> + '_ {
        (0..self.msg.items.len()).map(move |index| {
            crate::metrics::IN_FLIGHT.inc();
            Work {
                task: self.clone(),
                index,
                timings: Timings::start(),
            }
        })
    }

    /// The message's settlement, once (the writer takes it when the task is complete).
    pub fn take_ticket(&self) -> Option<Ticket> {
        self.ticket.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// Records one image's line; true when it was the last one.
    pub fn complete(&self, index: usize, line: ResultLine) -> bool {
        let mut lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        if lines[index].replace(line).is_some() {
            // A stage reported an image twice: a bug, but not one to lose data over.
            tracing::error!(task = %self.msg.task_id, index, "image completed twice");
            return false;
        }
        self.remaining.fetch_sub(1, Ordering::AcqRel) == 1
    }

    /// The finished lines in item order.
    pub fn take_lines(&self) -> Vec<ResultLine> {
        let mut lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        lines
            .iter_mut()
            .map(|l| l.take().expect("every image completed before the write"))
            .collect()
    }
}

/// One image of a task on its way through the pipeline. A stage that drops one without
/// completing it leaves its task unfinished: the task's ticket then returns the message.
pub struct Work {
    pub task: Arc<TaskState>,
    pub index: usize,
    pub timings: Timings,
}

impl Drop for Work {
    fn drop(&mut self) {
        crate::metrics::IN_FLIGHT.dec();
    }
}

impl Work {
    pub fn reference(&self) -> &str {
        &self.task.msg.items[self.index].reference
    }

    /// The image's pseudonym. Refs are canonical when published, so this is stable.
    pub fn pseudonym(&self) -> String {
        self.task.tenant.pseudonymiser.pseudonym(self.reference())
    }

    /// The error line for this image.
    pub fn failed(&self, error: ImageError) -> ResultLine {
        let mut line = ResultLine::failed(
            self.pseudonym(),
            self.task.tenant.pseudonymiser.key_id().to_owned(),
            self.task.model_id.clone(),
            error,
        );
        line.timings_ms = self.timings.ms.clone();
        line
    }
}

/// Milliseconds per stage of one image, and the moment the current stage started.
pub struct Timings {
    pub ms: BTreeMap<String, f64>,
    mark: Instant,
}

impl Timings {
    pub fn start() -> Self {
        Self {
            ms: BTreeMap::new(),
            mark: Instant::now(),
        }
    }

    /// Ends the current stage under `name` and starts the next.
    pub fn lap(&mut self, name: &str) {
        let now = Instant::now();
        let ms = now.duration_since(self.mark).as_secs_f64() * 1e3;
        *self.ms.entry(name.to_owned()).or_default() += (ms * 1e3).round() / 1e3;
        self.mark = now;
    }

    /// [`Timings::lap`] when `done` (an analysis that ran), else nothing.
    pub fn lap_if(&mut self, done: bool, name: &str) {
        if done {
            self.lap(name);
        }
    }

    /// Records a duration measured elsewhere (a batch's inference) and restarts the mark.
    pub fn record(&mut self, name: &str, ms: f64) {
        self.ms.insert(name.to_owned(), (ms * 1e3).round() / 1e3);
        self.mark = Instant::now();
    }
}

/// An image leaving the pipeline with its line.
pub struct Completed {
    pub work: Work,
    pub line: ResultLine,
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use tagfleet_contracts::TenantKey;
    use tagfleet_contracts::schema::{Analysis, SCHEMA_VERSION, TaskItem, TaskOptions};

    /// `n` work items of one task, for stage tests.
    pub(crate) fn works(n: usize) -> Vec<Work> {
        let msg = TaskMessage {
            v: SCHEMA_VERSION,
            job_id: "j".into(),
            task_id: "t".into(),
            tenant: "local".into(),
            analyses: vec![Analysis::Tags],
            model: "m@1".into(),
            options: TaskOptions::default(),
            output: None,
            created_at: None,
            items: (0..n)
                .map(|i| TaskItem {
                    reference: format!("file:///img/{i}.jpg"),
                })
                .collect(),
        };
        let permit = Arc::new(tokio::sync::Semaphore::new(1))
            .try_acquire_owned()
            .unwrap();
        let key = Pseudonymiser::new(TenantKey::new(vec![7; 32]).unwrap());
        let tenant = Tenants::single("t", key).get("t").unwrap().clone();
        let task = TaskState::new(msg, None, "m@1".into(), tenant, permit);
        task.items().collect()
    }

    #[test]
    fn the_last_image_completes_the_task_and_lines_keep_item_order() {
        let works = works(3);
        let task = works[0].task.clone();
        let mut done = Vec::new();
        for w in works.iter().rev() {
            let line = w.failed(ImageError::new(
                tagfleet_contracts::ErrorKind::Decode,
                format!("image {}", w.index),
            ));
            done.push(task.complete(w.index, line));
        }
        assert_eq!(done, [false, false, true]);
        let messages: Vec<_> = task
            .take_lines()
            .into_iter()
            .map(|l| l.error.unwrap().message)
            .collect();
        assert_eq!(messages, ["image 0", "image 1", "image 2"]);
    }

    #[test]
    fn error_lines_name_the_image_by_pseudonym_only() {
        let w = works(1).pop().unwrap();
        let line = w.failed(ImageError::new(
            tagfleet_contracts::ErrorKind::Fetch,
            "file not found",
        ));
        let json = serde_json::to_string(&line).unwrap();
        assert!(!json.contains("0.jpg") && !json.contains("/img/"), "{json}");
        assert_eq!(line.image, w.pseudonym());
    }
}
