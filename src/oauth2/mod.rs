//! OAuth2 bearer tokens for IMAP and SMTP (XOAUTH2, OAUTHBEARER).
//!
//! A [`TokenSource`] hands out access tokens for one account (a mailbox, or `[smtp]`): from a
//! `token-command`, or from a token endpoint with the `refresh-token` or
//! `client-credentials` flow. Access tokens are cached in memory and in the store until
//! shortly before they expire, so a cron `sync` every minute does not ask the endpoint every
//! minute. A refresh token the server rotates replaces the stored one at once, durably,
//! before the new access token is used ([`store`]). A server that refuses a token makes the
//! caller ask for a new one once ([`TokenSource::renew`]). `invalid_grant` marks the refresh
//! token dead: that account fails with [`Error::OAuth2`] (`relogin`) until
//! `mailticket oauth2 login` (or a new `refresh-token` in the config) brings a live one; the
//! dead one is never sent again.
//!
//! Tokens, refresh tokens and client secrets are [`Revealed`] values: they never reach a log.

pub mod device;
pub mod http;
pub mod provider;
pub mod sasl;
pub mod store;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{AuthMech, Config, Flow, MailboxConfig, OAuth2Config, Provider, SmtpConfig};
use crate::error::{Error, Result};
use crate::secret::Revealed;
use crate::store::Location;
pub use store::{TokenRow, TokenStore};

/// How a mailbox or `[smtp]` logs in.
#[derive(Debug, Clone)]
pub enum Credentials {
    /// A password (IMAP LOGIN / AUTHENTICATE PLAIN, SMTP AUTH PLAIN / LOGIN).
    Password(Revealed),
    /// An OAuth2 bearer token (XOAUTH2 / OAUTHBEARER).
    OAuth2(Arc<TokenSource>),
}

/// An access token and what we know of it.
#[derive(Debug, Clone)]
pub struct Access {
    /// The token.
    pub token: Revealed,
    /// When it was obtained (Unix seconds).
    pub obtained: i64,
    /// When it expires (Unix seconds), when the server said.
    pub expires: Option<i64>,
    /// The scopes granted, when the server said.
    pub scope: Option<String>,
}

impl Access {
    /// Whether the token is still good to send at `now`: it expires later than a margin of a
    /// fifth of its lifetime (at least 1 s, at most 5 min). Tokens of unknown lifetime
    /// (a plain `token-command`) are used once.
    fn usable(&self, now: i64) -> bool {
        match self.expires {
            Some(exp) => {
                let margin = ((exp - self.obtained) / 5).clamp(1, 300);
                now < exp - margin
            }
            None => false,
        }
    }
}

/// Where the tokens come from.
#[derive(Debug)]
enum Method {
    /// An external program prints the token.
    Command {
        argv: Vec<String>,
        timeout: Duration,
    },
    /// A token endpoint.
    Endpoint(Box<Endpoint>),
}

#[derive(Debug)]
struct Endpoint {
    flow: Flow,
    provider: Option<Provider>,
    token_url: String,
    device_url: Option<String>,
    client_id: String,
    client_secret: Option<Revealed>,
    /// The config's `refresh-token` (`None` also when secrets were not read).
    seed: Option<Revealed>,
    /// Where the config's `refresh-token` comes from ([`crate::secret::Secret::origin`]).
    seed_origin: Option<String>,
    scope: String,
    http: reqwest::Client,
    timeout: Duration,
}

/// What `doctor` shows of a token source.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TokenState {
    /// `token-command`, `refresh-token` or `client-credentials` (with the provider).
    pub source: String,
    /// Where tokens come from (the endpoint's host, or the program).
    pub from: String,
    /// When the current access token expires (RFC 3339).
    pub expires: Option<String>,
    /// When the refresh token was last used (RFC 3339).
    pub last_refresh: Option<String>,
    /// The granted scopes.
    pub scope: Option<String>,
    /// Refreshes so far.
    pub refreshes: i64,
    /// Whether a refresh token is stored.
    pub has_refresh_token: bool,
    /// The last error from the token endpoint, if the last attempt failed.
    pub last_error: Option<String>,
}

