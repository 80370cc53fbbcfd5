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

/// The registry in the OpenMetrics 1.0.0 text format.
pub fn text(registry: &Registry) -> String {
    let mut out = String::new();
    if let Err(error) = prometheus_client::encoding::text::encode(&mut out, registry) {
        warn!(%error, "cannot encode metrics");
    }
    out
}

/// The two exposition formats a scraper can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `application/openmetrics-text; version=1.0.0`.
    OpenMetrics,
    /// `text/plain; version=0.0.4`, the Prometheus text format: what a
    /// scraper gets unless it prefers OpenMetrics.
    Prometheus,
}

impl Format {
    /// The format an `Accept` header prefers (RFC 9110 §12.5.1: the
    /// highest `q` wins, a tie goes to OpenMetrics); the Prometheus text
    /// format when there is no header or neither is acceptable.
    pub fn negotiate(accept: Option<&str>) -> Format {
        let (mut open, mut plain) = (0.0f32, 0.0f32);
        for range in accept.unwrap_or("").split(',') {
            let mut parts = range.split(';').map(str::trim);
            let kind = parts.next().unwrap_or("").to_ascii_lowercase();
            let q = parts
                .filter_map(|p| p.split_once('='))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("q"))
                .and_then(|(_, v)| v.trim().parse::<f32>().ok())
                .filter(|q| (0.0..=1.0).contains(q))
                .unwrap_or(1.0);
            match kind.as_str() {
                "application/openmetrics-text" => open = open.max(q),
                "text/plain" | "text/*" | "*/*" => plain = plain.max(q),
                _ => {}
            }
        }
        if open > 0.0 && open >= plain { Format::OpenMetrics } else { Format::Prometheus }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
        }
    }

    /// The registry in this format.
    pub fn encode(self, registry: &Registry) -> String {
        match self {
            Format::OpenMetrics => text(registry),
            Format::Prometheus => prometheus_text(&text(registry)),
        }
    }
}

/// OpenMetrics text rewritten in the Prometheus text format 0.0.4: a
/// counter's HELP and TYPE name its `_total` samples, `_created` samples,
/// UNIT lines and the `# EOF` end go (0.0.4 has none of them), `info` is a
/// gauge and `unknown` is `untyped`.
fn prometheus_text(open: &str) -> String {
    let mut out = String::with_capacity(open.len());
    let mut help: Option<&str> = None;
    let mut counter: Option<String> = None;
    for line in open.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            if let Some(h) = help.take() {
                out.push_str(h);
                out.push('\n');
            }
            help = Some(rest);
            counter = None;
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let (name, kind) = match kind {
                "counter" => (format!("{name}_total"), "counter"),
                "info" => (format!("{name}_info"), "gauge"),
                "unknown" => (name.to_owned(), "untyped"),
                other => (name.to_owned(), other),
            };
            if let Some(h) = help.take() {
                let text = h.split_once(' ').map_or("", |(_, t)| t);
                out.push_str(&format!("# HELP {name} {text}\n"));
            }
            out.push_str(&format!("# TYPE {name} {kind}\n"));
            counter = (kind == "counter").then(|| name.trim_end_matches("_total").to_owned() + "_created");
            continue;
        }
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(created) = &counter
            && line.strip_prefix(created.as_str()).is_some_and(|r| r.starts_with(['{', ' ']))
        {
            continue;
        }
        // An exemplar (` # {...} v`) has no place in 0.0.4.
        let sample = line.split_once(" # ").map_or(line, |(s, _)| s);
        out.push_str(sample);
        out.push('\n');
    }
    if let Some(h) = help {
        out.push_str(h);
        out.push('\n');
    }
    out
}

/// How long a clean stop waits for open connections (a status page's
/// event stream among them) before it closes them.
const STOP_GRACE: std::time::Duration = std::time::Duration::from_millis(500);

/// Where the metrics server takes its connections from (a listener with
/// a cap and timeouts: `sys::accept::Gate`).
pub trait Listener: Send + 'static {
    type Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static;

    /// The next connection, and who it is from.
    fn accept(&mut self) -> impl std::future::Future<Output = (Self::Io, std::net::SocketAddr)> + Send;

    /// How long a client has for its whole request header.
    fn header_timeout(&self) -> std::time::Duration;

    /// Counts a connection closed because its header came too slowly.
    fn slow(&self) -> Arc<Count>;
}

