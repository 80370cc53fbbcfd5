//! Shared helpers for the integration tests: a `vnamed` authority on its
//! own loopback address (a real process, or, where a test needs neither
//! restarts nor the log, the library inside the test process on ports the
//! kernel picks), and the real `dig` to talk to it. Every process or
//! authority a helper starts is stopped when its handle drops.

#![allow(dead_code)]

pub mod etcd;

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub const VNAMED: &str = env!("CARGO_BIN_EXE_vnamed");

/// A loopback address no other test in this run uses.
pub fn unique_ip() -> Ipv4Addr {
    static NEXT: AtomicU32 = AtomicU32::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let pid = std::process::id();
    Ipv4Addr::new(127, 100 + (pid % 100) as u8, (pid / 100 % 250) as u8 + 1, n as u8)
}

pub const ZONE: &str = "\
; operator comment at the top
$TTL 300
@       IN SOA ns1 hostmaster ( 100 3600 600 86400 30 ) ; keep me
        IN NS  ns1
ns1     IN A   IP
alias   IN CNAME static
static  IN A   192.0.2.10
mail    IN MX  10 ns1
sub     IN NS  ns.sub
ns.sub  IN A   192.0.2.53
";

/// The gRPC and metrics ports of every test authority (each has its own address).
pub const GRPC_PORT: u16 = 7400;
pub const METRICS_PORT: u16 = 9300;

/// A running `vnamed authority` with its own directory and address.
pub struct Authority {
    pub ip: Ipv4Addr,
    pub port: u16,
    pub grpc: String,
    pub metrics: u16,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    child: Option<Child>,
    inside: Option<Inside>,
    log: PathBuf,
    /// The open-files limit (soft and hard) the process starts with.
    pub nofile: Option<u64>,
}

/// An authority run by the library on a thread of the test process.
struct Inside {
    shutdown: tokio_util::sync::CancellationToken,
    thread: std::thread::JoinHandle<()>,
}

impl Authority {
    /// Writes `zones` (file name → text, `IP` replaced by the address) and a
    /// config with `pools` appended, then starts the authority.
    pub fn start(zones: &[(&str, &str)], pools: &str) -> Self {
        Self::start_with(zones, pools, "")
    }

    pub fn start_with(zones: &[(&str, &str)], pools: &str, authority_extra: &str) -> Self {
        let mut a = Self::prepare(zones, pools, authority_extra, (5300, GRPC_PORT, METRICS_PORT));
        a.spawn();
        a
    }

    /// Not started: set what the process starts with, then `spawn`.
    pub fn prepared(zones: &[(&str, &str)], pools: &str, authority_extra: &str) -> Self {
        Self::prepare(zones, pools, authority_extra, (5300, GRPC_PORT, METRICS_PORT))
    }

    /// The process id, while running as a process.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// The same authority inside the test process, through the library,
    /// on ports the kernel picks (the handle says which): ready when it
    /// returns. It cannot be restarted, and logs to the test's stderr
    /// (`log` is empty); tests of those use `start`.
    pub fn in_process(zones: &[(&str, &str)], pools: &str) -> Self {
        Self::in_process_with(zones, pools, "")
    }

    pub fn in_process_with(zones: &[(&str, &str)], pools: &str, authority_extra: &str) -> Self {
        Self::in_process_on(zones, pools, authority_extra, |store| store)
    }

