//! A stream route's upstreams, as one type ([`Upstreams`], like pingora's
//! `LoadBalancer`) that owns the whole loop of getting a connection: pick
//! (the balancer, among eligible upstreams) → circuit breaker → dial (TCP,
//! then TLS) → the outcome fed back to outlier detection; and the active
//! health checks that decide eligibility. Its state: check verdicts,
//! passive outlier ejection, per-upstream breakers and connect counters,
//! with the status the admin endpoint exports.
//!
//! An upstream is *eligible* for new connections when its active checks
//! say healthy (always, without checks) and it is not ejected. When no
//! upstream is eligible the pool goes into *panic mode*, like Envoy below
//! its panic threshold and HAProxy with every server down but still
//! trying: every upstream is tried, because refusing everyone is certain
//! failure while a check or an ejection may be wrong. Panic mode is logged
//! (rate-limited) and counted.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use spillway_net::balance::{Balancer, Lease};
use spillway_net::breaker::{Active, Breaker, Overflow};
use spillway_net::classify::ErrorClass;
use spillway_net::dial::{dial, DialError, DialOptions};
use spillway_net::health::{
    next_delay, probe, HealthCheckConfig, ProbeError, Thresholds, Transition,
};
use spillway_net::outlier::{OutlierDetector, Verdict};
use spillway_net::tls::{MaybeTls, TlsClient};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

use super::{CloseReason, RouteStats};
use crate::config::StreamRoute;
use crate::counters::EnumCounters;
use crate::logging::RateLimited;

/// The upstreams of one stream route: pick, breaker, dial and health.
pub struct Upstreams {
    targets: Vec<String>,
    balancer: Balancer,
    pool: Pool,
    connect_tries: u32,
    connect_timeout: Duration,
    dial_options: DialOptions,
    health_check: Option<HealthCheckConfig>,
    /// The route's counters (connect failures, upstream TLS failures).
    stats: Arc<RouteStats>,
    /// Upstream TLS failures are warned rate-limited: every client retries,
    /// so a persistent one (a certificate) would repeat.
    tls_warning: Mutex<RateLimited>,
}

/// An upstream connection and the slots it holds (the balancer's lease,
/// the breaker's active slot); drop them with the connection.
pub struct Connected {
    pub stream: MaybeTls,
    pub addr: SocketAddr,
    pub lease: Lease,
    pub slot: Active,
}

impl Upstreams {
    pub fn new(route: &StreamRoute, stats: Arc<RouteStats>) -> Self {
        Upstreams {
            targets: route.upstreams.clone(),
            balancer: Balancer::new(route.balance, route.upstreams.len()),
            pool: Pool::new(route),
            connect_tries: route.connect_tries,
            connect_timeout: route.connect_timeout,
            // The liveness options are set once the connection is up, and
            // on a plain one only if it lasts (`connection.rs`).
            dial_options: DialOptions::default(),
            health_check: route.health_check.clone(),
            stats,
            tls_warning: Mutex::new(RateLimited::new(Duration::from_secs(5))),
        }
    }

    /// Per-upstream state (health, ejection, breaker, connect counters), in
    /// the order of the route's `upstreams`; ejections whose time is up are
    /// ended first.
    pub fn statuses(&self) -> &[UpstreamStatus] {
        self.pool.refresh(Instant::now());
        self.pool.statuses()
    }

    /// Connections given to an upstream in panic mode (no upstream healthy).
    pub fn panic_picks(&self) -> u64 {
        self.pool.panics()
    }

    pub fn balancer(&self) -> &Balancer {
        &self.balancer
    }

