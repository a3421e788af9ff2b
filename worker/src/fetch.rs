//! Fetching image bytes: `file://` refs under configured roots, `s3://` refs through the
//! worker's S3 client, `https://` refs behind the SSRF guard. Every failure is an error
//! record; messages never repeat the ref.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use async_channel::{Receiver, Sender};
use aws_sdk_s3::error::SdkError;
use tagfleet_contracts::secrets::Access;
use tagfleet_contracts::{ErrorKind, ImageError, S3Location};
use tagfleet_io::StoreError;
use tagfleet_io::store::s3;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::health::{Health, retry_until};
use crate::prepare::Fetched;
use crate::task::{Completed, Tenant, Timings, Work};

/// Where `file://` refs may point.
#[derive(Debug, Clone, Default)]
pub struct FileRoots {
    /// The roots as given (made absolute) and as canonicalised now, so a symlink
    /// cannot widen them later.
    given: Vec<PathBuf>,
    canonical: Vec<PathBuf>,
}

impl FileRoots {
    pub fn new(roots: impl IntoIterator<Item = PathBuf>) -> std::io::Result<Self> {
        let mut given = Vec::new();
        let mut canonical = Vec::new();
        for root in roots {
            canonical.push(root.canonicalize()?);
            given.push(std::path::absolute(&root)?);
        }
        Ok(Self { given, canonical })
    }

    /// Whether `path`, by its text alone, names something under a root: absolute, no `.`
    /// or `..` segment. Nothing on disk is touched, so for a path outside the roots the
    /// answer is the same whether it exists or not.
    fn allows_text(&self, path: &Path) -> bool {
        path.is_absolute()
            && !path
                .components()
                .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
            && self
                .given
                .iter()
                .chain(&self.canonical)
                .any(|root| path.starts_with(root))
    }

    /// Whether a canonical path (symlinks resolved) is under a root.
    fn allows_canonical(&self, path: &Path) -> bool {
        self.canonical.iter().any(|root| path.starts_with(root))
    }
}

/// Where a worker may read images from.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    pub roots: FileRoots,
    /// Client for `s3://` refs; without one they are refused.
    pub s3: Option<aws_sdk_s3::Client>,
    /// The folder of the fleet's own store, when on S3: never read as a source.
    pub fleet_store: Option<S3Location>,
    /// Client for `https://` refs; without one they are refused.
    pub https: Option<crate::https::HttpsFetcher>,
}

impl From<FileRoots> for Sources {
    fn from(roots: FileRoots) -> Self {
        Self {
            roots,
            ..Self::default()
        }
    }
}

/// Reads the bytes of `reference` for `tenant`, refusing images over `max_bytes` before
/// reading them. An `s3://` ref outside the tenant's `sources` is refused before any S3
/// call: the scheduler checked it already, this is the second line. A store that did not
/// answer is an error line here; the fetch stage waits such outages out instead.
pub async fn fetch(
    reference: &str,
    sources: &Sources,
    tenant: &Tenant,
    max_bytes: u64,
) -> Result<Vec<u8>, ImageError> {
    fetch_attempt(reference, sources, tenant, max_bytes)
        .await
        .unwrap_or_else(|_| {
            Err(ImageError::new(
                ErrorKind::Fetch,
                "the store did not answer",
            ))
        })
}

/// One try at [`fetch`]: the outer error is an S3 read that may succeed later (a
/// timeout, a 5xx, throttling), which must not become the image's final error line.
async fn fetch_attempt(
    reference: &str,
    sources: &Sources,
    tenant: &Tenant,
    max_bytes: u64,
) -> Result<Result<Vec<u8>, ImageError>, StoreError> {
    if let Some(path) = reference.strip_prefix("file://") {
        return Ok(fetch_file(path, &sources.roots, max_bytes).await);
    }
    if reference.starts_with("s3://") {
        let location = match S3Location::parse_object(reference) {
            Ok(location) => location,
            Err(e) => {
                let message = format!("invalid s3 ref: {e}");
                return Ok(Err(ImageError::new(ErrorKind::Fetch, message)));
            }
        };
        if let Err(denied) = tenant.check(&location, Access::Read, sources.fleet_store.as_ref()) {
            return Ok(Err(ImageError::new(ErrorKind::Fetch, denied.to_string())));
        }
        return match &sources.s3 {
            Some(client) => fetch_s3(client, &location, max_bytes).await,
            None => Ok(Err(ImageError::new(
                ErrorKind::Fetch,
                "this worker has no S3 access for s3:// refs",
            ))),
        };
    }
    if reference.starts_with("https://") {
        return Ok(match &sources.https {
            Some(client) => client.fetch(reference, max_bytes).await,
            None => Err(ImageError::new(
                ErrorKind::Fetch,
                "this worker does not fetch https:// refs",
            )),
        });
    }
    let scheme = reference.split_once("://").map_or("none", |(s, _)| s);
    Ok(Err(ImageError::new(
        ErrorKind::Fetch,
        format!("unsupported ref scheme {scheme:?}; refs are file://, s3:// or https://"),
    )))
}

