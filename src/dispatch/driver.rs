//! `vnamed dispatch`: the sockets around the pure engine. Frames are
//! captured on the interface with AF_PACKET (pnet); L4/2 frames go back out
//! on the link, L4/3 packets out through a raw IP socket. The dispatcher
//! answers ARP for its virtual IPs itself (they are not configured on the
//! host, so the kernel never answers for them) and announces them with
//! gratuitous ARP when it takes them over. Each virtual IP follows its
//! pool over the authority's `Admin.Watch` stream; servers' MACs are learnt
//! with ARP. With a `[ring]` section the host is a ring member and holds
//! the virtual IPs only while it is the elected dispatcher.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::engine::{Dropped, Engine, Mode, Server, Verdict, Vip};
use super::frame::{self, Mac};
use super::splice::{Route, Segment, Splicer};
use crate::config::{Config, DispatchConfig, DispatchMode};
use crate::grpc::Bearer;
use crate::grpc::v1::PoolRequest;
use crate::grpc::v1::admin_client::AdminClient;
use crate::metrics::{Expose, Registry, Writer};

/// What the async side shares with the capture thread.
struct Shared {
    engine: Mutex<Engine>,
    /// Server MACs learnt from ARP.
    macs: Mutex<HashMap<Ipv4Addr, Mac>>,
    /// Per L4 virtual IP: the pool's servers in order, and whether to rotate.
    wanted: Mutex<Vec<(Vec<Ipv4Addr>, bool)>>,
    /// The L7 virtual IPs.
    splicers: Mutex<Vec<Splicer>>,
    active: AtomicBool,
    stop: AtomicBool,
    sent: AtomicU64,
    send_errors: AtomicU64,
}

impl Shared {
    /// Gives the engine each virtual IP's servers with the MACs known.
    fn apply(&self) {
        let macs = self.macs.lock().expect("not poisoned").clone();
        let wanted = self.wanted.lock().expect("not poisoned").clone();
        let mut engine = self.engine.lock().expect("not poisoned");
        for (v, (ips, rotate)) in wanted.into_iter().enumerate() {
            let servers = ips.into_iter().map(|ip| Server { ip, mac: macs.get(&ip).copied() }).collect();
            engine.set_servers(v, servers, rotate);
        }
    }
}

impl Expose for Shared {
    fn expose(&self, w: &mut Writer<'_, '_>) -> std::fmt::Result {
        let (switched, connections, dropped) = {
            let engine = self.engine.lock().unwrap_or_else(|e| e.into_inner());
            let dropped: Vec<_> = Dropped::ALL.iter().map(|why| (vec![("reason", why.label().into())], engine.dropped(*why))).collect();
            (engine.switched, engine.conns().len(), dropped)
        };
        let (l7_connections, l7_refused) = {
            let splicers = self.splicers.lock().unwrap_or_else(|e| e.into_inner());
            (splicers.iter().map(Splicer::len).sum::<usize>(), splicers.iter().map(|s| s.refused).sum::<u64>())
        };
        w.gauge("vnamed_dispatch_active", "1 while this host holds the virtual IPs.", i64::from(self.active.load(Ordering::Relaxed)))?;
        w.counter("vnamed_dispatch_switched", "Packets switched to a server.", switched)?;
        w.gauge("vnamed_dispatch_connections", "Connections in the connection map.", connections as i64)?;
        w.counters("vnamed_dispatch_dropped", "Frames to a virtual IP dropped, by reason.", dropped)?;
        w.gauge("vnamed_dispatch_l7_connections", "L7 connections being relayed.", l7_connections as i64)?;
        w.counter("vnamed_dispatch_l7_refused", "L7 requests reset (not HTTP, no server).", l7_refused)?;
        w.counter("vnamed_dispatch_send_errors", "Frames the kernel refused to send.", self.send_errors.load(Ordering::Relaxed))
    }
}

type Tx = Arc<Mutex<Box<dyn pnet_datalink::DataLinkSender>>>;

