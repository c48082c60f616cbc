//! The SQLite store: one file holds tickets, messages (with their raw bytes), attachments,
//! mailbox cursors and the quarantine.
//!
//! Every message is written in ONE transaction together with the cursor advance, so a crash
//! replays into a no-op. The store is synchronous: async callers run it on its own thread
//! (see [`crate::pipeline::StoreThread`]). Nothing here talks to the network.

mod migrations;
mod outbox;
mod tickets;

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, TransactionBehavior};

pub use migrations::LATEST as SCHEMA_VERSION;
pub use outbox::{OutJob, OutboxRow, Retry, claim_holds};
pub use tickets::{
    AttachmentRow, Cursor, ImapPos, Incoming, MessageRow, Origin, Outcome, QuarantineRow,
    TicketRow, decompress, pack,
};

use crate::error::{Error, Result};

/// Checkpoint every 64 MiB of WAL instead of SQLite's 4 MiB: fewer, larger checkpoints.
const WAL_AUTOCHECKPOINT: i64 = 16384;

/// The background checkpoint thread of a [`Store`].
pub struct Checkpointer {
    stop: mpsc::Sender<()>,
    handle: std::thread::JoinHandle<()>,
}

/// The settings the store's judgements follow (threading, loop rate, undeliverable period).
#[derive(Debug, Clone, Default)]
pub struct Rules {
    /// `[threading]`.
    pub threading: crate::config::ThreadingConfig,
    /// `[classify]`.
    pub classify: crate::config::ClassifyConfig,
}

impl Rules {
    /// The rules a config file asks for.
    pub fn from_config(c: &crate::config::Config) -> Rules {
        Rules {
            threading: c.threading.clone(),
            classify: c.classify.clone(),
        }
    }
}

/// Copies every table of the attached database `src` into `main` (same schema), in one read
/// transaction of `src`; `raw` columns are left empty.
fn copy_tables(conn: &Connection) -> Result<()> {
    let quote = |name: &str| format!("\"{}\"", name.replace('"', "\"\""));
    conn.execute_batch("BEGIN")?;
    let tables: Vec<String> = conn
        .prepare(
            "SELECT name FROM src.sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
        )?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for table in &tables {
        let columns: Vec<String> = conn
            .prepare(&format!("PRAGMA src.table_info({})", quote(table)))?
            .query_map([], |r| r.get(1))?
            .collect::<rusqlite::Result<_>>()?;
        let names: Vec<String> = columns.iter().map(|c| quote(c)).collect();
        let values: Vec<String> = columns
            .iter()
            .map(|c| match c.as_str() {
                "raw" => "x''".to_owned(),
                c => quote(c),
            })
            .collect();
        conn.execute_batch(&format!(
            "DELETE FROM main.{t}; INSERT INTO main.{t} ({}) SELECT {} FROM src.{t};",
            names.join(", "),
            values.join(", "),
            t = quote(table),
        ))?;
    }
    conn.execute_batch("COMMIT")?;
    Ok(())
}

/// An open store.
pub struct Store {
    conn: Connection,
    /// How to thread and judge.
    rules: Rules,
    /// The key of our outbound Message-IDs.
    key: Vec<u8>,
    /// Everything since `begin_dry_run` is rolled back by `finish`.
    dry_run: bool,
    /// Inside a group commit: each write is a savepoint of the group's transaction.
    grouped: bool,
    /// Acknowledgements queued since the last [`Store::take_acks_queued`].
    acks_queued: u64,
}

