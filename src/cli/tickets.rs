//! `mailticket tickets` and `show`: reading the store.

use std::path::PathBuf;

use mailticket::store::MessageRow;
use mailticket::store::view::{message_json, ticket_json};
use mailticket::time::local_full;
use serde_json::Value;

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
    /// Ticket number, or the Message-ID of one of its messages
    #[arg(value_name = "ID-OR-MESSAGE-ID")]
    pub id: String,
    /// Print JSON
    #[arg(long)]
    pub json: bool,
    /// Print each message's whole text, quoted history and signature included
    #[arg(long, conflicts_with_all = ["json", "raw"])]
    pub full: bool,
    /// Print the stored raw message, byte for byte (a ticket number only when the ticket
    /// holds one message)
    #[arg(long, conflicts_with = "json")]
    pub raw: bool,
    /// Save the attachments into this folder (names from the mail are made safe)
    #[arg(long, value_name = "DIR")]
    pub save_attachments: Option<PathBuf>,
}

/// Cuts `s` to `n` terminal columns for a table cell (a CJK character or an emoji takes two),
/// ending in "…" when cut.
pub(super) fn cell(s: &str, n: usize) -> String {
    use unicode_width::{UnicodeWidthChar, UnicodeWidthStr};
    if s.width() <= n {
        return s.to_owned();
    }
    let mut out = String::new();
    let mut width = 0;
    for c in s.chars() {
        width += c.width().unwrap_or(0);
        if width > n.saturating_sub(1) {
            break;
        }
        out.push(c);
    }
    out.push('…');
    out
}

/// [`cell`], padded with spaces to exactly `n` columns (`{:<n}` pads by characters, which
/// misaligns wide characters).
pub(super) fn padded(s: &str, n: usize) -> String {
    let mut out = cell(s, n);
    let width = unicode_width::UnicodeWidthStr::width(out.as_str());
    out.push_str(&" ".repeat(n.saturating_sub(width)));
    out
}

pub fn list(ctx: &Ctx, a: &TicketsArgs) -> anyhow::Result<u8> {
    let store = ctx.open_store_read()?;
    let rows = store.tickets_where(&a.filters.filter(a.status, None))?;
    print_tickets(&rows, a.filters.json)?;
    Ok(0)
}

/// What `show` was asked for: a ticket, or one message by its Message-ID.
enum Target {
    Ticket(i64),
    Message(String),
}

impl Target {
    fn parse(s: &str) -> Target {
        match s.trim().parse::<i64>() {
            Ok(n) => Target::Ticket(n),
            Err(_) => Target::Message(
                s.trim()
                    .trim_start_matches('<')
                    .trim_end_matches('>')
                    .to_owned(),
            ),
        }
    }
}

pub fn show(ctx: &Ctx, a: &ShowArgs) -> anyhow::Result<u8> {
    let store = ctx.open_store_read()?;
    let target = Target::parse(&a.id);
    let id = match &target {
        Target::Ticket(n) => *n,
        Target::Message(m) => store
            .ticket_with_message(m)?
            .ok_or_else(|| Usage(format!("no message with Message-ID <{m}>")))?,
    };
    let Some((t, messages)) = store.ticket(id)? else {
        return Err(Usage(format!("no ticket {id}")).into());
    };
    if a.raw {
        return print_raw(&store, &target, &messages);
    }
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
        print_message(m, a.full)?;
    }
    Ok(0)
}

/// One message of `show`: a header line, reasons, attachments, then what the sender wrote
/// now (or, with `full`, the whole text) and how much was left out.
fn print_message(m: &MessageRow, full: bool) -> anyhow::Result<()> {
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
            "   {}: {} ({}, {} bytes)",
            if att.inline { "inline" } else { "attachment" },
            att.filename,
            att.content_type,
            att.size
        );
    }
    outln!();
    let split = mailticket::quote::split(&m.text);
    let text = if full {
        m.text.as_str()
    } else {
        split.new.as_str()
    };
    for line in text.lines() {
        outln!("   {line}");
    }
    if !full && let Some(note) = hidden_note(&split) {
        outln!();
        outln!("   [… {note} hidden; show --full to see them]");
    }
    Ok(())
}

/// "12 quoted lines and a 3-line signature", or `None` when nothing was hidden.
fn hidden_note(s: &mailticket::quote::Split) -> Option<String> {
    let lines = |n: usize| {
        if n == 1 {
            "1 line".to_owned()
        } else {
            format!("{n} lines")
        }
    };
    match (s.quoted_lines, s.signature_lines) {
        (0, 0) => None,
        (q, 0) => Some(format!("{} of quoted history", lines(q))),
        (0, g) => Some(format!("{} of signature", lines(g))),
        (q, g) => Some(format!(
            "{} of quoted history and {} of signature",
            lines(q),
            lines(g)
        )),
    }
}

/// `show --raw`: the stored bytes of the message named by its Message-ID, or of a ticket's
/// only message, to stdout exactly as stored (decompressed).
fn print_raw(
    store: &mailticket::store::Store,
    target: &Target,
    messages: &[MessageRow],
) -> anyhow::Result<u8> {
    use std::io::Write;
    let chosen = match (target, messages) {
        (Target::Message(id), _) => messages.iter().find(|m| m.message_id == *id),
        (Target::Ticket(_), [one]) => Some(one),
        (Target::Ticket(_), _) => None,
    };
    let Some(m) = chosen else {
        let ids: Vec<String> = messages
            .iter()
            .map(|m| format!("<{}>", m.message_id))
            .collect();
        return Err(Usage(format!(
            "{} names {} messages: name one by its Message-ID ({})",
            match target {
                Target::Message(id) => format!("<{id}>"),
                Target::Ticket(n) => format!("ticket {n}"),
            },
            messages.len(),
            ids.join(", ")
        ))
        .into());
    };
    // A message kept in parts is written out as it is decompressed, never held whole.
    let mut raw = store
        .raw_reader(m.id)?
        .ok_or_else(|| anyhow::anyhow!("message <{}>: its raw bytes are gone", m.message_id))?;
    let mut out = std::io::stdout().lock();
    std::io::copy(&mut raw, &mut out)
        .and_then(|_| out.flush())
        .map_err(|e| anyhow::anyhow!("message <{}>: {e}", m.message_id))?;
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
#[cfg(test)]
mod tests {
    use super::*;
    use unicode_width::UnicodeWidthStr;

    #[test]
    fn cells_are_cut_and_padded_by_terminal_columns() {
        assert_eq!(cell("short", 10), "short");
        assert_eq!(cell("abcdefghijkl", 5), "abcd…");
        // Each of these takes two columns: 4 of them and the "…" fill 9 of 10.
        let cut = cell("日本語のメールです", 10);
        assert_eq!(cut, "日本語の…");
        assert!(cut.width() <= 10);
        for s in [
            "日本語のメールです",
            "Zoë",
            "📦📦📦📦📦📦📦📦",
            "plain text that is long",
        ] {
            assert_eq!(padded(s, 12).width(), 12, "{s}");
        }
    }
}
