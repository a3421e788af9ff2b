//! The fleet against real services: `tagfleet submit` publishes to RabbitMQ or SQS,
//! `tagfleet worker` processes and writes to S3 (SeaweedFS). The embedded mode is the
//! reference every backend must agree with.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use crate::common;
use crate::common::fleet::{Fleet, http_get, write_secrets};
use crate::common::*;
use aws_sdk_s3::types::ServerSideEncryption;
use tagfleet_contracts::keys::job_results_prefix;
use tagfleet_io::ObjectStore;

const TENANT: &str = "acme";

/// Every analysis that reads the model or the pixels, with options off their defaults:
/// the fleet must agree with the embedded mode on all of them.
const ANALYSES: [&str; 5] = [
    "--analyses",
    "tags,categories,colors,crops",
    "--parents",
    "--crops",
    "1:1,16:9",
];

/// A folder of real photos plus one broken file, and a keys folder with the tenant's key.
fn setup(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let photos = dir.join("photos");
    copy_photos(
        &photos,
        &[
            ("chelsea.png", "chelsea.png"),
            ("coffee.png", "coffee.png"),
            ("rocket.jpg", "rocket.jpg"),
            ("astronaut.png", "astronaut.png"),
        ],
    );
    std::fs::write(
        photos.join("broken.jpg"),
        b"\xff\xd8\xff\xe0 not really a jpeg",
    )
    .unwrap();
    let keys = dir.join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    std::fs::write(
        keys.join(format!("{TENANT}.key")),
        format!("{}\n", "ab".repeat(32)),
    )
    .unwrap();
    write_secrets(&keys, &[(TENANT, &"ab".repeat(32), None)]);
    (photos, keys)
}

/// pseudonym -> (status, what the analyses found) of the embedded mode on `photos` with
/// the tenant's key.
fn embedded(photos: &Path, keys: &Path, out: &Path) -> BTreeMap<String, (String, Vec<String>)> {
    let mut args = vec![
        "run",
        photos.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--format",
        "json",
    ];
    args.extend(ANALYSES);
    let run = tagfleet(&args, &keys.join(format!("{TENANT}.key")));
    assert_eq!(
        run.status.code(),
        Some(3),
        "one broken file: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    summarise(&json_lines(&run))
}

/// Per image: its status and what each analysis found, confidences left out (a batch of
/// other images may move them in the last digits).
fn summarise(lines: &[serde_json::Value]) -> BTreeMap<String, (String, Vec<String>)> {
    let strings = |list: &serde_json::Value, field: &str| -> Vec<String> {
        list.as_array()
            .into_iter()
            .flatten()
            .map(|item| item[field].to_string())
            .collect()
    };
    lines
        .iter()
        .map(|l| {
            let mut found = strings(&l["tags"], "label");
            found.extend(strings(&l["categories"], "name"));
            for list in ["image", "background", "foreground"] {
                found.extend(strings(&l["colors"][list], "hex"));
            }
            found.extend(strings(&l["crops"], "box"));
            (
                l["image"].as_str().unwrap().to_owned(),
                (l["status"].as_str().unwrap().to_owned(), found),
            )
        })
        .collect()
}

/// The value of the sample of `name` whose labels include all of `labels`.
fn metric(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (series_name, rest) = series.split_once('{').unwrap_or((series, ""));
            (series_name == name && labels.iter().all(|l| rest.contains(l)))
                .then(|| value.parse().ok())?
        })
}

