//! The hickory-server request handler: turns a parsed request into an
//! authoritative response from the current snapshot, including zone
//! transfers to allowed secondaries. Everything not answered by the
//! pre-encoded fast path ends up here.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use arc_swap::ArcSwap;
use hickory_proto::op::{Edns, Header, HeaderCounts, Message, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::RecordType;
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder, BinEncodable};
use hickory_server::net::runtime::Time;
use hickory_server::net::xfer::Protocol;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use ipnet::IpNet;
use tracing::{debug, info, warn};

use super::lookup::lookup;
use super::metrics::{DnsCounters, Path};
use super::rrl::Rrl;
use super::snapshot::Snapshot;
use super::view::zone_records;
use super::wire::{UDP_PAYLOAD, edns_malformed, question_malformed, trailing_bytes, update_without_zone};

/// Bytes of records per zone-transfer message; well under the 64 KiB limit.
const XFR_CHUNK: usize = 16 * 1024;

/// Answers queries from a snapshot that the updater swaps.
pub struct DnsHandler {
    snapshot: Arc<ArcSwap<Snapshot>>,
    counters: Arc<DnsCounters>,
    allow_transfer: Vec<IpNet>,
    turn: Arc<AtomicUsize>,
    rrl: Option<Arc<Rrl>>,
}

impl DnsHandler {
    pub fn new(snapshot: Arc<ArcSwap<Snapshot>>, allow_transfer: Vec<IpNet>, counters: Arc<DnsCounters>) -> Self {
        Self { snapshot, counters, allow_transfer, turn: Arc::default(), rrl: None }
    }

    /// Limits UDP responses with `rrl`.
    pub fn with_rrl(mut self, rrl: Option<Arc<Rrl>>) -> Self {
        self.rrl = rrl;
        self
    }

    /// The UDP response rate limiter, if on.
    pub fn rrl(&self) -> Option<&Arc<Rrl>> {
        self.rrl.as_ref()
    }

    /// What the DNS side counts.
    pub fn counters(&self) -> &DnsCounters {
        &self.counters
    }

    /// Decodes a query as it arrived: the request; or FORMERR (counted)
    /// when only the header decodes, the EDNS options are malformed or
    /// bytes follow the last record, or an UPDATE names no SOA zone;
    /// or silence when not even the header decodes or it is a response.
    pub fn decode(&self, bytes: Vec<u8>, src: SocketAddr, protocol: Protocol) -> Decoded {
        let Ok(header) = Header::read(&mut BinDecoder::new(&bytes)) else { return Decoded::Silent };
        if header.metadata.message_type == MessageType::Response {
            return Decoded::Silent; // never answer a response: no reflection loops
        }
        let problem = if edns_malformed(&bytes) {
            "malformed EDNS options".to_owned()
        } else if question_malformed(&bytes) {
            "a compressed or extended label in the question".to_owned()
        } else if trailing_bytes(&bytes) {
            "bytes after the last record".to_owned()
        } else if update_without_zone(&bytes) {
            "an UPDATE without one zone of type SOA".to_owned()
        } else {
            match Request::from_bytes(bytes, src, protocol) {
                Ok(r) => return Decoded::Request(Box::new(r)),
                Err(error) => error.to_string(),
            }
        };
        debug!(%src, %problem, "malformed query");
        let path = if protocol == Protocol::Udp { Path::UdpSlow } else { Path::Tcp };
        self.counters.response(path, u16::from(ResponseCode::FormErr));
        match Message::error_msg(header.metadata.id, header.metadata.op_code, ResponseCode::FormErr).to_vec() {
            Ok(reply) => Decoded::Reply(reply),
            Err(_) => Decoded::Silent,
        }
    }

    fn may_transfer(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        self.allow_transfer.iter().any(|net| net.contains(&ip))
    }
}

/// A query as it arrived.
pub enum Decoded {
    Request(Box<Request>),
    /// Not a query that can be answered: send this error instead.
    Reply(Vec<u8>),
    Silent,
}

/// The EDNS section of a response to a request that carried one. It
/// advertises what we accept; what we send is bounded by what the client
/// advertised (see the UDP reply).
pub fn response_edns(request: &Edns) -> Edns {
    let mut edns = Edns::new();
    edns.set_max_payload(UDP_PAYLOAD);
    edns.set_version(0);
    edns.set_dnssec_ok(request.flags().dnssec_ok);
    edns
}

/// What the server records when a response could not be sent.
fn serve_failed(request: &Request) -> ResponseInfo {
    let mut metadata = Metadata::new(request.metadata.id, MessageType::Response, request.metadata.op_code);
    metadata.response_code = ResponseCode::ServFail;
    ResponseInfo::from(Header { metadata, counts: HeaderCounts::default() })
}

async fn send_code<R: ResponseHandler>(request: &Request, code: ResponseCode, edns: Option<&Edns>, mut handle: R) -> ResponseInfo {
    let mut edns = edns.cloned();
    if let Some(e) = edns.as_mut() {
        e.set_rcode_high(code.high());
    }
    let response = MessageResponseBuilder::new(&request.queries, edns.as_ref()).error_msg(&request.metadata, code);
    match handle.send_response(response).await {
        Ok(info) => info,
        Err(error) => {
            warn!(%error, "failed to send response");
            serve_failed(request)
        }
    }
}

#[async_trait::async_trait]
impl RequestHandler for DnsHandler {
    async fn handle_request<R: ResponseHandler, T: Time>(&self, request: &Request, handle: R) -> ResponseInfo {
        let info = self.answer(request, handle).await;
        let path = if request.protocol() == Protocol::Udp { Path::UdpSlow } else { Path::Tcp };
        self.counters.response(path, u16::from(info.response_code));
        info
    }
}

