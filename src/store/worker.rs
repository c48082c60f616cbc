//! The store on a thread of its own, for async callers: jobs run one after another in the
//! order they were submitted, and messages that queue up or follow closely share one group
//! commit. rusqlite never runs on the async runtime.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::{Checkpointer, Store};
use crate::error::{Error, Result};
use crate::stages::{self, Stage};

enum StoreJob {
    /// Runs on its own.
    Call(Box<dyn FnOnce(&mut Store) + Send>),
    /// May share a transaction with the grouped jobs queued right behind it.
    Grouped(Box<dyn GroupJob>),
}

/// A job of a group commit: run inside the group's transaction (and run again on its own
/// when the group is lost, see [`Store::begin_group`]), its result handed over once the
/// transaction that kept it has committed.
trait GroupJob: Send {
    /// Runs the job, keeping its result; a job whose pass was halted does not run, and a
    /// failure halts the pass (unless it lost the group: then every job runs again).
    fn run(&mut self, store: &mut Store);
    /// Hands the result of the last run over: an error when `commit_error` says its
    /// transaction did not commit. A failure halts the pass.
    fn deliver(self: Box<Self>, commit_error: Option<&Error>);
    /// The fetched bytes the job holds until its result is delivered.
    fn held(&self) -> usize;
}

/// A [`GroupJob`] made of a closure.
struct Grouped<T, F> {
    f: F,
    halt: Arc<AtomicBool>,
    held: usize,
    result: Result<Option<T>>,
    tx: oneshot::Sender<Result<Option<T>>>,
}

impl<T, F> GroupJob for Grouped<T, F>
where
    T: Send + 'static,
    F: FnMut(&mut Store) -> Result<T> + Send + 'static,
{
    fn run(&mut self, store: &mut Store) {
        self.result = if self.halt.load(Ordering::SeqCst) {
            Ok(None)
        } else {
            (self.f)(store).map(Some)
        };
        // The jobs behind a failed one must not run; unless the failure lost the group,
        // whose jobs all run again.
        if self.result.is_err() && !store.group_lost() {
            self.halt.store(true, Ordering::SeqCst);
        }
    }

    fn deliver(self: Box<Self>, commit_error: Option<&Error>) {
        let r = match (commit_error, self.result) {
            (Some(e), Ok(Some(_))) => Err(Error::Commit(e.to_string())),
            (_, r) => r,
        };
        if r.is_err() {
            self.halt.store(true, Ordering::SeqCst);
        }
        let _ = self.tx.send(r);
    }

    fn held(&self) -> usize {
        self.held
    }
}

/// When a group commit takes no more jobs.
#[derive(Debug, Clone, Copy)]
struct Grouping {
    /// At most this many jobs share one commit.
    max: usize,
    /// A group takes no more queued jobs once it has been open this long, so that even a
    /// process killed every few hundred milliseconds keeps committing progress.
    time: Duration,
    /// How long an open group waits for its next job when none is queued. In a sync's steady
    /// stream the next message is never far behind: the group takes it instead of committing
    /// every few messages, each commit writing the same half-filled pages again.
    wait: Duration,
    /// A group that holds this many fetched bytes commits once the queue is empty, without
    /// waiting: the fetch is waiting for the room in its in-flight budget that the commit
    /// gives back.
    wait_bytes: usize,
}

impl Grouping {
    /// Up to 256 messages, 100 ms, 2 ms apart; no waiting once a group holds 1 MiB, a
    /// quarter of the fetch's in-flight budget ([`crate::pass`]). Waiting took the benchmark
    /// sync from about 560 commits to 110-190 and its writes from 570-620 to 500 MB (CPU -3
    /// to -6 %); a message alone (`watch`) waits 2 ms once.
    const SYNC: Grouping = Grouping {
        max: 256,
        time: Duration::from_millis(100),
        wait: Duration::from_millis(2),
        wait_bytes: 1 << 20,
    };

    /// How long an open group of `jobs` jobs that hold `held` bytes, open for `open`, waits
    /// for its next job; `None` when it takes no more, `Some(ZERO)` when it takes only one
    /// already queued.
    fn next_wait(&self, jobs: usize, held: usize, open: Duration) -> Option<Duration> {
        if jobs >= self.max || open >= self.time {
            return None;
        }
        if held >= self.wait_bytes {
            return Some(Duration::ZERO);
        }
        Some(self.wait.min(self.time - open))
    }
}