fn send_frame(tx: &Tx, shared: &Shared, f: &[u8]) {
    match tx.lock().expect("not poisoned").send_to(f, None) {
        Some(Ok(())) => {
            shared.sent.fetch_add(1, Ordering::Relaxed);
        }
        _ => {
            shared.send_errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// `vnamed dispatch --config FILE`.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let dc: DispatchConfig = config.dispatch.clone().context("[dispatch] section is required for this role")?;
    let iface = pnet_datalink::interfaces()
        .into_iter()
        .find(|i| i.name == dc.interface)
        .with_context(|| format!("dispatch.interface: no interface {:?}", dc.interface))?;
    let mac: Mac = iface.mac.with_context(|| format!("interface {} has no MAC address", iface.name))?.octets();
    let my_ip = iface
        .ips
        .iter()
        .find_map(|n| match n.ip() {
            IpAddr::V4(a) => Some(a),
            _ => None,
        })
        .with_context(|| format!("interface {} has no IPv4 address", iface.name))?;
    let vips: Vec<Vip> = dc
        .vip
        .iter()
        .filter(|v| v.mode != DispatchMode::L7)
        .map(|v| Vip { ip: v.address, ports: v.ports.clone(), mode: if v.mode == DispatchMode::L42 { Mode::L42 } else { Mode::L43 } })
        .collect();
    let seed = crate::clock::unix_ms() as u32 ^ std::process::id();
    let splicers: Vec<Splicer> = dc
        .vip
        .iter()
        .filter(|v| v.mode == DispatchMode::L7)
        .map(|v| {
            let routes = v.route.iter().enumerate().map(|(i, r)| Route { prefix: r.prefix.clone(), class: i + 1 }).collect();
            let local = dc.gateway.expect("validated: l7 has a gateway");
            Splicer::new(v.address, v.ports[0], local, routes, v.route.len() + 1, dc.idle_timeout, seed)
        })
        .collect();
    let l7_ips: Vec<Ipv4Addr> = dc.vip.iter().filter(|v| v.mode == DispatchMode::L7).map(|v| v.address).collect();
    let pnet_config = pnet_datalink::Config { read_timeout: Some(Duration::from_millis(100)), ..Default::default() };
    let (tx, mut rx) = match pnet_datalink::channel(&iface, pnet_config).with_context(|| format!("capture on {}", iface.name))? {
        pnet_datalink::Channel::Ethernet(tx, rx) => (tx, rx),
        _ => anyhow::bail!("capture on {}: not an Ethernet channel", iface.name),
    };
    let tx: Tx = Arc::new(Mutex::new(tx));
    let raw = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::RAW, Some(socket2::Protocol::from(libc::IPPROTO_RAW)))
        .context("raw IP socket (needs CAP_NET_RAW)")?;
    let mut engine = Engine::new(vips.clone(), mac, dc.idle_timeout, dc.fin_timeout, Instant::now());
    for ip in dc.gateway.iter().chain(&l7_ips) {
        engine.answer_arp_for(*ip);
    }
    let shared = Arc::new(Shared {
        engine: Mutex::new(engine),
        macs: Mutex::new(HashMap::new()),
        wanted: Mutex::new(vec![(Vec::new(), false); vips.len()]),
        splicers: Mutex::new(splicers),
        active: AtomicBool::new(config.ring.is_none()),
        stop: AtomicBool::new(false),
        sent: AtomicU64::new(0),
        send_errors: AtomicU64::new(0),
    });

    // The ring decides who holds the virtual IPs.
    let ring_counters = Arc::new(crate::ring::driver::RingCounters::default());
    let ring = config.ring.clone().map(|mut rc| {
        rc.dispatch_capable = true;
        tokio::spawn(crate::grpc::ring::run_member(
            rc,
            vec![dc.authority.clone()],
            dc.token.clone(),
            ring_counters.clone(),
            shutdown.clone(),
        ))
    });

    // The capture thread: every frame to us, through the engine.
    let capture = {
        let (shared, tx, l7_ips) = (shared.clone(), tx.clone(), l7_ips.clone());
        std::thread::Builder::new().name("dispatch-capture".into()).spawn(move || {
            let mut buf: Vec<u8> = Vec::with_capacity(65_536);
            while !shared.stop.load(Ordering::Relaxed) {
                let f = match rx.next() {
                    Ok(f) => f,
                    Err(e) if e.kind() == std::io::ErrorKind::TimedOut => continue,
                    Err(e) => {
                        warn!(error = %e, "capture failed");
                        std::thread::sleep(Duration::from_millis(100));
                        continue;
                    }
                };
                if f.len() < frame::ETH_HEADER || frame::src_mac(f) == mac {
                    continue; // our own frames, seen on their way out
                }
                if let Some((m, ip)) = frame::arp_sender(f) {
                    let mut macs = shared.macs.lock().expect("not poisoned");
                    if macs.get(&ip) != Some(&m) {
                        macs.insert(ip, m);
                        drop(macs);
                        shared.apply();
                    }
                }
                let to = frame::dst_mac(f);
                if !shared.active.load(Ordering::Relaxed) || (to != mac && to != [0xFF; 6]) {
                    continue;
                }
                // One buffer for every frame: rewritten in place, no allocation.
                buf.clear();
                buf.extend_from_slice(f);
                let f = &mut buf;
                let now = Instant::now();
                // L7 virtual IPs, and servers answering their relayed connections.
                let spliced = if l7_ips.is_empty() {
                    None
                } else {
                    let mut splicers = shared.splicers.lock().expect("not poisoned");
                    Segment::parse(&f[frame::ETH_HEADER..])
                        .and_then(|seg| splicers.iter_mut().find(|s| s.is_ours(&seg)).map(|s| s.handle(seg, now)))
                };
                if let Some(packets) = spliced {
                    for (p, to) in packets {
                        let dest: SocketAddr = (to, 0).into();
                        if raw.send_to(&p, &dest.into()).is_err() {
                            shared.send_errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    continue;
                }
                let verdict = {
                    let mut e = shared.engine.lock().expect("not poisoned");
                    match e.inbound(f, now) {
                        Verdict::Pass => e.outbound(f, now),
                        v => v,
                    }
                };
                match verdict {
                    Verdict::Switch => send_frame(&tx, &shared, f),
                    Verdict::Route { to } => {
                        let dest: SocketAddr = (to, 0).into();
                        if raw.send_to(&f[frame::ETH_HEADER..], &dest.into()).is_err() {
                            shared.send_errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Verdict::Reply(r) => send_frame(&tx, &shared, &r),
                    Verdict::Drop(why) => debug!(reason = why.label(), "frame dropped"),
                    Verdict::Pass => {}
                }
            }
        })?
    };

    let mut tasks = tokio::task::JoinSet::new();
    let (mut l4, mut l7) = (0, 0);
    for vc in &dc.vip {
        if vc.mode == DispatchMode::L7 {
            let pools = std::iter::once(&vc.pool).chain(vc.route.iter().map(|r| &r.pool));
            for (class, pool) in pools.enumerate() {
                tasks.spawn(follow_pool(
                    Target::Splice(l7, class),
                    pool.clone(),
                    dc.authority.clone(),
                    dc.token.clone(),
                    shared.clone(),
                    shutdown.clone(),
                ));
            }
            l7 += 1;
        } else {
            tasks.spawn(follow_pool(
                Target::Engine(l4),
                vc.pool.clone(),
                dc.authority.clone(),
                dc.token.clone(),
                shared.clone(),
                shutdown.clone(),
            ));
            l4 += 1;
        }
    }
    // ARP for servers whose MAC is not known yet; expire idle connections;
    // announce the virtual IPs when taking them over.
    {
        let (shared, tx, vips, shutdown) = (shared.clone(), tx.clone(), vips.clone(), shutdown.clone());
        let ring_counters = ring_counters.clone();
        let (gateway, monitor_port) = (dc.gateway, dc.monitor_port);
        let l7_all = l7_ips.clone();
        let ringed = config.ring.is_some();
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            let mut n = 0u64;
            let mut announced = 0;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = shutdown.cancelled() => return,
                }
                n += 1;
                if ringed {
                    let elected = ring_counters.dispatcher.load(Ordering::Relaxed) == 1;
                    if elected != shared.active.swap(elected, Ordering::Relaxed) {
                        info!(elected, "dispatcher role changed");
                        announced = 0;
                    }
                }
                let active = shared.active.load(Ordering::Relaxed);
                if active && announced < 3 {
                    announced += 1;
                    for ip in vips.iter().map(|v| v.ip).chain(gateway).chain(l7_all.iter().copied()) {
                        send_frame(&tx, &shared, &frame::gratuitous_arp(mac, ip));
                    }
                    if announced == 1 {
                        info!(vips = ?vips.iter().map(|v| v.ip).collect::<Vec<_>>(), ?gateway, "holding the virtual IPs");
                        if let Some(port) = monitor_port {
                            tokio::spawn(reconstruct(shared.clone(), vips.clone(), port));
                        }
                    }
                }
                if n.is_multiple_of(5) {
                    let known = shared.macs.lock().expect("not poisoned").clone();
                    let wanted = shared.wanted.lock().expect("not poisoned").clone();
                    for ip in wanted.iter().flat_map(|(ips, _)| ips) {
                        if !known.contains_key(ip) {
                            send_frame(&tx, &shared, &frame::arp_who_has(mac, my_ip, *ip));
                        }
                    }
                }
                if n.is_multiple_of(10) {
                    shared.engine.lock().expect("not poisoned").expire(Instant::now());
                    for s in shared.splicers.lock().expect("not poisoned").iter_mut() {
                        s.expire(Instant::now());
                    }
                }
            }
        });
    }
    if let Some(addr) = dc.metrics_listen {
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("dispatch.metrics_listen {addr}"))?;
        let mut registry = Registry::default();
        crate::metrics::register(&mut registry, shared.clone());
        crate::metrics::register(&mut registry, ring_counters.clone());
        tasks.spawn(crate::metrics::serve(listener, Arc::new(registry), shutdown.clone()));
    }
    info!(interface = %iface.name, %my_ip, vips = vips.len(), "dispatcher running");
    shutdown.cancelled().await;
    shared.stop.store(true, Ordering::Relaxed);
    while tasks.join_next().await.is_some() {}
    let _ = tokio::task::spawn_blocking(move || capture.join()).await;
    if let Some(ring) = ring {
        let _ = ring.await;
    }
    info!("dispatcher stopped");
    Ok(())
}

