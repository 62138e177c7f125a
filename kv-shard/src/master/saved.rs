//! What a shard master must not forget across a restart ([`MasterState`]), and where it keeps
//! it ([`MasterStore`]).
//!
//! A shard master that restarts with no memory of its cluster would hand the first server to
//! join a second, empty cluster that owns every slot, while the old members still hold the data;
//! and it would number its next configuration with an epoch the servers already hold, for a
//! different assignment. So:
//! - **Saved before it acts.** A change (join, leave, failover) is saved with the configuration
//!   it makes before that configuration is shown to anyone: before any install, before
//!   `current()` returns it. A change whose save fails changes nothing, and is refused
//!   (`UNAVAILABLE`). So no server, and no client, ever holds an epoch the store does not.
//! - **One state, whole.** The store keeps the last state saved, every part of it from the same
//!   moment (the configurations kept, what each failover gave to whom, who still owes slots,
//!   which process joined at each member, which failed members have not heard): a binding writes
//!   it atomically or not at all.
//! - **Checked when read.** A state read back is checked ([`MasterState::check`]) before a
//!   shard master adopts it: a damaged one is refused with a clear error, never half-used.
//!
//! What a restart forgets, by design: the failure detector's timers (a member silent at the
//! restart is failed over one failure timeout later), the hold-offs of servers failed over for a
//! cut link, and the change in progress itself. Its caller gets an error and retries; its
//! configuration, saved, is brought to the servers that have not installed it by the repairs
//! (every second: members behind are brought up to date, and senders that still owe slots are
//! made to resume), as after any install that failed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;

use crate::{Config, Error, Slot};

/// How many configurations are kept for servers that missed some.
pub(crate) const HISTORY: usize = 64;

/// The slots a failed member held, and where they went.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Failover {
    /// Every slot of the failed member's: each new owner serves its share from its own copy...
    pub promoted: Vec<Slot>,
    /// ...but those still moving to the failed member when it failed, which come from the
    /// server that was sending them (by sender).
    pub carried: BTreeMap<String, Vec<Slot>>,
}

/// What a shard master keeps across restarts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MasterState {
    /// The last configurations (at most 64), oldest first, the current one last, their epochs
    /// consecutive: a server that missed some is brought up to date one epoch at a time.
    pub history: Vec<Arc<Config>>,
    /// What each failover gave to whom, by the epoch it made: every install of that epoch
    /// carries it.
    pub failovers: BTreeMap<u64, Failover>,
    /// Servers outside the membership that still owe slots (a leaver whose hand-off a failover
    /// carried over): watched like the members until they owe nothing.
    pub owing: BTreeSet<String>,
    /// The incarnation of each member's process when it joined: a member answering with another
    /// one restarted, and lost what it held.
    pub incarnations: BTreeMap<String, u64>,
    /// Failed members not yet told, by the epoch that removed them (see the repairs).
    pub evicted: BTreeMap<String, u64>,
}

impl MasterState {
    /// A cluster's first state: `first` (epoch 0), nothing else.
    pub fn new(first: Config) -> Self {
        MasterState {
            history: vec![Arc::new(first)],
            failovers: BTreeMap::new(),
            owing: BTreeSet::new(),
            incarnations: BTreeMap::new(),
            evicted: BTreeMap::new(),
        }
    }

    /// The current configuration.
    pub fn current(&self) -> &Arc<Config> {
        // `check` and every constructor keep the history non-empty.
        self.history.last().expect("a master state holds a configuration")
    }

    /// Whether this state holds together: a history of 1 to 64 configurations with consecutive
    /// epochs and one replication setting, failovers only of epochs kept. What a store reads
    /// back is checked with this before a shard master adopts it.
    pub fn check(&self) -> Result<(), Error> {
        let bad = |why: String| Err(Error::InvalidConfig(format!("the saved shard master state {why}")));
        let Some(first) = self.history.first() else {
            return bad("holds no configuration".to_owned());
        };
        if self.history.len() > HISTORY {
            return bad(format!("keeps {} configurations, more than {HISTORY}", self.history.len()));
        }
        for (before, after) in self.history.iter().zip(self.history.iter().skip(1)) {
            if before.epoch().checked_add(1) != Some(after.epoch()) {
                return bad(format!("skips from epoch {} to {}", before.epoch(), after.epoch()));
            }
            if before.replication() != after.replication() {
                return bad(format!("changes replication settings at epoch {}", after.epoch()));
            }
        }
        let kept = first.epoch()..=self.current().epoch();
        if let Some(epoch) = self.failovers.keys().find(|epoch| !kept.contains(epoch)) {
            return bad(format!("records a failover at epoch {epoch}, outside the epochs kept"));
        }
        Ok(())
    }

