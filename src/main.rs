//! The `vnamed` binary: parses the command line, sets up logging and
//! shutdown signals, and runs the chosen role.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tracing::{error, info};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

use vnamed::config::Config;
use vnamed::{admin, authority, demo};

/// jemalloc: it gives memory back as it decays (the system allocator keeps
/// what one thread freed in that thread's arena, so each rewrite of a
/// large zone file left its size behind: 1.2 GB after 20 answer changes
/// of a 300,000-record zone that loads in 0.3 GB).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's settings: a background thread returns freed pages after a
/// second, so what a zone load or rewrite needed for a moment is not kept.
#[allow(non_upper_case_globals)]
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static malloc_conf: &[u8] = b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

/// A DNS-centric load-balancing authority.
#[derive(Parser)]
#[command(name = "vnamed", version, about, propagate_version = true)]
struct Cli {
    /// How log lines are written to stderr: text for people, or json (one
    /// object per line, with each line's fields) for log collectors.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    role: Role,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Role {
    /// Serve DNS for the zones in zones_dir, with live virtual names.
    Authority {
        /// The configuration file (TOML; README, "Configuration").
        #[arg(long, short)]
        config: PathBuf,
        /// Check the file as a live reload would, and print what it would
        /// change in the running authority (pools and members added,
        /// removed, changed) without applying anything.
        #[arg(long)]
        check: bool,
    },
    /// Run this host's checks and report its members' state upstream.
    Monitor {
        /// The configuration file (TOML; README, "Configuration").
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Collect a farm's monitors, apply its local policy, report upward.
    Farm {
        /// The configuration file (TOML; README, "Configuration").
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Hold virtual IPs and switch their connections to servers (raw sockets).
    Dispatch {
        /// The configuration file (TOML; README, "Configuration").
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Run an authority with three simulated backends on loopback.
    Demo(demo::DemoArgs),
    /// Show pools, members, their state and the current answer.
    Status(admin::StatusArgs),
    /// Set a pool member up, down or back to automatic, or change its weight.
    Member(admin::MemberArgs),
    /// Switch a pool's policy while it serves.
    Policy(admin::PolicyArgs),
    /// Pause, resume, list or change a pool's members while it serves.
    Pool {
        #[command(subcommand)]
        cmd: admin::PoolCmd,
    },
    /// Show or change the ring's server table.
    Ring {
        #[command(subcommand)]
        cmd: admin::RingCmd,
    },
    /// Check zone files or show a zone as served.
    Zone {
        #[command(subcommand)]
        cmd: admin::ZoneCmd,
    },
    /// Resolve CLUSTER\INSTANCE to its endpoints (SRP, UDP 1434).
    Resolve(vnamed::srp::cli::ResolveArgs),
    /// Write a starter configuration, zone file and monitor configuration.
    Init(vnamed::init::InitArgs),
    /// Write the man pages and shell completions (for packaging).
    #[command(hide = true)]
    Generate {
        /// Directory for the man pages (vnamed.1, vnamed-authority.1, ...).
        #[arg(long)]
        man: Option<PathBuf>,
        /// Directory for the bash, zsh and fish completions.
        #[arg(long)]
        completions: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Log lines go to stderr from a thread of their own: a slow or blocked
    // stderr (a file on a disk busy with fsyncs, a full pipe) never holds up
    // the updater or a DNS worker. Lines are dropped, not waited for, if it
    // falls far behind; the guard flushes what is queued at exit.
    let (writer, _flush_at_exit) = tracing_appender::non_blocking(std::io::stderr());
    // Under systemd, stderr goes to the journal, which stamps each line
    // itself: no second timestamp there.
    let journal = std::env::var_os("JOURNAL_STREAM").is_some();
    let text = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        // Colours only for a person at a terminal, not in log files.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let lines = match cli.log_format {
        LogFormat::Json => text.json().flatten_event(false).boxed(),
        LogFormat::Text if journal => text.without_time().boxed(),
        LogFormat::Text => text.boxed(),
    };
    // Filtered first, then throttled per callsite, so no flood of one kind
    // of line buries the others.
    tracing_subscriber::registry()
        .with(
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new("info,hickory_server=warn,hickory_proto=warn,hickory_net=warn")),
        )
        .with(vnamed::logs::Throttle::default())
        .with(lines)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("vnamed: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vnamed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Cancelled on the first SIGINT or SIGTERM; a second one exits at once.
fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) else {
            error!("cannot install signal handlers");
            return;
        };
        tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
        info!("signal received; shutting down (again to exit at once)");
        vnamed::sys::service::stopping();
        t.cancel();
        tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
        std::process::exit(130);
    });
    token
}

/// Man pages, one per command (`man vnamed-authority`), and completions,
/// all from the command line's own definition.
fn generate(man: Option<PathBuf>, completions: Option<PathBuf>) -> anyhow::Result<()> {
    use clap::CommandFactory;
    if let Some(dir) = man {
        std::fs::create_dir_all(&dir)?;
        clap_mangen::generate_to(Cli::command(), &dir)?;
    }
    if let Some(dir) = completions {
        std::fs::create_dir_all(&dir)?;
        for shell in [clap_complete::Shell::Bash, clap_complete::Shell::Zsh, clap_complete::Shell::Fish] {
            clap_complete::generate_to(shell, &mut Cli::command(), "vnamed", &dir)?;
        }
    }
    Ok(())
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.role {
        Role::Authority { config, check: true } => return admin::check_config(&config).await,
        Role::Authority { config, check: false } => {
            let parsed = Config::read(&config)?;
            authority::run(parsed, &config, shutdown_on_signals()).await?;
        }
        Role::Monitor { config } => {
            let config = Config::read(&config)?;
            vnamed::sys::service::ignore_hangups("monitor");
            vnamed::monitor::run(config, shutdown_on_signals()).await?;
        }
        Role::Farm { config } => {
            let config = Config::read(&config)?;
            vnamed::sys::service::ignore_hangups("farm");
            vnamed::farm::run(config, shutdown_on_signals()).await?;
        }
        Role::Dispatch { config } => {
            let config = Config::read(&config)?;
            vnamed::sys::service::ignore_hangups("dispatch");
            vnamed::dispatch::driver::run(config, shutdown_on_signals()).await?;
        }
        Role::Demo(args) => demo::run(args, shutdown_on_signals()).await?,
        Role::Status(args) => admin::status(&args).await?,
        Role::Member(args) => admin::member(&args).await?,
        Role::Policy(args) => admin::policy(&args).await?,
        Role::Pool { cmd } => admin::pool(cmd).await?,
        Role::Ring { cmd } => admin::ring(cmd).await?,
        Role::Zone { cmd } => return admin::zone(cmd).await,
        Role::Resolve(args) => return vnamed::srp::cli::resolve(args).await,
        Role::Init(args) => print!("{}", vnamed::init::write(&args)?),
        Role::Generate { man, completions } => generate(man, completions)?,
    }
    Ok(ExitCode::SUCCESS)
}
