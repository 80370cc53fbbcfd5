//! What the SRP responder answers (pure): the clusters from `[srp]`, each
//! known by the addresses requests arrive at, and their instances, whose
//! endpoints follow their pool's preferred member when they have a pool.
//! Unknown instances and malformed, rate-limited or unauthorised requests
//! get no reply, with the reason counted.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

use ipnet::IpNet;

use super::codec::{self, InstanceInfo, Request};
use super::limit::Limiter;
use crate::config::{SrpConfig, SrpInstance};
use crate::dns::snapshot::Preferred;

/// Why a datagram got no reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NoReply {
    Malformed,
    Oversized,
    RateLimited,
    /// An enumeration from outside `enumerate_from`.
    NotAllowed,
    UnknownInstance,
    /// The instance is known but no member serves it now.
    Unavailable,
}

impl NoReply {
    pub const ALL: [NoReply; 6] =
        [NoReply::Malformed, NoReply::Oversized, NoReply::RateLimited, NoReply::NotAllowed, NoReply::UnknownInstance, NoReply::Unavailable];

    pub fn label(self) -> &'static str {
        match self {
            NoReply::Malformed => "malformed",
            NoReply::Oversized => "oversized",
            NoReply::RateLimited => "rate_limited",
            NoReply::NotAllowed => "enumeration_not_allowed",
            NoReply::UnknownInstance => "unknown_instance",
            NoReply::Unavailable => "unavailable",
        }
    }
}

/// A request is never longer than this (0x0F 0x01 + 32 bytes + NUL).
pub const MAX_REQUEST: usize = 2 + codec::MAX_INSTANCE_NAME + 1;

struct Cluster {
    name: String,
    addresses: Vec<IpAddr>,
    instances: Vec<SrpInstance>,
    /// Each instance's pool as the snapshot keys it (lower case, no final dot).
    pools: Vec<Option<String>>,
}

/// The clusters and instances, read-only once built: responders on every
/// socket share one without a lock; only the per-source limiter is shared
/// state, sharded by source.
pub struct Directory {
    clusters: Vec<Cluster>,
    by_address: HashMap<IpAddr, usize>,
    enumerate_from: Vec<IpNet>,
    limit: Limiter,
}

impl Directory {
    pub fn new(cfg: &SrpConfig, now: Instant) -> Self {
        let mut by_address = HashMap::new();
        let mut enumerate_from = cfg.enumerate_from.clone();
        let defaults = enumerate_from.is_empty();
        if defaults {
            enumerate_from.push("127.0.0.0/8".parse().expect("valid"));
            enumerate_from.push("::1/128".parse().expect("valid"));
        }
        let clusters = cfg
            .cluster
            .iter()
            .enumerate()
            .map(|(i, c)| {
                for a in &c.addresses {
                    by_address.insert(*a, i);
                    if defaults {
                        let prefix = if a.is_ipv4() { 24 } else { 64 };
                        enumerate_from.push(IpNet::new(*a, prefix).expect("valid prefix").trunc());
                    }
                }
                let pools = c.instance.iter().map(|i| i.pool.as_ref().map(|p| p.trim_end_matches('.').to_ascii_lowercase())).collect();
                Cluster { name: c.name.clone(), addresses: c.addresses.clone(), instances: c.instance.clone(), pools }
            })
            .collect();
        Self { clusters, by_address, enumerate_from, limit: Limiter::new(cfg.rate, cfg.burst, now) }
    }

