//! The primary's write path of a replicated slot: a write is numbered, applied or prepared, and
//! sent to the slot's secondaries as the protocol's consistency level says (the protocol is in
//! `kv_replica`'s docs, "Writes").
//!
//! Invariants:
//! - a slot's writes are replicated one at a time: the slot's sequence lock is held from
//!   numbering a write to knowing whether it was applied;
//! - strong mode applies a write here (its linearization point) only once every secondary
//!   holds it prepared; a write prepared and not applied is named as aborted to the secondaries
//!   with the next prepare of its key, whether it failed or its task was stopped (the node
//!   shut down) while its prepare was on its way;
//! - eventual mode applies a write here first, then waits for the synchronous secondaries; the
//!   others are owed the key in the background, and so is a synchronous one that missed it,
//!   whether the write failed there or its task was stopped first;
//! - a write runs on a task of its own (`Node::write`): a client that gives up does not cut it
//!   off between applying it and recording what that means (its exactly-once record, its abort,
//!   the keys owed), since a durable engine yields while it applies;
//! - a write still waiting for a secondary when an install comes gives up soon: the install
//!   waits for it, and may be the one that removes that secondary (it died).

use std::sync::Arc;
use std::time::Duration;

use crate::SlotSequence;
use crate::messages::{Replicate, SlotWrite, WriteKind};
use crate::transport::PeerCalls;
use futures_util::future::join_all;
use kv_core::session::Begin;
use kv_core::{Answer, Error, Mutation, Output, Recording, RequestId, SessionRecord, Sessions, Storage};
use kv_shard::clock::Clock;
use kv_shard::signal::Signal;
use kv_shard::{Config, Consistency, SLOTS, Slot};
use tokio::sync::Mutex;

use super::batches::slot_write;
use super::caller::Caller;
use super::calls::replicate_until;
use super::leases::Leases;
use super::links::Links;
use super::view::View;

/// Longest a write waits for its synchronous secondaries before it fails (retryable).
const REPLICATE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a write waiting for its secondaries lets a pending install wait before giving up.
const INSTALL_GRACE: Duration = Duration::from_millis(50);

/// The exactly-once record of one answered write.
fn session_record(id: RequestId, fingerprint: u64, output: &Output, slot: Slot) -> SessionRecord {
    SessionRecord {
        client: id.client,
        floor: id.first_unanswered,
        answers: vec![Answer { seq: id.seq, fingerprint, output: output.clone(), tag: slot }],
    }
}

/// What a durable engine keeps of a write's exactly-once record, with the write (see
/// [`Storage::apply_recorded`]): none for a write without an id.
fn recording(
    id: Option<RequestId>,
    fingerprint: u64,
    slot: Slot,
    ticket: Option<&kv_core::session::Ticket<'_>>,
) -> Option<Recording> {
    let (id, ticket) = (id?, ticket?);
    Some(Recording { id, fingerprint, tag: slot, forget: ticket.forgotten().to_vec() })
}

/// Each slot's write lock, with the slot's write numbering: held by a write from before it is
/// applied until it has reached its synchronous secondaries, and by the background flush while it
/// reads the slot's values and records.
pub(crate) type SlotLocks = Arc<Vec<Mutex<SlotSequence>>>;

/// The locks of every slot.
pub(crate) fn slot_locks() -> SlotLocks {
    Arc::new((0..SLOTS).map(|_| Mutex::new(SlotSequence::default())).collect())
}

/// The primary side of a storage server.
pub(crate) struct Primary {
    view: Arc<View>,
    storage: Arc<dyn Storage>,
    sessions: Arc<Sessions>,
    leases: Arc<Leases>,
    links: Arc<Links>,
    peers: Arc<dyn PeerCalls>,
    clock: Arc<dyn Clock>,
    /// Each slot's writes, locked while a write is replicated.
    seqs: SlotLocks,
    /// Whether an install waits for the requests in flight: a write stuck replicating to a
    /// secondary (one the install may remove) then gives up soon.
    installing: Signal<bool>,
}

impl std::fmt::Debug for Primary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Primary").field("installing", &self.installing.get()).finish_non_exhaustive()
    }
}

impl Primary {
    pub(crate) fn new(
        view: Arc<View>,
        storage: Arc<dyn Storage>,
        sessions: Arc<Sessions>,
        leases: Arc<Leases>,
        links: Arc<Links>,
        peers: Arc<dyn PeerCalls>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let seqs = links.slot_locks();
        Primary { view, storage, sessions, leases, links, peers, clock, seqs, installing: Signal::new(false) }
    }

