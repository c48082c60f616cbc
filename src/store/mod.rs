//! The SQLite store: one file holds tickets, messages (with their raw bytes), attachments,
//! mailbox cursors, the quarantine, the outbox, the event log and hook deliveries.
//!
//! The store decides nothing: `classify`, `thread` and `outbound` decide, `pipeline` opens
//! the transaction, and the store reads what they ask and writes what they decided. Every
//! message is written in ONE transaction together with the cursor advance, so a crash replays
//! into a no-op. The store is synchronous: async callers run it on its own thread
//! ([`StoreThread`]). Nothing here talks to the network.
//!
//! # The surface
//!
//! This is the whole interface the rest of the program uses, written down because a second
//! implementation (PostgreSQL, for many workers) will have to provide exactly this.
//!
//! - **Open and run**: [`Store::open`], [`Store::open_copy`] (dry run), [`Store::open_in_memory`];
//!   [`StoreThread::spawn`] / `submit` / `submit_grouped` (group commit with a halt flag) /
//!   `call`; [`StoreThread::make_durable`] before a post-action (without waiting for the
//!   queue); the dry-run and group brackets.
//! - **One message's transaction** ([`Store::transaction`] → [`Tx`]), for `pipeline`:
//!   - reads: `held_message`, `messages_from_within` (loop rate), `ticket_state`,
//!     `newest_message_date`, `ticket_of_message_id`, `tickets_referring_to`, `takes_part`,
//!     `sender_takes_part`, `domain_takes_part`, `same_subject_from` (threading),
//!     `is_undeliverable`, `acks_to_since` (ack policy), `reply_context` (replies), `key`;
//!   - writes: `create_ticket`, `touch_ticket`, `mark_undeliverable`, `insert_message`,
//!     `add_refs`, `advance` (the cursor), `record_outgoing`, `record_skipped_ack`, `answered`;
//!   - events: `record_event` (the event and one delivery per matching route, see
//!     [`Store::set_routes`]), with the reads that build them: `ticket_view`, `message_view`,
//!     `outbox_message`.
//! - **Quarantine and cursors**, for `sync`: `quarantine` / `quarantine_sized`, `cursor`,
//!   `reset_cursor`, `set_done`; for `graph::sync` (Microsoft Graph): `graph_cursor`,
//!   `reset_graph_cursor`, `set_graph_link`, `has_message_from`, `graph_pending`,
//!   `graph_done` (a message's [`Origin`] carries its [`GraphPos`] into `advance`).
//! - **The outbox's send states**, for `outbound::drain`: `outbox_claim_next`, `outbox_sent`,
//!   `outbox_failed`, `outbox_retry_later`, `outbox_uncertain`, `outbox_stuck`.
//! - **Hook deliveries**, for `hooks::deliver`: `set_routes`, `hooks_release_stale`,
//!   `hooks_claim` (per hook, the oldest undelivered event of each ticket), `hooks_record`,
//!   `hook_disable`; an outbox result records its `outbound.*` event itself.
//! - **Mailbox health**, for `sync` and `watch` (through `hooks::health`): `mailbox_failed`
//!   (with the rule that says when it is failing), `mailbox_worked`; each records its event.
//! - **The CLI's reads and edits**: `tickets`, `ticket`, `ticket_with_message`, `raw`,
//!   `quarantined`, `quarantined_message`, `quarantine_ids`, `quarantine_reason`,
//!   `quarantine_delete`, `outbox_list`, `outbox_dismiss`, `outbox_waiting`,
//!   `outbox_retry`, `set_status` (with its `ticket.status_changed`), `schema_version`,
//!   `events_since` (the feed), `hooks_list`, `hooks_disabled`, `hooks_retry`, `hook_enable`.
//!
//! Values with a closed set of words (ticket status, direction, outbox kind and status) are
//! enums ([`TicketStatus`], [`Direction`], [`OutboxKind`], [`OutboxStatus`]); the schema's
//! CHECK constraints hold the same words as a second line of defence.

mod codec;
pub mod db;
mod deliveries;
pub mod event;
mod events;
mod graph;
mod kinds;
mod migrations;
mod outbox;
pub mod pg;
mod quarantine;
mod tickets;
pub mod view;
mod worker;

use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use db::{Db, params};

