//! The retention sweeper: deletes what the retention rule says has expired.

use std::time::{Duration, SystemTime};

use tagfleet_contracts::keys::{Area, Key};
use tagfleet_contracts::retention::is_expired;

use crate::store::{ObjectStore, StoreError};

/// What a sweep did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Swept {
    /// Objects past their retention, deleted.
    pub deleted: usize,
    /// Objects under the swept areas whose keys are not of tagfleet's layout, left alone.
    pub foreign: usize,
}

/// Deletes every result and job record older than `retention`. Only objects whose keys are
/// of the layout tagfleet writes ([`Key::parse`]) are touched: a store may be a folder or a
/// bucket others put files in too, and those are not the sweeper's to delete. They are
/// counted, never named: nothing says their names are not the user's file names.
pub async fn sweep(
    store: &dyn ObjectStore,
    retention: Duration,
    now: SystemTime,
) -> Result<Swept, StoreError> {
    let mut swept = Swept::default();
    for area in Area::SWEPT {
        for object in store.list(area.prefix()).await? {
            if Key::parse(&object.key).is_none() {
                swept.foreign += 1;
            } else if is_expired(object.modified, Some(retention), now) {
                store.delete(&object.key).await?;
                swept.deleted += 1;
            }
        }
    }
    Ok(swept)
}

#[cfg(test)]
mod tests {
    use tagfleet_contracts::retention::DEFAULT_RETENTION;

    use super::*;
    use crate::store::FsStore;

    #[tokio::test]
    async fn sweep_deletes_only_expired_results_and_jobs() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::new(dir.path(), None).unwrap();
        let result = Key::result("t", "j", "t000001").to_string();
        store.put(&result, b"x".to_vec()).await.unwrap();
        let job = Key::job("t", "j").to_string();
        store.put(&job, b"{}".to_vec()).await.unwrap();
        store.put("config/keep.toml", b"".to_vec()).await.unwrap();

        let now = SystemTime::now();
        assert_eq!(
            sweep(&store, DEFAULT_RETENTION, now).await.unwrap().deleted,
            0
        );
        let later = now + DEFAULT_RETENTION + Duration::from_secs(1);
        assert_eq!(
            sweep(&store, DEFAULT_RETENTION, later)
                .await
                .unwrap()
                .deleted,
            2
        );
        let left: Vec<_> = store
            .list("")
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.key)
            .collect();
        assert_eq!(left, ["config/keep.toml"]);
    }

    /// Only keys of the layout tagfleet writes are swept: a file someone else put under
    /// `results/` or `jobs/` stays, however old.
    #[tokio::test]
    async fn sweep_leaves_files_it_did_not_write() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::new(dir.path(), None).unwrap();
        let ours = Key::result("t", "j", "t000001").to_string();
        store.put(&ours, b"x".to_vec()).await.unwrap();
        let foreign = [
            "results/notes.txt",
            "results/t/j/holiday.jpg",
            "results/t/j/t000001.jsonl.bak",
            "jobs/t/readme.md",
            "jobs/t/j/other.json",
        ];
        for key in foreign {
            store.put(key, b"theirs".to_vec()).await.unwrap();
        }
        let later = SystemTime::now() + DEFAULT_RETENTION + Duration::from_secs(1);
        let swept = sweep(&store, DEFAULT_RETENTION, later).await.unwrap();
        assert_eq!(swept.deleted, 1);
        assert_eq!(swept.foreign, foreign.len());
        let left: Vec<_> = store
            .list("")
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.key)
            .collect();
        let mut want = foreign.to_vec();
        want.sort();
        assert_eq!(left, want);
    }

    /// An area that is a link to another folder is not swept through: what it points at
    /// is not the store's, even when it looks like results.
    #[cfg(unix)]
    #[tokio::test]
    async fn sweep_does_not_follow_a_link_out_of_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = dir.path().join("elsewhere");
        std::fs::create_dir_all(elsewhere.join("t/j")).unwrap();
        std::fs::write(elsewhere.join("t/j/t000001.jsonl"), b"theirs").unwrap();
        let root = dir.path().join("store");
        let store = FsStore::new(&root, None).unwrap();
        std::os::unix::fs::symlink(&elsewhere, root.join("results")).unwrap();
        let later = SystemTime::now() + DEFAULT_RETENTION + Duration::from_secs(1);
        let swept = sweep(&store, DEFAULT_RETENTION, later).await.unwrap();
        assert_eq!(swept, Swept::default(), "nothing of the store's to sweep");
        assert!(elsewhere.join("t/j/t000001.jsonl").exists());
    }
}
