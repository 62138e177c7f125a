//! Replication settings: how many copies each slot has, and how a write reaches them. They
//! travel in every configuration, so every server replicates the same way.

use std::time::Duration;

use crate::{Error, Result};

/// How a write reaches the replicas of its slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Consistency {
    /// A write is acknowledged once every replica of its slot holds it; every read is
    /// linearizable, at any replica.
    #[default]
    Strong,
    /// A write is acknowledged once the primary and the first `sync_replicas` secondaries hold
    /// it; the other secondaries get it within `sync_interval`.
    Eventual,
}

impl std::fmt::Display for Consistency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Consistency::Strong => "strong",
            Consistency::Eventual => "eventual",
        })
    }
}

impl std::str::FromStr for Consistency {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "strong" => Ok(Consistency::Strong),
            "eventual" => Ok(Consistency::Eventual),
            other => Err(format!("unknown consistency {other:?}: strong or eventual")),
        }
    }
}

/// A cluster's replication settings: they travel in every configuration, so that every server
/// replicates the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replication {
    /// Replicas per slot, the primary included (fewer while there are fewer members).
    pub factor: usize,
    /// How writes reach the secondaries.
    pub consistency: Consistency,
    /// In eventual mode, the secondaries that apply a write before it is acknowledged.
    pub sync_replicas: usize,
    /// In eventual mode, the longest a secondary outside the synchronous ones waits for writes.
    pub sync_interval: Duration,
}

impl Default for Replication {
    /// One copy of every slot: no secondaries.
    fn default() -> Self {
        Replication {
            factor: 1,
            consistency: Consistency::Strong,
            sync_replicas: 0,
            sync_interval: Duration::from_secs(2),
        }
    }
}

impl Replication {
    /// Checks the settings: a factor of at least 1, and in eventual mode fewer synchronous
    /// secondaries than secondaries (all of them synchronous is strong mode).
    pub fn validate(&self) -> Result<()> {
        let invalid = |reason: String| Err(Error::InvalidConfig(reason));
        if self.factor == 0 {
            return invalid("the replication factor must be at least 1".to_owned());
        }
        if self.consistency == Consistency::Eventual {
            if self.factor < 2 {
                return invalid("eventual consistency needs a replication factor of 2 or more".to_owned());
            }
            if self.sync_replicas >= self.factor - 1 {
                return invalid(format!(
                    "--sync-replicas {} must be below the {} secondaries (all of them synchronous is strong \
                     consistency)",
                    self.sync_replicas,
                    self.factor - 1
                ));
            }
        }
        if self.sync_interval.is_zero() {
            return invalid("the sync interval must be above zero".to_owned());
        }
        Ok(())
    }

    /// The assignment's level: how many secondaries apply a write before it is acknowledged.
    pub fn level(&self) -> usize {
        match self.consistency {
            Consistency::Strong => self.factor - 1,
            Consistency::Eventual => self.sync_replicas,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replication_settings_are_checked() {
        let eventual = |factor, sync_replicas| Replication {
            factor,
            consistency: Consistency::Eventual,
            sync_replicas,
            ..Replication::default()
        };
        assert!(eventual(3, 0).validate().is_ok());
        assert!(eventual(3, 1).validate().is_ok());
        assert!(eventual(3, 2).validate().is_err(), "all secondaries synchronous is strong");
        assert!(eventual(1, 0).validate().is_err());
        assert!(Replication { factor: 0, ..Replication::default() }.validate().is_err());
        assert_eq!(eventual(3, 1).level(), 1);
        assert_eq!(Replication { factor: 3, ..Replication::default() }.level(), 2);
        assert_eq!("eventual".parse::<Consistency>(), Ok(Consistency::Eventual));
        assert!("weak".parse::<Consistency>().is_err());
    }
}
