//! Every metric the scheduler exports, in one place. Names follow
//! `tagfleet_<subsystem>_<name>_<unit>[_total]`; label sets are fixed; durations are in
//! seconds. Process metrics come from the default registry's `process` collector. They
//! are served on the metrics listener, never on the API's port.

use std::sync::LazyLock;

use prometheus::{
    HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, exponential_buckets,
    register_histogram_vec, register_int_counter, register_int_counter_vec, register_int_gauge,
    register_int_gauge_vec,
};
use tagfleet_contracts::job::JobState;

fn counter(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register_int_counter_vec!(Opts::new(name, help), labels).expect("metric registers once")
}

fn gauge(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    register_int_gauge_vec!(Opts::new(name, help), labels).expect("metric registers once")
}

/// Jobs the scheduler knows, by state.
pub static JOBS: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge(
        "tagfleet_scheduler_jobs",
        "Jobs known, by state",
        &["state"],
    )
});

/// Images: `submitted` in jobs, `done` with a result, `failed` with an error line,
/// `unfinished` never run (their task was given up).
pub static IMAGES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "tagfleet_scheduler_images_total",
        "Images submitted, done, failed and never run",
        &["event"],
    )
});

/// Task messages published to the task queue.
pub static TASKS_PUBLISHED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "tagfleet_scheduler_tasks_published_total",
        "Task messages published"
    )
    .expect("metric registers once")
});

/// Messages waiting: `tasks` in a model's task queue, `dead_letter` in its dead-letter
/// queue; `model` is the model id (`name@version`), one of the scheduler's --model-id.
pub static QUEUE_MESSAGES: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge(
        "tagfleet_scheduler_queue_messages",
        "Messages waiting in each model's task queue and its dead-letter queue",
        &["queue", "model"],
    )
});

/// Images of unfinished jobs not done or failed yet, all jobs together: per-job
/// progress is the API's (`GET /v1/jobs/{id}`), metrics name no tenant and no job.
pub static IMAGES_PENDING: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "tagfleet_scheduler_images_pending",
        "Images of unfinished jobs not yet done or failed"
    )
    .expect("metric registers once")
});

/// Progress reports: `counted`, `given_up` (counted, its images never ran), `duplicate`
/// (a redelivered task), `unknown_job`.
pub static PROGRESS_MESSAGES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "tagfleet_scheduler_progress_messages_total",
        "Progress reports from workers, by result",
        &["result"],
    )
});

/// Tasks counted from their result object because no report of theirs was counted: the
/// reconciliation of running jobs at start-up and at every sweep.
pub static TASKS_RECONCILED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "tagfleet_scheduler_tasks_reconciled_total",
        "Tasks counted from their result object, without a report"
    )
    .expect("metric registers once")
});

/// Jobs created by schedules.
pub static SCHEDULE_FIRINGS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "tagfleet_scheduler_schedule_firings_total",
        "Schedule firings"
    )
    .expect("metric registers once")
});

/// API requests by route template and status code.
pub static HTTP_REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "tagfleet_scheduler_http_requests_total",
        "API requests, by route and status",
        &["route", "status"],
    )
});

/// API request duration by route template.
pub static HTTP_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "tagfleet_scheduler_http_request_duration_seconds",
        "API request duration",
        &["route"],
        exponential_buckets(0.001, 4.0, 9).expect("valid buckets")
    )
    .expect("metric registers once")
});

/// HTTP connections open now, by listener (`api`, `operations`).
pub static HTTP_CONNECTIONS: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge(
        "tagfleet_scheduler_http_connections",
        "HTTP connections open, by listener",
        &["listener"],
    )
});

/// HTTP connections the server closed, by listener and reason: `evicted` (idle, to make
/// room at the connection cap), `timeout` (headers or TLS handshake not sent in time),
/// `tls_failed`.
pub static HTTP_CONNECTIONS_CLOSED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "tagfleet_scheduler_http_connections_closed_total",
        "HTTP connections closed by the server, by listener and reason",
        &["listener", "reason"],
    )
});

/// Touches every metric so each appears in /metrics from the start; `models` are the
/// models the fleet serves.
pub fn register(models: &[String]) {
    for state in JobState::ALL {
        JOBS.with_label_values(&[state.name()]);
    }
    for event in ["submitted", "done", "failed", "unfinished"] {
        IMAGES.with_label_values(&[event]);
    }
    for queue in ["tasks", "dead_letter"] {
        for model in models {
            QUEUE_MESSAGES.with_label_values(&[queue, model]);
        }
    }
    for result in ["counted", "given_up", "duplicate", "unknown_job"] {
        PROGRESS_MESSAGES.with_label_values(&[result]);
    }
    for listener in ["api", "operations"] {
        HTTP_CONNECTIONS.with_label_values(&[listener]);
        for reason in ["evicted", "timeout", "tls_failed"] {
            HTTP_CONNECTIONS_CLOSED.with_label_values(&[listener, reason]);
        }
    }
    LazyLock::force(&TASKS_PUBLISHED);
    LazyLock::force(&SCHEDULE_FIRINGS);
    LazyLock::force(&TASKS_RECONCILED);
    LazyLock::force(&IMAGES_PENDING);
    LazyLock::force(&HTTP_REQUESTS);
    LazyLock::force(&HTTP_SECONDS);
}

/// Every metric of the default registry, in the Prometheus text format.
pub fn render() -> String {
    prometheus::TextEncoder::new()
        .encode_to_string(&prometheus::gather())
        .unwrap_or_default()
}