/// The access tokens of one account.
#[derive(Debug)]
pub struct TokenSource {
    /// The store key: `mailbox:NAME` or `smtp`.
    key: String,
    /// How messages name the account: `mailbox support`, `[smtp]`.
    label: String,
    /// The mailbox `oauth2 login --mailbox` takes, for the relogin hint.
    login_hint: String,
    method: Method,
    store: Option<Arc<TokenStore>>,
    cache: tokio::sync::Mutex<Option<Access>>,
}

fn sha256_hex(s: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, s.as_bytes());
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

impl TokenSource {
    /// A source for the account `key` (`mailbox:support`, `smtp`) from its `oauth2` table
    /// (checked by the config loader, completed by [`provider::complete`]). With `secrets`
    /// they are read now (a missing one is a configuration error); without, the source can
    /// only show its state ([`TokenSource::state`]).
    pub fn new(
        key: &str,
        label: &str,
        login_hint: &str,
        c: &OAuth2Config,
        store: Option<Arc<TokenStore>>,
        secrets: bool,
    ) -> Result<TokenSource> {
        let timeout = Duration::from_secs(c.timeout.unwrap_or(30).max(1));
        let method = if let Some(argv) = &c.token_command {
            Method::Command {
                argv: argv.clone(),
                timeout,
            }
        } else {
            let missing = |k: &str| Error::OAuth2 {
                account: label.to_owned(),
                message: format!("`{k}` is missing from its oauth2 table"),
                relogin: false,
            };
            Method::Endpoint(Box::new(Endpoint {
                flow: c.flow.unwrap_or(Flow::RefreshToken),
                provider: c.provider,
                token_url: c.token_url.clone().ok_or_else(|| missing("token-url"))?,
                device_url: c.device_url.clone(),
                client_id: c.client_id.clone().ok_or_else(|| missing("client-id"))?,
                client_secret: c
                    .client_secret
                    .as_ref()
                    .filter(|_| secrets)
                    .map(|s| s.resolve_within(&format!("{label} oauth2 client-secret"), timeout))
                    .transpose()?,
                seed: c
                    .refresh_token
                    .as_ref()
                    .filter(|_| secrets)
                    .map(|s| s.resolve_within(&format!("{label} oauth2 refresh-token"), timeout))
                    .transpose()?,
                seed_origin: c.refresh_token.as_ref().map(crate::secret::Secret::origin),
                scope: c.scope.clone().unwrap_or_default(),
                http: http::client(c.ca_file.as_deref())?,
                timeout,
            }))
        };
        Ok(TokenSource {
            key: key.to_owned(),
            label: label.to_owned(),
            login_hint: login_hint.to_owned(),
            method,
            store,
            cache: tokio::sync::Mutex::new(None),
        })
    }

    /// What makes two sources one: the same endpoint, client and first refresh token (its
    /// value, or where it comes from when secrets were not read).
    fn grant_identity(&self) -> Option<String> {
        match &self.method {
            Method::Endpoint(ep) if ep.flow == Flow::RefreshToken => {
                let seed = match &ep.seed {
                    Some(seed) => sha256_hex(seed.expose()),
                    None => ep.seed_origin.clone()?,
                };
                Some(format!("{}|{}|{seed}", ep.token_url, ep.client_id))
            }
            _ => None,
        }
    }

    /// How messages name the account.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// An access token: the cached one while it is good, else a new one.
    pub async fn token(&self) -> Result<Revealed> {
        let mut cache = self.cache.lock().await;
        let now = crate::time::now();
        if let Some(a) = cache.as_ref().filter(|a| a.usable(now)) {
            return Ok(a.token.clone());
        }
        let a = self.obtain(None).await?;
        let token = a.token.clone();
        *cache = Some(a);
        Ok(token)
    }

