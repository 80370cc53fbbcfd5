//! A zone's journal for incremental transfers (IXFR, RFC 1995): the
//! records each serial removed and added, newest last, bounded in count and
//! size. `since(serial)` gives the chain of differences from a secondary's
//! serial to the current one, or nothing when the journal does not reach
//! back that far (the secondary then takes the whole zone); `ixfr` lays a
//! chain out as the answer's records. Pure: no I/O, no clock.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use hickory_proto::rr::{RData, Record};
use hickory_proto::serialize::binary::BinEncodable;

/// What one serial changed: from `from` to `to`, these records went and
/// these came (SOA records excluded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delta {
    pub from: u32,
    pub to: u32,
    pub removed: Vec<Record>,
    pub added: Vec<Record>,
}

impl Delta {
    fn records(&self) -> usize {
        self.removed.len() + self.added.len()
    }
}

/// Records keyed by their wire form, TTL included: a new TTL is a change.
fn keyed(records: &[Record]) -> BTreeMap<Vec<u8>, &Record> {
    records.iter().filter(|r| !matches!(r.data, RData::SOA(_))).filter_map(|r| r.to_bytes().ok().map(|k| (k, r))).collect()
}

/// The difference between two versions of a zone's records.
pub fn diff(from: u32, to: u32, old: &[Record], new: &[Record]) -> Delta {
    let (old, new) = (keyed(old), keyed(new));
    let removed = old.iter().filter(|(k, _)| !new.contains_key(*k)).map(|(_, r)| (*r).clone()).collect();
    let added = new.iter().filter(|(k, _)| !old.contains_key(*k)).map(|(_, r)| (*r).clone()).collect();
    Delta { from, to, removed, added }
}

#[derive(Debug, Clone)]
pub struct Journal {
    deltas: VecDeque<Arc<Delta>>,
    records: usize,
    max_deltas: usize,
    max_records: usize,
}

impl Journal {
    /// Keeps at most `max_deltas` differences holding `max_records`
    /// records in all; the oldest go first.
    pub fn new(max_deltas: usize, max_records: usize) -> Self {
        Self { deltas: VecDeque::new(), records: 0, max_deltas, max_records }
    }

    /// Records a difference. One that does not follow the last (a serial
    /// that jumped, say after a restart) starts the journal over: a chain
    /// with a hole in it must never be served.
    pub fn push(&mut self, delta: Delta) {
        if self.deltas.back().is_some_and(|last| last.to != delta.from) {
            self.deltas.clear();
            self.records = 0;
        }
        if delta.records() > self.max_records {
            // Larger than the whole budget: nothing before it is usable either.
            self.deltas.clear();
            self.records = 0;
            return;
        }
        self.records += delta.records();
        self.deltas.push_back(Arc::new(delta));
        while self.deltas.len() > self.max_deltas || self.records > self.max_records {
            let Some(old) = self.deltas.pop_front() else { break };
            self.records -= old.records();
        }
    }

    /// The differences from `serial` to the newest, in order; empty when
    /// `serial` is the newest; `None` when the journal cannot say.
    pub fn since(&self, serial: u32) -> Option<Vec<Arc<Delta>>> {
        if self.deltas.back().is_some_and(|d| d.to == serial) {
            return Some(Vec::new());
        }
        let start = self.deltas.iter().position(|d| d.from == serial)?;
        Some(self.deltas.iter().skip(start).cloned().collect())
    }

    /// Forgets every difference (the zone changed in a way not journaled).
    pub fn clear(&mut self) {
        self.deltas.clear();
        self.records = 0;
    }

    /// The serials the journal reaches back to and up to.
    pub fn span(&self) -> Option<(u32, u32)> {
        Some((self.deltas.front()?.from, self.deltas.back()?.to))
    }
}

