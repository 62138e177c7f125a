//! The `kv-server` binary: parses flags, sets up logging and the runtime, binds, and runs.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use kv_core::Limits;
use kv_core::disk::Durability;
use kv_server::transport::DialVia;
use kv_server::{ClusterMembership, ShardMasterConfig, StorageConfig, StorageData};
use kv_shard::{Consistency, Replication};
use tracing_subscriber::EnvFilter;

/// A sharded, replicated key-value store: server.
#[derive(Debug, Parser)]
#[command(name = "kv-server", version, about)]
struct Cli {
    /// Log filter: a level (error, warn, info, debug, trace) or `tracing` directives such as
    /// `kv_server=debug,tonic=info`. Logs go to standard error.
    #[arg(long, env = "KV_LOG", default_value = "info", global = true)]
    log: String,

    /// Runtime worker threads (default: the number of cores).
    #[arg(long, env = "KV_WORKERS", global = true)]
    workers: Option<usize>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a storage server: a member of the cluster of `--shardmaster`, or standalone (it holds
    /// every key it is sent, until a shard master makes it a member).
    Storage(StorageArgs),
    /// Run a shard master: cluster membership (join, leave) and the placement of keys (query).
    Shardmaster(ShardMasterArgs),
}

#[derive(Debug, clap::Args)]
struct ShardMasterArgs {
    /// Address to listen on, `host:port`. Port 0 picks a free port; the address bound is printed
    /// on standard output as `kv-server shardmaster listening on HOST:PORT`.
    #[arg(long, env = "KV_LISTEN", default_value = "127.0.0.1:50050")]
    listen: String,

    /// Seconds that requests in flight may run on after SIGINT/SIGTERM.
    #[arg(long, env = "KV_SHUTDOWN_GRACE_SECS", default_value_t = 10)]
    shutdown_grace_secs: u64,

    /// Seconds the data moves of one join or leave may take before the change is reported as
    /// incomplete (and the slots of a server that cannot be reached are given up as lost).
    #[arg(long, env = "KV_MOVE_TIMEOUT_SECS", default_value_t = 30)]
    move_timeout_secs: u64,

    /// Directory to keep the cluster's state in (its configurations, and what failovers and
    /// moves in progress must not forget), written before any change is acted on: a shard master
    /// restarted with the same directory goes on from it. Default: `kv-shardmaster-PORT` in the
    /// working directory, PORT the port of `--listen` (printed at start-up; a port of 0 then is
    /// refused).
    #[arg(long, env = "KV_DATA_DIR")]
    data_dir: Option<std::path::PathBuf>,

    /// Keep the cluster's state in memory only: a restarted shard master forgets the cluster, and
    /// the first server to join it gets a new, empty one (for tests and throwaway clusters).
    #[arg(long, env = "KV_IN_MEMORY", conflicts_with = "data_dir")]
    in_memory: bool,

    /// A secret shared by the cluster's shard master and storage servers: storage servers
    /// refuse installs and transfers that do not carry it. Without it, anyone who can connect may
    /// send them: set it wherever the ports are reachable from outside the cluster.
    #[arg(long, env = "KV_CLUSTER_TOKEN", hide_env_values = true)]
    cluster_token: Option<String>,

    /// Copies of every slot, on distinct servers: a primary and R − 1 secondaries (fewer while
    /// the cluster has fewer members). 1 keeps no secondaries.
    #[arg(long, env = "KV_REPLICATION_FACTOR", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=16))]
    replication_factor: u32,

    /// `strong`: a write is acknowledged once every replica applied it, and reads from any
    /// replica are linearizable. `eventual`: once the primary and `--sync-replicas` secondaries
    /// applied it; the others follow within `--sync-interval-ms`.
    #[arg(long, env = "KV_CONSISTENCY", default_value = "strong")]
    consistency: Consistency,

    /// Eventual consistency: secondaries that apply a write before it is acknowledged (below
    /// R − 1; the assignment's level).
    #[arg(long, env = "KV_SYNC_REPLICAS", default_value_t = 0)]
    sync_replicas: u32,

