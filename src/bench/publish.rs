//! `tagfleet bench --publish-queue amqp://…`: how fast the scheduler turns a big manifest
//! into task messages on RabbitMQ. Times the real path of `POST /v1/jobs` with an inline
//! manifest: parse, check every ref, chunk, write the job record, publish with confirms.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use tagfleet_contracts::Secrets;
use tagfleet_contracts::routing;
use tagfleet_io::ObjectStore;
use tagfleet_io::netguard::UrlPolicy;
use tagfleet_io::queue::{RabbitOptions, RabbitQueue, TaskQueues};
use tagfleet_io::store::FsStore;
use tagfleet_scheduler::spec::{JobSpec, ManifestFormat, Source};
use tagfleet_scheduler::{SchedulerConfig, Service};

/// The refs/s the scheduler should reach into RabbitMQ on a 2-core machine.
const TARGET_REFS_PER_SECOND: f64 = 50_000.0;

/// The model of the bench's job: its task queue is the one timed.
const MODEL: &str = "efficientnet-lite0@1";

pub async fn run(url: &str, refs: usize, chunk_size: usize) -> anyhow::Result<i32> {
    if !(url.starts_with("amqp://") || url.starts_with("amqps://")) {
        anyhow::bail!("--publish-queue {url:?}: expected an amqp:// URL");
    }
    let base = format!(
        "bench-publish-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let rabbit = Arc::new(
        RabbitQueue::connect(RabbitOptions {
            url: url.to_owned(),
            queue: routing::task_queue(&base, MODEL)?,
            delivery_limit: tagfleet_io::queue::DEFAULT_DELIVERY_LIMIT,
            prefetch: 1,
            message_ttl: Some(tagfleet_contracts::retention::DEFAULT_RETENTION),
        })
        .await
        .context("connecting to RabbitMQ")?,
    );
    let dir = tempfile::tempdir()?;
    let store: Arc<dyn ObjectStore> = Arc::new(FsStore::new(dir.path().to_path_buf(), None)?);
    let stanza = tagfleet_contracts::secrets::new_tenant("bench")
        .map_err(anyhow::Error::msg)?
        .stanza;
    let scheduler = Service::new(
        store,
        TaskQueues::shared([MODEL], rabbit.clone()),
        Secrets::parse(&stanza).map_err(anyhow::Error::msg)?,
        None,
        SchedulerConfig {
            models: vec![MODEL.into()],
            categorizers: vec![tagfleet_contracts::schema::DEFAULT_CATEGORIZER.into()],
            chunk_size,
            retention: tagfleet_contracts::retention::DEFAULT_RETENTION,
            max_job_images: refs.max(1),
            max_manifest_bytes: 64 << 20,
            urls: UrlPolicy::default(),
            fleet_store: None,
            schedules: tagfleet_scheduler::ScheduleLimits::default(),
        },
    );
    let mut manifest = String::with_capacity(refs * 48);
    for n in 0..refs {
        manifest.push_str(&format!(
            "{{\"ref\":\"s3://catalog/images/{:03}/{n:08}.jpg\"}}\n",
            n % 997
        ));
    }
    let spec = JobSpec {
        source: Source::Manifest {
            uri: None,
            inline: Some(manifest),
            format: ManifestFormat::Auto,
        },
        analyses: vec![tagfleet_contracts::Analysis::Tags],
        model: None,
        options: Default::default(),
        output: None,
    };
    let started = Instant::now();
    let job = scheduler
        .create_job("bench", spec)
        .await
        .map_err(|e| anyhow::anyhow!("creating the job: {e}"))?;
    let seconds = started.elapsed().as_secs_f64();
    let rate = job.counts.total as f64 / seconds;
    let messages = rabbit.message_count(&rabbit.options().queue).await?;
    rabbit.delete().await.context("deleting the bench queue")?;
    println!(
        "publish: {} refs in {messages} task messages of {chunk_size} in {seconds:.2} s: {rate:.0} refs/s \
         ({:.2}x the {TARGET_REFS_PER_SECOND:.0} refs/s target)",
        job.counts.total,
        rate / TARGET_REFS_PER_SECOND
    );
    Ok(0)
}
