//! One pass over the configured mailboxes: connect, select, take every UID above the cursor
//! (the unseen backlog on the first run), and store each message in its own transaction.
//!
//! Fetching and storing overlap: while the store thread parses and commits one batch, the
//! next batch is already on the wire. The bytes in flight are capped, so memory stays flat
//! whatever the mail size. The post-action (`\Seen`, move, delete) runs only for UIDs whose
//! transaction has committed, one command per batch.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::path::Path;
use std::sync::Arc;
use std::sync::PoisonError;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::classify::Identity;
use crate::config::{After, Config, MailboxConfig, Transport};
use crate::error::{Error, Result};
use crate::imap::{self, FetchedMessage, Imap, uid_runs, uid_set};
use crate::oauth2::{Credentials, Tokens};
use crate::pass::{Job, budget, reserve, too_large};
pub use crate::pass::{Pass, SyncOptions};
use crate::pipeline::{PrepPool, Stored};
use crate::spool::SPOOL_OVER;
use crate::store::{Cursor, ImapPos, Origin, StoreThread};
use crate::summary::{RunSummary, SourceSummary};

/// At most this many messages per UID FETCH.
const BATCH_COUNT: usize = 500;
/// At most this many bytes (by RFC822.SIZE) per UID FETCH, unless one message is larger.
const BATCH_BYTES: u64 = 8 << 20;
/// Toward the end of a pass a batch holds at most this share of the bytes left...
const TAIL_SHARE: u64 = 4;
/// ...but not less than this many bytes.
const TAIL_BYTES: u64 = 1 << 20;
/// The post-action runs once this many UIDs are committed (and at the end): fewer round
/// trips in which nothing is fetched.
const POST_ACTION_EVERY: usize = 2000;
/// A pass with at least this many batches of full size opens a second session for them.
const SECOND_SESSION_FROM: usize = 4;
/// The longest UID set of a post-action or size command, far below servers' line limits
/// (RFC 7162 asks clients to keep a command line within 8,192 octets).
const SET_LEN: usize = 4000;

/// Syncs the mailboxes (all, or those named in `only`) one after another. A failing mailbox
/// is recorded in the summary and the others go on.
pub async fn run(
    config: &Config,
    mailboxes: &[(&MailboxConfig, Credentials)],
    store: &StoreThread,
    opts: SyncOptions,
) -> RunSummary {
    let me = Arc::new(Identity {
        addresses: config.own_addresses(),
    });
    let mut summary = RunSummary::default();
    for (mb, password) in mailboxes {
        let span = tracing::info_span!("mailbox", mailbox = %mb.name);
        summary.push(
            sync_mailbox(mb, password, store, &me, opts.clone())
                .instrument(span)
                .await,
        );
    }
    summary
}

/// Reads the passwords (and OAuth2 secrets) of `mailboxes` up front: a missing one is a
/// configuration error for the whole run, found before anything touches the network.
pub fn with_credentials<'a>(
    mailboxes: &[&'a MailboxConfig],
    tokens: &Tokens,
) -> Result<Vec<(&'a MailboxConfig, Credentials)>> {
    mailboxes
        .iter()
        .map(|mb| Ok((*mb, tokens.mailbox(mb)?)))
        .collect()
}

/// Syncs one mailbox; errors end up in the summary.
pub async fn sync_mailbox(
    mb: &MailboxConfig,
    creds: &Credentials,
    store: &StoreThread,
    me: &Arc<Identity>,
    opts: SyncOptions,
) -> SourceSummary {
    let mut s = SourceSummary {
        name: mb.name.clone(),
        folder: Some(mb.folder.clone()),
        counts: Default::default(),
    };
    let pass = Pass {
        store,
        me,
        pool: None,
        opts,
        stop: None,
        creds: Some(creds),
    };
    let result = match mb.transport {
        Transport::Graph => {
            async {
                let g = crate::graph::sync::client(mb, creds)?;
                crate::graph::sync::catch_up(&g, mb, &pass, &mut s).await
            }
            .await
        }
        Transport::Imap => {
            async {
                let mut imap = imap::connect(mb, creds).await?;
                let r = catch_up(&mut imap, mb, &pass, &mut s).await;
                imap.logout().await;
                r
            }
            .await
        }
    };
    match result {
        Err(e) => {
            tracing::error!(mailbox = %mb.name, error = %e, "mailbox failed");
            s.counts.errors.push(format!("mailbox {}: {e}", mb.name));
            crate::hooks::health::failed(store, &mb.name, &e).await;
        }
        Ok(()) => crate::hooks::health::worked(store, &mb.name).await,
    }
    s.counts.log("mailbox done");
    s
}

/// Picks or renews the cursor for the selected folder.
async fn cursor_for(
    imap: &mut Imap,
    mb: &MailboxConfig,
    store: &StoreThread,
    sel: imap::Selected,
) -> Result<Cursor> {
    let (name, folder) = (mb.name.clone(), mb.folder.clone());
    let stored = store.call(move |s| s.cursor(&name, &folder)).await?;
    if let Some(c) = stored.filter(|c| c.uidvalidity == sel.uidvalidity) {
        return Ok(c);
    }
    let backlog_until = match stored {
        // What is there now is the backlog: up to the highest UID present. UIDNEXT alone is
        // not trusted (a server that said 4294967295 would hide all later mail behind it).
        None => {
            let present = imap.uid_search("ALL").await?;
            let below_next = |u: &&u32| sel.uidnext.is_none_or(|n| **u < n);
            present.iter().rfind(below_next).copied().unwrap_or(0)
        }
        Some(old) => {
            tracing::warn!(
                old = old.uidvalidity,
                new = sel.uidvalidity,
                "UIDVALIDITY changed: rescanning the folder; stored messages are skipped as duplicates"
            );
            0
        }
    };
    let c = Cursor {
        uidvalidity: sel.uidvalidity,
        last_uid: 0,
        backlog_until,
        done_uid: 0,
    };
    let (name, folder) = (mb.name.clone(), mb.folder.clone());
    store
        .call(move |s| s.reset_cursor(&name, &folder, c))
        .await?;
    Ok(c)
}

