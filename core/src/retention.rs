//! Retention: results and job records live for `retention` (24 h by default) and are then
//! deleted. Three guards keep that promise: stores refuse to serve an expired object, a
//! sweeper deletes them, and (on S3) a lifecycle rule is the backstop.

use std::time::{Duration, SystemTime};

use crate::store::{ObjectStore, StoreError};

/// How long results are kept unless configured otherwise.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(24 * 3600);

/// Prefixes the sweeper cleans: everything derived from users' images.
pub const SWEPT_PREFIXES: [&str; 2] = ["results/", "jobs/"];

/// Whether an object written at `modified` is past `retention` at `now`. Without a
/// retention nothing expires. A clock that went backwards keeps the object.
pub fn is_expired(modified: SystemTime, retention: Option<Duration>, now: SystemTime) -> bool {
    match (retention, now.duration_since(modified)) {
        (Some(retention), Ok(age)) => age >= retention,
        _ => false,
    }
}

/// Deletes every result and job record older than `retention`; returns how many.
pub async fn sweep(
    store: &dyn ObjectStore,
    retention: Duration,
    now: SystemTime,
) -> Result<usize, StoreError> {
    let mut deleted = 0;
    for prefix in SWEPT_PREFIXES {
        for object in store.list(prefix).await? {
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
    use super::*;
    use crate::store::FsStore;

    #[test]
    fn expiry_boundaries() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let day = Some(DEFAULT_RETENTION);
        assert!(!is_expired(
            t0,
            day,
            t0 + Duration::from_secs(24 * 3600 - 1)
        ));
        assert!(is_expired(t0, day, t0 + Duration::from_secs(24 * 3600)));
        assert!(!is_expired(
            t0,
            None,
            t0 + Duration::from_secs(365 * 24 * 3600)
        ));
        assert!(
            !is_expired(t0, day, t0 - Duration::from_secs(5)),
            "clock went backwards"
        );
    }

    #[tokio::test]
    async fn sweep_deletes_only_expired_results_and_jobs() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::new(dir.path(), None).unwrap();
        store
            .put("results/t/j/a.jsonl", b"x".to_vec())
            .await
            .unwrap();
        store.put("jobs/t/j.json", b"{}".to_vec()).await.unwrap();
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
