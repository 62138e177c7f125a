//! Slots moving between storage servers: the sending side (a hand-off this server owes, sent in
//! batches, then dropped here) and the receiving side (batches taken, merged with a copy held
//! here where a failed owner's slot comes from its sender), and the sending of kept copies in
//! place of a primary that died (the protocol is in `kv_shard`'s docs, "Moving data", and in
//! `kv_replica`'s, "Moves").
//!
//! Invariants:
//! - a sender drops a slot's data only once its receiver acknowledged the batch completing it,
//!   and a receiver acknowledges that batch only once the slot's other secondaries have caught
//!   up with it: at every moment the sender still holds the slot, or an up-to-date copy exists;
//! - a hand-off starts only once the leases its old secondaries were promised are over, so the
//!   new owner cannot commit a write they could miss;
//! - batches are imported one at a time, so a resend decided before the first attempt's slots
//!   went live never imports over the writes taken since;
//! - a hand-off of an older epoch gives way to an install of a newer one, which carries it over.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::messages::{Replicate, WriteKind};
use crate::transport::PeerCalls;
use crate::{Error, secondaries};
use kv_core::{SessionRecord, Sessions, Storage};
use kv_shard::clock::Clock;
use kv_shard::handoff::transfer_batches;
use kv_shard::messages::{CatchUpStats, HandOffCopy, TransferBatch};
use kv_shard::retry::retry_until;
use kv_shard::signal::Signal;
use kv_shard::{Accept, Consistency, SLOTS, Slot, slot_of};
use tracing::{info, warn};

use super::batches::{SlotReader, snapshot_batches};
use super::calls::{ATTEMPT_TIMEOUT, replicate_until};
use super::copies::Copies;
use super::leases::Leases;
use super::links::Links;
use super::routing::Routing;
use super::view::{View, lock, slot_set, slots_where};

/// Longest wait for one batch's acknowledgement before it is sent again.
const BATCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a receiver holds back its acknowledgement of a hand-off's last batch while the
/// slots' secondaries catch up (the sender then asks again); below the sender's batch timeout.
const REPLICATED_WAIT: Duration = Duration::from_secs(3);

/// Hand-offs this server owes: slots it stopped serving whose data is still here, per new owner.
#[derive(Debug, Default)]
pub(crate) struct Outgoing {
    pub(crate) epoch: u64,
    pub(crate) to: BTreeMap<String, Vec<Slot>>,
}

impl Outgoing {
    pub(crate) fn slots(&self) -> usize {
        self.to.values().map(Vec::len).sum()
    }
}

/// A storage server's moving slots.
pub(crate) struct Handoffs {
    view: Arc<View>,
    routing: Arc<Routing>,
    storage: Arc<dyn Storage>,
    sessions: Arc<Sessions>,
    leases: Arc<Leases>,
    copies: Arc<Copies>,
    links: Arc<Links>,
    peers: Arc<dyn PeerCalls>,
    clock: Arc<dyn Clock>,
    /// How long one hand-off may keep retrying a peer that does not answer.
    timeout: Duration,
    /// Serialises installs, and holds the hand-offs still owed.
    pub(crate) outgoing: tokio::sync::Mutex<Outgoing>,
    /// What `outgoing` holds, readable while a hand-off runs.
    pub(crate) owed: Mutex<BTreeMap<String, Vec<Slot>>>,
    /// The newest epoch an install was asked for: a hand-off of an older epoch gives way to it
    /// (the install carries it over), rather than holding it up until it times out.
    pub(crate) newest_install: Signal<u64>,
    /// Per slot still incoming from the sender that holds the data of a failed owner's slot, the
    /// keys whose value here (from this server's copy) is newer than the sender's.
    pub(crate) merging: Mutex<BTreeMap<Slot, BTreeSet<String>>>,
    /// Slots served here whose data was taken exactly as their sender (named) sent it.
    pub(crate) as_sent: Mutex<BTreeMap<Slot, String>>,
    /// Serialises the import of transfer batches.
    transfers: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Handoffs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handoffs").field("owed", &self.owed).finish_non_exhaustive()
    }
}

