//! Where a run's time goes: busy time per stage, summed over every thread, from cheap
//! counters (`Instant` around each stage: a few tens of nanoseconds per message). `sync`
//! logs them at its end at debug level (target `mailticket::stages`), for `scripts/bench`.
//!
//! The stages run on threads that do nothing else while they are timed (the parse workers,
//! the store's thread, the checkpoint thread), so busy time is close to CPU time on an idle
//! machine; under load it also counts the time a thread waited for a core.

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
    /// Making commits durable before a post-action (on the store's thread: part of `Store`).
    Durable,
}

const STAGES: [Stage; 8] = [
    Stage::Parse,
    Stage::Hash,
    Stage::Classify,
    Stage::Compress,
    Stage::Store,
    Stage::Thread,
    Stage::Checkpoint,
    Stage::Durable,
];

static NANOS: [AtomicU64; 8] = [const { AtomicU64::new(0) }; 8];

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

/// Logs the seconds counted so far (debug level, target `mailticket::stages`), each stage
/// without the stages it contains.
pub fn log() {
    let s: Vec<f64> = seconds().into_iter().map(|(_, v)| v).collect();
    let [
        parse,
        hash,
        classify,
        compress,
        store,
        thread,
        checkpoint,
        durable,
    ] = s[..]
    else {
        return;
    };
    tracing::debug!(
        target: "mailticket::stages",
        parse = parse - hash,
        hash,
        classify,
        compress,
        sqlite = store - thread - durable,
        thread,
        checkpoint = checkpoint + durable,
        "stage seconds"
    );
}
