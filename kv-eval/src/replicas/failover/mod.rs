//! Failover: a primary killed (SIGKILL) under load, per setting, each on a fresh cluster.
//!
//! The run (`record`), in order:
//! 1. recorded cluster clients, reading from any replica, preload every key, then run gets, puts
//!    and appends back to back ([`FailoverConfig::mix`]; a quarter of the keys take puts, the
//!    others appends, every value unique);
//! 2. after [`FailoverConfig::before_kill`], the primary of the first key is killed with
//!    `kill -9`. At once, *probes* — clients outside the history, one attempt per call and a
//!    short timeout — put to keys in a few of the killed primary's slots in a tight loop: the
//!    time from the kill to the last probe's first success is the **recovery time**, when every
//!    probed slot takes writes again at its promoted secondary. Meanwhile the shard master's
//!    configuration is polled, to tell detection (the killed server dropped from the map) from
//!    the rest;
//! 3. the load runs on for [`FailoverConfig::after_kill`] after the kill (longer if the slots
//!    have not recovered yet, up to [`RECOVERY_LIMIT`]), then stops; every key is read back
//!    through a recorded client at the primaries, so a lost write shows in the history.
//!
//! What it reports (`analysis`, `presentation`): the recovery time against [`RECOVERY_BAR`]
//! (above it is printed loudly but fails nothing: on a loaded machine timers slip), operations
//! `ok` / `fail` / `unknown` during the outage (from the kill to the recovery) and overall,
//! throughput over time in slices of [`FailoverConfig::bucket`], charted with the kill marked,
//! the linearizability checker's verdict on the whole history, and an audit of every
//! acknowledged append: present exactly once in its key's final value.
//!
//! What fails the run: no recovery within [`RECOVERY_LIMIT`]; a key that cannot be read back; at
//! a strong setting, a history that is not linearizable (or undecided); at a strong setting, or
//! an eventual one with a synchronous secondary (which the store promotes, so it documents that
//! no acknowledged write is lost), an acknowledged append lost, one applied twice, a refused one
//! applied, or a value no write explains. At level 0 the store documents losing what no
//! background sync had carried yet: the audit is shown, not checked.

mod analysis;
mod presentation;
mod record;

use std::time::Duration;

use serde::Serialize;

pub(super) use presentation::{chart, checks, table};
pub(super) use record::run;

use super::{Setting, as_secs};
use crate::harness::linearizability;
use crate::harness::mix::Mix;
use crate::load::analysis::{AppendAudit, Bucket};

/// The recovery time the store aims at: the failure timeout (800 ms) plus one install, with room.
/// Above it is reported prominently, never failed: machine noise, not a defect.
pub const RECOVERY_BAR: Duration = Duration::from_millis(1500);

/// How long after the kill the probes keep trying: no write accepted by then fails the run.
pub const RECOVERY_LIMIT: Duration = Duration::from_secs(20);

/// How the failover phase runs.
#[derive(Debug, Clone, Serialize)]
pub struct FailoverConfig {
    /// The settings, each on a fresh cluster (a replication factor of at least 2: with one
    /// copy there is nothing to fail over to).
    pub settings: Vec<Setting>,
    /// Concurrent recorded clients of the load.
    pub clients: usize,
    /// Distinct keys (at least 2): every fourth is written with puts, the others with appends.
    pub keys: usize,
    /// Weights of `get`, `put` and `append` (no other operation).
    pub mix: Mix,
    /// Load before the kill.
    #[serde(serialize_with = "as_secs")]
    pub before_kill: Duration,
    /// Load after the kill (longer while the slots have not recovered).
    #[serde(serialize_with = "as_secs")]
    pub after_kill: Duration,
    /// The longest one attempt of a load call may take; a call has the cluster client's default
    /// attempts, as an application's would.
    #[serde(serialize_with = "as_secs")]
    pub timeout: Duration,
    /// The longest one probe put may take (probes make one attempt per call).
    #[serde(serialize_with = "as_secs")]
    pub probe_timeout: Duration,
    /// Slots of the killed primary probed, each through a key of its own.
    pub probes: usize,
    /// Width of a slice of the throughput-over-time series.
    #[serde(serialize_with = "as_secs")]
    pub bucket: Duration,
    /// How long the linearizability check of a setting may take before it answers unknown.
    #[serde(serialize_with = "as_secs")]
    pub check_budget: Duration,
}

