//! A real etcd cluster of three nodes on loopback for the cluster tests:
//! each node on its own address, its data in a temporary directory, its
//! log kept for failure messages. Nodes can be killed (SIGKILL) and
//! started again with their data; every node is killed when the handle
//! drops. A cluster can serve its clients over TLS only, asking for their
//! certificates, and have its authentication on (`secure`).

use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::unique_ip;

pub struct EtcdCluster {
    pub ips: Vec<Ipv4Addr>,
    dir: tempfile::TempDir,
    nodes: Vec<Option<Child>>,
    /// The PKI its clients' TLS uses (`tests/tls/make-pki.sh`), if any.
    pki: Option<std::path::PathBuf>,
}

impl EtcdCluster {
    /// Starts `n` nodes and waits until the cluster has a leader.
    pub fn start(n: usize) -> Self {
        Self::start_with(n, None)
    }

    /// Starts `n` nodes serving clients over TLS only with the server
    /// certificate in `pki`, asking clients for a certificate of its CA.
    pub fn start_tls(n: usize, pki: &std::path::Path) -> Self {
        Self::start_with(n, Some(pki.to_owned()))
    }

    fn start_with(n: usize, pki: Option<std::path::PathBuf>) -> Self {
        let ips: Vec<Ipv4Addr> = (0..n).map(|_| unique_ip()).collect();
        let mut c = Self { ips, dir: tempfile::tempdir().unwrap(), nodes: (0..n).map(|_| None).collect(), pki };
        for i in 0..n {
            c.start_node(i);
        }
        c.wait_healthy(0);
        c
    }

    /// The client URLs, as `[cluster] endpoints` takes them.
    pub fn endpoints(&self) -> Vec<String> {
        let scheme = if self.pki.is_some() { "https" } else { "http" };
        self.ips.iter().map(|ip| format!("{scheme}://{ip}:2379")).collect()
    }

    /// Turns etcd's authentication on: a `root` user, and `user` with
    /// `password` allowed to read and write under `prefix` only. Speaks
    /// to node 0 as the client certificate `client` of the PKI.
    pub fn secure(&self, client: &str, prefix: &str, user: &str, password: &str) {
        use etcd_client::{Certificate, ConnectOptions, Identity, Permission, TlsOptions};
        let pki = self.pki.as_ref().expect("a TLS cluster");
        let read = |f: &str| std::fs::read(pki.join(f)).unwrap();
        let tls = TlsOptions::new()
            .ca_certificate(Certificate::from_pem(read("ca.crt")))
            .identity(Identity::from_pem(read(&format!("{client}.crt")), read(&format!("{client}.key"))))
            .domain_name("vnamed.test");
        let endpoint = self.endpoints()[0].clone();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let c = etcd_client::Client::connect([endpoint], Some(ConnectOptions::new().with_tls(tls))).await.unwrap();
            let mut auth = c.auth_client();
            auth.user_add("root", "root-secret", None).await.unwrap();
            let _ = auth.role_add("root").await;
            auth.user_grant_role("root", "root").await.unwrap();
            auth.role_add("vnamed").await.unwrap();
            auth.role_grant_permission("vnamed", Permission::read_write(prefix).with_prefix()).await.unwrap();
            auth.user_add(user, password, None).await.unwrap();
            auth.user_grant_role(user, "vnamed").await.unwrap();
            auth.auth_enable().await.unwrap();
        });
    }

    /// The `[cluster]` section for a group under `prefix`.
    pub fn section(&self, prefix: &str) -> String {
        let endpoints: Vec<String> = self.endpoints().iter().map(|e| format!("\"{e}\"")).collect();
        format!("[cluster]\nbackend = \"etcd\"\nendpoints = [{}]\nprefix = \"{prefix}\"\ntimeout = \"2s\"\n", endpoints.join(", "))
    }

    /// The `[cluster]` section for a TLS cluster: as `section`, with the
    /// client certificate `client` of the PKI, and `user` whose password
    /// is in `password_file`.
    pub fn tls_section(&self, prefix: &str, client: &str, user: &str, password_file: &std::path::Path) -> String {
        let pki = self.pki.as_ref().expect("a TLS cluster").display().to_string();
        format!(
            "{}user = \"{user}\"\npassword_file = \"{}\"\n[cluster.tls]\nca = \"{pki}/ca.crt\"\ncert = \"{pki}/{client}.crt\"\nkey = \"{pki}/{client}.key\"\nserver_name = \"vnamed.test\"\n",
            self.section(prefix),
            password_file.display()
        )
    }

    pub fn start_node(&mut self, i: usize) {
        assert!(self.nodes[i].is_none(), "node {i} runs already");
        let initial: Vec<String> = self.ips.iter().enumerate().map(|(j, ip)| format!("n{j}=http://{ip}:2380")).collect();
        let ip = self.ips[i];
        let client = self.endpoints()[i].clone();
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join(format!("n{i}.log"))).unwrap();
        let mut cmd = Command::new("etcd");
        if let Some(pki) = &self.pki {
            cmd.arg("--cert-file").arg(pki.join("server.crt"));
            cmd.arg("--key-file").arg(pki.join("server.key"));
            cmd.arg("--trusted-ca-file").arg(pki.join("ca.crt"));
            cmd.arg("--client-cert-auth");
            // Tokens last two seconds: clients must renew them as they go.
            cmd.args(["--auth-token-ttl", "2"]);
        }
        let child = cmd
            .args(["--name", &format!("n{i}")])
            .arg("--data-dir")
            .arg(self.dir.path().join(format!("n{i}")))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            // Health over plain HTTP, whatever the clients speak.
            .args(["--listen-metrics-urls", &format!("http://{ip}:2381")])
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

    /// Puts `value` at `key` directly, as anyone with access to etcd could
    /// (plain clusters only).
    pub fn put(&self, key: &str, value: &[u8]) {
        let endpoint = self.endpoints()[0].clone();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let mut c = etcd_client::Client::connect([endpoint], None).await.unwrap();
            c.put(key, value, None).await.unwrap();
        });
    }

    /// SIGSTOP (`true`) or SIGCONT: the node holds its connections open
    /// and answers nothing meanwhile.
    pub fn pause_node(&self, i: usize, pause: bool) {
        let child = self.nodes[i].as_ref().expect("node runs");
        let signal = if pause { libc::SIGSTOP } else { libc::SIGCONT };
        // SAFETY: signalling our own child process.
        assert_eq!(unsafe { libc::kill(child.id() as i32, signal) }, 0);
    }

    /// Whether node `i` says the cluster is healthy (it has a leader and
    /// can commit), by etcd's `/health`.
    pub fn healthy(&self, i: usize) -> bool {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect_timeout(&(self.ips[i], 2381).into(), Duration::from_millis(500)) else { return false };
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
            // A paused node dies on SIGKILL as well.
            self.kill_node(i);
        }
    }
}
