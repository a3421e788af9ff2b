//! The tenants secrets file, shared by the scheduler (bearer tokens, pseudonym keys for
//! retries) and the workers (pseudonym keys). In Kubernetes it is mounted from a Secret.
//!
//! ```toml
//! [tenants.acme]
//! # SHA-256 of the bearer token, hex; the token itself is stored nowhere.
//! token_sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
//! # The pseudonym key: at least 16 bytes, hex.
//! key = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::keys::is_valid_id;
use crate::pseudonym::TenantKey;

/// One tenant's secrets.
#[derive(Clone)]
pub struct TenantSecrets {
    token_sha256: Option<[u8; 32]>,
    pub key: TenantKey,
}

impl fmt::Debug for TenantSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TenantSecrets")
            .field("has_token", &self.token_sha256.is_some())
            .field("key", &self.key)
            .finish()
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
                return Err(format!(
                    "tenants.{name:?}: a tenant name is letters, digits, - _ . only"
                ));
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
            tenants.insert(name, TenantSecrets { token_sha256, key });
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

/// A new tenant: its stanza for the secrets file, its bearer token and its key.
pub struct NewTenant {
    pub stanza: String,
    pub token: String,
    pub key: TenantKey,
}

/// A new tenant stanza for the secrets file and the bearer token that goes with it.
pub fn new_tenant(name: &str) -> NewTenant {
    let token = hex::encode(
        uuid::Uuid::new_v4()
            .as_bytes()
            .iter()
            .chain(uuid::Uuid::new_v4().as_bytes())
            .copied()
            .collect::<Vec<u8>>(),
    );
    let key = TenantKey::generate();
    let stanza = format!(
        "[tenants.{name}]\ntoken_sha256 = \"{}\"\nkey = \"{}\"\n",
        hex::encode(Sha256::digest(token.as_bytes())),
        key.secret_hex()
    );
    NewTenant { stanza, token, key }
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
        } = new_tenant("acme");
        let NewTenant {
            stanza: stanza_b,
            token: token_b,
            ..
        } = new_tenant("globex");
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
    fn errors_name_the_tenant_and_field() {
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