/// `(uid, size)` of every message this run must take, sorted. A UID at or above the
/// folder's UIDNEXT is not a message the server has: it is left out (with a warning), so a
/// bogus answer cannot move the cursor past mail still to come.
async fn candidates(
    imap: &mut Imap,
    c: Cursor,
    sel: imap::Selected,
    unseen: &[u32],
) -> Result<Vec<(u32, u32)>> {
    let mut todo = Vec::new();
    for chunk in uid_runs(unseen, SET_LEN) {
        todo.extend(imap.sizes(&uid_set(chunk), chunk.len() as u64).await?);
    }
    let above = c.last_uid.max(c.backlog_until);
    if above < u32::MAX {
        // `n:*` always matches the highest UID, even below n: filter it out.
        let all = imap
            .sizes(&format!("{}:*", above + 1), u64::from(sel.exists))
            .await?;
        todo.extend(all.into_iter().filter(|(uid, _)| *uid > above));
    }
    todo.sort_unstable();
    todo.dedup_by_key(|p| p.0);
    if let Some(next) = sel.uidnext {
        let bogus = todo.iter().filter(|p| p.0 >= next).count();
        if bogus > 0 {
            tracing::warn!(
                uidnext = next,
                count = bogus,
                "ignoring UIDs at or above UIDNEXT"
            );
            todo.retain(|p| p.0 < next);
        }
    }
    Ok(todo)
}

/// The UIDs of the backlog from before the first run that the cursor has not passed and
/// nobody has read: the backlog's candidates (sorted).
async fn unseen_backlog(imap: &mut Imap, c: Cursor) -> Result<Vec<u32>> {
    if c.last_uid >= c.backlog_until {
        return Ok(Vec::new());
    }
    let q = format!("UID {}:{} UNSEEN", c.last_uid + 1, c.backlog_until);
    imap.uid_search(&q).await
}

/// Whether a message of `size` bytes is fetched on its own: over `max` (its header alone is
/// fetched) or over [`SPOOL_OVER`] (fetched in parts into a spool file).
fn alone(size: u32, max: u64) -> bool {
    u64::from(size) > max.min(SPOOL_OVER)
}

/// Splits `todo` into fetch batches capped by count and bytes, smaller toward the end; a
/// message fetched [`alone`] is a batch of its own.
fn batches(todo: &[(u32, u32)], max: u64) -> Vec<Vec<(u32, u32)>> {
    split(todo, max, true)
}

/// Whether `todo` is worth a second session: at least [`SECOND_SESSION_FROM`] batches of
/// full size (the smaller ones toward the end would not make a short pass long).
fn long_pass(todo: &[(u32, u32)], max: u64) -> bool {
    split(todo, max, false).len() >= SECOND_SESSION_FROM
}

