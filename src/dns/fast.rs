//! The pre-encoded fast path: for the names and types asked most (virtual
//! names, and every static name and type a zone holds) the full response is
//! encoded ahead of time by the same lookup the slow path uses, once, as
//! to a query with EDNS (the shapes without EDNS or with DO are cut from
//! it as it is copied out). Answering is then a hash lookup and a copy
//! with the query's ID, RD/CD bits and question bytes (0x20 case
//! preserved) patched in, and the zone's serial where the response
//! carries it. Pure: no I/O; the updater re-encodes a virtual name's
//! entries when its answer changes.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

use hickory_proto::rr::{DNSClass, LowerName, RecordType};

use super::answer::{PoolAnswer, Turn};
pub use super::encode::{SerialPatch, Shape, name_key};
use super::encode::{encode, has_soa, opt_last, serial_offset, shaped};
use super::lookup::lookup_turn;
pub use super::stable::{StaticTable, build_stable};
use super::view::Zones;
use super::wire::{UDP_PAYLOAD, options_ok};

/// Longest wire-format name.
const MAX_NAME: usize = 255;
/// A key: lower-cased wire name, query type, EDNS shape.
pub const MAX_KEY: usize = MAX_NAME + 3;

/// A query the fast path can answer, parsed without allocating.
#[derive(Debug)]
pub struct FastQuery {
    pub id: [u8; 2],
    pub rd: bool,
    pub cd: bool,
    /// End of the question section (name, type, class) in the request.
    pub question_end: usize,
    /// Largest response the client accepts over UDP.
    pub max_size: usize,
    pub key_len: usize,
}

/// Parses a plain QUERY with one IN question and at most an OPT record.
/// Anything else (and anything odd) returns `None`: the slow path decides.
pub fn parse(req: &[u8], key: &mut [u8; MAX_KEY]) -> Option<FastQuery> {
    if req.len() < 12 + 5 {
        return None;
    }
    let (b2, b3) = (req[2], req[3]);
    // QR=0, opcode QUERY, TC=0; Z and RCODE zero.
    if b2 & 0xfa != 0 || b3 & 0x4f != 0 {
        return None;
    }
    let count = |i: usize| u16::from_be_bytes([req[i], req[i + 1]]);
    if count(4) != 1 || count(6) != 0 || count(8) != 0 || count(10) > 1 {
        return None;
    }
    let mut pos = 12;
    let mut k = 0;
    loop {
        let len = *req.get(pos)? as usize;
        if len > 63 {
            return None; // a compression pointer or an extended label
        }
        if k + len + 1 > MAX_NAME {
            return None;
        }
        let label = req.get(pos..pos + 1 + len)?;
        key[k] = len as u8;
        for (i, b) in label[1..].iter().enumerate() {
            key[k + 1 + i] = b.to_ascii_lowercase();
        }
        k += len + 1;
        pos += len + 1;
        if len == 0 {
            break;
        }
    }
    let qtype = req.get(pos..pos + 2)?;
    if req.get(pos + 2..pos + 4)? != [0, 1] {
        return None; // class other than IN
    }
    key[k] = qtype[0];
    key[k + 1] = qtype[1];
    let question_end = pos + 4;
    let (shape, max_size) = if count(10) == 1 {
        // OPT: root owner, type 41, class = payload, TTL = ext-rcode, version, flags.
        let opt = req.get(question_end..question_end + 11)?;
        if opt[0] != 0 || opt[1..3] != [0, 41] || opt[6] != 0 {
            return None; // not OPT, or EDNS version > 0 (BADVERS on the slow path)
        }
        let rdlen = u16::from_be_bytes([opt[9], opt[10]]) as usize;
        if question_end + 11 + rdlen != req.len() {
            return None;
        }
        if !options_ok(req.get(question_end + 11..)?) {
            return None; // the slow path answers FORMERR
        }
        let payload = u16::from_be_bytes([opt[3], opt[4]]).clamp(512, UDP_PAYLOAD) as usize;
        let shape = if opt[7] & 0x80 != 0 { Shape::EdnsDo } else { Shape::Edns };
        (shape, payload)
    } else {
        if question_end != req.len() {
            return None;
        }
        (Shape::Plain, 512)
    };
    key[k + 2] = shape as u8;
    Some(FastQuery { id: [req[0], req[1]], rd: b2 & 1 != 0, cd: b3 & 0x10 != 0, question_end, max_size, key_len: k + 3 })
}

