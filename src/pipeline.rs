//! One raw message into the store, exactly once: parse, classify, thread, store; or
//! quarantine what cannot be parsed.
//!
//! The work is split in two so a sync can use every core: [`prepare`] (parse, classify,
//! compress: CPU only, any thread, any order) and [`commit`] (one SQLite transaction, on the
//! store's own thread, in UID order). [`process`] does both, for one-off callers.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;

use tokio::sync::oneshot;

use crate::classify::{Classification, Identity, classify};
use crate::error::{Error, Result};
use crate::message::{self, ParsedMessage};
use crate::outbound::AckPlan;
use crate::store::{Checkpointer, Incoming, Origin, Outcome, Store, pack};

/// A message after the CPU work, ready for its transaction.
pub struct Prepared {
    /// The exact bytes.
    pub raw: Vec<u8>,
    /// What parsing gave.
    pub body: PreparedBody,
}

/// The parsed and judged message, or why it cannot be parsed.
pub enum PreparedBody {
    /// A message: its fields, verdict and compressed bytes.
    Message {
        parsed: Box<ParsedMessage>,
        class: Classification,
        packed: Vec<u8>,
    },
    /// Not a message: goes to the quarantine.
    Unparseable(String),
    /// Too large to fetch (`raw` is only its header): goes to the quarantine with its size.
    TooLarge {
        /// The message's real size.
        size: u64,
        /// Why it was not fetched.
        why: String,
    },
}

/// Parses, classifies and compresses `raw`. Never panics, never fails: what cannot be
/// parsed is marked for the quarantine.
pub fn prepare(me: &Identity, raw: Vec<u8>) -> Prepared {
    let body = match message::parse(&raw) {
        Err(why) => PreparedBody::Unparseable(why.0),
        Ok(parsed) => {
            let class = classify(&parsed, me);
            match pack(&raw) {
                Ok(packed) => PreparedBody::Message {
                    parsed: Box::new(parsed),
                    class,
                    packed,
                },
                Err(e) => PreparedBody::Unparseable(format!("cannot compress: {e}")),
            }
        }
    };
    Prepared { raw, body }
}

/// Stores a prepared message in one transaction (advancing the IMAP cursor when `origin`
/// has one). Only the store itself can fail.
pub fn commit(
    store: &mut Store,
    p: &Prepared,
    origin: &Origin,
    received_at: i64,
    ack: Option<&AckPlan>,
) -> Result<Outcome> {
    let (parsed, class, packed) = match &p.body {
        PreparedBody::Unparseable(why) => {
            tracing::warn!(source = %origin.source, uid = origin.imap.as_ref().map(|i| i.uid), error = %why, "quarantined");
            return store.quarantine(&p.raw, why, origin, received_at);
        }
        PreparedBody::TooLarge { size, why } => {
            tracing::warn!(source = %origin.source, uid = origin.imap.as_ref().map(|i| i.uid), size, error = %why, "quarantined");
            return store.quarantine_sized(&p.raw, *size, why, origin, received_at);
        }
        PreparedBody::Message {
            parsed,
            class,
            packed,
        } => (parsed, class, packed),
    };
    let incoming = Incoming {
        parsed,
        class,
        raw: &p.raw,
        packed,
        origin,
        received_at,
        ack,
    };
    let outcome = match catch_unwind(AssertUnwindSafe(|| store.ingest(&incoming))) {
        Ok(r) => r?,
        Err(_) => {
            let why = "storing this message panicked; kept in the quarantine";
            tracing::error!(source = %origin.source, message_id = %parsed.message_id, why);
            return store.quarantine(&p.raw, why, origin, received_at);
        }
    };
    let (what, ticket) = match outcome {
        Outcome::Created(t) => ("created", t),
        Outcome::Threaded(t) => ("threaded", t),
        Outcome::Duplicate(t) => ("duplicate", t),
        Outcome::Quarantined(t) => ("quarantined", t),
    };
    tracing::info!(
        uid = origin.imap.as_ref().map(|p| p.uid),
        message_id = %parsed.message_id,
        kind = class.kind.as_str(),
        ticket,
        "{what}"
    );
    Ok(outcome)
}

/// [`prepare`] then [`commit`], on the calling thread.
pub fn process(
    store: &mut Store,
    me: &Identity,
    raw: &[u8],
    origin: &Origin,
    received_at: i64,
    ack: Option<&AckPlan>,
) -> Result<Outcome> {
    commit(store, &prepare(me, raw.to_vec()), origin, received_at, ack)
}

type Job = Box<dyn FnOnce() + Send>;

/// A few threads for [`prepare`], one per core.
#[derive(Clone)]
pub struct PrepPool {
    tx: mpsc::Sender<Job>,
}

impl PrepPool {
    /// Starts one thread per available core.
    pub fn spawn() -> Result<PrepPool> {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let n = std::thread::available_parallelism().map_or(2, usize::from);
        for i in 0..n {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("prepare-{i}"))
                .spawn(move || {
                    loop {
                        let job = match rx.lock() {
                            Ok(guard) => guard.recv(),
                            Err(_) => break,
                        };
                        match job {
                            Ok(job) => job(),
                            Err(_) => break,
                        }
                    }
                })
                .map_err(|e| Error::Other(format!("cannot start a worker thread: {e}")))?;
        }
        Ok(PrepPool { tx })
    }

    /// Prepares `raw` on the pool; the result arrives on the receiver.
    pub fn prepare(&self, me: Arc<Identity>, raw: Vec<u8>) -> oneshot::Receiver<Prepared> {
        let (tx, rx) = oneshot::channel();
        let _ = self.tx.send(Box::new(move || {
            let _ = tx.send(prepare(&me, raw));
        }));
        rx
    }
}

