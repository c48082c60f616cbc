//! Agent replies (`mailticket reply`): to the customer (the Reply-To of the message answered,
//! else the ticket's customer), Cc whoever was in Cc minus our own addresses, threaded below
//! the newest inbound message, with the ticket's subject tag. Composed here; the store reads
//! the ticket and records the reply in one transaction.

use lettre::message::Mailbox;

use super::{Compose, compose, new_message_id, parse_mailbox, short_subject};
use crate::error::{Error, Result};
use crate::store::event;
use crate::store::{
    EventData, NewEvent, OutboxKind, Outgoing, ReplyContext, Store, TicketStatus, Tx,
};

/// An agent's reply to ticket `ticket` (whose subject tag is `tag`).
pub struct Reply<'a> {
    /// The ticket.
    pub ticket: i64,
    /// Its subject tag ([`crate::thread::tag_text`]).
    pub tag: &'a str,
    /// The text.
    pub body: &'a str,
    /// Our From: the identity of the ticket's mailbox.
    pub from: &'a Mailbox,
    /// The ticket's mailbox, whose SMTP settings send the reply.
    pub mailbox: &'a str,
    /// Our own addresses: never in Cc.
    pub own: &'a [String],
    /// Close the ticket with it.
    pub close: bool,
}

/// Composes the reply and queues it in one transaction (closing the ticket when asked);
/// returns its outbox row.
pub fn queue(store: &mut Store, r: &Reply<'_>) -> Result<i64> {
    let now = crate::time::now();
    store.transaction(|tx| {
        let ctx = tx
            .reply_context(r.ticket)?
            .ok_or_else(|| Error::Compose(format!("no ticket {}", r.ticket)))?;
        let message_id = new_message_id(tx.key(), r.ticket, r.from.email.domain());
        let out = compose_reply(&ctx, r, &message_id)?;
        let before = tx.ticket_view(r.ticket)?.map(|t| t.status);
        let id = tx.record_outgoing(r.ticket, &out, now)?;
        tx.answered(r.ticket, now, r.close)?;
        announce(tx, r.ticket, id, before, now)?;
        Ok(id)
    })
}

/// The reply [`queue`] would send now, composed and returned; nothing is written
/// (`reply --dry-run`). Its Message-ID is one a real reply would not reuse.
pub fn preview(store: &mut Store, r: &Reply<'_>) -> Result<Outgoing> {
    store.transaction(|tx| {
        let ctx = tx
            .reply_context(r.ticket)?
            .ok_or_else(|| Error::Compose(format!("no ticket {}", r.ticket)))?;
        let message_id = new_message_id(tx.key(), r.ticket, r.from.email.domain());
        compose_reply(&ctx, r, &message_id)
    })
}

/// Records the events of a queued reply: `ticket.message_added` (direction out), and
/// `ticket.status_changed` when `reply --close` closed an open ticket.
fn announce(
    tx: &Tx<'_>,
    ticket: i64,
    outbox: i64,
    before: Option<TicketStatus>,
    now: i64,
) -> Result<()> {
    let Some(t) = tx.ticket_view(ticket)? else {
        return Ok(());
    };
    let record = |kind: &str, data: EventData<'_>| {
        tx.record_event(&NewEvent {
            kind,
            ticket,
            mailbox: &t.mailbox,
            data,
            now,
        })
    };
    if let Some(row) = tx.outbox_message(outbox)?
        && let Some(m) = tx.message_view(row)?
    {
        record(
            crate::event_type::MESSAGE_ADDED,
            EventData::Message {
                ticket: &t,
                message: &m,
                split: &crate::quote::split(&m.text),
            },
        )?;
    }
    if let Some(b) = before.filter(|b| *b != t.status) {
        let data = event::status_changed(&t, Some(b.as_str()), "closed with a reply");
        record(crate::event_type::STATUS_CHANGED, EventData::Value(&data))?;
    }
    Ok(())
}

/// The reply as it is sent.
fn compose_reply(ctx: &ReplyContext, r: &Reply<'_>, message_id: &str) -> Result<Outgoing> {
    let mut references = ctx.references.clone();
    references.extend(ctx.parent.clone());
    references.dedup();
    let to_addr = if ctx.reply_to.is_empty() {
        ctx.customer.clone()
    } else {
        ctx.reply_to.clone()
    };
    let to = parse_mailbox(&to_addr).ok_or_else(|| {
        Error::Compose(format!(
            "ticket {}: customer {to_addr:?} is not an address",
            r.ticket
        ))
    })?;
    let to = if to_addr == ctx.customer && !ctx.customer_name.is_empty() {
        Mailbox::new(Some(ctx.customer_name.clone()), to.email)
    } else {
        to
    };
    let ours = r.from.email.to_string().to_ascii_lowercase();
    let cc: Vec<Mailbox> = ctx
        .cc
        .iter()
        .filter(|a| **a != ours && !r.own.contains(a) && **a != to_addr)
        .filter_map(|a| parse_mailbox(a))
        .collect();
    let subject = short_subject(&format!("Re: {} {}", r.tag, ctx.subject));
    let raw = compose(&Compose {
        from: r.from,
        to: std::slice::from_ref(&to),
        cc: &cc,
        subject: &subject,
        text: r.body,
        html: None,
        message_id,
        in_reply_to: ctx.parent.as_deref(),
        references: &references,
        auto_submitted: false,
    })?;
    Ok(Outgoing {
        kind: OutboxKind::Reply,
        mailbox: r.mailbox.to_owned(),
        from: r.from.clone(),
        to: vec![to],
        cc,
        subject,
        text: r.body.to_owned(),
        raw,
        message_id: message_id.to_owned(),
    })
}
