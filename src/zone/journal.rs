//! A zone's journal for incremental transfers (IXFR, RFC 1995): the
//! records each serial removed and added, newest last, bounded in count and
//! size. `since(serial)` gives the chain of differences from a secondary's
//! serial to the current one, or nothing when the journal does not reach
//! back that far (the secondary then takes the whole zone); `ixfr` lays a
//! chain out as the answer's records. Each difference has a sequence
//! number that only grows, so a store can keep the journal as rows and
//! drop the ones it no longer holds (`encode`/`decode` give a row's bytes).
//! Pure: no I/O, no clock.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use hickory_proto::rr::{RData, Record};
use hickory_proto::serialize::binary::{BinDecodable, BinEncodable};

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
    /// The sequence number the next difference gets; the kept ones have
    /// the `deltas.len()` numbers before it.
    next: u64,
}

/// One row of the journal as a store keeps it (see `Journal::rows`): the
/// row (its number and the difference), if any, and the first number still
/// kept (rows before it are gone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kept {
    pub added: Option<(u64, Arc<Delta>)>,
    pub keep_from: u64,
}

impl Journal {
    /// Keeps at most `max_deltas` differences holding `max_records`
    /// records in all; the oldest go first.
    pub fn new(max_deltas: usize, max_records: usize) -> Self {
        Self { deltas: VecDeque::new(), records: 0, max_deltas, max_records, next: 0 }
    }

    /// The journal a store kept, as rows `(number, difference)` in order,
    /// if its chain ends at `serial` (what is served now); otherwise an
    /// empty one, numbered after every row so that forgetting them all
    /// (`keep_from`) cannot touch a later one.
    pub fn restore(max_deltas: usize, max_records: usize, rows: Vec<(u64, Delta)>, serial: u32) -> Self {
        let mut j = Self::new(max_deltas, max_records);
        for (seq, delta) in rows {
            if seq != j.next {
                j.clear();
            }
            j.next = seq;
            j.push(delta);
        }
        if j.deltas.back().is_some_and(|d| d.to != serial) {
            j.clear();
        }
        j
    }

    /// Records a difference. One that does not follow the last (a serial
    /// that jumped, say after a restart) starts the journal over: a chain
    /// with a hole in it must never be served.
    pub fn push(&mut self, delta: Delta) {
        if self.deltas.back().is_some_and(|last| last.to != delta.from) {
            self.clear();
        }
        if delta.records() > self.max_records {
            // Larger than the whole budget: nothing before it is usable either.
            self.clear();
            return;
        }
        self.records += delta.records();
        self.deltas.push_back(Arc::new(delta));
        self.next += 1;
        while self.deltas.len() > self.max_deltas || self.records > self.max_records {
            let Some(old) = self.deltas.pop_front() else { break };
            self.records -= old.records();
        }
    }

    /// The journal as a store keeps it: each difference as a row, and the
    /// first number kept (all of it when there is no row).
    pub fn rows(&self) -> Vec<Kept> {
        let first = self.first();
        if self.deltas.is_empty() {
            return vec![Kept { added: None, keep_from: first }];
        }
        self.deltas.iter().zip(first..).map(|(d, n)| Kept { added: Some((n, d.clone())), keep_from: first }).collect()
    }

    /// The number of the oldest difference kept (`next` when none is).
    pub fn first(&self) -> u64 {
        self.next - self.deltas.len() as u64
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

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal row cut short")]
    Short,
    #[error("journal row: {0}")]
    Record(#[from] hickory_proto::serialize::binary::DecodeError),
}

/// A difference as bytes: its serials, then the removed and the added
/// records, each as a count and records in wire form, length first.
pub fn encode(delta: &Delta) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + 32 * delta.records());
    out.extend_from_slice(&delta.from.to_be_bytes());
    out.extend_from_slice(&delta.to.to_be_bytes());
    for records in [&delta.removed, &delta.added] {
        let wire: Vec<Vec<u8>> = records.iter().filter_map(|r| r.to_bytes().ok()).collect();
        out.extend_from_slice(&(wire.len() as u32).to_be_bytes());
        for w in wire {
            out.extend_from_slice(&(w.len() as u32).to_be_bytes());
            out.extend_from_slice(&w);
        }
    }
    out
}

