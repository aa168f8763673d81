//! The validated domain types of the configuration: what a route is once
//! its keys have been read, checked and defaulted, whether it came from the
//! config file or the command line. Also the text forms of the few values
//! both front ends parse (`fsync`, `when_full`, `HOST:PORT`) and the range
//! checks both apply.

use std::fmt;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::time::Duration;

use spillway_codec::Framing;
use spillway_net::backoff::BackoffConfig;
use spillway_net::balance::Balance;
use spillway_net::breaker::BreakerConfig;
use spillway_net::dial::SocketOptions;
use spillway_net::health::HealthCheckConfig;
use spillway_net::outlier::OutlierConfig;
use spillway_net::tls::{ClientTlsConfig, ServerTlsConfig};
use spillway_spool::{Durability, WhenFull};

use super::defaults;
use super::tls::EndpointTls;
use crate::endpoint::Endpoint;
use crate::units::{parse_duration, ByteSize, HumanDuration};

/// Liveness of every connection a route accepts or dials: TCP options
/// that detect a vanished peer, and the timeouts both modes enforce.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timeouts {
    /// Keepalive and `TCP_USER_TIMEOUT`, set on accepted and dialed sockets.
    pub socket: SocketOptions,
    /// Bytes waiting to be written and none written (stream mode) or
    /// acknowledged (queue consumers) for this long: the connection fails
    /// with reason `write_stall`.
    pub write_stall: Duration,
    /// Close a connection this long after it was opened (off by default).
    pub max_lifetime: Option<Duration>,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            socket: SocketOptions {
                keepalive: Some(defaults::KEEPALIVE),
                user_timeout: Some(defaults::TCP_USER_TIMEOUT),
            },
            write_stall: defaults::WRITE_STALL_TIMEOUT,
            max_lifetime: None,
        }
    }
}

/// The whole validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub global: Global,
    pub routes: Vec<Route>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Global {
    /// Bound on the bytes held in stream-mode spill files, all connections together.
    pub max_spill_total: u64,
    /// How long in-flight connections may finish after SIGTERM.
    pub drain_timeout: Duration,
    pub admin: Option<String>,
    /// A file holding the bearer token that `/metrics` and `/status` of the
    /// admin endpoint require (`None`: they are open).
    pub admin_token_file: Option<PathBuf>,
    /// Bound on client connections across all listeners (None: unlimited).
    pub max_connections: Option<usize>,
    /// Bound on the memory peers make queue routes hold (producers' read
    /// buffers and partial messages, consumers' windows), all together.
    pub peer_memory: u64,
}

impl Default for Global {
    fn default() -> Self {
        Global {
            max_spill_total: defaults::MAX_SPILL_TOTAL,
            drain_timeout: defaults::DRAIN_TIMEOUT,
            admin: None,
            admin_token_file: None,
            max_connections: None,
            peer_memory: defaults::PEER_MEMORY,
        }
    }
}

// A queue route is larger than a stream route (by its JetStream table
// among others); a config holds a handful of routes, built once per load
// or reload, so boxing one variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Route {
    Stream(StreamRoute),
    Queue(QueueRoute),
}

impl Route {
    pub fn name(&self) -> &str {
        match self {
            Route::Stream(r) => &r.name,
            Route::Queue(r) => &r.name,
        }
    }
}

