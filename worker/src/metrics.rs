//! Every metric the worker exports, in one place. Names follow
//! `tagfleet_<subsystem>_<name>_<unit>[_total]`; label sets are fixed.

use std::sync::LazyLock;

use prometheus::{
    Histogram, HistogramOpts, IntCounterVec, Opts, exponential_buckets, register_histogram,
    register_int_counter_vec,
};

/// Images finished, by outcome: `ok` or an error kind.
pub static IMAGES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        Opts::new(
            "tagfleet_worker_images_total",
            "Images finished, by outcome"
        ),
        &["outcome"]
    )
    .expect("metric registers once")
});

/// Task messages finished, by result: `written` (acked) or `failed` (returned).
pub static TASKS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        Opts::new(
            "tagfleet_worker_tasks_total",
            "Task messages finished, by result"
        ),
        &["result"]
    )
    .expect("metric registers once")
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

/// Wall time of one batch on its device.
pub static INFERENCE_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        HistogramOpts::new(
            "tagfleet_worker_inference_duration_seconds",
            "Wall time of one batch on its device"
        )
        .buckets(exponential_buckets(0.002, 2.0, 14).expect("valid buckets"))
    )
    .expect("metric registers once")
});

/// The text exposition of every registered metric.
pub fn render() -> String {
    prometheus::TextEncoder::new()
        .encode_to_string(&prometheus::gather())
        .unwrap_or_default()
}
