//! A stream route's metric families, read from its [`RouteStats`], its
//! upstreams' [`UpstreamStatus`](super::upstream::UpstreamStatus) and its
//! balancer at scrape time.

use std::sync::atomic::Ordering;

use spillway_net::breaker::Overflow;
use spillway_net::classify::ErrorClass;

use super::direction::Side;
use super::{Direction, RouteStats, StreamServer};
use crate::metrics::{Family, Registry, Scrape};
use crate::route_metrics::{
    BYTES, CONNECTIONS, CONNECTIONS_ACTIVE, LISTENER_REJECTIONS, TLS_HANDSHAKE_FAILURES,
};

static CONNECTIONS_CLOSED: Family = Family::counter(
    "spillway_connections_closed",
    "Stream connections closed, by reason.",
);
static SPILLED_BYTES: Family = Family::counter(
    "spillway_spilled_bytes",
    "Stream bytes that went through a spill file.",
);
static UPSTREAM_CONNECT_FAILURES: Family = Family::counter(
    "spillway_upstream_connect_failures",
    "Failed upstream connects (stream mode).",
);
static UPSTREAM_CONNECTIONS_ACTIVE: Family = Family::gauge(
    "spillway_upstream_connections_active",
    "Connections open to each upstream.",
);
static UPSTREAM_PICKS: Family = Family::counter(
    "spillway_upstream_picks",
    "Times each upstream was picked for a connection.",
);
static UPSTREAM_HEALTHY: Family = Family::gauge(
    "spillway_upstream_healthy",
    "1 when the upstream passes its active health checks (always 1 without checks).",
);
static UPSTREAM_EJECTED: Family = Family::gauge(
    "spillway_upstream_ejected",
    "1 while outlier detection has the upstream ejected.",
);
static UPSTREAM_PENDING_CONNECTS: Family = Family::gauge(
    "spillway_upstream_pending_connects",
    "Connects to the upstream in progress.",
);
static UPSTREAM_EJECTIONS: Family = Family::counter(
    "spillway_upstream_ejections",
    "Times outlier detection ejected the upstream (consecutive connect failures).",
);
static UPSTREAM_CONNECT_ATTEMPTS: Family = Family::counter(
    "spillway_upstream_connect_attempts",
    "Connects attempted to the upstream.",
);
static UPSTREAM_CONNECT_ERRORS: Family = Family::counter(
    "spillway_upstream_connect_errors",
    "Failed connects to the upstream (TLS handshakes included), by class: transient, persistent, resource.",
);
static UPSTREAM_BREAKER_REJECTIONS: Family = Family::counter(
    "spillway_upstream_breaker_rejections",
    "Clients refused by the upstream's circuit breaker, by the limit reached.",
);
static UPSTREAM_PANIC_PICKS: Family = Family::counter(
    "spillway_upstream_panic_picks",
    "Connections sent while no upstream was healthy and un-ejected (panic mode: all tried).",
);

/// The families a stream route fills, in `/metrics` order.
static FAMILIES: [&Family; 18] = [
    &CONNECTIONS,
    &CONNECTIONS_ACTIVE,
    &CONNECTIONS_CLOSED,
    &BYTES,
    &SPILLED_BYTES,
    &UPSTREAM_CONNECT_FAILURES,
    &UPSTREAM_CONNECTIONS_ACTIVE,
    &UPSTREAM_PICKS,
    &UPSTREAM_HEALTHY,
    &UPSTREAM_EJECTED,
    &UPSTREAM_PENDING_CONNECTS,
    &UPSTREAM_EJECTIONS,
    &UPSTREAM_CONNECT_ATTEMPTS,
    &UPSTREAM_CONNECT_ERRORS,
    &UPSTREAM_BREAKER_REJECTIONS,
    &UPSTREAM_PANIC_PICKS,
    &LISTENER_REJECTIONS,
    &TLS_HANDSHAKE_FAILURES,
];

/// Declares the stream routes' families.
pub fn declare(registry: &mut Registry) {
    registry.declare(&FAMILIES);
}

/// Writes the series of the stream route `route`, served by `srv`.
pub fn collect(s: &mut Scrape, route: &str, srv: &StreamServer) {
    let st: &RouteStats = srv.stats();
    let client = [("route", route), ("role", Side::Client.as_str())];
    s.counter(&CONNECTIONS, &client, st.accepted.load(Ordering::Relaxed));
    s.gauge(
        &CONNECTIONS_ACTIVE,
        &client,
        st.active.load(Ordering::Relaxed) as u64,
    );
    for (reason, n) in st.closed.iter() {
        s.counter(
            &CONNECTIONS_CLOSED,
            &[("route", route), ("reason", reason.as_str())],
            n,
        );
    }
    for d in Direction::ALL {
        s.counter(
            &BYTES,
            &[("route", route), ("direction", d.as_str())],
            st.bytes[d.index()].load(Ordering::Relaxed),
        );
    }
    let r = [("route", route)];
    s.counter(&SPILLED_BYTES, &r, st.spilled_bytes.load(Ordering::Relaxed));
    s.counter(
        &UPSTREAM_CONNECT_FAILURES,
        &r,
        st.connect_failures.load(Ordering::Relaxed),
    );
    s.counter(&UPSTREAM_PANIC_PICKS, &r, srv.panic_picks());

    // The balancer's view, by the upstreams as configured.
    for (i, up) in srv.route().upstreams.iter().enumerate() {
        let labels = [("route", route), ("upstream", up.as_str())];
        let load = srv.balancer().load(i);
        s.gauge(
            &UPSTREAM_CONNECTIONS_ACTIVE,
            &labels,
            load.map_or(0, |l| l.active()) as u64,
        );
        s.counter(&UPSTREAM_PICKS, &labels, load.map_or(0, |l| l.picked()));
    }
    // Health, ejection, breakers.
    for u in srv.upstreams() {
        let labels = [("route", route), ("upstream", u.address())];
        s.gauge(&UPSTREAM_HEALTHY, &labels, u64::from(u.is_healthy()));
        s.gauge(&UPSTREAM_EJECTED, &labels, u64::from(u.is_ejected()));
        s.gauge(&UPSTREAM_PENDING_CONNECTS, &labels, u.pending() as u64);
        s.counter(&UPSTREAM_EJECTIONS, &labels, u.ejections());
        s.counter(&UPSTREAM_CONNECT_ATTEMPTS, &labels, u.connect_attempts());
        for c in ErrorClass::ALL {
            s.counter(
                &UPSTREAM_CONNECT_ERRORS,
                &[
                    ("route", route),
                    ("upstream", u.address()),
                    ("class", c.as_str()),
                ],
                u.connect_failures(c),
            );
        }
        for k in Overflow::ALL {
            s.counter(
                &UPSTREAM_BREAKER_REJECTIONS,
                &[
                    ("route", route),
                    ("upstream", u.address()),
                    ("limit", k.as_str()),
                ],
                u.breaker_rejections(k),
            );
        }
    }
    srv.gate().collect(s, route);
    for (side, v) in [
        (Side::Client, &st.tls_handshake_failures),
        (Side::Upstream, &st.upstream_tls_failures),
    ] {
        s.counter(
            &TLS_HANDSHAKE_FAILURES,
            &[("route", route), ("role", side.as_str())],
            v.load(Ordering::Relaxed),
        );
    }
}
