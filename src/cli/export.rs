//! `mailticket export`: the stored messages back out, so nothing is locked inside the store:
//! `eml` (one file per message, byte for byte), `mbox` (mboxrd: `From ` lines quoted with
//! `>`, so a reader that unquotes gets the bytes back) or `jsonl` (one ticket per line, as
//! `show --json` prints it).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use mailticket::store::view::{message_json, ticket_json};
use mailticket::store::{MessageRow, Store, TicketRow};

use super::{Ctx, Usage};

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Format {
    /// A folder with one .eml file per message (TICKET-ROW.eml), the exact bytes
    Eml,
    /// One mbox file (mboxrd)
    Mbox,
    /// One JSON line per ticket, as `show --json` prints it
    Jsonl,
}

#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// Only this ticket (repeatable; default: every ticket)
    #[arg(long = "ticket", value_name = "ID")]
    pub tickets: Vec<i64>,
    /// What to write
    #[arg(long, value_enum, default_value_t = Format::Eml)]
    pub format: Format,
    /// Where: a folder for eml (created), a file for mbox and jsonl (must not exist)
    #[arg(long, value_name = "PATH")]
    pub out: PathBuf,
}

pub fn run(ctx: &Ctx, a: &ExportArgs) -> anyhow::Result<u8> {
    let store = ctx.open_store_read()?;
    let ids: Vec<i64> = if a.tickets.is_empty() {
        let mut all: Vec<i64> = store.tickets(None)?.iter().map(|t| t.id).collect();
        all.sort_unstable();
        all
    } else {
        a.tickets.clone()
    };
    let mut out = Output::open(a.format, &a.out)?;
    let mut messages = 0;
    for id in ids {
        let Some((t, rows)) = store.ticket(id)? else {
            return Err(Usage(format!("no ticket {id}")).into());
        };
        messages += rows.len();
        out.ticket(&store, &t, &rows)?;
    }
    out.finish()?;
    tracing::info!(messages, path = %a.out.display(), "exported");
    Ok(0)
}

/// Where the export goes.
enum Output {
    Eml(PathBuf),
    Mbox(std::io::BufWriter<std::fs::File>),
    Jsonl(std::io::BufWriter<std::fs::File>),
}

impl Output {
    fn open(format: Format, path: &Path) -> anyhow::Result<Output> {
        let file = || -> anyhow::Result<std::io::BufWriter<std::fs::File>> {
            let f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path)
                .with_context(|| format!("creating {}", path.display()))?;
            Ok(std::io::BufWriter::new(f))
        };
        Ok(match format {
            Format::Eml => {
                std::fs::create_dir_all(path)
                    .with_context(|| format!("creating {}", path.display()))?;
                Output::Eml(path.to_owned())
            }
            Format::Mbox => Output::Mbox(file()?),
            Format::Jsonl => Output::Jsonl(file()?),
        })
    }

    fn ticket(&mut self, store: &Store, t: &TicketRow, rows: &[MessageRow]) -> anyhow::Result<()> {
        if let Output::Jsonl(w) = self {
            let mut v = ticket_json(t);
            v["messages"] = serde_json::Value::Array(rows.iter().map(message_json).collect());
            writeln!(w, "{}", serde_json::to_string(&v)?)?;
            return Ok(());
        }
        let gone =
            |m: &MessageRow| anyhow::anyhow!("message {} of ticket {} has no bytes", m.id, t.id);
        for m in rows {
            match self {
                Output::Eml(dir) => {
                    // Written as it is read: a message kept in parts is never held whole.
                    let mut raw = store.raw_reader(m.id)?.ok_or_else(|| gone(m))?;
                    let p = dir.join(format!("{}-{}.eml", t.id, m.id));
                    std::fs::File::create(&p)
                        .and_then(|mut f| std::io::copy(&mut raw, &mut f))
                        .with_context(|| format!("writing {}", p.display()))?;
                }
                Output::Mbox(w) => {
                    let raw = store.raw_reader(m.id)?.ok_or_else(|| gone(m))?;
                    mboxrd(w, &mut std::io::BufReader::new(raw), m.date)?;
                }
                Output::Jsonl(_) => {}
            }
        }
        Ok(())
    }

    fn finish(self) -> anyhow::Result<()> {
        match self {
            Output::Mbox(mut w) | Output::Jsonl(mut w) => Ok(w.flush()?),
            Output::Eml(_) => Ok(()),
        }
    }
}

/// One message in mboxrd form: a `From ` line, every line that starts with `>*From ` given
/// one more `>`, and a blank line after it.
fn mboxrd(w: &mut impl Write, raw: &mut impl std::io::BufRead, date: i64) -> anyhow::Result<()> {
    writeln!(w, "From MAILER-DAEMON {}", mailticket::time::rfc3339(date))?;
    // A line at a time, as the message is read: one kept in parts is never held whole.
    let mut line = Vec::new();
    // An empty message still ends in a line end, as any other.
    let mut ended = false;
    while raw.read_until(b'\n', &mut line)? > 0 {
        let body = line.iter().skip_while(|b| **b == b'>').copied();
        if body.take(5).eq(b"From ".iter().copied()) {
            w.write_all(b">")?;
        }
        w.write_all(&line)?;
        ended = line.ends_with(b"\n");
        line.clear();
    }
    if !ended {
        w.write_all(b"\n")?;
    }
    w.write_all(b"\n")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `raw` as mboxrd, read through a buffer of `cap` bytes (lines cut across reads).
    fn mbox_of(raw: &[u8], cap: usize) -> String {
        let mut out = Vec::new();
        let mut r = std::io::BufReader::with_capacity(cap, raw);
        mboxrd(&mut out, &mut r, 0).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn mboxrd_quotes_from_lines_and_ends_each_message_with_a_blank_line() {
        let raw = b"Subject: s\r\n\r\nFrom here\r\n>From there\r\n>>From afar\r\nFrom: no\r\nend";
        for cap in [3, 8192] {
            let got = mbox_of(raw, cap);
            let (first, rest) = got.split_once('\n').unwrap();
            assert!(first.starts_with("From MAILER-DAEMON "), "{first}");
            assert_eq!(
                rest,
                "Subject: s\r\n\r\n>From here\r\n>>From there\r\n>>>From afar\r\nFrom: no\r\nend\n\n",
                "buffer of {cap}"
            );
        }
        // A message that ends in a line end gets no second one; an empty one gets one.
        let rest = |raw: &[u8]| mbox_of(raw, 3).split_once('\n').unwrap().1.to_owned();
        assert_eq!(rest(b"a\r\n"), "a\r\n\n");
        assert_eq!(rest(b""), "\n\n");
    }
}
