//! A storage server's side of replication: the primary's writes to its secondaries, the
//! secondaries' reads and the catch-up of new ones (the protocol is in `kv_replica`'s docs).
//!
//! Locks, and why they cannot form a cycle between servers:
//! - a primary holds its slot's *sequence lock* (and the routing read guard) while a write is
//!   replicated, and waits for its secondaries;
//! - a secondary's `Replicate` handler takes only its own *replica lock* of the slot (one slot at
//!   a time, never the routing lock) and waits for nothing remote;
//! - a read at a secondary holds the replica lock only while it looks at its own engine; one that
//!   must ask the primary lets go first;
//! - a secondary still handing a slot off (it was its primary) answers its new primary's writes
//!   with ABORTED, which the primary does not retry: a primary waiting there would hold its
//!   routing lock, which the hand-off's transfers to it need.
//!
//! An install holds the replica locks of the slots whose role changes while it resets them and
//! switches the view, so a `Replicate` handler, which checks the view only once it holds the
//! slot's lock, never applies an old primary's write to a new copy.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use kv_core::{Answer, Error, Mutation, Output, RequestId, SessionRecord, Storage};
use kv_proto::convert::{session_from_wire, session_to_wire, slot_from_wire, slots_from_wire};
use kv_proto::v1;
use kv_replica::{ReplicatedWrite, Role, SlotReplica, SlotState, Takeover, keeps_copy, role, secondaries};
use kv_shard::{Config, Consistency, SLOTS, Slot, slot_of};
use tokio::sync::{Mutex, MutexGuard, Notify};
use tonic::Status;
use tracing::{debug, info, warn};

use crate::node::Node;
use crate::peers::retry_until;

/// Longest a write waits for its synchronous secondaries before it fails (retryable).
const REPLICATE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a write waiting for its secondaries lets a pending install wait before giving up.
const INSTALL_GRACE: Duration = Duration::from_millis(50);
/// Longest one replication call may take before it is tried again.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest a read at a secondary waits for the primary it has to ask.
const READ_TIMEOUT: Duration = Duration::from_secs(1);
/// Largest snapshot or flush batch, in bytes of keys and values.
const BATCH_BYTES: usize = 1 << 20;
/// Longest a receiver holds back its acknowledgement of a hand-off's last batch while the
/// slots' secondaries catch up (the sender then asks again); below the sender's batch timeout.
const REPLICATED_WAIT: Duration = Duration::from_secs(3);
/// How often a link retries what it could not send.
const RETRY_INTERVAL: Duration = Duration::from_millis(100);

/// The replication state of one server.
pub(crate) struct Replicas {
    /// The configuration this server holds (epoch 0 while standalone).
    view: std::sync::RwLock<Arc<Config>>,
    /// Primary side: each slot's writes, locked while a write is replicated.
    seqs: Vec<Mutex<SlotWrites>>,
    /// Secondary side: each slot's copy.
    slots: Vec<Mutex<SlotReplica>>,
    /// Primary side: what each secondary is owed in the background.
    links: std::sync::Mutex<HashMap<String, Arc<Link>>>,
    /// Copies of slots that moved away from their primary, kept until the move is over.
    retired: std::sync::Mutex<BTreeMap<Slot, Retired>>,
}

/// A primary's record of one slot's writes.
#[derive(Debug, Default)]
struct SlotWrites {
    /// The number of the last write.
    seq: u64,
    /// Strong mode: writes prepared and then not applied (a secondary did not take them), by
    /// key, until the next write of the key that every secondary takes tells them to drop them.
    aborted: HashMap<String, Vec<u64>>,
}

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

impl std::fmt::Debug for Replicas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replicas").field("epoch", &self.view().epoch()).finish_non_exhaustive()
    }
}

/// What one secondary is owed, sent by a background task.
#[derive(Debug)]
struct Link {
    to: String,
    /// Strong mode: writes committed here, to tell it.
    commits: std::sync::Mutex<Vec<v1::Committed>>,
    /// Eventual mode, outside the synchronous secondaries: keys written since the last flush.
    owed_keys: std::sync::Mutex<HashSet<String>>,
    /// Slots it is catching up, owed a snapshot, with the epoch that made them owed.
    snapshots: std::sync::Mutex<BTreeMap<Slot, u64>>,
    wake: Notify,
}

