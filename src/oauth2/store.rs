//! Tokens kept in the store (table `oauth2_token`), on a connection of their own. On SQLite
//! that connection has `synchronous = FULL`: a rotated refresh token is on disk before the
//! access token that came with it is used, and the database (and its WAL), which hold
//! refresh tokens, are made owner-only (0600). Refreshes are serialised across processes by
//! an advisory lock: on `<database>.oauth2.lock` for SQLite, a PostgreSQL advisory lock for a
//! shared store (where every worker on every machine refreshes through the same rows), so a
//! `doctor` beside a running `watch` never spends a refresh token the other is about to use.

use std::fs::{File, OpenOptions};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::store::Location;
use crate::store::db::{Db, params};

/// The PostgreSQL advisory lock key of OAuth2 refreshes ("mtoauth2" in ASCII).
const REFRESH_LOCK: i64 = 0x6d74_6f61_7574_6832;

/// One account's row.
#[derive(Debug, Clone, Default)]
pub struct TokenRow {
    pub refresh_token: Option<String>,
    pub seed_fp: Option<String>,
    pub access_token: Option<String>,
    pub access_obtained: Option<i64>,
    pub access_expires: Option<i64>,
    pub scope: Option<String>,
    pub last_refresh: Option<i64>,
    pub refreshes: i64,
    pub dead_fp: Option<String>,
    pub last_error: Option<String>,
}

/// The token table of one store.
pub struct TokenStore {
    conn: Arc<Mutex<Db>>,
    /// On PostgreSQL, whether this process holds the refresh lock (an advisory lock is
    /// held by a session, and a session may take it again: this keeps this process's own
    /// refreshers apart).
    held: Arc<AtomicBool>,
    /// The lock file of an SQLite store; `None` on PostgreSQL.
    lock_path: Option<PathBuf>,
}

impl std::fmt::Debug for TokenStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenStore")
            .field("lock_path", &self.lock_path)
            .finish_non_exhaustive()
    }
}

/// A held refresh lock; dropping it lets the next refresher in.
pub enum RefreshLock {
    File(#[allow(dead_code)] File),
    Pg(Arc<Mutex<Db>>, Arc<AtomicBool>),
}

impl std::fmt::Debug for RefreshLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RefreshLock")
    }
}

impl Drop for RefreshLock {
    fn drop(&mut self) {
        if let RefreshLock::Pg(conn, held) = self {
            let db = conn.lock().unwrap_or_else(|e| e.into_inner());
            if let Err(e) = db.batch(&format!("SELECT pg_advisory_unlock({REFRESH_LOCK})")) {
                tracing::debug!(error = %e, "releasing the OAuth2 refresh lock");
            }
            held.store(false, Ordering::Release);
        }
    }
}

