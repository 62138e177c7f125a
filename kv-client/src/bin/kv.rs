//! `kv`: the kv store's command-line client.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use kv_client::{Client, Error, ServerStatus, ShardMaster, server_status};

/// Command-line client of the kv store.
///
/// Output: `get`, `lpop` and `rpop` print the value followed by a newline on standard output. A
/// missing key prints nothing on standard output and `(no value)` on standard error; an empty
/// value prints an empty line. `put`, `append` and `delete` print nothing.
///
/// With `--shardmaster` (or `KV_SHARDMASTER`), data commands go to the cluster: each to the server
/// that owns its key, following the shard master's map. Without it they go to `--endpoint`.
///
/// `cluster status|join|leave` talk to the shard master (default 127.0.0.1:50050) and print the
/// configuration as a table, with what each server reports holding.
///
/// Exit codes: 0 success; 1 no value (the key is missing; for `delete`, it did not exist);
/// 2 bad command line; 3 refused by the server (bad input: nothing changed); 4 the server could
/// not be reached or the call failed (a write may or may not have been applied).
#[derive(Debug, Parser)]
#[command(name = "kv", version, about, long_about)]
struct Cli {
    /// Storage server address, `host:port`, for data commands without `--shardmaster`.
    #[arg(long, short, env = "KV_ENDPOINT", default_value = "127.0.0.1:50051")]
    endpoint: String,

    /// Shard master address, `host:port`: data commands go to the cluster it manages, and the
    /// `cluster` commands to it (for those, default 127.0.0.1:50050).
    #[arg(long, short = 's', env = "KV_SHARDMASTER")]
    shardmaster: Option<String>,

    /// Seconds before a call gives up.
    #[arg(long, env = "KV_TIMEOUT_SECS", default_value_t = 10.0)]
    timeout: f64,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the value of KEY.
    Get {
        /// The key.
        key: String,
    },
    /// Set KEY to VALUE.
    Put {
        /// The key.
        key: String,
        /// The value.
        value: String,
    },
    /// Append VALUE to the right end of KEY's value, creating the key.
    Append {
        /// The key.
        key: String,
        /// The text to append.
        value: String,
    },
    /// Remove and print the first character of KEY's value.
    Lpop {
        /// The key.
        key: String,
    },
    /// Remove and print the last character of KEY's value.
    Rpop {
        /// The key.
        key: String,
    },
    /// Remove KEY.
    Delete {
        /// The key.
        key: String,
    },
    /// The cluster, through its shard master (`--shardmaster`).
    #[command(subcommand)]
    Cluster(ClusterCommand),
}

#[derive(Debug, Subcommand)]
enum ClusterCommand {
    /// Print the configuration: epoch, servers, and the slots each holds.
    Status,
    /// Add the storage server SERVER (`host:port`).
    Join {
        /// The server's address, as clients should dial it.
        server: String,
    },
    /// Remove the storage server SERVER.
    Leave {
        /// The server's address.
        server: String,
    },
}

/// Exit codes a script can rely on.
mod exit {
    pub(super) const NO_VALUE: u8 = 1;
    pub(super) const REFUSED: u8 = 3;
    pub(super) const FAILED: u8 = 4;
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !(cli.timeout.is_finite() && cli.timeout > 0.0) {
        eprintln!("kv: --timeout must be a positive number of seconds");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("kv: cannot start the async runtime: {err}");
            return ExitCode::from(exit::FAILED);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(err) => {
            // The error, and the innermost cause (say, "Connection refused"), which says most.
            let mut message = err.to_string();
            let mut innermost = None;
            let mut cause = std::error::Error::source(&err);
            while let Some(inner) = cause {
                innermost = Some(inner.to_string());
                cause = inner.source();
            }
            if let Some(text) = innermost.filter(|text| !message.contains(text.as_str())) {
                message = format!("{message}: {text}");
            }
            eprintln!("kv: {message}");
            ExitCode::from(match err {
                Error::Rejected(_) if err.is_definite() && !err.is_retryable() => exit::REFUSED,
                Error::InvalidEndpoint { .. } => 2,
                _ => exit::FAILED,
            })
        }
    }
}

