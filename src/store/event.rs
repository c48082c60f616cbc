//! What each event says: its type and its `data`, built from the same JSON shapes that
//! `show --json` prints ([`super::view`]), and capped in size. Pure: the store records what
//! these functions return.

use serde_json::{Value, json};

use super::view::{MessageView, TicketView, message_json_split, ticket_json};
use super::{MessageRow, TicketRow};
use crate::quote::Split;

/// The largest `data` an event carries, serialized: a message's text is cut to fit.
pub const MAX_DATA: usize = 64 * 1024;

/// `data` of `ticket.created` and `ticket.message_added`; `split` is the message's text split
/// ([`crate::quote::split`]).
pub fn ticket_message(ticket: &TicketRow, message: &MessageRow, split: &Split) -> Value {
    capped(json!({
        "mailbox": ticket.mailbox,
        "ticket": ticket_json(ticket),
        "message": message_json_split(message, split),
    }))
}

/// [`ticket_message`] as the event row keeps it, written straight from the rows: without
/// the message's `text`, which the row leaves to the message row (its `text_of`, put back
/// by [`with_text`]), and without `text_new` when that is the whole text (see [`Stored`]).
/// `None` when the event must be cut to fit [`MAX_DATA`] (then [`ticket_message`] and
/// [`capped`] decide what goes, and the row keeps what is left).
pub(crate) fn ticket_message_stored(
    ticket: &TicketRow,
    message: &MessageRow,
    split: &Split,
) -> Option<String> {
    #[derive(serde::Serialize)]
    struct Data<'a> {
        mailbox: &'a str,
        message: MessageView<'a>,
        ticket: TicketView<'a>,
    }
    let data = Data {
        mailbox: &ticket.mailbox,
        message: MessageView::of(message, split).stored().by_reference(),
        ticket: TicketView::of(ticket),
    };
    let mut text = Vec::with_capacity(1024 + split.new.len());
    serde_json::to_writer(&mut text, &data).ok()?;
    // What goes out has `,"text":` and the text back, and `,"text_new":` and the text again
    // when it was left out: their size counts, bounded first by six bytes a character
    // (`\u001f`), counted only when that is too much.
    let copies = if split.new == message.text { 2 } else { 1 };
    let with = |len: usize| text.len() + 8 + 12 * (copies - 1) + copies * len <= MAX_DATA;
    if !(with(6 * message.text.len() + 2) || with(string_len(&message.text))) {
        return None;
    }
    String::from_utf8(text).ok()
}

/// An event row's `data` with the text of the message row it names (`text_of`) back in
/// `message.text`, as it was built; `data` as it is when there is none.
pub fn with_text(data: String, text: Option<String>) -> String {
    let Some(text) = text else {
        return data;
    };
    let Ok(mut v) = serde_json::from_str::<Value>(&data) else {
        return data;
    };
    match v.get_mut("message") {
        Some(Value::Object(m)) => {
            m.insert("text".to_owned(), Value::String(text));
            v.to_string()
        }
        _ => data,
    }
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

/// The length of `v` as `serde_json` writes it (compact), counted without writing it.
fn json_len(v: &Value) -> usize {
    json_size(v, &string_len)
}

/// At least [`json_len`], counted from the lengths alone (a string's byte takes at most six,
/// `\u001f`): every event is checked against [`MAX_DATA`], and most are far below it.
fn json_len_bound(v: &Value) -> usize {
    json_size(v, &|s: &str| 6 * s.len() + 2)
}

/// At most [`json_len`] (no string escaped): what a buffer for `v` starts with.
pub(crate) fn json_len_floor(v: &Value) -> usize {
    json_size(v, &|s: &str| s.len() + 2)
}

/// The length of `v` with each string (and key) taking `string` bytes.
fn json_size(v: &Value, string: &dyn Fn(&str) -> usize) -> usize {
    let items = |n: usize| n.saturating_sub(1) + 2;
    match v {
        Value::Null | Value::Bool(true) => 4,
        Value::Bool(false) => 5,
        Value::Number(n) => number_len(n),
        Value::String(s) => string(s),
        Value::Array(a) => items(a.len()) + a.iter().map(|v| json_size(v, string)).sum::<usize>(),
        Value::Object(m) => {
            items(m.len())
                + m.iter()
                    .map(|(k, v)| string(k) + 1 + json_size(v, string))
                    .sum::<usize>()
        }
    }
}

/// A JSON string's length with its quotes and escapes: `"` `\\` and the short control
/// escapes (`\n` ...) take two bytes, other control characters six (`\u001f`).
fn string_len(s: &str) -> usize {
    let escapes: usize = s
        .bytes()
        .map(|b| match b {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 1,
            0..=0x1f => 5,
            _ => 0,
        })
        .sum();
    s.len() + escapes + 2
}

fn number_len(n: &serde_json::Number) -> usize {
    let digits = |mut x: u64| {
        let mut d = 1;
        while x >= 10 {
            x /= 10;
            d += 1;
        }
        d
    };
    match (n.as_u64(), n.as_i64()) {
        (Some(u), _) => digits(u),
        (None, Some(i)) => digits(i.unsigned_abs()) + 1,
        _ => n.to_string().len(),
    }
}

/// `data` within [`MAX_DATA`]: a long `message.text` (then `message.text_new`, then long
/// lists) cut to fit, with `truncated: true`.
pub fn capped(mut data: Value) -> Value {
    if json_len_bound(&data) <= MAX_DATA {
        return data;
    }
    let size = json_len;
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
    let mut data: Value = serde_json::from_str(data).unwrap_or(Value::Null);
    // Stored once when it is the whole text (see [`Stored`]).
    if let Some(Value::Object(m)) = data.get_mut("message")
        && !m.contains_key("text_new")
        && let Some(text) = m.get("text").cloned()
    {
        m.insert("text_new".to_owned(), text);
    }
    json!({
        "type": kind,
        "id": uid,
        "timestamp": crate::time::rfc3339(created_at),
        "data": data,
    })
}

/// `data` as the event row keeps it: a message's `text_new` is left out when it equals its
/// `text` ([`wire`] puts it back), so the text of a new request is stored once, not twice.
pub struct Stored<'a>(pub &'a Value);

