//! `vnamed init`: a starter authority configuration, zone file and monitor
//! configuration for one zone, one pool and its backends, valid as
//! written. The text is built by pure functions; `write` only puts it on
//! disk, refusing to overwrite unless told to.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use hickory_proto::rr::Name;

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("--zone {0:?}: not a domain name")]
    Zone(String),
    #[error("--pool {0:?}: not a name inside the zone {1}")]
    Pool(String, String),
    #[error("--backend {0:?}: expected ADDRESS or ADDRESS:PORT (an IPv6 address with a port in brackets)")]
    Backend(String),
    #[error("give at least one --backend")]
    NoBackend,
    #[error("--policy: {0}")]
    Policy(String),
    #[error("{0} exists; --force overwrites it")]
    Exists(PathBuf),
    #[error("cannot write {0}: {1}")]
    Write(PathBuf, std::io::Error),
}

/// What the operator asked for.
#[derive(Debug, Clone, clap::Args)]
pub struct InitArgs {
    /// The zone vnamed is the authority for, e.g. example.com.
    #[arg(long)]
    pub zone: String,
    /// The virtual name, relative to the zone (www) or in full (www.example.com.).
    #[arg(long, default_value = "www")]
    pub pool: String,
    /// A backend server: ADDRESS or ADDRESS:PORT (port 80 if absent; the
    /// monitor checks that port over TCP). Repeat for each one.
    #[arg(long = "backend", required = true)]
    pub backends: Vec<String>,
    /// The pool's policy (README, "Policies").
    #[arg(long, default_value = "weighted")]
    pub policy: String,
    /// Where this authority answers DNS.
    #[arg(long, default_value = "0.0.0.0:53")]
    pub listen: SocketAddr,
    /// The address of this name server, for the zone's NS glue record.
    #[arg(long, default_value = "127.0.0.1")]
    pub ns_address: IpAddr,
    /// Directory for vnamed.toml and monitor.toml.
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
    /// Directory for the zone file and the authority's state (default: DIR/zones).
    #[arg(long)]
    pub zones_dir: Option<PathBuf>,
    /// Overwrite files that exist.
    #[arg(long)]
    pub force: bool,
}

/// One backend: a member id, its address and the port its check probes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    pub id: String,
    pub addr: SocketAddr,
}

/// The files to write, relative to nothing: paths are decided by `write`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Starter {
    pub zone: Name,
    pub pool: Name,
    pub authority_toml: String,
    pub monitor_toml: String,
    pub zone_file: String,
}

pub fn backends(specs: &[String]) -> Result<Vec<Backend>, InitError> {
    if specs.is_empty() {
        return Err(InitError::NoBackend);
    }
    specs
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let addr = s
                .parse::<SocketAddr>()
                .or_else(|_| s.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 80)))
                .map_err(|_| InitError::Backend(s.clone()))?;
            Ok(Backend { id: format!("web{}", i + 1), addr })
        })
        .collect()
}

/// `s` as a TOML string, quoted and escaped.
fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// The fully qualified zone and pool names.
pub fn names(zone: &str, pool: &str) -> Result<(Name, Name), InitError> {
    let bare = zone.trim_end_matches('.');
    if bare.is_empty() {
        return Err(InitError::Zone(zone.into()));
    }
    let fqdn = Name::from_ascii(format!("{bare}.")).map_err(|_| InitError::Zone(zone.into()))?.to_lowercase();
    let pool_name = if pool.ends_with('.') {
        Name::from_ascii(pool).map_err(|_| InitError::Pool(pool.into(), fqdn.to_string()))?
    } else {
        Name::from_ascii(pool).and_then(|p| p.append_domain(&fqdn)).map_err(|_| InitError::Pool(pool.into(), fqdn.to_string()))?
    }
    .to_lowercase();
    if !fqdn.zone_of(&pool_name) || pool_name == fqdn {
        return Err(InitError::Pool(pool.into(), fqdn.to_string()));
    }
    Ok((fqdn, pool_name))
}