    /// A new access token after the server refused `rejected`: never `rejected` again, even
    /// if it has not expired (it may have been revoked, or lack a scope).
    pub async fn renew(&self, rejected: &Revealed) -> Result<Revealed> {
        let mut cache = self.cache.lock().await;
        let now = crate::time::now();
        if let Some(a) = cache
            .as_ref()
            .filter(|a| a.token != *rejected && a.usable(now))
        {
            return Ok(a.token.clone());
        }
        *cache = None;
        let a = self.obtain(Some(rejected)).await?;
        let token = a.token.clone();
        *cache = Some(a);
        Ok(token)
    }

    async fn obtain(&self, rejected: Option<&Revealed>) -> Result<Access> {
        let r = match &self.method {
            Method::Command { argv, timeout } => self.run_command(argv, *timeout).await,
            Method::Endpoint(ep) => match &self.store {
                Some(store) => self.via_endpoint(ep, store, rejected).await,
                None => self
                    .request(ep, &grant_form(ep, None))
                    .await
                    .map(|g| g.access),
            },
        };
        match &r {
            Ok(a) => tracing::debug!(
                account = %self.label,
                expires_in_s = a.expires.map(|e| e - crate::time::now()),
                scope = a.scope.as_deref(),
                "got an access token"
            ),
            Err(e) => tracing::warn!(account = %self.label, error = %e, "no access token"),
        }
        r
    }

    /// The endpoint path with the store: a stored access token while good, else a grant under
    /// the cross-process lock, its results written before they are used.
    async fn via_endpoint(
        &self,
        ep: &Endpoint,
        store: &Arc<TokenStore>,
        rejected: Option<&Revealed>,
    ) -> Result<Access> {
        let lock = {
            let store = store.clone();
            let wait = ep.timeout + Duration::from_secs(5);
            blocking(move || store.lock(wait)).await?
        };
        let key = self.key.clone();
        let mut row = {
            let store = store.clone();
            blocking(move || store.load(&key))
                .await?
                .unwrap_or_default()
        };
        let now = crate::time::now();
        if let (Some(token), Some(obtained)) = (&row.access_token, row.access_obtained) {
            let a = Access {
                token: Revealed::new(token.clone()),
                obtained,
                expires: row.access_expires,
                scope: row.scope.clone(),
            };
            if a.usable(now) && rejected.is_none_or(|r| *r != a.token) {
                return Ok(a);
            }
        }
        let refresh = match ep.flow {
            Flow::ClientCredentials => None,
            Flow::RefreshToken => Some(self.current_refresh_token(ep, &mut row)?),
        };
        let form = grant_form(ep, refresh.as_ref());
        let result = self.request(ep, &form).await;
        let now = crate::time::now();
        match &result {
            Ok(grant) => {
                record_grant(&mut row, grant, refresh.as_ref());
                if refresh.is_some() {
                    row.last_refresh = Some(now);
                    row.refreshes += 1;
                }
            }
            Err(Error::OAuth2 {
                relogin: true,
                message,
                ..
            }) => {
                row.dead_fp = refresh.as_ref().map(|r| sha256_hex(r.expose()));
                row.access_token = None;
                row.last_error = Some(message.clone());
            }
            Err(e) => row.last_error = Some(e.to_string()),
        }
        // Written before the new token is used: a rotated refresh token must never be lost.
        let key = self.key.clone();
        let store2 = store.clone();
        let saved = blocking(move || store2.save(&key, &row)).await;
        drop(lock);
        if let Err(e) = saved {
            tracing::error!(account = %self.label, error = %e, "could not store the OAuth2 tokens");
            return Err(e);
        }
        result.map(|g| g.access)
    }

