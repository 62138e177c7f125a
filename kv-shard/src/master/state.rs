//! What the shard master keeps: the current configuration, the last ones, and what it must
//! remember about the servers between changes (who failed over what, who still owes slots, which
//! process joined).
//!
//! Plain state behind short-lived locks, never held across an await: the changes themselves are
//! serialised elsewhere (see [`super`]). Reads of the current configuration never wait for a
//! change in progress.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, Instant};

use crate::messages::Install;
use crate::{Config, Slot};

/// How many configurations are kept for servers that missed some.
pub(crate) const HISTORY: usize = 64;
/// How long a server failed over for a cut link may not join again, the first time...
const FIRST_HOLD_OFF: Duration = Duration::from_secs(2);
/// ...twice as long each time again within this...
const HOLD_OFF_MEMORY: Duration = Duration::from_secs(120);
/// ...up to this.
pub const LONGEST_HOLD_OFF: Duration = Duration::from_secs(30);

/// The slots a failed member held, and where they went.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Failover {
    /// Every slot of the failed member's: each new owner serves its share from its own copy...
    pub(crate) promoted: Vec<Slot>,
    /// ...but those still moving to the failed member when it failed, which come from the
    /// server that was sending them (by sender).
    pub(crate) carried: BTreeMap<String, Vec<Slot>>,
}

/// The shard master's records.
#[derive(Debug)]
pub(crate) struct Records {
    current: RwLock<Arc<Config>>,
    /// The last configurations, oldest first, the current one last: a server that missed some
    /// is brought up to date one epoch at a time.
    history: Mutex<VecDeque<Arc<Config>>>,
    /// What each failover gave to whom, by the epoch it made: every install of that epoch
    /// carries it.
    failovers: Mutex<BTreeMap<u64, Failover>>,
    /// Servers outside the membership that still owe slots (a leaver whose hand-off a failover
    /// carried over): watched like the members until they owe nothing.
    owing: Mutex<BTreeSet<String>>,
    /// The incarnation of each member's process when it joined: a member answering with another
    /// one restarted, and lost what it held.
    incarnations: Mutex<BTreeMap<String, u64>>,
    /// Failed members not yet told (a server cut off only from this shard master still runs,
    /// and holds the configuration that had it as a member), by the epoch that removed them:
    /// the repairs bring them up to the current epoch once they answer, so that they learn they
    /// were failed over and join again. Forgotten once one answers at that epoch or later, or as
    /// another process, or joins again.
    evicted: Mutex<BTreeMap<String, u64>>,
    /// Servers failed over because members could not reach them: when last, and how many times
    /// in a row (each within [`HOLD_OFF_MEMORY`] of the one before). They may not join again
    /// until their hold-off has passed, so that a link that stays cut does not have them join
    /// and be failed over again and again.
    cut_off: Mutex<BTreeMap<String, (Instant, u32)>>,
}

/// A poisoned lock's data is still consistent here (no invariant spans a panic): take it.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Records {
    /// Records that start at `first`.
    pub(crate) fn new(first: Config) -> Self {
        let first = Arc::new(first);
        Records {
            current: RwLock::new(Arc::clone(&first)),
            history: Mutex::new(VecDeque::from([first])),
            failovers: Mutex::new(BTreeMap::new()),
            owing: Mutex::new(BTreeSet::new()),
            incarnations: Mutex::new(BTreeMap::new()),
            evicted: Mutex::new(BTreeMap::new()),
            cut_off: Mutex::new(BTreeMap::new()),
        }
    }

    /// The current configuration.
    pub(crate) fn current(&self) -> Arc<Config> {
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Makes `next` the current configuration; forgets the oldest beyond [`HISTORY`], and the
    /// failovers of the epochs forgotten.
    pub(crate) fn commit(&self, next: &Arc<Config>) {
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::clone(next);
        let mut history = lock(&self.history);
        history.push_back(Arc::clone(next));
        while history.len() > HISTORY {
            if let Some(dropped) = history.pop_front() {
                lock(&self.failovers).retain(|&epoch, _| epoch > dropped.epoch());
            }
        }
    }

    /// The configurations kept, oldest first.
    pub(crate) fn history(&self) -> Vec<Arc<Config>> {
        lock(&self.history).iter().cloned().collect()
    }

    /// The configuration before the current one, if it is kept.
    pub(crate) fn previous(&self) -> Option<Arc<Config>> {
        let history = lock(&self.history);
        history.len().checked_sub(2).and_then(|i| history.get(i).cloned())
    }

    /// The servers a change must hear from: the members of `current` and of the configuration
    /// before it (a leaver is one of those), and the servers outside that still owe slots.
    pub(crate) fn involved(&self, current: &Config) -> Vec<String> {
        let mut involved: Vec<String> = current.members().map(|(_, address)| address.to_owned()).collect();
        let history = lock(&self.history);
        if let Some(previous) = history.iter().rev().find(|c| c.epoch() < current.epoch()) {
            involved.extend(previous.members().map(|(_, address)| address.to_owned()));
        }
        drop(history);
        involved.extend(lock(&self.owing).iter().cloned());
        involved.sort_unstable();
        involved.dedup();
        involved
    }

    /// Records the incarnation of the process that joins at `server`.
    pub(crate) fn joined(&self, server: &str, incarnation: u64) {
        lock(&self.incarnations).insert(server.to_owned(), incarnation);
        lock(&self.evicted).remove(server);
    }

    /// Watches `server`, failed over by the configuration of `epoch`, until it has heard so.
    pub(crate) fn evicted(&self, server: &str, epoch: u64) {
        lock(&self.evicted).insert(server.to_owned(), epoch);
    }

    /// The failed members not yet told.
    pub(crate) fn evicted_servers(&self) -> Vec<String> {
        lock(&self.evicted).keys().cloned().collect()
    }

    /// Keeps watching only the failed members for which `still` holds (given the epoch that
    /// removed each).
    pub(crate) fn retain_evicted(&self, mut still: impl FnMut(&String, u64) -> bool) {
        lock(&self.evicted).retain(|address, epoch| still(address, *epoch));
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
        lock(&self.incarnations).get(server).copied()
    }

    /// Whether the process at member `server` is not the one that joined (`incarnation` is
    /// what it answers now).
    pub(crate) fn restarted(&self, server: &str, incarnation: u64) -> bool {
        lock(&self.incarnations).get(server).is_some_and(|&joined| joined != incarnation)
    }

    /// Records what the failover that made `epoch` gave to whom.
    pub(crate) fn failed_over(&self, epoch: u64, failover: Failover) {
        lock(&self.failovers).insert(epoch, failover);
    }

    /// Watches `server`, outside the membership, until it owes nothing.
    pub(crate) fn owes(&self, server: &str) {
        lock(&self.owing).insert(server.to_owned());
    }

    /// The slots the failover that made `epoch` promoted (none if a join or leave made it).
    pub(crate) fn promoted_at(&self, epoch: u64) -> Vec<Slot> {
        lock(&self.failovers).get(&epoch).map(|failover| failover.promoted.clone()).unwrap_or_default()
    }

    /// Keeps watching only the servers outside the membership for which `still` holds.
    pub(crate) fn retain_owing(&self, still: impl FnMut(&String) -> bool) {
        lock(&self.owing).retain(still);
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
        let failover = lock(&self.failovers).get(&next.epoch()).cloned().unwrap_or_default();
        let incarnation = lock(&self.incarnations).get(server).copied().unwrap_or(0);
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
