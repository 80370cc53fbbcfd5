//! `vnamed demo`: an authority on loopback with the zone `demo.example.`
//! and the pool `www.demo.example.` over three simulated backends on
//! `127.0.10.1-3:8080`. Each backend is a real HTTP listener whose load
//! drifts over time; its reports move the least-loaded shares of the
//! answers between them.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::authority::Authority;
use crate::config::Config;

#[derive(Args, Clone)]
pub struct DemoArgs {
    /// DNS address (UDP and TCP).
    #[arg(long, default_value = "127.0.0.1:5353")]
    pub dns: SocketAddr,
    /// gRPC API address.
    #[arg(long, default_value = "127.0.0.1:7443")]
    pub grpc: SocketAddr,
    /// The status page (`/`) and Prometheus metrics (`/metrics`) address.
    #[arg(long, default_value = "127.0.0.1:9353")]
    pub metrics: SocketAddr,
    /// The SRP responder (SQL Server Browser protocol) for cluster `demo`.
    #[arg(long, default_value = "127.0.0.1:1434")]
    pub srp: SocketAddr,
    /// TCP port of the simulated SQL instance DEMO, on the SRP address.
    #[arg(long, default_value_t = 14330)]
    pub sql_port: u16,
    /// Where the demo zone file lives (default: a fresh temporary directory).
    #[arg(long)]
    pub zones_dir: Option<PathBuf>,
    /// Backend addresses (HTTP on port 8080 each).
    #[arg(long, value_delimiter = ',', default_value = "127.0.10.1,127.0.10.2,127.0.10.3")]
    pub backends: Vec<IpAddr>,
    /// Seconds for one full swing of a backend's simulated load.
    #[arg(long, default_value_t = 30.0)]
    pub period: f64,
    /// Stop by itself after this long (e.g. "60s"); runs until Ctrl-C otherwise.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
}

const ZONE: &str = "\
; The demo zone. The block between the vnamed markers is rewritten by
; vnamed whenever the answer for www.demo.example. changes.
$TTL 60
@       IN SOA ns1.demo.example. hostmaster.demo.example. ( 1 3600 600 86400 5 )
        IN NS  ns1.demo.example.
ns1     IN A   127.0.0.1
info    IN TXT \"vnamed demo: dig www.demo.example to see the preferred backend\"
";

/// The simulated load of backend `i` at `t` seconds: three phase-shifted
/// waves, so the least-loaded backend changes every third of a period.
pub fn simulated_load(i: usize, t: f64, period: f64) -> f64 {
    let phase = i as f64 * std::f64::consts::TAU / 3.0;
    0.5 + 0.4 * (std::f64::consts::TAU * t / period + phase).sin()
}

