//! The TOML configuration: what it may say, its defaults, and its validation.
//!
//! Keys are kebab-case and unknown keys are errors, so a typo is reported with the key, the
//! file and the line instead of being silently ignored. Relative paths inside the file are
//! taken relative to the file's own folder. [`Config::parse`] runs one validator per section.
//! Nothing here touches the network, and nothing here knows the modules that use the
//! config: the acknowledgement templates are compiled by `outbound` (`AckPlan::from_config`)
//! and OAuth2 provider defaults are filled in by `oauth2::provider`, both right after loading.
//! `[[hook]]` borrows two pure facts from `hooks`: the event type names and the form of a
//! `whsec_` key.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::secret::Secret;

mod graph;
pub use graph::{DEFAULT_GRAPH_URL, SmtpTransport, Transport};

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Config {
    /// The file this was read from (empty for the built-in defaults): errors found after
    /// loading, such as a template that does not compile, name it.
    #[serde(skip)]
    pub path: PathBuf,
    /// The SQLite store.
    #[serde(default)]
    pub store: StoreConfig,
    /// The mailboxes to poll, in order.
    #[serde(default, rename = "mailbox")]
    pub mailboxes: Vec<MailboxConfig>,
    /// The SMTP server that sends acknowledgements and replies.
    pub smtp: Option<SmtpConfig>,
    /// Acknowledgements of new requests.
    #[serde(default)]
    pub ack: AckConfig,
    /// How `watch` waits, reconnects and stops.
    #[serde(default)]
    pub watch: WatchConfig,
    /// `[classify]`: machine-mail rules that need a setting.
    #[serde(default)]
    pub classify: ClassifyConfig,
    /// `[threading]`: how replies find their ticket.
    #[serde(default)]
    pub threading: ThreadingConfig,
    /// `[[hook]]`: where ticket events go (webhooks and commands), in order.
    #[serde(default, rename = "hook")]
    pub hooks: Vec<HookConfig>,
}

/// `[[hook]]`: one receiver of ticket events, a webhook (`url`) or a command.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct HookConfig {
    /// Names the hook in deliveries, logs and `hooks --test NAME`.
    pub name: String,
    /// Webhook: POST each event here (Standard Webhooks v1 signatures).
    pub url: Option<String>,
    /// Command hook: run this with each event as JSON on stdin.
    pub command: Option<Vec<String>>,
    /// The `whsec_...` signing secret of a webhook (literal, `{ env }`, `{ file }`, `{ command }`).
    pub secret: Option<Secret>,
    /// Event types this hook takes (default: all).
    #[serde(default)]
    pub events: Vec<String>,
    /// Mailboxes whose events this hook takes (default: all).
    #[serde(default)]
    pub mailboxes: Vec<String>,
    /// An extra trust anchor for the webhook's TLS.
    pub ca_file: Option<PathBuf>,
    /// Allow `http://` to a host other than loopback.
    #[serde(default)]
    pub allow_insecure: bool,
    /// Seconds one attempt may take (`"10s"`, `"1m"`); default 10.
    #[serde(default = "default_hook_timeout", deserialize_with = "duration")]
    pub timeout: u64,
}

fn default_hook_timeout() -> u64 {
    10
}

impl HookConfig {
    /// How errors name the `i`th hook (from 0): `[[hook]] #1 (helpdesk)`.
    pub fn label(&self, i: usize) -> String {
        format!("[[hook]] #{} ({})", i + 1, self.name)
    }

    /// How long one attempt may take.
    pub fn timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.timeout.max(1))
    }
}

/// `[classify]`
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ClassifyConfig {
    /// More than this many messages from one sender within `loop-window` seconds (by their
    /// Date) make a mail loop. 0 turns the rule off.
    #[serde(default = "default_loop_messages")]
    pub loop_messages: u32,
    /// The window of `loop-messages`, in seconds.
    #[serde(default = "default_loop_window")]
    pub loop_window: u64,
    /// Days a bounced address counts as undeliverable (no acknowledgements to it).
    #[serde(default = "default_undeliverable_days")]
    pub undeliverable_days: u32,
}

impl Default for ClassifyConfig {
    fn default() -> Self {
        ClassifyConfig {
            loop_messages: default_loop_messages(),
            loop_window: default_loop_window(),
            undeliverable_days: default_undeliverable_days(),
        }
    }
}

fn default_loop_messages() -> u32 {
    30
}
fn default_loop_window() -> u64 {
    300
}
fn default_undeliverable_days() -> u32 {
    7
}

/// What a human reply to a closed ticket does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnClosed {
    /// Reopen the ticket.
    Reopen,
    /// Open a new ticket.
    NewTicket,
    /// Reopen within this many days of the ticket's last activity, else a new ticket.
    NewTicketAfterDays(u32),
}

/// `[threading]`
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ThreadingConfig {
    /// The subject tag marker: `#` means `[#42]`.
    #[serde(default = "default_tag")]
    pub tag: String,
    /// Trust a subject tag also when the sender's domain (not only the sender or a Cc) takes
    /// part in the ticket.
    #[serde(default)]
    pub trust_tag_domain: bool,
    /// Same normalised subject from the same sender within this many days joins that ticket
    /// (0, the default, turns the rule off).
    #[serde(default)]
    pub subject_days: u32,
    /// A human reply to a closed ticket: `reopen` (default), `new-ticket`, or
    /// `{ new-ticket-after-days = N }`.
    #[serde(default = "default_on_closed")]
    pub on_closed: OnClosed,
    /// Our forwarding addresses (a forwarding rule, a distribution group): mail from them
    /// names its customer in Reply-To, X-Original-From, Resent-From or a forwarded block.
    #[serde(default)]
    pub forwarders: Vec<String>,
}

impl Default for ThreadingConfig {
    fn default() -> Self {
        ThreadingConfig {
            tag: default_tag(),
            trust_tag_domain: false,
            subject_days: 0,
            on_closed: default_on_closed(),
            forwarders: Vec::new(),
        }
    }
}

/// The default subject tag marker (`[threading] tag`): `[#42]`.
pub const DEFAULT_TAG: &str = "#";

fn default_tag() -> String {
    DEFAULT_TAG.to_owned()
}
fn default_on_closed() -> OnClosed {
    OnClosed::Reopen
}

/// `[watch]`: timings of `mailticket watch`, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct WatchConfig {
    /// Use IMAP IDLE when the server offers it (else poll).
    pub idle: bool,
    /// IDLE is ended and re-issued this often (servers drop it after 29 minutes).
    pub idle_interval: u64,
    /// Without IDLE, the folder is checked this often.
    pub poll_interval: u64,
    /// The first reconnect waits up to this long; each failure doubles it.
    pub backoff_min: u64,
    /// Reconnect waits never exceed this; a refused login waits this long every time.
    pub backoff_max: u64,
    /// After SIGINT/SIGTERM, sessions get this long to finish and log out.
    pub shutdown_timeout: u64,
    /// A `debug` heartbeat line is logged this often.
    pub heartbeat: u64,
}

impl Default for WatchConfig {
    fn default() -> Self {
        WatchConfig {
            idle: true,
            idle_interval: 600,
            poll_interval: 60,
            backoff_min: 1,
            backoff_max: 300,
            shutdown_timeout: 10,
            heartbeat: 300,
        }
    }
}