impl serde::Serialize for Stored<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let Value::Object(top) = self.0 else {
            return self.0.serialize(s);
        };
        let mut map = s.serialize_map(Some(top.len()))?;
        for (k, v) in top {
            match v {
                Value::Object(m)
                    if k == "message"
                        && m.get("text_new").is_some_and(|n| Some(n) == m.get("text")) =>
                {
                    map.serialize_entry(k, &Without(m, "text_new"))?;
                }
                _ => map.serialize_entry(k, v)?,
            }
        }
        map.end()
    }
}

/// An object without one of its keys.
struct Without<'a>(&'a serde_json::Map<String, Value>, &'static str);

impl serde::Serialize for Without<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(self.0.len().saturating_sub(1)))?;
        for (k, v) in self.0.iter().filter(|(k, _)| k.as_str() != self.1) {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_text_new_that_is_the_whole_text_is_stored_once_and_read_back() {
        let same = json!({"mailbox": "m", "message": {"text": "hi", "text_new": "hi", "id": 3}});
        let stored = serde_json::to_string(&Stored(&same)).unwrap();
        assert_eq!(stored, r#"{"mailbox":"m","message":{"id":3,"text":"hi"}}"#);
        assert_eq!(wire("evt_1", "ticket.created", 0, &stored)["data"], same);
        let quoted = json!({"message": {"text": "hi\n> old", "text_new": "hi"}});
        let stored = serde_json::to_string(&Stored(&quoted)).unwrap();
        assert_eq!(stored, serde_json::to_string(&quoted).unwrap());
        assert_eq!(wire("evt_2", "ticket.created", 0, &stored)["data"], quoted);
        let other = json!({"to": "open", "ticket": {"text": "x"}});
        let stored = serde_json::to_string(&Stored(&other)).unwrap();
        assert_eq!(
            wire("evt_3", "ticket.status_changed", 0, &stored)["data"],
            other
        );
    }

    fn rows(text: &str, source: &str) -> (TicketRow, MessageRow) {
        let ticket = TicketRow {
            id: 7,
            subject: "Printer \"on fire\"".into(),
            status: super::super::TicketStatus::Open,
            customer: "ann@example.com".into(),
            customer_name: "Ann \u{e9}".into(),
            mailbox: "support".into(),
            created_at: 1_700_000_000,
            updated_at: 1_700_000_100,
            messages: 2,
            kind: "normal".into(),
        };
        let message = MessageRow {
            id: 3,
            message_id: "1@x".into(),
            direction: super::super::Direction::In,
            from: "ann@example.com".into(),
            from_name: "Ann".into(),
            to: vec!["support@example.com".into()],
            cc: vec![],
            subject: "Re: Printer".into(),
            date: 1_700_000_050,
            kind: "normal".into(),
            reasons: vec!["a \\ reason".into()],
            text: text.into(),
            attachments: vec![super::super::AttachmentRow {
                filename: "a\tb.pdf".into(),
                content_type: "application/pdf".into(),
                size: 12,
                sha256: "ab".repeat(32),
                inline: false,
            }],
            source: source.into(),
            uidvalidity: if source.starts_with("imap:") { 9 } else { 0 },
            uid: if source.starts_with("imap:") { 4 } else { 0 },
        };
        (ticket, message)
    }

    #[test]
    fn a_message_event_written_from_the_rows_is_the_text_its_value_gives() {
        let texts = [
            "Hello,\nit is broken.\n",
            "New words.\n\nOn Monday Ann wrote:\n> old \"quoted\"\n> text\n\n-- \nAnn\n",
            "control \u{1} tab \t caf\u{e9} \u{1f600}",
            "",
        ];
        let sources = ["imap:support/INBOX", "import:/tmp/a.eml", "ingest", ""];
        for text in texts {
            for source in sources {
                let (ticket, message) = rows(text, source);
                let split = crate::quote::split(text);
                let direct = ticket_message_stored(&ticket, &message, &split).unwrap();
                let value = ticket_message(&ticket, &message, &split);
                let stored = serde_json::to_string(&Stored(&value)).unwrap();
                let mut without: Value = serde_json::from_str(&stored).unwrap();
                without["message"].as_object_mut().unwrap().remove("text");
                assert_eq!(direct, without.to_string());
                assert!(!direct.contains(r#""text":"#), "{direct}");
                let back = with_text(direct, Some(text.to_owned()));
                assert_eq!(back, stored);
                assert_eq!(
                    wire("evt_1", "ticket.created", 0, &back)["data"],
                    value,
                    "{text:?} {source:?}"
                );
            }
        }
    }

    #[test]
    fn an_event_without_a_text_of_is_read_as_it_was_stored() {
        let data = r#"{"mailbox":"m","ticket":{"id":1}}"#.to_owned();
        assert_eq!(with_text(data.clone(), None), data);
        assert_eq!(with_text(data.clone(), Some("x".into())), data);
        let cut = r#"{"message":{"text":"cut"},"truncated":true}"#.to_owned();
        assert_eq!(with_text(cut.clone(), None), cut);
    }

    #[test]
    fn a_message_event_that_must_be_cut_is_left_to_the_value() {
        // Stored once (`text_new` is the whole text), 40,000 bytes fit; on the wire, with
        // `text_new` back, they do not.
        let text = "x".repeat(40_000);
        let (ticket, message) = rows(&text, "ingest");
        let split = crate::quote::split(&text);
        assert_eq!(split.new, text);
        assert_eq!(ticket_message_stored(&ticket, &message, &split), None);
        assert_eq!(
            ticket_message(&ticket, &message, &split)["truncated"],
            Value::Bool(true)
        );
        let text = "x".repeat(20_000);
        let (ticket, message) = rows(&text, "ingest");
        assert!(ticket_message_stored(&ticket, &message, &crate::quote::split(&text)).is_some());
    }

    #[test]
    fn json_len_is_the_length_serde_json_writes() {
        let v = json!({
            "text": "quote \" backslash \\ newline \n tab \t cr \r bell \u{7} nul \u{0} \u{8}\u{c}\u{1f}\u{7f} é 注文 😀",
            "n": [0, 9, 10, -1, -10, 12345678901234_i64, u64::MAX, i64::MIN, 1.5, -0.25, 1e300],
            "b": [true, false, null], "empty": {}, "none": [],
            "nested": {"": [{"k\"": "v"}]},
        });
        let len = serde_json::to_string(&v).unwrap().len();
        assert_eq!(json_len(&v), len);
        assert!(json_len_floor(&v) <= len && len <= json_len_bound(&v));
        for s in ["", "a", "\u{1}", "é\n"] {
            let v = Value::String(s.into());
            assert_eq!(
                json_len(&v),
                serde_json::to_string(&v).unwrap().len(),
                "{s:?}"
            );
        }
    }

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
        // Over the quick bound (six bytes a character), under the cap: kept whole.
        let text = "a\n".repeat(10_000);
        let v = capped(json!({"message": {"text": text}}));
        assert!(v.get("truncated").is_none());
        assert_eq!(v["message"]["text"].as_str().unwrap().len(), 20_000);
    }
}
