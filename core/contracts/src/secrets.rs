//! The tenants secrets file, shared by the scheduler (bearer tokens, pseudonym keys for
//! retries, allow-lists, quotas) and the workers (pseudonym keys, allow-lists). In
//! Kubernetes it is mounted from a Secret.
//!
//! ```toml
//! [tenants.acme]
//! # SHA-256 of the bearer token, hex; the token itself is stored nowhere.
//! token_sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
//! # The pseudonym key: at least 16 bytes, hex.
//! key = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
//! # S3 folders the tenant's jobs may read images and manifests from, and write their
//! # own outputs to. None listed: no S3 access at all.
//! sources = ["s3://media/acme/"]
//! outputs = ["s3://acme-exports/tagfleet/"]
//!
//! [tenants.acme.quotas]   # optional; these are the defaults
//! schedules = 50
//! jobs_in_flight = 100
//! images_in_flight = 5000000
//! ```
//!
//! The fleet acts with one cloud role for every tenant, so the allow-lists are what
//! stops one tenant from using the fleet to reach another's data (a confused deputy).

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::S3Location;
use crate::keys::is_valid_id;
use crate::pseudonym::TenantKey;

/// One tenant's secrets.
#[derive(Clone)]
pub struct TenantSecrets {
    token_sha256: Option<[u8; 32]>,
    pub key: TenantKey,
    /// Folders the tenant's jobs may read from.
    pub sources: Vec<S3Location>,
    /// Folders the tenant's jobs may write their own outputs to.
    pub outputs: Vec<S3Location>,
    pub quotas: Quotas,
}

impl fmt::Debug for TenantSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TenantSecrets")
            .field("has_token", &self.token_sha256.is_some())
            .field("key", &self.key)
            .field("sources", &self.sources)
            .field("outputs", &self.outputs)
            .field("quotas", &self.quotas)
            .finish()
    }
}

/// What one tenant may hold at once; over it, a request is refused (429).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Quotas {
    /// Cron schedules.
    pub schedules: usize,
    /// Jobs not yet ended.
    pub jobs_in_flight: usize,
    /// Images of jobs not yet ended.
    pub images_in_flight: u64,
}

impl Default for Quotas {
    fn default() -> Self {
        Self {
            schedules: 50,
            jobs_in_flight: 100,
            images_in_flight: 5_000_000,
        }
    }
}

/// Why a tenant may not use an S3 location.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("not a location this tenant may use")]
    NotAllowed,
    #[error("the fleet's own store is never a source or an output")]
    FleetStore,
}

/// Which way a location is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

impl TenantSecrets {
    /// Whether this tenant may read (sources) or write (outputs) at `location`: it must
    /// lie inside one of the tenant's folders for that access, and neither inside nor
    /// around `fleet_store`, the folder holding the fleet's results, jobs and schedules.
    pub fn check(
        &self,
        location: &S3Location,
        access: Access,
        fleet_store: Option<&S3Location>,
    ) -> Result<(), Denied> {
        if let Some(store) = fleet_store
            && (location.is_within(store) || store.is_within(location))
        {
            return Err(Denied::FleetStore);
        }
        let allowed = match access {
            Access::Read => &self.sources,
            Access::Write => &self.outputs,
        };
        if allowed.iter().any(|folder| location.is_within(folder)) {
            Ok(())
        } else {
            Err(Denied::NotAllowed)
        }
    }
}

/// Every tenant of the secrets file, by name.
#[derive(Debug, Clone, Default)]
pub struct Secrets {
    tenants: BTreeMap<String, TenantSecrets>,
}

#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("reading {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    tenants: BTreeMap<String, Entry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    token_sha256: Option<String>,
    key: String,
    #[serde(default)]
    sources: Vec<String>,
    #[serde(default)]
    outputs: Vec<String>,
    #[serde(default)]
    quotas: Quotas,
}

/// The folders of an allow-list, each a valid `s3://` location.
fn folders(name: &str, field: &str, uris: &[String]) -> Result<Vec<S3Location>, String> {
    uris.iter()
        .enumerate()
        .map(|(i, uri)| {
            S3Location::parse(uri).map_err(|e| format!("tenants.{name}.{field}[{i}]: {e}"))
        })
        .collect()
}

