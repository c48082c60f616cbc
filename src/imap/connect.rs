//! Opening an authenticated IMAP session: TCP (with keepalive), TLS or STARTTLS (never a
//! silent downgrade), the greeting, and LOGIN, AUTHENTICATE PLAIN, or an OAuth2 bearer token
//! (XOAUTH2 / OAUTHBEARER) with one renewal when the server refuses it.

use std::time::Duration;

use async_imap::imap_proto::{Response, Status};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::guard::excerpt;
use super::session::Imap;
use super::wire::{
    Client, Conn, Paced, READ_AHEAD, SERVER_TEXT, TlsTcp, imap_err, io_err, server_text, timed,
};
use crate::config::{AuthMech, MailboxConfig, TlsMode};
use crate::error::{Error, Result};
use crate::oauth2::Credentials;
use crate::oauth2::sasl::{self, ServerError};
use crate::secret::Revealed;

/// Connects, secures and logs in, as the mailbox's config says: [`dial`], [`secure`], then
/// [`authenticate`] (`doctor` runs the same three steps one by one).
pub async fn connect(mb: &MailboxConfig, creds: &Credentials) -> Result<Imap> {
    let tcp = dial(mb).await?;
    let client = secure(mb, tcp).await?;
    let imap = authenticate(mb, client, creds).await?;
    tracing::info!(mailbox = %mb.name, host = %mb.host, tls = %mb.tls, "connected");
    Ok(imap)
}

/// Opens the TCP connection (with keepalive) to the mailbox's server.
pub async fn dial(mb: &MailboxConfig) -> Result<TcpStream> {
    let host = mb.host.as_str();
    timed(host, mb.timeout(), "connecting", async {
        let tcp = TcpStream::connect((host, mb.port()))
            .await
            .map_err(|e| Error::Network {
                host: format!("{host}:{}", mb.port()),
                message: e.to_string(),
            })?;
        let ka = socket2::TcpKeepalive::new()
            .with_time(Duration::from_secs(60))
            .with_interval(Duration::from_secs(15));
        // Keepalive only helps notice a dead peer sooner; failing to set it is not fatal.
        let _ = socket2::SockRef::from(&tcp).set_tcp_keepalive(&ka);
        let _ = tcp.set_nodelay(true);
        Ok(tcp)
    })
    .await
}

/// Secures `tcp` as configured (TLS with certificate checks, or STARTTLS that must succeed)
/// and reads the greeting.
pub async fn secure(mb: &MailboxConfig, tcp: TcpStream) -> Result<Client> {
    let host = mb.host.as_str();
    let limit = mb.timeout();
    Ok(match mb.tls {
        TlsMode::Implicit => {
            let tls = handshake(mb, tcp).await?;
            let mut client = Client::new(Conn::tls(tls));
            greeting(host, limit, &mut client).await?;
            client
        }
        TlsMode::Starttls => {
            let mut client = plain_greeting(mb, tcp).await?;
            timed(host, limit, "sending STARTTLS", async {
                client
                    .run_command_and_check_ok("STARTTLS", None)
                    .await
                    .map_err(|e| Error::Tls {
                        host: host.to_owned(),
                        message: format!(
                            "STARTTLS refused ({}); not continuing without encryption",
                            excerpt(e.to_string().as_bytes(), SERVER_TEXT)
                        ),
                    })
            })
            .await?;
            let Some(tcp) = client.into_inner().into_plain() else {
                return Err(Error::Internal("STARTTLS on a TLS stream".into()));
            };
            Client::new(Conn::tls(handshake(mb, tcp).await?))
        }
        TlsMode::None => plain_greeting(mb, tcp).await?,
    })
}

/// Logs in and reads the capabilities.
pub async fn authenticate(mb: &MailboxConfig, client: Client, creds: &Credentials) -> Result<Imap> {
    let session = match creds {
        Credentials::Password(password) => login(mb, client, password).await?,
        Credentials::OAuth2(source) => oauth2_login(mb, client, source).await?,
    };
    let mut imap = Imap::new(session, mb.host.clone(), mb.timeout());
    imap.load_capabilities().await?;
    Ok(imap)
}

