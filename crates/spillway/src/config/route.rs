//! One `[[route]]` table → a [`Route`]: the keys sorted by mode (the
//! other mode's keys are errors), then a [`StreamRoute`] or a
//! [`QueueRoute`] built from its defaults and the keys given, every error
//! at its key.

use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;

use toml::Spanned;

use super::convert::{
    at_least_one, ipv6_prefix, nonzero_duration, optional_duration, reject, required, ConfigError,
    Source,
};
use super::model::{
    check_buffer_size, check_jetstream_max_message, parse_fsync, parse_when_full, validate_queue,
    validate_stream, QueueRoute, Route, Spill, StreamRoute, Timeouts, JS_NO_GROUPS,
};
use super::raw::{BothKeys, QueueKeys, RawRoute, RouteKeys, StreamKeys, TimeoutKeys};
use super::{defaults, jetstream, policy, tls};
use crate::endpoint::{check_host_port, Endpoint};
use crate::units::HumanDuration;

/// One `[[route]]` table, given the routes before it (names are unique).
pub(super) fn route(
    src: &Source<'_>,
    table: &Range<usize>,
    raw: RawRoute,
    before: &[Route],
    peer_memory: u64,
) -> Result<Route, ConfigError> {
    let RouteKeys {
        name,
        mode,
        stream,
        queue,
        both,
    } = raw.into_keys();
    let name = required(src, table, name, "name")?;
    if name.get_ref().is_empty() {
        return Err(src.error(name.span(), "route name must not be empty"));
    }
    if before.iter().any(|x| x.name() == name.get_ref()) {
        return Err(src.error(
            name.span(),
            format!("duplicate route name '{}'", name.get_ref()),
        ));
    }
    let mode = required(src, table, mode, "mode")?;
    Ok(match mode.get_ref().as_str() {
        "stream" => {
            reject_queue_keys(src, queue)?;
            Route::Stream(stream_route(src, table, name.into_inner(), stream, both)?)
        }
        "queue" => {
            reject_stream_keys(src, stream)?;
            Route::Queue(queue_route(
                src,
                table,
                name.into_inner(),
                queue,
                both,
                peer_memory,
            )?)
        }
        other => {
            return Err(src.error(
                mode.span(),
                format!("unknown mode '{other}': expected \"stream\" or \"queue\""),
            ))
        }
    })
}

fn host_port(src: &Source<'_>, v: &Spanned<String>, what: &str) -> Result<String, ConfigError> {
    check_host_port(v.get_ref())
        .map(|()| v.get_ref().clone())
        .map_err(|m| src.error(v.span(), format!("invalid {what}: {m}")))
}

/// Every stream-only key is an error in a queue route.
fn reject_stream_keys(src: &Source<'_>, keys: StreamKeys) -> Result<(), ConfigError> {
    let mode = "queue";
    let StreamKeys {
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
    } = keys;
    reject(src, &listen, "listen", mode)?;
    reject(src, &upstreams, "upstreams", mode)?;
    reject(src, &balance, "balance", mode)?;
    reject(src, &connect_tries, "connect_tries", mode)?;
    reject(src, &idle_timeout, "idle_timeout", mode)?;
    reject(src, &half_close_timeout, "half_close_timeout", mode)?;
    reject(src, &buffer, "buffer", mode)?;
    reject(src, &pipe_size, "pipe_size", mode)?;
    reject(src, &spill_dir, "spill_dir", mode)?;
    reject(src, &max_spill, "max_spill", mode)?;
    reject(src, &tls, "tls", mode)?;
    reject(src, &upstream_tls, "upstream_tls", mode)?;
    reject(src, &health_check, "health_check", mode)?;
    reject(src, &outlier, "outlier", mode)?;
    reject(src, &circuit_breaker, "circuit_breaker", mode)?;
    Ok(())
}

