//! The tenant fence against the real services: the fleet reads and writes S3 with one
//! role, so each tenant's allow-lists are all that keeps it out of another's data. The
//! scheduler refuses before any S3 call; the worker checks again before every fetch and
//! write, for messages that reach the queue some other way.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tagfleet_contracts::keys::{Area, job_results_prefix};
use tagfleet_io::store::S3Store;
use tagfleet_io::{ObjectStore, Queue};

use crate::common::copy_photos;
use crate::common::fleet::{Fleet, Worker, api, create_job, put, unique, upload, write_secrets};

const ACME: &str = "acme";
const ACME_TOKEN: &str = "acme-fence-token-5521";
const GREEDY: &str = "greedy";
const GREEDY_TOKEN: &str = "greedy-fence-token-7730";
/// Text inside globex's objects that must never reach acme.
const MARKER: &str = "GlobexPrivateMarker8841";

/// acme may read and write only under acme/ of the fleet's bucket; greedy's lists name
/// the whole bucket, the fleet's own store included.
fn setup(dir: &Path, bucket: &str) -> (PathBuf, PathBuf) {
    let photos = dir.join("photos");
    copy_photos(
        &photos,
        &[("coffee.png", "coffee.png"), ("rocket.jpg", "rocket.jpg")],
    );
    let keys = dir.join("keys");
    write_secrets(
        &keys,
        &[
            (ACME, &"ab".repeat(32), Some(ACME_TOKEN)),
            (GREEDY, &"cd".repeat(32), Some(GREEDY_TOKEN)),
            ("globex", &"ef".repeat(32), None),
        ],
    );
    let path = keys.join("secrets.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let lists = |tenant: &str, folder: &str| {
        format!(
            "[tenants.{tenant}]\nsources = [\"s3://{bucket}/{folder}\"]\noutputs = [\"s3://{bucket}/{folder}\"]\n"
        )
    };
    let text = text
        .replace(&format!("[tenants.{ACME}]\n"), &lists(ACME, "acme/"))
        .replace(&format!("[tenants.{GREEDY}]\n"), &lists(GREEDY, ""))
        .replace("[tenants.globex]\n", &lists("globex", "globex/"));
    std::fs::write(&path, text).unwrap();
    (photos, keys)
}

/// A fleet whose bucket holds the photos under acme/photos/ and globex/photos/.
async fn fenced_fleet(dir: &Path) -> (Fleet, S3Store) {
    let probe = Fleet::new("amqp", dir, dir);
    let (photos, keys) = setup(dir, &probe.bucket);
    let fleet = Fleet {
        keys_dir: keys,
        file_root: photos.clone(),
        ..probe
    };
    let store = fleet.store().await;
    upload(&store, &photos, "acme/photos/", 1).await;
    upload(&store, &photos, "globex/photos/", 1).await;
    (fleet, store)
}