impl Secrets {
    /// Reads and checks the whole file; an error names the tenant and field at fault.
    pub fn load(path: &Path) -> Result<Self, SecretsError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| SecretsError::Io {
            path: shown.clone(),
            source,
        })?;
        Self::parse(&text).map_err(|message| SecretsError::Invalid {
            path: shown,
            message,
        })
    }

    /// Parses the TOML text of a secrets file.
    pub fn parse(text: &str) -> Result<Self, String> {
        let file: File = toml::from_str(text).map_err(|e| e.message().to_owned())?;
        let mut tenants = BTreeMap::new();
        for (name, entry) in file.tenants {
            if !is_valid_id(&name) {
                return Err(format!("tenants.{name:?}: {NAME_RULE}"));
            }
            let secret = hex::decode(entry.key.trim())
                .map_err(|e| format!("tenants.{name}.key: not hex ({e})"))?;
            let key = TenantKey::new(secret).map_err(|e| format!("tenants.{name}.key: {e}"))?;
            let token_sha256 = entry
                .token_sha256
                .map(|h| {
                    hex::decode(h.trim())
                        .ok()
                        .and_then(|b| <[u8; 32]>::try_from(b).ok())
                        .ok_or_else(|| {
                            format!("tenants.{name}.token_sha256: not 64 hex characters")
                        })
                })
                .transpose()?;
            let sources = folders(&name, "sources", &entry.sources)?;
            let outputs = folders(&name, "outputs", &entry.outputs)?;
            tenants.insert(
                name,
                TenantSecrets {
                    token_sha256,
                    key,
                    sources,
                    outputs,
                    quotas: entry.quotas,
                },
            );
        }
        if tenants.is_empty() {
            return Err("no [tenants.<name>] entries".into());
        }
        Ok(Self { tenants })
    }

    pub fn get(&self, tenant: &str) -> Option<&TenantSecrets> {
        self.tenants.get(tenant)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &TenantSecrets)> {
        self.tenants.iter().map(|(n, s)| (n.as_str(), s))
    }

    pub fn len(&self) -> usize {
        self.tenants.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tenants.is_empty()
    }

    /// The tenant a bearer token belongs to. Every tenant's hash is compared in full, so
    /// the time taken says nothing about which one (or how much of one) matched.
    pub fn authenticate(&self, token: &str) -> Option<&str> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for (name, secrets) in &self.tenants {
            if let Some(expected) = &secrets.token_sha256 {
                let diff = expected
                    .iter()
                    .zip(digest.iter())
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b));
                if diff == 0 {
                    found = Some(name.as_str());
                }
            }
        }
        found
    }
}

/// The rule [`is_valid_id`] enforces, for error messages.
const NAME_RULE: &str = "a tenant name is 1 to 128 letters, digits, - _ . (not only dots)";

/// A new tenant: its stanza for the secrets file, its bearer token and its key.
pub struct NewTenant {
    pub name: String,
    pub stanza: String,
    pub token: String,
    pub key: TenantKey,
}

/// A new tenant stanza for the secrets file and the bearer token that goes with it. Fails
/// when `name` is not a name the loader accepts.
pub fn new_tenant(name: &str) -> Result<NewTenant, String> {
    if !is_valid_id(name) {
        return Err(format!("{name:?}: {NAME_RULE}"));
    }
    let token = hex::encode(
        uuid::Uuid::new_v4()
            .as_bytes()
            .iter()
            .chain(uuid::Uuid::new_v4().as_bytes())
            .copied()
            .collect::<Vec<u8>>(),
    );
    let key = TenantKey::generate();
    // Quoted: unquoted, the dot of `acme.x` would make `x` a table inside tenant `acme`.
    // A valid name holds no quote or backslash, so it needs no escaping.
    let stanza = format!(
        "[tenants.\"{name}\"]\ntoken_sha256 = \"{}\"\nkey = \"{}\"\n",
        hex::encode(Sha256::digest(token.as_bytes())),
        key.secret_hex()
    );
    Ok(NewTenant {
        name: name.to_owned(),
        stanza,
        token,
        key,
    })
}

