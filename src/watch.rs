//! `mailticket watch`: every mailbox watched at once, for weeks, until told to stop.
//!
//! One task per mailbox, all on one runtime and one store thread. Each task connects,
//! catches up above its cursor with the same code as `sync` ([`crate::sync::catch_up`]), then
//! waits: IMAP IDLE when the server has it (re-issued every `idle-interval`), else a poll every
//! `poll-interval` (late ticks are skipped, not made up). Every wake-up fetches above the
//! cursor only. A session that ends in an error is dropped and rebuilt after a backoff
//! ([`crate::backoff`]); a refused login waits the full cap every time. One mailbox's failure
//! never touches another's task.
//!
//! Shutdown is an argument: a [`CancellationToken`]. When it is cancelled, an IDLE ends
//! with DONE, a catch-up fetches no new batch but stores and finishes what is in flight,
//! sessions LOG OUT, and [`run`] returns once all tasks are done or `shutdown-timeout` has
//! passed. Signals are the binary's business (`cli/watch.rs`), not this module's.
//!
//! On a store shared by several workers ([`Leased`]), a mailbox's task runs only while this
//! worker holds its lease: it starts when the lease thread ([`crate::lease`]) reports the
//! lease acquired and is cancelled, like a stop, when it reports it lost or released.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::backoff::Backoff;
use crate::classify::Identity;
use crate::config::{Config, MailboxConfig, Transport, WatchConfig};
use crate::error::{Error, Result};
use crate::imap::{self, Imap, Wake};
use crate::lease::Change;
use crate::oauth2::Credentials;
use crate::pipeline::{PrepPool, Rules};
use crate::store::StoreThread;
use crate::summary::SourceSummary;
use crate::sync::{Pass, SyncOptions, catch_up};

/// How a watch ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stopped {
    /// Every task finished within the shutdown deadline.
    pub clean: bool,
}

/// What every mailbox task shares.
struct Shared {
    store: StoreThread,
    /// Acknowledgements, when enabled.
    opts: SyncOptions,
    /// Wakes the outbox task after a pass that created tickets.
    outbox_due: tokio::sync::Notify,
    /// Wakes the hook task after a pass that stored messages, and after the outbox sent.
    hooks_due: tokio::sync::Notify,
    me: Arc<Identity>,
    pool: PrepPool,
    timing: WatchConfig,
    connected: AtomicUsize,
}

/// The leases of a worker sharing a PostgreSQL store with others: a mailbox is watched only
/// while this worker holds its lease ([`crate::lease`]).
pub struct Leased<'a> {
    /// The leases held now (sessions start for these at once).
    pub fences: crate::lease::Fences,
    /// What the lease thread acquires and loses from now on.
    pub changes: &'a mut tokio::sync::mpsc::UnboundedReceiver<crate::lease::Change>,
}

/// Watches `mailboxes` until `stop` is cancelled, then drains the tasks with the
/// configured deadline. Returns only after `stop` is cancelled. With `leased`, only the
/// mailboxes whose lease this worker holds, each from when it is acquired until it is lost.
pub async fn run(
    config: &Config,
    mailboxes: Vec<(MailboxConfig, Credentials)>,
    store: &StoreThread,
    outbound: Option<(
        Arc<crate::outbound::senders::Senders>,
        Option<Arc<crate::outbound::AckPlan>>,
    )>,
    hooks: Vec<Arc<crate::hooks::deliver::Hook>>,
    stop: CancellationToken,
    leased: Option<Leased<'_>>,
) -> Result<Stopped> {
    let (smtp, ack) = match outbound {
        Some((smtp, ack)) => (Some(smtp), ack),
        None => (None, None),
    };
    let shared = Arc::new(Shared::new(config, store, ack)?);
    let total = mailboxes.len();
    let tracker = TaskTracker::new();
    let mailboxes = match leased {
        Some(_) => mailboxes,
        None => {
            for (i, (mb, creds)) in mailboxes.into_iter().enumerate() {
                spawn_mailbox(&tracker, &shared, &stop, i, mb, creds);
            }
            Vec::new()
        }
    };
    if let Some(smtp) = smtp {
        let (shared, stop) = (shared.clone(), stop.clone());
        tracker.spawn(
            async move { drain_outbox(&shared, &smtp, &stop).await }
                .instrument(tracing::info_span!("outbox")),
        );
    }
    if !hooks.is_empty() {
        let (shared, stop) = (shared.clone(), stop.clone());
        tracker.spawn(
            async move { deliver_hooks(&shared, &hooks, &stop).await }
                .instrument(tracing::info_span!("hooks")),
        );
    }
    tracker.close();
    tracing::info!(
        mailboxes = total,
        idle = shared.timing.idle,
        "watching; stop with SIGINT or SIGTERM"
    );
    match leased {
        Some(leased) => {
            let sessions = Sessions {
                tracker: &tracker,
                shared: &shared,
                stop: &stop,
                mailboxes,
                running: HashMap::new(),
            };
            sessions.follow(leased).await;
        }
        None => heartbeat_until(&stop, &shared, total).await,
    }
    let clean = wind_down(&tracker, shared.timing.shutdown_timeout()).await;
    Ok(Stopped { clean })
}