    /// The refresh token to use: a new `refresh-token` in the config wins over the stored
    /// (rotated) one; a token the server called dead is never sent again.
    fn current_refresh_token(&self, ep: &Endpoint, row: &mut TokenRow) -> Result<Revealed> {
        if let Some(seed) = &ep.seed {
            let fp = sha256_hex(seed.expose());
            if row.seed_fp.as_deref() != Some(fp.as_str()) {
                row.refresh_token = Some(seed.expose().to_owned());
                row.seed_fp = Some(fp);
                row.dead_fp = None;
                row.access_token = None;
            }
        }
        let Some(token) = row.refresh_token.clone() else {
            return Err(Error::OAuth2 {
                account: self.label.clone(),
                message: format!(
                    "no refresh token yet: run `mailticket oauth2 login --mailbox {}` \
                     (or set oauth2 `refresh-token`)",
                    self.login_hint
                ),
                relogin: true,
            });
        };
        if row.dead_fp.as_deref() == Some(sha256_hex(&token).as_str()) {
            // the error recorded when the server refused it (nothing was sent since)
            return Err(match &row.last_error {
                Some(message) => Error::OAuth2 {
                    account: self.label.clone(),
                    message: message.clone(),
                    relogin: true,
                },
                None => self.dead("invalid_grant"),
            });
        }
        Ok(Revealed::new(token))
    }

    /// The error of a dead refresh token; `why` is the server's `error: description`.
    fn dead(&self, why: &str) -> Error {
        Error::OAuth2 {
            account: self.label.clone(),
            message: format!(
                "refresh token revoked or expired ({why}): run `mailticket oauth2 login --mailbox {}`",
                self.login_hint
            ),
            relogin: true,
        }
    }

    /// One grant request.
    async fn request(&self, ep: &Endpoint, form: &[(&str, &str)]) -> Result<Grant> {
        let obtained = crate::time::now();
        let reply = http::post_form(&ep.http, &ep.token_url, form, ep.timeout).await?;
        self.read_grant(reply, obtained, &ep.token_url)
    }

    fn read_grant(&self, reply: http::Reply, obtained: i64, url: &str) -> Result<Grant> {
        let map = match reply {
            http::Reply::Ok(map) => map,
            http::Reply::Refused {
                status,
                error,
                description,
            } => {
                let detail = if description.is_empty() {
                    error.clone()
                } else {
                    format!("{error}: {description}")
                };
                if error == "invalid_grant" {
                    return Err(self.dead(&detail));
                }
                return Err(Error::OAuth2 {
                    account: self.label.clone(),
                    message: format!(
                        "the token endpoint {} refused (HTTP {status}, {detail})",
                        http::host_of(url)
                    ),
                    relogin: false,
                });
            }
        };
        let Some(token) = http::field(&map, "access_token") else {
            return Err(Error::Network {
                host: http::host_of(url),
                message: "token endpoint answered without an access_token".into(),
            });
        };
        Ok(Grant {
            access: Access {
                token: Revealed::new(token.to_owned()),
                obtained,
                expires: http::seconds(&map, "expires_in").map(|s| obtained + s.max(0)),
                scope: http::field(&map, "scope")
                    .map(str::to_owned)
                    .or_else(|| jwt_scope(token)),
            },
            refresh: http::field(&map, "refresh_token").map(|s| Revealed::new(s.to_owned())),
        })
    }

