//! Drives an SRP responder as fast as it answers: THREADS threads, each
//! with its own socket, keep WINDOW CLNT_UCAST_INST requests in flight for
//! SECONDS and count the replies.
//!
//!     cargo run --release --example srp_load -- 127.0.0.1:1434 SALES 10 2 32

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let target: SocketAddr = args.get(1).map(|s| s.parse().expect("address")).unwrap_or_else(|| "127.0.0.1:1434".parse().unwrap());
    let instance = args.get(2).cloned().unwrap_or_else(|| "SALES".into());
    let seconds: f64 = args.get(3).map(|s| s.parse().expect("seconds")).unwrap_or(10.0);
    let threads: usize = args.get(4).map(|s| s.parse().expect("threads")).unwrap_or(2);
    let window: usize = args.get(5).map(|s| s.parse().expect("window")).unwrap_or(32);
    let request = [&[0x04][..], instance.as_bytes(), &[0]].concat();
    let replies = Arc::new(AtomicU64::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let end = Instant::now() + Duration::from_secs_f64(seconds);
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let (replies, sent, request) = (replies.clone(), sent.clone(), request.clone());
            std::thread::spawn(move || {
                let s = UdpSocket::bind(if target.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }).unwrap();
                s.connect(target).unwrap();
                s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
                let mut buf = [0u8; 2048];
                while Instant::now() < end {
                    for _ in 0..window {
                        let _ = s.send(&request);
                    }
                    sent.fetch_add(window as u64, Ordering::Relaxed);
                    for _ in 0..window {
                        match s.recv(&mut buf) {
                            Ok(n) if n > 3 && buf[0] == 0x05 => {
                                replies.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(_) => {}
                            Err(_) => break,
                        }
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let (r, s) = (replies.load(Ordering::Relaxed), sent.load(Ordering::Relaxed));
    println!(
        "sent {s} replies {r} in {seconds:.1} s: {:.0} resolutions/s, {:.2}% unanswered",
        r as f64 / seconds,
        100.0 * (s - r) as f64 / s.max(1) as f64
    );
}
