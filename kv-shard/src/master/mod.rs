//! The shard master: the sequence of cluster configurations, changed one step at a time, and the
//! driving of each step's data moves, failovers and repairs (the protocol is in the crate docs,
//! "Moving data", and in `kv_replica`'s, "Failures").
//!
//! Pure decisions are in [`plan`] (the failure detector, failover planning, catch-up steps,
//! change checks, install order); the drivers beside it ask the servers through
//! [`crate::transport::ServerCalls`], read time through a [`Clock`], and carry the plans out:
//! [`change`] (joins and leaves), [`failover`], [`reconcile`] (repairs), [`watch`] (the failure
//! detector's heartbeats). [`ShardMaster`] is what a binding serves.
//!
//! Invariants:
//! - a change is saved ([`MasterStore`]) before anyone is shown or sent its configuration, so a
//!   restarted shard master goes on from the last epoch it made, never makes another with the
//!   same number, and never forgets its cluster (see [`saved`]);
//! - changes (joins, leaves, failovers) are serialised, and run to their end even if their
//!   caller goes away: a change stopped half-way would leave slots waiting for data no one sends;
//! - reads of the current configuration never wait for a change in progress;
//! - a change is refused, and changes nothing, while the last one has not settled.

mod calls;
mod change;
mod copies;
mod failover;
pub(crate) mod plan;
mod readmit;
mod reconcile;
mod saved;
mod shared;
mod state;
mod watch;

use std::sync::Arc;
use std::time::Duration;

use crate::clock::Clock;
use crate::transport::ServerCalls;
use crate::{Config, Error, Replication};

use self::calls::Calls;
use self::change::Change;
pub use self::saved::{Failover, MasterState, MasterStore, MemoryMasterStore};
use self::shared::Shared;
pub use self::state::LONGEST_HOLD_OFF;
use self::state::Records;

/// How often the shard master repairs what failures left behind.
const RECONCILE_INTERVAL: Duration = Duration::from_secs(1);

/// How a shard master runs.
#[derive(Debug, Clone, Copy)]
pub struct MasterSettings {
    /// How long the data moves of one membership change may take before the change is
    /// reported as incomplete.
    pub move_timeout: Duration,
    /// How long a member may go without answering pings before it is failed over
    /// (replication factor 2 or more).
    pub failure_timeout: Duration,
    /// How slots are replicated.
    pub replication: Replication,
}

/// The shard master's logic, over the calls it makes to the storage servers and a clock.
#[derive(Debug, Clone)]
pub struct ShardMaster {
    shared: Arc<Shared>,
}

impl ShardMaster {
    /// Epoch 0: no member, slots replicated as `settings` say; kept in memory only, so a restart
    /// of the process forgets the cluster.
    pub fn new(
        settings: MasterSettings,
        servers: Arc<dyn ServerCalls>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, Error> {
        Self::with_store(settings, servers, clock, Arc::new(MemoryMasterStore::new()), None)
    }

    /// A shard master that saves its state in `store` before it acts on it, starting from
    /// `saved`, the state `store` holds (read by [`MasterStore::load`]), or at epoch 0 if it
    /// holds none. A saved state that does not hold together, or whose replication settings are
    /// not `settings`', is refused: a shard master never starts from a state it cannot trust.
    pub fn with_store(
        settings: MasterSettings,
        servers: Arc<dyn ServerCalls>,
        clock: Arc<dyn Clock>,
        store: Arc<dyn MasterStore>,
        saved: Option<MasterState>,
    ) -> Result<Self, Error> {
        let state = match saved {
            Some(state) => {
                state.check()?;
                let made = state.current().replication();
                if *made != settings.replication {
                    return Err(Error::FailedPrecondition(format!(
                        "the saved cluster replicates {made:?}, not {:?} as asked: start with the \
                         cluster's settings",
                        settings.replication
                    )));
                }
                state
            }
            None => MasterState::new(Config::new().with_replication(settings.replication)?),
        };
        let calls = Calls::new(servers, clock, settings.move_timeout, settings.failure_timeout);
        let shared =
            Shared { records: Records::new(state), calls, store, changes: tokio::sync::Mutex::new(()) };
        Ok(ShardMaster { shared: Arc::new(shared) })
    }

    /// [`ShardMaster::with_store`], from what `store` holds.
    pub async fn open(
        settings: MasterSettings,
        servers: Arc<dyn ServerCalls>,
        clock: Arc<dyn Clock>,
        store: Arc<dyn MasterStore>,
    ) -> Result<Self, Error> {
        let saved = store.load().await?;
        Self::with_store(settings, servers, clock, store, saved)
    }

    /// The current configuration.
    pub fn current(&self) -> Arc<Config> {
        self.shared.records.current()
    }

    /// Adds `server`, moves its share of the slots to it, and returns the new configuration.
    /// The server must answer, and must hold no data unless it is the first member. Runs to
    /// its end even if the caller goes away.
    pub async fn join(&self, server: &str) -> Result<Arc<Config>, Error> {
        self.detached(Change::Join(server.to_owned())).await
    }

    /// Hands `server`'s slots to the others, removes it, and returns the new configuration. The
    /// last member may leave only if it holds no keys, since nothing could take them. Runs to
    /// its end even if the caller goes away.
    pub async fn leave(&self, server: &str) -> Result<Arc<Config>, Error> {
        self.detached(Change::Leave(server.to_owned())).await
    }

    /// Removes failed member `server`: its slots go to up-to-date secondaries, which serve them
    /// from their copies, and the replica sets refill (see `kv_replica`'s docs). Installs the
    /// new configuration at every other member.
    pub async fn fail(&self, server: &str) -> Result<Arc<Config>, Error> {
        failover::fail(&self.shared, server).await
    }

    /// Repairs what failures left behind, unless a change is in progress; returns how many
    /// installs it made.
    pub async fn reconcile(&self) -> usize {
        reconcile::reconcile(&self.shared).await
    }

    /// Watches the members for as long as it is polled, and fails over those that stop
    /// answering or restart (with a replication factor of 2 or more).
    pub async fn watch(&self) {
        watch::watch(&self.shared).await;
    }

    /// Repairs what failures left behind, every second, for as long as it is polled.
    pub async fn repair(&self) {
        loop {
            self.shared.calls.clock.sleep(RECONCILE_INTERVAL).await;
            self.reconcile().await;
        }
    }

    async fn detached(&self, change: Change) -> Result<Arc<Config>, Error> {
        let shared = Arc::clone(&self.shared);
        match tokio::spawn(async move { change::change(&shared, change).await }).await {
            Ok(result) => result,
            Err(err) => Err(Error::Internal(format!("the change failed: {err}"))),
        }
    }
}
