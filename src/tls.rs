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

/// Whether the server at `host:port` answers a TLS ClientHello with TLS (a handshake record or
/// an alert): a port that speaks implicit TLS. Asked when a plain-text greeting is late, so
/// `tls = "starttls"` pointed at port 993 says so at once instead of waiting out the timeout.
/// Any doubt (no answer within `limit`, a refused connection) is "no".
pub async fn speaks_tls(host: &str, port: u16, limit: std::time::Duration) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let probe = async {
        let config = client_config(None).ok()?;
        let name = rustls_pki_types::ServerName::try_from(host.to_owned()).ok()?;
        let mut conn = rustls::ClientConnection::new(config, name).ok()?;
        let mut hello = Vec::new();
        conn.write_tls(&mut hello).ok()?;
        let mut tcp = tokio::net::TcpStream::connect((host, port)).await.ok()?;
        tcp.write_all(&hello).await.ok()?;
        let mut first = [0u8; 1];
        let n = tcp.read(&mut first).await.ok()?;
        // 0x16: a handshake record (ServerHello); 0x15: an alert.
        Some(n == 1 && (first == [0x16] || first == [0x15]))
    };
    matches!(tokio::time::timeout(limit, probe).await, Ok(Some(true)))
}

/// Whether a failed TLS handshake failed because the server answered in plain text (an
/// IMAP `* OK` or SMTP `220` greeting): a STARTTLS or plain port spoken to with implicit TLS.
pub fn answered_in_plain_text(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(err) = next {
        if let Some(rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType)) =
            err.downcast_ref::<rustls::Error>()
        {
            return true;
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && let Some(inner) = io.get_ref()
            && answered_in_plain_text(inner)
        {
            return true;
        }
        next = err.source();
    }
    false
}