pub use codec::{RawBytes, decompress, pack, pack_message};
pub use deliveries::{Attempt, DeliveryJob, DeliveryRow, MAX_RESPONSE};
pub use events::{EventData, EventRow, NewEvent};
pub use graph::{GraphCursor, GraphPos};
pub use kinds::{Direction, OutboxKind, OutboxStatus, TicketStatus};
pub use migrations::LATEST as SCHEMA_VERSION;
pub use outbox::{
    Dismiss, OutJob, OutboxRow, OutboxWaiting, Outgoing, ReplyContext, Retry, claim_holds,
};
pub use tickets::{
    AttachmentRow, Cursor, ImapPos, MessageRow, NewMessage, NewTicket, Origin, Outcome,
    QuarantineRow, TicketFilter, TicketRow, TicketState,
};
pub use worker::{StoreJoin, StoreThread};

use crate::error::{Error, Result};

/// The writer checkpoints when its WAL holds 4096 pages (64 MiB of 16 KiB pages) instead of
/// SQLite's 1000: fewer, larger checkpoints. With [`Store::start_checkpointer`] the copying is
/// done by then, and the writer's checkpoint lets the WAL start over: a WAL that only a
/// background thread checkpoints never does while writes keep coming (it grew to 331 MB,
/// more than the 207 MB store, in a benchmark sync).
const WAL_AUTOCHECKPOINT: i64 = 4096;

/// From this many frames in the WAL on, every commit wakes the checkpoint thread (see
/// [`Store::start_checkpointer`]).
const WAL_CATCH_UP: i64 = WAL_AUTOCHECKPOINT * 3 / 4;

/// The writer checkpoints at [`WAL_AUTOCHECKPOINT`] frames when the checkpoint thread is not
/// in the middle of one, and at this many whether it is or not.
const WAL_LIMIT: i64 = WAL_AUTOCHECKPOINT + WAL_AUTOCHECKPOINT / 4;

/// The writer checkpoints at [`WAL_AUTOCHECKPOINT`] frames only once the checkpoint thread
/// has copied all but this many (8 MiB), and at [`WAL_LIMIT`] whatever it has copied: every
/// write waits for the writer's checkpoint, and the fetch behind them. Taking its turn at
/// once, the writer copied 100-1,500 frames itself, 11-120 ms, at each of a benchmark sync's
/// three or four; waiting for the thread cut their sum from 134 to 97 ms (medians of 8).
const WRITER_SHARE: i64 = 512;

/// How soon the checkpoint thread looks again after finding the WAL changed, and after
/// finding it as it was.
const BUSY_CHECKPOINTS: Duration = Duration::from_millis(50);
const IDLE_CHECKPOINTS: Duration = Duration::from_millis(250);

/// The page size of a new store. Raw messages are large blobs spread over overflow pages,
/// each page written twice (WAL, then checkpoint) with a syscall and a frame header: 16 KiB
/// pages cut a benchmark sync's CPU by a tenth against 4 KiB (sys time 1.6 -> 1.2 s,
/// checkpoints 0.46 -> 0.28 s); 64 KiB pages cost more, every small index update then writing
/// a large page.
const PAGE_SIZE: i64 = 16384;

/// Where the store is: an SQLite file (the embedded default), or a PostgreSQL database
/// shared by many workers (`[store] url`).
#[derive(Debug, Clone)]
pub enum Location {
    File(PathBuf),
    Postgres(Arc<crate::config::StoreConfig>),
}

impl Location {
    /// The SQLite file; `None` for PostgreSQL.
    pub fn file(&self) -> Option<&Path> {
        match self {
            Location::File(p) => Some(p),
            Location::Postgres(_) => None,
        }
    }

    /// Opens (creating and migrating when needed) the store.
    pub fn open(&self) -> Result<Store> {
        match self {
            Location::File(p) => Store::open(p),
            Location::Postgres(cfg) => Store::open_pg(cfg),
        }
    }

    /// Opens the existing store for a command that only reads (see [`Store::open_existing`]).
    pub fn open_existing(&self) -> Result<Store> {
        match self {
            Location::File(p) => Store::open_existing(p),
            Location::Postgres(cfg) => Store::open_pg(cfg),
        }
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::File(p) => write!(f, "{}", p.display()),
            Location::Postgres(cfg) => {
                f.write_str(&pg::display_url(cfg.url.as_deref().unwrap_or("")))
            }
        }
    }
}

/// The background checkpoint thread of a [`Store`].
pub struct Checkpointer {
    wake: mpsc::SyncSender<Wake>,
    handle: std::thread::JoinHandle<()>,
}

