//! The scheduler against real services: jobs go in through its HTTP API, tasks through
//! RabbitMQ or SQS, workers write to S3 (SeaweedFS) and report progress back. Every job's
//! tags must equal the embedded mode's on the same photos.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::common;
use crate::common::fleet::{
    Fleet, Worker, api, create_job, http, put, service_env, upload, wait_state, write_secrets,
};
use crate::common::*;
use serde_json::{Value, json};
use tagfleet_contracts::keys::{Area, job_results_prefix};
use tagfleet_io::ObjectStore;

const ACME: &str = "acme";
const ACME_TOKEN: &str = "acme-token-6f1d";
const GLOBEX: &str = "globex";
const GLOBEX_TOKEN: &str = "globex-token-90ab";
const ACME_KEY: &str = "abababababababababababababababababababababababababababababababab";

/// Four real photos and one broken file; both tenants in the secrets file.
fn setup(dir: &Path) -> (PathBuf, PathBuf) {
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
    std::fs::write(photos.join("broken.jpg"), b"\xff\xd8\xff\xe0 not a jpeg").unwrap();
    let keys = dir.join("keys");
    write_secrets(
        &keys,
        &[
            (ACME, ACME_KEY, Some(ACME_TOKEN)),
            (GLOBEX, &"cd".repeat(32), Some(GLOBEX_TOKEN)),
        ],
    );
    std::fs::write(keys.join("acme.key"), format!("{ACME_KEY}\n")).unwrap();
    (photos, keys)
}

/// Sorted (status, labels) of result lines: refs differ between modes, outcomes must not.
fn outcomes(lines: &[Value]) -> Vec<(String, Vec<String>)> {
    let mut v: Vec<_> = lines
        .iter()
        .map(|l| {
            let tags = if l["tags"].is_array() {
                labels(l)
            } else {
                vec![]
            };
            (l["status"].as_str().unwrap().to_owned(), tags)
        })
        .collect();
    v.sort();
    v
}

/// The embedded mode's outcomes on the photos, with acme's key.
fn embedded(photos: &Path, keys: &Path, out: &Path) -> Vec<(String, Vec<String>)> {
    let run = tagfleet(
        &[
            "run",
            photos.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--format",
            "json",
        ],
        &keys.join("acme.key"),
    );
    assert_eq!(run.status.code(), Some(3), "one broken file");
    outcomes(&json_lines(&run))
}

fn results(scheduler: &Worker, token: &str, id: &str) -> (u16, Vec<Value>) {
    let (code, body) = http(
        scheduler.port,
        "GET",
        &format!("/v1/jobs/{id}/results"),
        Some(token),
        None,
    )
    .unwrap();
    let lines = if code == 200 {
        body.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    } else {
        Vec::new()
    };
    (code, lines)
}

fn counts(job: &Value) -> (u64, u64, u64) {
    let c = &job["counts"];
    (
        c["total"].as_u64().unwrap(),
        c["done"].as_u64().unwrap(),
        c["failed"].as_u64().unwrap(),
    )
}

/// The metric names the Grafana dashboard and the alert rules use.
fn dashboard_metrics() -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    for file in ["k8s/grafana/tagfleet.json", "k8s/base/prometheusrule.yaml"] {
        let text = std::fs::read_to_string(repo().join(file)).unwrap();
        let words = text.split(|c: char| !(c.is_ascii_lowercase() || c == '_'));
        for word in words.filter(|w| w.starts_with("tagfleet_") || w.starts_with("process_")) {
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| word.strip_suffix(s))
                .unwrap_or(word);
            names.insert(base.to_owned());
        }
    }
    names
}

