//! Which role a server plays for a slot in a configuration, and whether a secondary's copy of
//! a slot stays valid from one configuration to the next.

use std::collections::BTreeMap;

use crate::{Config, Consistency, ServerId, Slot};

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
/// slot has the same primary in both, the server is a secondary in both, and (eventual mode) it
/// does not become a synchronous secondary from a background one: its copy may lack the writes
/// of the last sync interval, which a synchronous secondary must hold (it is the heir a failover
/// counts on for every acknowledged write). Otherwise its copy is rebuilt from a snapshot of the
/// (new) primary.
///
/// Members are compared by id, so a server that left and joined again starts over; and by
/// readmission ([`Config::restarted_at`]), so a copy held by, or fed by, a member that came back
/// after a restart starts over too.
pub fn keeps_copy(previous: &Config, next: &Config, address: &str, slot: Slot) -> bool {
    let same_member = |a: Option<ServerId>, b: Option<ServerId>| {
        a.is_some() && a == b && a.is_some_and(|id| previous.restarted_at(id) == next.restarted_at(id))
    };
    let me = next.id_of(address);
    same_member(previous.id_of(address), me)
        && same_member(previous.owner_of_slot(slot), next.owner_of_slot(slot))
        && role(previous, address, slot) == Role::Secondary
        && role(next, address, slot) == Role::Secondary
        && (!is_synchronous(next, address, slot) || is_synchronous(previous, address, slot))
}

