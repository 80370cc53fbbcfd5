//! Serving gRPC for every role (authority, monitor, farm) the same way:
//! connections through a `Gate` (cap, handshake and idle timeouts,
//! descriptor back-off), TLS when configured (the handshake off the accept
//! loop, the material current at each connection), and HTTP/2 pings every
//! third of the idle timeout, so a live client, even one only watching,
//! is never taken for idle.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tonic::transport::server::Connected;
use tracing::debug;

use super::tls::{Reloading, client_names};
use crate::sys::accept::{Gate, Guarded};

/// Who is at the other end of a gRPC connection: its address and, over
/// mutual TLS, the names in its certificate.
#[derive(Debug, Clone)]
pub struct Peer {
    pub remote: Option<SocketAddr>,
    pub names: Arc<[String]>,
}

/// A gRPC connection: a guarded TCP stream, in TLS or not.
pub enum Conn {
    Plain(Guarded<TcpStream>),
    Tls(Box<TlsStream<Guarded<TcpStream>>>, Arc<[String]>),
}

impl Connected for Conn {
    type ConnectInfo = Peer;

    fn connect_info(&self) -> Peer {
        match self {
            Conn::Plain(s) => Peer { remote: s.get_ref().peer_addr().ok(), names: Arc::from([]) },
            Conn::Tls(s, names) => Peer { remote: s.get_ref().0.get_ref().peer_addr().ok(), names: names.clone() },
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s, _) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s, _) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s, _) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s, _) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Serves `routes` on connections from `gate` until `stop`, in TLS when `tls` is given.
pub async fn serve(
    mut gate: Gate,
    tls: Option<Reloading>,
    routes: Routes,
    idle: Duration,
    stop: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    let (tx, rx) = mpsc::channel::<io::Result<Conn>>(64);
    let accepting = stop.clone();
    tokio::spawn(async move {
        loop {
            let (stream, peer) = tokio::select! {
                accepted = gate.accept() => accepted,
                _ = accepting.cancelled() => return,
            };
            let Some(tls) = &tls else {
                if tx.send(Ok(Conn::Plain(stream))).await.is_err() {
                    return;
                }
                continue;
            };
            // The handshake (bounded by the gate's handshake timeout) runs
            // on its own, so a slow client holds up nobody.
            let (acceptor, tx) = (tls.acceptor(), tx.clone());
            tokio::spawn(async move {
                match acceptor.accept(stream).await {
                    Ok(s) => {
                        let names: Arc<[String]> =
                            s.get_ref().1.peer_certificates().and_then(|c| c.first()).map(client_names).unwrap_or_default().into();
                        let _ = tx.send(Ok(Conn::Tls(Box::new(s), names))).await;
                    }
                    Err(error) => debug!(%peer, %error, "TLS handshake failed"),
                }
            });
        }
    });
    let ping = idle / 3;
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(ping))
        .http2_keepalive_timeout(Some(ping))
        .add_routes(routes)
        .serve_with_incoming_shutdown(tokio_stream::wrappers::ReceiverStream::new(rx), stop.cancelled_owned())
        .await
}
