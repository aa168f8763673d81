//! `/metrics`: every route's counters, read at scrape time.
//!
//! The hot paths count into plain atomics on each route's stats
//! ([`RouteStats`], [`QueueStats`], the spool's counters); this collector
//! turns them into metric families when Prometheus scrapes, so serving
//! traffic never touches a registry. Routes come and go with reloads: the
//! collector walks whatever [`AppState`] holds at that moment. Label values
//! other than route and upstream names come from enums.
//!
//! To add a metric: add a family in [`Families::write`] (one descriptor,
//! then one series per route), document it in the README's metrics table.

use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use spillway_codec::FrameErrorKind;
use spillway_spool::{HistogramSnapshot, SpoolStats};

use crate::app::{AppState, LiveKind, LiveRoute, ReloadResult};
use crate::queue::{self, ConsumerEnd, ProducerEnd, QueueServer, QueueStats};
use crate::stream::{CloseReason, Direction as StreamDirection, RouteStats, StreamServer};
use spillway_net::breaker::Overflow;
use spillway_net::classify::ErrorClass;
use spillway_net::limit::LimitKind;

/// Registers the collector of the whole process in `registry`.
pub fn register(registry: &mut Registry, state: Arc<AppState>) {
    registry.register_collector(Box::new(RoutesCollector { state }));
}

struct RoutesCollector {
    state: Arc<AppState>,
}

impl fmt::Debug for RoutesCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RoutesCollector")
    }
}

/// Which side of a route a connection is on (a label).
#[derive(Clone, Copy)]
enum Role {
    Client,
    Upstream,
    Producer,
    Consumer,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::Client => "client",
            Role::Upstream => "upstream",
            Role::Producer => "producer",
            Role::Consumer => "consumer",
        }
    }
}

/// Byte direction, HAProxy's convention: `in` from clients/producers,
/// `out` to clients/consumers.
#[derive(Clone, Copy)]
enum Direction {
    In,
    Out,
}

impl Direction {
    fn as_str(self) -> &'static str {
        match self {
            Direction::In => "in",
            Direction::Out => "out",
        }
    }
}

#[derive(Clone, Copy)]
enum Tier {
    Memory,
    Disk,
}

impl Tier {
    fn as_str(self) -> &'static str {
        match self {
            Tier::Memory => "memory",
            Tier::Disk => "disk",
        }
    }
}

/// Why queued messages were dropped (a label).
#[derive(Clone, Copy)]
enum DropReason {
    /// `when_full = drop-newest`: refused at the disk bound.
    DropNewest,
    /// `when_full = drop-oldest`: deleted unread at the disk bound.
    DropOldest,
}

impl DropReason {
    fn as_str(self) -> &'static str {
        match self {
            DropReason::DropNewest => "drop_newest",
            DropReason::DropOldest => "drop_oldest",
        }
    }
}

const FRAME_ERRORS: [FrameErrorKind; 4] = [
    FrameErrorKind::TooLarge,
    FrameErrorKind::Truncated,
    FrameErrorKind::NewlineInPayload,
    FrameErrorKind::PayloadTooLong,
];

type Labels<'a> = Vec<(&'static str, &'a str)>;

/// A per-route counter family read straight from a stats struct:
/// (name, help, reader).
type Simple<T> = (&'static str, &'static str, fn(&T) -> u64);

/// One scrape's view of a route.
struct Snap<'a> {
    live: &'a LiveRoute,
    kind: SnapKind,
}

enum SnapKind {
    Stream(Arc<StreamServer>),
    Queue(Arc<QueueServer>, Box<SpoolStats>),
}

impl Collector for RoutesCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), fmt::Error> {
        let routes = self.state.routes();
        let snaps: Vec<Snap<'_>> = routes
            .iter()
            .map(|live| Snap {
                live,
                kind: match &live.kind {
                    LiveKind::Stream(rx) => SnapKind::Stream(Arc::clone(&*rx.borrow())),
                    // The spool snapshot takes its lock once per scrape.
                    LiveKind::Queue(q) => {
                        SnapKind::Queue(Arc::clone(q), Box::new(q.spool().stats()))
                    }
                },
            })
            .collect();
        process_families(&mut enc, &self.state)?;
        Families { snaps: &snaps }.write(&mut enc)
    }
}