/// The greeting on a plain-text connection, within the mailbox's timeout in all: a port that
/// speaks implicit TLS is found out after [`crate::tls::PROBE_AFTER`] and said so.
async fn plain_greeting(mb: &MailboxConfig, tcp: TcpStream) -> Result<Client> {
    let (host, limit) = (mb.host.as_str(), mb.timeout());
    timed(host, limit, "waiting for the greeting", async {
        expect_plain_text(mb, &tcp).await?;
        let mut client = Client::new(Conn::plain(tcp));
        greeting(host, limit, &mut client).await?;
        Ok(client)
    })
    .await
}

/// Fails at once, saying so, when the server has not greeted us within
/// [`crate::tls::PROBE_AFTER`] because its port speaks implicit TLS.
async fn expect_plain_text(mb: &MailboxConfig, tcp: &TcpStream) -> Result<()> {
    let mut first = [0u8; 1];
    if tokio::time::timeout(crate::tls::PROBE_AFTER, tcp.peek(&mut first))
        .await
        .is_ok()
    {
        return Ok(());
    }
    if crate::tls::speaks_tls(
        &mb.host,
        mb.port(),
        mb.timeout().min(crate::tls::PROBE_AFTER),
    )
    .await
    {
        return Err(Error::Protocol {
            host: format!("{}:{}", mb.host, mb.port()),
            message: format!(
                "speaks implicit TLS, not plain-text IMAP: set tls = \"implicit\" for this \
                 port, or keep tls = \"{}\" with the server's plain-text port (usually 143)",
                mb.tls
            ),
        });
    }
    Ok(())
}

async fn handshake(mb: &MailboxConfig, tcp: TcpStream) -> Result<TlsTcp> {
    let host = mb.host.as_str();
    let config = crate::tls::client_config(mb.ca_file.as_deref())?;
    let name = rustls_pki_types::ServerName::try_from(host.to_owned()).map_err(|e| Error::Tls {
        host: host.to_owned(),
        message: format!("not a valid server name: {e}"),
    })?;
    timed(host, mb.timeout(), "TLS handshake", async {
        let tcp = tokio::io::BufReader::with_capacity(READ_AHEAD, Paced::new(tcp));
        TlsConnector::from(config).connect(name, tcp).await.map_err(|e| {
            if mb.tls == TlsMode::Implicit && crate::tls::answered_in_plain_text(&e) {
                return Error::Protocol {
                    host: format!("{host}:{}", mb.port()),
                    message: "answered in plain text, not TLS: this port wants \
                              tls = \"starttls\" (or use the server's implicit-TLS port, \
                              usually 993)"
                        .into(),
                };
            }
            let mut message = e.to_string();
            if message.contains("UnknownIssuer") {
                message.push_str(
                    " (the certificate is not signed by a trusted CA; for a private CA set ca-file)",
                );
            }
            Error::Tls { host: host.to_owned(), message }
        })
    })
    .await
}

async fn greeting(host: &str, limit: Duration, client: &mut Client) -> Result<()> {
    let resp = timed(host, limit, "waiting for the greeting", async {
        client
            .read_response()
            .await
            .map_err(|e| io_err(host.to_owned(), &e))
    })
    .await?;
    let Some(resp) = resp else {
        return Err(Error::Network {
            host: host.to_owned(),
            message: "connection closed before the greeting".into(),
        });
    };
    match resp.parsed() {
        Response::Data {
            status: Status::Ok | Status::PreAuth,
            ..
        } => Ok(()),
        Response::Data {
            status: Status::Bye,
            outcome,
        } => Err(Error::Network {
            host: host.to_owned(),
            message: format!(
                "server said BYE: {}",
                outcome.information.as_deref().unwrap_or("")
            ),
        }),
        Response::Data { status, outcome } => Err(Error::Protocol {
            host: host.to_owned(),
            message: format!(
                "the server refused the connection in its greeting ({}): {}",
                if *status == Status::No { "NO" } else { "BAD" },
                excerpt(
                    outcome.information.as_deref().unwrap_or("").as_bytes(),
                    SERVER_TEXT
                )
            ),
        }),
        _ => Err(Error::Protocol {
            host: host.to_owned(),
            message: "the server's first line is not an IMAP greeting (`* OK`)".into(),
        }),
    }
}

struct PlainAuth<'a> {
    user: &'a str,
    pass: &'a str,
}

impl async_imap::Authenticator for PlainAuth<'_> {
    type Response = Vec<u8>;
    fn process(&mut self, _challenge: &[u8]) -> Vec<u8> {
        let mut r = Vec::with_capacity(self.user.len() + self.pass.len() + 2);
        r.push(0);
        r.extend_from_slice(self.user.as_bytes());
        r.push(0);
        r.extend_from_slice(self.pass.as_bytes());
        r
    }
}

