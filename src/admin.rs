//! The operator's command-line tools: `status`, `member`, `zone check` and
//! `zone show`, talking to a running authority over the gRPC API (or, for
//! `zone check`, reading files directly).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};

use crate::grpc::v1::admin_client::AdminClient;
use crate::grpc::v1::{
    AddMemberRequest, DryRunRequest, PoolRequest, RemoveMemberRequest, SetMemberRequest, SetPolicyRequest, ShowZoneRequest, StatusRequest,
};
use crate::zone::{ZoneFile, origin_for};

#[derive(Args)]
pub struct ServerArg {
    /// The authority's gRPC address.
    #[arg(long, default_value = "http://127.0.0.1:7443", env = "VNAMED_SERVER")]
    pub server: String,
    /// A token the authority knows (its shared token or an admin-scoped credential).
    #[arg(long, env = "VNAMED_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// For an https:// server: the CA its certificate chains to (PEM).
    #[arg(long, env = "VNAMED_CA")]
    pub ca: Option<std::path::PathBuf>,
    /// This client's certificate (PEM), for an authority with mutual TLS.
    #[arg(long, env = "VNAMED_CERT", requires = "key")]
    pub cert: Option<std::path::PathBuf>,
    /// This client's private key (PEM).
    #[arg(long, env = "VNAMED_KEY", requires = "cert")]
    pub key: Option<std::path::PathBuf>,
    /// The name the server's certificate carries, when not the URL's host.
    #[arg(long, env = "VNAMED_SERVER_NAME")]
    pub server_name: Option<String>,
}

impl ServerArg {
    /// A connected channel to the server.
    async fn connect(&self) -> anyhow::Result<tonic::transport::Channel> {
        let tls = crate::config::ClientTls {
            ca: self.ca.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
            server_name: self.server_name.clone(),
        };
        crate::grpc::tls::endpoint(&self.server, &tls)?
            .connect()
            .await
            .with_context(|| format!("cannot reach the authority at {}", self.server))
    }
}

#[derive(Args)]
pub struct StatusArgs {
    /// Show why a pool's answer is what it is: each member's inputs, score and rank.
    #[arg(long, value_name = "POOL")]
    pub explain: Option<String>,
    #[command(flatten)]
    pub server: ServerArg,
}

#[derive(Args)]
pub struct MemberArgs {
    /// Pool name, e.g. www.demo.example.
    pub pool: String,
    /// Member id, e.g. web1.
    pub member: String,
    /// up, down, drain (no new clients), or auto (follow status reports).
    #[arg(long)]
    pub admin: Option<String>,
    #[arg(long)]
    pub weight: Option<u32>,
    #[command(flatten)]
    pub server: ServerArg,
}

#[derive(Args)]
pub struct PolicyArgs {
    /// Pool name, e.g. www.demo.example.
    pub pool: String,
    /// round-robin, priority, least-loaded, fewest-connections, fewest-pending,
    /// fastest, throughput, closest or weighted.
    pub policy: String,
    /// For the formula policy: an expression over named metrics, lower wins.
    #[arg(long)]
    pub formula: Option<String>,
    /// shares (each member its share of the answers) or best (only the
    /// best members); with --dry-run only.
    #[arg(long, requires = "dry_run")]
    pub select: Option<String>,
    /// Replay the pool's recent reports against this policy, side by side
    /// with the live one, and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub server: ServerArg,
}

