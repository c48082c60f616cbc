//! Pure helpers for threading: which ids a message points at, the `[#N]` subject tag, and
//! reply prefixes in many languages. The store applies them; nothing here does I/O.

use crate::message::ParsedMessage;

/// The ids a reply may point at, most specific first: In-Reply-To, then References newest
/// first. Duplicates removed.
pub fn parent_ids(m: &ParsedMessage) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for id in m.in_reply_to.iter().chain(m.references.iter().rev()) {
        if !out.contains(id) && *id != m.message_id {
            out.push(id.clone());
        }
    }
    out
}

/// The ticket number in a `[#123]` tag, if the subject has one.
pub fn subject_tag(subject: &str) -> Option<i64> {
    let mut rest = subject;
    while let Some(pos) = rest.find("[#") {
        let after = rest.get(pos + 2..).unwrap_or("");
        let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
        if !digits.is_empty()
            && after
                .get(digits.len()..)
                .is_some_and(|r| r.starts_with(']'))
        {
            return digits.parse().ok();
        }
        rest = after;
    }
    None
}

const PREFIXES: &[&str] = &[
    "re", "aw", "sv", "vs", "tr", "antw", "antwort", "fwd", "fw", "wg", "rv", "enc", "res", "odp",
    "ynt", "vá", "atb", "rif", "r", "i", "doorst", "trs", "fs", "παρ", "απ", "回复", "答复",
    "转发", "轉寄", "回覆",
];

/// The subject without reply/forward prefixes (`Re:`, `AW:`, `Fwd:`, `回复：`, `Re[2]:` ...) and
/// without our `[#N]` tag, for display and matching.
pub fn normalize_subject(subject: &str) -> String {
    let mut s = subject.trim();
    loop {
        let before = s;
        if let Some(tag_end) = leading_tag_end(s) {
            s = s.get(tag_end..).unwrap_or("").trim_start();
        }
        if let Some(colon) = s.find([':', '：']) {
            let head = s.get(..colon).unwrap_or("").trim();
            // "Re[2]" and "Re(2)" count as "Re".
            let word = head
                .split(['[', '('])
                .next()
                .unwrap_or("")
                .trim()
                .to_lowercase();
            if !word.is_empty() && PREFIXES.contains(&word.as_str()) {
                let skip = s
                    .get(colon..)
                    .and_then(|r| r.chars().next())
                    .map_or(1, char::len_utf8);
                s = s.get(colon + skip..).unwrap_or("").trim_start();
            }
        }
        if s == before {
            break;
        }
    }
    s.trim().to_owned()
}

/// `[#123]` at the start of `s`: the byte index after it.
fn leading_tag_end(s: &str) -> Option<usize> {
    let rest = s.strip_prefix("[#")?;
    let digits = rest.chars().take_while(char::is_ascii_digit).count();
    (digits > 0 && rest.get(digits..)?.starts_with(']')).then_some(2 + digits + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_stripped() {
        assert_eq!(normalize_subject("Re: AW: Fwd: Order late"), "Order late");
        assert_eq!(normalize_subject("RE[2]: SV: Order"), "Order");
        assert_eq!(normalize_subject("回复：订单"), "订单");
        assert_eq!(normalize_subject("[#12] Re: Order"), "Order");
        assert_eq!(normalize_subject("Re: [#12] Order"), "Order");
        assert_eq!(normalize_subject("Meeting: tomorrow"), "Meeting: tomorrow");
        assert_eq!(normalize_subject("  "), "");
    }

    #[test]
    fn tags() {
        assert_eq!(subject_tag("Re: [#42] Printer"), Some(42));
        assert_eq!(subject_tag("[#] x [#7]"), Some(7));
        assert_eq!(subject_tag("[#x]"), None);
        assert_eq!(subject_tag("Order #42"), None);
    }

    #[test]
    fn parent_ids_order() {
        let m = ParsedMessage {
            message_id: "me".into(),
            in_reply_to: vec!["p".into()],
            references: vec!["root".into(), "mid".into(), "p".into()],
            ..Default::default()
        };
        assert_eq!(parent_ids(&m), ["p", "mid", "root"]);
    }
}
