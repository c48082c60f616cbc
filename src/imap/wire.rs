//! What every IMAP step shares: the byte stream under a session ([`Conn`], watched by
//! [`super::guard`]), the timeout wrapper [`timed`], and the translation of async-imap's
//! errors into ours with the server's words cut short, and the quoting of sequence sets and
//! mailbox names. Used by `connect`, `session` and `idle`; it uses none of them.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, BufReader, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::guard::{Watch, excerpt};
use crate::error::{Error, Result};

/// The byte stream under an IMAP session: TLS, or plain when the config allows it, with a
/// watch over everything the server sends (`guard::Watch`).
#[derive(Debug)]
pub struct Conn {
    stream: Stream,
    watch: Watch,
    /// What was written since the last flush. async-imap writes a command in four pieces
    /// (tag, space, command, line end) and then flushes: held here, the command goes out
    /// whole, in one TLS record and one TCP segment, instead of four of each, each waking
    /// the server.
    out: Vec<u8>,
}

/// Writes wait in [`Conn`] for the flush up to this many bytes; a larger one (a message
/// given to APPEND) goes out as it comes.
const OUT_HELD: usize = 16 * 1024;

#[derive(Debug)]
enum Stream {
    /// Plain TCP (`tls = "none"`, or before STARTTLS).
    Plain(TcpStream),
    /// TLS over TCP (see [`TlsTcp`]).
    Tls(Box<TlsTcp>),
}

/// TLS over a TCP stream read [`READ_AHEAD`] bytes at a time, [`Paced`].
pub(super) type TlsTcp = TlsStream<BufReader<Paced>>;

/// How much the TCP stream under TLS reads at once. rustls asks for 4 KiB at a time: a sync
/// of 240 MB made 74,000 `recvfrom` calls, each with its share of the loopback's TCP work;
/// 64 KiB reads make a tenth as many.
pub(super) const READ_AHEAD: usize = 64 * 1024;

/// How long a read waits, in the middle of a long answer, once it has emptied the socket.
const PAUSE: Duration = Duration::from_millis(1);

/// Paced from this many bytes of an answer still to come.
const PACED_FROM: u64 = 1 << 20;

