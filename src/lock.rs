//! One worker per store: an advisory lock on `<database>.lock` beside the database.
//!
//! `sync` and `watch` take it before they touch a mailbox, so two cron runs (or a cron run
//! during `watch`) never work the same mailbox at once; the one that finds it taken fails
//! with [`Error::Locked`] (exit status 75, "try again later"). The lock is the operating
//! system's (`flock`), so it vanishes with the process, even after `kill -9`; the file
//! itself stays and only says who held it last. Correctness never depends on it: every
//! message commits in its own transaction. Readers (`tickets`, `show`) and `import` /
//! `ingest` do not take it.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// A held lock; dropping it releases it.
#[derive(Debug)]
pub struct StoreLock {
    _file: File,
    path: PathBuf,
}

impl StoreLock {
    /// The lock file of the database at `db`.
    pub fn path_for(db: &Path) -> PathBuf {
        let mut name = db.file_name().unwrap_or_default().to_os_string();
        name.push(".lock");
        db.with_file_name(name)
    }

    /// Takes the lock of the database at `db` without waiting; `what` (e.g. "sync") is
    /// written into the file for whoever finds it taken.
    pub fn acquire(db: &Path, what: &str) -> Result<StoreLock> {
        let path = Self::path_for(db);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                return Err(Error::Locked {
                    path,
                    holder: holder.trim().to_owned(),
                });
            }
            Err(TryLockError::Error(e)) => return Err(Error::io(&path, e)),
        }
        let note = format!(
            "pid {} ({what}) since {}\n",
            std::process::id(),
            crate::time::rfc3339(crate::time::now())
        );
        // Who holds it is only a hint for the message; failing to write it is harmless.
        let _ = file
            .set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| file.write_all(note.as_bytes()));
        Ok(StoreLock { _file: file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// This process as a claimer of work in the store: `PID:START@HOST`, where START is the
/// process's start time in clock ticks since boot (Linux `/proc/self/stat`), so a reused pid
/// is not mistaken for us, and HOST the machine's name, so that on a store shared by many
/// machines a claim is only judged by the machine it was made on. `PID@HOST` where there
/// is no `/proc`.
pub fn process_tag() -> String {
    let pid = std::process::id();
    match start_time(pid) {
        Some(start) => format!("{pid}:{start}@{}", host_name()),
        None => format!("{pid}@{}", host_name()),
    }
}

/// This machine's name (as the kernel has it), for [`process_tag`] and the workers table.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// Whether the process named by a [`process_tag`] still runs. An empty or unreadable tag is
/// not alive. A tag of another machine, or any tag where there is no `/proc`, is taken to be
/// alive: the claim's lease decides then. (Tags written before hosts were named have none and
/// are this machine's.)
pub fn process_alive(tag: &str) -> bool {
    let tag = match tag.rsplit_once('@') {
        Some((_, host)) if host != host_name() => return !tag.is_empty(),
        Some((local, _)) => local,
        None => tag,
    };
    let (pid, start) = match tag.split_once(':') {
        Some((pid, start)) => (pid, Some(start)),
        None => (tag, None),
    };
    let Ok(pid) = pid.parse::<u32>() else {
        return false;
    };
    if !Path::new("/proc/self/stat").exists() {
        return true;
    }
    match (start_time(pid), start) {
        (None, _) => false,
        (Some(now), Some(then)) => now.to_string() == then,
        (Some(_), None) => true,
    }
}

/// Field 22 of `/proc/PID/stat`: the start time, counted after the command name (which may
/// hold spaces and parentheses).
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.get(stat.rfind(')')? + 1..)?;
    after.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_a_finished_one_or_a_reused_pid_is_not() {
        let me = process_tag();
        assert!(process_alive(&me), "{me}");
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let tag = format!("{}:{}", child.id(), start_time(child.id()).unwrap_or(1));
        child.wait().unwrap();
        assert!(!process_alive(&tag), "{tag}");
        let pid = std::process::id();
        assert!(!process_alive(&format!("{pid}:1")), "a reused pid");
        assert!(!process_alive(""));
        assert!(!process_alive(&format!("{pid}:1@{}", host_name())));
        assert!(
            process_alive(&format!("{pid}:1@another-machine")),
            "judged by its lease"
        );
    }

    #[test]
    fn second_taker_is_refused_until_the_first_lets_go() {
        let dir = std::env::temp_dir().join(format!("mt-lock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let db = dir.join("x.db");
        let first = StoreLock::acquire(&db, "sync").unwrap();
        assert_eq!(first.path(), dir.join("x.db.lock"));
        match StoreLock::acquire(&db, "sync") {
            Err(Error::Locked { holder, .. }) => {
                assert!(
                    holder.contains(&format!("pid {}", std::process::id())),
                    "{holder}"
                );
                assert!(holder.contains("(sync)"), "{holder}");
            }
            other => panic!("expected Locked, got {other:?}"),
        }
        drop(first);
        // A child forked by another test at this moment holds the lock file's descriptor
        // until its exec closes it: allow it that moment.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while let Err(e) = StoreLock::acquire(&db, "watch") {
            assert!(std::time::Instant::now() < deadline, "{e}");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