    /// The answer to `data`, which `peer` sent to our address `local`.
    pub fn answer(
        &self,
        local: IpAddr,
        peer: IpAddr,
        data: &[u8],
        preferred: &HashMap<String, std::sync::Arc<[Preferred]>>,
        now: Instant,
    ) -> Result<Vec<u8>, NoReply> {
        if data.len() > MAX_REQUEST {
            return Err(NoReply::Oversized);
        }
        let request = Request::decode(data).map_err(|_| NoReply::Malformed)?;
        if !self.limit.allow(peer, now) {
            return Err(NoReply::RateLimited);
        }
        let cluster = self.by_address.get(&local).map(|i| &self.clusters[*i]).ok_or(NoReply::UnknownInstance)?;
        match request {
            Request::BroadcastEx | Request::UnicastEx => {
                if !self.enumerate_from.iter().any(|n| n.contains(&peer)) {
                    return Err(NoReply::NotAllowed);
                }
                let infos: Vec<InstanceInfo> = (0..cluster.instances.len()).filter_map(|i| info(cluster, local, i, preferred)).collect();
                if infos.is_empty() {
                    return Err(NoReply::Unavailable);
                }
                Ok(codec::encode_enumeration(&infos))
            }
            Request::Instance(name) => {
                let i = find(&cluster.instances, &name).ok_or(NoReply::UnknownInstance)?;
                info(cluster, local, i, preferred).map(|info| codec::encode_instance(&info)).ok_or(NoReply::Unavailable)
            }
            Request::Dac(name) => {
                let i = find(&cluster.instances, &name).ok_or(NoReply::UnknownInstance)?;
                let port = cluster.instances[i].dac.ok_or(NoReply::UnknownInstance)?;
                info(cluster, local, i, preferred).map(|_| codec::encode_dac(port)).ok_or(NoReply::Unavailable)
            }
        }
    }
}

fn find(instances: &[SrpInstance], name: &str) -> Option<usize> {
    instances.iter().position(|i| i.name.eq_ignore_ascii_case(name))
}

