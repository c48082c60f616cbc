//! Attachment bodies set aside before the MIME parse.
//!
//! mail-parser decodes every part it parses, and most of the bytes of real mail are base64
//! attachments of which mailticket keeps only a size and a digest (the raw message keeps the
//! content). [`of_slice`] and [`of_reader`] copy a message line by line, putting in place of
//! each clean body of a non-text part, or of a text part sent as an attachment (a log, a CSV
//! file) in UTF-8 or a charset of one byte a character, or of a text inside an attached
//! message (which nothing reads), a one-line marker, and decode and hash that body on the way,
//! in bounded memory: in base64, in quoted-printable, or in no transfer encoding. The parse
//! then runs on the copy, the skeleton, and `message` takes each attachment's size and digest
//! from [`Skeleton::set_aside`]. The message's own texts in quoted-printable are decoded on
//! the way too and left out ([`Skeleton::qp`]): `message` puts each one into the part the
//! parse found empty in its place.
//!
//! The walk copies what it does not understand as it is: a base64 body with anything but the
//! alphabet, spaces, tabs and line ends (padding in the middle, a non-canonical end), another
//! body the parse could end or decode otherwise (see `Walk::decode_plain`), a text
//! attachment in a charset of several bytes a character or that is not what it says, a part
//! nested too deep, a header block it cannot read. `message` checks that the parse of the skeleton
//! found every marker exactly once, as an attachment, and parses the original bytes instead
//! otherwise; so a skeleton changes how fast a message parses, never what the parse says.

use std::io::{self, BufRead, Seek, SeekFrom};

use base64::Engine as _;
use mail_parser::MimeHeaders;
use memchr::memmem;

/// The longest piece of a line handed on at once; a longer line comes in several pieces.
const PIECE: usize = 64 * 1024;

/// Multipart nesting the walk follows; deeper parts are copied as they are.
const MAX_DEPTH: usize = 16;

/// The most header bytes of one part the walk reads to learn its type; a longer header
/// block is copied and its body with it.
const MAX_HEAD: usize = 256 * 1024;

/// Base64 characters decoded at a time.
const CHUNK: usize = 16 * 1024;

/// The most bytes of one text part (the message's own text, not an attachment) that the walk
/// copies, a piece at a time; the rest of the part is left out, a line saying so in its place
/// (the raw message keeps it all). The parse then holds about this much whatever the text's
/// size.
pub const TEXT_CUT: usize = 1 << 20;

/// The most bytes of all the text parts of a message together.
const TEXT_TOTAL: usize = 4 << 20;

/// How the line in place of a text's rest starts.
pub const CUT_NOTE: &str = "[mailticket: ";

/// What a marker decodes to: this prefix, then the skeleton's nonce and the part's index in
/// hexadecimal: ASCII, so that it reads the same as the text of a text attachment.
const MARKER_PREFIX: &[u8; 12] = b"\0mailticket\0";

/// A message with its large attachment bodies set aside.
pub struct Skeleton {
    /// The message as the parse sees it.
    pub bytes: Vec<u8>,
    /// The decoded size and SHA-256 of each body set aside, by marker index.
    pub set_aside: Vec<SetAside>,
    /// Whether every byte of the original is ASCII whitespace.
    pub blank: bool,
    /// The bytes of text parts left out (see [`TEXT_CUT`]).
    pub cut: u64,
    /// The bodies set aside that the store can keep decoded ([`of_slice`] only).
    pub kept: Kept,
    /// The quoted-printable texts the walk decoded, each one's body left out of the
    /// skeleton.
    pub qp: Vec<QpText>,
    nonce: [u8; 8],
}

/// A quoted-printable text decoded by the walk, its body left out of the skeleton: the parse
/// of the skeleton must find an empty text part whose header block starts at `head` and
/// whose body at `body` (positions in the skeleton's bytes), in a multipart with this
/// `boundary` (`None`: the message's own body), and then takes `text` as that part's text.
/// The walk made sure that the parse of the message would decode the body to `text`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QpText {
    /// Where the part's header block starts.
    pub head: usize,
    /// Where its (empty) body is.
    pub body: usize,
    /// The boundary of the multipart it is in.
    pub boundary: Option<Vec<u8>>,
    /// The text as the parse's decoder gives it, before any charset is applied.
    pub text: Vec<u8>,
}

/// Base64 bodies of a message, decoded, with where they were in its bytes and how their lines
/// were laid out: enough to write each back byte for byte (see `store::codec`).
#[derive(Debug, Default)]
pub struct Kept {
    /// Where each body was, in order.
    pub regions: Vec<Region>,
    /// The decoded bodies, one after another.
    pub bytes: Vec<u8>,
}

/// A regular base64 body in a message's bytes: lines of `width` characters (the last one
/// `1..=width`) each ended by the same line end, the padding and last quantum canonical.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    /// Where its first line starts.
    pub start: usize,
    /// Its length in the message, line ends included.
    pub len: usize,
    /// Its length decoded.
    pub decoded: usize,
    /// Characters per line.
    pub width: usize,
    /// Whether its lines end with CR LF (else LF).
    pub crlf: bool,
}

/// One body that the skeleton holds a marker for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SetAside {
    /// Decoded size in bytes.
    pub size: usize,
    /// SHA-256 of the decoded content.
    pub sha256: [u8; 32],
    /// What it is: an attachment body, a body inside an attached message, or an attached
    /// message whose bodies inside were set aside.
    pub kind: Aside,
}

/// What a [`SetAside`] stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aside {
    /// An attachment's body: a marker in its place is its content.
    Body,
    /// A body inside an attached message: nothing reads it (the attached message is an
    /// attachment as a whole).
    Inner,
    /// An attached message (`message/rfc822`) whose bodies inside were set aside: the size
    /// and digest are of its bytes as received, and its content in the skeleton is exactly
    /// the skeleton's bytes in this range.
    Message(usize, usize),
}

impl Skeleton {
    /// The index of the body `decoded` stands for, when it is one of this skeleton's markers.
    pub fn marker_index(&self, decoded: &[u8]) -> Option<usize> {
        let rest = decoded.strip_prefix(MARKER_PREFIX.as_slice())?;
        let rest = rest.strip_prefix(crate::message::hex(&self.nonce).as_bytes())?;
        if rest.len() != 8 || !rest.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return None;
        }
        let i = usize::from_str_radix(std::str::from_utf8(rest).ok()?, 16).ok()?;
        (i < self.set_aside.len()).then_some(i)
    }

    /// What the marker of body `index` decodes to.
    fn marker_bytes(&self, index: usize) -> Vec<u8> {
        let mut m = MARKER_PREFIX.to_vec();
        m.extend_from_slice(crate::message::hex(&self.nonce).as_bytes());
        m.extend_from_slice(format!("{:08x}", u32::try_from(index).unwrap_or(u32::MAX)).as_bytes());
        m
    }

    /// The marker line of body `index` (without its line end), in the body's transfer
    /// encoding, and for a text in UTF-16 in its byte order: the parse shows the marker.
    fn marker(&self, index: usize, encoding: Encoding, text: Option<Text>) -> Vec<u8> {
        let mut m = self.marker_bytes(index);
        if let Some(Text::Utf16(order)) = text {
            // ASCII: one unit a byte (without a byte order mark, UTF-16 is little-endian).
            m = m
                .into_iter()
                .flat_map(|b| match order {
                    Order::Be => [0, b],
                    Order::Le | Order::Mark => [b, 0],
                })
                .collect();
        }
        match encoding {
            Encoding::Base64 => base64::engine::general_purpose::STANDARD
                .encode(m)
                .into_bytes(),
            Encoding::Identity => m,
            // The marker is NUL, ASCII letters and hexadecimal digits: only NUL is escaped.
            Encoding::QuotedPrintable => m.iter().fold(Vec::new(), |mut out, &b| {
                if b == 0 {
                    out.extend_from_slice(b"=00");
                } else {
                    out.push(b);
                }
                out
            }),
        }
    }
}

/// The skeleton of the message `raw`.
///
/// The bodies set aside whose lines are regular are also kept decoded, in
/// [`Skeleton::kept`].
pub fn of_slice(raw: &[u8]) -> Skeleton {
    let mut walk = Walk::new(SliceLines { data: raw, at: 0 }, raw.len() / 8);
    walk.keep = true;
    // Reading a slice cannot fail.
    walk.run().unwrap_or_else(|_| Skeleton {
        bytes: raw.to_vec(),
        set_aside: Vec::new(),
        blank: raw.iter().all(u8::is_ascii_whitespace),
        cut: 0,
        kept: Kept::default(),
        qp: Vec::new(),
        nonce: [0; 8],
    })
}

/// The skeleton of the message `r` holds from its current position to its end, read in
/// pieces; memory is the skeleton plus a few buffers, whatever the attachments' sizes.
pub fn of_reader<R: BufRead + Seek>(mut r: R) -> io::Result<Skeleton> {
    let at = r.stream_position()?;
    Walk::new(
        ReaderLines {
            r,
            buf: Vec::new(),
            at,
        },
        64 * 1024,
    )
    .run()
}

/// Lines of a message, in pieces of at most [`PIECE`] bytes.
trait Lines {
    /// The next piece, with its line end when it ends a line; `None` at the end.
    fn next_piece(&mut self) -> io::Result<Option<&[u8]>>;
    /// Where the next piece starts.
    fn position(&self) -> u64;
    /// Goes back to `at`, a position given by [`Lines::position`].
    fn rewind(&mut self, at: u64) -> io::Result<()>;
    /// Some of the bytes from the next piece on, without moving: what is at hand.
    fn ahead(&mut self) -> io::Result<&[u8]>;
    /// Moves past `n` bytes of [`Lines::ahead`].
    fn skip(&mut self, n: usize);
    /// How many bytes are left, when known without reading them (a message in memory).
    fn left(&self) -> usize {
        0
    }
}

struct SliceLines<'a> {
    data: &'a [u8],
    at: usize,
}

impl Lines for SliceLines<'_> {
    fn next_piece(&mut self) -> io::Result<Option<&[u8]>> {
        let rest = self.data.get(self.at..).unwrap_or_default();
        if rest.is_empty() {
            return Ok(None);
        }
        let window = rest.get(..PIECE).unwrap_or(rest);
        let len = memchr::memchr(b'\n', window).map_or(window.len(), |i| i + 1);
        self.at += len;
        Ok(rest.get(..len))
    }

    fn position(&self) -> u64 {
        self.at as u64
    }

    fn rewind(&mut self, at: u64) -> io::Result<()> {
        self.at = usize::try_from(at).unwrap_or(usize::MAX);
        Ok(())
    }

    fn ahead(&mut self) -> io::Result<&[u8]> {
        let rest = self.data.get(self.at..).unwrap_or_default();
        Ok(rest.get(..PIECE).unwrap_or(rest))
    }

    fn skip(&mut self, n: usize) {
        self.at += n;
    }

    fn left(&self) -> usize {
        self.data.len().saturating_sub(self.at)
    }
}

struct ReaderLines<R> {
    r: R,
    buf: Vec<u8>,
    at: u64,
}

