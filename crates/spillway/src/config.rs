//! The config file: TOML deserialized into raw structs (every key known,
//! every value spanned), then converted into validated domain types. Every
//! error names `file:line:col`.
//!
//! ```toml
//! [global]
//! max_spill_total = "4GiB"
//!
//! [[route]]
//! name = "web"
//! mode = "stream"
//! listen = "127.0.0.1:7000"
//! upstreams = ["127.0.0.1:8000", "127.0.0.1:8001"]
//! ```

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use spillway_net::backoff::BackoffConfig;
use spillway_net::balance::Balance;
use spillway_net::breaker::BreakerConfig;
use spillway_net::dial::{Keepalive, SocketOptions};
use spillway_net::health::{CheckKind, HealthCheckConfig};
use spillway_net::outlier::OutlierConfig;
use spillway_net::tls::{ClientTlsConfig, ServerTlsConfig, SpkiPin};
use toml::Spanned;

use crate::endpoint::Endpoint;
use crate::units::{parse_duration, ByteSize, HumanDuration};
use spillway_codec::Framing;
use spillway_spool::{Durability, WhenFull};

/// A config error with its position in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: PathBuf,
    pub line: usize,
    pub col: usize,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.path.display(),
            self.line,
            self.col,
            self.message
        )
    }
}

impl std::error::Error for ConfigError {}

/// Defaults shared by the CLI and the config file, in one place.
pub mod defaults {
    use std::time::Duration;
    pub const BUFFER: u64 = 64 << 10;
    /// Kernel pipe per direction in splice mode. Pages are used only while
    /// bytes are in flight; measured here, 1 MiB moves 0.75 of direct
    /// loopback throughput against 0.57 for 64 KiB (fewer, larger splices).
    pub const PIPE_SIZE: u64 = 1 << 20;
    pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
    pub const CONNECT_TRIES: u32 = 3;
    pub const IDLE_TIMEOUT: Duration = Duration::from_secs(600);
    pub const HALF_CLOSE_TIMEOUT: Duration = Duration::from_secs(60);
    pub const MAX_CONNECTIONS: usize = 10_000;
    pub const MAX_SPILL_PER_CONNECTION: u64 = 1 << 30;
    pub const MAX_SPILL_TOTAL: u64 = 8 << 30;
    pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
    pub const QUEUE_MEMORY: u64 = 64 << 20;
    pub const MAX_MESSAGE: u64 = 1 << 20;
    pub const SEGMENT_SIZE: u64 = 64 << 20;
    /// Bytes of recently delivered messages re-sent to the next consumer
    /// after a consumer resets (they may have been sitting unread in its
    /// receive buffer): duplicates instead of loss.
    pub const REDELIVER_ON_RESET: u64 = 256 << 10;
    pub const FSYNC_INTERVAL: Duration = Duration::from_millis(100);
    /// Keepalive: an idle peer that vanished is detected in about
    /// idle + interval * count (or at `TCP_USER_TIMEOUT`, whichever the
    /// kernel reaches first once probes go unanswered).
    pub const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
    pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
    pub const KEEPALIVE_COUNT: u32 = 3;
    /// Longer than the write-stall timeout, so a peer that stops reading
    /// is reported as a write stall (the kernel applies the user timeout to
    /// a zero window too); a peer that stops acknowledging is cut here.
    pub const TCP_USER_TIMEOUT: Duration = Duration::from_secs(90);
    pub const WRITE_STALL_TIMEOUT: Duration = Duration::from_secs(60);
    /// Queue producers: connected and silent this long means closed.
    pub const READ_IDLE_TIMEOUT: Duration = Duration::from_secs(600);
    /// Connections on a queue route's listeners, producers and consumers
    /// together.
    pub const QUEUE_MAX_CONNECTIONS: usize = 1024;
    /// What peers may make the relay hold, all queue routes together:
    /// producers' read buffers and partial messages, consumers' windows.
    pub const PEER_MEMORY: u64 = 64 << 20;
    /// A producer holding a partial message must send at least this many
    /// bytes per second on average (after [`MIN_RATE_GRACE`]).
    pub const MIN_RATE: u64 = 1 << 10;
    pub const MIN_RATE_GRACE: Duration = Duration::from_secs(10);
}

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
                keepalive: Some(Keepalive {
                    idle: defaults::KEEPALIVE_IDLE,
                    interval: defaults::KEEPALIVE_INTERVAL,
                    count: defaults::KEEPALIVE_COUNT,
                }),
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
}

/// TLS at one end of a queue route: which kind follows from the endpoint.
#[derive(Debug, Clone, PartialEq)]
pub enum EndpointTls {
    /// On a `listen:` endpoint: spillway is the TLS server.
    Server(ServerTlsConfig),
    /// On a `connect:` endpoint: spillway is the TLS client.
    Client(ClientTlsConfig),
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
            framing: Framing::Lines,
            max_message: defaults::MAX_MESSAGE,
            memory: defaults::QUEUE_MEMORY,
            max_disk: 0,
            when_full: WhenFull::Block,
            fsync: Durability::Interval(defaults::FSYNC_INTERVAL),
            segment_size: defaults::SEGMENT_SIZE,
            redeliver_on_reset: defaults::REDELIVER_ON_RESET,
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
        }
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
        if !(4096..=(64 << 20)).contains(&v) {
            return Err(format!("{key} must be between 4KiB and 64MiB"));
        }
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
            balance: Balance::RoundRobin,
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

// ---------------------------------------------------------------- raw ---

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    global: Option<RawGlobal>,
    #[serde(default)]
    admin: Option<RawAdmin>,
    #[serde(default)]
    route: Vec<Spanned<RawRoute>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGlobal {
    max_spill_total: Option<ByteSize>,
    drain_timeout: Option<HumanDuration>,
    max_connections: S<u64>,
    peer_memory: S<ByteSize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    listen: String,
    token_file: Option<String>,
}

type S<T> = Option<Spanned<T>>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    name: S<String>,
    mode: S<String>,
    // stream
    listen: S<String>,
    upstreams: S<Vec<String>>,
    balance: S<String>,
    connect_timeout: S<HumanDuration>,
    connect_tries: S<u32>,
    idle_timeout: S<HumanDuration>,
    half_close_timeout: S<HumanDuration>,
    max_connections: S<u64>,
    buffer: S<ByteSize>,
    pipe_size: S<ByteSize>,
    spill_dir: S<String>,
    max_spill: S<ByteSize>,
    // queue
    from: S<String>,
    to: S<String>,
    spool: S<String>,
    framing: S<String>,
    max_message: S<ByteSize>,
    memory: S<ByteSize>,
    max_disk: S<ByteSize>,
    when_full: S<String>,
    fsync: S<String>,
    segment_size: S<ByteSize>,
    redeliver_on_reset: S<ByteSize>,
    read_idle_timeout: S<HumanDuration>,
    min_rate: S<ByteSize>,
    min_rate_grace: S<HumanDuration>,
    // both
    tcp_keepalive: S<bool>,
    tcp_keepalive_idle: S<HumanDuration>,
    tcp_keepalive_interval: S<HumanDuration>,
    tcp_keepalive_count: S<u32>,
    tcp_user_timeout: S<HumanDuration>,
    write_stall_timeout: S<HumanDuration>,
    max_lifetime: S<HumanDuration>,
    backoff: S<RawBackoff>,
    // both (listeners)
    max_connections_per_ip: S<u64>,
    per_ip_ipv6_prefix: S<u64>,
    // stream: upstream health
    health_check: S<RawHealthCheck>,
    outlier: S<RawOutlier>,
    circuit_breaker: S<RawBreaker>,
    // TLS: stream routes
    tls: S<RawTls>,
    upstream_tls: S<RawTls>,
    // TLS: queue routes
    from_tls: S<RawTls>,
    to_tls: S<RawTls>,
}

