//! The config file as TOML gives it: serde structs that know every key
//! (`deny_unknown_fields`) and keep every value's span, before any check.
//! [`convert`](super::convert) turns them into the [`model`](super::model).

use serde::Deserialize;
use toml::Spanned;

use crate::units::{ByteSize, HumanDuration};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default)]
    pub(super) global: Option<RawGlobal>,
    #[serde(default)]
    pub(super) admin: Option<RawAdmin>,
    #[serde(default)]
    pub(super) route: Vec<Spanned<RawRoute>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGlobal {
    pub(super) max_spill_total: Option<ByteSize>,
    pub(super) drain_timeout: Option<HumanDuration>,
    pub(super) max_connections: S<u64>,
    pub(super) peer_memory: S<ByteSize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    pub(super) listen: String,
    pub(super) token_file: Option<String>,
}

pub(super) type S<T> = Option<Spanned<T>>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    pub(super) name: S<String>,
    pub(super) mode: S<String>,
    // stream
    pub(super) listen: S<String>,
    pub(super) upstreams: S<Vec<String>>,
    pub(super) balance: S<String>,
    pub(super) connect_timeout: S<HumanDuration>,
    pub(super) connect_tries: S<u32>,
    pub(super) idle_timeout: S<HumanDuration>,
    pub(super) half_close_timeout: S<HumanDuration>,
    pub(super) max_connections: S<u64>,
    pub(super) buffer: S<ByteSize>,
    pub(super) pipe_size: S<ByteSize>,
    pub(super) spill_dir: S<String>,
    pub(super) max_spill: S<ByteSize>,
    // queue
    pub(super) from: S<String>,
    pub(super) to: S<String>,
    pub(super) spool: S<String>,
    pub(super) framing: S<String>,
    pub(super) max_message: S<ByteSize>,
    pub(super) memory: S<ByteSize>,
    pub(super) max_disk: S<ByteSize>,
    pub(super) when_full: S<String>,
    pub(super) fsync: S<String>,
    pub(super) segment_size: S<ByteSize>,
    pub(super) redeliver_on_reset: S<ByteSize>,
    pub(super) from_protocol: S<String>,
    pub(super) to_protocol: S<String>,
    pub(super) ack_timeout: S<HumanDuration>,
    pub(super) max_deliveries: S<u32>,
    pub(super) producer_memory: S<HumanDuration>,
    pub(super) groups: S<Vec<String>>,
    pub(super) read_idle_timeout: S<HumanDuration>,
    pub(super) min_rate: S<ByteSize>,
    pub(super) min_rate_grace: S<HumanDuration>,
    // both
    pub(super) tcp_keepalive: S<bool>,
    pub(super) tcp_keepalive_idle: S<HumanDuration>,
    pub(super) tcp_keepalive_interval: S<HumanDuration>,
    pub(super) tcp_keepalive_count: S<u32>,
    pub(super) tcp_user_timeout: S<HumanDuration>,
    pub(super) write_stall_timeout: S<HumanDuration>,
    pub(super) max_lifetime: S<HumanDuration>,
    pub(super) backoff: S<RawBackoff>,
    // both (listeners)
    pub(super) max_connections_per_ip: S<u64>,
    pub(super) per_ip_ipv6_prefix: S<u64>,
    // stream: upstream health
    pub(super) health_check: S<RawHealthCheck>,
    pub(super) outlier: S<RawOutlier>,
    pub(super) circuit_breaker: S<RawBreaker>,
    // TLS: stream routes
    pub(super) tls: S<RawTls>,
    pub(super) upstream_tls: S<RawTls>,
    // TLS: queue routes
    pub(super) from_tls: S<RawTls>,
    pub(super) to_tls: S<RawTls>,
    // JetStream backend: queue routes
    pub(super) jetstream: S<RawJetStream>,
}