impl WatchConfig {
    fn secs(s: u64) -> std::time::Duration {
        std::time::Duration::from_secs(s.max(1))
    }
    /// [`WatchConfig::idle_interval`] as a duration (at least 1 s).
    pub fn idle_interval(&self) -> std::time::Duration {
        Self::secs(self.idle_interval)
    }
    /// [`WatchConfig::poll_interval`] as a duration (at least 1 s).
    pub fn poll_interval(&self) -> std::time::Duration {
        Self::secs(self.poll_interval)
    }
    /// [`WatchConfig::backoff_min`] as a duration (at least 1 s).
    pub fn backoff_min(&self) -> std::time::Duration {
        Self::secs(self.backoff_min)
    }
    /// [`WatchConfig::backoff_max`] as a duration (at least `backoff-min`).
    pub fn backoff_max(&self) -> std::time::Duration {
        Self::secs(self.backoff_max.max(self.backoff_min))
    }
    /// [`WatchConfig::shutdown_timeout`] as a duration (at least 1 s).
    pub fn shutdown_timeout(&self) -> std::time::Duration {
        Self::secs(self.shutdown_timeout)
    }
    /// [`WatchConfig::heartbeat`] as a duration (at least 1 s).
    pub fn heartbeat(&self) -> std::time::Duration {
        Self::secs(self.heartbeat)
    }
}

/// `[smtp]`: the customer's own SMTP server.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct SmtpConfig {
    /// `smtp` (default) or `graph`: send with Microsoft Graph `sendMail` instead.
    #[serde(default)]
    pub transport: SmtpTransport,
    /// Graph: the API root (default `https://graph.microsoft.com/v1.0`).
    pub graph_url: Option<String>,
    /// The server's host name (checked against its certificate); not for Graph.
    #[serde(default)]
    pub host: String,
    /// Defaults to 465 for implicit TLS, 587 otherwise.
    pub port: Option<u16>,
    /// `starttls` (default), `implicit` or `none`.
    #[serde(default = "default_smtp_tls")]
    pub tls: TlsMode,
    /// An extra PEM trust anchor.
    pub ca_file: Option<PathBuf>,
    /// Allows `tls = "none"`.
    #[serde(default)]
    pub allow_insecure: bool,
    /// The login name; no AUTH when absent.
    pub username: Option<String>,
    /// The password.
    pub password: Option<Secret>,
    /// `login` (default: PLAIN or LOGIN with the password), `xoauth2` or `oauthbearer`.
    pub auth: Option<AuthMech>,
    /// Where the bearer token comes from; when absent with an OAuth2 `auth`, the token of the
    /// mailbox with the same `username` is used.
    pub oauth2: Option<OAuth2Config>,
    /// The From of everything we send, e.g. `Support <support@example.com>`.
    pub from: String,
    /// Seconds one whole SMTP conversation may take (default 60).
    #[serde(default = "default_timeout")]
    pub timeout: u64,
}

impl SmtpConfig {
    /// The port, from the config or the TLS mode's default.
    pub fn port(&self) -> u16 {
        self.port.unwrap_or(match self.tls {
            TlsMode::Implicit => 465,
            TlsMode::Starttls | TlsMode::None => 587,
        })
    }

    /// The per-conversation timeout.
    pub fn timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.timeout.max(1))
    }

    /// Whether sending takes an OAuth2 token (XOAUTH2, OAUTHBEARER, or Graph).
    pub fn uses_oauth2(&self) -> bool {
        self.auth.is_some_and(AuthMech::is_oauth2) || self.transport == SmtpTransport::Graph
    }
}

fn default_smtp_tls() -> TlsMode {
    TlsMode::Starttls
}

/// `[ack]`: the acknowledgement of a new request.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct AckConfig {
    /// Send acknowledgements at all.
    #[serde(default)]
    pub enabled: bool,
    /// Subject template.
    #[serde(default = "default_ack_subject")]
    pub subject: String,
    /// Plain-text body template.
    pub body: Option<String>,
    /// Plain-text body template from a file (instead of `body`).
    pub body_file: Option<PathBuf>,
    /// Optional HTML body template: the mail becomes multipart/alternative.
    pub html_body: Option<String>,
    /// `{{ mailbox.signature }}`, the default body's sign-off (default: the display name of
    /// the mailbox's `from`, else its address).
    pub signature: Option<String>,
    /// At most this many acknowledgements per sender per hour.
    #[serde(default = "default_per_hour")]
    pub per_sender_per_hour: u32,
    /// At most this many acknowledgements per sender per day.
    #[serde(default = "default_per_day")]
    pub per_sender_per_day: u32,
    /// No acknowledgement for mail older than this (`"24h"`, `"90m"`, `"2d"`, or seconds).
    #[serde(default = "default_max_age", deserialize_with = "duration")]
    pub max_age: u64,
}

impl Default for AckConfig {
    fn default() -> Self {
        AckConfig {
            enabled: false,
            subject: default_ack_subject(),
            body: None,
            body_file: None,
            html_body: None,
            signature: None,
            per_sender_per_hour: default_per_hour(),
            per_sender_per_day: default_per_day(),
            max_age: default_max_age(),
        }
    }
}

fn default_ack_subject() -> String {
    "{{ ticket.tag }} {{ ticket.subject }}".to_owned()
}
fn default_per_hour() -> u32 {
    3
}
fn default_per_day() -> u32 {
    10
}
fn default_max_age() -> u64 {
    24 * 3600
}

/// A duration in seconds from `90`, `"90s"`, `"15m"`, `"24h"` or `"2d"`.
fn duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Secs(u64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Secs(n) => Ok(n),
        Raw::Text(t) => parse_duration(&t).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "{t:?} is not a duration (write e.g. \"90s\", \"15m\", \"24h\" or \"2d\")"
            ))
        }),
    }
}

/// Parses `90s`, `15m`, `24h`, `2d` (or a bare number of seconds).
pub fn parse_duration(t: &str) -> Option<u64> {
    let t = t.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let n: u64 = t.get(..split)?.parse().ok()?;
    let unit = match t.get(split..)?.trim() {
        "" | "s" => 1,
        "m" | "min" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return None,
    };
    n.checked_mul(unit)
}

/// The acknowledgement body used when the config gives none.
pub const DEFAULT_ACK_BODY: &str = "\
Hello {{ customer.name or customer.email }},

thank you for your message. We have opened ticket {{ ticket.tag }} for it and will get back to you as soon as we can.

Please keep {{ ticket.tag }} in the subject when you write to us about this request.

{{ mailbox.signature }}
";

/// `[store]`
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct StoreConfig {
    /// The database file (SQLite, the embedded default).
    #[serde(default = "default_store_path")]
    pub path: PathBuf,
    /// A PostgreSQL database shared by many workers (`postgres://user@host:port/db`);
    /// `path` is then not used.
    pub url: Option<String>,
    /// The PostgreSQL password (a secret, like every other).
    pub password: Option<Secret>,
    /// CA certificates (PEM) that sign the PostgreSQL server's certificate, beside the
    /// system's.
    pub ca_file: Option<PathBuf>,
    /// TLS to PostgreSQL: `verify-full` (default: encrypted, the certificate checked against
    /// the host name), `require` (encrypted, the certificate not checked), `disable`.
    #[serde(default)]
    pub tls: PgTls,
    /// Seconds a worker's hold on a mailbox lasts without renewal (PostgreSQL store): a dead
    /// worker's mailboxes are taken over after at most this long.
    #[serde(default = "default_lease")]
    pub lease: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            path: default_store_path(),
            url: None,
            password: None,
            ca_file: None,
            tls: PgTls::default(),
            lease: default_lease(),
        }
    }
}

/// How the connection to PostgreSQL is protected (`[store] tls`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PgTls {
    /// Encrypted, and the server's certificate must be valid for the host.
    #[default]
    VerifyFull,
    /// Encrypted; the certificate is not checked (a private network you trust).
    Require,
    /// Not encrypted (a local socket or loopback).
    Disable,
}

/// `[store]`: a PostgreSQL URL that is one, and a lease a worker can renew in time.
fn validate_store(store: &StoreConfig) -> Check {
    if let Some(url) = &store.url
        && !(url.starts_with("postgres://") || url.starts_with("postgresql://"))
    {
        return Err(format!(
            "[store] url: {url:?} is not a PostgreSQL URL (postgres://user@host:port/database)"
        ));
    }
    if !(3..=600).contains(&store.lease) {
        return Err(format!(
            "[store] lease = {}: between 3 and 600 seconds (a worker renews every quarter \
             of it; a dead worker's mailboxes wait that long)",
            store.lease
        ));
    }
    Ok(())
}

