//! The scheduler's work besides the API: loading what the store holds, counting workers'
//! reports, firing schedules, sampling the queue, expiring and sweeping.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use tagfleet_contracts::schema::ProgressMessage;
use tagfleet_io::{Delivery, ObjectStore, Queue};
use tokio_util::sync::CancellationToken;

use crate::api::Service;
use crate::metrics;

/// How often the background work runs.
#[derive(Debug, Clone)]
pub struct Intervals {
    /// Schedules are checked this often.
    pub schedules: Duration,
    /// Queue depth is sampled this often.
    pub queue_depth: Duration,
    /// Expired jobs are erased, running jobs reconciled with their results and the store
    /// swept this often.
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

/// The longest wait between two attempts to write job records.
const MAX_WRITE_BACKOFF: Duration = Duration::from_secs(5);

/// Loads the job records and schedules, counts the tasks of running jobs whose results
/// exist but were never counted, then runs the background work (progress, schedules,
/// queue depth, expiry) until `shutdown`. Marks the service ready once loaded.
///
/// Returns an error when loading fails or the progress consumer dies (a panic): the
/// scheduler cannot count progress any more and must not look healthy. The caller logs
/// it and ends the process.
pub async fn run_background(
    service: Arc<Service>,
    progress: Arc<dyn Queue>,
    store: Arc<dyn ObjectStore>,
    retention: Duration,
    intervals: Intervals,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    metrics::register(service.book.models());
    let jobs = service
        .book
        .load()
        .await
        .context("loading the job records")?;
    let schedules = service
        .schedules
        .load()
        .await
        .context("loading the schedules")?;
    let reconciled = service
        .book
        .reconcile()
        .await
        .context("reconciling running jobs with their results")?;
    tracing::info!(
        jobs,
        schedules,
        reconciled,
        "job records and schedules loaded"
    );
    service.ready.store(true, Ordering::Relaxed);

    let mut consumer = tokio::spawn(consume_progress(
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
    let stopped = loop {
        tokio::select! {
            () = shutdown.cancelled() => break None,
            ended = &mut consumer => break Some(ended),
            _ = fire.tick() => {
                service.schedules.fire_due(&service.book, chrono::Utc::now()).await;
            }
            _ = depth.tick() => service.book.sample_queue().await,
            _ = sweep.tick() => sweep_once(&service, store.as_ref(), retention).await,
        }
    };
    let consumer_ended = match stopped {
        Some(ended) => ended,
        None => consumer.await,
    };
    if let Err(e) = service.book.persist_progress().await {
        tracing::error!(error = %e, "writing job records at shutdown failed");
    }
    match consumer_ended {
        Err(e) if e.is_panic() => {
            service.ready.store(false, Ordering::Relaxed);
            Err(anyhow::anyhow!("counting progress panicked: {e}"))
        }
        _ if !shutdown.is_cancelled() => {
            service.ready.store(false, Ordering::Relaxed);
            Err(anyhow::anyhow!("counting progress stopped"))
        }
        _ => Ok(()),
    }
}

/// One round of the periodic upkeep: erase expired jobs and schedules, count tasks of
/// running jobs from their results, sweep the store. Failures are logged and retried at
/// the next round.
async fn sweep_once(service: &Service, store: &dyn ObjectStore, retention: Duration) {
    match service.book.expire(chrono::Utc::now()).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(jobs = n, "expired jobs erased"),
        Err(e) => tracing::warn!(error = %e, "erasing expired jobs failed"),
    }
    if let Err(e) = service.schedules.expire(chrono::Utc::now()).await {
        tracing::warn!(error = %e, "deleting schedules past their retention failed");
    }
    if let Err(e) = service.book.reconcile().await {
        tracing::warn!(error = %e, "reconciling running jobs with their results failed");
    }
    match tagfleet_io::sweep(store, retention, std::time::SystemTime::now()).await {
        Ok(swept) => {
            if swept.deleted > 0 {
                tracing::info!(
                    objects = swept.deleted,
                    "swept objects past their retention"
                );
            }
            // Objects in the store that are not the fleet's are said once, not every round.
            static FOREIGN_SAID: AtomicBool = AtomicBool::new(false);
            if swept.foreign > 0 && !FOREIGN_SAID.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    objects = swept.foreign,
                    "objects under results/ and jobs/ that tagfleet did not write were left alone"
                );
            }
        }
        Err(e) => tracing::warn!(error = %e, "sweeping failed"),
    }
}

/// Counts workers' reports: receive a batch, count, write the changed records, then ack.
/// A report is never nacked for a store error: a requeue spends one of its deliveries,
/// and enough of them dead-letter it, losing the count for good. It stays unacked while
/// the records are written again and again, with backoff, until they are; meanwhile no
/// more reports come (the queue's prefetch is spent). Returns at `shutdown` only.
pub(crate) async fn consume_progress(
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
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = shutdown.cancelled() => return,
                }
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
        service.book.count_progress(&reports).await;
        if !persist(&service, &shutdown).await {
            // Unacked: the reports come back to the next scheduler, which counts them
            // against the records as they were last written.
            return;
        }
        for delivery in good {
            if let Err(e) = progress.ack(delivery).await {
                tracing::warn!(error = %e, "acking a progress report failed");
            }
        }
    }
}

/// Writes what counting changed, again and again until it is written (true) or the
/// scheduler stops (false).
async fn persist(service: &Service, shutdown: &CancellationToken) -> bool {
    let mut wait = Duration::from_millis(100);
    let mut failures = 0u32;
    loop {
        match service.book.persist_progress().await {
            Ok(()) => {
                if failures > 0 {
                    tracing::info!(failures, "job records written again");
                }
                return true;
            }
            Err(e) => {
                failures += 1;
                let error: &dyn std::error::Error = &e;
                tracing::warn!(
                    error,
                    failures,
                    retry_in_ms = wait.as_millis() as u64,
                    "writing job records failed; their reports stay unacknowledged until they are written"
                );
            }
        }
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = shutdown.cancelled() => return false,
        }
        wait = (wait * 2).min(MAX_WRITE_BACKOFF);
    }
}

#[cfg(test)]
mod tests;
