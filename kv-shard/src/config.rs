//! Hash slots and numbered configurations that assign them to servers.

use std::collections::BTreeMap;

use xxhash_rust::xxh3::xxh3_64;

use crate::replication::Replication;
use crate::{Error, Result};

/// Number of hash slots. Each member holds `⌊SLOTS / N⌋` or `⌈SLOTS / N⌉` of them.
pub const SLOTS: usize = 4096;

/// A hash slot, `0..SLOTS`.
pub type Slot = u16;

/// The slot of `key`: `xxh3_64(key) mod SLOTS`. Stable: it depends on the key's bytes only.
pub fn slot_of(key: &str) -> Slot {
    // SLOTS fits in a u16, so the remainder does too.
    (xxh3_64(key.as_bytes()) % SLOTS as u64) as Slot
}

/// Whether `addr` is `host:port` written one way only, so that one server cannot join twice
/// under two spellings: a port of decimal digits without a sign or leading zero, in 1..=65535; a
/// host without spaces, in lower case, with an IPv6 address in brackets.
fn is_canonical_address(addr: &str) -> bool {
    let Some((host, port)) = addr.rsplit_once(':') else { return false };
    let port_ok = !port.is_empty()
        && port.bytes().all(|b| b.is_ascii_digit())
        && !port.starts_with('0')
        && port.parse::<u16>().is_ok();
    let host_ok = !host.is_empty()
        && !host.chars().any(|c| c.is_whitespace() || c.is_uppercase())
        && (host.contains(':') == (host.starts_with('[') && host.ends_with(']')));
    port_ok && host_ok
}

/// A member's identity within a configuration history: assigned in join order, never reused,
/// so a server that leaves and joins again is a new member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServerId(pub u64);

/// One slot changing owner between two configurations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotMove {
    /// The slot.
    pub slot: Slot,
    /// Its owner before (none if there was no member).
    pub from: Option<ServerId>,
    /// Its owner after (none if no member is left).
    pub to: Option<ServerId>,
}

/// A numbered assignment of every slot to a member (or to none, when there are no members), and
/// of its replicas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    epoch: u64,
    /// Members by id; ids grow with join order, so iteration is oldest first.
    members: BTreeMap<ServerId, String>,
    slots: Vec<Option<ServerId>>,
    next_id: u64,
    replication: Replication,
}

impl Default for Config {
    fn default() -> Self {
        Self::new()
    }
}

impl Config {
    /// Epoch 0: no members, no slot assigned.
    pub fn new() -> Self {
        Config {
            epoch: 0,
            members: BTreeMap::new(),
            slots: vec![None; SLOTS],
            next_id: 0,
            replication: Replication::default(),
        }
    }

    /// This configuration with other replication settings (checked).
    pub fn with_replication(mut self, replication: Replication) -> Result<Config> {
        replication.validate()?;
        self.replication = replication;
        Ok(self)
    }

    /// The replication settings.
    pub fn replication(&self) -> &Replication {
        &self.replication
    }

    /// The replicas of `slot`, primary first: its owner, then the next members in id order,
    /// wrapping around, `min(factor, members)` in all. Empty when there is no member.
    ///
    /// So every member is primary for about `1/N` of the slots and secondary for about
    /// `(factor − 1)/N`, and a join or leave changes the replicas of few slots.
    pub fn replicas_of_slot(&self, slot: Slot) -> Vec<ServerId> {
        let Some(primary) = self.owner_of_slot(slot) else { return Vec::new() };
        let count = self.replication.factor.min(self.members.len());
        let after = self.members.range(primary..).map(|(id, _)| *id);
        let before = self.members.range(..primary).map(|(id, _)| *id);
        after.chain(before).take(count).collect()
    }

    /// The replicas of `key`'s slot, primary first, with their addresses.
    pub fn replicas(&self, key: &str) -> Vec<(ServerId, &str)> {
        self.replicas_of_slot(slot_of(key))
            .into_iter()
            .filter_map(|id| Some((id, self.address(id)?)))
            .collect()
    }

