//! The privacy promises, each against the real services: nothing of an image's ref or
//! metadata leaves the worker's memory, results expire and are swept, a tenant's data can
//! be erased at once, and everything written is encrypted at rest.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::common;
use crate::common::fleet::{
    Fleet, api, assert_encrypted, create_job, http, put, upload, wait_state, write_secrets,
};
use crate::common::*;
use serde_json::{Value, json};
use tagfleet_contracts::keys::{Area, Key, job_results_prefix};
use tagfleet_io::ObjectStore;

const ACME: &str = "acme";
const ACME_TOKEN: &str = "acme-token-31c0";
const GLOBEX_TOKEN: &str = "globex-token-77d2";

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
    write_secrets(
        &keys,
        &[
            (ACME, &"ab".repeat(32), Some(ACME_TOKEN)),
            ("globex", &"cd".repeat(32), Some(GLOBEX_TOKEN)),
        ],
    );
    (photos, keys)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_ref_file_name_or_exif_reaches_logs_objects_or_disk_and_all_is_encrypted() {
    let dir = tempfile::tempdir().unwrap();
    let (photos, keys) = setup(dir.path());
    let fleet = Fleet::new("amqp", &keys, &photos);
    let store = fleet.store().await;
    let markers = [
        "RefFolderMarker4410",
        "FileNameMarker4411",
        "ExifDescriptionMarker4412",
        "ExifArtistMarker4413",
        "ExifGpsMarker4414",
    ];
    let rocket = std::fs::read(photo("rocket.jpg")).unwrap();
    let jpeg = jpeg_with_exif(
        &rocket,
        &[(0x010E, markers[2]), (0x013B, markers[3])],
        &[(0x0012, markers[4])],
    );
    let folder = format!("uploads/{}/", markers[0]);
    put(&store, &format!("{folder}{}.jpg", markers[1]), jpeg).await;
    let prefix = upload(&store, &photos, &folder, 1).await;

    // The worker starts in an empty folder with its own HOME and TMPDIR: whatever it
    // wrote to disk would show up there.
    let state = dir.path().join("worker-state");
    let (home, tmp) = (state.join("home"), state.join("tmp"));
    for d in [&home, &tmp] {
        std::fs::create_dir_all(d).unwrap();
    }
    let mut scheduler = fleet.scheduler(
        &dir.path().join("scheduler.log"),
        &["--log", "debug,tagfleet_scheduler=trace"],
    );
    let mut worker = fleet.worker_in(
        &dir.path().join("worker.log"),
        &["--log", "debug"],
        &state,
        &[("HOME", home.as_path()), ("TMPDIR", tmp.as_path())],
    );
    scheduler.wait_ready().await;
    worker.wait_ready().await;
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
    let (code, results) = http(
        scheduler.port,
        "GET",
        &format!("/v1/jobs/{id}/results"),
        Some(ACME_TOKEN),
        None,
    )
    .unwrap();
    assert_eq!(code, 200);
    assert_eq!(results.lines().count(), 4);

    // Everything the fleet wrote: result objects and job records, names and bodies.
    let mut written = String::new();
    for prefix in [Area::Results.prefix(), Area::Jobs.prefix()] {
        for object in store.list(prefix).await.unwrap() {
            written.push_str(&object.key);
            written.push_str(&String::from_utf8_lossy(
                &store.get(&object.key).await.unwrap(),
            ));
            // Encrypted at rest: every object the fleet wrote says so.
            assert_encrypted(&store, &object.key).await;
        }
    }
    assert!(written.contains(&id), "the listing found the job's objects");
    let logs = format!("{}\n{}", worker.logs(), scheduler.logs());
    assert!(logs.contains("DEBUG"), "debug logging was on");
    for marker in &markers[1..] {
        assert!(!results.contains(marker), "{marker} in results");
        assert!(!written.contains(marker), "{marker} in stored objects");
        let leaks: Vec<&str> = logs.lines().filter(|l| l.contains(marker)).collect();
        assert!(leaks.is_empty(), "{marker} in logs:\n{}", leaks.join("\n"));
    }
    // The job record keeps its source prefix (a retry re-reads it), never an image name.
    assert!(
        !logs.contains(markers[0]),
        "the source folder stays out of logs"
    );

    worker.signal("TERM");
    worker.wait_exit(Duration::from_secs(30)).await;
    let mut left = Vec::new();
    for entry in walk(&state) {
        left.push(entry.display().to_string());
    }
    assert!(left.is_empty(), "the worker wrote files: {left:?}");
}