/// One TLS table. Which keys are allowed depends on whether spillway is
/// the server (`cert`, `key`, `client_ca`) or the client (`ca`,
/// `server_name`, `pin_sha256`, `cert`, `key`, `insecure_skip_verify`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: S<String>,
    key: S<String>,
    client_ca: S<String>,
    ca: S<String>,
    server_name: S<String>,
    pin_sha256: S<Vec<String>>,
    insecure_skip_verify: S<bool>,
    handshake_timeout: S<HumanDuration>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealthCheck {
    kind: S<String>,
    interval: S<HumanDuration>,
    timeout: S<HumanDuration>,
    rise: S<u32>,
    fall: S<u32>,
    jitter: S<HumanDuration>,
    send: S<String>,
    expect: S<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOutlier {
    consecutive_failures: S<u32>,
    base_ejection_time: S<HumanDuration>,
    max_ejection_time: S<HumanDuration>,
    max_ejection_percent: S<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBreaker {
    max_connections: S<u64>,
    max_pending: S<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackoff {
    base: S<HumanDuration>,
    factor: S<f64>,
    cap: S<HumanDuration>,
    max_attempts: S<u32>,
    reset_after: S<HumanDuration>,
}

// ----------------------------------------------------------- convert ---

struct Source<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Source<'_> {
    fn error(&self, span: Range<usize>, message: impl Into<String>) -> ConfigError {
        let (line, col) = line_col(self.text, span.start);
        ConfigError {
            path: self.path.to_path_buf(),
            line,
            col,
            message: message.into(),
        }
    }
}

/// 1-based line and column (in characters) of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let col = before
        .get(line_start..)
        .map(|l| l.chars().count())
        .unwrap_or(0)
        + 1;
    (line, col)
}

/// Reads and validates a config file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        path: path.to_path_buf(),
        line: 0,
        col: 0,
        message: format!("cannot read config: {e}"),
    })?;
    parse(path, &text)
}

/// Validates config text; `path` is only used in messages.
pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
    let src = Source { path, text };
    let raw: RawConfig = toml::from_str(text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        src.error(span, e.message().trim().to_string())
    })?;
    let mut global = Global::default();
    if let Some(g) = raw.global {
        if let Some(v) = g.max_spill_total {
            global.max_spill_total = v.bytes();
        }
        if let Some(v) = g.drain_timeout {
            global.drain_timeout = v.0;
        }
        if let Some(v) = g.max_connections {
            global.max_connections = Some(at_least_one(&src, &v, "max_connections")?);
        }
        if let Some(v) = g.peer_memory {
            global.peer_memory = v.get_ref().bytes();
            if global.peer_memory < (1 << 20) {
                return Err(src.error(v.span(), "peer_memory must be at least 1MiB"));
            }
        }
    }
    if let Some(a) = raw.admin {
        global.admin = Some(a.listen);
        global.admin_token_file = a.token_file.map(PathBuf::from);
    }

    let mut routes: Vec<Route> = Vec::new();
    for spanned in raw.route {
        let span = spanned.span();
        let r = spanned.into_inner();
        let name = required(&src, &span, r.name.clone(), "name")?;
        if name.get_ref().is_empty() {
            return Err(src.error(name.span(), "route name must not be empty"));
        }
        if routes.iter().any(|x| x.name() == name.get_ref()) {
            return Err(src.error(
                name.span(),
                format!("duplicate route name '{}'", name.get_ref()),
            ));
        }
        let mode = required(&src, &span, r.mode.clone(), "mode")?;
        let route = match mode.get_ref().as_str() {
            "stream" => Route::Stream(stream_route(&src, &span, name.into_inner(), r)?),
            "queue" => Route::Queue(queue_route(
                &src,
                &span,
                name.into_inner(),
                r,
                global.peer_memory,
            )?),
            other => {
                return Err(src.error(
                    mode.span(),
                    format!("unknown mode '{other}': expected \"stream\" or \"queue\""),
                ))
            }
        };
        routes.push(route);
    }
    if routes.is_empty() {
        return Err(src.error(0..0, "no routes: add at least one [[route]] table"));
    }
    Ok(Config { global, routes })
}

fn required<T>(
    src: &Source<'_>,
    table: &Range<usize>,
    v: S<T>,
    key: &str,
) -> Result<Spanned<T>, ConfigError> {
    v.ok_or_else(|| {
        src.error(
            table.clone(),
            format!("route is missing required key '{key}'"),
        )
    })
}

fn host_port(src: &Source<'_>, v: &Spanned<String>, what: &str) -> Result<String, ConfigError> {
    check_host_port(v.get_ref())
        .map(|()| v.get_ref().clone())
        .map_err(|m| src.error(v.span(), format!("invalid {what}: {m}")))
}

/// `HOST:PORT` with a numeric port; IPv6 hosts in brackets.
pub fn check_host_port(s: &str) -> Result<(), String> {
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("'{s}' is not HOST:PORT"))?;
    if host.is_empty() {
        return Err(format!("'{s}' has no host"));
    }
    port.parse::<u16>()
        .map_err(|_| format!("'{s}' has an invalid port '{port}'"))?;
    Ok(())
}

/// A key that belongs to the other mode is an error, not silently ignored.
fn reject<T>(src: &Source<'_>, v: &S<T>, key: &str, mode: &str) -> Result<(), ConfigError> {
    match v {
        Some(v) => Err(src.error(
            v.span(),
            format!("key '{key}' is not valid in a {mode} route"),
        )),
        None => Ok(()),
    }
}

