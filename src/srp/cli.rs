//! `vnamed resolve`: the resolver on the command line. Prints each
//! instance's endpoints per protocol; `--connect` also connects and checks
//! that the server answers to the instance's name.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use super::codec::InstanceInfo;
use super::resolver::{Resolver, split};

#[derive(clap::Args)]
pub struct ResolveArgs {
    /// CLUSTER\INSTANCE (the cluster a name or an address), or with
    /// --enumerate just CLUSTER.
    pub name: String,
    /// List every instance of the cluster.
    #[arg(long)]
    pub enumerate: bool,
    /// Connect to the TCP endpoint and verify the server answers to the
    /// instance's name (purging a stale cached endpoint and resolving again).
    #[arg(long)]
    pub connect: bool,
    /// Keep resolved instances in this file between runs.
    #[arg(long)]
    pub cache: Option<PathBuf>,
    #[arg(long, default_value_t = 1434)]
    pub port: u16,
    /// Look the cluster name up with this DNS server (say, the authority:
    /// 127.0.0.1:5353) rather than the system resolver.
    #[arg(long)]
    pub dns: Option<std::net::SocketAddr>,
    /// Wait this long for each reply (tried three times).
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

fn print(info: &InstanceInfo, host: &str) {
    println!(
        "{}\\{}  server {}  version {}{}",
        host,
        info.instance_name,
        info.server_name,
        info.version,
        if info.clustered { "  clustered" } else { "" }
    );
    if let Some(p) = info.tcp {
        println!("  tcp  {host}:{p}");
    }
    if let Some(np) = &info.np {
        println!("  np   {np}");
    }
    if let Some(via) = &info.via {
        println!("  via  {via}");
    }
    for (k, v) in &info.other {
        println!("  {k:<4} {v}");
    }
}

pub async fn resolve(args: ResolveArgs) -> anyhow::Result<ExitCode> {
    let mut r = Resolver::new(args.port);
    r.timeout = args.timeout;
    r.dns = args.dns;
    if let Some(path) = args.cache {
        r = r.with_cache_file(path);
    }
    if args.enumerate {
        for info in r.enumerate(&args.name).await? {
            print(&info, &args.name);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let (cluster, instance) = split(&args.name)?;
    let started = Instant::now();
    let resolved = if args.connect { r.connect(cluster, instance).await?.1 } else { r.resolve(cluster, instance).await? };
    print(&resolved.info, &resolved.cluster.to_string());
    let us = started.elapsed().as_micros();
    eprintln!("{} in {us} us{}", if resolved.cached { "cached" } else { "resolved" }, if args.connect { ", verified" } else { "" });
    Ok(ExitCode::SUCCESS)
}
