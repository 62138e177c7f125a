//! Resharding under load: recorded clients keep a cluster busy while servers join and leave on
//! a schedule.
//!
//! The run, in order:
//! 1. start a shard master and [`LoadConfig::initial_servers`] storage servers, connect one
//!    recorded cluster client per process, and preload every key (recorded too, so the checker
//!    knows where each key starts);
//! 2. for [`LoadConfig::duration`], every process runs gets, puts and appends back to back while,
//!    on a thread of its own, the schedule starts servers (joins) and stops the oldest members
//!    (leaves, with their data handed off); the load runs on until every change is done, so each
//!    happens under load;
//! 3. read every key once more (recorded), check the whole history for linearizability, and
//!    check the final values append by append: every value written is unique, and a quarter of
//!    the keys take puts and the rest only appends, so each append key's final value lists the
//!    appends it holds.
//!
//! The changes themselves are made and measured by `membership`; the report is judged here
//! ([`phase_checks`]) and shown by `presentation`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use kv_client::Client;
use serde::Serialize;

use super::membership::{self, ChangeKind, MembershipChange};
use super::{Options, client_runtime, keep_files_if_asked, master_addr, secs_since, start_cluster};
use crate::harness::cluster::Cluster;
use crate::harness::history::{History, Outcome};
use crate::harness::linearizability;
use crate::harness::mix::Mix;
use crate::harness::recorder::Recorder;
use crate::load::analysis::{self, AppendAudit, Bucket};
use crate::load::checks::CheckOutcome;
use crate::load::recorded_load::{KeySpace, client_loop, final_reads, initial_value, preload};

/// The load of the resharding phase and its schedule of membership changes.
#[derive(Debug, Clone, Serialize)]
pub struct LoadConfig {
    /// Storage servers at the start.
    pub initial_servers: usize,
    /// Concurrent clients, each a process of the history.
    pub clients: usize,
    /// Distinct keys (at least 2): every fourth is written with puts, the others with appends.
    pub keys: usize,
    /// Weights of `get`, `put` and `append` (no other operation).
    pub mix: Mix,
    /// How long the load runs at least (it runs on until every change is done).
    #[serde(serialize_with = "as_secs")]
    pub duration: Duration,
    /// The changes, each at a fraction of `duration`.
    pub schedule: Vec<(f64, ChangeKind)>,
    /// The longest one attempt of a call may take.
    #[serde(serialize_with = "as_secs")]
    pub timeout: Duration,
    /// Width of a slice of the throughput-over-time series.
    #[serde(serialize_with = "as_secs")]
    pub bucket: Duration,
    /// How long the linearizability check may take before it answers unknown.
    #[serde(serialize_with = "as_secs")]
    pub check_budget: Duration,
    /// Seed of the workload.
    pub seed: u64,
}

impl Default for LoadConfig {
    fn default() -> Self {
        LoadConfig {
            initial_servers: 2,
            clients: 16,
            keys: 300,
            mix: "get=40,put=20,append=40".parse().expect("the default mix parses"),
            duration: Duration::from_secs(12),
            schedule: vec![
                (0.2, ChangeKind::Join),
                (0.4, ChangeKind::Join),
                (0.6, ChangeKind::Leave),
                (0.8, ChangeKind::Leave),
            ],
            timeout: Duration::from_secs(2),
            bucket: Duration::from_millis(250),
            check_budget: Duration::from_secs(60),
            seed: 1,
        }
    }
}

fn as_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// Everything the resharding phase measured.
#[derive(Debug, Clone, Serialize)]
pub struct ReshardingReport {
    /// What was run.
    pub config: LoadConfig,
    /// How long the load ran.
    pub load_secs: f64,
    /// Operations of the load that succeeded.
    pub ok: usize,
    /// Operations of the load known not to have happened (refused, or out of attempts).
    pub fail: usize,
    /// Operations of the load whose outcome is unknown.
    pub unknown: usize,
    /// Successful operations per second over the whole load.
    pub ops_per_sec: f64,
    /// Latency of successful operations: 99th percentile, in milliseconds.
    pub p99_ms: f64,
    /// The longest stall any key saw: the slowest successful operation, in milliseconds.
    pub max_latency_ms: f64,
    /// Throughput over time.
    pub buckets: Vec<Bucket>,
    /// The membership changes, in order.
    pub changes: Vec<MembershipChange>,
    /// Why the schedule stopped before its end, if it did.
    pub schedule_error: Option<String>,
    /// Keys of the load.
    pub keys: usize,
    /// Keys that could not be read back after the load.
    pub unread_keys: Vec<String>,
    /// The append-by-append check of the final values.
    pub appends: AppendAudit,
    /// The linearizability checker's verdict on the whole history.
    pub linearizability: linearizability::Report,
    /// The recorded history (preload, load, final reads).
    #[serde(skip)]
    pub history: History,
}

