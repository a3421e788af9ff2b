//! The fleet leg of `tagfleet bench`: the same corpus submitted to a real queue and
//! processed by a `tagfleet worker` child writing to a real store, timed from the
//! worker's start to the last result object.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tagfleet_contracts::TenantKey;
use tagfleet_contracts::keys::job_results_prefix;
use tagfleet_io::ObjectStore;

use crate::io_args::StoreArgs;

const TENANT: &str = "bench";

/// Images per second of a worker on `queue` for `images` images in `corpus`.
pub async fn measure(
    queue: &str,
    store: &StoreArgs,
    extra_queue_args: &[String],
    corpus: &Path,
    work: &Path,
    images: usize,
    max_batch: usize,
) -> anyhow::Result<f64> {
    let exe = std::env::current_exe().context("finding the tagfleet binary")?;
    let secrets = write_secrets(work)?;
    let queue_name = format!("bench-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let common: Vec<String> = [
        vec![
            "--queue".to_owned(),
            queue.replace("{name}", &queue_name),
            "--queue-name".into(),
            queue_name.clone(),
        ],
        extra_queue_args.to_vec(),
    ]
    .concat();
    let job = submit(&exe, corpus, &common)?;

    if let Some(options) = store.s3_options(None)? {
        // The bench's bucket may be new; the worker sets its lifecycle rule at start.
        tagfleet_io::store::S3Store::connect(options)
            .await
            .ensure_bucket()
            .await?;
    }
    let opened = store.open(None).await?;
    let start = Instant::now();
    let mut worker = Command::new(&exe)
        .arg("worker")
        .args(&common)
        .args([
            "--store",
            &store.store,
            "--log",
            "warn",
            "--listen",
            "127.0.0.1:0",
        ])
        .args(
            store
                .s3_endpoint
                .as_ref()
                .map(|e| vec!["--s3-endpoint".to_owned(), e.clone()])
                .unwrap_or_default(),
        )
        .arg("--secrets")
        .arg(&secrets)
        .arg("--file-root")
        .arg(corpus)
        .args(["--max-batch", &max_batch.to_string()])
        .stdout(Stdio::null())
        .spawn()
        .context("starting tagfleet worker")?;
    let finished = wait_for_results(
        &*opened.store,
        &job,
        images.div_ceil(32),
        start,
        &mut worker,
    )
    .await;
    // SAFETY: kill(2) with a child's pid only sends it a signal.
    unsafe { libc::kill(worker.id() as i32, libc::SIGTERM) };
    let _ = worker.wait();
    Ok(images as f64 / finished?.as_secs_f64())
}

/// A secrets file with a fresh key for the bench's tenant.
fn write_secrets(work: &Path) -> anyhow::Result<PathBuf> {
    let keys = work.join("keys");
    std::fs::create_dir_all(&keys)?;
    let key = TenantKey::load_or_create(&keys.join(format!("{TENANT}.key")))?;
    let secrets = keys.join("secrets.toml");
    std::fs::write(
        &secrets,
        format!("[tenants.{TENANT}]\nkey = \"{}\"\n", key.secret_hex()),
    )?;
    Ok(secrets)
}

/// Submits the corpus straight to the queue; returns the job id.
fn submit(exe: &Path, corpus: &Path, queue_args: &[String]) -> anyhow::Result<String> {
    let submit = Command::new(exe)
        .arg("submit")
        .arg(corpus)
        .args(["--tenant", TENANT, "--log", "warn"])
        .args(queue_args)
        .output()
        .context("running tagfleet submit")?;
    if !submit.status.success() {
        bail!(
            "tagfleet submit failed: {}",
            String::from_utf8_lossy(&submit.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&submit.stdout).trim().to_owned())
}

/// Waits until the job has `tasks` result objects; returns how long that took since
/// `start` (the worker's start).
async fn wait_for_results(
    store: &dyn ObjectStore,
    job: &str,
    tasks: usize,
    start: Instant,
    worker: &mut Child,
) -> anyhow::Result<Duration> {
    let prefix = job_results_prefix(TENANT, job);
    let deadline = start + Duration::from_secs(1800);
    loop {
        if store.list(&prefix).await?.len() >= tasks {
            return Ok(start.elapsed());
        }
        if let Some(status) = worker.try_wait()? {
            bail!("the worker exited early: {status}");
        }
        if Instant::now() > deadline {
            let _ = worker.kill();
            bail!("the fleet job did not finish in 30 minutes");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