    /// `in_process_with`, the state store's writes going through `disk`.
    pub fn in_process_on(
        zones: &[(&str, &str)],
        pools: &str,
        authority_extra: &str,
        disk: impl FnOnce(std::sync::Arc<vnamed::state::Store>) -> std::sync::Arc<dyn vnamed::state::Durable> + Send + 'static,
    ) -> Self {
        let mut a = Self::prepare(zones, pools, authority_extra, (0, 0, 0));
        let config = vnamed::config::Config::read(&a.config).unwrap();
        let path = a.config.clone();
        let shutdown = tokio_util::sync::CancellationToken::new();
        let (tx, rx) = std::sync::mpsc::channel();
        let token = shutdown.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            rt.block_on(async move {
                match vnamed::authority::Authority::start_on(&config, Some(&path), token, disk).await {
                    Ok(running) => {
                        let _ = tx.send(Ok((running.dns[0].port(), running.grpc.unwrap().port(), running.metrics.unwrap().port())));
                        running.wait().await;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(format!("{e:#}")));
                    }
                }
            });
        });
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok((dns, grpc, metrics))) => {
                a.port = dns;
                a.grpc = format!("http://{}:{grpc}", a.ip);
                a.metrics = metrics;
            }
            Ok(Err(e)) => panic!("the authority did not start: {e}"),
            Err(e) => panic!("the authority did not start in time: {e}"),
        }
        a.inside = Some(Inside { shutdown, thread });
        a
    }

    /// Writes `zones` and the config for ports (DNS, gRPC, metrics).
    fn prepare(zones: &[(&str, &str)], pools: &str, authority_extra: &str, (port, grpc_port, metrics): (u16, u16, u16)) -> Self {
        let ip = unique_ip();
        let dir = tempfile::tempdir().unwrap();
        let zones_dir = dir.path().join("zones");
        std::fs::create_dir(&zones_dir).unwrap();
        for (name, text) in zones {
            std::fs::write(zones_dir.join(name), text.replace("IP", &ip.to_string())).unwrap();
        }
        let config = dir.path().join("vnamed.toml");
        let transfer = if authority_extra.contains("allow_transfer") { "" } else { "allow_transfer = [\"127.0.0.0/8\"]\n" };
        std::fs::write(
            &config,
            format!(
                "[authority]\ndns_listen = [\"{ip}:{port}\"]\ngrpc_listen = \"{ip}:{grpc_port}\"\nmetrics_listen = \"{ip}:{metrics}\"\nzones_dir = \"{}\"\n{transfer}{authority_extra}\n{pools}\n",
                zones_dir.display()
            ),
        )
        .unwrap();
        Self {
            ip,
            port,
            grpc: format!("http://{ip}:{grpc_port}"),
            metrics,
            log: dir.path().join("vnamed.log"),
            dir,
            config,
            child: None,
            inside: None,
            nofile: None,
        }
    }

    pub fn zones_dir(&self) -> PathBuf {
        self.dir.path().join("zones")
    }

    /// Starts (or restarts) the process and waits until it answers.
    pub fn spawn(&mut self) {
        assert!(self.inside.is_none(), "an authority inside the test process cannot be restarted");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        // The listeners are bound before the rest starts: ready is when the
        // last step of the start-up says so.
        let started = |a: &Self| a.log().matches("gRPC API serving").count();
        let before = started(self);
        let mut command = Command::new(VNAMED);
        command.args(["authority", "--config"]).arg(&self.config).env("RUST_LOG", "info").stdout(Stdio::null()).stderr(log);
        if let Some(n) = self.nofile {
            use std::os::unix::process::CommandExt;
            // SAFETY: only setrlimit, which is async-signal-safe, runs in the child.
            unsafe {
                command.pre_exec(move || {
                    let l = libc::rlimit { rlim_cur: n, rlim_max: n };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &l) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = command.spawn().unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("vnamed exited early ({status}):\n{}", self.log());
            }
            // Ready when every listener is: DNS, gRPC and metrics are bound
            // one after the other, so one being up says nothing of the rest.
            let up = |port: u16| std::net::TcpStream::connect((self.ip, port)).is_ok();
            if started(self) > before && up(self.port) && up(GRPC_PORT) && up(self.metrics) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("vnamed did not start listening:\n{}", self.log());
    }

    /// Sends SIGTERM and waits for a clean exit.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        assert!(self.inside.is_none(), "an authority inside the test process is stopped by dropping it");
        let mut child = self.child.take().expect("running");
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                return s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("vnamed did not stop on SIGTERM:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: no goodbye.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `dig @ip -p port ARGS +short`-style query returning dig's output.
    pub fn dig(&self, args: &str) -> String {
        dig(IpAddr::V4(self.ip), self.port, args)
    }

    /// Runs a vnamed admin subcommand against this authority.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(VNAMED).args(args).args(["--server", &self.grpc]).output().unwrap()
    }

    pub fn zone_text(&self, file: &str) -> String {
        std::fs::read_to_string(self.zones_dir().join(file)).unwrap()
    }
}

impl Drop for Authority {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(inside) = self.inside.take() {
            inside.shutdown.cancel();
            let _ = inside.thread.join();
        }
    }
}

