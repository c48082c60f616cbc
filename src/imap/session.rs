//! The commands a sync needs, on an authenticated session, each under the timeout.
//!
//! Every command also runs under an [`Allowance`] (how many bytes, lines and how large a
//! literal its answer may have), and a FETCH's answer as a whole under a deadline that grows
//! with what was asked for: a server that floods, repeats or drips cannot keep a command, or
//! memory, going for ever. When the server closes the connection, the error says so and
//! names the step.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use async_imap::types::UnsolicitedResponse;
use futures_util::TryStreamExt;
use tokio::time::Instant;

use super::guard::Allowance;
use super::wire::{Conn, imap_err, quote, timed, uid_set};
use crate::error::{Error, Result};
use crate::spool::{PART_BYTES, Spool};

/// How much of a message's beginning is fetched to keep its headers when the message itself
/// is too large to fetch.
pub const HEAD_BYTES: u32 = 64 << 10;

/// An authenticated IMAP session with its host name and timeout.
pub struct Imap {
    pub(super) session: async_imap::Session<Conn>,
    pub(super) host: String,
    pub(super) limit: Duration,
    pub(super) caps: Vec<String>,
    /// The selected folder's size, as the server last said: what a SEARCH may return.
    pub(super) exists: u64,
    /// The folder grew (EXISTS / RECENT) while we were busy with something else.
    pub(super) grew: bool,
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

/// A fetched message's bytes: the server's answer they came in, kept whole instead of
/// copied out of it (a message of [`KEEP_ANSWER_FROM`] bytes or more), or bytes of their
/// own (a small message, a header cut from its message).
///
/// The copy was a fifth of the fetching thread's CPU in the benchmark sync, most of it page
/// faults on the fresh memory of each large message; a large message's answer holds little
/// more than the message itself (its FETCH line, and at most a few KiB read past it).
pub enum Body {
    /// The answer: its body is the message.
    Answer(async_imap::types::Fetch),
    /// Bytes of their own.
    Owned(Vec<u8>),
}

impl Body {
    /// The bytes, in a buffer of their own (copied from an answer).
    pub fn into_vec(self) -> Vec<u8> {
        match self {
            Body::Answer(_) => self.as_ref().to_vec(),
            Body::Owned(v) => v,
        }
    }
}

impl AsRef<[u8]> for Body {
    fn as_ref(&self) -> &[u8] {
        match self {
            Body::Answer(f) => f.body().unwrap_or_default(),
            Body::Owned(v) => v,
        }
    }
}

impl std::ops::Deref for Body {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        self.as_ref()
    }
}

impl From<Body> for Vec<u8> {
    fn from(b: Body) -> Vec<u8> {
        b.into_vec()
    }
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Body({} bytes)", self.len())
    }
}

/// A message at least this large stays in its answer's buffer ([`Body::Answer`]).
const KEEP_ANSWER_FROM: usize = 64 << 10;

/// One message as fetched: the exact bytes and where they came from.
#[derive(Debug)]
pub struct FetchedMessage {
    /// Its UID.
    pub uid: u32,
    /// INTERNALDATE as Unix seconds, when the server sent it.
    pub internal_date: Option<i64>,
    /// The whole message, as the server stores it; for a message too large to fetch
    /// (`too_large`), only its header.
    pub bytes: Body,
    /// The real size of a message that was too large to fetch whole.
    pub too_large: Option<u64>,
    /// A large message fetched in parts into a spool file (`bytes` is then empty).
    pub spooled: Option<Spool>,
}

impl Imap {
    pub(crate) fn new(session: async_imap::Session<Conn>, host: String, limit: Duration) -> Self {
        Imap {
            session,
            host,
            limit,
            caps: Vec::new(),
            exists: 0,
            grew: false,
        }
    }

    /// Sets what the server may send for the next command.
    pub(super) fn allow(&mut self, a: Allowance) {
        self.session.get_mut().watch().begin(a);
    }

    /// What a command came to, told truthfully: the watch's refusal, or the server having
    /// closed the connection, say more than what async-imap made of them (an ended stream,
    /// "Broken pipe" on the next command). Unsolicited responses are dropped here, keeping
    /// only whether the folder grew, so that they cannot pile up.
    pub(super) fn finish<T>(&mut self, r: Result<T>, what: &str) -> Result<T> {
        self.drain_unsolicited();
        let host = self.host.clone();
        let watch = self.session.get_mut().watch();
        if let Some(why) = watch.refused() {
            return Err(Error::Protocol {
                host,
                message: why.to_owned(),
            });
        }
        if watch.closed() {
            return Err(Error::Network {
                host,
                message: format!("the server closed the connection while {what}"),
            });
        }
        if let Err(Error::Timeout { .. }) = &r {
            watch.abandon();
        }
        r
    }

