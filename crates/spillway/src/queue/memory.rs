//! One memory budget for what peers make the relay hold: queue producers'
//! read buffers (a partial message grows one up to `max_message`) and
//! consumers' send windows, across every queue route (`global.peer_memory`).
//!
//! Each connection holds a [`Charge`]: the bytes it has allocated for its
//! peer. A charge may always grow to [`MIN_HOLD`] (every producer can read
//! and every consumer can take at least one batch, so small messages keep
//! flowing). Past that it grows only while the process total stays within
//! the budget; a connection refused more is not read (a producer) or takes
//! nothing more until its acknowledgements come in (a consumer), and waits
//! until another charge shrinks. So the greedy ones (those that want more
//! than their minimum while the budget is spent) are pushed back by TCP
//! flow control instead of growing the process: the total stays under the
//! budget plus [`MIN_HOLD`] per connection (which the routes'
//! `max_connections` bound).
//!
//! Partial messages could spend the whole budget with none of them able
//! to finish (each needs more to complete, none frees any), and a single
//! message can be larger than a consumer's minimum: so one connection at a
//! time may grow past the budget (the *lane*, taken by the first that asks
//! when refused, and given back when its charge shrinks: a producer's
//! message completed, a consumer's acknowledgements came in). A producer
//! holds it for one `min_rate_grace` at most. The bound is then the
//! budget, plus one message (`max_message`, twice over for a producer's
//! geometric growth), plus [`MIN_HOLD`] per connection, plus each
//! consumer's redelivery window (charged, but kept whatever the budget:
//! it is what a reset re-sends; a consumer's small take is always
//! allowed too, so small messages keep flowing). A producer paused
//! here keeps its `slow_producer` clock running (see `source.rs`), so
//! holders that never finish their message cannot keep the budget.
//!
//! What is charged is what the relay allocated for the peer; the
//! allocator's own overhead (per-thread arenas, fragmentation) comes on
//! top, and the spool's reads hand out messages that do not keep larger
//! read buffers alive (see `spool/reader.rs`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

/// What a connection may always hold, whatever the budget.
pub const MIN_HOLD: u64 = 16 << 10;

/// The process-wide budget; share it in an `Arc`.
#[derive(Debug)]
pub struct MemoryBudget {
    limit: AtomicU64,
    used: AtomicU64,
    /// Connections waiting for memory (frees only wake when there are any).
    waiting: AtomicU64,
    /// Times a connection was refused growth (a metric).
    refused: AtomicU64,
    /// The charge allowed past the limit (0: none).
    lane: AtomicU64,
    next_id: AtomicU64,
    freed: Notify,
}

impl MemoryBudget {
    /// A budget of `limit` bytes (`u64::MAX`: unlimited).
    pub fn new(limit: u64) -> Self {
        MemoryBudget {
            limit: AtomicU64::new(limit),
            used: AtomicU64::new(0),
            waiting: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            lane: AtomicU64::new(0),
            next_id: AtomicU64::new(1),
            freed: Notify::new(),
        }
    }

    /// A new limit (a reload); charges over it shrink as their peers drain.
    pub fn set_limit(&self, limit: u64) {
        self.limit.store(limit, Ordering::Relaxed);
        self.freed.notify_waiters();
    }

    pub fn limit(&self) -> u64 {
        self.limit.load(Ordering::Relaxed)
    }

    /// Bytes charged by every connection now.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// How many times a connection was refused more memory.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// A connection's charge, holding nothing yet.
    pub fn charge(self: &Arc<Self>) -> Charge {
        Charge {
            budget: Arc::clone(self),
            held: 0,
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// A registration for the next time some charge shrinks (or the limit
    /// changes). Register before the attempt that failed, so a free in
    /// between is not missed:
    /// `let w = budget.waiter(); if !charge.try_set(n) { w.wait().await }`.
    pub fn waiter(&self) -> Waiter<'_> {
        self.waiting.fetch_add(1, Ordering::Relaxed);
        let mut notified = Box::pin(self.freed.notified());
        notified.as_mut().enable();
        Waiter {
            budget: self,
            notified,
        }
    }

    fn release(&self, bytes: u64) {
        if bytes == 0 {
            return;
        }
        self.used.fetch_sub(bytes, Ordering::Relaxed);
        if self.waiting.load(Ordering::Relaxed) > 0 {
            self.freed.notify_waiters();
        }
    }
}

/// The bytes one connection holds for its peer; given back on drop.
#[derive(Debug)]
pub struct Charge {
    budget: Arc<MemoryBudget>,
    held: u64,
    id: u64,
}

impl Charge {
    pub fn held(&self) -> u64 {
        self.held
    }

