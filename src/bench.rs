//! `tagfleet bench`: the throughput bounds and the end-to-end rate, measured in one run on
//! the same photos, and how close end-to-end comes to the bound.
//!
//! On a CPU host the bound is cores / (decode+preprocess CPU-s + inference CPU-s per
//! image): every image costs both, and all cores are shared between them. On a GPU the
//! bound is the slower of the engine and the decode threads; with GPU preprocessing the
//! engine's rate includes the upload and the kernel, and the decode threads only decode.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use tagfleet_models::gpu_preprocess::GpuPreprocessor;
use tagfleet_models::preprocess::Crop;
use tagfleet_models::{Backend, DecodeLimits, Decoded, Preprocessor, decode};

use crate::bench_fleet;
use crate::engine::{self, EngineArgs, PreprocessOn};
use crate::inputs;
use crate::io_args::{Sse, StoreArgs};

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

pub async fn main(args: BenchArgs) -> anyhow::Result<i32> {
    if let Some(url) = &args.publish_queue {
        return crate::bench_publish::run(url, args.publish_refs, args.chunk_size.max(1)).await;
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
    let inputs = inputs::collect(&args.photos)?;
    let mut photos = Vec::new();
    for input in &inputs.items {
        let path = input.reference.trim_start_matches("file://");
        let bytes = std::fs::read(path).with_context(|| format!("reading {path}"))?;
        if decode(&bytes, DecodeLimits::default()).is_ok() {
            photos.push((PathBuf::from(path), bytes));
        }
    }
    if photos.is_empty() {
        bail!("no decodable photos in {}", args.photos.display());
    }
    let cores = engine::cores();
    let budget = Duration::from_secs_f64(args.seconds.max(0.1));
    println!(
        "tagfleet bench: {} photos, {cores} cores, model {}, batch {max_batch}",
        photos.len(),
        model.spec.id()
    );

    // Decode (+ preprocess), one thread: CPU-seconds per image.
    let bytes: Vec<&[u8]> = photos.iter().map(|(_, b)| b.as_slice()).collect();
    let (decode_cpu, _) = measure_prepare(&bytes, None, budget);
    let mut pre = Preprocessor::new(&model.spec.input);
    let (prepare_cpu, tensors) = measure_prepare(&bytes, Some(&mut pre), budget);
    println!(
        "decode              {:8.2} ms CPU per image (one thread)",
        decode_cpu * 1e3
    );
    println!(
        "decode+preprocess   {:8.2} ms CPU per image (one thread)",
        prepare_cpu * 1e3
    );

    // The engine alone on ready tensors, at the chosen batch size; with GPU preprocessing
    // also on decoded pixels, upload and kernel included.
    let mut backends = args.engine.backends(&model)?;
    let backend = backends.first_mut().expect("at least one backend");
    let device = backend.device();
    let on_gpu = backend.preprocesses();
    let (engine_rate, infer_cpu) = measure_engine(backend.as_mut(), &tensors, max_batch, budget)?;
    println!(
        "engine              {engine_rate:8.1} images/s, {:.2} ms CPU per image ({} threads)",
        infer_cpu * 1e3,
        args.engine.threads()
    );
    let decoded: Vec<Decoded> = bytes
        .iter()
        .map(|b| decode(b, DecodeLimits::default()).expect("photos were checked"))
        .collect();
    let pixels_rate = if on_gpu {
        let rate = measure_pixels(backend.as_mut(), &pre, &decoded, max_batch, budget)?;
        println!("engine from pixels  {rate:8.1} images/s (upload + GPU preprocessing + model)");
        Some(rate)
    } else {
        None
    };
    drop(backends);
    // The kernel alone wherever there is a GPU, even when ONNX Runtime has no CUDA.
    let kernel_rate = has_gpu
        .then(|| measure_kernel(&model.spec.input, &pre, &decoded, max_batch, budget))
        .flatten();
    if let Some(rate) = kernel_rate {
        println!("GPU preprocessing   {rate:8.1} images/s (upload + kernel on cuda:0)");
    }

    // On the CPU decode and inference share the cores; on a GPU they run side by side and
    // the slower of the two is the bound.
    let (decode_rate, gpu_rate) = match pixels_rate {
        Some(rate) => (cores as f64 / decode_cpu, rate),
        None => (cores as f64 / prepare_cpu, engine_rate),
    };
    let bound = if matches!(device, tagfleet_models::Device::Cpu) {
        let bound = cores as f64 / (prepare_cpu + infer_cpu);
        println!(
            "bound               {bound:8.1} images/s = {cores} cores / (decode+preprocess + inference CPU-s per image)"
        );
        bound
    } else {
        let bound = gpu_rate.min(decode_rate);
        let what = if on_gpu {
            "decode"
        } else {
            "decode+preprocess"
        };
        println!(
            "bound               {bound:8.1} images/s = min(engine on {device}, {what} on {cores} cores = {decode_rate:.1})"
        );
        bound
    };

    // End to end: the real `tagfleet run` on a corpus of hard links to the photos.
    let work = tempfile::Builder::new()
        .prefix("tagfleet-bench-")
        .tempdir_in(args.work_dir.clone().unwrap_or_else(std::env::temp_dir))
        .context("creating the bench folder")?;
    let corpus = make_corpus(work.path(), &photos, args.images)?;
    let (e2e_rate, peak_rss, busy) =
        measure_run(&args, &corpus, work.path(), args.images, max_batch)?;
    println!(
        "end-to-end          {e2e_rate:8.1} images/s on {} images, peak RSS {:.0} MiB, executors busy {}",
        args.images,
        peak_rss as f64 / (1024.0 * 1024.0),
        busy.map_or("-".into(), |b| format!("{:.0}%", b * 100.0))
    );
    println!(
        "ratio               {:8.2} end-to-end / bound (target >= 0.8)",
        e2e_rate / bound
    );
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "device": device.to_string(),
                "preprocess": if on_gpu { "gpu" } else { "cpu" },
                "batch": max_batch,
                "engine_images_per_second": engine_rate,
                "engine_from_pixels_images_per_second": pixels_rate,
                "gpu_preprocess_images_per_second": kernel_rate,
                "decode_images_per_second": decode_rate,
                "bound_images_per_second": bound,
                "end_to_end_images_per_second": e2e_rate,
                "ratio": e2e_rate / bound,
                "peak_rss_bytes": peak_rss,
                "busy_ratio": busy,
            })
        );
    }
    for queue in &args.fleet_queues {
        let store = StoreArgs {
            store: args.store.clone(),
            s3_endpoint: args.s3_endpoint.clone(),
            sse: Sse::Aes256,
            sse_kms_key_id: None,
            retention_hours: 24,
            retention_secs: None,
        };
        let mut extra = Vec::new();
        if let (true, Some(endpoint)) = (queue.starts_with("sqs://"), &args.sqs_endpoint) {
            extra = vec!["--sqs-endpoint".to_owned(), endpoint.clone()];
        }
        let rate = bench_fleet::measure(
            queue,
            &store,
            &extra,
            &corpus,
            work.path(),
            args.images,
            max_batch,
        )
        .await?;
        let scheme = queue.split("://").next().unwrap_or(queue);
        println!(
            "fleet ({scheme:>4} + store) {rate:8.1} images/s, {:.2} x end-to-end embedded",
            rate / e2e_rate
        );
    }
    Ok(0)
}

