//! Pseudonyms: an image is named by HMAC-SHA256(tenant key, canonical ref), never by its
//! ref. Whoever holds the tenant key can recompute the mapping on their side; the results
//! alone name nothing.

use std::fmt;
use std::io;
use std::path::Path;

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// Bytes of key material a new key gets.
const KEY_BYTES: usize = 32;

/// A tenant's secret. `Debug` never prints the secret.
#[derive(Clone)]
pub struct TenantKey {
    secret: Vec<u8>,
    id: String,
}

impl TenantKey {
    /// Wraps secret bytes; at least 16 bytes, so pseudonyms cannot be brute-forced.
    pub fn new(secret: Vec<u8>) -> Result<Self, KeyError> {
        if secret.len() < 16 {
            return Err(KeyError::TooShort(secret.len()));
        }
        // The id names the key without revealing it: a different domain than pseudonyms.
        let digest = Sha256::new_with_prefix(b"tagfleet key id\0")
            .chain_update(&secret)
            .finalize();
        let id = hex::encode(&digest[..8]);
        Ok(Self { secret, id })
    }

    /// A fresh random key (uuid v4 draws from the OS generator).
    pub fn generate() -> Self {
        let mut secret = Vec::with_capacity(KEY_BYTES);
        while secret.len() < KEY_BYTES {
            secret.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
        }
        Self::new(secret).expect("generated keys are long enough")
    }

    /// Reads a key file: the secret as hex on its first line.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let text = std::fs::read_to_string(path).map_err(KeyError::Io)?;
        let line = text.lines().next().unwrap_or("").trim();
        let secret = hex::decode(line).map_err(|e| KeyError::NotHex(e.to_string()))?;
        Self::new(secret)
    }

    /// Loads the key at `path`, creating it (mode 0600) with a fresh secret if absent.
    pub fn load_or_create(path: &Path) -> Result<Self, KeyError> {
        if path.exists() {
            return Self::load(path);
        }
        let key = Self::generate();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(KeyError::Io)?;
        }
        write_private(path, format!("{}\n", hex::encode(&key.secret)).as_bytes())
            .map_err(KeyError::Io)?;
        Ok(key)
    }

    /// The secret as hex, for writing a secrets file.
    pub fn secret_hex(&self) -> String {
        hex::encode(&self.secret)
    }

    /// Short public identifier of this key, written in every result line.
    pub fn id(&self) -> &str {
        &self.id
    }
}

impl fmt::Debug for TenantKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TenantKey")
            .field("id", &self.id)
            .field("secret", &"<redacted>")
            .finish()
    }
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    std::fs::write(path, bytes)
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("tenant key is {0} bytes, at least 16 are needed")]
    TooShort(usize),
    #[error("tenant key file is not hex: {0}")]
    NotHex(String),
    #[error("reading tenant key file")]
    Io(#[source] io::Error),
}

/// Names images of one tenant.
#[derive(Debug, Clone)]
pub struct Pseudonymiser {
    key: TenantKey,
}

impl Pseudonymiser {
    pub fn new(key: TenantKey) -> Self {
        Self { key }
    }

    /// The pseudonym of a canonical ref: 64 hex characters.
    pub fn pseudonym(&self, canonical_ref: &str) -> String {
        let mut mac =
            HmacSha256::new_from_slice(&self.key.secret).expect("HMAC accepts keys of any length");
        mac.update(canonical_ref.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    pub fn key_id(&self) -> &str {
        self.key.id()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> TenantKey {
        TenantKey::new(vec![byte; 32]).unwrap()
    }

    #[test]
    fn pseudonyms_are_deterministic_per_key() {
        let a = Pseudonymiser::new(key(1));
        let again = Pseudonymiser::new(key(1));
        let r = "file:///photos/holiday/beach.jpg";
        assert_eq!(a.pseudonym(r), again.pseudonym(r));
        assert_eq!(a.pseudonym(r).len(), 64);
        assert_ne!(
            a.pseudonym(r),
            a.pseudonym("file:///photos/holiday/beach2.jpg")
        );
    }

    #[test]
    fn pseudonyms_differ_across_keys() {
        let r = "s3://media/2026/cat.png";
        let a = Pseudonymiser::new(key(1));
        let b = Pseudonymiser::new(key(2));
        assert_ne!(a.pseudonym(r), b.pseudonym(r));
        assert_ne!(a.key_id(), b.key_id());
    }

    #[test]
    fn pseudonym_matches_rfc4231_hmac() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        let mut secret = b"Jefe".to_vec();
        secret.resize(16, 0); // HMAC pads short keys with zeros: same MAC as "Jefe"
        let p = Pseudonymiser::new(TenantKey::new(secret).unwrap());
        assert_eq!(
            p.pseudonym("what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn debug_redacts_the_secret() {
        let printed = format!("{:?}", key(0xab));
        assert!(!printed.contains("abab"), "{printed}");
        assert!(printed.contains("redacted"));
    }

    #[test]
    fn key_file_is_created_private_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/tenant.key");
        let created = TenantKey::load_or_create(&path).unwrap();
        let loaded = TenantKey::load_or_create(&path).unwrap();
        assert_eq!(created.id(), loaded.id());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn short_or_garbled_keys_are_refused() {
        assert!(matches!(
            TenantKey::new(vec![1; 8]),
            Err(KeyError::TooShort(8))
        ));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        std::fs::write(&path, "not hex at all\n").unwrap();
        assert!(matches!(TenantKey::load(&path), Err(KeyError::NotHex(_))));
    }
}
