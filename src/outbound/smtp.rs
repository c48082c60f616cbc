//! Talking to the SMTP server on lettre's connection type: implicit TLS, STARTTLS (never
//! downgraded) or, only when allowed, plain; certificates verified (system roots plus
//! `ca-file`); AUTH PLAIN or LOGIN, or an OAuth2 bearer token (XOAUTH2 / OAUTHBEARER). Every
//! send runs under our timeout.
//!
//! The conversation is ours, step by step, so that we know whether the message's final dot
//! went out: a timeout or a lost connection before it means the server has nothing (retry
//! later); after it the server may have accepted the message ([`Sent::Uncertain`]: never
//! resent on its own). For OAuth2, lettre's XOAUTH2 gives up at the server's error challenge
//! instead of answering it, and has no OAUTHBEARER: a refused token is replaced once and tried
//! again on the same connection.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use base64::Engine;
use lettre::address::Envelope;
use lettre::transport::smtp::authentication::{Credentials as LettreCredentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, TlsParameters};
use lettre::transport::smtp::commands::{Data, Mail, Rcpt};
use lettre::transport::smtp::extension::{ClientId, Extension, MailBodyParameter, MailParameter};
use lettre::transport::smtp::response::Response;

use crate::config::{AuthMech, SmtpConfig, TlsMode};
use crate::error::{Error, Result};
use crate::oauth2::sasl::{self, ServerError};
use crate::oauth2::{Credentials, TokenSource};
use crate::secret::Revealed;

/// How long a polite QUIT may take once the server has answered the message.
const QUIT_TIMEOUT: Duration = Duration::from_secs(5);

/// A configured SMTP server.
pub struct Smtp {
    host: String,
    port: u16,
    tls: TlsMode,
    params: TlsParameters,
    auth: Auth,
    timeout: Duration,
}

/// How we authenticate.
enum Auth {
    /// Not at all.
    None,
    /// AUTH PLAIN or LOGIN with the password.
    Password(LettreCredentials),
    /// A bearer token.
    OAuth2(OAuth2Smtp),
}

/// What the OAuth2 conversation needs.
struct OAuth2Smtp {
    source: Arc<TokenSource>,
    user: String,
    mech: AuthMech,
}

/// How a conversation failed.
enum Failure {
    /// lettre's error: the server's reply, or the connection.
    Smtp(lettre::transport::smtp::Error),
    /// The server refused our token (twice), or does not offer what we need.
    Auth(String),
    /// No token to be had.
    Token(Error),
    /// `tls` does not match what the port speaks.
    Mode(String),
}

/// What became of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sent {
    /// 2xx after DATA: the server's reply.
    Accepted(String),
    /// 5xx: refused for good, with the reply.
    Refused(String),
    /// 4xx, connection, TLS or timeout before the message's final dot: try again later.
    Later(String),
    /// A timeout or a lost connection after the final dot: the server may have accepted
    /// the message. Never resent on its own.
    Uncertain(String),
}

/// The message's bytes for lettre's `message_iter`, noting when the last of them has been
/// handed over: the next thing lettre writes is the final dot.
struct NoteEnd<'a> {
    raw: Option<&'a [u8]>,
    dot: &'a AtomicBool,
}

impl<'a> Iterator for NoteEnd<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let part = self.raw.take();
        if part.is_none() {
            self.dot.store(true, Ordering::SeqCst);
        }
        part
    }
}

impl Smtp {
    /// Reads the settings; nothing is sent until [`Smtp::send`].
    pub fn new(c: &SmtpConfig, creds: Option<Credentials>) -> Result<Smtp> {
        // One trust policy for IMAP and SMTP: the bundled web roots, the system's, ca-file.
        let params = crate::tls::smtp_parameters(&c.host, c.ca_file.as_deref())?;
        let auth = match (&c.username, creds) {
            (Some(user), Some(Credentials::Password(pass))) => Auth::Password(
                LettreCredentials::new(user.clone(), pass.expose().to_owned()),
            ),
            (Some(user), Some(Credentials::OAuth2(source))) => Auth::OAuth2(OAuth2Smtp {
                source,
                user: user.clone(),
                mech: c.auth.unwrap_or(AuthMech::Xoauth2),
            }),
            _ => Auth::None,
        };
        Ok(Smtp {
            host: c.host.clone(),
            port: c.port(),
            tls: c.tls,
            params,
            auth,
            timeout: c.timeout(),
        })
    }

