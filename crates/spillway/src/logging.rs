//! Log set-up and a small rate limiter for repeated warnings.
//!
//! Context comes from spans, not from fields repeated on every line: a
//! route's tasks run in a `route` span (`route = NAME`), a connection's in
//! a `conn` span (`route`, `peer`, `role`). The text format prints them
//! before the message (`conn{route=q peer=10.0.0.1:5000 role=producer}:
//! producer closed reason=eof`); the JSON format puts their fields on the
//! line itself, next to the event's own, so every line of a connection
//! carries `route`, `peer` and `role` as plain fields.

use std::fmt;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable; colours on a terminal.
    Text,
    /// One JSON object per line.
    Json,
}

/// The span of a route's tasks. At ERROR level so that it is on whenever
/// any event is: a warning must not lose its route because `info` is off.
pub fn route_span(name: &str) -> tracing::Span {
    tracing::error_span!("route", route = %name)
}

/// The span of one connection (inside its route's span): who the peer is
/// and what it is to the route (`client`, `producer`, `consumer`).
pub fn conn_span(peer: std::net::SocketAddr, role: &'static str) -> tracing::Span {
    tracing::error_span!("conn", peer = %peer, role = %role)
}

/// Installs the global subscriber. `RUST_LOG` overrides `level`.
pub fn init(format: LogFormat, level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    match format {
        LogFormat::Json => builder
            .fmt_fields(JsonFields::new())
            .event_format(FlatJson)
            .init(),
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
    }
}

/// One JSON object per line: `timestamp`, `level`, `message`, then the
/// fields of every span in scope and the event's own (a field of an inner
/// span or of the event replaces an outer one of the same name).
struct FlatJson;

impl<S, N> FormatEvent<S, N> for FlatJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut line = Map::new();
        let mut timestamp = String::new();
        SystemTime.format_time(&mut Writer::new(&mut timestamp))?;
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let extensions = span.extensions();
                // JsonFields stores a span's fields as one JSON object.
                let Some(fields) = extensions.get::<FormattedFields<N>>() else {
                    continue;
                };
                if let Ok(Value::Object(fields)) = serde_json::from_str::<Value>(fields) {
                    line.extend(fields);
                }
            }
        }
        event.record(&mut JsonVisitor(&mut line));
        // Time, level and message first, for a human reading the file.
        write!(
            writer,
            "{{\"timestamp\":{},\"level\":{}",
            Value::String(timestamp),
            Value::String(event.metadata().level().as_str().into())
        )?;
        if let Some(message) = line.remove("message") {
            write!(writer, ",\"message\":{message}")?;
        }
        for (key, value) in line {
            write!(writer, ",{}:{value}", Value::String(key))?;
        }
        writeln!(writer, "}}")
    }
}

/// Records an event's fields into a JSON object.
struct JsonVisitor<'a>(&'a mut Map<String, Value>);

impl Visit for JsonVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0
            .insert(field.name().into(), Value::String(value.into()));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0
            .insert(field.name().into(), Value::String(value.to_string()));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().into(), Value::String(format!("{value:?}")));
    }
}

/// Lets one warning through per `every`; says how many were held back.
#[derive(Debug)]
pub struct RateLimited {
    every: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimited {
    pub fn new(every: Duration) -> Self {
        RateLimited {
            every,
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(suppressed_since_last)` when this occurrence should be logged.
    pub fn check(&mut self) -> Option<u64> {
        self.check_at(Instant::now())
    }

    pub fn check_at(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(t) if now.duration_since(t) < self.every => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// What the JSON format writes for `emit`, one parsed object per line.
    fn json_lines(emit: impl FnOnce()) -> Vec<Value> {
        let out = Arc::new(Mutex::new(Vec::<u8>::new()));
        let sink = Arc::clone(&out);
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || Capture(Arc::clone(&sink)))
            .fmt_fields(JsonFields::new())
            .event_format(FlatJson)
            .finish();
        tracing::subscriber::with_default(subscriber, emit);
        let text = String::from_utf8(out.lock().expect("lock").clone()).expect("utf-8");
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    }

    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Capture {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn json_lines_carry_the_fields_of_their_spans() {
        let peer: std::net::SocketAddr = "10.0.0.7:5000".parse().expect("addr");
        let lines = json_lines(|| {
            tracing::info!(pid = 1, "outside");
            route_span("web").in_scope(|| {
                conn_span(peer, "producer").in_scope(|| {
                    tracing::warn!(bytes = 5u64, ok = true, "closed \"here\"");
                })
            });
        });
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert_eq!(lines[0]["message"], "outside");
        assert_eq!(lines[0]["pid"], 1);
        assert!(lines[0].get("route").is_none());
        let l = &lines[1];
        assert_eq!(l["level"], "WARN");
        assert_eq!(l["message"], "closed \"here\"");
        assert_eq!(l["route"], "web");
        assert_eq!(l["peer"], "10.0.0.7:5000");
        assert_eq!(l["role"], "producer");
        assert_eq!(l["bytes"], 5);
        assert_eq!(l["ok"], true);
        assert!(l["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')));
    }

    #[test]
    fn rate_limit_counts_what_it_holds_back() {
        let mut r = RateLimited::new(Duration::from_secs(1));
        let t0 = Instant::now();
        assert_eq!(r.check_at(t0), Some(0));
        assert_eq!(r.check_at(t0 + Duration::from_millis(10)), None);
        assert_eq!(r.check_at(t0 + Duration::from_millis(20)), None);
        assert_eq!(r.check_at(t0 + Duration::from_secs(2)), Some(2));
    }
}
