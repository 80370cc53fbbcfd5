//! Load generator for `scripts/bench/ingest.sh`: simulated monitors report
//! many members to one authority, either at a steady rate (while measuring
//! report-to-answer latency with real DNS queries) or as fast as possible.
//!
//! usage: ingest GRPC_URL DNS_ADDR POOL MEMBERS (steady RATE | max) SECONDS

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RData, RecordType};
use vnamed::grpc::Bearer;
use vnamed::grpc::v1::status_client::StatusClient;
use vnamed::grpc::v1::{MemberReport, ReportBatch};

const BATCH: usize = 500;

fn address(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(127, 1, 0, 0)) + i as u32)
}

fn report(pool: &str, i: usize, load: f64) -> MemberReport {
    MemberReport {
        pool: pool.to_owned(),
        member: format!("m{i}"),
        up: true,
        metrics: HashMap::from([("load".to_owned(), load)]),
        observed_unix_ms: 0,
        check: "ingest".into(),
        addresses: Vec::new(),
    }
}

/// The address DNS answers for the pool right now.
fn ask(socket: &UdpSocket, dns: SocketAddr, pool: &str, id: u16) -> Option<Ipv4Addr> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.add_query(Query::query(Name::from_ascii(pool).ok()?, RecordType::A));
    socket.send_to(&m.to_vec().ok()?, dns).ok()?;
    let mut buf = [0u8; 512];
    let (n, _) = socket.recv_from(&mut buf).ok()?;
    let reply = Message::from_vec(&buf[..n]).ok()?;
    reply.answers.iter().find_map(|r| match r.data {
        RData::A(a) => Some(a.0),
        _ => None,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (url, dns, pool, members) = (&args[1], args[2].parse::<SocketAddr>()?, args[3].clone(), args[4].parse::<usize>()?);
    let steady = args[5] == "steady";
    let rate: f64 = if steady { args[6].parse()? } else { 0.0 };
    let seconds: u64 = args[if steady { 7 } else { 6 }].parse()?;
    let channel = tonic::transport::Endpoint::from_shared(url.clone())?.connect().await?;
    let client = StatusClient::with_interceptor(channel, Bearer::new(None)?);

    // Everyone starts equally loaded.
    for chunk in (0..members).collect::<Vec<_>>().chunks(BATCH) {
        let reports = chunk.iter().map(|&i| report(&pool, i, 0.5)).collect();
        client.clone().report(ReportBatch { source: "ingest".into(), reports }).await?;
    }
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut sent = 0u64;
    let start = Instant::now();
    if steady {
        // Background reports at `rate` per second, in batches, with loads that keep everyone out of first place.
        let batches_per_sec = (rate / BATCH as f64).max(1.0);
        let gap = Duration::from_secs_f64(1.0 / batches_per_sec);
        let bg = {
            let (client, pool) = (client.clone(), pool.clone());
            tokio::spawn(async move {
                let mut next = 0usize;
                let mut n = 0u64;
                let mut tick = tokio::time::interval(gap);
                while Instant::now() < deadline {
                    tick.tick().await;
                    let reports = (0..BATCH).map(|k| report(&pool, (next + k) % members, 0.5 + (k % 7) as f64 * 0.01)).collect();
                    next = (next + BATCH) % members;
                    if client.clone().report(ReportBatch { source: "ingest".into(), reports }).await.is_ok() {
                        n += BATCH as u64;
                    }
                }
                n
            })
        };
        // Meanwhile: make one member the least loaded and time until DNS says so.
        let socket = UdpSocket::bind("127.0.0.1:0")?;
        socket.set_read_timeout(Some(Duration::from_millis(200)))?;
        let mut latencies = Vec::new();
        let mut previous: Option<usize> = None;
        let mut k = 0usize;
        while Instant::now() + Duration::from_millis(500) < deadline {
            k += 1;
            let target = (k * 7919) % members;
            let mut reports = vec![report(&pool, target, 0.0)];
            if let Some(p) = previous {
                reports.push(report(&pool, p, 0.5));
            }
            let t0 = Instant::now();
            client.clone().report(ReportBatch { source: "probe".into(), reports }).await?;
            let want = address(target);
            loop {
                if ask(&socket, dns, &pool, k as u16) == Some(want) {
                    latencies.push(t0.elapsed());
                    break;
                }
                if t0.elapsed() > Duration::from_secs(2) {
                    eprintln!("answer did not follow within 2 s");
                    break;
                }
            }
            previous = Some(target);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        sent = bg.await?;
        latencies.sort();
        let pct = |p: f64| {
            latencies.get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1))).copied().unwrap_or_default()
        };
        println!("steady_reports_per_s {:.0}", sent as f64 / start.elapsed().as_secs_f64());
        println!("report_to_answer_samples {}", latencies.len());
        println!("report_to_answer_p50_ms {:.2}", pct(0.5).as_secs_f64() * 1000.0);
        println!("report_to_answer_p99_ms {:.2}", pct(0.99).as_secs_f64() * 1000.0);
    } else {
        // As fast as possible: several batches in flight.
        let mut tasks = Vec::new();
        for t in 0..8 {
            let (client, pool) = (client.clone(), pool.clone());
            tasks.push(tokio::spawn(async move {
                let mut n = 0u64;
                let mut next = t * BATCH;
                while Instant::now() < deadline {
                    let reports = (0..BATCH).map(|k| report(&pool, (next + k) % members, 0.5 + (k % 7) as f64 * 0.01)).collect();
                    next = (next + 8 * BATCH) % members;
                    if client.clone().report(ReportBatch { source: "ingest".into(), reports }).await.is_ok() {
                        n += BATCH as u64;
                    }
                }
                n
            }));
        }
        for t in tasks {
            sent += t.await?;
        }
        println!("max_reports_per_s {:.0}", sent as f64 / start.elapsed().as_secs_f64());
    }
    Ok(())
}
