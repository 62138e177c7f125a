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

/// The *peers* of the member at `address`: the servers it shares some slot with, as its primary
/// or its secondary. With ring placement, the `factor − 1` members on either side of it in id
/// order. Empty for a replication factor of 1, or a server that is not a member.
pub fn peers<'c>(config: &'c Config, address: &str) -> Vec<&'c str> {
    let Some(me) = config.id_of(address) else { return Vec::new() };
    let ring: Vec<(ServerId, &str)> = config.members().collect();
    let reach = config.replication().factor.saturating_sub(1).min(ring.len().saturating_sub(1));
    let Some(at) = ring.iter().position(|(id, _)| *id == me) else { return Vec::new() };
    let n = ring.len();
    let mut peers: Vec<&str> =
        (1..=reach).flat_map(|d| [ring[(at + d) % n].1, ring[(at + n - d) % n].1]).collect();
    peers.sort_unstable();
    peers.dedup();
    peers
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
    fn peers_are_exactly_the_servers_sharing_a_slot() {
        for n in [1, 2, 3, 4, 7] {
            let config = cluster(n);
            for i in 0..n {
                let me = format!("10.0.0.{i}:1");
                let mut shared = std::collections::BTreeSet::new();
                for slot in 0..SLOTS as Slot {
                    let replicas: Vec<&str> =
                        config.replicas_of_slot(slot).iter().filter_map(|&id| config.address(id)).collect();
                    let Some(at) = replicas.iter().position(|a| *a == me) else { continue };
                    if at == 0 {
                        shared.extend(replicas[1..].iter().copied());
                    } else {
                        shared.insert(replicas[0]);
                    }
                }
                let peers: std::collections::BTreeSet<&str> = peers(&config, &me).into_iter().collect();
                assert_eq!(peers, shared, "n={n}, server {i}");
            }
        }
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
