//! Load generator for `scripts/bench/ingest.sh`: simulated monitors report
//! many members of one big pool to one authority, either at a steady rate
//! (while measuring report-to-answer latency with real DNS queries) or as
//! fast as possible. The latency is a death's: in a small probe pool
//! beside the big one (`www.probe.example.`, in a zone of its own, three
//! members, every member in every answer), one member is reported down
//! and the time is taken until an answer no longer carries it, then it
//! comes back.
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

/// The addresses DNS answers for a pool right now.
fn ask(socket: &UdpSocket, dns: SocketAddr, pool: &str, id: u16) -> Option<Vec<Ipv4Addr>> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.add_query(Query::query(Name::from_ascii(pool).ok()?, RecordType::A));
    socket.send_to(&m.to_vec().ok()?, dns).ok()?;
    let mut buf = [0u8; 512];
    loop {
        let (n, _) = socket.recv_from(&mut buf).ok()?;
        let reply = Message::from_vec(&buf[..n]).ok()?;
        if reply.metadata.id != id {
            continue; // a late answer to an earlier question
        }
        return Some(
            reply
                .answers
                .iter()
                .filter_map(|r| match r.data {
                    RData::A(a) => Some(a.0),
                    _ => None,
                })
                .collect(),
        );
    }
}

/// Probe member `i`'s address.
fn probe_address(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 2, 0, 1 + i as u8)
}

fn probe_report(pool: &str, i: usize, up: bool) -> MemberReport {
    MemberReport { member: format!("p{i}"), up, metrics: HashMap::new(), ..report(pool, 0, 0.0) }
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
        // Meanwhile: a probe member dies; timed until no answer carries it.
        let probe = "www.probe.example.".to_owned();
        let socket = UdpSocket::bind("127.0.0.1:0")?;
        socket.set_read_timeout(Some(Duration::from_millis(200)))?;
        let everyone: Vec<MemberReport> = (0..3).map(|i| probe_report(&probe, i, true)).collect();
        client.clone().report(ReportBatch { source: "probe".into(), reports: everyone }).await?;
        let mut latencies = Vec::new();
        let mut k = 0usize;
        let mut id = 0u16;
        while Instant::now() + Duration::from_millis(500) < deadline {
            let target = k % 3;
            k += 1;
            // All three in the answer first (the last one back).
            let back = Instant::now();
            while ask(&socket, dns, &probe, {
                id = id.wrapping_add(1);
                id
            })
            .is_none_or(|a| a.len() < 3)
            {
                if back.elapsed() > Duration::from_secs(2) {
                    anyhow::bail!("the probe pool's members did not all come back within 2 s");
                }
            }
            let t0 = Instant::now();
            client.clone().report(ReportBatch { source: "probe".into(), reports: vec![probe_report(&probe, target, false)] }).await?;
            let gone = probe_address(target);
            loop {
                id = id.wrapping_add(1);
                if ask(&socket, dns, &probe, id).is_some_and(|a| !a.is_empty() && !a.contains(&gone)) {
                    latencies.push(t0.elapsed());
                    break;
                }
                if t0.elapsed() > Duration::from_secs(2) {
                    eprintln!("the answer still carried the dead member after 2 s");
                    break;
                }
            }
            client.clone().report(ReportBatch { source: "probe".into(), reports: vec![probe_report(&probe, target, true)] }).await?;
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