/// Runs the phase; returns its report and its checks.
pub(super) fn run(options: &Options) -> Result<(ReshardingReport, Vec<CheckOutcome>)> {
    let config = &options.load;
    for op in config.mix.to_string().split(',').filter_map(|part| part.split('=').next()) {
        ensure!(
            matches!(op, "get" | "put" | "append"),
            "the resharding load runs get, put and append only, not {op}"
        );
    }
    ensure!(config.clients > 0, "the resharding load needs at least one client");
    let mut cluster = start_cluster(options, config.initial_servers)?;
    let result = record(&mut cluster, options).map(|recorded| {
        let report = analyse(config, recorded);
        let checks = phase_checks(&report);
        (report, checks)
    });
    keep_files_if_asked(
        &mut cluster,
        result.as_ref().map_or(true, |(_, checks)| checks.iter().any(|c| !c.passed)),
    );
    result
}

/// What a run recorded, before analysis.
struct Recorded {
    history: History,
    /// When the load started, on the history's clock.
    from: Duration,
    load_secs: f64,
    changes: Vec<MembershipChange>,
    schedule_error: Option<String>,
    keys: Arc<KeySpace>,
    finals: BTreeMap<String, Option<String>>,
    unread_keys: Vec<String>,
}

/// Preloads, runs the load through the schedule of changes, and reads every key back.
fn record(cluster: &mut Cluster, options: &Options) -> Result<Recorded> {
    let config = &options.load;
    let master = master_addr(cluster)?;
    let rt = client_runtime()?;
    let recorder = Recorder::new();
    // The recorder's clock started just now: history times are measured from here.
    let clock = Instant::now();
    let keys = Arc::new(KeySpace::new(config.keys, ""));
    let clients = rt.block_on(async {
        let mut clients = Vec::new();
        for process in 0..config.clients as u64 {
            clients.push(recorder.client(process, connect(&master, config.timeout).await?));
        }
        preload(&clients, &keys.all).await?;
        Ok::<_, anyhow::Error>(clients)
    })?;
    println!(
        "  {} clients over {} keys ({} take puts, {} appends), mix {}, for {:.1} s; schedule: {}",
        config.clients,
        keys.all.len(),
        keys.put.len(),
        keys.append.len(),
        config.mix,
        config.duration.as_secs_f64(),
        config
            .schedule
            .iter()
            .map(|(at, kind)| format!("{} at {:.0}%", kind.name(), at * 100.0))
            .collect::<Vec<_>>()
            .join(", ")
    );

    let start = Instant::now();
    let done = Arc::new(AtomicBool::new(false));
    let handle = rt.handle().clone();
    let (changes, schedule_error) = std::thread::scope(|scope| {
        let membership = scope.spawn(|| {
            let changes = membership::membership(
                cluster,
                &handle,
                &master,
                &config.schedule,
                config.duration,
                &keys.all,
                start,
            );
            done.store(true, Ordering::Relaxed);
            changes
        });
        rt.block_on(async {
            let mut tasks = tokio::task::JoinSet::new();
            for client in clients {
                let (keys, done, mix) = (Arc::clone(&keys), Arc::clone(&done), config.mix.clone());
                let (seed, deadline) = (config.seed, start + config.duration);
                let go_on = move || Instant::now() < deadline || !done.load(Ordering::Relaxed);
                tasks.spawn(client_loop(client, keys, mix, seed, go_on));
            }
            while tasks.join_next().await.is_some() {}
        });
        membership.join().unwrap_or_else(|_| (Vec::new(), Some("the membership thread panicked".to_owned())))
    });
    let load_secs = secs_since(start);

    let reader = recorder.client(config.clients as u64, rt.block_on(connect(&master, config.timeout))?);
    let (finals, unread_keys) = rt.block_on(final_reads(&reader, &keys.all));
    Ok(Recorded {
        history: recorder.history(),
        from: start.duration_since(clock),
        load_secs,
        changes,
        schedule_error,
        keys,
        finals,
        unread_keys,
    })
}

