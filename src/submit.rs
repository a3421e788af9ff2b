//! `tagfleet submit`: publishes a job's task messages, from a local folder, a manifest or
//! an S3 prefix, in chunks, and prints the job id.

use anyhow::{Context, bail};
use clap::Args;
use tagfleet_core::aws::{Endpoint, sdk_config};
use tagfleet_core::keys::is_valid_id;

use crate::backends::QueueArgs;
use crate::inputs;
use crate::pipeline_args::TaskArgs;

/// Suffixes taken from an S3 prefix.
const IMAGE_SUFFIXES: [&str; 9] = [
    ".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".jfif",
];

#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// The images: a local folder, a manifest (one ref a line, or JSON Lines with "ref";
    /// file paths and s3:// refs), or s3://bucket/prefix/ (every image object under it).
    pub source: String,

    /// Tenant the job belongs to (its key names the images in results).
    #[arg(long, env = "TAGFLEET_TENANT")]
    pub tenant: String,

    /// Model the workers must run, as name@version.
    #[arg(
        long,
        env = "TAGFLEET_MODEL_ID",
        default_value = "efficientnet-lite0@1"
    )]
    pub model: String,

    /// Job id; default: a new random id.
    #[arg(long, env = "TAGFLEET_JOB_ID")]
    pub job_id: Option<String>,

    /// S3 endpoint URL for listing an s3:// source on an S3-compatible server.
    #[arg(long, env = "TAGFLEET_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,

    #[command(flatten)]
    pub task: TaskArgs,

    #[command(flatten)]
    pub queue: QueueArgs,
}

pub async fn main(args: SubmitArgs) -> anyhow::Result<i32> {
    if !is_valid_id(&args.tenant) {
        bail!("--tenant {:?}: letters, digits, - _ . only", args.tenant);
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
    let messages = args
        .task
        .messages(&job_id, &args.tenant, &args.model, &refs)?;
    let queue = args.queue.open(1).await?;
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
    if let Some(location) = args.source.strip_prefix("s3://") {
        let (bucket, prefix) = location.split_once('/').unwrap_or((location, ""));
        let endpoint = Endpoint {
            url: args.s3_endpoint.clone(),
            region: args.queue.region.clone(),
        };
        let config = aws_sdk_s3::config::Builder::from(&sdk_config(&endpoint).await)
            .force_path_style(args.s3_endpoint.is_some())
            .build();
        let client = aws_sdk_s3::Client::from_conf(config);
        let mut pages = client
            .list_objects_v2()
            .bucket(bucket)
            .prefix(prefix)
            .into_paginator()
            .send();
        let mut refs = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.context("listing the S3 source")?;
            for object in page.contents() {
                let Some(key) = object.key() else { continue };
                let lower = key.to_ascii_lowercase();
                if IMAGE_SUFFIXES.iter().any(|s| lower.ends_with(s)) {
                    refs.push(format!("s3://{bucket}/{key}"));
                }
            }
        }
        return Ok(refs);
    }
    let inputs = inputs::collect_refs(std::path::Path::new(&args.source))?;
    Ok(inputs.items.into_iter().map(|i| i.reference).collect())
}