pub(crate) fn too_large(size: u64, max_bytes: u64) -> ImageError {
    ImageError::new(
        ErrorKind::TooLarge,
        format!("image is {size} bytes, the limit is {max_bytes}"),
    )
}

async fn fetch_s3(
    client: &aws_sdk_s3::Client,
    location: &S3Location,
    max_bytes: u64,
) -> Result<Result<Vec<u8>, ImageError>, StoreError> {
    let fetch_error = |message: String| Ok(Err(ImageError::new(ErrorKind::Fetch, message)));
    // The SDK's messages can repeat the key: errors keep only the error code.
    let unavailable = |code: &str| StoreError::Unavailable {
        op: "reading",
        key: "an image".into(),
        message: code.to_owned(),
    };
    let object = match client
        .get_object()
        .bucket(location.bucket())
        .key(location.key())
        .send()
        .await
    {
        Ok(object) => object,
        Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => {
            return fetch_error("object not found".into());
        }
        Err(e) => {
            let code = aws_sdk_s3::error::ProvideErrorMetadata::code(&e)
                .unwrap_or(match &e {
                    SdkError::TimeoutError(_) => "timeout",
                    SdkError::DispatchFailure(_) => "no connection",
                    _ => "request failed",
                })
                .to_owned();
            if s3::is_transient(&e) {
                return Err(unavailable(&code));
            }
            return fetch_error(format!("reading the object failed ({code})"));
        }
    };
    let size = object.content_length().unwrap_or(0).max(0) as u64;
    if size > max_bytes {
        return Ok(Err(too_large(size, max_bytes)));
    }
    match object.body.collect().await {
        Ok(body) => Ok(Ok(body.into_bytes().to_vec())),
        // The connection broke mid-body: worth another try.
        Err(_) => Err(unavailable("the object body was cut off")),
    }
}

async fn fetch_file(path: &str, roots: &FileRoots, max_bytes: u64) -> Result<Vec<u8>, ImageError> {
    let fetch_error = |message: &str| ImageError::new(ErrorKind::Fetch, message);
    let outside = || fetch_error("file is outside the worker's allowed roots");
    if !roots.allows_text(Path::new(path)) {
        return Err(outside());
    }
    // Canonicalising resolves symlinks: one inside the roots may still point out.
    let path = tokio::fs::canonicalize(path)
        .await
        .map_err(|e| fetch_error(&io_reason(&e)))?;
    if !roots.allows_canonical(&path) {
        return Err(outside());
    }
    let meta = tokio::fs::metadata(&path)
        .await
        .map_err(|e| fetch_error(&io_reason(&e)))?;
    if !meta.is_file() {
        return Err(fetch_error("not a regular file"));
    }
    if meta.len() > max_bytes {
        return Err(too_large(meta.len(), max_bytes));
    }
    tokio::fs::read(&path)
        .await
        .map_err(|e| fetch_error(&io_reason(&e)))
}

/// An io error's reason without the path that `Display` of some errors carries.
fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "file not found".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        kind => format!("read failed ({kind})"),
    }
}

/// The fetch stage: up to `concurrency` fetches at once; a failed fetch is the image's
/// error line, sent straight to the writer.
pub(crate) async fn fetch_stage(
    input: Receiver<Work>,
    output: Sender<Fetched>,
    failed: Sender<Completed>,
    sources: Sources,
    max_bytes: u64,
    concurrency: usize,
    health: Health,
) {
    let slots = Arc::new(Semaphore::new(concurrency));
    let sources = Arc::new(sources);
    let mut fetches = JoinSet::new();
    while let Ok(mut work) = input.recv().await {
        let slot = slots
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let (output, failed, sources) = (output.clone(), failed.clone(), sources.clone());
        fetches.spawn(async move {
            work.timings = Timings::start();
            let (reference, tenant) = (work.reference(), &work.task.tenant);
            let result = if reference.starts_with("s3://") {
                // An outage is waited out (holding the message), not written down as the
                // image's result. The source is the tenant's bucket, not the fleet's
                // store: it says nothing of the store's health.
                retry_until("reading an image", work.task.hold_until, || {
                    fetch_attempt(reference, &sources, tenant, max_bytes)
                })
                .await
            } else {
                fetch_attempt(reference, &sources, tenant, max_bytes).await
            };
            work.timings.lap("fetch");
            drop(slot);
            let _ = match result {
                Ok(Ok(bytes)) => output.send(Fetched { work, bytes }).await.map_err(drop),
                Ok(Err(error)) => failed
                    .send(Completed {
                        line: work.failed(error),
                        work,
                    })
                    .await
                    .map_err(drop),
                // Dropping the work returns its task's message to the queue.
                Err(e) => {
                    tracing::warn!(job = %work.task.msg.job_id, task = %work.task.msg.task_id, error = %e, "the store stayed unavailable; returning the task");
                    Ok(())
                }
            };
        });
        while let Some(done) = fetches.try_join_next() {
            supervise(done, &health);
        }
    }
    while let Some(done) = fetches.join_next().await {
        supervise(done, &health);
    }
}