    /// [`Imap::finish`] for a command whose answer is read response by response: after a
    /// failure its rest may still be on the way, so the connection is not used again (not
    /// even for LOGOUT).
    fn finish_answer<T>(&mut self, r: Result<T>, what: &str) -> Result<T> {
        let r = self.finish(r, what);
        if r.is_err() {
            self.session.get_mut().watch().abandon();
        }
        r
    }

    pub(super) fn drain_unsolicited(&mut self) {
        while let Ok(r) = self.session.unsolicited_responses.try_recv() {
            if let UnsolicitedResponse::Exists(n) = r {
                self.exists = self.exists.max(u64::from(n));
                self.grew = true;
            } else if matches!(r, UnsolicitedResponse::Recent(_)) {
                self.grew = true;
            }
        }
    }

    /// The server's host name.
    pub fn host(&self) -> &str {
        &self.host
    }

    pub(crate) async fn load_capabilities(&mut self) -> Result<()> {
        let host = self.host.clone();
        self.allow(Allowance::small("reading capabilities"));
        let caps = timed(&self.host, self.limit, "reading capabilities", async {
            self.session
                .capabilities()
                .await
                .map_err(|e| imap_err(&host, e))
        })
        .await;
        let caps = self.finish(caps, "reading capabilities")?;
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
        self.allow(Allowance::small("selecting the folder"));
        let mb = timed(&self.host, self.limit, "selecting the folder", async {
            self.session.select(folder).await.map_err(|e| match e {
                async_imap::error::Error::No(m) => Error::Protocol {
                    host: host.clone(),
                    message: format!(
                        "cannot select folder \"{folder}\": {} (check `folder` in the \
                         [[mailbox]]; `mailticket doctor` lists the server's folders)",
                        super::wire::server_text(&m)
                    ),
                },
                e => imap_err(&host, e),
            })
        })
        .await;
        let mb = self.finish(mb, "selecting the folder")?;
        self.exists = u64::from(mb.exists);
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
        self.allow(Allowance::responses("searching", self.exists));
        let set = timed(&self.host, self.limit, "searching", async {
            self.session
                .uid_search(query)
                .await
                .map_err(|e| imap_err(&host, e))
        })
        .await;
        let set = self.finish(set, "searching")?;
        let mut v: Vec<u32> = set.into_iter().collect();
        v.sort_unstable();
        Ok(v)
    }

    /// `(uid, RFC822.SIZE)` of the messages in `set` (at most `n` of them), sorted by UID.
    pub async fn sizes(&mut self, set: &str, n: u64) -> Result<Vec<(u32, u32)>> {
        const WHAT: &str = "fetching sizes";
        self.allow(Allowance::responses(WHAT, n));
        // A generous pace for the whole answer: 1 ms per message on top of the timeout.
        let deadline = Instant::now() + self.limit * 2 + Duration::from_millis(n);
        let r = self.sizes_until(set, deadline).await;
        self.finish_answer(r, WHAT)
    }

