//! Counters the DNS path and the updater keep, and the Prometheus text
//! exposition of them at `metrics_listen` (`GET /metrics`).

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::dns::snapshot::Snapshot;
use crate::updater::Command;

/// Where a query was answered.
#[derive(Debug, Clone, Copy)]
pub enum Path {
    /// Pre-encoded response over UDP.
    UdpFast = 0,
    /// The hickory-server handler over UDP.
    UdpSlow = 1,
    Tcp = 2,
}

const PATHS: [&str; 3] = ["udp_fast", "udp", "tcp"];

#[derive(Debug, Default)]
pub struct Counters {
    /// Responses by path and RCODE (the low four bits).
    responses: [[AtomicU64; 16]; 3],
    /// Datagrams dropped: truncated, from port 0, or the slow queue full.
    pub udp_dropped: AtomicU64,
    pub answer_changes: AtomicU64,
    pub zone_writes: AtomicU64,
    pub zone_edits_refused: AtomicU64,
    pub reports_accepted: AtomicU64,
    /// From a report's arrival to the new answer being served.
    pub report_to_answer: Histogram,
    /// Refused report batches, by reason (see `REFUSALS`).
    reports_refused: [AtomicU64; REFUSALS.len()],
    /// The SRP responder's, when it runs.
    pub srp: crate::srp::SrpCounters,
}

/// Responses for one virtual name, by RCODE.
#[derive(Debug, Default)]
pub struct PoolCounters {
    rcodes: [AtomicU64; 16],
}

impl PoolCounters {
    pub fn response(&self, rcode: u16) {
        self.rcodes[(rcode & 0xf) as usize].fetch_add(1, Ordering::Relaxed);
    }
}

/// A latency histogram in milliseconds, Prometheus style.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS_MS.len()],
    count: AtomicU64,
    sum_us: AtomicU64,
}

const BUCKETS_MS: [f64; 11] = [0.5, 1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0];

