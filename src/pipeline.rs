//! One raw message into the store, exactly once: parse, classify, thread, record; or
//! quarantine what cannot be parsed.
//!
//! The work is split in two so a sync can use every core: [`prepare`] (parse, classify,
//! compress: CPU only, any thread, any order) and [`commit`] (one transaction, on the store's
//! own thread, in UID order). [`process`] does both, for one-off callers.
//!
//! [`commit`] is where the decisions meet, in ONE transaction: duplicate? → final verdict
//! ([`crate::classify::with_history`]) → placement ([`crate::thread::resolve`]) → ticket and
//! message rows → cursor → acknowledgement. The modules decide; the store only reads what they
//! ask and writes what they decided.

use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Condvar, Mutex, PoisonError};

use tokio::sync::oneshot;

use crate::classify::{self, Classification, Identity, Kind, classify};
use crate::config::{ClassifyConfig, Config, ThreadingConfig};
use crate::error::{Error, Result};
use crate::message::{self, ParsedMessage};
use crate::outbound::ack::{self, AckDecision, AckHistory, AckTicket};
use crate::outbound::{AckPlan, new_message_id};
use crate::quote::{self, CompactSplit};
use crate::spool::Spool;
use crate::stages::{self, Stage};
use crate::store::event;
use crate::store::{
    EventData, MessageRow, NewEvent, NewMessage, NewTicket, Origin, Outcome, RawBytes, Store,
    TicketRow, TicketStatus, Tx, pack_message,
};
use crate::thread;

/// A message after the CPU work, ready for its transaction.
pub struct Prepared {
    /// The exact bytes.
    pub raw: Raw,
    /// What parsing gave.
    pub body: PreparedBody,
}

/// A message's exact bytes: in memory, packed in its prepared body, or in a spool file (a
/// large message fetched in parts, see [`crate::spool`]), which goes away with it.
#[derive(Debug)]
pub enum Raw {
    /// Held in memory.
    Memory(Vec<u8>),
    /// Only how many: the bytes are the prepared body's packed ones, which give them back.
    /// A message waiting for its commit holds them once, compressed.
    Packed(u64),
    /// In a spool file.
    Spooled(Spool),
}

impl Raw {
    /// How many bytes.
    pub fn len(&self) -> u64 {
        match self {
            Raw::Memory(b) => b.len() as u64,
            Raw::Packed(n) => *n,
            Raw::Spooled(s) => s.len(),
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// What the store keeps: `packed` (compressed in memory with `codec`), or the spool file
    /// itself.
    fn stored<'a>(&'a self, packed: &'a [u8], codec: &'static str) -> RawBytes<'a> {
        match self {
            Raw::Memory(_) | Raw::Packed(_) => RawBytes::Packed(packed, codec),
            Raw::Spooled(s) => RawBytes::Spooled(s.file(), s.path()),
        }
    }
}

impl Prepared {
    /// The exact bytes in memory: a spooled message is read whole, a packed one unpacked
    /// (only the quarantine, which keeps a message in one row, asks for them).
    pub fn raw_bytes(&self) -> Result<std::borrow::Cow<'_, [u8]>> {
        match (&self.raw, &self.body) {
            (Raw::Memory(b), _) => Ok(b.as_slice().into()),
            (Raw::Spooled(s), _) => Ok(s.read_all()?.into()),
            (Raw::Packed(n), PreparedBody::Message { packed, codec, .. }) => {
                let size = usize::try_from(*n).unwrap_or(usize::MAX);
                Ok(crate::store::decompress(codec, packed, size)?.into())
            }
            (Raw::Packed(_), _) => Err(Error::Internal("packed bytes without a message".into())),
        }
    }
}

/// The parsed and judged message, or why it cannot be parsed.
pub enum PreparedBody {
    /// A message: its fields, verdict and compressed bytes with their codec (none for a
    /// spooled message: the store compresses it from its file, in parts).
    Message {
        parsed: Box<ParsedMessage>,
        class: Classification,
        packed: Vec<u8>,
        codec: &'static str,
        /// Its text's split (for its event), made here rather than on the store's thread.
        split: CompactSplit,
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

/// The settings the decisions follow: `[threading]` and `[classify]`.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    /// `[threading]`.
    pub threading: ThreadingConfig,
    /// `[classify]`.
    pub classify: ClassifyConfig,
}

impl Rules {
    /// The rules a config file asks for.
    pub fn from_config(c: &Config) -> Rules {
        Rules {
            threading: c.threading.clone(),
            classify: c.classify.clone(),
        }
    }
}

/// What a run asks of each message besides storing it.
#[derive(Clone, Copy)]
pub struct Plan<'a> {
    /// How to thread and judge.
    pub rules: &'a Rules,
    /// Acknowledge new requests (`None`: never).
    pub ack: Option<&'a AckPlan>,
    /// Counted one done per message [`process`] stores.
    pub progress: Option<&'a crate::progress::Progress>,
}

/// Parses, classifies and compresses `raw`. Never panics, never fails: what cannot be
/// parsed is marked for the quarantine.
pub fn prepare<R: AsRef<[u8]> + Into<Vec<u8>>>(me: &Identity, raw: R) -> Prepared {
    let (parsed, kept) = match stages::time(Stage::Parse, || message::parse_keeping(raw.as_ref())) {
        Ok(p) => p,
        Err(why) => return unparseable(raw.into(), why.0),
    };
    let class = stages::time(Stage::Classify, || classify(&parsed, me));
    let raw_len = raw.as_ref().len() as u64;
    match stages::time(Stage::Compress, || pack_message(raw.as_ref(), kept)) {
        // The bytes are in `packed` now; held until the commit, they would be held twice.
        Ok((packed, codec)) => Prepared {
            raw: Raw::Packed(raw_len),
            body: PreparedBody::Message {
                split: split_text(&parsed),
                parsed: Box::new(parsed),
                class,
                packed,
                codec,
            },
        },
        Err(e) => unparseable(raw.into(), format!("cannot compress: {e}")),
    }
}

