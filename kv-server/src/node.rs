//! A storage server's core: the engine, the exactly-once sessions, and the slots it serves.
//!
//! Every request passes `Node::admit`, which checks under a read lock that the key's slot is
//! served here, and keeps the lock until the operation is done. Installing a configuration takes
//! the write lock: it waits for the operations already admitted, switches, and from then on
//! requests for the slots it lost are refused. So by the time a lost slot is exported, every
//! write that was applied to it (answered or not) is in the engine and in the sessions, which is
//! what makes the hand-off lose nothing (the protocol is in `kv_shard`'s docs).
//!
//! A server that has never installed a configuration is *standalone*: it serves every key. The
//! first configuration installed makes it a cluster member for good.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use kv_core::session::Begin;
use kv_core::{Error, Mutation, Output, RequestId, Sessions, Storage};
use kv_proto::convert::{session_from_wire, session_to_wire, slot_from_wire, slots_from_wire};
use kv_proto::v1;
use kv_replica::Takeover;
use kv_shard::{Accept, Config, Ownership, Refused, SLOTS, Slot, slot_of};
use tokio::sync::{Mutex, RwLock, RwLockReadGuard};
use tonic::Status;
use tracing::{debug, error, info, warn};

use crate::lease::Leases;
use crate::peers::{Peers, retry_until};
use crate::replication::{Replicas, lock, slot_set};

/// Largest transfer batch, in bytes of keys and values (a batch holds at least one key).
const BATCH_BYTES: usize = 1 << 20;
/// Longest wait for one batch's acknowledgement before it is sent again.
const BATCH_TIMEOUT: Duration = Duration::from_secs(5);

/// The routing state behind the lock every request reads.
#[derive(Debug)]
pub(crate) struct Routing {
    /// No configuration installed yet: every key is served.
    pub(crate) standalone: bool,
    pub(crate) ownership: Ownership,
}

/// Hand-offs this server owes: slots it stopped serving whose data is still here, per new owner.
#[derive(Debug, Default)]
struct Outgoing {
    epoch: u64,
    to: BTreeMap<String, Vec<Slot>>,
}

impl Outgoing {
    fn slots(&self) -> usize {
        self.to.values().map(Vec::len).sum()
    }
}

/// What an install did.
#[derive(Debug, Default)]
pub struct InstallReport {
    /// Slots handed off, and the keys in them.
    pub slots_sent: u64,
    /// Keys handed off.
    pub keys_sent: u64,
    /// Slots lost before their data arrived here.
    pub never_arrived: Vec<Slot>,
}

/// One storage server.
pub struct Node {
    /// This node, for the background tasks it starts.
    pub(crate) this: Weak<Node>,
    pub(crate) storage: Arc<dyn Storage>,
    pub(crate) sessions: Sessions,
    pub(crate) routing: RwLock<Routing>,
    pub(crate) replicas: Replicas,
    pub(crate) leases: Leases,
    /// Told when a configuration shows this server was failed over and is no longer a member.
    pub(crate) evicted: tokio::sync::Notify,
    /// Whether an install waits for the requests in flight: a write stuck replicating to a
    /// secondary (one the install may remove) then gives up soon.
    pub(crate) installing: tokio::sync::watch::Sender<bool>,
    /// The address this server has as a member.
    me: String,
    /// Drawn at start: tells the shard master this process from an earlier one at the address.
    incarnation: u64,
    /// Started to join a cluster: until its first install it serves nothing (a client with an
    /// old map must not leave a write on a server that is not a member).
    joining: bool,
    /// Serialises installs, and holds the hand-offs still owed.
    outgoing: Mutex<Outgoing>,
    /// What `outgoing` holds, readable while a hand-off runs.
    owed: std::sync::Mutex<BTreeMap<String, Vec<Slot>>>,
    /// The newest epoch an install was asked for: a hand-off of an older epoch gives way to it
    /// (the install carries it over), rather than holding it up until it times out.
    newest_install: tokio::sync::watch::Sender<u64>,
    /// Per slot still incoming from the sender that holds the data of a failed owner's slot, the
    /// keys whose value here (from this server's copy) is newer than the sender's.
    merging: std::sync::Mutex<HashMap<Slot, HashSet<String>>>,
    /// Slots served here whose data was taken exactly as their sender (named) sent it.
    as_sent: std::sync::Mutex<HashMap<Slot, String>>,
    /// Serialises the import of transfer batches.
    transfers: Mutex<()>,
    pub(crate) peers: Peers,
    /// How long one hand-off may keep retrying a peer that does not answer.
    handoff_timeout: Duration,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").field("routing", &self.routing).finish_non_exhaustive()
    }
}