    /// Grows (or shrinks) the charge to `bytes` if the budget allows:
    /// shrinking always, growing up to [`MIN_HOLD`] always, and past it
    /// while the total stays within the limit. Returns whether it did.
    pub fn try_set(&mut self, bytes: u64) -> bool {
        if bytes <= self.held {
            self.set(bytes);
            return true;
        }
        let grow = bytes - self.held;
        if bytes <= MIN_HOLD {
            self.budget.used.fetch_add(grow, Ordering::Relaxed);
            self.held = bytes;
            return true;
        }
        let limit = self.budget.limit();
        let admitted = self
            .budget
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                let total = used.checked_add(grow)?;
                (total <= limit).then_some(total)
            })
            .is_ok();
        if admitted {
            self.held = bytes;
            return true;
        }
        self.budget.refused.fetch_add(1, Ordering::Relaxed);
        false
    }

    /// [`Charge::try_set`], and when the budget refuses, past it if this
    /// charge holds the lane or takes it (one connection at a time: one
    /// whose message cannot complete or be sent otherwise).
    pub fn try_set_or_lane(&mut self, bytes: u64) -> bool {
        if self.try_set(bytes) {
            return true;
        }
        let lane = &self.budget.lane;
        if lane.load(Ordering::Relaxed) == self.id
            || lane
                .compare_exchange(0, self.id, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.budget
                .used
                .fetch_add(bytes - self.held, Ordering::Relaxed);
            self.held = bytes;
            return true;
        }
        false
    }

    /// Whether this charge holds the lane past the limit.
    pub fn in_lane(&self) -> bool {
        self.budget.lane.load(Ordering::Relaxed) == self.id
    }

    /// Gives the lane back, if this charge holds it.
    pub fn leave_lane(&self) {
        if self
            .budget
            .lane
            .compare_exchange(self.id, 0, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            self.budget.freed.notify_waiters();
        }
    }

    /// Sets the charge to what the connection actually holds (an
    /// allocation already made: a drain at the end, a buffer that grew).
    pub fn set(&mut self, bytes: u64) {
        if bytes >= self.held {
            self.budget
                .used
                .fetch_add(bytes - self.held, Ordering::Relaxed);
        } else {
            self.budget.release(self.held - bytes);
            self.leave_lane();
        }
        self.held = bytes;
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget.release(self.held);
        self.leave_lane();
    }
}

/// A registration for the next free of memory (see [`MemoryBudget::waiter`]).
pub struct Waiter<'a> {
    budget: &'a MemoryBudget,
    notified: std::pin::Pin<Box<tokio::sync::futures::Notified<'a>>>,
}

impl Waiter<'_> {
    pub async fn wait(mut self) {
        self.notified.as_mut().await;
    }
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        self.budget.waiting.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn growth_past_the_minimum_stops_at_the_limit() {
        let b = Arc::new(MemoryBudget::new(100 << 10));
        let mut a = b.charge();
        let mut c = b.charge();
        assert!(a.try_set(80 << 10));
        // Within the minimum: always.
        assert!(c.try_set(MIN_HOLD));
        assert_eq!(b.used(), (80 << 10) + MIN_HOLD);
        // Past the limit: refused, nothing charged.
        assert!(!c.try_set(MIN_HOLD + (8 << 10)));
        assert_eq!(c.held(), MIN_HOLD);
        assert_eq!(b.refused(), 1);
        // Shrinking frees room.
        a.set(0);
        assert!(c.try_set(50 << 10));
        drop(c);
        assert_eq!(b.used(), 0);
    }

    #[test]
    fn one_producer_at_a_time_may_grow_past_the_limit() {
        let b = Arc::new(MemoryBudget::new(64 << 10));
        let mut a = b.charge();
        let mut c = b.charge();
        assert!(a.try_set(64 << 10));
        assert!(c.try_set(MIN_HOLD));
        // A plain try never takes the lane.
        assert!(!c.try_set(MIN_HOLD * 2));
        assert!(!c.in_lane());
        // The first refused that asks takes it and keeps it while it grows.
        assert!(c.try_set_or_lane(MIN_HOLD * 2));
        assert!(c.in_lane());
        assert!(c.try_set_or_lane(1 << 20));
        // No one else meanwhile.
        assert!(!a.try_set_or_lane(128 << 10));
        // Shrinking gives it back.
        c.set(MIN_HOLD);
        assert!(!c.in_lane());
        assert!(a.try_set_or_lane(128 << 10));
        assert!(a.in_lane());
        drop(a);
        assert_eq!(b.used(), MIN_HOLD);
    }

    #[tokio::test]
    async fn a_waiter_wakes_when_memory_is_freed() {
        let b = Arc::new(MemoryBudget::new(64 << 10));
        let mut big = b.charge();
        assert!(big.try_set(64 << 10));
        let mut small = b.charge();
        assert!(small.try_set(MIN_HOLD));
        let w = b.waiter();
        assert!(!small.try_set(32 << 10));
        let freer = tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            drop(big);
        });
        tokio::time::timeout(std::time::Duration::from_secs(5), w.wait())
            .await
            .expect("woken by the free");
        assert!(small.try_set(32 << 10));
        freer.await.unwrap();
    }
}
