//! End to end: the real `tagfleet run` on a corpus made from the photos, as a child
//! process, timed over its whole wall time with its peak memory.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};

use super::BenchArgs;
use super::cpu::children_peak_rss;
use crate::engine::PreprocessOn;

/// What one end-to-end run gave.
pub struct Run {
    pub images_per_second: f64,
    pub peak_rss: u64,
    /// The executors' busy share, as the run reported it.
    pub busy: Option<f64>,
}

/// `n` images in `dir/corpus`: hard links to the photos, round-robin.
pub fn make_corpus(dir: &Path, photos: &[(PathBuf, Vec<u8>)], n: usize) -> anyhow::Result<PathBuf> {
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

/// Runs `tagfleet run` on the corpus as a child process: images/s over its whole wall
/// time (start-up included), its peak RSS in bytes and the executors' busy share.
pub fn measure(
    args: &BenchArgs,
    corpus: &Path,
    work: &Path,
    n: usize,
    max_batch: usize,
    extra: &[&str],
) -> anyhow::Result<Run> {
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
        .args(["--model", &args.engine.model])
        .args(extra);
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
    // "peak RSS 412 MiB": the run's own, since it started. The rusage of children would
    // also count this process's memory, which a spawned child holds until it execs.
    let peak_rss = stderr
        .lines()
        .find_map(|l| {
            l.strip_prefix("peak RSS ")?
                .strip_suffix(" MiB")?
                .parse::<u64>()
                .ok()
        })
        .map_or_else(children_peak_rss, |mib| mib << 20);
    Ok(Run {
        images_per_second: n as f64 / wall,
        peak_rss,
        busy,
    })
}
