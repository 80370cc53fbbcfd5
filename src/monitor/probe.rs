//! Status objects: one probe of a member, by kind. Each returns whether the
//! member can serve and the metrics it measured; none may hang longer than
//! its timeout.

use std::path::Path;
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use super::health::Probe;

fn elapsed_ms(start: Instant) -> (String, f64) {
    ("response_ms".to_owned(), start.elapsed().as_secs_f64() * 1000.0)
}

/// `tcp`: the connection time to host:port.
pub async fn tcp(target: &str, timeout: Duration) -> Probe {
    let start = Instant::now();
    match tokio::time::timeout(timeout, TcpStream::connect(target)).await {
        Ok(Ok(_)) => Probe::ok(vec![elapsed_ms(start)]),
        Ok(Err(e)) => Probe::failed(format!("connect {target}: {e}")),
        Err(_) => Probe::failed(format!("connect {target}: timed out")),
    }
}

/// `http`: a GET; up on 2xx and 3xx, with the response time.
pub async fn http(url: &str, timeout: Duration) -> Probe {
    use http_body_util::Empty;
    use hyper::body::Bytes;
    let uri: hyper::Uri = match url.parse() {
        Ok(u) => u,
        Err(e) => return Probe::failed(format!("bad URL {url}: {e}")),
    };
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let start = Instant::now();
    match tokio::time::timeout(timeout, client.get(uri)).await {
        Ok(Ok(resp)) => {
            let status = resp.status();
            if status.is_success() || status.is_redirection() {
                Probe::ok(vec![elapsed_ms(start)])
            } else {
                Probe::failed(format!("GET {url}: {status}"))
            }
        }
        Ok(Err(e)) => Probe::failed(format!("GET {url}: {e}")),
        Err(_) => Probe::failed(format!("GET {url}: timed out")),
    }
}

/// Parses `name=value` lines (metrics from exec output and files). An
/// `up=0` line marks the member down.
pub fn parse_metrics(text: &str) -> (bool, Vec<(String, f64)>) {
    let mut up = true;
    let mut metrics = Vec::new();
    for line in text.lines() {
        let Some((k, v)) = line.trim().split_once('=') else { continue };
        let Ok(v) = v.trim().parse::<f64>() else { continue };
        let k = k.trim();
        if k == "up" {
            up = v != 0.0;
        } else if !k.is_empty() && v.is_finite() && v >= 0.0 {
            metrics.push((k.to_owned(), v));
        }
    }
    (up, metrics)
}

/// `exec`: a command line run by `sh -c`; up on exit status 0; metrics
/// from `name=value` lines on its standard output.
pub async fn exec(command: &str, timeout: Duration) -> Probe {
    let start = Instant::now();
    let child = tokio::process::Command::new("sh")
        .args(["-c", command])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => return Probe::failed(format!("exec {command}: {e}")),
    };
    let mut stdout = child.stdout.take().expect("piped");
    let run = async {
        let mut out = String::new();
        // Bounded: a chatty command cannot fill our memory.
        let _ = (&mut stdout).take(64 * 1024).read_to_string(&mut out).await;
        (child.wait().await, out)
    };
    match tokio::time::timeout(timeout, run).await {
        Ok((Ok(status), out)) => {
            let (up, mut metrics) = parse_metrics(&out);
            metrics.push(elapsed_ms(start));
            if status.success() && up {
                Probe::ok(metrics)
            } else {
                Probe { ok: false, metrics, error: Some(format!("exec {command}: {status}")) }
            }
        }
        Ok((Err(e), _)) => Probe::failed(format!("exec {command}: {e}")),
        Err(_) => Probe::failed(format!("exec {command}: timed out")),
    }
}

/// `file`: metrics read from a file of `name=value` lines.
pub async fn file(path: &str) -> Probe {
    let owned = std::path::PathBuf::from(path);
    let read =
        tokio::task::spawn_blocking(move || crate::files::read_regular(&owned, crate::files::SMALL_FILE, crate::files::Links::Follow));
    match read.await.unwrap_or_else(|e| Err(std::io::Error::other(e))) {
        Ok(text) => {
            let (up, metrics) = parse_metrics(&text);
            if up { Probe::ok(metrics) } else { Probe { ok: false, metrics, error: Some(format!("{path}: up=0")) } }
        }
        Err(e) => Probe::failed(format!("{path}: {e}")),
    }
}

/// How a `process` check finds its processes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProcessMatch {
    /// The process name (`/proc/PID/comm`).
    Name(String),
    /// A substring of the command line.
    Cmdline(String),
    /// The process whose ID a pidfile holds.
    Pidfile(String),
}