/// its own, so a name's answers follow its schedule whatever else is asked;
/// it starts at a random place, so a pool re-encoded often does not favour
/// the start of its schedule.
#[derive(Debug)]
pub struct Turns(AtomicUsize);

impl Turns {
    fn random() -> Self {
        Self(AtomicUsize::new(rand::random::<u64>() as usize))
    }

    fn next(&self) -> usize {
        self.0.fetch_add(1, Ordering::Relaxed)
    }
}

impl Clone for Turns {
    fn clone(&self) -> Self {
        Self(AtomicUsize::new(self.0.load(Ordering::Relaxed)))
    }
}

/// Pre-encoded responses for one virtual name and type: several for a
/// rotating pool or one drawn by shares. Each is the response to a query
/// with EDNS; the other shapes are cut from it as it is copied out.
#[derive(Debug, Clone)]
pub struct Entry {
    pub responses: Box<[Box<[u8]>]>,
    /// Slot → response, cycled query by query; empty: one after the other.
    pub order: Box<[u16]>,
    pub turns: Turns,
    /// The virtual name's counters, for entries of virtual names.
    pub counters: Option<Arc<crate::metrics::PoolCounters>>,
    pub serial: Option<SerialPatch>,
}

/// Shards of the virtual names' entries: a change to one pool copies one
/// shard's table, not every pool's entries.
const SHARDS: usize = 64;

/// One shard of the virtual names' entries.
type Shard = Arc<HashMap<Box<[u8]>, Arc<Entry>>>;

/// The virtual names' entries, sharded by key.
#[derive(Debug, Clone)]
pub struct Dynamic {
    shards: [Shard; SHARDS],
}

impl Default for Dynamic {
    fn default() -> Self {
        Self { shards: std::array::from_fn(|_| Arc::default()) }
    }
}

/// The shard of a key: FNV-1a over its bytes.
fn shard(key: &[u8]) -> usize {
    let h = key.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3));
    (h as usize) % SHARDS
}

impl Dynamic {
    pub fn get(&self, key: &[u8]) -> Option<&Arc<Entry>> {
        self.shards[shard(key)].get(key)
    }

    pub fn insert(&mut self, key: Box<[u8]>, entry: Arc<Entry>) {
        Arc::make_mut(&mut self.shards[shard(&key)]).insert(key, entry);
    }

    pub fn remove(&mut self, key: &[u8]) {
        let s = &mut self.shards[shard(key)];
        if s.contains_key(key) {
            Arc::make_mut(s).remove(key);
        }
    }
}

/// A response the fast path wrote.
#[derive(Debug, Clone, Copy)]
pub struct FastReply {
    pub len: usize,
    /// How much of the key is the name and type (without the shape).
    pub name_and_type: usize,
    /// End of the question: a response cut there is header and question.
    pub question_end: usize,
}

/// Cuts a response written in `out` down to header and question, with TC
/// set and no records: the reply a rate-limited client gets on a slip.
pub fn slip(out: &mut [u8], question_end: usize) -> usize {
    out[2] |= 0x02; // TC
    out[6..12].fill(0); // no answer, authority or additional records
    question_end
}

/// Every pre-encoded response of a snapshot.
#[derive(Debug, Clone, Default)]
pub struct FastTable {
    /// Static names and each apex SOA: rebuilt only when a zone file changes.
    pub stable: Arc<StaticTable>,
    /// Virtual names: each pool's re-encoded only when its answer changes.
    pub dynamic: Dynamic,
}

impl FastTable {
    /// Answers `req` into `out` if a pre-encoded response fits; returns its length.
    pub fn respond(&self, req: &[u8], out: &mut [u8]) -> Option<usize> {
        self.respond_keyed(req, out, &mut [0u8; MAX_KEY]).map(|r| r.len)
    }

