//! Every metric the worker exports, in one place. Names follow
//! `tagfleet_<subsystem>_<name>_<unit>[_total]`; label sets are fixed; durations are in
//! seconds. Process metrics (CPU, RSS, open fds) come from the `process` collector that the
//! default registry carries on Linux.

use std::sync::LazyLock;

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    exponential_buckets, register_histogram, register_histogram_vec, register_int_counter_vec,
    register_int_gauge, register_int_gauge_vec,
};

/// The stages an image's time is split into (the `stage` label).
pub const STAGES: [&str; 7] = [
    "fetch",
    "decode",
    "preprocess",
    "queue",
    "inference",
    "postprocess",
    "write",
];

/// The analyses timed on their own (the `analysis` label). Embeddings cost nothing
/// beyond inference; tags and categories are timed within `postprocess`, colors and crops
/// after `decode`, on the decode threads.
pub const ANALYSES: [&str; 4] = ["tags", "categories", "colors", "crops"];

fn counter(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register_int_counter_vec!(Opts::new(name, help), labels).expect("metric registers once")
}

/// Images finished, by outcome (`ok` or an error kind) and model.
pub static IMAGES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "tagfleet_worker_images_total",
        "Images finished, by outcome and model",
        &["outcome", "model"],
    )
});

/// Task messages settled: `acked` after their write, `requeued`, `dead_lettered`,
/// `given_up` (dead-lettered and reported, so the job ends), or
/// acked unprocessed: `skipped` (its job was cancelled or erased) and `expired` (older
/// than the retention, or of unknown age and of a job the store does not know).
pub static MESSAGES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "tagfleet_worker_messages_total",
        "Task messages settled, by result",
        &["result"],
    )
});

/// Seconds a device's executors spent running batches; its rate divided by the device's
/// executors ([`EXECUTORS`]) is their busy ratio.
pub static EXECUTOR_BUSY: LazyLock<prometheus::CounterVec> = LazyLock::new(|| {
    prometheus::register_counter_vec!(
        Opts::new(
            "tagfleet_worker_executor_busy_seconds_total",
            "Seconds an executor spent running batches"
        ),
        &["device"]
    )
    .expect("metric registers once")
});

/// Executors running, by the device they were started for, the kind of device they really
/// run on and where their images are preprocessed (`gpu`: on their device; `cpu`: by the
/// decode threads or themselves). A GPU has one; the CPU one per core by default.
pub static EXECUTORS: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        Opts::new(
            "tagfleet_worker_executor_info",
            "Executors by device, device kind and where they preprocess"
        ),
        &["device", "kind", "preprocess"]
    )
    .expect("metric registers once")
});

/// Images taken from the queue and not yet written.
pub static IN_FLIGHT: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "tagfleet_worker_images_in_flight",
        "Images taken from the queue and not yet written"
    )
    .expect("metric registers once")
});

/// 1 while the store answers, 0 while it does not (no new work is taken then).
pub static STORE_UP: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "tagfleet_worker_store_up",
        "1 while the object store answers; 0 while it is unavailable and no work is taken"
    )
    .expect("metric registers once")
});

/// 1 once a stage died or a device hung: the worker is stopping and will exit non-zero.
pub static FAILED: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "tagfleet_worker_failed",
        "1 once a pipeline stage died or a device failed for good; the worker then exits non-zero"
    )
    .expect("metric registers once")
});

/// Batches that failed on a device, by device; their tasks went back to the queue.
pub static BATCH_FAILURES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "tagfleet_worker_batch_failures_total",
        "Batches that failed on a device (their tasks go back to the queue)",
        &["device"],
    )
});

/// Images per executed batch.
pub static BATCH_SIZE: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        HistogramOpts::new(
            "tagfleet_worker_batch_size_images",
            "Images per executed batch"
        )
        .buckets(exponential_buckets(1.0, 2.0, 10).expect("valid buckets"))
    )
    .expect("metric registers once")
});

/// Seconds an image spent in each stage (`write` is per task object).
pub static STAGE_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        HistogramOpts::new(
            "tagfleet_worker_stage_duration_seconds",
            "Seconds spent per stage"
        )
        .buckets(exponential_buckets(0.0005, 2.5, 14).expect("valid buckets")),
        &["stage"]
    )
    .expect("metric registers once")
});

/// Seconds an image's analyses took, each on its own.
pub static ANALYSIS_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        HistogramOpts::new(
            "tagfleet_worker_analysis_duration_seconds",
            "Seconds an analysis took per image"
        )
        .buckets(exponential_buckets(0.000_05, 2.5, 12).expect("valid buckets")),
        &["analysis"]
    )
    .expect("metric registers once")
});

/// Records an image's per-stage and per-analysis milliseconds, as written in its result
/// line.
pub fn observe_stages(timings_ms: &std::collections::BTreeMap<String, f64>) {
    for (name, ms) in timings_ms {
        if let Some(stage) = STAGES.iter().find(|s| **s == name) {
            STAGE_SECONDS.with_label_values(&[stage]).observe(ms / 1e3);
        } else if let Some(analysis) = ANALYSES.iter().find(|a| **a == name) {
            ANALYSIS_SECONDS
                .with_label_values(&[analysis])
                .observe(ms / 1e3);
        }
    }
}

/// The text exposition of every registered metric.
pub fn render() -> String {
    prometheus::TextEncoder::new()
        .encode_to_string(&prometheus::gather())
        .unwrap_or_default()
}

/// Busy fraction (0..1) of each GPU over NVML's last sample period.
pub static GPU_UTILIZATION: LazyLock<prometheus::GaugeVec> = LazyLock::new(|| {
    prometheus::register_gauge_vec!(
        Opts::new(
            "tagfleet_worker_gpu_utilization_ratio",
            "Fraction of time a kernel ran on the GPU (NVML)"
        ),
        &["gpu"]
    )
    .expect("metric registers once")
});

/// Device memory in use per GPU.
pub static GPU_MEMORY_USED: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        Opts::new(
            "tagfleet_worker_gpu_memory_used_bytes",
            "GPU memory in use (NVML)"
        ),
        &["gpu"]
    )
    .expect("metric registers once")
});

/// Device memory installed per GPU.
pub static GPU_MEMORY_TOTAL: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        Opts::new(
            "tagfleet_worker_gpu_memory_total_bytes",
            "GPU memory installed (NVML)"
        ),
        &["gpu"]
    )
    .expect("metric registers once")
});

/// Seconds spent running batches so far, per executor of each device (the mean of the
/// device's executors).
pub fn busy_seconds() -> Vec<(String, f64)> {
    use prometheus::core::Collector;
    let device_of = |m: &prometheus::proto::Metric| {
        m.get_label()
            .iter()
            .find(|l| l.name() == "device")
            .map(|l| l.value().to_owned())
            .unwrap_or_default()
    };
    let mut executors = std::collections::HashMap::<String, f64>::new();
    for m in EXECUTORS
        .collect()
        .iter()
        .flat_map(|family| family.get_metric().iter())
    {
        *executors.entry(device_of(m)).or_default() += m.get_gauge().get_value();
    }
    EXECUTOR_BUSY
        .collect()
        .iter()
        .flat_map(|family| family.get_metric().iter())
        .map(|m| {
            let device = device_of(m);
            let n = executors.get(&device).copied().unwrap_or(1.0).max(1.0);
            (device, m.get_counter().get_value() / n)
        })
        .collect()
}
