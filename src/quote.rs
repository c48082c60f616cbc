//! What the sender wrote now, and what the message only carries along: a message's text split
//! into its new part, the quoted history and the signature.
//!
//! Quoted history starts at an attribution line (`On … wrote:` and its translations), at
//! Outlook's `-----Original Message-----` separator or its `From:`/`Sent:`/`Subject:` header
//! block (in the common languages), at a forwarded-message header, or at our own
//! [`REPLY_MARKER`]; a block of `>` lines before or after everything new is quoted too (`>`
//! lines between new paragraphs are an inline answer and stay). The signature is what follows
//! a `-- ` line, or a "Sent from my phone" line at the end. The full text stays stored; this
//! only reads it, so `show` and the JSON views split every message, old ones included.
//!
//! Pure functions over a `&str`, linear in its length: no store, no I/O, no allocation per
//! line beyond a lower-cased copy of the few lines that look like headers.

/// The line our acknowledgements and replies start with. Mail clients quote it as visible
/// text (an HTML attribute or id would not survive Outlook's and Gmail's rewriting), so a
/// reply carrying it is cut there: the marker's line and everything below it, with the
/// attribution line just above it, are quoted history. Any line of the shape `##- … -##` counts,
/// so a translated marker works as well.
pub const REPLY_MARKER: &str = "##- Please type your reply above this line -##";

/// A message's text, split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    /// What the sender wrote now: the text without quoted history and signature. The whole
    /// text when nothing new would be left (a forward without a word of its own).
    pub new: String,
    /// Non-blank lines of quoted history left out of [`Split::new`].
    pub quoted_lines: usize,
    /// Non-blank lines of signature left out of [`Split::new`] (the `-- ` line included).
    pub signature_lines: usize,
}

impl Split {
    /// Non-blank lines left out of [`Split::new`].
    pub fn hidden_lines(&self) -> usize {
        self.quoted_lines + self.signature_lines
    }

    /// The split of `text` kept without a second copy of a text it leaves whole (most new
    /// requests): for a message that waits in memory for the store.
    pub fn compact(self, text: &str) -> CompactSplit {
        CompactSplit {
            new: (self.new != text).then_some(self.new),
            quoted_lines: self.quoted_lines,
            signature_lines: self.signature_lines,
        }
    }
}

/// A [`Split`] made by [`Split::compact`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompactSplit {
    new: Option<String>,
    quoted_lines: usize,
    signature_lines: usize,
}

impl CompactSplit {
    /// The split again, of the same `text`.
    pub fn expand(&self, text: &str) -> Split {
        Split {
            new: self.new.as_deref().unwrap_or(text).to_owned(),
            quoted_lines: self.quoted_lines,
            signature_lines: self.signature_lines,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    New,
    Quoted,
    Signature,
}

/// The lines of `text`, as [`str::lines`] gives them (split at `\n`, a `\r` before it
/// dropped), found with the memchr crate's vectorized search: the standard library's search
/// for `\n` is not vectorized, and every message's text is cut into lines more than once.
pub(crate) fn lines(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let Some(end) = memchr::memchr(b'\n', rest.as_bytes()) else {
            return Some(std::mem::take(&mut rest));
        };
        let line = rest.get(..end).unwrap_or_default();
        rest = rest.get(end + 1..).unwrap_or_default();
        Some(line.strip_suffix('\r').unwrap_or(line))
    })
}

/// Splits `text` (lines ending in `\n` or `\r\n`).
pub fn split(text: &str) -> Split {
    let lines: Vec<&str> = lines(text).collect();
    let mut roles = vec![Role::New; lines.len()];
    mark_history(&lines, &mut roles);
    mark_edge_quotes(&lines, &mut roles);
    mark_footnotes(&lines, &mut roles);
    mark_signature(&lines, &mut roles);
    let count = |role: Role| {
        lines
            .iter()
            .zip(&roles)
            .filter(|(l, r)| **r == role && !strip_quote(l).is_empty())
            .count()
    };
    let (quoted_lines, signature_lines) = (count(Role::Quoted), count(Role::Signature));
    if count(Role::New) == 0 || quoted_lines + signature_lines == 0 {
        return Split {
            new: text.trim().to_owned(),
            quoted_lines: 0,
            signature_lines: 0,
        };
    }
    let kept: Vec<&str> = lines
        .iter()
        .zip(&roles)
        .filter(|(_, r)| **r == Role::New)
        .map(|(l, _)| *l)
        .collect();
    Split {
        new: kept.join("\n").trim().to_owned(),
        quoted_lines,
        signature_lines,
    }
}

