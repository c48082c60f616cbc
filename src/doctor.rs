//! `mailticket doctor`: every step a sync takes, checked for real, one by one, each with
//! what was found and, when it failed, what to do about it.
//!
//! The steps use the same functions as `sync` ([`imap::dial`], [`imap::secure`],
//! [`imap::authenticate`], [`Imap::select`]), so a green doctor means the next sync gets as
//! far. Nothing is changed: the store is only read (never created or migrated), folders are
//! only looked at; the one exception is OAuth2, whose token table is written when a token is
//! obtained (a rotated refresh token must be kept). A failed step skips the steps of that mailbox that depend on it.
//! With `[smtp]` configured it also connects to the SMTP server (TLS, EHLO, AUTH) and reports
//! outbox rows that failed or were interrupted while sending. Microsoft Graph mailboxes and
//! `[smtp] transport = "graph"` have their own steps (`doctor/graph.rs`).

mod graph;

use std::path::Path;

use serde::Serialize;

use crate::config::{After, Config, MailboxConfig, SmtpTransport, TlsMode, Transport};
use crate::error::Error;
use crate::imap::{self, Imap};
use crate::lock::StoreLock;
use crate::oauth2::{Credentials, Tokens};
use crate::store::db::{Db, params};
use crate::store::{Location, OutboxStatus, SCHEMA_VERSION};

/// How a step went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Fine.
    Ok,
    /// Works, but worth knowing (a missing capability, a folder sync will create).
    Warn,
    /// Broken: sync would fail here.
    Fail,
}

/// One checked step.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    /// `config`, `store`, or `mailbox NAME`.
    pub scope: String,
    /// What was checked: `secrets`, `dns`, `tcp`, `tls`, `login`, ...
    pub step: String,
    /// The verdict.
    pub status: Status,
    /// What was found.
    pub detail: String,
    /// What to do, when something is wrong.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

/// Every step, in order.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// The steps.
    pub steps: Vec<Step>,
}

impl Report {
    /// Whether any step failed.
    pub fn failed(&self) -> bool {
        self.steps.iter().any(|s| s.status == Status::Fail)
    }

    fn push(&mut self, scope: &str, step: &str, status: Status, detail: String, fix: Option<&str>) {
        self.steps.push(Step {
            scope: scope.to_owned(),
            step: step.to_owned(),
            status,
            detail,
            fix: fix.map(str::to_owned),
        });
    }

    fn ok(&mut self, scope: &str, step: &str, detail: String) {
        self.push(scope, step, Status::Ok, detail, None);
    }

    fn fail(&mut self, scope: &str, step: &str, e: &Error, fix: &str) {
        self.push(scope, step, Status::Fail, e.to_string(), Some(fix));
    }
}

/// Runs every check of `config` with the store at `db`.
pub async fn check(config: &Config, config_path: &Path, db: &Location) -> Report {
    let mut r = Report::default();
    r.ok(
        "config",
        "file",
        format!(
            "{}: {} mailbox(es)",
            config_path.display(),
            config.mailboxes.len()
        ),
    );
    if config.mailboxes.is_empty() {
        r.push(
            "config",
            "mailboxes",
            Status::Fail,
            "no [[mailbox]] configured".into(),
            Some("add a [[mailbox]] table (`mailticket init` writes a commented sample)"),
        );
    }
    check_store(&mut r, db);
    if let Location::Postgres(cfg) = db {
        let names: Vec<String> = config.mailboxes.iter().map(|m| m.name.clone()).collect();
        // The lease report uses a client of its own: off the runtime's thread too.
        crate::store::db::off_runtime(|| check_leases_at(&mut r, cfg, &names));
    }
    for mb in &config.mailboxes {
        let scope = format!("mailbox {}", mb.name);
        let got = Tokens::new(config, db, &[mb], false).and_then(|t| t.mailbox(mb));
        let fix = if mb.uses_oauth2() {
            "set the environment variable, file or command named by oauth2 \
             `client-secret` / `refresh-token`"
        } else {
            "set the environment variable, file or command named by `password`"
        };
        let Some(Some(creds)) = secret_step(&mut r, &scope, got.map(Some), fix, &mb.name).await
        else {
            continue;
        };
        match mb.transport {
            Transport::Graph => graph::check_mailbox(&mut r, &scope, mb, &creds).await,
            Transport::Imap => check_mailbox(&mut r, &scope, mb, &creds).await,
        }
    }
    if let Some(smtp) = &config.smtp {
        let got = Tokens::new(config, db, &[], true).and_then(|t| t.smtp(config));
        let hint = config.token_mailbox_of(smtp);
        check_smtp(&mut r, ("smtp", "[smtp]"), smtp, got, hint).await;
    }
    // Each mailbox with an SMTP server of its own ([mailbox.smtp]).
    for mb in &config.mailboxes {
        let Some(own) = &mb.own_smtp else { continue };
        let got = Tokens::new(config, db, &[], true).and_then(|t| t.mailbox_smtp(config, mb));
        let scope = format!("mailbox {} smtp", mb.name);
        let what = format!("[[mailbox]] {} [mailbox.smtp]", mb.name);
        let hint = config.token_mailbox_of(own).or(Some(mb));
        check_smtp(&mut r, (&scope, &what), own, got, hint).await;
    }
    for (i, h) in config.hooks.iter().enumerate() {
        check_hook(&mut r, i, h, db).await;
    }
    r
}

