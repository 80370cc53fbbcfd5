//! The etcd driver of the shared control state: connects with the group's
//! endpoints, TLS and credentials (on first use, so an authority started
//! while etcd is out of reach serves and connects later; credentials etcd
//! refuses are an error of their own, and expired tokens are renewed); joins (the group's pools must be this
//! authority's); commits an operator's change to a pool's overrides in one
//! transaction that holds only if nobody changed them since, and only
//! while the group's pools are still this authority's; and follows the
//! group: reads everything, then watches from the next revision, probing
//! etcd every second. Whatever breaks (a node gone, no quorum, a watch
//! cancelled) marks the state unavailable and starts over with a full
//! read, so nothing is missed and nothing older is applied.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, ConnectOptions, GetOptions, Txn, TxnOp, TxnOpResponse, WatchOptions};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::{
    ClusterError, ClusterStatus, Event, Keys, Kind, Leader, Unreadable, decode, decode_decision, decode_serial, encode, encode_decision,
};
use crate::backoff::Backoff;
use crate::config::ClusterConfig;
use crate::pool::Decision;
use crate::pool::Overrides;
use crate::ring::registry::Registry;

/// How often etcd is asked whether it still has a quorum.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// Pause before trying again while the trouble is young.
const RETRY_QUICK: Duration = Duration::from_millis(50);
/// Backoff bounds between attempts to follow the group again.
const RETRY: (Duration, Duration) = (Duration::from_millis(200), Duration::from_secs(3));

#[derive(Clone)]
pub struct Etcd {
    /// One client per endpoint, each connected on first use (with
    /// credentials, connecting authenticates). Requests go to the current
    /// one; trouble with it (no answer in time, a broken connection, a
    /// node without a leader) moves on to the next. A paused node keeps
    /// its connections open and answers nothing: only a client pinned to
    /// another endpoint gets past it.
    clients: Arc<[tokio::sync::OnceCell<Client>]>,
    current: Arc<AtomicUsize>,
    endpoints: Arc<Vec<String>>,
    options: ConnectOptions,
    keys: Keys,
    timeout: Duration,
    /// This authority's pools' fingerprint (a configuration edit changes it).
    fingerprint: Arc<arc_swap::ArcSwap<String>>,
    /// The fingerprint before an edit whose adoption by the group is owed.
    adopting: Arc<arc_swap::ArcSwapOption<String>>,
}

fn unavailable(e: impl std::fmt::Display) -> ClusterError {
    ClusterError::Unavailable(e.to_string())
}

/// An error from etcd: its refusal of this authority's credentials (which
/// no retry mends), or the state being out of reach.
fn refused_or_unavailable(e: etcd_client::Error) -> ClusterError {
    use tonic::Code;
    match &e {
        etcd_client::Error::GRpcStatus(s)
            if matches!(s.code(), Code::Unauthenticated | Code::PermissionDenied)
                || (s.code() == Code::InvalidArgument && s.message().contains("authentication failed")) =>
        {
            ClusterError::Refused(s.message().to_owned())
        }
        _ => unavailable(e),
    }
}