/// The batches of [`batches`]: smaller toward the end with `tail`, else all of full size.
fn split(todo: &[(u32, u32)], max: u64, tail: bool) -> Vec<Vec<(u32, u32)>> {
    let mut out = Vec::new();
    let mut cur = Vec::new();
    let mut bytes = 0u64;
    let mut left: u64 = todo.iter().map(|p| u64::from(p.1)).sum();
    for &(uid, size) in todo {
        let alone = alone(size, max);
        // Toward the end, batches of a quarter of what is left: the two sessions' last
        // batches end close together, instead of one fetching a full batch alone while the
        // other waits (up to 81 ms apart in a benchmark sync, 4-14 ms with it).
        let cap = match tail {
            true => (left / TAIL_SHARE).clamp(TAIL_BYTES, BATCH_BYTES),
            false => BATCH_BYTES,
        };
        left -= u64::from(size);
        if !cur.is_empty() && (alone || cur.len() >= BATCH_COUNT || bytes + u64::from(size) > cap) {
            out.push(std::mem::take(&mut cur));
            bytes = 0;
        }
        cur.push((uid, size));
        bytes += u64::from(size);
        if alone {
            out.push(std::mem::take(&mut cur));
            bytes = 0;
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Fetches one batch, handing each message to `each`; of a message over `max` bytes only the
/// header, for the quarantine; one over [`SPOOL_OVER`] in parts, into a spool file in
/// `spool_dir`. A UID the server leaves out is looked for: one that is gone (expunged
/// meanwhile) may be passed, one still there is asked for again, twice (a header not again),
/// and if it is still left out the run fails, before the cursor can pass it.
async fn fetch_batch<F, Fut>(
    imap: &mut Imap,
    batch: &[(u32, u32)],
    (max, spool_dir): (u64, &Path),
    mut each: F,
) -> Result<()>
where
    F: FnMut(FetchedMessage) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let mut missing = fetch_once(imap, batch, (max, spool_dir), &mut each).await?;
    for attempt in 1..=3 {
        missing = still_there(imap, &missing).await?;
        if missing.is_empty() {
            return Ok(());
        }
        let set = uid_set(&missing);
        if attempt == 3 || batch.len() == 1 && u64::from(batch[0].1) > max {
            return Err(Error::Protocol {
                host: imap.host().to_owned(),
                message: format!(
                    "the server leaves UID {set} out of its FETCH answers although UID SEARCH \
                     finds it; not going past it, so that it is not skipped"
                ),
            });
        }
        tracing::warn!(uids = %set, attempt, "the server left these out of its answer; asking again");
        let again: Vec<(u32, u32)> = batch
            .iter()
            .filter(|p| missing.binary_search(&p.0).is_ok())
            .copied()
            .collect();
        missing = fetch_once(imap, &again, (max, spool_dir), &mut each).await?;
    }
    Ok(())
}

/// One fetch of `batch` (sorted), each message handed to `each`: a message [`alone`] by its
/// own commands (its header, or its parts into a spool file), the rest with one UID FETCH.
/// Returns the UIDs that the server did not send.
async fn fetch_once<F, Fut>(
    imap: &mut Imap,
    batch: &[(u32, u32)],
    (max, spool_dir): (u64, &Path),
    each: &mut F,
) -> Result<Vec<u32>>
where
    F: FnMut(FetchedMessage) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let one = match *batch {
        [(uid, size)] if u64::from(size) > max => Some((uid, imap.fetch_head(uid, size).await?)),
        [(uid, size)] if alone(size, max) => {
            Some((uid, imap.fetch_spooled(uid, size, spool_dir).await?))
        }
        _ => None,
    };
    match one {
        Some((_, Some(m))) => {
            each(m).await?;
            Ok(Vec::new())
        }
        Some((uid, None)) => Ok(vec![uid]),
        None => imap.fetch_each(batch, each).await,
    }
}

/// Which of `uids` (sorted) the folder still has.
async fn still_there(imap: &mut Imap, uids: &[u32]) -> Result<Vec<u32>> {
    if uids.is_empty() {
        return Ok(Vec::new());
    }
    let found = imap.uid_search(&format!("UID {}", uid_set(uids))).await?;
    Ok(uids
        .iter()
        .copied()
        .filter(|u| found.binary_search(u).is_ok())
        .collect())
}

/// Runs the post-action on committed UIDs. The commits are made durable first: once the
/// server deletes, moves or marks a message seen, a power cut must not take its ticket.
async fn post_action(
    imap: &mut Imap,
    store: &StoreThread,
    after: &After,
    uids: &[u32],
) -> Result<()> {
    store.make_durable().await?;
    act_on(imap, after, uids).await
}

/// Deletes, moves or marks seen `uids`, whose commits are durable.
async fn act_on(imap: &mut Imap, after: &After, uids: &[u32]) -> Result<()> {
    // Committed in arrival order, which two sessions interleave: sorted, a set is a few
    // ranges, not a line of 2,000 numbers.
    let mut uids = uids.to_vec();
    uids.sort_unstable();
    for chunk in uid_runs(&uids, SET_LEN) {
        match after {
            After::Seen => imap.add_flags(chunk, "\\Seen").await?,
            After::Delete => imap.delete(chunk).await?,
            After::Move(folder) => imap.move_to(chunk, folder).await?,
        }
    }
    Ok(())
}

/// Committed UIDs (a prefix of this run's UIDs, in order) whose post-action is due, and the
/// cursor position they reach.
struct Due {
    uids: Vec<u32>,
    to: u32,
    /// The sync that makes their commits durable, when it was started ahead.
    durable: Option<tokio::task::JoinHandle<Result<()>>>,
}

impl Due {
    fn new(uids: Vec<u32>, to: u32) -> Due {
        Due {
            uids,
            to,
            durable: None,
        }
    }

    /// Starts making the commits durable now, on a blocking thread, so that the session
    /// fetches its next batch meanwhile instead of waiting for the disk; the post-action
    /// follows that batch.
    fn ahead(store: &StoreThread, uids: Vec<u32>, to: u32) -> Due {
        let store = store.clone();
        let durable = tokio::spawn(async move { store.make_durable().await });
        Due {
            uids,
            to,
            durable: Some(durable),
        }
    }
}

/// Runs the post-action for `due` (made durable first) and records that its UIDs are done.
async fn finish_uids(
    imap: &mut Imap,
    mb: &MailboxConfig,
    store: &StoreThread,
    uidvalidity: u32,
    due: Due,
) -> Result<oneshot::Receiver<Result<()>>> {
    match due.durable {
        Some(sync) => sync
            .await
            .map_err(|e| Error::Internal(format!("syncing the store: {e}")))??,
        None => store.make_durable().await?,
    }
    act_on(imap, &mb.after, &due.uids).await?;
    let (name, folder, last) = (mb.name.clone(), mb.folder.clone(), due.to);
    Ok(store.submit(move |s| s.set_done(&name, &folder, uidvalidity, last)))
}

/// UIDs that an interrupted run stored but whose post-action was never confirmed: those in
/// `(done_uid, last_uid]` that this run's rules would have taken.
async fn unfinished(imap: &mut Imap, c: Cursor) -> Result<Vec<u32>> {
    let mut uids = Vec::new();
    if c.done_uid >= c.last_uid {
        return Ok(uids);
    }
    let backlog_end = c.last_uid.min(c.backlog_until);
    if c.done_uid < backlog_end {
        // In the backlog only unseen messages were taken, and the post-action has not run on
        // them yet, so they are still there and unseen.
        let q = format!("UID {}:{backlog_end} UNSEEN", c.done_uid + 1);
        uids.extend(imap.uid_search(&q).await?);
    }
    let lo = c.done_uid.max(c.backlog_until) + 1;
    if lo <= c.last_uid {
        uids.extend(imap.uid_search(&format!("UID {lo}:{}", c.last_uid)).await?);
    }
    uids.retain(|&u| u > c.done_uid && u <= c.last_uid);
    uids.sort_unstable();
    uids.dedup();
    Ok(uids)
}

/// A message handed to the store: its UID, how far the cursor moves with it, its result.
type Submitted = (u32, u32, oneshot::Receiver<Result<Option<Stored>>>);

/// Which candidates of the pass are settled (arrived, or found gone once their batch was
/// over), so that the cursor only ever moves past a UID once every candidate below it is
/// stored: batches go on over two sessions at once, and a server may answer a FETCH out of
/// UID order (RFC 3501 does not promise the order).
#[derive(Default)]
struct Frontier {
    /// Every candidate of the pass, sorted.
    uids: Vec<u32>,
    settled: Vec<bool>,
    /// How many of `uids`, from the start, are settled.
    prefix: usize,
}

impl Frontier {
    fn new(uids: Vec<u32>) -> Frontier {
        Frontier {
            settled: vec![false; uids.len()],
            uids,
            prefix: 0,
        }
    }

    /// Records `uid`'s arrival and returns how far the cursor may move with it.
    fn arrive(&mut self, uid: u32) -> u32 {
        if let Ok(i) = self.uids.binary_search(&uid) {
            self.settled[i] = true;
        }
        self.advance()
    }

    /// A batch is over: what of it did not arrive is no longer on the server.
    fn finish(&mut self, batch: &[(u32, u32)]) {
        for &(uid, _) in batch {
            if let Ok(i) = self.uids.binary_search(&uid) {
                self.settled[i] = true;
            }
        }
        self.advance();
    }

    /// The candidates of `batch` that have not arrived.
    fn unsettled(&self, batch: &[(u32, u32)]) -> Vec<(u32, u32)> {
        batch
            .iter()
            .filter(|p| {
                self.uids
                    .binary_search(&p.0)
                    .is_ok_and(|i| !self.settled[i])
            })
            .copied()
            .collect()
    }

    fn advance(&mut self) -> u32 {
        while self.settled.get(self.prefix) == Some(&true) {
            self.prefix += 1;
        }
        match self.prefix.checked_sub(1) {
            Some(i) => self.uids[i],
            None => 0,
        }
    }
}

/// Selects the folder and takes every message above the cursor (the unseen backlog on the
/// first pass), each in its own transaction, then runs the post-action on what committed.
/// Safe to call again and again on one session: each pass starts from the stored cursor.
pub async fn catch_up(
    imap: &mut Imap,
    mb: &MailboxConfig,
    pass: &Pass<'_>,
    summary: &mut SourceSummary,
) -> Result<()> {
    let sel = imap.select(&mb.folder).await?;
    let cursor = cursor_for(imap, mb, pass.store, sel).await?;
    tracing::debug!(?cursor, exists = sel.exists, "selected");
    if !pass.opts.dry_run {
        resume_post_actions(imap, mb, pass.store, cursor).await?;
    }
    let unseen = unseen_backlog(imap, cursor).await?;
    // A pass that may be long logs in its second session now, while this one reads sizes.
    let ahead = pass
        .creds
        .filter(|_| may_be_long(cursor, sel, unseen.len()))
        .map(|creds| Ahead::start(mb, creds, sel));
    let todo = candidates(imap, cursor, sel, &unseen).await?;
    if todo.is_empty() {
        if let Some(a) = ahead {
            a.give_up().await;
        }
        return Ok(());
    }
    let total_bytes: u64 = todo.iter().map(|p| u64::from(p.1)).sum();
    tracing::info!(messages = todo.len(), bytes = total_bytes, "fetching");
    if let Some(p) = &pass.opts.progress {
        p.add_total(todo.len() as u64);
    }
    let pool = match pass.pool {
        Some(p) => p.clone(),
        None => PrepPool::spawn()?,
    };
    let mut run = CatchUp::new(mb, pass, pool, cursor.uidvalidity, summary);
    run.fetch_all(imap, pass.creds, ahead, sel, &todo).await?;
    run.finish(imap).await
}

/// Sends the post-actions that an interrupted run committed but never sent, and records
/// them done. Creates the MOVE target first, if missing.
async fn resume_post_actions(
    imap: &mut Imap,
    mb: &MailboxConfig,
    store: &StoreThread,
    cursor: Cursor,
) -> Result<()> {
    if let After::Move(target) = &mb.after {
        imap.ensure_folder(target).await?;
    }
    let left = unfinished(imap, cursor).await?;
    if !left.is_empty() {
        tracing::info!(
            count = left.len(),
            "finishing post-actions of an interrupted run"
        );
        post_action(imap, store, &mb.after, &left).await?;
    }
    if cursor.done_uid < cursor.last_uid {
        let (name, folder) = (mb.name.clone(), mb.folder.clone());
        let (uv, last) = (cursor.uidvalidity, cursor.last_uid);
        store
            .call(move |s| s.set_done(&name, &folder, uv, last))
            .await?;
    }
    Ok(())
}

/// The fetching half of a catch-up pass, once the cursor is known: batches go out on the
/// wire while the store commits earlier ones; what committed is booked in UID order, and its
/// post-action sent every [`POST_ACTION_EVERY`] UIDs and at the end.
///
/// After the first failure nothing later commits (`halt`, shared with the store's group
/// commits), no new batch is fetched, and the error that ends the pass is the first one.
struct CatchUp<'a> {
    mb: &'a MailboxConfig,
    store: &'a StoreThread,
    me: &'a Arc<Identity>,
    opts: &'a SyncOptions,
    stop: Option<&'a CancellationToken>,
    pool: PrepPool,
    summary: &'a mut SourceSummary,
    uidvalidity: u32,
    /// How far the cursor may move with each message handed to the store. Shared with the
    /// submissions: the position is taken as the message joins the store's queue.
    frontier: Arc<std::sync::Mutex<Frontier>>,
    /// Fetched bytes waiting for the store.
    budget: Arc<Semaphore>,
    /// Set by the store after a failed write: later messages are not committed.
    halt: Arc<AtomicBool>,
    /// Submissions made during a fetch, collected into `inflight` after it.
    sub_tx: mpsc::UnboundedSender<Submitted>,
    sub_rx: mpsc::UnboundedReceiver<Submitted>,
    /// Messages handed to the store, in UID order, whose result is not booked yet.
    inflight: VecDeque<Submitted>,
    /// Committed UIDs still waiting for their post-action, in UID order.
    done: Vec<u32>,
    /// The highest cursor position among them.
    done_to: u32,
    /// Records of finished post-actions, still being written.
    clears: Vec<oneshot::Receiver<Result<()>>>,
    first_error: Option<Error>,
    /// A post-action failed: the pass ends without finishing.
    abort: bool,
    /// What a failed second session left of its batch, for the first to fetch.
    handed_back: Vec<Vec<(u32, u32)>>,
    /// The first session has taken its last batch: a failure of the second ends the pass.
    first_ended: bool,
}

