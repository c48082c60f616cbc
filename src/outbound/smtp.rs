//! Talking to the SMTP server with lettre: implicit TLS, STARTTLS (never downgraded) or, only
//! when allowed, plain; certificates verified (system roots plus `ca-file`); AUTH PLAIN or
//! LOGIN. lettre's own timeout covers the connection only, so every send runs under ours.

use std::time::Duration;

use lettre::address::Envelope;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

use crate::config::{SmtpConfig, TlsMode};
use crate::error::{Error, Result};
use crate::secret::Revealed;

/// A configured SMTP server.
pub struct Smtp {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    host: String,
    timeout: Duration,
}

/// What became of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sent {
    /// 2xx after DATA: the server's reply.
    Accepted(String),
    /// 5xx: refused for good, with the reply.
    Refused(String),
    /// 4xx, connection, TLS or timeout: try again later.
    Later(String),
}

impl Smtp {
    /// Builds the transport; nothing is sent until [`Smtp::send`].
    pub fn new(c: &SmtpConfig, password: Option<Revealed>) -> Result<Smtp> {
        let tls_err = |e: lettre::transport::smtp::Error| Error::Tls {
            host: c.host.clone(),
            message: e.to_string(),
        };
        let mut params = TlsParameters::builder(c.host.clone());
        if let Some(ca) = &c.ca_file {
            let pem = std::fs::read(ca).map_err(|e| Error::io(ca, e))?;
            params = params.add_root_certificate(Certificate::from_pem(&pem).map_err(tls_err)?);
        }
        let params = params.build_rustls().map_err(tls_err)?;
        let tls = match c.tls {
            TlsMode::Implicit => Tls::Wrapper(params),
            TlsMode::Starttls => Tls::Required(params),
            TlsMode::None => Tls::None,
        };
        let mut b = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(c.host.clone())
            .port(c.port())
            .tls(tls)
            .timeout(Some(c.timeout()));
        if let (Some(user), Some(pass)) = (&c.username, password) {
            b = b
                .credentials(Credentials::new(user.clone(), pass.expose().to_owned()))
                .authentication(vec![Mechanism::Plain, Mechanism::Login]);
        }
        Ok(Smtp {
            transport: b.build(),
            host: c.host.clone(),
            timeout: c.timeout(),
        })
    }

    /// The server's host name.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Sends `raw` to `rcpt`. Never panics; every outcome is a [`Sent`].
    pub async fn send(&self, from: &str, rcpt: &[String], raw: &[u8]) -> Sent {
        let envelope = match envelope(from, rcpt) {
            Ok(e) => e,
            Err(e) => return Sent::Refused(e),
        };
        match tokio::time::timeout(self.timeout, self.transport.send_raw(&envelope, raw)).await {
            Err(_) => Sent::Later(format!(
                "{}: no answer within {} s",
                self.host,
                self.timeout.as_secs()
            )),
            Ok(Ok(resp)) => Sent::Accepted(format!(
                "{} {}",
                resp.code(),
                resp.message().collect::<Vec<_>>().join(" ")
            )),
            // 530/534/535/538: our credentials, not this message: keep it for after the fix.
            Ok(Err(e)) if e.status().is_some_and(|c| c.to_string().starts_with("53")) => {
                Sent::Later(format!("{}: authentication: {e}", self.host))
            }
            Ok(Err(e)) if e.is_permanent() => Sent::Refused(format!("{}: {e}", self.host)),
            Ok(Err(e)) => Sent::Later(format!("{}: {e}", self.host)),
        }
    }

    /// Connects, says EHLO, starts TLS and authenticates, without sending anything.
    pub async fn check(&self) -> Result<()> {
        let host = self.host.clone();
        match tokio::time::timeout(self.timeout, self.transport.test_connection()).await {
            Err(_) => Err(Error::Timeout {
                host,
                what: "checking SMTP".into(),
                secs: self.timeout.as_secs(),
            }),
            Ok(Ok(true)) => Ok(()),
            Ok(Ok(false)) => Err(Error::Network {
                host,
                message: "the server did not answer NOOP".into(),
            }),
            Ok(Err(e)) => Err(Error::Network {
                host,
                message: e.to_string(),
            }),
        }
    }
}

fn envelope(from: &str, rcpt: &[String]) -> std::result::Result<Envelope, String> {
    let from = from
        .parse()
        .map_err(|e| format!("envelope sender {from:?}: {e}"))?;
    let to = rcpt
        .iter()
        .map(|r| r.parse().map_err(|e| format!("recipient {r:?}: {e}")))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Envelope::new(Some(from), to).map_err(|e| e.to_string())
}