/// A store-and-forward route: framed messages from `from`, through the
/// spool, to `to`.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueRoute {
    pub name: String,
    pub from: Endpoint,
    pub to: Endpoint,
    pub spool: PathBuf,
    pub framing: Framing,
    /// Largest message, framing included.
    pub max_message: u64,
    /// Bytes held in the memory tier; 0 writes every message to disk first.
    pub memory: u64,
    /// Bound on the disk tier (0 = none).
    pub max_disk: u64,
    pub when_full: WhenFull,
    pub fsync: Durability,
    pub segment_size: u64,
    pub redeliver_on_reset: u64,
    /// What producers speak (`from_protocol`).
    pub from_protocol: Protocol,
    /// What consumers speak (`to_protocol`).
    pub to_protocol: Protocol,
    /// Ack protocol: an unacknowledged message older than this (without a
    /// PROG) resets its consumer.
    pub ack_timeout: Duration,
    /// Ack protocol: deliveries after which a message is dead-lettered.
    pub max_deliveries: u32,
    /// Ack protocol: how long a producer name is remembered after its last
    /// message (for idempotent resends).
    pub producer_memory: Duration,
    /// Ack protocol: named consumer groups, each an independent cursor
    /// over the spool (the default group is unnamed).
    pub groups: Vec<String>,
    pub connect_timeout: Duration,
    pub timeouts: Timeouts,
    /// A producer that sends nothing for this long is closed (`None`: never).
    pub read_idle_timeout: Option<Duration>,
    /// A producer holding a partial message must send at least this many
    /// bytes per second on average once `min_rate_grace` has passed, or it
    /// is closed (`slow_producer`); 0 turns the check off.
    pub min_rate: u64,
    pub min_rate_grace: Duration,
    /// Bound on connections on the route's listeners (producers and
    /// consumers together).
    pub max_connections: usize,
    /// Redial policy of `connect:` endpoints.
    pub backoff: BackoffConfig,
    /// Bound on connections per client address on `listen:` endpoints.
    pub max_connections_per_ip: Option<usize>,
    /// IPv6 clients are counted by this many leading bits (one host
    /// usually holds a /64).
    pub per_ip_ipv6_prefix: u8,
    /// TLS on the producer side: terminated on a `listen:` endpoint,
    /// originated on a `connect:` one (`[route.from_tls]`).
    pub from_tls: Option<EndpointTls>,
    /// TLS on the consumer side (`[route.to_tls]`).
    pub to_tls: Option<EndpointTls>,
    /// The queue lives on NATS JetStream (`[route.jetstream]`): the local
    /// spool is then a write-behind buffer of what producers sent, and
    /// consumers are served from the stream.
    pub jetstream: Option<JetStream>,
}

/// A queue route's JetStream backend (`[route.jetstream]`; docs/jetstream.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JetStream {
    /// `nats://` or `tls://` URLs of the cluster's
    /// servers, each with its `HOST:PORT` and no user or password in it
    /// (at least one; [`check_jetstream_server`]).
    pub servers: Vec<String>,
    /// The stream (created if missing, checked if present;
    /// [`check_jetstream_name`]).
    pub stream: String,
    /// The subject this route publishes to and reads (default
    /// `spillway.<route name>`); the stream is created with it
    /// ([`check_jetstream_subject`]).
    pub subject: String,
    /// Replicas of the stream (default 3; [`JS_REPLICAS_RANGE`]).
    pub replicas: usize,
    /// The durable pull consumer relays read through (default
    /// `spillway-<route name>`). Relays sharing it compete for batches
    /// ([`check_jetstream_name`]).
    pub consumer: String,
    pub auth: JetStreamAuth,
    /// CA bundle to trust for `tls://` servers (PEM); `None`: the system's.
    pub tls_ca: Option<PathBuf>,
    /// A client certificate and key (PEM) for servers that ask for one
    /// (both or neither).
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Most bytes of messages in one JetStream message (a batch; default
    /// 256 KiB; [`JS_BATCH_BYTES_RANGE`]). A message larger than this
    /// travels alone.
    pub batch_bytes: u64,
    /// Batches published and not yet acknowledged by the cluster
    /// (default 8; [`JS_MAX_INFLIGHT_RANGE`]).
    pub max_inflight: usize,
    /// The durable consumer's AckWait (default 30 s): a batch held this
    /// long without an ack or progress by a relay that died is delivered
    /// again. At least 1 s.
    pub ack_wait: Duration,
    /// Batches a relay holds from the stream at once (the durable's
    /// MaxAckPending; default 64; [`JS_MAX_PENDING_RANGE`]).
    pub max_pending: usize,
    /// The stream's duplicate window (default 30 min): a batch published
    /// again within it (a retry, a restart) is stored once. At least 1 s.
    pub duplicate_window: Duration,
    /// Batches are queued for consumers in stream order (default true): a
    /// batch delivered again (held by a relay that died, lost with a
    /// connection) goes before newer ones. Relays sharing the durable hear
    /// each other and then stop waiting; `false` where they cannot (the
    /// presence subject not permitted).
    pub ordered: bool,
    /// Strict FIFO with failover (`pinned = true`): the durable consumer
    /// is made with JetStream's pinned-client priority policy, so one
    /// reading relay at a time receives batches and the others wait on
    /// standby. `Some(ttl)`: how long the pinned relay may go without a
    /// pull request before the server pins another
    /// ([`JS_PINNED_TTL_RANGE`]; default 30 s). Needs `ordered`.
    pub pinned: Option<Duration>,
    /// Consumer groups of the stream (`groups`): each a durable consumer
    /// named `<consumer>-<group>`, each getting every batch. With groups
    /// the stream keeps a batch until every group acknowledged it
    /// (Interest retention); without, one durable, `consumer`, and an
    /// acknowledged batch leaves (WorkQueue). Every relay of the route
    /// lists the same groups and makes the missing durables at start.
    pub groups: Vec<String>,
    /// The group this relay reads (`group`; default the first of
    /// `groups`). Relays of one group compete; of different groups, each
    /// gets every batch.
    pub group: Option<String>,
}