/// Where quoted history starts at line `i`, and how far it goes.
enum Start {
    /// From this line to the end of the text.
    ToEnd(usize),
    /// An attribution of `n` lines followed by a `>` block: the history ends with the block
    /// (a bottom-posted answer may follow).
    Attribution(usize),
}

/// Marks the quoted history that starts at an attribution, a separator, a header block or
/// the reply marker.
fn mark_history(lines: &[&str], roles: &mut [Role]) {
    let mut i = 0;
    while i < lines.len() {
        match history_start(lines, i) {
            Some(Start::ToEnd(from)) => {
                roles[from..].fill(Role::Quoted);
                return;
            }
            Some(Start::Attribution(n)) => {
                let mut end = i + n;
                while end < lines.len() && (is_quoted(lines[end]) || lines[end].trim().is_empty()) {
                    end += 1;
                }
                roles[i..end].fill(Role::Quoted);
                i = end;
            }
            None => i += 1,
        }
    }
}

fn history_start(lines: &[&str], i: usize) -> Option<Start> {
    let line = lines[i];
    if is_marker(line) {
        return Some(Start::ToEnd(history_above_marker(lines, i)));
    }
    if is_quoted(line) {
        return None;
    }
    if is_separator(line) || is_header_block(lines, i) {
        return Some(Start::ToEnd(i));
    }
    if is_rule(line) && next_nonblank(lines, i + 1).is_some_and(|j| is_header_block(lines, j)) {
        return Some(Start::ToEnd(i));
    }
    let n = attribution_len(lines, i)?;
    let quote_follows = next_nonblank(lines, i + n).is_some_and(|j| is_quoted(lines[j]));
    if quote_follows {
        Some(Start::Attribution(n))
    } else if lines[i..i + n]
        .iter()
        .any(|l| l.contains('@') || l.contains(|c: char| c.is_ascii_digit()))
    {
        // Unquoted history (Outlook-style clients write `On … wrote:` too): the attribution
        // must look like one, with a date or an address, before the rest is taken for history.
        Some(Start::ToEnd(i))
    } else {
        None
    }
}

/// Where the history that the marker at `i` closes begins, in any language: at the nearest
/// non-blank line above when it ends with a colon (an attribution, maybe wrapped over two
/// lines), or at a block of two or more `Label: value` lines right above (a mail client's
/// header block), with the rule above it; else at the marker.
fn history_above_marker(lines: &[&str], i: usize) -> usize {
    let Some(j) = (0..i).rev().find(|&j| !strip_quote(lines[j]).is_empty()) else {
        return i;
    };
    let l = strip_quote(lines[j]);
    if l.ends_with(':') || l.ends_with('：') {
        return match j.checked_sub(1) {
            Some(k) if attribution_len(lines, k) == Some(2) => k,
            _ => j,
        };
    }
    let mut top = j;
    while top > 0 && header_label(lines[top - 1]).is_some() {
        top -= 1;
    }
    if top == j || header_label(lines[j]).is_none() {
        return i;
    }
    match top.checked_sub(1) {
        Some(r) if is_rule(lines[r]) => r,
        _ => top,
    }
}

fn next_nonblank(lines: &[&str], from: usize) -> Option<usize> {
    (from..lines.len()).find(|&j| !lines[j].trim().is_empty())
}

/// The line without leading `>` quote marks and spaces.
fn strip_quote(line: &str) -> &str {
    // Most lines start with a letter or a digit: nothing to strip at the front.
    if line
        .as_bytes()
        .first()
        .is_some_and(u8::is_ascii_alphanumeric)
    {
        return line.trim_end();
    }
    line.trim_start_matches(|c: char| c == '>' || c.is_whitespace())
        .trim_end()
}

fn is_quoted(line: &str) -> bool {
    line.trim_start().starts_with('>')
}

/// Our reply marker, or a translation of it: `##- … -##`, quoted or not.
fn is_marker(line: &str) -> bool {
    let l = strip_quote(line);
    l.len() > 6 && l.starts_with("##-") && l.ends_with("-##")
}

