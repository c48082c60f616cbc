//! The lease thread: [`Leases`] ticked on a thread of its own with a watchdog beside it, for
//! a `watch` worker ([`spawn`]) and for a cron pass ([`claim_pass`]).

use std::time::{Duration, Instant};

use super::{Change, Changes, Claim, Fences, Leases, LostWhy, Role, WorkerInfo};
use crate::error::{Error, Result};

/// Opens a new connection for the lease thread after the old one broke.
pub type Connect = Box<dyn FnMut() -> Result<postgres::Client> + Send>;

/// The running lease thread and its watchdog. [`LeaseThread::stop`] releases every lease.
pub struct LeaseThread {
    /// Closed to stop; carries a new list of configured mailboxes.
    ctl: std::sync::mpsc::Sender<Vec<String>>,
    ticker: std::thread::JoinHandle<()>,
    watchdog: std::thread::JoinHandle<()>,
}

impl LeaseThread {
    /// Stops ticking, releases the leases (marking the worker stopped) and waits for both
    /// threads.
    pub fn stop(self) {
        drop(self.ctl);
        for t in [self.ticker, self.watchdog] {
            if t.join().is_err() {
                tracing::error!("the lease thread panicked");
            }
        }
    }
}

impl LeaseThread {
    /// Leases `configured` from now on (a reloaded config); leases of mailboxes no longer
    /// in it are released.
    pub fn configure(&self, configured: Vec<String>) {
        let _ = self.ctl.send(configured);
    }
}

/// Runs `leases` on a thread of its own: a tick every lease/4, reconnecting with `connect`
/// (with backoff) when the database cannot be reached, until [`LeaseThread::stop`] or until
/// the receiver is dropped. Every change is logged and sent on the receiver. A watchdog
/// thread beside it drops leases whose local deadline passes, even while a tick hangs on a
/// dead connection.
pub fn spawn(
    leases: Leases,
    connect: Connect,
) -> Result<(LeaseThread, tokio::sync::mpsc::UnboundedReceiver<Change>)> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<Vec<String>>();
    let (dog_stop_tx, dog_stop_rx) = std::sync::mpsc::channel::<()>();
    let fences = leases.fences();
    let dog_tx = tx.clone();
    let watchdog = std::thread::Builder::new()
        .name("lease-watchdog".into())
        .spawn(move || watchdog(&fences, &dog_tx, &dog_stop_rx))
        .map_err(|source| Error::Spawn {
            what: "the lease watchdog",
            source,
        })?;
    let ticker = std::thread::Builder::new()
        .name("leases".into())
        .spawn(move || {
            run(leases, connect, &tx, &stop_rx);
            drop(dog_stop_tx);
        })
        .map_err(|source| Error::Spawn {
            what: "the lease thread",
            source,
        })?;
    Ok((
        LeaseThread {
            ctl: stop_tx,
            ticker,
            watchdog,
        },
        rx,
    ))
}

/// The leases of one cron `sync` pass, renewed on their own thread until
/// [`PassLeases::finish`].
pub struct PassLeases {
    /// The mailboxes a live worker holds: skipped, with the holder and when its lease ends.
    pub busy: Vec<(String, String, Duration)>,
    /// What the pass fences its commits with.
    pub fences: Fences,
    thread: LeaseThread,
    /// Kept so the lease thread goes on: a pass does not act on changes (a lost lease shows
    /// as refused commits).
    _changes: tokio::sync::mpsc::UnboundedReceiver<Change>,
}

impl PassLeases {
    /// Whether the pass holds `mailbox`.
    pub fn holds(&self, mailbox: &str) -> bool {
        self.fences.get(mailbox).is_some()
    }

    /// Releases the leases of the pass.
    pub fn finish(self) {
        self.thread.stop();
    }
}

