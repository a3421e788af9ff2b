//! What the worker knows about its own health, shared by every stage: whether a stage has
//! died (the worker must stop and exit non-zero, so the orchestrator restarts it) and
//! whether the store answers (while it does not, no new work is taken: a store that is
//! down is a reason to wait, not to spend deliveries). `/readyz` and the metrics read it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tagfleet_io::{ObjectStore, StoreError};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long a transient store error is waited out, call after call, before the work it
/// holds goes back to the queue. Well under RabbitMQ's consumer timeout (30 min by
/// default), which would close the channel on a message held longer.
pub const MAX_OUTAGE_HOLD: Duration = Duration::from_secs(10 * 60);

/// Back-off between tries while the store is unavailable: short enough to resume within
/// a couple of seconds of its return.
const RETRY_DELAYS_MS: [u64; 5] = [100, 250, 500, 1000, 2000];
const MAX_RETRY_DELAY: Duration = Duration::from_secs(2);

/// The pauses between tries: [`RETRY_DELAYS_MS`], then [`MAX_RETRY_DELAY`] for ever.
fn retry_delays() -> impl Iterator<Item = Duration> {
    RETRY_DELAYS_MS
        .into_iter()
        .map(Duration::from_millis)
        .chain(std::iter::repeat(MAX_RETRY_DELAY))
}

#[derive(Debug, Clone)]
pub struct Health {
    inner: Arc<Inner>,
}

impl Default for Health {
    fn default() -> Self {
        crate::metrics::STORE_UP.set(1);
        Self {
            inner: Arc::default(),
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    /// Why the worker must stop; the first failure wins.
    failure: OnceLock<String>,
    failed: CancellationToken,
    store_down: AtomicBool,
    store_back: Notify,
}

impl Health {
    /// A stage died or a device hung: stop taking work, say unready, exit non-zero.
    pub fn fail(&self, what: impl Into<String>) {
        let what = what.into();
        tracing::error!(failure = %what, "the worker cannot go on: it stops taking work and will exit non-zero");
        let _ = self.inner.failure.set(what);
        crate::metrics::FAILED.set(1);
        self.inner.failed.cancel();
    }

    /// The first failure, once there was one.
    pub fn failure(&self) -> Option<&str> {
        self.inner.failure.get().map(String::as_str)
    }

    /// Completes once [`Health::fail`] was called.
    pub async fn failed(&self) {
        self.inner.failed.cancelled().await
    }

    /// Ready to take work: no stage died and the store answers.
    pub fn is_ready(&self) -> bool {
        self.failure().is_none() && self.store_up()
    }

    pub fn store_up(&self) -> bool {
        !self.inner.store_down.load(Ordering::SeqCst)
    }

    /// Records the outcome of a store call: a transient error marks the store down, any
    /// answer (success or a permanent refusal) marks it up again.
    pub fn observe<T>(&self, result: &Result<T, StoreError>) {
        match result {
            Err(e) if e.is_transient() => {
                if !self.inner.store_down.swap(true, Ordering::SeqCst) {
                    tracing::warn!(error = %e, "the store is unavailable: taking no new work until it answers");
                    crate::metrics::STORE_UP.set(0);
                }
            }
            _ => {
                if self.inner.store_down.swap(false, Ordering::SeqCst) {
                    tracing::info!("the store answers again: taking work");
                    crate::metrics::STORE_UP.set(1);
                }
                self.inner.store_back.notify_waiters();
            }
        }
    }

    /// Waits until the store answers, probing it with a read of a key that does not exist
    /// (any answer will do) while nothing else does.
    pub async fn store_answers(&self, store: &dyn ObjectStore) {
        let mut delays = retry_delays();
        while !self.store_up() {
            let back = self.inner.store_back.notified();
            let wait = delays.next().unwrap_or(MAX_RETRY_DELAY);
            tokio::select! {
                () = back => {}
                () = tokio::time::sleep(wait) => {
                    let probe = store.get(PROBE_KEY).await;
                    self.observe(&probe);
                }
            }
        }
    }

    /// Runs `call` against the fleet's store until it succeeds, fails for good, or
    /// `until` passes (the task's hold, [`MAX_OUTAGE_HOLD`] after it was taken, shared by
    /// every call for it); every outcome feeds the store's health. The caller holds its
    /// message meanwhile: waiting out an outage costs no delivery.
    pub async fn persist<T, F, Fut>(
        &self,
        what: &str,
        until: Instant,
        call: F,
    ) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        retry_transient(what, until, Some(self), call).await
    }
}

/// As [`Health::persist`], for buckets other than the fleet's store (a job's sources or
/// output): their outages are waited out too, but say nothing of the store's health.
pub async fn retry_until<T, F, Fut>(what: &str, until: Instant, call: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    retry_transient(what, until, None, call).await
}

async fn retry_transient<T, F, Fut>(
    what: &str,
    until: Instant,
    health: Option<&Health>,
    mut call: F,
) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let mut delays = retry_delays();
    loop {
        let result = call().await;
        if let Some(health) = health {
            health.observe(&result);
        }
        match result {
            Err(e) if e.is_transient() && Instant::now() < until => {
                tracing::debug!(what, error = %e, "store call failed; trying again");
                let wait = delays.next().unwrap_or(MAX_RETRY_DELAY);
                tokio::time::sleep_until((Instant::now() + wait).min(until)).await;
            }
            other => return other,
        }
    }
}

