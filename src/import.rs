//! Messages from files through the same pipeline as IMAP: single `.eml` files, mbox files
//! (mboxrd/mboxo) and Maildir folders. One message is in memory at a time; one over
//! [`SPOOL_OVER`] bytes goes into a spool file as it is read and is taken from there, never
//! held whole.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use crate::classify::Identity;
use crate::error::{Error, Result};
use crate::pipeline::{Plan, process, process_spooled};
use crate::spool::{SPOOL_OVER, Spool};
use crate::store::{Origin, Store};
use crate::summary::{Counts, SourceSummary};

/// Imports every message under `path` (a file, an mbox, or a Maildir / folder of files).
/// Message-level problems are counted; only a store failure or an unreadable path fails.
pub fn import_path(store: &mut Store, me: &Identity, path: &Path, plan: Plan<'_>) -> SourceSummary {
    let mut counts = Counts::default();
    // Each message names the file it came from (in the store and in a quarantine warning),
    // not just the folder given.
    let spool_dir = store.spool_dir();
    let mut each = |input: Input<'_>, received: i64, file: &Path| -> Result<()> {
        counts.fetched += 1;
        let origin = Origin::unplaced(format!("import:{}", file.display()), "");
        let stored = match input {
            Input::Bytes(raw) => process(store, me, raw, &origin, received, plan)?,
            Input::Spooled(spool) => process_spooled(store, me, spool, &origin, received, plan)?,
        };
        counts.record(stored.outcome);
        counts.acks_queued += u64::from(stored.acked);
        Ok(())
    };
    let r = if path.is_dir() {
        read_dir(path, &spool_dir, &mut each)
    } else {
        read_file(path, &spool_dir, &mut each)
    };
    if let Err(e) = r {
        tracing::error!(path = %path.display(), error = %e, "import failed");
        counts.errors.push(e.to_string());
    }
    SourceSummary {
        name: path.display().to_string(),
        folder: None,
        counts,
    }
}

/// One message for `each`: its bytes, or a spool file that holds them (a large file).
enum Input<'a> {
    Bytes(&'a [u8]),
    Spooled(Spool),
}

type Each<'a> = dyn FnMut(Input<'_>, i64, &Path) -> Result<()> + 'a;

fn mtime(p: &Path) -> i64 {
    std::fs::metadata(p)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or_else(crate::time::now, |d| {
            i64::try_from(d.as_secs()).unwrap_or(0)
        })
}

/// A Maildir (its `cur` and `new`, and its `.Sub` folders), or else every file in the
/// folder and its subfolders, in name order. Whatever a file is called, it is read as an mbox
/// when it starts with a `From ` line and as one message otherwise.
fn read_dir(dir: &Path, spool_dir: &Path, each: &mut Each<'_>) -> Result<()> {
    let maildir = ["cur", "new"].iter().any(|s| dir.join(s).is_dir());
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for p in entries {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if p.is_dir() {
            // A Maildir's tmp holds half-delivered files; version-control folders hold no mail.
            if (maildir && name == "tmp") || matches!(name, ".git" | ".svn" | ".hg") {
                continue;
            }
            read_dir(&p, spool_dir, each)?;
        } else if p.is_file() && !maildir && !name.starts_with('.') {
            // A Maildir's own files (dovecot-uidlist, maildirfolder) are not mail.
            read_file(&p, spool_dir, each)?;
        }
    }
    Ok(())
}

/// One file: an mbox when it starts with a `From ` line, else one message. A file named
/// `*.eml` is always one message (a `From ` envelope line at its top is dropped), so mail
/// quoted in its body never becomes a second message. One message over [`SPOOL_OVER`] bytes
/// goes through a spool file in `spool_dir`.
fn read_file(path: &Path, spool_dir: &Path, each: &mut Each<'_>) -> Result<()> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let len = file.metadata().map_or(0, |m| m.len());
    let mut r = BufReader::new(file);
    let head = r.fill_buf().map_err(|e| Error::io(path, e))?;
    let single = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("eml"));
    let envelope = head.starts_with(b"From ");
    if envelope && !single {
        return read_mbox(path, spool_dir, r, each);
    }
    // The message starts after a `From ` envelope line (a line without its end is all there
    // is, and stays).
    let mut raw = Vec::new();
    if envelope {
        r.read_until(b'\n', &mut raw)
            .map_err(|e| Error::io(path, e))?;
        if raw.ends_with(b"\n") {
            raw.clear();
        }
    }
    if len > SPOOL_OVER {
        let mut spool = Spool::create(spool_dir)?;
        spool.append(&raw)?;
        spool.append_from(path, &mut r)?;
        return each(Input::Spooled(spool), mtime(path), path);
    }
    r.read_to_end(&mut raw).map_err(|e| Error::io(path, e))?;
    each(Input::Bytes(&raw), mtime(path), path)
}

