//! `vnamed farm`: the intermediate monitor of one server farm. The farm's
//! monitors report to it; it keeps the latest state of each member, applies
//! the farm's local policy, and reports upward either the farm as one
//! entity (up while any member serves, answered by the local policy's
//! preferred servers) or each member as it is.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use crate::config::{Config, FarmConfig, FarmMode};
use crate::grpc::v1::status_server::{Status as StatusApi, StatusServer};
use crate::grpc::v1::{MemberReport, ReportBatch, ReportReply};
use crate::grpc::{Bearer, Ingest, ReplyStream, TokenCheck, report_stream};
use crate::metrics::Counters;
use crate::monitor::{report_to, upstream_client};
use crate::pool::PoolState;
use crate::report::{self, Report, ReportError};

struct Farm {
    name: String,
    mode: FarmMode,
    pools: Mutex<Vec<PoolState>>,
    version: watch::Sender<u64>,
}

impl Farm {
    /// Stores a checked batch whole, or refuses it whole.
    fn store(&self, reports: Vec<Report>, now: Instant) -> Result<usize, ReportError> {
        let mut pools = self.pools.lock().expect("not poisoned");
        let mut targets = Vec::with_capacity(reports.len());
        for (index, r) in reports.iter().enumerate() {
            let i = pools
                .iter()
                .position(|p| {
                    p.name.to_string().eq_ignore_ascii_case(&r.pool) || p.name.to_string().eq_ignore_ascii_case(&format!("{}.", r.pool))
                })
                .ok_or_else(|| ReportError::NoPool { index, pool: r.pool.clone() })?;
            let m = pools[i].position(&r.member).ok_or_else(|| ReportError::NoMember {
                index,
                pool: r.pool.clone(),
                member: r.member.clone(),
            })?;
            targets.push((i, m));
        }
        let n = reports.len();
        for (r, (i, m)) in reports.into_iter().zip(targets) {
            let smoothing = pools[i].smoothing;
            pools[i].members[m].absorb(r.up, r.metrics, r.custom, smoothing, now.checked_sub(r.age).unwrap_or(now));
        }
        drop(pools);
        self.version.send_modify(|v| *v += 1);
        Ok(n)
    }

    /// What goes upward now.
    fn batch(&self, now: Instant) -> ReportBatch {
        let pools = self.pools.lock().expect("not poisoned");
        let mut reports = Vec::new();
        for p in pools.iter() {
            match self.mode {
                FarmMode::Members => {
                    for m in p.members.iter().filter(|m| m.health.is_some()) {
                        reports.push(MemberReport {
                            pool: p.name.to_string(),
                            member: m.id.clone(),
                            up: m.eligible(now, p.stale_after),
                            metrics: m.metrics.pairs().map(|(k, v)| (k.to_owned(), v)).chain(m.custom.clone()).collect(),
                            observed_unix_ms: 0,
                            check: format!("farm {}", self.name),
                            addresses: Vec::new(),
                        });
                    }
                }
                FarmMode::Entity => {
                    if p.members.iter().all(|m| m.health.is_none()) {
                        continue; // nothing known yet: say nothing rather than "down"
                    }
                    let order = p.order(now);
                    // The farm's metrics to the global policy are its preferred member's.
                    let best = order.first().and_then(|a| p.members.iter().find(|m| m.address == *a));
                    reports.push(MemberReport {
                        pool: p.name.to_string(),
                        member: self.name.clone(),
                        up: !order.is_empty(),
                        metrics: best
                            .map(|m| m.metrics.pairs().map(|(k, v)| (k.to_owned(), v)).chain(m.custom.clone()).collect())
                            .unwrap_or_default(),
                        observed_unix_ms: 0,
                        check: format!("farm {} ({:?})", self.name, p.policy).to_ascii_lowercase(),
                        addresses: order.iter().map(|a| a.to_string()).collect(),
                    });
                }
            }
        }
        ReportBatch { source: self.name.clone(), reports }
    }
}

#[derive(Clone)]
struct FarmService {
    farm: Arc<Farm>,
    counters: Arc<Counters>,
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
    let farm = Arc::new(Farm {
        name: fc.name.clone(),
        mode: fc.mode,
        pools: Mutex::new(fc.pool.iter().map(|p| PoolState::from_config(p, Instant::now(), std::time::SystemTime::now())).collect()),
        version,
    });
    let listener = tokio::net::TcpListener::bind(fc.listen).await.map_err(|e| anyhow::anyhow!("farm.listen {}: {e}", fc.listen))?;
    let counters = Arc::new(Counters::default());
    let svc = tonic::service::interceptor::InterceptedService::new(
        StatusServer::new(FarmService { farm: farm.clone(), counters: counters.clone() }),
        TokenCheck::new(fc.accept_token.as_deref(), counters),
    );
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        if let Err(error) =
            tonic::transport::Server::builder().add_service(svc).serve_with_incoming_shutdown(incoming, stop.cancelled_owned()).await
        {
            warn!(%error, "farm listener stopped");
        }
    });
    let bearer = Bearer::new(fc.token.as_deref())?;
    for upstream in &fc.report_to {
        let client = upstream_client(upstream, &bearer)?;
        let batch = {
            let farm = farm.clone();
            move || farm.batch(Instant::now())
        };
        tokio::spawn(report_to(upstream.clone(), client, batch, farm.version.subscribe(), fc.refresh, shutdown.clone()));
    }
    info!(farm = %fc.name, listen = %fc.listen, mode = ?fc.mode, pools = fc.pool.len(), "farm monitor running");
    Ok(())
}
