//! Reading a slot's data for a catch-up ([`crate::digest`]): a copy's digests (at a secondary),
//! the buckets that differ from a secondary's digest (at its primary), and a copy's keys, for
//! deleting the ones left over. Each reads the engine a part at a time, in slot and key order.
//!
//! Invariant: the entries of a slot are fed to the digest in key order, as every engine's
//! `export_slots` gives them, so two copies with the same contents have the same digest.

use std::collections::{BTreeMap, BTreeSet};

use crate::digest::{self, Entry, SlotDigest};
use kv_core::Storage;
use kv_shard::{Slot, slot_of};

use super::batches::SlotReader;

/// Every entry of `slots`, hashed, by slot (an empty slot has none).
async fn entries(storage: &dyn Storage, slots: &[Slot]) -> kv_core::Result<BTreeMap<Slot, Vec<Entry>>> {
    let mut by_slot: BTreeMap<Slot, Vec<Entry>> = slots.iter().map(|&slot| (slot, Vec::new())).collect();
    let mut reader = SlotReader::new(storage, slots);
    while let Some((part, _)) = reader.next().await? {
        for (key, value) in part {
            by_slot.entry(slot_of(&key)).or_default().push(Entry::new(&key, &value));
        }
    }
    Ok(by_slot)
}

/// The digests of this server's copies of `slots`.
pub(crate) async fn digests(storage: &dyn Storage, slots: &[Slot]) -> kv_core::Result<Vec<SlotDigest>> {
    let by_slot = entries(storage, slots).await?;
    Ok(by_slot.iter().map(|(&slot, entries)| digest::digest(slot, entries)).collect())
}

/// Of each slot of `theirs` (a secondary's digests), the buckets whose sums differ from this
/// server's data.
pub(crate) async fn differing(
    storage: &dyn Storage,
    theirs: &[SlotDigest],
) -> kv_core::Result<BTreeMap<Slot, BTreeSet<u32>>> {
    let slots: Vec<Slot> = theirs.iter().map(|d| d.slot).collect();
    let ours = entries(storage, &slots).await?;
    Ok(theirs
        .iter()
        .map(|d| (d.slot, digest::differing(d, ours.get(&d.slot).map_or(&[][..], Vec::as_slice))))
        .collect())
}

/// The keys this server holds of `slot`.
pub(crate) async fn slot_keys(storage: &dyn Storage, slot: Slot) -> kv_core::Result<Vec<String>> {
    let mut keys = Vec::new();
    let mut reader = SlotReader::new(storage, &[slot]);
    while let Some((part, _)) = reader.next().await? {
        keys.extend(part.into_iter().map(|(key, _)| key));
    }
    Ok(keys)
}
