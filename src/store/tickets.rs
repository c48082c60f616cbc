//! Tickets and messages: the per-message transaction, and the queries behind `tickets`,
//! `show` and `quarantine`.

use super::db::{Db, Row, params};

use super::codec::{self, RawBytes, decompress};
use super::kinds::{Direction, TicketStatus};
use super::{Store, Tx};
use crate::classify::Kind;
use crate::error::{Error, Result};
use crate::message::{Mailbox, ParsedMessage, hex, sha256};

/// Where a message came from.
#[derive(Debug, Clone)]
pub struct Origin {
    /// `imap:support/INBOX`, `import:PATH` or `ingest`.
    pub source: String,
    /// The mailbox name for new tickets (empty for files).
    pub mailbox: String,
    /// Set for IMAP: the position whose cursor advances with this message.
    pub imap: Option<ImapPos>,
    /// Set for Microsoft Graph: the message's id and the delta link it moves the cursor to.
    pub graph: Option<super::graph::GraphPos>,
}

impl Origin {
    /// Mail with no server cursor to move (a file, standard input, the quarantine): `source`
    /// names it, `mailbox` is the name new tickets get (empty for none).
    pub fn unplaced(source: impl Into<String>, mailbox: impl Into<String>) -> Origin {
        Origin {
            source: source.into(),
            mailbox: mailbox.into(),
            imap: None,
            graph: None,
        }
    }
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
    /// Open or closed.
    pub status: TicketStatus,
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
    /// The kind of the message that opened it: `auto_reply` and `bounce` tickets are
    /// machines talking, not requests.
    pub kind: String,
}

/// Which tickets a listing shows: each field that is set narrows it.
#[derive(Debug, Clone, Default)]
pub struct TicketFilter {
    /// Open or closed.
    pub status: Option<TicketStatus>,
    /// Came in on this mailbox.
    pub mailbox: Option<String>,
    /// The customer's address or name contains this (ASCII case ignored).
    pub customer: Option<String>,
    /// The message that opened it was of this kind.
    pub kind: Option<Kind>,
    /// Active since (Unix seconds): updated at or after.
    pub since: Option<i64>,
    /// A subject or a message text contains this (ASCII case ignored).
    pub text: Option<String>,
    /// At most this many, the most recently active.
    pub limit: Option<u64>,
}

/// The columns [`ticket_row`] reads, over `ticket t`.
const TICKET_COLUMNS: &str = "t.id, t.subject, t.status, t.customer, t.customer_name, t.mailbox,
    t.created_at, t.updated_at, (SELECT count(*) FROM message m WHERE m.ticket_id = t.id),
    COALESCE((SELECT m.kind FROM message m WHERE m.ticket_id = t.id ORDER BY m.id LIMIT 1), 'normal')";

/// `%text%` for LIKE, with LIKE's own wildcards in `text` taken literally (escape `\`).
fn like_pattern(text: &str) -> String {
    let mut p = String::from("%");
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            p.push('\\');
        }
        p.push(c);
    }
    p.push('%');
    p
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
    /// Shown inside the message (an embedded image) rather than attached to it.
    pub inline: bool,
}

/// A message as shown.
#[derive(Debug, Clone)]
pub struct MessageRow {
    /// Row id.
    pub id: i64,
    /// Message-ID without brackets.
    pub message_id: String,
    /// In or out.
    pub direction: Direction,
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
    /// Where it came from: `imap:MAILBOX/FOLDER`, `import:PATH`, `ingest` (see [`Origin`]).
    pub source: String,
    /// The folder's UIDVALIDITY and the message's UID, for IMAP (0 otherwise).
    pub uidvalidity: i64,
    /// See [`MessageRow::uidvalidity`].
    pub uid: i64,
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
    /// The mailbox it came in for (empty when none was named, and for rows quarantined
    /// before schema 17).
    pub mailbox: String,
}

fn json_list(v: impl IntoIterator<Item = impl serde::Serialize>) -> String {
    serde_json::to_string(&v.into_iter().collect::<Vec<_>>()).unwrap_or_else(|_| "[]".into())
}

fn from_json_list(s: &str) -> Vec<String> {
    serde_json::from_str(s).unwrap_or_default()
}

/// Advances the cursor past this message (IMAP or Graph), inside the caller's transaction.
fn advance(c: &Db, origin: &Origin) -> Result<()> {
    if let Some(g) = &origin.graph {
        c.fenced(&g.mailbox)?;
        super::graph::advance(c, g)?;
    }
    let Some(p) = origin.imap.as_ref() else {
        return Ok(());
    };
    c.fenced(&p.mailbox)?;
    if c.hold_advance(&p.mailbox, &p.folder, p.uidvalidity, p.cursor_to) {
        return Ok(());
    }
    move_cursor(c, (&p.mailbox, &p.folder, p.uidvalidity, p.cursor_to))
}

/// Makes the cursor advances a group commit held back (see [`Db::hold_advances`]), in its
/// transaction, before it commits.
pub(super) fn advance_held(c: &Db) -> Result<()> {
    for (mailbox, folder, uidvalidity, to) in c.take_advances() {
        move_cursor(c, (&mailbox, &folder, uidvalidity, to))?;
    }
    Ok(())
}

/// Moves cursor (mailbox, folder, UIDVALIDITY) on to UID `to`, never back.
fn move_cursor(c: &Db, (mailbox, folder, uidvalidity, to): (&str, &str, u32, u32)) -> Result<()> {
    let n = c.execute(
        "UPDATE cursor SET last_uid = GREATEST(last_uid, ?4), updated_at = ?5
             WHERE mailbox = ?1 AND folder = ?2 AND uidvalidity = ?3",
        params![mailbox, folder, uidvalidity, to, crate::time::now()],
    )?;
    if n != 1 {
        return Err(Error::Internal(format!(
            "no cursor for {mailbox}/{folder} at UIDVALIDITY {uidvalidity}"
        )));
    }
    Ok(())
}

