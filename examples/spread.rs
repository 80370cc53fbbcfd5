//! A deterministic simulation of how a pool's answers spread load, driving
//! the real policy code (the pool's decision, its shares and the schedule
//! the DNS path draws answers from) on a virtual clock. Resolvers cache
//! each answer for its TTL and send their clients' requests where it
//! points; backends of unequal capacity serve them, and their load comes
//! back as reports every second, the way monitors report it.
//!
//! Four scenarios (steady load; a backend failing and coming back at full
//! capacity, or cold, taking a minute to warm up; a backend losing half its
//! capacity for a while), each under three ways of
//! answering: `select = "best"` (the least loaded member only), shares
//! (vnamed's default), and static weights drawn per query (a model of
//! weighted random selection by fixed weights, as in PowerDNS
//! `pickwrandom` or gdnsd's `weighted` plugin). For each it prints:
//!
//! - peak/mean: the busiest backend's utilisation over the mean of all
//!   backends in service, averaged over the seconds measured (1.00 is a
//!   perfect spread);
//! - over cap: seconds in which some backend in service had more requests
//!   than it could serve, though all of them together could;
//! - changes: how often the pool's answer (or its shares) changed;
//! - recovery: for the backend that came back, seconds until the share of
//!   new answers the authority gives it reached its fair share (its
//!   capacity over the total, within 15%) and stayed there: under `best`
//!   that share is all or nothing, under static weights it is its weight
//!   as soon as it reports up, under shares it is what the pool serves.
//!
//! Run it with `scripts/bench/spread.sh` (or `cargo run --release
//! --example spread`). The same seed gives the same table. `SPREAD_POOL`
//! adds settings to the simulated pool (`;` between them, e.g.
//! `SPREAD_POOL='smoothing = 0.5;margin = 0.15'`), and `SPREAD_TRACE=1`
//! prints each second's shares and utilisation under shares.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use vnamed::clock::Now;
use vnamed::config::Config;
use vnamed::dns::snapshot::Drawn;
use vnamed::pool::{Decision, Metrics, PoolState};

/// Requests per second each backend serves when warm.
const CAPACITY: [f64; 5] = [1000.0, 1000.0, 2000.0, 3000.0, 3000.0];
/// Demand as a fraction of the total capacity.
const DEMAND: f64 = 0.6;
const RESOLVERS: usize = 2000;
const TTL: u32 = 20;
/// Seconds before measuring (caches fill, shares settle), then measured.
const WARMUP: u64 = 60;
const MEASURED: u64 = 240;
const TICKS_PER_SECOND: u64 = 10;
/// The failing backend, when it fails and comes back, and how long it
/// takes to warm up (from 30% of its capacity to all of it: caches and
/// connection pools filling, code warming up).
const FAILING: usize = 2;
const FAIL_AT: u64 = 100;
const BACK_AT: u64 = 160;
const WARM_UP: f64 = 60.0;
/// The backend that loses half its capacity, from when to when.
const STEPPING: usize = 4;
const STEP_AT: u64 = 120;
const STEP_END: u64 = 220;
/// Noise on reported load (standard deviation).
const NOISE: f64 = 0.02;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Best,
    Shares,
    Static,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Scenario {
    Steady,
    FailAndRecover,
    FailAndRecoverCold,
    CapacityStep,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Steady => "steady load",
            Scenario::FailAndRecover => "a backend fails and comes back",
            Scenario::FailAndRecoverCold => "a backend fails and comes back cold (60 s to warm up)",
            Scenario::CapacityStep => "a backend loses half its capacity",
        }
    }

    /// Backend `i`'s capacity at second `t` (0 while it is down).
    fn capacity(self, i: usize, t: f64) -> f64 {
        let c = CAPACITY[i];
        match self {
            Scenario::FailAndRecover | Scenario::FailAndRecoverCold if i == FAILING => {
                if t < FAIL_AT as f64 {
                    c
                } else if t < BACK_AT as f64 {
                    0.0
                } else if self == Scenario::FailAndRecoverCold {
                    c * (0.3 + 0.7 * ((t - BACK_AT as f64) / WARM_UP).min(1.0))
                } else {
                    c
                }
            }
            Scenario::CapacityStep if i == STEPPING && (STEP_AT as f64..STEP_END as f64).contains(&t) => c / 2.0,
            _ => c,
        }
    }

    fn fails(self) -> bool {
        matches!(self, Scenario::FailAndRecover | Scenario::FailAndRecoverCold)
    }

    fn up(self, i: usize, t: f64) -> bool {
        !(self.fails() && i == FAILING && (FAIL_AT as f64..BACK_AT as f64).contains(&t))
    }
}