    async fn run_command(&self, argv: &[String], timeout: Duration) -> Result<Access> {
        let what = format!("{} token-command", self.label);
        let mut cmd = tokio::process::Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let obtained = crate::time::now();
        let out = match tokio::time::timeout(timeout, cmd.output()).await {
            Err(_) => {
                return Err(Error::Secret {
                    what,
                    message: format!("`{}` did not finish in {} s", argv[0], timeout.as_secs()),
                });
            }
            Ok(Err(e)) => {
                return Err(Error::Secret {
                    what,
                    message: format!("cannot run `{}`: {e}", argv[0]),
                });
            }
            Ok(Ok(out)) => out,
        };
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            return Err(Error::Secret {
                what,
                message: format!(
                    "`{}` failed ({}): {}",
                    argv[0],
                    out.status,
                    err.lines().next().unwrap_or("").trim()
                ),
            });
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let text = text.trim();
        // A JSON token response ({"access_token": ..., "expires_in": ...}) is cached as such.
        if text.starts_with('{') {
            let map: serde_json::Map<String, serde_json::Value> = serde_json::from_str(text)
                .map_err(|e| Error::Secret {
                    what: what.clone(),
                    message: format!("printed JSON that does not parse: {e}"),
                })?;
            return self
                .read_grant(http::Reply::Ok(map), obtained, &argv[0])
                .map(|g| g.access);
        }
        let token = text.lines().next().unwrap_or("").trim();
        if token.is_empty() {
            return Err(Error::Secret {
                what,
                message: format!("`{}` printed nothing", argv[0]),
            });
        }
        Ok(Access {
            token: Revealed::new(token.to_owned()),
            obtained,
            expires: None,
            scope: None,
        })
    }

    /// What `doctor` shows: the stored state, without contacting anything.
    pub fn state(&self) -> TokenState {
        let (source, from) = match &self.method {
            Method::Command { argv, .. } => ("token-command".to_owned(), argv[0].clone()),
            Method::Endpoint(ep) => {
                let flow = match ep.flow {
                    Flow::RefreshToken => "refresh-token",
                    Flow::ClientCredentials => "client-credentials",
                };
                let source = match ep.provider {
                    Some(Provider::Microsoft) => format!("{flow} (microsoft)"),
                    Some(Provider::Google) => format!("{flow} (google)"),
                    None => flow.to_owned(),
                };
                (source, http::host_of(&ep.token_url))
            }
        };
        let row = self
            .store
            .as_ref()
            .and_then(|s| s.load(&self.key).ok().flatten())
            .unwrap_or_default();
        let time = |t: Option<i64>| t.map(crate::time::rfc3339);
        TokenState {
            source,
            from,
            expires: time(row.access_expires),
            last_refresh: time(row.last_refresh),
            scope: row.scope,
            refreshes: row.refreshes,
            has_refresh_token: row.refresh_token.is_some()
                || matches!(&self.method, Method::Endpoint(ep) if ep.seed_origin.is_some()),
            last_error: row.last_error,
        }
    }
}

/// The scopes or roles a JWT access token carries (`scp`, `roles`, `scope`), read without
/// checking its signature: only to show what was granted (Microsoft's client-credentials
/// replies name no scope, and a missing `IMAP.AccessAsApp` role is the usual fault).
/// Opaque tokens (Google's) give `None`.
fn jwt_scope(token: &str) -> Option<String> {
    use base64::Engine;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&bytes).ok()?;
    let mut names: Vec<String> = Vec::new();
    for k in ["scp", "roles", "scope"] {
        match claims.get(k) {
            Some(serde_json::Value::String(s)) => {
                names.extend(
                    s.split([' ', ','])
                        .filter(|x| !x.is_empty())
                        .map(str::to_owned),
                );
            }
            Some(serde_json::Value::Array(a)) => {
                names.extend(a.iter().filter_map(|v| v.as_str()).map(str::to_owned));
            }
            _ => {}
        }
    }
    let mut seen = std::collections::HashSet::new();
    names.retain(|n| seen.insert(n.clone()));
    (!names.is_empty()).then(|| names.join(" "))
}

