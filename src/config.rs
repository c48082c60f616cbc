//! The TOML configuration: what it may say, its defaults, and its validation.
//!
//! Keys are kebab-case and unknown keys are errors, so a typo is reported with the key, the
//! file and the line instead of being silently ignored. Relative paths inside the file are
//! taken relative to the file's own folder. Nothing here touches the network.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::secret::Secret;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Config {
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

fn default_tag() -> String {
    crate::thread::DEFAULT_TAG.to_owned()
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
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct SmtpConfig {
    /// The server's host name (checked against its certificate).
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
}

fn default_smtp_tls() -> TlsMode {
    TlsMode::Starttls
}

/// `[ack]`: the acknowledgement of a new request.
#[derive(Debug, Deserialize)]
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

/// Microsoft's IMAP and SMTP scopes for a user's token (one token serves both).
pub const MICROSOFT_USER_SCOPE: &str = "https://outlook.office.com/IMAP.AccessAsUser.All \
     https://outlook.office.com/SMTP.Send offline_access";
/// Microsoft's app-only scope: the roles granted to the app (`IMAP.AccessAsApp`,
/// `SMTP.SendAsApp`).
pub const MICROSOFT_APP_SCOPE: &str = "https://outlook.office365.com/.default";
/// Gmail's one scope for IMAP and SMTP.
pub const GOOGLE_SCOPE: &str = "https://mail.google.com/";

/// The auth keys of a mailbox or `[smtp]` (`at` names it): an OAuth2 `auth` goes without
/// `password`, and its `oauth2` table (if any) is checked and completed; `oauth2` needs an
/// OAuth2 `auth`.
fn check_auth(
    at: &str,
    oauth: bool,
    oauth2: &mut Option<OAuth2Config>,
    has_password: bool,
    base: &Path,
) -> std::result::Result<(), String> {
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

/// Checks an `oauth2` table and fills in what its `provider` implies.
fn check_oauth2(o: &mut OAuth2Config, base: &Path) -> std::result::Result<(), String> {
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
    match o.provider {
        Some(Provider::Microsoft) => {
            let Some(tenant) = o.tenant.as_deref().map(str::trim).filter(|t| !t.is_empty()) else {
                return Err(
                    "`provider = \"microsoft\"` needs `tenant` (the directory id or \
                            domain, e.g. \"contoso.onmicrosoft.com\")"
                        .into(),
                );
            };
            let root = format!("https://login.microsoftonline.com/{tenant}/oauth2/v2.0");
            o.token_url.get_or_insert_with(|| format!("{root}/token"));
            o.device_url
                .get_or_insert_with(|| format!("{root}/devicecode"));
            o.scope.get_or_insert_with(|| {
                match flow {
                    Flow::RefreshToken => MICROSOFT_USER_SCOPE,
                    Flow::ClientCredentials => MICROSOFT_APP_SCOPE,
                }
                .to_owned()
            });
        }
        Some(Provider::Google) => {
            if flow == Flow::ClientCredentials {
                return Err("Google has no client-credentials flow for Gmail; use \
                            `flow = \"refresh-token\"` or `token-command`"
                    .into());
            }
            if o.tenant.is_some() {
                return Err("`tenant` is for `provider = \"microsoft\"` only".into());
            }
            o.token_url
                .get_or_insert_with(|| "https://oauth2.googleapis.com/token".to_owned());
            o.device_url
                .get_or_insert_with(|| "https://oauth2.googleapis.com/device/code".to_owned());
            o.scope.get_or_insert_with(|| GOOGLE_SCOPE.to_owned());
        }
        None => {
            if o.tenant.is_some() {
                return Err("`tenant` is for `provider = \"microsoft\"` only".into());
            }
        }
    }
    for (key, value) in [
        ("token-url", &o.token_url),
        ("client-id", &o.client_id),
        ("scope", &o.scope),
    ] {
        if value.as_deref().is_none_or(|v| v.trim().is_empty()) {
            return Err(format!(
                "`{key}` is missing (or set `provider = \"microsoft\"` / `\"google\"`, or use \
                 `token-command`)"
            ));
        }
    }
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
fn check_token_url(url: &str) -> std::result::Result<(), String> {
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

{{ mailbox.name }}
";

/// `[store]`
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct StoreConfig {
    /// The database file.
    #[serde(default = "default_store_path")]
    pub path: PathBuf,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            path: default_store_path(),
        }
    }
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
    /// The IMAP server's host name (checked against its certificate).
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
    /// relative paths.
    pub fn parse(text: &str, path: &Path) -> Result<Config> {
        let err = |message: String| Error::Config {
            path: path.to_owned(),
            message,
        };
        let mut config: Config = toml::from_str(text).map_err(|e| err(e.to_string()))?;
        let base = path.parent().unwrap_or(Path::new(""));
        config.store.path = anchor(base, &config.store.path);
        let mut names = std::collections::HashSet::new();
        if let Some(smtp) = &mut config.smtp {
            if smtp.tls == TlsMode::None && !smtp.allow_insecure {
                return Err(err(
                    "[smtp]: `tls = \"none\"` sends the password in clear text; \
                     set `allow-insecure = true` to allow it"
                        .into(),
                ));
            }
            let oauth = smtp.auth.is_some_and(AuthMech::is_oauth2);
            check_auth(
                "[smtp]",
                oauth,
                &mut smtp.oauth2,
                smtp.password.is_some(),
                base,
            )
            .map_err(err)?;
            if oauth && smtp.username.is_none() {
                return Err(err(
                    "[smtp]: an OAuth2 `auth` needs `username` (the account the token is for)"
                        .into(),
                ));
            }
            if !oauth && smtp.username.is_some() != smtp.password.is_some() {
                return Err(err("[smtp]: `username` and `password` go together".into()));
            }
            if crate::outbound::parse_mailbox(&smtp.from).is_none() {
                return Err(err(format!(
                    "[smtp]: `from = {:?}` is not an address",
                    smtp.from
                )));
            }
            if let Some(ca) = &smtp.ca_file {
                smtp.ca_file = Some(anchor(base, ca));
            }
        }
        if config.ack.enabled && config.smtp.is_none() {
            return Err(err(
                "[ack] is enabled but there is no [smtp] to send with".into()
            ));
        }
        if let Some(f) = &config.ack.body_file {
            if config.ack.body.is_some() {
                return Err(err("[ack]: give `body` or `body-file`, not both".into()));
            }
            let f = anchor(base, f);
            let text = std::fs::read_to_string(&f)
                .map_err(|e| err(format!("[ack] body-file {}: {e}", f.display())))?;
            config.ack.body = Some(text);
        }
        if config.ack.enabled {
            crate::outbound::template::AckTemplates::compile(&config.ack)
                .map_err(|e| err(format!("[ack]: {e}")))?;
        }
        for (i, mb) in config.mailboxes.iter_mut().enumerate() {
            let at = format!("mailbox #{} ({})", i + 1, mb.name);
            if mb.name.trim().is_empty() {
                return Err(err(format!("mailbox #{}: `name` must not be empty", i + 1)));
            }
            if !names.insert(mb.name.clone()) {
                return Err(err(format!("{at}: `name` is used twice")));
            }
            if mb.host.trim().is_empty() {
                return Err(err(format!("{at}: `host` must not be empty")));
            }
            if mb.tls == TlsMode::None && !mb.allow_insecure {
                return Err(err(format!(
                    "{at}: `tls = \"none\"` sends the password in clear text; \
                     set `allow-insecure = true` to allow it"
                )));
            }
            check_auth(
                &at,
                mb.auth.is_oauth2(),
                &mut mb.oauth2,
                mb.password.is_some(),
                base,
            )
            .map_err(err)?;
            if mb.auth.is_oauth2() && mb.oauth2.is_none() {
                return Err(err(format!(
                    "{at}: `auth = \"{}\"` needs `oauth2 = {{ ... }}` (where the token comes from)",
                    if mb.auth == AuthMech::Xoauth2 {
                        "xoauth2"
                    } else {
                        "oauthbearer"
                    }
                )));
            }
            if !mb.auth.is_oauth2() && mb.password.is_none() {
                return Err(err(format!("{at}: `password` is missing")));
            }
            if let After::Move(folder) = &mb.after
                && (folder.trim().is_empty() || *folder == mb.folder)
            {
                return Err(err(format!(
                    "{at}: `after = {{ move = ... }}` needs a folder other than `folder`"
                )));
            }
            if let Some(ca) = &mb.ca_file {
                mb.ca_file = Some(anchor(base, ca));
            }
            for a in &mut mb.addresses {
                *a = a.trim().to_ascii_lowercase();
            }
        }
        if let Some(smtp) = &config.smtp
            && smtp.auth.is_some_and(AuthMech::is_oauth2)
            && smtp.oauth2.is_none()
            && config.smtp_token_mailbox().is_none()
        {
            return Err(err(format!(
                "[smtp]: an OAuth2 `auth` without `oauth2 = {{ ... }}` shares the token of the \
                 mailbox with the same username, but no OAuth2 mailbox has username {:?}",
                smtp.username.as_deref().unwrap_or("")
            )));
        }
        for a in &mut config.threading.forwarders {
            *a = a.trim().to_ascii_lowercase();
        }
        let tag = &config.threading.tag;
        if tag.is_empty() || tag.contains(['[', ']']) || tag.ends_with(|c: char| c.is_ascii_digit())
        {
            return Err(err(format!(
                "[threading] tag = {tag:?}: needs a non-empty marker without brackets that does \
                 not end in a digit (the default \"#\" makes tags like [#42])"
            )));
        }
        if config.classify.loop_window == 0 {
            return Err(err(
                "[classify] loop-window must be at least 1 second".into()
            ));
        }
        Ok(config)
    }

    /// The OAuth2 mailbox whose token `[smtp]` shares: `[smtp]` has an OAuth2 `auth`, no
    /// `oauth2` of its own, and the same username (case-insensitive).
    pub fn smtp_token_mailbox(&self) -> Option<&MailboxConfig> {
        let smtp = self.smtp.as_ref()?;
        if !smtp.auth.is_some_and(AuthMech::is_oauth2) || smtp.oauth2.is_some() {
            return None;
        }
        let user = smtp.username.as_deref()?;
        self.mailboxes
            .iter()
            .find(|m| m.oauth2.is_some() && m.username.eq_ignore_ascii_case(user))
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

/// The fully commented sample that `mailticket init` writes.
pub const SAMPLE: &str = r##"# mailticket configuration. Keys are kebab-case; an unknown key is an error.
# Relative paths are taken relative to this file's folder.

[store]
# The SQLite database that holds tickets, messages and the mailbox cursors.
path = "mailticket.db"

# One [[mailbox]] table per support mailbox. `mailticket sync` polls them in order.
[[mailbox]]
# A short unique name, used by `sync --mailbox NAME` and recorded with each message.
name = "support"
# The IMAP server. Outlook 365: outlook.office365.com. Gmail: imap.gmail.com.
host = "outlook.office365.com"
# tls: "implicit" (port 993, the default), "starttls" (port 143; refuses to go on if the
# upgrade fails) or "none" (only together with allow-insecure = true).
tls = "implicit"
# port = 993
# An extra PEM CA certificate to trust, for servers with a private CA.
# ca-file = "ca.pem"
username = "support@example.com"
# The password: a literal string, { env = "VAR" }, { file = "path" } or
# { command = ["pass", "show", "support-imap"] } (first line of its output).
password = { env = "SUPPORT_IMAP_PASSWORD" }
# auth: "login" (IMAP LOGIN, the default), "plain" (AUTHENTICATE PLAIN), or "xoauth2" /
# "oauthbearer" with an OAuth2 token instead of the password (Outlook 365 and Gmail).
auth = "login"
# With auth = "xoauth2", leave out `password` and say where tokens come from, e.g.
# Outlook 365, app-only access to a shared mailbox (username = the shared mailbox):
#   oauth2 = { provider = "microsoft", tenant = "contoso.onmicrosoft.com",
#              flow = "client-credentials", client-id = "...",
#              client-secret = { env = "SUPPORT_CLIENT_SECRET" } }
# a user's sign-in (run `mailticket oauth2 login --mailbox support` once; rotated refresh
# tokens are kept in the store):
#   oauth2 = { provider = "microsoft", tenant = "contoso.onmicrosoft.com", client-id = "..." }
# any other provider: flow, token-url, client-id, client-secret, refresh-token (the first one),
# scope, device-url, ca-file, timeout; or a program that prints a token:
#   oauth2 = { token-command = ["oauth2l", "fetch", "--scope", "https://mail.google.com/"] }
# The folder to read.
folder = "INBOX"
# What to do with a message once its ticket is safely stored:
#   "seen" (set \Seen, the default), "delete", or { move = "Processed" }.
after = "seen"
# Our own addresses: mail from them is never treated as a customer request.
addresses = ["support@example.com"]
# Seconds any one network operation may take before the run gives up on this mailbox
# (`watch` then reconnects). Also bounds ending an IDLE, so a dead connection is noticed.
timeout = 60
# A message larger than this (by the size the server reports) is never fetched whole: its
# header is kept in the quarantine (`mailticket quarantine`) marked "too large", the
# post-action runs on it, and the run goes on with the mail after it. KB/MB/GB are powers of
# 1000, KiB/MiB/GiB of 1024; at most 256 MiB.
max-message-size = "50 MB"

# The SMTP server that sends acknowledgements and agent replies (the customer's own).
# [smtp]
# host = "smtp.office365.com"
# tls: "starttls" (port 587, the default; refuses to go on without TLS), "implicit" (465),
# or "none" (only with allow-insecure = true).
# tls = "starttls"
# port = 587
# ca-file = "ca.pem"
# username = "support@example.com"
# password = { env = "SMTP_PASSWORD" }
# OAuth2 instead of the password: auth = "xoauth2" (or "oauthbearer") and no password. Without
# an oauth2 table of its own, [smtp] shares the token of the mailbox with the same username.
# auth = "xoauth2"
# from = "Support <support@example.com>"
# timeout = 60

# Acknowledgements of new requests. Only a normal (human) message that opens a NEW ticket is
# acknowledged; never an automatic reply, a bounce, a list, a no-reply sender or ourselves.
# [ack]
# enabled = true
# Templates (minijinja): ticket.id, ticket.subject, ticket.tag ("[#42]"), customer.name,
# customer.email, mailbox.name, mailbox.address, message.date, message.subject. An unknown
# field or a syntax error stops mailticket at start-up.
# subject = "{{ ticket.tag }} {{ ticket.subject }}"
# body = """Hello {{ customer.name or customer.email }},
#
# thank you for your message. We have opened ticket {{ ticket.tag }} for it."""
# body-file = "ack.txt"          # instead of body
# html-body = "<p>...</p>"       # optional: the mail becomes multipart/alternative
# per-sender-per-hour = 3
# per-sender-per-day = 10
# max-age = "24h"                # no acknowledgement for older mail (a first run's backlog)
# How `mailticket watch` waits for mail, reconnects and stops. All values are seconds.
[watch]
# Wait for new mail with IMAP IDLE when the server offers it; false = always poll.
idle = true
# IDLE is ended and re-issued this often (servers drop an IDLE after 29 minutes).
idle-interval = 600
# Servers without IDLE are checked this often (a check that runs late is not made up).
poll-interval = 60
# Reconnects back off exponentially with full jitter from backoff-min up to backoff-max;
# a refused login always waits backoff-max, so a wrong password cannot lock the account.
backoff-min = 1
backoff-max = 300
# After SIGINT/SIGTERM, sessions get this long to finish the message in hand and log out.
shutdown-timeout = 10
# A heartbeat line is logged at debug level this often.
heartbeat = 300

# Machine-mail rules that need a setting (the others are fixed; see the README).
[classify]
# More than loop-messages messages from one sender within loop-window seconds (by their Date
# header) are a mail loop: stored, never answered. 0 turns the rule off.
loop-messages = 30
loop-window = 300
# Days an address that bounced counts as undeliverable: no acknowledgement goes to it.
undeliverable-days = 7

# How replies find their ticket: In-Reply-To / References first, then our own keyed
# Message-IDs, then the subject tag, then (optionally) the subject.
[threading]
# The subject tag marker: "#" makes tags like [#42].
tag = "#"
# A tag is trusted when the sender or a Cc already takes part in the ticket; with this, also
# when someone from the sender's domain does.
trust-tag-domain = false
# Same subject (without Re:/Fwd: prefixes) from the same sender within this many days joins
# that ticket. 0 turns the rule off.
subject-days = 0
# A human reply to a closed ticket: "reopen", "new-ticket", or { new-ticket-after-days = 30 }.
# Automatic replies and bounces never reopen a ticket.
on-closed = "reopen"
# Our forwarding addresses (a forwarding rule, a distribution group that rewrites the
# sender): mail from them is a request passed on, its customer taken from Reply-To,
# X-Original-From, Resent-From or the forwarded header block.
forwarders = []
"##;

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config> {
        Config::parse(text, Path::new("/etc/mailticket/mailticket.toml"))
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
    fn oauth2_tables_are_checked_and_providers_filled_in() {
        let mb = |auth: &str, extra: &str| {
            format!(
                "[[mailbox]]\nname = 'support'\nhost = 'h'\nusername = 'support@contoso.com'\n\
                 auth = '{auth}'\n{extra}"
            )
        };
        let err = |text: &str| parse(text).unwrap_err().to_string();

        // Microsoft app-only: token URL and the .default scope filled in
        let c = parse(&mb(
            "xoauth2",
            "oauth2 = { provider = 'microsoft', tenant = 'contoso', flow = 'client-credentials', \
             client-id = 'app', client-secret = 's' }\n",
        ))
        .unwrap();
        let o = c.mailboxes[0].oauth2.as_ref().unwrap();
        assert_eq!(
            o.token_url.as_deref(),
            Some("https://login.microsoftonline.com/contoso/oauth2/v2.0/token")
        );
        assert_eq!(o.scope.as_deref(), Some(MICROSOFT_APP_SCOPE));
        // delegated: IMAP + SMTP + offline_access, and the device endpoint
        let c = parse(&mb(
            "oauthbearer",
            "oauth2 = { provider = 'microsoft', tenant = 'contoso', client-id = 'app' }\n",
        ))
        .unwrap();
        let o = c.mailboxes[0].oauth2.as_ref().unwrap();
        assert_eq!(o.flow, Some(Flow::RefreshToken));
        assert_eq!(o.scope.as_deref(), Some(MICROSOFT_USER_SCOPE));
        assert!(o.device_url.as_deref().unwrap().ends_with("/devicecode"));
        let c = parse(&mb(
            "xoauth2",
            "oauth2 = { provider = 'google', client-id = 'g' }\n",
        ))
        .unwrap();
        let o = c.mailboxes[0].oauth2.as_ref().unwrap();
        assert_eq!(o.scope.as_deref(), Some(GOOGLE_SCOPE));

        for (extra, needle) in [
            ("", "needs `oauth2 = { ... }`"),
            (
                "oauth2 = { provider = 'microsoft', client-id = 'a' }\n",
                "needs `tenant`",
            ),
            (
                "oauth2 = { token-url = 'https://t/token', client-id = 'a' }\n",
                "`scope` is missing",
            ),
            (
                "oauth2 = { token-url = 'http://login.example.com/token', client-id = 'a', \
                 scope = 's' }\n",
                "unencrypted",
            ),
            (
                "oauth2 = { flow = 'client-credentials', token-url = 'https://t/token', \
                 client-id = 'a', scope = 's' }\n",
                "needs `client-secret`",
            ),
            (
                "oauth2 = { token-command = ['helper'], client-id = 'a' }\n",
                "stands alone: remove `client-id`",
            ),
            (
                "oauth2 = { provider = 'google', flow = 'client-credentials', client-id = 'a', \
                 client-secret = 's' }\n",
                "no client-credentials flow",
            ),
            (
                "oauth2 = { token-command = ['helper'] }\npassword = 'p'\n",
                "`password` is not used",
            ),
            (
                "oauth2 = { tokencommand = ['helper'] }\n",
                "unknown field `tokencommand`",
            ),
        ] {
            let e = err(&mb("xoauth2", extra));
            assert!(e.contains(needle), "{extra:?}: {e}");
            assert!(e.contains("/etc/mailticket/mailticket.toml"), "{e}");
        }
        // loopback token endpoints may be plain http (local test servers, helpers)
        assert!(
            parse(&mb(
                "xoauth2",
                "oauth2 = { token-url = 'http://127.0.0.1:8080/token', client-id = 'a', \
                 scope = 's' }\n"
            ))
            .is_ok()
        );
        // an oauth2 table with a password auth is a mistake, not ignored
        let e = err(&mb(
            "login",
            "password = 'p'\noauth2 = { token-command = ['x'] }\n",
        ));
        assert!(e.contains("`oauth2` needs `auth"), "{e}");

        // [smtp] shares the mailbox token by username, or says why it cannot
        let smtp = |user: &str| {
            format!(
                "{}\n[smtp]\nhost = 's'\nusername = '{user}'\nauth = 'xoauth2'\n\
                 from = 'support@contoso.com'\n",
                mb("xoauth2", "oauth2 = { token-command = ['helper'] }\n")
            )
        };
        let c = parse(&smtp("SUPPORT@contoso.com")).unwrap();
        assert_eq!(c.smtp_token_mailbox().unwrap().name, "support");
        let e = err(&smtp("other@contoso.com"));
        assert!(e.contains("no OAuth2 mailbox has username"), "{e}");
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
        let e = parse(&format!(
            "{smtp}[ack]\nenabled = true\nsubject = '{{{{ ticket.nope }}}}'\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("[ack]") && e.contains("subject"), "{e}");
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
