//! DNS over TCP (RFC 1035 4.2.2, RFC 7766): two-byte length-prefixed
//! messages on connections taken through a `Gate` (its own cap, the
//! handshake and idle timeouts, back-off when descriptors run out),
//! answered in order by the same handler as UDP. Zone transfers go out
//! as several messages on the connection.

use std::net::SocketAddr;
use std::sync::Arc;

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
use crate::sys::accept::{Gate, Guarded};

type Writer = Arc<Mutex<WriteHalf<Guarded<TcpStream>>>>;

/// Serves connections from `gate` until `stop`; then lets each finish the
/// query it is answering.
pub async fn serve(mut gate: Gate, handler: Arc<DnsHandler>, stop: CancellationToken) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            (stream, peer) = gate.accept() => {
                connections.spawn(connection(stream, peer, handler.clone(), stop.clone()));
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = stop.cancelled() => break,
        }
    }
    drop(gate);
    while connections.join_next().await.is_some() {}
}

/// One client's connection: queries read and answered one after another.
async fn connection(stream: Guarded<TcpStream>, peer: SocketAddr, handler: Arc<DnsHandler>, stop: CancellationToken) {
    let (mut reader, writer) = tokio::io::split(stream);
    let writer: Writer = Arc::new(Mutex::new(writer));
    loop {
        let mut len = [0u8; 2];
        let read = tokio::select! {
            r = reader.read_exact(&mut len) => r,
            _ = stop.cancelled() => return,
        };
        if let Err(error) = read {
            debug!(%peer, %error, "DNS TCP connection closed");
            return;
        }
        let mut message = vec![0u8; usize::from(u16::from_be_bytes(len))];
        if let Err(error) = reader.read_exact(&mut message).await {
            debug!(%peer, %error, "DNS TCP connection closed mid-message");
            return;
        }
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
