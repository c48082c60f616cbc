//! The commands a sync needs, on an authenticated session, each under the timeout.

use std::time::Duration;

use futures_util::TryStreamExt;

use super::connect::{Conn, imap_err, timed};
use super::{quote, uid_set};
use crate::error::{Error, Result};

/// An authenticated IMAP session with its host name and timeout.
pub struct Imap {
    pub(super) session: async_imap::Session<Conn>,
    pub(super) host: String,
    pub(super) limit: Duration,
    pub(super) caps: Vec<String>,
}

/// What SELECT told us about the folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Selected {
    /// The folder's UIDVALIDITY.
    pub uidvalidity: u32,
    /// UIDNEXT, when the server sent it.
    pub uidnext: Option<u32>,
    /// Number of messages.
    pub exists: u32,
}

/// One message as fetched: the exact bytes and where they came from.
#[derive(Debug)]
pub struct FetchedMessage {
    /// Its UID.
    pub uid: u32,
    /// INTERNALDATE as Unix seconds, when the server sent it.
    pub internal_date: Option<i64>,
    /// The whole message, as the server stores it.
    pub bytes: Vec<u8>,
}

impl Imap {
    pub(crate) fn new(session: async_imap::Session<Conn>, host: String, limit: Duration) -> Self {
        Imap {
            session,
            host,
            limit,
            caps: Vec::new(),
        }
    }

    /// The server's host name.
    pub fn host(&self) -> &str {
        &self.host
    }

    pub(crate) async fn load_capabilities(&mut self) -> Result<()> {
        let host = self.host.clone();
        let caps = timed(&self.host, self.limit, "reading capabilities", async {
            self.session
                .capabilities()
                .await
                .map_err(|e| imap_err(&host, e))
        })
        .await?;
        self.caps = caps
            .iter()
            .map(|c| match c {
                async_imap::types::Capability::Imap4rev1 => "IMAP4REV1".to_owned(),
                async_imap::types::Capability::Auth(a) => format!("AUTH={}", a.to_uppercase()),
                async_imap::types::Capability::Atom(a) => a.to_uppercase(),
            })
            .collect();
        Ok(())
    }

    /// Whether the server announced `cap` (case-insensitive).
    pub fn has_capability(&self, cap: &str) -> bool {
        self.caps.iter().any(|c| c.eq_ignore_ascii_case(cap))
    }

    /// All announced capabilities, upper-case.
    pub fn capabilities(&self) -> &[String] {
        &self.caps
    }

    /// SELECTs `folder` read-write.
    pub async fn select(&mut self, folder: &str) -> Result<Selected> {
        let host = self.host.clone();
        let mb = timed(&self.host, self.limit, "selecting the folder", async {
            self.session.select(folder).await.map_err(|e| match e {
                async_imap::error::Error::No(m) => Error::Protocol {
                    host: host.clone(),
                    message: format!("cannot select folder {folder:?}: {m}"),
                },
                e => imap_err(&host, e),
            })
        })
        .await?;
        let uidvalidity = mb.uid_validity.ok_or_else(|| Error::Protocol {
            host: self.host.clone(),
            message: format!("folder {folder:?} has no UIDVALIDITY"),
        })?;
        Ok(Selected {
            uidvalidity,
            uidnext: mb.uid_next,
            exists: mb.exists,
        })
    }

    /// UID SEARCH; the result is sorted.
    pub async fn uid_search(&mut self, query: &str) -> Result<Vec<u32>> {
        let host = self.host.clone();
        let set = timed(&self.host, self.limit, "searching", async {
            self.session
                .uid_search(query)
                .await
                .map_err(|e| imap_err(&host, e))
        })
        .await?;
        let mut v: Vec<u32> = set.into_iter().collect();
        v.sort_unstable();
        Ok(v)
    }

    /// `(uid, RFC822.SIZE)` of the messages in `set`, sorted by UID.
    pub async fn sizes(&mut self, set: &str) -> Result<Vec<(u32, u32)>> {
        let host = self.host.clone();
        let limit = self.limit;
        let mut stream = timed(&self.host, limit, "fetching sizes", async {
            self.session
                .uid_fetch(set, "(UID RFC822.SIZE)")
                .await
                .map_err(|e| imap_err(&host, e))
        })
        .await?;
        let mut out = Vec::new();
        loop {
            let next = timed(&host, limit, "fetching sizes", async {
                stream.try_next().await.map_err(|e| imap_err(&host, e))
            })
            .await?;
            let Some(f) = next else { break };
            if let (Some(uid), Some(size)) = (f.uid, f.size) {
                out.push((uid, size));
            }
        }
        out.sort_unstable();
        out.dedup_by_key(|p| p.0);
        Ok(out)
    }

