//! Outbound mail: acknowledgements of new requests and agent replies, through the customer's
//! own SMTP server, never the engine of a mail loop.
//!
//! Everything we send goes through the outbox in the store. An acknowledgement is queued in
//! the same transaction that creates its ticket; [`drain`] sends the queue: `pending` →
//! `sending` (committed before SMTP DATA, claimed by this process) → `sent` | `failed` (5xx) |
//! back to `pending` with backoff (4xx, connection, TLS, timeout: all before the final dot). A
//! timeout or lost connection after the final dot leaves the row in `sending` (the server may
//! have it). A `sending` row whose claimer is gone was interrupted after DATA may have begun:
//! it is reported and never resent on its own (at most once); one claimed by a live process is
//! being sent right now and left alone.

pub mod ack;
pub mod graph;
pub mod reply;
pub mod senders;
pub mod smtp;
pub mod template;

use std::sync::Arc;

use lettre::message::header::{HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart, SinglePart};

use crate::classify::{Classification, Kind};
use crate::config::{AckConfig, Config};
use crate::error::{Error, Result};
use crate::message::ParsedMessage;
use crate::store::StoreThread;
use template::AckTemplates;

/// Parses `Name <addr>` or `addr`.
pub fn parse_mailbox(s: &str) -> Option<Mailbox> {
    s.trim().parse::<Mailbox>().ok()
}

/// Our keyed Message-ID for a new outbound message on `ticket` (see
/// [`crate::msgid::outbound_id`]), with a random nonce so each message's id is unique.
pub fn new_message_id(key: &[u8], ticket: i64, domain: &str) -> String {
    let mut nonce = [0u8; 6];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut nonce);
    crate::msgid::outbound_id(key, ticket, &crate::message::hex(&nonce), domain)
}

/// Who an acknowledgement comes from: the From, the texts and the sign-off of one mailbox
/// (or of `[smtp]` and `[ack]`, for tickets of no configured mailbox).
pub struct AckIdentity {
    /// The compiled templates.
    pub templates: AckTemplates,
    /// Our From.
    pub from: Mailbox,
    /// `{{ mailbox.signature }}`: the configured one, else the From's display name, else its
    /// address. Never the config's internal mailbox name.
    pub signature: String,
}

impl AckIdentity {
    /// The identity of `from` (an address, checked by the config loader) writing `ack`'s
    /// texts; `at` names the table in errors.
    fn new(ack: &AckConfig, from: &str, at: &str) -> std::result::Result<AckIdentity, String> {
        let templates = AckTemplates::compile(ack).map_err(|e| format!("{at}: {e}"))?;
        let from =
            parse_mailbox(from).ok_or_else(|| format!("`from = {from:?}` is not an address"))?;
        let signature = ack
            .signature
            .clone()
            .or_else(|| from.name.clone().filter(|n| !n.trim().is_empty()))
            .unwrap_or_else(|| from.email.to_string());
        Ok(AckIdentity {
            templates,
            from,
            signature,
        })
    }

    /// The domain of our From, for Message-IDs.
    pub fn domain(&self) -> String {
        self.from.email.domain().to_owned()
    }
}

/// Everything needed to decide on and write an acknowledgement, shared by the pipeline.
pub struct AckPlan {
    /// `[smtp]`'s From with `[ack]`'s texts.
    pub default: AckIdentity,
    /// Each mailbox's identity, by its name.
    pub mailboxes: std::collections::HashMap<String, AckIdentity>,
    /// Limits and age.
    pub per_hour: u32,
    /// Per-day limit.
    pub per_day: u32,
    /// Maximum age of the customer's message, seconds.
    pub max_age: i64,
    /// Our own addresses, every identity's From among them (never acknowledged).
    pub own: Vec<String>,
}