/// What one run measured.
struct Figures {
    peak_to_mean: f64,
    over_capacity: u64,
    changes: u64,
    recovery: Option<u64>,
}

fn address(i: usize) -> IpAddr {
    format!("192.0.2.{}", i + 1).parse().expect("an address")
}

fn pool(mode: Mode) -> PoolState {
    let members: Vec<String> = CAPACITY
        .iter()
        .enumerate()
        .map(|(i, c)| format!("{{ id = \"b{i}\", address = \"{}\", weight = {} }}", address(i), (*c / 100.0) as u32))
        .collect();
    let select = if mode == Mode::Best { "best" } else { "shares" };
    let text = format!(
        "[[pool]]\nname = \"www.example.\"\npolicy = \"least-loaded\"\nselect = \"{select}\"\nttl = {TTL}\nstale_after = \"3s\"\n\
         slow_start = \"30s\"\n{}\nmembers = [ {} ]\n",
        std::env::var("SPREAD_POOL").unwrap_or_default().replace(';', "\n"),
        members.join(", ")
    );
    let config = Config::from_toml(&text).expect("the simulated pool is valid");
    PoolState::from_config(&config.pool[0], Now::read())
}

/// A reproducible generator (SplitMix64), so every run is the same.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn normal(&mut self) -> f64 {
        let (u, v) = (self.unit().max(1e-12), self.unit());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}

struct Resolver {
    /// Requests per second its clients send.
    rate: f64,
    backend: Option<usize>,
    expires: u64,
}

/// The answer a query gets under `mode`.
fn answer(mode: Mode, d: &Decision, drawn: &Option<Drawn>, turn: &mut usize, alive: &[bool], rng: &mut Rng) -> Option<usize> {
    let index_of = |a: &IpAddr| (0..CAPACITY.len()).find(|i| address(*i) == *a);
    match mode {
        Mode::Static => {
            let total: f64 = (0..CAPACITY.len()).filter(|i| alive[*i]).map(|i| CAPACITY[i]).sum();
            let mut x = rng.unit() * total;
            for i in (0..CAPACITY.len()).filter(|i| alive[*i]) {
                x -= CAPACITY[i];
                if x < 0.0 {
                    return Some(i);
                }
            }
            None
        }
        Mode::Best => d.addresses.first().and_then(index_of),
        Mode::Shares => {
            *turn += 1;
            match drawn {
                Some(drawn) => d.addresses.get(drawn.lead(*turn)).and_then(index_of),
                None => d.addresses.first().and_then(index_of),
            }
        }
    }
}

