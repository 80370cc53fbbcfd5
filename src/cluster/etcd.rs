//! The etcd client of the shared control state: connects with the
//! group's endpoints, TLS and credentials (on first use, so an authority
//! started while etcd is out of reach serves and connects later;
//! credentials etcd refuses are an error of their own, and expired tokens
//! are renewed), one endpoint at a time; joins (the group's pools must be
//! this authority's); reads everything under the prefix; and commits: an
//! operator's change to a pool's overrides or the ring table in one
//! transaction that holds only if nobody changed it since and only while
//! the group's pools are still this authority's, the decider's decisions
//! while it holds its term, serial raises. `driver` runs it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, ConnectOptions, GetOptions, Txn, TxnOp, TxnOpResponse};
use tracing::{debug, info};

use super::{Batch, ClusterError, Event, Keys, Leader, encode, encode_decision};
use crate::backoff::Backoff;
use crate::config::ClusterConfig;
use crate::pool::{Decision, Overrides};
use crate::ring::registry::Registry;

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
    pub(super) timeout: Duration,
    /// This authority's pools' fingerprint (a configuration edit changes it).
    fingerprint: Arc<arc_swap::ArcSwap<String>>,
    /// The fingerprint before an edit whose adoption by the group is owed.
    adopting: Arc<arc_swap::ArcSwapOption<String>>,
}

pub(super) fn unavailable(e: impl std::fmt::Display) -> ClusterError {
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
            let password = crate::files::read_regular(file, crate::files::SMALL_FILE, crate::files::Links::Follow)
                .map_err(|e| ClusterError::Config(format!("password_file {}: {e}", file.display())))?;
            options = options.with_user(user.clone(), password.trim_end().to_owned());
        }
        if let Some(t) = &c.tls {
            let read = |p: &std::path::Path| {
                crate::files::read_bytes(p, crate::files::SMALL_FILE, crate::files::Links::Follow)
                    .map_err(|e| ClusterError::Config(format!("{}: {e}", p.display())))
            };
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
    pub(super) async fn client(&self) -> Result<Client, ClusterError> {
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
    pub(super) async fn within<T>(&self, f: impl Future<Output = Result<T, etcd_client::Error>>) -> Result<T, ClusterError> {
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
        let mut batch = Batch::whole();
        for kv in r.kvs() {
            self.take(&mut batch, kv, true)?;
        }
        Ok((batch.events(), revision))
    }

    /// Sorts one key-value into `batch`; a config that is not ours is an
    /// error (this authority must not follow a group whose pools differ).
    pub(super) fn take(&self, batch: &mut Batch, kv: &etcd_client::KeyValue, put: bool) -> Result<(), ClusterError> {
        let key = String::from_utf8_lossy(kv.key());
        batch.take(&self.keys, &self.fingerprint(), &key, kv.value(), kv.mod_revision(), put)
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
}

/// Puts per transaction, well under etcd's default limit of 128.
pub(super) const PUTS_PER_TXN: usize = 100;

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
}
