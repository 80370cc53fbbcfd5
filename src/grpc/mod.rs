//! The gRPC administration API (`proto/vnamed/v1/admin.proto`): a thin
//! layer that forwards each call to the updater and maps its errors to
//! gRPC status codes.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tonic::{Request, Response, Status};

use crate::config::ident;
use crate::config::{Credential, PolicyName, Scope};
use crate::metrics::{Count, Expose, Writer};
use crate::pool::AdminState;
use crate::updater::{Command, PoolChange, RingOp, RingReply, UpdateError};

pub mod report;
pub mod ring;
pub mod serve;
pub mod tls;

use serve::Peer;

pub mod v1 {
    tonic::include_proto!("vnamed.v1");

    /// The encoded descriptors of the API, for server reflection.
    pub const DESCRIPTOR: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/vnamed_descriptor.bin"));
}

use v1::admin_server::{Admin, AdminServer};
use v1::status_server::{Status as StatusApi, StatusServer};

/// Reasons a report batch is refused.
pub const REFUSALS: [&str; 6] = ["too_large", "malformed", "bad_metric", "future", "unknown_member", "unauthenticated"];

/// What report ingestion counts.
#[derive(Debug, Default)]
pub struct ReportCounters {
    pub accepted: Count,
    /// Refused batches, by reason (see `REFUSALS`).
    refused: [Count; REFUSALS.len()],
}

impl ReportCounters {
    pub fn refused(&self, reason: &str) {
        if let Some(i) = REFUSALS.iter().position(|r| *r == reason) {
            self.refused[i].inc();
        }
    }

    pub fn refusals(&self, reason: &str) -> u64 {
        REFUSALS.iter().position(|r| *r == reason).map(|i| self.refused[i].get()).unwrap_or(0)
    }
}

impl Expose for ReportCounters {
    fn expose(&self, w: &mut Writer<'_, '_>) -> std::fmt::Result {
        w.counter("vnamed_reports_accepted", "Member status reports stored.", self.accepted.get())?;
        let samples = REFUSALS.iter().zip(&self.refused).map(|(r, c)| (vec![("reason", (*r).into())], c.get())).collect();
        w.counters("vnamed_report_batches_refused", "Report batches refused, by reason.", samples)
    }
}

/// The credentials a listener knows: tokens and client certificate names,
/// each with its scopes. With none at all, calls are open (the listener
/// is then on loopback, or `insecure` was set); with mutual TLS and no
/// certificate names, any certificate from the client CA may call all.
#[derive(Debug, Default)]
pub struct Credentials {
    tokens: Vec<(Arc<str>, Vec<Scope>)>,
    clients: Vec<(String, Vec<Scope>)>,
    open: bool,
    any_client: bool,
}

impl Credentials {
    /// `token`: the shared token of earlier versions, allowed everything.
    pub fn new(token: Option<&str>, list: &[Credential], mutual_tls: bool) -> Self {
        let mut tokens: Vec<(Arc<str>, Vec<Scope>)> = token.map(|t| (Arc::from(t), Scope::ALL.to_vec())).into_iter().collect();
        tokens.extend(list.iter().filter_map(|c| c.token.as_deref().map(|t| (Arc::from(t), c.scopes.clone()))));
        let clients: Vec<_> = list.iter().filter_map(|c| c.client.clone().map(|n| (n, c.scopes.clone()))).collect();
        let any_client = mutual_tls && clients.is_empty();
        Self { open: tokens.is_empty() && clients.is_empty() && !mutual_tls, tokens, clients, any_client }
    }

    /// What a call with `token` (the bearer token, if any) from `peer`
    /// may use: its scopes, or UNAUTHENTICATED when it brings none.
    fn granted(&self, token: Option<&str>, peer: Option<&Peer>) -> Result<Granted, Status> {
        let names = peer.map(|p| &p.names[..]).unwrap_or_default();
        if self.open || (self.any_client && !names.is_empty()) {
            return Ok(Granted(Scope::ALL.to_vec()));
        }
        let by_token = token.and_then(|given| self.tokens.iter().find(|(t, _)| same(t, given)).map(|(_, s)| s));
        let by_name = self.clients.iter().filter(|(n, _)| names.contains(n)).map(|(_, s)| s);
        let scopes: Vec<Scope> = by_token.into_iter().chain(by_name).flatten().copied().collect();
        if scopes.is_empty() {
            return Err(Status::unauthenticated("a valid credential is required (authorization: Bearer <token>, or a client certificate)"));
        }
        Ok(Granted(scopes))
    }
}

