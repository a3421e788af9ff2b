//! Faults inside one worker, injected with a backend, a store or a stage that fails: every
//! message is settled (finished, or back in the queue to be finished), nothing is lost,
//! and a worker that cannot go on says so and stops taking work.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use common::{DELIVERY_LIMIT, Harness, PHOTOS, Run, ort, task};
use tagfleet_contracts::keys::Area;
use tagfleet_contracts::schema::{GivenUp, ProgressMessage, Status};
use tagfleet_io::queue::MemoryQueue;
use tagfleet_io::store::ObjectMeta;
use tagfleet_io::{ObjectStore, Queue, StoreError};
use tagfleet_models::{Backend, BackendError, BatchOutput, Device};

/// A device that fails every batch, by error or by panic.
struct Broken {
    panics: bool,
    batches: Arc<AtomicUsize>,
}

impl Backend for Broken {
    fn device(&self) -> Device {
        Device::Cpu
    }
    fn run(&mut self, _: &[f32], _: usize, _: bool) -> Result<BatchOutput, BackendError> {
        self.batches.fetch_add(1, Ordering::SeqCst);
        if self.panics {
            panic!("device driver crashed");
        }
        Err(BackendError::new("device lost"))
    }
}

/// A device that fails every batch stops its executor after a few batches; with none left
/// the worker fails: it stops taking work, and every task goes back to the queue instead
/// of becoming error records. A healthy worker then finishes them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_or_panicking_device_returns_its_tasks_and_fails_the_worker() {
    for panics in [false, true] {
        let h = Harness::new();
        h.publish_four_tasks_of_the_photos().await;
        let batches = Arc::new(AtomicUsize::new(0));
        let broken = Broken {
            panics,
            batches: batches.clone(),
        };
        let run = Run {
            backends: vec![Box::new(broken)],
            max_batch: 2,
            ..Run::default()
        };
        let (summary, health) = h.run_on(run).await;
        let failure = health.failure().expect("the worker failed");
        assert!(failure.contains("every executor stopped"), "{failure}");
        assert!(!health.is_ready());
        assert_eq!(
            batches.load(Ordering::SeqCst),
            tagfleet_worker::executor::BREAKER_FAILURES as usize,
            "the breaker stopped the executor after its failures in a row"
        );
        assert_eq!((summary.tasks_written, summary.images()), (0, 0));
        let results = h.store.list(Area::Results.prefix()).await.unwrap();
        assert!(results.is_empty(), "no error records were written");
        h.wait_ready(4).await;
        assert!(h.queue.dead_letters().is_empty());

        // Another worker, with a working device, finishes every task.
        let summary = h.run(vec![ort()], 4).await;
        assert_eq!((summary.tasks_written, summary.images_ok), (4, 24));
        assert_eq!(
            h.lines("t000003").await[0].tags.as_ref().unwrap()[0].label,
            "espresso"
        );
        assert!(h.queue.is_drained());
    }
}

/// A store in front of the harness's folder that fails its first writes.
struct FaultyStore {
    inner: Arc<dyn ObjectStore>,
    fault: Fault,
    puts: AtomicUsize,
}

#[derive(Clone, Copy)]
enum Fault {
    /// The first n writes find the store unavailable.
    Unavailable(usize),
    /// Every write is refused (access denied).
    Refused,
    /// The first write panics.
    Panics,
}

#[async_trait]
impl ObjectStore for FaultyStore {
    async fn put(&self, key: &str, body: Vec<u8>) -> Result<(), StoreError> {
        let n = self.puts.fetch_add(1, Ordering::SeqCst);
        match self.fault {
            Fault::Unavailable(failures) if n < failures => Err(StoreError::Unavailable {
                op: "writing",
                key: key.into(),
                message: "connection refused".into(),
            }),
            Fault::Refused => Err(StoreError::Refused {
                op: "writing",
                key: key.into(),
                message: "AccessDenied".into(),
            }),
            Fault::Panics if n == 0 => panic!("the store client crashed"),
            _ => self.inner.put(key, body).await,
        }
    }
    async fn get(&self, key: &str) -> Result<Vec<u8>, StoreError> {
        self.inner.get(key).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        self.inner.list(prefix).await
    }
    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.inner.delete(key).await
    }
}

