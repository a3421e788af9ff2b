//! Schedules against the real scheduler and services: crons that never fire or fire too
//! often are refused, schedules keep refs only as long as the privacy promises allow, and
//! erasing a tenant's data leaves no schedule or job behind, even mid-firing.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::common::fleet::{Fleet, Worker, api, write_secrets};
use crate::common::*;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use tagfleet_contracts::keys::{Area, Key};
use tagfleet_io::ObjectStore;

const ACME: &str = "acme";
const ACME_TOKEN: &str = "acme-token-0c4d";
const FAST: [(&str, &str); 1] = [("TAGFLEET_MIN_SCHEDULE_INTERVAL_SECS", "1")];

/// A photo, and the tenant, which may read `s3://media/`.
fn setup(dir: &Path) -> (PathBuf, PathBuf) {
    let photos = dir.join("photos");
    copy_photos(&photos, &[("rocket.jpg", "rocket.jpg")]);
    let keys = dir.join("keys");
    write_secrets(&keys, &[(ACME, &"ab".repeat(32), Some(ACME_TOKEN))]);
    let secrets = keys.join("secrets.toml");
    let text = std::fs::read_to_string(&secrets).unwrap();
    std::fs::write(secrets, format!("{text}sources = [\"s3://media/\"]\n")).unwrap();
    (photos, keys)
}

fn create(scheduler: &Worker, body: Value) -> (u16, Value) {
    api(
        scheduler.port,
        "POST",
        "/v1/schedules",
        Some(ACME_TOKEN),
        Some(body),
    )
}

fn every(cron: &str) -> Value {
    json!({"cron": cron, "job": {"source": {"kind": "urls", "urls": ["https://93.184.216.34/a.jpg"]}}})
}

