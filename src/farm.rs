//! `vnamed farm`: the intermediate monitor of one server farm. The farm's
//! monitors report to it; it keeps the latest state of each member, applies
//! the farm's local policy, and reports upward either the farm as one
//! entity (up while any member serves, answered by the local policy's
//! preferred servers) or each member as it is.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use crate::clock::Now;
use crate::config::Scope;
use crate::config::{Config, FarmConfig, FarmMode};
use crate::grpc::report;
use crate::grpc::v1::status_server::{Status as StatusApi, StatusServer};
use crate::grpc::v1::{MemberReport, ReportBatch, ReportReply};
use crate::grpc::{Bearer, Credentials, Guard, Ingest, ReplyStream, ReportCounters, report_stream};
use crate::monitor::{report_to, upstream_client};
use crate::pool::Table;
use crate::pool::{Report, ReportError};

struct Farm {
    name: String,
    mode: FarmMode,
    table: Mutex<Table>,
    version: watch::Sender<u64>,
}

impl Farm {
    /// The table; a batch refused halfway changes nothing, so a lock
    /// poisoned by a panic elsewhere still guards a consistent table.
    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stores a checked batch whole, or refuses it whole.
    fn store(&self, reports: Vec<Report>, now: Instant) -> Result<usize, ReportError> {
        let absorbed = self.table().absorb(reports, now)?;
        self.version.send_modify(|v| *v += 1);
        Ok(absorbed.count)
    }

    /// What goes upward now.
    fn batch(&self, now: Instant) -> ReportBatch {
        let reports = upward(&self.table(), &self.name, self.mode, now)
            .into_iter()
            .map(|r| MemberReport {
                pool: r.pool,
                member: r.member,
                up: r.up,
                metrics: r.metrics.pairs().map(|(k, v)| (k.to_owned(), v)).chain(r.custom).collect(),
                observed_unix_ms: 0,
                check: r.check,
                addresses: r.addresses.iter().map(|a| a.to_string()).collect(),
            })
            .collect();
        ReportBatch { source: self.name.clone(), reports }
    }
}

/// The reports a farm named `farm` sends upward from its table: each member
/// as it is, or the farm as one entity (up while any member serves, with
/// its preferred member's metrics and the local policy's order).
pub fn upward(table: &Table, farm: &str, mode: FarmMode, now: Instant) -> Vec<Report> {
    let mut out = Vec::new();
    for p in table.pools() {
        let pool = p.name.to_string();
        match mode {
            FarmMode::Members => {
                for m in p.members.iter().filter(|m| m.health.is_some()) {
                    out.push(Report {
                        pool: pool.clone(),
                        member: m.id.to_string(),
                        up: m.eligible(now, p.stale_after),
                        metrics: m.metrics,
                        custom: m.custom.clone(),
                        age: Duration::ZERO,
                        check: format!("farm {farm}"),
                        addresses: Vec::new(),
                        source: farm.into(),
                    });
                }
            }
            FarmMode::Entity => {
                if p.members.iter().all(|m| m.health.is_none()) {
                    continue; // nothing known yet: say nothing rather than "down"
                }
                let order = p.order(now);
                let best = order.first().and_then(|a| p.members.iter().find(|m| m.address == *a));
                out.push(Report {
                    pool,
                    member: farm.to_owned(),
                    up: !order.is_empty(),
                    metrics: best.map(|m| m.metrics).unwrap_or_default(),
                    custom: best.map(|m| m.custom.clone()).unwrap_or_default(),
                    age: Duration::ZERO,
                    check: format!("farm {farm} ({:?})", p.policy).to_ascii_lowercase(),
                    addresses: order,
                    source: farm.into(),
                });
            }
        }
    }
    out
}

#[derive(Clone)]
struct FarmService {
    farm: Arc<Farm>,
    counters: Arc<ReportCounters>,
}

#[tonic::async_trait]
impl StatusApi for FarmService {
    async fn report(&self, req: Request<ReportBatch>) -> Result<Response<ReportReply>, Status> {
        let accepted = self.ingest(req.into_inner()).await?;
        Ok(Response::new(ReportReply { accepted, code: 0, error: String::new() }))
    }

    type ReportStreamStream = ReplyStream;

    async fn report_stream(&self, req: Request<tonic::Streaming<ReportBatch>>) -> Result<Response<ReplyStream>, Status> {
        Ok(report_stream(self, req.into_inner()))
    }
}

impl Ingest for FarmService {
    async fn ingest(&self, batch: ReportBatch) -> Result<u32, Status> {
        let reports = report::decode(&batch, crate::clock::unix_ms()).map_err(|e| {
            self.counters.refused(e.reason());
            Status::invalid_argument(e.to_string())
        })?;
        let n = self.farm.store(reports, Instant::now()).map_err(|e| {
            self.counters.refused(e.reason());
            Status::not_found(e.to_string())
        })?;
        Ok(n as u32)
    }
}

/// `vnamed farm --config FILE`.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let Some(fc) = config.farm.clone() else {
        anyhow::bail!("[farm] section is required for this role");
    };
    start(fc, shutdown.clone()).await?;
    shutdown.cancelled().await;
    Ok(())
}

/// Starts the farm monitor; it stops when `shutdown` is cancelled.
pub async fn start(fc: FarmConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let (version, _) = watch::channel(0u64);
    let farm = Arc::new(Farm { name: fc.name.clone(), mode: fc.mode, table: Mutex::new(Table::new(&fc.pool, Now::read())), version });
    let listener = tokio::net::TcpListener::bind(fc.listen).await.map_err(|e| anyhow::anyhow!("farm.listen {}: {e}", fc.listen))?;
    let counters = Arc::new(ReportCounters::default());
    let svc = tonic::service::interceptor::InterceptedService::new(
        StatusServer::new(FarmService { farm: farm.clone(), counters: counters.clone() }),
        Guard::new(
            Scope::Report,
            Arc::new(Credentials::new(fc.accept_token.as_deref(), &[], fc.tls.as_ref().is_some_and(|t| t.client_ca.is_some()))),
            counters,
        ),
    );
    let stop = shutdown.clone();
    let limits = crate::sys::accept::fitted(&fc.limits);
    let gate = crate::sys::accept::Gate::grpc(listener, &limits);
    let tls = fc.tls.as_ref().map(crate::grpc::tls::Reloading::start).transpose().map_err(|e| anyhow::anyhow!("farm.tls: {e}"))?;
    tokio::spawn(async move {
        let routes = tonic::service::Routes::new(svc);
        if let Err(error) = crate::grpc::serve::serve(gate, tls, routes, limits.grpc_idle, stop).await {
            warn!(%error, "farm listener stopped");
        }
    });
    let bearer = Bearer::new(fc.token.as_deref())?;
    for upstream in &fc.report_to {
        let client = upstream_client(upstream, &bearer, &fc.client_tls)?;
        let batch = {
            let farm = farm.clone();
            move || farm.batch(Instant::now())
        };
        tokio::spawn(report_to(upstream.clone(), client, batch, farm.version.subscribe(), fc.refresh, shutdown.clone()));
    }
    info!(farm = %fc.name, listen = %fc.listen, mode = ?fc.mode, pools = fc.pool.len(), "farm monitor running");
    crate::sys::service::ready("farm monitor running");
    Ok(())
}