fn default_lease() -> u64 {
    10
}

fn default_store_path() -> PathBuf {
    PathBuf::from("mailticket.db")
}

/// How a connection is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TlsMode {
    /// TLS from the first byte (IMAP 993, SMTP 465).
    Implicit,
    /// A plain connection upgraded with STARTTLS; failure to upgrade is an error.
    Starttls,
    /// No encryption at all; needs `allow-insecure = true`.
    None,
}

impl std::fmt::Display for TlsMode {
    /// The word the config uses.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TlsMode::Implicit => "implicit",
            TlsMode::Starttls => "starttls",
            TlsMode::None => "none",
        })
    }
}

/// How we log in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuthMech {
    /// IMAP `LOGIN` (SMTP: AUTH PLAIN or LOGIN, whichever the server offers).
    Login,
    /// SASL `PLAIN`.
    Plain,
    /// SASL `XOAUTH2` with an OAuth2 bearer token (Outlook 365, Gmail).
    Xoauth2,
    /// SASL `OAUTHBEARER` (RFC 7628) with an OAuth2 bearer token.
    Oauthbearer,
}

impl AuthMech {
    /// Whether this mechanism sends an OAuth2 token instead of a password.
    pub fn is_oauth2(self) -> bool {
        matches!(self, AuthMech::Xoauth2 | AuthMech::Oauthbearer)
    }
}

/// The well-known token endpoints and scopes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Provider {
    /// Microsoft Entra ID (Outlook 365, Exchange Online); needs `tenant`.
    Microsoft,
    /// Google (Gmail, Workspace).
    Google,
}

/// How an access token is obtained from the token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Flow {
    /// A user's (delegated) refresh token, rotated as the server says.
    RefreshToken,
    /// The app-only flow: the app's own id and secret, no user.
    ClientCredentials,
}

/// `oauth2 = { ... }` of a mailbox or of `[smtp]`: where the bearer token comes from.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct OAuth2Config {
    /// Fills in the token URL and scopes of a well-known provider.
    pub provider: Option<Provider>,
    /// The Microsoft tenant (directory id or domain) for `provider = "microsoft"`.
    pub tenant: Option<String>,
    /// `refresh-token` (default) or `client-credentials`.
    pub flow: Option<Flow>,
    /// The token endpoint.
    pub token_url: Option<String>,
    /// The device authorization endpoint, for `mailticket oauth2 login`.
    pub device_url: Option<String>,
    /// The app's (client's) id.
    pub client_id: Option<String>,
    /// The app's secret; needed by `client-credentials`, optional otherwise.
    pub client_secret: Option<Secret>,
    /// The first refresh token; later ones (rotated by the server) live in the store.
    pub refresh_token: Option<Secret>,
    /// The scopes to ask for, space-separated.
    pub scope: Option<String>,
    /// A program that prints an access token (or a JSON token response) on stdout.
    pub token_command: Option<Vec<String>>,
    /// An extra PEM trust anchor for the token endpoint.
    pub ca_file: Option<PathBuf>,
    /// Seconds one token request may take (default 30).
    pub timeout: Option<u64>,
}

/// What happens to a message on the server once its ticket is committed.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum After {
    /// Set `\Seen`.
    Seen,
    /// Set `\Deleted` and expunge it.
    Delete,
    /// Move it to this folder.
    Move(String),
}

/// One `[[mailbox]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct MailboxConfig {
    /// A short name, unique among the mailboxes; used by `--mailbox` and in the store.
    pub name: String,
    /// `imap` (default) or `graph` (Microsoft Graph: delta query, raw MIME per message).
    #[serde(default)]
    pub transport: Transport,
    /// Graph: the API root (default `https://graph.microsoft.com/v1.0`).
    pub graph_url: Option<String>,
    /// Graph: how often `watch` runs the delta query, in seconds (default 5).
    #[serde(
        default = "graph::default_poll_interval",
        deserialize_with = "duration"
    )]
    pub poll_interval: u64,
    /// The IMAP server's host name (checked against its certificate); not for Graph.
    #[serde(default)]
    pub host: String,
    /// Defaults to 993 for implicit TLS, 143 otherwise.
    pub port: Option<u16>,
    /// `implicit` (default), `starttls` or `none`.
    #[serde(default = "default_tls")]
    pub tls: TlsMode,
    /// An extra PEM trust anchor, beside the system's and the bundled web roots.
    pub ca_file: Option<PathBuf>,
    /// Allows `tls = "none"` (plaintext passwords on the wire).
    #[serde(default)]
    pub allow_insecure: bool,
    /// The login name.
    pub username: String,
    /// The password.
    pub password: Option<Secret>,
    /// `login` (default), `plain`, `xoauth2` or `oauthbearer`.
    #[serde(default = "default_auth")]
    pub auth: AuthMech,
    /// Where the bearer token comes from, for `xoauth2` / `oauthbearer`.
    pub oauth2: Option<OAuth2Config>,
    /// The folder to read, `INBOX` by default.
    #[serde(default = "default_folder")]
    pub folder: String,
    /// The post-action: `seen` (default), `delete` or `{ move = "Folder" }`.
    #[serde(default = "default_after")]
    pub after: After,
    /// Our own addresses on this mailbox: mail from them is never a customer's.
    #[serde(default)]
    pub addresses: Vec<String>,
    /// Seconds any one network operation may take (default 60).
    #[serde(default = "default_timeout")]
    pub timeout: u64,
    /// A message larger than this (by the server's RFC822.SIZE) is not fetched: its header
    /// goes to the quarantine and the run goes on (default 50 MB).
    #[serde(default = "default_max_message_size", deserialize_with = "size")]
    pub max_message_size: u64,
    /// The From of acknowledgements and replies on this mailbox's tickets (default: `[smtp]`'s).
    pub from: Option<String>,
    /// `[mailbox.smtp]`: SMTP keys that override `[smtp]`'s for this mailbox's mail.
    pub smtp: Option<SmtpOverride>,
    /// `[mailbox.ack]`: acknowledgement texts that override `[ack]`'s for this mailbox.
    pub ack: Option<AckText>,
    /// `[smtp]` with `[mailbox.smtp]` merged over it, key by key (filled in by the loader).
    #[serde(skip)]
    pub own_smtp: Option<SmtpConfig>,
}

/// `[mailbox.smtp]`: any `[smtp]` key but `from` (the mailbox's own `from` is beside it).
/// Merged key by key over `[smtp]`; the credentials (`username`, `password`, `auth`,
/// `oauth2`) go together: when any of them is given, none is taken from `[smtp]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct SmtpOverride {
    /// See [`SmtpConfig::host`].
    pub host: Option<String>,
    /// See [`SmtpConfig::port`].
    pub port: Option<u16>,
    /// See [`SmtpConfig::tls`].
    pub tls: Option<TlsMode>,
    /// See [`SmtpConfig::ca_file`].
    pub ca_file: Option<PathBuf>,
    /// See [`SmtpConfig::allow_insecure`].
    pub allow_insecure: Option<bool>,
    /// See [`SmtpConfig::username`].
    pub username: Option<String>,
    /// See [`SmtpConfig::password`].
    pub password: Option<Secret>,
    /// See [`SmtpConfig::auth`].
    pub auth: Option<AuthMech>,
    /// See [`SmtpConfig::oauth2`].
    pub oauth2: Option<OAuth2Config>,
    /// See [`SmtpConfig::timeout`].
    pub timeout: Option<u64>,
}

impl SmtpOverride {
    /// Whether it gives its own credentials (and so takes none from `[smtp]`).
    pub fn sets_credentials(&self) -> bool {
        self.username.is_some()
            || self.password.is_some()
            || self.auth.is_some()
            || self.oauth2.is_some()
    }