pub async fn run(args: DemoArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let tmp;
    let zones_dir = match &args.zones_dir {
        Some(d) => d.clone(),
        None => {
            tmp = tempfile::Builder::new().prefix("vnamed-demo-").tempdir()?;
            tmp.path().to_owned()
        }
    };
    std::fs::create_dir_all(&zones_dir)?;
    let zone_path = zones_dir.join("demo.example.zone");
    if !zone_path.exists() {
        std::fs::write(&zone_path, ZONE).with_context(|| format!("cannot write {}", zone_path.display()))?;
    }
    let members: Vec<String> =
        args.backends.iter().enumerate().map(|(i, a)| format!("{{ id = \"web{}\", address = \"{a}\" }}", i + 1)).collect();
    let toml = format!(
        "[authority]\ndns_listen = [\"{}\"]\ngrpc_listen = \"{}\"\nmetrics_listen = \"{}\"\nzones_dir = {:?}\nallow_transfer = [\"127.0.0.0/8\"]\n\n\
         [[pool]]\nname = \"www.demo.example.\"\npolicy = \"least-loaded\"\nanswers = 1\nttl = 5\nfallback = \"last-known\"\nstale_after = \"3s\"\nmembers = [{}]\n\n\
         [srp]\nport = {}\n[[srp.cluster]]\nname = \"demo\"\naddresses = [\"{}\"]\n[[srp.cluster.instance]]\nname = \"DEMO\"\ntcp = {}\n",
        args.dns,
        args.grpc,
        args.metrics,
        zones_dir.display().to_string(),
        members.join(", "),
        args.srp.port(),
        args.srp.ip(),
        args.sql_port,
    );
    let config = Config::from_toml(&toml)?;

    // The backends first, so the answer always points at something that listens.
    let mut backends = Vec::new();
    for (i, addr) in args.backends.iter().enumerate() {
        let listener =
            TcpListener::bind((*addr, 8080)).await.with_context(|| format!("cannot listen on {addr}:8080 for backend web{}", i + 1))?;
        backends.push(tokio::spawn(backend(listener, format!("web{}", i + 1), shutdown.clone())));
    }
    let sql_addr = SocketAddr::new(args.srp.ip(), args.sql_port);
    let sql = TcpListener::bind(sql_addr).await.with_context(|| format!("cannot listen on {sql_addr} for the SQL instance DEMO"))?;
    backends.push(tokio::spawn(sql_instance(sql, "DEMO", shutdown.clone())));
    let authority = Authority::start(&config, None, shutdown.clone()).await?;
    // One monitor per backend, as on real hosts: a tcp check of the
    // backend and its load read from a file the simulator writes.
    let load_files: Vec<PathBuf> = (0..args.backends.len()).map(|i| zones_dir.join(format!(".web{}.load", i + 1))).collect();
    tokio::spawn(simulate_loads(load_files.clone(), args.period, shutdown.clone()));
    let mut monitors = Vec::new();
    for (i, (addr, load)) in args.backends.iter().zip(&load_files).enumerate() {
        let toml = format!(
            "[monitor]\nhost = \"web{n}\"\nreport_to = [\"http://{grpc}\"]\nrefresh = \"1s\"\n\
             [[monitor.check]]\npool = \"www.demo.example.\"\nkind = \"tcp\"\ntarget = \"{addr}:8080\"\ninterval = \"500ms\"\n\
             [[monitor.check]]\npool = \"www.demo.example.\"\nkind = \"file\"\ntarget = {load:?}\ninterval = \"500ms\"\n",
            n = i + 1,
            grpc = args.grpc,
            load = load.display().to_string(),
        );
        let mc = Config::from_toml(&toml)?.monitor.expect("monitor section");
        // The authority in this process has already fitted the descriptors.
        let limits = mc.limits.clone();
        monitors.push(crate::monitor::Monitor::start(mc, &limits, shutdown.clone()).await?);
    }

    let dns = args.dns;
    println!("vnamed demo is running");
    println!("  DNS authority  {dns} (UDP and TCP), zone demo.example.");
    println!("  gRPC API       {}", args.grpc);
    println!("  monitors       one per backend (tcp check + simulated load file), reporting over gRPC");
    println!("  status page    http://{}/  (live; metrics at /metrics)", args.metrics);
    println!("  zone file      {}", zone_path.display());
    println!("  SRP responder  {} (UDP), cluster demo, instance DEMO at {sql_addr}", args.srp);
    for (i, a) in args.backends.iter().enumerate() {
        println!("  backend web{}   http://{a}:8080/ (simulated load drifts over {:.0}s)", i + 1, args.period);
    }
    println!();
    println!("Try:");
    println!("  dig @{} -p {} www.demo.example        # a backend, drawn by its share (the least loaded get more)", dns.ip(), dns.port());
    println!("  vnamed status --server http://{}        # members, loads and shares", args.grpc);
    println!("  vnamed status --explain www.demo.example. --server http://{}   # why each share is what it is", args.grpc);
    println!("  vnamed member www.demo.example. web1 --admin down --server http://{}", args.grpc);
    println!("  curl http://$(dig +short @{} -p {} www.demo.example):8080/", dns.ip(), dns.port());
    if args.srp.port() == 1434 {
        println!("  vnamed resolve '{}\\DEMO'              # the SQL instance's endpoints, over SRP", args.srp.ip());
        println!("  tsql -S '{}\\DEMO' -U sa -P x           # FreeTDS finds DEMO through the responder", args.srp.ip());
    }
    println!("Ctrl-C stops it.");

    if let Some(d) = args.duration {
        let stop = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(d).await;
            info!("demo duration reached");
            stop.cancel();
        });
    }
    authority.wait().await;
    for m in monitors {
        m.stop().await;
    }
    for b in backends {
        let _ = b.await;
    }
    Ok(())
}

/// Writes each backend's simulated load to the file its monitor reads,
/// once a second (atomically, so a monitor never reads half a file).
async fn simulate_loads(files: Vec<PathBuf>, period: f64, shutdown: CancellationToken) {
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        let t = start.elapsed().as_secs_f64();
        for (i, path) in files.iter().enumerate() {
            let text = format!("load={:.3}\n", simulated_load(i, t, period));
            if let Err(error) = crate::sys::fs::write_atomic(path, &text) {
                warn!(%error, file = %path.display(), "cannot write simulated load");
            }
        }
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// A tiny HTTP server that says which backend answered.
/// A simulated SQL Server instance: answers a TDS PRELOGIN, accepting its
/// own instance name only, then closes (there is no database behind it).
async fn sql_instance(listener: TcpListener, name: &'static str, shutdown: CancellationToken) {
    loop {
        let (mut stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(error) => { warn!(%error, "sql instance accept failed"); continue; }
            },
            _ = shutdown.cancelled() => return,
        };
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf)).await else { return };
            let asked = crate::srp::tds::requested_instance(&buf[..n]);
            let _ = stream.write_all(&crate::srp::tds::response(asked.is_some_and(|a| a.eq_ignore_ascii_case(name)))).await;
        });
    }
}

async fn backend(listener: TcpListener, id: String, shutdown: CancellationToken) {
    let limit = std::sync::Arc::new(tokio::sync::Semaphore::new(256));
    loop {
        let (mut stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(error) => { warn!(%error, "backend accept failed"); continue; }
            },
            _ = shutdown.cancelled() => return,
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else { continue };
        let id = id.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            let _ = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf)).await;
            let body = format!("hello from {id}\n");
            let reply = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len());
            let _ = stream.write_all(reply.as_bytes()).await;
            drop(permit);
        });
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_least_loaded_backend_changes_over_a_period() {
        let best =
            |t: f64| (0..3).min_by(|&a, &b| super::simulated_load(a, t, 30.0).total_cmp(&super::simulated_load(b, t, 30.0))).unwrap();
        let seen: std::collections::HashSet<usize> = (0..30).map(|t| best(t as f64)).collect();
        assert_eq!(seen.len(), 3);
    }
}
