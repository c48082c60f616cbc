//! mailticket turns a support mailbox into helpdesk tickets.
//!
//! A run logs into the mailbox over IMAP, takes every message above the stored cursor (on the
//! first run: the folder's unseen backlog), and turns each one into a new ticket or a follow-up
//! on an existing one, in a single SQLite transaction that also advances the cursor. Only after
//! COMMIT does the server get its post-action (`\Seen`, MOVE or delete), so a crash at any
//! moment replays into a no-op.
//!
//! ```text
//! sync / watch            imap::Imap::fetch_each ──FetchedMessage { uid, bytes }──┐
//! import / ingest          files, stdin ──────────────────────────── bytes ───────┤
//!                                                                                 ▼
//! pipeline::prepare   (any thread)   message::parse ─▶ classify::classify ─▶ store::pack
//! pipeline::commit    (store thread, ONE transaction per message, store::Tx):
//!     duplicate? ─▶ classify::with_history ─▶ thread::resolve ─▶ ticket + message rows
//!     ─▶ cursor advance ─▶ acknowledgement queued in the outbox (or the reason it is not)
//! sync                after COMMIT (made durable): the IMAP post-action on committed UIDs
//!     ─▶ events (ticket.created, ...) and one hook delivery per matching `[[hook]]`
//! outbound::drain     outbox ─▶ SMTP (pending → sending → sent | failed) ─▶ outbound.* events
//! hooks::deliver      deliveries ─▶ webhooks / commands (pending → sending → delivered | failed)
//! ```
//!
//! The modules decide (`classify`, `thread`, `outbound`'s ack policy); the store reads what
//! they ask for and writes what they decided, in the transaction `pipeline` opens.
//!
//! Modules, one step each:
//! - [`config`] and [`secret`]: the TOML file and where passwords come from.
//! - [`tls`]: certificate trust shared by every outgoing connection.
//! - [`imap`]: connect, log in, select, fetch, post-actions, IDLE, and bounds on what a
//!   server may send. Knows nothing of tickets.
//! - [`graph`]: Microsoft Graph, the other transport: a folder's delta query and raw MIME
//!   into the same pipeline, post-actions in JSON batches, `sendMail`; throttling honoured.
//! - [`oauth2`]: access tokens for XOAUTH2 / OAUTHBEARER, refresh tokens kept in the store.
//! - [`message`]: raw bytes to an owned [`message::ParsedMessage`] (mail-parser, panic-safe);
//!   [`skeleton`] sets large attachment bodies aside first (decoded and hashed in pieces).
//! - [`quote`]: a message's text split into the new part, quoted history and signature
//!   (pure; `show` and the JSON views use it), and our "reply above this line" marker.
//! - [`classify`]: pure judgement "person or machine?", and the loop checks on history.
//! - [`msgid`]: our keyed outbound Message-IDs.
//! - [`thread`]: which ticket a message joins, the subject tag, reply prefixes, the customer
//!   of a forwarded request.
//! - [`pipeline`]: one raw message into the store, exactly once: the decisions in order.
//! - [`quarantine`]: quarantined messages through the pipeline again, after an upgrade.
//! - [`store`]: the SQLite file (migrations, tickets, messages, cursors, quarantine, outbox,
//!   the event log and hook deliveries, the JSON shapes of a ticket and a message in
//!   [`store::view`] and each event's `data` in [`store::event`]),
//!   its worker thread ([`store::StoreThread`]) and the transaction handle ([`store::Tx`]).
//! - [`outbound`]: acknowledgement policy and templates, composing, the outbox over SMTP.
//! - [`hooks`]: ticket events out: what each event says, which hook takes it, Standard
//!   Webhooks signatures, command hooks, the delivery policy (retries, order per ticket), and
//!   when a mailbox counts as failing.
//! - [`event_type`]: the names of ticket events, shared by the store, the config and the hooks.
//! - [`pass`]: what a catch-up pass needs whatever the transport (options, budget, the job
//!   that takes a fetched message to the store).
//! - [`spool`]: a large message's bytes on disk between its fetch in parts and its
//!   transaction, so that it is never held whole in memory.
//! - [`sync`]: one pass over the configured mailboxes; [`import`]: files, mbox, Maildir.
//! - [`watch`]: every mailbox at once, IDLE or polling, reconnecting with [`backoff`], until
//!   a cancellation token says stop.
//! - [`lock`]: one `sync` or `watch` per store at a time.
//! - [`lease`]: on a PostgreSQL store, which worker holds which mailbox (leases with fencing
//!   tokens), for `watch` workers on many machines and cron `sync` beside them.
//! - [`doctor`]: every step of a sync checked for real, with the fix for each failure.
//! - [`summary`]: the per-run counts every command reports.
//! - [`progress`]: how far a long run is, counted for the binary's progress line.
//! - [`error`]: the one error type; [`time`]: Unix seconds, RFC 3339 and local time.

pub mod backoff;
pub mod classify;
pub mod config;
pub mod doctor;
pub mod error;
pub mod event_type;
pub mod graph;
pub mod hooks;
pub mod imap;
pub mod import;
pub mod lease;
pub mod lock;
pub mod message;
pub mod msgid;
pub mod oauth2;
pub mod outbound;
pub mod pass;
pub mod pipeline;
pub mod progress;
pub mod quarantine;
pub mod quote;
pub mod secret;
pub mod skeleton;
pub mod spool;
pub mod stages;
pub mod store;
pub mod summary;
pub mod sync;
pub mod thread;
pub mod time;
pub mod tls;
pub mod watch;

pub use error::{Error, Result};
