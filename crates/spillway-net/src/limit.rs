//! Connection limits on listeners: a total and a per-client-IP bound.
//!
//! A [`ConnLimits`] counts the connections it admitted; each holds a
//! [`ConnPermit`] that gives its slot back on drop. One instance with only
//! a total serves as the process-wide limit across routes, another per
//! route bounds each client address, so one client opening thousands of
//! connections cannot take the whole relay. Over a limit the caller
//! closes the new connection at once (and logs it, rate-limited): a
//! listener under attack sheds the excess instead of queueing it.
//!
//! Addresses are counted after mapping IPv4-mapped IPv6 addresses
//! (`::ffff:a.b.c.d`) back to IPv4, so a dual-stack listener counts a
//! client once. IPv6 addresses are counted by network prefix (a /64 by
//! default): one host usually holds a whole /64, so keying on the full
//! /128 would let a single client open unlimited connections.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Which limit refused a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LimitKind {
    /// The total (`max_connections`).
    Total,
    /// The per-client-address bound (`max_connections_per_ip`).
    PerIp,
}

impl LimitKind {
    /// Both kinds, in declaration order.
    pub const ALL: [LimitKind; 2] = [LimitKind::Total, LimitKind::PerIp];

    /// Position in [`LimitKind::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            LimitKind::Total => "max_connections",
            LimitKind::PerIp => "max_connections_per_ip",
        }
    }
}

impl fmt::Display for LimitKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Bounds and live counts; share it in an `Arc`.
#[derive(Debug)]
pub struct ConnLimits {
    max_total: usize,
    max_per_ip: usize,
    /// Leading bits of an IPv6 address that identify one client.
    ipv6_prefix: u8,
    total: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    rejected: [AtomicU64; 2],
}

/// One admitted connection's slot; released on drop.
#[derive(Debug)]
pub struct ConnPermit {
    limits: Arc<ConnLimits>,
    ip: Option<IpAddr>,
}

/// The per-client key of `ip`: IPv4 as is (IPv4-mapped IPv6 included),
/// IPv6 cut to its first `prefix` bits.
fn canonical(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u128::from(v6);
                let keep = u32::from(prefix.min(128));
                let mask = u128::MAX.checked_shl(128 - keep).unwrap_or(0);
                IpAddr::V6((bits & mask).into())
            }
        },
        v4 => v4,
    }
}

/// The default IPv6 prefix of one client.
pub const DEFAULT_IPV6_PREFIX: u8 = 64;

impl ConnLimits {
    /// `usize::MAX` for either bound means unlimited; a per-IP bound of
    /// `usize::MAX` also skips the per-address bookkeeping.
    pub fn new(max_total: usize, max_per_ip: usize) -> Self {
        ConnLimits {
            max_total,
            max_per_ip,
            ipv6_prefix: DEFAULT_IPV6_PREFIX,
            total: AtomicUsize::new(0),
            per_ip: Mutex::new(HashMap::new()),
            rejected: Default::default(),
        }
    }

    /// Counts IPv6 clients by their first `prefix` bits (1 to 128).
    pub fn with_ipv6_prefix(mut self, prefix: u8) -> Self {
        self.ipv6_prefix = prefix.clamp(1, 128);
        self
    }

    /// No limits at all.
    pub fn unlimited() -> Self {
        Self::new(usize::MAX, usize::MAX)
    }