/// The form of a token request.
fn grant_form<'a>(ep: &'a Endpoint, refresh: Option<&'a Revealed>) -> Vec<(&'a str, &'a str)> {
    let mut form = vec![("client_id", ep.client_id.as_str())];
    if let Some(secret) = &ep.client_secret {
        form.push(("client_secret", secret.expose()));
    }
    match (ep.flow, refresh) {
        (Flow::RefreshToken, Some(r)) => {
            form.push(("grant_type", "refresh_token"));
            form.push(("refresh_token", r.expose()));
        }
        _ => form.push(("grant_type", "client_credentials")),
    }
    form.push(("scope", ep.scope.as_str()));
    form
}

/// Writes a successful grant into `row`: the access token, and the refresh token the server
/// returned (or `kept`, the one presented, when it rotated none).
fn record_grant(row: &mut TokenRow, grant: &Grant, kept: Option<&Revealed>) {
    if let Some(r) = grant.refresh.as_ref().or(kept) {
        row.refresh_token = Some(r.expose().to_owned());
    }
    row.access_token = Some(grant.access.token.expose().to_owned());
    row.access_obtained = Some(grant.access.obtained);
    row.access_expires = grant.access.expires;
    if grant.access.scope.is_some() {
        row.scope.clone_from(&grant.access.scope);
    }
    row.last_error = None;
}

/// A token response.
struct Grant {
    access: Access,
    refresh: Option<Revealed>,
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Internal(format!("token store task: {e}")))?
}

/// The token sources of a run, one per account; `[smtp]` shares the source of the mailbox
/// with its username when it has no `oauth2` of its own.
#[derive(Debug, Default)]
pub struct Tokens {
    sources: HashMap<String, Arc<TokenSource>>,
}

impl Tokens {
    /// Builds the sources the mailboxes in `chosen` (and `[smtp]` when `smtp`) need; opens
    /// the token table of the store at `db` when an endpoint flow is configured. Their
    /// secrets are read now.
    pub fn new(
        config: &Config,
        db: &Location,
        chosen: &[&MailboxConfig],
        smtp: bool,
    ) -> Result<Tokens> {
        Tokens::build(config, db, chosen, smtp, true)
    }

    /// Every account's source, secrets unread: they can show their state and nothing else
    /// (`oauth2 status` contacts nothing, so it needs no secret).
    pub fn offline(config: &Config, db: &Location) -> Result<Tokens> {
        let all: Vec<&MailboxConfig> = config.mailboxes.iter().collect();
        Tokens::build(config, db, &all, true, false)
    }

    fn build(
        config: &Config,
        db: &Location,
        chosen: &[&MailboxConfig],
        smtp: bool,
        secrets: bool,
    ) -> Result<Tokens> {
        let mut wanted: Vec<(String, String, String, &OAuth2Config)> = Vec::new();
        let mut mailboxes: Vec<&MailboxConfig> = chosen.to_vec();
        if smtp && let Some(s) = &config.smtp {
            if let Some(o) = &s.oauth2 {
                let hint = config
                    .smtp_token_mailbox()
                    .map_or("smtp", |m| m.name.as_str());
                wanted.push(("smtp".into(), "[smtp]".into(), hint.to_owned(), o));
            } else if let Some(mb) = config.smtp_token_mailbox() {
                mailboxes.push(mb);
            }
        }
        // Each [mailbox.smtp] with credentials of its own: its oauth2 table, or the token of
        // the mailbox with its username.
        for mb in config.mailboxes.iter().filter(|_| smtp) {
            let Some(own) = own_credentials(mb) else {
                continue;
            };
            if let (Some(o), true) = (&own.oauth2, own.auth.is_some_and(AuthMech::is_oauth2)) {
                let label = format!("mailbox {} smtp", mb.name);
                wanted.push((format!("smtp:{}", mb.name), label, mb.name.clone(), o));
            } else if let Some(shared) = config.token_mailbox_of(own) {
                mailboxes.push(shared);
            }
        }
        for mb in mailboxes {
            if let Some(o) = &mb.oauth2
                && mb.uses_oauth2()
            {
                let key = format!("mailbox:{}", mb.name);
                if !wanted.iter().any(|(k, ..)| *k == key) {
                    wanted.push((key, format!("mailbox {}", mb.name), mb.name.clone(), o));
                }
            }
        }
        let needs_store = wanted.iter().any(|(.., o)| o.token_command.is_none());
        let store = if needs_store {
            Some(Arc::new(TokenStore::open(db)?))
        } else {
            None
        };
        let mut sources = HashMap::new();
        let mut by_grant: HashMap<String, Arc<TokenSource>> = HashMap::new();
        for (key, label, hint, o) in wanted {
            let src = TokenSource::new(&key, &label, &hint, o, store.clone(), secrets)?;
            // Two accounts holding the same rotating refresh token would each spend it and
            // kill the other's: they share one source (and one store row).
            let src = match src.grant_identity() {
                Some(id) => by_grant.entry(id).or_insert_with(|| Arc::new(src)).clone(),
                None => Arc::new(src),
            };
            sources.insert(key, src);
        }
        Ok(Tokens { sources })
    }

