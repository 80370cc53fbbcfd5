//! Serving gRPC for every role (authority, monitor, farm) the same way:
//! connections through a `Gate` (cap, handshake and idle timeouts,
//! descriptor back-off) and HTTP/2 pings every third of the idle timeout,
//! so a live client, even one only watching, is never taken for idle.

use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::sys::accept::{Gate, Guarded};

/// A gRPC connection: a guarded TCP stream.
pub struct Conn(Guarded<TcpStream>);

impl Connected for Conn {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.0.get_ref().connect_info()
    }
}

impl tokio::io::AsyncRead for Conn {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Conn {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// Serves `routes` on connections from `gate` until `stop`.
pub async fn serve(mut gate: Gate, routes: Routes, idle: Duration, stop: CancellationToken) -> Result<(), tonic::transport::Error> {
    let (tx, rx) = mpsc::channel::<std::io::Result<Conn>>(1);
    let accepting = stop.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                (stream, _) = gate.accept() => if tx.send(Ok(Conn(stream))).await.is_err() { return },
                _ = accepting.cancelled() => return,
            }
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