    /// Connections admitted and still open.
    pub fn active(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    /// Open connections from `ip` (0 when per-IP counting is off).
    pub fn active_from(&self, ip: IpAddr) -> usize {
        self.lock()
            .get(&canonical(ip, self.ipv6_prefix))
            .copied()
            .unwrap_or(0)
    }

    /// Connections refused by `kind` so far.
    pub fn rejected(&self, kind: LimitKind) -> u64 {
        self.rejected[kind as usize].load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        // The map holds plain counts, each update a single statement: a
        // panic elsewhere cannot leave it inconsistent.
        self.per_ip.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admits a connection from `ip`, or says which bound refused it (and
    /// counts the refusal).
    pub fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Result<ConnPermit, LimitKind> {
        let total = self.total.fetch_add(1, Ordering::AcqRel) + 1;
        if total > self.max_total {
            self.total.fetch_sub(1, Ordering::AcqRel);
            self.rejected[LimitKind::Total as usize].fetch_add(1, Ordering::Relaxed);
            return Err(LimitKind::Total);
        }
        let mut tracked = None;
        if self.max_per_ip != usize::MAX {
            let ip = canonical(ip, self.ipv6_prefix);
            let mut map = self.lock();
            let n = map.entry(ip).or_insert(0);
            if *n >= self.max_per_ip {
                drop(map);
                self.total.fetch_sub(1, Ordering::AcqRel);
                self.rejected[LimitKind::PerIp as usize].fetch_add(1, Ordering::Relaxed);
                return Err(LimitKind::PerIp);
            }
            *n += 1;
            tracked = Some(ip);
        }
        Ok(ConnPermit {
            limits: Arc::clone(self),
            ip: tracked,
        })
    }
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        if let Some(ip) = self.ip {
            let mut map = self.limits.lock();
            if let Some(n) = map.get_mut(&ip) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    map.remove(&ip);
                }
            }
        }
        self.limits.total.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn per_ip_bound_is_per_address() {
        let l = Arc::new(ConnLimits::new(usize::MAX, 2));
        let a1 = l.try_acquire(ip("10.0.0.1")).expect("a1");
        let _a2 = l.try_acquire(ip("10.0.0.1")).expect("a2");
        // The same client over a dual-stack socket counts as the same.
        assert_eq!(
            l.try_acquire(ip("::ffff:10.0.0.1")).map(|_| ()),
            Err(LimitKind::PerIp)
        );
        let _b = l.try_acquire(ip("10.0.0.2")).expect("other client");
        assert_eq!(l.rejected(LimitKind::PerIp), 1);
        assert_eq!(l.active_from(ip("10.0.0.1")), 2);
        drop(a1);
        let _a3 = l.try_acquire(ip("10.0.0.1")).expect("room again");
        assert_eq!(l.active(), 3);
    }

    #[test]
    fn ipv6_clients_are_counted_by_prefix() {
        let l = Arc::new(ConnLimits::new(usize::MAX, 2));
        // Two addresses of one /64: one client.
        let _a = l.try_acquire(ip("2001:db8:1:2::1")).expect("a");
        let _b = l.try_acquire(ip("2001:db8:1:2:ffff::9")).expect("b");
        assert_eq!(
            l.try_acquire(ip("2001:db8:1:2:dead:beef:0:1")).map(|_| ()),
            Err(LimitKind::PerIp),
            "a third address of the same /64"
        );
        // Another /64 is another client.
        let _c = l.try_acquire(ip("2001:db8:1:3::1")).expect("other /64");
        // A /128 key when configured so.
        let exact = Arc::new(ConnLimits::new(usize::MAX, 1).with_ipv6_prefix(128));
        let _d = exact.try_acquire(ip("2001:db8::1")).expect("d");
        let _e = exact
            .try_acquire(ip("2001:db8::2"))
            .expect("a different /128");
        assert_eq!(canonical(ip("2001:db8::1"), 48), ip("2001:db8::"));
        assert_eq!(canonical(ip("::ffff:10.0.0.1"), 64), ip("10.0.0.1"));
    }

    #[test]
    fn total_bound_and_release() {
        let l = Arc::new(ConnLimits::new(2, usize::MAX));
        let p: Vec<_> = (1..=2)
            .map(|i| l.try_acquire(ip(&format!("10.0.0.{i}"))).expect("room"))
            .collect();
        assert_eq!(
            l.try_acquire(ip("10.0.0.9")).map(|_| ()),
            Err(LimitKind::Total)
        );
        assert_eq!(l.rejected(LimitKind::Total), 1);
        assert_eq!(l.active_from(ip("10.0.0.1")), 0, "per-IP counting off");
        drop(p);
        assert_eq!(l.active(), 0);
        let u = Arc::new(ConnLimits::unlimited());
        let held: Vec<_> = (0..1000)
            .map(|_| u.try_acquire(ip("::1")).expect("unlimited"))
            .collect();
        assert_eq!(u.active(), 1000);
        drop(held);
        assert_eq!(u.active(), 0);
    }

    #[test]
    fn refused_per_ip_gives_back_the_total() {
        let l = Arc::new(ConnLimits::new(3, 1));
        let _a = l.try_acquire(ip("10.0.0.1")).expect("a");
        for _ in 0..5 {
            assert!(l.try_acquire(ip("10.0.0.1")).is_err());
        }
        assert_eq!(l.active(), 1);
        let _b = l.try_acquire(ip("10.0.0.2")).expect("b");
        let _c = l.try_acquire(ip("10.0.0.3")).expect("c");
        assert_eq!(
            l.try_acquire(ip("10.0.0.4")).map(|_| ()),
            Err(LimitKind::Total)
        );
        assert!(l.lock().len() == 3);
    }
}
