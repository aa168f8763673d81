//! Picking an upstream for a new connection.
//!
//! The balancer only decides; the caller connects and reports back through
//! the returned [`Lease`], which keeps the active-connection count that
//! least-conn and power-of-two-choices read.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

/// How the next upstream is chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Balance {
    /// Each upstream in turn.
    RoundRobin,
    /// The upstream with the fewest active connections (ties: the first after
    /// the round-robin position, so equal loads still spread).
    LeastConn,
    /// Power of two choices: two upstreams at random, the less loaded wins.
    /// Nearly as even as least-conn without every picker herding onto the
    /// same momentarily idle upstream.
    Random,
}

impl std::str::FromStr for Balance {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "round-robin" => Ok(Balance::RoundRobin),
            "least-conn" => Ok(Balance::LeastConn),
            "random" => Ok(Balance::Random),
            other => Err(format!(
                "unknown balance '{other}': expected round-robin, least-conn or random"
            )),
        }
    }
}

impl std::fmt::Display for Balance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Balance::RoundRobin => "round-robin",
            Balance::LeastConn => "least-conn",
            Balance::Random => "random",
        })
    }
}

/// Live counters of one upstream.
#[derive(Debug, Default)]
pub struct UpstreamLoad {
    active: AtomicUsize,
    picked: AtomicU64,
}

impl UpstreamLoad {
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }
    pub fn picked(&self) -> u64 {
        self.picked.load(Ordering::Relaxed)
    }
}

/// A pool of `n` upstreams, identified by index.
#[derive(Debug)]
pub struct Balancer {
    policy: Balance,
    loads: Vec<Arc<UpstreamLoad>>,
    next: AtomicUsize,
}

/// One connection's claim on an upstream; dropping it releases the claim.
#[derive(Debug)]
pub struct Lease {
    index: usize,
    load: Arc<UpstreamLoad>,
}

impl Lease {
    pub fn index(&self) -> usize {
        self.index
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.load.active.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Balancer {
    pub fn new(policy: Balance, upstreams: usize) -> Self {
        Balancer {
            policy,
            loads: (0..upstreams).map(|_| Arc::default()).collect(),
            next: AtomicUsize::new(0),
        }
    }

    pub fn len(&self) -> usize {
        self.loads.len()
    }

    pub fn is_empty(&self) -> bool {
        self.loads.is_empty()
    }

    pub fn load(&self, index: usize) -> Option<&UpstreamLoad> {
        self.loads.get(index).map(|l| &**l)
    }

    /// Picks an upstream among those for which `eligible` is true (e.g. not
    /// tried yet for this connection, not ejected). `None` when none is.
    pub fn pick(&self, eligible: impl Fn(usize) -> bool) -> Option<Lease> {
        let n = self.loads.len();
        let candidates: Vec<usize> = (0..n).filter(|&i| eligible(i)).collect();
        if candidates.is_empty() {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let index = match self.policy {
            Balance::RoundRobin => candidates[start % candidates.len()],
            Balance::LeastConn => {
                let len = candidates.len();
                (0..len)
                    .map(|k| candidates[(start + k) % len])
                    .min_by_key(|&i| self.loads[i].active())
                    .unwrap_or(candidates[0])
            }
            Balance::Random => {
                let a = candidates[fastrand::usize(..candidates.len())];
                let b = candidates[fastrand::usize(..candidates.len())];
                if self.loads[b].active() < self.loads[a].active() {
                    b
                } else {
                    a
                }
            }
        };
        let load = Arc::clone(&self.loads[index]);
        load.active.fetch_add(1, Ordering::Relaxed);
        load.picked.fetch_add(1, Ordering::Relaxed);
        Some(Lease { index, load })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_cycles_over_eligible() {
        let b = Balancer::new(Balance::RoundRobin, 3);
        let picks: Vec<usize> = (0..6)
            .map(|_| b.pick(|_| true).expect("pick").index())
            .collect();
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2]);
        let only_two: Vec<usize> = (0..4)
            .map(|_| b.pick(|i| i != 1).expect("pick").index())
            .collect();
        assert!(only_two.iter().all(|&i| i != 1));
        assert!(b.pick(|_| false).is_none());
    }

    #[test]
    fn least_conn_prefers_idle_upstream_and_leases_release() {
        let b = Balancer::new(Balance::LeastConn, 2);
        let first = b.pick(|_| true).expect("pick");
        let held: Vec<Lease> = (0..3).map(|_| b.pick(|_| true).expect("pick")).collect();
        // With one connection already on `first`, loads stay within one of each other.
        let a = b.load(0).expect("0").active();
        let c = b.load(1).expect("1").active();
        assert_eq!(a + c, 4);
        assert!(a.abs_diff(c) <= 1, "{a} vs {c}");
        drop(first);
        drop(held);
        assert_eq!(
            b.load(0).expect("0").active() + b.load(1).expect("1").active(),
            0
        );
    }

    #[test]
    fn power_of_two_avoids_the_loaded_upstream() {
        let b = Balancer::new(Balance::Random, 2);
        // Pin 10 connections on upstream 0.
        let pinned: Vec<Lease> = (0..10).map(|_| b.pick(|i| i == 0).expect("pick")).collect();
        let mut to_one = 0;
        for _ in 0..200 {
            let l = b.pick(|_| true).expect("pick");
            if l.index() == 1 {
                to_one += 1;
            }
        }
        drop(pinned);
        // Upstream 0 only wins when both draws hit it (about a quarter).
        assert!(
            to_one > 100,
            "only {to_one} of 200 went to the idle upstream"
        );
    }
}