impl Store {
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
        crate::store::sql("quarantining a message", || {
            let size = i64::try_from(size).unwrap_or(i64::MAX);
            self.write(|c| {
                let sha = hex(&sha256(raw));
                let (uidvalidity, uid) = origin.imap.as_ref().map_or((0, 0), |p| (p.uidvalidity, p.uid));
                c.execute(
                    "INSERT INTO quarantine (source, uidvalidity, uid, error, sha256, size, raw, received_at, mailbox)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) ON CONFLICT DO NOTHING",
                    params![origin.source, uidvalidity, uid, error, sha, size, raw, received_at, origin.mailbox],
                )?;
                let id: i64 = c.query_row("SELECT id FROM quarantine WHERE sha256 = ?1", params![&sha], |r| r.get(0))?;
                advance(c, origin)?;
                Ok(Outcome::Quarantined(id))
            })
        })
    }

    /// [`Store::quarantine_sized`] for a message in a spool file (`path` for errors), of
    /// which `size` bytes were on the server: the bytes go from the file to `quarantine_part`
    /// rows a piece at a time, never held whole.
    pub fn quarantine_spool(
        &mut self,
        file: &std::fs::File,
        path: &std::path::Path,
        size: u64,
        error: &str,
        origin: &Origin,
        received_at: i64,
    ) -> Result<Outcome> {
        let sha = hex(&file_sha256(file, path)?);
        crate::store::sql("quarantining a message", || {
            let size = i64::try_from(size).unwrap_or(i64::MAX);
            self.write(|c| {
                let (uidvalidity, uid) = origin.imap.as_ref().map_or((0, 0), |p| (p.uidvalidity, p.uid));
                let new = c.execute(
                    "INSERT INTO quarantine (source, uidvalidity, uid, error, sha256, size, raw, received_at, mailbox)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) ON CONFLICT DO NOTHING",
                    params![origin.source, uidvalidity, uid, error, sha, size, &[][..], received_at, origin.mailbox],
                )? == 1;
                let id: i64 = c.query_row("SELECT id FROM quarantine WHERE sha256 = ?1", params![&sha], |r| r.get(0))?;
                if new {
                    let mut seq = 0i64;
                    crate::spool::each_piece(file, path, SPOOL_READ, |piece| {
                        seq += 1;
                        c.execute(
                            "INSERT INTO quarantine_part (quarantine, seq, raw) VALUES (?1, ?2, ?3)",
                            params![id, seq, piece],
                        )?;
                        Ok(())
                    })?;
                }
                advance(c, origin)?;
                Ok(Outcome::Quarantined(id))
            })
        })
    }

    /// The cursor of a mailbox folder.
    pub fn cursor(&self, mailbox: &str, folder: &str) -> Result<Option<Cursor>> {
        crate::store::sql("reading the cursor", || {
            self.conn.query_opt(
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
        })
    }

    /// Replaces a folder's cursor (first run, or a new UIDVALIDITY).
    pub fn reset_cursor(&mut self, mailbox: &str, folder: &str, cursor: Cursor) -> Result<()> {
        crate::store::sql("resetting the cursor", || {
            self.write(|c| {
                c.fenced(mailbox)?;
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
        crate::store::sql("recording finished post-actions", || {
            self.write(|c| {
                c.execute(
                    "UPDATE cursor SET done_uid = GREATEST(done_uid, ?4)
                     WHERE mailbox = ?1 AND folder = ?2 AND uidvalidity = ?3",
                    params![mailbox, folder, uidvalidity, uid],
                )?;
                Ok(())
            })
        })
    }

    /// Tickets with `status` (all when `None`), newest activity first.
    pub fn tickets(&self, status: Option<TicketStatus>) -> Result<Vec<TicketRow>> {
        self.tickets_where(&TicketFilter {
            status,
            ..TicketFilter::default()
        })
    }

    /// The tickets `f` lets through, newest activity first.
    pub fn tickets_where(&self, f: &TicketFilter) -> Result<Vec<TicketRow>> {
        crate::store::sql("listing tickets", || {
            let s = &format!(
                "SELECT * FROM (SELECT {TICKET_COLUMNS} AS kind FROM ticket t
                 WHERE (CAST(?1 AS TEXT) IS NULL OR t.status = ?1)
                   AND (CAST(?2 AS TEXT) IS NULL OR t.mailbox = ?2)
                   AND (CAST(?3 AS TEXT) IS NULL OR t.customer LIKE ?3 ESCAPE '\\' OR t.customer_name LIKE ?3 ESCAPE '\\')
                   AND (CAST(?5 AS BIGINT) IS NULL OR t.updated_at >= ?5)
                   AND (CAST(?6 AS TEXT) IS NULL OR t.subject LIKE ?6 ESCAPE '\\' OR EXISTS (
                        SELECT 1 FROM message m WHERE m.ticket_id = t.id
                        AND (m.subject LIKE ?6 ESCAPE '\\' OR m.body_text LIKE ?6 ESCAPE '\\')))
                 ORDER BY t.updated_at DESC, t.id DESC) AS listed
                 WHERE CAST(?4 AS TEXT) IS NULL OR kind = CAST(?4 AS TEXT)
                 LIMIT ?7"
            );
            let limit = f
                .limit
                .and_then(|n| i64::try_from(n).ok())
                .unwrap_or(i64::MAX);
            let rows = self.conn.query_map(
                s,
                params![
                    f.status,
                    f.mailbox,
                    f.customer.as_deref().map(like_pattern),
                    f.kind.map(Kind::as_str),
                    f.since,
                    f.text.as_deref().map(like_pattern),
                    limit
                ],
                ticket_row,
            )?;
            Ok(rows)
        })
    }

    /// One ticket with its messages, oldest first.
    pub fn ticket(&self, id: i64) -> Result<Option<(TicketRow, Vec<MessageRow>)>> {
        crate::store::sql("reading a ticket", || {
            let Some(t) = ticket_on(&self.conn, id)? else {
                return Ok(None);
            };
            Ok(Some((t, messages_on(&self.conn, "ticket_id", id)?)))
        })
    }

    /// The ticket holding a message with this Message-ID (without angle brackets), for
    /// `show`; the oldest when several do.
    pub fn ticket_with_message(&self, message_id: &str) -> Result<Option<i64>> {
        crate::store::sql("looking up a Message-ID", || {
            self.conn.query_opt(
                "SELECT ticket_id FROM message WHERE message_id = ?1 ORDER BY id LIMIT 1",
                params![message_id],
                |r| r.get(0),
            )
        })
    }

    /// The exact bytes of a stored message, to read: one kept in parts ([`codec::PARTS`]) is
    /// read a part at a time and decompressed as it is read, never held whole; any other is
    /// (at most 2 MiB) decompressed first. `None` when there is no such message. An error
    /// while reading (the store's, or damaged bytes) comes as the reader's error.
    pub fn raw_reader(&self, message_row: i64) -> Result<Option<Box<dyn std::io::Read + '_>>> {
        let codec: Option<String> = crate::store::sql("reading a stored message", || {
            self.conn.query_opt(
                "SELECT codec FROM message WHERE id = ?1",
                params![message_row],
                |r| r.get(0),
            )
        })?;
        match codec.as_deref() {
            None => Ok(None),
            Some(codec::PARTS) => {
                let parts = RawParts {
                    store: self,
                    message_row,
                    seq: i64::MIN,
                    part: std::io::Cursor::new(Vec::new()),
                };
                let zstd = zstd::stream::read::Decoder::new(parts)
                    .map_err(|e| Error::Codec(format!("zstd: {e}")))?;
                Ok(Some(Box::new(zstd)))
            }
            Some(_) => Ok(self
                .raw(message_row)?
                .map(|b| Box::new(std::io::Cursor::new(b)) as Box<dyn std::io::Read>)),
        }
    }

    /// The exact bytes of a stored message (one kept in parts is put together in memory).
    pub fn raw(&self, message_row: i64) -> Result<Option<Vec<u8>>> {
        crate::store::sql("reading a stored message", || {
            let row: Option<(String, Vec<u8>, i64)> = self.conn.query_opt(
                "SELECT codec, raw, size FROM message WHERE id = ?1",
                params![message_row],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )?;
            let Some((codec, mut data, size)) = row else {
                return Ok(None);
            };
            if codec == codec::PARTS {
                let parts: Vec<Vec<u8>> = self.conn.query_map(
                    "SELECT raw FROM raw_part WHERE message = ?1 ORDER BY seq",
                    params![message_row],
                    |r| r.get(0),
                )?;
                data = parts.concat();
            }
            decompress(&codec, &data, usize::try_from(size).unwrap_or(0)).map(Some)
        })
    }
}

/// The compressed parts of a message kept in `raw_part` rows, read one row at a time.
struct RawParts<'s> {
    store: &'s Store,
    message_row: i64,
    /// The `seq` of the part in `part`.
    seq: i64,
    part: std::io::Cursor<Vec<u8>>,
}

impl std::io::Read for RawParts<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        loop {
            let n = self.part.read(out)?;
            if n > 0 || out.is_empty() {
                return Ok(n);
            }
            let next: Option<(i64, Vec<u8>)> =
                crate::store::sql("reading a stored message", || {
                    self.store.conn.query_opt(
                        "SELECT seq, raw FROM raw_part WHERE message = ?1 AND seq > ?2
                     ORDER BY seq LIMIT 1",
                        params![self.message_row, self.seq],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                })
                .map_err(std::io::Error::other)?;
            let Some((seq, part)) = next else {
                return Ok(0);
            };
            self.seq = seq;
            self.part = std::io::Cursor::new(part);
        }
    }
}

