//! What the fleet tells its operators carries no tenant data: the scheduler's metrics are
//! on a listener of their own with fixed label sets, client libraries never log requests
//! (object keys, access key ids) whatever `--log` says, and a schedule that fails to fire
//! logs and records why without quoting its refs.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::common::fleet::{
    Fleet, api, create_job, http, put, service_env, upload, wait_state, write_secrets,
};
use crate::common::*;
use serde_json::{Value, json};

const ACME: &str = "acme";
const ACME_TOKEN: &str = "acme-token-5e2a";

/// Lets the tenant read the fleet bucket's `folder` (its allow-list of S3 sources).
fn allow_sources(fleet: &Fleet, folder: &str) {
    let secrets = fleet.secrets();
    let mut text = std::fs::read_to_string(&secrets).unwrap();
    text.push_str(&format!("sources = [\"s3://{}/{folder}\"]\n", fleet.bucket));
    std::fs::write(secrets, text).unwrap();
}

/// Three real photos, and the tenant (whose S3 sources [`allow_sources`] sets).
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

/// The label names of every sample in a Prometheus text.
fn label_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((_, labels)) = line.split_once('{') else {
            continue;
        };
        let labels = labels.rsplit_once('}').map_or(labels, |(l, _)| l);
        for pair in labels.split("\",") {
            if let Some((name, _)) = pair.split_once('=') {
                names.insert(name.trim_start_matches(',').to_owned());
            }
        }
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduler_metrics_have_their_own_listener_and_name_no_tenant_or_job() {
    let dir = tempfile::tempdir().unwrap();
    let (photos, keys) = setup(dir.path());
    let fleet = Fleet::new("amqp", &keys, &photos);
    allow_sources(&fleet, "media/");
    let store = fleet.store().await;
    let prefix = upload(&store, &photos, "media/", 1).await;
    let mut scheduler = fleet.scheduler(&dir.path().join("scheduler.log"), &[]);
    scheduler.wait_ready().await;
    // No worker: the job stays unfinished, which is when progress used to be exported.
    let id = create_job(
        &scheduler,
        ACME_TOKEN,
        json!({"source": {"kind": "s3_prefix", "uri": prefix}}),
    );

    // The API port serves no metrics, with a token or without.
    for token in [None, Some(ACME_TOKEN)] {
        let (code, text) = http(scheduler.port, "GET", "/metrics", token, None).unwrap();
        assert_eq!(code, 404, "/metrics on the API port ({token:?}):\n{text}");
    }
    // The metrics listener serves the metrics and the probes, and no API.
    let (code, text) = http(scheduler.metrics_port, "GET", "/metrics", None, None).unwrap();
    assert_eq!(code, 200, "{text}");
    for path in ["/healthz", "/readyz"] {
        let (code, _) = http(scheduler.metrics_port, "GET", path, None, None).unwrap();
        assert_eq!(code, 200, "{path}");
    }
    let (code, _) = api(
        scheduler.metrics_port,
        "GET",
        &format!("/v1/jobs/{id}"),
        Some(ACME_TOKEN),
        None,
    );
    assert_eq!(code, 404, "the API is not served on the metrics listener");

    // Fixed label sets: nothing names a tenant or a job; the job counts in aggregates.
    assert!(!text.contains(&id), "a job id in the metrics:\n{text}");
    assert!(!text.contains(ACME), "a tenant in the metrics:\n{text}");
    let names = label_names(&text);
    // `model` names one of the scheduler's --model-id: the operator's, not a tenant's.
    let fixed = [
        "state", "event", "queue", "model", "result", "route", "status", "le", "reason", "listener",
    ];
    assert!(
        names.iter().all(|n| fixed.contains(&n.as_str())),
        "label names {names:?} are not all of {fixed:?}"
    );
    assert!(
        text.contains("tagfleet_scheduler_jobs{state=\"queued\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("tagfleet_scheduler_images_pending 3"),
        "{text}"
    );
    // Per-job progress is the API's.
    let (code, job) = api(
        scheduler.port,
        "GET",
        &format!("/v1/jobs/{id}"),
        Some(ACME_TOKEN),
        None,
    );
    assert_eq!(code, 200);
    assert_eq!(job["counts"]["total"], 3, "{job}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_libraries_log_no_request_whatever_the_log_filter_says() {
    let dir = tempfile::tempdir().unwrap();
    let (photos, keys) = setup(dir.path());
    let fleet = Fleet::new("amqp", &keys, &photos);
    allow_sources(&fleet, "uploads/");
    let store = fleet.store().await;
    let markers = ["LogFolderMarker7301", "LogFileMarker7302"];
    let folder = format!("uploads/{}/", markers[0]);
    put(
        &store,
        &format!("{folder}{}.jpg", markers[1]),
        std::fs::read(photo("rocket.jpg")).unwrap(),
    )
    .await;
    let prefix = upload(&store, &photos, &folder, 1).await;

    // Everything at trace; then the libraries asked for by name, by module and by span.
    let mut scheduler = fleet.scheduler(&dir.path().join("scheduler.log"), &["--log", "trace"]);
    let mut worker = fleet.worker(
        &dir.path().join("worker.log"),
        &[
            "--log",
            "info,tagfleet=debug,tagfleet_worker=trace,aws_smithy_runtime::client=trace,\
             aws_sigv4=trace,aws_sdk_s3=trace,hyper_util::client=trace,h2=trace,\
             lapin::channel=trace,\
             rustls=trace,[invoke]=trace,[{uri}]=trace",
        ],
    );
    scheduler.wait_ready().await;
    worker.wait_ready().await;
    // S3 is listed (scheduler), read and written (worker), and job records are written.
    let id = create_job(
        &scheduler,
        ACME_TOKEN,
        json!({"source": {"kind": "s3_prefix", "uri": prefix}}),
    );
    let job = wait_state(
        &scheduler,
        ACME_TOKEN,
        &id,
        &["succeeded"],
        &[&scheduler, &worker],
    )
    .await;
    assert_eq!(job["counts"]["done"], 4, "{job}");

    let (scheduler_logs, worker_logs) = (scheduler.logs(), worker.logs());
    // The filters were taken: our own crates logged below info.
    assert!(scheduler_logs.contains("DEBUG"), "{scheduler_logs}");
    assert!(worker_logs.contains("DEBUG"), "{worker_logs}");
    // The test key id is "tagfleet", a word our logs use anyway: look for it where the
    // SDK prints it (the credentials, the signing scope `KEY/DATE/region/s3/aws4_request`).
    let access_key = service_env("AWS_ACCESS_KEY_ID");
    let secret = service_env("AWS_SECRET_ACCESS_KEY");
    for (name, logs) in [("scheduler", &scheduler_logs), ("worker", &worker_logs)] {
        let leaks: Vec<&str> = logs
            .lines()
            .filter(|l| {
                markers.iter().any(|m| l.contains(m))
                    || l.contains("access_key_id")
                    || l.contains(&format!("{access_key}/2"))
                    || l.contains(&secret)
                    || l.contains("aws4_request")
                    || l.contains("x-amz-")
            })
            .collect();
        assert!(
            leaks.is_empty(),
            "the {name} logged requests:\n{}",
            leaks.join("\n")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_that_cannot_fire_says_why_without_quoting_its_refs() {
    let dir = tempfile::tempdir().unwrap();
    let (photos, keys) = setup(dir.path());
    let fleet = Fleet::new("amqp", &keys, &photos);
    fleet.store().await;
    let log = dir.path().join("scheduler.log");
    let fast = [("TAGFLEET_MIN_SCHEDULE_INTERVAL_SECS", "1")];
    let mut scheduler = fleet.scheduler_with_env(&log, &[], &fast);
    scheduler.wait_ready().await;

    // Each source is refused at every firing, for another reason; each bad ref carries a
    // marker (the address literals are markers too).
    let markers = [
        "Mk7q1x",
        "10.71.3.9",
        "Mk7q3x",
        "Mk7q4x",
        "10.71.3.10",
        "Mk7q6x",
    ];
    let inline = |text: &str| json!({"kind": "manifest", "inline": text});
    let sources = [
        (
            inline("https://93.184.216.34/fine.jpg\nftp://Mk7q1x.example/a.jpg\n"),
            "item 2",
        ),
        (
            inline("https://93.184.216.34/fine.jpg\nhttps://10.71.3.9/a.jpg\n"),
            "item 2",
        ),
        (
            inline("{\"ref\":\"https://93.184.216.34/a.jpg\"}\n{\"path\":\"s3://b/Mk7q3x.jpg\"}\n"),
            "line 2",
        ),
        (inline("/photos/Mk7q4x/a.jpg\n"), "item 1"),
        (
            json!({"kind": "urls", "urls": ["https://10.71.3.10/a.jpg"]}),
            "item 1",
        ),
        (
            inline("https://93.184.216.34/fine.jpg\nhttps://Mk7q6x bad/a.jpg\n"),
            "item 2",
        ),
    ];
    let mut ids = Vec::new();
    for (source, _) in &sources {
        let (code, schedule) = api(
            scheduler.port,
            "POST",
            "/v1/schedules",
            Some(ACME_TOKEN),
            Some(json!({"cron": "* * * * * *", "job": {"source": source}})),
        );
        assert_eq!(code, 201, "{schedule}");
        ids.push(schedule["id"].as_str().unwrap().to_owned());
    }
    // Two firings each at least: the warning comes back every time.
    let deadline = Instant::now() + Duration::from_secs(60);
    let schedules: Vec<Value> = loop {
        let (_, list) = api(
            scheduler.port,
            "GET",
            "/v1/schedules",
            Some(ACME_TOKEN),
            None,
        );
        let warnings = scheduler
            .logs()
            .lines()
            .filter(|l| l.contains("WARN") && l.contains("created no job"))
            .count();
        let list = list.as_array().cloned().unwrap_or_default();
        if warnings >= 2 * ids.len() && list.iter().all(|s| s["last_error"].is_string()) {
            break list;
        }
        assert!(Instant::now() < deadline, "{list:?}\n{}", scheduler.logs());
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    for (id, (_, reason)) in ids.iter().zip(&sources) {
        let schedule = schedules.iter().find(|s| s["id"] == id.as_str()).unwrap();
        let error = schedule["last_error"].as_str().unwrap();
        assert!(error.contains(reason), "{error}");
        assert!(schedule["last_job"].is_null(), "{schedule}");
        for marker in markers {
            assert!(!error.contains(marker), "{marker} in last_error: {error}");
        }
    }
    let logs = scheduler.logs();
    let leaks: Vec<&str> = logs
        .lines()
        .filter(|l| markers.iter().any(|m| l.contains(m)))
        .collect();
    assert!(leaks.is_empty(), "refs in the logs:\n{}", leaks.join("\n"));
}