/// Every queue-only key is an error in a stream route.
fn reject_queue_keys(src: &Source<'_>, keys: QueueKeys) -> Result<(), ConfigError> {
    let mode = "stream";
    let QueueKeys {
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
    } = keys;
    reject(src, &from, "from", mode)?;
    reject(src, &to, "to", mode)?;
    reject(src, &spool, "spool", mode)?;
    reject(src, &framing, "framing", mode)?;
    reject(src, &max_message, "max_message", mode)?;
    reject(src, &memory, "memory", mode)?;
    reject(src, &max_disk, "max_disk", mode)?;
    reject(src, &when_full, "when_full", mode)?;
    reject(src, &fsync, "fsync", mode)?;
    reject(src, &segment_size, "segment_size", mode)?;
    reject(src, &redeliver_on_reset, "redeliver_on_reset", mode)?;
    reject(src, &from_protocol, "from_protocol", mode)?;
    reject(src, &to_protocol, "to_protocol", mode)?;
    reject(src, &ack_timeout, "ack_timeout", mode)?;
    reject(src, &max_deliveries, "max_deliveries", mode)?;
    reject(src, &producer_memory, "producer_memory", mode)?;
    reject(src, &groups, "groups", mode)?;
    reject(src, &read_idle_timeout, "read_idle_timeout", mode)?;
    reject(src, &min_rate, "min_rate", mode)?;
    reject(src, &min_rate_grace, "min_rate_grace", mode)?;
    reject(src, &backoff, "backoff", mode)?;
    reject(src, &from_tls, "from_tls", mode)?;
    reject(src, &to_tls, "to_tls", mode)?;
    reject(src, &jetstream, "jetstream", mode)?;
    Ok(())
}

