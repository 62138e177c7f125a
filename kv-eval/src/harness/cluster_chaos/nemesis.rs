//! The nemesis of a replicated cluster: what it can break, and the loop that breaks it.
//!
//! Faults come one at a time (the store's guarantees are for one failure at a time): `interval`
//! after the previous one ended, the next fault of a seeded round over the configured kinds
//! begins (every kind once per round, in a seeded order), and it ends `fault_duration` later (a
//! killed process is started again, empty or, durable, with its data; a paused one resumed; a
//! cut healed). Joins and leaves are events that end when the server has joined or left. Each
//! fault is recorded with its start and end on the history's clock, so that liveness is
//! measured from the end of each fault, never during one.
//!
//! Targets are chosen where they hurt: the primary or a secondary of a workload key (from the
//! shard master's map), the link between a key's primary and one of its secondaries.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};
use serde::Serialize;

use crate::harness::cluster::Cluster;
use crate::harness::proxy::Faults;
use crate::harness::recorder::Recorder;

/// How long a server that leaves may take to hand its data off and exit.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(60);

/// A kind of fault the nemesis injects into a replicated cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClusterFault {
    /// SIGKILL the primary of a workload key; start it again when the fault ends (empty, unless
    /// the servers are durable).
    KillPrimary,
    /// SIGKILL a secondary of a workload key; start it again when the fault ends (empty, unless
    /// the servers are durable).
    KillSecondary,
    /// SIGKILL the shard master; start it again when the fault ends. Opt-in: the shard master
    /// keeps its state in memory, so a restarted one forgets the cluster (expected to fail).
    KillMaster,
    /// SIGSTOP a replica of a workload key; SIGCONT when the fault ends.
    Pause,
    /// SIGSTOP the shard master; SIGCONT when the fault ends.
    PauseMaster,
    /// Cut the link between a key's primary and one of its secondaries: one way (either) or
    /// both; heal when the fault ends.
    Link,
    /// Cut a server off from the shard master only, both ways (it still reaches its peers and
    /// its clients); heal when the fault ends.
    MasterLink,
    /// Start one more server, which joins.
    Join,
    /// Stop a server gracefully: it leaves, handing its data off (only while more than the
    /// replication factor are running).
    Leave,
    /// SIGKILL every storage server at once, while the clients write; start them all again
    /// when the fault ends. Opt-in: durable servers (`--durable`) come back with their data and
    /// are taken back as the members they were; in-memory ones lose everything.
    CrashAll,
}

impl ClusterFault {
    /// Every kind, in the order of their names.
    pub const ALL: [ClusterFault; 10] = [
        ClusterFault::KillPrimary,
        ClusterFault::KillSecondary,
        ClusterFault::KillMaster,
        ClusterFault::Pause,
        ClusterFault::PauseMaster,
        ClusterFault::Link,
        ClusterFault::MasterLink,
        ClusterFault::Join,
        ClusterFault::Leave,
        ClusterFault::CrashAll,
    ];

    /// The default set: everything a cluster can survive.
    pub const DEFAULT: [ClusterFault; 9] = [
        ClusterFault::KillPrimary,
        ClusterFault::KillSecondary,
        ClusterFault::KillMaster,
        ClusterFault::Pause,
        ClusterFault::PauseMaster,
        ClusterFault::Link,
        ClusterFault::MasterLink,
        ClusterFault::Join,
        ClusterFault::Leave,
    ];

    /// The fault's name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            ClusterFault::KillPrimary => "kill-primary",
            ClusterFault::KillSecondary => "kill-secondary",
            ClusterFault::KillMaster => "kill-master",
            ClusterFault::Pause => "pause",
            ClusterFault::PauseMaster => "pause-master",
            ClusterFault::Link => "link",
            ClusterFault::MasterLink => "master-link",
            ClusterFault::Join => "join",
            ClusterFault::Leave => "leave",
            ClusterFault::CrashAll => "crash-all",
        }
    }

    /// Whether it kills a storage server (and so loses the data of slots with one copy).
    pub fn kills_a_server(self) -> bool {
        matches!(self, ClusterFault::KillPrimary | ClusterFault::KillSecondary | ClusterFault::CrashAll)
    }
}

impl FromStr for ClusterFault {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        ClusterFault::ALL.into_iter().find(|k| k.name() == s.trim()).with_context(|| {
            let names: Vec<&str> = ClusterFault::ALL.iter().map(|k| k.name()).collect();
            format!("unknown cluster fault {s:?} ({})", names.join(", "))
        })
    }
}

