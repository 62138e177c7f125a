//! Running the failover phase: a fresh cluster per setting, the recorded load, the kill, the
//! probes, the final reads; then the analysis of what was recorded.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use kv_client::{Client, ReadFrom, ShardMaster};
use kv_shard::{Config, slot_of};
use tokio::task::JoinSet;

use super::analysis;
use super::{FailoverConfig, FailoverReport, RECOVERY_BAR, RECOVERY_LIMIT, Stalls};
use crate::harness::cluster::Cluster;
use crate::harness::history::History;
use crate::harness::linearizability;
use crate::harness::recorder::Recorder;
use crate::load::recorded_load::{KeySpace, client_loop, final_reads, initial_value, preload};
use crate::replicas::setup::{
    client_runtime, cluster_client, current_config, keep_files_if_asked, master_addr, start_cluster,
};
use crate::replicas::{Options, Setting};

/// How long the load's clients may take to finish their last call once told to stop: far more
/// than a call's attempts take against a cluster that has failed over.
const STOP_LIMIT: Duration = Duration::from_secs(90);

/// Pause between two probe puts, and between two polls of the shard master.
const PROBE_PAUSE: Duration = Duration::from_millis(10);
const POLL_PAUSE: Duration = Duration::from_millis(20);

/// Runs the phase at every setting of [`FailoverConfig::settings`], each on a fresh cluster.
pub(in crate::replicas) fn run(options: &Options) -> Result<Vec<FailoverReport>> {
    let config = &options.failover;
    for op in config.mix.to_string().split(',').filter_map(|part| part.split('=').next()) {
        ensure!(
            matches!(op, "get" | "put" | "append"),
            "the failover load runs get, put and append only, not {op}"
        );
    }
    let mut reports = Vec::new();
    for &setting in &config.settings {
        let report = run_setting(options, setting)?;
        println!(
            "    killed {} (primary of {} slots) {:.2} s in; the shard master dropped it after {}; \
             its slots took writes again after {}; {} ok, {} failed, {} unknown during the outage; {}",
            report.killed,
            report.primary_slots,
            report.killed_at_secs,
            secs_or_never(report.failed_over_after_secs),
            secs_or_never(report.recovered_after_secs),
            report.outage.ok,
            report.outage.fail,
            report.outage.unknown,
            crate::replicas::levels::verdict_word(&report.linearizability)
        );
        reports.push(report);
    }
    Ok(reports)
}

fn secs_or_never(secs: Option<f64>) -> String {
    secs.map_or_else(|| format!("more than {} s", RECOVERY_LIMIT.as_secs()), |s| format!("{s:.3} s"))
}

fn run_setting(options: &Options, setting: Setting) -> Result<FailoverReport> {
    let rt = client_runtime()?;
    let mut cluster = start_cluster(options, setting, &rt)?;
    let recorded = record(&mut cluster, &rt, options, setting);
    // The clients' connections go before the cluster does.
    drop(rt);
    let report = analyse(&options.failover, setting, recorded?);
    let failed = super::checks(std::slice::from_ref(&report)).iter().any(|c| !c.passed);
    keep_files_if_asked(&mut cluster, failed);
    Ok(report)
}

/// The server killed, and where.
struct Victim {
    node: usize,
    address: String,
    key: String,
    primary_slots: usize,
    /// Keys of the load it was the primary of.
    keys: BTreeSet<String>,
    /// Keys of the load it was a secondary of.
    secondary_keys: BTreeSet<String>,
}

/// What the shard master did about the kill.
struct FailedOver {
    after: Duration,
    promoted: Option<String>,
}

/// What a run recorded, before analysis.
struct Recorded {
    history: History,
    /// When the load started, on the history's clock.
    from: Duration,
    load_secs: f64,
    victim: Victim,
    /// When the kill happened, since the load started.
    killed_at: Duration,
    failed_over: Option<FailedOver>,
    probes: Vec<Option<Duration>>,
    epoch_before: u64,
    after: Config,
    keys: Arc<KeySpace>,
    finals: BTreeMap<String, Option<String>>,
    unread_keys: Vec<String>,
}