/// Ticket `id` as listed, read through `c`.
pub(super) fn ticket_on(c: &Db, id: i64) -> Result<Option<TicketRow>> {
    c.query_opt(
        &format!("SELECT {TICKET_COLUMNS} FROM ticket t WHERE t.id = ?1"),
        params![id],
        ticket_row,
    )
}

/// The messages whose `column` (`ticket_id` or `id`) is `value`, oldest first, with their
/// attachments' index.
pub(super) fn messages_on(c: &Db, column: &str, value: i64) -> Result<Vec<MessageRow>> {
    let column = if column == "id" { "id" } else { "ticket_id" };
    let s = &format!(
        "SELECT id, message_id, direction, from_addr, from_name, to_addrs, cc_addrs, subject, date,
                kind, reasons, body_text, source, uidvalidity, uid
         FROM message WHERE {column} = ?1 ORDER BY date, id"
    );
    let mut messages: Vec<MessageRow> = c.query_map(s, params![value], |r| {
        Ok(MessageRow {
            id: r.get(0)?,
            message_id: r.get(1)?,
            direction: r.get(2)?,
            from: r.get(3)?,
            from_name: r.get(4)?,
            to: from_json_list(&r.get::<String>(5)?),
            cc: from_json_list(&r.get::<String>(6)?),
            subject: r.get(7)?,
            date: r.get(8)?,
            kind: r.get(9)?,
            reasons: from_json_list(&r.get::<String>(10)?),
            text: r.get(11)?,
            attachments: Vec::new(),
            source: r.get(12)?,
            uidvalidity: r.get(13)?,
            uid: r.get(14)?,
        })
    })?;
    let a = "SELECT filename, content_type, size, sha256, inline FROM attachment
         WHERE message_id = ?1 ORDER BY id";
    for m in &mut messages {
        m.attachments = c.query_map(a, params![m.id], |r| {
            Ok(AttachmentRow {
                filename: r.get(0)?,
                content_type: r.get(1)?,
                size: r.get(2)?,
                sha256: r.get(3)?,
                inline: r.get::<i64>(4)? != 0,
            })
        })?;
    }
    Ok(messages)
}

/// Whether `address` (any case, any surrounding space) is marked undeliverable at `now`.
pub(super) fn undeliverable(c: &Db, address: &str, now: i64) -> Result<bool> {
    c.query_row(
        "SELECT EXISTS (SELECT 1 FROM undeliverable WHERE address = ?1 AND expires_at > ?2)",
        params![address.trim().to_ascii_lowercase(), now],
        |r| r.get(0),
    )
}

fn ticket_row(r: &Row<'_>) -> Result<TicketRow> {
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
        kind: r.get(9)?,
    })
}

