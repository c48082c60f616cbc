//! Raw bytes to an owned [`ParsedMessage`]: the fields mailticket uses, nothing borrowed.
//!
//! Parsing runs inside `catch_unwind`: mail-parser has panicked on malformed input in past
//! releases, and one bad message must never take a run down. What cannot be parsed becomes a
//! [`ParseFailure`], which the pipeline quarantines with the raw bytes.

use std::panic::{AssertUnwindSafe, catch_unwind};

use mail_parser::{Address, HeaderValue, MessageParser, MimeHeaders, PartType};

use crate::skeleton::{self, Skeleton};

/// A name and an address, the address lower-cased.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Mailbox {
    /// The display name, possibly empty.
    pub name: String,
    /// The address, lower-case.
    pub address: String,
}

/// One attachment: what it is, not its content (that stays in the raw message; see
/// [`extract_attachments`]).
#[derive(Debug, Clone)]
pub struct Attachment {
    /// A safe file name (see [`safe_filename`]).
    pub filename: String,
    /// `type/subtype`, lower-case.
    pub content_type: String,
    /// Decoded size in bytes.
    pub size: usize,
    /// SHA-256 of the decoded content.
    pub sha256: [u8; 32],
    /// Shown inside the message rather than attached to it: `Content-Disposition: inline`
    /// (not text), or a `Content-ID` the HTML refers to with `cid:` (an embedded image).
    pub inline: bool,
}

/// The fields of a message that mailticket stores and judges.
#[derive(Debug, Clone, Default)]
pub struct ParsedMessage {
    /// Message-ID without angle brackets; derived from the content when the message has none.
    pub message_id: String,
    /// Whether [`Self::message_id`] was derived rather than read.
    pub message_id_derived: bool,
    /// In-Reply-To ids, without angle brackets.
    pub in_reply_to: Vec<String>,
    /// References ids, oldest first, without angle brackets.
    pub references: Vec<String>,
    /// The decoded subject.
    pub subject: String,
    /// From.
    pub from: Option<Mailbox>,
    /// Reply-To, when present.
    pub reply_to: Option<Mailbox>,
    /// To.
    pub to: Vec<Mailbox>,
    /// Cc.
    pub cc: Vec<Mailbox>,
    /// The Date header as Unix seconds, when present and valid.
    pub date: Option<i64>,
    /// Readable text: the plain parts, or the HTML converted when there is no plain part.
    pub text: String,
    /// Attachments with safe names.
    pub attachments: Vec<Attachment>,
    /// Top-level header fields: lower-case name, unfolded raw value. For classification.
    pub headers: Headers,
    /// Top-level `type/subtype`, lower-case.
    pub content_type: String,
    /// Whether any part is `message/delivery-status`.
    pub has_delivery_status: bool,
    /// The `type/subtype` of every part (the root first), lower-case.
    pub part_types: Vec<String>,
    /// `report-type` of a top-level `multipart/report`, lower-case.
    pub report_type: String,
    /// The delivery status notification, when a `message/delivery-status` part parses.
    pub dsn: Option<Dsn>,
    /// The message a report or a forward carries as a part: an attached `message/rfc822` or
    /// a `text/rfc822-headers` part. (A header block quoted in the text of a non-standard
    /// bounce is found on demand: see [`ParsedMessage::original_anywhere`].)
    pub original: Option<Original>,
    /// SHA-256 over what makes a message "the same message" wherever it was read from and
    /// however it was encoded on the way: sender, date, subject, the decoded text (line ends
    /// trimmed) and the attachments' digests.
    pub fingerprint: [u8; 32],
}

/// Header fields, each a lower-case name and an unfolded value, all in one string: a
/// message's 15-20 fields cost two allocations instead of two per field (`malloc` and
/// `free` took a tenth of a sync's CPU; the benchmark sync's calls to `malloc`: 2.17 ->
/// 1.91 million).
#[derive(Clone, Default)]
pub struct Headers {
    text: String,
    /// Per field: where its name starts, where it ends (its value starts) and where its
    /// value ends in `text`.
    fields: Vec<(usize, usize, usize)>,
}

impl Headers {
    /// Adds the field `name` (kept in lower case) with `value` (unfolded and trimmed).
    pub fn push(&mut self, name: &str, value: &str) {
        let start = self.text.len();
        self.text.push_str(name);
        if let Some(name) = self.text.get_mut(start..) {
            name.make_ascii_lowercase();
        }
        let name_end = self.text.len();
        unfold_into(&mut self.text, value);
        self.fields.push((start, name_end, self.text.len()));
    }

    /// Each field's name and value, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.fields.iter().map(|&(start, name_end, end)| {
            (
                self.text.get(start..name_end).unwrap_or_default(),
                self.text.get(name_end..end).unwrap_or_default(),
            )
        })
    }

    /// The values of the fields named `name` (in any case), in order. Compares bytes: the
    /// classifier asks for some 30 names per message.
    pub fn named<'a, 'n>(&'a self, name: &'n str) -> impl Iterator<Item = &'a str> + use<'a, 'n> {
        let text = self.text.as_bytes();
        self.fields
            .iter()
            .filter(move |&&(start, name_end, _)| {
                // The length first: most names are not it.
                name_end - start == name.len()
                    && text
                        .get(start..name_end)
                        .is_some_and(|n| n.eq_ignore_ascii_case(name.as_bytes()))
            })
            .map(|&(_, name_end, end)| self.text.get(name_end..end).unwrap_or_default())
    }

    /// Removes every field.
    pub fn clear(&mut self) {
        self.text.clear();
        self.fields.clear();
    }
}

impl std::fmt::Debug for Headers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl<N: AsRef<str>, V: AsRef<str>> FromIterator<(N, V)> for Headers {
    fn from_iter<I: IntoIterator<Item = (N, V)>>(fields: I) -> Headers {
        let mut h = Headers::default();
        for (name, value) in fields {
            h.push(name.as_ref(), value.as_ref());
        }
        h
    }
}

impl ParsedMessage {
    /// The first value of the header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.named(name).next()
    }

    /// Every value of the header `name`.
    pub fn headers_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers.named(name)
    }

    /// The address a reply goes to: Reply-To, else From.
    pub fn reply_address(&self) -> Option<&Mailbox> {
        self.reply_to.as_ref().or(self.from.as_ref())
    }

    /// The original this message carries: as a part, else quoted in its text. The text is
    /// searched only when asked (for bounces), never for every message.
    pub fn original_anywhere(&self) -> Option<Original> {
        self.original
            .clone()
            .or_else(|| quoted_original(&self.text))
    }

    /// The sender's address, or "" when there is none.
    pub fn from_addr(&self) -> &str {
        self.from.as_ref().map_or("", |m| m.address.as_str())
    }

    /// Recipients a bounce reports as failed: the DSN's failed recipients, else
    /// `X-Failed-Recipients`, else addresses named in the text the way Exim and qmail do.
    /// Lower-case, deduplicated. Meaningful only for a message judged a bounce.
    pub fn failed_recipients(&self) -> Vec<String> {
        let mut raw: Vec<String> = Vec::new();
        if let Some(d) = &self.dsn {
            raw.extend(
                d.recipients
                    .iter()
                    .filter(|r| r.failed())
                    .map(|r| r.final_recipient.clone()),
            );
        }
        for v in self.headers_named("x-failed-recipients") {
            raw.extend(v.split(',').map(str::to_owned));
        }
        if raw.is_empty() {
            raw = text_failed_recipients(&self.text);
        }
        let mut out: Vec<String> = Vec::new();
        for a in raw {
            let a = a
                .trim()
                .trim_matches(['<', '>'])
                .trim()
                .to_ascii_lowercase();
            if a.contains('@') && !a.contains(char::is_whitespace) && !out.contains(&a) {
                out.push(a);
            }
        }
        out
    }
}

/// A delivery status notification (RFC 3464).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dsn {
    /// `Reporting-MTA`, without its `dns;` type.
    pub reporting_mta: String,
    /// One entry per recipient group.
    pub recipients: Vec<DsnRecipient>,
}

/// One recipient of a DSN.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DsnRecipient {
    /// `Final-Recipient` address (or `Original-Recipient` when that is all there is),
    /// lower-case, without its `rfc822;` type.
    pub final_recipient: String,
    /// `Action`, lower-case: failed, delayed, delivered, relayed, expanded.
    pub action: String,
    /// `Status`, e.g. `5.1.1`.
    pub status: String,
    /// `Diagnostic-Code` without its type, e.g. `550 5.1.1 user unknown`.
    pub diagnostic: String,
}

impl DsnRecipient {
    /// Whether delivery to this recipient failed for good.
    pub fn failed(&self) -> bool {
        self.action == "failed" || (self.action.is_empty() && self.status.starts_with('5'))
    }
}

/// The original message a bounce (or a forward) carries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Original {
    /// Where it was found: `message/rfc822`, `text/rfc822-headers` or `quoted text`.
    pub source: &'static str,
    /// Its Message-ID, without angle brackets.
    pub message_id: Option<String>,
    /// Its In-Reply-To and References ids.
    pub parents: Vec<String>,
    /// Its subject.
    pub subject: String,
    /// Its sender.
    pub from: Option<Mailbox>,
    /// Its To and Cc.
    pub recipients: Vec<Mailbox>,
}

/// Why a message could not be parsed at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseFailure(pub String);

impl std::fmt::Display for ParseFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Messages shorter than this are parsed whole: setting attachment bodies aside (see
/// [`crate::skeleton`]) pays from a few KiB of base64 on.
const SKELETON_FROM: usize = 16 * 1024;

/// Parses a message. Never panics.
pub fn parse(raw: &[u8]) -> Result<ParsedMessage, ParseFailure> {
    parse_keeping(raw).map(|(parsed, _)| parsed)
}

/// [`parse`], with the regular base64 bodies it set aside kept decoded, for the store (see
/// [`skeleton::Kept`]).
pub fn parse_keeping(raw: &[u8]) -> Result<(ParsedMessage, skeleton::Kept), ParseFailure> {
    // A quoted-printable text, however short, is decoded faster by the walk than by the
    // parse (see `skeleton::Walk::qp_text`).
    if (raw.len() >= SKELETON_FROM && (mentions_base64(raw) || raw.len() > skeleton::TEXT_CUT))
        || mentions_qp(raw)
    {
        // A panic in the walk or in the parse of the skeleton leaves the whole message to
        // the parse, which alone decides whether it is unparseable.
        if let Ok(mut sk) = guarded(|| Ok(skeleton::of_slice(raw))) {
            let kept = std::mem::take(&mut sk.kept);
            let parsed = match guarded(|| Ok(parse_skeleton(&sk))) {
                Ok(Some(parsed)) => parsed,
                _ => guarded(|| parse_whole(raw))?,
            };
            return Ok((parsed, kept));
        }
    }
    Ok((guarded(|| parse_whole(raw))?, skeleton::Kept::default()))
}

/// Whether `raw` says "base64" anywhere (in any case): else no body can be set aside and the
/// walk is skipped.
fn mentions_base64(raw: &[u8]) -> bool {
    static SIXTY_FOUR: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"64"));
    SIXTY_FOUR.find_iter(raw).any(|at| {
        at.checked_sub(4)
            .and_then(|start| raw.get(start..at))
            .is_some_and(|w| w.eq_ignore_ascii_case(b"base"))
    })
}

/// Whether `raw` says "quoted-printable" (in the usual cases) anywhere: else no text is
/// decoded by the walk. (A text this misses is decoded by the parse, as any other.)
fn mentions_qp(raw: &[u8]) -> bool {
    use memchr::memmem::Finder;
    static FINDERS: std::sync::LazyLock<[Finder<'static>; 2]> = std::sync::LazyLock::new(|| {
        [
            Finder::new(b"quoted-printable"),
            Finder::new(b"Quoted-Printable"),
        ]
    });
    FINDERS.iter().any(|f| f.find(raw).is_some())
}

/// Parses the message `file` holds (read from its start, in pieces: its attachment bodies
/// are decoded and hashed on the way, never held; see [`crate::skeleton`]). The same result
/// as [`parse`] of the same bytes. Never panics.
pub fn parse_file(file: &mut std::fs::File) -> Result<ParsedMessage, ParseFailure> {
    use std::io::{Read, Seek, SeekFrom};
    let unreadable =
        |e: std::io::Error| ParseFailure(format!("cannot read the spooled message: {e}"));
    let start = file.seek(SeekFrom::Start(0)).map_err(unreadable)?;
    let sk = skeleton::of_reader(std::io::BufReader::new(&mut *file)).map_err(unreadable)?;
    if sk.set_aside.is_empty() && sk.cut == 0 && sk.qp.is_empty() {
        // Nothing was set aside, cut or decoded: the skeleton is the message byte for byte.
        return guarded(|| parse_whole(&sk.bytes));
    }
    // A failure the header decides (no header, none of the essential ones) is the same for
    // the message: the skeleton keeps its header as it is. Only markers not found as
    // expected, or a panic, send the parse to the original, read whole.
    match catch_unwind(AssertUnwindSafe(|| skeleton_parse(&sk))) {
        Ok(Ok(Some(parsed))) => return Ok(parsed),
        Ok(Err(why)) => return Err(why),
        Ok(Ok(None)) | Err(_) => {}
    }
    drop(sk);
    let mut raw = Vec::new();
    file.seek(SeekFrom::Start(start)).map_err(unreadable)?;
    file.read_to_end(&mut raw).map_err(unreadable)?;
    guarded(|| parse_whole(&raw))
}

/// The parse of `sk`, when something was set aside, cut or decoded by the walk, and the
/// parse found each marker exactly once as an attachment, no cut text in one, and each
/// decoded text's empty part where the walk left it (else the caller parses the original).
fn parse_skeleton(sk: &Skeleton) -> Option<ParsedMessage> {
    skeleton_parse(sk).ok().flatten()
}

/// [`parse_skeleton`] with its failure: `Err` when the skeleton is no message at all.
fn skeleton_parse(sk: &Skeleton) -> Result<Option<ParsedMessage>, ParseFailure> {
    if sk.set_aside.is_empty() && sk.cut == 0 && sk.qp.is_empty() {
        return Ok(None);
    }
    parse_inner(&sk.bytes, sk.blank, Some(sk))
}

