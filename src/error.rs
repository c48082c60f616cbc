//! The library's one error type, grouped by what the caller does next.
//!
//! `Config` errors are the user's to fix (exit 2); a taken store lock means "try again later"
//! (exit 75); everything else is a runtime failure (exit 1). [`Error::is_transient`] says whether trying again later may help.
//!
//! A variant that wraps a lower error keeps it as its `#[source]` (so `is_transient` can look
//! at an SQLite code or an I/O kind) and also says it in its own message, so that a log line
//! or a run summary that prints one error shows the cause. Whoever prints a whole chain
//! (the binary, with `{:#}`) uses [`chain_text`], which says each cause once.

use std::path::PathBuf;

/// Everything that can go wrong below the CLI.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is wrong: fix the file, then run again.
    #[error("{path}: {message}")]
    Config { path: PathBuf, message: String },

    /// A secret (password, token) could not be read.
    #[error("secret for {what}: {message}")]
    Secret { what: String, message: String },

    /// A network peer could not be reached or dropped the connection.
    #[error("{host}: {message}")]
    Network { host: String, message: String },

    /// TLS failed: the certificate is not trusted, or the handshake broke.
    #[error("{host}: TLS: {message}")]
    Tls { host: String, message: String },

    /// The server refused our credentials.
    #[error("{host}: authentication failed for {user}: {message}")]
    Auth {
        host: String,
        user: String,
        message: String,
    },

    /// OAuth2: the token endpoint refused us for good (a dead refresh token, a wrong client
    /// secret), or a token could not be had. `relogin`: only `mailticket oauth2 login` helps.
    #[error("{account}: OAuth2: {message}")]
    OAuth2 {
        account: String,
        message: String,
        relogin: bool,
    },

    /// The server answered something we cannot work with.
    #[error("{host}: {message}")]
    Protocol { host: String, message: String },

    /// A network operation did not finish in time.
    #[error("{host}: timed out after {secs} s while {what}")]
    Timeout {
        host: String,
        what: String,
        secs: u64,
    },

    /// The SQLite store failed while doing `op` (empty when the caller did not say).
    #[error("store: {}{source}", if op.is_empty() { String::new() } else { format!("{op}: ") })]
    Store {
        op: String,
        #[source]
        source: rusqlite::Error,
    },

    /// The PostgreSQL store failed while doing `op` (empty when the caller did not say).
    /// (The server's message says it all: the client error is not given as a source, whose
    /// text would say it again.)
    #[error("store: {}{}", if op.is_empty() { String::new() } else { format!("{op}: ") }, pg_text(pg))]
    Postgres { op: String, pg: postgres::Error },

    /// On a shared store, this worker no longer holds the mailbox's lease (another worker
    /// took it over, or it expired): nothing of the mailbox was committed.
    #[error("mailbox {mailbox}: lease lost, nothing committed: {message}")]
    LeaseLost { mailbox: String, message: String },

    /// The store's schema is not one this build can use.
    #[error("store: {0}")]
    Schema(String),

    /// `--db` (or `[store] path`) names no store: nothing there, or a folder.
    #[error("{message}")]
    StorePath { path: PathBuf, message: String },

    /// A group commit failed, or SQLite rolled a group's transaction back: nothing of the
    /// group was kept.
    #[error("not stored: {0}")]
    Commit(String),

    /// A stored message could not be packed or unpacked.
    #[error("stored message: {0}")]
    Codec(String),

    /// An outgoing message could not be rendered or composed.
    #[error("composing a message: {0}")]
    Compose(String),

    /// A CA file named by the config cannot be used (exit status 2).
    #[error("ca-file {}: {message}", path.display())]
    CaFile { path: PathBuf, message: String },

    /// A thread could not be started.
    #[error("cannot start {what}: {source}")]
    Spawn {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },

    /// A part of this program stopped (a worker thread, a channel): a bug or a dying process.
    #[error("internal: {0}")]
    Internal(String),

    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },

    /// Another `sync` or `watch` holds the store's lock: try again later (exit status 75).
    #[error("another run holds the lock {path} ({holder}); not starting")]
    Locked { path: PathBuf, holder: String },
}

