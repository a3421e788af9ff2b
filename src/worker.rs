//! `tagfleet worker`: the pipeline as a long-running service, fed by its model's task queue
//! on RabbitMQ or SQS, writing to S3 (or a folder). SIGTERM or SIGINT stops consuming; what is in flight is
//! finished and acked within the drain timeout, or left unacked for redelivery.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use tagfleet_contracts::Secrets;
use tagfleet_io::netguard::UrlPolicy;
use tagfleet_worker::https::HttpsFetcher;
use tagfleet_worker::{FileRoots, Health, LiveTenants, Pipeline, PipelineConfig, Sources, Tenants};
use tokio_util::sync::CancellationToken;

use crate::engine::EngineArgs;
use crate::http::{self, Readiness};
use crate::io_args::{QueueArgs, StoreArgs};
use crate::pipeline_args::PipelineArgs;

#[derive(Debug, Args)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub queue: QueueArgs,

    #[command(flatten)]
    pub store: StoreArgs,

    /// The id (name@version) the model of --model must have: start-up fails when it has
    /// another. Deployments set it where they derive the model's queue name from it (the
    /// KEDA trigger), so the two cannot silently differ.
    #[arg(long, env = "TAGFLEET_MODEL_ID")]
    pub model_id: Option<String>,

    /// The tenants secrets file (TOML, `[tenants.<name>]` with `key`): whose tasks this
    /// worker serves, and the key that names each tenant's images.
    #[arg(long, env = "TAGFLEET_SECRETS")]
    pub secrets: PathBuf,

    /// Folders file:// refs may be read from (comma separated). None: file:// refs fail.
    #[arg(long = "file-root", env = "TAGFLEET_FILE_ROOTS", value_delimiter = ',')]
    pub file_roots: Vec<PathBuf>,

    /// Private address ranges https:// refs may point to after all (CIDR, comma
    /// separated). Loopback, link-local, private, metadata and other special-purpose
    /// addresses are refused otherwise, on every name resolution and redirect, also when
    /// an IPv6 address carries one for a translator (NAT64 64:ff9b::/96, 6to4,
    /// IPv4-mapped); an allowed IPv4 range is allowed in those forms too. No proxy from
    /// the environment is used: it would resolve names past this check.
    #[arg(long, env = "TAGFLEET_ALLOW_URL_RANGES", value_delimiter = ',')]
    pub allow_url_range: Vec<String>,

    /// A PEM certificate to trust for https:// refs besides the system's roots (an
    /// in-house image server with its own CA).
    #[arg(long, env = "TAGFLEET_URL_CA_FILE")]
    pub url_ca_file: Option<PathBuf>,

    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, env = "TAGFLEET_LISTEN", default_value = "127.0.0.1:9090")]
    pub listen: SocketAddr,

    /// Seconds to finish in-flight work after SIGTERM before exiting anyway (keep the pod's
    /// terminationGracePeriodSeconds longer).
    #[arg(long, env = "TAGFLEET_DRAIN_TIMEOUT_SECS", default_value_t = 60)]
    pub drain_timeout_secs: u64,

    /// Task messages in work at once (the broker's prefetch).
    #[arg(long, env = "TAGFLEET_MAX_TASKS_IN_FLIGHT", default_value_t = 4)]
    pub max_tasks_in_flight: usize,

    /// Images fetched at once.
    #[arg(long, env = "TAGFLEET_FETCH_CONCURRENCY", default_value_t = 16)]
    pub fetch_concurrency: usize,

    /// How long a job's state (cancelled or not) is trusted before its record is read
    /// again, in ms: how soon a cancel stops queued tasks, against one store read per job
    /// per interval.
    #[arg(long, env = "TAGFLEET_JOB_CHECK_INTERVAL_MS", default_value_t = 3000)]
    pub job_check_interval_ms: u64,

    #[command(flatten)]
    pub pipeline: PipelineArgs,

    #[command(flatten)]
    pub engine: EngineArgs,
}

