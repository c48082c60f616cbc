//! Threading: which ticket a message joins ([`resolve`]), decided here and only read from the
//! store, inside the message's transaction. Also the pure parts: which ids a message points
//! at, the `[#N]` subject tag (written by [`tag_text`] everywhere), reply prefixes in many
//! languages, and who the customer of a forwarded request is. Writes nothing: the pipeline
//! records the placement.

use crate::classify::Kind;
use crate::config::{OnClosed, ThreadingConfig};
use crate::error::Result;
use crate::message::{Mailbox, ParsedMessage, forwarded_sender, mailbox_in};
use crate::msgid::{OwnId, verify_own_id};
use crate::store::{TicketStatus, Tx};

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

pub use crate::config::DEFAULT_TAG;

/// The subject tag of ticket `id` with `marker`: `[#42]`, `[Ticket#42]`. Every subject we
/// write and every reason we record uses this, so what we send is what we match.
pub fn tag_text(marker: &str, id: i64) -> String {
    format!("[{marker}{id}]")
}

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

/// Where threading put a message, and the notes worth keeping with it.
#[derive(Debug, Default)]
pub struct Placement {
    /// The ticket it joins; `None`: a new ticket.
    pub ticket: Option<i64>,
    /// Why (or why a tag or id was not trusted).
    pub reasons: Vec<String>,
    /// It is another copy of a message that ticket already holds (nothing to reopen).
    pub copy: bool,
}

/// Decides which ticket a message joins, reading what it needs in the message's transaction.
/// `customer` is the message's customer (see [`customer`]); `failed` the recipients a bounce
/// reports as failed. A closed ticket is reopened or left alone by `[threading] on-closed`.
pub fn resolve(
    tx: &Tx<'_>,
    p: &ParsedMessage,
    kind: Kind,
    customer: &str,
    failed: &[String],
    cfg: &ThreadingConfig,
    now: i64,
) -> Result<Placement> {
    let mut placed = if kind == Kind::Bounce {
        find_bounce_ticket(tx, p, failed, cfg)?
    } else {
        find_ticket(tx, p, customer, cfg)?
    };
    if let Some(t) = placed.ticket
        && kind == Kind::Normal
        && let Some(state) = tx
            .ticket_state(t)?
            .filter(|s| s.status == TicketStatus::Closed)
    {
        let idle_days = (now - state.updated_at) / 86_400;
        let reopen = match cfg.on_closed {
            OnClosed::Reopen => true,
            OnClosed::NewTicket => false,
            OnClosed::NewTicketAfterDays(d) => idle_days < i64::from(d),
        };
        if reopen {
            placed
                .reasons
                .push(format!("thread: closed ticket {t} reopened"));
        } else {
            placed
                .reasons
                .push(format!("thread: ticket {t} is closed; new ticket"));
            placed.ticket = None;
        }
    }
    Ok(placed)
}

/// Another copy of a message we hold (the same Message-ID with other bytes: one post
/// delivered through several lists, each adding its own headers and footer): it joins the
/// ticket that holds it, whatever its status, and reopens nothing. `held` is what the
/// pipeline's duplicate check found under the id: a ticket, and whether with the same content.
/// The id is trusted as an In-Reply-To id is (a list may rewrite the sender). A derived id
/// never counts: it is made from the content, so the same derived id is the same message.
pub fn another_copy(held: Option<(i64, bool)>, p: &ParsedMessage) -> Option<Placement> {
    let (t, _) = held.filter(|&(_, same)| !same && !p.message_id_derived)?;
    Some(Placement {
        ticket: Some(t),
        copy: true,
        reasons: vec![format!(
            "thread: another copy of <{}> already in ticket {t}",
            p.message_id
        )],
    })
}