/// Starts `vnamed ROLE` with `config` written to `DIR/NAME.toml`, its log
/// appended to `DIR/NAME.log` (so a restarted process keeps one log).
pub fn spawn_role(dir: &Path, role: &str, name: &str, config: &str) -> Proc {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, config).unwrap();
    let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join(format!("{name}.log"))).unwrap();
    Proc(
        Command::new(VNAMED).args([role, "--config"]).arg(&path).env("RUST_LOG", "info").stdout(Stdio::null()).stderr(log).spawn().unwrap(),
    )
}

/// Starts `vnamed monitor` as `host`, reporting to `authority` (token
/// `t0ken`) on one TCP check of `target`:8080 for pool `www.example.test.`,
/// about member `member` (the monitor's own host when `None`), with
/// `rise` successes before down -> up.
pub fn tcp_monitor(dir: &Path, host: &str, authority: &Authority, target: Ipv4Addr, member: Option<&str>, rise: u32) -> Proc {
    let member = member.map(|m| format!("member = \"{m}\"\n")).unwrap_or_default();
    let config = format!(
        r#"
[monitor]
host = "{host}"
report_to = ["{grpc}"]
token = "t0ken"
refresh = "500ms"

[[monitor.check]]
pool = "www.example.test."
{member}kind = "tcp"
target = "{target}:8080"
interval = "100ms"
timeout = "200ms"
rise = {rise}
fall = 1
"#,
        grpc = authority.grpc
    );
    spawn_role(dir, "monitor", host, &config)
}

/// A status report as a monitor sends it.
pub fn member_report(pool: &str, member: &str, up: bool, metrics: &[(&str, f64)]) -> vnamed::grpc::v1::MemberReport {
    vnamed::grpc::v1::MemberReport {
        pool: pool.into(),
        member: member.into(),
        up,
        metrics: metrics.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        observed_unix_ms: 0,
        check: "test".into(),
        addresses: Vec::new(),
    }
}

/// A child process killed (SIGKILL) and reaped when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs the real `dig` with short timeouts.
pub fn dig(ip: IpAddr, port: u16, args: &str) -> String {
    let out = Command::new("dig")
        .arg(format!("@{ip}"))
        .args(["-p", &port.to_string(), "+time=2", "+tries=1"])
        .args(args.split_whitespace())
        .output()
        .expect("dig is installed (the test command installs it)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The response to `GET /metrics` at `addr` (plain HTTP/1.0, no `Accept`:
/// the Prometheus text format), headers included.
pub fn scrape(addr: (Ipv4Addr, u16)) -> String {
    scrape_as(addr, None)
}

/// The response to `GET /metrics` at `addr` asking for `accept`.
pub fn scrape_as(addr: (Ipv4Addr, u16), accept: Option<&str>) -> String {
    use std::io::{Read, Write};
    let Ok(mut c) = std::net::TcpStream::connect(addr) else { return String::new() };
    let accept = accept.map(|a| format!("accept: {a}\r\n")).unwrap_or_default();
    let _ = c.write_all(format!("GET /metrics HTTP/1.0\r\nhost: x\r\n{accept}\r\n").as_bytes());
    let mut s = String::new();
    let _ = c.read_to_string(&mut s);
    s
}

/// Waits until something accepts TCP connections at `addr`: readiness,
/// bounded by `within`, instead of a fixed sleep. Panics naming what never came up.
pub fn wait_listening(addr: std::net::SocketAddr, within: Duration) {
    let up = eventually(within, || std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok());
    assert!(up.is_some(), "nothing listening at {addr} after {within:?}");
}

/// Polls `f` until it returns true or `within` passes; returns the time it took.
pub fn eventually(within: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < within {
        if f() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    None
}

/// `named-checkzone ZONE FILE`: Ok with its output when it accepts the file.
pub fn named_checkzone(zone: &str, file: &Path) -> Result<String, String> {
    let out = Command::new("named-checkzone")
        .args([zone, file.to_str().unwrap()])
        .output()
        .expect("named-checkzone is installed (the test command installs it)");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if out.status.success() { Ok(text) } else { Err(text) }
}