fn queue_route(
    src: &Source<'_>,
    table: &Range<usize>,
    name: String,
    r: RawRoute,
    peer_memory: u64,
) -> Result<QueueRoute, ConfigError> {
    reject(src, &r.listen, "listen", "queue")?;
    reject(src, &r.upstreams, "upstreams", "queue")?;
    reject(src, &r.balance, "balance", "queue")?;
    reject(src, &r.connect_tries, "connect_tries", "queue")?;
    reject(src, &r.idle_timeout, "idle_timeout", "queue")?;
    reject(src, &r.half_close_timeout, "half_close_timeout", "queue")?;
    reject(src, &r.buffer, "buffer", "queue")?;
    reject(src, &r.pipe_size, "pipe_size", "queue")?;
    reject(src, &r.spill_dir, "spill_dir", "queue")?;
    reject(src, &r.max_spill, "max_spill", "queue")?;
    let timeouts = timeouts(src, &r)?;
    reject(src, &r.tls, "tls", "queue")?;
    reject(src, &r.upstream_tls, "upstream_tls", "queue")?;
    reject(src, &r.health_check, "health_check", "queue")?;
    reject(src, &r.outlier, "outlier", "queue")?;
    reject(src, &r.circuit_breaker, "circuit_breaker", "queue")?;
    let endpoint = |v: Spanned<String>| -> Result<Endpoint, ConfigError> {
        v.get_ref()
            .parse()
            .map_err(|m: String| src.error(v.span(), m))
    };
    let from = endpoint(required(src, table, r.from, "from")?)?;
    let to = endpoint(required(src, table, r.to, "to")?)?;
    let spool = required(src, table, r.spool, "spool")?;
    let mut q = QueueRoute::new(name, from, to, spool.into_inner());
    if let Some(f) = r.framing {
        q.framing = f
            .get_ref()
            .parse()
            .map_err(|e: spillway_codec::ParseFramingError| src.error(f.span(), e.to_string()))?;
    }
    if let Some(v) = &r.max_message {
        q.max_message = v.get_ref().bytes();
        if q.max_message > peer_memory {
            return Err(src.error(
                v.span(),
                format!(
                    "max_message ({} bytes) is larger than global peer_memory ({} bytes): such a message could never be read; raise peer_memory",
                    q.max_message, peer_memory
                ),
            ));
        }
    }
    if let Some(v) = &r.memory {
        q.memory = v.get_ref().bytes();
    }
    if let Some(v) = &r.max_disk {
        q.max_disk = v.get_ref().bytes();
    }
    if let Some(v) = &r.segment_size {
        q.segment_size = v.get_ref().bytes();
    }
    if let Some(v) = &r.redeliver_on_reset {
        q.redeliver_on_reset = v.get_ref().bytes();
    }
    if let Some(v) = r.when_full {
        q.when_full = parse_when_full(v.get_ref()).map_err(|m| src.error(v.span(), m))?;
    }
    if let Some(v) = r.fsync {
        q.fsync = parse_fsync(v.get_ref()).map_err(|m| src.error(v.span(), m))?;
    }
    if let Some(v) = r.connect_timeout {
        q.connect_timeout = nonzero_duration(src, &v, "connect_timeout")?;
    }
    if let Some(v) = &r.read_idle_timeout {
        q.read_idle_timeout = optional_duration(v);
    }
    if let Some(v) = &r.min_rate {
        q.min_rate = v.get_ref().bytes();
    }
    if let Some(v) = r.min_rate_grace {
        q.min_rate_grace = nonzero_duration(src, &v, "min_rate_grace")?;
    }
    if let Some(v) = r.max_connections {
        if *v.get_ref() == 0 {
            return Err(src.error(v.span(), "max_connections must be at least 1"));
        }
        q.max_connections = usize::try_from(*v.get_ref()).unwrap_or(usize::MAX);
    }
    q.timeouts = timeouts;
    if let Some(v) = &r.backoff {
        q.backoff = backoff(src, v)?;
    }
    if let Some(v) = &r.max_connections_per_ip {
        q.max_connections_per_ip = Some(at_least_one(src, v, "max_connections_per_ip")?);
    }
    if let Some(v) = &r.per_ip_ipv6_prefix {
        q.per_ip_ipv6_prefix = ipv6_prefix(src, v)?;
    }
    validate_queue(&q).map_err(|m| {
        let span = r
            .max_message
            .as_ref()
            .or(r.max_disk.as_ref())
            .or(r.segment_size.as_ref())
            .map_or(table.clone(), |v| v.span());
        src.error(span, m)
    })?;
    q.from_tls = endpoint_tls(src, r.from_tls, &q.from, "from_tls")?;
    q.to_tls = endpoint_tls(src, r.to_tls, &q.to, "to_tls")?;
    Ok(q)
}

fn stream_route(
    src: &Source<'_>,
    table: &Range<usize>,
    name: String,
    r: RawRoute,
) -> Result<StreamRoute, ConfigError> {
    reject(src, &r.from, "from", "stream")?;
    reject(src, &r.to, "to", "stream")?;
    reject(src, &r.spool, "spool", "stream")?;
    reject(src, &r.framing, "framing", "stream")?;
    reject(src, &r.max_message, "max_message", "stream")?;
    reject(src, &r.memory, "memory", "stream")?;
    reject(src, &r.max_disk, "max_disk", "stream")?;
    reject(src, &r.when_full, "when_full", "stream")?;
    reject(src, &r.fsync, "fsync", "stream")?;
    reject(src, &r.segment_size, "segment_size", "stream")?;
    reject(src, &r.redeliver_on_reset, "redeliver_on_reset", "stream")?;
    reject(src, &r.read_idle_timeout, "read_idle_timeout", "stream")?;
    let timeouts = timeouts(src, &r)?;
    reject(src, &r.from_tls, "from_tls", "stream")?;
    reject(src, &r.to_tls, "to_tls", "stream")?;
    reject(src, &r.backoff, "backoff", "stream")?;
    let listen = required(src, table, r.listen, "listen")?;
    let listen = host_port(src, &listen, "listen address")?;
    let ups = required(src, table, r.upstreams, "upstreams")?;
    if ups.get_ref().is_empty() {
        return Err(src.error(ups.span(), "a stream route needs at least one upstream"));
    }
    let mut upstreams = Vec::new();
    for u in ups.get_ref() {
        check_host_port(u).map_err(|m| src.error(ups.span(), format!("invalid upstream: {m}")))?;
        upstreams.push(u.clone());
    }
    let mut route = StreamRoute::new(name, listen, upstreams);
    route.timeouts = timeouts;
    if let Some(b) = r.balance {
        route.balance = b
            .get_ref()
            .parse()
            .map_err(|m: String| src.error(b.span(), m))?;
    }
    if let Some(v) = r.connect_timeout {
        route.connect_timeout = nonzero_duration(src, &v, "connect_timeout")?;
    }
    if let Some(v) = r.connect_tries {
        if *v.get_ref() == 0 {
            return Err(src.error(v.span(), "connect_tries must be at least 1"));
        }
        route.connect_tries = *v.get_ref();
    }
    if let Some(v) = r.idle_timeout {
        route.idle_timeout = nonzero_duration(src, &v, "idle_timeout")?;
    }
    if let Some(v) = r.half_close_timeout {
        route.half_close_timeout = nonzero_duration(src, &v, "half_close_timeout")?;
    }
    if let Some(v) = r.max_connections {
        if *v.get_ref() == 0 {
            return Err(src.error(v.span(), "max_connections must be at least 1"));
        }
        route.max_connections = usize::try_from(*v.get_ref()).unwrap_or(usize::MAX);
    }
    if let Some(v) = r.buffer {
        let b = v.get_ref().bytes();
        if !(4096..=(64 << 20)).contains(&b) {
            return Err(src.error(v.span(), "buffer must be between 4KiB and 64MiB"));
        }
        route.buffer = b as usize;
    }
    if let Some(v) = r.pipe_size {
        let b = v.get_ref().bytes();
        if !(4096..=(64 << 20)).contains(&b) {
            return Err(src.error(v.span(), "pipe_size must be between 4KiB and 64MiB"));
        }
        route.pipe_size = b as usize;
    }
    match (r.spill_dir, r.max_spill) {
        (Some(dir), max) => {
            route.spill = Some(Spill {
                dir: PathBuf::from(dir.get_ref()),
                max_per_connection: max
                    .map(|m| m.get_ref().bytes())
                    .unwrap_or(defaults::MAX_SPILL_PER_CONNECTION),
            })
        }
        (None, Some(max)) => {
            return Err(src.error(max.span(), "max_spill needs spill_dir"));
        }
        (None, None) => {}
    }
    if let Some(t) = r.tls {
        route.tls = Some(server_tls(src, t, "tls")?);
    }
    if let Some(t) = r.upstream_tls {
        route.upstream_tls = Some(client_tls(src, t, "upstream_tls")?);
    }
    if route.spill.is_some() && (route.tls.is_some() || route.upstream_tls.is_some()) {
        // TLS connections take the user-space copy path, which has no spill file.
        return Err(src.error(
            table.clone(),
            "spill_dir is not supported together with TLS (tls / upstream_tls) yet",
        ));
    }
    if let Some(v) = &r.max_connections_per_ip {
        route.max_connections_per_ip = Some(at_least_one(src, v, "max_connections_per_ip")?);
    }
    if let Some(v) = &r.per_ip_ipv6_prefix {
        route.per_ip_ipv6_prefix = ipv6_prefix(src, v)?;
    }
    if let Some(v) = &r.health_check {
        route.health_check = Some(health_check(src, v)?);
    }
    if let Some(v) = &r.outlier {
        route.outlier = outlier(src, v)?;
    }
    if let Some(v) = &r.circuit_breaker {
        route.circuit_breaker = breaker(src, v)?;
    }
    validate_stream(&route).map_err(|m| src.error(table.clone(), m))?;
    Ok(route)
}