/// How the relay authenticates to the cluster: at most one method (the
/// config file refuses two; a URL may not carry a user either).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum JetStreamAuth {
    #[default]
    None,
    /// A `.creds` file (JWT and NKey seed).
    Credentials(PathBuf),
    UserPassword(String, String),
    Token(String),
}

impl JetStream {
    /// The defaults for route `route` with `servers` and `stream`.
    pub fn new(route: &str, servers: Vec<String>, stream: impl Into<String>) -> Self {
        JetStream {
            servers,
            stream: stream.into(),
            subject: format!("spillway.{route}"),
            replicas: defaults::JS_REPLICAS,
            consumer: format!("spillway-{route}"),
            auth: JetStreamAuth::None,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            batch_bytes: defaults::JS_BATCH_BYTES,
            max_inflight: defaults::JS_MAX_INFLIGHT,
            ack_wait: defaults::JS_ACK_WAIT,
            max_pending: defaults::JS_MAX_PENDING,
            duplicate_window: defaults::JS_DUPLICATE_WINDOW,
            ordered: true,
            pinned: None,
            groups: Vec::new(),
            group: None,
        }
    }

    /// The group this relay reads: `group`, or the first of `groups`
    /// (`None` without groups).
    pub fn read_group(&self) -> Option<&str> {
        self.group
            .as_deref()
            .or(self.groups.first().map(String::as_str))
    }

    /// The durable consumer this relay reads: `consumer`, or with groups
    /// its group's.
    pub fn durable(&self) -> String {
        match self.read_group() {
            None => self.consumer.clone(),
            Some(g) => format!("{}-{g}", self.consumer),
        }
    }

    /// Every durable consumer of the stream: `consumer`, or one per group.
    pub fn durables(&self) -> Vec<String> {
        if self.groups.is_empty() {
            vec![self.consumer.clone()]
        } else {
            self.groups
                .iter()
                .map(|g| format!("{}-{g}", self.consumer))
                .collect()
        }
    }
}

// The checks of `[route.jetstream]`, shared by both front ends: the
// config file applies each at its key (`file:line:col`), the command line
// at its flag; `key` names the one or the other in the message.