impl AckPlan {
    /// The plan for `config`, when acknowledgements are enabled. The templates of `[ack]` and
    /// of each mailbox are compiled and test-rendered here, once: a problem is a
    /// configuration error naming the file and the table.
    pub fn from_config(config: &Config) -> Result<Option<Arc<AckPlan>>> {
        let (true, Some(smtp)) = (config.ack.enabled, config.smtp.as_ref()) else {
            return Ok(None);
        };
        let cfg_err = |message: String| Error::Config {
            path: config.path.clone(),
            message,
        };
        let default = AckIdentity::new(&config.ack, &smtp.from, "[ack]").map_err(cfg_err)?;
        let mut own = config.own_addresses();
        let mut mailboxes = std::collections::HashMap::new();
        for (i, mb) in config.mailboxes.iter().enumerate() {
            let from = mb.from.as_deref().unwrap_or(&smtp.from);
            let at = format!("{}: ack", mb.label(i));
            let id = AckIdentity::new(&mb.ack_config(&config.ack), from, &at).map_err(cfg_err)?;
            own.push(id.from.email.to_string().to_ascii_lowercase());
            mailboxes.insert(mb.name.clone(), id);
        }
        own.push(default.from.email.to_string().to_ascii_lowercase());
        own.sort();
        own.dedup();
        let AckConfig {
            per_sender_per_hour,
            per_sender_per_day,
            max_age,
            ..
        } = config.ack;
        Ok(Some(Arc::new(AckPlan {
            default,
            mailboxes,
            per_hour: per_sender_per_hour,
            per_day: per_sender_per_day,
            max_age: i64::try_from(max_age).unwrap_or(i64::MAX),
            own,
        })))
    }

    /// The identity acknowledgements on `mailbox`'s tickets go out with.
    pub fn identity(&self, mailbox: &str) -> &AckIdentity {
        self.mailboxes.get(mailbox).unwrap_or(&self.default)
    }

    /// Reasons not to acknowledge this message that need no store: its kind, its sender,
    /// its age. Empty means "go on and check the rate limits".
    pub fn blockers(&self, p: &ParsedMessage, class: &Classification, now: i64) -> Vec<String> {
        let mut why = Vec::new();
        if class.kind != Kind::Normal {
            why.push(format!("kind is {}", class.kind.as_str()));
        }
        for b in &class.blocks_ack {
            if !why.contains(b) {
                why.push(b.clone());
            }
        }
        match p.reply_address() {
            None => why.push("no sender address".to_owned()),
            Some(to) => {
                if class.blocks_ack.is_empty() && crate::classify::is_no_reply(&to.address) {
                    why.push(format!("no-reply sender {}", to.address));
                }
                if self.own.contains(&to.address) {
                    why.push("sender is one of our own addresses".to_owned());
                }
            }
        }
        if let Some(date) = p.date
            && now - date > self.max_age
        {
            why.push(format!(
                "message is older than ack.max-age ({} s)",
                self.max_age
            ));
        }
        why
    }
}

/// The subject we write is cut to this many characters (plus "…"): a customer's 1 MB
/// subject must not make our mail exceed the 998-byte line limit.
pub const SUBJECT_CHARS: usize = 200;
/// At most this many ids go into our References: the first (the thread's root) and the
/// latest ones (RFC 5322 3.6.4 allows trimming).
pub const REFERENCES_KEPT: usize = 40;

/// One mail to compose.
pub struct Compose<'a> {
    /// From.
    pub from: &'a Mailbox,
    /// To.
    pub to: &'a [Mailbox],
    /// Cc.
    pub cc: &'a [Mailbox],
    /// Subject.
    pub subject: &'a str,
    /// Plain text.
    pub text: &'a str,
    /// Optional HTML alternative.
    pub html: Option<&'a str>,
    /// Our Message-ID, without brackets.
    pub message_id: &'a str,
    /// The message we answer, without brackets.
    pub in_reply_to: Option<&'a str>,
    /// Its References plus its own id, oldest first, without brackets.
    pub references: &'a [String],
    /// RFC 3834 `Auto-Submitted: auto-replied` (acknowledgements only).
    pub auto_submitted: bool,
}

