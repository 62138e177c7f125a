//! Cutting what a primary sends into batches of a bounded size: catch-up snapshots, as pure
//! functions of the keys they carry.

use std::collections::{BTreeMap, BTreeSet};

use crate::ReplicatedWrite;
use crate::messages::SlotWrite;
use kv_core::{ExportCursor, SessionRecord, Storage};
use kv_shard::{Slot, slot_of};

/// Largest snapshot or flush batch, in bytes of keys and values.
pub(crate) const BATCH_BYTES: usize = 1 << 20;

/// Bytes of keys and values read from the engine at a time, when slots are sent whole.
pub(crate) const READ_BYTES: usize = 4 * BATCH_BYTES;

/// Reads the keys of some slots from the engine a part of about [`READ_BYTES`] at a time, in
/// slot and key order, so that what is sent never has to fit in memory whole (with a durable
/// engine; the in-memory one gives everything at once).
pub(crate) struct SlotReader<'a> {
    storage: &'a dyn Storage,
    /// The slots, sorted.
    slots: Vec<Slot>,
    /// Where the next part starts.
    after: Option<ExportCursor>,
    /// How many of `slots` the parts read so far finished.
    finished: usize,
    done: bool,
}

impl<'a> SlotReader<'a> {
    /// A reader of `slots` from `storage`.
    pub(crate) fn new(storage: &'a dyn Storage, slots: &[Slot]) -> Self {
        let mut slots = slots.to_vec();
        slots.sort_unstable();
        slots.dedup();
        SlotReader { storage, slots, after: None, finished: 0, done: false }
    }

    /// The next part: its keys and values, and the slots it finishes (all their keys are in
    /// this part or an earlier one; the slot its last key is of goes on in the next part, unless
    /// it is the last); `None` once every part was read.
    pub(crate) async fn next(&mut self) -> kv_core::Result<Option<(Vec<(String, String)>, Vec<Slot>)>> {
        if self.done {
            return Ok(None);
        }
        let (entries, next) =
            self.storage.export_slots(slot_of, &self.slots, self.after.take(), READ_BYTES).await?;
        let end = match &next {
            Some(next) => self.slots.partition_point(|&slot| slot < next.slot),
            None => self.slots.len(),
        };
        let finished = self.slots[self.finished..end].to_vec();
        self.finished = end;
        self.done = next.is_none();
        self.after = next;
        Ok(Some((entries, finished)))
    }
}

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
/// [`BATCH_BYTES`], each with the slots it completes; every slot of `slots` is completed once,
/// empty ones in the first batch. Keys of a slot not in `slots` (one whose keys go on in the next
/// part read from the engine) are sent, and the slot is not completed.
pub(crate) fn snapshot_batches(
    entries: Vec<(String, String)>,
    slots: &[Slot],
) -> Vec<(Vec<SlotWrite>, Vec<Slot>)> {
    let completes: BTreeSet<Slot> = slots.iter().copied().collect();
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
        if completes.contains(&slot) {
            complete.push(slot);
        }
    }
    batches.push((batch, complete));
    batches
}
