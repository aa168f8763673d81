//! A queue route's metric families, read from its [`QueueStats`] at
//! scrape time (the spool's own are in [`super::spool_metrics`]).

use std::sync::atomic::Ordering;

use super::{QueueServer, QueueStats, Role};
use crate::metrics::{Family, Registry, Scrape};
use crate::route_metrics::{
    BYTES, CONNECTIONS, CONNECTIONS_ACTIVE, LISTENER_REJECTIONS, TLS_HANDSHAKE_FAILURES,
};

static CONSUMER_CONNECTIONS_CLOSED: Family = Family::counter(
    "spillway_consumer_connections_closed",
    "Queue consumer connections closed, by reason.",
);
static PRODUCER_CONNECTIONS_CLOSED: Family = Family::counter(
    "spillway_producer_connections_closed",
    "Queue producer connections closed, by reason.",
);
static DIAL_ATTEMPTS: Family = Family::counter(
    "spillway_dial_attempts",
    "Connects attempted by a queue route's connect: endpoint, by role.",
);
static DIAL_ERRORS: Family = Family::counter(
    "spillway_dial_errors",
    "Failed connects (TLS handshakes included) of a queue route's connect: endpoint, by role and class.",
);
static MESSAGES_IN: Family = Family::counter(
    "spillway_messages_in",
    "Messages read from producers and queued.",
);
static MESSAGES_LOST_UNQUEUED: Family = Family::counter(
    "spillway_messages_lost_unqueued",
    "Messages read from producers (acknowledged to them by TCP) that could not be queued: a failed spool, or a disk still physically full at the end of the drain.",
);
static MESSAGES_DELIVERED: Family = Family::counter(
    "spillway_messages_delivered",
    "Messages acknowledged by a consumer's TCP stack.",
);
static MESSAGES_REDELIVERED: Family = Family::counter(
    "spillway_messages_redelivered",
    "Messages given back to the queue, to be sent again, when a consumer left, reset or was cut (counted at each give-back: an upper bound of the duplicates consumers see).",
);
static PARTIAL_MESSAGES_AT_EOF: Family = Family::counter(
    "spillway_partial_messages_at_eof",
    "Producers that ended in the middle of a message (the partial message is not queued).",
);
static FRAME_ERRORS: Family = Family::counter(
    "spillway_frame_errors",
    "Producer connections closed for a bad frame, by kind.",
);
static DELIVERY_LATENCY: Family = Family::histogram(
    "spillway_delivery_latency_seconds",
    "Enqueue to delivered (acknowledged by the consumer's TCP), per message.",
);

static ACK_TIMEOUTS: Family = Family::counter(
    "spillway_ack_timeouts",
    "Ack-protocol consumers reset for holding a message past ack_timeout.",
);
static ACKS_IGNORED: Family = Family::counter(
    "spillway_acks_ignored",
    "Ack-protocol acknowledgements that named no message the connection held.",
);
static NAKS: Family = Family::counter(
    "spillway_naks",
    "Messages an ack-protocol consumer gave back (NAK).",
);
static DEAD_LETTERS: Family = Family::counter(
    "spillway_dead_letters",
    "Messages sent to the dead-letter spool, by reason (max_deliveries, term).",
);
static DEAD_LETTER_MESSAGES: Family = Family::gauge(
    "spillway_dead_letter_messages",
    "Messages in the route's dead-letter spool.",
);
static UNACKED_MESSAGES: Family = Family::gauge(
    "spillway_unacked_messages",
    "Messages delivered to ack-protocol consumers and not yet acknowledged.",
);

static GROUP_LAG: Family = Family::gauge(
    "spillway_group_lag_messages",
    "Ack protocol: messages a consumer group has not had delivered yet (the default group is named default).",
);

