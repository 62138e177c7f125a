//! The configuration a storage server holds for replication, and the address it has in it.
//!
//! It changes only at an install, which switches it while it holds the locks of the copies whose
//! role changes (see [`super::copies`]): a reader takes it once per decision and keeps that
//! `Arc`, so one decision never mixes two configurations.

use std::sync::{Arc, PoisonError, RwLock};

use kv_shard::Config;

/// The configuration held (epoch 0 while standalone), and this server's address.
#[derive(Debug)]
pub(crate) struct View {
    me: String,
    config: RwLock<Arc<Config>>,
}

impl View {
    /// A server at `me` that holds no configuration yet.
    pub(crate) fn new(me: String) -> Self {
        View { me, config: RwLock::new(Arc::new(Config::new())) }
    }

    /// The address this server has as a member.
    pub(crate) fn me(&self) -> &str {
        &self.me
    }

    /// The configuration held.
    pub(crate) fn get(&self) -> Arc<Config> {
        Arc::clone(&self.config.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Switches to `next` (an install does, holding the locks of the copies that change).
    pub(crate) fn set(&self, next: Config) {
        *self.config.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(next);
    }
}

/// A poisoned lock's data is still consistent here (no invariant spans a panic): take it.
pub(crate) fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The slots `pick` picks, in order.
pub(crate) fn slots_where(pick: impl Fn(kv_shard::Slot) -> bool) -> Vec<kv_shard::Slot> {
    (0..kv_shard::SLOTS as kv_shard::Slot).filter(|&slot| pick(slot)).collect()
}

/// A membership table over all slots.
pub(crate) fn slot_set(slots: &[kv_shard::Slot]) -> Vec<bool> {
    let mut set = vec![false; kv_shard::SLOTS];
    for &slot in slots {
        set[usize::from(slot)] = true;
    }
    set
}
