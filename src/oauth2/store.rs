//! Tokens kept in the SQLite store (table `oauth2_token`, migration 4), on a connection of
//! their own with `synchronous = FULL`: a rotated refresh token is on disk before the
//! access token that came with it is used. The database (and its WAL) hold refresh tokens,
//! so they are made owner-only (0600). Refreshes are serialised across processes by an
//! advisory lock on `<database>.oauth2.lock`, so a `doctor` beside a running `watch` never
//! spends a refresh token the other is about to use.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};

use crate::error::{Error, Result};

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
#[derive(Debug)]
pub struct TokenStore {
    conn: Mutex<Connection>,
    lock_path: PathBuf,
}

/// A held refresh lock; dropping it lets the next refresher in.
#[derive(Debug)]
pub struct RefreshLock(#[allow(dead_code)] File);

impl TokenStore {
    /// Opens the (already migrated) store at `db` for tokens and makes its files owner-only.
    pub fn open(db: &Path) -> Result<TokenStore> {
        // creates and migrates it when needed
        drop(crate::store::Store::open(db)?);
        let conn = Connection::open(db)
            .map_err(|e| Error::store(format!("opening {} for tokens", db.display()), e))?;
        conn.busy_timeout(Duration::from_secs(30))?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        let mut lock = db.as_os_str().to_owned();
        lock.push(".oauth2.lock");
        let store = TokenStore {
            conn: Mutex::new(conn),
            lock_path: PathBuf::from(lock),
        };
        crate::store::owner_only(db)?;
        Ok(store)
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The row of `account`, if any.
    pub fn load(&self, account: &str) -> Result<Option<TokenRow>> {
        let row = self
            .conn()
            .query_row(
                "SELECT refresh_token, seed_fp, access_token, access_obtained, access_expires,
                        scope, last_refresh, refreshes, dead_fp, last_error
                 FROM oauth2_token WHERE account = ?1",
                [account],
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
            .optional()?;
        Ok(row)
    }

    /// Writes `row` for `account` (one durable transaction).
    pub fn save(&self, account: &str, row: &TokenRow) -> Result<()> {
        self.conn().execute(
            "INSERT INTO oauth2_token (account, refresh_token, seed_fp, access_token,
                 access_obtained, access_expires, scope, last_refresh, refreshes, dead_fp,
                 last_error, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, unixepoch())
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
            ],
        )?;
        Ok(())
    }

    /// Takes the cross-process refresh lock, waiting at most `wait`.
    pub fn lock(&self, wait: Duration) -> Result<RefreshLock> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&self.lock_path)
            .map_err(|e| Error::io(&self.lock_path, e))?;
        let deadline = std::time::Instant::now() + wait;
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(RefreshLock(file)),
                Err(std::fs::TryLockError::WouldBlock) => {
                    if std::time::Instant::now() >= deadline {
                        return Err(Error::Locked {
                            path: self.lock_path.clone(),
                            holder: "another process is refreshing an OAuth2 token".into(),
                        });
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(std::fs::TryLockError::Error(e)) => return Err(Error::io(&self.lock_path, e)),
            }
        }
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
        let s = TokenStore::open(&db).unwrap();
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
        let other = TokenStore::open(&db).unwrap();
        assert!(other.lock(Duration::from_millis(100)).is_err());
        drop(held);
        assert!(other.lock(Duration::from_millis(100)).is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
