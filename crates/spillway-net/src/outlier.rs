//! Passive outlier detection: upstreams that keep failing real connects are
//! taken out of the pool for a while, as a pure state machine.
//!
//! Semantics follow Envoy's consecutive-failure outlier detection:
//!
//! - `consecutive_failures` failed connects in a row (no success between)
//!   make an upstream an outlier.
//! - An outlier is ejected for `base_ejection_time × k`, where `k` is the
//!   number of times it has been ejected (this one included), capped at
//!   `max_ejection_time`. A host that flaps is thus kept out longer each
//!   time. `k` decays by one for every `base_ejection_time` the host then
//!   spends back in the pool without being ejected (Envoy decrements it at
//!   each detection interval), so an old incident stops counting.
//! - At most `max_ejection_percent` of the pool is ejected at once. Unlike
//!   Envoy, which always ejects the first host even when that alone exceeds
//!   the percentage, an ejection is refused whenever it would exceed it, so
//!   outlier detection alone never empties a pool (a one-upstream pool is
//!   never ejected: there is nowhere else to send traffic anyway).
//! - An ejection ends when its time is up ([`OutlierDetector::expire`]), or
//!   earlier when an active health check passes
//!   ([`OutlierDetector::uneject`], Envoy's
//!   `successful_active_health_check_uneject_host`).
//!
//! Nothing here reads a clock: every call takes `now`.

use std::time::{Duration, Instant};

/// Tuning of an [`OutlierDetector`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutlierConfig {
    /// Failed connects in a row that eject an upstream; 0 disables ejection.
    pub consecutive_failures: u32,
    /// Ejection time of a first ejection; multiplied by the ejection count.
    pub base_ejection_time: Duration,
    /// No ejection lasts longer than this (nor less than the base).
    pub max_ejection_time: Duration,
    /// At most this share of the pool (0..=100 %) is ejected at once.
    pub max_ejection_percent: u8,
}

impl Default for OutlierConfig {
    /// Envoy's defaults: 5 consecutive failures, 10 s base, 300 s cap, but
    /// 50 % (Envoy: 10 %) so that one bad upstream of a pair can be ejected.
    fn default() -> Self {
        OutlierConfig {
            consecutive_failures: 5,
            base_ejection_time: Duration::from_secs(10),
            max_ejection_time: Duration::from_secs(300),
            max_ejection_percent: 50,
        }
    }
}

/// Why an [`OutlierConfig`] is rejected.
#[non_exhaustive]
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum OutlierConfigError {
    /// A zero base would eject for no time at all.
    #[error("base_ejection_time must be greater than zero")]
    ZeroBase,
    /// The cap is below the base, so the base would never apply.
    #[error("max_ejection_time must be at least base_ejection_time")]
    CapBelowBase,
    /// A percentage above 100.
    #[error("max_ejection_percent must be between 0 and 100, got {0}")]
    Percent(u8),
}

impl OutlierConfig {
    /// Checks base > 0, cap >= base and percent <= 100.
    pub fn validate(&self) -> Result<(), OutlierConfigError> {
        if self.base_ejection_time.is_zero() {
            return Err(OutlierConfigError::ZeroBase);
        }
        if self.max_ejection_time < self.base_ejection_time {
            return Err(OutlierConfigError::CapBelowBase);
        }
        if self.max_ejection_percent > 100 {
            return Err(OutlierConfigError::Percent(self.max_ejection_percent));
        }
        Ok(())
    }
}

/// What a reported failure led to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Not (yet) an outlier, or already ejected.
    Kept,
    /// Ejected for `duration`; this is its `ejections`-th ejection (after decay).
    Ejected {
        /// How long it stays out.
        duration: Duration,
        /// The multiplier used.
        ejections: u32,
    },
    /// An outlier, but ejecting it would exceed `max_ejection_percent`.
    Refused {
        /// Upstreams already ejected.
        ejected: usize,
        /// Pool size.
        total: usize,
    },
}

#[derive(Clone, Debug, Default)]
struct Host {
    consecutive: u32,
    ejections: u32,
    ejected_until: Option<Instant>,
    /// When the host last came back (decay of `ejections` counts from here).
    returned_at: Option<Instant>,
}

/// Outlier state of a pool of upstreams, identified by index.
#[derive(Debug)]
pub struct OutlierDetector {
    config: OutlierConfig,
    hosts: Vec<Host>,
}