static JS_BATCHES_PUBLISHED: Family = Family::counter(
    "spillway_jetstream_batches_published",
    "JetStream: batches the cluster acknowledged (stored), the local spool then released them.",
);
static JS_MESSAGES_PUBLISHED: Family = Family::counter(
    "spillway_jetstream_messages_published",
    "JetStream: messages in the batches the cluster acknowledged.",
);
static JS_PUBLISH_DUPLICATES: Family = Family::counter(
    "spillway_jetstream_publish_duplicates",
    "JetStream: publishes the cluster answered as already stored (a retry).",
);
static JS_PUBLISH_FAILURES: Family = Family::counter(
    "spillway_jetstream_publish_failures",
    "JetStream: publishes not acknowledged (timeout, lost connection, election); each is published again.",
);
static JS_MESSAGES_PULLED: Family = Family::counter(
    "spillway_jetstream_messages_pulled",
    "JetStream: messages queued from the stream for this relay's consumers.",
);
static JS_BATCHES_ACKED: Family = Family::counter(
    "spillway_jetstream_batches_acked",
    "JetStream: batches acknowledged to the stream (every message delivered).",
);
static JS_DUPLICATE_BATCHES: Family = Family::counter(
    "spillway_jetstream_duplicate_batches",
    "JetStream: batches dropped because this relay had queued all their messages already.",
);
static JS_REORDERED_BATCHES: Family = Family::counter(
    "spillway_jetstream_reordered_batches",
    "JetStream: batches that came behind a later batch of the same producing spool.",
);
static JS_BAD_BATCHES: Family = Family::counter(
    "spillway_jetstream_bad_batches",
    "JetStream: stream messages that were not spillway batches (terminated).",
);

/// The families a queue route fills, in `/metrics` order (then the
/// spool's).
static FAMILIES: [&Family; 32] = [
    &CONNECTIONS,
    &CONNECTIONS_ACTIVE,
    &CONSUMER_CONNECTIONS_CLOSED,
    &PRODUCER_CONNECTIONS_CLOSED,
    &BYTES,
    &LISTENER_REJECTIONS,
    &DIAL_ATTEMPTS,
    &DIAL_ERRORS,
    &TLS_HANDSHAKE_FAILURES,
    &MESSAGES_IN,
    &MESSAGES_LOST_UNQUEUED,
    &MESSAGES_DELIVERED,
    &MESSAGES_REDELIVERED,
    &PARTIAL_MESSAGES_AT_EOF,
    &FRAME_ERRORS,
    &DELIVERY_LATENCY,
    &ACK_TIMEOUTS,
    &ACKS_IGNORED,
    &NAKS,
    &DEAD_LETTERS,
    &DEAD_LETTER_MESSAGES,
    &UNACKED_MESSAGES,
    &GROUP_LAG,
    &JS_BATCHES_PUBLISHED,
    &JS_MESSAGES_PUBLISHED,
    &JS_PUBLISH_DUPLICATES,
    &JS_PUBLISH_FAILURES,
    &JS_MESSAGES_PULLED,
    &JS_BATCHES_ACKED,
    &JS_DUPLICATE_BATCHES,
    &JS_REORDERED_BATCHES,
    &JS_BAD_BATCHES,
];

/// Declares the queue routes' families and their spools'.
pub fn declare(registry: &mut Registry) {
    registry.declare(&FAMILIES);
    super::spool_metrics::declare(registry);
}