    /// Says whether an install is waiting for the requests in flight.
    pub(crate) fn set_installing(&self, installing: bool) {
        self.installing.set(installing);
    }

    /// Applies a write at the primary of a replicated slot, and replicates it to `targets`, its
    /// secondaries in `view`; the caller holds the routing read guard. It waits for its turn and
    /// its lease only while `caller` still waits for it.
    pub(crate) async fn write(
        &self,
        view: &Config,
        targets: Vec<String>,
        slot: Slot,
        id: Option<RequestId>,
        mutation: Mutation,
        mut caller: Caller,
    ) -> Result<Output, Error> {
        let mut seq = caller.unless_gone(self.seqs[usize::from(slot)].lock()).await?;
        caller.unless_gone(self.leases.primary_lease(view, slot)).await??;
        // From here the write runs to its end, whether or not its caller still waits.
        let fingerprint = mutation.fingerprint();
        let ticket = match id {
            None => None,
            Some(id) => match self.sessions.begin(id, fingerprint, slot, self.clock.now())? {
                Begin::Answered(output) => {
                    self.resync_answered(
                        view,
                        &targets,
                        slot,
                        id,
                        fingerprint,
                        &mutation.key,
                        &output,
                        &mut seq,
                    )
                    .await?;
                    return Ok(output);
                }
                Begin::Apply(ticket) => Some(ticket),
            },
        };
        let Mutation { key, op } = mutation;
        let replication = *view.replication();
        match replication.consistency {
            Consistency::Strong => {
                let mut value = self.storage.get(&key).await?;
                let output = op.clone().apply(&mut value, self.storage.limits())?;
                let number = seq.number();
                let session = id.map(|id| session_record(id, fingerprint, &output, slot));
                let mut write = slot_write(slot, number, &key, value.clone(), session);
                write.aborted = seq.aborted(&key);
                // From here its prepare may reach the secondaries: unless it is applied here, it
                // is aborted, even if this task is stopped first.
                let prepared = Prepared { seq: &mut seq, key: Some(key.clone()), number };
                // Applying it is the linearization point: from then on, reads here see the write.
                // The operation is applied again, with its exactly-once record (a durable engine
                // keeps both in one atomic write): the slot's lock is held, so the key holds what
                // it was computed from, and it makes the same value and answer.
                let record = recording(id, fingerprint, slot, ticket.as_ref());
                let applied = match self.replicate_now(view, &targets, vec![write], WriteKind::Prepare).await
                {
                    Ok(()) => self.storage.apply_recorded(Mutation { key, op }, record).await.map(drop),
                    Err(err) => Err(err),
                };
                // Not applied here: the secondaries that prepared it must not commit it.
                applied?;
                prepared.applied();
                if let Some(ticket) = ticket {
                    ticket.finish(&output);
                }
                self.links.committed(&targets, slot, number);
                Ok(output)
            }
            Consistency::Eventual => {
                let record = recording(id, fingerprint, slot, ticket.as_ref());
                let output = self.storage.apply_recorded(Mutation { key: key.clone(), op }, record).await?;
                // Applied here, and answered to a retry: from now on the key is owed to every
                // secondary that has not confirmed it, even if this task is stopped first.
                let mut unconfirmed = Unconfirmed { links: &self.links, targets: &targets, key: &key };
                if let Some(ticket) = ticket {
                    ticket.finish(&output);
                }
                let value = self.storage.get(&key).await?;
                let number = seq.number();
                let (sync, background) =
                    targets.split_at(self.synchronous(&targets, replication.sync_replicas, slot));
                self.links.owe_key(background, &key);
                unconfirmed.targets = sync;
                if !sync.is_empty() {
                    let session = id.map(|id| session_record(id, fingerprint, &output, slot));
                    let write = slot_write(slot, number, &key, value, session);
                    // Missed by a synchronous secondary: the background flush repairs it.
                    self.replicate_now(view, sync, vec![write], WriteKind::Apply).await?;
                }
                unconfirmed.confirmed();
                Ok(output)
            }
        }
    }

