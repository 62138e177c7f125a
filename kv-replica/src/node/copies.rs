//! A storage server's copies of the slots it is a secondary of: what it takes from their
//! primaries (prepares, commits, eventual writes, catch-up snapshots), the reads it serves from
//! them, and the copies it keeps of slots it stopped being a secondary of, in case their primary
//! dies before its hand-off is done (the protocol is in `kv_replica`'s docs).
//!
//! Locks, and why they cannot form a cycle between servers:
//! - a replication batch takes only the locks of its slots' copies, one at a time, never the
//!   routing lock, and waits for nothing remote;
//! - a read holds a copy's lock only while it looks at its own engine; one that must ask the
//!   primary lets go first;
//! - a copy still awaiting its hand-off (this server was its primary) answers its new primary's
//!   writes *aborted*, which the primary does not retry: a primary waiting there would hold its
//!   routing lock, which the hand-off's transfers to it need.
//!
//! An install holds the locks of the copies whose role changes while it resets them and
//! switches the view, so a batch, which checks the view only once it holds the copy's lock,
//! never applies an old primary's write to a new copy.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use crate::digest::SnapshotScope;
use crate::messages::{Replicate, ReplicateAck, SlotWrite, WriteKind};
use crate::transport::PeerCalls;
use crate::{Error, ReplicatedWrite, Role, SlotReplica, SlotState, Takeover, role};
use kv_core::{Answer, Mutation, SessionRecord, Sessions, Storage};
use kv_shard::clock::Clock;
use kv_shard::{Config, Consistency, SLOTS, Slot, slot_of};
use tokio::sync::MutexGuard;
use tracing::{debug, info};

use super::catchup;
use super::leases::Leases;
use super::plan::copy_resets;
use super::view::{View, lock, slot_set, slots_where};

/// Longest a read at a secondary waits for the primary it has to ask.
const READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// The copy a secondary kept of a slot whose primary handed it off at a move: if that primary
/// dies before the hand-off is done, this copy is sent in its place.
#[derive(Debug)]
struct Retired {
    /// The epoch of the move.
    epoch: u64,
    /// The primary that was handing the slot off.
    primary: String,
    entries: Vec<(String, String)>,
    sessions: Vec<SessionRecord>,
}

/// A kept copy's data: its keys and values, and its exactly-once records.
pub(crate) type KeptCopy = (Vec<(String, String)>, Vec<SessionRecord>);

/// The secondary side of a storage server.
pub(crate) struct Copies {
    view: Arc<View>,
    storage: Arc<dyn Storage>,
    sessions: Arc<Sessions>,
    leases: Arc<Leases>,
    peers: Arc<dyn PeerCalls>,
    clock: Arc<dyn Clock>,
    /// Each slot's copy.
    slots: Vec<tokio::sync::Mutex<SlotReplica>>,
    /// Copies of slots that moved away from their primary, kept until the move is over.
    retired: Mutex<BTreeMap<Slot, Retired>>,
}

impl std::fmt::Debug for Copies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Copies").field("retired", &lock(&self.retired).len()).finish_non_exhaustive()
    }
}

/// Sets `key` to `value` (or removes it) in `storage`.
async fn store(storage: &dyn Storage, key: String, value: Option<String>) -> Result<(), kv_core::Error> {
    let mutation = match value {
        Some(value) => Mutation::put(key, value),
        None => Mutation::delete(key),
    };
    storage.apply(mutation).await.map(drop)
}

impl Copies {
    pub(crate) fn new(
        view: Arc<View>,
        storage: Arc<dyn Storage>,
        sessions: Arc<Sessions>,
        leases: Arc<Leases>,
        peers: Arc<dyn PeerCalls>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Copies {
            view,
            storage,
            sessions,
            leases,
            peers,
            clock,
            slots: (0..SLOTS).map(|_| tokio::sync::Mutex::new(SlotReplica::default())).collect(),
            retired: Mutex::new(BTreeMap::new()),
        }
    }

