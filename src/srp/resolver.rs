//! The client side (the seed's network access module): resolves
//! `CLUSTER\INSTANCE` with an SRP request, caches the reply, verifies that
//! the server it connects to answers to the instance's name, and purges
//! and resolves again when a cached endpoint is stale or the connection
//! fails. The cache can be kept in a file so that it outlives a process.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use super::codec::{self, InstanceInfo, Request, SrpError};
use super::tds;

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("{0:?} is not CLUSTER\\INSTANCE")]
    Name(String),
    #[error("cluster {0}: {1}")]
    Cluster(String, std::io::Error),
    #[error("no SRP reply from {0} (unknown instance, or no responder)")]
    NoReply(SocketAddr),
    #[error("bad SRP reply from {0}: {1}")]
    BadReply(SocketAddr, SrpError),
    #[error("instance {0} has no TCP endpoint")]
    NoTcp(String),
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    #[error("{addr} does not answer to instance {instance}")]
    NotVerified { addr: SocketAddr, instance: String },
}

/// An instance resolved: where its cluster is, and its reply.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    pub cluster: IpAddr,
    pub info: InstanceInfo,
    /// Served from the cache, without an SRP exchange.
    pub cached: bool,
}

impl Resolved {
    pub fn tcp(&self) -> Option<SocketAddr> {
        self.info.tcp.map(|p| SocketAddr::new(self.cluster, p))
    }
}

/// Splits `CLUSTER\INSTANCE`.
pub fn split(name: &str) -> Result<(&str, &str), ResolveError> {
    match name.split_once('\\') {
        Some((c, i)) if !c.is_empty() && !i.is_empty() && !i.contains('\\') && i.len() <= codec::MAX_INSTANCE_NAME => Ok((c, i)),
        _ => Err(ResolveError::Name(name.to_owned())),
    }
}

/// The first A (else AAAA) record for `name` from the DNS server `server`,
/// asked through hickory's client: a random query id and a random source
/// port per query, and replies checked against the question.
async fn dns_lookup(server: SocketAddr, name: &str, timeout: Duration) -> std::io::Result<IpAddr> {
    use hickory_net::client::{Client, ClientHandle};
    use hickory_net::runtime::TokioRuntimeProvider;
    use hickory_net::udp::UdpClientStream;
    use hickory_proto::rr::{DNSClass, Name, RData, RecordType};
    let invalid = |e: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, e);
    let mut qname = Name::from_ascii(name).map_err(|e| invalid(e.to_string()))?;
    qname.set_fqdn(true);
    let stream = UdpClientStream::builder(server, TokioRuntimeProvider::default()).with_timeout(Some(timeout)).build();
    let (mut client, background) = Client::<TokioRuntimeProvider>::from_sender(stream);
    let background = tokio::spawn(background);
    let mut found = Err(std::io::ErrorKind::NotFound.into());
    for qtype in [RecordType::A, RecordType::AAAA] {
        let reply = match client.query(qname.clone(), DNSClass::IN, qtype).await {
            Ok(r) => r,
            Err(e) => {
                found = Err(std::io::Error::other(e.to_string()));
                break;
            }
        };
        let first = reply.answers.iter().find_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        });
        if let Some(ip) = first {
            found = Ok(ip);
            break;
        }
    }
    background.abort();
    found
}

pub struct Resolver {
    pub port: u16,
    /// Look cluster names up with this DNS server (an authority) instead
    /// of the system resolver.
    pub dns: Option<SocketAddr>,
    pub timeout: Duration,
    pub attempts: u32,
    cache: HashMap<String, (IpAddr, InstanceInfo)>,
    file: Option<PathBuf>,
}

impl Resolver {
    pub fn new(port: u16) -> Self {
        Self { port, dns: None, timeout: Duration::from_millis(500), attempts: 3, cache: HashMap::new(), file: None }
    }

    /// Keeps the cache in `path` (read now, written on every change).
    pub fn with_cache_file(mut self, path: PathBuf) -> Self {
        if let Ok(text) = crate::files::read_regular(&path, crate::config::CONFIG_LIMIT, crate::files::Links::Follow) {
            for line in text.lines() {
                let mut f = line.splitn(3, '\t');
                let (Some(key), Some(ip), Some(reply)) = (f.next(), f.next(), f.next()) else { continue };
                let Ok(ip) = ip.parse() else { continue };
                let data = [&[codec::SVR_RESP][..], &(reply.len() as u16).to_le_bytes(), reply.as_bytes()].concat();
                if let Ok(mut infos) = codec::decode_response(&data)
                    && infos.len() == 1
                {
                    self.cache.insert(key.to_owned(), (ip, infos.remove(0)));
                }
            }
        }
        self.file = Some(path);
        self
    }

