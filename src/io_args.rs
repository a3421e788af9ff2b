//! The `--queue` and `--store` flags, and turning them into the queues and stores behind
//! the `Queue` and `ObjectStore` traits. Shared by `worker`, `scheduler`, `submit`,
//! `erase` and the bench.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use tagfleet_contracts::S3Location;
use tagfleet_contracts::routing;
use tagfleet_io::aws::Endpoint;
use tagfleet_io::queue::{
    DEFAULT_DELIVERY_LIMIT, MemoryQueue, RabbitOptions, RabbitQueue, SqsOptions, SqsQueue,
    TaskQueues,
};
use tagfleet_io::store::s3::Encryption;
use tagfleet_io::store::{FsStore, S3Options, S3Store};
use tagfleet_io::{ObjectStore, Queue};

#[derive(Debug, Clone, Args)]
pub struct QueueArgs {
    /// The queues: amqp://user:pass@host:5672/vhost (amqps:// for TLS; names from
    /// --queue-name), sqs://NAME (a task queue NAME-<model> per model, NAME-progress, each
    /// with its -dlq), or memory (this process only). Required, except for `submit
    /// --scheduler`.
    #[arg(long, env = "TAGFLEET_QUEUE")]
    pub queue: Option<String>,

    /// What RabbitMQ queue names derive from: each model has its task queue
    /// <name>-<model> (efficientnet-lite0@1: <name>-efficientnet-lite0_1), the workers
    /// report on <name>.progress, and each queue has its dead-letter queue <queue>.dlq.
    /// On SQS the name in sqs://NAME plays this part.
    #[arg(long, env = "TAGFLEET_QUEUE_NAME", default_value = "tagfleet-tasks")]
    pub queue_name: String,

    /// Deliveries (RabbitMQ) or receives (SQS) of one message before it is dead-lettered.
    #[arg(long, env = "TAGFLEET_DELIVERY_LIMIT", default_value_t = DEFAULT_DELIVERY_LIMIT)]
    pub delivery_limit: u32,

    /// SQS endpoint URL, for SQS-compatible servers. Default: AWS in the region.
    #[arg(long, env = "TAGFLEET_SQS_ENDPOINT")]
    pub sqs_endpoint: Option<String>,

    /// Seconds an SQS message stays invisible; a heartbeat renews it while in work.
    #[arg(
        long,
        env = "TAGFLEET_SQS_VISIBILITY_TIMEOUT_SECS",
        default_value_t = 60
    )]
    pub sqs_visibility_timeout_secs: u64,

    /// AWS region for S3 and SQS. Default: the standard chain (AWS_REGION, profile).
    #[arg(long, env = "TAGFLEET_REGION")]
    pub region: Option<String>,
}

#[derive(Debug, Clone, Copy)]
enum QueueRole<'a> {
    /// The task queue of the model with this id.
    Tasks(&'a str),
    Progress,
    /// The one task queue of versions before per-model queues.
    Legacy,
}

#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// Result store: s3://bucket/prefix or file:///path.
    #[arg(long, env = "TAGFLEET_STORE")]
    pub store: String,

    /// S3 endpoint URL, for S3-compatible servers (path-style addressing). Default: AWS.
    #[arg(long, env = "TAGFLEET_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,

    /// Server-side encryption asked for on every write.
    #[arg(long, env = "TAGFLEET_SSE", value_enum, default_value_t = Sse::Aes256)]
    pub sse: Sse,

    /// KMS key id for --sse aws-kms (default: the account's key).
    #[arg(long, env = "TAGFLEET_SSE_KMS_KEY_ID")]
    pub sse_kms_key_id: Option<String>,

    #[command(flatten)]
    pub retention: RetentionArgs,
}

/// The fleet's retention: of results and job records in the store, and of task messages
/// in the queues (which carry image refs). Every process of a fleet must run with the
/// same: RabbitMQ refuses a dead-letter queue declared with another message TTL.
#[derive(Debug, Clone, Args)]
pub struct RetentionArgs {
    /// Results and job records older than this are never read back, and are deleted;
    /// task messages wait no longer in the queues, and older tasks are not run.
    #[arg(long, env = "TAGFLEET_RETENTION_HOURS", default_value_t = 24)]
    pub retention_hours: u64,