/// A ticket's status and last activity, as threading's closed-ticket policy needs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TicketState {
    /// Open or closed.
    pub status: TicketStatus,
    /// Unix seconds.
    pub updated_at: i64,
}

/// A new ticket, as the pipeline decided it.
#[derive(Debug)]
pub struct NewTicket<'a> {
    /// Subject without reply prefixes or tag.
    pub subject: &'a str,
    /// Open, or born closed (a bounce we cannot place, mail from ourselves: kept, never
    /// worked on).
    pub status: TicketStatus,
    /// The customer's address and name.
    pub customer: &'a Mailbox,
    /// The mailbox it came in on (empty for files).
    pub mailbox: &'a str,
    /// Unix seconds.
    pub now: i64,
}

/// An inbound message row, as the pipeline decided it.
#[derive(Debug)]
pub struct NewMessage<'a> {
    /// The ticket it belongs to.
    pub ticket: i64,
    /// The parsed fields.
    pub parsed: &'a ParsedMessage,
    /// The final verdict's kind.
    pub kind: Kind,
    /// Every reason recorded with it (classification, threading, bounces).
    pub reasons: &'a [String],
    /// The date its sender gave it, or when it arrived.
    pub date: i64,
    /// When it arrived (INTERNALDATE, file time, or now).
    pub received_at: i64,
    /// Where it came from.
    pub source: &'a str,
    /// Its place in an IMAP folder: UIDVALIDITY and UID (none for files and stdin).
    pub imap: Option<(u32, u32)>,
    /// The exact bytes' length.
    pub size: u64,
    /// The exact bytes: compressed with [`super::pack`], or in a spool file.
    pub raw: RawBytes<'a>,
}

impl NewTicket<'_> {
    /// The ticket as [`Tx::ticket_view`] reads it back once created as row `id` by the
    /// message of kind `kind` (what its `ticket.created` event carries, without reading it
    /// back).
    pub fn shown(&self, id: i64, kind: &str) -> TicketRow {
        TicketRow {
            id,
            subject: self.subject.to_owned(),
            status: self.status,
            customer: self.customer.address.clone(),
            customer_name: self.customer.name.clone(),
            mailbox: self.mailbox.to_owned(),
            created_at: self.now,
            updated_at: self.now,
            messages: 1,
            kind: kind.to_owned(),
        }
    }
}

impl NewMessage<'_> {
    /// The message as [`Tx::message_view`] reads it back once written as row `id` (what
    /// its event carries, without reading it back).
    pub fn shown(&self, id: i64) -> MessageRow {
        let p = self.parsed;
        let (from, from_name) = p.from.as_ref().map_or((String::new(), String::new()), |f| {
            (f.address.clone(), f.name.clone())
        });
        MessageRow {
            id,
            message_id: p.message_id.clone(),
            direction: Direction::In,
            from,
            from_name,
            to: p.to.iter().map(|a| a.address.clone()).collect(),
            cc: p.cc.iter().map(|a| a.address.clone()).collect(),
            subject: p.subject.clone(),
            date: self.date,
            kind: self.kind.as_str().to_owned(),
            reasons: self.reasons.to_vec(),
            text: p.text.clone(),
            attachments: p
                .attachments
                .iter()
                .map(|a| AttachmentRow {
                    filename: a.filename.clone(),
                    content_type: a.content_type.clone(),
                    size: a.size as i64,
                    sha256: hex(&a.sha256),
                    inline: a.inline,
                })
                .collect(),
            source: self.source.to_owned(),
            uidvalidity: self.imap.map_or(0, |(v, _)| i64::from(v)),
            uid: self.imap.map_or(0, |(_, u)| i64::from(u)),
        }
    }
}

/// The duplicate check of every message (see [`Tx::held_message`]).
const HELD_MESSAGE: &str = "SELECT ticket_id, fingerprint = ?2 FROM message WHERE message_id = ?1
     ORDER BY fingerprint = ?2 DESC, date DESC, id DESC LIMIT 1";

