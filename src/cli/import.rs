//! `mailticket import` and `mailticket ingest`: messages from files and from stdin.

use std::io::Read;
use std::path::PathBuf;

use mailticket::classify::Identity;
use mailticket::import::import_path;
use mailticket::pipeline::{Plan, Rules, process, process_spooled};
use mailticket::spool::{SPOOL_OVER, Spool};
use mailticket::store::{Origin, Outcome};
use mailticket::summary::RunSummary;

use super::{Ctx, print_json, print_summary};

#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// .eml files, mbox files, Maildir folders
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// Print the summary as JSON
    #[arg(long)]
    pub json: bool,
    /// Acknowledge new requests as `sync` would (off by default: an archive must not mail
    /// hundreds of customers)
    #[arg(long)]
    pub ack: bool,
}

#[derive(Debug, clap::Args)]
pub struct IngestArgs {
    /// The mailbox this message was delivered to (recorded on a new ticket)
    #[arg(long, value_name = "NAME")]
    pub mailbox: Option<String>,
}

pub fn run_import(ctx: &Ctx, a: &ImportArgs) -> anyhow::Result<u8> {
    let (ack, smtp) = if a.ack {
        let ack = ctx.ack.clone();
        if ack.is_none() {
            return Err(super::Usage(format!(
                "--ack needs [ack] enabled = true and an [smtp] server in {}",
                ctx.config_path.display()
            ))
            .into());
        }
        (ack, super::smtp(ctx)?)
    } else {
        (None, None)
    };
    let mut store = ctx.open_store()?;
    let me = Identity {
        addresses: ctx.config.own_addresses(),
    };
    let rules = Rules::from_config(&ctx.config);
    let mut summary = RunSummary::default();
    let progress = std::sync::Arc::new(mailticket::progress::Progress::default());
    let line = super::progress::ProgressLine::start("import", &progress, ctx.quiet);
    for p in &a.paths {
        let plan = Plan {
            rules: &rules,
            ack: ack.as_deref(),
            progress: Some(&progress),
        };
        summary.push(import_path(&mut store, &me, p, plan));
    }
    drop(line);
    if let Some(smtp) = &smtp {
        let (_store, report) = super::drain_now(store, smtp)?;
        summary.push_drain(report);
    }
    summary.log("import");
    if a.json {
        print_json(&summary)?;
    } else if !ctx.quiet || summary.failed() {
        print_summary(&summary)?;
    }
    Ok(if summary.failed() { 1 } else { 0 })
}

/// sysexits(3): success, bad input, try again later.
const EX_OK: u8 = 0;
const EX_DATAERR: u8 = 65;
pub const EX_TEMPFAIL: u8 = 75;

/// Never fails: an MTA only understands the exit status. Trouble on our side (config, store)
/// is EX_TEMPFAIL so the MTA keeps the message and retries; input with nothing to keep is
/// EX_DATAERR.
/// `ingest --mailbox NAME` with a NAME no `[[mailbox]]` has: warned about, and the message
/// stored all the same (the MTA only needs to know it is safe).
fn warn_unknown_mailbox(ctx: &Ctx, name: Option<&str>) {
    if let Some(name) = name
        && !ctx.config.mailboxes.iter().any(|m| m.name == name)
    {
        tracing::warn!(
            mailbox = %name,
            config = %ctx.config_path.display(),
            "ingest --mailbox names no [[mailbox]] of the config: the ticket gets this name, \
             but no mailbox's identity (from, smtp, ack texts)"
        );
    }
}

pub fn run_ingest(ctx: &Ctx, a: &IngestArgs) -> u8 {
    // Up to SPOOL_OVER bytes in memory; a larger message goes on through a spool file once
    // the store (beside which it lies) is open, and is never held whole.
    let mut stdin = std::io::stdin().lock();
    let mut raw = Vec::new();
    if let Err(e) = (&mut stdin).take(SPOOL_OVER + 1).read_to_end(&mut raw) {
        tracing::error!(error = %e, "reading standard input");
        return EX_TEMPFAIL;
    }
    let large = raw.len() as u64 > SPOOL_OVER;
    if !large && raw.iter().all(u8::is_ascii_whitespace) {
        tracing::error!("standard input is empty: no message");
        return EX_DATAERR;
    }
    let mut store = match ctx.open_store() {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(
                error = mailticket::error::chain_text(e.as_ref()),
                "cannot open the store"
            );
            return EX_TEMPFAIL;
        }
    };
    warn_unknown_mailbox(ctx, a.mailbox.as_deref());
    let me = Identity {
        addresses: ctx.config.own_addresses(),
    };
    let origin = Origin::unplaced("ingest", a.mailbox.clone().unwrap_or_default());
    // An acknowledgement is queued with the ticket and sent right away; if sending fails it
    // waits in the outbox for the next `sync`, `watch` or `outbox --send`.
    let (ack, smtp) = match super::smtp(ctx) {
        Ok(s) => (ctx.ack.clone(), s),
        Err(e) => {
            tracing::error!(
                error = mailticket::error::chain_text(e.as_ref()),
                "[smtp] settings"
            );
            return EX_TEMPFAIL;
        }
    };
    let spooled = large.then(|| spool_input(&store.spool_dir(), &raw, &mut stdin));
    let spool = match spooled.transpose() {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "reading standard input");
            return EX_TEMPFAIL;
        }
    };
    let rules = Rules::from_config(&ctx.config);
    let plan = Plan {
        rules: &rules,
        ack: ack.as_deref(),
        progress: None,
    };
    let now = mailticket::time::now();
    let stored = match spool {
        Some(spool) => process_spooled(&mut store, &me, spool, &origin, now, plan),
        None => process(&mut store, &me, &raw, &origin, now, plan),
    };
    if let (Some(smtp), true) = (&smtp, stored.as_ref().is_ok_and(|s| s.acked)) {
        match super::drain_now(store, smtp) {
            Ok((_, report)) if report.errors.is_empty() => {}
            Ok((_, report)) => {
                tracing::warn!(errors = ?report.errors, "acknowledgement not sent yet")
            }
            Err(e) => tracing::warn!(
                error = mailticket::error::chain_text(e.as_ref()),
                "acknowledgement not sent yet"
            ),
        }
    }
    reported(stored.map(|s| s.outcome))
}

/// Logs what became of the ingested message; its exit status.
fn reported(outcome: mailticket::error::Result<Outcome>) -> u8 {
    match outcome {
        Ok(Outcome::Created(t)) => tracing::info!(ticket = t, "created ticket"),
        Ok(Outcome::Threaded(t)) => tracing::info!(ticket = t, "added to ticket"),
        Ok(Outcome::Duplicate(t)) => tracing::info!(ticket = t, "already stored"),
        Ok(Outcome::Quarantined(q)) => {
            tracing::warn!(quarantine = q, "not parseable, kept in the quarantine")
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot store the message");
            return EX_TEMPFAIL;
        }
    }
    EX_OK
}

/// A spool file in `dir` holding `head` and then the rest of `input`.
fn spool_input(
    dir: &std::path::Path,
    head: &[u8],
    input: &mut impl Read,
) -> mailticket::error::Result<Spool> {
    let mut spool = Spool::create(dir)?;
    spool.append(head)?;
    spool.append_from(std::path::Path::new("standard input"), input)?;
    Ok(spool)
}
