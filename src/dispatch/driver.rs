//! `vnamed dispatch`: the sockets around the pure engine. Frames are
//! captured on the interface with AF_PACKET (pnet); L4/2 frames go back out
//! on the link, L4/3 packets out through a raw IP socket. The dispatcher
//! answers ARP for its virtual IPs itself (they are not configured on the
//! host, so the kernel never answers for them) and announces them with
//! gratuitous ARP when it takes them over. Each virtual IP follows its
//! pool over the authority's `Admin.Watch` stream; servers' MACs are learnt
//! with ARP. With a `[ring]` section the host is a ring member and holds
//! the virtual IPs only while the ring elects it.
//!
//! One owner: the capture thread alone holds the engine, the splicers and
//! the servers' MACs, and does the periodic work (announcing, asking for
//! MACs, expiring connections a shard at a time) between frames. The
//! control side (pool watchers, the ring's election, state reconstruction)
//! talks to it over a bounded channel; what it counts it publishes for
//! `/metrics` in atomics.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::{mpsc, oneshot, watch};
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

/// Control messages queued for the capture thread, at most; senders wait
/// for room rather than drop a change.
const CONTROL_QUEUE: usize = 256;
/// How often the capture thread does its periodic work.
const TICK: Duration = Duration::from_millis(100);

/// Whose servers a watched pool gives.
#[derive(Debug, Clone, Copy)]
enum Target {
    /// An L4 virtual IP of the engine.
    Engine(usize),
    /// A server class of an L7 virtual IP.
    Splice(usize, usize),
}

/// What the control side tells the capture thread.
#[derive(Debug)]
enum Control {
    /// A pool's live servers in order, and whether to rotate.
    Servers(Target, Vec<Ipv4Addr>, bool),
    /// Whether this host holds the virtual IPs.
    Active(bool),
    /// Connections the servers say they have, after a take-over; how many
    /// went back into the map is answered on `done`.
    Restore { vip: Ipv4Addr, entries: Vec<((Ipv4Addr, u16), Ipv4Addr)>, done: oneshot::Sender<usize> },
}

/// What the capture thread publishes, for `/metrics`.
#[derive(Debug, Default)]
struct Stats {
    active: AtomicBool,
    switched: AtomicU64,
    connections: AtomicU64,
    dropped: [AtomicU64; Dropped::ALL.len()],
    l7_connections: AtomicU64,
    l7_refused: AtomicU64,
    send_errors: AtomicU64,
}

impl Expose for Stats {
    fn expose(&self, w: &mut Writer<'_, '_>) -> std::fmt::Result {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let dropped = Dropped::ALL.iter().zip(&self.dropped).map(|(why, n)| (vec![("reason", why.label().into())], get(n))).collect();
        w.gauge("vnamed_dispatch_active", "1 while this host holds the virtual IPs.", i64::from(self.active.load(Ordering::Relaxed)))?;
        w.counter("vnamed_dispatch_switched", "Packets switched to a server.", get(&self.switched))?;
        w.gauge("vnamed_dispatch_connections", "Connections in the connection map.", get(&self.connections) as i64)?;
        w.counters("vnamed_dispatch_dropped", "Frames to a virtual IP dropped, by reason.", dropped)?;
        w.gauge("vnamed_dispatch_l7_connections", "L7 connections being relayed.", get(&self.l7_connections) as i64)?;
        w.counter("vnamed_dispatch_l7_refused", "L7 requests reset (not HTTP, no server).", get(&self.l7_refused))?;
        w.counter("vnamed_dispatch_send_errors", "Frames the kernel refused to send.", get(&self.send_errors))
    }
}