    async fn sizes_until(&mut self, set: &str, deadline: Instant) -> Result<Vec<(u32, u32)>> {
        let (host, limit) = (self.host.clone(), self.limit);
        let mut stream = timed(&self.host, limit, "fetching sizes", async {
            self.session
                .uid_fetch(set, "(UID RFC822.SIZE)")
                .await
                .map_err(|e| imap_err(&host, e))
        })
        .await?;
        let mut out = Vec::new();
        loop {
            let next = until(&host, limit, deadline, "fetching sizes", async {
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

    /// Fetches the messages `batch` (`(uid, RFC822.SIZE)`, sorted) with `BODY.PEEK[]` (never
    /// sets `\Seen`), handing each to `each` as it arrives; `each` may wait (for room in the
    /// store's queue) before returning. Returns the UIDs that the server did not send.
    pub async fn fetch_each<F, Fut>(&mut self, batch: &[(u32, u32)], each: F) -> Result<Vec<u32>>
    where
        F: FnMut(FetchedMessage) -> Fut,
        Fut: std::future::Future<Output = Result<()>>,
    {
        const WHAT: &str = "fetching messages";
        let n = batch.len() as u64;
        let total: u64 = batch.iter().map(|p| u64::from(p.1)).sum();
        let largest = batch.iter().map(|p| u64::from(p.1)).max().unwrap_or(0);
        self.allow(Allowance::messages(WHAT, n, total, largest));
        let uids: Vec<u32> = batch.iter().map(|p| p.0).collect();
        let query = "(UID INTERNALDATE BODY.PEEK[])";
        let r = self
            .fetch_until(&uids, query, deadline(self.limit, n, total), each)
            .await;
        self.finish_answer(r, WHAT)
    }

    /// The first [`HEAD_BYTES`] of message `uid`, cut after its header, as a
    /// [`FetchedMessage`] marked `too_large` with `size`; `None` when the server has no such
    /// message (any more).
    pub async fn fetch_head(&mut self, uid: u32, size: u32) -> Result<Option<FetchedMessage>> {
        const WHAT: &str = "fetching a header";
        let head = u64::from(HEAD_BYTES);
        self.allow(Allowance::messages(WHAT, 1, head, head));
        let query = format!("(UID INTERNALDATE BODY.PEEK[]<0.{HEAD_BYTES}>)");
        let mut got = None;
        let r = self
            .fetch_until(&[uid], &query, deadline(self.limit, 1, head), |mut m| {
                let end = m.bytes.windows(4).position(|w| w == b"\r\n\r\n");
                let end = end.map_or(m.bytes.len(), |e| e + 4);
                m.bytes = Body::Owned(m.bytes.get(..end).unwrap_or_default().to_vec());
                m.too_large = Some(u64::from(size));
                got = Some(m);
                std::future::ready(Ok(()))
            })
            .await;
        self.finish_answer(r, WHAT)?;
        Ok(got)
    }

    /// Message `uid` (RFC822.SIZE `size`) fetched in parts (`BODY.PEEK[]<OFFSET.N>` of
    /// [`PART_BYTES`] each) appended to a new spool file in `dir`, until a part comes back
    /// shorter than asked: never held whole in memory. `None` when the server has no such
    /// message (any more); the spool file is removed then, and on any error.
    pub async fn fetch_spooled(
        &mut self,
        uid: u32,
        size: u32,
        dir: &Path,
    ) -> Result<Option<FetchedMessage>> {
        let mut spool = Spool::create(dir)?;
        let mut internal_date = None;
        // A server that never stops sending parts is stopped well past the announced size.
        let most = u64::from(size).saturating_mul(2) + u64::from(PART_BYTES);
        loop {
            let offset = spool.len();
            let Some((date, n)) = self.fetch_part(uid, offset, &mut spool).await? else {
                // Past the end, a server may answer NIL rather than an empty string.
                if offset > 0 && offset >= u64::from(size) {
                    break;
                }
                return Ok(None);
            };
            internal_date = internal_date.or(date);
            if n > PART_BYTES as usize || spool.len() > most {
                return Err(Error::Protocol {
                    host: self.host.clone(),
                    message: format!(
                        "the server sent more of UID {uid} than asked for ({n} bytes for a part \
                         of {PART_BYTES}, {} in all for a message of {size}); giving up on it",
                        spool.len()
                    ),
                });
            }
            if n < PART_BYTES as usize {
                break;
            }
        }
        Ok(Some(FetchedMessage {
            uid,
            internal_date,
            bytes: Body::Owned(Vec::new()),
            too_large: None,
            spooled: Some(spool),
        }))
    }

    /// One part of message `uid` from `offset`, appended to `spool`: the INTERNALDATE (asked
    /// with the first part) and the part's length; `None` when the server did not send it.
    async fn fetch_part(
        &mut self,
        uid: u32,
        offset: u64,
        spool: &mut Spool,
    ) -> Result<Option<(Option<i64>, usize)>> {
        const WHAT: &str = "fetching a large message";
        let part = u64::from(PART_BYTES);
        self.allow(Allowance::messages(WHAT, 1, part, part));
        let date = if offset == 0 { " INTERNALDATE" } else { "" };
        let query = format!("(UID{date} BODY.PEEK[]<{offset}.{PART_BYTES}>)");
        let (mut got, mut failed) = (None, None);
        let r = self
            .fetch_until(&[uid], &query, deadline(self.limit, 1, part), |m| {
                match spool.append(&m.bytes) {
                    Ok(()) => got = Some((m.internal_date, m.bytes.len())),
                    Err(e) => failed = Some(e),
                }
                std::future::ready(Ok(()))
            })
            .await;
        self.finish_answer(r, WHAT)?;
        // A full disk: the answer was read to its end, the connection stays usable.
        match failed {
            Some(e) => Err(e),
            None => Ok(got),
        }
    }

    /// One UID FETCH of `uids` (sorted) for `query`, each body handed to `each`, the whole
    /// answer before `deadline` (moved on by the time `each` takes). Returns the UIDs of
    /// `uids` that did not come; what was not asked for, or came twice, is ignored.
    async fn fetch_until<F, Fut>(
        &mut self,
        uids: &[u32],
        query: &str,
        mut deadline: Instant,
        mut each: F,
    ) -> Result<Vec<u32>>
    where
        F: FnMut(FetchedMessage) -> Fut,
        Fut: std::future::Future<Output = Result<()>>,
    {
        let (host, limit) = (self.host.clone(), self.limit);
        let set = uid_set(uids);
        let mut stream = timed(&self.host, limit, "fetching messages", async {
            self.session
                .uid_fetch(&set, query)
                .await
                .map_err(|e| imap_err(&host, e))
        })
        .await?;
        let mut got = HashSet::with_capacity(uids.len());
        loop {
            let next = until(&host, limit, deadline, "fetching messages", async {
                stream.try_next().await.map_err(|e| imap_err(&host, e))
            })
            .await?;
            let Some(f) = next else { break };
            // Unsolicited FETCH responses (flag changes made elsewhere) carry no body.
            let (Some(uid), Some(body)) = (f.uid, f.body()) else {
                continue;
            };
            if uids.binary_search(&uid).is_err() || !got.insert(uid) {
                continue;
            }
            let internal_date = f.internal_date().map(|d| d.timestamp());
            // A small message is copied: its answer's buffer may be twice its size (what
            // was read past it), and a small copy costs little.
            let bytes = match body.len() {
                n if n < KEEP_ANSWER_FROM => Body::Owned(body.to_vec()),
                _ => Body::Answer(f),
            };
            let waited = Instant::now();
            each(FetchedMessage {
                uid,
                internal_date,
                bytes,
                too_large: None,
                spooled: None,
            })
            .await?;
            deadline += waited.elapsed();
        }
        Ok(uids.iter().copied().filter(|u| !got.contains(u)).collect())
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
        self.allow(Allowance::small("listing folders"));
        let r = timed(&self.host, self.limit, "listing folders", async {
            let stream = self
                .session
                .list(Some(""), Some(folder))
                .await
                .map_err(|e| imap_err(&host, e))?;
            let names: Vec<_> = stream.try_collect().await.map_err(|e| imap_err(&host, e))?;
            Ok(!names.is_empty())
        })
        .await;
        self.finish(r, "listing folders")
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
        let watch = self.session.get_mut().watch();
        if watch.closed() || watch.refused().is_some() {
            return;
        }
        self.allow(Allowance::small("logging out"));
        let _ = tokio::time::timeout(Duration::from_secs(5), self.session.logout()).await;
    }

    async fn run(&mut self, cmd: &str, what: &'static str) -> Result<()> {
        let host = self.host.clone();
        // A post-action's answer may have a line per message (EXPUNGE, FETCH FLAGS).
        self.allow(Allowance::responses(what, self.exists));
        let r = timed(&self.host, self.limit, what, async {
            self.session
                .run_command_and_check_ok(cmd)
                .await
                .map_err(|e| imap_err(&host, e))
        })
        .await;
        self.finish(r, what)
    }
}

/// The deadline for the whole answer to a FETCH of `n` messages of `total` bytes: twice the
/// timeout, plus the time the bytes take at a slow 64 KiB/s, plus 10 ms per message.
fn deadline(limit: Duration, n: u64, total: u64) -> Instant {
    Instant::now()
        + limit * 2
        + Duration::from_secs(total / (64 << 10))
        + Duration::from_millis(n.saturating_mul(10))
}

/// Runs `fut` (the next response of an answer) under `limit` and before `deadline`.
async fn until<T>(
    host: &str,
    limit: Duration,
    deadline: Instant,
    what: &str,
    fut: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left >= limit {
        return timed(host, limit, what, fut).await;
    }
    match tokio::time::timeout(left, fut).await {
        Ok(r) => r,
        Err(_) => Err(Error::Protocol {
            host: host.to_owned(),
            message: format!(
                "the server's answer did not end in the time allowed for it while {what}; \
                 giving up on this connection"
            ),
        }),
    }
}