impl<'a> CatchUp<'a> {
    fn new(
        mb: &'a MailboxConfig,
        pass: &'a Pass<'a>,
        pool: PrepPool,
        uidvalidity: u32,
        summary: &'a mut SourceSummary,
    ) -> Self {
        let (sub_tx, sub_rx) = mpsc::unbounded_channel();
        CatchUp {
            mb,
            store: pass.store,
            me: pass.me,
            opts: &pass.opts,
            stop: pass.stop,
            pool,
            summary,
            uidvalidity,
            frontier: Arc::default(),
            budget: budget(),
            halt: Arc::new(AtomicBool::new(false)),
            sub_tx,
            sub_rx,
            inflight: VecDeque::new(),
            done: Vec::new(),
            done_to: 0,
            clears: Vec::new(),
            first_error: None,
            abort: false,
            handed_back: Vec::new(),
            first_ended: false,
        }
    }

    /// Fetches `todo` batch by batch, until the end, a stop, or the first error: over `imap`
    /// and, for a long backlog with `creds` to log in again, over a second session on the
    /// same folder (`sel`) as well, each taking the next batch when it is done with one.
    /// An error of a post-action ends the pass at once.
    async fn fetch_all(
        &mut self,
        imap: &mut Imap,
        creds: Option<&Credentials>,
        ahead: Option<Ahead>,
        sel: imap::Selected,
        todo: &[(u32, u32)],
    ) -> Result<()> {
        let mb = self.mb;
        *lock(&self.frontier) = Frontier::new(todo.iter().map(|p| p.0).collect());
        let lanes = Lanes {
            batches: batches(todo, mb.max_message_size),
            next: AtomicUsize::new(0),
            run: std::sync::Mutex::new(self),
        };
        let first_done = CancellationToken::new();
        let first = async {
            lanes.lane(imap, true).await;
            first_done.cancel();
            // Nothing is left for this session to fetch: what has committed gets its
            // post-action now, while the second session's last batch is on its way.
            if let Some((uids, to)) = lanes.committed() {
                lanes.post_act(imap, Due::new(uids, to)).await;
            }
        };
        let second = async {
            let Some(creds) = creds.filter(|_| long_pass(todo, mb.max_message_size)) else {
                if let Some(a) = ahead {
                    a.give_up().await;
                }
                return;
            };
            let open = async {
                match ahead {
                    Some(a) => a.join().await,
                    None => second_session(mb, creds, sel).await,
                }
            };
            // Not worth waiting for once the first session has taken every batch.
            let login = tokio::select! {
                s = open => s,
                () = first_done.cancelled() => None,
            };
            if let Some(mut imap) = login {
                lanes.lane(&mut imap, false).await;
                imap.logout().await;
            }
        };
        tokio::join!(first, second);
        let run = lanes
            .run
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner);
        // Any other error is the pass's to report once the rest is finished.
        match run.first_error.take_if(|_| run.abort) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Waits for the rest of the store's work, finishes those UIDs too, and returns the
    /// first error of the pass. The post-actions go out while the last messages land, each
    /// for what has committed by then: after the last commit only a short one is left.
    async fn finish(mut self, imap: &mut Imap) -> Result<()> {
        let post = !self.opts.dry_run;
        while let Some((uid, to, rx)) = self.inflight.pop_front() {
            match rx.await {
                Ok(r) => self.settle(uid, to, r),
                Err(_) => {
                    self.first_error.get_or_insert_with(stopped);
                }
            }
            self.settle_ready();
            if post && !self.done.is_empty() && !self.inflight.is_empty() {
                self.flush_post_actions(imap).await?;
            }
        }
        if post && !self.done.is_empty() {
            // After a failure the post-action may fail too (the connection is gone): the
            // first error is the one worth reporting; the next run finishes these UIDs.
            self.flush_post_actions(imap).await?;
        }
        for c in std::mem::take(&mut self.clears) {
            c.await.map_err(|_| stopped())??;
        }
        match self.first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Hands one fetched message to the parse workers and the store. Runs at once: notes
    /// where it comes from. The future it returns waits for room in the byte budget, then
    /// submits, noting its arrival (how far the cursor may move with it).
    fn submit(&mut self, fm: FetchedMessage) -> impl Future<Output = Result<()>> + use<> {
        let (mb, max) = (self.mb, self.mb.max_message_size);
        let origin = Origin {
            source: format!("imap:{}/{}", mb.name, mb.folder),
            mailbox: mb.name.clone(),
            imap: Some(ImapPos {
                mailbox: mb.name.clone(),
                folder: mb.folder.clone(),
                uidvalidity: self.uidvalidity,
                uid: fm.uid,
                cursor_to: 0,
            }),
            graph: None,
        };
        let (ack, rules) = (self.opts.ack.clone(), self.opts.rules.clone());
        let frontier = self.frontier.clone();
        let (budget, store, me, halt, sub_tx, pool) = (
            self.budget.clone(),
            self.store.clone(),
            self.me.clone(),
            self.halt.clone(),
            self.sub_tx.clone(),
            self.pool.clone(),
        );
        async move {
            // A spooled message takes the whole budget: whatever parsing it holds, it does
            // not add to a full budget of other messages.
            let held = match fm.spooled {
                Some(_) => usize::MAX,
                None => fm.bytes.len(),
            };
            let permit = reserve(&budget, held).await?;
            let uid = fm.uid;
            let received = fm.internal_date.unwrap_or_else(crate::time::now);
            let prepared = match (fm.too_large, fm.spooled) {
                (Some(size), _) => too_large(fm.bytes.into_vec(), size, max),
                (None, Some(spool)) => pool.prepare_spooled(me, spool),
                (None, None) => pool.prepare(me, fm.bytes),
            };
            let mut job = Job {
                prepared,
                origin,
                received,
                ack,
                rules,
            };
            // The store commits in the order of its queue, and two sessions' messages wait
            // for the budget side by side: the cursor's position is taken as the message
            // joins the queue, under the lock, so that a commit never moves the cursor past
            // a message the queue does not hold yet (a kill between the two would lose it).
            let mut frontier = lock(&frontier);
            let cursor_to = frontier.arrive(uid);
            if let Some(pos) = job.origin.imap.as_mut() {
                pos.cursor_to = cursor_to;
            }
            let _ = sub_tx.send((uid, cursor_to, job.submit(&store, halt, permit)));
            drop(frontier);
            Ok(())
        }
    }

    /// Moves what the last fetch submitted into the in-flight queue.
    fn collect_submitted(&mut self) {
        while let Ok(s) = self.sub_rx.try_recv() {
            self.summary.counts.fetched += 1;
            self.inflight.push_back(s);
        }
    }

    /// Books the results that are in, in order, up to the first still pending.
    fn settle_ready(&mut self) {
        while let Some((uid, to, rx)) = self.inflight.front_mut() {
            let (uid, to) = (*uid, *to);
            match rx.try_recv() {
                Ok(r) => {
                    self.inflight.pop_front();
                    self.settle(uid, to, r);
                }
                Err(oneshot::error::TryRecvError::Empty) => break,
                Err(oneshot::error::TryRecvError::Closed) => {
                    self.inflight.pop_front();
                    self.first_error.get_or_insert_with(stopped);
                }
            }
        }
    }

    /// Books one store result: counts it and remembers its UID for the post-action.
    fn settle(&mut self, uid: u32, to: u32, r: Result<Option<Stored>>) {
        match r {
            Ok(Some(stored)) => {
                stored.log(&self.summary.name, self.opts.dry_run, self.opts.log_each);
                if let Some(p) = &self.opts.progress {
                    p.done_one();
                }
                self.summary.counts.record(stored.outcome);
                self.summary.counts.acks_queued += u64::from(stored.acked);
                self.done.push(uid);
                self.done_to = self.done_to.max(to);
            }
            Err(e) => {
                self.first_error.get_or_insert(e);
            }
            // Skipped after an earlier failure: neither the cursor nor `done_uid` may pass it.
            Ok(None) => {}
        }
    }

    /// Runs the post-action on the committed UIDs booked so far and has them recorded done.
    /// Its error gives way to an earlier one.
    async fn flush_post_actions(&mut self, imap: &mut Imap) -> Result<()> {
        let (mb, store, uv) = (self.mb, self.store, self.uidvalidity);
        let due = Due::new(std::mem::take(&mut self.done), self.done_to);
        let finished = finish_uids(imap, mb, store, uv, due).await;
        let clear = finished.map_err(|e| self.first_error.take().unwrap_or(e))?;
        self.clears.push(clear);
        Ok(())
    }
}

/// The batches of a pass, shared by the sessions that fetch them.
struct Lanes<'r, 'a> {
    batches: Vec<Vec<(u32, u32)>>,
    /// The index of the next batch to take.
    next: AtomicUsize,
    run: std::sync::Mutex<&'r mut CatchUp<'a>>,
}

impl<'r, 'a> Lanes<'r, 'a> {
    fn run(&self) -> std::sync::MutexGuard<'_, &'r mut CatchUp<'a>> {
        lock(&self.run)
    }

