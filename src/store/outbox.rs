//! The outbox: acknowledgements queued with their ticket, agent replies, and the send states
//! `pending` → `sending` → `sent` | `failed` (or back to `pending` with a later attempt). A
//! `sending` row records who claimed it and until when: stuck, or being sent right now.

use super::db::{Db, params};
use lettre::message::Mailbox;

use super::codec::pack;
use super::kinds::{OutboxKind, OutboxStatus};
use super::{Store, Tx};
use crate::error::{Error, Result};
use crate::message::sha256;

/// A row as `mailticket outbox` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct OutboxRow {
    /// Row id (for `--retry`).
    pub id: i64,
    /// The ticket.
    pub ticket_id: i64,
    /// Ack or reply.
    pub kind: OutboxKind,
    /// The mailbox whose identity it goes out with (empty: `[smtp]`'s).
    pub mailbox: String,
    /// Where it stands.
    pub status: OutboxStatus,
    /// Main recipient.
    pub to: String,
    /// Why it was skipped, or the last error.
    pub reason: String,
    /// The server's last reply.
    pub smtp_reply: String,
    /// Attempts so far.
    pub attempts: i64,
    /// When a `pending` row is tried next (Unix seconds; 0 or past: at the next send).
    pub next_attempt_at: i64,
    /// When an operator dismissed this failed or stuck row (`outbox dismiss`); 0 when not.
    pub dismissed_at: i64,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub updated_at: i64,
    /// In `sending` and claimed by a process that is alive, within its claim: being sent
    /// right now. A `sending` row that is not is stuck (interrupted, or no answer after the
    /// message went out).
    pub sending_now: bool,
}

/// What `outbox --retry ID` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Retry {
    /// Back in the queue, due now.
    Queued,
    /// No such row, or one that was sent or skipped.
    NotRetryable,
    /// Another process is sending it at this moment (its `PID:START`): retrying now could send
    /// it twice.
    SendingNow(String),
}

/// Whether a claim on a `sending` row still holds: its process runs and its lease has not run
/// out.
pub fn claim_holds(claimed_by: &str, claimed_until: i64, now: i64) -> bool {
    claimed_until > now && crate::lock::process_alive(claimed_by)
}

/// What `outbox dismiss ID` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dismiss {
    /// Dismissed: no longer reported.
    Done,
    /// No such row, or one that is neither failed nor stuck in `sending`.
    NotDismissable,
    /// A live process is sending it at this moment.
    SendingNow,
}

/// Why a send found nothing to send: the rows that wait, and the first time one is due.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutboxWaiting {
    /// `pending` rows not due yet.
    pub later: u64,
    /// When the first of them is due (Unix seconds).
    pub next_at: Option<i64>,
    /// `failed` rows not dismissed.
    pub failed: u64,
    /// `sending` rows nobody is sending (interrupted or uncertain), not dismissed.
    pub stuck: u64,
}

/// Row `id`'s status and claim (`claimed_by`, `claimed_until`); `None` when there is no row.
fn claim_of(c: &Db, id: i64) -> Result<Option<(OutboxStatus, String, i64)>> {
    c.query_opt(
        "SELECT status, claimed_by, claimed_until FROM outbox WHERE id = ?1",
        params![id],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )
}

/// A claimed row, ready to send.
#[derive(Debug, Clone)]
pub struct OutJob {
    /// Row id.
    pub id: i64,
    /// The ticket.
    pub ticket_id: i64,
    /// The mailbox whose SMTP settings send it (empty: `[smtp]`).
    pub mailbox: String,
    /// Envelope sender.
    pub mail_from: String,
    /// Envelope recipients.
    pub rcpt: Vec<String>,
    /// The exact bytes.
    pub raw: Vec<u8>,
}

/// After this many attempts a deferred row fails for good.
const MAX_ATTEMPTS: i64 = 12;

/// Seconds to wait before attempt `n` (1-based): 1, 2, 4 … minutes, at most 6 hours.
fn backoff(attempts: i64) -> i64 {
    let exp = u32::try_from(attempts.clamp(1, 20) - 1).unwrap_or(0);
    (60_i64.saturating_mul(1_i64 << exp.min(16))).min(6 * 3600)
}

