//! The ring's UDP driver: owns the socket, feeds the pure member state
//! machine with what arrives and with its timeouts, sends what it says,
//! and hands joins, deaths and leaves to whoever tells the authorities
//! (`grpc::ring`). Malformed, forged and replayed datagrams are dropped and
//! counted.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::member::{Event, Member, Timing, To};
use super::wire;
use crate::config::RingConfig;
use crate::envelope::{Envelope, EnvelopeError, ReplayGuard};
use crate::metrics::{Expose, Writer};

/// What the driver counts, for the monitor's `/metrics`.
#[derive(Debug, Default)]
pub struct RingCounters {
    /// Dropped datagrams: not a ring message or malformed.
    pub malformed: AtomicU64,
    /// Dropped datagrams: no tag on a keyed ring, or a forged tag.
    pub unauthenticated: AtomicU64,
    /// Dropped datagrams: replayed, out of order or from a skewed clock.
    pub replayed: AtomicU64,
    /// Members in this host's view of the ring.
    pub members: AtomicU64,
    /// 1 while this host is the elected dispatcher.
    pub dispatcher: AtomicU64,
    /// Deaths this host found itself.
    pub deaths_found: AtomicU64,
}

impl RingCounters {
    fn count_drop(&self, error: &EnvelopeError) {
        use EnvelopeError::*;
        let c = match error {
            Short | Magic | Version(_) | Kind(_) | Malformed(_) => &self.malformed,
            Untagged | Forged => &self.unauthenticated,
            Replayed | Skew(_) => &self.replayed,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }
}

impl Expose for RingCounters {
    fn expose(&self, w: &mut Writer<'_, '_>) -> std::fmt::Result {
        let dropped = [("malformed", &self.malformed), ("unauthenticated", &self.unauthenticated), ("replayed", &self.replayed)]
            .into_iter()
            .map(|(reason, c)| (vec![("reason", reason.into())], c.load(Ordering::Relaxed)))
            .collect();
        w.counters("vnamed_ring_datagrams_dropped", "Ring datagrams dropped, by reason.", dropped)?;
        w.gauge("vnamed_ring_members", "Members in this host's view of the ring.", self.members.load(Ordering::Relaxed) as i64)?;
        w.gauge("vnamed_ring_dispatcher", "1 while this host is the elected dispatcher.", self.dispatcher.load(Ordering::Relaxed) as i64)?;
        w.counter("vnamed_ring_deaths_found", "Ring members this host found dead.", self.deaths_found.load(Ordering::Relaxed))
    }
}

/// What the authorities are told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    Announce(SocketAddr),
    /// This member is (or is no longer) the ring's elected dispatcher.
    Elected {
        me: SocketAddr,
        elected: bool,
    },
    Delete {
        dead: SocketAddr,
        reporter: SocketAddr,
    },
}

fn now_ms() -> u64 {
    crate::clock::unix_ms().max(0) as u64
}