    /// Takes batch after batch over `imap` until none is left, a stop, or the pass's first
    /// error (recorded in the run). The `first` session also sends the post-actions, every
    /// [`POST_ACTION_EVERY`] committed UIDs: one session at a time, in order, so that a UID
    /// is recorded done only after its post-action. Each goes out one batch after it is
    /// due, its commits made durable meanwhile.
    async fn lane(&self, imap: &mut Imap, first: bool) {
        let mut ahead = None;
        self.take_batches(imap, first, &mut ahead).await;
        if let Some(due) = ahead {
            self.post_act(imap, due).await;
        }
    }

    /// The loop of [`Lanes::lane`]: a post-action due is left in `ahead` for the next turn.
    async fn take_batches(&self, imap: &mut Imap, first: bool, ahead: &mut Option<Due>) {
        loop {
            let (mb, store, dry_run, batch) = {
                let mut run = self.run();
                if run.first_error.is_some() {
                    return;
                }
                if run.stop.is_some_and(CancellationToken::is_cancelled) {
                    tracing::info!("stopping after the messages in flight");
                    return;
                }
                let handed_back = if first { run.handed_back.pop() } else { None };
                let batch = match handed_back {
                    Some(b) => Cow::Owned(b),
                    None => match self.batches.get(self.next.fetch_add(1, Ordering::Relaxed)) {
                        Some(b) => Cow::Borrowed(b.as_slice()),
                        None => {
                            // Decided under the lock a failing second session takes too.
                            run.first_ended |= first;
                            return;
                        }
                    },
                };
                (run.mb, run.store, run.opts.dry_run, batch)
            };
            let spool = (mb.max_message_size, store.spool_dir());
            let fetched = fetch_batch(imap, &batch, spool, |fm| self.run().submit(fm)).await;
            let due = {
                let mut run = self.run();
                run.collect_submitted();
                match fetched {
                    Ok(()) => lock(&run.frontier).finish(&batch),
                    Err(e) if !first && !run.first_ended => {
                        // The first session fetches what did not arrive; the pass goes on.
                        let left = lock(&run.frontier).unsettled(&batch);
                        tracing::warn!(
                            error = %e,
                            messages = left.len(),
                            "the second session failed; the first fetches the rest"
                        );
                        if !left.is_empty() {
                            run.handed_back.push(left);
                        }
                        return;
                    }
                    Err(e) => {
                        run.first_error.get_or_insert(e);
                    }
                }
                // Whatever has committed by now is booked, without waiting for the rest; the
                // post-action follows once enough UIDs are committed.
                run.settle_ready();
                let due = first && !dry_run && run.done.len() >= POST_ACTION_EVERY;
                due.then(|| (std::mem::take(&mut run.done), run.done_to))
            };
            if let Some(due) = ahead.take()
                && !self.post_act(imap, due).await
            {
                return;
            }
            if let Some((uids, to)) = due {
                *ahead = Some(Due::ahead(store, uids, to));
            }
        }
    }