    /// `respond`, leaving the question's key (lower-cased name, type and
    /// shape) in `key` for the caller (response rate limiting).
    pub fn respond_keyed(&self, req: &[u8], out: &mut [u8], key: &mut [u8; MAX_KEY]) -> Option<FastReply> {
        let q = parse(req, key)?;
        let (name_and_type, shape) = key[..q.key_len].split_at(q.key_len - 1);
        let (full, serial, counters) = match self.dynamic.get(name_and_type) {
            Some(entry) => {
                let full = match entry.responses.len() {
                    1 => &entry.responses[0],
                    n => {
                        let t = entry.turns.next();
                        let at = if entry.order.is_empty() { t % n } else { usize::from(entry.order[t % entry.order.len()]) };
                        entry.responses.get(at)?
                    }
                };
                (&full[..], entry.serial.as_ref(), entry.counters.as_ref())
            }
            None => {
                let (full, serial) = self.stable.get(name_and_type)?;
                (full, serial, None)
            }
        };
        // Too large for the client: the slow path truncates properly.
        let len = shaped(full, shape[0], q.max_size, out)?;
        if let Some(c) = counters {
            c.response(u16::from(out[3] & 0xf));
        }
        patch(&mut out[..len], req, &q, serial);
        Some(FastReply { len, name_and_type: q.key_len - 1, question_end: q.question_end })
    }
}

/// Writes into a copied response what is the query's: its ID, RD and CD,
/// its question exactly as asked (so 0x20 case randomisation holds), and
/// the zone's serial where the response carries it.
fn patch(out: &mut [u8], req: &[u8], q: &FastQuery, serial: Option<&SerialPatch>) {
    out[0..2].copy_from_slice(&q.id);
    out[2] = (out[2] & !0x01) | q.rd as u8;
    out[3] = (out[3] & !0x10) | ((q.cd as u8) << 4);
    out[12..q.question_end].copy_from_slice(&req[12..q.question_end]);
    if let Some(p) = serial {
        out[p.at..p.at + 4].copy_from_slice(&p.serial.load(Ordering::Relaxed).to_be_bytes());
    }
}

/// Where each answer record's data sits in an encoded response, in order.
fn answer_rdata(bytes: &[u8]) -> Option<Vec<(usize, usize)>> {
    let count = |i: usize| bytes.get(i..i + 2).map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])));
    let skip_name = |mut pos: usize| -> Option<usize> {
        loop {
            let len = *bytes.get(pos)?;
            match len {
                0 => return Some(pos + 1),
                l if l & 0xc0 == 0xc0 => return Some(pos + 2),
                l => pos += 1 + usize::from(l),
            }
        }
    };
    let mut pos = 12;
    for _ in 0..count(4)? {
        pos = skip_name(pos)? + 4;
    }
    let mut out = Vec::new();
    for _ in 0..count(6)? {
        pos = skip_name(pos)?;
        let len = usize::from(u16::from_be_bytes(bytes.get(pos + 8..pos + 10)?.try_into().ok()?));
        out.push((pos + 10, len));
        pos += 10 + len;
    }
    Some(out)
}

/// A virtual name's responses differ from one lead to the next only in
/// the addresses they carry: the first response is a template, and the
/// others are it with each answer record's address written in, which
/// costs a copy where encoding a message costs microseconds (a pool of
/// ten thousand members has as many leads).
struct Template {
    bytes: Box<[u8]>,
    slots: Vec<(usize, usize)>,
}

impl Template {
    /// A template from the first two responses, when they differ only
    /// within their answers' data.
    fn of(first: &[u8], second: &[u8]) -> Option<Self> {
        let slots = answer_rdata(first)?;
        let inside = |i: usize| slots.iter().any(|&(at, len)| (at..at + len).contains(&i));
        let same_shape = first.len() == second.len() && answer_rdata(second).as_ref() == Some(&slots);
        (same_shape && first.iter().zip(second).enumerate().all(|(i, (a, b))| a == b || inside(i)))
            .then(|| Self { bytes: first.into(), slots })
    }