/// [`check_leases`] on a connection of its own (blocking). Nothing when the store cannot be
/// reached: its `connect` step says why.
fn check_leases_at(r: &mut Report, cfg: &crate::config::StoreConfig, configured: &[String]) {
    if let Ok(mut client) = crate::store::pg::connect(cfg) {
        let lease = std::time::Duration::from_secs(cfg.lease);
        check_leases(r, &mut client, lease, configured);
    }
}

/// Lease health on a PostgreSQL store: how many workers are live and how many of the
/// `configured` mailboxes they hold; a warning for each configured mailbox nobody holds
/// while workers run, and for each one taken over [`crate::lease::MANY_TAKEOVERS`] times or
/// more. Blocking (the PostgreSQL client is synchronous): call it off the async workers.
pub fn check_leases(
    r: &mut Report,
    client: &mut postgres::Client,
    lease: std::time::Duration,
    configured: &[String],
) {
    let report = match crate::lease::report(client, lease) {
        Ok(report) => report,
        Err(e) => {
            let fix = "the lease tables come with the store's migrations: run `mailticket sync` or `watch` once";
            r.push("leases", "workers", Status::Fail, e.to_string(), Some(fix));
            return;
        }
    };
    let watchers = report.workers.len();
    let held = report
        .mailboxes
        .iter()
        .filter(|m| configured.contains(&m.mailbox) && m.expires_in_ms.is_some_and(|ms| ms > 0))
        .count();
    let detail = format!(
        "{watchers} live watch worker(s); {held} of {} configured mailbox(es) held",
        configured.len()
    );
    if watchers == 0 {
        let fix = "start `mailticket watch` on one machine or more (fine if only cron `sync` runs)";
        r.push("leases", "workers", Status::Warn, detail, Some(fix));
    } else {
        r.ok("leases", "workers", detail);
    }
    for (mailbox, problem) in crate::lease::problems(&report, configured) {
        let fix = if problem.starts_with("taken over") {
            "a worker dies or pauses longer than `[store] lease`: look for restarts, OOM kills or a paused VM in its logs, or raise `lease`"
        } else {
            "see the workers' logs (`lost the lease`, `cannot renew the leases`); a worker whose config lacks this mailbox never takes it"
        };
        let scope = format!("mailbox {mailbox}");
        r.push(&scope, "lease", Status::Warn, problem, Some(fix));
    }
}