/// `raw` for the quarantine, with why.
fn unparseable(raw: Vec<u8>, why: String) -> Prepared {
    Prepared {
        raw: Raw::Memory(raw),
        body: PreparedBody::Unparseable(why),
    }
}

/// [`prepare`] for a message in a spool file: parsed from the file
/// ([`message::parse_file`]); compressed later, by the store, as it writes the parts.
pub fn prepare_spooled(me: &Identity, mut spool: Spool) -> Prepared {
    let parsed = stages::time(Stage::Parse, || message::parse_file(spool.file_mut()));
    let body = match parsed {
        Err(why) => PreparedBody::Unparseable(why.0),
        Ok(parsed) => PreparedBody::Message {
            class: stages::time(Stage::Classify, || classify(&parsed, me)),
            split: split_text(&parsed),
            parsed: Box::new(parsed),
            packed: Vec::new(),
            codec: "",
        },
    };
    Prepared {
        raw: Raw::Spooled(spool),
        body,
    }
}

/// The split of a message's text for its event (see [`quote::split`]), counted as parsing.
fn split_text(parsed: &ParsedMessage) -> CompactSplit {
    stages::time(Stage::Parse, || {
        quote::split(&parsed.text).compact(&parsed.text)
    })
}

/// What a message became, with what its log line needs. The line is written by
/// [`Stored::log`] once the transaction is known to have committed: a message rolled back
/// with its group is never reported as created.
#[derive(Debug)]
pub struct Stored {
    /// Where it went.
    pub outcome: Outcome,
    /// Whether an acknowledgement was queued with it.
    pub acked: bool,
    uid: Option<u32>,
    message_id: String,
    kind: &'static str,
    /// Why it was quarantined.
    why: Option<String>,
}

impl Stored {
    /// The one line per message decision: at `info` when `at_info`, else at `debug` (a
    /// quarantine is always a warning); a dry run says what it would have done.
    pub fn log(&self, source: &str, dry_run: bool, at_info: bool) {
        let (what, would, ticket) = match self.outcome {
            Outcome::Created(t) => ("created", "would create", t),
            Outcome::Threaded(t) => ("threaded", "would thread", t),
            Outcome::Duplicate(t) => ("duplicate", "duplicate", t),
            Outcome::Quarantined(id) => {
                tracing::warn!(
                    source,
                    uid = self.uid,
                    quarantine = id,
                    error = self.why.as_deref().unwrap_or(""),
                    "{}",
                    if dry_run {
                        "would quarantine"
                    } else {
                        "quarantined"
                    }
                );
                return;
            }
        };
        let what = if dry_run { would } else { what };
        let (uid, message_id, kind) = (self.uid, &self.message_id, self.kind);
        if at_info {
            tracing::info!(uid, %message_id, kind, ticket, "{what}");
        } else {
            tracing::debug!(uid, %message_id, kind, ticket, "{what}");
        }
    }
}

/// A parsed message on its way into its transaction.
struct Incoming<'a> {
    parsed: &'a ParsedMessage,
    split: &'a CompactSplit,
    class: &'a Classification,
    size: u64,
    raw: RawBytes<'a>,
    origin: &'a Origin,
    received_at: i64,
}

/// Stores a prepared message in one transaction (advancing the IMAP cursor when `origin`
/// has one). Only the store itself can fail. Nothing is logged: the caller calls
/// [`Stored::log`] once the write is committed.
pub fn commit(
    store: &mut Store,
    p: &Prepared,
    origin: &Origin,
    received_at: i64,
    plan: Plan<'_>,
) -> Result<Stored> {
    stages::time(Stage::Store, || {
        commit_timed(store, p, origin, received_at, plan)
    })
}

fn commit_timed(
    store: &mut Store,
    p: &Prepared,
    origin: &Origin,
    received_at: i64,
    plan: Plan<'_>,
) -> Result<Stored> {
    let uid = origin.imap.as_ref().map(|i| i.uid);
    let quarantine = |store: &mut Store, why: &str, size: u64| -> Result<Stored> {
        let outcome = match &p.raw {
            // A spooled message goes from its file to the row, never held whole.
            Raw::Spooled(s) => {
                store.quarantine_spool(s.file(), s.path(), size, why, origin, received_at)?
            }
            _ => store.quarantine_sized(&p.raw_bytes()?, size, why, origin, received_at)?,
        };
        Ok(Stored {
            outcome,
            acked: false,
            uid,
            message_id: String::new(),
            kind: "quarantined",
            why: Some(why.to_owned()),
        })
    };
    let (parsed, class, packed, codec, split) = match &p.body {
        PreparedBody::Unparseable(why) => return quarantine(store, why, p.raw.len()),
        PreparedBody::TooLarge { size, why } => return quarantine(store, why, *size),
        PreparedBody::Message {
            parsed,
            class,
            packed,
            codec,
            split,
        } => (parsed, class, packed, *codec, split),
    };
    let m = Incoming {
        parsed,
        split,
        class,
        size: p.raw.len(),
        raw: p.raw.stored(packed, codec),
        origin,
        received_at,
    };
    let recorded = catch_unwind(AssertUnwindSafe(|| {
        match store.transaction(|tx| record(tx, &m, plan)) {
            // Another worker of a shared store stored the same message (or its ticket's key)
            // between our check and our insert: once more, it is found and threaded.
            Err(e) if e.is_conflict() => store.transaction(|tx| record(tx, &m, plan)),
            r => r,
        }
    }));
    let (outcome, acked, kind) = match recorded {
        Ok(r) => r?,
        Err(_) => {
            let why = "storing this message panicked; kept in the quarantine";
            tracing::error!(source = %origin.source, message_id = %parsed.message_id, why);
            return quarantine(store, why, p.raw.len());
        }
    };
    Ok(Stored {
        outcome,
        acked,
        uid,
        message_id: parsed.message_id.clone(),
        kind: kind.as_str(),
        why: None,
    })
}