/// The starter files for these arguments; `zones_dir` as it will appear in
/// the authority's configuration.
pub fn starter(args: &InitArgs, zones_dir: &Path) -> Result<Starter, InitError> {
    let (zone, pool) = names(&args.zone, &args.pool)?;
    let backends = backends(&args.backends)?;
    // Checked against the names the configuration takes: only those reach the file.
    args.policy.parse::<crate::config::PolicyName>().map_err(InitError::Policy)?;
    let ns = Name::from_ascii("ns1").expect("a label").append_domain(&zone).expect("short enough");
    let ns_type = if args.ns_address.is_ipv4() { "A" } else { "AAAA" };
    let members: Vec<String> = backends.iter().map(|b| format!("  {{ id = \"{}\", address = \"{}\" }},", b.id, b.addr.ip())).collect();
    let authority_toml = format!(
        r#"# vnamed authority for {zone}, written by `vnamed init`.
# Check it with `vnamed authority --check --config <this file>`, run it with
# `vnamed authority --config <this file>`; README, "Configuration", has
# every key.

[authority]
# Where DNS is answered (UDP and TCP).
dns_listen = ["{listen}"]
# The API that monitors report to and the CLI talks to. On loopback it is
# open; anywhere else it needs mutual TLS or a token (README, "Security").
grpc_listen = "127.0.0.1:7443"
# Prometheus metrics and the live status page (http://127.0.0.1:9353/).
metrics_listen = "127.0.0.1:9353"
# Zone files (<zone>.zone); vnamed keeps its state in .vnamed-state below.
zones_dir = {zones_dir}
# Secondaries allowed to transfer the zones (AXFR), e.g. ["192.0.2.53/32"].
allow_transfer = []

[[pool]]
name = {pool_toml}
# How the answer is chosen: weighted shares by each member's weight here.
policy = "{policy}"
# Addresses in each answer, and their TTL in seconds.
answers = 1
ttl = 30
# With no member in service: answer every member rather than nothing.
fallback = "all"
# A member whose reports stop for this long is out of service.
stale_after = "10s"
members = [
{members}
]
"#,
        listen = args.listen,
        zones_dir = toml_string(&zones_dir.to_string_lossy()),
        pool_toml = toml_string(&pool.to_string()),
        policy = args.policy,
        members = members.join("\n"),
    );
    let checks: Vec<String> = backends
        .iter()
        .map(|b| {
            format!(
                "[[monitor.check]]\npool = {}\nmember = \"{}\"\nkind = \"tcp\"\ntarget = \"{}\"\ninterval = \"2s\"\n",
                toml_string(&pool.to_string()),
                b.id,
                b.addr
            )
        })
        .collect();
    let monitor_toml = format!(
        r#"# A vnamed monitor for {pool}, written by `vnamed init`: it probes
# each backend's port over TCP and reports to the authority. Run it with
# `vnamed monitor --config <this file>`, on this host or any host that
# reaches the backends. For richer checks (HTTP, processes, load), run a
# monitor on each backend instead (README, "Monitors").

[monitor]
host = "init-monitor"
report_to = ["http://127.0.0.1:7443"]

{checks}"#,
        checks = checks.join("\n"),
    );
    let zone_file = format!(
        r#"; {zone}, written by `vnamed init`. vnamed writes the records of
; {pool} between its marker comments, and keeps the rest as written.
$ORIGIN {zone}
$TTL 3600
@       IN SOA {ns} hostmaster.{zone} ( 1 3600 600 1209600 60 )
        IN NS  {ns}
{ns} IN {ns_type} {ns_address}
"#,
        ns_address = args.ns_address,
    );
    Ok(Starter { zone, pool, authority_toml, monitor_toml, zone_file })
}

