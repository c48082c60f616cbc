//! A Graph folder into tickets: the delta query from the stored link, each new message's
//! MIME through the same pipeline as IMAP mail, the post-action after COMMIT.
//!
//! The cursor is the delta link. Each page's messages are committed in order; the last of
//! them carries the page's next link (`@odata.nextLink`, or `@odata.deltaLink` at the end
//! of a round) into its transaction, so a crash replays at most that page, and what it
//! stored again is found by Message-ID and skipped without fetching. A page with nothing
//! to store moves the cursor on its own. The first run takes the unread mail (and any mail
//! received since it started); later rounds take everything the delta reports as new or
//! changed that is not stored yet. A delta link the server no longer knows (`410 Gone`)
//! starts a full listing, deduplicated the same way, as a UIDVALIDITY change does for IMAP.
//!
//! The post-action of a stored message is owed from its commit (`graph_pending`) and sent
//! in JSON batches once the store is durable, at the start of the next pass if a crash
//! came first.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use futures_util::StreamExt;
use tokio::sync::oneshot;

use super::{Delta, DeltaItem, Graph, Link, MAX_CONCURRENT, Mime, PostAction};
use crate::config::{After, MailboxConfig};
use crate::error::{Error, Result};
use crate::oauth2::Credentials;
use crate::pass::{Job, Pass};
use crate::pipeline::{PrepPool, Stored};
use crate::store::{GraphCursor, GraphPos, Origin, Outcome, StoreThread};
use crate::summary::SourceSummary;

/// The Graph client of mailbox `mb`.
pub fn client(mb: &MailboxConfig, creds: &Credentials) -> Result<Graph> {
    let Credentials::OAuth2(source) = creds else {
        return Err(Error::Internal(format!(
            "mailbox {}: Graph needs an OAuth2 token source",
            mb.name
        )));
    };
    Graph::new(
        mb.graph_url.as_deref(),
        &mb.username,
        mb.ca_file.as_deref(),
        source.clone(),
        mb.timeout(),
    )
}

/// One pass over the folder: owed post-actions first, then the delta query to its end (or
/// a stop), then the post-actions of what this pass stored.
pub async fn catch_up(
    g: &Graph,
    mb: &MailboxConfig,
    pass: &Pass<'_>,
    summary: &mut SourceSummary,
) -> Result<()> {
    let folder = g.folder(&mb.folder).await?.ok_or_else(|| Error::Protocol {
        host: g.host().to_owned(),
        message: format!(
            "mailbox {} has no folder {:?} (give a well-known name such as \"inbox\", a \
             display name, or Parent/Child)",
            g.user(),
            mb.folder
        ),
    })?;
    let action = match pass.opts.dry_run {
        true => None,
        false => Some(post_action_of(g, mb).await?),
    };
    if let Some(a) = &action {
        finish_owed(g, mb, pass.store, a).await?;
    }
    let cursor = cursor_for(mb, pass.store).await?;
    let pool = match pass.pool {
        Some(p) => p.clone(),
        None => PrepPool::spawn()?,
    };
    let mut run = Round {
        g,
        mb,
        pass,
        pool,
        source: format!("graph:{}/{}", mb.name, mb.folder),
        backlog_before: cursor.backlog_before,
        summary,
        halt: Arc::new(AtomicBool::new(false)),
        budget: crate::pass::budget(),
    };
    let start = match cursor.delta_link.is_empty() {
        true => g.delta_start(&folder)?,
        false => cursor.delta_link,
    };
    run.pages(start, &folder).await?;
    if let Some(a) = &action {
        finish_owed(g, mb, pass.store, a).await?;
    }
    Ok(())
}

/// The stored cursor, or a new one whose backlog ends now.
async fn cursor_for(mb: &MailboxConfig, store: &StoreThread) -> Result<GraphCursor> {
    let (name, folder) = (mb.name.clone(), mb.folder.clone());
    if let Some(c) = store.call(move |s| s.graph_cursor(&name, &folder)).await? {
        return Ok(c);
    }
    let c = GraphCursor {
        delta_link: String::new(),
        backlog_before: crate::time::now(),
    };
    let (name, folder, c2) = (mb.name.clone(), mb.folder.clone(), c.clone());
    store
        .call(move |s| s.reset_graph_cursor(&name, &folder, &c2))
        .await?;
    Ok(c)
}

