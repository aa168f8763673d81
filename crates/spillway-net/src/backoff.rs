//! Exponential backoff with full jitter, as a pure state machine.
//!
//! The dialer reports events — a failed attempt, a connection made at `now`,
//! a connection lost at `now` — and gets back how long to wait before the
//! next attempt. Nothing here sleeps or reads a clock, so tests drive it with
//! any `Instant` they like (a paused tokio clock converts with
//! `tokio::time::Instant::into_std`).
//!
//! Delays follow "full jitter" (AWS Architecture Blog, "Exponential Backoff
//! And Jitter"): after the `n`-th consecutive failure (counting from 0) the
//! delay is drawn uniformly from `[0, min(cap, base * factor^n)]`. Spreading
//! retries over the whole window keeps many clients that failed together
//! from retrying together.
//!
//! The failure count resets only after a connection stayed up for
//! `reset_after`: a peer that accepts and immediately drops connections keeps
//! being backed off instead of being hammered at `base` intervals.

use std::time::{Duration, Instant};

use crate::classify::ErrorClass;

/// Shortest pause after a resource error (EMFILE, ENOMEM...): the same
/// order as the accept loop's longest pause.
pub const RESOURCE_FLOOR: Duration = Duration::from_secs(1);

/// Tuning of a [`Backoff`]. Check it with [`BackoffConfig::validate`] (or
/// build with [`Backoff::try_new`]) when it comes from a user.
#[derive(Clone, Debug, PartialEq)]
pub struct BackoffConfig {
    /// Upper bound of the first delay; must be > 0.
    pub base: Duration,
    /// Growth of the bound per consecutive failure; finite and >= 1.
    pub factor: f64,
    /// The bound never exceeds this; must be >= `base`.
    pub cap: Duration,
    /// Give up after this many consecutive failures (`None`: never).
    pub max_attempts: Option<u32>,
    /// A connection that stayed up at least this long resets the count.
    pub reset_after: Duration,
}

impl Default for BackoffConfig {
    /// - `base` 100 ms: a restarting peer on the same host is usually back
    ///   within a few hundred milliseconds; the first retry should be quick.
    /// - `factor` 2: the usual doubling; the bound reaches `cap` after ~9
    ///   failures (100 ms · 2^9 ≈ 51 s), i.e. within about a minute.
    /// - `cap` 30 s: long enough not to load a struggling peer, short enough
    ///   that data resumes flowing soon after it recovers.
    /// - `max_attempts` none: a relay keeps trying forever; its job is to
    ///   deliver once the peer is back.
    /// - `reset_after` 10 s: longer than a crash-on-accept loop, short enough
    ///   that a working connection quickly earns fast reconnects again.
    fn default() -> Self {
        BackoffConfig {
            base: Duration::from_millis(100),
            factor: 2.0,
            cap: Duration::from_secs(30),
            max_attempts: None,
            reset_after: Duration::from_secs(10),
        }
    }
}

/// Why a [`BackoffConfig`] is rejected.
#[non_exhaustive]
#[derive(thiserror::Error, Debug, Clone, PartialEq)]
pub enum BackoffError {
    /// `base` is zero: every delay would be zero, a tight reconnect loop.
    #[error("backoff base must be greater than zero")]
    ZeroBase,
    /// `cap` is below `base`, so `base` would never apply.
    #[error("backoff cap ({cap:?}) must be at least the base ({base:?})")]
    CapBelowBase {
        /// The configured cap.
        cap: Duration,
        /// The configured base.
        base: Duration,
    },
    /// `factor` is below 1 (delays would shrink) or not finite.
    #[error("backoff factor must be a finite number >= 1, got {factor}")]
    InvalidFactor {
        /// The configured factor.
        factor: f64,
    },
}

