//! Defaults shared by the CLI and the config file, in one place: clap
//! takes its `default_value_t` from here, the routes' constructors
//! ([`QueueRoute::new`](super::QueueRoute::new),
//! [`StreamRoute::new`](super::StreamRoute::new)) and [`Global`](super::Global)
//! start from here. A default that a library crate also applies on its own
//! is defined there and named here, so there is one number for each: the
//! spool's sizes and fsync interval (`spillway_spool::DEFAULT_*`). The
//! policies the config file only adjusts (backoff, health checks, outlier
//! detection, circuit breakers, TLS handshake timeout, IPv6 prefix) keep
//! their defaults in `spillway_net` (`Default` impls and `DEFAULT_*`).

use std::time::Duration;

use spillway_codec::Framing;
use spillway_net::balance::Balance;
use spillway_net::dial::Keepalive;
use spillway_spool::{Durability, WhenFull};

// ------------------------------------------------------------- global ---

pub const MAX_SPILL_TOTAL: u64 = 8 << 30;
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// What peers may make the relay hold, all queue routes together:
/// producers' read buffers and partial messages, consumers' windows.
pub const PEER_MEMORY: u64 = 64 << 20;

// ------------------------------------------------------- stream routes ---

pub const BALANCE: Balance = Balance::RoundRobin;
pub const BUFFER: u64 = 64 << 10;
/// Kernel pipe per direction in splice mode. Pages are used only while
/// bytes are in flight; measured here, 1 MiB moves 0.75 of direct
/// loopback throughput against 0.57 for 64 KiB (fewer, larger splices).
pub const PIPE_SIZE: u64 = 1 << 20;
/// Per upstream connect (stream) and per `connect:` dial (queue).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
pub const CONNECT_TRIES: u32 = 3;
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(600);
pub const HALF_CLOSE_TIMEOUT: Duration = Duration::from_secs(60);
pub const MAX_CONNECTIONS: usize = 10_000;
pub const MAX_SPILL_PER_CONNECTION: u64 = 1 << 30;

// -------------------------------------------------------- queue routes ---

pub const FRAMING: Framing = Framing::Lines;
/// The spool's own default (`SpoolConfig::new`).
pub const QUEUE_MEMORY: u64 = spillway_spool::DEFAULT_MEMORY_LIMIT;
/// The spool's own default (`SpoolConfig::new`); widening a `u32`, so
/// the `as` is lossless.
pub const MAX_MESSAGE: u64 = spillway_spool::DEFAULT_MAX_MESSAGE as u64;
/// Bound on the disk tier: 0 = none.
pub const MAX_DISK: u64 = 0;
pub const WHEN_FULL: WhenFull = WhenFull::Block;
/// The spool's own default (`SpoolConfig::new`).
pub const SEGMENT_SIZE: u64 = spillway_spool::DEFAULT_SEGMENT_SIZE;
/// The spool's own default interval (`SpoolConfig::new`).
pub const FSYNC_INTERVAL: Duration = spillway_spool::DEFAULT_FSYNC_INTERVAL;
pub const FSYNC: Durability = Durability::Interval(FSYNC_INTERVAL);
/// Bytes of recently delivered messages re-sent to the next consumer
/// after a consumer resets (they may have been sitting unread in its
/// receive buffer): duplicates instead of loss.
pub const REDELIVER_ON_RESET: u64 = 256 << 10;
/// Ack protocol: how long a consumer may hold a message without an ack or
/// a PROG.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(30);
/// Ack protocol: deliveries after which a message is dead-lettered.
pub const MAX_DELIVERIES: u32 = 5;
/// Ack protocol: how long a producer name is remembered after its last
/// message.
pub const PRODUCER_MEMORY: Duration = Duration::from_secs(24 * 3600);
/// Queue producers: connected and silent this long means closed.
pub const READ_IDLE_TIMEOUT: Duration = Duration::from_secs(600);
/// Connections on a queue route's listeners, producers and consumers
/// together.
pub const QUEUE_MAX_CONNECTIONS: usize = 1024;
/// A producer holding a partial message must send at least this many
/// bytes per second on average (after [`MIN_RATE_GRACE`]).
pub const MIN_RATE: u64 = 1 << 10;
pub const MIN_RATE_GRACE: Duration = Duration::from_secs(10);

// ------------------------------------------------ both modes: liveness ---

/// Keepalive: an idle peer that vanished is detected in about
/// idle + interval * count (or at `TCP_USER_TIMEOUT`, whichever the
/// kernel reaches first once probes go unanswered).
pub const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
pub const KEEPALIVE_COUNT: u32 = 3;
/// The three above together.
pub const KEEPALIVE: Keepalive = Keepalive {
    idle: KEEPALIVE_IDLE,
    interval: KEEPALIVE_INTERVAL,
    count: KEEPALIVE_COUNT,
};
/// Longer than the write-stall timeout, so a peer that stops reading
/// is reported as a write stall (the kernel applies the user timeout to
/// a zero window too); a peer that stops acknowledging is cut here.
pub const TCP_USER_TIMEOUT: Duration = Duration::from_secs(90);
pub const WRITE_STALL_TIMEOUT: Duration = Duration::from_secs(60);

// --------------------------------------------- queue routes: JetStream ---

pub const JS_REPLICAS: usize = 3;
/// `max_message` of a jetstream route: the largest a JetStream message
/// carries alone ([`model::JS_MAX_MESSAGE`](super::model::JS_MAX_MESSAGE));
/// the spool's 1 MiB default does not fit.
pub const JS_MAX_MESSAGE: u64 = super::model::JS_MAX_MESSAGE;
/// Bytes of messages per JetStream message: large enough that a publish
/// (a Raft round and, under `sync_interval: always`, an fsync on each
/// replica) carries many messages; small enough that a redelivered batch
/// is cheap and a relay's held batches stay a few MiB.
pub const JS_BATCH_BYTES: u64 = 256 << 10;
pub const JS_MAX_INFLIGHT: usize = 8;
pub const JS_ACK_WAIT: Duration = Duration::from_secs(30);
pub const JS_MAX_PENDING: usize = 64;
/// `pinned_ttl` of a jetstream route with `pinned = true`.
pub const JS_PINNED_TTL: Duration = Duration::from_secs(30);
/// Longer than JetStream's 2 minutes: a relay restarted within it resends
/// what it had in flight without storing it twice.
pub const JS_DUPLICATE_WINDOW: Duration = Duration::from_secs(30 * 60);
