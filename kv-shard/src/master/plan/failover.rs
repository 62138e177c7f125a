//! Planning the failover of a member, as pure functions of the configuration being failed over,
//! the last change's moves and what the other servers answered: which slots are still owed to
//! it (and go to its heirs *carried*, from their sender), which copies are up to date (the
//! heirs), and which slots have no up-to-date copy (brought up to date from a copy a former
//! secondary kept, before the failover).
//!
//! Invariants (the argument is in `kv_replica`'s docs, "Failover" and "Moves"):
//! - a copy is judged only from an answer at the epoch being failed over;
//! - a slot the failed member was still receiving is carried from its sender, never promoted
//!   from a copy that missed its data; a sender that has not switched to the last change yet
//!   counts as owing its moves;
//! - every primary slot of the failed member is carried, or has an heir, or is *behind* (no
//!   up-to-date copy answered): then its first secondary is named, to be brought up to date;
//! - in eventual mode with synchronous secondaries, a slot whose heir is a background copy
//!   because a synchronous secondary did not answer is *unsure*: that secondary may be the only
//!   copy of the writes the failed member acknowledged last, and may only be slow.

use std::collections::{BTreeMap, BTreeSet};

use crate::messages::ServerStatus;
use crate::roles::{heirs, secondaries};
use crate::{Config, Consistency, ServerId, Slot};

/// One slot of the last change, moving from one server to another (by address).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Move {
    pub(crate) from: String,
    pub(crate) to: String,
    pub(crate) slot: Slot,
}

/// The moves from `previous` to `current` between two servers.
pub(crate) fn moves_between(previous: &Config, current: &Config) -> Vec<Move> {
    previous
        .moves_to(current)
        .into_iter()
        .filter_map(|m| {
            let from = m.from.and_then(|id| previous.address(id))?;
            let to = m.to.and_then(|id| current.address(id))?;
            Some(Move { from: from.to_owned(), to: to.to_owned(), slot: m.slot })
        })
        .collect()
}

/// The hand-offs of the change from `previous` to `current`: the moves between two servers, but
/// for `promoted`, the slots of a failed member that the failover which made `current` promoted
/// (their new owners serve their own copies: no one sends them, least of all the failed member).
pub(crate) fn handoffs_between(previous: &Config, current: &Config, promoted: &[Slot]) -> Vec<Move> {
    let promoted: BTreeSet<Slot> = promoted.iter().copied().collect();
    let mut moves = moves_between(previous, current);
    moves.retain(|m| !promoted.contains(&m.slot));
    moves
}

/// Of `moves`, those from `sender`, by receiver.
pub(crate) fn moves_from(moves: &[Move], sender: &str) -> BTreeMap<String, Vec<Slot>> {
    let mut by_receiver: BTreeMap<String, Vec<Slot>> = BTreeMap::new();
    for m in moves.iter().filter(|m| m.from == sender) {
        by_receiver.entry(m.to.clone()).or_default().push(m.slot);
    }
    by_receiver
}

/// What a failover of one member gives to whom.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct FailoverPlan {
    /// The failed member's slots still owed to it, by the server that holds their data.
    pub(crate) carried: BTreeMap<String, Vec<Slot>>,
    /// Servers that owe slots, or have not switched to the configuration failed over: the
    /// failover's install goes to them too, members or not.
    pub(crate) owing: Vec<String>,
    /// Per primary slot of the failed member, the up-to-date secondary that takes it.
    pub(crate) heirs: BTreeMap<Slot, ServerId>,
    /// Primary slots of the failed member with no up-to-date copy, by their first secondary.
    pub(crate) behind: BTreeMap<String, Vec<Slot>>,
    /// Copies of the failed member's slots that former secondaries kept, by holder.
    pub(crate) retired: BTreeMap<String, BTreeSet<Slot>>,
    /// Slots whose heir is a background copy while a synchronous secondary of theirs did not
    /// answer, by that secondary.
    pub(crate) unsure: BTreeMap<String, Vec<Slot>>,
}

