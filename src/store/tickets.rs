//! Tickets and messages: the per-message transaction, and the queries behind `tickets`,
//! `show` and `quarantine`.

use rusqlite::{Connection, OptionalExtension, params};

use super::{Rules, Store};
use crate::classify::Classification;
use crate::error::{Error, Result};
use crate::message::{ParsedMessage, hex, sha256};
use crate::thread;

/// Where a message came from.
#[derive(Debug, Clone)]
pub struct Origin {
    /// `imap:support/INBOX`, `import:PATH` or `ingest`.
    pub source: String,
    /// The mailbox name for new tickets (empty for files).
    pub mailbox: String,
    /// Set for IMAP: the position whose cursor advances with this message.
    pub imap: Option<ImapPos>,
}

/// A message's place in an IMAP folder.
#[derive(Debug, Clone)]
pub struct ImapPos {
    /// Mailbox name from the config.
    pub mailbox: String,
    /// Folder.
    pub folder: String,
    /// The folder's UIDVALIDITY.
    pub uidvalidity: u32,
    /// The message's UID.
    pub uid: u32,
    /// How far the cursor advances when this message commits: its UID, or less when the
    /// server sent a batch out of UID order and a lower UID has not been stored yet.
    pub cursor_to: u32,
}

/// A parsed, classified message on its way into the store.
pub struct Incoming<'a> {
    /// The parsed fields.
    pub parsed: &'a ParsedMessage,
    /// The verdict.
    pub class: &'a Classification,
    /// The exact bytes.
    pub raw: &'a [u8],
    /// The exact bytes, compressed with [`pack`].
    pub packed: &'a [u8],
    /// Where it came from.
    pub origin: &'a Origin,
    /// Acknowledge it if it opens a new ticket and the policy allows (`None`: never).
    pub ack: Option<&'a crate::outbound::AckPlan>,
    /// When it arrived (INTERNALDATE, file time, or now).
    pub received_at: i64,
}

/// What became of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It opened this ticket.
    Created(i64),
    /// It was added to this existing ticket.
    Threaded(i64),
    /// It was stored before (same Message-ID, same content): nothing written.
    Duplicate(i64),
    /// It could not be parsed and sits in the quarantine under this id.
    Quarantined(i64),
}

/// A mailbox folder's cursor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    /// The UIDVALIDITY the UIDs belong to.
    pub uidvalidity: u32,
    /// Highest UID stored.
    pub last_uid: u32,
    /// UIDs up to here existed before the first run: they are taken only while unseen.
    pub backlog_until: u32,
    /// Every stored UID up to here has had its post-action confirmed by the server.
    pub done_uid: u32,
}

/// A ticket as listed.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TicketRow {
    /// Ticket number.
    pub id: i64,
    /// Subject without reply prefixes.
    pub subject: String,
    /// `open` or `closed`.
    pub status: String,
    /// The customer's address.
    pub customer: String,
    /// The customer's name.
    pub customer_name: String,
    /// The mailbox it came in on.
    pub mailbox: String,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub updated_at: i64,
    /// Number of messages.
    pub messages: i64,
}

/// An attachment as shown.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AttachmentRow {
    /// Safe file name.
    pub filename: String,
    /// `type/subtype`.
    pub content_type: String,
    /// Bytes.
    pub size: i64,
    /// Hex SHA-256 of the content.
    pub sha256: String,
}

/// A message as shown.
#[derive(Debug, Clone)]
pub struct MessageRow {
    /// Row id.
    pub id: i64,
    /// Message-ID without brackets.
    pub message_id: String,
    /// `in` or `out`.
    pub direction: String,
    /// From address.
    pub from: String,
    /// From name.
    pub from_name: String,
    /// To addresses.
    pub to: Vec<String>,
    /// Cc addresses.
    pub cc: Vec<String>,
    /// Subject as sent.
    pub subject: String,
    /// Unix seconds.
    pub date: i64,
    /// Classification kind.
    pub kind: String,
    /// Classification reasons.
    pub reasons: Vec<String>,
    /// Readable text.
    pub text: String,
    /// Attachments.
    pub attachments: Vec<AttachmentRow>,
}

/// A quarantined message.
#[derive(Debug, Clone, serde::Serialize)]
pub struct QuarantineRow {
    /// Row id.
    pub id: i64,
    /// Where it came from.
    pub source: String,
    /// IMAP UID (0 for files).
    pub uid: i64,
    /// Why it could not be parsed.
    pub error: String,
    /// Bytes.
    pub size: i64,
    /// Unix seconds.
    pub received_at: i64,
}

fn json_list(v: impl IntoIterator<Item = impl serde::Serialize>) -> String {
    serde_json::to_string(&v.into_iter().collect::<Vec<_>>()).unwrap_or_else(|_| "[]".into())
}

fn from_json_list(s: &str) -> Vec<String> {
    serde_json::from_str(s).unwrap_or_default()
}