/// `subject` cut to [`SUBJECT_CHARS`] characters (on a character boundary, with "…"), on one
/// line: line breaks and other control characters become spaces.
pub fn short_subject(subject: &str) -> String {
    let mut out: String = subject
        .chars()
        .take(SUBJECT_CHARS)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if subject.chars().nth(SUBJECT_CHARS).is_some() {
        out.push('…');
    }
    out
}

/// The ids to write into References: each unfolded and cleaned, empty or absurd ones dropped,
/// duplicates dropped, and at most [`REFERENCES_KEPT`]: the first plus the latest.
fn clean_references(refs: &[String]) -> Vec<String> {
    let mut ids: Vec<String> = Vec::new();
    for id in refs.iter().flat_map(|r| crate::message::clean_ids(r)) {
        if plausible_id(&id) && !ids.contains(&id) {
            ids.push(id);
        }
    }
    if ids.len() > REFERENCES_KEPT {
        ids.drain(1..ids.len() + 1 - REFERENCES_KEPT);
    }
    ids
}

/// Whether `id` (brackets gone) can be written into a header as it is.
fn plausible_id(id: &str) -> bool {
    id.len() <= 250 && id.contains('@') && !id.chars().any(|c| c.is_control() || c == ' ')
}

/// The text of a mail we send, with [`crate::quote::REPLY_MARKER`] as its first line: a reply
/// that quotes it is cut there (see [`crate::quote`]).
fn with_marker(text: &str) -> String {
    format!("{}\n\n{text}", crate::quote::REPLY_MARKER)
}

/// The HTML alternative with the marker as visible text (an attribute or id would not survive
/// the mail clients that rewrite HTML), after `<body>` when there is one.
fn html_with_marker(html: &str) -> String {
    let marker = format!(
        "<p style=\"color:#888888\">{}</p>\n",
        crate::quote::REPLY_MARKER
    );
    let body = html.to_ascii_lowercase().find("<body").and_then(|at| {
        let close = html.get(at..)?.find('>')?;
        Some(at + close + 1)
    });
    match body {
        Some(at) => format!("{}{marker}{}", &html[..at], &html[at..]),
        None => format!("{marker}{html}"),
    }
}

/// Builds the exact bytes to send: the text (and HTML) start with the reply marker.
pub fn compose(c: &Compose<'_>) -> Result<Vec<u8>> {
    let mut b = lettre::Message::builder()
        .from(c.from.clone())
        .subject(short_subject(c.subject))
        .message_id(Some(format!("<{}>", c.message_id)))
        .date_now()
        .raw_header(HeaderValue::new(
            HeaderName::new_from_ascii_str("X-Auto-Response-Suppress"),
            "All".to_owned(),
        ));
    for to in c.to {
        b = b.to(to.clone());
    }
    for cc in c.cc {
        b = b.cc(cc.clone());
    }
    let parent = c
        .in_reply_to
        .and_then(|p| crate::message::clean_ids(p).into_iter().next())
        .filter(|p| plausible_id(p));
    if let Some(parent) = parent {
        b = b.in_reply_to(format!("<{parent}>"));
    }
    let references = clean_references(c.references);
    if !references.is_empty() {
        // One header with every id: lettre's setter replaces, so build the whole value.
        let all: Vec<String> = references.iter().map(|r| format!("<{r}>")).collect();
        b = b.references(all.join(" "));
    }
    if c.auto_submitted {
        b = b.raw_header(HeaderValue::new(
            HeaderName::new_from_ascii_str("Auto-Submitted"),
            "auto-replied".to_owned(),
        ));
    }
    let text = with_marker(c.text);
    let msg = match c.html {
        Some(html) => b.multipart(MultiPart::alternative_plain_html(
            text,
            html_with_marker(html),
        )),
        None => b.singlepart(SinglePart::plain(text)),
    }
    .map_err(|e| Error::Compose(e.to_string()))?;
    Ok(msg.formatted())
}

/// What one drain of the outbox did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct DrainReport {
    /// Accepted by the server.
    pub sent: u64,
    /// Refused for good (5xx).
    pub failed: u64,
    /// Put back for a later attempt (4xx, connection, TLS).
    pub deferred: u64,
    /// Rows found in `sending` by an interrupted run (or an earlier uncertain send), whose
    /// sender is gone: not resent.
    pub stuck: u64,
    /// Sent, but no answer came after the final dot: left in `sending`, not resent.
    pub uncertain: u64,
    /// One line per problem.
    pub errors: Vec<String>,
}