/// The decisions and writes of one message, in the caller's transaction: duplicate? →
/// final verdict → placement → ticket and message rows → cursor → acknowledgement.
fn record(tx: &Tx<'_>, m: &Incoming<'_>, plan: Plan<'_>) -> Result<(Outcome, bool, Kind)> {
    let (p, rules) = (m.parsed, plan.rules);
    let cursor = m.origin;
    let held = tx.held_message(&p.message_id, &p.fingerprint)?;
    if let Some((t, true)) = held {
        tx.advance(cursor)?;
        return Ok((Outcome::Duplicate(t), false, m.class.kind));
    }
    let mut verdict = stages::time(Stage::Thread, || final_verdict(tx, m, &rules.classify))?;
    let kind = verdict.kind;
    // A ticket's times are mailticket's own (when it learnt of it); each message keeps the
    // date its sender gave it.
    let now = crate::time::now();
    let (customer, forwarded) = thread::customer(p, &rules.threading.forwarders);
    verdict.reasons.extend(forwarded);
    let failed = failed_recipients(p, kind);
    let placed = match thread::another_copy(held, p) {
        Some(copy) => copy,
        None => stages::time(Stage::Thread, || {
            thread::resolve(
                tx,
                p,
                kind,
                &customer.address,
                &failed,
                &rules.threading,
                now,
            )
        })?,
    };
    verdict.reasons.extend(placed.reasons);
    let subject = thread::normalize_subject_with(&p.subject, &rules.threading.tag);
    let new = NewTicket {
        subject: &subject,
        status: born(kind),
        customer: &customer,
        mailbox: &m.origin.mailbox,
        now,
    };
    // Another copy of a message the ticket holds never reopens it.
    let reopen = kind == Kind::Normal && !placed.copy;
    let (ticket, outcome, before) = open_or_touch(tx, placed.ticket, reopen, &new)?;
    if kind == Kind::Bounce && placed.ticket.is_some() {
        mark_undeliverable(
            tx,
            p,
            &failed,
            ticket,
            &rules.classify,
            now,
            &mut verdict.reasons,
        )?;
    }
    // A bounce we could not place must not pull later mail into its closed ticket.
    let refs = !(kind == Kind::Bounce && placed.ticket.is_none());
    let message = write_message(tx, m, ticket, &verdict, refs)?;
    tx.advance(cursor)?;
    let opened = matches!(outcome, Outcome::Created(_)).then(|| new.shown(ticket, &message.kind));
    announce(tx, m, (outcome, before), opened, &message, &failed, now)?;
    // The acknowledgement is decided on the final verdict: the history may show a loop that
    // the message alone did not.
    let acked = match (outcome, plan.ack) {
        (Outcome::Created(t), Some(ack)) => {
            let tag = thread::tag_text(&rules.threading.tag, t);
            let ticket = AckTicket {
                id: t,
                subject: &subject,
                tag: &tag,
                mailbox: &m.origin.mailbox,
            };
            acknowledge(tx, ack, p, &verdict, &ticket, now)?
        }
        _ => false,
    };
    Ok((outcome, acked, kind))
}

/// Opens the new ticket `new`, or records activity on the existing one (`placed`); returns
/// the ticket, the outcome and the existing ticket's status before.
fn open_or_touch(
    tx: &Tx<'_>,
    placed: Option<i64>,
    reopen: bool,
    new: &NewTicket<'_>,
) -> Result<(i64, Outcome, Option<TicketStatus>)> {
    match placed {
        Some(t) => {
            let before = tx.ticket_state(t)?.map(|s| s.status);
            tx.touch_ticket(t, new.now, reopen)?;
            Ok((t, Outcome::Threaded(t), before))
        }
        None => {
            let t = tx.create_ticket(new)?;
            Ok((t, Outcome::Created(t), None))
        }
    }
}

/// Records the events of a stored message, in its transaction: `ticket.created` or
/// `ticket.message_added`, `ticket.status_changed` (a reopen, or a ticket filed closed) and
/// `message.bounced` for a placed delivery report. `opened` is the ticket the message
/// opened, as written; a ticket it joined is read.
fn announce(
    tx: &Tx<'_>,
    m: &Incoming<'_>,
    (outcome, before): (Outcome, Option<TicketStatus>),
    opened: Option<TicketRow>,
    message: &MessageRow,
    failed: &[String],
    now: i64,
) -> Result<()> {
    let (Outcome::Created(t) | Outcome::Threaded(t)) = outcome else {
        return Ok(());
    };
    let ticket = match opened {
        Some(row) => row,
        None => match tx.ticket_view(t)? {
            Some(row) => row,
            None => return Ok(()),
        },
    };
    let p = m.parsed;
    let record = |kind: &str, data: EventData<'_>| {
        tx.record_event(&NewEvent {
            kind,
            ticket: t,
            mailbox: &ticket.mailbox,
            data,
            now,
        })
    };
    let created = matches!(outcome, Outcome::Created(_));
    let kind = if created {
        crate::event_type::TICKET_CREATED
    } else {
        crate::event_type::MESSAGE_ADDED
    };
    let split = m.split.expand(&p.text);
    record(
        kind,
        EventData::Message {
            ticket: &ticket,
            message,
            split: &split,
        },
    )?;
    let from = before.map(TicketStatus::as_str);
    if (created && ticket.status == TicketStatus::Closed)
        || before.is_some_and(|b| b != ticket.status)
    {
        let why = if created {
            "filed closed"
        } else {
            "reopened by a new message"
        };
        record(
            crate::event_type::STATUS_CHANGED,
            EventData::Value(&event::status_changed(&ticket, from, why)),
        )?;
    }
    if message.kind == Kind::Bounce.as_str() && !created {
        let recipients: Vec<event::Bounced> = failed
            .iter()
            .map(|addr| {
                let d = p
                    .dsn
                    .as_ref()
                    .and_then(|d| d.recipients.iter().find(|r| &r.final_recipient == addr));
                event::Bounced {
                    recipient: addr.clone(),
                    status: d.map_or(String::new(), |r| r.status.clone()),
                    diagnostic: d.map_or(String::new(), |r| r.diagnostic.clone()),
                }
            })
            .collect();
        record(
            crate::event_type::MESSAGE_BOUNCED,
            EventData::Value(&event::bounced(&ticket, &message.message_id, &recipients)),
        )?;
    }
    Ok(())
}

