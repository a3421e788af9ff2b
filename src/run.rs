//! `tagfleet run`: the embedded mode. The whole pipeline in one process: an in-process
//! queue, a local folder as the object store, the CPU. No services needed.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use tagfleet_contracts::keys::job_results_prefix;
use tagfleet_contracts::{Pseudonymiser, TenantKey};
use tagfleet_io::Queue;
use tagfleet_io::queue::{DEFAULT_DELIVERY_LIMIT, MemoryQueue};
use tagfleet_io::store::FsStore;
use tagfleet_worker::{Event, FileRoots, Health, Pipeline, PipelineConfig, Summary, Tenants};
use tokio_util::sync::CancellationToken;

use crate::engine::{self, EngineArgs};
use crate::inputs::{self, Inputs};
use crate::pipeline_args::{PipelineArgs, TaskArgs};
use crate::run_printer::Printer;
use crate::terminal;

/// Exit code when the run finished but some images have error records (or some folders
/// could not be listed, so their images were not in it).
pub const EXIT_SOME_FAILED: i32 = 3;

/// The tenant of the embedded mode.
const LOCAL_TENANT: &str = "local";

#[derive(Debug, Args)]
pub struct RunArgs {
    /// A folder of photos (walked recursively), one photo, or a manifest: one path a
    /// line, or JSON Lines with a "ref" field.
    pub input: PathBuf,

    /// Folder the result objects are written to (results/<tenant>/<job>/<task>.jsonl).
    #[arg(long, env = "TAGFLEET_OUT", default_value = "tagfleet-results")]
    pub out: PathBuf,

    #[command(flatten)]
    pub task: TaskArgs,

    #[command(flatten)]
    pub pipeline: PipelineArgs,

    /// Tenant key file (hex secret) that names images by pseudonym. Created if missing.
    /// Default: $XDG_CONFIG_HOME/tagfleet/local.key, kept apart from the results.
    #[arg(long, env = "TAGFLEET_KEY_FILE")]
    pub key_file: Option<PathBuf>,

    /// Results older than this are deleted at start and never read back.
    #[arg(long, env = "TAGFLEET_RETENTION_HOURS", default_value_t = 24)]
    pub retention_hours: u64,

    /// What to print on stdout per image: a table (the first --show images by name),
    /// JSON Lines (results joined with the file names, on your terminal only, in the
    /// order images finish), or nothing.
    #[arg(long, env = "TAGFLEET_FORMAT", value_enum, default_value_t = Format::Table)]
    pub format: Format,

    /// The table shows at most this many images.
    #[arg(long, env = "TAGFLEET_SHOW", default_value_t = 50)]
    pub show: usize,

    #[command(flatten)]
    pub engine: EngineArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
    None,
}

/// What a finished run reports.
pub struct RunReport {
    pub summary: Summary,
    pub elapsed: Duration,
    pub job_id: String,
}

pub async fn main(args: RunArgs) -> anyhow::Result<i32> {
    let inputs = inputs::collect(&args.input)?;
    if inputs.items.is_empty() {
        bail!(
            "no images found in {} ({} other files skipped)",
            terminal::escaped(&args.input.display().to_string()),
            inputs.skipped
        );
    }
    let report = execute(&args, &inputs).await?;
    print_summary(&args, &inputs, &report);
    Ok(
        if report.summary.image_errors() > 0
            || report.summary.tasks_failed > 0
            || inputs.unlisted > 0
        {
            EXIT_SOME_FAILED
        } else {
            0
        },
    )
}