/// The reads that threading and the loop checks need, and the plain writes that record what
/// the pipeline decided. Everything runs inside the transaction of [`Store::transaction`].
impl Tx<'_> {
    /// A stored message with this Message-ID: its ticket, and whether it has this content
    /// fingerprint too (then it is the same message). With several, the same content first,
    /// then the newest. One indexed lookup answers both questions.
    pub fn held_message(
        &self,
        message_id: &str,
        fingerprint: &[u8],
    ) -> Result<Option<(i64, bool)>> {
        crate::store::sql("looking for the same message", || {
            self.c
                .query_opt(HELD_MESSAGE, params![message_id, fingerprint], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
        })
    }

    /// How many stored messages `from` sent in the `window` seconds up to `date`.
    pub fn messages_from_within(&self, from: &str, date: i64, window: i64) -> Result<i64> {
        crate::store::sql("counting a sender's messages", || {
            self.c.query_row(
                "SELECT count(*) FROM message WHERE from_addr = ?1 AND date > ?3 AND date <= ?2",
                params![from, date, date.saturating_sub(window)],
                |r| r.get(0),
            )
        })
    }

    /// A ticket's status and last activity; `None` when there is no such ticket.
    pub fn ticket_state(&self, t: i64) -> Result<Option<TicketState>> {
        crate::store::sql("reading a ticket's status", || {
            self.c.query_opt(
                "SELECT status, updated_at FROM ticket WHERE id = ?1",
                params![t],
                |r| {
                    Ok(TicketState {
                        status: r.get(0)?,
                        updated_at: r.get(1)?,
                    })
                },
            )
        })
    }

    /// The date of a ticket's newest message (0 without messages).
    pub fn newest_message_date(&self, t: i64) -> Result<i64> {
        crate::store::sql("reading a ticket's newest message", || {
            self.c.query_row(
                "SELECT coalesce(max(date), 0) FROM message WHERE ticket_id = ?1",
                params![t],
                |r| r.get(0),
            )
        })
    }

    /// The ticket holding a message (inbound or outbound) with this Message-ID, with that
    /// message's date; the newest when several do.
    pub fn ticket_of_message_id(&self, id: &str) -> Result<Option<(i64, i64)>> {
        crate::store::sql("looking up a Message-ID", || {
            self.c.query_opt(
                "SELECT ticket_id, max(date) FROM message WHERE message_id = ?1
                     GROUP BY ticket_id ORDER BY max(date) DESC, ticket_id DESC LIMIT 1",
                params![id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
        })
    }

    /// Tickets whose messages named `id` in In-Reply-To or References, most recently active
    /// first.
    pub fn tickets_referring_to(&self, id: &str) -> Result<Vec<i64>> {
        crate::store::sql("looking up references", || {
            self.c.query_map(
                "SELECT r.ticket_id FROM msgid_ref r JOIN ticket t ON t.id = r.ticket_id
                     WHERE r.msgid = ?1 ORDER BY t.updated_at DESC, t.id DESC",
                params![id],
                |r| r.get(0),
            )
        })
    }

    /// Whether `addr` already takes part in ticket `t`: its customer, or the sender of one of
    /// its inbound messages. (Outbound rows do not count: our own address takes part in every
    /// ticket we answer.)
    pub fn takes_part(&self, t: i64, addr: &str) -> Result<bool> {
        crate::store::sql("checking who takes part", || {
            if addr.is_empty() {
                return Ok(false);
            }
            self.c.query_row(
                "SELECT EXISTS (SELECT 1 FROM ticket WHERE id = ?1 AND customer = ?2)
                     OR EXISTS (SELECT 1 FROM message WHERE ticket_id = ?1 AND from_addr = ?2 AND direction = 'in')", params![t, addr], |r| r.get(0))
        })
    }

    /// [`Tx::takes_part`], or was a To/Cc recipient of one of the ticket's inbound messages
    /// (a colleague on a reply-all thread). Only for the sender of a message: a Cc costs
    /// nothing to add, and our own address is a recipient of every inbound message.
    pub fn sender_takes_part(&self, t: i64, addr: &str) -> Result<bool> {
        crate::store::sql("checking who takes part", || {
            if addr.is_empty() {
                return Ok(false);
            }
            if self.takes_part(t, addr)? {
                return Ok(true);
            }
            // to_addrs / cc_addrs are JSON arrays of strings: match the quoted address.
            let quoted = serde_json::to_string(addr).unwrap_or_default();
            self.c.query_row(
                "SELECT EXISTS (SELECT 1 FROM message WHERE ticket_id = ?1 AND direction = 'in'
                                AND (instr(to_addrs, ?2) > 0 OR instr(cc_addrs, ?2) > 0))",
                params![t, quoted],
                |r| r.get(0),
            )
        })
    }

    /// Whether someone from `addr`'s domain takes part in ticket `t`.
    pub fn domain_takes_part(&self, t: i64, addr: &str) -> Result<bool> {
        crate::store::sql("checking who takes part", || {
            let Some((_, domain)) = addr.rsplit_once('@').filter(|(_, d)| !d.is_empty()) else {
                return Ok(false);
            };
            let pattern = format!("%@{}", domain.replace(['%', '_'], ""));
            self.c.query_row(
                "SELECT EXISTS (SELECT 1 FROM ticket WHERE id = ?1 AND customer LIKE ?2)
                     OR EXISTS (SELECT 1 FROM message WHERE ticket_id = ?1 AND from_addr LIKE ?2 AND direction = 'in')", params![t, pattern], |r| r.get(0))
        })
    }

    /// The ticket of the newest message from `from` within `window` seconds up to `date`
    /// whose ticket has this (normalised) subject.
    pub fn same_subject_from(
        &self,
        from: &str,
        subject: &str,
        date: i64,
        window: i64,
    ) -> Result<Option<i64>> {
        crate::store::sql("looking for the same subject", || {
            self.c.query_opt(
                "SELECT m.ticket_id FROM message m JOIN ticket t ON t.id = m.ticket_id
                     WHERE m.from_addr = ?1 AND m.date BETWEEN ?3 - ?4 AND ?3 AND t.subject = ?2
                     ORDER BY m.date DESC LIMIT 1",
                params![from, subject, date, window],
                |r| r.get(0),
            )
        })
    }

    /// Writes a new ticket; returns its number.
    pub fn create_ticket(&self, t: &NewTicket<'_>) -> Result<i64> {
        crate::store::sql("creating a ticket", || {
            self
                .c
                .insert_id(
                    "INSERT INTO ticket (subject, status, customer, customer_name, mailbox, created_at, updated_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)", params![
                        t.subject,
                        t.status,
                        t.customer.address,
                        t.customer.name,
                        t.mailbox,
                        t.now
                    ])
        })
    }

    /// Records activity on ticket `t` at `now`, reopening it when `reopen`.
    pub fn touch_ticket(&self, t: i64, now: i64, reopen: bool) -> Result<()> {
        crate::store::sql("updating a ticket", || {
            self.c.execute(
                "UPDATE ticket SET updated_at = GREATEST(updated_at, ?2),
                       status = CASE WHEN ?3 THEN 'open' ELSE status END WHERE id = ?1",
                params![t, now, reopen],
            )?;
            Ok(())
        })
    }

    /// Marks `address` undeliverable until `expires` (or later, if it already is).
    pub fn mark_undeliverable(
        &self,
        address: &str,
        expires: i64,
        (status, diagnostic): (&str, &str),
        ticket: i64,
        now: i64,
    ) -> Result<()> {
        crate::store::sql("marking an address undeliverable", || {
            self.c.execute(
                "INSERT INTO undeliverable (address, expires_at, status, diagnostic, ticket_id, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (address) DO UPDATE SET expires_at = GREATEST(undeliverable.expires_at, excluded.expires_at),
                   status = excluded.status, diagnostic = excluded.diagnostic,
                   ticket_id = excluded.ticket_id, updated_at = excluded.updated_at", params![address, expires, status, diagnostic, ticket, now])?;
            Ok(())
        })
    }

    /// Writes an inbound message and its attachments' index; returns the message row.
    pub fn insert_message(&self, m: &NewMessage<'_>) -> Result<i64> {
        crate::store::sql("inserting a message", || {
            let p = m.parsed;
            let from = p.from.clone().unwrap_or_default();
            let (codec, packed) = match m.raw {
                RawBytes::Packed(b, codec) => (codec, b),
                RawBytes::Spooled(..) => (codec::PARTS, &[][..]),
            };
            let row: i64 = self
                .c
                .insert_id(
                    "INSERT INTO message (ticket_id, direction, message_id, fingerprint, in_reply_to, refs, from_addr,
                        from_name, reply_to, to_addrs, cc_addrs, subject, date, received_at, kind, reasons, body_text,
                        source, size, codec, raw, uidvalidity, uid)
                     VALUES (?1, 'in', ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18,
                        ?22, ?19, ?20, ?21)", params![
                        m.ticket,
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
                        m.date,
                        m.received_at,
                        m.kind.as_str(),
                        json_list(m.reasons),
                        p.text,
                        m.source,
                        m.size,
                        packed,
                        m.imap.map_or(0, |(v, _)| i64::from(v)),
                        m.imap.map_or(0, |(_, u)| i64::from(u)),
                        codec,
                    ])?;
            if let RawBytes::Spooled(file, path) = m.raw {
                codec::write_parts(self.c, row, file, path)?;
            }
            let att =
                "INSERT INTO attachment (message_id, filename, content_type, size, sha256, inline)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)";
            for a in &p.attachments {
                self.c.execute(
                    att,
                    params![
                        row,
                        a.filename,
                        a.content_type,
                        a.size as i64,
                        hex(&a.sha256),
                        i64::from(a.inline)
                    ],
                )?;
            }
            Ok(row)
        })
    }

    /// Remembers that ticket `t` named these ids (a parent that arrives late finds it).
    pub fn add_refs<'i>(&self, ids: impl IntoIterator<Item = &'i String>, t: i64) -> Result<()> {
        crate::store::sql("recording references", || {
            let refs =
                "INSERT INTO msgid_ref (msgid, ticket_id) VALUES (?1, ?2) ON CONFLICT DO NOTHING";
            for id in ids {
                self.c.execute(refs, params![id, t])?;
            }
            Ok(())
        })
    }

    /// Advances the cursor past this message (nothing for files).
    pub fn advance(&self, origin: &Origin) -> Result<()> {
        advance(self.c, origin)
    }

    /// The store's key for our keyed Message-IDs.
    pub fn key(&self) -> &[u8] {
        self.key
    }
}

impl Store {
    /// Whether `address` bounced recently enough that nothing automatic may go to it at
    /// `now` (Unix seconds).
    pub fn is_undeliverable(&self, address: &str, now: i64) -> Result<bool> {
        undeliverable(&self.conn, address, now)
    }
}

/// How much of a spool file is read at a time, for the quarantine: one `quarantine_part`.
const SPOOL_READ: usize = 1 << 20;

/// The SHA-256 of a file's bytes, read a piece at a time.
fn file_sha256(file: &std::fs::File, path: &std::path::Path) -> Result<[u8; 32]> {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    crate::spool::each_piece(file, path, SPOOL_READ, |piece| {
        ctx.update(piece);
        Ok(())
    })?;
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::Rules;
    use crate::pipeline::test_support::{msg, put_with};

    fn put(s: &mut Store, raw: &str) -> Outcome {
        put_with(s, &Rules::default(), raw)
    }

    #[test]
    fn once_sqlite_drops_a_groups_transaction_nothing_more_is_written_in_it() {
        let mut s = Store::open_in_memory().unwrap();
        s.begin_group().unwrap();
        put(&mut s, &msg("1@x", "", "first"));
        // What SQLite does by itself on some errors (a full disk): the whole transaction
        // is rolled back under the savepoint.
        let lost = s.write(|c| {
            c.batch("ROLLBACK")?;
            Ok(())
        });
        assert!(lost.is_err());
        // A savepoint now would be a transaction of its own and commit on release.
        let later = s.write(|c| {
            c.batch("INSERT INTO ticket (subject, status, customer, customer_name, mailbox, created_at, updated_at) VALUES ('x', 'open', '', '', '', 0, 0)")?;
            Ok(())
        });
        assert!(later.is_err(), "written outside the group: {later:?}");
        let end = s.end_group().unwrap_err().to_string();
        assert!(end.contains("rolled back"), "{end}");
        assert!(!end.contains("no transaction is active"), "{end}");
        assert!(s.tickets(None).unwrap().is_empty());
        // The next group works as usual.
        s.begin_group().unwrap();
        assert!(matches!(
            put(&mut s, &msg("2@x", "", "second")),
            Outcome::Created(_)
        ));
        s.end_group().unwrap();
        assert_eq!(s.tickets(None).unwrap().len(), 1);
    }

    /// A new empty folder for this test process, and the store file `t.db` in it.
    fn empty_dir(tag: &str) -> (std::path::PathBuf, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("mt-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let db = dir.join("t.db");
        (dir, db)
    }

    #[test]
    fn commits_are_made_durable_without_waiting_for_the_stores_queue() {
        let (dir, db) = empty_dir("durable");
        let mut s = Store::open(&db).unwrap();
        put(&mut s, &msg("1@x", "", "first"));
        let mode =
            std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&db).unwrap().permissions());
        assert_eq!(mode & 0o777, 0o600, "the store is the owner's only");
        assert_eq!(s.wal_file(), Some(dir.join("t.db-wal")));
        let (store, join) = crate::store::StoreThread::spawn(s).unwrap();
        // The store's thread is busy with a long job; the sync of the WAL does not queue
        // behind it.
        let (release, held) = std::sync::mpsc::channel::<()>();
        let busy = store.submit(move |_| held.recv().is_ok());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            tokio::time::timeout(std::time::Duration::from_secs(10), store.make_durable())
                .await
                .expect("waited for the store's queue")
                .unwrap();
        });
        release.send(()).unwrap();
        assert!(rt.block_on(busy).unwrap());
        drop(store);
        let s = join.join().unwrap();
        // A dry run and a store in memory have nothing to sync.
        assert_eq!(Store::open_in_memory().unwrap().wal_file(), None);
        drop(s);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_wal_starts_over_under_a_steady_stream_of_writes() {
        let (dir, db) = empty_dir("wal");
        let mut s = Store::open(&db).unwrap();
        s.transaction(|tx| {
            tx.c.execute("CREATE TABLE scratch (b BLOB NOT NULL)", &[])?;
            Ok(())
        })
        .unwrap();
        // 384 MiB queued at once, so the store writes without a pause while the background
        // checkpoint runs beside it: six times the WAL's checkpoint size.
        let (store, join) = crate::store::StoreThread::spawn(s).unwrap();
        let done: Vec<_> = (0..96)
            .map(|_| {
                store.submit(|s| {
                    s.transaction(|tx| {
                        tx.c.execute("INSERT INTO scratch (b) VALUES (zeroblob(4194304))", &[])?;
                        Ok(())
                    })
                })
            })
            .collect();
        for d in done {
            d.blocking_recv().unwrap().unwrap();
        }
        // The WAL file is reused from its start, never cut: its length is the most it held.
        let wal = std::fs::metadata(dir.join("t.db-wal")).unwrap().len();
        // At most the frames at which the writer waits for its turn to checkpoint, however
        // slow the machine, and the transaction that reached them (4 MiB: 256 pages, and a
        // few of the table's); a WAL that never starts over holds all 384 MiB.
        let frame = crate::store::PAGE_SIZE as u64 + 24;
        let most = (crate::store::WAL_LIMIT as u64 + 2 * 256) * frame;
        assert!(
            wal <= most,
            "the WAL grew to {} MiB (at most {} MiB)",
            wal >> 20,
            most >> 20
        );
        drop(store);
        drop(join.join().unwrap());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_cached_statement_is_not_compiled_again_for_each_message() {
        let mut s = Store::open_in_memory().unwrap();
        for i in 0..5 {
            put(&mut s, &msg(&format!("{i}@x"), "", "text"));
        }
        let Db::Lite(c) = &s.conn else {
            unreachable!("an in-memory store is SQLite")
        };
        let held = c.prepare_cached(HELD_MESSAGE).unwrap();
        assert_eq!(held.get_status(rusqlite::StatementStatus::RePrepare), 0);
        assert!(
            held.get_status(rusqlite::StatementStatus::VmStep) > 0,
            "not the one used"
        );
    }

    #[test]
    fn raw_round_trips() {
        let mut s = Store::open_in_memory().unwrap();
        let raw = msg("1@x", "", &"line of text\r\n".repeat(100));
        put(&mut s, &raw);
        assert_eq!(s.raw(1).unwrap().unwrap(), raw.as_bytes());
    }

    /// A message with a `len`-byte random attachment (base64), as a large mail would be.
    fn with_attachment(id: &str, len: usize) -> Vec<u8> {
        use base64::Engine;
        let mut x = 0x9e37_79b9_7f4a_7c15_u64;
        let data: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x.to_le_bytes()[0]
            })
            .collect();
        let b64 = base64::engine::general_purpose::STANDARD.encode(&data);
        let mut m = format!(
            "From: a@example.com\r\nSubject: Scans\r\nMessage-ID: <{id}>\r\n\
             Content-Type: multipart/mixed; boundary=B\r\n\r\n--B\r\n\
             Content-Type: text/plain\r\n\r\nattached\r\n--B\r\n\
             Content-Type: application/zip; name=a.zip\r\n\
             Content-Disposition: attachment; filename=a.zip\r\n\
             Content-Transfer-Encoding: base64\r\n\r\n"
        )
        .into_bytes();
        for line in b64.as_bytes().chunks(76) {
            m.extend_from_slice(line);
            m.extend_from_slice(b"\r\n");
        }
        m.extend_from_slice(b"--B--\r\n");
        m
    }

    /// How the tests here store a message: no acknowledgement, no progress.
    fn plan_for(rules: &Rules) -> crate::pipeline::Plan<'_> {
        crate::pipeline::Plan {
            rules,
            ack: None,
            progress: None,
        }
    }

    /// A spool file in `dir` holding `raw`, appended as a fetch would, in pieces.
    fn spool_of(dir: &std::path::Path, raw: &[u8]) -> crate::spool::Spool {
        let mut spool = crate::spool::Spool::create(dir).unwrap();
        for chunk in raw.chunks(100_000) {
            spool.append(chunk).unwrap();
        }
        spool
    }

    #[test]
    fn a_spooled_message_that_is_no_message_is_quarantined_in_parts_from_its_file() {
        use crate::pipeline::{PreparedBody, commit, prepare_spooled};
        let dir = std::env::temp_dir().join(format!("mt-qparts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // A large attachment under a header without From, Sender, Date, Subject or
        // Message-ID: not a message.
        let whole = with_attachment("q@x", 2 << 20);
        let start = whole
            .windows(13)
            .position(|w| w == b"Content-Type:")
            .unwrap();
        let raw = whole[start..].to_vec();
        let spool = spool_of(&dir, &raw);
        let mut s = Store::open_in_memory().unwrap();
        let rules = Rules::default();
        let plan = plan_for(&rules);
        let origin = Origin::unplaced("test", "");
        let p = prepare_spooled(&crate::classify::Identity::default(), spool);
        let PreparedBody::Unparseable(why) = &p.body else {
            panic!("parsed")
        };
        assert!(why.contains("not a message"), "{why}");
        let stored = commit(&mut s, &p, &origin, 0, plan).unwrap();
        let Outcome::Quarantined(id) = stored.outcome else {
            panic!("{:?}", stored.outcome)
        };
        let (row, kept) = s.quarantined_message(id).unwrap().unwrap();
        assert!(kept == raw, "kept byte for byte");
        assert_eq!(row.size, raw.len() as i64);
        let (inline, parts): (i64, i64) = s
            .conn
            .query_row(
                "SELECT length(raw), (SELECT count(*) FROM quarantine_part WHERE quarantine = id)
                 FROM quarantine WHERE id = ?1",
                params![id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!(inline, 0);
        assert_eq!(parts as usize, raw.len().div_ceil(1 << 20));
        // Its key is the SHA-256 of its bytes, as for a message quarantined from memory: the
        // same bytes find the same row, and so does the same file again.
        assert_eq!(
            s.quarantine(&raw, "again", &origin, 0).unwrap(),
            Outcome::Quarantined(id)
        );
        let again = commit(&mut s, &p, &origin, 0, plan).unwrap();
        assert_eq!(again.outcome, Outcome::Quarantined(id));
        assert_eq!(s.quarantined().unwrap().len(), 1);
        // Deleting the row deletes its parts.
        assert!(s.quarantine_delete(id).unwrap());
        assert_eq!(parts_left(&s), 0);
        drop(p);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_large_quarantined_message_is_read_and_retried_a_piece_at_a_time() {
        use crate::quarantine::{Retried, retry};
        let (dir, raw, spool) = large_spooled("qretry", "kept@x");
        let mut s = Store::open_in_memory().unwrap();
        let origin = Origin::unplaced("imap:support/INBOX", "support");
        let size = raw.len() as u64;
        let quarantined = s
            .quarantine_spool(
                spool.file(),
                spool.path(),
                size,
                "an old parser bug",
                &origin,
                9,
            )
            .unwrap();
        drop(spool);
        let Outcome::Quarantined(id) = quarantined else {
            panic!("{quarantined:?}")
        };
        let (row, kept) = s.quarantine_entry(id).unwrap().unwrap();
        assert_eq!((kept, row.size), (size, raw.len() as i64));
        // Read in order, a part (1 MiB) at a time; and no further than the reader wants.
        let mut pieces = Vec::new();
        s.quarantined_pieces(id, |p| {
            pieces.push(p.to_vec());
            Ok(true)
        })
        .unwrap();
        assert!(
            pieces.iter().all(|p| p.len() <= 1 << 20),
            "pieces of at most 1 MiB"
        );
        assert!(pieces.concat() == raw, "byte for byte");
        let mut read = 0;
        s.quarantined_pieces(id, |_| {
            read += 1;
            Ok(read < 2)
        })
        .unwrap();
        assert_eq!(read, 2);
        // A retry takes it through a spool file: stored in parts, byte for byte, and gone from
        // the quarantine with its parts.
        let rules = Rules::default();
        let me = crate::classify::Identity::default();
        let r = retry(&mut s, &me, id, plan_for(&rules)).unwrap();
        let Retried::Taken(Outcome::Created(t)) = r else {
            panic!("{r:?}")
        };
        let (ticket, messages) = s.ticket(t).unwrap().unwrap();
        assert_eq!(ticket.mailbox, "support");
        let m = messages[0].id;
        assert_eq!(s.raw(m).unwrap().unwrap(), raw, "byte for byte");
        let codec: String = s
            .conn
            .query_row("SELECT codec FROM message WHERE id = ?1", params![m], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(codec, "zstd-parts");
        assert!(s.quarantine_entry(id).unwrap().is_none());
        assert_eq!(parts_left(&s), 0);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// How many quarantine parts the store holds.
    fn parts_left(s: &Store) -> i64 {
        let count = "SELECT count(*) FROM quarantine_part";
        s.conn.query_row(count, params![], |r| r.get(0)).unwrap()
    }

    /// A temporary folder (named after `tag`) and a spool file in it holding a message with
    /// a 3 MiB attachment (`id` its Message-ID): what a large fetch leaves.
    fn large_spooled(tag: &str, id: &str) -> (std::path::PathBuf, Vec<u8>, crate::spool::Spool) {
        let dir = std::env::temp_dir().join(format!("mt-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let raw = with_attachment(id, 3 << 20);
        let spool = spool_of(&dir, &raw);
        (dir, raw, spool)
    }

    #[test]
    fn raw_in_parts_round_trips_and_matches_the_message_kept_whole() {
        use crate::pipeline::{commit, prepare, prepare_spooled};
        let (dir, raw, spool) = large_spooled("parts", "big@x");
        let path = spool.path().to_owned();
        let mut s = Store::open_in_memory().unwrap();
        let rules = Rules::default();
        let plan = plan_for(&rules);
        let me = crate::classify::Identity::default();
        let origin = Origin::unplaced("test", "");
        let p = prepare_spooled(&me, spool);
        let stored = commit(&mut s, &p, &origin, 0, plan).unwrap();
        drop(p);
        assert!(!path.exists(), "the spool file is removed with the message");
        let Outcome::Created(t) = stored.outcome else {
            panic!("{:?}", stored.outcome)
        };
        let row = s.ticket(t).unwrap().unwrap().1[0].id;
        assert_eq!(s.raw(row).unwrap().unwrap(), raw, "byte for byte");
        // Read as a stream too, a part at a time.
        let mut streamed = Vec::new();
        let mut reader = s.raw_reader(row).unwrap().unwrap();
        std::io::Read::read_to_end(&mut reader, &mut streamed).unwrap();
        drop(reader);
        assert!(streamed == raw, "streamed byte for byte");
        assert!(s.raw_reader(row + 1000).unwrap().is_none());
        let (codec, inline, parts): (String, i64, i64) = s
            .conn
            .query_row(
                "SELECT codec, length(raw), (SELECT count(*) FROM raw_part WHERE message = id)
                 FROM message WHERE id = ?1",
                params![row],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        assert_eq!((codec.as_str(), inline), ("zstd-parts", 0));
        assert!(parts >= 3, "{parts} parts for 3 MiB of random data");
        // The same bytes kept whole: the same fingerprint and attachment index; a duplicate.
        let whole = prepare(&me, raw);
        let crate::pipeline::PreparedBody::Message { parsed, .. } = &whole.body else {
            panic!("unparseable")
        };
        let fp: Vec<u8> = s
            .conn
            .query_row(
                "SELECT fingerprint FROM message WHERE id = ?1",
                params![row],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(fp, parsed.fingerprint.to_vec());
        let att = &s.ticket(t).unwrap().unwrap().1[0].attachments;
        assert_eq!(att.len(), 1);
        assert_eq!(att[0].size, 3 << 20);
        assert_eq!(att[0].sha256, hex(&parsed.attachments[0].sha256));
        let again = commit(&mut s, &whole, &origin, 0, plan).unwrap();
        assert_eq!(again.outcome, Outcome::Duplicate(t));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
