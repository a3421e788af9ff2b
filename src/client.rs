//! A small client of the scheduler API, for `submit --scheduler`, `status` and `erase`.

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
        Ok(Api {
            base: base.trim_end_matches('/').to_owned(),
            token,
            http: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(300))
                .build()
                .context("building the HTTP client")?,
        })
    }
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