fn post_job(scheduler: &Worker, token: &str, spec: Value) -> (u16, Value) {
    api(scheduler.port, "POST", "/v1/jobs", Some(token), Some(spec))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_cannot_name_another_tenants_data_or_the_fleets_store() {
    let dir = tempfile::tempdir().unwrap();
    let (fleet, store) = fenced_fleet(dir.path()).await;
    let bucket = store.bucket().to_owned();
    put(
        &store,
        "globex/list.txt",
        format!("s3://{bucket}/globex/photos/coffee.png\n# {MARKER}\n").into_bytes(),
    )
    .await;
    let log = dir.path().join("scheduler.log");
    let mut scheduler = fleet.scheduler(&log, &[]);
    scheduler.wait_ready().await;

    // Another tenant's prefix answers exactly as a missing one would: no key oracle.
    let present = post_job(
        &scheduler,
        ACME_TOKEN,
        json!({"source": {"kind": "s3_prefix", "uri": format!("s3://{bucket}/globex/photos/")}}),
    );
    let missing = post_job(
        &scheduler,
        ACME_TOKEN,
        json!({"source": {"kind": "s3_prefix", "uri": format!("s3://{bucket}/globex/nothing/")}}),
    );
    assert_eq!(present.0, 403, "{}", present.1);
    assert_eq!(present.1["field"], "source.uri");
    assert_eq!(present, missing);
    let elsewhere = post_job(
        &scheduler,
        ACME_TOKEN,
        json!({"source": {"kind": "s3_prefix", "uri": format!("s3://{}/photos/", unique("other"))}}),
    );
    assert_eq!(elsewhere, present, "another bucket: the same answer");

    let refusals = [
        // Another tenant's manifest, whose text must not come back.
        (
            ACME_TOKEN,
            json!({"source": {"kind": "manifest", "uri": format!("s3://{bucket}/globex/list.txt")}}),
            403,
            "source.uri",
        ),
        // A ref to another tenant's image inside one's own inline manifest.
        (
            ACME_TOKEN,
            json!({"source": {"kind": "manifest", "inline": format!(
                "s3://{bucket}/acme/photos/coffee.png\ns3://{bucket}/globex/photos/rocket.jpg\n")}}),
            403,
            "source.inline",
        ),
        // Output into another tenant's folder.
        (
            ACME_TOKEN,
            json!({"source": {"kind": "s3_prefix", "uri": format!("s3://{bucket}/acme/photos/")},
                   "output": format!("s3://{bucket}/globex/out/")}),
            403,
            "output",
        ),
        // The fleet's own store, although greedy's lists name the whole bucket: job
        // records as a source, another tenant's results as an output.
        (
            GREEDY_TOKEN,
            json!({"source": {"kind": "s3_prefix", "uri": format!("s3://{bucket}/fleet/{}", Area::Jobs.prefix())}}),
            403,
            "source.uri",
        ),
        (
            GREEDY_TOKEN,
            json!({"source": {"kind": "s3_prefix", "uri": format!("s3://{bucket}/globex/photos/")},
                   "output": format!("s3://{bucket}/fleet/{}", job_results_prefix("globex", "j1"))}),
            403,
            "output",
        ),
        // A whole bucket that holds the store is around it: refused too.
        (
            GREEDY_TOKEN,
            json!({"source": {"kind": "s3_prefix", "uri": format!("s3://{bucket}/")}}),
            403,
            "source.uri",
        ),
        // file:// refs are for tagfleet run.
        (
            ACME_TOKEN,
            json!({"source": {"kind": "manifest", "inline": "file:///etc/passwd\n"}}),
            400,
            "source.inline",
        ),
    ];
    for (token, spec, code, field) in refusals {
        let (got, body) = post_job(&scheduler, token, spec.clone());
        assert_eq!(
            (got, body["field"].as_str()),
            (code, Some(field)),
            "{spec}: {body}"
        );
        let text = body.to_string();
        assert!(!text.contains(MARKER) && !text.contains("passwd"), "{text}");
        assert!(
            !text.contains("rocket"),
            "a refusal never quotes a ref: {text}"
        );
    }
    // A schedule is checked when it is made, not only when it fires.
    let (code, body) = api(
        scheduler.port,
        "POST",
        "/v1/schedules",
        Some(ACME_TOKEN),
        Some(json!({"cron": "0 2 * * *", "job": {
            "source": {"kind": "s3_prefix", "uri": format!("s3://{bucket}/acme/photos/")},
            "output": format!("s3://{bucket}/globex/out/")}})),
    );
    assert_eq!(
        (code, body["field"].as_str()),
        (403, Some("job.output")),
        "{body}"
    );

    // Nothing was written for any refused job, and acme's own data still works.
    assert!(store.list(Area::Jobs.prefix()).await.unwrap().is_empty());
    let id = create_job(
        &scheduler,
        ACME_TOKEN,
        json!({"source": {"kind": "s3_prefix", "uri": format!("s3://{bucket}/acme/photos/")}}),
    );
    let (code, job) = api(
        scheduler.port,
        "GET",
        &format!("/v1/jobs/{id}"),
        Some(ACME_TOKEN),
        None,
    );
    assert_eq!(
        (code, job["counts"]["total"].as_u64()),
        (200, Some(2)),
        "{job}"
    );
    scheduler.signal("TERM");
    scheduler.wait_exit(Duration::from_secs(30)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_refuses_refs_and_outputs_outside_the_tasks_tenant_whatever_the_queue_says() {
    use tagfleet_io::queue::{RabbitOptions, RabbitQueue};
    let dir = tempfile::tempdir().unwrap();
    let (fleet, store) = fenced_fleet(dir.path()).await;
    let bucket = store.bucket().to_owned();
    let queue = RabbitQueue::connect(RabbitOptions {
        url: fleet.queue.clone(),
        queue: fleet.task_queue(),
        delivery_limit: 3,
        prefetch: 1,
        message_ttl: Some(tagfleet_contracts::retention::DEFAULT_RETENTION),
    })
    .await
    .unwrap();
    // Tasks as only someone with access to the broker could send them.
    let task = |task_id: &str, refs: &[String], output: Option<String>| {
        json!({
            "v": 1, "job_id": "crafted", "task_id": task_id, "tenant": ACME,
            "analyses": ["tags"], "model": "efficientnet-lite0@1", "output": output,
            "created_at": chrono::Utc::now(),
            "items": refs.iter().map(|r| json!({"ref": r})).collect::<Vec<_>>(),
        })
        .to_string()
        .into_bytes()
    };
    let own = format!("s3://{bucket}/acme/photos/coffee.png");
    let theirs = format!("s3://{bucket}/globex/photos/rocket.jpg");
    let store_object = format!("s3://{bucket}/fleet/{}", Area::Jobs.prefix());
    queue
        .publish(task(
            "t000001",
            &[own.clone(), theirs, format!("{store_object}x.json")],
            None,
        ))
        .await
        .unwrap();
    queue
        .publish(task(
            "t000002",
            &[own],
            Some(format!("s3://{bucket}/globex/out/")),
        ))
        .await
        .unwrap();
    let log = dir.path().join("worker.log");
    let mut worker = fleet.worker(&log, &[]);

    // The first task: its own image tagged, the others refused as fetch errors.
    let lines = fleet
        .wait_for_results(&store, ACME, "crafted", 1, &worker)
        .await;
    let body = serde_json::to_string(&lines).unwrap();
    let statuses: Vec<(&str, &str)> = lines
        .iter()
        .map(|l| {
            (
                l["status"].as_str().unwrap(),
                l["error"]["kind"].as_str().unwrap_or("-"),
            )
        })
        .collect();
    assert_eq!(
        statuses,
        [("ok", "-"), ("error", "fetch"), ("error", "fetch")],
        "{body}"
    );
    assert_eq!(
        (&lines[1]["error"]["message"], &lines[2]["error"]["message"]),
        (
            &json!("not a location this tenant may use"),
            &json!("the fleet's own store is never a source or an output")
        )
    );

    // The second task: nothing written into globex's folder, nor into ours, and the
    // message is dead-lettered at once rather than retried.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let depth = queue.depth().await.unwrap().unwrap();
        if depth.dead_lettered == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "{depth:?}\n{}", worker.logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let foreign = store.elsewhere(&format!("s3://{bucket}/globex/out/").parse().unwrap());
    assert!(foreign.list("").await.unwrap().is_empty());
    assert_eq!(
        store
            .list(&job_results_prefix(ACME, "crafted"))
            .await
            .unwrap()
            .len(),
        1
    );
    worker.signal("TERM");
    worker.wait_exit(Duration::from_secs(60)).await;
    queue.delete().await.unwrap();
}
