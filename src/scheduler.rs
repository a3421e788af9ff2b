//! `tagfleet scheduler`: the job API in front of the fleet. Publishes each job's task
//! messages to its model's task queue, counts the workers' progress reports, keeps job
//! records and schedules in the store. One replica per fleet: it owns the schedules.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use tagfleet_contracts::Secrets;
use tagfleet_io::netguard::UrlPolicy;
use tagfleet_models::categorizer::CategorizerFiles;
use tagfleet_scheduler::server::{self, ServeConfig};
use tagfleet_scheduler::tls::{self, TlsAcceptor, TlsError};
use tagfleet_scheduler::{
    Intervals, ScheduleLimits, SchedulerConfig, Service, legacy, operations_router, router,
    run_background,
};
use tokio_util::sync::CancellationToken;

use crate::fd_limit;
use crate::io_args::{QueueArgs, StoreArgs};

/// Connections open at once on the operations port (probes, scrapers): beside the API's
/// within the file descriptors fd_limit keeps apart.
const OPERATIONS_CONNECTIONS: usize = 64;

/// How often --drain-legacy-queue looks at the old task queue again.
const LEGACY_DRAIN_INTERVAL: Duration = Duration::from_secs(60);

#[derive(Debug, Args)]
pub struct SchedulerArgs {
    #[command(flatten)]
    pub queue: QueueArgs,

    #[command(flatten)]
    pub store: StoreArgs,

    /// The tenants secrets file (TOML): per tenant the SHA-256 of its bearer token
    /// (`token_sha256`) and its pseudonym key (`key`). `tagfleet tenant NAME` makes one.
    #[arg(long, env = "TAGFLEET_SECRETS")]
    pub secrets: PathBuf,

