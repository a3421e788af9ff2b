//! Outages of the real services around a running fleet: S3 gone for 30 s mid-job, a
//! worker draining while RabbitMQ restarts, and a drain that must not make the broker
//! push work nobody will start.
//! Tests named `broker_restart…` restart the shared broker: `make test` runs them alone.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::fleet::{
    Fleet, create_job, http_get, service_env, upload, wait_state, write_secrets,
};
use crate::common::private_s3::PrivateS3;
use crate::common::*;
use tagfleet_contracts::keys::job_results_prefix;
use tagfleet_io::queue::{RabbitOptions, RabbitQueue};
use tagfleet_io::{ObjectStore, Queue};

const TENANT: &str = "acme";

/// 44 real photos (4 distinct, hard-linked) and a keys folder with the tenant's key.
fn photos_and_keys(dir: &Path) -> (PathBuf, PathBuf) {
    let photos = dir.join("photos");
    let names = ["chelsea.png", "coffee.png", "rocket.jpg", "astronaut.png"];
    copy_photos(&photos, &names.map(|n| (n, n)));
    for i in 0..10 {
        for name in names {
            std::fs::hard_link(photos.join(name), photos.join(format!("{i}-{name}"))).unwrap();
        }
    }
    let keys = dir.join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    write_secrets(&keys, &[(TENANT, &"ab".repeat(32), None)]);
    (photos, keys)
}

/// The task queue of the fleet's model, as a test client sees it.
pub(crate) async fn task_queue(fleet: &Fleet) -> RabbitQueue {
    RabbitQueue::connect(RabbitOptions {
        url: fleet.queue.clone(),
        queue: fleet.task_queue(),
        // As `Fleet::queue_args` declares it.
        delivery_limit: 3,
        prefetch: 64,
        message_ttl: Some(tagfleet_contracts::retention::DEFAULT_RETENTION),
    })
    .await
    .unwrap()
}

/// A draining worker cancels its consumer first: the broker stops pushing messages it
/// would never start, which would each have cost a delivery when handed back at exit.
/// Every message left in the queue afterwards has never been delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_worker_leaves_the_messages_it_did_not_start_undelivered() {
    let dir = tempfile::tempdir().unwrap();
    let (photos, keys) = photos_and_keys(dir.path());
    let fleet = Fleet::new("amqp", &keys, &photos);
    let store = fleet.store().await;
    let job = fleet.submit(&photos, TENANT, &["--chunk-size", "2"]);
    let mut worker = fleet.worker(
        &dir.path().join("worker.log"),
        &["--max-batch", "1", "--max-tasks-in-flight", "4"],
    );
    worker.wait_ready().await;
    let prefix = job_results_prefix(TENANT, &job);
    fleet
        .wait_for_results(&store, TENANT, &job, 1, &worker)
        .await;
    worker.signal("TERM");
    let status = worker.wait_exit(Duration::from_secs(60)).await;
    assert!(status.success(), "{status}:\n{}", worker.logs());
    assert!(
        worker.logs().contains("stopped consuming"),
        "{}",
        worker.logs()
    );

    let queue = task_queue(&fleet).await;
    let written = store.list(&prefix).await.unwrap().len();
    let mut left = Vec::new();
    loop {
        let got = queue.receive(64, Duration::from_secs(2)).await.unwrap();
        if got.is_empty() {
            break;
        }
        left.extend(got);
    }
    assert_eq!(written + left.len(), 22, "every task is written or waiting");
    let delivered_before: Vec<u32> = left.iter().map(|d| d.attempt).filter(|a| *a > 1).collect();
    // A message pushed in the instant before the cancel may come back once.
    assert!(
        delivered_before.len() <= 1,
        "messages handed out during the drain and back unstarted: {delivered_before:?}"
    );
    for d in &left {
        queue.ack(d).await.unwrap();
    }
}

