//! The relay's own account of each connection, captured in-process: a
//! `tracing` layer keeps the `producer closed` / `consumer closed` lines
//! (peer, messages accepted, close reason, messages requeued) and every
//! warning and error of the route under test, stamped with the shared
//! event clock so they can be ordered against what the peers saw.
//!
//! The relay puts its context in spans, not on each event: a route's tasks
//! run in a `route` span (`route`), a connection's in a `conn` span
//! (`peer`, `role`). The layer keeps each span's fields and gives an event
//! those of every span in scope (as the relay's JSON log does), with the
//! connection's `peer` also under its role's name (`producer=` or
//! `consumer=`), which is how the checker looks connections up.
//!
//! `ROUTE_MODEL_LOG=1` also prints the relay's log to stderr.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// One clock for everything that happens in a case (receipts, peer
/// actions, incarnation ends, relay log lines): a total order of events
/// observed in this process, with no claim about real time.
static CLOCK: AtomicU64 = AtomicU64::new(1);

pub fn tick() -> u64 {
    CLOCK.fetch_add(1, Ordering::SeqCst)
}

#[derive(Clone, Debug)]
pub struct LogEvent {
    pub t: u64,
    /// The incarnation whose runtime emitted it (its threads are named
    /// `rm-inc<N>`).
    pub inc: Option<usize>,
    pub level: Level,
    pub message: String,
    pub fields: BTreeMap<String, String>,
}

impl LogEvent {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields.get(key).map(String::as_str)
    }

    pub fn num(&self, key: &str) -> Option<u64> {
        self.get(key).and_then(|v| v.parse().ok())
    }

    pub fn line(&self) -> String {
        let mut s = format!("{} {}", self.level, self.message);
        for (k, v) in &self.fields {
            let _ = write!(s, " {k}={v}");
        }
        s
    }
}

#[derive(Default)]
struct Fields {
    message: String,
    fields: BTreeMap<String, String>,
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let v = format!("{value:?}");
        if field.name() == "message" {
            self.message = v;
        } else {
            self.fields.insert(field.name().to_string(), v);
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_string();
        } else {
            self.fields
                .insert(field.name().to_string(), value.to_string());
        }
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.fields
            .insert(field.name().to_string(), value.to_string());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.fields
            .insert(field.name().to_string(), value.to_string());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.fields
            .insert(field.name().to_string(), value.to_string());
    }
}

/// Events by route name.
static EVENTS: OnceLock<Mutex<HashMap<String, Vec<LogEvent>>>> = OnceLock::new();

fn events() -> &'static Mutex<HashMap<String, Vec<LogEvent>>> {
    EVENTS.get_or_init(|| Mutex::new(HashMap::new()))
}

struct Capture;

/// The fields of a span, kept in its extensions.
struct SpanFields(BTreeMap<String, String>);

impl<S> Layer<S> for Capture
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut f = Fields::default();
        attrs.record(&mut f);
        span.extensions_mut().insert(SpanFields(f.fields));
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut f = Fields::default();
        values.record(&mut f);
        let mut ext = span.extensions_mut();
        match ext.get_mut::<SpanFields>() {
            Some(SpanFields(map)) => map.extend(f.fields),
            None => ext.insert(SpanFields(f.fields)),
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let level = *event.metadata().level();
        if level > Level::INFO {
            return;
        }
        let mut f = Fields::default();
        // The fields of the spans in scope, outermost first; the event's
        // own replace them.
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope.from_root() {
                if let Some(SpanFields(map)) = span.extensions().get::<SpanFields>() {
                    f.fields
                        .extend(map.iter().map(|(k, v)| (k.clone(), v.clone())));
                }
            }
        }
        event.record(&mut f);
        if let (Some(peer), Some(role)) = (f.fields.get("peer"), f.fields.get("role")) {
            if role == "producer" || role == "consumer" {
                let (k, v) = (role.clone(), peer.clone());
                f.fields.entry(k).or_insert(v);
            }
        }
        let Some(route) = f.fields.get("route").cloned() else {
            return;
        };
        let keep = level <= Level::WARN
            || f.message == "producer closed"
            || f.message == "consumer closed";
        if !keep {
            return;
        }
        let inc = std::thread::current()
            .name()
            .and_then(|n| n.strip_prefix("rm-inc"))
            .and_then(|n| n.parse().ok());
        let e = LogEvent {
            t: tick(),
            inc,
            level,
            message: f.message,
            fields: f.fields,
        };
        let mut all = events().lock().unwrap_or_else(|e| e.into_inner());
        all.entry(route).or_default().push(e);
    }
}

/// Installs the capturing subscriber once per test process.
pub fn install() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let print = std::env::var("ROUTE_MODEL_LOG").is_ok_and(|v| v != "0");
        let fmt = print.then(|| {
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_filter(tracing_subscriber::filter::LevelFilter::INFO)
        });
        let sub = tracing_subscriber::registry().with(Capture).with(fmt);
        let _ = tracing::subscriber::set_global_default(sub);
    });
}

/// Every event of `route` so far.
pub fn route_events(route: &str) -> Vec<LogEvent> {
    let all = events().lock().unwrap_or_else(|e| e.into_inner());
    all.get(route).cloned().unwrap_or_default()
}

/// Forgets `route`'s events (the end of a case).
pub fn forget(route: &str) {
    events()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(route);
}