    /// `base` with these keys over it; `from` is the mailbox's.
    fn merged(&self, base: &SmtpConfig, from: &str) -> SmtpConfig {
        fn creds<T: Clone>(own: bool, mine: &Option<T>, theirs: &Option<T>) -> Option<T> {
            if own { mine.clone() } else { theirs.clone() }
        }
        let own = self.sets_credentials();
        SmtpConfig {
            transport: base.transport,
            graph_url: base.graph_url.clone(),
            host: self.host.clone().unwrap_or_else(|| base.host.clone()),
            port: self.port.or(base.port),
            tls: self.tls.unwrap_or(base.tls),
            ca_file: self.ca_file.clone().or_else(|| base.ca_file.clone()),
            allow_insecure: self.allow_insecure.unwrap_or(base.allow_insecure),
            username: creds(own, &self.username, &base.username),
            password: creds(own, &self.password, &base.password),
            auth: creds(own, &self.auth, &base.auth),
            oauth2: creds(own, &self.oauth2, &base.oauth2),
            from: from.to_owned(),
            timeout: self.timeout.unwrap_or(base.timeout),
        }
    }
}

/// `[mailbox.ack]`: acknowledgement texts of one mailbox, each over `[ack]`'s.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct AckText {
    /// See [`AckConfig::subject`].
    pub subject: Option<String>,
    /// See [`AckConfig::body`].
    pub body: Option<String>,
    /// See [`AckConfig::body_file`].
    pub body_file: Option<PathBuf>,
    /// See [`AckConfig::html_body`].
    pub html_body: Option<String>,
    /// See [`AckConfig::signature`].
    pub signature: Option<String>,
}

fn default_max_message_size() -> u64 {
    50_000_000
}

/// The largest `max-message-size`: what fits the IMAP reader's buffer with room to spare.
pub const MAX_MESSAGE_SIZE_LIMIT: u64 = 256 << 20;

fn size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Bytes(u64),
        Text(String),
    }
    let n = match Raw::deserialize(d)? {
        Raw::Bytes(n) => n,
        Raw::Text(t) => parse_size(&t).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "{t:?} is not a size (write e.g. \"50 MB\", \"512 KiB\" or a number of bytes)"
            ))
        })?,
    };
    if !(1024..=MAX_MESSAGE_SIZE_LIMIT).contains(&n) {
        return Err(serde::de::Error::custom(format!(
            "{n} bytes is out of range (1 KiB to 256 MiB)"
        )));
    }
    Ok(n)
}

/// Parses `50 MB`, `1.5MB`, `512 KiB`, `2GB` (or a bare number of bytes). KB, MB, GB are
/// powers of 1000; KiB, MiB, GiB powers of 1024.
pub fn parse_size(t: &str) -> Option<u64> {
    let t = t.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let n: f64 = t.get(..split)?.parse().ok()?;
    let unit: u64 = match t.get(split..)?.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "m" | "mb" => 1_000_000,
        "g" | "gb" => 1_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        _ => return None,
    };
    let bytes = (n * unit as f64).round();
    // Whole bytes only, and nothing that does not fit.
    (0.0..1e18).contains(&bytes).then_some(bytes as u64)
}

fn default_tls() -> TlsMode {
    TlsMode::Implicit
}
fn default_auth() -> AuthMech {
    AuthMech::Login
}
fn default_folder() -> String {
    "INBOX".to_owned()
}
fn default_after() -> After {
    After::Seen
}
fn default_timeout() -> u64 {
    60
}

impl MailboxConfig {
    /// The port, from the config or the TLS mode's default.
    pub fn port(&self) -> u16 {
        self.port.unwrap_or(match self.tls {
            TlsMode::Implicit => 993,
            TlsMode::Starttls | TlsMode::None => 143,
        })
    }

