//! What a server may send for one command, watched on the raw byte stream under async-imap.
//!
//! async-imap buffers a whole response before parsing it, allocates a literal's announced
//! size at once, and keeps unsolicited responses; a hostile or broken server could make it
//! hold gigabytes, or keep a command going for ever with endless small responses. So
//! [`super::Conn`] feeds every byte it reads through a [`Watch`]: it follows the lines and
//! skips over literal bodies (`{N}` / `{N+}` at a line's end), and refuses the read, before
//! async-imap sees the bytes, once the command's [`Allowance`] is spent or a literal is
//! announced that would not fit in it. [`super::Imap`] sets the allowance before each
//! command. The watch also notices the server closing the connection, so that the error can
//! say so instead of what a later command would report ("Broken pipe").

/// How much one command's answer may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allowance {
    /// What we are doing, for the error (`fetching messages`).
    pub step: &'static str,
    /// All bytes of the answer, literals included.
    pub bytes: u64,
    /// Response lines (a line that announces a literal, the literal, and the rest of the
    /// response after it count as two).
    pub lines: u64,
    /// The largest single literal.
    pub literal: u64,
    /// The bytes the answer is expected to bring (0: not known).
    pub expect: u64,
}

impl Allowance {
    /// For small exchanges: greeting, login, capabilities, SELECT, LIST, STORE, ...
    pub const SMALL: Allowance = Allowance {
        step: "talking to the server",
        bytes: 1 << 20,
        lines: 10_000,
        literal: 64 << 10,
        expect: 0,
    };

    /// [`Allowance::SMALL`] for `step`.
    pub fn small(step: &'static str) -> Allowance {
        Allowance {
            step,
            ..Allowance::SMALL
        }
    }

    /// For an answer of about `n` short responses (UID SEARCH, sizes of `n` messages).
    pub fn responses(step: &'static str, n: u64) -> Allowance {
        Allowance {
            step,
            bytes: (1 << 20) + n.saturating_mul(256),
            lines: 10_000 + n.saturating_mul(4),
            literal: 64 << 10,
            expect: 0,
        }
    }

    /// For `n` messages of `total` bytes (by RFC822.SIZE), the largest `largest` bytes: twice
    /// the bytes (servers' sizes are not always exact: Exchange's may be off for converted
    /// mail) plus room for the rest of each response and for unsolicited ones; no literal
    /// larger than twice the largest message and a MiB.
    pub fn messages(step: &'static str, n: u64, total: u64, largest: u64) -> Allowance {
        let literal = largest.saturating_mul(2).saturating_add(1 << 20);
        Allowance {
            step,
            bytes: total
                .saturating_mul(2)
                .saturating_add(n.saturating_mul(1024))
                .saturating_add(2 << 20)
                .max(literal),
            lines: 10_000 + n.saturating_mul(4),
            literal,
            expect: total,
        }
    }
}

/// The running count for the command in progress.
#[derive(Debug)]
pub struct Watch {
    allow: Allowance,
    bytes: u64,
    lines: u64,
    /// Bytes of the current literal still to come.
    literal_left: u64,
    /// The end of the line being read: enough to spot `{N}` or `{N+}`.
    tail: Vec<u8>,
    closed: bool,
    refused: Option<String>,
}

/// The most of a line's end that [`Watch`] keeps (`{` + 20 digits + `+}` + CR fits).
const TAIL: usize = 32;

impl Default for Watch {
    fn default() -> Self {
        Watch {
            allow: Allowance::SMALL,
            bytes: 0,
            lines: 0,
            literal_left: 0,
            tail: Vec::with_capacity(TAIL),
            closed: false,
            refused: None,
        }
    }
}

impl Watch {
    /// Starts counting for a new command. Where the previous answer stood (in a literal,
    /// mid-line) is kept: the stream goes on.
    pub fn begin(&mut self, allow: Allowance) {
        self.allow = allow;
        self.bytes = 0;
        self.lines = 0;
    }

    /// The server closed the connection (a read returned no bytes).
    pub fn eof(&mut self) {
        self.closed = true;
    }

