//! `vnamed authority`: loads the zones, starts the updater, the DNS
//! listeners, NOTIFY, the zone watcher and the gRPC API, and stops them
//! in order on shutdown so that answers in flight finish and the zone
//! files are current.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::Config;
use crate::config::Scope;
use crate::dns::metrics::{DnsCounters, SnapshotMetrics};
use crate::dns::{self, DnsService, snapshot::Snapshot};
use crate::grpc::ReportCounters;
use crate::grpc::{AdminService, CountTooLarge, Credentials, Guard, RingService, StatusService};
use crate::srp::SrpCounters;
use crate::sys::accept::{Gate, Gates};
use crate::updater::UpdaterCounters;
use crate::updater::{Command, Updater};
use crate::zone;
use tonic::service::interceptor::InterceptedService;

/// How long answers in flight get to finish at shutdown.
const GRACE: Duration = Duration::from_secs(5);

/// A running authority: the handle tests and the demo use to reach it.
pub struct Authority {
    pub commands: mpsc::Sender<Command>,
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    pub dns: Vec<SocketAddr>,
    pub grpc: Option<SocketAddr>,
    pub metrics: Option<SocketAddr>,
    done: tokio::task::JoinHandle<()>,
}

impl Authority {
    /// Loads, binds and starts everything; every problem found on the way
    /// (config, zone files, addresses in use) is reported together.
    pub async fn start(config: &Config, config_path: Option<&Path>, shutdown: CancellationToken) -> anyhow::Result<Self> {
        Self::start_on(config, config_path, shutdown, |store| store).await
    }

