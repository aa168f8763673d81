//! Active health checks: a probe (TCP connect, or send bytes and expect a
//! reply prefix) run at an interval, and a threshold state machine that
//! turns probe results into a verdict.
//!
//! **Thresholds** (pingora's `health_check.rs`, HAProxy's `rise`/`fall`):
//! the verdict flips only after `fall` consecutive failures (healthy →
//! unhealthy) or `rise` consecutive successes (unhealthy → healthy). One
//! lost probe does not take an upstream out; one lucky probe does not bring
//! it back. An upstream starts healthy, so a relay serves at once after
//! start-up, and a dead upstream is taken out after `fall` intervals.
//!
//! [`Thresholds`] is pure: it is fed results and returns transitions. The
//! I/O is in [`probe`]; [`next_delay`] spreads probes by a small jitter so
//! the probes of many relays (or many upstreams) do not fire in step.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::dial::{connect, DialOptions};

/// What a probe does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckKind {
    /// Pass when a TCP connection is established (then closed).
    Connect,
    /// Connect, write `send` (may be empty: a server that speaks first),
    /// and pass when the first bytes read start with `expect`.
    SendExpect {
        /// Written after connecting.
        send: Vec<u8>,
        /// Required prefix of the reply; empty accepts any reply, even none.
        expect: Vec<u8>,
    },
}

/// Configuration of active checks for one pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheckConfig {
    /// What each probe does.
    pub kind: CheckKind,
    /// Time between probes of one upstream (plus up to `jitter`).
    pub interval: Duration,
    /// Bound on one probe: connect, write and read together.
    pub timeout: Duration,
    /// Consecutive passes that make an unhealthy upstream healthy.
    pub rise: u32,
    /// Consecutive failures that make a healthy upstream unhealthy.
    pub fall: u32,
    /// Random extra delay before each probe, in `[0, jitter]`.
    pub jitter: Duration,
}

impl HealthCheckConfig {
    /// The jitter that goes with `interval` unless one is given: a tenth of
    /// it, so probes spread out in proportion.
    pub fn default_jitter(interval: Duration) -> Duration {
        interval / 10
    }
}

impl Default for HealthCheckConfig {
    /// HAProxy's defaults: 2 s interval, rise 2, fall 3; a 1 s timeout and
    /// 10 % jitter.
    fn default() -> Self {
        let interval = Duration::from_secs(2);
        HealthCheckConfig {
            kind: CheckKind::Connect,
            interval,
            timeout: Duration::from_secs(1),
            rise: 2,
            fall: 3,
            jitter: Self::default_jitter(interval),
        }
    }
}

/// Why a [`HealthCheckConfig`] is rejected.
#[non_exhaustive]
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum HealthConfigError {
    /// `rise` or `fall` is zero: the verdict could never (or always) flip.
    #[error("health check rise and fall must be at least 1")]
    ZeroThreshold,
    /// A zero interval would probe in a tight loop.
    #[error("health check interval must be greater than zero")]
    ZeroInterval,
    /// A zero timeout fails every probe.
    #[error("health check timeout must be greater than zero")]
    ZeroTimeout,
    /// `expect` longer than a probe will read.
    #[error("health check expect is longer than {MAX_EXPECT} bytes")]
    ExpectTooLong,
}

/// Longest `expect` prefix (and so the most a probe reads).
pub const MAX_EXPECT: usize = 4096;

impl HealthCheckConfig {
    /// Checks thresholds >= 1, interval and timeout > 0, expect bounded.
    pub fn validate(&self) -> Result<(), HealthConfigError> {
        if self.rise == 0 || self.fall == 0 {
            return Err(HealthConfigError::ZeroThreshold);
        }
        if self.interval.is_zero() {
            return Err(HealthConfigError::ZeroInterval);
        }
        if self.timeout.is_zero() {
            return Err(HealthConfigError::ZeroTimeout);
        }
        if let CheckKind::SendExpect { expect, .. } = &self.kind {
            if expect.len() > MAX_EXPECT {
                return Err(HealthConfigError::ExpectTooLong);
            }
        }
        Ok(())
    }
}

/// A verdict change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    /// `rise` passes in a row: back in the pool.
    BecameHealthy,
    /// `fall` failures in a row: out of the pool.
    BecameUnhealthy,
}