    /// Fetches the messages `uids` with `BODY.PEEK[]` (never sets `\Seen`), handing each to
    /// `each` as it arrives; `each` may wait (for room in the store's queue) before returning.
    /// Returns the UIDs that the server did not send (expunged meanwhile).
    pub async fn fetch_each<F, Fut>(&mut self, uids: &[u32], mut each: F) -> Result<Vec<u32>>
    where
        F: FnMut(FetchedMessage) -> Fut,
        Fut: std::future::Future<Output = Result<()>>,
    {
        let host = self.host.clone();
        let limit = self.limit;
        let set = uid_set(uids);
        let mut stream = timed(&self.host, limit, "fetching messages", async {
            self.session
                .uid_fetch(&set, "(UID INTERNALDATE RFC822.SIZE BODY.PEEK[])")
                .await
                .map_err(|e| imap_err(&host, e))
        })
        .await?;
        let mut got = Vec::with_capacity(uids.len());
        loop {
            let next = timed(&host, limit, "fetching messages", async {
                stream.try_next().await.map_err(|e| imap_err(&host, e))
            })
            .await?;
            let Some(f) = next else { break };
            // Unsolicited FETCH responses (flag changes made elsewhere) carry no body.
            let (Some(uid), Some(body)) = (f.uid, f.body()) else {
                continue;
            };
            if uids.binary_search(&uid).is_err() {
                continue;
            }
            got.push(uid);
            let internal_date = f.internal_date().map(|d| d.timestamp());
            each(FetchedMessage {
                uid,
                internal_date,
                bytes: body.to_vec(),
            })
            .await?;
        }
        got.sort_unstable();
        Ok(uids
            .iter()
            .copied()
            .filter(|u| got.binary_search(u).is_err())
            .collect())
    }

    /// Adds `flags` (e.g. `\Seen`) to the messages in `uids`, in one command.
    pub async fn add_flags(&mut self, uids: &[u32], flags: &str) -> Result<()> {
        if uids.is_empty() {
            return Ok(());
        }
        let cmd = format!("UID STORE {} +FLAGS.SILENT ({flags})", uid_set(uids));
        self.run(&cmd, "storing flags").await
    }

    /// Moves `uids` to `folder`: UID MOVE when the server has it, else COPY, `\Deleted` and
    /// expunge.
    pub async fn move_to(&mut self, uids: &[u32], folder: &str) -> Result<()> {
        if uids.is_empty() {
            return Ok(());
        }
        let set = uid_set(uids);
        if self.has_capability("MOVE") {
            return self
                .run(&format!("UID MOVE {set} {}", quote(folder)), "moving")
                .await;
        }
        self.run(&format!("UID COPY {set} {}", quote(folder)), "copying")
            .await?;
        self.delete(uids).await
    }

    /// Sets `\Deleted` on `uids` and expunges exactly those (UID EXPUNGE when the server has
    /// UIDPLUS; else a plain EXPUNGE, which also removes other messages marked deleted).
    pub async fn delete(&mut self, uids: &[u32]) -> Result<()> {
        if uids.is_empty() {
            return Ok(());
        }
        self.add_flags(uids, "\\Deleted").await?;
        if self.has_capability("UIDPLUS") {
            self.run(&format!("UID EXPUNGE {}", uid_set(uids)), "expunging")
                .await
        } else {
            tracing::warn!(host = %self.host, "server lacks UIDPLUS: plain EXPUNGE");
            self.run("EXPUNGE", "expunging").await
        }
    }

    /// Whether `folder` exists (LIST).
    pub async fn folder_exists(&mut self, folder: &str) -> Result<bool> {
        let host = self.host.clone();
        timed(&self.host, self.limit, "listing folders", async {
            let stream = self
                .session
                .list(Some(""), Some(folder))
                .await
                .map_err(|e| imap_err(&host, e))?;
            let names: Vec<_> = stream.try_collect().await.map_err(|e| imap_err(&host, e))?;
            Ok(!names.is_empty())
        })
        .await
    }

    /// Creates `folder` unless it exists.
    pub async fn ensure_folder(&mut self, folder: &str) -> Result<()> {
        if !self.folder_exists(folder).await? {
            self.run(&format!("CREATE {}", quote(folder)), "creating a folder")
                .await?;
            tracing::info!(host = %self.host, folder, "created folder");
        }
        Ok(())
    }

    /// Says goodbye; errors are ignored, the connection is dropped either way.
    pub async fn logout(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(5), self.session.logout()).await;
    }

    async fn run(&mut self, cmd: &str, what: &str) -> Result<()> {
        let host = self.host.clone();
        timed(&self.host, self.limit, what, async {
            self.session
                .run_command_and_check_ok(cmd)
                .await
                .map_err(|e| imap_err(&host, e))
        })
        .await
    }
}
