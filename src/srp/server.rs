//! The SRP responder's sockets: one UDP socket per cluster address (so
//! every reply leaves from the address its request came to), fed to the
//! pure directory with the pools' current preference; and, with peers, the
//! control socket that drives the active/passive state machine. Only the
//! active responder holds the cluster sockets. They are bound with
//! SO_REUSEPORT so that a graceful hand-over overlaps instead of leaving a
//! gap; a socket that stops first stops matching new requests (it connects
//! to itself), then answers what it had queued.

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::SrpCounters;
use super::directory::Directory;
use super::peer::{Peer, PeerEvent, PeerMsg};
use crate::config::SrpConfig;
use crate::dns::snapshot::Snapshot;
use crate::envelope::{Envelope, ReplayGuard};

/// Binds one cluster address, sharing the port only with other vnamed
/// responders of the same user (SO_REUSEPORT).
fn bind(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let domain = if addr.is_ipv4() { socket2::Domain::IPV4 } else { socket2::Domain::IPV6 };
    let s = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    s.set_reuse_port(true)?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    UdpSocket::from_std(s.into())
}

/// The cluster addresses, each on the SRP port.
fn addresses(cfg: &SrpConfig) -> Vec<SocketAddr> {
    cfg.cluster.iter().flat_map(|c| c.addresses.iter().map(|a| SocketAddr::new(*a, cfg.port))).collect()
}

/// Answers on every cluster address until `stop`.
fn serve(
    sockets: Vec<UdpSocket>,
    directory: Arc<Directory>,
    snapshot: Arc<ArcSwap<Snapshot>>,
    counters: Arc<SrpCounters>,
    stop: CancellationToken,
) {
    for socket in sockets {
        let (directory, snapshot, counters, stop) = (directory.clone(), snapshot.clone(), counters.clone(), stop.clone());
        tokio::spawn(async move {
            let local = socket.local_addr().map(|a| a.ip()).expect("bound");
            // One byte more than the longest request: longer ones show as oversized.
            let mut buf = vec![0u8; 2048];
            let mut stopping = false;
            loop {
                let (n, peer) = if stopping {
                    // Answer what is already queued: closing the socket
                    // would drop it, and those clients asked in time.
                    match socket.try_recv_from(&mut buf) {
                        Ok(x) => x,
                        Err(_) => return,
                    }
                } else {
                    tokio::select! {
                        r = socket.recv_from(&mut buf) => match r {
                            Ok(x) => x,
                            Err(error) => {
                                debug!(%error, "srp receive failed");
                                continue;
                            }
                        },
                        _ = stop.cancelled() => {
                            // Connected to itself, the socket no longer
                            // matches other senders: the port's other
                            // (new) socket gets every datagram from now on,
                            // and none lands here after the queue is drained.
                            if let Ok(me) = socket.local_addr()
                                && let Err(error) = socket.connect(me).await
                            {
                                debug!(%error, "srp socket kept taking requests while stopping");
                            }
                            // A datagram matched to this socket just before
                            // is queued within microseconds; allow for that.
                            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                            stopping = true;
                            continue;
                        }
                    }
                };
                let answer = {
                    let snap = snapshot.load();
                    directory.answer(local, peer.ip(), &buf[..n], &snap.preferred, crate::clock::instant())
                };
                match answer {
                    Ok(reply) => {
                        if socket.send_to(&reply, peer).await.is_ok() {
                            counters.replies.inc();
                        }
                    }
                    Err(why) => {
                        counters.no_reply(why);
                        debug!(%peer, reason = why.label(), "srp request left without a reply");
                    }
                }
            }
        });
    }
}

/// Binds every cluster address at once.
fn bind_all(cfg: &SrpConfig) -> Result<Vec<UdpSocket>, String> {
    addresses(cfg).into_iter().map(|a| bind(a).map_err(|e| format!("srp cluster address {a}: {e}"))).collect()
}

/// The cluster sockets to bind at startup, so that an address in use is a
/// startup problem: all of them for a lone responder; none with peers
/// (then they are bound only while this responder is the active one).
pub fn bind_at_start(cfg: &SrpConfig) -> Result<Vec<UdpSocket>, String> {
    if cfg.peers.is_empty() { bind_all(cfg) } else { Ok(Vec::new()) }
}

