//! What the shard master's drivers share: its records, its calls to the servers, and the lock
//! that serialises changes.
//!
//! Changes (joins, leaves, failovers) hold [`Shared::changes`] from their first question to the
//! end of their moves, so the next starts only after the last has finished; the repair of what
//! failures left behind runs only when no change does.

use std::sync::Arc;
use std::time::Instant;

use crate::messages::InstallReport;
use crate::{Config, Error, Slot};

use super::calls::Calls;
use super::saved::{MasterState, MasterStore};
use super::state::Records;

/// The shard master's state and means, shared by its drivers.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) records: Records,
    pub(crate) calls: Calls,
    /// Where the records are saved before they are acted on.
    pub(crate) store: Arc<dyn MasterStore>,
    /// Held for the whole of a change, data moves included.
    pub(crate) changes: tokio::sync::Mutex<()>,
}

impl Shared {
    /// Saves `state`, and only then makes it the records: no one is shown a configuration, or
    /// sent an install of it, before it is saved. A change whose save fails is not made.
    pub(crate) async fn keep(&self, state: MasterState) -> Result<(), Error> {
        if let Err(err) = self.store.save(&state).await {
            return Err(Error::Unavailable(format!(
                "the shard master could not save the change, which is not made ({err}); retry"
            )));
        }
        self.records.adopt(state);
        Ok(())
    }

    /// Installs `next` (after `previous`) at `server`, as the records say it should be given
    /// there, retrying while it is unreachable or busy, until `deadline`.
    pub(crate) async fn install(
        &self,
        server: &str,
        previous: &Config,
        next: &Config,
        abandoned: &[Slot],
        deadline: Instant,
    ) -> Result<InstallReport, Error> {
        let install = self.records.install(server, previous, next, abandoned);
        self.calls.install(server, &install, deadline).await
    }

    /// [`Shared::install`], given up once `server`, or any of `others`, stops answering pings
    /// for the failure timeout (or answers as another process): for the repairs, which hold the
    /// change lock, and so would otherwise hold up a failover for as long as they retry a server
    /// that is gone, or wait for a sender whose receiver is gone.
    pub(crate) async fn install_while_alive(
        &self,
        server: &str,
        others: &[&str],
        previous: &Config,
        next: &Config,
        deadline: Instant,
    ) -> Result<InstallReport, Error> {
        let watched: Vec<(&str, Option<u64>)> = others
            .iter()
            .copied()
            .filter(|&other| other != server)
            .map(|other| (other, self.records.incarnation(other)))
            .collect();
        tokio::select! {
            biased;
            result = self.install(server, previous, next, &[], deadline) => result,
            () = self.calls.until_silent(server, self.records.incarnation(server)) => {
                Err(Error::Unavailable(format!("{server} stopped answering")))
            }
            silent = self.calls.until_any_silent(&watched) => {
                Err(Error::Unavailable(format!("{silent} stopped answering: its failover goes first")))
            }
        }
    }
}
