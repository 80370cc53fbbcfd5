//! Metrics, at the bottom: one `prometheus_client` registry per role, into
//! which each module registers its own typed metrics, and the `GET /metrics`
//! server that encodes it. Hot paths count in plain atomics; their modules
//! read them into the exposition at scrape time through a `Collector`, so a
//! scrape never waits for (or asks) anything else.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
pub use prometheus_client::metrics::histogram::Histogram;
pub use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// A metric family's samples: label pairs and a value.
pub type Samples<'a, V> = Vec<(Vec<(&'static str, Cow<'a, str>)>, V)>;

/// Writes metric families into a scrape, from whatever a module counts.
pub struct Writer<'a, 'e> {
    encoder: &'a mut DescriptorEncoder<'e>,
}

/// A label value made safe for the text format (`\`, `"` and newlines escaped).
pub fn label(v: &str) -> Cow<'_, str> {
    if v.contains(['\\', '"', '\n']) { v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n").into() } else { v.into() }
}

impl Writer<'_, '_> {
    /// A counter; `name` without the `_total` the format adds.
    pub fn counter(&mut self, name: &str, help: &str, value: u64) -> fmt::Result {
        ConstCounter::new(value).encode(self.encoder.encode_descriptor(name, help, None, MetricType::Counter)?)
    }

    pub fn gauge(&mut self, name: &str, help: &str, value: i64) -> fmt::Result {
        ConstGauge::new(value).encode(self.encoder.encode_descriptor(name, help, None, MetricType::Gauge)?)
    }

    /// A counter family with labels.
    pub fn counters(&mut self, name: &str, help: &str, samples: Samples<'_, u64>) -> fmt::Result {
        let mut family = self.encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
        for (labels, v) in samples {
            ConstCounter::new(v).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }

    /// A latency histogram.
    pub fn histogram(&mut self, name: &str, help: &str, h: &Histogram) -> fmt::Result {
        h.encode(self.encoder.encode_descriptor(name, help, None, MetricType::Histogram)?)
    }

    /// A gauge family with labels.
    pub fn gauges(&mut self, name: &str, help: &str, samples: Samples<'_, i64>) -> fmt::Result {
        let mut family = self.encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
        for (labels, v) in samples {
            ConstGauge::new(v).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

/// Something that writes its metrics at each scrape.
pub trait Expose: Send + Sync + 'static {
    fn expose(&self, w: &mut Writer<'_, '_>) -> fmt::Result;
}

struct Exposed<T>(Arc<T>);

impl<T> fmt::Debug for Exposed<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Exposed")
    }
}

impl<T: Expose> Collector for Exposed<T> {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> fmt::Result {
        self.0.expose(&mut Writer { encoder: &mut encoder })
    }
}

/// What every role's process shows, whatever its role.
struct Process;

impl Expose for Process {
    fn expose(&self, w: &mut Writer<'_, '_>) -> fmt::Result {
        w.counter("vnamed_log_lines_suppressed", "Log lines dropped by the per-callsite flood limit.", crate::logs::suppressed())
    }
}

/// A role's registry, holding the process-wide metrics already.
pub fn registry() -> Registry {
    let mut r = Registry::default();
    register(&mut r, Arc::new(Process));
    r
}

/// Registers `source`, read at every scrape.
pub fn register<T: Expose>(registry: &mut Registry, source: Arc<T>) {
    registry.register_collector(Box::new(Exposed(source)));
}

/// A counter in a plain atomic, for hot paths.
#[derive(Debug, Default)]
pub struct Count(AtomicU64);

impl Count {
    pub fn inc(&self) {
        self.add(1);
    }

    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn sub(&self, n: u64) {
        self.0.fetch_sub(n, Ordering::Relaxed);
    }

    pub fn set(&self, n: u64) {
        self.0.store(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Responses for one virtual name, by RCODE: counted on the DNS path.
#[derive(Debug, Default)]
pub struct PoolCounters {
    rcodes: [Count; 16],
}

impl PoolCounters {
    pub fn response(&self, rcode: u16) {
        self.rcodes[(rcode & 0xf) as usize].inc();
    }

    /// The counts by RCODE (the low four bits).
    pub fn by_rcode(&self) -> impl Iterator<Item = (usize, u64)> + '_ {
        self.rcodes.iter().map(Count::get).enumerate()
    }
}

/// A histogram of latencies in seconds, from 0.5 ms to 1 s.
pub fn latency_histogram() -> Histogram {
    Histogram::new([0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0])
}

/// The RCODE mnemonics of RFC 1035 and RFC 2136, as dig prints them.
pub fn rcode_name(code: usize) -> Cow<'static, str> {
    const NAMES: [&str; 11] =
        ["NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "YXDOMAIN", "YXRRSET", "NXRRSET", "NOTAUTH", "NOTZONE"];
    NAMES.get(code).map(|n| Cow::Borrowed(*n)).unwrap_or_else(|| format!("RCODE{code}").into())
}

/// The registry in the text exposition format.
pub fn text(registry: &Registry) -> String {
    let mut out = String::new();
    if let Err(error) = prometheus_client::encoding::text::encode(&mut out, registry) {
        warn!(%error, "cannot encode metrics");
    }
    out
}

/// Serves `GET /metrics` from `registry` on connections from `listener`
/// (a `sys::accept::Gate`) until shutdown.
pub async fn serve<L>(listener: L, registry: Arc<Registry>, pages: axum::Router, shutdown: CancellationToken)
where
    L: axum::serve::Listener,
    L::Addr: fmt::Debug,
{
    use axum::routing::get;
    let app =
        pages.route(
            "/metrics",
            get(move || {
                let registry = registry.clone();
                async move {
                    ([(axum::http::header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text(&registry))
                }
            }),
        );
    if let Err(error) = axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await {
        warn!(%error, "metrics server stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Two;

    impl Expose for Two {
        fn expose(&self, w: &mut Writer<'_, '_>) -> fmt::Result {
            w.counter("vnamed_things", "Things.", 3)?;
            w.gauges("vnamed_level", "Levels.", vec![(vec![("name", label("a\"b\nc"))], 2)])
        }
    }

    #[test]
    fn modules_write_their_families_and_labels_are_escaped() {
        let mut r = Registry::default();
        register(&mut r, Arc::new(Two));
        let text = text(&r);
        assert!(text.contains("# TYPE vnamed_things counter\nvnamed_things_total 3\n"), "{text}");
        assert!(text.contains("vnamed_level{name=\"a\\\"b\\nc\"} 2\n"), "{text}");
        assert!(text.ends_with("# EOF\n"));
        assert_eq!(rcode_name(3), "NXDOMAIN");
        assert_eq!(rcode_name(12), "RCODE12");
    }
}
