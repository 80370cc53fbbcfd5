//! The etcd driver: one task owns every conversation with the group's
//! etcd. It carries out the reconciler's requests (commits of overrides,
//! the ring table, the decider's decisions, serial raises, adoption of
//! edited pools), at most `IN_FLIGHT` at once in its `JoinSet`, and sends
//! each outcome back; and it runs, in the same set, the loops that follow
//! the group (a full read, then the watch, probing etcd every second),
//! campaign for the decider's term, and publish this authority's views
//! under a lease. Whatever breaks (a node gone, no quorum, a watch
//! cancelled) marks the state unavailable and the follower starts over
//! with a full read, so nothing is missed and nothing older is applied.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Txn, TxnOp, WatchOptions};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::etcd::{Etcd, PUTS_PER_TXN, unavailable};
use super::reconcile::{Outcome, Request};
use super::{Batch, ClusterError, ClusterStatus, Event, Leader};
use crate::backoff::Backoff;

/// Requests the driver's queue holds, and carries out at once, at most.
pub const QUEUE: usize = 256;
const IN_FLIGHT: usize = 64;
/// How often etcd is asked whether it still has a quorum.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// Pause before trying again while the trouble is young.
const RETRY_QUICK: Duration = Duration::from_millis(50);
/// Backoff bounds between attempts to follow the group again.
const RETRY: (Duration, Duration) = (Duration::from_millis(200), Duration::from_secs(3));
/// The decider's lease: another authority takes over this long after the
/// decider is gone without a word.
const DECIDER_TTL: i64 = 3;
/// How long the loops get to end (the decider resigns) at shutdown.
const GRACE: Duration = Duration::from_secs(3);

/// Runs until shutdown: `requests` from the reconciler, their `outcomes`
/// back; the group's `events` from the follower and the election.
pub async fn drive(
    etcd: Etcd,
    mut requests: mpsc::Receiver<Request>,
    outcomes: mpsc::Sender<Outcome>,
    events: mpsc::Sender<Event>,
    status: Arc<ClusterStatus>,
    name: String,
    shutdown: CancellationToken,
) {
    let mut tasks: JoinSet<Option<Outcome>> = JoinSet::new();
    let (views, views_rx) = mpsc::channel(64);
    let loops = [
        tasks.spawn({
            let (etcd, events, status, shutdown) = (etcd.clone(), events.clone(), status, shutdown.clone());
            async move {
                etcd.run(events, status, shutdown).await;
                None
            }
        }),
        tasks.spawn({
            let (etcd, name, shutdown) = (etcd.clone(), name.clone(), shutdown.clone());
            async move {
                etcd.lead(name, events, shutdown).await;
                None
            }
        }),
        tasks.spawn({
            let (etcd, lost, shutdown) = (etcd.clone(), outcomes.clone(), shutdown.clone());
            async move {
                etcd.publish_views(name, views_rx, lost, shutdown).await;
                None
            }
        }),
    ];
    loop {
        tokio::select! {
            request = requests.recv(), if tasks.len() < IN_FLIGHT + loops.len() => match request {
                None => break,
                Some(Request::Views(v)) => {
                    if views.try_send(v).is_err() && outcomes.send(Outcome::ViewsLost).await.is_err() {
                        break;
                    }
                }
                Some(request) => {
                    let etcd = etcd.clone();
                    tasks.spawn(async move { carry(&etcd, request).await });
                }
            },
            Some(done) = tasks.join_next() => {
                if let Ok(Some(outcome)) = done
                    && outcomes.send(outcome).await.is_err()
                {
                    break;
                }
            }
            _ = shutdown.cancelled() => break,
        }
    }
    drop(views);
    // The loops see shutdown themselves (the decider resigns); requests
    // under way are bounded by etcd's timeout.
    let _ = tokio::time::timeout(GRACE, async { while tasks.join_next().await.is_some() {} }).await;
    tasks.abort_all();
}

