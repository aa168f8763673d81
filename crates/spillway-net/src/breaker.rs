//! Per-upstream circuit breaker: bounds on concurrent connects and
//! connections, so a slow or overloaded upstream makes new clients fail
//! fast instead of piling up (Envoy's `max_connections` and
//! `max_pending_requests` thresholds, applied at L4).
//!
//! - A connect in progress holds a [`Pending`] permit. At most
//!   `max_pending` of them exist per upstream: an upstream that accepts
//!   slowly (SYN backlog full, far away) cannot collect thousands of
//!   half-open attempts.
//! - An established connection holds an [`Active`] permit. Pending and
//!   active together are at most `max_connections`.
//! - A refused acquisition is counted by [`Overflow`] kind, and the caller
//!   closes the client at once with a logged reason: nothing is queued.
//!
//! Permits release on drop, so every exit path (error, panic, cancel)
//! gives its slot back. The breaker has no notion of time: its state is
//! the set of permits alive.

use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

/// Limits of one upstream. `usize::MAX` means unlimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Connections (connecting or established) to the upstream at once.
    pub max_connections: usize,
    /// Connects in progress to the upstream at once.
    pub max_pending: usize,
}

impl Default for BreakerConfig {
    /// Envoy's default thresholds are 1024 for both; a relay fronting a
    /// TCP service usually wants more established connections, so
    /// connections default to the route's own limit (10 000) and pending
    /// connects to 1024.
    fn default() -> Self {
        BreakerConfig {
            max_connections: 10_000,
            max_pending: 1024,
        }
    }
}

/// Which limit refused a permit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Overflow {
    /// `max_connections` reached.
    Connections,
    /// `max_pending` reached.
    Pending,
}

impl Overflow {
    /// Both kinds, in declaration order.
    pub const ALL: [Overflow; 2] = [Overflow::Connections, Overflow::Pending];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Overflow::Connections => "max_connections",
            Overflow::Pending => "max_pending",
        }
    }
}

impl fmt::Display for Overflow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The breaker of one upstream, with its live counts.
#[derive(Debug)]
pub struct Breaker {
    config: BreakerConfig,
    pending: AtomicUsize,
    active: AtomicUsize,
    rejected: [AtomicU64; 2],
}

/// A connect in progress; converts into [`Active`] once connected.
#[derive(Debug)]
pub struct Pending {
    breaker: Arc<Breaker>,
}

/// An established connection's slot.
#[derive(Debug)]
pub struct Active {
    breaker: Arc<Breaker>,
}

impl Breaker {
    /// A breaker with nothing in flight.
    pub fn new(config: BreakerConfig) -> Self {
        Breaker {
            config,
            pending: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            rejected: Default::default(),
        }
    }

    /// The limits in force.
    pub fn config(&self) -> BreakerConfig {
        self.config
    }

    /// Connects in progress.
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }

    /// Established connections.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Acquisitions refused by `kind` so far.
    pub fn rejected(&self, kind: Overflow) -> u64 {
        self.rejected[kind as usize].load(Ordering::Relaxed)
    }

    /// Whether a new connect would be admitted now (a hint for picking;
    /// [`Breaker::try_pending`] decides).
    pub fn has_room(&self) -> bool {
        let pending = self.pending();
        pending < self.config.max_pending
            && pending.saturating_add(self.active()) < self.config.max_connections
    }

    /// Admits a new connect, or says which limit refused it (and counts it).
    pub fn try_pending(self: &Arc<Self>) -> Result<Pending, Overflow> {
        // Reserve first, then check, so concurrent callers never both slip
        // under the limit; a refused reservation is undone.
        let pending = self.pending.fetch_add(1, Ordering::AcqRel) + 1;
        let overflow = if pending > self.config.max_pending {
            Some(Overflow::Pending)
        } else if pending.saturating_add(self.active.load(Ordering::Acquire))
            > self.config.max_connections
        {
            Some(Overflow::Connections)
        } else {
            None
        };
        match overflow {
            Some(kind) => {
                self.pending.fetch_sub(1, Ordering::AcqRel);
                self.rejected[kind as usize].fetch_add(1, Ordering::Relaxed);
                Err(kind)
            }
            None => Ok(Pending {
                breaker: Arc::clone(self),
            }),
        }
    }
}

impl Pending {
    /// The connect succeeded: the slot becomes an established connection
    /// (the connection count is unchanged, so this cannot be refused).
    pub fn established(self) -> Active {
        let breaker = Arc::clone(&self.breaker);
        // Count active before dropping pending so the sum never dips.
        breaker.active.fetch_add(1, Ordering::AcqRel);
        drop(self);
        Active { breaker }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.breaker.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.breaker.active.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(conns: usize, pending: usize) -> Arc<Breaker> {
        Arc::new(Breaker::new(BreakerConfig {
            max_connections: conns,
            max_pending: pending,
        }))
    }

    #[test]
    fn pending_limit_refuses_and_counts() {
        let b = breaker(100, 2);
        let p1 = b.try_pending().expect("1");
        let p2 = b.try_pending().expect("2");
        assert!(!b.has_room());
        assert_eq!(b.try_pending().map(|_| ()), Err(Overflow::Pending));
        assert_eq!(b.rejected(Overflow::Pending), 1);
        assert_eq!(b.pending(), 2);
        drop(p1);
        assert!(b.has_room());
        let _a = p2.established();
        assert_eq!((b.pending(), b.active()), (0, 1));
        let _p3 = b.try_pending().expect("3");
    }

    #[test]
    fn connection_limit_counts_pending_and_active() {
        let b = breaker(3, 10);
        let a1 = b.try_pending().expect("1").established();
        let a2 = b.try_pending().expect("2").established();
        let p3 = b.try_pending().expect("3");
        assert_eq!(b.try_pending().map(|_| ()), Err(Overflow::Connections));
        let a3 = p3.established();
        assert_eq!(b.try_pending().map(|_| ()), Err(Overflow::Connections));
        assert_eq!(b.rejected(Overflow::Connections), 2);
        assert_eq!(b.rejected(Overflow::Pending), 0);
        drop(a2);
        let _p = b.try_pending().expect("room again");
        assert_eq!((b.pending(), b.active()), (1, 2));
        drop((a1, a3));
        assert_eq!(b.active(), 0);
    }

    #[test]
    fn concurrent_acquirers_never_exceed_the_limit() {
        let b = breaker(usize::MAX, 8);
        let held = std::sync::Mutex::new(Vec::new());
        // Permits alive, counted up after acquiring and down before
        // releasing, so it never overstates what the breaker allowed.
        let live = AtomicUsize::new(0);
        let peak = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    let mut mine = Vec::new();
                    for k in 0..2000 {
                        if let Ok(p) = b.try_pending() {
                            let n = live.fetch_add(1, Ordering::SeqCst) + 1;
                            peak.fetch_max(n, Ordering::SeqCst);
                            mine.push(p);
                        }
                        if k % 3 == 0 && !mine.is_empty() {
                            live.fetch_sub(1, Ordering::SeqCst);
                            mine.remove(0);
                        }
                    }
                    live.fetch_sub(mine.len(), Ordering::SeqCst);
                    held.lock().expect("lock").extend(mine);
                });
            }
        });
        assert!(peak.load(Ordering::Relaxed) <= 8);
        held.lock().expect("lock").clear();
        assert_eq!(b.pending(), 0);
    }
}