    /// `start`, with the state store's writes going through `disk` (tests
    /// put a slow disk there; nothing else should).
    #[doc(hidden)]
    pub async fn start_on(
        config: &Config,
        config_path: Option<&Path>,
        shutdown: CancellationToken,
        disk: impl FnOnce(Arc<crate::state::Store>) -> Arc<dyn crate::state::Durable>,
    ) -> anyhow::Result<Self> {
        let auth = config.authority()?.clone();
        let mut problems: Vec<String> = Vec::new();
        let bound = Bound::bind(config, &auth, &mut problems).await;
        let mut counters = Counters::default();
        let snapshot = Arc::new(ArcSwap::from_pointee(Snapshot::default()));
        let (notify_tx, notify_rx) = mpsc::channel(1024);
        // With the zones loaded, the pools are checked against them even
        // when an address could not be bound, so every problem shows at once.
        let updater = start_updater(config, &auth, &snapshot, notify_tx, &mut counters, disk, &mut problems).await;
        if !problems.is_empty() {
            anyhow::bail!("cannot start the authority:\n  - {}", problems.join("\n  - "));
        }
        let Bound { listeners, metrics, grpc, srp_sockets, tls, workers } = bound;
        let (listeners, updater) = (listeners.expect("no problems"), updater.expect("no problems"));
        let boards = crate::catalog::Boards::new(crate::clock::instant());
        // The status page's boards, only when there is a page to show them.
        let updater = if metrics.is_some() { updater.with_board(boards.clone()) } else { updater };
        let (updater, driver) = match config.cluster.as_ref().filter(|c| c.shared()) {
            Some(c) => {
                let (updater, driver) = join_group(c, config, &auth, updater, &counters.cluster).await?;
                (updater, Some(driver))
            }
            None => (updater, None),
        };

        let dns_addrs = listeners.addrs.clone();
        let limits = crate::sys::accept::fitted(&auth.limits);
        let gates = Arc::new(Gates::default());
        let rrl = Arc::new(crate::dns::rrl::Rrl::new(&auth.rrl, crate::clock::instant()));
        let server = DnsService::start(
            listeners,
            snapshot.clone(),
            auth.allow_transfer.clone(),
            counters.dns.clone(),
            &limits,
            Some(rrl.clone()),
            &gates,
        )?;
        info!(addresses = ?dns_addrs, udp_workers = workers, zones = snapshot.load().zones.len(), "DNS authority serving");

        let (cmd_tx, cmd_rx) = mpsc::channel(1024);
        let (edit_tx, edit_rx) = mpsc::channel(256);
        let watcher = match crate::sys::watch::watch_matching(&auth.zones_dir, |p| p.extension().is_some_and(|x| x == "zone"), edit_tx) {
            Ok(w) => Some(w),
            Err(error) => {
                warn!(%error, dir = %auth.zones_dir.display(), "cannot watch zones_dir; operator edits need a restart");
                None
            }
        };
        let mut tasks = tokio::task::JoinSet::new();
        let config_watcher = config_path.and_then(|path| watch_config(config, path, &cmd_tx, &mut tasks, &shutdown));
        let updater_stop = CancellationToken::new();
        let updater_task = tokio::spawn(updater.run(cmd_rx, edit_rx, updater_stop.clone()));
        if let Some(d) = driver {
            let (status, stop) = (counters.cluster.clone(), shutdown.clone());
            tasks.spawn(crate::cluster::driver::drive(d.etcd, d.requests, d.outcomes, d.events, status, d.name, stop));
        }
        let sources: Vec<_> = dns_addrs.iter().map(|a| a.ip()).filter(|ip| !ip.is_unspecified()).collect();
        tasks.spawn(dns::notify::run(auth.notify.clone(), sources, notify_rx, shutdown.child_token()));
        if let Some(srp) = &config.srp {
            tasks.spawn(crate::srp::server::run(srp.clone(), srp_sockets, snapshot.clone(), counters.srp.clone(), shutdown.clone()));
        }
        let metrics_addr = metrics.as_ref().and_then(|l| l.local_addr().ok());
        if let Some(listener) = metrics {
            info!(address = ?metrics_addr, "metrics serving at /metrics");
            let registry = counters.registry(config, &snapshot, &gates, &rrl);
            let gate = Gate::metrics(listener, &limits);
            gates.add(&gate);
            tasks.spawn(crate::metrics::serve(gate, Arc::new(registry), crate::page::router(boards), shutdown.clone()));
        }
        let grpc_addr = grpc.as_ref().and_then(|l| l.local_addr().ok());
        if let Some(listener) = grpc {
            let routes = api(&auth, &cmd_tx, &counters.report).await?;
            info!(address = ?grpc_addr, "gRPC API serving");
            let gate = Gate::grpc(listener, &limits);
            gates.add(&gate);
            let (idle, stop) = (limits.grpc_idle, shutdown.clone());
            tasks.spawn(async move {
                if let Err(error) = crate::grpc::serve::serve(gate, tls, routes, idle, stop).await {
                    warn!(%error, "gRPC server stopped");
                }
            });
        }

        let done = tokio::spawn(async move {
            shutdown.cancelled().await;
            info!("shutting down: finishing answers in flight");
            if tokio::time::timeout(GRACE, server.shutdown()).await.is_err() {
                warn!("DNS listeners did not stop within the grace period");
            }
            drop(watcher);
            drop(config_watcher);
            updater_stop.cancel();
            let _ = updater_task.await;
            let _ = tokio::time::timeout(GRACE, async { while tasks.join_next().await.is_some() {} }).await;
            info!("authority stopped");
        });
        Ok(Self { commands: cmd_tx, snapshot, dns: dns_addrs, grpc: grpc_addr, metrics: metrics_addr, done })
    }

    /// Waits until shutdown has finished.
    pub async fn wait(self) {
        let _ = self.done.await;
    }
}

/// Binds an optional TCP listener; a failure becomes one of the start-up problems.
async fn bind_optional(key: &str, addr: Option<SocketAddr>, problems: &mut Vec<String>) -> Option<TcpListener> {
    let addr = addr?;
    match TcpListener::bind(addr).await {
        Ok(l) => Some(l),
        Err(e) => {
            problems.push(format!("{key} {addr}: {e}"));
            None
        }
    }
}