    /// Eventual consistency: the longest the other secondaries wait for a write, in milliseconds.
    #[arg(long, env = "KV_SYNC_INTERVAL_MS", default_value_t = 2000)]
    sync_interval_ms: u64,

    /// Milliseconds a storage server may go without answering the shard master's pings before
    /// its slots fail over to their secondaries (replication factor 2 or more).
    #[arg(long, env = "KV_FAILURE_TIMEOUT_MS", default_value_t = 800, value_parser = clap::value_parser!(u64).range(200..))]
    failure_timeout_ms: u64,

    /// Stand-ins for peers' addresses, `PEER=VIA,...`: a call to the server (or shard master)
    /// known as PEER dials VIA instead. For test harnesses that route every link through a
    /// proxy of their own; hidden.
    #[arg(long, hide = true, default_value = "", value_parser = DialVia::parse)]
    dial_via: DialVia,
}

#[derive(Debug, clap::Args)]
struct StorageArgs {
    /// Address to listen on, `host:port`. Port 0 picks a free port; the address bound is printed
    /// on standard output as `kv-server storage listening on HOST:PORT`.
    #[arg(long, env = "KV_LISTEN", default_value = "127.0.0.1:50051")]
    listen: String,

    /// Longest key accepted, in bytes.
    #[arg(long, env = "KV_MAX_KEY_BYTES", default_value_t = Limits::DEFAULT_MAX_KEY_LEN)]
    max_key_bytes: usize,

    /// Longest value a key may hold, in bytes.
    #[arg(long, env = "KV_MAX_VALUE_BYTES", default_value_t = Limits::DEFAULT_MAX_VALUE_LEN)]
    max_value_bytes: usize,

    /// Seconds that requests in flight may run on after SIGINT/SIGTERM.
    #[arg(long, env = "KV_SHUTDOWN_GRACE_SECS", default_value_t = 10)]
    shutdown_grace_secs: u64,

    /// The shard master (`host:port`) of the cluster to join at start-up. The server leaves at
    /// SIGINT/SIGTERM, handing its data to the other members, before it stops.
    #[arg(long, env = "KV_SHARDMASTER")]
    shardmaster: Option<String>,

    /// The address the cluster knows this server by, `host:port` (default: the address it
    /// listens on). Clients and other servers dial it.
    #[arg(long, env = "KV_ADVERTISE", requires = "shardmaster")]
    advertise: Option<String>,

    /// Seconds a hand-off of slots to another server may keep retrying it.
    #[arg(long, env = "KV_HANDOFF_TIMEOUT_SECS", default_value_t = 30)]
    handoff_timeout_secs: u64,

    /// Directory to keep the values in, durably: a standalone server restarted with the same
    /// directory has every write it acknowledged (with `--fsync always`). Default:
    /// `kv-storage-PORT` in the working directory, PORT the port of `--listen` (printed at
    /// start-up; a port of 0 then is refused). A cluster member (`--shardmaster`) restarted on
    /// it comes back as the member it was, if the shard master can take it back in place.
    #[arg(long, env = "KV_DATA_DIR")]
    data_dir: Option<std::path::PathBuf>,

    /// Keep the values in memory only: a restart loses them (a cache).
    #[arg(long, env = "KV_IN_MEMORY", conflicts_with_all = ["data_dir", "fsync"])]
    in_memory: bool,

    /// When a write is on disk before it is acknowledged: `always` (synced first; writes waiting
    /// together share one sync), `interval` (handed to the operating system first, which keeps
    /// it across a crash of the server but not of the machine, and synced every
    /// `--fsync-interval-ms`), or `never` (handed to the operating system, which syncs when it
    /// decides).
    #[arg(long, env = "KV_FSYNC", value_parser = ["always", "interval", "never"])]
    fsync: Option<String>,

