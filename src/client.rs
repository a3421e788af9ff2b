//! A small client of the scheduler API, for `submit --scheduler`, `status` and `erase`.
//! It speaks HTTPS (trusting the system's roots and `--ca-file`) or HTTP, and warns before
//! it sends a bearer token in clear text to a host other than this machine.

use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;
use serde_json::Value;

#[derive(Debug, Clone, Args)]
pub struct ApiArgs {
    /// Base URL of the scheduler API, e.g. http://tagfleet-scheduler:8080.
    #[arg(long = "scheduler", env = "TAGFLEET_SCHEDULER")]
    pub url: Option<String>,

    /// Bearer token of your tenant.
    #[arg(long, env = "TAGFLEET_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// PEM certificate(s) of a CA to trust for the scheduler's HTTPS, besides the system's
    /// roots: for a self-signed or in-house certificate.
    #[arg(long, env = "TAGFLEET_CA_FILE")]
    pub ca_file: Option<PathBuf>,
}

pub struct Api {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl ApiArgs {
    pub fn connect(&self) -> anyhow::Result<Api> {
        let base = self
            .url
            .clone()
            .context("--scheduler (TAGFLEET_SCHEDULER) is required")?;
        let token = self
            .token
            .clone()
            .context("--token (TAGFLEET_TOKEN) is required with --scheduler")?;
        if let Some(warning) = cleartext_warning(&base) {
            eprintln!("{warning}");
        }
        let mut http = reqwest::Client::builder().timeout(std::time::Duration::from_secs(300));
        if let Some(path) = &self.ca_file {
            let pem = std::fs::read(path)
                .with_context(|| format!("--ca-file: reading {}", path.display()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .with_context(|| format!("--ca-file: {} is not PEM", path.display()))?;
            if certs.is_empty() {
                bail!("--ca-file: {} holds no certificate", path.display());
            }
            http = http.tls_certs_merge(certs);
        }
        Ok(Api {
            base: base.trim_end_matches('/').to_owned(),
            token,
            http: http.build().context("building the HTTP client")?,
        })
    }
}

/// The warning due when `base` would carry the bearer token in clear text to a host that
/// is not this machine: anyone on the way could read it and act as the tenant.
fn cleartext_warning(base: &str) -> Option<String> {
    let url = reqwest::Url::parse(base).ok()?;
    if url.scheme() != "http" {
        return None;
    }
    let host = url.host_str()?;
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = match bare.parse::<IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => {
            let name = bare.trim_end_matches('.').to_ascii_lowercase();
            name == "localhost" || name.ends_with(".localhost")
        }
    };
    (!loopback).then(|| {
        format!(
            "tagfleet: warning: {host} is not this machine and http:// is not encrypted: \
             the bearer token crosses the network in clear text. Use https:// (with \
             --ca-file for a private CA)."
        )
    })
}

impl Api {
    async fn call(&self, request: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let response = request
            .bearer_auth(&self.token)
            .send()
            .await
            .with_context(|| format!("calling the scheduler at {}", self.base))?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        if !status.is_success() {
            let reason = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| {
                    let error = v.get("error")?.as_str()?.to_owned();
                    Some(match v.get("valid").and_then(|v| v.as_array()) {
                        Some(valid) => format!(
                            "{error} (valid: {})",
                            valid
                                .iter()
                                .filter_map(|v| v.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                        None => error,
                    })
                })
                .unwrap_or(text);
            bail!("the scheduler answered {status}: {reason}");
        }
        if text.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text).context("the scheduler's answer is not JSON")
    }

    pub async fn create_job(&self, spec: &Value) -> anyhow::Result<Value> {
        self.call(self.http.post(format!("{}/v1/jobs", self.base)).json(spec))
            .await
    }

    pub async fn job(&self, id: &str) -> anyhow::Result<Value> {
        self.call(self.http.get(format!("{}/v1/jobs/{id}", self.base)))
            .await
    }

    /// Erases all of `tenant`'s data (the token must be that tenant's).
    pub async fn erase(&self, tenant: &str) -> anyhow::Result<Value> {
        self.call(
            self.http
                .delete(format!("{}/v1/data", self.base))
                .query(&[("tenant", tenant)]),
        )
        .await
    }

    /// Every job of the tenant, following the pages.
    pub async fn jobs(&self) -> anyhow::Result<Vec<Value>> {
        let mut all = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let mut request = self
                .http
                .get(format!("{}/v1/jobs", self.base))
                .query(&[("limit", "1000")]);
            if let Some(a) = &after {
                request = request.query(&[("after", a.as_str())]);
            }
            let page = self.call(request).await?;
            if let Some(jobs) = page.get("jobs").and_then(|j| j.as_array()) {
                all.extend(jobs.iter().cloned());
            }
            match page.get("next").and_then(|n| n.as_str()) {
                Some(next) => after = Some(next.to_owned()),
                None => return Ok(all),
            }
        }
    }
}

/// Reads a number out of a job view.
pub fn count(job: &Value, field: &str) -> u64 {
    job.pointer(&format!("/counts/{field}"))
        .and_then(|v| v.as_u64())
        .unwrap_or(0)
}

pub fn state(job: &Value) -> &str {
    job.get("state").and_then(|s| s.as_str()).unwrap_or("?")
}

/// Whether a job state is final.
pub fn is_final(state: &str) -> bool {
    !matches!(state, "queued" | "running")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_in_clear_text_is_warned_of_unless_it_stays_on_this_machine() {
        for remote in [
            "http://example-host:8080",
            "http://tagfleet-scheduler.tagfleet.svc:8080/",
            "http://10.0.0.7:8080",
            "http://[2001:db8::1]:8080",
            "http://127.0.0.1.nip.io:8080",
        ] {
            let warning = cleartext_warning(remote).unwrap_or_default();
            assert!(warning.contains("clear text"), "{remote}: {warning:?}");
        }
        for fine in [
            "http://127.0.0.1:8080",
            "http://127.8.9.1:8080",
            "http://localhost:8080",
            "http://LOCALHOST.:8080",
            "http://api.localhost:8080",
            "http://[::1]:8080",
            "https://example-host:8443",
            "not a url",
        ] {
            assert_eq!(cleartext_warning(fine), None, "{fine}");
        }
    }
}