fn queue_route(
    src: &Source<'_>,
    table: &Range<usize>,
    name: String,
    keys: QueueKeys,
    both: BothKeys,
    peer_memory: u64,
) -> Result<QueueRoute, ConfigError> {
    let QueueKeys {
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
    } = keys;
    let BothKeys {
        connect_timeout,
        max_connections,
        max_connections_per_ip,
        per_ip_ipv6_prefix,
        timeouts: timeout_keys,
    } = both;
    let timeouts = timeouts(src, &timeout_keys)?;
    let endpoint = |v: Spanned<String>| -> Result<Endpoint, ConfigError> {
        v.get_ref()
            .parse()
            .map_err(|m: String| src.error(v.span(), m))
    };
    let from = endpoint(required(src, table, from, "from")?)?;
    let to = endpoint(required(src, table, to, "to")?)?;
    let spool = required(src, table, spool, "spool")?;
    let mut q = QueueRoute::new(name, from, to, spool.into_inner());
    if let Some(f) = framing {
        q.framing = f
            .get_ref()
            .parse()
            .map_err(|e: spillway_codec::ParseFramingError| src.error(f.span(), e.to_string()))?;
    }
    if let Some(v) = &max_message {
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
    if let Some(v) = &memory {
        q.memory = v.get_ref().bytes();
    }
    if let Some(v) = &max_disk {
        q.max_disk = v.get_ref().bytes();
    }
    if let Some(v) = &segment_size {
        q.segment_size = v.get_ref().bytes();
    }
    if let Some(v) = &redeliver_on_reset {
        q.redeliver_on_reset = v.get_ref().bytes();
    }
    for (v, side) in [
        (from_protocol, &mut q.from_protocol),
        (to_protocol, &mut q.to_protocol),
    ] {
        if let Some(v) = v {
            *side = v
                .get_ref()
                .parse()
                .map_err(|m: String| src.error(v.span(), m))?;
        }
    }
    if let Some(v) = ack_timeout {
        q.ack_timeout = nonzero_duration(src, &v, "ack_timeout")?;
    }
    if q.from_protocol == crate::config::Protocol::Ack && memory.is_none() {
        // A confirm means on disk: no memory tier unless asked (and then
        // refused, with the reason, by validate_queue).
        q.memory = 0;
    }
    if let Some(v) = &groups {
        q.groups = v.get_ref().clone();
    }
    if let Some(v) = producer_memory {
        q.producer_memory = nonzero_duration(src, &v, "producer_memory")?;
    }
    if let Some(v) = max_deliveries {
        if !(1..=1000).contains(v.get_ref()) {
            return Err(src.error(v.span(), "max_deliveries must be between 1 and 1000"));
        }
        q.max_deliveries = *v.get_ref();
    }
    if let Some(v) = when_full {
        q.when_full = parse_when_full(v.get_ref()).map_err(|m| src.error(v.span(), m))?;
    }
    if let Some(v) = fsync {
        q.fsync = parse_fsync(v.get_ref()).map_err(|m| src.error(v.span(), m))?;
    }
    if let Some(v) = connect_timeout {
        q.connect_timeout = nonzero_duration(src, &v, "connect_timeout")?;
    }
    if let Some(v) = &read_idle_timeout {
        q.read_idle_timeout = optional_duration(v);
    }
    if let Some(v) = &min_rate {
        q.min_rate = v.get_ref().bytes();
    }
    if let Some(v) = min_rate_grace {
        q.min_rate_grace = nonzero_duration(src, &v, "min_rate_grace")?;
    }
    if let Some(v) = max_connections {
        if *v.get_ref() == 0 {
            return Err(src.error(v.span(), "max_connections must be at least 1"));
        }
        q.max_connections = usize::try_from(*v.get_ref()).unwrap_or(usize::MAX);
    }
    q.timeouts = timeouts;
    if let Some(v) = &backoff {
        q.backoff = policy::backoff(src, v)?;
    }
    if let Some(v) = &max_connections_per_ip {
        q.max_connections_per_ip = Some(at_least_one(src, v, "max_connections_per_ip")?);
    }
    if let Some(v) = &per_ip_ipv6_prefix {
        q.per_ip_ipv6_prefix = ipv6_prefix(src, v)?;
    }
    if let Some(t) = jetstream {
        q.jetstream = Some(jetstream::jetstream(src, &q.name, t)?);
        if let Some(v) = groups.as_ref().filter(|v| !v.get_ref().is_empty()) {
            return Err(src.error(v.span(), JS_NO_GROUPS));
        }
        match &max_message {
            Some(v) => check_jetstream_max_message("max_message", q.max_message)
                .map_err(|m| src.error(v.span(), m))?,
            // The spool's default (1 MiB) does not fit one JetStream
            // message: the default here is the largest that does.
            None => q.max_message = defaults::JS_MAX_MESSAGE,
        }
    }
    validate_queue(&q).map_err(|m| {
        let span = max_message
            .as_ref()
            .or(max_disk.as_ref())
            .or(segment_size.as_ref())
            .map_or(table.clone(), |v| v.span());
        src.error(span, m)
    })?;
    q.from_tls = tls::endpoint_tls(src, from_tls, &q.from, "from_tls")?;
    q.to_tls = tls::endpoint_tls(src, to_tls, &q.to, "to_tls")?;
    Ok(q)
}

fn stream_route(
    src: &Source<'_>,
    table: &Range<usize>,
    name: String,
    keys: StreamKeys,
    both: BothKeys,
) -> Result<StreamRoute, ConfigError> {
    let StreamKeys {
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
        tls: server_tls,
        upstream_tls,
        health_check,
        outlier,
        circuit_breaker,
    } = keys;
    let BothKeys {
        connect_timeout,
        max_connections,
        max_connections_per_ip,
        per_ip_ipv6_prefix,
        timeouts: timeout_keys,
    } = both;
    let timeouts = timeouts(src, &timeout_keys)?;
    let listen = required(src, table, listen, "listen")?;
    let listen = host_port(src, &listen, "listen address")?;
    let ups = required(src, table, upstreams, "upstreams")?;
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
    if let Some(b) = balance {
        route.balance = b
            .get_ref()
            .parse()
            .map_err(|m: String| src.error(b.span(), m))?;
    }
    if let Some(v) = connect_timeout {
        route.connect_timeout = nonzero_duration(src, &v, "connect_timeout")?;
    }
    if let Some(v) = connect_tries {
        if *v.get_ref() == 0 {
            return Err(src.error(v.span(), "connect_tries must be at least 1"));
        }
        route.connect_tries = *v.get_ref();
    }
    if let Some(v) = idle_timeout {
        route.idle_timeout = nonzero_duration(src, &v, "idle_timeout")?;
    }
    if let Some(v) = half_close_timeout {
        route.half_close_timeout = nonzero_duration(src, &v, "half_close_timeout")?;
    }
    if let Some(v) = max_connections {
        if *v.get_ref() == 0 {
            return Err(src.error(v.span(), "max_connections must be at least 1"));
        }
        route.max_connections = usize::try_from(*v.get_ref()).unwrap_or(usize::MAX);
    }
    if let Some(v) = buffer {
        let b = v.get_ref().bytes();
        check_buffer_size("buffer", b).map_err(|m| src.error(v.span(), m))?;
        route.buffer = b as usize;
    }
    if let Some(v) = pipe_size {
        let b = v.get_ref().bytes();
        check_buffer_size("pipe_size", b).map_err(|m| src.error(v.span(), m))?;
        route.pipe_size = b as usize;
    }
    match (spill_dir, max_spill) {
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
    if let Some(t) = server_tls {
        route.tls = Some(tls::server_tls(src, t, "tls")?);
    }
    if let Some(t) = upstream_tls {
        route.upstream_tls = Some(tls::client_tls(src, t, "upstream_tls")?);
    }
    if route.spill.is_some() && (route.tls.is_some() || route.upstream_tls.is_some()) {
        // TLS connections take the user-space copy path, which has no spill file.
        return Err(src.error(
            table.clone(),
            "spill_dir is not supported together with TLS (tls / upstream_tls) yet",
        ));
    }
    if let Some(v) = &max_connections_per_ip {
        route.max_connections_per_ip = Some(at_least_one(src, v, "max_connections_per_ip")?);
    }
    if let Some(v) = &per_ip_ipv6_prefix {
        route.per_ip_ipv6_prefix = ipv6_prefix(src, v)?;
    }
    if let Some(v) = &health_check {
        route.health_check = Some(policy::health_check(src, v)?);
    }
    if let Some(v) = &outlier {
        route.outlier = policy::outlier(src, v)?;
    }
    if let Some(v) = &circuit_breaker {
        route.circuit_breaker = policy::breaker(src, v)?;
    }
    validate_stream(&route).map_err(|m| src.error(table.clone(), m))?;
    Ok(route)
}

/// The keepalive / user-timeout / stall / lifetime keys of either mode.
fn timeouts(src: &Source<'_>, r: &TimeoutKeys) -> Result<Timeouts, ConfigError> {
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
    let mut k = t.socket.keepalive.unwrap_or(defaults::KEEPALIVE);
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use spillway_net::balance::Balance;
    use spillway_net::dial::SocketOptions;
    use spillway_spool::{Durability, WhenFull};

    use super::*;
    use crate::config::{parse, Config, Protocol};

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

    /// The ack protocol's keys: what they default to, and every refusal
    /// names the key and why.
    #[test]
    fn ack_protocol_keys() {
        let base = "[[route]]\nname = \"q\"\nmode = \"queue\"\nfrom = \"listen:127.0.0.1:1\"\nto = \"listen:127.0.0.1:2\"\nspool = \"/tmp/q\"\n";
        let c = p(&format!(
            "{base}from_protocol = \"ack\"\nto_protocol = \"ack\"\ngroups = [\"billing\", \"audit\"]\nack_timeout = \"5s\"\nmax_deliveries = 3\n"
        ))
        .expect("valid");
        let Route::Queue(q) = &c.routes[0] else {
            panic!("not a queue route");
        };
        assert_eq!(
            (q.from_protocol, q.to_protocol),
            (Protocol::Ack, Protocol::Ack)
        );
        assert_eq!(q.memory, 0, "confirms default to no memory tier");
        assert_eq!(q.groups, ["billing", "audit"]);
        assert_eq!(
            (q.ack_timeout, q.max_deliveries),
            (Duration::from_secs(5), 3)
        );
        for (extra, says) in [
            ("to_protocol = \"acks\"\n", "expected plain or ack"),
            (
                "to_protocol = \"ack\"\nmax_deliveries = 0\n",
                "between 1 and 1000",
            ),
            (
                "to_protocol = \"ack\"\nack_timeout = \"0s\"\n",
                "ack_timeout",
            ),
            ("groups = [\"a\"]\n", "groups need to_protocol"),
            (
                "to_protocol = \"ack\"\ngroups = [\"a\", \"a\"]\n",
                "declared twice",
            ),
            (
                "to_protocol = \"ack\"\ngroups = [\"a b\"]\n",
                "invalid group name",
            ),
            (
                "from_protocol = \"ack\"\nmemory = \"1MiB\"\n",
                "needs memory = 0",
            ),
        ] {
            let e = p(&format!("{base}{extra}")).expect_err(extra);
            assert!(e.message.contains(says), "{extra}: {e}");
        }
        let many: Vec<String> = (0..65).map(|i| format!("\"g{i}\"")).collect();
        let e = p(&format!(
            "{base}to_protocol = \"ack\"\ngroups = [{}]\n",
            many.join(",")
        ))
        .expect_err("65 groups");
        assert!(e.message.contains("at most 64"), "{e}");
        let dial = base.replace("to = \"listen:", "to = \"connect:");
        let e = p(&format!("{dial}to_protocol = \"ack\"\n")).expect_err("connect");
        assert!(e.message.contains("needs a listen: endpoint"), "{e}");
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
    fn every_key_of_one_mode_is_an_error_in_the_other() {
        let stream = "[[route]]\nname = \"a\"\nmode = \"stream\"\nlisten = \"127.0.0.1:1\"\nupstreams = [\"a:1\"]\n";
        let queue = "[[route]]\nname = \"q\"\nmode = \"queue\"\nfrom = \"listen:127.0.0.1:1\"\nto = \"listen:127.0.0.1:2\"\nspool = \"/tmp/q\"\n";
        let queue_keys = [
            "from = \"listen:127.0.0.1:3\"",
            "to = \"listen:127.0.0.1:3\"",
            "spool = \"/tmp/x\"",
            "framing = \"raw\"",
            "max_message = \"1KiB\"",
            "memory = 0",
            "max_disk = \"1GiB\"",
            "when_full = \"block\"",
            "fsync = \"always\"",
            "segment_size = \"1MiB\"",
            "redeliver_on_reset = 0",
            "read_idle_timeout = \"1s\"",
            "min_rate = 10",
            "min_rate_grace = \"1s\"",
            "backoff = { base = \"1s\" }",
            "from_tls = { cert = \"c\", key = \"k\" }",
            "to_tls = { cert = \"c\", key = \"k\" }",
            "jetstream = { servers = [\"nats://a:4222\"], stream = \"s\" }",
        ];
        for key in queue_keys {
            let e = p(&format!("{stream}{key}\n")).expect_err(key);
            assert_eq!((e.line, e.col), (6, key.find('=').unwrap_or(0) + 3), "{e}");
            let name = key.split(' ').next().unwrap_or_default();
            assert!(
                e.message
                    .contains(&format!("key '{name}' is not valid in a stream route")),
                "{e}"
            );
        }
        let stream_keys = [
            "listen = \"127.0.0.1:3\"",
            "upstreams = [\"a:1\"]",
            "balance = \"random\"",
            "connect_tries = 2",
            "idle_timeout = \"1s\"",
            "half_close_timeout = \"1s\"",
            "buffer = \"64KiB\"",
            "pipe_size = \"64KiB\"",
            "spill_dir = \"/tmp\"",
            "max_spill = \"1MiB\"",
            "tls = { cert = \"c\", key = \"k\" }",
            "upstream_tls = { ca = \"c\" }",
            "health_check = { rise = 1 }",
            "outlier = { consecutive_failures = 1 }",
            "circuit_breaker = { max_pending = 1 }",
        ];
        for key in stream_keys {
            let e = p(&format!("{queue}{key}\n")).expect_err(key);
            assert_eq!((e.line, e.col), (7, key.find('=').unwrap_or(0) + 3), "{e}");
            let name = key.split(' ').next().unwrap_or_default();
            assert!(
                e.message
                    .contains(&format!("key '{name}' is not valid in a queue route")),
                "{e}"
            );
        }
        // Keys of both modes are accepted in either.
        let both = "connect_timeout = \"1s\"\nmax_connections = 5\nmax_connections_per_ip = 2\nper_ip_ipv6_prefix = 48\ntcp_keepalive = true\ntcp_keepalive_idle = \"5s\"\ntcp_keepalive_interval = \"5s\"\ntcp_keepalive_count = 2\ntcp_user_timeout = \"5s\"\nwrite_stall_timeout = \"5s\"\nmax_lifetime = \"1h\"\n";
        p(&format!("{stream}{both}")).expect("stream");
        p(&format!("{queue}{both}")).expect("queue");
    }
}
