//! The tables that tune how a route meets failing peers: active health
//! checks, outlier ejection and circuit breakers of a stream route's
//! upstreams, and the redial backoff of a queue route's `connect:`
//! endpoints. Each starts from `spillway_net`'s own default.

use spillway_net::backoff::BackoffConfig;
use spillway_net::breaker::BreakerConfig;
use spillway_net::health::{CheckKind, HealthCheckConfig};
use spillway_net::outlier::OutlierConfig;
use toml::Spanned;

use super::convert::{at_least_one, nonzero_duration, ConfigError, Source};
use super::raw::{RawBackoff, RawBreaker, RawHealthCheck, RawOutlier};

/// `[route.health_check]`: `kind = "connect"` (the default without
/// `send`/`expect`) or `"send-expect"` (the default with them).
pub(super) fn health_check(
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
        // The default jitter follows the interval.
        c.jitter = HealthCheckConfig::default_jitter(c.interval);
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
pub(super) fn outlier(
    src: &Source<'_>,
    t: &Spanned<RawOutlier>,
) -> Result<OutlierConfig, ConfigError> {
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
pub(super) fn breaker(
    src: &Source<'_>,
    t: &Spanned<RawBreaker>,
) -> Result<BreakerConfig, ConfigError> {
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
pub(super) fn backoff(
    src: &Source<'_>,
    t: &Spanned<RawBackoff>,
) -> Result<BackoffConfig, ConfigError> {
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

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use super::*;
    use crate::config::{parse, Config, Route};

    fn p(text: &str) -> Result<Config, ConfigError> {
        parse(Path::new("t.toml"), text)
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
}