/// RabbitMQ restarts while a worker drains: the work in flight is written, its reports
/// wait for the broker instead of the tasks being redone, the worker exits 0, and a
/// second worker finishes the job: every image exactly once, nothing dead-lettered.
/// Restarts the shared broker: `make test` runs it alone, after the other tests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_during_a_drain_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (photos, keys) = photos_and_keys(dir.path());
    let fleet = Fleet::new("amqp", &keys, &photos);
    let store = fleet.store().await;
    let job = fleet.submit(&photos, TENANT, &["--chunk-size", "4"]);
    let mut first = fleet.worker(
        &dir.path().join("first.log"),
        &[
            "--max-batch",
            "1",
            "--max-tasks-in-flight",
            "2",
            "--drain-timeout-secs",
            "120",
        ],
    );
    first.wait_ready().await;
    fleet
        .wait_for_results(&store, TENANT, &job, 1, &first)
        .await;

    first.signal("TERM");
    let restart = std::process::Command::new(service_env("TAGFLEET_TEST_SERVICES_SCRIPT"))
        .args(["restart-rabbitmq"])
        .output()
        .unwrap();
    assert!(
        restart.status.success(),
        "{}",
        String::from_utf8_lossy(&restart.stderr)
    );
    let status = first.wait_exit(Duration::from_secs(150)).await;
    assert!(
        status.success(),
        "the drain finished: {status}\n{}",
        first.logs()
    );

    let mut second = fleet.worker(&dir.path().join("second.log"), &[]);
    second.wait_ready().await;
    let lines = fleet
        .wait_for_results(&store, TENANT, &job, 11, &second)
        .await;
    let mut images: Vec<&str> = lines.iter().map(|l| l["image"].as_str().unwrap()).collect();
    images.sort_unstable();
    let all = images.len();
    images.dedup();
    assert_eq!((all, images.len()), (44, 44), "every image exactly once");
    let queue = task_queue(&fleet).await;
    let dead = queue.options().dead_letter_queue();
    assert_eq!(
        queue.message_count(&dead).await.unwrap(),
        0,
        "nothing dead-lettered"
    );
}

/// SeaweedFS is stopped for 30 s in the middle of a job. The worker waits the outage out:
/// it says unready and `tagfleet_worker_store_up 0`, holds its messages instead of
/// spending their deliveries, and writes no transient read error as a result. When S3 is
/// back the job ends `succeeded` with every image counted and nothing dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_s3_outage_of_30_s_mid_job_is_waited_out_and_the_job_ends_whole() {
    const TOKEN: &str = "acme-token-5e1a";
    let dir = tempfile::tempdir().unwrap();
    let photos = dir.path().join("photos");
    let names = ["chelsea.png", "coffee.png", "rocket.jpg", "astronaut.png"];
    copy_photos(&photos, &names.map(|n| (n, n)));
    let keys = dir.path().join("keys");
    write_secrets(&keys, &[(TENANT, &"ab".repeat(32), Some(TOKEN))]);
    let mut s3 = PrivateS3::start_new().await;
    let fleet = Fleet {
        s3_endpoint: s3.endpoint(),
        ..Fleet::new("amqp", &keys, &photos)
    };
    let store = fleet.store().await;
    // 64 images from S3, in 16 tasks of 4.
    let source = upload(&store, &photos, "media/", 16).await;
    let mut scheduler = fleet.scheduler(&dir.path().join("scheduler.log"), &["--chunk-size", "4"]);
    scheduler.wait_ready().await;
    let id = create_job(
        &scheduler,
        TOKEN,
        json!({"source": {"kind": "s3_prefix", "uri": source}}),
    );
    let mut worker = fleet.worker(
        &dir.path().join("worker.log"),
        &["--max-batch", "1", "--max-tasks-in-flight", "2"],
    );
    worker.wait_ready().await;
    fleet
        .wait_for_results(&store, TENANT, &id, 1, &worker)
        .await;

    s3.stop();
    let stopped = Instant::now();
    let ready = || http_get(worker.port, "/readyz").map(|(code, _)| code);
    let store_up = || {
        http_get(worker.port, "/metrics")
            .and_then(|(_, text)| {
                text.lines()
                    .find(|l| l.starts_with("tagfleet_worker_store_up "))
                    .map(str::to_owned)
            })
            .unwrap_or_default()
    };
    while ready() != Some(503) {
        assert!(
            stopped.elapsed() < Duration::from_secs(25),
            "still ready with S3 down:\n{}",
            worker.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(store_up(), "tagfleet_worker_store_up 0");
    tokio::time::sleep(Duration::from_secs(30).saturating_sub(stopped.elapsed())).await;
    assert!(
        worker.child.try_wait().unwrap().is_none(),
        "the worker outlives the outage:\n{}",
        worker.logs()
    );
    s3.start().await;

    let job = wait_state(&scheduler, TOKEN, &id, &["final"], &[&scheduler, &worker]).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    let counts = &job["counts"];
    assert_eq!(
        [
            &counts["total"],
            &counts["done"],
            &counts["failed"],
            &counts["unfinished"]
        ],
        [64, 64, 0, 0],
        "{job}"
    );
    assert_eq!(ready(), Some(200), "ready again once S3 answers");
    assert_eq!(store_up(), "tagfleet_worker_store_up 1");
    let queue = task_queue(&fleet).await;
    let dead = queue.options().dead_letter_queue();
    assert_eq!(
        queue.message_count(&dead).await.unwrap(),
        0,
        "nothing dead-lettered"
    );
}