    /// How many secondary slots are up to date, and which are not yet, for `Status`.
    pub(crate) async fn readiness(&self) -> (u32, Vec<Slot>) {
        let mut ready = 0;
        let mut unready = Vec::new();
        for (slot, copy) in (0..).zip(&self.slots) {
            match copy.lock().await.state() {
                SlotState::Ready => ready += 1,
                SlotState::Syncing { .. } | SlotState::Awaiting => unready.push(slot),
                SlotState::Idle => {}
            }
        }
        (ready, unready)
    }

    /// The copies kept of slots this server stopped being a secondary of, by their primary.
    pub(crate) fn retired(&self) -> BTreeMap<String, Vec<Slot>> {
        let mut by_primary: BTreeMap<String, Vec<Slot>> = BTreeMap::new();
        for (&slot, copy) in lock(&self.retired).iter() {
            by_primary.entry(copy.primary.clone()).or_default().push(slot);
        }
        by_primary
    }

    /// A read at a secondary of `key`'s slot, if this server is a ready one; `refused` (the
    /// primary's refusal) otherwise.
    pub(crate) async fn read(
        &self,
        key: &str,
        slot: Slot,
        refused: kv_core::Error,
    ) -> Result<Option<String>, kv_core::Error> {
        let primary = {
            let copy = self.slots[usize::from(slot)].lock().await;
            if !copy.is_ready() {
                return Err(refused);
            }
            let view = self.view.get();
            if view.replication().consistency == Consistency::Eventual {
                return self.storage.get(key).await;
            }
            self.leases.secondary_lease(&view, slot)?;
            if !copy.is_dirty(key) {
                return self.storage.get(key).await;
            }
            view.owner_of_slot(slot).and_then(|id| view.address(id)).map(str::to_owned)
        };
        // A write of the key is prepared here and may be committed: only the primary knows.
        let Some(primary) = primary else { return Err(refused) };
        self.peers.read(&primary, key, READ_TIMEOUT).await.map_err(|err| {
            kv_core::Error::Replication(format!(
                "the read had to ask the primary {primary}, which answered: {err}"
            ))
        })
    }

