//! One virtual name's answer as published: its addresses and records in
//! preference order, how answers are drawn (rotation, or a schedule cut by
//! shares), and the members behind it for the SRP responder.

use std::net::IpAddr;
use std::sync::Arc;

use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{Name, RData, Record};

/// The current answer for one virtual name.
#[derive(Debug, Clone)]
pub struct PoolAnswer {
    pub name: Name,
    pub ttl: u32,
    /// All addresses in preference order.
    pub addresses: Vec<IpAddr>,
    /// The IPv4 and the IPv6 ones, each in that order: the records of A
    /// and AAAA answers, made when an answer is encoded (a record is
    /// hundreds of bytes, an address 17).
    pub v4: Box<[IpAddr]>,
    pub v6: Box<[IpAddr]>,
    /// How many addresses one answer carries.
    pub answers: usize,
    /// Rotate through the addresses query by query (round-robin).
    pub rotate: bool,
    /// No address may be given: answer SERVFAIL for A and AAAA.
    pub servfail: bool,
    /// Responses given for this name; the same counters across answers.
    pub counters: Arc<crate::metrics::PoolCounters>,
    /// The members behind `addresses`, for the SRP responder.
    pub preferred: Arc<[Preferred]>,
    /// Each address's share of the answers; empty unless drawn by shares.
    pub shares: Vec<f64>,
    /// How `a` and `aaaa` answers are drawn, when by shares.
    pub drawn_a: Option<Arc<Drawn>>,
    pub drawn_aaaa: Option<Arc<Drawn>>,
}

impl PoolAnswer {
    pub fn new(name: Name, ttl: u32, addresses: Vec<IpAddr>, answers: usize, rotate: bool, servfail: bool) -> Self {
        let (v4, v6): (Vec<IpAddr>, Vec<IpAddr>) = addresses.iter().partition(|a| a.is_ipv4());
        Self {
            name,
            ttl,
            addresses,
            v4: v4.into(),
            v6: v6.into(),
            answers,
            rotate,
            servfail,
            counters: Arc::default(),
            preferred: Arc::from([]),
            shares: Vec::new(),
            drawn_a: None,
            drawn_aaaa: None,
        }
    }

    /// This answer drawn by `shares` (one per address, in order).
    pub fn with_shares(mut self, shares: Vec<f64>) -> Self {
        if shares.len() == self.addresses.len() && !shares.is_empty() {
            let family =
                |v4: bool| -> Vec<f64> { self.addresses.iter().zip(&shares).filter(|(a, _)| a.is_ipv4() == v4).map(|(_, s)| *s).collect() };
            self.drawn_a = Drawn::new(&family(true)).map(Arc::new);
            self.drawn_aaaa = Drawn::new(&family(false)).map(Arc::new);
            self.shares = shares;
        }
        self
    }

    /// The addresses that lead answers: every one when they rotate, those
    /// with a share when drawn by shares, else the first `answers`.
    pub fn shown(&self) -> Vec<IpAddr> {
        if !self.shares.is_empty() {
            return self.addresses.iter().zip(&self.shares).filter(|(_, s)| **s > 0.0).map(|(a, _)| *a).collect();
        }
        if self.rotate { self.addresses.clone() } else { self.addresses[..self.addresses.len().min(self.answers)].to_vec() }
    }

    /// The addresses of one family (`aaaa`: IPv6) in preference order.
    pub fn family(&self, aaaa: bool) -> &[IpAddr] {
        if aaaa { &self.v6 } else { &self.v4 }
    }

    /// The record of `address` at this name.
    pub fn record(&self, address: IpAddr) -> Record {
        let data = match address {
            IpAddr::V4(a) => RData::A(A(a)),
            IpAddr::V6(a) => RData::AAAA(AAAA(a)),
        };
        Record::from_rdata(self.name.clone(), self.ttl, data)
    }