/// One `[[hook]]`: disabled by a 410? deliveries failed or waiting? its secret; for a webhook
/// one HEAD request (DNS, TCP, TLS and an answer of any status), for a command its program.
async fn check_hook(r: &mut Report, i: usize, h: &crate::config::HookConfig, db: &Location) {
    let scope = format!("hook {}", h.name);
    let state = open_read_only(db).and_then(|c| {
        let disabled: Option<String> = c
            .query_opt(
                "SELECT reason FROM hook_state WHERE name = ?1 AND disabled_at > 0",
                params![h.name],
                |row| row.get(0),
            )
            .ok()
            .flatten();
        let (failed, waiting): (i64, i64) = c.query_row(
            "SELECT count(*) FILTER (WHERE status = 'failed'),
                    count(*) FILTER (WHERE status = 'pending' AND attempts > 0)
             FROM hook_delivery WHERE hook = ?1",
            params![h.name],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )?;
        Ok((disabled, failed, waiting))
    });
    if let Ok((disabled, failed, waiting)) = state {
        let enable = format!(
            "fix the receiver, then `mailticket hooks --enable {}`",
            h.name
        );
        match disabled {
            Some(why) => r.push(
                &scope,
                "state",
                Status::Fail,
                format!("DISABLED: {why}"),
                Some(&enable),
            ),
            None => r.ok(&scope, "state", "enabled".into()),
        }
        match (failed, waiting) {
            (0, 0) => r.ok(
                &scope,
                "deliveries",
                "none failed or waiting for a retry".into(),
            ),
            (f, w) => r.push(
                &scope,
                "deliveries",
                Status::Warn,
                format!("{f} failed, {w} waiting for a retry"),
                Some("see `mailticket hooks`; `mailticket hooks --retry ID` sends one again"),
            ),
        }
    }
    if let Some(secret) = &h.secret {
        let what = format!("{} secret", h.label(i));
        match secret.resolve(&what) {
            Ok(v) if crate::secret::whsec_key(v.expose()).is_some() => {
                r.ok(&scope, "secret", "a whsec_ key".into());
            }
            Ok(_) => r.push(
                &scope,
                "secret",
                Status::Fail,
                "not a whsec_... key".into(),
                None,
            ),
            Err(e) => r.fail(&scope, "secret", &e, "set what `secret` names"),
        }
    }
    match (&h.url, &h.command) {
        (Some(url), _) => check_hook_url(r, &scope, h, url).await,
        (_, Some(argv)) => check_hook_command(r, &scope, argv),
        _ => {}
    }
}

async fn check_hook_url(r: &mut Report, scope: &str, h: &crate::config::HookConfig, url: &str) {
    let client = match crate::oauth2::http::client(h.ca_file.as_deref()) {
        Ok(c) => c,
        Err(e) => return r.fail(scope, "connect", &e, "check `ca-file`"),
    };
    match client.head(url).timeout(h.timeout()).send().await {
        Ok(a) => r.ok(
            scope,
            "connect",
            format!(
                "{}: DNS, TCP and TLS fine; HEAD answered {}",
                crate::oauth2::http::host_of(url),
                a.status()
            ),
        ),
        Err(e) => {
            let e = Error::Network {
                host: crate::oauth2::http::host_of(url),
                message: e.without_url().to_string(),
            };
            r.fail(
                scope,
                "connect",
                &e,
                "check `url`, the receiver, and `ca-file` for a private CA",
            );
        }
    }
}

fn check_hook_command(r: &mut Report, scope: &str, argv: &[String]) {
    let prog = argv.first().map_or("", String::as_str);
    let found = if prog.contains('/') {
        Path::new(prog).is_file()
    } else {
        std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(prog).is_file()))
    };
    if found {
        r.ok(scope, "command", format!("{prog} found"));
    } else {
        r.push(
            scope,
            "command",
            Status::Fail,
            format!("{prog}: no such program"),
            Some("check `command`"),
        );
    }
}

/// The `secret` step: the credentials could be read (`got`), and for OAuth2 the `oauth2`
/// step (a token, from the store while good, else from the endpoint). `None` when a step
/// failed; `Some(None)` for no AUTH at all.
async fn secret_step(
    r: &mut Report,
    scope: &str,
    got: crate::error::Result<Option<Credentials>>,
    fix: &str,
    login_hint: &str,
) -> Option<Option<Credentials>> {
    let creds = match got {
        Ok(c) => c,
        Err(e) => {
            r.fail(scope, "secret", &e, fix);
            return None;
        }
    };
    let what = match &creds {
        None => "no AUTH",
        Some(Credentials::Password(_)) => "password readable",
        Some(Credentials::OAuth2(_)) => "OAuth2 secrets readable",
    };
    r.ok(scope, "secret", what.into());
    if let Some(Credentials::OAuth2(source)) = &creds {
        token_step(r, scope, source, login_hint).await?;
    }
    Some(creds)
}