fn process_families(enc: &mut DescriptorEncoder, state: &AppState) -> fmt::Result {
    let version = env!("CARGO_PKG_VERSION");
    family(
        enc,
        "spillway_build_info",
        "Build information (always 1).",
        MetricType::Gauge,
        |m| gauge(m, &vec![("version", version)], 1),
    )?;
    family(
        enc,
        "spillway_ready",
        "1 when every configured route is serving and the process is not draining.",
        MetricType::Gauge,
        |m| gauge0(m, u64::from(state.ready())),
    )?;
    family(
        enc,
        "spillway_draining",
        "1 once shutdown started (SIGTERM/SIGINT).",
        MetricType::Gauge,
        |m| gauge0(m, u64::from(state.draining())),
    )?;
    family(
        enc,
        "spillway_config_reloads",
        "Config reloads (SIGHUP) by result.",
        MetricType::Counter,
        |m| {
            for r in ReloadResult::ALL {
                counter(m, &vec![("result", r.as_str())], state.reloads(r))?;
            }
            Ok(())
        },
    )?;
    family(
        enc,
        "spillway_config_last_reload_success_timestamp_seconds",
        "Unix time of the last successful config load.",
        MetricType::Gauge,
        |m| gauge0(m, state.last_reload_success()),
    )?;
    family(
        enc,
        "spillway_spill_bytes",
        "Bytes in stream-mode spill files, all connections.",
        MetricType::Gauge,
        |m| gauge0(m, state.spill().used()),
    )?;
    family(
        enc,
        "spillway_spill_limit_bytes",
        "Bound on spill-file bytes (max_spill_total).",
        MetricType::Gauge,
        |m| gauge0(m, state.spill().limit()),
    )?;
    family(
        enc,
        "spillway_peer_memory_bytes",
        "Bytes queue routes hold for peers: producers' read buffers and partial messages, consumers' windows.",
        MetricType::Gauge,
        |m| gauge0(m, state.peer_memory().used()),
    )?;
    family(
        enc,
        "spillway_peer_memory_limit_bytes",
        "Bound on peer memory (global peer_memory).",
        MetricType::Gauge,
        |m| gauge0(m, state.peer_memory().limit()),
    )?;
    family(
        enc,
        "spillway_peer_memory_refusals",
        "Times a connection was refused more peer memory (a producer then waits unread, a consumer takes nothing more until acknowledgements come in).",
        MetricType::Counter,
        |m| counter0(m, state.peer_memory().refused()),
    )
}

struct Families<'a> {
    snaps: &'a [Snap<'a>],
}

