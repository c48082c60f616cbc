//! The JSON shapes users and scripts see: a ticket and a message as `show --json` prints
//! them. Events carry the same shapes, so a receiver parses one format. Pure: no store, no I/O.

use serde_json::{Value, json};

use super::{MessageRow, TicketRow};
use crate::time::rfc3339;

/// A ticket as `tickets --json` and `show --json` print it (without its messages).
pub fn ticket_json(t: &TicketRow) -> Value {
    json!({
        "id": t.id,
        "subject": t.subject,
        "status": t.status,
        "customer": t.customer,
        "customer_name": t.customer_name,
        "mailbox": t.mailbox,
        "created_at": rfc3339(t.created_at),
        "updated_at": rfc3339(t.updated_at),
        "messages": t.messages,
        "kind": t.kind,
    })
}

/// A message as `show --json` prints it: attachments as metadata (name, type, size, sha256,
/// inline), the full `text` and, split from it, what the sender wrote now (`text_new`) and how
/// many lines of quoted history and signature that leaves out.
pub fn message_json(m: &MessageRow) -> Value {
    message_json_split(m, &crate::quote::split(&m.text))
}

/// [`message_json`] with its text's `split` already made (see [`crate::quote::split`]).
pub fn message_json_split(m: &MessageRow, split: &crate::quote::Split) -> Value {
    json!({
        "message_id": m.message_id,
        "direction": m.direction,
        "from": m.from,
        "from_name": m.from_name,
        "to": m.to,
        "cc": m.cc,
        "subject": m.subject,
        "date": rfc3339(m.date),
        "kind": m.kind,
        "reasons": m.reasons,
        "text": m.text,
        "text_new": split.new,
        "quoted_lines": split.quoted_lines,
        "signature_lines": split.signature_lines,
        "attachments": m.attachments,
        "origin": origin_json(m),
    })
}

/// Where a message came from: the IMAP mailbox, folder and UID, the imported file, or the
/// source as recorded (`ingest`, or empty for our own outbound mail).
fn origin_json(m: &MessageRow) -> Value {
    if let Some((mailbox, folder)) = m
        .source
        .strip_prefix("imap:")
        .and_then(|r| r.split_once('/'))
    {
        let known = |n: i64| (n > 0).then_some(n);
        json!({"source": m.source, "mailbox": mailbox, "folder": folder,
               "uidvalidity": known(m.uidvalidity), "uid": known(m.uid)})
    } else if let Some(file) = m.source.strip_prefix("import:") {
        json!({"source": m.source, "file": file})
    } else {
        json!({"source": m.source})
    }
}
