//! mailticket turns a support mailbox into helpdesk tickets.
//!
//! A run logs into the mailbox over IMAP, takes every message above the stored cursor (on the
//! first run: the folder's unseen backlog), and turns each one into a new ticket or a follow-up
//! on an existing one, in a single SQLite transaction that also advances the cursor. Only after
//! COMMIT does the server get its post-action (`\Seen`, MOVE or delete), so a crash at any
//! moment replays into a no-op.
//!
//! ```text
//! imap::Session ──RawMessage──▶ pipeline ─▶ message::parse ─▶ classify ─▶ thread ─▶ store
//!   (fetch above cursor,          (store thread: one transaction per message,
//!    BODY.PEEK[] in batches)       cursor advanced in the same transaction)
//!        ▲                                                        │
//!        └──────────── post-action on committed UIDs ◀────────────┘
//! ```
//!
//! Modules, one step each:
//! - [`config`] and [`secret`]: the TOML file and where passwords come from.
//! - [`tls`]: certificate trust shared by every outgoing connection.
//! - [`imap`]: connect, log in, select, fetch, post-actions, and bounds on what a server may
//!   send. Knows nothing of tickets.
//! - [`message`]: raw bytes to an owned [`message::ParsedMessage`] (mail-parser, panic-safe).
//! - [`classify`]: pure judgement "person or machine?".
//! - [`thread`]: pure helpers for reply matching (ids, subject tags, reply prefixes, keyed
//!   outbound Message-IDs, the customer of a forwarded request); the store applies them.
//! - [`store`]: the SQLite file: migrations, tickets, messages, cursors, quarantine.
//! - [`pipeline`]: one raw message into the store, exactly once.
//! - [`sync`]: one pass over the configured mailboxes; [`import`]: files, mbox, Maildir.
//! - [`watch`]: every mailbox at once, IDLE or polling, reconnecting with [`backoff`], until
//!   a cancellation token says stop.
//! - [`lock`]: one `sync` or `watch` per store at a time.
//! - [`doctor`]: every step of a sync checked for real, with the fix for each failure.
//! - [`summary`]: the per-run counts every command reports.

pub mod backoff;
pub mod classify;
pub mod config;
pub mod doctor;
pub mod error;
pub mod imap;
pub mod import;
pub mod lock;
pub mod message;
pub mod oauth2;
pub mod outbound;
pub mod pipeline;
pub mod secret;
pub mod store;
pub mod summary;
pub mod sync;
pub mod thread;
pub mod time;
pub mod tls;
pub mod watch;

pub use error::{Error, Result};
