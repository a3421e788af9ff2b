//! Flags shared by the commands that run the pipeline (`run`, `worker`) and by those that
//! create tasks (`run`, `submit`).

use std::time::Duration;

use clap::Args;
use tagfleet_contracts::analyses::CropRequest;
use tagfleet_contracts::schema::{Analysis, TaskMessage, TaskOptions, TaskPlan};
use tagfleet_models::{DecodeLimits, ModelSpec};
use tagfleet_worker::BatchPolicy;

use crate::decode_threads;

/// What each task asks for.
#[derive(Debug, Clone, Args)]
pub struct TaskArgs {
    /// Analyses to run, comma separated: tags (labels with their WordNet synsets),
    /// embedding (a vector for visual search), categories (of --categorizer), colors
    /// (dominant colors of the image, its background and foreground), crops (the box for
    /// each of --crops that keeps the most salient content).
    #[arg(
        long,
        env = "TAGFLEET_ANALYSES",
        value_delimiter = ',',
        default_value = "tags"
    )]
    pub analyses: Vec<Analysis>,

    /// Tags reported per image at most.
    #[arg(long, env = "TAGFLEET_TOP_K", default_value_t = TaskOptions::default().top_k)]
    pub top_k: usize,

    /// Tags with a lower confidence (0 to 1) are left out.
    #[arg(long, env = "TAGFLEET_THRESHOLD", default_value_t = TaskOptions::default().threshold)]
    pub threshold: f32,

    /// Adds each tag's WordNet parents ("tabby" also yields "cat", "feline", "animal"),
    /// each with the probability of every class under it.
    #[arg(long, env = "TAGFLEET_PARENTS")]
    pub parents: bool,

    /// Categorizer of the categories analysis: general (what a photo library browses by),
    /// retail (catalogue departments), or one in --categorizers-dir.
    #[arg(long, env = "TAGFLEET_CATEGORIZER", default_value_t = TaskOptions::default().categorizer)]
    pub categorizer: String,

    /// Colors each list of the colors analysis reports at most (1 to 16).
    #[arg(long, env = "TAGFLEET_COLORS", default_value_t = TaskOptions::default().colors)]
    pub colors: usize,

    /// Crops the crops analysis suggests, comma separated: aspect ratios (16:9) or sizes
    /// in pixels (300x200: a box of that ratio at least that big).
    #[arg(
        long,
        env = "TAGFLEET_CROPS",
        value_delimiter = ',',
        default_value = "1:1"
    )]
    pub crops: Vec<CropRequest>,

    /// Images per task message (and per result object).
    #[arg(long, env = "TAGFLEET_CHUNK_SIZE", default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub chunk_size: u32,
}

impl TaskArgs {
    pub fn options(&self) -> anyhow::Result<TaskOptions> {
        let options = TaskOptions {
            top_k: self.top_k,
            threshold: self.threshold,
            retain: true,
            parents: self.parents,
            categorizer: self.categorizer.clone(),
            colors: self.colors,
            crops: self.crops.clone(),
        };
        options.validate()?;
        Ok(options)
    }

    /// The task messages of a job: `refs` in chunks of `chunk_size`.
    pub fn messages(
        &self,
        job_id: &str,
        tenant: &str,
        model: &str,
        refs: &[String],
    ) -> anyhow::Result<Vec<TaskMessage>> {
        let plan = TaskPlan {
            job_id: job_id.to_owned(),
            tenant: tenant.to_owned(),
            analyses: self.analyses.clone(),
            model: model.to_owned(),
            options: self.options()?,
            output: None,
        };
        Ok(plan.messages(0, refs, self.chunk_size as usize))
    }
}

/// How the pipeline batches and decodes.
#[derive(Debug, Clone, Args)]
pub struct PipelineArgs {
    /// Largest batch the model runs. Default: the model's batch.max_batch, or
    /// batch.max_batch_gpu when an executor runs on a GPU.
    #[arg(long, env = "TAGFLEET_MAX_BATCH")]
    pub max_batch: Option<usize>,

    /// Longest an image waits for its batch to fill, in ms. Default: the model's.
    #[arg(long, env = "TAGFLEET_MAX_DELAY_MS")]
    pub max_delay_ms: Option<u64>,