async fn execute(args: &RunArgs, inputs: &Inputs) -> anyhow::Result<RunReport> {
    let model = args.engine.load_model()?;
    let key_file = args
        .key_file
        .clone()
        .unwrap_or_else(engine::default_key_file);
    let key = TenantKey::load_or_create(&key_file)
        .with_context(|| format!("tenant key {}", key_file.display()))?;
    let pseudonymiser = Pseudonymiser::new(key);
    let store = open_store(args).await?;

    let backends = args.engine.backends(&model)?;
    let queue = Arc::new(MemoryQueue::default());
    let job_id = uuid::Uuid::new_v4().simple().to_string();
    let refs: Vec<String> = inputs.items.iter().map(|i| i.reference.clone()).collect();
    let messages = args
        .task
        .messages(&job_id, LOCAL_TENANT, &model.spec.id(), &refs)?;
    // Every message asks for the same analyses and options: the first speaks for all.
    if let Some(why) = messages.first().and_then(|m| model.classes.refuses(m)) {
        let valid = model.classes.categorizers().join(", ");
        bail!("cannot run this job: {why} (categorizers: {valid})");
    }
    for msg in messages {
        queue.publish(msg.to_json()).await?;
    }
    tracing::info!(job = %job_id, images = inputs.items.len(), model = %model.spec.id(), "job started");

    let config = PipelineConfig {
        batch: args.pipeline.batch(&model.spec, &backends),
        prepare_threads: args.pipeline.decode_threads(
            tagfleet_worker::pipeline::preprocesses_on_executors(&backends),
        ),
        fetch_concurrency: 16,
        max_tasks_in_flight: 4,
        limits: args.pipeline.limits(),
        pixel_budget: args.pipeline.pixel_budget(),
        sources: FileRoots::new(inputs.roots.clone())
            .context("resolving the input folders")?
            .into(),
        exit_when_drained: true,
        progress: None,
        job_check_interval: tagfleet_worker::gate::DEFAULT_INTERVAL,
        // The tasks live in this process only: a long run must not refuse its own.
        max_task_age: None,
        outputs: None,
        delivery_limit: DEFAULT_DELIVERY_LIMIT,
        batch_timeout: args.pipeline.batch_timeout(),
    };
    let pipeline = Pipeline {
        queue,
        store: Arc::new(store),
        tenants: Tenants::single(LOCAL_TENANT, pseudonymiser.clone()).into(),
        spec: model.spec,
        classes: model.classes,
        backends,
        config,
        health: Health::default(),
    };
    let printer = Printer::new(
        std::io::stdout().lock(),
        args.format,
        args.show,
        inputs,
        &pseudonymiser,
    );
    let start = Instant::now();
    let summary = watch(pipeline, inputs.items.len() as u64, printer).await?;
    Ok(RunReport {
        summary,
        elapsed: start.elapsed(),
        job_id,
    })
}

/// The results folder, with what is past the retention deleted first.
async fn open_store(args: &RunArgs) -> anyhow::Result<FsStore> {
    let retention = Duration::from_secs(args.retention_hours.saturating_mul(3600));
    let store = FsStore::new(&args.out, Some(retention))
        .with_context(|| format!("creating results folder {}", args.out.display()))?;
    let swept = tagfleet_io::sweep(&store, retention, SystemTime::now()).await?;
    if swept.deleted > 0 {
        tracing::info!(
            deleted = swept.deleted,
            retention_hours = args.retention_hours,
            "deleted expired results"
        );
    }
    if swept.foreign > 0 {
        // Counted, not named: they are not tagfleet's, so their names may be anything.
        tracing::warn!(
            files = swept.foreign,
            "files under results/ and jobs/ that tagfleet did not write were left alone"
        );
    }
    Ok(store)
}