    /// With `--fsync interval`: the longest an acknowledged write waits for its sync, in
    /// milliseconds.
    #[arg(long, env = "KV_FSYNC_INTERVAL_MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    fsync_interval_ms: u64,

    /// A secret shared by the cluster's shard master and storage servers: storage servers
    /// refuse installs and transfers that do not carry it. Without it, anyone who can connect may
    /// send them: set it wherever the ports are reachable from outside the cluster.
    #[arg(long, env = "KV_CLUSTER_TOKEN", hide_env_values = true)]
    cluster_token: Option<String>,

    /// Stand-ins for peers' addresses, `PEER=VIA,...`: a call to the server (or shard master)
    /// known as PEER dials VIA instead. For test harnesses that route every link through a
    /// proxy of their own; hidden.
    #[arg(long, hide = true, default_value = "", value_parser = DialVia::parse)]
    dial_via: DialVia,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("kv-server: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let filter =
        EnvFilter::try_new(&cli.log).with_context(|| format!("invalid --log filter {:?}", cli.log))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(workers) = cli.workers {
        if workers == 0 {
            bail!("--workers must be at least 1");
        }
        runtime.worker_threads(workers);
    }
    let runtime = runtime.enable_all().build().context("cannot start the async runtime")?;

    match cli.command {
        Command::Storage(args) => runtime.block_on(storage(args)),
        Command::Shardmaster(args) => runtime.block_on(shardmaster(args)),
    }
}

async fn storage(args: StorageArgs) -> Result<()> {
    let config = StorageConfig {
        limits: Limits { max_key_len: args.max_key_bytes, max_value_len: args.max_value_bytes },
        shutdown_grace: Duration::from_secs(args.shutdown_grace_secs),
        cluster: args.shardmaster.clone().map(|shardmaster| ClusterMembership {
            advertise: args.advertise,
            ..ClusterMembership::new(shardmaster)
        }),
        handoff_timeout: Duration::from_secs(args.handoff_timeout_secs),
        cluster_token: args.cluster_token,
        dial_via: args.dial_via,
        data: StorageData::Memory,
    };
    if !args.in_memory && args.data_dir.is_none() && port_of(&args.listen) == Some(0) {
        bail!(
            "with --listen port 0 the default data directory, named after the port, would change at \
             every start, and a restarted server would not find its data: give --data-dir DIR, or \
             --in-memory"
        );
    }
    let durability = match args.fsync.as_deref() {
        Some("interval") => Durability::Interval(Duration::from_millis(args.fsync_interval_ms)),
        Some("never") => Durability::Never,
        _ => Durability::Always,
    };
    let listener = bind(&args.listen).await?;
    let local = listener.local_addr().context("cannot read the bound address")?;
    let config = StorageConfig {
        data: if args.in_memory {
            StorageData::Memory
        } else {
            let dir = args.data_dir.unwrap_or_else(|| format!("kv-storage-{}", local.port()).into());
            StorageData::Disk { dir, durability }
        },
        ..config
    };
    if let StorageData::Disk { dir, .. } = &config.data {
        // Made before it is announced, so whoever reads the announcement finds it there.
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the data directory {}", dir.display()))?;
    }
    let shutdown = shutdown_signal();
    println!("kv-server storage listening on {local}");
    match &config.data {
        StorageData::Disk { dir, durability } => {
            let fsync = match durability {
                Durability::Always => "always".to_owned(),
                Durability::Interval(every) => format!("every {} ms", every.as_millis()),
                Durability::Never => "never".to_owned(),
            };
            println!("kv-server storage keeps its data in {} (fsync: {fsync})", dir.display());
        }
        StorageData::Memory => println!("kv-server storage keeps its data in memory only (--in-memory)"),
    }
    tracing::info!(address = %local, "storage server listening");
    kv_server::run_storage(listener, config, shutdown).await?;
    Ok(())
}

async fn shardmaster(args: ShardMasterArgs) -> Result<()> {
    let replication = Replication {
        factor: args.replication_factor as usize,
        consistency: args.consistency,
        sync_replicas: args.sync_replicas as usize,
        sync_interval: Duration::from_millis(args.sync_interval_ms),
    };
    replication.validate().context("invalid replication settings")?;
    let config = ShardMasterConfig {
        shutdown_grace: Duration::from_secs(args.shutdown_grace_secs),
        move_timeout: Duration::from_secs(args.move_timeout_secs),
        cluster_token: args.cluster_token,
        replication,
        failure_timeout: Duration::from_millis(args.failure_timeout_ms),
        dial_via: args.dial_via,
        data_dir: None,
    };
    if !args.in_memory && args.data_dir.is_none() && port_of(&args.listen) == Some(0) {
        anyhow::bail!(
            "with --listen port 0 the default data directory, named after the port, would change at \
             every start, and a restarted shard master would forget the cluster: give --data-dir DIR, \
             or --in-memory"
        );
    }
    let listener = bind(&args.listen).await?;
    let local = listener.local_addr().context("cannot read the bound address")?;
    let config = ShardMasterConfig {
        data_dir: (!args.in_memory)
            .then(|| args.data_dir.unwrap_or_else(|| format!("kv-shardmaster-{}", local.port()).into())),
        ..config
    };
    if let Some(dir) = &config.data_dir {
        // Made before it is announced, so whoever reads the announcement finds it there.
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the data directory {}", dir.display()))?;
    }
    let shutdown = shutdown_signal();
    println!("kv-server shardmaster listening on {local}");
    match &config.data_dir {
        Some(dir) => println!("kv-server shardmaster keeps the cluster's state in {}", dir.display()),
        None => println!("kv-server shardmaster keeps the cluster's state in memory only (--in-memory)"),
    }
    tracing::info!(address = %local, "shard master listening");
    kv_server::run_shardmaster(listener, config, shutdown).await?;
    Ok(())
}

/// The port of `host:port`, if it reads as one.
fn port_of(address: &str) -> Option<u16> {
    address.rsplit(':').next().and_then(|port| port.parse().ok())
}

/// Resolves `address` and binds the first address that works, with errors a person can act on.
async fn bind(address: &str) -> Result<tokio::net::TcpListener> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(address)
        .await
        .with_context(|| format!("invalid listen address {address:?} (expected host:port)"))?
        .collect();
    let mut last_err = None;
    for addr in &addrs {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => return Ok(listener),
            Err(err) => last_err = Some(anyhow::Error::new(err).context(format!("cannot listen on {addr}"))),
        }
    }
    Err(last_err.unwrap_or_else(|| anyhow::anyhow!("listen address {address:?} resolves to nothing")))
}

