//! Certificate trust for every outgoing TLS connection: the bundled web roots, the system's
//! roots, and an optional extra CA file from the config. Verification is never switched off.

use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::error::{Error, Result};

/// The system's root certificates that rustls accepts as trust anchors, read once per
/// process (a watch reconnecting 100 mailboxes would otherwise read the system store 100
/// times). The store may be absent or partly unreadable; the bundled roots still apply.
fn system_roots() -> &'static [CertificateDer<'static>] {
    static ROOTS: std::sync::OnceLock<Vec<CertificateDer<'static>>> = std::sync::OnceLock::new();
    ROOTS.get_or_init(|| {
        rustls_native_certs::load_native_certs()
            .certs
            .into_iter()
            .filter(|c| RootCertStore::empty().add(c.clone()).is_ok())
            .collect()
    })
}

/// The bundled web roots plus the system's.
fn base_roots() -> &'static RootCertStore {
    static ROOTS: std::sync::OnceLock<RootCertStore> = std::sync::OnceLock::new();
    ROOTS.get_or_init(|| {
        let mut roots = RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        for cert in system_roots() {
            let _ = roots.add(cert.clone());
        }
        roots
    })
}

/// Reads the trust roots on a thread of its own, for a command about to connect: the first
/// connection then finds them read (the system's store is a few hundred files) instead of
/// waiting for them after the store has opened.
pub fn read_roots_ahead() {
    let _ = std::thread::Builder::new()
        .name("tls-roots".into())
        .spawn(|| {
            base_roots();
        });
}

/// The certificates of the config's `ca-file`: at least one, each usable as a trust anchor.
fn ca_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<std::result::Result<_, _>>())
        .map_err(|e| unusable_ca(path, e))?;
    if certs.is_empty() {
        return Err(unusable_ca(path, "no PEM certificate in it"));
    }
    for cert in &certs {
        RootCertStore::empty()
            .add(cert.clone())
            .map_err(|e| unusable_ca(path, e))?;
    }
    Ok(certs)
}

/// A client configuration that trusts the usual roots plus `ca_file`.
pub fn client_config(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>> {
    let mut roots = base_roots().clone();
    if let Some(path) = ca_file {
        for cert in ca_certs(path)? {
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

/// The same trust as [`client_config`] (bundled web roots, the system's, `ca_file`) for
/// lettre's SMTP connections to `host`. lettre 0.11 builds its rustls configuration itself
/// and takes no `ClientConfig`, so it is handed the same roots: the bundled ones by name,
/// the system's and the CA file's as certificates.
pub fn smtp_parameters(
    host: &str,
    ca_file: Option<&Path>,
) -> Result<lettre::transport::smtp::client::TlsParameters> {
    use lettre::transport::smtp::client::{Certificate, CertificateStore, TlsParameters};
    let extra = match ca_file {
        Some(path) => ca_certs(path)?,
        None => Vec::new(),
    };
    let mut params =
        TlsParameters::builder(host.to_owned()).certificate_store(CertificateStore::WebpkiRoots);
    for der in system_roots().iter().chain(&extra) {
        let cert = Certificate::from_der(der.to_vec()).map_err(|e| Error::Tls {
            host: host.to_owned(),
            message: format!("a trusted certificate: {e}"),
        })?;
        params = params.add_root_certificate(cert);
    }
    params.build_rustls().map_err(|e| Error::Tls {
        host: host.to_owned(),
        message: e.to_string(),
    })
}

/// A CA file that cannot be used: the config's to fix.
fn unusable_ca(path: &Path, why: impl std::fmt::Display) -> Error {
    Error::CaFile {
        path: path.to_owned(),
        message: why.to_string(),
    }
}

/// How long a plain-text greeting may keep us waiting before we ask whether the port speaks
/// implicit TLS (a TLS server says nothing until the client's hello).
pub const PROBE_AFTER: std::time::Duration = std::time::Duration::from_secs(2);

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
