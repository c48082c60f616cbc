//! The store on a thread of its own, for async callers: jobs run one after another in the
//! order they were submitted, and messages that queue up share one group commit. rusqlite
//! never runs on the async runtime.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;

use tokio::sync::oneshot;

use super::{Checkpointer, Store};
use crate::error::{Error, Result};
use crate::stages::{self, Stage};

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
    /// Where large messages are spooled on their way in (see [`crate::spool`]).
    spool_dir: Arc<std::path::Path>,
}

/// Owns the thread; joining gives the store back.
pub struct StoreJoin(JoinHandle<(Store, Option<Checkpointer>)>);

impl StoreThread {
    /// Moves `store` onto a new thread.
    pub fn spawn(mut store: Store) -> Result<(StoreThread, StoreJoin)> {
        let (tx, rx) = mpsc::channel::<StoreJob>();
        let checkpointer = store.start_checkpointer()?;
        let spool_dir: Arc<std::path::Path> = crate::spool::dir_for(store.file().as_deref()).into();
        crate::spool::sweep(&spool_dir);
        let handle = std::thread::Builder::new()
            .name("store".into())
            .spawn(move || {
                let mut next = rx.recv().ok();
                while let Some(job) = next.take() {
                    match job {
                        StoreJob::Call(f) => stages::time(Stage::Store, || f(&mut store)),
                        StoreJob::Grouped(first) => {
                            next = run_group(&mut store, first, &rx);
                            continue;
                        }
                    }
                    next = rx.recv().ok();
                }
                stages::worker_done(stages::Worker::Store);
                (store, checkpointer)
            })
            .map_err(|source| Error::Spawn {
                what: "the store thread",
                source,
            })?;
        Ok((StoreThread { tx, spool_dir }, StoreJoin(handle)))
    }

    /// The folder large messages are spooled to: beside an SQLite store, else the temporary
    /// folder.
    pub fn spool_dir(&self) -> &std::path::Path {
        &self.spool_dir
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
    ///
    /// `halt` is shared by the jobs of one pass: it is raised when a job fails or when its
    /// group fails to commit, and a job that finds it raised does not run (`Ok(None)`). So
    /// after any failed write nothing later in the pass commits, and the cursor that moves
    /// with each message never passes one that was not stored.
    pub fn submit_grouped<T, F>(
        &self,
        halt: Arc<AtomicBool>,
        f: F,
    ) -> oneshot::Receiver<Result<Option<T>>>
    where
        T: Send + 'static,
        F: FnOnce(&mut Store) -> Result<T> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let _ = self
            .tx
            .send(StoreJob::Grouped(Box::new(move |s: &mut Store| {
                let r = if halt.load(Ordering::SeqCst) {
                    Ok(None)
                } else {
                    f(s).map(Some)
                };
                if r.is_err() {
                    halt.store(true, Ordering::SeqCst);
                }
                Box::new(move |commit_error: Option<&Error>| {
                    let r = match commit_error {
                        Some(e) => {
                            halt.store(true, Ordering::SeqCst);
                            match r {
                                Ok(Some(_)) => Err(Error::Commit(e.to_string())),
                                other => other,
                            }
                        }
                        None => r,
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
            .map_err(|_| Error::Internal("the store thread stopped".into()))?
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
    let grouped = stages::time(Stage::Store, || store.begin_group()).is_ok();
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
    let outcome = if grouped {
        stages::time(Stage::Store, || store.end_group())
    } else {
        Ok(())
    };
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
            .map_err(|_| Error::Internal("the store thread panicked".into()))?;
        store.stop_checkpointer(checkpointer)?;
        Ok(store)
    }
}
