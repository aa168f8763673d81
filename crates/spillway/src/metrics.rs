//! `/metrics`: the registry the components fill. It imports nothing of
//! the components, so each can use it; the process-wide families are in
//! [`crate::admin::process`] (`admin/process.rs`).
//!
//! The hot paths count into plain atomics on each component's stats
//! (a stream route's `RouteStats`, a queue route's `QueueStats`, the
//! spool's counters); nothing on them touches a registry. Each component
//! declares its metric families (a [`Family`]: name, help, type) in the
//! [`Registry`] passed to it at start, and registers a [`Source`] that
//! turns its atomics into series when Prometheus scrapes. Label values
//! other than route and upstream names come from enums (`as_str()`).
//!
//! A family can be filled by several components (`spillway_connections`
//! has stream clients and queue producers and consumers); the exposition
//! wants all of a family's series under its one descriptor, so a scrape
//! gathers the series per family ([`Scrape`]) and encodes them in the
//! order the families were declared.
//!
//! To add a metric: declare a [`Family`] next to the counters it reads,
//! add it to its component's `FAMILIES`, write its series in that
//! component's `collect`, and document it in the README's metrics table.

use std::collections::HashMap;
use std::fmt;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use spillway_spool::HistogramSnapshot;

/// A metric family: declared once, by the component whose counters fill
/// it.
#[derive(Debug)]
pub struct Family {
    pub name: &'static str,
    pub help: &'static str,
    pub ty: MetricType,
}

impl Family {
    pub const fn counter(name: &'static str, help: &'static str) -> Self {
        Family {
            name,
            help,
            ty: MetricType::Counter,
        }
    }

    pub const fn gauge(name: &'static str, help: &'static str) -> Self {
        Family {
            name,
            help,
            ty: MetricType::Gauge,
        }
    }

    pub const fn histogram(name: &'static str, help: &'static str) -> Self {
        Family {
            name,
            help,
            ty: MetricType::Histogram,
        }
    }
}

/// What a component adds to `/metrics` at each scrape.
pub trait Source: Send + Sync + 'static {
    /// Writes the current value of every series of the component's
    /// families.
    fn collect(&self, scrape: &mut Scrape);
}

/// The families of the process, in the order `/metrics` lists them, and
/// the sources that fill them.
#[derive(Default)]
pub struct Registry {
    families: Vec<&'static Family>,
    sources: Vec<Box<dyn Source>>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("families", &self.families.len())
            .field("sources", &self.sources.len())
            .finish()
    }
}

impl Registry {
    /// Declares `families`. A family that another component declared
    /// already (one that both fill) keeps its place.
    ///
    /// # Panics
    /// When a different family of the same name was declared: two
    /// components would describe one metric differently.
    pub fn declare(&mut self, families: &[&'static Family]) {
        for &f in families {
            match self.families.iter().find(|d| d.name == f.name) {
                Some(d) => assert!(
                    std::ptr::eq(*d, f),
                    "metric family {} declared twice, differently",
                    f.name
                ),
                None => self.families.push(f),
            }
        }
    }

    /// Adds a source; its series go to families declared with
    /// [`Registry::declare`].
    pub fn register(&mut self, source: impl Source) {
        self.sources.push(Box::new(source));
    }

    /// One scrape: every source's series, gathered per family.
    fn scrape(&self) -> Scrape {
        let mut scrape = Scrape {
            index: HashMap::with_capacity(self.families.len()),
            families: Vec::with_capacity(self.families.len()),
        };
        for &f in &self.families {
            scrape.index.insert(f.name, scrape.families.len());
            scrape.families.push((f, Vec::new()));
        }
        for s in &self.sources {
            s.collect(&mut scrape);
        }
        scrape
    }
}

impl Collector for Registry {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        for (family, series) in &self.scrape().families {
            let mut m = enc.encode_descriptor(family.name, family.help, None, family.ty)?;
            for s in series {
                s.encode(&mut m)?;
            }
        }
        Ok(())
    }
}

