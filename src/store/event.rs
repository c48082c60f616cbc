//! What each event says: its type and its `data`, built from the same JSON shapes that
//! `show --json` prints ([`super::view`]), and capped in size. Pure: the store records what
//! these functions return.

use serde_json::{Value, json};

use super::view::{message_json, ticket_json};
use super::{MessageRow, TicketRow};

/// The largest `data` an event carries, serialized: a message's text is cut to fit.
pub const MAX_DATA: usize = 64 * 1024;

/// `data` of `ticket.created` and `ticket.message_added`.
pub fn ticket_message(ticket: &TicketRow, message: &MessageRow) -> Value {
    capped(json!({
        "mailbox": ticket.mailbox,
        "ticket": ticket_json(ticket),
        "message": message_json(message),
    }))
}

/// `data` of `ticket.status_changed`: `from` is `None` for a ticket filed in its status.
pub fn status_changed(ticket: &TicketRow, from: Option<&str>, why: &str) -> Value {
    json!({
        "mailbox": ticket.mailbox,
        "ticket": ticket_json(ticket),
        "from": from,
        "to": ticket.status,
        "reason": why,
    })
}

/// One recipient a delivery report names.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Bounced {
    /// The address that failed.
    pub recipient: String,
    /// Its status code, e.g. `5.1.1` (empty when the report gave none).
    pub status: String,
    /// The server's diagnostic.
    pub diagnostic: String,
}

/// `data` of `message.bounced`.
pub fn bounced(ticket: &TicketRow, message_id: &str, recipients: &[Bounced]) -> Value {
    capped(json!({
        "mailbox": ticket.mailbox,
        "ticket": ticket_json(ticket),
        "message_id": message_id,
        "recipients": recipients,
    }))
}

/// One outbox result.
#[derive(Debug, Clone, serde::Serialize)]
pub struct OutboxResult<'a> {
    /// The outbox row.
    pub id: i64,
    /// `ack` or `reply`.
    pub kind: &'a str,
    /// Main recipient.
    pub to: &'a str,
    /// The server's reply, or why it failed.
    pub detail: &'a str,
}

/// `data` of `outbound.sent` and `outbound.failed`.
pub fn outbound(ticket: Option<&TicketRow>, result: &OutboxResult<'_>) -> Value {
    capped(json!({
        "mailbox": ticket.map_or("", |t| t.mailbox.as_str()),
        "ticket": ticket.map(ticket_json),
        "outbox": result,
    }))
}

/// `data` within [`MAX_DATA`]: a long `message.text` (then `message.text_new`, then long
/// lists) cut to fit, with `truncated: true`.
pub fn capped(mut data: Value) -> Value {
    let size = |v: &Value| serde_json::to_string(v).map_or(0, |s| s.len());
    let over = size(&data).saturating_sub(MAX_DATA);
    if over == 0 {
        return data;
    }
    // The full text goes first: what the sender wrote now is what a receiver shows.
    for field in ["/message/text", "/message/text_new"] {
        let over = size(&data).saturating_sub(MAX_DATA);
        if over == 0 {
            break;
        }
        if let Some(Value::String(text)) = data.pointer_mut(field) {
            let keep = text.len().saturating_sub(over + 64);
            let mut cut = keep;
            while cut > 0 && !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
        }
    }
    for list in ["/message/attachments", "/message/reasons", "/recipients"] {
        if size(&data) <= MAX_DATA {
            break;
        }
        if let Some(Value::Array(a)) = data.pointer_mut(list) {
            a.truncate(16);
        }
    }
    if size(&data) > MAX_DATA
        && let Some(Value::Object(m)) = data.pointer_mut("/message")
    {
        for key in ["to", "cc", "subject", "text", "text_new"] {
            m.remove(key);
        }
    }
    data["truncated"] = Value::Bool(true);
    data
}

/// An event as it goes out (webhook body, command stdin, `events --json`).
pub fn wire(uid: &str, kind: &str, created_at: i64, data: &str) -> Value {
    let data: Value = serde_json::from_str(data).unwrap_or(Value::Null);
    json!({
        "type": kind,
        "id": uid,
        "timestamp": crate::time::rfc3339(created_at),
        "data": data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_text_is_cut_to_the_cap_with_a_flag() {
        let text = "é".repeat(100_000);
        let v = capped(json!({"ticket": {"id": 1}, "message": {"text": text, "attachments": []}}));
        assert!(serde_json::to_string(&v).unwrap().len() <= MAX_DATA);
        assert_eq!(v["truncated"], Value::Bool(true));
        assert!(v["message"]["text"].as_str().unwrap().len() > 60_000);
        // With the new part beside it, the full text is cut first.
        let text = "é".repeat(100_000);
        let new = "a".repeat(50_000);
        let v = capped(json!({"message": {"text": text, "text_new": new, "attachments": []}}));
        assert!(serde_json::to_string(&v).unwrap().len() <= MAX_DATA);
        assert_eq!(v["message"]["text_new"].as_str().unwrap().len(), 50_000);
        assert!(v["message"]["text"].as_str().unwrap().len() < 200_000);
        let small = capped(json!({"message": {"text": "hi"}}));
        assert!(small.get("truncated").is_none());
    }
}