impl Shared {
    /// A catch-up pass on the shared store, workers and options, stopping with `stop`.
    fn pass<'a>(&'a self, stop: &'a CancellationToken) -> Pass<'a> {
        Pass {
            store: &self.store,
            me: &self.me,
            pool: Some(&self.pool),
            opts: self.opts.clone(),
            stop: Some(stop),
            creds: None,
        }
    }

    /// Wakes the outbox after a pass that created tickets, the hooks after one that stored
    /// messages.
    fn wake_after(&self, pass: &SourceSummary) {
        if pass.counts.created > 0 {
            self.outbox_due.notify_one();
        }
        if pass.counts.created + pass.counts.threaded > 0 {
            self.hooks_due.notify_one();
        }
    }

    fn new(
        config: &Config,
        store: &StoreThread,
        ack: Option<Arc<crate::outbound::AckPlan>>,
    ) -> Result<Shared> {
        Ok(Shared {
            store: store.clone(),
            opts: SyncOptions {
                dry_run: false,
                ack,
                rules: Arc::new(Rules::from_config(config)),
                log_each: true,
                progress: None,
            },
            outbox_due: tokio::sync::Notify::new(),
            hooks_due: tokio::sync::Notify::new(),
            me: Arc::new(Identity {
                addresses: config.own_addresses(),
            }),
            pool: PrepPool::spawn()?,
            timing: config.watch,
            connected: AtomicUsize::new(0),
        })
    }
}

/// Starts the task that keeps mailbox `mb` (the `i`th) watched, session after session,
/// until `stop`.
fn spawn_mailbox(
    tracker: &TaskTracker,
    shared: &Arc<Shared>,
    stop: &CancellationToken,
    i: usize,
    mb: MailboxConfig,
    creds: Credentials,
) {
    let span = tracing::info_span!("mailbox", mailbox = %mb.name);
    let (shared, stop) = (shared.clone(), stop.clone());
    let seed = (i as u64) ^ u64::from(std::process::id()) << 20 ^ crate::time::now() as u64;
    tracker.spawn(
        async move {
            let backoff = Backoff::new(
                shared.timing.backoff_min(),
                shared.timing.backoff_max(),
                seed,
            );
            supervise(backoff, &stop, || session(&mb, &creds, &shared, &stop)).await;
        }
        .instrument(span),
    );
}

/// The mailbox sessions of a worker that holds leases: one runs while its lease is held.
struct Sessions<'a> {
    tracker: &'a TaskTracker,
    shared: &'a Arc<Shared>,
    stop: &'a CancellationToken,
    /// Every configured mailbox, held or not.
    mailboxes: Vec<(MailboxConfig, Credentials)>,
    /// The sessions running: the token of the lease each was started for, and its stop.
    running: HashMap<String, (i64, CancellationToken)>,
}