impl Handoffs {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        view: Arc<View>,
        routing: Arc<Routing>,
        storage: Arc<dyn Storage>,
        sessions: Arc<Sessions>,
        leases: Arc<Leases>,
        copies: Arc<Copies>,
        links: Arc<Links>,
        peers: Arc<dyn PeerCalls>,
        clock: Arc<dyn Clock>,
        timeout: Duration,
    ) -> Self {
        Handoffs {
            view,
            routing,
            storage,
            sessions,
            leases,
            copies,
            links,
            peers,
            clock,
            timeout,
            outgoing: tokio::sync::Mutex::new(Outgoing::default()),
            owed: Mutex::new(BTreeMap::new()),
            newest_install: Signal::new(0),
            merging: Mutex::new(BTreeMap::new()),
            as_sent: Mutex::new(BTreeMap::new()),
            transfers: tokio::sync::Mutex::new(()),
        }
    }

    /// Sends `slots` to `to` in batches, then drops them here; returns the keys sent. Gives up
    /// (keeping the data) when an install of a newer epoch arrives: it carries the hand-off
    /// over.
    pub(crate) async fn hand_off(
        &self,
        me: &str,
        to: &str,
        epoch: u64,
        slots: &[Slot],
    ) -> Result<u64, Error> {
        let started = self.clock.now();
        let set = slot_set(slots);
        let newest = &self.newest_install;
        let superseded = async move {
            newest.wait_for(|&newest| newest > epoch).await;
        };
        let send = async {
            // The slots' old secondaries may read their copies until the leases promised to
            // them end: the new owner must not take writes before that.
            if let Some(until) = slots.iter().filter_map(|&slot| self.leases.fence(slot)).max() {
                self.clock.sleep_until(until).await;
            }
            let sessions = self.sessions.export(|slot| set[usize::from(slot)]);
            self.send_slots(me, to, epoch, slots, sessions).await
        };
        let (keys, batches, verbatim) = tokio::select! {
            biased;
            sent = send => sent?,
            () = superseded => {
                return Err(Error::Aborted(format!(
                    "a newer configuration arrived: the hand-off of epoch {epoch} carries over to it"
                )));
            }
        };
        // Everything is at `to`. Where this server stays a secondary of a slot `to` took as sent,
        // the data here is its copy, up to date; the rest is dropped first, then copies of it
        // are rebuilt from `to`.
        // Strong mode only: in eventual mode the new primary applies a write before replicating it,
        // so it may have taken writes this copy refused while awaiting.
        let strong = self.view.get().replication().consistency == Consistency::Strong;
        let as_sent = slot_set(if strong { &verbatim } else { &[] });
        let kept: Vec<Slot> = self
            .copies
            .awaiting(slots)
            .await
            .into_iter()
            .filter(|&slot| as_sent[usize::from(slot)])
            .collect();
        let kept_set = slot_set(&kept);
        let dropped = |slot: Slot| set[usize::from(slot)] && !kept_set[usize::from(slot)];
        let dropped_slots = slots_where(dropped);
        self.storage.remove_slots(slot_of, &dropped_slots).await.map_err(Error::storage)?;
        self.sessions.forget(dropped);
        self.copies.handed_off(slots, &kept).await;
        info!(
            to,
            epoch,
            slots = slots.len(),
            kept_as_copies = kept.len(),
            keys,
            batches,
            took = ?self.clock.now() - started,
            "handed off slots"
        );
        Ok(keys)
    }

    /// Sends the keys and exactly-once records of `slots` to `to` as `from` would at a move of
    /// `epoch`, in batches, read from the engine a part at a time; returns the number of keys
    /// and of batches, and the slots `to` took exactly as sent.
    async fn send_slots(
        &self,
        from: &str,
        to: &str,
        epoch: u64,
        slots: &[Slot],
        sessions: Vec<SessionRecord>,
    ) -> Result<(u64, usize, Vec<Slot>), Error> {
        let mut reader = SlotReader::new(self.storage.as_ref(), slots);
        let mut sessions = Some(sessions);
        let (mut keys, mut count, mut verbatim) = (0, 0, Vec::new());
        while let Some((entries, finished)) = reader.next().await.map_err(Error::storage)? {
            keys += entries.len() as u64;
            let records = sessions.take().unwrap_or_default();
            let (batches, taken) = self.send_entries(from, to, epoch, &finished, entries, records).await?;
            count += batches;
            verbatim.extend(taken);
        }
        Ok((keys, count, verbatim))
    }

    /// Sends `entries` and `sessions` to `to` as `from` would at a move of `epoch`, completing
    /// `slots`, in batches; returns the number of batches, and the slots `to` took exactly as
    /// sent.
    async fn send_entries(
        &self,
        from: &str,
        to: &str,
        epoch: u64,
        slots: &[Slot],
        entries: Vec<(String, String)>,
        sessions: Vec<SessionRecord>,
    ) -> Result<(usize, Vec<Slot>), Error> {
        let keys = entries.len() as u64;
        let bytes = entries.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum::<u64>();
        let batches = transfer_batches(from, epoch, slots, entries, sessions);
        let count = batches.len();
        let mut verbatim = Vec::new();
        for batch in batches {
            verbatim.extend(self.send(to, &batch).await?);
        }
        self.links.count(&CatchUpStats {
            handoff_keys: keys,
            handoff_bytes: bytes,
            ..CatchUpStats::default()
        });
        Ok((count, verbatim))
    }

    /// Sends one batch, retrying while `to` is unreachable or not yet at its epoch; returns the
    /// slots it completed that `to` took exactly as sent.
    async fn send(&self, to: &str, batch: &TransferBatch) -> Result<Vec<Slot>, Error> {
        let deadline = self.clock.now() + self.timeout;
        // One lost batch must not eat the whole hand-off's time.
        retry_until(self.clock.as_ref(), deadline, BATCH_TIMEOUT, |timeout| async move {
            let sent = self.clock.now();
            let answer = self.peers.transfer(to, batch, timeout).await;
            // A receiver that never answers is reported to the shard master.
            self.leases.record_answer(to, sent, &answer);
            answer
        })
        .await
    }

    /// Installs one batch from the slots' previous owner; returns the slots it completed that
    /// were taken exactly as sent (not merged with a copy here).
    pub(crate) async fn transfer(&self, batch: TransferBatch) -> Result<Vec<Slot>, Error> {
        let TransferBatch { epoch, from, entries, sessions, complete } = batch;
        // One batch at a time: a resend decided before the first attempt's slots went live
        // must not import after them, over the writes taken since.
        let importing = self.transfers.lock().await;
        // Decide per slot, under the lock, what to do with it.
        let mut take = vec![false; SLOTS];
        {
            let table = self.routing.read().await;
            if table.standalone {
                return Err(Error::FailedPrecondition("a standalone server takes no transfers".to_owned()));
            }
            let slots = entries.iter().map(|(key, _)| slot_of(key)).chain(complete.iter().copied());
            let slots = slots.chain(sessions.iter().flat_map(|r| r.answers.iter().map(|a| a.tag)));
            for slot in slots {
                match table.ownership.accept(epoch, &from, slot) {
                    Accept::Take => take[usize::from(slot)] = true,
                    Accept::Done => {}
                    Accept::Later => {
                        return Err(Error::Unavailable(format!(
                            "this server has not installed epoch {epoch} yet; retry"
                        )));
                    }
                    Accept::Refuse(reason) => return Err(Error::FailedPrecondition(reason)),
                }
            }
        }
        // A failed owner's slot taken over here keeps what its copy here holds newer.
        let entries: Vec<(String, String)> = {
            let merging = lock(&self.merging);
            entries
                .into_iter()
                .filter(|(key, _)| {
                    let slot = slot_of(key);
                    take[usize::from(slot)] && !merging.get(&slot).is_some_and(|newer| newer.contains(key))
                })
                .collect()
        };
        self.storage.import(entries).await.map_err(Error::storage)?;
        let sessions: Vec<kv_core::SessionRecord> = sessions
            .into_iter()
            .map(|mut record| {
                record.answers.retain(|a| take[usize::from(a.tag)]);
                record
            })
            .collect();
        // Kept on disk too (a durable engine): this server answers the slots' retries from now
        // on, after a restart as well.
        self.storage.keep_sessions(sessions.clone()).await.map_err(Error::storage)?;
        self.sessions.import(sessions, self.clock.now());
        let mut table = self.routing.write().await;
        for &slot in &complete {
            if take[usize::from(slot)] && table.ownership.accept(epoch, &from, slot) == Accept::Take {
                table.ownership.complete(slot);
                let mut as_sent = lock(&self.as_sent);
                if lock(&self.merging).remove(&slot).is_none() {
                    as_sent.insert(slot, from.clone());
                } else {
                    as_sent.remove(&slot);
                }
            }
        }
        let served: Vec<Slot> = complete
            .into_iter()
            .filter(|&slot| table.ownership.accept(epoch, &from, slot) == Accept::Done)
            .collect();
        drop(table);
        drop(importing);
        // The sender drops its copy once this is acknowledged: only once another copy exists.
        self.until_replicated(&served, &from).await?;
        // Told on every answer, a resend's too: the first one may have been lost.
        let as_sent = lock(&self.as_sent);
        Ok(served.into_iter().filter(|slot| as_sent.get(slot) == Some(&from)).collect())
    }

    /// Waits until every secondary of `slots`, but `sender` (which sent them here, and rebuilds
    /// its own copy once its hand-off is over), holds a copy caught up with this server, the
    /// slots' new primary; fails (retryable) after [`REPLICATED_WAIT`]. A receiver acknowledges
    /// a hand-off's last batch only then, so the sender drops its copy only once another copy
    /// exists: a receiver that dies at any point of a move leaves either the sender's data or
    /// an up-to-date secondary.
    async fn until_replicated(&self, slots: &[Slot], sender: &str) -> Result<(), Error> {
        let deadline = self.clock.now() + REPLICATED_WAIT;
        self.links.wake_all();
        loop {
            // Read again each time: a failover may change the secondaries.
            let view = self.view.get();
            let me = view.id_of(self.view.me());
            if slots.iter().any(|&slot| me.is_none() || view.owner_of_slot(slot) != me) {
                // Moved on (this server was failed over): the sender keeps its data.
                return Err(Error::Unavailable(format!(
                    "some of the slots are not this server's any more at epoch {}",
                    view.epoch()
                )));
            }
            let behind: BTreeSet<&str> = slots
                .iter()
                .flat_map(|&slot| secondaries(&view, slot).into_iter().map(move |to| (to, slot)))
                .filter(|&(to, slot)| to != sender && self.links.snapshot_owed(to, slot))
                .map(|(to, _)| to)
                .collect();
            if behind.is_empty() {
                return Ok(());
            }
            if self.clock.now() >= deadline {
                let mut behind: Vec<&str> = behind.into_iter().collect();
                behind.sort_unstable();
                return Err(Error::Unavailable(format!(
                    "the slots arrived, but their secondaries {} are still catching up; retry",
                    behind.join(", ")
                )));
            }
            self.clock.sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends the copies kept of a dead primary's slots where it would have sent them: to their
    /// new owner, or as the snapshot it owed a secondary still catching up; returns the keys
    /// sent.
    pub(crate) async fn hand_off_copy(&self, request: HandOffCopy) -> Result<u64, Error> {
        let HandOffCopy { epoch, sender, to, slots, as_snapshot } = request;
        let (entries, sessions) = match self.copies.kept(epoch, &sender, &slots) {
            Ok(kept) => kept,
            Err(err) => self.copies.live(epoch, &sender, &slots).await.ok_or(err)?,
        };
        let keys = entries.len() as u64;
        let started = self.clock.now();
        if as_snapshot {
            let batches = snapshot_batches(entries, &slots);
            let deadline = self.clock.now() + ATTEMPT_TIMEOUT * 5;
            let mut sessions = Some(sessions);
            for (writes, synced) in batches {
                let batch = Replicate {
                    epoch,
                    from: sender.clone(),
                    writes,
                    kind: WriteKind::Snapshot,
                    synced,
                    sessions: sessions.take().unwrap_or_default(),
                    ..Replicate::default()
                };
                let ack =
                    replicate_until(self.peers.as_ref(), self.clock.as_ref(), &to, &batch, deadline).await?;
                if !ack.refused.is_empty() {
                    return Err(Error::FailedPrecondition(format!(
                        "{to} took no snapshot of {} of the slots (at epoch {epoch})",
                        ack.refused.len()
                    )));
                }
            }
        } else {
            // What the new owner took as sent says nothing about this server's copies.
            self.send_entries(&sender, &to, epoch, &slots, entries, sessions).await?;
        }
        self.copies.forget_kept(&slots);
        warn!(to, epoch, sender, as_snapshot, slots = slots.len(), keys, took = ?self.clock.now() - started, "handed off the copies of a dead primary's slots");
        Ok(keys)
    }
}
