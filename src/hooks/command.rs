//! Command hooks: the program runs in a process group of its own with one event as JSON on
//! stdin; its exit status is the answer (0 delivered, 75 try again later, anything else
//! failed). Its output is kept, bounded, for the delivery record; a timeout kills the whole
//! group.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

/// The most output kept from one run.
const MAX_OUTPUT: usize = 1024;

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ran {
    /// It exited with this code.
    Exited(i32, String),
    /// It could not start, was killed by a signal, or ran out of time.
    Broken(String),
}

/// Runs `argv` with `body` on stdin, within `timeout`.
pub async fn run(argv: &[String], body: &str, timeout: Duration) -> Ran {
    let Some((prog, args)) = argv.split_first() else {
        return Ran::Broken("empty command".into());
    };
    let mut child = match tokio::process::Command::new(prog)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return Ran::Broken(format!("cannot run {prog}: {e}")),
    };
    let pid = child.id();
    let (stdin, out, err) = (child.stdin.take(), child.stdout.take(), child.stderr.take());
    let body = body.as_bytes().to_vec();
    let work = async {
        let feed = async {
            if let Some(mut s) = stdin {
                // A program that exits without reading its input closes the pipe: not an error.
                let _ = s.write_all(&body).await;
            }
        };
        let ((), out, err, status) = tokio::join!(feed, bounded(out), bounded(err), child.wait());
        (out, err, status)
    };
    match tokio::time::timeout(timeout, work).await {
        Ok((out, err, Ok(status))) => {
            let text = format!("{out}{}{err}", if err.is_empty() { "" } else { "\n" });
            match status.code() {
                Some(code) => Ran::Exited(code, text),
                None => Ran::Broken(format!("{prog} was killed by a signal: {text}")),
            }
        }
        Ok((_, _, Err(e))) => Ran::Broken(format!("waiting for {prog}: {e}")),
        Err(_) => {
            kill_group(pid).await;
            Ran::Broken(format!(
                "{prog} did not finish within {} s; its process group was killed",
                timeout.as_secs()
            ))
        }
    }
}

/// The first [`MAX_OUTPUT`] bytes of a stream, read to its end (so the writer never blocks).
async fn bounded(s: Option<impl AsyncRead + Unpin>) -> String {
    let Some(mut s) = s else {
        return String::new();
    };
    let (mut kept, mut buf) = (Vec::new(), [0u8; 4096]);
    while let Ok(n) = s.read(&mut buf).await {
        if n == 0 {
            break;
        }
        let room = MAX_OUTPUT.saturating_sub(kept.len());
        kept.extend_from_slice(&buf[..n.min(room)]);
    }
    String::from_utf8_lossy(&kept).trim_end().to_owned()
}

/// Kills the process group led by `pid` (the command and everything it started).
async fn kill_group(pid: Option<u32>) {
    if let Some(pid) = pid {
        let _ = tokio::process::Command::new("kill")
            .args(["-KILL", "--", &format!("-{pid}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await;
    }
}
