//! Certificate trust for every outgoing TLS connection: the bundled web roots, the system's
//! roots, and an optional extra CA file from the config. Verification is never switched off.

use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::error::{Error, Result};

/// The bundled web roots plus the system's, read once per process (a watch reconnecting 100
/// mailboxes would otherwise read the system store 100 times).
fn base_roots() -> &'static RootCertStore {
    static ROOTS: std::sync::OnceLock<RootCertStore> = std::sync::OnceLock::new();
    ROOTS.get_or_init(|| {
        let mut roots = RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        // The system store may be absent or partly unreadable; the bundled roots still apply.
        for cert in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(cert);
        }
        roots
    })
}

/// A client configuration that trusts the usual roots plus `ca_file`.
pub fn client_config(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>> {
    let mut roots = base_roots().clone();
    if let Some(path) = ca_file {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .and_then(|it| it.collect::<std::result::Result<_, _>>())
            .map_err(|e| unusable_ca(path, e))?;
        if certs.is_empty() {
            return Err(unusable_ca(path, "no PEM certificate in it"));
        }
        for cert in certs {
            roots.add(cert).map_err(|e| unusable_ca(path, e))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Internal(format!("TLS setup: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// A CA file that cannot be used: the config's to fix.
fn unusable_ca(path: &Path, why: impl std::fmt::Display) -> Error {
    Error::CaFile {
        path: path.to_owned(),
        message: why.to_string(),
    }
}