/// The secrets file `text` with `new` appended (after a line break): checked to load and
/// to hold the new tenant, so what a caller writes is a file the fleet starts with. Fails
/// with the reason when the tenant exists already or the result would not load.
pub fn append_tenant(text: &str, new: &NewTenant) -> Result<String, String> {
    if let Ok(existing) = Secrets::parse(text)
        && existing.get(&new.name).is_some()
    {
        return Err(format!("there is a tenant {:?} already", new.name));
    }
    let appended = format!("{text}\n{}", new.stanza);
    let secrets = Secrets::parse(&appended)
        .map_err(|e| format!("with tenant {:?} added, it would not load: {e}", new.name))?;
    if secrets.get(&new.name).is_none() {
        return Err(format!(
            "with tenant {:?} added, it would not hold that tenant",
            new.name
        ));
    }
    Ok(appended)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_tenant_stanza_parses_and_its_token_authenticates() {
        let NewTenant {
            stanza: stanza_a,
            token: token_a,
            ..
        } = new_tenant("acme").unwrap();
        let NewTenant {
            stanza: stanza_b,
            token: token_b,
            ..
        } = new_tenant("globex").unwrap();
        let secrets = Secrets::parse(&format!("{stanza_a}\n{stanza_b}")).unwrap();
        assert_eq!(secrets.len(), 2);
        assert_eq!(secrets.authenticate(&token_a), Some("acme"));
        assert_eq!(secrets.authenticate(&token_b), Some("globex"));
        assert_eq!(secrets.authenticate("wrong"), None);
        assert_eq!(secrets.authenticate(""), None);
        assert_ne!(
            secrets.get("acme").unwrap().key.id(),
            secrets.get("globex").unwrap().key.id()
        );
    }

    #[test]
    fn a_dotted_name_is_quoted_and_stays_one_tenant() {
        let first = new_tenant("acme").unwrap();
        let dotted = new_tenant("acme.x").unwrap();
        let text = append_tenant(&first.stanza, &dotted).unwrap();
        let secrets = Secrets::parse(&text).unwrap();
        assert_eq!(secrets.len(), 2);
        assert_eq!(secrets.authenticate(&dotted.token), Some("acme.x"));
        assert_eq!(secrets.authenticate(&first.token), Some("acme"));
        for name in ["-", "_a", "a..b", ".x", "x.", &"a".repeat(128)] {
            let new = new_tenant(name).unwrap();
            let text = append_tenant("", &new).unwrap();
            assert!(Secrets::parse(&text).unwrap().get(name).is_some(), "{name}");
        }
    }

    #[test]
    fn names_the_loader_refuses_are_refused_before_any_stanza() {
        for bad in [
            "",
            "a/b",
            "../x",
            "..",
            "a b",
            "a\"b",
            "é",
            &"a".repeat(129),
        ] {
            let e = new_tenant(bad).err().unwrap();
            assert!(e.contains("a tenant name is"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn appending_refuses_a_duplicate_or_a_file_that_would_not_load() {
        let acme = new_tenant("acme").unwrap();
        let text = append_tenant("", &acme).unwrap();
        let again = new_tenant("acme").unwrap();
        assert!(
            append_tenant(&text, &again)
                .unwrap_err()
                .contains("already")
        );
        let other = new_tenant("globex").unwrap();
        let broken = format!("{text}[tenants.acme.quotas]\nschedules = \"many\"\n");
        assert!(append_tenant(&broken, &other).is_err());
        assert!(append_tenant("not toml", &other).is_err());
        // Loads as it is, but no [tenants."globex"] table can extend an inline table.
        let inline = format!(
            "tenants = {{ acme = {{ key = \"{}\" }} }}\n",
            "ab".repeat(16)
        );
        assert_eq!(Secrets::parse(&inline).unwrap().len(), 1);
        assert!(
            append_tenant(&inline, &other)
                .unwrap_err()
                .contains("would not load")
        );
        let appended = append_tenant(&text, &other).unwrap();
        assert!(appended.starts_with(&text));
        assert_eq!(Secrets::parse(&appended).unwrap().len(), 2);
    }

    fn tenant(extra: &str) -> TenantSecrets {
        let text = format!("[tenants.acme]\nkey = \"{}\"\n{extra}", "ab".repeat(16));
        Secrets::parse(&text).unwrap().get("acme").unwrap().clone()
    }

    fn at(uri: &str) -> S3Location {
        S3Location::parse(uri).unwrap()
    }

    #[test]
    fn a_tenant_reads_and_writes_only_inside_its_own_folders() {
        let acme = tenant("sources = [\"s3://media/acme\"]\noutputs = [\"s3://exports/acme/\"]\n");
        let store = at("s3://fleet/tagfleet/");
        let check = |uri: &str, access| acme.check(&at(uri), access, Some(&store));
        assert_eq!(check("s3://media/acme/a.jpg", Access::Read), Ok(()));
        assert_eq!(check("s3://media/acme/", Access::Read), Ok(()));
        assert_eq!(
            check("s3://media/acme2/a.jpg", Access::Read),
            Err(Denied::NotAllowed)
        );
        assert_eq!(check("s3://media/", Access::Read), Err(Denied::NotAllowed));
        assert_eq!(
            check("s3://exports/acme/j", Access::Read),
            Err(Denied::NotAllowed)
        );
        assert_eq!(check("s3://exports/acme/j", Access::Write), Ok(()));
        assert_eq!(
            check("s3://media/acme/x", Access::Write),
            Err(Denied::NotAllowed)
        );
    }

    #[test]
    fn the_fleet_store_is_never_a_source_or_output_whatever_the_list_says() {
        let greedy = tenant("sources = [\"s3://fleet\"]\noutputs = [\"s3://fleet\"]\n");
        let store = at("s3://fleet/tagfleet");
        for uri in [
            "s3://fleet/tagfleet/jobs/",
            "s3://fleet/tagfleet/results/globex/j1/",
            "s3://fleet/",
            "s3://fleet",
        ] {
            for access in [Access::Read, Access::Write] {
                assert_eq!(
                    greedy.check(&at(uri), access, Some(&store)),
                    Err(Denied::FleetStore),
                    "{uri}"
                );
            }
        }
        assert_eq!(
            greedy.check(
                &at("s3://fleet/elsewhere/a.jpg"),
                Access::Read,
                Some(&store)
            ),
            Ok(())
        );
    }

    #[test]
    fn no_allow_list_no_s3_access_and_quotas_default() {
        let plain = tenant("");
        assert_eq!(
            plain.check(&at("s3://media/a.jpg"), Access::Read, None),
            Err(Denied::NotAllowed)
        );
        assert_eq!(plain.quotas, Quotas::default());
        let custom = tenant("[tenants.acme.quotas]\nschedules = 2\n");
        assert_eq!(custom.quotas.schedules, 2);
        assert_eq!(
            custom.quotas.jobs_in_flight,
            Quotas::default().jobs_in_flight
        );
    }

    #[test]
    fn errors_name_the_tenant_and_field() {
        let bad_source = format!(
            "[tenants.acme]\nkey = \"{}\"\nsources = [\"s3://media/a\", \"media/b\"]\n",
            "ab".repeat(16)
        );
        assert!(
            Secrets::parse(&bad_source)
                .unwrap_err()
                .contains("tenants.acme.sources[1]")
        );
        let bad_quota = format!(
            "[tenants.acme]\nkey = \"{}\"\n[tenants.acme.quotas]\njobs = 3\n",
            "ab".repeat(16)
        );
        assert!(Secrets::parse(&bad_quota).unwrap_err().contains("jobs"));
        let short = "[tenants.acme]\nkey = \"0011\"\n";
        assert!(
            Secrets::parse(short)
                .unwrap_err()
                .contains("tenants.acme.key")
        );
        let bad_token = format!(
            "[tenants.acme]\nkey = \"{}\"\ntoken_sha256 = \"zz\"\n",
            "ab".repeat(16)
        );
        assert!(
            Secrets::parse(&bad_token)
                .unwrap_err()
                .contains("tenants.acme.token_sha256")
        );
        let unknown = format!(
            "[tenants.acme]\nkey = \"{}\"\ntoken = \"x\"\n",
            "ab".repeat(16)
        );
        assert!(Secrets::parse(&unknown).unwrap_err().contains("token"));
        assert!(Secrets::parse("").unwrap_err().contains("no [tenants"));
        let bad_name = format!("[tenants.\"a/b\"]\nkey = \"{}\"\n", "ab".repeat(16));
        assert!(Secrets::parse(&bad_name).unwrap_err().contains("a/b"));
    }
}
