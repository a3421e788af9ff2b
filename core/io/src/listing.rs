//! Listing the images under an S3 prefix: what an `s3_prefix` job source and
//! `tagfleet submit s3://…` expand to.

use aws_sdk_s3::Client;
use aws_sdk_s3::error::DisplayErrorContext;
use tagfleet_contracts::S3Location;
use tagfleet_contracts::location::uri;
use tagfleet_contracts::refs::{IMAGE_SUFFIXES, ends_with_any};

/// The refs of the objects under `prefix` whose keys end in one of `suffixes` (any case;
/// the image suffixes when empty), in key order, paginated. Stops after `max + 1` refs,
/// so a caller can tell "more than `max`" without listing everything.
pub async fn image_refs(
    client: &Client,
    prefix: &S3Location,
    suffixes: &[String],
    max: usize,
) -> Result<Vec<String>, String> {
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
        let page = page.map_err(|e| format!("listing failed: {}", DisplayErrorContext(&e)))?;
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
