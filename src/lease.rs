//! Mailbox leases on a PostgreSQL store: which worker watches which mailbox, with a fencing
//! token raised on every takeover.
//!
//! Each configured mailbox has a row in `mailbox_lease` (owner, token, expiry); each process
//! that holds leases has a row in `worker` (heartbeat). Every time comes from the database
//! server's clock ([`NOW_MS`]), never a worker's, so workers on several machines agree.
//!
//! A `watch` worker [`Leases::tick`]s every lease/4 (2.5 s for the default 10 s lease): it
//! heartbeats, renews the leases it holds (a renewal that finds another owner or token means
//! the lease was LOST), and moves toward its fair share, `ceil(configured / live watch
//! workers)`: above it, it releases half its excess (so a newcomer takes them over within a
//! tick or two); below it, it claims free or expired leases, one atomic
//! `UPDATE … (SELECT … FOR UPDATE SKIP LOCKED)` each. Its first tick only announces the
//! worker, so workers started together see each other before they claim.
//!
//! [`Fences`] is what the store asks, in every message transaction, for the token to check
//! with [`FENCE_SQL`]: a worker that lost a mailbox cannot commit for it. A lease counts as
//! held locally only until the last renewal's send time plus the lease (less a margin) by the
//! worker's own monotonic clock, so a paused or partitioned worker drops its mailboxes by
//! itself, even while its lease thread is stuck on a dead connection ([`spawn`] runs a
//! watchdog beside it).
//!
//! Blocking code on its own thread and its own connection ([`spawn`]), so a renewal never
//! waits behind the store's writes. Cron `sync` uses [`Leases::claim_for_pass`] instead of
//! the fair share. `mailticket workers` reads [`report`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// The database server's clock in Unix milliseconds, as an SQL expression.
macro_rules! now_ms {
    () => {
        "(extract(epoch from clock_timestamp()) * 1000)::bigint"
    };
}

mod report;
mod thread;

pub use report::{MANY_TAKEOVERS, MailboxRow, Report, WorkerRow, problems, report};
pub use thread::{Connect, LeaseThread, PassLeases, claim_pass, spawn};

/// The database server's clock in Unix milliseconds, as an SQL expression.
pub const NOW_MS: &str = now_ms!();

/// The lease tables (PostgreSQL). Times are Unix milliseconds from the server's clock. A
/// `worker` row is a `watch` process (counted for the fair share); a cron pass holds leases
/// under an id of its own without one.
pub const SCHEMA: &str = "
CREATE TABLE worker (
    id TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    pid BIGINT NOT NULL,
    started_at BIGINT NOT NULL,
    seen_at BIGINT NOT NULL,
    stopped_at BIGINT
);
CREATE TABLE mailbox_lease (
    mailbox TEXT PRIMARY KEY,
    owner TEXT,
    token BIGINT NOT NULL DEFAULT 0,
    expires_at BIGINT NOT NULL DEFAULT 0,
    acquired_at BIGINT,
    renewed_at BIGINT,
    last_commit_at BIGINT,
    takeovers BIGINT NOT NULL DEFAULT 0
);
";

/// The fence, run by the store inside every message transaction with `$1` the mailbox, `$2`
/// the worker id and `$3` the token from [`Fences::get`]: when it updates no row, the worker
/// no longer holds the lease and the transaction must not commit. It also takes the lease
/// row's lock, so a takeover waits for (or skips past) a commit in flight.
pub const FENCE_SQL: &str = concat!(
    "UPDATE mailbox_lease SET last_commit_at = ",
    now_ms!(),
    " WHERE mailbox = $1 AND owner = $2 AND token = $3"
);

/// Adds the lease rows of `$1` that are missing. An existing row is looked at in the
/// statement's snapshot first: `ON CONFLICT` alone would wait for a commit in flight that
/// holds the row's lock (a fenced message transaction).
const INSERT_MISSING: &str = "INSERT INTO mailbox_lease (mailbox)
     SELECT m FROM unnest($1::text[]) AS m
     WHERE NOT EXISTS (SELECT 1 FROM mailbox_lease WHERE mailbox = m)
     ON CONFLICT (mailbox) DO NOTHING";

