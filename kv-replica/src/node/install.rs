//! Installing a configuration at a storage server: the switch of its slot table, its copies and
//! its debts to the new epoch, then the hand-offs it owes (the protocol is in `kv_shard`'s docs,
//! "Moving data", and in `kv_replica`'s, "Failures" and "Moves").
//!
//! Invariants:
//! - installs are serialised (the hand-offs' lock is held from the switch to the end of the
//!   hand-offs), and a server installs only the epoch after its own (unless it holds no slot:
//!   see `kv_shard::Ownership::install`);
//! - the switch holds the routing write lock, so every request admitted before it has finished,
//!   and every write applied to a lost slot is in the engine when the slot is exported;
//! - installing the epoch a server is at only resumes its hand-offs;
//! - a hand-off still owed when a new configuration arrives carries over to the slot's owner in
//!   it; one given to this server is served from here at once;
//! - slots taken from this server because it was failed over are dropped, not handed off: their
//!   new primary serves them from its copy.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::{Error, Takeover};
use futures_util::future::join_all;
use kv_core::{Sessions, Storage};
use kv_shard::messages::{Install, InstallReport};
use kv_shard::{Config, SLOTS, Slot, slot_of};
use tokio::sync::Notify;
use tracing::{debug, error, info, warn};

use super::copies::Copies;
use super::handoffs::{Handoffs, Outgoing};
use super::links::Links;
use super::membership::Membership;
use super::plan::{CarryOver, carry_over};
use super::primary::Primary;
use super::routing::{Routing, Table};
use super::view::{View, lock, slot_set, slots_where};

/// Runs its closure when dropped.
struct Finally<F: FnMut()>(F);

impl<F: FnMut()> Drop for Finally<F> {
    fn drop(&mut self) {
        (self.0)();
    }
}

/// What an install switches, and the hand-offs it runs.
pub(crate) struct Installer {
    pub(crate) view: Arc<View>,
    pub(crate) routing: Arc<Routing>,
    pub(crate) storage: Arc<dyn Storage>,
    pub(crate) sessions: Arc<Sessions>,
    pub(crate) copies: Arc<Copies>,
    pub(crate) links: Arc<Links>,
    pub(crate) primary: Arc<Primary>,
    pub(crate) handoffs: Arc<Handoffs>,
    pub(crate) membership: Arc<Membership>,
    /// Told when a configuration shows this server was failed over and is no longer a member.
    pub(crate) evicted: Notify,
}

impl std::fmt::Debug for Installer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Installer").field("epoch", &self.view.get().epoch()).finish_non_exhaustive()
    }
}

