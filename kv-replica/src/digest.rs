//! Digests of a copy of a slot, so that a secondary catching up is sent only the keys that
//! differ from its primary's (see the crate's docs, "Catching up").
//!
//! A copy's keys are spread over `B` buckets (a power of two, [`bucket_count`]) by a hash of the
//! key alone, and each bucket is summed by SHA-256 over its keys' hashes and values, in key
//! order. Two copies whose sums of a bucket are equal hold the same keys with the same values in
//! it. Both sides read a slot in key order (the engines' `export_slots`), so the sums depend on
//! the contents only.
//!
//! Invariants: a key's bucket depends on the key and `B` only; a [`SlotDigest`] has exactly `B`
//! sums, `B` a power of two in `1..=MAX_BUCKETS` (checked where one comes from the wire).

use std::collections::BTreeSet;

use kv_shard::Slot;
use sha2::{Digest as _, Sha256};

/// Most buckets a slot's digest has.
pub const MAX_BUCKETS: u32 = 1024;

/// About how many bytes of keys and values a bucket holds: larger buckets send more per
/// difference, smaller ones make a longer digest (16 bytes a bucket: about 1.6% of the data).
pub const BUCKET_BYTES: usize = 1024;

/// Bytes of one bucket's sum (the first half of its SHA-256).
pub const SUM_BYTES: usize = 16;

/// One bucket's sum.
pub type Sum = [u8; SUM_BYTES];

/// A copy's digest of one slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotDigest {
    /// The slot.
    pub slot: Slot,
    /// How many buckets its keys are spread over.
    pub buckets: u32,
    /// Each bucket's sum, by bucket.
    pub sums: Vec<Sum>,
}

impl SlotDigest {
    /// Whether it is well formed: `buckets` a power of two up to [`MAX_BUCKETS`], one sum each.
    pub fn is_well_formed(&self) -> bool {
        self.buckets.is_power_of_two()
            && self.buckets <= MAX_BUCKETS
            && self.sums.len() == self.buckets as usize
    }

    /// Its size on the wire, about.
    pub fn bytes(&self) -> usize {
        self.sums.len() * SUM_BYTES + 8
    }
}

/// What a snapshot of a slot sent: every key of the buckets `sent` (of `buckets`); the other
/// buckets' sums were equal at the secondary, and it keeps them as they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotScope {
    /// The slot.
    pub slot: Slot,
    /// How many buckets its keys were spread over.
    pub buckets: u32,
    /// The buckets sent whole, sorted.
    pub sent: Vec<u32>,
}

impl SnapshotScope {
    /// A snapshot of every key of `slot`.
    pub fn whole(slot: Slot) -> Self {
        SnapshotScope { slot, buckets: 1, sent: vec![0] }
    }

    /// Whether it is well formed: `buckets` as in a digest, each bucket sent below it.
    pub fn is_well_formed(&self) -> bool {
        self.buckets.is_power_of_two()
            && self.buckets <= MAX_BUCKETS
            && self.sent.iter().all(|&bucket| bucket < self.buckets)
    }

    /// Whether `key`'s bucket was sent whole.
    pub fn covers(&self, key: &str) -> bool {
        self.sent.binary_search(&bucket_of(&key_hash(key), self.buckets)).is_ok()
    }
}

/// How many buckets a copy holding `bytes` bytes of keys and values is digested in.
pub fn bucket_count(bytes: usize) -> u32 {
    let wanted = bytes.div_ceil(BUCKET_BYTES).max(1);
    u32::try_from(wanted).unwrap_or(u32::MAX).min(MAX_BUCKETS).next_power_of_two()
}

/// The hash of a key that picks its bucket.
pub fn key_hash(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// The bucket of the key whose hash is `hash`, of `buckets` (a power of two).
pub fn bucket_of(hash: &[u8; 32], buckets: u32) -> u32 {
    let low = u32::from_le_bytes([hash[0], hash[1], hash[2], hash[3]]);
    low & (buckets.max(1) - 1)
}

/// One key and value, hashed: what a bucket's sum is made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// The low bits of the key's hash, which pick its bucket.
    key: u32,
    /// Bytes of the key and value.
    bytes: u32,
    entry: [u8; 32],
}

impl Entry {
    /// `key` holding `value`.
    pub fn new(key: &str, value: &str) -> Self {
        let hash = key_hash(key);
        let mut hasher = Sha256::new();
        hasher.update(hash);
        hasher.update(value.as_bytes());
        let bytes = u32::try_from(key.len() + value.len()).unwrap_or(u32::MAX);
        Entry { key: bucket_of(&hash, MAX_BUCKETS), bytes, entry: hasher.finalize().into() }
    }

    /// Its bucket, of `buckets`.
    pub fn bucket(&self, buckets: u32) -> u32 {
        // `buckets` divides MAX_BUCKETS: the low bits of the key's bucket among the most.
        self.key & (buckets.clamp(1, MAX_BUCKETS) - 1)
    }
}

