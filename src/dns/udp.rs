//! DNS over UDP: worker threads, each with its own `SO_REUSEPORT` socket on
//! the listen address, receive and send in batches (`recvmmsg` /
//! `sendmmsg`) and answer from the pre-encoded table. Whatever that table
//! cannot answer goes, through a bounded queue, to the hickory-server
//! handler on the async runtime; when that queue is full the query is
//! dropped and counted (the client retries), never queued without bound.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use arc_swap::ArcSwap;
use hickory_proto::op::{Header, Message, MessageType, ResponseCode};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder, BinEncoder};
use hickory_server::net::runtime::TokioTime;
use hickory_server::net::xfer::Protocol;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponse;
use socket2::{Domain, Socket, Type};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::handler::{DnsHandler, UDP_PAYLOAD};
use super::snapshot::Snapshot;
use crate::sys::mmsg::{RecvBatch, SendBatch};

/// Datagrams taken per system call.
const BATCH: usize = 32;
/// How often a blocked worker looks at the stop flag.
const POLL: Duration = Duration::from_millis(200);
/// Queries waiting for the slow path.
pub const SLOW_QUEUE: usize = 4096;

/// Counters the workers keep.
#[derive(Debug, Default)]
pub struct UdpStats {
    pub fast: AtomicU64,
    pub slow: AtomicU64,
    pub dropped: AtomicU64,
}

/// A query for the slow path.
pub struct SlowQuery {
    pub bytes: Vec<u8>,
    pub src: SocketAddr,
    pub socket: Arc<UdpSocket>,
}

/// Binds `n` sockets sharing `addr` (the first one picks the port when it is 0).
pub fn bind(addr: SocketAddr, n: usize) -> std::io::Result<Vec<UdpSocket>> {
    let mut out: Vec<UdpSocket> = Vec::with_capacity(n);
    let mut addr = addr;
    for _ in 0..n.max(1) {
        let s = Socket::new(Domain::for_address(addr), Type::DGRAM, None)?;
        s.set_reuse_port(true)?;
        if addr.is_ipv6() {
            s.set_only_v6(true)?;
        }
        let _ = s.set_recv_buffer_size(4 << 20);
        let _ = s.set_send_buffer_size(4 << 20);
        s.bind(&addr.into())?;
        s.set_read_timeout(Some(POLL))?;
        let s: UdpSocket = s.into();
        addr = s.local_addr()?;
        out.push(s);
    }
    Ok(out)
}

/// Starts one worker thread per socket.
pub fn start(
    sockets: Vec<UdpSocket>,
    snapshot: Arc<ArcSwap<Snapshot>>,
    slow: mpsc::Sender<SlowQuery>,
    stats: Arc<UdpStats>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<Vec<JoinHandle<()>>> {
    sockets
        .into_iter()
        .enumerate()
        .map(|(i, socket)| {
            let (snapshot, slow, stats, stop) = (snapshot.clone(), slow.clone(), stats.clone(), stop.clone());
            std::thread::Builder::new()
                .name(format!("dns-udp-{i}"))
                .spawn(move || worker(Arc::new(socket), snapshot, slow, stats, stop))
        })
        .collect()
}

fn worker(socket: Arc<UdpSocket>, snapshot: Arc<ArcSwap<Snapshot>>, slow: mpsc::Sender<SlowQuery>, stats: Arc<UdpStats>, stop: Arc<AtomicBool>) {
    let mut rx = RecvBatch::new(BATCH);
    let mut tx = SendBatch::new(BATCH);
    let mut turn: usize = std::process::id() as usize;
    while !stop.load(Ordering::Relaxed) {
        let n = match rx.recv(&*socket) {
            Ok(n) => n,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut | std::io::ErrorKind::Interrupted) => continue,
            Err(error) => {
                warn!(%error, "UDP receive failed");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let snap = snapshot.load();
        let (mut fast, mut slowed, mut dropped) = (0, 0, 0);
        for i in 0..n {
            let Some((data, src, truncated)) = rx.get(i) else { continue };
            if truncated || src.port() == 0 || data.len() < 12 {
                dropped += 1;
                continue;
            }
            turn = turn.wrapping_add(1);
            match snap.fast.respond(data, tx.next_buf(), turn) {
                Some(len) => {
                    tx.commit(len, src);
                    fast += 1;
                }
                None => match slow.try_send(SlowQuery { bytes: data.to_vec(), src, socket: socket.clone() }) {
                    Ok(()) => slowed += 1,
                    Err(_) => dropped += 1,
                },
            }
        }
        tx.flush(&*socket);
        stats.fast.fetch_add(fast, Ordering::Relaxed);
        stats.slow.fetch_add(slowed, Ordering::Relaxed);
        stats.dropped.fetch_add(dropped, Ordering::Relaxed);
    }
}

/// Answers queued queries through the hickory-server handler, one at a time.
pub async fn slow_path(handler: DnsHandler, mut rx: mpsc::Receiver<SlowQuery>) {
    while let Some(q) = rx.recv().await {
        answer_slow(&handler, q).await;
    }
}

async fn answer_slow(handler: &DnsHandler, q: SlowQuery) {
    let Ok(header) = Header::read(&mut BinDecoder::new(&q.bytes)) else { return };
    if header.metadata.message_type == MessageType::Response {
        return; // never answer a response: no reflection loops
    }
    let request = match Request::from_bytes(q.bytes, q.src, Protocol::Udp) {
        Ok(r) => r,
        Err(error) => {
            debug!(src = %q.src, %error, "malformed query");
            let reply = Message::error_msg(header.metadata.id, header.metadata.op_code, ResponseCode::FormErr);
            if let Ok(bytes) = reply.to_vec() {
                let _ = q.socket.send_to(&bytes, q.src);
            }
            return;
        }
    };
    let limit = request.max_payload().clamp(512, UDP_PAYLOAD);
    let reply = UdpReply { socket: q.socket, dst: q.src, limit };
    handler.handle_request::<_, TokioTime>(&request, reply).await;
}

/// Sends one response over UDP, truncated (TC) to what the client accepts.
#[derive(Clone)]
struct UdpReply {
    socket: Arc<UdpSocket>,
    dst: SocketAddr,
    limit: u16,
}

#[async_trait::async_trait]
impl ResponseHandler for UdpReply {
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
        let mut bytes = Vec::with_capacity(512);
        let mut encoder = BinEncoder::new(&mut bytes);
        encoder.set_max_size(self.limit);
        let info = response.destructive_emit(&mut encoder).map_err(|e| hickory_server::net::NetError::from(e.to_string()))?;
        self.socket.send_to(&bytes, self.dst).map_err(hickory_server::net::NetError::from)?;
        Ok(info)
    }
}