    /// How many of the bytes the answer is expected to bring have not come yet.
    pub fn expected_left(&self) -> u64 {
        self.allow.expect.saturating_sub(self.bytes)
    }

    /// Whether the server closed the connection.
    pub fn closed(&self) -> bool {
        self.closed
    }

    /// Refuses whatever comes next: the command in progress failed with part of its answer
    /// possibly unread, so nothing after it could be trusted.
    pub fn abandon(&mut self) {
        self.refused.get_or_insert_with(|| {
            "an earlier command failed in the middle of its answer; this connection is not used \
             again"
                .to_owned()
        });
    }

    /// Why the stream was refused, if it was.
    pub fn refused(&self) -> Option<&str> {
        self.refused.as_deref()
    }

    /// Accounts for `data`, just read. An error refuses it (and everything after it).
    pub fn see(&mut self, data: &[u8]) -> Result<(), String> {
        if let Some(why) = &self.refused {
            return Err(why.clone());
        }
        let r = self.count(data);
        if let Err(why) = &r {
            self.refused = Some(why.clone());
        }
        r
    }

    fn count(&mut self, mut data: &[u8]) -> Result<(), String> {
        let step = self.allow.step;
        self.bytes = self.bytes.saturating_add(data.len() as u64);
        if self.bytes > self.allow.bytes {
            return Err(format!(
                "the server sent more than {} bytes while {step}; giving up on this connection",
                self.allow.bytes
            ));
        }
        while !data.is_empty() {
            if self.literal_left > 0 {
                let n = usize::try_from(self.literal_left)
                    .unwrap_or(usize::MAX)
                    .min(data.len());
                self.literal_left -= n as u64;
                data = data.get(n..).unwrap_or_default();
                continue;
            }
            let Some(nl) = data.iter().position(|&b| b == b'\n') else {
                self.keep_tail(data);
                break;
            };
            self.keep_tail(data.get(..nl).unwrap_or_default());
            data = data.get(nl + 1..).unwrap_or_default();
            self.lines += 1;
            if self.lines > self.allow.lines {
                return Err(format!(
                    "the server sent more than {} response lines while {step}; giving up on \
                     this connection",
                    self.allow.lines
                ));
            }
            if let Some(n) = literal_at_end(&self.tail) {
                let room = self.allow.bytes - self.bytes;
                if n > self.allow.literal || n > room {
                    return Err(format!(
                        "the server announced a {n}-byte literal while {step}, more than the {} \
                         bytes expected; refused without reading it",
                        self.allow.literal.min(room)
                    ));
                }
                self.literal_left = n;
            }
            self.tail.clear();
        }
        Ok(())
    }

    fn keep_tail(&mut self, part: &[u8]) {
        self.tail.extend_from_slice(part);
        if self.tail.len() > TAIL {
            let cut = self.tail.len() - TAIL;
            self.tail.drain(..cut);
        }
    }
}

/// The size of the literal that a line ending in `{N}` or `{N+}` (before its CRLF)
/// announces. A number too large for u64 counts as u64::MAX.
fn literal_at_end(line: &[u8]) -> Option<u64> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let inner = line.strip_suffix(b"}")?;
    let open = inner.iter().rposition(|&b| b == b'{')?;
    let digits = inner.get(open + 1..)?;
    let digits = digits.strip_suffix(b"+").unwrap_or(digits);
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(
        std::str::from_utf8(digits)
            .ok()
            .and_then(|d| d.parse().ok())
            .unwrap_or(u64::MAX),
    )
}

