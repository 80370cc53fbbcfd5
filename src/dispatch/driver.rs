//! `vnamed dispatch`: the sockets around the pure engine. Frames arrive
//! in a packet ring on the interface (`sys::packet`); L4/2 frames go back
//! out on the link, L4/3 packets out through a raw IP socket, a batch at a
//! time (`sendmmsg`). The dispatcher answers ARP for its virtual IPs itself
//! (they are not configured on the host, so the kernel never answers for
//! them) and announces them with gratuitous ARP when it takes them over,
//! with the interface's MAC or a virtual one shared by the cluster
//! (`dispatch.virtual_mac`).
//! Each virtual IP follows its pool over the authority's `Admin.Watch`
//! stream; servers' MACs are learnt with ARP. With a `[ring]` section the
//! host is a ring member and holds the virtual IPs only while the ring
//! elects it.
//!
//! One owner per thread: the capture threads form a fanout group steered
//! by connection (`steer`), and each alone holds its engine, its share of
//! the connections and its sending sockets. Thread 0 also gets everything
//! that is not an L4 connection: it answers ARP, learns MACs (published to
//! the others through an `ArcSwap`), runs the L7 relays and announces the
//! addresses. Each thread does its periodic work (expiring connections a
//! shard at a time) between batches. The control side (pool watchers, the
//! ring's election, state reconstruction) talks to the threads over
//! bounded channels; what they count they publish for `/metrics` in
//! atomics.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use arc_swap::ArcSwap;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::control::{Control, Follow, Lanes, Target, reconstruct};
use super::engine::{Dropped, Engine, Mode, Server, Verdict, Vip};
use super::frame::{self, Mac};
use super::splice::{Route, Segment, Splicer};
use super::steer;
use crate::config::{Config, DispatchConfig, DispatchMode};
use crate::metrics::{Expose, Writer};
use crate::sys::mmsg::{DATAGRAM, SendBatch};
use crate::sys::packet::{Ring, RingSize};

/// Control messages queued for each capture thread, at most; senders wait
/// for room rather than drop a change.
const CONTROL_QUEUE: usize = 256;
/// How often a capture thread does its periodic work.
const TICK: Duration = Duration::from_millis(100);
/// Frames taken from the ring before what they produced is sent.
const BATCH: usize = 64;
/// Receive ring per capture thread.
const RING_BYTES: usize = 8 << 20;

/// What one capture thread counts.
#[derive(Debug, Default)]
struct LaneStats {
    switched: AtomicU64,
    connections: AtomicU64,
    dropped: [AtomicU64; Dropped::ALL.len()],
    l7_connections: AtomicU64,
    l7_refused: AtomicU64,
    send_errors: AtomicU64,
    ring_drops: AtomicU64,
    cut: AtomicU64,
    evicted: AtomicU64,
}

/// What the capture threads publish, for `/metrics`.
#[derive(Debug, Default)]
struct Stats {
    active: AtomicBool,
    lanes: Vec<LaneStats>,
}

