//! How raw messages are kept: zstd-compressed, one compression context per thread. CPU only,
//! callable from any thread; the store writes and reads the bytes, `pipeline::prepare` packs
//! them off the store's thread.

use std::io::{Read, Write};

use base64::Engine as _;

use super::db::{Db, params};
use crate::error::{Error, Result};
use crate::skeleton::{Kept, Region};

/// The codec of a message whose bytes are in `raw_part` rows (one zstd stream cut into
/// parts, in `seq` order), its `message.raw` empty: a spooled message, never held whole.
pub const PARTS: &str = "zstd-parts";

/// The codec of a message whose regular base64 bodies are kept decoded (see [`pack_message`]).
pub const B64: &str = "zstd-b64";

/// About how many compressed bytes one `raw_part` row holds.
const PART: usize = 1 << 20;

/// How much of a spool file is read and compressed at a time.
const READ: usize = 256 << 10;

/// zstd level for raw messages. Most messages are a few KiB, where zstd spends its time
/// building entropy tables rather than finding matches: the first fast level (-1) leaves
/// literals as they are and compresses the benchmark's 10,000 small messages in 16 instead
/// of 24 µs each, to 44 % of their size instead of 36 % (the whole benchmark store: 210
/// instead of 207 MB, for 5 % less sync CPU). Attachments, the bulk of a store's bytes, are
/// mostly compressed already (images, PDF, Office files).
const RAW_ZSTD_LEVEL: i32 = -1;