    /// The per-operation network timeout.
    pub fn timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.timeout.max(1))
    }

    /// How errors name the `i`th mailbox (from 0): `mailbox #1 (support)`.
    pub fn label(&self, i: usize) -> String {
        format!("mailbox #{} ({})", i + 1, self.name)
    }

    /// `[ack]` with this mailbox's `[mailbox.ack]` over it, key by key.
    pub fn ack_config(&self, global: &AckConfig) -> AckConfig {
        let mut ack = global.clone();
        if let Some(own) = &self.ack {
            let text = |mine: &Option<String>, theirs: &mut Option<String>| {
                if mine.is_some() {
                    theirs.clone_from(mine);
                }
            };
            if let Some(subject) = &own.subject {
                ack.subject.clone_from(subject);
            }
            text(&own.body, &mut ack.body);
            text(&own.html_body, &mut ack.html_body);
            text(&own.signature, &mut ack.signature);
        }
        ack
    }

    /// Whether the mailbox logs in with an OAuth2 token (XOAUTH2, OAUTHBEARER, or Graph).
    pub fn uses_oauth2(&self) -> bool {
        self.auth.is_oauth2() || self.transport == Transport::Graph
    }
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Config {
            path: path.to_owned(),
            message: format!("cannot read: {e}"),
        })?;
        Config::parse(&text, path)
    }

    /// Parses and validates config text; `path` names the file in errors and anchors
    /// relative paths. Each section has its own validator; the first problem is returned.
    pub fn parse(text: &str, path: &Path) -> Result<Config> {
        let err = |message: String| Error::Config {
            path: path.to_owned(),
            message,
        };
        let mut config: Config = toml::from_str(text).map_err(|e| err(e.to_string()))?;
        let base = path.parent().unwrap_or(Path::new(""));
        config.path = path.to_owned();
        config.store.path = anchor(base, &config.store.path);
        if let Some(ca) = &config.store.ca_file {
            config.store.ca_file = Some(anchor(base, ca));
        }
        validate_store(&config.store).map_err(err)?;
        if let Some(smtp) = &mut config.smtp {
            if let Some(ca) = &smtp.ca_file {
                smtp.ca_file = Some(anchor(base, ca));
            }
            validate_any_smtp(smtp, "[smtp]", base).map_err(err)?;
        }
        validate_ack(&mut config.ack, config.smtp.is_some(), base).map_err(err)?;
        validate_mailboxes(&mut config.mailboxes, base).map_err(err)?;
        config.validate_smtp_token().map_err(err)?;
        config.validate_identities(base).map_err(err)?;
        validate_threading(&mut config.threading).map_err(err)?;
        validate_classify(&config.classify).map_err(err)?;
        let names: Vec<&str> = config.mailboxes.iter().map(|m| m.name.as_str()).collect();
        validate_hooks(&mut config.hooks, &names, base).map_err(err)?;
        Ok(config)
    }

    /// `[smtp]` with an OAuth2 `auth` and no `oauth2` table of its own needs a mailbox whose
    /// token it can share.
    fn validate_smtp_token(&self) -> Check {
        if let Some(smtp) = &self.smtp {
            self.check_token_mailbox(smtp, "[smtp]")?;
        }
        Ok(())
    }

    /// SMTP settings (`at` names them) with an OAuth2 `auth` and no `oauth2` table need a
    /// mailbox whose token they can share.
    fn check_token_mailbox(&self, smtp: &SmtpConfig, at: &str) -> Check {
        if smtp.uses_oauth2() && smtp.oauth2.is_none() && self.token_mailbox_of(smtp).is_none() {
            return Err(format!(
                "{at}: an OAuth2 `auth` without `oauth2 = {{ ... }}` shares the token of the \
                 mailbox with the same username, but no OAuth2 mailbox has username {:?}",
                smtp.username.as_deref().unwrap_or("")
            ));
        }
        Ok(())
    }

    /// Each mailbox's identity: its `from`, its `[mailbox.ack]` texts, and its
    /// `[mailbox.smtp]` merged over `[smtp]` (which it needs) into `own_smtp`.
    fn validate_identities(&mut self, base: &Path) -> Check {
        let global = self.smtp.clone();
        for i in 0..self.mailboxes.len() {
            let mb = &mut self.mailboxes[i];
            let at = mb.label(i);
            if let Some(from) = &mb.from
                && from.trim().parse::<lettre::message::Mailbox>().is_err()
            {
                return Err(format!("{at}: `from = {from:?}` is not an address"));
            }
            if let Some(ack) = &mut mb.ack {
                read_body_file(
                    &mut ack.body,
                    &mut ack.body_file,
                    base,
                    &format!("{at}: ack"),
                )?;
            }
            let Some(over) = &mut mb.smtp else { continue };
            let Some(global) = &global else {
                return Err(format!(
                    "{at}: [mailbox.smtp] overrides keys of [smtp], but there is no [smtp]"
                ));
            };
            if let Some(ca) = &over.ca_file {
                over.ca_file = Some(anchor(base, ca));
            }
            let from = mb.from.as_deref().unwrap_or(&global.from);
            let mut merged = over.merged(global, from);
            let at = format!("{at}: smtp");
            if merged.transport == SmtpTransport::Graph {
                graph::validate_smtp(&mut merged, &at, base)?;
            } else {
                if over.sets_credentials() {
                    // Inherited credentials were checked with [smtp].
                    let oauth = merged.auth.is_some_and(AuthMech::is_oauth2);
                    let has_password = merged.password.is_some();
                    check_auth(&at, oauth, &mut merged.oauth2, has_password, base)?;
                }
                validate_smtp(&merged, &at)?;
            }
            mb.own_smtp = Some(merged);
        }
        for (i, mb) in self.mailboxes.iter().enumerate() {
            if let Some(own) = &mb.own_smtp {
                self.check_token_mailbox(own, &format!("{}: smtp", mb.label(i)))?;
            }
        }
        Ok(())
    }

    /// The OAuth2 mailbox whose token `[smtp]` shares: `[smtp]` has an OAuth2 `auth`, no
    /// `oauth2` of its own, and the same username (case-insensitive).
    pub fn smtp_token_mailbox(&self) -> Option<&MailboxConfig> {
        self.token_mailbox_of(self.smtp.as_ref()?)
    }

    /// The OAuth2 mailbox whose token the SMTP settings `smtp` share (see
    /// [`Config::smtp_token_mailbox`]).
    pub fn token_mailbox_of(&self, smtp: &SmtpConfig) -> Option<&MailboxConfig> {
        if !smtp.uses_oauth2() || smtp.oauth2.is_some() {
            return None;
        }
        let user = smtp.username.as_deref()?;
        self.mailboxes.iter().find(|m| {
            m.oauth2.is_some() && m.uses_oauth2() && m.username.eq_ignore_ascii_case(user)
        })
    }

    /// The SMTP settings for mail on `mailbox`'s tickets: its `[mailbox.smtp]` merged over
    /// `[smtp]`, else `[smtp]`. `None` without `[smtp]`.
    pub fn smtp_for(&self, mailbox: &str) -> Option<&SmtpConfig> {
        self.mailbox(mailbox)
            .and_then(|m| m.own_smtp.as_ref())
            .or(self.smtp.as_ref())
    }

    /// The From for mail on `mailbox`'s tickets: its `from`, else `[smtp]`'s.
    pub fn from_for(&self, mailbox: &str) -> Option<&str> {
        self.mailbox(mailbox)
            .and_then(|m| m.from.as_deref())
            .or(self.smtp.as_ref().map(|s| s.from.as_str()))
    }

    /// The mailbox named `name`.
    pub fn mailbox(&self, name: &str) -> Option<&MailboxConfig> {
        self.mailboxes.iter().find(|m| m.name == name)
    }

    /// Every `oauth2` table, `[smtp]`'s first, each with how errors name its owner.
    pub fn oauth2_tables_mut(&mut self) -> impl Iterator<Item = (String, &mut OAuth2Config)> {
        let smtp = self.smtp.as_mut().and_then(|s| s.oauth2.as_mut());
        let smtp = smtp.map(|o| ("[smtp]".to_owned(), o));
        let mailboxes = self.mailboxes.iter_mut().enumerate().flat_map(|(i, mb)| {
            let at = mb.label(i);
            let own = mb.smtp.as_ref().is_some_and(SmtpOverride::sets_credentials);
            let own_smtp = mb.own_smtp.as_mut().filter(|_| own);
            let own_smtp = own_smtp.and_then(|s| s.oauth2.as_mut());
            let own_smtp = own_smtp.map(|o| (format!("{at}: smtp"), o));
            mb.oauth2
                .as_mut()
                .map(|o| (at, o))
                .into_iter()
                .chain(own_smtp)
        });
        smtp.into_iter().chain(mailboxes)
    }

    /// The mailboxes named in `only`, or all when `only` is empty.
    pub fn select_mailboxes(&self, only: &[String]) -> Result<Vec<&MailboxConfig>, String> {
        if only.is_empty() {
            return Ok(self.mailboxes.iter().collect());
        }
        only.iter()
            .map(|n| {
                self.mailboxes.iter().find(|m| m.name == *n).ok_or_else(|| {
                    let known: Vec<&str> = self.mailboxes.iter().map(|m| m.name.as_str()).collect();
                    format!("no mailbox named {n:?} (configured: {})", known.join(", "))
                })
            })
            .collect()
    }

    /// Every address configured as ours, on any mailbox, except our forwarding addresses
    /// (mail from those is a customer's request passed on, not a loop).
    pub fn own_addresses(&self) -> Vec<String> {
        let mut all: Vec<String> = self
            .mailboxes
            .iter()
            .flat_map(|m| m.addresses.iter().cloned())
            .filter(|a| !self.threading.forwarders.contains(a))
            .collect();
        all.sort();
        all.dedup();
        all
    }
}

fn anchor(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() || base.as_os_str().is_empty() {
        p.to_owned()
    } else {
        base.join(p)
    }
}

/// What a validator returns: the problem, naming the section and the key.
type Check = std::result::Result<(), String>;

/// `[smtp]` (`at` names it) sent through SMTP or Graph: its `oauth2` table, then the rest.
fn validate_any_smtp(smtp: &mut SmtpConfig, at: &str, base: &Path) -> Check {
    if smtp.transport == SmtpTransport::Graph {
        return graph::validate_smtp(smtp, at, base);
    }
    let oauth = smtp.auth.is_some_and(AuthMech::is_oauth2);
    let has_password = smtp.password.is_some();
    check_auth(at, oauth, &mut smtp.oauth2, has_password, base)?;
    validate_smtp(smtp, at)
}

/// SMTP settings (`at` names them: `[smtp]`, `mailbox #2 (sales): smtp`): TLS,
/// authentication, the From address. The `oauth2` table was checked by [`check_auth`].
fn validate_smtp(smtp: &SmtpConfig, at: &str) -> Check {
    if smtp.host.trim().is_empty() {
        return Err(format!("{at}: `host` must not be empty"));
    }
    if smtp.tls == TlsMode::None && !smtp.allow_insecure {
        return Err(format!(
            "{at}: `tls = \"none\"` sends the password in clear text; \
             set `allow-insecure = true` to allow it"
        ));
    }
    let oauth = smtp.auth.is_some_and(AuthMech::is_oauth2);
    if oauth && smtp.username.is_none() {
        return Err(format!(
            "{at}: an OAuth2 `auth` needs `username` (the account the token is for)"
        ));
    }
    if !oauth && smtp.username.is_some() != smtp.password.is_some() {
        return Err(format!("{at}: `username` and `password` go together"));
    }
    check_from(smtp, at)
}

/// The `from` of the SMTP settings `at` names is an address.
fn check_from(smtp: &SmtpConfig, at: &str) -> Check {
    if smtp
        .from
        .trim()
        .parse::<lettre::message::Mailbox>()
        .is_err()
    {
        return Err(format!("{at}: `from = {:?}` is not an address", smtp.from));
    }
    Ok(())
}