/// Plans the failover of `server` out of `before`, whose last change made `moves`, from what
/// the other servers answered (`None`: no answer).
pub(crate) fn plan_failover(
    before: &Config,
    moves: &[Move],
    server: &str,
    answers: &[(String, Option<ServerStatus>)],
) -> FailoverPlan {
    let mut plan = FailoverPlan::default();
    let mut carried: BTreeMap<String, BTreeSet<Slot>> = BTreeMap::new();
    let mut unready: BTreeMap<&str, BTreeSet<Slot>> = BTreeMap::new();
    for (address, status) in answers {
        let Some(status) = status else { continue };
        if !status.owed.is_empty() || status.epoch < before.epoch() {
            plan.owing.push(address.clone());
        }
        if let Some(owed) = status.owed.get(server) {
            carried.entry(address.clone()).or_default().extend(owed.iter().copied());
        }
        if status.epoch < before.epoch() {
            // Not switched to the last change yet: it still holds what it has to send the
            // failed member, and will owe it once brought up to date.
            for m in moves.iter().filter(|m| m.from == *address && m.to == server) {
                carried.entry(address.clone()).or_default().insert(m.slot);
            }
        }
        // Copies are judged only at the epoch being failed over.
        if status.epoch == before.epoch() {
            if let Some(kept) = status.retired.get(server) {
                plan.retired.entry(address.clone()).or_default().extend(kept.iter().copied());
            }
            unready.insert(address.as_str(), status.unready.iter().copied().collect());
        }
    }
    plan.carried = carried.into_iter().map(|(from, slots)| (from, slots.into_iter().collect())).collect();
    plan.heirs = heirs(before, server, |address, slot| {
        unready.get(address).is_some_and(|unready| !unready.contains(&slot))
    });
    plan.unsure = unsure_heirs(before, &plan.heirs, answers);
    // Slots with no up-to-date secondary (the last change gave them new ones, still catching
    // up): a former secondary that kept its copy brings the first one up to date.
    let carried_set: BTreeSet<Slot> = plan.carried.values().flatten().copied().collect();
    for (slot, owner) in (0..).zip(before.slots()) {
        if *owner != before.id_of(server) || plan.heirs.contains_key(&slot) || carried_set.contains(&slot) {
            continue;
        }
        if let Some(first) = secondaries(before, slot).into_iter().next() {
            plan.behind.entry(first.to_owned()).or_default().push(slot);
        }
    }
    plan
}

/// Of `heirs`, the slots given to a background secondary in eventual mode while one of the
/// synchronous secondaries, which hold every acknowledged write, gave no answer, by that
/// secondary. (A synchronous secondary that answered but is catching up had the writes sent
/// synchronously to the next secondaries too, the heir among them.)
fn unsure_heirs(
    before: &Config,
    heirs: &BTreeMap<Slot, ServerId>,
    answers: &[(String, Option<ServerStatus>)],
) -> BTreeMap<String, Vec<Slot>> {
    let replication = before.replication();
    let mut unsure: BTreeMap<String, Vec<Slot>> = BTreeMap::new();
    if replication.consistency != Consistency::Eventual || replication.sync_replicas == 0 {
        return unsure;
    }
    let silent = |address: &str| answers.iter().any(|(a, status)| a == address && status.is_none());
    for (&slot, &heir) in heirs {
        let synchronous: Vec<&str> =
            secondaries(before, slot).into_iter().take(replication.sync_replicas).collect();
        if synchronous.iter().any(|address| before.id_of(address) == Some(heir)) {
            continue;
        }
        if let Some(quiet) = synchronous.into_iter().find(|address| silent(address)) {
            unsure.entry(quiet.to_owned()).or_default().push(slot);
        }
    }
    unsure
}

#[cfg(test)]
mod tests {
    use crate::roles::{Role, role};
    use crate::{Replication, SLOTS};
    use proptest::prelude::*;

    use super::*;

    fn cluster(n: usize) -> Config {
        let replication = Replication { factor: 3, ..Replication::default() };
        (0..n).fold(Config::new().with_replication(replication).unwrap(), |c, i| {
            c.join(&format!("10.0.0.{i}:1")).unwrap()
        })
    }

    fn up_to_date(config: &Config, but: &str) -> Vec<(String, Option<ServerStatus>)> {
        config
            .members()
            .filter(|(_, a)| *a != but)
            .map(|(_, a)| {
                (a.to_owned(), Some(ServerStatus { epoch: config.epoch(), ..ServerStatus::default() }))
            })
            .collect()
    }

    fn primaries(config: &Config, server: &str) -> Vec<Slot> {
        (0..SLOTS as Slot).filter(|&s| role(config, server, s) == Role::Primary).collect()
    }

