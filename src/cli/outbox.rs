//! `mailticket outbox`, `reply`, `close` and `reopen`: the outgoing side of a ticket.

use std::path::PathBuf;

use mailticket::store::{Dismiss, OutboxRow, OutboxStatus, Retry, Store, TicketStatus};
use mailticket::time::rfc3339;
use serde_json::json;

use super::{Ctx, Usage, drain_now, print_json};

#[derive(Debug, clap::Args)]
pub struct OutboxArgs {
    #[command(subcommand)]
    pub command: Option<OutboxCommand>,
    /// Only rows in this state
    #[arg(long, value_enum, default_value_t = OutboxFilter::All)]
    pub status: OutboxFilter,
    /// Put this failed, interrupted or deferred row back in the queue and send it now
    #[arg(long, value_name = "ID")]
    pub retry: Option<i64>,
    /// Send every due row now
    #[arg(long)]
    pub send: bool,
    /// Print JSON
    #[arg(long)]
    pub json: bool,
    /// Show at most N rows, unsent first, then the newest (0: all); when rows are left out,
    /// a line on standard error says how many
    #[arg(long, value_name = "N", default_value_t = 500)]
    pub limit: u32,
}

#[derive(Debug, clap::Subcommand)]
pub enum OutboxCommand {
    /// Stop reporting a failed row, or one stuck in `sending` (doctor, sends); `--retry`
    /// still takes it
    Dismiss {
        /// Outbox row id
        id: i64,
    },
}

/// `outbox --status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutboxFilter {
    Pending,
    Sending,
    Sent,
    Failed,
    Skipped,
    All,
}

impl OutboxFilter {
    fn status(self) -> Option<OutboxStatus> {
        match self {
            OutboxFilter::Pending => Some(OutboxStatus::Pending),
            OutboxFilter::Sending => Some(OutboxStatus::Sending),
            OutboxFilter::Sent => Some(OutboxStatus::Sent),
            OutboxFilter::Failed => Some(OutboxStatus::Failed),
            OutboxFilter::Skipped => Some(OutboxStatus::Skipped),
            OutboxFilter::All => None,
        }
    }
}

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("text").required(true).args(["body", "body_file"])))]
pub struct ReplyArgs {
    /// Ticket number
    pub id: i64,
    /// The reply's text
    #[arg(long)]
    pub body: Option<String>,
    /// Read the reply's text from this file (`-` for standard input)
    #[arg(long, value_name = "FILE")]
    pub body_file: Option<PathBuf>,
    /// Close the ticket once the reply is queued
    #[arg(long)]
    pub close: bool,
    /// Print the message that would be sent (exact bytes); queue, send and change nothing
    #[arg(long, conflicts_with = "close")]
    pub dry_run: bool,
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Ticket number
    pub id: i64,
}

impl OutboxArgs {
    /// Only the listing: nothing retried or sent.
    pub fn reads_only(&self) -> bool {
        self.retry.is_none() && !self.send && self.command.is_none()
    }
}

pub fn outbox(ctx: &Ctx, a: &OutboxArgs) -> anyhow::Result<u8> {
    let mut store = if a.reads_only() {
        ctx.open_store_read()?
    } else {
        ctx.open_store()?
    };
    if let Some(OutboxCommand::Dismiss { id }) = a.command {
        return dismiss(&mut store, id);
    }
    let mut code = 0;
    if let Some(id) = a.retry {
        match store.outbox_retry(id)? {
            Retry::Queued => {}
            Retry::NotRetryable => {
                return Err(
                    Usage(format!("outbox row {id} is not failed, pending or stuck")).into(),
                );
            }
            Retry::SendingNow(by) => {
                let pid = by.split(':').next().unwrap_or(&by);
                anyhow::bail!(
                    "outbox row {id} is being sent right now (by process {pid}); not retried, \
                     which could send it twice: look again with `mailticket outbox` once it \
                     is done"
                );
            }
        }
    }
    if a.retry.is_some() || a.send {
        let Some(smtp) = super::smtp(ctx)? else {
            return Err(Usage("no [smtp] configured to send with".into()).into());
        };
        let (s, report) = drain_now(store, &smtp)?;
        store = s;
        tracing::info!(
            sent = report.sent,
            failed = report.failed,
            deferred = report.deferred,
            uncertain = report.uncertain,
            "outbox sent"
        );
        if !report.errors.is_empty() {
            code = 1;
        }
        if report.sent + report.failed + report.deferred + report.uncertain == 0 {
            tracing::info!("nothing sent: {}", why_nothing(&store)?);
        }
    }
    list(&store, a)?;
    Ok(code)
}