/// A NATS server's default `max_payload`: the most one JetStream message
/// holds, headers included.
pub const JS_MAX_PAYLOAD: u64 = 1 << 20;
/// `batch_bytes`: at least 4 KiB; at most [`JS_MAX_PAYLOAD`] less 4 KiB of
/// headers.
pub const JS_BATCH_BYTES_RANGE: RangeInclusive<u64> = (4 << 10)..=JS_MAX_PAYLOAD - (4 << 10);
/// The largest `max_message` of a jetstream route (and its default): a
/// message larger than `batch_bytes` travels alone in one JetStream
/// message, so it must fit [`JS_MAX_PAYLOAD`] with room for headers.
pub const JS_MAX_MESSAGE: u64 = JS_MAX_PAYLOAD - (8 << 10);
/// `replicas`: JetStream's own bounds.
pub const JS_REPLICAS_RANGE: RangeInclusive<u64> = 1..=5;
pub const JS_MAX_INFLIGHT_RANGE: RangeInclusive<u64> = 1..=1024;
pub const JS_MAX_PENDING_RANGE: RangeInclusive<u64> = 1..=10_000;
/// `ack_wait` and `duplicate_window`: JetStream counts them in seconds.
pub const JS_MIN_WAIT: Duration = Duration::from_secs(1);
/// `pinned_ttl`: the pinned relay renews its pull well within it (a pull
/// request waits at most a third of it, and the client library may take
/// 5 s more to renew a lost one).
pub const JS_PINNED_TTL_RANGE: RangeInclusive<Duration> =
    Duration::from_secs(12)..=Duration::from_secs(3600);

/// One entry of `servers`: `nats://` or `tls://`, then
/// `HOST:PORT` and no path. A user or password
/// in the URL is refused, not echoed: auth has its own keys, one method.
pub fn check_jetstream_server(key: &str, url: &str) -> Result<(), String> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(format!(
            "{key} '{url}' is not a NATS URL: expected nats://HOST:PORT (or tls://HOST:PORT)"
        ));
    };
    match scheme {
        "nats" | "tls" => {}
        "ws" | "wss" => {
            return Err(format!(
                "{key} '{url}': WebSocket ({scheme}://) is not supported; use nats:// or tls://"
            ))
        }
        other => {
            return Err(format!(
                "{key} '{url}': scheme '{other}://' is not one of nats://, tls://"
            ))
        }
    }
    let (authority, path) = rest.split_at(rest.find(['/', '?', '#']).unwrap_or(rest.len()));
    if authority.contains('@') {
        return Err(format!(
            "{key} has a user or password in its URL: use credentials, user and password, or token instead"
        ));
    }
    crate::endpoint::check_host_port(authority)
        .map_err(|m| format!("{key} '{url}' needs HOST:PORT after {scheme}://: {m}"))?;
    if !path.is_empty() && path != "/" {
        return Err(format!(
            "{key} '{url}': a {scheme}:// URL is {scheme}://HOST:PORT, with no path"
        ));
    }
    // What the client will parse when it connects: catch the rest (a
    // space in the host, a bad IPv6 literal) here rather than at start.
    url.parse::<async_nats::ServerAddr>()
        .map_err(|e| format!("{key} '{url}' is not a valid NATS URL: {e}"))?;
    Ok(())
}

/// A stream or consumer name. JetStream names become subjects and file
/// names on the servers: no spaces, `.`, `*`, `>` or path separators.
pub fn check_jetstream_name(key: &str, name: &str) -> Result<(), String> {
    let valid = (1..=255).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !valid {
        return Err(format!(
            "{key} '{name}' is not a valid JetStream name: 1 to 255 letters, digits, '_' and '-' (no spaces, '.', '*', '>' or path separators)"
        ));
    }
    Ok(())
}

/// The subject the route publishes to: tokens separated by `.`, none
/// empty, no whitespace, and no wildcard (one publishes to one subject).
pub fn check_jetstream_subject(key: &str, subject: &str) -> Result<(), String> {
    let why = if subject.split('.').any(str::is_empty) {
        "a token is empty (tokens are separated by single '.', like spillway.events)"
    } else if subject.chars().any(|c| c.is_whitespace() || c.is_control()) {
        "it contains whitespace or a control character"
    } else if subject.contains(['*', '>']) {
        "it contains a wildcard ('*' or '>'): the route publishes to one subject"
    } else {
        return Ok(());
    };
    Err(format!("{key} '{subject}' is not a valid subject: {why}"))
}

/// `replicas`, `max_inflight`, `max_pending`: a count within `range`.
pub fn check_jetstream_count(
    key: &str,
    v: u64,
    range: RangeInclusive<u64>,
) -> Result<usize, String> {
    if !range.contains(&v) {
        return Err(format!(
            "{key} must be between {} and {}",
            range.start(),
            range.end()
        ));
    }
    // Within a range whose end fits usize on every target (at most 10,000).
    Ok(usize::try_from(v).unwrap_or(usize::MAX))
}