/// What kind of process holds leases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `watch`: takes its fair share and keeps it.
    Watch,
    /// `sync`: claims the mailboxes of one pass, renews them, releases them at its end.
    Sync,
}

/// This process as a lease holder.
#[derive(Debug, Clone)]
pub struct WorkerInfo {
    /// `host:pid:random`, new for every process.
    pub id: String,
    pub host: String,
    pub pid: u32,
    pub role: Role,
}

impl WorkerInfo {
    /// This process, with a fresh id.
    pub fn this_process(role: Role) -> WorkerInfo {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .or_else(|_| std::fs::read_to_string("/etc/hostname"))
            .map(|h| h.trim().to_owned())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".to_owned());
        let pid = std::process::id();
        let id = format!("{host}:{pid}:{:08x}", fastrand::u32(..));
        WorkerInfo {
            id,
            host,
            pid,
            role,
        }
    }
}

/// Whether worker id `owner` (`HOST:PID:RANDOM`) names a process of this machine (`host`)
/// that no longer runs. A pid taken again by another process counts as running: the lease
/// then runs out as usual.
fn dead_here(owner: &str, host: &str) -> bool {
    let mut parts = owner.rsplitn(3, ':');
    let (_random, pid, h) = (parts.next(), parts.next(), parts.next());
    matches!((h, pid), (Some(h), Some(pid)) if h == host && !crate::lock::process_alive(pid))
}

/// A lease held by this process.
#[derive(Debug, Clone, Copy)]
struct Held {
    token: i64,
    /// When it stops counting as held, by this process's monotonic clock.
    deadline: Instant,
}

/// The leases this process holds, shared between the lease thread (which writes them) and
/// the store (which reads the token to fence each commit with).
#[derive(Debug, Clone)]
pub struct Fences {
    worker: Arc<str>,
    held: Arc<Mutex<HashMap<String, Held>>>,
}

impl Fences {
    /// No leases yet, for `worker` (a [`Leases`] makes its own: [`Leases::fences`]).
    pub fn new(worker: &str) -> Fences {
        Fences {
            worker: worker.into(),
            held: Arc::default(),
        }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Held>> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The worker id and token to fence a commit for `mailbox` with; `None` when this
    /// process does not hold its lease (or its local deadline has passed): do not commit.
    pub fn get(&self, mailbox: &str) -> Option<(String, i64)> {
        let held = self.map().get(mailbox).copied()?;
        (held.deadline > Instant::now()).then(|| (self.worker.to_string(), held.token))
    }

    /// The worker id the fences are for.
    pub fn worker(&self) -> &str {
        &self.worker
    }

    /// The mailboxes held, with their tokens, in name order.
    pub fn held(&self) -> Vec<(String, i64)> {
        let mut v: Vec<_> = self
            .map()
            .iter()
            .map(|(m, h)| (m.clone(), h.token))
            .collect();
        v.sort();
        v
    }

    fn insert(&self, mailbox: &str, token: i64, deadline: Instant) {
        self.map()
            .insert(mailbox.to_owned(), Held { token, deadline });
    }

    /// Moves the deadline of `mailbox` when it is still held with `token`.
    fn renew(&self, mailbox: &str, token: i64, deadline: Instant) {
        if let Some(h) = self.map().get_mut(mailbox).filter(|h| h.token == token) {
            h.deadline = deadline;
        }
    }

    /// Forgets `mailbox` when it is held with `token`; whether it was.
    fn remove(&self, mailbox: &str, token: i64) -> bool {
        let mut map = self.map();
        if map.get(mailbox).is_some_and(|h| h.token == token) {
            map.remove(mailbox);
            return true;
        }
        false
    }

    /// Forgets every lease whose local deadline is at or before `now`; returns them with
    /// their tokens.
    fn expire(&self, now: Instant) -> Vec<(String, i64)> {
        let mut map = self.map();
        let gone: Vec<(String, i64)> = map
            .iter()
            .filter(|(_, h)| h.deadline <= now)
            .map(|(m, h)| (m.clone(), h.token))
            .collect();
        for (m, _) in &gone {
            map.remove(m);
        }
        gone
    }

    fn clear(&self) -> Vec<(String, i64)> {
        let held = self.held();
        self.map().clear();
        held
    }

    /// The nearest local deadline.
    fn next_deadline(&self) -> Option<Instant> {
        self.map().values().map(|h| h.deadline).min()
    }
}

/// The store asks every commit that moves a mailbox's cursor for this (see [`FENCE_SQL`]).
impl crate::store::db::Fence for Fences {
    fn holder(&self, mailbox: &str) -> Option<(String, i64)> {
        self.get(mailbox)
    }
}

/// Why a lease stopped being held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LostWhy {
    /// Another worker holds it now (a takeover after expiry).
    TakenBy(String),
    /// Its row no longer names this worker and nobody holds it (released elsewhere, or the
    /// row was reset).
    Gone,
    /// Not renewed in time by this process's clock (the database unreachable, the process
    /// paused).
    Expired,
    /// Given up for the fair share, so that another worker takes it.
    Released,
}

