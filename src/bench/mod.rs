//! `tagfleet bench`: the throughput bounds and the end-to-end rate, measured in one run on
//! the same photos, and how close end-to-end comes to the bound.
//!
//! On a CPU host the bound is cores / (decode+preprocess CPU-s + inference CPU-s per
//! image): every image costs both, and all cores are shared between them. On a GPU the
//! bound is the slower of the engine and the decode threads; with GPU preprocessing the
//! engine's rate includes the upload and the kernel, and the decode threads only decode.

mod bounds;
mod cpu;
mod end_to_end;
mod fleet;
mod publish;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use tagfleet_models::{DecodeLimits, decode};

use crate::engine::{self, EngineArgs};
use crate::inputs;
use crate::io_args::{Sse, StoreArgs};
use bounds::Bounds;

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Folder of photos the corpus is made from (`make photos` extracts the samples).
    #[arg(default_value = "samples/photos")]
    pub photos: PathBuf,

    /// Images in the end-to-end corpus (the photos repeated, as hard links).
    #[arg(long, env = "TAGFLEET_BENCH_IMAGES", default_value_t = 1000)]
    pub images: usize,

    /// Batch size of the engine measurement and of the end-to-end run. Default: the model's.
    #[arg(long, env = "TAGFLEET_MAX_BATCH")]
    pub max_batch: Option<usize>,

    /// Seconds each bound is measured for, at least.
    #[arg(long, env = "TAGFLEET_BENCH_SECONDS", default_value_t = 5.0)]
    pub seconds: f64,

    /// Where the corpus folder is made. Default: the system's temporary folder.
    #[arg(long, env = "TAGFLEET_BENCH_DIR")]
    pub work_dir: Option<PathBuf>,

    /// Also run the corpus through the fleet: a queue URL per leg (amqp://... or
    /// sqs://{name}; `{name}` becomes a fresh queue name), each with `--store`.
    #[arg(
        long = "fleet-queue",
        env = "TAGFLEET_BENCH_FLEET_QUEUES",
        value_delimiter = ','
    )]
    pub fleet_queues: Vec<String>,

    /// Result store of the fleet legs (s3://bucket/prefix).
    #[arg(
        long,
        env = "TAGFLEET_BENCH_STORE",
        default_value = "s3://tagfleet-bench/bench"
    )]
    pub store: String,

    /// S3 endpoint of the fleet legs' store, for S3-compatible servers.
    #[arg(long, env = "TAGFLEET_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,

    /// SQS endpoint of the fleet legs, for SQS-compatible servers.
    #[arg(long, env = "TAGFLEET_SQS_ENDPOINT")]
    pub sqs_endpoint: Option<String>,

    /// Instead: time how fast a job of --publish-refs refs (an inline manifest) becomes
    /// task messages on this RabbitMQ (amqp://…), as `POST /v1/jobs` does it.
    #[arg(long, env = "TAGFLEET_BENCH_PUBLISH_QUEUE")]
    pub publish_queue: Option<String>,

    /// Also print the numbers as one JSON line at the end (for scripts: benches/gpu).
    #[arg(long)]
    pub json: bool,

    /// Refs of the publish benchmark's manifest.
    #[arg(long, default_value_t = 100_000)]
    pub publish_refs: usize,

    /// Refs per task message in the publish benchmark.
    #[arg(long, default_value_t = 32)]
    pub chunk_size: usize,

    #[command(flatten)]
    pub engine: EngineArgs,
}

/// The crops the bench asks for: a square, a banner and a size.
pub const BENCH_CROPS: &str = "1:1,16:9,300x200";

/// `tagfleet run` flags of the end-to-end leg with every analysis a photo gets.
const ALL_ANALYSES_ARGS: [&str; 4] = [
    "--analyses",
    "tags,embedding,categories,colors,crops",
    "--crops",
    BENCH_CROPS,
];

