//! Tests of configurations: placement, balance, and the moves joins and leaves make.

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
    let rebuilt = Config::from_parts(c.epoch(), members.clone(), c.slots().to_vec(), c.next_id()).unwrap();
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