/// What `after` means on Graph; a missing MOVE target is created.
async fn post_action_of(g: &Graph, mb: &MailboxConfig) -> Result<PostAction> {
    Ok(match &mb.after {
        After::Seen => PostAction::Read,
        After::Delete => PostAction::Delete,
        After::Move(target) => PostAction::Move(g.ensure_folder(target).await?.id),
    })
}

/// Makes the store durable, then runs the owed post-actions and records them done.
async fn finish_owed(
    g: &Graph,
    mb: &MailboxConfig,
    store: &StoreThread,
    action: &PostAction,
) -> Result<()> {
    let (name, folder) = (mb.name.clone(), mb.folder.clone());
    let owed = store.call(move |s| s.graph_pending(&name, &folder)).await?;
    if owed.is_empty() {
        return Ok(());
    }
    store.make_durable().await?;
    tracing::debug!(count = owed.len(), "post-actions");
    let done = g.post_action(&owed, action).await?;
    let (name, folder) = (mb.name.clone(), mb.folder.clone());
    store
        .call(move |s| s.graph_done(&name, &folder, &done))
        .await
}

/// A message submitted to the store, and what the pass needs to book its result.
struct Submitted {
    id: String,
    is_read: bool,
    rx: oneshot::Receiver<Result<Option<Stored>>>,
}

/// The delta query of one pass.
struct Round<'a> {
    g: &'a Graph,
    mb: &'a MailboxConfig,
    pass: &'a Pass<'a>,
    pool: PrepPool,
    source: String,
    backlog_before: i64,
    summary: &'a mut SourceSummary,
    halt: Arc<AtomicBool>,
    budget: Arc<tokio::sync::Semaphore>,
}