pub fn check_jetstream_batch_bytes(key: &str, v: u64) -> Result<(), String> {
    if !JS_BATCH_BYTES_RANGE.contains(&v) {
        return Err(format!(
            "{key} must be between {} and {}: a batch and its headers fit one JetStream message (the server's max payload, {} by default)",
            ByteSize(*JS_BATCH_BYTES_RANGE.start()),
            ByteSize(*JS_BATCH_BYTES_RANGE.end()),
            ByteSize(JS_MAX_PAYLOAD),
        ));
    }
    Ok(())
}

/// `ack_wait`, `duplicate_window`.
pub fn check_jetstream_wait(key: &str, d: Duration) -> Result<(), String> {
    if d < JS_MIN_WAIT {
        return Err(format!("{key} must be at least 1s"));
    }
    Ok(())
}

/// `pinned_ttl` ([`JS_PINNED_TTL_RANGE`]).
pub fn check_jetstream_pinned_ttl(key: &str, d: Duration) -> Result<(), String> {
    if !JS_PINNED_TTL_RANGE.contains(&d) {
        return Err(format!(
            "{key} must be between {}s and {}s (the pinned relay renews its pull well within it)",
            JS_PINNED_TTL_RANGE.start().as_secs(),
            JS_PINNED_TTL_RANGE.end().as_secs()
        ));
    }
    Ok(())
}

/// `max_message` of a jetstream route.
pub fn check_jetstream_max_message(key: &str, v: u64) -> Result<(), String> {
    if v > JS_MAX_MESSAGE {
        return Err(format!(
            "{key} must be at most {} on a jetstream route: a message must fit one JetStream message (the server's max payload, {} by default)",
            ByteSize(JS_MAX_MESSAGE),
            ByteSize(JS_MAX_PAYLOAD),
        ));
    }
    Ok(())
}

/// A jetstream route's groups are the stream's durable consumers.
pub const JS_NO_GROUPS: &str =
    "groups on a jetstream route are the stream's consumer groups: set groups (and group) in [route.jetstream]";

/// The most groups of a jetstream route (as of a local one).
pub const JS_MAX_GROUPS: usize = 64;

/// `groups` of `[route.jetstream]`: valid names (the durable's name is
/// `<consumer>-<group>`), none twice, at most [`JS_MAX_GROUPS`].
pub fn check_jetstream_groups(key: &str, consumer: &str, groups: &[String]) -> Result<(), String> {
    if groups.len() > JS_MAX_GROUPS {
        return Err(format!("{key}: at most {JS_MAX_GROUPS} groups"));
    }
    for (i, g) in groups.iter().enumerate() {
        check_jetstream_name(&format!("{key}[{i}]"), g)?;
        // Ack-protocol consumers name it in their hello.
        if !spillway_codec::proto::is_valid_name(g.as_bytes()) {
            return Err(format!(
                "{key}[{i}] '{g}' is too long: a group name is 1 to 64 bytes (consumers name it in their hello)"
            ));
        }
        check_jetstream_name(&format!("{key}[{i}]"), &format!("{consumer}-{g}"))?;
        if groups[..i].contains(g) {
            return Err(format!("{key}: '{g}' is listed twice"));
        }
    }
    Ok(())
}

/// `group` of `[route.jetstream]`: one of `groups`.
pub fn check_jetstream_group(key: &str, group: &str, groups: &[String]) -> Result<(), String> {
    if groups.is_empty() {
        return Err(format!(
            "{key} '{group}' needs groups (the stream's groups, every relay the same)"
        ));
    }
    if !groups.iter().any(|g| g == group) {
        return Err(format!("{key} '{group}' is not one of groups {groups:?}"));
    }
    Ok(())
}

