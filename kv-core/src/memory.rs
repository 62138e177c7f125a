//! The in-memory engine.

use async_trait::async_trait;
use dashmap::DashMap;
use dashmap::mapref::entry::Entry;

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};

use crate::{Limits, Mutation, Output, Result, Storage};

/// Keeps every value in memory, in a [`DashMap`]: the map is split into shards, each behind its
/// own reader-writer lock, so operations on keys of different shards run in parallel and a
/// mutation holds only its key's shard lock, for the few instructions [`crate::op::Op::apply`]
/// takes. Nothing survives the process (what is kept, [`Storage::state`] records too, lasts as
/// long as the value: a simulation that keeps it across a node's restart models a disk).
#[derive(Debug, Default)]
pub struct MemoryStorage {
    map: DashMap<String, String>,
    states: Mutex<BTreeMap<String, Vec<u8>>>,
    limits: Limits,
}

impl MemoryStorage {
    /// An empty store with the default [`Limits`].
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty store with the given limits.
    pub fn with_limits(limits: Limits) -> Self {
        MemoryStorage { map: DashMap::new(), states: Mutex::default(), limits }
    }

    /// Number of keys held.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[async_trait]
impl Storage for MemoryStorage {
    fn limits(&self) -> &Limits {
        &self.limits
    }

    async fn get(&self, key: &str) -> Result<Option<String>> {
        self.limits.check_key(key)?;
        Ok(self.map.get(key).map(|value| value.clone()))
    }

    async fn apply(&self, mutation: Mutation) -> Result<Output> {
        let Mutation { key, op } = mutation;
        self.limits.check_key(&key)?;
        match self.map.entry(key) {
            Entry::Occupied(mut entry) => {
                // Move the value out, apply, and move it back: no copy, and `apply` leaves the
                // slot untouched on error.
                let mut slot = Some(std::mem::take(entry.get_mut()));
                let output = op.apply(&mut slot, &self.limits);
                match slot {
                    Some(value) => *entry.get_mut() = value,
                    None => {
                        entry.remove();
                    }
                }
                output
            }
            Entry::Vacant(entry) => {
                let mut slot = None;
                let output = op.apply(&mut slot, &self.limits)?;
                if let Some(value) = slot {
                    entry.insert(value);
                }
                Ok(output)
            }
        }
    }

    async fn export(
        &self,
        select: &(dyn for<'k> Fn(&'k str) -> bool + Sync),
    ) -> Result<Vec<(String, String)>> {
        let mut entries: Vec<(String, String)> = self
            .map
            .iter()
            .filter(|entry| select(entry.key()))
            .map(|entry| (entry.key().clone(), entry.value().clone()))
            .collect();
        // In key order, whatever the map's hashing: a run is then the same every time.
        entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        Ok(entries)
    }

    async fn import(&self, entries: Vec<(String, String)>) -> Result<()> {
        for (key, value) in entries {
            self.map.insert(key, value);
        }
        Ok(())
    }

    async fn remove_where(&self, select: &(dyn for<'k> Fn(&'k str) -> bool + Sync)) -> Result<usize> {
        let before = self.map.len();
        self.map.retain(|key, _| !select(key));
        Ok(before.saturating_sub(self.map.len()))
    }

    async fn key_count(&self) -> Result<usize> {
        Ok(self.map.len())
    }

    async fn state(&self, name: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.states.lock().unwrap_or_else(PoisonError::into_inner).get(name).cloned())
    }

    async fn set_state(&self, name: &str, value: Option<Vec<u8>>) -> Result<()> {
        let mut states = self.states.lock().unwrap_or_else(PoisonError::into_inner);
        match value {
            Some(value) => states.insert(name.to_owned(), value),
            None => states.remove(name),
        };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn conforms() {
        conformance::run_all(MemoryStorage::with_limits).await;
    }

    #[tokio::test]
    async fn exports_slots_in_key_order() {
        let spread =
            |key: &str| key.bytes().fold(0u16, |a, b| a.wrapping_mul(31).wrapping_add(u16::from(b))) % 13;
        conformance::export_slots_in_batches(&MemoryStorage::new(), spread).await;
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
        #[test]
        fn matches_the_model(ops in conformance::ops_strategy()) {
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            rt.block_on(conformance::check_against_model(&MemoryStorage::with_limits(conformance::MODEL_LIMITS), ops));
        }
    }
}