impl BackoffConfig {
    /// Checks `base > 0`, `cap >= base` and `factor` finite and `>= 1`.
    pub fn validate(&self) -> Result<(), BackoffError> {
        if self.base.is_zero() {
            return Err(BackoffError::ZeroBase);
        }
        if self.cap < self.base {
            return Err(BackoffError::CapBelowBase {
                cap: self.cap,
                base: self.base,
            });
        }
        // `is_finite` rejects NaN, which would compare false below.
        if !self.factor.is_finite() || self.factor < 1.0 {
            return Err(BackoffError::InvalidFactor {
                factor: self.factor,
            });
        }
        Ok(())
    }

    /// The upper bound of the delay after `failures` earlier consecutive
    /// failures: `min(cap, base * factor^failures)`, without overflow.
    pub fn ceiling(&self, failures: u32) -> Duration {
        let cap = self.cap.as_secs_f64();
        let bound = self.base.as_secs_f64() * self.factor.powf(f64::from(failures));
        // NaN (bad factor) and infinity (huge n) both land on the cap.
        if bound.is_finite() && bound < cap {
            Duration::from_secs_f64(bound.max(0.0))
        } else {
            self.cap
        }
    }
}

/// Backoff state for one peer: consecutive failures and connection uptime.
#[derive(Debug)]
pub struct Backoff {
    config: BackoffConfig,
    attempts: u32,
    connected_at: Option<Instant>,
    rng: fastrand::Rng,
}

impl Backoff {
    /// A backoff with a randomly seeded generator. Does not validate
    /// `config`; an invalid one still never panics (delays are clamped to
    /// `[0, cap]`), but use [`Backoff::try_new`] for user input.
    pub fn new(config: BackoffConfig) -> Self {
        Self::with_rng(config, fastrand::Rng::new())
    }

    /// Like [`Backoff::new`] with a fixed seed, for reproducible tests.
    pub fn with_seed(config: BackoffConfig, seed: u64) -> Self {
        Self::with_rng(config, fastrand::Rng::with_seed(seed))
    }

    /// Validates `config`, then [`Backoff::new`].
    pub fn try_new(config: BackoffConfig) -> Result<Self, BackoffError> {
        config.validate()?;
        Ok(Self::new(config))
    }

