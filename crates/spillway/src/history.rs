//! The last 15 minutes of each route, in the process: one sample a second
//! in a fixed ring per route, for the status page's sparklines and
//! `/status/history`. Nothing leaves the process and nothing grows: a
//! route's ring is [`SAMPLES`] samples of [`Sample`] (48 bytes), about
//! 42 KiB, allocated when the route is first sampled and dropped when the
//! route is gone; at most [`MAX_ROUTES`] routes are kept (about 10.5 MiB),
//! so a config with thousands of routes cannot grow the process without
//! bound.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// Samples kept per route: 15 minutes at one a second.
pub const SAMPLES: usize = 900;
/// Routes with a history; beyond this, new routes have none.
pub const MAX_ROUTES: usize = 256;
/// How often a sample is taken.
pub const INTERVAL: Duration = Duration::from_secs(1);

/// One second of one route. Rates are per second over the interval
/// before `t`: messages for a queue route, bytes for a stream route.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Sample {
    /// Unix time, seconds.
    pub t: u64,
    pub rate_in: f32,
    pub rate_out: f32,
    /// Queued messages in the memory tier and on disk (queue routes).
    pub depth_memory: u64,
    pub depth_disk: u64,
    /// Bytes of the disk tier (queue routes).
    pub disk_bytes: u64,
    /// Age of the oldest queued message, seconds (0: none queued).
    pub oldest_age: f32,
    /// Open connections: clients (stream), producers and consumers (queue).
    pub connections: u32,
}

/// One route read at one instant: its cumulative counters (messages or
/// bytes in and out) and the rest of its sample.
#[derive(Clone, Copy, Debug)]
pub struct Reading {
    pub input: u64,
    pub output: u64,
    pub sample: Sample,
}

#[derive(Clone, Copy)]
struct Totals {
    at: Instant,
    input: u64,
    output: u64,
}

struct RouteHistory {
    samples: VecDeque<Sample>,
    last: Option<Totals>,
}

/// Every route's ring, behind one lock taken once a second by the sampler
/// and by each history request.
#[derive(Default)]
pub struct History {
    routes: Mutex<HashMap<String, RouteHistory>>,
}

impl History {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, RouteHistory>> {
        // Each update is a push and a pop: a panic cannot leave a ring
        // half-written in a way that matters.
        self.routes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds one sample per route read at `now`, and forgets the routes
    /// not among them (gone).
    pub fn sample(&self, readings: &[(String, Reading)], now: Instant) {
        let mut map = self.lock();
        map.retain(|name, _| readings.iter().any(|(r, _)| r == name));
        for (name, reading) in readings {
            if !map.contains_key(name) && map.len() >= MAX_ROUTES {
                continue;
            }
            let h = map.entry(name.clone()).or_insert_with(|| RouteHistory {
                samples: VecDeque::with_capacity(SAMPLES),
                last: None,
            });
            let mut sample = reading.sample;
            if let Some(last) = h.last {
                let secs = now.duration_since(last.at).as_secs_f64();
                if secs > 0.0 {
                    // A counter that went down (a route replaced with fresh
                    // counters) gives 0, not a huge rate.
                    let rate = |now: u64, before: u64| now.saturating_sub(before) as f64 / secs;
                    sample.rate_in = rate(reading.input, last.input) as f32;
                    sample.rate_out = rate(reading.output, last.output) as f32;
                }
            }
            h.last = Some(Totals {
                at: now,
                input: reading.input,
                output: reading.output,
            });
            if h.samples.len() == SAMPLES {
                h.samples.pop_front();
            }
            h.samples.push_back(sample);
        }
    }

    /// `route`'s samples newer than `since` (unix seconds), oldest first.
    pub fn samples(&self, route: &str, since: u64) -> Option<Vec<Sample>> {
        let map = self.lock();
        let h = map.get(route)?;
        Some(h.samples.iter().filter(|s| s.t > since).copied().collect())
    }

    /// The routes with a history.
    pub fn routes(&self) -> Vec<String> {
        let mut v: Vec<String> = self.lock().keys().cloned().collect();
        v.sort();
        v
    }