impl<R: BufRead + Seek> Lines for ReaderLines<R> {
    fn next_piece(&mut self) -> io::Result<Option<&[u8]>> {
        self.buf.clear();
        while self.buf.len() < PIECE {
            let avail = self.r.fill_buf()?;
            if avail.is_empty() {
                break;
            }
            let room = PIECE - self.buf.len();
            let window = avail.get(..room).unwrap_or(avail);
            let (take, done) = match memchr::memchr(b'\n', window) {
                Some(i) => (i + 1, true),
                None => (window.len(), false),
            };
            self.buf
                .extend_from_slice(window.get(..take).unwrap_or_default());
            self.r.consume(take);
            if done {
                break;
            }
        }
        self.at += self.buf.len() as u64;
        Ok((!self.buf.is_empty()).then_some(self.buf.as_slice()))
    }

    fn position(&self) -> u64 {
        self.at
    }

    fn rewind(&mut self, at: u64) -> io::Result<()> {
        self.r.seek(SeekFrom::Start(at))?;
        self.at = at;
        Ok(())
    }

    fn ahead(&mut self) -> io::Result<&[u8]> {
        self.r.fill_buf()
    }

    fn skip(&mut self, n: usize) {
        self.r.consume(n);
        self.at += n as u64;
    }
}

/// How an entity's body ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// At the end of the message.
    Eof,
    /// At a delimiter line of the open multipart `level` (copied already).
    Delimiter { level: usize, closing: bool },
}

/// A body's transfer encoding, as the parse reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Base64,
    QuotedPrintable,
    /// None (`7bit`, `8bit`, `binary`, or anything else the parse does not decode).
    Identity,
}

/// What a part's header block says about its body.
enum Body {
    Multipart(Vec<u8>),
    /// Set aside when clean: any base64 body, or only text in this encoding.
    Base64(Option<Text>),
    /// An attachment's body in quoted-printable or in no transfer encoding: set aside when
    /// the walk reads it as the parse does ([`Walk::set_aside_plain`]); only text in this
    /// encoding, for a text attachment.
    Plain(Encoding, Option<Text>),
    /// The message's own text (cut when long, see [`TEXT_CUT`]); whether in base64.
    Text(bool),
    /// The message's own text in quoted-printable: decoded by the walk when it can
    /// ([`Walk::qp_text`]).
    QuotedPrintable,
    /// An attached message, not transfer-encoded.
    Message,
    Other,
}

/// How the parse shows a text attachment: it converts the text from its charset, and the
/// attachment's size and digest are those of what it shows.
#[derive(Debug, Clone, Copy)]
enum Text {
    /// Read as UTF-8, each sequence that is not one a replacement character, as
    /// `String::from_utf8_lossy` reads it: without a charset, in UTF-8, in a charset the
    /// parse does not know, or in one it reads so without its optional tables (Shift_JIS,
    /// GBK, Big5, ...). Converted a piece at a time, a sequence a piece cuts carried on.
    Utf8,
    /// A charset of one byte a character, converted by the parse's own converter, which then
    /// gives the same text a piece at a time as whole (see [`byte_by_byte`]).
    Charset(mail_parser::decoders::charsets::DecoderFnc),
    /// UTF-16 (Windows' "Unicode" exports), read as the parse's own converter reads it (see
    /// [`utf16_of`]): in units of two bytes in this order, each unit that is no part of a
    /// surrogate pair a replacement character, an odd last byte dropped.
    Utf16(Order),
}

/// The byte order of a UTF-16 text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Order {
    Le,
    Be,
    /// By its byte order mark, which is dropped; little-endian without one.
    Mark,
}

/// How the parse reads a text in `charset` (the Content-Type's parameter as it is): `None`
/// when the walk cannot convert it a piece at a time as the parse converts it whole (UTF-7,
/// ...).
fn text_in(charset: Option<&str>) -> Option<Text> {
    // What the parse itself looks up.
    let f =
        charset.and_then(|c| mail_parser::decoders::charsets::map::charset_decoder(c.as_bytes()));
    let Some(f) = f else {
        return Some(Text::Utf8);
    };
    // Each converter is tried once a process (a few hundred microseconds), by its address.
    static TRIED: std::sync::Mutex<Vec<(usize, Option<Text>)>> = std::sync::Mutex::new(Vec::new());
    let mut tried = TRIED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(&(_, known)) = tried.iter().find(|t| t.0 == f as usize) {
        return known;
    }
    let known = if byte_by_byte(f) {
        Some(Text::Charset(f))
    } else if reads_as_utf8(f) {
        Some(Text::Utf8)
    } else {
        utf16_of(f).map(Text::Utf16)
    };
    tried.push((f as usize, known));
    known
}

/// The source with what the walk needs to know of what it has read.
struct Reader<L> {
    src: L,
    /// Whether the next piece starts a line.
    line_start: bool,
    /// Whether every byte so far is ASCII whitespace.
    blank: bool,
}

impl<L: Lines> Reader<L> {
    /// The next piece and whether it starts a line.
    fn next(&mut self) -> io::Result<Option<(&[u8], bool)>> {
        let starts = self.line_start;
        let Some(piece) = self.src.next_piece()? else {
            return Ok(None);
        };
        self.line_start = piece.last() == Some(&b'\n');
        if self.blank && !piece.iter().all(u8::is_ascii_whitespace) {
            self.blank = false;
        }
        Ok(Some((piece, starts)))
    }

    /// Goes back to `at`, the start of a line.
    fn rewind(&mut self, at: u64) -> io::Result<()> {
        self.line_start = true;
        self.src.rewind(at)
    }
}

struct Walk<L> {
    r: Reader<L>,
    skeleton: Skeleton,
    /// Boundaries of the open multiparts, outermost first.
    bounds: Vec<Vec<u8>>,
    /// Keep the decoded bodies ([`Skeleton::kept`]).
    keep: bool,
    /// What text parts may still copy ([`TEXT_TOTAL`]).
    text_left: usize,
    /// How many attached messages the walk is inside.
    inside: usize,
    /// Where the message starts in the source.
    origin: u64,
    /// Which `--` a body inside an attached message may not hold, once one needed it
    /// ([`Walk::take_dashes`]).
    dashes: Option<Dashes>,
    /// Where the last delimiter copied was: in the source and in the skeleton.
    last_delimiter: (u64, usize),
    /// Take a base64 body's regular lines in runs ([`Decoder::push_run`]); tests compare
    /// with line by line.
    runs: bool,
}

impl<L: Lines> Walk<L> {
    fn new(src: L, capacity: usize) -> Walk<L> {
        let origin = src.position();
        Walk {
            r: Reader {
                src,
                line_start: true,
                blank: true,
            },
            skeleton: Skeleton {
                bytes: Vec::with_capacity(capacity),
                set_aside: Vec::new(),
                blank: true,
                cut: 0,
                kept: Kept::default(),
                qp: Vec::new(),
                nonce: fastrand::u64(..).to_le_bytes(),
            },
            bounds: Vec::new(),
            keep: false,
            text_left: TEXT_TOTAL,
            inside: 0,
            origin,
            dashes: None,
            last_delimiter: (0, 0),
            runs: true,
        }
    }

    fn run(mut self) -> io::Result<Skeleton> {
        self.entity(0)?;
        // Whatever a top-level multipart leaves (nothing, normally) is copied.
        self.copy_body()?;
        self.skeleton.blank = self.r.blank;
        Ok(self.skeleton)
    }

    /// The delimiter `piece` is, when it starts a line with `--` and an open boundary.
    fn delimiter(bounds: &[Vec<u8>], piece: &[u8]) -> Option<End> {
        let rest = piece.strip_prefix(b"--")?;
        bounds.iter().enumerate().rev().find_map(|(level, b)| {
            let after = rest.strip_prefix(b.as_slice())?;
            Some(End::Delimiter {
                level,
                closing: after.starts_with(b"--"),
            })
        })
    }

