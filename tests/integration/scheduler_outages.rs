//! The scheduler through the failures it must survive: its store down while reports
//! arrive, a crash in the middle, background work that cannot run. Every job still ends
//! with the right counts, and a scheduler that cannot count says so and exits.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;
use tagfleet_contracts::retention::DEFAULT_RETENTION;
use tagfleet_io::queue::{RabbitOptions, RabbitQueue};

use crate::common::fleet::{
    Fleet, Worker, create_job, free_port, service_env, upload, wait_state, write_secrets,
};
use crate::common::private_s3::PrivateS3;
use crate::common::{copy_photos, repo};

const ACME: &str = "acme";
const ACME_TOKEN: &str = "acme-token-31c7";

/// The fleet's progress queue, as its processes declare it.
async fn progress_queue(fleet: &Fleet) -> RabbitQueue {
    RabbitQueue::connect(RabbitOptions {
        url: service_env("TAGFLEET_TEST_AMQP_URL"),
        queue: format!("{}.progress", fleet.queue_name),
        delivery_limit: 3,
        prefetch: 1,
        // The processes' default retention: RabbitMQ refuses another dead-letter TTL.
        message_ttl: Some(DEFAULT_RETENTION),
    })
    .await
    .unwrap()
}

/// Messages in `queue`, ready and unacknowledged, from RabbitMQ's management API (whose
/// figures lag by a few seconds).
async fn messages_in(queue: &str) -> u64 {
    let url = format!(
        "{}/api/queues/%2f/{queue}",
        service_env("TAGFLEET_TEST_RABBITMQ_MGMT")
    );
    let answer: serde_json::Value = reqwest::Client::new()
        .get(&url)
        .basic_auth("guest", Some("guest"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    answer["messages"].as_u64().unwrap_or(u64::MAX)
}

/// The scheduler's store goes down while it counts the reports of a whole job, and the
/// scheduler is killed before the store comes back. The reports were never acked (and
/// not dead-lettered either), the result objects are there: a new scheduler on the same
/// store ends the job with every image counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_ends_with_all_its_counts_after_a_store_outage_and_a_scheduler_crash() {
    let dir = tempfile::tempdir().unwrap();
    let photos = dir.path().join("photos");
    copy_photos(
        &photos,
        &[
            ("chelsea.png", "chelsea.png"),
            ("coffee.png", "coffee.png"),
            ("rocket.jpg", "rocket.jpg"),
            ("astronaut.png", "astronaut.png"),
        ],
    );
    let keys = dir.path().join("keys");
    write_secrets(&keys, &[(ACME, &"ab".repeat(32), Some(ACME_TOKEN))]);
    let mut s3 = PrivateS3::start_new().await;
    let fleet = Fleet {
        s3_endpoint: s3.endpoint(),
        ..Fleet::new("amqp", &keys, &photos)
    };
    let store = fleet.store().await;
    // 32 images in 8 tasks of 4.
    let prefix = upload(&store, &photos, "media/", 8).await;
    let log = dir.path().join("scheduler.log");
    let mut first = fleet.scheduler(&log, &["--chunk-size", "4"]);
    first.wait_ready().await;
    let id = create_job(
        &first,
        ACME_TOKEN,
        json!({"source": {"kind": "s3_prefix", "uri": prefix}}),
    );

    // The scheduler is held while a worker runs the whole job: the reports wait for it.
    first.signal("STOP");
    let mut worker = fleet.worker(&dir.path().join("worker.log"), &[]);
    worker.wait_ready().await;
    fleet.wait_for_results(&store, ACME, &id, 8, &worker).await;
    // Drained: every report is published (and held by the stopped scheduler's consumer).
    worker.signal("TERM");
    worker.wait_exit(Duration::from_secs(60)).await;
    let progress = progress_queue(&fleet).await;

    // The store goes down; the scheduler counts the reports and cannot write its records.
    s3.stop();
    first.signal("CONT");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !first.logs().contains("writing job records failed") {
        assert!(
            Instant::now() < deadline,
            "no failed write:\n{}",
            first.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Long enough for requeues to have spent all 3 deliveries of every report.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let dead_letters = progress.options().dead_letter_queue();
    assert_eq!(
        progress.message_count(&dead_letters).await.unwrap(),
        0,
        "reports were dead-lettered:\n{}",
        first.logs()
    );

    // It crashes; the store comes back; a new scheduler takes over the same store.
    first.signal("KILL");
    first.wait_exit(Duration::from_secs(10)).await;
    s3.start().await;
    let mut second = fleet.scheduler(&log, &["--chunk-size", "4"]);
    second.wait_ready().await;
    let job = wait_state(&second, ACME_TOKEN, &id, &["final"], &[&second]).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    let counts = &job["counts"];
    assert_eq!(
        [
            &counts["total"],
            &counts["done"],
            &counts["failed"],
            &counts["unfinished"]
        ],
        [32, 32, 0, 0],
        "{job}"
    );
    assert_eq!(job["error"], serde_json::Value::Null, "{job}");
    // The reports the first one held came back to the second one, which acked them.
    let deadline = Instant::now() + Duration::from_secs(30);
    let queue = &progress.options().queue;
    while messages_in(queue).await != 0 {
        assert!(
            Instant::now() < deadline,
            "{queue} still holds reports:\n{}",
            second.logs()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(progress.message_count(&dead_letters).await.unwrap(), 0);
}

/// Starts `tagfleet scheduler` on a folder store and in-process queues: no service needed.
fn scheduler_on_folder(store: &Path, dir: &Path) -> Worker {
    let keys = dir.join("keys");
    write_secrets(&keys, &[(ACME, &"ab".repeat(32), Some(ACME_TOKEN))]);
    let log = dir.join("scheduler.log");
    let port = free_port();
    let metrics_port = free_port();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_tagfleet"))
        .arg("scheduler")
        .args(["--queue", "memory"])
        .arg("--store")
        .arg(format!("file://{}", store.display()))
        .arg("--secrets")
        .arg(keys.join("secrets.toml"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--metrics-listen", &format!("127.0.0.1:{metrics_port}")])
        .env("TAGFLEET_LOG", "info")
        .current_dir(repo())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    Worker {
        child,
        port,
        metrics_port,
        log,
    }
}

/// A scheduler that cannot load its store cannot count progress: it logs why at once, at
/// error level, and exits non-zero rather than serve an API that never becomes ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduler_whose_background_work_fails_says_why_and_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    std::fs::create_dir_all(&store).unwrap();
    // `jobs` is a file, not a folder: listing the job records fails.
    std::fs::write(store.join("jobs"), b"").unwrap();
    let mut scheduler = scheduler_on_folder(&store, dir.path());
    let status = scheduler.wait_exit(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(1), "{}", scheduler.logs());
    let logs = scheduler.logs();
    let failure = logs
        .lines()
        .find(|l| l.contains("background work failed"))
        .unwrap_or_else(|| panic!("no failure logged:\n{logs}"));
    assert!(failure.contains("ERROR"), "{failure}");
    assert!(failure.contains("loading the job records"), "{failure}");
}