impl Error {
    /// Whether the same operation may succeed when tried again later, without any change.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Network { .. } | Error::Timeout { .. } | Error::Locked { .. } => true,
            Error::Store { source, .. } => matches!(
                source.sqlite_error_code(),
                Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
            ),
            Error::Postgres { pg, .. } => {
                pg.is_closed()
                    || pg.code().is_some_and(|c| {
                        [
                            postgres::error::SqlState::T_R_SERIALIZATION_FAILURE,
                            postgres::error::SqlState::T_R_DEADLOCK_DETECTED,
                            postgres::error::SqlState::ADMIN_SHUTDOWN,
                            postgres::error::SqlState::CANNOT_CONNECT_NOW,
                        ]
                        .contains(c)
                    })
                    || pg.as_db_error().is_none()
            }
            Error::Io { source, .. } => matches!(
                source.kind(),
                std::io::ErrorKind::Interrupted | std::io::ErrorKind::WouldBlock
            ),
            _ => false,
        }
    }

    /// Whether another writer of a shared store committed the same row first (a unique key
    /// taken between our check and our insert): the same work done again sees its row and
    /// decides anew.
    pub fn is_conflict(&self) -> bool {
        matches!(self, Error::Postgres { pg, .. }
            if pg.code() == Some(&postgres::error::SqlState::UNIQUE_VIOLATION))
    }

    /// Whether this is the user's configuration to fix (exit status 2).
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            Error::Config { .. }
                | Error::Secret { .. }
                | Error::CaFile { .. }
                | Error::StorePath { .. }
        )
    }

    /// A store error that says what the store was doing.
    pub fn store(op: impl Into<String>, source: rusqlite::Error) -> Self {
        Error::Store {
            op: op.into(),
            source,
        }
    }

    /// This error, saying what the store was doing when it was a store error that did not
    /// say yet; any other error unchanged.
    pub fn during(self, op: &str) -> Self {
        match self {
            Error::Store { op: o, source } if o.is_empty() => Error::store(op, source),
            Error::Postgres { op: o, pg } if o.is_empty() => Error::Postgres {
                op: op.to_owned(),
                pg,
            },
            other => other,
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

impl From<rusqlite::Error> for Error {
    fn from(source: rusqlite::Error) -> Self {
        Error::store(String::new(), source)
    }
}

impl From<postgres::Error> for Error {
    fn from(pg: postgres::Error) -> Self {
        Error::Postgres {
            op: String::new(),
            pg,
        }
    }
}

/// A PostgreSQL error as one line: the server's message (with its detail) rather than the
/// client's "db error" wrapper.
fn pg_text(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => match db.detail() {
            Some(d) => format!("{} ({d})", db.message()),
            None => db.message().to_owned(),
        },
        None => e.to_string(),
    }
}

/// `err` and its causes as one line, each said once: a cause is left out when the text so far
/// already quotes it, or when it only says the cause before it again in more words
/// (`Error code 13: database or disk is full` under `database or disk is full`).
pub fn chain_text(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut last = out.clone();
    let mut next = err.source();
    while let Some(cause) = next {
        let text = cause.to_string();
        if !text.is_empty() && !out.contains(&text) && !text.ends_with(&last) {
            out.push_str(": ");
            out.push_str(&text);
        }
        last = text;
        next = cause.source();
    }
    out
}

/// The library's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chain_says_each_cause_once() {
        let sql = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(13),
            Some("database or disk is full".into()),
        );
        let e = Error::store("inserting a message", sql);
        let text = chain_text(&e);
        assert_eq!(text, "store: inserting a message: database or disk is full");
        let io = Error::io("/x/y", std::io::Error::other("no space"));
        assert_eq!(chain_text(&io), "/x/y: no space");
        assert!(
            !Error::Store {
                op: String::new(),
                source: rusqlite::Error::InvalidQuery
            }
            .to_string()
            .contains("store: :")
        );
    }
}