    /// One entity: its header block, then its body by what the header says.
    fn entity(&mut self, depth: usize) -> io::Result<End> {
        let mut head = Vec::new();
        let mut readable = true;
        let mut top_preamble = depth == 0;
        let eol: &'static [u8] = loop {
            let bounds = &self.bounds;
            let at = self.r.src.position();
            let Some((piece, starts)) = self.r.next()? else {
                return Ok(End::Eof);
            };
            if starts && let Some(end) = Self::delimiter(bounds, piece) {
                self.last_delimiter = (at, self.skeleton.bytes.len());
                self.skeleton.bytes.extend_from_slice(piece);
                return Ok(end);
            }
            self.skeleton.bytes.extend_from_slice(piece);
            // Before the first header: a byte order mark and blank lines (see
            // `message::skip_preamble`; the parse skips them again).
            if top_preamble && starts && piece.ends_with(b"\n") && is_blank(strip_boms(piece)) {
                continue;
            }
            top_preamble = false;
            if starts && (piece == b"\r\n" || piece == b"\n") {
                // The parser reads a header block up to and with its blank line.
                head.extend_from_slice(piece);
                break if piece.len() == 2 { b"\r\n" } else { b"\n" };
            }
            if head.len() + piece.len() <= MAX_HEAD {
                head.extend_from_slice(piece);
            } else {
                readable = false;
            }
        };
        let body = if readable {
            body_of(&head)
        } else {
            Body::Other
        };
        match body {
            Body::Multipart(boundary) if depth < MAX_DEPTH => self.multipart(boundary, depth),
            Body::Base64(text) => self.set_aside(eol, text),
            Body::Plain(encoding, text) => self.set_aside_plain(eol, encoding, text),
            Body::Text(base64) => self.copy_text(eol, base64),
            Body::QuotedPrintable => {
                let head_at = self.skeleton.bytes.len() - head.len();
                self.qp_text(eol, head_at)
            }
            Body::Message if depth < MAX_DEPTH => self.attached(depth),
            _ => self.copy_body(),
        }
    }

    /// A multipart's preamble, parts and epilogue.
    fn multipart(&mut self, boundary: Vec<u8>, depth: usize) -> io::Result<End> {
        let level = self.bounds.len();
        self.bounds.push(boundary);
        let mut end = self.copy_body()?;
        let out = loop {
            match end {
                End::Delimiter { level: l, closing } if l == level => {
                    if closing {
                        self.bounds.truncate(level);
                        break self.copy_body()?;
                    }
                    end = self.entity(depth + 1)?;
                }
                other => break other,
            }
        };
        self.bounds.truncate(level);
        Ok(out)
    }

    /// Copies a body up to a delimiter of an open multipart (copied too) or the end.
    fn copy_body(&mut self) -> io::Result<End> {
        loop {
            let bounds = &self.bounds;
            let at = self.r.src.position();
            let Some((piece, starts)) = self.r.next()? else {
                return Ok(End::Eof);
            };
            let sk_at = self.skeleton.bytes.len();
            self.skeleton.bytes.extend_from_slice(piece);
            if starts && let Some(end) = Self::delimiter(bounds, piece) {
                self.last_delimiter = (at, sk_at);
                return Ok(end);
            }
        }
    }

    /// A text body as [`Walk::copy_body`] copies it, up to [`TEXT_CUT`] bytes (and what is
    /// left of [`TEXT_TOTAL`]), whole pieces at a time; the rest is left out, a line in its
    /// place saying how many bytes (in base64 when the text is: its last quantum padded so
    /// the note decodes).
    fn copy_text(&mut self, eol: &[u8], base64: bool) -> io::Result<End> {
        if self.inside > 0 {
            // Nothing reads the text of an attached message: set aside as any body inside
            // one is, when it can be (a long text pasted into a forwarded message).
            return if base64 {
                self.set_aside(eol, None)
            } else {
                self.set_aside_plain(eol, Encoding::Identity, None)
            };
        }
        let budget = TEXT_CUT.min(self.text_left);
        let (mut copied, mut chars, mut left_out) = (0usize, 0usize, 0u64);
        let mut line_ended = true;
        let end = loop {
            let bounds = &self.bounds;
            let at = self.r.src.position();
            let Some((piece, starts)) = self.r.next()? else {
                break None;
            };
            if starts && let Some(end) = Self::delimiter(bounds, piece) {
                break Some((end, at, piece.to_vec()));
            }
            if copied < budget {
                copied += piece.len();
                if base64 {
                    chars += piece.iter().filter(|b| !b.is_ascii_whitespace()).count();
                }
                line_ended = piece.ends_with(b"\n");
                self.skeleton.bytes.extend_from_slice(piece);
            } else {
                left_out += piece.len() as u64;
            }
        };
        self.text_left = self.text_left.saturating_sub(copied);
        if left_out > 0 {
            self.skeleton.cut += left_out;
            let bytes = &mut self.skeleton.bytes;
            if !line_ended {
                bytes.extend_from_slice(eol);
            }
            let note = format!(
                "{CUT_NOTE}{left_out} more bytes of this part are left out here; \
                 `mailticket show --raw` prints the whole message]"
            );
            if base64 {
                bytes.extend(std::iter::repeat_n(b'=', (4 - chars % 4) % 4));
                bytes.extend_from_slice(eol);
                let mut line = eol.to_vec();
                line.extend_from_slice(note.as_bytes());
                line.extend_from_slice(eol);
                let encoded = base64::engine::general_purpose::STANDARD.encode(line);
                bytes.extend_from_slice(encoded.as_bytes());
            } else {
                bytes.extend_from_slice(note.as_bytes());
            }
            bytes.extend_from_slice(eol);
        }
        Ok(match end {
            Some((end, at, delimiter)) => {
                self.last_delimiter = (at, self.skeleton.bytes.len());
                self.skeleton.bytes.extend_from_slice(&delimiter);
                end
            }
            None => End::Eof,
        })
    }

    /// A quoted-printable text of the message, decoded as the parse decodes it and left out
    /// of the skeleton (see [`QpText`]): the parse then reads an empty body there, instead
    /// of decoding the text a byte at a time and scanning it for its delimiter. Only what
    /// the parse's decoder reads without a doubt is decoded here: each `=` followed by two
    /// hexadecimal digits or ending its line, one line end throughout and no other CR, no
    /// delimiter inside a line, the part ended by a delimiter of the innermost multipart
    /// (or, in none, by the end of the message), and short enough not to be cut. Anything
    /// else is copied as [`Walk::copy_text`] copies it.
    fn qp_text(&mut self, eol: &[u8], head_at: usize) -> io::Result<End> {
        if self.inside > 0 {
            return self.set_aside_plain(eol, Encoding::QuotedPrintable, None);
        }
        let start = self.r.src.position();
        let body = self.skeleton.bytes.len();
        let Some((end, text)) = self.decode_qp()? else {
            self.r.rewind(start)?;
            return self.copy_text(eol, false);
        };
        self.skeleton.qp.push(QpText {
            head: head_at,
            body,
            boundary: self.bounds.last().cloned(),
            text,
        });
        Ok(end)
    }

    /// Decodes the quoted-printable body ahead, leaving it out of the skeleton but for the
    /// line end before the delimiter that ends it, copied with the delimiter: how the body
    /// ended and its text; `None` when it is not one [`Walk::qp_text`] decodes (the skeleton
    /// is then as it was).
    fn decode_qp(&mut self) -> io::Result<Option<(End, Vec<u8>)>> {
        let budget = TEXT_CUT.min(self.text_left);
        let delimiter = self.bounds.last().map(|b| [b"--".as_slice(), b].concat());
        let inner = delimiter.as_deref().map(memchr::memmem::Finder::new);
        let (mut read, mut text) = (0usize, Vec::new());
        let mut lines = QpLines::default();
        let ended = loop {
            let at = self.r.src.position();
            let Some((piece, starts)) = self.r.next()? else {
                break None;
            };
            if starts && let Some(end) = Self::delimiter(&self.bounds, piece) {
                break Some((end, at, piece.to_vec()));
            }
            read += piece.len();
            if read > budget || lines.take(piece, inner.as_ref(), &mut text).is_none() {
                return Ok(None);
            }
        };
        let QpLines {
            line_end,
            hard,
            lines,
            ..
        } = lines;
        let end = match ended {
            // The parse drops the line end before the delimiter; its decoder drops more
            // after a soft break there, so such a text is left to it.
            Some((end @ End::Delimiter { level, .. }, at, delimiter))
                if level + 1 == self.bounds.len() && lines > 0 && hard =>
            {
                let bytes = &mut self.skeleton.bytes;
                bytes.extend_from_slice(line_end.unwrap_or(b"\n"));
                self.last_delimiter = (at, bytes.len());
                bytes.extend_from_slice(&delimiter);
                end
            }
            None if self.bounds.is_empty() && lines > 0 => {
                // Here the parse keeps the last line end.
                if hard && let Some(e) = line_end {
                    text.extend_from_slice(e);
                }
                End::Eof
            }
            _ => return Ok(None),
        };
        self.text_left = self.text_left.saturating_sub(read);
        Ok(Some((end, text)))
    }

    /// An attached message (`message/rfc822`), walked like the message itself: its base64
    /// bodies set aside (base64 holds no `-`, so no delimiter changes), everything else
    /// copied. When any body inside was set aside, the attached message becomes one entry
    /// ([`Aside::Message`]) with the size and digest of its bytes as received, up to the line
    /// end before the delimiter that ends its part, read again for that; `message` checks
    /// that the parse took exactly the skeleton's bytes in its range. Ended by the end of the
    /// message instead, it is copied as it is.
    fn attached(&mut self, depth: usize) -> io::Result<End> {
        let (start, sk_start) = (self.r.src.position(), self.skeleton.bytes.len());
        let first = self.skeleton.set_aside.len();
        self.inside += 1;
        let end = self.entity(depth + 1);
        self.inside -= 1;
        let end = end?;
        if self.skeleton.set_aside.len() == first {
            return Ok(end);
        }
        let End::Delimiter { .. } = end else {
            self.skeleton.set_aside.truncate(first);
            self.skeleton.bytes.truncate(sk_start);
            self.r.rewind(start)?;
            return self.copy_body();
        };
        let (delimiter_at, sk_delimiter) = self.last_delimiter;
        // The line end before the delimiter is the delimiter's.
        let before = self.skeleton.bytes.get(..sk_delimiter).unwrap_or_default();
        let sk_end = sk_delimiter - line_end_len(before);
        // The attached message as received, read again to hash it.
        self.r.rewind(start)?;
        let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
        let (mut size, mut held) = (0usize, Vec::new());
        while self.r.src.position() < delimiter_at {
            let Some((piece, _)) = self.r.next()? else {
                break;
            };
            held.extend_from_slice(piece);
            let keep = line_end_len(&held);
            let (now, later) = held.split_at(held.len() - keep);
            digest.update(now);
            size += now.len();
            held = later.to_vec();
        }
        self.r.rewind(delimiter_at)?;
        // The delimiter is in the skeleton already: read past it.
        self.r.next()?;
        for inner in self.skeleton.set_aside.iter_mut().skip(first) {
            inner.kind = Aside::Inner;
        }
        self.skeleton.set_aside.push(SetAside {
            size,
            sha256: digest.finish().as_ref().try_into().unwrap_or([0; 32]),
            kind: Aside::Message(sk_start, sk_end),
        });
        Ok(end)
    }

    /// A base64 body: decoded and hashed, and a marker line in its place; copied as it is
    /// when it is not clean base64 (or empty). A regular body is also kept decoded, when the
    /// walk keeps them.
    fn set_aside(&mut self, eol: &[u8], text: Option<Text>) -> io::Result<End> {
        let start = self.r.src.position();
        let left = self.r.src.left();
        let kept = self.keep.then(|| {
            let mut kept = std::mem::take(&mut self.skeleton.kept.bytes);
            // Room for the rest of the message at once: the decoded bodies and, when it is
            // packed, the text around them (see `store::codec::pack_message`), instead of
            // copies as the bytes grow.
            kept.reserve(left);
            kept
        });
        let mut decoder = Decoder::new(kept, text);
        decoder.runs = self.runs;
        let mut clean = true;
        let (end, delimiter_at, delimiter) = loop {
            if decoder.runs {
                let at = self.r.src.position();
                let (n, ok) = decoder.push_run(self.r.src.ahead()?, at);
                self.r.src.skip(n);
                if !ok {
                    clean = false;
                    break (End::Eof, at, Vec::new());
                }
            }
            let bounds = &self.bounds;
            let at = self.r.src.position();
            let Some((piece, starts)) = self.r.next()? else {
                break (End::Eof, at, Vec::new());
            };
            if starts && let Some(end) = Self::delimiter(bounds, piece) {
                break (end, at, piece.to_vec());
            }
            if !decoder.push(piece, at) {
                clean = false;
                break (End::Eof, at, Vec::new());
            }
        };
        let (decoded, region, kept) = decoder.finish(clean);
        if let Some(kept) = kept {
            self.skeleton.kept.bytes = kept;
        }
        let Some(part) = decoded.filter(|p| p.size > 0) else {
            self.r.rewind(start)?;
            return self.copy_body();
        };
        self.skeleton.kept.regions.extend(region);
        let index = self.skeleton.set_aside.len();
        let kind = if self.inside > 0 {
            Aside::Inner
        } else {
            Aside::Body
        };
        self.skeleton.set_aside.push(SetAside { kind, ..part });
        let marker = self.skeleton.marker(index, Encoding::Base64, text);
        let bytes = &mut self.skeleton.bytes;
        bytes.extend_from_slice(&marker);
        bytes.extend_from_slice(eol);
        if !delimiter.is_empty() {
            self.last_delimiter = (delimiter_at, bytes.len());
        }
        bytes.extend_from_slice(&delimiter);
        Ok(end)
    }

    /// The [`Dashes`] of the message, taken out of the walk (the caller puts them back), read
    /// from its start the first time (then back to where the walk is, the start of a body).
    fn take_dashes(&mut self) -> io::Result<Dashes> {
        if let Some(d) = self.dashes.take() {
            return Ok(d);
        }
        let back = self.r.src.position();
        self.r.src.rewind(self.origin)?;
        let (mut prefixes, mut sure) = (Vec::new(), true);
        // What is read and not yet looked at: whole lines, or the end of a long one.
        let mut hay = Vec::new();
        while sure {
            let Some(piece) = self.r.src.next_piece()? else {
                sure = declarations(&hay, hay.len(), &mut prefixes);
                break;
            };
            hay.extend_from_slice(piece);
            if hay.last() == Some(&b'\n') {
                sure = declarations(&hay, hay.len(), &mut prefixes);
                hay.clear();
            } else if hay.len() > DECLARATION_SPAN {
                // A long line: what starts in its last span is looked at with what follows.
                let settled = hay.len() - DECLARATION_SPAN;
                sure = declarations(&hay, settled, &mut prefixes);
                hay.drain(..settled);
            }
        }
        self.r.src.rewind(back)?;
        prefixes.sort_unstable();
        prefixes.dedup();
        Ok(Dashes {
            any: !sure,
            finders: prefixes
                .iter()
                .map(|p| memmem::Finder::new(&[b"--".as_slice(), p].concat()).into_owned())
                .collect(),
        })
    }

    /// An attachment's body in quoted-printable or in no transfer encoding (a log attached
    /// as plain text, a binary file sent `8bit`): decoded as the parse decodes it, hashed,
    /// and a marker line in its place, in the same encoding. Copied as it is when the walk
    /// cannot be sure to read it as the parse does (see [`Walk::decode_plain`]), in an
    /// attached message when it has `--` anywhere, or empty.
    fn set_aside_plain(
        &mut self,
        eol: &[u8],
        encoding: Encoding,
        text: Option<Text>,
    ) -> io::Result<End> {
        let start = self.r.src.position();
        // In an attached message, only a body without `--` and a boundary the message
        // declares (see [`Dashes`]): the parse of the original can take such a line for a
        // delimiter where the parse of the skeleton, without it, does not (a property test
        // found it). A body without one is, for the boundaries, like a base64 one.
        let dashes = if self.inside > 0 {
            Some(self.take_dashes()?)
        } else {
            None
        };
        let decoded = self.decode_plain(encoding, text, dashes.as_ref());
        if dashes.is_some() {
            self.dashes = dashes;
        }
        let decoded = decoded?;
        let Some(Ended {
            part,
            end,
            delimiter_at,
            delimiter,
        }) = decoded.filter(|d| d.part.size > 0)
        else {
            self.r.rewind(start)?;
            return self.copy_body();
        };
        let index = self.skeleton.set_aside.len();
        let kind = if self.inside > 0 {
            Aside::Inner
        } else {
            Aside::Body
        };
        self.skeleton.set_aside.push(SetAside { kind, ..part });
        let marker = self.skeleton.marker(index, encoding, text);
        let bytes = &mut self.skeleton.bytes;
        bytes.extend_from_slice(&marker);
        bytes.extend_from_slice(eol);
        self.last_delimiter = (delimiter_at, bytes.len());
        bytes.extend_from_slice(&delimiter);
        Ok(end)
    }

    /// Decodes the body ahead for [`Walk::set_aside_plain`]: its size and digest, how it
    /// ended, and where and which delimiter ended it. The parse ends such a body at the
    /// first `--` and boundary of the innermost multipart anywhere, and drops the line end
    /// before it; so only a body ended by that multipart's delimiter, with every line
    /// shorter than a piece and no `--` and boundary inside a line, is taken (and a
    /// quoted-printable one as [`Walk::decode_qp`] takes a text); with `dashes`, only a
    /// body without a line that [`Dashes::holds`]. `None` otherwise: the caller rewinds.
    fn decode_plain(
        &mut self,
        encoding: Encoding,
        text: Option<Text>,
        dashes: Option<&Dashes>,
    ) -> io::Result<Option<Ended>> {
        let Some(delimiter) = self.bounds.last().map(|b| [b"--".as_slice(), b].concat()) else {
            return Ok(None);
        };
        let inner = memchr::memmem::Finder::new(&delimiter);
        let mut shown = Shown::new(text);
        // The line end last read, which is the delimiter's when the delimiter comes next.
        let mut held: &'static [u8] = b"";
        let (mut lines, mut decoded) = (QpLines::default(), Vec::new());
        let (end, delimiter_at, delimiter) = loop {
            let at = self.r.src.position();
            let Some((piece, starts)) = self.r.next()? else {
                return Ok(None);
            };
            if starts && let Some(end) = Self::delimiter(&self.bounds, piece) {
                break (end, at, piece.to_vec());
            }
            let Some(line) = piece.strip_suffix(b"\n") else {
                return Ok(None);
            };
            // The delimiter inside a line, for every encoding (so not again in `QpLines`).
            if inner.find(piece).is_some() || dashes.is_some_and(|d| d.holds(piece)) {
                return Ok(None);
            }
            let taken = match encoding {
                Encoding::QuotedPrintable => {
                    decoded.clear();
                    lines.take(piece, None, &mut decoded).is_some() && shown.take(&decoded)
                }
                _ => {
                    let (line, end) = match line.strip_suffix(b"\r") {
                        Some(l) => (l, b"\r\n".as_slice()),
                        None => (line, b"\n".as_slice()),
                    };
                    let taken = shown.take(held) && shown.take(line);
                    held = end;
                    taken
                }
            };
            if !taken {
                return Ok(None);
            }
        };
        let End::Delimiter { level, .. } = end else {
            return Ok(None);
        };
        // The parse's decoder drops more than the line end after a soft break.
        let qp_ended = lines.lines > 0 && lines.hard;
        if level + 1 != self.bounds.len() || (encoding == Encoding::QuotedPrintable && !qp_ended) {
            return Ok(None);
        }
        Ok(shown.finish(true).map(|part| Ended {
            part,
            end,
            delimiter_at,
            delimiter,
        }))
    }
}

