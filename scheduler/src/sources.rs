//! Expanding a job's source into image refs: an S3 prefix (paginated listing, filtered by
//! suffix), a manifest (in S3 or inline; lines, JSON Lines or CSV) or https URLs (checked
//! against the SSRF guard before any connection).
//!
//! Every S3 location a source names, and every `s3://` ref in a manifest, is checked
//! against the tenant's `sources` allow-list before any S3 call: the fleet reads with one
//! role for all tenants, so this check is what keeps a tenant inside its own data. Answers
//! never carry object contents or the S3 client's error text, only a fixed reason.

use std::collections::HashMap;
use std::io::Read;

use aws_sdk_s3::error::ProvideErrorMetadata;
use tagfleet_contracts::S3Location;
use tagfleet_contracts::manifest::{self, ManifestFormat, ReadError};
use tagfleet_contracts::secrets::{Access, TenantSecrets};
use tagfleet_io::listing;
use tagfleet_io::netguard::{UrlError, UrlPolicy};
use tokio_util::io::SyncIoBridge;

use crate::error::ApiError;
use crate::spec::{Invalid, Source};

pub struct SourceReader {
    pub s3: Option<aws_sdk_s3::Client>,
    pub urls: UrlPolicy,
    /// Refs one job may hold at most.
    pub max_refs: usize,
    /// Largest manifest read from S3, in bytes.
    pub max_manifest_bytes: u64,
    /// The folder of the fleet's own store (results, jobs, schedules), when on S3: never
    /// a source, whatever an allow-list says.
    pub fleet_store: Option<S3Location>,
}

impl SourceReader {
    /// Every ref of the source, in order, read as `tenant` may. An empty source is
    /// refused; so is any S3 location outside the tenant's `sources` (403).
    pub async fn expand(
        &self,
        source: &Source,
        tenant: &TenantSecrets,
    ) -> Result<Vec<String>, ApiError> {
        // Listed refs are inside the checked prefix; refs a tenant wrote are checked
        // one by one, once their number is known to be within bounds.
        let (refs, written_in) = match source {
            Source::S3Prefix { uri, suffixes } => {
                let location = S3Location::parse(uri)
                    .map_err(|e| Invalid::new("source.uri", e.to_string()))?;
                self.fence(tenant, &location, Access::Read, "source.uri")?;
                (self.list_prefix(&location, suffixes).await?, None)
            }
            Source::Manifest {
                uri: Some(uri),
                format,
                ..
            } => {
                let location = S3Location::parse_object(uri)
                    .map_err(|e| Invalid::new("source.uri", e.to_string()))?;
                self.fence(tenant, &location, Access::Read, "source.uri")?;
                (
                    self.read_manifest(&location, *format).await?,
                    Some("source.uri"),
                )
            }
            Source::Manifest {
                inline: Some(text),
                format,
                ..
            } => (
                manifest::read(text.as_bytes(), *format, self.max_refs)
                    .map_err(|e| self.manifest_refusal(e, "source.inline"))?,
                Some("source.inline"),
            ),
            Source::Urls { urls } => (urls.clone(), Some("source.urls")),
            Source::Manifest { .. } | Source::Dir { .. } => {
                return Err(Invalid::new("source", "not a source the scheduler reads").into());
            }
        };
        if refs.is_empty() {
            return Err(Invalid::new("source", "no images found").into());
        }
        if refs.len() > self.max_refs {
            return Err(Invalid::new(
                "source",
                format!(
                    "{} images; a job holds at most {}: split it",
                    refs.len(),
                    self.max_refs
                ),
            )
            .into());
        }
        if let Some(field) = written_in {
            self.check_refs(&refs, field, tenant).await?;
        }
        Ok(refs)
    }

    /// Refuses, with 403 naming `field`, a location the tenant may not use.
    pub fn fence(
        &self,
        tenant: &TenantSecrets,
        location: &S3Location,
        access: Access,
        field: &str,
    ) -> Result<(), ApiError> {
        tenant
            .check(location, access, self.fleet_store.as_ref())
            .map_err(|denied| ApiError::Forbidden(Invalid::new(field, denied.to_string())))
    }

    fn client(&self, field: &str) -> Result<&aws_sdk_s3::Client, Invalid> {
        self.s3
            .as_ref()
            .ok_or_else(|| Invalid::new(field, "this scheduler has no S3 access"))
    }

    async fn list_prefix(
        &self,
        location: &S3Location,
        suffixes: &[String],
    ) -> Result<Vec<String>, ApiError> {
        listing::image_refs(
            self.client("source.uri")?,
            location,
            suffixes,
            self.max_refs,
        )
        .await
        .map_err(|e| refusal("source.uri", "listing the prefix", e.code.as_deref()))
    }