impl Round<'_> {
    /// Follows the links from `link` to the end of the round (or a stop); a lost link
    /// starts over once with a full listing.
    async fn pages(&mut self, mut link: String, folder: &super::Folder) -> Result<()> {
        let mut relisted = false;
        loop {
            if self.pass.stop.is_some_and(|s| s.is_cancelled()) {
                tracing::info!("stopping between pages");
                return Ok(());
            }
            let (items, next) = match self.g.delta(&link).await? {
                Delta::Page(items, next) => (items, next),
                Delta::Gone if !relisted => {
                    tracing::warn!(
                        "the delta link has expired: listing the folder again; stored messages are skipped as duplicates"
                    );
                    relisted = true;
                    link = self.g.delta_start(folder)?;
                    continue;
                }
                Delta::Gone => {
                    return Err(Error::Protocol {
                        host: self.g.host().to_owned(),
                        message: "the delta query answers 410 Gone even to a full listing".into(),
                    });
                }
            };
            let todo = self.select(items).await?;
            self.page(todo, &next).await?;
            link = next.url().to_owned();
            if matches!(next, Link::Delta(_)) {
                return Ok(());
            }
        }
    }

    /// The entries of a page to fetch: not removed, not read backlog, not stored before.
    async fn select(&mut self, items: Vec<DeltaItem>) -> Result<Vec<DeltaItem>> {
        let before = self.backlog_before;
        let items: Vec<DeltaItem> = items
            .into_iter()
            .filter(|i| {
                let read_backlog = i.is_read && i.received.is_some_and(|r| r < before);
                !i.removed && !read_backlog
            })
            .collect();
        let ids: Vec<Option<String>> = items.iter().map(|i| i.message_id.clone()).collect();
        let source = self.source.clone();
        let known = self
            .pass
            .store
            .call(move |s| {
                ids.iter()
                    .map(|id| {
                        id.as_ref()
                            .map_or(Ok(false), |id| s.has_message_from(id, &source))
                    })
                    .collect::<Result<Vec<bool>>>()
            })
            .await?;
        let mut todo = Vec::new();
        for (item, known) in items.into_iter().zip(known) {
            if known {
                self.summary.counts.duplicates += 1;
            } else {
                todo.push(item);
            }
        }
        Ok(todo)
    }

    /// Fetches `todo`'s MIME (a few at once, in order) and commits each message; the last
    /// one committed carries `next` as the cursor. Waits for every commit of the page.
    async fn page(&mut self, todo: Vec<DeltaItem>, next: &Link) -> Result<()> {
        let (g, max) = (self.g, self.mb.max_message_size);
        let spool_dir = self.pass.store.spool_dir();
        let mut fetched = futures_util::stream::iter(todo)
            .map(|item| async move {
                let mime = g.mime(&item.id, max, spool_dir).await;
                (item, mime)
            })
            .buffered(MAX_CONCURRENT);
        let mut held: Option<(DeltaItem, Mime)> = None;
        let mut submitted = Vec::new();
        let mut first_error = None;
        while let Some((item, mime)) = fetched.next().await {
            match mime {
                Ok(Some(m)) => {
                    if let Some((i, m)) = held.replace((item, m)) {
                        submitted.push(self.submit(i, m, None).await?);
                    }
                }
                Ok(None) => tracing::debug!(id = %item.id, "gone before it was fetched"),
                Err(e) => {
                    first_error = Some(e);
                    break;
                }
            }
        }
        drop(fetched);
        let cursor_to = first_error.is_none().then(|| next.url().to_owned());
        let moved = cursor_to.is_some() && held.is_some();
        if let Some((i, m)) = held {
            submitted.push(self.submit(i, m, cursor_to.clone()).await?);
        }
        self.settle(submitted).await?;
        if let Some(e) = first_error {
            return Err(e);
        }
        if !moved && !self.pass.opts.dry_run {
            let (name, folder, link) = (
                self.mb.name.clone(),
                self.mb.folder.clone(),
                next.url().to_owned(),
            );
            self.pass
                .store
                .call(move |s| s.set_graph_link(&name, &folder, &link))
                .await?;
        }
        Ok(())
    }

    /// Hands one message to the parse workers and the store.
    async fn submit(
        &mut self,
        item: DeltaItem,
        mime: Mime,
        cursor_to: Option<String>,
    ) -> Result<Submitted> {
        let max = self.mb.max_message_size;
        let (bytes, prepared) = match mime {
            Mime::Whole(bytes) => {
                let n = bytes.len();
                (n, self.pool.prepare(self.pass.me.clone(), bytes))
            }
            // Like a spooled IMAP message, it takes the whole budget.
            Mime::Spooled(spool) => (
                usize::MAX,
                self.pool.prepare_spooled(self.pass.me.clone(), spool),
            ),
            Mime::TooLarge { head, size } => (head.len(), crate::pass::too_large(head, size, max)),
        };
        let permit = crate::pass::reserve(&self.budget, bytes).await?;
        let origin = Origin {
            source: self.source.clone(),
            mailbox: self.mb.name.clone(),
            imap: None,
            graph: Some(GraphPos {
                mailbox: self.mb.name.clone(),
                folder: self.mb.folder.clone(),
                id: item.id.clone(),
                cursor_to,
            }),
        };
        let job = Job {
            prepared,
            origin,
            received: item.received.unwrap_or_else(crate::time::now),
            ack: self.pass.opts.ack.clone(),
            rules: self.pass.opts.rules.clone(),
        };
        self.summary.counts.fetched += 1;
        Ok(Submitted {
            id: item.id,
            is_read: item.is_read,
            rx: job.submit(self.pass.store, self.halt.clone(), permit),
        })
    }

    /// Books the page's results in order; returns the first error. A duplicate that was
    /// read already owes no "mark read" (which would only report it changed again).
    async fn settle(&mut self, submitted: Vec<Submitted>) -> Result<()> {
        let mut first_error = None;
        let mut nothing_owed = Vec::new();
        for s in submitted {
            match s.rx.await {
                Ok(Ok(Some(stored))) => {
                    let opts = &self.pass.opts;
                    stored.log(&self.summary.name, opts.dry_run, opts.log_each);

                    self.summary.counts.record(stored.outcome);
                    self.summary.counts.acks_queued += u64::from(stored.acked);
                    if s.is_read
                        && matches!(stored.outcome, Outcome::Duplicate(_))
                        && self.mb.after == After::Seen
                    {
                        nothing_owed.push(s.id);
                    }
                }
                Ok(Ok(None)) => {}
                Ok(Err(e)) => {
                    first_error.get_or_insert(e);
                }
                Err(_) => {
                    first_error.get_or_insert(Error::Internal("the store thread stopped".into()));
                }
            }
        }
        if !nothing_owed.is_empty() {
            let (name, folder) = (self.mb.name.clone(), self.mb.folder.clone());
            self.pass
                .store
                .call(move |s| s.graph_done(&name, &folder, &nothing_owed))
                .await?;
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}