/// Applies edits of the configuration file to the pools while serving. An
/// edit that does not parse or validate, has no `[authority]` section, or
/// would remove every pool is refused whole and logged; the `[authority]`
/// and `[srp]` sections need a restart.
async fn follow_config(
    path: PathBuf,
    mut restart_sections: (Option<crate::config::AuthorityConfig>, Option<crate::config::SrpConfig>),
    mut edits: mpsc::Receiver<PathBuf>,
    updater: mpsc::Sender<Command>,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            Some(_) = edits.recv() => {}
            _ = shutdown.cancelled() => return,
        }
        // Editors save in steps: let them finish, then read once.
        tokio::time::sleep(Duration::from_millis(50)).await;
        while edits.try_recv().is_ok() {}
        let config = match Config::read(&path) {
            Ok(c) => c,
            Err(e) => {
                error!(file = %path.display(), error = %e, "configuration edit refused; nothing changed");
                continue;
            }
        };
        // Never looser than start-up, and never everything at once: a file
        // caught half-written (or emptied) is far likelier than intent.
        if let Err(error) = config.authority() {
            error!(file = %path.display(), %error, "configuration edit refused: no [authority] section (a half-written file?); nothing changed");
            continue;
        }
        if config.pool.is_empty() {
            error!(
                file = %path.display(),
                "configuration edit refused: it would remove every pool (a half-written file?); nothing changed. \
                 Remove pools while keeping one, or restart with the new file"
            );
            continue;
        }
        let sections = (config.authority.clone(), config.srp.clone());
        if sections != restart_sections {
            warn!(file = %path.display(), "changes to [authority] and [srp] take effect at the next restart");
            restart_sections = sections;
        }
        let (tx, rx) = oneshot::channel();
        if updater.send(Command::Reconfigure { pools: config.pool, reply: tx }).await.is_err() {
            return;
        }
        match rx.await {
            Ok(Ok(())) => info!(file = %path.display(), "configuration edit applied"),
            Ok(Err(problems)) => {
                error!(file = %path.display(), problems = %problems.join("; "), "configuration edit refused; nothing changed")
            }
            Err(_) => return,
        }
    }
}

/// `vnamed authority --config FILE`.
pub async fn run(config: Config, path: &Path, shutdown: CancellationToken) -> anyhow::Result<()> {
    let authority = Authority::start(&config, Some(path), shutdown).await?;
    // What serves holds what it needs; the file's pools are not kept twice.
    drop(config);
    crate::sys::service::ready("serving DNS");
    authority.wait().await;
    Ok(())
}

/// The ring's server table as the store keeps it; from a store that has
/// none, the file earlier versions kept it in, taken into the store once.
fn ring_of(
    store: &crate::state::Store,
    loaded: &crate::state::Loaded,
    auth: &crate::config::AuthorityConfig,
) -> anyhow::Result<crate::ring::registry::Registry> {
    if let Some(text) = &loaded.ring {
        return crate::ring::registry::Registry::from_text(text)
            .map_err(|e| anyhow::anyhow!("{}: ring table: {e}", store.path().display()));
    }
    let file = auth.ring_table.clone().unwrap_or_else(|| auth.zones_dir.join(".vnamed-ring"));
    let ring = crate::ring::store::load(&file)?;
    if ring != crate::ring::registry::Registry::default() {
        store.write([&crate::state::Put::Ring(ring.to_text())])?;
        info!(file = %file.display(), "ring table taken into the state store");
    }
    Ok(ring)
}

/// The etcd driver's ends of its channels with the updater.
struct Driver {
    etcd: crate::cluster::etcd::Etcd,
    requests: mpsc::Receiver<crate::cluster::reconcile::Request>,
    outcomes: mpsc::Sender<crate::cluster::reconcile::Outcome>,
    events: mpsc::Sender<crate::cluster::Event>,
    name: String,
}

