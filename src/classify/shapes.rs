//! The shapes machines leave in subjects, bodies and sender addresses when they send no
//! automatic header: word lists and pure detectors over strings, for [`super::Signals`]. Each
//! detector answers with the piece of evidence it found (for the reason), or `None`.

use std::sync::LazyLock;

use memchr::memmem::Finder;

/// Openings of automatic-reply subjects beyond the classifier's weak list, in more
/// languages (the Baltic ones also without diacritics). With the weak list they make the
/// machine form `<phrase>: <the original subject>` that is strong enough alone (Outlook,
/// Exchange, Lotus Notes and vacation programs). A person writes "Out of office, please help"
/// or "Automatic reply settings do not save", not the phrase and a colon.
const MORE_AUTO_PREFIXES: &[&str] = &[
    "automatic response",
    "out of office reply",
    "out of office autoreply",
    "out of office auto reply",
    "resposta automatica",
    "odpowiedz automatyczna",
    "automatinis atsakymas",
    "automātiskā atbilde",
    "automatiska atbilde",
    "automaatne vastus",
    "automaatvastus",
    "ārpus biroja",
    "arpus biroja",
    "kontorist väljas",
    "kontorist valjas",
    "ne biure",
    "nėra biure",
    "nera biure",
    "automatická odpověď",
    "automaticka odpoved",
    "automatická odpoveď",
    "automatikus válasz",
    "automatikus valasz",
    "răspuns automat",
    "raspuns automat",
    "otomatik yanıt",
    "otomatik yanit",
    "automatski odgovor",
    "samodejni odgovor",
    "автоматический ответ",
    "автоматична відповідь",
    "автоматичен отговор",
    "αυτόματη απάντηση",
    "自動返信",
];

/// Phrases of the weak list too short or too common to decide alone even before a colon.
const NOT_ALONE: &[&str] = &[
    "ooo",
    "absence",
    "abwesend",
    "afwezig",
    "vacation",
    "on vacation",
];

/// Whether `subject` is an automatic reply by its shape alone: `<phrase>:` from
/// [`AUTO_PREFIXES`], Lotus Notes' `AUTO: <name> is out of the office (returning ...)`, or
/// a helpdesk's own `AutoReply:` after its ticket tag (`[acme #1234] AutoReply: ...`).
/// `weak` is the classifier's list of subject openings.
pub fn auto_reply_subject(subject: &str, weak: &[&'static str]) -> Option<String> {
    let lower = subject.trim_start().to_lowercase();
    if let Some(rest) = lower.strip_prefix("auto:")
        && (rest.contains("out of the office") || rest.contains("out of office"))
    {
        return Some("auto: ... is out of the office".into());
    }
    // A foreign helpdesk's ticket tag first: "[acme #1234] AutoReply: ...".
    let (tagged, body) = match lower.strip_prefix('[').and_then(|r| r.split_once(']')) {
        Some((_, after)) => (true, after.trim_start()),
        None => (false, lower.as_str()),
    };
    let mut phrases = weak
        .iter()
        .copied()
        .filter(|p| !NOT_ALONE.contains(p))
        .chain(MORE_AUTO_PREFIXES.iter().copied());
    let p = phrases.find(|p| {
        body.strip_prefix(p)
            .is_some_and(|rest| rest.trim_start().starts_with([':', '：']))
    })?;
    Some(if tagged {
        format!("{p}, after a ticket tag")
    } else {
        p.to_owned()
    })
}

/// Phrases of mail delivery-failure text (bounces without a DSN part), in a few languages.
/// Only the mail system's words: "my parcel was not delivered, returned to sender" is a
/// customer of a shop, not a bounce.
const BOUNCE_PHRASES: &[&str] = &[
    "message could not be delivered",
    "mail could not be delivered",
    "message couldn't be delivered",
    "message was not delivered",
    "delivery has failed to these recipients",
    "delivery to the following recipient",
    "could not be delivered to the following",
    "following addresses had permanent",
    "permanent fatal error",
    "failed permanently",
    "user unknown",
    "unknown user",
    "no such user",
    "mailbox unavailable",
    "mailbox not found",
    "recipient address rejected",
    "undeliverable to the following",
    "die nachricht konnte nicht zugestellt werden",
    "n'a pas pu être remis",
    "no se pudo entregar el mensaje",
    "宛先不明",
    "配信できませんでした",
    "送信できませんでした",
    "届けることができませんでした",
    "无法投递",
];

/// The delivery-failure phrase in the opening of `text`.
pub fn bounce_text(text: &str) -> Option<&'static str> {
    let lower = opening(text, 4000).to_lowercase();
    BOUNCE_PHRASES.iter().copied().find(|p| lower.contains(p))
}