/// `"0s"` turns an optional timeout off.
fn optional_duration(v: &Spanned<HumanDuration>) -> Option<Duration> {
    Some(v.get_ref().0).filter(|d| !d.is_zero())
}

/// The keepalive / user-timeout / stall / lifetime keys of either mode.
fn timeouts(src: &Source<'_>, r: &RawRoute) -> Result<Timeouts, ConfigError> {
    let mut t = Timeouts::default();
    // Keepalive times go to the kernel in whole seconds (1..=32767).
    let keepalive_secs = |v: &Spanned<HumanDuration>, key: &str| {
        let d = v.get_ref().0;
        if d < Duration::from_secs(1) || d > Duration::from_secs(32767) || d.subsec_nanos() != 0 {
            return Err(src.error(
                v.span(),
                format!("{key} must be a whole number of seconds between 1s and 32767s"),
            ));
        }
        Ok(d)
    };
    let mut k = t.socket.keepalive.unwrap_or(Keepalive {
        idle: defaults::KEEPALIVE_IDLE,
        interval: defaults::KEEPALIVE_INTERVAL,
        count: defaults::KEEPALIVE_COUNT,
    });
    if let Some(v) = &r.tcp_keepalive_idle {
        k.idle = keepalive_secs(v, "tcp_keepalive_idle")?;
    }
    if let Some(v) = &r.tcp_keepalive_interval {
        k.interval = keepalive_secs(v, "tcp_keepalive_interval")?;
    }
    if let Some(v) = &r.tcp_keepalive_count {
        if !(1..=127).contains(v.get_ref()) {
            return Err(src.error(v.span(), "tcp_keepalive_count must be between 1 and 127"));
        }
        k.count = *v.get_ref();
    }
    t.socket.keepalive = match &r.tcp_keepalive {
        Some(v) if !*v.get_ref() => None,
        _ => Some(k),
    };
    if let Some(v) = &r.tcp_user_timeout {
        let d = v.get_ref().0;
        if d.as_millis() > i32::MAX as u128 {
            return Err(src.error(v.span(), "tcp_user_timeout is too large"));
        }
        t.socket.user_timeout = optional_duration(v);
    }
    if let Some(v) = &r.write_stall_timeout {
        t.write_stall = nonzero_duration(src, v, "write_stall_timeout")?;
    }
    if let Some(v) = &r.max_lifetime {
        t.max_lifetime = optional_duration(v);
    }
    Ok(t)
}

fn endpoint_tls(
    src: &Source<'_>,
    raw: S<RawTls>,
    endpoint: &Endpoint,
    table: &str,
) -> Result<Option<EndpointTls>, ConfigError> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    Ok(Some(match endpoint {
        Endpoint::Listen(_) => EndpointTls::Server(server_tls(src, raw, table)?),
        Endpoint::Connect(_) => EndpointTls::Client(client_tls(src, raw, table)?),
    }))
}

fn tls_reject<T>(
    src: &Source<'_>,
    v: &S<T>,
    key: &str,
    table: &str,
    why: &str,
) -> Result<(), ConfigError> {
    match v {
        Some(v) => Err(src.error(
            v.span(),
            format!("key '{key}' is not valid in [route.{table}]: {why}"),
        )),
        None => Ok(()),
    }
}

fn tls_path(v: S<String>) -> Option<PathBuf> {
    v.map(|p| PathBuf::from(p.into_inner()))
}

fn handshake_timeout(src: &Source<'_>, v: &S<HumanDuration>) -> Result<Duration, ConfigError> {
    match v {
        Some(v) => nonzero_duration(src, v, "handshake_timeout"),
        None => Ok(spillway_net::tls::DEFAULT_HANDSHAKE_TIMEOUT),
    }
}

/// A table where spillway terminates TLS: `cert` and `key` required,
/// `client_ca` turns on mTLS.
fn server_tls(
    src: &Source<'_>,
    raw: Spanned<RawTls>,
    table: &str,
) -> Result<ServerTlsConfig, ConfigError> {
    let span = raw.span();
    let r = raw.into_inner();
    let why = "spillway is the TLS server here (it accepts the connections)";
    tls_reject(src, &r.ca, "ca", table, why)?;
    tls_reject(src, &r.server_name, "server_name", table, why)?;
    tls_reject(src, &r.pin_sha256, "pin_sha256", table, why)?;
    tls_reject(
        src,
        &r.insecure_skip_verify,
        "insecure_skip_verify",
        table,
        why,
    )?;
    let missing = |key: &str| {
        src.error(
            span.clone(),
            format!("[route.{table}] is missing required key '{key}'"),
        )
    };
    let cert = tls_path(r.cert).ok_or_else(|| missing("cert"))?;
    let key = tls_path(r.key).ok_or_else(|| missing("key"))?;
    let mut cfg = ServerTlsConfig::new(cert, key);
    cfg.client_ca = tls_path(r.client_ca);
    cfg.handshake_timeout = handshake_timeout(src, &r.handshake_timeout)?;
    Ok(cfg)
}

