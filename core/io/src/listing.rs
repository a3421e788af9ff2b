//! Listing the images under an S3 prefix: what an `s3_prefix` job source and
//! `tagfleet submit s3://…` expand to.

use aws_sdk_s3::Client;
use aws_sdk_s3::error::ProvideErrorMetadata;
use tagfleet_contracts::S3Location;
use tagfleet_contracts::location::uri;
use tagfleet_contracts::refs::{IMAGE_SUFFIXES, ends_with_any};

/// A listing S3 refused or did not answer, with S3's error code when it gave one. Its
/// text names no bucket, key or role, so it may be shown to whoever asked.
#[derive(Debug, Clone, thiserror::Error)]
#[error("listing failed ({})", self.code.as_deref().unwrap_or("no answer"))]
pub struct ListError {
    pub code: Option<String>,
}

/// The refs of the objects under `prefix` whose keys end in one of `suffixes` (any case;
/// the image suffixes when empty), in key order, paginated. Stops after `max + 1` refs,
/// so a caller can tell "more than `max`" without listing everything.
pub async fn image_refs(
    client: &Client,
    prefix: &S3Location,
    suffixes: &[String],
    max: usize,
) -> Result<Vec<String>, ListError> {
    let suffixes: Vec<String> = if suffixes.is_empty() {
        IMAGE_SUFFIXES.iter().map(|s| s.to_string()).collect()
    } else {
        suffixes.iter().map(|s| s.to_ascii_lowercase()).collect()
    };
    let mut pages = client
        .list_objects_v2()
        .bucket(prefix.bucket())
        .prefix(prefix.key())
        .into_paginator()
        .send();
    let mut refs = Vec::new();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| ListError {
            code: e.code().map(str::to_owned),
        })?;
        for key in page.contents().iter().filter_map(|o| o.key()) {
            if ends_with_any(key, &suffixes) {
                refs.push(uri(prefix.bucket(), key));
                if refs.len() > max {
                    return Ok(refs);
                }
            }
        }
    }
    Ok(refs)
}