async fn run(cli: Cli) -> Result<ExitCode, Error> {
    let timeout = Duration::from_secs_f64(cli.timeout);
    if let Command::Cluster(command) = &cli.command {
        let shardmaster = cli.shardmaster.as_deref().unwrap_or("127.0.0.1:50050");
        return cluster(shardmaster, command, timeout).await;
    }
    let builder = match cli.shardmaster {
        Some(shardmaster) => Client::cluster_builder(shardmaster),
        None => Client::builder(cli.endpoint),
    };
    let client = builder.timeout(timeout).connect_timeout(timeout).connect().await?;
    let code = match cli.command {
        Command::Get { key } => print_value(client.get(key).await?),
        Command::Lpop { key } => print_value(client.lpop(key).await?),
        Command::Rpop { key } => print_value(client.rpop(key).await?),
        Command::Put { key, value } => {
            client.put(key, value).await?;
            ExitCode::SUCCESS
        }
        Command::Append { key, value } => {
            client.append(key, value).await?;
            ExitCode::SUCCESS
        }
        Command::Delete { key } => {
            if client.delete(key).await? {
                ExitCode::SUCCESS
            } else {
                eprintln!("(no such key)");
                ExitCode::from(exit::NO_VALUE)
            }
        }
        Command::Cluster(_) => unreachable!("handled above"),
    };
    Ok(code)
}

async fn cluster(shardmaster: &str, command: &ClusterCommand, timeout: Duration) -> Result<ExitCode, Error> {
    let master = ShardMaster::connect(shardmaster).await?;
    let config = match command {
        ClusterCommand::Status => master.config().await?,
        ClusterCommand::Join { server } => master.join(server.clone()).await?,
        ClusterCommand::Leave { server } => master.leave(server.clone()).await?,
    };
    // What each server holds, asked of all of them at once.
    let probes = config.members().map(|(_, address)| {
        let address = address.to_owned();
        tokio::spawn(async move { server_status(&address, timeout.min(Duration::from_secs(2))).await.ok() })
    });
    let mut statuses = Vec::new();
    for probe in probes.collect::<Vec<_>>() {
        statuses.push(probe.await.ok().flatten());
    }
    let mut out = std::io::stdout().lock();
    let printed = print_config(&mut out, &config, &statuses).and_then(|()| out.flush());
    Ok(if printed.is_ok() { ExitCode::SUCCESS } else { ExitCode::from(exit::FAILED) })
}

/// The configuration as a table: one line per server with the slots it owns, and what it
/// reports (`statuses`, in member order; `None` if it did not answer).
fn print_config(
    out: &mut impl Write,
    config: &kv_shard::Config,
    statuses: &[Option<ServerStatus>],
) -> std::io::Result<()> {
    let counts = config.slot_counts();
    writeln!(out, "epoch {}, {} server(s), {} slots", config.epoch(), config.len(), kv_shard::SLOTS)?;
    let replication = config.replication();
    match replication.consistency {
        kv_shard::Consistency::Strong => writeln!(
            out,
            "replication factor {}, strong consistency (level {})",
            replication.factor,
            replication.level()
        )?,
        kv_shard::Consistency::Eventual => writeln!(
            out,
            "replication factor {}, eventual consistency (level {}: {} synchronous secondaries, the others \
             within {} ms)",
            replication.factor,
            replication.level(),
            replication.sync_replicas,
            replication.sync_interval.as_millis()
        )?,
    }
    if config.is_empty() {
        return writeln!(out, "no server: no key is served");
    }
    let width = config.members().map(|(_, a)| a.len()).max().unwrap_or(0).max("server".len());
    writeln!(
        out,
        "{:>4}  {:<width$}  {:>6}  {:>6}  {:>8}  {:>8}  {:>6}  state",
        "id", "server", "primary", "share", "replica", "keys", "epoch"
    )?;
    for ((id, address), status) in config.members().zip(statuses) {
        let slots = counts.get(&id).copied().unwrap_or(0);
        let share = 100.0 * slots as f64 / kv_shard::SLOTS as f64;
        let (keys, replica, epoch, state) = match status {
            None => ("-".to_owned(), "-".to_owned(), "-".to_owned(), "unreachable".to_owned()),
            Some(s) => {
                let state = if s.incoming_slots > 0 {
                    format!("receiving {} slots", s.incoming_slots)
                } else if s.syncing_slots > 0 {
                    format!("catching up {} replica slots", s.syncing_slots)
                } else if s.epoch < config.epoch() {
                    "behind".to_owned()
                } else {
                    "ok".to_owned()
                };
                (s.keys.to_string(), s.replica_slots.to_string(), s.epoch.to_string(), state)
            }
        };
        writeln!(
            out,
            "{:>4}  {:<width$}  {:>6}  {:>5.1}%  {replica:>8}  {keys:>8}  {epoch:>6}  {state}",
            id.0, address, slots, share
        )?;
    }
    Ok(())
}

fn print_value(value: Option<String>) -> ExitCode {
    match value {
        Some(value) => {
            let mut out = std::io::stdout().lock();
            if writeln!(out, "{value}").and_then(|()| out.flush()).is_err() {
                return ExitCode::from(exit::FAILED);
            }
            ExitCode::SUCCESS
        }
        None => {
            eprintln!("(no value)");
            ExitCode::from(exit::NO_VALUE)
        }
    }
}
