//! How far a long run is: messages to do and done, counted by `sync` and `import` for the
//! progress line the binary draws (`cli/progress.rs`). Counting never waits: two atomics.

use std::sync::atomic::{AtomicU64, Ordering};

/// Messages to do (0 while unknown) and done.
#[derive(Debug, Default)]
pub struct Progress {
    total: AtomicU64,
    done: AtomicU64,
}

impl Progress {
    /// `n` more messages to do.
    pub fn add_total(&self, n: u64) {
        self.total.fetch_add(n, Ordering::Relaxed);
    }

    /// One more message done.
    pub fn done_one(&self) {
        self.done.fetch_add(1, Ordering::Relaxed);
    }

    /// `(done, total)`; `total` is 0 while unknown.
    pub fn get(&self) -> (u64, u64) {
        (
            self.done.load(Ordering::Relaxed),
            self.total.load(Ordering::Relaxed),
        )
    }
}
