//! `tagfleet submit`: creates a job from a local folder, a manifest or an S3 prefix and
//! prints its id. With `--scheduler` the job goes through the scheduler API (which counts
//! its progress; `--wait` follows it); without, the tasks are published straight to the
//! model's task queue.

use anyhow::{Context, bail};
use clap::Args;
use tagfleet_contracts::S3Location;
use tagfleet_contracts::keys::is_valid_id;
use tagfleet_io::aws::{Endpoint, sdk_config};
use tagfleet_io::listing;

use crate::client::{self, ApiArgs};
use crate::inputs;
use crate::io_args::{QueueArgs, RetentionArgs};
use crate::pipeline_args::TaskArgs;

#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// The images: a local folder, a manifest (one ref a line, or JSON Lines with "ref";
    /// file paths and s3:// refs), or s3://bucket/prefix/ (every image object under it).
    pub source: String,

    /// Tenant the job belongs to (its key names the images in results). Direct publishing
    /// only: with --scheduler the token names the tenant.
    #[arg(long, env = "TAGFLEET_TENANT")]
    pub tenant: Option<String>,

    /// Model the workers must run, as name@version.
    #[arg(
        long,
        env = "TAGFLEET_MODEL_ID",
        default_value = "efficientnet-lite0@1"
    )]
    pub model: String,

    /// Job id (direct publishing only; the scheduler picks its own); default: a new random id.
    #[arg(long, env = "TAGFLEET_JOB_ID")]
    pub job_id: Option<String>,

    /// S3 endpoint URL for listing an s3:// source on an S3-compatible server.
    #[arg(long, env = "TAGFLEET_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,

    #[command(flatten)]
    pub task: TaskArgs,

    #[command(flatten)]
    pub queue: QueueArgs,

    #[command(flatten)]
    pub retention: RetentionArgs,

    #[command(flatten)]
    pub api: ApiArgs,

    /// With --scheduler: follow the job with a progress bar until it ends. Exit code 0
    /// when every image succeeded, 3 when some failed, 1 when the job failed or was
    /// cancelled.
    #[arg(long, requires = "url")]
    pub wait: bool,
}

pub async fn main(args: SubmitArgs) -> anyhow::Result<i32> {
    if args.api.url.is_some() {
        return through_scheduler(args).await;
    }
    let tenant = args
        .tenant
        .clone()
        .context("--tenant (TAGFLEET_TENANT) is required when publishing to the queue")?;
    if !is_valid_id(&tenant) {
        bail!("--tenant {tenant:?}: letters, digits, - _ . only");
    }
    let job_id = args
        .job_id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    if !is_valid_id(&job_id) {
        bail!("--job-id {job_id:?}: letters, digits, - _ . only");
    }
    let refs = collect_refs(&args).await?;
    if refs.is_empty() {
        bail!("no images found in {}", args.source);
    }
    let messages = args.task.messages(&job_id, &tenant, &args.model, &refs)?;
    let queue = args
        .queue
        .open_for_model(&args.model, 1, args.retention.retention())
        .await?;
    let tasks = messages.len();
    queue
        .publish_batch(messages.iter().map(|m| m.to_json()).collect())
        .await
        .context("publishing the tasks")?;
    tracing::info!(job = %job_id, images = refs.len(), tasks, "job submitted");
    println!("{job_id}");
    Ok(0)
}

async fn collect_refs(args: &SubmitArgs) -> anyhow::Result<Vec<String>> {
    if args.source.starts_with("s3://") {
        // The listing an s3_prefix job gets from the scheduler: image suffixes only.
        let endpoint = Endpoint {
            url: args.s3_endpoint.clone(),
            region: args.queue.region.clone(),
        };
        let config = aws_sdk_s3::config::Builder::from(&sdk_config(&endpoint).await)
            .force_path_style(args.s3_endpoint.is_some())
            .build();
        let prefix = S3Location::parse(&args.source).with_context(|| args.source.clone())?;
        let client = aws_sdk_s3::Client::from_conf(config);
        let refs = listing::image_refs(&client, &prefix, &[], usize::MAX)
            .await
            .map_err(|e| anyhow::anyhow!("{}: {e}", args.source))?;
        if refs.is_empty() {
            bail!("{}: no images found", args.source);
        }
        return Ok(refs);
    }
    let inputs = inputs::collect_refs(std::path::Path::new(&args.source))?;
    Ok(inputs.items.into_iter().map(|i| i.reference).collect())
}

/// The job spec the scheduler gets for `source`: an S3 prefix as it is, a local manifest
/// sent inline. A local folder cannot travel: the workers could not read it.
fn spec_of(args: &SubmitArgs) -> anyhow::Result<serde_json::Value> {
    let source = if args.source.starts_with("s3://") {
        serde_json::json!({ "kind": "s3_prefix", "uri": args.source })
    } else {
        let path = std::path::Path::new(&args.source);
        if path.is_dir() {
            bail!(
                "{} is a folder: the fleet's workers cannot read it. Use `tagfleet run {}`, \
                 upload it to S3, or send a manifest of s3:// refs",
                args.source,
                args.source
            );
        }
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the manifest {}", args.source))?;
        serde_json::json!({ "kind": "manifest", "inline": text })
    };
    let options = args.task.options()?;
    Ok(serde_json::json!({
        "source": source,
        "analyses": args.task.analyses,
        "model": args.model,
        "options": options,
    }))
}

async fn through_scheduler(args: SubmitArgs) -> anyhow::Result<i32> {
    let api = args.api.connect()?;
    let job = api.create_job(&spec_of(&args)?).await?;
    let id = job
        .get("id")
        .and_then(|v| v.as_str())
        .context("the scheduler's answer has no job id")?
        .to_owned();
    tracing::info!(job = %id, images = client::count(&job, "total"), "job created");
    println!("{id}");
    if !args.wait {
        return Ok(0);
    }
    let bar = indicatif::ProgressBar::new(client::count(&job, "total"));
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} {msg:>9} [{bar:40}] {pos}/{len} images, {per_sec}, ETA {eta}",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    let mut failures = 0;
    let job = loop {
        match api.job(&id).await {
            Ok(job) => {
                failures = 0;
                let known = ["done", "failed", "unfinished"].map(|c| client::count(&job, c));
                bar.set_position(known.iter().sum());
                bar.set_message(client::state(&job).to_owned());
                if client::is_final(client::state(&job)) {
                    break job;
                }
            }
            Err(e) if failures < 10 => {
                failures += 1;
                tracing::warn!(error = %e, "asking for the job's progress failed; retrying");
            }
            Err(e) => return Err(e),
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    };
    bar.finish();
    let [done, failed, unfinished] =
        ["done", "failed", "unfinished"].map(|c| client::count(&job, c));
    let never_ran = match unfinished {
        0 => String::new(),
        n => format!(", {n} never ran"),
    };
    eprintln!(
        "job {id} {}: {done} images done, {failed} failed{never_ran}",
        client::state(&job)
    );
    if let Some(error) = job.get("error").and_then(|e| e.as_str()) {
        eprintln!("  {error}");
    }
    Ok(match client::state(&job) {
        "succeeded" if failed == 0 && unfinished == 0 => 0,
        "succeeded" => 3,
        _ => 1,
    })
}