/// One request, carried out.
async fn carry(etcd: &Etcd, request: Request) -> Option<Outcome> {
    match request {
        Request::Overrides { id, pool, overrides, base } => {
            Some(Outcome::Overrides { id, result: etcd.commit(&pool, &overrides, base).await })
        }
        Request::Ring { id, ring, base } => Some(Outcome::Ring { id, result: etcd.commit_ring(&ring, base).await }),
        Request::Decisions { leader, decisions, serials } => {
            Some(Outcome::Decisions { result: etcd.commit_decisions(&leader, &decisions, &serials).await })
        }
        Request::RaiseSerial { zone, serial, base } => {
            match etcd.raise_serial(&zone, serial, base).await {
                Ok(true) => info!(zone, serial, "the group's serial moved up to the one served here"),
                Ok(false) => debug!(zone, "the group's serial moved meanwhile"),
                Err(e) => debug!(zone, error = %e, "the group's serial could not be moved up"),
            }
            Some(Outcome::Raised { zone })
        }
        Request::Adopt { was, now } => {
            if let Err(e) = etcd.adopt(&was, now).await {
                warn!(error = %e, "the edited pools could not be recorded as the group's; the next resync tries again");
            }
            None
        }
        Request::Views(_) => None,
    }
}

impl Etcd {
    /// Asks etcd, through its leader, for the group's fingerprint.
    async fn probe(&self) -> Result<i64, ClusterError> {
        let r = self.within(self.client().await?.kv_client().get(self.keys().config(), None)).await?;
        Ok(r.header().map(|h| h.revision()).unwrap_or(0))
    }

    /// Joins and reads everything, telling the updater; returns the
    /// revision read at.
    async fn sync(&self, events: &mpsc::Sender<Event>) -> Result<i64, ClusterError> {
        self.join().await?;
        let (all, revision) = self.read_all().await?;
        for event in all {
            if events.send(event).await.is_err() {
                return Ok(revision);
            }
        }
        let _ = events.send(Event::Through(revision)).await;
        Ok(revision)
    }

    /// Watches every pool's overrides from `from`, telling the updater,
    /// until a probe fails (`Err`), the watch breaks (`Ok(true)`: a node
    /// went away, read again through another) or shutdown (`Ok(false)`).
    async fn follow(&self, from: i64, events: &mpsc::Sender<Event>, shutdown: &CancellationToken) -> Result<bool, ClusterError> {
        let options = WatchOptions::new().with_prefix().with_start_revision(from).with_progress_notify();
        let mut stream = self.within(self.client().await?.watch_client().watch(self.keys().prefix(), Some(options))).await?;
        let mut probe = tokio::time::interval(PROBE_INTERVAL);
        probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                msg = stream.message() => {
                    let r = match msg {
                        Ok(Some(r)) if !r.canceled() => r,
                        Ok(Some(r)) => {
                            warn!(reason = r.cancel_reason(), "etcd cancelled the watch; reading the group's state again");
                            return Ok(true);
                        }
                        Ok(None) | Err(_) => {
                            info!("the watch on etcd broke; reading the group's state again");
                            return Ok(true);
                        }
                    };
                    let mut batch = Batch::default();
                    for ev in r.events() {
                        if let Some(kv) = ev.kv() {
                            self.take(&mut batch, kv, ev.event_type() == etcd_client::EventType::Put)?;
                        }
                    }
                    for event in batch.events() {
                        if events.send(event).await.is_err() {
                            return Ok(false);
                        }
                    }
                    if let Some(h) = r.header() {
                        let _ = events.send(Event::Through(h.revision())).await;
                    }
                }
                _ = probe.tick() => {
                    self.probe().await?;
                }
                _ = shutdown.cancelled() => return Ok(false),
            }
        }
    }

    /// Follows the group until shutdown: a full read, then the watch; a
    /// broken watch is read again at once. Trouble that lasts longer than
    /// the timeout (a request through a node just gone is simply tried
    /// again) makes the state unavailable, said once, and the reads start
    /// over after a backoff.
    pub async fn run(self, events: mpsc::Sender<Event>, status: Arc<ClusterStatus>, shutdown: CancellationToken) {
        let mut backoff = Backoff::new(RETRY.0, RETRY.1);
        let mut failing_since: Option<tokio::time::Instant> = None;
        loop {
            let attempt = async {
                let revision = self.sync(&events).await?;
                status.resyncs.inc();
                if status.set_available(true, None) {
                    info!(revision, prefix = self.keys().prefix(), "cluster state available: following the group");
                }
                failing_since = None;
                backoff.reset();
                self.follow(revision + 1, &events, &shutdown).await
            };
            let outcome = tokio::select! {
                r = attempt => r,
                _ = shutdown.cancelled() => Ok(false),
            };
            if shutdown.is_cancelled() || events.is_closed() {
                return;
            }
            match outcome {
                Ok(_) => continue, // the watch broke: read again at once
                Err(e) => {
                    let since = *failing_since.get_or_insert_with(tokio::time::Instant::now);
                    let lasting = since.elapsed() >= self.timeout || matches!(e, ClusterError::Disagree { .. });
                    if lasting {
                        let why = match &e {
                            ClusterError::Unavailable(m) => m.clone(),
                            other => other.to_string(),
                        };
                        if status.set_available(false, Some(why)) || matches!(e, ClusterError::Disagree { .. }) {
                            error!(error = %e, "serving the last state, refusing API changes");
                        }
                    } else {
                        debug!(error = %e, "etcd request failed; trying again");
                    }
                }
            }
            let pause = if status.available() { RETRY_QUICK } else { backoff.next_pause() };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }
}

