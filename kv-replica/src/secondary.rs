//! A secondary's view of one slot: whether it is up to date, and the writes it holds
//! uncommitted.
//!
//! The caller keeps one [`SlotReplica`] per slot behind a lock, and holds that lock while it
//! applies what a method returns to the storage engine, so that a slot's writes reach the engine
//! in the order decided here.

use std::collections::{BTreeMap, BTreeSet};

use kv_core::SessionRecord;

use crate::digest::SnapshotScope;

/// One write as the primary sent it: the key's value after the write (absent: the key is gone),
/// so applying it twice, or after a snapshot of the same value, changes nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicatedWrite {
    /// The primary's number for the write within the slot, growing.
    pub seq: u64,
    /// The key written.
    pub key: String,
    /// Its value after the write.
    pub value: Option<String>,
    /// The write's exactly-once record, if it had a request id.
    pub session: Option<SessionRecord>,
}

/// Where a secondary stands with one slot.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum SlotState {
    /// Not a secondary of the slot.
    #[default]
    Idle,
    /// A secondary of the slot, waiting until this server has handed the slot's old data off
    /// (it was its primary); it takes nothing yet.
    Awaiting,
    /// A secondary catching up: it takes writes, and a snapshot of the slot for the keys no
    /// write has reached since the catch-up began. It serves no reads.
    Syncing {
        /// Keys written since the catch-up began: their snapshot entries are older.
        touched: BTreeSet<String>,
        /// The epoch the catch-up began at: only a snapshot the primary read at this epoch or
        /// later holds every write this copy will not receive (an older one, still in flight
        /// from a catch-up this server had at an earlier epoch, may not).
        since: u64,
    },
    /// An up-to-date secondary: it serves reads.
    Ready,
}

/// What a secondary's copy of a slot holds when the server takes the slot over from its failed
/// primary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Takeover {
    /// Up to date: every write the primary may have acknowledged.
    Complete,
    /// Still catching up (or no copy at all): only the keys in `written` are up to date; the
    /// others may be missing or stale, and are to be taken from another copy of the slot.
    Partial {
        /// Keys a write has reached since the catch-up began.
        written: BTreeSet<String>,
    },
}

/// A secondary's state for one slot.
#[derive(Debug, Default)]
pub struct SlotReplica {
    state: SlotState,
    /// Prepared writes not yet committed, by sequence number (strong consistency).
    pending: BTreeMap<u64, ReplicatedWrite>,
    /// How many pending writes each key has: a key with any is *dirty*.
    dirty: BTreeMap<String, usize>,
    /// The newest write prepared here: the primary prepares a slot's writes one after the
    /// other, so an older one arriving now is a late duplicate of an attempt already answered.
    last_prepared: u64,
    /// The epoch from which the writes of the slot's current primary belong to this copy: the
    /// one its catch-up began at, or at which the primary took the slot's data from this
    /// server. A write sent at an older epoch under the same address is not the current
    /// primary's: it comes late from an earlier process there (one that crashed, and was
    /// restarted), whose numbers are not this primary's.
    writes_since: u64,
    /// Keys a snapshot entry was applied to since the catch-up began: the primary had them.
    received: BTreeSet<String>,
    /// What the snapshot under way sends whole: the keys of the other buckets were equal to the
    /// primary's when it compared them.
    scope: Option<SnapshotScope>,
}

impl SlotReplica {
    /// Where the slot stands.
    pub fn state(&self) -> &SlotState {
        &self.state
    }

    /// Whether the slot takes writes.
    pub fn takes_writes(&self) -> bool {
        matches!(self.state, SlotState::Syncing { .. } | SlotState::Ready)
    }

    /// Whether writes the primary sent at `epoch` belong to this copy: a copy catching up takes
    /// none sent before its catch-up began (they may be older than its snapshot, and would make
    /// it skip the snapshot's entries for their keys).
    pub fn takes_writes_from(&self, epoch: u64) -> bool {
        match self.state {
            SlotState::Syncing { since, .. } => epoch >= since,
            SlotState::Ready => epoch >= self.writes_since,
            SlotState::Idle | SlotState::Awaiting => false,
        }
    }

    /// Whether reads may be served here.
    pub fn is_ready(&self) -> bool {
        self.state == SlotState::Ready
    }

