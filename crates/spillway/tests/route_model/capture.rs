//! The relay's own account of each connection, captured in-process: a
//! `tracing` layer keeps the `producer closed` / `consumer closed` lines
//! (peer, messages accepted, close reason, messages requeued) and every
//! warning and error of the route under test, stamped with the shared
//! event clock so they can be ordered against what the peers saw.
//!
//! `ROUTE_MODEL_LOG=1` also prints the relay's log to stderr.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
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

impl<S: Subscriber> Layer<S> for Capture {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let level = *event.metadata().level();
        if level > Level::INFO {
            return;
        }
        let mut f = Fields::default();
        event.record(&mut f);
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
