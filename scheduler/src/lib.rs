//! The tagfleet scheduler: the service users talk to. It turns job specs into task messages
//! on the queue, counts what workers report, keeps job records in the store, fires
//! schedules, cancels and erases, and serves all of it over an HTTP API (see [`api`]).

pub mod api;
pub mod error;
mod jobs;
pub mod legacy;
pub mod metrics;
pub mod record;
pub mod schedules;
pub mod server;
mod sources;
pub mod spec;
pub mod tls;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tagfleet_contracts::schema::ProgressMessage;
use tagfleet_io::{Delivery, ObjectStore, Queue};
use tokio_util::sync::CancellationToken;

pub use api::{SchedulerConfig, Service, operations_router, router};
pub use schedules::ScheduleLimits;

/// How often the background work runs.
#[derive(Debug, Clone)]
pub struct Intervals {
    /// Schedules are checked this often.
    pub schedules: Duration,
    /// Queue depth is sampled this often.
    pub queue_depth: Duration,
    /// Expired jobs are erased and the store swept this often.
    pub sweep: Duration,
}

impl Default for Intervals {
    fn default() -> Self {
        Self {
            schedules: Duration::from_secs(1),
            queue_depth: Duration::from_secs(10),
            sweep: Duration::from_secs(300),
        }
    }
}

/// Loads the job records and schedules, then runs the background work (progress, schedules,
/// queue depth, expiry) until `shutdown`. Marks the service ready once loaded.
pub async fn run_background(
    service: Arc<Service>,
    progress: Arc<dyn Queue>,
    store: Arc<dyn ObjectStore>,
    retention: Duration,
    intervals: Intervals,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    metrics::register(service.book.models());
    let jobs = service.book.load().await?;
    let schedules = service.schedules.load().await?;
    tracing::info!(jobs, schedules, "job records and schedules loaded");
    service.ready.store(true, Ordering::Relaxed);

    let consumer = tokio::spawn(consume_progress(
        service.clone(),
        progress,
        shutdown.clone(),
    ));
    let mut fire = tokio::time::interval(intervals.schedules);
    let mut depth = tokio::time::interval(intervals.queue_depth);
    let mut sweep = tokio::time::interval(intervals.sweep);
    for timer in [&mut fire, &mut depth, &mut sweep] {
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    }
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = fire.tick() => {
                service.schedules.fire_due(&service.book, chrono::Utc::now()).await;
            }
            _ = depth.tick() => service.book.sample_queue().await,
            _ = sweep.tick() => {
                match service.book.expire(chrono::Utc::now()).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(jobs = n, "expired jobs erased"),
                    Err(e) => tracing::warn!(error = %e, "erasing expired jobs failed"),
                }
                if let Err(e) = service.schedules.expire(chrono::Utc::now()).await {
                    tracing::warn!(error = %e, "deleting schedules past their retention failed");
                }
                match tagfleet_io::sweep(store.as_ref(), retention, std::time::SystemTime::now()).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(objects = n, "swept objects past their retention"),
                    Err(e) => tracing::warn!(error = %e, "sweeping failed"),
                }
            }
        }
    }
    let _ = consumer.await;
    if let Err(e) = service.book.flush().await {
        tracing::error!(error = %e, "writing job records at shutdown failed");
    }
    Ok(())
}

/// Counts workers' reports: receive a batch, count, write the changed records, then ack.
async fn consume_progress(
    service: Arc<Service>,
    progress: Arc<dyn Queue>,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let received = tokio::select! {
            r = progress.receive(256, Duration::from_millis(500)) => r,
            () = shutdown.cancelled() => return,
        };
        let deliveries = match received {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "receiving progress failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        if deliveries.is_empty() {
            continue;
        }
        let mut reports = Vec::with_capacity(deliveries.len());
        let mut good: Vec<&Delivery> = Vec::with_capacity(deliveries.len());
        for delivery in &deliveries {
            match ProgressMessage::from_json(&delivery.body) {
                Ok(report) => {
                    reports.push(report);
                    good.push(delivery);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "dead-lettering a malformed progress report");
                    let _ = progress.nack(delivery, false).await;
                }
            }
        }
        match service.book.apply_progress(&reports).await {
            Ok(()) => {
                for delivery in good {
                    if let Err(e) = progress.ack(delivery).await {
                        tracing::warn!(error = %e, "acking a progress report failed");
                    }
                }
            }
            Err(e) => {
                // Not acked: the reports come back and are counted then (once).
                tracing::warn!(error = %e, "writing job records failed; progress will be recounted");
                for delivery in good {
                    let _ = progress.nack(delivery, true).await;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}
