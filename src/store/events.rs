//! The event log: events appended in the transaction of what caused them, each with one
//! delivery row per hook whose filter matches (see [`crate::store::Route`]), and the feed
//! that reads them back in commit order.

use super::db::{Db, params};
use serde_json::Value;

use super::tickets::{messages_on, ticket_on};
use super::{MessageRow, Store, TicketRow, Tx};
use crate::error::Result;
use crate::store::Route;

/// An event to record, as its caller decided it.
#[derive(Debug)]
pub struct NewEvent<'a> {
    /// `ticket.created`, ... (see [`crate::event_type`]).
    pub kind: &'a str,
    /// The ticket it is about (0: none).
    pub ticket: i64,
    /// The mailbox it is about (empty: none).
    pub mailbox: &'a str,
    /// Its `data`.
    pub data: EventData<'a>,
    /// Unix seconds.
    pub now: i64,
}

/// An event's `data`.
#[derive(Debug, Clone, Copy)]
pub enum EventData<'a> {
    /// As built (see [`crate::store::event`]).
    Value(&'a Value),
    /// `ticket.created` or `ticket.message_added` of `message` (its text split as `split`):
    /// the event of every message, written straight from the rows (see
    /// [`crate::store::event::ticket_message_stored`]).
    Message {
        /// The ticket after the message.
        ticket: &'a TicketRow,
        /// The message as written.
        message: &'a MessageRow,
        /// Its text's split ([`crate::quote::split`]).
        split: &'a crate::quote::Split,
    },
}

/// A recorded event.
#[derive(Debug, Clone)]
pub struct EventRow {
    /// The feed's cursor: commit order.
    pub id: i64,
    /// The stable id (`evt_…`).
    pub uid: String,
    /// The type.
    pub kind: String,
    /// The ticket (0: none).
    pub ticket_id: i64,
    /// The mailbox (empty: none).
    pub mailbox: String,
    /// Unix seconds.
    pub created_at: i64,
    /// `data` as JSON text (a message's text back in, see
    /// [`crate::store::event::with_text`]).
    pub data: String,
}

