//! The background work on a folder store and in-process queues: starting, and counting
//! progress through a store outage.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use tagfleet_contracts::Secrets;
use tagfleet_contracts::job::JobState;
use tagfleet_contracts::keys::Key;
use tagfleet_contracts::schema::{ProgressMessage, SCHEMA_VERSION};
use tagfleet_io::netguard::UrlPolicy;
use tagfleet_io::queue::{MemoryQueue, TaskQueues};
use tagfleet_io::store::{FsStore, ObjectMeta};
use tagfleet_io::{ObjectStore, Queue, StoreError};
use tokio_util::sync::CancellationToken;

use super::{Intervals, run_background};
use crate::api::{SchedulerConfig, Service};
use crate::record::JobRecord;
use crate::schedules::{ScheduleLimits, ScheduleSpec};

const TENANT: &str = "acme";
const RETENTION: Duration = Duration::from_secs(3600);

fn new_service(store: Arc<dyn ObjectStore>) -> Arc<Service> {
    let secrets = Secrets::parse(&format!(
        "[tenants.{TENANT}]\nkey = \"{}\"\n",
        "ab".repeat(32)
    ))
    .unwrap();
    Service::new(
        store,
        TaskQueues::shared(["efficientnet-lite0@1"], Arc::new(MemoryQueue::new(3))),
        secrets,
        None,
        SchedulerConfig {
            models: vec!["efficientnet-lite0@1".into()],
            categorizers: vec!["general".into(), "retail".into()],
            chunk_size: 2,
            retention: RETENTION,
            max_job_images: 1000,
            max_manifest_bytes: 1 << 20,
            urls: UrlPolicy::default(),
            schedules: ScheduleLimits::default(),
            fleet_store: None,
        },
    )
}

/// The background work of `service`, until the returned token is cancelled.
fn start(
    service: &Arc<Service>,
    store: Arc<dyn ObjectStore>,
    progress: Arc<dyn Queue>,
) -> (
    CancellationToken,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(run_background(
        service.clone(),
        progress,
        store,
        RETENTION,
        Intervals::default(),
        shutdown.clone(),
    ));
    (shutdown, task)
}

/// Waits up to 20 s for `done`.
async fn eventually(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done().await {
        assert!(Instant::now() < deadline, "not after 20 s: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_older_than_the_retention_does_not_keep_the_scheduler_from_starting() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn ObjectStore> = Arc::new(FsStore::new(dir.path(), Some(RETENTION)).unwrap());
    let first = new_service(store.clone());
    let spec: ScheduleSpec = crate::spec::parse(
        serde_json::json!({"cron": "0 2 * * 1",
            "job": {"source": {"kind": "s3_prefix", "uri": "s3://media/2026/"}}})
        .to_string()
        .as_bytes(),
    )
    .unwrap();
    let weekly = first
        .schedules
        .create(&first.book, TENANT, spec)
        .await
        .unwrap();
    // A weekly schedule last written days ago, far past the results' retention.
    let path = dir
        .path()
        .join(Key::schedule(TENANT, &weekly.id).to_string());
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(SystemTime::now() - Duration::from_secs(3 * 24 * 3600))
        .unwrap();

    let service = new_service(store.clone());
    let (shutdown, task) = start(&service, store, Arc::new(MemoryQueue::new(3)));
    eventually("the scheduler is ready", async || {
        assert!(!task.is_finished(), "the background work ended");
        service.ready.load(Ordering::Relaxed)
    })
    .await;
    let kept = service.schedules.list(TENANT).await;
    assert_eq!(kept.len(), 1, "the weekly schedule is kept");
    assert_eq!(kept[0].id, weekly.id);
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_store_that_cannot_be_loaded_ends_the_background_work_with_an_error() {
    let dir = tempfile::tempdir().unwrap();
    // `jobs` is a file, not a folder: listing it fails, and not for a missing key.
    std::fs::write(dir.path().join("jobs"), b"").unwrap();
    let store: Arc<dyn ObjectStore> = Arc::new(FsStore::new(dir.path(), Some(RETENTION)).unwrap());
    let service = new_service(store.clone());
    let (_shutdown, task) = start(&service, store, Arc::new(MemoryQueue::new(3)));
    let ended = tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the background work ends by itself")
        .unwrap();
    let error = format!("{:#}", ended.unwrap_err());
    assert!(error.starts_with("loading the job records"), "{error}");
    assert!(!service.ready.load(Ordering::Relaxed));
}

/// A folder store whose next `failing` writes fail, as a store that is down does.
struct FlakyStore {
    inner: FsStore,
    failing: AtomicU32,
    failed: AtomicU32,
}

#[async_trait]
impl ObjectStore for FlakyStore {
    async fn put(&self, key: &str, body: Vec<u8>) -> Result<(), StoreError> {
        let down = self
            .failing
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if down {
            self.failed.fetch_add(1, Ordering::SeqCst);
            return Err(StoreError::Io {
                op: "writing",
                key: key.to_owned(),
                source: std::io::Error::other("connection refused"),
            });
        }
        self.inner.put(key, body).await
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_wait_out_a_store_outage_unacked_and_are_never_dead_lettered() {
    let dir = tempfile::tempdir().unwrap();
    let flaky = Arc::new(FlakyStore {
        inner: FsStore::new(dir.path(), Some(RETENTION)).unwrap(),
        failing: AtomicU32::new(0),
        failed: AtomicU32::new(0),
    });
    let store: Arc<dyn ObjectStore> = flaky.clone();
    let service = new_service(store.clone());
    let spec = crate::spec::parse(
        serde_json::json!({"source": {"kind": "urls", "urls": [
            "https://93.184.216.34/a.jpg", "https://93.184.216.34/b.jpg",
            "https://93.184.216.34/c.jpg"]}})
        .to_string()
        .as_bytes(),
    )
    .unwrap();
    let id = service.create_job(TENANT, spec).await.unwrap().id;

    // Both tasks report; the store then refuses more writes than the progress queue has
    // deliveries (3) for one report.
    let progress = Arc::new(MemoryQueue::new(3));
    for (task, ok) in [("t000001", 2), ("t000002", 1)] {
        let report = ProgressMessage {
            v: SCHEMA_VERSION,
            tenant: TENANT.into(),
            job_id: id.clone(),
            task_id: task.into(),
            ok,
            failed: 0,
            given_up: None,
        };
        progress.publish(report.to_json()).await.unwrap();
    }
    flaky.failing.store(5, Ordering::SeqCst);
    let (shutdown, task) = start(&service, store.clone(), progress.clone());
    let key = Key::job(TENANT, &id).to_string();
    eventually("the job's record says it succeeded", async || {
        store
            .get(&key)
            .await
            .ok()
            .and_then(|body| JobRecord::from_json(&body).ok())
            .is_some_and(|r| r.state == JobState::Succeeded && r.counts.done == 3)
    })
    .await;
    eventually("the reports are acked", async || {
        progress.ready_len() == 0 && progress.unacked_len() == 0
    })
    .await;
    assert_eq!(
        flaky.failed.load(Ordering::SeqCst),
        5,
        "the outage happened"
    );
    assert!(
        progress.dead_letters().is_empty(),
        "a report was dead-lettered"
    );
    shutdown.cancel();
    task.await.unwrap().unwrap();
}
