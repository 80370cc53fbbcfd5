//! A real etcd cluster of three nodes on loopback for the cluster tests:
//! each node on its own address, its data in a temporary directory, its
//! log kept for failure messages. Nodes can be killed (SIGKILL) and
//! started again with their data; every node is killed when the handle
//! drops.

use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::unique_ip;

pub struct EtcdCluster {
    pub ips: Vec<Ipv4Addr>,
    dir: tempfile::TempDir,
    nodes: Vec<Option<Child>>,
}

impl EtcdCluster {
    /// Starts `n` nodes and waits until the cluster has a leader.
    pub fn start(n: usize) -> Self {
        let ips: Vec<Ipv4Addr> = (0..n).map(|_| unique_ip()).collect();
        let mut c = Self { ips, dir: tempfile::tempdir().unwrap(), nodes: (0..n).map(|_| None).collect() };
        for i in 0..n {
            c.start_node(i);
        }
        c.wait_healthy(0);
        c
    }

    /// The client URLs, as `[cluster] endpoints` takes them.
    pub fn endpoints(&self) -> Vec<String> {
        self.ips.iter().map(|ip| format!("http://{ip}:2379")).collect()
    }

    /// The `[cluster]` section for a group under `prefix`.
    pub fn section(&self, prefix: &str) -> String {
        let endpoints: Vec<String> = self.endpoints().iter().map(|e| format!("\"{e}\"")).collect();
        format!("[cluster]\nbackend = \"etcd\"\nendpoints = [{}]\nprefix = \"{prefix}\"\ntimeout = \"2s\"\n", endpoints.join(", "))
    }

    pub fn start_node(&mut self, i: usize) {
        assert!(self.nodes[i].is_none(), "node {i} runs already");
        let initial: Vec<String> = self.ips.iter().enumerate().map(|(j, ip)| format!("n{j}=http://{ip}:2380")).collect();
        let ip = self.ips[i];
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join(format!("n{i}.log"))).unwrap();
        let child = Command::new("etcd")
            .args(["--name", &format!("n{i}")])
            .arg("--data-dir")
            .arg(self.dir.path().join(format!("n{i}")))
            .args(["--listen-client-urls", &format!("http://{ip}:2379")])
            .args(["--advertise-client-urls", &format!("http://{ip}:2379")])
            .args(["--listen-peer-urls", &format!("http://{ip}:2380")])
            .args(["--initial-advertise-peer-urls", &format!("http://{ip}:2380")])
            .args(["--initial-cluster", &initial.join(",")])
            .args(["--initial-cluster-state", "new", "--initial-cluster-token", "vnamed-test"])
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("etcd is installed (the test command installs etcd-server)");
        self.nodes[i] = Some(child);
    }

    /// SIGKILL: the node is gone without a word.
    pub fn kill_node(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Whether node `i` says the cluster is healthy (it has a leader and
    /// can commit), by etcd's `/health`.
    pub fn healthy(&self, i: usize) -> bool {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect_timeout(&(self.ips[i], 2379).into(), Duration::from_millis(500)) else { return false };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        if s.write_all(format!("GET /health HTTP/1.0\r\nHost: {}\r\n\r\n", self.ips[i]).as_bytes()).is_err() {
            return false;
        }
        let mut body = String::new();
        let _ = s.read_to_string(&mut body);
        body.contains("\"health\":\"true\"")
    }

    /// Waits, bounded, until node `i` reports a healthy cluster.
    pub fn wait_healthy(&self, i: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self.healthy(i) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("etcd never became healthy:\n{}", self.logs());
    }

    pub fn logs(&self) -> String {
        (0..self.ips.len())
            .map(|i| {
                let text = std::fs::read_to_string(self.dir.path().join(format!("n{i}.log"))).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(15).collect();
                format!("--- etcd n{i}:\n{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill_node(i);
        }
    }
}