impl Node {
    /// A server over `storage`, that calls itself `me` in a cluster. A `joining` one serves
    /// nothing until it has joined; the other is standalone until then, and serves every key.
    pub fn new(
        storage: Arc<dyn Storage>,
        me: String,
        peers: Peers,
        handoff_timeout: Duration,
        joining: bool,
    ) -> Arc<Self> {
        Arc::new_cyclic(|this| Node {
            this: this.clone(),
            storage,
            sessions: Sessions::default(),
            routing: RwLock::new(Routing { standalone: true, ownership: Ownership::new(me.clone()) }),
            replicas: Replicas::new(),
            leases: Leases::new(),
            evicted: tokio::sync::Notify::new(),
            installing: tokio::sync::watch::Sender::new(false),
            me,
            incarnation: rand::random::<u64>(),
            joining,
            outgoing: Mutex::new(Outgoing::default()),
            owed: std::sync::Mutex::new(BTreeMap::new()),
            newest_install: tokio::sync::watch::Sender::new(0),
            merging: std::sync::Mutex::new(HashMap::new()),
            as_sent: std::sync::Mutex::new(HashMap::new()),
            transfers: Mutex::new(()),
            peers,
            handoff_timeout,
        })
    }

    /// The address this server has as a member.
    pub(crate) fn me(&self) -> &str {
        &self.me
    }

    /// The epoch of the configuration this server holds (0: none).
    pub fn epoch(&self) -> u64 {
        self.replicas.view().epoch()
    }

    /// This process's incarnation: random, drawn at start.
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// Admits a request for `key`: the returned guard must be held until the operation is done.
    async fn admit(&self, key: &str) -> Result<(RwLockReadGuard<'_, Routing>, Slot), Error> {
        let slot = slot_of(key);
        let routing = self.routing.read().await;
        if routing.standalone && self.joining {
            return Err(Error::Replication("this server has not joined its cluster yet".to_owned()));
        }
        if !routing.standalone {
            routing.ownership.check(slot).map_err(|refused| match refused {
                Refused::WrongShard { epoch, owner } => Error::WrongShard { slot, epoch, owner },
                Refused::Moving { epoch } => Error::Moving { slot, epoch },
            })?;
        }
        Ok((routing, slot))
    }

    /// The value of `key`: at its primary, or at a ready secondary (see
    /// [`crate::replication`]).
    pub async fn get(&self, key: &str) -> Result<Option<String>, Error> {
        self.storage.limits().check_key(key)?;
        match self.admit(key).await {
            Ok((_admitted, slot)) => {
                let view = self.replicas.view();
                if view.replication().consistency == kv_shard::Consistency::Strong
                    && view.replication().factor > 1
                {
                    self.primary_lease(&view, slot).await?;
                }
                self.storage.get(key).await
            }
            Err(refused @ Error::WrongShard { slot, .. }) => self.read_replica(key, slot, refused).await,
            Err(refused) => Err(refused),
        }
    }

    /// Applies `mutation`; if it carries an id, at most once (see [`kv_core::session`]).
    pub async fn write(&self, id: Option<RequestId>, mutation: Mutation) -> Result<Output, Error> {
        self.storage.limits().check_key(&mutation.key)?;
        let (_admitted, slot) = self.admit(&mutation.key).await?;
        let view = self.replicas.view();
        if view.replication().factor > 1 {
            let targets = Node::replica_targets(&view, slot);
            if !targets.is_empty() {
                return self.write_replicated(&view, targets, slot, id, mutation).await;
            }
            // No secondary left, but the servers that lost the slot may still read it.
            self.wait_fence(slot).await;
        }
        let Some(id) = id else {
            return self.storage.apply(mutation).await;
        };
        match self.sessions.begin(id, mutation.fingerprint(), slot, Instant::now())? {
            Begin::Answered(output) => Ok(output),
            Begin::Apply(ticket) => {
                // No await point between the engine applying the write and the ticket recording
                // it: the in-memory engine completes `apply` without yielding.
                let output = self.storage.apply(mutation).await?;
                ticket.finish(&output);
                Ok(output)
            }
        }
    }

