//! A primary's record of one slot's writes: their numbers, and the strong writes it prepared
//! and then did not apply (see "Strong consistency" in the crate docs).
//!
//! The caller keeps one [`SlotSequence`] per slot behind an async lock, held from numbering a
//! write to knowing whether it was applied, so a slot's writes are prepared one at a time, in
//! the order of their numbers.
//!
//! Invariants:
//! - numbers grow by one per write, never reused, so a secondary can tell a late duplicate
//!   prepare (older than its newest) from a new one;
//! - a write prepared and not applied is *aborted*: it is named to the secondaries with the
//!   next prepare of the same key, and forgotten once a prepare of that key is applied (every
//!   secondary that took the later prepare dropped it).

use std::collections::BTreeMap;

/// The numbering and aborted writes of one slot, at its primary.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SlotSequence {
    /// The number of the last write.
    seq: u64,
    /// Strong mode: writes prepared and then not applied, by key.
    aborted: BTreeMap<String, Vec<u64>>,
}

impl SlotSequence {
    /// Numbers the next write.
    pub fn number(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// The number of the last write.
    pub fn last(&self) -> u64 {
        self.seq
    }

    /// The writes of `key` prepared and not applied, which the next prepare of `key` names.
    pub fn aborted(&self, key: &str) -> Vec<u64> {
        self.aborted.get(key).cloned().unwrap_or_default()
    }

    /// Write `seq` of `key` was prepared and not applied.
    pub fn abort(&mut self, key: String, seq: u64) {
        self.aborted.entry(key).or_default().push(seq);
    }

    /// A prepare of `key`, naming its aborted writes, was taken everywhere and applied: the
    /// aborted writes are dropped at every secondary.
    pub fn applied(&mut self, key: &str) {
        self.aborted.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aborted_writes_are_named_until_a_later_write_of_the_key_applies() {
        let mut slot = SlotSequence::default();
        let first = slot.number();
        slot.abort("k".into(), first);
        let second = slot.number();
        assert!(second > first);
        slot.abort("k".into(), second);
        let other = slot.number();
        slot.abort("other".into(), other);
        assert_eq!(slot.aborted("k"), vec![first, second]);
        let third = slot.number();
        assert_eq!(slot.last(), third);
        slot.applied("k");
        assert!(slot.aborted("k").is_empty());
        assert_eq!(slot.aborted("other"), vec![3]);
    }
}