/// Completes on the first SIGINT or SIGTERM. The handlers are installed when this is called, not
/// when the future is first polled: a signal sent as soon as the address is printed must shut the
/// server down gracefully, not kill it with the default action.
fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    let (ctrl_c, term) = {
        use tokio::signal::unix::{SignalKind, signal};
        let listen = |kind: SignalKind, name: &'static str| {
            let stream = signal(kind);
            async move {
                match stream {
                    Ok(mut stream) => {
                        stream.recv().await;
                    }
                    Err(err) => {
                        tracing::error!(cause = %err, "cannot listen for {name}");
                        std::future::pending::<()>().await;
                    }
                }
            }
        };
        (listen(SignalKind::interrupt(), "SIGINT"), listen(SignalKind::terminate(), "SIGTERM"))
    };
    #[cfg(not(unix))]
    let (ctrl_c, term) = (
        async {
            if let Err(err) = tokio::signal::ctrl_c().await {
                tracing::error!(cause = %err, "cannot listen for SIGINT");
                std::future::pending::<()>().await;
            }
        },
        std::future::pending::<()>(),
    );
    async move {
        tokio::select! {
            () = ctrl_c => tracing::info!("received SIGINT"),
            () = term => tracing::info!("received SIGTERM"),
        }
    }
}