/// Writes the starter files and says what to run next.
pub fn write(args: &InitArgs) -> Result<String, InitError> {
    let zones_dir = args.zones_dir.clone().unwrap_or_else(|| args.dir.join("zones"));
    let s = starter(args, &zones_dir)?;
    let zone_path = zones_dir.join(format!("{}zone", s.zone));
    let files = [
        (args.dir.join("vnamed.toml"), &s.authority_toml),
        (args.dir.join("monitor.toml"), &s.monitor_toml),
        (zone_path.clone(), &s.zone_file),
    ];
    if !args.force
        && let Some((p, _)) = files.iter().find(|(p, _)| p.exists())
    {
        return Err(InitError::Exists(p.clone()));
    }
    for (path, text) in files.iter() {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| InitError::Write(parent.to_owned(), e))?;
        }
        crate::sys::fs::write_atomic(path, text).map_err(|e| InitError::Write(path.clone(), e))?;
    }
    let (config, monitor) = (args.dir.join("vnamed.toml"), args.dir.join("monitor.toml"));
    Ok(format!(
        "wrote {}, {} and {}\nnext:\n  vnamed authority --check --config {}\n  vnamed authority --config {}\n  vnamed monitor --config {}\n  dig @{} {} A\n",
        config.display(),
        monitor.display(),
        zone_path.display(),
        config.display(),
        config.display(),
        monitor.display(),
        args.listen.ip(),
        s.pool,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        init: InitArgs,
    }

    fn args(extra: &[&str]) -> InitArgs {
        let mut argv = vec!["init", "--zone", "example.com", "--backend", "192.0.2.10:80", "--backend", "192.0.2.11"];
        argv.extend_from_slice(extra);
        Cli::parse_from(argv).init
    }

    #[test]
    fn the_starter_configurations_parse_and_validate() {
        let s = starter(&args(&[]), Path::new("/var/lib/vnamed/zones")).unwrap();
        let odd = starter(&args(&[]), Path::new("/srv/a \"b\"/zones")).unwrap();
        assert_eq!(Config::from_toml(&odd.authority_toml).unwrap().authority.unwrap().zones_dir, Path::new("/srv/a \"b\"/zones"));
        let c = Config::from_toml(&s.authority_toml).unwrap();
        assert_eq!(c.pool[0].name, "www.example.com.");
        assert_eq!(c.pool[0].members.len(), 2);
        let m = Config::from_toml(&s.monitor_toml).unwrap().monitor.unwrap();
        let targets: Vec<_> = m.check.iter().map(|c| c.target.clone().unwrap()).collect();
        assert_eq!(targets, ["192.0.2.10:80", "192.0.2.11:80"]);
        assert!(s.zone_file.contains("ns1.example.com. IN A 127.0.0.1"), "{}", s.zone_file);
    }

    #[test]
    fn names_are_checked_and_made_absolute() {
        assert_eq!(names("Example.COM", "www").unwrap().1.to_string(), "www.example.com.");
        assert_eq!(names("example.com.", "api.example.com.").unwrap().1.to_string(), "api.example.com.");
        assert!(matches!(names("example.com", "www.other.org."), Err(InitError::Pool(..))));
        assert!(matches!(names("example.com", "example.com."), Err(InitError::Pool(..))));
        assert!(matches!(names(".", "www"), Err(InitError::Zone(_))));
        assert!(matches!(backends(&["nope".into()]), Err(InitError::Backend(_))));
        let hostile = InitArgs { policy: "weighted\"\n[authority]\nx = \"".into(), ..args(&[]) };
        assert!(matches!(starter(&hostile, Path::new("z")), Err(InitError::Policy(_))));
        assert!(starter(&InitArgs { policy: "least-loaded".into(), ..args(&[]) }, Path::new("z")).is_ok());
        assert_eq!(backends(&["[2001:db8::1]:8080".into()]).unwrap()[0].addr.port(), 8080);
        assert_eq!(backends(&["2001:db8::1".into()]).unwrap()[0].addr.port(), 80);
    }

    #[test]
    fn existing_files_are_kept_unless_forced() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap();
        write(&args(&["--dir", d])).unwrap();
        std::fs::write(dir.path().join("vnamed.toml"), "mine").unwrap();
        assert!(matches!(write(&args(&["--dir", d])), Err(InitError::Exists(_))));
        assert_eq!(std::fs::read_to_string(dir.path().join("vnamed.toml")).unwrap(), "mine");
        write(&args(&["--dir", d, "--force"])).unwrap();
        assert!(std::fs::read_to_string(dir.path().join("vnamed.toml")).unwrap().starts_with("# vnamed authority"));
        assert!(dir.path().join("zones/example.com.zone").exists());
    }
}
