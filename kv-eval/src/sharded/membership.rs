//! Membership changes under load, made as an operator would and measured: a join starts a new
//! storage server (it joins the shard master at start-up, and counts as started once its share of
//! the data has moved to it); a leave stops the oldest member with SIGTERM (it asks the shard
//! master to hand its data to the others, then exits).
//!
//! Keys moved by a change are computed from the configurations before and after it: a key moved
//! if its slot's owner changed. The ideal is `K / (N + 1)` for a join to `N` servers, and the
//! leaver's keys for a leave. After each change every member reports what it holds.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use kv_client::server_status;
use kv_shard::{Config, SLOTS};
use serde::Serialize;
use tokio::runtime::Handle;

use super::{STOP_TIMEOUT, current_config, node_by_addr, secs_since};
use crate::harness::cluster::Cluster;

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
    pub(super) fn name(self) -> &'static str {
        match self {
            ChangeKind::Join => "join",
            ChangeKind::Leave => "leave",
        }
    }
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
    /// Members before.
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

/// Makes the scheduled changes, each at its fraction of `duration` after `start` (or as soon as
/// the one before is done); stops at the first that cannot be made or measured, and says why.
pub(super) fn membership(
    cluster: &mut Cluster,
    handle: &Handle,
    master: &str,
    schedule: &[(f64, ChangeKind)],
    duration: Duration,
    keys: &[String],
    start: Instant,
) -> (Vec<MembershipChange>, Option<String>) {
    let mut schedule = schedule.to_vec();
    schedule.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut changes = Vec::new();
    for (fraction, kind) in schedule {
        let when = start + duration.mul_f64(fraction.clamp(0.0, 1.0));
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