/// What sends the outbox: an SMTP server, or Microsoft Graph `sendMail`
/// (`[smtp] transport = "graph"`).
pub enum Sender {
    /// SMTP with lettre.
    Smtp(smtp::Smtp),
    /// Microsoft Graph.
    Graph(graph::GraphSender),
}

impl Sender {
    /// The sender `[smtp]` describes, with its credentials.
    pub fn new(
        c: &crate::config::SmtpConfig,
        creds: Option<crate::oauth2::Credentials>,
    ) -> crate::error::Result<Sender> {
        Ok(match c.transport {
            crate::config::SmtpTransport::Smtp => Sender::Smtp(smtp::Smtp::new(c, creds)?),
            crate::config::SmtpTransport::Graph => {
                Sender::Graph(graph::GraphSender::new(c, creds)?)
            }
        })
    }

    /// How long one send may take.
    pub fn timeout(&self) -> std::time::Duration {
        match self {
            Sender::Smtp(s) => s.timeout(),
            Sender::Graph(g) => g.timeout(),
        }
    }

    /// The server's host.
    pub fn host(&self) -> &str {
        match self {
            Sender::Smtp(s) => s.host(),
            Sender::Graph(g) => g.host(),
        }
    }

    /// Sends `raw` (to `rcpt` over SMTP; Graph reads the recipients from its header).
    pub async fn send(&self, from: &str, rcpt: &[String], raw: &[u8]) -> smtp::Sent {
        match self {
            Sender::Smtp(s) => s.send(from, rcpt, raw).await,
            Sender::Graph(g) => g.send(raw).await,
        }
    }

    /// A session for a drain: over SMTP one connection kept open across sends (see
    /// [`smtp::Session`]); Graph's requests stand alone.
    pub fn session(&self) -> Session<'_> {
        match self {
            Sender::Smtp(s) => Session::Smtp(Box::new(s.session())),
            Sender::Graph(g) => Session::Graph(g),
        }
    }
}

/// What [`Sender::session`] gives.
pub enum Session<'a> {
    /// SMTP, one connection for many messages.
    Smtp(Box<smtp::Session<'a>>),
    /// Graph `sendMail`, a request a message.
    Graph(&'a graph::GraphSender),
}

impl Session<'_> {
    /// Sends `raw` as [`Sender::send`] does.
    pub async fn send(&mut self, from: &str, rcpt: &[String], raw: &[u8]) -> smtp::Sent {
        match self {
            Session::Smtp(s) => s.send(from, rcpt, raw).await,
            Session::Graph(g) => g.send(raw).await,
        }
    }

    /// Ends the session politely (QUIT over SMTP).
    pub async fn close(self) {
        if let Session::Smtp(s) = self {
            s.close().await;
        }
    }
}