/// The rise/fall state machine of one upstream.
#[derive(Clone, Debug)]
pub struct Thresholds {
    rise: u32,
    fall: u32,
    healthy: bool,
    /// Consecutive results contradicting the current verdict.
    streak: u32,
}

impl Thresholds {
    /// Starts healthy. Thresholds below 1 act as 1.
    pub fn new(rise: u32, fall: u32) -> Self {
        Thresholds {
            rise: rise.max(1),
            fall: fall.max(1),
            healthy: true,
            streak: 0,
        }
    }

    /// The current verdict.
    pub fn is_healthy(&self) -> bool {
        self.healthy
    }

    /// Feeds one probe result; returns the transition it caused, if any.
    pub fn observe(&mut self, passed: bool) -> Option<Transition> {
        if passed == self.healthy {
            // Agrees with the verdict: any contrary streak is broken.
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let needed = if self.healthy { self.fall } else { self.rise };
        if self.streak < needed {
            return None;
        }
        self.healthy = passed;
        self.streak = 0;
        Some(if passed {
            Transition::BecameHealthy
        } else {
            Transition::BecameUnhealthy
        })
    }
}

/// Why a probe failed.
#[non_exhaustive]
#[derive(thiserror::Error, Debug)]
pub enum ProbeError {
    /// The connect failed (classify it with [`crate::classify::classify`]).
    #[error("connect: {0}")]
    Connect(#[source] io::Error),
    /// Writing `send` or reading the reply failed.
    #[error("i/o: {0}")]
    Io(#[source] io::Error),
    /// The probe did not finish within the timeout.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The peer closed before sending the expected prefix.
    #[error("closed after {got} of {want} expected bytes")]
    Closed {
        /// Bytes read before EOF.
        got: usize,
        /// Length of the expected prefix.
        want: usize,
    },
    /// The reply does not start with the expected bytes.
    #[error("unexpected reply (first bytes {0:?})")]
    Mismatch(String),
}

/// Runs one probe of `kind` against `target`, bounded by `timeout`.
pub async fn probe(target: &str, kind: &CheckKind, timeout: Duration) -> Result<(), ProbeError> {
    let run = async {
        // The dial timeout is the whole probe's: the outer bound decides.
        let (mut stream, _) = connect(target, timeout, DialOptions::default())
            .await
            .map_err(ProbeError::Connect)?;
        let CheckKind::SendExpect { send, expect } = kind else {
            return Ok(());
        };
        if !send.is_empty() {
            stream.write_all(send).await.map_err(ProbeError::Io)?;
        }
        let want = expect.len().min(MAX_EXPECT);
        let mut got = vec![0u8; want];
        let mut n = 0;
        while n < want {
            let r = stream.read(&mut got[n..]).await.map_err(ProbeError::Io)?;
            if r == 0 {
                return Err(ProbeError::Closed { got: n, want });
            }
            // Compare as bytes arrive, so a wrong banner fails at once.
            if got[n..n + r] != expect[n..n + r] {
                let shown = String::from_utf8_lossy(&got[..n + r]).into_owned();
                return Err(ProbeError::Mismatch(shown));
            }
            n += r;
        }
        Ok(())
    };
    match tokio::time::timeout(timeout, run).await {
        Ok(r) => r,
        Err(_) => Err(ProbeError::Timeout(timeout)),
    }
}

/// Delay before the next probe: `interval` plus a uniform jitter in
/// `[0, jitter]`.
pub fn next_delay(config: &HealthCheckConfig, rng: &mut fastrand::Rng) -> Duration {
    let j = u64::try_from(config.jitter.as_nanos()).unwrap_or(u64::MAX);
    config.interval + Duration::from_nanos(rng.u64(0..=j))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[test]
    fn flips_only_after_consecutive_results() {
        let mut t = Thresholds::new(2, 3);
        assert!(t.is_healthy());
        assert_eq!(t.observe(false), None);
        assert_eq!(t.observe(false), None);
        // A pass breaks the streak.
        assert_eq!(t.observe(true), None);
        assert_eq!(t.observe(false), None);
        assert_eq!(t.observe(false), None);
        assert_eq!(t.observe(false), Some(Transition::BecameUnhealthy));
        assert!(!t.is_healthy());
        assert_eq!(t.observe(false), None);
        assert_eq!(t.observe(true), None);
        assert_eq!(t.observe(false), None, "streak broken");
        assert_eq!(t.observe(true), None);
        assert_eq!(t.observe(true), Some(Transition::BecameHealthy));
        assert!(t.is_healthy());
        // Thresholds of 1 flip at once; 0 acts as 1.
        let mut one = Thresholds::new(0, 1);
        assert_eq!(one.observe(false), Some(Transition::BecameUnhealthy));
        assert_eq!(one.observe(true), Some(Transition::BecameHealthy));
    }

    #[test]
    fn validate() {
        let ok = HealthCheckConfig::default();
        assert_eq!(ok.validate(), Ok(()));
        for (bad, err) in [
            (
                HealthCheckConfig {
                    rise: 0,
                    ..ok.clone()
                },
                HealthConfigError::ZeroThreshold,
            ),
            (
                HealthCheckConfig {
                    interval: Duration::ZERO,
                    ..ok.clone()
                },
                HealthConfigError::ZeroInterval,
            ),
            (
                HealthCheckConfig {
                    timeout: Duration::ZERO,
                    ..ok.clone()
                },
                HealthConfigError::ZeroTimeout,
            ),
            (
                HealthCheckConfig {
                    kind: CheckKind::SendExpect {
                        send: vec![],
                        expect: vec![b'x'; MAX_EXPECT + 1],
                    },
                    ..ok.clone()
                },
                HealthConfigError::ExpectTooLong,
            ),
        ] {
            assert_eq!(bad.validate(), Err(err));
        }
    }

    #[test]
    fn jitter_stays_in_range_and_spreads() {
        let c = HealthCheckConfig::default();
        let mut rng = fastrand::Rng::with_seed(1);
        let ds: Vec<Duration> = (0..500).map(|_| next_delay(&c, &mut rng)).collect();
        assert!(ds
            .iter()
            .all(|&d| d >= c.interval && d <= c.interval + c.jitter));
        let lo = ds.iter().min().copied().unwrap_or_default();
        let hi = ds.iter().max().copied().unwrap_or_default();
        assert!(hi - lo > c.jitter / 2, "{lo:?}..{hi:?}");
    }

    /// A server that answers each connection with `reply` after reading
    /// `read` bytes.
    async fn server(read: usize, reply: &'static [u8]) -> String {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr").to_string();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut buf = vec![0u8; read];
                    if s.read_exact(&mut buf).await.is_ok() {
                        let _ = s.write_all(reply).await;
                    }
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn probes_over_real_sockets() {
        let t = Duration::from_secs(5);
        let addr = server(5, b"+PONG\r\nrest").await;
        probe(&addr, &CheckKind::Connect, t)
            .await
            .expect("connect check");
        let ping = |expect: &[u8]| CheckKind::SendExpect {
            send: b"PING\n".to_vec(),
            expect: expect.to_vec(),
        };
        probe(&addr, &ping(b"+PONG"), t)
            .await
            .expect("prefix match");
        let e = probe(&addr, &ping(b"-ERR"), t).await.expect_err("mismatch");
        assert!(matches!(e, ProbeError::Mismatch(_)), "{e}");
        let e = probe(&addr, &ping(b"+PONG\r\nrest and more"), t)
            .await
            .expect_err("closed early");
        assert!(matches!(e, ProbeError::Closed { got: 11, .. }), "{e}");
        // Nobody listening.
        let dead = {
            let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            l.local_addr().expect("addr").to_string()
        };
        let e = probe(&dead, &CheckKind::Connect, t)
            .await
            .expect_err("refused");
        assert!(matches!(e, ProbeError::Connect(_)), "{e}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_server_times_out() {
        // Accepts (the kernel does, from the backlog) and never replies.
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr").to_string();
        let kind = CheckKind::SendExpect {
            send: vec![],
            expect: b"220".to_vec(),
        };
        let e = probe(&addr, &kind, Duration::from_secs(2))
            .await
            .expect_err("silent");
        assert!(matches!(e, ProbeError::Timeout(_)), "{e}");
        drop(l);
    }
}