pub async fn main(args: WorkerArgs) -> anyhow::Result<i32> {
    crate::core_dumps::disable();
    let (reload, tenants) = LiveTenants::channel(load_tenants(&args.secrets)?);
    tokio::spawn(reload_tenants(args.secrets.clone(), reload));
    let model = args.engine.load_model()?;
    let backends = args.engine.backends(&model)?;
    let opened = args.store.open(args.queue.region.clone()).await?;
    let prefetch = u16::try_from(args.max_tasks_in_flight.max(1)).unwrap_or(u16::MAX);
    let retention = args.store.retention();
    let model_id = model.spec.id();
    if let Some(expected) = &args.model_id
        && *expected != model_id
    {
        bail!(
            "--model-id {expected}: the model {} is {model_id} (its model.toml); the \
             queue this worker reads and the one it is scaled on would differ",
            args.engine.model
        );
    }
    let queue = args
        .queue
        .open_for_model(&model_id, prefetch, retention)
        .await?;
    tracing::info!(model = %model_id, "taking the tasks of this model from its own queue");
    let progress = args.queue.open_progress(1, retention).await?;
    let roots = FileRoots::new(args.file_roots.clone()).context("resolving --file-root folders")?;
    let policy = UrlPolicy::new(&args.allow_url_range)
        .map_err(anyhow::Error::msg)
        .context("--allow-url-range")?;
    let sources = Sources {
        roots,
        s3: opened.s3.as_ref().map(|s| s.client().clone()),
        https: Some(HttpsFetcher::new(policy, args.url_ca_file.as_deref())?),
        fleet_store: args.store.s3_location()?,
    };

    tagfleet_worker::gpu::spawn_sampler(Duration::from_secs(5));
    let health = Health::default();
    let readiness = Readiness::default().also({
        let health = health.clone();
        move || health.is_ready()
    });
    http::serve(args.listen, readiness.clone()).await?;

    let batch = args.pipeline.batch(&model.spec, &backends);
    let prepare_threads =
        args.pipeline
            .decode_threads(tagfleet_worker::pipeline::preprocesses_on_executors(
                &backends,
            ));
    let pipeline = Pipeline {
        queue,
        store: opened.store,
        tenants,
        spec: model.spec,
        classes: model.classes,
        backends,
        config: PipelineConfig {
            batch,
            prepare_threads,
            fetch_concurrency: args.fetch_concurrency.max(1),
            max_tasks_in_flight: args.max_tasks_in_flight.max(1),
            limits: args.pipeline.limits(),
            pixel_budget: args.pipeline.pixel_budget(),
            sources,
            exit_when_drained: false,
            progress: Some(progress),
            job_check_interval: Duration::from_millis(args.job_check_interval_ms),
            max_task_age: Some(args.store.retention()),
            outputs: opened.s3.clone(),
            delivery_limit: args.queue.delivery_limit,
            batch_timeout: args.pipeline.batch_timeout(),
        },
        health: health.clone(),
    };
    let shutdown = CancellationToken::new();
    let mut run = tokio::spawn(pipeline.run(shutdown.clone(), None));
    readiness.set(true);
    tracing::info!("worker ready");

    tokio::select! {
        summary = &mut run => {
            let summary = summary.context("the pipeline stopped unexpectedly")?;
            let why = health.failure().unwrap_or("it stopped by itself");
            tracing::error!(?summary, failure = why, "the pipeline stopped; exiting non-zero");
            return Ok(1);
        }
        () = health.failed() => {
            tracing::error!("a pipeline stage failed: finishing the work in flight, then exiting non-zero");
        }
        signal = crate::signals::stop_signal() => tracing::info!(signal, "stopping: finishing the work in flight"),
    }
    readiness.set(false);
    shutdown.cancel();
    let drain = Duration::from_secs(args.drain_timeout_secs);
    match tokio::time::timeout(drain, &mut run).await {
        Ok(Ok(summary)) => {
            tracing::info!(
                images = summary.images(),
                tasks = summary.tasks_written,
                "drained; exiting"
            );
        }
        Ok(Err(e)) => bail!("the pipeline failed while draining: {e}"),
        Err(_) => {
            // Unacked messages go back to the queue when the connection closes.
            tracing::error!(
                drain_timeout_secs = args.drain_timeout_secs,
                "drain timeout: leaving unfinished tasks to redelivery; exiting non-zero"
            );
            return Ok(1);
        }
    }
    if let Some(failure) = health.failure() {
        tracing::error!(failure, "exiting non-zero");
        return Ok(1);
    }
    Ok(0)
}

/// How often the secrets file is checked for changes.
const SECRETS_CHECK: Duration = Duration::from_secs(5);

/// Reloads the tenants when the secrets file changes: Kubernetes replaces a mounted
/// Secret in place (a symlink swap), so its content is compared, not its timestamps. A
/// file that does not load keeps the tenants as they were, with an error logged.
async fn reload_tenants(path: PathBuf, tenants: tokio::sync::watch::Sender<Tenants>) {
    let mut last = std::fs::read(&path).ok();
    let mut tick = tokio::time::interval(SECRETS_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = tokio::fs::read(&path).await.ok();
        if now.is_none() || now == last {
            continue;
        }
        last = now;
        match load_tenants(&path) {
            Ok(loaded) => {
                tenants.send_replace(loaded);
            }
            Err(e) => {
                tracing::error!(
                    error = format!("{e:#}"),
                    "the changed secrets file does not load; keeping the tenants as they were"
                )
            }
        }
    }
}

/// Every tenant of the secrets file: its pseudonym key and allow-lists.
fn load_tenants(path: &Path) -> anyhow::Result<Tenants> {
    let secrets = Secrets::load(path).context("--secrets")?;
    tracing::info!(tenants = secrets.len(), "tenant keys loaded");
    Ok(Tenants::from_secrets(&secrets))
}