/// Which lines a body inside an attached message may not hold, for the parse of the
/// original to read it as the parse of the skeleton reads its marker. The parse looks for a
/// multipart's first delimiter, `--` and its boundary, anywhere after its header, past the
/// end of its part and of the attached message: a line of a body set aside further on that
/// holds one would be found in the original and not in the skeleton. A boundary can only
/// be one that a header declares, so a body without `--` and any boundary the message
/// declares anywhere is safe; when a declaration cannot be read for sure, any `--` counts.
struct Dashes {
    /// Any `--` counts.
    any: bool,
    /// `--` and the start of each boundary the message declares.
    finders: Vec<memmem::Finder<'static>>,
}

impl Dashes {
    /// Whether `line` holds what a body set aside may not.
    fn holds(&self, line: &[u8]) -> bool {
        memmem::find(line, b"--").is_some()
            && (self.any || self.finders.iter().any(|f| f.find(line).is_some()))
    }
}

/// The bytes at the end of a long line looked at again with the next piece, so that a
/// declaration cut between two pieces is read whole.
const DECLARATION_SPAN: usize = 4096;

/// Adds to `out` the start of each boundary declared (`boundary=...`, in any case) at an
/// offset of `hay` under `until`: the bytes of its value up to the first the parse may read
/// otherwise (a quote, an escape, a `;`, a comment, a space, an encoded word, a byte that is
/// not printable ASCII), so a prefix of the boundary the parse takes. False when one cannot
/// be read so (an RFC 2231 `boundary*`, a value that starts otherwise, the end of `hay`).
fn declarations(hay: &[u8], until: usize, out: &mut Vec<Vec<u8>>) -> bool {
    const NAME: &[u8] = b"boundary";
    let is_space = |b: &u8| matches!(b, b' ' | b'\t' | b'\r' | b'\n');
    let skip_spaces =
        |b: &[u8]| -> usize { b.iter().position(|c| !is_space(c)).unwrap_or(b.len()) };
    for at in memchr::memchr2_iter(b'b', b'B', &hay[..until]) {
        let after = at + NAME.len();
        if !hay
            .get(at..after)
            .is_some_and(|n| n.eq_ignore_ascii_case(NAME))
        {
            continue;
        }
        let rest = &hay[after..];
        let rest = &rest[skip_spaces(rest)..];
        let rest = match rest.first() {
            Some(b'=') => &rest[1..],
            Some(b'*') | None => return false,
            Some(_) => continue,
        };
        let rest = &rest[skip_spaces(rest)..];
        let rest = rest.strip_prefix(b"\"").unwrap_or(rest);
        let len = rest
            .iter()
            .position(|&b| !b.is_ascii_graphic() || matches!(b, b'"' | b'\\' | b';' | b'(' | b')'))
            .unwrap_or(rest.len());
        let value = &rest[..len];
        let value = &value[..memmem::find(value, b"=?").unwrap_or(value.len())];
        if value.is_empty() {
            return false;
        }
        out.push(value.to_vec());
    }
    true
}

/// A body [`Walk::decode_plain`] decoded, and the delimiter that ended it.
struct Ended {
    part: SetAside,
    end: End,
    /// Where the delimiter starts in the source.
    delimiter_at: u64,
    delimiter: Vec<u8>,
}

/// What the header block `head` says of its body, read with the parser's own header code.
fn body_of(head: &[u8]) -> Body {
    let Some(msg) = header_parser().parse_headers(head) else {
        return Body::Other;
    };
    let part = msg.root_part();
    let base64 = part
        .content_transfer_encoding()
        .is_some_and(|e| e.trim().eq_ignore_ascii_case("base64"));
    // Compared as the parse compares it, untrimmed.
    let qp = part
        .content_transfer_encoding()
        .is_some_and(|e| e.eq_ignore_ascii_case("quoted-printable"));
    let plain = if qp {
        Encoding::QuotedPrintable
    } else {
        Encoding::Identity
    };
    // Without a Content-Type, text/plain.
    let Some(ct) = part.content_type() else {
        return Body::Text(base64);
    };
    let ctype = ct.ctype();
    if ctype.eq_ignore_ascii_case("multipart") {
        return match ct.attribute("boundary") {
            Some(b) if !b.is_empty() => Body::Multipart(b.as_bytes().to_vec()),
            _ => Body::Other,
        };
    }
    if ctype.eq_ignore_ascii_case("message") {
        let attached = ct
            .subtype()
            .is_some_and(|s| s.eq_ignore_ascii_case("rfc822") || s.eq_ignore_ascii_case("global"));
        let encoded = part.content_transfer_encoding().is_some_and(|e| {
            let e = e.trim();
            e.eq_ignore_ascii_case("base64") || e.eq_ignore_ascii_case("quoted-printable")
        });
        return if attached && !encoded {
            Body::Message
        } else {
            Body::Other
        };
    }
    if !ctype.eq_ignore_ascii_case("text") {
        return if base64 {
            Body::Base64(None)
        } else {
            Body::Plain(plain, None)
        };
    }
    // A text part is the message's text unless it is sent as an attachment; the headers of
    // a delivery report's original stay for the parse to read.
    let attachment = part
        .content_disposition()
        .is_some_and(|d| d.ctype().eq_ignore_ascii_case("attachment"));
    let headers = ct.subtype().is_some_and(|s| {
        s.eq_ignore_ascii_case("rfc822-headers") || s.eq_ignore_ascii_case("global-headers")
    });
    if headers {
        return Body::Other;
    }
    if !attachment {
        return if qp {
            Body::QuotedPrintable
        } else {
            Body::Text(base64)
        };
    }
    match text_in(ct.attribute("charset")) {
        Some(t) if base64 => Body::Base64(Some(t)),
        Some(t) => Body::Plain(plain, Some(t)),
        None => Body::Other,
    }
}