impl Etcd {
    /// A client for the group's etcd (connections are made as needed).
    pub async fn connect(c: &ClusterConfig, fingerprint: String) -> Result<Self, ClusterError> {
        let mut options = ConnectOptions::new()
            .with_timeout(c.timeout)
            .with_connect_timeout(c.timeout)
            .with_keep_alive(Duration::from_secs(1), c.timeout)
            .with_keep_alive_while_idle(true)
            // A node cut off from the others refuses instead of answering
            // from what it last knew.
            .with_require_leader(true);
        if let (Some(user), Some(file)) = (&c.user, &c.password_file) {
            let password =
                std::fs::read_to_string(file).map_err(|e| ClusterError::Config(format!("password_file {}: {e}", file.display())))?;
            options = options.with_user(user.clone(), password.trim_end().to_owned());
        }
        if let Some(t) = &c.tls {
            let read = |p: &std::path::Path| std::fs::read(p).map_err(|e| ClusterError::Config(format!("{}: {e}", p.display())));
            let mut tls = etcd_client::TlsOptions::new();
            if let Some(ca) = &t.ca {
                tls = tls.ca_certificate(etcd_client::Certificate::from_pem(read(ca)?));
            }
            if let (Some(cert), Some(key)) = (&t.cert, &t.key) {
                tls = tls.identity(etcd_client::Identity::from_pem(read(cert)?, read(key)?));
            }
            if let Some(name) = &t.server_name {
                tls = tls.domain_name(name.clone());
            }
            options = options.with_tls(tls);
        }
        let etcd = Self {
            clients: c.endpoints.iter().map(|_| tokio::sync::OnceCell::new()).collect(),
            current: Arc::default(),
            endpoints: Arc::new(c.endpoints.clone()),
            options: options.with_auto_token_refresh(true),
            keys: Keys::new(&c.prefix),
            timeout: c.timeout,
            fingerprint: Arc::new(arc_swap::ArcSwap::from_pointee(fingerprint)),
            adopting: Arc::default(),
        };
        // The first endpoint that answers; none: tried again at the next call.
        for _ in 0..etcd.clients.len() {
            match etcd.client().await {
                Err(e @ ClusterError::Refused(_)) => return Err(e),
                Err(_) => continue,
                Ok(_) => break,
            }
        }
        Ok(etcd)
    }

    /// The current endpoint's client, connecting it first if it is not yet.
    async fn client(&self) -> Result<Client, ClusterError> {
        let at = self.current.load(Ordering::Relaxed) % self.clients.len();
        let connect = || async {
            tokio::time::timeout(self.timeout, Client::connect([&self.endpoints[at]], Some(self.options.clone())))
                .await
                .map_err(|_| unavailable(format!("etcd endpoint {} did not answer in time", self.endpoints[at])))?
                .map_err(refused_or_unavailable)
        };
        let got = self.clients[at].get_or_try_init(connect).await.cloned();
        if matches!(got, Err(ClusterError::Unavailable(_))) {
            self.move_on(at);
        }
        got
    }