impl Histogram {
    pub fn observe(&self, d: std::time::Duration) {
        let ms = d.as_secs_f64() * 1000.0;
        for (b, le) in self.buckets.iter().zip(BUCKETS_MS) {
            if ms <= le {
                b.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (b, le) in self.buckets.iter().zip(BUCKETS_MS) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{}\"}} {}", le / 1000.0, b.load(Ordering::Relaxed));
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum {}", self.sum_us.load(Ordering::Relaxed) as f64 / 1e6);
        let _ = writeln!(out, "{name}_count {count}");
    }
}

/// Reasons a report batch is refused.
pub const REFUSALS: [&str; 6] = ["too_large", "malformed", "bad_metric", "future", "unknown_member", "unauthenticated"];

impl Counters {
    pub fn response(&self, path: Path, rcode: u16) {
        self.responses[path as usize][(rcode & 0xf) as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn refused(&self, reason: &str) {
        if let Some(i) = REFUSALS.iter().position(|r| *r == reason) {
            self.reports_refused[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn refusals(&self, reason: &str) -> u64 {
        REFUSALS.iter().position(|r| *r == reason).map(|i| self.reports_refused[i].load(Ordering::Relaxed)).unwrap_or(0)
    }

    pub fn add_responses(&self, path: Path, rcode: u16, n: u64) {
        if n > 0 {
            self.responses[path as usize][(rcode & 0xf) as usize].fetch_add(n, Ordering::Relaxed);
        }
    }

    pub fn responses(&self, path: Path, rcode: u16) -> u64 {
        self.responses[path as usize][(rcode & 0xf) as usize].load(Ordering::Relaxed)
    }
}

/// The RCODE mnemonics of RFC 1035 and RFC 2136, as dig prints them.
fn rcode_name(code: usize) -> String {
    const NAMES: [&str; 11] =
        ["NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "YXDOMAIN", "YXRRSET", "NXRRSET", "NOTAUTH", "NOTZONE"];
    NAMES.get(code).map(|n| n.to_string()).unwrap_or_else(|| format!("RCODE{code}"))
}

/// Renders every metric in the Prometheus text format.
pub async fn render(counters: &Counters, snapshot: &ArcSwap<Snapshot>, updater: &mpsc::Sender<Command>) -> String {
    let mut out = String::new();
    out.push_str("# HELP vnamed_dns_responses_total DNS responses sent, by path and rcode.\n# TYPE vnamed_dns_responses_total counter\n");
    for (p, path) in PATHS.iter().enumerate() {
        for (code, n) in counters.responses[p].iter().enumerate() {
            let n = n.load(Ordering::Relaxed);
            if n > 0 {
                let _ = writeln!(out, "vnamed_dns_responses_total{{path=\"{path}\",rcode=\"{}\"}} {n}", rcode_name(code));
            }
        }
    }
    for (name, help, v) in [
        ("vnamed_dns_udp_dropped_total", "UDP datagrams dropped (truncated, bad source, slow path full).", &counters.udp_dropped),
        ("vnamed_answer_changes_total", "Times a virtual name's answer changed.", &counters.answer_changes),
        ("vnamed_zone_writes_total", "Zone file rewrites.", &counters.zone_writes),
        ("vnamed_zone_edits_refused_total", "Operator zone edits refused as invalid.", &counters.zone_edits_refused),
        ("vnamed_reports_accepted_total", "Member status reports stored.", &counters.reports_accepted),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}", v.load(Ordering::Relaxed));
    }
    out.push_str("# HELP vnamed_report_batches_refused_total Report batches refused, by reason.\n# TYPE vnamed_report_batches_refused_total counter\n");
    for (i, reason) in REFUSALS.iter().enumerate() {
        let _ = writeln!(
            out,
            "vnamed_report_batches_refused_total{{reason=\"{reason}\"}} {}",
            counters.reports_refused[i].load(Ordering::Relaxed)
        );
    }
    counters.srp.render(&mut out);
    counters.report_to_answer.render(
        &mut out,
        "vnamed_report_to_answer_seconds",
        "Time from a report's arrival to the answer it changed being served.",
    );
    out.push_str("# HELP vnamed_pool_responses_total DNS responses for virtual names, by pool and rcode.\n# TYPE vnamed_pool_responses_total counter\n");
    let snap = snapshot.load();
    let mut pools: Vec<_> = snap.zones.values().flat_map(|z| z.pools.values()).collect();
    pools.sort_by(|a, b| a.name.cmp(&b.name));
    for p in pools {
        for (code, n) in p.counters.rcodes.iter().enumerate() {
            let n = n.load(Ordering::Relaxed);
            if n > 0 {
                let _ = writeln!(out, "vnamed_pool_responses_total{{pool=\"{}\",rcode=\"{}\"}} {n}", p.name, rcode_name(code));
            }
        }
    }
    out.push_str("# HELP vnamed_zone_serial SOA serial served.\n# TYPE vnamed_zone_serial gauge\n");
    let mut zones: Vec<_> = snap.zones.values().collect();
    zones.sort_by(|a, b| a.data.origin.cmp(&b.data.origin));
    for z in zones {
        let _ = writeln!(out, "vnamed_zone_serial{{zone=\"{}\"}} {}", z.data.origin, z.serial);
    }
    let (tx, rx) = oneshot::channel();
    if updater.send(Command::Status { reply: tx }).await.is_ok()
        && let Ok(pools) = rx.await
    {
        out.push_str("# HELP vnamed_member_up Whether a pool member is in service (1) or not (0).\n# TYPE vnamed_member_up gauge\n");
        out.push_str(
            "# HELP vnamed_member_in_answer Whether a pool member is in the current answer.\n# TYPE vnamed_member_in_answer gauge\n",
        );
        for p in &pools {
            for m in &p.members {
                let up = m.state.starts_with("up") as u8;
                let labels = format!("pool=\"{}\",member=\"{}\"", p.name, m.id);
                let _ = writeln!(out, "vnamed_member_up{{{labels}}} {up}");
                let _ = writeln!(out, "vnamed_member_in_answer{{{labels}}} {}", m.in_answer as u8);
            }
        }
    }
    out
}

/// Serves the authority's `GET /metrics` until shutdown.
pub async fn serve(
    listener: TcpListener,
    counters: Arc<Counters>,
    snapshot: Arc<ArcSwap<Snapshot>>,
    updater: mpsc::Sender<Command>,
    shutdown: CancellationToken,
) {
    let render = move || {
        let (counters, snapshot, updater) = (counters.clone(), snapshot.clone(), updater.clone());
        async move { render(&counters, &snapshot, &updater).await }
    };
    serve_text(listener, render, shutdown).await
}

/// Serves `GET /metrics` with what `render` returns, until shutdown.
pub async fn serve_text<F, Fut>(listener: TcpListener, render: F, shutdown: CancellationToken)
where
    F: Fn() -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = String> + Send + 'static,
{
    use axum::routing::get;
    let app = axum::Router::new().route(
        "/metrics",
        get(move || {
            let render = render.clone();
            async move { ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], render().await) }
        }),
    );
    if let Err(error) = axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await {
        warn!(%error, "metrics server stopped");
    }
}