    /// The credentials of `mb`: its password, or its token source.
    pub fn mailbox(&self, mb: &MailboxConfig) -> Result<Credentials> {
        if mb.uses_oauth2() {
            return self
                .sources
                .get(&format!("mailbox:{}", mb.name))
                .cloned()
                .map(Credentials::OAuth2)
                .ok_or_else(|| Error::Internal(format!("mailbox {}: no token source", mb.name)));
        }
        mailbox_password(mb).map(Credentials::Password)
    }

    /// The credentials of `[smtp]`, `None` without AUTH.
    pub fn smtp(&self, config: &Config) -> Result<Option<Credentials>> {
        let Some(s) = &config.smtp else {
            return Ok(None);
        };
        self.smtp_credentials(config, s, "smtp", "[smtp]")
    }

    /// The credentials `mb`'s own SMTP server (`[mailbox.smtp]`) logs in with: its own, or
    /// `[smtp]`'s when it gives none.
    pub fn mailbox_smtp(&self, config: &Config, mb: &MailboxConfig) -> Result<Option<Credentials>> {
        match own_credentials(mb) {
            Some(own) => {
                let what = format!("mailbox {} smtp", mb.name);
                self.smtp_credentials(config, own, &format!("smtp:{}", mb.name), &what)
            }
            None => self.smtp(config),
        }
    }

    /// The credentials of the SMTP settings `s` (`what` names them; `key` is the account of
    /// their own `oauth2` table): a token source, a password, or `None` without AUTH.
    fn smtp_credentials(
        &self,
        config: &Config,
        s: &SmtpConfig,
        key: &str,
        what: &str,
    ) -> Result<Option<Credentials>> {
        if s.uses_oauth2() {
            let key = if s.oauth2.is_some() {
                key.to_owned()
            } else {
                config
                    .token_mailbox_of(s)
                    .map(|m| format!("mailbox:{}", m.name))
                    .unwrap_or_default()
            };
            return self
                .sources
                .get(&key)
                .cloned()
                .map(|s| Some(Credentials::OAuth2(s)))
                .ok_or_else(|| Error::Internal(format!("{what}: no token source")));
        }
        s.password
            .as_ref()
            .map(|p| {
                p.resolve_within(&format!("{what} password"), s.timeout())
                    .map(Credentials::Password)
            })
            .transpose()
    }

    /// The source for `mailbox` (`oauth2 login`, `doctor`).
    pub fn source_of(&self, mailbox: &str) -> Option<Arc<TokenSource>> {
        self.sources.get(&format!("mailbox:{mailbox}")).cloned()
    }

    /// The source of `mailbox`'s own SMTP `oauth2` table (`[mailbox.smtp]`), if it has one.
    pub fn smtp_source_of(&self, mailbox: &str) -> Option<Arc<TokenSource>> {
        self.sources.get(&format!("smtp:{mailbox}")).cloned()
    }
}

