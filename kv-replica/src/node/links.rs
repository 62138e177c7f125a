//! A primary's debts to its secondaries, paid in the background: one *link* per secondary,
//! with a task that sends it what it is owed.
//!
//! What a secondary is owed: the commits of strong writes (sent at once, batched), the keys
//! written that it gets outside the synchronous path (eventual mode, at least every sync
//! interval, with their values of then), and the catch-up snapshots of slots it is rebuilding
//! (sent as soon as the slot is served here).
//!
//! Invariants:
//! - a debt is dropped only once paid, or once its secondary is no longer one under this
//!   primary (its copy is reset anyway); what could not be sent is sent again;
//! - a snapshot debt is paid only by a send that read the slot at the debt's epoch or later,
//!   and a slot the secondary refused (it still hands it off itself) stays owed, whole;
//! - each key's values reach a secondary in the order the primary sent them.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use crate::messages::{Committed, Replicate, ReplicateAck, SlotWrite, WriteKind};
use crate::transport::PeerCalls;
use crate::{Role, keeps_copy, role, secondaries};
use kv_core::{SessionRecord, Sessions, Storage};

use super::primary::SlotLocks;
use kv_shard::clock::{Clock, timeout};
use kv_shard::messages::CatchUpStats;
use kv_shard::{Config, SLOTS, Slot, slot_of};
use tokio::sync::Notify;
use tracing::{debug, warn};

use super::batches::{BATCH_BYTES, slot_write};
use super::calls::{ATTEMPT_TIMEOUT, replicate_until};
use super::routing::Routing;
use super::view::{View, lock};

mod snapshots;

/// Slots whose digests one request asks (at most [`crate::digest::MAX_BUCKETS`] sums of 16
/// bytes each: 1 MiB).
const DIGEST_SLOTS: usize = 64;

/// How often a link retries what it could not send.
const RETRY_INTERVAL: Duration = Duration::from_millis(100);

/// What one secondary is owed, sent by a background task.
#[derive(Debug)]
struct Link {
    to: String,
    /// Strong mode: writes committed here, to tell it.
    commits: Mutex<Vec<Committed>>,
    /// Eventual mode, outside the synchronous secondaries: keys written since the last flush.
    owed_keys: Mutex<BTreeSet<String>>,
    /// Slots it is catching up, owed a snapshot, with the epoch that made them owed.
    snapshots: Mutex<BTreeMap<Slot, u64>>,
    wake: Notify,
}

impl Link {
    fn new(to: &str) -> Self {
        Link {
            to: to.to_owned(),
            commits: Mutex::new(Vec::new()),
            owed_keys: Mutex::new(BTreeSet::new()),
            snapshots: Mutex::new(BTreeMap::new()),
            wake: Notify::new(),
        }
    }
}

/// A primary's links to its secondaries.
pub(crate) struct Links {
    this: Weak<Links>,
    view: Arc<View>,
    routing: Arc<Routing>,
    storage: Arc<dyn Storage>,
    sessions: Arc<Sessions>,
    /// The slots' write locks, shared with the primary's write path.
    slot_locks: SlotLocks,
    peers: Arc<dyn PeerCalls>,
    clock: Arc<dyn Clock>,
    links: Mutex<BTreeMap<String, Arc<Link>>>,
    /// What the catch-ups sent came to.
    caught_up: Mutex<CatchUpStats>,
}

