//! The cursor of a folder read through Microsoft Graph: the link its delta query goes on
//! from, advanced in the transaction of the message that completes a page; and the messages
//! whose post-action (mark read, move, delete) is not yet confirmed, recorded in the same
//! transaction and cleared once the server has done it. The decisions are `graph::sync`'s.

use super::db::{Db, params};

use super::Store;
use crate::error::{Error, Result};

/// A message's place in a Graph folder.
#[derive(Debug, Clone)]
pub struct GraphPos {
    /// Mailbox name from the config.
    pub mailbox: String,
    /// Folder as configured.
    pub folder: String,
    /// The message's Graph id: its post-action is owed once this commits.
    pub id: String,
    /// The link the cursor moves to with this message (the last of its page), if any.
    pub cursor_to: Option<String>,
}

/// A Graph folder's cursor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphCursor {
    /// Where the delta query goes on (`@odata.nextLink` or `@odata.deltaLink`); empty: a
    /// full listing.
    pub delta_link: String,
    /// Unix seconds of the first run: read mail received before it is not taken.
    pub backlog_before: i64,
}

/// Records `pos`'s owed post-action and moves the cursor, in the caller's transaction.
pub(super) fn advance(c: &Db, pos: &GraphPos) -> Result<()> {
    c.execute(
        "INSERT INTO graph_pending (mailbox, folder, graph_id) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING", params![pos.mailbox, pos.folder, pos.id])?;
    if let Some(link) = &pos.cursor_to {
        set_link(c, &pos.mailbox, &pos.folder, link)?;
    }
    Ok(())
}

fn set_link(c: &Db, mailbox: &str, folder: &str, link: &str) -> Result<()> {
    let n = c.execute(
        "UPDATE graph_cursor SET delta_link = ?3, updated_at = ?4
             WHERE mailbox = ?1 AND folder = ?2",
        params![mailbox, folder, link, crate::time::now()],
    )?;
    if n != 1 {
        return Err(Error::Internal(format!(
            "no Graph cursor for {mailbox}/{folder}"
        )));
    }
    Ok(())
}

impl Store {
    /// The cursor of a Graph folder.
    pub fn graph_cursor(&self, mailbox: &str, folder: &str) -> Result<Option<GraphCursor>> {
        crate::store::sql("reading the Graph cursor", || {
            self.conn.query_opt(
                "SELECT delta_link, backlog_before FROM graph_cursor
                     WHERE mailbox = ?1 AND folder = ?2",
                params![mailbox, folder],
                |r| {
                    Ok(GraphCursor {
                        delta_link: r.get(0)?,
                        backlog_before: r.get(1)?,
                    })
                },
            )
        })
    }

    /// Writes a Graph folder's cursor (first run, or a full listing after the delta link
    /// was lost).
    pub fn reset_graph_cursor(
        &mut self,
        mailbox: &str,
        folder: &str,
        c: &GraphCursor,
    ) -> Result<()> {
        crate::store::sql("resetting the Graph cursor", || {
            self.write(|conn| {
                conn.fenced(mailbox)?;
                conn.execute(
                    "INSERT INTO graph_cursor (mailbox, folder, delta_link, backlog_before, updated_at)
                     VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (mailbox, folder) DO UPDATE SET delta_link = excluded.delta_link,
                       backlog_before = excluded.backlog_before, updated_at = excluded.updated_at",
                    params![mailbox, folder, c.delta_link, c.backlog_before, crate::time::now()],
                )?;
                Ok(())
            })
        })
    }

    /// Moves a Graph folder's cursor on after a page that stored nothing.
    pub fn set_graph_link(&mut self, mailbox: &str, folder: &str, link: &str) -> Result<()> {
        crate::store::sql("advancing the Graph cursor", || {
            self.write(|c| {
                c.fenced(mailbox)?;
                set_link(c, mailbox, folder, link)
            })
        })
    }

    /// Whether a message with this Message-ID (without brackets) came from `source` before.
    pub fn has_message_from(&self, message_id: &str, source: &str) -> Result<bool> {
        crate::store::sql("looking up a Message-ID", || {
            Ok(self
                .conn
                .query_opt(
                    "SELECT 1 FROM message WHERE message_id = ?1 AND source = ?2 LIMIT 1",
                    params![message_id, source],
                    |_| Ok(()),
                )?
                .is_some())
        })
    }

    /// The Graph ids of stored messages whose post-action is still owed.
    pub fn graph_pending(&self, mailbox: &str, folder: &str) -> Result<Vec<String>> {
        crate::store::sql("reading owed Graph post-actions", || {
            let s = "SELECT graph_id FROM graph_pending WHERE mailbox = ?1 AND folder = ?2";
            let ids = self
                .conn
                .query_map(s, params![mailbox, folder], |r| r.get(0))?;
            Ok(ids)
        })
    }

    /// Records that the post-actions of `ids` are done.
    pub fn graph_done(&mut self, mailbox: &str, folder: &str, ids: &[String]) -> Result<()> {
        crate::store::sql("recording finished Graph post-actions", || {
            self.write(|c| {
                let s = "DELETE FROM graph_pending WHERE mailbox = ?1 AND folder = ?2 AND graph_id = ?3";
                for id in ids {
                    c.execute(s, params![mailbox, folder, id])?;
                }
                Ok(())
            })
        })
    }
}