/// A fetch that panicked fails the worker, as a stage would.
fn supervise(done: Result<(), tokio::task::JoinError>, health: &Health) {
    if let Err(e) = done
        && let Ok(panic) = e.try_into_panic()
    {
        let why = crate::health::panic_message(&*panic);
        health.fail(format!("a fetch panicked: {why}"));
    }
}

#[cfg(test)]
mod tests {
    use tagfleet_contracts::{Pseudonymiser, Secrets, TenantKey};

    use super::*;
    use crate::task::Tenants;

    /// The embedded mode's tenant: a key, no S3 access.
    fn local() -> Arc<Tenant> {
        let key = Pseudonymiser::new(TenantKey::new(vec![7; 32]).unwrap());
        Tenants::single("local", key).get("local").unwrap().clone()
    }

    fn acme() -> Arc<Tenant> {
        let text = format!(
            "[tenants.acme]\nkey = \"{}\"\nsources = [\"s3://media/acme/\", \"s3://fleet\"]\n",
            "ab".repeat(16)
        );
        Tenants::from_secrets(&Secrets::parse(&text).unwrap())
            .get("acme")
            .unwrap()
            .clone()
    }

    #[tokio::test]
    async fn s3_refs_outside_the_tenants_sources_are_refused_before_any_s3_call() {
        // No S3 client: a ref that passed the check would say so instead.
        let sources = Sources {
            fleet_store: Some(S3Location::parse("s3://fleet/tagfleet").unwrap()),
            ..Sources::default()
        };
        let acme = acme();
        for r in [
            "s3://media/globex/a.jpg",
            "s3://media/acme2/a.jpg",
            "s3://fleet/tagfleet/results/globex/j/t000001.jsonl",
        ] {
            let e = fetch(r, &sources, &acme, 100).await.unwrap_err();
            assert_eq!(e.kind, ErrorKind::Fetch);
            assert!(!e.message.contains("no S3 access"), "{r}: {e}");
            assert!(!e.message.contains("globex"), "{r}: {e}");
        }
        let inside = fetch("s3://media/acme/a.jpg", &sources, &acme, 100)
            .await
            .unwrap_err();
        assert!(inside.message.contains("no S3 access"), "{inside}");
    }

    #[tokio::test]
    async fn a_path_outside_the_roots_reads_the_same_whether_it_exists_or_not() {
        let inside = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("there.jpg"), b"x").unwrap();
        let roots = Sources::from(FileRoots::new([inside.path().to_path_buf()]).unwrap());
        let mut answers = Vec::new();
        for name in ["there.jpg", "not-there.jpg"] {
            for r in [
                format!("file://{}/{name}", outside.path().display()),
                format!("file://{}/../{name}", inside.path().display()),
            ] {
                answers.push(fetch(&r, &roots, &local(), 100).await.unwrap_err().message);
            }
        }
        answers.dedup();
        assert_eq!(answers, ["file is outside the worker's allowed roots"]);
        // A symlink inside the roots that points out is refused too.
        std::os::unix::fs::symlink(
            outside.path().join("there.jpg"),
            inside.path().join("link.jpg"),
        )
        .unwrap();
        let link = format!("file://{}/link.jpg", inside.path().display());
        let e = fetch(&link, &roots, &local(), 100).await.unwrap_err();
        assert_eq!(e.message, "file is outside the worker's allowed roots");
    }

    #[tokio::test]
    async fn reads_files_under_roots_only() {
        let inside = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(inside.path().join("a.bin"), b"abc").unwrap();
        std::fs::write(outside.path().join("b.bin"), b"xyz").unwrap();
        let roots = Sources::from(FileRoots::new([inside.path().to_path_buf()]).unwrap());

        let ok = fetch(
            &format!("file://{}/a.bin", inside.path().display()),
            &roots,
            &local(),
            100,
        )
        .await;
        assert_eq!(ok.unwrap(), b"abc");

        let escape = format!(
            "file://{}/../{}/b.bin",
            inside.path().display(),
            outside.path().display()
        );
        let err = fetch(&escape, &roots, &local(), 100).await.unwrap_err();
        assert_eq!(err.kind, ErrorKind::Fetch);
        assert!(
            !err.message.contains("b.bin"),
            "messages never name the file: {err}"
        );
    }

    #[tokio::test]
    async fn missing_large_and_foreign_refs_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("big.bin"), vec![0u8; 1000]).unwrap();
        let roots = Sources::from(FileRoots::new([dir.path().to_path_buf()]).unwrap());
        let big = fetch(
            &format!("file://{}/big.bin", dir.path().display()),
            &roots,
            &local(),
            999,
        )
        .await;
        assert_eq!(big.unwrap_err().kind, ErrorKind::TooLarge);
        let missing = fetch(
            &format!("file://{}/nope.jpg", dir.path().display()),
            &roots,
            &local(),
            999,
        )
        .await
        .unwrap_err();
        assert_eq!(
            (missing.kind, missing.message.as_str()),
            (ErrorKind::Fetch, "file not found")
        );
        let http = fetch("http://example.invalid/x.jpg", &roots, &local(), 999)
            .await
            .unwrap_err();
        assert!(http.message.contains("\"http\""), "{http}");
    }
}