/// An instance's reply as of now, asked at our address `local`; `None`
/// when its pool has no member to serve it, or when the member serving it
/// has an address of its own among the cluster's and that is not `local`
/// (clients that find the cluster by DNS are sent to the member's address).
fn info(cluster: &Cluster, local: IpAddr, index: usize, preferred: &HashMap<String, std::sync::Arc<[Preferred]>>) -> Option<InstanceInfo> {
    let i = &cluster.instances[index];
    let member = match &cluster.pools[index] {
        Some(pool) => Some(preferred.get(pool)?.first()?.clone()),
        None => None,
    };
    if let Some(m) = &member
        && m.address != local
        && cluster.addresses.contains(&m.address)
    {
        return None;
    }
    let cluster = &cluster.name;
    Some(InstanceInfo {
        server_name: i
            .server_name
            .clone()
            .or_else(|| member.as_ref().map(|m| m.id.to_string()))
            .unwrap_or_else(|| cluster.to_ascii_uppercase()),
        instance_name: i.name.clone(),
        clustered: i.pool.is_some(),
        version: i.version.clone(),
        np: i.np.clone(),
        tcp: member.as_ref().and_then(|m| m.tcp_port).or(i.tcp),
        via: i.via.clone(),
        other: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn config() -> SrpConfig {
        crate::config::Config::from_toml(
            r#"
[[pool]]
name = "sql.example.test."
members = [ { id = "db1", address = "127.0.0.51" }, { id = "db2", address = "127.0.0.52" } ]
[srp]
rate = 1000
burst = 1000
[[srp.cluster]]
name = "prod"
addresses = ["127.0.0.50"]
[[srp.cluster.instance]]
name = "Sales"
tcp = 14330
dac = 14331
pool = "sql.example.test."
[[srp.cluster.instance]]
name = "REPORTS"
server_name = "PROD"
np = '\\PROD\pipe\sql\query'
"#,
        )
        .unwrap()
        .srp
        .unwrap()
    }

    fn live(members: &[(&str, Option<u16>)]) -> HashMap<String, Arc<[Preferred]>> {
        let v: Vec<Preferred> = members
            .iter()
            .enumerate()
            .map(|(n, (id, port))| Preferred { id: (*id).into(), address: format!("127.0.0.{}", 51 + n).parse().unwrap(), tcp_port: *port })
            .collect();
        HashMap::from([("sql.example.test".to_string(), v.into())])
    }

    const HERE: &str = "127.0.0.50";

    fn ask(d: &Directory, data: &[u8], live: &HashMap<String, Arc<[Preferred]>>) -> Result<Vec<InstanceInfo>, NoReply> {
        d.answer(HERE.parse().unwrap(), "127.0.0.9".parse().unwrap(), data, live, Instant::now())
            .map(|r| codec::decode_response(&r).unwrap())
    }

    #[test]
    fn an_instance_follows_its_pool_and_names_are_case_insensitive() {
        let d = Directory::new(&config(), Instant::now());
        let r = ask(&d, b"\x04sales\x00", &live(&[("db1", None), ("db2", None)])).unwrap();
        assert_eq!((r[0].server_name.as_str(), r[0].instance_name.as_str(), r[0].tcp, r[0].clustered), ("db1", "Sales", Some(14330), true));
        // The instance moved: another member, on another port.
        let r = ask(&d, b"\x04SALES\x00", &live(&[("db2", Some(15000))])).unwrap();
        assert_eq!((r[0].server_name.as_str(), r[0].tcp), ("db2", Some(15000)));
        // Nobody serves it: no reply at all.
        assert_eq!(ask(&d, b"\x04SALES\x00", &live(&[])), Err(NoReply::Unavailable));
    }

    #[test]
    fn unknown_malformed_and_foreign_requests_get_no_reply() {
        let d = Directory::new(&config(), Instant::now());
        let l = live(&[("db1", None)]);
        assert_eq!(ask(&d, b"\x04NOPE\x00", &l), Err(NoReply::UnknownInstance));
        assert_eq!(ask(&d, b"\x04", &l), Err(NoReply::Malformed));
        assert_eq!(ask(&d, &[4; 200], &l), Err(NoReply::Oversized));
        assert_eq!(ask(&d, b"", &l), Err(NoReply::Malformed));
        let elsewhere = d.answer("127.0.0.99".parse().unwrap(), "127.0.0.9".parse().unwrap(), b"\x04SALES\x00", &l, Instant::now());
        assert_eq!(elsewhere, Err(NoReply::UnknownInstance), "not a cluster address");
        let outsider = d.answer(HERE.parse().unwrap(), "10.1.2.3".parse().unwrap(), b"\x03", &l, Instant::now());
        assert_eq!(outsider, Err(NoReply::NotAllowed), "enumeration from outside the allowed networks");
        let dac = d.answer(HERE.parse().unwrap(), "127.0.0.9".parse().unwrap(), b"\x0f\x01sales\x00", &l, Instant::now()).unwrap();
        assert_eq!(codec::decode_dac(&dac), Ok(14331));
        let no_dac = d.answer(HERE.parse().unwrap(), "127.0.0.9".parse().unwrap(), b"\x0f\x01reports\x00", &l, Instant::now());
        assert_eq!(no_dac, Err(NoReply::UnknownInstance));
    }

    #[test]
    fn enumeration_lists_the_instances_served_now() {
        let d = Directory::new(&config(), Instant::now());
        let r = ask(&d, b"\x03", &live(&[("db1", None)])).unwrap();
        assert_eq!(r.iter().map(|i| i.instance_name.as_str()).collect::<Vec<_>>(), ["Sales", "REPORTS"]);
        assert_eq!(r[1].np.as_deref(), Some(r"\\PROD\pipe\sql\query"));
        let r = ask(&d, b"\x02", &live(&[])).unwrap();
        assert_eq!(r.len(), 1, "Sales has no member now");
    }

    #[test]
    fn a_flood_from_one_source_is_cut() {
        let mut cfg = config();
        cfg.rate = 5;
        cfg.burst = 5;
        let d = Directory::new(&cfg, Instant::now());
        let l = live(&[("db1", None)]);
        let t = Instant::now();
        let answered =
            (0..50).filter(|_| d.answer(HERE.parse().unwrap(), "127.0.0.9".parse().unwrap(), b"\x04SALES\x00", &l, t).is_ok()).count();
        assert_eq!(answered, 5);
    }
}