    /// Address of the API (and of /healthz, /readyz, /openapi.json).
    #[arg(long, env = "TAGFLEET_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Address of /metrics (and of /healthz, /readyz for probes): apart from the API, as
    /// metrics answer without a token. Open it to Prometheus only.
    #[arg(
        long,
        env = "TAGFLEET_METRICS_LISTEN",
        default_value = "127.0.0.1:9091"
    )]
    pub metrics_listen: SocketAddr,

    /// Models the fleet's workers serve, as name@version (comma separated); the first is
    /// what a job gets when it names none. Each has its own task queue.
    #[arg(
        long = "model-id",
        env = "TAGFLEET_MODEL_IDS",
        value_delimiter = ',',
        default_value = "efficientnet-lite0@1"
    )]
    pub models: Vec<String>,

    /// The workers' folder of extra categorizers (their --categorizers-dir): jobs may name
    /// those and the built-in general and retail in options.categorizer. The workers check
    /// each file's synsets against their model at start-up.
    #[arg(long, env = "TAGFLEET_CATEGORIZERS_DIR")]
    pub categorizers_dir: Option<PathBuf>,

    /// Move the tasks waiting in the one task queue of versions before per-model queues
    /// (named as --queue-name, or sqs://NAME) to their models' queues, at start and every
    /// minute while running; tasks of models not in --model-id are dead-lettered there.
    /// For the upgrade: see README, "Upgrading".
    #[arg(long, env = "TAGFLEET_DRAIN_LEGACY_QUEUE")]
    pub drain_legacy_queue: bool,

    /// Images per task message.
    #[arg(long, env = "TAGFLEET_CHUNK_SIZE", default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub chunk_size: u32,

    /// Private address ranges image URLs may point to after all (CIDR, comma separated),
    /// e.g. an in-cluster image server. Loopback, link-local, private, metadata and other
    /// special-purpose addresses are refused otherwise, also when an IPv6 address carries
    /// one for a translator (NAT64 64:ff9b::/96, 6to4, IPv4-mapped); an allowed IPv4
    /// range is allowed in those forms too.
    #[arg(long, env = "TAGFLEET_ALLOW_URL_RANGES", value_delimiter = ',')]
    pub allow_url_range: Vec<String>,

    /// Images one job may hold at most.
    #[arg(long, env = "TAGFLEET_MAX_JOB_IMAGES", default_value_t = 1_000_000)]
    pub max_job_images: usize,

    /// Largest manifest read from S3, in bytes: a bigger one is refused before it is
    /// read. Manifests are parsed as they stream in; this bounds one job's refs in memory.
    #[arg(long, env = "TAGFLEET_MAX_MANIFEST_BYTES", default_value_t = 64 << 20)]
    pub max_manifest_bytes: u64,

    /// Largest request body in bytes (inline manifests are the big ones).
    #[arg(long, env = "TAGFLEET_MAX_REQUEST_BYTES", default_value_t = 16 << 20)]
    pub max_request_bytes: usize,

    /// Seconds between erasing expired jobs and sweeping the store.
    #[arg(long, env = "TAGFLEET_SWEEP_INTERVAL_SECS", default_value_t = 300)]
    pub sweep_interval_secs: u64,

    /// Fewest seconds between two firings of one schedule: a cron expression that fires
    /// more often is refused (400), and firings never come closer whatever it says.
    #[arg(long, env = "TAGFLEET_MIN_SCHEDULE_INTERVAL_SECS", default_value_t = 300,
          value_parser = clap::value_parser!(u64).range(1..=31_622_400))]
    pub min_schedule_interval_secs: u64,

    /// Days a schedule that holds refs (an inline manifest or URLs) is kept after its
    /// creation; then it is deleted with them. Schedules that name only where images
    /// are (an S3 prefix, a manifest uri) stay until deleted.
    #[arg(long, env = "TAGFLEET_SCHEDULE_RETENTION_DAYS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=3650))]
    pub schedule_retention_days: u64,

    /// API connections open at once, at most. At the cap the oldest idle connection is
    /// closed to make room; the process's file descriptor limit is raised to fit.
    #[arg(long, env = "TAGFLEET_MAX_CONNECTIONS", default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_connections: u32,

    /// Seconds a client has to send a request's headers (and to finish the TLS
    /// handshake); an idle kept-alive connection is closed after as long.
    #[arg(long, env = "TAGFLEET_HEADER_READ_TIMEOUT_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub header_read_timeout_secs: u64,

    /// PEM certificate chain of the API, leaf first: with --tls-key the API speaks HTTPS
    /// only (TLS 1.2 and 1.3, rustls). Without them it speaks plain HTTP, and bearer
    /// tokens cross the network in clear: keep it to loopback or behind a TLS proxy.
    #[arg(long, env = "TAGFLEET_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "TAGFLEET_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Seconds a client has to send a request's body once its headers are in.
    #[arg(long, env = "TAGFLEET_BODY_READ_TIMEOUT_SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub body_read_timeout_secs: u64,
}