/// The difference `encode` wrote.
pub fn decode(mut bytes: &[u8]) -> Result<Delta, JournalError> {
    fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Result<&'a [u8], JournalError> {
        if bytes.len() < n {
            return Err(JournalError::Short);
        }
        let (head, rest) = bytes.split_at(n);
        *bytes = rest;
        Ok(head)
    }
    fn u32_of(bytes: &mut &[u8]) -> Result<u32, JournalError> {
        Ok(u32::from_be_bytes(take(bytes, 4)?.try_into().expect("four bytes")))
    }
    fn records(bytes: &mut &[u8]) -> Result<Vec<Record>, JournalError> {
        let n = u32_of(bytes)?;
        let mut out = Vec::with_capacity((n as usize).min(bytes.len() / 12));
        for _ in 0..n {
            let len = u32_of(bytes)? as usize;
            out.push(Record::from_bytes(take(bytes, len)?)?);
        }
        Ok(out)
    }
    let (from, to) = (u32_of(&mut bytes)?, u32_of(&mut bytes)?);
    let removed = records(&mut bytes)?;
    let added = records(&mut bytes)?;
    Ok(Delta { from, to, removed, added })
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

    #[test]
    fn a_difference_reads_back_from_its_bytes_and_cut_bytes_are_refused() {
        let d = diff(
            7,
            8,
            &[a("www.example.test.", [192, 0, 2, 1], 5)],
            &[a("www.example.test.", [192, 0, 2, 2], 5), a("b.example.test.", [192, 0, 2, 3], 9)],
        );
        let bytes = encode(&d);
        assert_eq!(decode(&bytes).unwrap(), d);
        for cut in [0, 3, 8, 12, bytes.len() - 1] {
            assert!(decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut bad = bytes.clone();
        bad[8..12].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(decode(&bad).is_err(), "a count larger than the row");
    }

    #[test]
    fn rows_are_numbered_and_a_restored_journal_serves_only_a_chain_that_ends_where_the_zone_is() {
        let www = |n: u8| [a("www.example.test.", [192, 0, 2, n], 5)];
        let mut j = Journal::new(2, 100);
        let newest = |j: &Journal| j.rows().pop().expect("a row or the mark");
        let kept: Vec<Kept> = (1..=3u32)
            .map(|s| {
                j.push(diff(s, s + 1, &www(s as u8), &www(s as u8 + 1)));
                newest(&j)
            })
            .collect();
        assert_eq!(
            kept.iter().map(|k| (k.added.as_ref().map(|(n, _)| *n), k.keep_from)).collect::<Vec<_>>(),
            [(Some(0), 0), (Some(1), 0), (Some(2), 1)]
        );
        let rows = |j: &Journal| j.rows().into_iter().filter_map(|k| k.added).map(|(n, d)| (n, (*d).clone())).collect::<Vec<_>>();
        // Restored where the zone still is: it serves, and goes on numbering.
        let mut back = Journal::restore(2, 100, rows(&j), 4);
        assert_eq!(back.span(), Some((2, 4)));
        assert_eq!(back.since(2).unwrap().len(), 2);
        back.push(diff(4, 5, &www(4), &www(5)));
        assert_eq!(newest(&back).added.map(|(n, _)| n), Some(3));
        // The zone moved on without it (a crash): nothing is served, and the
        // rows are all forgotten, numbering after them.
        let gone = Journal::restore(2, 100, rows(&j), 9);
        assert_eq!((gone.span(), gone.first()), (None, 3));
        // A missing row leaves only what follows it.
        let mut holed = rows(&j);
        holed.remove(0);
        holed.insert(0, (0, diff(1, 2, &www(1), &www(2))));
        let after = Journal::restore(5, 100, holed, 4);
        assert_eq!(after.span(), Some((3, 4)));
        // Tighter bounds than the store's trim it, and say so.
        let tight = Journal::restore(1, 100, rows(&j), 4);
        assert_eq!((tight.span(), tight.first()), (Some((3, 4)), 2));
        let mut cleared = Journal::new(1, 1);
        cleared.clear();
        assert_eq!(cleared.rows(), [Kept { added: None, keep_from: 0 }]);
        assert_eq!(gone.rows(), [Kept { added: None, keep_from: 3 }], "an empty journal forgets every row");
        assert!(back.rows().iter().all(|k| k.keep_from == back.first()));
    }
}
