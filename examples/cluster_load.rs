//! Load generator for `scripts/bench/cluster.sh`: simulated monitors report
//! every member of POOLS pools (MEMBERS each, `priority` policy) to every
//! authority at RATE reports/s (each report goes to each authority, as a
//! monitor reporting to all of them does), and meanwhile a probe takes a
//! pool's first member down (or brings it back) at every authority and
//! times, with real DNS queries, until every authority answers the
//! change. Prints p50/p99 of that time.
//!
//! usage: cluster_load GRPC_URLS DNS_ADDRS ZONE POOLS MEMBERS RATE SECONDS
//! (URLs and addresses comma-separated, in the same order)

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RData, RecordType};
use vnamed::grpc::Bearer;
use vnamed::grpc::v1::status_client::StatusClient;
use vnamed::grpc::v1::{MemberReport, ReportBatch};

const BATCH: usize = 500;

/// Member `m` of pool `p`: 127.(4 + m).(p / 250).(p % 250 + 1).
fn address(p: usize, m: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 4 + m as u8, (p / 250) as u8, (p % 250 + 1) as u8)
}

fn report(zone: &str, p: usize, m: usize, up: bool) -> MemberReport {
    MemberReport {
        pool: format!("p{p}.{zone}"),
        member: format!("m{m}"),
        up,
        metrics: HashMap::new(),
        observed_unix_ms: 0,
        check: "cluster_load".into(),
        addresses: Vec::new(),
    }
}

fn ask(socket: &UdpSocket, dns: SocketAddr, name: &Name, id: u16) -> Option<Ipv4Addr> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.add_query(Query::query(name.clone(), RecordType::A));
    socket.send_to(&m.to_vec().ok()?, dns).ok()?;
    let mut buf = [0u8; 512];
    let (n, _) = socket.recv_from(&mut buf).ok()?;
    let reply = Message::from_vec(&buf[..n]).ok()?;
    if reply.id != id {
        return None;
    }
    reply.answers.iter().find_map(|r| match r.data {
        RData::A(a) => Some(a.0),
        _ => None,
    })
}

type Client = StatusClient<tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Bearer>>;

/// Sends `reports` to every authority at once; whether all took them.
async fn to_all(clients: &[Client], source: &str, reports: Vec<MemberReport>) -> bool {
    let tasks: Vec<_> = clients
        .iter()
        .map(|c| {
            let (mut c, batch) = (c.clone(), ReportBatch { source: source.into(), reports: reports.clone() });
            tokio::spawn(async move { c.report(batch).await.is_ok() })
        })
        .collect();
    let mut ok = true;
    for t in tasks {
        ok &= t.await.unwrap_or(false);
    }
    ok
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let urls: Vec<String> = args[1].split(',').map(str::to_owned).collect();
    let dns: Vec<SocketAddr> = args[2].split(',').map(|a| a.parse()).collect::<Result<_, _>>()?;
    let zone = args[3].clone();
    let (pools, members): (usize, usize) = (args[4].parse()?, args[5].parse()?);
    let rate: f64 = args[6].parse()?;
    let seconds: u64 = args[7].parse()?;
    let mut clients = Vec::new();
    for url in &urls {
        let channel = tonic::transport::Endpoint::from_shared(url.clone())?.connect().await?;
        clients.push(StatusClient::with_interceptor(channel, Bearer::new(None)?));
    }
    // Every member up, everywhere.
    let all: Vec<(usize, usize)> = (0..pools).flat_map(|p| (0..members).map(move |m| (p, m))).collect();
    for chunk in all.chunks(BATCH) {
        to_all(&clients, "load", chunk.iter().map(|&(p, m)| report(&zone, p, m, true)).collect()).await;
    }
    // Every authority answers every pool's first member before timing starts.
    let socket = UdpSocket::bind("127.0.0.1:0")?;
    socket.set_read_timeout(Some(Duration::from_millis(200)))?;
    let settle = Instant::now() + Duration::from_secs(30);
    let mut id = 0u16;
    for p in (0..pools).step_by((pools / 20).max(1)) {
        let name = Name::from_ascii(format!("p{p}.{zone}"))?;
        for d in &dns {
            while ask(&socket, *d, &name, id) != Some(address(p, 0)) && Instant::now() < settle {
                id = id.wrapping_add(1);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }

    let deadline = Instant::now() + Duration::from_secs(seconds);
    let probe_pool = |k: usize| (k * 7919) % pools;
    let bg = {
        let (clients, zone) = (clients.clone(), zone.clone());
        let gap = Duration::from_secs_f64(BATCH as f64 / rate.max(1.0));
        tokio::spawn(async move {
            let mut next = 0usize;
            let mut sent = 0u64;
            let mut tick = tokio::time::interval(gap);
            while Instant::now() < deadline {
                tick.tick().await;
                // Everyone up, except the first members (the probe's).
                let reports = (0..BATCH)
                    .map(|k| all[(next + k) % all.len()])
                    .filter(|&(_, m)| m != 0)
                    .map(|(p, m)| report(&zone, p, m, true))
                    .collect::<Vec<_>>();
                next = (next + BATCH) % all.len();
                let n = reports.len() as u64;
                if to_all(&clients, "load", reports).await {
                    sent += n;
                }
            }
            sent
        })
    };
    let mut latencies = Vec::new();
    let mut misses = 0;
    let mut k = 0usize;
    let start = Instant::now();
    while Instant::now() + Duration::from_millis(2500) < deadline {
        k += 1;
        let p = probe_pool(k);
        let name = Name::from_ascii(format!("p{p}.{zone}"))?;
        // Down: every authority must answer the second member; the first
        // comes back right after, unmeasured.
        let t0 = Instant::now();
        to_all(&clients, "probe", vec![report(&zone, p, 0, false)]).await;
        let mut pending: Vec<SocketAddr> = dns.clone();
        while !pending.is_empty() && t0.elapsed() < Duration::from_secs(2) {
            id = id.wrapping_add(1);
            pending.retain(|d| ask(&socket, *d, &name, id) != Some(address(p, 1)));
        }
        if pending.is_empty() {
            latencies.push(t0.elapsed());
        } else {
            misses += 1;
        }
        to_all(&clients, "probe", vec![report(&zone, p, 0, true)]).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let sent = bg.await?;
    latencies.sort();
    let pct =
        |q: f64| latencies.get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1))).copied().unwrap_or_default();
    println!("reports_per_s_per_authority {:.0}", sent as f64 / start.elapsed().as_secs_f64());
    println!("samples {}", latencies.len());
    println!("missed {misses}");
    println!("all_answer_p50_ms {:.2}", pct(0.5).as_secs_f64() * 1000.0);
    println!("all_answer_p99_ms {:.2}", pct(0.99).as_secs_f64() * 1000.0);
    Ok(())
}