    /// Starts over in `state`, forgetting every pending write (a new primary, or no role).
    pub fn reset(&mut self, state: SlotState) {
        self.writes_since = match state {
            SlotState::Syncing { since, .. } => since,
            _ => 0,
        };
        self.state = state;
        self.pending.clear();
        self.dirty.clear();
        self.last_prepared = 0;
        self.received.clear();
        self.scope = None;
    }

    /// Starts catching up at `epoch`, if the slot was awaiting its hand-off.
    pub fn start_syncing(&mut self, epoch: u64) {
        if self.state == SlotState::Awaiting {
            self.state = SlotState::Syncing { touched: BTreeSet::new(), since: epoch };
            self.writes_since = epoch;
            self.received.clear();
            self.scope = None;
        }
    }

    /// The hand-off this slot was awaiting is done, and the new primary took the data exactly as
    /// sent: the data kept here is its copy, and the primary took no write of the slot meanwhile
    /// (this secondary refused them while awaiting): up to date at once, taking the primary's
    /// writes from `epoch`, the hand-off's. Returns whether the slot was awaiting.
    pub fn keep_handed_off(&mut self, epoch: u64) -> bool {
        let awaiting = self.state == SlotState::Awaiting;
        if awaiting {
            self.state = SlotState::Ready;
            self.writes_since = epoch;
        }
        awaiting
    }

    /// The snapshot the primary read at `epoch` is complete: the slot is up to date, unless the
    /// snapshot is older than the catch-up.
    pub fn synced(&mut self, epoch: u64) {
        if matches!(self.state, SlotState::Syncing { since, .. } if epoch >= since) {
            self.state = SlotState::Ready;
            self.received.clear();
            self.scope = None;
        }
    }

    /// Whether `key` has a write prepared here and not known to be committed: a read must then
    /// ask the primary, which alone knows whether it is.
    pub fn is_dirty(&self, key: &str) -> bool {
        self.dirty.contains_key(key)
    }

    /// Holds a prepared write until it is committed, and drops the `aborted` ones: earlier
    /// writes of the same key the primary prepared but never applied (some secondary did not
    /// take them), so that a takeover cannot commit them under a write computed without them.
    /// A write older than the newest prepared here is a late duplicate, and ignored.
    pub fn prepare(&mut self, write: ReplicatedWrite, aborted: &[u64]) {
        if write.seq <= self.last_prepared {
            return;
        }
        self.last_prepared = write.seq;
        for seq in aborted {
            if let Some(dropped) = self.pending.remove(seq) {
                self.undirty(&dropped.key);
            }
        }
        *self.dirty.entry(write.key.clone()).or_default() += 1;
        self.pending.insert(write.seq, write);
    }

    /// The primary committed write `seq`: returns it to apply, or nothing if it is not here
    /// (committed already, or superseded). Older pending writes of the same key are dropped:
    /// they were committed before it (and their effect is overwritten), or never will be.
    pub fn commit(&mut self, seq: u64) -> Option<ReplicatedWrite> {
        let write = self.pending.remove(&seq)?;
        self.undirty(&write.key);
        let older: Vec<u64> =
            self.pending.range(..seq).filter(|(_, w)| w.key == write.key).map(|(s, _)| *s).collect();
        for s in older {
            self.pending.remove(&s);
            self.undirty(&write.key);
        }
        self.touch(&write.key);
        Some(write)
    }

    /// A write applied at once (eventual consistency, or a commit): snapshot entries of its key
    /// are now older than what is here.
    pub fn touch(&mut self, key: &str) {
        if let SlotState::Syncing { touched, .. } = &mut self.state {
            touched.insert(key.to_owned());
        }
    }

    /// Whether this copy takes a snapshot the primary read at `epoch`: it is catching up, since
    /// that epoch or before.
    pub fn takes_snapshot(&self, epoch: u64) -> bool {
        matches!(&self.state, SlotState::Syncing { since, .. } if epoch >= *since)
    }

    /// Whether an entry for `key` of a snapshot the primary read at `epoch` should be applied:
    /// only while catching up, from a snapshot no older than the catch-up, and only if no write
    /// has reached the key since the catch-up began.
    pub fn takes_snapshot_of(&self, key: &str, epoch: u64) -> bool {
        self.takes_snapshot(epoch)
            && matches!(&self.state, SlotState::Syncing { touched, .. } if !touched.contains(key))
    }