/// The recipients a bounce reports as failed; none for any other kind.
fn failed_recipients(p: &ParsedMessage, kind: Kind) -> Vec<String> {
    if kind == Kind::Bounce {
        p.failed_recipients()
    } else {
        Vec::new()
    }
}

/// Asks the ack policy about a message that opened a ticket, with its sender's history, and
/// records the answer: the acknowledgement queued, or why not. Whether one was queued.
fn acknowledge(
    tx: &Tx<'_>,
    plan: &AckPlan,
    p: &ParsedMessage,
    verdict: &Classification,
    ticket: &AckTicket<'_>,
    now: i64,
) -> Result<bool> {
    let address = p.reply_address().map_or("", |a| a.address.as_str());
    let history = AckHistory {
        undeliverable: tx.is_undeliverable(address, now)?,
        last_hour: tx.acks_to_since(address, now - 3600)?,
        last_day: tx.acks_to_since(address, now - 86_400)?,
    };
    let message_id = new_message_id(tx.key(), ticket.id, &plan.identity(ticket.mailbox).domain());
    match ack::decide(plan, p, verdict, &history, ticket, &message_id, now)? {
        AckDecision::Queue(out) => {
            tx.record_outgoing(ticket.id, &out, now)?;
            Ok(true)
        }
        AckDecision::Skip { to, reasons } => {
            let reason = reasons.join("; ");
            tx.record_skipped_ack(ticket.id, &to, &reason, now)?;
            tracing::info!(ticket = ticket.id, reason, "no acknowledgement");
            Ok(false)
        }
    }
}

/// The status of a ticket a message of `kind` opens: a bounce we cannot place and mail from
/// ourselves are kept, never worked on.
fn born(kind: Kind) -> TicketStatus {
    if matches!(kind, Kind::Bounce | Kind::Loop) {
        TicketStatus::Closed
    } else {
        TicketStatus::Open
    }
}

/// The classifier's verdict with the store's history: our own id coming back, or a sender
/// who writes too much too fast, makes it a loop.
fn final_verdict(tx: &Tx<'_>, m: &Incoming<'_>, cfg: &ClassifyConfig) -> Result<Classification> {
    let recent = classify::rate_question(m.parsed, cfg)
        .map(|q| tx.messages_from_within(q.from, q.date, q.window))
        .transpose()?;
    Ok(classify::with_history(
        m.class,
        m.parsed,
        tx.key(),
        recent,
        cfg,
    ))
}

/// The message row, its attachments' index and (with `refs`) the ids it names; the message
/// as shown.
fn write_message(
    tx: &Tx<'_>,
    m: &Incoming<'_>,
    ticket: i64,
    verdict: &Classification,
    refs: bool,
) -> Result<MessageRow> {
    let p = m.parsed;
    let new = NewMessage {
        ticket,
        parsed: p,
        kind: verdict.kind,
        reasons: &verdict.reasons,
        date: p.date.unwrap_or(m.received_at),
        received_at: m.received_at,
        source: &m.origin.source,
        imap: m.origin.imap.as_ref().map(|i| (i.uidvalidity, i.uid)),
        size: m.size,
        raw: m.raw,
    };
    let row = tx.insert_message(&new)?;
    if refs {
        tx.add_refs(p.in_reply_to.iter().chain(p.references.iter()), ticket)?;
    }
    Ok(new.shown(row))
}

/// Marks the recipients a placed bounce reports as failed undeliverable for
/// `[classify] undeliverable-days`, with a reason each.
fn mark_undeliverable(
    tx: &Tx<'_>,
    p: &ParsedMessage,
    failed: &[String],
    ticket: i64,
    cfg: &ClassifyConfig,
    now: i64,
    reasons: &mut Vec<String>,
) -> Result<()> {
    let days = i64::from(cfg.undeliverable_days);
    if days == 0 {
        return Ok(());
    }
    let expires = now.saturating_add(days * 86_400);
    for addr in failed {
        let detail = p
            .dsn
            .as_ref()
            .and_then(|d| d.recipients.iter().find(|r| &r.final_recipient == addr));
        let status = detail.map_or("", |r| r.status.as_str());
        let diagnostic = detail.map_or("", |r| r.diagnostic.as_str());
        tx.mark_undeliverable(addr, expires, (status, diagnostic), ticket, now)?;
        reasons.push(format!(
            "bounce: {addr} undeliverable until {}",
            crate::time::rfc3339(expires)
        ));
    }
    Ok(())
}

/// [`prepare`] then [`commit`], on the calling thread.
pub fn process(
    store: &mut Store,
    me: &Identity,
    raw: &[u8],
    origin: &Origin,
    received_at: i64,
    plan: Plan<'_>,
) -> Result<Stored> {
    let stored = commit(store, &prepare(me, raw), origin, received_at, plan)?;
    Ok(processed(stored, origin, plan))
}

/// [`process`] for a message in a spool file (a large one): parsed from the file and stored
/// from it in parts ([`prepare_spooled`]), never held whole.
pub fn process_spooled(
    store: &mut Store,
    me: &Identity,
    spool: Spool,
    origin: &Origin,
    received_at: i64,
    plan: Plan<'_>,
) -> Result<Stored> {
    let stored = commit(
        store,
        &prepare_spooled(me, spool),
        origin,
        received_at,
        plan,
    )?;
    Ok(processed(stored, origin, plan))
}

