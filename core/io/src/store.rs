//! The object store abstraction: where result objects and job records live.

use std::time::SystemTime;

use async_trait::async_trait;

pub mod fs;
pub mod s3;

pub use fs::FsStore;
pub use s3::{S3Options, S3Store};

/// What a listing tells about one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    pub key: String,
    pub size: u64,
    pub modified: SystemTime,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("object {0} not found")]
    NotFound(String),
    /// Past its retention: it must not be served, even if the sweeper has not run yet.
    #[error("object {0} has expired")]
    Expired(String),
    #[error("invalid object key {0:?}")]
    InvalidKey(String),
    /// The bucket keeps old versions of what is deleted: it cannot hold results.
    #[error(
        "bucket {0} has versioning enabled: results and job records deleted there would stay as \
         noncurrent versions. Suspend its versioning (put-bucket-versioning Status=Suspended; \
         versions kept so far expire by the lifecycle rule) or give --store a bucket without it"
    )]
    Versioned(String),
    /// The store did not answer, or answered that it cannot serve now (a timeout, a
    /// refused connection, a 5xx, throttling): the same call may succeed later.
    #[error("{op} {key}: the store is unavailable: {message}")]
    Unavailable {
        op: &'static str,
        key: String,
        message: String,
    },
    /// The store answered that this cannot work (access denied, no such bucket, a bad
    /// request): trying again will not help.
    #[error("{op} {key}: the store refused: {message}")]
    Refused {
        op: &'static str,
        key: String,
        message: String,
    },
    #[error("{op} {key}")]
    Io {
        op: &'static str,
        key: String,
        #[source]
        source: std::io::Error,
    },
}

impl StoreError {
    /// Whether the same call may succeed later: the store was unreachable or busy, not
    /// asked for something it will never do. Transient errors are waited out; permanent
    /// ones are reported once.
    pub fn is_transient(&self) -> bool {
        use std::io::ErrorKind as Io;
        match self {
            StoreError::Unavailable { .. } => true,
            StoreError::Io { source, .. } => matches!(
                source.kind(),
                Io::TimedOut
                    | Io::Interrupted
                    | Io::WouldBlock
                    | Io::ConnectionRefused
                    | Io::ConnectionReset
                    | Io::ConnectionAborted
                    | Io::NotConnected
                    | Io::BrokenPipe
                    | Io::StorageFull
                    | Io::ResourceBusy
            ),
            StoreError::NotFound(_)
            | StoreError::Expired(_)
            | StoreError::InvalidKey(_)
            | StoreError::Versioned(_)
            | StoreError::Refused { .. } => false,
        }
    }
}

#[async_trait]
pub trait ObjectStore: Send + Sync {
    /// Writes `body` at `key` durably and atomically: readers see the old object or the
    /// new one, never a part. Returns once the write would survive a crash.
    async fn put(&self, key: &str, body: Vec<u8>) -> Result<(), StoreError>;

    /// Reads an object. Results and job records past the store's retention answer
    /// [`StoreError::Expired`] (the retention applies to [`Area::SWEPT`] only).
    ///
    /// [`Area::SWEPT`]: tagfleet_contracts::keys::Area::SWEPT
    async fn get(&self, key: &str) -> Result<Vec<u8>, StoreError>;

    /// Lists every object under `prefix`, expired ones included (the sweeper needs them),
    /// sorted by key.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError>;

    /// Deletes an object; deleting a missing object is not an error.
    async fn delete(&self, key: &str) -> Result<(), StoreError>;
}