/// `[route.jetstream]` of a queue route.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawJetStream {
    /// Each entry spanned: an error points at the wrong one.
    pub(super) servers: S<Vec<Spanned<String>>>,
    pub(super) stream: S<String>,
    pub(super) subject: S<String>,
    pub(super) replicas: S<u64>,
    pub(super) consumer: S<String>,
    pub(super) credentials: S<String>,
    pub(super) user: S<String>,
    pub(super) password: S<String>,
    pub(super) token: S<String>,
    pub(super) tls_ca: S<String>,
    pub(super) tls_cert: S<String>,
    pub(super) tls_key: S<String>,
    pub(super) batch_bytes: S<ByteSize>,
    pub(super) max_inflight: S<u64>,
    pub(super) ack_wait: S<HumanDuration>,
    pub(super) max_pending: S<u64>,
    pub(super) duplicate_window: S<HumanDuration>,
    pub(super) ordered: S<bool>,
    pub(super) pinned: S<bool>,
    pub(super) pinned_ttl: S<HumanDuration>,
    pub(super) groups: S<Vec<String>>,
    pub(super) group: S<String>,
}

/// One TLS table. Which keys are allowed depends on whether spillway is
/// the server (`cert`, `key`, `client_ca`) or the client (`ca`,
/// `server_name`, `pin_sha256`, `cert`, `key`, `insecure_skip_verify`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    pub(super) cert: S<String>,
    pub(super) key: S<String>,
    pub(super) client_ca: S<String>,
    pub(super) ca: S<String>,
    pub(super) server_name: S<String>,
    pub(super) pin_sha256: S<Vec<String>>,
    pub(super) insecure_skip_verify: S<bool>,
    pub(super) handshake_timeout: S<HumanDuration>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHealthCheck {
    pub(super) kind: S<String>,
    pub(super) interval: S<HumanDuration>,
    pub(super) timeout: S<HumanDuration>,
    pub(super) rise: S<u32>,
    pub(super) fall: S<u32>,
    pub(super) jitter: S<HumanDuration>,
    pub(super) send: S<String>,
    pub(super) expect: S<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOutlier {
    pub(super) consecutive_failures: S<u32>,
    pub(super) base_ejection_time: S<HumanDuration>,
    pub(super) max_ejection_time: S<HumanDuration>,
    pub(super) max_ejection_percent: S<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBreaker {
    pub(super) max_connections: S<u64>,
    pub(super) max_pending: S<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBackoff {
    pub(super) base: S<HumanDuration>,
    pub(super) factor: S<f64>,
    pub(super) cap: S<HumanDuration>,
    pub(super) max_attempts: S<u32>,
    pub(super) reset_after: S<HumanDuration>,
}

/// The keys of a `[[route]]` table sorted by the mode they belong to.
pub(super) struct RouteKeys {
    pub(super) name: S<String>,
    pub(super) mode: S<String>,
    pub(super) stream: StreamKeys,
    pub(super) queue: QueueKeys,
    pub(super) both: BothKeys,
}

/// Keys of a stream route only.
pub(super) struct StreamKeys {
    pub(super) listen: S<String>,
    pub(super) upstreams: S<Vec<String>>,
    pub(super) balance: S<String>,
    pub(super) connect_tries: S<u32>,
    pub(super) idle_timeout: S<HumanDuration>,
    pub(super) half_close_timeout: S<HumanDuration>,
    pub(super) buffer: S<ByteSize>,
    pub(super) pipe_size: S<ByteSize>,
    pub(super) spill_dir: S<String>,
    pub(super) max_spill: S<ByteSize>,
    pub(super) tls: S<RawTls>,
    pub(super) upstream_tls: S<RawTls>,
    pub(super) health_check: S<RawHealthCheck>,
    pub(super) outlier: S<RawOutlier>,
    pub(super) circuit_breaker: S<RawBreaker>,
}

/// Keys of a queue route only.
pub(super) struct QueueKeys {
    pub(super) from: S<String>,
    pub(super) to: S<String>,
    pub(super) spool: S<String>,
    pub(super) framing: S<String>,
    pub(super) max_message: S<ByteSize>,
    pub(super) memory: S<ByteSize>,
    pub(super) max_disk: S<ByteSize>,
    pub(super) when_full: S<String>,
    pub(super) fsync: S<String>,
    pub(super) segment_size: S<ByteSize>,
    pub(super) redeliver_on_reset: S<ByteSize>,
    pub(super) from_protocol: S<String>,
    pub(super) to_protocol: S<String>,
    pub(super) ack_timeout: S<HumanDuration>,
    pub(super) max_deliveries: S<u32>,
    pub(super) producer_memory: S<HumanDuration>,
    pub(super) groups: S<Vec<String>>,
    pub(super) read_idle_timeout: S<HumanDuration>,
    pub(super) min_rate: S<ByteSize>,
    pub(super) min_rate_grace: S<HumanDuration>,
    pub(super) backoff: S<RawBackoff>,
    pub(super) from_tls: S<RawTls>,
    pub(super) to_tls: S<RawTls>,
    pub(super) jetstream: S<RawJetStream>,
}

/// Keys valid in a route of either mode.
pub(super) struct BothKeys {
    pub(super) connect_timeout: S<HumanDuration>,
    pub(super) max_connections: S<u64>,
    pub(super) max_connections_per_ip: S<u64>,
    pub(super) per_ip_ipv6_prefix: S<u64>,
    pub(super) timeouts: TimeoutKeys,
}

/// The liveness keys of either mode (become a `Timeouts`).
pub(super) struct TimeoutKeys {
    pub(super) tcp_keepalive: S<bool>,
    pub(super) tcp_keepalive_idle: S<HumanDuration>,
    pub(super) tcp_keepalive_interval: S<HumanDuration>,
    pub(super) tcp_keepalive_count: S<u32>,
    pub(super) tcp_user_timeout: S<HumanDuration>,
    pub(super) write_stall_timeout: S<HumanDuration>,
    pub(super) max_lifetime: S<HumanDuration>,
}

impl RawRoute {
    /// Sorts every key into its mode. The destructuring names every field
    /// (no `..`), so a key added to [`RawRoute`] does not compile until it
    /// is placed in one mode, the other, or both; the converter of each
    /// mode then rejects the other mode's keys.
    pub(super) fn into_keys(self) -> RouteKeys {
        let RawRoute {
            name,
            mode,
            listen,
            upstreams,
            balance,
            connect_timeout,
            connect_tries,
            idle_timeout,
            half_close_timeout,
            max_connections,
            buffer,
            pipe_size,
            spill_dir,
            max_spill,
            from,
            to,
            spool,
            framing,
            max_message,
            memory,
            max_disk,
            when_full,
            fsync,
            segment_size,
            redeliver_on_reset,
            from_protocol,
            to_protocol,
            ack_timeout,
            max_deliveries,
            producer_memory,
            groups,
            read_idle_timeout,
            min_rate,
            min_rate_grace,
            tcp_keepalive,
            tcp_keepalive_idle,
            tcp_keepalive_interval,
            tcp_keepalive_count,
            tcp_user_timeout,
            write_stall_timeout,
            max_lifetime,
            backoff,
            max_connections_per_ip,
            per_ip_ipv6_prefix,
            health_check,
            outlier,
            circuit_breaker,
            tls,
            upstream_tls,
            from_tls,
            to_tls,
            jetstream,
        } = self;
        RouteKeys {
            name,
            mode,
            stream: StreamKeys {
                listen,
                upstreams,
                balance,
                connect_tries,
                idle_timeout,
                half_close_timeout,
                buffer,
                pipe_size,
                spill_dir,
                max_spill,
                tls,
                upstream_tls,
                health_check,
                outlier,
                circuit_breaker,
            },
            queue: QueueKeys {
                from,
                to,
                spool,
                framing,
                max_message,
                memory,
                max_disk,
                when_full,
                fsync,
                segment_size,
                redeliver_on_reset,
                from_protocol,
                to_protocol,
                ack_timeout,
                max_deliveries,
                producer_memory,
                groups,
                read_idle_timeout,
                min_rate,
                min_rate_grace,
                backoff,
                from_tls,
                to_tls,
                jetstream,
            },
            both: BothKeys {
                connect_timeout,
                max_connections,
                max_connections_per_ip,
                per_ip_ipv6_prefix,
                timeouts: TimeoutKeys {
                    tcp_keepalive,
                    tcp_keepalive_idle,
                    tcp_keepalive_interval,
                    tcp_keepalive_count,
                    tcp_user_timeout,
                    write_stall_timeout,
                    max_lifetime,
                },
            },
        }
    }
}