    /// Takes one replication batch from a primary; answers the slots of a snapshot batch not
    /// taken, because this server still hands them off (it was their primary).
    pub(crate) async fn replicate(&self, batch: Replicate) -> Result<ReplicateAck, Error> {
        let Replicate { epoch, from, writes, kind, commits, synced, sessions, digest, scopes } = batch;
        let view = self.view.get();
        if epoch > view.epoch() {
            return Err(Error::Unavailable(format!(
                "this server is at epoch {}, behind the sender's {epoch}; retry",
                view.epoch()
            )));
        }
        let mut refused = BTreeSet::new();
        let digests = if kind == WriteKind::Snapshot && !digest.is_empty() {
            let mut taking = Vec::new();
            for slot in digest {
                match self.snapshot_copy(&from, slot, epoch).await? {
                    None => {
                        refused.insert(slot);
                    }
                    // A ready copy answers too: the primary then sends what differs (nothing, mostly)
                    // rather than everything, if it missed that this copy caught up.
                    Some(copy) if copy.takes_snapshot(epoch) || copy.is_ready() => taking.push(slot),
                    Some(_) => {}
                }
            }
            // Read without the copies' locks: a write that reaches a key meanwhile touches it,
            // and a touched key's value is the primary's whatever its bucket's sums say.
            catchup::digests(self.storage.as_ref(), &taking).await.map_err(Error::storage)?
        } else {
            Vec::new()
        };
        if kind == WriteKind::Snapshot {
            for scope in &scopes {
                if let Some(mut copy) = self.snapshot_copy(&from, scope.slot, epoch).await?
                    && copy.takes_snapshot(epoch)
                {
                    copy.set_scope(scope.clone());
                }
            }
        }
        for SlotWrite { slot, write, aborted } in writes {
            if slot_of(&write.key) != slot {
                return Err(Error::InvalidArgument(format!("key {:?} is not in slot {slot}", write.key)));
            }
            if refused.contains(&slot) {
                continue;
            }
            let mut copy = if kind == WriteKind::Snapshot {
                let Some(copy) = self.snapshot_copy(&from, slot, epoch).await? else {
                    refused.insert(slot);
                    continue;
                };
                copy
            } else {
                self.copy_from(&from, slot).await?
            };
            if kind != WriteKind::Snapshot && !copy.takes_writes_from(epoch) {
                return Err(Error::FailedPrecondition(format!(
                    "slot {slot} started catching up after epoch {epoch}: this write is older than its copy"
                )));
            }
            match kind {
                WriteKind::Prepare => copy.prepare(write, &aborted),
                WriteKind::Apply => {
                    copy.touch(&write.key);
                    self.apply(write).await?;
                }
                WriteKind::Snapshot => {
                    if copy.takes_snapshot_of(&write.key, epoch) {
                        copy.received(&write.key);
                        self.apply(write).await?;
                    }
                }
            }
        }
        for committed in commits {
            // A slot not (or no longer) replicated here from `from` has nothing to commit: its
            // copy was reset. The batch's other commits still count.
            let Ok(mut copy) = self.copy_from(&from, committed.slot).await else { continue };
            // Nor one of an older epoch than its copy takes writes from: a late commit notice
            // from an earlier process at the primary's address names that process's numbers.
            if !copy.takes_writes_from(epoch) {
                continue;
            }
            if let Some(write) = copy.commit(committed.seq) {
                self.apply(write).await?;
            }
        }
        if kind == WriteKind::Snapshot && !sessions.is_empty() {
            self.import_snapshot_sessions(&from, epoch, sessions, &refused).await?;
        } else if kind == WriteKind::Apply && !sessions.is_empty() {
            self.import_background_sessions(&from, sessions).await;
        }
        for slot in synced {
            if refused.contains(&slot) {
                continue;
            }
            let Some(mut copy) = self.snapshot_copy(&from, slot, epoch).await? else {
                refused.insert(slot);
                continue;
            };
            if copy.takes_snapshot(epoch) {
                // What the snapshot that completes it sent whole: said in this batch, or in its
                // first; a snapshot that says nothing (a kept copy's) sent every key.
                let scope = scopes.iter().find(|s| s.slot == slot).or(copy.scope()).cloned();
                let scope = scope.unwrap_or_else(|| SnapshotScope::whole(slot));
                catchup::drop_stale(self.storage.as_ref(), &copy, slot, &scope)
                    .await
                    .map_err(Error::storage)?;
            }
            copy.synced(epoch);
            debug!(slot, from, "caught up");
        }
        Ok(ReplicateAck { refused: refused.into_iter().collect(), digests })
    }

    /// Takes the exactly-once records of a snapshot from `from`, read at `epoch`: the answers of
    /// the slots whose copy here is catching up and takes it (not those `refused`).
    async fn import_snapshot_sessions(
        &self,
        from: &str,
        epoch: u64,
        mut records: Vec<SessionRecord>,
        refused: &BTreeSet<Slot>,
    ) -> Result<(), Error> {
        let tags: BTreeSet<Slot> = records.iter().flat_map(|r| r.answers.iter().map(|a| a.tag)).collect();
        let mut taking = vec![false; SLOTS];
        for slot in tags {
            if refused.contains(&slot) || usize::from(slot) >= SLOTS {
                continue;
            }
            if let Ok(Some(copy)) = self.snapshot_copy(from, slot, epoch).await {
                taking[usize::from(slot)] = copy.takes_snapshot(epoch);
            }
        }
        for record in &mut records {
            record.answers.retain(|answer| taking.get(usize::from(answer.tag)).copied().unwrap_or(false));
        }
        self.sessions.import(records, self.clock.now());
        Ok(())
    }