/// The SMTP settings of `mb` when its `[mailbox.smtp]` gives credentials of its own.
fn own_credentials(mb: &MailboxConfig) -> Option<&SmtpConfig> {
    mb.smtp
        .as_ref()
        .filter(|o| o.sets_credentials())
        .and(mb.own_smtp.as_ref())
}

/// Reads a mailbox's password from wherever the config says it is. A failure is a
/// configuration error.
pub fn mailbox_password(mb: &MailboxConfig) -> Result<Revealed> {
    let what = format!("mailbox {} password", mb.name);
    match &mb.password {
        Some(secret) => secret.resolve_within(&what, mb.timeout()),
        None => Err(Error::Secret {
            what,
            message: "not configured".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accounts_with_one_refresh_token_share_one_source() {
        let dir = std::env::temp_dir().join(format!("mt-share-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let table = "oauth2 = { token-url = 'http://127.0.0.1:9/t', client-id = 'c', \
                     scope = 's', refresh-token = 'r1' }";
        let text = format!(
            "[[mailbox]]\nname = 'a'\nhost = 'h'\nusername = 'u'\nauth = 'xoauth2'\n{table}\n\
             [[mailbox]]\nname = 'b'\nhost = 'h'\nusername = 'v'\nauth = 'xoauth2'\n{table}\n\
             [[mailbox]]\nname = 'c'\nhost = 'h'\nusername = 'w'\nauth = 'xoauth2'\n{}\n\
             [smtp]\nhost = 'h'\nusername = 'u'\nauth = 'xoauth2'\nfrom = 'x@y.z'\n",
            table.replace("r1", "r2")
        );
        let config = Config::parse(&text, &dir.join("c.toml")).unwrap();
        let all: Vec<&MailboxConfig> = config.mailboxes.iter().collect();
        let tokens = Tokens::new(&config, &Location::File(dir.join("t.db")), &all, true).unwrap();
        let (a, b, c) = (
            tokens.source_of("a").unwrap(),
            tokens.source_of("b").unwrap(),
            tokens.source_of("c").unwrap(),
        );
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &c));
        let Some(Credentials::OAuth2(smtp)) = tokens.smtp(&config).unwrap() else {
            panic!("smtp has no token source");
        };
        assert!(Arc::ptr_eq(&a, &smtp));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn scopes_are_read_from_jwt_claims() {
        use base64::Engine;
        let b64 = |v: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
        let jwt = |claims: &str| format!("{}.{}.sig", b64(r#"{"typ":"JWT"}"#), b64(claims));
        assert_eq!(
            jwt_scope(&jwt(
                r#"{"roles":["IMAP.AccessAsApp","SMTP.SendAsApp"],"scope":"IMAP.AccessAsApp"}"#
            ))
            .as_deref(),
            Some("IMAP.AccessAsApp SMTP.SendAsApp")
        );
        assert_eq!(
            jwt_scope(&jwt(r#"{"scp":"IMAP.AccessAsUser.All SMTP.Send"}"#)).as_deref(),
            Some("IMAP.AccessAsUser.All SMTP.Send")
        );
        assert_eq!(jwt_scope(&jwt(r#"{"sub":"x"}"#)), None);
        assert_eq!(jwt_scope("ya29.opaque-google-token"), None);
    }

    #[test]
    fn tokens_are_renewed_a_fifth_of_their_life_early() {
        let a = |obtained, expires| Access {
            token: Revealed::new("t".into()),
            obtained,
            expires,
            scope: None,
        };
        // one hour: renewed in the last 5 minutes (capped)
        assert!(a(0, Some(3600)).usable(3299));
        assert!(!a(0, Some(3600)).usable(3300));
        // 10 s: the last 2 s
        assert!(a(0, Some(10)).usable(7));
        assert!(!a(0, Some(10)).usable(8));
        // unknown lifetime: used once
        assert!(!a(0, None).usable(0));
    }
}