/// State reconstruction after taking over: every server's monitor says
/// which connections it has on each virtual IP (L4/2: to the virtual IP
/// itself; L4/3: to the server's own address), and they go back into the
/// connection map with that server, so established connections continue.
async fn reconstruct(shared: Arc<Shared>, vips: Vec<Vip>, monitor_port: u16) {
    use crate::grpc::v1::ConnectionsRequest;
    use crate::grpc::v1::host_client::HostClient;
    let started = Instant::now();
    let wanted = shared.wanted.lock().expect("not poisoned").clone();
    let mut restored = 0;
    for (v, vip) in vips.iter().enumerate() {
        let Some((servers, _)) = wanted.get(v) else { continue };
        for server in servers {
            let url = format!("http://{server}:{monitor_port}");
            let ask = async {
                let endpoint = tonic::transport::Endpoint::from_shared(url.clone())?.connect_timeout(Duration::from_millis(500));
                let mut client = HostClient::new(endpoint.connect().await?);
                let local = if vip.mode == Mode::L42 { vip.ip } else { *server };
                let mut found = Vec::new();
                for port in if vip.ports.is_empty() { vec![0] } else { vip.ports.clone() } {
                    let reply =
                        client.connections(ConnectionsRequest { local: local.to_string(), port: u32::from(port) }).await?.into_inner();
                    found.extend(
                        reply
                            .connections
                            .into_iter()
                            .filter_map(|c| Some(((c.client.parse::<Ipv4Addr>().ok()?, u16::try_from(c.client_port).ok()?), *server))),
                    );
                }
                Ok::<_, anyhow::Error>(found)
            };
            match tokio::time::timeout(Duration::from_secs(2), ask).await {
                Ok(Ok(found)) => {
                    let n = shared.engine.lock().expect("not poisoned").restore(vip.ip, found.iter().copied(), Instant::now());
                    debug!(vip = %vip.ip, %server, reported = found.len(), restored = n, "connections from a server");
                    restored += n;
                }
                Ok(Err(error)) => warn!(%server, %error, "could not ask a server for its connections"),
                Err(_) => warn!(%server, "a server's monitor did not say its connections in time"),
            }
        }
    }
    info!(restored, took = ?started.elapsed(), "connection map rebuilt from the servers");
}

