//! A local directory as object store, for the embedded mode. Keys map to paths under the
//! root; writes go to a temporary file that is synced and renamed into place.

use std::io::{ErrorKind as IoKind, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use tagfleet_contracts::keys::Area;

use super::{ObjectMeta, ObjectStore, StoreError};

/// Temporary files start with this, so listings skip them.
const TMP_PREFIX: &str = ".tmp-";

#[derive(Debug, Clone)]
pub struct FsStore {
    root: PathBuf,
    retention: Option<Duration>,
}

impl FsStore {
    /// A store rooted at `root` (created if missing). With a retention, objects older than
    /// it are never served.
    pub fn new(root: impl Into<PathBuf>, retention: Option<Duration>) -> std::io::Result<Self> {
        let root = root.into();
        std::fs::create_dir_all(&root)?;
        Ok(Self { root, retention })
    }

    fn path(&self, key: &str) -> Result<PathBuf, StoreError> {
        let valid = !key.is_empty()
            && !key.starts_with('/')
            && key
                .split('/')
                .all(|seg| !seg.is_empty() && seg != "." && seg != "..")
            && !key.split('/').any(|seg| seg.starts_with(TMP_PREFIX))
            && !key.contains('\\')
            && !key.contains('\0');
        if !valid {
            return Err(StoreError::InvalidKey(key.to_owned()));
        }
        Ok(self.root.join(key))
    }

    /// Whether the object at `key`, written at `modified`, is past the retention (which
    /// applies to results and job records only).
    fn is_expired(&self, key: &str, modified: SystemTime) -> bool {
        Area::is_swept(key)
            && tagfleet_contracts::retention::is_expired(
                modified,
                self.retention,
                SystemTime::now(),
            )
    }
}

fn io_err(op: &'static str, key: &str) -> impl FnOnce(std::io::Error) -> StoreError {
    let key = key.to_owned();
    move |source| StoreError::Io { op, key, source }
}

fn write_atomically(path: &Path, body: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().expect("object paths are under the root");
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!("{TMP_PREFIX}{}", uuid::Uuid::new_v4()));
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(body)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        // The rename is durable only once the directory entry is.
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn walk(dir: &Path, root: &Path, out: &mut Vec<ObjectMeta>) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == IoKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        if name.to_string_lossy().starts_with(TMP_PREFIX) {
            continue;
        }
        let meta = entry.metadata()?;
        if meta.is_dir() {
            walk(&entry.path(), root, out)?;
        } else if meta.is_file() {
            let rel = entry.path();
            let rel = rel
                .strip_prefix(root)
                .expect("walked paths are under the root");
            let key = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy())
                .collect::<Vec<_>>();
            out.push(ObjectMeta {
                key: key.join("/"),
                size: meta.len(),
                modified: meta.modified()?,
            });
        }
    }
    Ok(())
}

#[async_trait]
impl ObjectStore for FsStore {
    async fn put(&self, key: &str, body: Vec<u8>) -> Result<(), StoreError> {
        let path = self.path(key)?;
        tokio::task::spawn_blocking(move || write_atomically(&path, &body))
            .await
            .expect("write task does not panic")
            .map_err(io_err("writing", key))
    }

    async fn get(&self, key: &str) -> Result<Vec<u8>, StoreError> {
        let path = self.path(key)?;
        let meta = match tokio::fs::metadata(&path).await {
            Ok(meta) => meta,
            Err(e) if e.kind() == IoKind::NotFound => return Err(StoreError::NotFound(key.into())),
            Err(e) => return Err(io_err("reading", key)(e)),
        };
        if self.is_expired(key, meta.modified().map_err(io_err("reading", key))?) {
            return Err(StoreError::Expired(key.to_owned()));
        }
        match tokio::fs::read(&path).await {
            Ok(body) => Ok(body),
            Err(e) if e.kind() == IoKind::NotFound => Err(StoreError::NotFound(key.into())),
            Err(e) => Err(io_err("reading", key)(e)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        // Walk the deepest directory the prefix names, then filter by the full prefix.
        let dir_part = prefix.rsplit_once('/').map_or("", |(dir, _)| dir);
        let start = if dir_part.is_empty() {
            self.root.clone()
        } else {
            self.path(dir_part)?
        };
        let root = self.root.clone();
        let mut out = tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            walk(&start, &root, &mut out).map(|()| out)
        })
        .await
        .expect("listing task does not panic")
        .map_err(io_err("listing", prefix))?;
        out.retain(|m| m.key.starts_with(prefix));
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let path = self.path(key)?;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == IoKind::NotFound => Ok(()),
            Err(e) => Err(io_err("deleting", key)(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn put_get_list_delete() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::new(dir.path(), None).unwrap();
        store
            .put("results/t/j/a.jsonl", b"one".to_vec())
            .await
            .unwrap();
        store
            .put("results/t/j/b.jsonl", b"two".to_vec())
            .await
            .unwrap();
        store.put("jobs/t/j.json", b"{}".to_vec()).await.unwrap();
        assert_eq!(store.get("results/t/j/a.jsonl").await.unwrap(), b"one");

        let keys: Vec<_> = store
            .list("results/t/j/")
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.key)
            .collect();
        assert_eq!(keys, ["results/t/j/a.jsonl", "results/t/j/b.jsonl"]);
        assert_eq!(store.list("").await.unwrap().len(), 3);
        assert!(store.list("results/other/").await.unwrap().is_empty());

        store.delete("results/t/j/a.jsonl").await.unwrap();
        store.delete("results/t/j/a.jsonl").await.unwrap();
        assert!(matches!(
            store.get("results/t/j/a.jsonl").await,
            Err(StoreError::NotFound(_))
        ));
    }

    #[tokio::test]
    async fn overwrite_replaces_whole_object() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::new(dir.path(), None).unwrap();
        store
            .put("k", b"a much longer first version".to_vec())
            .await
            .unwrap();
        store.put("k", b"short".to_vec()).await.unwrap();
        assert_eq!(store.get("k").await.unwrap(), b"short");
        assert_eq!(
            store.list("").await.unwrap().len(),
            1,
            "no temporary file left behind"
        );
    }

    #[tokio::test]
    async fn keys_cannot_escape_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::new(dir.path().join("store"), None).unwrap();
        for key in ["../x", "a/../../x", "/etc/passwd", "", "a//b", ".tmp-x"] {
            let err = store.put(key, b"x".to_vec()).await.unwrap_err();
            assert!(matches!(err, StoreError::InvalidKey(_)), "{key:?}: {err}");
        }
        assert!(!dir.path().join("x").exists());
    }

    #[tokio::test]
    async fn expired_objects_are_never_served() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::new(dir.path(), Some(Duration::from_millis(200))).unwrap();
        store
            .put("results/t/j/a.jsonl", b"x".to_vec())
            .await
            .unwrap();
        assert!(store.get("results/t/j/a.jsonl").await.is_ok());
        tokio::time::sleep(Duration::from_millis(300)).await;
        let err = store.get("results/t/j/a.jsonl").await.unwrap_err();
        assert!(matches!(err, StoreError::Expired(_)), "{err}");
    }

    #[tokio::test]
    async fn schedules_outlive_the_retention() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::new(dir.path(), Some(Duration::from_millis(200))).unwrap();
        store
            .put("schedules/t/weekly.json", b"{}".to_vec())
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            store.get("schedules/t/weekly.json").await.unwrap(),
            b"{}".to_vec()
        );
    }
}