    /// Requests go to the endpoint after `at`, unless another request
    /// moved them on already.
    fn move_on(&self, at: usize) {
        let next = (at + 1) % self.clients.len();
        if self.current.compare_exchange(at, next, Ordering::Relaxed, Ordering::Relaxed).is_ok() && next != at {
            debug!(from = %self.endpoints[at], to = %self.endpoints[next], "etcd endpoint in trouble; moving on");
        }
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    pub fn fingerprint(&self) -> String {
        self.fingerprint.load().as_ref().clone()
    }

    fn disagree(&self, theirs: String) -> ClusterError {
        ClusterError::Disagree { prefix: self.keys.prefix().to_owned(), ours: self.fingerprint(), theirs }
    }

    /// This authority's pools were edited (to `fingerprint`): they become
    /// the group's, replacing `was` (another authority edited first:
    /// nothing to do). Authorities still serving the old pools stop taking
    /// changes, and say so, until they are edited too.
    pub async fn adopt(&self, was: &str, fingerprint: String) -> Result<(), ClusterError> {
        self.fingerprint.store(Arc::new(fingerprint.clone()));
        self.adopting.store(Some(Arc::new(was.to_owned())));
        let key = self.keys.config();
        let txn = Txn::new()
            .when([Compare::value(key.clone(), CompareOp::Equal, was)])
            .and_then([TxnOp::put(key.clone(), fingerprint.clone(), None)])
            .or_else([TxnOp::get(key, None)]);
        let r = self.within(self.client().await?.kv_client().txn(txn)).await?;
        self.adopting.store(None);
        if r.succeeded() {
            info!(fingerprint = %fingerprint, "the edited pools are the group's now: edit every authority's configuration alike");
        }
        Ok(())
    }

    /// `f`, a request to the current endpoint, bounded by the timeout;
    /// trouble moves later requests on to the next endpoint.
    async fn within<T>(&self, f: impl Future<Output = Result<T, etcd_client::Error>>) -> Result<T, ClusterError> {
        let at = self.current.load(Ordering::Relaxed) % self.clients.len();
        let r = tokio::time::timeout(self.timeout, f)
            .await
            .map_err(|_| unavailable("etcd did not answer in time"))
            .and_then(|r| r.map_err(refused_or_unavailable));
        if matches!(r, Err(ClusterError::Unavailable(_))) {
            self.move_on(at);
        }
        r
    }

    /// Joins the group: the first authority records its pools'
    /// fingerprint; every other must have the same.
    pub async fn join(&self) -> Result<(), ClusterError> {
        let ours = self.fingerprint();
        let key = self.keys.config();
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.clone(), ours.clone(), None)])
            .or_else([TxnOp::get(key.clone(), None)]);
        let r = self.within(self.client().await?.kv_client().txn(txn)).await?;
        if r.succeeded() {
            info!(prefix = self.keys.prefix(), fingerprint = %ours, "first authority of the group: its pools are the group's");
            return Ok(());
        }
        let theirs = r
            .op_responses()
            .into_iter()
            .find_map(|op| match op {
                TxnOpResponse::Get(g) => g.kvs().first().map(|kv| String::from_utf8_lossy(kv.value()).into_owned()),
                _ => None,
            })
            .unwrap_or_default();
        if theirs == ours {
            return Ok(());
        }
        // The group still has the pools this authority had before an edit
        // it could not record then: record it now.
        if self.adopting.load().as_deref() == Some(&theirs) {
            return self.adopt(&theirs, ours).await;
        }
        Err(self.disagree(theirs))
    }

    /// Everything under the prefix, as events, and the revision of the read.
    pub async fn read_all(&self) -> Result<(Vec<Event>, i64), ClusterError> {
        let r = self.within(self.client().await?.kv_client().get(self.keys.prefix(), Some(GetOptions::new().with_prefix()))).await?;
        let revision = r.header().map(|h| h.revision()).unwrap_or(0);
        let mut batch = Batch { whole: true, ..Batch::default() };
        for kv in r.kvs() {
            self.take(&mut batch, kv, true)?;
        }
        Ok((batch.events(), revision))
    }

    /// Sorts one key-value into `batch`; a config that is not ours is an
    /// error (this authority must not follow a group whose pools differ).
    fn take(&self, batch: &mut Batch, kv: &etcd_client::KeyValue, put: bool) -> Result<(), ClusterError> {
        let key = String::from_utf8_lossy(kv.key()).into_owned();
        let revision = kv.mod_revision();
        let bad = |e: ClusterError| error!(error = %e, "ignored");
        match self.keys.kind(&key) {
            Some(Kind::Config) => {
                let theirs = String::from_utf8_lossy(kv.value()).into_owned();
                if put && theirs != self.fingerprint() {
                    return Err(self.disagree(theirs));
                }
            }
            Some(Kind::Overrides(pool)) => {
                let overrides = if put { decode(&key, kv.value()) } else { Ok(Overrides::default()) };
                match overrides {
                    Ok(overrides) => batch.overrides.push(Event::Overrides { pool: pool.to_owned(), overrides, revision }),
                    Err(e) => {
                        bad(e);
                        batch.overrides.push(Event::Unreadable { what: Unreadable::Overrides(pool.to_owned()), revision });
                    }
                }
            }
            Some(Kind::Decision(pool)) if put => match decode_decision(&key, kv.value()) {
                Ok(d) => batch.decisions.push((pool.to_owned(), d, revision)),
                Err(e) => bad(e),
            },
            Some(Kind::Serial(zone)) if put => match decode_serial(&key, kv.value()) {
                Ok(n) => batch.serials.push((zone.to_owned(), n, revision)),
                Err(e) => bad(e),
            },
            Some(Kind::Ring) => {
                let ring = if put { Registry::from_text(&String::from_utf8_lossy(kv.value())).map(Some) } else { Ok(None) };
                match ring {
                    Ok(ring) => batch.ring = Some(Event::Ring { ring, revision }),
                    Err(e) => {
                        bad(ClusterError::Corrupt { key, message: e.to_string() });
                        batch.ring = Some(Event::Unreadable { what: Unreadable::Ring, revision });
                    }
                }
            }
            Some(Kind::View(authority, pool, member)) => {
                let seen = put.then(|| kv.value() == b"up");
                batch.views.push((authority.to_owned(), pool.to_owned(), member.to_owned(), seen));
            }
            _ => {}
        }
        Ok(())
    }

    /// Commits pool `pool`'s overrides `o`, read at revision `base` (0: it
    /// had none); returns the revision that holds them.
    pub async fn commit(&self, pool: &str, o: &Overrides, base: i64) -> Result<i64, ClusterError> {
        self.commit_value(&format!("pool {pool}"), self.keys.overrides(pool), encode(o), base).await
    }

    /// Commits the ring's server table, read at revision `base`.
    pub async fn commit_ring(&self, ring: &Registry, base: i64) -> Result<i64, ClusterError> {
        self.commit_value("the ring table", self.keys.ring(), ring.to_text(), base).await
    }

    /// Puts `value` at `key` while it is still as read at `base` and the
    /// group's pools are still ours; returns the revision that holds it.
    async fn commit_value(&self, what: &str, key: String, value: String, base: i64) -> Result<i64, ClusterError> {
        // A node that just went away fails the first request sent through
        // it; the next goes to another. (Should the first have committed,
        // the next finds the revision moved and the updater tries again on
        // top of it: the same change.)
        // Long enough for etcd to elect a new leader when its leader went.
        let deadline = tokio::time::Instant::now() + self.timeout * 2;
        let mut backoff = Backoff::new(Duration::from_millis(25), self.timeout);
        loop {
            let pause = backoff.next_pause();
            match self.commit_once(what, &key, &value, base).await {
                Err(ClusterError::Unavailable(e)) if tokio::time::Instant::now() + pause < deadline => {
                    debug!(error = %e, "commit failed; trying again through another node");
                    tokio::time::sleep(pause).await;
                }
                other => return other,
            }
        }
    }

    async fn commit_once(&self, what: &str, key: &str, value: &str, base: i64) -> Result<i64, ClusterError> {
        let config = self.keys.config();
        let txn = Txn::new()
            .when([
                Compare::mod_revision(key, CompareOp::Equal, base),
                Compare::value(config.clone(), CompareOp::Equal, self.fingerprint()),
            ])
            .and_then([TxnOp::put(key, value, None)])
            .or_else([TxnOp::get(key, None), TxnOp::get(config, None)]);
        let r = self.within(self.client().await?.kv_client().txn(txn)).await?;
        let revision = r.header().map(|h| h.revision()).unwrap_or(0);
        if r.succeeded() {
            return Ok(revision);
        }
        let got: Vec<Option<(String, i64)>> = r
            .op_responses()
            .into_iter()
            .map(|op| match op {
                TxnOpResponse::Get(g) => g.kvs().first().map(|kv| (String::from_utf8_lossy(kv.value()).into_owned(), kv.mod_revision())),
                _ => None,
            })
            .collect();
        let theirs = got.get(1).cloned().flatten().map(|(v, _)| v).unwrap_or_default();
        if theirs != self.fingerprint() {
            return Err(self.disagree(theirs));
        }
        let now = got.first().cloned().flatten().map(|(_, r)| r).unwrap_or(revision);
        Err(ClusterError::Conflict { what: what.to_owned(), revision: now })
    }

    /// Asks etcd, through its leader, for the group's fingerprint.
    async fn probe(&self) -> Result<i64, ClusterError> {
        let r = self.within(self.client().await?.kv_client().get(self.keys.config(), None)).await?;
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
        let mut stream = self.within(self.client().await?.watch_client().watch(self.keys.prefix(), Some(options))).await?;
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
                    info!(revision, prefix = self.keys.prefix(), "cluster state available: following the group");
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

/// What one read or one watch response brought, in the order the updater
/// applies it: overrides first, then decisions with their serials.
#[derive(Default)]
struct Batch {
    overrides: Vec<Event>,
    decisions: Vec<(String, Decision, i64)>,
    serials: Vec<(String, u32, i64)>,
    views: Vec<(String, String, String, Option<bool>)>,
    ring: Option<Event>,
    /// A full read: the views are all there are, and no ring table means
    /// the group has none.
    whole: bool,
}

impl Batch {
    fn events(self) -> Vec<Event> {
        let mut out = self.overrides;
        match self.ring {
            Some(ring) => out.push(ring),
            None if self.whole => out.push(Event::Ring { ring: None, revision: 0 }),
            None => {}
        }
        if !self.views.is_empty() || self.whole {
            out.push(Event::Views { views: self.views, whole: self.whole });
        }
        if !self.decisions.is_empty() || !self.serials.is_empty() {
            out.push(Event::Decided { decisions: self.decisions, serials: self.serials });
        }
        out
    }
}

/// Puts per transaction, well under etcd's default limit of 128.
const PUTS_PER_TXN: usize = 100;
/// The decider's lease: another authority takes over this long after the
/// decider is gone without a word.
const DECIDER_TTL: i64 = 3;

impl Etcd {
    /// Commits the decider's `decisions` and, with the last of them,
    /// `serials`, each transaction only while `leader` is still the
    /// decider's election key; returns the revision of the last.
    pub async fn commit_decisions(
        &self,
        leader: &Leader,
        decisions: &[(String, Decision)],
        serials: &[(String, u32)],
    ) -> Result<i64, ClusterError> {
        let mut puts: Vec<TxnOp> =
            decisions.iter().map(|(pool, d)| TxnOp::put(self.keys.decision(pool), encode_decision(d), None)).collect();
        puts.extend(serials.iter().map(|(zone, n)| TxnOp::put(self.keys.serial(zone), n.to_string(), None)));
        let mut revision = 0;
        let chunks: Vec<Vec<TxnOp>> = puts.chunks(PUTS_PER_TXN).map(|c| c.to_vec()).collect();
        for chunk in chunks {
            let txn = Txn::new().when([Compare::create_revision(leader.key.clone(), CompareOp::Equal, leader.revision)]).and_then(chunk);
            let r = self.within(self.client().await?.kv_client().txn(txn)).await?;
            if !r.succeeded() {
                return Err(ClusterError::Unavailable("this authority is no longer the group's decider".into()));
            }
            revision = r.header().map(|h| h.revision()).unwrap_or(revision);
        }
        Ok(revision)
    }

    /// Moves zone `zone`'s group serial up to `serial`, unless it moved
    /// since it was read at `base` (this authority served a serial above
    /// the group's: after a restart, say).
    pub async fn raise_serial(&self, zone: &str, serial: u32, base: i64) -> Result<bool, ClusterError> {
        let key = self.keys.serial(zone);
        let txn = Txn::new().when([Compare::mod_revision(key.clone(), CompareOp::Equal, base)]).and_then([TxnOp::put(
            key,
            serial.to_string(),
            None,
        )]);
        Ok(self.within(self.client().await?.kv_client().txn(txn)).await?.succeeded())
    }

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
                let etcd = self.clone();
                tokio::spawn(async move {
                    for _ in 0..20 {
                        let revoked = match etcd.client().await {
                            Ok(mut c) => etcd.within(c.lease_revoke(lease)).await.is_ok(),
                            Err(_) => false,
                        };
                        if revoked {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                });
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
        let campaign = campaigner.campaign(self.keys.decider(), name.to_owned(), lease.id);
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
        lost: Arc<std::sync::atomic::AtomicBool>,
        shutdown: CancellationToken,
    ) {
        let mut backoff = Backoff::new(RETRY.0, RETRY.1);
        loop {
            let outcome = tokio::select! {
                r = self.views_term(&name, &mut changes, &lost) => r,
                _ = shutdown.cancelled() => return,
            };
            lost.store(true, std::sync::atomic::Ordering::Relaxed);
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
        lost: &std::sync::atomic::AtomicBool,
    ) -> Result<(), ClusterError> {
        let mut lease = Lease::grant(self).await?;
        // Whatever this lease did not publish yet must be offered again.
        lost.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                batch = changes.recv() => {
                    let Some(batch) = batch else { return Ok(()) };
                    let ops: Vec<TxnOp> = batch
                        .iter()
                        .map(|(pool, member, seen)| {
                            let key = self.keys.view(name, pool, member);
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