    /// The refs of a manifest in S3, read as it streams in: an object over the size limit
    /// is refused before its body is read, and reading stops at the ref limit.
    async fn read_manifest(
        &self,
        location: &S3Location,
        format: ManifestFormat,
    ) -> Result<Vec<String>, ApiError> {
        const FIELD: &str = "source.uri";
        let object = self
            .client(FIELD)?
            .get_object()
            .bucket(location.bucket())
            .key(location.key())
            .send()
            .await
            .map_err(|e| refusal(FIELD, "reading the manifest", e.code()))?;
        let limit = self.max_manifest_bytes;
        if let Some(size) = object.content_length().and_then(|n| u64::try_from(n).ok())
            && size > limit
        {
            return Err(too_large(FIELD, limit).into());
        }
        // The parser reads synchronously, on a blocking thread, from the body as it arrives.
        let body = SyncIoBridge::new(object.body.into_async_read());
        let max_refs = self.max_refs;
        let parsed = tokio::task::spawn_blocking(move || {
            let capped = Capped {
                inner: body,
                left: limit,
            };
            manifest::read(std::io::BufReader::new(capped), format, max_refs)
        })
        .await
        .map_err(|_| refusal(FIELD, "reading the manifest", None))?;
        parsed.map_err(|e| self.manifest_refusal(e, FIELD))
    }

    /// Why a manifest in `field` is refused; never a ref or the store's error text.
    fn manifest_refusal(&self, e: ReadError, field: &str) -> ApiError {
        match e {
            ReadError::Line(e) => Invalid::new(field, e.to_string()).into(),
            ReadError::TooManyRefs(max) => Invalid::new(
                "source",
                format!("over {max} images; a job holds at most {max}: split it"),
            )
            .into(),
            ReadError::Io(e) if e.get_ref().is_some_and(|e| e.is::<OverLimit>()) => {
                too_large(field, self.max_manifest_bytes).into()
            }
            ReadError::Io(_) => refusal(field, "reading the manifest", None),
        }
    }

    /// Refs must be `s3://` objects inside the tenant's sources, or `https://` URLs whose
    /// host resolves to allowed addresses only (hosts are resolved once). `file://` refs
    /// are read only by `tagfleet run`. Reasons name the item, never its text.
    async fn check_refs(
        &self,
        refs: &[String],
        field: &str,
        tenant: &TenantSecrets,
    ) -> Result<(), ApiError> {
        let mut hosts: HashMap<(String, u16), Result<(), UrlError>> = HashMap::new();
        for (i, r) in refs.iter().enumerate() {
            let at = |reason: String| Invalid::new(field, format!("item {}: {reason}", i + 1));
            if r.starts_with("s3://") {
                let location = S3Location::parse_object(r).map_err(|e| at(e.to_string()))?;
                tenant
                    .check(&location, Access::Read, self.fleet_store.as_ref())
                    .map_err(|denied| ApiError::Forbidden(at(denied.to_string())))?;
                continue;
            }
            if r.starts_with("file://") {
                return Err(at(
                    "file:// refs are read only by `tagfleet run`; the fleet reads s3:// and https:// refs"
                        .into(),
                )
                .into());
            }
            if !r.starts_with("https://") {
                return Err(at("refs are s3:// or https:// locations".into()).into());
            }
            let host = self.urls.check_form(r).map_err(|e| at(url_refusal(&e)))?;
            if !hosts.contains_key(&host) {
                let checked = self.urls.resolve(r).await.map(drop);
                hosts.insert(host.clone(), checked);
            }
            if let Some(Err(e)) = hosts.get(&host) {
                return Err(at(url_refusal(e)).into());
            }
        }
        Ok(())
    }
}