/// Runs the responder until shutdown, with the sockets `bind_at_start`
/// gave (a lone responder is always the active one).
pub async fn run(
    cfg: SrpConfig,
    sockets: Vec<UdpSocket>,
    snapshot: Arc<ArcSwap<Snapshot>>,
    counters: Arc<SrpCounters>,
    shutdown: CancellationToken,
) {
    let directory = Arc::new(Directory::new(&cfg, crate::clock::instant()));
    // Validation ties the two: peers need this responder's control address.
    let Some(control_addr) = cfg.control.filter(|_| !cfg.peers.is_empty()) else {
        counters.active.set(1);
        counters.activations.inc();
        info!(addresses = ?addresses(&cfg), "srp responder serving");
        serve(sockets, directory, snapshot, counters, shutdown.clone());
        shutdown.cancelled().await;
        return;
    };
    drop(sockets);
    let control = match UdpSocket::bind(control_addr).await {
        Ok(s) => s,
        Err(error) => {
            warn!(%control_addr, %error, "srp control socket: cannot bind; not responding");
            return;
        }
    };
    let key = cfg.key.as_ref().map(|k| k.as_bytes().to_vec());
    let boot: u64 = rand::random();
    let mut seq = 0u64;
    let mut guard = ReplayGuard::default();
    let mut peer = Peer::start(control_addr, cfg.peers.clone(), cfg.keepalive_interval, cfg.keepalive_timeout, crate::clock::instant());
    let mut serving: Option<CancellationToken> = None;
    let mut stopping = false;
    let mut buf = vec![0u8; 4096];
    loop {
        // Events first: a new active responder binds before it says so.
        while let Some(PeerEvent::Serve(on)) = peer.poll_event() {
            if on {
                match bind_all(&cfg) {
                    Ok(sockets) => {
                        // Not tied to shutdown: a stopping active responder
                        // serves until its successor does.
                        let token = CancellationToken::new();
                        serve(sockets, directory.clone(), snapshot.clone(), counters.clone(), token.clone());
                        serving = Some(token);
                        counters.active.set(1);
                        counters.activations.inc();
                        info!(control = %control_addr, "srp responder active");
                    }
                    Err(error) => warn!(%error, "srp responder cannot serve"),
                }
            } else if let Some(token) = serving.take() {
                token.cancel();
                counters.active.set(0);
                info!(control = %control_addr, "srp responder passive");
            }
        }
        while let Some((to, msg)) = peer.poll_transmit() {
            seq += 1;
            let bytes = msg.encode(Envelope { boot, seq, time_ms: crate::clock::unix_ms() as u64 }, key.as_deref());
            let _ = control.send_to(&bytes, to).await;
        }
        if stopping && peer.is_stopped() {
            break;
        }
        let deadline = peer.poll_timeout().unwrap_or_else(|| crate::clock::instant() + cfg.keepalive_interval);
        tokio::select! {
            r = control.recv_from(&mut buf) => {
                let Ok((n, from)) = r else { continue };
                if !peer.is_peer(from) {
                    counters.peer_dropped.inc();
                    continue;
                }
                let now_ms = crate::clock::unix_ms() as u64;
                match PeerMsg::decode(&buf[..n], key.as_deref()).and_then(|(m, env)| guard.check(from, env, now_ms).map(|()| m)) {
                    Ok(msg) => peer.handle(crate::clock::instant(), from, msg),
                    Err(error) => {
                        counters.peer_dropped.inc();
                        debug!(%from, %error, "srp peer message dropped");
                    }
                }
            }
            _ = tokio::time::sleep_until(deadline.into()) => peer.handle_timeout(crate::clock::instant()),
            _ = shutdown.cancelled(), if !stopping => {
                stopping = true;
                peer.stop(crate::clock::instant());
            }
        }
    }
    if let Some(token) = serving.take() {
        token.cancel();
    }
    counters.active.set(0);
    info!(control = %control_addr, "srp responder stopped");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hand-over's premise: once the stopping socket is connected to
    /// itself, the kernel gives every new request on the shared port to
    /// the other socket, whatever port it comes from.
    #[tokio::test]
    async fn a_socket_connected_to_itself_leaves_the_shared_port_to_the_other() {
        let old = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = old.local_addr().unwrap();
        let new = bind(addr).unwrap();
        // Before: requests from many ports are spread over both.
        let senders: Vec<std::net::UdpSocket> = (0..64).map(|_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap()).collect();
        for s in &senders {
            s.send_to(b"before", addr).unwrap();
        }
        let count = |sock: &UdpSocket| {
            let mut buf = [0u8; 16];
            let mut n = 0;
            while sock.try_recv_from(&mut buf).is_ok() {
                n += 1;
            }
            n
        };
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let (a, b) = (count(&old), count(&new));
        assert_eq!(a + b, 64);
        assert!(a > 0 && b > 0, "64 senders all hashed to one socket ({a}, {b})");
        // After: all to the new one.
        old.connect(addr).await.unwrap();
        for s in &senders {
            s.send_to(b"after", addr).unwrap();
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert_eq!(count(&old), 0);
        assert_eq!(count(&new), 64);
    }
}