/// Samples of `name` (histograms: of its `_count`) in a /metrics text.
fn samples(text: &str, name: &str) -> Vec<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let metric = series.split('{').next()?;
            (metric == name || metric == format!("{name}_count"))
                .then(|| value.parse().ok())
                .flatten()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_from_an_s3_prefix_and_a_manifest_succeed_with_the_embedded_tags() {
    let dir = tempfile::tempdir().unwrap();
    let (photos, keys) = setup(dir.path());
    let reference = embedded(&photos, &keys, &dir.path().join("embedded"));
    let fleet = Fleet::new("amqp", &keys, &photos);
    let store = fleet.store().await;
    let prefix = upload(&store, &photos, "media/2026/", 1).await;
    put(&store, "media/2026/notes.txt", b"not an image".to_vec()).await;

    let mut scheduler = fleet.scheduler(&dir.path().join("scheduler.log"), &["--chunk-size", "2"]);
    let mut worker = fleet.worker(&dir.path().join("worker.log"), &[]);
    scheduler.wait_ready().await;
    worker.wait_ready().await;

    // From an S3 prefix, through the API.
    let (code, job) = api(
        scheduler.port,
        "POST",
        "/v1/jobs",
        Some(ACME_TOKEN),
        Some(json!({"source": {"kind": "s3_prefix", "uri": prefix}})),
    );
    assert_eq!(code, 201, "{job}");
    assert_eq!(job["counts"]["total"], 5, "five images, not the text file");
    let id = job["id"].as_str().unwrap().to_owned();
    let job = wait_state(
        &scheduler,
        ACME_TOKEN,
        &id,
        &["final"],
        &[&scheduler, &worker],
    )
    .await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(counts(&job), (5, 4, 1));
    let (code, lines) = results(&scheduler, ACME_TOKEN, &id);
    assert_eq!(code, 200);
    assert_eq!(outcomes(&lines), reference);

    // The broken image is fixed at its source; a retry re-publishes only that one, and its
    // error line gives way to a result.
    put(
        &store,
        "media/2026/broken.jpg",
        std::fs::read(photo("coffee.png")).unwrap(),
    )
    .await;
    let (code, retried) = api(
        scheduler.port,
        "POST",
        &format!("/v1/jobs/{id}/retry"),
        Some(ACME_TOKEN),
        None,
    );
    assert_eq!(code, 200, "{retried}");
    assert_eq!(retried["images"], 1);
    let job = wait_state(
        &scheduler,
        ACME_TOKEN,
        &id,
        &["final"],
        &[&scheduler, &worker],
    )
    .await;
    assert_eq!(counts(&job), (5, 5, 0), "{job}");
    let (_, lines) = results(&scheduler, ACME_TOKEN, &id);
    assert_eq!(lines.len(), 5, "one line per image");
    assert!(lines.iter().all(|l| l["status"] == "ok"), "{lines:?}");
    let (code, again) = api(
        scheduler.port,
        "POST",
        &format!("/v1/jobs/{id}/retry"),
        Some(ACME_TOKEN),
        None,
    );
    assert_eq!(code, 409, "nothing left to retry: {again}");
    put(
        &store,
        "media/2026/broken.jpg",
        std::fs::read(photos.join("broken.jpg")).unwrap(),
    )
    .await;

    // From a manifest of s3:// refs, through `tagfleet submit --scheduler --wait`.
    let manifest = dir.path().join("manifest.jsonl");
    let mut text = String::new();
    for name in [
        "chelsea.png",
        "coffee.png",
        "rocket.jpg",
        "astronaut.png",
        "broken.jpg",
    ] {
        text.push_str(&json!({"ref": format!("{prefix}{name}"), "sku": name}).to_string());
        text.push('\n');
    }
    std::fs::write(&manifest, text).unwrap();
    let url = format!("http://127.0.0.1:{}", scheduler.port);
    let submit = std::process::Command::new(env!("CARGO_BIN_EXE_tagfleet"))
        .args([
            "submit",
            manifest.to_str().unwrap(),
            "--scheduler",
            &url,
            "--wait",
        ])
        .env("TAGFLEET_TOKEN", ACME_TOKEN)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&submit.stderr);
    assert_eq!(submit.status.code(), Some(3), "one image failed: {stderr}");
    let manifest_job = String::from_utf8(submit.stdout).unwrap().trim().to_owned();
    assert!(
        stderr.contains("succeeded: 4 images done, 1 failed"),
        "{stderr}"
    );
    let (_, lines) = results(&scheduler, ACME_TOKEN, &manifest_job);
    assert_eq!(outcomes(&lines), reference);

    // From a CSV manifest stored in S3.
    let mut csv = String::from("sku,ref\n");
    for (n, name) in [
        "chelsea.png",
        "coffee.png",
        "rocket.jpg",
        "astronaut.png",
        "broken.jpg",
    ]
    .iter()
    .enumerate()
    {
        csv.push_str(&format!("{n},{prefix}{name}\n"));
    }
    put(&store, "lists/catalog.csv", csv.into_bytes()).await;
    let uri = format!("s3://{}/lists/catalog.csv", store.bucket());
    let csv_job = create_job(
        &scheduler,
        ACME_TOKEN,
        json!({"source": {"kind": "manifest", "uri": uri}}),
    );
    let job = wait_state(
        &scheduler,
        ACME_TOKEN,
        &csv_job,
        &["final"],
        &[&scheduler, &worker],
    )
    .await;
    assert_eq!(counts(&job), (5, 4, 1), "{job}");
    let (_, lines) = results(&scheduler, ACME_TOKEN, &csv_job);
    assert_eq!(outcomes(&lines), reference);

    // `tagfleet status` lists both jobs with their counts.
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_tagfleet"))
        .args(["status", "--scheduler", &url, "--token", ACME_TOKEN])
        .output()
        .unwrap();
    let table = String::from_utf8(status.stdout).unwrap();
    for (job, counts) in [(&id, ["5", "5", "0"]), (&manifest_job, ["5", "4", "1"])] {
        let row = table
            .lines()
            .find(|l| l.starts_with(job.as_str()))
            .unwrap_or_else(|| panic!("{table}"));
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cells[1], "succeeded", "{row}");
        assert_eq!(cells[2..5], counts, "{row}");
    }

    // Every metric the dashboard and the alerts use is exported, and those a job drives
    // have moved. Exceptions, each checked where it can move: GPU metrics need a GPU,
    // pending images exist only while a job runs (the cancel test), firings need a
    // schedule (the schedule test). The process collector's metrics measure the machine,
    // not the work: its CPU time counts whole seconds (clock ticks divided by the tick
    // rate in integers), which a fast machine may never reach here, so they are checked
    // for a value, and the work for the counters that count it (images, tasks, messages).
    let (_, worker_text) = http(worker.metrics_port, "GET", "/metrics", None, None).unwrap();
    let (_, scheduler_text) = http(scheduler.metrics_port, "GET", "/metrics", None, None).unwrap();
    let used = dashboard_metrics();
    assert!(used.len() > 20, "{used:?}");
    for name in &used {
        let found = [samples(&worker_text, name), samples(&scheduler_text, name)].concat();
        match name.as_str() {
            n if n.starts_with("tagfleet_worker_gpu_") => {
                if Path::new("/proc/driver/nvidia/version").exists() {
                    assert!(!found.is_empty(), "{n} is not exported on a GPU machine");
                } else {
                    assert!(found.is_empty(), "{n} without a GPU");
                }
            }
            n if n.starts_with("process_") => {
                assert!(
                    !found.is_empty() && found.iter().all(|v| v.is_finite() && *v >= 0.0),
                    "{n} is not exported as a number: {found:?}"
                );
            }
            "tagfleet_scheduler_images_pending" | "tagfleet_scheduler_schedule_firings_total" => {
                assert!(!found.is_empty(), "{name} is not exported");
            }
            n if n.ends_with("_total") || n.ends_with("_seconds") || n.ends_with("_images") => {
                assert!(
                    found.iter().any(|v| *v > 0.0),
                    "{n} did not move: {found:?}"
                );
            }
            n => assert!(!found.is_empty(), "{n} is not exported"),
        }
    }

    // The scheduler reports what it did.
    let text = scheduler_text;
    for needle in [
        "tagfleet_scheduler_jobs{state=\"succeeded\"} 3",
        "tagfleet_scheduler_images_total{event=\"done\"} 13",
        "tagfleet_scheduler_images_total{event=\"failed\"} 3",
        "tagfleet_scheduler_tasks_published_total 10",
    ] {
        assert!(text.contains(needle), "{needle} in\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_fires_and_a_restarted_scheduler_reports_the_final_counts() {
    let dir = tempfile::tempdir().unwrap();
    let (photos, keys) = setup(dir.path());
    let fleet = Fleet::new("sqs", &keys, &photos);
    let store = fleet.store().await;
    let prefix = upload(&store, &photos, "catalog/", 1).await;
    let log = dir.path().join("scheduler.log");

    // Every two seconds: far under the default minimum interval between firings.
    let fast = [("TAGFLEET_MIN_SCHEDULE_INTERVAL_SECS", "1")];
    let mut scheduler = fleet.scheduler_with_env(&log, &[], &fast);
    scheduler.wait_ready().await;
    let (code, schedule) = api(
        scheduler.port,
        "POST",
        "/v1/schedules",
        Some(ACME_TOKEN),
        Some(
            json!({"cron": "*/2 * * * * *", "time_zone": "Europe/Berlin",
                    "job": {"source": {"kind": "s3_prefix", "uri": prefix}}}),
        ),
    );
    assert_eq!(code, 201, "{schedule}");
    let sid = schedule["id"].as_str().unwrap().to_owned();
    // Wait for a firing, then stop the schedule so the job count stays put.
    let deadline = Instant::now() + Duration::from_secs(30);
    let job_id = loop {
        let (_, s) = api(
            scheduler.port,
            "GET",
            &format!("/v1/schedules/{sid}"),
            Some(ACME_TOKEN),
            None,
        );
        if let Some(job) = s["last_job"].as_str() {
            break job.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "no firing: {s}\n{}",
            scheduler.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let (_, text) = http(scheduler.metrics_port, "GET", "/metrics", None, None).unwrap();
    assert!(
        samples(&text, "tagfleet_scheduler_schedule_firings_total")
            .iter()
            .any(|v| *v >= 1.0),
        "{text}"
    );
    let (code, _) = api(
        scheduler.port,
        "DELETE",
        &format!("/v1/schedules/{sid}"),
        Some(ACME_TOKEN),
        None,
    );
    assert_eq!(code, 204);
    let (_, page) = api(scheduler.port, "GET", "/v1/jobs", Some(ACME_TOKEN), None);
    let fired: Vec<&Value> = page["jobs"].as_array().unwrap().iter().collect();
    assert!(!fired.is_empty());
    assert!(
        fired.iter().all(|j| j["schedule_id"] == sid.as_str()),
        "{page}"
    );
    let (_, job) = api(
        scheduler.port,
        "GET",
        &format!("/v1/jobs/{job_id}"),
        Some(ACME_TOKEN),
        None,
    );
    assert_eq!(job["state"], "queued", "no worker yet: {job}");

    // The scheduler dies mid-job; the worker works on and reports into the progress queue.
    scheduler.signal("KILL");
    scheduler.wait_exit(Duration::from_secs(10)).await;
    let mut worker = fleet.worker(&dir.path().join("worker.log"), &[]);
    worker.wait_ready().await;
    fleet
        .wait_for_results(&store, ACME, &job_id, 1, &worker)
        .await;

    // A new scheduler knows the job from its record and counts the rest, once each.
    let mut scheduler = fleet.scheduler_with_env(&log, &[], &fast);
    scheduler.wait_ready().await;
    let job = wait_state(
        &scheduler,
        ACME_TOKEN,
        &job_id,
        &["final"],
        &[&scheduler, &worker],
    )
    .await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(counts(&job), (5, 4, 1));
    assert_eq!(job["schedule_id"], sid.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_task_does_not_inflate_the_counts() {
    let dir = tempfile::tempdir().unwrap();
    let (photos, keys) = setup(dir.path());
    let fleet = Fleet::new("amqp", &keys, &photos);
    let store = fleet.store().await;
    let prefix = upload(&store, &photos, "media/", 1).await;
    let mut scheduler = fleet.scheduler(&dir.path().join("scheduler.log"), &["--chunk-size", "2"]);
    scheduler.wait_ready().await;
    let id = create_job(
        &scheduler,
        ACME_TOKEN,
        json!({"source": {"kind": "s3_prefix", "uri": prefix}}),
    );

    // Brokers deliver at least once: the first task arrives a second time.
    let mut keys_sorted: Vec<String> = std::fs::read_dir(&photos)
        .unwrap()
        .map(|e| format!("{prefix}{}", e.unwrap().file_name().to_string_lossy()))
        .collect();
    keys_sorted.sort();
    let duplicate = json!({
        "v": 1, "job_id": id, "task_id": "t000001", "tenant": ACME,
        "analyses": ["tags"], "model": "efficientnet-lite0@1",
        "items": [{"ref": keys_sorted[0]}, {"ref": keys_sorted[1]}],
    });
    let queue = tagfleet_io::queue::RabbitQueue::connect(tagfleet_io::queue::RabbitOptions {
        url: service_env("TAGFLEET_TEST_AMQP_URL"),
        queue: fleet.task_queue(),
        delivery_limit: 3,
        prefetch: 1,
        // The scheduler's default retention: RabbitMQ refuses another dead-letter TTL.
        message_ttl: Some(tagfleet_contracts::retention::DEFAULT_RETENTION),
    })
    .await
    .unwrap();
    use tagfleet_io::Queue;
    queue
        .publish(serde_json::to_vec(&duplicate).unwrap())
        .await
        .unwrap();

    let mut worker = fleet.worker(&dir.path().join("worker.log"), &[]);
    worker.wait_ready().await;
    let job = wait_state(
        &scheduler,
        ACME_TOKEN,
        &id,
        &["final"],
        &[&scheduler, &worker],
    )
    .await;
    assert_eq!(counts(&job), (5, 4, 1), "{job}");
    // Both deliveries were reported; the second one was recognised.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, text) = http(scheduler.metrics_port, "GET", "/metrics", None, None).unwrap();
        if text.contains("tagfleet_scheduler_progress_messages_total{result=\"duplicate\"} 1") {
            assert!(
                text.contains("tagfleet_scheduler_progress_messages_total{result=\"counted\"} 3"),
                "{text}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no duplicate report seen:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, job) = api(
        scheduler.port,
        "GET",
        &format!("/v1/jobs/{id}"),
        Some(ACME_TOKEN),
        None,
    );
    assert_eq!(counts(&job), (5, 4, 1), "{job}");
    let (_, lines) = results(&scheduler, ACME_TOKEN, &id);
    assert_eq!(
        lines.len(),
        5,
        "the redelivery rewrote its own result object"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_running_job_erases_every_result() {
    let dir = tempfile::tempdir().unwrap();
    let (photos, keys) = setup(dir.path());
    let fleet = Fleet::new("amqp", &keys, &photos);
    let store = fleet.store().await;
    let prefix = upload(&store, &photos, "bulk/", 16).await;
    let mut scheduler = fleet.scheduler(&dir.path().join("scheduler.log"), &["--chunk-size", "2"]);
    let mut worker = fleet.worker(
        &dir.path().join("worker.log"),
        &["--job-check-interval-ms", "200"],
    );
    scheduler.wait_ready().await;
    worker.wait_ready().await;
    let (code, job) = api(
        scheduler.port,
        "POST",
        "/v1/jobs",
        Some(ACME_TOKEN),
        Some(json!({"source": {"kind": "s3_prefix", "uri": prefix}})),
    );
    assert_eq!(code, 201, "{job}");
    assert_eq!(job["counts"]["total"], 80);
    let id = job["id"].as_str().unwrap().to_owned();
    let results_prefix = job_results_prefix(ACME, &id);
    // Cancel once some results exist and the job is still running.
    let deadline = Instant::now() + Duration::from_secs(120);
    while store.list(&results_prefix).await.unwrap().is_empty() {
        assert!(Instant::now() < deadline, "{}", worker.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // While it runs, its images wait in the fleet-wide gauge (per-job progress is the
    // API's: metrics name no job).
    let (_, text) = http(scheduler.metrics_port, "GET", "/metrics", None, None).unwrap();
    let pending = samples(&text, "tagfleet_scheduler_images_pending");
    assert!(
        pending.len() == 1 && (1.0..=80.0).contains(&pending[0]),
        "{pending:?}:\n{text}"
    );
    let (code, job) = api(
        scheduler.port,
        "DELETE",
        &format!("/v1/jobs/{id}"),
        Some(ACME_TOKEN),
        None,
    );
    assert_eq!(code, 200, "{job}");
    assert_eq!(job["state"], "cancelled");
    let (_, text) = http(scheduler.metrics_port, "GET", "/metrics", None, None).unwrap();
    assert_eq!(
        samples(&text, "tagfleet_scheduler_images_pending"),
        [0.0],
        "a cancelled job has no pending images"
    );
    assert!(!text.contains(&id), "metrics never name a job");
    let done_at_cancel = counts(&job).1 + counts(&job).2;
    assert!(done_at_cancel < 80, "cancelled while running: {job}");

    // The worker skips the queued tasks; what was in flight is erased as it reports.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, text) = http(worker.metrics_port, "GET", "/metrics", None, None).unwrap();
        let settled: f64 = ["acked", "skipped"]
            .iter()
            .filter_map(|r| {
                text.lines()
                    .find(|l| {
                        l.starts_with(&format!("tagfleet_worker_messages_total{{result=\"{r}\"}}"))
                    })
                    .and_then(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            })
            .sum();
        if settled >= 40.0 {
            assert!(
                text.contains("tagfleet_worker_messages_total{result=\"skipped\"}"),
                "{text}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "tasks not settled:\n{text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        store.list(&results_prefix).await.unwrap(),
        vec![],
        "no result of the job remains"
    );
    let (code, _) = results(&scheduler, ACME_TOKEN, &id);
    assert_eq!(code, 410);
    let (_, job) = api(
        scheduler.port,
        "GET",
        &format!("/v1/jobs/{id}"),
        Some(ACME_TOKEN),
        None,
    );
    assert_eq!(job["state"], "cancelled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_cannot_see_read_or_delete_another_tenants_job() {
    let dir = tempfile::tempdir().unwrap();
    let (photos, keys) = setup(dir.path());
    let fleet = Fleet::new("amqp", &keys, &photos);
    let store = fleet.store().await;
    let prefix = upload(&store, &photos, "media/", 1).await;
    let mut scheduler = fleet.scheduler(&dir.path().join("scheduler.log"), &[]);
    scheduler.wait_ready().await;
    let (code, job) = api(
        scheduler.port,
        "POST",
        "/v1/jobs",
        Some(ACME_TOKEN),
        Some(json!({"source": {"kind": "s3_prefix", "uri": prefix}})),
    );
    assert_eq!(code, 201, "{job}");
    let id = job["id"].as_str().unwrap();
    for (method, path) in [
        ("GET", format!("/v1/jobs/{id}")),
        ("GET", format!("/v1/jobs/{id}/results")),
        ("POST", format!("/v1/jobs/{id}/retry")),
        ("DELETE", format!("/v1/jobs/{id}")),
    ] {
        let (code, body) = api(scheduler.port, method, &path, Some(GLOBEX_TOKEN), None);
        assert_eq!(code, 404, "{method} {path}: {body}");
        assert_eq!(body["error"], "no such job");
    }
    let (_, page) = api(scheduler.port, "GET", "/v1/jobs", Some(GLOBEX_TOKEN), None);
    assert_eq!(page["jobs"], json!([]));
    // The job is untouched and still acme's.
    let (code, job) = api(
        scheduler.port,
        "GET",
        &format!("/v1/jobs/{id}"),
        Some(ACME_TOKEN),
        None,
    );
    assert_eq!((code, job["state"].as_str()), (200, Some("queued")));
    let (_, page) = api(scheduler.port, "GET", "/v1/jobs", Some(ACME_TOKEN), None);
    assert_eq!(page["jobs"].as_array().unwrap().len(), 1);
    // No token, or a wrong one, is a 401 that says so.
    for token in [None, Some("acme-token-6f1e"), Some("")] {
        let (code, body) = api(
            scheduler.port,
            "GET",
            &format!("/v1/jobs/{id}"),
            token,
            None,
        );
        assert_eq!(code, 401, "{token:?}");
        assert_eq!(body["error"], "missing or unknown bearer token");
    }
    // The access log names tenant, route and status, never the job's source.
    let logs = scheduler.logs();
    assert!(
        logs.lines().any(|l| l.contains("tenant=globex")
            && l.contains("route=/v1/jobs/{id}")
            && l.contains("status=404")),
        "{logs}"
    );
    assert!(
        !logs.contains(prefix.as_str()),
        "the source URI stays out of logs:\n{logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_sources_inside_the_network_are_refused_before_any_connection() {
    let dir = tempfile::tempdir().unwrap();
    let (photos, keys) = setup(dir.path());
    let fleet = Fleet::new("amqp", &keys, &photos);
    fleet.store().await;
    // A listener on loopback that must never see a connection.
    let trap = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    trap.set_nonblocking(true).unwrap();
    let trap_port = trap.local_addr().unwrap().port();
    let mut scheduler = fleet.scheduler(&dir.path().join("scheduler.log"), &[]);
    scheduler.wait_ready().await;
    for (url, class) in [
        (format!("https://127.0.0.1:{trap_port}/a.jpg"), "loopback"),
        (
            "https://169.254.169.254/latest/meta-data/".to_owned(),
            "link-local",
        ),
        ("https://10.0.0.1/photo.jpg".to_owned(), "private"),
        (format!("https://localhost:{trap_port}/a.jpg"), "loopback"),
    ] {
        let (code, body) = api(
            scheduler.port,
            "POST",
            "/v1/jobs",
            Some(ACME_TOKEN),
            Some(
                json!({"source": {"kind": "urls", "urls": ["https://93.184.216.34/ok.jpg", url]}}),
            ),
        );
        assert_eq!(code, 400, "{url}: {body}");
        assert_eq!(body["field"], "source.urls", "{body}");
        let error = body["error"].as_str().unwrap();
        assert!(
            error.contains("item 2") && error.contains(class),
            "{url}: {error}"
        );
    }
    assert!(
        matches!(trap.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "nothing connected to the loopback listener"
    );
    let (_, page) = api(scheduler.port, "GET", "/v1/jobs", Some(ACME_TOKEN), None);
    assert_eq!(page["jobs"], json!([]), "no job was created");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_request_is_refused_with_its_reason_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (photos, keys) = setup(dir.path());
    let fleet = Fleet::new("amqp", &keys, &photos);
    let store = fleet.store().await;
    let prefix = upload(&store, &photos, "media/", 1).await;
    let empty_prefix = format!("s3://{}/nothing-here/", store.bucket());
    let mut scheduler = fleet.scheduler(
        &dir.path().join("scheduler.log"),
        &["--max-request-bytes", "4096"],
    );
    scheduler.wait_ready().await;
    let s3 = |extra: Value| {
        let mut spec = json!({"source": {"kind": "s3_prefix", "uri": prefix}});
        for (k, v) in extra.as_object().unwrap() {
            spec[k] = v.clone();
        }
        spec
    };
    let cases: Vec<(Vec<u8>, u16, &str, &str)> = vec![
        (b"{not json".to_vec(), 400, "body", "key must be a string"),
        (br#"{"analyses":["tags"]}"#.to_vec(), 400, "body", "missing field `source`"),
        (s3(json!({"analyses": ["faces"]})).to_string().into_bytes(), 400, "analyses[0]", "unknown variant `faces`"),
        (s3(json!({"model": "resnet-50@2"})).to_string().into_bytes(), 400, "model", "unknown model"),
        (s3(json!({"options": {"top_k": 0}})).to_string().into_bytes(), 400, "options.top_k", "outside 1..=1000"),
        (s3(json!({"options": {"threshold": "high"}})).to_string().into_bytes(), 400, "options.threshold", "invalid type"),
        (s3(json!({"output": "elsewhere/"})).to_string().into_bytes(), 400, "output", "expected s3://"),
        (s3(json!({"colour": "red"})).to_string().into_bytes(), 400, "colour", "unknown field"),
        (json!({"source": {"kind": "s3_prefix", "uri": empty_prefix}}).to_string().into_bytes(), 400, "source", "no images found"),
        (json!({"source": {"kind": "manifest", "inline": "# nothing\n"}}).to_string().into_bytes(), 400, "source", "no images found"),
        (json!({"source": {"kind": "manifest", "inline": "{\"ref\":\"s3://b/a.jpg\"}\n{\"sku\":1}\n"}}).to_string().into_bytes(), 400, "source.inline", "line 2"),
        (json!({"source": {"kind": "dir", "path": "/photos"}}).to_string().into_bytes(), 400, "source.kind", "embedded mode"),
        (json!({"source": {"kind": "ftp", "uri": "x"}}).to_string().into_bytes(), 400, "source.kind", "unknown variant `ftp`"),
        (json!({"source": {"kind": "manifest", "inline": "s3://b/a.jpg\n".repeat(400)}}).to_string().into_bytes(), 413, "", "over the limit"),
    ];
    for (body, status, field, reason) in &cases {
        let (code, answer) = http(
            scheduler.port,
            "POST",
            "/v1/jobs",
            Some(ACME_TOKEN),
            Some(body),
        )
        .unwrap();
        let answer: Value = serde_json::from_str(&answer).unwrap_or(Value::Null);
        let shown = String::from_utf8_lossy(&body[..body.len().min(120)]);
        assert_eq!(code, *status, "{shown}: {answer}");
        if !field.is_empty() {
            assert_eq!(answer["field"], *field, "{shown}: {answer}");
        }
        assert!(
            answer["error"].as_str().unwrap_or("").contains(reason),
            "{shown}: {answer}"
        );
    }
    // Closed choices list the valid values.
    let (_, answer) = api(
        scheduler.port,
        "POST",
        "/v1/jobs",
        Some(ACME_TOKEN),
        Some(s3(json!({"analyses": ["faces"]}))),
    );
    assert_eq!(
        answer["valid"],
        json!(["tags", "embedding", "categories", "colors", "crops"])
    );
    let (_, answer) = api(
        scheduler.port,
        "POST",
        "/v1/jobs",
        Some(ACME_TOKEN),
        Some(s3(json!({"model": "x@1"}))),
    );
    assert_eq!(answer["valid"], json!(["efficientnet-lite0@1"]));
    let (code, answer) = api(
        scheduler.port,
        "POST",
        "/v1/jobs",
        Some(ACME_TOKEN),
        Some(s3(
            json!({"analyses": ["categories"], "options": {"categorizer": "pets"}}),
        )),
    );
    assert_eq!(
        (code, answer["field"].as_str()),
        (400, Some("options.categorizer")),
        "{answer}"
    );
    assert_eq!(answer["valid"], json!(["general", "retail"]));
    let (code, answer) = api(
        scheduler.port,
        "POST",
        "/v1/jobs",
        Some(ACME_TOKEN),
        Some(s3(
            json!({"analyses": ["crops"], "options": {"crops": ["1:1", "0x5"]}}),
        )),
    );
    assert_eq!(
        (code, answer["field"].as_str()),
        (400, Some("options.crops[1]")),
        "{answer}"
    );
    assert!(
        answer["error"].as_str().unwrap().contains("0x5"),
        "{answer}"
    );
    // Schedules and listings refuse bad input the same way.
    let (code, answer) = api(
        scheduler.port,
        "POST",
        "/v1/schedules",
        Some(ACME_TOKEN),
        Some(json!({"cron": "61 * * * *", "job": s3(json!({}))})),
    );
    assert_eq!(
        (code, answer["field"].as_str()),
        (400, Some("cron")),
        "{answer}"
    );
    let (code, answer) = api(
        scheduler.port,
        "POST",
        "/v1/schedules",
        Some(ACME_TOKEN),
        Some(json!({"cron": "0 2 * * *", "time_zone": "Mars/Olympus", "job": s3(json!({}))})),
    );
    assert_eq!(
        (code, answer["field"].as_str()),
        (400, Some("time_zone")),
        "{answer}"
    );
    let (code, answer) = api(
        scheduler.port,
        "POST",
        "/v1/schedules",
        Some(ACME_TOKEN),
        Some(json!({"cron": "0 2 * * *", "job": s3(json!({"analyses": []}))})),
    );
    assert_eq!(
        (code, answer["field"].as_str()),
        (400, Some("job.analyses")),
        "{answer}"
    );
    let (code, answer) = api(
        scheduler.port,
        "GET",
        "/v1/jobs?limit=0",
        Some(ACME_TOKEN),
        None,
    );
    assert_eq!(
        (code, answer["field"].as_str()),
        (400, Some("limit")),
        "{answer}"
    );

    // Nothing half-created: no job, no schedule, no record, no task.
    let (_, page) = api(scheduler.port, "GET", "/v1/jobs", Some(ACME_TOKEN), None);
    assert_eq!(page["jobs"], json!([]));
    let (_, schedules) = api(
        scheduler.port,
        "GET",
        "/v1/schedules",
        Some(ACME_TOKEN),
        None,
    );
    assert_eq!(schedules, json!([]));
    assert!(store.list(Area::Jobs.prefix()).await.unwrap().is_empty());
    assert!(
        store
            .list(Area::Schedules.prefix())
            .await
            .unwrap()
            .is_empty()
    );
    let (_, text) = http(scheduler.metrics_port, "GET", "/metrics", None, None).unwrap();
    assert!(
        text.contains("tagfleet_scheduler_tasks_published_total 0"),
        "{text}"
    );
    assert!(
        text.contains("tagfleet_scheduler_http_requests_total{route=\"/v1/jobs\",status=\"400\"}")
    );

    // The OpenAPI document describes the API.
    let (code, doc) = api(scheduler.port, "GET", "/openapi.json", None, None);
    assert_eq!(code, 200);
    for path in [
        "/v1/jobs",
        "/v1/jobs/{id}",
        "/v1/jobs/{id}/results",
        "/v1/jobs/{id}/retry",
        "/v1/schedules",
        "/v1/schedules/{id}",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} in {doc}");
    }
    assert!(doc["components"]["schemas"]["JobSpec"].is_object());
    let options = &doc["components"]["schemas"]["TaskOptions"]["properties"];
    for option in ["top_k", "parents", "categorizer", "colors", "crops"] {
        assert!(options[option].is_object(), "options.{option} in {options}");
    }
    let line = &doc["components"]["schemas"]["ResultLine"]["properties"];
    for field in ["tags", "categories", "colors", "crops", "error"] {
        assert!(line[field].is_object(), "{field} in {line}");
    }
}

/// `openssl s_server -WWW`: a real HTTPS server for the files of a folder, with a
/// self-signed certificate for localhost and 127.0.0.1.
struct HttpsServer {
    child: std::process::Child,
    port: u16,
    cert: PathBuf,
}

impl HttpsServer {
    async fn start(root: &Path, dir: &Path) -> Self {
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        let made = std::process::Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            ])
            .args(["-subj", "/CN=localhost"])
            .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
            // A server certificate, not a CA: TLS clients refuse a CA as the end entity.
            .args(["-addext", "basicConstraints=critical,CA:FALSE"])
            .args(["-addext", "extendedKeyUsage=serverAuth"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .expect("openssl is installed by scripts/services.sh");
        assert!(
            made.status.success(),
            "{}",
            String::from_utf8_lossy(&made.stderr)
        );
        let port = common::fleet::free_port();
        let child = std::process::Command::new("openssl")
            .args(["s_server", "-quiet", "-WWW", "-accept"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("-cert")
            .arg(&cert)
            .arg("-key")
            .arg(&key)
            .current_dir(root)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "openssl s_server did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Self { child, port, cert }
    }
}

impl Drop for HttpsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_url_job_is_fetched_over_https_from_an_allowed_range() {
    let dir = tempfile::tempdir().unwrap();
    let (photos, keys) = setup(dir.path());
    let mut reference = embedded(&photos, &keys, &dir.path().join("embedded"));
    reference.push(("error".into(), vec![]));
    reference.sort();
    let server = HttpsServer::start(&photos, dir.path()).await;
    let fleet = Fleet::new("amqp", &keys, &photos);
    fleet.store().await;
    let allow = ["--allow-url-range", "127.0.0.0/8"];
    let mut scheduler = fleet.scheduler(&dir.path().join("scheduler.log"), &allow);
    let ca = server.cert.to_str().unwrap();
    let mut worker = fleet.worker(
        &dir.path().join("worker.log"),
        &[allow[0], allow[1], "--url-ca-file", ca],
    );
    scheduler.wait_ready().await;
    worker.wait_ready().await;

    let mut urls: Vec<String> = std::fs::read_dir(&photos)
        .unwrap()
        .map(|e| {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            format!("https://localhost:{}/{name}", server.port)
        })
        .collect();
    urls.push(format!("https://127.0.0.1:{}/missing.jpg", server.port));
    let id = create_job(
        &scheduler,
        ACME_TOKEN,
        json!({"source": {"kind": "urls", "urls": urls}}),
    );
    let job = wait_state(
        &scheduler,
        ACME_TOKEN,
        &id,
        &["final"],
        &[&scheduler, &worker],
    )
    .await;
    let (_, lines) = results(&scheduler, ACME_TOKEN, &id);
    assert_eq!(counts(&job), (6, 4, 2), "{job}\n{lines:?}");
    assert_eq!(outcomes(&lines), reference);
    let kinds: Vec<&str> = lines
        .iter()
        .filter_map(|l| l["error"]["kind"].as_str())
        .collect();
    assert_eq!(kinds.len(), 2);
    // s_server answers a missing file with 200 and an error text: not an image.
    assert!(
        kinds.contains(&"unsupported") && kinds.contains(&"decode"),
        "{kinds:?}"
    );
    // No URL, host or file name reaches the results or the worker's logs.
    let all = format!("{lines:?}{}", worker.logs());
    for needle in ["localhost", "missing.jpg", "chelsea"] {
        assert!(!all.contains(needle), "{needle}");
    }
}
