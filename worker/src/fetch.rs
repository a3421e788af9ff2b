//! Fetching image bytes. Only `file://` refs under configured roots for now; every failure
//! is an error record. Messages never repeat the ref.

use std::path::{Path, PathBuf};

use tagfleet_core::{ErrorKind, ImageError};

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

/// Reads the bytes of `reference`, refusing files over `max_bytes` before reading them.
pub async fn fetch(
    reference: &str,
    roots: &FileRoots,
    max_bytes: u64,
) -> Result<Vec<u8>, ImageError> {
    let fetch_error = |message: &str| ImageError::new(ErrorKind::Fetch, message);
    let Some(path) = reference.strip_prefix("file://") else {
        let scheme = reference.split_once("://").map_or("none", |(s, _)| s);
        return Err(fetch_error(&format!(
            "unsupported ref scheme {scheme:?}; this worker fetches file:// refs"
        )));
    };
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
        return Err(ImageError::new(
            ErrorKind::TooLarge,
            format!("image is {} bytes, the limit is {max_bytes}", meta.len()),
        ));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_files_under_roots_only() {
        let inside = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(inside.path().join("a.bin"), b"abc").unwrap();
        std::fs::write(outside.path().join("b.bin"), b"xyz").unwrap();
        let roots = FileRoots::new([inside.path().to_path_buf()]).unwrap();

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
        let roots = FileRoots::new([dir.path().to_path_buf()]).unwrap();
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