/// The series of one scrape, per family. Sources write into it; the
/// registry encodes it.
pub struct Scrape {
    index: HashMap<&'static str, usize>,
    families: Vec<(&'static Family, Vec<Series>)>,
}

/// Label pairs of a series: fixed keys; values are route and upstream
/// names or enum labels.
pub type Labels<'a> = [(&'static str, &'a str)];

struct Series {
    labels: Vec<(&'static str, String)>,
    value: Value,
}

enum Value {
    Counter(u64),
    Gauge(i64),
    GaugeF(f64),
    Histogram(HistogramSnapshot),
}

impl Series {
    fn encode(&self, m: &mut MetricEncoder) -> fmt::Result {
        // A series without labels is the family's only one: no `{}`.
        if self.labels.is_empty() {
            return self.value.encode(m);
        }
        self.value.encode(&mut m.encode_family(&self.labels)?)
    }
}

impl Value {
    fn encode(&self, m: &mut MetricEncoder) -> fmt::Result {
        match self {
            Value::Counter(v) => m.encode_counter::<NoLabelSet, _, f64>(v, None),
            Value::Gauge(v) => m.encode_gauge(v),
            Value::GaugeF(v) => m.encode_gauge(v),
            Value::Histogram(h) => {
                m.encode_histogram::<NoLabelSet>(h.sum, h.count, &h.buckets, None)
            }
        }
    }
}

impl Scrape {
    pub fn counter(&mut self, family: &'static Family, labels: &Labels<'_>, v: u64) {
        self.push(family, MetricType::Counter, labels, Value::Counter(v));
    }

    pub fn gauge(&mut self, family: &'static Family, labels: &Labels<'_>, v: u64) {
        // Gauges are exported as i64 where they fit (Prometheus reads floats).
        let v = i64::try_from(v).unwrap_or(i64::MAX);
        self.push(family, MetricType::Gauge, labels, Value::Gauge(v));
    }

    pub fn gauge_f(&mut self, family: &'static Family, labels: &Labels<'_>, v: f64) {
        self.push(family, MetricType::Gauge, labels, Value::GaugeF(v));
    }

    pub fn histogram(
        &mut self,
        family: &'static Family,
        labels: &Labels<'_>,
        h: HistogramSnapshot,
    ) {
        self.push(family, MetricType::Histogram, labels, Value::Histogram(h));
    }

    fn push(&mut self, family: &'static Family, ty: MetricType, labels: &Labels<'_>, value: Value) {
        debug_assert!(
            family.ty.as_str() == ty.as_str(),
            "{}: a {} series in a {} family",
            family.name,
            ty.as_str(),
            family.ty.as_str()
        );
        let i = match self.index.get(family.name) {
            Some(&i) => i,
            None => {
                // A source wrote a family nobody declared: a bug the tests
                // catch; in production the series still goes out, last.
                debug_assert!(false, "metric family {} not declared", family.name);
                self.index.insert(family.name, self.families.len());
                self.families.push((family, Vec::new()));
                self.families.len() - 1
            }
        };
        let labels = labels.iter().map(|&(k, v)| (k, v.to_string())).collect();
        self.families[i].1.push(Series { labels, value });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static A: Family = Family::counter("a", "A.");
    static B: Family = Family::gauge("b", "B.");
    static A2: Family = Family::counter("a", "Another A.");

    struct Fixed(&'static str);

    impl Source for Fixed {
        fn collect(&self, s: &mut Scrape) {
            s.counter(&A, &[("route", self.0)], 1);
        }
    }

    fn encode(r: Registry) -> String {
        let mut prom = prometheus_client::registry::Registry::default();
        prom.register_collector(Box::new(r));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &prom).expect("encode");
        out
    }

    #[test]
    fn series_of_several_sources_stay_under_one_descriptor_in_declared_order() {
        let mut r = Registry::default();
        r.declare(&[&A, &B]);
        r.register(Fixed("one"));
        r.declare(&[&A]);
        r.register(Fixed("two"));
        let out = encode(r);
        assert_eq!(
            out,
            "# HELP a A.\n# TYPE a counter\na_total{route=\"one\"} 1\na_total{route=\"two\"} 1\n\
             # HELP b B.\n# TYPE b gauge\n# EOF\n"
        );
    }

    #[test]
    #[should_panic(expected = "declared twice")]
    fn one_name_cannot_describe_two_families() {
        let mut r = Registry::default();
        r.declare(&[&A]);
        r.declare(&[&A2]);
    }
}
