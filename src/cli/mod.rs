//! Command-line arguments and the glue from each subcommand to the library.

/// `println!` that returns the write error (a closed pipe) instead of panicking.
macro_rules! outln {
    () => {
        std::io::Write::write_all(&mut std::io::stdout().lock(), b"\n")?
    };
    ($($arg:tt)*) => {
        std::io::Write::write_fmt(&mut std::io::stdout().lock(), format_args!("{}\n", format_args!($($arg)*)))?
    };
}

mod completions;
mod discover;
mod doctor;
mod events;
mod export;
mod hooks;
mod import;
mod notify;
mod oauth2;
mod outbox;
mod progress;
mod quarantine;
mod search;
mod sync;
mod tickets;
mod watch;
mod workers;

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Parser, Subcommand, ValueEnum};
use mailticket::config::{Config, MailboxConfig};
use mailticket::lock::StoreLock;
use mailticket::outbound::AckPlan;
use mailticket::outbound::Sender;
use mailticket::outbound::senders::Senders;
use mailticket::store::{Location, Store, TicketStatus};

/// Turns a support mailbox into helpdesk tickets.
#[derive(Debug, Parser)]
#[command(name = "mailticket", version, about, after_help = ENVIRONMENT)]
pub struct Args {
    /// The config file [default: $MAILTICKET_CONFIG, else the first of ./mailticket.toml,
    /// $XDG_CONFIG_HOME/mailticket/config.toml, /etc/mailticket/mailticket.toml]
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// The database file (overrides `[store] path`)
    #[arg(long, global = true, value_name = "PATH")]
    pub db: Option<PathBuf>,
    /// More log output (-v debug, -vv trace)
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Less log output (-q warnings, -qq errors only)
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub quiet: u8,
    /// Log format on stderr
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

/// The environment variables, shown at the end of `--help`.
const ENVIRONMENT: &str = "\
Environment:
  MAILTICKET_CONFIG  the config file when --config is not given
  MAILTICKET_LOG     log filter, overriding -v/-q (e.g. `debug`, `mailticket=trace,warn`)
  NO_COLOR           no colors in log lines (they are never colored when stderr is not a terminal)
  TZ                 the time zone of the tables (JSON and logs are UTC)";

/// How logs are written.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write a fully commented sample config
    Init {
        /// Where to write it, `-` for standard output [default: ./mailticket.toml]
        path: Option<PathBuf>,
        /// Replace an existing file
        #[arg(long)]
        force: bool,
    },
    /// One pass over the configured mailboxes, then exit
    Sync(sync::SyncArgs),
    /// Watch the mailboxes (IMAP IDLE or polling) until SIGINT/SIGTERM; SIGHUP reloads the config
    Watch(watch::WatchArgs),
    /// Check config, secrets, store and every mailbox for real, step by step
    Doctor(doctor::DoctorArgs),
    /// Live workers and who holds each mailbox's lease (PostgreSQL store)
    Workers(workers::WorkersArgs),
    /// Import .eml files, mbox files and Maildir folders
    Import(import::ImportArgs),
    /// Read one message from standard input (for MTA pipes); exit 0, 65 or 75
    Ingest(import::IngestArgs),
    /// List tickets
    Tickets(tickets::TicketsArgs),
    /// Show one ticket with its messages
    Show(tickets::ShowArgs),
    /// Find tickets whose subjects or message texts contain TEXT
    Search(search::SearchArgs),
    /// Messages that could not be parsed: list, show, export, retry, delete
    Quarantine(quarantine::QuarantineArgs),
    /// The outgoing queue and its failures
    Outbox(outbox::OutboxArgs),
    /// Queue a threaded reply on a ticket and send it
    Reply(outbox::ReplyArgs),
    /// Close a ticket
    Close(outbox::StatusArgs),
    /// Reopen a ticket
    Reopen(outbox::StatusArgs),
    /// Hook deliveries and their failures; send, retry, test
    Hooks(hooks::HooksArgs),
    /// Write stored messages back out (eml, mbox) or tickets as JSON lines
    Export(export::ExportArgs),
    /// The event log as lines in commit order, resumable with --since
    Events(events::EventsArgs),
    /// OAuth2 sign-in (device code) and token state
    #[command(name = "oauth2")]
    OAuth2(oauth2::OAuth2Args),
    /// Write shell completions (bash, zsh, fish, elvish, powershell) on stdout
    Completions(completions::CompletionsArgs),
    /// Write the man page (roff) on stdout, or with --dir one page per command
    Man(completions::ManArgs),
}

impl Command {
    /// Whether the command only reads the store (it must exist, and may be read-only).
    pub fn reads_only(&self) -> bool {
        match self {
            Command::Tickets(_) | Command::Show(_) | Command::Events(_) | Command::Export(_) => {
                true
            }
            Command::Outbox(a) => a.reads_only(),
            Command::Quarantine(a) => a.reads_only(),
            Command::Hooks(a) => a.reads_only(),
            _ => false,
        }
    }
}

