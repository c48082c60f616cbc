//! The progress line of a long `sync` or `import` on a terminal: messages done (of how many),
//! the rate and the time left, on stderr, redrawn in place with `\r` a few times a second.
//! Nothing at all when stderr is not a terminal (cron, pipes, journald) or with `-q`, and
//! nothing for a short run: it starts once a run has [`LONG_RUN`] messages to do (or done).

use std::io::Write as _;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use mailticket::progress::Progress;

/// A run with this many messages gets a progress line.
const LONG_RUN: u64 = 100;
/// How often the line is redrawn.
const EVERY: Duration = Duration::from_millis(250);

/// How wide the progress line on the screen is (0: none drawn). Log lines and the progress
/// line write to stderr under this lock, and a log line first wipes the progress line, so
/// the two never share a line; the next redraw puts it back below the log line.
static ON_SCREEN: Mutex<usize> = Mutex::new(0);

/// Writes `text` in place of the progress line (empty: just wipes it), under the lock.
fn redraw(text: &str) {
    let mut width = ON_SCREEN.lock().unwrap_or_else(PoisonError::into_inner);
    let pad = width.saturating_sub(text.chars().count());
    let _ = write!(std::io::stderr(), "\r{text}{:pad$}", "");
    if text.is_empty() {
        let _ = write!(std::io::stderr(), "\r");
    }
    *width = text.chars().count();
}

/// The writer of log lines: stderr, after wiping a progress line that is on the screen.
pub struct LogWriter;

/// For `tracing_subscriber`'s `with_writer`.
pub fn log_writer() -> LogWriter {
    LogWriter
}

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut width = ON_SCREEN.lock().unwrap_or_else(PoisonError::into_inner);
        if *width > 0 {
            write!(std::io::stderr(), "\r{:w$}\r", "", w = *width)?;
            *width = 0;
        }
        std::io::stderr().write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// Draws the line on a thread of its own until dropped; dropping it clears the line.
pub struct ProgressLine {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ProgressLine {
    /// Starts drawing `what`'s progress, unless `quiet` or stderr is not a terminal.
    pub fn start(what: &'static str, progress: &Arc<Progress>, quiet: bool) -> ProgressLine {
        let off = ProgressLine {
            stop: None,
            thread: None,
        };
        if quiet || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            return off;
        }
        let (stop, stopped) = mpsc::channel();
        let progress = progress.clone();
        let thread = std::thread::Builder::new()
            .name("progress".into())
            .spawn(move || draw_until(what, &progress, &stopped));
        match thread {
            Ok(t) => ProgressLine {
                stop: Some(stop),
                thread: Some(t),
            },
            Err(_) => off,
        }
    }
}

impl Drop for ProgressLine {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Redraws every [`EVERY`] until `stopped` says so (or its sender is gone); then draws the
/// last count and clears the line, if it ever drew one.
fn draw_until(what: &str, progress: &Progress, stopped: &mpsc::Receiver<()>) {
    let start = Instant::now();
    let mut drawn = false;
    loop {
        let last = !matches!(
            stopped.recv_timeout(EVERY),
            Err(mpsc::RecvTimeoutError::Timeout)
        );
        let (done, total) = progress.get();
        if done.max(total) >= LONG_RUN {
            redraw(&line(what, done, total, start.elapsed()));
            drawn = true;
        }
        if last {
            if drawn {
                redraw("");
            }
            return;
        }
    }
}

/// `sync: 1200/3000 messages (40%), 85/s, 0:21 left`; without a total (an import's files are
/// read as they come) `import: 1200 messages, 85/s`.
pub fn line(what: &str, done: u64, total: u64, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64();
    let rate = if secs > 0.0 { done as f64 / secs } else { 0.0 };
    let rate_text = format!("{rate:.0}/s");
    if total == 0 {
        return format!("{what}: {done} messages, {rate_text}");
    }
    let pct = done.min(total) * 100 / total;
    let left = if rate > 0.0 && done < total {
        let s = ((total - done) as f64 / rate).ceil() as u64;
        format!(", {}:{:02} left", s / 60, s % 60)
    } else {
        String::new()
    };
    format!("{what}: {done}/{total} messages ({pct}%), {rate_text}{left}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_counts_rates_and_estimates() {
        let s = Duration::from_secs;
        assert_eq!(
            line("sync", 1200, 3000, s(10)),
            "sync: 1200/3000 messages (40%), 120/s, 0:15 left"
        );
        assert_eq!(
            line("sync", 100, 10_000, s(10)),
            "sync: 100/10000 messages (1%), 10/s, 16:30 left"
        );
        assert_eq!(
            line("sync", 3000, 3000, s(20)),
            "sync: 3000/3000 messages (100%), 150/s"
        );
        assert_eq!(
            line("sync", 0, 500, Duration::ZERO),
            "sync: 0/500 messages (0%), 0/s"
        );
        assert_eq!(line("import", 450, 0, s(3)), "import: 450 messages, 150/s");
    }
}
