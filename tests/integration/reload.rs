//! A worker's tenants follow its secrets file: Kubernetes updates a mounted Secret in
//! place, and a tenant added there is served without a restart.

use std::time::{Duration, Instant};

use crate::common::copy_photos;
use crate::common::fleet::{Fleet, write_secrets};
use crate::outages::task_queue;

/// A task of a tenant the worker does not know yet is held, not dead-lettered; once the
/// secrets file names the tenant, the worker reloads it and runs the task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_added_to_the_secrets_file_is_served_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let photos = dir.path().join("photos");
    copy_photos(
        &photos,
        &[("coffee.png", "coffee.png"), ("chelsea.png", "chelsea.png")],
    );
    let keys = dir.path().join("keys");
    write_secrets(&keys, &[("acme", &"ab".repeat(32), None)]);
    let fleet = Fleet::new("amqp", &keys, &photos);
    let store = fleet.store().await;
    let mut worker = fleet.worker(&dir.path().join("worker.log"), &[]);
    worker.wait_ready().await;

    let job = fleet.submit(&photos, "beta", &[]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !worker.logs().contains("holding it for a reload") {
        assert!(Instant::now() < deadline, "not held:\n{}", worker.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    write_secrets(
        &keys,
        &[
            ("acme", &"ab".repeat(32), None),
            ("beta", &"cd".repeat(32), None),
        ],
    );

    let lines = fleet
        .wait_for_results(&store, "beta", &job, 1, &worker)
        .await;
    assert_eq!(lines.len(), 2);
    assert!(lines.iter().all(|l| l["status"] == "ok"), "{lines:?}");
    assert!(worker.logs().contains("tenant keys loaded"));
    let queue = task_queue(&fleet).await;
    let dead = queue.options().dead_letter_queue();
    assert_eq!(
        queue.message_count(&dead).await.unwrap(),
        0,
        "nothing dead-lettered"
    );
}
