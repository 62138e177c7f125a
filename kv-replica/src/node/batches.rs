//! Cutting what a primary sends into batches of a bounded size: catch-up snapshots, as pure
//! functions of the keys they carry.

use std::collections::BTreeMap;

use crate::ReplicatedWrite;
use crate::messages::SlotWrite;
use kv_core::SessionRecord;
use kv_shard::{Slot, slot_of};

/// Largest snapshot or flush batch, in bytes of keys and values.
pub(crate) const BATCH_BYTES: usize = 1 << 20;

/// One write of `slot` as a primary sends it.
pub(crate) fn slot_write(
    slot: Slot,
    seq: u64,
    key: &str,
    value: Option<String>,
    session: Option<SessionRecord>,
) -> SlotWrite {
    SlotWrite {
        slot,
        write: ReplicatedWrite { seq, key: key.to_owned(), value, session },
        aborted: Vec::new(),
    }
}

/// A snapshot of `slots` (`entries`: their keys and values), cut into batches of about
/// [`BATCH_BYTES`], each with the slots it completes; every slot is completed once, empty ones
/// in the first batch.
pub(crate) fn snapshot_batches(
    entries: Vec<(String, String)>,
    slots: &[Slot],
) -> Vec<(Vec<SlotWrite>, Vec<Slot>)> {
    let mut by_slot: BTreeMap<Slot, Vec<(String, String)>> = slots.iter().map(|&s| (s, Vec::new())).collect();
    for (key, value) in entries {
        by_slot.entry(slot_of(&key)).or_default().push((key, value));
    }
    let mut batches = Vec::new();
    let mut batch = Vec::new();
    let mut complete = Vec::new();
    let mut bytes = 0;
    for (slot, writes) in by_slot {
        for (key, value) in writes {
            let size = key.len() + value.len();
            if bytes > 0 && bytes + size > BATCH_BYTES {
                batches.push((std::mem::take(&mut batch), std::mem::take(&mut complete)));
                bytes = 0;
            }
            bytes += size;
            batch.push(slot_write(slot, 0, &key, Some(value), None));
        }
        complete.push(slot);
    }
    batches.push((batch, complete));
    batches
}
