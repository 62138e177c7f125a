//! Cutting a hand-off into transfer batches, as a pure function of the data it moves (step 3 of
//! the protocol in the crate docs).
//!
//! Invariants: every slot of `slots` is completed by exactly one batch, the one that carries its
//! last key (empty slots by the first); a slot's keys never span a batch after the one completing
//! it; the exactly-once records travel in the first batch; a batch holds about
//! [`BATCH_BYTES`] of keys and values, and at least one key. A hand-off read from the engine a
//! part at a time cuts each part: keys of a slot not in `slots` (one whose keys go on in the
//! next part) are sent and not completed.

use std::collections::{BTreeMap, BTreeSet};

use kv_core::SessionRecord;

use crate::messages::TransferBatch;
use crate::{Slot, slot_of};

/// Largest transfer batch, in bytes of keys and values (a batch holds at least one key).
pub const BATCH_BYTES: usize = 1 << 20;

/// The batches that move `slots` (`entries`: their keys and values, `sessions`: their
/// exactly-once records) from `from` at a move of `epoch`, in the order they are sent.
pub fn transfer_batches(
    from: &str,
    epoch: u64,
    slots: &[Slot],
    entries: Vec<(String, String)>,
    sessions: Vec<SessionRecord>,
) -> Vec<TransferBatch> {
    let completes: BTreeSet<Slot> = slots.iter().copied().collect();
    let mut by_slot: BTreeMap<Slot, Vec<(String, String)>> = BTreeMap::new();
    for (key, value) in entries {
        by_slot.entry(slot_of(&key)).or_default().push((key, value));
    }
    let empty = || TransferBatch { epoch, from: from.to_owned(), ..TransferBatch::default() };
    // The first batch carries the exactly-once records, and completes the empty slots.
    let mut batch = TransferBatch {
        sessions,
        complete: slots.iter().filter(|s| !by_slot.contains_key(s)).copied().collect(),
        ..empty()
    };
    let mut batches = Vec::new();
    let mut bytes = 0;
    for (slot, entries) in by_slot {
        for (key, value) in entries {
            if bytes > 0 && bytes + key.len() + value.len() > BATCH_BYTES {
                batches.push(std::mem::replace(&mut batch, empty()));
                bytes = 0;
            }
            bytes += key.len() + value.len();
            batch.entries.push((key, value));
        }
        if completes.contains(&slot) {
            batch.complete.push(slot);
        }
    }
    batches.push(batch);
    batches
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::SLOTS;

    proptest! {
        /// Every key goes once, every slot is completed once, by the batch with its last key,
        /// and no batch but a single-key one goes over the size.
        #[test]
        fn batches_carry_everything_once_and_complete_each_slot_last(
            keys in proptest::collection::btree_map("[a-z]{1,12}", 0usize..300_000, 0..40),
            empty_slots in proptest::collection::btree_set(0u16..SLOTS as u16, 0..5),
        ) {
            let entries: Vec<(String, String)> =
                keys.iter().map(|(k, &len)| (k.clone(), "x".repeat(len))).collect();
            let mut slots: Vec<Slot> = entries.iter().map(|(k, _)| slot_of(k)).collect();
            slots.extend(empty_slots.iter().copied());
            slots.sort_unstable();
            slots.dedup();
            let records = vec![SessionRecord { client: 1, floor: 1, answers: Vec::new() }];
            let batches = transfer_batches("a:1", 3, &slots, entries.clone(), records.clone());
            prop_assert_eq!(&batches[0].sessions, &records);
            prop_assert!(batches[1..].iter().all(|b| b.sessions.is_empty()));
            let mut sent = Vec::new();
            let mut completed = BTreeMap::new();
            for (i, batch) in batches.iter().enumerate() {
                prop_assert_eq!(batch.epoch, 3);
                let bytes: usize = batch.entries.iter().map(|(k, v)| k.len() + v.len()).sum();
                prop_assert!(bytes <= BATCH_BYTES || batch.entries.len() == 1, "batch {} holds {} bytes", i, bytes);
                for (key, _) in &batch.entries {
                    prop_assert!(!completed.contains_key(&slot_of(key)), "a key after its slot was completed");
                }
                sent.extend(batch.entries.iter().cloned());
                for &slot in &batch.complete {
                    prop_assert!(completed.insert(slot, i).is_none(), "slot {} completed twice", slot);
                }
            }
            let mut expected = entries;
            expected.sort_by_key(|(k, _)| (slot_of(k), k.clone()));
            sent.sort_by_key(|(k, _)| (slot_of(k), k.clone()));
            prop_assert_eq!(sent, expected);
            prop_assert_eq!(completed.keys().copied().collect::<Vec<_>>(), slots);
        }
    }

    /// A part of a hand-off whose last slot goes on in the next part sends that slot's keys
    /// without completing it.
    #[test]
    fn a_slot_that_goes_on_in_the_next_part_is_not_completed() {
        let entries: Vec<(String, String)> = (0..50).map(|i| (format!("k{i}"), "v".to_owned())).collect();
        let mut slots: Vec<Slot> = entries.iter().map(|(k, _)| slot_of(k)).collect();
        slots.sort_unstable();
        slots.dedup();
        let open = slots.pop().expect("a slot");
        let batches = transfer_batches("a:1", 3, &slots, entries.clone(), Vec::new());
        let sent: usize = batches.iter().map(|b| b.entries.len()).sum();
        assert_eq!(sent, entries.len(), "every key is sent, the open slot's too");
        let completed: Vec<Slot> = batches.iter().flat_map(|b| b.complete.iter().copied()).collect();
        assert_eq!(completed, slots, "the open slot {open} is not completed");
    }
}