    /// Waits until this server owes no hand-off (the shard master resumes failed ones), or
    /// `timeout` passes; returns whether none is owed.
    pub async fn wait_for_handoffs(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut told = false;
        loop {
            // The lock is held while a hand-off runs, so this also waits for one in progress.
            let owed = match tokio::time::timeout_at(deadline, self.outgoing.lock()).await {
                Ok(outgoing) => outgoing.slots(),
                Err(_) => return false,
            };
            if owed == 0 {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                warn!(slots = owed, "stopping with slots not handed off: their data is lost");
                return false;
            }
            if !told {
                info!(slots = owed, "waiting for the shard master to resume hand-offs");
                told = true;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// What this server holds, for `Status`.
    pub async fn status(&self) -> Result<v1::StatusResponse, Error> {
        let keys = self.storage.key_count().await? as u64;
        let routing = self.routing.read().await;
        let incoming = routing.ownership.incoming().values().map(Vec::len).sum::<usize>();
        let (replica_slots, unready) = self.replicas.readiness().await;
        let owed: Vec<v1::ServerSlots> = lock(&self.owed)
            .iter()
            .map(|(to, slots)| v1::ServerSlots {
                server: to.clone(),
                slots: slots.iter().map(|&s| u32::from(s)).collect(),
            })
            .collect();
        let outgoing_slots = owed.iter().map(|o| o.slots.len()).sum::<usize>() as u32;
        let retired = self
            .replicas
            .retired()
            .into_iter()
            .map(|(primary, slots)| v1::ServerSlots {
                server: primary,
                slots: slots.into_iter().map(u32::from).collect(),
            })
            .collect();
        Ok(v1::StatusResponse {
            replica_slots,
            syncing_slots: unready.len() as u32,
            unready: unready.into_iter().map(u32::from).collect(),
            owed,
            retired,
            incarnation: self.incarnation,
            address: routing.ownership.me().to_owned(),
            epoch: routing.ownership.epoch(),
            serving_slots: if routing.standalone { SLOTS } else { routing.ownership.serving() } as u32,
            incoming_slots: incoming as u32,
            outgoing_slots,
            keys,
            standalone: routing.standalone,
        })
    }

    /// Switches to `next` (whose predecessor at the shard master is `previous`), then hands off
    /// the slots this server lost, and those it still owes from earlier epochs, to their owners
    /// in `next`; see the `Node.Install` RPC. `promoted` are slots of a failed primary given to
    /// this server, to serve from its copy; `carried`, slots of a failed owner whose move to it
    /// was not over, with the server that holds their data.
    pub async fn install(
        &self,
        previous: Config,
        next: Config,
        abandoned: Vec<Slot>,
        promoted: Vec<Slot>,
        carried: BTreeMap<Slot, String>,
    ) -> Result<InstallReport, Status> {
        // A hand-off of an older epoch, still running, gives way to this install, which carries
        // it over (an install this server refuses withdraws its claim).
        if next.epoch() > self.epoch() {
            self.newest_install.send_if_modified(|newest| {
                let newer = next.epoch() > *newest;
                if newer {
                    *newest = next.epoch();
                }
                newer
            });
        }
        let mut outgoing = self.outgoing.lock().await;
        let mut report = InstallReport::default();
        let again = {
            let routing = self.routing.read().await;
            !routing.standalone && next.epoch() == routing.ownership.epoch() && abandoned.is_empty()
        };
        // Installing the epoch this server is at only resumes hand-offs: no need to stop requests.
        if !again {
            // Waits for every request admitted so far to finish.
            self.installing.send_replace(true);
            let _done = Finally(|| {
                self.installing.send_replace(false);
            });
            let mut routing = self.routing.write().await;
            if routing.standalone || next.epoch() != routing.ownership.epoch() {
                if !routing.standalone && next.epoch() < routing.ownership.epoch() {
                    return Err(Status::failed_precondition(format!(
                        "this server is at epoch {}, past {}",
                        routing.ownership.epoch(),
                        next.epoch()
                    )));
                }
                let epoch = next.epoch();
                let switched = self
                    .switch(&mut routing, &mut outgoing, &mut report, previous, next, promoted, carried)
                    .await;
                if switched.is_err() {
                    let held = routing.ownership.epoch();
                    self.newest_install.send_if_modified(|newest| {
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
                    abandoned.iter().copied().filter(|&slot| routing.ownership.is_incoming(slot)).collect();
                let partial = slot_set(&incoming);
                self.storage
                    .remove_where(&|key| partial[usize::from(slot_of(key))])
                    .await
                    .map_err(|err| Status::internal(err.to_string()))?;
                self.sessions.forget(|slot| partial[usize::from(slot)]);
                warn!(slots = incoming.len(), "serving slots whose data was lost with their sender, empty");
                for slot in incoming {
                    routing.ownership.abandon(slot);
                    lock(&self.merging).remove(&slot);
                }
            }
        }
        let epoch = outgoing.epoch;
        let me = self.routing.read().await.ownership.me().to_owned();
        let sends = outgoing.to.iter().map(|(to, slots)| {
            let me = me.as_str();
            async move { (to.clone(), slots.len(), self.hand_off(me, to, epoch, slots).await) }
        });
        let mut failures = Vec::new();
        for (to, slots, result) in join_all(sends).await {
            match result {
                Ok(keys) => {
                    report.slots_sent += slots as u64;
                    report.keys_sent += keys;
                    outgoing.to.remove(&to);
                    lock(&self.owed).remove(&to);
                }
                Err(status) => failures.push(format!("to {to}: {}", status.message())),
            }
        }
        if failures.is_empty() {
            Ok(report)
        } else {
            Err(Status::unavailable(format!(
                "hand-off incomplete (the data stays here; installing epoch {epoch} again resumes it): {}",
                failures.join("; ")
            )))
        }
    }

    /// The switch of an install to a new epoch, under the routing write lock and the hand-offs'
    /// lock: the slot table, the replicas, and what is owed to whom.
    #[allow(clippy::too_many_arguments)]
    async fn switch(
        &self,
        routing: &mut Routing,
        outgoing: &mut Outgoing,
        report: &mut InstallReport,
        previous: Config,
        next: Config,
        promoted: Vec<Slot>,
        carried: BTreeMap<Slot, String>,
    ) -> Result<(), Status> {
        let me = self.me.clone();
        // Hand-offs still owed from an earlier epoch (their data is here, and served nowhere)
        // carry over to the slots' owners in this one; those given to this server are served
        // from here at once.
        let mut serving_own = Vec::new();
        let mut carried_over: BTreeMap<String, Vec<Slot>> = BTreeMap::new();
        for &slot in outgoing.to.values().flatten() {
            match next.owner_of_slot(slot).and_then(|id| next.address(id)) {
                Some(owner) if owner == me => serving_own.push(slot),
                Some(owner) => carried_over.entry(owner.to_owned()).or_default().push(slot),
                None => warn!(slot, "no member owns a slot still owed here: its data stays, unserved"),
            }
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
        let mut handoff = routing
            .ownership
            .install(&previous, next.clone(), &sources)
            .map_err(|err| Status::invalid_argument(err.to_string()))?;
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
                .remove_where(&|key| stale_set[usize::from(slot_of(key))])
                .await
                .map_err(|err| Status::internal(err.to_string()))?;
            self.sessions.forget(|slot| stale_set[usize::from(slot)]);
            warn!(slots = stale.len(), "this server was failed over: its slots are served elsewhere now");
            if next.id_of(self.me()).is_none() {
                self.evicted.notify_one();
            }
        }
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
            .filter(|&slot| routing.ownership.is_incoming(slot) && !sources.contains_key(&slot))
            .collect();
        let merged: Vec<(Slot, String)> = sources
            .into_iter()
            .filter(|(slot, from)| *from != me && routing.ownership.is_incoming(*slot))
            .collect();
        let takeovers: Vec<Slot> = promoted
            .iter()
            .chain(&serving_own)
            .copied()
            .chain(merged.iter().map(|(slot, _)| *slot))
            .collect();
        let taken = self.install_replicas(&next, &handing_off, &takeovers).await?;
        let mut partial = 0;
        for &slot in &promoted {
            routing.ownership.abandon(slot);
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
        lock(&self.as_sent).retain(|&slot, _| routing.ownership.check(slot).is_ok());
        {
            let mut merging = lock(&self.merging);
            merging.retain(|&slot, _| routing.ownership.is_incoming(slot));
            for (slot, from) in &merged {
                match taken.get(slot) {
                    // Up to date here: the sender's copy is older. Its resend is acknowledged.
                    Some(Takeover::Complete) => routing.ownership.complete(*slot),
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
        routing.standalone = false;
        let epoch = routing.ownership.epoch();
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
        *lock(&self.owed) = outgoing.to.clone();
        if !handoff.orphaned.is_empty() {
            // Kept, not deleted: the shard master lets the last member go only without keys, so
            // any key here arrived after it checked, and is reported.
            let orphaned = slot_set(&handoff.orphaned);
            let stranded = self
                .storage
                .export(&|key| orphaned[usize::from(slot_of(key))])
                .await
                .map_err(|err| Status::internal(err.to_string()))?
                .len();
            if stranded > 0 {
                error!(keys = stranded, "no server owns our keys any more: they are not served");
            }
        }
        Ok(())
    }

    /// Sends `slots` to `to` in batches, then drops them here; returns the keys sent. Gives up
    /// (keeping the data) when an install of a newer epoch arrives: it carries the hand-off
    /// over.
    async fn hand_off(&self, me: &str, to: &str, epoch: u64, slots: &[Slot]) -> Result<u64, Status> {
        let started = Instant::now();
        let set = slot_set(slots);
        let internal = |err: Error| Status::internal(err.to_string());
        let mut newest = self.newest_install.subscribe();
        let superseded = async move {
            let _ = newest.wait_for(|&newest| newest > epoch).await;
        };
        let send = async {
            // The slots' old secondaries may read their copies until the leases promised to
            // them end: the new owner must not take writes before that.
            if let Some(until) = slots.iter().filter_map(|&slot| self.leases.fence(slot)).max() {
                tokio::time::sleep_until(until.into()).await;
            }
            let entries =
                self.storage.export(&|key| set[usize::from(slot_of(key))]).await.map_err(internal)?;
            let keys = entries.len() as u64;
            let sessions = self.sessions.export(|slot| set[usize::from(slot)]);
            let sent = self.send_slots(me, to, epoch, slots, entries, &sessions).await?;
            Ok::<_, Status>((keys, sent))
        };
        let (keys, (batches, verbatim)) = tokio::select! {
            sent = send => sent?,
            () = superseded => {
                return Err(Status::aborted(format!(
                    "a newer configuration arrived: the hand-off of epoch {epoch} carries over to it"
                )));
            }
        };
        // Everything is at `to`. Where this server stays a secondary of a slot `to` took as sent,
        // the data here is its copy, up to date; the rest is dropped first, then copies of it
        // are rebuilt from `to`.
        // Strong mode only: in eventual mode the new primary applies a write before replicating it,
        // so it may have taken writes this copy refused while awaiting.
        let strong = self.replicas.view().replication().consistency == kv_shard::Consistency::Strong;
        let as_sent = slot_set(if strong { &verbatim } else { &[] });
        let kept: Vec<Slot> =
            self.awaiting(slots).await.into_iter().filter(|&slot| as_sent[usize::from(slot)]).collect();
        let kept_set = slot_set(&kept);
        let dropped = |slot: Slot| set[usize::from(slot)] && !kept_set[usize::from(slot)];
        self.storage.remove_where(&|key| dropped(slot_of(key))).await.map_err(internal)?;
        self.sessions.forget(dropped);
        self.handed_off(slots, &kept).await;
        info!(
            to,
            epoch,
            slots = slots.len(),
            kept_as_copies = kept.len(),
            keys,
            batches,
            took = ?started.elapsed(),
            "handed off slots"
        );
        Ok(keys)
    }

    /// Sends the keys and exactly-once records of `slots` to `to` as `from` would at a move of
    /// `epoch`, in batches of about [`BATCH_BYTES`]; returns the number of batches, and the slots
    /// `to` took exactly as sent.
    pub(crate) async fn send_slots(
        &self,
        from: &str,
        to: &str,
        epoch: u64,
        slots: &[Slot],
        entries: Vec<(String, String)>,
        sessions: &[kv_core::SessionRecord],
    ) -> Result<(usize, Vec<Slot>), Status> {
        let mut by_slot: BTreeMap<Slot, Vec<(String, String)>> = BTreeMap::new();
        for (key, value) in entries {
            by_slot.entry(slot_of(&key)).or_default().push((key, value));
        }
        // The first batch carries the exactly-once records, and completes the empty slots.
        let mut batch = v1::TransferRequest {
            epoch,
            from: from.to_owned(),
            entries: Vec::new(),
            sessions: sessions.iter().map(session_to_wire).collect(),
            complete: slots.iter().filter(|s| !by_slot.contains_key(s)).map(|&s| u32::from(s)).collect(),
        };
        let mut bytes = 0;
        let mut batches = 0;
        let mut verbatim = Vec::new();
        for (slot, entries) in by_slot {
            for (key, value) in entries {
                if bytes > 0 && bytes + key.len() + value.len() > BATCH_BYTES {
                    let sent = std::mem::replace(&mut batch, empty_batch(epoch, from));
                    verbatim.extend(self.send(to, sent).await?);
                    batches += 1;
                    bytes = 0;
                }
                bytes += key.len() + value.len();
                batch.entries.push(v1::Entry { key, value });
            }
            batch.complete.push(u32::from(slot));
        }
        verbatim.extend(self.send(to, batch).await?);
        Ok((batches + 1, verbatim))
    }

    /// Sends one batch, retrying while `to` is unreachable or not yet at `epoch`; returns the
    /// slots it completed that `to` took exactly as sent.
    async fn send(&self, to: &str, batch: v1::TransferRequest) -> Result<Vec<Slot>, Status> {
        let deadline = Instant::now() + self.handoff_timeout;
        // One lost batch must not eat the whole hand-off's time.
        retry_until(deadline, BATCH_TIMEOUT, |timeout| {
            let mut request = self.peers.request(batch.clone());
            request.set_timeout(timeout);
            let client = self.peers.node(to);
            async move { Ok(client?.transfer(request).await?.into_inner()) }
        })
        .await
        .map(|response| response.verbatim.into_iter().filter_map(slot_from_wire).collect())
    }

    /// Installs one batch from the slots' previous owner; returns the slots it completed that
    /// were taken exactly as sent (not merged with a copy here).
    pub async fn transfer(&self, batch: v1::TransferRequest) -> Result<Vec<Slot>, Status> {
        let v1::TransferRequest { epoch, from, entries, sessions, complete } = batch;
        let complete =
            slots_from_wire(complete).map_err(|wire| Status::invalid_argument(format!("no slot {wire}")))?;
        let sessions = sessions
            .into_iter()
            .map(|record| {
                session_from_wire(record).ok_or_else(|| Status::invalid_argument("malformed record"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        // One batch at a time: a resend decided before the first attempt's slots went live
        // must not import after them, over the writes taken since.
        let importing = self.transfers.lock().await;
        // Decide per slot, under the lock, what to do with it.
        let mut take = vec![false; SLOTS];
        {
            let routing = self.routing.read().await;
            if routing.standalone {
                return Err(Status::failed_precondition("a standalone server takes no transfers"));
            }
            let slots = entries.iter().map(|e| slot_of(&e.key)).chain(complete.iter().copied());
            let slots = slots.chain(sessions.iter().flat_map(|r| r.answers.iter().map(|a| a.tag)));
            for slot in slots {
                match routing.ownership.accept(epoch, &from, slot) {
                    Accept::Take => take[usize::from(slot)] = true,
                    Accept::Done => {}
                    Accept::Later => {
                        return Err(Status::unavailable(format!(
                            "this server has not installed epoch {epoch} yet; retry"
                        )));
                    }
                    Accept::Refuse(reason) => return Err(Status::failed_precondition(reason)),
                }
            }
        }
        // A failed owner's slot taken over here keeps what its copy here holds newer.
        let entries: Vec<(String, String)> = {
            let merging = lock(&self.merging);
            entries
                .into_iter()
                .filter(|e| {
                    let slot = slot_of(&e.key);
                    take[usize::from(slot)] && !merging.get(&slot).is_some_and(|newer| newer.contains(&e.key))
                })
                .map(|e| (e.key, e.value))
                .collect()
        };
        self.storage.import(entries).await.map_err(|err| Status::internal(err.to_string()))?;
        let sessions = sessions
            .into_iter()
            .map(|mut record| {
                record.answers.retain(|a| take[usize::from(a.tag)]);
                record
            })
            .collect();
        self.sessions.import(sessions, Instant::now());
        let mut routing = self.routing.write().await;
        for &slot in &complete {
            if take[usize::from(slot)] && routing.ownership.accept(epoch, &from, slot) == Accept::Take {
                routing.ownership.complete(slot);
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
            .filter(|&slot| routing.ownership.accept(epoch, &from, slot) == Accept::Done)
            .collect();
        drop(routing);
        drop(importing);
        // The sender drops its copy once this is acknowledged: only once another copy exists.
        self.until_replicated(&served, &from).await?;
        // Told on every answer, a resend's too: the first one may have been lost.
        let as_sent = lock(&self.as_sent);
        Ok(served.into_iter().filter(|slot| as_sent.get(slot) == Some(&from)).collect())
    }
}

fn empty_batch(epoch: u64, from: &str) -> v1::TransferRequest {
    v1::TransferRequest { epoch, from: from.to_owned(), ..Default::default() }
}

/// Runs its closure when dropped.
struct Finally<F: FnMut()>(F);

impl<F: FnMut()> Drop for Finally<F> {
    fn drop(&mut self) {
        (self.0)();
    }
}