/// A horizontal rule: a line of underscores (Outlook's plain text puts one above its header
/// block) or of dashes and box lines (an `<hr>` converted).
fn is_rule(line: &str) -> bool {
    let l = line.trim();
    // The cheap tests first: most lines fail at their first character.
    l.len() >= 10
        && l.chars().all(|c| matches!(c, '_' | '-' | '─' | '━'))
        && l.chars().count() >= 10
}

/// Words that end an attribution line, lower-case: "wrote" and its translations.
const WROTE: &[&str] = &[
    "wrote",
    "writes",
    "schrieb",
    "écrit",
    "escribió",
    "escribio",
    "schreef",
    "scritto",
    "escreveu",
    "skrev",
    "kirjoitti",
    "napisał",
    "napisała",
    "napisal",
    "napsal",
    "napísal",
    "написал",
    "написала",
    "írta",
    "yazdı",
    "έγραψε",
    "a scris",
    "je napisao",
    "rašė",
    "rakstīja",
    "kirjutas",
    "写道",
    "寫道",
    "書きました",
];

/// Words an attribution starts with when a mail client wraps it onto two lines.
const ATTRIBUTION_LEADS: &[&str] = &[
    "on ", "am ", "le ", "el ", "op ", "il ", "em ", "den ", "w dniu ", "dne ", "в ",
];

/// An attribution at line `i`: 1 line, or 2 when it is wrapped; `None` when there is none.
fn attribution_len(lines: &[&str], i: usize) -> Option<usize> {
    let first = lines[i].trim();
    if first.is_empty() || (first.len() > 300 && first.chars().count() > 300) {
        return None;
    }
    if ends_like_attribution(first) {
        return Some(1);
    }
    let second = lines.get(i + 1)?.trim();
    // A wrapped attribution ends with the second line's colon: most lines stop here.
    if !(second.ends_with(':') || second.ends_with('：')) {
        return None;
    }
    // Every lead is shorter than 8 characters: the start of the line, lower-cased once.
    let head: String = first.chars().take(8).flat_map(char::to_lowercase).collect();
    let leads = ATTRIBUTION_LEADS.iter().any(|w| head.starts_with(w));
    (leads && second.chars().count() < 200 && ends_like_attribution(&format!("{first} {second}")))
        .then_some(2)
}

fn ends_like_attribution(line: &str) -> bool {
    let Some(body) = line
        .strip_suffix(':')
        .or_else(|| line.strip_suffix('：'))
        .map(str::trim_end)
    else {
        return false;
    };
    let lower = body.to_lowercase();
    WROTE.iter().any(|w| contains_word(&lower, w))
}

/// Whether `word` occurs in `s` not as part of a longer word.
fn contains_word(s: &str, word: &str) -> bool {
    s.match_indices(word).any(|(at, _)| {
        let before = s[..at].chars().next_back();
        let after = s[at + word.len()..].chars().next();
        let cjk = word.chars().next().is_some_and(|c| c as u32 >= 0x3000);
        cjk || (!before.is_some_and(char::is_alphanumeric)
            && !after.is_some_and(char::is_alphanumeric))
    })
}

/// Outlook's and other clients' separators, lower-case, as they appear between dashes (or
/// alone with a colon, as Apple Mail writes "Begin forwarded message:").
const SEPARATORS: &[&str] = &[
    "original message",
    "ursprüngliche nachricht",
    "originalnachricht",
    "message d'origine",
    "message d’origine",
    "mensaje original",
    "oorspronkelijk bericht",
    "messaggio originale",
    "mensagem original",
    "originalmeddelande",
    "oprindelig meddelelse",
    "opprinnelig melding",
    "alkuperäinen viesti",
    "wiadomość oryginalna",
    "oryginalna wiadomość",
    "původní zpráva",
    "pôvodná správa",
    "исходное сообщение",
    "eredeti üzenet",
    "orijinal ileti",
    "原始邮件",
    "元のメッセージ",
    "forwarded message",
    "weitergeleitete nachricht",
    "message transféré",
    "mensaje reenviado",
    "doorgestuurd bericht",
    "messaggio inoltrato",
    "mensagem encaminhada",
    "mensagem reencaminhada",
    "vidarebefordrat meddelande",
    "videresendt meddelelse",
    "videresendt melding",
    "välitetty viesti",
    "przekazana wiadomość",
    "přeposlaná zpráva",
    "пересылаемое сообщение",
    "转发的邮件",
];