impl DnsHandler {
    async fn answer<R: ResponseHandler>(&self, request: &Request, handle: R) -> ResponseInfo {
        let edns = request.edns.as_ref().map(response_edns);
        if let Some(req) = request.edns.as_ref()
            && req.version() > 0
        {
            return send_code(request, ResponseCode::BADVERS, edns.as_ref(), handle).await;
        }
        match request.metadata.op_code {
            OpCode::Query => {}
            OpCode::Notify | OpCode::Update => {
                return send_code(request, ResponseCode::Refused, edns.as_ref(), handle).await;
            }
            _ => return send_code(request, ResponseCode::NotImp, edns.as_ref(), handle).await,
        }
        let [query] = request.queries.queries() else {
            return send_code(request, ResponseCode::FormErr, edns.as_ref(), handle).await;
        };
        if !request.answers.is_empty() || !request.authorities.is_empty() {
            // Only IXFR carries a record (its SOA) in the authority section.
            if !(query.query_type() == RecordType::IXFR && request.answers.is_empty()) {
                return send_code(request, ResponseCode::FormErr, edns.as_ref(), handle).await;
            }
        }
        let snap = self.snapshot.load();
        if matches!(query.query_type(), RecordType::AXFR | RecordType::IXFR) {
            return self.transfer(request, &snap, edns.as_ref(), handle).await;
        }
        let turn = self.turn.fetch_add(1, Ordering::Relaxed);
        let answer = lookup(&snap.zones, query.name(), query.query_type(), query.query_class(), turn);
        if let Some(pool) = snap.find_zone(query.name()).and_then(|z| z.pools.get(query.name())) {
            pool.counters.response(u16::from(answer.rcode.low()));
        }
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.authoritative = answer.authoritative;
        metadata.response_code = answer.rcode;
        let mut edns = edns;
        if let Some(e) = edns.as_mut() {
            e.set_rcode_high(answer.rcode.high());
        }
        let response = MessageResponseBuilder::new(&request.queries, edns.as_ref()).build(
            metadata,
            answer.answers.iter(),
            answer.authority.iter(),
            std::iter::empty(),
            answer.additional.iter(),
        );
        let mut handle = handle;
        match handle.send_response(response).await {
            Ok(info) => info,
            Err(error) => {
                warn!(%error, "failed to send response");
                serve_failed(request)
            }
        }
    }
}

impl DnsHandler {
    /// AXFR, and IXFR answered with the whole zone (RFC 1995 §4) or with
    /// the SOA alone when the secondary is current.
    async fn transfer<R: ResponseHandler>(&self, request: &Request, snap: &Snapshot, edns: Option<&Edns>, mut handle: R) -> ResponseInfo {
        let query = &request.queries.queries()[0];
        let src = request.src();
        if !self.may_transfer(src.ip()) {
            info!(%src, zone = %query.name(), "zone transfer refused: not in allow_transfer");
            return send_code(request, ResponseCode::Refused, edns, handle).await;
        }
        let Some(zone) = snap.zones.get(query.name()) else {
            return send_code(request, ResponseCode::NotAuth, edns, handle).await;
        };
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.authoritative = true;
        let mut incremental = None;
        if query.query_type() == RecordType::IXFR {
            let theirs = request.authorities.iter().find_map(|r| match &r.data {
                hickory_proto::rr::RData::SOA(s) => Some(s.serial),
                _ => None,
            });
            let current = theirs.is_some_and(|s| (zone.serial.wrapping_sub(s) as i32) <= 0);
            if current || request.protocol() == Protocol::Udp {
                // Current, or over UDP: the SOA alone tells the secondary
                // to come back over TCP when it is behind.
                let soa = [zone.soa.clone()];
                let response = MessageResponseBuilder::new(&request.queries, edns).build(
                    metadata,
                    soa.iter(),
                    std::iter::empty(),
                    std::iter::empty(),
                    std::iter::empty(),
                );
                return handle.send_response(response).await.unwrap_or_else(|_| serve_failed(request));
            }
            // Behind, and the journal reaches back to its serial: only what
            // changed since (RFC 1995 §4); otherwise the whole zone.
            incremental = theirs
                .and_then(|s| zone.journal.since(s))
                .filter(|chain| chain.last().is_some_and(|d| d.to == zone.serial))
                .map(|chain| crate::zone::journal::ixfr(&zone.soa, &chain));
        } else if request.protocol() == Protocol::Udp {
            return send_code(request, ResponseCode::FormErr, edns, handle).await;
        }

        let kind = if incremental.is_some() { "incremental" } else { "full" };
        if incremental.is_some() { &self.counters.transfers_incremental } else { &self.counters.transfers_full }.inc();
        let records = incremental.unwrap_or_else(|| zone_records(zone));
        debug!(%src, zone = %query.name(), records = records.len(), kind, "zone transfer");

        let mut info = serve_failed(request);
        let mut start = 0;
        while start < records.len() {
            let mut size = 0;
            let mut end = start;
            while end < records.len() && (end == start || size < XFR_CHUNK) {
                size += records[end].to_bytes().map(|b| b.len()).unwrap_or(512);
                end += 1;
            }
            let response = MessageResponseBuilder::new(&request.queries, edns).build(
                metadata,
                records[start..end].iter(),
                std::iter::empty(),
                std::iter::empty(),
                std::iter::empty(),
            );
            match handle.send_response(response).await {
                Ok(i) => info = i,
                Err(error) => {
                    warn!(%src, %error, "zone transfer aborted");
                    return info;
                }
            }
            start = end;
        }
        info!(%src, zone = %query.name(), serial = zone.serial, records = records.len(), kind, "zone transferred");
        info
    }
}
