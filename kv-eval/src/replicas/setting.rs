//! A replication setting: the replication factor `R` and the assignment's *level*, the number of
//! secondaries that apply a write before it is acknowledged. Level `R − 1` is strong
//! consistency; a lower level is eventual consistency with that many synchronous secondaries.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use kv_shard::Consistency;
use serde::ser::SerializeStruct;
use serde::{Serialize, Serializer};

/// A replication factor and a level, checked: `level < factor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Setting {
    factor: usize,
    level: usize,
}

impl Setting {
    /// `factor` copies of every slot, `level` of the secondaries synchronous.
    pub fn new(factor: usize, level: usize) -> Result<Self> {
        ensure!(factor >= 1, "a replication factor must be at least 1");
        ensure!(
            level < factor,
            "level {level} needs {} secondaries, but a replication factor of {factor} has {}",
            level,
            factor - 1
        );
        Ok(Setting { factor, level })
    }

    /// Copies of every slot, the primary's included.
    pub fn factor(self) -> usize {
        self.factor
    }

    /// Secondaries that apply a write before it is acknowledged.
    pub fn level(self) -> usize {
        self.level
    }

    /// Strong when every secondary is synchronous (with one copy, trivially), else eventual.
    pub fn consistency(self) -> Consistency {
        if self.level + 1 >= self.factor { Consistency::Strong } else { Consistency::Eventual }
    }

    /// Whether every read, at any replica, must be linearizable.
    pub fn is_strong(self) -> bool {
        self.consistency() == Consistency::Strong
    }

    /// The shard master's flags for this setting (besides `--replication-factor`, which the
    /// cluster harness passes).
    pub(super) fn shardmaster_args(self, sync_interval: Duration) -> Vec<String> {
        let mut args = vec!["--consistency".to_owned(), self.consistency().to_string()];
        if self.consistency() == Consistency::Eventual {
            args.extend([
                "--sync-replicas".to_owned(),
                self.level.to_string(),
                "--sync-interval-ms".to_owned(),
                sync_interval.as_millis().max(1).to_string(),
            ]);
        }
        args
    }

    /// What the level means, in a few words: `strong`, or `eventual, 1 sync`.
    pub fn describe(self) -> String {
        match self.consistency() {
            Consistency::Strong => "strong".to_owned(),
            Consistency::Eventual => format!("eventual, {} sync", self.level),
        }
    }
}

impl fmt::Display for Setting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "R={} level {}", self.factor, self.level)
    }
}

/// `FACTOR:LEVEL`, e.g. `3:1`.
impl FromStr for Setting {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        let (factor, level) = s
            .trim()
            .split_once(':')
            .with_context(|| format!("expected FACTOR:LEVEL, e.g. 3:1, got {s:?}"))?;
        let number = |text: &str, what: &str| {
            text.trim().parse::<usize>().with_context(|| format!("bad {what} in {s:?}"))
        };
        Setting::new(number(factor, "replication factor")?, number(level, "level")?)
    }
}

/// Serialised with its consistency spelled out, so the JSON reads on its own.
impl Serialize for Setting {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("Setting", 3)?;
        s.serialize_field("factor", &self.factor)?;
        s.serialize_field("level", &self.level)?;
        s.serialize_field("consistency", &self.consistency().to_string())?;
        s.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_top_level_is_strong_and_the_others_eventual() {
        let strong: Setting = "3:2".parse().unwrap();
        assert!(strong.is_strong());
        assert_eq!(strong.shardmaster_args(Duration::from_secs(2)), ["--consistency", "strong"]);
        let eventual: Setting = " 3 : 1 ".parse().unwrap();
        assert_eq!(eventual.consistency(), Consistency::Eventual);
        assert_eq!(
            eventual.shardmaster_args(Duration::from_millis(1500)),
            ["--consistency", "eventual", "--sync-replicas", "1", "--sync-interval-ms", "1500"]
        );
        assert_eq!(eventual.to_string(), "R=3 level 1");
        assert_eq!(eventual.describe(), "eventual, 1 sync");
        assert!(Setting::new(1, 0).unwrap().is_strong(), "one copy is trivially strong");
    }

    #[test]
    fn impossible_settings_are_refused() {
        for bad in ["3:3", "0:0", "3", "3:x", "-1:0", ""] {
            assert!(bad.parse::<Setting>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn serialises_with_its_consistency() {
        let json = serde_json::to_value(Setting::new(5, 4).unwrap()).unwrap();
        assert_eq!(json, serde_json::json!({"factor": 5, "level": 4, "consistency": "strong"}));
    }
}
