//! What one catch-up pass needs, whatever the transport (IMAP in [`crate::sync`], Microsoft
//! Graph in [`crate::graph::sync`]): the options, the store and parse workers, the byte budget
//! of fetched mail waiting for the store, and the [`Job`] that takes one fetched message
//! through the parse workers into a group commit. Nothing here talks to a server.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use tokio::sync::{Semaphore, oneshot};
use tokio_util::sync::CancellationToken;

use crate::classify::Identity;
use crate::error::{Error, Result};
use crate::pipeline::{Plan, PrepPool, Prepared, PreparedBody, Raw, Rules, Stored, commit};
use crate::store::{Origin, StoreThread};

/// At most this many fetched bytes wait for the store at once (with their parsed and
/// compressed forms they are most of a sync's memory: 8 MiB peaked at 50-62 MB RSS in the
/// benchmark, 4 MiB at 40-42 MB, at the same speed).
const IN_FLIGHT_BYTES: usize = 4 << 20;

/// How to run.
#[derive(Clone, Default)]
pub struct SyncOptions {
    /// Work as usual but keep nothing and touch nothing on the server.
    pub dry_run: bool,
    /// Acknowledge new requests (queued in the outbox with their ticket).
    pub ack: Option<Arc<crate::outbound::AckPlan>>,
    /// How to thread and judge.
    pub rules: Arc<Rules>,
    /// Each message's decision at `info` (`watch`: they come one by one) rather than at
    /// `debug` (`sync`: a first run may bring thousands).
    pub log_each: bool,
    /// Counts what a catch-up has to do and has done, for a progress line.
    pub progress: Option<Arc<crate::progress::Progress>>,
}

/// What one catch-up pass needs besides the session. `sync` makes one pass per connection;
/// `watch` makes one per wake-up, on the same connection, with a shared worker pool.
pub struct Pass<'a> {
    /// The store's thread.
    pub store: &'a StoreThread,
    /// Our own addresses.
    pub me: &'a Arc<Identity>,
    /// Parse workers to use; `None` starts some when there is work.
    pub pool: Option<&'a PrepPool>,
    /// Dry run or not.
    pub opts: SyncOptions,
    /// When cancelled, no new batch is fetched: what is in flight is stored and finished,
    /// then the pass returns.
    pub stop: Option<&'a CancellationToken>,
    /// How to log in again: a pass with a long backlog fetches over a second session too
    /// (`sync`); `None` keeps it to the one session (`watch`).
    pub creds: Option<&'a crate::oauth2::Credentials>,
}

/// Room for `len` fetched bytes in the in-flight budget (a message larger than the budget
/// takes all of it).
pub async fn reserve(
    budget: &Arc<Semaphore>,
    len: usize,
) -> Result<tokio::sync::OwnedSemaphorePermit> {
    let want = u32::try_from(len.clamp(1, IN_FLIGHT_BYTES)).unwrap_or(1);
    budget
        .clone()
        .acquire_many_owned(want)
        .await
        .map_err(|_| Error::Internal("fetch budget closed".into()))
}

/// The in-flight byte budget of one pass.
pub fn budget() -> Arc<Semaphore> {
    Arc::new(Semaphore::new(IN_FLIGHT_BYTES))
}

/// A fetched message on its way to the store: parsed by a worker, committed in a group.
pub struct Job {
    /// The parse worker's result, to come.
    pub prepared: oneshot::Receiver<Prepared>,
    /// Where it comes from, with the cursor that moves with it.
    pub origin: Origin,
    /// When the server received it (Unix seconds).
    pub received: i64,
    /// Acknowledge it if it opens a ticket.
    pub ack: Option<Arc<crate::outbound::AckPlan>>,
    /// How to thread and judge.
    pub rules: Arc<Rules>,
}

impl Job {
    /// Queues the commit. The parsed message and `permit` (its bytes in the budget) are
    /// kept until the commit is delivered: a lost group runs its jobs again.
    pub fn submit(
        self,
        store: &StoreThread,
        halt: Arc<AtomicBool>,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) -> oneshot::Receiver<Result<Option<Stored>>> {
        let Job {
            prepared,
            origin,
            received,
            ack,
            rules,
        } = self;
        let mut waiting = Some(prepared);
        let mut prepared = None;
        let held = permit.num_permits();
        store.submit_grouped(halt, held, move |s| {
            let _held = &permit;
            if let Some(rx) = waiting.take() {
                prepared = rx.blocking_recv().ok();
            }
            let Some(p) = &prepared else {
                return Err(Error::Internal("a worker thread stopped".into()));
            };
            let plan = Plan {
                rules: &rules,
                ack: ack.as_deref(),
                progress: None,
            };
            commit(s, p, &origin, received, plan)
        })
    }
}

/// A message too large to fetch, `head` its header, ready for the quarantine.
pub fn too_large(head: Vec<u8>, size: u64, max: u64) -> oneshot::Receiver<Prepared> {
    let (tx, rx) = oneshot::channel();
    let why = format!(
        "too large: {size} bytes, over max-message-size ({max} bytes); only its header was fetched"
    );
    let _ = tx.send(Prepared {
        raw: Raw::Memory(head),
        body: PreparedBody::TooLarge { size, why },
    });
    rx
}