/// Gets a token and reports the source's state: source, expiry, last refresh, scopes.
async fn token_step(
    r: &mut Report,
    scope: &str,
    source: &crate::oauth2::TokenSource,
    login_hint: &str,
) -> Option<()> {
    let got = source.token().await;
    let st = source.state();
    let mut detail = format!("{} from {}", st.source, st.from);
    if let Some(e) = &st.expires {
        detail.push_str(&format!("; access token valid until {e}"));
    }
    if let Some(t) = &st.last_refresh {
        detail.push_str(&format!("; last refresh {t} ({} so far)", st.refreshes));
    }
    if let Some(s) = &st.scope {
        detail.push_str(&format!("; scopes: {s}"));
    }
    match got {
        Ok(_) => {
            r.ok(scope, "oauth2", detail);
            Some(())
        }
        Err(e) => {
            let relogin = format!(
                "run `mailticket oauth2 login --mailbox {login_hint}` (or put a new \
                 refresh-token in the config)"
            );
            let fix = match &e {
                Error::OAuth2 { relogin: true, .. } => relogin.as_str(),
                Error::OAuth2 { .. } => {
                    "check client-id, client-secret, scope and tenant against the app registration"
                }
                Error::Secret { .. } => "check token-command: run it by hand",
                _ => {
                    "the token endpoint could not be reached: check token-url, DNS, proxy and firewall"
                }
            };
            r.fail(scope, "oauth2", &e, fix);
            None
        }
    }
}

fn check_store(r: &mut Report, at: &Location) {
    let Some(db) = at.file() else {
        return check_pg(r, at);
    };
    if !db.exists() {
        r.push(
            "store",
            "file",
            Status::Warn,
            format!("{} does not exist yet", db.display()),
            Some("nothing to do: the first sync creates it (check that its folder is writable)"),
        );
        return;
    }
    if let Err(e @ Error::StorePath { .. }) = open_read_only(at) {
        return r.fail(
            "store",
            "file",
            &e,
            "point --db or [store] path at the database file",
        );
    }
    check_schema(r, at);
    match StoreLock::acquire(db, "doctor") {
        Ok(_) => r.ok("store", "lock", "free".into()),
        Err(Error::Locked { holder, .. }) => r.push(
            "store",
            "lock",
            Status::Warn,
            format!("held by {holder}"),
            Some("fine while that watch or sync runs; a sync started now would exit 75"),
        ),
        Err(e) => r.fail("store", "lock", &e, "make the database's folder writable"),
    }
    check_outbox(r, at);
}

/// A PostgreSQL store: reachable (TLS, password), its schema, its outbox.
fn check_pg(r: &mut Report, at: &Location) {
    match open_read_only(at) {
        Ok(_) => r.ok("store", "connect", format!("{at}: connected")),
        Err(e) => {
            return r.fail(
                "store",
                "connect",
                &e,
                "check [store] url, password, tls and ca-file, and that the server accepts \
                 this host (pg_hba.conf)",
            );
        }
    }
    check_schema(r, at);
    check_outbox(r, at);
}

/// Opens the store read-only, beside whatever is writing to it, leaving no file behind
/// (an SQLite file), or connects to it (PostgreSQL).
fn open_read_only(at: &Location) -> crate::error::Result<Db> {
    match at {
        Location::File(db) => Ok(Db::Lite(crate::store::read_only_connection(db)?)),
        Location::Postgres(cfg) => Ok(Db::pg(crate::store::pg::connect(cfg)?)),
    }
}

/// The store's schema version against this binary's.
fn check_schema(r: &mut Report, db: &Location) {
    let version = open_read_only(db).and_then(|c| match &c {
        Db::Lite(l) => l
            .query_row("PRAGMA user_version", [], |row| row.get::<_, i64>(0))
            .map_err(|e| Error::store("reading the schema version", e)),
        Db::Pg(_) => crate::store::pg::schema_version(&c),
    });
    let latest = if db.file().is_some() {
        SCHEMA_VERSION
    } else {
        crate::store::pg::LATEST
    };
    match version {
        Ok(v) if v == latest => r.ok("store", "schema", format!("{db}: version {v}")),
        Ok(v) if v < latest => r.push(
            "store",
            "schema",
            Status::Warn,
            format!("{db}: version {v}, this mailticket has {latest}"),
            Some("nothing to do: the next sync migrates it"),
        ),
        Ok(v) => r.push(
            "store",
            "schema",
            Status::Fail,
            format!("{db}: version {v}, newer than this mailticket ({latest})"),
            Some("run the newer mailticket that wrote it"),
        ),
        Err(e) => r.fail(
            "store",
            "schema",
            &e,
            "check the path and permissions; restore it from a backup if it is damaged",
        ),
    }
}