    /// The snapshot under way sends `scope` whole (the keys of its other buckets were found
    /// equal to the primary's).
    pub fn set_scope(&mut self, scope: SnapshotScope) {
        if matches!(self.state, SlotState::Syncing { .. }) {
            self.scope = Some(scope);
        }
    }

    /// What the snapshot under way sends whole, if it said.
    pub fn scope(&self) -> Option<&SnapshotScope> {
        self.scope.as_ref()
    }

    /// A snapshot entry of `key` was applied.
    pub fn received(&mut self, key: &str) {
        if matches!(self.state, SlotState::Syncing { .. }) {
            self.received.insert(key.to_owned());
        }
    }

    /// Whether `key`, held in this copy's engine, is left over from before the catch-up and
    /// gone at the primary: the copy is catching up, the snapshot that completes it sent `key`'s
    /// bucket whole (`scope`) without it, and no write has reached it since the catch-up began.
    pub fn is_stale(&self, key: &str, scope: &SnapshotScope) -> bool {
        match &self.state {
            SlotState::Syncing { touched, .. } => {
                scope.covers(key) && !touched.contains(key) && !self.received.contains(key)
            }
            _ => false,
        }
    }

    /// Whether this copy, catching up, holds `key` as the primary has it (or both lack it): a
    /// write or a snapshot entry reached it, a write of it is prepared, or its bucket was found
    /// equal to the primary's. A key that is not may be left over from before the catch-up, or
    /// stale. A copy not catching up answers `true`.
    pub fn is_caught_up(&self, key: &str) -> bool {
        let SlotState::Syncing { touched, .. } = &self.state else { return true };
        touched.contains(key)
            || self.received.contains(key)
            || self.dirty.contains_key(key)
            || self.scope.as_ref().is_some_and(|scope| !scope.covers(key))
    }

    /// Takes every prepared write, oldest first, to commit them all: this server takes over
    /// from a failed primary, which may have acknowledged any of them. For each key only the
    /// newest counts (values are whole), and applying them in order leaves it.
    pub fn take_pending(&mut self) -> Vec<ReplicatedWrite> {
        self.dirty.clear();
        let pending = std::mem::take(&mut self.pending).into_values().collect::<Vec<_>>();
        for write in &pending {
            self.touch(&write.key);
        }
        pending
    }

    /// Takes the slot over from its failed primary: returns what the copy holds, and every
    /// prepared write to commit first ([`SlotReplica::take_pending`]), whose keys count as
    /// written. The caller resets the slot after.
    pub fn take_over(&mut self) -> (Takeover, Vec<ReplicatedWrite>) {
        let pending = self.take_pending();
        let takeover = match &mut self.state {
            SlotState::Ready => Takeover::Complete,
            SlotState::Syncing { touched, .. } => Takeover::Partial { written: std::mem::take(touched) },
            SlotState::Idle | SlotState::Awaiting => Takeover::Partial { written: BTreeSet::new() },
        };
        (takeover, pending)
    }

    /// The writes prepared and not committed, oldest first, left in place.
    pub fn prepared(&self) -> Vec<ReplicatedWrite> {
        self.pending.values().cloned().collect()
    }

