//! Expanding a job's source into image refs: an S3 prefix (paginated listing, filtered by
//! suffix), a manifest (in S3 or inline; lines, JSON Lines or CSV) or https URLs (checked
//! against the SSRF guard before any connection).

use std::collections::HashMap;

use aws_sdk_s3::error::DisplayErrorContext;
use tagfleet_core::netguard::{UrlError, UrlPolicy};

use crate::spec::{Invalid, ManifestFormat, Source, split_s3};

/// Suffixes taken from an S3 prefix when the job names none.
pub const IMAGE_SUFFIXES: [&str; 9] = [
    ".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".jfif",
];

/// Largest manifest read from S3.
const MAX_MANIFEST_BYTES: i64 = 256 << 20;

pub struct SourceReader {
    pub s3: Option<aws_sdk_s3::Client>,
    pub urls: UrlPolicy,
    /// Refs one job may hold at most.
    pub max_refs: usize,
}

impl SourceReader {
    /// Every ref of the source, in order. An empty source is refused.
    pub async fn expand(&self, source: &Source) -> Result<Vec<String>, Invalid> {
        let refs = match source {
            Source::S3Prefix { uri, suffixes } => self.list_prefix(uri, suffixes).await?,
            Source::Manifest {
                uri: Some(uri),
                format,
                ..
            } => {
                let text = self.read_manifest(uri).await?;
                let refs = parse_manifest(&text, *format, "source.uri")?;
                self.check_refs(&refs, "source.uri").await?;
                refs
            }
            Source::Manifest {
                inline: Some(text),
                format,
                ..
            } => {
                let refs = parse_manifest(text, *format, "source.inline")?;
                self.check_refs(&refs, "source.inline").await?;
                refs
            }
            Source::Urls { urls } => {
                self.check_refs(urls, "source.urls").await?;
                urls.clone()
            }
            Source::Manifest { .. } | Source::Dir { .. } => {
                return Err(Invalid::new("source", "not a source the scheduler reads"));
            }
        };
        if refs.is_empty() {
            return Err(Invalid::new("source", "no images found"));
        }
        if refs.len() > self.max_refs {
            return Err(Invalid::new(
                "source",
                format!(
                    "{} images; a job holds at most {}: split it",
                    refs.len(),
                    self.max_refs
                ),
            ));
        }
        Ok(refs)
    }

    fn client(&self, field: &str) -> Result<&aws_sdk_s3::Client, Invalid> {
        self.s3
            .as_ref()
            .ok_or_else(|| Invalid::new(field, "this scheduler has no S3 access"))
    }

    async fn list_prefix(&self, uri: &str, suffixes: &[String]) -> Result<Vec<String>, Invalid> {
        let (bucket, prefix) = split_s3(uri).map_err(|r| Invalid::new("source.uri", r))?;
        let suffixes: Vec<String> = if suffixes.is_empty() {
            IMAGE_SUFFIXES.iter().map(|s| s.to_string()).collect()
        } else {
            suffixes.iter().map(|s| s.to_ascii_lowercase()).collect()
        };
        let mut pages = self
            .client("source.uri")?
            .list_objects_v2()
            .bucket(bucket)
            .prefix(prefix)
            .into_paginator()
            .send();
        let mut refs = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| {
                Invalid::new(
                    "source.uri",
                    format!("listing failed: {}", DisplayErrorContext(&e)),
                )
            })?;
            for object in page.contents() {
                let Some(key) = object.key() else { continue };
                let lower = key.to_ascii_lowercase();
                if suffixes.iter().any(|s| lower.ends_with(s.as_str())) {
                    refs.push(format!("s3://{bucket}/{key}"));
                    if refs.len() > self.max_refs {
                        return Ok(refs);
                    }
                }
            }
        }
        Ok(refs)
    }

    async fn read_manifest(&self, uri: &str) -> Result<String, Invalid> {
        let (bucket, key) = split_s3(uri).map_err(|r| Invalid::new("source.uri", r))?;
        let object = self
            .client("source.uri")?
            .get_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| {
                Invalid::new(
                    "source.uri",
                    format!("reading the manifest failed: {}", DisplayErrorContext(&e)),
                )
            })?;
        if object.content_length().unwrap_or(0) > MAX_MANIFEST_BYTES {
            return Err(Invalid::new(
                "source.uri",
                format!("the manifest is over {MAX_MANIFEST_BYTES} bytes"),
            ));
        }
        let bytes = object
            .body
            .collect()
            .await
            .map_err(|e| Invalid::new("source.uri", format!("reading the manifest: {e}")))?
            .into_bytes();
        String::from_utf8(bytes.to_vec())
            .map_err(|_| Invalid::new("source.uri", "the manifest is not UTF-8 text"))
    }

    /// Refs must be s3:// or https:// (file:// only reaches a worker's configured roots);
    /// every https host must resolve to allowed addresses only. Hosts are resolved once.
    async fn check_refs(&self, refs: &[String], field: &str) -> Result<(), Invalid> {
        let mut hosts: HashMap<(String, u16), Result<(), UrlError>> = HashMap::new();
        for (i, r) in refs.iter().enumerate() {
            let at = |reason: String| Invalid::new(field, format!("item {}: {reason}", i + 1));
            if r.starts_with("s3://") || r.starts_with("file:///") {
                continue;
            }
            if !r.starts_with("https://") {
                let shown: String = r.chars().take(16).collect();
                return Err(at(format!(
                    "refs are s3://, https:// or file:/// locations, not {shown:?}…"
                )));
            }
            let host = self.urls.check_form(r).map_err(|e| at(e.to_string()))?;
            if !hosts.contains_key(&host) {
                let checked = self.urls.resolve(r).await.map(drop);
                hosts.insert(host.clone(), checked);
            }
            if let Some(Err(e)) = hosts.get(&host) {
                return Err(at(e.to_string()));
            }
        }
        Ok(())
    }
}

