//! DNS over TCP (RFC 1035 4.2.2, RFC 7766): two-byte length-prefixed
//! messages on connections taken through a `Gate` (its own cap, the
//! handshake and idle timeouts, back-off when descriptors run out),
//! answered in order by the same handler as UDP. Once a message's first
//! byte is in, the whole message must follow within a deadline. Zone
//! transfers go out as several messages on the connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_server::net::runtime::TokioTime;
use hickory_server::net::xfer::Protocol;
use hickory_server::server::{RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponse;
use tokio::io::{AsyncReadExt, AsyncWriteExt, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::handler::{Decoded, DnsHandler};
use super::wire::emit;
use crate::sys::accept::{Gate, GateCounters, Guarded};

type Writer = Arc<Mutex<WriteHalf<Guarded<TcpStream>>>>;

/// Serves connections from `gate` until `stop`; then lets each finish the
/// query it is answering. A message must be whole within `deadline` of
/// its first byte.
pub async fn serve(mut gate: Gate, handler: Arc<DnsHandler>, deadline: Duration, stop: CancellationToken) {
    let mut connections = JoinSet::new();
    let counters = gate.counters();
    loop {
        tokio::select! {
            (stream, peer) = gate.accept() => {
                let slow = Slow { deadline, counters: counters.clone() };
                connections.spawn(connection(stream, peer, handler.clone(), slow, stop.clone()));
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = stop.cancelled() => break,
        }
    }
    drop(gate);
    while connections.join_next().await.is_some() {}
}

/// How long a message may take to arrive, and where a late one is counted.
struct Slow {
    deadline: Duration,
    counters: Arc<GateCounters>,
}

/// One client's connection: queries read and answered one after another.
async fn connection(stream: Guarded<TcpStream>, peer: SocketAddr, handler: Arc<DnsHandler>, slow: Slow, stop: CancellationToken) {
    let (mut reader, writer) = tokio::io::split(stream);
    let writer: Writer = Arc::new(Mutex::new(writer));
    loop {
        let read = tokio::select! {
            r = reader.read_u8() => r,
            _ = stop.cancelled() => return,
        };
        let first = match read {
            Ok(b) => b,
            Err(error) => {
                debug!(%peer, %error, "DNS TCP connection closed");
                return;
            }
        };
        let whole = tokio::time::timeout(slow.deadline, async {
            let second = reader.read_u8().await?;
            let mut message = vec![0u8; usize::from(u16::from_be_bytes([first, second]))];
            reader.read_exact(&mut message).await.map(|_| message)
        });
        let message = match whole.await {
            Ok(Ok(message)) => message,
            Ok(Err(error)) => {
                debug!(%peer, %error, "DNS TCP connection closed mid-message");
                return;
            }
            Err(_) => {
                slow.counters.slow.inc();
                debug!(%peer, deadline = ?slow.deadline, "DNS TCP message not whole in time; connection closed");
                return;
            }
        };
        let request = match handler.decode(message, peer, Protocol::Tcp) {
            Decoded::Request(r) => r,
            Decoded::Reply(reply) => {
                if write(&writer, &reply).await.is_err() {
                    return;
                }
                continue;
            }
            Decoded::Silent => return, // not DNS: close
        };
        let question = request.queries.as_bytes().into();
        handler.handle_request::<_, TokioTime>(&request, TcpReply(writer.clone(), question)).await;
    }
}

async fn write(writer: &Writer, message: &[u8]) -> std::io::Result<()> {
    let len = u16::try_from(message.len()).map_err(|_| std::io::Error::other("message over 65535 bytes"))?;
    let mut w = writer.lock().await;
    w.write_all(&len.to_be_bytes()).await?;
    w.write_all(message).await?;
    w.flush().await
}

/// Sends responses on a connection, each with its length; the second
/// field is the question they answer, as the client wrote it.
#[derive(Clone)]
struct TcpReply(Writer, Arc<[u8]>);

#[async_trait::async_trait]
impl ResponseHandler for TcpReply {
    async fn send_response<'a>(
        &mut self,
        response: MessageResponse<
            '_,
            'a,
            impl Iterator<Item = &'a hickory_proto::rr::Record> + Send + 'a,
            impl Iterator<Item = &'a hickory_proto::rr::Record> + Send + 'a,
            impl Iterator<Item = &'a hickory_proto::rr::Record> + Send + 'a,
            impl Iterator<Item = &'a hickory_proto::rr::Record> + Send + 'a,
        >,
    ) -> Result<ResponseInfo, hickory_server::net::NetError> {
        let failed = |e: String| hickory_server::net::NetError::from(e);
        let (bytes, info) = emit(response, &self.1).map_err(|e| failed(e.to_string()))?;
        write(&self.0, &bytes).await.map_err(|e| failed(e.to_string()))?;
        Ok(info)
    }
}