impl Installer {
    /// Switches to `install.next` (whose predecessor at the shard master is `install.previous`),
    /// then hands off the slots this server lost, and those it still owes from earlier epochs,
    /// to their owners in it.
    pub(crate) async fn install(&self, install: Install) -> Result<InstallReport, Error> {
        let Install { next, previous, abandoned, promoted, carried, incarnation: _ } = install;
        // The first install after a restart over kept data decides what becomes of it.
        self.membership.settle(&next, &self.sessions).await.map_err(Error::storage)?;
        let carried: BTreeMap<Slot, String> = carried
            .into_iter()
            .flat_map(|(server, slots)| slots.into_iter().map(move |slot| (slot, server.clone())))
            .collect();
        let handoffs = &self.handoffs;
        // A hand-off of an older epoch, still running, gives way to this install, which carries
        // it over (an install this server refuses withdraws its claim).
        if next.epoch() > self.view.get().epoch() {
            handoffs.newest_install.modify(|newest| {
                let newer = next.epoch() > *newest;
                if newer {
                    *newest = next.epoch();
                }
                newer
            });
        }
        let mut outgoing = handoffs.outgoing.lock().await;
        let mut report = InstallReport::default();
        let again = {
            let table = self.routing.read().await;
            !table.standalone && next.epoch() == table.ownership.epoch() && abandoned.is_empty()
        };
        // Installing the epoch this server is at only resumes hand-offs: no need to stop requests.
        if !again {
            // Waits for every request admitted so far to finish.
            self.primary.set_installing(true);
            let _done = Finally(|| self.primary.set_installing(false));
            let mut table = self.routing.write().await;
            if table.standalone || next.epoch() != table.ownership.epoch() {
                if !table.standalone && next.epoch() < table.ownership.epoch() {
                    return Err(Error::FailedPrecondition(format!(
                        "this server is at epoch {}, past {}",
                        table.ownership.epoch(),
                        next.epoch()
                    )));
                }
                let epoch = next.epoch();
                let switched = self
                    .switch(&mut table, &mut outgoing, &mut report, previous, next, promoted, carried)
                    .await;
                if switched.is_err() {
                    let held = table.ownership.epoch();
                    handoffs.newest_install.modify(|newest| {
                        let withdrawn = *newest == epoch && held < epoch;
                        if withdrawn {
                            *newest = held;
                        }
                        withdrawn
                    });
                }
                switched?;
            }
            if !abandoned.is_empty() {
                // Whatever part of their data arrived is dropped: a slot is served whole or empty.
                let incoming: Vec<Slot> =
                    abandoned.iter().copied().filter(|&slot| table.ownership.is_incoming(slot)).collect();
                let partial = slot_set(&incoming);
                self.storage
                    .remove_slots(slot_of, &slots_where(|slot| partial[usize::from(slot)]))
                    .await
                    .map_err(Error::storage)?;
                self.sessions.forget(|slot| partial[usize::from(slot)]);
                warn!(slots = incoming.len(), "serving slots whose data was lost with their sender, empty");
                for slot in incoming {
                    table.ownership.abandon(slot);
                    lock(&handoffs.merging).remove(&slot);
                }
            }
        }
        let epoch = outgoing.epoch;
        let (me, config, arriving) = {
            let table = self.routing.read().await;
            (
                table.ownership.me().to_owned(),
                table.ownership.config().clone(),
                !table.ownership.incoming().is_empty(),
            )
        };
        self.membership.record(&config, !arriving && outgoing.to.is_empty()).await.map_err(Error::storage)?;
        let sends = outgoing.to.iter().map(|(to, slots)| {
            let me = me.as_str();
            async move { (to.clone(), slots.len(), handoffs.hand_off(me, to, epoch, slots).await) }
        });
        let mut failures = Vec::new();
        for (to, slots, result) in join_all(sends).await {
            match result {
                Ok(keys) => {
                    report.slots_sent += slots as u64;
                    report.keys_sent += keys;
                    outgoing.to.remove(&to);
                    lock(&handoffs.owed).remove(&to);
                }
                Err(err) => failures.push(format!("to {to}: {err}")),
            }
        }
        if failures.is_empty() {
            drop(outgoing);
            self.record_if_whole().await?;
            Ok(report)
        } else {
            Err(Error::Unavailable(format!(
                "hand-off incomplete (the data stays here; installing epoch {epoch} again resumes it): {}",
                failures.join("; ")
            )))
        }
    }

    /// Records that this server's data is whole at its epoch, once no slot of its is arriving
    /// and it owes no hand-off (see `membership`).
    pub(crate) async fn record_if_whole(&self) -> Result<(), Error> {
        if self.membership.recorded_whole().await {
            return Ok(());
        }
        let Ok(outgoing) = self.handoffs.outgoing.try_lock() else {
            // An install or a hand-off runs: it records where it ends.
            return Ok(());
        };
        let (config, arriving) = {
            let table = self.routing.read().await;
            (table.ownership.config().clone(), !table.ownership.incoming().is_empty())
        };
        if arriving || !outgoing.to.is_empty() {
            return Ok(());
        }
        self.membership.record(&config, true).await.map_err(Error::storage)
    }