/// The lines of a quoted-printable text decoded so far (see [`Walk::decode_qp`]).
#[derive(Default)]
struct QpLines {
    /// The line end of every line so far.
    line_end: Option<&'static [u8]>,
    /// The last line ended with a hard break (its line end not written yet).
    hard: bool,
    /// The last line had no line end (the end of the message, or a line longer than a
    /// piece).
    open: bool,
    lines: usize,
}

impl QpLines {
    /// Decodes the line `piece` onto `out`; `None` when the text is not one to decode here:
    /// a line after one without a line end, another line end than the others, a CR but in
    /// the line end, a delimiter of the multipart `inner` inside (which the parse's decoder
    /// would end the part at), or an `=` the parse reads otherwise.
    fn take(
        &mut self,
        piece: &[u8],
        inner: Option<&memchr::memmem::Finder<'_>>,
        out: &mut Vec<u8>,
    ) -> Option<()> {
        if self.open {
            return None;
        }
        let (content, this_end): (&[u8], &'static [u8]) =
            if let Some(c) = piece.strip_suffix(b"\r\n") {
                (c, b"\r\n")
            } else if let Some(c) = piece.strip_suffix(b"\n") {
                (c, b"\n")
            } else {
                self.open = true;
                (piece, b"")
            };
        if memchr::memchr(b'\r', content).is_some()
            || inner.is_some_and(|d| d.find(piece).is_some())
        {
            return None;
        }
        if self.hard
            && let Some(e) = self.line_end
        {
            out.extend_from_slice(e);
        }
        if !self.open {
            if self.line_end.is_some_and(|e| e != this_end) {
                return None;
            }
            self.line_end = Some(this_end);
        }
        let soft = qp_line(content, !self.open, out)?;
        self.hard = !soft && !self.open;
        self.lines += 1;
        Some(())
    }
}

/// The parser of a part's header block for [`body_of`]: the three fields it reads, read as
/// the message's parse reads them (`message::mime_parser`), every other field skipped. A
/// message's own header block, with its `Received` fields, took longer to read whole than
/// some small texts take to decode.
fn header_parser() -> &'static mail_parser::MessageParser {
    use mail_parser::HeaderName as H;
    static PARSER: std::sync::LazyLock<mail_parser::MessageParser> =
        std::sync::LazyLock::new(|| {
            mail_parser::MessageParser::new()
                .header_content_type(H::ContentType)
                .header_content_type(H::ContentDisposition)
                .header_text(H::ContentTransferEncoding)
                .default_header_ignore()
        });
    &PARSER
}

/// Decodes one line of quoted-printable text, without its line end, onto `out`, as the
/// parse decodes it: `=` and two hexadecimal digits give a byte; `=` last on the line
/// (spaces, tabs, form feeds after it) is a soft break; on a line that ends (`ended`), the
/// spaces, tabs and form feeds at its end go. Whether the line ends in a soft break, or
/// `None` for an `=` followed by anything else (the parse has its own readings of those).
fn qp_line(line: &[u8], ended: bool, out: &mut Vec<u8>) -> Option<bool> {
    use mail_parser::decoders::quoted_printable::HEX_MAP;
    let space = |b: &&u8| matches!(b, b' ' | b'\t' | b'\x0C');
    let kept = line.len() - line.iter().rev().take_while(space).count();
    let trimmed = line.get(..kept).unwrap_or_default();
    let (mut rest, soft) = match trimmed.strip_suffix(b"=") {
        Some(text) => (text, true),
        None if ended => (trimmed, false),
        None => (line, false),
    };
    let hex = |b: Option<&u8>| {
        let v = *HEX_MAP.get(usize::from(*b?))?;
        u8::try_from(v).ok()
    };
    while let Some(i) = memchr::memchr(b'=', rest) {
        out.extend_from_slice(rest.get(..i).unwrap_or_default());
        let (hi, lo) = (hex(rest.get(i + 1))?, hex(rest.get(i + 2))?);
        out.push(hi << 4 | lo);
        rest = rest.get(i + 3..).unwrap_or_default();
    }
    out.extend_from_slice(rest);
    Some(soft)
}

/// The length of the line end `bytes` ends with: `\r\n`, `\n` or a lone `\r` (whose `\n`
/// may come next), else 0.
fn line_end_len(bytes: &[u8]) -> usize {
    if bytes.ends_with(b"\r\n") {
        2
    } else {
        usize::from(bytes.ends_with(b"\n") || bytes.ends_with(b"\r"))
    }
}

fn strip_boms(mut line: &[u8]) -> &[u8] {
    while let Some(rest) = line.strip_prefix(b"\xEF\xBB\xBF") {
        line = rest;
    }
    line
}