/// Logs a message stored by [`process`] and counts it done.
fn processed(stored: Stored, origin: &Origin, plan: Plan<'_>) -> Stored {
    stored.log(&origin.source, false, false);
    if let Some(p) = plan.progress {
        p.done_one();
    }
    stored
}

type Job = Box<dyn FnOnce() + Send>;

/// A few threads for [`prepare`], one per core.
#[derive(Clone)]
pub struct PrepPool {
    feed: Arc<Feed>,
}

/// The pool's queue, shared by its workers: a job wakes one idle worker, and only when one
/// is idle. (Workers that took turns at an `mpsc::Receiver` behind a mutex woke two threads
/// per job when both were idle: the one that got the job, then the other, for the mutex.)
#[derive(Default)]
struct Queue {
    state: Mutex<QueueState>,
    ready: Condvar,
}

#[derive(Default)]
struct QueueState {
    jobs: VecDeque<Job>,
    /// Workers waiting for a job.
    idle: usize,
    /// Set when the last handle on the pool is dropped: the workers end once it is empty.
    closed: bool,
}

impl Queue {
    fn push(&self, job: Job) {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        s.jobs.push_back(job);
        let wake = s.idle > 0;
        // The worker woken takes the lock at once: it is free by then.
        drop(s);
        if wake {
            self.ready.notify_one();
        }
    }

    /// The next job; `None` once the pool is dropped and every job is done.
    fn take(&self) -> Option<Job> {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(job) = s.jobs.pop_front() {
                return Some(job);
            }
            if s.closed {
                return None;
            }
            s.idle += 1;
            s = self.ready.wait(s).unwrap_or_else(PoisonError::into_inner);
            s.idle -= 1;
        }
    }
}

/// The pool's handles share this: dropping the last closes the queue.
struct Feed(Arc<Queue>);

impl Drop for Feed {
    fn drop(&mut self) {
        self.0
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .closed = true;
        self.0.ready.notify_all();
    }
}

impl PrepPool {
    /// Starts one thread per available core.
    pub fn spawn() -> Result<PrepPool> {
        let queue = Arc::new(Queue::default());
        let n = std::thread::available_parallelism().map_or(2, usize::from);
        for i in 0..n {
            let queue = queue.clone();
            std::thread::Builder::new()
                .name(format!("prepare-{i}"))
                .spawn(move || {
                    while let Some(job) = queue.take() {
                        job();
                    }
                    stages::worker_done(stages::Worker::Prepare);
                })
                .map_err(|source| Error::Spawn {
                    what: "a worker thread",
                    source,
                })?;
        }
        Ok(PrepPool {
            feed: Arc::new(Feed(queue)),
        })
    }

    /// Prepares `raw` on the pool; the result arrives on the receiver.
    pub fn prepare<R>(&self, me: Arc<Identity>, raw: R) -> oneshot::Receiver<Prepared>
    where
        R: AsRef<[u8]> + Into<Vec<u8>> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        self.feed.0.push(Box::new(move || {
            let _ = tx.send(prepare(&me, raw));
        }));
        rx
    }

    /// Prepares the message in `spool` on the pool ([`prepare_spooled`]).
    pub fn prepare_spooled(&self, me: Arc<Identity>, spool: Spool) -> oneshot::Receiver<Prepared> {
        let (tx, rx) = oneshot::channel();
        self.feed.0.push(Box::new(move || {
            let _ = tx.send(prepare_spooled(&me, spool));
        }));
        rx
    }
}

/// Helpers for tests that need messages in a store.
#[cfg(test)]
pub(crate) mod test_support {
    use super::{Identity, Outcome, Plan, Rules, Store, process};
    use crate::store::Origin;

    /// Processes `raw` into `store` with `rules` (no acknowledgements); its outcome.
    pub(crate) fn put_with(store: &mut Store, rules: &Rules, raw: &str) -> Outcome {
        let origin = Origin::unplaced("test", "");
        let plan = Plan {
            rules,
            ack: None,
            progress: None,
        };
        process(
            store,
            &Identity::default(),
            raw.as_bytes(),
            &origin,
            0,
            plan,
        )
        .unwrap()
        .outcome
    }

    /// A small message from a@example.com about "Printer".
    pub(crate) fn msg(id: &str, headers: &str, body: &str) -> String {
        format!(
            "From: a@example.com\r\nSubject: Printer\r\nMessage-ID: <{id}>\r\n{headers}\r\n{body}\r\n"
        )
    }
}

#[cfg(test)]
mod pool_tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    use super::*;

    /// Workers over one queue, as [`PrepPool::spawn`] starts them.
    fn workers(queue: &Arc<Queue>, n: usize) -> Vec<std::thread::JoinHandle<()>> {
        (0..n)
            .map(|_| {
                let queue = queue.clone();
                std::thread::spawn(move || {
                    while let Some(job) = queue.take() {
                        job();
                    }
                })
            })
            .collect()
    }

    #[test]
    fn every_job_runs_and_the_workers_end_with_the_pool() {
        let queue = Arc::new(Queue::default());
        let threads = workers(&queue, 2);
        let feed = Feed(queue);
        let done = Arc::new(AtomicUsize::new(0));
        for i in 0..2000 {
            let done = done.clone();
            feed.0.push(Box::new(move || {
                if i % 100 == 0 {
                    // Now and then a slow one, so that workers go idle and are woken.
                    std::thread::sleep(Duration::from_millis(1));
                }
                done.fetch_add(1, Ordering::SeqCst);
            }));
        }
        // Jobs still queued when the pool is dropped run before the workers end.
        drop(feed);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !threads.iter().all(|t| t.is_finished()) {
            assert!(Instant::now() < deadline, "the workers did not end");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(done.load(Ordering::SeqCst), 2000);
    }

    #[test]
    fn a_job_for_an_idle_pool_is_taken_at_once() {
        let queue = Arc::new(Queue::default());
        let threads = workers(&queue, 2);
        let feed = Feed(queue.clone());
        for _ in 0..50 {
            // Both workers idle: one of them, woken, takes the job.
            while queue.state.lock().unwrap().idle < 2 {
                std::thread::yield_now();
            }
            let (tx, rx) = std::sync::mpsc::channel();
            feed.0.push(Box::new(move || tx.send(()).unwrap()));
            rx.recv_timeout(Duration::from_secs(10)).unwrap();
        }
        drop(feed);
        for t in threads {
            t.join().unwrap();
        }
    }
}