/// The TCP stream under TLS. In the middle of a long answer (many messages of a FETCH), a
/// read that empties the socket has the next one wait [`PAUSE`] before it looks again, and
/// find what came meanwhile. Without it the session's thread slept and woke for every few
/// pieces the server wrote: in a benchmark sync 2,000 to 16,000 times (a run's CPU rose with
/// the count), about 3,000 times with it, and the server, whose writes had to wake it, did
/// less too. A millisecond of a loopback transfer (about 170 KB in the benchmark) fits in a
/// socket's receive buffer, so the server is not held up; short exchanges and the last MiB
/// of an answer are read as they come.
#[derive(Debug)]
pub(super) struct Paced {
    tcp: TcpStream,
    /// Set by [`Conn`] before each read: whether the answer is long enough to pace.
    bulk: bool,
    pause: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Paced {
    pub(super) fn new(tcp: TcpStream) -> Paced {
        Paced {
            tcp,
            bulk: false,
            pause: None,
        }
    }
}

impl AsyncRead for Paced {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if let Some(pause) = this.pause.as_mut() {
            std::task::ready!(pause.as_mut().poll(cx));
            this.pause = None;
        }
        let (want, before) = (buf.remaining(), buf.filled().len());
        std::task::ready!(Pin::new(&mut this.tcp).poll_read(cx, buf))?;
        let got = buf.filled().len() - before;
        if this.bulk && got > 0 && got < want {
            this.pause = Some(Box::pin(tokio::time::sleep(PAUSE)));
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Paced {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}

impl Conn {
    pub(super) fn plain(tcp: TcpStream) -> Conn {
        Conn {
            stream: Stream::Plain(tcp),
            watch: Watch::default(),
            out: Vec::new(),
        }
    }

    pub(super) fn tls(tls: TlsTcp) -> Conn {
        Conn {
            stream: Stream::Tls(Box::new(tls)),
            watch: Watch::default(),
            out: Vec::new(),
        }
    }

    /// The TCP stream of a connection that is not (yet) TLS, for STARTTLS.
    pub(super) fn into_plain(self) -> Option<TcpStream> {
        // STARTTLS was flushed before its answer came: nothing waits to go out.
        debug_assert!(self.out.is_empty());
        match self.stream {
            Stream::Plain(tcp) => Some(tcp),
            Stream::Tls(_) => None,
        }
    }

    /// The watch over what the server sends.
    pub(crate) fn watch(&mut self) -> &mut Watch {
        &mut self.watch
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if let Some(why) = this.watch.refused() {
            return Poll::Ready(Err(std::io::Error::other(why.to_owned())));
        }
        let before = buf.filled().len();
        let r = match &mut this.stream {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => {
                s.get_mut().0.get_mut().bulk = this.watch.expected_left() >= PACED_FROM;
                Pin::new(s.as_mut()).poll_read(cx, buf)
            }
        };
        if let Poll::Ready(Ok(())) = r {
            let new = buf.filled().get(before..).unwrap_or_default();
            if new.is_empty() {
                this.watch.eof();
            } else if let Err(why) = this.watch.see(new) {
                // Not handed on: async-imap never sees (nor allocates for) refused bytes.
                buf.set_filled(before);
                return Poll::Ready(Err(std::io::Error::other(why)));
            }
        }
        r
    }
}

impl Conn {
    /// Writes `buf` to the stream (some of it: the count).
    fn poll_send(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let r = match &mut self.stream {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        };
        // Writing to a connection the server has closed: say that, not "Broken pipe".
        if let Poll::Ready(Err(e)) = &r {
            use std::io::ErrorKind as K;
            if matches!(
                e.kind(),
                K::BrokenPipe | K::ConnectionReset | K::ConnectionAborted
            ) {
                self.watch.eof();
            }
        }
        r
    }

    /// Writes out what waits in [`Conn::out`].
    fn poll_send_held(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while !self.out.is_empty() {
            let out = std::mem::take(&mut self.out);
            let r = self.poll_send(cx, &out);
            self.out = out;
            match std::task::ready!(r)? {
                0 => return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into())),
                n => drop(self.out.drain(..n)),
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if this.out.len() + buf.len() > OUT_HELD {
            std::task::ready!(this.poll_send_held(cx))?;
            if buf.len() > OUT_HELD {
                return this.poll_send(cx, buf);
            }
        }
        this.out.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_send_held(cx))?;
        match &mut this.stream {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_send_held(cx))?;
        match &mut this.stream {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// An IMAP connection before login.
pub type Client = async_imap::Client<Conn>;

/// Runs `fut` under `limit`, naming the host and the step when it runs out.
pub(crate) async fn timed<T>(
    host: &str,
    limit: Duration,
    what: &str,
    fut: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    match tokio::time::timeout(limit, fut).await {
        Ok(r) => r,
        Err(_) => Err(Error::Timeout {
            host: host.to_owned(),
            what: what.to_owned(),
            secs: limit.as_secs(),
        }),
    }
}

/// The human part of a tagged NO/BAD as async-imap renders it: `code: None, info:
/// Some("[AUTHENTICATIONFAILED] Authentication failed.")` for some commands, `outcome: Outcome
/// { code: None, information: Some("Mailbox doesn't exist: Nope") }` for others; the server's
/// own text, with none of that Rust around it. At most a few hundred characters of it.
pub(crate) fn server_text(m: &str) -> String {
    let quoted = ["information: Some(\"", "info: Some(\""]
        .iter()
        .find_map(|k| m.split_once(k).map(|(_, rest)| rest));
    let text = match quoted {
        Some(rest) => debug_string(rest),
        None if m.contains(": None") && m.contains("info") => "(the server gave no reason)".into(),
        None => m.to_owned(),
    };
    excerpt(text.as_bytes(), SERVER_TEXT)
}

/// The string that a `Debug`-quoted string starting right after its opening quote holds.
fn debug_string(rest: &str) -> String {
    let mut out = String::new();
    let mut chars = rest.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => break,
            '\\' => match chars.next() {
                Some('n') => out.push('\n'),
                Some('r') => out.push('\r'),
                Some('t') => out.push('\t'),
                Some(other) => out.push(other),
                None => break,
            },
            c => out.push(c),
        }
    }
    out
}

/// How many characters of what a server said an error quotes.
pub(super) const SERVER_TEXT: usize = 300;

/// A read or write error under async-imap, as short text.
pub(super) fn io_err(host: String, e: &std::io::Error) -> Error {
    let text = e.to_string();
    // async-imap's parse error: a nom error (its input as a byte array), then the whole
    // buffer; only the start of the buffer is worth showing.
    match text.split_once(" during parsing of ") {
        Some((_, buffer)) => Error::Protocol {
            host,
            message: format!(
                "the server sent something that is not IMAP: {}",
                excerpt(buffer.trim_matches('"').as_bytes(), SERVER_TEXT)
            ),
        },
        None => Error::Network {
            host,
            message: excerpt(text.as_bytes(), SERVER_TEXT),
        },
    }
}

/// An async-imap error as ours, naming the host and quoting the server briefly.
pub(crate) fn imap_err(host: &str, e: async_imap::error::Error) -> Error {
    use async_imap::error::Error as E;
    let host = host.to_owned();
    match e {
        E::Io(e) => io_err(host, &e),
        E::ConnectionLost => Error::Network {
            host,
            message: "connection lost".into(),
        },
        E::No(m) => Error::Protocol {
            host,
            message: format!("server said NO: {}", server_text(&m)),
        },
        E::Bad(m) => Error::Protocol {
            host,
            message: format!("server said BAD: {}", server_text(&m)),
        },
        other => Error::Protocol {
            host,
            message: excerpt(other.to_string().as_bytes(), SERVER_TEXT),
        },
    }
}

/// Formats sorted, deduplicated UIDs as a compact IMAP sequence set (`1:5,7,9:12`).
pub fn uid_set(uids: &[u32]) -> String {
    let mut out = String::new();
    for (start, end) in consecutive(uids) {
        if !out.is_empty() {
            out.push(',');
        }
        if start == end {
            out.push_str(&uids[start].to_string());
        } else {
            out.push_str(&format!("{}:{}", uids[start], uids[end]));
        }
    }
    out
}

/// Splits sorted, deduplicated UIDs into runs whose [`uid_set`] is at most `max_len`
/// characters (a run of one UID longer than that is still a run): a command per run stays
/// far below servers' line limits, and a folder's backlog, mostly ranges, goes in one.
pub fn uid_runs(uids: &[u32], max_len: usize) -> Vec<&[u32]> {
    let digits = |n: u32| n.checked_ilog10().map_or(1, |d| d as usize + 1);
    let mut runs = Vec::new();
    let (mut from, mut len) = (0, 0);
    for (start, end) in consecutive(uids) {
        let range = if end > start {
            digits(uids[start]) + 1 + digits(uids[end])
        } else {
            digits(uids[start])
        };
        let with = if len == 0 { range } else { len + 1 + range };
        if len > 0 && with > max_len {
            runs.push(&uids[from..start]);
            (from, len) = (start, range);
        } else {
            len = with;
        }
    }
    if from < uids.len() {
        runs.push(&uids[from..]);
    }
    runs
}

/// The ranges of consecutive UIDs in sorted `uids`, as the indices of their first and last.
fn consecutive(uids: &[u32]) -> impl Iterator<Item = (usize, usize)> + '_ {
    let mut next = 0;
    std::iter::from_fn(move || {
        let start = next;
        uids.get(start)?;
        let mut end = start;
        while uids
            .get(end + 1)
            .is_some_and(|&n| n == uids[end].wrapping_add(1))
        {
            end += 1;
        }
        next = end + 1;
        Some((start, end))
    })
}

/// Quotes a mailbox name as an IMAP quoted string.
pub(super) fn quote(name: &str) -> String {
    let mut s = String::with_capacity(name.len() + 2);
    s.push('"');
    for c in name.chars() {
        if c == '"' || c == '\\' {
            s.push('\\');
        }
        s.push(c);
    }
    s.push('"');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_text_is_what_the_server_said_without_rust_around_it() {
        assert_eq!(
            server_text(
                "outcome: Outcome { code: None, information: Some(\"Mailbox doesn't exist: \\\"Nope\\\"\") }"
            ),
            "Mailbox doesn't exist: \"Nope\""
        );
        assert_eq!(
            server_text(
                "code: None, info: Some(\"[AUTHENTICATIONFAILED] Authentication failed.\")"
            ),
            "[AUTHENTICATIONFAILED] Authentication failed."
        );
        assert_eq!(
            server_text("outcome: Outcome { code: None, information: None }"),
            "(the server gave no reason)"
        );
        assert_eq!(server_text("plain words"), "plain words");
    }

    /// What is written waits for the flush and then goes out whole, in order, a write
    /// larger than what is held included.
    #[tokio::test]
    async fn writes_wait_for_the_flush_and_go_out_whole_in_order() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tcp = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (mut peer, _) = listener.accept().await.unwrap();
        let mut conn = Conn::plain(tcp);
        for piece in [&b"A1"[..], b" ", b"NOOP", b"\r\n"] {
            conn.write_all(piece).await.unwrap();
        }
        let mut buf = [0u8; 64];
        let early = tokio::time::timeout(Duration::from_millis(100), peer.read(&mut buf)).await;
        assert!(early.is_err(), "sent before the flush: {early:?}");
        conn.flush().await.unwrap();
        let mut got = vec![0u8; 9];
        peer.read_exact(&mut got).await.unwrap();
        assert_eq!(got, b"A1 NOOP\r\n");
        let big = vec![b'x'; OUT_HELD + 1];
        conn.write_all(b"A2 ").await.unwrap();
        conn.write_all(&big).await.unwrap();
        conn.write_all(b"\r\n").await.unwrap();
        conn.flush().await.unwrap();
        let mut got = vec![0u8; 3 + big.len() + 2];
        peer.read_exact(&mut got).await.unwrap();
        assert_eq!(&got[..3], b"A2 ");
        assert_eq!(&got[3..3 + big.len()], &big[..]);
        assert_eq!(&got[3 + big.len()..], b"\r\n");
    }

