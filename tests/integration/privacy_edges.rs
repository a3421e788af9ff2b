//! The privacy promises at the fleet's edges, against the real services: tasks of expired
//! or erased jobs never run, queues keep refs no longer than the retention, deliver-once
//! results go to one read only, and a bucket that keeps deleted data is refused.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::common::fleet::{Fleet, Worker, create_job, http, http_get, service_env};
use crate::common::fleet::{upload, wait_state, write_secrets};
use crate::common::*;
use serde_json::{Value, json};
use tagfleet_contracts::keys::{Key, job_results_prefix};
use tagfleet_io::{ObjectStore, Queue};

const ACME: &str = "acme";
const ACME_TOKEN: &str = "acme-token-5e21";
/// What the scheduler's erasure and `erase --store` leave of a job.
const TOMBSTONE: &str = r#"{"state":"cancelled","erased":true}"#;

fn setup(dir: &Path) -> (PathBuf, PathBuf) {
    let photos = dir.join("photos");
    copy_photos(
        &photos,
        &[
            ("chelsea.png", "chelsea.png"),
            ("coffee.png", "coffee.png"),
            ("rocket.jpg", "rocket.jpg"),
        ],
    );
    let keys = dir.join("keys");
    write_secrets(&keys, &[(ACME, &"ab".repeat(32), Some(ACME_TOKEN))]);
    (photos, keys)
}

/// A task message as it travels, for a job of acme's, created `age_secs` ago (`None`:
/// written before messages carried a creation time).
fn task(job: &str, photos: &Path, age_secs: Option<i64>) -> Vec<u8> {
    let mut msg = json!({
        "v": 1, "job_id": job, "task_id": "t000001", "tenant": ACME,
        "analyses": ["tags"], "model": "efficientnet-lite0@1",
        "items": [{"ref": format!("file://{}/chelsea.png", photos.display())}],
    });
    if let Some(age) = age_secs {
        msg["created_at"] = json!(chrono::Utc::now() - chrono::Duration::seconds(age));
    }
    msg.to_string().into_bytes()
}