/// A failed S3 call as the tenant may see it: a fixed reason per cause, never the S3
/// client's text (it can carry role ARNs, account ids and keys). The cause is logged.
fn refusal(field: &str, doing: &str, code: Option<&str>) -> ApiError {
    tracing::warn!(field, code = code.unwrap_or("-"), "{doing} failed");
    match code {
        Some("NoSuchKey" | "NoSuchBucket" | "NotFound") => {
            Invalid::new(field, "no such object or bucket").into()
        }
        Some("AccessDenied" | "AllAccessDisabled" | "InvalidAccessKeyId") => {
            ApiError::Forbidden(Invalid::new(field, "the fleet may not read there"))
        }
        _ => ApiError::Unavailable(format!("{doing} failed; try again later")),
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

fn too_large(field: &str, limit: u64) -> Invalid {
    Invalid::new(
        field,
        format!("the manifest is over the limit of {limit} bytes: split the job"),
    )
}

/// A manifest body went past the size limit.
#[derive(Debug, thiserror::Error)]
#[error("over the size limit")]
struct OverLimit;

/// A reader that fails once more than `left` bytes came through: a manifest whose size the
/// store did not say (or said wrong) is cut off at the limit all the same.
struct Capped<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.left = self
            .left
            .checked_sub(n as u64)
            .ok_or_else(|| std::io::Error::other(OverLimit))?;
        Ok(n)
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
            max_manifest_bytes: 1 << 20,
            fleet_store: Some(S3Location::parse("s3://fleet/tagfleet").unwrap()),
        }
    }

    fn acme() -> TenantSecrets {
        let text = format!(
            "[tenants.acme]\nkey = \"{}\"\nsources = [\"s3://media/acme/\", \"s3://fleet\"]\n",
            "ab".repeat(16)
        );
        tagfleet_contracts::Secrets::parse(&text)
            .unwrap()
            .get("acme")
            .unwrap()
            .clone()
    }

    async fn refusal_of(source: Source) -> (u16, String) {
        let e = reader().expand(&source, &acme()).await.unwrap_err();
        (e.status().as_u16(), e.to_string())
    }

    fn inline(text: &str) -> Source {
        Source::Manifest {
            uri: None,
            inline: Some(text.into()),
            format: ManifestFormat::Auto,
        }
    }

    #[tokio::test]
    async fn forbidden_urls_and_empty_or_oversized_sources_are_refused() {
        for url in [
            "https://127.0.0.1/a.jpg",
            "https://169.254.169.254/latest/meta-data/iam",
            "https://10.0.0.1/a.jpg",
        ] {
            let (code, e) = refusal_of(Source::Urls {
                urls: vec![url.into()],
            })
            .await;
            assert!(code == 400 && e.contains("address"), "{url}: {e}");
        }
        let (_, e) = refusal_of(inline("\n# nothing\n")).await;
        assert_eq!(e, "source: no images found");
        let four = "s3://media/acme/1.jpg\n".repeat(4);
        let (_, e) = refusal_of(inline(&four)).await;
        assert!(e.contains("at most 3"), "{e}");
        let (code, e) = refusal_of(inline("/etc/passwd\n")).await;
        assert!(code == 400 && e.contains("item 1"), "{e}");
        assert!(!e.contains("passwd"), "a refusal never quotes the ref: {e}");
    }

    #[tokio::test]
    async fn s3_locations_outside_the_tenants_sources_are_forbidden_before_any_s3_call() {
        // The reader has no S3 client: a check that reached S3 would answer otherwise.
        let outside = [
            Source::S3Prefix {
                uri: "s3://media/globex/".into(),
                suffixes: vec![],
            },
            Source::S3Prefix {
                uri: "s3://media/".into(),
                suffixes: vec![],
            },
            Source::Manifest {
                uri: Some("s3://media/globex/list.csv".into()),
                inline: None,
                format: ManifestFormat::Auto,
            },
            // The fleet's own store, although acme's list names its whole bucket.
            Source::S3Prefix {
                uri: "s3://fleet/tagfleet/jobs/".into(),
                suffixes: vec![],
            },
            inline("s3://media/acme/a.jpg\ns3://media/globex/secret-9931.jpg\n"),
        ];
        for source in outside {
            let (code, e) = refusal_of(source.clone()).await;
            assert_eq!(code, 403, "{source:?}: {e}");
            assert!(!e.contains("secret-9931"), "{e}");
        }
        let (code, e) = refusal_of(inline("file:///etc/shadow\n")).await;
        assert!(
            code == 400 && e.contains("tagfleet run") && !e.contains("shadow"),
            "{e}"
        );
        // Inside its own folder, the check passes and only the missing client is left.
        let (code, e) = refusal_of(Source::S3Prefix {
            uri: "s3://media/acme/2026/".into(),
            suffixes: vec![],
        })
        .await;
        assert!(code == 400 && e.contains("no S3 access"), "{e}");
    }

    #[tokio::test]
    async fn refusals_name_the_item_and_quote_nothing_of_it() {
        for (refs, reason) in [
            ("ftp://Marker1.example/a.jpg", "s3:// or https://"),
            ("/photos/Marker2/a.jpg", "s3:// or https://"),
            ("https://10.71.3.9/Marker3.jpg", "private address"),
            ("https://[fd00::7]/Marker4.jpg", "address"),
            ("https://Marker5 host/a.jpg", "not a valid URL"),
        ] {
            let (_, e) = refusal_of(Source::Manifest {
                uri: None,
                inline: Some(format!("s3://media/acme/ok.jpg\n{refs}\n")),
                format: ManifestFormat::Lines,
            })
            .await;
            assert!(e.contains("item 2") && e.contains(reason), "{e}");
            for fragment in ["Marker", "10.71", "fd00", "photos", "ftp"] {
                assert!(!e.to_string().contains(fragment), "{fragment} in {e}");
            }
        }
    }
}
