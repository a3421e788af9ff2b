//! Fetching image bytes: `file://` refs under configured roots, `s3://` refs through the
//! worker's S3 client, `https://` refs behind the SSRF guard. Every failure is an error
//! record; messages never repeat the ref.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_channel::{Receiver, Sender};
use tagfleet_contracts::{ErrorKind, ImageError, S3Location};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::prepare::Fetched;
use crate::task::{Completed, Timings, Work};

/// Where `file://` refs may point.
#[derive(Debug, Clone, Default)]
pub struct FileRoots {
    roots: Vec<PathBuf>,
}

impl FileRoots {
    /// Roots are canonicalised now, so a symlink cannot widen them later.
    pub fn new(roots: impl IntoIterator<Item = PathBuf>) -> std::io::Result<Self> {
        let roots = roots
            .into_iter()
            .map(|r| r.canonicalize())
            .collect::<Result<_, _>>()?;
        Ok(Self { roots })
    }

    fn allows(&self, path: &Path) -> bool {
        self.roots.iter().any(|root| path.starts_with(root))
    }
}

/// Where a worker may read images from.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    pub roots: FileRoots,
    /// Client for `s3://` refs; without one they are refused.
    pub s3: Option<aws_sdk_s3::Client>,
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

/// Reads the bytes of `reference`, refusing images over `max_bytes` before reading them.
pub async fn fetch(
    reference: &str,
    sources: &Sources,
    max_bytes: u64,
) -> Result<Vec<u8>, ImageError> {
    if let Some(path) = reference.strip_prefix("file://") {
        return fetch_file(path, &sources.roots, max_bytes).await;
    }
    if reference.starts_with("s3://") {
        return match &sources.s3 {
            Some(client) => fetch_s3(client, reference, max_bytes).await,
            None => Err(ImageError::new(
                ErrorKind::Fetch,
                "this worker has no S3 access for s3:// refs",
            )),
        };
    }
    if reference.starts_with("https://") {
        return match &sources.https {
            Some(client) => client.fetch(reference, max_bytes).await,
            None => Err(ImageError::new(
                ErrorKind::Fetch,
                "this worker does not fetch https:// refs",
            )),
        };
    }
    let scheme = reference.split_once("://").map_or("none", |(s, _)| s);
    Err(ImageError::new(
        ErrorKind::Fetch,
        format!("unsupported ref scheme {scheme:?}; refs are file://, s3:// or https://"),
    ))
}

pub(crate) fn too_large(size: u64, max_bytes: u64) -> ImageError {
    ImageError::new(
        ErrorKind::TooLarge,
        format!("image is {size} bytes, the limit is {max_bytes}"),
    )
}

async fn fetch_s3(
    client: &aws_sdk_s3::Client,
    reference: &str,
    max_bytes: u64,
) -> Result<Vec<u8>, ImageError> {
    let fetch_error = |message: String| ImageError::new(ErrorKind::Fetch, message);
    let location = S3Location::parse_object(reference)
        .map_err(|e| fetch_error(format!("invalid s3 ref: {e}")))?;
    let object = client
        .get_object()
        .bucket(location.bucket())
        .key(location.key())
        .send()
        .await
        .map_err(|e| {
            if e.as_service_error().is_some_and(|s| s.is_no_such_key()) {
                fetch_error("object not found".into())
            } else {
                // The SDK's messages can repeat the key: keep only the error code.
                let code = aws_sdk_s3::error::ProvideErrorMetadata::code(&e)
                    .unwrap_or("request failed")
                    .to_owned();
                fetch_error(format!("reading the object failed ({code})"))
            }
        })?;
    let size = object.content_length().unwrap_or(0).max(0) as u64;
    if size > max_bytes {
        return Err(too_large(size, max_bytes));
    }
    let body = object
        .body
        .collect()
        .await
        .map_err(|_| fetch_error("reading the object body failed".into()))?;
    Ok(body.into_bytes().to_vec())
}

async fn fetch_file(path: &str, roots: &FileRoots, max_bytes: u64) -> Result<Vec<u8>, ImageError> {
    let fetch_error = |message: &str| ImageError::new(ErrorKind::Fetch, message);
    // Canonicalising resolves `..` and symlinks before the root check.
    let path = tokio::fs::canonicalize(path)
        .await
        .map_err(|e| fetch_error(&io_reason(&e)))?;
    if !roots.allows(&path) {
        return Err(fetch_error("file is outside the worker's allowed roots"));
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
            let result = fetch(work.reference(), &sources, max_bytes).await;
            work.timings.lap("fetch");
            drop(slot);
            let _ = match result {
                Ok(bytes) => output.send(Fetched { work, bytes }).await.map_err(drop),
                Err(error) => failed
                    .send(Completed {
                        line: work.failed(error),
                        work,
                    })
                    .await
                    .map_err(drop),
            };
        });
        while fetches.try_join_next().is_some() {}
    }
    while fetches.join_next().await.is_some() {}
}

#[cfg(test)]
mod tests {
    use super::*;

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
            100,
        )
        .await;
        assert_eq!(ok.unwrap(), b"abc");

        let escape = format!(
            "file://{}/../{}/b.bin",
            inside.path().display(),
            outside.path().display()
        );
        let err = fetch(&escape, &roots, 100).await.unwrap_err();
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
            999,
        )
        .await;
        assert_eq!(big.unwrap_err().kind, ErrorKind::TooLarge);
        let missing = fetch(
            &format!("file://{}/nope.jpg", dir.path().display()),
            &roots,
            999,
        )
        .await
        .unwrap_err();
        assert_eq!(
            (missing.kind, missing.message.as_str()),
            (ErrorKind::Fetch, "file not found")
        );
        let http = fetch("http://example.invalid/x.jpg", &roots, 999)
            .await
            .unwrap_err();
        assert!(http.message.contains("\"http\""), "{http}");
    }
}
