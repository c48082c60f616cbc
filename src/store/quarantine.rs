//! The quarantine's reads and edits for `mailticket quarantine show|export|retry|delete`: one
//! row with its exact bytes, a new reason after a retry that still fails, and removal. The
//! rows are written by `Store::quarantine` (tickets.rs) as the pipeline decides.

use super::db::{Row, params};

use super::{QuarantineRow, Store};
use crate::error::Result;

/// The columns [`quarantine_row`] reads, in its order.
const COLUMNS: &str = "id, source, uid, error, size, received_at, mailbox";

fn quarantine_row(r: &Row<'_>) -> Result<QuarantineRow> {
    Ok(QuarantineRow {
        id: r.get(0)?,
        source: r.get(1)?,
        uid: r.get(2)?,
        error: r.get(3)?,
        size: r.get(4)?,
        received_at: r.get(5)?,
        mailbox: r.get(6)?,
    })
}

impl Store {
    /// The quarantine, newest first.
    pub fn quarantined(&self) -> Result<Vec<QuarantineRow>> {
        crate::store::sql("listing the quarantine", || {
            let s = &format!("SELECT {COLUMNS} FROM quarantine ORDER BY id DESC");
            let rows = self.conn.query_map(s, params![], quarantine_row)?;
            Ok(rows)
        })
    }

    /// Quarantined message `id` with its bytes exactly as kept (only the header for a
    /// message too large to fetch: compare `size`), all in memory; `None` when there is no
    /// such row. See [`Store::quarantine_entry`] and [`Store::quarantined_pieces`] for a
    /// message of any size.
    pub fn quarantined_message(&self, id: i64) -> Result<Option<(QuarantineRow, Vec<u8>)>> {
        let Some((row, _)) = self.quarantine_entry(id)? else {
            return Ok(None);
        };
        let mut raw = Vec::new();
        self.quarantined_pieces(id, |piece| {
            raw.extend_from_slice(piece);
            Ok(true)
        })?;
        Ok(Some((row, raw)))
    }

    /// Quarantined message `id` and how many of its bytes are kept (fewer than `size` when
    /// only the header was); `None` when there is no such row.
    pub fn quarantine_entry(&self, id: i64) -> Result<Option<(QuarantineRow, u64)>> {
        crate::store::sql("reading a quarantined message", || {
            let found = self.conn.query_opt(
                &format!(
                    "SELECT {COLUMNS}, CAST(length(raw) AS BIGINT) FROM quarantine WHERE id = ?1"
                ),
                params![id],
                |r| Ok((quarantine_row(r)?, r.get::<i64>(7)?)),
            )?;
            let Some((row, head)) = found else {
                return Ok(None);
            };
            let parts: i64 = self.conn.query_row(
                "SELECT CAST(COALESCE(SUM(length(raw)), 0) AS BIGINT) FROM quarantine_part
                 WHERE quarantine = ?1",
                params![id],
                |r| r.get(0),
            )?;
            Ok(Some((row, u64::try_from(head + parts).unwrap_or(0))))
        })
    }

    /// Hands the kept bytes of quarantined message `id` to `f` in order, a piece at a time:
    /// the row's own bytes, then each part (1 MiB) of a message quarantined from its spool
    /// file, one part read at a time. `f` returns false to stop early.
    pub fn quarantined_pieces<F>(&self, id: i64, mut f: F) -> Result<()>
    where
        F: FnMut(&[u8]) -> Result<bool>,
    {
        crate::store::sql("reading a quarantined message", || {
            let head: Option<Vec<u8>> = self.conn.query_opt(
                "SELECT raw FROM quarantine WHERE id = ?1",
                params![id],
                |r| r.get(0),
            )?;
            if !f(&head.unwrap_or_default())? {
                return Ok(());
            }
            let mut seq = i64::MIN;
            while let Some((at, part)) = self.conn.query_opt(
                "SELECT seq, raw FROM quarantine_part WHERE quarantine = ?1 AND seq > ?2
                 ORDER BY seq LIMIT 1",
                params![id, seq],
                |r| Ok((r.get::<i64>(0)?, r.get::<Vec<u8>>(1)?)),
            )? {
                if !f(&part)? {
                    break;
                }
                seq = at;
            }
            Ok(())
        })
    }

    /// The ids of every quarantined message, oldest first.
    pub fn quarantine_ids(&self) -> Result<Vec<i64>> {
        crate::store::sql("listing the quarantine", || {
            let s = "SELECT id FROM quarantine ORDER BY id";
            let ids = self.conn.query_map(s, params![], |r| r.get(0))?;
            Ok(ids)
        })
    }

    /// Records why quarantined message `id` still cannot be taken in.
    pub fn quarantine_reason(&mut self, id: i64, error: &str) -> Result<()> {
        crate::store::sql("updating a quarantined message", || {
            self.write(|c| {
                c.execute(
                    "UPDATE quarantine SET error = ?2 WHERE id = ?1",
                    params![id, error],
                )?;
                Ok(())
            })
        })
    }

    /// Removes quarantined message `id`; whether there was one.
    pub fn quarantine_delete(&mut self, id: i64) -> Result<bool> {
        crate::store::sql("deleting a quarantined message", || {
            self.write(|c| {
                c.execute(
                    "DELETE FROM quarantine_part WHERE quarantine = ?1",
                    params![id],
                )?;
                Ok(c.execute("DELETE FROM quarantine WHERE id = ?1", params![id])? == 1)
            })
        })
    }
}