    /// The response carrying `addresses`, if each fits its slot.
    fn fill(&self, addresses: impl Iterator<Item = IpAddr>) -> Option<Box<[u8]>> {
        let mut bytes = self.bytes.clone();
        let mut n = 0;
        for (address, &(at, len)) in addresses.zip(&self.slots) {
            let data: &[u8] = match address {
                IpAddr::V4(a) => &a.octets(),
                IpAddr::V6(a) => &a.octets(),
            };
            if data.len() != len {
                return None;
            }
            bytes[at..at + len].copy_from_slice(data);
            n += 1;
        }
        (n == self.slots.len()).then_some(bytes)
    }
}

/// The entry of a virtual name's A or AAAA answers (`aaaa`), one response
/// per rotation the pool's turns give. `serial`: the zone's serial cell,
/// for the NODATA responses that carry it. After the first two, responses
/// are filled in from a template where they can be. `None`: the slow path
/// answers (too large, or a serial it cannot patch).
fn entry(zones: &Zones, name: &LowerName, pool: &PoolAnswer, aaaa: bool, serial: &Arc<AtomicU32>) -> Option<Entry> {
    let qtype = if aaaa { RecordType::AAAA } else { RecordType::A };
    let (leads, order) = pool.turns(aaaa);
    let mut responses: Vec<Box<[u8]>> = Vec::with_capacity(leads.len());
    let mut at = None;
    let mut template: Option<Template> = None;
    for &lead in &leads {
        if let Some(t) = &template
            && let Some(bytes) = t.fill(pool.picked(aaaa, Turn::Lead(lead)))
        {
            responses.push(bytes);
            continue;
        }
        let answer = lookup_turn(zones, name, qtype, DNSClass::IN, Turn::Lead(lead));
        let bytes = encode(&answer, name, qtype, Shape::Edns).filter(|b| opt_last(b))?;
        if has_soa(&answer) {
            match serial_offset(&answer, name, qtype, Shape::Edns, &bytes) {
                Some(offset) if at.is_none_or(|a| a == offset) => at = Some(offset),
                _ => return None,
            }
        }
        responses.push(bytes);
        if responses.len() == 2 && at.is_none() {
            template = Template::of(&responses[0], &responses[1]);
        }
    }
    Some(Entry {
        responses: responses.into_boxed_slice(),
        order: order.into_boxed_slice(),
        turns: Turns::random(),
        counters: Some(pool.counters.clone()),
        serial: at.map(|at| SerialPatch { at, serial: serial.clone() }),
    })
}

/// Pre-encodes one virtual name (every rotation, A and AAAA), each entry
/// under its name and type; NODATA answers carry the zone's `serial` cell.
pub fn pool_entries(zones: &Zones, name: &LowerName, pool: &PoolAnswer, serial: &Arc<AtomicU32>) -> Vec<(Box<[u8]>, Arc<Entry>)> {
    [false, true]
        .into_iter()
        .filter_map(|aaaa| {
            let e = entry(zones, name, pool, aaaa, serial)?;
            Some((name_key(name, if aaaa { RecordType::AAAA } else { RecordType::A }), Arc::new(e)))
        })
        .collect()
}

/// Every table of a snapshot built at once (tests, fuzzing, benchmarks):
/// serial cells hold each zone's serial as it is in `zones`.
pub fn build_all(zones: &Zones) -> FastTable {
    let serials: HashMap<LowerName, Arc<AtomicU32>> = zones.iter().map(|(o, z)| (o.clone(), Arc::new(AtomicU32::new(z.serial)))).collect();
    let mut dynamic = Dynamic::default();
    for (origin, zone) in zones {
        for (name, pool) in zone.pools.iter() {
            for (k, e) in pool_entries(zones, name, pool, &serials[origin]) {
                dynamic.insert(k, e);
            }
        }
    }
    FastTable { stable: Arc::new(build_stable(zones, &serials)), dynamic }
}

#[cfg(test)]
mod tests {
    use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
    use hickory_proto::rr::Name;
    use std::collections::HashMap;
    use std::path::Path;

