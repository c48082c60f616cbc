//! The quarantine's reads and edits for `mailticket quarantine show|export|retry|delete`: one
//! row with its exact bytes, a new reason after a retry that still fails, and removal. The
//! rows are written by `Store::quarantine` (tickets.rs) as the pipeline decides.

use super::db::{Row, params};

use super::{QuarantineRow, Store};
use crate::error::Result;

/// The columns [`quarantine_row`] reads, in its order.
const COLUMNS: &str = "id, source, uid, error, size, received_at";

fn quarantine_row(r: &Row<'_>) -> Result<QuarantineRow> {
    Ok(QuarantineRow {
        id: r.get(0)?,
        source: r.get(1)?,
        uid: r.get(2)?,
        error: r.get(3)?,
        size: r.get(4)?,
        received_at: r.get(5)?,
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
    /// message too large to fetch: compare `size`); `None` when there is no such row.
    pub fn quarantined_message(&self, id: i64) -> Result<Option<(QuarantineRow, Vec<u8>)>> {
        crate::store::sql("reading a quarantined message", || {
            let found = self.conn.query_opt(
                &format!("SELECT {COLUMNS}, raw FROM quarantine WHERE id = ?1"),
                params![id],
                |r| Ok((quarantine_row(r)?, r.get::<Vec<u8>>(6)?)),
            )?;
            let Some((row, mut raw)) = found else {
                return Ok(None);
            };
            // A message quarantined from its spool file is in parts.
            let parts = self.conn.query_map(
                "SELECT raw FROM quarantine_part WHERE quarantine = ?1 ORDER BY seq",
                params![id],
                |r| r.get::<Vec<u8>>(0),
            )?;
            for part in parts {
                raw.extend_from_slice(&part);
            }
            Ok(Some((row, raw)))
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