pub async fn main(args: BenchArgs) -> anyhow::Result<i32> {
    if let Some(url) = &args.publish_queue {
        return publish::run(url, args.publish_refs, args.chunk_size.max(1)).await;
    }
    let model = args.engine.load_model()?;
    let has_gpu = !tagfleet_models::devices::discover().gpus.is_empty();
    let gpu = has_gpu
        && !matches!(
            args.engine.devices,
            tagfleet_models::devices::Selection::Cpu
        );
    let max_batch = args
        .max_batch
        .unwrap_or(model.spec.batch.max_batch_on(gpu))
        .max(1);
    let photos = load_photos(&args.photos)?;
    println!(
        "tagfleet bench: {} photos, {} cores, model {}, batch {max_batch}",
        photos.len(),
        engine::cores(),
        model.spec.id()
    );
    let budget = Duration::from_secs_f64(args.seconds.max(0.1));
    let bounds = bounds::measure(&args.engine, &model, &photos, max_batch, budget, has_gpu)?;

    // End to end: the real `tagfleet run` on a corpus of hard links to the photos.
    let work = tempfile::Builder::new()
        .prefix("tagfleet-bench-")
        .tempdir_in(args.work_dir.clone().unwrap_or_else(std::env::temp_dir))
        .context("creating the bench folder")?;
    let corpus = end_to_end::make_corpus(work.path(), &photos, args.images)?;
    let run = end_to_end::measure(&args, &corpus, work.path(), args.images, max_batch, &[])?;
    println!(
        "end-to-end          {:8.1} images/s on {} images, peak RSS {:.0} MiB, executors busy {}",
        run.images_per_second,
        args.images,
        run.peak_rss as f64 / (1024.0 * 1024.0),
        run.busy
            .map_or("-".into(), |b| format!("{:.0}%", b * 100.0))
    );
    let ratio = run.images_per_second / bounds.bound;
    println!("ratio               {ratio:8.2} end-to-end / bound (target >= 0.8)");
    let every = end_to_end::measure(
        &args,
        &corpus,
        work.path(),
        args.images,
        max_batch,
        &ALL_ANALYSES_ARGS,
    )?;
    println!(
        "every analysis      {:8.1} images/s ({}), {:.2} x tags alone (target >= 0.85)",
        every.images_per_second,
        ALL_ANALYSES_ARGS[1],
        every.images_per_second / run.images_per_second
    );
    if args.json {
        println!("{}", json_report(&bounds, &run, &every, max_batch));
    }
    for queue in &args.fleet_queues {
        fleet_leg(
            &args,
            queue,
            &corpus,
            work.path(),
            max_batch,
            run.images_per_second,
        )
        .await?;
    }
    Ok(0)
}

/// The photos of `dir` that decode, with their bytes.
fn load_photos(dir: &Path) -> anyhow::Result<Vec<(PathBuf, Vec<u8>)>> {
    let mut photos = Vec::new();
    for input in &inputs::collect(dir)?.items {
        let path = input.reference.trim_start_matches("file://");
        // One that cannot be read (a dangling link) is passed over, as one that does not
        // decode.
        let Ok(bytes) = std::fs::read(path) else {
            continue;
        };
        if decode(&bytes, DecodeLimits::default()).is_ok() {
            photos.push((PathBuf::from(path), bytes));
        }
    }
    if photos.is_empty() {
        bail!("no decodable photos in {}", dir.display());
    }
    Ok(photos)
}

/// The numbers as one JSON object, for scripts (benches/gpu).
fn json_report(
    bounds: &Bounds,
    run: &end_to_end::Run,
    every: &end_to_end::Run,
    max_batch: usize,
) -> serde_json::Value {
    serde_json::json!({
        "device": bounds.device.to_string(),
        "preprocess": if bounds.on_gpu { "gpu" } else { "cpu" },
        "batch": max_batch,
        "engine_images_per_second": bounds.engine_rate,
        "engine_from_pixels_images_per_second": bounds.pixels_rate,
        "gpu_preprocess_images_per_second": bounds.kernel_rate,
        "decode_images_per_second": bounds.decode_rate,
        "bound_images_per_second": bounds.bound,
        "end_to_end_images_per_second": run.images_per_second,
        "ratio": run.images_per_second / bounds.bound,
        "every_analysis_images_per_second": every.images_per_second,
        "peak_rss_bytes": run.peak_rss,
        "busy_ratio": run.busy,
    })
}

/// The corpus through the fleet on one queue, compared with the embedded run.
async fn fleet_leg(
    args: &BenchArgs,
    queue: &str,
    corpus: &Path,
    work: &Path,
    max_batch: usize,
    embedded_rate: f64,
) -> anyhow::Result<()> {
    let store = StoreArgs {
        store: args.store.clone(),
        s3_endpoint: args.s3_endpoint.clone(),
        sse: Sse::Aes256,
        sse_kms_key_id: None,
        retention: Default::default(),
    };
    let mut extra = Vec::new();
    if let (true, Some(endpoint)) = (queue.starts_with("sqs://"), &args.sqs_endpoint) {
        extra = vec!["--sqs-endpoint".to_owned(), endpoint.clone()];
    }
    let rate = fleet::measure(queue, &store, &extra, corpus, work, args.images, max_batch).await?;
    let scheme = queue.split("://").next().unwrap_or(queue);
    println!(
        "fleet ({scheme:>4} + store) {rate:8.1} images/s, {:.2} x end-to-end embedded",
        rate / embedded_rate
    );
    Ok(())
}