/// Why a send found nothing due: what waits, until when, and what needs a person.
fn why_nothing(store: &Store) -> anyhow::Result<String> {
    let w = store.outbox_waiting(mailticket::time::now())?;
    let mut why = Vec::new();
    match w.next_at {
        Some(at) => why.push(format!(
            "nothing is due; {} row(s) wait, the next attempt at {}",
            w.later,
            rfc3339(at)
        )),
        None => why.push("nothing is due".to_owned()),
    }
    if w.failed > 0 {
        why.push(format!(
            "{} row(s) failed (`outbox --status failed`; `--retry ID` or `outbox dismiss ID`)",
            w.failed
        ));
    }
    if w.stuck > 0 {
        why.push(format!(
            "{} row(s) stuck in sending, not resent on their own (`--retry ID` once checked)",
            w.stuck
        ));
    }
    if w.next_at.is_none() && w.failed + w.stuck == 0 {
        why.push("the queue is empty".to_owned());
    }
    Ok(why.join("; "))
}

fn dismiss(store: &mut Store, id: i64) -> anyhow::Result<u8> {
    match store.outbox_dismiss(id)? {
        Dismiss::Done => {
            tracing::info!(outbox = id, "dismissed: no longer reported");
            Ok(0)
        }
        Dismiss::NotDismissable => Err(Usage(format!(
            "outbox row {id} is not failed or stuck in sending: nothing to dismiss"
        ))
        .into()),
        Dismiss::SendingNow => Err(Usage(format!(
            "outbox row {id} is being sent right now: nothing to dismiss yet"
        ))
        .into()),
    }
}

/// The NEXT column: when a `pending` row is tried next (`now` when due), else `-`.
fn next(r: &OutboxRow, now: i64) -> String {
    match r.status {
        OutboxStatus::Pending if r.next_attempt_at > now => {
            mailticket::time::local(r.next_attempt_at)
        }
        OutboxStatus::Pending => "now".to_owned(),
        _ => "-".to_owned(),
    }
}

/// Prints the queue, at most `--limit` rows, and says on standard error when rows were left
/// out.
fn list(store: &mailticket::store::Store, a: &OutboxArgs) -> anyhow::Result<()> {
    let (rows, total) = store.outbox_list((a.limit > 0).then_some(a.limit), a.status.status())?;
    let now = mailticket::time::now();
    if (rows.len() as u64) < total {
        tracing::warn!(
            shown = rows.len(),
            total,
            "outbox: rows left out (unsent first, then the newest are shown); `--limit 0` shows all"
        );
    }
    if a.json {
        let v: Vec<_> = rows
            .iter()
            .map(|r| {
                json!({"id": r.id, "ticket": r.ticket_id, "kind": r.kind, "status": r.status,
                       "mailbox": r.mailbox,
                       "to": r.to, "reason": r.reason, "smtp_reply": r.smtp_reply,
                       "attempts": r.attempts, "created_at": rfc3339(r.created_at),
                       "updated_at": rfc3339(r.updated_at), "sending_now": r.sending_now,
                       "next_attempt_at": (r.status == OutboxStatus::Pending)
                           .then(|| rfc3339(r.next_attempt_at.max(r.created_at))),
                       "dismissed": r.dismissed_at > 0,
                       "detail": detail(r)})
            })
            .collect();
        print_json(&v)?;
        return Ok(());
    }
    outln!(
        "{:>5}  {:>6}  {:<5}  {:<8}  {:<30}  {:<16}  DETAIL",
        "ID",
        "TICKET",
        "KIND",
        "STATUS",
        "TO",
        "NEXT"
    );
    for r in &rows {
        outln!(
            "{:>5}  {:>6}  {:<5}  {:<8}  {:<30}  {:<16}  {}",
            r.id,
            r.ticket_id,
            r.kind.as_str(),
            r.status.as_str(),
            r.to,
            next(r, now),
            detail(r)
        );
    }
    Ok(())
}

