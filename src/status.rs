//! `tagfleet status [JOB]`: jobs and their progress, from the scheduler API.

use clap::Args;
use serde_json::Value;

use crate::client::{ApiArgs, count, state};

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// A job id; without it, every job of the tenant (newest first).
    pub job: Option<String>,

    /// Print the scheduler's JSON instead of a table.
    #[arg(long)]
    pub json: bool,

    #[command(flatten)]
    pub api: ApiArgs,
}

pub async fn main(args: StatusArgs) -> anyhow::Result<i32> {
    let api = args.api.connect()?;
    let jobs = match &args.job {
        Some(id) => vec![api.job(id).await?],
        None => api.jobs().await?,
    };
    if args.json {
        for job in &jobs {
            println!("{job}");
        }
        return Ok(0);
    }
    println!(
        "{:<32}  {:<9}  {:>9}  {:>9}  {:>9}  {:>9}  {:>8}  {:>7}  CREATED",
        "JOB", "STATE", "TOTAL", "DONE", "FAILED", "NEVER RAN", "IMG/S", "ETA"
    );
    for job in &jobs {
        println!("{}", row(job));
    }
    Ok(0)
}

fn row(job: &Value) -> String {
    let number = |f: &str| job.get(f).and_then(|v| v.as_f64());
    let rate = number("images_per_second").map_or("-".into(), |r| format!("{r:.1}"));
    let eta = number("eta_seconds").map_or("-".into(), |s| format!("{}s", s.round()));
    format!(
        "{:<32}  {:<9}  {:>9}  {:>9}  {:>9}  {:>9}  {:>8}  {:>7}  {}",
        job.get("id").and_then(|v| v.as_str()).unwrap_or("?"),
        state(job),
        count(job, "total"),
        count(job, "done"),
        count(job, "failed"),
        count(job, "unfinished"),
        rate,
        eta,
        job.get("created_at").and_then(|v| v.as_str()).unwrap_or("")
    )
}