    /// Number of writes prepared and not committed.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    fn undirty(&mut self, key: &str) {
        if let Some(count) = self.dirty.get_mut(key) {
            *count -= 1;
            if *count == 0 {
                self.dirty.remove(key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(seq: u64, key: &str, value: &str) -> ReplicatedWrite {
        ReplicatedWrite { seq, key: key.to_owned(), value: Some(value.to_owned()), session: None }
    }

    impl SlotReplica {
        fn prepare_(&mut self, write: ReplicatedWrite) {
            self.prepare(write, &[]);
        }
    }

    fn syncing() -> SlotReplica {
        let mut slot = SlotReplica::default();
        slot.reset(SlotState::Syncing { touched: BTreeSet::new(), since: 3 });
        slot
    }

    #[test]
    fn a_copy_handed_off_as_is_is_up_to_date_at_once() {
        let mut slot = SlotReplica::default();
        assert!(!slot.keep_handed_off(12), "only a copy awaiting its hand-off");
        slot.reset(SlotState::Awaiting);
        assert!(!slot.takes_writes());
        assert!(slot.keep_handed_off(12));
        assert!(slot.is_ready() && slot.takes_writes());
    }

    #[test]
    fn a_copy_takes_no_write_sent_before_its_primary_took_the_slot() {
        // The slot's primary took it from this server at epoch 12; a prepare sent at epoch 10
        // under the same address comes late from an earlier process there, whose numbers are
        // higher than the new primary's: taken, a takeover would commit it over newer writes.
        let mut kept = SlotReplica::default();
        kept.reset(SlotState::Awaiting);
        kept.keep_handed_off(12);
        assert!(!kept.takes_writes_from(10) && !kept.takes_writes_from(11));
        assert!(kept.takes_writes_from(12) && kept.takes_writes_from(13));
        // A copy that caught up from epoch 3 takes its primary's writes from epoch 3 on.
        let mut caught_up = syncing();
        caught_up.synced(3);
        assert!(caught_up.is_ready());
        assert!(!caught_up.takes_writes_from(2) && caught_up.takes_writes_from(3));
    }

    #[test]
    fn a_prepared_key_is_dirty_until_its_write_is_committed() {
        let mut slot = SlotReplica::default();
        slot.reset(SlotState::Ready);
        slot.prepare_(write(1, "k", "a"));
        assert!(slot.is_dirty("k"));
        assert!(!slot.is_dirty("other"));
        assert_eq!(slot.commit(1), Some(write(1, "k", "a")));
        assert!(!slot.is_dirty("k"));
        assert_eq!(slot.commit(1), None, "a commit comes once");
    }

    #[test]
    fn a_late_commit_of_an_older_write_is_ignored() {
        let mut slot = syncing();
        slot.prepare_(write(1, "k", "a"));
        slot.prepare_(write(2, "k", "b"));
        slot.prepare_(write(3, "j", "c"));
        assert_eq!(slot.commit(2), Some(write(2, "k", "b")));
        assert!(!slot.is_dirty("k"), "the older write of k went with the newer");
        assert_eq!(slot.commit(1), None, "never apply an older value over a newer one");
        assert!(slot.is_dirty("j"), "other keys keep their pending writes");
        assert_eq!(slot.pending(), 1);
    }

    #[test]
    fn an_aborted_write_stays_dirty_until_a_later_commit_of_its_key() {
        let mut slot = syncing();
        slot.prepare_(write(1, "k", "never committed"));
        slot.prepare_(write(2, "k", "b"));
        assert!(slot.is_dirty("k"));
        assert_eq!(slot.commit(2).map(|w| w.value), Some(Some("b".to_owned())));
        assert!(!slot.is_dirty("k"));
        assert_eq!(slot.pending(), 0);
    }

    #[test]
    fn snapshot_entries_yield_to_writes_applied_since_the_catch_up_began() {
        let mut slot = SlotReplica::default();
        assert!(!slot.takes_snapshot_of("k", 3), "not a secondary");
        slot.reset(SlotState::Awaiting);
        assert!(!slot.takes_writes() && !slot.takes_snapshot_of("k", 3));
        slot.start_syncing(3);
        assert!(slot.takes_writes() && !slot.is_ready());
        slot.touch("k");
        slot.prepare_(write(1, "p", "x"));
        assert!(!slot.takes_snapshot_of("k", 3));
        assert!(slot.takes_snapshot_of("p", 3), "a prepared write may be aborted: only commits count");
        slot.commit(1);
        assert!(!slot.takes_snapshot_of("p", 3));
        slot.synced(3);
        assert!(slot.is_ready());
        assert!(!slot.takes_snapshot_of("j", 3), "a ready slot takes no snapshot");
    }

    #[test]
    fn a_takeover_commits_every_prepared_write_in_order() {
        let mut slot = syncing();
        slot.prepare_(write(1, "k", "a"));
        slot.prepare_(write(2, "k", "b"));
        slot.prepare_(write(3, "j", "c"));
        let seqs: Vec<u64> = slot.take_pending().iter().map(|w| w.seq).collect();
        assert_eq!(seqs, [1, 2, 3]);
        assert!(!slot.is_dirty("k") && slot.pending() == 0);
    }

    #[test]
    fn a_write_the_primary_never_applied_is_dropped_by_the_next_one_of_its_key() {
        let mut slot = syncing();
        // 1 was prepared here, failed elsewhere, and was not applied; 2 was computed without it.
        slot.prepare_(write(1, "k", "popped"));
        slot.prepare_(write(2, "j", "other key"));
        slot.prepare(write(3, "k", "appended"), &[1]);
        let taken: Vec<u64> = slot.take_pending().iter().map(|w| w.seq).collect();
        assert_eq!(taken, [2, 3], "a takeover must not commit 1 (its answer would be a lie)");
    }

    #[test]
    fn a_late_duplicate_prepare_is_ignored() {
        let mut slot = syncing();
        slot.prepare_(write(1, "k", "a"));
        slot.prepare_(write(2, "k", "b"));
        assert_eq!(slot.commit(2).map(|w| w.seq), Some(2));
        slot.prepare_(write(1, "k", "a"));
        assert!(!slot.is_dirty("k"), "an older attempt arriving late is not pending again");
        assert!(slot.take_pending().is_empty());
        slot.reset(SlotState::Ready);
        slot.prepare_(write(1, "k", "a"));
        assert!(slot.is_dirty("k"), "a new primary numbers from its own count");
    }

    #[test]
    fn a_takeover_says_which_keys_are_up_to_date() {
        let mut ready = SlotReplica::default();
        ready.reset(SlotState::Ready);
        ready.prepare_(write(1, "k", "a"));
        assert_eq!(ready.take_over(), (Takeover::Complete, vec![write(1, "k", "a")]));

        let mut catching_up = syncing();
        catching_up.touch("written");
        catching_up.prepare_(write(2, "prepared", "b"));
        let (takeover, pending) = catching_up.take_over();
        assert_eq!(pending, vec![write(2, "prepared", "b")]);
        let written = BTreeSet::from(["written".to_owned(), "prepared".to_owned()]);
        assert_eq!(takeover, Takeover::Partial { written });

        assert_eq!(SlotReplica::default().take_over().0, Takeover::Partial { written: BTreeSet::new() });
    }

    #[test]
    fn a_snapshot_older_than_the_catch_up_is_refused() {
        let mut slot = syncing();
        assert!(!slot.takes_snapshot_of("k", 2), "read before this catch-up began");
        assert!(!slot.takes_writes_from(2) && slot.takes_writes_from(3));
        slot.synced(2);
        assert!(!slot.is_ready(), "an old snapshot does not make the copy ready");
        assert!(slot.takes_snapshot_of("k", 3) && slot.takes_snapshot_of("k", 4));
        slot.synced(4);
        assert!(slot.is_ready());
    }

    #[test]
    fn keys_left_from_before_the_catch_up_are_stale_only_in_buckets_sent_whole() {
        let whole = SnapshotScope::whole(0);
        let mut slot = syncing();
        slot.touch("written");
        slot.received("sent");
        slot.prepare_(write(1, "prepared", "x"));
        assert!(slot.is_stale("left over", &whole));
        assert!(!slot.is_stale("written", &whole), "a write reached it: the primary's value");
        assert!(!slot.is_stale("sent", &whole), "the primary had it");
        let none = SnapshotScope { slot: 0, buckets: 1, sent: Vec::new() };
        assert!(!slot.is_stale("left over", &none), "its bucket was equal at the primary");
        for key in ["written", "sent", "prepared"] {
            assert!(slot.is_caught_up(key), "{key}");
        }
        assert!(!slot.is_caught_up("left over"));
        slot.set_scope(none.clone());
        assert!(slot.is_caught_up("left over"), "its bucket was found equal");
        slot.set_scope(whole.clone());
        assert!(!slot.is_caught_up("left over"));

        slot.synced(3);
        assert!(!slot.is_stale("left over", &whole), "a ready copy has nothing left over");
        assert!(slot.is_caught_up("left over"));
        slot.set_scope(none);
        assert_eq!(slot.scope(), None, "only a copy catching up keeps a scope");
        slot.reset(SlotState::Syncing { touched: BTreeSet::new(), since: 4 });
        assert!(slot.is_stale("sent", &whole), "a new catch-up forgets what the last one received");
    }

    #[test]
    fn reset_forgets_pending_writes() {
        let mut slot = syncing();
        slot.prepare_(write(1, "k", "a"));
        slot.reset(SlotState::Idle);
        assert!(!slot.is_dirty("k"));
        assert_eq!(slot.commit(1), None);
        assert!(!slot.takes_writes());
    }
}
