//! The ring's monitoring cost per member as the ring grows: N members of
//! the pure state machine on a simulated network (zero latency, virtual
//! clock) run for a while; the CPU time spent inside the members (the
//! simulator's own bookkeeping is not counted), divided by members and by
//! simulated seconds, should stay flat from 10 to 1,000 members.
//!
//! usage: cargo run --release --example ring_cost [SECONDS]

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use vnamed::ring::member::{Member, Timing, To};

fn run(n: usize, secs: u64) -> (Duration, u64) {
    let timing = Timing::default();
    let start = Instant::now();
    let mut now = start;
    let addrs: Vec<SocketAddr> = (0..n).map(|i| SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 7946))).collect();
    let view: BTreeMap<SocketAddr, bool> = addrs.iter().map(|a| (*a, true)).collect();
    let mut nodes: BTreeMap<SocketAddr, Member> = addrs.iter().map(|a| (*a, Member::formed(*a, &view, timing, now))).collect();
    let end = now + Duration::from_secs(secs);
    let mut messages = 0u64;
    let mut cpu = Duration::ZERO;
    let mut timed = |f: &mut dyn FnMut()| {
        let t = Instant::now();
        f();
        cpu += t.elapsed();
    };
    let mut queue = VecDeque::new();
    loop {
        // Deliver until quiet.
        loop {
            for (a, m) in nodes.iter_mut() {
                while let Some((to, msg)) = m.poll_transmit() {
                    queue.push_back((*a, to, msg));
                }
                while m.poll_event().is_some() {}
            }
            if queue.is_empty() {
                break;
            }
            while let Some((from, to, msg)) = queue.pop_front() {
                match to {
                    To::One(t) => {
                        messages += 1;
                        if let Some(m) = nodes.get_mut(&t) {
                            timed(&mut || m.handle(now, from, msg.clone()));
                        }
                    }
                    To::All => {
                        for (t, m) in nodes.iter_mut() {
                            if *t != from {
                                messages += 1;
                                timed(&mut || m.handle(now, from, msg.clone()));
                            }
                        }
                    }
                }
            }
        }
        let Some(next) = nodes.values().filter_map(|m| m.poll_timeout()).min() else { break };
        if next > end {
            break;
        }
        now = now.max(next);
        for m in nodes.values_mut() {
            if m.poll_timeout().is_some_and(|t| t <= now) {
                timed(&mut || m.handle_timeout(now));
            }
        }
    }
    (cpu, messages)
}

fn main() {
    let secs: u64 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(60);
    println!("{:>8} {:>14} {:>22} {:>22}", "members", "cpu (ms)", "cpu/member/s (us)", "messages/member/s");
    for n in [10usize, 100, 1000] {
        let (cpu, messages) = run(n, secs);
        let per = cpu.as_secs_f64() * 1e6 / (n as f64 * secs as f64);
        println!("{n:>8} {:>14.1} {per:>22.2} {:>22.2}", cpu.as_secs_f64() * 1e3, messages as f64 / (n as f64 * secs as f64));
    }
}