/// A table where spillway originates TLS: verification on by default.
fn client_tls(
    src: &Source<'_>,
    raw: Spanned<RawTls>,
    table: &str,
) -> Result<ClientTlsConfig, ConfigError> {
    let span = raw.span();
    let r = raw.into_inner();
    tls_reject(
        src,
        &r.client_ca,
        "client_ca",
        table,
        "spillway is the TLS client here (it dials); use 'ca' to verify the server",
    )?;
    let mut cfg = ClientTlsConfig {
        handshake_timeout: handshake_timeout(src, &r.handshake_timeout)?,
        ..ClientTlsConfig::default()
    };
    if let Some(n) = r.server_name {
        if rustls_pki_types::ServerName::try_from(n.get_ref().as_str()).is_err() {
            return Err(src.error(
                n.span(),
                format!(
                    "invalid server_name '{}': expected a DNS name or an IP address",
                    n.get_ref()
                ),
            ));
        }
        cfg.server_name = Some(n.into_inner());
    }
    if let Some(pins) = r.pin_sha256 {
        for p in pins.get_ref() {
            let pin: SpkiPin = p.parse().map_err(|m: String| src.error(pins.span(), m))?;
            cfg.pin_sha256.push(pin);
        }
    }
    if let Some(v) = &r.insecure_skip_verify {
        cfg.insecure_skip_verify = *v.get_ref();
        if cfg.insecure_skip_verify {
            if let Some(ca) = &r.ca {
                return Err(src.error(
                    ca.span(),
                    "'ca' has no effect with insecure_skip_verify = true; remove one of them",
                ));
            }
        }
    }
    cfg.ca = tls_path(r.ca);
    match (&r.cert, &r.key) {
        (Some(_), None) | (None, Some(_)) => {
            return Err(src.error(
                span,
                format!("[route.{table}]: a client certificate needs both 'cert' and 'key'"),
            ))
        }
        _ => {}
    }
    cfg.cert = tls_path(r.cert);
    cfg.key = tls_path(r.key);
    Ok(cfg)
}

fn ipv6_prefix(src: &Source<'_>, v: &Spanned<u64>) -> Result<u8, ConfigError> {
    match u8::try_from(*v.get_ref()) {
        Ok(p) if (1..=128).contains(&p) => Ok(p),
        _ => Err(src.error(
            v.span(),
            "per_ip_ipv6_prefix must be between 1 and 128 (bits of an IPv6 address that name one client)",
        )),
    }
}

fn at_least_one(src: &Source<'_>, v: &Spanned<u64>, key: &str) -> Result<usize, ConfigError> {
    if *v.get_ref() == 0 {
        return Err(src.error(v.span(), format!("{key} must be at least 1")));
    }
    Ok(usize::try_from(*v.get_ref()).unwrap_or(usize::MAX))
}

/// `[route.health_check]`: `kind = "connect"` (the default without
/// `send`/`expect`) or `"send-expect"` (the default with them).
fn health_check(
    src: &Source<'_>,
    t: &Spanned<RawHealthCheck>,
) -> Result<HealthCheckConfig, ConfigError> {
    let r = t.get_ref();
    let mut c = HealthCheckConfig::default();
    let has_payload = r.send.is_some() || r.expect.is_some();
    let kind = match &r.kind {
        Some(k) => k.get_ref().as_str(),
        None if has_payload => "send-expect",
        None => "connect",
    };
    c.kind = match kind {
        "connect" => {
            if let Some(v) = r.send.as_ref().or(r.expect.as_ref()) {
                return Err(src.error(
                    v.span(),
                    "send/expect need kind = \"send-expect\" (a connect check sends nothing)",
                ));
            }
            CheckKind::Connect
        }
        "send-expect" => CheckKind::SendExpect {
            send: r
                .send
                .as_ref()
                .map(|v| v.get_ref().as_bytes().to_vec())
                .unwrap_or_default(),
            expect: r
                .expect
                .as_ref()
                .map(|v| v.get_ref().as_bytes().to_vec())
                .unwrap_or_default(),
        },
        other => {
            let span = r.kind.as_ref().map_or(t.span(), |k| k.span());
            return Err(src.error(
                span,
                format!("unknown health check kind '{other}': expected connect or send-expect"),
            ));
        }
    };
    if let Some(v) = &r.interval {
        c.interval = nonzero_duration(src, v, "interval")?;
        // Keep the default jitter proportionate: a tenth of the interval.
        c.jitter = c.interval / 10;
    }
    if let Some(v) = &r.timeout {
        c.timeout = nonzero_duration(src, v, "timeout")?;
    }
    if let Some(v) = &r.jitter {
        c.jitter = v.get_ref().0;
    }
    for (v, slot, key) in [
        (&r.rise, &mut c.rise, "rise"),
        (&r.fall, &mut c.fall, "fall"),
    ] {
        if let Some(v) = v {
            if *v.get_ref() == 0 {
                return Err(src.error(v.span(), format!("{key} must be at least 1")));
            }
            *slot = *v.get_ref();
        }
    }
    c.validate().map_err(|e| {
        src.error(
            r.expect.as_ref().map_or(t.span(), |v| v.span()),
            e.to_string(),
        )
    })?;
    Ok(c)
}

/// `[route.outlier]`; `consecutive_failures = 0` turns ejection off.
fn outlier(src: &Source<'_>, t: &Spanned<RawOutlier>) -> Result<OutlierConfig, ConfigError> {
    let r = t.get_ref();
    let mut c = OutlierConfig::default();
    if let Some(v) = &r.consecutive_failures {
        c.consecutive_failures = *v.get_ref();
    }
    if let Some(v) = &r.base_ejection_time {
        c.base_ejection_time = nonzero_duration(src, v, "base_ejection_time")?;
    }
    if let Some(v) = &r.max_ejection_time {
        c.max_ejection_time = nonzero_duration(src, v, "max_ejection_time")?;
    }
    if let Some(v) = &r.max_ejection_percent {
        c.max_ejection_percent = u8::try_from(*v.get_ref())
            .ok()
            .filter(|p| *p <= 100)
            .ok_or_else(|| src.error(v.span(), "max_ejection_percent must be between 0 and 100"))?;
    }
    c.validate().map_err(|e| {
        let span = r.max_ejection_time.as_ref().map_or(t.span(), |v| v.span());
        src.error(span, e.to_string())
    })?;
    Ok(c)
}

/// `[route.circuit_breaker]`.
fn breaker(src: &Source<'_>, t: &Spanned<RawBreaker>) -> Result<BreakerConfig, ConfigError> {
    let r = t.get_ref();
    let mut c = BreakerConfig::default();
    if let Some(v) = &r.max_connections {
        c.max_connections = at_least_one(src, v, "max_connections")?;
    }
    if let Some(v) = &r.max_pending {
        c.max_pending = at_least_one(src, v, "max_pending")?;
    }
    Ok(c)
}

/// `[route.backoff]` of a queue route's `connect:` endpoints.
fn backoff(src: &Source<'_>, t: &Spanned<RawBackoff>) -> Result<BackoffConfig, ConfigError> {
    let r = t.get_ref();
    let mut c = BackoffConfig::default();
    if let Some(v) = &r.base {
        c.base = nonzero_duration(src, v, "base")?;
    }
    if let Some(v) = &r.cap {
        c.cap = nonzero_duration(src, v, "cap")?;
    }
    if let Some(v) = &r.factor {
        c.factor = *v.get_ref();
    }
    if let Some(v) = &r.max_attempts {
        if *v.get_ref() == 0 {
            return Err(src.error(
                v.span(),
                "max_attempts must be at least 1 (omit it to retry forever)",
            ));
        }
        c.max_attempts = Some(*v.get_ref());
    }
    if let Some(v) = &r.reset_after {
        c.reset_after = v.get_ref().0;
    }
    c.validate().map_err(|e| {
        let span = match e {
            spillway_net::backoff::BackoffError::InvalidFactor { .. } => {
                r.factor.as_ref().map(|v| v.span())
            }
            _ => r.cap.as_ref().or(r.base.as_ref()).map(|v| v.span()),
        };
        src.error(span.unwrap_or(t.span()), e.to_string())
    })?;
    Ok(c)
}

