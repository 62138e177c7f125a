//! A storage server: the engine, the exactly-once sessions, the slots it serves, and the
//! replication and hand-off protocols that keep its copies and its peers' in step (the
//! protocols are in `kv_shard`'s and `kv_replica`'s docs).
//!
//! [`Node`] is what a binding serves; it owns one of each of the parts below, which share the
//! lower ones and never the reverse:
//! - [`view`] (the configuration held) and [`routing`] (the slot table every request passes);
//! - [`leases`] between replicas, and the fences they put on slots that change hands;
//! - [`links`], a primary's debts to its secondaries, paid in the background;
//! - [`copies`], the secondary side; [`primary`], the write path;
//! - [`handoffs`], slots moving between servers; [`install`], the switch to a new epoch.
//!
//! Every wait reads time through the [`Clock`] the node is given, and every call to another
//! server goes through the [`PeerCalls`] it is given, so the same node runs over gRPC, in
//! memory, or in a simulator.

mod batches;
mod caller;
mod calls;
mod catchup;
mod copies;
mod handoffs;
mod install;
mod leases;
mod links;
mod membership;
mod plan;
mod primary;
mod routing;
mod view;

use std::sync::Arc;
use std::time::Duration;

use crate::messages::{LeaseGrant, LeaseRequest, Replicate, ReplicateAck};
use crate::secondaries;
use crate::transport::PeerCalls;
use kv_core::session::Begin;
use kv_core::{Error, Mutation, Output, Recording, RequestId, Sessions, Storage};
use kv_shard::clock::Clock;
use kv_shard::messages::{HandOffCopy, Install, InstallReport, Pong, Resume, ServerStatus, TransferBatch};
use kv_shard::{Consistency, SLOTS, Slot};
use tracing::{info, warn};

use self::caller::Caller;
use self::copies::Copies;
use self::handoffs::Handoffs;
use self::install::Installer;
use self::leases::Leases;
use self::links::Links;
use self::membership::Membership;
use self::primary::Primary;
use self::routing::Routing;
use self::view::{View, lock};

/// How a storage server runs.
#[derive(Debug, Clone)]
pub struct NodeSettings {
    /// The address this server has as a member.
    pub me: String,
    /// Started to join a cluster: it serves nothing until it has joined (otherwise it is
    /// standalone until then, and serves every key).
    pub joining: bool,
    /// How long one hand-off may keep retrying a peer that does not answer.
    pub handoff_timeout: Duration,
    /// Tells the shard master this process from an earlier one at the same address: drawn at
    /// random when the process starts, from the seed its binding chose.
    pub incarnation: u64,
}

/// One storage server.
pub struct Node {
    storage: Arc<dyn Storage>,
    sessions: Arc<Sessions>,
    view: Arc<View>,
    routing: Arc<Routing>,
    leases: Arc<Leases>,
    copies: Arc<Copies>,
    primary: Arc<Primary>,
    handoffs: Arc<Handoffs>,
    installer: Installer,
    membership: Arc<Membership>,
    clock: Arc<dyn Clock>,
    incarnation: u64,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("me", &self.view.me())
            .field("epoch", &self.epoch())
            .finish_non_exhaustive()
    }
}