    /// Takes the exactly-once records that come with background values (eventual mode): the
    /// answers of the slots this server is a secondary of under `from`.
    async fn import_background_sessions(&self, from: &str, mut records: Vec<SessionRecord>) {
        let tags: BTreeSet<Slot> = records.iter().flat_map(|r| r.answers.iter().map(|a| a.tag)).collect();
        let mut taking = vec![false; SLOTS];
        for slot in tags {
            if usize::from(slot) < SLOTS {
                taking[usize::from(slot)] = self.copy_from(from, slot).await.is_ok();
            }
        }
        for record in &mut records {
            record.answers.retain(|answer| taking.get(usize::from(answer.tag)).copied().unwrap_or(false));
        }
        self.sessions.import(records, self.clock.now());
    }

    /// The copy of `slot` that a snapshot from `from`, read at `epoch`, goes to; none if it
    /// cannot take it yet (it is still being handed off from here, or catching up since a later
    /// epoch): the slot is then refused, not silently dropped, and the primary sends it again.
    async fn snapshot_copy(
        &self,
        from: &str,
        slot: Slot,
        epoch: u64,
    ) -> Result<Option<MutexGuard<'_, SlotReplica>>, Error> {
        match self.copy_from(from, slot).await {
            Ok(copy) if matches!(copy.state(), SlotState::Syncing { .. }) && !copy.takes_snapshot(epoch) => {
                Ok(None)
            }
            Ok(copy) => Ok(Some(copy)),
            Err(Error::Aborted(_)) => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// The copy of `slot`, locked, if `from` is its primary and this server its secondary in
    /// the configuration held (checked under the lock, so an install cannot slip in between).
    async fn copy_from(&self, from: &str, slot: Slot) -> Result<MutexGuard<'_, SlotReplica>, Error> {
        let copy = self.slots[usize::from(slot)].lock().await;
        let view = self.view.get();
        let primary = view.owner_of_slot(slot).and_then(|id| view.address(id));
        if primary != Some(from) || role(&view, self.view.me(), slot) != Role::Secondary {
            return Err(Error::FailedPrecondition(format!(
                "at epoch {} this server is not a secondary of slot {slot} under {from}",
                view.epoch()
            )));
        }
        match copy.state() {
            // Not retried by the primary, whose write fails at once (the client retries): a
            // primary waiting here would hold its routing lock while this server's hand-off to
            // it waits for that lock.
            SlotState::Awaiting => {
                Err(Error::Aborted(format!("slot {slot} is still being handed off from here; retry")))
            }
            SlotState::Idle => Err(Error::FailedPrecondition(format!("slot {slot} is not replicated here"))),
            SlotState::Syncing { .. } | SlotState::Ready => Ok(copy),
        }
    }

    /// Applies a write its primary sent (with its exactly-once record) to the engine.
    async fn apply(&self, write: ReplicatedWrite) -> Result<(), Error> {
        store(self.storage.as_ref(), write.key, write.value).await.map_err(Error::storage)?;
        if let Some(record) = write.session {
            self.sessions.import(vec![record], self.clock.now());
        }
        Ok(())
    }