/// The value of `tagfleet_worker_messages_total{result="…"}` on a worker's /metrics.
fn settled(worker: &Worker, result: &str) -> u64 {
    let (_, text) = http_get(worker.port, "/metrics").expect("the worker serves /metrics");
    let series = format!("tagfleet_worker_messages_total{{result=\"{result}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .map_or(0, |v| v.trim().parse().unwrap())
}

fn tagfleet(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_tagfleet"))
        .args(args)
        .env_remove("TAGFLEET_LOG")
        .output()
        .unwrap()
}

/// `erase --store` leaves tombstones, so a queued task of an erased job is skipped; a task
/// older than the retention, or of unknown age, whose job the store does not know (its
/// record expired and was swept) is refused unprocessed, acked and counted, not
/// dead-lettered; `submit` straight to the queue still runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_of_expired_or_erased_jobs_never_run() {
    let dir = tempfile::tempdir().unwrap();
    let (photos, keys) = setup(dir.path());
    let fleet = Fleet::new("amqp", &keys, &photos);
    let store = fleet.store().await;

    // A job of acme's as a scheduler left it, erased with no scheduler running.
    let erased = "erased1";
    for (key, body) in [
        (Key::job(ACME, erased), r#"{"v":1,"state":"running"}"#),
        (Key::job_state(ACME, erased), r#"{"state":"running"}"#),
        (Key::result(ACME, erased, "t000001"), "{}\n"),
    ] {
        store
            .put(&key.to_string(), body.as_bytes().to_vec())
            .await
            .unwrap();
    }
    let out = tagfleet(&[
        "erase",
        "--tenant",
        ACME,
        "--store",
        &format!("s3://{}/fleet", fleet.bucket),
        "--s3-endpoint",
        &service_env("TAGFLEET_TEST_S3_ENDPOINT"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for key in [Key::job(ACME, erased), Key::job_state(ACME, erased)] {
        let body = store.get(&key.to_string()).await.unwrap();
        assert_eq!(String::from_utf8(body).unwrap(), TOMBSTONE, "{key}");
    }
    assert_eq!(
        store.list(&job_results_prefix(ACME, erased)).await.unwrap(),
        vec![]
    );

    let retention = ["--retention-hours", "1"];
    let mut worker = fleet.worker(
        &dir.path().join("worker.log"),
        &[retention[0], retention[1], "--job-check-interval-ms", "200"],
    );
    worker.wait_ready().await;
    let queue = tagfleet_io::queue::RabbitQueue::connect(tagfleet_io::queue::RabbitOptions {
        url: fleet.queue.clone(),
        queue: fleet.task_queue(),
        delivery_limit: 3,
        prefetch: 1,
        message_ttl: Some(Duration::from_secs(3600)),
    })
    .await
    .unwrap();
    let refused = [
        task(erased, &photos, Some(5)),
        task("old1", &photos, Some(2 * 3600)),
        task("legacy1", &photos, None),
    ];
    queue.publish_batch(refused.to_vec()).await.unwrap();
    // Behind them in the queue: a job published straight to it, with no record.
    let fresh = fleet.submit(&photos, ACME, &retention);
    let lines = fleet
        .wait_for_results(&store, ACME, &fresh, 1, &worker)
        .await;
    assert_eq!(lines.len(), 3, "{lines:?}");

    let deadline = Instant::now() + Duration::from_secs(20);
    while (settled(&worker, "skipped"), settled(&worker, "expired")) != (1, 2) {
        assert!(
            Instant::now() < deadline,
            "skipped {} and expired {}:\n{}",
            settled(&worker, "skipped"),
            settled(&worker, "expired"),
            worker.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for job in [erased, "old1", "legacy1"] {
        assert_eq!(
            store.list(&job_results_prefix(ACME, job)).await.unwrap(),
            vec![],
            "{job} ran"
        );
    }
    let dlq = queue.options().dead_letter_queue();
    assert_eq!(
        queue.message_count(&dlq).await.unwrap(),
        0,
        "acked, not dead-lettered"
    );
    assert_eq!(queue.message_count(&fleet.task_queue()).await.unwrap(), 0);
}

/// The arguments RabbitMQ holds for `queue`, from its management API.
async fn rabbit_arguments(queue: &str) -> Value {
    let url = format!(
        "{}/api/queues/%2f/{queue}",
        service_env("TAGFLEET_TEST_RABBITMQ_MGMT")
    );
    let answer: Value = reqwest::Client::new()
        .get(&url)
        .basic_auth("guest", Some("guest"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    answer["arguments"].clone()
}

/// Both dead-letter queues (tasks and progress) drop what they hold after the retention
/// the processes run with, and a task nobody takes leaves the task queue after as long.
/// An existing dead-letter queue declared without the TTL (by an older version) stops the
/// process with an error that names it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_keeps_messages_no_longer_than_the_retention() {
    use tagfleet_io::queue::{RabbitOptions, RabbitQueue};
    let dir = tempfile::tempdir().unwrap();
    let (photos, keys) = setup(dir.path());
    let fleet = Fleet::new("amqp", &keys, &photos);
    fleet.store().await;
    let mut scheduler = fleet.scheduler(
        &dir.path().join("scheduler.log"),
        &["--retention-secs", "3"],
    );
    scheduler.wait_ready().await;
    for queue in [
        format!("{}.dlq", fleet.task_queue()),
        format!("{}.progress.dlq", fleet.queue_name),
    ] {
        let args = rabbit_arguments(&queue).await;
        assert_eq!(args["x-message-ttl"], 3000, "{queue}: {args}");
    }

    let options = RabbitOptions {
        url: fleet.queue.clone(),
        queue: fleet.task_queue(),
        delivery_limit: 3,
        prefetch: 1,
        message_ttl: Some(Duration::from_secs(3)),
    };
    let consumer = RabbitQueue::connect(options.clone()).await.unwrap();
    consumer
        .publish(task("j1", &photos, Some(0)))
        .await
        .unwrap();
    let delivery = consumer
        .receive(1, Duration::from_secs(5))
        .await
        .unwrap()
        .pop()
        .expect("the task comes back");
    consumer.nack(&delivery, false).await.unwrap();
    drop(consumer);
    // Left alone in the task queue (no consumer): it expires there, then in the
    // dead-letter queue.
    let queue = RabbitQueue::connect(options).await.unwrap();
    let dlq = queue.options().dead_letter_queue();
    queue.publish(task("j2", &photos, Some(0))).await.unwrap();
    let (mut seen_dead, mut seen_waiting) = (0, 0);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let waiting = queue.message_count(&fleet.task_queue()).await.unwrap();
        let dead = queue.message_count(&dlq).await.unwrap();
        seen_dead = seen_dead.max(dead);
        seen_waiting = seen_waiting.max(waiting);
        if waiting + dead == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{waiting} waiting, {dead} dead-lettered after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        seen_dead >= 1 && seen_waiting == 1,
        "{seen_dead} {seen_waiting}"
    );
    drop(scheduler);

    // A dead-letter queue from before, without a TTL: the scheduler says what to do.
    let upgrade = Fleet::new("amqp", &keys, &photos);
    let old = &upgrade.task_queue();
    let before = RabbitQueue::connect(RabbitOptions {
        url: fleet.queue.clone(),
        queue: old.clone(),
        delivery_limit: 3,
        prefetch: 1,
        message_ttl: None,
    })
    .await
    .unwrap();
    let mut upgraded = upgrade.scheduler(&dir.path().join("upgrade.log"), &[]);
    let status = upgraded.wait_exit(Duration::from_secs(30)).await;
    assert!(!status.success());
    let logs = upgraded.logs();
    assert!(
        logs.contains(&format!("queue {old}.dlq")) && logs.contains("delete_queue"),
        "{logs}"
    );
    before.delete().await.unwrap();
    queue.delete().await.unwrap();
}

/// SQS keeps a message in the task queue and its dead-letter queue (4 days by default)
/// no longer than the retention, on the progress queues too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_queues_keep_messages_no_longer_than_the_retention() {
    use aws_sdk_sqs::types::QueueAttributeName;
    let dir = tempfile::tempdir().unwrap();
    let (photos, keys) = setup(dir.path());
    let fleet = Fleet::new("sqs", &keys, &photos);
    fleet.store().await;
    let mut scheduler = fleet.scheduler(
        &dir.path().join("scheduler.log"),
        &["--retention-secs", "300"],
    );
    scheduler.wait_ready().await;
    let endpoint = tagfleet_io::aws::Endpoint {
        url: Some(service_env("TAGFLEET_TEST_SQS_ENDPOINT")),
        region: None,
    };
    let sqs = aws_sdk_sqs::Client::new(&tagfleet_io::aws::sdk_config(&endpoint).await);
    let name = &fleet.queue_name;
    let tasks = fleet.task_queue();
    for queue in [
        tasks.clone(),
        format!("{tasks}-dlq"),
        format!("{name}-progress"),
        format!("{name}-progress-dlq"),
    ] {
        let url = sqs
            .get_queue_url()
            .queue_name(&queue)
            .send()
            .await
            .unwrap()
            .queue_url
            .unwrap();
        let attributes = sqs
            .get_queue_attributes()
            .queue_url(&url)
            .attribute_names(QueueAttributeName::MessageRetentionPeriod)
            .send()
            .await
            .unwrap()
            .attributes
            .unwrap_or_default();
        assert_eq!(
            attributes
                .get(&QueueAttributeName::MessageRetentionPeriod)
                .map(String::as_str),
            Some("300"),
            "{queue}"
        );
    }
}

/// With `retain: false` the results go to exactly one read, even when many arrive at
/// once: the others are told why they get nothing, and the results are deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliver_once_results_go_to_one_of_many_concurrent_reads() {
    let dir = tempfile::tempdir().unwrap();
    let (photos, keys) = setup(dir.path());
    let fleet = Fleet::new("amqp", &keys, &photos);
    let store = fleet.store().await;
    // Many small result objects: a read takes a while, and reads overlap.
    let prefix = upload(&store, &photos, "private/", 6).await;
    let mut scheduler = fleet.scheduler(&dir.path().join("scheduler.log"), &["--chunk-size", "1"]);
    let mut worker = fleet.worker(&dir.path().join("worker.log"), &[]);
    scheduler.wait_ready().await;
    worker.wait_ready().await;
    let id = create_job(
        &scheduler,
        ACME_TOKEN,
        json!({"source": {"kind": "s3_prefix", "uri": prefix}, "options": {"retain": false}}),
    );
    wait_state(
        &scheduler,
        ACME_TOKEN,
        &id,
        &["succeeded"],
        &[&scheduler, &worker],
    )
    .await;
    assert_eq!(
        store
            .list(&job_results_prefix(ACME, &id))
            .await
            .unwrap()
            .len(),
        18
    );

    let path = format!("/v1/jobs/{id}/results");
    let start = std::sync::Arc::new(std::sync::Barrier::new(8));
    let reads: Vec<_> = (0..8)
        .map(|_| {
            let (start, path, port) = (start.clone(), path.clone(), scheduler.port);
            std::thread::spawn(move || {
                start.wait();
                http(port, "GET", &path, Some(ACME_TOKEN), None).expect("an answer")
            })
        })
        .collect();
    let answers: Vec<(u16, String)> = reads.into_iter().map(|r| r.join().unwrap()).collect();
    let summary: Vec<(u16, usize)> = answers
        .iter()
        .map(|(c, b)| (*c, b.lines().count()))
        .collect();
    let served: Vec<&(u16, String)> = answers.iter().filter(|(code, _)| *code == 200).collect();
    assert_eq!(served.len(), 1, "(status, lines) of each read: {summary:?}");
    assert_eq!(served[0].1.lines().count(), 18);
    for (code, body) in answers.iter().filter(|(code, _)| *code != 200) {
        match code {
            409 => assert!(body.contains("another request is reading"), "{body}"),
            410 => assert!(body.contains("read once"), "{body}"),
            _ => panic!("{code}: {body}"),
        }
    }
    assert_eq!(
        store.list(&job_results_prefix(ACME, &id)).await.unwrap(),
        vec![]
    );
    let (code, body) = http(scheduler.port, "GET", &path, Some(ACME_TOKEN), None).unwrap();
    assert_eq!(code, 410, "{body}");
}

/// A results bucket with versioning on would keep every deleted result as a noncurrent
/// version: the scheduler refuses it at start-up and says what to do. Suspended, it is
/// taken, and our lifecycle rules (still two) also expire noncurrent versions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_versioned_results_bucket_is_refused_at_start_up() {
    use aws_sdk_s3::types::{BucketVersioningStatus, VersioningConfiguration};
    let dir = tempfile::tempdir().unwrap();
    let (photos, keys) = setup(dir.path());
    let fleet = Fleet::new("amqp", &keys, &photos);
    let store = fleet.store().await;
    let versioning = |status: BucketVersioningStatus| {
        store
            .client()
            .put_bucket_versioning()
            .bucket(store.bucket())
            .versioning_configuration(VersioningConfiguration::builder().status(status).build())
            .send()
    };
    versioning(BucketVersioningStatus::Enabled).await.unwrap();
    let log = dir.path().join("scheduler.log");
    let mut refused = fleet.scheduler(&log, &[]);
    let status = refused.wait_exit(Duration::from_secs(30)).await;
    assert!(!status.success());
    let logs = refused.logs();
    assert!(
        logs.contains(&format!("bucket {} has versioning enabled", fleet.bucket))
            && logs.contains("Suspend"),
        "{logs}"
    );

    versioning(BucketVersioningStatus::Suspended).await.unwrap();
    let mut scheduler = fleet.scheduler(&log, &[]);
    scheduler.wait_ready().await;
    let rules = store
        .client()
        .get_bucket_lifecycle_configuration()
        .bucket(store.bucket())
        .send()
        .await
        .unwrap()
        .rules
        .unwrap_or_default();
    let ours: Vec<_> = rules
        .iter()
        .filter(|r| r.id().is_some_and(|id| id.starts_with("tagfleet-expire-")))
        .collect();
    assert_eq!(ours.len(), 2, "{rules:?}");
    for rule in ours {
        assert_eq!(
            rule.noncurrent_version_expiration()
                .and_then(|e| e.noncurrent_days()),
            Some(1),
            "{rule:?}"
        );
    }
}