    /// Decode and preprocess threads. Default: the CPUs this process may use (cores, or
    /// its cgroup's CPU quota), and no more than its memory (cgroup limit, else the
    /// machine's) holds with every thread decoding the costliest image allowed
    /// (--max-decode-mib plus --max-image-bytes), after a quarter of it (at least 1 GiB)
    /// and the pixel budget are kept for the rest of the process.
    #[arg(long, env = "TAGFLEET_DECODE_THREADS")]
    pub decode_threads: Option<usize>,

    /// Images larger than this many bytes are refused (error kind too_large).
    #[arg(long, env = "TAGFLEET_MAX_IMAGE_BYTES", default_value_t = DecodeLimits::default().max_bytes)]
    pub max_image_bytes: u64,

    /// Images with more pixels than this are refused from their header, before decoding.
    #[arg(long, env = "TAGFLEET_MAX_IMAGE_PIXELS", default_value_t = DecodeLimits::default().max_pixels)]
    pub max_image_pixels: u64,

    /// Memory one image may hold while it is decoded, in MiB, reckoned from its header
    /// before decoding: its pixels as decoded (16-bit, alpha), the decoder's buffers, the
    /// conversion to RGB8 and a rotation's copy. An image that needs more is refused
    /// (error kind too_large).
    #[arg(
        long,
        env = "TAGFLEET_MAX_DECODE_MIB",
        default_value_t = DecodeLimits::default().max_decode_bytes >> 20,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub max_decode_mib: u64,

    /// Memory for decoded images on their way to GPU preprocessing, in MiB. The decode
    /// threads hand over the pixels of each image's crop (a JPEG at its reduced DCT scale
    /// is well under 2 MB; a 12-megapixel PNG's crop up to 27 MB) and wait while this is
    /// spent.
    #[arg(long, env = "TAGFLEET_PIXEL_BUDGET_MIB", default_value_t = tagfleet_worker::DEFAULT_PIXEL_BUDGET >> 20)]
    pub pixel_budget_mib: usize,

    /// Longest one batch may run on a device, in seconds, before the device is taken to
    /// be hung: the worker then says unready and exits non-zero, so that it is restarted
    /// and its tasks go to other workers.
    #[arg(long, env = "TAGFLEET_BATCH_TIMEOUT_SECS", default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..))]
    pub batch_timeout_secs: u64,
}

impl PipelineArgs {
    pub fn batch_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.batch_timeout_secs)
    }

    /// The batch policy for these executors: the model's GPU batch when any runs on a GPU
    /// (the batcher feeds all of them from one queue), its CPU batch otherwise. Where
    /// executors preprocess images as pixels, a batch also closes before its pixels pass
    /// twice the bytes of its float tensors at the full batch size.
    pub fn batch(
        &self,
        spec: &ModelSpec,
        backends: &[Box<dyn tagfleet_models::Backend>],
    ) -> BatchPolicy {
        let gpu = backends
            .iter()
            .any(|b| !matches!(b.device(), tagfleet_models::Device::Cpu));
        let max_batch = self.max_batch.unwrap_or(spec.batch.max_batch_on(gpu));
        let tensor_bytes = spec.input_len() * std::mem::size_of::<f32>();
        BatchPolicy {
            max_batch,
            max_delay: Duration::from_millis(self.max_delay_ms.unwrap_or(spec.batch.max_delay_ms)),
            max_batch_bytes: tagfleet_worker::pipeline::preprocesses_on_executors(backends)
                .then_some(2 * tensor_bytes * max_batch),
        }
    }

    /// The decode thread count, logged with what bound it. `gpu_preprocessing`: whether
    /// the pixel budget is in use (executors preprocess), so kept out of decode memory.
    pub fn decode_threads(&self, gpu_preprocessing: bool) -> usize {
        if let Some(threads) = self.decode_threads {
            tracing::info!(threads, bound = "--decode-threads", "decode threads");
            return threads.max(1);
        }
        let limits = self.limits();
        let per_thread = limits.max_decode_bytes.saturating_add(limits.max_bytes);
        let reserved = if gpu_preprocessing {
            self.pixel_budget() as u64
        } else {
            0
        };
        decode_threads::choose(per_thread, reserved)
    }

    pub fn pixel_budget(&self) -> usize {
        self.pixel_budget_mib.saturating_mul(1 << 20)
    }

    pub fn limits(&self) -> DecodeLimits {
        DecodeLimits {
            max_bytes: self.max_image_bytes,
            max_pixels: self.max_image_pixels,
            max_decode_bytes: self.max_decode_mib.saturating_mul(1 << 20),
        }
    }
}