impl fmt::Display for ClusterFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One fault as it happened, on the history's clock.
#[derive(Debug, Clone, Serialize)]
pub struct Injected {
    /// Its kind.
    pub kind: ClusterFault,
    /// What exactly, e.g. `link node 0 -> node 2`.
    pub what: String,
    /// When it began, in seconds.
    pub start: f64,
    /// When it ended (the process restarted and joined, the cut healed, the leaver gone).
    pub end: f64,
}

/// What the nemesis needs to pick its targets.
pub(super) struct Targets<'a> {
    /// The shard master's client address.
    pub master: String,
    /// The workload's keys, whose replicas the faults aim at.
    pub keys: &'a [String],
    /// The replication factor (leaves keep at least this many servers running).
    pub factor: usize,
    /// The most servers joins may grow the cluster to.
    pub max_servers: usize,
    /// A runtime to ask the shard master for its map on.
    pub runtime: tokio::runtime::Handle,
}

/// Injects the faults of `kinds` in seeded rounds, `interval` apart, each lasting
/// `fault_duration`, until `until` (no fault starts that could not end by then; the first round
/// runs whole, whatever the time) or `stop`.
/// Returns the faults as they happened.
#[allow(clippy::too_many_arguments)]
pub(super) fn run(
    cluster: &mut Cluster,
    targets: &Targets<'_>,
    kinds: &[ClusterFault],
    interval: Duration,
    fault_duration: Duration,
    until: Instant,
    seed: u64,
    recorder: &Recorder,
    stop: &AtomicBool,
) -> Result<Vec<Injected>> {
    let mut done = Vec::new();
    if kinds.is_empty() {
        return Ok(done);
    }
    let mut rng = SmallRng::seed_from_u64(seed ^ 0xfa17);
    let mut round: Vec<ClusterFault> = Vec::new();
    let mut skipped = 0;
    let sleep_until = |when: Instant| {
        while Instant::now() < when && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(10).min(when.saturating_duration_since(Instant::now())));
        }
    };
    let mut next = Instant::now() + interval;
    loop {
        sleep_until(next);
        // The first round always runs whole, so every kind asked for is injected at least once.
        let first_round = done.len() + skipped < kinds.len();
        if stop.load(Ordering::Relaxed) || (!first_round && Instant::now() + fault_duration >= until) {
            return Ok(done);
        }
        if round.is_empty() {
            round = kinds.to_vec();
            round.shuffle(&mut rng);
        }
        let kind = round.pop().unwrap_or(kinds[0]);
        let start = recorder.elapsed().as_secs_f64();
        if let Some(what) = inject(cluster, targets, kind, fault_duration, &mut rng, &sleep_until)? {
            let end = recorder.elapsed().as_secs_f64();
            done.push(Injected { kind, what, start, end });
        } else {
            skipped += 1;
        }
        // The next fault comes `interval` after this one ended, so faults never overlap.
        next = Instant::now() + interval;
    }
}