/// Whether the server at `address` is a secondary of `slot` that applies its writes before they
/// are acknowledged: every secondary in strong mode, the first `sync_replicas` in eventual mode.
fn is_synchronous(config: &Config, address: &str, slot: Slot) -> bool {
    let replication = config.replication();
    let Some(position) = secondaries(config, slot).iter().position(|&s| s == address) else { return false };
    replication.consistency == Consistency::Strong || position < replication.sync_replicas
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

/// Who takes over the primary slots of the failed member at `failed` in `config`, for
/// [`Config::fail_to`]: per slot, the first of its secondaries whose copy is up to date
/// (`ready(address, slot)`; a server that did not answer is not) among those that hold every
/// acknowledged write — every secondary in strong mode, the synchronous ones in eventual mode —
/// else the first up-to-date secondary at all (eventual mode: it may miss the writes of the last
/// sync interval, so the shard master does not promote it while a synchronous secondary is
/// silent). Slots with neither are left out: they go to their first secondary, whose copy is
/// still catching up.
pub fn heirs(config: &Config, failed: &str, ready: impl Fn(&str, Slot) -> bool) -> BTreeMap<Slot, ServerId> {
    let Some(id) = config.id_of(failed) else { return BTreeMap::new() };
    let replication = config.replication();
    let synchronous = match replication.consistency {
        Consistency::Strong => usize::MAX,
        Consistency::Eventual => replication.sync_replicas,
    };
    let mut heirs = BTreeMap::new();
    for (slot, owner) in (0..).zip(config.slots()) {
        if *owner != Some(id) {
            continue;
        }
        let candidates: Vec<(ServerId, &str)> = config
            .replicas_of_slot(slot)
            .into_iter()
            .skip(1)
            .filter_map(|id| Some((id, config.address(id)?)))
            .collect();
        let is_ready = |(_, address): &&(ServerId, &str)| ready(address, slot);
        let heir =
            candidates.iter().take(synchronous).find(is_ready).or_else(|| candidates.iter().find(is_ready));
        if let Some(&(heir, _)) = heir {
            heirs.insert(slot, heir);
        }
    }
    heirs
}

#[cfg(test)]
mod tests {
    use crate::{Replication, SLOTS};

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
    fn a_failed_primary_s_slots_go_to_an_up_to_date_secondary() {
        let config = cluster(5);
        let failed = "10.0.0.2:1";
        let [first, second] = ["10.0.0.3:1", "10.0.0.4:1"].map(|a| config.id_of(a).unwrap());
        let owned: Vec<Slot> =
            (0..SLOTS as Slot).filter(|&s| role(&config, failed, s) == Role::Primary).collect();
        // Every copy up to date: the first secondary, as `Config::fail` gives them.
        let all = heirs(&config, failed, |_, _| true);
        assert_eq!(all.len(), owned.len());
        assert!(all.values().all(|&heir| heir == first));
        // The first secondary still catching up some slots: those go to the second.
        let catching_up = |slot: Slot| slot.is_multiple_of(2);
        let chosen = heirs(&config, failed, |address, slot| address != "10.0.0.3:1" || !catching_up(slot));
        for slot in &owned {
            assert_eq!(chosen[slot], if catching_up(*slot) { second } else { first }, "slot {slot}");
        }
        // No copy up to date: left to the first secondary.
        assert!(heirs(&config, failed, |_, _| false).is_empty());

        // Eventual mode prefers a synchronous secondary, then any up-to-date one.
        let eventual = Replication {
            factor: 3,
            consistency: Consistency::Eventual,
            sync_replicas: 1,
            ..Replication::default()
        };
        let config = (0..5).fold(Config::new().with_replication(eventual).unwrap(), |c, i| {
            c.join(&format!("10.0.0.{i}:1")).unwrap()
        });
        let chosen = heirs(&config, failed, |address, _| address != "10.0.0.3:1");
        assert!(chosen.values().all(|&heir| heir == second), "the only up-to-date copy");
        assert!(heirs(&config, "10.9.9.9:1", |_, _| true).is_empty());
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

    /// A member taken back after a restart keeps none of its copies, and the secondaries of its
    /// slots none of theirs; every other copy stays.
    #[test]
    fn a_readmission_rebuilds_the_copies_the_member_held_or_fed() {
        let before = cluster(4);
        let back = "10.0.0.1:1";
        let after = before.readmit(back).unwrap();
        assert_eq!((after.epoch(), after.slots()), (before.epoch() + 1, before.slots()));
        let id = after.id_of(back).unwrap();
        assert_eq!((before.restarted_at(id), after.restarted_at(id)), (0, after.epoch()));
        for slot in 0..SLOTS as Slot {
            let fed_by_it = after.owner_of_slot(slot) == Some(id);
            for i in 0..4 {
                let address = format!("10.0.0.{i}:1");
                if role(&after, &address, slot) != Role::Secondary {
                    continue;
                }
                let kept = keeps_copy(&before, &after, &address, slot);
                assert_eq!(kept, !fed_by_it && address != back, "slot {slot} at {address}");
            }
        }
        // Taken back again later: again rebuilt; after that, kept as before.
        let again = after.readmit(back).unwrap();
        assert!(secondaries(&again, 0).iter().all(|s| !keeps_copy(&after, &again, s, 0) || *s != back));
        let later = again.readmit("10.0.0.2:1").unwrap();
        assert_eq!(later.restarted_at(id), again.epoch(), "a mark stays until the member leaves");
        assert!(before.readmit("10.9.9.9:1").is_err(), "not a member");
    }

    /// In eventual mode, a background secondary that a change makes synchronous takes a fresh
    /// snapshot: its copy may miss the last sync interval's writes, which a synchronous one holds.
    #[test]
    fn a_background_secondary_made_synchronous_starts_over() {
        let replication = Replication {
            factor: 3,
            consistency: Consistency::Eventual,
            sync_replicas: 1,
            sync_interval: std::time::Duration::from_secs(2),
        };
        let mut before = Config::new().with_replication(replication).unwrap();
        for i in 0..4 {
            before = before.join(&format!("10.0.0.{i}:1")).unwrap();
        }
        let mut promoted = 0;
        for slot in 0..SLOTS as Slot {
            let secs = secondaries(&before, slot);
            let (sync, background) = (secs[0].to_owned(), secs[1].to_owned());
            let after = before.leave(&sync).unwrap();
            if after.owner_of_slot(slot) != before.owner_of_slot(slot) {
                continue;
            }
            if secondaries(&after, slot).first() == Some(&background.as_str()) {
                promoted += 1;
                assert!(!keeps_copy(&before, &after, &background, slot), "slot {slot}");
            }
        }
        assert!(promoted > 0, "some background secondary becomes the synchronous one");
    }
}
