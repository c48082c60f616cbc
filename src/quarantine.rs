//! Retrying quarantined messages (`mailticket quarantine retry`): after an upgrade whose parser
//! takes what an older one could not, a kept message goes through the same pipeline as fresh
//! mail (the same duplicate check, threading and acknowledgement plan) and leaves the
//! quarantine; one that still fails stays, with the new reason. No IMAP cursor moves: the
//! message was passed long ago. Called by the CLI; the store only reads and writes rows.

use crate::classify::Identity;
use crate::error::Result;
use crate::pipeline::{Plan, process, process_spooled};
use crate::spool::{SPOOL_OVER, Spool};
use crate::store::{Origin, Outcome, Store};

/// What a retry did with one quarantined message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Retried {
    /// It parsed: stored (or found stored already) and gone from the quarantine.
    Taken(Outcome),
    /// It still cannot be parsed: kept, with this reason.
    StillFailing(String),
    /// Only its header was kept (it was too large to fetch): nothing to retry.
    HeaderOnly,
    /// No such quarantined message.
    Missing,
}

/// Runs quarantined message `id` through the pipeline again, as `plan` says. A message over
/// [`SPOOL_OVER`] goes through a spool file, as it came in: never held whole.
pub fn retry(store: &mut Store, me: &Identity, id: i64, plan: Plan<'_>) -> Result<Retried> {
    let Some((row, kept)) = store.quarantine_entry(id)? else {
        return Ok(Retried::Missing);
    };
    if i64::try_from(kept).unwrap_or(i64::MAX) < row.size {
        return Ok(Retried::HeaderOnly);
    }
    // The mailbox it came in for; rows from before schema 17 name only an IMAP one, in
    // their source.
    let mailbox = match row.mailbox.as_str() {
        "" => mailbox_of(&row.source).to_owned(),
        m => m.to_owned(),
    };
    let origin = Origin::unplaced(row.source.clone(), mailbox);
    let stored = if kept > SPOOL_OVER {
        let mut spool = Spool::create(&store.spool_dir())?;
        store.quarantined_pieces(id, |piece| spool.append(piece).map(|()| true))?;
        if let Err(why) = crate::message::parse_file(spool.file_mut()) {
            store.quarantine_reason(id, &why.0)?;
            return Ok(Retried::StillFailing(why.0));
        }
        process_spooled(store, me, spool, &origin, row.received_at, plan)?
    } else {
        let mut raw = Vec::with_capacity(usize::try_from(kept).unwrap_or(0));
        store.quarantined_pieces(id, |piece| {
            raw.extend_from_slice(piece);
            Ok(true)
        })?;
        if let Err(why) = crate::message::parse(&raw) {
            store.quarantine_reason(id, &why.0)?;
            return Ok(Retried::StillFailing(why.0));
        }
        process(store, me, &raw, &origin, row.received_at, plan)?
    };
    if let Outcome::Quarantined(_) = stored.outcome {
        // Parsed, yet not storable (it could not be compressed, or storing it panicked):
        // the pipeline logged why; the row stays as it was.
        return Ok(Retried::StillFailing(row.error));
    }
    store.quarantine_delete(id)?;
    Ok(Retried::Taken(stored.outcome))
}

/// The mailbox named in a source like `imap:support/INBOX` (empty for files and stdin).
fn mailbox_of(source: &str) -> &str {
    source
        .strip_prefix("imap:")
        .and_then(|rest| rest.split('/').next())
        .unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::Rules;

    /// A plan that sends no acknowledgement.
    fn plan(rules: &Rules) -> Plan<'_> {
        Plan {
            rules,
            ack: None,
            progress: None,
        }
    }

    #[test]
    fn a_message_that_now_parses_leaves_the_quarantine_and_one_that_does_not_stays() {
        let mut store = Store::open_in_memory().unwrap();
        let origin = Origin::unplaced("imap:support/INBOX", "support");
        let junk = b"\x00\x01 not a message".to_vec();
        let Outcome::Quarantined(bad) = store.quarantine(&junk, "old", &origin, 5).unwrap() else {
            panic!("not quarantined");
        };
        let mail = b"From: Anna <anna@example.org>\r\nSubject: Hi\r\nMessage-ID: <q1@example.org>\r\n\r\nHello\r\n";
        let Outcome::Quarantined(good) = store
            .quarantine(mail, "an old parser bug", &origin, 7)
            .unwrap()
        else {
            panic!("not quarantined");
        };
        let me = Identity::default();
        let rules = Rules::default();
        let plan = plan(&rules);
        let r = retry(&mut store, &me, good, plan).unwrap();
        let Retried::Taken(Outcome::Created(t)) = r else {
            panic!("{r:?}")
        };
        assert!(store.quarantined_message(good).unwrap().is_none());
        let (ticket, _) = store.ticket(t).unwrap().unwrap();
        assert_eq!(ticket.mailbox, "support");
        let r = retry(&mut store, &me, bad, plan).unwrap();
        assert!(
            matches!(&r, Retried::StillFailing(why) if why != "old"),
            "{r:?}"
        );
        let (row, _) = store.quarantined_message(bad).unwrap().unwrap();
        assert_ne!(row.error, "old");
        assert_eq!(retry(&mut store, &me, 999, plan).unwrap(), Retried::Missing);
        assert_eq!(mailbox_of("import:/x/y.eml"), "");
    }

    #[test]
    fn a_retry_files_the_ticket_under_the_mailbox_the_message_came_in_for() {
        let mut store = Store::open_in_memory().unwrap();
        // `ingest --mailbox sales`: the source names no mailbox, the row does.
        let origin = Origin::unplaced("ingest", "sales");
        let mail = b"From: Bo <bo@example.org>\r\nSubject: Quote\r\nMessage-ID: <q2@example.org>\r\n\r\nHi\r\n";
        let Outcome::Quarantined(id) = store
            .quarantine(mail, "an old parser bug", &origin, 7)
            .unwrap()
        else {
            panic!("not quarantined");
        };
        let (row, _) = store.quarantine_entry(id).unwrap().unwrap();
        assert_eq!(
            (row.source.as_str(), row.mailbox.as_str()),
            ("ingest", "sales")
        );
        let rules = Rules::default();
        let plan = plan(&rules);
        let r = retry(&mut store, &Identity::default(), id, plan).unwrap();
        let Retried::Taken(Outcome::Created(t)) = r else {
            panic!("{r:?}")
        };
        let (ticket, _) = store.ticket(t).unwrap().unwrap();
        assert_eq!(ticket.mailbox, "sales");
    }
}
