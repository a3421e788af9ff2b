//! Schedules with a real (filesystem) store, an in-memory queue and the real job book.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_trait::async_trait;
use chrono::TimeDelta;
use tagfleet_contracts::Secrets;
use tagfleet_io::netguard::UrlPolicy;
use tagfleet_io::queue::{MemoryQueue, TaskQueues};
use tagfleet_io::store::{FsStore, ObjectMeta};
use tokio::sync::{Notify, oneshot};

use super::*;
use crate::api::{SchedulerConfig, Service};
use crate::jobs::TOMBSTONE;

const TENANT: &str = "acme";

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
            chunk_size: 32,
            retention: Duration::from_secs(24 * 3600),
            max_job_images: 1000,
            max_manifest_bytes: 1 << 20,
            urls: UrlPolicy::default(),
            schedules: ScheduleLimits::default(),
            fleet_store: None,
        },
    )
}

fn spec(cron: &str, source: serde_json::Value, retain: bool) -> ScheduleSpec {
    crate::spec::parse(
        serde_json::json!({"cron": cron, "job": {"source": source, "options": {"retain": retain}}})
            .to_string()
            .as_bytes(),
    )
    .unwrap()
}

/// Refs of a public address literal: checked without a network.
fn urls() -> serde_json::Value {
    serde_json::json!({"kind": "urls", "urls": ["https://93.184.216.34/a.jpg"]})
}

fn prefix() -> serde_json::Value {
    serde_json::json!({"kind": "s3_prefix", "uri": "s3://media/2026/"})
}

#[tokio::test]
async fn a_tick_compares_stored_times_and_parses_no_cron() {
    let dir = tempfile::tempdir().unwrap();
    let service = new_service(Arc::new(FsStore::new(dir.path(), None).unwrap()));
    let (book, schedules) = (&service.book, &service.schedules);
    for hour in 0..50 {
        let cron = format!("0 {} * * *", hour % 24);
        schedules
            .create(book, TENANT, spec(&cron, urls(), true))
            .await
            .unwrap();
    }
    let first = schedules
        .list(TENANT)
        .await
        .iter()
        .filter_map(|s| s.next_firing)
        .min()
        .unwrap();
    let parsed = schedules.cron_parses.load(Ordering::Relaxed);
    // An hour of ticks, a second apart, before anything is due: no expression is read.
    for second in (1..=3600).rev() {
        let now = first - TimeDelta::seconds(second);
        assert_eq!(schedules.fire_due(book, now).await, 0);
    }
    assert_eq!(schedules.cron_parses.load(Ordering::Relaxed), parsed);
    // What is due fires, and plans its next firing once.
    let fired = schedules.fire_due(book, first).await;
    assert!(fired >= 1);
    assert_eq!(
        schedules.cron_parses.load(Ordering::Relaxed),
        parsed + fired as u64
    );
    assert_eq!(schedules.fire_due(book, first).await, 0, "planned past now");
}

#[tokio::test]
async fn schedules_that_keep_nothing_hold_no_refs_and_refs_expire_with_them() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn ObjectStore> = Arc::new(FsStore::new(dir.path(), None).unwrap());
    let service = new_service(store.clone());
    let (book, schedules) = (&service.book, &service.schedules);
    let inline = serde_json::json!({"kind": "manifest", "inline": "https://93.184.216.34/a.jpg\n"});
    for source in [urls(), inline.clone()] {
        let refused = schedules
            .create(book, TENANT, spec("0 2 * * *", source, false))
            .await
            .unwrap_err();
        assert!(
            matches!(&refused, ApiError::Invalid(e) if e.field == "job.source"),
            "{refused}"
        );
    }
    let located = schedules
        .create(book, TENANT, spec("0 2 * * *", prefix(), false))
        .await
        .unwrap();
    assert_eq!(located.expires_at, None);
    let listed = schedules
        .create(book, TENANT, spec("0 2 * * *", inline, true))
        .await
        .unwrap();
    let expires = listed.expires_at.unwrap();
    assert_eq!(expires - listed.created_at, TimeDelta::days(30));

    // Past its retention it fires no more, and the sweep deletes it from the store.
    assert_eq!(
        schedules.fire_due(book, expires).await,
        1,
        "only the prefix one"
    );
    assert_eq!(
        schedules
            .expire(expires - TimeDelta::seconds(1))
            .await
            .unwrap(),
        0
    );
    assert_eq!(schedules.expire(expires).await.unwrap(), 1);
    let left = store
        .list(&Area::Schedules.of_tenant(TENANT))
        .await
        .unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].key, located.key());
    assert_eq!(schedules.list(TENANT).await.len(), 1);
}

/// A filesystem store that holds the first write of a job record until told to go on.
struct HeldStore {
    inner: FsStore,
    hold: std::sync::Mutex<Option<oneshot::Receiver<()>>>,
    reached: Notify,
}

#[async_trait]
impl ObjectStore for HeldStore {
    async fn put(&self, key: &str, body: Vec<u8>) -> Result<(), StoreError> {
        if key.starts_with(Area::Jobs.prefix()) {
            let held = self.hold.lock().unwrap().take();
            if let Some(go_on) = held {
                self.reached.notify_one();
                let _ = go_on.await;
            }
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
async fn an_erasure_during_a_firing_leaves_no_schedule_and_no_job() {
    let dir = tempfile::tempdir().unwrap();
    let (go_on, held) = oneshot::channel();
    let store = Arc::new(HeldStore {
        inner: FsStore::new(dir.path(), None).unwrap(),
        hold: std::sync::Mutex::new(Some(held)),
        reached: Notify::new(),
    });
    let service = new_service(store.clone());
    let schedule = service
        .schedules
        .create(&service.book, TENANT, spec("*/5 * * * *", urls(), true))
        .await
        .unwrap();
    let due = schedule.next_firing.unwrap();

    // The firing stops while it writes its job's record...
    let firing = tokio::spawn({
        let service = service.clone();
        async move { service.schedules.fire_due(&service.book, due).await }
    });
    store.reached.notified().await;
    // ...the tenant asks for erasure, which may not finish before the firing does...
    let mut erasing = tokio::spawn({
        let service = service.clone();
        async move {
            service
                .schedules
                .erase_tenant(&service.book, TENANT)
                .await
                .unwrap()
        }
    });
    let early = tokio::time::timeout(Duration::from_millis(300), &mut erasing).await;
    assert!(early.is_err(), "the erasure ran in the middle of a firing");
    go_on.send(()).unwrap();
    assert_eq!(firing.await.unwrap(), 1);
    let erased = erasing.await.unwrap();
    assert_eq!((erased.schedules, erased.jobs), (1, 1));

    // ...and nothing is left: no schedule, no job, nothing to fire after a restart.
    assert!(service.schedules.list(TENANT).await.is_empty());
    assert!(service.book.list(TENANT, 10, None).await.jobs.is_empty());
    let stored = store
        .list(&Area::Schedules.of_tenant(TENANT))
        .await
        .unwrap();
    assert!(stored.is_empty(), "written back: {stored:?}");
    for record in store.list(&Area::Jobs.of_tenant(TENANT)).await.unwrap() {
        assert_eq!(
            store.get(&record.key).await.unwrap(),
            TOMBSTONE,
            "{}",
            record.key
        );
    }
    let restarted = new_service(store);
    assert_eq!(restarted.schedules.load().await.unwrap(), 0);
}