    /// Tries up to `connect_tries` distinct eligible upstreams (healthy,
    /// not ejected; all of them in panic mode), each bounded by the connect
    /// timeout (and the TLS handshake timeout with `tls`) and admitted by
    /// its circuit breaker. Fails with `CircuitOpen` when breakers refused
    /// every candidate and no connect was attempted, `NoUpstream`
    /// otherwise. A failed TLS handshake counts as a failed connect for
    /// outlier detection (classified by `DialError::class`); the breaker
    /// counts the attempt as pending until the handshake is done.
    pub async fn connect(&self, tls: Option<&TlsClient>) -> Result<Connected, CloseReason> {
        let eligible = self.pool.eligible(Instant::now());
        let statuses = self.pool.statuses();
        let tries = (self.connect_tries as usize).min(self.balancer.len());
        let mut tried: Vec<usize> = Vec::with_capacity(tries);
        let mut attempts = 0;
        let mut refused = None;
        while tried.len() < self.balancer.len() && attempts < tries {
            // The breaker is asked after the pick (not as a filter), so
            // that every refusal is counted against the upstream that made it.
            let Some(lease) = self
                .balancer
                .pick(|i| eligible.get(i).copied().unwrap_or(false) && !tried.contains(&i))
            else {
                break;
            };
            let index = lease.index();
            tried.push(index);
            let pending = match statuses[index].breaker().try_pending() {
                Ok(p) => p,
                Err(kind) => {
                    refused = Some(kind);
                    continue;
                }
            };
            attempts += 1;
            let target = &self.targets[index];
            match dial(target, self.connect_timeout, self.dial_options, tls).await {
                Ok((stream, addr)) => {
                    let slot = pending.established();
                    self.pool.connect_result(index, Ok(()), Instant::now());
                    return Ok(Connected {
                        stream,
                        addr,
                        lease,
                        slot,
                    });
                }
                Err(e) => {
                    self.pool.connect_result(index, Err(&e), Instant::now());
                    self.failed(target, &e);
                }
            }
        }
        match refused {
            Some(limit) if attempts == 0 => {
                debug!(%limit, "circuit breakers refused");
                Err(CloseReason::CircuitOpen)
            }
            _ => Err(CloseReason::NoUpstream),
        }
    }

    /// Counts and logs a failed dial of `target`.
    fn failed(&self, target: &str, e: &DialError) {
        self.stats.connect_failures.fetch_add(1, Ordering::Relaxed);
        let Some(tls) = e.tls() else {
            warn!(upstream = %target, error = %e,
                  "upstream connect failed");
            return;
        };
        self.stats
            .upstream_tls_failures
            .fetch_add(1, Ordering::Relaxed);
        let check = self
            .tls_warning
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .check();
        if let Some(suppressed) = check {
            warn!(upstream = %target,
                  kind = %tls.as_label(), persistent = tls.is_persistent(),
                  error = %e, suppressed, "upstream TLS handshake failed");
        }
    }

    /// One probe loop per upstream when the route has health checks; they
    /// stop at `stop` or when `retired` fires (the server was replaced).
    pub fn spawn_health_checks(
        self: &Arc<Self>,
        stop: &CancellationToken,
        retired: &CancellationToken,
    ) {
        let Some(check) = self.health_check.clone() else {
            return;
        };
        for (i, target) in self.targets.iter().enumerate() {
            let upstreams = Arc::clone(self);
            let stop = stop.clone();
            let retired = retired.clone();
            let check = check.clone();
            let target = target.clone();
            tokio::spawn(
                async move {
                    let mut rng = fastrand::Rng::new();
                    // Start within one jitter window, not all at the same instant.
                    let jitter = u64::try_from(check.jitter.as_nanos()).unwrap_or(u64::MAX);
                    let mut delay = Duration::from_nanos(rng.u64(0..=jitter));
                    loop {
                        tokio::select! {
                            _ = tokio::time::sleep(delay) => {}
                            _ = stop.cancelled() => return,
                            _ = retired.cancelled() => return,
                        }
                        let result = tokio::select! {
                            r = probe(&target, &check.kind, check.timeout) => r,
                            _ = stop.cancelled() => return,
                            _ = retired.cancelled() => return,
                        };
                        upstreams.pool.probe_result(i, &result, Instant::now());
                        delay = next_delay(&check, &mut rng);
                    }
                }
                .in_current_span(),
            );
        }
    }
}

/// Live state of one upstream, for /metrics and /status.
#[derive(Debug)]
pub struct UpstreamStatus {
    address: String,
    healthy: AtomicBool,
    ejected: AtomicBool,
    ejections: AtomicU64,
    breaker: Arc<Breaker>,
    connect_attempts: AtomicU64,
    connect_failures: EnumCounters<ErrorClass>,
    /// The last active check: passed, or why it failed.
    last_check: Mutex<Option<String>>,
}

impl UpstreamStatus {
    /// `HOST:PORT` as configured.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The active checks' verdict (always true without checks).
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Ejected by outlier detection right now.
    pub fn is_ejected(&self) -> bool {
        self.ejected.load(Ordering::Relaxed)
    }

    /// Times ejected since start.
    pub fn ejections(&self) -> u64 {
        self.ejections.load(Ordering::Relaxed)
    }