/// Spawns a stage's OS thread: a panic there fails the worker (it stops taking work, says
/// unready and exits non-zero) instead of leaving a live-looking worker with a dead stage.
/// What the thread held is dropped, so its tasks' messages go back to the queue.
pub fn spawn_thread(
    health: &Health,
    name: String,
    body: impl FnOnce() + Send + 'static,
) -> std::thread::JoinHandle<()> {
    let health = health.clone();
    std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || {
            if let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)) {
                health.fail(format!("{name} panicked: {}", panic_message(&*panic)));
            }
        })
        .expect("spawning a pipeline thread")
}

/// Spawns a stage's async task, supervised like [`spawn_thread`].
pub fn spawn_task(
    health: &Health,
    name: &'static str,
    stage: impl std::future::Future<Output = ()> + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    use futures_util::FutureExt;
    let health = health.clone();
    tokio::spawn(async move {
        if let Err(panic) = std::panic::AssertUnwindSafe(stage).catch_unwind().await {
            health.fail(format!(
                "the {name} stage panicked: {}",
                panic_message(&*panic)
            ));
        }
    })
}

/// A panic's message, where it has one.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".into())
}

/// A key no object is ever written at: reading it asks the store to answer, nothing more.
const PROBE_KEY: &str = "health/probe";

#[cfg(test)]
mod tests {
    use super::*;

    fn unavailable() -> StoreError {
        StoreError::Unavailable {
            op: "writing",
            key: "k".into(),
            message: "connection refused".into(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn transient_errors_are_waited_out_and_permanent_ones_returned_at_once() {
        let health = Health::default();
        let mut calls = 0;
        let until = Instant::now() + MAX_OUTAGE_HOLD;
        let result = health
            .persist("test", until, || {
                calls += 1;
                let n = calls;
                async move { if n < 4 { Err(unavailable()) } else { Ok(n) } }
            })
            .await;
        assert_eq!(result.unwrap(), 4);
        assert!(health.store_up(), "a success marks the store up again");

        let mut calls = 0;
        let result: Result<(), _> = health
            .persist("test", until, || {
                calls += 1;
                async {
                    Err(StoreError::Refused {
                        op: "writing",
                        key: "k".into(),
                        message: "AccessDenied".into(),
                    })
                }
            })
            .await;
        assert!(matches!(result, Err(StoreError::Refused { .. })));
        assert_eq!(calls, 1, "a permanent error is not tried again");
    }

    #[tokio::test(start_paused = true)]
    async fn an_outage_longer_than_the_hold_gives_the_error_back() {
        let health = Health::default();
        let started = Instant::now();
        let result: Result<(), _> = health
            .persist("test", started + MAX_OUTAGE_HOLD, || async {
                Err(unavailable())
            })
            .await;
        assert!(result.unwrap_err().is_transient());
        assert_eq!(started.elapsed(), MAX_OUTAGE_HOLD, "not a moment longer");
        assert!(!health.store_up() && !health.is_ready());
    }

    #[test]
    fn a_failure_is_kept_and_makes_the_worker_unready() {
        let health = Health::default();
        assert!(health.is_ready());
        health.fail("prepare-1 panicked");
        health.fail("a later failure");
        assert_eq!(health.failure(), Some("prepare-1 panicked"));
        assert!(!health.is_ready());
    }
}
