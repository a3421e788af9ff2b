//! The retention sweeper: deletes what the retention rule says has expired.

use std::time::{Duration, SystemTime};

use tagfleet_contracts::keys::Area;
use tagfleet_contracts::retention::is_expired;

use crate::store::{ObjectStore, StoreError};

/// Deletes every result and job record older than `retention`; returns how many.
pub async fn sweep(
    store: &dyn ObjectStore,
    retention: Duration,
    now: SystemTime,
) -> Result<usize, StoreError> {
    let mut deleted = 0;
    for area in Area::SWEPT {
        for object in store.list(area.prefix()).await? {
            if is_expired(object.modified, Some(retention), now) {
                store.delete(&object.key).await?;
                deleted += 1;
            }
        }
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use tagfleet_contracts::keys::Key;
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
        assert_eq!(sweep(&store, DEFAULT_RETENTION, now).await.unwrap(), 0);
        let later = now + DEFAULT_RETENTION + Duration::from_secs(1);
        assert_eq!(sweep(&store, DEFAULT_RETENTION, later).await.unwrap(), 2);
        let left: Vec<_> = store
            .list("")
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.key)
            .collect();
        assert_eq!(left, ["config/keep.toml"]);
    }
}