impl Families<'_> {
    fn streams(&self) -> impl Iterator<Item = (&str, &RouteStats, &StreamServer)> {
        self.snaps.iter().filter_map(|s| match &s.kind {
            SnapKind::Stream(srv) => Some((s.live.name.as_str(), &**srv.stats(), &**srv)),
            SnapKind::Queue(..) => None,
        })
    }

    fn queues(&self) -> impl Iterator<Item = (&str, &QueueStats, &SpoolStats)> {
        self.snaps.iter().filter_map(|s| match &s.kind {
            SnapKind::Queue(q, sp) => Some((s.live.name.as_str(), q.stats(), &**sp)),
            SnapKind::Stream(_) => None,
        })
    }

    fn write(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        family(
            enc,
            "spillway_route_info",
            "Live routes (1 each), with their mode and state.",
            MetricType::Gauge,
            |m| {
                for s in self.snaps {
                    let labels = vec![
                        ("route", s.live.name.as_str()),
                        ("mode", s.live.mode()),
                        ("state", s.live.state().as_str()),
                    ];
                    gauge(m, &labels, 1)?;
                }
                Ok(())
            },
        )?;
        self.connections(enc)?;
        self.bytes(enc)?;
        self.upstreams(enc)?;
        self.health(enc)?;
        self.tls(enc)?;
        self.messages(enc)?;
        self.spool(enc)
    }

    fn connections(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        family(
            enc,
            "spillway_connections",
            "Connections opened (accepted or dialed), by role.",
            MetricType::Counter,
            |m| {
                for (route, st, _) in self.streams() {
                    counter(
                        m,
                        &vec![("route", route), ("role", Role::Client.as_str())],
                        st.accepted.load(Ordering::Relaxed),
                    )?;
                }
                for (route, q, _) in self.queues() {
                    counter(
                        m,
                        &vec![("route", route), ("role", Role::Producer.as_str())],
                        q.producers_total.load(Ordering::Relaxed),
                    )?;
                    counter(
                        m,
                        &vec![("route", route), ("role", Role::Consumer.as_str())],
                        q.consumers_total.load(Ordering::Relaxed),
                    )?;
                }
                Ok(())
            },
        )?;
        family(
            enc,
            "spillway_connections_active",
            "Connections open now, by role.",
            MetricType::Gauge,
            |m| {
                for (route, st, _) in self.streams() {
                    gauge(
                        m,
                        &vec![("route", route), ("role", Role::Client.as_str())],
                        st.active.load(Ordering::Relaxed) as u64,
                    )?;
                }
                for (route, q, _) in self.queues() {
                    gauge(
                        m,
                        &vec![("route", route), ("role", Role::Producer.as_str())],
                        q.producers.load(Ordering::Relaxed) as u64,
                    )?;
                    gauge(
                        m,
                        &vec![("route", route), ("role", Role::Consumer.as_str())],
                        q.consumers.load(Ordering::Relaxed) as u64,
                    )?;
                }
                Ok(())
            },
        )?;
        family(
            enc,
            "spillway_connections_closed",
            "Stream connections closed, by reason.",
            MetricType::Counter,
            |m| {
                for (route, st, _) in self.streams() {
                    for r in CloseReason::ALL {
                        counter(
                            m,
                            &vec![("route", route), ("reason", r.as_str())],
                            st.closed(r),
                        )?;
                    }
                }
                Ok(())
            },
        )?;
        family(
            enc,
            "spillway_consumer_connections_closed",
            "Queue consumer connections closed, by reason.",
            MetricType::Counter,
            |m| {
                for (route, q, _) in self.queues() {
                    for e in ConsumerEnd::ALL {
                        counter(
                            m,
                            &vec![("route", route), ("reason", e.as_str())],
                            q.consumer_closed(e),
                        )?;
                    }
                }
                Ok(())
            },
        )?;
        family(
            enc,
            "spillway_producer_connections_closed",
            "Queue producer connections closed, by reason.",
            MetricType::Counter,
            |m| {
                for (route, q, _) in self.queues() {
                    for e in ProducerEnd::ALL {
                        counter(
                            m,
                            &vec![("route", route), ("reason", e.as_str())],
                            q.producer_closed(e),
                        )?;
                    }
                }
                Ok(())
            },
        )
    }

    fn bytes(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        family(enc, "spillway_bytes", "Payload bytes: in from clients/producers, out to clients/consumers (queue: delivered).", MetricType::Counter, |m| {
            for (route, st, _) in self.streams() {
                counter(m, &vec![("route", route), ("direction", Direction::In.as_str())], st.bytes(StreamDirection::ClientToUpstream))?;
                counter(m, &vec![("route", route), ("direction", Direction::Out.as_str())], st.bytes(StreamDirection::UpstreamToClient))?;
            }
            for (route, q, _) in self.queues() {
                counter(m, &vec![("route", route), ("direction", Direction::In.as_str())], q.bytes_in.load(Ordering::Relaxed))?;
                counter(m, &vec![("route", route), ("direction", Direction::Out.as_str())], q.bytes_delivered.load(Ordering::Relaxed))?;
            }
            Ok(())
        })?;
        family(
            enc,
            "spillway_spilled_bytes",
            "Stream bytes that went through a spill file.",
            MetricType::Counter,
            |m| {
                for (route, st, _) in self.streams() {
                    counter(
                        m,
                        &vec![("route", route)],
                        st.spilled_bytes.load(Ordering::Relaxed),
                    )?;
                }
                Ok(())
            },
        )
    }

    fn upstreams(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        family(
            enc,
            "spillway_upstream_connect_failures",
            "Failed upstream connects (stream mode).",
            MetricType::Counter,
            |m| {
                for (route, st, _) in self.streams() {
                    counter(
                        m,
                        &vec![("route", route)],
                        st.connect_failures.load(Ordering::Relaxed),
                    )?;
                }
                Ok(())
            },
        )?;
        family(
            enc,
            "spillway_upstream_connections_active",
            "Connections open to each upstream.",
            MetricType::Gauge,
            |m| {
                for (route, _, srv) in self.streams() {
                    for (i, up) in srv.route().upstreams.iter().enumerate() {
                        let active = srv.balancer().load(i).map_or(0, |l| l.active());
                        gauge(
                            m,
                            &vec![("route", route), ("upstream", up.as_str())],
                            active as u64,
                        )?;
                    }
                }
                Ok(())
            },
        )?;
        family(
            enc,
            "spillway_upstream_picks",
            "Times each upstream was picked for a connection.",
            MetricType::Counter,
            |m| {
                for (route, _, srv) in self.streams() {
                    for (i, up) in srv.route().upstreams.iter().enumerate() {
                        let picked = srv.balancer().load(i).map_or(0, |l| l.picked());
                        counter(
                            m,
                            &vec![("route", route), ("upstream", up.as_str())],
                            picked,
                        )?;
                    }
                }
                Ok(())
            },
        )
    }

    fn queue_servers(&self) -> impl Iterator<Item = (&str, &QueueServer)> {
        self.snaps.iter().filter_map(|s| match &s.kind {
            SnapKind::Queue(q, _) => Some((s.live.name.as_str(), &**q)),
            SnapKind::Stream(_) => None,
        })
    }

    /// Upstream health (active checks, outlier ejection, circuit breakers),
    /// listener limits and the queue dialers' classified failures.
    fn health(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        type Up = crate::stream::upstream::UpstreamStatus;
        let gauges: [Simple<Up>; 3] = [
            (
                "spillway_upstream_healthy",
                "1 when the upstream passes its active health checks (always 1 without checks).",
                |u| u64::from(u.is_healthy()),
            ),
            (
                "spillway_upstream_ejected",
                "1 while outlier detection has the upstream ejected.",
                |u| u64::from(u.is_ejected()),
            ),
            (
                "spillway_upstream_pending_connects",
                "Connects to the upstream in progress.",
                |u| u.pending() as u64,
            ),
        ];
        for (name, help, read) in gauges {
            family(enc, name, help, MetricType::Gauge, |m| {
                for (route, _, srv) in self.streams() {
                    for u in srv.upstreams() {
                        gauge(
                            m,
                            &vec![("route", route), ("upstream", u.address())],
                            read(u),
                        )?;
                    }
                }
                Ok(())
            })?;
        }
        let counters: [Simple<Up>; 2] = [
            (
                "spillway_upstream_ejections",
                "Times outlier detection ejected the upstream (consecutive connect failures).",
                |u| u.ejections(),
            ),
            (
                "spillway_upstream_connect_attempts",
                "Connects attempted to the upstream.",
                |u| u.connect_attempts(),
            ),
        ];
        for (name, help, read) in counters {
            family(enc, name, help, MetricType::Counter, |m| {
                for (route, _, srv) in self.streams() {
                    for u in srv.upstreams() {
                        counter(
                            m,
                            &vec![("route", route), ("upstream", u.address())],
                            read(u),
                        )?;
                    }
                }
                Ok(())
            })?;
        }
        family(
            enc,
            "spillway_upstream_connect_errors",
            "Failed connects to the upstream (TLS handshakes included), by class: transient, persistent, resource.",
            MetricType::Counter,
            |m| {
                for (route, _, srv) in self.streams() {
                    for u in srv.upstreams() {
                        for c in ErrorClass::ALL {
                            counter(
                                m,
                                &vec![("route", route), ("upstream", u.address()), ("class", c.as_str())],
                                u.connect_failures(c),
                            )?;
                        }
                    }
                }
                Ok(())
            },
        )?;
        family(
            enc,
            "spillway_upstream_breaker_rejections",
            "Clients refused by the upstream's circuit breaker, by the limit reached.",
            MetricType::Counter,
            |m| {
                for (route, _, srv) in self.streams() {
                    for u in srv.upstreams() {
                        for k in Overflow::ALL {
                            counter(
                                m,
                                &vec![
                                    ("route", route),
                                    ("upstream", u.address()),
                                    ("limit", k.as_str()),
                                ],
                                u.breaker_rejections(k),
                            )?;
                        }
                    }
                }
                Ok(())
            },
        )?;
        family(
            enc,
            "spillway_upstream_panic_picks",
            "Connections sent while no upstream was healthy and un-ejected (panic mode: all tried).",
            MetricType::Counter,
            |m| {
                for (route, _, srv) in self.streams() {
                    counter(m, &vec![("route", route)], srv.panic_picks())?;
                }
                Ok(())
            },
        )?;
        family(
            enc,
            "spillway_listener_rejections",
            "Connections closed right after accept by a listener limit (global max_connections, a queue route's max_connections, max_connections_per_ip).",
            MetricType::Counter,
            |m| {
                let gates = self
                    .streams()
                    .map(|(route, _, srv)| (route, srv.gate()))
                    .chain(self.queue_servers().map(|(route, q)| (route, q.gate())));
                for (route, gate) in gates {
                    for k in LimitKind::ALL {
                        counter(m, &vec![("route", route), ("limit", k.as_str())], gate.rejected(k))?;
                    }
                }
                Ok(())
            },
        )?;
        family(
            enc,
            "spillway_dial_attempts",
            "Connects attempted by a queue route's connect: endpoint, by role.",
            MetricType::Counter,
            |m| {
                for (route, q, _) in self.queues() {
                    for role in queue::Role::ALL {
                        counter(
                            m,
                            &vec![("route", route), ("role", role.as_str())],
                            q.dial(role).attempts.load(Ordering::Relaxed),
                        )?;
                    }
                }
                Ok(())
            },
        )?;
        family(
            enc,
            "spillway_dial_errors",
            "Failed connects (TLS handshakes included) of a queue route's connect: endpoint, by role and class.",
            MetricType::Counter,
            |m| {
                for (route, q, _) in self.queues() {
                    for role in queue::Role::ALL {
                        for c in ErrorClass::ALL {
                            counter(
                                m,
                                &vec![("route", route), ("role", role.as_str()), ("class", c.as_str())],
                                q.dial(role).failures.get(c),
                            )?;
                        }
                    }
                }
                Ok(())
            },
        )
    }

    fn tls(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        family(
            enc,
            "spillway_tls_handshake_failures",
            "Failed TLS handshakes, by the peer's role (client and producer/consumer on listen: endpoints: not TLS, untrusted or missing certificate, timeout; upstream and dialed endpoints: a certificate we rejected, or a handshake error).",
            MetricType::Counter,
            |m| {
                for (route, st, _) in self.streams() {
                    for (role, v) in [
                        (Role::Client, &st.tls_handshake_failures),
                        (Role::Upstream, &st.upstream_tls_failures),
                    ] {
                        counter(
                            m,
                            &vec![("route", route), ("role", role.as_str())],
                            v.load(Ordering::Relaxed),
                        )?;
                    }
                }
                for (route, q, _) in self.queues() {
                    for (role, v) in [
                        (Role::Producer, &q.producer_tls_failures),
                        (Role::Consumer, &q.consumer_tls_failures),
                    ] {
                        counter(
                            m,
                            &vec![("route", route), ("role", role.as_str())],
                            v.load(Ordering::Relaxed),
                        )?;
                    }
                }
                Ok(())
            },
        )
    }

    fn messages(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        let simple: [Simple<QueueStats>; 5] = [
            ("spillway_messages_in", "Messages read from producers and queued.", |q| q.messages_in.load(Ordering::Relaxed)),
            ("spillway_messages_lost_unqueued", "Messages read from producers (acknowledged to them by TCP) that could not be queued: a failed spool, or a disk still physically full at the end of the drain.", |q| q.lost_unqueued.load(Ordering::Relaxed)),
            ("spillway_messages_delivered", "Messages acknowledged by a consumer's TCP stack.", |q| q.messages_delivered.load(Ordering::Relaxed)),
            ("spillway_messages_redelivered", "Messages sent again after a consumer left or reset.", |q| q.messages_redelivered.load(Ordering::Relaxed)),
            ("spillway_partial_messages_at_eof", "Producers that ended in the middle of a message (the partial message is not queued).", |q| q.partial_at_eof.load(Ordering::Relaxed)),
        ];
        for (name, help, read) in simple {
            family(enc, name, help, MetricType::Counter, |m| {
                for (route, q, _) in self.queues() {
                    counter(m, &vec![("route", route)], read(q))?;
                }
                Ok(())
            })?;
        }
        family(
            enc,
            "spillway_messages_dropped",
            "Messages dropped at the disk bound, by reason.",
            MetricType::Counter,
            |m| {
                for (route, _, sp) in self.queues() {
                    counter(
                        m,
                        &vec![
                            ("route", route),
                            ("reason", DropReason::DropNewest.as_str()),
                        ],
                        sp.dropped_newest_msgs,
                    )?;
                    counter(
                        m,
                        &vec![
                            ("route", route),
                            ("reason", DropReason::DropOldest.as_str()),
                        ],
                        sp.dropped_oldest_msgs,
                    )?;
                }
                Ok(())
            },
        )?;
        family(
            enc,
            "spillway_frame_errors",
            "Producer connections closed for a bad frame, by kind.",
            MetricType::Counter,
            |m| {
                for (route, q, _) in self.queues() {
                    for k in FRAME_ERRORS {
                        counter(
                            m,
                            &vec![("route", route), ("kind", k.as_str())],
                            q.frame_errors(k),
                        )?;
                    }
                }
                Ok(())
            },
        )?;
        family(
            enc,
            "spillway_queue_depth_messages",
            "Messages queued, not yet delivered, by tier.",
            MetricType::Gauge,
            |m| {
                for (route, _, sp) in self.queues() {
                    gauge(
                        m,
                        &vec![("route", route), ("tier", Tier::Memory.as_str())],
                        sp.mem_msgs,
                    )?;
                    gauge(
                        m,
                        &vec![("route", route), ("tier", Tier::Disk.as_str())],
                        sp.disk_msgs,
                    )?;
                }
                Ok(())
            },
        )?;
        family(enc, "spillway_queue_depth_bytes", "Queue bytes by tier: memory = queued message bytes; disk = segment file bytes (includes delivered messages in segments not yet deleted).", MetricType::Gauge, |m| {
            for (route, _, sp) in self.queues() {
                gauge(m, &vec![("route", route), ("tier", Tier::Memory.as_str())], sp.mem_bytes)?;
                gauge(m, &vec![("route", route), ("tier", Tier::Disk.as_str())], sp.disk_bytes)?;
            }
            Ok(())
        })?;
        family(
            enc,
            "spillway_queue_oldest_message_age_seconds",
            "Age of the oldest undelivered message (0 when empty).",
            MetricType::Gauge,
            |m| {
                for (route, _, sp) in self.queues() {
                    let age = sp.oldest_age.map_or(0.0, |d| d.as_secs_f64());
                    gauge_f(m, &vec![("route", route)], age)?;
                }
                Ok(())
            },
        )?;
        family(
            enc,
            "spillway_delivery_latency_seconds",
            "Enqueue to delivered (acknowledged by the consumer's TCP), per message.",
            MetricType::Histogram,
            |m| {
                for (route, q, _) in self.queues() {
                    histogram(m, &vec![("route", route)], &q.delivery_latency.snapshot())?;
                }
                Ok(())
            },
        )
    }

    fn spool(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        let counters: [Simple<SpoolStats>; 7] = [
            (
                "spillway_spool_cursor_write_failures",
                "Consumer-position (cursor) writes refused by a full disk; the last saved position is kept and the write retried.",
                |s| s.cursor_write_failures,
            ),
            (
                "spillway_spool_written_bytes",
                "Bytes written to segment files.",
                |s| s.bytes_written,
            ),
            (
                "spillway_spool_read_bytes",
                "Bytes read back from segment files.",
                |s| s.bytes_read,
            ),
            (
                "spillway_spool_blocked_appends",
                "Appends that waited for space (when_full = block).",
                |s| s.blocked,
            ),
            (
                "spillway_spool_enospc",
                "Segment writes that hit ENOSPC/EDQUOT.",
                |s| s.enospc,
            ),
            (
                "spillway_spool_truncated_bytes",
                "Torn-tail bytes truncated by recovery at open.",
                |s| s.truncated_bytes,
            ),
            (
                "spillway_spool_segments_deleted",
                "Fully delivered segments deleted.",
                |s| s.segments_deleted,
            ),
        ];
        for (name, help, read) in counters {
            family(enc, name, help, MetricType::Counter, |m| {
                for (route, _, sp) in self.queues() {
                    counter(m, &vec![("route", route)], read(sp))?;
                }
                Ok(())
            })?;
        }
        let gauges: [Simple<SpoolStats>; 2] = [
            ("spillway_spool_segments", "Segment files on disk.", |s| {
                s.segments
            }),
            (
                "spillway_spool_memory_reserved_bytes",
                "Disk space reserved for writing the memory tier out at shutdown: the memory tier's capacity (below `memory` when the disk was too full to reserve it all).",
                |s| s.mem_reserved,
            ),
        ];
        for (name, help, read) in gauges {
            family(enc, name, help, MetricType::Gauge, |m| {
                for (route, _, sp) in self.queues() {
                    gauge(m, &vec![("route", route)], read(sp))?;
                }
                Ok(())
            })?;
        }
        family(
            enc,
            "spillway_spool_poisoned",
            "1 when the spool stopped after a failed fsync or write.",
            MetricType::Gauge,
            |m| {
                for (route, _, sp) in self.queues() {
                    gauge(m, &vec![("route", route)], u64::from(sp.poisoned))?;
                }
                Ok(())
            },
        )?;
        family(
            enc,
            "spillway_spool_fsync_duration_seconds",
            "Data fsync (fdatasync) latency.",
            MetricType::Histogram,
            |m| {
                for (route, _, sp) in self.queues() {
                    histogram(m, &vec![("route", route)], &sp.fsync_latency)?;
                }
                Ok(())
            },
        )
    }
}

