//! `vnamed monitor`: the per-host monitor. It runs the host's status
//! objects (checks), each on its own interval, turns their results into one
//! report per pool member (up only when every check of it is up, metrics
//! merged), and sends the latest state to every upstream (authorities or a
//! farm monitor) on each change and on a periodic refresh, reconnecting with
//! backoff. Only the latest state is held; nothing queues. It also accepts
//! metrics that applications push, and can probe legacy servers that run
//! no monitor of their own (checks naming another `member`).

pub mod health;
pub mod probe;
pub mod tcp_table;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use crate::config::{CheckConfig, CheckKind, ClientTls, Config, MonitorConfig};
use crate::grpc::report;
use crate::grpc::v1::status_client::StatusClient;
use crate::grpc::v1::status_server::{Status as StatusApi, StatusServer};
use crate::grpc::v1::{MemberReport, ReportBatch, ReportReply};
use crate::grpc::{Bearer, Ingest, ReplyStream, report_stream, v1};
use crate::metrics::{Expose, Writer, label};
use health::{Health, Probe};

/// Longest wait between two attempts to reach an upstream.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The latest result of one check.
#[derive(Debug, Clone)]
struct CheckState {
    pool: String,
    member: String,
    name: String,
    up: Option<bool>,
    metrics: Vec<(String, f64)>,
    observed_unix_ms: i64,
}

/// Metrics an application pushed, with when they arrived.
#[derive(Debug, Clone)]
struct Pushed {
    at: Instant,
    up: bool,
    metrics: Vec<(String, f64)>,
}

struct Shared {
    host: String,
    checks: Mutex<Vec<CheckState>>,
    pushed: Mutex<HashMap<(String, String), Pushed>>,
    /// One per check: wakes a push check as soon as something is pushed.
    wake: Vec<tokio::sync::Notify>,
    version: watch::Sender<u64>,
}

impl Shared {
    /// One report per member from the latest state of its checks.
    fn batch(&self) -> ReportBatch {
        let checks = self.checks.lock().expect("not poisoned");
        let mut members: BTreeMap<(&str, &str), MemberReport> = BTreeMap::new();
        for c in checks.iter() {
            let Some(up) = c.up else { continue };
            let r = members.entry((&c.pool, &c.member)).or_insert_with(|| MemberReport {
                pool: c.pool.clone(),
                member: c.member.clone(),
                up: true,
                metrics: HashMap::new(),
                observed_unix_ms: c.observed_unix_ms,
                check: String::new(),
                addresses: Vec::new(),
            });
            r.up &= up;
            r.observed_unix_ms = r.observed_unix_ms.min(c.observed_unix_ms);
            if !r.check.is_empty() {
                r.check.push(',');
            }
            r.check.push_str(&c.name);
            for (k, v) in &c.metrics {
                r.metrics.insert(k.clone(), *v);
            }
        }
        ReportBatch { source: self.host.clone(), reports: members.into_values().collect() }
    }
}

/// A Prometheus label value.
impl Expose for Shared {
    /// Each check's state, once it has a result.
    fn expose(&self, w: &mut Writer<'_, '_>) -> std::fmt::Result {
        let checks = self.checks.lock().unwrap_or_else(|e| e.into_inner());
        let samples = checks
            .iter()
            .filter_map(|c| {
                let up = c.up?;
                Some((vec![("pool", label(&c.pool)), ("member", label(&c.member)), ("check", label(&c.name))], i64::from(up)))
            })
            .collect();
        w.gauges(
            "vnamed_monitor_check_up",
            "1 when the check passes (rise/fall applied), 0 when not; absent before its first result.",
            samples,
        )
    }
}

fn check_name(c: &CheckConfig) -> String {
    format!("{:?}:{}", c.kind, c.target.as_deref().unwrap_or("")).to_ascii_lowercase()
}