/// `[ack]`: needs `[smtp]` when enabled; `body-file` is read into `body`. The templates
/// themselves are compiled by `outbound` (`AckPlan::from_config`).
fn validate_ack(ack: &mut AckConfig, has_smtp: bool, base: &Path) -> Check {
    if ack.enabled && !has_smtp {
        return Err("[ack] is enabled but there is no [smtp] to send with".into());
    }
    read_body_file(&mut ack.body, &mut ack.body_file, base, "[ack]")
}

/// A `body-file` (of the table `at` names) read into `body`; both at once is an error.
fn read_body_file(
    body: &mut Option<String>,
    body_file: &mut Option<PathBuf>,
    base: &Path,
    at: &str,
) -> Check {
    if let Some(f) = body_file.take() {
        if body.is_some() {
            return Err(format!("{at}: give `body` or `body-file`, not both"));
        }
        let f = anchor(base, &f);
        let text = std::fs::read_to_string(&f)
            .map_err(|e| format!("{at} body-file {}: {e}", f.display()))?;
        *body = Some(text);
    }
    Ok(())
}

/// Every `[[hook]]`, and that their names are unique.
fn validate_hooks(hooks: &mut [HookConfig], mailboxes: &[&str], base: &Path) -> Check {
    let mut names = std::collections::HashSet::new();
    for (i, h) in hooks.iter_mut().enumerate() {
        if h.name.trim().is_empty() {
            return Err(format!("[[hook]] #{}: `name` must not be empty", i + 1));
        }
        let at = h.label(i);
        if !names.insert(h.name.clone()) {
            return Err(format!("{at}: `name` is used twice"));
        }
        validate_hook(h, &at, mailboxes)?;
        if let Some(ca) = &h.ca_file {
            h.ca_file = Some(anchor(base, ca));
        }
    }
    Ok(())
}

/// One `[[hook]]` (`at` names it): a `url` or a `command`, the secret, the filters.
fn validate_hook(h: &HookConfig, at: &str, mailboxes: &[&str]) -> Check {
    match (&h.url, &h.command) {
        (Some(url), None) => check_hook_url(url, h.allow_insecure, at)?,
        (None, Some(argv)) if argv.first().is_some_and(|p| !p.is_empty()) => {}
        (None, Some(_)) => return Err(format!("{at}: `command` must name a program")),
        _ => return Err(format!("{at}: give `url` or `command`, one of them")),
    }
    match (&h.secret, h.url.is_some()) {
        (None, true) => {
            return Err(format!(
                "{at}: a webhook needs `secret` (a whsec_... key: literal, {{ env }}, {{ file }} or {{ command }})"
            ));
        }
        (Some(Secret::Plain(s)), true) if crate::secret::whsec_key(s).is_none() => {
            return Err(format!(
                "{at}: `secret` is not a whsec_... key (\"whsec_\" and base64)"
            ));
        }
        (Some(_), false) => return Err(format!("{at}: `secret` is for webhooks (`url`)")),
        _ => {}
    }
    if let Some(bad) = h
        .events
        .iter()
        .find(|e| !crate::event_type::TYPES.contains(&e.as_str()))
    {
        return Err(format!(
            "{at}: `events` names {bad:?}, not an event type (known: {})",
            crate::event_type::TYPES.join(", ")
        ));
    }
    if let Some(bad) = h
        .mailboxes
        .iter()
        .find(|m| !mailboxes.contains(&m.as_str()))
    {
        return Err(format!(
            "{at}: `mailboxes` names {bad:?}, not a configured [[mailbox]]"
        ));
    }
    Ok(())
}

/// A webhook URL: `https://`, or `http://` to loopback (elsewhere only with `allow-insecure`).
fn check_hook_url(url: &str, allow_insecure: bool, at: &str) -> Check {
    let u = reqwest::Url::parse(url).map_err(|e| format!("{at}: `url = {url:?}`: {e}"))?;
    let host = u.host_str().unwrap_or("");
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    match u.scheme() {
        "https" => Ok(()),
        "http" if loopback || allow_insecure => Ok(()),
        "http" => Err(format!(
            "{at}: `url = {url:?}` is plain http:// to a host other than loopback: events would \
             travel unencrypted; use https://, or set `allow-insecure = true`"
        )),
        other => Err(format!("{at}: `url` scheme {other:?} is not http or https")),
    }
}

/// Every `[[mailbox]]`, and that their names are unique.
fn validate_mailboxes(mailboxes: &mut [MailboxConfig], base: &Path) -> Check {
    let mut names = std::collections::HashSet::new();
    for (i, mb) in mailboxes.iter_mut().enumerate() {
        if mb.name.trim().is_empty() {
            return Err(format!("mailbox #{}: `name` must not be empty", i + 1));
        }
        let at = mb.label(i);
        if !names.insert(mb.name.clone()) {
            return Err(format!("{at}: `name` is used twice"));
        }
        validate_mailbox(mb, &at, base)?;
    }
    Ok(())
}

/// One `[[mailbox]]` (`at` names it): server, TLS, authentication, post-action; `ca-file`
/// anchored at `base`, `addresses` lowercased.
fn validate_mailbox(mb: &mut MailboxConfig, at: &str, base: &Path) -> Check {
    match mb.transport {
        Transport::Imap => validate_imap_login(mb, at, base)?,
        Transport::Graph => graph::validate_mailbox(mb, at, base)?,
    }
    if let After::Move(folder) = &mb.after
        && (folder.trim().is_empty() || *folder == mb.folder)
    {
        return Err(format!(
            "{at}: `after = {{ move = ... }}` needs a folder other than `folder`"
        ));
    }
    if let Some(ca) = &mb.ca_file {
        mb.ca_file = Some(anchor(base, ca));
    }
    for a in &mut mb.addresses {
        *a = a.trim().to_ascii_lowercase();
    }
    Ok(())
}

/// The IMAP server and login of a mailbox (`at` names it): host, TLS, password or OAuth2.
fn validate_imap_login(mb: &mut MailboxConfig, at: &str, base: &Path) -> Check {
    if mb.host.trim().is_empty() {
        return Err(format!("{at}: `host` must not be empty"));
    }
    if mb.tls == TlsMode::None && !mb.allow_insecure {
        return Err(format!(
            "{at}: `tls = \"none\"` sends the password in clear text; \
             set `allow-insecure = true` to allow it"
        ));
    }
    let oauth = mb.auth.is_oauth2();
    check_auth(at, oauth, &mut mb.oauth2, mb.password.is_some(), base)?;
    if oauth && mb.oauth2.is_none() {
        let mech = if mb.auth == AuthMech::Xoauth2 {
            "xoauth2"
        } else {
            "oauthbearer"
        };
        return Err(format!(
            "{at}: `auth = \"{mech}\"` needs `oauth2 = {{ ... }}` (where the token comes from)"
        ));
    }
    if !oauth && mb.password.is_none() {
        return Err(format!("{at}: `password` is missing"));
    }
    Ok(())
}

/// `[threading]`: the tag marker; `forwarders` lowercased.
fn validate_threading(threading: &mut ThreadingConfig) -> Check {
    for a in &mut threading.forwarders {
        *a = a.trim().to_ascii_lowercase();
    }
    let tag = &threading.tag;
    if tag.is_empty() || tag.contains(['[', ']']) || tag.ends_with(|c: char| c.is_ascii_digit()) {
        return Err(format!(
            "[threading] tag = {tag:?}: needs a non-empty marker without brackets that does \
             not end in a digit (the default \"#\" makes tags like [#42])"
        ));
    }
    Ok(())
}

/// `[classify]`: the loop window.
fn validate_classify(classify: &ClassifyConfig) -> Check {
    if classify.loop_window == 0 {
        return Err("[classify] loop-window must be at least 1 second".into());
    }
    Ok(())
}