async fn login(
    mb: &MailboxConfig,
    client: Client,
    password: &Revealed,
) -> Result<async_imap::Session<Conn>> {
    let host = mb.host.as_str();
    let user = mb.username.as_str();
    let result = timed(host, mb.timeout(), "logging in", async {
        let r = match mb.auth {
            AuthMech::Login => client.login(user, password.expose()).await,
            AuthMech::Plain | AuthMech::Xoauth2 | AuthMech::Oauthbearer => {
                client
                    .authenticate(
                        "PLAIN",
                        PlainAuth {
                            user,
                            pass: password.expose(),
                        },
                    )
                    .await
            }
        };
        Ok(r.map_err(|(e, _client)| e))
    })
    .await?;
    result.map_err(|e| login_err(host, user, e))
}

/// A failed login: NO / BAD are the server refusing us, except `[UNAVAILABLE]` (its
/// authentication backend is down: try again later, it says nothing about our credentials).
fn login_err(host: &str, user: &str, e: async_imap::error::Error) -> Error {
    match e {
        async_imap::error::Error::No(m) | async_imap::error::Error::Bad(m) => {
            let text = server_text(&m);
            if text.contains("[UNAVAILABLE]") {
                Error::Network {
                    host: host.to_owned(),
                    message: format!("login could not be checked now: {text}"),
                }
            } else {
                Error::Auth {
                    host: host.to_owned(),
                    user: user.to_owned(),
                    message: text,
                }
            }
        }
        other => imap_err(host, other),
    }
}

/// Logs in with a bearer token. A refused token is replaced once (it may have been revoked
/// or expired early) and tried again on the same connection.
async fn oauth2_login(
    mb: &MailboxConfig,
    client: Client,
    source: &crate::oauth2::TokenSource,
) -> Result<async_imap::Session<Conn>> {
    let host = mb.host.as_str();
    let user = mb.username.as_str();
    let mech = sasl::mechanism(mb.auth);
    let token = source.token().await?;
    let (client, first) = match try_token(mb, client, &token).await? {
        Ok(session) => return Ok(session),
        Err(refused) => refused,
    };
    tracing::info!(
        mailbox = %mb.name,
        mechanism = mech,
        server = %first,
        "the server refused the access token; getting a new one and trying once more"
    );
    let token = source.renew(&token).await?;
    match try_token(mb, client, &token).await? {
        Ok(session) => Ok(session),
        Err((_, why)) => Err(Error::Auth {
            host: host.to_owned(),
            user: user.to_owned(),
            message: format!(
                "the {mech} token was refused ({why}); check that the token is for {user} and \
                 grants IMAP access to this mailbox (scope / mailbox permission)"
            ),
        }),
    }
}

/// Why a token was refused: the server's error challenge and its final NO.
struct Refused {
    challenge: Option<ServerError>,
    text: String,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.challenge {
            Some(c) => write!(f, "{c}; {}", self.text),
            None => f.write_str(&self.text),
        }
    }
}

/// One AUTHENTICATE with `token`: the session, or the client back with why it was refused.
/// Errors that are not a refusal (connection lost, timeout, `[UNAVAILABLE]`) end the login.
async fn try_token(
    mb: &MailboxConfig,
    client: Client,
    token: &Revealed,
) -> Result<std::result::Result<async_imap::Session<Conn>, (Client, Refused)>> {
    let host = mb.host.as_str();
    let mut challenge = None;
    let auth = sasl::ImapAuth {
        initial: sasl::initial_response(mb.auth, &mb.username, token, host, mb.port()),
        mech: mb.auth,
        steps: 0,
        error: &mut challenge,
    };
    let r = timed(host, mb.timeout(), "logging in", async {
        Ok(client.authenticate(sasl::mechanism(mb.auth), auth).await)
    })
    .await?;
    match r {
        Ok(session) => Ok(Ok(session)),
        // A NO about the token itself; not "unsupported mechanism" nor `[UNAVAILABLE]`
        // (which `login_err` makes a transient error).
        Err((async_imap::error::Error::No(m), client))
            if !m.contains("[UNAVAILABLE]") && !m.contains("nsupported") =>
        {
            let text = server_text(&m);
            Ok(Err((client, Refused { challenge, text })))
        }
        Err((e, _)) => Err(login_err(host, &mb.username, e)),
    }
}
