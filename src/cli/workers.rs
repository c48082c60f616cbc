//! `mailticket workers [--json]`: the live workers of a PostgreSQL store and every mailbox
//! lease (owner, token, expiry, last commit, takeovers). A SQLite store has neither: usage
//! error (exit 2).

use std::fmt::Write as _;
use std::time::Duration;

use mailticket::lease::{Report, report};
use mailticket::store::Location;

use super::{Ctx, Usage, print_json};

#[derive(Debug, clap::Args)]
pub struct WorkersArgs {
    /// Print {"workers": [...], "mailboxes": [...]} as JSON
    #[arg(long)]
    pub json: bool,
}

pub fn run(ctx: &Ctx, a: &WorkersArgs) -> anyhow::Result<u8> {
    let Location::Postgres(cfg) = &ctx.store else {
        return Err(Usage(
            "workers and mailbox leases exist only with a PostgreSQL store ([store] url = \"postgres://…\"); this store is a SQLite file"
                .to_owned(),
        )
        .into());
    };
    let mut client = mailticket::store::pg::connect(cfg)?;
    let tables: Option<String> = client
        .query_one("SELECT to_regclass('mailbox_lease')::text", &[])?
        .get(0);
    if tables.is_none() {
        return Err(Usage(
            "this store has no lease tables yet: the first `sync` or `watch` makes them".to_owned(),
        )
        .into());
    }
    show(&mut client, Duration::from_secs(cfg.lease), a.json)
}

/// Prints the workers and leases read on `client`; workers count as live when seen within
/// `lease`.
fn show(client: &mut postgres::Client, lease: Duration, json: bool) -> anyhow::Result<u8> {
    let r = report(client, lease)?;
    if json {
        print_json(&r)?;
    } else {
        outln!("{}", render(&r).trim_end());
    }
    Ok(0)
}

/// A time from the report (RFC 3339) in local time, as the other tables show it.
fn local(rfc3339: &str) -> String {
    mailticket::time::parse_rfc3339(rfc3339)
        .map_or_else(|| rfc3339.to_owned(), mailticket::time::local)
}

fn seconds(ms: i64) -> String {
    format!("{:.1} s", ms as f64 / 1000.0)
}

/// The two tables: live workers, then every mailbox lease.
fn render(r: &Report) -> String {
    let mut out = String::new();
    if r.workers.is_empty() {
        out.push_str("no live workers\n");
    } else {
        let _ = writeln!(
            out,
            "{:<36} {:<16} {:>7} {:<16} {:>10} MAILBOXES",
            "WORKER", "HOST", "PID", "STARTED", "LAST SEEN"
        );
    }
    for w in &r.workers {
        let held = match w.mailboxes.len() {
            0 => "0".to_owned(),
            n if n <= 3 => format!("{n} ({})", w.mailboxes.join(", ")),
            n => format!("{n} ({}, …)", w.mailboxes[..3].join(", ")),
        };
        let _ = writeln!(
            out,
            "{:<36} {:<16} {:>7} {:<16} {:>10} {held}",
            w.id,
            w.host,
            w.pid,
            local(&w.started_at),
            format!("{} ago", seconds(w.seen_ms_ago)),
        );
    }
    out.push('\n');
    let _ = writeln!(
        out,
        "{:<24} {:<36} {:>6} {:>12} {:<16} {:>9}",
        "MAILBOX", "OWNER", "TOKEN", "EXPIRES IN", "LAST COMMIT", "TAKEOVERS"
    );
    for m in &r.mailboxes {
        let expires = match m.expires_in_ms {
            None => "-".to_owned(),
            Some(ms) if ms <= 0 => "expired".to_owned(),
            Some(ms) => seconds(ms),
        };
        let _ = writeln!(
            out,
            "{:<24} {:<36} {:>6} {:>12} {:<16} {:>9}",
            m.mailbox,
            m.owner.as_deref().unwrap_or("(nobody)"),
            m.token,
            expires,
            m.last_commit_at.as_deref().map_or("-".to_owned(), local),
            m.takeovers
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use mailticket::lease::{MailboxRow, WorkerRow};

    #[test]
    fn the_tables_show_holders_expiry_and_takeovers() {
        let r = Report {
            workers: vec![WorkerRow {
                id: "a:1:0f".into(),
                host: "a".into(),
                pid: 1,
                started_at: "2026-01-01T00:00:00Z".into(),
                seen_ms_ago: 800,
                mailboxes: vec!["m1".into(), "m2".into(), "m3".into(), "m4".into()],
            }],
            mailboxes: vec![
                MailboxRow {
                    mailbox: "m1".into(),
                    owner: Some("a:1:0f".into()),
                    token: 3,
                    expires_in_ms: Some(8200),
                    last_commit_at: None,
                    takeovers: 2,
                },
                MailboxRow {
                    mailbox: "m9".into(),
                    owner: None,
                    token: 0,
                    expires_in_ms: None,
                    last_commit_at: None,
                    takeovers: 0,
                },
            ],
        };
        let text = render(&r);
        assert!(text.contains("4 (m1, m2, m3, …)"), "{text}");
        assert!(text.contains("0.8 s ago"), "{text}");
        let m1 = text.lines().find(|l| l.starts_with("m1 ")).unwrap();
        assert!(m1.contains("a:1:0f") && m1.contains("8.2 s"), "{m1}");
        assert!(m1.trim_end().ends_with('2'), "{m1}");
        let m9 = text.lines().find(|l| l.starts_with("m9 ")).unwrap();
        assert!(m9.contains("(nobody)"), "{m9}");
    }
}