/// Searchers for `words`, for the detectors' first, cheap test: built once, each finds its
/// word with a vectorised scan (`str::contains` compares byte by byte).
fn finders(words: &[&'static str]) -> Vec<Finder<'static>> {
    words.iter().map(|w| Finder::new(w.as_bytes())).collect()
}

/// Whether `hay` holds the word of any of `finders`.
fn holds_any(finders: &[Finder<'_>], hay: &str) -> bool {
    finders.iter().any(|f| f.find(hay.as_bytes()).is_some())
}

/// At most `max` bytes from the start of `text`, cut at a character boundary.
fn opening(text: &str, max: usize) -> &str {
    let mut cut = text.len().min(max);
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    text.get(..cut).unwrap_or("")
}

/// Words of challenge-response mail: what it asks for, and where the sender is to go.
const CHALLENGE_LISTS: &[&str] = &[
    "whitelist",
    "white list",
    "white-list",
    "allowlist",
    "allow list",
    "allow-list",
    "approved senders",
    "approved sender list",
    "list of approved",
    "allowed senders",
    "safe senders",
    "safe sender list",
];
const CHALLENGE_ASKS: &[&str] = &[
    "click",
    "verify",
    "confirm",
    "complete the form",
    "prove you are",
];

/// A challenge-response verification: the text asks the sender to follow a link (or reply)
/// to be added to an allow list. Needs a link, a list word and an ask.
pub fn challenge_response(text: &str) -> Option<&'static str> {
    static LIST_OR_SENDER: LazyLock<Vec<Finder<'static>>> =
        LazyLock::new(|| finders(&["list", "List", "LIST", "sender", "Sender", "SENDER"]));
    let head = opening(text, 3000);
    // Cheap first: most mail speaks of no list or sender at all.
    if !holds_any(&LIST_OR_SENDER, head) {
        return None;
    }
    let lower = head.to_lowercase();
    if !lower.contains("http") {
        return None;
    }
    let list = CHALLENGE_LISTS
        .iter()
        .copied()
        .find(|w| lower.contains(w))?;
    CHALLENGE_ASKS
        .iter()
        .any(|w| lower.contains(w))
        .then_some(list)
}

/// Local-part endings of list managers (Mailman, Majordomo, ezmlm, Sympa).
const LIST_MANAGER_ENDS: &[&str] = &["-owner", "+owner", "-request", "-bounces", "+bounces"];

/// Whether `local` is a list manager's: the part of it that says so. `-admin` counts only when
/// `about_a_list` (a team's `it-admin@` is people).
pub fn list_manager(local: &str, about_a_list: bool) -> Option<String> {
    let end = LIST_MANAGER_ENDS
        .iter()
        .copied()
        .find(|e| local.len() > e.len() && local.ends_with(e));
    if let Some(e) = end {
        return Some(e.to_owned());
    }
    if local.starts_with("owner-") && local.len() > 6 {
        return Some("owner-".into());
    }
    (about_a_list && local.len() > 6 && local.ends_with("-admin")).then(|| "-admin".into())
}

/// Headers that mailing services put on every message they send.
const BULK_HEADERS: &[&str] = &[
    "feedback-id",
    "x-feedback-id",
    "x-campaign",
    "x-campaignid",
    "x-campaign-id",
    "x-mc-user",
    "x-mailchimp-campaign",
    "x-mailgun-sid",
    "x-mailgun-tag",
    "x-sg-eid",
    "x-sg-id",
    "x-mailjet-campaign",
    "x-mj-mid",
    "x-mandrill-user",
    "x-ses-outgoing",
    "x-pm-message-id",
    "x-mailin-campaign",
    "x-sib-id",
    "x-csa-complaints",
    "x-report-abuse",
    "x-newsletter",
    "x-cron-env",
];

/// The first bulk-mail header `header` finds.
pub fn bulk_header<'a>(header: impl Fn(&str) -> Option<&'a str>) -> Option<&'static str> {
    BULK_HEADERS.iter().copied().find(|h| header(h).is_some())
}