impl Etcd {
    /// Campaigns to be the group's decider until shutdown, telling the
    /// updater when it wins and when it loses; resigns at shutdown so
    /// another takes over at once.
    pub async fn lead(self, name: String, events: mpsc::Sender<Event>, shutdown: CancellationToken) {
        let mut backoff = Backoff::new(RETRY.0, RETRY.1);
        loop {
            let mut lease = None;
            let term = self.term(&name, &events, &shutdown, &mut lease);
            let outcome = tokio::select! {
                r = term => r,
                _ = shutdown.cancelled() => Ok(()),
            };
            if shutdown.is_cancelled() || events.is_closed() {
                return;
            }
            let _ = events.send(Event::Decider(None)).await;
            if let (Some(lease), Err(_)) = (lease, &outcome) {
                // The term's election key outlives it until its lease runs
                // out (etcd renews leases when it elects a leader again):
                // revoked as soon as etcd answers, the next decider need not
                // wait for it.
                for _ in 0..20 {
                    let revoked = match self.client().await {
                        Ok(mut c) => self.within(c.lease_revoke(lease)).await.is_ok(),
                        Err(_) => false,
                    };
                    if revoked || shutdown.is_cancelled() {
                        break;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                        _ = shutdown.cancelled() => return,
                    }
                }
            }
            match outcome {
                Ok(()) => backoff.reset(),
                Err(e) => {
                    warn!(error = %e, "not the group's decider; campaigning again");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff.next_pause()) => {}
                        _ = shutdown.cancelled() => return,
                    }
                }
            }
        }
    }

    /// One term: a lease, the campaign (waits while another decides), then
    /// the lease kept alive until it cannot be or shutdown.
    async fn term(
        &self,
        name: &str,
        events: &mpsc::Sender<Event>,
        shutdown: &CancellationToken,
        granted: &mut Option<i64>,
    ) -> Result<(), ClusterError> {
        let mut lease = Lease::grant(self).await?;
        *granted = Some(lease.id);
        let mut campaigner = self.client().await?;
        let campaign = campaigner.campaign(self.keys().decider(), name.to_owned(), lease.id);
        // Campaigning waits for the decider before; the lease is kept alive meanwhile.
        tokio::pin!(campaign);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let won = loop {
            tokio::select! {
                r = &mut campaign => break r.map_err(unavailable)?,
                _ = tick.tick() => {
                    lease.renew(self).await?;
                }
            }
        };
        let Some(key) = won.leader() else { return Err(unavailable("the election named no decider")) };
        let leader = Leader { key: key.key().to_vec(), revision: key.rev() };
        info!(name, "this authority is the group's decider");
        let _ = events.send(Event::Decider(Some(leader.clone()))).await;
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    lease.renew(self).await?;
                }
                _ = shutdown.cancelled() => {
                    if let Ok(mut c) = self.client().await {
                        let _ = self.within(c.lease_revoke(lease.id)).await;
                    }
                    info!("resigned as the group's decider");
                    return Ok(());
                }
            }
        }
    }
}