/// The auth keys of a mailbox or `[smtp]` (`at` names it): an OAuth2 `auth` goes without
/// `password`, and its `oauth2` table (if any) is checked; `oauth2` needs an OAuth2 `auth`.
fn check_auth(
    at: &str,
    oauth: bool,
    oauth2: &mut Option<OAuth2Config>,
    has_password: bool,
    base: &Path,
) -> Check {
    if !oauth {
        return match oauth2 {
            Some(_) => Err(format!(
                "{at}: `oauth2` needs `auth = \"xoauth2\"` or `auth = \"oauthbearer\"`"
            )),
            None => Ok(()),
        };
    }
    if let Some(o) = oauth2 {
        check_oauth2(o, base).map_err(|m| format!("{at}: oauth2: {m}"))?;
    }
    if has_password {
        return Err(format!(
            "{at}: `password` is not used with an OAuth2 `auth`; remove it"
        ));
    }
    Ok(())
}

/// Checks what an `oauth2` table says itself: `token-command` alone, token endpoints over
/// https, what the flow needs; the flow defaults to `refresh-token`. What its `provider`
/// implies (endpoints, scopes, `tenant`) is filled in and checked by `oauth2::provider`.
fn check_oauth2(o: &mut OAuth2Config, base: &Path) -> Check {
    if let Some(ca) = &o.ca_file {
        o.ca_file = Some(anchor(base, ca));
    }
    if o.timeout == Some(0) {
        return Err("`timeout` must be at least 1 second".into());
    }
    if let Some(cmd) = &o.token_command {
        if cmd.is_empty() || cmd[0].trim().is_empty() {
            return Err("`token-command` needs a program".into());
        }
        let others = [
            ("provider", o.provider.is_some()),
            ("tenant", o.tenant.is_some()),
            ("flow", o.flow.is_some()),
            ("token-url", o.token_url.is_some()),
            ("device-url", o.device_url.is_some()),
            ("client-id", o.client_id.is_some()),
            ("client-secret", o.client_secret.is_some()),
            ("refresh-token", o.refresh_token.is_some()),
            ("scope", o.scope.is_some()),
        ];
        if let Some((key, _)) = others.iter().find(|(_, set)| *set) {
            return Err(format!(
                "`token-command` stands alone: remove `{key}` (the command does the whole job)"
            ));
        }
        return Ok(());
    }
    let flow = *o.flow.get_or_insert(Flow::RefreshToken);
    for (key, url) in [("token-url", &o.token_url), ("device-url", &o.device_url)] {
        if let Some(url) = url {
            check_token_url(url).map_err(|m| format!("`{key} = {url:?}`: {m}"))?;
        }
    }
    match flow {
        Flow::ClientCredentials => {
            if o.client_secret.is_none() {
                return Err("`flow = \"client-credentials\"` needs `client-secret`".into());
            }
            if o.refresh_token.is_some() {
                return Err(
                    "`refresh-token` is not used by `flow = \"client-credentials\"`".into(),
                );
            }
        }
        Flow::RefreshToken => {}
    }
    Ok(())
}

/// A token endpoint must be `https://`, except on the loopback interface.
fn check_token_url(url: &str) -> Check {
    if let Some(rest) = url.strip_prefix("http://") {
        let host = rest.split(['/', '?']).next().unwrap_or("");
        let host = host.rsplit_once(':').map_or(host, |(h, p)| {
            if p.chars().all(|c| c.is_ascii_digit()) {
                h
            } else {
                host
            }
        });
        let loopback = host == "localhost"
            || host == "[::1]"
            || host
                .parse::<std::net::Ipv4Addr>()
                .is_ok_and(|a| a.is_loopback());
        return if loopback {
            Ok(())
        } else {
            Err("tokens must not cross the network unencrypted: use https://".into())
        };
    }
    if url.starts_with("https://") && url.len() > "https://".len() {
        Ok(())
    } else {
        Err("not an https:// URL".into())
    }
}

