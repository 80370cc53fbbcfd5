//! What the DNS side counts and shows: responses by path and RCODE and
//! dropped datagrams (atomics on the hot path), and, read from the
//! published snapshot at each scrape, responses per virtual name, each
//! zone's serial and each member's state.

use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;

use super::snapshot::Snapshot;
use crate::metrics::{Count, Expose, Writer, label, rcode_name};

/// Where a query was answered.
#[derive(Debug, Clone, Copy)]
pub enum Path {
    /// Pre-encoded response over UDP.
    UdpFast = 0,
    /// The hickory-server handler over UDP.
    UdpSlow = 1,
    Tcp = 2,
}

const PATHS: [&str; 3] = ["udp_fast", "udp", "tcp"];

#[derive(Debug, Default)]
pub struct DnsCounters {
    /// Responses by path and RCODE (the low four bits).
    responses: [[Count; 16]; 3],
    /// Datagrams dropped: truncated, from port 0, or the slow queue full.
    pub udp_dropped: Count,
    /// Zone transfers sent: the whole zone, or only what changed (IXFR).
    pub transfers_full: Count,
    pub transfers_incremental: Count,
}

impl DnsCounters {
    pub fn response(&self, path: Path, rcode: u16) {
        self.add_responses(path, rcode, 1);
    }

    pub fn add_responses(&self, path: Path, rcode: u16, n: u64) {
        if n > 0 {
            self.responses[path as usize][(rcode & 0xf) as usize].add(n);
        }
    }

    pub fn responses(&self, path: Path, rcode: u16) -> u64 {
        self.responses[path as usize][(rcode & 0xf) as usize].get()
    }
}

impl Expose for DnsCounters {
    fn expose(&self, w: &mut Writer<'_, '_>) -> fmt::Result {
        let mut samples = Vec::new();
        for (p, path) in PATHS.iter().enumerate() {
            for (code, n) in self.responses[p].iter().map(Count::get).enumerate().filter(|(_, n)| *n > 0) {
                samples.push((vec![("path", (*path).into()), ("rcode", rcode_name(code))], n));
            }
        }
        w.counters("vnamed_dns_responses", "DNS responses sent, by path and rcode.", samples)?;
        w.counters(
            "vnamed_zone_transfers",
            "Zone transfers sent, by kind: the whole zone (AXFR, or IXFR the journal cannot serve) or incremental.",
            vec![
                (vec![("kind", "full".into())], self.transfers_full.get()),
                (vec![("kind", "incremental".into())], self.transfers_incremental.get()),
            ],
        )?;
        w.counter("vnamed_dns_udp_dropped", "UDP datagrams dropped (truncated, bad source, slow path full).", self.udp_dropped.get())
    }
}

/// The published snapshot, as metrics.
pub struct SnapshotMetrics(pub Arc<ArcSwap<Snapshot>>);

impl Expose for SnapshotMetrics {
    fn expose(&self, w: &mut Writer<'_, '_>) -> fmt::Result {
        let snap = self.0.load();
        let mut pools: Vec<_> = snap.zones.values().flat_map(|z| z.pools.values()).collect();
        pools.sort_by(|a, b| a.name.cmp(&b.name));
        let names: Vec<String> = pools.iter().map(|p| p.name.to_string()).collect();
        let mut samples = Vec::new();
        for (p, name) in pools.iter().zip(&names) {
            for (code, n) in p.counters.by_rcode().filter(|(_, n)| *n > 0) {
                samples.push((vec![("pool", label(name)), ("rcode", rcode_name(code))], n));
            }
        }
        w.counters("vnamed_pool_responses", "DNS responses for virtual names, by pool and rcode.", samples)?;
        let mut zones: Vec<_> = snap.zones.values().collect();
        zones.sort_by(|a, b| a.data.origin.cmp(&b.data.origin));
        let origins: Vec<String> = zones.iter().map(|z| z.data.origin.to_string()).collect();
        let serials = zones.iter().zip(&origins).map(|(z, o)| (vec![("zone", label(o))], i64::from(z.serial))).collect();
        w.gauges("vnamed_zone_serial", "SOA serial served.", serials)?;
        let mut health: Vec<_> = snap.health.iter().collect();
        health.sort_by(|a, b| a.0.cmp(b.0));
        let (mut up, mut in_answer, mut stale, mut ring_dead, mut fallback) = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (pool, members) in &health {
            for m in members.iter() {
                let labels = vec![("pool", label(pool)), ("member", label(&m.id))];
                up.push((labels.clone(), i64::from(m.up)));
                in_answer.push((labels.clone(), i64::from(m.in_answer)));
                stale.push((labels.clone(), i64::from(m.stale)));
                ring_dead.push((labels, i64::from(m.ring_dead)));
            }
            fallback.push((vec![("pool", label(pool))], i64::from(!members.is_empty() && !members.iter().any(|m| m.up))));
        }
        w.gauges("vnamed_member_up", "Whether a pool member is in service (1) or not (0).", up)?;
        w.gauges("vnamed_member_in_answer", "Whether a pool member is in the current answer.", in_answer)?;
        w.gauges("vnamed_member_stale", "Whether a member reported up but its reports stopped for longer than stale_after.", stale)?;
        w.gauges("vnamed_member_ring_dead", "Whether the ring reported a member's host dead (and it has not rejoined).", ring_dead)?;
        w.gauges("vnamed_pool_fallback", "Whether a pool answers its fallback: no member is in service.", fallback)
    }
}