/// Claims `mailboxes` for a cron pass (skipping those a live worker holds) and renews them
/// on a thread of their own until the pass finishes.
pub fn claim_pass(
    mut connect: Connect,
    lease: Duration,
    mailboxes: &[String],
) -> Result<PassLeases> {
    let worker = WorkerInfo::this_process(Role::Sync);
    let mut leases = Leases::new(connect()?, worker, lease, mailboxes.to_vec());
    let mut busy = Vec::new();
    for m in mailboxes {
        if let Claim::Busy { owner, expires_in } = leases.claim_for_pass(m)? {
            tracing::info!(
                mailbox = %m,
                owner,
                "mailbox {m} skipped: worker {owner} holds its lease (for {:.1} s more)",
                expires_in.as_secs_f64()
            );
            busy.push((m.clone(), owner, expires_in));
        }
    }
    let fences = leases.fences();
    let (thread, changes) = spawn(leases, connect)?;
    Ok(PassLeases {
        busy,
        fences,
        thread,
        _changes: changes,
    })
}

/// Logs a change and passes it on; false when nobody listens any more.
fn announce(change: Change, tx: &tokio::sync::mpsc::UnboundedSender<Change>) -> bool {
    match &change {
        Change::Acquired { mailbox, token } => {
            tracing::info!(mailbox, token, "acquired the lease of mailbox {mailbox}");
        }
        Change::Lost {
            mailbox,
            why: LostWhy::Released,
            ..
        } => tracing::info!(
            mailbox,
            "released the lease of mailbox {mailbox} for the fair share: stopping its session"
        ),
        Change::Lost { mailbox, why, .. } => tracing::warn!(
            mailbox,
            "lost the lease of mailbox {mailbox} ({why}): stopping its session"
        ),
    }
    tx.send(change).is_ok()
}

fn announce_all(changes: Changes, tx: &tokio::sync::mpsc::UnboundedSender<Change>) -> bool {
    let lost = changes
        .lost
        .into_iter()
        .map(|(mailbox, token, why)| Change::Lost {
            mailbox,
            token,
            why,
        });
    let acquired = changes
        .acquired
        .into_iter()
        .map(|(mailbox, token)| Change::Acquired { mailbox, token });
    lost.chain(acquired).all(|c| announce(c, tx))
}

/// The lease thread's loop.
fn run(
    mut leases: Leases,
    mut connect: Connect,
    tx: &tokio::sync::mpsc::UnboundedSender<Change>,
    ctl: &std::sync::mpsc::Receiver<Vec<String>>,
) {
    let period = leases.period();
    let seed = u64::from(std::process::id()) ^ fastrand::u64(..);
    let mut backoff = crate::backoff::Backoff::new(period / 4, period, seed);
    let mut failing = false;
    loop {
        let result = if leases.connected() {
            leases.tick()
        } else {
            connect().and_then(|c| {
                leases.set_client(c);
                leases.tick()
            })
        };
        let wait = match result {
            Ok(changes) => {
                if failing {
                    tracing::info!("the lease database answers again");
                }
                failing = false;
                backoff.reset();
                if !announce_all(changes, tx) {
                    break;
                }
                period
            }
            Err(e) => {
                leases.expire_local();
                if !announce_all(leases.take_changes(), tx) {
                    break;
                }
                let d = backoff.next_delay().max(period / 8);
                tracing::warn!(error = %e, retry_in_ms = d.as_millis() as u64, "cannot renew the leases; retrying");
                failing = true;
                d
            }
        };
        match ctl.recv_timeout(wait) {
            Ok(configured) => leases.set_configured(configured),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    match leases.release_all() {
        Ok(()) => tracing::info!("released every lease"),
        Err(e) => tracing::warn!(error = %e, "could not release the leases; they expire"),
    }
}

/// Drops every lease whose local deadline passes, until `stop` closes.
fn watchdog(
    fences: &Fences,
    tx: &tokio::sync::mpsc::UnboundedSender<Change>,
    stop: &std::sync::mpsc::Receiver<()>,
) {
    let most = Duration::from_millis(500);
    loop {
        for (mailbox, token) in fences.expire(Instant::now()) {
            let why = LostWhy::Expired;
            if !announce(
                Change::Lost {
                    mailbox,
                    token,
                    why,
                },
                tx,
            ) {
                return;
            }
        }
        let wait = fences.next_deadline().map_or(most, |d| {
            d.saturating_duration_since(Instant::now()).min(most)
        });
        if !matches!(
            stop.recv_timeout(wait.max(Duration::from_millis(10))),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout)
        ) {
            return;
        }
    }
}