    use super::*;
    use crate::dns::snapshot::Snapshot;
    use crate::dns::view::ZoneView;
    use crate::dns::wire::edns_malformed;
    use crate::zone::ZoneFile;

    fn snap() -> Snapshot {
        let text =
            "$TTL 300\n@ IN SOA ns1 h 1 3600 600 86400 60\n  IN NS ns1\nns1 IN A 127.0.0.1\nalias IN CNAME ns1\n*.w IN A 192.0.2.1\n";
        let z = ZoneFile::parse(Path::new("x.zone"), Name::from_ascii("example.").unwrap(), text.into()).unwrap();
        let www = Name::from_ascii("www.example.").unwrap();
        let addrs = vec!["127.0.10.1".parse().unwrap(), "127.0.10.2".parse().unwrap()];
        let mut pools = HashMap::new();
        pools.insert(LowerName::from(&www), Arc::new(PoolAnswer::new(www, 5, addrs, 1, true, false)));
        let view = ZoneView::new(z.data.clone(), 3, pools);
        let mut s = Snapshot::default();
        s.zones.insert(view.data.lower_origin.clone(), Arc::new(view));
        s
    }

    fn table(s: &Snapshot) -> FastTable {
        build_all(&s.zones)
    }

    /// A query for ns1.example. A with an OPT record of these option bytes.
    fn with_options(options: &[u8]) -> Vec<u8> {
        let mut q = Message::new(7, MessageType::Query, OpCode::Query);
        q.add_query(Query::query(Name::from_ascii("ns1.example.").unwrap(), RecordType::A));
        let mut bytes = q.to_vec().unwrap();
        bytes[11] = 1; // ARCOUNT
        bytes.extend_from_slice(&[0, 0, 41, 4, 208, 0, 0, 0, 0]);
        bytes.extend_from_slice(&(options.len() as u16).to_be_bytes());
        bytes.extend_from_slice(options);
        bytes
    }

    #[test]
    fn the_slow_path_keys_a_question_as_the_fast_path_does() {
        let t = table(&snap());
        let mut out = [0u8; 4096];
        let mut key = [0u8; MAX_KEY];
        let reply = t.respond_keyed(&query("NS1.Example.", RecordType::A, None, 1), &mut out, &mut key).expect("answered");
        let name = LowerName::from(Name::from_ascii("NS1.Example.").unwrap());
        assert_eq!(&key[..reply.name_and_type], &name_key(&name, RecordType::A)[..]);
    }

    #[test]
    fn malformed_edns_options_are_left_to_the_slow_path_which_refuses_them() {
        let t = table(&snap());
        let mut out = [0u8; 4096];
        let cookie = |len: u16| [&[0u8, 10][..], &len.to_be_bytes(), &vec![0xab; len as usize]].concat();
        for good in [vec![], cookie(8), cookie(16), cookie(40), [&cookie(8)[..], &[0, 12, 0, 2, 0, 0]].concat()] {
            let q = with_options(&good);
            assert!(!edns_malformed(&q), "{good:?}");
            assert!(t.respond(&q, &mut out).is_some(), "{good:?}");
        }
        for bad in [cookie(0), cookie(7), cookie(41), vec![0, 10], vec![0, 10, 0, 8, 1, 2, 3], vec![0, 12, 0, 4, 0]] {
            let q = with_options(&bad);
            assert!(edns_malformed(&q), "{bad:?}");
            assert!(t.respond(&q, &mut out).is_none(), "{bad:?}");
        }
        assert!(!edns_malformed(&with_options(&[])[..20]), "cut short: the decoder decides");
    }