pub async fn main(args: SchedulerArgs) -> anyhow::Result<i32> {
    crate::core_dumps::disable();
    fd_limit::fit(args.max_connections as u64).context("--max-connections")?;
    let tls = tls_of(&args)?;
    let secrets = Secrets::load(&args.secrets).context("--secrets")?;
    let urls = UrlPolicy::new(&args.allow_url_range)
        .map_err(anyhow::Error::msg)
        .context("--allow-url-range")?;
    if args.models.is_empty() || args.models.iter().any(|m| !m.contains('@')) {
        anyhow::bail!("--model-id: expected name@version, got {:?}", args.models);
    }
    let opened = args.store.open(args.queue.region.clone()).await?;
    let queues = args
        .queue
        .open_tasks(&args.models, args.store.retention())
        .await?;
    let progress = args
        .queue
        .open_progress(256, args.store.retention())
        .await?;
    let legacy = if args.drain_legacy_queue {
        let queue = args
            .queue
            .open_legacy(64, args.store.retention())
            .await
            .context("--drain-legacy-queue: opening the old task queue")?;
        Some(queue)
    } else {
        None
    };
    let routes = queues.clone();
    let service = Service::new(
        opened.store.clone(),
        queues,
        secrets,
        opened.s3.as_ref().map(|s| s.client().clone()),
        SchedulerConfig {
            models: args.models.clone(),
            categorizers: CategorizerFiles::load(args.categorizers_dir.as_deref())?.names(),
            chunk_size: args.chunk_size as usize,
            retention: args.store.retention(),
            max_job_images: args.max_job_images,
            max_manifest_bytes: args.max_manifest_bytes,
            urls,
            fleet_store: args.store.s3_location()?,
            schedules: ScheduleLimits {
                min_interval: Duration::from_secs(args.min_schedule_interval_secs),
                retention: Duration::from_secs(args.schedule_retention_days * 24 * 3600),
            },
        },
    );

    // Both bound before either serves: a taken port fails start-up.
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding --listen {}", args.listen))?;
    let metrics_listener = tokio::net::TcpListener::bind(args.metrics_listen)
        .await
        .with_context(|| format!("binding --metrics-listen {}", args.metrics_listen))?;
    let shutdown = CancellationToken::new();
    let serving = ServeConfig {
        listener: "api",
        max_connections: args.max_connections as usize,
        header_read_timeout: Duration::from_secs(args.header_read_timeout_secs),
        body_read_timeout: Duration::from_secs(args.body_read_timeout_secs),
        tls,
    };
    // The operations port gets the API's deadlines and a small cap of its own: a client
    // there must not use up the file descriptors the API needs.
    let operations = ServeConfig {
        listener: "operations",
        max_connections: OPERATIONS_CONNECTIONS,
        tls: None,
        ..serving.clone()
    };
    let server = tokio::spawn(server::serve(
        listener,
        router(service.clone(), args.max_request_bytes),
        serving,
        shutdown.clone(),
    ));
    let metrics_server = tokio::spawn(server::serve(
        metrics_listener,
        operations_router(service.clone()),
        operations,
        shutdown.clone(),
    ));
    let scheme = if args.tls_cert.is_some() {
        "https"
    } else {
        "http"
    };
    tracing::info!(listen = %args.listen, scheme, metrics_listen = %args.metrics_listen, "scheduler listening");
    let mut background = tokio::spawn(run_background(
        service,
        progress,
        opened.store,
        args.store.retention(),
        Intervals {
            sweep: Duration::from_secs(args.sweep_interval_secs.max(1)),
            ..Intervals::default()
        },
        shutdown.clone(),
    ));

    let draining = legacy.map(|legacy| {
        tokio::spawn(legacy::drain_until_stopped(
            legacy,
            routes,
            LEGACY_DRAIN_INTERVAL,
            shutdown.clone(),
        ))
    });

    // The background work (loading the store, counting progress) ends only at shutdown:
    // if it ends before, the scheduler cannot do its job, and says so at once and exits.
    let failed = tokio::select! {
        signal = crate::signals::stop_signal() => {
            tracing::info!(signal, "stopping the scheduler");
            None
        }
        ended = &mut background => Some(match ended {
            Ok(Ok(())) => anyhow::anyhow!("it ended by itself"),
            Ok(Err(e)) => e,
            Err(e) => anyhow::anyhow!("it panicked: {e}"),
        }),
    };
    shutdown.cancel();
    if let Some(e) = &failed {
        tracing::error!(
            error = format!("{e:#}"),
            "the scheduler's background work failed; exiting"
        );
    } else {
        background
            .await
            .context("the background work panicked")?
            .context("the scheduler's background work failed")?;
    }
    if let Some(draining) = draining {
        draining
            .await
            .context("moving tasks from the old task queue panicked")?;
    }
    server.await.context("the API server panicked")?;
    metrics_server
        .await
        .context("the metrics server panicked")?;
    Ok(if failed.is_some() { 1 } else { 0 })
}

/// The API's TLS acceptor, when --tls-cert and --tls-key are given; an error names the
/// flag of the file at fault.
fn tls_of(args: &SchedulerArgs) -> anyhow::Result<Option<TlsAcceptor>> {
    let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) else {
        return Ok(None);
    };
    tls::acceptor(cert, key).map(Some).map_err(|e| {
        let flag = match e {
            TlsError::Cert { .. } => "--tls-cert",
            TlsError::Key { .. } => "--tls-key",
            TlsError::Pair(_) => "--tls-cert, --tls-key",
        };
        anyhow::Error::new(e).context(flag)
    })
}
