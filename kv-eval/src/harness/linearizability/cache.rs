//! The memory of a search: the configurations it has seen, so that it never explores one twice.
//!
//! A configuration is a set of linearized operations (a [`Bitset`] as wide as the history) and a
//! state. Entries are chained by a hash in one arena; the hash of the set is kept up to date in
//! O(1) per step by Zobrist hashing (the XOR of a random word per member). The cache is bounded
//! in bytes: once full, it stops remembering, and the search goes on, still correct but perhaps
//! slower.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, DefaultHasher, Hash, Hasher};

use super::model::State;

/// Bytes one cache may hold before it stops growing.
const CACHE_BYTES: usize = 256 << 20;

/// A set of operation indices, as wide as the history.
pub(super) struct Bitset {
    pub(super) words: Vec<u64>,
}

impl Bitset {
    pub(super) fn new(len: usize) -> Self {
        Bitset { words: vec![0; len.div_ceil(64)] }
    }

    pub(super) fn set(&mut self, i: usize) {
        self.words[i / 64] |= 1 << (i % 64);
    }

    pub(super) fn clear(&mut self, i: usize) {
        self.words[i / 64] &= !(1 << (i % 64));
    }

    pub(super) fn ones(&self) -> impl Iterator<Item = usize> + '_ {
        self.words
            .iter()
            .enumerate()
            .flat_map(|(w, &word)| (0..64).filter(move |b| word & (1 << b) != 0).map(move |b| w * 64 + b))
    }
}

/// The seen (linearized set, state) pairs, chained by hash in one arena.
#[derive(Default)]
pub(super) struct Cache {
    heads: HashMap<u64, u32, BuildHasherDefault<PremixedHasher>>,
    entries: Vec<CacheEntry>,
    bytes: usize,
}

struct CacheEntry {
    bits: Box<[u64]>,
    state: State,
    next: u32,
}

impl Cache {
    /// Records the configuration; `false` if it was seen before, or one that subsumes it.
    ///
    /// With `optional` (a mask of the operations that may be left out), a configuration that
    /// linearized the same required operations, reached the same state and linearized only some
    /// of the same optional ones subsumes this one: whatever can follow here can follow there,
    /// since an optional operation may still be linearized later or never, and no operation has
    /// to follow it.
    pub(super) fn insert_if_new(
        &mut self,
        key: u64,
        bits: &Bitset,
        state: &State,
        optional: Option<&[u64]>,
    ) -> bool {
        let head = self.heads.get(&key).copied().unwrap_or(u32::MAX);
        let mut at = head;
        while let Some(entry) = self.entries.get(at as usize) {
            let covers = match optional {
                None => *entry.bits == *bits.words,
                Some(mask) => entry
                    .bits
                    .iter()
                    .zip(&bits.words)
                    .zip(mask)
                    .all(|((&seen, &now), &m)| (seen ^ now) & !m == 0 && seen & m & !now == 0),
            };
            if covers && entry.state == *state {
                return false;
            }
            at = entry.next;
        }
        let Ok(index) = u32::try_from(self.entries.len()) else { return true };
        if self.bytes >= CACHE_BYTES || index == u32::MAX {
            return true;
        }
        self.bytes += std::mem::size_of::<CacheEntry>()
            + 24
            + bits.words.len() * 8
            + state.as_ref().map_or(0, String::len);
        self.entries.push(CacheEntry {
            bits: bits.words.clone().into_boxed_slice(),
            state: state.clone(),
            next: head,
        });
        self.heads.insert(key, index);
        true
    }
}

/// The cache keys are already well mixed: pass them through.
#[derive(Default)]
struct PremixedHasher(u64);

impl Hasher for PremixedHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// A well-mixed word from `x` (SplitMix64): the random word of an operation for Zobrist hashing,
/// and the final mixing of cache keys.
pub(super) fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The cache key of a configuration, from the hashes of its set and of its state.
pub(super) fn mix(bits_hash: u64, state_hash: u64) -> u64 {
    splitmix64(bits_hash ^ state_hash.rotate_left(17))
}

/// The hash of a state, recomputed only when the state changes.
pub(super) fn hash_state(state: &State) -> u64 {
    let mut hasher = DefaultHasher::new();
    state.hash(&mut hasher);
    hasher.finish()
}
