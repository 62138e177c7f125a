//! A primary's catch-up of a secondary's copies: the snapshots a link owes, sent after asking the
//! secondary's digests (the protocol is in `kv_replica`'s docs, "Catching up").

use std::collections::{BTreeMap, BTreeSet};

use crate::digest::{SlotDigest, SnapshotScope};
use crate::messages::{Replicate, ReplicateAck, SlotWrite, WriteKind};
use kv_core::SessionRecord;
use kv_shard::messages::CatchUpStats;
use kv_shard::{Config, Slot, slot_of};
use tracing::{debug, info};

use super::super::batches::{SlotReader, snapshot_batches};
use super::super::calls::ATTEMPT_TIMEOUT;
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
        let mut sessions = Some(self.sessions.export(|slot| set[usize::from(slot)]));
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
            let ack = self.ask_digests(&view, link, &ready[start..end]).await;
            let group = if ack.is_some() { &ready[start..end] } else { &ready[start..] };
            start += group.len();
            let ack = ack.unwrap_or_default();
            refused.extend(ack.refused);
            let digests: Vec<SlotDigest> = ack
                .digests
                .into_iter()
                .filter(|d| d.is_well_formed() && group.contains(&d.slot) && !refused.contains(&d.slot))
                .collect();
            sent.digest_bytes += digests.iter().map(|d| d.bytes() as u64).sum::<u64>();
            let Ok(differing) = catchup::differing(self.storage.as_ref(), &digests).await else {
                return false;
            };
            // Per slot with a digest: its buckets, and those to send whole.
            let scopes: BTreeMap<Slot, SnapshotScope> = digests
                .iter()
                .map(|d| {
                    let buckets = differing.get(&d.slot).cloned().unwrap_or_default();
                    (
                        d.slot,
                        SnapshotScope {
                            slot: d.slot,
                            buckets: d.buckets,
                            sent: buckets.into_iter().collect(),
                        },
                    )
                })
                .collect();
            let equal: Vec<Slot> = scopes.values().filter(|s| s.sent.is_empty()).map(|s| s.slot).collect();
            let reading: Vec<Slot> = group
                .iter()
                .copied()
                .filter(|slot| !refused.contains(slot) && !equal.contains(slot))
                .collect();
            sent.slots += (group.len() - group.iter().filter(|s| refused.contains(s)).count()) as u64;
            sent.slots_equal += equal.len() as u64;
            // Equal copies are up to date as they are: one batch marks them so.
            if !equal.is_empty() {
                let records = sessions.take().unwrap_or_default();
                let synced = equal.iter().map(|&slot| scopes[&slot].clone()).collect();
                let Some(ack) = self.send(&view, link, snapshot(Vec::new(), synced, records)).await else {
                    return false;
                };
                refused.extend(ack.refused);
            }
            // Read from the engine a part at a time: a snapshot never has to fit in memory.
            let mut reader = SlotReader::new(self.storage.as_ref(), &reading);
            loop {
                let Ok(part) = reader.next().await else { return false };
                let Some((mut entries, finished)) = part else { break };
                entries.retain(|(key, _)| scopes.get(&slot_of(key)).is_none_or(|scope| scope.covers(key)));
                sent.keys += entries.len() as u64;
                sent.bytes += entries.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum::<u64>();
                for (writes, mut done) in snapshot_batches(entries, &finished) {
                    done.retain(|slot| !refused.contains(slot));
                    let synced = done
                        .iter()
                        .map(|&slot| scopes.get(&slot).cloned().unwrap_or_else(|| SnapshotScope::whole(slot)))
                        .collect();
                    let records = sessions.take().unwrap_or_default();
                    let Some(ack) = self.send(&view, link, snapshot(writes, synced, records)).await else {
                        return false;
                    };
                    refused.extend(ack.refused);
                }
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

    /// The digests of `link`'s copies of `group`, asked once (see `send_snapshots`).
    async fn ask_digests(&self, view: &Config, link: &Link, group: &[Slot]) -> Option<ReplicateAck> {
        let ask = Replicate {
            epoch: view.epoch(),
            from: self.view.me().to_owned(),
            kind: WriteKind::Snapshot,
            digest: group.to_vec(),
            ..Replicate::default()
        };
        match self.peers.replicate(&link.to, &ask, ATTEMPT_TIMEOUT).await {
            Ok(ack) => Some(ack),
            Err(err) => {
                debug!(to = link.to, reason = %err, "no digests: the slots go whole");
                None
            }
        }
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