fn list(scheduler: &Worker, what: &str) -> Value {
    let (code, body) = api(scheduler.port, "GET", what, Some(ACME_TOKEN), None);
    assert_eq!(code, 200, "{what}: {body}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crons_that_never_fire_or_fire_too_often_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (photos, keys) = setup(dir.path());
    let fleet = Fleet::new("amqp", &keys, &photos);
    fleet.store().await;
    let mut scheduler = fleet.scheduler(&dir.path().join("scheduler.log"), &[]);
    scheduler.wait_ready().await;

    // Dates that do not exist: refused at once, however many come.
    for cron in ["0 0 30 2 *", "0 0 31 4 *", "0 0 0 31 11 *"] {
        let (code, answer) = create(&scheduler, every(cron));
        assert_eq!(
            (code, answer["field"].as_str()),
            (400, Some("cron")),
            "{cron}: {answer}"
        );
        assert!(
            answer["error"].as_str().unwrap().contains("never"),
            "{answer}"
        );
    }
    for _ in 0..50 {
        let (code, _) = create(&scheduler, every("0 0 30 2 *"));
        assert_eq!(code, 400);
    }
    let (code, _) = api(scheduler.port, "GET", "/healthz", None, None);
    assert_eq!(code, 200);

    // Under the default minimum interval (5 minutes): refused, naming the minimum.
    for cron in [
        "* * * * * *",
        "*/10 * * * * *",
        "*/2 * * * *",
        "59,0 * * * *",
    ] {
        let (code, answer) = create(&scheduler, every(cron));
        assert_eq!(
            (code, answer["field"].as_str()),
            (400, Some("cron")),
            "{cron}: {answer}"
        );
        assert!(
            answer["error"].as_str().unwrap().contains("300"),
            "{answer}"
        );
    }
    for cron in ["*/5 * * * *", "0 2 * * *", "0 0 29 2 *"] {
        let (code, answer) = create(&scheduler, every(cron));
        assert_eq!(code, 201, "{cron}: {answer}");
        assert!(answer["next_firing"].is_string(), "{answer}");
    }
    assert_eq!(
        list(&scheduler, "/v1/schedules").as_array().unwrap().len(),
        3
    );
    drop(scheduler);

    // An operator may lower the minimum; dates that do not exist stay refused.
    let mut scheduler = fleet.scheduler(
        &dir.path().join("scheduler-fast.log"),
        &["--min-schedule-interval-secs", "1"],
    );
    scheduler.wait_ready().await;
    let (code, answer) = create(&scheduler, every("* * * * * *"));
    assert_eq!(code, 201, "{answer}");
    let (code, answer) = create(&scheduler, every("0 0 30 2 *"));
    assert_eq!(
        (code, answer["field"].as_str()),
        (400, Some("cron")),
        "{answer}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedules_keep_refs_only_within_their_retention() {
    let dir = tempfile::tempdir().unwrap();
    let (photos, keys) = setup(dir.path());
    let fleet = Fleet::new("amqp", &keys, &photos);
    let store = fleet.store().await;

    // Schedules written long ago: one holds refs, one only a prefix.
    let created = Utc::now() - chrono::Duration::days(40);
    let old = |id: &str, source: Value| {
        json!({"id": id, "tenant": ACME, "cron": "0 0 * * * *", "time_zone": "UTC",
               "job": {"source": source}, "created_at": created,
               "last_fired": null, "last_job": null, "last_error": null})
    };
    let (with_refs, prefix_only) = (
        "0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a",
        "0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b",
    );
    for (id, source) in [
        (
            with_refs,
            json!({"kind": "manifest", "inline": "s3://media/OldRefMarker5531.jpg\n"}),
        ),
        (
            prefix_only,
            json!({"kind": "s3_prefix", "uri": "s3://media/2026/"}),
        ),
    ] {
        let key = Key::schedule(ACME, id).to_string();
        let body = serde_json::to_vec(&old(id, source)).unwrap();
        store.put(&key, body).await.unwrap();
    }

    let mut scheduler = fleet.scheduler(&dir.path().join("scheduler.log"), &[]);
    scheduler.wait_ready().await;
    // The one holding refs is past the retention of schedules (30 days): gone from the
    // store before the scheduler says it is ready, so it never fired.
    let kept: Vec<String> = store
        .list(&Area::Schedules.of_tenant(ACME))
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert_eq!(kept, [Key::schedule(ACME, prefix_only).to_string()]);
    let listed = list(&scheduler, "/v1/schedules");
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed[0]["id"], prefix_only);
    assert!(listed[0]["expires_at"].is_null(), "{listed}");
    assert_eq!(list(&scheduler, "/v1/jobs")["jobs"], json!([]));

    // A job that keeps nothing cannot be a schedule that keeps its refs.
    for source in [
        json!({"kind": "manifest", "inline": "s3://media/a.jpg\n"}),
        json!({"kind": "urls", "urls": ["https://93.184.216.34/a.jpg"]}),
    ] {
        let (code, answer) = create(
            &scheduler,
            json!({"cron": "0 2 * * *", "job": {"source": source, "options": {"retain": false}}}),
        );
        assert_eq!(
            (code, answer["field"].as_str()),
            (400, Some("job.source")),
            "{answer}"
        );
    }
    let (code, answer) = create(
        &scheduler,
        json!({"cron": "0 2 * * *", "job": {"source": {"kind": "s3_prefix", "uri": "s3://media/2026/"},
                                              "options": {"retain": false}}}),
    );
    assert_eq!(code, 201, "{answer}");
    assert!(answer["expires_at"].is_null(), "{answer}");
    // Refs kept in a schedule expire with it, 30 days after it was created.
    let (code, answer) = create(
        &scheduler,
        json!({"cron": "0 2 * * *", "job": {"source": {"kind": "manifest", "inline": "s3://media/a.jpg\n"}}}),
    );
    assert_eq!(code, 201, "{answer}");
    let at = |field: &str| {
        answer[field]
            .as_str()
            .unwrap()
            .parse::<DateTime<Utc>>()
            .unwrap()
    };
    assert_eq!(
        at("expires_at") - at("created_at"),
        chrono::Duration::days(30),
        "{answer}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasing_a_tenant_mid_firing_leaves_no_schedule_and_no_job() {
    let dir = tempfile::tempdir().unwrap();
    let (photos, keys) = setup(dir.path());
    let fleet = Fleet::new("amqp", &keys, &photos);
    let store = fleet.store().await;
    let log = dir.path().join("scheduler.log");
    let mut scheduler = fleet.scheduler_with_env(&log, &[], &FAST);
    scheduler.wait_ready().await;
    // A big manifest makes each firing long (hundreds of task messages to publish), so an
    // erasure often lands in the middle of one.
    let manifest: String = (0..20_000)
        .map(|i| format!("https://93.184.216.34/race/{i:05}.jpg\n"))
        .collect();
    let spec = json!({"cron": "* * * * * *",
                      "job": {"source": {"kind": "manifest", "inline": manifest}}});
    let schedules_left = || async {
        store
            .list(&Area::Schedules.of_tenant(ACME))
            .await
            .unwrap()
            .len()
    };
    for round in 0..6u64 {
        let (code, schedule) = create(&scheduler, spec.clone());
        assert_eq!(code, 201, "{schedule}");
        let sid = schedule["id"].as_str().unwrap().to_owned();
        // Let it fire once, then erase at another point of the firing cycle each round.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (_, s) = api(
                scheduler.port,
                "GET",
                &format!("/v1/schedules/{sid}"),
                Some(ACME_TOKEN),
                None,
            );
            if s["last_job"].is_string() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no firing: {s}\n{}",
                scheduler.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(round * 170)).await;
        let (code, erased) = api(
            scheduler.port,
            "DELETE",
            &format!("/v1/data?tenant={ACME}"),
            Some(ACME_TOKEN),
            None,
        );
        assert_eq!(code, 200, "{erased}");
        // Nothing is left, in memory or in the store, and nothing comes back.
        assert_eq!(
            list(&scheduler, "/v1/schedules"),
            json!([]),
            "round {round}"
        );
        assert_eq!(
            list(&scheduler, "/v1/jobs")["jobs"],
            json!([]),
            "round {round}"
        );
        assert_eq!(
            schedules_left().await,
            0,
            "round {round}: a schedule was written back"
        );
    }

    // A restarted scheduler finds nothing to fire.
    drop(scheduler);
    let mut scheduler = fleet.scheduler_with_env(&log, &[], &FAST);
    scheduler.wait_ready().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(list(&scheduler, "/v1/schedules"), json!([]));
    assert_eq!(list(&scheduler, "/v1/jobs")["jobs"], json!([]));
    assert_eq!(schedules_left().await, 0);
}