    /// Switches the copies from the configuration held to `next`, then the view, under the
    /// routing write lock: resets the copies this server cannot keep, keeps copies of slots that
    /// move away from their primary, drops the data of slots it no longer holds, and sets the
    /// leases' fences. `handing_off` are the slots whose data this server still holds to send
    /// away: their data is never dropped here. `takeovers` are the slots it becomes the primary
    /// of in place of a failed one: their prepared writes are committed, and the answer says,
    /// per slot, what its copy held, with how many copies were reset.
    pub(crate) async fn switch(
        &self,
        next: &Config,
        handing_off: &[Slot],
        takeovers: &[Slot],
    ) -> Result<(BTreeMap<Slot, Takeover>, usize), Error> {
        let previous = self.view.get();
        let taken_set = slot_set(takeovers);
        let plan = copy_resets(&previous, next, self.view.me(), handing_off, takeovers);
        let mut drop_data = plan.drop_data;
        // A later configuration means the moves of earlier ones are over.
        lock(&self.retired).retain(|_, copy| copy.epoch >= next.epoch());
        let mut guards = Vec::with_capacity(plan.resets.len());
        let mut committed = 0;
        let mut taken = BTreeMap::new();
        let mut retiring: BTreeMap<Slot, Vec<ReplicatedWrite>> = BTreeMap::new();
        let mut catching_up = vec![false; SLOTS];
        for (&slot, state) in &plan.resets {
            let mut copy = self.slots[usize::from(slot)].lock().await;
            // A copy that was never reset to anything holds no data to drop.
            if *copy.state() == SlotState::Idle && *state == SlotState::Idle {
                drop_data[usize::from(slot)] = false;
            }
            if taken_set[usize::from(slot)] {
                // Each prepared write may have been acknowledged by the failed primary.
                // What a copy catching up kept from before is not the primary's but where it
                // caught up (its prepared writes' keys included, committed below).
                catchup::drop_left_over(self.storage.as_ref(), &copy, slot).await.map_err(Error::storage)?;
                let (takeover, pending) = copy.take_over();
                for write in pending {
                    self.apply(write).await?;
                    committed += 1;
                }
                taken.insert(slot, takeover);
            } else if copy.is_ready() {
                // The slot moves away from its primary, or this server stops being its secondary:
                // keep a copy until the change is over (the copies that replace it may still be
                // catching up).
                retiring.insert(slot, copy.take_pending());
            }
            copy.reset(state.clone());
            if matches!(state, SlotState::Syncing { .. }) {
                catching_up[usize::from(slot)] = true;
            }
            guards.push(copy);
        }
        if !retiring.is_empty() {
            self.retire(&previous, next.epoch(), retiring).await?;
        }
        // A copy catching up keeps its data as its base, but not its exactly-once records: the
        // primary sends the slot's whole with the catch-up. (Only once the copies kept of slots
        // moving away have taken theirs.)
        self.sessions.forget(|slot| catching_up[usize::from(slot)]);
        if committed > 0 {
            info!(writes = committed, "committed the writes a failed primary had prepared");
        }
        if drop_data.iter().any(|&d| d) {
            let dropped = self
                .storage
                .remove_slots(slot_of, &slots_where(|slot| drop_data[usize::from(slot)]))
                .await
                .map_err(Error::storage)?;
            self.sessions.forget(|slot| drop_data[usize::from(slot)]);
            if dropped > 0 {
                info!(keys = dropped, "dropped copies this server no longer keeps");
            }
        }
        self.view.set(next.clone());
        self.leases.fence_install(&previous, next, takeovers);
        drop(guards);
        Ok((taken, plan.resets.len()))
    }

    /// Keeps copies of slots moving away from their primary (with the writes prepared here,
    /// which the primary may have acknowledged), in case it dies before its hand-off is done.
    async fn retire(
        &self,
        previous: &Config,
        epoch: u64,
        retiring: BTreeMap<Slot, Vec<ReplicatedWrite>>,
    ) -> Result<(), Error> {
        let set = slot_set(&retiring.keys().copied().collect::<Vec<_>>());
        let entries =
            self.storage.export(&|key| set[usize::from(slot_of(key))]).await.map_err(Error::storage)?;
        let mut by_slot: BTreeMap<Slot, BTreeMap<String, String>> = BTreeMap::new();
        for (key, value) in entries {
            by_slot.entry(slot_of(&key)).or_default().insert(key, value);
        }
        let sessions = self.sessions.export(|slot| set[usize::from(slot)]);
        let mut retired = lock(&self.retired);
        for (slot, pending) in retiring {
            let mut entries = by_slot.remove(&slot).unwrap_or_default();
            let mut records = Vec::new();
            for write in pending {
                match write.value {
                    Some(value) => entries.insert(write.key, value),
                    None => entries.remove(&write.key),
                };
                records.extend(write.session);
            }
            for record in &sessions {
                let answers: Vec<Answer> = record.answers.iter().filter(|a| a.tag == slot).cloned().collect();
                if !answers.is_empty() {
                    records.push(SessionRecord { client: record.client, floor: record.floor, answers });
                }
            }
            let Some(primary) = previous.owner_of_slot(slot).and_then(|id| previous.address(id)) else {
                continue;
            };
            retired.insert(
                slot,
                Retired {
                    epoch,
                    primary: primary.to_owned(),
                    entries: entries.into_iter().collect(),
                    sessions: records,
                },
            );
        }
        Ok(())
    }