/// An unsubscribe link in the opening or the closing of `text` (where mailings put it): a
/// line with the word and a URL.
pub fn unsubscribe_link(text: &str) -> bool {
    let head = opening(text, 4000);
    let mut from = text.len().saturating_sub(4000).max(head.len());
    while !text.is_char_boundary(from) {
        from += 1;
    }
    static WORDS: LazyLock<Vec<Finder<'static>>> = LazyLock::new(|| {
        finders(&[
            "subscribe",
            "SUBSCRIBE",
            "bmelden",
            "BMELDEN",
            "abonner",
            "ABONNER",
        ])
    });
    let tail = text.get(from..).unwrap_or("");
    [head, tail].iter().any(|part| {
        // Cheap first: most mail has none of the words (any case of their first letter).
        holds_any(&WORDS, part)
            && part.lines().any(|l| {
                let l = l.to_lowercase();
                (l.contains("unsubscribe") || l.contains("abmelden") || l.contains("désabonner"))
                    && (l.contains("http://") || l.contains("https://"))
            })
    })
}

/// Local-part shapes of the envelope senders bulk mail goes out with.
const BULK_SENDER_SHAPES: &[&str] = &[
    "bounce",
    "bounces",
    "newsletter",
    "campaign",
    "mailer",
    "bulk",
    "news",
    "mailings",
];

/// Whether `addr` (lower-case) looks like a bulk sender's envelope address: a VERP bounce
/// address, a newsletter or mailer account.
pub fn bulk_sender_address(addr: &str) -> bool {
    let local = addr.rsplit_once('@').map_or(addr, |(l, _)| l);
    BULK_SENDER_SHAPES.iter().any(|s| {
        local == *s
            || local.starts_with(&format!("{s}-"))
            || local.starts_with(&format!("{s}+"))
            || local.starts_with(&format!("{s}."))
            || local.ends_with(&format!("-{s}"))
            || local.ends_with(&format!("+{s}"))
    })
}

/// Issue trackers, CI and monitoring systems that tag their subjects.
const TRACKER_TAGS: &[&str] = &[
    "[jira]",
    "[jira ",
    "[github]",
    "[gitlab]",
    "[bugzilla]",
    "[bug ",
    "[redmine",
    "[trac]",
    "[confluence]",
    "[jenkins]",
    "[jenkins-",
    "[nagios]",
    "[zabbix]",
    "[icinga]",
    "[sentry]",
    "[grafana]",
    "[alertmanager]",
    "** problem service alert",
    "** recovery service alert",
    "** problem host alert",
    "cron <",
];

/// The tracker or monitoring tag `subject` opens with.
pub fn tracker_tag(subject: &str) -> Option<&'static str> {
    let lower = subject.trim_start().to_lowercase();
    TRACKER_TAGS.iter().copied().find(|t| lower.starts_with(t))
}

/// Local parts of providers' abuse desks and feedback loops.
const ABUSE_LOCALS: &[&str] = &[
    "abuse",
    "fbl",
    "feedbackloop",
    "feedback-loop",
    "scomp",
    "complaints",
    "spamreport",
    "spam-report",
    "arf",
];

/// Whether `local` is an abuse desk's; `staff` counts when the message `mentions` a
/// complaint (the old Hotmail shape).
pub fn abuse_desk(local: &str, mentions: bool) -> bool {
    ABUSE_LOCALS.contains(&local)
        || local.starts_with("abuse-")
        || local.starts_with("abuse_")
        || (mentions && local == "staff")
}