/// The capture thread's state: the only owner of the engine, the
/// splicers, the servers' MACs and the sending sockets.
struct Capture {
    engine: Engine,
    splicers: Vec<Splicer>,
    macs: HashMap<Ipv4Addr, Mac>,
    /// Per L4 virtual IP: the pool's servers in order, and whether to rotate.
    wanted: Vec<(Vec<Ipv4Addr>, bool)>,
    active: bool,
    /// Gratuitous ARP rounds sent since taking the virtual IPs (or since
    /// the last periodic announcement), and whether taking them was logged.
    announced: u32,
    holding: bool,
    tx: Box<dyn pnet_datalink::DataLinkSender>,
    raw: socket2::Socket,
    mac: Mac,
    my_ip: Ipv4Addr,
    /// Addresses to answer and announce: the virtual IPs, the gateway, the L7 ones.
    held: Vec<Ipv4Addr>,
    l7: bool,
    stats: Arc<Stats>,
    ticks: u64,
}

impl Capture {
    fn control(&mut self, c: Control, now: Instant) {
        match c {
            Control::Servers(Target::Engine(v), ips, rotate) => {
                if let Some(w) = self.wanted.get_mut(v) {
                    *w = (ips, rotate);
                    self.apply();
                }
            }
            Control::Servers(Target::Splice(v, class), ips, rotate) => {
                if let Some(s) = self.splicers.get_mut(v) {
                    s.set_servers(class, ips, rotate);
                }
            }
            Control::Active(active) => {
                if active != self.active {
                    info!(active, "dispatcher role changed");
                    self.active = active;
                    self.announced = 0;
                    self.holding = false;
                    self.stats.active.store(active, Ordering::Relaxed);
                }
            }
            Control::Restore { vip, entries, done } => {
                let _ = done.send(self.engine.restore(vip, entries, now));
            }
        }
    }

    /// Gives the engine each virtual IP's servers with the MACs known.
    fn apply(&mut self) {
        for (v, (ips, rotate)) in self.wanted.iter().enumerate() {
            let servers = ips.iter().map(|ip| Server { ip: *ip, mac: self.macs.get(ip).copied() }).collect();
            self.engine.set_servers(v, servers, *rotate);
        }
    }