/// At most `max` characters of what a server said, as text: invalid UTF-8 replaced, control
/// characters escaped, never a byte array or a whole buffer.
pub fn excerpt(raw: &[u8], max: usize) -> String {
    let text = String::from_utf8_lossy(raw.get(..max.saturating_mul(4)).unwrap_or(raw));
    let mut out = String::new();
    for (i, c) in text.chars().enumerate() {
        if i >= max {
            out.push_str(" [...]");
            break;
        }
        match c {
            '\r' => out.push_str("\\r"),
            '\n' => out.push_str("\\n"),
            c if c.is_control() => out.push_str(&c.escape_default().to_string()),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn watch(allow: Allowance) -> Watch {
        let mut w = Watch::default();
        w.begin(allow);
        w
    }

    #[test]
    fn literals_are_skipped_and_lines_counted() {
        let mut w = watch(Allowance::messages("fetching messages", 1, 10, 10));
        w.see(b"* 1 FETCH (UID 1 BODY[] {10}\r\n0123\n").unwrap();
        w.see(b"\n\n\n56)\r\na1 OK done\r\n").unwrap();
        assert_eq!(w.lines, 3);
        assert_eq!(w.literal_left, 0);
    }

    #[test]
    fn a_literal_larger_than_allowed_is_refused_at_its_announcement() {
        let mut w = watch(Allowance::messages("fetching messages", 1, 1000, 1000));
        let e = w
            .see(b"* 1 FETCH (UID 1 BODY[] {536870000}\r\n")
            .unwrap_err();
        assert!(
            e.contains("536870000-byte literal while fetching messages"),
            "{e}"
        );
        assert!(w.see(b"x").is_err(), "refused for good");
        let mut w = watch(Allowance::SMALL);
        let e = w.see(b"* LIST () \"/\" {40000000+}\r\n").unwrap_err();
        assert!(e.contains("40000000"), "{e}");
        let mut w = watch(Allowance::SMALL);
        assert!(w.see(b"* X {99999999999999999999999}\r\n").is_err());
    }

    #[test]
    fn a_literal_announcement_split_across_reads_is_seen() {
        let mut w = watch(Allowance::small("listing folders"));
        w.see(b"* LIST () \"/\" {4000").unwrap();
        assert!(w.see(b"0000}\r").is_ok());
        assert!(w.see(b"\n").is_err());
    }

    #[test]
    fn lines_and_bytes_are_bounded() {
        let mut w = watch(Allowance::responses("fetching sizes", 1));
        let line = b"* 1 FETCH (FLAGS (\\Seen))\r\n";
        let n = (0..20_000).take_while(|_| w.see(line).is_ok()).count();
        assert_eq!(n, 10_004);
        let mut w = watch(Allowance::small("selecting the folder"));
        let big = vec![b'x'; 600 << 10];
        assert!(w.see(&big).is_ok());
        let e = w.see(&big).unwrap_err();
        assert!(e.contains("while selecting the folder"), "{e}");
    }

    #[test]
    fn braces_inside_a_line_are_not_literals() {
        assert_eq!(literal_at_end(b"* OK {5} here"), None);
        assert_eq!(literal_at_end(b"* OK {}"), None);
        assert_eq!(literal_at_end(b"BODY[] {12}\r"), Some(12));
        assert_eq!(literal_at_end(b"x {7+}"), Some(7));
    }

    #[test]
    fn excerpts_are_short_lossy_text() {
        let e = excerpt(b"* 1 FETCH (UID \xff\xfe not imap\r\n", 100);
        assert_eq!(e, "* 1 FETCH (UID \u{fffd}\u{fffd} not imap\\r\\n");
        let long = vec![b'a'; 10_000];
        assert_eq!(excerpt(&long, 300).len(), 300 + " [...]".len());
    }

    #[test]
    fn what_is_left_of_a_fetch_counts_down_as_it_comes() {
        let mut w = watch(Allowance::messages("fetching messages", 2, 100, 60));
        assert_eq!(w.expected_left(), 100);
        w.see(b"* 1 FETCH (UID 1 BODY[] {60}\r\n").unwrap();
        assert_eq!(w.expected_left(), 100 - 30);
        w.see(&[b'x'; 60]).unwrap();
        assert_eq!(w.expected_left(), 10);
        w.see(b")\r\n* 2 FETCH (UID 2 BODY[] {40}\r\n").unwrap();
        assert_eq!(w.expected_left(), 0, "never below nothing");
        // Nothing is expected of the small exchanges: they are never paced.
        assert_eq!(watch(Allowance::small("selecting")).expected_left(), 0);
    }
}