impl Harness {
    fn faulty(&self, fault: Fault) -> Arc<FaultyStore> {
        Arc::new(FaultyStore {
            inner: self.store.clone(),
            fault,
            puts: AtomicUsize::new(0),
        })
    }
}

/// A store that is briefly unavailable is waited out: the write is tried again while the
/// message is held, so no delivery is spent and the task is written once and acked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_briefly_unavailable_store_is_waited_out_without_spending_a_delivery() {
    let h = Harness::new();
    h.queue
        .publish(task("t000001", &["coffee.png", "chelsea.png"]).to_json())
        .await
        .unwrap();
    let store = h.faulty(Fault::Unavailable(3));
    let progress = Arc::new(MemoryQueue::default());
    let run = Run {
        store: Some(store.clone()),
        progress: Some(progress.clone()),
        ..Run::default()
    };
    let (summary, health) = h.run_on(run).await;
    assert_eq!(health.failure(), None);
    assert!(health.store_up(), "the store answered again");
    assert_eq!((summary.tasks_written, summary.tasks_failed), (1, 0));
    assert_eq!(
        store.puts.load(Ordering::SeqCst),
        4,
        "three failures, then the write"
    );
    assert!(h.queue.is_drained() && h.queue.dead_letters().is_empty());
    let reports = progress
        .receive(10, Duration::from_millis(10))
        .await
        .unwrap();
    assert_eq!(reports.len(), 1, "one delivery, one report");
    let report = ProgressMessage::from_json(&reports[0].body).unwrap();
    assert_eq!((report.ok, report.failed, report.given_up), (2, 0, None));
}

/// A store that refuses the write for good (access denied) gives the task up at once:
/// reported as given up, so that its job ends, and dead-lettered after one delivery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_refuses_gives_the_task_up_once_and_reports_it() {
    let h = Harness::new();
    h.queue
        .publish(task("t000001", &["coffee.png"]).to_json())
        .await
        .unwrap();
    let store = h.faulty(Fault::Refused);
    let progress = Arc::new(MemoryQueue::default());
    let run = Run {
        store: Some(store.clone()),
        progress: Some(progress.clone()),
        ..Run::default()
    };
    let (summary, health) = h.run_on(run).await;
    assert_eq!(
        health.failure(),
        None,
        "a refusal is the task's problem, not the worker's"
    );
    assert_eq!((summary.tasks_written, summary.tasks_failed), (0, 1));
    assert_eq!(
        store.puts.load(Ordering::SeqCst),
        1,
        "a refused write is not tried again"
    );
    assert_eq!(h.queue.dead_letters().len(), 1);
    let reports = progress
        .receive(10, Duration::from_millis(10))
        .await
        .unwrap();
    let report = ProgressMessage::from_json(&reports[0].body).unwrap();
    assert_eq!(
        (report.task_id.as_str(), report.ok, report.given_up),
        ("t000001", 0, Some(GivenUp::StoreRefused))
    );
}

/// A write that panics fails the worker and returns its message; the next worker writes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_that_panics_returns_its_task_and_fails_the_worker() {
    let h = Harness::new();
    h.queue
        .publish(task("t000001", &PHOTOS).to_json())
        .await
        .unwrap();
    let run = Run {
        store: Some(h.faulty(Fault::Panics)),
        ..Run::default()
    };
    let (_, health) = h.run_on(run).await;
    let failure = health.failure().expect("the worker failed");
    assert!(failure.contains("result write panicked"), "{failure}");
    // The message went back; the failing pipeline may still have taken it again before
    // its consumer stopped. Either way a next worker leaves it written, exactly once.
    for _ in 0..500 {
        if h.queue.unacked_len() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if h.queue.ready_len() > 0 {
        h.run(vec![ort()], 4).await;
    }
    assert!(h.queue.is_drained());
    let results = h.store.list(Area::Results.prefix()).await.unwrap();
    assert_eq!(results.len(), 1);
    let lines = h.lines("t000001").await;
    assert_eq!(lines.len(), PHOTOS.len());
    assert!(lines.iter().all(|l| l.status == Status::Ok));
}

