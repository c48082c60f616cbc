//! `mailticket quarantine [list|show|export|retry|delete]`: the messages that could not be
//! parsed, kept byte for byte: look at them, take them out, run them through the pipeline
//! again after an upgrade, or drop them.

use std::io::Write;
use std::path::PathBuf;

use mailticket::classify::Identity;
use mailticket::pipeline::{Plan, Rules};
use mailticket::quarantine::Retried;
use mailticket::store::{Outcome, QuarantineRow, Store};
use mailticket::time::rfc3339;
use serde_json::{Value, json};

use super::tickets::padded;
use super::{Ctx, Usage, print_json};

#[derive(Debug, clap::Args)]
pub struct QuarantineArgs {
    #[command(subcommand)]
    pub command: Option<QuarantineCommand>,
    /// Print JSON (the list, when no subcommand is given)
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Subcommand)]
pub enum QuarantineCommand {
    /// List the quarantined messages, newest first (the default)
    List {
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// One quarantined message: where it came from, why, its size and its header
    Show {
        /// Quarantine id (from `quarantine list`)
        id: i64,
        /// Print JSON
        #[arg(long, conflicts_with = "raw")]
        json: bool,
        /// Print the kept bytes exactly as received, nothing else
        #[arg(long)]
        raw: bool,
    },
    /// Write a quarantined message's bytes exactly as received (an .eml file)
    Export {
        /// Quarantine id
        id: i64,
        /// Write here instead of standard output (an existing file is never replaced)
        #[arg(long, short, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Run quarantined messages through the pipeline again (after an upgrade): those that
    /// parse now become tickets and leave the quarantine; exit 1 when some stay
    #[command(group(clap::ArgGroup::new("which").required(true).args(["id", "all"])))]
    Retry {
        /// Quarantine id
        id: Option<i64>,
        /// Every quarantined message
        #[arg(long)]
        all: bool,
        /// Acknowledge new requests as `sync` would (off by default, as for `import`)
        #[arg(long)]
        ack: bool,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Delete a quarantined message for good (needs --yes)
    Delete {
        /// Quarantine id
        id: i64,
        /// Yes, delete it: the quarantine holds the only copy of its bytes
        #[arg(long)]
        yes: bool,
    },
}

impl QuarantineArgs {
    /// Only looking: nothing retried or deleted.
    pub fn reads_only(&self) -> bool {
        !matches!(
            self.command,
            Some(QuarantineCommand::Retry { .. } | QuarantineCommand::Delete { .. })
        )
    }
}

pub fn run(ctx: &Ctx, a: &QuarantineArgs) -> anyhow::Result<u8> {
    match &a.command {
        None => list(ctx, a.json),
        Some(QuarantineCommand::List { json }) => list(ctx, *json || a.json),
        Some(QuarantineCommand::Show { id, json, raw }) => show(ctx, *id, *json || a.json, *raw),
        Some(QuarantineCommand::Export { id, output }) => export(ctx, *id, output.as_ref()),
        Some(QuarantineCommand::Retry { id, all, ack, json }) => {
            retry(ctx, (*id, *all), *ack, *json || a.json)
        }
        Some(QuarantineCommand::Delete { id, yes }) => delete(ctx, *id, *yes),
    }
}

fn row_json(q: &QuarantineRow) -> Value {
    json!({"id": q.id, "source": q.source, "uid": q.uid, "error": q.error,
           "size": q.size, "received_at": rfc3339(q.received_at), "mailbox": q.mailbox})
}

fn list(ctx: &Ctx, json: bool) -> anyhow::Result<u8> {
    let store = ctx.open_store_read()?;
    let rows = store.quarantined()?;
    if json {
        print_json(&rows.iter().map(row_json).collect::<Vec<_>>())?;
        return Ok(0);
    }
    outln!(
        "{:>5}  {:<30}  {:>6}  {:>8}  ERROR",
        "ID",
        "SOURCE",
        "UID",
        "SIZE"
    );
    for q in &rows {
        outln!(
            "{:>5}  {}  {:>6}  {:>8}  {}",
            q.id,
            padded(&q.source, 30),
            q.uid,
            q.size,
            q.error
        );
    }
    Ok(0)
}

/// Quarantined message `id` and how many of its bytes are kept; a usage error (exit 2)
/// when there is none.
fn find(store: &Store, id: i64) -> anyhow::Result<(QuarantineRow, u64)> {
    store.quarantine_entry(id)?.ok_or_else(|| {
        Usage(format!(
            "no quarantined message {id} (see `mailticket quarantine`)"
        ))
        .into()
    })
}

/// Writes the kept bytes of quarantined message `id` to `out` (named `to` in an error)
/// piece by piece: a large one is never held whole.
fn copy_out(store: &Store, id: i64, out: &mut impl Write, to: &str) -> anyhow::Result<()> {
    let mut failed = None;
    store.quarantined_pieces(id, |piece| match out.write_all(piece) {
        Ok(()) => Ok(true),
        Err(e) => {
            failed = Some(e);
            Ok(false)
        }
    })?;
    match failed.map_or_else(|| out.flush(), Err) {
        Ok(()) => Ok(()),
        Err(e) => Err(anyhow::anyhow!("{to}: {e}")),
    }
}

/// The first bytes of quarantined message `id`: enough for [`header_text`].
fn head_of(store: &Store, id: i64) -> anyhow::Result<Vec<u8>> {
    let mut head = Vec::new();
    store.quarantined_pieces(id, |piece| {
        head.extend_from_slice(piece);
        Ok(head.len() <= HEAD_SHOWN)
    })?;
    Ok(head)
}

/// At most this much of a quarantined message's header is shown.
const HEAD_SHOWN: usize = 64 << 10;

/// The header block of `raw` (up to the first blank line), at most 64 KiB, as text.
fn header_text(raw: &[u8]) -> String {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .or_else(|| raw.windows(2).position(|w| w == b"\n\n"))
        .unwrap_or(raw.len());
    let head = raw.get(..end.min(HEAD_SHOWN)).unwrap_or(raw);
    String::from_utf8_lossy(head).into_owned()
}

fn show(ctx: &Ctx, id: i64, json: bool, raw: bool) -> anyhow::Result<u8> {
    let store = ctx.open_store_read()?;
    let (q, kept) = find(&store, id)?;
    if raw {
        copy_out(&store, id, &mut std::io::stdout().lock(), "standard output")?;
        return Ok(0);
    }
    let header_only = i64::try_from(kept).unwrap_or(i64::MAX) < q.size;
    let head = header_text(&head_of(&store, id)?);
    if json {
        let mut v = row_json(&q);
        v["kept"] = json!(kept);
        v["header_only"] = json!(header_only);
        v["header"] = json!(head);
        print_json(&v)?;
        return Ok(0);
    }
    outln!("Quarantined #{}  from {}  (uid {})", q.id, q.source, q.uid);
    outln!("Received: {}", mailticket::time::local_full(q.received_at));
    outln!("Reason:   {}", q.error);
    let kept = if header_only {
        format!(" (only the header, {kept} bytes, was kept)")
    } else {
        String::new()
    };
    outln!("Size:     {} bytes{kept}", q.size);
    outln!();
    for line in head.lines() {
        outln!("   {line}");
    }
    Ok(0)
}

fn export(ctx: &Ctx, id: i64, output: Option<&PathBuf>) -> anyhow::Result<u8> {
    let store = ctx.open_store_read()?;
    let (_, kept) = find(&store, id)?;
    let Some(path) = output else {
        copy_out(&store, id, &mut std::io::stdout().lock(), "standard output")?;
        return Ok(0);
    };
    let mut f = match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(Usage(format!("{} exists already: not replaced", path.display())).into());
        }
        Err(e) => return Err(anyhow::anyhow!("{}: {e}", path.display())),
    };
    let mut out = std::io::BufWriter::new(&mut f);
    copy_out(&store, id, &mut out, &path.display().to_string())?;
    drop(out);
    f.sync_all()
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    tracing::info!(quarantine = id, path = %path.display(), bytes = kept, "exported");
    Ok(0)
}

fn retry(ctx: &Ctx, (id, all): (Option<i64>, bool), ack: bool, json: bool) -> anyhow::Result<u8> {
    let plan_ack = if ack {
        let plan = ctx.ack.clone();
        if plan.is_none() {
            return Err(Usage(format!(
                "--ack needs [ack] enabled = true and an [smtp] server in {}",
                ctx.config_path.display()
            ))
            .into());
        }
        plan
    } else {
        None
    };
    let smtp = if ack { super::smtp(ctx)? } else { None };
    let mut store = ctx.open_store()?;
    let ids = match (id, all) {
        (Some(id), _) => {
            find(&store, id)?;
            vec![id]
        }
        (None, _) => store.quarantine_ids()?,
    };
    let me = Identity {
        addresses: ctx.config.own_addresses(),
    };
    let rules = Rules::from_config(&ctx.config);
    let plan = Plan {
        rules: &rules,
        ack: plan_ack.as_deref(),
        progress: None,
    };
    let mut results = Vec::new();
    for id in ids {
        let r = mailticket::quarantine::retry(&mut store, &me, id, plan)?;
        results.push((id, r));
    }
    if let Some(smtp) = &smtp {
        let (_store, report) = super::drain_now(store, smtp)?;
        for e in &report.errors {
            tracing::error!(error = %e, "sending");
        }
    }
    let stayed = results
        .iter()
        .filter(|(_, r)| !matches!(r, Retried::Taken(_)))
        .count();
    print_retried(&results, json)?;
    Ok(if stayed > 0 { 1 } else { 0 })
}

/// One line (or JSON object) per retried message: what it became.
fn print_retried(results: &[(i64, Retried)], json: bool) -> anyhow::Result<()> {
    let word = |r: &Retried| -> (&'static str, Option<i64>, String) {
        match r {
            Retried::Taken(Outcome::Created(t)) => ("created", Some(*t), String::new()),
            Retried::Taken(Outcome::Threaded(t)) => ("threaded", Some(*t), String::new()),
            Retried::Taken(Outcome::Duplicate(t)) => ("duplicate", Some(*t), String::new()),
            Retried::Taken(Outcome::Quarantined(_)) | Retried::StillFailing(_) => {
                let why = match r {
                    Retried::StillFailing(why) => why.clone(),
                    _ => String::new(),
                };
                ("quarantined", None, why)
            }
            Retried::HeaderOnly => (
                "quarantined",
                None,
                "only its header was kept (too large to fetch): nothing to retry".into(),
            ),
            Retried::Missing => ("missing", None, String::new()),
        }
    };
    if json {
        let v: Vec<Value> = results
            .iter()
            .map(|(id, r)| {
                let (result, ticket, error) = word(r);
                json!({"id": id, "result": result, "ticket": ticket, "error": error})
            })
            .collect();
        return print_json(&v);
    }
    outln!("{:>5}  {:<11}  {:>6}  DETAIL", "ID", "RESULT", "TICKET");
    for (id, r) in results {
        let (result, ticket, error) = word(r);
        let ticket = ticket.map_or("-".to_owned(), |t| t.to_string());
        outln!("{id:>5}  {result:<11}  {ticket:>6}  {error}");
    }
    Ok(())
}

fn delete(ctx: &Ctx, id: i64, yes: bool) -> anyhow::Result<u8> {
    if !yes {
        return Err(Usage(format!(
            "deleting quarantined message {id} loses the only copy of its bytes: add --yes \
             (`quarantine export {id}` keeps a copy)"
        ))
        .into());
    }
    let mut store = ctx.open_store()?;
    if !store.quarantine_delete(id)? {
        return Err(Usage(format!(
            "no quarantined message {id} (see `mailticket quarantine`)"
        ))
        .into());
    }
    tracing::info!(quarantine = id, "deleted");
    Ok(0)
}