    /// The UIDs committed so far whose post-action is still to run, and the cursor position
    /// they reach; `None` when there are none, in a dry run, or after an error.
    fn committed(&self) -> Option<(Vec<u32>, u32)> {
        let mut run = self.run();
        if run.opts.dry_run || run.first_error.is_some() {
            return None;
        }
        run.settle_ready();
        (!run.done.is_empty()).then(|| (std::mem::take(&mut run.done), run.done_to))
    }

    /// Runs the post-action for `due` over the first session. False when it failed: that
    /// ends the pass.
    async fn post_act(&self, imap: &mut Imap, due: Due) -> bool {
        let (mb, store, uv) = {
            let run = self.run();
            (run.mb, run.store, run.uidvalidity)
        };
        let finished = finish_uids(imap, mb, store, uv, due).await;
        let mut run = self.run();
        match finished {
            Ok(clear) => {
                run.clears.push(clear);
                true
            }
            Err(e) => {
                // It gives way to an earlier error, and ends the pass.
                run.first_error.get_or_insert(e);
                run.abort = true;
                false
            }
        }
    }
}

/// A second session on the folder of `sel`, for a long backlog (the server reads and sends
/// two batches at once; on a 2-core machine against Dovecot, Python's imaplib fetches the
/// benchmark's mailbox in 2.2 s over two sessions, 2.9 s over one). `None` when it cannot
/// log in or finds the folder changed: the pass goes on over the one session.
async fn second_session(
    mb: &MailboxConfig,
    creds: &Credentials,
    sel: imap::Selected,
) -> Option<Imap> {
    let opened = async {
        let mut imap = imap::connect(mb, creds).await?;
        let again = imap.select(&mb.folder).await;
        Ok::<_, Error>((imap, again?))
    }
    .await;
    match opened {
        Ok((imap, again)) if again.uidvalidity == sel.uidvalidity => Some(imap),
        Ok((imap, _)) => {
            imap.logout().await;
            None
        }
        Err(e) => {
            tracing::info!(error = %e, "no second session; fetching over one");
            None
        }
    }
}