#[cfg(test)]
mod tests {
    //! The decisions of one message's transaction, through [`process`], on an in-memory store.

    use std::ops::{Deref, DerefMut};

    use super::test_support::msg;
    use super::*;

    /// A store and the rules its messages are processed with.
    struct TestStore {
        store: Store,
        rules: Rules,
    }

    impl TestStore {
        fn open() -> TestStore {
            TestStore {
                store: Store::open_in_memory().unwrap(),
                rules: Rules::default(),
            }
        }

        fn set_rules(&mut self, rules: Rules) {
            self.rules = rules;
        }
    }

    impl Deref for TestStore {
        type Target = Store;
        fn deref(&self) -> &Store {
            &self.store
        }
    }

    impl DerefMut for TestStore {
        fn deref_mut(&mut self) -> &mut Store {
            &mut self.store
        }
    }

    fn put(s: &mut TestStore, raw: &str) -> Outcome {
        let rules = s.rules.clone();
        test_support::put_with(&mut s.store, &rules, raw)
    }

    #[test]
    fn a_prepared_message_holds_its_bytes_once_and_gives_them_back() {
        use base64::Engine as _;
        let pdf: Vec<u8> = (0..60_000u32).map(|i| (i * 7919 % 251) as u8).collect();
        let body: String = base64::engine::general_purpose::STANDARD
            .encode(&pdf)
            .as_bytes()
            .chunks(76)
            .map(|l| format!("{}\r\n", String::from_utf8_lossy(l)))
            .collect();
        let attached = format!(
            "From: a@example.com\r\nMessage-ID: <p@x>\r\n\
             Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\
             Content-Type: text/plain\r\n\r\nsee attached\r\n--b\r\n\
             Content-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n\
             {body}--b--\r\n"
        );
        for raw in [msg("1@x", "", "first"), attached] {
            let p = prepare(&Identity::default(), raw.clone().into_bytes());
            assert!(matches!(p.raw, Raw::Packed(n) if n == raw.len() as u64));
            assert_eq!(p.raw_bytes().unwrap().as_ref(), raw.as_bytes());
        }
        // What cannot be parsed keeps its bytes, for the quarantine.
        let p = unparseable(b"\xff\xfe".to_vec(), "why".into());
        assert!(matches!(p.raw, Raw::Memory(_)));
        assert_eq!(p.raw_bytes().unwrap().as_ref(), b"\xff\xfe");
    }

    #[test]
    fn threads_by_ids_and_dedupes() {
        let mut s = TestStore::open();
        let Outcome::Created(t) = put(&mut s, &msg("1@x", "", "first")) else {
            panic!()
        };
        assert_eq!(
            put(&mut s, &msg("2@x", "In-Reply-To: <1@x>\r\n", "second")),
            Outcome::Threaded(t)
        );
        assert_eq!(
            put(&mut s, &msg("3@x", "References: <0@x> <2@x>\r\n", "third")),
            Outcome::Threaded(t)
        );
        assert_eq!(put(&mut s, &msg("1@x", "", "first")), Outcome::Duplicate(t));
        // Same id, other content: kept, not dropped (it lands in the ticket its id names).
        assert_eq!(
            put(&mut s, &msg("1@x", "", "a different message")),
            Outcome::Threaded(t)
        );
        let (row, messages) = s.ticket(t).unwrap().unwrap();
        assert_eq!(row.messages, 4);
        assert_eq!(messages.len(), 4);
        assert!(matches!(put(&mut s, &msg("9@x", "", "other")), Outcome::Created(n) if n != t));
    }

    #[test]
    fn another_copy_of_a_held_id_joins_its_ticket_without_reopening_it() {
        let mut s = TestStore::open();
        let t = created(put(&mut s, &msg("post@x", "", "the post")));
        assert!(s.set_status(t, TicketStatus::Closed).unwrap());
        // The same post through a second list: its own headers and footer, nothing answers it.
        let copy = msg(
            "post@x",
            "List-Id: <two.lists.example>\r\n",
            "the post\r\n-- \r\nlist two",
        );
        assert_eq!(put(&mut s, &copy), Outcome::Threaded(t));
        let (row, messages) = s.ticket(t).unwrap().unwrap();
        assert_eq!(row.status, TicketStatus::Closed);
        assert_eq!(messages.len(), 2);
        assert!(
            messages[1]
                .reasons
                .iter()
                .any(|r| r.contains("another copy of <post@x>")),
            "{:?}",
            messages[1].reasons
        );
    }

    #[test]
    fn subject_tag_needs_a_participant() {
        let mut s = TestStore::open();
        let Outcome::Created(t) = put(&mut s, &msg("1@x", "", "first")) else {
            panic!()
        };
        let tagged = format!(
            "From: a@example.com\r\nSubject: Re: [#{t}] Printer\r\nMessage-ID: <5@x>\r\n\r\nhi\r\n"
        );
        assert_eq!(put(&mut s, &tagged), Outcome::Threaded(t));
        let stranger = tagged
            .replace("a@example.com", "mallory@evil.example")
            .replace("5@x", "6@x");
        assert!(matches!(put(&mut s, &stranger), Outcome::Created(n) if n != t));
    }

