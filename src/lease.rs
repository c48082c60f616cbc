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

use serde::Serialize;

use crate::error::{Error, Result};

/// The database server's clock in Unix milliseconds, as an SQL expression.
macro_rules! now_ms {
    () => {
        "(extract(epoch from clock_timestamp()) * 1000)::bigint"
    };
}

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
        let c = self.client()?;
        c.execute(INSERT_MISSING, &[&vec![mailbox.to_owned()]])
            .map_err(|e| db_err("adding a lease row", e))?;
        let row = c
            .query_opt(
                concat!(
                    "UPDATE mailbox_lease SET owner = $2, token = token + 1, expires_at = ",
                    now_ms!(),
                    " + $3, acquired_at = ",
                    now_ms!(),
                    ", renewed_at = ",
                    now_ms!(),
                    ", takeovers = takeovers + (owner IS NOT NULL AND owner <> $2)::int
                     WHERE mailbox = $1 AND (owner IS NULL OR owner = $2 OR expires_at < ",
                    now_ms!(),
                    ") RETURNING token"
                ),
                &[&mailbox, &me, &lease],
            )
            .map_err(|e| db_err("claiming a lease", e))?;
        if let Some(row) = row {
            let token: i64 = row.get(0);
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
        let ms: i64 = row.get(1);
        Ok(Claim::Busy {
            owner: row.get(0),
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

/// A worker in `mailticket workers`.
#[derive(Debug, Clone, Serialize)]
pub struct WorkerRow {
    pub id: String,
    pub host: String,
    pub pid: i64,
    /// RFC 3339, UTC.
    pub started_at: String,
    /// Milliseconds since its last heartbeat, by the database's clock.
    pub seen_ms_ago: i64,
    /// The mailboxes whose unexpired lease it holds.
    pub mailboxes: Vec<String>,
}

/// A mailbox lease in `mailticket workers`.
#[derive(Debug, Clone, Serialize)]
pub struct MailboxRow {
    pub mailbox: String,
    /// The worker named by the lease (it may have expired).
    pub owner: Option<String>,
    /// The fencing token: raised on every claim.
    pub token: i64,
    /// Milliseconds until the lease expires (negative: expired that long ago); `None` when
    /// nobody holds it.
    pub expires_in_ms: Option<i64>,
    /// The last message commit under a lease, RFC 3339 UTC.
    pub last_commit_at: Option<String>,
    /// How often a worker took it over from another whose lease had expired.
    pub takeovers: i64,
}

/// Live `watch` workers and every mailbox lease, as `mailticket workers` shows them (a
/// cron pass holds its leases without a worker row).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub workers: Vec<WorkerRow>,
    pub mailboxes: Vec<MailboxRow>,
}

fn rfc3339_ms(ms: i64) -> String {
    crate::time::rfc3339(ms.div_euclid(1000))
}

/// Reads the live workers (not stopped, seen within `lease`) and every lease row.
pub fn report(client: &mut postgres::Client, lease: Duration) -> Result<Report> {
    let rows = client
        .query(
            concat!(
                "SELECT id, host, pid, started_at, ",
                now_ms!(),
                " - seen_at FROM worker WHERE stopped_at IS NULL AND seen_at > ",
                now_ms!(),
                " - $1 ORDER BY host, pid, id"
            ),
            &[&millis(lease)],
        )
        .map_err(|e| db_err("reading the workers", e))?;
    let mut workers: Vec<WorkerRow> = rows
        .iter()
        .map(|r| WorkerRow {
            id: r.get(0),
            host: r.get(1),
            pid: r.get(2),
            started_at: rfc3339_ms(r.get(3)),
            seen_ms_ago: r.get(4),
            mailboxes: Vec::new(),
        })
        .collect();
    let rows = client
        .query(
            concat!(
                "SELECT mailbox, owner, token, CASE WHEN owner IS NULL THEN NULL ELSE expires_at - ",
                now_ms!(),
                " END, last_commit_at, takeovers FROM mailbox_lease ORDER BY mailbox"
            ),
            &[],
        )
        .map_err(|e| db_err("reading the leases", e))?;
    let mailboxes: Vec<MailboxRow> = rows
        .iter()
        .map(|r| MailboxRow {
            mailbox: r.get(0),
            owner: r.get(1),
            token: r.get(2),
            expires_in_ms: r.get(3),
            last_commit_at: r.get::<_, Option<i64>>(4).map(rfc3339_ms),
            takeovers: r.get(5),
        })
        .collect();
    for m in &mailboxes {
        let live = m.expires_in_ms.is_some_and(|ms| ms > 0);
        if let (true, Some(owner)) = (live, &m.owner)
            && let Some(w) = workers.iter_mut().find(|w| &w.id == owner)
        {
            w.mailboxes.push(m.mailbox.clone());
        }
    }
    Ok(Report { workers, mailboxes })
}

/// Takeovers from which on `doctor` warns that a mailbox's leases keep expiring.
pub const MANY_TAKEOVERS: i64 = 5;

/// What `doctor` says about the leases: each configured mailbox that no live lease covers
/// while `watch` workers are live, and each mailbox taken over [`MANY_TAKEOVERS`] times or
/// more. Empty when all is well.
pub fn problems(report: &Report, configured: &[String]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let watching = !report.workers.is_empty();
    for name in configured {
        let row = report.mailboxes.iter().find(|m| &m.mailbox == name);
        let held = row.is_some_and(|m| m.expires_in_ms.is_some_and(|ms| ms > 0));
        if watching && !held {
            out.push((
                name.clone(),
                "no live worker holds its lease although workers are running".to_owned(),
            ));
        }
        if let Some(m) = row.filter(|m| m.takeovers >= MANY_TAKEOVERS) {
            out.push((
                name.clone(),
                format!(
                    "taken over {} times: its workers die, pause or lose the database longer than the lease",
                    m.takeovers
                ),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

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