impl Node {
    /// A server over `storage`, calling its peers through `peers`, reading time from `clock`.
    pub fn new(
        storage: Arc<dyn Storage>,
        settings: NodeSettings,
        peers: Arc<dyn PeerCalls>,
        clock: Arc<dyn Clock>,
    ) -> Arc<Self> {
        let sessions = Arc::new(Sessions::default());
        let membership = Arc::new(Membership::new(Arc::clone(&storage), settings.me.clone()));
        let view = Arc::new(View::new(settings.me.clone()));
        let routing = Arc::new(Routing::new(settings.me, settings.joining));
        let leases = Leases::new(Arc::clone(&view), Arc::clone(&peers), Arc::clone(&clock));
        let slot_locks = primary::slot_locks();
        let links = Links::new(
            Arc::clone(&view),
            Arc::clone(&routing),
            Arc::clone(&storage),
            Arc::clone(&sessions),
            slot_locks,
            Arc::clone(&peers),
            Arc::clone(&clock),
        );
        let copies = Arc::new(Copies::new(
            Arc::clone(&view),
            Arc::clone(&storage),
            Arc::clone(&sessions),
            Arc::clone(&leases),
            Arc::clone(&peers),
            Arc::clone(&clock),
        ));
        let primary = Arc::new(Primary::new(
            Arc::clone(&view),
            Arc::clone(&storage),
            Arc::clone(&sessions),
            Arc::clone(&leases),
            Arc::clone(&links),
            Arc::clone(&peers),
            Arc::clone(&clock),
        ));
        let handoffs = Arc::new(Handoffs::new(
            Arc::clone(&view),
            Arc::clone(&routing),
            Arc::clone(&storage),
            Arc::clone(&sessions),
            Arc::clone(&leases),
            Arc::clone(&copies),
            Arc::clone(&links),
            Arc::clone(&peers),
            Arc::clone(&clock),
            settings.handoff_timeout,
        ));
        let installer = Installer {
            view: Arc::clone(&view),
            routing: Arc::clone(&routing),
            storage: Arc::clone(&storage),
            sessions: Arc::clone(&sessions),
            copies: Arc::clone(&copies),
            links,
            primary: Arc::clone(&primary),
            handoffs: Arc::clone(&handoffs),
            membership: Arc::clone(&membership),
            evicted: tokio::sync::Notify::new(),
        };
        Arc::new(Node {
            storage,
            sessions,
            view,
            routing,
            leases,
            copies,
            primary,
            handoffs,
            installer,
            membership,
            clock,
            incarnation: settings.incarnation,
        })
    }

    /// The epoch of the configuration this server holds (0: none).
    pub fn epoch(&self) -> u64 {
        self.view.get().epoch()
    }

    /// This process's incarnation.
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// Notified when a configuration shows this server was failed over and is no longer a
    /// member (it comes back empty: it joins again, as a new member).
    pub fn evicted(&self) -> &tokio::sync::Notify {
        &self.installer.evicted
    }

    /// The value of `key`: at its primary, or at a ready secondary.
    pub async fn get(&self, key: &str) -> Result<Option<String>, Error> {
        self.storage.limits().check_key(key)?;
        match self.routing.admit(key).await {
            Ok((_admitted, slot)) => {
                let view = self.view.get();
                if view.replication().consistency == Consistency::Strong && view.replication().factor > 1 {
                    self.leases.primary_lease(&view, slot).await?;
                }
                self.storage.get(key).await
            }
            Err(refused @ Error::WrongShard { slot, .. }) => self.copies.read(key, slot, refused).await,
            Err(refused) => Err(refused),
        }
    }

    /// Applies `mutation`; if it carries an id, at most once (see [`kv_core::session`]).
    ///
    /// A write that carries an id, or is replicated, runs on a task of its own: it runs to its
    /// end even if this call is dropped (its client gave up). A durable engine yields in
    /// `apply`, and a write cut off there could be applied while its exactly-once record is
    /// forgotten (a retry would apply it again), or, at a primary, applied here after its
    /// secondaries were told it was aborted.
    pub async fn write(self: &Arc<Self>, id: Option<RequestId>, mutation: Mutation) -> Result<Output, Error> {
        self.storage.limits().check_key(&mutation.key)?;
        if id.is_none() {
            // The configuration is read once admitted: an install changes it under the guard.
            let _admitted = self.routing.admit(&mutation.key).await?;
            if self.view.get().replication().factor <= 1 {
                return self.storage.apply(mutation).await;
            }
        }
        let node = Arc::clone(self);
        let (_waiting, caller) = Caller::new();
        let write = tokio::spawn(async move { node.write_to_end(id, mutation, caller).await });
        write.await.unwrap_or_else(|err| Err(Error::Storage(format!("the write's task failed: {err}"))))
    }