/// zstd level for raw messages: level 1 keeps compression well ahead of the network.
const RAW_ZSTD_LEVEL: i32 = 1;

thread_local! {
    /// One compression context per thread: a fresh one per message costs more than
    /// compressing a small message.
    static PACKER: std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// Compresses a raw message for the store (CPU only; callable from any thread).
pub fn pack(raw: &[u8]) -> Result<Vec<u8>> {
    PACKER.with(|p| {
        let mut p = p.borrow_mut();
        if p.is_none() {
            *p = Some(
                zstd::bulk::Compressor::new(RAW_ZSTD_LEVEL)
                    .map_err(|e| Error::Other(format!("zstd: {e}")))?,
            );
        }
        match p.as_mut() {
            Some(c) => c
                .compress(raw)
                .map_err(|e| Error::Other(format!("zstd: {e}"))),
            None => Err(Error::Other("zstd: no context".into())),
        }
    })
}

/// Restores a stored raw message.
pub fn decompress(codec: &str, data: &[u8], size: usize) -> Result<Vec<u8>> {
    match codec {
        "zstd" => zstd::bulk::decompress(data, size.max(1))
            .map_err(|e| Error::Other(format!("zstd: {e}"))),
        "none" => Ok(data.to_vec()),
        other => Err(Error::Other(format!("unknown codec {other}"))),
    }
}

/// Advances the cursor past this message, inside the caller's transaction.
fn advance(c: &Connection, pos: Option<&ImapPos>) -> Result<()> {
    let Some(p) = pos else { return Ok(()) };
    let n = c
        .prepare_cached(
            "UPDATE cursor SET last_uid = max(last_uid, ?4), updated_at = ?5
             WHERE mailbox = ?1 AND folder = ?2 AND uidvalidity = ?3",
        )?
        .execute(params![
            p.mailbox,
            p.folder,
            p.uidvalidity,
            p.cursor_to,
            crate::time::now()
        ])?;
    if n != 1 {
        return Err(Error::Other(format!(
            "no cursor for {}/{} at UIDVALIDITY {}",
            p.mailbox, p.folder, p.uidvalidity
        )));
    }
    Ok(())
}

impl Store {
    /// Stores one message: threads it, writes its rows and advances the cursor, all in one
    /// transaction. The same message seen again is a no-op.
    pub fn ingest(&mut self, m: &Incoming<'_>) -> Result<Outcome> {
        let rules = self.rules.clone();
        let key = self.key.clone();
        let (outcome, acked) = self.write(|c| ingest_in(c, m, &rules, &key))?;
        self.acks_queued += u64::from(acked);
        Ok(outcome)
    }

    /// Keeps bytes that could not be parsed, and advances the cursor past them.
    pub fn quarantine(
        &mut self,
        raw: &[u8],
        error: &str,
        origin: &Origin,
        received_at: i64,
    ) -> Result<Outcome> {
        self.quarantine_sized(raw, raw.len() as u64, error, origin, received_at)
    }

    /// Like [`Store::quarantine`], for a message of `size` bytes of which only `raw` (its
    /// header) was fetched.
    pub fn quarantine_sized(
        &mut self,
        raw: &[u8],
        size: u64,
        error: &str,
        origin: &Origin,
        received_at: i64,
    ) -> Result<Outcome> {
        let size = i64::try_from(size).unwrap_or(i64::MAX);
        self.write(|c| {
            let sha = hex(&sha256(raw));
            let (uidvalidity, uid) = origin.imap.as_ref().map_or((0, 0), |p| (p.uidvalidity, p.uid));
            c.execute(
                "INSERT OR IGNORE INTO quarantine (source, uidvalidity, uid, error, sha256, size, raw, received_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![origin.source, uidvalidity, uid, error, sha, size, raw, received_at],
            )?;
            let id: i64 = c.query_row("SELECT id FROM quarantine WHERE sha256 = ?1", [&sha], |r| r.get(0))?;
            advance(c, origin.imap.as_ref())?;
            Ok(Outcome::Quarantined(id))
        })
    }

    /// The cursor of a mailbox folder.
    pub fn cursor(&self, mailbox: &str, folder: &str) -> Result<Option<Cursor>> {
        Ok(self
            .conn
            .query_row(
                "SELECT uidvalidity, last_uid, backlog_until, done_uid FROM cursor
                 WHERE mailbox = ?1 AND folder = ?2",
                params![mailbox, folder],
                |r| {
                    Ok(Cursor {
                        uidvalidity: r.get(0)?,
                        last_uid: r.get(1)?,
                        backlog_until: r.get(2)?,
                        done_uid: r.get(3)?,
                    })
                },
            )
            .optional()?)
    }

    /// Replaces a folder's cursor (first run, or a new UIDVALIDITY).
    pub fn reset_cursor(&mut self, mailbox: &str, folder: &str, cursor: Cursor) -> Result<()> {
        self.write(|c| {
            c.execute(
                "INSERT INTO cursor (mailbox, folder, uidvalidity, last_uid, backlog_until, done_uid, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (mailbox, folder) DO UPDATE SET uidvalidity = excluded.uidvalidity,
                   last_uid = excluded.last_uid, backlog_until = excluded.backlog_until,
                   done_uid = excluded.done_uid, updated_at = excluded.updated_at",
                params![
                    mailbox,
                    folder,
                    cursor.uidvalidity,
                    cursor.last_uid,
                    cursor.backlog_until,
                    cursor.done_uid,
                    crate::time::now()
                ],
            )?;
            Ok(())
        })
    }

    /// Records that the post-action of every stored UID up to `uid` is confirmed.
    pub fn set_done(
        &mut self,
        mailbox: &str,
        folder: &str,
        uidvalidity: u32,
        uid: u32,
    ) -> Result<()> {
        self.write(|c| {
            c.execute(
                "UPDATE cursor SET done_uid = max(done_uid, ?4)
                 WHERE mailbox = ?1 AND folder = ?2 AND uidvalidity = ?3",
                params![mailbox, folder, uidvalidity, uid],
            )?;
            Ok(())
        })
    }

    /// Tickets, newest activity first. `status` is `open`, `closed` or `all`.
    pub fn tickets(&self, status: &str) -> Result<Vec<TicketRow>> {
        let mut s = self.conn.prepare(
            "SELECT t.id, t.subject, t.status, t.customer, t.customer_name, t.mailbox, t.created_at,
                    t.updated_at, (SELECT count(*) FROM message m WHERE m.ticket_id = t.id)
             FROM ticket t WHERE ?1 = 'all' OR t.status = ?1 ORDER BY t.updated_at DESC, t.id DESC",
        )?;
        let rows = s.query_map([status], ticket_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// One ticket with its messages, oldest first.
    pub fn ticket(&self, id: i64) -> Result<Option<(TicketRow, Vec<MessageRow>)>> {
        let t = self
            .conn
            .query_row(
                "SELECT t.id, t.subject, t.status, t.customer, t.customer_name, t.mailbox, t.created_at,
                        t.updated_at, (SELECT count(*) FROM message m WHERE m.ticket_id = t.id)
                 FROM ticket t WHERE t.id = ?1",
                [id],
                ticket_row,
            )
            .optional()?;
        let Some(t) = t else { return Ok(None) };
        let mut s = self.conn.prepare(
            "SELECT id, message_id, direction, from_addr, from_name, to_addrs, cc_addrs, subject, date,
                    kind, reasons, body_text
             FROM message WHERE ticket_id = ?1 ORDER BY date, id",
        )?;
        let mut messages: Vec<MessageRow> = s
            .query_map([id], |r| {
                Ok(MessageRow {
                    id: r.get(0)?,
                    message_id: r.get(1)?,
                    direction: r.get(2)?,
                    from: r.get(3)?,
                    from_name: r.get(4)?,
                    to: from_json_list(&r.get::<_, String>(5)?),
                    cc: from_json_list(&r.get::<_, String>(6)?),
                    subject: r.get(7)?,
                    date: r.get(8)?,
                    kind: r.get(9)?,
                    reasons: from_json_list(&r.get::<_, String>(10)?),
                    text: r.get(11)?,
                    attachments: Vec::new(),
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
        let mut a = self.conn.prepare_cached(
            "SELECT filename, content_type, size, sha256 FROM attachment WHERE message_id = ?1 ORDER BY id",
        )?;
        for m in &mut messages {
            m.attachments = a
                .query_map([m.id], |r| {
                    Ok(AttachmentRow {
                        filename: r.get(0)?,
                        content_type: r.get(1)?,
                        size: r.get(2)?,
                        sha256: r.get(3)?,
                    })
                })?
                .collect::<rusqlite::Result<_>>()?;
        }
        Ok(Some((t, messages)))
    }

    /// The exact bytes of a stored message.
    pub fn raw(&self, message_row: i64) -> Result<Option<Vec<u8>>> {
        let row: Option<(String, Vec<u8>, i64)> = self
            .conn
            .query_row(
                "SELECT codec, raw, size FROM message WHERE id = ?1",
                [message_row],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        row.map(|(codec, data, size)| decompress(&codec, &data, usize::try_from(size).unwrap_or(0)))
            .transpose()
    }

    /// The quarantine, newest first.
    pub fn quarantined(&self) -> Result<Vec<QuarantineRow>> {
        let mut s = self.conn.prepare(
            "SELECT id, source, uid, error, size, received_at FROM quarantine ORDER BY id DESC",
        )?;
        let rows = s.query_map([], |r| {
            Ok(QuarantineRow {
                id: r.get(0)?,
                source: r.get(1)?,
                uid: r.get(2)?,
                error: r.get(3)?,
                size: r.get(4)?,
                received_at: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}

fn ticket_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<TicketRow> {
    Ok(TicketRow {
        id: r.get(0)?,
        subject: r.get(1)?,
        status: r.get(2)?,
        customer: r.get(3)?,
        customer_name: r.get(4)?,
        mailbox: r.get(5)?,
        created_at: r.get(6)?,
        updated_at: r.get(7)?,
        messages: r.get(8)?,
    })
}

/// Whether `addr` already takes part in ticket `t`: its customer, or the sender of one of
/// its inbound messages. (Outbound rows do not count: our own address takes part in every
/// ticket we answer.)
fn takes_part(c: &Connection, t: i64, addr: &str) -> Result<bool> {
    if addr.is_empty() {
        return Ok(false);
    }
    Ok(c.prepare_cached(
        "SELECT EXISTS (SELECT 1 FROM ticket WHERE id = ?1 AND customer = ?2)
             OR EXISTS (SELECT 1 FROM message WHERE ticket_id = ?1 AND from_addr = ?2 AND direction = 'in')",
    )?
    .query_row(params![t, addr], |r| r.get(0))?)
}

/// [`takes_part`], or was a To/Cc recipient of one of the ticket's inbound messages (a
/// colleague on a reply-all thread). Only for the sender of a message: a Cc costs nothing to
/// add, and our own address is a recipient of every inbound message.
fn sender_takes_part(c: &Connection, t: i64, addr: &str) -> Result<bool> {
    if addr.is_empty() {
        return Ok(false);
    }
    if takes_part(c, t, addr)? {
        return Ok(true);
    }
    // to_addrs / cc_addrs are JSON arrays of strings: match the quoted address.
    let quoted = serde_json::to_string(addr).unwrap_or_default();
    Ok(c.prepare_cached(
        "SELECT EXISTS (SELECT 1 FROM message WHERE ticket_id = ?1 AND direction = 'in'
                        AND (instr(to_addrs, ?2) > 0 OR instr(cc_addrs, ?2) > 0))",
    )?
    .query_row(params![t, quoted], |r| r.get(0))?)
}

/// Whether someone from `addr`'s domain takes part in ticket `t`.
fn domain_takes_part(c: &Connection, t: i64, addr: &str) -> Result<bool> {
    let Some((_, domain)) = addr.rsplit_once('@').filter(|(_, d)| !d.is_empty()) else {
        return Ok(false);
    };
    let pattern = format!("%@{}", domain.replace(['%', '_'], ""));
    Ok(c.prepare_cached(
        "SELECT EXISTS (SELECT 1 FROM ticket WHERE id = ?1 AND customer LIKE ?2)
             OR EXISTS (SELECT 1 FROM message WHERE ticket_id = ?1 AND from_addr LIKE ?2 AND direction = 'in')",
    )?
    .query_row(params![t, pattern], |r| r.get(0))?)
}

fn ticket_exists(c: &Connection, t: i64) -> Result<Option<(String, i64)>> {
    Ok(
        c.prepare_cached("SELECT status, updated_at FROM ticket WHERE id = ?1")?
            .query_row([t], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?,
    )
}

/// Where threading put a message, and the notes worth keeping with it.
#[derive(Debug, Default)]
struct Placement {
    ticket: Option<i64>,
    reasons: Vec<String>,
}

/// The ticket of an id: a keyed id of ours (valid ones only; a forged one is noted and
/// ignored), else the message we hold under that id (inbound or outbound). With the date of
/// the newest matching message, so the most recent match can win.
fn ticket_of_id(
    c: &Connection,
    key: &[u8],
    id: &str,
    notes: &mut Vec<String>,
) -> Result<Option<(i64, i64)>> {
    match thread::verify_own_id(key, id) {
        thread::OwnId::Valid(t) => {
            if ticket_exists(c, t)?.is_some() {
                let at: i64 = c
                    .prepare_cached(
                        "SELECT coalesce(max(date), 0) FROM message WHERE ticket_id = ?1",
                    )?
                    .query_row([t], |r| r.get(0))?;
                return Ok(Some((t, at)));
            }
            return Ok(None);
        }
        thread::OwnId::Forged(t) => {
            let note = format!("thread: forged mailticket id <{id}> for ticket {t} ignored");
            if !notes.contains(&note) {
                notes.push(note);
            }
            return Ok(None);
        }
        thread::OwnId::NotOurs => {}
    }
    Ok(c.prepare_cached(
        "SELECT ticket_id, max(date) FROM message WHERE message_id = ?1
         GROUP BY ticket_id ORDER BY max(date) DESC, ticket_id DESC LIMIT 1",
    )?
    .query_row([id], |r| Ok((r.get(0)?, r.get(1)?)))
    .optional()?)
}

/// The most recent of the tickets `ids` lead to.
fn newest_match(
    c: &Connection,
    key: &[u8],
    ids: &[String],
    notes: &mut Vec<String>,
) -> Result<Option<i64>> {
    let mut best: Option<(i64, i64)> = None;
    for id in ids {
        if let Some((t, at)) = ticket_of_id(c, key, id, notes)?
            && best.is_none_or(|(_, b)| at > b)
        {
            best = Some((t, at));
        }
    }
    Ok(best.map(|(t, _)| t))
}

/// Finds the ticket a message belongs to, in this order:
///
/// 1. In-Reply-To and every References id against every id we know (messages we hold,
///    inbound or outbound, and our keyed outbound ids even when their row is gone; a forged
///    keyed id is ignored): the most recent match wins.
/// 2. A ticket whose messages named this message as their parent (it arrived late).
/// 3. A ticket whose messages point at the same id, when we never saw that message itself:
///    only when the customer takes part in it, so two strangers answering the same unknown
///    mail stay two tickets.
/// 4. The subject tag, when the customer (or a Cc, or with `trust-tag-domain` the customer's
///    domain) takes part in that ticket; else the reasons say why it was not trusted.
/// 5. With `subject-days`: the same normalised subject from the same sender within N days.
fn find_ticket(
    c: &Connection,
    p: &ParsedMessage,
    customer: &str,
    rules: &Rules,
    key: &[u8],
) -> Result<Placement> {
    let mut out = Placement::default();
    let parents = thread::parent_ids(p);
    out.ticket = newest_match(c, key, &parents, &mut out.reasons)?;
    if out.ticket.is_some() {
        return Ok(out);
    }
    let newest_ref = |id: &str, filter: &dyn Fn(i64) -> Result<bool>| -> Result<Option<i64>> {
        let ts: Vec<i64> = c
            .prepare_cached(
                "SELECT r.ticket_id FROM msgid_ref r JOIN ticket t ON t.id = r.ticket_id
                 WHERE r.msgid = ?1 ORDER BY t.updated_at DESC, t.id DESC",
            )?
            .query_map([id], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        for t in ts {
            if filter(t)? {
                return Ok(Some(t));
            }
        }
        Ok(None)
    };
    if let Some(t) = newest_ref(&p.message_id, &|_| Ok(true))? {
        out.ticket = Some(t);
        return Ok(out);
    }
    let from = p.from_addr();
    for id in &parents {
        let t = newest_ref(id, &|t| {
            Ok(sender_takes_part(c, t, customer)? || sender_takes_part(c, t, from)?)
        })?;
        if t.is_some() {
            out.ticket = t;
            return Ok(out);
        }
    }
    let marker = &rules.threading.tag;
    if let Some(tag) = thread::subject_tag_with(&p.subject, marker) {
        let shown = format!("[{marker}{tag}]");
        if ticket_exists(c, tag)?.is_none() {
            out.reasons.push(format!(
                "thread: subject tag {shown} ignored: no such ticket"
            ));
        } else if sender_takes_part(c, tag, customer)? || sender_takes_part(c, tag, from)? {
            out.ticket = Some(tag);
            out.reasons
                .push(format!("thread: subject tag {shown}: sender takes part"));
            return Ok(out);
        } else if let Some(cc) =
            p.cc.iter()
                .find(|cc| takes_part(c, tag, &cc.address).unwrap_or(false))
        {
            out.ticket = Some(tag);
            out.reasons.push(format!(
                "thread: subject tag {shown}: cc {} takes part",
                cc.address
            ));
            return Ok(out);
        } else if rules.threading.trust_tag_domain && domain_takes_part(c, tag, customer)? {
            out.ticket = Some(tag);
            out.reasons.push(format!(
                "thread: subject tag {shown}: sender's domain takes part"
            ));
            return Ok(out);
        } else {
            out.reasons.push(format!(
                "thread: subject tag {shown} not trusted: {} takes no part in ticket {tag}",
                if customer.is_empty() {
                    "the sender"
                } else {
                    customer
                }
            ));
        }
    }
    let days = i64::from(rules.threading.subject_days);
    if days > 0 && !from.is_empty() {
        let subject = thread::normalize_subject_with(&p.subject, marker);
        let date = p.date.unwrap_or_else(crate::time::now);
        if !subject.is_empty() {
            let t: Option<i64> = c
                .prepare_cached(
                    "SELECT m.ticket_id FROM message m JOIN ticket t ON t.id = m.ticket_id
                     WHERE m.from_addr = ?1 AND m.date BETWEEN ?3 - ?4 AND ?3 AND t.subject = ?2
                     ORDER BY m.date DESC LIMIT 1",
                )?
                .query_row(params![from, subject, date, days * 86_400], |r| r.get(0))
                .optional()?;
            if let Some(t) = t {
                out.ticket = Some(t);
                out.reasons.push(format!(
                    "thread: same subject from {from} within {days} days"
                ));
            }
        }
    }
    Ok(out)
}

/// Finds the ticket of the message a bounce reports on: its embedded original's id, the
/// original's and the bounce's own In-Reply-To/References, then a subject tag (of the bounce
/// or of the original) when a failed or original recipient takes part in that ticket.
fn find_bounce_ticket(
    c: &Connection,
    p: &ParsedMessage,
    failed: &[String],
    rules: &Rules,
    key: &[u8],
) -> Result<Placement> {
    let mut out = Placement::default();
    let original = p.original_anywhere();
    let mut ids: Vec<String> = Vec::new();
    if let Some(o) = &original {
        ids.extend(o.message_id.iter().cloned());
    }
    if let Some(t) = newest_match(c, key, &ids, &mut out.reasons)? {
        out.ticket = Some(t);
        out.reasons
            .push("bounce: original message found by its Message-ID".into());
        return Ok(out);
    }
    let mut parents: Vec<String> = original.iter().flat_map(|o| o.parents.clone()).collect();
    parents.extend(thread::parent_ids(p));
    if let Some(t) = newest_match(c, key, &parents, &mut out.reasons)? {
        out.ticket = Some(t);
        out.reasons
            .push("bounce: original message found by its references".into());
        return Ok(out);
    }
    let marker = &rules.threading.tag;
    let subjects = [
        Some(p.subject.as_str()),
        original.as_ref().map(|o| o.subject.as_str()),
    ];
    let mut who: Vec<&str> = failed.iter().map(String::as_str).collect();
    if let Some(o) = &original {
        who.extend(o.recipients.iter().map(|r| r.address.as_str()));
    }
    for subject in subjects.into_iter().flatten() {
        if let Some(tag) = thread::subject_tag_with(subject, marker)
            && ticket_exists(c, tag)?.is_some()
        {
            for w in &who {
                if sender_takes_part(c, tag, w)? {
                    out.ticket = Some(tag);
                    out.reasons.push(format!(
                        "bounce: subject tag [{marker}{tag}]: {w} takes part"
                    ));
                    return Ok(out);
                }
            }
        }
    }
    out.reasons
        .push("bounce: original message unknown; kept as a closed ticket".into());
    Ok(out)
}

impl Store {
    /// Whether `address` bounced recently enough that nothing automatic may go to it at
    /// `now` (Unix seconds).
    pub fn is_undeliverable(&self, address: &str, now: i64) -> Result<bool> {
        Ok(self.conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM undeliverable WHERE address = ?1 AND expires_at > ?2)",
            params![address.trim().to_ascii_lowercase(), now],
            |r| r.get(0),
        )?)
    }

    /// Sets a ticket's status (`open` or `closed`). False when there is no such ticket.
    pub fn set_status(&mut self, ticket: i64, status: &str) -> Result<bool> {
        if !matches!(status, "open" | "closed") {
            return Err(Error::Other(format!("unknown ticket status {status:?}")));
        }
        self.write(|c| {
            Ok(c.execute(
                "UPDATE ticket SET status = ?2, updated_at = max(updated_at, ?3) WHERE id = ?1",
                params![ticket, status, crate::time::now()],
            )? == 1)
        })
    }
}

/// The store's own judgements on top of [`crate::classify::classify`]: a Message-ID that
/// this store generated coming back in, and too many messages from one sender too fast.
fn loop_checks(
    c: &Connection,
    p: &ParsedMessage,
    rules: &Rules,
    key: &[u8],
) -> Result<Vec<String>> {
    let mut out = Vec::new();
    if let thread::OwnId::Valid(t) = thread::verify_own_id(key, &p.message_id) {
        out.push(format!("message-id: generated by this store (ticket {t})"));
    }
    let max = i64::from(rules.classify.loop_messages);
    let window = i64::try_from(rules.classify.loop_window).unwrap_or(i64::MAX / 2);
    if let (true, Some(date), from) = (max > 0, p.date, p.from_addr())
        && !from.is_empty()
    {
        let n: i64 = c
            .prepare_cached(
                "SELECT count(*) FROM message WHERE from_addr = ?1 AND date > ?2 - ?3 AND date <= ?2",
            )?
            .query_row(params![from, date, window], |r| r.get(0))?;
        if n >= max {
            out.push(format!(
                "rate: more than {max} messages from {from} within {window} s"
            ));
        }
    }
    Ok(out)
}

/// Stores one message inside the caller's transaction; the flag says whether an
/// acknowledgement was queued with it.
fn ingest_in(
    c: &Connection,
    m: &Incoming<'_>,
    rules: &Rules,
    key: &[u8],
) -> Result<(Outcome, bool)> {
    use crate::classify::Kind;
    use crate::config::OnClosed;

    let p = m.parsed;
    let dup: Option<i64> = c
        .prepare_cached("SELECT ticket_id FROM message WHERE message_id = ?1 AND fingerprint = ?2")?
        .query_row(params![p.message_id, &p.fingerprint[..]], |r| r.get(0))
        .optional()?;
    if let Some(ticket) = dup {
        advance(c, m.origin.imap.as_ref())?;
        return Ok((Outcome::Duplicate(ticket), false));
    }

    let mut kind = m.class.kind;
    let mut reasons = m.class.reasons.clone();
    let loops = loop_checks(c, p, rules, key)?;
    if !loops.is_empty() {
        kind = Kind::Loop;
        reasons.splice(0..0, loops);
    }

    let date = p.date.unwrap_or(m.received_at);
    // A ticket's times are mailticket's own (when it learnt of it); each message keeps the
    // date its sender gave it.
    let now = crate::time::now();
    let (customer, forwarded) = thread::customer(p, &rules.threading.forwarders);
    reasons.extend(forwarded);
    let failed = if kind == Kind::Bounce {
        p.failed_recipients()
    } else {
        Vec::new()
    };
    let placement = if kind == Kind::Bounce {
        find_bounce_ticket(c, p, &failed, rules, key)?
    } else {
        find_ticket(c, p, &customer.address, rules, key)?
    };
    reasons.extend(placement.reasons);

    let mut target = placement.ticket;
    if let Some(t) = target
        && let Some((status, updated_at)) = ticket_exists(c, t)?
        && status == "closed"
        && kind == Kind::Normal
    {
        let idle_days = (now - updated_at) / 86_400;
        let reopen = match rules.threading.on_closed {
            OnClosed::Reopen => true,
            OnClosed::NewTicket => false,
            OnClosed::NewTicketAfterDays(d) => idle_days < i64::from(d),
        };
        if reopen {
            reasons.push(format!("thread: closed ticket {t} reopened"));
        } else {
            reasons.push(format!("thread: ticket {t} is closed; new ticket"));
            target = None;
        }
    }

    let (ticket, outcome) = match target {
        Some(t) => {
            c.prepare_cached(
                "UPDATE ticket SET updated_at = max(updated_at, ?2),
                   status = CASE WHEN ?3 THEN 'open' ELSE status END WHERE id = ?1",
            )?
            .execute(params![t, now, kind == Kind::Normal])?;
            (t, Outcome::Threaded(t))
        }
        None => {
            // A bounce we cannot place and mail from ourselves are kept, never worked on.
            let status = if matches!(kind, Kind::Bounce | Kind::Loop) {
                "closed"
            } else {
                "open"
            };
            let t: i64 = c
                .prepare_cached(
                    "INSERT INTO ticket (subject, status, customer, customer_name, mailbox, created_at, updated_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6) RETURNING id",
                )?
                .query_row(
                    params![
                        thread::normalize_subject_with(&p.subject, &rules.threading.tag),
                        status,
                        customer.address,
                        customer.name,
                        m.origin.mailbox,
                        now
                    ],
                    |r| r.get(0),
                )?;
            (t, Outcome::Created(t))
        }
    };

    if kind == Kind::Bounce && placement.ticket.is_some() {
        let days = i64::from(rules.classify.undeliverable_days);
        let expires = now.saturating_add(days * 86_400);
        let detail = |addr: &str| {
            p.dsn
                .as_ref()
                .and_then(|d| d.recipients.iter().find(|r| r.final_recipient == addr))
                .map(|r| (r.status.clone(), r.diagnostic.clone()))
                .unwrap_or_default()
        };
        for addr in failed.iter().filter(|_| days > 0) {
            let (status, diagnostic) = detail(addr);
            c.prepare_cached(
                "INSERT INTO undeliverable (address, expires_at, status, diagnostic, ticket_id, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (address) DO UPDATE SET expires_at = max(expires_at, excluded.expires_at),
                   status = excluded.status, diagnostic = excluded.diagnostic,
                   ticket_id = excluded.ticket_id, updated_at = excluded.updated_at",
            )?
            .execute(params![addr, expires, status, diagnostic, ticket, now])?;
            reasons.push(format!(
                "bounce: {addr} undeliverable until {}",
                crate::time::rfc3339(expires)
            ));
        }
    }

    let from = p.from.clone().unwrap_or_default();
    let msg_row: i64 = c
        .prepare_cached(
            "INSERT INTO message (ticket_id, direction, message_id, fingerprint, in_reply_to, refs, from_addr,
                from_name, reply_to, to_addrs, cc_addrs, subject, date, received_at, kind, reasons, body_text,
                source, size, codec, raw)
             VALUES (?1, 'in', ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18,
                'zstd', ?19)
             RETURNING id",
        )?
        .query_row(
            params![
                ticket,
                p.message_id,
                &p.fingerprint[..],
                json_list(&p.in_reply_to),
                json_list(&p.references),
                from.address,
                from.name,
                p.reply_to.as_ref().map_or("", |r| r.address.as_str()),
                json_list(p.to.iter().map(|a| &a.address)),
                json_list(p.cc.iter().map(|a| &a.address)),
                p.subject,
                date,
                m.received_at,
                kind.as_str(),
                json_list(&reasons),
                p.text,
                m.origin.source,
                m.raw.len() as i64,
                m.packed,
            ],
            |r| r.get(0),
        )?;
    for a in &p.attachments {
        c.prepare_cached(
            "INSERT INTO attachment (message_id, filename, content_type, size, sha256)
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )?
        .execute(params![
            msg_row,
            a.filename,
            a.content_type,
            a.size as i64,
            hex(&a.sha256)
        ])?;
    }
    // A bounce we could not place must not pull later mail into its closed ticket.
    if !(kind == Kind::Bounce && placement.ticket.is_none()) {
        let mut refs =
            c.prepare_cached("INSERT OR IGNORE INTO msgid_ref (msgid, ticket_id) VALUES (?1, ?2)")?;
        for id in p.in_reply_to.iter().chain(p.references.iter()) {
            refs.execute(params![id, ticket])?;
        }
    }
    advance(c, m.origin.imap.as_ref())?;
    // The acknowledgement is decided on the final verdict: the store may have found a loop
    // that the message alone did not show.
    let acked = match (outcome, m.ack) {
        (Outcome::Created(t), Some(plan)) => {
            let verdict = crate::classify::Classification {
                kind,
                reasons: reasons.clone(),
                blocks_ack: m.class.blocks_ack.clone(),
            };
            let now = crate::time::now();
            super::outbox::queue_ack(c, plan, p, &verdict, t, &m.origin.mailbox, now, key)?
        }
        _ => false,
    };
    Ok((outcome, acked))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::{Identity, classify};
    use crate::message::parse;

    fn put(s: &mut Store, raw: &str) -> Outcome {
        let p = parse(raw.as_bytes()).unwrap();
        let class = classify(&p, &Identity::default());
        let origin = Origin {
            source: "test".into(),
            mailbox: String::new(),
            imap: None,
        };
        s.ingest(&Incoming {
            parsed: &p,
            class: &class,
            raw: raw.as_bytes(),
            packed: &pack(raw.as_bytes()).unwrap(),
            origin: &origin,
            ack: None,
            received_at: 0,
        })
        .unwrap()
    }

    fn msg(id: &str, headers: &str, body: &str) -> String {
        format!(
            "From: a@example.com\r\nSubject: Printer\r\nMessage-ID: <{id}>\r\n{headers}\r\n{body}\r\n"
        )
    }

    #[test]
    fn threads_by_ids_and_dedupes() {
        let mut s = Store::open_in_memory().unwrap();
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
    fn subject_tag_needs_a_participant() {
        let mut s = Store::open_in_memory().unwrap();
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
        let mut s = Store::open_in_memory().unwrap();
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
    fn last(s: &Store, t: i64) -> (String, Vec<String>, String) {
        let (row, msgs) = s.ticket(t).unwrap().unwrap();
        let m = msgs.last().unwrap();
        (m.kind.clone(), m.reasons.clone(), row.status)
    }

    fn created(o: Outcome) -> i64 {
        match o {
            Outcome::Created(t) => t,
            other => panic!("expected a new ticket, got {other:?}"),
        }
    }

    #[test]
    fn keyed_ids_thread_without_their_row_and_forgeries_do_not() {
        let mut s = Store::open_in_memory().unwrap();
        let t = created(put(&mut s, &msg("1@x", "", "first")));
        let ours = s.outbound_message_id(t, "5", "example.com");
        let reply = msg("2@x", &format!("In-Reply-To: <{ours}>\r\n"), "thanks")
            .replace("a@example.com", "someone.else@example.org");
        assert_eq!(put(&mut s, &reply), Outcome::Threaded(t));
        let forged = ours.replace(&format!("mt.{t}.5."), &format!("mt.{t}.6."));
        let stranger = msg("3@x", &format!("In-Reply-To: <{forged}>\r\n"), "hi")
            .replace("a@example.com", "mallory@evil.example");
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
            let mut s = Store::open_in_memory().unwrap();
            let mut rules = Rules::default();
            rules.threading.on_closed = policy;
            s.set_rules(rules);
            let t = created(put(&mut s, &msg("1@x", "", "first")));
            assert!(s.set_status(t, "closed").unwrap());
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
        let mut s = Store::open_in_memory().unwrap();
        let t = created(put(&mut s, first));
        assert_ne!(created(put(&mut s, &again)), t);
        let mut s = Store::open_in_memory().unwrap();
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
        let mut s = Store::open_in_memory().unwrap();
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
        let mut s = Store::open_in_memory().unwrap();
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
        let mut s = Store::open_in_memory().unwrap();
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

    #[test]
    fn raw_round_trips() {
        let mut s = Store::open_in_memory().unwrap();
        let raw = msg("1@x", "", &"line of text\r\n".repeat(100));
        put(&mut s, &raw);
        assert_eq!(s.raw(1).unwrap().unwrap(), raw.as_bytes());
    }
}