/// A composed outbound message, as `outbound` decided it: recorded on its ticket and queued.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// Ack or reply.
    pub kind: OutboxKind,
    /// The mailbox whose identity (From, SMTP server) it goes out with; empty: `[smtp]`'s.
    pub mailbox: String,
    /// Our From (also the envelope sender).
    pub from: Mailbox,
    /// To.
    pub to: Vec<Mailbox>,
    /// Cc.
    pub cc: Vec<Mailbox>,
    /// Subject as sent.
    pub subject: String,
    /// Plain text as sent.
    pub text: String,
    /// The exact bytes.
    pub raw: Vec<u8>,
    /// Our Message-ID, without brackets.
    pub message_id: String,
}

/// Records an outbound message on its ticket and queues it, inside the caller's transaction.
fn record_and_queue(c: &Db, ticket: i64, out: &Outgoing, now: i64) -> Result<i64> {
    let addr = |m: &Mailbox| m.email.to_string().to_ascii_lowercase();
    let to_list: Vec<String> = out.to.iter().map(addr).collect();
    let cc_list: Vec<String> = out.cc.iter().map(addr).collect();
    let json = |v: &Vec<String>| serde_json::to_string(v).unwrap_or_else(|_| "[]".into());
    let message_row: i64 = c
        .insert_id(
            "INSERT INTO message (ticket_id, direction, message_id, fingerprint, from_addr, from_name,
                to_addrs, cc_addrs, subject, date, received_at, kind, body_text, source, size, codec, raw)
             VALUES (?1, 'out', ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9, 'normal', ?10, ?11, ?12, 'zstd', ?13)", params![
                ticket,
                out.message_id,
                &sha256(&out.raw)[..],
                addr(&out.from),
                out.from.name.clone().unwrap_or_default(),
                json(&to_list),
                json(&cc_list),
                out.subject,
                now,
                out.text,
                format!("outbox:{}", out.kind.as_str()),
                out.raw.len() as i64,
                pack(&out.raw)?,
            ])?;
    let mut all = to_list.clone();
    all.extend(cc_list);
    let id: i64 = c.insert_id(
        "INSERT INTO outbox (ticket_id, message_row, kind, status, mail_from, rcpt_to, rcpt_all,
                created_at, updated_at, mailbox)
             VALUES (?1, ?2, ?3, 'pending', ?4, ?5, ?6, ?7, ?7, ?8)",
        params![
            ticket,
            message_row,
            out.kind.as_str(),
            addr(&out.from),
            to_list.first().cloned().unwrap_or_default(),
            json(&all),
            now,
            out.mailbox
        ],
    )?;
    Ok(id)
}

/// The outbox's part of a message's transaction: what the ack policy asks, and the plain
/// writes that record what it decided.
impl Tx<'_> {
    /// Whether `address` bounced recently enough that nothing automatic may go to it.
    pub fn is_undeliverable(&self, address: &str, now: i64) -> Result<bool> {
        super::tickets::undeliverable(self.c, address, now)
    }

    /// Acknowledgements queued, being sent or sent to `address` since `since`.
    pub fn acks_to_since(&self, address: &str, since: i64) -> Result<u32> {
        crate::store::sql("counting acknowledgements", || {
            // Workers deciding about the same address at once take turns: the count then
            // holds the row the other one queued, and the rate limit holds across workers.
            self.c.lock_key(&format!("ack:{address}"))?;
            self.c.query_row(
                "SELECT count(*) FROM outbox WHERE rcpt_to = ?1 AND kind = 'ack'
                       AND status IN ('pending', 'sending', 'sent') AND created_at > ?2",
                params![address, since],
                |r| r.get(0),
            )
        })
    }

    /// Records `out` on `ticket` and queues it; returns the outbox row.
    pub fn record_outgoing(&self, ticket: i64, out: &Outgoing, now: i64) -> Result<i64> {
        record_and_queue(self.c, ticket, out, now)
    }

    /// Records that `ticket`'s request from `to` is not acknowledged, and why.
    pub fn record_skipped_ack(&self, ticket: i64, to: &str, reason: &str, now: i64) -> Result<()> {
        crate::store::sql("recording a skipped acknowledgement", || {
            self.c
                .execute(
                    "INSERT INTO outbox (ticket_id, kind, status, rcpt_to, reason, created_at, updated_at)
                     VALUES (?1, 'ack', 'skipped', ?2, ?3, ?4, ?4)", params![ticket, to, reason, now])?;
            Ok(())
        })
    }
}