/// The sums of `entries` (a slot's keys, in key order) over `buckets` buckets.
pub fn sums(entries: &[Entry], buckets: u32) -> Vec<Sum> {
    let mut hashers: Vec<Sha256> = (0..buckets).map(|_| Sha256::new()).collect();
    for entry in entries {
        hashers[entry.bucket(buckets) as usize].update(entry.entry);
    }
    hashers
        .into_iter()
        .map(|hasher| {
            let full: [u8; 32] = hasher.finalize().into();
            let mut sum = [0; SUM_BYTES];
            sum.copy_from_slice(&full[..SUM_BYTES]);
            sum
        })
        .collect()
}

/// A copy's digest of `slot`, from its `entries` in key order.
pub fn digest(slot: Slot, entries: &[Entry]) -> SlotDigest {
    let buckets = bucket_count(entries.iter().map(|e| e.bytes as usize).sum());
    SlotDigest { slot, buckets, sums: sums(entries, buckets) }
}

/// The buckets of `theirs` whose sums differ from those of `ours` (the same slot's entries
/// here, in key order), sorted.
pub fn differing(theirs: &SlotDigest, ours: &[Entry]) -> BTreeSet<u32> {
    let mine = sums(ours, theirs.buckets);
    (0..theirs.buckets).filter(|&b| mine[b as usize] != theirs.sums[b as usize]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(pairs: &[(&str, &str)]) -> Vec<Entry> {
        pairs.iter().map(|(k, v)| Entry::new(k, v)).collect()
    }

    #[test]
    fn bucket_counts_grow_with_the_data_up_to_the_most() {
        assert_eq!(bucket_count(0), 1);
        assert_eq!(bucket_count(1024), 1);
        assert_eq!(bucket_count(1025), 2);
        assert_eq!(bucket_count(100 * 1024), 128);
        assert_eq!(bucket_count(1 << 30), MAX_BUCKETS);
    }

    #[test]
    fn equal_copies_have_equal_digests_and_any_difference_shows() {
        let ours: Vec<(String, String)> =
            (0..200).map(|i| (format!("k{i:03}"), format!("v{i:0100}"))).collect();
        let pairs: Vec<(&str, &str)> = ours.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let theirs = digest(7, &entries(&pairs));
        assert_eq!(theirs.buckets, 32, "200 entries of 104 bytes");
        assert!(theirs.is_well_formed());
        assert!(differing(&theirs, &entries(&pairs)).is_empty());

        // One value changed, one key missing, one key extra: each shows in its own bucket.
        let mut changed = pairs.clone();
        changed[10].1 = "other";
        let mut missing = pairs.clone();
        missing.remove(20);
        let mut extra = pairs.clone();
        extra.push(("zzz", "new"));
        for (ours, key) in [(changed, "k010"), (missing, "k020"), (extra, "zzz")] {
            let diff = differing(&theirs, &entries(&ours));
            let bucket = bucket_of(&key_hash(key), theirs.buckets);
            assert_eq!(diff, BTreeSet::from([bucket]), "{key}");
            let scope = SnapshotScope { slot: 7, buckets: theirs.buckets, sent: diff.into_iter().collect() };
            assert!(scope.covers(key) && scope.is_well_formed());
        }
    }

    #[test]
    fn a_key_and_value_cannot_pass_for_another_split() {
        assert_ne!(digest(0, &entries(&[("ab", "c")])), digest(0, &entries(&[("a", "bc")])));
    }

    #[test]
    fn an_empty_copy_differs_from_any_data_and_equals_no_data() {
        let empty = digest(3, &[]);
        assert_eq!(empty.buckets, 1);
        assert!(differing(&empty, &[]).is_empty());
        assert_eq!(differing(&empty, &entries(&[("k", "v")])), BTreeSet::from([0]));
        assert!(SnapshotScope::whole(3).covers("anything"));
    }

    #[test]
    fn malformed_digests_and_scopes_are_told() {
        let bad = [
            SlotDigest { slot: 1, buckets: 3, sums: vec![[0; SUM_BYTES]; 3] },
            SlotDigest { slot: 1, buckets: 4, sums: vec![[0; SUM_BYTES]; 3] },
            SlotDigest { slot: 1, buckets: 2048, sums: vec![[0; SUM_BYTES]; 2048] },
            SlotDigest { slot: 1, buckets: 0, sums: Vec::new() },
        ];
        assert!(bad.iter().all(|d| !d.is_well_formed()));
        assert!(!SnapshotScope { slot: 1, buckets: 4, sent: vec![4] }.is_well_formed());
        assert!(!SnapshotScope { slot: 1, buckets: 0, sent: vec![] }.is_well_formed());
    }
}