/// Apple Mail's and others' forward headers, lower-case, without the colon.
const FORWARD_HEADERS: &[&str] = &[
    "begin forwarded message",
    "anfang der weitergeleiteten nachricht",
    "début du message réexpédié",
    "début du message transféré",
    "inicio del mensaje reenviado",
    "begin doorgestuurd bericht",
    "inizio messaggio inoltrato",
    "início da mensagem reencaminhada",
    "início da mensagem encaminhada",
    "vidarebefordrat brev",
    "videresendt meddelelse",
];

/// `-----Original Message-----` and its kind, or `Begin forwarded message:`.
fn is_separator(line: &str) -> bool {
    let l = line.trim();
    if l.is_empty() || l.len() > 120 {
        return false;
    }
    if l.starts_with("--") && l.ends_with("--") || l.starts_with("__") && l.ends_with("__") {
        let inner = l.trim_matches(|c: char| c == '-' || c == '_' || c.is_whitespace());
        let lower = inner.to_lowercase();
        return !inner.is_empty() && SEPARATORS.iter().any(|s| lower.contains(s));
    }
    let Some(head) = l.strip_suffix(':').map(str::trim_end) else {
        return false;
    };
    let lower = head.to_lowercase();
    FORWARD_HEADERS.contains(&lower.as_str())
}

/// Labels of a quoted header block's first line, lower-case.
const FROM_LABELS: &[&str] = &[
    "from",
    "von",
    "de",
    "van",
    "da",
    "från",
    "fra",
    "od",
    "lähettäjä",
    "от",
    "feladó",
    "kimden",
    "发件人",
    "寄件者",
    "差出人",
];

/// Labels of the lines that follow it, lower-case.
const HEADER_LABELS: &[&str] = &[
    // sent, date
    "sent",
    "date",
    "gesendet",
    "datum",
    "envoyé",
    "enviado",
    "enviado el",
    "fecha",
    "verzonden",
    "inviato",
    "data",
    "skickat",
    "sendt",
    "wysłano",
    "wysłane",
    "odesláno",
    "lähetetty",
    "päivämäärä",
    "отправлено",
    "дата",
    "elküldve",
    "gönderildi",
    "tarih",
    "发送时间",
    "日期",
    "送信日時", // to, cc
    "to",
    "an",
    "à",
    "a",
    "para",
    "aan",
    "till",
    "til",
    "do",
    "komu",
    "vastaanottaja",
    "кому",
    "címzett",
    "kime",
    "收件人",
    "宛先",
    "cc",
    "kopie",
    "copie à",
    "kopia",
    "копия",
    // subject
    "subject",
    "betreff",
    "objet",
    "asunto",
    "onderwerp",
    "oggetto",
    "assunto",
    "ämne",
    "emne",
    "temat",
    "předmět",
    "aihe",
    "тема",
    "tárgy",
    "konu",
    "主题",
    "件名",
];

/// The label of a `Label: value` line, lower-case, with the bold marks HTML conversion
/// leaves (`**From:**`) and quote marks removed.
fn header_label(line: &str) -> Option<String> {
    let l = strip_quote(line).trim_start_matches('*');
    let colon = first_colon(l)?;
    let label = l[..colon].trim().trim_end_matches('*').trim();
    (!label.is_empty() && label.chars().count() <= 20).then(|| label.to_lowercase())
}