/// An IXFR answer (RFC 1995 §4): the current SOA, then for each difference
/// the SOA at its start, what it removed, the SOA at its end, what it
/// added; then the current SOA again. `soa` is the zone's SOA record as
/// served now; the others are it with their serials.
pub fn ixfr(soa: &Record, chain: &[Arc<Delta>]) -> Vec<Record> {
    let at = |serial: u32| {
        let mut r = soa.clone();
        if let RData::SOA(s) = &mut r.data {
            s.serial = serial;
        }
        r
    };
    let mut out = vec![soa.clone()];
    for d in chain {
        out.push(at(d.from));
        out.extend(d.removed.iter().cloned());
        out.push(at(d.to));
        out.extend(d.added.iter().cloned());
    }
    out.push(soa.clone());
    out
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use hickory_proto::rr::rdata::{A, SOA};
    use hickory_proto::rr::{Name, RecordType};

    use super::*;

    fn a(name: &str, ip: [u8; 4], ttl: u32) -> Record {
        Record::from_rdata(Name::from_ascii(name).unwrap(), ttl, RData::A(A(Ipv4Addr::from(ip))))
    }

    fn soa(serial: u32) -> Record {
        let n = Name::from_ascii("example.test.").unwrap();
        Record::from_rdata(n.clone(), 300, RData::SOA(SOA::new(n.clone(), n, serial, 3600, 600, 86400, 60)))
    }

    #[test]
    fn a_difference_is_what_went_and_what_came_and_a_new_ttl_is_both() {
        let old = [soa(1), a("www.example.test.", [192, 0, 2, 1], 5), a("ns1.example.test.", [192, 0, 2, 53], 300)];
        let new = [soa(2), a("www.example.test.", [192, 0, 2, 2], 5), a("ns1.example.test.", [192, 0, 2, 53], 60)];
        let d = diff(1, 2, &old, &new);
        assert_eq!((d.from, d.to), (1, 2));
        assert_eq!(d.removed.len(), 2, "the old www and the ns1 with its old TTL: {d:?}");
        assert_eq!(d.added.len(), 2);
        assert!(d.removed.iter().chain(&d.added).all(|r| r.record_type() != RecordType::SOA));
        assert!(diff(2, 3, &new, &new).records() == 0);
    }

    #[test]
    fn the_chain_from_a_serial_is_served_only_without_holes() {
        let mut j = Journal::new(3, 100);
        let www = |n: u8| [a("www.example.test.", [192, 0, 2, n], 5)];
        for s in 1..=4u32 {
            j.push(diff(s, s + 1, &www(s as u8), &www(s as u8 + 1)));
        }
        // Three kept: 2→3, 3→4, 4→5.
        assert_eq!(j.span(), Some((2, 5)));
        assert!(j.since(1).is_none(), "too far back: the whole zone");
        assert_eq!(j.since(3).unwrap().iter().map(|d| (d.from, d.to)).collect::<Vec<_>>(), [(3, 4), (4, 5)]);
        assert_eq!(j.since(5).unwrap().len(), 0, "current");
        assert!(j.since(9).is_none(), "a serial we never served");
        // A serial that jumps starts the journal over.
        j.push(diff(100, 101, &www(1), &www(2)));
        assert_eq!(j.span(), Some((100, 101)));
        assert!(j.since(4).is_none());
        // The record budget bounds it too; one change larger than it empties it.
        let mut small = Journal::new(100, 5);
        for s in 1..=4u32 {
            small.push(diff(s, s + 1, &www(s as u8), &www(s as u8 + 1)));
        }
        assert_eq!(small.span(), Some((3, 5)), "2 records each, 5 at most");
        let many: Vec<Record> = (0..10).map(|i| a("x.example.test.", [10, 0, 0, i], 5)).collect();
        small.push(diff(5, 6, &[], &many));
        assert_eq!(small.span(), None);
    }

    #[test]
    fn an_ixfr_answer_is_laid_out_as_rfc_1995_says() {
        let mut j = Journal::new(10, 100);
        j.push(diff(1, 2, &[a("www.example.test.", [192, 0, 2, 1], 5)], &[a("www.example.test.", [192, 0, 2, 2], 5)]));
        j.push(diff(2, 3, &[], &[a("new.example.test.", [192, 0, 2, 9], 5)]));
        let out = ixfr(&soa(3), &j.since(1).unwrap());
        let serials: Vec<Option<u32>> = out
            .iter()
            .map(|r| match &r.data {
                RData::SOA(s) => Some(s.serial),
                _ => None,
            })
            .collect();
        assert_eq!(serials, [Some(3), Some(1), None, Some(2), None, Some(2), Some(3), None, Some(3)]);
    }
}
