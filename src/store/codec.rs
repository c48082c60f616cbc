//! How raw messages are kept: zstd-compressed, one compression context per thread. CPU only,
//! callable from any thread; the store writes and reads the bytes, `pipeline::prepare` packs
//! them off the store's thread.

use crate::error::{Error, Result};

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

/// Restores a stored raw message.
pub fn decompress(codec: &str, data: &[u8], size: usize) -> Result<Vec<u8>> {
    match codec {
        "zstd" => zstd::bulk::decompress(data, size.max(1))
            .map_err(|e| Error::Codec(format!("zstd: {e}"))),
        "none" => Ok(data.to_vec()),
        other => Err(Error::Codec(format!("unknown codec {other}"))),
    }
}
