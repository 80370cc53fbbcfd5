//! The DNS authority: the snapshot of what is served, the pure
//! authoritative lookup and its pre-encoded fast path, the hickory-server
//! handler, the UDP workers and TCP listeners, and NOTIFY to secondaries.

pub mod answer;
pub mod encode;
pub mod fast;
#[doc(hidden)]
pub mod fixture;
pub mod handler;
pub mod lookup;
pub mod metrics;
pub mod notify;
pub mod rrl;
pub mod snapshot;
pub mod stable;
pub mod tcp;
pub mod udp;
pub mod view;
pub mod wire;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;
use ipnet::IpNet;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::config::Limits;
use crate::sys::accept::{Gate, Gates};
use handler::DnsHandler;
use metrics::DnsCounters;
use rrl::Rrl;
use snapshot::Snapshot;

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
    tcp: Vec<tokio::task::JoinHandle<()>>,
    tcp_stop: CancellationToken,
    workers: Vec<std::thread::JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    slow: tokio::task::JoinHandle<()>,
}

impl DnsService {
    /// Starts serving on bound sockets; each TCP listener's gate goes into `gates`.
    pub fn start(
        listeners: Listeners,
        snapshot: Arc<ArcSwap<Snapshot>>,
        allow_transfer: Vec<IpNet>,
        counters: Arc<DnsCounters>,
        limits: &Limits,
        rrl: Option<Arc<Rrl>>,
        gates: &Gates,
    ) -> std::io::Result<Self> {
        let handler = Arc::new(DnsHandler::new(snapshot.clone(), allow_transfer.clone(), counters.clone()));
        let tcp_stop = CancellationToken::new();
        // One cap for all DNS TCP listeners would let one address starve
        // the others; each gets its share.
        let share = (limits.dns_tcp_connections / listeners.tcp.len().max(1)).max(1);
        let tcp = listeners
            .tcp
            .into_iter()
            .map(|l| {
                let gate = Gate::new(l, "dns_tcp", share, limits.handshake_timeout, limits.dns_tcp_idle).evicting();
                gates.add(&gate);
                tokio::spawn(tcp::serve(gate, handler.clone(), limits.dns_tcp_message, tcp_stop.clone()))
            })
            .collect();
        let (slow_tx, slow_rx) = mpsc::channel(udp::SLOW_QUEUE);
        let slow_handler = DnsHandler::new(snapshot.clone(), allow_transfer, counters.clone()).with_rrl(rrl.clone());
        let slow = tokio::spawn(udp::slow_path(slow_handler, slow_rx));
        let stop = Arc::new(AtomicBool::new(false));
        let workers = udp::start(listeners.udp, snapshot, slow_tx, counters, rrl, stop.clone())?;
        Ok(Self { tcp, tcp_stop, workers, stop, slow })
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
        self.tcp_stop.cancel();
        for t in self.tcp.drain(..) {
            if let Err(error) = t.await {
                warn!(%error, "a DNS TCP listener did not stop cleanly");
            }
        }
    }
}