/// Runs this host as a ring member until shutdown, then leaves gracefully;
/// what the authorities must hear goes to `reports`, in order, and
/// `elected` says, as it changes, whether this host is the dispatcher.
pub async fn run(
    cfg: RingConfig,
    reports: mpsc::Sender<Report>,
    counters: Arc<RingCounters>,
    elected: watch::Sender<bool>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let socket = UdpSocket::bind(cfg.listen).await.map_err(|e| anyhow::anyhow!("ring.listen {}: {e}", cfg.listen))?;
    let me = socket.local_addr()?;
    let timing = Timing {
        ping_interval: cfg.ping_interval,
        misses: cfg.misses,
        token_timeout: cfg.token_timeout,
        broadcast_timeout: cfg.broadcast_timeout,
    };
    let key = cfg.key.as_ref().map(|k| k.as_bytes().to_vec());
    // Told apart from the last boot's by equality only: any fresh value will do.
    let boot: u64 = rand::random();
    let mut seq = 0u64;
    let mut guard = ReplayGuard::default();
    let mut member = Member::join(me, cfg.dispatch_capable, timing, crate::clock::instant());
    let mut announced = false;
    // Whether the authorities were last told we are the dispatcher.
    let mut told_elected = false;
    // Every so often the authorities hear from us again, whatever happened:
    // a death reported late (a buddy's report delayed by a partition) that
    // struck us from their tables is undone within this period.
    let every = (timing.broadcast_timeout * 2).max(Duration::from_secs(1));
    let mut refresh = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut refresh_due = false;
    let mut known: BTreeSet<SocketAddr> = BTreeSet::new();
    let mut buf = vec![0u8; 65_536];
    info!(%me, capable = cfg.dispatch_capable, "ring member starting");
    loop {
        // Send what the state machine says, and act on what happened.
        while let Some((to, msg)) = member.poll_transmit() {
            seq += 1;
            let bytes = wire::encode(&msg, Envelope { boot, seq, time_ms: now_ms() }, key.as_deref());
            let targets: BTreeSet<SocketAddr> = match to {
                To::One(a) => BTreeSet::from([a]),
                To::All => member.members().into_iter().chain(cfg.peers.iter().copied()).filter(|a| *a != me).collect(),
            };
            for t in targets {
                if let Err(error) = socket.send_to(&bytes, t).await {
                    debug!(to = %t, %error, "ring send failed");
                }
            }
        }
        let mut reannounced = false;
        while let Some(event) = member.poll_event() {
            // A member that can see no more than half of the ring it knew is
            // more likely cut off itself than surrounded by deaths: it says
            // nothing to the authorities (the others will, if it is them).
            let quorum = member.members().len() * 2 > known.len();
            match event {
                Event::Dead { dead, reporter } => {
                    warn!(%dead, %reporter, quorum, "ring member dead");
                    if reporter == me {
                        counters.deaths_found.fetch_add(1, Ordering::Relaxed);
                    }
                    if reporter == me && quorum {
                        let _ = reports.try_send(Report::Delete { dead, reporter: me });
                    }
                }
                Event::Left(a) => info!(member = %a, "ring member left"),
                Event::Joined(a) => {
                    debug!(member = %a, "ring member joined");
                    // The ring grew back around us: make sure the authorities
                    // count us in (we may have been reported dead meanwhile).
                    if announced {
                        reannounced |= reports.try_send(Report::Announce(me)).is_ok();
                    }
                }
                Event::Dispatcher(d) => {
                    info!(dispatcher = ?d, "dispatcher elected");
                    counters.dispatcher.store((d == Some(me)) as u64, Ordering::Relaxed);
                    elected.send_if_modified(|e| std::mem::replace(e, d == Some(me)) != (d == Some(me)));
                }
                Event::Expelled => {
                    // Counted out while frozen or cut off: back in the ring
                    // by its Join, and in the authorities' table by this.
                    warn!("reported dead while alive; rejoining");
                    if announced {
                        reannounced |= reports.try_send(Report::Announce(me)).is_ok();
                    }
                }
                Event::Rebuilt(members) => {
                    info!(count = members.len(), ?members, "ring rebuilt");
                    // A rebuild may follow our own expulsion (a freeze past the
                    // datagrams' freshness): make sure the authorities count us in.
                    if announced && members.contains(&me) {
                        reannounced |= reports.try_send(Report::Announce(me)).is_ok();
                    }
                    // The smallest address speaks for the rebuilt ring: who is gone died.
                    if members.first() == Some(&me) && members.len() * 2 > known.len() {
                        for gone in known.iter().filter(|a| !members.contains(a)) {
                            let _ = reports.try_send(Report::Delete { dead: *gone, reporter: me });
                        }
                    }
                }
                Event::Delivered(_) => {}
            }
        }
        counters.members.store(member.members().len() as u64, Ordering::Relaxed);
        // The settled view, to tell who is missing after a rebuild.
        if member.is_member() {
            known = member.members().into_iter().collect();
        }
        if member.is_member() && !announced {
            announced = true;
            reannounced |= reports.try_send(Report::Announce(me)).is_ok();
        }
        if std::mem::take(&mut refresh_due) && announced && member.is_member() {
            reannounced |= reports.try_send(Report::Announce(me)).is_ok();
        }
        // Whether we are the dispatcher, once the authorities know us (again:
        // an announce follows a removal, which forgot it).
        let elected = member.dispatcher() == Some(me);
        if reannounced {
            told_elected = false;
        }
        if announced && elected != told_elected && reports.try_send(Report::Elected { me, elected }).is_ok() {
            told_elected = elected;
        }
        let deadline = member.poll_timeout().unwrap_or_else(|| crate::clock::instant() + timing.ping_interval);
        tokio::select! {
            r = socket.recv_from(&mut buf) => {
                let Ok((n, from)) = r else { continue };
                match wire::decode(&buf[..n], key.as_deref()).and_then(|(msg, env)| guard.check(from, env, now_ms()).map(|()| msg)) {
                    Ok(msg) => member.handle(crate::clock::instant(), from, msg),
                    Err(error) => {
                        counters.count_drop(&error);
                        debug!(%from, %error, "ring datagram dropped");
                    }
                }
            }
            _ = tokio::time::sleep_until(deadline.into()) => member.handle_timeout(crate::clock::instant()),
            _ = refresh.tick() => refresh_due = true,
            _ = shutdown.cancelled() => break,
        }
    }
    // Leave gracefully: tell the ring and the authorities.
    member.leave();
    let everyone: Vec<SocketAddr> = member.members().into_iter().chain(cfg.peers.iter().copied()).filter(|a| *a != me).collect();
    while let Some((to, msg)) = member.poll_transmit() {
        seq += 1;
        let bytes = wire::encode(&msg, Envelope { boot, seq, time_ms: now_ms() }, key.as_deref());
        let targets = match to {
            To::One(a) => vec![a],
            To::All => everyone.clone(),
        };
        for t in targets {
            let _ = socket.send_to(&bytes, t).await;
        }
    }
    let _ = reports.send(Report::Delete { dead: me, reporter: me }).await;
    info!(%me, "left the ring");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(me: SocketAddr, all: &[SocketAddr]) -> RingConfig {
        RingConfig {
            listen: me,
            ping_interval: Duration::from_millis(500),
            misses: 3,
            token_timeout: Duration::from_secs(2),
            broadcast_timeout: Duration::from_millis(2500),
            dispatch_capable: true,
            peers: all.iter().copied().filter(|a| *a != me).collect(),
            key: Some("ring-key".into()),
        }
    }

    /// Three members on loopback under a paused clock: the timers run on
    /// virtual time, the datagrams on real sockets. One is killed (its
    /// task dropped, as kill -9 would): its buddies report it dead within
    /// `misses` ping intervals (and one more for the ping under way), and
    /// the others elect the smallest address left as the dispatcher.
    #[tokio::test(start_paused = true)]
    async fn a_killed_member_is_reported_dead_within_its_misses_on_virtual_time() {
        let all: Vec<SocketAddr> = (1..=3).map(|i| format!("127.88.1.{i}:7946").parse().unwrap()).collect();
        let (reports, mut heard) = mpsc::channel(64);
        let mut members = Vec::new();
        let mut elected = Vec::new();
        for &me in &all {
            let (tx, rx) = watch::channel(false);
            elected.push(rx);
            let stop = CancellationToken::new();
            let task = tokio::spawn(run(config(me, &all), reports.clone(), Arc::default(), tx, stop.clone()));
            members.push((task, stop));
        }
        let mut announced = BTreeSet::new();
        while announced.len() < 3 {
            if let Report::Announce(a) = tokio::time::timeout(Duration::from_secs(10), heard.recv()).await.expect("all announce").unwrap() {
                announced.insert(a);
            }
        }
        // Let the ring settle with the token going round, then kill the first.
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(*elected[0].borrow(), "the smallest dispatch-capable address is the dispatcher");
        while heard.try_recv().is_ok() {}
        let killed = tokio::time::Instant::now();
        members[0].0.abort();
        let dead = loop {
            match tokio::time::timeout(Duration::from_secs(10), heard.recv()).await.expect("a death is reported").unwrap() {
                Report::Delete { dead, reporter } if dead == all[0] => break (reporter, killed.elapsed()),
                _ => {}
            }
        };
        let (reporter, after) = dead;
        assert_ne!(reporter, all[0]);
        assert!(after <= Duration::from_millis(500) * 4, "reported {after:?} after the kill (virtual time)");
        assert!(after >= Duration::from_millis(500) * 2, "not before its pings were missed: {after:?}");
        let mut e = elected[1].clone();
        tokio::time::timeout(Duration::from_secs(10), e.wait_for(|d| *d)).await.expect("the next smallest takes over").unwrap();
        for (task, stop) in members.into_iter().skip(1) {
            stop.cancel();
            task.await.unwrap().unwrap();
        }
    }
}