impl std::fmt::Debug for Links {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Links")
            .field("links", &lock(&self.links).keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Links {
    pub(crate) fn new(
        view: Arc<View>,
        routing: Arc<Routing>,
        storage: Arc<dyn Storage>,
        sessions: Arc<Sessions>,
        slot_locks: SlotLocks,
        peers: Arc<dyn PeerCalls>,
        clock: Arc<dyn Clock>,
    ) -> Arc<Self> {
        Arc::new_cyclic(|this| Links {
            this: this.clone(),
            view,
            routing,
            storage,
            sessions,
            slot_locks,
            peers,
            clock,
            links: Mutex::new(BTreeMap::new()),
            caught_up: Mutex::new(CatchUpStats::default()),
        })
    }

    /// The link to secondary `to`, started on first use.
    fn link(&self, to: &str) -> Arc<Link> {
        let mut links = lock(&self.links);
        if let Some(link) = links.get(to) {
            return Arc::clone(link);
        }
        let link = Arc::new(Link::new(to));
        links.insert(to.to_owned(), Arc::clone(&link));
        tokio::spawn(run(self.this.clone(), Arc::clone(&link)));
        link
    }

    /// Owes every one of `targets` the commit of write `seq` of `slot`, and wakes them.
    pub(crate) fn committed(&self, targets: &[String], slot: Slot, seq: u64) {
        for target in targets {
            let link = self.link(target);
            lock(&link.commits).push(Committed { slot, seq });
            link.wake.notify_one();
        }
    }

    /// Owes every one of `targets` the current value of `key`, at their next flush.
    pub(crate) fn owe_key(&self, targets: &[String], key: &str) {
        for target in targets {
            lock(&self.link(target).owed_keys).insert(key.to_owned());
        }
    }

    /// Whether this primary still owes secondary `to` a snapshot of `slot`.
    pub(crate) fn snapshot_owed(&self, to: &str, slot: Slot) -> bool {
        let link = lock(&self.links).get(to).cloned();
        link.is_some_and(|link| lock(&link.snapshots).contains_key(&slot))
    }

    /// Wakes every link (a slot became servable here: its snapshots can go).
    pub(crate) fn wake_all(&self) {
        for link in lock(&self.links).values() {
            link.wake.notify_one();
        }
    }

    /// The primary side of an install from `previous` to `next`: links to servers that are no
    /// longer secondaries of ours forget what they owed, and every secondary that cannot keep its
    /// copy of a slot is owed a snapshot of it; returns how many.
    pub(crate) fn install(&self, previous: &Config, next: &Config) -> usize {
        let me = self.view.me();
        let mut owed: BTreeMap<&str, Vec<Slot>> = BTreeMap::new();
        for slot in 0..SLOTS as Slot {
            if role(next, me, slot) != Role::Primary {
                continue;
            }
            for target in secondaries(next, slot) {
                if !keeps_copy(previous, next, target, slot) {
                    owed.entry(target).or_default().push(slot);
                }
            }
        }
        let links: Vec<Arc<Link>> = lock(&self.links).values().cloned().collect();
        for link in links {
            let still = |slot: Slot| {
                role(next, me, slot) == Role::Primary && secondaries(next, slot).contains(&link.to.as_str())
            };
            lock(&link.snapshots).retain(|&slot, _| still(slot));
            // Keys owed for slots it no longer follows here: its copy is reset, or another
            // primary answers for them now (this one may even have been failed over since).
            lock(&link.owed_keys).retain(|key| still(slot_of(key)));
        }
        let resyncs = owed.values().map(Vec::len).sum::<usize>();
        for (target, slots) in owed {
            let link = self.link(target);
            lock(&link.snapshots).extend(slots.into_iter().map(|slot| (slot, next.epoch())));
            link.wake.notify_one();
        }
        resyncs
    }

    /// Sends `link` the commits it is owed; keeps them if it is unreachable.
    async fn send_commits(&self, link: &Link) -> bool {
        let commits = std::mem::take(&mut *lock(&link.commits));
        if commits.is_empty() {
            return true;
        }
        let batch = Replicate {
            epoch: self.view.get().epoch(),
            from: self.view.me().to_owned(),
            commits,
            ..Replicate::default()
        };
        let deadline = self.clock.now() + ATTEMPT_TIMEOUT;
        match replicate_until(self.peers.as_ref(), self.clock.as_ref(), &link.to, &batch, deadline).await {
            Ok(_) => true,
            Err(err) if err.is_retryable() => {
                let mut commits = lock(&link.commits);
                let mut retried = batch.commits;
                retried.append(&mut commits);
                *commits = retried;
                false
            }
            Err(err) => {
                // Not our secondary any more: its copy is reset anyway.
                debug!(to = link.to, reason = %err, "commits dropped");
                true
            }
        }
    }

    /// The slots' write locks (the primary's write path takes them too).
    pub(crate) fn slot_locks(&self) -> SlotLocks {
        Arc::clone(&self.slot_locks)
    }

    /// Sends `link` the current values of the keys it is owed (eventual mode's background
    /// writes), with the exactly-once records of their slots.
    ///
    /// Each slot's part is read under the slot's write lock ([`SlotLocks`]): no write of the slot
    /// is half done then, so every write applied here has its record, and has either reached the
    /// secondary or left its key owed to it. The owed keys taken, their values and the slot's
    /// records therefore match: no value holds a write whose record is missing (a secondary
    /// promoted later would apply its retry again), and no record stands for a write whose value
    /// is missing (it would answer the retry "done" without the write). A slot's part is never
    /// split between two batches.
    async fn flush(&self, link: &Link) -> bool {
        let slots: BTreeSet<Slot> = lock(&link.owed_keys).iter().map(|key| slot_of(key)).collect();
        if slots.is_empty() {
            return true;
        }
        let view = self.view.get();
        let me = self.view.me();
        // A slot whose data has not arrived here yet has no values to send: its keys stay owed.
        // (Asked before the slot locks: a write holds the routing guard while it waits for one.)
        let slots: Vec<Slot> = {
            let table = self.routing.read().await;
            slots.into_iter().filter(|&slot| table.ownership.check(slot).is_ok()).collect()
        };
        let mut parts: Vec<(Vec<SlotWrite>, Vec<SessionRecord>)> = Vec::new();
        let mut unsent = Vec::new();
        for slot in slots {
            let _writes_held = self.slot_locks[usize::from(slot)].lock().await;
            let keys: Vec<String> = {
                let mut owed = lock(&link.owed_keys);
                let keys: Vec<String> = owed.iter().filter(|key| slot_of(key) == slot).cloned().collect();
                for key in &keys {
                    owed.remove(key);
                }
                keys
            };
            if role(&view, me, slot) != Role::Primary || !secondaries(&view, slot).contains(&link.to.as_str())
            {
                continue;
            }
            let mut writes = Vec::with_capacity(keys.len());
            for key in keys {
                match self.storage.get(&key).await {
                    Ok(value) => writes.push(slot_write(slot, 0, &key, value, None)),
                    Err(_) => unsent.push(key),
                }
            }
            if !writes.is_empty() {
                parts.push((writes, self.sessions.export(|tag| tag == slot)));
            }
        }
        let mut ok = true;
        let mut batch = Vec::new();
        let mut records = Vec::new();
        let mut bytes = 0;
        let mut parts = parts.into_iter().peekable();
        while let Some((writes, slot_records)) = parts.next() {
            bytes += writes
                .iter()
                .map(|w| w.write.key.len() + w.write.value.as_ref().map_or(0, String::len))
                .sum::<usize>();
            batch.extend(writes);
            records.extend(slot_records);
            if bytes >= BATCH_BYTES || parts.peek().is_none() {
                let sent = std::mem::take(&mut batch);
                let sent_records = std::mem::take(&mut records);
                bytes = 0;
                let keys: Vec<String> = sent.iter().map(|w| w.write.key.clone()).collect();
                let batch = Replicate {
                    writes: sent,
                    kind: WriteKind::Apply,
                    sessions: sent_records,
                    ..Replicate::default()
                };
                if self.send(&view, link, batch).await.is_none() {
                    // Sent again later, with the values (and records) of then.
                    unsent.extend(keys);
                    unsent.extend(
                        parts.by_ref().flat_map(|(writes, _)| writes.into_iter().map(|w| w.write.key)),
                    );
                    ok = false;
                }
            }
        }
        if !ok {
            warn!(to = link.to, keys = unsent.len(), "background replication failed; retrying");
        }
        lock(&link.owed_keys).extend(unsent);
        ok
    }

    /// What the catch-ups this server sent as a primary came to, since it started.
    pub(crate) fn catch_up_stats(&self) -> CatchUpStats {
        *lock(&self.caught_up)
    }

    /// Sends `batch` to `link` at the epoch of `view`, from this server; returns the
    /// secondary's answer (the slots of a snapshot it did not take, to send again later, and
    /// the digests asked), or nothing if the batch failed.
    async fn send(&self, view: &Config, link: &Link, batch: Replicate) -> Option<ReplicateAck> {
        if batch.writes.is_empty() && batch.synced.is_empty() && batch.digest.is_empty() {
            return Some(ReplicateAck::default());
        }
        let batch = Replicate { epoch: view.epoch(), from: self.view.me().to_owned(), ..batch };
        let deadline = self.clock.now() + ATTEMPT_TIMEOUT * 5;
        match replicate_until(self.peers.as_ref(), self.clock.as_ref(), &link.to, &batch, deadline).await {
            Ok(ack) => Some(ack),
            Err(err) => {
                debug!(to = link.to, reason = %err, "replication batch not taken");
                None
            }
        }
    }
}

/// Sends a secondary what it is owed: commits at once, snapshots as soon as their slots are
/// served here, and (eventual mode) the keys written, at least every sync interval. Ends with
/// the server.
async fn run(links: Weak<Links>, link: Arc<Link>) {
    let Some(clock) = links.upgrade().map(|links| Arc::clone(&links.clock)) else { return };
    let mut last_flush: Instant = clock.now();
    let mut behind = false;
    loop {
        let interval = match links.upgrade() {
            Some(links) => links.view.get().replication().sync_interval,
            None => return,
        };
        let since_flush = clock.now().saturating_duration_since(last_flush);
        let wait = if behind { RETRY_INTERVAL } else { interval.saturating_sub(since_flush) };
        let _ = timeout(clock.as_ref(), wait.max(Duration::from_millis(1)), link.wake.notified()).await;
        let Some(links) = links.upgrade() else { return };
        let mut ok = links.send_commits(&link).await;
        if clock.now().saturating_duration_since(last_flush) >= interval {
            last_flush = clock.now();
            ok &= links.flush(&link).await;
        }
        ok &= links.send_snapshots(&link).await;
        behind = !ok;
    }
}