impl Expose for Stats {
    fn expose(&self, w: &mut Writer<'_, '_>) -> std::fmt::Result {
        let sum = |f: fn(&LaneStats) -> &AtomicU64| self.lanes.iter().map(|l| f(l).load(Ordering::Relaxed)).sum::<u64>();
        let dropped = Dropped::ALL
            .iter()
            .enumerate()
            .map(|(i, why)| (vec![("reason", why.label().into())], self.lanes.iter().map(|l| l.dropped[i].load(Ordering::Relaxed)).sum()))
            .collect();
        w.gauge("vnamed_dispatch_active", "1 while this host holds the virtual IPs.", i64::from(self.active.load(Ordering::Relaxed)))?;
        w.gauge("vnamed_dispatch_threads", "Capture threads (each owns its share of the connections).", self.lanes.len() as i64)?;
        let switched = self
            .lanes
            .iter()
            .enumerate()
            .map(|(i, l)| (vec![("thread", i.to_string().into())], l.switched.load(Ordering::Relaxed)))
            .collect();
        w.counters("vnamed_dispatch_switched", "Packets switched to a server, by capture thread.", switched)?;
        w.gauge("vnamed_dispatch_connections", "Connections in the connection map.", sum(|l| &l.connections) as i64)?;
        w.counters("vnamed_dispatch_dropped", "Frames to a virtual IP dropped, by reason.", dropped)?;
        w.counter(
            "vnamed_dispatch_evicted",
            "Half-open connections evicted from a full connection map (a SYN flood).",
            sum(|l| &l.evicted),
        )?;
        w.gauge("vnamed_dispatch_l7_connections", "L7 connections being relayed.", sum(|l| &l.l7_connections) as i64)?;
        w.counter("vnamed_dispatch_l7_refused", "L7 requests reset (not HTTP, no server).", sum(|l| &l.l7_refused))?;
        w.counter("vnamed_dispatch_send_errors", "Frames the kernel refused to send.", sum(|l| &l.send_errors))?;
        w.counter("vnamed_dispatch_ring_drops", "Frames lost because a capture ring was full.", sum(|l| &l.ring_drops))?;
        w.counter(
            "vnamed_dispatch_frames_cut",
            "Frames longer than a ring slot, dropped (turn off GRO/LRO on the interface).",
            sum(|l| &l.cut),
        )
    }
}

/// Frames and packets waiting to be sent, and the sockets they go on.
struct Out {
    link: SendBatch,
    ip: SendBatch,
    link_fd: OwnedFd,
    raw: socket2::Socket,
    errors: u64,
}

impl Out {
    fn frame(&mut self, f: &[u8]) {
        if self.link.is_full() {
            self.flush();
        }
        self.link.push(f, None);
    }

    fn packet(&mut self, p: &[u8], to: Ipv4Addr) {
        if self.ip.is_full() {
            self.flush();
        }
        self.ip.push(p, SocketAddr::from((to, 0)));
    }

    fn flush(&mut self) {
        self.errors += unsent(&mut self.link, &self.link_fd) + unsent(&mut self.ip, &self.raw);
    }
}

/// Sends what `batch` holds on `fd`; how many the kernel refused.
fn unsent(batch: &mut SendBatch, fd: &impl std::os::fd::AsRawFd) -> u64 {
    if batch.is_empty() {
        return 0;
    }
    let queued = batch.len();
    (queued - batch.flush(fd)) as u64
}

/// A capture thread's state: the only owner of its engine, its share of
/// the connections, (on thread 0) the L7 relays, and its sending sockets.
struct Capture {
    lane: usize,
    engine: Engine,
    splicers: Vec<Splicer>,
    macs: Arc<HashMap<Ipv4Addr, Mac>>,
    /// Servers' MACs as learnt by whichever thread saw the ARP.
    learnt: Arc<ArcSwap<HashMap<Ipv4Addr, Mac>>>,
    /// Per L4 virtual IP: the pool's servers in order, and whether to rotate.
    wanted: Vec<(Vec<Ipv4Addr>, bool)>,
    active: bool,
    /// Gratuitous ARP rounds sent since taking the virtual IPs (or since
    /// the last periodic announcement), and whether taking them was logged.
    announced: u32,
    holding: bool,
    out: Out,
    /// The interface's MAC, for our own ARP questions.
    mac: Mac,
    /// The MAC the virtual IPs are answered and announced with (the
    /// interface's, or `dispatch.virtual_mac`).
    vmac: Mac,
    my_ip: Ipv4Addr,
    /// Addresses to answer and announce: the virtual IPs, the gateway, the L7 ones.
    held: Vec<Ipv4Addr>,
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
                    if self.lane == 0 {
                        info!(active, "dispatcher role changed");
                        self.stats.active.store(active, Ordering::Relaxed);
                    }
                    self.active = active;
                    self.announced = 0;
                    self.holding = false;
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