/// Every check of a [`JetStream`], with the config file's key names (each
/// front end has checked its own keys or flags first, at their position).
pub fn validate_jetstream(js: &JetStream) -> Result<(), String> {
    if js.servers.is_empty() {
        return Err("servers must list at least one NATS server".into());
    }
    for (i, s) in js.servers.iter().enumerate() {
        check_jetstream_server(&format!("servers[{i}]"), s)?;
    }
    check_jetstream_name("stream", &js.stream)?;
    check_jetstream_name("consumer", &js.consumer)?;
    check_jetstream_subject("subject", &js.subject)?;
    for (key, v, range) in [
        ("replicas", js.replicas, JS_REPLICAS_RANGE),
        ("max_inflight", js.max_inflight, JS_MAX_INFLIGHT_RANGE),
        ("max_pending", js.max_pending, JS_MAX_PENDING_RANGE),
    ] {
        check_jetstream_count(key, u64::try_from(v).unwrap_or(u64::MAX), range)?;
    }
    check_jetstream_batch_bytes("batch_bytes", js.batch_bytes)?;
    check_jetstream_wait("ack_wait", js.ack_wait)?;
    check_jetstream_wait("duplicate_window", js.duplicate_window)?;
    check_jetstream_groups("groups", &js.consumer, &js.groups)?;
    if let Some(g) = &js.group {
        check_jetstream_group("group", g, &js.groups)?;
    }
    if let Some(ttl) = js.pinned {
        check_jetstream_pinned_ttl("pinned_ttl", ttl)?;
        if !js.ordered {
            return Err(
                "pinned = true delivers in stream order from one relay at a time; it cannot be combined with ordered = false"
                    .into(),
            );
        }
    }
    if js.tls_cert.is_some() != js.tls_key.is_some() {
        return Err("tls_cert and tls_key come together (a client certificate and its key)".into());
    }
    Ok(())
}

impl QueueRoute {
    pub fn new(
        name: impl Into<String>,
        from: Endpoint,
        to: Endpoint,
        spool: impl Into<PathBuf>,
    ) -> Self {
        QueueRoute {
            name: name.into(),
            from,
            to,
            spool: spool.into(),
            framing: defaults::FRAMING,
            max_message: defaults::MAX_MESSAGE,
            memory: defaults::QUEUE_MEMORY,
            max_disk: defaults::MAX_DISK,
            when_full: defaults::WHEN_FULL,
            fsync: defaults::FSYNC,
            segment_size: defaults::SEGMENT_SIZE,
            redeliver_on_reset: defaults::REDELIVER_ON_RESET,
            from_protocol: Protocol::Plain,
            to_protocol: Protocol::Plain,
            ack_timeout: defaults::ACK_TIMEOUT,
            max_deliveries: defaults::MAX_DELIVERIES,
            producer_memory: defaults::PRODUCER_MEMORY,
            groups: Vec::new(),
            connect_timeout: defaults::CONNECT_TIMEOUT,
            timeouts: Timeouts::default(),
            read_idle_timeout: Some(defaults::READ_IDLE_TIMEOUT),
            min_rate: defaults::MIN_RATE,
            min_rate_grace: defaults::MIN_RATE_GRACE,
            max_connections: defaults::QUEUE_MAX_CONNECTIONS,
            from_tls: None,
            to_tls: None,
            backoff: BackoffConfig::default(),
            max_connections_per_ip: None,
            per_ip_ipv6_prefix: spillway_net::limit::DEFAULT_IPV6_PREFIX,
            jetstream: None,
        }
    }
}

/// What the peers of one side of a queue route speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    /// Bytes in the route's framing; TCP is the only acknowledgement.
    #[default]
    Plain,
    /// The ack protocol of `docs/protocol.md`.
    Ack,
}

impl std::str::FromStr for Protocol {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "plain" => Ok(Protocol::Plain),
            "ack" => Ok(Protocol::Ack),
            other => Err(format!("invalid protocol '{other}': expected plain or ack")),
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Protocol::Plain => "plain",
            Protocol::Ack => "ack",
        })
    }
}

/// `always`, `never` or a duration between fsyncs.
pub fn parse_fsync(s: &str) -> Result<Durability, String> {
    match s {
        "always" => Ok(Durability::Always),
        "never" => Ok(Durability::Never),
        other => match parse_duration(other) {
            Ok(d) if !d.is_zero() => Ok(Durability::Interval(d)),
            Ok(_) => Err("fsync interval must be greater than zero (or use always)".into()),
            Err(_) => Err(format!(
                "invalid fsync '{other}': expected always, never or a duration like 100ms"
            )),
        },
    }
}