/// One metric family: a descriptor, then whatever series `series` writes.
fn family(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    ty: MetricType,
    series: impl FnOnce(&mut MetricEncoder) -> fmt::Result,
) -> fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, ty)?;
    series(&mut m)
}

fn counter(m: &mut MetricEncoder, labels: &Labels<'_>, v: u64) -> fmt::Result {
    m.encode_family(labels)?
        .encode_counter::<NoLabelSet, _, f64>(&v, None)
}

fn gauge(m: &mut MetricEncoder, labels: &Labels<'_>, v: u64) -> fmt::Result {
    // Gauges are exported as i64 where they fit (Prometheus reads floats).
    let v = i64::try_from(v).unwrap_or(i64::MAX);
    m.encode_family(labels)?.encode_gauge(&v)
}

fn counter0(m: &mut MetricEncoder, v: u64) -> fmt::Result {
    m.encode_counter::<NoLabelSet, _, f64>(&v, None)
}

fn gauge0(m: &mut MetricEncoder, v: u64) -> fmt::Result {
    m.encode_gauge(&i64::try_from(v).unwrap_or(i64::MAX))
}

fn gauge_f(m: &mut MetricEncoder, labels: &Labels<'_>, v: f64) -> fmt::Result {
    m.encode_family(labels)?.encode_gauge(&v)
}

fn histogram(m: &mut MetricEncoder, labels: &Labels<'_>, h: &HistogramSnapshot) -> fmt::Result {
    m.encode_family(labels)?
        .encode_histogram::<NoLabelSet>(h.sum, h.count, &h.buckets, None)
}
