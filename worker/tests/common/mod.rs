//! What the pipeline tests share: the real model, the sample photos, and a harness that
//! runs a pipeline on an in-memory queue and a results folder until the queue drains.
#![allow(dead_code)] // each test file uses its own part

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tagfleet_contracts::keys::Key;
use tagfleet_contracts::schema::{
    Analysis, ResultLine, SCHEMA_VERSION, TaskItem, TaskMessage, TaskOptions,
};
use tagfleet_contracts::{Pseudonymiser, TenantKey};
use tagfleet_io::queue::MemoryQueue;
use tagfleet_io::store::FsStore;
use tagfleet_io::{ObjectStore, Queue};
use tagfleet_models::{Backend, Classes, DecodeLimits, ModelSpec, OrtBackend};
use tagfleet_worker::{BatchPolicy, FileRoots, Health, Pipeline, PipelineConfig, Summary, Tenants};
use tokio_util::sync::CancellationToken;

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

pub fn photos() -> PathBuf {
    let dir = repo().join("samples/photos");
    assert!(
        dir.join("coffee.png").is_file(),
        "run `make photos` (make test does)"
    );
    dir.canonicalize().unwrap()
}

pub fn spec() -> ModelSpec {
    ModelSpec::load(&repo().join("models/efficientnet-lite0"))
        .expect("run `make model` (make test does)")
}

pub fn ort() -> Box<dyn Backend> {
    Box::new(OrtBackend::cpu(&spec(), 1, None).expect("ONNX Runtime from .venv (`make venv`)"))
}

pub fn task(task_id: &str, files: &[&str]) -> TaskMessage {
    TaskMessage {
        v: SCHEMA_VERSION,
        job_id: "job1".into(),
        task_id: task_id.into(),
        tenant: "acme".into(),
        analyses: vec![Analysis::Tags],
        model: spec().id(),
        options: TaskOptions::default(),
        output: None,
        created_at: None,
        items: files
            .iter()
            .map(|f| TaskItem {
                reference: format!("file://{}/{f}", photos().display()),
            })
            .collect(),
    }
}

pub const PHOTOS: [&str; 6] = [
    "coffee.png",
    "chelsea.png",
    "astronaut.png",
    "rocket.jpg",
    "camera.png",
    "horse.png",
];

pub struct Harness {
    pub queue: Arc<MemoryQueue>,
    pub store: Arc<FsStore>,
    _dir: tempfile::TempDir,
}

/// Deliveries of a message before the harness's queue dead-letters it.
pub const DELIVERY_LIMIT: u32 = 3;

/// The tenant's key.
pub fn key() -> Pseudonymiser {
    Pseudonymiser::new(TenantKey::new(vec![42; 32]).unwrap())
}

/// How a harness run differs from the default one.
pub struct Run {
    /// Empty: one real ONNX Runtime backend.
    pub backends: Vec<Box<dyn Backend>>,
    pub max_batch: usize,
    pub pixel_budget: usize,
    /// Another store in front of the harness's folder (a fault-injecting one).
    pub store: Option<Arc<dyn ObjectStore>>,
    pub progress: Option<Arc<dyn Queue>>,
    pub batch_timeout: Duration,
}

impl Default for Run {
    fn default() -> Self {
        Self {
            backends: Vec::new(),
            max_batch: 4,
            pixel_budget: tagfleet_worker::DEFAULT_PIXEL_BUDGET,
            store: None,
            progress: None,
            batch_timeout: Duration::from_secs(60),
        }
    }
}

impl Harness {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(FsStore::new(dir.path(), None).unwrap());
        Self {
            queue: Arc::new(MemoryQueue::new(DELIVERY_LIMIT)),
            store,
            _dir: dir,
        }
    }

    pub async fn run(&self, backends: Vec<Box<dyn Backend>>, max_batch: usize) -> Summary {
        self.run_with(backends, max_batch, tagfleet_worker::DEFAULT_PIXEL_BUDGET)
            .await
    }

    pub async fn run_with(
        &self,
        backends: Vec<Box<dyn Backend>>,
        max_batch: usize,
        pixel_budget: usize,
    ) -> Summary {
        let run = Run {
            backends,
            max_batch,
            pixel_budget,
            ..Run::default()
        };
        let (summary, health) = self.run_on(run).await;
        assert_eq!(health.failure(), None, "the pipeline did not fail");
        summary
    }

    /// Runs until the queue drains or the pipeline fails; returns its summary and health.
    pub async fn run_on(&self, run: Run) -> (Summary, Health) {
        let spec = spec();
        let classes = Arc::new(Classes::load(&spec, None).unwrap());
        let health = Health::default();
        let backends = if run.backends.is_empty() {
            vec![ort()]
        } else {
            run.backends
        };
        let pipeline = Pipeline {
            queue: self.queue.clone(),
            store: run.store.unwrap_or_else(|| self.store.clone()),
            tenants: Tenants::single("acme", key()).into(),
            spec,
            classes,
            backends,
            config: PipelineConfig {
                batch: BatchPolicy {
                    max_batch: run.max_batch,
                    max_delay: Duration::from_millis(5),
                    max_batch_bytes: None,
                },
                prepare_threads: 2,
                fetch_concurrency: 4,
                max_tasks_in_flight: 2,
                limits: DecodeLimits::default(),
                pixel_budget: run.pixel_budget,
                sources: FileRoots::new([photos()]).unwrap().into(),
                exit_when_drained: true,
                progress: run.progress,
                job_check_interval: tagfleet_worker::gate::DEFAULT_INTERVAL,
                max_task_age: None,
                outputs: None,
                delivery_limit: DELIVERY_LIMIT,
                batch_timeout: run.batch_timeout,
            },
            health: health.clone(),
        };
        let summary = tokio::time::timeout(
            Duration::from_secs(120),
            pipeline.run(CancellationToken::new(), None),
        )
        .await
        .expect("the pipeline drains and stops");
        (summary, health)
    }

    /// Waits (a bounded while) until `n` messages are ready again: messages of dropped
    /// tasks go back from a spawned task, just after the pipeline returns.
    pub async fn wait_ready(&self, n: usize) {
        for _ in 0..500 {
            if self.queue.ready_len() == n && self.queue.unacked_len() == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!(
            "expected {n} ready messages, found {} ready and {} unacked",
            self.queue.ready_len(),
            self.queue.unacked_len()
        );
    }

    /// Tasks t000001..t000004, each of the six photos: 24 images, coffee first.
    pub async fn publish_four_tasks_of_the_photos(&self) {
        for i in 1..=4 {
            self.queue
                .publish(task(&format!("t{i:06}"), &PHOTOS).to_json())
                .await
                .unwrap();
        }
    }

    pub async fn lines(&self, task_id: &str) -> Vec<ResultLine> {
        let body = self
            .store
            .get(&Key::result("acme", "job1", task_id).to_string())
            .await
            .unwrap();
        String::from_utf8(body)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}
