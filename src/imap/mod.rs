//! IMAP: connect (TLS, STARTTLS, login), select, search, fetch, post-actions and IDLE.
//!
//! This module speaks the protocol and nothing else: it knows UIDs and bytes, not tickets.
//! Every network await runs under the mailbox's timeout (async-imap has none of its own), and
//! every error names the host.
//!
//! Imports run one way: `connect` (opening a session) and `idle` build on `session` (the
//! commands, [`Imap`]), and all three on `wire` (the watched byte stream, timeouts, error
//! translation, sequence sets) and `guard` (what a server may send).

mod connect;
mod guard;
mod idle;
mod session;
mod wire;

pub use connect::{authenticate, connect, dial, secure};
pub use idle::Wake;
pub use session::{Body, FetchedMessage, HEAD_BYTES, Imap, Selected};
pub use wire::{Client, Conn, uid_runs, uid_set};