/// The MIME parser: mail-parser's default reading of every header, except `Received`, kept
/// raw. Nothing here reads a `Received` header's fields, and taking apart the four to ten of
/// them a message carries was a twentieth of parsing a small message.
pub(crate) fn mime_parser() -> &'static MessageParser {
    use mail_parser::HeaderName as H;
    static PARSER: std::sync::LazyLock<MessageParser> = std::sync::LazyLock::new(|| {
        let mut p = MessageParser::new();
        for h in [
            H::Subject,
            H::Comments,
            H::ContentDescription,
            H::ContentLocation,
            H::ContentTransferEncoding,
        ] {
            p = p.header_text(h);
        }
        for h in [
            H::From,
            H::To,
            H::Cc,
            H::Bcc,
            H::ReplyTo,
            H::Sender,
            H::ResentTo,
            H::ResentFrom,
            H::ResentBcc,
            H::ResentCc,
            H::ResentSender,
            H::ListArchive,
            H::ListHelp,
            H::ListId,
            H::ListOwner,
            H::ListPost,
            H::ListSubscribe,
            H::ListUnsubscribe,
        ] {
            p = p.header_address(h);
        }
        for h in [H::Date, H::ResentDate] {
            p = p.header_date(h);
        }
        for h in [
            H::MessageId,
            H::References,
            H::InReplyTo,
            H::ReturnPath,
            H::ContentId,
            H::ResentMessageId,
        ] {
            p = p.header_id(h);
        }
        for h in [H::Keywords, H::ContentLanguage] {
            p = p.header_comma_separated(h);
        }
        for h in [H::ContentType, H::ContentDisposition] {
            p = p.header_content_type(h);
        }
        p.header_raw(H::Received)
    });
    &PARSER
}

/// Parses `raw` as it is, attachments decoded by the parser.
fn parse_whole(raw: &[u8]) -> Result<ParsedMessage, ParseFailure> {
    let blank = raw.iter().all(u8::is_ascii_whitespace);
    parse_inner(raw, blank, None)?.ok_or_else(|| ParseFailure("the MIME parser lost a part".into()))
}

/// The attachments of `raw` with their decoded content. Never panics.
pub fn extract_attachments(raw: &[u8]) -> Result<Vec<(Attachment, Vec<u8>)>, ParseFailure> {
    guarded(|| {
        let msg = mime_parser()
            .parse(skip_preamble(raw))
            .ok_or_else(|| ParseFailure("not an RFC 5322 message".into()))?;
        Ok(attachments(&msg, true, None))
    })
}

fn guarded<T>(f: impl FnOnce() -> Result<T, ParseFailure>) -> Result<T, ParseFailure> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_owned());
            Err(ParseFailure(format!("the MIME parser panicked: {what}")))
        }
    }
}

/// Parses `raw` (a message, or the skeleton `sk` of one; `blank`: the message is all
/// whitespace). `Ok(None)` when `sk` is given and its markers were not found exactly once
/// each as an attachment.
fn parse_inner(
    raw: &[u8],
    blank: bool,
    sk: Option<&Skeleton>,
) -> Result<Option<ParsedMessage>, ParseFailure> {
    if blank {
        return Err(ParseFailure("empty message".into()));
    }
    let mut msg = mime_parser()
        .parse(skip_preamble(raw))
        .ok_or_else(|| ParseFailure("not an RFC 5322 message".into()))?;
    if let Some(sk) = sk
        && !(markers_found_once(&msg, sk) && put_back_qp_texts(&mut msg, sk, raw.len()))
    {
        return Ok(None);
    }
    fields(&msg, sk).map(Some)
}

/// What mailticket keeps of the parsed `msg` (attachment sizes and digests from `sk`).
fn fields(
    msg: &mail_parser::Message<'_>,
    sk: Option<&Skeleton>,
) -> Result<ParsedMessage, ParseFailure> {
    let headers = lenient_headers(msg);
    const ESSENTIAL: [&str; 5] = ["from", "sender", "date", "subject", "message-id"];
    if !headers.iter().any(|(n, _)| ESSENTIAL.contains(&n)) {
        return Err(ParseFailure(
            "no From, Sender, Date, Subject or Message-ID header: not a message".into(),
        ));
    }

    let from = first(msg.from()).or_else(|| first(msg.sender()));
    let subject = msg.subject().unwrap_or("").trim().to_owned();
    let date = msg
        .date()
        .filter(|d| d.is_valid())
        .map(mail_parser::DateTime::to_timestamp);

    let text = readable_text(msg);

    let attachments: Vec<Attachment> = attachments(msg, false, sk)
        .into_iter()
        .map(|(a, _)| a)
        .collect();

    let (content_type, report_type) = root_type(msg);
    let has_delivery_status = msg
        .parts
        .iter()
        .any(|p| part_is(p, "message", &["delivery-status", "global-delivery-status"]));
    let dsn = msg
        .parts
        .iter()
        .find(|p| part_is(p, "message", &["delivery-status", "global-delivery-status"]))
        .and_then(|p| parse_dsn(&String::from_utf8_lossy(p.contents())));
    let original = embedded_original(msg);

    let fingerprint = crate::stages::time(crate::stages::Stage::Hash, || {
        fingerprint(
            from.as_ref().map_or("", |m| m.address.as_str()),
            date,
            &subject,
            &text,
            &attachments,
        )
    });

    let (message_id, message_id_derived) = match msg.message_id().map(clean_id) {
        Some(id) if !id.is_empty() => (id, false),
        _ => (derived_id(&fingerprint), true),
    };

    Ok(ParsedMessage {
        message_id,
        message_id_derived,
        in_reply_to: capped(ids(msg.in_reply_to())),
        references: capped(ids(msg.references())),
        subject,
        from,
        reply_to: first(msg.reply_to()),
        to: all(msg.to()),
        cc: all(msg.cc()),
        date,
        text,
        attachments,
        headers,
        content_type,
        has_delivery_status,
        part_types: part_types(msg),
        report_type,
        dsn,
        original,
        fingerprint,
    })
}

/// Puts each text the walk decoded (see [`skeleton::QpText`]) into the parse `msg` of the
/// skeleton `sk` (`len` bytes), converted from its charset as the parse converts a decoded
/// text; `false` when the parse did not read one of them where the walk left it: an empty
/// text part with that header block and body, in a multipart of the same boundary. The
/// parse then read the message's own bytes the same way up to there.
fn put_back_qp_texts(msg: &mut mail_parser::Message<'_>, sk: &Skeleton, len: usize) -> bool {
    if sk.qp.is_empty() {
        return true;
    }
    // The parse's positions start after what `skip_preamble` skipped.
    let Some(skip) = len.checked_sub(msg.raw_message.len()) else {
        return false;
    };
    let parent_boundary = |id: usize| -> Option<Option<Vec<u8>>> {
        let Some(parent) = msg.parts.iter().find(|p| match &p.body {
            PartType::Multipart(children) => children.iter().any(|&c| c as usize == id),
            _ => false,
        }) else {
            return (id == 0).then_some(None);
        };
        let boundary = parent.content_type()?.attribute("boundary")?;
        Some(Some(boundary.as_bytes().to_vec()))
    };
    let mut found = Vec::with_capacity(sk.qp.len());
    for t in &sk.qp {
        let id = msg.parts.iter().enumerate().position(|(id, p)| {
            matches!(&p.body, PartType::Text(s) | PartType::Html(s) if s.is_empty())
                && p.offset_header as usize + skip == t.head
                && p.offset_body as usize + skip == t.body
                && p.offset_end as usize + skip == t.body
                && parent_boundary(id).as_ref() == Some(&t.boundary)
        });
        match id {
            Some(id) => found.push(id),
            None => return false,
        }
    }
    for (id, t) in found.into_iter().zip(&sk.qp) {
        let Some(part) = msg.parts.get_mut(id) else {
            return false;
        };
        let decoder = part
            .content_type()
            .and_then(|ct| ct.attribute("charset"))
            .and_then(|c| mail_parser::decoders::charsets::map::charset_decoder(c.as_bytes()));
        // As the parse converts a text it decoded itself.
        let text = match decoder {
            Some(decode) => decode(&t.text),
            None => String::from_utf8(t.text.clone())
                .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
        };
        part.body = match part.body {
            PartType::Html(_) => PartType::Html(text.into()),
            _ => PartType::Text(text.into()),
        };
    }
    true
}

/// Whether each marker of `sk` is the content of exactly one attachment of `msg`, and of no
/// part read as its text.
fn markers_found_once(msg: &mail_parser::Message<'_>, sk: &Skeleton) -> bool {
    // A text attachment the parse also reads as the message's text would bring its marker.
    let read_as_text = |ids: &[u32]| {
        ids.iter().any(|&id| {
            msg.part(id)
                .is_some_and(|p| sk.marker_index(p.contents()).is_some())
        })
    };
    if read_as_text(&msg.text_body) || read_as_text(&msg.html_body) {
        return false;
    }
    // A text cut short must be read as text, not as an attachment (whose size and digest
    // would be of what is left).
    let note = skeleton::CUT_NOTE.as_bytes();
    if sk.cut > 0
        && msg
            .attachments()
            .any(|p| memchr::memmem::find(p.contents(), note).is_some())
    {
        return false;
    }
    let mut seen = vec![0u32; sk.set_aside.len()];
    for part in msg.attachments() {
        if let Some(i) = set_aside_index(sk, part)
            && let Some(n) = seen.get_mut(i)
        {
            *n += 1;
        }
    }
    // A body inside an attached message is read by nothing.
    seen.iter()
        .zip(&sk.set_aside)
        .all(|(&n, s)| n == 1 || s.kind == skeleton::Aside::Inner)
}

/// The entry of `sk` that attachment `part` stands for: a body whose marker is its content,
/// or an attached message whose content is exactly the skeleton's bytes in its range (the
/// parse began and ended it where the walk did).
fn set_aside_index(sk: &Skeleton, part: &mail_parser::MessagePart<'_>) -> Option<usize> {
    use skeleton::Aside;
    let data = part.contents();
    if part.message().is_some() {
        let at = (data.as_ptr() as usize).checked_sub(sk.bytes.as_ptr() as usize)?;
        let range = Aside::Message(at, at + data.len());
        return sk.set_aside.iter().position(|s| s.kind == range);
    }
    sk.marker_index(data)
        .filter(|&i| sk.set_aside.get(i).is_some_and(|s| s.kind == Aside::Body))
}

/// `raw` without what some writers put before the first header: a UTF-8 byte order mark and
/// blank or whitespace-only lines. Only the parse skips them; the stored bytes stay as received.
pub fn skip_preamble(raw: &[u8]) -> &[u8] {
    let mut rest = raw;
    loop {
        if let Some(r) = rest.strip_prefix(b"\xEF\xBB\xBF") {
            rest = r;
            continue;
        }
        let Some(end) = rest.iter().position(|&b| b == b'\n') else {
            return rest;
        };
        let line = rest.get(..end).unwrap_or(&[]);
        if !line.iter().all(|b| matches!(b, b' ' | b'\t' | b'\r')) {
            return rest;
        }
        rest = rest.get(end + 1..).unwrap_or(&[]);
    }
}

/// The raw header values, lower-case names, read leniently: mail-parser's `headers_raw`
/// drops a value that is not valid UTF-8 (a Latin-1 subject, a broken auto-responder), and
/// the classifier must still see the header (`Auto-Submitted`, `X-Autoreply`, ...).
fn lenient_headers(msg: &mail_parser::Message<'_>) -> Headers {
    let raw_all: &[u8] = &msg.raw_message;
    let fields = msg.headers();
    let mut h = Headers {
        text: String::with_capacity(
            fields
                .iter()
                .map(|f| (f.offset_end.saturating_sub(f.offset_start)) as usize + 24)
                .sum(),
        ),
        fields: Vec::with_capacity(fields.len()),
    };
    for f in fields {
        if let Some(v) = raw_all.get(f.offset_start as usize..f.offset_end as usize) {
            // Nearly always valid: checked a word at a time first (the lossy conversion
            // alone checks a byte at a time).
            match std::str::from_utf8(v) {
                Ok(v) => h.push(f.name.as_str(), v),
                Err(_) => h.push(f.name.as_str(), &String::from_utf8_lossy(v)),
            }
        }
    }
    h
}

/// Every text body, trimmed, with LF line ends, separated by a blank line.
fn readable_text(msg: &mail_parser::Message<'_>) -> String {
    let mut text = String::new();
    for i in 0..msg.text_body_count() {
        let (t, crlf) = match msg.text_part(i as u32).map(|p| &p.body) {
            Some(PartType::Text(t)) => (std::borrow::Cow::Borrowed(t.as_ref()), true),
            Some(PartType::Html(h)) => (html_to_text(h).into(), false),
            _ => continue,
        };
        let t = t.trim();
        if !t.is_empty() {
            if !text.is_empty() {
                text.push_str("\n\n");
            }
            if crlf {
                push_lf(&mut text, t);
            } else {
                text.push_str(t);
            }
        }
    }
    text
}

/// Appends `t` to `out` with each CR LF as LF.
fn push_lf(out: &mut String, t: &str) {
    out.reserve(t.len());
    // One searcher for every text: setting one up costs about as much as a short text's search.
    static CRLF: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\r\n"));
    let mut at = 0;
    for cr in CRLF.find_iter(t.as_bytes()) {
        out.push_str(t.get(at..cr).unwrap_or_default());
        at = cr + 1;
    }
    out.push_str(t.get(at..).unwrap_or_default());
}

/// The most HTML one part may bring to the converter, in bytes. Conversion costs time and
/// memory in proportion to the input (hostile HTML nests tables and lists for that), so what
/// lies past this is cut off first; the raw message keeps all of it.
pub const HTML_CAP: usize = 512 * 1024;

/// The deepest element nesting given to the converter. Its time grows with the square of
/// the depth (20,000 nested lists take 40 s); real mail nests a few dozen levels. Deeper HTML
/// is read by mail-parser's flat, linear conversion instead: no layout, but every word.
const HTML_DEPTH: usize = 200;

/// Elements that never hold content, so never nest.
const VOID_ELEMENTS: &[&str] = &[
    "area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param", "source",
    "track", "wbr",
];

