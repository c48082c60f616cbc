//! The per-run counts that `sync`, `import` and `ingest` report, at `info` and as JSON.

use serde::Serialize;

use crate::store::Outcome;

/// What one source (a mailbox folder, a file) gave.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Counts {
    /// Messages read from the source.
    pub fetched: u64,
    /// New tickets.
    pub created: u64,
    /// Messages added to existing tickets.
    pub threaded: u64,
    /// Messages stored before.
    pub duplicates: u64,
    /// Messages that could not be parsed, kept in the quarantine.
    pub quarantined: u64,
    /// Acknowledgements queued.
    pub acks_queued: u64,
    /// Failures, one line each.
    pub errors: Vec<String>,
}

impl Counts {
    /// Counts one outcome.
    pub fn record(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Created(_) => self.created += 1,
            Outcome::Threaded(_) => self.threaded += 1,
            Outcome::Duplicate(_) => self.duplicates += 1,
            Outcome::Quarantined(_) => self.quarantined += 1,
        }
    }

    /// Logs the counts at `info` with `message`.
    pub fn log(&self, message: &str) {
        tracing::info!(
            fetched = self.fetched,
            created = self.created,
            threaded = self.threaded,
            duplicates = self.duplicates,
            quarantined = self.quarantined,
            acks_queued = self.acks_queued,
            errors = self.errors.len(),
            "{message}"
        );
    }

    fn add(&mut self, o: &Counts) {
        self.fetched += o.fetched;
        self.created += o.created;
        self.threaded += o.threaded;
        self.duplicates += o.duplicates;
        self.quarantined += o.quarantined;
        self.acks_queued += o.acks_queued;
        self.errors.extend(o.errors.iter().cloned());
    }
}

/// One source's summary.
#[derive(Debug, Clone, Serialize)]
pub struct SourceSummary {
    /// Mailbox name, or the path imported.
    pub name: String,
    /// The folder, for mailboxes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub folder: Option<String>,
    /// Its counts.
    #[serde(flatten)]
    pub counts: Counts,
}

/// A whole run: totals first, then each source.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunSummary {
    /// `sync --dry-run`: the counts say what would have happened; nothing was kept.
    pub dry_run: bool,
    /// Sums over all sources.
    #[serde(flatten)]
    pub totals: Counts,
    /// One entry per source, in order.
    pub mailboxes: Vec<SourceSummary>,
    /// What sending the outbox did, when it was sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outbox: Option<crate::outbound::DrainReport>,
    /// Mailboxes left out because a live `watch` worker holds their lease (PostgreSQL
    /// store): they are being watched, so this is no failure.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<Skipped>,
}

/// A mailbox a pass left to the worker that holds its lease.
#[derive(Debug, Clone, Serialize)]
pub struct Skipped {
    pub name: String,
    /// The worker holding the lease.
    pub held_by: String,
    /// Seconds until that lease would expire if not renewed.
    pub lease_expires_in_s: f64,
}

impl RunSummary {
    /// Adds one source's summary.
    pub fn push(&mut self, s: SourceSummary) {
        self.totals.add(&s.counts);
        self.mailboxes.push(s);
    }

    /// Adds what draining the outbox did; its problems count as errors of the run.
    pub fn push_drain(&mut self, d: crate::outbound::DrainReport) {
        self.totals.errors.extend(d.errors.iter().cloned());
        self.outbox = Some(d);
    }

    /// Whether anything failed.
    pub fn failed(&self) -> bool {
        !self.totals.errors.is_empty()
    }

    /// Logs the totals at `info`.
    pub fn log(&self, what: &str) {
        self.totals.log(&format!("{what} finished"));
    }

    /// The outbox's problems (SMTP refusals, connection failures), counted in the run's
    /// errors.
    pub fn outbox_errors(&self) -> usize {
        self.outbox.as_ref().map_or(0, |d| d.errors.len())
    }
}
