//! Tickets and messages: the per-message transaction, and the queries behind `tickets`,
//! `show` and `quarantine`.

use rusqlite::{Connection, OptionalExtension, params};

use super::Store;
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
        let (outcome, acked) = self.write(|c| {
            let outcome = ingest_in(c, m)?;
            let acked = match (outcome, m.ack) {
                (Outcome::Created(t), Some(plan)) => super::outbox::queue_ack(
                    c,
                    plan,
                    m.parsed,
                    m.class,
                    t,
                    &m.origin.mailbox,
                    crate::time::now(),
                )?,
                _ => false,
            };
            Ok((outcome, acked))
        })?;
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
        self.write(|c| {
            let sha = hex(&sha256(raw));
            let (uidvalidity, uid) = origin.imap.as_ref().map_or((0, 0), |p| (p.uidvalidity, p.uid));
            c.execute(
                "INSERT OR IGNORE INTO quarantine (source, uidvalidity, uid, error, sha256, size, raw, received_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![origin.source, uidvalidity, uid, error, sha, raw.len() as i64, raw, received_at],
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
/// its messages.
fn takes_part(c: &Connection, t: i64, addr: &str) -> Result<bool> {
    Ok(c.prepare_cached(
        "SELECT EXISTS (SELECT 1 FROM ticket WHERE id = ?1 AND customer = ?2)
             OR EXISTS (SELECT 1 FROM message WHERE ticket_id = ?1 AND from_addr = ?2)",
    )?
    .query_row(params![t, addr], |r| r.get(0))?)
}

/// Finds the ticket a message belongs to.
///
/// 1. A message we hold that this one points at (In-Reply-To, References).
/// 2. A ticket whose messages named this message as their parent (it arrived late).
/// 3. A ticket whose messages point at the same id, when we never saw that message itself:
///    only when the sender takes part in it, so two strangers answering the same unknown
///    mail stay two tickets.
/// 4. The `[#N]` subject tag, when the sender takes part in ticket N.
///
/// Among several matches the most recently active ticket wins.
fn find_ticket(c: &Connection, p: &ParsedMessage) -> Result<Option<i64>> {
    let from = p.from.as_ref().map_or("", |m| m.address.as_str());
    let mut found: Vec<i64> = Vec::new();
    let parents = thread::parent_ids(p);
    {
        let mut held =
            c.prepare_cached("SELECT DISTINCT ticket_id FROM message WHERE message_id = ?1")?;
        for id in &parents {
            for t in held.query_map([id], |r| r.get::<_, i64>(0))? {
                found.push(t?);
            }
        }
        let mut refs = c.prepare_cached("SELECT ticket_id FROM msgid_ref WHERE msgid = ?1")?;
        for t in refs.query_map([&p.message_id], |r| r.get::<_, i64>(0))? {
            found.push(t?);
        }
        if found.is_empty() && !from.is_empty() {
            for id in &parents {
                let ts: Vec<i64> = refs
                    .query_map([id], |r| r.get(0))?
                    .collect::<rusqlite::Result<_>>()?;
                for t in ts {
                    if takes_part(c, t, from)? {
                        found.push(t);
                    }
                }
            }
        }
    }
    if found.len() > 1 {
        found.sort_unstable();
        found.dedup();
        let mut latest = c.prepare_cached("SELECT updated_at FROM ticket WHERE id = ?1")?;
        let mut best: Option<(i64, i64)> = None;
        for t in found {
            let at: i64 = latest.query_row([t], |r| r.get(0))?;
            if best.is_none_or(|(_, b)| at > b) {
                best = Some((t, at));
            }
        }
        return Ok(best.map(|(t, _)| t));
    }
    if let Some(&t) = found.first() {
        return Ok(Some(t));
    }
    match thread::subject_tag(&p.subject) {
        Some(tag) if !from.is_empty() && takes_part(c, tag, from)? => Ok(Some(tag)),
        _ => Ok(None),
    }
}

fn ingest_in(c: &Connection, m: &Incoming<'_>) -> Result<Outcome> {
    let p = m.parsed;
    let dup: Option<i64> = c
        .prepare_cached("SELECT ticket_id FROM message WHERE message_id = ?1 AND fingerprint = ?2")?
        .query_row(params![p.message_id, &p.fingerprint[..]], |r| r.get(0))
        .optional()?;
    if let Some(ticket) = dup {
        advance(c, m.origin.imap.as_ref())?;
        return Ok(Outcome::Duplicate(ticket));
    }

    let date = p.date.unwrap_or(m.received_at);
    // A ticket's times are mailticket's own (when it learnt of it); each message keeps the
    // date its sender gave it.
    let now = crate::time::now();
    let is_normal = m.class.kind == crate::classify::Kind::Normal;
    let (ticket, outcome) = match find_ticket(c, p)? {
        Some(t) => {
            c.prepare_cached(
                "UPDATE ticket SET updated_at = max(updated_at, ?2),
                   status = CASE WHEN ?3 THEN 'open' ELSE status END WHERE id = ?1",
            )?
            .execute(params![t, now, is_normal])?;
            (t, Outcome::Threaded(t))
        }
        None => {
            let customer = p.reply_address().cloned().unwrap_or_default();
            let t: i64 = c
                .prepare_cached(
                    "INSERT INTO ticket (subject, status, customer, customer_name, mailbox, created_at, updated_at)
                     VALUES (?1, 'open', ?2, ?3, ?4, ?5, ?5) RETURNING id",
                )?
                .query_row(
                    params![
                        thread::normalize_subject(&p.subject),
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
                m.class.kind.as_str(),
                json_list(&m.class.reasons),
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
    let mut refs =
        c.prepare_cached("INSERT OR IGNORE INTO msgid_ref (msgid, ticket_id) VALUES (?1, ?2)")?;
    for id in p.in_reply_to.iter().chain(p.references.iter()) {
        refs.execute(params![id, ticket])?;
    }
    advance(c, m.origin.imap.as_ref())?;
    Ok(outcome)
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

    #[test]
    fn raw_round_trips() {
        let mut s = Store::open_in_memory().unwrap();
        let raw = msg("1@x", "", &"line of text\r\n".repeat(100));
        put(&mut s, &raw);
        assert_eq!(s.raw(1).unwrap().unwrap(), raw.as_bytes());
    }
}