/// Injects one fault of `kind`, waits `hold`, and ends it. Returns what it did, or `None` if
/// there was nothing to do it to (no leave below the replication factor, no join above the
/// size limit).
fn inject(
    cluster: &mut Cluster,
    targets: &Targets<'_>,
    kind: ClusterFault,
    hold: Duration,
    rng: &mut SmallRng,
    sleep_until: &dyn Fn(Instant),
) -> Result<Option<String>> {
    let hold_on = || sleep_until(Instant::now() + hold);
    let running: Vec<usize> = (0..cluster.nodes().len())
        .filter(|&id| !cluster.nodes()[id].is_stopped() && !cluster.nodes()[id].is_paused())
        .collect();
    let key = &targets.keys[rng.random_range(0..targets.keys.len())];
    let replicas = replicas_of(cluster, targets, key);
    let pick = |rng: &mut SmallRng, among: &[usize]| -> Option<usize> {
        (!among.is_empty()).then(|| among[rng.random_range(0..among.len())])
    };
    let what = match kind {
        ClusterFault::KillPrimary | ClusterFault::KillSecondary => {
            let role = if kind == ClusterFault::KillPrimary { "primary" } else { "secondary" };
            let (among, role) = match (kind, replicas.split_first()) {
                (ClusterFault::KillPrimary, Some((primary, _))) => {
                    (vec![*primary], format!("{role} of {key}"))
                }
                (_, Some((_, secondaries))) if !secondaries.is_empty() => {
                    (secondaries.to_vec(), format!("{role} of {key}"))
                }
                // The map could not be read (or has no such replica): any running server.
                _ => (running.clone(), "no map: a random server".to_owned()),
            };
            let Some(id) = pick(rng, &among) else { return Ok(None) };
            cluster.node_mut(id).kill()?;
            hold_on();
            cluster.node_mut(id).restart().with_context(|| format!("node {id} did not rejoin"))?;
            format!("kill -9 node {id} ({role}), restarted, rejoined")
        }
        ClusterFault::CrashAll => {
            let all: Vec<usize> =
                (0..cluster.nodes().len()).filter(|&id| !cluster.nodes()[id].is_stopped()).collect();
            for &id in &all {
                cluster.node_mut(id).kill()?;
            }
            hold_on();
            for &id in &all {
                cluster.node_mut(id).restart().with_context(|| format!("node {id} did not come back"))?;
            }
            format!("kill -9 every storage server ({} of them) at once, all restarted", all.len())
        }
        ClusterFault::KillMaster | ClusterFault::PauseMaster => {
            let Some(master) = cluster.shardmaster_mut() else { return Ok(None) };
            if kind == ClusterFault::KillMaster {
                master.kill()?;
                hold_on();
                master.restart()?;
                "kill -9 the shard master, restarted from its data directory".to_owned()
            } else {
                master.pause()?;
                hold_on();
                master.resume()?;
                "pause the shard master".to_owned()
            }
        }
        ClusterFault::Pause => {
            let among = if replicas.is_empty() { running.clone() } else { replicas.clone() };
            let Some(id) = pick(rng, &among) else { return Ok(None) };
            cluster.node_mut(id).pause()?;
            hold_on();
            cluster.node_mut(id).resume()?;
            format!("pause node {id} (a replica of {key})")
        }
        ClusterFault::Link => {
            // A primary and one of its secondaries, if both have links (start-up nodes do);
            // else any two running nodes that have.
            let linked = |a: usize, b: usize| a != b && cluster.link(a, b).is_some();
            let pair = match replicas.split_first() {
                Some((&a, rest)) if rest.iter().any(|&b| linked(a, b)) => {
                    let rest: Vec<usize> = rest.iter().copied().filter(|&b| linked(a, b)).collect();
                    pick(rng, &rest).map(|b| (a, b))
                }
                _ => {
                    let pairs: Vec<(usize, usize)> = running
                        .iter()
                        .flat_map(|&a| running.iter().map(move |&b| (a, b)))
                        .filter(|&(a, b)| linked(a, b))
                        .collect();
                    (!pairs.is_empty()).then(|| pairs[rng.random_range(0..pairs.len())])
                }
            };
            let Some((a, b)) = pair else { return Ok(None) };
            let (Some(ab), Some(ba)) = (cluster.link(a, b), cluster.link(b, a)) else { return Ok(None) };
            let how = match rng.random_range(0..3) {
                0 => {
                    ab.set_faults(Faults::partition());
                    format!("node {a} -> node {b}")
                }
                1 => {
                    ba.set_faults(Faults::partition());
                    format!("node {b} -> node {a}")
                }
                _ => {
                    ab.set_faults(Faults::partition());
                    ba.set_faults(Faults::partition());
                    format!("node {a} <-> node {b}")
                }
            };
            hold_on();
            ab.heal();
            ba.heal();
            format!("cut the link {how} (replicas of {key})")
        }
        ClusterFault::MasterLink => {
            let with_links: Vec<usize> =
                running.iter().copied().filter(|&id| cluster.master_links(id).is_some()).collect();
            let Some(id) = pick(rng, &with_links) else { return Ok(None) };
            cluster.cut_from_master(id);
            hold_on();
            if let Some((to, from)) = cluster.master_links(id) {
                to.heal();
                from.heal();
            }
            format!("cut node {id} from the shard master, both ways")
        }
        ClusterFault::Join => {
            if running.len() >= targets.max_servers {
                return Ok(None);
            }
            let id = cluster.add_node()?;
            format!("node {id} joined")
        }
        ClusterFault::Leave => {
            if running.len() <= targets.factor.max(1) {
                return Ok(None);
            }
            let Some(id) = pick(rng, &running) else { return Ok(None) };
            let clean = cluster.node_mut(id).stop(LEAVE_TIMEOUT)?;
            let how = if clean { "left" } else { "did not leave cleanly (killed)" };
            format!("node {id} {how}")
        }
    };
    Ok(Some(what))
}

/// The nodes holding `key`'s slot, primary first, by the shard master's map (empty if it
/// cannot be read).
fn replicas_of(cluster: &Cluster, targets: &Targets<'_>, key: &str) -> Vec<usize> {
    let map = targets.runtime.block_on(async {
        let ask = async { kv_client::ShardMaster::connect(targets.master.clone()).await?.config().await };
        tokio::time::timeout(Duration::from_secs(2), ask).await
    });
    let Ok(Ok(map)) = map else { return Vec::new() };
    map.replicas(key)
        .into_iter()
        .filter_map(|(_, addr)| {
            cluster.nodes().iter().position(|n| n.client_addr().to_string() == addr && !n.is_stopped())
        })
        .collect()
}
