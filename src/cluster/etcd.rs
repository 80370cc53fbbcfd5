//! The etcd driver of the shared control state: connects with the group's
//! endpoints, TLS and credentials; joins (the group's pools must be this
//! authority's); commits an operator's change to a pool's overrides in one
//! transaction that holds only if nobody changed them since, and only
//! while the group's pools are still this authority's; and follows the
//! group: reads everything, then watches from the next revision, probing
//! etcd every second. Whatever breaks (a node gone, no quorum, a watch
//! cancelled) marks the state unavailable and starts over with a full
//! read, so nothing is missed and nothing older is applied.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, ConnectOptions, GetOptions, Txn, TxnOp, TxnOpResponse, WatchOptions};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::{ClusterError, ClusterStatus, Event, Keys, decode, encode};
use crate::config::ClusterConfig;
use crate::pool::Overrides;

/// How often etcd is asked whether it still has a quorum.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// Attempts at a commit through whichever node answers.
const COMMIT_TRIES: u32 = 3;
/// Backoff bounds between attempts to follow the group again.
const RETRY: (Duration, Duration) = (Duration::from_millis(200), Duration::from_secs(3));

#[derive(Clone)]
pub struct Etcd {
    client: Client,
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
        let client = tokio::time::timeout(c.timeout, Client::connect(&c.endpoints, Some(options)))
            .await
            .map_err(|_| unavailable("no etcd endpoint answered in time"))?
            .map_err(unavailable)?;
        Ok(Self {
            client,
            keys: Keys::new(&c.prefix),
            timeout: c.timeout,
            fingerprint: Arc::new(arc_swap::ArcSwap::from_pointee(fingerprint)),
            adopting: Arc::default(),
        })
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
        let r = self.within(self.client.kv_client().txn(txn)).await?;
        self.adopting.store(None);
        if r.succeeded() {
            info!(fingerprint = %fingerprint, "the edited pools are the group's now: edit every authority's configuration alike");
        }
        Ok(())
    }

    async fn within<T>(&self, f: impl Future<Output = Result<T, etcd_client::Error>>) -> Result<T, ClusterError> {
        tokio::time::timeout(self.timeout, f).await.map_err(|_| unavailable("etcd did not answer in time"))?.map_err(unavailable)
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
        let r = self.within(self.client.kv_client().txn(txn)).await?;
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

    /// Every pool's overrides with the revision each was last changed at,
    /// and the revision of the whole read.
    pub async fn read_all(&self) -> Result<(Vec<(String, Overrides, i64)>, i64), ClusterError> {
        let prefix = self.keys.overrides_all();
        let r = self.within(self.client.kv_client().get(prefix, Some(GetOptions::new().with_prefix()))).await?;
        let revision = r.header().map(|h| h.revision()).unwrap_or(0);
        let mut out = Vec::with_capacity(r.kvs().len());
        for kv in r.kvs() {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            let Some(pool) = self.keys.pool_of(&key) else { continue };
            match decode(&key, kv.value()) {
                Ok(o) => out.push((pool.to_owned(), o, kv.mod_revision())),
                Err(e) => warn!(error = %e, "ignored"),
            }
        }
        Ok((out, revision))
    }

    /// Commits pool `pool`'s overrides `o`, read at revision `base` (0: it
    /// had none); returns the revision that holds them.
    pub async fn commit(&self, pool: &str, o: &Overrides, base: i64) -> Result<i64, ClusterError> {
        // A node that just went away fails the first request sent through
        // it; the next goes to another. (Should the first have committed,
        // the next finds the revision moved and the updater tries again on
        // top of it: the same overrides.)
        let mut last = None;
        for _ in 0..COMMIT_TRIES {
            match self.commit_once(pool, o, base).await {
                Err(ClusterError::Unavailable(e)) => {
                    last = Some(e);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                other => return other,
            }
        }
        Err(ClusterError::Unavailable(last.unwrap_or_default()))
    }

    async fn commit_once(&self, pool: &str, o: &Overrides, base: i64) -> Result<i64, ClusterError> {
        let key = self.keys.overrides(pool);
        let config = self.keys.config();
        let txn = Txn::new()
            .when([
                Compare::mod_revision(key.clone(), CompareOp::Equal, base),
                Compare::value(config.clone(), CompareOp::Equal, self.fingerprint()),
            ])
            .and_then([TxnOp::put(key.clone(), encode(o), None)])
            .or_else([TxnOp::get(key, None), TxnOp::get(config, None)]);
        let r = self.within(self.client.kv_client().txn(txn)).await?;
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
        Err(ClusterError::Conflict { pool: pool.to_owned(), revision: now })
    }

    /// Asks etcd, through its leader, for the group's fingerprint.
    async fn probe(&self) -> Result<i64, ClusterError> {
        let r = self.within(self.client.kv_client().get(self.keys.config(), None)).await?;
        Ok(r.header().map(|h| h.revision()).unwrap_or(0))
    }

    /// Joins and reads everything, telling the updater; returns the
    /// revision read at.
    async fn sync(&self, events: &mpsc::Sender<Event>) -> Result<i64, ClusterError> {
        self.join().await?;
        let (all, revision) = self.read_all().await?;
        for (pool, overrides, at) in all {
            if events.send(Event::Overrides { pool, overrides, revision: at }).await.is_err() {
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
        let mut stream = self.within(self.client.watch_client().watch(self.keys.prefix(), Some(options))).await?;
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
                    for ev in r.events() {
                        let Some(kv) = ev.kv() else { continue };
                        let key = String::from_utf8_lossy(kv.key()).into_owned();
                        if key == self.keys.config() {
                            let theirs = String::from_utf8_lossy(kv.value()).into_owned();
                            if theirs != self.fingerprint() {
                                return Err(self.disagree(theirs));
                            }
                            continue;
                        }
                        let Some(pool) = self.keys.pool_of(&key) else { continue };
                        let overrides = match ev.event_type() {
                            etcd_client::EventType::Put => match decode(&key, kv.value()) {
                                Ok(o) => o,
                                Err(e) => {
                                    error!(error = %e, "ignored");
                                    continue;
                                }
                            },
                            etcd_client::EventType::Delete => Overrides::default(),
                        };
                        let event = Event::Overrides { pool: pool.to_owned(), overrides, revision: kv.mod_revision() };
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
    /// broken watch is read again at once; when etcd cannot answer, says
    /// so, and starts over after a backoff.
    pub async fn run(self, events: mpsc::Sender<Event>, status: Arc<ClusterStatus>, shutdown: CancellationToken) {
        let mut backoff = RETRY.0;
        loop {
            let attempt = async {
                let revision = self.sync(&events).await?;
                status.resyncs.inc();
                if status.set_available(true, None) {
                    info!(revision, prefix = self.keys.prefix(), "cluster state available: following the group");
                }
                backoff = RETRY.0;
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
                    let why = match &e {
                        ClusterError::Unavailable(m) => m.clone(),
                        other => other.to_string(),
                    };
                    if status.set_available(false, Some(why)) || matches!(e, ClusterError::Disagree { .. }) {
                        error!(error = %e, "serving the last state, refusing API changes");
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.cancelled() => return,
            }
            backoff = (backoff * 2).min(RETRY.1);
        }
    }
}