impl Sessions<'_> {
    /// Starts the sessions of the leases held, then follows the lease changes (logging a
    /// heartbeat) until `stop`.
    async fn follow(mut self, leased: Leased<'_>) {
        for (mailbox, token) in leased.fences.held() {
            self.acquired(&mailbox, token);
        }
        let heartbeat = self.shared.timing.heartbeat();
        loop {
            tokio::select! {
                () = self.stop.cancelled() => break,
                change = leased.changes.recv() => match change {
                    Some(Change::Acquired { mailbox, token }) => self.acquired(&mailbox, token),
                    Some(Change::Lost { mailbox, token, .. }) => self.lost(&mailbox, token),
                    None => {
                        tracing::error!("the lease thread stopped: stopping every session");
                        for (_, (_, s)) in self.running.drain() {
                            s.cancel();
                        }
                        self.stop.cancelled().await;
                        break;
                    }
                },
                () = tokio::time::sleep(heartbeat) => tracing::debug!(
                    connected = self.shared.connected.load(Ordering::Relaxed),
                    held = self.running.len(),
                    mailboxes = self.mailboxes.len(),
                    "heartbeat"
                ),
            }
        }
    }

    /// Starts the session of `mailbox` for the lease `token` (after stopping one started
    /// for an older lease).
    fn acquired(&mut self, mailbox: &str, token: i64) {
        if self.running.get(mailbox).is_some_and(|(t, _)| *t == token) {
            return;
        }
        let Some(i) = self.mailboxes.iter().position(|(mb, _)| mb.name == mailbox) else {
            return;
        };
        if let Some((_, old)) = self.running.remove(mailbox) {
            old.cancel();
        }
        let session = self.stop.child_token();
        let (mb, creds) = self.mailboxes[i].clone();
        spawn_mailbox(self.tracker, self.shared, &session, i, mb, creds);
        self.running.insert(mailbox.to_owned(), (token, session));
    }

    /// Stops the session of `mailbox` when it runs for the lease `token`.
    fn lost(&mut self, mailbox: &str, token: i64) {
        if self.running.get(mailbox).is_some_and(|(t, _)| *t == token)
            && let Some((_, session)) = self.running.remove(mailbox)
        {
            session.cancel();
        }
    }
}

/// Logs a heartbeat (how many mailboxes are connected) every `heartbeat` until `stop`.
async fn heartbeat_until(stop: &CancellationToken, shared: &Shared, total: usize) {
    let heartbeat = shared.timing.heartbeat();
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(heartbeat) => tracing::debug!(
                connected = shared.connected.load(Ordering::Relaxed),
                mailboxes = total,
                "heartbeat"
            ),
        }
    }
}

/// Waits for every task to end, at most `deadline`; true when they all did.
async fn wind_down(tracker: &TaskTracker, deadline: std::time::Duration) -> bool {
    tracing::info!(deadline_s = deadline.as_secs(), "stopping");
    let clean = tokio::time::timeout(deadline, tracker.wait()).await.is_ok();
    if clean {
        tracing::info!("stopped");
    } else {
        tracing::warn!(
            deadline_s = deadline.as_secs(),
            "shutdown deadline passed; abandoning the sessions still open (stored messages are safe)"
        );
    }
    clean
}

/// How often the outbox is looked at when nothing wakes it (deferred rows come due).
const OUTBOX_TICK: std::time::Duration = std::time::Duration::from_secs(30);

/// Sends the outbox whenever a pass created tickets, and every [`OUTBOX_TICK`] for rows
/// whose retry came due. A send in progress finishes before a stop is honoured.
async fn drain_outbox(
    shared: &Shared,
    smtp: &crate::outbound::senders::Senders,
    stop: &CancellationToken,
) {
    loop {
        let report = crate::outbound::drain(&shared.store, smtp).await;
        if report.sent + report.failed + report.deferred + report.uncertain > 0 {
            tracing::info!(
                sent = report.sent,
                failed = report.failed,
                deferred = report.deferred,
                uncertain = report.uncertain,
                "outbox"
            );
            shared.hooks_due.notify_one();
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = shared.outbox_due.notified() => {}
            () = tokio::time::sleep(OUTBOX_TICK) => {}
        }
    }
}

