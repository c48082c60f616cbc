//! The JSON shapes users and scripts see: a ticket and a message as `show --json` prints
//! them. Events carry the same shapes, so a receiver parses one format. Pure: no store, no I/O.
//!
//! Each shape is one struct of borrowed fields, its fields in the order of their names: a
//! `serde_json::Value` made of it (whose objects sort their keys) and the struct written out
//! directly give the same text, so the event of every new message is written straight from
//! the rows, without a tree of values in between (see [`crate::store::event`]).

use serde::Serialize;
use serde_json::Value;

use super::{AttachmentRow, Direction, MessageRow, TicketRow, TicketStatus};
use crate::time::rfc3339;

/// A ticket as `tickets --json` and `show --json` print it (without its messages).
pub fn ticket_json(t: &TicketRow) -> Value {
    serde_json::to_value(TicketView::of(t)).unwrap_or_default()
}

/// A message as `show --json` prints it: attachments as metadata (name, type, size, sha256,
/// inline), the full `text` and, split from it, what the sender wrote now (`text_new`) and how
/// many lines of quoted history and signature that leaves out.
pub fn message_json(m: &MessageRow) -> Value {
    message_json_split(m, &crate::quote::split(&m.text))
}

/// [`message_json`] with its text's `split` already made (see [`crate::quote::split`]).
pub fn message_json_split(m: &MessageRow, split: &crate::quote::Split) -> Value {
    serde_json::to_value(MessageView::of(m, split)).unwrap_or_default()
}

/// [`ticket_json`]'s shape.
#[derive(Serialize)]
pub(crate) struct TicketView<'a> {
    created_at: String,
    customer: &'a str,
    customer_name: &'a str,
    id: i64,
    kind: &'a str,
    mailbox: &'a str,
    messages: i64,
    status: TicketStatus,
    subject: &'a str,
    updated_at: String,
}

impl<'a> TicketView<'a> {
    pub(crate) fn of(t: &'a TicketRow) -> TicketView<'a> {
        TicketView {
            created_at: rfc3339(t.created_at),
            customer: &t.customer,
            customer_name: &t.customer_name,
            id: t.id,
            kind: &t.kind,
            mailbox: &t.mailbox,
            messages: t.messages,
            status: t.status,
            subject: &t.subject,
            updated_at: rfc3339(t.updated_at),
        }
    }
}

/// [`message_json_split`]'s shape.
#[derive(Serialize)]
pub(crate) struct MessageView<'a> {
    attachments: Vec<AttachmentView<'a>>,
    cc: &'a [String],
    date: String,
    direction: Direction,
    from: &'a str,
    from_name: &'a str,
    kind: &'a str,
    message_id: &'a str,
    origin: OriginView<'a>,
    quoted_lines: usize,
    reasons: &'a [String],
    signature_lines: usize,
    subject: &'a str,
    /// Always there as shown; an event row leaves it to the message row (see
    /// [`MessageView::by_reference`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<&'a str>,
    /// Always there as shown; an event row leaves it out when it is the whole `text`.
    #[serde(skip_serializing_if = "Option::is_none")]
    text_new: Option<&'a str>,
    to: &'a [String],
}

impl<'a> MessageView<'a> {
    pub(crate) fn of(m: &'a MessageRow, split: &'a crate::quote::Split) -> MessageView<'a> {
        MessageView {
            attachments: m.attachments.iter().map(AttachmentView::of).collect(),
            cc: &m.cc,
            date: rfc3339(m.date),
            direction: m.direction,
            from: &m.from,
            from_name: &m.from_name,
            kind: &m.kind,
            message_id: &m.message_id,
            origin: OriginView::of(m),
            quoted_lines: split.quoted_lines,
            reasons: &m.reasons,
            signature_lines: split.signature_lines,
            subject: &m.subject,
            text: Some(&m.text),
            text_new: Some(&split.new),
            to: &m.to,
        }
    }

    /// As an event row keeps it: without `text_new` when that is the whole `text` (see
    /// [`crate::store::event::Stored`]).
    pub(crate) fn stored(mut self) -> MessageView<'a> {
        if self.text_new.is_some() && self.text_new == self.text {
            self.text_new = None;
        }
        self
    }

    /// Without `text`, which the event row leaves to the message row it names (`text_of`);
    /// [`crate::store::event::with_text`] puts it back when the event is read.
    pub(crate) fn by_reference(mut self) -> MessageView<'a> {
        self.text = None;
        self
    }
}

/// An attachment's metadata in [`MessageView`].
#[derive(Serialize)]
struct AttachmentView<'a> {
    content_type: &'a str,
    filename: &'a str,
    inline: bool,
    sha256: &'a str,
    size: i64,
}

impl<'a> AttachmentView<'a> {
    fn of(a: &'a AttachmentRow) -> AttachmentView<'a> {
        AttachmentView {
            content_type: &a.content_type,
            filename: &a.filename,
            inline: a.inline,
            sha256: &a.sha256,
            size: a.size,
        }
    }
}

/// Where a message came from: the IMAP mailbox, folder and UID, the imported file, or the
/// source as recorded (`ingest`, or empty for our own outbound mail).
#[derive(Serialize)]
#[serde(untagged)]
enum OriginView<'a> {
    Imap {
        folder: &'a str,
        mailbox: &'a str,
        source: &'a str,
        uid: Option<i64>,
        uidvalidity: Option<i64>,
    },
    Import {
        file: &'a str,
        source: &'a str,
    },
    Other {
        source: &'a str,
    },
}

impl<'a> OriginView<'a> {
    fn of(m: &'a MessageRow) -> OriginView<'a> {
        let source = m.source.as_str();
        if let Some((mailbox, folder)) =
            source.strip_prefix("imap:").and_then(|r| r.split_once('/'))
        {
            let known = |n: i64| (n > 0).then_some(n);
            OriginView::Imap {
                folder,
                mailbox,
                source,
                uid: known(m.uid),
                uidvalidity: known(m.uidvalidity),
            }
        } else if let Some(file) = source.strip_prefix("import:") {
            OriginView::Import { file, source }
        } else {
            OriginView::Other { source }
        }
    }
}
