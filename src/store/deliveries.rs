//! Hook deliveries: one row per (event, hook), written with the event; the send states
//! `pending` → `sending` (claimed by `PID:START` until a lease runs out) → `delivered` |
//! `failed`. At least once: a `sending` row whose claimer is gone goes back to `pending`
//! and is sent again with the same event id. Which row may go next (per hook, per ticket,
//! in event order) is a plain query; what an answer means is decided in `hooks`.

use super::db::params;

use super::Store;
use super::outbox::claim_holds;
use crate::error::Result;

/// A claimed delivery, ready to send.
#[derive(Debug, Clone)]
pub struct DeliveryJob {
    /// The delivery row.
    pub id: i64,
    /// The hook's name.
    pub hook: String,
    /// Attempts so far, this one included.
    pub attempts: i64,
    /// The event's stable id (`webhook-id`).
    pub uid: String,
    /// Its type.
    pub kind: String,
    /// Unix seconds of the event.
    pub created_at: i64,
    /// Its `data` as JSON text.
    pub data: String,
}

/// A delivery as `mailticket hooks` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeliveryRow {
    /// Row id (for `--retry`).
    pub id: i64,
    /// The hook.
    pub hook: String,
    /// The event's cursor.
    pub event: i64,
    /// The event's id.
    pub event_id: String,
    /// The event's type.
    #[serde(rename = "type")]
    pub kind: String,
    /// The ticket (0: none).
    pub ticket_id: i64,
    /// `pending`, `sending`, `delivered` or `failed`.
    pub status: String,
    /// Attempts so far.
    pub attempts: i64,
    /// Unix seconds of the next attempt (pending only).
    pub next_attempt_at: i64,
    /// The last HTTP status or exit code (0: none).
    pub last_status: i64,
    /// The start of the last answer, or the last error.
    pub last_response: String,
    /// Unix seconds.
    pub updated_at: i64,
}

/// What became of one attempt, as `hooks` decided it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// Delivered.
    Delivered,
    /// Back to `pending`, due at this Unix second.
    Later(i64),
    /// Failed for good (kept; `hooks --retry ID` sends it again).
    Failed,
}

/// The most of an answer a delivery row keeps.
pub const MAX_RESPONSE: usize = 1024;