    /// The server's host name.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// How long one whole conversation may take.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Sends `raw` to `rcpt`. Never panics; every outcome is a [`Sent`].
    pub async fn send(&self, from: &str, rcpt: &[String], raw: &[u8]) -> Sent {
        let envelope = match envelope(from, rcpt) {
            Ok(e) => e,
            Err(e) => return Sent::Refused(e),
        };
        let dot = AtomicBool::new(false);
        let attempt = async {
            let mut conn = self.open().await?;
            let reply = transfer(&mut conn, &envelope, raw, &dot).await;
            if reply.as_ref().is_err_and(|e| e.status().is_some()) {
                conn.abort().await;
            }
            Ok::<_, Failure>((reply.map_err(Failure::Smtp)?, conn))
        };
        let outcome = tokio::time::timeout(self.timeout, attempt).await;
        let after_dot = dot.load(Ordering::SeqCst);
        match outcome {
            Ok(Ok((reply, mut conn))) => {
                let _ = tokio::time::timeout(QUIT_TIMEOUT, conn.quit()).await;
                Sent::Accepted(reply_text(&reply))
            }
            Err(_) if after_dot => Sent::Uncertain(format!(
                "{}: no answer within {} s after the whole message was sent",
                self.host,
                self.timeout.as_secs()
            )),
            Err(_) => Sent::Later(format!(
                "{}: no answer within {} s",
                self.host,
                self.timeout.as_secs()
            )),
            Ok(Err(Failure::Smtp(e))) if after_dot && e.status().is_none() => {
                Sent::Uncertain(format!(
                    "{}: the connection failed after the whole message was sent: {e}",
                    self.host
                ))
            }
            Ok(Err(Failure::Auth(m))) => Sent::Later(format!("{}: authentication: {m}", self.host)),
            Ok(Err(Failure::Token(e))) => Sent::Later(format!("no OAuth2 token for SMTP: {e}")),
            Ok(Err(Failure::Mode(m))) => Sent::Later(format!("{}:{}: {m}", self.host, self.port)),
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

    /// Connects, says EHLO, secures the connection as configured and authenticates.
    async fn open(&self) -> std::result::Result<AsyncSmtpConnection, Failure> {
        let hello = ClientId::default();
        let mut conn = self.connect(&hello).await?;
        if self.tls == TlsMode::Starttls {
            if !conn.can_starttls() {
                conn.abort().await;
                return Err(Failure::Auth(
                    "the server does not offer STARTTLS; not sending credentials or mail in \
                     clear text"
                        .into(),
                ));
            }
            conn.starttls(self.params.clone(), &hello)
                .await
                .map_err(Failure::Smtp)?;
        }
        match &self.auth {
            Auth::None => {}
            Auth::Password(creds) => {
                if let Err(e) = conn
                    .auth(&[Mechanism::Plain, Mechanism::Login], creds)
                    .await
                {
                    conn.abort().await;
                    return Err(Failure::Smtp(e));
                }
            }
            Auth::OAuth2(o) => self.oauth2_auth(&mut conn, o).await?,
        }
        Ok(conn)
    }

    /// Connects and says EHLO (over TLS from the first byte with implicit TLS). A `tls` that
    /// does not match the port fails at once, saying so: implicit TLS answered in plain text,
    /// or a plain-text greeting late because the port waits for a TLS hello.
    async fn connect(&self, hello: &ClientId) -> std::result::Result<AsyncSmtpConnection, Failure> {
        let implicit = self.tls == TlsMode::Implicit;
        let connect = AsyncSmtpConnection::connect_tokio1(
            (self.host.as_str(), self.port),
            Some(self.timeout),
            hello,
            implicit.then(|| self.params.clone()),
            None,
        );
        if implicit {
            return connect.await.map_err(|e| {
                if crate::tls::answered_in_plain_text(&e) {
                    Failure::Mode(
                        "answered in plain text, not TLS: this port wants tls = \"starttls\" \
                         (or use the server's implicit-TLS port, usually 465)"
                            .into(),
                    )
                } else {
                    Failure::Smtp(e)
                }
            });
        }
        tokio::pin!(connect);
        tokio::select! {
            r = &mut connect => return r.map_err(Failure::Smtp),
            () = tokio::time::sleep(crate::tls::PROBE_AFTER) => {}
        }
        if crate::tls::speaks_tls(&self.host, self.port, crate::tls::PROBE_AFTER).await {
            return Err(Failure::Mode(format!(
                "speaks implicit TLS, not plain-text SMTP: set tls = \"implicit\" in [smtp] \
                 for this port, or keep tls = \"{}\" with the server's submission port \
                 (usually 587)",
                self.tls
            )));
        }
        connect.await.map_err(Failure::Smtp)
    }

    /// Authenticates with a bearer token, replacing a refused one once.
    async fn oauth2_auth(
        &self,
        conn: &mut AsyncSmtpConnection,
        o: &OAuth2Smtp,
    ) -> std::result::Result<(), Failure> {
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
        if let Err(first) = self.auth_once(conn, o, &token).await? {
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
            if let Err(why) = self.auth_once(conn, o, &token).await? {
                conn.abort().await;
                return Err(Failure::Auth(format!(
                    "the {} token was refused ({why}); check that it is for {} and has the \
                     SMTP scope (SMTP.Send, or SMTP.SendAsApp for an app)",
                    sasl::mechanism(o.mech),
                    o.user
                )));
            }
        }
        Ok(())
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
        let ir = sasl::initial_response(o.mech, &o.user, token, &self.host, self.port);
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
        let attempt = async {
            match self.open().await {
                Ok(mut conn) => {
                    let _ = conn.quit().await;
                    Ok(())
                }
                Err(Failure::Token(e)) => Err(e),
                Err(Failure::Mode(m)) => Err(Error::Protocol {
                    host: format!("{host}:{}", self.port),
                    message: m,
                }),
                Err(Failure::Auth(message)) => Err(Error::Auth {
                    host: host.clone(),
                    user: match &self.auth {
                        Auth::OAuth2(o) => o.user.clone(),
                        _ => String::new(),
                    },
                    message,
                }),
                Err(Failure::Smtp(e)) => Err(Error::Network {
                    host: host.clone(),
                    message: e.to_string(),
                }),
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

/// MAIL, RCPT, DATA and the message, each step on its own, so that `dot` tells whether the
/// message's final dot has gone out (lettre's `send` does the same steps in one call).
async fn transfer(
    conn: &mut AsyncSmtpConnection,
    envelope: &Envelope,
    raw: &[u8],
    dot: &AtomicBool,
) -> std::result::Result<Response, lettre::transport::smtp::Error> {
    let mut options = Vec::new();
    let info = conn.server_info();
    let non_ascii = |a: &lettre::Address| !AsRef::<str>::as_ref(a).is_ascii();
    if envelope.from().is_some_and(non_ascii) || envelope.to().iter().any(non_ascii) {
        // Without SMTPUTF8 the server refuses the address: its answer says so.
        if info.supports_feature(Extension::SmtpUtfEight) {
            options.push(MailParameter::SmtpUtfEight);
        }
    }
    if !raw.is_ascii() && info.supports_feature(Extension::EightBitMime) {
        options.push(MailParameter::Body(MailBodyParameter::EightBitMime));
    }
    conn.command(Mail::new(envelope.from().cloned(), options))
        .await?;
    for to in envelope.to() {
        conn.command(Rcpt::new(to.clone(), Vec::new())).await?;
    }
    conn.command(Data).await?;
    conn.message_iter(NoteEnd {
        raw: Some(raw),
        dot,
    })
    .await
}

/// A reply as we record it: code and text.
fn reply_text(r: &Response) -> String {
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