    /// Takes up MACs another thread learnt.
    fn sync_macs(&mut self) {
        let now = self.learnt.load();
        if !Arc::ptr_eq(&now, &self.macs) {
            self.macs = Arc::clone(&now);
            self.apply();
        }
    }

    /// One captured frame, rewritten in place in the ring.
    fn frame(&mut self, f: &mut [u8], now: Instant) {
        if f.len() < frame::ETH_HEADER || [self.mac, self.vmac].contains(&frame::src_mac(f)) {
            return; // our own frames, where the kernel still shows them
        }
        if let Some((m, ip)) = frame::arp_sender(f)
            && self.macs.get(&ip) != Some(&m)
        {
            self.learnt.rcu(|macs| {
                let mut macs = HashMap::clone(macs);
                macs.insert(ip, m);
                macs
            });
            self.sync_macs();
        }
        let to = frame::dst_mac(f);
        if !self.active || (to != self.mac && to != self.vmac && to != [0xFF; 6]) {
            return;
        }
        // L7 virtual IPs, and servers answering their relayed connections.
        if !self.splicers.is_empty() {
            let spliced = Segment::parse(&f[frame::ETH_HEADER..])
                .and_then(|seg| self.splicers.iter_mut().find(|s| s.is_ours(&seg)).map(|s| s.handle(seg, now)));
            if let Some(packets) = spliced {
                for (p, to) in packets {
                    self.out.packet(&p, to);
                }
                return;
            }
        }
        let verdict = match self.engine.inbound(f, now) {
            Verdict::Pass => self.engine.outbound(f, now),
            v => v,
        };
        match verdict {
            Verdict::Switch => self.out.frame(f),
            // A destination on the link whose MAC ARP told us: straight
            // out as a frame; anything else through the host's routes.
            Verdict::Route { to } => match self.macs.get(&to) {
                Some(m) => {
                    frame::set_macs(f, *m, self.vmac);
                    self.out.frame(f)
                }
                None => self.out.packet(&f[frame::ETH_HEADER..], to),
            },
            Verdict::Reply(r) => self.out.frame(&r),
            Verdict::Drop(why) => debug!(reason = why.label(), "frame dropped"),
            Verdict::Pass => {}
        }
    }