/// How often the hooks are looked at when nothing wakes them (retries come due).
const HOOKS_TICK: std::time::Duration = std::time::Duration::from_secs(1);

/// Delivers hook events whenever a pass stored messages, and every [`HOOKS_TICK`] for
/// retries that came due, until `stop`.
async fn deliver_hooks(
    shared: &Shared,
    hooks: &[Arc<crate::hooks::deliver::Hook>],
    stop: &CancellationToken,
) {
    loop {
        // A stop does not wait for a slow receiver: a row left in 'sending' is sent again,
        // with the same event id, by the next run.
        let r = tokio::select! {
            r = crate::hooks::deliver::deliver(&shared.store, hooks, None) => r,
            () = stop.cancelled() => return,
        };
        if r.delivered + r.deferred + r.failed > 0 {
            tracing::debug!(
                delivered = r.delivered,
                deferred = r.deferred,
                failed = r.failed,
                "hooks"
            );
        }
        for e in &r.errors {
            tracing::debug!(error = %e, "hooks");
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = shared.hooks_due.notified() => {}
            () = tokio::time::sleep(HOOKS_TICK) => {}
        }
    }
}

/// How one session ended.
#[derive(Debug)]
pub struct Ended {
    /// The session completed at least one catch-up pass (resets the backoff).
    pub caught_up: bool,
    /// Why it ended; `None` when it was asked to stop.
    pub error: Option<Error>,
}

/// Runs sessions one after another until one ends without an error (it was told to stop),
/// waiting between them as `backoff` says. Returns when `stop` is cancelled.
pub async fn supervise<F, Fut>(mut backoff: Backoff, stop: &CancellationToken, mut session: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Ended>,
{
    while !stop.is_cancelled() {
        let ended = session().await;
        if ended.caught_up {
            backoff.reset();
        }
        let Some(error) = ended.error else { break };
        if stop.is_cancelled() {
            break;
        }
        // A refusal waits the cap every time, so a wrong credential cannot lock the account.
        let refused = match &error {
            Error::Auth { .. } => Some(
                "LOGIN REFUSED: fix the credentials (or, for Graph, the permission the error names); retrying only at the backoff cap so the account is not locked",
            ),
            Error::OAuth2 { relogin: true, .. } => Some(
                "OAUTH2 SIGN-IN NEEDED: this mailbox is stopped until a new refresh token is stored (the others go on)",
            ),
            Error::OAuth2 { .. } => Some(
                "OAUTH2 TOKEN REFUSED: fix the oauth2 settings; retrying only at the backoff cap",
            ),
            _ => None,
        };
        let delay = match refused {
            Some(what) => {
                let d = backoff.at_cap();
                tracing::error!(error = %error, retry_in_ms = d.as_millis() as u64, "{what}");
                d
            }
            // The lease thread stops this session when the lease is gone for good; until it
            // does (or renews a lease whose local deadline had passed), wait and try again.
            None if matches!(error, Error::LeaseLost { .. }) => {
                let d = backoff.next_delay();
                tracing::info!(error = %error, retry_in_ms = d.as_millis() as u64, "lease not held: nothing committed, waiting for the lease thread");
                d
            }
            None => {
                let d = backoff.next_delay();
                tracing::warn!(error = %error, retry_in_ms = d.as_millis() as u64, "disconnected; reconnecting");
                d
            }
        };
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = stop.cancelled() => break,
        }
    }
}