/// What the checkpoint thread is woken for.
enum Wake {
    /// The WAL nears [`WAL_AUTOCHECKPOINT`]: copy what is committed now.
    Soon,
    /// The store is closing.
    Stop,
}

/// The checkpoint thread of [`Store::start_checkpointer`]: PASSIVE checkpoints of the
/// store's WAL through `reader`, `db` synced after each that copied something, in turns with
/// the writer's (`turns`), until told to stop. How many frames of the WAL are copied goes
/// to `copied` after each.
fn checkpoints(
    reader: &Connection,
    db: &std::fs::File,
    turns: &std::sync::Mutex<()>,
    copied: &AtomicI64,
    woken: &mpsc::Receiver<Wake>,
) {
    let (mut pause, mut last) = (IDLE_CHECKPOINTS, None);
    loop {
        match woken.recv_timeout(pause) {
            Ok(Wake::Soon) | Err(mpsc::RecvTimeoutError::Timeout) => {}
            Ok(Wake::Stop) | Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
        // PASSIVE never blocks the writer; what it cannot copy now it copies later. It
        // answers the frames in the WAL and how many of them are copied.
        let done = crate::stages::time(crate::stages::Stage::Checkpoint, || {
            let _turn = turns.lock().unwrap_or_else(|e| e.into_inner());
            let done = reader.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
            });
            if let Ok((_, c)) = &done {
                copied.store(*c, Ordering::Relaxed);
            }
            done
        });
        let now = done
            .inspect_err(|e| tracing::debug!(error = %e, "background checkpoint"))
            .ok();
        let changed = now.is_some() && now != last;
        if changed {
            // SQLite syncs the database file only after a checkpoint that reached the end of
            // the WAL, which beside a busy writer is the writer's own: it then waited for
            // every page copied since (up to 64 MiB; 0.1 s each on a slow disk). Synced
            // here, off its way.
            crate::stages::time(crate::stages::Stage::Checkpoint, || {
                let _ = db.sync_data();
            });
        }
        pause = if changed {
            BUSY_CHECKPOINTS
        } else {
            IDLE_CHECKPOINTS
        };
        last = now;
    }
}

/// One write transaction, as the pipeline sees it: the reads its decisions need and the
/// writes that record them (see the methods in `tickets.rs`). Opened by
/// [`Store::transaction`]; it commits when the closure returns `Ok`.
pub struct Tx<'a> {
    c: &'a Db,
    key: &'a [u8],
    routes: &'a [Route],
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
    conn: Db,
    /// The key of our outbound Message-IDs.
    key: Vec<u8>,
    /// Everything since `begin_dry_run` is rolled back by `finish`.
    dry_run: bool,
    /// Inside a group commit (see [`Store::begin_group`]).
    grouped: bool,
    /// The hooks and their filters: an event recorded gets one delivery row per match.
    routes: Arc<[Route]>,
    /// Why the group's transaction can no longer be committed: a write of the group failed or
    /// panicked half-way (SQLite), or SQLite rolled the transaction back by itself (some
    /// errors, e.g. a full disk). Nothing more is written in the group, and
    /// [`Store::end_group`] rolls it back and reports this cause.
    group_lost: Option<String>,
}

impl Store {
    /// Opens (creating when missing) and migrates the store at `path`.
    pub fn open(path: &Path) -> Result<Store> {
        if path.is_dir() {
            return Err(is_dir(path));
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        create_owner_only(path)?;
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| Error::store(format!("opening {}", path.display()), e))?;
        let store =
            Store::setup(conn).map_err(|e| e.during(&format!("opening {}", path.display())))?;
        // A store made by an older version, or copied with a wider mode.
        owner_only(path)?;
        Ok(store)
    }

    /// Opens (migrating when needed) the PostgreSQL store `cfg.url` names.
    pub fn open_pg(cfg: &crate::config::StoreConfig) -> Result<Store> {
        let cfg = cfg.clone();
        let db = Db::pg_reconnecting(move || pg::connect(&cfg))?;
        pg::migrate(&db)?;
        Store::with_key(db)
    }

    /// From now on a commit that moves a mailbox's cursor needs that mailbox's lease (a
    /// shared store's worker; see [`db::Fence`]).
    pub fn set_fence(&mut self, fence: Arc<dyn db::Fence>) {
        self.conn.set_fence(fence);
    }