impl Default for FailoverConfig {
    fn default() -> Self {
        FailoverConfig {
            settings: vec![
                Setting::new(3, 2).expect("3:2 is a setting"),
                Setting::new(3, 1).expect("3:1 is a setting"),
            ],
            clients: 8,
            keys: 300,
            mix: "get=40,put=20,append=40".parse().expect("the default mix parses"),
            before_kill: Duration::from_secs(2),
            after_kill: Duration::from_secs(5),
            timeout: Duration::from_secs(1),
            probe_timeout: Duration::from_millis(250),
            probes: 3,
            bucket: Duration::from_millis(100),
            check_budget: Duration::from_secs(60),
        }
    }
}

/// Operations by outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Succeeded.
    pub ok: usize,
    /// Known not to have happened (refused, or out of attempts with a definite answer).
    pub fail: usize,
    /// May or may not have happened (timed out, cut off).
    pub unknown: usize,
}

/// The slowest successful operation in flight during the outage, in milliseconds, by how the
/// killed server held its key: a load client's call lasts through its retries, so this is the
/// outage an application saw.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Stalls {
    /// On keys it was the primary of.
    pub primary_ms: f64,
    /// On keys it was a secondary of.
    pub secondary_ms: f64,
    /// On the other keys.
    pub other_ms: f64,
}

/// A primary killed under load, at one setting.
#[derive(Debug, Clone, Serialize)]
pub struct FailoverReport {
    /// The replication factor and level.
    pub setting: Setting,
    /// The load and the probes.
    pub config: FailoverConfig,
    /// The storage server killed (its address).
    pub killed: String,
    /// The harness's index of the killed node.
    pub killed_node: usize,
    /// The key whose primary was killed.
    pub key: String,
    /// Slots the killed server was the primary of.
    pub primary_slots: usize,
    /// Keys of the load whose primary it was.
    pub victim_keys: usize,
    /// Keys of the load it was a secondary of: in strong mode their writes wait for it too.
    pub victim_secondary_keys: usize,
    /// The configuration's epoch before the kill, and once the load had stopped.
    pub epoch_before: u64,
    /// See `epoch_before`.
    pub epoch_after: u64,
    /// Members once the load had stopped.
    pub members_after: usize,
    /// The server that took the first probed slot over, as the shard master says.
    pub promoted: Option<String>,
    /// When the kill happened, in seconds since the load started.
    pub killed_at_secs: f64,
    /// Seconds from the kill until the shard master's map no longer held the killed server
    /// (within the polling's resolution); `None` if not within [`RECOVERY_LIMIT`].
    pub failed_over_after_secs: Option<f64>,
    /// Seconds from the kill until every probed slot accepted a write again; `None` if not
    /// within [`RECOVERY_LIMIT`].
    pub recovered_after_secs: Option<f64>,
    /// Per probe, seconds from the kill to its first accepted write.
    pub probe_secs: Vec<Option<f64>>,
    /// [`RECOVERY_BAR`], in seconds.
    pub recovery_bar_secs: f64,
    /// How long the load ran.
    pub load_secs: f64,
    /// Operations of the load, preload and final reads excluded.
    pub overall: Counts,
    /// Operations of the load in flight at some time between the kill and the recovery (to the
    /// end of the load without one).
    pub outage: Counts,
    /// Of those, the operations on keys whose primary was killed.
    pub outage_victim_keys: Counts,
    /// Mean successful operations per second before the kill.
    pub ops_per_sec_before: f64,
    /// Mean successful operations per second from the recovery to the end of the load.
    pub ops_per_sec_after: f64,
    /// The slowest slice from the kill to the recovery, in successful operations per second.
    pub min_ops_per_sec: f64,
    /// The slowest successful operations in flight during the outage.
    pub stalls: Stalls,
    /// Keys that could not be read back after the load.
    pub unread_keys: Vec<String>,
    /// Every append checked against the final values.
    pub appends: AppendAudit,
    /// The checker's verdict on the whole history (preload, load, final reads).
    pub linearizability: linearizability::Report,
    /// Throughput over time, across the kill.
    pub buckets: Vec<Bucket>,
    /// The recorded history.
    #[serde(skip)]
    pub history: crate::harness::history::History,
}

impl FailoverReport {
    /// Whether the slots took writes again within [`RECOVERY_BAR`].
    pub fn within_bar(&self) -> bool {
        self.recovered_after_secs.is_some_and(|secs| secs <= self.recovery_bar_secs)
    }

    /// Whether the store promises that no acknowledged write is lost at this setting: strong,
    /// or eventual with a synchronous secondary, the one promoted.
    pub fn keeps_acknowledged_writes(&self) -> bool {
        self.setting.is_strong() || self.setting.level() >= 1
    }
}