/// Where the first `:` or full-width `：` (U+FF1A, written by Chinese and Japanese mail
/// clients) of `l` is: one vectorized search for `:` and the full-width colon's first byte.
fn first_colon(l: &str) -> Option<usize> {
    const WIDE: &[u8] = "：".as_bytes();
    let b = l.as_bytes();
    let mut from = 0;
    while let Some(i) = b
        .get(from..)
        .and_then(|rest| memchr::memchr2(b':', WIDE[0], rest))
    {
        let at = from + i;
        if b.get(at) == Some(&b':') || b.get(at..).is_some_and(|r| r.starts_with(WIDE)) {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

/// A quoted message's header block at `i`: a `From:` line and at least two more header
/// lines (sent, to, subject, …) among the next six lines.
fn is_header_block(lines: &[&str], i: usize) -> bool {
    let Some(label) = header_label(lines[i]) else {
        return false;
    };
    if !FROM_LABELS.contains(&label.as_str()) {
        return false;
    }
    let more = lines
        .iter()
        .skip(i + 1)
        .take(6)
        .filter_map(|l| header_label(l))
        .filter(|l| HEADER_LABELS.contains(&l.as_str()))
        .count();
    more >= 2
}

/// Lines mobile mail apps end a message with, lower-case prefixes.
const DEVICE_SIGNATURES: &[&str] = &[
    "sent from my ",
    "sent from mail for windows",
    "sent from outlook",
    "sent from yahoo mail",
    "sent via ",
    "get outlook for ",
    "von meinem iphone gesendet",
    "von meinem ipad gesendet",
    "von meinem smartphone gesendet",
    "gesendet von meinem ",
    "gesendet von ",
    "envoyé de mon ",
    "enviado desde mi ",
    "enviado do meu ",
    "verzonden vanaf mijn ",
    "verstuurd vanaf mijn ",
    "inviato da ",
    "skickat från min ",
    "sendt fra min ",
];

/// Marks the signature among the new lines: from the last `-- ` line (at most 20 lines of
/// signature), or a device line ("Sent from my iPhone") with nothing new after it.
fn mark_signature(lines: &[&str], roles: &mut [Role]) {
    let new_after = |from: usize, roles: &[Role]| {
        (from..lines.len()).any(|j| roles[j] == Role::New && !lines[j].trim().is_empty())
    };
    if let Some(d) = (0..lines.len())
        .rev()
        .find(|&j| roles[j] == Role::New && matches!(lines[j].trim_end(), "--" | "-- "))
    {
        let end = (d..lines.len())
            .find(|&j| roles[j] != Role::New)
            .unwrap_or(lines.len());
        if end - d <= 21 && d > 0 {
            roles[d..end].fill(Role::Signature);
        }
    }
    for j in (0..lines.len()).rev() {
        if roles[j] != Role::New || lines[j].trim().is_empty() {
            continue;
        }
        let lower = lines[j].trim().to_lowercase();
        if lower.len() < 80
            && DEVICE_SIGNATURES.iter().any(|s| lower.starts_with(s))
            && !new_after(j + 1, roles)
        {
            roles[j] = Role::Signature;
        }
        break;
    }
}

/// Marks a `>` block that comes after everything new (a quote a top-poster left below their
/// text), or before it (a bottom-posted answer) unless the answer goes on between quotes;
/// blocks between new lines stay.
fn mark_edge_quotes(lines: &[&str], roles: &mut [Role]) {
    let content = |j: usize| roles[j] == Role::New && !lines[j].trim().is_empty();
    let first_new = (0..lines.len()).find(|&j| content(j) && !is_quoted(lines[j]));
    let last_new = (0..lines.len())
        .rev()
        .find(|&j| content(j) && !is_quoted(lines[j]));
    let (Some(first), Some(last)) = (first_new, last_new) else {
        return;
    };
    // Answers between quotes need the leading question: then only the tail goes.
    let interleaved = (first..last).any(|j| roles[j] == Role::New && is_quoted(lines[j]));
    let lead = if interleaved { 0 } else { first };
    for j in (0..lead).chain(last + 1..lines.len()) {
        if roles[j] == Role::New && is_quoted(lines[j]) {
            roles[j] = Role::Quoted;
        }
    }
}

/// The number of a link footnote line, `[3]: https://…`, as HTML conversion writes them.
fn footnote(line: &str) -> Option<&str> {
    let rest = line.trim().strip_prefix('[')?;
    let (n, url) = rest.split_once("]: ")?;
    (!n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) && !url.trim().is_empty()).then_some(n)
}

/// Link footnotes that only the hidden part refers to go with it (HTML conversion lists
/// every link of the message at its end, below the quoted history).
fn mark_footnotes(lines: &[&str], roles: &mut [Role]) {
    if !roles.contains(&Role::Quoted) {
        return;
    }
    // Every `][n]` the new text uses, in one pass.
    let mut used = std::collections::HashSet::new();
    for (j, line) in lines.iter().enumerate() {
        if roles[j] != Role::New || footnote(line).is_some() {
            continue;
        }
        for (at, _) in line.match_indices("][") {
            let digits = &line[at + 2..];
            let n = digits
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(digits.len());
            if n > 0 && digits[n..].starts_with(']') {
                used.insert(&digits[..n]);
            }
        }
    }
    for j in 0..lines.len() {
        if roles[j] == Role::New && footnote(lines[j]).is_some_and(|n| !used.contains(n)) {
            roles[j] = Role::Quoted;
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn lines_and_colons_are_found_as_the_standard_library_finds_them() {
        let mut cases: Vec<String> = [
            "",
            "a",
            "\n",
            "\r",
            "\r\n",
            "a\n",
            "a\r\n",
            "a\r",
            "a\n\n",
            "\n\na",
            "a\r\r\nb",
            "x：y",
            "x:y：",
            "：",
            "é：:",
            "\u{ff1b}\u{ff1a}",
            "a\u{ef}b",
            "no colon here",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        // Every string of up to five pieces from an alphabet of line ends and colons.
        let alphabet = ["a", "\r", "\n", ":", "：", "é", "\u{ff1b}"];
        let mut n = 0u32;
        while n < 7u32.pow(5) {
            let (mut s, mut k) = (String::new(), n);
            for _ in 0..5 {
                s.push_str(alphabet[(k % 7) as usize]);
                k /= 7;
            }
            cases.push(s);
            n += 1;
        }
        for text in &cases {
            assert_eq!(
                lines(text).collect::<Vec<_>>(),
                text.lines().collect::<Vec<_>>(),
                "{text:?}"
            );
            let either = [text.find(':'), text.find('：')]
                .into_iter()
                .flatten()
                .min();
            assert_eq!(first_colon(text), either, "{text:?}");
        }
    }

    use super::*;

    fn new_of(text: &str) -> String {
        split(text).new
    }

    /// `text` splits into `new` with (quoted, signature) lines hidden.
    fn splits_to(text: &str, new: &str, hidden: (usize, usize)) {
        let s = split(text);
        assert_eq!(
            (s.new.as_str(), (s.quoted_lines, s.signature_lines)),
            (new, hidden)
        );
    }

    fn cuts_to(text: &str, new: &str) {
        assert_eq!(new_of(text), new, "{text}");
    }

    #[test]
    fn attribution_leads_fit_the_lower_cased_head_of_a_line() {
        for lead in ATTRIBUTION_LEADS {
            assert!(lead.chars().count() < 8, "{lead:?}: see attribution_len");
            assert_eq!(*lead, lead.to_lowercase());
        }
        cuts_to("new\n\nW DNIU 1.02.2025 Ala\nnapisała:\n> old", "new");
        cuts_to("new\n\nOn 1 Feb 2025, Ada\nwrote:\n> old", "new");
    }

    #[test]
    fn plain_text_is_all_new() {
        let s = split("Hello,\n\nmy printer is broken.\n\nAnna\n");
        assert_eq!(s.new, "Hello,\n\nmy printer is broken.\n\nAnna");
        assert_eq!(s.hidden_lines(), 0);
    }

    #[test]
    fn english_attributions_plain_and_wrapped() {
        for (text, new, quoted) in [
            (
                "Thanks, that worked.\n\nOn Mon, 1 Jan 2024 at 10:00, Support <support@example.com> wrote:\n> Try again.\n> \n> Support\n",
                "Thanks, that worked.",
                3,
            ),
            (
                "Yes.\n\nOn Mon, Jan 1, 2024 at 10:00 AM Support Team <\nsupport@example.com> wrote:\n\n> Is it fixed?\n",
                "Yes.",
                3,
            ),
        ] {
            let s = split(text);
            assert_eq!((s.new.as_str(), s.quoted_lines), (new, quoted), "{text}");
        }
    }

    #[test]
    fn attributions_in_other_languages() {
        for attribution in [
            "Am Mo., 1. Jan. 2024 um 10:00 Uhr schrieb Support <support@example.com>:",
            "Le lun. 1 janv. 2024 à 10:00, Support <support@example.com> a écrit :",
            "El lun, 1 ene 2024 a las 10:00, Support (<support@example.com>) escribió:",
            "Op ma 1 jan. 2024 om 10:00 schreef Support <support@example.com>:",
            "Il giorno lun 1 gen 2024 alle ore 10:00 Support <support@example.com> ha scritto:",
            "Em seg., 1 de jan. de 2024 às 10:00, Support <support@example.com> escreveu:",
            "Den mån 1 jan. 2024 kl 10:00 skrev Support <support@example.com>:",
            "W dniu 1.01.2024 o 10:00, Support <support@example.com> napisał:",
            "在 2024年1月1日 10:00，Support <support@example.com> 写道：",
        ] {
            cuts_to(
                &format!("New words.\n\n{attribution}\n> old words\n"),
                "New words.",
            );
            // Unquoted history below an attribution with a date is history too.
            cuts_to(
                &format!("New words.\n\n{attribution}\nold words\n"),
                "New words.",
            );
        }
    }

    #[test]
    fn a_colon_line_without_wrote_is_text() {
        let text = "Steps to reproduce:\n1. open\n2. click\n";
        assert_eq!(new_of(text), text.trim());
        // "wrote:" without a date or address and without quotes below is the customer's.
        let text = "Here is what the error dialog wrote:\nDisk full\n";
        assert_eq!(new_of(text), text.trim());
    }

    #[test]
    fn outlook_original_message_separators() {
        for sep in [
            "-----Original Message-----",
            "-----Ursprüngliche Nachricht-----",
            "-----Message d'origine-----",
            "-----Mensaje original-----",
            "-----Oorspronkelijk bericht-----",
            "---------- Forwarded message ---------",
            "-------- Forwarded Message --------",
            "---------- Weitergeleitete Nachricht ----------",
            "Begin forwarded message:",
            "Début du message réexpédié :",
        ] {
            let text = format!("See below.\n\n{sep}\nFrom: someone\nhello\n");
            let s = split(&text);
            assert_eq!(s.new, "See below.", "{sep}");
            assert_eq!(s.quoted_lines, 3, "{sep}");
        }
    }

    #[test]
    fn outlook_header_blocks() {
        for block in [
            "From: Support <support@example.com>\nSent: Monday, January 1, 2024 10:00 AM\nTo: Anna <anna@example.org>\nSubject: RE: printer",
            "Von: Support <support@example.com>\nGesendet: Montag, 1. Januar 2024 10:00\nAn: Anna\nBetreff: AW: Drucker",
            "De : Support <support@example.com>\nEnvoyé : lundi 1 janvier 2024 10:00\nÀ : Anna\nObjet : RE: imprimante",
            "De: Support\nEnviado el: lunes, 1 de enero de 2024 10:00\nPara: Anna\nAsunto: RE: impresora",
            "Van: Support\nVerzonden: maandag 1 januari 2024 10:00\nAan: Anna\nOnderwerp: RE: printer",
            "**From:** Support <support@example.com>\n**Sent:** Monday\n**To:** Anna\n**Subject:** RE: printer",
        ] {
            cuts_to(
                &format!("Still broken.\n\n{block}\n\nOld text.\n"),
                "Still broken.",
            );
            let rule = "_".repeat(32);
            cuts_to(
                &format!("Still broken.\n{rule}\n{block}\n\nOld.\n"),
                "Still broken.",
            );
        }
        // One header-like line in a message is not a block.
        let text = "From: my other address, see below\nthanks\n";
        assert_eq!(new_of(text), text.trim());
    }

    #[test]
    fn reply_marker_cuts_with_an_unknown_attribution() {
        let text = format!(
            "Kiitos!\n\nma 1.1.2024 klo 10.00 Support (support@example.com) kirjoitti tähän:\n> {REPLY_MARKER}\n> Your request was received.\n"
        );
        let s = split(&text);
        assert_eq!(s.new, "Kiitos!");
        assert_eq!(s.quoted_lines, 3);
        // Outlook's HTML quote: no `>`, no recognised header, only the marker.
        let text = format!("Thanks\n\nSomething we do not know:\n\n{REPLY_MARKER}\nYour request\n");
        let s = split(&text);
        assert_eq!(s.new, "Thanks");
        assert_eq!(s.quoted_lines, 3);
    }

    #[test]
    fn reply_marker_takes_a_header_block_in_an_unknown_language_with_it() {
        let rule = "─".repeat(40);
        let text = format!(
            "감사합니다\n\n{rule}\n**보낸 사람:** Support\n**보낸 날짜:** 2024년 1월 1일\n**제목:** 프린터\n\n{REPLY_MARKER}\nHello\n"
        );
        splits_to(&text, "감사합니다", (6, 0));
        // A single `Label: value` line above the marker stays: it may be the sender's.
        let text = format!("Order: 42\n\n{REPLY_MARKER}\nHello\n");
        splits_to(&text, "Order: 42", (2, 0));
    }

    #[test]
    fn inline_answers_stay_and_edges_go() {
        let text = "> Does it print?\nNo.\n> Is it on?\nYes.\n";
        assert_eq!(new_of(text), text.trim());
        let text = "> Does it print?\n> Really?\n\nNo, it does not.\n";
        let s = split(text);
        assert_eq!(s.new, "No, it does not.");
        assert_eq!(s.quoted_lines, 2);
        let text = "No.\n\n> Does it print?\n";
        assert_eq!(new_of(text), "No.");
    }

    #[test]
    fn bottom_posting_after_an_attribution() {
        let text = "On Mon, 1 Jan 2024, Support wrote:\n> Does it print?\n\nNo, it does not.\n";
        splits_to(text, "No, it does not.", (2, 0));
    }

    #[test]
    fn signatures() {
        let s = split("It works now.\n\n-- \nAnna Example\nACME Ltd.\n");
        assert_eq!(s.new, "It works now.");
        assert_eq!(s.signature_lines, 3);
        let s = split("It works now.\n\nSent from my iPhone\n");
        assert_eq!(s.new, "It works now.");
        assert_eq!(s.signature_lines, 1);
        let s = split(
            "Ok\n\nVon meinem iPhone gesendet\n\nAm 1. Jan. 2024 um 10:00 schrieb Support <support@example.com>:\n> alt\n",
        );
        assert_eq!(s.new, "Ok");
        assert_eq!((s.signature_lines, s.quoted_lines), (1, 2));
        // "Sent from my" in the middle of the text is text.
        let text = "Sent from my desk the invoice went out.\nIt did not arrive.\n";
        assert_eq!(new_of(text), text.trim());
    }

    #[test]
    fn nothing_new_keeps_the_whole_text() {
        let text =
            "---------- Forwarded message ---------\nFrom: a\nDate: b\nSubject: c\nTo: d\n\nbody\n";
        let s = split(text);
        assert_eq!(s.new, text.trim());
        assert_eq!(s.hidden_lines(), 0);
        assert_eq!(split("").new, "");
    }

    #[test]
    fn footnotes_of_hidden_links_are_hidden() {
        let text = "See [the log][1].\n\nOn Mon, 1 Jan 2024 Support <s@example.com> wrote:\n> Try [this][2].\n\n[1]: https://example.org/log\n[2]: https://example.org/help\n";
        splits_to(
            text,
            "See [the log][1].\n\n[1]: https://example.org/log",
            (3, 0),
        );
        // Without quoted history every footnote stays.
        let text = "Hi [x][1]\n\n[1]: https://example.org\n[2]: https://example.org/2\n";
        assert_eq!(new_of(text), text.trim());
    }

    use proptest::prelude::*;

    /// Lines of the kinds the splitter looks for, and plain ones.
    fn line() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z ]{0,20}",
            Just("> quoted".to_owned()),
            Just("On Mon, 1 Jan 2024 a@b.c wrote:".to_owned()),
            Just("On Mon".to_owned()),
            Just("-----Original Message-----".to_owned()),
            Just("From: a".to_owned()),
            Just("Sent: b".to_owned()),
            Just("Subject: c".to_owned()),
            Just("-- ".to_owned()),
            Just("Sent from my iPhone".to_owned()),
            Just(REPLY_MARKER.to_owned()),
            Just("[1]: https://x".to_owned()),
            Just("see [x][1]".to_owned()),
            Just("".to_owned()),
        ]
    }

    proptest! {
        #[test]
        fn the_new_part_is_made_of_the_texts_lines(lines in prop::collection::vec(line(), 0..30)) {
            let text = lines.join("\n");
            let s = split(&text);
            for l in s.new.lines() {
                prop_assert!(text.lines().any(|t| t.trim() == l.trim()), "{l:?} is not a line of the text");
            }
            let total = text.lines().filter(|l| !strip_quote(l).is_empty()).count();
            let kept = s.new.lines().filter(|l| !strip_quote(l).is_empty()).count();
            prop_assert_eq!(kept + s.hidden_lines(), total);
            if s.hidden_lines() > 0 {
                prop_assert!(kept > 0, "something new is always left");
            }
        }
    }

    #[test]
    fn crlf_and_odd_input() {
        let s = split("Yes.\r\n\r\nOn Mon, 1 Jan 2024 Support <s@example.com> wrote:\r\n> no\r\n");
        assert_eq!(s.new, "Yes.");
        for odd in [
            ":",
            "：",
            "##-",
            "-##",
            "##--##",
            ">",
            "-- ",
            "__",
            "On\n",
            "é:\nwrote:",
        ] {
            let _ = split(odd);
        }
    }
}