    #[test]
    fn uid_runs_keep_each_set_within_the_length() {
        let uids: Vec<u32> = (1..=20_000).chain((30_000..40_000).step_by(2)).collect();
        for max in [1, 5, 12, 100, 4000, usize::MAX] {
            let runs = uid_runs(&uids, max);
            assert_eq!(runs.concat(), uids, "max {max}");
            for r in &runs {
                let set = uid_set(r);
                assert!(
                    set.len() <= max || r.len() == 1 || !set.contains(','),
                    "{set}"
                );
                assert!(!r.is_empty());
            }
        }
        // A backlog of ranges goes in one; scattered UIDs in several, each as full as fits.
        assert_eq!(uid_runs(&uids[..20_000], 4000).len(), 1);
        let scattered = uid_runs(&uids[20_000..], 4000);
        assert_eq!(scattered.len(), 5000 * 6 / 4000 + 1);
        let (last, full) = scattered.split_last().unwrap();
        assert!(full.iter().all(|r| uid_set(r).len() > 4000 - 6));
        assert!(!last.is_empty());
        assert!(uid_runs(&[], 10).is_empty());
        assert_eq!(uid_runs(&[u32::MAX], 3), [&[u32::MAX][..]]);
    }

    #[test]
    fn uid_sets_are_compact() {
        assert_eq!(uid_set(&[]), "");
        assert_eq!(uid_set(&[7]), "7");
        assert_eq!(uid_set(&[1, 2, 3, 5, 7, 8]), "1:3,5,7:8");
        assert_eq!(
            uid_set(&[u32::MAX - 1, u32::MAX]),
            format!("{}:{}", u32::MAX - 1, u32::MAX)
        );
    }

