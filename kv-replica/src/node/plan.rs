//! A storage server's decisions at an install, as pure functions of the configurations: what
//! becomes of each of its copies.
//!
//! Invariants (the argument is in `kv_replica`'s docs, "Catching up" and "Moves"):
//! - a copy is kept only where the slot has the same primary before and after, and this server
//!   is its secondary in both ([`keeps_copy`]);
//! - a slot this server hands off (it was the primary) and stays a secondary of *awaits* the
//!   hand-off, and its data is never dropped here;
//! - any other new secondary role starts *syncing* at the new epoch, from what this server
//!   holds of the slot (its base: only what differs from the primary's is sent);
//! - a slot taken over from a failed primary, or one this server stops being a secondary of,
//!   goes idle (the latter's data is dropped unless it is being handed off);
//! - a slot whose old secondaries (or old primary) may still serve reads under a lease this
//!   server promised them is *fenced* until that promise ends: no write, and no read at the
//!   primary, before then ([`install_fences`]);
//! - a hand-off still owed from an earlier epoch carries over to the slot's owner in the new
//!   one, or is served here at once if that owner is this server ([`carry_over`]).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use crate::{Role, SlotState, keeps_copy, role, secondaries};
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
                plan.resets
                    .insert(slot, SlotState::Syncing { touched: BTreeSet::new(), since: next.epoch() });
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

/// The fences an install from `previous` to `next` puts on the slots of the server at `me`,
/// from the promises it made (`promised`: per peer, until when), as of `now`:
/// - a slot it keeps as primary but without some secondaries waits out its promises to them
///   (they may still read their copies);
/// - a slot it takes over from a failed primary (`promoted`) waits out its promise to that
///   primary (it may still serve);
/// - a slot it hands off is sent only once its promises to the slot's secondaries are over (the
///   new owner must not commit a write they could miss).
pub(crate) fn install_fences(
    previous: &Config,
    next: &Config,
    me: &str,
    promoted: &[Slot],
    promised: &BTreeMap<String, Instant>,
    now: Instant,
) -> BTreeMap<Slot, Instant> {
    let promised_to = |peer: &str| promised.get(peer).copied();
    let latest = |peers: Vec<&str>| peers.into_iter().filter_map(promised_to).max();
    let promoted = slot_set(promoted);
    let mut fences = BTreeMap::new();
    for slot in 0..SLOTS as Slot {
        let (was, is) = (role(previous, me, slot), role(next, me, slot));
        let until = if is == Role::Primary && promoted[usize::from(slot)] {
            let old = previous.owner_of_slot(slot).and_then(|id| previous.address(id));
            old.and_then(promised_to)
        } else if is == Role::Primary && was == Role::Primary {
            let kept = secondaries(next, slot);
            latest(secondaries(previous, slot).into_iter().filter(|s| !kept.contains(s)).collect())
        } else if was == Role::Primary {
            latest(secondaries(previous, slot))
        } else {
            None
        };
        if let Some(until) = until.filter(|&until| until > now) {
            fences.insert(slot, until);
        }
    }
    fences
}

/// Where the hand-offs a server still owes from an earlier epoch go in the next one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct CarryOver {
    /// Slots owed elsewhere that are this server's in the next epoch: served from here at once.
    pub(crate) serving_own: Vec<Slot>,
    /// Slots owed to the slots' owners in the next epoch, by owner.
    pub(crate) to: BTreeMap<String, Vec<Slot>>,
    /// Slots no member owns in the next epoch: their data stays here, unserved.
    pub(crate) unowned: Vec<Slot>,
}

/// Carries the hand-offs the server at `me` owes (`owed`: by receiver) over to `next`.
pub(crate) fn carry_over(owed: &BTreeMap<String, Vec<Slot>>, next: &Config, me: &str) -> CarryOver {
    let mut carry = CarryOver::default();
    for &slot in owed.values().flatten() {
        match next.owner_of_slot(slot).and_then(|id| next.address(id)) {
            Some(owner) if owner == me => carry.serving_own.push(slot),
            Some(owner) => carry.to.entry(owner.to_owned()).or_default().push(slot),
            None => carry.unowned.push(slot),
        }
    }
    carry
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
    fn a_joiner_syncs_every_secondary_slot_from_what_it_holds() {
        let before = cluster(4);
        let next = before.join("10.0.0.9:1").unwrap();
        let plan = copy_resets(&before, &next, "10.0.0.9:1", &[], &[]);
        for slot in 0..SLOTS as Slot {
            let expected = (role(&next, "10.0.0.9:1", slot) == Role::Secondary)
                .then(|| SlotState::Syncing { touched: BTreeSet::new(), since: next.epoch() });
            assert_eq!(plan.resets.get(&slot), expected.as_ref(), "slot {slot}");
            assert!(!plan.drop_data[usize::from(slot)], "a copy catching up starts from its base");
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

    #[test]
    fn fences_wait_out_the_promises_made_to_servers_that_lose_a_slot() {
        let before = cluster(4);
        let now = Instant::now();
        let later = now + std::time::Duration::from_millis(400);
        let promised: BTreeMap<String, Instant> = (0..4).map(|i| (format!("10.0.0.{i}:1"), later)).collect();
        // A join: the old primaries that hand slots off wait for their old secondaries.
        let next = before.join("10.0.0.9:1").unwrap();
        let me = "10.0.0.0:1";
        let fences = install_fences(&before, &next, me, &[], &promised, now);
        for slot in 0..SLOTS as Slot {
            let (was, is) = (role(&before, me, slot), role(&next, me, slot));
            let lost_secondary =
                secondaries(&before, slot).iter().any(|s| !secondaries(&next, slot).contains(s));
            let fenced = was == Role::Primary && (is != Role::Primary || lost_secondary);
            assert_eq!(fences.get(&slot), fenced.then_some(&later), "slot {slot}");
        }
        // Promises already over fence nothing.
        assert!(install_fences(&before, &next, me, &[], &promised, later).is_empty());
        // A takeover waits out the promise to the failed primary.
        let (failed, promoted) = before.fail("10.0.0.1:1").unwrap();
        let heir = "10.0.0.2:1";
        let fences = install_fences(&before, &failed, heir, &promoted, &promised, now);
        for slot in &promoted {
            if role(&failed, heir, *slot) == Role::Primary {
                assert_eq!(fences.get(slot), Some(&later));
            }
        }
        let unpromised: BTreeMap<String, Instant> = BTreeMap::new();
        assert!(install_fences(&before, &failed, heir, &promoted, &unpromised, now).is_empty());
    }

    #[test]
    fn owed_hand_offs_carry_over_to_the_new_owners_or_are_served_here() {
        let before = cluster(3);
        let next = before.join("10.0.0.9:1").unwrap();
        let me = "10.0.0.0:1";
        let slots: Vec<Slot> = (0..SLOTS as Slot).step_by(97).collect();
        let owed = BTreeMap::from([("10.0.0.7:1".to_owned(), slots.clone())]);
        let carry = carry_over(&owed, &next, me);
        for slot in &slots {
            let owner = next.address(next.owner_of_slot(*slot).unwrap()).unwrap();
            if owner == me {
                assert!(carry.serving_own.contains(slot));
            } else {
                assert!(carry.to[owner].contains(slot));
            }
        }
        let total = carry.serving_own.len() + carry.to.values().map(Vec::len).sum::<usize>();
        assert_eq!(total, slots.len());
        assert!(carry.unowned.is_empty());
        let empty = Config::new();
        assert_eq!(carry_over(&owed, &empty, me).unowned, slots, "no member left owns them");
    }
}