    fn send_frame(&mut self, f: &[u8]) {
        if !matches!(self.tx.send_to(f, None), Some(Ok(()))) {
            self.stats.send_errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn send_ip(&mut self, packet: &[u8], to: Ipv4Addr) {
        let dest: SocketAddr = (to, 0).into();
        if self.raw.send_to(packet, &dest.into()).is_err() {
            self.stats.send_errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// One captured frame; `buf` is the one buffer frames are rewritten in.
    fn frame(&mut self, f: &[u8], buf: &mut Vec<u8>, now: Instant) {
        if f.len() < frame::ETH_HEADER || frame::src_mac(f) == self.mac {
            return; // our own frames, seen on their way out
        }
        if let Some((m, ip)) = frame::arp_sender(f)
            && self.macs.get(&ip) != Some(&m)
        {
            self.macs.insert(ip, m);
            self.apply();
        }
        let to = frame::dst_mac(f);
        if !self.active || (to != self.mac && to != [0xFF; 6]) {
            return;
        }
        buf.clear();
        buf.extend_from_slice(f);
        // L7 virtual IPs, and servers answering their relayed connections.
        if self.l7 {
            let spliced = Segment::parse(&buf[frame::ETH_HEADER..])
                .and_then(|seg| self.splicers.iter_mut().find(|s| s.is_ours(&seg)).map(|s| s.handle(seg, now)));
            if let Some(packets) = spliced {
                for (p, to) in packets {
                    self.send_ip(&p, to);
                }
                return;
            }
        }
        let verdict = match self.engine.inbound(buf, now) {
            Verdict::Pass => self.engine.outbound(buf, now),
            v => v,
        };
        match verdict {
            Verdict::Switch => self.send_frame(buf),
            Verdict::Route { to } => self.send_ip(&buf[frame::ETH_HEADER..], to),
            Verdict::Reply(r) => self.send_frame(&r),
            Verdict::Drop(why) => debug!(reason = why.label(), "frame dropped"),
            Verdict::Pass => {}
        }
    }

    /// The periodic work, every `TICK`: announce the virtual IPs after
    /// taking them, ask for servers' MACs, expire a shard of connections,
    /// publish the counters.
    fn tick(&mut self, now: Instant) {
        self.ticks += 1;
        // Announced three times on taking over, then every two seconds, so
        // that a neighbour holding a stale entry learns where they are.
        if self.active && self.ticks.is_multiple_of(20) {
            self.announced = self.announced.min(2);
        }
        if self.active && self.announced < 3 {
            self.announced += 1;
            for ip in self.held.clone() {
                self.send_frame(&frame::gratuitous_arp(self.mac, ip));
            }
            if self.announced == 1 && !self.holding {
                self.holding = true;
                info!(held = ?self.held, "holding the virtual IPs");
            }
        }
        if self.ticks.is_multiple_of(5) {
            let unknown: Vec<Ipv4Addr> =
                self.wanted.iter().flat_map(|(ips, _)| ips).filter(|ip| !self.macs.contains_key(ip)).copied().collect();
            for ip in unknown {
                self.send_frame(&frame::arp_who_has(self.mac, self.my_ip, ip));
            }
        }
        // One shard per tick: a whole pass in well under a couple of seconds.
        self.engine.expire_step(now);
        if self.ticks.is_multiple_of(10) {
            for s in &mut self.splicers {
                s.expire(now);
            }
        }
        let s = &self.stats;
        s.switched.store(self.engine.switched, Ordering::Relaxed);
        s.connections.store(self.engine.conns().len() as u64, Ordering::Relaxed);
        for (why, n) in Dropped::ALL.iter().zip(&s.dropped) {
            n.store(self.engine.dropped(*why), Ordering::Relaxed);
        }
        s.l7_connections.store(self.splicers.iter().map(Splicer::len).sum::<usize>() as u64, Ordering::Relaxed);
        s.l7_refused.store(self.splicers.iter().map(|s| s.refused).sum(), Ordering::Relaxed);
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
    let l7_vips: Vec<_> = dc.vip.iter().filter(|v| v.mode == DispatchMode::L7).collect();
    let gateway = dc.gateway;
    let local = match (gateway, l7_vips.is_empty()) {
        (Some(g), _) => g,
        (None, true) => Ipv4Addr::UNSPECIFIED,
        (None, false) => anyhow::bail!("dispatch: l7 virtual IPs need dispatch.gateway"),
    };
    let splicers: Vec<Splicer> = l7_vips
        .iter()
        .map(|v| {
            let routes = v.route.iter().enumerate().map(|(i, r)| Route { prefix: r.prefix.clone(), class: i + 1 }).collect();
            Splicer::new(v.address, v.ports[0], local, routes, v.route.len() + 1, dc.idle_timeout, seed)
        })
        .collect();
    let l7_ips: Vec<Ipv4Addr> = l7_vips.iter().map(|v| v.address).collect();
    let pnet_config = pnet_datalink::Config { read_timeout: Some(TICK), ..Default::default() };
    let (tx, mut rx) = match pnet_datalink::channel(&iface, pnet_config).with_context(|| format!("capture on {}", iface.name))? {
        pnet_datalink::Channel::Ethernet(tx, rx) => (tx, rx),
        _ => anyhow::bail!("capture on {}: not an Ethernet channel", iface.name),
    };
    let raw = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::RAW, Some(socket2::Protocol::from(libc::IPPROTO_RAW)))
        .context("raw IP socket (needs CAP_NET_RAW)")?;
    let mut engine = Engine::new(vips.clone(), mac, dc.idle_timeout, dc.fin_timeout, Instant::now());
    for ip in gateway.iter().chain(&l7_ips) {
        engine.answer_arp_for(*ip);
    }
    let stats = Arc::new(Stats::default());
    let active = config.ring.is_none();
    stats.active.store(active, Ordering::Relaxed);
    let (control, mut inbox) = mpsc::channel::<Control>(CONTROL_QUEUE);
    let stop = Arc::new(AtomicBool::new(false));

    // The capture thread: every frame to us, through the engine it owns.
    let capture = {
        let mut c = Capture {
            engine,
            l7: !splicers.is_empty(),
            splicers,
            macs: HashMap::new(),
            wanted: vec![(Vec::new(), false); vips.len()],
            active,
            announced: 0,
            holding: false,
            tx,
            raw,
            mac,
            my_ip,
            held: vips.iter().map(|v| v.ip).chain(gateway).chain(l7_ips.iter().copied()).collect(),
            stats: stats.clone(),
            ticks: 0,
        };
        let stop = stop.clone();
        std::thread::Builder::new().name("dispatch-capture".into()).spawn(move || {
            let mut buf: Vec<u8> = Vec::with_capacity(65_536);
            let mut next_tick = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                match rx.next() {
                    Ok(f) => c.frame(f, &mut buf, Instant::now()),
                    Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                    Err(e) => {
                        warn!(error = %e, "capture failed");
                        std::thread::sleep(TICK);
                    }
                }
                let now = Instant::now();
                while let Ok(msg) = inbox.try_recv() {
                    c.control(msg, now);
                }
                if now >= next_tick {
                    c.tick(now);
                    next_tick = now + TICK;
                }
            }
        })?
    };

    // The ring decides who holds the virtual IPs.
    let ring_counters = Arc::new(crate::ring::driver::RingCounters::default());
    let (elected_tx, mut elected) = watch::channel(false);
    let ring = config.ring.clone().map(|mut rc| {
        rc.dispatch_capable = true;
        tokio::spawn(crate::grpc::ring::run_member(
            rc,
            vec![dc.authority.clone()],
            dc.token.clone(),
            ring_counters.clone(),
            elected_tx,
            shutdown.clone(),
        ))
    });

    let mut tasks = tokio::task::JoinSet::new();
    // What each L4 virtual IP's pool gives now, for state reconstruction.
    let servers: Arc<Mutex<Vec<Vec<Ipv4Addr>>>> = Arc::new(Mutex::new(vec![Vec::new(); vips.len()]));
    let (mut l4, mut l7) = (0, 0);
    for vc in &dc.vip {
        let pools: Vec<(Target, &String)> = if vc.mode == DispatchMode::L7 {
            let classes = std::iter::once(&vc.pool).chain(vc.route.iter().map(|r| &r.pool));
            let t = classes.enumerate().map(|(class, pool)| (Target::Splice(l7, class), pool)).collect();
            l7 += 1;
            t
        } else {
            l4 += 1;
            vec![(Target::Engine(l4 - 1), &vc.pool)]
        };
        for (target, pool) in pools {
            let follow = Follow { target, pool: pool.clone(), control: control.clone(), servers: servers.clone() };
            tasks.spawn(follow.run(dc.authority.clone(), dc.token.clone(), shutdown.clone()));
        }
    }
    if let Some(rc) = &config.ring {
        let (control, servers, vips, shutdown) = (control.clone(), servers.clone(), vips.clone(), shutdown.clone());
        let monitor_port = dc.monitor_port;
        // A ring that is still forming can elect a host for a moment: the
        // addresses are taken only once an election has held this long,
        // and given up at once.
        let settle = (rc.ping_interval * 2).clamp(Duration::from_millis(100), Duration::from_secs(1));
        tasks.spawn(async move {
            let mut active = false;
            loop {
                tokio::select! {
                    r = elected.changed() => if r.is_err() { return },
                    _ = shutdown.cancelled() => return,
                }
                if *elected.borrow_and_update() && !active {
                    tokio::select! {
                        _ = tokio::time::sleep(settle) => {}
                        _ = shutdown.cancelled() => return,
                    }
                    if elected.has_changed().unwrap_or(true) {
                        continue; // it moved meanwhile: judge the newest
                    }
                }
                let now_elected = *elected.borrow();
                if now_elected == active {
                    continue;
                }
                active = now_elected;
                if control.send(Control::Active(active)).await.is_err() {
                    return; // the capture thread is gone
                }
                if active && let Some(port) = monitor_port {
                    tokio::spawn(reconstruct(control.clone(), servers.clone(), vips.clone(), port));
                }
            }
        });
    }
    if let Some(addr) = dc.metrics_listen {
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("dispatch.metrics_listen {addr}"))?;
        let mut registry = Registry::default();
        crate::metrics::register(&mut registry, stats.clone());
        crate::metrics::register(&mut registry, ring_counters.clone());
        tasks.spawn(crate::metrics::serve(listener, Arc::new(registry), shutdown.clone()));
    }
    info!(interface = %iface.name, %my_ip, vips = vips.len(), "dispatcher running");
    shutdown.cancelled().await;
    stop.store(true, Ordering::Relaxed);
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
async fn reconstruct(control: mpsc::Sender<Control>, servers: Arc<Mutex<Vec<Vec<Ipv4Addr>>>>, vips: Vec<Vip>, monitor_port: u16) {
    use crate::grpc::v1::ConnectionsRequest;
    use crate::grpc::v1::host_client::HostClient;
    let started = Instant::now();
    let wanted = servers.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let mut restored = 0;
    for (v, vip) in vips.iter().enumerate() {
        let Some(list) = wanted.get(v) else { continue };
        for server in list {
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
                    let reported = found.len();
                    let (done, n) = oneshot::channel();
                    if control.send(Control::Restore { vip: vip.ip, entries: found, done }).await.is_err() {
                        return; // the capture thread is gone
                    }
                    let n = n.await.unwrap_or(0);
                    debug!(vip = %vip.ip, %server, reported, restored = n, "connections from a server");
                    restored += n;
                }
                Ok(Err(error)) => warn!(%server, %error, "could not ask a server for its connections"),
                Err(_) => warn!(%server, "a server's monitor did not say its connections in time"),
            }
        }
    }
    info!(restored, took = ?started.elapsed(), "connection map rebuilt from the servers");
}

/// One pool followed for one target.
struct Follow {
    target: Target,
    pool: String,
    control: mpsc::Sender<Control>,
    servers: Arc<Mutex<Vec<Vec<Ipv4Addr>>>>,
}

impl Follow {
    /// Follows the pool's live servers over `Admin.Watch`, reconnecting
    /// while the authority is away.
    async fn run(self, authority: String, token: Option<String>, shutdown: CancellationToken) {
        let Ok(bearer) = Bearer::new(token.as_deref()) else { return };
        let pool = &self.pool;
        loop {
            let attempt = async {
                let endpoint = tonic::transport::Endpoint::from_shared(authority.clone())?.connect_timeout(Duration::from_secs(1));
                let channel = endpoint.connect().await?;
                let mut client = AdminClient::with_interceptor(channel, bearer.clone());
                let mut stream = client.watch(PoolRequest { pool: pool.clone() }).await?.into_inner();
                while let Some(reply) = stream.message().await? {
                    let ips: Vec<Ipv4Addr> = reply.servers.iter().filter_map(|s| s.parse().ok()).collect();
                    info!(%pool, servers = ?ips, "servers");
                    if let Target::Engine(v) = self.target
                        && let Some(slot) = self.servers.lock().unwrap_or_else(|e| e.into_inner()).get_mut(v)
                    {
                        slot.clone_from(&ips);
                    }
                    let rotate = reply.policy == "round-robin";
                    // Waits for room: a change of servers is never dropped.
                    self.control.send(Control::Servers(self.target, ips, rotate)).await?;
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
}
