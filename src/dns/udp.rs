//! DNS over UDP: worker threads, each with its own `SO_REUSEPORT` socket on
//! the listen address, receive and send in batches (`recvmmsg` /
//! `sendmmsg`) and answer from the pre-encoded table. Whatever that table
//! cannot answer goes, through a bounded queue, to the hickory-server
//! handler on the async runtime; when that queue is full the query is
//! dropped and counted (the client retries), never queued without bound.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use arc_swap::ArcSwap;
use hickory_proto::ProtoError;
use hickory_proto::op::Message;
use hickory_server::net::runtime::TokioTime;
use hickory_server::net::xfer::Protocol;
use hickory_server::server::{RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponse;
use socket2::{Domain, Socket, Type};
use tokio::sync::mpsc;
use tracing::warn;

use super::fast;
use super::handler::{Decoded, DnsHandler};
use super::metrics::{DnsCounters, Path};
use super::rrl::{Kind, Rrl, Verdict};
use super::snapshot::Snapshot;
use super::wire::{UDP_PAYLOAD, emit};
use crate::sys::mmsg::{RecvBatch, SendBatch};

/// Datagrams taken per system call.
const BATCH: usize = 64;
/// How often a blocked worker looks at the stop flag.
const POLL: Duration = Duration::from_millis(200);
/// Queries waiting for the slow path.
pub const SLOW_QUEUE: usize = 4096;

/// A query for the slow path.
pub struct SlowQuery {
    pub bytes: Vec<u8>,
    pub src: SocketAddr,
    pub socket: Arc<UdpSocket>,
}

/// Binds `n` sockets sharing `addr` (the first one picks the port when it is 0).
pub fn bind(addr: SocketAddr, n: usize) -> std::io::Result<Vec<UdpSocket>> {
    // A plain bind first: SO_REUSEPORT would otherwise silently share the
    // address with another process of the same user already serving it.
    let probe = UdpSocket::bind(addr)?;
    let mut addr = probe.local_addr()?;
    drop(probe);
    let mut out: Vec<UdpSocket> = Vec::with_capacity(n);
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
    counters: Arc<DnsCounters>,
    rrl: Option<Arc<Rrl>>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<Vec<JoinHandle<()>>> {
    sockets
        .into_iter()
        .enumerate()
        .map(|(i, socket)| {
            let (snapshot, slow, counters, rrl, stop) = (snapshot.clone(), slow.clone(), counters.clone(), rrl.clone(), stop.clone());
            std::thread::Builder::new()
                .name(format!("dns-udp-{i}"))
                .spawn(move || worker(Arc::new(socket), snapshot, slow, counters, rrl, stop))
        })
        .collect()
}

fn worker(
    socket: Arc<UdpSocket>,
    snapshot: Arc<ArcSwap<Snapshot>>,
    slow: mpsc::Sender<SlowQuery>,
    counters: Arc<DnsCounters>,
    rrl: Option<Arc<Rrl>>,
    stop: Arc<AtomicBool>,
) {
    let mut rx = RecvBatch::new(BATCH);
    let mut key = [0u8; fast::MAX_KEY];
    let mut tx = SendBatch::new(BATCH);
    while !stop.load(Ordering::Relaxed) {
        let n = match rx.recv(&*socket) {
            Ok(n) => n,
            Err(e)
                if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut | std::io::ErrorKind::Interrupted) =>
            {
                continue;
            }
            Err(error) => {
                warn!(%error, "UDP receive failed");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let snap = snapshot.load();
        let now = rrl.as_ref().map(|r| r.second(std::time::Instant::now())).unwrap_or_default();
        let mut dropped = 0;
        let mut noerror = 0;
        for i in 0..n {
            let Some((data, src, truncated)) = rx.get(i) else { continue };
            if truncated || src.port() == 0 || data.len() < 12 {
                dropped += 1;
                continue;
            }
            match snap.fast.respond_keyed(data, tx.next_buf(), &mut key) {
                Some(reply) => {
                    let rcode = tx.next_buf()[3] & 0xf;
                    let len = match rrl.as_ref().map(|r| r.check(src.ip(), Kind::of_rcode(rcode), &key[..reply.name_and_type], now)) {
                        None | Some(Verdict::Send) => reply.len,
                        Some(Verdict::Slip) => fast::slip(tx.next_buf(), reply.question_end),
                        Some(Verdict::Drop) => continue,
                    };
                    match rcode {
                        0 => noerror += 1,
                        rcode => counters.response(Path::UdpFast, u16::from(rcode)),
                    }
                    tx.commit(len, src);
                }
                None => {
                    if slow.try_send(SlowQuery { bytes: data.to_vec(), src, socket: socket.clone() }).is_err() {
                        dropped += 1;
                    }
                }
            }
        }
        tx.flush(&*socket);
        counters.add_responses(Path::UdpFast, 0, noerror);
        if dropped > 0 {
            counters.udp_dropped.add(dropped);
        }
    }
}

/// Answers queued queries through the hickory-server handler, one at a time.
pub async fn slow_path(handler: DnsHandler, mut rx: mpsc::Receiver<SlowQuery>) {
    while let Some(q) = rx.recv().await {
        answer_slow(&handler, q).await;
    }
}

async fn answer_slow(handler: &DnsHandler, q: SlowQuery) {
    let SlowQuery { bytes, src, socket } = q;
    respond(handler, bytes, src, move |reply| {
        let _ = socket.send_to(reply, src);
    })
    .await;
}

/// Answers one UDP datagram through the hickory-server handler: FORMERR
/// when only the header decodes, silence when not even that does or when
/// the datagram is itself a response. `send` gets the encoded reply.
pub async fn respond(
    handler: &DnsHandler,
    bytes: Vec<u8>,
    src: SocketAddr,
    mut send: impl FnMut(&[u8]) + Send + Sync + Clone + Unpin + 'static,
) {
    let request = match handler.decode(bytes, src, Protocol::Udp) {
        Decoded::Request(r) => r,
        Decoded::Reply(reply) => {
            let rrl = handler.rrl().map(|r| r.check(src.ip(), Kind::Error, &[], r.second(std::time::Instant::now())));
            if matches!(rrl, None | Some(Verdict::Send)) {
                send(&reply);
            }
            return;
        }
        Decoded::Silent => return,
    };
    let limit = request.max_payload().clamp(512, UDP_PAYLOAD);
    // The question as the fast path keys it: lower-cased name, then type.
    let limiter = handler.rrl().filter(|r| r.applies(src.ip())).map(|r| {
        let key = request.queries.queries().first().map(|q| fast::name_key(q.name(), q.query_type()));
        Limiter { rrl: r.clone(), client: src.ip(), key: key.unwrap_or_default().into() }
    });
    let question = request.queries.as_bytes().into();
    handler.handle_request::<_, TokioTime>(&request, UdpReply { send, limit, limiter, question }).await;
}

/// What the slow path needs to rate-limit one response.
#[derive(Clone)]
struct Limiter {
    rrl: Arc<Rrl>,
    client: std::net::IpAddr,
    key: Arc<[u8]>,
}

/// Sends one response over UDP, truncated (TC) to what the client accepts.
#[derive(Clone)]
struct UdpReply<F> {
    send: F,
    limit: u16,
    limiter: Option<Limiter>,
    /// The question answered, as the client wrote it.
    question: Arc<[u8]>,
}

#[async_trait::async_trait]
impl<F: FnMut(&[u8]) + Send + Sync + Clone + Unpin + 'static> ResponseHandler for UdpReply<F> {
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
        let failed = |e: ProtoError| hickory_server::net::NetError::from(e.to_string());
        let (mut bytes, info) = emit(response, &self.question).map_err(failed)?;
        let verdict = match &self.limiter {
            Some(l) => l.rrl.check(l.client, Kind::of_rcode(bytes[3]), &l.key, l.rrl.second(std::time::Instant::now())),
            None => Verdict::Send,
        };
        if verdict == Verdict::Drop {
            return Ok(info);
        }
        if bytes.len() > usize::from(self.limit) || verdict == Verdict::Slip {
            // Too big for the client, or a rate-limited slip: header,
            // question and OPT alone, with TC, so it asks again over TCP.
            // Never part of a record.
            bytes = truncated(&bytes).map_err(failed)?;
        }
        (self.send)(&bytes);
        Ok(info)
    }
}

/// `full`, an encoded response, emptied of records (the OPT stays) and
/// marked truncated.
fn truncated(full: &[u8]) -> Result<Vec<u8>, ProtoError> {
    let mut m = Message::from_vec(full)?;
    m.answers.clear();
    m.authorities.clear();
    m.additionals.clear();
    m.signature = None;
    m.metadata.truncation = true;
    m.to_vec()
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use hickory_proto::op::{Edns, MessageType, OpCode, Query};
    use hickory_proto::rr::{Name, RecordType};

    use super::*;
    use crate::dns::fixture;

    async fn slow(handler: &DnsHandler, bytes: &[u8]) -> Option<Vec<u8>> {
        let out = Arc::new(Mutex::new(None));
        let o = out.clone();
        respond(handler, bytes.to_vec(), "127.0.0.1:5353".parse().unwrap(), move |b| {
            *o.lock().unwrap() = Some(b.to_vec());
        })
        .await;
        out.lock().unwrap().take()
    }

    /// Found by the `request` fuzz target: a question whose name points
    /// back into the header. hickory reads it, and would echo the pointer
    /// into a reply that then points into its own header; it gets FORMERR.
    #[tokio::test]
    async fn a_question_pointing_into_the_header_gets_formerr() {
        let handler = DnsHandler::new(Arc::new(ArcSwap::from_pointee(fixture::snapshot())), Vec::new(), Arc::default());
        let crash = [1, 8, 0, 8, 0, 1, 0, 0, 0, 0, 0, 0, 4, 0, 47, 111, 0, 192, 0, 235, 10, 10, 204, 204, 87, 204, 0];
        // And one with twenty questions, a later one pointing back.
        let mut many = vec![46, 8, 1, 0, 0, 20, 0, 0, 0, 0, 0, 0, 3, b'w', b'w', b'w', 0, 0, 1, 0, 1];
        many.extend_from_slice(&[192, 12, 0, 1, 0, 1]);
        for bytes in [&crash[..], &many] {
            let reply = slow(&handler, bytes).await.expect("a reply");
            let m = Message::from_vec(&reply).expect("well-formed");
            assert_eq!(m.metadata.response_code, hickory_proto::op::ResponseCode::FormErr);
            assert_eq!(reply[..2], bytes[..2]);
        }
    }

    /// The fast path is only an optimisation: wherever it answers, the
    /// hickory-server path gives the very same bytes.
    #[tokio::test]
    async fn fast_and_slow_paths_give_identical_bytes() {
        let snap = fixture::snapshot();
        let table = snap.fast.clone();
        let handler = DnsHandler::new(Arc::new(ArcSwap::from_pointee(snap)), Vec::new(), Arc::default());
        let types = [
            RecordType::A,
            RecordType::AAAA,
            RecordType::MX,
            RecordType::TXT,
            RecordType::SRV,
            RecordType::NS,
            RecordType::SOA,
            RecordType::CNAME,
        ];
        let mut fast_hits = 0;
        for (n, name) in fixture::NAMES.iter().enumerate() {
            for (t, &qtype) in types.iter().enumerate() {
                for shape in 0..3 {
                    // Mixed case, as resolvers using 0x20 send.
                    let mixed: String =
                        name.chars().enumerate().map(|(i, c)| if (i + n + t) % 2 == 0 { c.to_ascii_uppercase() } else { c }).collect();
                    let mut m = Message::new((n * 100 + t) as u16, MessageType::Query, OpCode::Query);
                    m.metadata.recursion_desired = t % 2 == 0;
                    m.metadata.checking_disabled = n % 3 == 0;
                    m.add_query(Query::query(Name::from_ascii(&mixed).unwrap(), qtype));
                    if shape > 0 {
                        let mut e = Edns::new();
                        e.set_max_payload(1232);
                        e.set_dnssec_ok(shape == 2);
                        m.set_edns(e);
                    }
                    let req = m.to_vec().unwrap();
                    let mut out = [0u8; 4096];
                    // The handler's round-robin turn starts at 0, like ours here.
                    if let Some(len) = table.respond(&req, &mut out) {
                        fast_hits += 1;
                        let slow = slow(&handler, &req).await.expect("slow path answers");
                        // The same message; the encodings may differ only in name
                        // compression (the fast path compresses against the question
                        // as asked, so owners come back in the client's case).
                        let (f, s) = (Message::from_vec(&out[..len]).unwrap(), Message::from_vec(&slow).unwrap());
                        assert_eq!(out[..12], slow[..12], "{mixed} {qtype} shape {shape}: header");
                        assert_eq!(f.queries[0].name().to_string(), mixed, "question echoed as asked");
                        assert_eq!(f.queries, s.queries);
                        assert_eq!(f.edns, s.edns, "{mixed} {qtype} shape {shape}: EDNS");
                        assert_eq!((&f.authorities, &f.additionals), (&s.authorities, &s.additionals), "{mixed} {qtype} shape {shape}");
                        // Rotating pools may be on different turns in the two paths.
                        if !name.starts_with("www") {
                            assert_eq!(f.answers, s.answers, "{mixed} {qtype} shape {shape}");
                        }
                    }
                }
            }
        }
        assert!(fast_hits > 40, "the fast path answers the common names ({fast_hits})");
    }
}