/// Whose servers a watched pool gives.
#[derive(Debug, Clone, Copy)]
enum Target {
    /// An L4 virtual IP of the engine.
    Engine(usize),
    /// A server class of an L7 virtual IP.
    Splice(usize, usize),
}

/// Follows a pool's live servers over `Admin.Watch`, reconnecting while
/// the authority is away.
async fn follow_pool(
    target: Target,
    pool: String,
    authority: String,
    token: Option<String>,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    let Ok(bearer) = Bearer::new(token.as_deref()) else { return };
    loop {
        let attempt = async {
            let endpoint = tonic::transport::Endpoint::from_shared(authority.clone())?.connect_timeout(Duration::from_secs(1));
            let channel = endpoint.connect().await?;
            let mut client = AdminClient::with_interceptor(channel, bearer.clone());
            let mut stream = client.watch(PoolRequest { pool: pool.clone() }).await?.into_inner();
            while let Some(reply) = stream.message().await? {
                let ips: Vec<Ipv4Addr> = reply.servers.iter().filter_map(|s| s.parse().ok()).collect();
                info!(%pool, servers = ?ips, "servers");
                match target {
                    Target::Engine(v) => {
                        shared.wanted.lock().expect("not poisoned")[v] = (ips, reply.policy == "round-robin");
                        shared.apply();
                    }
                    Target::Splice(v, class) => {
                        shared.splicers.lock().expect("not poisoned")[v].set_servers(class, ips, reply.policy == "round-robin")
                    }
                }
            }
            Ok::<(), anyhow::Error>(())
        };
        tokio::select! {
            r = attempt => if let Err(error) = r { warn!(%pool, %error, "watching the pool failed; retrying") },
            _ = shutdown.cancelled() => return,
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}