/// `vnamed monitor --config FILE`.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let Some(mc) = config.monitor.clone() else {
        anyhow::bail!("[monitor] section is required for this role");
    };
    let limits = crate::sys::accept::fitted(&mc.limits);
    let metrics = match mc.metrics_listen {
        Some(addr) => Some(tokio::net::TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("monitor.metrics_listen {addr}: {e}"))?),
        None => None,
    };
    let counters = Arc::new(crate::ring::driver::RingCounters::default());
    let ring = config.ring.clone().map(|rc| {
        tokio::spawn(crate::grpc::ring::run_member(
            rc,
            mc.report_to.clone(),
            mc.token.clone(),
            mc.client_tls.clone(),
            counters.clone(),
            tokio::sync::watch::channel(false).0,
            shutdown.clone(),
        ))
    });
    let has_ring = ring.is_some();
    let monitor = Monitor::start(mc, &limits, shutdown.clone()).await?;
    let srp_counters = Arc::new(crate::srp::SrpCounters::default());
    if let Some(srp) = config.srp.clone() {
        let sockets = crate::srp::server::bind_at_start(&srp).map_err(anyhow::Error::msg)?;
        let snapshot = Arc::new(arc_swap::ArcSwap::from_pointee(crate::dns::snapshot::Snapshot::default()));
        tokio::spawn(serve_checks(monitor.shared.clone(), snapshot.clone(), shutdown.clone()));
        tokio::spawn(crate::srp::server::run(srp, sockets, snapshot, srp_counters.clone(), shutdown.clone()));
    }
    if let Some(listener) = metrics {
        let gates = Arc::new(crate::sys::accept::Gates::default());
        let gate = crate::sys::accept::Gate::metrics(listener, &limits);
        gates.add(&gate);
        let mut registry = crate::metrics::registry();
        crate::metrics::register(&mut registry, gates);
        crate::metrics::register(&mut registry, monitor.shared.clone());
        if has_ring {
            crate::metrics::register(&mut registry, counters);
        }
        if config.srp.is_some() {
            crate::metrics::register(&mut registry, srp_counters);
        }
        tokio::spawn(crate::metrics::serve(gate, Arc::new(registry), axum::Router::new(), shutdown.clone()));
    }
    shutdown.cancelled().await;
    monitor.stop().await;
    if let Some(ring) = ring {
        ring.await??;
    }
    Ok(())
}

/// Keeps the SRP responder's view of this host's members current: a
/// member serves its instances while all its checks pass, on the port its
/// checks report as `tcp_port` when they do.
async fn serve_checks(shared: Arc<Shared>, snapshot: Arc<arc_swap::ArcSwap<crate::dns::snapshot::Snapshot>>, shutdown: CancellationToken) {
    use crate::dns::snapshot::{Preferred, Snapshot};
    let mut changes = shared.version.subscribe();
    loop {
        let mut preferred: HashMap<String, Vec<Preferred>> = HashMap::new();
        for r in shared.batch().reports.into_iter().filter(|r| r.up) {
            let tcp_port = r.metrics.get("tcp_port").filter(|p| **p >= 1.0 && **p <= 65535.0).map(|p| *p as u16);
            let address = std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED);
            preferred.entry(r.pool.trim_end_matches('.').to_ascii_lowercase()).or_default().push(Preferred {
                id: r.member.into(),
                address,
                tcp_port,
            });
        }
        let snap = Snapshot { preferred: Arc::new(preferred.into_iter().map(|(k, v)| (k, v.into())).collect()), ..Default::default() };
        snapshot.store(Arc::new(snap));
        tokio::select! {
            r = changes.changed() => if r.is_err() { return },
            _ = shutdown.cancelled() => return,
        }
    }
}

/// What the monitor tells about its host: its connections that still carry packets.
struct HostService;

#[tonic::async_trait]
impl crate::grpc::v1::host_server::Host for HostService {
    async fn connections(&self, req: Request<v1::ConnectionsRequest>) -> Result<Response<v1::ConnectionsReply>, Status> {
        let req = req.into_inner();
        let local: std::net::Ipv4Addr =
            req.local.parse().map_err(|_| Status::invalid_argument(format!("local {:?} is not an IPv4 address", req.local)))?;
        let text = tokio::fs::read_to_string("/proc/net/tcp").await.map_err(|e| Status::unavailable(format!("/proc/net/tcp: {e}")))?;
        let connections = tcp_table::live(&text)
            .into_iter()
            .filter(|(l, _)| *l.ip() == local && (req.port == 0 || u32::from(l.port()) == req.port))
            .map(|(l, r)| v1::Connection { client: r.ip().to_string(), client_port: u32::from(r.port()), local_port: u32::from(l.port()) })
            .collect();
        Ok(Response::new(v1::ConnectionsReply { connections }))
    }
}