/// The ticket of an id: a keyed id of ours (valid ones only; a forged one is noted and
/// ignored), else the message we hold under that id (inbound or outbound). With the date of
/// the newest matching message, so the most recent match can win.
fn ticket_of_id(tx: &Tx<'_>, id: &str, notes: &mut Vec<String>) -> Result<Option<(i64, i64)>> {
    match verify_own_id(tx.key(), id) {
        OwnId::Valid(t) => {
            if tx.ticket_state(t)?.is_some() {
                return Ok(Some((t, tx.newest_message_date(t)?)));
            }
            Ok(None)
        }
        OwnId::Forged(t) => {
            let note = format!("thread: forged mailticket id <{id}> for ticket {t} ignored");
            if !notes.contains(&note) {
                notes.push(note);
            }
            Ok(None)
        }
        OwnId::NotOurs => tx.ticket_of_message_id(id),
    }
}

/// The most recent of the tickets `ids` lead to.
fn newest_match(tx: &Tx<'_>, ids: &[String], notes: &mut Vec<String>) -> Result<Option<i64>> {
    let mut best: Option<(i64, i64)> = None;
    for id in ids {
        if let Some((t, at)) = ticket_of_id(tx, id, notes)?
            && best.is_none_or(|(_, b)| at > b)
        {
            best = Some((t, at));
        }
    }
    Ok(best.map(|(t, _)| t))
}

/// The first of the tickets that named `id` for which `keep` holds.
fn referring(tx: &Tx<'_>, id: &str, keep: impl Fn(i64) -> Result<bool>) -> Result<Option<i64>> {
    for t in tx.tickets_referring_to(id)? {
        if keep(t)? {
            return Ok(Some(t));
        }
    }
    Ok(None)
}

/// Finds the ticket a message belongs to, in this order:
///
/// 1. In-Reply-To and every References id against every id we know (messages we hold,
///    inbound or outbound, and our keyed outbound ids even when their row is gone; a forged
///    keyed id is ignored): the most recent match wins.
/// 2. A ticket whose messages named this message as their parent (it arrived late).
/// 3. A ticket whose messages point at the same id, when we never saw that message itself:
///    only when the customer takes part in it, so two strangers answering the same unknown
///    mail stay two tickets.
/// 4. The subject tag, when the customer (or a Cc, or with `trust-tag-domain` the customer's
///    domain) takes part in that ticket; else the reasons say why it was not trusted.
/// 5. With `subject-days`: the same normalised subject from the same sender within N days.
fn find_ticket(
    tx: &Tx<'_>,
    p: &ParsedMessage,
    customer: &str,
    cfg: &ThreadingConfig,
) -> Result<Placement> {
    let mut out = Placement::default();
    let parents = parent_ids(p);
    out.ticket = newest_match(tx, &parents, &mut out.reasons)?;
    if out.ticket.is_none() {
        out.ticket = referring(tx, &p.message_id, |_| Ok(true))?;
    }
    let from = p.from_addr();
    for id in &parents {
        if out.ticket.is_some() {
            break;
        }
        out.ticket = referring(tx, id, |t| {
            Ok(tx.sender_takes_part(t, customer)? || tx.sender_takes_part(t, from)?)
        })?;
    }
    if out.ticket.is_none() {
        out.ticket = trusted_tag(tx, p, customer, cfg, &mut out.reasons)?;
    }
    if out.ticket.is_none() {
        out.ticket = same_subject(tx, p, cfg, &mut out.reasons)?;
    }
    Ok(out)
}

/// Step 4 of [`find_ticket`]: the subject tag, when someone who takes part sent it.
fn trusted_tag(
    tx: &Tx<'_>,
    p: &ParsedMessage,
    customer: &str,
    cfg: &ThreadingConfig,
    reasons: &mut Vec<String>,
) -> Result<Option<i64>> {
    let marker = &cfg.tag;
    let Some(tag) = subject_tag_with(&p.subject, marker) else {
        return Ok(None);
    };
    let shown = tag_text(marker, tag);
    let from = p.from_addr();
    let why = if tx.ticket_state(tag)?.is_none() {
        reasons.push(format!(
            "thread: subject tag {shown} ignored: no such ticket"
        ));
        return Ok(None);
    } else if tx.sender_takes_part(tag, customer)? || tx.sender_takes_part(tag, from)? {
        "sender takes part".to_owned()
    } else if let Some(cc) =
        p.cc.iter()
            .find(|cc| tx.takes_part(tag, &cc.address).unwrap_or(false))
    {
        format!("cc {} takes part", cc.address)
    } else if cfg.trust_tag_domain && tx.domain_takes_part(tag, customer)? {
        "sender's domain takes part".to_owned()
    } else {
        let who = if customer.is_empty() {
            "the sender"
        } else {
            customer
        };
        reasons.push(format!(
            "thread: subject tag {shown} not trusted: {who} takes no part in ticket {tag}"
        ));
        return Ok(None);
    };
    reasons.push(format!("thread: subject tag {shown}: {why}"));
    Ok(Some(tag))
}