/// Decodes the photos round-robin on this thread for about `budget`, and preprocesses
/// them when given a preprocessor; returns CPU-seconds per image and, with a
/// preprocessor, one tensor per photo.
fn measure_prepare(
    photos: &[&[u8]],
    mut pre: Option<&mut Preprocessor>,
    budget: Duration,
) -> (f64, Vec<Vec<f32>>) {
    let mut prepare = |bytes: &[u8]| {
        let decoded: Decoded = decode(bytes, DecodeLimits::default()).expect("photos were checked");
        pre.as_deref_mut().map(|pre| {
            let mut tensor = vec![0.0; pre.tensor_len()];
            pre.run(&decoded, &mut tensor);
            tensor
        })
    };
    let tensors: Vec<Vec<f32>> = photos.iter().filter_map(|b| prepare(b)).collect();
    let start = Instant::now();
    let cpu0 = thread_cpu();
    let mut n = 0usize;
    while start.elapsed() < budget || n < photos.len() {
        std::hint::black_box(prepare(photos[n % photos.len()]));
        n += 1;
    }
    ((thread_cpu() - cpu0) / n as f64, tensors)
}

/// Runs `run_batch` once to warm up, then for about `budget`; returns images/s and
/// process CPU-seconds per image.
fn repeat_batches(
    batch: usize,
    budget: Duration,
    mut run_batch: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<(f64, f64)> {
    run_batch().context("warm-up batch")?;
    let start = Instant::now();
    let cpu0 = process_cpu();
    let mut images = 0usize;
    while start.elapsed() < budget || images == 0 {
        run_batch()?;
        images += batch;
    }
    let wall = start.elapsed().as_secs_f64();
    Ok((images as f64 / wall, (process_cpu() - cpu0) / images as f64))
}

/// `batch` of the decoded photos, round-robin, each with the model's crop.
fn pixel_batch<'a>(
    decoded: &'a [Decoded],
    pre: &Preprocessor,
    batch: usize,
) -> Vec<(&'a Decoded, Crop)> {
    decoded
        .iter()
        .cycle()
        .take(batch)
        .map(|d| (d, pre.crop_box(d.width(), d.height())))
        .collect()
}

/// The engine alone on full batches of ready tensors: images/s and CPU-seconds per image.
fn measure_engine(
    backend: &mut dyn Backend,
    tensors: &[Vec<f32>],
    batch: usize,
    budget: Duration,
) -> anyhow::Result<(f64, f64)> {
    let input: Vec<f32> = tensors
        .iter()
        .cycle()
        .take(batch)
        .flatten()
        .copied()
        .collect();
    repeat_batches(batch, budget, || {
        backend.run(&input, batch, false).context("engine batch")?;
        Ok(())
    })
}

