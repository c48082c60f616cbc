//! How raw messages are kept: zstd-compressed, one compression context per thread. CPU only,
//! callable from any thread; the store writes and reads the bytes, `pipeline::prepare` packs
//! them off the store's thread.

use std::io::{Read, Seek, SeekFrom, Write};

use super::db::{Db, params};
use crate::error::{Error, Result};

/// The codec of a message whose bytes are in `raw_part` rows (one zstd stream cut into
/// parts, in `seq` order), its `message.raw` empty: a spooled message, never held whole.
pub const PARTS: &str = "zstd-parts";

/// About how many compressed bytes one `raw_part` row holds.
const PART: usize = 1 << 20;

/// How much of a spool file is read and compressed at a time.
const READ: usize = 256 << 10;

/// zstd level for raw messages: level 1 keeps compression well ahead of the network.
const RAW_ZSTD_LEVEL: i32 = 1;

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
        "none" => Ok(data.to_vec()),
        other => Err(Error::Codec(format!("unknown codec {other}"))),
    }
}

/// The message bytes to store with a message row.
#[derive(Debug, Clone, Copy)]
pub enum RawBytes<'a> {
    /// Already compressed ([`pack`]), for `message.raw`.
    Packed(&'a [u8]),
    /// In a spool file (`path` for errors), compressed into `raw_part` rows as it is read.
    Spooled(&'a std::fs::File, &'a std::path::Path),
}

/// Compresses the file `f` (from its start) as one zstd stream into `raw_part` rows of
/// message `row`, [`PART`] to [`PART`] + [`READ`] bytes each, in the caller's transaction.
/// Holds about one part and one read in memory, whatever the file's size.
pub fn write_parts(c: &Db, row: i64, mut f: &std::fs::File, path: &std::path::Path) -> Result<()> {
    let io = |e: std::io::Error| Error::io(path, e);
    let zstd = |e: std::io::Error| Error::Codec(format!("zstd: {e}"));
    f.seek(SeekFrom::Start(0)).map_err(io)?;
    let mut enc =
        zstd::stream::write::Encoder::new(Vec::with_capacity(PART + READ), RAW_ZSTD_LEVEL)
            .map_err(zstd)?;
    let mut buf = vec![0u8; READ];
    let mut seq = 0i64;
    let mut put = |data: &[u8]| -> Result<()> {
        c.execute(
            "INSERT INTO raw_part (message, seq, raw) VALUES (?1, ?2, ?3)",
            params![row, seq, data],
        )?;
        seq += 1;
        Ok(())
    };
    loop {
        let n = f.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        enc.write_all(buf.get(..n).unwrap_or_default())
            .map_err(zstd)?;
        if enc.get_ref().len() >= PART {
            put(enc.get_ref())?;
            enc.get_mut().clear();
        }
    }
    let rest = enc.finish().map_err(zstd)?;
    put(&rest)
}