/// How deep `html`'s elements nest, counted from its tags in one pass: an opening tag goes
/// down a level (unless void or self-closing), a closing tag comes up one. Unclosed `<p>` and
/// `<li>` count as open, so this errs on the deep side, never the shallow one.
fn nesting_depth(html: &str) -> usize {
    let (mut depth, mut max) = (0usize, 0usize);
    let mut rest = html;
    while let Some(at) = rest.find('<') {
        rest = &rest[at + 1..];
        let tag_end = rest.find('>').unwrap_or(rest.len());
        let tag = &rest[..tag_end];
        if let Some(closing) = tag.strip_prefix('/') {
            if closing.starts_with(|c: char| c.is_ascii_alphabetic()) {
                depth = depth.saturating_sub(1);
            }
        } else if tag.starts_with(|c: char| c.is_ascii_alphabetic()) && !tag.ends_with('/') {
            let name_end = tag
                .find(|c: char| !c.is_ascii_alphanumeric())
                .unwrap_or(tag.len());
            let name = tag[..name_end].to_ascii_lowercase();
            if !VOID_ELEMENTS.contains(&name.as_str()) {
                depth += 1;
                max = max.max(depth);
            }
        }
        rest = &rest[tag_end..];
    }
    max
}

/// The width HTML paragraphs are wrapped to (tables may be wider).
const HTML_WIDTH: usize = 100;

/// HTML as readable text: paragraphs and line breaks kept, lists as `* ` and `1. ` items,
/// tables as a grid, links as `[text][n]` with the URLs listed as `[n]: URL` at the end,
/// quotes (`<blockquote>`) as `> ` lines. At most [`HTML_CAP`] bytes are converted.
pub fn html_to_text(html: &str) -> String {
    let mut end = html.len().min(HTML_CAP);
    while !html.is_char_boundary(end) {
        end -= 1;
    }
    let part = html.get(..end).unwrap_or_default();
    let plain = || mail_parser::decoders::html::html_to_text(part);
    let mut text = if nesting_depth(part) > HTML_DEPTH {
        plain()
    } else {
        html2text::config::plain()
            .allow_width_overflow()
            .string_from_read(part.as_bytes(), HTML_WIDTH)
            // The converter refuses little (a layout it cannot fit); the parser's own plain
            // rendering is then better than nothing.
            .unwrap_or_else(|_| plain())
    };
    if end < html.len() {
        text.push_str(&format!(
            "\n[… the rest of the HTML ({} bytes) was not converted]\n",
            html.len() - end
        ));
    }
    text
}

/// The root part's `type/subtype` (lower-case, `text/plain` when absent) and, for a
/// `multipart/report`, its `report-type`.
fn root_type(msg: &mail_parser::Message<'_>) -> (String, String) {
    let ct = msg.root_part().content_type();
    let content_type = type_of(ct);
    let report_type = ct
        .filter(|ct| {
            ct.ctype().eq_ignore_ascii_case("multipart")
                && ct
                    .subtype()
                    .is_some_and(|s| s.eq_ignore_ascii_case("report"))
        })
        .and_then(|ct| ct.attribute("report-type"))
        .unwrap_or("")
        .to_ascii_lowercase();
    (content_type, report_type)
}

/// The `type/subtype` of every part, lower-case (`text/plain` when a part has none).
fn part_types(msg: &mail_parser::Message<'_>) -> Vec<String> {
    msg.parts
        .iter()
        .map(|p| type_of(p.content_type()))
        .collect()
}

/// `type/subtype`, lower-case; `text/plain` when there is no Content-Type.
fn type_of(ct: Option<&mail_parser::ContentType<'_>>) -> String {
    ct.map(|ct| match ct.subtype() {
        Some(sub) => format!("{}/{}", ct.ctype(), sub),
        None => ct.ctype().to_owned(),
    })
    .unwrap_or_else(|| "text/plain".to_owned())
    .to_ascii_lowercase()
}

/// Whether `p` is `ctype/<one of subtypes>`.
fn part_is(p: &mail_parser::MessagePart<'_>, ctype: &str, subtypes: &[&str]) -> bool {
    p.content_type().is_some_and(|ct| {
        ct.ctype().eq_ignore_ascii_case(ctype)
            && ct
                .subtype()
                .is_some_and(|s| subtypes.iter().any(|x| s.eq_ignore_ascii_case(x)))
    })
}

