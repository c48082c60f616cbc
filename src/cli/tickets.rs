//! `mailticket tickets`, `show` and `quarantine`: reading the store.

use std::path::PathBuf;

use mailticket::store::MessageRow;
use mailticket::store::view::{message_json, ticket_json};
use mailticket::time::{local_full, rfc3339};
use serde_json::{Value, json};

use super::search::{FilterArgs, StatusFilter, print_tickets};
use super::{Ctx, Usage, print_json};

#[derive(Debug, clap::Args)]
pub struct TicketsArgs {
    /// Which tickets
    #[arg(long, value_enum, default_value_t = StatusFilter::Open)]
    pub status: StatusFilter,
    #[command(flatten)]
    pub filters: FilterArgs,
}

#[derive(Debug, clap::Args)]
pub struct ShowArgs {
    /// Ticket number
    pub id: i64,
    /// Print JSON
    #[arg(long)]
    pub json: bool,
    /// Save the attachments into this folder (names from the mail are made safe)
    #[arg(long, value_name = "DIR")]
    pub save_attachments: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct QuarantineArgs {
    /// Print JSON
    #[arg(long)]
    pub json: bool,
}

/// Cuts `s` to `n` characters for a table cell.
pub fn cell(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(n.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

pub fn list(ctx: &Ctx, a: &TicketsArgs) -> anyhow::Result<u8> {
    let store = ctx.open_store()?;
    let rows = store.tickets_where(&a.filters.filter(a.status, None))?;
    print_tickets(&rows, a.filters.json)?;
    Ok(0)
}

pub fn show(ctx: &Ctx, a: &ShowArgs) -> anyhow::Result<u8> {
    let store = ctx.open_store()?;
    let Some((t, messages)) = store.ticket(a.id)? else {
        return Err(Usage(format!("no ticket {}", a.id)).into());
    };
    if let Some(dir) = &a.save_attachments {
        save_attachments(&store, &messages, dir)?;
    }
    if a.json {
        let mut v = ticket_json(&t);
        v["messages"] = Value::Array(messages.iter().map(message_json).collect());
        print_json(&v)?;
        return Ok(0);
    }
    outln!("Ticket #{}  [{}]  {}", t.id, t.status, t.subject);
    outln!("Customer: {} <{}>", t.customer_name, t.customer);
    outln!(
        "Created:  {}   Updated: {}",
        local_full(t.created_at),
        local_full(t.updated_at)
    );
    for m in &messages {
        outln!();
        outln!(
            "── {} {}  {}  from {} ({})",
            m.direction,
            local_full(m.date),
            m.subject,
            m.from,
            m.kind
        );
        if !m.reasons.is_empty() {
            outln!("   reasons: {}", m.reasons.join("; "));
        }
        for att in &m.attachments {
            outln!(
                "   attachment: {} ({}, {} bytes)",
                att.filename,
                att.content_type,
                att.size
            );
        }
        outln!();
        for line in m.text.lines() {
            outln!("   {line}");
        }
    }
    Ok(0)
}

/// Writes each attachment as DIR/NAME; a name used twice gets a numbered suffix. The
/// content comes from the stored raw message, which is the one copy the store keeps.
fn save_attachments(
    store: &mailticket::store::Store,
    messages: &[MessageRow],
    dir: &std::path::Path,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    for m in messages.iter().filter(|m| !m.attachments.is_empty()) {
        let Some(raw) = store.raw(m.id)? else {
            continue;
        };
        let found = mailticket::message::extract_attachments(&raw)
            .map_err(|e| anyhow::anyhow!("message {}: {e}", m.message_id))?;
        for (att, data) in &found {
            // Names were made safe when parsed; the check costs nothing to repeat.
            let name = mailticket::message::safe_filename(&att.filename);
            let path = write_new(dir, &name, data)?;
            tracing::info!(path = %path.display(), "saved attachment");
        }
    }
    Ok(())
}

/// `O_NOFOLLOW` on Linux (x86_64, aarch64 and most others): a final symlink is an error.
const O_NOFOLLOW: i32 = 0o400_000;

/// Writes `data` to a file in `dir` that did not exist before, named `name`, else `2-name`,
/// `3-name`, ... The file is created with create-new semantics (`O_CREAT | O_EXCL`, plus
/// `O_NOFOLLOW`): a name that is taken, by a file or by a link planted there (even one that
/// points nowhere), is never opened, so nothing is written outside `dir` or over a file.
fn write_new(dir: &std::path::Path, name: &str, data: &[u8]) -> anyhow::Result<std::path::PathBuf> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    for n in 1..=1000 {
        let path = match n {
            1 => dir.join(name),
            n => dir.join(format!("{n}-{name}")),
        };
        let opened = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(O_NOFOLLOW)
            .open(&path);
        match opened {
            Ok(mut f) => {
                f.write_all(data)
                    .and_then(|()| f.sync_all())
                    .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
                return Ok(path);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(anyhow::anyhow!("{}: {e}", path.display())),
        }
    }
    Err(anyhow::anyhow!(
        "{}: 1000 files named like {name} exist already",
        dir.display()
    ))
}

pub fn quarantine(ctx: &Ctx, a: &QuarantineArgs) -> anyhow::Result<u8> {
    let store = ctx.open_store()?;
    let rows = store.quarantined()?;
    if a.json {
        let v: Vec<Value> = rows
            .iter()
            .map(|q| {
                json!({"id": q.id, "source": q.source, "uid": q.uid, "error": q.error,
                       "size": q.size, "received_at": rfc3339(q.received_at)})
            })
            .collect();
        print_json(&v)?;
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
            "{:>5}  {:<30}  {:>6}  {:>8}  {}",
            q.id,
            cell(&q.source, 30),
            q.uid,
            q.size,
            q.error
        );
    }
    Ok(0)
}
