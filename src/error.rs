//! The library's one error type, grouped by what the caller does next.
//!
//! `Config` errors are the user's to fix (exit 2); a taken store lock means "try again later"
//! (exit 75); everything else is a runtime failure (exit 1). [`Error::is_transient`] says whether trying again later may help.

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

    /// The SQLite store failed.
    #[error("store: {0}")]
    Store(#[from] rusqlite::Error),

    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },

    /// Another `sync` or `watch` holds the store's lock: try again later (exit status 75).
    #[error("another run holds the lock {path} ({holder}); not starting")]
    Locked { path: PathBuf, holder: String },

    /// Anything else that the user should see as it is.
    #[error("{0}")]
    Other(String),
}

impl Error {
    /// Whether the same operation may succeed when tried again later, without any change.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Network { .. } | Error::Timeout { .. } | Error::Locked { .. } => true,
            Error::Store(e) => matches!(
                e.sqlite_error_code(),
                Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
            ),
            Error::Io { source, .. } => matches!(
                source.kind(),
                std::io::ErrorKind::Interrupted | std::io::ErrorKind::WouldBlock
            ),
            _ => false,
        }
    }

    /// Whether this is the user's configuration to fix (exit status 2).
    pub fn is_config(&self) -> bool {
        matches!(self, Error::Config { .. } | Error::Secret { .. })
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

/// The library's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