/// A usage error: exit status 2.
#[derive(Debug)]
pub struct Usage(pub String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for Usage {}

/// Exit status when another run holds the store's lock (sysexits `EX_TEMPFAIL`).
pub const EXIT_LOCKED: u8 = 75;

/// Exit status for an error: 2 for usage and configuration, 75 for a taken store lock, 1 for
/// everything else.
pub fn exit_code(e: &anyhow::Error) -> u8 {
    if is_broken_pipe(e) {
        return 0;
    }
    for cause in e.chain() {
        if cause.downcast_ref::<Usage>().is_some() {
            return 2;
        }
        if let Some(err) = cause.downcast_ref::<mailticket::Error>() {
            return match err {
                mailticket::Error::Locked { .. } => EXIT_LOCKED,
                e if e.is_config() => 2,
                _ => 1,
            };
        }
    }
    1
}

/// Whether `e` is stdout closed by the reader (`mailticket tickets | head`): not a failure.
pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Crates whose trace output carries what goes over the wire, AUTHENTICATE and LOGIN lines
/// (passwords, tokens) included: never logged below `debug`, whatever `MAILTICKET_LOG` says.
const WIRE_LOGGERS: &[&str] = &["async_imap", "imap_proto", "lettre"];

pub fn init_tracing(args: &Args) {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    use tracing_subscriber::prelude::*;
    use tracing_subscriber::{EnvFilter, fmt};
    let level = match i16::from(args.verbose) - i16::from(args.quiet) {
        i16::MIN..=-2 => "error",
        -1 => "warn",
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_env("MAILTICKET_LOG")
        .unwrap_or_else(|_| EnvFilter::new(format!("mailticket={level},warn")));
    // A second filter beside the user's: an event is written only when both let it through,
    // so no directive of the user's (`async_imap::imap_stream=trace`) can lift this cap. It
    // lets through no more than the user's filter does: the most detailed level of the two
    // becomes the `log` crate's maximum, and a `log::trace!` below that maximum costs nothing,
    // while one within it computes its arguments (async-imap's validated every buffer it
    // parsed as UTF-8, about 1 % of a sync's CPU) before it is dropped.
    let most = filter.max_level_hint().unwrap_or(LevelFilter::TRACE);
    let cap = WIRE_LOGGERS
        .iter()
        .fold(Targets::new().with_default(most), |t, name| {
            t.with_target(*name, LevelFilter::DEBUG.min(most))
        });
    let ansi = color_logs(
        std::io::IsTerminal::is_terminal(&std::io::stderr()),
        std::env::var_os("NO_COLOR").as_deref(),
    );
    let registry = tracing_subscriber::registry().with(filter).with(cap);
    match args.log_format {
        LogFormat::Text => registry
            .with(
                fmt::layer()
                    .with_ansi(ansi)
                    .with_target(false)
                    .with_writer(progress::log_writer),
            )
            .init(),
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .with_ansi(ansi)
                    .with_writer(progress::log_writer),
            )
            .init(),
    }
}

/// Whether log lines get ANSI colors: only on a terminal, and not when `NO_COLOR` is set to
/// anything but the empty string (no-color.org).
fn color_logs(stderr_is_tty: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    stderr_is_tty && no_color.is_none_or(|v| v.is_empty())
}

/// The global options every command needs.
pub struct Ctx {
    pub config: Config,
    /// `-q` or more: print nothing on stdout when all went well (cron mails any output).
    pub quiet: bool,
    /// The acknowledgement plan (templates compiled), when `[ack]` is enabled.
    pub ack: Option<Arc<AckPlan>>,
    pub config_path: PathBuf,
    pub config_found: bool,
    /// The SQLite store's file (`--db`, `[store] path`); unused with a PostgreSQL store.
    pub db: PathBuf,
    /// Where the store is: `--db` names a file and wins; else `[store] url`, else the path.
    pub store: Location,
}

impl Ctx {
    /// Loads the config, completes its OAuth2 tables from their providers and compiles the
    /// acknowledgement templates: every configuration error (exit 2) shows here, before
    /// anything touches the network. A missing file is fine for commands that need no
    /// mailbox, unless the user named it.
    fn load(args: &Args) -> anyhow::Result<Ctx> {
        // A config named by --config or $MAILTICKET_CONFIG must be valid; a discovered one
        // is ignored, with a warning, by `--db X tickets`, which needs nothing from it.
        let named = args.config.is_some() || std::env::var_os("MAILTICKET_CONFIG").is_some();
        let (path, found) = match discover::config_path(args.config.as_deref()) {
            Some(path) => (path, true),
            None => (PathBuf::from("mailticket.toml"), false),
        };
        let (mut config, found) = if found {
            tracing::debug!(path = %path.display(), "config file");
            match Config::load(&path) {
                Ok(config) => (config, true),
                Err(e) if !named && args.db.is_some() && args.command.reads_only() => {
                    tracing::warn!(
                        error = mailticket::error::chain_text(&e),
                        "config ignored: this command reads the store named by --db"
                    );
                    (Config::default(), false)
                }
                Err(e) => return Err(e.into()),
            }
        } else {
            (Config::default(), false)
        };
        mailticket::oauth2::provider::complete(&mut config)?;
        let ack = AckPlan::from_config(&config)?;
        let db = args.db.clone().unwrap_or_else(|| config.store.path.clone());
        let store = match (&args.db, &config.store.url) {
            (None, Some(_)) => Location::Postgres(Arc::new(config.store.clone())),
            _ => Location::File(db.clone()),
        };
        Ok(Ctx {
            config,
            quiet: args.quiet > 0,
            ack,
            config_path: path,
            config_found: found,
            db,
            store,
        })
    }

    /// The store, recording a delivery for each configured hook an event matches.
    pub fn open_store(&self) -> anyhow::Result<Store> {
        let mut store = self.store.open()?;
        store.set_routes(mailticket::hooks::deliver::routes(&self.config));
        Ok(store)
    }

    /// The lock that keeps a second `sync` or `watch` off an SQLite store; `None` for a
    /// PostgreSQL store, whose mailboxes are leased to one worker at a time instead.
    pub fn lock(&self, what: &str) -> anyhow::Result<Option<StoreLock>> {
        match self.store.file() {
            Some(db) => Ok(Some(StoreLock::acquire(db, what)?)),
            None => Ok(None),
        }
    }

    /// The store a dry run works on: a private in-memory copy of an SQLite store (it never
    /// holds the write lock), or one PostgreSQL transaction that is rolled back at the end.
    pub fn open_dry_run(&self) -> anyhow::Result<Store> {
        let mut store = match self.store.file() {
            Some(db) => Store::open_copy(db)?,
            None => self.store.open()?,
        };
        store.begin_dry_run()?;
        Ok(store)
    }

    /// The existing store, for a command that only reads it: a missing store is an error
    /// (nothing is created), a read-only one is read without writing to it.
    pub fn open_store_read(&self) -> anyhow::Result<Store> {
        Ok(self.store.open_existing()?)
    }

    /// The mailboxes named by `--mailbox` (all when none is named); a usage error when there
    /// are none or a name is unknown. Needs a config file.
    pub fn chosen_mailboxes(&self, names: &[String]) -> anyhow::Result<Vec<&MailboxConfig>> {
        self.require_config()?;
        let chosen = self.config.select_mailboxes(names).map_err(Usage)?;
        if chosen.is_empty() {
            return Err(Usage(format!(
                "{}: no [[mailbox]] configured",
                self.config_path.display()
            ))
            .into());
        }
        Ok(chosen)
    }

    pub fn require_config(&self) -> anyhow::Result<()> {
        if !self.config_found {
            return Err(Usage(format!(
                "no config file (looked for {}; write one with `mailticket init`, or pass --config)",
                discover::searched()
            ))
            .into());
        }
        Ok(())
    }
}

pub fn run(args: Args) -> anyhow::Result<u8> {
    if let Command::Init { path, force } = &args.command {
        return discover::init(path.as_deref(), *force);
    }
    if let Command::Doctor(a) = &args.command {
        return doctor::run(&args, a);
    }
    if let Command::Completions(a) = &args.command {
        return completions::completions(a);
    }
    if let Command::Man(a) = &args.command {
        return completions::man(a);
    }
    let ctx = match Ctx::load(&args) {
        Ok(ctx) => ctx,
        // An MTA only understands sysexits: until the message is stored, trouble on our
        // side is "try again later", so the MTA keeps the message queued.
        Err(e) if matches!(args.command, Command::Ingest(_)) => {
            tracing::error!(
                error = mailticket::error::chain_text(e.as_ref()),
                "cannot take the message now; the MTA keeps it and retries"
            );
            return Ok(import::EX_TEMPFAIL);
        }
        Err(e) => return Err(e),
    };
    // watch keeps the arguments to read the config again on SIGHUP
    if let Command::Watch(a) = &args.command {
        return watch::run(&args, ctx, a);
    }
    match args.command {
        // (handled above)
        Command::Init { .. }
        | Command::Doctor(_)
        | Command::Completions(_)
        | Command::Man(_)
        | Command::Watch(_) => Ok(0),
        Command::Sync(a) => sync::run(&ctx, &a),
        Command::Import(a) => import::run_import(&ctx, &a),
        Command::Ingest(a) => Ok(import::run_ingest(&ctx, &a)),
        Command::Tickets(a) => tickets::list(&ctx, &a),
        Command::Show(a) => tickets::show(&ctx, &a),
        Command::Search(a) => search::search(&ctx, &a),
        Command::Quarantine(a) => quarantine::run(&ctx, &a),
        Command::Outbox(a) => outbox::outbox(&ctx, &a),
        Command::Reply(a) => outbox::reply(&ctx, &a),
        Command::Close(a) => outbox::set_status(&ctx, &a, TicketStatus::Closed),
        Command::Reopen(a) => outbox::set_status(&ctx, &a, TicketStatus::Open),
        Command::Events(a) => events::run(&ctx, &a),
        Command::Export(a) => export::run(&ctx, &a),
        Command::Hooks(a) => hooks::run(&ctx, &a),
        Command::OAuth2(a) => oauth2::run(&ctx, &a),
        Command::Workers(a) => workers::run(&ctx, &a),
    }
}

/// The SMTP servers from `[smtp]` and each `[mailbox.smtp]`, with their passwords (or OAuth2
/// secrets) read now (a missing one is a configuration error, exit 2).
pub fn smtp(ctx: &Ctx) -> anyhow::Result<Option<Senders>> {
    // Opens the token table only when [smtp] uses an OAuth2 token endpoint.
    let tokens = mailticket::oauth2::Tokens::new(&ctx.config, &ctx.store, &[], true)?;
    smtp_with(ctx, &tokens)
}

/// The SMTP servers from `[smtp]` and each `[mailbox.smtp]`, with credentials from `tokens`
/// (which may share a token source with a mailbox).
pub fn smtp_with(
    ctx: &Ctx,
    tokens: &mailticket::oauth2::Tokens,
) -> anyhow::Result<Option<Senders>> {
    let Some(c) = &ctx.config.smtp else {
        return Ok(None);
    };
    let creds = tokens.smtp(&ctx.config)?;
    let mut senders = Senders::new(Sender::new(c, creds)?);
    for mb in &ctx.config.mailboxes {
        if let Some(own) = &mb.own_smtp {
            let creds = tokens.mailbox_smtp(&ctx.config, mb)?;
            senders.add(&mb.name, Sender::new(own, creds)?);
        }
    }
    Ok(Some(senders))
}

/// Sends the due outbox rows now, on a store thread of its own; gives the store back.
pub fn drain_now(
    store: Store,
    smtp: &Senders,
) -> anyhow::Result<(Store, mailticket::outbound::DrainReport)> {
    let (handle, join) = mailticket::store::StoreThread::spawn(store)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let report = rt.block_on(mailticket::outbound::drain(&handle, smtp));
    drop(handle);
    Ok((join.join()?, report))
}

/// One log line for a round of hook deliveries that did anything.
pub fn log_hooks(r: &mailticket::hooks::deliver::Report) {
    if r.delivered + r.deferred + r.failed > 0 || !r.errors.is_empty() {
        tracing::info!(
            delivered = r.delivered,
            deferred = r.deferred,
            failed = r.failed,
            "hook deliveries"
        );
    }
}

/// Prints `value` as pretty JSON on stdout.
pub fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    outln!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Prints a run summary as a short table on stdout: a row per source, and one for the
/// outbox when it was sent (its errors are the run's too).
pub fn print_summary(s: &mailticket::summary::RunSummary) -> anyhow::Result<()> {
    if s.dry_run {
        outln!("DRY RUN: nothing was stored and the server was left untouched");
    }
    outln!(
        "{:<24} {:>8} {:>8} {:>8} {:>10} {:>11} {:>6}",
        "SOURCE",
        "FETCHED",
        "CREATED",
        "THREADED",
        "DUPLICATES",
        "QUARANTINED",
        "ERRORS"
    );
    for m in &s.mailboxes {
        let c = &m.counts;
        outln!(
            "{:<24} {:>8} {:>8} {:>8} {:>10} {:>11} {:>6}",
            m.name,
            c.fetched,
            c.created,
            c.threaded,
            c.duplicates,
            c.quarantined,
            c.errors.len()
        );
    }
    if let Some(d) = &s.outbox {
        outln!(
            "{:<24} {:>8} {:>8} {:>8} {:>10} {:>11} {:>6}",
            format!("outbox: {} sent", d.sent),
            "-",
            "-",
            "-",
            "-",
            "-",
            s.outbox_errors()
        );
    }
    for k in &s.skipped {
        outln!(
            "{:<24} skipped: worker {} holds its lease and watches it",
            k.name,
            k.held_by
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn colors_only_on_a_terminal_without_no_color() {
        assert!(color_logs(true, None));
        assert!(color_logs(true, Some(OsStr::new(""))));
        assert!(!color_logs(true, Some(OsStr::new("1"))));
        assert!(!color_logs(false, None));
    }
}