    /// [`Node::write`]'s body, on a task of its own: admits the write (holding the routing guard
    /// to its end, as an install expects), then applies it at the primary of a replicated slot,
    /// or here. It stops if its caller gives up before it begins (see [`caller`]).
    async fn write_to_end(
        &self,
        id: Option<RequestId>,
        mutation: Mutation,
        mut caller: Caller,
    ) -> Result<Output, Error> {
        let (_admitted, slot) = caller.unless_gone(self.routing.admit(&mutation.key)).await??;
        self.forget_expired();
        let view = self.view.get();
        if view.replication().factor > 1 {
            let targets: Vec<String> = secondaries(&view, slot).into_iter().map(str::to_owned).collect();
            if !targets.is_empty() {
                return self.primary.write(&view, targets, slot, id, mutation, caller).await;
            }
            // No secondary left, but the servers that lost the slot may still read it.
            caller.unless_gone(self.leases.wait_fence(slot)).await?;
        }
        let Some(id) = id else {
            return self.storage.apply(mutation).await;
        };
        let fingerprint = mutation.fingerprint();
        let output = match self.sessions.begin(id, fingerprint, slot, self.clock.now())? {
            Begin::Answered(output) => return Ok(output),
            Begin::Apply(ticket) => {
                // A durable engine keeps the record with the write, for a retry after a restart,
                // and forgets with it the answers the client has.
                let forget = ticket.forgotten().to_vec();
                let record = Recording { id, fingerprint, tag: slot, forget };
                let output = self.storage.apply_recorded(mutation, Some(record)).await?;
                ticket.finish(&output);
                output
            }
        };
        Ok(output)
    }

    /// Has the engine forget, in the background, the records of the clients whose sessions
    /// expired (a durable engine keeps them on disk).
    fn forget_expired(&self) {
        let expired = self.sessions.take_expired();
        if expired.is_empty() {
            return;
        }
        let storage = Arc::clone(&self.storage);
        tokio::spawn(async move {
            if let Err(err) = storage.forget_sessions(expired).await {
                warn!(%err, "cannot forget the exactly-once records of expired clients");
            }
        });
    }

    /// Takes back the exactly-once records the engine kept across a restart (a durable one):
    /// a retry of a write applied before the restart is answered from them, not applied again.
    /// Called once, before the server serves. Returns the number of clients with records.
    pub async fn restore_sessions(&self) -> Result<usize, Error> {
        let records = self.storage.sessions().await?;
        let clients = records.len();
        self.sessions.import(records, self.clock.now());
        Ok(clients)
    }

    /// Reads the membership the engine kept across a restart (a durable one), if any: the server
    /// then waits to be taken back as that member, with its data (see the crate docs,
    /// "Restarts"), and says so in its pings and status. Called once, before the server serves.
    /// Refused if the data is another address's, or the record is damaged.
    pub async fn restore_membership(&self) -> Result<Option<Resume>, Error> {
        self.membership.restore(&self.sessions).await
    }

    /// Switches to the configuration `install` carries, then hands off what this server owes
    /// (see [`kv_shard::messages::Install`]). Refused if it is meant for another process.
    pub async fn install(&self, install: Install) -> Result<InstallReport, crate::Error> {
        if install.incarnation != 0 && install.incarnation != self.incarnation {
            return Err(crate::Error::FailedPrecondition(
                "this server restarted since it joined, and holds nothing of what it held".to_owned(),
            ));
        }
        self.installer.install(install).await
    }

    /// Takes one batch of a slot hand-off from the slots' previous owner; returns the slots it
    /// completed that were taken exactly as sent.
    pub async fn transfer(&self, batch: TransferBatch) -> Result<Vec<Slot>, crate::Error> {
        let taken = self.handoffs.transfer(batch).await?;
        self.installer.record_if_whole().await?;
        Ok(taken)
    }

    /// Takes one replication batch from a primary.
    pub async fn replicate(&self, batch: Replicate) -> Result<ReplicateAck, crate::Error> {
        self.copies.replicate(batch).await
    }

