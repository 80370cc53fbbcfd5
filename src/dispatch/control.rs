//! The dispatcher's control side: the capture threads' control channels
//! (`Lanes`), each virtual IP's pool followed over the authority's
//! `Admin.Watch` stream, and the connection map rebuilt from the servers'
//! monitors after a take-over.

use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::engine::{Mode, Vip};
use super::steer;
use crate::backoff::Backoff;
use crate::config::ClientTls;
use crate::grpc::Bearer;
use crate::grpc::v1::PoolRequest;
use crate::grpc::v1::admin_client::AdminClient;

/// Whose servers a watched pool gives.
#[derive(Debug, Clone, Copy)]
pub(super) enum Target {
    /// An L4 virtual IP of the engine.
    Engine(usize),
    /// A server class of an L7 virtual IP.
    Splice(usize, usize),
}

/// A connection a server says it has: (client, its port), the server's
/// local port, the server.
pub(super) type Held = ((Ipv4Addr, u16), u16, Ipv4Addr);

/// What the control side tells a capture thread.
#[derive(Debug)]
pub(super) enum Control {
    /// A pool's live servers in order, and whether to rotate.
    Servers(Target, Vec<Ipv4Addr>, bool),
    /// Whether this host holds the virtual IPs.
    Active(bool),
    /// Connections the servers say they have, after a take-over (those
    /// this thread owns); how many went back into the map is answered on
    /// `done`.
    Restore { vip: Ipv4Addr, entries: Vec<((Ipv4Addr, u16), Ipv4Addr)>, done: oneshot::Sender<usize> },
}

/// The capture threads' control channels.
#[derive(Clone)]
pub(super) struct Lanes(pub(super) Arc<[mpsc::Sender<Control>]>);

/// The capture threads are gone.
#[derive(Debug)]
pub(super) struct Gone;

impl Lanes {
    /// Tells every thread; waits for room.
    pub(super) async fn tell(&self, make: impl Fn() -> Control) -> Result<(), Gone> {
        for lane in self.0.iter() {
            lane.send(make()).await.map_err(|_| Gone)?;
        }
        Ok(())
    }

    /// Gives each thread the connections it owns; how many went back.
    pub(super) async fn restore(&self, vip: Ipv4Addr, held: Vec<Held>) -> Result<usize, Gone> {
        let n = self.0.len();
        let mut share: Vec<Vec<((Ipv4Addr, u16), Ipv4Addr)>> = vec![Vec::new(); n];
        for (client, port, server) in held {
            share[steer::lane(client.1, port, n)].push((client, server));
        }
        let mut restored = 0;
        for (lane, entries) in self.0.iter().zip(share) {
            if entries.is_empty() {
                continue;
            }
            let (done, answer) = oneshot::channel();
            lane.send(Control::Restore { vip, entries, done }).await.map_err(|_| Gone)?;
            restored += answer.await.map_err(|_| Gone)?;
        }
        Ok(restored)
    }
}

/// State reconstruction after taking over: every server's monitor says
/// which connections it has on each virtual IP (L4/2: to the virtual IP
/// itself; L4/3: to the server's own address), and they go back into the
/// connection map with that server, so established connections continue.
pub(super) async fn reconstruct(lanes: Lanes, servers: Arc<Mutex<Vec<Vec<Ipv4Addr>>>>, vips: Vec<Vip>, monitor_port: u16, tls: ClientTls) {
    use crate::grpc::v1::ConnectionsRequest;
    use crate::grpc::v1::host_client::HostClient;
    let started = Instant::now();
    let wanted = servers.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let mut restored = 0;
    for (v, vip) in vips.iter().enumerate() {
        let Some(list) = wanted.get(v) else { continue };
        for server in list {
            // Monitors speak TLS to a dispatcher given a CA for them.
            let scheme = if tls.ca.is_some() { "https" } else { "http" };
            let url = format!("{scheme}://{server}:{monitor_port}");
            let ask = async {
                let endpoint = crate::grpc::tls::endpoint(&url, &tls)?.connect_timeout(Duration::from_millis(500));
                let mut client = HostClient::new(endpoint.connect().await?);
                let local = if vip.mode == Mode::L42 { vip.ip } else { *server };
                let mut found = Vec::new();
                for port in if vip.ports.is_empty() { vec![0] } else { vip.ports.clone() } {
                    let reply =
                        client.connections(ConnectionsRequest { local: local.to_string(), port: u32::from(port) }).await?.into_inner();
                    found.extend(reply.connections.into_iter().filter_map(|c| {
                        let client = (c.client.parse::<Ipv4Addr>().ok()?, u16::try_from(c.client_port).ok()?);
                        let local_port = u16::try_from(c.local_port).ok().filter(|p| *p != 0).unwrap_or(port);
                        Some((client, local_port, *server))
                    }));
                }
                Ok::<_, anyhow::Error>(found)
            };
            match tokio::time::timeout(Duration::from_secs(2), ask).await {
                Ok(Ok(found)) => {
                    let reported = found.len();
                    let Ok(n) = lanes.restore(vip.ip, found).await else {
                        return; // the capture threads are gone
                    };
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
pub(super) struct Follow {
    pub(super) target: Target,
    pub(super) pool: String,
    pub(super) lanes: Lanes,
    pub(super) servers: Arc<Mutex<Vec<Vec<Ipv4Addr>>>>,
}

impl Follow {
    /// Follows the pool's live servers over `Admin.Watch`, reconnecting
    /// while the authority is away.
    pub(super) async fn run(self, authority: String, token: Option<String>, tls: ClientTls, shutdown: CancellationToken) {
        let Ok(bearer) = Bearer::new(token.as_deref()) else { return };
        let pool = &self.pool;
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(5));
        loop {
            let attempt = async {
                let endpoint = crate::grpc::tls::endpoint(&authority, &tls)?.connect_timeout(Duration::from_secs(1));
                let channel = endpoint.connect().await?;
                let mut client = AdminClient::with_interceptor(channel, bearer.clone());
                let mut stream = client.watch(PoolRequest { pool: pool.clone() }).await?.into_inner();
                while let Some(reply) = stream.message().await? {
                    backoff.reset();
                    let ips: Vec<Ipv4Addr> = reply.servers.iter().filter_map(|s| s.parse().ok()).collect();
                    info!(%pool, servers = ?ips, "servers");
                    if let Target::Engine(v) = self.target
                        && let Some(slot) = self.servers.lock().unwrap_or_else(|e| e.into_inner()).get_mut(v)
                    {
                        slot.clone_from(&ips);
                    }
                    let rotate = reply.policy == "round-robin";
                    // Waits for room: a change of servers is never dropped.
                    self.lanes
                        .tell(|| Control::Servers(self.target, ips.clone(), rotate))
                        .await
                        .map_err(|_| anyhow::anyhow!("the capture threads are gone"))?;
                }
                Ok::<(), anyhow::Error>(())
            };
            tokio::select! {
                r = attempt => if let Err(error) = r { warn!(%pool, %error, "watching the pool failed; retrying") },
                _ = shutdown.cancelled() => return,
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff.next_pause()) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }
}
