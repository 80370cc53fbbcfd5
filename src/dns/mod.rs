//! The DNS authority: the snapshot of what is served, the pure
//! authoritative lookup and its pre-encoded fast path, the hickory-server
//! handler, the UDP workers and TCP listeners, and NOTIFY to secondaries.

pub mod fast;
#[doc(hidden)]
pub mod fixture;
pub mod handler;
pub mod lookup;
pub mod metrics;
pub mod notify;
pub mod snapshot;
pub mod udp;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use hickory_server::Server;
use ipnet::IpNet;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tracing::warn;

use handler::DnsHandler;
use metrics::DnsCounters;
use snapshot::Snapshot;

/// How long an idle TCP client may hold a connection.
const TCP_IDLE: Duration = Duration::from_secs(10);

/// Bound sockets for every `dns_listen` address.
pub struct Listeners {
    pub udp: Vec<std::net::UdpSocket>,
    pub tcp: Vec<TcpListener>,
    pub addrs: Vec<SocketAddr>,
}

/// Binds UDP (`workers` sockets each) and TCP on every address; all binding
/// errors are reported together.
pub async fn bind(addrs: &[SocketAddr], workers: usize) -> Result<Listeners, Vec<String>> {
    let mut out = Listeners { udp: Vec::new(), tcp: Vec::new(), addrs: Vec::new() };
    let mut problems = Vec::new();
    for &addr in addrs {
        let udp = match udp::bind(addr, workers) {
            Ok(u) => u,
            Err(e) => {
                problems.push(format!("dns_listen {addr} (UDP): {e}"));
                continue;
            }
        };
        let bound = udp[0].local_addr().expect("bound socket has an address");
        match TcpListener::bind(bound).await {
            Ok(t) => {
                out.udp.extend(udp);
                out.tcp.push(t);
                out.addrs.push(bound);
            }
            Err(e) => problems.push(format!("dns_listen {addr} (TCP): {e}")),
        }
    }
    if problems.is_empty() { Ok(out) } else { Err(problems) }
}

/// The running DNS service.
pub struct DnsService {
    tcp: Server<DnsHandler>,
    workers: Vec<std::thread::JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    slow: tokio::task::JoinHandle<()>,
}

impl DnsService {
    /// Starts serving on bound sockets.
    pub fn start(
        listeners: Listeners,
        snapshot: Arc<ArcSwap<Snapshot>>,
        allow_transfer: Vec<IpNet>,
        counters: Arc<DnsCounters>,
    ) -> std::io::Result<Self> {
        let mut tcp = Server::new(DnsHandler::new(snapshot.clone(), allow_transfer.clone(), counters.clone()));
        for l in listeners.tcp {
            tcp.register_listener(l, TCP_IDLE, 64);
        }
        let (slow_tx, slow_rx) = mpsc::channel(udp::SLOW_QUEUE);
        let slow = tokio::spawn(udp::slow_path(DnsHandler::new(snapshot.clone(), allow_transfer, counters.clone()), slow_rx));
        let stop = Arc::new(AtomicBool::new(false));
        let workers = udp::start(listeners.udp, snapshot, slow_tx, counters, stop.clone())?;
        Ok(Self { tcp, workers, stop, slow })
    }

    /// Stops taking queries and lets the ones in flight finish.
    pub async fn shutdown(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let workers = std::mem::take(&mut self.workers);
        let _ = tokio::task::spawn_blocking(move || {
            for w in workers {
                let _ = w.join();
            }
        })
        .await;
        // The workers held the queue's senders: the slow path drains and ends.
        let _ = self.slow.await;
        if let Err(error) = self.tcp.shutdown_gracefully().await {
            warn!(%error, "TCP listeners did not stop cleanly");
        }
    }
}