/// Whether a pass from cursor `c` may take enough messages for a second session: an upper
/// bound of its candidates, the `backlog` ones unseen and those above the cursor that SELECT
/// allows, before their sizes are known. Mail expunged above the cursor can make it open
/// one for nothing.
fn may_be_long(c: Cursor, sel: imap::Selected, backlog: usize) -> bool {
    let above = c.last_uid.max(c.backlog_until);
    let new = sel.uidnext.map_or(sel.exists, |next| {
        next.saturating_sub(above.saturating_add(1))
    });
    let bound = backlog.saturating_add(new.min(sel.exists) as usize);
    bound >= SECOND_SESSION_FROM * BATCH_COUNT
}

/// A second session logging in on a task of its own while the first reads the sizes of
/// the messages to fetch (a benchmark sync's first fetch went out 90 ms before it was ready
/// otherwise). Dropped, it is abandoned, a login under way included.
struct Ahead(Option<tokio::task::JoinHandle<Option<Imap>>>);

impl Ahead {
    fn start(mb: &MailboxConfig, creds: &Credentials, sel: imap::Selected) -> Ahead {
        let (mb, creds) = (mb.clone(), creds.clone());
        let login = async move { second_session(&mb, &creds, sel).await };
        Ahead(Some(tokio::spawn(login.in_current_span())))
    }

    /// The session, once logged in; `None` as [`second_session`] says.
    async fn join(mut self) -> Option<Imap> {
        self.0.take()?.await.ok().flatten()
    }

    /// Not needed after all (rare: mail expunged meanwhile): logs out once logged in,
    /// rather than leave the server a connection cut in the middle.
    async fn give_up(self) {
        if let Some(imap) = self.join().await {
            imap.logout().await;
        }
    }
}