/// Puts together what the phase measured.
fn analyse(config: &LoadConfig, recorded: Recorded) -> ReshardingReport {
    let Recorded { history, from, load_secs, mut changes, schedule_error, keys, finals, unread_keys } =
        recorded;
    let linearizability = linearizability::check_with_budget(&history, config.check_budget);
    let appends = analysis::audit_appends(&history, &keys.append, &finals, initial_value);
    let ops = analysis::load_ops(&history, config.clients as u64, from);
    let buckets = analysis::buckets(&ops, from, load_secs, config.bucket);
    for change in &mut changes {
        let window = (change.at_secs, change.at_secs + change.duration_secs);
        change.max_latency_ms = analysis::max_latency_ms(&ops, from, Some(window));
        change.min_ops_per_sec = buckets
            .iter()
            .filter(|b| b.start_secs <= window.1 && b.start_secs + b.secs >= window.0)
            .map(|b| b.ops_per_sec)
            .fold(f64::INFINITY, f64::min);
    }
    let count = |f: fn(&Outcome) -> bool| ops.iter().filter(|op| f(&op.outcome)).count();
    let ok = count(|o| matches!(o, Outcome::Ok(_)));
    ReshardingReport {
        config: config.clone(),
        load_secs,
        ok,
        fail: count(|o| matches!(o, Outcome::Fail)),
        unknown: count(|o| matches!(o, Outcome::Unknown)),
        ops_per_sec: ok as f64 / load_secs.max(1e-9),
        p99_ms: analysis::latency_quantile_ms(&ops, 0.99),
        max_latency_ms: analysis::max_latency_ms(&ops, from, None),
        buckets,
        changes,
        schedule_error,
        keys: keys.all.len(),
        unread_keys,
        appends,
        linearizability,
        history,
    }
}

async fn connect(master: &str, timeout: Duration) -> Result<Client> {
    Client::cluster_builder(master)
        .timeout(timeout)
        .connect_timeout(timeout)
        .connect()
        .await
        .with_context(|| format!("cannot connect to the cluster at {master}"))
}

/// The phase's pass/fail checks.
fn phase_checks(report: &ReshardingReport) -> Vec<CheckOutcome> {
    let check = |name: String, problem: Option<String>, seconds: f64, note: String| CheckOutcome {
        name,
        passed: problem.is_none(),
        detail: problem.unwrap_or(note),
        seconds,
    };
    let changes = &report.changes;
    let joins = changes.iter().filter(|c| c.kind == ChangeKind::Join).count();
    let failed = changes.iter().find(|c| !c.succeeded);
    let unsettled = changes.iter().find_map(|c| {
        c.members
            .iter()
            .find(|m| {
                m.epoch != c.epoch_after
                    || m.incoming_slots > 0
                    || m.outgoing_slots > 0
                    || m.keys_held != m.keys_owned
            })
            .map(|m| {
                format!(
                    "after the {} at {:.2} s, {} is at epoch {} (master: {}) with {} incoming and {} \
                     outgoing slots, holding {} keys where it owns {}",
                    c.kind.name(),
                    c.at_secs,
                    m.server,
                    m.epoch,
                    c.epoch_after,
                    m.incoming_slots,
                    m.outgoing_slots,
                    m.keys_held,
                    m.keys_owned
                )
            })
    });
    let lin = &report.linearizability;
    let a = &report.appends;
    let lin_problem = match &lin.verdict {
        linearizability::Verdict::Linearizable => None,
        linearizability::Verdict::NotLinearizable { key, reason, .. } => {
            Some(format!("NOT linearizable on key {key}: {reason}"))
        }
        linearizability::Verdict::Unknown { reason } => Some(format!("undecided: {reason}")),
    };
    vec![
        check(
            format!("resharding: {} joins and {} leaves under load completed", joins, changes.len() - joins),
            failed.map(|c| {
                format!("the {} of {} at {:.2} s: {}", c.kind.name(), c.server, c.at_secs, c.detail)
            }),
            changes.iter().map(|c| c.duration_secs).sum(),
            "ok".into(),
        ),
        check(
            "resharding: after each change every member holds exactly the keys it owns".into(),
            unsettled,
            0.0,
            "ok".into(),
        ),
        check(
            format!("resharding: every key read back after the load ({} keys)", report.keys),
            (!report.unread_keys.is_empty()).then(|| {
                format!("{} key(s) unreadable, e.g. {}", report.unread_keys.len(), report.unread_keys[0])
            }),
            0.0,
            "ok".into(),
        ),
        check(
            "resharding: the history is linearizable".into(),
            lin_problem,
            lin.elapsed,
            format!("ok: {} operations on {} keys", lin.ops_checked, lin.keys_checked),
        ),
        check(
            "resharding: every acknowledged append applied exactly once".into(),
            a.problems(),
            0.0,
            a.summary(),
        ),
    ]
}