    /// The records of `qtype` (A or AAAA) one answer carries, at `turn`.
    pub fn records(&self, aaaa: bool, turn: Turn) -> impl Iterator<Item = Record> + '_ {
        self.picked(aaaa, turn).map(|a| self.record(a))
    }

    /// The addresses of `qtype` (A or AAAA) one answer carries, at `turn`.
    pub fn picked(&self, aaaa: bool, turn: Turn) -> impl Iterator<Item = IpAddr> + '_ {
        let (set, drawn) = if aaaa { (&self.v6, &self.drawn_aaaa) } else { (&self.v4, &self.drawn_a) };
        let n = self.answers.min(set.len());
        let (start, order): (usize, Option<&Drawn>) = match (drawn, turn) {
            (Some(d), Turn::Query(t)) => (d.lead(t), Some(d)),
            (Some(d), Turn::Lead(l)) => (l, Some(d)),
            (None, Turn::Query(t) | Turn::Lead(t)) if self.rotate && !set.is_empty() => (t % set.len(), None),
            (None, _) => (0, None),
        };
        let picked: Vec<usize> = match order {
            Some(d) => d.led_by(start).take(n).collect(),
            None => (0..set.len()).cycle().skip(start).take(n).collect(),
        };
        picked.into_iter().filter_map(move |i| set.get(i).copied())
    }

    /// The different answers of `qtype` (A or AAAA), each by the record
    /// that leads it, and the order they are given in slot by slot, as
    /// places in that list (empty: one after the other).
    pub fn turns(&self, aaaa: bool) -> (Vec<usize>, Vec<u16>) {
        let (set, drawn) = if aaaa { (&self.v6, &self.drawn_aaaa) } else { (&self.v4, &self.drawn_a) };
        match drawn {
            Some(d) => {
                let mut leads: Vec<usize> = d.schedule.iter().map(|l| usize::from(*l)).collect();
                leads.sort_unstable();
                leads.dedup();
                let order = d.schedule.iter().map(|l| leads.binary_search(&usize::from(*l)).unwrap_or(0) as u16).collect();
                (leads, order)
            }
            None if self.rotate => ((0..set.len().max(1)).collect(), Vec::new()),
            None => (vec![0], Vec::new()),
        }
    }
}

/// Which answer of a pool to give.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Turn {
    /// The `n`th query: rotates, or follows the share schedule.
    Query(usize),
    /// The answer led by record `n` (pre-encoding each possible answer).
    Lead(usize),
}

/// Answers drawn by shares for one address family: which record leads the
/// answer slot by slot (each in proportion to its share, spread out), and
/// the rest of an answer in share order.
#[derive(Debug, Clone, PartialEq)]
pub struct Drawn {
    /// Slot → the record that leads the answer, cycled query by query.
    pub schedule: Box<[u16]>,
    /// Record indices, highest share first (ties in configured order).
    pub by_share: Box<[u16]>,
}

impl Drawn {
    /// The slots of a schedule for `n` records: fine enough that a share
    /// of a thousandth shows.
    fn slots(n: usize) -> usize {
        (n * 8).clamp(1000, usize::from(u16::MAX))
    }

    /// `None` when no record has a share.
    pub fn new(shares: &[f64]) -> Option<Self> {
        if !shares.iter().any(|s| *s > 0.0) || shares.len() > usize::from(u16::MAX) {
            return None;
        }
        let schedule = crate::pool::share::schedule(shares, Self::slots(shares.len())).into_iter().map(|i| i as u16).collect();
        let mut by_share: Vec<u16> = (0..shares.len() as u16).collect();
        by_share.sort_by(|a, b| shares[usize::from(*b)].total_cmp(&shares[usize::from(*a)]).then(a.cmp(b)));
        Some(Self { schedule, by_share: by_share.into() })
    }

    /// The record leading the `turn`th answer.
    pub fn lead(&self, turn: usize) -> usize {
        usize::from(self.schedule[turn % self.schedule.len()])
    }

    /// An answer led by record `lead`: it, then the others by share.
    pub fn led_by(&self, lead: usize) -> impl Iterator<Item = usize> + '_ {
        std::iter::once(lead).chain(self.by_share.iter().map(|i| usize::from(*i)).filter(move |i| *i != lead))
    }
}

/// A member in its pool's current preference.
#[derive(Debug, Clone, PartialEq)]
pub struct Preferred {
    /// Shared with the member's own id.
    pub id: Arc<str>,
    pub address: IpAddr,
    /// The member's reported `tcp_port` metric, when it has one.
    pub tcp_port: Option<u16>,
}

impl PoolAnswer {
    /// The address records this pool puts in the zone: its answer, none
    /// while it answers SERVFAIL.
    pub fn zone_records(&self) -> impl Iterator<Item = Record> + '_ {
        self.v4.iter().chain(self.v6.iter()).filter(|_| !self.servfail).map(|a| self.record(*a))
    }
}
