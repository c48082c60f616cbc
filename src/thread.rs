//! Pure helpers for threading: which ids a message points at, the `[#N]` subject tag, reply
//! prefixes in many languages, our keyed outbound Message-IDs, and who the customer of a
//! forwarded request is. The store applies them (see `store::tickets::find_ticket`); nothing
//! here does I/O.

use crate::message::{Mailbox, ParsedMessage, forwarded_sender, mailbox_in};

/// The ids a reply may point at, most specific first: In-Reply-To, then References newest
/// first. Duplicates removed.
pub fn parent_ids(m: &ParsedMessage) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    m.in_reply_to
        .iter()
        .chain(m.references.iter().rev())
        .filter(|id| **id != m.message_id && seen.insert(id.as_str()))
        .cloned()
        .collect()
}

/// The default subject tag marker: `[#42]`.
pub const DEFAULT_TAG: &str = "#";

/// The ticket number in a `[#123]` tag, if the subject has one.
pub fn subject_tag(subject: &str) -> Option<i64> {
    subject_tag_with(subject, DEFAULT_TAG)
}

/// The ticket number in the first `[<marker>123]` tag of `subject` (the marker compared
/// case-insensitively, so `[Ticket#12]` matches the marker `ticket#`). Numbers that do not fit
/// an i64 or are 0 are no tag.
pub fn subject_tag_with(subject: &str, marker: &str) -> Option<i64> {
    let mut rest = subject;
    while let Some(pos) = rest.find('[') {
        let after = rest.get(pos + 1..).unwrap_or("");
        if let Some(n) = tag_number(after, marker) {
            return Some(n);
        }
        rest = after;
    }
    None
}

/// `<marker>123]...` at the start of `s`: 123, and the byte length including `]`.
fn tag_at(s: &str, marker: &str) -> Option<(i64, usize)> {
    let head = s.get(..marker.len())?;
    if !head.eq_ignore_ascii_case(marker) {
        return None;
    }
    let rest = s.get(marker.len()..)?;
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 || digits > 19 || !rest.get(digits..)?.starts_with(']') {
        return None;
    }
    let n: i64 = rest.get(..digits)?.parse().ok()?;
    (n > 0).then_some((n, marker.len() + digits + 1))
}

fn tag_number(s: &str, marker: &str) -> Option<i64> {
    tag_at(s, marker).map(|(n, _)| n)
}

/// Reply and forward prefixes, lower-case, compared before a `:` or `：`.
#[rustfmt::skip]
const PREFIXES: &[&str] = &[
    // English, and what most clients write.
    "re", "fw", "fwd", "r",
    // German, Dutch, Scandinavian, Finnish.
    "aw", "wg", "antw", "antwort", "doorst", "sv", "vs", "vb", "vl", "fs", "vast",
    // French, Spanish, Portuguese, Italian, Polish, Czech, Turkish, Lithuanian...
    "tr", "rv", "réf", "ref", "rép", "enc", "res", "rif", "i", "odp", "pd", "ynt", "ilt", "vá",
    "atb", "trs",
    // Greek, Russian, Hebrew.
    "απ", "σχετ", "πρθ", "παρ", "отв", "пер", "השב", "הועבר",
    // Chinese, Japanese, Korean.
    "回复", "回覆", "答复", "答覆", "转发", "轉寄", "转寄", "轉發", "転送", "返信", "답장", "전달", "회신",
];

/// Whether `head` (the text before a colon) is a reply or forward prefix: a known word,
/// optionally with a counter (`Re[2]`, `Re(3)`, `Re^2`, `RE2`).
fn is_prefix(head: &str) -> bool {
    let head = head.trim();
    let word = head.split(['[', '(', '^']).next().unwrap_or("").trim();
    let counter = head.get(word.len()..).unwrap_or("").trim();
    let counter_ok = counter.is_empty()
        || (counter.len() >= 3
            && counter.starts_with(['[', '('])
            && counter.ends_with([']', ')'])
            && counter
                .get(1..counter.len() - 1)
                .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit())))
        || counter
            .strip_prefix('^')
            .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()));
    // Turkish "İ" lower-cases to "i" plus a combining dot.
    let word = word.to_lowercase().replace('\u{307}', "");
    let bare = word.trim_end_matches(|c: char| c.is_ascii_digit());
    counter_ok
        && !bare.is_empty()
        && (PREFIXES.contains(&word.as_str())
            || (bare.len() < word.len() && PREFIXES.contains(&bare)))
}