/// Preloads, runs the load, kills the primary of the first key, probes its slots, stops the
/// load, and reads every key back.
fn record(
    cluster: &mut Cluster,
    rt: &tokio::runtime::Runtime,
    options: &Options,
    setting: Setting,
) -> Result<Recorded> {
    let config = &options.failover;
    let master = master_addr(cluster)?;
    let recorder = Recorder::new();
    // The recorder's clock started just now: history times are measured from here.
    let clock = Instant::now();
    let keys = KeySpace::new(config.keys, "f");
    rt.block_on(async {
        let mut clients = Vec::new();
        for process in 0..config.clients as u64 {
            let client = cluster_client(&master, ReadFrom::AnyReplica, config.timeout).await?;
            clients.push(recorder.client(process, client));
        }
        preload(&clients, &keys.all).await?;
        let before = current_config(&master).await?;
        let victim = victim(cluster, &before, &keys.all)?;
        let probe_keys = probe_keys(&before, &victim.address, config.probes)?;
        // One attempt, and no waiting out a server behind the map inside a call: the loop
        // retries every few milliseconds, so the first accepted put is seen when it happens.
        let probe = Client::cluster_builder(master.as_str())
            .attempts(1)
            .move_wait(Duration::ZERO)
            .timeout(config.probe_timeout)
            .connect_timeout(config.probe_timeout)
            .connect()
            .await
            .context("cannot connect the probe")?;
        println!(
            "  {} clients over {} keys ({} take puts, {} appends), mix {}; kill -9 {} (primary of {:?} \
             and {} slots) after {:.1} s, load for {:.1} s more; {} probes of its slots",
            config.clients,
            keys.all.len(),
            keys.put.len(),
            keys.append.len(),
            config.mix,
            victim.address,
            victim.key,
            victim.primary_slots,
            config.before_kill.as_secs_f64(),
            config.after_kill.as_secs_f64(),
            probe_keys.len()
        );

        let stop = Arc::new(AtomicBool::new(false));
        let keys = Arc::new(keys);
        let start = Instant::now();
        let mut load = JoinSet::new();
        for client in clients {
            let seed = options.seed ^ ((setting.factor() as u64) << 40) ^ ((setting.level() as u64) << 32);
            let stop = Arc::clone(&stop);
            let go_on = move || !stop.load(Ordering::Relaxed);
            load.spawn(client_loop(client, Arc::clone(&keys), config.mix.clone(), seed, go_on));
        }
        tokio::time::sleep(config.before_kill).await;

        let killed = Instant::now();
        cluster.node_mut(victim.node).kill().with_context(|| format!("cannot kill {}", victim.address))?;
        let mut probes = JoinSet::new();
        for (i, key) in probe_keys.iter().enumerate() {
            probes.spawn(probe_until_accepted(probe.clone(), key.clone(), killed, i));
        }
        let failed_over = wait_failed_over(&master, &victim.address, &probe_keys[0], killed).await;
        let mut firsts = vec![None; probe_keys.len()];
        while let Some(done) = probes.join_next().await {
            let (i, first) = done.context("a probe panicked")?;
            firsts[i] = first;
        }
        // The load runs on for `after_kill` after the kill, and at least until the probes are done.
        tokio::time::sleep_until((killed + config.after_kill).into()).await;
        stop.store(true, Ordering::Relaxed);
        let stopped = tokio::time::timeout(STOP_LIMIT, async {
            while let Some(done) = load.join_next().await {
                done.context("a client task panicked")?;
            }
            Ok::<_, anyhow::Error>(())
        });
        match stopped.await {
            Ok(result) => result?,
            Err(_) => bail!("the load's clients did not stop within {} s", STOP_LIMIT.as_secs()),
        }
        let load_secs = start.elapsed().as_secs_f64();

        let reader = cluster_client(&master, ReadFrom::Primary, config.timeout).await?;
        let reader = recorder.client(config.clients as u64, reader);
        let (finals, unread_keys) = final_reads(&reader, &keys.all).await;
        let after = current_config(&master).await?;
        Ok(Recorded {
            history: recorder.history(),
            from: start.duration_since(clock),
            load_secs,
            victim,
            killed_at: killed.duration_since(start),
            failed_over,
            probes: firsts,
            epoch_before: before.epoch(),
            after,
            keys,
            finals,
            unread_keys,
        })
    })
}

/// The primary of the first key, as the harness's node.
fn victim(cluster: &Cluster, config: &Config, keys: &[String]) -> Result<Victim> {
    let key = keys.first().context("the load has no keys")?.clone();
    let (id, address) = *config.replicas(&key).first().context("no server holds the first key")?;
    let node = cluster
        .nodes()
        .iter()
        .position(|n| n.client_addr().to_string() == address)
        .with_context(|| format!("no node of this cluster is {address}"))?;
    let primary_slots = config.slots().iter().filter(|&&owner| owner == Some(id)).count();
    let held = |k: &&String, secondary: bool| {
        let replicas = config.replicas(k);
        let (first, rest) = replicas.split_first().map_or((None, &[][..]), |(f, r)| (Some(f), r));
        if secondary {
            rest.iter().any(|&(_, a)| a == address)
        } else {
            first.is_some_and(|&(_, a)| a == address)
        }
    };
    Ok(Victim {
        node,
        address: address.to_owned(),
        key,
        primary_slots,
        keys: keys.iter().filter(|k| held(k, false)).cloned().collect(),
        secondary_keys: keys.iter().filter(|k| held(k, true)).cloned().collect(),
    })
}

/// Keys outside the history in up to `count` distinct slots whose primary is `address`.
fn probe_keys(config: &Config, address: &str, count: usize) -> Result<Vec<String>> {
    let mut slots = BTreeSet::new();
    let keys: Vec<String> = (0..1_000_000)
        .map(|i| format!("failover-probe-{i}"))
        .filter(|k| {
            config.replicas(k).first().is_some_and(|&(_, a)| a == address) && slots.insert(slot_of(k))
        })
        .take(count.max(1))
        .collect();
    ensure!(!keys.is_empty(), "found no key whose primary is {address}");
    Ok(keys)
}