    /// `/status/history`: every route (or `only`), samples newer than
    /// `since`, as columns (one array per field: compact, and what a
    /// sparkline wants).
    pub fn render(&self, only: Option<&str>, since: u64) -> Value {
        let names = match only {
            Some(r) => vec![r.to_string()],
            None => self.routes(),
        };
        let mut routes = serde_json::Map::new();
        for name in names {
            // A route asked for by name that has no sample yet (it just
            // started) has empty columns.
            let samples = match (self.samples(&name, since), only) {
                (Some(s), _) => s,
                (None, Some(_)) => Vec::new(),
                (None, None) => continue,
            };
            routes.insert(name, columns(&samples));
        }
        json!({
            "interval_seconds": INTERVAL.as_secs(),
            "samples_kept": SAMPLES,
            "now": crate::units::since_epoch().as_secs(),
            "routes": routes,
        })
    }
}

fn columns(samples: &[Sample]) -> Value {
    let col =
        |f: &dyn Fn(&Sample) -> Value| -> Value { Value::Array(samples.iter().map(f).collect()) };
    // Rates and ages to 3 significant decimals: enough for a sparkline,
    // and a fraction of the bytes.
    let round = |x: f32| -> Value {
        let r = (f64::from(x) * 1000.0).round() / 1000.0;
        json!(r)
    };
    json!({
        "t": col(&|s| json!(s.t)),
        "rate_in": col(&|s| round(s.rate_in)),
        "rate_out": col(&|s| round(s.rate_out)),
        "depth_memory": col(&|s| json!(s.depth_memory)),
        "depth_disk": col(&|s| json!(s.depth_disk)),
        "disk_bytes": col(&|s| json!(s.disk_bytes)),
        "oldest_age": col(&|s| round(s.oldest_age)),
        "connections": col(&|s| json!(s.connections)),
    })
}

/// Connection closes a route keeps for the status page.
pub const CLOSES_KEPT: usize = 50;

/// Numbers every close of the process, so a reader asks for the ones after
/// the last it saw (`/status/history?closes_after=ID`).
static NEXT_CLOSE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// One connection's end.
#[derive(Clone, Debug)]
pub struct Close {
    /// Increasing across the process.
    pub id: u64,
    /// Unix seconds.
    pub at: u64,
    pub peer: std::net::SocketAddr,
    /// `client`, `producer` or `consumer`.
    pub role: &'static str,
    pub reason: &'static str,
}

/// The last [`CLOSES_KEPT`] closes of a route, newest last.
#[derive(Debug, Default)]
pub struct Closes(Mutex<VecDeque<Close>>);

impl Closes {
    pub fn push(&self, peer: std::net::SocketAddr, role: &'static str, reason: &'static str) {
        let mut q = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if q.len() == CLOSES_KEPT {
            q.pop_front();
        }
        q.push_back(Close {
            id: NEXT_CLOSE.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            at: crate::units::since_epoch().as_secs(),
            peer,
            role,
            reason,
        });
    }

    pub fn list(&self) -> Vec<Close> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    /// The closes numbered after `after`, as `/status/history` lists them.
    pub fn render(&self, after: u64) -> Value {
        Value::Array(
            self.list()
                .iter()
                .filter(|c| c.id > after)
                .map(|c| {
                    json!({"id": c.id, "at": c.at, "peer": c.peer.to_string(),
                           "role": c.role, "reason": c.reason})
                })
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sample_is_48_bytes_and_a_ring_holds_15_minutes() {
        assert_eq!(std::mem::size_of::<Sample>(), 48);
        assert_eq!(SAMPLES as u64 * INTERVAL.as_secs(), 15 * 60);
    }

    fn reading(input: u64, output: u64, t: u64) -> Reading {
        Reading {
            input,
            output,
            sample: Sample {
                t,
                depth_disk: t,
                ..Sample::default()
            },
        }
    }

    #[test]
    fn rates_come_from_counters_and_the_ring_keeps_the_last_15_minutes() {
        let h = History::default();
        let t0 = Instant::now();
        for i in 0..1000u64 {
            let now = t0 + Duration::from_secs(i);
            // 100 in and 50 out a second; "b" restarts its counters at 500.
            let b_in = if i < 500 { i * 10 } else { (i - 500) * 10 };
            h.sample(
                &[
                    ("a".into(), reading(i * 100, i * 50, 1_000 + i)),
                    ("b".into(), reading(b_in, 0, 1_000 + i)),
                ],
                now,
            );
        }
        let a = h.samples("a", 0).expect("a");
        assert_eq!(a.len(), SAMPLES);
        assert_eq!(a[0].t, 1_000 + 100, "the oldest 100 seconds are gone");
        assert!(a.iter().all(|s| s.rate_in == 100.0 && s.rate_out == 50.0));
        let b = h.samples("b", 0).expect("b");
        let at_restart = b.iter().find(|s| s.t == 1_500).expect("t=1500");
        assert_eq!(
            at_restart.rate_in, 0.0,
            "a counter that went down is no rate"
        );
        // Only newer samples, and a route that is gone is forgotten.
        assert_eq!(h.samples("a", 1_997).expect("a").len(), 2);
        h.sample(
            &[("a".into(), reading(0, 0, 2_000))],
            t0 + Duration::from_secs(1000),
        );
        assert!(h.samples("b", 0).is_none());
        assert_eq!(h.routes(), vec!["a".to_string()]);
    }

    #[test]
    fn at_most_max_routes_have_a_history() {
        let h = History::default();
        let readings: Vec<(String, Reading)> = (0..MAX_ROUTES + 10)
            .map(|i| (format!("r{i:04}"), reading(0, 0, 1)))
            .collect();
        h.sample(&readings, Instant::now());
        assert_eq!(h.routes().len(), MAX_ROUTES);
    }

    #[test]
    fn closes_keep_the_last_50() {
        let c = Closes::default();
        let peer: std::net::SocketAddr = "127.0.0.1:9".parse().expect("addr");
        for _ in 0..60 {
            c.push(peer, "client", "client_eof");
        }
        c.push(peer, "client", "upstream_reset");
        let l = c.list();
        assert_eq!(l.len(), CLOSES_KEPT);
        assert_eq!(l.last().map(|c| c.reason), Some("upstream_reset"));
    }

    #[test]
    fn columns_are_one_array_per_field() {
        let s = |t, r| Sample {
            t,
            rate_in: r,
            connections: 2,
            ..Sample::default()
        };
        let v = columns(&[s(10, 1.5), s(11, 2.25)]);
        assert_eq!(v["t"], json!([10, 11]));
        assert_eq!(v["rate_in"], json!([1.5, 2.25]));
        assert_eq!(v["connections"], json!([2, 2]));
    }
}