    fn with_rng(config: BackoffConfig, rng: fastrand::Rng) -> Self {
        Backoff {
            config,
            attempts: 0,
            connected_at: None,
            rng,
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &BackoffConfig {
        &self.config
    }

    /// A connection attempt failed: `Some(delay)` to wait before the next
    /// one, uniformly drawn from `[0, min(cap, base * factor^n)]` where `n`
    /// is the number of consecutive failures before this one; `None` once
    /// `max_attempts` consecutive failures have been reported (give up).
    pub fn on_failure(&mut self) -> Option<Duration> {
        // A failure means no connection is up, whatever was reported before.
        self.connected_at = None;
        if self
            .config
            .max_attempts
            .is_some_and(|max| self.attempts >= max)
        {
            return None;
        }
        let ceiling = self.config.ceiling(self.attempts);
        self.attempts = self.attempts.saturating_add(1);
        // Drawn in whole nanoseconds so both ends are reachable; a ceiling
        // beyond u64 nanoseconds (~584 years) is clamped.
        let ceiling = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Some(Duration::from_nanos(self.rng.u64(0..=ceiling)))
    }

    /// A connection attempt failed with an error of `class` (see
    /// [`crate::classify`]): `None` once `max_attempts` is used up, else the
    /// delay before the next attempt.
    ///
    /// - `Transient`: [`on_failure`](Self::on_failure), full jitter.
    /// - `Persistent`: retrying soon cannot help, so wait long: uniform in
    ///   `[cap/2, cap]` (jittered, so many relays that share a broken
    ///   config do not retry in step). Never a tight loop.
    /// - `Resource`: throttle: at least `min(cap, 1 s)`, up to the usual
    ///   exponential ceiling, so a process out of descriptors is not
    ///   asked to open more at `base` intervals.
    pub fn on_classified_failure(&mut self, class: ErrorClass) -> Option<Duration> {
        let jittered = self.on_failure()?;
        let cap = self.config.cap;
        let draw = |rng: &mut fastrand::Rng, lo: Duration, hi: Duration| {
            let lo_ns = u64::try_from(lo.as_nanos()).unwrap_or(u64::MAX);
            let hi_ns = u64::try_from(hi.as_nanos()).unwrap_or(u64::MAX).max(lo_ns);
            Duration::from_nanos(rng.u64(lo_ns..=hi_ns))
        };
        Some(match class {
            ErrorClass::Transient => jittered,
            ErrorClass::Persistent => draw(&mut self.rng, cap / 2, cap),
            ErrorClass::Resource => {
                let floor = cap.min(RESOURCE_FLOOR);
                // The ceiling of the attempt just counted.
                let ceiling = self.config.ceiling(self.attempts.saturating_sub(1));
                draw(&mut self.rng, floor, ceiling.max(floor))
            }
        })
    }

    /// A connection was established at `now`.
    pub fn on_connected(&mut self, now: Instant) {
        self.connected_at = Some(now);
    }

    /// The connection ended at `now`: if it had been up for at least
    /// `reset_after`, the failure count resets to 0. Without a matching
    /// [`on_connected`](Self::on_connected) it changes nothing.
    pub fn on_disconnected(&mut self, now: Instant) {
        if let Some(since) = self.connected_at.take() {
            if now.saturating_duration_since(since) >= self.config.reset_after {
                self.attempts = 0;
            }
        }
    }

    /// Consecutive failures counted so far (since the last reset).
    pub fn attempts(&self) -> u32 {
        self.attempts
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn config(base_ms: u64, cap_ms: u64) -> BackoffConfig {
        BackoffConfig {
            base: Duration::from_millis(base_ms),
            factor: 2.0,
            cap: Duration::from_millis(cap_ms),
            max_attempts: None,
            reset_after: Duration::from_secs(10),
        }
    }

    /// `min(cap, base * 2^n)` computed exactly in integer nanoseconds.
    fn exact_ceiling(base: Duration, cap: Duration, n: u32) -> u128 {
        let cap = cap.as_nanos();
        let base = base.as_nanos();
        if n >= 100 {
            return cap;
        }
        base.checked_mul(1u128 << n).map_or(cap, |b| b.min(cap))
    }

    #[test]
    fn default_is_valid() {
        let c = BackoffConfig::default();
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(c.base, Duration::from_millis(100));
        assert_eq!(c.cap, Duration::from_secs(30));
    }

    #[test]
    fn validate_rejects_bad_configs() {
        let good = config(100, 1000);
        let zero = BackoffConfig {
            base: Duration::ZERO,
            ..good.clone()
        };
        assert_eq!(zero.validate(), Err(BackoffError::ZeroBase));
        let low_cap = BackoffConfig {
            cap: Duration::from_millis(50),
            ..good.clone()
        };
        assert!(matches!(
            low_cap.validate(),
            Err(BackoffError::CapBelowBase { .. })
        ));
        for factor in [0.5, -1.0, f64::NAN, f64::INFINITY] {
            let bad = BackoffConfig {
                factor,
                ..good.clone()
            };
            assert!(
                matches!(bad.validate(), Err(BackoffError::InvalidFactor { .. })),
                "{factor}"
            );
            assert!(Backoff::try_new(bad).is_err());
        }
        let flat = BackoffConfig {
            factor: 1.0,
            cap: good.base,
            ..good
        };
        assert_eq!(flat.validate(), Ok(()));
    }

    #[test]
    fn first_delay_is_within_base() {
        for seed in 0..1000 {
            let mut b = Backoff::with_seed(config(100, 30_000), seed);
            let d = b.on_failure().expect("no limit");
            assert!(d <= Duration::from_millis(100), "{d:?}");
            assert_eq!(b.attempts(), 1);
        }
    }

    proptest! {
        #[test]
        fn delays_stay_within_the_exponential_ceiling(
            base_ms in 1u64..5_000,
            extra_ms in 0u64..100_000,
            failures in 1usize..80,
            seed in any::<u64>(),
        ) {
            let (base, cap) = (Duration::from_millis(base_ms), Duration::from_millis(base_ms + extra_ms));
            let mut b = Backoff::with_seed(BackoffConfig { base, cap, ..config(1, 1) }, seed);
            for n in 0..failures as u32 {
                let d = b.on_failure().expect("no limit");
                // Float rounding may add a nanosecond or so to base * 2^n.
                let bound = exact_ceiling(base, cap, n);
                prop_assert!(d.as_nanos() <= bound + 1 && d <= cap, "n={} d={:?} bound={}", n, d, bound);
            }
            prop_assert_eq!(b.attempts(), failures as u32);
        }

        #[test]
        fn ceiling_never_panics(base_ns in 1u64.., cap_extra in any::<u64>(), factor in 1.0f64..1e6, n in any::<u32>()) {
            let base = Duration::from_nanos(base_ns);
            let cap = base.saturating_add(Duration::from_nanos(cap_extra));
            let c = BackoffConfig { base, factor, cap, ..config(1, 1) };
            let ceiling = c.ceiling(n);
            prop_assert!(ceiling <= cap);
        }
    }

    #[test]
    fn huge_attempt_counts_do_not_overflow() {
        let c = BackoffConfig {
            cap: Duration::MAX,
            ..config(100, 1)
        };
        assert_eq!(c.ceiling(u32::MAX), Duration::MAX);
        let mut b = Backoff::with_seed(c, 7);
        b.attempts = u32::MAX - 1;
        for _ in 0..3 {
            assert!(b.on_failure().is_some());
        }
        assert_eq!(b.attempts(), u32::MAX, "saturates");
        // An invalid config still yields bounded delays.
        let nan = BackoffConfig {
            factor: f64::NAN,
            ..config(100, 1000)
        };
        let mut b = Backoff::with_seed(nan, 7);
        for _ in 0..10 {
            assert!(b.on_failure().expect("no limit") <= Duration::from_millis(1000));
        }
    }

    #[test]
    fn delays_are_spread_over_the_window() {
        // At attempt n=3 the window is [0, 800ms]; 2,000 draws into 10
        // buckets of 80ms: each expects 200, so < 100 would be a 7-sigma event.
        let mut b = Backoff::with_seed(config(100, 30_000), 42);
        let mut buckets = [0u32; 10];
        let (mut lo, mut hi) = (Duration::MAX, Duration::ZERO);
        for _ in 0..2000 {
            b.attempts = 3;
            let d = b.on_failure().expect("no limit");
            assert!(d <= Duration::from_millis(800));
            lo = lo.min(d);
            hi = hi.max(d);
            let i = (d.as_nanos() * 10 / Duration::from_millis(800).as_nanos()).min(9);
            buckets[i as usize] += 1;
        }
        assert!(lo < Duration::from_millis(10), "min {lo:?}");
        assert!(hi > Duration::from_millis(790), "max {hi:?}");
        assert!(buckets.iter().all(|&n| n > 100), "{buckets:?}");
        // Different seeds give different sequences.
        let draw = |seed| {
            let mut b = Backoff::with_seed(config(100, 30_000), seed);
            (0..5).map(|_| b.on_failure()).collect::<Vec<_>>()
        };
        assert_ne!(draw(1), draw(2));
        assert_eq!(draw(3), draw(3));
    }

    #[test]
    fn healthy_connection_resets_the_count() {
        let mut b = Backoff::with_seed(config(100, 30_000), 1);
        for _ in 0..5 {
            b.on_failure();
        }
        let t0 = Instant::now();
        b.on_connected(t0);
        b.on_disconnected(t0 + Duration::from_secs(10));
        assert_eq!(b.attempts(), 0);
        assert!(b.on_failure().expect("no limit") <= Duration::from_millis(100));
    }

    #[test]
    fn short_lived_connection_does_not_reset() {
        let mut b = Backoff::with_seed(config(100, 30_000), 1);
        for _ in 0..5 {
            b.on_failure();
        }
        let t0 = Instant::now();
        b.on_connected(t0);
        b.on_disconnected(t0 + Duration::from_millis(9_999));
        assert_eq!(b.attempts(), 5);
        // Disconnect without connect, and a clock that went backwards: no reset.
        b.on_disconnected(t0 + Duration::from_secs(60));
        assert_eq!(b.attempts(), 5);
        b.on_connected(t0 + Duration::from_secs(60));
        b.on_disconnected(t0);
        assert_eq!(b.attempts(), 5);
        // A failure while "connected" forgets the connection.
        b.on_connected(t0);
        b.on_failure();
        b.on_disconnected(t0 + Duration::from_secs(60));
        assert_eq!(b.attempts(), 6);
    }

    #[tokio::test(start_paused = true)]
    async fn reset_with_paused_tokio_clock() {
        let mut b = Backoff::with_seed(config(100, 30_000), 9);
        b.on_failure();
        b.on_failure();
        b.on_connected(tokio::time::Instant::now().into_std());
        tokio::time::advance(Duration::from_secs(3)).await;
        b.on_disconnected(tokio::time::Instant::now().into_std());
        assert_eq!(b.attempts(), 2);
        b.on_connected(tokio::time::Instant::now().into_std());
        tokio::time::advance(Duration::from_secs(11)).await;
        b.on_disconnected(tokio::time::Instant::now().into_std());
        assert_eq!(b.attempts(), 0);
    }

    #[test]
    fn classified_failures() {
        let c = config(100, 30_000);
        let mut b = Backoff::with_seed(c.clone(), 5);
        for _ in 0..200 {
            let d = b
                .on_classified_failure(ErrorClass::Persistent)
                .expect("no limit");
            assert!(
                d >= Duration::from_secs(15) && d <= Duration::from_secs(30),
                "{d:?}"
            );
        }
        let mut b = Backoff::with_seed(c.clone(), 6);
        for n in 0..40 {
            let d = b
                .on_classified_failure(ErrorClass::Resource)
                .expect("no limit");
            let hi = c.ceiling(n).max(RESOURCE_FLOOR);
            assert!(d >= RESOURCE_FLOOR && d <= hi, "n={n} {d:?}");
        }
        let mut b = Backoff::with_seed(c.clone(), 7);
        for n in 0..40 {
            let d = b
                .on_classified_failure(ErrorClass::Transient)
                .expect("no limit");
            assert!(d <= c.ceiling(n), "n={n} {d:?}");
        }
        // A cap below the floor wins over the floor.
        let mut tiny = Backoff::with_seed(config(10, 50), 8);
        for _ in 0..20 {
            let d = tiny
                .on_classified_failure(ErrorClass::Resource)
                .expect("no limit");
            assert!(d <= Duration::from_millis(50), "{d:?}");
        }
        // max_attempts applies to every class.
        let mut limited = Backoff::with_seed(
            BackoffConfig {
                max_attempts: Some(2),
                ..c
            },
            9,
        );
        assert!(limited
            .on_classified_failure(ErrorClass::Persistent)
            .is_some());
        assert!(limited
            .on_classified_failure(ErrorClass::Resource)
            .is_some());
        assert_eq!(limited.on_classified_failure(ErrorClass::Transient), None);
    }

    #[test]
    fn max_attempts_gives_up_after_the_limit() {
        let mut b = Backoff::with_seed(
            BackoffConfig {
                max_attempts: Some(3),
                ..config(100, 30_000)
            },
            1,
        );
        for _ in 0..3 {
            assert!(b.on_failure().is_some());
        }
        assert_eq!(b.on_failure(), None);
        assert_eq!(b.on_failure(), None);
        assert_eq!(b.attempts(), 3);
        // A healthy connection earns a fresh budget.
        let t0 = Instant::now();
        b.on_connected(t0);
        b.on_disconnected(t0 + Duration::from_secs(10));
        assert!(b.on_failure().is_some());

        let mut never = Backoff::with_seed(
            BackoffConfig {
                max_attempts: Some(0),
                ..config(100, 30_000)
            },
            1,
        );
        assert_eq!(never.on_failure(), None);
    }
}
