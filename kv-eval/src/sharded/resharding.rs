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
//! Keys moved by a change are computed from the configurations before and after it: a key moved
//! if its slot's owner changed. The ideal is `K / (N + 1)` for a join to `N` servers, and the
//! leaver's keys for a leave.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use kv_client::{Client, server_status};
use kv_shard::{Config, SLOTS};
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use serde::Serialize;
use tokio::runtime::Handle;

use super::analysis::{self, AppendAudit, Bucket};
use super::{
    Options, STOP_TIMEOUT, client_runtime, current_config, keep_files_if_asked, master_addr, node_by_addr,
    secs_since, start_cluster,
};
use crate::bench::{Mix, OpKind};
use crate::chart::{self, Marker};
use crate::checks::CheckOutcome;
use crate::cluster::Cluster;
use crate::history::{History, Input, Outcome};
use crate::linearizability;
use crate::recorder::{Recorder, RecordingClient};
use crate::report::{self, Align};

/// What a membership change does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeKind {
    /// A new storage server starts and joins.
    Join,
    /// The oldest member is stopped and leaves, handing its data off.
    Leave,
}

impl ChangeKind {
    fn name(self) -> &'static str {
        match self {
            ChangeKind::Join => "join",
            ChangeKind::Leave => "leave",
        }
    }
}

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

/// What a member reported about itself after a change.
#[derive(Debug, Clone, Serialize)]
pub struct MemberStatus {
    /// Its address.
    pub server: String,
    /// The epoch it is at.
    pub epoch: u64,
    /// Slots it owns whose data has not all arrived.
    pub incoming_slots: u32,
    /// Slots it gave up whose data it has yet to hand off.
    pub outgoing_slots: u32,
    /// Keys it holds.
    pub keys_held: u64,
    /// Keys of the load it owns by the configuration.
    pub keys_owned: u64,
}