/// Step 5 of [`find_ticket`]: with `subject-days`, the same subject from the same sender.
fn same_subject(
    tx: &Tx<'_>,
    p: &ParsedMessage,
    cfg: &ThreadingConfig,
    reasons: &mut Vec<String>,
) -> Result<Option<i64>> {
    let days = i64::from(cfg.subject_days);
    let from = p.from_addr();
    let subject = normalize_subject_with(&p.subject, &cfg.tag);
    if days == 0 || from.is_empty() || subject.is_empty() {
        return Ok(None);
    }
    let date = p.date.unwrap_or_else(crate::time::now);
    let found = tx.same_subject_from(from, &subject, date, days * 86_400)?;
    if found.is_some() {
        reasons.push(format!(
            "thread: same subject from {from} within {days} days"
        ));
    }
    Ok(found)
}

/// Finds the ticket of the message a bounce reports on: its embedded original's id, the
/// original's and the bounce's own In-Reply-To/References, then a subject tag (of the bounce
/// or of the original) when a failed or original recipient takes part in that ticket.
fn find_bounce_ticket(
    tx: &Tx<'_>,
    p: &ParsedMessage,
    failed: &[String],
    cfg: &ThreadingConfig,
) -> Result<Placement> {
    let mut out = Placement::default();
    let original = p.original_anywhere();
    let ids: Vec<String> = original.iter().flat_map(|o| o.message_id.clone()).collect();
    if let Some(t) = newest_match(tx, &ids, &mut out.reasons)? {
        out.ticket = Some(t);
        out.reasons
            .push("bounce: original message found by its Message-ID".into());
        return Ok(out);
    }
    let mut parents: Vec<String> = original.iter().flat_map(|o| o.parents.clone()).collect();
    parents.extend(parent_ids(p));
    if let Some(t) = newest_match(tx, &parents, &mut out.reasons)? {
        out.ticket = Some(t);
        out.reasons
            .push("bounce: original message found by its references".into());
        return Ok(out);
    }
    let marker = &cfg.tag;
    let subjects = [
        Some(p.subject.as_str()),
        original.as_ref().map(|o| o.subject.as_str()),
    ];
    let mut who: Vec<&str> = failed.iter().map(String::as_str).collect();
    if let Some(o) = &original {
        who.extend(o.recipients.iter().map(|r| r.address.as_str()));
    }
    for subject in subjects.into_iter().flatten() {
        if let Some(tag) = subject_tag_with(subject, marker)
            && tx.ticket_state(tag)?.is_some()
        {
            for w in &who {
                if tx.sender_takes_part(tag, w)? {
                    out.ticket = Some(tag);
                    out.reasons.push(format!(
                        "bounce: subject tag {}: {w} takes part",
                        tag_text(marker, tag)
                    ));
                    return Ok(out);
                }
            }
        }
    }
    out.reasons
        .push("bounce: original message unknown; kept as a closed ticket".into());
    Ok(out)
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
    fn forwarded_customer() {
        let fwd = vec!["info@example.com".to_owned()];
        let mut m = ParsedMessage {
            from: Some(Mailbox {
                name: "Info".into(),
                address: "info@example.com".into(),
            }),
            headers: [("resent-from", "Kim <kim@client.example>")]
                .into_iter()
                .collect(),
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
    }
}