    /// Opens the existing store at `path` for a command that only reads: never creates the
    /// file or its folder. A store the caller may write is opened as [`Store::open`] opens it
    /// (migrated, its WAL files cleaned up on close); one it may not write (a read-only file
    /// or folder, another user's store) is opened read-only without migrating, and without
    /// leaving `-wal` / `-shm` files behind: when no `-wal` file exists no connection is open
    /// and every commit is in the main file, which is then read as immutable.
    pub fn open_existing(path: &Path) -> Result<Store> {
        check_store_path(path)?;
        let during = |e: Error| e.during(&format!("opening {}", path.display()));
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| Error::store(format!("opening {}", path.display()), e))?;
        if !conn.is_readonly(rusqlite::MAIN_DB)? {
            match Store::setup(conn) {
                Ok(store) => return Ok(store),
                // A file we may write in a folder we may not: no WAL file can be made.
                Err(e) if cannot_write(&e) => {}
                Err(e) => return Err(during(e)),
            }
        }
        Store::open_read_only(path).map_err(during)
    }

    /// [`Store::open_existing`] for a store the caller cannot write.
    fn open_read_only(path: &Path) -> Result<Store> {
        let conn = read_only_connection(path)?;
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version != migrations::LATEST {
            return Err(Error::Schema(format!(
                "{} has schema version {version}, this mailticket reads version {}, and it \
                 is read-only here: run a writing command (`mailticket sync`) as its owner \
                 first",
                path.display(),
                migrations::LATEST
            )));
        }
        Store::with_key(Db::Lite(conn))
    }

    /// The store on `conn`, whose schema is current: reads the key of our Message-IDs.
    fn with_key(conn: Db) -> Result<Store> {
        let key: Vec<u8> =
            conn.query_row("SELECT key FROM store_key WHERE id = 1", params![], |r| {
                r.get(0)
            })?;
        Ok(Store {
            conn,
            key,
            dry_run: false,
            grouped: false,
            routes: Arc::from(Vec::new()),
            group_lost: None,
        })
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
        copy_tables(&conn).map_err(|e| e.during(&format!("copying {}", path.display())))?;
        conn.execute_batch("DETACH DATABASE src")?;
        Store::setup(conn)
    }

    /// An in-memory store, for tests.
    pub fn open_in_memory() -> Result<Store> {
        Store::setup(Connection::open_in_memory()?)
    }

    fn setup(mut conn: Connection) -> Result<Store> {
        const STATEMENT_CACHE: usize = 64;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        // Only a new, empty file takes it (an existing store keeps its page size).
        conn.pragma_update(None, "page_size", PAGE_SIZE)?;
        wal_mode(&conn)?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.pragma_update(None, "wal_autocheckpoint", WAL_AUTOCHECKPOINT)?;
        // Statement journals and temporary tables in memory, not in files under /var/tmp: a
        // benchmark sync wrote 1.7 GB of 16 KiB statement-journal pages there (sys time -0.5
        // s, CPU -5 %), and a full /var/tmp can no longer fail a write to the store.
        conn.pragma_update(None, "temp_store", "MEMORY")?;
        // A message's way through the store (duplicate check, threading, loop checks, the
        // rows, the acknowledgement) can use more distinct cached statements than rusqlite's
        // default of 16; a cache smaller than that working set prepares them anew each time.
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        // The same plan whatever the parameters: without it, a statement whose plan SQLite
        // weighs against a bound value (`col = ?N` may be 0 or 1, `LIKE ?N`) is marked to be
        // prepared again on every new binding, and rusqlite clears the bindings each time a
        // cached statement is used: the duplicate check, the reference lookup and the
        // attachments' read were compiled anew for every message (a fifth of a sync's CPU).
        // No plan here depends on a value (no partial index, no NOCASE index for LIKE).
        conn.set_db_config(
            rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
            true,
        )?;
        migrations::migrate(&mut conn)?;
        Store::with_key(Db::Lite(conn))
    }

    /// The hooks whose filters pick the deliveries of every event recorded from now on.
    pub fn set_routes(&mut self, routes: Vec<Route>) {
        self.routes = Arc::from(routes);
    }

    /// From now on nothing is kept: every write happens inside one outer transaction that
    /// [`Store::finish`] rolls back.
    pub fn begin_dry_run(&mut self) -> Result<()> {
        if self.conn.is_pg() {
            // Its transaction waits on the mail server between writes, as long as it takes.
            self.conn
                .batch("SET idle_in_transaction_session_timeout = 0")?;
        }
        self.conn.begin()?;
        self.dry_run = true;
        Ok(())
    }

    /// Ends a dry run (rolling everything back); a no-op otherwise.
    pub fn finish(&mut self) -> Result<()> {
        if self.dry_run {
            self.dry_run = false;
            self.group_lost = None;
            self.conn.rollback()?;
        }
        Ok(())
    }

    /// Starts a group commit: the writes until [`Store::end_group`] share one transaction,
    /// so a group is all-or-nothing and a crash replays the whole group. Used only when
    /// messages are already waiting, so a store that keeps up still commits each message on
    /// its own.
    ///
    /// Each write must still be atomic on its own. A savepoint would make it so, at a cost:
    /// on SQLite it copies every page a message touches (16 KiB each, a dozen per message)
    /// into a statement journal before writing it, a third of the store's CPU in a sync; on
    /// PostgreSQL it is two more round trips of the 11-12 a message took. So a write that
    /// fails or panics half-way loses the whole group instead ([`Store::group_lost`]), and
    /// the caller runs the group's jobs again one by one ([`Store::abandon_group`]).
    pub fn begin_group(&mut self) -> Result<()> {
        if !self.dry_run && !self.grouped {
            self.conn.begin()?;
            self.conn.hold_advances();
            self.grouped = true;
            self.group_lost = None;
        }
        Ok(())
    }

    /// Makes the cursor advances the open group held back (see [`Db::hold_advances`]), before
    /// its commit. One that fails (a cursor gone) loses the group: its jobs run again one by
    /// one, and only those of that cursor fail.
    pub fn advance_held(&mut self) {
        if self.grouped
            && self.group_lost.is_none()
            && let Err(e) = tickets::advance_held(&self.conn)
        {
            self.group_lost = Some(e.to_string());
        }
    }

    /// Whether the open group can no longer be committed (see [`Store::begin_group`]).
    pub fn group_lost(&self) -> bool {
        self.grouped && self.group_lost.is_some()
    }

    /// Rolls the open group back, keeping nothing of it; the writes after this each commit on
    /// their own.
    pub fn abandon_group(&mut self) -> Result<()> {
        if !self.grouped {
            return Ok(());
        }
        self.grouped = false;
        self.group_lost = None;
        self.conn.rollback()
    }

    /// Commits a group started by [`Store::begin_group`]. An error means that no write of
    /// the group was kept.
    pub fn end_group(&mut self) -> Result<()> {
        if !self.grouped {
            return Ok(());
        }
        self.grouped = false;
        if let Some(cause) = self.group_lost.take() {
            let _ = self.conn.rollback();
            return Err(Error::Commit(format!(
                "the group's transaction was rolled back: {cause}"
            )));
        }
        let committed = tickets::advance_held(&self.conn).and_then(|()| self.conn.commit());
        if let Err(e) = committed {
            let _ = self.conn.rollback();
            return Err(e);
        }
        Ok(())
    }

    /// Runs `f` in one write transaction (a savepoint inside a dry run or a group) and
    /// commits it; an error rolls everything `f` wrote back.
    pub fn transaction<T>(&mut self, f: impl FnOnce(&Tx<'_>) -> Result<T>) -> Result<T> {
        let key = self.key.clone();
        let routes = self.routes.clone();
        self.write(|c| {
            f(&Tx {
                c,
                key: &key,
                routes: &routes,
            })
        })
    }

    /// Runs `f` in a write transaction and commits it: a transaction of its own, or a part of
    /// the dry run's or the group's (see [`Store::begin_group`]). A panic in `f` rolls back
    /// what it wrote, then goes on.
    fn write<T>(&mut self, f: impl FnOnce(&Db) -> Result<T>) -> Result<T> {
        if !(self.dry_run || self.grouped) {
            self.conn.begin()?;
            let out = match catch_unwind(AssertUnwindSafe(|| f(&self.conn))) {
                Ok(out) => out,
                Err(panic) => {
                    let _ = self.conn.rollback();
                    resume_unwind(panic)
                }
            };
            let out = out.and_then(|out| self.conn.commit().map(|()| out));
            if out.is_err() {
                let _ = self.conn.rollback();
            }
            return out;
        }
        // A savepoint outside a transaction starts one of its own and commits on release:
        // once SQLite has dropped the outer transaction, a write here would commit alone.
        if let Some(cause) = &self.group_lost {
            return Err(Error::Commit(format!(
                "the transaction was rolled back after an earlier error: {cause}"
            )));
        }
        if self.grouped {
            let gone = || Error::Commit("the group's transaction was rolled back".into());
            if !self.conn.in_transaction() {
                self.group_lost = Some(gone().to_string());
                return Err(gone());
            }
            return match catch_unwind(AssertUnwindSafe(|| f(&self.conn))) {
                // Without a savepoint nothing else would notice.
                Ok(Ok(_)) if !self.conn.in_transaction() => {
                    self.group_lost = Some(gone().to_string());
                    Err(gone())
                }
                Ok(Ok(out)) => Ok(out),
                Ok(Err(e)) => {
                    self.group_lost = Some(e.to_string());
                    Err(e)
                }
                Err(panic) => {
                    self.group_lost = Some("a write panicked".into());
                    resume_unwind(panic)
                }
            };
        }
        let result = self.conn.savepoint(f);
        if let Err(e) = &result
            && !self.conn.in_transaction()
        {
            self.group_lost = Some(e.to_string());
        }
        result
    }

    /// The WAL file whose sync makes this store's commits durable (see [`sync_wal`]); `None`
    /// in memory, on PostgreSQL (a commit is durable when it returns) and in a dry run.
    pub(crate) fn wal_file(&self) -> Option<PathBuf> {
        self.file()
            .filter(|_| !self.dry_run)
            .map(|path| wal_of(&path))
    }

    /// Where large messages are spooled on their way in (see [`crate::spool`]).
    pub fn spool_dir(&self) -> PathBuf {
        crate::spool::dir_for(self.file().as_deref())
    }

    /// The database file's path; `None` in memory and on PostgreSQL.
    fn file(&self) -> Option<PathBuf> {
        self.conn
            .lite()?
            .path()
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
    }

    /// Moves the copying of WAL checkpoints (and their fsync) to a thread of their own, so
    /// the writer seldom waits for the disk. `None` for an in-memory store. Stop it with
    /// [`Store::stop_checkpointer`].
    ///
    /// The writer still checkpoints at [`WAL_AUTOCHECKPOINT`]: SQLite starts the WAL over
    /// only at a write that follows a checkpoint of all of it, which a thread that checkpoints
    /// beside a busy writer never finishes. Every write waits meanwhile, and the fetch behind
    /// them, so the thread keeps the writer's share small: from [`WAL_CATCH_UP`] frames on,
    /// each commit wakes it to copy that commit at once (at its own pace it was 100-1,600
    /// frames behind, and each of a benchmark sync's four writer checkpoints took 26-56 ms).
    /// The two take turns (a mutex): a checkpoint finds the other's lock taken and gives up,
    /// and on a loaded machine the writer's attempts kept meeting the thread's. So the writer
    /// does not wait for its turn either, until the WAL reaches [`WAL_LIMIT`]; nor does it
    /// take it before the thread is within [`WRITER_SHARE`] frames of the end.
    pub fn start_checkpointer(&mut self) -> Result<Option<Checkpointer>> {
        let Some(path) = self.file() else {
            return Ok(None);
        };
        let turns = Arc::new(std::sync::Mutex::new(()));
        let copied = Arc::new(AtomicI64::new(0));
        // One waiting wake-up is enough: the thread copies everything committed by then.
        let (wake, woken) = mpsc::sync_channel::<Wake>(1);
        if let Db::Lite(c) = &mut self.conn {
            let (writer, soon, progress) = (turns.clone(), wake.clone(), copied.clone());
            c.wal_hook(Some(
                move |wal: &mut rusqlite::hooks::Wal, frames: std::ffi::c_int| {
                    let frames = i64::from(frames);
                    let behind = frames - progress.load(Ordering::Relaxed);
                    if frames >= WAL_AUTOCHECKPOINT
                        && (behind <= WRITER_SHARE || frames >= WAL_LIMIT)
                    {
                        let turn = match writer.try_lock() {
                            Ok(turn) => Some(turn),
                            Err(std::sync::TryLockError::Poisoned(e)) => Some(e.into_inner()),
                            Err(std::sync::TryLockError::WouldBlock) if frames >= WAL_LIMIT => {
                                Some(writer.lock().unwrap_or_else(|e| e.into_inner()))
                            }
                            Err(std::sync::TryLockError::WouldBlock) => None,
                        };
                        if let Some(_turn) = turn {
                            // Busy (another process checkpointing): the next commit tries
                            // again.
                            let started = std::time::Instant::now();
                            let _ = wal.checkpoint();
                            tracing::debug!(
                                frames,
                                behind,
                                ms = started.elapsed().as_millis(),
                                "writer checkpoint"
                            );
                            // The WAL starts over at the next write.
                            progress.store(0, Ordering::Relaxed);
                            return Ok(());
                        }
                    }
                    if frames >= WAL_CATCH_UP {
                        let _ = soon.try_send(Wake::Soon);
                    }
                    Ok(())
                },
            ))?;
        }
        let reader = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_WRITE)?;
        reader.busy_timeout(BUSY_TIMEOUT)?;
        let db = std::fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
        let handle = std::thread::Builder::new()
            .name("checkpoint".into())
            .spawn(move || {
                checkpoints(&reader, &db, &turns, &copied, &woken);
                crate::stages::worker_done(crate::stages::Worker::Checkpoint);
            })
            .map_err(|source| Error::Spawn {
                what: "the checkpoint thread",
                source,
            })?;
        Ok(Some(Checkpointer { wake, handle }))
    }

    /// Stops the thread of [`Store::start_checkpointer`].
    pub fn stop_checkpointer(c: Option<Checkpointer>) {
        if let Some(c) = c {
            // Waits while a wake-up is queued; an error: the thread is gone already.
            let _ = c.wake.send(Wake::Stop);
            let _ = c.handle.join();
        }
    }

    /// A keyed Message-ID for an outgoing message of `ticket` (see
    /// [`crate::msgid::outbound_id`]); replies to it thread even without its outbound row.
    pub fn outbound_message_id(&self, ticket: i64, nonce: &str, domain: &str) -> String {
        crate::msgid::outbound_id(&self.key, ticket, nonce, domain)
    }

    /// The schema version of the open file.
    pub fn schema_version(&self) -> Result<i64> {
        match &self.conn {
            Db::Lite(c) => Ok(c.query_row("PRAGMA user_version", [], |r| r.get(0))?),
            Db::Pg(_) => pg::schema_version(&self.conn),
        }
    }
}

