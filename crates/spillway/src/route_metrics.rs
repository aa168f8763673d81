//! Metric families that every route kind fills, each with its own series:
//! connections by role, bytes by direction, TLS handshake failures by
//! role, listener rejections by limit. The role comes from the route's own
//! enum (a stream's client and upstream sides, a queue's producer and
//! consumer); declared here, once, so that both kinds describe them alike.

use crate::metrics::Family;

pub static CONNECTIONS: Family = Family::counter(
    "spillway_connections",
    "Connections opened (accepted or dialed), by role.",
);
pub static CONNECTIONS_ACTIVE: Family = Family::gauge(
    "spillway_connections_active",
    "Connections open now, by role.",
);
/// `direction` is HAProxy's convention: `in` from clients/producers, `out`
/// to clients/consumers.
pub static BYTES: Family = Family::counter(
    "spillway_bytes",
    "Payload bytes: in from clients/producers, out to clients/consumers (queue: delivered).",
);
pub static LISTENER_REJECTIONS: Family = Family::counter(
    "spillway_listener_rejections",
    "Connections closed right after accept by a listener limit (global max_connections, a queue route's max_connections, max_connections_per_ip).",
);
pub static TLS_HANDSHAKE_FAILURES: Family = Family::counter(
    "spillway_tls_handshake_failures",
    "Failed TLS handshakes, by the peer's role (client and producer/consumer on listen: endpoints: not TLS, untrusted or missing certificate, timeout; upstream and dialed endpoints: a certificate we rejected, or a handshake error).",
);
