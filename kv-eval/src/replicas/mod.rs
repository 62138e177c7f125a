//! Subtask 3: a replicated store — a shard master and storage servers, all real `kv-server`
//! processes on loopback without fault-injecting proxies, with a replication factor `R` and a
//! *level*: the secondaries that apply a write before it is acknowledged ([`Setting`]; level
//! `R − 1` is strong consistency, lower levels eventual).
//!
//! Four phases, each setting on a fresh cluster that has settled (every replica synced):
//! 1. `levels`: the course assignment's experiment at `R = 3`, levels 0, 1 and 2 — clients
//!    looping over a put and a get of the same key, through cluster clients that read from any
//!    replica; pairs and errors per second, and the errors told apart by the recorded history:
//!    stale reads against another client's newer value (`analysis`), with the linearizability
//!    checker's verdict. At the strong level a stale read or a non-linearizable history fails.
//! 2. `throughput`: puts only, then gets only, with the single-node benchmark's closed loop, by
//!    replication factor and level. It asserts no speed.
//! 3. `staleness`: eventual levels under writers and any-replica readers: the share of stale
//!    reads and how far behind they were, then how long after the last write every replica of
//!    every key agrees with its primary; not within three sync intervals and 5 s fails.
//! 4. `failover`: per setting, the primary of a key killed (`kill -9`) under a recorded load;
//!    the time until its slots take writes again (against a 1.5 s bar, reported, not failed),
//!    operations failed meanwhile, throughput over time with the kill marked, and, where the
//!    store promises it, the whole history linearizable and every acknowledged append present
//!    exactly once (`failover`).
//!
//! Tables go to standard output and charts to SVG files (`presentation`); every check is a
//! [`CheckOutcome`], and [`Report::passed`] is false if any failed. Every process started is
//! stopped, also on failure: dropping a [`crate::harness::cluster::Cluster`] kills what is left of it.

mod analysis;
mod bars;
mod failover;
mod levels;
mod presentation;
mod setting;
mod setup;
mod staleness;
mod throughput;
mod workload;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde::Serialize;

pub use analysis::{PairTally, StaleRead, StaleReads};
pub use failover::{Counts, FailoverConfig, FailoverReport, RECOVERY_BAR, RECOVERY_LIMIT, Stalls};
pub use levels::{LevelRow, LevelsConfig};
pub use setting::Setting;
pub use staleness::{Convergence, StalenessConfig, StalenessRow};
pub use throughput::{ThroughputConfig, ThroughputRow};

use crate::load::checks::CheckOutcome;

/// A phase of the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// The assignment's put-then-get experiment, by level.
    Levels,
    /// Throughput of puts and of gets by replication factor and level.
    Throughput,
    /// Stale reads and convergence under eventual consistency.
    Staleness,
    /// A primary killed under load.
    Failover,
}

/// How to run subtask 3.
#[derive(Debug, Clone)]
pub struct Options {
    /// The `kv-server` binary (default: found by [`crate::harness::process::find_binary`]).
    pub server_bin: Option<PathBuf>,
    /// The phases to run, in the order of [`Phase`].
    pub phases: Vec<Phase>,
    /// Storage servers of every cluster (at least the largest replication factor).
    pub servers: usize,
    /// The storage servers keep their data on disk (`--fsync always`) rather than in memory.
    pub durable: bool,
    /// The eventual levels' sync interval (`--sync-interval-ms` of the shard master).
    pub sync_interval: Duration,
    /// The `levels` phase.
    pub levels: LevelsConfig,
    /// The `throughput` phase.
    pub throughput: ThroughputConfig,
    /// The `staleness` phase.
    pub staleness: StalenessConfig,
    /// The `failover` phase.
    pub failover: FailoverConfig,
    /// Where the charts go.
    pub charts: ChartPaths,
    /// Show a progress bar while the benchmark runs.
    pub progress: bool,
    /// Seed of every random choice.
    pub seed: u64,
}

/// Where each chart is written (SVG).
#[derive(Debug, Clone, Serialize)]
pub struct ChartPaths {
    /// Pairs, errors and stale reads per second, by level.
    pub levels: PathBuf,
    /// Puts and gets per second, by replication factor and level.
    pub throughput: PathBuf,
    /// Throughput over time across the failover: one chart per setting, named after this path
    /// and the setting ([`ChartPaths::failover_of`]).
    pub failover: PathBuf,
}

impl ChartPaths {
    /// `PREFIX-levels.svg`, `PREFIX-throughput.svg` and `PREFIX-failover.svg` in `dir`.
    pub fn in_dir(dir: &std::path::Path, prefix: &str) -> Self {
        ChartPaths {
            levels: dir.join(format!("{prefix}-levels.svg")),
            throughput: dir.join(format!("{prefix}-throughput.svg")),
            failover: dir.join(format!("{prefix}-failover.svg")),
        }
    }

    /// The failover chart of `setting`: `PREFIX-failover-r3-level2.svg` beside `failover`.
    pub fn failover_of(&self, setting: Setting) -> PathBuf {
        let stem = self.failover.file_stem().map_or_else(|| "failover".into(), |s| s.to_string_lossy());
        let name = format!("{stem}-r{}-level{}.svg", setting.factor(), setting.level());
        self.failover.with_file_name(name)
    }
}