/// Whether `text` speaks of a spam complaint or abuse report.
pub fn mentions_complaint(text: &str) -> bool {
    let lower = opening(text, 4000).to_lowercase();
    ["complaint", "abuse", "spam", "feedback loop"]
        .iter()
        .any(|w| lower.contains(w))
}

/// The `notificationType` of a cloud mail service's JSON notification (SES via SNS), when
/// `text` is one: `"notificationType":"Bounce"`, also inside an escaped `Message` string.
pub fn sns_notification_type(text: &str) -> Option<String> {
    let squeezed: String = opening(text, 20_000)
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '\\')
        .collect();
    let at = squeezed.find("\"notificationType\":\"")? + "\"notificationType\":\"".len();
    let rest = squeezed.get(at..)?;
    let value = rest.split('"').next()?;
    (!value.is_empty() && value.len() < 40).then(|| value.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const WEAK: &[&str] = &[
        "auto reply",
        "autoreply",
        "automatic reply",
        "ooo",
        "自動応答",
    ];

    #[test]
    fn auto_reply_subjects_in_their_machine_form_only() {
        for s in [
            "Auto reply: your order",
            "AutoReply: x",
            "Automatic reply: Printer",
            "AUTO: Hans Meier is out of the office (returning 14.03.2025)",
            "[acme #1234] AutoReply: Re: invoice",
            "Automatinis atsakymas: Sąskaita",
            "Automatiska atbilde: rekins",
            "Arpus biroja: rekins",
            "Automaatne vastus: arve",
            "Automatikus valasz : szamla",
            "自動応答: 請求書",
        ] {
            assert!(auto_reply_subject(s, WEAK).is_some(), "{s}");
        }
        for s in [
            "Out of office, please help",
            "Automatic reply settings do not save",
            "Auto reply does not work",
            "[acme #1234] Re: invoice",
            "Autumn: the new range",
            "Auto: my car",
            "OOO: back Monday",
        ] {
            assert_eq!(auto_reply_subject(s, WEAK), None, "{s}");
        }
    }

    #[test]
    fn text_detectors() {
        assert!(bounce_text("Your message could not be delivered to x").is_some());
        assert!(bounce_text("Thanks for the quick delivery").is_none());
        assert!(bounce_text("My parcel was not delivered: returned to sender").is_none());
        let challenge = "I use a spam filter. Click https://cr.example/v?id=1 to be added \
                         to my list of approved senders.";
        assert!(challenge_response(challenge).is_some());
        assert!(challenge_response("How do I whitelist your domain?").is_none());
        assert_eq!(
            list_manager("users-owner", false).as_deref(),
            Some("-owner")
        );
        assert_eq!(list_manager("it-admin", false), None);
        assert_eq!(list_manager("users-admin", true).as_deref(), Some("-admin"));
        assert_eq!(list_manager("-request", false), None);
        assert!(bulk_sender_address("bounce-mc.123@mcsv.example"));
        assert!(bulk_sender_address("users-bounces@lists.example"));
        assert!(!bulk_sender_address("anna@studio.example"));
        assert!(!bulk_sender_address("newsroom@paper.example"));
        assert_eq!(tracker_tag("[JIRA] (ABC-1) Login fails"), Some("[jira]"));
        assert_eq!(tracker_tag("Jira login fails"), None);
        assert!(unsubscribe_link("Unsubscribe: https://x.example/u/1"));
        let long = format!(
            "{}\nUnsubscribe: https://x.example/u/1",
            "text ".repeat(3000)
        );
        assert!(unsubscribe_link(&long));
        assert!(!unsubscribe_link(&format!("ü{}", "x".repeat(5000))));
        assert!(!unsubscribe_link(
            "How do I unsubscribe from your newsletter?"
        ));
        let sns = r#"{"Type":"Notification","Message":"{\"notificationType\":\"Bounce\"}"}"#;
        assert_eq!(sns_notification_type(sns).as_deref(), Some("Bounce"));
        assert_eq!(sns_notification_type("notificationType"), None);
    }
}
