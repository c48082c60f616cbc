//! What `mailticket workers` shows and what `doctor` warns about: live workers and every
//! lease, read from the database.

use std::time::Duration;

use serde::Serialize;

use super::{db_err, millis};
use crate::error::Result;

/// A worker in `mailticket workers`.
#[derive(Debug, Clone, Serialize)]
pub struct WorkerRow {
    pub id: String,
    pub host: String,
    pub pid: i64,
    /// RFC 3339, UTC.
    pub started_at: String,
    /// Milliseconds since its last heartbeat, by the database's clock.
    pub seen_ms_ago: i64,
    /// The mailboxes whose unexpired lease it holds.
    pub mailboxes: Vec<String>,
}

/// A mailbox lease in `mailticket workers`.
#[derive(Debug, Clone, Serialize)]
pub struct MailboxRow {
    pub mailbox: String,
    /// The worker named by the lease (it may have expired).
    pub owner: Option<String>,
    /// The fencing token: raised on every claim.
    pub token: i64,
    /// Milliseconds until the lease expires (negative: expired that long ago); `None` when
    /// nobody holds it.
    pub expires_in_ms: Option<i64>,
    /// The last message commit under a lease, RFC 3339 UTC.
    pub last_commit_at: Option<String>,
    /// How often a worker took it over from another whose lease had expired.
    pub takeovers: i64,
}

/// Live `watch` workers and every mailbox lease, as `mailticket workers` shows them (a
/// cron pass holds its leases without a worker row).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub workers: Vec<WorkerRow>,
    pub mailboxes: Vec<MailboxRow>,
}

fn rfc3339_ms(ms: i64) -> String {
    crate::time::rfc3339(ms.div_euclid(1000))
}

/// Reads the live workers (not stopped, seen within `lease`) and every lease row.
pub fn report(client: &mut postgres::Client, lease: Duration) -> Result<Report> {
    let rows = client
        .query(
            concat!(
                "SELECT id, host, pid, started_at, ",
                now_ms!(),
                " - seen_at FROM worker WHERE stopped_at IS NULL AND seen_at > ",
                now_ms!(),
                " - $1 ORDER BY host, pid, id"
            ),
            &[&millis(lease)],
        )
        .map_err(|e| db_err("reading the workers", e))?;
    let mut workers: Vec<WorkerRow> = rows
        .iter()
        .map(|r| WorkerRow {
            id: r.get(0),
            host: r.get(1),
            pid: r.get(2),
            started_at: rfc3339_ms(r.get(3)),
            seen_ms_ago: r.get(4),
            mailboxes: Vec::new(),
        })
        .collect();
    let rows = client
        .query(
            concat!(
                "SELECT mailbox, owner, token, CASE WHEN owner IS NULL THEN NULL ELSE expires_at - ",
                now_ms!(),
                " END, last_commit_at, takeovers FROM mailbox_lease ORDER BY mailbox"
            ),
            &[],
        )
        .map_err(|e| db_err("reading the leases", e))?;
    let mailboxes: Vec<MailboxRow> = rows
        .iter()
        .map(|r| MailboxRow {
            mailbox: r.get(0),
            owner: r.get(1),
            token: r.get(2),
            expires_in_ms: r.get(3),
            last_commit_at: r.get::<_, Option<i64>>(4).map(rfc3339_ms),
            takeovers: r.get(5),
        })
        .collect();
    for m in &mailboxes {
        let live = m.expires_in_ms.is_some_and(|ms| ms > 0);
        if let (true, Some(owner)) = (live, &m.owner)
            && let Some(w) = workers.iter_mut().find(|w| &w.id == owner)
        {
            w.mailboxes.push(m.mailbox.clone());
        }
    }
    Ok(Report { workers, mailboxes })
}

/// Takeovers from which on `doctor` warns that a mailbox's leases keep expiring.
pub const MANY_TAKEOVERS: i64 = 5;

/// What `doctor` says about the leases: each configured mailbox that no live lease covers
/// while `watch` workers are live, and each mailbox taken over [`MANY_TAKEOVERS`] times or
/// more. Empty when all is well.
pub fn problems(report: &Report, configured: &[String]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let watching = !report.workers.is_empty();
    for name in configured {
        let row = report.mailboxes.iter().find(|m| &m.mailbox == name);
        let held = row.is_some_and(|m| m.expires_in_ms.is_some_and(|ms| ms > 0));
        if watching && !held {
            out.push((
                name.clone(),
                "no live worker holds its lease although workers are running".to_owned(),
            ));
        }
        if let Some(m) = row.filter(|m| m.takeovers >= MANY_TAKEOVERS) {
            out.push((
                name.clone(),
                format!(
                    "taken over {} times: its workers die, pause or lose the database longer than the lease",
                    m.takeovers
                ),
            ));
        }
    }
    out
}
