//! Talking to the SMTP server with lettre: implicit TLS, STARTTLS (never downgraded) or, only
//! when allowed, plain; certificates verified (system roots plus `ca-file`); AUTH PLAIN or
//! LOGIN, or an OAuth2 bearer token (XOAUTH2 / OAUTHBEARER). lettre's own timeout covers the
//! connection only, so every send runs under ours.
//!
//! With OAuth2 the conversation is ours, on lettre's connection type: lettre's XOAUTH2
//! gives up at the server's error challenge instead of answering it, and has no OAUTHBEARER.
//! A refused token is replaced once and tried again on the same connection.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use lettre::address::Envelope;
use lettre::transport::smtp::authentication::{Credentials as LettreCredentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, Certificate, Tls, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

use crate::config::{AuthMech, SmtpConfig, TlsMode};
use crate::error::{Error, Result};
use crate::oauth2::sasl::{self, ServerError};
use crate::oauth2::{Credentials, TokenSource};
use crate::secret::Revealed;

/// A configured SMTP server.
pub struct Smtp {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    oauth2: Option<OAuth2Smtp>,
    host: String,
    timeout: Duration,
}

/// What the OAuth2 conversation needs.
struct OAuth2Smtp {
    source: Arc<TokenSource>,
    user: String,
    mech: AuthMech,
    port: u16,
    tls: TlsMode,
    params: TlsParameters,
}

/// How an OAuth2 conversation failed.
enum Failure {
    /// lettre's error: the server's reply, or the connection.
    Smtp(lettre::transport::smtp::Error),
    /// The server refused our token (twice), or does not offer the mechanism.
    Auth(String),
    /// No token to be had.
    Token(Error),
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
    pub fn new(c: &SmtpConfig, creds: Option<Credentials>) -> Result<Smtp> {
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
            TlsMode::Implicit => Tls::Wrapper(params.clone()),
            TlsMode::Starttls => Tls::Required(params.clone()),
            TlsMode::None => Tls::None,
        };
        let mut b = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(c.host.clone())
            .port(c.port())
            .tls(tls)
            .timeout(Some(c.timeout()));
        let mut oauth2 = None;
        match (&c.username, creds) {
            (Some(user), Some(Credentials::Password(pass))) => {
                b = b
                    .credentials(LettreCredentials::new(
                        user.clone(),
                        pass.expose().to_owned(),
                    ))
                    .authentication(vec![Mechanism::Plain, Mechanism::Login]);
            }
            (Some(user), Some(Credentials::OAuth2(source))) => {
                oauth2 = Some(OAuth2Smtp {
                    source,
                    user: user.clone(),
                    mech: c.auth.unwrap_or(AuthMech::Xoauth2),
                    port: c.port(),
                    tls: c.tls,
                    params,
                });
            }
            _ => {}
        }
        Ok(Smtp {
            transport: b.build(),
            oauth2,
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
        let attempt = async {
            match &self.oauth2 {
                Some(o) => self.oauth2_conversation(o, Some((&envelope, raw))).await,
                None => self
                    .transport
                    .send_raw(&envelope, raw)
                    .await
                    .map(|r| reply_text(&r))
                    .map_err(Failure::Smtp),
            }
        };
        match tokio::time::timeout(self.timeout, attempt).await {
            Err(_) => Sent::Later(format!(
                "{}: no answer within {} s",
                self.host,
                self.timeout.as_secs()
            )),
            Ok(Ok(reply)) => Sent::Accepted(reply),
            Ok(Err(Failure::Auth(m))) => Sent::Later(format!("{}: authentication: {m}", self.host)),
            Ok(Err(Failure::Token(e))) => Sent::Later(format!("no OAuth2 token for SMTP: {e}")),
            Ok(Err(Failure::Smtp(e))) => self.classify(&e),
        }
    }

    /// What a failed send means for the message.
    fn classify(&self, e: &lettre::transport::smtp::Error) -> Sent {
        // 530/534/535/538: our credentials, not this message: keep it for after the fix.
        if e.status().is_some_and(|c| c.to_string().starts_with("53")) {
            Sent::Later(format!("{}: authentication: {e}", self.host))
        } else if e.is_permanent() {
            Sent::Refused(format!("{}: {e}", self.host))
        } else {
            Sent::Later(format!("{}: {e}", self.host))
        }
    }

    /// Connects, secures, authenticates with a bearer token and, with `mail`, sends it.
    /// Returns the server's reply to the message ("" without one).
    async fn oauth2_conversation(
        &self,
        o: &OAuth2Smtp,
        mail: Option<(&Envelope, &[u8])>,
    ) -> std::result::Result<String, Failure> {
        let hello = ClientId::default();
        let wrapper = (o.tls == TlsMode::Implicit).then(|| o.params.clone());
        let mut conn = AsyncSmtpConnection::connect_tokio1(
            (self.host.as_str(), o.port),
            Some(self.timeout),
            &hello,
            wrapper,
            None,
        )
        .await
        .map_err(Failure::Smtp)?;
        if o.tls == TlsMode::Starttls {
            if !conn.can_starttls() {
                conn.abort().await;
                return Err(Failure::Auth(
                    "the server does not offer STARTTLS; not sending a token in clear text".into(),
                ));
            }
            conn.starttls(o.params.clone(), &hello)
                .await
                .map_err(Failure::Smtp)?;
        }
        if o.mech == AuthMech::Xoauth2
            && !conn
                .server_info()
                .supports_auth_mechanism(Mechanism::Xoauth2)
        {
            conn.abort().await;
            return Err(Failure::Auth(
                "the server does not offer AUTH XOAUTH2".into(),
            ));
        }
        let token = o.source.token().await.map_err(Failure::Token)?;
        if let Err(first) = self.auth_once(&mut conn, o, &token).await? {
            tracing::info!(
                server = %first,
                "the SMTP server refused the access token; getting a new one and trying once more"
            );
            let token = match o.source.renew(&token).await {
                Ok(t) => t,
                Err(e) => {
                    conn.abort().await;
                    return Err(Failure::Token(e));
                }
            };
            if let Err(why) = self.auth_once(&mut conn, o, &token).await? {
                conn.abort().await;
                return Err(Failure::Auth(format!(
                    "the {} token was refused ({why}); check that it is for {} and has the \
                     SMTP scope (SMTP.Send, or SMTP.SendAsApp for an app)",
                    sasl::mechanism(o.mech),
                    o.user
                )));
            }
        }
        let reply = match mail {
            Some((envelope, raw)) => {
                reply_text(&conn.send(envelope, raw).await.map_err(Failure::Smtp)?)
            }
            None => String::new(),
        };
        let _ = conn.quit().await;
        Ok(reply)
    }

    /// One AUTH with `token`: Ok(Ok) when accepted, Ok(Err(why)) when refused (the exchange
    /// finished, the connection still usable), Err when the connection failed.
    async fn auth_once(
        &self,
        conn: &mut AsyncSmtpConnection,
        o: &OAuth2Smtp,
        token: &Revealed,
    ) -> std::result::Result<std::result::Result<(), String>, Failure> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let ir = sasl::initial_response(o.mech, &o.user, token, &self.host, o.port);
        let command = format!("AUTH {} {}\r\n", sasl::mechanism(o.mech), b64.encode(ir));
        let refused = |e: &lettre::transport::smtp::Error| {
            e.status().is_some_and(|c| {
                let c = c.to_string();
                c.starts_with('5') || c == "454"
            })
        };
        match conn.command(command).await {
            Ok(r) if r.has_code(334) => {
                let text = r.message().next().unwrap_or("").trim();
                let challenge = ServerError::parse(&b64.decode(text).unwrap_or_default());
                let abort = format!("{}\r\n", b64.encode(sasl::abort_response(o.mech)));
                match conn.command(abort).await {
                    Ok(_) => Ok(Ok(())),
                    Err(e) if refused(&e) => Ok(Err(format!("{challenge}; {e}"))),
                    Err(e) => Err(Failure::Smtp(e)),
                }
            }
            Ok(_) => Ok(Ok(())),
            Err(e) if refused(&e) => Ok(Err(e.to_string())),
            Err(e) => Err(Failure::Smtp(e)),
        }
    }

    /// Connects, says EHLO, starts TLS and authenticates, without sending anything.
    pub async fn check(&self) -> Result<()> {
        let host = self.host.clone();
        let net = |message: String| Error::Network {
            host: host.clone(),
            message,
        };
        let attempt = async {
            match &self.oauth2 {
                Some(o) => match self.oauth2_conversation(o, None).await {
                    Ok(_) => Ok(()),
                    Err(Failure::Token(e)) => Err(e),
                    Err(Failure::Auth(message)) => Err(Error::Auth {
                        host: host.clone(),
                        user: o.user.clone(),
                        message,
                    }),
                    Err(Failure::Smtp(e)) => Err(net(e.to_string())),
                },
                None => match self.transport.test_connection().await {
                    Ok(true) => Ok(()),
                    Ok(false) => Err(net("the server did not answer NOOP".into())),
                    Err(e) => Err(net(e.to_string())),
                },
            }
        };
        tokio::time::timeout(self.timeout, attempt)
            .await
            .unwrap_or_else(|_| {
                Err(Error::Timeout {
                    host: host.clone(),
                    what: "checking SMTP".into(),
                    secs: self.timeout.as_secs(),
                })
            })
    }
}

/// A reply as we record it: code and text.
fn reply_text(r: &lettre::transport::smtp::response::Response) -> String {
    format!("{} {}", r.code(), r.message().collect::<Vec<_>>().join(" "))
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