impl TokenStore {
    /// Opens the store at `at` (creating and migrating it when needed) for tokens; an
    /// SQLite store's files are made owner-only.
    pub fn open(at: &Location) -> Result<TokenStore> {
        drop(at.open()?);
        let Some(db) = at.file() else {
            let Location::Postgres(cfg) = at else {
                unreachable!("a store is a file or PostgreSQL")
            };
            return Ok(TokenStore {
                conn: Arc::new(Mutex::new({
                    let cfg = cfg.clone();
                    Db::pg_reconnecting(move || crate::store::pg::connect(&cfg))?
                })),
                held: Arc::new(AtomicBool::new(false)),
                lock_path: None,
            });
        };
        let conn = rusqlite::Connection::open(db)
            .map_err(|e| Error::store(format!("opening {} for tokens", db.display()), e))?;
        conn.busy_timeout(Duration::from_secs(30))?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        let mut lock = db.as_os_str().to_owned();
        lock.push(".oauth2.lock");
        let store = TokenStore {
            conn: Arc::new(Mutex::new(Db::Lite(conn))),
            held: Arc::new(AtomicBool::new(false)),
            lock_path: Some(PathBuf::from(lock)),
        };
        crate::store::owner_only(db)?;
        Ok(store)
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Db> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The row of `account`, if any.
    pub fn load(&self, account: &str) -> Result<Option<TokenRow>> {
        self.conn().query_opt(
            "SELECT refresh_token, seed_fp, access_token, access_obtained, access_expires,
                    scope, last_refresh, refreshes, dead_fp, last_error
             FROM oauth2_token WHERE account = ?1",
            params![account],
            |r| {
                Ok(TokenRow {
                    refresh_token: r.get(0)?,
                    seed_fp: r.get(1)?,
                    access_token: r.get(2)?,
                    access_obtained: r.get(3)?,
                    access_expires: r.get(4)?,
                    scope: r.get(5)?,
                    last_refresh: r.get(6)?,
                    refreshes: r.get(7)?,
                    dead_fp: r.get(8)?,
                    last_error: r.get(9)?,
                })
            },
        )
    }

    /// Writes `row` for `account` (one durable transaction).
    pub fn save(&self, account: &str, row: &TokenRow) -> Result<()> {
        self.conn().execute(
            "INSERT INTO oauth2_token (account, refresh_token, seed_fp, access_token,
                 access_obtained, access_expires, scope, last_refresh, refreshes, dead_fp,
                 last_error, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
             ON CONFLICT (account) DO UPDATE SET
                 refresh_token = excluded.refresh_token, seed_fp = excluded.seed_fp,
                 access_token = excluded.access_token, access_obtained = excluded.access_obtained,
                 access_expires = excluded.access_expires, scope = excluded.scope,
                 last_refresh = excluded.last_refresh, refreshes = excluded.refreshes,
                 dead_fp = excluded.dead_fp, last_error = excluded.last_error,
                 updated_at = excluded.updated_at",
            params![
                account,
                row.refresh_token,
                row.seed_fp,
                row.access_token,
                row.access_obtained,
                row.access_expires,
                row.scope,
                row.last_refresh,
                row.refreshes,
                row.dead_fp,
                row.last_error,
                crate::time::now(),
            ],
        )?;
        Ok(())
    }

    /// Takes the cross-process refresh lock, waiting at most `wait`.
    pub fn lock(&self, wait: Duration) -> Result<RefreshLock> {
        let deadline = std::time::Instant::now() + wait;
        let Some(path) = &self.lock_path else {
            loop {
                if self
                    .held
                    .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    let got = self.conn().query_row(
                        &format!("SELECT pg_try_advisory_lock({REFRESH_LOCK})"),
                        params![],
                        |r| r.get::<bool>(0),
                    );
                    match got {
                        Ok(true) => {
                            return Ok(RefreshLock::Pg(self.conn.clone(), self.held.clone()));
                        }
                        Ok(false) => self.held.store(false, Ordering::Release),
                        Err(e) => {
                            self.held.store(false, Ordering::Release);
                            return Err(e);
                        }
                    }
                }
                if std::time::Instant::now() >= deadline {
                    return Err(busy(PathBuf::from("[store] url")));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(RefreshLock::File(file)),
                Err(std::fs::TryLockError::WouldBlock) => {
                    if std::time::Instant::now() >= deadline {
                        return Err(busy(path.clone()));
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(std::fs::TryLockError::Error(e)) => return Err(Error::io(path, e)),
            }
        }
    }
}

fn busy(path: PathBuf) -> Error {
    Error::Locked {
        path,
        holder: "another process is refreshing an OAuth2 token".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_round_trip_and_files_become_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("mt-tokens-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let db = dir.join("t.db");
        let _ = std::fs::remove_file(&db);
        drop(crate::store::Store::open(&db).unwrap());
        std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
        let s = TokenStore::open(&Location::File(db.clone())).unwrap();
        let mode = std::fs::metadata(&db).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(s.load("mailbox:a").unwrap().is_none());
        let row = TokenRow {
            refresh_token: Some("r1".into()),
            refreshes: 3,
            ..TokenRow::default()
        };
        s.save("mailbox:a", &row).unwrap();
        let back = s.load("mailbox:a").unwrap().unwrap();
        assert_eq!(back.refresh_token.as_deref(), Some("r1"));
        assert_eq!(back.refreshes, 3);
        let held = s.lock(Duration::from_millis(10)).unwrap();
        let other = TokenStore::open(&Location::File(db)).unwrap();
        assert!(other.lock(Duration::from_millis(100)).is_err());
        drop(held);
        assert!(other.lock(Duration::from_millis(100)).is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