    /// Grants a lease to a peer, if it is one at this server's epoch.
    pub fn grant_lease(&self, request: &LeaseRequest) -> Result<LeaseGrant, crate::Error> {
        self.leases.grant(request)
    }

    /// Sends the copies kept of a dead primary's slots where it would have sent them.
    pub async fn hand_off_copy(&self, request: HandOffCopy) -> Result<InstallReport, crate::Error> {
        let slots = request.slots.len() as u64;
        let keys = self.handoffs.hand_off_copy(request).await?;
        Ok(InstallReport { slots_sent: slots, keys_sent: keys, never_arrived: Vec::new() })
    }

    /// This server's answer to a ping.
    pub fn ping(&self) -> Pong {
        Pong {
            epoch: self.epoch(),
            incarnation: self.incarnation,
            unheard: self.leases.unheard(),
            heard: self.leases.heard(),
            resume: self.membership.resume(),
        }
    }

    /// What this server holds.
    pub async fn status(&self) -> Result<ServerStatus, Error> {
        let keys = self.storage.key_count().await? as u64;
        let table = self.routing.read().await;
        let incoming = table.ownership.incoming().values().map(Vec::len).sum::<usize>();
        let (replica_slots, unready) = self.copies.readiness().await;
        let owed = lock(&self.handoffs.owed).clone();
        let outgoing_slots = owed.values().map(Vec::len).sum::<usize>() as u32;
        Ok(ServerStatus {
            replica_slots,
            syncing_slots: unready.len() as u32,
            unready,
            owed,
            retired: self.copies.retired(),
            incarnation: self.incarnation,
            address: table.ownership.me().to_owned(),
            epoch: table.ownership.epoch(),
            serving_slots: if table.standalone { SLOTS } else { table.ownership.serving() } as u32,
            incoming_slots: incoming as u32,
            outgoing_slots,
            keys,
            standalone: table.standalone,
            engine: self.storage.stats(),
            resume: self.membership.resume(),
            catch_up: self.installer.links.catch_up_stats(),
        })
    }

    /// After its leave was made: waits until this server has installed a configuration without
    /// it (the shard master's repairs bring it there if the leave's install did not: a shard
    /// master that restarted during the leave, say, whose retry answered "not a member"), and
    /// then until it owes no hand-off, or `timeout` passes; returns whether it got there. A
    /// leaver that stopped before would take its slots' only up-to-date data with it.
    pub async fn wait_until_left(&self, timeout: Duration) -> bool {
        let deadline = self.clock.now() + timeout;
        let mut told = false;
        while self.view.get().id_of(self.view.me()).is_some() {
            if self.clock.now() >= deadline {
                warn!("stopping before the configuration without this server arrived");
                return false;
            }
            if !told {
                info!("waiting for the configuration without this server");
                told = true;
            }
            self.clock.sleep(Duration::from_millis(50)).await;
        }
        self.wait_for_handoffs(deadline.saturating_duration_since(self.clock.now())).await
    }

    /// Waits until this server owes no hand-off (the shard master resumes failed ones), or
    /// `timeout` passes; returns whether none is owed.
    pub async fn wait_for_handoffs(&self, timeout: Duration) -> bool {
        let deadline = self.clock.now() + timeout;
        let mut told = false;
        loop {
            // The lock is held while a hand-off runs, so this also waits for one in progress.
            let lock = self.handoffs.outgoing.lock();
            let owed = match kv_shard::clock::timeout_at(self.clock.as_ref(), deadline, lock).await {
                Ok(outgoing) => outgoing.slots(),
                Err(_) => return false,
            };
            if owed == 0 {
                return true;
            }
            if self.clock.now() >= deadline {
                warn!(slots = owed, "stopping with slots not handed off: their data is lost");
                return false;
            }
            if !told {
                info!(slots = owed, "waiting for the shard master to resume hand-offs");
                told = true;
            }
            self.clock.sleep(Duration::from_millis(200)).await;
        }
    }
}
