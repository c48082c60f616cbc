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

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine;
use lettre::address::Envelope;
use lettre::transport::smtp::authentication::{Credentials as LettreCredentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, AsyncTokioStream, TlsParameters};
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

/// How many messages one connection carries before it is closed and a new one opened: a
/// long drain does not hold one session for ever (servers limit messages per session).
const MESSAGES_PER_CONNECTION: usize = 100;

/// A configured SMTP server.
pub struct Smtp {
    host: String,
    port: u16,
    tls: TlsMode,
    params: TlsParameters,
    /// For implicit TLS, which we set up on our own socket (see [`Smtp::open`]).
    implicit: Option<Arc<rustls::ClientConfig>>,
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
    /// Connecting or the implicit TLS handshake failed (before anything was said).
    Connect(String),
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
        let implicit = match c.tls {
            TlsMode::Implicit => Some(crate::tls::client_config(c.ca_file.as_deref())?),
            _ => None,
        };
        Ok(Smtp {
            host: c.host.clone(),
            port: c.port(),
            tls: c.tls,
            params,
            implicit,
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

    /// Sends `raw` to `rcpt` on a connection of its own. Never panics; every outcome is a
    /// [`Sent`].
    pub async fn send(&self, from: &str, rcpt: &[String], raw: &[u8]) -> Sent {
        let mut session = self.session();
        let sent = session.send(from, rcpt, raw).await;
        session.close().await;
        sent
    }

    /// A session that keeps one connection open across sends (see [`Session`]).
    pub fn session(&self) -> Session<'_> {
        Session {
            smtp: self,
            conn: None,
            carried: 0,
        }
    }

    /// What a send that did not get its 2xx means for the message: `failure` is `None` when
    /// the time ran out; `after_dot`: whether the message's final dot went out.
    fn failed(&self, failure: Option<Failure>, after_dot: bool) -> Sent {
        match failure {
            None if after_dot => Sent::Uncertain(format!(
                "{}: no answer within {} s after the whole message was sent",
                self.host,
                self.timeout.as_secs()
            )),
            None => Sent::Later(format!(
                "{}: no answer within {} s",
                self.host,
                self.timeout.as_secs()
            )),
            Some(Failure::Smtp(e)) if after_dot && e.status().is_none() => {
                Sent::Uncertain(format!(
                    "{}: the connection failed after the whole message was sent: {e}",
                    self.host
                ))
            }
            Some(Failure::Auth(m)) => Sent::Later(format!("{}: authentication: {m}", self.host)),
            Some(Failure::Token(e)) => Sent::Later(format!("no OAuth2 token for SMTP: {e}")),
            Some(Failure::Connect(m)) => Sent::Later(format!("{}: {m}", self.host)),
            Some(Failure::Mode(m)) => Sent::Later(format!("{}:{}: {m}", self.host, self.port)),
            Some(Failure::Smtp(e)) => self.classify(&e),
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
        let tcp = self.connect().await?;
        let stream: Box<dyn AsyncTokioStream> = match &self.implicit {
            Some(config) => Box::new(self.handshake(config, tcp).await?),
            None => Box::new(tcp),
        };
        let mut conn = self.greeting(stream, &hello).await?;
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

    /// A TCP connection with Nagle's algorithm off: lettre writes a message's final dot on its
    /// own, and with Nagle on that small write waits for the server's delayed ACK (40 ms a
    /// message).
    async fn connect(&self) -> std::result::Result<tokio::net::TcpStream, Failure> {
        let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| Failure::Connect(format!("connecting to port {}: {e}", self.port)))?;
        tcp.set_nodelay(true)
            .map_err(|e| Failure::Connect(format!("setting TCP_NODELAY: {e}")))?;
        Ok(tcp)
    }

    /// The implicit TLS handshake, certificates verified against `config`.
    async fn handshake(
        &self,
        config: &Arc<rustls::ClientConfig>,
        tcp: tokio::net::TcpStream,
    ) -> std::result::Result<Tls, Failure> {
        let name = rustls_pki_types::ServerName::try_from(self.host.clone())
            .map_err(|e| Failure::Connect(format!("not a valid server name: {e}")))?;
        tokio_rustls::TlsConnector::from(config.clone())
            .connect(name, tcp)
            .await
            .map(Tls)
            .map_err(|e| {
                if crate::tls::answered_in_plain_text(&e) {
                    Failure::Mode(
                        "answered in plain text, not TLS: this port wants tls = \"starttls\" \
                         (or use the server's implicit-TLS port, usually 465)"
                            .into(),
                    )
                } else {
                    Failure::Connect(format!("TLS handshake: {e}"))
                }
            })
    }

    /// Reads the greeting and says EHLO. A `tls` that does not match the port fails at once,
    /// saying so: a plain-text greeting late because the port waits for a TLS hello.
    async fn greeting(
        &self,
        stream: Box<dyn AsyncTokioStream>,
        hello: &ClientId,
    ) -> std::result::Result<AsyncSmtpConnection, Failure> {
        let connect = AsyncSmtpConnection::connect_with_transport(stream, hello);
        if self.implicit.is_some() {
            return connect.await.map_err(Failure::Smtp);
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
                Err(Failure::Connect(message)) => Err(Error::Network {
                    host: host.clone(),
                    message,
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

/// One connection to the server kept open across sends, as an outbox drain makes them: opened
/// on the first send, used for up to [`MESSAGES_PER_CONNECTION`] messages, dropped after any
/// send that does not end in a 2xx (the next send opens a new one). A kept connection that the
/// server closed meanwhile is noticed before anything of the message went out, and the
/// message goes over a new connection instead. Close it with [`Session::close`].
pub struct Session<'a> {
    smtp: &'a Smtp,
    conn: Option<AsyncSmtpConnection>,
    /// Messages sent over `conn`.
    carried: usize,
}

impl Session<'_> {
    /// Sends `raw` to `rcpt`. Never panics; every outcome is a [`Sent`].
    pub async fn send(&mut self, from: &str, rcpt: &[String], raw: &[u8]) -> Sent {
        let envelope = match envelope(from, rcpt) {
            Ok(e) => e,
            Err(e) => return Sent::Refused(e),
        };
        if let Some(conn) = self.conn.take() {
            match self.attempt(Some(conn), &envelope, raw).await {
                Ok(sent) => return sent,
                Err(e) => tracing::debug!(
                    host = %self.smtp.host,
                    error = %e,
                    "the kept SMTP connection is gone; opening a new one"
                ),
            }
        }
        self.carried = 0;
        self.attempt(None, &envelope, raw)
            .await
            .unwrap_or_else(|e| self.smtp.classify(&e))
    }

    /// One try, on the kept connection `reuse` or on a new one, under the timeout. `Err`
    /// only when the kept connection failed before the message went out.
    async fn attempt(
        &mut self,
        reuse: Option<AsyncSmtpConnection>,
        envelope: &Envelope,
        raw: &[u8],
    ) -> std::result::Result<Sent, lettre::transport::smtp::Error> {
        let reused = reuse.is_some();
        let dot = AtomicBool::new(false);
        let smtp = self.smtp;
        let attempt = async {
            let mut conn = match reuse {
                Some(conn) => conn,
                None => smtp.open().await?,
            };
            let reply = transfer(&mut conn, envelope, raw, &dot).await;
            if reply.as_ref().is_err_and(|e| e.status().is_some()) {
                conn.abort().await;
            }
            Ok::<_, Failure>((reply.map_err(Failure::Smtp)?, conn))
        };
        let outcome = tokio::time::timeout(smtp.timeout, attempt).await;
        let after_dot = dot.load(Ordering::SeqCst);
        match outcome {
            Ok(Ok((reply, conn))) => {
                self.keep(conn).await;
                Ok(Sent::Accepted(reply_text(&reply)))
            }
            Ok(Err(Failure::Smtp(e))) if reused && !after_dot && gone(&e) => Err(e),
            Ok(Err(f)) => Ok(smtp.failed(Some(f), after_dot)),
            Err(_) => Ok(smtp.failed(None, after_dot)),
        }
    }

    /// Keeps `conn` for the next message, or closes it once it has carried its share.
    async fn keep(&mut self, conn: AsyncSmtpConnection) {
        self.carried += 1;
        if self.carried < MESSAGES_PER_CONNECTION {
            self.conn = Some(conn);
        } else {
            self.carried = 0;
            quit(conn).await;
        }
    }

    /// Says goodbye on the kept connection, if any.
    pub async fn close(mut self) {
        if let Some(conn) = self.conn.take() {
            quit(conn).await;
        }
    }
}

/// A polite QUIT, not waited for long.
async fn quit(mut conn: AsyncSmtpConnection) {
    let _ = tokio::time::timeout(QUIT_TIMEOUT, conn.quit()).await;
}

/// Whether `e` says the connection is gone (closed, reset, or the server's 421) rather than
/// that the server refused something.
fn gone(e: &lettre::transport::smtp::Error) -> bool {
    e.status().is_none_or(|c| c.to_string() == "421")
}

/// An implicit-TLS stream for lettre, over our own socket.
#[derive(Debug)]
struct Tls(tokio_rustls::client::TlsStream<tokio::net::TcpStream>);

impl tokio::io::AsyncRead for Tls {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Tls {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

impl AsyncTokioStream for Tls {
    fn peer_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.0.get_ref().0.peer_addr()
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