/// One connection's life: connect, catch up, then wait and catch up again until an error
/// or `stop`.
async fn session(
    mb: &MailboxConfig,
    creds: &Credentials,
    shared: &Shared,
    stop: &CancellationToken,
) -> Ended {
    if mb.transport == Transport::Graph {
        return graph_session(mb, creds, shared, stop).await;
    }
    let mut ended = Ended {
        caught_up: false,
        error: None,
    };
    let connected = tokio::select! {
        r = imap::connect(mb, creds) => r,
        () = stop.cancelled() => return ended,
    };
    let imap = match connected {
        Ok(imap) => imap,
        Err(e) => {
            crate::hooks::health::failed(&shared.store, &mb.name, &e).await;
            ended.error = Some(e);
            return ended;
        }
    };
    shared.connected.fetch_add(1, Ordering::Relaxed);
    let r = watch_session(imap, mb, shared, stop, &mut ended.caught_up).await;
    shared.connected.fetch_sub(1, Ordering::Relaxed);
    ended.error = r.err();
    // A lost lease is not the mailbox failing: another worker has it now.
    if let Some(e) = ended
        .error
        .as_ref()
        .filter(|e| !matches!(e, Error::LeaseLost { .. }))
    {
        crate::hooks::health::failed(&shared.store, &mb.name, e).await;
    }
    ended
}

/// A Graph mailbox's life: the delta query every `poll-interval` (Graph has no IDLE; change
/// notifications would need a public HTTPS endpoint), until an error or `stop`.
async fn graph_session(
    mb: &MailboxConfig,
    creds: &Credentials,
    shared: &Shared,
    stop: &CancellationToken,
) -> Ended {
    let mut caught_up = false;
    let pass = shared.pass(stop);
    let poll = std::time::Duration::from_secs(mb.poll_interval.max(1));
    shared.connected.fetch_add(1, Ordering::Relaxed);
    let result = async {
        let g = crate::graph::sync::client(mb, creds)?;
        tracing::info!(
            poll_s = poll.as_secs(),
            host = g.host(),
            "polling the Graph delta query"
        );
        loop {
            let mut s = SourceSummary {
                name: mb.name.clone(),
                folder: Some(mb.folder.clone()),
                counts: Default::default(),
            };
            crate::graph::sync::catch_up(&g, mb, &pass, &mut s).await?;
            if !caught_up {
                crate::hooks::health::worked(&shared.store, &mb.name).await;
            }
            caught_up = true;
            shared.wake_after(&s);
            tokio::select! {
                () = tokio::time::sleep(poll) => {}
                () = stop.cancelled() => return Ok(()),
            }
        }
    }
    .await;
    shared.connected.fetch_sub(1, Ordering::Relaxed);
    let error = result.err();
    if let Some(e) = &error {
        crate::hooks::health::failed(&shared.store, &mb.name, e).await;
    }
    Ended { caught_up, error }
}