/// What an agent's reply to a ticket is built from.
#[derive(Debug, Clone)]
pub struct ReplyContext {
    /// The ticket's subject.
    pub subject: String,
    /// The customer's address and name.
    pub customer: String,
    /// ... name.
    pub customer_name: String,
    /// The message answered (the newest inbound one, else the newest at all): its id.
    pub parent: Option<String>,
    /// Its References (oldest first).
    pub references: Vec<String>,
    /// Its Cc addresses.
    pub cc: Vec<String>,
    /// Its Reply-To address (empty when none).
    pub reply_to: String,
}

impl Tx<'_> {
    /// What a reply to `ticket` is built from; `None` when there is no such ticket.
    pub fn reply_context(&self, ticket: i64) -> Result<Option<ReplyContext>> {
        crate::store::sql("reading what a reply answers", || {
            let t: Option<(String, String, String)> = self.c.query_opt(
                "SELECT subject, customer, customer_name FROM ticket WHERE id = ?1",
                params![ticket],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )?;
            let Some((subject, customer, customer_name)) = t else {
                return Ok(None);
            };
            let last: Option<(String, String, String, String)> = self.c.query_opt(
                "SELECT message_id, refs, cc_addrs, reply_to FROM message WHERE ticket_id = ?1
                     ORDER BY direction = 'in' DESC, date DESC, id DESC LIMIT 1",
                params![ticket],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )?;
            let (parent, references, cc, reply_to) = match last {
                Some((id, refs, cc, reply_to)) => (
                    Some(id),
                    serde_json::from_str(&refs).unwrap_or_default(),
                    serde_json::from_str(&cc).unwrap_or_default(),
                    reply_to,
                ),
                None => (None, Vec::new(), Vec::new(), String::new()),
            };
            Ok(Some(ReplyContext {
                subject,
                customer,
                customer_name,
                parent,
                references,
                cc,
                reply_to,
            }))
        })
    }

    /// Records an agent's activity on `ticket` at `now`, closing it when `close`.
    pub fn answered(&self, ticket: i64, now: i64, close: bool) -> Result<()> {
        crate::store::sql("updating a ticket", || {
            self.c.execute(
                "UPDATE ticket SET updated_at = ?2, status = CASE WHEN ?3 THEN 'closed' ELSE status END
                 WHERE id = ?1",
                params![ticket, now, close],
            )?;
            Ok(())
        })
    }
}

impl Store {
    /// Rows stuck in `sending`: interrupted, or sent without an answer. Not those that a live
    /// process is sending right now.
    pub fn outbox_stuck(&self) -> Result<Vec<OutboxRow>> {
        let mut rows = self.outbox_rows("WHERE status = 'sending' AND dismissed_at = 0")?;
        rows.retain(|r| !r.sending_now);
        Ok(rows)
    }

    /// The queue (only rows in `status` when given): everything not yet sent first, then
    /// the newest; at most `limit` rows (all when `None`), and how many rows there are in all.
    pub fn outbox_list(
        &self,
        limit: Option<u32>,
        status: Option<OutboxStatus>,
    ) -> Result<(Vec<OutboxRow>, u64)> {
        let limit = limit.map_or(-1, i64::from);
        // A closed set of words: safe to write into the statement.
        let filter = status.map_or(String::new(), |s| {
            format!("WHERE status = '{}'", s.as_str())
        });
        let rows = self.outbox_rows(&format!(
            "{filter} ORDER BY status = 'sent', status = 'skipped', id DESC LIMIT {limit}"
        ))?;
        let total: i64 = crate::store::sql("counting outbox rows", || {
            self.conn.query_row(
                &format!("SELECT count(*) FROM outbox {filter}"),
                params![],
                |r| r.get(0),
            )
        })?;
        Ok((rows, u64::try_from(total).unwrap_or(0)))
    }