    #[test]
    fn quoting() {
        assert_eq!(quote(r#"a "b"\c"#), r#""a \"b\"\\c""#);
    }

    /// A loopback TCP pair: the `Paced` reading end and the writing end.
    async fn paced_pair() -> (Paced, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (ours, theirs) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (Paced::new(ours.unwrap()), theirs.unwrap().0)
    }

    #[tokio::test]
    async fn a_long_answer_is_read_in_pauses_and_whole() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut paced, mut server) = paced_pair().await;
        paced.bulk = true;
        server.write_all(b"first").await.unwrap();
        let mut buf = vec![0u8; 64 << 10];
        // Before the pause is set, so that it bounds the wait from below.
        let t0 = std::time::Instant::now();
        let n = paced.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"first");
        assert!(
            paced.pause.is_some(),
            "a read that emptied the socket pauses the next"
        );
        server.write_all(b"second").await.unwrap();
        let n = paced.read(&mut buf).await.unwrap();
        assert!(t0.elapsed() >= PAUSE, "{:?}", t0.elapsed());
        assert_eq!(&buf[..n], b"second");

        // Megabytes, written piece by piece: every byte arrives, in order.
        let data: Vec<u8> = (0..4u32 << 20).map(|i| (i % 251) as u8).collect();
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            for piece in sent.chunks(16 << 10) {
                server.write_all(piece).await.unwrap();
                tokio::task::yield_now().await;
            }
        });
        let mut got = vec![0u8; data.len()];
        paced.read_exact(&mut got).await.unwrap();
        writer.await.unwrap();
        assert!(got == data);
    }

    #[tokio::test]
    async fn a_short_exchange_is_read_without_a_pause() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut paced, mut server) = paced_pair().await;
        server.write_all(b"a OK done\r\n").await.unwrap();
        let mut buf = [0u8; 1024];
        let n = paced.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"a OK done\r\n");
        assert!(paced.pause.is_none());
    }
}