/// Every file under `dir`, recursively.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_past_their_retention_are_never_served_and_then_swept() {
    let dir = tempfile::tempdir().unwrap();
    let (photos, keys) = setup(dir.path());
    let fleet = Fleet::new("amqp", &keys, &photos);
    let store = fleet.store().await;
    let prefix = upload(&store, &photos, "media/", 1).await;
    let log = dir.path().join("scheduler.log");
    let retention = ["--retention-secs", "8"];
    let mut scheduler = fleet.scheduler(
        &log,
        &[retention[0], retention[1], "--sweep-interval-secs", "3600"],
    );
    let mut worker = fleet.worker(&dir.path().join("worker.log"), &retention);
    scheduler.wait_ready().await;
    worker.wait_ready().await;
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
    let created: chrono::DateTime<chrono::Utc> =
        job["created_at"].as_str().unwrap().parse().unwrap();
    let path = format!("/v1/jobs/{id}/results");
    let (code, body) = http(scheduler.port, "GET", &path, Some(ACME_TOKEN), None).unwrap();
    assert_eq!((code, body.lines().count()), (200, 3));

    // Past the retention, before any sweep: the job is expired and nothing is served,
    // although the objects are still in the bucket.
    let expiry = created + chrono::Duration::seconds(8);
    let wait = (expiry - chrono::Utc::now()).to_std().unwrap_or_default();
    tokio::time::sleep(wait + Duration::from_millis(300)).await;
    let results_prefix = job_results_prefix(ACME, &id);
    assert!(
        !store.list(&results_prefix).await.unwrap().is_empty(),
        "not swept yet"
    );
    let job = wait_state(&scheduler, ACME_TOKEN, &id, &["expired"], &[&scheduler]).await;
    assert_eq!(job["state"], "expired");
    let (code, body) = http(scheduler.port, "GET", &path, Some(ACME_TOKEN), None).unwrap();
    assert_eq!(code, 410, "{body}");
    assert!(body.contains("expired"), "{body}");

    // A scheduler that sweeps deletes the job's results and record.
    scheduler.signal("TERM");
    scheduler.wait_exit(Duration::from_secs(30)).await;
    let mut scheduler = fleet.scheduler(
        &log,
        &[retention[0], retention[1], "--sweep-interval-secs", "1"],
    );
    scheduler.wait_ready().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = store.list(&results_prefix).await.unwrap().len()
            + store.list(&Area::Jobs.of_tenant(ACME)).await.unwrap().len();
        if left == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{left} objects left:\n{}",
            scheduler.logs()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let (code, _) = http(scheduler.port, "GET", &path, Some(ACME_TOKEN), None).unwrap();
    assert!(code == 404 || code == 410, "{code}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasing_a_tenant_deletes_all_its_data_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (photos, keys) = setup(dir.path());
    let fleet = Fleet::new("amqp", &keys, &photos);
    let store = fleet.store().await;
    let small = upload(&store, &photos, "small/", 1).await;
    let bulk = upload(&store, &photos, "bulk/", 20).await;
    let mut scheduler = fleet.scheduler(&dir.path().join("scheduler.log"), &["--chunk-size", "2"]);
    let mut worker = fleet.worker(
        &dir.path().join("worker.log"),
        &["--job-check-interval-ms", "200"],
    );
    scheduler.wait_ready().await;
    worker.wait_ready().await;

    // acme: a finished job, a running one and a schedule; globex: a job of its own.
    let finished = create_job(
        &scheduler,
        ACME_TOKEN,
        json!({"source": {"kind": "s3_prefix", "uri": small}}),
    );
    wait_state(
        &scheduler,
        ACME_TOKEN,
        &finished,
        &["succeeded"],
        &[&scheduler, &worker],
    )
    .await;
    let (code, theirs) = api(
        scheduler.port,
        "POST",
        "/v1/jobs",
        Some(GLOBEX_TOKEN),
        Some(json!({"source": {"kind": "s3_prefix", "uri": small}})),
    );
    assert_eq!(code, 201, "{theirs}");
    let theirs = theirs["id"].as_str().unwrap().to_owned();
    let (code, _) = api(
        scheduler.port,
        "POST",
        "/v1/schedules",
        Some(ACME_TOKEN),
        Some(json!({"cron": "0 3 * * *", "job": {"source": {"kind": "s3_prefix", "uri": small}}})),
    );
    assert_eq!(code, 201);
    let running = create_job(
        &scheduler,
        ACME_TOKEN,
        json!({"source": {"kind": "s3_prefix", "uri": bulk}}),
    );
    wait_state(
        &scheduler,
        ACME_TOKEN,
        &running,
        &["running"],
        &[&scheduler, &worker],
    )
    .await;

    // A token of the wrong tenant is refused, and erases nothing.
    let url = format!("http://127.0.0.1:{}", scheduler.port);
    let erase = |token: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_tagfleet"))
            .args([
                "erase",
                "--tenant",
                ACME,
                "--scheduler",
                &url,
                "--token",
                token,
            ])
            .output()
            .unwrap()
    };
    let refused = erase(GLOBEX_TOKEN);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("another tenant"));
    let done = erase(ACME_TOKEN);
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    let erased: Value = serde_json::from_slice(&done.stdout).unwrap();
    assert_eq!(
        (erased["jobs"].as_u64(), erased["schedules"].as_u64()),
        (Some(2), Some(1))
    );

    // The API lists nothing of acme's at once.
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
    for id in [&finished, &running] {
        let (code, _) = api(
            scheduler.port,
            "GET",
            &format!("/v1/jobs/{id}"),
            Some(ACME_TOKEN),
            None,
        );
        assert_eq!(code, 404);
    }
    // Once the worker has settled what was in flight, the bucket holds no result and no
    // schedule of acme's, and of each job only a tombstone without counts or source.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        store.list(&Area::Results.of_tenant(ACME)).await.unwrap(),
        vec![]
    );
    assert_eq!(
        store.list(&Area::Schedules.of_tenant(ACME)).await.unwrap(),
        vec![]
    );
    for object in store.list(&Area::Jobs.of_tenant(ACME)).await.unwrap() {
        let body = String::from_utf8(store.get(&object.key).await.unwrap()).unwrap();
        assert_eq!(body, r#"{"state":"cancelled","erased":true}"#);
    }
    // globex is untouched.
    let (code, job) = api(
        scheduler.port,
        "GET",
        &format!("/v1/jobs/{theirs}"),
        Some(GLOBEX_TOKEN),
        None,
    );
    assert_eq!(code, 200, "{job}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_keeps_nothing_leaves_nothing_in_our_bucket() {
    let dir = tempfile::tempdir().unwrap();
    let (photos, keys) = setup(dir.path());
    let fleet = Fleet::new("sqs", &keys, &photos);
    let store = fleet.store().await;
    let prefix = upload(&store, &photos, "private/", 1).await;
    let mut scheduler = fleet.scheduler(&dir.path().join("scheduler.log"), &[]);
    let mut worker = fleet.worker(&dir.path().join("worker.log"), &[]);
    scheduler.wait_ready().await;
    worker.wait_ready().await;
    let source = json!({"kind": "s3_prefix", "uri": prefix});

    // Without an output: the results wait for one complete read, then are deleted.
    let id = create_job(
        &scheduler,
        ACME_TOKEN,
        json!({"source": source, "options": {"retain": false}}),
    );
    wait_state(
        &scheduler,
        ACME_TOKEN,
        &id,
        &["succeeded"],
        &[&scheduler, &worker],
    )
    .await;
    let results_prefix = job_results_prefix(ACME, &id);
    assert!(!store.list(&results_prefix).await.unwrap().is_empty());
    let path = format!("/v1/jobs/{id}/results");
    let (code, body) = http(scheduler.port, "GET", &path, Some(ACME_TOKEN), None).unwrap();
    assert_eq!((code, body.lines().count()), (200, 3), "{body}");
    assert!(
        body.lines().all(|l| l.contains("\"status\":\"ok\"")),
        "{body}"
    );
    assert_eq!(
        store.list(&results_prefix).await.unwrap(),
        vec![],
        "deleted after the read"
    );
    let (code, again) = http(scheduler.port, "GET", &path, Some(ACME_TOKEN), None).unwrap();
    assert_eq!(code, 410, "{again}");
    assert!(again.contains("read once"), "{again}");
    // The record keeps counts, not the source, and a retry has nothing to go on.
    let record =
        String::from_utf8(store.get(&Key::job(ACME, &id).to_string()).await.unwrap()).unwrap();
    assert!(!record.contains("private/"), "{record}");
    assert!(record.contains("\"done\":3"), "{record}");

    // With an output of the client's: results go there, never to our results prefix.
    let output = format!("s3://{}/client-out/", store.bucket());
    let id = create_job(
        &scheduler,
        ACME_TOKEN,
        json!({"source": source, "options": {"retain": false}, "output": output}),
    );
    let job = wait_state(
        &scheduler,
        ACME_TOKEN,
        &id,
        &["succeeded"],
        &[&scheduler, &worker],
    )
    .await;
    assert_eq!(job["counts"]["done"], 3, "{job}");
    assert_eq!(
        store.list(&job_results_prefix(ACME, &id)).await.unwrap(),
        vec![]
    );
    let client = store.elsewhere(&output.parse().unwrap());
    let objects = client.list(&format!("{id}/")).await.unwrap();
    let mut lines = 0;
    for object in &objects {
        lines += String::from_utf8(client.get(&object.key).await.unwrap())
            .unwrap()
            .lines()
            .count();
    }
    assert_eq!(lines, 3, "{objects:?}");
    let (code, body) = http(
        scheduler.port,
        "GET",
        &format!("/v1/jobs/{id}/results"),
        Some(ACME_TOKEN),
        None,
    )
    .unwrap();
    assert_eq!(code, 410, "{body}");
    assert!(body.contains("output"), "{body}");
}

/// The 1-day lifecycle rule is a backstop that only works if a real store enforces its
/// shape. SeaweedFS runs its lifecycle worker on demand (`s3.lifecycle.run-shard`): our
/// rules, with an expiration date in the past instead of 1 day, must delete what is under
/// results/ and jobs/ and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_store_enforces_the_shape_of_our_lifecycle_rule() {
    use aws_sdk_s3::types::{BucketLifecycleConfiguration, LifecycleExpiration};
    let dir = tempfile::tempdir().unwrap();
    let (photos, keys) = setup(dir.path());
    let fleet = Fleet::new("amqp", &keys, &photos);
    let store = fleet.store().await;
    for key in ["results/acme/j1/t000001.jsonl", "jobs/acme/j1.json"] {
        store.put(key, b"{}\n".to_vec()).await.unwrap();
    }
    put(&store, "media/keep.jpg", b"not ours".to_vec()).await;
    let yesterday = aws_sdk_s3::primitives::DateTime::from_secs(
        (chrono::Utc::now().timestamp() / 86_400 - 1) * 86_400,
    );
    let rules = store.lifecycle_rules(LifecycleExpiration::builder().date(yesterday).build());
    assert_eq!(rules.len(), 2);
    store
        .client()
        .put_bucket_lifecycle_configuration()
        .bucket(store.bucket())
        .lifecycle_configuration(
            BucketLifecycleConfiguration::builder()
                .set_rules(Some(rules))
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();

    // -s3 takes the S3 server's gRPC port: the HTTP port + 10000. -events 0 drains every
    // shard's event log up to now.
    let s3 = common::fleet::service_env("TAGFLEET_TEST_S3_ENDPOINT");
    let http_port: u16 = s3.rsplit(':').next().unwrap().parse().unwrap();
    let command = format!(
        "s3.lifecycle.run-shard -shards 0-15 -s3 127.0.0.1:{} -events 0 -runtime 30s\n",
        http_port + 10_000
    );
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut outputs = Vec::new();
    loop {
        let mut shell =
            std::process::Command::new(common::fleet::service_env("TAGFLEET_TEST_WEED_BIN"))
                .arg("shell")
                .arg(format!(
                    "-master={}",
                    common::fleet::service_env("TAGFLEET_TEST_WEED_MASTER")
                ))
                .arg(format!(
                    "-filer={}",
                    common::fleet::service_env("TAGFLEET_TEST_WEED_FILER")
                ))
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
        use std::io::Write;
        shell
            .stdin
            .take()
            .unwrap()
            .write_all(command.as_bytes())
            .unwrap();
        let out = shell.wait_with_output().unwrap();
        outputs.push(String::from_utf8_lossy(&out.stdout).into_owned());
        let ours = store.list(Area::Results.prefix()).await.unwrap().len()
            + store.list(Area::Jobs.prefix()).await.unwrap().len();
        if ours == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{ours} of our objects survived the lifecycle run:\n{}",
            outputs.join("\n---\n")
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let kept = store
        .client()
        .head_object()
        .bucket(store.bucket())
        .key("media/keep.jpg")
        .send()
        .await;
    assert!(kept.is_ok(), "objects outside our prefixes stay");
}
