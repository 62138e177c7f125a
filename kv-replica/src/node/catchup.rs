//! Reading a slot's data for a catch-up ([`crate::digest`]): its entries hashed (for a copy's
//! digest, or its primary's sums to compare), and a copy's keys, for deleting the ones left
//! over. Each reads the engine a part at a time, in slot and key order.
//!
//! Invariant: the entries of a slot are fed to the digest in key order, as every engine's
//! `export_slots` gives them, so two copies with the same contents have the same digest.

use std::collections::BTreeMap;

use crate::SlotReplica;
use crate::digest::{self, Entry, SlotDigest, SnapshotScope};
use kv_core::{Mutation, Storage};
use kv_shard::{Slot, slot_of};
use tracing::debug;

use super::batches::SlotReader;

/// Every entry of `slots`, hashed, by slot (an empty slot has none).
pub(crate) async fn entries(
    storage: &dyn Storage,
    slots: &[Slot],
) -> kv_core::Result<BTreeMap<Slot, Vec<Entry>>> {
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

/// The keys this server holds of `slot`.
pub(crate) async fn slot_keys(storage: &dyn Storage, slot: Slot) -> kv_core::Result<Vec<String>> {
    let mut keys = Vec::new();
    let mut reader = SlotReader::new(storage, &[slot]);
    while let Some((part, _)) = reader.next().await? {
        keys.extend(part.into_iter().map(|(key, _)| key));
    }
    Ok(keys)
}

/// Deletes the keys of `slot` that `doomed` picks; returns how many there were.
async fn drop_keys(
    storage: &dyn Storage,
    slot: Slot,
    doomed: impl Fn(&str) -> bool,
) -> kv_core::Result<usize> {
    let mut dropped = 0;
    for key in slot_keys(storage, slot).await?.into_iter().filter(|key| doomed(key)) {
        storage.apply(Mutation::delete(key)).await?;
        dropped += 1;
    }
    Ok(dropped)
}

/// Deletes the keys of `slot` that `copy`, catching up, holds from before its catch-up and not
/// as the primary has them ([`SlotReplica::is_caught_up`]): it is taken over, and the rest comes
/// from another copy, or is lost. The caller holds the copy's lock.
pub(crate) async fn drop_left_over(
    storage: &dyn Storage,
    copy: &SlotReplica,
    slot: Slot,
) -> kv_core::Result<()> {
    if matches!(copy.state(), crate::SlotState::Syncing { .. }) {
        drop_keys(storage, slot, |key| !copy.is_caught_up(key)).await?;
    }
    Ok(())
}

/// Deletes the keys of `slot` that `copy` kept from before its catch-up and the primary does not
/// have: those of the buckets its snapshot sent whole (`scope`) that no write and no snapshot
/// entry reached. The caller holds the copy's lock: no write of the slot lands meanwhile.
pub(crate) async fn drop_stale(
    storage: &dyn Storage,
    copy: &SlotReplica,
    slot: Slot,
    scope: &SnapshotScope,
) -> kv_core::Result<()> {
    if scope.sent.is_empty() {
        return Ok(());
    }
    let dropped = drop_keys(storage, slot, |key| copy.is_stale(key, scope)).await?;
    if dropped > 0 {
        debug!(slot, keys = dropped, "dropped keys the primary no longer has");
    }
    Ok(())
}