/// What a row's DETAIL column says: the server's reply, the reason, or for a row in
/// `sending` whether it is going out right now or stuck, and how to retry it.
fn detail(r: &OutboxRow) -> String {
    let text = match (r.status, r.sending_now) {
        (OutboxStatus::Sending, true) => "being sent right now".to_owned(),
        (OutboxStatus::Sending, false) if r.reason.is_empty() => format!(
            "interrupted while sending: it may have been delivered; check with the recipient, \
             then `mailticket outbox --retry {}` to send it again",
            r.id
        ),
        _ if r.smtp_reply.is_empty() => r.reason.clone(),
        _ => r.smtp_reply.clone(),
    };
    if r.dismissed_at > 0 {
        format!("(dismissed) {text}")
    } else {
        text
    }
}

pub fn reply(ctx: &Ctx, a: &ReplyArgs) -> anyhow::Result<u8> {
    if ctx.config.smtp.is_none() {
        return Err(Usage(format!(
            "no [smtp] in {} to send with",
            ctx.config_path.display()
        ))
        .into());
    }
    let body = match (&a.body, &a.body_file) {
        (Some(b), _) => b.clone(),
        (None, Some(f)) if f.as_os_str() == "-" => std::io::read_to_string(std::io::stdin())?,
        (None, Some(f)) => {
            std::fs::read_to_string(f).map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?
        }
        (None, None) => return Err(Usage("--body or --body-file".into()).into()),
    };
    if body.trim().is_empty() {
        return Err(Usage("the reply is empty: nothing sent".into()).into());
    }
    let smtp = super::smtp(ctx)?;
    let mut store = ctx.open_store()?;
    let Some((ticket, _)) = store.ticket(a.id)? else {
        return Err(Usage(format!("no ticket {}", a.id)).into());
    };
    // The identity of the mailbox the ticket's mail arrived in (checked when loaded).
    let from = ctx.config.from_for(&ticket.mailbox).unwrap_or_default();
    let from = mailticket::outbound::parse_mailbox(from)
        .ok_or_else(|| Usage(format!("`from = {from:?}` is not an address")))?;
    let tag = mailticket::thread::tag_text(&ctx.config.threading.tag, a.id);
    let own = ctx.config.own_addresses();
    let reply = mailticket::outbound::reply::Reply {
        ticket: a.id,
        tag: &tag,
        body: &body,
        from: &from,
        mailbox: &ticket.mailbox,
        own: &own,
        close: a.close,
    };
    if a.dry_run {
        let out = mailticket::outbound::reply::preview(&mut store, &reply)?;
        std::io::Write::write_all(&mut std::io::stdout().lock(), &out.raw)?;
        return Ok(0);
    }
    let id = mailticket::outbound::reply::queue(&mut store, &reply)?;
    tracing::info!(ticket = a.id, outbox = id, "reply queued");
    let Some(smtp) = smtp else { return Ok(0) };
    let (_store, report) = drain_now(store, &smtp)?;
    if report.errors.is_empty() {
        Ok(0)
    } else {
        for e in &report.errors {
            tracing::error!(error = %e, "sending");
        }
        Ok(1)
    }
}

pub fn set_status(ctx: &Ctx, a: &StatusArgs, status: TicketStatus) -> anyhow::Result<u8> {
    let mut store = ctx.open_store()?;
    if !store.set_status(a.id, status)? {
        return Err(Usage(format!("no ticket {}", a.id)).into());
    }
    tracing::info!(ticket = a.id, status = status.as_str(), "ticket updated");
    Ok(0)
}
