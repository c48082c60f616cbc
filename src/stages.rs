//! Where a run's CPU goes, per stage, for `scripts/bench`: each worker thread (the parse
//! workers, the store's thread, the checkpoint thread) adds up its own CPU time as it ends,
//! and cheap counters (`Instant` around each stage: a few tens of nanoseconds per message)
//! say how a worker's time divides between its stages. `sync` logs the split at its end at
//! debug level (target `mailticket::stages`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// A stage of a message's way into the store.
#[derive(Debug, Clone, Copy)]
pub enum Stage {
    /// MIME parsing and the readable text, the hashing below included.
    Parse,
    /// SHA-256 of attachments and of the fingerprint (part of `Parse`).
    Hash,
    /// The verdict on the message alone.
    Classify,
    /// Compressing the raw message.
    Compress,
    /// Everything the store's thread does (SQLite and the decisions made in the
    /// transaction).
    Store,
    /// The decisions made in the transaction: threading and the verdict with history (part
    /// of `Store`).
    Thread,
    /// WAL checkpoints on the checkpoint thread.
    Checkpoint,
}

const STAGES: [Stage; 7] = [
    Stage::Parse,
    Stage::Hash,
    Stage::Classify,
    Stage::Compress,
    Stage::Store,
    Stage::Thread,
    Stage::Checkpoint,
];

static NANOS: [AtomicU64; 7] = [const { AtomicU64::new(0) }; 7];

/// Runs `f`, counting its time to `stage`.
pub fn time<T>(stage: Stage, f: impl FnOnce() -> T) -> T {
    let t0 = Instant::now();
    let out = f();
    let ns = u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX);
    NANOS[stage as usize].fetch_add(ns, Ordering::Relaxed);
    out
}

/// Seconds counted so far, per stage.
pub fn seconds() -> Vec<(Stage, f64)> {
    STAGES
        .iter()
        .map(|&s| (s, NANOS[s as usize].load(Ordering::Relaxed) as f64 / 1e9))
        .collect()
}

/// Group commits of the store's thread, and the jobs they held.
static GROUPS: [AtomicU64; 2] = [const { AtomicU64::new(0) }; 2];

/// Counts one group commit of `jobs` jobs (logged with the stages: few jobs per commit means
/// the store is waiting for work, and each commit writes its pages on its own).
pub fn group(jobs: usize) {
    GROUPS[0].fetch_add(1, Ordering::Relaxed);
    GROUPS[1].fetch_add(jobs as u64, Ordering::Relaxed);
}

/// A worker thread whose own CPU time is added up when it ends (see [`worker_done`]).
#[derive(Debug, Clone, Copy)]
pub enum Worker {
    /// A parse worker (parse, hash, classify, compress).
    Prepare,
    /// The store's thread (SQLite and the decisions in the transaction).
    Store,
    /// The checkpoint thread.
    Checkpoint,
}

static WORKER_TICKS: [AtomicU64; 3] = [const { AtomicU64::new(0) }; 3];

/// Adds the calling thread's CPU time so far to `w`'s; called by a worker as it ends.
pub fn worker_done(w: Worker) {
    if let Some(t) = cpu_ticks("/proc/thread-self/stat") {
        WORKER_TICKS[w as usize].fetch_add(t, Ordering::Relaxed);
    }
}

/// utime + stime of `/proc/.../stat`, in clock ticks (100 a second on Linux).
fn cpu_ticks(path: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(path).ok()?;
    let mut f = stat.rsplit_once(')')?.1.split_whitespace().skip(11);
    let user: u64 = f.next()?.parse().ok()?;
    let sys: u64 = f.next()?.parse().ok()?;
    Some(user + sys)
}

/// Logs where the process's CPU time went (debug level, target `mailticket::stages`): each
/// worker's CPU time (read as it ended) split between its stages in proportion to their busy
/// time, and the rest of the process (the IMAP session: fetch and TLS) as `fetch_tls`.
pub fn log() {
    let busy: Vec<f64> = seconds().into_iter().map(|(_, v)| v).collect();
    let [parse, hash, classify, compress, store, thread, _] = busy[..] else {
        return;
    };
    let cpu = |t: u64| t as f64 / 100.0;
    let worker = |w: Worker| cpu(WORKER_TICKS[w as usize].load(Ordering::Relaxed));
    let total = cpu_ticks("/proc/self/stat").map_or(0.0, cpu);
    let (prep_cpu, store_cpu) = (worker(Worker::Prepare), worker(Worker::Store));
    let ckpt_cpu = worker(Worker::Checkpoint);
    let share = |of: f64, part: f64, whole: f64| if whole > 0.0 { of * part / whole } else { 0.0 };
    let prep = parse + classify + compress;
    tracing::debug!(
        target: "mailticket::stages",
        fetch_tls = (total - prep_cpu - store_cpu - ckpt_cpu).max(0.0),
        parse = share(prep_cpu, parse - hash, prep),
        hash = share(prep_cpu, hash, prep),
        classify = share(prep_cpu, classify, prep),
        compress = share(prep_cpu, compress, prep),
        thread = share(store_cpu, thread, store),
        sqlite = share(store_cpu, store - thread, store),
        checkpoint = ckpt_cpu,
        groups = GROUPS[0].load(Ordering::Relaxed),
        grouped = GROUPS[1].load(Ordering::Relaxed),
        "stage cpu seconds"
    );
}
