//! The workloads' keys and values: the assignment's keys `"0"` to `"100"`, and 4-character
//! values that never repeat within a run, so that a value read names the put that wrote it.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};

use rand::RngExt;
use rand::rngs::SmallRng;

/// The assignment's keys: `0..=100`, as decimal strings.
pub(super) const KEYS: u32 = 101;

/// A key drawn at random from [`KEYS`].
pub(super) fn random_key(rng: &mut SmallRng) -> String {
    rng.random_range(0..KEYS).to_string()
}

/// Letters and digits: 62⁴ ≈ 14.8 million values of 4 characters.
const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// Values of 4 random characters, as the assignment writes, none drawn twice by the clients that
/// share this (clones share it).
#[derive(Debug, Clone, Default)]
pub(super) struct UniqueValues {
    used: Arc<Mutex<HashSet<String>>>,
}

impl UniqueValues {
    /// A value never drawn before. Should 4 characters run short (they will not in a run of
    /// minutes), values grow a character.
    pub(super) fn draw(&self, rng: &mut SmallRng) -> String {
        let mut used = self.used.lock().unwrap_or_else(PoisonError::into_inner);
        let (mut len, mut misses) = (4, 0u32);
        loop {
            let value: String =
                (0..len).map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())])).collect();
            if used.insert(value.clone()) {
                return value;
            }
            misses += 1;
            if misses % 64 == 0 {
                len += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn values_never_repeat() {
        let values = UniqueValues::default();
        let (mut a, mut b) = (SmallRng::seed_from_u64(1), SmallRng::seed_from_u64(1));
        let drawn: HashSet<String> =
            (0..2000).flat_map(|_| [values.draw(&mut a), values.clone().draw(&mut b)]).collect();
        assert_eq!(drawn.len(), 4000, "same seeds, shared memory: still no repeat");
        assert!(drawn.iter().all(|v| v.len() == 4));
    }
}