/// Joins the group of `[cluster]`: a group whose pools are not ours, or
/// credentials etcd refuses, stop the start; etcd out of reach does not
/// (the last state is served until it answers).
async fn join_group(
    c: &crate::config::ClusterConfig,
    config: &Config,
    auth: &crate::config::AuthorityConfig,
    updater: Updater,
    status: &Arc<crate::cluster::ClusterStatus>,
) -> anyhow::Result<(Updater, Driver)> {
    let fingerprint = crate::cluster::fingerprint(&config.pool);
    let etcd = crate::cluster::etcd::Etcd::connect(c, fingerprint.clone())
        .await
        .map_err(|e| anyhow::anyhow!("cannot start the authority: {e}"))?;
    match etcd.join().await {
        Ok(()) => info!(prefix = %c.prefix, endpoints = ?c.endpoints, "joined the group's shared state (etcd)"),
        Err(e @ (crate::cluster::ClusterError::Disagree { .. } | crate::cluster::ClusterError::Refused(_))) => {
            anyhow::bail!("cannot start the authority: {e}")
        }
        Err(e) => warn!(error = %e, "serving the last state until the group's shared state is reachable"),
    }
    // This authority's name in the group: its host and DNS address.
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let dns = auth.dns_listen.first().map(|a| a.to_string()).unwrap_or_default();
    let name = format!("{}@{dns}", host.trim()).replace('/', "_");
    let (requests_tx, requests) = mpsc::channel(crate::cluster::driver::QUEUE);
    let (outcomes, outcomes_rx) = mpsc::channel(crate::cluster::driver::QUEUE);
    let (events, events_rx) = mpsc::channel(1024);
    let group = crate::updater::Group { requests: requests_tx, events: Some(events_rx), outcomes: Some(outcomes_rx) };
    let updater = updater.with_group(group, name.clone(), fingerprint, status.clone());
    Ok((updater, Driver { etcd, requests, outcomes, events, name }))
}

/// Everything the authority binds at start, each problem noted.
struct Bound {
    listeners: Option<dns::Listeners>,
    metrics: Option<TcpListener>,
    grpc: Option<TcpListener>,
    srp_sockets: Vec<tokio::net::UdpSocket>,
    tls: Option<crate::grpc::tls::Reloading>,
    workers: usize,
}

impl Bound {
    async fn bind(config: &Config, auth: &crate::config::AuthorityConfig, problems: &mut Vec<String>) -> Self {
        let workers = match auth.udp_workers {
            0 => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            n => n,
        };
        let listeners = dns::bind(&auth.dns_listen, workers).await.map_err(|p| problems.extend(p)).ok();
        let metrics = bind_optional("metrics_listen", auth.metrics_listen, problems).await;
        let srp_sockets = match config.srp.as_ref().map(crate::srp::server::bind_at_start) {
            Some(Ok(s)) => s,
            Some(Err(p)) => {
                problems.push(p);
                Vec::new()
            }
            None => Vec::new(),
        };
        let grpc = bind_optional("grpc_listen", auth.grpc_listen, problems).await;
        // TLS material that does not load stops the start, like a bad file.
        let tls = auth
            .tls
            .as_ref()
            .map(crate::grpc::tls::Reloading::start)
            .transpose()
            .map_err(|e| problems.push(format!("authority.tls: {e}")))
            .ok()
            .flatten();
        Self { listeners, metrics, grpc, srp_sockets, tls, workers }
    }
}

/// What each part of the authority counts, for `/metrics`.
#[derive(Default)]
struct Counters {
    dns: Arc<DnsCounters>,
    updater: Arc<UpdaterCounters>,
    report: Arc<ReportCounters>,
    srp: Arc<SrpCounters>,
    state: Arc<crate::state::StateCounters>,
    cluster: Arc<crate::cluster::ClusterStatus>,
}

impl Counters {
    /// One registry for the role; each part brings its own metrics.
    fn registry(
        &self,
        config: &Config,
        snapshot: &Arc<ArcSwap<Snapshot>>,
        gates: &Arc<Gates>,
        rrl: &Arc<crate::dns::rrl::Rrl>,
    ) -> crate::metrics::Registry {
        let mut registry = crate::metrics::registry();
        crate::metrics::register(&mut registry, self.dns.clone());
        crate::metrics::register(&mut registry, self.updater.clone());
        crate::metrics::register(&mut registry, self.report.clone());
        crate::metrics::register(&mut registry, self.state.clone());
        if config.cluster.as_ref().is_some_and(|c| c.shared()) {
            crate::metrics::register(&mut registry, self.cluster.clone());
        }
        if config.srp.is_some() {
            crate::metrics::register(&mut registry, self.srp.clone());
        }
        crate::metrics::register(&mut registry, Arc::new(SnapshotMetrics(snapshot.clone())));
        crate::metrics::register(&mut registry, gates.clone());
        crate::metrics::register(&mut registry, rrl.clone());
        registry
    }
}

