//! `tagfleet erase --tenant T`: the right to erasure, at once. Through the scheduler (its
//! jobs are cancelled and their queued tasks skipped) or, with no scheduler running,
//! straight in the store, leaving the same tombstones the scheduler leaves.

use std::collections::BTreeSet;

use anyhow::{Context, bail};
use clap::Args;
use tagfleet_contracts::job::TOMBSTONE;
use tagfleet_contracts::keys::{Area, Key, is_valid_id};
use tagfleet_io::ObjectStore;

use crate::client::ApiArgs;
use crate::io_args::StoreArgs;

#[derive(Debug, Args)]
pub struct EraseArgs {
    /// The tenant whose results, job records and schedules are all deleted.
    #[arg(long)]
    pub tenant: String,

    #[command(flatten)]
    pub api: ApiArgs,

    /// Without --scheduler: erase straight in this store (s3://bucket/prefix or
    /// file:///path). Only when no scheduler runs: a running one would keep its jobs.
    #[arg(long, env = "TAGFLEET_STORE")]
    pub store: Option<String>,

    #[command(flatten)]
    pub store_args: EraseStoreArgs,
}

/// The store flags besides --store (endpoint, region, encryption).
#[derive(Debug, Args)]
pub struct EraseStoreArgs {
    /// S3 endpoint URL, for S3-compatible servers.
    #[arg(long, env = "TAGFLEET_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,

    /// AWS region. Default: the standard chain.
    #[arg(long, env = "TAGFLEET_REGION")]
    pub region: Option<String>,
}

pub async fn main(args: EraseArgs) -> anyhow::Result<i32> {
    if !is_valid_id(&args.tenant) {
        bail!("--tenant {:?}: letters, digits, - _ . only", args.tenant);
    }
    if args.api.url.is_some() {
        let api = args.api.connect()?;
        let erased = api.erase(&args.tenant).await?;
        println!("{erased}");
        return Ok(0);
    }
    let Some(store) = &args.store else {
        bail!("give --scheduler (with --token) or, when no scheduler runs, --store");
    };
    let opened = StoreArgs {
        store: store.clone(),
        s3_endpoint: args.store_args.s3_endpoint.clone(),
        sse: crate::io_args::Sse::Aes256,
        sse_kms_key_id: None,
        retention: Default::default(),
    }
    .open(args.store_args.region.clone())
    .await?;
    let (jobs, objects) = erase_in_store(opened.store.as_ref(), &args.tenant).await?;
    println!(
        "{}",
        serde_json::json!({ "jobs": jobs, "objects": objects })
    );
    Ok(0)
}

/// Deletes every object of `tenant`, leaving a tombstone as record and state object of
/// each job that a record, a state object or a result names, so that workers skip the
/// job's queued tasks (deleting the state object would make it a job they do not know,
/// whose young tasks run). Returns the jobs and the objects deleted.
async fn erase_in_store(store: &dyn ObjectStore, tenant: &str) -> anyhow::Result<(usize, usize)> {
    let mut jobs = BTreeSet::new();
    for area in [Area::Jobs, Area::Results] {
        for object in store
            .list(&area.of_tenant(tenant))
            .await
            .context("listing")?
        {
            if let Some(
                Key::Job { job, .. } | Key::JobState { job, .. } | Key::Result { job, .. },
            ) = Key::parse(&object.key)
            {
                jobs.insert(job);
            }
        }
    }
    // The tombstones first: from here on workers skip the jobs' tasks.
    let mut tombstones = BTreeSet::new();
    for job in &jobs {
        for key in [Key::job_state(tenant, job), Key::job(tenant, job)] {
            let key = key.to_string();
            store
                .put(&key, TOMBSTONE.to_vec())
                .await
                .context("writing a tombstone")?;
            tombstones.insert(key);
        }
    }
    let mut objects = 0;
    for area in Area::ALL {
        for object in store
            .list(&area.of_tenant(tenant))
            .await
            .context("listing")?
        {
            if !tombstones.contains(&object.key) {
                store.delete(&object.key).await.context("deleting")?;
                objects += 1;
            }
        }
    }
    Ok((jobs.len(), objects))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tagfleet_io::store::FsStore;

    #[tokio::test]
    async fn erasing_in_the_store_leaves_tombstones_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::new(dir.path().to_path_buf(), None).unwrap();
        for (key, body) in [
            ("jobs/acme/j1.json", r#"{"source":"s3://media/x/"}"#),
            ("jobs/acme/j1/state.json", r#"{"state":"running"}"#),
            ("results/acme/j1/t000001.jsonl", "{}"),
            ("results/acme/j2/t000001.jsonl", "{}"),
            ("schedules/acme/s1.json", "{}"),
            ("jobs/globex/j3/state.json", r#"{"state":"running"}"#),
        ] {
            store.put(key, body.as_bytes().to_vec()).await.unwrap();
        }
        let (jobs, objects) = erase_in_store(&store, "acme").await.unwrap();
        assert_eq!((jobs, objects), (2, 3));
        let left: Vec<String> = store
            .list("")
            .await
            .unwrap()
            .into_iter()
            .map(|o| o.key)
            .collect();
        assert_eq!(
            left,
            [
                "jobs/acme/j1.json",
                "jobs/acme/j1/state.json",
                "jobs/acme/j2.json",
                "jobs/acme/j2/state.json",
                "jobs/globex/j3/state.json",
            ]
        );
        for key in &left[..4] {
            assert_eq!(store.get(key).await.unwrap(), TOMBSTONE, "{key}");
        }
    }
}
