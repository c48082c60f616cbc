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
    /// Ticket number
    pub id: i64,
    /// Print JSON
    #[arg(long)]
    pub json: bool,
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

pub fn show(ctx: &Ctx, a: &ShowArgs) -> anyhow::Result<u8> {
    let store = ctx.open_store_read()?;
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
