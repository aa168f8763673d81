//! The write-stall rule as a pure state machine over `now`.
//!
//! A write "stalls" when bytes are waiting to go out and none has gone out
//! for `limit`: the peer stopped reading (zero window) or vanished with our
//! bytes unacknowledged. It is not an idle timer: nothing waiting to be
//! written is never a stall, however long it lasts. The caller reports each
//! time a write could not move everything it had (`blocked`) and each time
//! bytes moved (`progressed`); the timer says when the stall is declared.

use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StallTimer {
    limit: Duration,
    /// When the current run of blocked writes began.
    since: Option<Instant>,
}

impl StallTimer {
    pub fn new(limit: Duration) -> Self {
        StallTimer { limit, since: None }
    }

    /// A write could not move what it had: starts the clock unless it runs.
    pub fn blocked(&mut self, now: Instant) {
        self.since.get_or_insert(now);
    }

    /// Bytes moved, or nothing is waiting any more: stops the clock.
    pub fn progressed(&mut self) {
        self.since = None;
    }

    /// When the stall is declared, if writes are blocked now.
    pub fn deadline(&self) -> Option<Instant> {
        self.since.map(|s| s + self.limit)
    }

    /// Whether writes have been blocked without progress for `limit`.
    pub fn expired(&self, now: Instant) -> bool {
        self.deadline().is_some_and(|d| now >= d)
    }

    /// How long the current stall has lasted.
    pub fn stalled_for(&self, now: Instant) -> Duration {
        self.since
            .map_or(Duration::ZERO, |s| now.saturating_duration_since(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_unbroken_run_of_blocked_writes_expires() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut t = StallTimer::new(s(10));
        assert_eq!(t.deadline(), None);
        assert!(!t.expired(t0 + s(100)), "nothing blocked is never a stall");
        t.blocked(t0);
        t.blocked(t0 + s(5)); // a later block does not restart the clock
        assert_eq!(t.deadline(), Some(t0 + s(10)));
        assert!(!t.expired(t0 + s(9)));
        assert!(t.expired(t0 + s(10)));
        assert_eq!(t.stalled_for(t0 + s(4)), s(4));
        t.progressed();
        assert!(!t.expired(t0 + s(30)), "progress resets the run");
        t.blocked(t0 + s(30));
        assert!(!t.expired(t0 + s(39)));
        assert!(t.expired(t0 + s(40)));
    }
}