    #[test]
    fn shared_unknown_parent_needs_the_same_sender() {
        let mut s = TestStore::open();
        let a = "From: a@example.com\r\nSubject: Re: news\r\nMessage-ID: <a@x>\r\nIn-Reply-To: <unknown@x>\r\n\r\nhi\r\n";
        let Outcome::Created(t) = put(&mut s, a) else {
            panic!()
        };
        let b = a
            .replace("a@example.com", "b@example.com")
            .replace("<a@x>", "<b@x>");
        assert!(matches!(put(&mut s, &b), Outcome::Created(n) if n != t));
        let a2 = a.replace("<a@x>", "<a2@x>");
        assert_eq!(put(&mut s, &a2), Outcome::Threaded(t));
        // The parent arrives last and joins its replies' ticket, whoever sent it.
        let parent =
            "From: news@example.org\r\nSubject: news\r\nMessage-ID: <unknown@x>\r\n\r\nnews\r\n";
        assert!(matches!(put(&mut s, parent), Outcome::Threaded(_)));
    }

    /// The kind and reasons stored for the newest message of ticket `t`.
    fn last(s: &TestStore, t: i64) -> (String, Vec<String>, String) {
        let (row, msgs) = s.ticket(t).unwrap().unwrap();
        let m = msgs.last().unwrap();
        (m.kind.clone(), m.reasons.clone(), row.status.to_string())
    }

    fn created(o: Outcome) -> i64 {
        match o {
            Outcome::Created(t) => t,
            other => panic!("expected a new ticket, got {other:?}"),
        }
    }

    #[test]
    fn keyed_ids_thread_without_their_row_and_forgeries_do_not() {
        let mut s = TestStore::open();
        let t = created(put(&mut s, &msg("1@x", "", "first")));
        let ours = s.outbound_message_id(t, "5", "example.com");
        // Only the sender changes (an id of ours may well end in "a@example.com" too).
        let reply = msg("2@x", &format!("In-Reply-To: <{ours}>\r\n"), "thanks")
            .replace("From: a@example.com", "From: someone.else@example.org");
        assert_eq!(put(&mut s, &reply), Outcome::Threaded(t));
        let forged = ours.replace(&format!("mt.{t}.5."), &format!("mt.{t}.6."));
        let stranger = msg("3@x", &format!("In-Reply-To: <{forged}>\r\n"), "hi")
            .replace("From: a@example.com", "From: mallory@evil.example");
        let n = created(put(&mut s, &stranger));
        assert_ne!(n, t);
        assert!(
            last(&s, n).1.iter().any(|r| r.contains("forged")),
            "{:?}",
            last(&s, n)
        );
        // Our own id coming back in is a loop.
        let back = msg(&s.outbound_message_id(t, "9", "example.com"), "", "echo");
        let echo = created(put(&mut s, &back));
        let (kind, reasons, _) = last(&s, echo);
        assert_eq!(kind, "loop", "{reasons:?}");
        assert!(reasons[0].starts_with("message-id: generated by this store"));
    }

    #[test]
    fn closed_ticket_policies() {
        use crate::config::OnClosed;
        let reply =
            |id: &str, extra: &str| msg(id, &format!("In-Reply-To: <1@x>\r\n{extra}"), "again");
        for (policy, reopens) in [
            (OnClosed::Reopen, true),
            (OnClosed::NewTicket, false),
            (OnClosed::NewTicketAfterDays(30), true),
            (OnClosed::NewTicketAfterDays(0), false),
        ] {
            let mut s = TestStore::open();
            let mut rules = Rules::default();
            rules.threading.on_closed = policy;
            s.set_rules(rules);
            let t = created(put(&mut s, &msg("1@x", "", "first")));
            assert!(s.set_status(t, TicketStatus::Closed).unwrap());
            // An automatic reply never reopens, whatever the policy.
            assert_eq!(
                put(&mut s, &reply("oof@x", "Auto-Submitted: auto-replied\r\n")),
                Outcome::Threaded(t)
            );
            assert_eq!(last(&s, t).2, "closed");
            let o = put(&mut s, &reply("2@x", ""));
            if reopens {
                assert_eq!(o, Outcome::Threaded(t), "{policy:?}");
                assert_eq!(last(&s, t).2, "open");
            } else {
                let n = created(o);
                assert_ne!(n, t, "{policy:?}");
                assert!(
                    last(&s, n)
                        .1
                        .iter()
                        .any(|r| r.contains("is closed; new ticket"))
                );
            }
        }
    }

    #[test]
    fn same_subject_within_days_only_when_enabled() {
        let first = "From: a@example.com\r\nSubject: VPN down\r\nDate: Mon, 3 Mar 2025 08:00:00 +0000\r\nMessage-ID: <1@x>\r\n\r\nhelp\r\n";
        let again = first
            .replace("<1@x>", "<2@x>")
            .replace("3 Mar", "5 Mar")
            .replace("VPN down", "Re: VPN down");
        let mut s = TestStore::open();
        let t = created(put(&mut s, first));
        assert_ne!(created(put(&mut s, &again)), t);
        let mut s = TestStore::open();
        let mut rules = Rules::default();
        rules.threading.subject_days = 3;
        s.set_rules(rules);
        let t = created(put(&mut s, first));
        assert_eq!(put(&mut s, &again), Outcome::Threaded(t));
        let late = again.replace("<2@x>", "<3@x>").replace("5 Mar", "9 Mar");
        assert_ne!(created(put(&mut s, &late)), t);
    }

    #[test]
    fn too_many_messages_from_one_sender_are_a_loop() {
        let mut s = TestStore::open();
        let mut rules = Rules::default();
        rules.classify.loop_messages = 3;
        rules.classify.loop_window = 60;
        s.set_rules(rules);
        let at = |id: u32, sec: u32| {
            format!(
                "From: bot@example.org\r\nSubject: n{id}\r\nDate: Mon, 3 Mar 2025 08:00:{sec:02} +0000\r\nMessage-ID: <{id}@x>\r\n\r\nx\r\n"
            )
        };
        for i in 0..3 {
            let t = created(put(&mut s, &at(i, i)));
            assert_eq!(last(&s, t).0, "normal");
        }
        let t = created(put(&mut s, &at(3, 4)));
        let (kind, reasons, status) = last(&s, t);
        assert_eq!(
            (kind.as_str(), status.as_str()),
            ("loop", "closed"),
            "{reasons:?}"
        );
        assert!(reasons[0].starts_with("rate: more than 3 messages"));
    }