async fn same_tags_as_embedded(kind: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (photos, keys) = setup(dir.path());
    let reference = embedded(&photos, &keys, &dir.path().join("embedded"));

    let fleet = Fleet::new(kind, &keys, &photos);
    let store = fleet.store().await;
    let mut submit = vec!["--chunk-size", "2"];
    submit.extend(ANALYSES);
    let job = fleet.submit(&photos, TENANT, &submit);
    let mut worker = fleet.worker(&dir.path().join("worker.log"), &[]);
    worker.wait_ready().await;
    let lines = fleet
        .wait_for_results(&store, TENANT, &job, 3, &worker)
        .await;

    assert_eq!(
        summarise(&lines),
        reference,
        "{kind} + S3 must give the embedded mode's results"
    );
    let broken: Vec<_> = lines.iter().filter(|l| l["status"] == "error").collect();
    assert_eq!(
        broken.len(),
        1,
        "the broken file is an error record, not a redelivery"
    );
    for line in lines.iter().filter(|l| l["status"] == "ok") {
        assert!(
            line["tags"]
                .as_array()
                .unwrap()
                .iter()
                .any(|t| t["parent"] == true),
            "{line}"
        );
        assert!(line["categories"].is_array(), "{line}");
        assert!(
            !line["colors"]["image"].as_array().unwrap().is_empty(),
            "{line}"
        );
        let crops = line["crops"].as_array().unwrap();
        assert_eq!(crops.len(), 2, "{line}");
        assert!(
            crops.iter().all(|c| c["box"]["width"].as_u64() > Some(0)),
            "{line}"
        );
    }

    // Every result object was written with server-side encryption.
    let objects = store.list(&job_results_prefix(TENANT, &job)).await.unwrap();
    assert_eq!(objects.len(), 3);
    for o in &objects {
        let head = store
            .client()
            .head_object()
            .bucket(store.bucket())
            .key(store.object_key(&o.key))
            .send()
            .await
            .unwrap();
        assert_eq!(
            head.server_side_encryption(),
            Some(&ServerSideEncryption::Aes256),
            "{}",
            o.key
        );
    }
    // The worker put the one-day lifecycle rule on the bucket at start-up.
    let rules = store
        .client()
        .get_bucket_lifecycle_configuration()
        .bucket(store.bucket())
        .send()
        .await
        .unwrap();
    let results_rule = rules
        .rules()
        .iter()
        .find(|r| r.filter().and_then(|f| f.prefix()) == Some("fleet/results/"));
    assert_eq!(
        results_rule
            .and_then(|r| r.expiration())
            .and_then(|e| e.days()),
        Some(1),
        "{rules:?}"
    );

    assert_eq!(http_get(worker.port, "/healthz").map(|r| r.0), Some(200));
    // A message is acked just after its result is written: wait (bounded) for the last.
    let acked = |metrics: &str| {
        metric(
            metrics,
            "tagfleet_worker_messages_total",
            &["result=\"acked\""],
        )
    };
    let mut metrics = String::new();
    for _ in 0..100 {
        metrics = http_get(worker.metrics_port, "/metrics").unwrap().1;
        if acked(&metrics) == Some(3.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The worker starts with the default CPU executors: one per core.
    let cpu_executors = std::thread::available_parallelism().map_or(1, |n| n.get());
    let model = "model=\"efficientnet-lite0@1\"";
    assert_eq!(
        metric(
            &metrics,
            "tagfleet_worker_images_total",
            &[model, "outcome=\"ok\""]
        ),
        Some(4.0),
        "{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            "tagfleet_worker_images_total",
            &[model, "outcome=\"decode\""]
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &metrics,
            "tagfleet_worker_messages_total",
            &["result=\"acked\""]
        ),
        Some(3.0)
    );
    assert_eq!(
        metric(&metrics, "tagfleet_worker_images_in_flight", &[]),
        Some(0.0)
    );
    assert_eq!(
        metric(
            &metrics,
            "tagfleet_worker_executor_info",
            &["device=\"cpu\"", "kind=\"cpu\"", "preprocess=\"cpu\""]
        ),
        Some(cpu_executors as f64),
        "one CPU executor per core by default"
    );
    assert!(
        metric(
            &metrics,
            "tagfleet_worker_executor_busy_seconds_total",
            &["device=\"cpu\""]
        )
        .unwrap()
            > 0.0
    );
    assert!(metric(&metrics, "tagfleet_worker_batch_size_images_count", &[]).unwrap() >= 1.0);
    for stage in [
        "fetch",
        "decode",
        "preprocess",
        "queue",
        "inference",
        "postprocess",
        "write",
    ] {
        let label = format!("stage=\"{stage}\"");
        let count = metric(
            &metrics,
            "tagfleet_worker_stage_duration_seconds_count",
            &[&label],
        );
        assert!(
            count.unwrap_or(0.0) > 0.0,
            "stage {stage} not measured:\n{metrics}"
        );
    }
    for analysis in ["tags", "categories", "colors", "crops"] {
        let label = format!("analysis=\"{analysis}\"");
        let count = metric(
            &metrics,
            "tagfleet_worker_analysis_duration_seconds_count",
            &[&label],
        );
        assert_eq!(count, Some(4.0), "{analysis}, once per photo:\n{metrics}");
    }
    assert!(
        metric(&metrics, "process_resident_memory_bytes", &[]).unwrap_or(0.0) > 0.0,
        "{metrics}"
    );

    worker.signal("TERM");
    let status = worker.wait_exit(Duration::from_secs(30)).await;
    assert!(
        status.success(),
        "SIGTERM exits 0: {status}\n{}",
        worker.logs()
    );
    let logs = worker.logs();
    for name in ["chelsea", "coffee", "broken.jpg", photos.to_str().unwrap()] {
        assert!(!logs.contains(name), "{name:?} in worker logs:\n{logs}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_and_s3_give_the_embedded_results() {
    same_tags_as_embedded("amqp").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_and_s3_give_the_embedded_results() {
    same_tags_as_embedded("sqs").await;
}

/// Drops the broken file and adds ten more names for each photo: 44 images, 11 tasks of 4.
fn forty_four_photos(photos: &Path) {
    std::fs::remove_file(photos.join("broken.jpg")).unwrap();
    for i in 0..10 {
        for name in ["chelsea.png", "coffee.png", "rocket.jpg", "astronaut.png"] {
            std::fs::hard_link(photos.join(name), photos.join(format!("{i}-{name}"))).unwrap();
        }
    }
}

async fn wait_for_first_result(
    store: &tagfleet_io::store::S3Store,
    prefix: &str,
    worker: &common::fleet::Worker,
) {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while store.list(prefix).await.unwrap().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "no first result:\n{}",
            worker.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A worker killed with SIGKILL mid-job: a second worker finishes it, and every image has
/// exactly one result line.
async fn survives(kind: &str, signal: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (photos, keys) = setup(dir.path());
    forty_four_photos(&photos);
    let fleet = Fleet::new(kind, &keys, &photos);
    let store = fleet.store().await;
    let job = fleet.submit(&photos, TENANT, &["--chunk-size", "4"]);
    let slow = [
        "--max-batch",
        "1",
        "--max-tasks-in-flight",
        "2",
        "--drain-timeout-secs",
        "20",
    ];
    let mut first = fleet.worker(&dir.path().join("first.log"), &slow);
    first.wait_ready().await;
    let prefix = job_results_prefix(TENANT, &job);
    wait_for_first_result(&store, &prefix, &first).await;
    first.signal(signal);
    let status = first.wait_exit(Duration::from_secs(60)).await;
    if signal == "TERM" {
        assert!(
            status.success(),
            "a drained worker exits 0: {status}\n{}",
            first.logs()
        );
    }
    let done_by_first = store.list(&prefix).await.unwrap().len();
    assert!(
        done_by_first < 11,
        "the first worker was stopped mid-job ({done_by_first} of 11 tasks)"
    );

    let mut second = fleet.worker(&dir.path().join("second.log"), &[]);
    second.wait_ready().await;
    let lines = fleet
        .wait_for_results(&store, TENANT, &job, 11, &second)
        .await;
    let mut images: Vec<&str> = lines.iter().map(|l| l["image"].as_str().unwrap()).collect();
    assert_eq!(
        images.len(),
        44,
        "one line per image, none lost, none doubled"
    );
    images.sort_unstable();
    images.dedup();
    assert_eq!(images.len(), 44, "every image exactly once");
    assert!(lines.iter().all(|l| l["status"] == "ok"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_rabbitmq_worker_loses_nothing() {
    survives("amqp", "KILL").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_sqs_worker_loses_nothing() {
    survives("sqs", "KILL").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_or_returns_what_is_in_flight() {
    survives("amqp", "TERM").await;
}

/// A message that can never succeed, and one that is not a task at all.
fn poison_messages(queue_model: &str) -> Vec<Vec<u8>> {
    let wrong_model = serde_json::json!({
        "v": 1, "job_id": "poison", "task_id": "t000001", "tenant": TENANT,
        "analyses": ["tags"], "model": queue_model, "items": [{"ref": "file:///nowhere/x.jpg"}]
    });
    vec![
        wrong_model.to_string().into_bytes(),
        b"{\"not\": \"a task\"}".to_vec(),
    ]
}

async fn wait_for_dead_letters(count: impl AsyncFn() -> u64, worker: &common::fleet::Worker) {
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let n = count().await;
        if n >= 2 {
            assert_eq!(n, 2);
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{n} of 2 messages dead-lettered:\n{}",
            worker.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_dead_letters_poison_messages_after_the_delivery_limit() {
    use tagfleet_io::Queue;
    use tagfleet_io::queue::{RabbitOptions, RabbitQueue};
    let dir = tempfile::tempdir().unwrap();
    let (photos, keys) = setup(dir.path());
    let fleet = Fleet::new("amqp", &keys, &photos);
    let queue = RabbitQueue::connect(RabbitOptions {
        url: fleet.queue.clone(),
        queue: fleet.task_queue(),
        delivery_limit: 3,
        prefetch: 1,
        // The worker's default retention: RabbitMQ refuses another dead-letter TTL.
        message_ttl: Some(tagfleet_contracts::retention::DEFAULT_RETENTION),
    })
    .await
    .unwrap();
    for body in poison_messages("another-model@9") {
        queue.publish(body).await.unwrap();
    }
    let mut worker = fleet.worker(&dir.path().join("worker.log"), &[]);
    worker.wait_ready().await;
    let dlq = queue.options().dead_letter_queue();
    wait_for_dead_letters(
        async || u64::from(queue.message_count(&dlq).await.unwrap()),
        &worker,
    )
    .await;
    assert_eq!(queue.message_count(&fleet.task_queue()).await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_dead_letters_poison_messages_after_the_receive_limit() {
    use tagfleet_io::Queue;
    use tagfleet_io::aws::Endpoint;
    use tagfleet_io::queue::{SqsOptions, SqsQueue};
    let dir = tempfile::tempdir().unwrap();
    let (photos, keys) = setup(dir.path());
    let fleet = Fleet::new("sqs", &keys, &photos);
    let queue = SqsQueue::connect(SqsOptions {
        queue: fleet.task_queue(),
        endpoint: Endpoint {
            url: Some(common::fleet::service_env("TAGFLEET_TEST_SQS_ENDPOINT")),
            region: None,
        },
        max_receive_count: 3,
        visibility_timeout: Duration::from_secs(5),
        message_retention: Some(tagfleet_contracts::retention::DEFAULT_RETENTION),
    })
    .await
    .unwrap();
    queue
        .publish_batch(poison_messages("another-model@9"))
        .await
        .unwrap();
    let mut worker = fleet.worker(&dir.path().join("worker.log"), &[]);
    worker.wait_ready().await;
    let dlq = queue.dead_letter_url().to_owned();
    wait_for_dead_letters(
        async || queue.approximate_count(&dlq).await.unwrap(),
        &worker,
    )
    .await;
}

/// Restarts the shared broker: `make test` runs it alone, after the other tests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_mid_job_the_worker_reconnects_and_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let (photos, keys) = setup(dir.path());
    forty_four_photos(&photos);
    let fleet = Fleet::new("amqp", &keys, &photos);
    let store = fleet.store().await;
    let job = fleet.submit(&photos, TENANT, &["--chunk-size", "4"]);
    let mut worker = fleet.worker(
        &dir.path().join("worker.log"),
        &["--max-batch", "1", "--max-tasks-in-flight", "1"],
    );
    worker.wait_ready().await;
    let prefix = job_results_prefix(TENANT, &job);
    wait_for_first_result(&store, &prefix, &worker).await;

    let script = common::fleet::service_env("TAGFLEET_TEST_SERVICES_SCRIPT");
    let restart = std::process::Command::new(&script)
        .args(["restart-rabbitmq"])
        .output()
        .unwrap();
    assert!(
        restart.status.success(),
        "{}",
        String::from_utf8_lossy(&restart.stderr)
    );
    assert!(
        store.list(&prefix).await.unwrap().len() < 11,
        "the job was still running when the broker went away"
    );

    let lines = fleet
        .wait_for_results(&store, TENANT, &job, 11, &worker)
        .await;
    let mut images: Vec<&str> = lines.iter().map(|l| l["image"].as_str().unwrap()).collect();
    images.sort_unstable();
    images.dedup();
    assert_eq!(
        (lines.len(), images.len()),
        (44, 44),
        "every image exactly once"
    );
    assert!(
        worker.child.try_wait().unwrap().is_none(),
        "the worker is still running:\n{}",
        worker.logs()
    );
    assert!(
        worker.logs().contains("reconnected to RabbitMQ"),
        "{}",
        worker.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_from_an_s3_prefix_is_fetched_from_s3() {
    let dir = tempfile::tempdir().unwrap();
    let (photos, keys) = setup(dir.path());
    let reference = embedded(&photos, &keys, &dir.path().join("embedded"));

    let fleet = Fleet::new("amqp", &keys, &photos);
    let store = fleet.store().await;
    for entry in std::fs::read_dir(&photos).unwrap() {
        let path = entry.unwrap().path();
        let key = format!("media/2026/{}", path.file_name().unwrap().to_string_lossy());
        let body = aws_sdk_s3::primitives::ByteStream::from(std::fs::read(&path).unwrap());
        store
            .client()
            .put_object()
            .bucket(store.bucket())
            .key(key)
            .body(body)
            .send()
            .await
            .unwrap();
    }
    let notes = aws_sdk_s3::primitives::ByteStream::from_static(b"not an image");
    store
        .client()
        .put_object()
        .bucket(store.bucket())
        .key("media/2026/notes.txt")
        .body(notes)
        .send()
        .await
        .unwrap();

    let source = format!("s3://{}/media/2026/", store.bucket());
    let endpoint = common::fleet::service_env("TAGFLEET_TEST_S3_ENDPOINT");
    let mut submit = vec!["--s3-endpoint", endpoint.as_str()];
    submit.extend(ANALYSES);
    let job = fleet.submit(Path::new(&source), TENANT, &submit);
    let mut worker = fleet.worker(&dir.path().join("worker.log"), &[]);
    worker.wait_ready().await;
    let lines = fleet
        .wait_for_results(&store, TENANT, &job, 1, &worker)
        .await;

    // Other refs, so other pseudonyms: compare what was seen, not who.
    let outcomes = |m: BTreeMap<String, (String, Vec<String>)>| {
        let mut v: Vec<(String, Vec<String>)> = m.into_values().collect();
        v.sort();
        v
    };
    assert_eq!(lines.len(), 5, "the five images, not the text file");
    assert_eq!(outcomes(summarise(&lines)), outcomes(reference));
}
