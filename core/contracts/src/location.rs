//! `s3://bucket/key` locations: parsed and validated once, here. Sources, manifests,
//! refs, outputs and the fleet's own store all use this type, so they accept the same
//! syntax and can be compared (a tenant's allow-list is a list of these).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A bucket and a key (an object) or key prefix (a folder) in it. On the wire it is its
/// `s3://` string, validated when read.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct S3Location {
    bucket: String,
    key: String,
}

/// Why a string is not an `s3://` location. Messages never repeat the input beyond its
/// scheme, since a location can name a tenant's object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LocationError {
    #[error("expected s3://bucket/key")]
    NotS3,
    #[error("the bucket name is not a valid bucket name")]
    Bucket,
    #[error("the location names a bucket but no object")]
    NoObject,
    #[error("the key holds an empty, `.` or `..` segment")]
    Segment,
}

impl S3Location {
    /// Parses `s3://bucket[/key]`. Bucket names follow S3's rules (3–63 characters of
    /// lowercase letters, digits, `.` and `-`); keys may not hold `.`/`..` segments or
    /// control characters, so a location means the same to every reader.
    pub fn parse(uri: &str) -> Result<Self, LocationError> {
        let rest = uri.strip_prefix("s3://").ok_or(LocationError::NotS3)?;
        let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
        if !is_bucket_name(bucket) {
            return Err(LocationError::Bucket);
        }
        if key.chars().any(char::is_control) {
            return Err(LocationError::Segment);
        }
        let trimmed = key.strip_suffix('/').unwrap_or(key);
        if !trimmed.is_empty()
            && trimmed
                .split('/')
                .any(|s| s.is_empty() || s == "." || s == "..")
        {
            return Err(LocationError::Segment);
        }
        Ok(Self {
            bucket: bucket.to_owned(),
            key: key.to_owned(),
        })
    }

    /// Parses a location that must name one object (a ref, a stored manifest).
    pub fn parse_object(uri: &str) -> Result<Self, LocationError> {
        let location = Self::parse(uri)?;
        if location.key.is_empty() || location.key.ends_with('/') {
            return Err(LocationError::NoObject);
        }
        Ok(location)
    }

    /// The location of `key` in `bucket`.
    pub fn new(bucket: &str, key: &str) -> Result<Self, LocationError> {
        Self::parse(&uri(bucket, key))
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The key as written: an object's key, or a prefix (possibly empty).
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The key as a folder: empty for the whole bucket, otherwise ending in `/`, so
    /// `s3://b/photos` and `s3://b/photos/` mean the same folder and never `photos2/`.
    pub fn folder(&self) -> String {
        let key = self.key.trim_end_matches('/');
        if key.is_empty() {
            String::new()
        } else {
            format!("{key}/")
        }
    }

    /// Whether this location lies inside `folder` (taken as a folder, see
    /// [`S3Location::folder`]): same bucket, and the key starts with its folder.
    pub fn is_within(&self, folder: &S3Location) -> bool {
        self.bucket == folder.bucket
            && (self.key.starts_with(&folder.folder())
                || self.key.trim_end_matches('/') == folder.key.trim_end_matches('/'))
    }
}

impl fmt::Display for S3Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&uri(&self.bucket, &self.key))
    }
}

/// The `s3://` ref of an object as a listing names it. Not every key S3 accepts is a
/// valid [`S3Location`] (`a//b`, `a/../b`): such refs are kept, and fail as one image
/// when they are read, instead of vanishing from a job.
pub fn uri(bucket: &str, key: &str) -> String {
    format!("s3://{bucket}/{key}")
}

impl FromStr for S3Location {
    type Err = LocationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<String> for S3Location {
    type Error = LocationError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<S3Location> for String {
    fn from(location: S3Location) -> Self {
        location.to_string()
    }
}

/// S3's bucket naming rules, without the rarer reservations (`xn--` prefixes and such)
/// that S3 itself enforces on creation.
fn is_bucket_name(name: &str) -> bool {
    (3..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric()
        && !name.contains("..")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse_into_bucket_and_key() {
        let l = S3Location::parse("s3://media/2026/a b.jpg").unwrap();
        assert_eq!((l.bucket(), l.key()), ("media", "2026/a b.jpg"));
        assert_eq!(l.to_string(), "s3://media/2026/a b.jpg");
        let whole = S3Location::parse("s3://media").unwrap();
        assert_eq!((whole.key(), whole.folder()), ("", String::new()));
        assert_eq!(
            S3Location::parse("s3://media/results/2026")
                .unwrap()
                .folder(),
            "results/2026/"
        );
        assert_eq!(
            S3Location::parse("s3://media/results/2026/")
                .unwrap()
                .folder(),
            "results/2026/"
        );
    }

    #[test]
    fn malformed_locations_are_refused_with_a_reason() {
        for (uri, want) in [
            ("file:///x", LocationError::NotS3),
            ("S3://media/x", LocationError::NotS3),
            ("s3:///x", LocationError::Bucket),
            ("s3://Media/x", LocationError::Bucket),
            ("s3://ab/x", LocationError::Bucket),
            ("s3://-media/x", LocationError::Bucket),
            ("s3://media/a//b", LocationError::Segment),
            ("s3://media/a/../b", LocationError::Segment),
            ("s3://media/./b", LocationError::Segment),
            ("s3://media/a\nb", LocationError::Segment),
        ] {
            assert_eq!(S3Location::parse(uri), Err(want), "{uri}");
        }
        assert_eq!(
            S3Location::parse_object("s3://media/photos/"),
            Err(LocationError::NoObject)
        );
        assert_eq!(
            S3Location::parse_object("s3://media"),
            Err(LocationError::NoObject)
        );
        assert!(S3Location::parse_object("s3://media/photos/a.jpg").is_ok());
    }

    #[test]
    fn containment_is_by_whole_folder() {
        let folder = S3Location::parse("s3://media/photos").unwrap();
        let inside = S3Location::parse("s3://media/photos/2026/a.jpg").unwrap();
        let sibling = S3Location::parse("s3://media/photos2/a.jpg").unwrap();
        let other_bucket = S3Location::parse("s3://medias/photos/a.jpg").unwrap();
        assert!(inside.is_within(&folder));
        assert!(folder.is_within(&folder));
        assert!(!sibling.is_within(&folder));
        assert!(!other_bucket.is_within(&folder));
        assert!(inside.is_within(&S3Location::parse("s3://media").unwrap()));
    }
}