/// The WAL file beside the database file `db`.
fn wal_of(db: &Path) -> PathBuf {
    let mut wal = db.as_os_str().to_owned();
    wal.push("-wal");
    PathBuf::from(wal)
}

/// Makes every transaction committed to the store whose WAL is `wal` durable, from any
/// thread: with `synchronous = NORMAL` a commit is written to the WAL but not synced, and
/// syncing the WAL syncs every commit in it. A commit no longer in the WAL is in the database
/// file, synced by the checkpoint that copied it before the WAL could start over; no WAL, no
/// commit outside the synced database file.
pub(crate) fn sync_wal(wal: &Path) -> Result<()> {
    match std::fs::File::open(wal) {
        Ok(f) => f.sync_data().map_err(|e| Error::io(wal, e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(wal, e)),
    }
}

/// How long a connection waits for another's lock before it fails with "database is locked".
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// Puts the database in WAL mode (a no-op once it is). The switch of a new file needs it to
/// itself, and SQLite does not wait for that through the busy handler: a second process
/// opening the file at the same moment (`watch` creating the store while `tickets` reads it)
/// got "database is locked" at once, 22 times in 300 such races. So it waits here, as long as
/// the busy timeout would.
fn wal_mode(conn: &Connection) -> Result<()> {
    let started = std::time::Instant::now();
    loop {
        match conn.pragma_update(None, "journal_mode", "WAL") {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DatabaseBusy
                    && started.elapsed() < BUSY_TIMEOUT =>
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            done => return Ok(done?),
        }
    }
}

/// Runs one store operation, naming it in a store error that does not say what it was doing:
/// "store: inserting a message: database or disk is full".
pub(crate) fn sql<T>(op: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    f().map_err(|e| e.during(op))
}

/// A read-only connection to the existing store at `path` that writes nothing beside it:
/// when a `-wal` file exists a writer is at work and its WAL is read too (`mode=ro`); when
/// none exists no connection is open, every commit is in the main file, and that is read as
/// immutable (a read-only connection to a WAL database would otherwise create `-wal` and
/// `-shm` files, and leave them behind). For [`Store::open_existing`] and `doctor`.
pub fn read_only_connection(path: &Path) -> Result<Connection> {
    check_store_path(path)?;
    let mode = if wal_of(path).exists() {
        "mode=ro"
    } else {
        "immutable=1"
    };
    let conn = Connection::open_with_flags(
        format!("file:{}?{mode}", uri_path(path)),
        OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_URI
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    Ok(conn)
}

/// The error for a store path that is a folder.
fn is_dir(path: &Path) -> Error {
    Error::StorePath {
        path: path.to_owned(),
        message: format!(
            "{} is a folder, not a store file: --db and [store] path name the database file \
             itself (for example {})",
            path.display(),
            path.join("mailticket.db").display()
        ),
    }
}

/// Why `path` cannot be a store to read: it does not exist, or it is a folder.
fn check_store_path(path: &Path) -> Result<()> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => Err(is_dir(path)),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Error::StorePath {
            path: path.to_owned(),
            message: format!(
                "no store at {}; run `mailticket sync` first or check --db (or [store] path)",
                path.display()
            ),
        }),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// Whether `e` says SQLite could not write (a read-only file or folder).
fn cannot_write(e: &Error) -> bool {
    let Error::Store { source, .. } = e else {
        return false;
    };
    matches!(
        source.sqlite_error_code(),
        Some(rusqlite::ErrorCode::ReadOnly | rusqlite::ErrorCode::CannotOpen)
    )
}

/// `path` as the path part of an SQLite `file:` URI: `%`, `?` and `#` (and every byte that
/// is not plain ASCII) percent-encoded.
fn uri_path(path: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let mut out = String::new();
    for &b in path.as_os_str().as_bytes() {
        if b.is_ascii_graphic() && !matches!(b, b'%' | b'?' | b'#') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Creates the store file readable by its owner only, before SQLite opens it: the store
/// holds every message and the key of our Message-IDs. SQLite gives the WAL and
/// shared-memory files the database file's mode.
fn create_owner_only(path: &Path) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// Makes the database and its WAL / shared-memory files readable by the owner only.
pub(crate) fn owner_only(db: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for suffix in ["", "-wal", "-shm"] {
        let mut p = db.as_os_str().to_owned();
        p.push(suffix);
        let p = PathBuf::from(p);
        match std::fs::metadata(&p) {
            Ok(m) if m.permissions().mode() & 0o077 != 0 => {
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600))
                    .map_err(|e| Error::io(&p, e))?;
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(&p, e)),
        }
    }
    Ok(())
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
                params![],
            )
            .unwrap();
        let n: i64 = real
            .conn
            .query_row("SELECT count(*) FROM ticket", params![], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 0);
        drop((real, copy));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Two processes opening a new store at once (`watch` making it, `tickets` reading it)
    /// race to switch it to WAL; the loser waits instead of failing.
    #[test]
    fn two_openers_of_a_new_store_both_get_it() {
        let dir = std::env::temp_dir().join(format!("mt-race-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for i in 0..60 {
            let db = dir.join(format!("{i}.db"));
            std::fs::write(&db, b"").unwrap();
            let start = Arc::new(std::sync::Barrier::new(2));
            let open = || {
                let (db, start) = (db.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    Store::open(&db).map(drop)
                })
            };
            let (a, b) = (open(), open());
            for r in [a.join().unwrap(), b.join().unwrap()] {
                r.unwrap_or_else(|e| panic!("race {i}: {e}"));
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// Which events one hook receives: its name and its filters (empty: everything).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Route {
    /// The hook's name (`[[hook]] name`).
    pub name: String,
    /// Event types it takes; empty takes all.
    pub events: Vec<String>,
    /// Mailboxes whose events it takes; empty takes all.
    pub mailboxes: Vec<String>,
}

impl Route {
    /// Whether an event of type `kind` about `mailbox` goes to this hook.
    pub fn matches(&self, kind: &str, mailbox: &str) -> bool {
        (self.events.is_empty() || self.events.iter().any(|e| e == kind))
            && (self.mailboxes.is_empty() || self.mailboxes.iter().any(|m| m == mailbox))
    }
}

#[cfg(test)]
mod route_tests {
    use super::*;

    #[test]
    fn empty_filters_take_everything_and_filters_narrow() {
        let all = Route {
            name: "a".into(),
            ..Route::default()
        };
        assert!(all.matches("ticket.created", ""));
        let some = Route {
            name: "b".into(),
            events: vec!["ticket.created".into()],
            mailboxes: vec!["support".into()],
        };
        assert!(some.matches("ticket.created", "support"));
        assert!(!some.matches("ticket.created", "sales"));
        assert!(!some.matches("outbound.sent", "support"));
    }
}
