//! The shard master's state: the current configuration, changed one step at a time.

use std::sync::{Arc, RwLock};

use kv_shard::Config;
use tracing::info;

/// The sequence of cluster configurations, as the shard master keeps it.
///
/// Changes (joins and leaves) are serialised by an async lock held for the whole change, so the
/// next starts only after the last has finished; reads of the current configuration never wait
/// for a change in progress.
#[derive(Debug, Default)]
pub struct Membership {
    current: RwLock<Arc<Config>>,
    changes: tokio::sync::Mutex<()>,
}

impl Membership {
    /// Epoch 0: no member.
    pub fn new() -> Self {
        Self::default()
    }

    /// The current configuration.
    pub fn current(&self) -> Arc<Config> {
        match self.current.read() {
            Ok(config) => Arc::clone(&config),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Adds `server`; returns the new configuration.
    pub async fn join(&self, server: &str) -> kv_shard::Result<Arc<Config>> {
        self.change(|config| config.join(server)).await
    }

    /// Removes `server`; returns the new configuration.
    pub async fn leave(&self, server: &str) -> kv_shard::Result<Arc<Config>> {
        self.change(|config| config.leave(server)).await
    }

    async fn change(
        &self,
        step: impl FnOnce(&Config) -> kv_shard::Result<Config>,
    ) -> kv_shard::Result<Arc<Config>> {
        let _serialised = self.changes.lock().await;
        let before = self.current();
        let next = Arc::new(step(&before)?);
        let moved = before.moves_to(&next).len();
        info!(epoch = next.epoch(), members = next.len(), slots_moved = moved, "configuration changed");
        match self.current.write() {
            Ok(mut current) => *current = Arc::clone(&next),
            Err(poisoned) => *poisoned.into_inner() = Arc::clone(&next),
        }
        Ok(next)
    }
}
