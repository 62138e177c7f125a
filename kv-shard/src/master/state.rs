//! What the shard master keeps: the current configuration, the last ones, and what it must
//! remember about the servers between changes (who failed over what, who still owes slots, which
//! process joined): a [`MasterState`], which a restart must not forget, and the hold-offs, which
//! it may.
//!
//! Plain state behind short-lived locks, never held across an await: the changes themselves are
//! serialised elsewhere (see [`super`]), and a change's new state is saved before the records
//! adopt it ([`super::shared::Shared::keep`]). Reads of the current configuration never wait for
//! a change in progress.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, Instant};

use crate::messages::Install;
use crate::{Config, Slot};

pub(crate) use super::saved::Failover;
use super::saved::MasterState;

/// How long a server failed over for a cut link may not join again, the first time...
const FIRST_HOLD_OFF: Duration = Duration::from_secs(2);
/// ...twice as long each time again within this...
const HOLD_OFF_MEMORY: Duration = Duration::from_secs(120);
/// ...up to this.
pub const LONGEST_HOLD_OFF: Duration = Duration::from_secs(30);

/// The shard master's records.
#[derive(Debug)]
pub(crate) struct Records {
    /// The current configuration, the last of `kept`'s history: read without waiting for the
    /// rest.
    current: RwLock<Arc<Config>>,
    /// What a restart must not forget (see [`MasterState`]).
    kept: Mutex<MasterState>,
    /// Servers failed over because members could not reach them: when last, and how many times
    /// in a row (each within [`HOLD_OFF_MEMORY`] of the one before). They may not join again
    /// until their hold-off has passed, so that a link that stays cut does not have them join
    /// and be failed over again and again. Forgotten at a restart.
    cut_off: Mutex<BTreeMap<String, (Instant, u32)>>,
}