/// The store on a thread of its own. Jobs run in the order they were submitted.
#[derive(Clone)]
pub struct StoreThread {
    tx: mpsc::Sender<StoreJob>,
    /// Where large messages are spooled on their way in (see [`crate::spool`]).
    spool_dir: Arc<std::path::Path>,
    /// The WAL whose sync makes commits durable (see [`StoreThread::make_durable`]).
    wal: Option<Arc<std::path::Path>>,
}

/// Owns the thread; joining gives the store back.
pub struct StoreJoin(JoinHandle<(Store, Option<Checkpointer>)>);

impl StoreThread {
    /// Moves `store` onto a new thread.
    pub fn spawn(store: Store) -> Result<(StoreThread, StoreJoin)> {
        StoreThread::spawn_grouping(store, Grouping::SYNC)
    }

    /// Moves `store` onto a new thread whose group commits follow `grouping`.
    fn spawn_grouping(mut store: Store, grouping: Grouping) -> Result<(StoreThread, StoreJoin)> {
        let (tx, rx) = mpsc::channel::<StoreJob>();
        let checkpointer = store.start_checkpointer()?;
        let spool_dir: Arc<std::path::Path> = store.spool_dir().into();
        let wal = store.wal_file().map(Arc::from);
        crate::spool::sweep(&spool_dir);
        let handle = std::thread::Builder::new()
            .name("store".into())
            .spawn(move || {
                let mut next = rx.recv().ok();
                while let Some(job) = next.take() {
                    match job {
                        StoreJob::Call(f) => stages::time(Stage::Store, || f(&mut store)),
                        StoreJob::Grouped(first) => {
                            next = run_group(&mut store, first, &rx, grouping);
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
        Ok((StoreThread { tx, spool_dir, wal }, StoreJoin(handle)))
    }

    /// Makes every commit that has returned so far durable, before the post-action that
    /// relies on it (see [`super::sync_wal`]): a sync of the WAL on a blocking thread, not a
    /// job behind the messages in the store's queue, so fetching and the store go on
    /// meanwhile. Nothing to do on PostgreSQL, in memory or in a dry run.
    pub async fn make_durable(&self) -> Result<()> {
        let Some(wal) = self.wal.clone() else {
            return Ok(());
        };
        tokio::task::spawn_blocking(move || super::sync_wal(&wal))
            .await
            .map_err(|e| crate::error::Error::Internal(format!("syncing the store: {e}")))?
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
    /// run in one transaction. The result arrives only after that transaction has committed,
    /// so a caller never acts on uncommitted data. `f` may run twice: should a job of its
    /// group fail half-way, the group is rolled back and its jobs run again, each on its
    /// own.
    ///
    /// `halt` is shared by the jobs of one pass: it is raised when a job fails or when its
    /// group fails to commit, and a job that finds it raised does not run (`Ok(None)`). So
    /// after any failed write nothing later in the pass commits, and the cursor that moves
    /// with each message never passes one that was not stored. `held` is how many fetched
    /// bytes the job keeps until its result is delivered: a group that holds many commits
    /// without waiting for more.
    pub fn submit_grouped<T, F>(
        &self,
        halt: Arc<AtomicBool>,
        held: usize,
        f: F,
    ) -> oneshot::Receiver<Result<Option<T>>>
    where
        T: Send + 'static,
        F: FnMut(&mut Store) -> Result<T> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let _ = self.tx.send(StoreJob::Grouped(Box::new(Grouped {
            f,
            halt,
            held,
            result: Ok(None),
            tx,
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

/// Runs `first` and the grouped jobs that follow it closely (see [`Grouping`]) in one
/// transaction, then delivers their results. When a job fails half-way and loses the group,
/// the group is rolled back and its jobs run again one by one, each committed on its own.
/// Returns a job that was taken from the queue but not run: it runs next.
fn run_group(
    store: &mut Store,
    first: Box<dyn GroupJob>,
    rx: &mpsc::Receiver<StoreJob>,
    grouping: Grouping,
) -> Option<StoreJob> {
    let mut jobs = Vec::new();
    let mut leftover = None;
    // Should BEGIN fail (another writer holds the lock too long), every job below commits
    // on its own instead.
    let grouped = stages::time(Stage::Store, || store.begin_group()).is_ok();
    let opened = Instant::now();
    let mut held = 0;
    let mut next = Some(first);
    while let Some(mut job) = next.take() {
        stages::time(Stage::Store, || job.run(store));
        held += job.held();
        jobs.push(job);
        if store.group_lost() {
            break;
        }
        let Some(wait) = grouping.next_wait(jobs.len(), held, opened.elapsed()) else {
            break;
        };
        // Jobs that commit on their own (BEGIN failed) gain nothing by waiting for each other.
        let queued = if wait.is_zero() || !grouped {
            rx.try_recv().ok()
        } else {
            rx.recv_timeout(wait).ok()
        };
        match queued {
            Some(StoreJob::Grouped(g)) => next = Some(g),
            other => leftover = other,
        }
    }
    stages::time(Stage::Store, || store.advance_held());
    if store.group_lost() {
        let _ = stages::time(Stage::Store, || store.abandon_group());
        for mut job in jobs {
            stages::time(Stage::Store, || job.run(store));
            job.deliver(None);
        }
        return leftover.or_else(|| rx.recv().ok());
    }
    stages::group(jobs.len());
    let outcome = if grouped {
        stages::time(Stage::Store, || store.end_group())
    } else {
        Ok(())
    };
    for job in jobs {
        job.deliver(outcome.as_ref().err());
    }
    leftover.or_else(|| rx.recv().ok())
}

impl StoreJoin {
    /// Waits for every queued job (all senders must be dropped first) and returns the store.
    pub fn join(self) -> Result<Store> {
        let (store, checkpointer) = self
            .0
            .join()
            .map_err(|_| Error::Internal("the store thread panicked".into()))?;
        Store::stop_checkpointer(checkpointer);
        Ok(store)
    }
}

#[cfg(test)]
mod tests {
    use std::panic::{AssertUnwindSafe, catch_unwind};

    use super::*;
    use crate::store::db::params;

    /// Writes a ticket with this subject in `s`'s transaction.
    fn ticket(s: &mut Store, subject: &str) -> Result<()> {
        s.transaction(|tx| {
            tx.c.execute(
                "INSERT INTO ticket (subject, created_at, updated_at) VALUES (?1, 0, 0)",
                params![subject],
            )?;
            Ok(())
        })
    }

    fn subjects(s: &Store) -> Vec<String> {
        let mut v: Vec<String> = s
            .tickets(None)
            .unwrap()
            .into_iter()
            .map(|t| t.subject)
            .collect();
        v.sort();
        v
    }

    type TestJob = Box<dyn FnMut(&mut Store) -> Result<()> + Send>;

    /// Queues `jobs` behind a job that waits, so that all of them form one group.
    fn one_group(jobs: Vec<TestJob>) -> (Vec<Result<Option<()>>>, Store) {
        let (thread, join) = StoreThread::spawn(Store::open_in_memory().unwrap()).unwrap();
        let (go, wait) = std::sync::mpsc::channel::<()>();
        let waiting = thread.submit(move |_| wait.recv());
        let halt = Arc::new(AtomicBool::new(false));
        let rxs: Vec<_> = jobs
            .into_iter()
            .map(|f| thread.submit_grouped(halt.clone(), 0, f))
            .collect();
        go.send(()).unwrap();
        waiting.blocking_recv().unwrap().unwrap();
        let results = rxs
            .into_iter()
            .map(|rx| rx.blocking_recv().unwrap())
            .collect();
        drop(thread);
        (results, join.join().unwrap())
    }

    #[test]
    fn a_job_that_fails_half_way_keeps_nothing_and_its_group_runs_again_one_by_one() {
        let runs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = runs.clone();
        let (results, store) = one_group(vec![
            Box::new(move |s| {
                counted.fetch_add(1, Ordering::SeqCst);
                ticket(s, "a")
            }),
            Box::new(|s| {
                s.transaction(|tx| {
                    tx.c.execute(
                        "INSERT INTO ticket (subject, created_at, updated_at) VALUES ('half', 0, 0)",
                        &[],
                    )?;
                    Err(Error::Internal("fails after its first write".into()))
                })
            }),
            Box::new(|s| ticket(s, "after")),
        ]);
        assert!(matches!(results[0], Ok(Some(()))), "{:?}", results[0]);
        assert!(results[1].is_err(), "{:?}", results[1]);
        // Halted: a later message must not commit once one before it failed.
        assert!(matches!(results[2], Ok(None)), "{:?}", results[2]);
        assert_eq!(subjects(&store), ["a"]);
        assert_eq!(
            runs.load(Ordering::SeqCst),
            2,
            "run in the group, then alone"
        );
    }

    #[test]
    fn a_job_that_panics_half_way_leaves_nothing_of_its_writes_and_the_others_commit() {
        let (results, store) = one_group(vec![
            Box::new(|s| ticket(s, "a")),
            Box::new(|s| {
                // What `pipeline::commit` does: a panic while storing puts the message in
                // the quarantine instead.
                let stored = catch_unwind(AssertUnwindSafe(|| {
                    s.transaction(|tx| -> Result<()> {
                        tx.c.execute(
                            "INSERT INTO ticket (subject, created_at, updated_at) VALUES ('half', 0, 0)",
                            &[],
                        )?;
                        panic!("a bug while storing")
                    })
                }));
                match stored {
                    Ok(r) => r,
                    Err(_) => ticket(s, "quarantined"),
                }
            }),
            Box::new(|s| ticket(s, "after")),
        ]);
        assert!(
            results.iter().all(|r| matches!(r, Ok(Some(())))),
            "{results:?}"
        );
        assert_eq!(subjects(&store), ["a", "after", "quarantined"]);
    }

    #[test]
    fn a_group_waits_briefly_for_more_until_it_is_full_old_or_holds_many_bytes() {
        let g = Grouping::SYNC;
        let ms = Duration::from_millis;
        assert_eq!(g.next_wait(1, 3_000, ms(0)), Some(g.wait));
        assert_eq!(g.next_wait(g.max - 1, 0, ms(50)), Some(g.wait));
        // Never past its time.
        let near = g.time - Duration::from_micros(300);
        assert_eq!(g.next_wait(10, 0, near), Some(Duration::from_micros(300)));
        assert_eq!(g.next_wait(10, 0, g.time), None);
        assert_eq!(g.next_wait(g.max, 0, ms(1)), None);
        // Holding much of the fetch's budget: takes only what is queued already.
        assert_eq!(g.next_wait(3, g.wait_bytes, ms(1)), Some(Duration::ZERO));
    }

    /// Counts the commits of `store`'s SQLite connection.
    fn count_commits(store: &mut Store) -> Arc<std::sync::atomic::AtomicUsize> {
        let n = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = n.clone();
        let crate::store::db::Db::Lite(c) = &mut store.conn else {
            panic!("an SQLite store")
        };
        c.commit_hook(Some(move || {
            counted.fetch_add(1, Ordering::SeqCst);
            false
        }))
        .unwrap();
        n
    }

    /// Queues a job that writes ticket `subject` and tells `ran` once it has.
    fn announced(
        thread: &StoreThread,
        held: usize,
        subject: &'static str,
        ran: &std::sync::mpsc::Sender<()>,
    ) -> oneshot::Receiver<Result<Option<()>>> {
        let ran = ran.clone();
        let halt = Arc::new(AtomicBool::new(false));
        thread.submit_grouped(halt, held, move |s| {
            let _ = ran.send(());
            ticket(s, subject)
        })
    }

    #[test]
    fn a_job_that_comes_while_a_group_waits_joins_it_and_a_big_group_does_not_wait() {
        let mut store = Store::open_in_memory().unwrap();
        let commits = count_commits(&mut store);
        // Windows far wider than any scheduling delay, so the test cannot race.
        let grouping = Grouping {
            max: 100,
            time: Duration::from_secs(60),
            wait: Duration::from_secs(20),
            wait_bytes: 1000,
        };
        let (thread, join) = StoreThread::spawn_grouping(store, grouping).unwrap();
        let (ran, has_run) = std::sync::mpsc::channel();
        let stored = |rx: oneshot::Receiver<Result<Option<()>>>| {
            assert!(matches!(rx.blocking_recv(), Ok(Ok(Some(())))));
        };
        // "b" comes after "a" has run and found the queue empty: it joins a's group.
        let a = announced(&thread, 10, "a", &ran);
        has_run.recv().unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let b = announced(&thread, 10, "b", &ran);
        has_run.recv().unwrap();
        // "big" joins too, and then the group holds `wait_bytes`: it commits as soon as the
        // queue is empty, not after another wait.
        let big = announced(&thread, 1000, "big", &ran);
        let asked = std::time::Instant::now();
        stored(a);
        stored(b);
        stored(big);
        assert!(asked.elapsed() < grouping.wait / 2);
        assert_eq!(commits.load(Ordering::SeqCst), 1);
        let asked = std::time::Instant::now();
        stored(announced(&thread, 1000, "late", &ran));
        assert!(asked.elapsed() < grouping.wait / 2);
        assert_eq!(commits.load(Ordering::SeqCst), 2);
        drop(thread);
        assert_eq!(subjects(&join.join().unwrap()), ["a", "b", "big", "late"]);
    }

    #[test]
    fn a_group_without_failures_commits_once() {
        let (results, store) = one_group(vec![
            Box::new(|s| ticket(s, "a")),
            Box::new(|s| ticket(s, "b")),
        ]);
        assert!(
            results.iter().all(|r| matches!(r, Ok(Some(())))),
            "{results:?}"
        );
        assert_eq!(subjects(&store), ["a", "b"]);
    }
}
