//! S3 (or an S3-compatible server) as the object store. Every PUT asks for server-side
//! encryption; reads refuse objects past the retention; a lifecycle rule on the results
//! and job prefixes deletes what the sweeper might miss. A bucket with versioning on is
//! refused: a delete there only hides an object, whose data stays as an old version.

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    BucketLifecycleConfiguration, BucketVersioningStatus, ExpirationStatus, LifecycleExpiration,
    LifecycleRule, LifecycleRuleFilter, NoncurrentVersionExpiration, ServerSideEncryption,
};

use super::{ObjectMeta, ObjectStore, StoreError};
use crate::aws::{Endpoint, sdk_config};
use tagfleet_contracts::S3Location;
use tagfleet_contracts::keys::Area;
use tagfleet_contracts::retention::is_expired;

/// Lifecycle rules this store owns are named with this prefix; others are left alone.
const RULE_PREFIX: &str = "tagfleet-expire-";

/// Server-side encryption asked for on every write.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Encryption {
    /// SSE-S3: keys managed by the store.
    #[default]
    Aes256,
    /// SSE-KMS with this key id (or the account's default key when `None`).
    Kms(Option<String>),
}

/// Where and how to store.
#[derive(Debug, Clone)]
pub struct S3Options {
    /// The bucket, and the folder inside it that holds the store's keys.
    pub location: S3Location,
    pub endpoint: Endpoint,
    /// Path-style addressing (`host/bucket/key`), which most compatible servers need.
    pub path_style: bool,
    pub encryption: Encryption,
    pub retention: Option<Duration>,
}