/// A poisoned lock's data is still consistent here (no invariant spans a panic): take it.
pub(crate) fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Replicas {
    pub(crate) fn new() -> Self {
        Replicas {
            view: std::sync::RwLock::new(Arc::new(Config::new())),
            seqs: (0..SLOTS).map(|_| Mutex::new(SlotWrites::default())).collect(),
            slots: (0..SLOTS).map(|_| Mutex::new(SlotReplica::default())).collect(),
            links: std::sync::Mutex::new(HashMap::new()),
            retired: std::sync::Mutex::new(BTreeMap::new()),
        }
    }

    /// The configuration this server holds.
    pub(crate) fn view(&self) -> Arc<Config> {
        Arc::clone(&self.view.read().unwrap_or_else(std::sync::PoisonError::into_inner))
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

    /// Whether the primary here still owes secondary `to` a snapshot of `slot`.
    fn snapshot_owed(&self, to: &str, slot: Slot) -> bool {
        let link = lock(&self.links).get(to).cloned();
        link.is_some_and(|link| lock(&link.snapshots).contains_key(&slot))
    }

    /// Wakes every link (a slot became servable here: its snapshots can go).
    fn wake_links(&self) {
        for link in lock(&self.links).values() {
            link.wake.notify_one();
        }
    }
}

impl Link {
    fn new(to: &str) -> Self {
        Link {
            to: to.to_owned(),
            commits: std::sync::Mutex::new(Vec::new()),
            owed_keys: std::sync::Mutex::new(HashSet::new()),
            snapshots: std::sync::Mutex::new(BTreeMap::new()),
            wake: Notify::new(),
        }
    }
}

/// The wire form of one write.
fn write_to_wire(
    slot: Slot,
    seq: u64,
    key: &str,
    value: Option<String>,
    session: Option<&SessionRecord>,
) -> v1::ReplicatedWrite {
    v1::ReplicatedWrite {
        slot: u32::from(slot),
        seq,
        key: key.to_owned(),
        value,
        session: session.map(session_to_wire),
        aborted: Vec::new(),
    }
}

/// The exactly-once record of one answered write.
fn session_record(id: RequestId, fingerprint: u64, output: &Output, slot: Slot) -> SessionRecord {
    SessionRecord {
        client: id.client,
        floor: id.first_unanswered,
        answers: vec![Answer { seq: id.seq, fingerprint, output: output.clone(), tag: slot }],
    }
}

/// Sets `key` to `value` (or removes it) in `storage`.
async fn store(storage: &dyn Storage, key: String, value: Option<String>) -> Result<(), Error> {
    let mutation = match value {
        Some(value) => Mutation::put(key, value),
        None => Mutation::delete(key),
    };
    storage.apply(mutation).await.map(drop)
}

impl Node {
    /// The secondaries of `slot` this write must reach, if the slot is replicated.
    pub(crate) fn replica_targets(view: &Config, slot: Slot) -> Vec<String> {
        secondaries(view, slot).into_iter().map(str::to_owned).collect()
    }

    /// Applies a write at the primary of a replicated slot, and replicates it (see the
    /// protocol); the caller holds the routing read guard.
    pub(crate) async fn write_replicated(
        &self,
        view: &Config,
        targets: Vec<String>,
        slot: Slot,
        id: Option<RequestId>,
        mutation: Mutation,
    ) -> Result<Output, Error> {
        let mut seq = self.replicas.seqs[usize::from(slot)].lock().await;
        self.primary_lease(view, slot).await?;
        let fingerprint = mutation.fingerprint();
        let ticket = match id {
            None => None,
            Some(id) => match self.sessions.begin(id, fingerprint, slot, Instant::now())? {
                kv_core::session::Begin::Answered(output) => return Ok(output),
                kv_core::session::Begin::Apply(ticket) => Some(ticket),
            },
        };
        let Mutation { key, op } = mutation;
        let replication = *view.replication();
        match replication.consistency {
            Consistency::Strong => {
                let mut value = self.storage.get(&key).await?;
                let output = op.apply(&mut value, self.storage.limits())?;
                seq.seq += 1;
                let session = id.map(|id| session_record(id, fingerprint, &output, slot));
                let mut write = write_to_wire(slot, seq.seq, &key, value.clone(), session.as_ref());
                write.aborted = seq.aborted.get(&key).cloned().unwrap_or_default();
                // Applying it is the linearization point: from then on, reads here see the write.
                let applied =
                    match self.replicate_now(view, &targets, vec![write], v1::WriteKind::Prepare).await {
                        Ok(()) => store(self.storage.as_ref(), key.clone(), value).await,
                        Err(err) => Err(err),
                    };
                if let Err(err) = applied {
                    // Not applied here: the secondaries that prepared it must not commit it.
                    let number = seq.seq;
                    seq.aborted.entry(key).or_default().push(number);
                    return Err(err);
                }
                seq.aborted.remove(&key);
                if let Some(ticket) = ticket {
                    ticket.finish(&output);
                }
                let committed = v1::Committed { slot: u32::from(slot), seq: seq.seq };
                for target in &targets {
                    let link = self.link(target);
                    lock(&link.commits).push(committed);
                    link.wake.notify_one();
                }
                Ok(output)
            }
            Consistency::Eventual => {
                let output = self.storage.apply(Mutation { key: key.clone(), op }).await?;
                if let Some(ticket) = ticket {
                    ticket.finish(&output);
                }
                let value = self.storage.get(&key).await?;
                seq.seq += 1;
                let (sync, background) = targets.split_at(replication.sync_replicas.min(targets.len()));
                for target in background {
                    lock(&self.link(target).owed_keys).insert(key.clone());
                }
                if !sync.is_empty() {
                    let session = id.map(|id| session_record(id, fingerprint, &output, slot));
                    let write = write_to_wire(slot, seq.seq, &key, value, session.as_ref());
                    if let Err(err) = self.replicate_now(view, sync, vec![write], v1::WriteKind::Apply).await
                    {
                        // Applied here, and answered to a retry: the background flush repairs
                        // the synchronous secondaries that missed it.
                        for target in sync {
                            lock(&self.link(target).owed_keys).insert(key.clone());
                        }
                        return Err(err);
                    }
                }
                Ok(output)
            }
        }
    }

    /// Sends `writes` to every one of `targets` and waits for all to confirm, retrying those
    /// that are unreachable or behind until [`REPLICATE_TIMEOUT`].
    async fn replicate_now(
        &self,
        view: &Config,
        targets: &[String],
        writes: Vec<v1::ReplicatedWrite>,
        kind: v1::WriteKind,
    ) -> Result<(), Error> {
        let request = v1::ReplicateRequest {
            epoch: view.epoch(),
            from: self.me().to_owned(),
            writes,
            kind: kind as i32,
            ..Default::default()
        };
        let deadline = Instant::now() + REPLICATE_TIMEOUT;
        let sends = targets.iter().map(|target| {
            let request = &request;
            async move { (target, self.send_replicate(target, request, deadline).await.map(drop)) }
        });
        // A write still waiting for a secondary when an install comes gives up soon: the install
        // waits for it, and may be the one that removes that secondary (it died).
        let mut installing = self.installing.subscribe();
        let give_up = async move {
            let _ = installing.wait_for(|&pending| pending).await;
            tokio::time::sleep(INSTALL_GRACE).await;
        };
        let results = tokio::select! {
            results = join_all(sends) => results,
            () = give_up => {
                return Err(Error::Replication(
                    "the cluster's configuration is changing while a secondary does not answer".to_owned(),
                ));
            }
        };
        let failures: Vec<String> = results
            .into_iter()
            .filter_map(|(target, result)| {
                result.err().map(|status| format!("{target}: {}", status.message()))
            })
            .collect();
        if failures.is_empty() {
            Ok(())
        } else {
            Err(Error::Replication(format!(
                "secondaries did not confirm the write ({})",
                failures.join("; ")
            )))
        }
    }

    /// One `Replicate` call to `to`, retried while it is unreachable or behind, until `deadline`.
    async fn send_replicate(
        &self,
        to: &str,
        request: &v1::ReplicateRequest,
        deadline: Instant,
    ) -> Result<v1::ReplicateResponse, Status> {
        retry_until(deadline, ATTEMPT_TIMEOUT, |timeout| {
            let mut request = self.peers.request(request.clone());
            request.set_timeout(timeout);
            let client = self.peers.node(to);
            async move { Ok(client?.replicate(request).await?.into_inner()) }
        })
        .await
    }

    /// The link to secondary `to`, started on first use.
    fn link(&self, to: &str) -> Arc<Link> {
        let mut links = lock(&self.replicas.links);
        if let Some(link) = links.get(to) {
            return Arc::clone(link);
        }
        let link = Arc::new(Link::new(to));
        links.insert(to.to_owned(), Arc::clone(&link));
        tokio::spawn(run_link(self.this.clone(), Arc::clone(&link)));
        link
    }

    /// A read at a secondary of `key`'s slot, if this server is a ready one; `refused` (the
    /// primary's refusal) otherwise.
    pub(crate) async fn read_replica(
        &self,
        key: &str,
        slot: Slot,
        refused: Error,
    ) -> Result<Option<String>, Error> {
        let primary = {
            let copy = self.replicas.slots[usize::from(slot)].lock().await;
            if !copy.is_ready() {
                return Err(refused);
            }
            let view = self.replicas.view();
            if view.replication().consistency == Consistency::Eventual {
                return self.storage.get(key).await;
            }
            self.secondary_lease(&view, slot)?;
            if !copy.is_dirty(key) {
                return self.storage.get(key).await;
            }
            view.owner_of_slot(slot).and_then(|id| view.address(id)).map(str::to_owned)
        };
        // A write of the key is prepared here and may be committed: only the primary knows.
        let Some(primary) = primary else { return Err(refused) };
        let channel = self.peers.channel(&primary).map_err(|s| Error::Replication(s.message().to_owned()))?;
        let mut client = v1::key_value_client::KeyValueClient::new(channel);
        let mut request = tonic::Request::new(v1::GetRequest { key: key.to_owned() });
        request.set_timeout(READ_TIMEOUT);
        match client.get(request).await {
            Ok(response) => Ok(response.into_inner().value),
            Err(status) => Err(Error::Replication(format!(
                "the read had to ask the primary {primary}, which answered: {}",
                status.message()
            ))),
        }
    }

    /// Takes one `Replicate` batch from a primary; returns the slots of a snapshot batch not
    /// taken, because this server still hands them off (it was their primary).
    pub(crate) async fn replicate(&self, request: v1::ReplicateRequest) -> Result<Vec<Slot>, Status> {
        let v1::ReplicateRequest { epoch, from, writes, kind, commits, synced, sessions } = request;
        let kind = v1::WriteKind::try_from(kind)
            .map_err(|_| Status::invalid_argument(format!("unknown write kind {kind}")))?;
        let synced =
            slots_from_wire(synced).map_err(|wire| Status::invalid_argument(format!("no slot {wire}")))?;
        let view = self.replicas.view();
        if epoch > view.epoch() {
            return Err(Status::unavailable(format!(
                "this server is at epoch {}, behind the sender's {epoch}; retry",
                view.epoch()
            )));
        }
        let mut refused = HashSet::new();
        for write in writes {
            let slot = slot_from_wire(write.slot).ok_or_else(|| Status::invalid_argument("no such slot"))?;
            if slot_of(&write.key) != slot {
                return Err(Status::invalid_argument(format!("key {:?} is not in slot {slot}", write.key)));
            }
            let session = match write.session {
                Some(record) => Some(
                    session_from_wire(record).ok_or_else(|| Status::invalid_argument("malformed record"))?,
                ),
                None => None,
            };
            if refused.contains(&slot) {
                continue;
            }
            let mut copy = if kind == v1::WriteKind::Snapshot {
                let Some(copy) = self.snapshot_copy(&from, slot, epoch).await? else {
                    refused.insert(slot);
                    continue;
                };
                copy
            } else {
                self.copy_from(&from, slot).await?
            };
            if kind != v1::WriteKind::Snapshot && !copy.takes_writes_from(epoch) {
                return Err(Status::failed_precondition(format!(
                    "slot {slot} started catching up after epoch {epoch}: this write is older than its copy"
                )));
            }
            let aborted = write.aborted;
            let write = ReplicatedWrite { seq: write.seq, key: write.key, value: write.value, session };
            match kind {
                v1::WriteKind::Prepare => copy.prepare(write, &aborted),
                v1::WriteKind::Apply => {
                    copy.touch(&write.key);
                    self.apply_replicated(write).await?;
                }
                v1::WriteKind::Snapshot => {
                    if copy.takes_snapshot_of(&write.key, epoch) {
                        self.apply_replicated(write).await?;
                    }
                }
            }
        }
        for committed in commits {
            let slot =
                slot_from_wire(committed.slot).ok_or_else(|| Status::invalid_argument("no such slot"))?;
            // A slot not (or no longer) replicated here from `from` has nothing to commit: its
            // copy was reset. The batch's other commits still count.
            let Ok(mut copy) = self.copy_from(&from, slot).await else { continue };
            if let Some(write) = copy.commit(committed.seq) {
                self.apply_replicated(write).await?;
            }
        }
        if kind == v1::WriteKind::Snapshot && !sessions.is_empty() {
            self.import_snapshot_sessions(&from, epoch, sessions, &refused).await?;
        }
        for slot in synced {
            if refused.contains(&slot) {
                continue;
            }
            let Some(mut copy) = self.snapshot_copy(&from, slot, epoch).await? else {
                refused.insert(slot);
                continue;
            };
            copy.synced(epoch);
            debug!(slot, from, "caught up");
        }
        Ok(refused.into_iter().collect())
    }

    /// Takes the exactly-once records of a snapshot from `from`, read at `epoch`: the answers of
    /// the slots whose copy here is catching up and takes it (not those `refused`).
    async fn import_snapshot_sessions(
        &self,
        from: &str,
        epoch: u64,
        records: Vec<v1::SessionRecord>,
        refused: &HashSet<Slot>,
    ) -> Result<(), Status> {
        let mut records = records
            .into_iter()
            .map(|record| {
                session_from_wire(record).ok_or_else(|| Status::invalid_argument("malformed record"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let tags: std::collections::BTreeSet<Slot> =
            records.iter().flat_map(|r| r.answers.iter().map(|a| a.tag)).collect();
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
        self.sessions.import(records, Instant::now());
        Ok(())
    }

    /// The copy of `slot` that a snapshot from `from`, read at `epoch`, goes to; none if it
    /// cannot take it yet (it is still being handed off from here, or catching up since a later
    /// epoch): the slot is then refused, not silently dropped, and the primary sends it again.
    async fn snapshot_copy(
        &self,
        from: &str,
        slot: Slot,
        epoch: u64,
    ) -> Result<Option<MutexGuard<'_, SlotReplica>>, Status> {
        match self.copy_from(from, slot).await {
            Ok(copy) if matches!(copy.state(), SlotState::Syncing { .. }) && !copy.takes_snapshot(epoch) => {
                Ok(None)
            }
            Ok(copy) => Ok(Some(copy)),
            Err(status) if status.code() == tonic::Code::Aborted => Ok(None),
            Err(status) => Err(status),
        }
    }

    /// The copy of `slot`, locked, if `from` is its primary and this server its secondary in
    /// the configuration held (checked under the lock, so an install cannot slip in between).
    async fn copy_from(&self, from: &str, slot: Slot) -> Result<MutexGuard<'_, SlotReplica>, Status> {
        let copy = self.replicas.slots[usize::from(slot)].lock().await;
        let view = self.replicas.view();
        let primary = view.owner_of_slot(slot).and_then(|id| view.address(id));
        if primary != Some(from) || role(&view, self.me(), slot) != Role::Secondary {
            return Err(Status::failed_precondition(format!(
                "at epoch {} this server is not a secondary of slot {slot} under {from}",
                view.epoch()
            )));
        }
        match copy.state() {
            // Not retried by the primary, whose write fails at once (the client retries): a
            // primary waiting here would hold its routing lock while this server's hand-off to
            // it waits for that lock.
            SlotState::Awaiting => {
                Err(Status::aborted(format!("slot {slot} is still being handed off from here; retry")))
            }
            SlotState::Idle => {
                Err(Status::failed_precondition(format!("slot {slot} is not replicated here")))
            }
            SlotState::Syncing { .. } | SlotState::Ready => Ok(copy),
        }
    }

    async fn apply_replicated(&self, write: ReplicatedWrite) -> Result<(), Status> {
        store(self.storage.as_ref(), write.key, write.value)
            .await
            .map_err(|err| Status::internal(err.to_string()))?;
        if let Some(record) = write.session {
            self.sessions.import(vec![record], Instant::now());
        }
        Ok(())
    }

    /// Switches the replication state from the configuration held to `next`, under the routing
    /// write lock: resets the copies this server cannot keep, drops the data of slots it no
    /// longer holds, and owes snapshots to the secondaries that need one. `handing_off` are the
    /// slots whose data this server still holds to send away (it was their primary, or carries
    /// an unfinished hand-off over): their data is never dropped here. `takeovers` are the slots
    /// it becomes the primary of in place of a failed one: their prepared writes are committed,
    /// and the answer says, per slot, what its copy held.
    pub(crate) async fn install_replicas(
        &self,
        next: &Config,
        handing_off: &[Slot],
        takeovers: &[Slot],
    ) -> Result<BTreeMap<Slot, Takeover>, Status> {
        let previous = self.replicas.view();
        let me = self.me();
        let sending = slot_set(handing_off);
        let taken_set = slot_set(takeovers);
        // Secondary side: which copies change.
        let mut resets: BTreeMap<Slot, SlotState> = BTreeMap::new();
        let mut drop_data = vec![false; SLOTS];
        for slot in 0..SLOTS as Slot {
            let was = role(&previous, me, slot);
            let now = role(next, me, slot);
            let sends = sending[usize::from(slot)];
            match now {
                Role::Secondary if keeps_copy(&previous, next, me, slot) => {}
                Role::Secondary if sends => {
                    resets.insert(slot, SlotState::Awaiting);
                }
                Role::Secondary => {
                    resets.insert(slot, SlotState::Syncing { touched: HashSet::new(), since: next.epoch() });
                    drop_data[usize::from(slot)] = true;
                }
                Role::Primary if taken_set[usize::from(slot)] => {
                    resets.insert(slot, SlotState::Idle);
                }
                Role::Primary | Role::None if was == Role::Secondary => {
                    resets.insert(slot, SlotState::Idle);
                    drop_data[usize::from(slot)] = !sends;
                }
                Role::Primary | Role::None => {}
            }
        }
        // A copy that was never reset to anything holds no data to drop.
        // A later configuration means the moves of earlier ones are over.
        lock(&self.replicas.retired).retain(|_, copy| copy.epoch >= next.epoch());
        let mut guards = Vec::with_capacity(resets.len());
        let mut committed = 0;
        let mut taken = BTreeMap::new();
        let mut retiring: BTreeMap<Slot, Vec<ReplicatedWrite>> = BTreeMap::new();
        for (&slot, state) in &resets {
            let mut copy = self.replicas.slots[usize::from(slot)].lock().await;
            if *copy.state() == SlotState::Idle && *state == SlotState::Idle {
                drop_data[usize::from(slot)] = false;
            }
            if taken_set[usize::from(slot)] {
                // Each prepared write may have been acknowledged by the failed primary.
                let (takeover, pending) = copy.take_over();
                for write in pending {
                    self.apply_replicated(write).await?;
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
            guards.push(copy);
        }
        if !retiring.is_empty() {
            self.retire(&previous, next.epoch(), retiring).await?;
        }
        if committed > 0 {
            info!(writes = committed, "committed the writes a failed primary had prepared");
        }
        if drop_data.iter().any(|&d| d) {
            let dropped = self
                .storage
                .remove_where(&|key| drop_data[usize::from(slot_of(key))])
                .await
                .map_err(|err| Status::internal(err.to_string()))?;
            self.sessions.forget(|slot| drop_data[usize::from(slot)]);
            if dropped > 0 {
                info!(keys = dropped, "dropped copies this server no longer keeps");
            }
        }
        *self.replicas.view.write().unwrap_or_else(std::sync::PoisonError::into_inner) =
            Arc::new(next.clone());
        self.fence_install(&previous, next, takeovers);
        drop(guards);
        // Primary side: snapshots owed to secondaries that cannot keep their copies.
        let mut owed: BTreeMap<&str, Vec<Slot>> = BTreeMap::new();
        for slot in 0..SLOTS as Slot {
            if role(next, me, slot) != Role::Primary {
                continue;
            }
            for target in secondaries(next, slot) {
                if !keeps_copy(&previous, next, target, slot) {
                    owed.entry(target).or_default().push(slot);
                }
            }
        }
        // Links to servers that are no longer secondaries of ours forget what they owed.
        let links: Vec<Arc<Link>> = lock(&self.replicas.links).values().cloned().collect();
        for link in links {
            lock(&link.snapshots).retain(|&slot, _| {
                role(next, me, slot) == Role::Primary && secondaries(next, slot).contains(&link.to.as_str())
            });
        }
        let resyncs = owed.values().map(Vec::len).sum::<usize>();
        for (target, slots) in owed {
            let link = self.link(target);
            lock(&link.snapshots).extend(slots.into_iter().map(|slot| (slot, next.epoch())));
            link.wake.notify_one();
        }
        if !resets.is_empty() || resyncs > 0 {
            info!(
                epoch = next.epoch(),
                copies_reset = resets.len(),
                snapshots_owed = resyncs,
                "replica roles switched"
            );
        }
        Ok(taken)
    }

    /// Waits until every secondary of `slots`, but `sender` (which sent them here, and rebuilds
    /// its own copy once its hand-off is over), holds a copy caught up with this server, the
    /// slots' new primary; fails (retryable) after [`REPLICATED_WAIT`]. A receiver acknowledges
    /// a hand-off's last batch only then, so the sender drops its copy only once another copy
    /// exists: a receiver that dies at any point of a move leaves either the sender's data or
    /// an up-to-date secondary.
    pub(crate) async fn until_replicated(&self, slots: &[Slot], sender: &str) -> Result<(), Status> {
        let deadline = Instant::now() + REPLICATED_WAIT;
        self.replicas.wake_links();
        loop {
            // Read again each time: a failover may change the secondaries.
            let view = self.replicas.view();
            let me = view.id_of(self.me());
            if slots.iter().any(|&slot| me.is_none() || view.owner_of_slot(slot) != me) {
                // Moved on (this server was failed over): the sender keeps its data.
                return Err(Status::unavailable(format!(
                    "some of the slots are not this server's any more at epoch {}",
                    view.epoch()
                )));
            }
            let behind: HashSet<&str> = slots
                .iter()
                .flat_map(|&slot| secondaries(&view, slot).into_iter().map(move |to| (to, slot)))
                .filter(|&(to, slot)| to != sender && self.replicas.snapshot_owed(to, slot))
                .map(|(to, _)| to)
                .collect();
            if behind.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let mut behind: Vec<&str> = behind.into_iter().collect();
                behind.sort_unstable();
                return Err(Status::unavailable(format!(
                    "the slots arrived, but their secondaries {} are still catching up; retry",
                    behind.join(", ")
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Of `slots`, those whose copy here awaits their hand-off (this server was their primary,
    /// and stays a secondary).
    pub(crate) async fn awaiting(&self, slots: &[Slot]) -> Vec<Slot> {
        let mut awaiting = Vec::new();
        for &slot in slots {
            if *self.replicas.slots[usize::from(slot)].lock().await.state() == SlotState::Awaiting {
                awaiting.push(slot);
            }
        }
        awaiting
    }

    /// The hand-off of `slots` (as their old primary) is done, and their data dropped here but
    /// for `kept`: copies awaiting it of the `kept` slots (which the new primary took exactly as
    /// sent) are up to date with the data here, the other ones start catching up.
    pub(crate) async fn handed_off(&self, slots: &[Slot], kept: &[Slot]) {
        let epoch = self.replicas.view().epoch();
        let kept = slot_set(kept);
        for &slot in slots {
            let mut copy = self.replicas.slots[usize::from(slot)].lock().await;
            if kept[usize::from(slot)] {
                copy.keep_handed_off();
            } else {
                copy.start_syncing(epoch);
            }
        }
    }

    /// Keeps copies of slots moving away from their primary (with the writes prepared here,
    /// which the primary may have acknowledged), in case it dies before its hand-off is done.
    async fn retire(
        &self,
        previous: &Config,
        epoch: u64,
        retiring: BTreeMap<Slot, Vec<ReplicatedWrite>>,
    ) -> Result<(), Status> {
        let set = slot_set(&retiring.keys().copied().collect::<Vec<_>>());
        let entries = self
            .storage
            .export(&|key| set[usize::from(slot_of(key))])
            .await
            .map_err(|err| Status::internal(err.to_string()))?;
        let mut by_slot: BTreeMap<Slot, BTreeMap<String, String>> = BTreeMap::new();
        for (key, value) in entries {
            by_slot.entry(slot_of(&key)).or_default().insert(key, value);
        }
        let sessions = self.sessions.export(|slot| set[usize::from(slot)]);
        let mut retired = lock(&self.replicas.retired);
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

    /// Sends the copies kept of `slots` to `to`, as their primary `sender`, which died during the
    /// move of `epoch`, would have; returns the keys sent.
    pub(crate) async fn hand_off_copy(&self, request: v1::HandOffCopyRequest) -> Result<u64, Status> {
        let v1::HandOffCopyRequest { epoch, sender, to, slots, as_snapshot } = request;
        let slots =
            slots_from_wire(slots).map_err(|wire| Status::invalid_argument(format!("no slot {wire}")))?;
        let (entries, sessions) = {
            let retired = lock(&self.replicas.retired);
            let missing: Vec<Slot> = slots
                .iter()
                .copied()
                .filter(|slot| !retired.get(slot).is_some_and(|c| c.epoch == epoch && c.primary == sender))
                .collect();
            if !missing.is_empty() {
                return Err(Status::failed_precondition(format!(
                    "no copy kept here of {} of the slots {sender} was moving at epoch {epoch}",
                    missing.len()
                )));
            }
            let mut entries = Vec::new();
            let mut sessions = Vec::new();
            for slot in &slots {
                if let Some(copy) = retired.get(slot) {
                    entries.extend(copy.entries.iter().cloned());
                    sessions.extend(copy.sessions.iter().cloned());
                }
            }
            (entries, sessions)
        };
        let keys = entries.len() as u64;
        let started = Instant::now();
        if as_snapshot {
            let batches = snapshot_batches(entries, &slots);
            let deadline = Instant::now() + ATTEMPT_TIMEOUT * 5;
            let mut sessions = Some(sessions);
            for (writes, synced) in batches {
                let request = v1::ReplicateRequest {
                    epoch,
                    from: sender.clone(),
                    writes,
                    kind: v1::WriteKind::Snapshot as i32,
                    synced: synced.into_iter().map(u32::from).collect(),
                    sessions: sessions.take().unwrap_or_default().iter().map(session_to_wire).collect(),
                    ..Default::default()
                };
                let response = self.send_replicate(&to, &request, deadline).await?;
                if !response.refused.is_empty() {
                    return Err(Status::failed_precondition(format!(
                        "{to} took no snapshot of {} of the slots (at epoch {epoch})",
                        response.refused.len()
                    )));
                }
            }
        } else {
            // What the new owner took as sent says nothing about this server's copies.
            self.send_slots(&sender, &to, epoch, &slots, entries, &sessions).await?;
        }
        let mut retired = lock(&self.replicas.retired);
        for slot in &slots {
            retired.remove(slot);
        }
        warn!(to, epoch, sender, as_snapshot, slots = slots.len(), keys, took = ?started.elapsed(), "handed off the copies of a dead primary's slots");
        Ok(keys)
    }

    /// Sends `link` the commits it is owed; keeps them if it is unreachable.
    async fn send_commits(&self, link: &Link) -> bool {
        let commits = std::mem::take(&mut *lock(&link.commits));
        if commits.is_empty() {
            return true;
        }
        let request = v1::ReplicateRequest {
            epoch: self.replicas.view().epoch(),
            from: self.me().to_owned(),
            commits,
            ..Default::default()
        };
        let deadline = Instant::now() + ATTEMPT_TIMEOUT;
        match self.send_replicate(&link.to, &request, deadline).await {
            Ok(_) => true,
            Err(status) if crate::peers::retryable(&status) => {
                let mut commits = lock(&link.commits);
                let mut retried = request.commits;
                retried.append(&mut commits);
                *commits = retried;
                false
            }
            Err(status) => {
                // Not our secondary any more: its copy is reset anyway.
                debug!(to = link.to, reason = status.message(), "commits dropped");
                true
            }
        }
    }

    /// Sends `link` the current values of the keys it is owed (eventual mode's background
    /// writes).
    async fn flush(&self, link: &Link) -> bool {
        let keys = std::mem::take(&mut *lock(&link.owed_keys));
        if keys.is_empty() {
            return true;
        }
        let view = self.replicas.view();
        let mut writes = Vec::with_capacity(keys.len());
        let mut unsent = Vec::new();
        for key in keys {
            let slot = slot_of(&key);
            if role(&view, self.me(), slot) != Role::Primary
                || !secondaries(&view, slot).contains(&link.to.as_str())
            {
                continue;
            }
            match self.storage.get(&key).await {
                Ok(value) => writes.push(write_to_wire(slot, 0, &key, value, None)),
                Err(_) => unsent.push(key),
            }
        }
        let mut ok = true;
        let mut batch = Vec::new();
        let mut bytes = 0;
        let mut writes = writes.into_iter().peekable();
        while let Some(write) = writes.next() {
            bytes += write.key.len() + write.value.as_ref().map_or(0, String::len);
            batch.push(write);
            if bytes >= BATCH_BYTES || writes.peek().is_none() {
                let sent = std::mem::take(&mut batch);
                bytes = 0;
                let keys: Vec<String> = sent.iter().map(|w| w.key.clone()).collect();
                if self.send_batches(&view, link, sent, v1::WriteKind::Apply, Vec::new(), &[]).await.is_none()
                {
                    // Sent again later, with the values of then.
                    unsent.extend(keys);
                    unsent.extend(writes.by_ref().map(|w| w.key));
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

    /// Sends the snapshots `link` is owed, of the slots this server serves now.
    async fn send_snapshots(&self, link: &Link) -> bool {
        let owed: Vec<(Slot, u64)> = lock(&link.snapshots).iter().map(|(&s, &e)| (s, e)).collect();
        if owed.is_empty() {
            return true;
        }
        let ready: Vec<Slot> = {
            let routing = self.routing.read().await;
            owed.iter().map(|&(slot, _)| slot).filter(|&slot| routing.ownership.check(slot).is_ok()).collect()
        };
        if ready.is_empty() {
            return false;
        }
        let view = self.replicas.view();
        let set = slot_set(&ready);
        let Ok(entries) = self.storage.export(&|key| set[usize::from(slot_of(key))]).await else {
            return false;
        };
        let started = Instant::now();
        let keys = entries.len();
        let mut sessions = Some(self.sessions.export(|slot| set[usize::from(slot)]));
        // Slots the secondary could not take yet (it still hands them off itself): the others
        // go on, so that no two hand-offs wait on each other's catch-up; these go again later,
        // whole, and are never marked synced from a part.
        let mut refused = HashSet::new();
        for (writes, mut done) in snapshot_batches(entries, &ready) {
            done.retain(|slot| !refused.contains(slot));
            let records = sessions.take().unwrap_or_default();
            let Some(not_taken) =
                self.send_batches(&view, link, writes, v1::WriteKind::Snapshot, done, &records).await
            else {
                return false;
            };
            refused.extend(not_taken);
        }
        // Only the debts this send paid: an install meanwhile may have owed a slot anew.
        let paid: BTreeMap<Slot, u64> =
            owed.into_iter().filter(|(slot, _)| !refused.contains(slot)).collect();
        lock(&link.snapshots)
            .retain(|slot, epoch| !(set[usize::from(*slot)] && paid.get(slot) == Some(epoch)));
        info!(
            to = link.to,
            slots = ready.len() - refused.len(),
            later = refused.len(),
            keys,
            took = ?started.elapsed(),
            "secondary caught up"
        );
        refused.is_empty()
    }

    /// Sends `writes` (and `synced`, and exactly-once records) to `link` in one request;
    /// returns the slots of a snapshot it did not take (to send again later), or nothing if the
    /// request failed.
    async fn send_batches(
        &self,
        view: &Config,
        link: &Link,
        writes: Vec<v1::ReplicatedWrite>,
        kind: v1::WriteKind,
        synced: Vec<Slot>,
        sessions: &[SessionRecord],
    ) -> Option<Vec<Slot>> {
        if writes.is_empty() && synced.is_empty() {
            return Some(Vec::new());
        }
        let request = v1::ReplicateRequest {
            epoch: view.epoch(),
            from: self.me().to_owned(),
            writes,
            kind: kind as i32,
            synced: synced.into_iter().map(u32::from).collect(),
            sessions: sessions.iter().map(session_to_wire).collect(),
            ..Default::default()
        };
        let deadline = Instant::now() + ATTEMPT_TIMEOUT * 5;
        match self.send_replicate(&link.to, &request, deadline).await {
            Ok(response) => Some(response.refused.into_iter().filter_map(slot_from_wire).collect()),
            Err(status) => {
                debug!(to = link.to, reason = status.message(), "replication batch not taken");
                None
            }
        }
    }
}

/// Sends a secondary what it is owed: commits at once, snapshots as soon as their slots are
/// served here, and (eventual mode) the keys written, at least every sync interval. Ends with
/// the server.
async fn run_link(node: Weak<Node>, link: Arc<Link>) {
    let mut last_flush = Instant::now();
    let mut behind = false;
    loop {
        let interval = match node.upgrade() {
            Some(node) => node.replicas.view().replication().sync_interval,
            None => return,
        };
        let wait = if behind { RETRY_INTERVAL } else { interval.saturating_sub(last_flush.elapsed()) };
        let _ = tokio::time::timeout(wait.max(Duration::from_millis(1)), link.wake.notified()).await;
        let Some(node) = node.upgrade() else { return };
        let mut ok = node.send_commits(&link).await;
        if last_flush.elapsed() >= interval {
            last_flush = Instant::now();
            ok &= node.flush(&link).await;
        }
        ok &= node.send_snapshots(&link).await;
        behind = !ok;
    }
}

/// A snapshot of `slots` (`entries`: their keys and values), cut into requests of about
/// [`BATCH_BYTES`], each with the slots it completes; every slot is completed once, empty ones
/// in the first request.
fn snapshot_batches(
    entries: Vec<(String, String)>,
    slots: &[Slot],
) -> Vec<(Vec<v1::ReplicatedWrite>, Vec<Slot>)> {
    let mut by_slot: BTreeMap<Slot, Vec<(String, String)>> = slots.iter().map(|&s| (s, Vec::new())).collect();
    for (key, value) in entries {
        by_slot.entry(slot_of(&key)).or_default().push((key, value));
    }
    let mut batches = Vec::new();
    let mut batch = Vec::new();
    let mut complete = Vec::new();
    let mut bytes = 0;
    for (slot, writes) in by_slot {
        for (key, value) in writes {
            let size = key.len() + value.len();
            if bytes > 0 && bytes + size > BATCH_BYTES {
                batches.push((std::mem::take(&mut batch), std::mem::take(&mut complete)));
                bytes = 0;
            }
            bytes += size;
            batch.push(write_to_wire(slot, 0, &key, Some(value), None));
        }
        complete.push(slot);
    }
    batches.push((batch, complete));
    batches
}

/// A membership table over all slots.
pub(crate) fn slot_set(slots: &[Slot]) -> Vec<bool> {
    let mut set = vec![false; SLOTS];
    for &slot in slots {
        set[usize::from(slot)] = true;
    }
    set
}