/// The scopes a call was granted, as the guard left them in its extensions.
#[derive(Debug, Clone)]
pub struct Granted(pub Vec<Scope>);

impl Granted {
    /// Ok when `scope` was granted, PERMISSION_DENIED otherwise.
    pub fn require(&self, scope: Scope) -> Result<(), Status> {
        if self.0.contains(&scope) {
            Ok(())
        } else {
            Err(Status::permission_denied(format!("this credential may not call {} services", scope.as_str())))
        }
    }

    /// What `req` was granted; nothing if no guard ran.
    pub fn of<T>(req: &Request<T>) -> Granted {
        req.extensions().get::<Granted>().cloned().unwrap_or(Granted(Vec::new()))
    }
}

/// Compares without an early exit, so timing does not tell how much matched.
fn same(expected: &str, given: &str) -> bool {
    given.len() == expected.len() && given.bytes().zip(expected.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

/// The interceptor in front of one service: a call needs a credential
/// granted `scope` (or, for the Admin service, any credential: its
/// read-only calls are open to every scope, the others check for admin).
#[derive(Clone)]
pub struct Guard {
    scope: Option<Scope>,
    credentials: Arc<Credentials>,
    counters: Arc<ReportCounters>,
}

impl Guard {
    pub fn new(scope: Scope, credentials: Arc<Credentials>, counters: Arc<ReportCounters>) -> Self {
        Self { scope: Some(scope), credentials, counters }
    }

    /// Any valid credential passes; the service checks what it grants.
    pub fn any(credentials: Arc<Credentials>, counters: Arc<ReportCounters>) -> Self {
        Self { scope: None, credentials, counters }
    }
}

impl tonic::service::Interceptor for Guard {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        let token = req.metadata().get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
        let granted = self.credentials.granted(token, req.extensions().get::<Peer>());
        let checked = granted.and_then(|g| match self.scope {
            Some(scope) => g.require(scope).map(|()| g),
            None => Ok(g),
        });
        match checked {
            Ok(g) => {
                req.extensions_mut().insert(g);
                Ok(req)
            }
            Err(status) => {
                if self.scope == Some(Scope::Report) {
                    self.counters.refused("unauthenticated");
                }
                Err(status)
            }
        }
    }
}

/// The ring registry: ServerAnnounce, ServerDelete and the table.
pub struct RingService {
    updater: mpsc::Sender<Command>,
}

impl RingService {
    pub fn server(updater: mpsc::Sender<Command>) -> v1::ring_server::RingServer<Self> {
        v1::ring_server::RingServer::new(Self { updater })
    }

    async fn op(&self, op: RingOp) -> Result<RingReply, Status> {
        ask(&self.updater, |reply| Command::Ring { op, reply }).await?.map_err(status_of)
    }
}

fn ring_addr(field: &str, s: &str) -> Result<std::net::SocketAddr, Status> {
    s.parse().map_err(|_| Status::invalid_argument(format!("{field}: {s:?} is not an ip:port")))
}

fn buddies(reply: RingReply) -> Result<Response<v1::Buddies>, Status> {
    match reply {
        RingReply::Buddies([a, b]) => Ok(Response::new(v1::Buddies { a: a.to_string(), b: b.to_string() })),
        RingReply::Table(_) | RingReply::Done => Err(Status::internal("unexpected reply")),
    }
}

#[tonic::async_trait]
impl v1::ring_server::Ring for RingService {
    async fn server_announce(&self, req: Request<v1::Member>) -> Result<Response<v1::Buddies>, Status> {
        let member = ring_addr("address", &req.into_inner().address)?;
        buddies(self.op(RingOp::Announce(member)).await?)
    }

    async fn server_delete(&self, req: Request<v1::DeleteRequest>) -> Result<Response<v1::Buddies>, Status> {
        let req = req.into_inner();
        let dead = ring_addr("dead", &req.dead)?;
        let reporter = if req.reporter.is_empty() { dead } else { ring_addr("reporter", &req.reporter)? };
        buddies(self.op(RingOp::Delete { dead, reporter }).await?)
    }

    async fn table(&self, _: Request<v1::TableRequest>) -> Result<Response<v1::TableReply>, Status> {
        let RingReply::Table(r) = self.op(RingOp::Table).await? else { return Err(Status::internal("unexpected reply")) };
        Ok(Response::new(v1::TableReply {
            entries: r
                .table
                .entries()
                .map(|(m, [a, b])| v1::TableEntry { member: m.to_string(), a: a.to_string(), b: b.to_string() })
                .collect(),
            dead: r.dead.iter().map(|d| d.to_string()).collect(),
            dispatcher: r.dispatcher.map(|d| d.to_string()).unwrap_or_default(),
        }))
    }

    async fn dispatcher(&self, req: Request<v1::DispatcherRequest>) -> Result<Response<v1::DispatcherReply>, Status> {
        let req = req.into_inner();
        let member = ring_addr("address", &req.address)?;
        self.op(RingOp::Elected { member, elected: req.elected }).await?;
        Ok(Response::new(v1::DispatcherReply {}))
    }
}

/// Adds `authorization: Bearer <token>` to outgoing calls, when there is a token.
#[derive(Clone)]
pub struct Bearer(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl Bearer {
    pub fn new(token: Option<&str>) -> Result<Self, tonic::metadata::errors::InvalidMetadataValue> {
        Ok(Self(token.map(|t| format!("Bearer {t}").parse()).transpose()?))
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// Whatever takes report batches (the authority, a farm, a monitor's push
/// listener); gives the number stored or a status that says why not.
pub trait Ingest: Clone + Send + Sync + 'static {
    fn ingest(&self, batch: v1::ReportBatch) -> impl std::future::Future<Output = Result<u32, Status>> + Send;
}

/// The reply stream of `ReportStream`.
pub type ReplyStream = std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<v1::ReportReply, Status>> + Send>>;

/// Serves `ReportStream` with any `Ingest`: one reply per batch, refusals
/// included, until the client ends the stream or goes away.
pub fn report_stream<T: Ingest>(this: &T, mut inbound: tonic::Streaming<v1::ReportBatch>) -> Response<ReplyStream> {
    let (tx, rx) = mpsc::channel(16);
    let this = this.clone();
    tokio::spawn(async move {
        loop {
            let batch = match inbound.message().await {
                Ok(Some(b)) => b,
                // Ended, or the client vanished mid-stream: nothing to clean up.
                Ok(None) | Err(_) => return,
            };
            let reply = match this.ingest(batch).await {
                Ok(accepted) => v1::ReportReply { accepted, code: 0, error: String::new() },
                Err(s) => v1::ReportReply { accepted: 0, code: s.code() as i32, error: s.message().to_owned() },
            };
            if tx.send(Ok(reply)).await.is_err() {
                return;
            }
        }
    });
    Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
}

/// Receives status reports and hands checked batches to the updater.
#[derive(Clone)]
pub struct StatusService {
    updater: mpsc::Sender<Command>,
    counters: Arc<ReportCounters>,
}

impl StatusService {
    pub fn server(updater: mpsc::Sender<Command>, counters: Arc<ReportCounters>) -> StatusServer<Self> {
        StatusServer::new(Self { updater, counters }).max_decoding_message_size(MAX_MESSAGE)
    }
}

#[tonic::async_trait]
impl StatusApi for StatusService {
    async fn report(&self, req: Request<v1::ReportBatch>) -> Result<Response<v1::ReportReply>, Status> {
        let accepted = self.ingest(req.into_inner()).await?;
        Ok(Response::new(v1::ReportReply { accepted, code: 0, error: String::new() }))
    }

    type ReportStreamStream = ReplyStream;

    async fn report_stream(&self, req: Request<tonic::Streaming<v1::ReportBatch>>) -> Result<Response<ReplyStream>, Status> {
        Ok(report_stream(self, req.into_inner()))
    }
}

impl Ingest for StatusService {
    async fn ingest(&self, batch: v1::ReportBatch) -> Result<u32, Status> {
        let received = crate::clock::instant();
        let reports = report::decode(&batch, crate::clock::unix_ms()).map_err(|e| {
            self.counters.refused(e.reason());
            Status::invalid_argument(e.to_string())
        })?;
        let accepted = ask(&self.updater, |reply| Command::Reports { reports, received, reply }).await?.map_err(|e| {
            self.counters.refused(e.reason());
            Status::not_found(e.to_string())
        })?;
        self.counters.accepted.add(accepted as u64);
        Ok(accepted as u32)
    }
}

/// Counts the report batches refused for their size before any handler
/// runs (the protobuf layer answers OUT_OF_RANGE) as `too_large`.
#[derive(Clone)]
pub struct CountTooLarge<S> {
    inner: S,
    counters: Arc<ReportCounters>,
}

impl<S> CountTooLarge<S> {
    pub fn new(inner: S, counters: Arc<ReportCounters>) -> Self {
        Self { inner, counters }
    }
}

impl<S: tonic::server::NamedService> tonic::server::NamedService for CountTooLarge<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B, R> tower::Service<http::Request<B>> for CountTooLarge<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let (counters, call) = (self.counters.clone(), self.inner.call(req));
        Box::pin(async move {
            let resp = call.await?;
            // RESOURCE_EXHAUSTED or OUT_OF_RANGE: what tonic's decoder says
            // of a message over the limit.
            if resp.headers().get("grpc-status").is_some_and(|v| v.as_bytes() == b"8" || v.as_bytes() == b"11") {
                counters.refused("too_large");
            }
            Ok(resp)
        })
    }
}

/// Largest report batch accepted, encoded (100,000 reports fit).
pub const MAX_MESSAGE: usize = 16 << 20;

/// How long a call waits for the updater before giving up.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

pub struct AdminService {
    updater: mpsc::Sender<Command>,
}

impl AdminService {
    pub fn server(updater: mpsc::Sender<Command>) -> AdminServer<Self> {
        AdminServer::new(Self { updater })
    }

    async fn pool(&self, pool: String, change: PoolChange) -> Result<Response<v1::PoolReply>, Status> {
        checked_pool(&pool)?;
        if let PoolChange::AddMember { id, .. } | PoolChange::RemoveMember { id } | PoolChange::Member { id, .. } = &change {
            checked_id(id)?;
        }
        let answer = self.ask(|reply| Command::Pool { pool, change, reply }).await?.map_err(status_of)?;
        Ok(Response::new(v1::PoolReply { answer: answer.iter().map(|a| a.to_string()).collect() }))
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, Status> {
        ask(&self.updater, make).await
    }
}

/// A pool name from a request, refused before it goes anywhere.
fn checked_pool(pool: &str) -> Result<(), Status> {
    ident::check_name(pool).map_err(|e| Status::invalid_argument(format!("pool {e}")))
}

/// A member id from a request, refused before it goes anywhere.
fn checked_id(id: &str) -> Result<(), Status> {
    ident::check_id(id).map_err(|e| Status::invalid_argument(format!("member id {e}")))
}

/// Sends the updater a request and waits for its answer, each step bounded
/// by `CALL_TIMEOUT`: the one way every gRPC service here reaches it.
async fn ask<T>(updater: &mpsc::Sender<Command>, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, Status> {
    let (tx, rx) = oneshot::channel();
    updater.send_timeout(make(tx), CALL_TIMEOUT).await.map_err(|_| Status::unavailable("the updater is not accepting requests"))?;
    tokio::time::timeout(CALL_TIMEOUT, rx)
        .await
        .map_err(|_| Status::deadline_exceeded("the updater did not answer in time"))?
        .map_err(|_| Status::unavailable("the updater stopped"))
}

fn status_of(e: UpdateError) -> Status {
    use crate::pool::TableError;
    use crate::ring::table::TableError as RingError;
    match e {
        UpdateError::Pool(TableError::NoPool(_) | TableError::NoMember { .. }) | UpdateError::NoZone(_) => Status::not_found(e.to_string()),
        UpdateError::Pool(TableError::MemberExists { .. }) => Status::already_exists(e.to_string()),
        UpdateError::Pool(TableError::LastMember(_)) => Status::failed_precondition(e.to_string()),
        UpdateError::Pool(TableError::Invalid(_)) => Status::invalid_argument(e.to_string()),
        UpdateError::Ring(RingError::Present(_)) => Status::already_exists(e.to_string()),
        UpdateError::Ring(RingError::Absent(_)) => Status::not_found(e.to_string()),
        UpdateError::Internal(_) => Status::internal(e.to_string()),
        UpdateError::State(_) | UpdateError::Cluster(_) => Status::unavailable(e.to_string()),
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn status(&self, _: Request<v1::StatusRequest>) -> Result<Response<v1::StatusReply>, Status> {
        let (pools, trouble, cluster) = self.ask(|reply| Command::Status { reply }).await?;
        let pools = pools
            .into_iter()
            .map(|p| v1::PoolStatus {
                name: p.name,
                policy: p.policy,
                zone: p.zone,
                serial: p.serial,
                answer: p.answer.iter().map(|a| a.to_string()).collect(),
                servfail: p.servfail,
                overrides: p.overrides,
                select: p.select.to_string(),
                ttl: p.ttl,
                quorum: p.quorum.map(|q| q.to_string()).unwrap_or_default(),
                members: p
                    .members
                    .into_iter()
                    .map(|m| v1::MemberStatus {
                        id: m.id,
                        address: m.address.to_string(),
                        state: m.state,
                        admin: m.admin.as_str().into(),
                        weight: m.weight,
                        load: m.load,
                        in_answer: m.in_answer,
                        metrics: m.metrics.into_iter().collect(),
                        score: m.score,
                        rank: m.rank,
                        report_age: m.report_age.map(|d| d.as_secs_f64()),
                        share: m.share,
                        views: m
                            .views
                            .into_iter()
                            .map(|(source, up, age)| v1::VantageView { source, up, age: age.as_secs_f64() })
                            .collect(),
                    })
                    .collect(),
            })
            .collect();
        let (state_owed, state_error) = trouble.unwrap_or_default();
        let cluster = cluster.map(|(error, revision, decider)| v1::ClusterState {
            available: error.is_none(),
            error: error.unwrap_or_default(),
            revision,
            decider,
        });
        Ok(Response::new(v1::StatusReply { pools, state_owed, state_error, cluster }))
    }

    async fn set_member(&self, req: Request<v1::SetMemberRequest>) -> Result<Response<v1::SetMemberReply>, Status> {
        Granted::of(&req).require(Scope::Admin)?;
        let req = req.into_inner();
        let admin = match req.admin.as_deref() {
            None => None,
            Some(s) => Some(
                AdminState::parse(s)
                    .ok_or_else(|| Status::invalid_argument(format!("admin must be up, down, drain or auto, not {}", ident::shown(s))))?,
            ),
        };
        if admin.is_none() && req.weight.is_none() {
            return Err(Status::invalid_argument("nothing to set: give admin and/or weight"));
        }
        checked_pool(&req.pool)?;
        checked_id(&req.member)?;
        let (pool, id, weight) = (req.pool, req.member, req.weight);
        self.ask(|reply| Command::SetMember { pool, id, admin, weight, reply }).await?.map_err(status_of)?;
        Ok(Response::new(v1::SetMemberReply {}))
    }

    async fn set_policy(&self, req: Request<v1::SetPolicyRequest>) -> Result<Response<v1::PoolReply>, Status> {
        Granted::of(&req).require(Scope::Admin)?;
        let req = req.into_inner();
        let policy: PolicyName = req.policy.parse().map_err(|e: String| Status::invalid_argument(format!("policy: {e}")))?;
        if !req.formula.is_empty() {
            self.pool(req.pool.clone(), PoolChange::Formula(req.formula)).await?;
        }
        self.pool(req.pool, PoolChange::Policy(policy)).await
    }

    async fn dry_run(&self, req: Request<v1::DryRunRequest>) -> Result<Response<v1::DryRunReply>, Status> {
        Granted::of(&req).require(Scope::Admin)?;
        let req = req.into_inner();
        checked_pool(&req.pool)?;
        let policy: PolicyName = req.policy.parse().map_err(|e: String| Status::invalid_argument(format!("policy: {e}")))?;
        let formula = match req.formula.as_str() {
            "" => None,
            text => Some(std::sync::Arc::new(
                crate::config::formula::Formula::parse(text).map_err(|e| Status::invalid_argument(format!("formula: {e}")))?,
            )),
        };
        let select = match req.select.as_str() {
            "" => None,
            text => Some(
                text.parse().map_err(|_| Status::invalid_argument(format!("select must be shares or best, not {}", ident::shown(text))))?,
            ),
        };
        let (pool, recent) = self.ask(|reply| Command::Replayable { pool: req.pool, reply }).await?.map_err(status_of)?;
        let proposal = crate::pool::replay::Proposal { policy: Some(policy), formula, select };
        let reply = tokio::task::spawn_blocking(move || {
            let (live, proposed) = crate::pool::replay::dry_run(&pool, &recent, &proposal).map_err(Status::invalid_argument)?;
            let replayed = |t: &crate::pool::replay::Timeline| v1::Replayed {
                policy: t.policy.to_string(),
                select: t.select.to_string(),
                changes: t.changes as u32,
                peak_share: t.peak.as_ref().map(|(_, s)| *s).unwrap_or(0.0),
                peak_member: t.peak.as_ref().map(|(m, _)| m.to_string()).unwrap_or_default(),
            };
            Ok::<_, Status>(v1::DryRunReply {
                members: pool.members.iter().map(|m| m.id.to_string()).collect(),
                reports: recent.len() as u32,
                seconds: live.seconds.len() as u32,
                live: Some(replayed(&live)),
                proposed: Some(replayed(&proposed)),
                timeline: live
                    .seconds
                    .iter()
                    .zip(&proposed.seconds)
                    .map(|(l, p)| v1::ReplayedSecond { live: l.clone(), proposed: p.clone() })
                    .collect(),
            })
        })
        .await
        .map_err(|e| Status::internal(format!("dry run: {e}")))??;
        Ok(Response::new(reply))
    }

    async fn pause_pool(&self, req: Request<v1::PoolRequest>) -> Result<Response<v1::PoolReply>, Status> {
        Granted::of(&req).require(Scope::Admin)?;
        self.pool(req.into_inner().pool, PoolChange::Pause(true)).await
    }

    async fn resume_pool(&self, req: Request<v1::PoolRequest>) -> Result<Response<v1::PoolReply>, Status> {
        Granted::of(&req).require(Scope::Admin)?;
        self.pool(req.into_inner().pool, PoolChange::Pause(false)).await
    }

    async fn clear_overrides(&self, req: Request<v1::PoolRequest>) -> Result<Response<v1::PoolReply>, Status> {
        Granted::of(&req).require(Scope::Admin)?;
        self.pool(req.into_inner().pool, PoolChange::Clear).await
    }

    async fn add_member(&self, req: Request<v1::AddMemberRequest>) -> Result<Response<v1::PoolReply>, Status> {
        Granted::of(&req).require(Scope::Admin)?;
        let req = req.into_inner();
        let address = req
            .address
            .parse()
            .map_err(|_| Status::invalid_argument(format!("address {} is not an IP address", ident::shown(&req.address))))?;
        ident::check_address(address).map_err(|e| Status::invalid_argument(e.to_string()))?;
        self.pool(req.pool, PoolChange::AddMember { id: req.id, address, weight: req.weight.max(1) }).await
    }

    async fn remove_member(&self, req: Request<v1::RemoveMemberRequest>) -> Result<Response<v1::PoolReply>, Status> {
        Granted::of(&req).require(Scope::Admin)?;
        let req = req.into_inner();
        self.pool(req.pool, PoolChange::RemoveMember { id: req.id }).await
    }

    async fn resolve(&self, req: Request<v1::PoolRequest>) -> Result<Response<v1::ResolveReply>, Status> {
        let pool = req.into_inner().pool;
        checked_pool(&pool)?;
        let servers = self.ask(|reply| Command::Resolve { pool, reply }).await?.map_err(status_of)?;
        Ok(Response::new(v1::ResolveReply { servers: servers.iter().map(|a| a.to_string()).collect() }))
    }

    type WatchStream = std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<v1::WatchReply, Status>> + Send>>;

    async fn watch(&self, req: Request<v1::PoolRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let pool = req.into_inner().pool;
        checked_pool(&pool)?;
        let mut servers = self.ask(|reply| Command::Watch { pool, reply }).await?.map_err(status_of)?;
        let (tx, rx) = mpsc::channel(4);
        // Follows the pool's own channel: no call back into the updater.
        tokio::spawn(async move {
            let mut last = None;
            loop {
                let current = servers.borrow_and_update().clone();
                if last.as_ref() != Some(&current) {
                    let reply =
                        v1::WatchReply { servers: current.0.iter().map(|a| a.to_string()).collect(), policy: current.1.to_string() };
                    if tx.send(Ok(reply)).await.is_err() {
                        return; // the watcher went away
                    }
                    last = Some(current);
                }
                tokio::select! {
                    r = servers.changed() => if r.is_err() {
                        let _ = tx.send(Err(Status::not_found("the pool was removed"))).await;
                        return;
                    },
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn show_zone(&self, req: Request<v1::ShowZoneRequest>) -> Result<Response<v1::ShowZoneReply>, Status> {
        let zone = req.into_inner().zone;
        ident::check_name(&zone).map_err(|e| Status::invalid_argument(format!("zone {e}")))?;
        let text = self.ask(|reply| Command::ShowZone { zone, reply }).await?.map_err(status_of)?;
        Ok(Response::new(v1::ShowZoneReply { text }))
    }
}