/// Whether `line` may be the first header line of a message: a field name and a colon.
fn looks_like_header(line: &[u8]) -> bool {
    let name_end = line.iter().position(|&b| b == b':');
    name_end.is_some_and(|n| {
        n > 0
            && line
                .get(..n)
                .is_some_and(|name| name.iter().all(|&b| b.is_ascii_graphic()))
    })
}

/// Splits an mbox. A `From ` line after a blank line separates messages only when a header
/// line follows it: a letter quoting an mbox's `From ` line in its body stays one message.
/// A message over [`SPOOL_OVER`] bytes goes on into a spool file in `spool_dir`.
fn read_mbox(
    path: &Path,
    spool_dir: &Path,
    mut r: impl BufRead,
    each: &mut Each<'_>,
) -> Result<()> {
    let received = mtime(path);
    let mut msg = Msg::new(spool_dir);
    let mut line = Vec::new();
    // A `From ` line waiting for the next line to say whether it separates messages.
    let mut pending: Option<Vec<u8>> = None;
    let mut started = false;
    let mut prev_blank = true;
    loop {
        line.clear();
        let n = r
            .read_until(b'\n', &mut line)
            .map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        if let Some(sep) = pending.take() {
            if looks_like_header(&line) || !started {
                if started {
                    msg.emit(each, received, path)?;
                }
                started = true;
            } else {
                msg.push(&sep)?;
            }
        } else if prev_blank && line.starts_with(b"From ") {
            pending = Some(line.clone());
            prev_blank = false;
            continue;
        }
        let content = line.strip_suffix(b"\n").unwrap_or(&line);
        let content = content.strip_suffix(b"\r").unwrap_or(content);
        prev_blank = content.is_empty();
        msg.push(unquote_from(&line))?;
    }
    if let Some(sep) = pending.filter(|_| started) {
        msg.push(&sep)?;
    }
    if started {
        msg.emit(each, received, path)?;
    }
    Ok(())
}

/// An mbox message being put together, line by line: in memory, or once over [`SPOOL_OVER`]
/// bytes in a spool file, its last line still in memory (the blank line that separates it
/// from the next message is taken off there).
struct Msg<'d> {
    dir: &'d Path,
    /// The message, or once spooled the lines not yet written to the spool file (its last
    /// line always among them).
    bytes: Vec<u8>,
    spool: Option<Spool>,
}

/// How many bytes of a spooled mbox message wait in memory before they are written.
const SPOOL_WRITE: usize = 256 << 10;