    fn save(&self) {
        let Some(path) = &self.file else { return };
        let text: String =
            self.cache.iter().map(|(k, (ip, info))| format!("{k}\t{ip}\t{}\n", info.to_text(codec::MAX_INSTANCE_RESPONSE))).collect();
        let tmp = path.with_extension("tmp");
        if std::fs::write(&tmp, text).is_ok() {
            let _ = std::fs::rename(&tmp, path);
        }
    }

    fn key(cluster: &str, instance: &str) -> String {
        format!("{}\\{}", cluster.to_ascii_lowercase(), instance.to_ascii_uppercase())
    }

    /// Forgets a cached instance.
    pub fn purge(&mut self, cluster: &str, instance: &str) {
        if self.cache.remove(&Self::key(cluster, instance)).is_some() {
            self.save();
        }
    }

    async fn cluster_addr(&self, cluster: &str) -> Result<SocketAddr, ResolveError> {
        if let (Some(server), Err(_)) = (self.dns, cluster.parse::<IpAddr>()) {
            let ip = dns_lookup(server, cluster, self.timeout).await.map_err(|e| ResolveError::Cluster(cluster.to_owned(), e))?;
            return Ok(SocketAddr::new(ip, self.port));
        }
        let mut addrs = tokio::net::lookup_host((cluster, self.port)).await.map_err(|e| ResolveError::Cluster(cluster.to_owned(), e))?;
        addrs.next().ok_or_else(|| ResolveError::Cluster(cluster.to_owned(), std::io::ErrorKind::NotFound.into()))
    }

    /// One SRP exchange: the request, retried on silence.
    async fn exchange(&self, to: SocketAddr, request: &Request) -> Result<Vec<u8>, ResolveError> {
        let local: SocketAddr = if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().expect("valid");
        let socket = UdpSocket::bind(local).await.map_err(|e| ResolveError::Io("udp".into(), e))?;
        // Connected: only replies from the address asked are taken.
        socket.connect(to).await.map_err(|e| ResolveError::Io(to.to_string(), e))?;
        let bytes = request.encode();
        let mut buf = vec![0u8; 65_536 + 3];
        for _ in 0..self.attempts.max(1) {
            socket.send(&bytes).await.map_err(|e| ResolveError::Io(to.to_string(), e))?;
            if let Ok(Ok(n)) = tokio::time::timeout(self.timeout, socket.recv(&mut buf)).await {
                return Ok(buf[..n].to_vec());
            }
        }
        Err(ResolveError::NoReply(to))
    }

    /// Resolves an instance: from the cache when it is there.
    pub async fn resolve(&mut self, cluster: &str, instance: &str) -> Result<Resolved, ResolveError> {
        if let Some((ip, info)) = self.cache.get(&Self::key(cluster, instance)) {
            return Ok(Resolved { cluster: *ip, info: info.clone(), cached: true });
        }
        let to = self.cluster_addr(cluster).await?;
        let reply = self.exchange(to, &Request::Instance(instance.to_owned())).await?;
        let mut infos = codec::decode_response(&reply).map_err(|e| ResolveError::BadReply(to, e))?;
        let Some(pos) = infos.iter().position(|i| i.instance_name.eq_ignore_ascii_case(instance)) else {
            return Err(ResolveError::BadReply(to, SrpError::Malformed(format!("reply is not about {instance}"))));
        };
        let info = infos.swap_remove(pos);
        self.cache.insert(Self::key(cluster, instance), (to.ip(), info.clone()));
        self.save();
        Ok(Resolved { cluster: to.ip(), info, cached: false })
    }

    /// Every instance of a cluster (CLNT_UCAST_EX); not cached.
    pub async fn enumerate(&self, cluster: &str) -> Result<Vec<InstanceInfo>, ResolveError> {
        let to = self.cluster_addr(cluster).await?;
        let reply = self.exchange(to, &Request::UnicastEx).await?;
        codec::decode_response(&reply).map_err(|e| ResolveError::BadReply(to, e))
    }