#[derive(Subcommand)]
pub enum PoolCmd {
    /// Freeze the pool's answer; reports are still taken.
    Pause {
        pool: String,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Apply the policy to the latest reports again.
    Resume {
        pool: String,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Every server in service, most preferred first.
    Servers {
        pool: String,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Add a member while the pool serves.
    AddMember {
        pool: String,
        id: String,
        address: String,
        #[arg(long, default_value_t = 1)]
        weight: u32,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Remove a member while the pool serves.
    RemoveMember {
        pool: String,
        id: String,
        #[command(flatten)]
        server: ServerArg,
    },
    /// List what the API changed (kept across restarts until undone), for
    /// one pool or all; with --clear, undo all of it for POOL.
    Overrides {
        pool: Option<String>,
        /// Back to the configuration file: every API change to POOL undone.
        #[arg(long, requires = "pool")]
        clear: bool,
        #[command(flatten)]
        server: ServerArg,
    },
}

#[derive(Subcommand)]
pub enum ZoneCmd {
    /// Validate zone files (named FILE.zone after their zone) as the authority would.
    Check {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Zone name, when the file is not named after it.
        #[arg(long)]
        origin: Option<String>,
    },
    /// Print a zone exactly as it is being served.
    Show {
        zone: String,
        #[command(flatten)]
        server: ServerArg,
    },
}

/// The ring's server table, from the command line.
#[derive(Subcommand)]
pub enum RingCmd {
    /// Print the server table.
    Table {
        #[command(flatten)]
        server: ServerArg,
    },
    /// Put a member (its ring ip:port) into the ring; prints its buddies.
    Announce {
        member: String,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Take a member out: dead when --reporter names another member, left otherwise.
    Delete {
        member: String,
        #[arg(long)]
        reporter: Option<String>,
        #[command(flatten)]
        server: ServerArg,
    },
}

type Channel = tonic::service::interceptor::InterceptedService<tonic::transport::Channel, crate::grpc::Bearer>;

async fn ring_client(server: &ServerArg) -> anyhow::Result<crate::grpc::v1::ring_client::RingClient<Channel>> {
    let channel = server.connect().await?;
    Ok(crate::grpc::v1::ring_client::RingClient::with_interceptor(channel, crate::grpc::Bearer::new(server.token.as_deref())?))
}

fn print_ring(t: &crate::grpc::v1::TableReply) {
    if t.entries.is_empty() && t.dead.is_empty() {
        return;
    }
    println!("ring ({} members)", t.entries.len());
    for e in &t.entries {
        println!("  {:<24} buddies {} {}", e.member, e.a, e.b);
    }
    for d in &t.dead {
        println!("  {d:<24} dead");
    }
    if !t.dispatcher.is_empty() {
        println!("dispatcher {}", t.dispatcher);
    }
}

pub async fn ring(cmd: RingCmd) -> anyhow::Result<()> {
    let fail = |s: tonic::Status| anyhow::anyhow!("{}", s.message());
    match cmd {
        RingCmd::Table { server } => {
            let t = ring_client(&server).await?.table(crate::grpc::v1::TableRequest {}).await.map_err(fail)?.into_inner();
            print_ring(&t);
        }
        RingCmd::Announce { member, server } => {
            let b = ring_client(&server)
                .await?
                .server_announce(crate::grpc::v1::Member { address: member.clone() })
                .await
                .map_err(fail)?
                .into_inner();
            println!("{member}: buddies {} {}", b.a, b.b);
        }
        RingCmd::Delete { member, reporter, server } => {
            let req = crate::grpc::v1::DeleteRequest { dead: member.clone(), reporter: reporter.unwrap_or_default() };
            let b = ring_client(&server).await?.server_delete(req).await.map_err(fail)?.into_inner();
            println!("{member}: out; its buddies {} {} now watch each other", b.a, b.b);
        }
    }
    Ok(())
}

type Client = AdminClient<tonic::service::interceptor::InterceptedService<tonic::transport::Channel, crate::grpc::Bearer>>;

async fn client(server: &ServerArg) -> anyhow::Result<Client> {
    let channel = server.connect().await?;
    Ok(AdminClient::with_interceptor(channel, crate::grpc::Bearer::new(server.token.as_deref())?))
}

/// A metric as people read it: at most four decimals, no trailing zeros.
fn short(v: f64) -> String {
    let text = format!("{v:.4}");
    let text = if text.contains('.') { text.trim_end_matches('0').trim_end_matches('.') } else { &text };
    if text == "-0" { "0".into() } else { text.to_owned() }
}

pub async fn status(args: &StatusArgs) -> anyhow::Result<()> {
    let reply = client(&args.server).await?.status(StatusRequest {}).await.map_err(|s| anyhow::anyhow!("{}", s.message()))?.into_inner();
    if let Some(name) = &args.explain {
        let want = name.trim_end_matches('.').to_ascii_lowercase();
        let p = reply
            .pools
            .iter()
            .find(|p| p.name.trim_end_matches('.').eq_ignore_ascii_case(&want))
            .ok_or_else(|| anyhow::anyhow!("no pool named {name}"))?;
        let quorum = if p.quorum.is_empty() { String::new() } else { format!(" quorum={}", p.quorum) };
        println!(
            "{}  policy={} select={} ttl={}{quorum}  answer: {}",
            p.name,
            p.policy,
            p.select,
            p.ttl,
            if p.servfail { "SERVFAIL".into() } else { p.answer.join(", ") }
        );
        println!("  {:<4} {:<12} {:<28} {:<18} {:>10} {:>7} {:>8}  metrics", "rank", "member", "address", "state", "score", "share", "age");
        let mut members: Vec<_> = p.members.iter().collect();
        members.sort_by_key(|m| if m.rank == 0 { u32::MAX } else { m.rank });
        for m in members {
            let rank = if m.rank == 0 { "-".to_owned() } else { m.rank.to_string() };
            let score = m.score.map(|s| format!("{s:.3}")).unwrap_or_else(|| "-".into());
            let share = m.share.map(|s| format!("{:.1}%", s * 100.0)).unwrap_or_else(|| "-".into());
            let age = m.report_age.map(|a| format!("{a:.1}s")).unwrap_or_else(|| "-".into());
            let mut metrics: Vec<String> = m.metrics.iter().map(|(k, v)| format!("{k}={}", short(*v))).collect();
            metrics.sort();
            println!("  {rank:<4} {:<12} {:<28} {:<18} {score:>10} {share:>7} {age:>8}  {}", m.id, m.address, m.state, metrics.join(" "));
            // Who sees it how, when more than one looks or a quorum decides.
            if m.views.len() > 1 || !p.quorum.is_empty() {
                let views: Vec<String> = m
                    .views
                    .iter()
                    .map(|v| format!("{} {} {:.1}s ago", crate::config::ident::shown(&v.source), if v.up { "up" } else { "down" }, v.age))
                    .collect();
                println!("       seen by: {}", if views.is_empty() { "nobody yet".to_owned() } else { views.join(", ") });
            }
        }
        if p.select == "shares" {
            println!("  (each member in service gets its share of the answers: see the share column)");
        } else {
            println!("  (members in service ranked by the policy; the first {} form the answer)", p.answer.len());
        }
        return Ok(());
    }
    let ring = ring_client(&args.server).await?.table(crate::grpc::v1::TableRequest {}).await;
    match &reply.cluster {
        Some(c) if c.available => println!(
            "cluster: following the group's shared state at revision {}{}",
            c.revision,
            if c.decider { " (this authority decides the group's answers)" } else { "" }
        ),
        Some(c) => {
            println!("CLUSTER STATE UNAVAILABLE: {}; serving the last state (revision {}), API changes are refused", c.error, c.revision)
        }
        None => {}
    }
    if reply.state_owed > 0 {
        println!("STATE NOT SAVED: {} change(s) wait for their retry; last error: {}", reply.state_owed, reply.state_error);
    }
    for p in reply.pools {
        let answer = if p.servfail { "SERVFAIL".to_owned() } else { p.answer.join(", ") };
        println!("{}  policy={} zone={} serial={}  answer: {}", p.name, p.policy, p.zone, p.serial, answer);
        for o in &p.overrides {
            println!("  [api] {o}");
        }
        for m in p.members {
            let load = m.load.map(|l| format!("{l:.2}")).unwrap_or_else(|| "-".into());
            let mark = if m.in_answer { "*" } else { " " };
            let share = m.share.map(|s| format!(" share={:.1}%", s * 100.0)).unwrap_or_default();
            println!("  {mark} {:<12} {:<40} {:<18} weight={:<3} load={}{share}", m.id, m.address, m.state, m.weight, load);
        }
    }
    if let Ok(t) = ring {
        print_ring(&t.into_inner());
    }
    Ok(())
}

pub async fn member(args: &MemberArgs) -> anyhow::Result<()> {
    client(&args.server)
        .await?
        .set_member(SetMemberRequest {
            pool: args.pool.clone(),
            member: args.member.clone(),
            admin: args.admin.clone(),
            weight: args.weight,
        })
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?;
    println!("{} {}: set", args.pool, args.member);
    Ok(())
}

pub async fn policy(args: &PolicyArgs) -> anyhow::Result<()> {
    if args.dry_run {
        return dry_run(args).await;
    }
    let reply = client(&args.server)
        .await?
        .set_policy(SetPolicyRequest {
            pool: args.pool.clone(),
            policy: args.policy.clone(),
            formula: args.formula.clone().unwrap_or_default(),
        })
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?;
    println!("{}: policy {}; answer: {}", args.pool, args.policy, reply.into_inner().answer.join(", "));
    Ok(())
}

/// Prints what the pool's recent reports did under its policy and would
/// have done under the one proposed.
async fn dry_run(args: &PolicyArgs) -> anyhow::Result<()> {
    let r = client(&args.server)
        .await?
        .dry_run(DryRunRequest {
            pool: args.pool.clone(),
            policy: args.policy.clone(),
            formula: args.formula.clone().unwrap_or_default(),
            select: args.select.clone().unwrap_or_default(),
        })
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .into_inner();
    let (live, proposed) = (r.live.unwrap_or_default(), r.proposed.unwrap_or_default());
    println!("{}: dry run over the last {} s ({} reports); nothing changes", args.pool, r.seconds, r.reports);
    if r.seconds == 0 {
        println!("  no reports kept yet: nothing to replay");
        return Ok(());
    }
    println!("  {:<9} {:<36} {:>15} {:>10}", "", "policy", "answer changes", "peak share");
    for (label, t) in [("live", &live), ("proposed", &proposed)] {
        let policy = format!("{} (select {})", t.policy, t.select);
        let peak = format!("{:.1}% {}", t.peak_share * 100.0, t.peak_member);
        println!("  {label:<9} {policy:<36} {:>15} {peak:>10}", t.changes);
    }
    println!();
    println!("  share of answers, live -> proposed:");
    let header: Vec<String> = r.members.iter().map(|m| format!("{m:>17}")).collect();
    println!("  {:>6} {}", "second", header.join(""));
    // At most twenty rows: every nth second, and the last.
    let every = r.timeline.len().div_ceil(20).max(1);
    for (i, s) in r.timeline.iter().enumerate().filter(|(i, _)| i % every == 0 || *i + 1 == r.timeline.len()) {
        let cells: Vec<String> =
            s.live.iter().zip(&s.proposed).map(|(l, p)| format!("{:>17}", format!("{:.1}% -> {:.1}%", l * 100.0, p * 100.0))).collect();
        println!("  {i:>6} {}", cells.join(""));
    }
    Ok(())
}

pub async fn pool(cmd: PoolCmd) -> anyhow::Result<()> {
    let fail = |s: tonic::Status| anyhow::anyhow!("{}", s.message());
    let (pool, answer) = match cmd {
        PoolCmd::Pause { pool, server } => {
            let r = client(&server).await?.pause_pool(PoolRequest { pool: pool.clone() }).await.map_err(fail)?;
            (pool, r.into_inner().answer)
        }
        PoolCmd::Resume { pool, server } => {
            let r = client(&server).await?.resume_pool(PoolRequest { pool: pool.clone() }).await.map_err(fail)?;
            (pool, r.into_inner().answer)
        }
        PoolCmd::Servers { pool, server } => {
            let r = client(&server).await?.resolve(PoolRequest { pool }).await.map_err(fail)?;
            for s in r.into_inner().servers {
                println!("{s}");
            }
            return Ok(());
        }
        PoolCmd::AddMember { pool, id, address, weight, server } => {
            let req = AddMemberRequest { pool: pool.clone(), id, address, weight };
            (pool, client(&server).await?.add_member(req).await.map_err(fail)?.into_inner().answer)
        }
        PoolCmd::RemoveMember { pool, id, server } => {
            let req = RemoveMemberRequest { pool: pool.clone(), id };
            (pool, client(&server).await?.remove_member(req).await.map_err(fail)?.into_inner().answer)
        }
        PoolCmd::Overrides { pool: Some(pool), clear: true, server } => {
            let r = client(&server).await?.clear_overrides(PoolRequest { pool: pool.clone() }).await.map_err(fail)?;
            println!("{pool}: API overrides cleared; back to the configuration file");
            (pool, r.into_inner().answer)
        }
        PoolCmd::Overrides { pool, clear: _, server } => {
            let reply = client(&server).await?.status(StatusRequest {}).await.map_err(fail)?.into_inner();
            let want = pool.as_deref().map(|p| p.trim_end_matches('.').to_ascii_lowercase());
            let mut found = false;
            for p in reply.pools {
                if want.as_deref().is_some_and(|w| !p.name.trim_end_matches('.').eq_ignore_ascii_case(w)) {
                    continue;
                }
                found = true;
                for o in &p.overrides {
                    println!("{} {o}", p.name);
                }
            }
            if !found {
                anyhow::bail!("no pool named {}", pool.unwrap_or_default());
            }
            return Ok(());
        }
    };
    println!("{pool}: answer: {}", answer.join(", "));
    Ok(())
}

/// `vnamed authority --config F --check`: the file checked as a live
/// reload checks it, then what reloading it would change in the authority
/// running at its `grpc_listen`. Exit status 1 when a reload would be refused.
pub async fn check_config(path: &std::path::Path) -> anyhow::Result<ExitCode> {
    let refused = |why: String| {
        println!("{}: a reload would be refused: {why}", path.display());
        Ok(ExitCode::FAILURE)
    };
    let config = match crate::config::Config::read(path) {
        Ok(c) => c,
        Err(e) => return refused(format!("{e:#}")),
    };
    let auth = match config.authority() {
        Ok(a) => a.clone(),
        Err(e) => return refused(e.to_string()),
    };
    if config.pool.is_empty() {
        return refused("it would remove every pool".into());
    }
    println!("{}: valid, {} pools", path.display(), config.pool.len());
    let Some(addr) = auth.grpc_listen else {
        println!("no grpc_listen: cannot compare with a running authority");
        return Ok(ExitCode::SUCCESS);
    };
    // An admin token from the file, if it holds one; TLS as the listener has it.
    let token = auth
        .token
        .clone()
        .or_else(|| auth.credential.iter().find(|c| c.scopes.contains(&crate::config::Scope::Admin)).and_then(|c| c.token.clone()));
    let scheme = if auth.tls.is_some() { "https" } else { "http" };
    let server = ServerArg { server: format!("{scheme}://{addr}"), token, ca: None, cert: None, key: None, server_name: None };
    let running = match client(&server).await {
        Ok(mut c) => c.status(StatusRequest {}).await.map_err(|s| anyhow::anyhow!("{}", s.message()))?.into_inner(),
        Err(e) => {
            println!("{e:#}: nothing to compare with");
            return Ok(ExitCode::SUCCESS);
        }
    };
    let (kept, changes): (Vec<String>, Vec<String>) = diff(&config.pool, &running.pools).into_iter().partition(|c| c.contains(" stays"));
    for k in kept {
        println!("kept: {k}");
    }
    if changes.is_empty() {
        println!("a reload would change nothing in the authority at {addr}");
    } else {
        println!("a reload would change, in the authority at {addr}:");
        for c in changes {
            println!("  {c}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// What applying `pools` would change in pools served as `running`. A
/// setting the API overrides stays as the API set it, and is said so.
fn diff(pools: &[crate::config::PoolConfig], running: &[crate::grpc::v1::PoolStatus]) -> Vec<String> {
    let key = |n: &str| n.trim_end_matches('.').to_ascii_lowercase();
    let mut out = Vec::new();
    for r in running {
        if !pools.iter().any(|p| key(&p.name) == key(&r.name)) {
            out.push(format!("pool {} removed (with its managed block)", r.name));
        }
    }
    for p in pools {
        let Some(r) = running.iter().find(|r| key(&r.name) == key(&p.name)) else {
            out.push(format!("pool {} added with {} members", p.name, p.members.len()));
            continue;
        };
        let overridden = |what: &str| r.overrides.iter().any(|o| o.starts_with(what));
        let policy = p.policy.to_string();
        if !r.policy.eq_ignore_ascii_case(&policy.replace('-', "")) {
            if overridden("policy ") {
                out.push(format!(
                    "pool {}: policy {policy} in the file; the API's {} stays unless this edit changes the file's",
                    p.name, r.policy
                ));
            } else {
                out.push(format!("pool {}: policy {} -> {policy}", p.name, r.policy));
            }
        }
        for m in &r.members {
            if !p.members.iter().any(|c| c.id == m.id) && !overridden(&format!("member {} added", m.id)) {
                out.push(format!("pool {}: member {} removed", p.name, m.id));
            }
        }
        for c in &p.members {
            let Some(m) = r.members.iter().find(|m| m.id == c.id) else {
                if !overridden(&format!("member {} removed", c.id)) {
                    out.push(format!("pool {}: member {} added", p.name, c.id));
                }
                continue;
            };
            if let Some(a) = c.address
                && a.to_string() != m.address
            {
                out.push(format!("pool {}: member {} address {} -> {a}", p.name, c.id, m.address));
            }
            if c.weight != m.weight {
                if overridden(&format!("member {} weight", c.id)) {
                    out.push(format!(
                        "pool {}: member {} weight {} from the API stays, unless this edit changes it in the file",
                        p.name, c.id, m.weight
                    ));
                } else {
                    out.push(format!("pool {}: member {} weight {} -> {}", p.name, c.id, m.weight, c.weight));
                }
            }
        }
    }
    out
}

pub async fn zone(cmd: ZoneCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        ZoneCmd::Check { files, origin } => {
            let mut failed = false;
            for path in files {
                let origin = match &origin {
                    Some(o) => hickory_proto::rr::Name::from_ascii(o).map(|mut n| {
                        n.set_fqdn(true);
                        n
                    })?,
                    None => origin_for(&path).with_context(|| format!("{}: name the file <zone>.zone or pass --origin", path.display()))?,
                };
                let text = crate::files::read_regular(&path, 1 << 30, crate::files::Links::Follow)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                match ZoneFile::parse(&path, origin.clone(), text) {
                    Ok(z) => println!("{}: zone {origin} OK, serial {}, {} records", path.display(), z.serial, z.data.record_count),
                    Err(e) => {
                        println!("{e}");
                        failed = true;
                    }
                }
            }
            Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
        }
        ZoneCmd::Show { zone, server } => {
            let reply = client(&server).await?.show_zone(ShowZoneRequest { zone }).await.map_err(|s| anyhow::anyhow!("{}", s.message()))?;
            print!("{}", reply.into_inner().text);
            Ok(ExitCode::SUCCESS)
        }
    }
}