/// Parses the body of a `message/delivery-status` part: a per-message group, then one group
/// per recipient, groups separated by blank lines.
pub fn parse_dsn(body: &str) -> Option<Dsn> {
    let mut dsn = Dsn::default();
    let mut fields: Vec<(String, String)> = Vec::new();
    let mut groups: Vec<Vec<(String, String)>> = Vec::new();
    for line in body.lines() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            if !fields.is_empty() {
                groups.push(std::mem::take(&mut fields));
            }
        } else if line.starts_with([' ', '\t']) {
            if let Some((_, v)) = fields.last_mut() {
                v.push(' ');
                v.push_str(line.trim());
            }
        } else if let Some((n, v)) = line.split_once(':') {
            fields.push((n.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
    }
    if !fields.is_empty() {
        groups.push(fields);
    }
    // "rfc822; user@example.com" -> "user@example.com"
    let typed = |v: &str| -> String {
        v.split_once(';')
            .map_or(v, |(_, rest)| rest)
            .trim()
            .to_owned()
    };
    for g in &groups {
        let get = |name: &str| g.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
        if let Some(mta) = get("reporting-mta") {
            dsn.reporting_mta = typed(mta);
        }
        let recipient = get("final-recipient").or_else(|| get("original-recipient"));
        if let Some(r) = recipient {
            dsn.recipients.push(DsnRecipient {
                final_recipient: typed(r).trim_matches(['<', '>']).to_ascii_lowercase(),
                action: get("action").unwrap_or("").trim().to_ascii_lowercase(),
                status: get("status")
                    .unwrap_or("")
                    .split_whitespace()
                    .next()
                    .unwrap_or("")
                    .to_owned(),
                diagnostic: get("diagnostic-code").map(typed).unwrap_or_default(),
            });
        }
    }
    (!dsn.recipients.is_empty() || !dsn.reporting_mta.is_empty()).then_some(dsn)
}

/// The original message carried by `msg` as a part: an attached message or a headers part.
fn embedded_original(msg: &mail_parser::Message<'_>) -> Option<Original> {
    for p in &msg.parts {
        if let Some(inner) = p.message() {
            return Some(original_of(inner, "message/rfc822"));
        }
    }
    msg.parts.iter().find_map(|p| {
        if part_is(p, "text", &["rfc822-headers", "global-headers"]) {
            let inner = mime_parser().parse_headers(p.contents())?;
            Some(original_of(&inner, "text/rfc822-headers"))
        } else {
            None
        }
    })
}

fn original_of(m: &mail_parser::Message<'_>, source: &'static str) -> Original {
    let mut parents = capped(ids(m.in_reply_to()));
    parents.extend(capped(ids(m.references())));
    let mut recipients = all(m.to());
    recipients.extend(all(m.cc()));
    Original {
        source,
        message_id: m.message_id().map(clean_id).filter(|s| !s.is_empty()),
        parents,
        subject: m.subject().unwrap_or("").trim().to_owned(),
        from: first(m.from()),
        recipients,
    }
}

/// Lines after which non-standard bounces quote the original message or its headers.
const QUOTE_MARKERS: &[&str] = &[
    "below this line is a copy of the message",
    "this is a copy of the message, including all the headers",
    "original message headers",
    "original message follows",
    "returned message follows",
    "----- original message -----",
    "------ original message ------",
    "the original message was received",
    "headers of the original message",
    "----- message header follows -----",
    "the header of the original message is attached",
];

/// A header block quoted in the text of a bounce: after a known marker, or else the
/// paragraph that holds a `Message-ID:` line. `None` when there is no Message-ID or Subject.
pub fn quoted_original(text: &str) -> Option<Original> {
    let lower = text.to_ascii_lowercase();
    let start = QUOTE_MARKERS
        .iter()
        .filter_map(|m| lower.find(m).map(|i| i + m.len()))
        .min()
        .map(|i| {
            lower
                .get(i..)
                .and_then(|r| r.find('\n'))
                .map_or(i, |n| i + n + 1)
        })
        .or_else(|| {
            let at = lower.find("\nmessage-id:")?;
            Some(
                lower
                    .get(..at)
                    .and_then(|b| b.rfind("\n\n"))
                    .map_or(0, |b| b + 2),
            )
        })?;
    let block: String = text
        .get(start..)?
        .trim_start_matches(['\r', '\n', ' '])
        .lines()
        .map(|l| l.trim_start_matches('>').trim_start_matches(' '))
        .collect::<Vec<_>>()
        .join("\n");
    let inner = mime_parser().parse_headers(block.as_bytes())?;
    let o = original_of(&inner, "quoted text");
    (o.message_id.is_some() || !o.subject.is_empty()).then_some(o)
}

/// Failed addresses named in the text of a bounce without a DSN: Exim lists them indented
/// after "failed:", qmail as `<user@host>:` lines.
pub fn text_failed_recipients(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut after_failed = false;
    for line in text.lines() {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix('<')
            && let Some((addr, tail)) = rest.split_once(">:")
            && addr.contains('@')
            && tail.trim().len() < 200
        {
            out.push(addr.to_ascii_lowercase());
            continue;
        }
        if t.to_ascii_lowercase().ends_with("failed:") {
            after_failed = true;
            continue;
        }
        if after_failed {
            if line.starts_with([' ', '\t']) {
                // The address, then its indented details (host, SMTP error).
                if t.contains('@') && !t.contains(char::is_whitespace) {
                    out.push(t.trim_matches(['<', '>']).to_ascii_lowercase());
                }
            } else if !t.is_empty() {
                after_failed = false;
            }
        }
    }
    out
}

/// Lines that open a forwarded message's header block (Gmail, Thunderbird, Outlook, Apple
/// Mail, in a few languages).
const FORWARD_MARKERS: &[&str] = &[
    "---------- forwarded message",
    "-------- forwarded message",
    "-------- original message",
    "-----original message-----",
    "begin forwarded message:",
    "---------- weitergeleitete nachricht",
    "-------- message transféré",
    "---------- mensaje reenviado",
    "-----ursprüngliche nachricht-----",
    "-----message d'origine-----",
];

/// Field names that stand for From in forwarded header blocks.
const FROM_FIELDS: &[&str] = &[
    "from",
    "von",
    "de",
    "da",
    "van",
    "från",
    "fra",
    "od",
    "发件人",
    "差出人",
];

/// The sender of a forwarded message quoted in `text`: the first From-like line in the ten
/// lines after a forward marker. Understands `Name <a@b>`, `Name [mailto:a@b]` and `a@b`.
pub fn forwarded_sender(text: &str) -> Option<Mailbox> {
    let lower = text.to_lowercase();
    let at = FORWARD_MARKERS.iter().filter_map(|m| lower.find(m)).min()?;
    let block = text.get(at..).or_else(|| lower.get(at..))?;
    for line in block.lines().skip(1).take(10) {
        let line = line.trim().trim_start_matches(['>', '*', ' ']);
        let Some((name, value)) = line.split_once([':', '：']) else {
            continue;
        };
        let name = name.trim().trim_matches('*').trim().to_lowercase();
        if !FROM_FIELDS.contains(&name.as_str()) {
            continue;
        }
        if let Some(mb) = mailbox_in(value.trim().trim_matches('*')) {
            return Some(mb);
        }
    }
    None
}

/// A mailbox in free text: `Name <a@b>`, `Name [mailto:a@b]` or a bare `a@b`.
pub fn mailbox_in(value: &str) -> Option<Mailbox> {
    let value = value.trim();
    let (display, addr) = if let Some((n, rest)) = value.split_once('<') {
        (n, rest.split('>').next().unwrap_or(""))
    } else if let Some((n, rest)) = value.split_once("[mailto:") {
        (n, rest.split(']').next().unwrap_or(""))
    } else {
        (
            "",
            value
                .split_whitespace()
                .find(|w| w.contains('@'))
                .unwrap_or("")
                .trim_matches(['(', ')', '"', ',', ';']),
        )
    };
    let addr = addr.trim().to_ascii_lowercase();
    let (local, domain) = addr.split_once('@')?;
    if local.is_empty() || domain.is_empty() || addr.contains(char::is_whitespace) {
        return None;
    }
    Some(Mailbox {
        name: display.trim().trim_matches('"').trim().to_owned(),
        address: addr,
    })
}

/// Every attachment's description, and its content when `with_data`.
/// The attachments of `msg`, with their content when `with_data`; the size and digest of a
/// body set aside in `sk` are its own, not its marker's.
fn attachments(
    msg: &mail_parser::Message<'_>,
    with_data: bool,
    sk: Option<&Skeleton>,
) -> Vec<(Attachment, Vec<u8>)> {
    let mut out = Vec::new();
    for (i, part) in msg.attachments().enumerate() {
        let content_type = part
            .content_type()
            .map(|ct| match ct.subtype() {
                Some(sub) => format!("{}/{}", ct.ctype(), sub),
                None => ct.ctype().to_owned(),
            })
            .unwrap_or_else(|| "application/octet-stream".to_owned())
            .to_ascii_lowercase();
        let fallback = format!("attachment-{}", i + 1);
        let filename = safe_filename(part.attachment_name().unwrap_or(&fallback));
        let data = part.contents();
        let inline = is_inline(msg, part, &content_type);
        let set_aside = sk.and_then(|sk| sk.set_aside.get(set_aside_index(sk, part)?));
        let (size, sha256) = match set_aside {
            Some(p) => (p.size, p.sha256),
            None => (data.len(), sha256(data)),
        };
        let a = Attachment {
            filename,
            content_type,
            size,
            sha256,
            inline,
        };
        out.push((a, if with_data { data.to_vec() } else { Vec::new() }));
    }
    out
}

/// Whether an attachment is shown inside the message: an inline part that is not text (mail
/// clients show those in place), or a part whose `Content-ID` an HTML part refers to.
fn is_inline(
    msg: &mail_parser::Message<'_>,
    part: &mail_parser::MessagePart<'_>,
    content_type: &str,
) -> bool {
    let disposition_inline = part
        .content_disposition()
        .is_some_and(mail_parser::ContentType::is_inline);
    if matches!(part.body, PartType::InlineBinary(_))
        || disposition_inline && !content_type.starts_with("text/")
    {
        return true;
    }
    let Some(id) = part.content_id().map(|id| id.trim_matches(['<', '>', ' '])) else {
        return false;
    };
    let cid = format!("cid:{id}");
    !id.is_empty()
        && msg.parts.iter().any(|p| match &p.body {
            PartType::Html(h) => h.contains(&cid),
            _ => false,
        })
}

fn to_mailbox(a: &mail_parser::Addr<'_>) -> Option<Mailbox> {
    let address = a.address()?.trim().to_ascii_lowercase();
    if address.is_empty() {
        return None;
    }
    Some(Mailbox {
        name: a.name().unwrap_or("").trim().to_owned(),
        address,
    })
}

fn first(a: Option<&Address<'_>>) -> Option<Mailbox> {
    a?.iter().find_map(to_mailbox)
}

fn all(a: Option<&Address<'_>>) -> Vec<Mailbox> {
    a.map(|a| a.iter().filter_map(to_mailbox).collect())
        .unwrap_or_default()
}

fn ids(v: &HeaderValue<'_>) -> Vec<String> {
    let raw: Vec<String> = match v {
        HeaderValue::Text(t) => vec![t.to_string()],
        HeaderValue::TextList(l) => l.iter().map(ToString::to_string).collect(),
        _ => Vec::new(),
    };
    raw.iter().flat_map(|s| clean_ids(s)).collect()
}

/// At most this many ids of an In-Reply-To or References header are used for threading:
/// anyone can send a message with hundreds of thousands of them.
pub const MAX_THREAD_IDS: usize = 200;

/// The first id (the thread's root) and the newest [`MAX_THREAD_IDS`] - 1 (the nearest
/// ancestors), in order; the raw message keeps the whole header.
fn capped(mut ids: Vec<String>) -> Vec<String> {
    if ids.len() > MAX_THREAD_IDS {
        ids.drain(1..ids.len() - (MAX_THREAD_IDS - 1));
    }
    ids
}

/// The ids in one item of a Message-ID list as the parser hands it over (brackets gone):
/// usually one id, possibly folded across lines (`<long@\r\n example.com>`) or, without
/// brackets, several separated by space. A fold or space inside an id is removed: ids hold
/// no white space, and writing one back with its fold would make a malformed header.
pub fn clean_ids(item: &str) -> Vec<String> {
    let words: Vec<&str> = item
        .split(|c: char| c.is_whitespace() || c == '<' || c == '>')
        .filter(|w| !w.is_empty())
        .collect();
    if words.len() > 1 && words.iter().all(|w| w.contains('@') && !w.ends_with('@')) {
        words.iter().map(|w| (*w).to_owned()).collect()
    } else {
        Some(words.concat())
            .filter(|id| !id.is_empty())
            .into_iter()
            .collect()
    }
}

/// A message id without angle brackets, and without the space or line folds a long one may
/// have been folded with.
pub fn clean_id(id: &str) -> String {
    id.trim()
        .trim_start_matches('<')
        .trim_end_matches('>')
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect()
}

fn derived_id(fp: &[u8; 32]) -> String {
    format!("{}@mailticket.invalid", hex(fp.get(..16).unwrap_or(fp)))
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    s
}

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let d = crate::stages::time(crate::stages::Stage::Hash, || {
        ring::digest::digest(&ring::digest::SHA256, data)
    });
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

fn fingerprint(
    from: &str,
    date: Option<i64>,
    subject: &str,
    text: &str,
    attachments: &[Attachment],
) -> [u8; 32] {
    // The bytes hashed, gathered first: one digest call instead of two per line of text.
    let date = date.unwrap_or(0).to_string();
    let mut data = Vec::with_capacity(
        from.len() + date.len() + subject.len() + text.len() + 4 + 33 * attachments.len(),
    );
    for part in [from, &date, subject] {
        data.extend_from_slice(part.as_bytes());
        data.push(0);
    }
    for line in crate::quote::lines(text) {
        data.extend_from_slice(line.trim_end().as_bytes());
        data.push(b'\n');
    }
    for a in attachments {
        data.push(0);
        data.extend_from_slice(&a.sha256);
    }
    let d = ring::digest::digest(&ring::digest::SHA256, &data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Joins folded header lines into one line.
#[cfg(test)]
fn unfold(v: &str) -> String {
    let mut out = String::new();
    unfold_into(&mut out, v);
    out
}

/// Appends `v` to `out`, its folded lines joined into one and trimmed.
fn unfold_into(out: &mut String, v: &str) {
    let v = v.trim();
    // Most values are one line: nothing to join.
    if memchr::memchr(b'\n', v.as_bytes()).is_none() {
        out.push_str(v);
        return;
    }
    let start = out.len();
    for (i, line) in v.split('\n').enumerate() {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(line.trim_end_matches('\r').trim_start());
    }
    let kept = out.get(start..).map_or(0, |s| s.trim_end().len());
    out.truncate(start + kept);
}

/// A file name from the wire made safe to create inside a folder: the last path component
/// only, no control characters, no leading dots, at most 150 bytes; never empty.
pub fn safe_filename(name: &str) -> String {
    let last = name.rsplit(['/', '\\']).next().unwrap_or("");
    let mut s: String = last
        .chars()
        .map(|c| {
            if c.is_control() || matches!(c, ':' | '*' | '?' | '"' | '<' | '>' | '|') {
                '_'
            } else {
                c
            }
        })
        .collect();
    s = s.trim().trim_start_matches('.').trim().to_owned();
    if s.len() > 150 {
        let mut cut = 150;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    if s.is_empty() {
        "attachment".to_owned()
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIMPLE: &str = "From: Anna <Anna@Example.com>\r\nTo: support@example.com\r\n\
        Subject: Help\r\nDate: Wed, 1 Jan 2025 00:00:00 +0000\r\nMessage-ID: <a1@example.com>\r\n\
        In-Reply-To: <p@x>\r\nReferences: <r1@x> <p@x>\r\n\r\nHello\r\n";

    #[test]
    fn blank_lines_and_a_bom_before_the_headers_are_skipped() {
        for lead in [
            "\r\n",
            "\n\n",
            " \t\r\n",
            "\u{feff}",
            "\u{feff}\r\n",
            "\r\n\u{feff}",
        ] {
            let m = parse(format!("{lead}{SIMPLE}").as_bytes()).unwrap();
            assert_eq!(m.from_addr(), "anna@example.com", "{lead:?}");
            assert_eq!(m.message_id, "a1@example.com", "{lead:?}");
            assert_eq!(m.text, "Hello", "{lead:?}");
        }
        assert_eq!(skip_preamble(b"x: y\r\n"), b"x: y\r\n");
        assert_eq!(skip_preamble(b" \r\n \t"), b" \t");
        assert!(parse(b"\xEF\xBB\xBF\r\n\r\n").is_err());
    }

    #[test]
    fn headers_that_are_not_utf8_are_still_seen() {
        let raw = b"From: bot@example.com\r\nSubject: Abwesenheitsnotiz: M\xfcller\r\n\
            X-Autoreply: ja \xe4\r\nAuto-Submitted: auto-replied\r\n\r\nweg\r\n";
        let m = parse(raw).unwrap();
        assert_eq!(m.header("x-autoreply"), Some("ja \u{fffd}"));
        assert_eq!(m.header("auto-submitted"), Some("auto-replied"));
    }

    #[test]
    fn folded_ids_are_unfolded_and_bare_lists_split() {
        assert_eq!(
            clean_ids("long-id@\r\n example.com"),
            ["long-id@example.com"]
        );
        assert_eq!(
            clean_ids("long-id\r\n\t@example.com"),
            ["long-id@example.com"]
        );
        assert_eq!(clean_ids(" a@x  b@y "), ["a@x", "b@y"]);
        assert_eq!(clean_ids("<a@x>"), ["a@x"]);
        assert!(clean_ids(" \r\n ").is_empty());
        let raw = "From: a@b\r\nMessage-ID: <m@x>\r\nIn-Reply-To: <p@\r\n x>\r\n\
            References: <r1@x>\r\n <a-long-one\r\n @example.com>\r\n\t<p@\r\n x>\r\n\r\nbody\r\n";
        let m = parse(raw.as_bytes()).unwrap();
        assert_eq!(m.references, ["r1@x", "a-long-one@example.com", "p@x"]);
        assert_eq!(m.in_reply_to, ["p@x"]);
        assert_eq!(clean_id(" <m-long\r\n @x> "), "m-long@x");
    }

    #[test]
    fn parses_fields() {
        let m = parse(SIMPLE.as_bytes()).unwrap();
        assert_eq!(m.message_id, "a1@example.com");
        assert_eq!(m.from.as_ref().unwrap().address, "anna@example.com");
        assert_eq!(m.from.as_ref().unwrap().name, "Anna");
        assert_eq!(m.in_reply_to, ["p@x"]);
        assert_eq!(m.references, ["r1@x", "p@x"]);
        assert_eq!(m.date, Some(1_735_689_600));
        assert_eq!(m.text, "Hello");
        assert_eq!(m.header("SUBJECT"), Some("Help"));
    }

    #[test]
    fn a_huge_references_list_keeps_its_root_and_newest_ids() {
        let refs: Vec<String> = (0..5000).map(|i| format!("<r{i}@x>")).collect();
        let raw = format!(
            "From: a@example.com\r\nMessage-ID: <m@x>\r\nReferences: {}\r\n\r\nhi\r\n",
            refs.join("\r\n ")
        );
        let m = parse(raw.as_bytes()).unwrap();
        assert_eq!(m.references.len(), MAX_THREAD_IDS);
        assert_eq!(m.references.first().map(String::as_str), Some("r0@x"));
        assert_eq!(m.references.get(1).map(String::as_str), Some("r4801@x"));
        assert_eq!(m.references.last().map(String::as_str), Some("r4999@x"));
    }

    /// The fingerprint as first defined, digest updates piece by piece: stored fingerprints
    /// are dedupe keys, so a faster way to compute them must give the same bytes.
    fn fingerprint_as_defined(m: &ParsedMessage) -> [u8; 32] {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        let from = m.from.as_ref().map_or("", |f| f.address.as_str());
        for part in [from, &m.date.unwrap_or(0).to_string(), &m.subject] {
            ctx.update(part.as_bytes());
            ctx.update(b"\0");
        }
        for line in m.text.lines() {
            ctx.update(line.trim_end().as_bytes());
            ctx.update(b"\n");
        }
        for a in &m.attachments {
            ctx.update(b"\0");
            ctx.update(&a.sha256);
        }
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.finish().as_ref());
        out
    }

    #[test]
    fn fingerprint_is_unchanged_over_the_corpus() {
        let files = super::skeleton_tests::corpus_files();
        assert!(files.len() > 20);
        for path in files {
            let raw = std::fs::read(&path).unwrap();
            let Ok(m) = parse(&raw) else { continue };
            assert_eq!(
                m.fingerprint,
                fingerprint_as_defined(&m),
                "{}",
                path.display()
            );
        }
    }

    #[test]
    fn headers_keep_lower_case_names_and_unfolded_values_in_order() {
        let mut h: Headers = [
            ("Subject", "  Re: help\r\n\tplease  "),
            ("X-Autoreply", "yes"),
            ("Received", "from a"),
            ("RECEIVED", "from b\n by c"),
            ("X-Empty", ""),
        ]
        .into_iter()
        .collect();
        let m = ParsedMessage {
            headers: h.clone(),
            ..ParsedMessage::default()
        };
        assert_eq!(m.header("subject"), Some("Re: help please"));
        assert_eq!(m.header("x-AUTOREPLY"), Some("yes"));
        assert_eq!(m.header("x-empty"), Some(""));
        assert_eq!(m.header("x-autorepl"), None);
        assert_eq!(m.header("autoreply"), None);
        assert_eq!(
            m.headers_named("Received").collect::<Vec<_>>(),
            ["from a", "from b by c"]
        );
        assert_eq!(
            format!("{h:?}"),
            r#"[("subject", "Re: help please"), ("x-autoreply", "yes"), ("received", "from a"), ("received", "from b by c"), ("x-empty", "")]"#
        );
        h.clear();
        assert_eq!(h.iter().count(), 0);
        h.push("From", "x@example.com");
        assert_eq!(h.iter().collect::<Vec<_>>(), [("from", "x@example.com")]);
    }

    #[test]
    fn unfold_joins_folded_lines_as_it_did() {
        fn as_defined(v: &str) -> String {
            let mut out = String::with_capacity(v.len());
            for (i, line) in v.split('\n').enumerate() {
                let line = line.trim_end_matches('\r');
                if i > 0 {
                    out.push(' ');
                }
                out.push_str(line.trim_start());
            }
            out.trim().to_owned()
        }
        let alphabet = ["a", " ", "\t", "\r", "\n", "\u{a0}", "é"];
        for n in 0..7u32.pow(6) {
            let (mut v, mut k) = (String::new(), n);
            for _ in 0..6 {
                v.push_str(alphabet[(k % 7) as usize]);
                k /= 7;
            }
            assert_eq!(unfold(&v), as_defined(&v), "{v:?}");
        }
    }

    #[test]
    fn fingerprint_ignores_line_endings() {
        let a = parse(SIMPLE.as_bytes()).unwrap();
        let lf = SIMPLE.replace("\r\n", "\n") + "\n\n";
        let b = parse(lf.as_bytes()).unwrap();
        assert_eq!(a.fingerprint, b.fingerprint);
        let c = parse(SIMPLE.replace("Hello", "Hullo").as_bytes()).unwrap();
        assert_ne!(a.fingerprint, c.fingerprint);
    }

    #[test]
    fn missing_message_id_is_derived_and_stable() {
        let raw = SIMPLE.replace("Message-ID: <a1@example.com>\r\n", "");
        let a = parse(raw.as_bytes()).unwrap();
        let b = parse(raw.replace("\r\n", "\n").as_bytes()).unwrap();
        assert!(a.message_id_derived);
        assert!(a.message_id.ends_with("@mailticket.invalid"));
        assert_eq!(a.message_id, b.message_id);
    }

    #[test]
    fn garbage_fails() {
        assert!(parse(b"").is_err());
        assert!(parse(b"\x00\x01\x02\xff\xfe binary junk \x07").is_err());
        let junk: Vec<u8> = (0..4096u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        assert!(parse(&junk).is_err());
    }

    #[test]
    fn html_only_becomes_text() {
        let raw =
            "From: a@b.c\r\nSubject: x\r\nContent-Type: text/html\r\n\r\n<p>Hello <b>there</b></p>";
        let m = parse(raw.as_bytes()).unwrap();
        assert!(m.text.contains("Hello"), "{}", m.text);
        assert!(!m.text.contains("<b>"), "{}", m.text);
    }

    #[test]
    fn html_lists_links_tables_and_breaks_stay_readable() {
        let text = html_to_text(
            "<p>Hi,<br>line two</p><ul><li>one</li><li>two</li></ul><ol><li>first</li></ol>\
             <p>See <a href=\"https://example.org/o/42\">order 42</a>.</p>\
             <table><tr><th>Item</th><th>Qty</th></tr><tr><td>Paper</td><td>3</td></tr></table>",
        );
        for want in [
            "Hi,\nline two",
            "* one\n* two",
            "1. first",
            "[order 42][1]",
            "[1]: https://example.org/o/42",
            "Item",
            "Paper",
        ] {
            assert!(text.contains(want), "{want:?} not in:\n{text}");
        }
        let row = text.lines().find(|l| l.contains("Paper")).unwrap();
        assert!(row.contains('3'), "a table row stays on one line: {text}");
    }

    #[test]
    fn hostile_html_is_cut_before_conversion_and_does_not_overflow() {
        let deep = "<div><table><tr><td>".repeat(40_000);
        let text = html_to_text(&deep);
        assert!(
            text.contains("was not converted"),
            "{}",
            &text[..text.len().min(200)]
        );
        // Deep nesting costs the converter the square of its depth: such HTML is read flat.
        let nested = format!("{}deep words", "<ul><li>".repeat(20_000));
        assert!(html_to_text(&nested).contains("deep words"));
        let quotes = format!("{}x", "<blockquote>".repeat(5_000));
        assert!(html_to_text(&quotes).contains('x'));
    }

    #[test]
    fn nesting_depth_counts_open_elements() {
        assert_eq!(
            nesting_depth("<p>a<br>b<img src=x/></p><div><b>c</b></div>"),
            2
        );
        assert_eq!(nesting_depth("<ul><li><ul><li>x</li></ul></li></ul>"), 4);
        assert_eq!(nesting_depth("1 < 2 > 0 <d>"), 1);
        assert_eq!(nesting_depth("</div></div><p>"), 1);
        assert_eq!(nesting_depth("<"), 0);
        assert_eq!(nesting_depth(&"<div>".repeat(300)), 300);
    }

    #[test]
    fn embedded_images_are_inline_attachments() {
        let raw = "From: a@b.c\r\nSubject: x\r\nMIME-Version: 1.0\r\n\
            Content-Type: multipart/mixed; boundary=m\r\n\r\n\
            --m\r\nContent-Type: multipart/related; boundary=r\r\n\r\n\
            --r\r\nContent-Type: text/html\r\n\r\n<p>Hi <img src=\"cid:img1@x\"></p>\r\n\
            --r\r\nContent-Type: image/png; name=a.png\r\nContent-ID: <img1@x>\r\n\
            Content-Transfer-Encoding: base64\r\n\r\naGVsbG8=\r\n--r--\r\n\
            --m\r\nContent-Type: image/jpeg; name=b.jpg\r\nContent-Disposition: inline; filename=b.jpg\r\n\
            Content-Transfer-Encoding: base64\r\n\r\naGVsbG8=\r\n\
            --m\r\nContent-Type: application/pdf; name=c.pdf\r\nContent-Disposition: attachment; filename=c.pdf\r\n\
            Content-ID: <unused@x>\r\nContent-Transfer-Encoding: base64\r\n\r\naGVsbG8=\r\n--m--\r\n";
        let m = parse(raw.as_bytes()).unwrap();
        let got: Vec<(&str, bool)> = m
            .attachments
            .iter()
            .map(|a| (a.filename.as_str(), a.inline))
            .collect();
        assert_eq!(got, [("a.png", true), ("b.jpg", true), ("c.pdf", false)]);
        assert!(m.text.starts_with("Hi"), "{}", m.text);
    }

    #[test]
    fn filenames_cannot_escape() {
        assert_eq!(safe_filename("../../etc/passwd"), "passwd");
        assert_eq!(safe_filename("..\\..\\boot.ini"), "boot.ini");
        assert_eq!(safe_filename(".."), "attachment");
        assert_eq!(safe_filename("/"), "attachment");
        assert_eq!(safe_filename(".bashrc"), "bashrc");
        assert_eq!(safe_filename("a\u{0}b\nc.txt"), "a_b_c.txt");
        assert_eq!(safe_filename("C:evil.exe"), "C_evil.exe");
        assert!(safe_filename(&"é".repeat(200)).len() <= 150);
    }

    #[test]
    fn dsn_fields() {
        let d = parse_dsn(
            "Reporting-MTA: dns; mx.example.com\n\nFinal-Recipient: rfc822; <Bob@X.example>\n\
             Action: Failed\nStatus: 5.1.1 (user unknown)\nDiagnostic-Code: smtp; 550 5.1.1\n  no such user\n\n\
             Final-Recipient: rfc822; c@x.example\nAction: delayed\nStatus: 4.4.7\n",
        )
        .unwrap();
        assert_eq!(d.reporting_mta, "mx.example.com");
        assert_eq!(d.recipients.len(), 2);
        assert_eq!(d.recipients[0].final_recipient, "bob@x.example");
        assert_eq!(d.recipients[0].action, "failed");
        assert_eq!(d.recipients[0].status, "5.1.1");
        assert_eq!(d.recipients[0].diagnostic, "550 5.1.1 no such user");
        assert!(d.recipients[0].failed() && !d.recipients[1].failed());
        assert_eq!(parse_dsn("just text"), None);
    }

    #[test]
    fn quoted_originals_and_forward_blocks() {
        let o = quoted_original(
            "Sorry.\n\n--- Below this line is a copy of the message.\n\nFrom: a@b.example\n\
             To: c@d.example\nSubject: Hi\nMessage-ID: <m1@b.example>\n\nbody\n",
        )
        .unwrap();
        assert_eq!(o.message_id.as_deref(), Some("m1@b.example"));
        assert_eq!(o.subject, "Hi");
        assert_eq!(o.recipients[0].address, "c@d.example");
        assert_eq!(quoted_original("nothing quoted here"), None);
        let f = forwarded_sender(
            "FYI\n\n-----Original Message-----\nFrom: Kim Lee [mailto:Kim@Client.example]\nSent: Monday\n",
        )
        .unwrap();
        assert_eq!(
            (f.name.as_str(), f.address.as_str()),
            ("Kim Lee", "kim@client.example")
        );
        let f = forwarded_sender("Begin forwarded message:\n\n> Von: Jo <jo@x.example>\n").unwrap();
        assert_eq!(f.address, "jo@x.example");
        assert_eq!(forwarded_sender("From: not a forward <a@b.example>"), None);
        assert_eq!(mailbox_in("no address"), None);
        assert_eq!(mailbox_in("(x@y.example)").unwrap().address, "x@y.example");
    }

    #[test]
    fn failed_recipients_from_text() {
        let exim = "The following address(es) failed:\n\n  a@x.example\n    host said 550\n\n  b@x.example\n";
        assert_eq!(text_failed_recipients(exim), ["a@x.example", "b@x.example"]);
        let qmail = "<C@Y.example>:\nSorry, no mailbox here by that name.\n";
        assert_eq!(text_failed_recipients(qmail), ["c@y.example"]);
    }

    #[test]
    fn attachment_is_decoded() {
        let raw = "From: a@b.c\r\nSubject: x\r\nContent-Type: multipart/mixed; boundary=B\r\n\r\n\
            --B\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n--B\r\n\
            Content-Type: application/pdf; name=\"../x.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\n\
            aGVsbG8=\r\n--B--\r\n";
        let m = parse(raw.as_bytes()).unwrap();
        assert_eq!(m.attachments.len(), 1);
        assert_eq!(m.attachments[0].filename, "x.pdf");
        assert_eq!(m.attachments[0].content_type, "application/pdf");
        assert_eq!(m.attachments[0].size, 5);
        assert_eq!(m.attachments[0].sha256, sha256(b"hello"));
        let full = extract_attachments(raw.as_bytes()).unwrap();
        assert_eq!(full[0].1, b"hello");
        assert_eq!(m.content_type, "multipart/mixed");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(400))]

        #[test]
        fn push_lf_turns_each_crlf_into_lf_and_nothing_else(
            head in "[a-z]{0,3}",
            t in "(\r|\n|\r\n|x|\u{e9}|\u{20ac}){0,40}",
        ) {
            let mut out = head.clone();
            push_lf(&mut out, &t);
            proptest::prop_assert_eq!(out, head + &t.replace("\r\n", "\n"));
        }
    }
}

/// A parse through a skeleton says exactly what the parse of the whole message says.
#[cfg(test)]
pub(crate) mod skeleton_tests {
    use super::*;
    use base64::Engine as _;
    use proptest::prelude::*;

    /// Both parses of `raw`; the skeleton one forced whatever the size. `None` for the
    /// skeleton when it set nothing aside or was refused.
    fn both(raw: &[u8]) -> (String, Option<String>) {
        let whole = format!("{:?}", guarded(|| parse_whole(raw)));
        let sk = skeleton::of_slice(raw);
        // As `parse_keeping` takes it: a panic in the skeleton's parse leaves it to the whole.
        let fast = guarded(|| Ok(parse_skeleton(&sk)))
            .ok()
            .flatten()
            .map(|p| format!("{:?}", Ok::<_, ParseFailure>(p)));
        let mut file = tempfile();
        std::io::Write::write_all(&mut file, raw).unwrap();
        std::io::Seek::rewind(&mut file).unwrap();
        let from_file = format!("{:?}", parse_file(&mut file));
        assert_eq!(from_file, whole, "parse_file differs");
        assert_eq!(kept_round_trip(raw), raw, "the store's bytes differ");
        (whole, fast)
    }

    /// `raw` as the store writes it back, kept with its regular base64 bodies decoded.
    fn kept_round_trip(raw: &[u8]) -> Vec<u8> {
        let kept = skeleton::of_slice(raw).kept;
        let regions = kept.regions.len();
        let (packed, codec) = crate::store::pack_message(raw, kept).unwrap();
        assert_eq!(
            codec == "zstd-b64",
            regions > 0,
            "{regions} regions, codec {codec}"
        );
        crate::store::decompress(codec, &packed, raw.len()).unwrap()
    }

    fn tempfile() -> std::fs::File {
        let path = std::env::temp_dir().join(format!(
            "mt-skeleton-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        f
    }

    fn b64(data: &[u8], width: usize, eol: &str) -> String {
        let enc = base64::engine::general_purpose::STANDARD.encode(data);
        enc.as_bytes()
            .chunks(width.max(1))
            .map(|c| format!("{}{eol}", String::from_utf8_lossy(c)))
            .collect()
    }

    /// Every sample of the golden corpus (`tests/corpus`, `.eml` files).
    pub(crate) fn corpus_files() -> Vec<std::path::PathBuf> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
        let (mut stack, mut files) = (vec![dir], Vec::new());
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.extension().is_some_and(|x| x == "eml") {
                    files.push(p);
                }
            }
        }
        files.sort();
        files
    }

    #[test]
    fn the_parser_reads_the_corpus_as_mail_parsers_default_does() {
        let mut n = 0;
        for p in corpus_files() {
            let raw = std::fs::read(&p).unwrap();
            let read = |parser: &MessageParser| {
                let msg = parser.parse(skip_preamble(&raw));
                format!("{:?}", msg.map(|m| fields(&m, None)))
            };
            assert_eq!(
                read(mime_parser()),
                read(&MessageParser::default()),
                "{}",
                p.display()
            );
            n += 1;
        }
        assert!(n > 100);
    }

    #[test]
    fn corpus_messages_parse_the_same_through_a_skeleton() {
        let (mut n, mut set_aside, mut kept) = (0, 0, 0);
        for p in corpus_files() {
            let lf = std::fs::read(&p).unwrap();
            let crlf = String::from_utf8_lossy(&lf).replace('\n', "\r\n");
            for raw in [lf.clone(), crlf.into_bytes()] {
                let (whole, fast) = both(&raw);
                kept += usize::from(!skeleton::of_slice(&raw).kept.regions.is_empty());
                if let Some(fast) = fast {
                    assert_eq!(fast, whole, "{}", p.display());
                    set_aside += 1;
                }
                n += 1;
            }
        }
        assert!(n > 200, "{n} samples");
        assert!(set_aside > 0, "no sample had an attachment set aside");
        assert!(kept > 0, "no sample had a body kept decoded");
    }

    /// `data` as it is, read as UTF-8 (lossy), in lines of at most `width` bytes.
    fn lines_of(data: &[u8], width: usize, eol: &str) -> String {
        data.chunks(width.max(1))
            .map(|c| format!("{}{eol}", String::from_utf8_lossy(c)))
            .collect()
    }

    /// `data` in quoted-printable, every byte but printable ASCII escaped, a soft break
    /// after every `width` characters or so.
    fn quoted_printable(data: &[u8], width: usize, eol: &str) -> String {
        let mut out = String::new();
        let mut line = 0;
        for &b in data {
            let piece = match b {
                b'!'..=b'<' | b'>'..=b'~' => (b as char).to_string(),
                _ => format!("={b:02X}"),
            };
            if line + piece.len() > width.max(3) {
                out.push('=');
                out.push_str(eol);
                line = 0;
            }
            line += piece.len();
            out.push_str(&piece);
        }
        out.push_str(eol);
        out
    }

    /// A message with `parts`: (content type, transfer encoding, body) each.
    fn message(eol: &str, parts: &[(String, String, String)], nest: bool) -> String {
        let mut m = format!(
            "From: a@example.com{eol}Subject: s{eol}Message-ID: <m@x>{eol}\
             Content-Type: multipart/mixed; boundary=\"outer\"{eol}{eol}preamble{eol}"
        );
        if nest {
            m.push_str(&format!(
                "--outer{eol}Content-Type: multipart/alternative; boundary=\"in\"{eol}{eol}\
                 --in{eol}Content-Type: text/plain{eol}{eol}plain text{eol}\
                 --in{eol}Content-Type: text/html{eol}{eol}<p>html</p>{eol}--in--{eol}"
            ));
        }
        for (ct, cte, body) in parts {
            m.push_str(&format!(
                "--outer{eol}Content-Type: {ct}{eol}Content-Transfer-Encoding: {cte}{eol}{eol}{body}"
            ));
        }
        m.push_str(&format!("--outer--{eol}epilogue{eol}"));
        m
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        #[test]
        fn generated_messages_parse_the_same(
            crlf in any::<bool>(),
            nest in any::<bool>(),
            parts in prop::collection::vec(
                (
                    prop::sample::select(vec![
                        "application/pdf; name=\"a.pdf\"", "image/png", "text/plain",
                        "message/rfc822", "application/octet-stream", "Application/X-Y",
                        "text/csv; charset=utf-8\nContent-Disposition: attachment; filename=a.csv",
                        "text/plain\nContent-Disposition: ATTACHMENT",
                        "text/plain; charset=us-ascii\nContent-Disposition: attachment",
                        "text/plain; charset=latin1\nContent-Disposition: attachment",
                        "text/plain; charset=windows-1251\nContent-Disposition: attachment",
                        "text/plain; charset=shift_jis\nContent-Disposition: attachment",
                        "text/plain; charset=x-unknown\nContent-Disposition: attachment",
                        "text/plain; charset=\" latin1 \"\nContent-Disposition: attachment",
                        "text/plain; charset=utf-16\nContent-Disposition: attachment",
                        "message/rfc822\nContent-Disposition: attachment; filename=m.eml",
                    ]),
                    prop::sample::select(vec!["base64", "BASE64", "7bit", "quoted-printable"]),
                    prop::collection::vec(any::<u8>(), 0..3000),
                    1usize..120,
                    0u8..12,
                    0u8..3,
                    0u8..3,
                ),
                0..4,
            ),
        ) {
            let eol = if crlf { "\r\n" } else { "\n" };
            let parts: Vec<(String, String, String)> = parts
                .into_iter()
                .map(|(ct, cte, data, width, spoil, text, form)| {
                    // Text as real text attachments carry: UTF-8, or ASCII.
                    let data = match text {
                        1 => String::from_utf8_lossy(&data).into_owned().into_bytes(),
                        2 => data.iter().map(|b| b & 0x7f).collect(),
                        _ => data,
                    };
                    let ct = ct.replace('\n', eol);
                    // The data in base64 (whatever the field says), as it is, or in
                    // quoted-printable.
                    let mut body = match form {
                        0 => b64(&data, width, eol),
                        1 => lines_of(&data, width, eol),
                        _ => quoted_printable(&data, width, eol),
                    };
                    // Spoil some bodies the ways real mail does.
                    match spoil {
                        1 => body = body.replacen('A', " ", 1),
                        2 => body.push_str(&format!("QQ=={eol}")),
                        3 => body = body.trim_end().to_owned(),
                        4 => body.push_str(&format!("{eol}{eol}")),
                        5 => body = body.replacen(eol, &format!("{eol}--outer{eol}"), 1),
                        // Clean base64 whose lines the store cannot lay out again.
                        6 => body = body.replacen(eol, "", 1),
                        7 => body = body.replacen(eol, &format!("{eol}{eol}"), 1),
                        8 => body = body.replacen(eol, if crlf { "\n" } else { "\r\n" }, 1),
                        // Spaces and tabs where some writers leave them.
                        9 => body = body.replace(eol, &format!(" {eol}")),
                        10 => body = body.replacen('A', "\tA", 2),
                        _ => {}
                    }
                    (ct, cte.to_owned(), body)
                })
                .collect();
            let raw = message(eol, &parts, nest);
            let (whole, fast) = both(raw.as_bytes());
            if let Some(fast) = fast {
                prop_assert_eq!(fast, whole);
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// Attached messages of every shape: a body set aside must give the parse the same
        /// attachment (the size and digest of the bytes the parse takes).
        #[test]
        fn attached_messages_parse_the_same(
            crlf in any::<bool>(),
            lines in prop::collection::vec(
                prop::sample::select(vec![
                    "", " ", "--in", "--in--", "--in--  ", "--in  ", "--in x", "--outer-not", "-- ", "x\r",
                    "Subject: inner", "=", "\t", "word --in word", "\u{e9}t\u{e9}",
                    "Content-Type: text/plain", "Content-Type: multipart/mixed; boundary=deep",
                    "--deep", "--deep--", "Content-Type: message/rfc822", "--outer", "--outer--",
                    "Content-Transfer-Encoding: base64", "QUJD", "--in\r",
                    "Content-Type: multipart/mixed; BOUNDARY = \"deep\"", "x --deep y",
                    "Content-Type: multipart/mixed; boundary*0=deep", "-----", "a -- b",
                ]),
                0..40,
            ),
            filler in 0usize..600,
            headers in prop::sample::select(vec![
                "From: c@example.org\nMessage-ID: <o@x>\n",
                "Content-Type: multipart/mixed; boundary=in\n",
                "",
                "garbage line\n",
                // An attached message that is itself an attachment's body.
                "Content-Type: application/pdf\nContent-Transfer-Encoding: 7bit\n",
                "Content-Type: text/csv; charset=utf-8\nContent-Disposition: attachment\nContent-Transfer-Encoding: quoted-printable\n",
                // Its own text, in quoted-printable and in base64.
                "Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: quoted-printable\n",
                "Content-Transfer-Encoding: base64\n",
            ]),
            blank_first in any::<bool>(),
            body in 0u8..4,
        ) {
            let eol = if crlf { "\r\n" } else { "\n" };
            let mut inner = String::new();
            if blank_first {
                inner.push_str(eol);
            }
            inner.push_str(&headers.replace('\n', eol));
            inner.push_str(eol);
            // A body inside that is set aside (base64, in no transfer encoding, in
            // quoted-printable), the lines after it its own when nothing ends it before.
            let (cte, first) = match body {
                1 => ("base64", b64(&vec![7u8; filler + 100], 76, eol)),
                2 => ("7bit", format!("{}{eol}", "y".repeat(filler + 1))),
                3 => ("quoted-printable", format!("{}=3D{eol}", "y".repeat(filler % 70))),
                _ => ("", format!("{}{eol}", "y".repeat(filler))),
            };
            if !cte.is_empty() {
                inner.push_str(&format!(
                    "--in{eol}Content-Type: application/pdf{eol}Content-Transfer-Encoding: {cte}{eol}{eol}"
                ));
            }
            inner.push_str(&first);
            for l in &lines {
                inner.push_str(l);
                inner.push_str(eol);
            }
            let raw = message(
                eol,
                &[
                    (format!("message/rfc822{eol}Content-Disposition: attachment"), "7bit".into(), inner.clone()),
                    ("message/rfc822".into(), "8bit".into(), inner),
                ],
                false,
            );
            let (whole, fast) = both(raw.as_bytes());
            if let Some(fast) = fast {
                prop_assert_eq!(fast, whole);
            }
        }
    }

    #[test]
    fn only_a_message_that_says_base64_is_walked() {
        assert!(mentions_base64(b"Content-Transfer-Encoding: BaSe64\r\n"));
        assert!(mentions_base64(b"x: base64"));
        assert!(!mentions_base64(b"64 bytes, based on 7bit"));
        assert!(!mentions_base64(b"64"));
    }

    #[test]
    fn only_a_message_that_says_quoted_printable_is_walked_for_it() {
        assert!(mentions_qp(
            b"Content-Transfer-Encoding: quoted-printable\r\n"
        ));
        assert!(mentions_qp(
            b"Content-Transfer-Encoding: Quoted-Printable\r\n"
        ));
        assert!(!mentions_qp(
            b"Content-Transfer-Encoding: 8bit\r\n\r\nquoted printable"
        ));
    }

    /// The text of every part of `msg`, byte for byte.
    fn part_texts(msg: &mail_parser::Message<'_>) -> Vec<String> {
        msg.parts
            .iter()
            .map(|p| match &p.body {
                PartType::Text(t) | PartType::Html(t) => format!("text {t:?}"),
                other => format!("other {}", other.len()),
            })
            .collect()
    }

    /// Both parses of `raw` agree, part by part and as mailticket reads them; how many
    /// texts the walk decoded, when the parse of its skeleton is the one taken (else 0).
    fn qp_agrees(raw: &[u8]) -> usize {
        let sk = skeleton::of_slice(raw);
        let taken = !sk.qp.is_empty() && parse_skeleton(&sk).is_some();
        if taken && sk.set_aside.is_empty() {
            let mut fast = mime_parser().parse(skip_preamble(&sk.bytes)).unwrap();
            assert!(put_back_qp_texts(&mut fast, &sk, sk.bytes.len()));
            let whole = mime_parser().parse(skip_preamble(raw)).unwrap();
            assert_eq!(part_texts(&fast), part_texts(&whole), "part texts");
        }
        let (whole, fast) = both(raw);
        if let Some(fast) = fast {
            assert_eq!(fast, whole);
        }
        if taken { sk.qp.len() } else { 0 }
    }

    /// An Outlook-style message: a plain and an HTML text in quoted-printable.
    fn outlook(eol: &str, cte: &str) -> String {
        let words = "Caf=C3=A9 na=C3=AFve =E2=80=93 the printer on floor 3 says =3D error 42. ";
        let plain: String = (0..40).map(|i| format!("{words}{i}={eol}")).collect();
        let html: String = (0..40)
            .map(|i| format!("<p class=3D\"MsoNormal\">{words}{i}</p>  {eol}"))
            .collect();
        format!(
            "From: a@example.com{eol}Subject: s{eol}Message-ID: <q@x>{eol}\
             Content-Type: multipart/alternative; boundary=\"_000_\"{eol}{eol}\
             --_000_{eol}Content-Type: text/plain; charset=\"utf-8\"{eol}\
             Content-Transfer-Encoding: {cte}{eol}{eol}{plain}end{eol}\
             --_000_{eol}Content-Type: text/html; charset=\"utf-8\"{eol}\
             Content-Transfer-Encoding: {cte}{eol}{eol}{html}\
             --_000_--{eol}"
        )
    }

    #[test]
    fn quoted_printable_texts_are_decoded_by_the_walk_as_the_parse_decodes_them() {
        for eol in ["\r\n", "\n"] {
            for cte in [
                "quoted-printable",
                "Quoted-Printable",
                " quoted-printable\t",
            ] {
                assert_eq!(
                    qp_agrees(outlook(eol, cte).as_bytes()),
                    2,
                    "{eol:?} {cte:?}"
                );
            }
            // What the parse's decoder reads as the walk does: a CR decoded last, a
            // delimiter decoded out of escapes, the field folded or spelled with a space.
            let good = outlook(eol, "quoted-printable");
            let field = format!("Content-Transfer-Encoding: quoted-printable{eol}");
            for (from, to) in [
                (format!("end{eol}--_000_"), format!("end=0D{eol}--_000_")),
                ("floor".to_owned(), format!("{eol}=2D=2D_000_")),
                (
                    field.clone(),
                    format!("Content-Transfer-Encoding:{eol} quoted-printable{eol}"),
                ),
                (
                    field.clone(),
                    format!("Content-Transfer-Encoding : quoted-printable{eol}"),
                ),
            ] {
                let raw = good.replacen(&from, &to, 1);
                assert_eq!(qp_agrees(raw.as_bytes()), 2, "{to:?}");
            }
            // The top-level text: the header keeps saying quoted-printable.
            let raw = format!(
                "From: a@example.com{eol}Subject: s{eol}Content-Type: text/plain; charset=latin1{eol}\
                 Content-Transfer-Encoding: Quoted-Printable{eol}{eol}d=E9j=E0 vu =\t{eol}  tail  {eol}"
            );
            assert_eq!(qp_agrees(raw.as_bytes()), 1);
            let p = parse_skeleton(&skeleton::of_slice(raw.as_bytes())).unwrap();
            assert_eq!(
                p.header("content-transfer-encoding"),
                Some("Quoted-Printable")
            );
            assert_eq!(p.text, "d\u{e9}j\u{e0} vu   tail");
        }
    }

    #[test]
    fn quoted_printable_the_walk_cannot_read_for_sure_is_left_to_the_parse() {
        let eol = "\r\n";
        let good = outlook(eol, "quoted-printable");
        let spoiled = [
            // `=` followed by what is not two hexadecimal digits, or doubled.
            good.replacen("=C3=A9", "=G3", 1),
            good.replacen("=C3=A9", "= C3", 1),
            good.replacen("=C3=A9", "==", 1),
            // A lone CR, or another line end.
            good.replacen("floor", "fl\roor", 1),
            good.replacen("</p>  \r\n", "</p>\n", 1),
            // A soft break right before the delimiter.
            good.replacen("end\r\n--_000_", "end=\r\n--_000_", 1),
            // The delimiter inside a line.
            good.replacen("Normal\">Caf", "Normal\">--_000_Caf", 1),
        ];
        for (i, raw) in spoiled.iter().enumerate() {
            assert_eq!(qp_agrees(raw.as_bytes()), 1, "spoiled case {i}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]

        /// Texts of quoted-printable pieces of every kind, clean or not, where a message has
        /// them: the parses agree whether the walk decoded them or left them.
        #[test]
        fn quoted_printable_texts_parse_the_same(
            crlf in any::<bool>(),
            top in any::<bool>(),
            with_pdf in any::<bool>(),
            cte in prop::sample::select(vec![
                "quoted-printable", "QUOTED-PRINTABLE", "  quoted-printable ", "quoted-printable x",
            ]),
            charset in prop::sample::select(vec!["utf-8", "iso-8859-1", "windows-1252", "x-unknown"]),
            lines in prop::collection::vec(
                (
                    prop::collection::vec(
                        prop_oneof![
                            // What encoders write,
                            12 => prop::sample::select(vec![
                                "Hello", "caf=C3=A9", "=3D", "=3d", "=20", " ", "\t", "\u{c}",
                                "-", "--", "-- ", "=0D", "=0A", "\u{e9}", "=FF", "tail  ",
                            ]),
                            // and what else comes.
                            1 => prop::sample::select(vec![
                                "=", "==", "=G1", "=4", "= 41", "--in", "--outer", "=2D=2Din",
                                "\r", "=\t ", "=0D=0A--in",
                            ]),
                        ],
                        0..8,
                    ),
                    0u8..20,
                ),
                0..12,
            ),
        ) {
            let eol = if crlf { "\r\n" } else { "\n" };
            let mut body = String::new();
            for (tokens, end) in &lines {
                body.push_str(&tokens.concat());
                body.push_str(match end {
                    0 => "=",
                    1 if crlf => "\n",
                    1 => "\r\n",
                    _ => "",
                });
                body.push_str(eol);
            }
            let part = format!(
                "Content-Type: text/plain; charset={charset}{eol}Content-Transfer-Encoding: {cte}{eol}{eol}{body}"
            );
            let raw = if top {
                format!("From: a@example.com{eol}Subject: s{eol}{part}")
            } else {
                let pdf = if with_pdf {
                    format!(
                        "--outer{eol}Content-Type: application/pdf{eol}\
                         Content-Transfer-Encoding: base64{eol}{eol}{}",
                        b64(&[7u8; 3000], 76, eol)
                    )
                } else {
                    String::new()
                };
                format!(
                    "From: a@example.com{eol}Subject: s{eol}\
                     Content-Type: multipart/mixed; boundary=\"outer\"{eol}{eol}\
                     --outer{eol}Content-Type: multipart/alternative; boundary=\"in\"{eol}{eol}\
                     --in{eol}{part}--in{eol}{}--in--{eol}{pdf}--outer--{eol}",
                    part.replace("text/plain", "text/html")
                )
            };
            qp_agrees(raw.as_bytes());
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]

        /// Attachments in quoted-printable or in no transfer encoding, of lines clean or
        /// not, at the top of a message or in a nested multipart: the parses agree whether the
        /// walk set a body aside or left it.
        #[test]
        fn plain_attachments_parse_the_same(
            crlf in any::<bool>(),
            nested in any::<bool>(),
            ct in prop::sample::select(vec![
                "application/octet-stream",
                "text/plain; charset=utf-8\nContent-Disposition: attachment",
                "text/csv\nContent-Disposition: attachment; filename=a.csv",
                "text/plain; charset=iso-8859-1\nContent-Disposition: attachment",
                "text/plain; charset=shift_jis\nContent-Disposition: attachment",
                "text/plain; charset=utf-16\nContent-Disposition: attachment",
            ]),
            cte in prop::sample::select(vec![
                "7bit", "8bit", "binary", "x-unknown", "quoted-printable", "QUOTED-PRINTABLE",
                " quoted-printable",
            ]),
            lines in prop::collection::vec(
                (
                    prop::collection::vec(
                        prop_oneof![
                            12 => prop::sample::select(vec![
                                b"Hello".as_slice(), b"caf=C3=A9", b"=3D", b"=20", b" ", b"\t",
                                b"-", b"--", b"-- ", b"=0D", b"\xc3\xa9", b"\xe9", b"\xe3\x81",
                                b"\0", b"=FF", b"tail  ",
                            ]),
                            1 => prop::sample::select(vec![
                                b"=".as_slice(), b"=G1", b"--in", b"--outer", b"--in--", b"\r",
                                b"x--in", b"x--outer y", b"=0D=0A--in",
                            ]),
                        ],
                        0..8,
                    ),
                    0u8..20,
                ),
                0..12,
            ),
        ) {
            let eol: &[u8] = if crlf { b"\r\n" } else { b"\n" };
            let mut body = Vec::new();
            for (tokens, end) in &lines {
                body.extend(tokens.concat());
                body.extend_from_slice(match end {
                    0 => b"=",
                    1 if crlf => b"\n",
                    1 => b"\r\n",
                    2 => b"\r",
                    _ => b"",
                });
                body.extend_from_slice(eol);
            }
            let e = String::from_utf8_lossy(eol);
            let part = format!(
                "Content-Type: {}{e}Content-Transfer-Encoding: {cte}{e}{e}",
                ct.replace('\n', &e)
            );
            let (open, close) = if nested {
                (
                    format!("--outer{e}Content-Type: multipart/mixed; boundary=\"in\"{e}{e}--in{e}"),
                    format!("--in--{e}--outer--{e}"),
                )
            } else {
                (format!("--outer{e}"), format!("--outer--{e}"))
            };
            let mut raw = format!(
                "From: a@example.com{e}Subject: s{e}Message-ID: <m@x>{e}\
                 Content-Type: multipart/mixed; boundary=\"outer\"{e}{e}{open}{part}"
            )
            .into_bytes();
            raw.extend(body);
            raw.extend(close.into_bytes());
            let (whole, fast) = both(&raw);
            if let Some(fast) = fast {
                prop_assert_eq!(fast, whole);
            }
        }
    }

    /// The parse of a message with one attachment of type `ct` holding `data`, after checking
    /// that it was set aside and that both parses agree.
    fn set_aside_alone(ct: &str, data: &[u8]) -> ParsedMessage {
        let raw = message(
            "\r\n",
            &[(ct.into(), "base64".into(), b64(data, 76, "\r\n"))],
            true,
        );
        let (whole, fast) = both(raw.as_bytes());
        assert_eq!(fast.as_deref(), Some(whole.as_str()));
        let p = parse(raw.as_bytes()).unwrap();
        assert_eq!(p.attachments[0].size, data.len());
        assert_eq!(p.attachments[0].sha256, sha256(data));
        p
    }

    /// `raw` parsed in memory and from a file: the same, and returned.
    fn both_ways(raw: &[u8]) -> ParsedMessage {
        let mut file = tempfile();
        std::io::Write::write_all(&mut file, raw).unwrap();
        let from_file = parse_file(&mut file).unwrap();
        let parsed = parse(raw).unwrap();
        assert_eq!(format!("{from_file:?}"), format!("{parsed:?}"));
        parsed
    }

    #[test]
    fn a_long_text_is_cut_the_same_in_memory_and_from_a_file() {
        let line = "a line of a very long log pasted into the message, caf\u{e9}\r\n";
        let long = line.repeat(3 * skeleton::TEXT_CUT / line.len());
        let plain =
            format!("From: a@example.com\r\nSubject: log\r\nMessage-ID: <l@x>\r\n\r\n{long}");
        let qp = format!(
            "From: a@example.com\r\nSubject: log\r\nMessage-ID: <l@x>\r\nContent-Type: text/plain; charset=utf-8\r\n\
             Content-Transfer-Encoding: quoted-printable\r\n\r\n{}",
            long.replace('\u{e9}', "=C3=A9")
        );
        let in_base64 = message(
            "\r\n",
            &[(
                "text/plain; charset=utf-8".into(),
                "base64".into(),
                b64(long.as_bytes(), 76, "\r\n"),
            )],
            false,
        );
        let pdf: Vec<u8> = (0..40_000u32).map(|i| (i * 7 % 256) as u8).collect();
        let with_pdf = message(
            "\r\n",
            &[
                ("text/plain".into(), "8bit".into(), long),
                (
                    "application/pdf".into(),
                    "base64".into(),
                    b64(&pdf, 76, "\r\n"),
                ),
            ],
            false,
        );
        for raw in [&plain, &qp, &in_base64, &with_pdf] {
            let p = both_ways(raw.as_bytes());
            let head = line.trim_end();
            assert!(p.text.starts_with(head), "{}", &p.text[..200]);
            assert!(
                p.text.len() < skeleton::TEXT_CUT + 70_000,
                "{}",
                p.text.len()
            );
            let note = p.text.lines().last().unwrap();
            assert!(note.starts_with(skeleton::CUT_NOTE), "{note:?}");
            assert!(
                note.contains("more bytes of this part are left out"),
                "{note:?}"
            );
        }
        let p = both_ways(with_pdf.as_bytes());
        assert_eq!(p.attachments.len(), 1);
        assert_eq!(p.attachments[0].sha256, sha256(&pdf));
        // A short text is not touched.
        let short = format!(
            "From: a@example.com\r\nSubject: s\r\n\r\n{}",
            line.repeat(10_000)
        );
        assert!(
            !both_ways(short.as_bytes())
                .text
                .contains(skeleton::CUT_NOTE)
        );
    }

    #[test]
    fn texts_are_cut_to_a_total_and_an_attachment_is_never_cut() {
        let part = "x".repeat(100) + "\r\n";
        let big = part.repeat(skeleton::TEXT_CUT / 100);
        let parts: Vec<(String, String, String)> = (0..6)
            .map(|_| ("text/plain".into(), "8bit".into(), big.clone()))
            .chain([(
                "text/plain\r\nContent-Disposition: attachment; filename=log.txt".into(),
                "8bit".into(),
                big.clone(),
            )])
            .collect();
        let raw = message("\r\n", &parts, false);
        let sk = skeleton::of_slice(raw.as_bytes());
        assert!(
            sk.bytes.len() < 5 * skeleton::TEXT_CUT + big.len() + 100_000,
            "{}",
            sk.bytes.len()
        );
        assert!(sk.cut > 2 * big.len() as u64);
        let p = both_ways(raw.as_bytes());
        assert_eq!(p.attachments.len(), 1);
        // Its last line end belongs to the delimiter.
        assert_eq!(p.attachments[0].size, big.len() - 2);
        // Text that says what a cut says, in an attachment the walk copies (a line longer
        // than it reads at once): the whole message is parsed.
        let forged = format!("{}{}\r\n{big}", skeleton::CUT_NOTE, "y".repeat(100_000));
        let parts = [
            ("text/plain".into(), "8bit".into(), big.repeat(2)),
            (
                "text/plain\r\nContent-Disposition: attachment; filename=a.txt".into(),
                "8bit".into(),
                forged,
            ),
        ];
        let raw = message("\r\n", &parts, false);
        let p = both_ways(raw.as_bytes());
        assert!(!p.text.contains(skeleton::CUT_NOTE));
        assert_eq!(
            p.text.lines().count(),
            2 * (big.len() / part.len()),
            "the whole text"
        );
    }

    /// A forwarded message: `inner` attached as `message/rfc822`.
    fn forwarded(eol: &str, inner: &str) -> String {
        message(
            eol,
            &[(
                format!("message/rfc822{eol}Content-Disposition: attachment; filename=fw.eml"),
                "7bit".into(),
                inner.to_owned(),
            )],
            true,
        )
    }

    #[test]
    fn an_attached_message_is_set_aside_with_its_header_block_kept() {
        let pdf: Vec<u8> = (0..9_000u32).map(|i| (i * 7 % 256) as u8).collect();
        for eol in ["\r\n", "\n"] {
            for tail in ["", "\n", " \r\n\r\n", "x\n"] {
                let inner = format!(
                    "From: c@example.org{eol}To: a@example.com{eol}Subject: the original{eol}\
                     Message-ID: <orig@example.org>{eol}Content-Type: multipart/mixed; boundary=in{eol}{eol}\
                     --in{eol}Content-Type: multipart/alternative; boundary=alt{eol}{eol}\
                     --alt{eol}Content-Type: text/plain{eol}{eol}hello{eol}-- {eol}sig{eol}--alt--{eol}\
                     --in{eol}Content-Type: application/pdf{eol}Content-Transfer-Encoding: base64{eol}{eol}\
                     {}--in--{eol}{tail}",
                    b64(&pdf, 76, eol)
                );
                let raw = forwarded(eol, &inner);
                let sk = skeleton::of_slice(raw.as_bytes());
                let messages = sk
                    .set_aside
                    .iter()
                    .filter(|s| matches!(s.kind, skeleton::Aside::Message(..)))
                    .count();
                assert_eq!(messages, 1, "{eol:?} {tail:?}");
                assert!(sk.bytes.len() < 1000, "{eol:?} {tail:?}");
                let (whole, fast) = both(raw.as_bytes());
                assert_eq!(fast.as_deref(), Some(whole.as_str()), "{eol:?} {tail:?}");
                let p = parse(raw.as_bytes()).unwrap();
                assert_eq!(p.attachments[0].content_type, "message/rfc822");
                // A bounce's original is still read from the header block.
                let original = p.original_anywhere().unwrap();
                assert_eq!(original.message_id.as_deref(), Some("orig@example.org"));
            }
        }
        // Odd shapes: whatever the walk makes of them, the parse says the same.
        let pdf = format!(
            "--in\nContent-Type: application/pdf\nContent-Transfer-Encoding: base64\n\n{}",
            b64(&pdf, 76, "\n")
        );
        for odd in [
            format!("Content-Type: multipart/mixed; boundary=in\n\n--outer-not\n{pdf}--in--\n"),
            format!("Content-Type: multipart/mixed; boundary=in\n\n{pdf}"),
            format!("Content-Type: multipart/mixed; boundary=in\n\n{pdf}--in--\n--outer\nx: y\n"),
            format!("\nContent-Type: multipart/mixed; boundary=in\n\n{pdf}--in--\n"),
        ] {
            let raw = forwarded("\n", &odd);
            let (whole, fast) = both(raw.as_bytes());
            if let Some(fast) = fast {
                assert_eq!(fast, whole, "{odd:?}");
            }
        }
    }

    /// A forwarded message whose attachment is a log or a CSV file in no transfer encoding
    /// or in quoted-printable: set aside like a base64 one, `--` in it included (rules,
    /// options), and the parse says the same. One that holds `--` and a boundary the message
    /// declares anywhere stays copied (the parse of the original could take that line for a
    /// delimiter), and so does any with `--` when a declaration cannot be read for sure; both
    /// still parse the same.
    #[test]
    fn a_plain_attachment_in_an_attached_message_is_set_aside_unless_it_holds_a_boundary() {
        let log = "2026-12-01 10:00:00 ERROR printer 3: paper jam, retry\n".repeat(2000);
        let dashed = format!("{}\n--restart -- ok, {log}", "-".repeat(60));
        let csv = "7,Caf=C3=A9 na=C3=AFve =E2=80=93 x,42.00\n".repeat(2000);
        // What the forwarded message's text says: nothing, a multipart declared and never
        // opened, a declaration the walk cannot read for sure.
        let (plain, dangling, unsure) = (
            "see attached",
            "Content-Type: multipart/alternative; boundary=\"deep\"",
            "Content-Type: multipart/mixed; boundary*0=deep",
        );
        for eol in ["\r\n", "\n"] {
            for (ct, cte, body, text, copied) in [
                (
                    "text/plain; charset=utf-8",
                    "7bit",
                    log.clone(),
                    plain,
                    false,
                ),
                (
                    "application/octet-stream",
                    "8bit",
                    log.clone(),
                    plain,
                    false,
                ),
                (
                    "text/csv; charset=utf-8",
                    "quoted-printable",
                    csv.clone(),
                    plain,
                    false,
                ),
                ("text/plain", "7bit", dashed.clone(), plain, false),
                ("text/plain", "7bit", dashed.clone(), dangling, false),
                ("text/plain", "7bit", dashed.clone(), unsure, true),
                (
                    "text/plain",
                    "7bit",
                    log.replace(", ", " --outer "),
                    plain,
                    true,
                ),
                (
                    "text/plain",
                    "8bit",
                    log.replace(", ", " --deep "),
                    dangling,
                    true,
                ),
                (
                    "text/plain",
                    "8bit",
                    log.replace(", ", " --deep "),
                    plain,
                    false,
                ),
            ] {
                let inner = format!(
                    "From: c@example.org\nSubject: the original\nMessage-ID: <orig@example.org>\n\
                     Content-Type: multipart/mixed; boundary=in\n\n\
                     --in\nContent-Type: text/plain\n\n{text}\n\
                     --in\nContent-Type: {ct}\nContent-Disposition: attachment; filename=a\n\
                     Content-Transfer-Encoding: {cte}\n\n{body}--in--\n"
                )
                .replace('\n', eol);
                let raw = forwarded(eol, &inner);
                let sk = skeleton::of_slice(raw.as_bytes());
                let small = sk.bytes.len() < 2000;
                let case = format!("{cte} {text:?} {eol:?}");
                assert_eq!(small, !copied, "{case}: {} bytes", sk.bytes.len());
                let (whole, fast) = both(raw.as_bytes());
                // The log set aside, the skeleton is parsed; copied, the text beside it may
                // still be set aside.
                assert!(fast.is_some() || copied, "{case}");
                if let Some(fast) = fast {
                    assert_eq!(fast, whole, "{case}");
                }
                attached_whole(&raw, eol, &case);
            }
        }
    }

    /// Both ways, the attachment of the forwarded message `raw` is the forwarded message:
    /// its size and digest are of its bytes as received.
    fn attached_whole(raw: &str, eol: &str, case: &str) {
        let p = both_ways(raw.as_bytes());
        assert_eq!(p.attachments[0].content_type, "message/rfc822");
        let inner = raw.split_once("fw.eml").unwrap().1;
        let inner = inner.split_once(&format!("{eol}{eol}")).unwrap().1;
        let inner = inner.rsplit_once(&format!("{eol}--")).unwrap().0;
        assert_eq!(p.attachments[0].size, inner.len(), "{case}");
        assert_eq!(p.attachments[0].sha256, sha256(inner.as_bytes()));
    }

    /// A forwarded message whose own text is long (a log pasted into the mail), in no
    /// transfer encoding, in quoted-printable or in base64, alone or in a multipart: set
    /// aside, as nothing reads the text of an attached message, and the parse says the same.
    #[test]
    fn the_long_text_of_an_attached_message_is_set_aside() {
        let log = "2026-12-01 10:00:00 ERROR printer 3 -- paper jam, retry\n".repeat(2000);
        let qp = "Caf=C3=A9 na=C3=AFve =E2=80=93 printer 3 jammed, retry\n".repeat(2000);
        let b64 = {
            use base64::Engine as _;
            let e = base64::engine::general_purpose::STANDARD.encode(log.as_bytes());
            e.as_bytes()
                .chunks(76)
                .map(|c| format!("{}\n", String::from_utf8_lossy(c)))
                .collect::<String>()
        };
        let head = "From: c@example.org\nSubject: the original\nMessage-ID: <orig@example.org>\n";
        for eol in ["\r\n", "\n"] {
            for (cte, body) in [("7bit", &log), ("quoted-printable", &qp), ("base64", &b64)] {
                let alone = format!(
                    "{head}Content-Type: text/plain; charset=utf-8\n\
                     Content-Transfer-Encoding: {cte}\n\n{body}"
                );
                let parts = format!(
                    "{head}Content-Type: multipart/alternative; boundary=in\n\n\
                     --in\nContent-Type: text/plain; charset=utf-8\n\
                     Content-Transfer-Encoding: {cte}\n\n{body}\
                     --in\nContent-Type: text/html\n\n<p>short</p>\n--in--\n"
                );
                for inner in [alone, parts] {
                    let inner = inner.replace('\n', eol);
                    let raw = forwarded(eol, &inner);
                    let sk = skeleton::of_slice(raw.as_bytes());
                    let case = format!("{cte} {eol:?} {}", inner.len());
                    assert!(sk.bytes.len() < 2000, "{case}: {} bytes", sk.bytes.len());
                    let (whole, fast) = both(raw.as_bytes());
                    assert_eq!(fast.as_deref(), Some(whole.as_str()), "{case}");
                    attached_whole(&raw, eol, &case);
                }
            }
        }
    }

    /// A text attachment in UTF-16 (Windows' "Unicode" exports) in base64, in either byte
    /// order, with a byte order mark or without: set aside, its marker in the text's byte
    /// order, and the parse of the skeleton says what the parse of the whole message says.
    #[test]
    fn a_utf16_text_attachment_is_set_aside_and_parses_the_same() {
        let text = "id;name\r\n7;Caf\u{e9} \u{6ce8} \u{1f600}\r\n".repeat(500);
        let le: Vec<u8> = text.encode_utf16().flat_map(u16::to_le_bytes).collect();
        let be: Vec<u8> = text.encode_utf16().flat_map(u16::to_be_bytes).collect();
        for (charset, data) in [
            ("utf-16le", le.clone()),
            ("utf-16be", be.clone()),
            ("utf-16", [[0xFF, 0xFE].as_slice(), &le].concat()),
            ("utf-16", [[0xFE, 0xFF].as_slice(), &be].concat()),
            ("unicode", le.clone()),
            ("utf-16le", [[0xFF, 0xFE].as_slice(), &le, &[0x3D]].concat()),
        ] {
            let ct = format!(
                "text/csv; charset={charset}\r\nContent-Disposition: attachment; filename=a.csv"
            );
            let raw = message(
                "\r\n",
                &[(ct, "base64".into(), b64(&data, 76, "\r\n"))],
                true,
            );
            let sk = skeleton::of_slice(raw.as_bytes());
            assert_eq!(sk.set_aside.len(), 1, "{charset}");
            let (whole, fast) = both(raw.as_bytes());
            assert_eq!(fast.as_deref(), Some(whole.as_str()), "{charset}");
            let shown = mail_parser::decoders::charsets::map::charset_decoder(charset.as_bytes())
                .unwrap()(&data);
            let p = both_ways(raw.as_bytes());
            assert_eq!(p.attachments[0].size, shown.len(), "{charset}");
            assert_eq!(
                p.attachments[0].sha256,
                sha256(shown.as_bytes()),
                "{charset}"
            );
        }
    }

    #[test]
    fn a_text_attachment_is_set_aside_and_parses_the_same() {
        let csv = "id;name\r\n7;Caf\u{e9}\r\n".repeat(3000);
        let ct = "text/csv; charset=utf-8\r\nContent-Disposition: attachment; filename=a.csv";
        let p = set_aside_alone(ct, csv.as_bytes());
        assert_eq!(p.attachments[0].filename, "a.csv");
    }

    #[test]
    fn a_typical_attachment_is_set_aside() {
        let data: Vec<u8> = (0..50_000u32).map(|i| (i * 31 % 256) as u8).collect();
        set_aside_alone("application/pdf; name=\"r.pdf\"", &data);
    }

    /// `body` (`data` in the transfer encoding `cte`) as the one attachment (`ct`) of a
    /// message: set aside, the skeleton holds a marker line in its place, and both parses,
    /// in memory and from a file, give the attachment `data`'s size and digest.
    fn plain_set_aside(ct: &str, cte: &str, body: &[u8], data: &[u8]) {
        for eol in ["\r\n", "\n"] {
            let body = String::from_utf8_lossy(body).replace("\r\n", eol);
            let data = String::from_utf8_lossy(data).replace("\r\n", eol);
            let raw = message(eol, &[(ct.replace("\r\n", eol), cte.into(), body)], true);
            let sk = skeleton::of_slice(raw.as_bytes());
            assert_eq!(sk.set_aside.len(), 1, "{cte} {eol:?}");
            assert!(sk.bytes.len() < 1000, "{cte}: {} bytes", sk.bytes.len());
            let (whole, fast) = both(raw.as_bytes());
            assert_eq!(fast.as_deref(), Some(whole.as_str()), "{cte} {eol:?}");
            let p = both_ways(raw.as_bytes());
            assert_eq!(p.attachments.len(), 1);
            assert_eq!(p.attachments[0].size, data.len(), "{cte} {eol:?}");
            assert_eq!(p.attachments[0].sha256, sha256(data.as_bytes()));
        }
    }

    #[test]
    fn an_attachment_in_no_transfer_encoding_is_set_aside() {
        // A log attached as it is, as mail clients send text files with short lines; its
        // last line end is the delimiter's.
        let log = "2026-12-01 10:00:00 ERROR printer 3: paper jam -- retry\r\n".repeat(2000);
        let ct = "text/plain; charset=utf-8\r\nContent-Disposition: attachment; filename=x.log";
        for cte in ["7bit", "8bit", "binary"] {
            plain_set_aside(ct, cte, log.as_bytes(), log.trim_end().as_bytes());
        }
        let data = "x,y\r\n1,caf\u{e9}\r\n".repeat(500);
        plain_set_aside(
            "text/csv\r\nContent-Disposition: attachment",
            "8bit",
            data.as_bytes(),
            data.trim_end().as_bytes(),
        );
        // Any bytes of a file sent `binary`, a lone CR and NUL included, in lines.
        let mut bin: Vec<u8> = (0..60_000u32).map(|i| (i * 37 % 251) as u8).collect();
        for at in (0..bin.len()).step_by(997) {
            bin[at] = b'\n';
        }
        let mut raw = message(
            "\r\n",
            &[(
                "application/octet-stream".into(),
                "binary".into(),
                "%BODY%".into(),
            )],
            false,
        )
        .into_bytes();
        let at = memchr::memmem::find(&raw, b"%BODY%").unwrap();
        raw.splice(at..at + 6, bin.iter().copied().chain(*b"\r\n"));
        let sk = skeleton::of_slice(&raw);
        assert_eq!(sk.set_aside.len(), 1);
        let (whole, fast) = both(&raw);
        assert_eq!(fast.as_deref(), Some(whole.as_str()));
        let p = both_ways(&raw);
        assert_eq!(p.attachments[0].sha256, sha256(&bin));
    }

    #[test]
    fn an_attachment_in_quoted_printable_is_set_aside() {
        let text = "Caf\u{e9} = 42; na\u{ef}ve \u{2013} the printer on floor 3\r\n".repeat(1500);
        let qp: String = text
            .lines()
            .map(|l| {
                let mut out = String::new();
                for b in l.bytes() {
                    match b {
                        b'=' => out.push_str("=3D"),
                        0x80.. => out.push_str(&format!("={b:02X}")),
                        _ => out.push(b as char),
                    }
                }
                // A soft break in the middle of each line, as long lines get (not inside
                // an escape).
                let b = out.as_bytes();
                let cut = (b.len() / 2..b.len())
                    .find(|&i| b[i - 1] != b'=' && b[i - 2] != b'=')
                    .unwrap();
                format!("{}=\r\n{}\r\n", &out[..cut], &out[cut..])
            })
            .collect();
        for ct in [
            "text/plain; charset=utf-8\r\nContent-Disposition: attachment; filename=a.txt",
            "application/pdf; name=\"a.pdf\"",
        ] {
            let data = text.trim_end().as_bytes();
            plain_set_aside(ct, "quoted-printable", qp.as_bytes(), data);
        }
    }

    #[test]
    fn a_plain_attachment_the_parse_would_end_elsewhere_is_copied() {
        let eol = "\r\n";
        let line = "a line of a log\r\n".repeat(100);
        for body in [
            // The boundary inside a line: the parse ends the part there.
            format!("{line}see --outer here{eol}{line}"),
            // A line longer than a piece.
            format!("{line}{}{eol}", "y".repeat(100_000)),
            // An empty body.
            String::new(),
        ] {
            let raw = message(
                eol,
                &[(
                    "application/octet-stream".into(),
                    "7bit".into(),
                    body.clone(),
                )],
                true,
            );
            let sk = skeleton::of_slice(raw.as_bytes());
            assert!(sk.set_aside.is_empty(), "{}", body.len());
            let (whole, fast) = both(raw.as_bytes());
            if let Some(fast) = fast {
                assert_eq!(fast, whole);
            }
        }
        // An outer multipart's delimiter at a line's start, which the parse reads as text of
        // the part (it looks for the innermost boundary only).
        let raw = format!(
            "From: a@example.com{eol}Subject: s{eol}Message-ID: <m@x>{eol}\
             Content-Type: multipart/mixed; boundary=\"outer\"{eol}{eol}\
             --outer{eol}Content-Type: multipart/mixed; boundary=\"in\"{eol}{eol}\
             --in{eol}Content-Type: application/octet-stream{eol}{eol}\
             {line}--outer{eol}{line}--in--{eol}--outer--{eol}"
        );
        assert!(skeleton::of_slice(raw.as_bytes()).set_aside.is_empty());
        let (whole, fast) = both(raw.as_bytes());
        if let Some(fast) = fast {
            assert_eq!(fast, whole);
        }
    }
}