impl Etcd {
    /// Publishes this authority's own views of members (`name` is this
    /// authority's) as they change, under a lease of its own, so that the
    /// views of an authority that is gone vanish with it. When a write or
    /// the lease fails, `lost` is set: the updater offers every view again.
    pub async fn publish_views(
        self,
        name: String,
        mut changes: mpsc::Receiver<Vec<(String, String, Option<bool>)>>,
        lost: mpsc::Sender<Outcome>,
        shutdown: CancellationToken,
    ) {
        let mut backoff = Backoff::new(RETRY.0, RETRY.1);
        loop {
            let outcome = tokio::select! {
                r = self.views_term(&name, &mut changes, &lost) => r,
                _ = shutdown.cancelled() => return,
            };
            let _ = lost.send(Outcome::ViewsLost).await;
            match outcome {
                Ok(()) => return, // the updater is gone
                Err(e) => debug!(error = %e, "views not published; trying again"),
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff.next_pause()) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    async fn views_term(
        &self,
        name: &str,
        changes: &mut mpsc::Receiver<Vec<(String, String, Option<bool>)>>,
        lost: &mpsc::Sender<Outcome>,
    ) -> Result<(), ClusterError> {
        let mut lease = Lease::grant(self).await?;
        // Whatever this lease did not publish yet must be offered again.
        let _ = lost.send(Outcome::ViewsLost).await;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                batch = changes.recv() => {
                    let Some(batch) = batch else { return Ok(()) };
                    let ops: Vec<TxnOp> = batch
                        .iter()
                        .map(|(pool, member, seen)| {
                            let key = self.keys().view(name, pool, member);
                            match seen {
                                Some(up) => TxnOp::put(key, if *up { "up" } else { "down" }, Some(etcd_client::PutOptions::new().with_lease(lease.id))),
                                None => TxnOp::delete(key, None),
                            }
                        })
                        .collect();
                    for chunk in ops.chunks(PUTS_PER_TXN) {
                        self.within(self.client().await?.kv_client().txn(Txn::new().and_then(chunk.to_vec()))).await?;
                    }
                }
                _ = tick.tick() => {
                    lease.renew(self).await?;
                }
            }
        }
    }
}

/// A lease of `DECIDER_TTL` seconds and its keep-alive stream: the
/// decider's election key and an authority's views live under one.
struct Lease {
    id: i64,
    keeper: etcd_client::LeaseKeeper,
    acks: etcd_client::LeaseKeepAliveStream,
}

impl Lease {
    async fn grant(etcd: &Etcd) -> Result<Self, ClusterError> {
        let mut client = etcd.client().await?;
        let id = etcd.within(client.lease_grant(DECIDER_TTL, None)).await?.id();
        let (keeper, acks) = etcd.within(client.lease_keep_alive(id)).await?;
        Ok(Self { id, keeper, acks })
    }

    /// Keeps the lease alive once more; an error when it cannot be, or it
    /// ran out meanwhile.
    async fn renew(&mut self, etcd: &Etcd) -> Result<(), ClusterError> {
        self.keeper.keep_alive().await.map_err(unavailable)?;
        match etcd.within(async { self.acks.message().await }).await? {
            Some(a) if a.ttl() > 0 => Ok(()),
            _ => Err(unavailable(format!("lease {:x} expired", self.id))),
        }
    }
}
