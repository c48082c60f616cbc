//! A large message's bytes on disk, between its fetch and its transaction: a sync fetches a
//! message over [`SPOOL_OVER`] bytes in parts appended to a spool file (`import`, `ingest`
//! and a sync over Microsoft Graph put one there as they read it), parses it from there and
//! stores it compressed in parts, so that it is never held whole in memory.
//!
//! A spool file lives beside the store (an SQLite store's folder; the temporary folder for a
//! PostgreSQL store), is the owner's only (0600), has a name of its own
//! (`.mailticket-spool-PID-N`), and is removed when its [`Spool`] is dropped: once the
//! message is stored, or on any error. A file left behind by a process that died is removed
//! by [`sweep`] when the next one starts.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};

/// A message larger than this (by RFC822.SIZE) is fetched in parts into a spool file.
pub const SPOOL_OVER: u64 = 2 << 20;

/// How much of a spooled message one partial fetch asks for.
pub const PART_BYTES: u32 = 1 << 20;

/// What every spool file's name starts with.
const PREFIX: &str = ".mailticket-spool-";

/// Spool files made by this process so far, for their names.
static MADE: AtomicU64 = AtomicU64::new(0);

/// One message's bytes in a file of their own, removed on drop.
#[derive(Debug)]
pub struct Spool {
    path: PathBuf,
    file: File,
    len: u64,
}

impl Spool {
    /// A new, empty spool file in `dir`, readable and writable by the owner only.
    pub fn create(dir: &Path) -> Result<Spool> {
        let n = MADE.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!("{PREFIX}{}-{n}", std::process::id()));
        let mut open = std::fs::OpenOptions::new();
        open.read(true).write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut open, 0o600);
        let file = open.open(&path).map_err(|e| Error::io(&path, e))?;
        Ok(Spool { path, file, len: 0 })
    }

    /// Appends `data`. A full disk is an error that names the file.
    pub fn append(&mut self, data: &[u8]) -> Result<()> {
        self.file
            .write_all(data)
            .map_err(|e| Error::io(&self.path, e))?;
        self.len += data.len() as u64;
        Ok(())
    }

    /// Appends what is left of `r` (`source` names it in an error), a piece at a time.
    pub fn append_from(&mut self, source: &Path, r: &mut impl Read) -> Result<()> {
        let mut buf = vec![0u8; 256 << 10];
        loop {
            match r.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => self.append(&buf[..n])?,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::io(source, e)),
            }
        }
    }

    /// How many bytes it holds.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file, to read from its start (each reader seeks there first).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The file, for a reader that needs it mutably (it seeks to the start first).
    pub fn file_mut(&mut self) -> &mut File {
        &mut self.file
    }

    /// The whole content, in memory (the quarantine keeps a message's bytes in one row).
    pub fn read_all(&self) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(usize::try_from(self.len).unwrap_or(0));
        let mut f = &self.file;
        f.seek(SeekFrom::Start(0))
            .and_then(|_| f.read_to_end(&mut out))
            .map_err(|e| Error::io(&self.path, e))?;
        Ok(out)
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.path) {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot remove a spool file");
        }
    }
}

/// The folder spool files go to for a store at `file` (`None`: PostgreSQL or in memory).
pub fn dir_for(file: Option<&Path>) -> PathBuf {
    match file.and_then(Path::parent) {
        Some(d) if d.as_os_str().is_empty() => PathBuf::from("."),
        Some(d) => d.to_owned(),
        None => std::env::temp_dir(),
    }
}

/// Calls `each` with the bytes of `file` from its start (`path` names it in an error), in
/// pieces of `len` bytes, the last one shorter.
pub fn each_piece(
    mut file: &File,
    path: &Path,
    len: usize,
    mut each: impl FnMut(&[u8]) -> Result<()>,
) -> Result<()> {
    file.seek(SeekFrom::Start(0))
        .map_err(|e| Error::io(path, e))?;
    let mut buf = vec![0u8; len];
    loop {
        let mut n = 0;
        while n < buf.len() {
            match file.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::io(path, e)),
            }
        }
        if n > 0 {
            each(&buf[..n])?;
        }
        if n < buf.len() {
            return Ok(());
        }
    }
}

/// Removes the spool files in `dir` left behind by processes of this machine that are gone
/// (killed while spooling). Best effort: what cannot be read or removed stays, and without
/// `/proc` (to tell a live process from a gone one) nothing is removed.
pub fn sweep(dir: &Path) {
    if !Path::new("/proc/self").exists() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(PREFIX))
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let path = entry.path();
            match std::fs::remove_file(&path) {
                Ok(()) => tracing::info!(path = %path.display(), "removed a stale spool file"),
                Err(e) => tracing::debug!(path = %path.display(), error = %e, "stale spool file"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spool_is_private_holds_what_was_appended_and_goes_away() {
        let dir = std::env::temp_dir().join(format!("mt-spool-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut s = Spool::create(&dir).unwrap();
        s.append(b"hello ").unwrap();
        s.append(b"world").unwrap();
        assert_eq!(s.len(), 11);
        assert_eq!(s.read_all().unwrap(), b"hello world");
        assert_eq!(
            s.read_all().unwrap(),
            b"hello world",
            "read again from the start"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(s.path()).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let path = s.path().to_owned();
        let other = Spool::create(&dir).unwrap();
        assert_ne!(other.path(), path);
        drop(s);
        assert!(!path.exists());
        // A leftover of a process that is gone is swept; our own live one stays.
        let stale = dir.join(format!("{PREFIX}{}-0", u32::MAX - 1));
        std::fs::write(&stale, b"x").unwrap();
        sweep(&dir);
        assert!(!stale.exists());
        assert!(other.path().exists());
        drop(other);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn spool_files_go_beside_an_sqlite_store() {
        assert_eq!(
            dir_for(Some(Path::new("/var/lib/mt/store.db"))),
            Path::new("/var/lib/mt")
        );
        assert_eq!(dir_for(Some(Path::new("store.db"))), Path::new("."));
        assert_eq!(dir_for(None), std::env::temp_dir());
    }
}