/// The refs of a manifest text.
pub fn parse_manifest(
    text: &str,
    format: ManifestFormat,
    field: &str,
) -> Result<Vec<String>, Invalid> {
    let first = text.lines().map(str::trim).find(|l| !l.is_empty());
    let format = match (format, first) {
        (ManifestFormat::Auto, Some(l)) if l.starts_with('{') => ManifestFormat::Jsonl,
        (ManifestFormat::Auto, Some(l)) if l.contains(',') => ManifestFormat::Csv,
        (ManifestFormat::Auto, _) => ManifestFormat::Lines,
        (f, _) => f,
    };
    let line_error = |n: usize, reason: &str| Invalid::new(field, format!("line {n}: {reason}"));
    match format {
        ManifestFormat::Lines | ManifestFormat::Auto => Ok(text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_owned)
            .collect()),
        ManifestFormat::Jsonl => {
            let mut refs = Vec::new();
            for (i, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                let value: serde_json::Value = serde_json::from_str(line)
                    .map_err(|_| line_error(i + 1, "not a JSON object"))?;
                let r = value
                    .get("ref")
                    .and_then(|r| r.as_str())
                    .ok_or_else(|| line_error(i + 1, "no string field \"ref\""))?;
                refs.push(r.to_owned());
            }
            Ok(refs)
        }
        ManifestFormat::Csv => {
            let mut reader = csv::ReaderBuilder::new()
                .has_headers(true)
                .flexible(true)
                .from_reader(text.as_bytes());
            let headers = reader
                .headers()
                .map_err(|e| line_error(1, &e.to_string()))?
                .clone();
            let column = headers
                .iter()
                .position(|h| h.trim() == "ref")
                .ok_or_else(|| line_error(1, "the header has no \"ref\" column"))?;
            let mut refs = Vec::new();
            for (i, record) in reader.records().enumerate() {
                let record = record.map_err(|e| line_error(i + 2, &e.to_string()))?;
                let r = record
                    .get(column)
                    .map(str::trim)
                    .filter(|r| !r.is_empty())
                    .ok_or_else(|| line_error(i + 2, "no ref"))?;
                refs.push(r.to_owned());
            }
            Ok(refs)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reader() -> SourceReader {
        SourceReader {
            s3: None,
            urls: UrlPolicy::default(),
            max_refs: 3,
        }
    }

    #[test]
    fn manifests_in_every_format_give_the_same_refs() {
        let want = vec!["s3://b/a.jpg".to_owned(), "s3://b/c d.png".to_owned()];
        let lines = "s3://b/a.jpg\n# a comment\n\ns3://b/c d.png\n";
        let jsonl = "{\"ref\":\"s3://b/a.jpg\"}\n{\"ref\":\"s3://b/c d.png\",\"sku\":7}\n";
        let csv = "sku,ref\n1,s3://b/a.jpg\n2,\"s3://b/c d.png\"\n";
        for text in [lines, jsonl, csv] {
            assert_eq!(
                parse_manifest(text, ManifestFormat::Auto, "f").unwrap(),
                want,
                "{text}"
            );
        }
    }

    #[test]
    fn bad_manifest_lines_are_named() {
        let e = parse_manifest(
            "{\"ref\":\"s3://b/a\"}\n{\"x\":1}\n",
            ManifestFormat::Auto,
            "f",
        )
        .unwrap_err();
        assert!(e.reason.starts_with("line 2:"), "{e}");
        let e = parse_manifest("sku,path\n1,x\n", ManifestFormat::Csv, "f").unwrap_err();
        assert!(e.reason.contains("\"ref\" column"), "{e}");
    }

    #[tokio::test]
    async fn forbidden_urls_and_empty_or_oversized_sources_are_refused() {
        let r = reader();
        for url in [
            "https://127.0.0.1/a.jpg",
            "https://169.254.169.254/latest/meta-data/iam",
            "https://10.0.0.1/a.jpg",
        ] {
            let e = r
                .expand(&Source::Urls {
                    urls: vec![url.into()],
                })
                .await
                .unwrap_err();
            assert!(e.reason.contains("address"), "{url}: {e}");
        }
        let e = r
            .expand(&Source::Manifest {
                uri: None,
                inline: Some("\n# nothing\n".into()),
                format: ManifestFormat::Auto,
            })
            .await
            .unwrap_err();
        assert_eq!(e.reason, "no images found");
        let e = r
            .expand(&Source::Manifest {
                uri: None,
                inline: Some("s3://b/1\ns3://b/2\ns3://b/3\ns3://b/4\n".into()),
                format: ManifestFormat::Auto,
            })
            .await
            .unwrap_err();
        assert!(e.reason.contains("at most 3"), "{e}");
        let e = r
            .expand(&Source::Manifest {
                uri: None,
                inline: Some("/etc/passwd\n".into()),
                format: ManifestFormat::Auto,
            })
            .await
            .unwrap_err();
        assert!(e.reason.contains("item 1"), "{e}");
    }
}
