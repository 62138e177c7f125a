//! Which role a server plays for a slot in a configuration, and whether a secondary's copy of
//! a slot stays valid from one configuration to the next.

use kv_shard::{Config, ServerId, Slot};

/// A server's role for one slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// It takes the slot's writes.
    Primary,
    /// It holds a copy, fed by the primary.
    Secondary,
    /// It holds nothing of the slot.
    None,
}

/// The role of the member at `address` for `slot` in `config`.
pub fn role(config: &Config, address: &str, slot: Slot) -> Role {
    let Some(me) = config.id_of(address) else { return Role::None };
    match config.replicas_of_slot(slot).iter().position(|&id| id == me) {
        Some(0) => Role::Primary,
        Some(_) => Role::Secondary,
        None => Role::None,
    }
}

/// Whether the secondary at `address` keeps its copy of `slot` from `previous` to `next`: the
/// slot has the same primary in both, and the server is a secondary in both. Otherwise its copy
/// is rebuilt from a snapshot of the (new) primary.
///
/// Members are compared by id, so a server that left and joined again starts over.
pub fn keeps_copy(previous: &Config, next: &Config, address: &str, slot: Slot) -> bool {
    let same_member = |a: Option<ServerId>, b: Option<ServerId>| a.is_some() && a == b;
    let me = next.id_of(address);
    same_member(previous.id_of(address), me)
        && same_member(previous.owner_of_slot(slot), next.owner_of_slot(slot))
        && role(previous, address, slot) == Role::Secondary
        && role(next, address, slot) == Role::Secondary
}

/// The secondaries of `slot` in `config`, by address, in replica order.
pub fn secondaries(config: &Config, slot: Slot) -> Vec<&str> {
    config.replicas_of_slot(slot).into_iter().skip(1).filter_map(|id| config.address(id)).collect()
}

#[cfg(test)]
mod tests {
    use kv_shard::{Replication, SLOTS};

    use super::*;

    fn cluster(n: usize) -> Config {
        let replication = Replication { factor: 3, ..Replication::default() };
        (0..n).fold(Config::new().with_replication(replication).unwrap(), |c, i| {
            c.join(&format!("10.0.0.{i}:1")).unwrap()
        })
    }

    #[test]
    fn every_slot_has_one_primary_and_its_secondaries() {
        let config = cluster(4);
        for slot in [0, 17, 4095] {
            let roles: Vec<Role> = (0..4).map(|i| role(&config, &format!("10.0.0.{i}:1"), slot)).collect();
            assert_eq!(roles.iter().filter(|&&r| r == Role::Primary).count(), 1);
            assert_eq!(roles.iter().filter(|&&r| r == Role::Secondary).count(), 2);
            assert_eq!(secondaries(&config, slot).len(), 2);
        }
        assert_eq!(role(&config, "10.9.9.9:1", 0), Role::None);
    }

    #[test]
    fn copies_are_kept_only_under_the_same_primary() {
        let before = cluster(4);
        let after = before.join("10.0.0.9:1").unwrap();
        let mut kept = 0;
        for slot in 0..SLOTS as Slot {
            for i in 0..4 {
                let address = format!("10.0.0.{i}:1");
                if keeps_copy(&before, &after, &address, slot) {
                    kept += 1;
                    assert_eq!(before.owner_of_slot(slot), after.owner_of_slot(slot));
                    assert_eq!(role(&after, &address, slot), Role::Secondary);
                }
            }
            assert!(!keeps_copy(&before, &after, "10.0.0.9:1", slot), "a new member has no copy");
        }
        assert!(kept > SLOTS, "most secondaries keep their copies: {kept}");
        assert!(!keeps_copy(&before, &before.leave("10.0.0.1:1").unwrap(), "10.0.0.1:1", 0));
    }
}