/// Outbox rows that failed, or were left in `sending` by a process that is gone.
fn check_outbox(r: &mut Report, db: &Location) {
    // A row that a live process is sending right now is neither stuck nor failed.
    let now = crate::time::now();
    let count = |c: Db| -> crate::error::Result<i64> {
        let rows = c.query_map(
            "SELECT status, claimed_by, claimed_until FROM outbox
             WHERE status IN ('sending', 'failed') AND dismissed_at = 0",
            params![],
            |row| {
                Ok((
                    row.get::<OutboxStatus>(0)?,
                    row.get::<String>(1)?,
                    row.get::<i64>(2)?,
                ))
            },
        )?;
        Ok(rows
            .iter()
            .filter(|(status, by, until)| {
                *status == OutboxStatus::Failed || !crate::store::claim_holds(by, *until, now)
            })
            .count() as i64)
    };
    let stuck = open_read_only(db).ok().and_then(|c| count(c).ok());
    match stuck {
        Some(0) => r.ok("store", "outbox", "nothing stuck or failed".into()),
        Some(n) => r.push(
            "store",
            "outbox",
            Status::Warn,
            format!("{n} row(s) failed or interrupted while sending"),
            Some(
                "see `mailticket outbox --status failed`; `mailticket outbox --retry ID` sends \
                 one again, `mailticket outbox dismiss ID` stops this warning for it",
            ),
        ),
        // A store older than the outbox has none.
        None => {}
    }
}

/// One SMTP server (`scope` in the report, `what` in the fixes: `[smtp]`, or a mailbox's
/// own) with the credentials `got`: TLS, EHLO and AUTH, nothing sent. `hint` is the mailbox
/// whose `oauth2 login` a dead token needs.
async fn check_smtp(
    r: &mut Report,
    (scope, what): (&str, &str),
    c: &crate::config::SmtpConfig,
    got: crate::error::Result<Option<Credentials>>,
    hint: Option<&MailboxConfig>,
) {
    let hint = hint.map_or("smtp", |m| m.name.as_str());
    let fix =
        format!("set the environment variable, file or command named by {what} password or oauth2");
    let Some(creds) = secret_step(r, scope, got, &fix, hint).await else {
        return;
    };
    if c.transport == SmtpTransport::Graph {
        return graph::check_smtp(r, c, creds).await;
    }
    let smtp = match crate::outbound::smtp::Smtp::new(c, creds) {
        Ok(s) => s,
        Err(e) => {
            let fix = format!(
                "{what} ca-file must name a readable PEM file holding the certificate of the \
                 CA that signed the server's"
            );
            return r.fail(scope, "setup", &e, &fix);
        }
    };
    match smtp.check().await {
        Ok(()) => r.ok(
            scope,
            "connect",
            format!("{}:{} (tls = {}): TLS, EHLO and AUTH fine", c.host, c.port(), c.tls),
        ),
        Err(e) => r.fail(
            scope,
            "connect",
            &e,
            "check host, port and tls (587 = starttls, 465 = implicit), the CA, username and password",
        ),
    }
}