/// Serves `GET /metrics` from `registry`, and `pages`, on connections from
/// `gate` until shutdown, in the format the scraper's `Accept` header
/// prefers. A request header must arrive whole within the gate's
/// header timeout (hyper's header deadline); a client that trickles it
/// in is closed and counted.
pub async fn serve<L: Listener>(mut gate: L, registry: Arc<Registry>, pages: axum::Router, shutdown: CancellationToken) {
    use axum::http::{HeaderMap, header};
    use axum::routing::get;
    use hyper_util::rt::{TokioIo, TokioTimer};
    let app = pages.route(
        "/metrics",
        get(move |headers: HeaderMap| {
            let registry = registry.clone();
            async move {
                let format = Format::negotiate(headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()));
                ([(header::CONTENT_TYPE, format.content_type()), (header::VARY, "Accept")], format.encode(&registry))
            }
        }),
    );
    let service = hyper_util::service::TowerToHyperService::new(app);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(gate.header_timeout());
    let slow = gate.slow();
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            (stream, peer) = gate.accept() => {
                let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service.clone()));
                let slow = slow.clone();
                connections.spawn(async move {
                    if let Err(error) = connection.await {
                        if error.is_timeout() {
                            slow.inc();
                        }
                        tracing::debug!(%peer, %error, "HTTP connection closed");
                    }
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = shutdown.cancelled() => break,
        }
    }
    drop(gate);
    if tokio::time::timeout(STOP_GRACE, graceful.shutdown()).await.is_err() {
        tracing::debug!(open = connections.len(), "HTTP connections still open at stop; closing them");
    }
    connections.shutdown().await;
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

    #[test]
    fn the_accept_header_chooses_the_format() {
        use Format::*;
        // What Prometheus 2.x and 3.x send.
        let prometheus2 = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        let prometheus3 = "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.5,text/plain;version=0.0.4;q=0.3,*/*;q=0.2";
        assert_eq!(Format::negotiate(Some(prometheus2)), OpenMetrics);
        assert_eq!(Format::negotiate(Some(prometheus3)), OpenMetrics);
        assert_eq!(Format::negotiate(Some("text/plain;version=0.0.4")), Prometheus);
        assert_eq!(Format::negotiate(Some("text/plain;q=0.9, application/openmetrics-text;q=0.5")), Prometheus);
        assert_eq!(Format::negotiate(Some("Application/OpenMetrics-Text")), OpenMetrics);
        assert_eq!(Format::negotiate(Some("application/openmetrics-text;q=0")), Prometheus);
        assert_eq!(Format::negotiate(Some("*/*")), Prometheus);
        assert_eq!(Format::negotiate(Some("garbage;;q=x,,")), Prometheus);
        assert_eq!(Format::negotiate(None), Prometheus);
    }

    #[test]
    fn the_prometheus_text_names_counters_by_their_samples_and_has_no_eof() {
        let mut r = Registry::default();
        register(&mut r, Arc::new(Two));
        let h = latency_histogram();
        h.observe(0.003);
        r.register("vnamed_wait_seconds", "Waits.", h);
        let text = Format::Prometheus.encode(&r);
        assert!(text.contains("# HELP vnamed_things_total Things.\n# TYPE vnamed_things_total counter\nvnamed_things_total 3\n"), "{text}");
        assert!(text.contains("# HELP vnamed_level Levels.\n# TYPE vnamed_level gauge\n"), "{text}");
        assert!(text.contains("# TYPE vnamed_wait_seconds histogram\n"), "{text}");
        assert!(text.contains("vnamed_wait_seconds_bucket{le=\"0.005\"} 1\n"), "{text}");
        assert!(!text.contains("# EOF") && !text.contains("# UNIT") && !text.contains("_created"), "{text}");
        let open = "# HELP a_seconds A.\n# TYPE a_seconds counter\n# UNIT a_seconds seconds\na_seconds_total 1 # {id=\"x\"} 1\na_seconds_created 17\n# HELP b B.\n# TYPE b info\nb_info{v=\"1\"} 1\n# EOF\n";
        assert_eq!(
            prometheus_text(open),
            "# HELP a_seconds_total A.\n# TYPE a_seconds_total counter\na_seconds_total 1\n# HELP b_info B.\n# TYPE b_info gauge\nb_info{v=\"1\"} 1\n"
        );
    }
}