    fn outbox_rows(&self, tail: &str) -> Result<Vec<OutboxRow>> {
        let now = crate::time::now();
        let s = &format!(
            "SELECT id, ticket_id, kind, status, rcpt_to, reason, smtp_reply, attempts, created_at,
                    updated_at, claimed_by, claimed_until, mailbox, next_attempt_at, dismissed_at
             FROM outbox {tail}"
        );
        let rows = self.conn.query_map(s, params![], |r| {
            let status: OutboxStatus = r.get(3)?;
            let claimed_by: String = r.get(10)?;
            let claimed_until: i64 = r.get(11)?;
            Ok(OutboxRow {
                sending_now: status == OutboxStatus::Sending
                    && claim_holds(&claimed_by, claimed_until, now),
                id: r.get(0)?,
                ticket_id: r.get(1)?,
                kind: r.get(2)?,
                status,
                to: r.get(4)?,
                reason: r.get(5)?,
                smtp_reply: r.get(6)?,
                attempts: r.get(7)?,
                created_at: r.get(8)?,
                updated_at: r.get(9)?,
                mailbox: r.get(12)?,
                next_attempt_at: r.get(13)?,
                dismissed_at: r.get(14)?,
            })
        })?;
        Ok(rows)
    }

    /// Takes the next due `pending` row and commits it as `sending`, claimed by this process
    /// for `lease` seconds (longer than one send may take), before anything is sent.
    pub fn outbox_claim_next(&mut self, now: i64, lease: i64) -> Result<Option<OutJob>> {
        crate::store::sql("claiming an outbox row", || {
            let me = crate::lock::process_tag();
            type Row = (i64, i64, Option<i64>, String, String, String);
            let row: Option<Row> = self.write(|c| {
                let row = c
                    .query_opt(
                        &format!(
                            "SELECT id, ticket_id, message_row, mail_from, rcpt_all, mailbox FROM outbox
                             WHERE status = 'pending' AND next_attempt_at <= ?1 ORDER BY id LIMIT 1{}",
                            c.skip_locked("")
                        ),
                        params![now],
                        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)),
                    )?;
                if let Some((id, ..)) = &row {
                    // Only a row still pending: another worker may have claimed it first.
                    let n = c.execute(
                        "UPDATE outbox SET status = 'sending', attempts = attempts + 1, updated_at = ?2,
                           claimed_by = ?3, claimed_until = ?4
                         WHERE id = ?1 AND status = 'pending'",
                        params![id, now, me, now.saturating_add(lease)],
                    )?;
                    if n != 1 {
                        return Ok(None);
                    }
                }
                Ok(row)
            })?;
            let Some((id, ticket_id, message_row, mail_from, rcpt, mailbox)) = row else {
                return Ok(None);
            };
            let raw = match message_row {
                Some(m) => self.raw(m)?,
                None => None,
            };
            let Some(raw) = raw else {
                self.outbox_failed(id, "the recorded message is missing")?;
                return Err(Error::Internal(format!(
                    "outbox {id}: the recorded message is missing"
                )));
            };
            let rcpt: Vec<String> = serde_json::from_str(&rcpt).unwrap_or_default();
            Ok(Some(OutJob {
                id,
                ticket_id,
                mailbox,
                mail_from,
                rcpt,
                raw,
            }))
        })
    }

    /// The server accepted the row.
    pub fn outbox_sent(&mut self, id: i64, reply: &str) -> Result<()> {
        self.outbox_set(id, OutboxStatus::Sent, reply, "", 0)
    }

    /// The server refused the row for good.
    pub fn outbox_failed(&mut self, id: i64, reply: &str) -> Result<()> {
        self.outbox_set(id, OutboxStatus::Failed, reply, reply, 0)
    }

    /// A temporary failure: back to `pending` with a later attempt, or `failed` after
    /// too many.
    pub fn outbox_retry_later(&mut self, id: i64, why: &str, now: i64) -> Result<()> {
        crate::store::sql("deferring an outbox row", || {
            let attempts: i64 = self.conn.query_row(
                "SELECT attempts FROM outbox WHERE id = ?1",
                params![id],
                |r| r.get(0),
            )?;
            if attempts >= MAX_ATTEMPTS {
                return self.outbox_set(
                    id,
                    OutboxStatus::Failed,
                    "",
                    &format!("gave up after {attempts} attempts: {why}"),
                    0,
                );
            }
            self.outbox_set(id, OutboxStatus::Pending, "", why, now + backoff(attempts))
        })
    }

    /// The message went out but no answer came (a timeout or a lost connection after the
    /// final dot): it may have been delivered. The row stays in `sending`, released, so that
    /// it is reported as stuck and only `outbox --retry` sends it again.
    pub fn outbox_uncertain(&mut self, id: i64, why: &str) -> Result<()> {
        let reason = format!(
            "{why}; it may have been delivered: check with the recipient, then \
             `mailticket outbox --retry {id}` to send it again"
        );
        self.outbox_set(id, OutboxStatus::Sending, "", &reason, 0)
    }

    /// `outbox --retry ID`: a failed, stuck or deferred row goes back to `pending`, due now;
    /// not one that a live process is sending at this moment.
    pub fn outbox_retry(&mut self, id: i64) -> Result<Retry> {
        crate::store::sql("requeueing an outbox row", || {
            let now = crate::time::now();
            self.write(|c| {
                let row = claim_of(c, id)?;
                let Some((status, by, until)) = row else {
                    return Ok(Retry::NotRetryable);
                };
                if status == OutboxStatus::Sending && claim_holds(&by, until, now) {
                    return Ok(Retry::SendingNow(by));
                }
                let n = c.execute(
                    "UPDATE outbox SET status = 'pending', next_attempt_at = 0, updated_at = ?2,
                       claimed_by = '', claimed_until = 0, dismissed_at = 0
                     WHERE id = ?1 AND status IN ('failed', 'sending', 'pending')",
                    params![id, now],
                )?;
                Ok(if n == 1 {
                    Retry::Queued
                } else {
                    Retry::NotRetryable
                })
            })
        })
    }

    /// `outbox dismiss ID`: a failed row, or one stuck in `sending` that nobody is sending,
    /// is no longer reported (by `doctor`, by a send). It keeps its status and reason, and
    /// `outbox --retry` still takes it.
    pub fn outbox_dismiss(&mut self, id: i64) -> Result<Dismiss> {
        crate::store::sql("dismissing an outbox row", || {
            let now = crate::time::now();
            self.write(|c| {
                let row = claim_of(c, id)?;
                match row {
                    Some((OutboxStatus::Sending, by, until)) if claim_holds(&by, until, now) => {
                        return Ok(Dismiss::SendingNow);
                    }
                    Some((OutboxStatus::Sending | OutboxStatus::Failed, ..)) => {}
                    _ => return Ok(Dismiss::NotDismissable),
                }
                c.execute(
                    "UPDATE outbox SET dismissed_at = ?2, updated_at = ?2 WHERE id = ?1",
                    params![id, now],
                )?;
                Ok(Dismiss::Done)
            })
        })
    }

    /// What waits in the queue at `now` besides what is due: for a send that found nothing.
    pub fn outbox_waiting(&self, now: i64) -> Result<OutboxWaiting> {
        let mut w = OutboxWaiting::default();
        for r in self
            .outbox_rows("WHERE status IN ('pending', 'sending', 'failed') AND dismissed_at = 0")?
        {
            match r.status {
                OutboxStatus::Pending if r.next_attempt_at > now => {
                    w.later += 1;
                    w.next_at = Some(
                        w.next_at
                            .map_or(r.next_attempt_at, |t| t.min(r.next_attempt_at)),
                    );
                }
                OutboxStatus::Failed => w.failed += 1,
                OutboxStatus::Sending if !r.sending_now => w.stuck += 1,
                _ => {}
            }
        }
        Ok(w)
    }

    fn outbox_set(
        &mut self,
        id: i64,
        status: OutboxStatus,
        reply: &str,
        reason: &str,
        next: i64,
    ) -> Result<()> {
        let now = crate::time::now();
        let routes = self.routes.clone();
        self.write(|c| {
            c.execute(
                "UPDATE outbox SET status = ?2, smtp_reply = ?3, reason = ?4, next_attempt_at = ?5,
                   updated_at = ?6, claimed_by = '', claimed_until = 0 WHERE id = ?1",
                params![id, status, reply, reason, next, now],
            )?;
            let kind = match status {
                OutboxStatus::Sent => crate::event_type::OUTBOUND_SENT,
                OutboxStatus::Failed => crate::event_type::OUTBOUND_FAILED,
                _ => return Ok(()),
            };
            let detail = if reason.is_empty() { reply } else { reason };
            super::events::outbox_result(c, &routes, (id, kind), detail, now)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        assert_eq!(backoff(1), 60);
        assert_eq!(backoff(2), 120);
        assert_eq!(backoff(3), 240);
        assert_eq!(backoff(30), 6 * 3600);
    }
}