impl std::fmt::Display for LostWhy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LostWhy::TakenBy(w) => write!(f, "taken over by {w}"),
            LostWhy::Gone => f.write_str("no longer ours"),
            LostWhy::Expired => f.write_str("expired before it could be renewed"),
            LostWhy::Released => f.write_str("released for the fair share"),
        }
    }
}

/// What one tick changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// Leases taken, with their tokens.
    pub acquired: Vec<(String, i64)>,
    /// Leases no longer held, with the token they had, and why.
    pub lost: Vec<(String, i64, LostWhy)>,
}

/// One change, as [`spawn`] sends it to the watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Start this mailbox's session.
    Acquired { mailbox: String, token: i64 },
    /// Stop this mailbox's session (the one started for `token`).
    Lost {
        mailbox: String,
        token: i64,
        why: LostWhy,
    },
}

/// What [`Leases::claim_for_pass`] got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The lease is ours for the pass, with this token.
    Held(i64),
    /// A live worker holds it.
    Busy { owner: String, expires_in: Duration },
}

/// A fair share: `configured` mailboxes over `live` workers, rounded up.
pub fn fair_share(configured: usize, live: usize) -> usize {
    configured.div_ceil(live.max(1))
}

/// What a worker holding `held` leases does toward `share`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Hold on to what it has.
    Keep,
    /// Claim up to this many free or expired leases.
    Claim(usize),
    /// Release this many: half the excess, at least one.
    Release(usize),
}

/// The step from `held` toward `share`.
pub fn step(held: usize, share: usize) -> Step {
    match held.cmp(&share) {
        std::cmp::Ordering::Equal => Step::Keep,
        std::cmp::Ordering::Less => Step::Claim(share - held),
        std::cmp::Ordering::Greater => Step::Release((held - share).div_ceil(2)),
    }
}