impl Store {
    /// Opens (creating when missing) and migrates the store at `path`.
    pub fn open(path: &Path) -> Result<Store> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| Error::Other(format!("store {}: {e}", path.display())))?;
        Store::setup(conn).map_err(|e| Error::Other(format!("store {}: {e}", path.display())))
    }

    /// A private in-memory copy of the store at `path` (created or migrated first, as
    /// [`Store::open`] would), for a dry run: one consistent snapshot read without taking the
    /// write lock, so nothing beside the dry run ever waits for it, and nothing it does
    /// reaches the file. The raw messages stay behind (nothing a run decides reads them), so
    /// the copy costs the store's size without its mail.
    pub fn open_copy(path: &Path) -> Result<Store> {
        drop(Store::open(path)?);
        let mut conn = Connection::open_in_memory()?;
        migrations::migrate(&mut conn)?;
        conn.execute(
            "ATTACH DATABASE ?1 AS src",
            [path.to_string_lossy().as_ref()],
        )?;
        copy_tables(&conn).map_err(|e| Error::Other(format!("store {}: {e}", path.display())))?;
        conn.execute_batch("DETACH DATABASE src")?;
        Store::setup(conn)
    }

    /// An in-memory store, for tests.
    pub fn open_in_memory() -> Result<Store> {
        Store::setup(Connection::open_in_memory()?)
    }

    fn setup(mut conn: Connection) -> Result<Store> {
        conn.busy_timeout(Duration::from_secs(30))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.pragma_update(None, "wal_autocheckpoint", WAL_AUTOCHECKPOINT)?;
        migrations::migrate(&mut conn)?;
        let key: Vec<u8> =
            conn.query_row("SELECT key FROM store_key WHERE id = 1", [], |r| r.get(0))?;
        Ok(Store {
            conn,
            rules: Rules::default(),
            key,
            dry_run: false,
            grouped: false,
            acks_queued: 0,
        })
    }

    /// From now on nothing is kept: every write happens inside one outer transaction that
    /// [`Store::finish`] rolls back.
    pub fn begin_dry_run(&mut self) -> Result<()> {
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        self.dry_run = true;
        Ok(())
    }

    /// Ends a dry run (rolling everything back); a no-op otherwise.
    pub fn finish(&mut self) -> Result<()> {
        if self.dry_run {
            self.conn.execute_batch("ROLLBACK")?;
            self.dry_run = false;
        }
        Ok(())
    }

    /// Starts a group commit: the writes until [`Store::end_group`] share one transaction,
    /// each still atomic on its own (a savepoint), so a group is all-or-nothing for every
    /// message in it and a crash replays the whole group. Used only when messages are already
    /// waiting, so a store that keeps up still commits each message on its own.
    pub fn begin_group(&mut self) -> Result<()> {
        if !self.dry_run && !self.grouped {
            self.conn.execute_batch("BEGIN IMMEDIATE")?;
            self.grouped = true;
        }
        Ok(())
    }

    /// Commits a group started by [`Store::begin_group`].
    pub fn end_group(&mut self) -> Result<()> {
        if self.grouped {
            self.grouped = false;
            if let Err(e) = self.conn.execute_batch("COMMIT") {
                let _ = self.conn.execute_batch("ROLLBACK");
                return Err(e.into());
            }
        }
        Ok(())
    }

    /// Runs `f` in a write transaction (a savepoint inside a dry run or a group) and commits it.
    fn write<T>(&mut self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        if self.dry_run || self.grouped {
            let sp = self.conn.savepoint()?;
            let out = f(&sp)?;
            sp.commit()?;
            Ok(out)
        } else {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            let out = f(&tx)?;
            tx.commit()?;
            Ok(out)
        }
    }

    /// Moves WAL checkpoints (and their fsync) to a thread of their own, so the writer never
    /// waits for the disk. `None` for an in-memory store. Stop it with
    /// [`Checkpointer::stop`] before this store is used on its own again.
    pub fn start_checkpointer(&mut self) -> Result<Option<Checkpointer>> {
        let Some(path) = self
            .conn
            .path()
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
        else {
            return Ok(None);
        };
        let reader = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_WRITE)?;
        reader.busy_timeout(Duration::from_secs(30))?;
        self.conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        let (stop, stopped) = mpsc::channel::<()>();
        let handle = std::thread::Builder::new()
            .name("checkpoint".into())
            .spawn(move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(Duration::from_millis(250))
                {
                    // PASSIVE never blocks the writer; what it cannot copy now it copies later.
                    if let Err(e) = reader.execute_batch("PRAGMA wal_checkpoint(PASSIVE)") {
                        tracing::debug!(error = %e, "background checkpoint");
                    }
                }
            })
            .map_err(|e| Error::Other(format!("cannot start the checkpoint thread: {e}")))?;
        Ok(Some(Checkpointer { stop, handle }))
    }

    /// Back to checkpoints by the writer, after [`Store::start_checkpointer`].
    pub fn stop_checkpointer(&mut self, c: Option<Checkpointer>) -> Result<()> {
        if let Some(c) = c {
            drop(c.stop);
            let _ = c.handle.join();
            self.conn
                .pragma_update(None, "wal_autocheckpoint", WAL_AUTOCHECKPOINT)?;
        }
        Ok(())
    }

    /// How many acknowledgements were queued since the last call.
    pub fn take_acks_queued(&mut self) -> u64 {
        std::mem::take(&mut self.acks_queued)
    }

    /// Sets the rules for what follows (the defaults until called).
    pub fn set_rules(&mut self, rules: Rules) {
        self.rules = rules;
    }

    /// A keyed Message-ID for an outgoing message of `ticket` (see
    /// [`crate::thread::outbound_id`]); replies to it thread even without its outbound row.
    pub fn outbound_message_id(&self, ticket: i64, nonce: &str, domain: &str) -> String {
        crate::thread::outbound_id(&self.key, ticket, nonce, domain)
    }

    /// The schema version of the open file.
    pub fn schema_version(&self) -> Result<i64> {
        Ok(self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_has_the_key_and_schema_and_writes_to_it_stay_in_it() {
        let dir = std::env::temp_dir().join(format!("mt-copy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let db = dir.join("x.db");
        let real = Store::open(&db).unwrap();
        let copy = Store::open_copy(&db).unwrap();
        assert_eq!(copy.schema_version().unwrap(), SCHEMA_VERSION);
        assert_eq!(
            copy.outbound_message_id(1, "n", "d"),
            real.outbound_message_id(1, "n", "d")
        );
        copy.conn
            .execute(
                "INSERT INTO ticket (id, created_at, updated_at) VALUES (7, 1, 1)",
                [],
            )
            .unwrap();
        let n: i64 = real
            .conn
            .query_row("SELECT count(*) FROM ticket", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 0);
        drop((real, copy));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