    /// The configuration's number; it grows by one at every change.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The members, oldest first, with their addresses.
    pub fn members(&self) -> impl Iterator<Item = (ServerId, &str)> {
        self.members.iter().map(|(id, addr)| (*id, addr.as_str()))
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether there is no member.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The member with address `addr`.
    pub fn id_of(&self, addr: &str) -> Option<ServerId> {
        self.members.iter().find(|(_, a)| a.as_str() == addr).map(|(id, _)| *id)
    }

    /// The address of member `id`.
    pub fn address(&self, id: ServerId) -> Option<&str> {
        self.members.get(&id).map(String::as_str)
    }

    /// The owner of every slot, indexed by slot.
    pub fn slots(&self) -> &[Option<ServerId>] {
        &self.slots
    }

    /// The owner of `slot`.
    pub fn owner_of_slot(&self, slot: Slot) -> Option<ServerId> {
        self.slots.get(usize::from(slot)).copied().flatten()
    }

    /// The owner of `key`, with its address.
    pub fn owner(&self, key: &str) -> Option<(ServerId, &str)> {
        let id = self.owner_of_slot(slot_of(key))?;
        Some((id, self.address(id)?))
    }

    /// How many slots each member holds.
    pub fn slot_counts(&self) -> BTreeMap<ServerId, usize> {
        let mut counts: BTreeMap<ServerId, usize> = self.members.keys().map(|id| (*id, 0)).collect();
        for owner in self.slots.iter().flatten() {
            *counts.entry(*owner).or_default() += 1;
        }
        counts
    }

    /// A configuration from its parts (as received over the wire), checked: `slots` has
    /// [`SLOTS`] entries, every owner is a member, and every slot has an owner iff there is a
    /// member. `next_id`, the id the next member will get ([`Config::next_id`]), must be above
    /// every member's.
    pub fn from_parts(
        epoch: u64,
        members: impl IntoIterator<Item = (ServerId, String)>,
        slots: Vec<Option<ServerId>>,
        next_id: u64,
    ) -> Result<Config> {
        let members: BTreeMap<ServerId, String> = members.into_iter().collect();
        let invalid = |reason: String| Err(Error::InvalidConfig(reason));
        if slots.len() != SLOTS {
            return invalid(format!("{} slots, expected {SLOTS}", slots.len()));
        }
        if let Some(owner) = slots.iter().flatten().find(|owner| !members.contains_key(owner)) {
            return invalid(format!("slot owner {} is not a member", owner.0));
        }
        if slots.iter().any(Option::is_none) != members.is_empty() {
            return invalid("slots must be owned exactly when there are members".to_owned());
        }
        if epoch == 0 && !members.is_empty() {
            return invalid("epoch 0 has no member".to_owned());
        }
        if members.keys().next_back().is_some_and(|id| id.0 >= next_id) {
            return invalid(format!("next member id {next_id} is taken"));
        }
        Ok(Config { epoch, members, slots, next_id, replication: Replication::default() })
    }

    /// The id the next member to join will get.
    pub fn next_id(&self) -> u64 {
        self.next_id
    }

    /// The configuration after `addr` joins: the next epoch, with the new member holding
    /// `⌊SLOTS / (N+1)⌋` slots taken from the members holding the most.
    pub fn join(&self, addr: &str) -> Result<Config> {
        if !is_canonical_address(addr) {
            return Err(Error::InvalidAddress(addr.to_owned()));
        }
        if self.id_of(addr).is_some() {
            return Err(Error::AlreadyMember(addr.to_owned()));
        }
        let mut next = self.clone();
        next.epoch += 1;
        let id = ServerId(next.next_id);
        next.next_id += 1;
        next.members.insert(id, addr.to_owned());
        if self.members.is_empty() {
            next.slots = vec![Some(id); SLOTS];
            return Ok(next);
        }
        let mut owned = self.owned_slots();
        let target = SLOTS / next.members.len();
        for _ in 0..target {
            // The member holding the most slots; ties to the oldest.
            let Some((_, donor_slots)) =
                owned.iter_mut().max_by(|(a_id, a), (b_id, b)| a.len().cmp(&b.len()).then(b_id.cmp(a_id)))
            else {
                break;
            };
            let Some(slot) = donor_slots.pop() else { break };
            next.slots[usize::from(slot)] = Some(id);
        }
        Ok(next)
    }

    /// The configuration after member `addr` *failed* (it is gone, and did not hand its slots
    /// off): the next epoch without it, each of its slots given to the slot's first secondary —
    /// the next member in id order, wrapping — which holds a copy of it when the replication
    /// factor is 2 or more. Returns the slots given, with the configuration. The last member
    /// cannot fail over to anyone.
    pub fn fail(&self, addr: &str) -> Result<(Config, Vec<Slot>)> {
        self.fail_to(addr, &BTreeMap::new())
    }

    /// [`Config::fail`], with the slots `heirs` names given to the member it names for them
    /// (another member: one of their secondaries whose copy is up to date, say), and the others
    /// to their first secondary.
    pub fn fail_to(&self, addr: &str, heirs: &BTreeMap<Slot, ServerId>) -> Result<(Config, Vec<Slot>)> {
        let Some(id) = self.id_of(addr) else {
            return Err(Error::NotMember(addr.to_owned()));
        };
        let first = self.members.range(id..).nth(1).or_else(|| self.members.iter().next()).map(|(m, _)| *m);
        let Some(first) = first.filter(|&heir| heir != id) else {
            return Err(Error::InvalidConfig(format!(
                "{addr} is the last member: no one can take its slots"
            )));
        };
        if let Some((slot, heir)) =
            heirs.iter().find(|(_, heir)| **heir == id || !self.members.contains_key(heir))
        {
            return Err(Error::InvalidConfig(format!(
                "slot {slot} cannot go to member {}: it is not a member that stays",
                heir.0
            )));
        }
        let mut next = self.clone();
        next.epoch += 1;
        next.members.remove(&id);
        let mut promoted = Vec::new();
        for (slot, owner) in next.slots.iter_mut().enumerate() {
            if *owner == Some(id) {
                let slot = slot as Slot;
                *owner = Some(heirs.get(&slot).copied().unwrap_or(first));
                promoted.push(slot);
            }
        }
        Ok((next, promoted))
    }

    /// The configuration after `addr` leaves: the next epoch, with each of its slots given to a
    /// member holding the fewest. When the last member leaves, no slot has an owner.
    pub fn leave(&self, addr: &str) -> Result<Config> {
        let Some(id) = self.id_of(addr) else {
            return Err(Error::NotMember(addr.to_owned()));
        };
        let mut next = self.clone();
        next.epoch += 1;
        next.members.remove(&id);
        let mut owned = self.owned_slots();
        let leaving = owned.remove(&id).unwrap_or_default();
        let mut counts: BTreeMap<ServerId, usize> = owned.iter().map(|(m, s)| (*m, s.len())).collect();
        for slot in leaving {
            // The member holding the fewest slots; ties to the oldest.
            let heir =
                counts.iter().min_by(|(a_id, a), (b_id, b)| a.cmp(b).then(a_id.cmp(b_id))).map(|(m, _)| *m);
            if let Some(heir) = heir {
                *counts.entry(heir).or_default() += 1;
            }
            next.slots[usize::from(slot)] = heir;
        }
        Ok(next)
    }

    /// The slots whose owner differs between `self` and `next`, in slot order.
    pub fn moves_to(&self, next: &Config) -> Vec<SlotMove> {
        self.slots
            .iter()
            .zip(&next.slots)
            .enumerate()
            .filter(|(_, (from, to))| from != to)
            .map(|(slot, (from, to))| SlotMove { slot: slot as Slot, from: *from, to: *to })
            .collect()
    }

    /// Each member's slots, ascending.
    fn owned_slots(&self) -> BTreeMap<ServerId, Vec<Slot>> {
        let mut owned: BTreeMap<ServerId, Vec<Slot>> =
            self.members.keys().map(|id| (*id, Vec::new())).collect();
        for (slot, owner) in self.slots.iter().enumerate() {
            if let Some(owner) = owner {
                owned.entry(*owner).or_default().push(slot as Slot);
            }
        }
        owned
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;
    use rand::rngs::SmallRng;
    use rand::{RngExt, SeedableRng};

    use super::*;

    fn server(i: usize) -> String {
        format!("10.0.0.{i}:7000")
    }

    fn with_members(n: usize) -> Config {
        (0..n).fold(Config::new(), |c, i| c.join(&server(i)).unwrap())
    }

    fn random_keys(count: usize, seed: u64) -> Vec<String> {
        let mut rng = SmallRng::seed_from_u64(seed);
        (0..count)
            .map(|_| {
                // Long enough to be distinct: 100,000 draws of short keys would repeat.
                let len = rng.random_range(8..24);
                (0..len).map(|_| char::from(rng.random_range(b'!'..=b'~'))).collect()
            })
            .collect()
    }

    fn owners(config: &Config, keys: &[String]) -> Vec<Option<ServerId>> {
        keys.iter().map(|k| config.owner(k).map(|(id, _)| id)).collect()
    }

    #[test]
    fn slots_are_a_stable_function_of_the_key() {
        // Pinned: changing the hash would move every key of every running cluster.
        assert_eq!(slot_of(""), (xxh3_64(b"") % 4096) as Slot);
        assert_eq!(slot_of("42"), slot_of(&42u32.to_string()));
        let pinned: Vec<Slot> = ["", "a", "42", "user:7"].iter().map(|k| slot_of(k)).collect();
        assert_eq!(pinned, [1218, 3615, 401, 1716], "the slot function changed");
        assert!(random_keys(10_000, 1).iter().all(|k| usize::from(slot_of(k)) < SLOTS));
    }

    fn replicated(n: usize, factor: usize) -> Config {
        let replication = Replication { factor, ..Replication::default() };
        (0..n).fold(Config::new().with_replication(replication).unwrap(), |c, i| c.join(&server(i)).unwrap())
    }

    #[test]
    fn replica_sets_are_distinct_primary_first_and_spread_evenly() {
        for (n, factor) in [(1, 3), (2, 3), (3, 3), (6, 3), (7, 5), (4, 1)] {
            let config = replicated(n, factor);
            let mut held: BTreeMap<ServerId, usize> = BTreeMap::new();
            for slot in 0..SLOTS as Slot {
                let replicas = config.replicas_of_slot(slot);
                assert_eq!(replicas.len(), factor.min(n), "n={n} factor={factor}");
                assert_eq!(replicas[0], config.owner_of_slot(slot).unwrap(), "the primary comes first");
                let distinct: std::collections::BTreeSet<_> = replicas.iter().collect();
                assert_eq!(distinct.len(), replicas.len(), "replicas on distinct servers");
                for id in replicas {
                    *held.entry(id).or_default() += 1;
                }
            }
            // Every member holds about factor/N of the slots: none idles as a pure backup.
            let ideal = (SLOTS * factor.min(n)) as f64 / n as f64;
            for (id, count) in held {
                let ratio = count as f64 / ideal;
                assert!((0.95..=1.05).contains(&ratio), "n={n} factor={factor}: {id:?} holds {count}");
            }
        }
        assert!(Config::new().replicas_of_slot(0).is_empty());
    }

    #[test]
    fn a_join_changes_the_replicas_of_few_slots() {
        let before = replicated(6, 3);
        let after = before.join(&server(6)).unwrap();
        let changed = (0..SLOTS as Slot)
            .filter(|&slot| before.replicas_of_slot(slot) != after.replicas_of_slot(slot))
            .count();
        // The new member's ~1/7 of primaries, plus the slots whose ring neighbourhood it enters.
        assert!(changed < SLOTS / 2, "{changed} slots changed replicas");
        assert_eq!(after.replication().factor, 3, "settings carry over");
    }

    #[test]
    fn a_failed_member_s_slots_go_to_their_first_secondary() {
        let before = replicated(5, 3);
        for failed in 0..5 {
            let addr = server(failed);
            let (after, promoted) = before.fail(&addr).unwrap();
            assert_eq!(after.epoch(), before.epoch() + 1);
            assert_eq!(after.id_of(&addr), None);
            let id = before.id_of(&addr).unwrap();
            assert_eq!(promoted.len(), before.slot_counts()[&id]);
            for slot in 0..SLOTS as Slot {
                let (was, now) = (before.replicas_of_slot(slot), after.replicas_of_slot(slot));
                if promoted.contains(&slot) {
                    assert_eq!(now[0], was[1], "slot {slot}: the first secondary takes over");
                    assert_eq!(now[1], was[2], "slot {slot}: the second secondary stays");
                } else {
                    assert_eq!(now[0], was[0], "slot {slot}: other slots keep their primary");
                }
                assert_eq!(now.len(), 3, "the replica set is refilled");
            }
        }
        // A slot may go to another secondary than its first (one whose copy is up to date).
        let victim = before.id_of(&server(1)).unwrap();
        let slot = (0..SLOTS as Slot).find(|&s| before.owner_of_slot(s) == Some(victim)).unwrap();
        let second = before.replicas_of_slot(slot)[2];
        let (after, promoted) = before.fail_to(&server(1), &BTreeMap::from([(slot, second)])).unwrap();
        assert_eq!(after.owner_of_slot(slot), Some(second));
        assert_eq!(after.replicas_of_slot(slot)[0], second);
        assert_eq!(promoted.len(), before.slot_counts()[&victim], "every slot of the victim is given");
        assert!(before.fail_to(&server(1), &BTreeMap::from([(slot, victim)])).is_err(), "not to itself");
        assert!(before.fail_to(&server(1), &BTreeMap::from([(slot, ServerId(99))])).is_err());
        let (one, _) = replicated(2, 2).fail(&server(0)).unwrap();
        assert!(one.fail(&server(1)).is_err(), "the last member cannot fail over");
        assert!(one.fail("10.9.9.9:1").is_err());
    }

    #[test]
    fn the_first_member_holds_everything_and_the_last_to_leave_leaves_nothing() {
        let empty = Config::new();
        assert_eq!(empty.owner("k"), None);
        let one = empty.join("a:1").unwrap();
        assert_eq!(one.epoch(), 1);
        assert_eq!(one.owner("k"), Some((ServerId(0), "a:1")));
        assert_eq!(one.slot_counts()[&ServerId(0)], SLOTS);
        let none = one.leave("a:1").unwrap();
        assert_eq!(none.epoch(), 2);
        assert!(none.is_empty());
        assert!(none.slots().iter().all(Option::is_none));
        assert_eq!(none.owner("k"), None);
    }

    #[test]
    fn refused_changes_are_clear_errors() {
        let c = with_members(2);
        assert_eq!(c.join(&server(1)), Err(Error::AlreadyMember(server(1))));
        assert_eq!(c.leave("nobody:1"), Err(Error::NotMember("nobody:1".into())));
        for bad in [
            "",
            "host",
            "host:",
            ":7000",
            "host:0",
            "host:70000",
            "host:x",
            "host:+7000",
            "host:07000",
            "Host:7000",
            "::1:7000",
            "a b:7000",
        ] {
            assert_eq!(c.join(bad), Err(Error::InvalidAddress(bad.into())), "{bad:?}");
        }
        assert!(c.join("[::1]:7000").is_ok());
    }

    #[test]
    fn a_config_rebuilt_from_its_parts_is_the_same_and_bad_parts_are_refused() {
        let c = with_members(3).leave(&server(0)).unwrap();
        let members: Vec<_> = c.members().map(|(id, a)| (id, a.to_owned())).collect();
        let rebuilt =
            Config::from_parts(c.epoch(), members.clone(), c.slots().to_vec(), c.next_id()).unwrap();
        assert_eq!(rebuilt, c);
        assert_eq!(rebuilt.join("x:1").unwrap(), c.join("x:1").unwrap());
        assert!(Config::from_parts(1, members.clone(), vec![None; SLOTS], 3).is_err());
        assert!(Config::from_parts(1, members.clone(), vec![Some(ServerId(0)); SLOTS], 3).is_err());
        assert!(Config::from_parts(1, members.clone(), vec![Some(ServerId(1)); 3], 3).is_err());
        assert!(Config::from_parts(1, members, c.slots().to_vec(), 2).is_err(), "next id taken");
        assert_eq!(Config::from_parts(0, [], vec![None; SLOTS], 0).unwrap(), Config::new());
    }

    #[test]
    fn a_member_that_rejoins_is_a_new_member() {
        let c = with_members(3).leave(&server(1)).unwrap().join(&server(1)).unwrap();
        assert_eq!(c.id_of(&server(1)), Some(ServerId(3)));
        assert_eq!(c.epoch(), 5);
    }

    /// With N = 2..16 servers, the most loaded holds at most 1.10 × the mean of 100,000 keys.
    #[test]
    fn keys_spread_evenly() {
        let keys = random_keys(100_000, 7);
        for n in 2..=16 {
            let config = with_members(n);
            let mut load: HashMap<ServerId, usize> = HashMap::new();
            for owner in owners(&config, &keys) {
                *load.entry(owner.unwrap()).or_default() += 1;
            }
            assert_eq!(load.len(), n, "every member holds keys");
            let mean = keys.len() as f64 / n as f64;
            let max = *load.values().max().unwrap() as f64;
            println!("n={n}: most loaded holds {:.3} x the mean", max / mean);
            assert!(max <= 1.10 * mean, "n={n}: max {max} vs mean {mean:.0}");
        }
    }

    /// A join moves at most 1.2 × K/(N+1) keys, all of them to the new server.
    #[test]
    fn a_join_moves_little_and_only_to_the_new_server() {
        let keys = random_keys(100_000, 8);
        for n in 1..=16 {
            let before = with_members(n);
            let after = before.join("new:1").unwrap();
            let new = after.id_of("new:1").unwrap();
            let (a, b) = (owners(&before, &keys), owners(&after, &keys));
            let moved: Vec<_> = a.iter().zip(&b).filter(|(x, y)| x != y).collect();
            assert!(moved.iter().all(|(_, to)| **to == Some(new)), "n={n}: a key moved elsewhere");
            let ideal = keys.len() as f64 / (n + 1) as f64;
            println!("n={n} -> {}: moved {:.3} x the ideal share", n + 1, moved.len() as f64 / ideal);
            assert!(moved.len() as f64 <= 1.2 * ideal, "n={n}: moved {} vs ideal {ideal:.0}", moved.len());
            for m in before.moves_to(&after) {
                assert_eq!(m.to, Some(new));
            }
        }
    }

    /// A leave moves only the leaving server's keys.
    #[test]
    fn a_leave_moves_only_the_leavers_keys() {
        let keys = random_keys(100_000, 9);
        for n in 2..=16 {
            let before = with_members(n);
            for leaver in [0, n / 2, n - 1] {
                let gone = before.id_of(&server(leaver)).unwrap();
                let after = before.leave(&server(leaver)).unwrap();
                for (x, y) in owners(&before, &keys).iter().zip(&owners(&after, &keys)) {
                    if x != y {
                        assert_eq!(*x, Some(gone), "n={n}: a key of a staying member moved");
                    }
                    assert_ne!(*y, Some(gone));
                }
            }
        }
    }

    #[derive(Debug, Clone)]
    enum Change {
        Join(u8),
        Leave(u8),
    }

    proptest! {
        /// Over any membership history: every slot is owned iff there is a member, counts differ
        /// by at most one, the epoch counts the changes, and replaying gives the same result.
        #[test]
        fn any_history_stays_balanced_and_deterministic(
            changes in proptest::collection::vec(
                prop_oneof![(0u8..12).prop_map(Change::Join), (0u8..12).prop_map(Change::Leave)],
                0..40,
            )
        ) {
            let apply = |changes: &[Change]| {
                let mut config = Config::new();
                let mut applied = 0;
                for change in changes {
                    let next = match change {
                        Change::Join(i) => config.join(&server(usize::from(*i))),
                        Change::Leave(i) => config.leave(&server(usize::from(*i))),
                    };
                    if let Ok(next) = next {
                        let moves = config.moves_to(&next);
                        prop_assert!(moves.iter().all(|m| m.from != m.to));
                        config = next;
                        applied += 1;
                    }
                }
                Ok((config, applied))
            };
            let (config, applied) = apply(&changes)?;
            prop_assert_eq!(config.epoch(), applied);
            prop_assert_eq!(config.slots().iter().all(Option::is_some), !config.is_empty());
            let counts = config.slot_counts();
            if let (Some(min), Some(max)) = (counts.values().min(), counts.values().max()) {
                prop_assert!(max - min <= 1, "counts {:?}", counts);
            }
            prop_assert_eq!(apply(&changes)?.0, config);
        }
    }
}