    #[test]
    fn bounce_by_original_id_marks_the_recipient_for_a_while() {
        let mut s = TestStore::open();
        let t = created(put(&mut s, &msg("1@x", "", "first")));
        let ours = s.outbound_message_id(t, "1", "example.com");
        let bounce = format!(
            "From: MAILER-DAEMON@mx.example.com\r\nSubject: Undelivered Mail Returned to Sender\r\n\
             Message-ID: <b1@mx>\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=B\r\n\r\n\
             --B\r\nContent-Type: text/plain\r\n\r\nfailed\r\n--B\r\nContent-Type: message/delivery-status\r\n\r\n\
             Reporting-MTA: dns; mx\r\n\r\nFinal-Recipient: rfc822; A@Example.com\r\nAction: failed\r\nStatus: 5.1.1\r\n\r\n\
             --B\r\nContent-Type: text/rfc822-headers\r\n\r\nMessage-ID: <{ours}>\r\nSubject: x\r\n\r\n--B--\r\n"
        );
        assert_eq!(put(&mut s, &bounce), Outcome::Threaded(t));
        let (kind, reasons, status) = last(&s, t);
        assert_eq!(
            (kind.as_str(), status.as_str()),
            ("bounce", "open"),
            "{reasons:?}"
        );
        let now = crate::time::now();
        assert!(s.is_undeliverable("a@example.com", now).unwrap());
        assert!(s.is_undeliverable(" A@EXAMPLE.com", now).unwrap());
        assert!(
            !s.is_undeliverable("a@example.com", now + 8 * 86_400)
                .unwrap()
        );
        assert!(!s.is_undeliverable("b@example.com", now).unwrap());
    }

    #[test]
    fn recipients_of_a_ticket_take_part_as_senders_only() {
        let mut s = TestStore::open();
        let first = "From: a@example.com\r\nTo: support@example.com\r\nCc: colleague@example.com\r\n\
                     Subject: Re: plan\r\nMessage-ID: <a1@x>\r\nIn-Reply-To: <gone@x>\r\n\r\nhi\r\n";
        let t = created(put(&mut s, first));
        // The colleague answers the same (unseen) parent: joins.
        let colleague = first
            .replace("From: a@example.com", "From: colleague@example.com")
            .replace("Cc: colleague@example.com\r\n", "")
            .replace("<a1@x>", "<c1@x>");
        assert_eq!(put(&mut s, &colleague), Outcome::Threaded(t));
        // A stranger who puts our address (a recipient of every message) in Cc does not.
        let stranger = format!(
            "From: mallory@evil.example\r\nCc: support@example.com\r\nSubject: [#{t}] x\r\n\
             Message-ID: <m1@x>\r\n\r\nhi\r\n"
        );
        assert_ne!(created(put(&mut s, &stranger)), t);
    }
}

#[cfg(test)]
mod event_tests {
    use super::test_support::put_with;
    use super::*;
    use crate::store::view::message_json;

    /// A message's event is built from what was written, without reading it back, and the
    /// text's split is made off the store's thread: what it carries must be what `show
    /// --json` reads back.
    #[test]
    fn a_message_event_carries_the_message_as_stored() {
        let mut store = Store::open_in_memory().unwrap();
        for p in crate::message::skeleton_tests::corpus_files() {
            let raw = String::from_utf8_lossy(&std::fs::read(&p).unwrap()).into_owned();
            put_with(&mut store, &Rules::default(), &raw);
        }
        let mut n = 0;
        for e in store.events_since(0, 100_000).unwrap() {
            let Some(row) = (e.kind == crate::event_type::TICKET_CREATED
                || e.kind == crate::event_type::MESSAGE_ADDED)
                .then_some(e.ticket_id)
            else {
                continue;
            };
            let sent = event::wire(&e.uid, &e.kind, e.created_at, &e.data);
            let sent = &sent["data"]["message"];
            let (_, messages) = store.ticket(row).unwrap().unwrap();
            // Another copy of a message has the same id: one of them is the one.
            let shown: Vec<serde_json::Value> = messages
                .iter()
                .filter(|m| m.message_id == sent["message_id"])
                .map(|m| {
                    let mut shown = message_json(m);
                    if sent["text"] != shown["text"] {
                        // Cut to fit the event's cap: compare the rest.
                        shown["text"] = sent["text"].clone();
                        shown["text_new"] = sent["text_new"].clone();
                    }
                    shown
                })
                .collect();
            assert!(
                shown.contains(sent),
                "event {}: {sent} not in {shown:?}",
                e.id
            );
            n += 1;
        }
        assert!(n > 100, "{n} events");
    }

    /// The ticket a message opens is built from what was written, without reading it back:
    /// its `ticket.created` event must carry what `tickets --json` reads back.
    #[test]
    fn a_created_ticket_in_its_event_is_the_ticket_as_stored() {
        let mut n = 0;
        for p in crate::message::skeleton_tests::corpus_files() {
            let mut store = Store::open_in_memory().unwrap();
            let raw = String::from_utf8_lossy(&std::fs::read(&p).unwrap()).into_owned();
            put_with(&mut store, &Rules::default(), &raw);
            for e in store.events_since(0, 100).unwrap() {
                if e.kind != crate::event_type::TICKET_CREATED {
                    continue;
                }
                let sent = event::wire(&e.uid, &e.kind, e.created_at, &e.data);
                let (ticket, _) = store.ticket(e.ticket_id).unwrap().unwrap();
                let stored = crate::store::view::ticket_json(&ticket);
                assert_eq!(sent["data"]["ticket"], stored, "{}", p.display());
                n += 1;
            }
        }
        assert!(n > 100, "{n} tickets");
    }
}
