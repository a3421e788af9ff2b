//! The fleet leg of `tagfleet bench`: the same corpus submitted to a real queue and
//! processed by a `tagfleet worker` child writing to a real store, timed from the
//! worker's start to the last result object.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tagfleet_contracts::TenantKey;
use tagfleet_contracts::keys::job_results_prefix;

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
    let keys = work.join("keys");
    std::fs::create_dir_all(&keys)?;
    let key = TenantKey::load_or_create(&keys.join(format!("{TENANT}.key")))?;
    let secrets = keys.join("secrets.toml");
    std::fs::write(
        &secrets,
        format!("[tenants.{TENANT}]\nkey = \"{}\"\n", key.secret_hex()),
    )?;
    let queue_name = format!("bench-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let queue_url = queue.replace("{name}", &queue_name);
    let common: Vec<String> = [
        vec![
            "--queue".to_owned(),
            queue_url.clone(),
            "--queue-name".into(),
            queue_name.clone(),
        ],
        extra_queue_args.to_vec(),
    ]
    .concat();

    let submit = Command::new(&exe)
        .arg("submit")
        .arg(corpus)
        .args(["--tenant", TENANT, "--log", "warn"])
        .args(&common)
        .output()
        .context("running tagfleet submit")?;
    if !submit.status.success() {
        bail!(
            "tagfleet submit failed: {}",
            String::from_utf8_lossy(&submit.stderr)
        );
    }
    let job = String::from_utf8_lossy(&submit.stdout).trim().to_owned();
    let tasks = images.div_ceil(32);

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
    let prefix = job_results_prefix(TENANT, &job);
    let deadline = start + Duration::from_secs(1800);
    let finished = loop {
        if opened.store.list(&prefix).await?.len() >= tasks {
            break start.elapsed();
        }
        if let Some(status) = worker.try_wait()? {
            bail!("the worker exited early: {status}");
        }
        if Instant::now() > deadline {
            let _ = worker.kill();
            bail!("the fleet job did not finish in 30 minutes");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // SAFETY: kill(2) with a child's pid only sends it a signal.
    unsafe { libc::kill(worker.id() as i32, libc::SIGTERM) };
    let _ = worker.wait();
    Ok(images as f64 / finished.as_secs_f64())
}