/// A running monitor.
pub struct Monitor {
    tasks: tokio::task::JoinSet<()>,
    shared: Arc<Shared>,
    pub push_addr: Option<std::net::SocketAddr>,
}

impl Monitor {
    /// Starts the checks and, with `listen`, the push listener under `limits`
    /// (the configured ones, fitted to the process's descriptors).
    pub async fn start(mc: MonitorConfig, limits: &crate::config::Limits, shutdown: CancellationToken) -> anyhow::Result<Self> {
        let (version, _) = watch::channel(0u64);
        let shared = Arc::new(Shared {
            host: mc.host.clone(),
            checks: Mutex::new(
                mc.check
                    .iter()
                    .map(|c| CheckState {
                        pool: c.pool.clone(),
                        member: c.member.clone().unwrap_or_else(|| mc.host.clone()),
                        name: check_name(c),
                        up: None,
                        metrics: Vec::new(),
                        observed_unix_ms: 0,
                    })
                    .collect(),
            ),
            pushed: Mutex::new(HashMap::new()),
            wake: mc.check.iter().map(|_| tokio::sync::Notify::new()).collect(),
            version,
        });
        let mut tasks = tokio::task::JoinSet::new();
        let mut push_addr = None;
        if let Some(addr) = mc.listen {
            let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("monitor.listen {addr}: {e}"))?;
            push_addr = Some(listener.local_addr()?);
            let svc = StatusServer::new(PushService { shared: shared.clone(), checks: Arc::new(mc.check.clone()) });
            let stop = shutdown.clone();
            let gate = crate::sys::accept::Gate::grpc(listener, limits);
            let idle = limits.grpc_idle;
            let tls =
                mc.tls.as_ref().map(crate::grpc::tls::Reloading::start).transpose().map_err(|e| anyhow::anyhow!("monitor.tls: {e}"))?;
            tasks.spawn(async move {
                let host = crate::grpc::v1::host_server::HostServer::new(HostService);
                let routes = tonic::service::Routes::new(svc).add_service(host);
                if let Err(error) = crate::grpc::serve::serve(gate, tls, routes, idle, stop).await {
                    warn!(%error, "push listener stopped");
                }
            });
        }
        for (i, c) in mc.check.iter().enumerate() {
            tasks.spawn(run_check(i, c.clone(), shared.clone(), shutdown.clone()));
        }
        let bearer = Bearer::new(mc.token.as_deref())?;
        for upstream in &mc.report_to {
            let client = upstream_client(upstream, &bearer, &mc.client_tls)?;
            let batch = {
                let shared = shared.clone();
                move || shared.batch()
            };
            tasks.spawn(report_to(upstream.clone(), client, batch, shared.version.subscribe(), mc.refresh, shutdown.clone()));
        }
        info!(host = %mc.host, checks = mc.check.len(), upstreams = mc.report_to.len(), push = ?push_addr, "monitor running");
        crate::sys::service::ready("monitoring");
        Ok(Self { tasks, shared, push_addr })
    }

    pub async fn stop(mut self) {
        while self.tasks.join_next().await.is_some() {}
    }
}

async fn run_check(i: usize, c: CheckConfig, shared: Arc<Shared>, shutdown: CancellationToken) {
    let mut health = Health::new(c.rise, c.fall);
    let mut tick = tokio::time::interval(c.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let target = c.target.clone().unwrap_or_default();
    let member = c.member.clone().unwrap_or_else(|| shared.host.clone());
    let process = probe::ProcessMatch::parse(&target);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shared.wake[i].notified() => {}
            _ = shutdown.cancelled() => return,
        }
        let result: Probe = match c.kind {
            CheckKind::Tcp => probe::tcp(&target, c.timeout).await,
            CheckKind::Http => probe::http(&target, c.timeout).await,
            CheckKind::Exec => probe::exec(&target, c.timeout).await,
            CheckKind::File => probe::file(&target).await,
            CheckKind::Process => probe::process(&process, Path::new("/proc")).await,
            CheckKind::Push => {
                let pushed = shared.pushed.lock().expect("not poisoned").get(&(c.pool.clone(), member.clone())).cloned();
                match pushed {
                    Some(p) if p.at.elapsed() <= c.interval * 3 => {
                        Probe { ok: p.up, metrics: p.metrics, error: (!p.up).then(|| "pushed down".into()) }
                    }
                    Some(_) => Probe::failed("pushes stopped"),
                    None => Probe::failed("nothing pushed yet"),
                }
            }
        };
        let changed = health.observe(result.ok);
        if changed {
            match (health.up(), &result.error) {
                (Some(true), _) => info!(pool = %c.pool, %member, check = %check_name(&c), "member up"),
                (_, Some(error)) => warn!(pool = %c.pool, %member, check = %check_name(&c), %error, "member down"),
                _ => warn!(pool = %c.pool, %member, check = %check_name(&c), "member down"),
            }
        }
        {
            let mut checks = shared.checks.lock().expect("not poisoned");
            let s = &mut checks[i];
            s.up = health.up();
            if result.ok || !result.metrics.is_empty() {
                s.metrics = result.metrics;
            }
            s.observed_unix_ms = crate::clock::unix_ms();
        }
        shared.version.send_modify(|v| *v += 1);
    }
}

