//! Each model has its own task queue: the scheduler publishes a job's tasks to its model's
//! queue, and a worker receives only its own model's tasks. The tasks of a model no worker
//! runs yet wait in their queue, never delivered: no delivery spent, none dead-lettered.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tagfleet_contracts::TaskMessage;
use tagfleet_contracts::retention::DEFAULT_RETENTION;
use tagfleet_io::Queue;

use crate::common::copy_photos;
use crate::common::fleet::{
    Fleet, MODEL, Worker, api, create_job, http, service_env, upload, wait_state, write_secrets,
};

const TENANT: &str = "acme";
const TOKEN: &str = "acme-token-7c2e";
/// A model the fleet serves but none of its workers runs (yet).
const OTHER: &str = "other-model@2";

fn setup(dir: &Path) -> (PathBuf, PathBuf) {
    let photos = dir.join("photos");
    copy_photos(
        &photos,
        &[("chelsea.png", "chelsea.png"), ("rocket.jpg", "rocket.jpg")],
    );
    let keys = dir.join("keys");
    write_secrets(&keys, &[(TENANT, &"ab".repeat(32), Some(TOKEN))]);
    (photos, keys)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_a_worker_receives_only_its_models_tasks() {
    a_worker_receives_only_its_models_tasks("amqp").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_a_worker_receives_only_its_models_tasks() {
    a_worker_receives_only_its_models_tasks("sqs").await;
}

async fn a_worker_receives_only_its_models_tasks(kind: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (photos, keys) = setup(dir.path());
    let fleet = Fleet::new(kind, &keys, &photos);
    let store = fleet.store().await;
    let prefix = upload(&store, &photos, "media/", 1).await;
    let models = format!("{MODEL},{OTHER}");
    let mut scheduler = fleet.scheduler(
        &dir.path().join("scheduler.log"),
        &["--model-id", &models, "--chunk-size", "1"],
    );
    scheduler.wait_ready().await;
    // The other model's job first: on one shared queue its tasks would reach our worker
    // before ours, and come back from it.
    let source = json!({"kind": "s3_prefix", "uri": prefix});
    let other = create_job(&scheduler, TOKEN, json!({"source": source, "model": OTHER}));
    let ours = create_job(&scheduler, TOKEN, json!({"source": source}));
    let mut worker = fleet.worker(&dir.path().join("worker.log"), &[]);
    worker.wait_ready().await;
    let job = wait_state(&scheduler, TOKEN, &ours, &["final"], &[&scheduler, &worker]).await;
    assert_eq!(job["state"], "succeeded", "{job}");

    let (code, job) = api(
        scheduler.port,
        "GET",
        &format!("/v1/jobs/{other}"),
        Some(TOKEN),
        None,
    );
    assert_eq!((code, &job["state"]), (200, &json!("queued")), "{job}");
    wait_for_depth_metric(&scheduler, OTHER, 2).await;
    assert!(
        !worker.logs().contains("a task for another model"),
        "{}",
        worker.logs()
    );

    // Both tasks wait in the other model's queue, never delivered before.
    let queue = open(&fleet, kind, &fleet.task_queue_of(OTHER)).await;
    let depth = queue.depth().await.unwrap().unwrap();
    assert_eq!((depth.ready, depth.dead_lettered), (2, 0), "{depth:?}");
    let mut deliveries = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while deliveries.len() < 2 && Instant::now() < deadline {
        deliveries.extend(queue.receive(2, Duration::from_secs(1)).await.unwrap());
    }
    assert_eq!(deliveries.len(), 2);
    for delivery in &deliveries {
        let task = TaskMessage::from_json(&delivery.body).unwrap();
        assert_eq!(
            (task.model.as_str(), task.job_id.as_str()),
            (OTHER, other.as_str())
        );
        assert_eq!(
            delivery.attempt, 1,
            "a delivery was spent on {}",
            task.task_id
        );
    }
    // Our model's queue is empty: nothing of the other model was left there.
    let ours = open(&fleet, kind, &fleet.task_queue()).await;
    let depth = ours.depth().await.unwrap().unwrap();
    assert_eq!((depth.ready, depth.dead_lettered), (0, 0), "{depth:?}");
}

/// A worker told to expect another model id than its model has (the id its deployment
/// derived the KEDA trigger from) stops at start rather than read another queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_model_is_not_the_expected_one_does_not_start() {
    let dir = tempfile::tempdir().unwrap();
    let (photos, keys) = setup(dir.path());
    let fleet = Fleet::new("amqp", &keys, &photos);
    fleet.store().await;
    let mut worker = fleet.worker(
        &dir.path().join("worker.log"),
        &["--model-id", "efficientnet-lite0@2"],
    );
    let status = worker.wait_exit(Duration::from_secs(60)).await;
    assert!(!status.success());
    let logs = worker.logs();
    assert!(
        logs.contains("--model-id efficientnet-lite0@2") && logs.contains(MODEL),
        "{logs}"
    );
}

/// A queue of the fleet by name, declared as the fleet's processes declare it.
async fn open(fleet: &Fleet, kind: &str, name: &str) -> Arc<dyn Queue> {
    use tagfleet_io::aws::Endpoint;
    use tagfleet_io::queue::{RabbitOptions, RabbitQueue, SqsOptions, SqsQueue};
    if kind == "amqp" {
        let queue = RabbitQueue::connect(RabbitOptions {
            url: fleet.queue.clone(),
            queue: name.to_owned(),
            delivery_limit: 3,
            prefetch: 2,
            message_ttl: Some(DEFAULT_RETENTION),
        })
        .await
        .unwrap();
        return Arc::new(queue);
    }
    let queue = SqsQueue::connect(SqsOptions {
        queue: name.to_owned(),
        endpoint: Endpoint {
            url: Some(service_env("TAGFLEET_TEST_SQS_ENDPOINT")),
            region: None,
        },
        max_receive_count: 3,
        visibility_timeout: Duration::from_secs(5),
        message_retention: Some(DEFAULT_RETENTION),
    })
    .await
    .unwrap();
    Arc::new(queue)
}

/// Waits until the scheduler's /metrics says `tasks` tasks wait in `model`'s queue (it
/// samples the queues every 10 s).
async fn wait_for_depth_metric(scheduler: &Worker, model: &str, tasks: u64) {
    let want =
        format!("tagfleet_scheduler_queue_messages{{model=\"{model}\",queue=\"tasks\"}} {tasks}");
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let (_, text) = http(scheduler.metrics_port, "GET", "/metrics", None, None).unwrap();
        if text.lines().any(|l| l == want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no `{want}` in /metrics:\n{}",
            text.lines()
                .filter(|l| l.starts_with("tagfleet_scheduler_queue_messages"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The upgrade: tasks still waiting in the one queue of older versions (named as the base)
/// move to their models' queues when the scheduler runs with --drain-legacy-queue; a task
/// of a model the fleet does not serve is dead-lettered there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_old_shared_queue_is_drained_into_each_models_queue() {
    let dir = tempfile::tempdir().unwrap();
    let (photos, keys) = setup(dir.path());
    let fleet = Fleet::new("amqp", &keys, &photos);
    fleet.store().await;
    let legacy = open(&fleet, "amqp", &fleet.queue_name).await;
    let task = |model: &str, n: u32| {
        json!({
            "v": 1, "job_id": "before-the-upgrade", "task_id": format!("t{n:06}"),
            "tenant": TENANT, "analyses": ["tags"], "model": model,
            "created_at": chrono::Utc::now(), "items": [{"ref": "s3://somewhere/x.jpg"}],
        })
        .to_string()
        .into_bytes()
    };
    legacy
        .publish_batch(vec![
            task(MODEL, 1),
            task(OTHER, 2),
            task("gone@1", 3),
            task(MODEL, 4),
        ])
        .await
        .unwrap();
    let models = format!("{MODEL},{OTHER}");
    let mut scheduler = fleet.scheduler(
        &dir.path().join("scheduler.log"),
        &["--model-id", &models, "--drain-legacy-queue"],
    );
    scheduler.wait_ready().await;
    let ours = open(&fleet, "amqp", &fleet.task_queue()).await;
    let other = open(&fleet, "amqp", &fleet.task_queue_of(OTHER)).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let depth = |q: Arc<dyn Queue>| async move {
            let d = q.depth().await.unwrap().unwrap();
            (d.ready, d.dead_lettered)
        };
        let now = (
            depth(ours.clone()).await,
            depth(other.clone()).await,
            depth(legacy.clone()).await,
        );
        if now == ((2, 0), (1, 0), (0, 1)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "(ready, dead-lettered) of ours, the other's, the old: {now:?}\n{}",
            scheduler.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
