//! One raw message into the store, exactly once: parse, classify, thread, store; or
//! quarantine what cannot be parsed. Also the store's own thread, so that async code never
//! waits on SQLite.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc;
use std::thread::JoinHandle;

use tokio::sync::oneshot;

use crate::classify::{Identity, classify};
use crate::error::{Error, Result};
use crate::message;
use crate::store::{Incoming, Origin, Outcome, Store};

/// Turns `raw` into a ticket or a follow-up, or quarantines it. A message-level problem
/// never fails: only the store itself can.
pub fn process(
    store: &mut Store,
    me: &Identity,
    raw: &[u8],
    origin: &Origin,
    received_at: i64,
) -> Result<Outcome> {
    let parsed = match message::parse(raw) {
        Ok(p) => p,
        Err(why) => {
            tracing::warn!(source = %origin.source, error = %why, "quarantined");
            return store.quarantine(raw, &why.0, origin, received_at);
        }
    };
    let class = classify(&parsed, me);
    let stored = catch_unwind(AssertUnwindSafe(|| {
        store.ingest(&Incoming {
            parsed: &parsed,
            class: &class,
            raw,
            origin,
            received_at,
        })
    }));
    let outcome = match stored {
        Ok(r) => r?,
        Err(_) => {
            let why = "storing this message panicked; kept in the quarantine";
            tracing::error!(source = %origin.source, message_id = %parsed.message_id, why);
            return store.quarantine(raw, why, origin, received_at);
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

type Job = Box<dyn FnOnce(&mut Store) + Send>;

/// The store on a thread of its own. Jobs run in the order they were submitted.
#[derive(Clone)]
pub struct StoreThread {
    tx: mpsc::Sender<Job>,
}

/// Owns the thread; joining gives the store back.
pub struct StoreJoin(JoinHandle<Store>);

impl StoreThread {
    /// Moves `store` onto a new thread.
    pub fn spawn(mut store: Store) -> Result<(StoreThread, StoreJoin)> {
        let (tx, rx) = mpsc::channel::<Job>();
        let handle = std::thread::Builder::new()
            .name("store".into())
            .spawn(move || {
                while let Ok(job) = rx.recv() {
                    job(&mut store);
                }
                store
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
        let _ = self.tx.send(Box::new(move |s: &mut Store| {
            let _ = tx.send(f(s));
        }));
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

impl StoreJoin {
    /// Waits for every queued job (all senders must be dropped first) and returns the store.
    pub fn join(self) -> Result<Store> {
        self.0
            .join()
            .map_err(|_| Error::Other("the store thread panicked".into()))
    }
}
