//! Cluster configurations: [`kv_shard::Config`] ⇄ [`v1::ClusterConfig`].
//!
//! On the wire the slot map travels as maximal runs of consecutive slots with one owner, so a
//! configuration of N members is about N ranges rather than one entry per slot.

use std::time::Duration;

use kv_shard::{Config, Consistency, Replication, SLOTS, ServerId};

use crate::v1;

/// The wire form of `config`.
pub fn config_to_wire(config: &Config) -> v1::ClusterConfig {
    let mut ranges: Vec<v1::SlotRange> = Vec::new();
    for (slot, owner) in config.slots().iter().enumerate() {
        let Some(owner) = owner else { continue };
        let slot = slot as u32;
        match ranges.last_mut() {
            Some(last) if last.end == slot && last.owner == owner.0 => last.end += 1,
            _ => ranges.push(v1::SlotRange { start: slot, end: slot + 1, owner: owner.0 }),
        }
    }
    v1::ClusterConfig {
        epoch: config.epoch(),
        slots: SLOTS as u32,
        members: config
            .members()
            .map(|(id, address)| v1::Member {
                id: id.0,
                address: address.to_owned(),
                restarted_at: config.restarted_at(id),
            })
            .collect(),
        ranges,
        next_member_id: config.next_id(),
        replication: Some(replication_to_wire(config.replication())),
    }
}

/// The wire form of replication settings.
pub fn replication_to_wire(replication: &Replication) -> v1::Replication {
    v1::Replication {
        factor: replication.factor as u32,
        consistency: match replication.consistency {
            Consistency::Strong => v1::Consistency::Strong,
            Consistency::Eventual => v1::Consistency::Eventual,
        } as i32,
        sync_replicas: replication.sync_replicas as u32,
        sync_interval_ms: u32::try_from(replication.sync_interval.as_millis()).unwrap_or(u32::MAX),
    }
}

/// Replication settings from the wire, checked; absent settings are one copy of every slot.
pub fn replication_from_wire(wire: Option<&v1::Replication>) -> kv_shard::Result<Replication> {
    let Some(wire) = wire else { return Ok(Replication::default()) };
    let consistency = match v1::Consistency::try_from(wire.consistency) {
        Ok(v1::Consistency::Strong) => Consistency::Strong,
        Ok(v1::Consistency::Eventual) => Consistency::Eventual,
        Err(_) => {
            return Err(kv_shard::Error::InvalidConfig(format!("unknown consistency {}", wire.consistency)));
        }
    };
    let replication = Replication {
        factor: (wire.factor as usize).max(1),
        consistency,
        sync_replicas: wire.sync_replicas as usize,
        sync_interval: Duration::from_millis(u64::from(wire.sync_interval_ms)),
    };
    replication.validate()?;
    Ok(replication)
}

/// The configuration `wire` describes, checked as [`Config::from_parts`] does.
pub fn config_from_wire(wire: &v1::ClusterConfig) -> kv_shard::Result<Config> {
    let invalid = |reason: String| Err(kv_shard::Error::InvalidConfig(reason));
    if wire.slots as usize != SLOTS {
        return invalid(format!("{} slots, this client knows {SLOTS}", wire.slots));
    }
    let mut slots = vec![None; SLOTS];
    let mut covered = 0;
    for range in &wire.ranges {
        let (start, end) = (range.start as usize, range.end as usize);
        // In slot order, without overlaps or gaps.
        if start != covered || start >= end || end > SLOTS {
            return invalid(format!("slot range {start}..{end} after {covered} slots"));
        }
        covered = end;
        for slot in &mut slots[start..end] {
            *slot = Some(ServerId(range.owner));
        }
    }
    let mut ids = std::collections::BTreeSet::new();
    let mut addresses = std::collections::BTreeSet::new();
    for m in &wire.members {
        if !ids.insert(m.id) || !addresses.insert(m.address.as_str()) {
            return invalid(format!("member {} ({}) listed twice", m.id, m.address));
        }
    }
    let members = wire.members.iter().map(|m| (ServerId(m.id), m.address.clone()));
    let restarts =
        wire.members.iter().filter(|m| m.restarted_at > 0).map(|m| (ServerId(m.id), m.restarted_at));
    Config::from_parts(wire.epoch, members, slots, wire.next_member_id)?
        .with_replication(replication_from_wire(wire.replication.as_ref())?)?
        .with_restarts(restarts.collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configurations_survive_the_round_trip_in_few_ranges() {
        let mut config = Config::new();
        assert_eq!(config_from_wire(&config_to_wire(&config)).unwrap(), config);
        for i in 0..5 {
            config = config.join(&format!("127.0.0.1:{}", 7000 + i)).unwrap();
            let wire = config_to_wire(&config);
            assert_eq!(config_from_wire(&wire).unwrap(), config);
            assert!(wire.ranges.len() <= SLOTS / 8, "{} ranges", wire.ranges.len());
        }
        config = config.leave("127.0.0.1:7002").unwrap();
        assert_eq!(config_from_wire(&config_to_wire(&config)).unwrap(), config);
        let eventual = Replication {
            factor: 3,
            consistency: Consistency::Eventual,
            sync_replicas: 1,
            sync_interval: Duration::from_millis(500),
        };
        config = config.with_replication(eventual).unwrap();
        assert_eq!(config_from_wire(&config_to_wire(&config)).unwrap(), config);
        config = config.readmit("127.0.0.1:7001").unwrap();
        assert_eq!(config_from_wire(&config_to_wire(&config)).unwrap(), config);
        let mut wire = config_to_wire(&config);
        wire.members[0].restarted_at = config.epoch() + 1;
        assert!(config_from_wire(&wire).is_err(), "taken back at an epoch to come");
    }

    #[test]
    fn malformed_configurations_are_refused() {
        let config = Config::new().join("a:1").unwrap();
        let mut wire = config_to_wire(&config);
        wire.ranges[0].end = SLOTS as u32 + 1;
        assert!(config_from_wire(&wire).is_err());
        let mut wire = config_to_wire(&config);
        wire.ranges[0].owner = 99;
        assert!(config_from_wire(&wire).is_err());
        let mut wire = config_to_wire(&config);
        wire.slots = 16;
        assert!(config_from_wire(&wire).is_err());
        let two = Config::new().join("a:1").unwrap().join("b:1").unwrap();
        let mut wire = config_to_wire(&two);
        wire.ranges.swap(0, 1);
        assert!(config_from_wire(&wire).is_err(), "ranges out of order");
        let mut wire = config_to_wire(&two);
        wire.ranges[1].start -= 1;
        assert!(config_from_wire(&wire).is_err(), "overlapping ranges");
        let mut wire = config_to_wire(&two);
        wire.members[1].id = wire.members[0].id;
        assert!(config_from_wire(&wire).is_err(), "a member id twice");
        let mut wire = config_to_wire(&two);
        wire.replication = Some(v1::Replication { consistency: 7, ..Default::default() });
        assert!(config_from_wire(&wire).is_err(), "unknown consistency");
        let mut wire = config_to_wire(&two);
        wire.replication = Some(v1::Replication {
            factor: 2,
            consistency: v1::Consistency::Eventual as i32,
            sync_replicas: 1,
            sync_interval_ms: 100,
        });
        assert!(config_from_wire(&wire).is_err(), "every secondary synchronous in eventual mode");
        let mut wire = config_to_wire(&two);
        wire.epoch = 0;
        assert!(config_from_wire(&wire).is_err(), "epoch 0 with members");
    }
}