/// Full batches of decoded pixels through GPU preprocessing and the model: images/s.
fn measure_pixels(
    backend: &mut dyn Backend,
    pre: &Preprocessor,
    decoded: &[Decoded],
    batch: usize,
    budget: Duration,
) -> anyhow::Result<f64> {
    let images = pixel_batch(decoded, pre, batch);
    let (rate, _) = repeat_batches(batch, budget, || {
        backend
            .run_pixels(&images, false)
            .context("engine batch from pixels")?;
        Ok(())
    })?;
    Ok(rate)
}

/// Full batches through the GPU preprocessing kernel alone on GPU 0, upload included:
/// images/s, or `None` (said on stderr) where the kernel cannot run.
fn measure_kernel(
    input: &tagfleet_models::spec::InputSpec,
    pre: &Preprocessor,
    decoded: &[Decoded],
    batch: usize,
    budget: Duration,
) -> Option<f64> {
    let mut gpu = GpuPreprocessor::new(0, input)
        .inspect_err(|e| eprintln!("GPU preprocessing not measured: {e}"))
        .ok()?;
    let images = pixel_batch(decoded, pre, batch);
    repeat_batches(batch, budget, || {
        gpu.run(&images)?;
        Ok(())
    })
    .inspect_err(|e| eprintln!("GPU preprocessing failed: {e:#}"))
    .ok()
    .map(|(rate, _)| rate)
}

fn make_corpus(dir: &Path, photos: &[(PathBuf, Vec<u8>)], n: usize) -> anyhow::Result<PathBuf> {
    let corpus = dir.join("corpus");
    std::fs::create_dir_all(&corpus)?;
    for i in 0..n {
        let (src, _) = &photos[i % photos.len()];
        let ext = src.extension().and_then(|e| e.to_str()).unwrap_or("img");
        let dst = corpus.join(format!("{i:06}.{ext}"));
        if std::fs::hard_link(src, &dst).is_err() {
            std::fs::copy(src, &dst)
                .with_context(|| format!("copying into {}", corpus.display()))?;
        }
    }
    Ok(corpus)
}

/// Runs `tagfleet run` on the corpus as a child process; returns images/s over its whole
/// wall time (start-up included) and its peak RSS in bytes.
fn measure_run(
    args: &BenchArgs,
    corpus: &Path,
    work: &Path,
    n: usize,
    max_batch: usize,
) -> anyhow::Result<(f64, u64, Option<f64>)> {
    let exe = std::env::current_exe().context("finding the tagfleet binary")?;
    let mut cmd = Command::new(exe);
    cmd.arg("run")
        .arg(corpus)
        .arg("--out")
        .arg(work.join("results"))
        .arg("--key-file")
        .arg(work.join("bench.key"))
        .args([
            "--format",
            "none",
            "--log",
            "warn",
            "--max-batch",
            &max_batch.to_string(),
        ])
        .args(["--model", &args.engine.model]);
    if let Some(dir) = &args.engine.models_dir {
        cmd.arg("--models-dir").arg(dir);
    }
    if let Some(lib) = &args.engine.ort_dylib {
        cmd.arg("--ort-dylib").arg(lib);
    }
    cmd.arg("--devices").arg(args.engine.devices.to_string());
    cmd.arg("--preprocess").arg(match args.engine.preprocess {
        PreprocessOn::Gpu => "gpu",
        PreprocessOn::Cpu => "cpu",
    });
    let start = Instant::now();
    let output = cmd
        .stderr(std::process::Stdio::piped())
        .output()
        .context("running tagfleet run")?;
    let wall = start.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        bail!(
            "tagfleet run on the corpus failed: {}\n{stderr}",
            output.status
        );
    }
    // "executors busy 93% of the run (...)"
    let busy = stderr.lines().find_map(|l| {
        let pct = l.strip_prefix("executors busy ")?.split('%').next()?;
        pct.trim().parse::<f64>().ok().map(|p| p / 100.0)
    });
    Ok((n as f64 / wall, children_peak_rss(), busy))
}

fn rusage(who: libc::c_int) -> libc::rusage {
    // SAFETY: getrusage only writes the struct it is given.
    unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(who, &mut usage);
        usage
    }
}

fn seconds(tv: libc::timeval) -> f64 {
    tv.tv_sec as f64 + tv.tv_usec as f64 * 1e-6
}

/// User+system CPU-seconds of this thread.
fn thread_cpu() -> f64 {
    let u = rusage(libc::RUSAGE_THREAD);
    seconds(u.ru_utime) + seconds(u.ru_stime)
}

/// User+system CPU-seconds of the whole process (all of ONNX Runtime's threads).
fn process_cpu() -> f64 {
    let u = rusage(libc::RUSAGE_SELF);
    seconds(u.ru_utime) + seconds(u.ru_stime)
}

/// Largest RSS of any waited-for child, in bytes (Linux reports KiB).
fn children_peak_rss() -> u64 {
    rusage(libc::RUSAGE_CHILDREN).ru_maxrss as u64 * 1024
}