/// The `fsync` setting as written: [`parse_fsync`] reads it, `Display`
/// writes it back (the command line shows its default this way).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fsync(pub Durability);

impl std::str::FromStr for Fsync {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        parse_fsync(s).map(Fsync)
    }
}

impl fmt::Display for Fsync {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Durability::Always => f.write_str("always"),
            Durability::Never => f.write_str("never"),
            Durability::Interval(d) => HumanDuration(d).fmt(f),
        }
    }
}

pub fn parse_when_full(s: &str) -> Result<WhenFull, String> {
    match s {
        "block" => Ok(WhenFull::Block),
        "drop-oldest" => Ok(WhenFull::DropOldest),
        "drop-newest" => Ok(WhenFull::DropNewest),
        other => Err(format!(
            "invalid when_full '{other}': expected block, drop-oldest or drop-newest"
        )),
    }
}

/// The word [`parse_when_full`] reads as `w`.
pub const fn when_full_name(w: WhenFull) -> &'static str {
    match w {
        WhenFull::Block => "block",
        WhenFull::DropOldest => "drop-oldest",
        WhenFull::DropNewest => "drop-newest",
    }
}

/// Checks the parts of a queue route that do not depend on the syntax.
pub fn validate_queue(r: &QueueRoute) -> Result<(), String> {
    if r.connect_timeout.is_zero() {
        return Err("connect_timeout must be greater than zero".into());
    }
    if r.max_message == 0 || r.max_message > u64::from(spillway_spool::MAX_MESSAGE_LIMIT) {
        return Err(format!(
            "max_message must be between 1 and {} bytes",
            spillway_spool::MAX_MESSAGE_LIMIT
        ));
    }
    if r.max_disk != 0 && r.max_disk < r.max_message * 4 {
        return Err("max_disk must be 0 (unbounded) or at least 4 x max_message".into());
    }
    if r.segment_size < 4096 {
        return Err("segment_size must be at least 4KiB".into());
    }
    if r.ack_timeout.is_zero() {
        return Err("ack_timeout must be greater than zero".into());
    }
    if !(1..=1000).contains(&r.max_deliveries) {
        return Err("max_deliveries must be between 1 and 1000".into());
    }
    if r.from_protocol == Protocol::Ack && r.memory != 0 {
        return Err(
            "from_protocol = \"ack\" needs memory = 0: a confirm means the message is on disk, and the memory tier is not".into(),
        );
    }
    if r.from_protocol == Protocol::Ack && !matches!(r.from, Endpoint::Listen(_)) {
        return Err(
            "from_protocol = \"ack\" needs a listen: endpoint (producers connect and say hello)"
                .into(),
        );
    }
    if let Some(js) = &r.jetstream {
        validate_jetstream(js)?;
        check_jetstream_max_message("max_message", r.max_message)?;
        if !r.groups.is_empty() {
            return Err(JS_NO_GROUPS.into());
        }
    }
    if !r.groups.is_empty() && r.to_protocol != Protocol::Ack {
        return Err(
            "groups need to_protocol = \"ack\" (a consumer names its group in its hello)".into(),
        );
    }
    if r.groups.len() > 64 {
        return Err(format!(
            "{} groups: at most 64 (each has its own reader thread and floor)",
            r.groups.len()
        ));
    }
    for (i, g) in r.groups.iter().enumerate() {
        if !spillway_codec::proto::is_valid_name(g.as_bytes()) {
            return Err(format!(
                "invalid group name '{g}': 1 to 64 bytes of letters, digits, '.', '_' and '-'"
            ));
        }
        if r.groups[..i].contains(g) {
            return Err(format!("group '{g}' is declared twice"));
        }
    }
    if r.to_protocol == Protocol::Ack && !matches!(r.to, Endpoint::Listen(_)) {
        return Err(
            "to_protocol = \"ack\" needs a listen: endpoint (consumers connect and say hello)"
                .into(),
        );
    }
    Ok(())
}