fn run(scenario: Scenario, mode: Mode) -> Figures {
    let mut rng = Rng(0x5eed_0000 + scenario as u64);
    let t0 = Instant::now();
    let mut pool = pool(mode);
    let total: f64 = CAPACITY.iter().sum();
    let weights: Vec<f64> = (0..RESOLVERS).map(|_| rng.normal().exp()).collect();
    let wsum: f64 = weights.iter().sum();
    let ticks_ttl = u64::from(TTL) * TICKS_PER_SECOND;
    let mut resolvers: Vec<Resolver> =
        weights.iter().map(|w| Resolver { rate: DEMAND * total * w / wsum, backend: None, expires: rng.next() % ticks_ttl }).collect();
    let n = CAPACITY.len();
    let mut decision = pool.decide(t0);
    let mut drawn = Drawn::new(&decision.shares);
    let mut alive_reported = vec![true; n];
    let mut turn = 0usize;
    let mut last_load = vec![0.0; n];
    let (mut ratio_sum, mut seconds, mut over, mut changes) = (0.0, 0u64, 0u64, 0u64);
    // Per second: the share of new answers the failing backend gets.
    let mut given_share: Vec<f64> = Vec::new();
    for second in 0..WARMUP + MEASURED {
        let measuring = second >= WARMUP;
        let mut served = vec![0.0; n];
        let (mut given, mut to_failing) = (0u64, 0u64);
        let failing_share = match mode {
            Mode::Best => f64::from(decision.addresses.first() == Some(&address(FAILING))),
            Mode::Static if alive_reported[FAILING] => {
                CAPACITY[FAILING] / (0..n).filter(|i| alive_reported[*i]).map(|i| CAPACITY[i]).sum::<f64>()
            }
            Mode::Static => 0.0,
            Mode::Shares => decision.addresses.iter().position(|a| *a == address(FAILING)).map(|i| decision.shares[i]).unwrap_or(0.0),
        };
        for tick in 0..TICKS_PER_SECOND {
            let now = second * TICKS_PER_SECOND + tick;
            for r in resolvers.iter_mut() {
                if r.expires <= now {
                    r.backend = answer(mode, &decision, &drawn, &mut turn, &alive_reported, &mut rng);
                    r.expires = now + u64::from(decision.ttl) * TICKS_PER_SECOND;
                    given += 1;
                    to_failing += u64::from(r.backend == Some(FAILING));
                }
                if let Some(b) = r.backend {
                    served[b] += r.rate / TICKS_PER_SECOND as f64;
                }
            }
        }
        let t = second as f64 + 0.5;
        let util: Vec<Option<f64>> = (0..n).map(|i| scenario.up(i, t).then(|| served[i] / scenario.capacity(i, t).max(1e-9))).collect();
        let live: Vec<f64> = util.iter().flatten().copied().collect();
        if measuring {
            let mean = live.iter().sum::<f64>() / live.len() as f64;
            let peak = live.iter().copied().fold(0.0, f64::max);
            ratio_sum += peak / mean.max(1e-9);
            seconds += 1;
            over += u64::from(live.iter().any(|u| *u > 1.0));
            given_share.push(failing_share);
        }
        // The monitors report what they saw this second; the authority decides.
        let at = t0 + Duration::from_secs(second + 1);
        for i in 0..n {
            let up = scenario.up(i, second as f64 + 1.0);
            if let Some(u) = util[i] {
                last_load[i] = (u + NOISE * rng.normal()).max(0.0);
            }
            let load = if up { last_load[i] } else { 0.0 };
            let id = format!("b{i}");
            let smoothing = pool.smoothing;
            if let Some(m) = pool.member_mut(&id) {
                m.absorb(up, Metrics { load: Some(load), ..Metrics::default() }, Default::default(), smoothing, at);
            }
            if alive_reported[i] != up && measuring && mode == Mode::Static {
                changes += 1;
            }
            alive_reported[i] = up;
        }
        if std::env::var_os("SPREAD_TRACE").is_some() && mode == Mode::Shares && measuring {
            let shares: Vec<String> = (0..n).map(|i| format!("{:.3}", pool.spread.share_of(&format!("b{i}")).unwrap_or(0.0))).collect();
            let share = shares.join(" ");
            let u: Vec<String> = util.iter().map(|u| u.map(|u| format!("{u:.2}")).unwrap_or("-".into())).collect();
            eprintln!("{scenario:?} t={second} answers={given} to_failing={to_failing} shares={share} util={}", u.join(" "));
        }
        let next = pool.decide(at);
        if next != decision {
            changes += u64::from(measuring && mode != Mode::Static);
            drawn = Drawn::new(&next.shares);
            decision = next;
        }
    }
    let recovery = scenario.fails().then(|| recovery(&given_share)).flatten();
    Figures { peak_to_mean: ratio_sum / seconds as f64, over_capacity: over, changes, recovery }
}

/// Seconds from the failing backend's return until the share of answers
/// it is given is within 15% of its fair share and stays there.
fn recovery(given_share: &[f64]) -> Option<u64> {
    let fair = CAPACITY[FAILING] / CAPACITY.iter().sum::<f64>();
    let after = &given_share[(BACK_AT - WARMUP) as usize..];
    let settled = after.iter().rposition(|s| (s - fair).abs() > 0.15 * fair).map(|last_bad| last_bad + 1).unwrap_or(0);
    (settled < after.len()).then_some(settled as u64)
}

fn main() {
    println!(
        "{} resolvers (TTL {TTL} s), {} backends of capacity {:?} requests/s, demand {:.0}% of the total; \
         reports every second; {MEASURED} s measured after {WARMUP} s",
        RESOLVERS,
        CAPACITY.len(),
        CAPACITY,
        DEMAND * 100.0
    );
    for scenario in [Scenario::Steady, Scenario::FailAndRecover, Scenario::FailAndRecoverCold, Scenario::CapacityStep] {
        println!("\n{}", scenario.name());
        println!("  {:<16} {:>9} {:>9} {:>8} {:>9}", "answers", "peak/mean", "over cap", "changes", "recovery");
        for mode in [Mode::Best, Mode::Shares, Mode::Static] {
            let f = run(scenario, mode);
            let label = match mode {
                Mode::Best => "best",
                Mode::Shares => "shares",
                Mode::Static => "static weights",
            };
            let recovery = match (scenario.fails(), f.recovery) {
                (true, Some(s)) => format!("{s} s"),
                (true, None) => "never".into(),
                (false, _) => "-".into(),
            };
            println!("  {label:<16} {:>9.2} {:>7} s {:>8} {:>9}", f.peak_to_mean, f.over_capacity, f.changes, recovery);
        }
    }
}