/// A client for an upstream that connects (and reconnects) when used.
pub(crate) fn upstream_client(url: &str, bearer: &Bearer, tls: &ClientTls) -> anyhow::Result<Client> {
    let endpoint = crate::grpc::tls::endpoint(url, tls)
        .map_err(|e| anyhow::anyhow!("upstream {url:?}: {e}"))?
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(2));
    Ok(StatusClient::with_interceptor(endpoint.connect_lazy(), bearer.clone()))
}

pub(crate) type Client = StatusClient<tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Bearer>>;

/// Where reports go: an authority or farm monitor over gRPC (or, in
/// tests, a stand-in on a virtual clock).
pub(crate) trait Upstream: Send {
    fn send(&mut self, batch: ReportBatch) -> impl std::future::Future<Output = Result<(), Status>> + Send;
}

impl Upstream for Client {
    async fn send(&mut self, batch: ReportBatch) -> Result<(), Status> {
        self.report(batch).await.map(drop)
    }
}

/// Sends the latest state to one upstream on every change and every
/// `refresh`; while it cannot be reached, waits with growing backoff.
pub(crate) async fn report_to(
    upstream: String,
    mut client: impl Upstream,
    batch: impl Fn() -> ReportBatch,
    mut changes: watch::Receiver<u64>,
    refresh: Duration,
    shutdown: CancellationToken,
) {
    let mut backoff = crate::backoff::Backoff::new(Duration::from_millis(100), MAX_BACKOFF);
    loop {
        let batch = batch();
        if !batch.reports.is_empty() {
            match client.send(batch).await {
                Ok(_) => {
                    if backoff.failures() > 0 {
                        info!(%upstream, "reporting again");
                    }
                    backoff.reset();
                }
                Err(status) => {
                    if backoff.failures() == 0 {
                        warn!(%upstream, code = ?status.code(), message = status.message(), "report not delivered; retrying with backoff");
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(backoff.next_pause()) => {}
                        _ = shutdown.cancelled() => return,
                    }
                    continue;
                }
            }
        }
        tokio::select! {
            r = changes.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(refresh) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// Takes metrics that applications push to their host's monitor.
#[derive(Clone)]
struct PushService {
    shared: Arc<Shared>,
    checks: Arc<Vec<CheckConfig>>,
}

#[tonic::async_trait]
impl StatusApi for PushService {
    async fn report(&self, req: Request<v1::ReportBatch>) -> Result<Response<ReportReply>, Status> {
        let accepted = self.ingest(req.into_inner()).await?;
        Ok(Response::new(ReportReply { accepted, code: 0, error: String::new() }))
    }

    type ReportStreamStream = ReplyStream;

    async fn report_stream(&self, req: Request<tonic::Streaming<v1::ReportBatch>>) -> Result<Response<ReplyStream>, Status> {
        Ok(report_stream(self, req.into_inner()))
    }
}

impl Ingest for PushService {
    async fn ingest(&self, batch: v1::ReportBatch) -> Result<u32, Status> {
        let mut batch = batch;
        for r in &mut batch.reports {
            if r.member.is_empty() {
                r.member = self.shared.host.clone();
            }
        }
        let reports = report::decode(&batch, crate::clock::unix_ms()).map_err(|e| Status::invalid_argument(e.to_string()))?;
        for (index, r) in reports.iter().enumerate() {
            let known = self
                .checks
                .iter()
                .any(|c| c.kind == CheckKind::Push && c.pool == r.pool && c.member.as_deref().unwrap_or(&self.shared.host) == r.member);
            if !known {
                return Err(Status::not_found(format!(
                    "report {index}: no push check for pool {} member {} on this monitor",
                    r.pool, r.member
                )));
            }
        }
        let n = reports.len();
        let mut pushed = self.shared.pushed.lock().expect("not poisoned");
        for r in reports {
            let mut metrics: Vec<(String, f64)> = r.custom.into_iter().collect();
            metrics.extend(r.metrics.pairs().map(|(k, v)| (k.to_owned(), v)));
            pushed.insert((r.pool, r.member), Pushed { at: Instant::now(), up: r.up, metrics });
        }
        drop(pushed);
        for (i, c) in self.checks.iter().enumerate() {
            if c.kind == CheckKind::Push {
                self.shared.wake[i].notify_one();
            }
        }
        Ok(n as u32)
    }
}

#[cfg(test)]
mod report_tests {
    use super::*;

    /// An upstream that refuses the first `down` reports, and keeps when
    /// each arrived (on the virtual clock).
    struct Upstream {
        down: u32,
        at: Arc<Mutex<Vec<(tokio::time::Instant, bool)>>>,
    }

    impl super::Upstream for Upstream {
        async fn send(&mut self, _: ReportBatch) -> Result<(), Status> {
            let ok = self.down == 0;
            self.down = self.down.saturating_sub(1);
            self.at.lock().unwrap().push((tokio::time::Instant::now(), ok));
            if ok { Ok(()) } else { Err(Status::unavailable("restarting")) }
        }
    }

    fn batch() -> ReportBatch {
        ReportBatch {
            source: "web1".into(),
            reports: vec![MemberReport { pool: "www.example.".into(), member: "web1".into(), up: true, ..Default::default() }],
        }
    }

    /// An upstream that is down: retried with back-off (each pause at most
    /// the ceiling, which doubles), then every `refresh` once it answers,
    /// and at once on a change.
    #[tokio::test(start_paused = true)]
    async fn reports_retry_with_backoff_then_refresh_and_follow_changes() {
        let at: Arc<Mutex<Vec<(tokio::time::Instant, bool)>>> = Arc::new(Mutex::new(Vec::new()));
        let (version, changes) = watch::channel(0u64);
        let stop = CancellationToken::new();
        let upstream = Upstream { down: 4, at: at.clone() };
        let task = tokio::spawn(report_to("test".into(), upstream, batch, changes, Duration::from_secs(1), stop.clone()));
        let start = tokio::time::Instant::now();
        tokio::time::sleep(Duration::from_millis(4500)).await;
        let seen = at.lock().unwrap().clone();
        let gaps: Vec<Duration> = seen.windows(2).map(|w| w[1].0 - w[0].0).collect();
        assert_eq!(seen.iter().filter(|(_, ok)| !ok).count(), 4, "{seen:?}");
        for (i, gap) in gaps.iter().take(4).enumerate() {
            assert!(*gap <= Duration::from_millis(100) * (1 << i), "retry {i} waited {gap:?}");
        }
        // Answered: then a report every second.
        let first_ok = seen.iter().position(|(_, ok)| *ok).unwrap();
        assert!(seen[first_ok].0 - start < Duration::from_millis(1600), "{seen:?}");
        for gap in &gaps[first_ok..] {
            assert_eq!(*gap, Duration::from_secs(1), "{seen:?}");
        }
        // A change is reported at once, not at the next refresh (taken
        // between two refreshes).
        let last = at.lock().unwrap().last().unwrap().0;
        tokio::time::sleep_until(last + Duration::from_millis(300)).await;
        let before = at.lock().unwrap().len();
        let changed = tokio::time::Instant::now();
        version.send_replace(1);
        tokio::time::sleep(Duration::from_millis(1)).await;
        let seen = at.lock().unwrap().clone();
        assert_eq!(seen.len(), before + 1, "{seen:?}");
        assert!(seen[before].0 - changed < Duration::from_millis(1), "{:?}", seen[before].0 - changed);
        stop.cancel();
        task.await.unwrap();
    }
}