    /// Connects to an instance's TCP endpoint and checks that the server
    /// there answers to its name. A cached endpoint that fails either way
    /// is purged and resolved afresh, once.
    pub async fn connect(&mut self, cluster: &str, instance: &str) -> Result<(TcpStream, Resolved), ResolveError> {
        let first = self.resolve(cluster, instance).await?;
        match self.try_connect(&first, instance).await {
            Ok(s) => Ok((s, first)),
            Err(e) if !first.cached => Err(e),
            Err(error) => {
                tracing::info!(%error, "cached endpoint is stale; resolving again");
                self.purge(cluster, instance);
                let fresh = self.resolve(cluster, instance).await?;
                let s = self.try_connect(&fresh, instance).await?;
                Ok((s, fresh))
            }
        }
    }

    async fn try_connect(&self, r: &Resolved, instance: &str) -> Result<TcpStream, ResolveError> {
        let addr = r.tcp().ok_or_else(|| ResolveError::NoTcp(instance.to_owned()))?;
        let io = |e| ResolveError::Io(addr.to_string(), e);
        let mut s = tokio::time::timeout(self.timeout * 2, TcpStream::connect(addr))
            .await
            .map_err(|_| io(std::io::ErrorKind::TimedOut.into()))?
            .map_err(io)?;
        s.write_all(&tds::prelogin(instance)).await.map_err(io)?;
        let mut header = [0u8; tds::HEADER];
        let read = async {
            s.read_exact(&mut header).await?;
            let len = tds::packet_len(&header).max(tds::HEADER);
            let mut rest = vec![0u8; len - tds::HEADER];
            s.read_exact(&mut rest).await?;
            Ok::<_, std::io::Error>([&header[..], &rest].concat())
        };
        let response =
            tokio::time::timeout(self.timeout * 2, read).await.map_err(|_| io(std::io::ErrorKind::TimedOut.into()))?.map_err(io)?;
        match tds::instance_accepted(&response) {
            Some(true) => Ok(s),
            _ => Err(ResolveError::NotVerified { addr, instance: instance.to_owned() }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Message;
    use hickory_proto::rr::{RData, Record, rdata::A};

    /// A DNS server on loopback that first answers each query with a
    /// reply to another id (what an off-path spoofer would send), then
    /// with the real one; it keeps each query's source port and id.
    async fn server(answer: std::net::Ipv4Addr) -> (SocketAddr, tokio::sync::mpsc::Receiver<(u16, u16)>) {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            let mut buf = [0u8; 512];
            while let Ok((n, from)) = socket.recv_from(&mut buf).await {
                let query = Message::from_vec(&buf[..n]).unwrap();
                let _ = tx.send((from.port(), query.metadata.id)).await;
                let mut reply = query.clone().into_response();
                let name = query.queries[0].name().clone();
                reply.add_answer(Record::from_rdata(name, 5, RData::A(A(std::net::Ipv4Addr::new(192, 0, 2, 66)))));
                reply.metadata.id = query.metadata.id.wrapping_add(1);
                socket.send_to(&reply.to_vec().unwrap(), from).await.unwrap();
                let mut real = query.clone().into_response();
                real.add_answer(Record::from_rdata(query.queries[0].name().clone(), 5, RData::A(A(answer))));
                socket.send_to(&real.to_vec().unwrap(), from).await.unwrap();
            }
        });
        (addr, rx)
    }

    #[tokio::test]
    async fn cluster_names_are_asked_with_random_ids_and_ports_and_spoofed_replies_are_ignored() {
        let want = std::net::Ipv4Addr::new(127, 0, 0, 9);
        let (addr, mut seen) = server(want).await;
        let mut asked = Vec::new();
        for _ in 0..4 {
            let ip = dns_lookup(addr, "sql.example.test", Duration::from_secs(2)).await.unwrap();
            assert_eq!(ip, IpAddr::V4(want), "the reply to another id is not taken");
            asked.push(seen.recv().await.unwrap());
        }
        let ids: std::collections::BTreeSet<u16> = asked.iter().map(|(_, id)| *id).collect();
        let ports: std::collections::BTreeSet<u16> = asked.iter().map(|(p, _)| *p).collect();
        assert!(ids.len() >= 3, "ids are not predictable: {asked:?}");
        assert!(ports.len() >= 3, "nor are source ports: {asked:?}");
    }
}