    /// The periodic work, every `TICK`: (thread 0) announce the virtual
    /// IPs after taking them and ask for servers' MACs; expire a shard of
    /// connections; publish the counters.
    fn tick(&mut self, now: Instant, ring: &Ring) {
        self.ticks += 1;
        if self.lane == 0 {
            // Announced three times on taking over, then every two seconds,
            // so that a neighbour holding a stale entry learns where they are.
            if self.active && self.ticks.is_multiple_of(20) {
                self.announced = self.announced.min(2);
            }
            if self.active && self.announced < 3 {
                self.announced += 1;
                for ip in self.held.clone() {
                    self.out.frame(&frame::gratuitous_arp(self.vmac, ip));
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
                    self.out.frame(&frame::arp_who_has(self.mac, self.my_ip, ip));
                }
            }
        }
        // One shard per tick: a whole pass in well under a couple of seconds.
        self.engine.expire_step(now);
        if self.ticks.is_multiple_of(10) {
            for s in &mut self.splicers {
                s.expire(now);
            }
        }
        self.out.flush();
        let s = &self.stats.lanes[self.lane];
        s.switched.store(self.engine.switched, Ordering::Relaxed);
        s.connections.store(self.engine.conns().len() as u64, Ordering::Relaxed);
        let l7_evicted: u64 = self.splicers.iter().map(|p| p.evicted).sum();
        s.evicted.store(self.engine.conns().evicted() + l7_evicted, Ordering::Relaxed);
        for (why, n) in Dropped::ALL.iter().zip(&s.dropped) {
            n.store(self.engine.dropped(*why), Ordering::Relaxed);
        }
        s.l7_connections.store(self.splicers.iter().map(Splicer::len).sum::<usize>() as u64, Ordering::Relaxed);
        s.l7_refused.store(self.splicers.iter().map(|s| s.refused).sum(), Ordering::Relaxed);
        s.send_errors.store(self.out.errors, Ordering::Relaxed);
        // The kernel's count restarts each time it is read.
        if let Ok(n) = ring.drops() {
            s.ring_drops.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// The thread's loop: control messages first (a frame that woke an
    /// idle thread must meet the pools' latest order, not the one from
    /// before it slept), then frames a batch at a time, what they produced
    /// sent, and periodic work.
    fn run(mut self, mut ring: Ring, mut inbox: mpsc::Receiver<Control>, stop: Arc<AtomicBool>) {
        let mut next_tick = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            if let Err(e) = ring.wait(TICK) {
                warn!(error = %e, "capture failed");
                std::thread::sleep(TICK);
            }
            let now = Instant::now();
            while let Ok(msg) = inbox.try_recv() {
                self.control(msg, now);
            }
            self.sync_macs();
            for _ in 0..BATCH {
                let Some(mut f) = ring.next() else { break };
                if f.cut() || f.len() > DATAGRAM {
                    self.stats.lanes[self.lane].cut.fetch_add(1, Ordering::Relaxed);
                } else if !f.tagged() {
                    self.frame(&mut f, now);
                }
            }
            self.out.flush();
            if now >= next_tick {
                self.tick(now, &ring);
                next_tick = now + TICK;
            }
        }
    }
}

/// The interface's MTU (1500 when it cannot be read).
fn mtu(interface: &str) -> usize {
    std::fs::read_to_string(format!("/sys/class/net/{interface}/mtu")).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(1500)
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
    let seed: u32 = rand::random();
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
            Splicer::new(v.address, v.ports[0], local, routes, v.route.len() + 1, dc.idle_timeout, (seed, Instant::now()))
        })
        .collect();
    let l7_ips: Vec<Ipv4Addr> = l7_vips.iter().map(|v| v.address).collect();
    let threads = dc.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let size = RingSize::for_mtu(mtu(&iface.name), RING_BYTES);
    let mut rings = Vec::with_capacity(threads);
    for _ in 0..threads {
        rings.push(Ring::open(iface.index, size).with_context(|| format!("capture ring on {} (needs CAP_NET_RAW)", iface.name))?);
    }
    let vmac: Mac = dc.virtual_mac.map_or(mac, |m| m.0);
    if vmac != mac {
        rings[0].accept_mac(iface.index, vmac).with_context(|| format!("receiving frames to the virtual MAC on {}", iface.name))?;
    }
    if threads > 1 {
        // Frames to an L7 address (and to the gateway, where the relays'
        // server sides come back) stay with thread 0 and its relays.
        let l7_addresses: Vec<Ipv4Addr> = gateway.iter().filter(|_| !l7_ips.is_empty()).chain(&l7_ips).copied().collect();
        let program = steer::to_filters(&steer::program(&l7_addresses));
        let group = rings[0].join(None, &program).context("fanout group for the capture threads")?;
        for r in &rings[1..] {
            r.join(Some(group), &program).context("joining the capture threads' fanout group")?;
        }
    }
    let stats = Arc::new(Stats { lanes: (0..threads).map(|_| LaneStats::default()).collect(), ..Default::default() });
    let active = config.ring.is_none();
    stats.active.store(active, Ordering::Relaxed);
    let stop = Arc::new(AtomicBool::new(false));
    let learnt = Arc::new(ArcSwap::from_pointee(HashMap::new()));
    let held: Vec<Ipv4Addr> = vips.iter().map(|v| v.ip).chain(gateway).chain(l7_ips.iter().copied()).collect();
    let mut splicers = Some(splicers);
    let mut senders = Vec::with_capacity(threads);
    let mut capture = Vec::with_capacity(threads);
    for (lane, ring) in rings.into_iter().enumerate() {
        // Each capture thread owns its share of the connections, and of the cap.
        let mut engine = Engine::new(vips.clone(), vmac, dc.idle_timeout, dc.fin_timeout, Instant::now())
            .with_capacity(dc.max_connections / threads.max(1));
        for ip in gateway.iter().chain(&l7_ips) {
            engine.answer_arp_for(*ip);
        }
        let raw = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::RAW, Some(socket2::Protocol::from(libc::IPPROTO_RAW)))
            .context("raw IP socket (needs CAP_NET_RAW)")?;
        let c = Capture {
            lane,
            engine,
            splicers: if lane == 0 { splicers.take().unwrap_or_default() } else { Vec::new() },
            macs: learnt.load_full(),
            learnt: learnt.clone(),
            wanted: vec![(Vec::new(), false); vips.len()],
            active,
            announced: 0,
            holding: false,
            out: Out { link: SendBatch::new(BATCH), ip: SendBatch::new(BATCH), link_fd: ring.sender()?, raw, errors: 0 },
            mac,
            vmac,
            my_ip,
            held: held.clone(),
            stats: stats.clone(),
            ticks: 0,
        };
        let (tx, inbox) = mpsc::channel::<Control>(CONTROL_QUEUE);
        senders.push(tx);
        let stop = stop.clone();
        capture.push(std::thread::Builder::new().name(format!("dispatch-{lane}")).spawn(move || c.run(ring, inbox, stop))?);
    }
    let lanes = Lanes(senders.into());

    // The ring decides who holds the virtual IPs.
    let ring_counters = Arc::new(crate::ring::driver::RingCounters::default());
    let (elected_tx, mut elected) = watch::channel(false);
    let ring = config.ring.clone().map(|mut rc| {
        rc.dispatch_capable = true;
        tokio::spawn(crate::grpc::ring::run_member(
            rc,
            vec![dc.authority.clone()],
            dc.token.clone(),
            dc.client_tls.clone(),
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
            let follow = Follow { target, pool: pool.clone(), lanes: lanes.clone(), servers: servers.clone() };
            tasks.spawn(follow.run(dc.authority.clone(), dc.token.clone(), dc.client_tls.clone(), shutdown.clone()));
        }
    }
    if let Some(rc) = &config.ring {
        let (lanes, servers, vips, shutdown) = (lanes.clone(), servers.clone(), vips.clone(), shutdown.clone());
        let (monitor_port, tls) = (dc.monitor_port, dc.client_tls.clone());
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
                if lanes.tell(|| Control::Active(active)).await.is_err() {
                    return; // the capture threads are gone
                }
                if active && let Some(port) = monitor_port {
                    tokio::spawn(reconstruct(lanes.clone(), servers.clone(), vips.clone(), port, tls.clone()));
                }
            }
        });
    }
    if let Some(addr) = dc.metrics_listen {
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("dispatch.metrics_listen {addr}"))?;
        let mut registry = crate::metrics::registry();
        crate::metrics::register(&mut registry, stats.clone());
        crate::metrics::register(&mut registry, ring_counters.clone());
        let gate = crate::sys::accept::Gate::metrics(listener, &crate::config::Limits::default());
        tasks.spawn(crate::metrics::serve(gate, Arc::new(registry), axum::Router::new(), shutdown.clone()));
    }
    info!(interface = %iface.name, %my_ip, vips = vips.len(), threads, "dispatcher running");
    crate::sys::service::ready("dispatching");
    shutdown.cancelled().await;
    stop.store(true, Ordering::Relaxed);
    while tasks.join_next().await.is_some() {}
    let _ = tokio::task::spawn_blocking(move || capture.into_iter().for_each(|t| drop(t.join()))).await;
    if let Some(ring) = ring {
        let _ = ring.await;
    }
    info!("dispatcher stopped");
    Ok(())
}
