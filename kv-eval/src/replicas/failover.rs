//! Failover: a primary killed (SIGKILL) under load. **Not built yet**: the store cannot fail over
//! until failure detection and promotion land (issue 6; `kv-replica`'s *Failures* section), so
//! the phase is skipped with a note, and no figure is made up.
//!
//! What it will measure, as [`FailoverReport`] holds it: how long the killed primary's slots
//! refuse writes, the operations that failed meanwhile, whether the history stays linearizable
//! (strong) and which acknowledged writes were lost (eventual, `k = 0`: up to a sync interval's
//! worth), and throughput over time across the kill, charted with the kill marked.

use anyhow::Result;
use serde::Serialize;

use super::Setting;
use crate::chart::{self, Marker};
use crate::linearizability;
use crate::sharded::Bucket;

/// What the failover phase did.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum FailoverOutcome {
    /// The phase did not run.
    Skipped {
        /// Why.
        reason: String,
    },
    /// The phase ran.
    Ran(Box<FailoverReport>),
}

/// The note printed, and recorded, while the store cannot fail over.
pub const NOT_BUILT: &str = "failover: not built yet (issue 6)";

/// Runs the phase: for now, says it cannot.
pub(super) fn run() -> FailoverOutcome {
    println!("  {NOT_BUILT}");
    FailoverOutcome::Skipped { reason: NOT_BUILT.to_owned() }
}

/// A primary killed under load, at one setting.
#[derive(Debug, Clone, Serialize)]
pub struct FailoverReport {
    /// The replication factor and level.
    pub setting: Setting,
    /// The storage server killed.
    pub killed: String,
    /// Slots it was the primary of.
    pub primary_slots: usize,
    /// When it was killed, in seconds since the load started.
    pub killed_at_secs: f64,
    /// Seconds from the kill until every one of its slots accepted writes again (at a promoted
    /// secondary); `None` if they did not within the load.
    pub recovered_after_secs: Option<f64>,
    /// How long the load ran.
    pub load_secs: f64,
    /// Operations that succeeded.
    pub ok: usize,
    /// Operations known not to have happened, from the kill to the recovery.
    pub failed: usize,
    /// Operations whose outcome is unknown, from the kill to the recovery.
    pub unknown: usize,
    /// Acknowledged writes missing once the cluster has recovered.
    pub lost_acknowledged_writes: usize,
    /// The first few lost writes, for diagnosis.
    pub lost_examples: Vec<String>,
    /// The checker's verdict on the whole history (strong: must be linearizable).
    pub linearizability: linearizability::Report,
    /// Throughput over time, across the kill.
    pub buckets: Vec<Bucket>,
}

impl FailoverReport {
    /// The chart of throughput over time across the failover, with the kill and the recovery
    /// marked (SVG).
    pub fn chart(&self) -> Result<String> {
        let points: Vec<(f64, f64)> =
            self.buckets.iter().map(|b| (b.start_secs + b.secs / 2.0, b.ops_per_sec)).collect();
        let marker = Marker {
            at: self.killed_at_secs,
            until: self.recovered_after_secs.map_or(self.load_secs, |after| self.killed_at_secs + after),
            label: format!("kill -9 {}", self.killed),
            detail: match self.recovered_after_secs {
                Some(after) => format!("writes again after {after:.2} s"),
                None => "no recovery".to_owned(),
            },
            removal: true,
        };
        let title = format!("Throughput across a primary's failover ({})", self.setting);
        chart::throughput_svg(&title, &points, &[marker], self.load_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_phase_is_skipped_with_its_note() {
        let json = serde_json::to_value(run()).unwrap();
        assert_eq!(json["status"], "skipped");
        assert_eq!(json["reason"], NOT_BUILT);
    }

    #[test]
    fn the_chart_marks_the_kill_and_the_recovery() {
        let buckets = (0..8)
            .map(|i| Bucket {
                start_secs: f64::from(i) * 0.5,
                secs: 0.5,
                ok: 100,
                fail: 0,
                unknown: 0,
                ops_per_sec: if i == 3 { 0.0 } else { 200.0 },
            })
            .collect();
        let report = FailoverReport {
            setting: Setting::new(3, 2).unwrap(),
            killed: "127.0.0.1:20001".into(),
            primary_slots: 1365,
            killed_at_secs: 1.5,
            recovered_after_secs: Some(0.9),
            load_secs: 4.0,
            ok: 700,
            failed: 3,
            unknown: 2,
            lost_acknowledged_writes: 0,
            lost_examples: Vec::new(),
            linearizability: linearizability::check(&crate::history::History::default()),
            buckets,
        };
        let svg = report.chart().unwrap();
        assert!(svg.contains("kill -9 127.0.0.1:20001") && svg.contains("writes again after 0.90 s"));
    }
}
