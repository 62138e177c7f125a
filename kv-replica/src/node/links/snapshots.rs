//! A primary's catch-up of a secondary's copies: the snapshots a link owes, sent after asking the
//! secondary's digests (the protocol is in `kv_replica`'s docs, "Catching up").

use std::collections::{BTreeMap, BTreeSet};

use crate::Error;
use crate::digest::{SlotDigest, SnapshotScope};
use crate::messages::{Replicate, ReplicateAck, SlotWrite, WriteKind};
use kv_core::SessionRecord;
use kv_shard::messages::CatchUpStats;
use kv_shard::{Config, Slot};
use tracing::{debug, info};

use super::super::batches::{BATCH_BYTES, SlotReader, snapshot_batches};
use super::super::calls::{ATTEMPT_TIMEOUT, replicate_until};
use super::super::catchup;
use super::super::view::{lock, slot_set};
use super::{DIGEST_SLOTS, Link, Links};

impl Links {
    /// Sends the snapshots `link` is owed, of the slots this server serves now, a group of
    /// slots at a time: asks the secondary's digests of its copies, then sends the keys of the
    /// buckets that differ (see the crate's docs, "Catching up").
    pub(super) async fn send_snapshots(&self, link: &Link) -> bool {
        let owed: Vec<(Slot, u64)> = lock(&link.snapshots).iter().map(|(&s, &e)| (s, e)).collect();
        if owed.is_empty() {
            return true;
        }
        let ready: Vec<Slot> = {
            let table = self.routing.read().await;
            owed.iter().map(|&(slot, _)| slot).filter(|&slot| table.ownership.check(slot).is_ok()).collect()
        };
        if ready.is_empty() {
            return false;
        }
        let view = self.view.get();
        let set = slot_set(&ready);
        let started = self.clock.now();
        let mut sent = CatchUpStats::default();
        // Slots the secondary could not take yet (it still hands them off itself): the others
        // go on, so that no two hand-offs wait on each other's catch-up; these go again later,
        // whole, and are never marked synced from a part.
        let mut refused = BTreeSet::new();
        // Digests are asked once per group; a secondary that does not answer in time is sent
        // every slot left whole, in one pass, as if it had no digests: snapshot batches land
        // even when their answers come too late, a question's answer does not.
        let mut start = 0;
        while start < ready.len() {
            let end = (start + DIGEST_SLOTS).min(ready.len());
            let ack = match self.ask_digests(&view, link, &ready[start..end]).await {
                Ok(ack) => Some(ack),
                // Asked, and no answer in time: the batches may still land.
                Err(Error::Interrupted(why)) => {
                    debug!(to = link.to, reason = why, "no digests in time: every slot left goes whole");
                    None
                }
                Err(err) => {
                    debug!(to = link.to, reason = %err, "no digests");
                    return false;
                }
            };
            let group = if ack.is_some() { &ready[start..end] } else { &ready[start..] };
            start += group.len();
            let ack = ack.unwrap_or_default();
            refused.extend(ack.refused);
            let digests: BTreeMap<Slot, SlotDigest> = ack
                .digests
                .into_iter()
                .filter(|d| d.is_well_formed() && group.contains(&d.slot) && !refused.contains(&d.slot))
                .map(|d| (d.slot, d))
                .collect();
            sent.digest_bytes += digests.values().map(|d| d.bytes() as u64).sum::<u64>();
            let mut batch = snapshot(Vec::new(), Vec::new(), Vec::new());
            let mut bytes = 0;
            for &slot in group {
                if refused.contains(&slot) {
                    continue;
                }
                let Ok((entries, records, scope)) = self.read_slot(slot, digests.get(&slot)).await else {
                    return false;
                };
                sent.slots += 1;
                sent.slots_equal += u64::from(scope.sent.is_empty());
                sent.keys += entries.len() as u64;
                sent.bytes += entries.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum::<u64>();
                // The scope goes with the first part (the copy keeps it: its keys in the buckets
                // not sent are the primary's from then on), and counts at the last.
                let mut scope = Some(scope);
                let mut records = Some(records);
                let mut parts = snapshot_batches(entries, &[slot]).into_iter().peekable();
                while let Some((writes, done)) = parts.next() {
                    bytes += writes
                        .iter()
                        .map(|w| w.write.key.len() + w.write.value.as_ref().map_or(0, String::len))
                        .sum::<usize>();
                    batch.writes.extend(writes);
                    batch.sessions.extend(records.take().unwrap_or_default());
                    batch.scopes.extend(scope.take());
                    if !done.is_empty() {
                        batch.synced.push(slot);
                    }
                    // A slot's first part, with its records, is taken before the next goes: if
                    // it was refused, the rest is not sent.
                    if bytes >= BATCH_BYTES || parts.peek().is_some() {
                        let full =
                            std::mem::replace(&mut batch, snapshot(Vec::new(), Vec::new(), Vec::new()));
                        bytes = 0;
                        let Some(ack) = self.send(&view, link, full).await else { return false };
                        refused.extend(ack.refused);
                        if refused.contains(&slot) {
                            break;
                        }
                    }
                }
            }
            if !batch.synced.is_empty() || !batch.writes.is_empty() {
                let Some(ack) = self.send(&view, link, batch).await else { return false };
                refused.extend(ack.refused);
            }
        }
        // Only the debts this send paid: an install meanwhile may have owed a slot anew.
        let paid: BTreeMap<Slot, u64> =
            owed.into_iter().filter(|(slot, _)| !refused.contains(slot)).collect();
        lock(&link.snapshots)
            .retain(|slot, epoch| !(set[usize::from(*slot)] && paid.get(slot) == Some(epoch)));
        info!(
            to = link.to,
            slots = ready.len() - refused.len(),
            equal = sent.slots_equal,
            later = refused.len(),
            keys = sent.keys,
            bytes = sent.bytes,
            digest_bytes = sent.digest_bytes,
            took = ?self.clock.now() - started,
            "secondary caught up"
        );
        lock(&self.caught_up).add(&sent);
        refused.is_empty()
    }

