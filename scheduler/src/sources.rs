//! Expanding a job's source into image refs: an S3 prefix (paginated listing, filtered by
//! suffix), a manifest (in S3 or inline; lines, JSON Lines or CSV) or https URLs (checked
//! against the SSRF guard before any connection).

use std::collections::HashMap;

use aws_sdk_s3::error::DisplayErrorContext;
use tagfleet_io::listing;
use tagfleet_io::netguard::{UrlError, UrlPolicy};

use tagfleet_contracts::S3Location;
use tagfleet_contracts::manifest::{self, ManifestFormat};

use crate::spec::{Invalid, Source};

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
        let location =
            S3Location::parse(uri).map_err(|e| Invalid::new("source.uri", e.to_string()))?;
        listing::image_refs(
            self.client("source.uri")?,
            &location,
            suffixes,
            self.max_refs,
        )
        .await
        .map_err(|e| Invalid::new("source.uri", e))
    }

    async fn read_manifest(&self, uri: &str) -> Result<String, Invalid> {
        let location =
            S3Location::parse_object(uri).map_err(|e| Invalid::new("source.uri", e.to_string()))?;
        let object = self
            .client("source.uri")?
            .get_object()
            .bucket(location.bucket())
            .key(location.key())
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
                return Err(at("refs are s3://, https:// or file:/// locations".into()));
            }
            let host = self.urls.check_form(r).map_err(|e| at(url_refusal(&e)))?;
            if !hosts.contains_key(&host) {
                let checked = self.urls.resolve(r).await.map(drop);
                hosts.insert(host.clone(), checked);
            }
            if let Some(Err(e)) = hosts.get(&host) {
                return Err(at(url_refusal(e)));
            }
        }
        Ok(())
    }
}

/// Why a URL is refused, quoting nothing of it (no host, no address, no path): refusals
/// reach logs and a schedule's `last_error` at every firing.
fn url_refusal(e: &UrlError) -> String {
    match e {
        UrlError::Invalid(_) => "not a valid URL".into(),
        UrlError::Scheme(_) => "only https URLs are fetched".into(),
        UrlError::NoHost => "the URL has no host".into(),
        UrlError::Forbidden(_, class) => format!("the host resolves to a {class} address"),
        UrlError::Resolve(_) => "the host does not resolve".into(),
    }
}

/// The refs of a manifest text, or the line at fault in `field`.
pub fn parse_manifest(
    text: &str,
    format: ManifestFormat,
    field: &str,
) -> Result<Vec<String>, Invalid> {
    manifest::parse(text, format).map_err(|e| Invalid::new(field, e.to_string()))
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

    #[tokio::test]
    async fn refusals_name_the_item_and_quote_nothing_of_it() {
        let r = reader();
        for (refs, reason) in [
            ("ftp://Marker1.example/a.jpg", "s3://, https://"),
            ("/photos/Marker2/a.jpg", "s3://, https://"),
            ("https://10.71.3.9/Marker3.jpg", "private address"),
            ("https://[fd00::7]/Marker4.jpg", "address"),
            ("https://Marker5 host/a.jpg", "not a valid URL"),
        ] {
            let e = r
                .expand(&Source::Manifest {
                    uri: None,
                    inline: Some(format!("s3://b/ok.jpg\n{refs}\n")),
                    format: ManifestFormat::Lines,
                })
                .await
                .unwrap_err();
            assert!(
                e.reason.contains("item 2") && e.reason.contains(reason),
                "{e}"
            );
            for fragment in ["Marker", "10.71", "fd00", "photos", "ftp"] {
                assert!(!e.to_string().contains(fragment), "{fragment} in {e}");
            }
        }
    }
}