thread_local! {
    /// One compression context per thread: a fresh one per message costs more than
    /// compressing a small message.
    static PACKER: std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// Compresses a raw message for the store (CPU only; callable from any thread).
pub fn pack(raw: &[u8]) -> Result<Vec<u8>> {
    PACKER.with(|p| {
        let mut p = p.borrow_mut();
        if p.is_none() {
            *p = Some(
                zstd::bulk::Compressor::new(RAW_ZSTD_LEVEL)
                    .map_err(|e| Error::Codec(format!("zstd: {e}")))?,
            );
        }
        match p.as_mut() {
            Some(c) => c
                .compress(raw)
                .map_err(|e| Error::Codec(format!("zstd: {e}"))),
            None => Err(Error::Codec("zstd: no context".into())),
        }
    })
}

/// Compresses a raw message whose regular base64 bodies `kept` holds decoded (see
/// [`crate::skeleton::Kept`]): returns the bytes and their codec.
///
/// zstd's entropy stage spends most of a message's compression time on base64 and wins back
/// only the quarter that base64 adds; the decoded bytes cost nothing to set down and compress
/// (fast) when they can. So the store keeps, compressed as zstd frames one after another:
///
/// ```text
/// decoded bodies | the message without them | per body: start, length, decoded length,
///                                              width, CR LF (5 × u64 LE) | body count (u64 LE)
/// ```
///
/// and [`decompress`] writes each body back as base64 lines, byte for byte. A body that
/// would not compress (a sample of it does not: images, archives, most PDFs) goes in a frame
/// of stored blocks, written as it is ([`stored_frame`]); the rest in compressed frames.
/// Either way the frames decode, one after another, to the bytes above. Without a body to
/// keep, plain zstd (`zstd`).
pub fn pack_message(raw: &[u8], kept: Kept) -> Result<(Vec<u8>, &'static str)> {
    if kept.regions.is_empty() || !fits(raw.len(), &kept.regions) {
        return Ok((pack(raw)?, "zstd"));
    }
    let Kept { regions, mut bytes } = kept;
    // Which bodies go as they are, before `bytes` gets the rest of the message.
    let mut stored = Vec::new();
    let mut at = 0;
    for r in &regions {
        let end = at + r.decoded;
        if !compresses(bytes.get(at..end).unwrap_or_default())? {
            stored.push(at..end);
        }
        at = end;
    }
    // Exactly what is added (the walk made room for it): the text around the bodies, and
    // the table.
    let bodies: usize = regions.iter().map(|r| r.len).sum();
    bytes.reserve(raw.len().saturating_sub(bodies) + regions.len() * 40 + 8);
    let mut at = 0;
    for r in &regions {
        bytes.extend_from_slice(raw.get(at..r.start).unwrap_or_default());
        at = r.start + r.len;
    }
    bytes.extend_from_slice(raw.get(at..).unwrap_or_default());
    for r in &regions {
        for n in [r.start, r.len, r.decoded, r.width, usize::from(r.crlf)] {
            bytes.extend_from_slice(&(n as u64).to_le_bytes());
        }
    }
    bytes.extend_from_slice(&(regions.len() as u64).to_le_bytes());
    if stored.is_empty() {
        return Ok((pack(&bytes)?, B64));
    }
    // Room for all of it: zstd adds at most about 1/256 to what it cannot compress, a stored
    // frame 3 bytes a block.
    let mut out = Vec::with_capacity(bytes.len() + bytes.len() / 128 + 64 * (stored.len() + 1));
    let mut from = 0;
    for s in stored {
        if s.start > from {
            out.extend_from_slice(&pack(bytes.get(from..s.start).unwrap_or_default())?);
        }
        stored_frame(&mut out, bytes.get(s.clone()).unwrap_or_default());
        from = s.end;
    }
    out.extend_from_slice(&pack(bytes.get(from..).unwrap_or_default())?);
    Ok((out, B64))
}

/// Whether `body` is worth compressing: bodies under 32 KiB always are (they cost little
/// either way); of a larger one, a sample of 8 KiB from its middle must shrink by a
/// sixteenth. Compressing what does not shrink (JPEG, ZIP, the streams of a PDF) still costs
/// zstd a search for matches over every byte: half of what packing a message with a 150 KB
/// attachment cost (`bench stages`, callgrind).
fn compresses(body: &[u8]) -> Result<bool> {
    const SAMPLE: usize = 8 << 10;
    if body.len() < 4 * SAMPLE {
        return Ok(true);
    }
    let from = body.len() / 2 - SAMPLE / 2;
    let sample = body.get(from..from + SAMPLE).unwrap_or_default();
    Ok(pack(sample)?.len() < SAMPLE - SAMPLE / 16)
}

/// Appends `data` to `out` as one zstd frame of stored ("raw") blocks, the frame zstd itself
/// writes for bytes it cannot compress (RFC 8878, section 3.1.1): any zstd decoder, an
/// older mailticket's included, reads it with the frames around it.
fn stored_frame(out: &mut Vec<u8>, data: &[u8]) {
    // Stored blocks of at most 128 KiB, in a window of 128 KiB: a decoder never needs more
    // memory for this frame, whatever its size.
    const BLOCK: usize = 128 << 10;
    out.reserve(13 + data.len() + 3 * (data.len() / BLOCK + 1));
    out.extend_from_slice(&0xFD2F_B528u32.to_le_bytes());
    // Frame header: the content size in 8 bytes, not a single segment (so a window
    // descriptor follows), no checksum, no dictionary; the window 2^(10 + 7) bytes.
    out.push(0b1100_0000);
    out.push(7 << 3);
    out.extend_from_slice(&(data.len() as u64).to_le_bytes());
    if data.is_empty() {
        // One last block, stored, of no bytes.
        out.extend_from_slice(&[1, 0, 0]);
        return;
    }
    let mut blocks = data.chunks(BLOCK).peekable();
    while let Some(block) = blocks.next() {
        // Block header (3 bytes LE): size << 3 | type (0: stored) << 1 | last block.
        let header = (block.len() as u32) << 3 | u32::from(blocks.peek().is_none());
        out.extend_from_slice(header.to_le_bytes().get(..3).unwrap_or_default());
        out.extend_from_slice(block);
    }
}

/// Whether `regions` are in order, apart, within `len` bytes, each as long as its decoded
/// length and layout say.
fn fits(len: usize, regions: &[Region]) -> bool {
    let mut at = 0;
    regions.iter().all(|r| {
        let ok = r.start >= at
            && r.start.checked_add(r.len).is_some_and(|end| end <= len)
            && encoded_len(r.decoded, r.width, r.crlf) == Some(r.len);
        at = r.start + r.len;
        ok
    })
}

/// The length of `decoded` bytes as base64 lines of `width` characters, each with its line end.
fn encoded_len(decoded: usize, width: usize, crlf: bool) -> Option<usize> {
    if width == 0 {
        return None;
    }
    let chars = decoded.div_ceil(3).checked_mul(4)?;
    let lines = chars.div_ceil(width);
    chars.checked_add(lines.checked_mul(if crlf { 2 } else { 1 })?)
}

/// Writes back a message kept by [`pack_message`], given its frame decompressed.
fn unpack_b64(data: &[u8], size: usize) -> Result<Vec<u8>> {
    let damaged = || Error::Codec("zstd-b64: damaged".into());
    let word = |at: usize| -> Result<usize> {
        let b: [u8; 8] = data
            .get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(damaged)?;
        usize::try_from(u64::from_le_bytes(b)).map_err(|_| damaged())
    };
    let count_at = data.len().checked_sub(8).ok_or_else(damaged)?;
    let count = word(count_at)?;
    let table = count
        .checked_mul(40)
        .and_then(|n| count_at.checked_sub(n))
        .ok_or_else(damaged)?;
    let mut regions = Vec::with_capacity(count);
    for i in 0..count {
        let f = |k: usize| word(table + i * 40 + k * 8);
        regions.push(Region {
            start: f(0)?,
            len: f(1)?,
            decoded: f(2)?,
            width: f(3)?,
            crlf: f(4)? != 0,
        });
    }
    if !fits(size, &regions) {
        return Err(damaged());
    }
    let decoded: usize = regions.iter().map(|r| r.decoded).sum();
    let (mut bodies, mut rest) = (
        data.get(..decoded).ok_or_else(damaged)?,
        data.get(decoded..table).ok_or_else(damaged)?,
    );
    let mut out = Vec::with_capacity(size);
    let mut line = String::new();
    for r in &regions {
        let (before, after) = r
            .start
            .checked_sub(out.len())
            .and_then(|n| rest.split_at_checked(n))
            .ok_or_else(damaged)?;
        out.extend_from_slice(before);
        rest = after;
        let (body, others) = bodies.split_at_checked(r.decoded).ok_or_else(damaged)?;
        bodies = others;
        line.clear();
        base64::engine::general_purpose::STANDARD.encode_string(body, &mut line);
        for chars in line.as_bytes().chunks(r.width) {
            out.extend_from_slice(chars);
            out.extend_from_slice(if r.crlf { b"\r\n" } else { b"\n" });
        }
    }
    out.extend_from_slice(rest);
    if out.len() != size {
        return Err(damaged());
    }
    Ok(out)
}

/// Restores a stored raw message (for [`PARTS`], `data` is its parts joined in order).
pub fn decompress(codec: &str, data: &[u8], size: usize) -> Result<Vec<u8>> {
    let zstd = |e: std::io::Error| Error::Codec(format!("zstd: {e}"));
    match codec {
        "zstd" => zstd::bulk::decompress(data, size.max(1)).map_err(zstd),
        PARTS => {
            let mut out = Vec::with_capacity(size);
            zstd::stream::read::Decoder::new(data)
                .and_then(|mut d| d.read_to_end(&mut out))
                .map_err(zstd)?;
            Ok(out)
        }
        B64 => {
            let mut frame = Vec::with_capacity(size);
            zstd::stream::read::Decoder::new(data)
                .and_then(|mut d| d.read_to_end(&mut frame))
                .map_err(zstd)?;
            unpack_b64(&frame, size)
        }
        "none" => Ok(data.to_vec()),
        other => Err(Error::Codec(format!("unknown codec {other}"))),
    }
}

/// The message bytes to store with a message row.
#[derive(Debug, Clone, Copy)]
pub enum RawBytes<'a> {
    /// Already compressed ([`pack`] or [`pack_message`]) with this codec, for `message.raw`.
    Packed(&'a [u8], &'static str),
    /// In a spool file (`path` for errors), compressed into `raw_part` rows as it is read.
    Spooled(&'a std::fs::File, &'a std::path::Path),
}