fn bounded(s: &str) -> &str {
    let mut end = s.len().min(MAX_RESPONSE);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl Store {
    /// Puts `sending` rows whose claimer is gone (or whose lease ran out) back to `pending`,
    /// due now: they are sent again, with their event's id. Returns how many.
    pub fn hooks_release_stale(&mut self, now: i64) -> Result<usize> {
        crate::store::sql("releasing stale hook deliveries", || {
            let stale: Vec<i64> = self
                .conn
                .query_map(
                    "SELECT id, claimed_by, claimed_until FROM hook_delivery WHERE status = 'sending'",
                    params![],
                    |r| Ok((r.get::<i64>(0)?, r.get::<String>(1)?, r.get::<i64>(2)?)),
                )?
                .into_iter()
                .filter(|(_, by, until)| !claim_holds(by, *until, now))
                .map(|(id, ..)| id)
                .collect();
            self.write(|c| {
                for id in &stale {
                    c.execute(
                        "UPDATE hook_delivery SET status = 'pending', next_attempt_at = 0,
                           claimed_by = '', claimed_until = 0 WHERE id = ?1 AND status = 'sending'",
                        params![id],
                    )?;
                }
                Ok(stale.len())
            })
        })
    }

    /// Claims up to `limit` deliveries of `hook` due by `due_by`, each the oldest undelivered
    /// one of its ticket for this hook, as `sending` for `lease` seconds from `now`; nothing
    /// for a disabled hook.
    pub fn hooks_claim(
        &mut self,
        hook: &str,
        now: i64,
        due_by: i64,
        lease: i64,
        limit: usize,
    ) -> Result<Vec<DeliveryJob>> {
        crate::store::sql("claiming hook deliveries", || {
            let me = crate::lock::process_tag();
            self.write(|c| {
                let mut jobs = Vec::new();
                let next = &format!(
                    "SELECT d.id, d.attempts, e.uid, e.type, e.created_at, e.data, m.body_text
                     FROM hook_delivery d JOIN event e ON e.id = d.event_id
                       LEFT JOIN message m ON m.id = e.text_of
                     WHERE d.hook = ?1 AND d.status = 'pending' AND d.next_attempt_at <= ?2
                       AND NOT EXISTS (SELECT 1 FROM hook_state h
                                       WHERE h.name = ?1 AND h.disabled_at > 0)
                       AND (d.ticket_id = 0 OR NOT EXISTS (
                             SELECT 1 FROM hook_delivery p
                             WHERE p.hook = ?1 AND p.ticket_id = d.ticket_id
                               AND p.status != 'delivered' AND p.event_id < d.event_id))
                     ORDER BY d.event_id LIMIT 1{}",
                    c.skip_locked("d")
                );
                while jobs.len() < limit {
                    let Some(job) = c.query_opt(next, params![hook, due_by], |r| {
                        Ok(DeliveryJob {
                            id: r.get(0)?,
                            hook: hook.to_owned(),
                            attempts: r.get::<i64>(1)? + 1,
                            uid: r.get(2)?,
                            kind: r.get(3)?,
                            created_at: r.get(4)?,
                            data: crate::store::event::with_text(r.get(5)?, r.get(6)?),
                        })
                    })?
                    else {
                        break;
                    };
                    c.execute(
                        "UPDATE hook_delivery SET status = 'sending', attempts = attempts + 1,
                           updated_at = ?2, claimed_by = ?3, claimed_until = ?4 WHERE id = ?1",
                        params![job.id, now, me, now.saturating_add(lease)],
                    )?;
                    jobs.push(job);
                }
                Ok(jobs)
            })
        })
    }

    /// Records the results of attempts: `(row, what became of it, status, answer)`.
    pub fn hooks_record(&mut self, results: &[(i64, Attempt, i64, String)]) -> Result<()> {
        let now = crate::time::now();
        crate::store::sql("recording hook deliveries", || {
            self.write(|c| {
                let s =
                    "UPDATE hook_delivery SET status = ?2, next_attempt_at = ?3, last_status = ?4,
                       last_response = ?5, updated_at = ?6, claimed_by = '', claimed_until = 0
                     WHERE id = ?1";
                for (id, attempt, status, answer) in results {
                    let (word, next) = match attempt {
                        Attempt::Delivered => ("delivered", 0),
                        Attempt::Later(at) => ("pending", *at),
                        Attempt::Failed => ("failed", 0),
                    };
                    c.execute(s, params![id, word, next, status, bounded(answer), now])?;
                }
                Ok(())
            })
        })
    }

    /// Disables hook `name` (it answered 410 Gone) until `hooks --enable`-style repair:
    /// nothing more is sent to it.
    pub fn hook_disable(&mut self, name: &str, reason: &str) -> Result<()> {
        let now = crate::time::now();
        crate::store::sql("disabling a hook", || {
            self.write(|c| {
                c.execute(
                    "INSERT INTO hook_state (name, disabled_at, reason) VALUES (?1, ?2, ?3)
                     ON CONFLICT (name) DO UPDATE SET disabled_at = ?2, reason = ?3",
                    params![name, now, bounded(reason)],
                )?;
                Ok(())
            })
        })
    }

    /// Enables hook `name` again. False when it was not disabled.
    pub fn hook_enable(&mut self, name: &str) -> Result<bool> {
        crate::store::sql("enabling a hook", || {
            self.write(|c| {
                Ok(c.execute(
                    "UPDATE hook_state SET disabled_at = 0, reason = '' WHERE name = ?1 AND disabled_at > 0",
                    params![name],
                )? == 1)
            })
        })
    }

    /// The disabled hooks: `(name, since, why)`.
    pub fn hooks_disabled(&self) -> Result<Vec<(String, i64, String)>> {
        crate::store::sql("reading hook states", || {
            self.conn.query_map(
                "SELECT name, disabled_at, reason FROM hook_state WHERE disabled_at > 0 ORDER BY name",
                params![],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
        })
    }

    /// Deliveries, the undelivered first, then the newest; at most `limit`.
    pub fn hooks_list(&self, limit: i64) -> Result<Vec<DeliveryRow>> {
        crate::store::sql("listing hook deliveries", || {
            self.conn.query_map(
                "SELECT d.id, d.hook, d.event_id, e.uid, e.type, d.ticket_id, d.status, d.attempts,
                        d.next_attempt_at, d.last_status, d.last_response, d.updated_at
                 FROM hook_delivery d JOIN event e ON e.id = d.event_id
                 ORDER BY d.status = 'delivered', d.id DESC LIMIT ?1",
                params![limit],
                |r| {
                    Ok(DeliveryRow {
                        id: r.get(0)?,
                        hook: r.get(1)?,
                        event: r.get(2)?,
                        event_id: r.get(3)?,
                        kind: r.get(4)?,
                        ticket_id: r.get(5)?,
                        status: r.get(6)?,
                        attempts: r.get(7)?,
                        next_attempt_at: r.get(8)?,
                        last_status: r.get(9)?,
                        last_response: r.get(10)?,
                        updated_at: r.get(11)?,
                    })
                },
            )
        })
    }

    /// `hooks --retry ID`: a failed or pending delivery is due now. False when there is no
    /// such row or it is delivered or being sent.
    pub fn hooks_retry(&mut self, id: i64) -> Result<bool> {
        crate::store::sql("requeueing a hook delivery", || {
            self.write(|c| {
                Ok(c.execute(
                    "UPDATE hook_delivery SET status = 'pending', next_attempt_at = 0
                     WHERE id = ?1 AND status IN ('failed', 'pending')",
                    params![id],
                )? == 1)
            })
        })
    }
}