async fn check_mailbox(r: &mut Report, scope: &str, mb: &MailboxConfig, creds: &Credentials) {
    let addr = format!("{}:{}", mb.host, mb.port());
    if !check_dns(r, scope, mb, &addr).await {
        return;
    }
    let tcp = match imap::dial(mb).await {
        Ok(t) => {
            r.ok(scope, "tcp", format!("connected to {addr}"));
            t
        }
        Err(e) => {
            return r.fail(
                scope,
                "tcp",
                &e,
                "check `port` and `tls` (993 implicit, 143 starttls) and any firewall on the way",
            );
        }
    };
    let client = match imap::secure(mb, tcp).await {
        Ok(c) => {
            let how = match mb.tls {
                TlsMode::Implicit => "TLS, certificate verified",
                TlsMode::Starttls => "STARTTLS, certificate verified",
                TlsMode::None => "no encryption (allow-insecure)",
            };
            r.ok(scope, "tls", format!("{how}; greeting received"));
            c
        }
        Err(e) => {
            let fix = match e {
                Error::CaFile { .. } => {
                    "`ca-file` must name a readable PEM file holding the certificate of the CA \
                     that signed the server's; remove the key to trust the usual roots only"
                }
                Error::Tls { .. } => {
                    "for a private CA set `ca-file`; check that `host` is the name on the certificate and `tls` matches the port"
                }
                _ => "check `tls` against the port: implicit TLS on 993, starttls on 143",
            };
            return r.fail(scope, "tls", &e, fix);
        }
    };
    let mut imap = match imap::authenticate(mb, client, creds).await {
        Ok(i) => {
            r.ok(scope, "login", format!("logged in as {}", mb.username));
            i
        }
        Err(e) => {
            let fix = match e {
                Error::Auth { .. } if mb.auth.is_oauth2() => {
                    "the token is not accepted for this mailbox: check `username` (for an app-only \
                     token, the shared mailbox's address), the IMAP scope / IMAP.AccessAsApp role, \
                     and the app's permission on the mailbox"
                }
                Error::Auth { .. } => {
                    "check `username` and the password; Outlook 365 needs IMAP enabled for the mailbox and usually OAuth2"
                }
                _ => "the server broke off during login; try again, then look at its logs",
            };
            return r.fail(scope, "login", &e, fix);
        }
    };
    check_capabilities(r, scope, &imap);
    check_folders(r, scope, mb, &mut imap).await;
    imap.logout().await;
}

/// Resolves the mailbox's host; false (reported) when that fails.
async fn check_dns(r: &mut Report, scope: &str, mb: &MailboxConfig, addr: &str) -> bool {
    let limit = mb.timeout();
    match tokio::time::timeout(limit, tokio::net::lookup_host(addr)).await {
        Ok(Ok(addrs)) => {
            let ips: Vec<String> = addrs.map(|a| a.ip().to_string()).collect();
            r.ok(scope, "dns", format!("{} -> {}", mb.host, ips.join(", ")));
            true
        }
        Ok(Err(e)) => {
            let e = Error::Network {
                host: mb.host.clone(),
                message: e.to_string(),
            };
            let fix = "check `host` (a typo?) and this machine's DNS";
            r.fail(scope, "dns", &e, fix);
            false
        }
        Err(_) => {
            let e = Error::Timeout {
                host: mb.host.clone(),
                what: "resolving".into(),
                secs: limit.as_secs(),
            };
            r.fail(scope, "dns", &e, "check this machine's DNS resolver");
            false
        }
    }
}

fn check_capabilities(r: &mut Report, scope: &str, imap: &Imap) {
    let missing: Vec<&str> = ["IDLE", "MOVE", "UIDPLUS"]
        .into_iter()
        .filter(|c| !imap.has_capability(c))
        .collect();
    if missing.is_empty() {
        r.ok(scope, "capabilities", "IDLE, MOVE, UIDPLUS".into());
    } else {
        let mut notes = Vec::new();
        if missing.contains(&"IDLE") {
            notes.push("without IDLE, watch polls every poll-interval");
        }
        if missing.contains(&"MOVE") {
            notes.push("without MOVE, a move is COPY + delete");
        }
        if missing.contains(&"UIDPLUS") {
            notes.push("without UIDPLUS, deleting expunges every \\Deleted message");
        }
        r.push(
            scope,
            "capabilities",
            Status::Warn,
            format!("missing {}", missing.join(", ")),
            Some(&notes.join("; ")),
        );
    }
}

async fn check_folders(r: &mut Report, scope: &str, mb: &MailboxConfig, imap: &mut Imap) {
    match imap.select(&mb.folder).await {
        Ok(sel) => r.ok(
            scope,
            "folder",
            format!("{}: {} messages, UIDVALIDITY {}", mb.folder, sel.exists, sel.uidvalidity),
        ),
        Err(e) => r.fail(
            scope,
            "folder",
            &e,
            "check `folder` (names are case-sensitive except INBOX; shared folders may need a prefix)",
        ),
    }
    if let After::Move(target) = &mb.after {
        match imap.folder_exists(target).await {
            Ok(true) => r.ok(scope, "move-target", format!("{target} exists")),
            Ok(false) => r.push(
                scope,
                "move-target",
                Status::Warn,
                format!("{target} does not exist"),
                Some("nothing to do if the account may create folders: sync creates it"),
            ),
            Err(e) => r.fail(scope, "move-target", &e, "check `after = { move = ... }`"),
        }
    }
}