/// Compresses the file `f` (from its start) as one zstd stream into `raw_part` rows of
/// message `row`, [`PART`] to [`PART`] + [`READ`] bytes each, in the caller's transaction.
/// Holds about one part and one read in memory, whatever the file's size.
pub fn write_parts(c: &Db, row: i64, f: &std::fs::File, path: &std::path::Path) -> Result<()> {
    let zstd = |e: std::io::Error| Error::Codec(format!("zstd: {e}"));
    let mut enc =
        zstd::stream::write::Encoder::new(Vec::with_capacity(PART + READ), RAW_ZSTD_LEVEL)
            .map_err(zstd)?;
    let mut seq = 0i64;
    let mut put = |data: &[u8]| -> Result<()> {
        c.execute(
            "INSERT INTO raw_part (message, seq, raw) VALUES (?1, ?2, ?3)",
            params![row, seq, data],
        )?;
        seq += 1;
        Ok(())
    };
    crate::spool::each_piece(f, path, READ, |piece| {
        enc.write_all(piece).map_err(zstd)?;
        if enc.get_ref().len() >= PART {
            put(enc.get_ref())?;
            enc.get_mut().clear();
        }
        Ok(())
    })?;
    let rest = enc.finish().map_err(zstd)?;
    put(&rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A message with one attachment of `data`, base64 in lines of `width`.
    fn with_attachment(data: &[u8], width: usize, eol: &str) -> Vec<u8> {
        with_attachments(&[data], width, eol)
    }

    /// A message with an attachment of each of `data`, base64 in lines of `width`.
    fn with_attachments(data: &[&[u8]], width: usize, eol: &str) -> Vec<u8> {
        let mut parts = String::new();
        for d in data {
            let enc = base64::engine::general_purpose::STANDARD.encode(d);
            let body: String = enc
                .as_bytes()
                .chunks(width)
                .map(|c| format!("{}{eol}", String::from_utf8_lossy(c)))
                .collect();
            parts += &format!(
                "--b{eol}Content-Type: application/pdf{eol}Content-Transfer-Encoding: base64{eol}{eol}\
                 {body}{eol}"
            );
        }
        format!(
            "From: a@example.com{eol}Subject: s{eol}Content-Type: multipart/mixed; boundary=b{eol}{eol}\
             --b{eol}Content-Type: text/plain{eol}{eol}hello{eol}{parts}--b--{eol}"
        )
        .into_bytes()
    }

    /// `n` bytes no compressor can shrink.
    fn noise(n: usize, seed: u64) -> Vec<u8> {
        let mut rng = fastrand::Rng::with_seed(seed);
        (0..n).map(|_| rng.u8(..)).collect()
    }

    /// `n` bytes that compress well.
    fn lines(n: usize) -> Vec<u8> {
        b"invoice line, 42.00 EUR\n".repeat(n / 24 + 1)[..n].to_vec()
    }

    fn kept(raw: &[u8]) -> (Vec<u8>, &'static str) {
        pack_message(raw, crate::skeleton::of_slice(raw).kept).unwrap()
    }

    #[test]
    fn a_message_kept_decoded_comes_back_byte_for_byte() {
        let data: Vec<u8> = (0..40_000u32).map(|i| (i * 7919 % 256) as u8).collect();
        for (len, width, eol) in [(40_000, 76, "\r\n"), (39_999, 64, "\n"), (1, 76, "\r\n")] {
            let raw = with_attachment(&data[..len], width, eol);
            let (packed, codec) = kept(&raw);
            assert_eq!(codec, B64);
            assert_eq!(decompress(codec, &packed, raw.len()).unwrap(), raw);
        }
        // Compressible content still compresses.
        let raw = with_attachment(&lines(48_000), 76, "\r\n");
        let (packed, codec) = kept(&raw);
        assert_eq!(codec, B64);
        assert!(
            packed.len() < raw.len() / 20,
            "{} of {}",
            packed.len(),
            raw.len()
        );
    }

    #[test]
    fn bodies_that_do_not_compress_are_stored_as_they_are_and_come_back() {
        let (n1, n2, text) = (noise(150_000, 1), noise(300_000, 2), lines(100_000));
        let cases: [(&[&[u8]], usize); 6] = [
            (&[&n1], 150_000),
            (&[&n2], 300_000),
            (&[&text, &n1], 150_000),
            (&[&n1, &text, &n2], 450_000),
            (&[&n1, &n2, &text], 450_000),
            (&[&text, &lines(50_000)], 0),
        ];
        for (bodies, stored) in cases {
            let raw = with_attachments(bodies, 76, "\r\n");
            let (packed, codec) = kept(&raw);
            assert_eq!(codec, B64);
            assert_eq!(decompress(codec, &packed, raw.len()).unwrap(), raw);
            // Each body that does not compress is there in a stored frame of its own; the
            // rest is compressed.
            let mut found = 0;
            for b in bodies.iter().filter(|b| !compresses(b).unwrap()) {
                let mut frame = Vec::new();
                stored_frame(&mut frame, b);
                assert!(memchr::memmem::find(&packed, &frame).is_some());
                found += b.len();
            }
            assert_eq!(found, stored);
            let decoded: usize = bodies.iter().map(|b| b.len()).sum();
            assert!(packed.len() < stored * 101 / 100 + (decoded - stored) / 10 + 500);
        }
    }

    #[test]
    fn a_stored_frame_is_what_zstd_reads() {
        for n in [0, 1, 5000, 128 << 10, (128 << 10) + 1, 300_000] {
            let data = noise(n, n as u64);
            let mut frame = Vec::new();
            stored_frame(&mut frame, &data);
            // The one-shot decoder, the streaming one, and both across frames.
            assert_eq!(zstd::bulk::decompress(&frame, n.max(1)).unwrap(), data);
            let mut two = pack(b"before ").unwrap();
            two.extend_from_slice(&frame);
            two.extend_from_slice(&pack(b" after").unwrap());
            let mut out = Vec::new();
            zstd::stream::read::Decoder::new(&two[..])
                .unwrap()
                .read_to_end(&mut out)
                .unwrap();
            assert_eq!(
                out,
                [&b"before "[..], &data, b" after"].concat(),
                "{n} bytes"
            );
        }
    }

    #[test]
    fn a_damaged_frame_is_an_error_not_a_panic() {
        let raw = with_attachment(&[7u8; 5000], 76, "\r\n");
        let (packed, codec) = kept(&raw);
        let frame = zstd::bulk::decompress(&packed, 1 << 20).unwrap();
        assert!(decompress(codec, &packed, raw.len() + 1).is_err());
        for cut in [0, 1, 8, 40, frame.len() / 2, frame.len() - 1] {
            let mut f = frame.clone();
            f.truncate(cut);
            assert!(unpack_b64(&f, raw.len()).is_err(), "cut at {cut}");
        }
        let mut f = frame.clone();
        let n = f.len();
        f[n - 8..].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(unpack_b64(&f, raw.len()).is_err());
        // A region that says it is longer than its decoded bytes make it.
        let mut f = frame;
        let len_at = n - 8 - 40 + 8;
        let len = u64::from_le_bytes(f[len_at..len_at + 8].try_into().unwrap());
        f[len_at..len_at + 8].copy_from_slice(&(len + 1).to_le_bytes());
        assert!(unpack_b64(&f, raw.len()).is_err());
    }
}