    /// The retention in seconds instead of hours, for short-lived deployments and tests.
    #[arg(
        long,
        env = "TAGFLEET_RETENTION_SECS",
        conflicts_with = "retention_hours"
    )]
    pub retention_secs: Option<u64>,
}

impl RetentionArgs {
    pub fn retention(&self) -> Duration {
        Duration::from_secs(
            self.retention_secs
                .unwrap_or(self.retention_hours.saturating_mul(3600)),
        )
    }
}

impl Default for RetentionArgs {
    fn default() -> Self {
        Self {
            retention_hours: 24,
            retention_secs: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Sse {
    /// SSE-S3 (AES256)
    Aes256,
    /// SSE-KMS (aws:kms)
    AwsKms,
}

impl QueueArgs {
    /// The task queue of one model (`name@version`): its tasks only. Its messages, and
    /// those of its dead-letter queue, wait at most `retention` (on SQS at least a minute).
    pub async fn open_for_model(
        &self,
        model: &str,
        prefetch: u16,
        retention: Duration,
    ) -> anyhow::Result<Arc<dyn Queue>> {
        self.open_role(prefetch, retention, QueueRole::Tasks(model))
            .await
    }

    /// The task queue of every model in `models`, for publishing.
    pub async fn open_tasks(
        &self,
        models: &[String],
        retention: Duration,
    ) -> anyhow::Result<TaskQueues> {
        let mut queues = Vec::with_capacity(models.len());
        for model in models {
            let queue = self
                .open_for_model(model, 1, retention)
                .await
                .with_context(|| format!("opening the task queue of {model}"))?;
            queues.push((model.clone(), queue));
        }
        Ok(TaskQueues::new(queues))
    }

    /// The one task queue of every model that versions before per-model queues used
    /// (named as the base, see [`QueueArgs::base_name`]): only to move what still waits
    /// there. Declares it (empty) where it is not.
    pub async fn open_legacy(
        &self,
        prefetch: u16,
        retention: Duration,
    ) -> anyhow::Result<Arc<dyn Queue>> {
        self.open_role(prefetch, retention, QueueRole::Legacy).await
    }

    /// The queue on which workers report finished tasks to the scheduler: the base name
    /// with `.progress` (RabbitMQ) or `-progress` (SQS) appended. One for every model.
    pub async fn open_progress(
        &self,
        prefetch: u16,
        retention: Duration,
    ) -> anyhow::Result<Arc<dyn Queue>> {
        self.open_role(prefetch, retention, QueueRole::Progress)
            .await
    }

    /// What the fleet's queue names derive from: --queue-name on RabbitMQ, the name in
    /// sqs://NAME on SQS (`None` for the in-memory queue, which has no name).
    pub fn base_name(&self) -> anyhow::Result<Option<String>> {
        let url = self.url()?;
        if let Some(name) = url.strip_prefix("sqs://") {
            if name.is_empty() || name.contains('/') {
                bail!("--queue {url:?}: expected sqs://QUEUE-NAME");
            }
            return Ok(Some(name.to_owned()));
        }
        if url.starts_with("amqp://") || url.starts_with("amqps://") {
            return Ok(Some(self.queue_name.clone()));
        }
        Ok(None)
    }

    fn url(&self) -> anyhow::Result<&str> {
        self.queue.as_deref().context(
            "--queue (TAGFLEET_QUEUE) is required: amqp://…, amqps://…, sqs://NAME or memory",
        )
    }

    /// The name of a queue on a broker whose queues derive from `base`.
    fn name_of(base: &str, role: QueueRole, progress_separator: char) -> anyhow::Result<String> {
        Ok(match role {
            QueueRole::Tasks(model) => routing::task_queue(base, model)
                .with_context(|| format!("naming the task queue of {model}"))?,
            QueueRole::Progress => format!("{base}{progress_separator}progress"),
            QueueRole::Legacy => base.to_owned(),
        })
    }

    async fn open_role(
        &self,
        prefetch: u16,
        retention: Duration,
        role: QueueRole<'_>,
    ) -> anyhow::Result<Arc<dyn Queue>> {
        let url = self.url()?;
        if url == "memory" {
            return Ok(Arc::new(MemoryQueue::new(self.delivery_limit)));
        }
        let Some(base) = self.base_name()? else {
            bail!("--queue {url:?}: expected amqp://, amqps://, sqs:// or memory");
        };
        if url.starts_with("amqp://") || url.starts_with("amqps://") {
            let options = RabbitOptions {
                url: url.to_owned(),
                queue: Self::name_of(&base, role, '.')?,
                delivery_limit: self.delivery_limit,
                prefetch,
                message_ttl: Some(retention),
            };
            let queue = RabbitQueue::connect(options)
                .await
                .context("connecting to RabbitMQ")?;
            return Ok(Arc::new(queue));
        }
        let options = SqsOptions {
            queue: Self::name_of(&base, role, '-')?,
            endpoint: Endpoint {
                url: self.sqs_endpoint.clone(),
                region: self.region.clone(),
            },
            max_receive_count: self.delivery_limit,
            visibility_timeout: Duration::from_secs(self.sqs_visibility_timeout_secs),
            message_retention: Some(retention),
        };
        let queue = SqsQueue::connect(options)
            .await
            .context("connecting to SQS")?;
        Ok(Arc::new(queue))
    }
}

/// An opened store, with the S3 client when it is S3 (fetching s3:// refs reuses it).
pub struct OpenedStore {
    pub store: Arc<dyn ObjectStore>,
    pub s3: Option<S3Store>,
}

impl StoreArgs {
    pub fn retention(&self) -> Duration {
        self.retention.retention()
    }

    pub fn endpoint(&self, region: Option<String>) -> Endpoint {
        Endpoint {
            url: self.s3_endpoint.clone(),
            region,
        }
    }

    /// The store's folder when it is on S3 (`None` for a folder on disk).
    pub fn s3_location(&self) -> anyhow::Result<Option<S3Location>> {
        if !self.store.starts_with("s3://") {
            return Ok(None);
        }
        Ok(Some(S3Location::parse(&self.store).context("--store")?))
    }

    /// How to reach the store when it is on S3 (`None` for a folder).
    pub fn s3_options(&self, region: Option<String>) -> anyhow::Result<Option<S3Options>> {
        let Some(location) = self.s3_location()? else {
            return Ok(None);
        };
        Ok(Some(S3Options {
            endpoint: self.endpoint(region),
            path_style: self.s3_endpoint.is_some(),
            retention: Some(self.retention()),
            encryption: match self.sse {
                Sse::Aes256 => Encryption::Aes256,
                Sse::AwsKms => Encryption::Kms(self.sse_kms_key_id.clone()),
            },
            ..S3Options::at(location)
        }))
    }

    /// Opens the store; on S3 also makes sure the bucket's lifecycle rule is in place.
    pub async fn open(&self, region: Option<String>) -> anyhow::Result<OpenedStore> {
        let url = self.store.as_str();
        if let Some(path) = url.strip_prefix("file://") {
            let store = FsStore::new(PathBuf::from(path), Some(self.retention()))
                .with_context(|| format!("opening the result folder {path}"))?;
            return Ok(OpenedStore {
                store: Arc::new(store),
                s3: None,
            });
        }
        if let Some(options) = self.s3_options(region)? {
            let store = S3Store::connect(options).await;
            store
                .ensure_unversioned()
                .await
                .context("checking that the results bucket keeps no old versions")?;
            if let Err(e) = store.ensure_lifecycle().await {
                // The sweeper and expiry-aware reads still keep the retention.
                tracing::warn!(error = %e, "could not set the 1-day lifecycle rule on the bucket");
            }
            return Ok(OpenedStore {
                store: Arc::new(store.clone()),
                s3: Some(store),
            });
        }
        bail!("--store {url:?}: expected s3://bucket/prefix or file:///path")
    }
}