/// Everything subtask 3 measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Every pass/fail check, phase by phase.
    pub checks: Vec<CheckOutcome>,
    /// The assignment's experiment, one row per level.
    pub levels: Vec<LevelRow>,
    /// Throughput and latency, one row per setting.
    pub throughput: Vec<ThroughputRow>,
    /// Stale reads and convergence, one row per level.
    pub staleness: Vec<StalenessRow>,
    /// A primary killed under load, one row per setting.
    pub failover: Vec<FailoverReport>,
    /// The charts drawn.
    pub charts: Vec<PathBuf>,
    /// Whether every check passed.
    pub passed: bool,
}

/// Runs subtask 3 and prints its progress and tables on standard output.
pub fn run(options: &Options) -> Result<Report> {
    validate(options)?;
    let mut report = Report {
        checks: Vec::new(),
        levels: Vec::new(),
        throughput: Vec::new(),
        staleness: Vec::new(),
        failover: Vec::new(),
        charts: Vec::new(),
        passed: false,
    };
    if options.phases.contains(&Phase::Levels) {
        println!("\nthe assignment's experiment: put then get, by level");
        report.levels = levels::run(options)?;
        let checks = presentation::level_checks(&report.levels);
        print!("{}", presentation::levels_table(&report.levels));
        print!("{}", crate::load::report::checks_table(&checks));
        report.checks.extend(checks);
        let svg = presentation::levels_chart(&options.levels, &report.levels)?;
        report.charts.push(write_chart(&options.charts.levels, &svg)?);
    }
    if options.phases.contains(&Phase::Throughput) {
        println!("\nthroughput of puts and of gets by replication factor and level");
        report.throughput = throughput::run(options)?;
        let checks = presentation::throughput_checks(&report.throughput);
        print!("{}", presentation::throughput_table(&report.throughput));
        print!("{}", crate::load::report::checks_table(&checks));
        report.checks.extend(checks);
        let svg = presentation::throughput_chart(&report.throughput)?;
        report.charts.push(write_chart(&options.charts.throughput, &svg)?);
    }
    if options.phases.contains(&Phase::Staleness) {
        println!("\nstale reads and convergence under eventual consistency");
        report.staleness = staleness::run(options)?;
        let checks = presentation::staleness_checks(&report.staleness);
        print!("{}", presentation::staleness_table(&report.staleness));
        print!("{}", crate::load::report::checks_table(&checks));
        report.checks.extend(checks);
    }
    if options.phases.contains(&Phase::Failover) {
        println!("\nfailover: a primary killed under load");
        report.failover = failover::run(options)?;
        let checks = failover::checks(&report.failover);
        print!("{}", failover::table(&report.failover));
        print!("{}", crate::load::report::checks_table(&checks));
        report.checks.extend(checks);
        for row in &report.failover {
            let svg = failover::chart(row)?;
            report.charts.push(write_chart(&options.charts.failover_of(row.setting), &svg)?);
        }
    }
    report.passed = report.checks.iter().all(|c| c.passed);
    Ok(report)
}

/// Refuses options that cannot run, before any server starts.
fn validate(options: &Options) -> Result<()> {
    let factors = options
        .throughput
        .settings
        .iter()
        .map(|s| s.factor())
        .chain(options.failover.settings.iter().map(|s| s.factor()))
        .chain([options.levels.factor, options.staleness.factor]);
    let largest = factors.max().unwrap_or(1);
    ensure!(
        options.servers >= largest,
        "{} storage servers cannot hold {largest} replicas of a slot",
        options.servers
    );
    for (what, factor, levels) in [
        ("levels", options.levels.factor, &options.levels.levels),
        ("staleness", options.staleness.factor, &options.staleness.levels),
    ] {
        for &level in levels {
            Setting::new(factor, level).with_context(|| format!("the {what} phase"))?;
        }
    }
    ensure!(options.levels.clients > 0, "the levels phase needs at least one client");
    ensure!(
        options.staleness.writers > 0 && options.staleness.readers > 0,
        "the staleness phase needs at least one writer and one reader"
    );
    ensure!(!options.sync_interval.is_zero(), "the sync interval must be above zero");
    if options.phases.contains(&Phase::Failover) {
        let failover = &options.failover;
        for setting in &failover.settings {
            ensure!(
                setting.factor() >= 2,
                "the failover phase needs a replication factor of at least 2 (at {setting}, a killed \
                 primary's slots have no other copy)"
            );
        }
        ensure!(failover.clients > 0, "the failover phase needs at least one client");
        ensure!(failover.probes > 0, "the failover phase needs at least one probe");
    }
    Ok(())
}

/// Writes a chart and says where.
fn write_chart(path: &std::path::Path, svg: &str) -> Result<PathBuf> {
    crate::load::chart::write_svg(path, svg)?;
    println!("  chart: {}", path.display());
    Ok(path.to_path_buf())
}

fn as_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}