/// A poisoned lock's data is still consistent here (no invariant spans a panic): take it.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Records {
    /// Records that start from `state` (which [`MasterState::check`] accepted).
    pub(crate) fn new(state: MasterState) -> Self {
        Records {
            current: RwLock::new(Arc::clone(state.current())),
            kept: Mutex::new(state),
            cut_off: Mutex::new(BTreeMap::new()),
        }
    }

    /// The current configuration.
    pub(crate) fn current(&self) -> Arc<Config> {
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// What a restart must not forget, as it stands.
    pub(crate) fn state(&self) -> MasterState {
        lock(&self.kept).clone()
    }

    /// Takes `state` (saved by then) as what it keeps, its last configuration as the current
    /// one.
    pub(crate) fn adopt(&self, state: MasterState) {
        let current = Arc::clone(state.current());
        let mut kept = lock(&self.kept);
        *kept = state;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = current;
    }

    /// The configurations kept, oldest first.
    pub(crate) fn history(&self) -> Vec<Arc<Config>> {
        lock(&self.kept).history.clone()
    }

    /// The configuration before the current one, if it is kept.
    pub(crate) fn previous(&self) -> Option<Arc<Config>> {
        let kept = lock(&self.kept);
        kept.history.len().checked_sub(2).and_then(|i| kept.history.get(i).cloned())
    }

    /// The servers a change must hear from: the members of `current` and of the configuration
    /// before it (a leaver is one of those), and the servers outside that still owe slots.
    pub(crate) fn involved(&self, current: &Config) -> Vec<String> {
        let mut involved: Vec<String> = current.members().map(|(_, address)| address.to_owned()).collect();
        let kept = lock(&self.kept);
        if let Some(previous) = kept.history.iter().rev().find(|c| c.epoch() < current.epoch()) {
            involved.extend(previous.members().map(|(_, address)| address.to_owned()));
        }
        involved.extend(kept.owing.iter().cloned());
        drop(kept);
        involved.sort_unstable();
        involved.dedup();
        involved
    }

    /// Records the incarnation of the process that joins at `server` (saved with the change
    /// that makes it a member).
    pub(crate) fn joined(&self, server: &str, incarnation: u64) {
        let mut kept = lock(&self.kept);
        kept.incarnations.insert(server.to_owned(), incarnation);
        kept.evicted.remove(server);
    }

    /// The failed members not yet told.
    pub(crate) fn evicted_servers(&self) -> Vec<String> {
        lock(&self.kept).evicted.keys().cloned().collect()
    }

    /// Keeps watching only the failed members for which `still` holds (given the epoch that
    /// removed each). Saved with the next change: a restart before it watches them a while
    /// longer, which is harmless.
    pub(crate) fn retain_evicted(&self, mut still: impl FnMut(&String, u64) -> bool) {
        // `still` may read the records: it runs without their lock.
        let evicted = lock(&self.kept).evicted.clone();
        let heard: Vec<String> =
            evicted.into_iter().filter(|(address, epoch)| !still(address, *epoch)).map(|(a, _)| a).collect();
        let mut kept = lock(&self.kept);
        for address in heard {
            kept.evicted.remove(&address);
        }
    }

    /// Records that `server` was failed over at `now` because members could not reach it.
    pub(crate) fn failed_for_cut(&self, server: &str, now: Instant) {
        let mut cut_off = lock(&self.cut_off);
        let times = match cut_off.get(server) {
            Some(&(last, times)) if now.saturating_duration_since(last) < HOLD_OFF_MEMORY => times + 1,
            _ => 1,
        };
        cut_off.insert(server.to_owned(), (now, times));
    }

    /// How long `server` must still wait before it may join again, if it must: 2 s after it was
    /// failed over for a cut link, twice as long each time in a row, up to [`LONGEST_HOLD_OFF`].
    pub(crate) fn held_off(&self, server: &str, now: Instant) -> Option<Duration> {
        let (last, times) = *lock(&self.cut_off).get(server)?;
        let hold = FIRST_HOLD_OFF.saturating_mul(1 << times.saturating_sub(1).min(16)).min(LONGEST_HOLD_OFF);
        (last + hold).checked_duration_since(now).filter(|left| !left.is_zero())
    }

    /// The incarnation of the process that joined at `server`, if one did.
    pub(crate) fn incarnation(&self, server: &str) -> Option<u64> {
        lock(&self.kept).incarnations.get(server).copied()
    }

    /// Whether the process at member `server` is not the one that joined (`incarnation` is
    /// what it answers now).
    pub(crate) fn restarted(&self, server: &str, incarnation: u64) -> bool {
        lock(&self.kept).incarnations.get(server).is_some_and(|&joined| joined != incarnation)
    }

    /// The slots the failover that made `epoch` promoted (none if a join or leave made it).
    pub(crate) fn promoted_at(&self, epoch: u64) -> Vec<Slot> {
        lock(&self.kept).failovers.get(&epoch).map(|failover| failover.promoted.clone()).unwrap_or_default()
    }

    /// Keeps watching only the servers outside the membership for which `still` holds (saved
    /// with the next change, as [`Records::retain_evicted`]).
    pub(crate) fn retain_owing(&self, mut still: impl FnMut(&String) -> bool) {
        // `still` may read the records: it runs without their lock.
        let owing = lock(&self.kept).owing.clone();
        let paid: Vec<String> = owing.into_iter().filter(|address| !still(address)).collect();
        let mut kept = lock(&self.kept);
        for address in paid {
            kept.owing.remove(&address);
        }
    }

    /// The install of `next` (after `previous`) at `server`: with what the failover that made
    /// `next` gave away, and the incarnation of the process that joined there.
    pub(crate) fn install(
        &self,
        server: &str,
        previous: &Config,
        next: &Config,
        abandoned: &[Slot],
    ) -> Install {
        let kept = lock(&self.kept);
        let failover = kept.failovers.get(&next.epoch()).cloned().unwrap_or_default();
        let incarnation = kept.incarnations.get(server).copied().unwrap_or(0);
        drop(kept);
        Install {
            next: next.clone(),
            previous: previous.clone(),
            abandoned: abandoned.to_vec(),
            promoted: failover.promoted,
            carried: failover.carried,
            incarnation,
        }
    }
}
