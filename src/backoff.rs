//! Reconnect delays: exponential with full jitter, capped.
//!
//! Attempt `n` (from 0) waits a uniformly random time in `[0, min(cap, min * 2^n)]` ("full
//! jitter"), so a hundred mailboxes that lost their server together do not knock on it
//! together again. [`Backoff::reset`] starts over (after a session that did real work);
//! [`Backoff::at_cap`] is for failures that retrying soon cannot fix, such as a refused
//! login. Pure arithmetic: the caller sleeps. Used by [`crate::watch`].

use std::time::Duration;

/// The delay schedule of one mailbox.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    cap: Duration,
    attempt: u32,
    rng: fastrand::Rng,
}

impl Backoff {
    /// A schedule from `min` up to `cap`; `seed` makes the jitter differ between mailboxes.
    pub fn new(min: Duration, cap: Duration, seed: u64) -> Backoff {
        Backoff {
            min,
            cap: cap.max(min),
            attempt: 0,
            rng: fastrand::Rng::with_seed(seed),
        }
    }

    /// The ceiling of the next delay: `min * 2^attempt`, at most the cap.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.min.saturating_mul(factor).min(self.cap)
    }

    /// The next delay (random in `[0, ceiling]`); the ceiling doubles for the one after.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        self.jitter(ceiling)
    }

    /// The cap itself (no jitter towards zero: at least half the cap), for failures that
    /// only a person can fix. Later delays stay at the cap until [`Backoff::reset`].
    pub fn at_cap(&mut self) -> Duration {
        self.attempt = 31;
        let half = self.cap / 2;
        half + self.jitter(self.cap - half)
    }

    /// Starts over from `min`.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// The configured cap.
    pub fn cap(&self) -> Duration {
        self.cap
    }

    fn jitter(&mut self, up_to: Duration) -> Duration {
        let millis = u64::try_from(up_to.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(self.rng.u64(0..=millis))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_with_full_jitter() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(300), 7);
        let mut ceilings = Vec::new();
        for _ in 0..12 {
            let c = b.ceiling();
            let d = b.next_delay();
            assert!(d <= c, "{d:?} > {c:?}");
            ceilings.push(c.as_secs());
        }
        assert_eq!(ceilings, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_secs(1));
    }

    #[test]
    fn jitter_spreads_and_auth_goes_to_the_cap() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(300), 1);
        let delays: Vec<Duration> = (0..20)
            .map(|_| {
                b.reset();
                for _ in 0..8 {
                    b.next_delay();
                }
                b.next_delay()
            })
            .collect();
        let distinct: std::collections::BTreeSet<_> = delays.iter().collect();
        assert!(distinct.len() > 10, "{delays:?}");
        for _ in 0..5 {
            let d = b.at_cap();
            assert!(d >= Duration::from_secs(150) && d <= Duration::from_secs(300));
            assert_eq!(b.ceiling(), Duration::from_secs(300));
        }
    }
}
