//! Frames to the dispatcher: any bytes, in L4/2 and L4/3, inbound and
//! outbound, never panic; a frame the engine rewrites for a server still
//! parses, with a valid IP checksum.

#![no_main]

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use vnamed::dispatch::engine::{Engine, Mode, Server, Verdict, Vip};
use vnamed::dispatch::frame::{ETH_HEADER, parse_tcp4};
use vnamed::dispatch::splice::{Route, Splicer};

fuzz_target!(|data: &[u8]| {
    let t = Instant::now();
    for mode in [Mode::L42, Mode::L43] {
        let vip = Vip { ip: Ipv4Addr::new(10, 0, 0, 100), ports: vec![], mode };
        let mut e = Engine::new(vec![vip], [2, 0, 0, 0, 0, 1], Duration::from_secs(60), Duration::from_secs(5), t);
        e.set_servers(0, vec![Server { ip: Ipv4Addr::new(10, 0, 1, 1), mac: Some([2, 0, 0, 0, 1, 1]) }], true);
        let mut f = data.to_vec();
        match e.inbound(&mut f, t) {
            Verdict::Switch | Verdict::Route { .. } => assert!(parse_tcp4(&f, ETH_HEADER).is_ok()),
            _ => {}
        }
        let mut g = data.to_vec();
        let _ = e.outbound(&mut g, t);
    }
    // L7: any packet, from a client or a server; every packet sent is valid.
    let mut s = Splicer::new(Ipv4Addr::new(10, 0, 0, 100), 80, Ipv4Addr::new(10, 0, 0, 9), vec![Route { prefix: "/i/".into(), class: 1 }], 2, Duration::from_secs(60), (1, std::time::Instant::now()));
    s.set_servers(0, vec![Ipv4Addr::new(10, 0, 1, 1)], true);
    s.set_servers(1, vec![Ipv4Addr::new(10, 0, 1, 2)], false);
    for half in data.chunks(data.len() / 2 + 1) {
        for (p, _) in s.from_client(half, t).into_iter().chain(s.from_server(half, t)) {
            assert!(parse_tcp4(&p, 0).is_ok());
        }
    }
});
