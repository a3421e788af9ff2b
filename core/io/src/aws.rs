//! AWS client configuration shared by the S3 store and the SQS queue: the standard
//! credential chain and region, with an optional endpoint for S3- or SQS-compatible
//! servers (SeaweedFS, MinIO, moto, LocalStack).

use std::time::Duration;

use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};

/// Deadlines on every S3 and SQS call: a store or queue that stops answering (a frozen
/// server, a dropped route) must fail the call, so the caller can back off and say so,
/// instead of stalling the fleet. The read timeout bounds silence between two reads; an
/// SQS long poll (at most 20 s) stays under it.
fn timeouts() -> TimeoutConfig {
    TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(5))
        .read_timeout(Duration::from_secs(25))
        .operation_attempt_timeout(Duration::from_secs(60))
        .operation_timeout(Duration::from_secs(120))
        .build()
}

/// Where an AWS-compatible service is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Endpoint {
    /// `http(s)://host:port`; `None` is the real AWS endpoint of the region.
    pub url: Option<String>,
    /// Region; `None` takes it from the standard chain (AWS_REGION, profile, IMDS).
    pub region: Option<String>,
}

impl Endpoint {
    /// Warns when an endpoint would carry data in clear text beyond this machine.
    pub fn warn_if_plaintext(&self, service: &str) {
        if let Some(url) = self.url.as_deref().filter(|u| is_plaintext_remote(u)) {
            tracing::warn!(service, endpoint = %url, "endpoint is plain http outside loopback: data travels unencrypted");
        }
    }
}

/// A clear-text URL (`http://`, `amqp://`) to a host that is not loopback.
pub fn is_plaintext_remote(url: &str) -> bool {
    let Some(rest) = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("amqp://"))
    else {
        return false;
    };
    let host = rest.split(['/', '?']).next().unwrap_or("");
    let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
    let host = if host.starts_with('[') {
        host.split(']').next().unwrap_or("").trim_start_matches('[')
    } else {
        host.split(':').next().unwrap_or("")
    };
    !(host == "localhost" || host.starts_with("127.") || host == "::1")
}

/// Loads the SDK configuration for `endpoint`.
pub async fn sdk_config(endpoint: &Endpoint) -> SdkConfig {
    let loader = |region: Option<String>| {
        let mut loader = aws_config::defaults(BehaviorVersion::latest()).timeout_config(timeouts());
        if let Some(region) = region {
            loader = loader.region(Region::new(region));
        }
        if let Some(url) = &endpoint.url {
            loader = loader.endpoint_url(url);
        }
        loader
    };
    let config = loader(endpoint.region.clone()).load().await;
    if config.region().is_some() {
        return config;
    }
    // The SDK refuses to sign without a region; a compatible server does not care which.
    loader(Some("us-east-1".into())).load().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plaintext_remote_endpoints_are_recognised() {
        assert!(is_plaintext_remote("http://s3.example.com:9000"));
        assert!(is_plaintext_remote("http://10.0.0.5/"));
        assert!(!is_plaintext_remote("https://s3.example.com"));
        assert!(!is_plaintext_remote("http://127.0.0.1:8333"));
        assert!(!is_plaintext_remote("http://localhost:4566/x"));
        assert!(!is_plaintext_remote("http://[::1]:5000"));
        assert!(is_plaintext_remote(
            "amqp://user:pass@rabbitmq.example.com:5672/%2f"
        ));
        assert!(!is_plaintext_remote(
            "amqps://user:pass@rabbitmq.example.com:5671/%2f"
        ));
        assert!(!is_plaintext_remote(
            "amqp://guest:guest@127.0.0.1:5672/%2f"
        ));
    }
}