    /// Makes `next` the current configuration; forgets the oldest beyond 64, and the failovers
    /// of the epochs forgotten.
    pub(crate) fn commit(&mut self, next: &Arc<Config>) {
        self.history.push(Arc::clone(next));
        while self.history.len() > HISTORY {
            let dropped = self.history.remove(0);
            self.failovers.retain(|&epoch, _| epoch > dropped.epoch());
        }
    }
}

/// Where a shard master keeps its [`MasterState`]: memory, a file, a replicated log.
#[async_trait]
pub trait MasterStore: Send + Sync + std::fmt::Debug + 'static {
    /// The last state saved, if any.
    async fn load(&self) -> Result<Option<MasterState>, Error>;

    /// Keeps `state` in place of the last one, whole or not at all; returns once it would
    /// survive a crash of this process (and, for a durable store, of the machine).
    async fn save(&self, state: &MasterState) -> Result<(), Error>;
}

/// A store in memory: what a shard master without a data directory uses (a restart of the
/// process forgets the cluster), and what a simulator keeps across the crashes of a simulated
/// shard master, as a disk would be.
#[derive(Debug, Default)]
pub struct MemoryMasterStore {
    state: Mutex<Option<MasterState>>,
}

impl MemoryMasterStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// The last state saved, if any.
    pub fn saved(&self) -> Option<MasterState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

#[async_trait]
impl MasterStore for MemoryMasterStore {
    async fn load(&self) -> Result<Option<MasterState>, Error> {
        Ok(self.saved())
    }

    async fn save(&self, state: &MasterState) -> Result<(), Error> {
        *self.state.lock().unwrap_or_else(PoisonError::into_inner) = Some(state.clone());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grown(changes: usize) -> MasterState {
        let mut state = MasterState::new(Config::new());
        for i in 0..changes {
            let next = state.current().join(&format!("10.0.0.{}:7000", i % 200 + 1)).unwrap_or_else(|_| {
                state.current().leave(&format!("10.0.0.{}:7000", i % 200 + 1)).expect("a leave")
            });
            state.commit(&Arc::new(next));
        }
        state
    }

    #[test]
    fn the_history_keeps_the_last_configurations_and_their_failovers() {
        let mut state = grown(70);
        assert_eq!(state.history.len(), HISTORY);
        assert_eq!(state.current().epoch(), 70);
        assert!(state.check().is_ok());
        state.failovers.insert(70, Failover::default());
        assert_eq!(state.history.first().map(|c| c.epoch()), Some(7));
        state.failovers.insert(6, Failover::default());
        assert!(state.check().is_err(), "a failover of an epoch no longer kept");
        state.failovers.remove(&6);
        assert!(state.check().is_ok());
        let next = Arc::new(state.current().join("10.0.0.250:7000").expect("a join"));
        state.commit(&next);
        assert_eq!(state.history.first().map(|c| c.epoch()), Some(8));
    }

    #[test]
    fn a_damaged_state_is_refused() {
        let mut empty = grown(2);
        empty.history.clear();
        assert!(empty.check().is_err());
        let mut gap = grown(3);
        gap.history.remove(1);
        assert!(gap.check().unwrap_err().to_string().contains("skips from epoch 0 to 2"));
        let mut long = grown(3);
        long.history = std::iter::repeat_n(Arc::clone(long.current()), HISTORY + 1).collect();
        assert!(long.check().is_err());
    }

    #[tokio::test]
    async fn the_memory_store_gives_back_the_last_state() {
        let store = MemoryMasterStore::new();
        assert_eq!(store.load().await, Ok(None));
        let state = grown(3);
        store.save(&grown(2)).await.expect("saved");
        store.save(&state).await.expect("saved");
        assert_eq!(store.load().await, Ok(Some(state)));
    }
}