/// The fully commented sample that `mailticket init` writes (`mailticket.sample.toml` at the
/// crate root, so the sample is real TOML that editors, tests and readers see as such).
pub const SAMPLE: &str = include_str!("../mailticket.sample.toml");

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config> {
        Config::parse(text, Path::new("/etc/mailticket/mailticket.toml"))
    }

    #[test]
    fn hooks_are_validated_naming_the_hook_and_the_key() {
        let ok = parse(
            "[[hook]]\nname = \"a\"\nurl = \"http://127.0.0.1:9/x\"\nsecret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\n\
             timeout = \"3s\"\n[[hook]]\nname = \"b\"\ncommand = [\"/bin/true\"]\nevents = [\"ticket.created\"]\n",
        )
        .unwrap();
        assert_eq!(ok.hooks.len(), 2);
        assert_eq!(ok.hooks[0].timeout().as_secs(), 3);
        let err = |t: &str| parse(t).unwrap_err().to_string();
        let e = err(
            "[[hook]]\nname = \"far\"\nurl = \"http://example.com/x\"\nsecret = { env = \"X\" }\n",
        );
        assert!(
            e.contains("[[hook]] #1 (far)") && e.contains("allow-insecure"),
            "{e}"
        );
        assert!(e.contains("/etc/mailticket/mailticket.toml"), "{e}");
        assert!(
            parse("[[hook]]\nname = \"far\"\nurl = \"http://example.com/x\"\nsecret = { env = \"X\" }\nallow-insecure = true\n")
                .is_ok()
        );
        let e = err("[[hook]]\nname = \"a\"\nurl = \"https://example.com/x\"\n");
        assert!(e.contains("`secret`"), "{e}");
        let e =
            err("[[hook]]\nname = \"a\"\nurl = \"https://example.com/x\"\nsecret = \"hunter2\"\n");
        assert!(e.contains("whsec_") && !e.contains("hunter2"), "{e}");
        let e = err("[[hook]]\nname = \"a\"\ncommand = [\"x\"]\nevents = [\"ticket.eaten\"]\n");
        assert!(e.contains("ticket.eaten"), "{e}");
        let e = err("[[hook]]\nname = \"a\"\ncommand = [\"x\"]\nurl = \"https://e.com\"\n");
        assert!(e.contains("one of them"), "{e}");
        assert!(
            err("[[hook]]\nname = \"a\"\ncommand = [\"x\"]\nretries = 3\n").contains("retries")
        );
    }

    #[test]
    fn sample_parses_with_defaults() {
        let c = parse(SAMPLE).unwrap();
        assert_eq!(c.store.path, Path::new("/etc/mailticket/mailticket.db"));
        let mb = &c.mailboxes[0];
        assert_eq!(mb.port(), 993);
        assert_eq!(mb.after, After::Seen);
        assert_eq!(mb.folder, "INBOX");
        assert_eq!(c.watch, WatchConfig::default());
        let c = parse("[watch]\npoll-interval = 5\n").unwrap();
        assert_eq!(c.watch.poll_interval().as_secs(), 5);
        assert_eq!(c.watch.idle_interval().as_secs(), 600);
        assert!(parse("[watch]\npoll = 5\n").is_err());
    }

    #[test]
    fn a_store_url_must_be_postgresql_and_a_lease_renewable() {
        let e = parse("[store]\nurl = \"mysql://x/y\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("[store] url") && e.contains("not a PostgreSQL URL"),
            "{e}"
        );
        let e = parse("[store]\nurl = \"postgres://x/y\"\nlease = 1\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("[store] lease = 1"), "{e}");
        assert!(parse("[store]\nurl = \"postgresql://x/y\"\nlease = 3\n").is_ok());
    }

    #[test]
    fn the_shared_store_example_parses_as_a_postgresql_store() {
        let c = parse(include_str!("../examples/shared-store.toml")).unwrap();
        assert_eq!(
            c.store.url.as_deref(),
            Some("postgres://mailticket@db.example.net:5432/mailticket")
        );
        assert_eq!(c.store.tls, PgTls::VerifyFull);
        assert_eq!(c.store.lease, 10);
        assert_eq!(c.mailboxes.len(), 2);
    }

    #[test]
    fn the_outlook_example_parses() {
        let c = parse(include_str!("../examples/outlook365-shared.toml")).unwrap();
        assert_eq!(c.mailboxes[0].auth, AuthMech::Xoauth2);
        assert_eq!(c.smtp_token_mailbox().unwrap().name, "support");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("50 MB"), Some(50_000_000));
        assert_eq!(parse_size("1.5MB"), Some(1_500_000));
        assert_eq!(parse_size("512 KiB"), Some(524_288));
        assert_eq!(parse_size("2048"), Some(2048));
        assert_eq!(parse_size("lots"), None);
        assert_eq!(parse_size("5 parsecs"), None);
        let mb = "[[mailbox]]\nname = \"s\"\nhost = \"h\"\nusername = \"u\"\npassword = \"p\"\n";
        let e = parse(&format!("{mb}max-message-size = \"huge\"\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a size"), "{e}");
        let e = parse(&format!("{mb}max-message-size = \"2 GB\"\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("out of range"), "{e}");
        let c = parse(&format!("{mb}max-message-size = \"1 MiB\"\n")).unwrap();
        assert_eq!(c.mailboxes[0].max_message_size, 1 << 20);
        let c = parse(mb).unwrap();
        assert_eq!(c.mailboxes[0].max_message_size, 50_000_000);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90"), Some(90));
        assert_eq!(parse_duration("15m"), Some(900));
        assert_eq!(parse_duration("24h"), Some(86_400));
        assert_eq!(parse_duration("2d"), Some(172_800));
        assert_eq!(parse_duration("2 weeks"), None);
        let e = parse("[ack]\nmax-age = \"soon\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a duration"), "{e}");
    }

    #[test]
    fn ack_needs_smtp_and_valid_templates() {
        let e = parse("[ack]\nenabled = true\n").unwrap_err().to_string();
        assert!(e.contains("[smtp]"), "{e}");
        let smtp = "[smtp]\nhost = 'h'\nfrom = 'a@b.c'\n";
        assert!(parse(&format!("{smtp}[ack]\nenabled = true\n")).is_ok());
        // The templates are checked by `outbound::AckPlan::from_config` (see its tests).
    }

    #[test]
    fn unknown_key_names_key_and_file() {
        let e = parse("[store]\npath = \"x.db\"\npaht = 1\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("paht"), "{e}");
        assert!(e.contains("/etc/mailticket/mailticket.toml"), "{e}");
    }

    #[test]
    fn move_after_and_insecure_rules() {
        let base = "[[mailbox]]\nname='a'\nhost='h'\nusername='u'\npassword='p'\n";
        let c = parse(&format!("{base}after = {{ move = 'Done' }}\n")).unwrap();
        assert_eq!(c.mailboxes[0].after, After::Move("Done".into()));
        let e = parse(&format!("{base}tls = 'none'\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("allow-insecure"), "{e}");
        let c = parse(&format!("{base}tls = 'none'\nallow-insecure = true\n")).unwrap();
        assert_eq!(c.mailboxes[0].port(), 143);
        let e = parse(&format!("{base}{base}")).unwrap_err().to_string();
        assert!(e.contains("twice"), "{e}");
    }

    const TWO: &str = "[smtp]\nhost = 'smtp.example.com'\nport = 2525\nca-file = 'ca.pem'\n\
        username = 'support'\npassword = 'pw'\nfrom = 'Support <support@example.com>'\n\
        [[mailbox]]\nname = 'support'\nhost = 'h'\nusername = 'u'\npassword = 'p'\n\
        [[mailbox]]\nname = 'sales'\nhost = 'h'\nusername = 'u2'\npassword = 'p'\n\
        from = 'Sales <sales@example.com>'\n";

    #[test]
    fn a_mailbox_smtp_table_merges_key_by_key_and_credentials_go_together() {
        let c = parse(&format!("{TWO}[mailbox.smtp]\nport = 587\n")).unwrap();
        let own = c.smtp_for("sales").unwrap();
        assert_eq!((own.host.as_str(), own.port()), ("smtp.example.com", 587));
        assert_eq!(
            own.ca_file.as_deref(),
            Some(Path::new("/etc/mailticket/ca.pem"))
        );
        assert_eq!(own.username.as_deref(), Some("support"));
        assert_eq!(own.from, "Sales <sales@example.com>");
        assert_eq!(c.smtp_for("support").unwrap().port(), 2525);
        assert_eq!(c.smtp_for("nobody").unwrap().port(), 2525);
        assert_eq!(c.from_for("sales"), Some("Sales <sales@example.com>"));
        assert_eq!(c.from_for("support"), Some("Support <support@example.com>"));
        // Credentials of its own: none of [smtp]'s are taken.
        let c = parse(&format!(
            "{TWO}[mailbox.smtp]\nusername = 'sales'\npassword = 'x'\nca-file = 'sales.pem'\n"
        ))
        .unwrap();
        let own = c.smtp_for("sales").unwrap();
        assert_eq!(own.username.as_deref(), Some("sales"));
        assert_eq!(
            own.ca_file.as_deref(),
            Some(Path::new("/etc/mailticket/sales.pem"))
        );
        let e = parse(&format!("{TWO}[mailbox.smtp]\nusername = 'sales'\n"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("mailbox #2 (sales): smtp") && e.contains("go together"),
            "{e}"
        );
    }

    #[test]
    fn a_bad_mailbox_smtp_or_identity_key_names_the_key_and_the_file() {
        let err = |extra: &str| parse(&format!("{TWO}{extra}")).unwrap_err().to_string();
        let e = err("[mailbox.smtp]\nhots = 'x'\n");
        assert!(
            e.contains("hots") && e.contains("/etc/mailticket/mailticket.toml"),
            "{e}"
        );
        let e = err("[mailbox.smtp]\nfrom = 'a@b.c'\n");
        assert!(e.contains("from"), "{e}");
        let e = err("[mailbox.smtp]\ntls = 'none'\n");
        assert!(
            e.contains("mailbox #2 (sales): smtp") && e.contains("allow-insecure"),
            "{e}"
        );
        let e = err("[mailbox.ack]\nsignatur = 'x'\n");
        assert!(e.contains("signatur"), "{e}");
        let e = parse(&TWO.replace("Sales <sales@example.com>", "not an address"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("mailbox #2 (sales)") && e.contains("`from"),
            "{e}"
        );
        let alone = "[[mailbox]]\nname = 'a'\nhost = 'h'\nusername = 'u'\npassword = 'p'\n\
            [mailbox.smtp]\nport = 25\n";
        let e = parse(alone).unwrap_err().to_string();
        assert!(
            e.contains("mailbox #1 (a)") && e.contains("no [smtp]"),
            "{e}"
        );
    }

    #[test]
    fn classify_and_threading_sections() {
        let c = parse(SAMPLE).unwrap();
        assert_eq!(c.threading.on_closed, OnClosed::Reopen);
        assert_eq!(c.threading.tag, "#");
        assert_eq!(c.classify.loop_messages, 30);
        let c = parse(
            "[threading]\non-closed = { new-ticket-after-days = 30 }\ntag = 'Ticket#'\n\
             forwarders = [' Info@Example.com ']\n[[mailbox]]\nname='a'\nhost='h'\nusername='u'\n\
             password='p'\naddresses = ['support@example.com', 'info@example.com']\n",
        )
        .unwrap();
        assert_eq!(c.threading.on_closed, OnClosed::NewTicketAfterDays(30));
        assert_eq!(c.threading.forwarders, ["info@example.com"]);
        // A forwarding address is never "our own" for loop detection.
        assert_eq!(c.own_addresses(), ["support@example.com"]);
        let c = parse("[threading]\non-closed = 'new-ticket'\n").unwrap();
        assert_eq!(c.threading.on_closed, OnClosed::NewTicket);
        for bad in [
            "[threading]\ntag = '[#'\n",
            "[threading]\ntag = ''\n",
            "[threading]\ntag = 'T1'\n",
            "[classify]\nloop-window = 0\n",
            "[threading]\nreopen = true\n",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