fn is_blank(line: &[u8]) -> bool {
    line.iter()
        .all(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
}

/// Decodes whole quanta of strict base64 (the standard alphabet, canonical padding only at
/// the end, no bits left over) onto the end of `out`, returning how many bytes: with SIMD
/// where the CPU has it, several times the speed of a byte-table decoder, and into `out`'s
/// spare room without zeroing it first. `None` for anything else (`out` as it was); the
/// tests hold it to the `base64` crate's `STANDARD` engine, which the store's reader uses to
/// write the bytes back.
fn decode_base64(input: &[u8], out: &mut Vec<u8>) -> Option<usize> {
    let before = out.len();
    // Room that grows by doubling: the decoder's own reservation is exact, a copy of
    // everything decoded so far at each chunk.
    out.reserve(input.len() / 4 * 3);
    base64_simd::STANDARD.decode_append(input, out).ok()?;
    Some(out.len() - before)
}

/// Strict base64 in pieces: the alphabet and line ends only, padding only at the very end,
/// a canonical last quantum. Anything else is "not clean", and the body stays in the copy.
/// It also follows the lines' layout, to tell whether the body is regular (see [`Region`]).
struct Decoder {
    pending: Vec<u8>,
    /// The decoded bytes: the kept ones (appended to what was kept before), or the last
    /// chunk only.
    out: Vec<u8>,
    /// `out`'s length before this body, when the decoded bytes are kept.
    kept_from: Option<usize>,
    /// Bytes decoded.
    size: usize,
    shown: Shown,
    padded: bool,
    lines: Layout,
    /// Whether [`Decoder::push_run`] may still find runs of lines.
    runs: bool,
}

/// A body's decoded bytes as the parse shows them (a text attachment converted from its
/// charset), a piece at a time: their size and SHA-256.
struct Shown {
    digest: ring::digest::Context,
    /// Bytes of what the parse shows: the decoded ones, or the text converted from its
    /// charset.
    size: usize,
    /// How the parse shows the decoded bytes, for a text attachment.
    text: Option<Text>,
    /// The start of a UTF-8 sequence that the last piece cut.
    carry: Vec<u8>,
    /// Where a UTF-16 text stands between two pieces.
    utf16: Utf16Text,
}

/// A UTF-16 text read a piece at a time.
#[derive(Default)]
struct Utf16Text {
    /// The byte order once known (by the first unit, for [`Order::Mark`]).
    big: Option<bool>,
    /// The first byte of a unit the last piece cut.
    odd: Option<u8>,
    /// A leading surrogate waiting for the unit after it.
    lead: Option<u16>,
}

impl Utf16Text {
    /// The text of the units in `bytes`, after those of the pieces before, as
    /// `char::decode_utf16` reads the whole (`order` says how).
    fn read(&mut self, order: Order, mut bytes: &[u8], out: &mut String) {
        if let Some(first) = self.odd.take() {
            let Some((&second, rest)) = bytes.split_first() else {
                self.odd = Some(first);
                return;
            };
            self.unit(order, [first, second], out);
            bytes = rest;
        }
        let (units, rest) = bytes.as_chunks::<2>();
        for &u in units {
            self.unit(order, u, out);
        }
        self.odd = rest.first().copied();
    }

    fn unit(&mut self, order: Order, u: [u8; 2], out: &mut String) {
        let big = match (self.big, order) {
            (Some(big), _) => big,
            (None, Order::Le) => *self.big.insert(false),
            (None, Order::Be) => *self.big.insert(true),
            (None, Order::Mark) => {
                let big = u == [0xFE, 0xFF];
                self.big = Some(big);
                if big || u == [0xFF, 0xFE] {
                    return;
                }
                big
            }
        };
        let u = if big {
            u16::from_be_bytes(u)
        } else {
            u16::from_le_bytes(u)
        };
        let trailing = (0xDC00..=0xDFFF).contains(&u);
        if let Some(lead) = self.lead.take() {
            if trailing {
                let c = 0x10000 + ((u32::from(lead) - 0xD800) << 10) + (u32::from(u) - 0xDC00);
                out.push(char::from_u32(c).unwrap_or(char::REPLACEMENT_CHARACTER));
                return;
            }
            out.push(char::REPLACEMENT_CHARACTER);
        }
        if (0xD800..=0xDBFF).contains(&u) {
            self.lead = Some(u);
        } else {
            out.push(char::from_u32(u32::from(u)).unwrap_or(char::REPLACEMENT_CHARACTER));
        }
    }

    /// What is left at the end: a leading surrogate alone is a replacement character; an
    /// odd byte is dropped.
    fn finish(&mut self, out: &mut String) {
        if self.lead.take().is_some() {
            out.push(char::REPLACEMENT_CHARACTER);
        }
        self.odd = None;
    }
}

impl Shown {
    fn new(text: Option<Text>) -> Shown {
        Shown {
            digest: ring::digest::Context::new(&ring::digest::SHA256),
            size: 0,
            text,
            carry: Vec::new(),
            utf16: Utf16Text::default(),
        }
    }

    /// Takes the next decoded bytes. True: the parse shows any bytes (it replaces what it
    /// cannot read); the callers' own checks say whether a body is clean.
    fn take(&mut self, bytes: &[u8]) -> bool {
        match self.text {
            None => self.shown(bytes),
            Some(Text::Charset(convert)) => self.shown(convert(bytes).as_bytes()),
            Some(Text::Utf16(order)) => {
                let mut text = String::with_capacity(bytes.len() / 2 * 3);
                self.utf16.read(order, bytes, &mut text);
                self.shown(text.as_bytes())
            }
            Some(Text::Utf8) if self.carry.is_empty() => self.utf8(bytes),
            Some(Text::Utf8) => {
                let mut joined = std::mem::take(&mut self.carry);
                joined.extend_from_slice(bytes);
                self.utf8(&joined)
            }
        }
    }

    fn shown(&mut self, bytes: &[u8]) -> bool {
        self.digest.update(bytes);
        self.size += bytes.len();
        true
    }

    /// `bytes` read as UTF-8 lossily, but for a sequence they end in the middle of, kept in
    /// `carry` for the next piece: the same text as the whole read at once.
    fn utf8(&mut self, bytes: &[u8]) -> bool {
        let (now, later) = bytes.split_at(bytes.len() - cut_sequence(bytes));
        self.carry = later.to_vec();
        self.shown(String::from_utf8_lossy(now).as_bytes())
    }

    /// The size and digest, when the whole was `clean`.
    fn finish(mut self, clean: bool) -> Option<SetAside> {
        // A sequence cut by the end of the body: replaced, as the parse replaces it.
        let cut = std::mem::take(&mut self.carry);
        self.shown(String::from_utf8_lossy(&cut).as_bytes());
        let mut rest = String::new();
        self.utf16.finish(&mut rest);
        self.shown(rest.as_bytes());
        clean.then(|| {
            let d = self.digest.finish();
            let mut sha256 = [0u8; 32];
            sha256.copy_from_slice(d.as_ref());
            SetAside {
                size: self.size,
                sha256,
                kind: Aside::Body,
            }
        })
    }
}

/// The lines of a base64 body so far, for [`Region`]: blank lines may come before and after
/// the others, never between.
#[derive(Default)]
struct Layout {
    /// Where the first line with characters starts, and where the last one ends.
    span: Option<(u64, u64)>,
    width: usize,
    crlf: bool,
    /// A line shorter than the first was seen: it must be the last.
    short: bool,
    /// A blank line after the first line with characters.
    gap: bool,
    irregular: bool,
}

impl Layout {
    /// Notes one piece, starting at `at`, whose characters are `chars` long.
    fn line(&mut self, piece: &[u8], at: u64, chars: usize) {
        let Some(eol) = piece.strip_suffix(b"\n") else {
            // A line longer than a piece, or a last line without a line end.
            self.irregular = true;
            return;
        };
        if chars == 0 {
            self.gap = self.span.is_some();
            return;
        }
        let crlf = eol.ends_with(b"\r");
        let end = at + piece.len() as u64;
        match &mut self.span {
            None => {
                self.span = Some((at, end));
                (self.width, self.crlf) = (chars, crlf);
            }
            Some((_, last)) => {
                if self.gap || self.short || chars > self.width || crlf != self.crlf {
                    self.irregular = true;
                }
                self.short = chars < self.width;
                *last = end;
            }
        }
    }
}

impl Decoder {
    /// Decodes into `kept` (after what it holds) when given, else into a scratch buffer.
    fn new(kept: Option<Vec<u8>>, text: Option<Text>) -> Decoder {
        let kept_from = kept.as_ref().map(Vec::len);
        Decoder {
            pending: Vec::with_capacity(CHUNK + 1024),
            out: kept.unwrap_or_default(),
            kept_from,
            size: 0,
            shown: Shown::new(text),
            padded: false,
            lines: Layout::default(),
            runs: true,
        }
    }

    /// Takes one piece of the body, starting at `at`; false when it is not clean.
    fn push(&mut self, piece: &[u8], at: u64) -> bool {
        let data = piece.strip_suffix(b"\n").unwrap_or(piece);
        let data = data.strip_suffix(b"\r").unwrap_or(data);
        self.lines.line(piece, at, data.len());
        if data.is_empty() {
            return true;
        }
        if self.padded {
            return false;
        }
        // One search for the rare bytes: padding, and the spaces and tabs the parse skips
        // (the store cannot lay such lines out again).
        if memchr::memchr3(b'=', b' ', b'\t', data).is_none() {
            self.pending.extend_from_slice(data);
        } else {
            self.padded = memchr::memchr(b'=', data).is_some();
            if memchr::memchr2(b' ', b'\t', data).is_some() {
                self.lines.irregular = true;
                self.pending
                    .extend(data.iter().filter(|&&b| b != b' ' && b != b'\t'));
            } else {
                self.pending.extend_from_slice(data);
            }
        }
        if self.padded || self.pending.len() < CHUNK {
            return true;
        }
        self.decode_pending()
    }

    /// Decodes the whole quanta pending, keeping the rest; false when they are not clean.
    fn decode_pending(&mut self) -> bool {
        let whole = self.pending.len() / 4 * 4;
        let ok = self.decode(whole);
        self.pending.drain(..whole);
        ok
    }

    /// Takes the lines at the start of `ahead` (which starts at `at`, a line start) that
    /// [`Decoder::push`] would take one by one as lines of the width and line end of the
    /// lines before: a body's bulk, without looking for each line's end. Returns how many
    /// bytes it took, and false when the body is not clean.
    fn push_run(&mut self, ahead: &[u8], at: u64) -> (usize, bool) {
        let (Some(_), false, false, false, false) = (
            self.lines.span,
            self.lines.gap,
            self.lines.short,
            self.lines.irregular,
            self.padded,
        ) else {
            return (0, true);
        };
        let width = self.lines.width;
        let len = width + 1 + usize::from(self.lines.crlf);
        // A line starting with `-` may be a delimiter, and is not base64 anyway. The line
        // end is the layout's: CR LF, or LF after a character that is not CR.
        let crlf = self.lines.crlf;
        let lines = ahead
            .chunks_exact(len)
            .take_while(|l| {
                l.first() != Some(&b'-')
                    && l.last() == Some(&b'\n')
                    && (l.get(len - 2) == Some(&b'\r')) == crlf
            })
            .count();
        // Only the lines before the first rare byte: padding ends a body, spaces and tabs
        // make it irregular; [`Decoder::push`] takes that line.
        let region = ahead.get(..lines * len).unwrap_or_default();
        let rare = memchr::memchr3(b'=', b' ', b'\t', region).unwrap_or(region.len());
        let lines = rare / len;
        let region = region.get(..lines * len).unwrap_or_default();
        if lines == 0 {
            return (0, true);
        }
        // No line end among the characters: else the lines are not what they seem, and the
        // rest of this body goes line by line.
        if memchr::memchr_iter(b'\n', region).count() != lines {
            self.runs = false;
            return (0, true);
        }
        for line in region.chunks_exact(len) {
            self.pending
                .extend_from_slice(line.get(..width).unwrap_or_default());
            if self.pending.len() >= CHUNK && !self.decode_pending() {
                return (region.len(), false);
            }
        }
        if let Some((_, last)) = &mut self.lines.span {
            *last = at + region.len() as u64;
        }
        (region.len(), true)
    }

    /// Decodes the first `n` pending characters into the digest (and `out`).
    fn decode(&mut self, n: usize) -> bool {
        let input = self.pending.get(..n).unwrap_or_default();
        if self.kept_from.is_none() {
            self.out.clear();
        }
        let at = self.out.len();
        match decode_base64(input, &mut self.out) {
            Some(len) => {
                self.size += len;
                self.shown
                    .take(self.out.get(at..at + len).unwrap_or_default())
            }
            None => false,
        }
    }

    /// The size and digest when the whole body was `clean`; its region when it was also
    /// regular and kept; and the kept bytes given to [`Decoder::new`], with this body's
    /// only when it has a region.
    fn finish(mut self, clean: bool) -> (Option<SetAside>, Option<Region>, Option<Vec<u8>>) {
        let n = self.pending.len();
        let clean = clean && n.is_multiple_of(4) && self.decode(n);
        let set_aside = self.shown.finish(clean);
        let clean = set_aside.is_some();
        let Some(from) = self.kept_from else {
            return (set_aside, None, None);
        };
        let lines = &self.lines;
        let region = match lines.span {
            Some((start, end)) if clean && !lines.irregular && self.size > 0 => Some(Region {
                start: usize::try_from(start).unwrap_or(usize::MAX),
                len: usize::try_from(end - start).unwrap_or(usize::MAX),
                decoded: self.size,
                width: lines.width,
                crlf: lines.crlf,
            }),
            _ => None,
        };
        if region.is_none() {
            self.out.truncate(from);
        }
        (set_aside, region, Some(self.out))
    }
}

/// Whether the converter `f` maps each byte on its own, ASCII to itself: then converting a
/// text a piece at a time gives what converting it whole does, and a marker reads the same.
/// A converter of sequences (UTF-16, UTF-7, Shift_JIS, GBK, ...) gives otherwise for the 256
/// bytes in a row, or for some pair that starts with a byte over 0x7F or ESC (where every
/// multi-byte sequence of those starts), than for each byte alone. Without its optional
/// tables the parse reads Shift_JIS, GBK and the like as UTF-8, whose `E3 81` is one
/// replacement character and not two.
fn byte_by_byte(f: mail_parser::decoders::charsets::DecoderFnc) -> bool {
    let each: Vec<String> = (0..=255u8).map(|b| f(&[b])).collect();
    let alone = |bytes: &[u8]| -> String {
        bytes
            .iter()
            .filter_map(|&b| each.get(usize::from(b)).map(String::as_str))
            .collect()
    };
    let in_a_row: Vec<u8> = (0..=255).collect();
    let pairs: Vec<u8> = (0x80..=0xFFu8)
        .chain([0x1B])
        .flat_map(|lead| (0..=255u8).flat_map(move |b| [lead, b]))
        .collect();
    (0..0x80u8).all(|b| {
        each.get(usize::from(b))
            .is_some_and(|s| s.as_bytes() == [b])
    }) && f(&in_a_row) == alone(&in_a_row)
        && f(&pairs) == alone(&pairs)
}

/// How many bytes at the end of `bytes` start a UTF-8 sequence that the next bytes may still
/// complete: the bytes before are read the same whatever comes next (a sequence before them
/// ends at their first byte, which is no continuation byte), these are not.
fn cut_sequence(bytes: &[u8]) -> usize {
    for back in 1..=bytes.len().min(3) {
        let tail = bytes.get(bytes.len() - back..).unwrap_or_default();
        if tail.first().is_some_and(|b| b & 0xC0 == 0x80) {
            continue;
        }
        return match std::str::from_utf8(tail) {
            Err(e) if e.error_len().is_none() && e.valid_up_to() == 0 => back,
            _ => 0,
        };
    }
    0
}

/// Whether the converter `f` reads bytes as UTF-8 lossily (`String::from_utf8_lossy`), as the
/// parse does for Shift_JIS, GBK, Big5 and the like without its optional tables.
/// Whether `f` reads UTF-16 as [`Utf16Text`] does, and in which byte order: tried on units
/// in either order, with and without a byte order mark, a surrogate pair, surrogates
/// alone, and an odd last byte.
fn utf16_of(f: mail_parser::decoders::charsets::DecoderFnc) -> Option<Order> {
    let text = "A\u{e9}\u{6ce8}\u{1f600}\u{feff}z";
    let le: Vec<u8> = text.encode_utf16().flat_map(u16::to_le_bytes).collect();
    let be: Vec<u8> = text.encode_utf16().flat_map(u16::to_be_bytes).collect();
    let odd = [0x3D, 0xD8, b'x', 0x00, 0x00, 0xDC, 0x3D, 0xD8, b'y'];
    let probes: Vec<Vec<u8>> = [
        &le[..],
        &be[..],
        &[[0xFF, 0xFE].as_slice(), &le].concat(),
        &[[0xFE, 0xFF].as_slice(), &be].concat(),
        &odd[..],
        &[0xFE, 0xFF, 0x00][..],
        &[0x41][..],
    ]
    .iter()
    .map(|p| p.to_vec())
    .collect();
    [Order::Le, Order::Be, Order::Mark]
        .into_iter()
        .find(|&order| {
            probes.iter().all(|p| {
                let whole = f(p);
                // Read in pieces of one byte, of three, and whole: the same text.
                [1, 3, p.len().max(1)].into_iter().all(|n| {
                    let (mut ours, mut u) = (String::new(), Utf16Text::default());
                    for piece in p.chunks(n) {
                        u.read(order, piece, &mut ours);
                    }
                    u.finish(&mut ours);
                    whole == ours
                })
            })
        })
}

fn reads_as_utf8(f: mail_parser::decoders::charsets::DecoderFnc) -> bool {
    let mut probe: Vec<u8> = (0..=255).collect();
    probe.extend_from_slice("caf\u{e9} \u{6ce8}\u{6587} \u{1f600}".as_bytes());
    probe.extend_from_slice(b"\xe3\x81 \xf0\x9f\x98 \xed\xa0\x80 \x82\xa0 \xa4\xa2 \x1b$B");
    f(&probe) == String::from_utf8_lossy(&probe)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The start of each boundary a text declares, as [`declarations`] reads them; `None`
    /// when it is not sure of one.
    fn declared(text: &str) -> Option<Vec<String>> {
        let mut out = Vec::new();
        let sure = declarations(text.as_bytes(), text.len(), &mut out);
        sure.then(|| {
            out.iter()
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .collect()
        })
    }

    #[test]
    fn declared_boundaries_are_read_up_to_what_the_parse_may_read_otherwise() {
        let v = |s: &[&str]| Some(s.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>());
        let cases = [
            ("Content-Type: multipart/mixed; boundary=abc", v(&["abc"])),
            (
                "boundary=\"----=_Part_1_2.3\"\r\n",
                v(&["----=_Part_1_2.3"]),
            ),
            ("BOUNDARY = \"x\"; charset=y", v(&["x"])),
            ("boundary=abc;type=x", v(&["abc"])),
            ("boundary=\"a\\\"b\"", v(&["a"])),
            ("boundary=\"ab cd\"", v(&["ab"])),
            ("boundary=ab=?utf-8?q?c?=", v(&["ab"])),
            ("boundary=ab\u{e9}cd", v(&["ab"])),
            ("boundary=a(comment)", v(&["a"])),
            (
                "the boundary of the site; Boundary: x; boundaryless",
                v(&[]),
            ),
            ("boundary=a\nboundary=b", v(&["a", "b"])),
            // What the walk cannot be sure the parse reads as it does: any `--` counts.
            ("boundary*0=abc", None),
            ("boundary*=utf-8''abc", None),
            ("boundary=\" abc\"", None),
            ("boundary=(c)abc", None),
            ("boundary=;", None),
            ("boundary", None),
            ("boundary\r\n", None),
        ];
        for (text, want) in cases {
            assert_eq!(declared(text), want, "{text:?}");
        }
    }

    /// A declaration cut between two pieces of a long line is read whole; one in a line of
    /// its own is read at once.
    #[test]
    fn a_declaration_in_a_long_line_is_read_across_pieces() {
        for pad in [PIECE - 20, PIECE - 3, PIECE + 10, 3 * PIECE - 9] {
            let raw = format!(
                "From: a@b\nContent-Type: text/plain\n\n{}boundary=\"long-one\" x\n",
                "y".repeat(pad)
            );
            let mut walk = Walk::new(
                SliceLines {
                    data: raw.as_bytes(),
                    at: 0,
                },
                0,
            );
            walk.r.src.skip(10);
            let d = walk.take_dashes().unwrap();
            assert_eq!(walk.r.src.position(), 10, "back where the walk was");
            assert!(!d.any, "{pad}");
            assert!(d.holds(b"x --long-one y"), "{pad}");
            assert!(!d.holds(b"x --long y"), "{pad}");
            assert!(!d.holds(b"no dashes long-one"), "{pad}");
        }
    }

    /// What the `base64` crate's `STANDARD` engine (the store's reader writes with it) makes
    /// of `input`, and what [`decode_base64`] makes of it: they must agree.
    fn both(input: &[u8]) -> (Option<Vec<u8>>, Option<Vec<u8>>) {
        let mut a = vec![0u8; input.len() / 4 * 3 + 3];
        let want = base64::engine::general_purpose::STANDARD
            .decode_slice(input, &mut a)
            .ok()
            .map(|n| a[..n].to_vec());
        // After bytes already there, which it keeps, and leaves as they were on failure.
        let mut b = b"kept".to_vec();
        let got = decode_base64(input, &mut b).map(|n| {
            assert_eq!(&b[..4], b"kept");
            assert_eq!(b.len(), 4 + n);
            b[4..].to_vec()
        });
        if got.is_none() {
            assert_eq!(b, b"kept");
        }
        (want, got)
    }

    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

    #[test]
    fn the_simd_decoder_takes_every_padded_last_quantum_as_the_standard_engine_does() {
        // Every "xy==" and "xyz=", alone and after 64 characters (the SIMD path), so every
        // value of the bits a canonical encoder leaves zero.
        let mut accepted = 0;
        for prefix in [&[][..], ALPHABET] {
            for &x in ALPHABET {
                for &y in ALPHABET {
                    for z in ALPHABET.iter().copied().chain([b'=']) {
                        let mut input = prefix.to_vec();
                        input.extend_from_slice(&[x, y, z, b'=']);
                        let (want, got) = both(&input);
                        assert_eq!(want, got, "{}", String::from_utf8_lossy(&input));
                        accepted += usize::from(want.is_some());
                    }
                }
            }
        }
        // Of each 64 x 64 x 65, the canonical ones: 64 x 4 "xy==" and 64 x 64 x 16 "xyz=".
        assert_eq!(accepted, 2 * (64 * 4 + 64 * 64 * 16));
    }

    #[test]
    fn the_simd_decoder_rejects_what_the_standard_engine_rejects_at_every_position() {
        // Every byte value at every position of a short and of a long input (the SIMD lanes
        // and the tail), and every placement of padding and of bytes outside the alphabet.
        let clean =
            base64::engine::general_purpose::STANDARD.encode((0..=255u8).collect::<Vec<_>>());
        for len in [8, 100, 344] {
            let base = &clean.as_bytes()[..len];
            for at in 0..len {
                for v in 0..=255u8 {
                    let mut input = base.to_vec();
                    input[at] = v;
                    let (want, got) = both(&input);
                    assert_eq!(want, got, "byte {v} at {at} of {len}");
                }
            }
        }
        let odd = [b'A', b'=', b'\n', b' ', b'-', b'_', 0xc3, b'+', b'/'];
        for a in odd {
            for b in odd {
                for c in odd {
                    for d in odd {
                        for (pre, post) in [("", ""), ("QUJD", ""), ("", "QUJD"), ("QUJD", "QUJD")]
                        {
                            let mut input = pre.as_bytes().to_vec();
                            input.extend_from_slice(&[a, b, c, d]);
                            input.extend_from_slice(post.as_bytes());
                            let (want, got) = both(&input);
                            assert_eq!(want, got, "{input:?}");
                        }
                    }
                }
            }
        }
    }

    fn b64_lines(data: &[u8], width: usize, eol: &str) -> String {
        let enc = base64::engine::general_purpose::STANDARD.encode(data);
        let mut out = String::new();
        for chunk in enc.as_bytes().chunks(width) {
            out.push_str(std::str::from_utf8(chunk).unwrap());
            out.push_str(eol);
        }
        out
    }

    fn with_attachment(body: &str) -> String {
        format!(
            "From: a@example.com\r\nSubject: s\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n\
             preamble\r\n--b1\r\nContent-Type: text/plain\r\n\r\nhello\r\n--b1\r\n\
             Content-Type: application/pdf; name=a.pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n\
             {body}--b1--\r\n"
        )
    }

    /// The skeleton of `raw` read from a slice or through a reader with a `buffer`-byte
    /// buffer, its base64 lines taken in runs or one by one; one nonce for all.
    fn walked(raw: &[u8], runs: bool, buffer: Option<usize>) -> String {
        fn run<L: Lines>(mut walk: Walk<L>, runs: bool, keep: bool) -> String {
            walk.runs = runs;
            walk.keep = keep;
            walk.skeleton.nonce = [7; 8];
            let s = walk.run().unwrap();
            format!(
                "{:?} {:?} {} {} {:?}",
                s.bytes, s.set_aside, s.blank, s.cut, s.kept
            )
        }
        match buffer {
            None => run(Walk::new(SliceLines { data: raw, at: 0 }, 0), runs, true),
            Some(cap) => {
                let r = std::io::BufReader::with_capacity(cap, std::io::Cursor::new(raw));
                let lines = ReaderLines {
                    r,
                    buf: Vec::new(),
                    at: 0,
                };
                run(Walk::new(lines, 0), runs, false)
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(400))]

        /// Runs of lines take exactly what line by line takes, whatever breaks the run.
        #[test]
        fn runs_of_lines_take_what_line_by_line_takes(
            data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..4000),
            // 4 and 6: the lengths of the delimiters `--b1` and `--b1--`.
            width in proptest::prop_oneof![
                proptest::strategy::Just(4usize),
                proptest::strategy::Just(6usize),
                1usize..90
            ],
            crlf in proptest::prelude::any::<bool>(),
            spoils in proptest::collection::vec((0usize..200, 0u8..12), 0..3),
            buffer in 1usize..300,
        ) {
            let eol = if crlf { "\r\n" } else { "\n" };
            let mut lines: Vec<String> = b64_lines(&data, width, eol)
                .split_inclusive('\n')
                .map(str::to_owned)
                .collect();
            for (at, how) in spoils {
                let at = at % (lines.len() + 1);
                let line = lines.get(at).cloned().unwrap_or_default();
                let (chars, _) = line.split_at(line.trim_end_matches(['\r', '\n']).len());
                let spoiled = match how {
                    0 => format!("-{}{eol}", chars.get(1..).unwrap_or("")),
                    1 if at.is_multiple_of(2) => format!("--b1{eol}"),
                    1 => format!("--b1--{eol}"),
                    2 => format!("{}{eol}", chars.get(1..).unwrap_or("")),
                    3 => format!("{chars}A{eol}"),
                    4 => format!("{chars}{}", if crlf { "\n" } else { "\r\n" }),
                    // One character less before a CR LF, and that character on a line of
                    // its own: still clean.
                    5 => {
                        let (a, b) = chars.split_at(chars.len().saturating_sub(1));
                        format!("{a}\r\n{b}{eol}")
                    }
                    6 => format!("{}={eol}", chars.get(1..).unwrap_or("")),
                    7 => format!("{} {eol}", chars.get(1..).unwrap_or("")),
                    8 => format!("\t{}{eol}", chars.get(1..).unwrap_or("")),
                    9 => eol.to_owned(),
                    10 => {
                        let (a, b) = chars.split_at(chars.len() / 2);
                        format!("{a}\n{b}{eol}")
                    }
                    _ => format!("{}\r{}{eol}", chars.get(..1).unwrap_or(""), chars.get(1..).unwrap_or("")),
                };
                if at < lines.len() && how != 9 {
                    lines[at] = spoiled;
                } else {
                    lines.insert(at, spoiled);
                }
            }
            let raw = with_attachment(&lines.concat());
            let one_by_one = walked(raw.as_bytes(), false, None);
            proptest::prop_assert_eq!(&walked(raw.as_bytes(), true, None), &one_by_one);
            proptest::prop_assert_eq!(
                walked(raw.as_bytes(), true, Some(buffer)),
                walked(raw.as_bytes(), false, Some(buffer))
            );
        }
    }

    #[test]
    fn a_clean_body_is_set_aside_with_its_size_and_digest() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let raw = with_attachment(&b64_lines(&data, 76, "\r\n"));
        let s = of_slice(raw.as_bytes());
        assert_eq!(s.set_aside.len(), 1);
        assert_eq!(s.set_aside[0].size, data.len());
        assert_eq!(s.set_aside[0].sha256, crate::message::sha256(&data));
        assert!(s.bytes.len() < 400, "{}", String::from_utf8_lossy(&s.bytes));
        let text = String::from_utf8_lossy(&s.bytes);
        assert!(text.ends_with("--b1--\r\n") && text.contains("hello\r\n--b1\r\n"));
        // The same from a reader, in pieces.
        let r = of_reader(std::io::Cursor::new(raw.as_bytes())).unwrap();
        assert_eq!(r.set_aside, s.set_aside);
        assert!(!r.blank);
    }

    #[test]
    fn bodies_that_are_not_clean_base64_are_copied() {
        let data = b"some bytes of an attachment, enough to fill a few lines of base64 text";
        let good = b64_lines(data, 20, "\r\n");
        for bad in [
            good.replacen('A', "-", 1),
            good.replacen("\r\n", "==\r\n", 1),
            format!("{good}QQ==\r\n"),
            good.replacen("\r\n", "\r\n-\r\n", 1),
            format!("{}\r\n", &good.trim_end()[..good.trim_end().len() - 1]),
        ] {
            let raw = with_attachment(&bad);
            let s = of_slice(raw.as_bytes());
            assert!(s.set_aside.is_empty(), "{bad:?}");
            assert_eq!(s.bytes, raw.as_bytes(), "{bad:?}");
        }
    }

    #[test]
    fn a_text_is_converted_a_piece_at_a_time_only_as_the_parse_converts_it_whole() {
        let read = |c: Option<&str>| match text_in(c) {
            Some(Text::Utf8) => "utf-8",
            Some(Text::Charset(_)) => "one byte",
            Some(Text::Utf16(Order::Le)) => "utf-16le",
            Some(Text::Utf16(Order::Be)) => "utf-16be",
            Some(Text::Utf16(Order::Mark)) => "utf-16",
            None => "no",
        };
        let one_byte = [
            "latin1",
            "iso-8859-15",
            "windows-1252",
            "windows-1251",
            "koi8-r",
        ];
        for c in one_byte.into_iter().chain(["us-ascii"]) {
            assert_eq!(read(Some(c)), "one byte", "{c}");
        }
        // Read as UTF-8 by the parse: without its optional tables (`E3 81` is then one
        // replacement character, not two), or a charset it does not know.
        for c in [
            "shift_jis",
            "gb2312",
            "big5",
            "euc-kr",
            "iso-2022-jp",
            "utf-8",
            "x-unknown",
            " latin1 ",
        ] {
            assert_eq!(read(Some(c)), "utf-8", "{c}");
        }
        assert_eq!(read(None), "utf-8");
        for (c, read_as) in [
            ("utf-16", "utf-16"),
            ("unicode", "utf-16"),
            ("UTF-16LE", "utf-16le"),
            ("utf-16be", "utf-16be"),
            ("utf-7", "no"),
        ] {
            assert_eq!(read(Some(c)), read_as, "{c}");
        }
    }

    /// 20,000 texts of up to `words` words of `alphabet` (pseudo-random from `seed`), each
    /// read by a [`Shown`] for `text` in pieces of 1 to 4 bytes: the size and digest must be
    /// those of `whole`, the text as the parse reads it at once.
    fn read_in_pieces_as_whole(
        seed: u64,
        alphabet: &[&[u8]],
        words: u64,
        text: Text,
        whole: impl Fn(&[u8]) -> String,
    ) {
        let mut seed = seed;
        let mut next = |n: u64| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) % n
        };
        for _ in 0..20_000 {
            let mut bytes = Vec::new();
            for _ in 0..next(words) {
                bytes.extend_from_slice(alphabet[next(alphabet.len() as u64) as usize]);
            }
            let whole = whole(&bytes);
            let mut shown = Shown::new(Some(text));
            let mut at = 0;
            while at < bytes.len() {
                let n = (1 + next(4) as usize).min(bytes.len() - at);
                assert!(shown.take(&bytes[at..at + n]));
                at += n;
            }
            let part = shown.finish(true).unwrap();
            assert_eq!(part.size, whole.len(), "{text:?} {bytes:x?}");
            assert_eq!(
                part.sha256,
                crate::message::sha256(whole.as_bytes()),
                "{text:?} {bytes:x?}"
            );
        }
    }

    #[test]
    fn utf16_read_in_pieces_is_utf16_read_whole_by_the_parse() {
        // Units that make pairs, surrogates alone, byte order marks of either order.
        let alphabet: [&[u8]; 9] = [
            b"A\x00",
            b"\x00A",
            b"\xe9\x00",
            b"\x3d\xd8",
            b"\x00\xde",
            b"\xd8\x3d",
            b"\xff\xfe",
            b"\xfe\xff",
            b"\x41",
        ];
        for charset in ["utf-16", "utf-16le", "utf-16be"] {
            let Some(text @ Text::Utf16(_)) = text_in(Some(charset)) else {
                panic!("{charset} is read as UTF-16");
            };
            let parse =
                mail_parser::decoders::charsets::map::charset_decoder(charset.as_bytes()).unwrap();
            read_in_pieces_as_whole(11, &alphabet, 10, text, parse);
        }
    }

    #[test]
    fn utf8_read_in_pieces_is_utf8_read_whole() {
        let alphabet: [&[u8]; 8] = [
            b"a",
            b"\xc3\xa9",
            b"\xe6\xb3\xa8",
            b"\xf0\x9f\x98\x80",
            b"\xc3",
            b"\xa9",
            b"\xff",
            b"\xed\xa0\x80",
        ];
        read_in_pieces_as_whole(7, &alphabet, 8, Text::Utf8, |b| {
            String::from_utf8_lossy(b).into_owned()
        });
    }

    #[test]
    fn a_text_attachment_is_set_aside_as_the_parse_shows_it_and_one_it_may_not_copied() {
        let text = "id;name;amount\r\n1;Caf\u{e9} \u{6ce8}\u{6587};42.00\r\n".repeat(400);
        let latin1 = b"caf\xe9;na\xefve;\xa342\r\n".repeat(99);
        let latin1_shown = "caf\u{e9};na\u{ef}ve;\u{a3}42\r\n".repeat(99);
        let utf16: Vec<u8> = "caf\u{e9}\r\n"
            .repeat(99)
            .encode_utf16()
            .flat_map(u16::to_le_bytes)
            .collect();
        let utf16_shown = "caf\u{e9}\r\n".repeat(99);
        let attach = |ct: &str, disposition: &str, data: &[u8]| {
            format!(
                "From: a@example.com\r\nSubject: s\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n\
                 --b1\r\nContent-Type: text/plain\r\n\r\nhello\r\n--b1\r\n\
                 Content-Type: {ct}\r\n{disposition}Content-Transfer-Encoding: base64\r\n\r\n\
                 {}--b1--\r\n",
                b64_lines(data, 76, "\r\n")
            )
        };
        let attached = "Content-Disposition: attachment; filename=a.csv\r\n";
        let ascii = b"plain ascii\r\n".repeat(99);
        let bad_utf8 = b"caf\xe9\r\n".repeat(99);
        let bad_utf8_shown = "caf\u{fffd}\r\n".repeat(99);
        let text_as_cp1252 = mail_parser::decoders::charsets::map::charset_decoder(b"us-ascii")
            .unwrap()(text.as_bytes());
        let headers = b"From: x@y\r\n".repeat(99);
        // Type, disposition, content, and what the parse shows of it when set aside.
        type Case<'a> = (&'a str, &'a str, &'a [u8], Option<&'a [u8]>);
        let cases: [Case<'_>; 11] = [
            (
                "text/csv; charset=utf-8",
                attached,
                text.as_bytes(),
                Some(text.as_bytes()),
            ),
            ("text/csv", attached, text.as_bytes(), Some(text.as_bytes())),
            (
                "text/plain; charset=us-ascii",
                attached,
                &ascii,
                Some(&ascii),
            ),
            // As the parse shows it: US-ASCII read as Windows-1252.
            (
                "text/plain; charset=us-ascii",
                attached,
                text.as_bytes(),
                Some(text_as_cp1252.as_bytes()),
            ),
            (
                "text/csv; charset=iso-8859-1",
                attached,
                &latin1,
                Some(latin1_shown.as_bytes()),
            ),
            (
                "text/csv; charset=windows-1252",
                attached,
                &latin1,
                Some(latin1_shown.as_bytes()),
            ),
            // Each byte that is not UTF-8 a replacement character.
            (
                "text/csv; charset=utf-8",
                attached,
                &bad_utf8,
                Some(bad_utf8_shown.as_bytes()),
            ),
            // UTF-16 (Windows' "Unicode" exports), read as the parse reads it.
            (
                "text/csv; charset=utf-16le",
                attached,
                &utf16,
                Some(utf16_shown.as_bytes()),
            ),
            ("text/csv; charset=utf-7", attached, &utf16, None),
            // The message's own text, and a delivery report's original headers, are parsed.
            ("text/plain; charset=utf-8", "", text.as_bytes(), None),
            ("text/rfc822-headers", attached, &headers, None),
        ];
        for (ct, disposition, data, shown) in cases {
            let raw = attach(ct, disposition, data);
            let s = of_slice(raw.as_bytes());
            assert_eq!(
                s.set_aside.len(),
                usize::from(shown.is_some()),
                "{ct} {disposition}"
            );
            if let Some(shown) = shown {
                assert_eq!(s.set_aside[0].size, shown.len(), "{ct}");
                let parsed = crate::message::parse(raw.as_bytes()).unwrap();
                assert_eq!(parsed.attachments[0].size, shown.len(), "{ct}");
                assert_eq!(
                    parsed.attachments[0].sha256,
                    crate::message::sha256(shown),
                    "{ct}"
                );
            } else {
                assert_eq!(s.bytes, raw.as_bytes());
            }
        }
    }

    #[test]
    fn spaces_and_tabs_in_base64_lines_are_skipped_as_the_parse_skips_them() {
        let data: Vec<u8> = (0..30_000u32).map(|i| (i * 13 % 256) as u8).collect();
        let body = b64_lines(&data, 76, "\r\n")
            .replace("\r\n", " \r\n")
            .replacen('Q', "\tQ", 3);
        let raw = with_attachment(&body);
        let s = of_slice(raw.as_bytes());
        assert_eq!(s.set_aside.len(), 1);
        assert_eq!(s.set_aside[0].size, data.len());
        // Not laid out again by the store: kept as received.
        assert!(s.kept.regions.is_empty());
        let parsed = crate::message::parse(raw.as_bytes()).unwrap();
        assert_eq!(parsed.attachments[0].sha256, crate::message::sha256(&data));
    }

    #[test]
    fn lines_longer_than_a_piece_and_lf_endings() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 256) as u8).collect();
        let raw = with_attachment(&b64_lines(&data, 300_000, "\n")).replace("\r\n", "\n");
        let s = of_slice(raw.as_bytes());
        assert_eq!(s.set_aside.len(), 1);
        assert_eq!(s.set_aside[0].size, data.len());
        assert!(String::from_utf8_lossy(&s.bytes).ends_with("\n--b1--\n"));
    }
}