    #[test]
    fn with_every_copy_up_to_date_each_slot_goes_to_its_first_secondary() {
        let config = cluster(4);
        let plan = plan_failover(&config, &[], "10.0.0.1:1", &up_to_date(&config, "10.0.0.1:1"));
        assert_eq!(plan.heirs.len(), primaries(&config, "10.0.0.1:1").len());
        for (&slot, &heir) in &plan.heirs {
            assert_eq!(Some(heir), config.replicas_of_slot(slot).get(1).copied());
        }
        assert!(plan.carried.is_empty() && plan.behind.is_empty() && plan.owing.is_empty());
    }

    #[test]
    fn a_failover_s_promotions_are_no_hand_offs() {
        let before = cluster(4);
        let failed = "10.0.0.1:1";
        let heirs: BTreeMap<Slot, ServerId> = primaries(&before, failed)
            .into_iter()
            .map(|slot| (slot, before.id_of(secondaries(&before, slot)[0]).unwrap()))
            .collect();
        let (after, promoted) = before.fail_to(failed, &heirs).unwrap();
        assert!(!promoted.is_empty());
        assert!(moves_between(&before, &after).iter().any(|m| m.from == failed), "the map moved them");
        assert!(handoffs_between(&before, &after, &promoted).iter().all(|m| m.from != failed));
        // The later failover of an heir must not wait for the failed member to send them, even
        // if that member, cut off, has not switched yet.
        let heir = before.address(*heirs.values().next().unwrap()).unwrap();
        let mut answers = up_to_date(&after, heir);
        answers.push((
            failed.to_owned(),
            Some(ServerStatus { epoch: before.epoch(), ..ServerStatus::default() }),
        ));
        let plan = plan_failover(&after, &handoffs_between(&before, &after, &promoted), heir, &answers);
        assert!(!plan.carried.contains_key(failed), "{:?}", plan.carried);
        let counted_as_moves = plan_failover(&after, &moves_between(&before, &after), heir, &answers);
        assert!(counted_as_moves.carried.contains_key(failed), "what the distinction is for");
        let joined = after.join("10.0.0.9:1").unwrap();
        assert_eq!(handoffs_between(&after, &joined, &[]), moves_between(&after, &joined));
    }

    #[test]
    fn slots_owed_to_the_failed_member_are_carried_from_their_sender() {
        let before = cluster(3);
        let after = before.join("10.0.0.9:1").unwrap();
        let moves = moves_between(&before, &after);
        let joiner = "10.0.0.9:1";
        let mut answers = up_to_date(&after, joiner);
        // 10.0.0.0 switched and still owes its moves; 10.0.0.1 has not switched yet.
        let owed: Vec<Slot> = moves.iter().filter(|m| m.from == "10.0.0.0:1").map(|m| m.slot).collect();
        answers[0].1.as_mut().unwrap().owed = BTreeMap::from([(joiner.to_owned(), owed.clone())]);
        answers[1].1.as_mut().unwrap().epoch = before.epoch();
        let plan = plan_failover(&after, &moves, joiner, &answers);
        assert_eq!(plan.carried["10.0.0.0:1"], owed);
        let from_behind: Vec<Slot> =
            moves.iter().filter(|m| m.from == "10.0.0.1:1").map(|m| m.slot).collect();
        assert_eq!(plan.carried["10.0.0.1:1"], from_behind);
        assert_eq!(plan.owing, vec!["10.0.0.0:1".to_owned(), "10.0.0.1:1".to_owned()]);
        for slot in plan.carried.values().flatten() {
            assert!(!plan.behind.values().flatten().any(|s| s == slot), "a carried slot is not behind");
        }
    }