fn nonzero_duration(
    src: &Source<'_>,
    v: &Spanned<HumanDuration>,
    key: &str,
) -> Result<Duration, ConfigError> {
    if v.get_ref().0.is_zero() {
        return Err(src.error(v.span(), format!("{key} must be greater than zero")));
    }
    Ok(v.get_ref().0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Result<Config, ConfigError> {
        parse(Path::new("t.toml"), text)
    }

    #[test]
    fn peer_limits_of_queue_routes() {
        let queue = "[[route]]\nname = \"q\"\nmode = \"queue\"\nfrom = \"listen:127.0.0.1:1\"\nto = \"listen:127.0.0.1:2\"\nspool = \"/s\"\n";
        let c = p(queue).expect("defaults");
        assert_eq!(c.global.peer_memory, defaults::PEER_MEMORY);
        let Route::Queue(q) = &c.routes[0] else {
            panic!("queue route")
        };
        assert_eq!(q.max_connections, defaults::QUEUE_MAX_CONNECTIONS);
        assert_eq!(q.min_rate, defaults::MIN_RATE);
        assert_eq!(q.min_rate_grace, defaults::MIN_RATE_GRACE);

        let c = p(&format!(
            "[global]\npeer_memory = \"512MiB\"\n{queue}max_connections = 10\nmin_rate = \"0\"\nmin_rate_grace = \"3s\"\nmax_message = \"256MiB\"\n"
        ))
        .expect("set");
        assert_eq!(c.global.peer_memory, 512 << 20);
        let Route::Queue(q) = &c.routes[0] else {
            panic!("queue route")
        };
        assert_eq!((q.max_connections, q.min_rate), (10, 0));
        assert_eq!(q.min_rate_grace, Duration::from_secs(3));

        // A message larger than the budget could never be read.
        let e = p(&format!("{queue}max_message = \"128MiB\"\n")).expect_err("over budget");
        assert_eq!((e.line, e.col), (7, 15), "{e}");
        assert!(e.message.contains("peer_memory"), "{e}");
        let e = p(&format!("[global]\npeer_memory = \"64KiB\"\n{queue}")).expect_err("tiny");
        assert_eq!(e.line, 2, "{e}");
        let e = p(&format!("{queue}max_connections = 0\n")).expect_err("zero");
        assert!(e.message.contains("at least 1"), "{e}");
        let e = p(&format!("{queue}min_rate_grace = \"0s\"\n")).expect_err("zero grace");
        assert!(e.message.contains("greater than zero"), "{e}");
    }

    #[test]
    fn minimal_stream_route() {
        let c = p(r#"
[[route]]
name = "web"
mode = "stream"
listen = "127.0.0.1:7000"
upstreams = ["127.0.0.1:8000", "localhost:8001"]
balance = "least-conn"
idle_timeout = "30s"
spill_dir = "/tmp"
max_spill = "1GiB"
"#)
        .expect("valid");
        let Route::Stream(r) = &c.routes[0] else {
            panic!("not a stream route");
        };
        assert_eq!(r.balance, Balance::LeastConn);
        assert_eq!(r.idle_timeout, Duration::from_secs(30));
        assert_eq!(
            r.spill.as_ref().map(|s| s.max_per_connection),
            Some(1 << 30)
        );
        assert_eq!(r.buffer, 64 << 10);
    }

    #[test]
    fn errors_have_line_and_column() {
        let e = p("[[route]]\nname = \"a\"\nmode = \"stream\"\nlisten = \"127.0.0.1:1\"\nupstreams = [\"x:1\"]\nbufer = \"1MiB\"\n")
            .expect_err("unknown key");
        assert_eq!((e.line, e.col), (6, 1), "{e}");
        assert!(e.message.contains("bufer"), "{e}");

        let e = p("[[route]]\nname = \"a\"\nmode = \"stream\"\nlisten = \"127.0.0.1:1\"\nupstreams = [\"x:1\"]\nbuffer = \"12XB\"\n")
            .expect_err("bad size");
        assert_eq!(e.line, 6, "{e}");
        assert!(e.message.contains("unknown unit"), "{e}");

        let e = p("[[route]]\nname = \"a\"\nmode = \"strem\"\n").expect_err("bad mode");
        assert_eq!((e.line, e.col), (3, 8), "{e}");

        let e = p("[[route]\n").expect_err("syntax");
        assert_eq!(e.line, 1, "{e}");
        assert!(e.to_string().starts_with("t.toml:1:"), "{e}");
    }

    #[test]
    fn queue_route() {
        let c = p(r#"
[[route]]
name = "events"
mode = "queue"
from = "listen:127.0.0.1:7000"
to = "connect:127.0.0.1:7001"
spool = "/var/lib/spillway/events"
framing = "len:u32be"
memory = 0
fsync = "always"
when_full = "drop-oldest"
max_disk = "10GiB"
"#)
        .expect("valid");
        let Route::Queue(q) = &c.routes[0] else {
            panic!("not a queue route");
        };
        assert_eq!(q.from, Endpoint::Listen("127.0.0.1:7000".into()));
        assert_eq!(q.to, Endpoint::Connect("127.0.0.1:7001".into()));
        assert_eq!(q.memory, 0);
        assert_eq!(q.fsync, Durability::Always);
        assert_eq!(q.when_full, WhenFull::DropOldest);
        assert_eq!(q.framing.to_string(), "len:u32be");

        let base = "[[route]]\nname = \"q\"\nmode = \"queue\"\nfrom = \"listen:127.0.0.1:1\"\nto = \"listen:127.0.0.1:2\"\nspool = \"/tmp/q\"\n";
        let e = p(&format!("{base}fsync = \"sometimes\"\n")).expect_err("fsync");
        assert_eq!((e.line, e.col), (7, 9), "{e}");
        let e = p(&format!("{base}framing = \"len:u24\"\n")).expect_err("framing");
        assert_eq!(e.line, 7, "{e}");
        let e = p(&format!("{base}upstreams = [\"a:1\"]\n")).expect_err("stream key");
        assert!(e.message.contains("not valid in a queue route"), "{e}");
        let e = p(&base.replace("listen:127.0.0.1:1", "dial:127.0.0.1:1")).expect_err("endpoint");
        assert_eq!((e.line, e.col), (4, 8), "{e}");
    }

    #[test]
    fn timeouts_and_keepalive() {
        let stream = "[[route]]\nname = \"a\"\nmode = \"stream\"\nlisten = \"127.0.0.1:1\"\nupstreams = [\"a:1\"]\n";
        let queue = "[[route]]\nname = \"q\"\nmode = \"queue\"\nfrom = \"listen:127.0.0.1:1\"\nto = \"listen:127.0.0.1:2\"\nspool = \"/tmp/q\"\n";
        // Defaults: keepalive on, user timeout above the stall timeout.
        let c = p(stream).expect("valid");
        let Route::Stream(r) = &c.routes[0] else {
            panic!("not a stream route");
        };
        assert_eq!(r.timeouts, Timeouts::default());
        let k = r
            .timeouts
            .socket
            .keepalive
            .expect("keepalive on by default");
        assert_eq!(k.idle, defaults::KEEPALIVE_IDLE);
        assert!(r.timeouts.socket.user_timeout > Some(r.timeouts.write_stall));
        assert_eq!(r.timeouts.max_lifetime, None);

        let c = p(&format!(
            "{queue}tcp_keepalive_idle = \"2s\"\ntcp_keepalive_interval = \"1s\"\ntcp_keepalive_count = 2\ntcp_user_timeout = \"1500ms\"\nwrite_stall_timeout = \"1s\"\nmax_lifetime = \"1h\"\nread_idle_timeout = \"0s\"\n"
        ))
        .expect("valid");
        let Route::Queue(q) = &c.routes[0] else {
            panic!("not a queue route");
        };
        let k = q.timeouts.socket.keepalive.expect("keepalive");
        assert_eq!(
            (k.idle, k.interval, k.count),
            (Duration::from_secs(2), Duration::from_secs(1), 2)
        );
        assert_eq!(
            q.timeouts.socket.user_timeout,
            Some(Duration::from_millis(1500))
        );
        assert_eq!(q.timeouts.write_stall, Duration::from_secs(1));
        assert_eq!(q.timeouts.max_lifetime, Some(Duration::from_secs(3600)));
        assert_eq!(q.read_idle_timeout, None);
        assert_eq!(
            QueueRoute::new("x", q.from.clone(), q.to.clone(), "/x").read_idle_timeout,
            Some(defaults::READ_IDLE_TIMEOUT)
        );

        let c = p(&format!(
            "{stream}tcp_keepalive = false\ntcp_user_timeout = \"0s\"\n"
        ))
        .expect("valid");
        let Route::Stream(r) = &c.routes[0] else {
            panic!("not a stream route");
        };
        assert_eq!(r.timeouts.socket, SocketOptions::default());

        // Bad values, each with its position.
        let e = p(&format!("{stream}tcp_keepalive_idle = \"500ms\"\n")).expect_err("sub-second");
        assert_eq!((e.line, e.col), (6, 22), "{e}");
        assert!(e.message.contains("whole number of seconds"), "{e}");
        let e = p(&format!("{stream}tcp_keepalive_count = 0\n")).expect_err("count");
        assert_eq!(e.line, 6, "{e}");
        let e = p(&format!("{queue}write_stall_timeout = \"0s\"\n")).expect_err("stall");
        assert!(e.message.contains("greater than zero"), "{e}");
        let e = p(&format!("{stream}read_idle_timeout = \"1s\"\n")).expect_err("queue key");
        assert!(e.message.contains("not valid in a stream route"), "{e}");
        let e = p(&format!("{stream}tcp_keepalive = \"yes\"\n")).expect_err("bool");
        assert_eq!(e.line, 6, "{e}");
    }

    #[test]
    fn tls_tables() {
        let pin = "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=";
        let c = p(&format!(
            r#"
[[route]]
name = "web"
mode = "stream"
listen = "127.0.0.1:7000"
upstreams = ["backend.internal:8443"]
[route.tls]
cert = "/etc/spillway/server.pem"
key = "/etc/spillway/server.key"
client_ca = "/etc/spillway/clients.pem"
[route.upstream_tls]
ca = "/etc/spillway/ca.pem"
server_name = "backend.example"
pin_sha256 = ["{pin}"]
handshake_timeout = "3s"

[[route]]
name = "q"
mode = "queue"
from = "listen:127.0.0.1:7001"
to = "connect:127.0.0.1:7002"
spool = "/tmp/q"
[route.from_tls]
cert = "s.pem"
key = "s.key"
[route.to_tls]
insecure_skip_verify = true
cert = "c.pem"
key = "c.key"
"#
        ))
        .expect("valid");
        let Route::Stream(r) = &c.routes[0] else {
            panic!("not a stream route");
        };
        let t = r.tls.as_ref().expect("tls");
        assert_eq!(
            t.client_ca.as_deref(),
            Some(Path::new("/etc/spillway/clients.pem"))
        );
        assert_eq!(
            t.handshake_timeout,
            spillway_net::tls::DEFAULT_HANDSHAKE_TIMEOUT
        );
        let u = r.upstream_tls.as_ref().expect("upstream_tls");
        assert_eq!(u.server_name.as_deref(), Some("backend.example"));
        assert_eq!(u.pin_sha256.len(), 1);
        assert_eq!(u.pin_sha256[0].to_string(), pin);
        assert_eq!(u.handshake_timeout, Duration::from_secs(3));
        assert!(!u.insecure_skip_verify);
        let Route::Queue(q) = &c.routes[1] else {
            panic!("not a queue route");
        };
        assert!(
            matches!(&q.from_tls, Some(EndpointTls::Server(s)) if s.cert == Path::new("s.pem"))
        );
        assert!(
            matches!(&q.to_tls, Some(EndpointTls::Client(c)) if c.insecure_skip_verify && c.key.is_some())
        );

        let stream = "[[route]]\nname = \"a\"\nmode = \"stream\"\nlisten = \"127.0.0.1:1\"\nupstreams = [\"a:1\"]\n";
        let bad = |tail: &str| p(&format!("{stream}{tail}")).expect_err(tail);
        let e = bad("[route.tls]\ncert = \"c\"\n");
        assert!(e.message.contains("missing required key 'key'"), "{e}");
        let e = bad("[route.tls]\ncert = \"c\"\nkey = \"k\"\nca = \"x\"\n");
        assert_eq!(e.line, 9, "{e}");
        assert!(e.message.contains("TLS server"), "{e}");
        let e = bad("[route.upstream_tls]\nclient_ca = \"x\"\n");
        assert!(e.message.contains("TLS client"), "{e}");
        let e = bad("[route.upstream_tls]\npin_sha256 = [\"abc\"]\n");
        assert!(e.message.contains("32 bytes"), "{e}");
        let e = bad("[route.upstream_tls]\ncert = \"c\"\n");
        assert!(e.message.contains("both 'cert' and 'key'"), "{e}");
        let e = bad("[route.upstream_tls]\nca = \"c\"\ninsecure_skip_verify = true\n");
        assert!(e.message.contains("no effect"), "{e}");
        let e = bad("[route.upstream_tls]\nserver_name = \"not a name\"\n");
        assert!(e.message.contains("invalid server_name"), "{e}");
        let e = bad("[route.upstream_tls]\nhandshake_timeout = \"0s\"\n");
        assert!(e.message.contains("greater than zero"), "{e}");
        let e = bad("[route.tls]\ncert = \"c\"\nkey = \"k\"\nciphers = \"all\"\n");
        assert_eq!((e.line, e.col), (9, 1), "{e}");
        let e = bad("spill_dir = \"/tmp\"\n[route.tls]\ncert = \"c\"\nkey = \"k\"\n");
        assert!(e.message.contains("spill_dir is not supported"), "{e}");
        let e = bad("[route.from_tls]\ncert = \"c\"\nkey = \"k\"\n");
        assert!(e.message.contains("not valid in a stream route"), "{e}");
        // On a connect: endpoint the table is a client table.
        let queue = "[[route]]\nname = \"q\"\nmode = \"queue\"\nfrom = \"connect:127.0.0.1:1\"\nto = \"listen:127.0.0.1:2\"\nspool = \"/tmp/q\"\n";
        let e = p(&format!("{queue}[route.from_tls]\nclient_ca = \"x\"\n"))
            .expect_err("client_ca on connect");
        assert!(e.message.contains("from_tls"), "{e}");
        let e = p(&format!("{queue}[route.to_tls]\nca = \"x\"\n")).expect_err("ca on listen");
        assert!(e.message.contains("to_tls"), "{e}");
        let e = p(&format!("{queue}[route.tls]\ncert = \"c\"\nkey = \"k\"\n"))
            .expect_err("tls in queue");
        assert!(e.message.contains("not valid in a queue route"), "{e}");
    }

    #[test]
    fn health_outlier_breaker_and_limits() {
        let c = p(r#"
[global]
max_connections = 5000

[[route]]
name = "web"
mode = "stream"
listen = "127.0.0.1:7000"
upstreams = ["127.0.0.1:8000", "127.0.0.1:8001"]
max_connections_per_ip = 100

[route.health_check]
interval = "5s"
timeout = "1s"
rise = 3
fall = 2
send = "PING\r\n"
expect = "+PONG"

[route.outlier]
consecutive_failures = 3
base_ejection_time = "30s"
max_ejection_time = "10m"
max_ejection_percent = 34

[route.circuit_breaker]
max_connections = 200
max_pending = 20

[[route]]
name = "q"
mode = "queue"
from = "listen:127.0.0.1:7100"
to = "connect:127.0.0.1:7101"
spool = "/tmp/q"
max_connections_per_ip = 4

[route.backoff]
base = "50ms"
factor = 3
cap = "5s"
max_attempts = 100
reset_after = "2s"
"#)
        .expect("valid");
        assert_eq!(c.global.max_connections, Some(5000));
        let Route::Stream(r) = &c.routes[0] else {
            panic!("not a stream route");
        };
        assert_eq!(r.max_connections_per_ip, Some(100));
        let h = r.health_check.as_ref().expect("health check");
        assert_eq!(
            h.kind,
            CheckKind::SendExpect {
                send: b"PING\r\n".to_vec(),
                expect: b"+PONG".to_vec()
            }
        );
        assert_eq!((h.rise, h.fall), (3, 2));
        assert_eq!(h.interval, Duration::from_secs(5));
        assert_eq!(h.jitter, Duration::from_millis(500));
        assert_eq!(r.outlier.consecutive_failures, 3);
        assert_eq!(r.outlier.max_ejection_time, Duration::from_secs(600));
        assert_eq!(r.outlier.max_ejection_percent, 34);
        assert_eq!(r.circuit_breaker.max_connections, 200);
        assert_eq!(r.circuit_breaker.max_pending, 20);
        let Route::Queue(q) = &c.routes[1] else {
            panic!("not a queue route");
        };
        assert_eq!(q.max_connections_per_ip, Some(4));
        assert_eq!(q.backoff.base, Duration::from_millis(50));
        assert_eq!(q.backoff.factor, 3.0);
        assert_eq!(q.backoff.max_attempts, Some(100));
        assert_eq!(q.backoff.reset_after, Duration::from_secs(2));

        // Defaults: checks off, outlier detection on, no per-IP bound.
        let d = p("[[route]]\nname = \"a\"\nmode = \"stream\"\nlisten = \"127.0.0.1:1\"\nupstreams = [\"a:1\"]\n")
            .expect("valid");
        let Route::Stream(r) = &d.routes[0] else {
            panic!("not a stream route");
        };
        assert!(r.health_check.is_none());
        assert_eq!(r.outlier, OutlierConfig::default());
        assert_eq!(r.outlier.consecutive_failures, 5);
        assert_eq!(r.max_connections_per_ip, None);
        assert_eq!(d.global.max_connections, None);
    }

    #[test]
    fn bad_health_values_name_their_position() {
        let base = "[[route]]\nname = \"a\"\nmode = \"stream\"\nlisten = \"127.0.0.1:1\"\nupstreams = [\"a:1\"]\n";
        let cases: &[(&str, usize, &str)] = &[
            (
                "[route.health_check]\nrise = 0\n",
                7,
                "rise must be at least 1",
            ),
            (
                "[route.health_check]\ninterval = \"0s\"\n",
                7,
                "interval must be greater than zero",
            ),
            (
                "[route.health_check]\nkind = \"http\"\n",
                7,
                "unknown health check kind",
            ),
            (
                "[route.health_check]\nkind = \"connect\"\nsend = \"x\"\n",
                8,
                "send-expect",
            ),
            ("[route.health_check]\nintervl = \"1s\"\n", 7, "intervl"),
            (
                "[route.outlier]\nmax_ejection_percent = 150\n",
                7,
                "between 0 and 100",
            ),
            (
                "[route.outlier]\nbase_ejection_time = \"1m\"\nmax_ejection_time = \"10s\"\n",
                8,
                "at least base",
            ),
            (
                "[route.circuit_breaker]\nmax_pending = 0\n",
                7,
                "max_pending must be at least 1",
            ),
            ("max_connections_per_ip = 0\n", 6, "at least 1"),
            (
                "[route.backoff]\nbase = \"1s\"\n",
                6,
                "not valid in a stream route",
            ),
        ];
        for (extra, line, needle) in cases {
            let e = p(&format!("{base}{extra}")).expect_err(extra);
            assert_eq!(e.line, *line, "{extra}: {e}");
            assert!(e.message.contains(needle), "{extra}: {e}");
        }
        let q = "[[route]]\nname = \"q\"\nmode = \"queue\"\nfrom = \"listen:127.0.0.1:1\"\nto = \"connect:127.0.0.1:2\"\nspool = \"/tmp/q\"\n";
        let e = p(&format!("{q}[route.backoff]\nfactor = 0.5\n")).expect_err("factor");
        assert_eq!(e.line, 8, "{e}");
        assert!(e.message.contains("factor"), "{e}");
        let e = p(&format!(
            "{q}[route.backoff]\nbase = \"10s\"\ncap = \"1s\"\n"
        ))
        .expect_err("cap");
        assert_eq!(e.line, 9, "{e}");
        let e =
            p(&format!("{q}[route.outlier]\nconsecutive_failures = 1\n")).expect_err("stream only");
        assert!(e.message.contains("not valid in a queue route"), "{e}");
        let e = p(&format!("[global]\nmax_connections = 0\n{q}")).expect_err("global");
        assert_eq!(e.line, 2, "{e}");
    }

    #[test]
    fn semantic_errors() {
        let base = "[[route]]\nname = \"a\"\nmode = \"stream\"\nlisten = \"127.0.0.1:1\"\n";
        let e = p(&format!("{base}upstreams = []\n")).expect_err("no upstream");
        assert_eq!(e.line, 5);
        let e = p(&format!("{base}upstreams = [\"nohost\"]\n")).expect_err("no port");
        assert!(e.message.contains("HOST:PORT"));
        let e = p(&format!(
            "{base}upstreams = [\"a:1\"]\nmax_spill = \"1MiB\"\n"
        ))
        .expect_err("spill");
        assert!(e.message.contains("spill_dir"));
        let e = p("").expect_err("empty");
        assert!(e.message.contains("no routes"));
        let dup = format!(
            "{base}upstreams = [\"a:1\"]\n{}",
            base.replace("127.0.0.1:1", "127.0.0.1:2")
        );
        let e = p(&format!("{dup}upstreams = [\"a:1\"]\n")).expect_err("dup");
        assert!(e.message.contains("duplicate"), "{e}");
    }
}