impl ProcessMatch {
    pub fn parse(target: &str) -> Self {
        if let Some(p) = target.strip_prefix("cmdline:") {
            Self::Cmdline(p.to_owned())
        } else if let Some(p) = target.strip_prefix("pidfile:") {
            Self::Pidfile(p.to_owned())
        } else {
            Self::Name(target.to_owned())
        }
    }
}

/// `process`: the process table in /proc; up when at least one process
/// matches, with their count as the `processes` metric.
pub async fn process(m: &ProcessMatch, proc_root: &Path) -> Probe {
    let m = m.clone();
    let root = proc_root.to_owned();
    let count = tokio::task::spawn_blocking(move || count_processes(&m, &root)).await;
    match count {
        Ok(Ok(0)) => Probe::failed("no matching process"),
        Ok(Ok(n)) => Probe::ok(vec![("processes".to_owned(), n as f64)]),
        Ok(Err(e)) => Probe::failed(e),
        Err(e) => Probe::failed(e.to_string()),
    }
}

fn count_processes(m: &ProcessMatch, root: &Path) -> Result<usize, String> {
    if let ProcessMatch::Pidfile(path) = m {
        let text = crate::files::read_regular(Path::new(path), crate::files::SMALL_FILE, crate::files::Links::Follow)
            .map_err(|e| format!("{path}: {e}"))?;
        let pid: u32 = text.trim().parse().map_err(|_| format!("{path}: no process ID in it"))?;
        return Ok(root.join(pid.to_string()).join("stat").exists() as usize);
    }
    let mut n = 0;
    for entry in std::fs::read_dir(root).map_err(|e| format!("{}: {e}", root.display()))?.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let hit = match m {
            ProcessMatch::Name(want) => std::fs::read_to_string(entry.path().join("comm")).is_ok_and(|c| c.trim_end() == want),
            ProcessMatch::Cmdline(pattern) => std::fs::read(entry.path().join("cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).replace('\0', " ").contains(pattern.as_str())),
            ProcessMatch::Pidfile(_) => false,
        };
        n += hit as usize;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_lines() {
        let (up, m) = parse_metrics("load=0.5\npending = 3\nnoise\nbad=x\nneg=-1\nup=1\n");
        assert!(up);
        assert_eq!(m, vec![("load".to_owned(), 0.5), ("pending".to_owned(), 3.0)]);
        assert!(!parse_metrics("up=0").0);
    }

    /// A one-route HTTP server answering `status` to every request.
    async fn http_server(status: &'static str) -> std::net::SocketAddr {
        use tokio::io::AsyncWriteExt;
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n").as_bytes()).await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn http_status_classes() {
        let ok = http_server("200 OK").await;
        let p = http(&format!("http://{ok}/health"), Duration::from_secs(2)).await;
        assert!(p.ok && p.metrics[0].0 == "response_ms", "{p:?}");
        let moved = http_server("302 Found").await;
        assert!(http(&format!("http://{moved}/"), Duration::from_secs(2)).await.ok);
        let sick = http_server("503 Service Unavailable").await;
        let p = http(&format!("http://{sick}/"), Duration::from_secs(2)).await;
        assert!(!p.ok && p.error.unwrap().contains("503"));
        assert!(!http("http://127.0.0.1:1/", Duration::from_millis(500)).await.ok);
        assert!(!http("not a url", Duration::from_millis(500)).await.ok);
    }

    #[tokio::test]
    async fn probes_of_this_very_process() {
        let me = std::fs::read_to_string("/proc/self/comm").unwrap();
        let p = process(&ProcessMatch::Name(me.trim_end().to_owned()), Path::new("/proc")).await;
        assert!(p.ok, "{p:?}");
        let p = process(&ProcessMatch::Name("no-such-process-vnamed".into()), Path::new("/proc")).await;
        assert!(!p.ok);
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        std::fs::write(&pidfile, std::process::id().to_string()).unwrap();
        assert!(process(&ProcessMatch::parse(&format!("pidfile:{}", pidfile.display())), Path::new("/proc")).await.ok);
        let e = exec("echo load=0.25; exit 0", Duration::from_secs(2)).await;
        assert!(e.ok && e.metrics.contains(&("load".to_owned(), 0.25)), "{e:?}");
        assert!(!exec("exit 3", Duration::from_secs(2)).await.ok);
        assert!(!exec("sleep 5", Duration::from_millis(100)).await.ok, "times out");
        assert!(!tcp("127.0.0.1:1", Duration::from_millis(500)).await.ok);
    }
}