/// Puts to `key` with one attempt per call until a put is accepted or [`RECOVERY_LIMIT`] has
/// passed since `killed`; returns `index` and how long after the kill the put was accepted.
async fn probe_until_accepted(
    probe: Client,
    key: String,
    killed: Instant,
    index: usize,
) -> (usize, Option<Duration>) {
    loop {
        if probe.put(key.as_str(), "probe").await.is_ok() {
            return (index, Some(killed.elapsed()));
        }
        if killed.elapsed() >= RECOVERY_LIMIT {
            return (index, None);
        }
        tokio::time::sleep(PROBE_PAUSE).await;
    }
}

/// Polls the shard master until its map no longer holds `address` (or [`RECOVERY_LIMIT`] has
/// passed since `killed`); says when, and who holds `key`'s slot then.
async fn wait_failed_over(master: &str, address: &str, key: &str, killed: Instant) -> Option<FailedOver> {
    let mut shardmaster = None;
    while killed.elapsed() < RECOVERY_LIMIT {
        if shardmaster.is_none() {
            shardmaster = ShardMaster::connect(master).await.ok();
        }
        let config = match &shardmaster {
            Some(shardmaster) => shardmaster.config().await.ok(),
            None => None,
        };
        if let Some(config) = config
            && config.id_of(address).is_none()
        {
            let after = killed.elapsed();
            let promoted = config.replicas(key).first().map(|&(_, a)| a.to_owned());
            return Some(FailedOver { after, promoted });
        }
        tokio::time::sleep(POLL_PAUSE).await;
    }
    None
}

/// Puts together what the phase measured; checks the history.
fn analyse(config: &FailoverConfig, setting: Setting, recorded: Recorded) -> FailoverReport {
    let Recorded {
        history,
        from,
        load_secs,
        victim,
        killed_at,
        failed_over,
        probes,
        epoch_before,
        after,
        keys,
        finals,
        unread_keys,
    } = recorded;
    let linearizability = linearizability::check_with_budget(&history, config.check_budget);
    let appends = analysis::audit_appends(&history, &keys.append, &finals, initial_value);
    let ops = analysis::load_ops(&history, config.clients as u64, from);
    let buckets = analysis::buckets(&ops, from, load_secs, config.bucket);
    let killed_at = killed_at.as_secs_f64();
    let recovered =
        probes.iter().copied().collect::<Option<Vec<Duration>>>().and_then(|t| t.into_iter().max());
    let end = recovered.map_or(load_secs, |r| (killed_at + r.as_secs_f64()).min(load_secs));
    let window = (killed_at, end);
    let in_outage: Vec<_> = ops.iter().copied().filter(|op| analysis::overlaps(op, from, window)).collect();
    let stall = |keys: &dyn Fn(&String) -> bool| {
        let ops: Vec<_> = ops.iter().copied().filter(|op| keys(&op.key)).collect();
        analysis::max_latency_ms(&ops, from, Some(window))
    };
    FailoverReport {
        setting,
        config: config.clone(),
        killed: victim.address,
        killed_node: victim.node,
        key: victim.key,
        primary_slots: victim.primary_slots,
        victim_keys: victim.keys.len(),
        victim_secondary_keys: victim.secondary_keys.len(),
        epoch_before,
        epoch_after: after.epoch(),
        members_after: after.len(),
        promoted: failed_over.as_ref().and_then(|f| f.promoted.clone()),
        killed_at_secs: killed_at,
        failed_over_after_secs: failed_over.map(|f| f.after.as_secs_f64()),
        recovered_after_secs: recovered.map(|r| r.as_secs_f64()),
        probe_secs: probes.iter().map(|p| p.map(|d| d.as_secs_f64())).collect(),
        recovery_bar_secs: RECOVERY_BAR.as_secs_f64(),
        load_secs,
        overall: analysis::counts(ops.iter().copied()),
        outage: analysis::counts(in_outage.iter().copied()),
        outage_victim_keys: analysis::counts(
            in_outage.iter().copied().filter(|op| victim.keys.contains(&op.key)),
        ),
        ops_per_sec_before: analysis::rate(&ops, from, (0.0, killed_at)),
        ops_per_sec_after: if recovered.is_some() {
            analysis::rate(&ops, from, (end, load_secs))
        } else {
            0.0
        },
        min_ops_per_sec: analysis::min_rate(&buckets, window),
        stalls: Stalls {
            primary_ms: stall(&|key| victim.keys.contains(key)),
            secondary_ms: stall(&|key| victim.secondary_keys.contains(key)),
            other_ms: stall(&|key| !victim.keys.contains(key) && !victim.secondary_keys.contains(key)),
        },
        unread_keys,
        appends,
        linearizability,
        buckets,
        history,
    }
}