impl<'d> Msg<'d> {
    fn new(dir: &'d Path) -> Msg<'d> {
        Msg {
            dir,
            bytes: Vec::new(),
            spool: None,
        }
    }

    /// Adds one line.
    fn push(&mut self, line: &[u8]) -> Result<()> {
        if let Some(spool) = self.spool.as_mut() {
            if self.bytes.len() >= SPOOL_WRITE {
                spool.append(&self.bytes)?;
                self.bytes.clear();
            }
        } else if (self.bytes.len() + line.len()) as u64 > SPOOL_OVER {
            let mut spool = Spool::create(self.dir)?;
            spool.append(&self.bytes)?;
            self.bytes.clear();
            self.spool = Some(spool);
        }
        self.bytes.extend_from_slice(line);
        Ok(())
    }

    /// Hands the message over without the blank line that separated it from the next, and
    /// starts the next.
    fn emit(&mut self, each: &mut Each<'_>, received: i64, path: &Path) -> Result<()> {
        let end = self
            .bytes
            .strip_suffix(b"\r\n")
            .or_else(|| self.bytes.strip_suffix(b"\n"))
            .map_or(self.bytes.len(), <[u8]>::len);
        self.bytes.truncate(end);
        let r = match self.spool.take() {
            Some(mut spool) => spool
                .append(&self.bytes)
                .and_then(|()| each(Input::Spooled(spool), received, path)),
            None if self.bytes.iter().all(u8::is_ascii_whitespace) => Ok(()),
            None => each(Input::Bytes(&self.bytes), received, path),
        };
        self.bytes.clear();
        r
    }
}

/// mboxrd: `>From ` (and `>>From `) lose one `>`.
fn unquote_from(line: &[u8]) -> &[u8] {
    match line.iter().position(|&b| b != b'>') {
        Some(k) if k > 0 && line.get(k..).is_some_and(|rest| rest.starts_with(b"From ")) => {
            line.get(1..).unwrap_or(&[])
        }
        _ => line,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The messages `read_mbox` hands over for `mbox`.
    fn split(mbox: &str) -> Vec<String> {
        let mut got: Vec<String> = Vec::new();
        read_mbox(
            Path::new("x"),
            Path::new("."),
            mbox.as_bytes(),
            &mut |input, _, _| {
                let Input::Bytes(raw) = input else {
                    panic!("an mbox message spooled")
                };
                got.push(String::from_utf8(raw.to_vec()).unwrap());
                Ok(())
            },
        )
        .unwrap();
        got
    }

    #[test]
    fn a_large_mbox_message_goes_on_into_a_spool_file_and_comes_out_the_same() {
        let dir = std::env::temp_dir().join(format!("mt-mbox-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let line = ">From the archive, line after line of it, to make a large message\r\n";
        let lines = line.repeat((3 << 20) / line.len());
        let mbox = format!(
            "From a@b Mon Jan  1 00:00:00 2025\r\nSubject: big\r\n\r\n{lines}\r\n\
             From c@d Mon Jan  1 00:00:00 2025\r\nSubject: small\r\n\r\nbye\r\n\r\n"
        );
        let mut got: Vec<(bool, Vec<u8>)> = Vec::new();
        read_mbox(Path::new("x"), &dir, mbox.as_bytes(), &mut |input, _, _| {
            got.push(match input {
                Input::Bytes(raw) => (false, raw.to_vec()),
                Input::Spooled(spool) => (true, spool.read_all().unwrap()),
            });
            Ok(())
        })
        .unwrap();
        let big = format!("Subject: big\r\n\r\n{}", lines.replace(">From", "From"));
        assert_eq!(got.len(), 2);
        assert!(got[0].0, "the large one spooled");
        assert!(got[0].1 == big.as_bytes(), "the large one as it was");
        assert_eq!(got[1], (false, b"Subject: small\r\n\r\nbye\r\n".to_vec()));
        let left = std::fs::read_dir(&dir).unwrap().count();
        assert_eq!(left, 0, "the spool file goes with its message");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn mbox_split_and_unquote() {
        let mbox = "From a@b Mon Jan  1 00:00:00 2025\nSubject: one\n\nhello\n>From the start\n\n\
                    From c@d Mon Jan  1 00:00:00 2025\nSubject: two\n\nbye\n\n";
        assert_eq!(
            split(mbox),
            [
                "Subject: one\n\nhello\nFrom the start\n",
                "Subject: two\n\nbye\n"
            ]
        );
    }

    #[test]
    fn a_quoted_from_line_in_a_body_is_not_a_separator() {
        let mbox = "From a@b Mon Jan  1 00:00:00 2025\nSubject: one\n\nmy mbox reads:\n\n\
                    From c@d Mon Jan  1 00:00:00 2025\nwhich I did not expect\n\n\
                    From c@d Mon Jan  1 00:00:00 2025\n";
        assert_eq!(
            split(mbox),
            [
                "Subject: one\n\nmy mbox reads:\n\nFrom c@d Mon Jan  1 00:00:00 2025\n\
              which I did not expect\n\nFrom c@d Mon Jan  1 00:00:00 2025"
            ]
        );
    }
}