    /// The copies kept of `slots`, which `sender` was moving at `epoch`; refused unless every
    /// one is kept here.
    pub(crate) fn kept(&self, epoch: u64, sender: &str, slots: &[Slot]) -> Result<KeptCopy, Error> {
        let retired = lock(&self.retired);
        let missing = slots
            .iter()
            .filter(|slot| !retired.get(slot).is_some_and(|c| c.epoch == epoch && c.primary == sender))
            .count();
        if missing > 0 {
            return Err(Error::FailedPrecondition(format!(
                "no copy kept here of {missing} of the slots {sender} was moving at epoch {epoch}"
            )));
        }
        let mut entries = Vec::new();
        let mut sessions = Vec::new();
        for slot in slots {
            if let Some(copy) = retired.get(slot) {
                entries.extend(copy.entries.iter().cloned());
                sessions.extend(copy.sessions.iter().cloned());
            }
        }
        Ok((entries, sessions))
    }

    /// The live copies of `slots`, if this server has not switched to `epoch` yet and is still
    /// an up-to-date secondary of every one of them under `sender`: a server that was to hand
    /// off slots of its own at that epoch may have been left behind when another sender died,
    /// and then holds what it would have retired, under the previous configuration. Its prepared
    /// writes are included (the dead primary may have acknowledged them), left in place.
    pub(crate) async fn live(&self, epoch: u64, sender: &str, slots: &[Slot]) -> Option<KeptCopy> {
        let view = self.view.get();
        if view.epoch() >= epoch {
            return None;
        }
        let primary_of = |slot: Slot| view.owner_of_slot(slot).and_then(|id| view.address(id));
        let mut prepared = Vec::new();
        for &slot in slots {
            if primary_of(slot) != Some(sender) || role(&view, self.view.me(), slot) != Role::Secondary {
                return None;
            }
            let copy = self.slots[usize::from(slot)].lock().await;
            if !copy.is_ready() {
                return None;
            }
            prepared.extend(copy.prepared());
        }
        let set = slot_set(slots);
        let entries = self.storage.export(&|key| set[usize::from(slot_of(key))]).await.ok()?;
        let mut entries: BTreeMap<String, String> = entries.into_iter().collect();
        let mut sessions = self.sessions.export(|slot| set[usize::from(slot)]);
        for write in prepared {
            match write.value {
                Some(value) => entries.insert(write.key, value),
                None => entries.remove(&write.key),
            };
            sessions.extend(write.session);
        }
        Some((entries.into_iter().collect(), sessions))
    }

    /// Forgets the copies kept of `slots` (they were sent).
    pub(crate) fn forget_kept(&self, slots: &[Slot]) {
        let mut retired = lock(&self.retired);
        for slot in slots {
            retired.remove(slot);
        }
    }

    /// Of `slots`, those whose copy here awaits their hand-off (this server was their primary,
    /// and stays a secondary).
    pub(crate) async fn awaiting(&self, slots: &[Slot]) -> Vec<Slot> {
        let mut awaiting = Vec::new();
        for &slot in slots {
            if *self.slots[usize::from(slot)].lock().await.state() == SlotState::Awaiting {
                awaiting.push(slot);
            }
        }
        awaiting
    }

    /// The hand-off of `slots` (as their old primary) is done, and their data dropped here but
    /// for `kept`: copies awaiting it of the `kept` slots (which the new primary took exactly as
    /// sent) are up to date with the data here, the other ones start catching up.
    pub(crate) async fn handed_off(&self, slots: &[Slot], kept: &[Slot]) {
        let epoch = self.view.get().epoch();
        let kept = slot_set(kept);
        for &slot in slots {
            let mut copy = self.slots[usize::from(slot)].lock().await;
            if kept[usize::from(slot)] {
                copy.keep_handed_off(epoch);
            } else {
                copy.start_syncing(epoch);
            }
        }
    }
}
