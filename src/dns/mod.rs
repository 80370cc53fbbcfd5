//! The DNS authority: snapshot of what is served, the pure authoritative
//! lookup, the hickory-server handler, NOTIFY to secondaries, and the
//! listeners.

pub mod handler;
pub mod lookup;
pub mod notify;
pub mod snapshot;

use std::net::SocketAddr;
use std::time::Duration;

use hickory_server::Server;
use tokio::net::{TcpListener, UdpSocket};

use handler::DnsHandler;

/// How long an idle TCP client may hold a connection.
const TCP_IDLE: Duration = Duration::from_secs(10);

/// Binds UDP and TCP on every address; all binding errors are reported together.
pub async fn bind(addrs: &[SocketAddr]) -> Result<Vec<(UdpSocket, TcpListener)>, Vec<String>> {
    let mut out = Vec::new();
    let mut problems = Vec::new();
    for &addr in addrs {
        let udp = UdpSocket::bind(addr).await;
        let tcp = TcpListener::bind(addr).await;
        match (udp, tcp) {
            (Ok(u), Ok(t)) => out.push((u, t)),
            (u, t) => {
                for e in [u.err(), t.err()].into_iter().flatten() {
                    problems.push(format!("dns_listen {addr}: {e}"));
                }
            }
        }
    }
    if problems.is_empty() { Ok(out) } else { Err(problems) }
}

/// Starts serving on bound sockets.
pub fn serve(handler: DnsHandler, sockets: Vec<(UdpSocket, TcpListener)>) -> Server<DnsHandler> {
    let mut server = Server::new(handler);
    for (udp, tcp) in sockets {
        server.register_socket(udp);
        server.register_listener(tcp, TCP_IDLE, 64);
    }
    server
}
