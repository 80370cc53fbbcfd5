//! A listener in a process out of file descriptors backs off instead of
//! spinning, says so once, and accepts again as soon as descriptors are
//! free. Alone in its test binary: it lowers this process's own limit.

use std::time::{Duration, Instant};

use vnamed::sys::accept::Gate;

fn set_soft_limit(n: u64) {
    let mut l = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit read and write only the struct given.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut l), 0);
        l.rlim_cur = n.min(l.rlim_max);
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &l), 0);
    }
}

fn open_descriptors() -> u64 {
    std::fs::read_dir("/proc/self/fd").unwrap().count() as u64
}

#[tokio::test(flavor = "current_thread")]
async fn out_of_descriptors_the_gate_backs_off_and_recovers() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut gate = Gate::new(listener, "test", 1000, Duration::from_secs(30), Duration::from_secs(30));
    let counters = gate.counters();
    // Clients first (their descriptors count too), then the limit at
    // what is open now plus five: a few accepts later there is none.
    let clients: Vec<_> = (0..40).map(|_| std::net::TcpStream::connect(addr).unwrap()).collect();
    set_soft_limit(open_descriptors() + 5);
    let mut accepted = Vec::new();
    let started = Instant::now();
    let cpu = cpu_time();
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            accepted.push(gate.accept().await);
        }
    })
    .await;
    let busy = (cpu_time() - cpu).as_secs_f64() / started.elapsed().as_secs_f64();
    let failures = counters.exhausted.get();
    eprintln!("out of descriptors: {} accepted, {failures} failed accepts in 2 s, {:.0}% CPU", accepted.len(), busy * 100.0);
    assert!(accepted.len() < 10, "{}", accepted.len());
    assert!((1..=20).contains(&failures), "backs off (10 ms doubling to 1 s), not a spin: {failures} attempts");
    assert!(busy < 0.2, "{:.0}% CPU", busy * 100.0);
    // Descriptors free again: the waiting clients are accepted.
    drop(accepted);
    set_soft_limit(u64::MAX);
    let got = tokio::time::timeout(Duration::from_secs(3), async {
        for _ in 0..30 {
            gate.accept().await;
        }
    })
    .await;
    assert!(got.is_ok(), "accepting again within the longest back-off");
    drop(clients);
}

fn cpu_time() -> Duration {
    let mut u = libc::rusage { ..unsafe { std::mem::zeroed() } };
    // SAFETY: getrusage writes only the struct given.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let t = |v: libc::timeval| Duration::from_secs(v.tv_sec as u64) + Duration::from_micros(v.tv_usec as u64);
    t(u.ru_utime) + t(u.ru_stime)
}