/// Sends every due `pending` row, each through its mailbox's server (see [`senders`]), over
/// one connection per server kept open for the drain (a new one after a failure; see
/// [`smtp::Session`]).
pub async fn drain(store: &StoreThread, senders: &senders::Senders) -> DrainReport {
    let mut report = DrainReport::default();
    let now = crate::time::now();
    match store.call(move |s| s.outbox_stuck()).await {
        Ok(stuck) => {
            for row in &stuck {
                tracing::warn!(
                    outbox = row.id,
                    ticket = row.ticket_id,
                    "found in 'sending' after an interruption: not resent; check `mailticket outbox` and use `mailticket outbox --retry {}` if it never arrived",
                    row.id
                );
            }
            report.stuck = stuck.len() as u64;
        }
        Err(e) => report.errors.push(e.to_string()),
    }
    // One connection per server for the whole drain (see `smtp::Session`).
    let mut sessions = std::collections::HashMap::new();
    loop {
        // The claim outlives any one send: a live process is never taken for a dead one.
        let lease = i64::try_from(senders.timeout().as_secs()).unwrap_or(3600) + 60;
        let claimed = store.call(move |s| s.outbox_claim_next(now, lease)).await;
        let job = match claimed {
            Ok(Some(job)) => job,
            Ok(None) => break,
            Err(e) => {
                report.errors.push(e.to_string());
                break;
            }
        };
        let id = job.id;
        let session = sessions
            .entry(senders.key(&job.mailbox))
            .or_insert_with(|| senders.for_mailbox(&job.mailbox).session());
        let result = session.send(&job.mail_from, &job.rcpt, &job.raw).await;
        let done = match result {
            smtp::Sent::Accepted(reply) => {
                report.sent += 1;
                tracing::info!(outbox = id, ticket = job.ticket_id, "sent");
                store.call(move |s| s.outbox_sent(id, &reply)).await
            }
            smtp::Sent::Refused(reply) => {
                report.failed += 1;
                tracing::error!(outbox = id, ticket = job.ticket_id, reply = %reply, "refused by the server");
                report.errors.push(format!("outbox {id}: refused: {reply}"));
                store.call(move |s| s.outbox_failed(id, &reply)).await
            }
            smtp::Sent::Uncertain(why) => {
                report.uncertain += 1;
                tracing::error!(outbox = id, ticket = job.ticket_id, error = %why,
                    "no answer after the message was sent: it may have been delivered; left in 'sending', not resent");
                report.errors.push(format!(
                    "outbox {id}: {why}; it may have been delivered: left in 'sending' \
                     (check, then `mailticket outbox --retry {id}`)"
                ));
                store.call(move |s| s.outbox_uncertain(id, &why)).await
            }
            smtp::Sent::Later(why) => {
                report.deferred += 1;
                tracing::warn!(outbox = id, ticket = job.ticket_id, error = %why, "deferred");
                report.errors.push(format!("outbox {id}: {why}"));
                store
                    .call(move |s| s.outbox_retry_later(id, &why, now))
                    .await
            }
        };
        if let Err(e) = done {
            report.errors.push(e.to_string());
            break;
        }
    }
    for (_, session) in sessions {
        session.close().await;
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn composed_headers() {
        let from = parse_mailbox("Support <support@example.com>").unwrap();
        let to = [parse_mailbox("anna@example.org").unwrap()];
        let refs = vec!["a@x".to_owned(), "b@x".to_owned()];
        let raw = compose(&Compose {
            from: &from,
            to: &to,
            cc: &[],
            subject: "[#1] Printer",
            text: "Hello",
            html: None,
            message_id: "mt.1.abc@example.com",
            in_reply_to: Some("b@x"),
            references: &refs,
            auto_submitted: true,
        })
        .unwrap();
        let m = crate::message::parse(&raw).unwrap();
        assert_eq!(m.message_id, "mt.1.abc@example.com");
        assert_eq!(m.in_reply_to, ["b@x"]);
        assert_eq!(m.references, ["a@x", "b@x"]);
        assert_eq!(m.header("auto-submitted"), Some("auto-replied"));
        assert_eq!(m.header("x-auto-response-suppress"), Some("All"));
        assert_eq!(m.subject, "[#1] Printer");
        assert!(m.text.starts_with(crate::quote::REPLY_MARKER), "{}", m.text);
        // A reply quoting it is cut at the marker, whatever its attribution says.
        let quoted: Vec<String> = m.text.lines().map(|l| format!("> {l}")).collect();
        let reply = format!(
            "Fixed, thanks.\n\nXyz 1.1.2024 Support:\n{}",
            quoted.join("\n")
        );
        assert_eq!(crate::quote::split(&reply).new, "Fixed, thanks.");
    }

    #[test]
    fn the_marker_opens_the_html_body_as_visible_text() {
        let marker = crate::quote::REPLY_MARKER;
        let html = html_with_marker("<html><BODY class=x><p>Hello</p></body></html>");
        assert!(
            html.starts_with(&format!(
                "<html><BODY class=x><p style=\"color:#888888\">{marker}</p>"
            )),
            "{html}"
        );
        assert!(html_with_marker("<p>Hi</p>").ends_with(&format!("{marker}</p>\n<p>Hi</p>")));
        // Outlook's HTML reply, converted to text, is cut at the marker.
        let reply = format!(
            "<p>Thanks!</p><div><hr><p>Xyz 1.1.2024:</p>{}</div>",
            html_with_marker("<body><p>Your request</p></body>")
        );
        let text = crate::message::html_to_text(&reply);
        assert_eq!(crate::quote::split(&text).new, "Thanks!", "{text}");
    }

    fn compose_with(subject: &str, refs: &[String]) -> Vec<u8> {
        let from = parse_mailbox("Support <support@example.com>").unwrap();
        let to = [parse_mailbox("anna@example.org").unwrap()];
        compose(&Compose {
            from: &from,
            to: &to,
            cc: &[],
            subject,
            text: "Hello",
            html: None,
            message_id: "mt.1.abc@example.com",
            in_reply_to: refs.last().map(String::as_str),
            references: refs,
            auto_submitted: true,
        })
        .unwrap()
    }

    /// The header block's lines, unfolded nowhere: as they go over the wire.
    fn header_lines(raw: &[u8]) -> Vec<String> {
        let text = String::from_utf8_lossy(raw);
        let head = text.split("\r\n\r\n").next().unwrap().to_owned();
        head.split("\r\n").map(str::to_owned).collect()
    }

    #[test]
    fn a_huge_subject_is_cut_and_no_header_line_exceeds_998_bytes() {
        let mb = 1 << 20;
        for subject in [
            format!("[#1] {}", "x".repeat(mb)),
            format!("[#1] {}", "word ".repeat(mb / 5)),
            format!("[#1] {}", "ü".repeat(mb / 2)),
            format!("[#1] {}", "回复".repeat(mb / 6)),
        ] {
            let raw = compose_with(&subject, &["a@x".to_owned()]);
            for line in header_lines(&raw) {
                assert!(line.len() <= 998, "{} bytes: {}", line.len(), &line[..80]);
            }
            let m = crate::message::parse(&raw).unwrap();
            assert!(m.subject.starts_with("[#1] "), "{}", m.subject);
            assert!(m.subject.ends_with('…'), "{}", m.subject);
            assert!(
                m.subject.chars().count() <= SUBJECT_CHARS + 1,
                "{}",
                m.subject
            );
            assert!(raw.len() < 10_000, "{} bytes", raw.len());
        }
    }

    #[test]
    fn folded_or_odd_references_become_clean_ids() {
        let mut refs: Vec<String> = (0..5000).map(|i| format!("r{i}@x.example")).collect();
        refs.insert(1, "folded-very-long-id@\r\n example.com".to_owned());
        refs.push("p@x".to_owned());
        let raw = compose_with("[#1] Hello", &refs);
        for line in header_lines(&raw) {
            assert!(line.len() <= 998, "{} bytes", line.len());
            assert!(!line.trim().is_empty(), "an empty header line");
        }
        let m = crate::message::parse(&raw).unwrap();
        assert_eq!(m.in_reply_to, ["p@x"]);
        assert_eq!(
            m.references.first().map(String::as_str),
            Some("r0@x.example")
        );
        assert_eq!(m.references.last().map(String::as_str), Some("p@x"));
        assert!(
            m.references.len() <= REFERENCES_KEPT,
            "{}",
            m.references.len()
        );
        for r in &m.references {
            assert!(!r.contains(char::is_whitespace) && r.contains('@'), "{r:?}");
        }
        // The folded id is written whole when it is among those kept.
        let few = vec![
            "a@x".to_owned(),
            "folded-very-long-id@\r\n example.com".to_owned(),
        ];
        let m = crate::message::parse(&compose_with("[#1] Hello", &few)).unwrap();
        assert_eq!(m.references, ["a@x", "folded-very-long-id@example.com"]);
        assert_eq!(m.in_reply_to, ["folded-very-long-id@example.com"]);
    }
}