    /// The last active health check's result (`None` without checks).
    pub fn last_check(&self) -> Option<String> {
        self.last_check
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Established connections to it.
    pub fn active(&self) -> usize {
        self.breaker.active()
    }

    /// Connects to it in progress.
    pub fn pending(&self) -> usize {
        self.breaker.pending()
    }

    /// Clients refused by its circuit breaker, by limit.
    pub fn breaker_rejections(&self, kind: Overflow) -> u64 {
        self.breaker.rejected(kind)
    }

    /// Connects attempted.
    pub fn connect_attempts(&self) -> u64 {
        self.connect_attempts.load(Ordering::Relaxed)
    }

    /// Connects failed, by class.
    pub fn connect_failures(&self, class: ErrorClass) -> u64 {
        self.connect_failures.get(class)
    }

    fn breaker(&self) -> &Arc<Breaker> {
        &self.breaker
    }
}

/// The pool's mutable policy state, behind one short-held lock.
struct PolicyState {
    outlier: OutlierDetector,
    checks: Vec<Thresholds>,
    panic_warn: RateLimited,
}

struct Pool {
    upstreams: Vec<UpstreamStatus>,
    state: Mutex<PolicyState>,
    /// Picks made in panic mode (no upstream eligible).
    panics: AtomicU64,
}

impl Pool {
    fn new(route: &StreamRoute) -> Self {
        let n = route.upstreams.len();
        let (rise, fall) = route
            .health_check
            .as_ref()
            .map_or((1, 1), |h| (h.rise, h.fall));
        Pool {
            upstreams: route
                .upstreams
                .iter()
                .map(|a| UpstreamStatus {
                    address: a.clone(),
                    healthy: AtomicBool::new(true),
                    ejected: AtomicBool::new(false),
                    ejections: AtomicU64::new(0),
                    breaker: Arc::new(Breaker::new(route.circuit_breaker)),
                    connect_attempts: AtomicU64::new(0),
                    connect_failures: EnumCounters::new(),
                    last_check: Mutex::new(None),
                })
                .collect(),
            state: Mutex::new(PolicyState {
                outlier: OutlierDetector::new(route.outlier.clone(), n),
                checks: vec![Thresholds::new(rise, fall); n],
                panic_warn: RateLimited::new(Duration::from_secs(5)),
            }),
            panics: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, PolicyState> {
        // Every update under the lock is a few plain assignments; a panic
        // cannot leave it half-done in a way that matters.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn statuses(&self) -> &[UpstreamStatus] {
        &self.upstreams
    }

    fn panics(&self) -> u64 {
        self.panics.load(Ordering::Relaxed)
    }

    /// Ends ejections whose time is up (logged), so exported state is fresh.
    fn refresh(&self, now: Instant) {
        let mut st = self.lock();
        self.expire(&mut st, now);
    }

    fn expire(&self, st: &mut PolicyState, now: Instant) {
        for i in st.outlier.expire(now) {
            self.upstreams[i].ejected.store(false, Ordering::Relaxed);
            info!(upstream = %self.upstreams[i].address,
                  "upstream back in the pool: ejection time is up");
        }
    }

    /// Which upstreams may get new connections at `now`. In panic mode (none
    /// healthy and not ejected) every upstream is allowed, and it is logged.
    fn eligible(&self, now: Instant) -> Vec<bool> {
        let mut st = self.lock();
        self.expire(&mut st, now);
        let mask: Vec<bool> = (0..self.upstreams.len())
            .map(|i| st.checks[i].is_healthy() && !st.outlier.is_ejected(i, now))
            .collect();
        if mask.iter().any(|&ok| ok) {
            return mask;
        }
        self.panics.fetch_add(1, Ordering::Relaxed);
        if let Some(suppressed) = st.panic_warn.check_at(now) {
            warn!(
                upstreams = self.upstreams.len(),
                suppressed,
                "no healthy upstream (all failing checks or ejected): panic mode, trying all"
            );
        }
        vec![true; self.upstreams.len()]
    }

    /// Records a connect attempt to upstream `i` and its outcome.
    fn connect_result(&self, i: usize, result: Result<(), &DialError>, now: Instant) {
        let Some(u) = self.upstreams.get(i) else {
            return;
        };
        u.connect_attempts.fetch_add(1, Ordering::Relaxed);
        let mut st = self.lock();
        let e = match result {
            Ok(()) => {
                st.outlier.on_success(i);
                return;
            }
            Err(e) => e,
        };
        let class = e.class();
        u.connect_failures.add(class);
        if class == ErrorClass::Resource {
            // Out of descriptors or memory here says nothing about the
            // upstream (Envoy keeps such local-origin errors apart too).
            return;
        }
        match st.outlier.on_failure(i, now) {
            Verdict::Kept => {}
            Verdict::Ejected {
                duration,
                ejections,
            } => {
                u.ejected.store(true, Ordering::Relaxed);
                u.ejections.fetch_add(1, Ordering::Relaxed);
                warn!(upstream = %u.address, error = %e,
                      consecutive_failures = st.outlier.config().consecutive_failures,
                      ejected_for_ms = duration.as_millis() as u64, ejections,
                      "upstream ejected: consecutive connect failures");
            }
            Verdict::Refused { ejected, total } => {
                warn!(upstream = %u.address, error = %e, ejected, total,
                      max_ejection_percent = st.outlier.config().max_ejection_percent,
                      "upstream keeps failing but is not ejected: max_ejection_percent reached");
            }
        }
    }

    /// Feeds an active check result of upstream `i`.
    fn probe_result(&self, i: usize, result: &Result<(), ProbeError>, now: Instant) {
        let Some(u) = self.upstreams.get(i) else {
            return;
        };
        *u.last_check.lock().unwrap_or_else(|e| e.into_inner()) = Some(match result {
            Ok(()) => "passed".to_string(),
            Err(e) => format!("failed: {e}"),
        });
        let mut st = self.lock();
        let passed = result.is_ok();
        match st.checks[i].observe(passed) {
            Some(Transition::BecameUnhealthy) => {
                u.healthy.store(false, Ordering::Relaxed);
                let error = result.as_ref().err().map(|e| e.to_string());
                warn!(upstream = %u.address, error = error.as_deref().unwrap_or("-"),
                      "upstream failed its health checks: out of the pool");
            }
            Some(Transition::BecameHealthy) => {
                u.healthy.store(true, Ordering::Relaxed);
                info!(upstream = %u.address,
                      "upstream passed its health checks: back in the pool");
            }
            None => {}
        }
        // A passing check on a healthy upstream ends an ejection early.
        if passed && st.checks[i].is_healthy() && st.outlier.uneject(i, now) {
            u.ejected.store(false, Ordering::Relaxed);
            info!(upstream = %u.address,
                  "upstream back in the pool: health check passed during its ejection");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(consecutive: u32) -> Pool {
        let mut route = StreamRoute::new("t", "127.0.0.1:1", vec!["a:1".into(), "b:1".into()]);
        route.outlier.consecutive_failures = consecutive;
        Pool::new(&route)
    }

    #[test]
    fn local_resource_errors_do_not_eject_the_upstream() {
        let p = pool(3);
        let now = Instant::now();
        let emfile = DialError::Connect(std::io::Error::from_raw_os_error(libc::EMFILE));
        for _ in 0..10 {
            p.connect_result(0, Err(&emfile), now);
        }
        let u = &p.statuses()[0];
        assert!(!u.is_ejected());
        assert_eq!(u.connect_failures(ErrorClass::Resource), 10);
        assert_eq!(u.connect_attempts(), 10);
        let refused = DialError::Connect(std::io::Error::from_raw_os_error(libc::ECONNREFUSED));
        for _ in 0..3 {
            p.connect_result(0, Err(&refused), now);
        }
        assert!(p.statuses()[0].is_ejected());
        assert_eq!(p.eligible(now), vec![false, true]);
        // Ejection time is up: back, and logged by refresh.
        p.refresh(now + Duration::from_secs(11));
        assert!(!p.statuses()[0].is_ejected());
    }

    #[test]
    fn panic_mode_when_nothing_is_eligible() {
        let mut route = StreamRoute::new("t", "127.0.0.1:1", vec!["a:1".into()]);
        route.health_check = Some(spillway_net::health::HealthCheckConfig {
            fall: 1,
            ..Default::default()
        });
        let p = Pool::new(&route);
        let now = Instant::now();
        let failed = Err(ProbeError::Timeout(Duration::from_secs(1)));
        p.probe_result(0, &failed, now);
        assert!(!p.statuses()[0].is_healthy());
        assert_eq!(p.eligible(now), vec![true], "panic: try all");
        assert_eq!(p.panics(), 1);
        // rise = 2 passes bring it back.
        p.probe_result(0, &Ok(()), now);
        assert!(!p.statuses()[0].is_healthy());
        p.probe_result(0, &Ok(()), now);
        assert!(p.statuses()[0].is_healthy());
        assert_eq!(p.eligible(now), vec![true]);
        assert_eq!(p.panics(), 1);
    }
}