/// Opens the state store, loads the zones and the ring table, and starts
/// the updater on them; each problem noted. The store's counters are the
/// authority's from then on.
async fn start_updater(
    config: &Config,
    auth: &crate::config::AuthorityConfig,
    snapshot: &Arc<ArcSwap<Snapshot>>,
    notify: mpsc::Sender<(hickory_proto::rr::Name, u32)>,
    counters: &mut Counters,
    disk: impl FnOnce(Arc<crate::state::Store>) -> Arc<dyn crate::state::Durable>,
    problems: &mut Vec<String>,
) -> Option<Updater> {
    let files =
        zone::load_dir(&auth.zones_dir, auth.zone_file_limit).map_err(|errors| problems.extend(errors.iter().map(|e| e.to_string()))).ok();
    let state = match crate::state::Store::open(&auth.state_dir()) {
        Ok((store, loaded)) => Some((Arc::new(store), loaded)),
        Err(e) => {
            problems.push(format!("{e} (another authority using the same state_dir, or a damaged store: move it away to start afresh)"));
            None
        }
    };
    let ring = state.as_ref().and_then(|(store, loaded)| ring_of(store, loaded, auth).map_err(|e| problems.push(e.to_string())).ok());
    let (files, (store, saved), ring) = (files?, state?, ring?);
    info!(store = %store.path().display(), fresh = saved.fresh, "state store open");
    counters.state = store.counters.clone();
    let parts = crate::updater::Parts {
        store: disk(store),
        saved,
        ring,
        snapshot: snapshot.clone(),
        notify,
        counters: counters.updater.clone(),
        write_interval: auth.zone_write_interval,
        zone_file_limit: auth.zone_file_limit,
    };
    Updater::start(config, files, parts).await.map_err(|p| problems.extend(p)).ok()
}

/// Applies edits of the configuration file (and SIGHUP) while serving.
fn watch_config(
    config: &Config,
    path: &Path,
    commands: &mpsc::Sender<Command>,
    tasks: &mut tokio::task::JoinSet<()>,
    shutdown: &CancellationToken,
) -> Option<notify::RecommendedWatcher> {
    let (tx, rx) = mpsc::channel(16);
    let name = path.file_name().map(|n| n.to_owned());
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_owned();
    crate::sys::service::reload_on_hangup("configuration", path.to_owned(), tx.clone());
    match crate::sys::watch::watch_matching(&dir, move |p| p.file_name() == name.as_deref(), tx) {
        Ok(w) => {
            let sections = (config.authority.clone(), config.srp.clone());
            tasks.spawn(follow_config(path.to_owned(), sections, rx, commands.clone(), shutdown.clone()));
            Some(w)
        }
        Err(error) => {
            warn!(%error, file = %path.display(), "cannot watch the configuration; edits need a restart");
            None
        }
    }
}

/// The gRPC API: Admin, Status and Ring behind their credentials, the
/// standard health service and server reflection.
async fn api(
    auth: &crate::config::AuthorityConfig,
    commands: &mpsc::Sender<Command>,
    reports: &Arc<ReportCounters>,
) -> anyhow::Result<tonic::service::Routes> {
    let mutual = auth.tls.as_ref().is_some_and(|t| t.client_ca.is_some());
    let credentials = Arc::new(Credentials::new(auth.token.as_deref(), &auth.credential, mutual));
    let guard = |scope| Guard::new(scope, credentials.clone(), reports.clone());
    // Admin's read-only calls take any credential; it checks the rest.
    let admin = InterceptedService::new(AdminService::server(commands.clone()), Guard::any(credentials.clone(), reports.clone()));
    let status = CountTooLarge::new(
        InterceptedService::new(StatusService::server(commands.clone(), reports.clone()), guard(Scope::Report)),
        reports.clone(),
    );
    let ring = InterceptedService::new(RingService::server(commands.clone()), guard(Scope::Ring));
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::grpc::v1::DESCRIPTOR)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    // Many tools (grpcurl, grpcio) still ask the v1alpha service.
    let reflection_alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::grpc::v1::DESCRIPTOR)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<crate::grpc::v1::admin_server::AdminServer<AdminService>>().await;
    health.set_serving::<crate::grpc::v1::status_server::StatusServer<StatusService>>().await;
    Ok(tonic::service::Routes::new(health_service)
        .add_service(reflection)
        .add_service(reflection_alpha)
        .add_service(admin)
        .add_service(status)
        .add_service(ring))
}