/// The subject without reply/forward prefixes (`Re:`, `AW:`, `Fwd:`, `回复：`, `Re[2]:` ...) and
/// without our `[#N]` tag, for display and matching.
pub fn normalize_subject(subject: &str) -> String {
    normalize_subject_with(subject, DEFAULT_TAG)
}

/// [`normalize_subject`] with another tag marker. Strips repeatedly, in any case, with ASCII
/// or full-width colons, and folds runs of white space into one space.
pub fn normalize_subject_with(subject: &str, marker: &str) -> String {
    let mut s = subject.trim();
    loop {
        let before = s;
        if let Some(end) = s
            .strip_prefix('[')
            .and_then(|r| tag_at(r, marker))
            .map(|(_, len)| len + 1)
        {
            s = s.get(end..).unwrap_or("").trim_start();
        }
        if let Some(colon) = s.find([':', '：'])
            && is_prefix(s.get(..colon).unwrap_or(""))
        {
            let skip = s
                .get(colon..)
                .and_then(|r| r.chars().next())
                .map_or(1, char::len_utf8);
            s = s.get(colon + skip..).unwrap_or("").trim_start();
        }
        if s == before {
            break;
        }
    }
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// What an id says about its origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnId {
    /// Not in our form.
    NotOurs,
    /// Ours, for this ticket, with a valid keyed hash.
    Valid(i64),
    /// In our form but the hash does not verify: forged or from another store.
    Forged(i64),
}

const BASE32: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
/// Characters of the keyed hash: 40 bits.
const MAC_LEN: usize = 8;

fn mac(key: &[u8], ticket: i64, nonce: &str) -> String {
    let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    let tag = ring::hmac::sign(&k, format!("mt.{ticket}.{nonce}").as_bytes());
    tag.as_ref()
        .iter()
        .take(MAC_LEN)
        .map(|b| char::from(BASE32[usize::from(b & 31)]))
        .collect()
}

/// Our Message-ID for an outgoing message of `ticket` (without angle brackets):
/// `mt.<ticket>.<nonce>.<keyed hash>@<domain>`. `nonce` makes each id unique (an outbox row
/// id, a counter); it is reduced to ASCII letters and digits. The hash is an HMAC-SHA256 under
/// the store's key, so a reply threads by it even if the outbound row is gone, and nobody
/// without the key can make one that points at a ticket.
pub fn outbound_id(key: &[u8], ticket: i64, nonce: &str, domain: &str) -> String {
    let nonce: String = nonce
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(32)
        .collect::<String>()
        .to_ascii_lowercase();
    let nonce = if nonce.is_empty() {
        "0".to_owned()
    } else {
        nonce
    };
    format!("mt.{ticket}.{nonce}.{}@{domain}", mac(key, ticket, &nonce))
}

/// Whether `id` is one of ours (see [`outbound_id`]).
pub fn verify_own_id(key: &[u8], id: &str) -> OwnId {
    let local = id
        .rsplit_once('@')
        .map_or(id, |(l, _)| l)
        .to_ascii_lowercase();
    let mut parts = local.split('.');
    let (Some("mt"), Some(t), Some(nonce), Some(h), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return OwnId::NotOurs;
    };
    let Some(ticket) = t
        .parse::<i64>()
        .ok()
        .filter(|n| *n > 0 && t.bytes().all(|b| b.is_ascii_digit()))
    else {
        return OwnId::NotOurs;
    };
    if nonce.is_empty() || h.len() != MAC_LEN {
        return OwnId::NotOurs;
    }
    let want = mac(key, ticket, nonce);
    // Constant time: no early exit on the first differing byte.
    let diff = want
        .bytes()
        .zip(h.bytes())
        .fold(0u8, |acc, (a, b)| acc | (a ^ b));
    if diff == 0 {
        OwnId::Valid(ticket)
    } else {
        OwnId::Forged(ticket)
    }
}

