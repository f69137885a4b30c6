//! HTTPS termination with rustls (ring provider).
//!
//! Tencent's `Sign` covers only the token and the time: whoever reads a signed callback URL can send
//! other bodies with it for a minute. HTTPS on the callback URL is what keeps it secret, so the bridge
//! can terminate TLS itself when no proxy in front does.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// PEM files for HTTPS termination: `BRIDGE_TLS_CERT` and `BRIDGE_TLS_KEY`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A certificate or key that cannot be used; names the variable.
#[derive(Debug, thiserror::Error)]
#[error("{variable}: {problem}")]
pub struct TlsError {
    variable: &'static str,
    problem: String,
}

/// Reads the PEM files into a server configuration (TLS 1.2 and 1.3, HTTP/1.1).
pub fn server_config(files: &TlsFiles) -> Result<ServerConfig, TlsError> {
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(&files.cert).and_then(|it| it.collect()).map_err(|e| TlsError {
            variable: "BRIDGE_TLS_CERT",
            problem: format!("{}: {e}", files.cert.display()),
        })?;
    if certs.is_empty() {
        return Err(TlsError {
            variable: "BRIDGE_TLS_CERT",
            problem: format!("{}: no certificate", files.cert.display()),
        });
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| TlsError {
        variable: "BRIDGE_TLS_KEY",
        problem: format!("{}: {e}", files.key.display()),
    })?;
    let mut config = ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError { variable: "BRIDGE_TLS_CERT", problem: e.to_string() })?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TlsError {
            variable: "BRIDGE_TLS_KEY",
            problem: format!("does not fit the certificate: {e}"),
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}
