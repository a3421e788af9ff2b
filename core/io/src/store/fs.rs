//! A local directory as object store, for the embedded mode. Keys map to paths under the
//! root; writes go to a temporary file that is synced and renamed into place. Objects are
//! the user's alone (files 0600, folders 0700), and the store never follows a symbolic
//! link below its root: a link there, planted or left over, leads nowhere.

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
        create_private_dirs(&root)?;
        Ok(Self { root, retention })
    }

    /// The path of `key`, once the key is valid. Links on the way are refused where the
    /// path is used ([`refuse_links`]): that needs the disk.
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
}

fn io_err(op: &'static str, key: &str) -> impl FnOnce(std::io::Error) -> StoreError {
    let key = key.to_owned();
    move |source| StoreError::Io { op, key, source }
}

/// Refuses `key` when a part of its path under `root` is a symbolic link, so nothing is
/// read, written or deleted outside the root through one.
fn refuse_links(root: &Path, key: &str) -> std::io::Result<()> {
    if passes_a_link(root, key)? {
        return Err(std::io::Error::new(
            IoKind::InvalidInput,
            "a symbolic link in the store: links are not followed",
        ));
    }
    Ok(())
}

/// Whether a part of `key`'s path under `root` is a symbolic link. The root itself may be
/// one: the user chose it. A part that does not exist yet has nothing to follow. (Not
/// proof against a link swapped in between this check and the use: the folder is the
/// user's own.)
fn passes_a_link(root: &Path, key: &str) -> std::io::Result<bool> {
    let mut path = root.to_path_buf();
    for segment in key.split('/').filter(|s| !s.is_empty()) {
        path.push(segment);
        match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_symlink() => return Ok(true),
            Ok(_) => {}
            Err(e) if e.kind() == IoKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        }
    }
    Ok(false)
}

/// `dir` and its missing parents, created readable by the user alone.
fn create_private_dirs(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

/// A new file readable by the user alone.
fn create_private_file(path: &Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}

fn write_atomically(root: &Path, key: &str, path: &Path, body: &[u8]) -> std::io::Result<()> {
    refuse_links(root, key)?;
    let dir = path.parent().expect("object paths are under the root");
    create_private_dirs(dir)?;
    let tmp = dir.join(format!("{TMP_PREFIX}{}", uuid::Uuid::new_v4()));
    let result = (|| {
        let mut file = create_private_file(&tmp)?;
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

/// The object at `key` unless it is past the retention: `Ok(None)` when it is.
fn read(
    root: &Path,
    key: &str,
    path: &Path,
    retention: Option<Duration>,
) -> std::io::Result<Option<Vec<u8>>> {
    refuse_links(root, key)?;
    let meta = std::fs::metadata(path)?;
    if !meta.is_file() {
        // A folder, or a pipe that would never finish reading.
        return Err(std::io::Error::new(
            IoKind::InvalidInput,
            "not a regular file",
        ));
    }
    // The retention applies to results and job records only.
    if Area::is_swept(key)
        && tagfleet_contracts::retention::is_expired(meta.modified()?, retention, SystemTime::now())
    {
        return Ok(None);
    }
    std::fs::read(path).map(Some)
}

/// Lists the files under `dir`. `DirEntry::metadata` does not follow links, so a link
/// below is neither a file nor a folder here: it is passed over.
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
        let (root, owned) = (self.root.clone(), key.to_owned());
        tokio::task::spawn_blocking(move || write_atomically(&root, &owned, &path, &body))
            .await
            .expect("write task does not panic")
            .map_err(io_err("writing", key))
    }

    async fn get(&self, key: &str) -> Result<Vec<u8>, StoreError> {
        let path = self.path(key)?;
        let (root, owned, retention) = (self.root.clone(), key.to_owned(), self.retention);
        match tokio::task::spawn_blocking(move || read(&root, &owned, &path, retention))
            .await
            .expect("read task does not panic")
        {
            Ok(Some(body)) => Ok(body),
            Ok(None) => Err(StoreError::Expired(key.to_owned())),
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
        let (root, dir_part) = (self.root.clone(), dir_part.to_owned());
        let mut out = tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            // What lies behind a link is not the store's: nothing to list.
            if passes_a_link(&root, &dir_part)? {
                return Ok(out);
            }
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
        let (root, owned) = (self.root.clone(), key.to_owned());
        let result = tokio::task::spawn_blocking(move || {
            refuse_links(&root, &owned)?;
            std::fs::remove_file(&path)
        })
        .await
        .expect("delete task does not panic");
        match result {
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
        let hour = Duration::from_secs(3600);
        let store = FsStore::new(dir.path(), Some(hour)).unwrap();
        store
            .put("results/t/j/a.jsonl", b"x".to_vec())
            .await
            .unwrap();
        assert!(store.get("results/t/j/a.jsonl").await.is_ok());
        // Aged by its timestamp, not by waiting: no race with a slow disk or a busy machine.
        std::fs::File::options()
            .write(true)
            .open(dir.path().join("results/t/j/a.jsonl"))
            .unwrap()
            .set_modified(SystemTime::now() - 2 * hour)
            .unwrap();
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

    #[cfg(unix)]
    #[tokio::test]
    async fn objects_are_written_private_to_the_user() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("out");
        let store = FsStore::new(&root, None).unwrap();
        store
            .put("results/t/j/a.jsonl", b"one".to_vec())
            .await
            .unwrap();
        store.put("jobs/t/j.json", b"{}".to_vec()).await.unwrap();
        let mode = |p: &str| {
            let meta = std::fs::metadata(root.join(p)).unwrap();
            meta.permissions().mode() & 0o777
        };
        for file in ["results/t/j/a.jsonl", "jobs/t/j.json"] {
            assert_eq!(mode(file), 0o600, "{file}");
        }
        for folder in ["", "results", "results/t", "results/t/j", "jobs", "jobs/t"] {
            assert_eq!(mode(folder), 0o700, "{folder:?}");
        }
    }

    /// A link in the store, planted or left over, leads nowhere: nothing outside the root
    /// is listed, read, written or deleted through it.
    #[cfg(unix)]
    #[tokio::test]
    async fn links_in_the_store_are_never_followed() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(outside.join("t/j")).unwrap();
        std::fs::write(outside.join("t/j/t000001.jsonl"), b"theirs").unwrap();
        let root = dir.path().join("store");
        let store = FsStore::new(&root, None).unwrap();

        // The whole area a link: not listed, not written through.
        symlink(&outside, root.join("results")).unwrap();
        assert!(store.list("results/").await.unwrap().is_empty());
        assert!(store.list("results/t/").await.unwrap().is_empty());
        assert!(store.get("results/t/j/t000001.jsonl").await.is_err());
        assert!(
            store
                .put("results/t/j/new.jsonl", b"x".to_vec())
                .await
                .is_err()
        );
        assert!(store.delete("results/t/j/t000001.jsonl").await.is_err());
        assert!(!outside.join("t/j/new.jsonl").exists());
        assert_eq!(
            std::fs::read(outside.join("t/j/t000001.jsonl")).unwrap(),
            b"theirs"
        );

        // One object a link to a file outside: not served.
        std::fs::create_dir_all(root.join("jobs/t")).unwrap();
        symlink(
            outside.join("t/j/t000001.jsonl"),
            root.join("jobs/t/j.json"),
        )
        .unwrap();
        assert!(store.get("jobs/t/j.json").await.is_err());
        assert!(store.list("jobs/").await.unwrap().is_empty());
    }
}
