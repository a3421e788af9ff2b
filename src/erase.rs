//! `tagfleet erase --tenant T`: the right to erasure, at once. Through the scheduler (its
//! jobs are cancelled and their queued tasks skipped) or, with no scheduler running,
//! straight in the store.

use anyhow::{Context, bail};
use clap::Args;
use tagfleet_contracts::keys::{Area, is_valid_id};

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
    let mut objects = 0;
    for area in Area::ALL {
        let prefix = area.of_tenant(&args.tenant);
        for object in opened.store.list(&prefix).await.context("listing")? {
            opened.store.delete(&object.key).await.context("deleting")?;
            objects += 1;
        }
    }
    println!("{}", serde_json::json!({ "objects": objects }));
    Ok(0)
}