    fn query(name: &str, t: RecordType, edns: Option<bool>, id: u16) -> Vec<u8> {
        let mut m = Message::new(id, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
        if let Some(dnssec_ok) = edns {
            let mut e = Edns::new();
            e.set_max_payload(4096);
            e.set_dnssec_ok(dnssec_ok);
            m.set_edns(e);
        }
        m.to_vec().unwrap()
    }

    #[test]
    fn fast_answers_match_the_lookup_with_id_flags_and_case_patched() {
        let s = snap();
        let t = table(&s);
        let mut out = [0u8; 1232];
        let req = query("nS1.ExAmple.", RecordType::A, Some(true), 0xbeef);
        let n = t.respond(&req, &mut out).expect("static name is pre-encoded");
        let m = Message::from_vec(&out[..n]).unwrap();
        assert_eq!(m.metadata.id, 0xbeef);
        assert!(m.metadata.recursion_desired && m.metadata.authoritative);
        assert_eq!(m.queries[0].name().to_string(), "nS1.ExAmple.");
        assert_eq!(m.answers.len(), 1);
        assert!(m.edns.as_ref().unwrap().flags().dnssec_ok);

        let ask = |req: Vec<u8>| {
            let mut out = [0u8; 1232];
            let n = t.respond(&req, &mut out)?;
            Some(Message::from_vec(&out[..n]).unwrap())
        };
        let a = ask(query("www.example.", RecordType::A, None, 1)).unwrap();
        let b = ask(query("www.example.", RecordType::A, None, 1)).unwrap();
        assert!(a.edns.is_none());
        assert_ne!(a.answers[0].data, b.answers[0].data, "round-robin rotates");
        assert!(t.respond(&query("alias.example.", RecordType::A, None, 1), &mut out).is_some());
        let soa = ask(query("example.", RecordType::SOA, None, 1)).unwrap();
        assert!(matches!(&soa.answers[0].data, hickory_proto::rr::RData::SOA(x) if x.serial == 3));
    }

    #[test]
    fn everything_else_goes_to_the_slow_path() {
        let t = table(&snap());
        let mut out = [0u8; 1232];
        for (name, ty) in [("nope.example.", RecordType::A), ("x.w.example.", RecordType::A), ("ns1.example.", RecordType::MX)] {
            assert!(t.respond(&query(name, ty, None, 1), &mut out).is_none(), "{name} {ty}");
        }
        let mut two = Message::from_vec(&query("ns1.example.", RecordType::A, None, 1)).unwrap();
        two.add_query(Query::query(Name::from_ascii("ns1.example.").unwrap(), RecordType::A));
        assert!(t.respond(&two.to_vec().unwrap(), &mut out).is_none());
        let mut bytes = query("ns1.example.", RecordType::A, Some(false), 1);
        bytes.push(0);
        assert!(t.respond(&bytes, &mut out).is_none(), "trailing bytes");
        assert!(t.respond(&bytes[..20], &mut out).is_none(), "truncated");
        let mut response = query("ns1.example.", RecordType::A, None, 1);
        response[2] |= 0x80;
        assert!(t.respond(&response, &mut out).is_none(), "responses are not queries");
    }

    #[test]
    fn the_zone_serial_is_written_in_when_answering() {
        let s = snap();
        let t = table(&s);
        let serial_of = |m: &Message| {
            m.answers.iter().chain(&m.authorities).find_map(|r| match &r.data {
                hickory_proto::rr::RData::SOA(x) => Some(x.serial),
                _ => None,
            })
        };
        let ask = |name: &str, ty: RecordType, edns: Option<bool>| {
            let mut out = [0u8; 1232];
            let n = t.respond(&query(name, ty, edns, 7), &mut out).expect("pre-encoded");
            Message::from_vec(&out[..n]).unwrap()
        };
        assert_eq!(serial_of(&ask("example.", RecordType::SOA, None)), Some(3));
        let nodata = ask("www.example.", RecordType::AAAA, Some(false));
        assert!(nodata.answers.is_empty());
        assert_eq!(serial_of(&nodata), Some(3), "NODATA for a virtual name carries the SOA");
        let origin = LowerName::from(Name::from_ascii("example.").unwrap());
        let cell = t.stable.get(&name_key(&origin, RecordType::SOA)).and_then(|(_, p)| p).expect("the apex SOA is patched").serial.clone();
        cell.store(0xdead_beef, Ordering::Relaxed);
        assert_eq!(serial_of(&ask("example.", RecordType::SOA, Some(true))), Some(0xdead_beef));
        assert_eq!(serial_of(&ask("www.example.", RecordType::AAAA, None)), Some(0xdead_beef), "one cell per zone");
        let a = ask("www.example.", RecordType::A, None);
        assert_eq!(serial_of(&a), None, "positive answers carry no serial");
    }

    #[test]
    fn dynamic_entries_change_one_shard_at_a_time() {
        let t = table(&snap());
        let mut d = t.dynamic.clone();
        let key = name_key(&LowerName::from(Name::from_ascii("www.example.").unwrap()), RecordType::A);
        let before = d.get(&key).unwrap().clone();
        let shared = d.shards.iter().zip(t.dynamic.shards.iter()).filter(|(a, b)| Arc::ptr_eq(a, b)).count();
        assert_eq!(shared, SHARDS);
        d.insert(key.clone(), Arc::new(Entry { counters: None, serial: None, ..(*before).clone() }));
        let shared = d.shards.iter().zip(t.dynamic.shards.iter()).filter(|(a, b)| Arc::ptr_eq(a, b)).count();
        assert_eq!(shared, SHARDS - 1, "only the key's shard is copied");
        assert!(Arc::ptr_eq(t.dynamic.get(&key).unwrap(), &before), "the old table is untouched");
        d.remove(&key);
        assert!(d.get(&key).is_none());
    }

    #[test]
    fn answers_drawn_by_shares_follow_them_query_by_query_on_both_paths() {
        let mut s = snap();
        let www = Name::from_ascii("www.example.").unwrap();
        let addrs: Vec<std::net::IpAddr> = ["127.0.10.1", "127.0.10.2", "127.0.10.3", "::1"].iter().map(|a| a.parse().unwrap()).collect();
        let answer = PoolAnswer::new(www.clone(), 5, addrs.clone(), 2, false, false).with_shares(vec![0.2, 0.3, 0.4, 0.1]);
        let origin = LowerName::from(Name::from_ascii("example.").unwrap());
        let mut view = (*s.zones[&origin]).clone();
        Arc::make_mut(&mut view.pools).insert(LowerName::from(&www), Arc::new(answer));
        s.zones.insert(origin, Arc::new(view));
        let t = table(&s);
        let mut firsts: HashMap<String, usize> = HashMap::new();
        for i in 0..2000u16 {
            let mut out = [0u8; 1232];
            let n = t.respond(&query("www.example.", RecordType::A, None, i), &mut out).expect("pre-encoded");
            let m = Message::from_vec(&out[..n]).unwrap();
            let got: Vec<String> = m.answers.iter().map(|r| r.data.to_string()).collect();
            assert_eq!(got.len(), 2, "{got:?}");
            assert_ne!(got[0], got[1], "distinct members");
            // After the drawn one, the rest in share order: .3 first, unless it led.
            let second = if got[0] == "127.0.10.3" { "127.0.10.2" } else { "127.0.10.3" };
            assert_eq!(got[1], second, "{got:?}");
            *firsts.entry(got[0].clone()).or_default() += 1;
        }
        // The IPv4 members' shares among themselves: 2/9, 3/9, 4/9 of the answers.
        for (a, share) in [("127.0.10.1", 2.0 / 9.0), ("127.0.10.2", 3.0 / 9.0), ("127.0.10.3", 4.0 / 9.0)] {
            let got = firsts[a] as f64 / 2000.0;
            assert!((got - share).abs() < 0.005, "{a}: {got} of the answers, its share {share}");
        }
        let v6 = t.respond(&query("www.example.", RecordType::AAAA, None, 1), &mut [0u8; 1232]).expect("pre-encoded");
        assert!(v6 > 0);
        // The slow path draws the same way.
        let name = LowerName::from(&www);
        let mut slow: HashMap<String, usize> = HashMap::new();
        for turn in 0..1000 {
            let a = crate::dns::lookup::lookup(&s.zones, &name, RecordType::A, DNSClass::IN, turn);
            *slow.entry(a.answers[0].data.to_string()).or_default() += 1;
        }
        for (a, expect) in [("127.0.10.1", 222.2), ("127.0.10.2", 333.3), ("127.0.10.3", 444.4)] {
            assert!((slow[a] as f64 - expect).abs() <= 1.0, "{a}: {} in a full cycle of the schedule", slow[a]);
        }
    }

    #[test]
    fn a_pool_with_one_leader_answers_it_first_and_the_rest_after_from_one_encoding() {
        let mut s = snap();
        let www = Name::from_ascii("www.example.").unwrap();
        let addrs: Vec<std::net::IpAddr> = ["127.0.10.1", "127.0.10.2", "127.0.10.3"].iter().map(|a| a.parse().unwrap()).collect();
        // Priority with its first member full: the second leads, the others follow.
        let answer = PoolAnswer::new(www.clone(), 5, addrs, 3, false, false).with_shares(vec![0.0, 1.0, 0.0]);
        assert_eq!(answer.turns(false), (vec![1], vec![0; 1000]), "one response, led by the second record");
        let origin = LowerName::from(Name::from_ascii("example.").unwrap());
        let mut view = (*s.zones[&origin]).clone();
        Arc::make_mut(&mut view.pools).insert(LowerName::from(&www), Arc::new(answer));
        s.zones.insert(origin, Arc::new(view));
        let t = table(&s);
        for i in 0..5u16 {
            let mut out = [0u8; 1232];
            let n = t.respond(&query("www.example.", RecordType::A, None, i), &mut out).expect("pre-encoded");
            let got: Vec<String> = Message::from_vec(&out[..n]).unwrap().answers.iter().map(|r| r.data.to_string()).collect();
            assert_eq!(got, ["127.0.10.2", "127.0.10.1", "127.0.10.3"]);
        }
    }

    #[test]
    fn responses_filled_from_a_template_are_the_bytes_a_full_encoding_gives() {
        let mut s = snap();
        let www = Name::from_ascii("www.example.").unwrap();
        for (answers, v6) in [(1, false), (3, false), (2, true)] {
            let addrs: Vec<std::net::IpAddr> = (0..50u32)
                .map(|i| {
                    if v6 && i % 2 == 1 {
                        std::net::IpAddr::from(std::net::Ipv6Addr::from(0x2001_0db8u128 << 96 | u128::from(i)))
                    } else {
                        std::net::IpAddr::from(std::net::Ipv4Addr::from(0x7f0a_0000 + i))
                    }
                })
                .collect();
            let shares: Vec<f64> = (0..50).map(|i| 1.0 + f64::from(i % 5)).collect();
            let pool = PoolAnswer::new(www.clone(), 5, addrs, answers, false, false).with_shares(shares);
            let key = LowerName::from(&www);
            let zone = s.zones.values_mut().next().unwrap();
            Arc::make_mut(&mut Arc::make_mut(zone).pools).insert(key.clone(), Arc::new(pool.clone()));
            let serial = Arc::new(AtomicU32::new(3));
            let built = pool_entries(&s.zones, &key, &pool, &serial);
            let mut filled = 0;
            for t in [RecordType::A, RecordType::AAAA] {
                let (leads, _) = pool.turns(t == RecordType::AAAA);
                if leads.len() <= 2 {
                    continue; // AAAA of a pool of IPv4 members: NODATA
                }
                filled += 1;
                let entry = &built.iter().find(|(k, _)| **k == *name_key(&key, t)).expect("an entry per type").1;
                for (i, &lead) in leads.iter().enumerate() {
                    let answer = crate::dns::lookup::lookup_turn(&s.zones, &key, t, DNSClass::IN, Turn::Lead(lead));
                    let full = encode(&answer, &key, t, Shape::Edns).unwrap();
                    assert_eq!(entry.responses[i], full, "answers {answers}, {t}, lead {lead}");
                    // The other shapes, cut from it, are what encoding them gives.
                    for shape in [Shape::Plain, Shape::EdnsDo] {
                        let mut out = [0u8; 1232];
                        let len = shaped(&full, shape as u8, 1232, &mut out).unwrap();
                        assert_eq!(&out[..len], &encode(&answer, &key, t, shape).unwrap()[..], "{t}, {shape:?}, lead {lead}");
                    }
                }
            }
            assert_eq!(filled, if v6 { 2 } else { 1 });
        }
    }
}