/// A task that fails on its last delivery is given up and reported, not silently
/// dead-lettered by the queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_delivery_of_a_failing_task_gives_it_up_with_a_report() {
    let h = Harness::new();
    h.queue
        .publish(task("t000001", &["coffee.png"]).to_json())
        .await
        .unwrap();
    // Spend all deliveries but the last.
    for _ in 1..DELIVERY_LIMIT {
        let d = h.queue.receive(1, Duration::from_millis(10)).await.unwrap();
        h.queue.nack(&d[0], true).await.unwrap();
    }
    let progress = Arc::new(MemoryQueue::default());
    let run = Run {
        backends: vec![Box::new(Broken {
            panics: false,
            batches: Arc::default(),
        })],
        progress: Some(progress.clone()),
        ..Run::default()
    };
    // One failed batch: not enough to stop the executor, the last delivery to give up.
    let (summary, _) = h.run_on(run).await;
    assert_eq!(summary.tasks_written, 0);
    for _ in 0..100 {
        if !h.queue.dead_letters().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(h.queue.dead_letters().len(), 1);
    let reports = progress.receive(10, Duration::from_secs(1)).await.unwrap();
    let report = ProgressMessage::from_json(&reports[0].body).unwrap();
    assert_eq!(report.given_up, Some(GivenUp::Attempts));
}

/// A redelivered task whose result object was written (its ack was lost) is reported and
/// acked without running again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_written_task_delivered_again_is_reported_not_recomputed() {
    let h = Harness::new();
    let msg = task("t000001", &["coffee.png", "chelsea.png"]);
    h.queue.publish(msg.to_json()).await.unwrap();
    h.run(vec![ort()], 4).await;
    let written = h.lines("t000001").await;

    // The broker hands it out again, as after a lost ack: a second delivery.
    h.queue.publish(msg.to_json()).await.unwrap();
    let d = h.queue.receive(1, Duration::from_millis(10)).await.unwrap();
    h.queue.nack(&d[0], true).await.unwrap();
    let batches = Arc::new(AtomicUsize::new(0));
    let progress = Arc::new(MemoryQueue::default());
    let run = Run {
        backends: vec![Box::new(Broken {
            panics: false,
            batches: batches.clone(),
        })],
        progress: Some(progress.clone()),
        ..Run::default()
    };
    let (_, health) = h.run_on(run).await;
    assert_eq!(health.failure(), None);
    assert_eq!(batches.load(Ordering::SeqCst), 0, "nothing ran again");
    assert!(h.queue.is_drained());
    let reports = progress
        .receive(10, Duration::from_millis(10))
        .await
        .unwrap();
    let report = ProgressMessage::from_json(&reports[0].body).unwrap();
    assert_eq!((report.ok, report.failed), (2, 0));
    assert_eq!(h.lines("t000001").await.len(), written.len());
}

/// A device slower than it.
struct Hung;

impl Backend for Hung {
    fn device(&self) -> Device {
        Device::Cpu
    }
    fn run(&mut self, _: &[f32], _: usize, _: bool) -> Result<BatchOutput, BackendError> {
        std::thread::sleep(Duration::from_secs(3));
        Err(BackendError::new("timed out"))
    }
}

/// A batch that runs longer than the batch timeout fails the worker (the watchdog), so
/// that it stops taking work and is restarted, and its task goes back to the queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_device_is_caught_by_the_watchdog() {
    let h = Harness::new();
    h.queue
        .publish(task("t000001", &["coffee.png"]).to_json())
        .await
        .unwrap();
    let run = Run {
        backends: vec![Box::new(Hung)],
        batch_timeout: Duration::from_secs(1),
        ..Run::default()
    };
    let (summary, health) = h.run_on(run).await;
    let failure = health.failure().expect("the watchdog failed the worker");
    assert!(failure.contains("hung"), "{failure}");
    assert_eq!(summary.tasks_written, 0);
    h.wait_ready(1).await;
}
