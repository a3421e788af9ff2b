//! Fetching `https://` refs behind the SSRF guard. Every name the client resolves (the
//! first host and every redirect's) goes through [`GuardedResolver`], which refuses the
//! whole answer when one address is loopback, link-local, private or metadata; address
//! literals are checked before the request and on every redirect. No proxy is used, not
//! even one named in the environment: it would resolve names itself. Error messages never
//! repeat the URL.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use tagfleet_contracts::{ErrorKind, ImageError};
use tagfleet_io::netguard::{UrlError, UrlPolicy};

/// Redirects followed at most.
const MAX_REDIRECTS: usize = 5;

/// Resolves names and keeps only answers whose every address the policy allows.
struct GuardedResolver {
    policy: Arc<UrlPolicy>,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((name.as_str(), 0)).await?.collect();
            for addr in &addrs {
                if let Some(class) = policy.refusal(addr.ip()) {
                    return Err(Box::new(UrlError::Forbidden(addr.ip(), class)) as _);
                }
            }
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// The https client of a worker.
#[derive(Clone)]
pub struct HttpsFetcher {
    client: reqwest::Client,
    policy: Arc<UrlPolicy>,
}

impl std::fmt::Debug for HttpsFetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpsFetcher")
            .field("policy", &self.policy)
            .finish()
    }
}

impl HttpsFetcher {
    /// `extra_ca` adds a PEM certificate to the trusted roots (an in-house image server).
    pub fn new(policy: UrlPolicy, extra_ca: Option<&Path>) -> anyhow::Result<Self> {
        let policy = Arc::new(policy);
        let redirect_policy = policy.clone();
        let mut builder = reqwest::Client::builder()
            .dns_resolver(GuardedResolver {
                policy: policy.clone(),
            })
            .redirect(reqwest::redirect::Policy::custom(move |attempt| {
                if attempt.previous().len() >= MAX_REDIRECTS {
                    attempt.error("too many redirects")
                } else if let Err(e) = redirect_policy.check_form(attempt.url().as_str()) {
                    attempt.error(format!("redirect refused: {e}"))
                } else {
                    attempt.follow()
                }
            }))
            // A proxy from the environment (HTTPS_PROXY, ALL_PROXY) would resolve the names
            // itself, past the resolver above, and reach whatever they point to.
            .no_proxy()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            .https_only(true);
        if let Some(path) = extra_ca {
            let pem = std::fs::read(path)
                .map_err(|e| anyhow::anyhow!("reading the CA file {}: {e}", path.display()))?;
            let cert = reqwest::Certificate::from_pem(&pem)
                .map_err(|e| anyhow::anyhow!("the CA file {} is not PEM: {e}", path.display()))?;
            builder = builder.tls_certs_merge([cert]);
        }
        let client = builder
            .build()
            .map_err(|e| anyhow::anyhow!("building the https client: {e}"))?;
        Ok(Self { client, policy })
    }

    /// The bytes behind `url`, at most `max_bytes` of them.
    pub async fn fetch(&self, url: &str, max_bytes: u64) -> Result<Vec<u8>, ImageError> {
        let fetch_error = |message: String| ImageError::new(ErrorKind::Fetch, message);
        self.policy
            .check_form(url)
            .map_err(|e| fetch_error(e.to_string()))?;
        let response = self
            .client
            .get(url)
            .send()
            .await
            .map_err(|e| fetch_error(describe(e)))?;
        let status = response.status();
        if !status.is_success() {
            return Err(fetch_error(format!("the server answered {status}")));
        }
        if let Some(size) = response.content_length()
            && size > max_bytes
        {
            return Err(crate::fetch::too_large(size, max_bytes));
        }
        let mut body = Vec::new();
        let mut stream = response.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| fetch_error(describe(e)))?;
            if (body.len() + chunk.len()) as u64 > max_bytes {
                return Err(crate::fetch::too_large(
                    (body.len() + chunk.len()) as u64,
                    max_bytes,
                ));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

/// A request error's chain without the URL.
fn describe(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn names_and_literals_inside_the_network_are_refused_without_connecting() {
        let trap = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        trap.set_nonblocking(true).unwrap();
        let port = trap.local_addr().unwrap().port();
        let fetcher = HttpsFetcher::new(UrlPolicy::default(), None).unwrap();
        for url in [
            format!("https://localhost:{port}/a.jpg"),
            format!("https://127.0.0.1:{port}/a.jpg"),
            "https://169.254.169.254/latest/meta-data/".to_owned(),
        ] {
            let e = fetcher.fetch(&url, 1 << 20).await.unwrap_err();
            assert_eq!(e.kind, ErrorKind::Fetch);
            assert!(
                e.message.contains("loopback") || e.message.contains("link-local"),
                "{url}: {e}"
            );
            assert!(
                !e.message.contains("a.jpg") && !e.message.contains("meta-data"),
                "{e}"
            );
        }
        assert!(
            matches!(trap.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
            "nothing connected"
        );
    }

    /// reqwest takes a proxy from HTTPS_PROXY or ALL_PROXY unless told not to, and a proxy
    /// resolves names itself: `localhost` would reach the proxy's own loopback. nextest
    /// runs each test in a process of its own, so the variables set here reach no other
    /// test.
    #[tokio::test]
    async fn a_proxy_named_in_the_environment_is_never_used() {
        let proxy = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy_url = format!("http://{}", proxy.local_addr().unwrap());
        for (variables, cleared) in [
            (["ALL_PROXY", "all_proxy"], ["HTTPS_PROXY", "https_proxy"]),
            (["HTTPS_PROXY", "https_proxy"], ["ALL_PROXY", "all_proxy"]),
        ] {
            // SAFETY: this test's process runs no other test, and no thread of this one
            // reads the environment meanwhile (the client reads it when built, below).
            unsafe {
                for name in variables {
                    std::env::set_var(name, &proxy_url);
                }
                for name in cleared.iter().chain(&["NO_PROXY", "no_proxy"]) {
                    std::env::remove_var(name);
                }
            }
            let fetcher = HttpsFetcher::new(UrlPolicy::default(), None).unwrap();
            tokio::select! {
                result = fetcher.fetch("https://localhost:9/a.jpg", 1 << 20) => {
                    let e = result.unwrap_err();
                    assert!(e.message.contains("loopback"), "{variables:?}: {e}");
                }
                _ = proxy.accept() => panic!("the fetch went through the {variables:?} proxy"),
            }
            let late = tokio::time::timeout(Duration::from_millis(300), proxy.accept()).await;
            assert!(late.is_err(), "the proxy saw a connection ({variables:?})");
        }
    }
}