/// One membership change, as it happened.
#[derive(Debug, Clone, Serialize)]
pub struct MembershipChange {
    /// Join or leave.
    pub kind: ChangeKind,
    /// The cluster node that joined or left (none if a join failed to start one).
    pub node: Option<usize>,
    /// Its address.
    pub server: String,
    /// When it started, in seconds since the load started.
    pub at_secs: f64,
    /// Wall time of the change: starting the server until it joined, or stopping it until it
    /// left and exited.
    pub duration_secs: f64,
    /// Whether it completed (a join joined; a leaver exited with status 0).
    pub succeeded: bool,
    /// `ok`, or what went wrong.
    pub detail: String,
    /// Members before and after.
    pub members_before: usize,
    /// Members after.
    pub members_after: usize,
    /// The configuration's epoch after the change.
    pub epoch_after: u64,
    /// Keys of the load whose owner changed.
    pub keys_moved: usize,
    /// The fewest keys a change of this kind could move: `K / (N + 1)` for a join, the leaver's
    /// keys for a leave.
    pub keys_ideal: f64,
    /// Slots whose owner changed.
    pub slots_moved: usize,
    /// The fewest slots: `SLOTS / (N + 1)` for a join, the leaver's slots for a leave.
    pub slots_ideal: f64,
    /// What each member reported after the change.
    pub members: Vec<MemberStatus>,
    /// The longest latency of a successful operation overlapping the change, in milliseconds.
    pub max_latency_ms: f64,
    /// The lowest throughput of a time slice overlapping the change.
    pub min_ops_per_sec: f64,
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

/// The keys of the load: put keys hold the last put, append keys every append.
struct KeySpace {
    all: Vec<String>,
    put: Vec<String>,
    append: Vec<String>,
}

impl KeySpace {
    fn new(keys: usize) -> Self {
        let (mut all, mut put, mut append) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..keys.max(2) {
            let key = if i % 4 == 0 { format!("p{i:04}") } else { format!("a{i:04}") };
            if i % 4 == 0 { &mut put } else { &mut append }.push(key.clone());
            all.push(key);
        }
        KeySpace { all, put, append }
    }
}

/// The value a key is preloaded with; unique, like every value written.
fn initial_value(key: &str) -> String {
    format!("{key}:0;")
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
    let keys = Arc::new(KeySpace::new(config.keys));
    let clients = rt.block_on(async {
        let mut clients = Vec::new();
        for process in 0..config.clients as u64 {
            clients.push(recorder.client(process, connect(&master, config.timeout).await?));
        }
        preload(&clients, &keys).await?;
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
            let changes = membership(cluster, &handle, &master, config, &keys.all, start);
            done.store(true, Ordering::Relaxed);
            changes
        });
        rt.block_on(async {
            let mut tasks = tokio::task::JoinSet::new();
            for client in clients {
                let (keys, done, mix) = (Arc::clone(&keys), Arc::clone(&done), config.mix.clone());
                let (seed, deadline) = (config.seed, start + config.duration);
                tasks.spawn(client_loop(client, keys, mix, seed, deadline, done));
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

/// Writes every key once, each process its share, recorded.
async fn preload(clients: &[RecordingClient], keys: &KeySpace) -> Result<()> {
    let mut tasks = tokio::task::JoinSet::new();
    for (i, client) in clients.iter().enumerate() {
        let client = client.clone();
        let mine: Vec<String> = keys.all.iter().skip(i).step_by(clients.len()).cloned().collect();
        tasks.spawn(async move {
            for key in mine {
                let outcome = client.run(&key, Input::Put(initial_value(&key))).await;
                if !matches!(outcome, Outcome::Ok(_)) {
                    bail!("preloading {key}: {outcome:?}");
                }
            }
            Ok(())
        });
    }
    while let Some(result) = tasks.join_next().await {
        result.context("a preload task panicked")??;
    }
    Ok(())
}

/// One process: operations back to back until the deadline has passed and the changes are done.
async fn client_loop(
    client: RecordingClient,
    keys: Arc<KeySpace>,
    mix: Mix,
    seed: u64,
    deadline: Instant,
    done: Arc<AtomicBool>,
) {
    let process = client.process();
    let mut rng = SmallRng::seed_from_u64(seed.wrapping_mul(1_000_003).wrapping_add(process));
    let mut n = 0u64;
    let mut backoff = Duration::ZERO;
    while Instant::now() < deadline || !done.load(Ordering::Relaxed) {
        n += 1;
        let pick = |rng: &mut SmallRng, keys: &[String]| keys[rng.random_range(0..keys.len())].clone();
        // Written values are unique, so a read (and a final value) tells which writes it holds.
        let (key, input) = match mix.pick(&mut rng) {
            OpKind::Put => (pick(&mut rng, &keys.put), Input::Put(format!("{process}.{n};"))),
            OpKind::Append => (pick(&mut rng, &keys.append), Input::Append(format!("{process}.{n};"))),
            _ => (pick(&mut rng, &keys.all), Input::Get),
        };
        if let Outcome::Ok(_) = client.run(&key, input).await {
            backoff = Duration::ZERO;
        } else {
            // As a real client would: 20 ms doubling to 200 ms. It also bounds the number of
            // unknown outcomes, which the checker pays for.
            backoff = (backoff * 2).clamp(Duration::from_millis(20), Duration::from_millis(200));
            tokio::time::sleep(backoff).await;
        }
    }
}

/// Reads every key (recorded), each retried for up to 30 s; returns the values and the keys that
/// could not be read.
async fn final_reads(
    reader: &RecordingClient,
    keys: &[String],
) -> (BTreeMap<String, Option<String>>, Vec<String>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut finals, mut unread) = (BTreeMap::new(), Vec::new());
    for key in keys {
        loop {
            if let Outcome::Ok(crate::history::Output::Value(value)) = reader.run(key, Input::Get).await {
                finals.insert(key.clone(), value);
                break;
            }
            if Instant::now() >= deadline {
                unread.push(key.clone());
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    (finals, unread)
}

/// Makes the scheduled changes, each at its time (or as soon as the one before is done); stops
/// at the first that cannot be made or measured, and says why.
fn membership(
    cluster: &mut Cluster,
    handle: &Handle,
    master: &str,
    config: &LoadConfig,
    keys: &[String],
    start: Instant,
) -> (Vec<MembershipChange>, Option<String>) {
    let mut schedule = config.schedule.clone();
    schedule.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut changes = Vec::new();
    for (fraction, kind) in schedule {
        let when = start + config.duration.mul_f64(fraction.clamp(0.0, 1.0));
        std::thread::sleep(when.saturating_duration_since(Instant::now()));
        let change = match change(cluster, handle, master, kind, keys, start) {
            Ok(change) => change,
            Err(err) => {
                let err = format!("the {} at {:.2} s: {err:#}", kind.name(), secs_since(start));
                println!("  {err}");
                return (changes, Some(err));
            }
        };
        println!(
            "  {:>6.2} s  {} {} ({}): {:.2} s, {} -> {} members, {} keys moved (ideal {:.1}){}",
            change.at_secs,
            kind.name(),
            change.node.map_or_else(|| "(none)".to_owned(), |id| format!("node {id}")),
            change.server,
            change.duration_secs,
            change.members_before,
            change.members_after,
            change.keys_moved,
            change.keys_ideal,
            if change.succeeded { String::new() } else { format!("; FAILED: {}", change.detail) }
        );
        changes.push(change);
    }
    (changes, None)
}

/// Makes one change and measures it.
fn change(
    cluster: &mut Cluster,
    handle: &Handle,
    master: &str,
    kind: ChangeKind,
    keys: &[String],
    start: Instant,
) -> Result<MembershipChange> {
    let before = handle.block_on(current_config(master))?;
    let began = Instant::now();
    let (node, server, result) = match kind {
        ChangeKind::Join => match cluster.add_node() {
            Ok(id) => (Some(id), cluster.nodes()[id].client_addr().to_string(), Ok(())),
            Err(err) => (None, String::new(), Err(err)),
        },
        ChangeKind::Leave => {
            let oldest = before.members().next().context("no member to leave")?.1.to_owned();
            let id = node_by_addr(cluster, &oldest)?;
            let result = match cluster.node_mut(id).stop(STOP_TIMEOUT) {
                Ok(true) => Ok(()),
                Ok(false) => Err(anyhow::anyhow!("did not exit with status 0 within {STOP_TIMEOUT:?}")),
                Err(err) => Err(err),
            };
            (Some(id), oldest, result)
        }
    };
    let duration_secs = began.elapsed().as_secs_f64();
    let after = handle.block_on(current_config(master))?;
    let members = handle.block_on(member_statuses(&after, keys))?;
    let owner = |config: &Config, key: &str| config.owner(key).map(|(id, _)| id);
    let keys_moved = keys.iter().filter(|k| owner(&before, k) != owner(&after, k)).count();
    let slots_moved = before.moves_to(&after).len();
    let (keys_ideal, slots_ideal) = match kind {
        ChangeKind::Join => {
            let n = (before.len() + 1) as f64;
            (keys.len() as f64 / n, (SLOTS / (before.len() + 1)) as f64)
        }
        ChangeKind::Leave => {
            let leaver = before.id_of(&server);
            let owned = keys.iter().filter(|k| leaver.is_some() && owner(&before, k) == leaver).count();
            let slots = leaver.and_then(|id| before.slot_counts().get(&id).copied()).unwrap_or(0);
            (owned as f64, slots as f64)
        }
    };
    Ok(MembershipChange {
        kind,
        node,
        server,
        at_secs: began.duration_since(start).as_secs_f64(),
        duration_secs,
        succeeded: result.is_ok(),
        detail: result.err().map_or_else(|| "ok".to_owned(), |err| format!("{err:#}")),
        members_before: before.len(),
        members_after: after.len(),
        epoch_after: after.epoch(),
        keys_moved,
        keys_ideal,
        slots_moved,
        slots_ideal,
        members,
        max_latency_ms: 0.0,
        min_ops_per_sec: 0.0,
    })
}

/// What every member of `config` reports, with the keys of `keys` it owns.
async fn member_statuses(config: &Config, keys: &[String]) -> Result<Vec<MemberStatus>> {
    let mut out = Vec::new();
    for (id, addr) in config.members() {
        let status = server_status(addr, Duration::from_secs(5))
            .await
            .with_context(|| format!("cannot read the status of {addr}"))?;
        let keys_owned = keys.iter().filter(|k| config.owner(k).map(|(o, _)| o) == Some(id)).count() as u64;
        out.push(MemberStatus {
            server: addr.to_owned(),
            epoch: status.epoch,
            incoming_slots: status.incoming_slots,
            outgoing_slots: status.outgoing_slots,
            keys_held: status.keys,
            keys_owned,
        });
    }
    Ok(out)
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
            (!a.is_clean()).then(|| {
                format!(
                    "{} lost, {} duplicated, {} failed yet applied, {} unexplained, {} keys without their \
                     preload: {}",
                    a.lost,
                    a.duplicated,
                    a.failed_applied,
                    a.unexplained,
                    a.initial_missing,
                    a.examples.join("; ")
                )
            }),
            0.0,
            format!(
                "ok: {} acknowledged, all found once; {} failed, none applied; {} unknown, {} applied",
                a.acknowledged, a.failed, a.unknown, a.unknown_applied
            ),
        ),
    ]
}

/// The phase's summary and its changes as a table.
pub(super) fn summary(r: &ReshardingReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "  load: {:.2} s, {} ok, {} failed, {} unknown; {:.0} ops/s on average; p99 {:.2} ms",
        r.load_secs, r.ok, r.fail, r.unknown, r.ops_per_sec, r.p99_ms
    );
    let mut rates: Vec<f64> = r.buckets.iter().map(|b| b.ops_per_sec).collect();
    rates.sort_by(f64::total_cmp);
    if let (Some(min), Some(max)) = (rates.first(), rates.last()) {
        let _ = writeln!(
            out,
            "  ops/s per {} ms slice: min {min:.0}, median {:.0}, max {max:.0}",
            r.config.bucket.as_millis(),
            rates[rates.len() / 2]
        );
    }
    let _ = writeln!(out, "  longest stall (slowest successful operation): {:.1} ms", r.max_latency_ms);
    let rows: Vec<Vec<String>> = r
        .changes
        .iter()
        .map(|c| {
            vec![
                c.kind.name().to_owned(),
                c.node.map_or_else(|| "-".to_owned(), |id| format!("node {id}")),
                format!("{:.2}", c.at_secs),
                format!("{:.2}", c.duration_secs),
                format!("{} -> {}", c.members_before, c.members_after),
                c.keys_moved.to_string(),
                format!("{:.1}", c.keys_ideal),
                c.slots_moved.to_string(),
                format!("{:.0}", c.slots_ideal),
                format!("{:.1}", c.max_latency_ms),
                format!("{:.0}", c.min_ops_per_sec),
                if c.succeeded { "ok".to_owned() } else { "FAILED".to_owned() },
            ]
        })
        .collect();
    out.push_str(&report::table(
        &[
            "change",
            "server",
            "at s",
            "took s",
            "members",
            "keys moved",
            "ideal",
            "slots moved",
            "ideal",
            "max latency ms",
            "min ops/s",
            "result",
        ],
        &[
            Align::Left,
            Align::Left,
            Align::Right,
            Align::Right,
            Align::Right,
            Align::Right,
            Align::Right,
            Align::Right,
            Align::Right,
            Align::Right,
            Align::Right,
            Align::Left,
        ],
        &rows,
    ));
    for line in r.linearizability.to_string().lines() {
        let _ = writeln!(out, "  {line}");
    }
    out
}

/// The chart of throughput over time, with the changes marked.
pub(super) fn chart(r: &ReshardingReport) -> Result<String> {
    let points: Vec<(f64, f64)> =
        r.buckets.iter().map(|b| (b.start_secs + b.secs / 2.0, b.ops_per_sec)).collect();
    let markers: Vec<Marker> = r
        .changes
        .iter()
        .map(|c| Marker {
            at: c.at_secs,
            until: c.at_secs + c.duration_secs,
            label: format!(
                "{} {}",
                c.kind.name(),
                c.node.map_or_else(|| "(no node)".to_owned(), |id| format!("node {id}"))
            ),
            detail: format!(
                "{} -> {} servers, {} keys moved",
                c.members_before, c.members_after, c.keys_moved
            ),
            removal: c.kind == ChangeKind::Leave,
        })
        .collect();
    let title = format!(
        "Throughput while servers join and leave ({} clients, {} keys, {} ms slices)",
        r.config.clients,
        r.config.keys,
        r.config.bucket.as_millis()
    );
    chart::throughput_svg(&title, &points, &markers, r.load_secs)
}