impl OutlierDetector {
    /// A pool of `n` upstreams, none ejected.
    pub fn new(config: OutlierConfig, n: usize) -> Self {
        OutlierDetector {
            config,
            hosts: vec![Host::default(); n],
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &OutlierConfig {
        &self.config
    }

    /// A connect to upstream `i` succeeded.
    pub fn on_success(&mut self, i: usize) {
        if let Some(h) = self.hosts.get_mut(i) {
            h.consecutive = 0;
        }
    }

    /// A connect to upstream `i` failed at `now`.
    pub fn on_failure(&mut self, i: usize, now: Instant) -> Verdict {
        let threshold = self.config.consecutive_failures;
        let total = self.hosts.len();
        let ejected = self.ejected_count(now);
        let Some(h) = self.hosts.get_mut(i) else {
            return Verdict::Kept;
        };
        h.consecutive = h.consecutive.saturating_add(1);
        if threshold == 0 || h.consecutive < threshold {
            return Verdict::Kept;
        }
        if h.ejected_until.is_some_and(|t| t > now) {
            // Tried in panic mode while ejected: already out.
            return Verdict::Kept;
        }
        // Would this ejection keep the pool within the percentage?
        let pct = usize::from(self.config.max_ejection_percent);
        if (ejected + 1) * 100 > pct * total {
            return Verdict::Refused { ejected, total };
        }
        // Decay: one ejection forgiven per base_ejection_time back in the pool.
        let base = self.config.base_ejection_time;
        if let Some(back) = h.returned_at {
            let quiet = now.saturating_duration_since(back);
            let forgiven = quiet.as_nanos() / base.as_nanos().max(1);
            let forgiven = u32::try_from(forgiven).unwrap_or(u32::MAX);
            h.ejections = h.ejections.saturating_sub(forgiven);
        }
        h.ejections = h.ejections.saturating_add(1);
        let duration = base
            .checked_mul(h.ejections)
            .unwrap_or(Duration::MAX)
            .min(self.config.max_ejection_time.max(base));
        h.ejected_until = Some(now + duration);
        h.consecutive = 0;
        Verdict::Ejected {
            duration,
            ejections: h.ejections,
        }
    }

    /// Ends the ejections whose time is up at `now`; returns those upstreams.
    pub fn expire(&mut self, now: Instant) -> Vec<usize> {
        let mut back = Vec::new();
        for (i, h) in self.hosts.iter_mut().enumerate() {
            if h.ejected_until.is_some_and(|t| t <= now) {
                h.ejected_until = None;
                h.returned_at = Some(now);
                back.push(i);
            }
        }
        back
    }

    /// Ends upstream `i`'s ejection early (an active check passed). Returns
    /// whether it was ejected.
    pub fn uneject(&mut self, i: usize, now: Instant) -> bool {
        match self.hosts.get_mut(i) {
            Some(h) if h.ejected_until.is_some_and(|t| t > now) => {
                h.ejected_until = None;
                h.returned_at = Some(now);
                h.consecutive = 0;
                true
            }
            _ => false,
        }
    }

    /// Whether upstream `i` is ejected at `now`.
    pub fn is_ejected(&self, i: usize, now: Instant) -> bool {
        self.hosts
            .get(i)
            .and_then(|h| h.ejected_until)
            .is_some_and(|t| t > now)
    }

    /// Upstreams ejected at `now`.
    pub fn ejected_count(&self, now: Instant) -> usize {
        (0..self.hosts.len())
            .filter(|&i| self.is_ejected(i, now))
            .count()
    }

    /// When upstream `i`'s ejection ends, if it is ejected.
    pub fn ejected_until(&self, i: usize) -> Option<Instant> {
        self.hosts.get(i).and_then(|h| h.ejected_until)
    }

    /// Consecutive failures of upstream `i` since its last success.
    pub fn consecutive_failures(&self, i: usize) -> u32 {
        self.hosts.get(i).map_or(0, |h| h.consecutive)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(n: u32, pct: u8) -> OutlierConfig {
        OutlierConfig {
            consecutive_failures: n,
            base_ejection_time: Duration::from_secs(10),
            max_ejection_time: Duration::from_secs(25),
            max_ejection_percent: pct,
        }
    }

    fn fail_n(d: &mut OutlierDetector, i: usize, n: u32, now: Instant) -> Verdict {
        let mut v = Verdict::Kept;
        for _ in 0..n {
            v = d.on_failure(i, now);
        }
        v
    }

    #[test]
    fn validate() {
        assert_eq!(OutlierConfig::default().validate(), Ok(()));
        let mut c = cfg(5, 50);
        c.base_ejection_time = Duration::ZERO;
        assert_eq!(c.validate(), Err(OutlierConfigError::ZeroBase));
        let mut c = cfg(5, 50);
        c.max_ejection_time = Duration::from_secs(1);
        assert_eq!(c.validate(), Err(OutlierConfigError::CapBelowBase));
        assert_eq!(
            cfg(5, 101).validate(),
            Err(OutlierConfigError::Percent(101))
        );
    }

    #[test]
    fn consecutive_failures_eject_and_a_success_resets() {
        let t0 = Instant::now();
        let mut d = OutlierDetector::new(cfg(3, 50), 2);
        assert_eq!(fail_n(&mut d, 0, 2, t0), Verdict::Kept);
        d.on_success(0);
        assert_eq!(fail_n(&mut d, 0, 2, t0), Verdict::Kept);
        assert!(!d.is_ejected(0, t0));
        assert_eq!(
            d.on_failure(0, t0),
            Verdict::Ejected {
                duration: Duration::from_secs(10),
                ejections: 1
            }
        );
        assert!(d.is_ejected(0, t0 + Duration::from_secs(9)));
        assert!(!d.is_ejected(1, t0));
        // While ejected, more failures change nothing.
        assert_eq!(fail_n(&mut d, 0, 5, t0), Verdict::Kept);
        assert_eq!(d.expire(t0 + Duration::from_secs(9)), Vec::<usize>::new());
        assert_eq!(d.expire(t0 + Duration::from_secs(10)), vec![0]);
        assert!(!d.is_ejected(0, t0 + Duration::from_secs(10)));
    }

    #[tokio::test(start_paused = true)]
    async fn ejection_time_grows_with_each_ejection_capped_and_decays() {
        let now = || tokio::time::Instant::now().into_std();
        let mut d = OutlierDetector::new(cfg(2, 100), 1);
        let mut durations = Vec::new();
        for _ in 0..4 {
            match fail_n(&mut d, 0, 2, now()) {
                Verdict::Ejected { duration, .. } => durations.push(duration),
                v => panic!("{v:?}"),
            }
            tokio::time::advance(*durations.last().expect("one")).await;
            assert_eq!(d.expire(now()), vec![0]);
        }
        let s = Duration::from_secs;
        // 10, 20, then capped at 25.
        assert_eq!(durations, vec![s(10), s(20), s(25), s(25)]);
        // 35 s back in the pool forgives 3 of the 4 ejections: the next is
        // the second (20 s).
        tokio::time::advance(s(35)).await;
        assert_eq!(
            fail_n(&mut d, 0, 2, now()),
            Verdict::Ejected {
                duration: s(20),
                ejections: 2
            }
        );
    }

    #[test]
    fn max_ejection_percent_keeps_part_of_the_pool() {
        let t0 = Instant::now();
        // 4 upstreams, 50 %: at most 2 ejected.
        let mut d = OutlierDetector::new(cfg(1, 50), 4);
        assert!(matches!(d.on_failure(0, t0), Verdict::Ejected { .. }));
        assert!(matches!(d.on_failure(1, t0), Verdict::Ejected { .. }));
        assert_eq!(
            d.on_failure(2, t0),
            Verdict::Refused {
                ejected: 2,
                total: 4
            }
        );
        assert_eq!(d.ejected_count(t0), 2);
        // Once one returns, the next outlier may go.
        d.expire(t0 + Duration::from_secs(10));
        assert!(matches!(
            d.on_failure(2, t0 + Duration::from_secs(10)),
            Verdict::Ejected { .. }
        ));
        // A single-upstream pool is never emptied at 50 %...
        let mut one = OutlierDetector::new(cfg(1, 50), 1);
        assert!(matches!(one.on_failure(0, t0), Verdict::Refused { .. }));
        // ...nor at 0 %, and 100 % may eject everything.
        let mut none = OutlierDetector::new(cfg(1, 0), 3);
        assert!(matches!(none.on_failure(0, t0), Verdict::Refused { .. }));
        let mut all = OutlierDetector::new(cfg(1, 100), 2);
        assert!(matches!(all.on_failure(0, t0), Verdict::Ejected { .. }));
        assert!(matches!(all.on_failure(1, t0), Verdict::Ejected { .. }));
    }

    #[test]
    fn disabled_and_uneject() {
        let t0 = Instant::now();
        let mut off = OutlierDetector::new(cfg(0, 100), 2);
        assert_eq!(fail_n(&mut off, 0, 100, t0), Verdict::Kept);
        let mut d = OutlierDetector::new(cfg(1, 100), 2);
        assert!(!d.uneject(0, t0));
        d.on_failure(0, t0);
        assert!(d.uneject(0, t0 + Duration::from_secs(1)));
        assert!(!d.is_ejected(0, t0 + Duration::from_secs(1)));
        assert_eq!(d.expire(t0 + Duration::from_secs(60)), Vec::<usize>::new());
        // Out of range indexes are ignored.
        assert_eq!(d.on_failure(7, t0), Verdict::Kept);
        d.on_success(7);
        assert!(!d.is_ejected(7, t0));
    }
}