/// Hands a grouped job's result over once its group has committed (or failed to).
type Deliver = Box<dyn FnOnce(Option<&Error>) + Send>;

enum StoreJob {
    /// Runs on its own.
    Call(Box<dyn FnOnce(&mut Store) + Send>),
    /// May share a transaction with the grouped jobs queued right behind it.
    Grouped(Box<dyn FnOnce(&mut Store) -> Deliver + Send>),
}

/// At most this many messages share one group commit.
const GROUP_MAX: usize = 64;
/// A group takes no more queued jobs once it has been open this long, so that even a process
/// killed every few hundred milliseconds keeps committing progress.
const GROUP_TIME: std::time::Duration = std::time::Duration::from_millis(100);

/// The store on a thread of its own. Jobs run in the order they were submitted.
#[derive(Clone)]
pub struct StoreThread {
    tx: mpsc::Sender<StoreJob>,
}

/// Owns the thread; joining gives the store back.
pub struct StoreJoin(JoinHandle<(Store, Option<Checkpointer>)>);

impl StoreThread {
    /// Moves `store` onto a new thread.
    pub fn spawn(mut store: Store) -> Result<(StoreThread, StoreJoin)> {
        let (tx, rx) = mpsc::channel::<StoreJob>();
        let checkpointer = store.start_checkpointer()?;
        let handle = std::thread::Builder::new()
            .name("store".into())
            .spawn(move || {
                let mut next = rx.recv().ok();
                while let Some(job) = next.take() {
                    match job {
                        StoreJob::Call(f) => f(&mut store),
                        StoreJob::Grouped(first) => {
                            next = run_group(&mut store, first, &rx);
                            continue;
                        }
                    }
                    next = rx.recv().ok();
                }
                (store, checkpointer)
            })
            .map_err(|e| Error::Other(format!("cannot start the store thread: {e}")))?;
        Ok((StoreThread { tx }, StoreJoin(handle)))
    }

    /// Queues `f`; its result arrives on the returned receiver.
    pub fn submit<R, F>(&self, f: F) -> oneshot::Receiver<R>
    where
        R: Send + 'static,
        F: FnOnce(&mut Store) -> R + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        // When the thread is gone the job is dropped, and the receiver reports it.
        let _ = self.tx.send(StoreJob::Call(Box::new(move |s: &mut Store| {
            let _ = tx.send(f(s));
        })));
        rx
    }

    /// Queues `f` as a member of a group commit: when several such jobs are waiting, they
    /// run in one transaction, each inside its own savepoint. The result arrives only after
    /// that transaction has committed, so a caller never acts on uncommitted data.
    pub fn submit_grouped<T, F>(&self, f: F) -> oneshot::Receiver<Result<T>>
    where
        T: Send + 'static,
        F: FnOnce(&mut Store) -> Result<T> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let _ = self
            .tx
            .send(StoreJob::Grouped(Box::new(move |s: &mut Store| {
                let r = f(s);
                Box::new(move |commit_error: Option<&Error>| {
                    let r = match commit_error {
                        Some(e) if r.is_ok() => Err(Error::Other(format!("commit failed: {e}"))),
                        _ => r,
                    };
                    let _ = tx.send(r);
                }) as Deliver
            })));
        rx
    }

    /// Runs `f` on the store and waits for it.
    pub async fn call<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&mut Store) -> Result<R> + Send + 'static,
    {
        self.submit(f)
            .await
            .map_err(|_| Error::Other("the store thread stopped".into()))?
    }
}

/// Runs `first` and every grouped job already queued behind it (up to [`GROUP_MAX`]) in one
/// transaction, then delivers their results. Returns a job that was taken from the queue but
/// not run: it runs next.
fn run_group(
    store: &mut Store,
    first: Box<dyn FnOnce(&mut Store) -> Deliver + Send>,
    rx: &mpsc::Receiver<StoreJob>,
) -> Option<StoreJob> {
    let mut delivers = Vec::new();
    let mut leftover = None;
    // Should BEGIN fail (another writer holds the lock too long), every job below commits
    // on its own instead.
    let grouped = store.begin_group().is_ok();
    delivers.push(first(store));
    let opened = std::time::Instant::now();
    while delivers.len() < GROUP_MAX && opened.elapsed() < GROUP_TIME {
        match rx.try_recv() {
            Ok(StoreJob::Grouped(g)) => delivers.push(g(store)),
            Ok(other) => {
                leftover = Some(other);
                break;
            }
            Err(_) => break,
        }
    }
    let outcome = if grouped { store.end_group() } else { Ok(()) };
    for d in delivers {
        d(outcome.as_ref().err());
    }
    leftover.or_else(|| rx.recv().ok())
}

impl StoreJoin {
    /// Waits for every queued job (all senders must be dropped first) and returns the store.
    pub fn join(self) -> Result<Store> {
        let (mut store, checkpointer) = self
            .0
            .join()
            .map_err(|_| Error::Other("the store thread panicked".into()))?;
        store.stop_checkpointer(checkpointer)?;
        Ok(store)
    }
}