/// A new event's stable id: `evt_` and 32 hex digits, the first 12 the milliseconds since
/// the Unix epoch and the other 20 an 80-bit number: a random start per thread, drawn once
/// from the system's CSPRNG, then counted up (one system call per event cost more than the
/// rest of its id). The time first makes new ids sort after older ones, so the UNIQUE index
/// on them grows at its end (a random id would rewrite a leaf page of that index per event
/// and commit), and the random start keeps ids unique across processes and stores.
fn event_uid() -> String {
    thread_local! {
        static NEXT: std::cell::Cell<Option<u128>> = const { std::cell::Cell::new(None) };
    }
    let n = NEXT.with(|next| {
        let n = next.get().unwrap_or_else(|| {
            use ring::rand::SecureRandom;
            let mut start = [0u8; 16];
            // The system's generator does not fail on Linux; an id without its random part
            // would still be caught by the UNIQUE constraint rather than go out twice.
            let _ = ring::rand::SystemRandom::new().fill(&mut start[6..]);
            u128::from_be_bytes(start)
        });
        next.set(Some(n.wrapping_add(1) & ((1 << 80) - 1)));
        n
    });
    let mut bytes = n.to_be_bytes();
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    bytes[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    format!("evt_{}", crate::message::hex(&bytes))
}

/// `data` as the event row keeps it: compact JSON, written into a buffer about its size,
/// without a message's `text_new` when it is its whole `text` (most new requests): the
/// text is stored once, and [`crate::store::event::wire`] puts `text_new` back.
fn data_text(data: &Value) -> Result<String> {
    let floor = crate::store::event::json_len_floor(data);
    let mut text = Vec::with_capacity(floor + floor / 16);
    serde_json::to_writer(&mut text, &crate::store::event::Stored(data))
        .map_err(|e| crate::error::Error::Internal(format!("event data: {e}")))?;
    String::from_utf8(text).map_err(|e| crate::error::Error::Internal(format!("event data: {e}")))
}

/// `data` as the event row keeps it, and the message row whose text it leaves out (see
/// [`crate::store::event::with_text`]).
fn stored_data(data: EventData<'_>) -> Result<(String, Option<i64>)> {
    match data {
        EventData::Value(v) => Ok((data_text(v)?, None)),
        EventData::Message {
            ticket,
            message,
            split,
        } => match crate::store::event::ticket_message_stored(ticket, message, split) {
            Some(text) => Ok((text, Some(message.id))),
            None => Ok((
                data_text(&crate::store::event::ticket_message(ticket, message, split))?,
                None,
            )),
        },
    }
}

/// Appends `e` and its deliveries (one per matching route) through `c`; returns its cursor.
pub(super) fn record(c: &Db, routes: &[Route], e: &NewEvent<'_>) -> Result<i64> {
    crate::store::sql("recording an event", || {
        let (data, text_of) = stored_data(e.data)?;
        let id: i64 = c.insert_id(
            "INSERT INTO event (uid, type, ticket_id, mailbox, created_at, data, text_of)
                 VALUES (?6, ?1, ?2, ?3, ?4, ?5, ?7)",
            params![
                e.kind,
                e.ticket,
                e.mailbox,
                e.now,
                data,
                event_uid(),
                text_of
            ],
        )?;
        for route in routes.iter().filter(|r| r.matches(e.kind, e.mailbox)) {
            c.execute(
                "INSERT INTO hook_delivery (event_id, hook, ticket_id, status, created_at, updated_at)
                 VALUES (?1, ?2, ?3, 'pending', ?4, ?4)", params![id, route.name, e.ticket, e.now])?;
        }
        Ok(id)
    })
}

/// The event reads and writes of a transaction.
impl Tx<'_> {
    /// Appends an event (and its deliveries) to the log; returns its cursor.
    pub fn record_event(&self, e: &NewEvent<'_>) -> Result<i64> {
        record(self.c, self.routes, e)
    }

    /// Ticket `t` as listed (what events carry).
    pub fn ticket_view(&self, t: i64) -> Result<Option<TicketRow>> {
        crate::store::sql("reading a ticket", || ticket_on(self.c, t))
    }

    /// The message in row `row` as shown, with its attachments' index.
    pub fn message_view(&self, row: i64) -> Result<Option<MessageRow>> {
        crate::store::sql("reading a message", || {
            Ok(messages_on(self.c, "id", row)?.into_iter().next())
        })
    }

    /// The message row recorded with outbox row `id`.
    pub fn outbox_message(&self, id: i64) -> Result<Option<i64>> {
        crate::store::sql("reading an outbox row", || {
            Ok(self
                .c
                .query_opt(
                    "SELECT message_row FROM outbox WHERE id = ?1",
                    params![id],
                    |r| r.get::<Option<i64>>(0),
                )?
                .flatten())
        })
    }
}

/// An outbox row's result as an event (`outbound.sent` / `outbound.failed`), through `c`.
pub(super) fn outbox_result(
    c: &Db,
    routes: &[Route],
    (id, kind): (i64, &str),
    detail: &str,
    now: i64,
) -> Result<()> {
    let row: Option<(i64, String, String)> = c.query_opt(
        "SELECT ticket_id, kind, rcpt_to FROM outbox WHERE id = ?1",
        params![id],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    let Some((ticket_id, out_kind, to)) = row else {
        return Ok(());
    };
    let ticket = ticket_on(c, ticket_id)?;
    let result = crate::store::event::OutboxResult {
        id,
        kind: &out_kind,
        to: &to,
        detail,
    };
    let data = crate::store::event::outbound(ticket.as_ref(), &result);
    record(
        c,
        routes,
        &NewEvent {
            kind,
            ticket: ticket_id,
            mailbox: ticket.as_ref().map_or("", |t| t.mailbox.as_str()),
            data: EventData::Value(&data),
            now,
        },
    )?;
    Ok(())
}

impl Store {
    /// Up to `limit` events after cursor `since`, in commit order.
    pub fn events_since(&self, since: i64, limit: i64) -> Result<Vec<EventRow>> {
        crate::store::sql("reading the event log", || {
            let s = "SELECT e.id, e.uid, e.type, e.ticket_id, e.mailbox, e.created_at, e.data,
                        m.body_text
                 FROM event e LEFT JOIN message m ON m.id = e.text_of
                 WHERE e.id > ?1 ORDER BY e.id LIMIT ?2";
            let rows = self.conn.query_map(s, params![since, limit], |r| {
                Ok(EventRow {
                    id: r.get(0)?,
                    uid: r.get(1)?,
                    kind: r.get(2)?,
                    ticket_id: r.get(3)?,
                    mailbox: r.get(4)?,
                    created_at: r.get(5)?,
                    data: crate::store::event::with_text(r.get(6)?, r.get(7)?),
                })
            })?;
            Ok(rows)
        })
    }

    /// Sets a ticket's status and records `ticket.status_changed` when it changed. False when
    /// there is no such ticket.
    pub fn set_status(&mut self, ticket: i64, status: super::TicketStatus) -> Result<bool> {
        let routes = self.routes.clone();
        crate::store::sql("setting a ticket's status", || {
            self.write(|c| {
                let now = crate::time::now();
                let Some(before) = ticket_on(c, ticket)? else {
                    return Ok(false);
                };
                c.execute(
                    "UPDATE ticket SET status = ?2, updated_at = GREATEST(updated_at, ?3) WHERE id = ?1",
                    params![ticket, status, now],
                )?;
                if before.status != status
                    && let Some(after) = ticket_on(c, ticket)?
                {
                    let why = format!("set {status} by hand");
                    let data = crate::store::event::status_changed(
                        &after,
                        Some(before.status.as_str()),
                        &why,
                    );
                    record(
                        c,
                        &routes,
                        &NewEvent {
                            kind: crate::event_type::STATUS_CHANGED,
                            ticket,
                            mailbox: &after.mailbox,
                            data: EventData::Value(&data),
                            now,
                        },
                    )?;
                }
                Ok(true)
            })
        })
    }
}

impl Store {
    /// Counts one more failure of `mailbox` (`why`); when `failing(count)` says so and it was
    /// not failing yet, records `mailbox.failing`. Returns whether that event was recorded.
    pub fn mailbox_failed(
        &mut self,
        mailbox: &str,
        why: &str,
        failing: impl FnOnce(i64) -> bool,
    ) -> Result<bool> {
        let routes = self.routes.clone();
        let now = crate::time::now();
        crate::store::sql("recording a mailbox failure", || {
            self.write(|c| {
                let (failures, was): (i64, bool) = c.query_row(
                    "INSERT INTO mailbox_health (mailbox, failures, last_error) VALUES (?1, 1, ?2)
                     ON CONFLICT (mailbox) DO UPDATE SET failures = mailbox_health.failures + 1, last_error = ?2
                     RETURNING failures, failing",
                    params![mailbox, why],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )?;
                if was || !failing(failures) {
                    return Ok(false);
                }
                c.execute(
                    "UPDATE mailbox_health SET failing = 1, since = ?2 WHERE mailbox = ?1",
                    params![mailbox, now],
                )?;
                let data =
                    serde_json::json!({"mailbox": mailbox, "error": why, "failures": failures});
                let kind = crate::event_type::MAILBOX_FAILING;
                record(
                    c,
                    &routes,
                    &NewEvent {
                        kind,
                        ticket: 0,
                        mailbox,
                        data: EventData::Value(&data),
                        now,
                    },
                )?;
                Ok(true)
            })
        })
    }

    /// `mailbox` worked: the count starts again, and a failing mailbox records
    /// `mailbox.recovered`. Returns whether that event was recorded.
    pub fn mailbox_worked(&mut self, mailbox: &str) -> Result<bool> {
        let routes = self.routes.clone();
        let now = crate::time::now();
        crate::store::sql("recording a mailbox recovery", || {
            self.write(|c| {
                let row: Option<(i64, bool, i64)> = c
                    .query_opt(
                        "SELECT failures, failing, since FROM mailbox_health WHERE mailbox = ?1",
                        params![mailbox],
                        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                    )?;
                let Some((failures, failing, since)) = row.filter(|r| r.0 > 0 || r.1) else {
                    return Ok(false);
                };
                c.execute(
                    "UPDATE mailbox_health SET failures = 0, failing = 0, since = 0 WHERE mailbox = ?1",
                    params![mailbox],
                )?;
                if !failing {
                    return Ok(false);
                }
                let data = serde_json::json!({"mailbox": mailbox, "failures": failures,
                    "failing_since": crate::time::rfc3339(since)});
                let kind = crate::event_type::MAILBOX_RECOVERED;
                record(c, &routes, &NewEvent { kind, ticket: 0, mailbox, data: EventData::Value(&data), now })?;
                Ok(true)
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::Identity;
    use crate::pipeline::{Plan, Rules, process};
    use crate::store::{Origin, TicketStatus};

    fn put(s: &mut Store, raw: &str) {
        let origin = Origin::unplaced("test", "support");
        let plan = Plan {
            rules: &Rules::default(),
            ack: None,
            progress: None,
        };
        process(s, &Identity::default(), raw.as_bytes(), &origin, 0, plan).unwrap();
    }

    #[test]
    fn messages_and_status_changes_are_events_with_deliveries_per_matching_route() {
        let mut s = Store::open_in_memory().unwrap();
        s.set_routes(vec![
            Route {
                name: "all".into(),
                ..Route::default()
            },
            Route {
                name: "new".into(),
                events: vec!["ticket.created".into()],
                mailboxes: vec![],
            },
        ]);
        put(
            &mut s,
            "From: a@example.com\r\nSubject: Printer\r\nMessage-ID: <1@x>\r\n\r\nbroken\r\n",
        );
        put(
            &mut s,
            "From: a@example.com\r\nSubject: Re: Printer\r\nMessage-ID: <2@x>\r\nIn-Reply-To: <1@x>\r\n\r\nstill\r\n",
        );
        put(
            &mut s,
            "From: a@example.com\r\nSubject: Re: Printer\r\nMessage-ID: <2@x>\r\nIn-Reply-To: <1@x>\r\n\r\nstill\r\n",
        );
        assert!(s.set_status(1, TicketStatus::Closed).unwrap());
        assert!(s.set_status(1, TicketStatus::Closed).unwrap());
        let events = s.events_since(0, 100).unwrap();
        let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(
            kinds,
            [
                "ticket.created",
                "ticket.message_added",
                "ticket.status_changed"
            ]
        );
        assert!(events[0].uid.starts_with("evt_") && events[0].uid.len() == 36);
        let data: Value = serde_json::from_str(&events[0].data).unwrap();
        assert_eq!(data["message"]["text"].as_str().unwrap().trim(), "broken");
        assert_eq!(data["ticket"]["id"], 1);
        assert_eq!(s.events_since(events[1].id, 100).unwrap().len(), 1);
        let n: i64 = s
            .conn
            .query_row("SELECT count(*) FROM hook_delivery", params![], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(n, 4);
    }

    #[test]
    fn a_message_event_keeps_its_text_in_the_message_row_and_a_cut_one_its_own() {
        let mut s = Store::open_in_memory().unwrap();
        s.set_routes(vec![Route {
            name: "all".into(),
            ..Route::default()
        }]);
        put(
            &mut s,
            "From: a@example.com\r\nSubject: Printer\r\nMessage-ID: <1@x>\r\n\r\nbroken \"badly\"\r\n",
        );
        let long = "a long line of text\r\n".repeat(4000);
        put(
            &mut s,
            &format!("From: b@example.com\r\nSubject: Long\r\nMessage-ID: <2@x>\r\n\r\n{long}"),
        );
        let rows: Vec<(String, Option<i64>)> = s
            .conn
            .query_map(
                "SELECT data, text_of FROM event ORDER BY id",
                params![],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        // The first event names its message row and leaves the text (and `text_new`) to it.
        assert_eq!(rows[0].1, Some(1));
        assert!(!rows[0].0.contains("broken"), "{}", rows[0].0);
        // The cut one keeps what is left of its text.
        assert_eq!(rows[1].1, None);
        assert!(rows[1].0.contains("a long line"));
        let events = s.events_since(0, 100).unwrap();
        let sent = crate::store::event::wire(&events[0].uid, &events[0].kind, 0, &events[0].data);
        assert_eq!(sent["data"]["message"]["text"], "broken \"badly\"");
        assert_eq!(sent["data"]["message"]["text_new"], "broken \"badly\"");
        let sent = crate::store::event::wire(&events[1].uid, &events[1].kind, 0, &events[1].data);
        assert_eq!(sent["data"]["truncated"], true);
        // A hook delivery reads the same `data` as the feed.
        let jobs = s.hooks_claim("all", i64::MAX, i64::MAX, 60, 10).unwrap();
        assert_eq!(jobs.len(), 2);
        assert_eq!(jobs[0].data, events[0].data);
        assert_eq!(jobs[1].data, events[1].data);
    }

    #[test]
    fn event_ids_made_later_sort_after_earlier_ones_and_differ_within_a_millisecond() {
        let first = event_uid();
        let same_ms: Vec<String> = (0..100).map(|_| event_uid()).collect();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let later = event_uid();
        assert!(first < later && same_ms.iter().all(|u| *u < later));
        assert!(later.starts_with("evt_") && later.len() == 36);
        assert!(later[4..].bytes().all(|b| b.is_ascii_hexdigit()));
        let distinct: std::collections::HashSet<&String> = same_ms.iter().collect();
        assert_eq!(distinct.len(), same_ms.len());
        // Another thread (or process) counts from a random start of its own.
        let elsewhere = std::thread::spawn(event_uid).join().unwrap();
        let random = |u: &str| u128::from_str_radix(&u[16..], 16).unwrap();
        assert!(random(&elsewhere).abs_diff(random(&first)) > 1 << 40);
        // The time part is now, to the millisecond.
        let ms = u64::from_str_radix(&later[4..16], 16).unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        assert!(ms <= now && now - ms < 60_000);
    }
}