    #[test]
    fn copies_still_catching_up_are_passed_over_and_only_answers_at_the_epoch_count() {
        let config = cluster(5);
        let failed = "10.0.0.2:1";
        let owned = primaries(&config, failed);
        let mut answers = up_to_date(&config, failed);
        for (address, status) in &mut answers {
            let status = status.as_mut().unwrap();
            if address == "10.0.0.3:1" {
                status.unready = owned.clone();
            }
            if address == "10.0.0.4:1" {
                status.epoch -= 1;
                status.retired = BTreeMap::from([(failed.to_owned(), owned.clone())]);
            }
        }
        let plan = plan_failover(&config, &[], failed, &answers);
        assert!(plan.heirs.is_empty(), "no up-to-date copy answered at the epoch");
        assert!(plan.retired.is_empty(), "copies reported at another epoch do not count");
        assert_eq!(plan.behind["10.0.0.3:1"], owned);
        answers[3].1.as_mut().unwrap().epoch += 1;
        let plan = plan_failover(&config, &[], failed, &answers);
        assert!(plan.heirs.values().all(|&heir| Some(heir) == config.id_of("10.0.0.4:1")));
        assert_eq!(plan.heirs.len(), owned.len());
        assert_eq!(plan.retired["10.0.0.4:1"].len(), owned.len());
    }

    #[test]
    fn a_background_heir_is_unsure_while_a_synchronous_secondary_is_silent() {
        let replication = Replication {
            factor: 3,
            consistency: Consistency::Eventual,
            sync_replicas: 1,
            ..Replication::default()
        };
        let config = (0..4).fold(Config::new().with_replication(replication).unwrap(), |c, i| {
            c.join(&format!("10.0.0.{i}:1")).unwrap()
        });
        let failed = "10.0.0.1:1";
        let owned = primaries(&config, failed);
        let slot = owned[0];
        let synchronous = secondaries(&config, slot)[0];
        let mut answers = up_to_date(&config, failed);
        let plan = plan_failover(&config, &[], failed, &answers);
        assert!(plan.unsure.is_empty(), "every synchronous secondary answered");
        // Catching up, it answered: the writes went synchronously to the next secondary too.
        let at = answers.iter().position(|(a, _)| a == synchronous).unwrap();
        answers[at].1.as_mut().unwrap().unready = owned.clone();
        let plan = plan_failover(&config, &[], failed, &answers);
        assert!(plan.unsure.is_empty() && plan.heirs.contains_key(&slot));
        // Silent, it may hold writes no other copy has.
        answers[at].1 = None;
        let plan = plan_failover(&config, &[], failed, &answers);
        assert!(plan.unsure[synchronous].contains(&slot));
        let strong = Replication { factor: 3, ..Replication::default() };
        let config = config.with_replication(strong).unwrap();
        assert!(
            plan_failover(&config, &[], failed, &answers).unsure.is_empty(),
            "strong mode has no background copies"
        );
    }

    proptest! {
        /// Every primary slot of the failed member is carried, or has an up-to-date heir among
        /// its secondaries, or is behind at its first secondary: none is forgotten.
        #[test]
        fn every_slot_of_the_failed_member_is_accounted_for(
            n in 2usize..7,
            failed in 0usize..7,
            unready_mask in proptest::collection::vec(any::<u64>(), 7),
            silent in proptest::collection::vec(any::<bool>(), 7),
        ) {
            let config = cluster(n);
            let failed = format!("10.0.0.{}:1", failed % n);
            let answers: Vec<(String, Option<ServerStatus>)> = config
                .members()
                .filter(|(_, a)| *a != failed)
                .enumerate()
                .map(|(i, (_, a))| {
                    let unready = (0..SLOTS as Slot).filter(|s| unready_mask[i] >> (s % 64) & 1 == 1).collect();
                    let status = ServerStatus { epoch: config.epoch(), unready, ..ServerStatus::default() };
                    (a.to_owned(), (!silent[i]).then_some(status))
                })
                .collect();
            let plan = plan_failover(&config, &[], &failed, &answers);
            let behind: BTreeMap<Slot, &str> =
                plan.behind.iter().flat_map(|(to, slots)| slots.iter().map(move |&s| (s, to.as_str()))).collect();
            for slot in primaries(&config, &failed) {
                let secondaries = secondaries(&config, slot);
                match (plan.heirs.get(&slot), behind.get(&slot)) {
                    (Some(heir), None) => {
                        let heir = config.address(*heir).unwrap();
                        prop_assert!(secondaries.contains(&heir));
                        let (_, status) = answers.iter().find(|(a, _)| a == heir).unwrap();
                        let status = status.as_ref().unwrap();
                        prop_assert!(!status.unready.contains(&slot), "the heir's copy is up to date");
                    }
                    (None, Some(first)) => prop_assert_eq!(Some(first), secondaries.first()),
                    other => prop_assert!(false, "slot {} is {:?}", slot, other),
                }
            }
        }
    }
}