/// Runs the pipeline to the end (or to Ctrl-C and what was in flight), showing progress
/// and handing each written task's lines to `printer`; returns its summary.
async fn watch(
    pipeline: Pipeline,
    images: u64,
    mut printer: Printer<impl Write>,
) -> anyhow::Result<Summary> {
    let shutdown = CancellationToken::new();
    let on_signal = shutdown.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            tracing::warn!("interrupted: finishing the images in flight");
            on_signal.cancel();
        }
    });
    let (events_tx, mut events_rx) = tokio::sync::mpsc::unbounded_channel();
    let health = pipeline.health.clone();
    let run = tokio::spawn(pipeline.run(shutdown, Some(events_tx)));
    let mut progress = Progress::new(images);
    // A hung device never lets the pipeline end: once it failed, wait a little, no more.
    let given_up = async {
        health.failed().await;
        tokio::time::sleep(FAILED_DRAIN).await;
    };
    tokio::pin!(given_up);
    loop {
        let event = tokio::select! {
            event = events_rx.recv() => event,
            () = &mut given_up => bail!("the run stopped: {}", health.failure().unwrap_or_default()),
        };
        match event {
            None => break,
            Some(Event::Image { .. }) => progress.inc(),
            Some(Event::TaskWritten { lines, .. }) => printer
                .task_written(lines)
                .context("printing the results")?,
            Some(Event::TaskFailed { task_id, .. }) => {
                tracing::error!(task = %task_id, "a result could not be written")
            }
        }
    }
    let summary = run.await.context("the pipeline stopped unexpectedly")?;
    progress.finish();
    if let Some(failure) = health.failure() {
        bail!("the run stopped: {failure}");
    }
    printer.finish().context("printing the results")?;
    Ok(summary)
}

/// How long a failed run waits for the work in flight before it exits.
const FAILED_DRAIN: Duration = Duration::from_secs(30);

/// A bar on a terminal; plain lines every few seconds otherwise.
struct Progress {
    bar: Option<ProgressBar>,
    total: u64,
    done: u64,
    last_line: Instant,
}

impl Progress {
    fn new(total: u64) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template("{bar:40} {pos}/{len} images  {per_sec}  eta {eta}")
                    .expect("the template is valid"),
            );
            bar
        });
        Self {
            bar,
            total,
            done: 0,
            last_line: Instant::now(),
        }
    }

    fn inc(&mut self) {
        self.done += 1;
        match &self.bar {
            Some(bar) => bar.inc(1),
            None if self.last_line.elapsed() >= Duration::from_secs(5) => {
                eprintln!("progress: {}/{} images", self.done, self.total);
                self.last_line = Instant::now();
            }
            None => {}
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

fn print_summary(args: &RunArgs, inputs: &Inputs, report: &RunReport) {
    let s = &report.summary;
    let secs = report.elapsed.as_secs_f64();
    let rate = if secs > 0.0 {
        s.images() as f64 / secs
    } else {
        0.0
    };
    eprintln!(
        "{} images in {secs:.2} s ({rate:.1} images/s): {} ok, {} failed",
        s.images(),
        s.images_ok,
        s.image_errors()
    );
    if !s.errors.is_empty() {
        let kinds: Vec<String> = s.errors.iter().map(|(k, n)| format!("{k}: {n}")).collect();
        eprintln!("errors by kind: {}", kinds.join(", "));
    }
    if inputs.skipped > 0 {
        eprintln!(
            "{} files skipped: not image files by their extension",
            inputs.skipped
        );
    }
    if inputs.unlisted > 0 {
        eprintln!(
            "{} folders could not be listed (permissions?): their images are not in this run",
            inputs.unlisted
        );
    }
    if s.tasks_failed > 0 {
        eprintln!("{} result objects could not be written", s.tasks_failed);
    }
    // How busy the executors were: the GPU (or CPU) share of the run spent in inference.
    let busy: Vec<(String, f64)> = tagfleet_worker::metrics::busy_seconds()
        .into_iter()
        .map(|(device, seconds)| (device, seconds / secs.max(1e-9)))
        .collect();
    if !busy.is_empty() {
        let mean = busy.iter().map(|(_, b)| b).sum::<f64>() / busy.len() as f64;
        let each: Vec<String> = busy
            .iter()
            .map(|(d, b)| format!("{d} {:.0}%", b * 100.0))
            .collect();
        eprintln!(
            "executors busy {:.0}% of the run ({})",
            mean * 100.0,
            each.join(", ")
        );
    }
    if let Some(peak) = peak_rss() {
        eprintln!("peak RSS {} MiB", peak >> 20);
    }
    eprintln!(
        "results: {}",
        args.out
            .join(job_results_prefix(LOCAL_TENANT, &report.job_id))
            .display()
    );
}

/// This process's peak resident memory (VmHWM) in bytes, where /proc tells it.
fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse::<u64>()
        .ok()?;
    Some(kib * 1024)
}