    /// The switch of an install to a new epoch, under the routing write lock and the hand-offs'
    /// lock: the slot table, the copies, and what is owed to whom.
    #[allow(clippy::too_many_arguments)]
    async fn switch(
        &self,
        table: &mut Table,
        outgoing: &mut Outgoing,
        report: &mut InstallReport,
        previous: Config,
        next: Config,
        promoted: Vec<Slot>,
        carried: BTreeMap<Slot, String>,
    ) -> Result<(), Error> {
        let me = self.view.me().to_owned();
        // Hand-offs still owed from an earlier epoch (their data is here, and served nowhere)
        // carry over to the slots' owners in this one; those given to this server are served
        // from here at once.
        let CarryOver { serving_own, to: carried_over, unowned } = carry_over(&outgoing.to, &next, &me);
        for slot in unowned {
            warn!(slot, "no member owns a slot still owed here: its data stays, unserved");
        }
        if !outgoing.to.is_empty() {
            info!(
                from_epoch = outgoing.epoch,
                slots = outgoing.slots(),
                served_here = serving_own.len(),
                "carrying unfinished hand-offs over to the new epoch"
            );
        }
        // Where the gained slots' data comes from. A slot said to come from here that is not
        // owed here any more (its hand-off ended meanwhile) is left to `promoted` (which names
        // every slot of the failed member's): only this server's copy of it is left.
        let mut sources: BTreeMap<Slot, String> =
            carried.into_iter().filter(|(_, from)| *from != me).collect();
        for &slot in &serving_own {
            sources.insert(slot, me.clone());
        }
        let mut handoff = table
            .ownership
            .install(&previous, next.clone(), &sources)
            .map_err(|err| Error::InvalidArgument(err.to_string()))?;
        // Slots taken from this server because it was failed over: their new primary serves
        // them from its copy, and ours is stale. Dropped, not handed off.
        let failed_over = slot_set(&promoted);
        let mut stale = Vec::new();
        for slots in handoff.outgoing.values_mut() {
            stale.extend(slots.iter().copied().filter(|&slot| failed_over[usize::from(slot)]));
            slots.retain(|&slot| !failed_over[usize::from(slot)]);
        }
        handoff.outgoing.retain(|_, slots| !slots.is_empty());
        if !stale.is_empty() {
            let stale_set = slot_set(&stale);
            self.storage
                .remove_slots(slot_of, &slots_where(|slot| stale_set[usize::from(slot)]))
                .await
                .map_err(Error::storage)?;
            self.sessions.forget(|slot| stale_set[usize::from(slot)]);
            warn!(slots = stale.len(), "this server was failed over: its slots are served elsewhere now");
        }
        // Failed over (a failover's install, which names promoted slots, that removes this
        // member), whether or not it was primary of anything yet: it joins again, as a new
        // member, which holds nothing (below).
        let failed_me = previous.id_of(&me).is_some() && next.id_of(&me).is_none() && !promoted.is_empty();
        for (to, slots) in carried_over {
            let owed = handoff.outgoing.entry(to).or_default();
            owed.extend(slots);
            owed.sort_unstable();
            owed.dedup();
        }
        let handing_off: Vec<Slot> = handoff.outgoing.values().flatten().copied().collect();
        // Slots this server takes over from a failed primary: promoted ones, served from the
        // copy here; those whose data is here, never sent; and those whose data comes from the
        // server that was sending them, merged with the copy here.
        let promoted: Vec<Slot> = promoted
            .into_iter()
            .filter(|&slot| table.ownership.is_incoming(slot) && !sources.contains_key(&slot))
            .collect();
        let merged: Vec<(Slot, String)> = sources
            .into_iter()
            .filter(|(slot, from)| *from != me && table.ownership.is_incoming(*slot))
            .collect();
        let takeovers: Vec<Slot> = promoted
            .iter()
            .chain(&serving_own)
            .copied()
            .chain(merged.iter().map(|(slot, _)| *slot))
            .collect();
        let previous_view = self.view.get();
        let (taken, resets) = self.copies.switch(&next, &handing_off, &takeovers).await?;
        // The exactly-once records of the slots taken over came with the copy, in memory: kept on
        // disk now (a durable engine), for the retries this server answers after a restart.
        if !takeovers.is_empty() {
            let taking = slot_set(&takeovers);
            let records = self.sessions.export(|slot| taking[usize::from(slot)]);
            self.storage.keep_sessions(records).await.map_err(Error::storage)?;
        }
        if failed_me {
            // Nothing here is anyone's copy now: the writes went on without it. Only what it
            // still hands off stays, until sent.
            let keep = slot_set(&handing_off);
            self.storage
                .remove_slots(slot_of, &slots_where(|slot| !keep[usize::from(slot)]))
                .await
                .map_err(Error::storage)?;
            self.sessions.forget(|slot| !keep[usize::from(slot)]);
            self.copies.forget_kept(&(0..SLOTS as Slot).collect::<Vec<_>>());
            warn!("this server was failed over: it is no longer a member, and drops what it held");
            self.evicted.notify_one();
        }
        let resyncs = self.links.install(&previous_view, &next);
        if resets > 0 || resyncs > 0 {
            info!(
                epoch = next.epoch(),
                copies_reset = resets,
                snapshots_owed = resyncs,
                "replica roles switched"
            );
        }
        let mut partial = 0;
        for &slot in &promoted {
            table.ownership.abandon(slot);
            partial += usize::from(matches!(taken.get(&slot), Some(Takeover::Partial { .. })));
        }
        if !promoted.is_empty() {
            warn!(slots = promoted.len(), "taking over the slots of a failed primary");
        }
        if partial > 0 {
            error!(
                slots = partial,
                "took over slots from a copy that was still catching up, with no up-to-date copy left: \
                 what it had not received yet is lost"
            );
        }
        let handoffs = &self.handoffs;
        lock(&handoffs.as_sent).retain(|&slot, _| table.ownership.check(slot).is_ok());
        {
            let mut merging = lock(&handoffs.merging);
            merging.retain(|&slot, _| table.ownership.is_incoming(slot));
            for (slot, from) in &merged {
                match taken.get(slot) {
                    // Up to date here: the sender's copy is older. Its resend is acknowledged.
                    Some(Takeover::Complete) => table.ownership.complete(*slot),
                    Some(Takeover::Partial { written }) => {
                        merging.insert(*slot, written.clone());
                    }
                    None => {}
                }
                debug!(slot, from, "a failed owner's slot comes from the server that was sending it");
            }
        }
        if !merged.is_empty() || !serving_own.is_empty() {
            warn!(
                from_sender = merged.len(),
                from_here = serving_own.len(),
                "taking over the slots a failed owner was still receiving"
            );
        }
        table.standalone = false;
        let epoch = table.ownership.epoch();
        info!(
            epoch,
            outgoing = handoff.outgoing.values().map(Vec::len).sum::<usize>(),
            incoming = handoff.incoming.values().map(Vec::len).sum::<usize>(),
            "installed configuration"
        );
        if !handoff.never_arrived.is_empty() {
            warn!(slots = handoff.never_arrived.len(), "lost slots whose data never arrived here");
        }
        report.never_arrived = handoff.never_arrived;
        *outgoing = Outgoing { epoch, to: handoff.outgoing };
        *lock(&handoffs.owed) = outgoing.to.clone();
        if !handoff.orphaned.is_empty() {
            // Kept, not deleted: the shard master lets the last member go only without keys, so
            // any key here arrived after it checked, and is reported.
            let orphaned = slot_set(&handoff.orphaned);
            let stranded = self
                .storage
                .export(&|key| orphaned[usize::from(slot_of(key))])
                .await
                .map_err(Error::storage)?
                .len();
            if stranded > 0 {
                error!(keys = stranded, "no server owns our keys any more: they are not served");
            }
        }
        Ok(())
    }
}
