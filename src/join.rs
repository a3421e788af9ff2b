//! `tagfleet pseudonym` and `tagfleet join`: the client's side of pseudonymisation.
//! Results name images only by HMAC-SHA256(tenant key, canonical ref); whoever holds the
//! key recomputes the pseudonyms of their own refs and joins the results back, locally.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use tagfleet_contracts::{Pseudonymiser, TenantKey, secrets};

use crate::inputs;

#[derive(Debug, Args)]
pub struct PseudonymArgs {
    /// The tenant key file (hex secret) the results were made with.
    #[arg(long, env = "TAGFLEET_KEY_FILE")]
    pub key_file: PathBuf,

    /// Refs (s3://bucket/key, file:///path) or local paths, canonicalised as `submit` does.
    #[arg(required = true)]
    pub refs: Vec<String>,
}

#[derive(Debug, Args)]
pub struct JoinArgs {
    /// The tenant key file (hex secret) the results were made with.
    #[arg(long, env = "TAGFLEET_KEY_FILE")]
    pub key_file: PathBuf,

    /// What was submitted: the same folder or manifest.
    #[arg(long)]
    pub source: PathBuf,

    /// Result objects: a .jsonl file or a folder of them (walked recursively).
    #[arg(long)]
    pub results: PathBuf,
}

#[derive(Debug, Args)]
pub struct TenantArgs {
    /// The tenant's name: 1 to 128 letters, digits, - _ . (not only dots).
    pub name: String,

    /// The secrets file to add it to (created when missing, mode 0600).
    #[arg(long, env = "TAGFLEET_SECRETS")]
    pub secrets: PathBuf,

    /// Also write the tenant's key here (hex, mode 0600), for `join` and `pseudonym` on
    /// the tenant's side.
    #[arg(long)]
    pub key_out: Option<PathBuf>,
}

/// Appends a new tenant to the secrets file and prints its bearer token. Nothing is
/// written unless the whole file, tenant added, loads as the fleet will load it.
pub fn tenant(args: TenantArgs) -> anyhow::Result<i32> {
    use std::os::unix::fs::OpenOptionsExt;
    let new = secrets::new_tenant(&args.name).map_err(anyhow::Error::msg)?;
    let existing = match std::fs::read_to_string(&args.secrets) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", args.secrets.display())),
    };
    let appended = secrets::append_tenant(&existing, &new)
        .map_err(|e| anyhow::anyhow!("{}: {e}; nothing written", args.secrets.display()))?;
    if let Some(path) = &args.key_out {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("creating --key-out {}", path.display()))?;
        writeln!(file, "{}", new.key.secret_hex())?;
    }
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(&args.secrets)
        .with_context(|| format!("opening {}", args.secrets.display()))?;
    // Appending keeps the file's owner and mode; what goes in is what was checked.
    file.write_all(&appended.as_bytes()[existing.len()..])?;
    file.sync_all()?;
    println!("{}", new.token);
    Ok(0)
}

fn pseudonymiser(key_file: &Path) -> anyhow::Result<Pseudonymiser> {
    let key =
        TenantKey::load(key_file).with_context(|| format!("tenant key {}", key_file.display()))?;
    Ok(Pseudonymiser::new(key))
}

/// A local path becomes the canonical `file://` ref `run` and `submit` use.
fn canonical(reference: &str) -> String {
    if reference.contains("://") {
        return reference.to_owned();
    }
    match Path::new(reference).canonicalize() {
        Ok(path) => format!("file://{}", path.display()),
        Err(_) => reference.to_owned(),
    }
}

pub fn pseudonym(args: PseudonymArgs) -> anyhow::Result<i32> {
    let p = pseudonymiser(&args.key_file)?;
    let mut out = std::io::stdout().lock();
    for r in &args.refs {
        writeln!(
            out,
            "{}\t{}",
            p.pseudonym(&canonical(r)),
            crate::terminal::escaped(r)
        )?;
    }
    Ok(0)
}

pub fn join(args: JoinArgs) -> anyhow::Result<i32> {
    let p = pseudonymiser(&args.key_file)?;
    let refs: HashMap<String, String> = inputs::collect_refs(&args.source)?
        .items
        .into_iter()
        .map(|i| (p.pseudonym(&i.reference), i.reference))
        .collect();
    let (mut joined, mut unmatched) = (0usize, 0usize);
    let mut out = std::io::stdout().lock();
    for file in result_files(&args.results)? {
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?;
        for (n, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let mut value: serde_json::Value = serde_json::from_str(line)
                .with_context(|| format!("{} line {}: not a result line", file.display(), n + 1))?;
            let image = value["image"].as_str().unwrap_or_default();
            match refs.get(image) {
                Some(r) => {
                    value["ref"] = serde_json::Value::String(r.clone());
                    joined += 1;
                }
                None => unmatched += 1,
            }
            writeln!(out, "{}", crate::terminal::json_line(&value))?;
        }
    }
    eprintln!(
        "{joined} result lines joined to their refs, {unmatched} not matched (another key or another source)"
    );
    Ok(0)
}

fn result_files(path: &Path) -> anyhow::Result<Vec<PathBuf>> {
    if path.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    let mut dirs = vec![path.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))?
        {
            let path = entry?.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "jsonl") {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}