async fn watch_session(
    mut imap: Imap,
    mb: &MailboxConfig,
    shared: &Shared,
    stop: &CancellationToken,
    caught_up: &mut bool,
) -> Result<()> {
    let timing = &shared.timing;
    let idle = timing.idle && imap.has_capability("IDLE");
    if !idle {
        tracing::info!(
            poll_s = timing.poll_interval().as_secs(),
            "polling (IDLE {})",
            if timing.idle {
                "not offered by the server"
            } else {
                "switched off"
            }
        );
    }
    let mut ticker = tokio::time::interval_at(
        tokio::time::Instant::now() + timing.poll_interval(),
        timing.poll_interval(),
    );
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let pass = shared.pass(stop);
    let result = loop {
        imap.take_changes();
        let mut s = SourceSummary {
            name: mb.name.clone(),
            folder: Some(mb.folder.clone()),
            counts: Default::default(),
        };
        if let Err(e) = catch_up(&mut imap, mb, &pass, &mut s).await {
            break Err(e);
        }
        if !*caught_up {
            crate::hooks::health::worked(&shared.store, &mb.name).await;
        }
        *caught_up = true;
        shared.wake_after(&s);
        if s.counts.fetched > 0 {
            // each message's decision is logged on its own at info
            tracing::debug!(fetched = s.counts.fetched, "caught up");
        }
        if stop.is_cancelled() {
            break Ok(());
        }
        if imap.take_changes() {
            continue; // mail arrived during the pass
        }
        if idle {
            let (back, wake) = imap.idle(timing.idle_interval(), stop).await?;
            imap = back;
            match wake {
                Wake::Stopped => break Ok(()),
                Wake::Renew => tracing::debug!("IDLE renewed"),
                Wake::Changed => tracing::debug!("new mail"),
            }
        } else {
            tokio::select! {
                _ = ticker.tick() => {}
                () = stop.cancelled() => break Ok(()),
            }
        }
    };
    imap.logout().await;
    tracing::info!(
        error = result.as_ref().err().map(tracing::field::display),
        "disconnected"
    );
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::time::Duration;
    use tokio::time::Instant;

    fn net() -> Error {
        Error::Network {
            host: "h".into(),
            message: "down".into(),
        }
    }

    fn auth() -> Error {
        Error::Auth {
            host: "h".into(),
            user: "u".into(),
            message: "no".into(),
        }
    }

    /// Runs `supervise` over scripted session outcomes and returns when each session started
    /// (seconds after the start, on the paused clock).
    async fn schedule(script: Vec<Ended>, cap: u64) -> Vec<f64> {
        let start = Instant::now();
        let stop = CancellationToken::new();
        let script = Mutex::new(script.into_iter());
        let starts = Mutex::new(Vec::new());
        let backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(cap), 42);
        supervise(backoff, &stop, || {
            starts.lock().unwrap().push(start.elapsed().as_secs_f64());
            let next = script.lock().unwrap().next();
            let stop = stop.clone();
            async move {
                match next {
                    Some(e) => e,
                    None => {
                        stop.cancel();
                        Ended {
                            caught_up: false,
                            error: None,
                        }
                    }
                }
            }
        })
        .await;
        starts.into_inner().unwrap()
    }

    fn fail(e: Error, caught_up: bool) -> Ended {
        Ended {
            caught_up,
            error: Some(e),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn reconnects_back_off_exponentially_and_reset_after_work() {
        let script = (0..9).map(|_| fail(net(), false)).collect();
        let starts = schedule(script, 300).await;
        let gaps: Vec<f64> = starts.windows(2).map(|w| w[1] - w[0]).collect();
        for (i, g) in gaps.iter().enumerate() {
            let ceiling = f64::from(1u32 << i).min(300.0);
            assert!(*g <= ceiling + 0.001, "gap {i} = {g} > {ceiling}: {gaps:?}");
        }
        // full jitter, but over 9 doublings the total must grow well past the first steps
        assert!(starts.last().unwrap() > &10.0, "{starts:?}");

        // a session that caught up resets the schedule: the next wait is at most 1 s again
        let mut script: Vec<Ended> = (0..8).map(|_| fail(net(), false)).collect();
        script.push(fail(net(), true));
        let starts = schedule(script, 300).await;
        let last_gap = starts[9] - starts[8];
        assert!(last_gap <= 1.001, "{starts:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn refused_login_waits_the_cap_every_time() {
        let script = (0..3).map(|_| fail(auth(), false)).collect();
        let starts = schedule(script, 300).await;
        let gaps: Vec<f64> = starts.windows(2).map(|w| w[1] - w[0]).collect();
        assert_eq!(gaps.len(), 3);
        for g in gaps {
            assert!((150.0..=300.001).contains(&g), "{g}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn stop_interrupts_a_backoff_wait() {
        let stop = CancellationToken::new();
        let backoff = Backoff::new(Duration::from_secs(300), Duration::from_secs(300), 1);
        let t0 = Instant::now();
        let canceller = {
            let stop = stop.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(5)).await;
                stop.cancel();
            })
        };
        supervise(backoff, &stop, || async { fail(auth(), false) }).await;
        canceller.await.unwrap();
        assert_eq!(t0.elapsed().as_secs(), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn poll_ticks_that_run_late_are_skipped() {
        let period = Duration::from_secs(60);
        let t0 = Instant::now();
        let mut ticker = tokio::time::interval_at(t0 + period, period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        ticker.tick().await;
        assert_eq!(t0.elapsed().as_secs(), 60);
        // a pass that took 150 s: the ticks at 120 and 180 are not made up in a burst
        tokio::time::sleep(Duration::from_secs(150)).await;
        ticker.tick().await;
        assert_eq!(t0.elapsed().as_secs(), 210);
        ticker.tick().await;
        assert_eq!(t0.elapsed().as_secs(), 240);
    }
}