/// Writes the series of the queue route `route` and of its spool.
pub fn collect(s: &mut Scrape, route: &str, q: &QueueServer) {
    let st: &QueueStats = q.stats();
    for role in Role::ALL {
        let labels = [("route", route), ("role", role.as_str())];
        let (total, open, tls) = match role {
            Role::Producer => (
                &st.producers_total,
                &st.producers,
                &st.producer_tls_failures,
            ),
            Role::Consumer => (
                &st.consumers_total,
                &st.consumers,
                &st.consumer_tls_failures,
            ),
        };
        s.counter(&CONNECTIONS, &labels, total.load(Ordering::Relaxed));
        s.gauge(
            &CONNECTIONS_ACTIVE,
            &labels,
            open.load(Ordering::Relaxed) as u64,
        );
        s.counter(
            &TLS_HANDSHAKE_FAILURES,
            &labels,
            tls.load(Ordering::Relaxed),
        );
        let dial = st.dial(role);
        s.counter(
            &DIAL_ATTEMPTS,
            &labels,
            dial.attempts.load(Ordering::Relaxed),
        );
        for (class, n) in dial.failures.iter() {
            s.counter(
                &DIAL_ERRORS,
                &[
                    ("route", route),
                    ("role", role.as_str()),
                    ("class", class.as_str()),
                ],
                n,
            );
        }
        let bytes = match role {
            Role::Producer => &st.bytes_in,
            Role::Consumer => &st.bytes_delivered,
        };
        s.counter(
            &BYTES,
            &[("route", route), ("direction", role.direction())],
            bytes.load(Ordering::Relaxed),
        );
    }
    for (end, n) in st.consumer_closed.iter() {
        s.counter(
            &CONSUMER_CONNECTIONS_CLOSED,
            &[("route", route), ("reason", end.as_str())],
            n,
        );
    }
    for (end, n) in st.producer_closed.iter() {
        s.counter(
            &PRODUCER_CONNECTIONS_CLOSED,
            &[("route", route), ("reason", end.as_str())],
            n,
        );
    }
    q.gate().collect(s, route);

    let r = [("route", route)];
    let simple: [(&'static Family, &std::sync::atomic::AtomicU64); 5] = [
        (&MESSAGES_IN, &st.messages_in),
        (&MESSAGES_LOST_UNQUEUED, &st.lost_unqueued),
        (&MESSAGES_DELIVERED, &st.messages_delivered),
        (&MESSAGES_REDELIVERED, &st.messages_redelivered),
        (&PARTIAL_MESSAGES_AT_EOF, &st.partial_at_eof),
    ];
    for (family, v) in simple {
        s.counter(family, &r, v.load(Ordering::Relaxed));
    }
    for (kind, n) in st.frame_errors.iter() {
        s.counter(
            &FRAME_ERRORS,
            &[("route", route), ("kind", kind.as_str())],
            n,
        );
    }
    s.histogram(&DELIVERY_LATENCY, &r, st.delivery_latency.snapshot());
    if q.route().to_protocol == crate::config::Protocol::Ack {
        for (family, v) in [
            (&ACK_TIMEOUTS, &st.ack_timeouts),
            (&ACKS_IGNORED, &st.acks_ignored),
            (&NAKS, &st.naks),
        ] {
            s.counter(family, &r, v.load(Ordering::Relaxed));
        }
        let (mut max, mut term, mut unacked) = (0, 0, 0);
        for d in q.dispatchers() {
            let (m, t) = d.buried();
            max += m;
            term += t;
            unacked += d.unacked_total();
            let group = match d.group_name() {
                "" => "default",
                g => g,
            };
            s.gauge(&GROUP_LAG, &[("route", route), ("group", group)], d.lag());
        }
        for (reason, n) in [("max_deliveries", max), ("term", term)] {
            s.counter(&DEAD_LETTERS, &[("route", route), ("reason", reason)], n);
        }
        let depth = q.dead.as_ref().map_or(0, |d| d.depth());
        s.gauge(&DEAD_LETTER_MESSAGES, &r, depth);
        s.gauge(&UNACKED_MESSAGES, &r, unacked);
    }

    if let Some(js) = q.jetstream_stats() {
        for (family, v) in [
            (&JS_BATCHES_PUBLISHED, &js.batches_out),
            (&JS_MESSAGES_PUBLISHED, &js.messages_out),
            (&JS_PUBLISH_DUPLICATES, &js.duplicates),
            (&JS_PUBLISH_FAILURES, &js.failures),
            (&JS_MESSAGES_PULLED, &js.messages_in),
            (&JS_BATCHES_ACKED, &js.batches_in_acked),
            (&JS_DUPLICATE_BATCHES, &js.duplicates_in),
            (&JS_REORDERED_BATCHES, &js.reordered),
            (&JS_BAD_BATCHES, &js.bad_batches),
        ] {
            s.counter(family, &r, v.load(Ordering::Relaxed));
        }
    }

    // The spool snapshot takes its lock once per scrape.
    super::spool_metrics::collect(s, route, &q.spool().stats());
}