/// The customer of a message and, when it is not simply the sender, why: mail from one of
/// our `forwarders` (a forwarding rule, a distribution group that rewrites the sender) names
/// the customer in `Reply-To`, `X-Original-From`, `Resent-From` or a forwarded header block.
pub fn customer(m: &ParsedMessage, forwarders: &[String]) -> (Mailbox, Option<String>) {
    let plain = m.reply_address().cloned().unwrap_or_default();
    let Some(from) = m.from.as_ref().filter(|f| forwarders.contains(&f.address)) else {
        return (plain, None);
    };
    let ours = |mb: &Mailbox| forwarders.contains(&mb.address);
    let header = |h: &str| m.header(h).and_then(mailbox_in);
    // Cheapest first; the text is searched only when the headers name nobody.
    let sources: [(&str, &dyn Fn() -> Option<Mailbox>); 4] = [
        ("reply-to", &|| m.reply_to.clone()),
        ("x-original-from", &|| header("x-original-from")),
        ("resent-from", &|| header("resent-from")),
        ("forwarded header block", &|| forwarded_sender(&m.text)),
    ];
    let found = sources
        .into_iter()
        .find_map(|(src, get)| get().filter(|mb| !ours(mb)).map(|mb| (src, mb)));
    match found {
        Some((src, mb)) => {
            let why = format!(
                "forwarded by {}: customer {} from {src}",
                from.address, mb.address
            );
            (mb, Some(why))
        }
        None => (
            plain,
            Some(format!(
                "forwarded by {}: no original sender found",
                from.address
            )),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn prefixes_are_stripped() {
        for (subject, want) in [
            ("Re: AW: Fwd: Order late", "Order late"),
            ("RE[2]: SV: Order", "Order"),
            ("回复：订单", "订单"),
            ("[#12] Re: Order", "Order"),
            ("Re: [#12] Order", "Order"),
            ("Meeting: tomorrow", "Meeting: tomorrow"),
            ("  ", ""),
            ("転送: 답장: 전달： 回覆: 答复:Bestellung", "Bestellung"),
            ("Antw: Odp: Doorst: WG: VS: TR: RV: x", "x"),
            ("re(3): Re^2: RE2: fw: x", "x"),
            ("TR : Re :  two   spaces", "two spaces"),
            ("Reply: not a prefix", "Reply: not a prefix"),
            ("Re[x]: odd counter", "Re[x]: odd counter"),
            ("İLT: YNT: Sipariş", "Sipariş"),
        ] {
            assert_eq!(normalize_subject(subject), want, "{subject:?}");
        }
        assert_eq!(normalize_subject_with("[Ticket#9] AW: x", "ticket#"), "x");
    }

    #[test]
    fn tags() {
        assert_eq!(subject_tag("Re: [#42] Printer"), Some(42));
        assert_eq!(subject_tag("[#] x [#7]"), Some(7));
        assert_eq!(subject_tag("[#x]"), None);
        assert_eq!(subject_tag("Order #42"), None);
        assert_eq!(subject_tag("[#0]"), None);
        assert_eq!(subject_tag("[#99999999999999999999999]"), None);
        assert_eq!(subject_tag_with("AW: [Ticket#12] x", "Ticket#"), Some(12));
        assert_eq!(subject_tag_with("AW: [#12] x", "Ticket#"), None);
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

    #[test]
    fn keyed_ids_verify_and_forgeries_fail() {
        let key = [7u8; 32];
        let id = outbound_id(&key, 42, "Row-17", "support.example.com");
        assert!(id.starts_with("mt.42.row17."), "{id}");
        assert!(id.ends_with("@support.example.com"));
        assert_eq!(verify_own_id(&key, &id), OwnId::Valid(42));
        assert_eq!(verify_own_id(&key, &id.to_uppercase()), OwnId::Valid(42));
        assert_eq!(verify_own_id(&[8u8; 32], &id), OwnId::Forged(42));
        let retargeted = id.replacen("mt.42.", "mt.43.", 1);
        assert_eq!(verify_own_id(&key, &retargeted), OwnId::Forged(43));
        assert_eq!(verify_own_id(&key, "abc@example.com"), OwnId::NotOurs);
        assert_eq!(verify_own_id(&key, "mt.x.1.abcdefgh@e"), OwnId::NotOurs);
        assert_eq!(verify_own_id(&key, "mt.1.1.short@e"), OwnId::NotOurs);
        assert_ne!(
            outbound_id(&key, 42, "1", "d"),
            outbound_id(&key, 42, "2", "d")
        );
    }

    #[test]
    fn forwarded_customer() {
        let fwd = vec!["info@example.com".to_owned()];
        let mut m = ParsedMessage {
            from: Some(Mailbox {
                name: "Info".into(),
                address: "info@example.com".into(),
            }),
            headers: vec![("resent-from".into(), "Kim <kim@client.example>".into())],
            ..Default::default()
        };
        let (c, why) = customer(&m, &fwd);
        assert_eq!(c.address, "kim@client.example");
        assert!(why.unwrap().contains("resent-from"));
        m.headers.clear();
        let (c, why) = customer(&m, &fwd);
        assert_eq!(c.address, "info@example.com");
        assert!(why.unwrap().contains("no original sender"));
        let (c, why) = customer(&m, &[]);
        assert_eq!((c.address.as_str(), why), ("info@example.com", None));
    }

    fn prefix() -> impl Strategy<Value = String> {
        let words = prop::sample::select(PREFIXES.to_vec());
        let counter = prop::option::of(1u8..30);
        let colon = prop::sample::select(vec![":", "：", " :"]);
        let case = any::<bool>();
        (words, counter, colon, case).prop_map(|(w, n, c, upper)| {
            let w = if upper {
                w.to_uppercase()
            } else {
                w.to_owned()
            };
            match n {
                Some(n) => format!("{w}[{n}]{c} "),
                None => format!("{w}{c} "),
            }
        })
    }

    proptest! {
        #[test]
        fn stripping_any_prefix_chain_gives_the_subject(
            prefixes in prop::collection::vec(prefix(), 0..6),
            tag in prop::option::of(1i64..1_000_000),
            subject in "[A-Za-z0-9][A-Za-z0-9 ,.!?-]{0,40}",
        ) {
            let base = normalize_subject(&subject);
            let mut s: String = prefixes.concat();
            if let Some(t) = tag {
                s.push_str(&format!("[#{t}] "));
            }
            s.push_str(&subject);
            prop_assert_eq!(normalize_subject(&s), base);
        }

        #[test]
        fn normalising_is_idempotent_and_never_panics(s in "\\PC{0,80}") {
            let once = normalize_subject(&s);
            prop_assert!(once.len() <= s.len());
            prop_assert_eq!(normalize_subject(&once), once);
        }

        #[test]
        fn tag_round_trips(n in 1i64..i64::MAX, before in "[^\\[]{0,20}", after in "\\PC{0,20}") {
            let s = format!("{before}[#{n}]{after}");
            prop_assert_eq!(subject_tag(&s), Some(n));
        }

        #[test]
        fn tag_parser_never_panics(s in "\\PC{0,60}", marker in "[#A-Za-z]{1,4}") {
            let _ = subject_tag_with(&s, &marker);
            let _ = normalize_subject_with(&s, &marker);
        }

        #[test]
        fn keyed_ids_round_trip(key in prop::collection::vec(any::<u8>(), 1..64),
                                t in 1i64..i64::MAX, nonce in "[a-z0-9]{1,20}") {
            let id = outbound_id(&key, t, &nonce, "example.com");
            prop_assert_eq!(verify_own_id(&key, &id), OwnId::Valid(t));
        }
    }
}
