//! The API's TLS identity: a certificate chain and its private key, PEM files, read once
//! at start-up so a bad file stops the scheduler before it listens.

use std::path::Path;
use std::sync::Arc;

pub use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::crypto::aws_lc_rs;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{ServerConfig, version};

/// Why the TLS identity could not be loaded; `Cert` and `Key` name the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("the certificate file {path}: {reason}")]
    Cert { path: String, reason: String },
    #[error("the key file {path}: {reason}")]
    Key { path: String, reason: String },
    #[error("the certificate and key do not make a TLS identity: {0}")]
    Pair(String),
}

/// A TLS acceptor for the certificate chain at `cert` (leaf first) and the private key at
/// `key` (PKCS#8, PKCS#1 or SEC1). HTTP/1.1 only, TLS 1.2 and 1.3.
pub fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
    let cert_error = |reason: String| TlsError::Cert {
        path: cert.display().to_string(),
        reason,
    };
    let key_error = |reason: String| TlsError::Key {
        path: key.display().to_string(),
        reason,
    };
    let pem = std::fs::read(cert).map_err(|e| cert_error(e.to_string()))?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_error(format!("not PEM ({e})")))?;
    if chain.is_empty() {
        return Err(cert_error("holds no CERTIFICATE block".into()));
    }
    let pem = std::fs::read(key).map_err(|e| key_error(e.to_string()))?;
    let private = PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| key_error(format!("holds no PEM private key ({e})")))?;
    let mut config = ServerConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
        .with_protocol_versions(&[&version::TLS13, &version::TLS12])
        .map_err(|e| TlsError::Pair(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(|e| TlsError::Pair(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(cert: &Path, key: &Path) -> TlsError {
        match acceptor(cert, key) {
            Ok(_) => panic!("accepted"),
            Err(e) => e,
        }
    }

    #[test]
    fn missing_or_malformed_files_name_the_file_at_fault() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        let e = refused(&cert, &key);
        assert!(matches!(e, TlsError::Cert { .. }), "{e}");
        std::fs::write(&cert, "not a certificate\n").unwrap();
        let e = refused(&cert, &key);
        assert!(matches!(e, TlsError::Cert { .. }), "{e}");
        std::fs::write(
            &cert,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let e = refused(&cert, &key);
        assert!(matches!(e, TlsError::Key { .. }), "{e}");
        std::fs::write(
            &key,
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let e = refused(&cert, &key);
        assert!(matches!(e, TlsError::Pair(_)), "{e}");
    }
}