    /// Before a retry is answered from the exactly-once record (eventual mode, with synchronous
    /// secondaries): sends them the key's value, with the record, as a fresh write would. The
    /// first attempt was applied here, but may have failed to reach them (the client got an
    /// error, and retried): answered without this, the retry would acknowledge a write that a
    /// synchronous secondary, promoted next, does not hold. Strong mode records a write only once
    /// every secondary holds it.
    #[allow(clippy::too_many_arguments)]
    async fn resync_answered(
        &self,
        view: &Config,
        targets: &[String],
        slot: Slot,
        id: RequestId,
        fingerprint: u64,
        key: &str,
        output: &Output,
        seq: &mut SlotSequence,
    ) -> Result<(), Error> {
        let replication = *view.replication();
        if replication.consistency != Consistency::Eventual {
            return Ok(());
        }
        let sync = &targets[..self.synchronous(targets, replication.sync_replicas, slot)];
        if sync.is_empty() {
            return Ok(());
        }
        let unconfirmed = Unconfirmed { links: &self.links, targets: sync, key };
        let value = self.storage.get(key).await?;
        let write =
            slot_write(slot, seq.number(), key, value, Some(session_record(id, fingerprint, output, slot)));
        self.replicate_now(view, sync, vec![write], WriteKind::Apply).await?;
        unconfirmed.confirmed();
        Ok(())
    }

    /// How many of `targets`, the secondaries of `slot` in order, an eventual write goes to
    /// synchronously: the first `k`, and while some of those are still catching up (owed a
    /// snapshot), the next ones too, until `k` up-to-date copies hold it (or every secondary
    /// does). A failover promotes an up-to-date copy before one still catching up, so the
    /// copy it promotes holds every acknowledged write.
    fn synchronous(&self, targets: &[String], k: usize, slot: Slot) -> usize {
        let mut ready = 0;
        let mut count = 0;
        for target in targets {
            if ready >= k {
                break;
            }
            count += 1;
            ready += usize::from(!self.links.snapshot_owed(target, slot));
        }
        count
    }

    /// Sends `writes` to every one of `targets` and waits for all to confirm, retrying those
    /// that are unreachable or behind until [`REPLICATE_TIMEOUT`].
    async fn replicate_now(
        &self,
        view: &Config,
        targets: &[String],
        writes: Vec<SlotWrite>,
        kind: WriteKind,
    ) -> Result<(), Error> {
        let batch = Replicate {
            epoch: view.epoch(),
            from: self.view.me().to_owned(),
            writes,
            kind,
            ..Replicate::default()
        };
        let deadline = self.clock.now() + REPLICATE_TIMEOUT;
        let sends = targets.iter().map(|target| {
            let batch = &batch;
            async move {
                let sent =
                    replicate_until(self.peers.as_ref(), self.clock.as_ref(), target, batch, deadline).await;
                (target, sent.map(drop))
            }
        });
        // A write still waiting for a secondary when an install comes gives up soon: the install
        // waits for it, and may be the one that removes that secondary (it died).
        let installing = &self.installing;
        let give_up = async move {
            installing.wait_for(|&pending| pending).await;
            self.clock.sleep(INSTALL_GRACE).await;
        };
        let results = tokio::select! {
            biased;
            results = join_all(sends) => results,
            () = give_up => {
                return Err(Error::Replication(
                    "the cluster's configuration is changing while a secondary does not answer".to_owned(),
                ));
            }
        };
        let failures: Vec<String> = results
            .into_iter()
            .filter_map(|(target, result)| result.err().map(|err| format!("{target}: {err}")))
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
}

/// A strong write whose prepare may be at the secondaries, not yet applied here: dropped before
/// [`Prepared::applied`] (the write failed, or its task was stopped), it is recorded as
/// aborted, so the next prepare of its key names it and no secondary commits it in a takeover.
struct Prepared<'a> {
    seq: &'a mut SlotSequence,
    /// The write's key, until it is applied.
    key: Option<String>,
    number: u64,
}

impl Prepared<'_> {
    /// The write was applied here: a prepare of its key, naming the aborted writes, was taken
    /// everywhere.
    fn applied(mut self) {
        if let Some(key) = self.key.take() {
            self.seq.applied(&key);
        }
    }
}

impl Drop for Prepared<'_> {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            self.seq.abort(key, self.number);
        }
    }
}

/// An eventual write applied here that the secondaries in `targets` have not confirmed: dropped
/// before [`Unconfirmed::confirmed`] (their replication failed, or its task was stopped), the
/// key is owed to them, and the background flush repairs them.
struct Unconfirmed<'a> {
    links: &'a Links,
    targets: &'a [String],
    key: &'a str,
}

impl Unconfirmed<'_> {
    /// The secondaries confirmed the write.
    fn confirmed(mut self) {
        self.targets = &[];
    }
}

impl Drop for Unconfirmed<'_> {
    fn drop(&mut self) {
        if !self.targets.is_empty() {
            self.links.owe_key(self.targets, self.key);
        }
    }
}