impl Drop for Ahead {
    fn drop(&mut self) {
        if let Some(h) = self.0.take() {
            h.abort();
        }
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn stopped() -> Error {
    Error::Internal("the store thread stopped".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cursor_never_passes_a_uid_that_has_not_arrived() {
        let mut f = Frontier::new(vec![3, 5, 7, 9, 12, 14, 20]);
        assert_eq!(f.arrive(3), 3);
        assert_eq!(f.arrive(7), 3, "5 is still missing");
        assert_eq!(f.arrive(5), 7);
        // The other session's batch comes in, and ends, before 9 of this one.
        assert_eq!(f.arrive(14), 7);
        assert_eq!(f.arrive(12), 7);
        f.finish(&[(12, 1), (14, 1), (20, 1)]);
        assert_eq!(f.arrive(20), 7, "9 may still come");
        // 9 never arrives (expunged): once its batch is over, the cursor may pass it.
        f.finish(&[(3, 1), (5, 1), (7, 1), (9, 1)]);
        assert_eq!(f.advance(), 20);
        // A UID that was not asked for moves nothing.
        assert_eq!(f.arrive(4), 20);
        let mut f = Frontier::new(vec![3, 5, 7]);
        f.arrive(5);
        assert_eq!(f.unsettled(&[(3, 1), (5, 2), (7, 3)]), [(3, 1), (7, 3)]);
    }

    #[test]
    fn a_pass_may_be_long_by_what_select_and_the_cursor_allow() {
        let sel = |exists, uidnext| imap::Selected {
            uidvalidity: 1,
            uidnext,
            exists,
        };
        let cursor = |last_uid, backlog_until| Cursor {
            uidvalidity: 1,
            last_uid,
            backlog_until,
            done_uid: last_uid,
        };
        let from = SECOND_SESSION_FROM * BATCH_COUNT;
        let f = u32::try_from(from).unwrap();
        // A first pass: the backlog's unseen messages.
        assert!(may_be_long(cursor(0, 9000), sel(9000, Some(9001)), from));
        assert!(!may_be_long(
            cursor(0, 9000),
            sel(9000, Some(9001)),
            from - 1
        ));
        assert!(!may_be_long(cursor(0, 9000), sel(9000, Some(9001)), 0));
        // With what arrived above it meanwhile.
        assert!(may_be_long(
            cursor(0, 9000),
            sel(9010, Some(9011)),
            from - 10
        ));
        // Later passes: what lies above the cursor, never more than the folder holds.
        assert!(!may_be_long(cursor(9000, 9000), sel(9000, Some(9001)), 0));
        assert!(!may_be_long(cursor(9000, 9000), sel(9003, Some(9004)), 0));
        assert!(may_be_long(
            cursor(9000, 9000),
            sel(9000 + f, Some(9001 + f)),
            0
        ));
        assert!(!may_be_long(cursor(9000, 9000), sel(10, Some(9001 + f)), 0));
        // No UIDNEXT: the folder's size bounds it.
        assert!(may_be_long(cursor(9000, 9000), sel(f, None), 0));
        assert!(!may_be_long(cursor(9000, 9000), sel(f - 1, None), 0));
        // A server's absurd UIDNEXT does not overflow.
        assert!(!may_be_long(
            cursor(u32::MAX, 0),
            sel(u32::MAX, Some(u32::MAX)),
            0
        ));
    }

    #[test]
    fn batches_respect_count_and_bytes() {
        let todo: Vec<(u32, u32)> = (1..=1200).map(|u| (u, 1000)).collect();
        let b = batches(&todo, u64::MAX);
        assert_eq!(b.iter().map(Vec::len).collect::<Vec<_>>(), [500, 500, 200]);
        let big: Vec<(u32, u32)> = vec![(1, 5 << 20), (2, 5 << 20), (3, 20 << 20), (4, 1)];
        let uids = |b: Vec<Vec<(u32, u32)>>| -> Vec<Vec<u32>> {
            b.iter().map(|v| v.iter().map(|p| p.0).collect()).collect()
        };
        assert_eq!(
            uids(batches(&big, u64::MAX)),
            [vec![1], vec![2], vec![3], vec![4]]
        );
        assert!(batches(&[], u64::MAX).is_empty());
        // Too large for the config: alone in its batch, whatever its size.
        let mixed = vec![(1, 10), (2, 2000), (3, 10), (4, 10)];
        assert_eq!(uids(batches(&mixed, 1000)), [vec![1], vec![2], vec![3, 4]]);
    }

    #[test]
    fn a_pass_is_long_by_its_batches_of_full_size() {
        let n =
            |count: u32, size: u32| -> Vec<(u32, u32)> { (1..=count).map(|u| (u, size)).collect() };
        let from = u32::try_from(SECOND_SESSION_FROM).unwrap();
        let per = u32::try_from(BATCH_COUNT).unwrap();
        assert!(!long_pass(&[], u64::MAX));
        assert!(!long_pass(&n(per * (from - 1), 3000), u64::MAX));
        assert!(long_pass(&n(per * (from - 1) + 1, 3000), u64::MAX));
        // Bytes: five messages of a few MB are one short pass, however it is batched.
        assert!(!long_pass(&n(5, 1 << 20), u64::MAX));
        let mib8 = u32::try_from(BATCH_BYTES).unwrap();
        assert!(!long_pass(&n(from - 1, mib8), u64::MAX));
        assert!(long_pass(&n(from, mib8), u64::MAX));
        // Messages fetched alone are a batch each.
        assert!(long_pass(&n(from, 2000), 1000));
        assert!(!long_pass(&n(from - 1, 2000), 1000));
    }

    #[test]
    fn batches_shrink_toward_the_end() {
        const MIB: u32 = 1 << 20;
        let todo: Vec<(u32, u32)> = (1..=100).map(|u| (u, MIB / 2)).collect();
        let b = batches(&todo, u64::MAX);
        assert_eq!(b.concat(), todo);
        let sizes: Vec<u64> = b
            .iter()
            .map(|v| v.iter().map(|p| u64::from(p.1)).sum())
            .collect();
        let mut left: u64 = sizes.iter().sum();
        for (i, &size) in sizes.iter().enumerate() {
            // Full batches while much is left, then at most a quarter of what is left, down
            // to a floor.
            let cap = (left / TAIL_SHARE).clamp(TAIL_BYTES, BATCH_BYTES);
            assert!(size <= cap, "batch {i}: {size} of {left} left, {sizes:?}");
            assert!(i == 0 || size <= sizes[i - 1], "{sizes:?}");
            left -= size;
        }
        assert_eq!(sizes[0], BATCH_BYTES);
        assert_eq!(*sizes.last().unwrap(), TAIL_BYTES);
        // A few batches more than full ones would take, not one per message.
        assert!(sizes.len() <= 50 / 8 + 1 + 12, "{sizes:?}");
    }
}