/// A PostgreSQL error, saying what the leases were doing.
fn db_err(op: &str, pg: postgres::Error) -> Error {
    Error::Postgres {
        op: op.to_owned(),
        pg,
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The leases of this process, on a connection of their own. Blocking.
pub struct Leases {
    client: Option<postgres::Client>,
    worker: WorkerInfo,
    lease: Duration,
    configured: Vec<String>,
    fences: Fences,
    /// The worker row and the lease rows exist (written once per connection).
    registered: bool,
    /// Ticks done (the first only announces the worker).
    ticks: u64,
    changes: Changes,
}

impl Leases {
    /// Leases for `configured` mailboxes, each held for `lease` at a time.
    pub fn new(
        client: postgres::Client,
        worker: WorkerInfo,
        lease: Duration,
        configured: Vec<String>,
    ) -> Leases {
        let fences = Fences::new(&worker.id);
        let mut leases = Leases {
            client: None,
            worker,
            lease: lease.max(Duration::from_secs(1)),
            configured,
            fences,
            registered: false,
            ticks: 0,
            changes: Changes::default(),
        };
        leases.set_client(client);
        leases
    }

    /// The fences the store checks commits with (shared, kept current by this).
    pub fn fences(&self) -> Fences {
        self.fences.clone()
    }

    pub fn worker(&self) -> &WorkerInfo {
        &self.worker
    }

    /// How often to tick: a quarter of the lease.
    pub fn period(&self) -> Duration {
        self.lease / 4
    }

    /// Whether a connection is there to tick on (false after it broke).
    pub fn connected(&self) -> bool {
        self.client.as_ref().is_some_and(|c| !c.is_closed())
    }

    /// Ticks on `client` from now on (after the old connection broke).
    pub fn set_client(&mut self, mut client: postgres::Client) {
        // A statement stuck on a lock must not outlive the lease it renews.
        let timeout = millis(self.lease / 2).max(500);
        if let Err(e) = client.batch_execute(&format!(
            "SET statement_timeout = {timeout}; SET application_name = 'mailticket leases'"
        )) {
            tracing::debug!(error = %e, "lease connection settings");
        }
        self.client = Some(client);
        self.registered = false;
    }

    /// The local deadline of a lease renewed (or taken) by a statement sent at `sent`: the
    /// server's expiry is at least `sent + lease`, so stopping earlier, with a margin for
    /// clock rates, never outlives it.
    fn deadline(&self, sent: Instant) -> Instant {
        sent + self.lease - self.lease / 8
    }

    /// Watches `configured` from the next tick on (a reloaded config): leases of mailboxes
    /// no longer configured are released then.
    pub fn set_configured(&mut self, configured: Vec<String>) {
        self.configured = configured;
        self.registered = false;
    }

    /// Changes recorded so far and not yet returned (after a tick that failed half-way).
    pub fn take_changes(&mut self) -> Changes {
        std::mem::take(&mut self.changes)
    }

    /// Drops the leases whose local deadline has passed (they are recorded as lost).
    pub fn expire_local(&mut self) {
        for (m, token) in self.fences.expire(Instant::now()) {
            self.changes.lost.push((m, token, LostWhy::Expired));
        }
    }

    fn client(&mut self) -> Result<&mut postgres::Client> {
        match self.client.as_mut() {
            Some(c) if !c.is_closed() => Ok(c),
            _ => Err(Error::Network {
                host: "PostgreSQL".into(),
                message: "the lease connection is closed".into(),
            }),
        }
    }

    /// One round: heartbeat, renewals, then one step toward the fair share (a `watch`
    /// worker; a `sync` pass only renews). Returns what changed; on an error, what changed
    /// before it stays for [`Leases::take_changes`].
    pub fn tick(&mut self) -> Result<Changes> {
        self.expire_local();
        let sent = Instant::now();
        self.register()?;
        self.renew(sent)?;
        self.ticks += 1;
        if self.worker.role == Role::Watch && self.ticks > 1 {
            self.release_unconfigured()?;
            let live = self.live_workers()?;
            let share = fair_share(self.configured.len(), live);
            match step(self.fences.held().len(), share) {
                Step::Keep => {}
                Step::Claim(n) => self.claim_some(n)?,
                Step::Release(n) => self.release_some(n)?,
            }
        }
        Ok(self.take_changes())
    }

    /// A `watch` worker's heartbeat; on a new connection also its worker row, and a lease
    /// row per mailbox.
    fn register(&mut self) -> Result<()> {
        let lease = millis(self.lease);
        let (w, registered) = (self.worker.clone(), self.registered);
        let configured = self.configured.clone();
        let c = self.client()?;
        if !registered {
            c.execute(INSERT_MISSING, &[&configured])
                .map_err(|e| db_err("adding the lease rows", e))?;
        }
        if w.role == Role::Sync {
            self.registered = true;
            return Ok(());
        }
        if !registered {
            c.execute(
                concat!(
                    "INSERT INTO worker (id, host, pid, started_at, seen_at) VALUES ($1, $2, $3, ",
                    now_ms!(),
                    ", ",
                    now_ms!(),
                    ") ON CONFLICT (id) DO UPDATE SET stopped_at = NULL"
                ),
                &[&w.id, &w.host, &i64::from(w.pid)],
            )
            .map_err(|e| db_err("registering the worker", e))?;
            // Rows of workers gone for a day are only clutter in `workers`.
            c.execute(
                concat!(
                    "DELETE FROM worker WHERE seen_at < ",
                    now_ms!(),
                    " - 86400000 - $1"
                ),
                &[&lease],
            )
            .map_err(|e| db_err("forgetting old workers", e))?;
        }
        c.execute(
            concat!("UPDATE worker SET seen_at = ", now_ms!(), " WHERE id = $1"),
            &[&w.id],
        )
        .map_err(|e| db_err("heartbeat", e))?;
        self.registered = true;
        Ok(())
    }

    /// Renews every lease held; one that no longer names this worker and token is lost.
    fn renew(&mut self, sent: Instant) -> Result<()> {
        let held = self.fences.held();
        if held.is_empty() {
            return Ok(());
        }
        let (names, tokens): (Vec<String>, Vec<i64>) = held.iter().cloned().unzip();
        let (lease, me) = (millis(self.lease), self.worker.id.clone());
        let c = self.client()?;
        let rows = c
            .query(
                concat!(
                    "UPDATE mailbox_lease l SET expires_at = ",
                    now_ms!(),
                    " + $3, renewed_at = ",
                    now_ms!(),
                    " FROM unnest($1::text[], $2::bigint[]) AS h(mailbox, token)
                     WHERE l.mailbox = h.mailbox AND l.token = h.token AND l.owner = $4
                     RETURNING l.mailbox"
                ),
                &[&names, &tokens, &lease, &me],
            )
            .map_err(|e| db_err("renewing the leases", e))?;
        let renewed: std::collections::HashSet<String> = rows.iter().map(|r| r.get(0)).collect();
        let deadline = self.deadline(sent);
        let (renewed, lost): (Vec<_>, Vec<_>) =
            held.into_iter().partition(|(m, _)| renewed.contains(m));
        for (m, token) in &renewed {
            self.fences.renew(m, *token, deadline);
        }
        self.record_lost(lost)
    }

    /// Forgets leases found taken, asking who holds them now for the log.
    fn record_lost(&mut self, lost: Vec<(String, i64)>) -> Result<()> {
        if lost.is_empty() {
            return Ok(());
        }
        let names: Vec<String> = lost.iter().map(|(m, _)| m.clone()).collect();
        let me = self.worker.id.clone();
        let owners: HashMap<String, Option<String>> = self
            .client()?
            .query(
                "SELECT mailbox, owner FROM mailbox_lease WHERE mailbox = ANY($1)",
                &[&names],
            )
            .map_err(|e| db_err("reading the lost leases", e))?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        for (m, token) in lost {
            if self.fences.remove(&m, token) {
                let why = match owners.get(&m).cloned().flatten() {
                    Some(w) if w != me => LostWhy::TakenBy(w),
                    _ => LostWhy::Gone,
                };
                self.changes.lost.push((m, token, why));
            }
        }
        Ok(())
    }

    /// Live `watch` workers: not stopped, seen within the lease.
    fn live_workers(&mut self) -> Result<usize> {
        let lease = millis(self.lease);
        let n: i64 = self
            .client()?
            .query_one(
                concat!(
                    "SELECT count(*) FROM worker WHERE stopped_at IS NULL AND seen_at > ",
                    now_ms!(),
                    " - $1"
                ),
                &[&lease],
            )
            .map_err(|e| db_err("counting the live workers", e))?
            .get(0);
        Ok(usize::try_from(n).unwrap_or(0))
    }

    /// Claims up to `n` free or expired leases of the configured mailboxes.
    fn claim_some(&mut self, n: usize) -> Result<()> {
        let (lease, me) = (millis(self.lease), self.worker.id.clone());
        let configured = self.configured.clone();
        let mut held: Vec<String> = self.fences.held().into_iter().map(|(m, _)| m).collect();
        for _ in 0..n {
            let sent = Instant::now();
            let row = self
                .client()?
                .query_opt(
                    concat!(
                        "UPDATE mailbox_lease SET owner = $1, token = token + 1, expires_at = ",
                        now_ms!(),
                        " + $2, acquired_at = ",
                        now_ms!(),
                        ", renewed_at = ",
                        now_ms!(),
                        ", takeovers = takeovers + (owner IS NOT NULL AND owner <> $1)::int
                         WHERE mailbox = (SELECT mailbox FROM mailbox_lease
                             WHERE mailbox = ANY($3) AND NOT mailbox = ANY($4)
                               AND (owner IS NULL OR owner = $1 OR expires_at < ",
                        now_ms!(),
                        ") ORDER BY owner IS NOT NULL, expires_at, mailbox
                             LIMIT 1 FOR UPDATE SKIP LOCKED)
                         RETURNING mailbox, token"
                    ),
                    &[&me, &lease, &configured, &held],
                )
                .map_err(|e| db_err("claiming a lease", e))?;
            let Some(row) = row else { break };
            let (m, token): (String, i64) = (row.get(0), row.get(1));
            self.fences.insert(&m, token, self.deadline(sent));
            held.push(m.clone());
            self.changes.acquired.push((m, token));
        }
        Ok(())
    }

    /// Releases `n` leases (the last in name order) for other workers to take.
    fn release_some(&mut self, n: usize) -> Result<()> {
        let mut held = self.fences.held();
        held.drain(..held.len().saturating_sub(n));
        self.release(held)
    }

    /// Releases the leases of mailboxes no longer configured.
    fn release_unconfigured(&mut self) -> Result<()> {
        let mut held = self.fences.held();
        held.retain(|(m, _)| !self.configured.contains(m));
        self.release(held)
    }

    fn release(&mut self, leases: Vec<(String, i64)>) -> Result<()> {
        let me = self.worker.id.clone();
        for (m, token) in leases.into_iter().rev() {
            // Forgotten first: no commit is fenced with it from here on.
            self.fences.remove(&m, token);
            self.changes
                .lost
                .push((m.clone(), token, LostWhy::Released));
            self.client()?
                .execute(
                    "UPDATE mailbox_lease SET owner = NULL, expires_at = 0 WHERE mailbox = $1 AND owner = $2 AND token = $3",
                    &[&m, &me, &token],
                )
                .map_err(|e| db_err("releasing a lease", e))?;
        }
        Ok(())
    }

    /// Takes the lease of `mailbox` for one cron pass, unless a live worker holds it.
    pub fn claim_for_pass(&mut self, mailbox: &str) -> Result<Claim> {
        let sent = Instant::now();
        self.register()?;
        let (lease, me) = (millis(self.lease), self.worker.id.clone());
        let host = self.worker.host.clone();
        let c = self.client()?;
        c.execute(INSERT_MISSING, &[&vec![mailbox.to_owned()]])
            .map_err(|e| db_err("adding a lease row", e))?;
        // `$4`: a holder to take the lease from although it has not run out ('' for none:
        // an owner is NULL or a worker id).
        let claim = concat!(
            "UPDATE mailbox_lease SET owner = $2, token = token + 1, expires_at = ",
            now_ms!(),
            " + $3, acquired_at = ",
            now_ms!(),
            ", renewed_at = ",
            now_ms!(),
            ", takeovers = takeovers + (owner IS NOT NULL AND owner <> $2)::int
             WHERE mailbox = $1 AND (owner IS NULL OR owner = $2 OR owner = $4 OR expires_at < ",
            now_ms!(),
            ") RETURNING token"
        );
        let take = |c: &mut postgres::Client, gone: &str| {
            c.query_opt(claim, &[&mailbox, &me, &lease, &gone])
                .map_err(|e| db_err("claiming a lease", e))
                .map(|row| row.map(|r| r.get::<_, i64>(0)))
        };
        if let Some(token) = take(c, "")? {
            self.fences.insert(mailbox, token, self.deadline(sent));
            return Ok(Claim::Held(token));
        }
        let row = c
            .query_one(
                concat!(
                    "SELECT coalesce(owner, ''), greatest(expires_at - ",
                    now_ms!(),
                    ", 0) FROM mailbox_lease WHERE mailbox = $1"
                ),
                &[&mailbox],
            )
            .map_err(|e| db_err("reading a lease", e))?;
        let (owner, ms): (String, i64) = (row.get(0), row.get(1));
        // A holder of this machine that is gone (a killed cron pass, a crashed worker) commits
        // nothing more: its lease need not run out first.
        if dead_here(&owner, &host)
            && let Some(token) = take(c, &owner)?
        {
            tracing::info!(mailbox, gone = %owner, "took over the lease of a process of this machine that is gone");
            self.fences.insert(mailbox, token, self.deadline(sent));
            return Ok(Claim::Held(token));
        }
        Ok(Claim::Busy {
            owner,
            expires_in: Duration::from_millis(u64::try_from(ms).unwrap_or(0)),
        })
    }

    /// Gives up every lease held and marks the worker stopped (at shutdown, or at the end of
    /// a cron pass). The leases are forgotten locally even when the database cannot be told
    /// (they then expire).
    pub fn release_all(&mut self) -> Result<()> {
        let held = self.fences.clear();
        let (names, tokens): (Vec<String>, Vec<i64>) = held.into_iter().unzip();
        let me = self.worker.id.clone();
        let c = self.client()?;
        c.execute(
            "UPDATE mailbox_lease l SET owner = NULL, expires_at = 0
             FROM unnest($1::text[], $2::bigint[]) AS h(mailbox, token)
             WHERE l.mailbox = h.mailbox AND l.token = h.token AND l.owner = $3",
            &[&names, &tokens, &me],
        )
        .map_err(|e| db_err("releasing the leases", e))?;
        c.execute(
            concat!(
                "UPDATE worker SET stopped_at = ",
                now_ms!(),
                " WHERE id = $1"
            ),
            &[&me],
        )
        .map_err(|e| db_err("marking the worker stopped", e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_gone_process_of_this_machine_is_dead_here() {
        let me = WorkerInfo::this_process(Role::Sync);
        assert!(!dead_here(&me.id, &me.host), "this process runs");
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        let gone = format!("{}:{pid}:0000abcd", me.host);
        assert!(dead_here(&gone, &me.host));
        assert!(
            !dead_here(&gone, "another-machine"),
            "judged by its lease there"
        );
        assert!(!dead_here("", &me.host));
    }

    #[test]
    fn the_fair_share_rounds_up() {
        assert_eq!(fair_share(30, 3), 10);
        assert_eq!(fair_share(31, 3), 11);
        assert_eq!(fair_share(1000, 4), 250);
        assert_eq!(fair_share(2, 3), 1);
        assert_eq!(fair_share(0, 3), 0);
        // no live worker counted yet (the first tick): everything
        assert_eq!(fair_share(7, 0), 7);
    }

    #[test]
    fn a_worker_steps_toward_its_share() {
        assert_eq!(step(10, 10), Step::Keep);
        assert_eq!(step(0, 10), Step::Claim(10));
        assert_eq!(step(7, 10), Step::Claim(3));
        assert_eq!(step(11, 10), Step::Release(1));
        assert_eq!(step(30, 10), Step::Release(10));
        assert_eq!(step(1000, 250), Step::Release(375));
    }

    #[test]
    fn shares_always_cover_every_mailbox_and_release_converges() {
        for configured in 0..60 {
            for live in 1..8 {
                assert!(fair_share(configured, live) * live >= configured);
            }
        }
        // one worker holding 30, two newcomers: halving reaches the share in a few ticks
        let (mut held, share) = (30usize, fair_share(30, 3));
        let mut ticks = 0;
        while let Step::Release(n) = step(held, share) {
            held -= n;
            ticks += 1;
        }
        assert_eq!((held, ticks), (10, 5));
    }

    #[test]
    fn a_fence_lapses_at_its_local_deadline() {
        let f = Fences::new("w");
        let now = Instant::now();
        f.insert("m1", 3, now + Duration::from_secs(60));
        f.insert("m2", 4, now);
        assert_eq!(f.get("m1"), Some(("w".to_owned(), 3)));
        assert_eq!(f.get("m2"), None, "past its deadline");
        assert_eq!(f.expire(Instant::now()), vec![("m2".to_owned(), 4)]);
        assert!(!f.remove("m1", 2), "another token");
        assert!(f.remove("m1", 3));
        assert_eq!(f.get("m1"), None);
    }
}
