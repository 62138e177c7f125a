//! A storage server's decisions at an install, as pure functions of the configurations: what
//! becomes of each of its copies.
//!
//! Invariants (the argument is in `kv_replica`'s docs, "Catching up" and "Moves"):
//! - a copy is kept only where the slot has the same primary before and after, and this server
//!   is its secondary in both ([`keeps_copy`]);
//! - a slot this server hands off (it was the primary) and stays a secondary of *awaits* the
//!   hand-off, and its data is never dropped here;
//! - any other new secondary role starts *syncing* from nothing (its data is dropped), at the
//!   new epoch;
//! - a slot taken over from a failed primary, or one this server stops being a secondary of,
//!   goes idle (the latter's data is dropped unless it is being handed off).

use std::collections::{BTreeMap, HashSet};

use crate::{Role, SlotState, keeps_copy, role};
use kv_shard::{Config, SLOTS, Slot};

use super::view::slot_set;

/// What an install does to this server's copies.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct CopyResets {
    /// The copies whose state changes, and the state each starts over in.
    pub(crate) resets: BTreeMap<Slot, SlotState>,
    /// Per slot, whether the data held here is dropped (unless its copy held nothing).
    pub(crate) drop_data: Vec<bool>,
}

/// The resets of the copies of the server at `me` when it switches from `previous` to `next`;
/// `handing_off` are the slots whose data it still holds to send away, `takeovers` those it
/// takes over from a failed primary.
pub(crate) fn copy_resets(
    previous: &Config,
    next: &Config,
    me: &str,
    handing_off: &[Slot],
    takeovers: &[Slot],
) -> CopyResets {
    let sending = slot_set(handing_off);
    let taken = slot_set(takeovers);
    let mut plan = CopyResets { resets: BTreeMap::new(), drop_data: vec![false; SLOTS] };
    for slot in 0..SLOTS as Slot {
        let was = role(previous, me, slot);
        let now = role(next, me, slot);
        let sends = sending[usize::from(slot)];
        match now {
            Role::Secondary if keeps_copy(previous, next, me, slot) => {}
            Role::Secondary if sends => {
                plan.resets.insert(slot, SlotState::Awaiting);
            }
            Role::Secondary => {
                plan.resets.insert(slot, SlotState::Syncing { touched: HashSet::new(), since: next.epoch() });
                plan.drop_data[usize::from(slot)] = true;
            }
            Role::Primary if taken[usize::from(slot)] => {
                plan.resets.insert(slot, SlotState::Idle);
            }
            Role::Primary | Role::None if was == Role::Secondary => {
                plan.resets.insert(slot, SlotState::Idle);
                plan.drop_data[usize::from(slot)] = !sends;
            }
            Role::Primary | Role::None => {}
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use crate::secondaries;
    use kv_shard::Replication;

    use super::*;

    fn cluster(n: usize) -> Config {
        let replication = Replication { factor: 3, ..Replication::default() };
        (0..n).fold(Config::new().with_replication(replication).unwrap(), |c, i| {
            c.join(&format!("10.0.0.{i}:1")).unwrap()
        })
    }

    #[test]
    fn an_unchanged_configuration_resets_nothing() {
        let config = cluster(4);
        let next = config.join("10.0.0.9:1").unwrap();
        let plan = copy_resets(&next, &next, "10.0.0.1:1", &[], &[]);
        assert!(plan.resets.is_empty());
        assert!(!plan.drop_data.contains(&true));
        let _ = config;
    }

    #[test]
    fn a_joiner_syncs_every_secondary_slot_from_nothing() {
        let before = cluster(4);
        let next = before.join("10.0.0.9:1").unwrap();
        let plan = copy_resets(&before, &next, "10.0.0.9:1", &[], &[]);
        for slot in 0..SLOTS as Slot {
            let expected = (role(&next, "10.0.0.9:1", slot) == Role::Secondary)
                .then(|| SlotState::Syncing { touched: HashSet::new(), since: next.epoch() });
            assert_eq!(plan.resets.get(&slot), expected.as_ref(), "slot {slot}");
            assert_eq!(plan.drop_data[usize::from(slot)], expected.is_some());
        }
    }

    #[test]
    fn a_sender_that_stays_a_secondary_awaits_and_keeps_its_data() {
        let before = cluster(4);
        let next = before.join("10.0.0.9:1").unwrap();
        let me = "10.0.0.0:1";
        let handing_off: Vec<Slot> = before
            .moves_to(&next)
            .into_iter()
            .filter(|m| m.from == before.id_of(me))
            .map(|m| m.slot)
            .collect();
        let plan = copy_resets(&before, &next, me, &handing_off, &[]);
        let mut awaiting = 0;
        for &slot in &handing_off {
            assert!(!plan.drop_data[usize::from(slot)], "data being handed off is never dropped");
            if role(&next, me, slot) == Role::Secondary {
                assert_eq!(plan.resets[&slot], SlotState::Awaiting);
                awaiting += 1;
            }
        }
        assert!(awaiting > 0);
    }

    #[test]
    fn a_takeover_goes_idle_and_a_lost_secondary_role_drops_its_copy() {
        let before = cluster(4);
        let failed = "10.0.0.1:1";
        let (next, promoted) = before.fail(failed).unwrap();
        for (i, me) in ["10.0.0.0:1", "10.0.0.2:1", "10.0.0.3:1"].iter().enumerate() {
            let plan = copy_resets(&before, &next, me, &[], &promoted);
            for slot in 0..SLOTS as Slot {
                let (was, now) = (role(&before, me, slot), role(&next, me, slot));
                let reset = plan.resets.get(&slot);
                if now == Role::Primary && promoted.contains(&slot) && was == Role::Secondary {
                    assert_eq!(reset, Some(&SlotState::Idle), "server {i} slot {slot}");
                    assert!(!plan.drop_data[usize::from(slot)], "a promoted copy keeps its data");
                }
                if was == Role::Secondary && now == Role::None {
                    assert_eq!(reset, Some(&SlotState::Idle));
                    assert!(plan.drop_data[usize::from(slot)]);
                }
                if now == Role::Secondary && keeps_copy(&before, &next, me, slot) {
                    assert_eq!(reset, None);
                    assert!(secondaries(&next, slot).contains(me));
                }
            }
        }
    }
}