    /// What a snapshot of `slot` sends: the keys of the buckets whose sums differ from the
    /// secondary's `digest` (all of them without one), with their values, the slot's
    /// exactly-once records, and what was sent (the scope). All read together under the slot's
    /// write lock ([`super::super::primary::SlotLocks`], as a flush does): no write of the slot
    /// is half done then, so every write a value holds has its record (a write this copy refused
    /// while it awaited its own hand-off reaches it only this way), and every record its write's
    /// value, including those of the buckets not sent, whose sums were equal to the copy's. The
    /// slot is read a part at a time, twice with a digest (its sums, then the keys to send); the
    /// keys to send are held in memory.
    async fn read_slot(
        &self,
        slot: Slot,
        digest: Option<&SlotDigest>,
    ) -> kv_core::Result<(Vec<(String, String)>, Vec<SessionRecord>, SnapshotScope)> {
        let _writes_held = self.slot_locks[usize::from(slot)].lock().await;
        let records = self.sessions.export(|tag| tag == slot);
        let scope = match digest {
            Some(digest) => {
                let ours = catchup::entries(self.storage.as_ref(), &[slot]).await?;
                let ours = ours.get(&slot).map_or(&[][..], Vec::as_slice);
                let sent = crate::digest::differing(digest, ours).into_iter().collect();
                SnapshotScope { slot, buckets: digest.buckets, sent }
            }
            None => SnapshotScope::whole(slot),
        };
        let mut entries = Vec::new();
        if scope.sent.is_empty() {
            return Ok((entries, records, scope));
        }
        let mut reader = SlotReader::new(self.storage.as_ref(), &[slot]);
        while let Some((part, _)) = reader.next().await? {
            entries.extend(part.into_iter().filter(|(key, _)| scope.covers(key)));
        }
        Ok((entries, records, scope))
    }

    /// Counts what a hand-off sent (see [`CatchUpStats`]).
    pub(crate) fn count(&self, sent: &CatchUpStats) {
        lock(&self.caught_up).add(sent);
    }

    /// The digests of `link`'s copies of `group`: asked again while the secondary is unreachable
    /// or behind, for at most two attempts' time (see `send_snapshots`).
    async fn ask_digests(&self, view: &Config, link: &Link, group: &[Slot]) -> Result<ReplicateAck, Error> {
        let ask = Replicate {
            epoch: view.epoch(),
            from: self.view.me().to_owned(),
            kind: WriteKind::Snapshot,
            digest: group.to_vec(),
            ..Replicate::default()
        };
        let deadline = self.clock.now() + ATTEMPT_TIMEOUT * 2;
        replicate_until(self.peers.as_ref(), self.clock.as_ref(), &link.to, &ask, deadline).await
    }
}

/// A catch-up snapshot batch: `writes`, the slots it completes with what was sent of them
/// (`synced`), and exactly-once records.
fn snapshot(writes: Vec<SlotWrite>, synced: Vec<SnapshotScope>, sessions: Vec<SessionRecord>) -> Replicate {
    Replicate {
        writes,
        kind: WriteKind::Snapshot,
        synced: synced.iter().map(|scope| scope.slot).collect(),
        scopes: synced,
        sessions,
        ..Replicate::default()
    }
}