impl S3Options {
    /// A store at `location` with the default endpoint, encryption and no retention.
    pub fn at(location: S3Location) -> Self {
        Self {
            location,
            endpoint: Endpoint::default(),
            path_style: false,
            encryption: Encryption::default(),
            retention: None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct S3Store {
    client: Client,
    options: S3Options,
    /// `options.location`'s folder, prepended to every store key.
    prefix: String,
}

impl S3Store {
    /// The same client and encryption at another location, such as a client's own
    /// output; no retention applies there, it is the client's.
    pub fn elsewhere(&self, location: &S3Location) -> Self {
        let mut options = self.options.clone();
        options.location = location.clone();
        options.retention = None;
        Self::with_client(self.client.clone(), options)
    }

    fn with_client(client: Client, options: S3Options) -> Self {
        Self {
            client,
            prefix: options.location.folder(),
            options,
        }
    }
}

/// Whether a failed S3 call may succeed later: no answer, a timeout, a 5xx or throttling.
/// Any other answer (access denied, no such bucket or key) will not change by retrying.
pub fn is_transient<E: ProvideErrorMetadata>(e: &SdkError<E, HttpResponse>) -> bool {
    match e {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            true
        }
        SdkError::ServiceError(service) => {
            let status = service.raw().status().as_u16();
            status >= 500
                || status == 429
                || status == 408
                || matches!(
                    service.err().code(),
                    Some("SlowDown" | "RequestTimeout" | "InternalError" | "ServiceUnavailable")
                )
        }
        _ => false,
    }
}

/// A failed S3 call as a store error, classified by [`is_transient`]. The message keeps
/// the SDK's chain of causes, which tells a refused connection from a denied request.
fn s3_error<E>(op: &'static str, key: &str, e: SdkError<E, HttpResponse>) -> StoreError
where
    E: std::error::Error + ProvideErrorMetadata + Send + Sync + 'static,
{
    let transient = is_transient(&e);
    let message = DisplayErrorContext(&e).to_string();
    let key = key.to_owned();
    if transient {
        StoreError::Unavailable { op, key, message }
    } else {
        StoreError::Refused { op, key, message }
    }
}

/// A store set-up step that cannot work as asked.
fn refused(op: &'static str, key: &str, e: impl std::error::Error) -> StoreError {
    StoreError::Refused {
        op,
        key: key.to_owned(),
        message: DisplayErrorContext(&e).to_string(),
    }
}

/// A failed read of an object's body: the connection broke mid-way, worth another try.
fn body_error(key: &str, e: impl std::error::Error) -> StoreError {
    StoreError::Unavailable {
        op: "reading",
        key: key.to_owned(),
        message: DisplayErrorContext(&e).to_string(),
    }
}

impl S3Store {
    pub async fn connect(options: S3Options) -> Self {
        options.endpoint.warn_if_plaintext("s3");
        let sdk = sdk_config(&options.endpoint).await;
        let config = aws_sdk_s3::config::Builder::from(&sdk)
            .force_path_style(options.path_style)
            .build();
        Self::with_client(Client::from_conf(config), options)
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The folder this store keeps its keys in.
    pub fn location(&self) -> &S3Location {
        &self.options.location
    }

    pub fn bucket(&self) -> &str {
        self.options.location.bucket()
    }

    /// The full object key of a store key.
    pub fn object_key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// Creates the bucket if it does not exist (tests and first start-up).
    pub async fn ensure_bucket(&self) -> Result<(), StoreError> {
        if self
            .client
            .head_bucket()
            .bucket(self.bucket())
            .send()
            .await
            .is_ok()
        {
            return Ok(());
        }
        match self
            .client
            .create_bucket()
            .bucket(self.bucket())
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_bucket_already_owned_by_you()) =>
            {
                Ok(())
            }
            Err(e) => Err(s3_error("creating bucket", self.bucket(), e)),
        }
    }

    /// Refuses a bucket with versioning enabled: there a delete (the sweeper's, an
    /// erasure's, a deliver-once read's) only adds a delete marker, and every result and
    /// job record would stay in the bucket as a noncurrent version. A suspended bucket
    /// deletes for good again; versions it kept from before are what our lifecycle
    /// rules' noncurrent-version expiration deletes. A bucket that does not exist yet
    /// keeps nothing either.
    pub async fn ensure_unversioned(&self) -> Result<(), StoreError> {
        let bucket = self.bucket();
        let out = match self
            .client
            .get_bucket_versioning()
            .bucket(bucket)
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) if e.as_service_error().and_then(|s| s.code()) == Some("NoSuchBucket") => {
                return Ok(());
            }
            Err(e) => {
                return Err(s3_error(
                    "reading the versioning state (s3:GetBucketVersioning) of",
                    bucket,
                    e,
                ));
            }
        };
        match out.status() {
            Some(BucketVersioningStatus::Enabled) => Err(StoreError::Versioned(bucket.to_owned())),
            Some(BucketVersioningStatus::Suspended) => {
                tracing::warn!(
                    bucket,
                    "the results bucket had versioning on: versions kept then are deleted by the noncurrent-version lifecycle rule, a day after they became noncurrent"
                );
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Makes sure the bucket expires results and job records after one day, merging our
    /// rules with the bucket's others, and reads them back. Lifecycle rules count whole
    /// days, so they are the backstop; the sweeper and expiry-aware reads keep the hours.
    pub async fn ensure_lifecycle(&self) -> Result<(), StoreError> {
        let bucket = self.bucket();
        let existing = match self
            .client
            .get_bucket_lifecycle_configuration()
            .bucket(bucket)
            .send()
            .await
        {
            Ok(out) => out.rules.unwrap_or_default(),
            Err(e) if is_no_lifecycle(&e) => Vec::new(),
            Err(e) => return Err(s3_error("reading lifecycle rules of", bucket, e)),
        };
        let mut rules: Vec<LifecycleRule> = existing
            .into_iter()
            .filter(|r| !r.id().is_some_and(|id| id.starts_with(RULE_PREFIX)))
            .collect();
        let wanted = self.wanted_rules();
        rules.extend(wanted.iter().cloned());
        let config = BucketLifecycleConfiguration::builder()
            .set_rules(Some(rules))
            .build()
            .map_err(|e| refused("building lifecycle rules for", bucket, e))?;
        self.client
            .put_bucket_lifecycle_configuration()
            .bucket(bucket)
            .lifecycle_configuration(config)
            .send()
            .await
            .map_err(|e| s3_error("setting lifecycle rules of", bucket, e))?;

        let now = self
            .client
            .get_bucket_lifecycle_configuration()
            .bucket(bucket)
            .send()
            .await;
        let now = now
            .map_err(|e| s3_error("reading back lifecycle rules of", bucket, e))?
            .rules
            .unwrap_or_default();
        for rule in &wanted {
            let present = now.iter().any(|r| {
                r.filter().and_then(|f| f.prefix()) == rule.filter().and_then(|f| f.prefix())
                    && r.expiration().and_then(|e| e.days()) == Some(1)
                    && r.noncurrent_version_expiration()
                        .and_then(|e| e.noncurrent_days())
                        == Some(1)
                    && r.status() == &ExpirationStatus::Enabled
            });
            if !present {
                return Err(refused(
                    "verifying lifecycle rules of",
                    bucket,
                    std::io::Error::other(format!(
                        "rule {:?} is missing after it was set",
                        rule.id()
                    )),
                ));
            }
        }
        Ok(())
    }

    fn wanted_rules(&self) -> Vec<LifecycleRule> {
        self.lifecycle_rules(LifecycleExpiration::builder().days(1).build())
    }

    /// Our lifecycle rules (one per swept prefix) with the given expiration: 1 day in
    /// production; tests give a date in the past to see a real store enforce the shape.
    /// Each also expires noncurrent versions a day after they became noncurrent: the
    /// backstop for a bucket whose versioning was (or is later) turned on.
    pub fn lifecycle_rules(&self, expiration: LifecycleExpiration) -> Vec<LifecycleRule> {
        Area::SWEPT
            .iter()
            .map(|area| {
                let prefix = self.object_key(area.prefix());
                LifecycleRule::builder()
                    .id(format!(
                        "{RULE_PREFIX}{}",
                        prefix.trim_end_matches('/').replace('/', "-")
                    ))
                    .status(ExpirationStatus::Enabled)
                    .filter(LifecycleRuleFilter::builder().prefix(prefix).build())
                    .expiration(expiration.clone())
                    .noncurrent_version_expiration(
                        NoncurrentVersionExpiration::builder()
                            .noncurrent_days(1)
                            .build(),
                    )
                    .build()
                    .expect("id, status and filter are set")
            })
            .collect()
    }
}

fn is_no_lifecycle<E, R>(e: &SdkError<E, R>) -> bool
where
    E: ProvideErrorMetadata,
{
    e.as_service_error().and_then(|s| s.code()) == Some("NoSuchLifecycleConfiguration")
}

#[async_trait]
impl ObjectStore for S3Store {
    async fn put(&self, key: &str, body: Vec<u8>) -> Result<(), StoreError> {
        let mut put = self
            .client
            .put_object()
            .bucket(self.bucket())
            .key(self.object_key(key))
            .body(ByteStream::from(body));
        put = match &self.options.encryption {
            Encryption::Aes256 => put.server_side_encryption(ServerSideEncryption::Aes256),
            Encryption::Kms(key_id) => put
                .server_side_encryption(ServerSideEncryption::AwsKms)
                .set_ssekms_key_id(key_id.clone()),
        };
        put.send()
            .await
            .map(drop)
            .map_err(|e| s3_error("writing", key, e))
    }

    async fn get(&self, key: &str) -> Result<Vec<u8>, StoreError> {
        let out = match self
            .client
            .get_object()
            .bucket(self.bucket())
            .key(self.object_key(key))
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => {
                return Err(StoreError::NotFound(key.to_owned()));
            }
            Err(e) => return Err(s3_error("reading", key, e)),
        };
        let modified = out
            .last_modified()
            .and_then(|t| SystemTime::try_from(*t).ok());
        let past = |m| is_expired(m, self.options.retention, SystemTime::now());
        if Area::is_swept(key) && modified.is_some_and(past) {
            return Err(StoreError::Expired(key.to_owned()));
        }
        let body = out.body.collect().await.map_err(|e| body_error(key, e))?;
        Ok(body.into_bytes().to_vec())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(self.bucket())
            .prefix(self.object_key(prefix))
            .into_paginator()
            .send();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| s3_error("listing", prefix, e))?;
            for object in page.contents() {
                let Some(full) = object.key() else { continue };
                let Some(key) = full.strip_prefix(&self.prefix) else {
                    continue;
                };
                out.push(ObjectMeta {
                    key: key.to_owned(),
                    size: object.size().unwrap_or(0).max(0) as u64,
                    modified: object
                        .last_modified()
                        .and_then(|t| SystemTime::try_from(*t).ok())
                        .unwrap_or(SystemTime::UNIX_EPOCH),
                });
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.client
            .delete_object()
            .bucket(self.bucket())
            .key(self.object_key(key))
            .send()
            .await
            .map(drop)
            .map_err(|e| s3_error("deleting", key, e))
    }
}
