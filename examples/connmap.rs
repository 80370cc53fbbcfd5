//! The connection map's memory for N connections (default 1,000,000):
//! the process's resident set before and after filling it, and the cost of
//! a lookup and of an expiry pass.
//!
//!     cargo run --release --example connmap -- 1000000

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use vnamed::dispatch::conntrack::ConnMap;

fn rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0)
}

fn main() {
    let n: u32 = std::env::args().nth(1).map(|s| s.parse().expect("a count")).unwrap_or(1_000_000);
    let t = Instant::now();
    let before = rss_kb();
    let mut m = ConnMap::new(Duration::from_secs(300), Duration::from_secs(10), t).with_capacity(2 * n as usize);
    let servers = [Ipv4Addr::new(10, 1, 0, 1), Ipv4Addr::new(10, 1, 0, 2), Ipv4Addr::new(10, 1, 0, 3)];
    let fill = Instant::now();
    for i in 0..n {
        // Clients from 10.128.0.0/9, ports 1024..; as a real spread would be.
        let client = (Ipv4Addr::from(0x0A80_0000 + i / 60_000), 1024 + (i % 60_000) as u16);
        m.insert(client, servers[(i % 3) as usize], 0, true, t);
    }
    let fill = fill.elapsed();
    let after = rss_kb();
    let look = Instant::now();
    let mut found = 0u32;
    for i in (0..n).step_by(7) {
        let client = (Ipv4Addr::from(0x0A80_0000 + i / 60_000), 1024 + (i % 60_000) as u16);
        found += m.touch(client, true, t).is_some() as u32;
    }
    let lookups = n.div_ceil(7);
    let look = look.elapsed();
    let exp = Instant::now();
    let gone = m.expire(t + Duration::from_secs(1));
    let exp = exp.elapsed();
    assert_eq!(found, lookups);
    assert_eq!(gone, 0);
    println!("connections           {}", m.len());
    println!("map memory (MB)       {:.1}   (target: <= 200 for 1,000,000)", (after - before) as f64 / 1024.0);
    println!("bytes per connection  {:.1}", (after - before) as f64 * 1024.0 / n as f64);
    println!("insert (ns)           {:.0}", fill.as_nanos() as f64 / n as f64);
    println!("lookup (ns)           {:.0}", look.as_nanos() as f64 / lookups as f64);
    println!("expiry pass (ms)      {:.1}", exp.as_secs_f64() * 1e3);
}