/// The range checks of a stream route, shared by both front ends (the
/// config file reports them at the key with `file:line:col` first; the
/// command line builds a route directly and relies on this).
pub fn validate_stream(r: &StreamRoute) -> Result<(), String> {
    if r.connect_tries == 0 {
        return Err("connect_tries must be at least 1".into());
    }
    if r.max_connections == 0 {
        return Err("max_connections must be at least 1".into());
    }
    for (key, v) in [("buffer", r.buffer), ("pipe_size", r.pipe_size)] {
        check_buffer_size(key, v as u64)?;
    }
    for (key, d) in [
        ("connect_timeout", r.connect_timeout),
        ("idle_timeout", r.idle_timeout),
        ("half_close_timeout", r.half_close_timeout),
    ] {
        if d.is_zero() {
            return Err(format!("{key} must be greater than zero"));
        }
    }
    Ok(())
}

/// The range of a stream route's `buffer` and `pipe_size`.
pub(super) fn check_buffer_size(key: &str, bytes: u64) -> Result<(), String> {
    if !(4096..=(64 << 20)).contains(&bytes) {
        return Err(format!("{key} must be between 4KiB and 64MiB"));
    }
    Ok(())
}

/// A transparent L4 proxy route.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamRoute {
    pub name: String,
    pub listen: String,
    pub upstreams: Vec<String>,
    pub balance: Balance,
    pub connect_timeout: Duration,
    /// How many distinct upstreams one client connection may try.
    pub connect_tries: u32,
    /// Close a connection after this long with no byte moving either way.
    pub idle_timeout: Duration,
    /// Once one direction has ended, how long the other may still run.
    pub half_close_timeout: Duration,
    pub max_connections: usize,
    /// Per-direction user-space buffer (spill mode, and the copy fallback).
    pub buffer: usize,
    /// Per-direction kernel pipe in splice mode (the default mode).
    pub pipe_size: usize,
    pub spill: Option<Spill>,
    pub timeouts: Timeouts,
    /// Terminate TLS from clients (`[route.tls]`).
    pub tls: Option<ServerTlsConfig>,
    /// Originate TLS to the upstreams (`[route.upstream_tls]`).
    pub upstream_tls: Option<ClientTlsConfig>,
    /// Active health checks of the upstreams (None: off).
    pub health_check: Option<HealthCheckConfig>,
    /// Passive ejection of upstreams whose connects keep failing.
    pub outlier: OutlierConfig,
    /// Per-upstream bounds on connections and connects in progress.
    pub circuit_breaker: BreakerConfig,
    /// Bound on connections per client address.
    pub max_connections_per_ip: Option<usize>,
    /// IPv6 clients are counted by this many leading bits.
    pub per_ip_ipv6_prefix: u8,
}

impl StreamRoute {
    /// A route with every knob at its default.
    pub fn new(name: impl Into<String>, listen: impl Into<String>, upstreams: Vec<String>) -> Self {
        StreamRoute {
            name: name.into(),
            listen: listen.into(),
            upstreams,
            balance: defaults::BALANCE,
            connect_timeout: defaults::CONNECT_TIMEOUT,
            connect_tries: defaults::CONNECT_TRIES,
            idle_timeout: defaults::IDLE_TIMEOUT,
            half_close_timeout: defaults::HALF_CLOSE_TIMEOUT,
            max_connections: defaults::MAX_CONNECTIONS,
            buffer: defaults::BUFFER as usize,
            pipe_size: defaults::PIPE_SIZE as usize,
            spill: None,
            timeouts: Timeouts::default(),
            tls: None,
            upstream_tls: None,
            health_check: None,
            outlier: OutlierConfig::default(),
            circuit_breaker: BreakerConfig::default(),
            max_connections_per_ip: None,
            per_ip_ipv6_prefix: spillway_net::limit::DEFAULT_IPV6_PREFIX,
        }
    }
}

/// Stream-mode overflow to per-connection temporary files.
#[derive(Debug, Clone, PartialEq)]
pub struct Spill {
    pub dir: PathBuf,
    pub max_per_connection: u64,
}
