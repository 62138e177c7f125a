//! `kv-eval sim`: the deterministic simulator from the command line: a soak over many seeds,
//! printing the failing ones, or one seed with its plan and trace.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use clap::Args;
use kv_eval::sim::{self, RunOptions, RunReport, Setting};

#[derive(Debug, Args)]
pub(crate) struct SimArgs {
    /// Seeds to run per setting, from --first-seed on.
    #[arg(long, default_value_t = 100)]
    seeds: u64,
    /// The first seed of a soak.
    #[arg(long, default_value_t = 1)]
    first_seed: u64,
    /// Settings, comma-separated: strong-rN, eventual-rN, eventual-rN-syncK (default: all six
    /// that CI runs).
    #[arg(long, value_delimiter = ',')]
    settings: Vec<Setting>,
    /// Run this one seed (with each setting), and print its plan and result.
    #[arg(long)]
    seed: Option<u64>,
    /// With --seed: print the whole trace (messages, faults, operations).
    #[arg(long, requires = "seed")]
    trace: bool,
    /// Let the shard master crash among the faults too (it restarts from the state it saved);
    /// it crashes around a membership change in a third of the runs anyway.
    #[arg(long)]
    master_crashes: bool,
    /// The servers keep their disks across crashes: a restarted one comes back with its data
    /// (taken back in place by the shard master), and three runs in four add a crash of every
    /// server at once.
    #[arg(long)]
    durable: bool,
    /// Threads to run seeds on (default: the machine's cores).
    #[arg(long)]
    threads: Option<usize>,
}

pub(crate) fn main(args: &SimArgs) -> Result<bool> {
    let settings = if args.settings.is_empty() { Setting::all() } else { args.settings.clone() };
    let options =
        RunOptions { trace: args.trace, master_crashes: args.master_crashes, durable: args.durable };
    if let Some(seed) = args.seed {
        let mut passed = true;
        for &setting in &settings {
            let report = sim::run(seed, setting, options);
            print_one(&report, args.trace);
            passed &= report.passed();
        }
        return Ok(passed);
    }
    if args.seeds == 0 {
        bail!("--seeds must be at least 1");
    }
    let runs: Vec<(u64, Setting)> = settings
        .iter()
        .flat_map(|&setting| (args.first_seed..args.first_seed + args.seeds).map(move |seed| (seed, setting)))
        .collect();
    let threads = args.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from));
    println!(
        "simulating {} runs ({} seeds × {} settings) on {threads} threads",
        runs.len(),
        args.seeds,
        settings.len()
    );
    let started = Instant::now();
    let finished = AtomicUsize::new(0);
    let total = runs.len();
    let reports = sim::run_many(&runs, options, threads, &|report: &RunReport| {
        let n = finished.fetch_add(1, Ordering::Relaxed) + 1;
        if !report.passed() {
            println!("FAIL seed {} {}: {}", report.seed, report.setting, report.problems.join(" | "));
        } else if n.is_multiple_of(100) {
            println!("  {n}/{total} runs");
        }
    });
    let wall = started.elapsed();
    summarise(&reports, wall);
    Ok(reports.iter().all(RunReport::passed))
}

fn print_one(report: &RunReport, trace: bool) {
    println!("seed {} {}: the plan", report.seed, report.setting);
    for line in &report.plan {
        println!("  {line}");
    }
    if trace {
        for line in &report.trace {
            println!("{line}");
        }
    }
    let (ok, fail, unknown) = report.ops;
    println!(
        "seed {} {}: {} ({ok} ok, {fail} failed, {unknown} unknown operations; {:.1} s simulated in {:.2} s; \
         longest wait for a write after the heal {:.2} s{}; trace {:016x}, {} events)",
        report.seed,
        report.setting,
        if report.passed() { "passed" } else { "FAILED" },
        report.simulated.as_secs_f64(),
        report.wall.as_secs_f64(),
        report.longest_gap.as_secs_f64(),
        report
            .longest_gap_under_cut
            .map(|gap| format!(", under the lasting cut {:.2} s", gap.as_secs_f64()))
            .unwrap_or_default(),
        report.trace_hash,
        report.events,
    );
    for problem in &report.problems {
        println!("  problem: {problem}");
    }
}

fn summarise(reports: &[RunReport], wall: Duration) {
    let mut settings: Vec<Setting> = Vec::new();
    for report in reports {
        if !settings.contains(&report.setting) {
            settings.push(report.setting);
        }
    }
    println!(
        "setting            runs  failed  ops/run  longest write gap s  under a lasting cut s  sim s/run  wall s/run"
    );
    for setting in settings {
        let mine: Vec<&RunReport> = reports.iter().filter(|r| r.setting == setting).collect();
        let n = mine.len().max(1) as f64;
        let failed = mine.iter().filter(|r| !r.passed()).count();
        let ops: usize = mine.iter().map(|r| r.ops.0 + r.ops.1 + r.ops.2).sum();
        let gap = mine.iter().map(|r| r.longest_gap).max().unwrap_or_default();
        let cut_gap = mine.iter().filter_map(|r| r.longest_gap_under_cut).max();
        let cut_gap = cut_gap.map_or_else(|| "-".to_owned(), |gap| format!("{:.2}", gap.as_secs_f64()));
        let simulated: f64 = mine.iter().map(|r| r.simulated.as_secs_f64()).sum();
        let spent: f64 = mine.iter().map(|r| r.wall.as_secs_f64()).sum();
        println!(
            "{:<17} {:>5}  {failed:>6}  {:>7.0}  {:>19.2}  {cut_gap:>21}  {:>9.1}  {:>10.3}",
            setting.to_string(),
            mine.len(),
            ops as f64 / n,
            gap.as_secs_f64(),
            simulated / n,
            spent / n
        );
    }
    let failing: Vec<String> =
        reports.iter().filter(|r| !r.passed()).map(|r| format!("{} {}", r.seed, r.setting)).collect();
    println!(
        "{} runs in {:.1} s: {:.1} runs/s; {} failed{}",
        reports.len(),
        wall.as_secs_f64(),
        reports.len() as f64 / wall.as_secs_f64().max(1e-9),
        failing.len(),
        if failing.is_empty() { String::new() } else { format!(": {}", failing.join(", ")) }
    );
}
