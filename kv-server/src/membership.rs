//! The shard master's state: the current configuration, changed one step at a time, and the
//! driving of each step's data moves (the protocol is in `kv_shard`'s docs).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use kv_proto::convert::config_to_wire;
use kv_proto::v1;
use kv_shard::{Config, Replication, ServerId, Slot};
use tonic::{Code, Status};
use tracing::{info, warn};

use crate::peers::{Peers, retry_until};

/// Why a membership change failed.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    /// Refused by the placement rules (a member already, not a member, a bad address); nothing
    /// changed.
    #[error(transparent)]
    Refused(#[from] kv_shard::Error),
    /// Refused because of the server's state (unreachable, holding data it cannot bring);
    /// nothing changed.
    #[error("{0}")]
    Precondition(String, Code),
    /// The new configuration is in place, but some of its moves did not finish; the message says
    /// which, and where the data is.
    #[error("epoch {epoch} is in place, but {reason}")]
    Incomplete {
        /// The epoch now in place.
        epoch: u64,
        /// What did not finish.
        reason: String,
        /// Whether data was lost (a server that had to hand off slots is gone).
        lost: bool,
    },
}

impl ChangeError {
    /// The status a client gets for this error.
    pub fn to_status(&self) -> Status {
        match self {
            ChangeError::Refused(err) => kv_proto::status::status_from_shard_error(err),
            ChangeError::Precondition(message, code) => Status::new(*code, message.clone()),
            ChangeError::Incomplete { lost: true, .. } => Status::data_loss(self.to_string()),
            ChangeError::Incomplete { lost: false, .. } => Status::aborted(self.to_string()),
        }
    }
}

/// The sequence of cluster configurations, as the shard master keeps it.
///
/// Changes (joins and leaves) are serialised by an async lock held for the whole change,
/// including its data moves, so the next starts only after the last has finished; reads of the
/// current configuration never wait for a change in progress.
#[derive(Debug)]
pub struct Membership {
    current: RwLock<Arc<Config>>,
    /// The last configurations, oldest first, the current one last: a server that missed some
    /// is brought up to date one epoch at a time.
    history: std::sync::Mutex<VecDeque<Arc<Config>>>,
    changes: tokio::sync::Mutex<()>,
    peers: Peers,
    move_timeout: Duration,
    /// How long a member may go without answering before it is failed (replication factor 2
    /// or more).
    failure_timeout: Duration,
    /// What each failover gave to whom, by the epoch it made: every install of that epoch
    /// carries it.
    failovers: std::sync::Mutex<BTreeMap<u64, Failover>>,
    /// Servers outside the membership that still owe slots (a leaver whose hand-off a failover
    /// carried over): watched like the members until they owe nothing.
    owing: std::sync::Mutex<BTreeSet<String>>,
    /// The incarnation of each member's process when it joined: a member answering with another
    /// one restarted, and lost what it held.
    incarnations: std::sync::Mutex<BTreeMap<String, u64>>,
}

enum Change {
    Join(String),
    Leave(String),
}

/// The slots a failed member held, and where they went.
#[derive(Debug, Default, Clone)]
struct Failover {
    /// Every slot of the failed member's: each new owner serves its share from its own copy...
    promoted: Vec<Slot>,
    /// ...but those still moving to the failed member when it failed, which come from the
    /// server that was sending them (by sender).
    carried: BTreeMap<String, Vec<Slot>>,
}

/// How a sender's install of a change ended.
enum SenderOutcome {
    /// It answered (done, or failed while it keeps the data).
    Answered(Result<v1::InstallResponse, Status>),
    /// It stopped answering pings.
    Silent,
    /// Another server of the change stopped answering pings.
    OtherSilent(String),
}

impl Membership {
    /// How long the shard master waits for a server's answer before deciding it cannot reach
    /// it, when it checks a joiner or a leaver.
    const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

    /// How many configurations are kept for servers that missed some.
    const HISTORY: usize = 64;

    /// How often members are pinged.
    const HEARTBEAT: Duration = Duration::from_millis(100);

    /// How long a ping may take.
    const PING_TIMEOUT: Duration = Duration::from_millis(300);

    /// Epoch 0: no member, slots replicated as `replication` says. A change whose moves have not
    /// finished after `move_timeout` is reported as incomplete. Installs carry `token`, the
    /// cluster's, if it has one.
    pub fn new(
        move_timeout: Duration,
        failure_timeout: Duration,
        token: Option<String>,
        replication: Replication,
    ) -> Result<Self, kv_shard::Error> {
        let first = Arc::new(Config::new().with_replication(replication)?);
        Ok(Membership {
            current: RwLock::new(Arc::clone(&first)),
            history: std::sync::Mutex::new(VecDeque::from([first])),
            changes: tokio::sync::Mutex::new(()),
            peers: Peers::new(token),
            move_timeout,
            failure_timeout,
            failovers: std::sync::Mutex::new(BTreeMap::new()),
            owing: std::sync::Mutex::new(BTreeSet::new()),
            incarnations: std::sync::Mutex::new(BTreeMap::new()),
        })
    }

    /// The current configuration.
    pub fn current(&self) -> Arc<Config> {
        match self.current.read() {
            Ok(config) => Arc::clone(&config),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Adds `server`, moves its share of the slots to it, and returns the new configuration.
    /// The server must answer, and must hold no data unless it is the first member.
    ///
    /// The change runs to its end even if the caller goes away (a timeout, a reset): a change
    /// stopped half-way would leave slots waiting for data no one sends.
    pub async fn join(self: &Arc<Self>, server: &str) -> Result<Arc<Config>, ChangeError> {
        self.detached(Change::Join(server.to_owned())).await
    }

    /// Hands `server`'s slots to the others, removes it, and returns the new configuration. The
    /// last member may leave only if it holds no keys, since nothing could take them. Runs to
    /// its end even if the caller goes away, as [`Membership::join`] does.
    pub async fn leave(self: &Arc<Self>, server: &str) -> Result<Arc<Config>, ChangeError> {
        self.detached(Change::Leave(server.to_owned())).await
    }

    async fn detached(self: &Arc<Self>, change: Change) -> Result<Arc<Config>, ChangeError> {
        let membership = Arc::clone(self);
        match tokio::spawn(async move { membership.change(change).await }).await {
            Ok(result) => result,
            Err(err) => Err(ChangeError::Precondition(format!("the change failed: {err}"), Code::Internal)),
        }
    }

    async fn change(&self, change: Change) -> Result<Arc<Config>, ChangeError> {
        let _serialised = self.changes.lock().await;
        let mut before = self.current();
        // A member that restarted empty before it was failed over: fail its old self now.
        if let Change::Join(server) = &change
            && before.id_of(server).is_some()
            && before.replication().factor > 1
            && let Ok(status) = self.status_after_restart(server).await
            && self.restarted(server, status.incarnation)
        {
            warn!(server, "a member restarted empty: failing its old incarnation over");
            self.fail_locked(server).await?;
            before = self.current();
        }
        let next = match &change {
            Change::Join(server) => before.join(server)?,
            Change::Leave(server) => before.leave(server)?,
        };
        // An earlier change whose data has not settled would be overtaken, its hand-offs lost.
        if let Some(why) = self.unsettled(&before).await {
            return Err(ChangeError::Precondition(
                format!("an earlier change is still settling ({why}); retry shortly"),
                Code::Unavailable,
            ));
        }
        match &change {
            Change::Join(server) => {
                let status = self.status_of(server).await.map_err(|status| {
                    ChangeError::Precondition(
                        format!("cannot reach storage server {server}: {}", status.message()),
                        Code::Unavailable,
                    )
                })?;
                if status.address != *server {
                    return Err(ChangeError::Precondition(
                        format!(
                            "the server at {server} knows itself as {}: join it under that address, \
                             or start it with --advertise {server}",
                            status.address
                        ),
                        Code::FailedPrecondition,
                    ));
                }
                self.incarnations
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(server.clone(), status.incarnation);
                if status.keys > 0 && !before.is_empty() {
                    return Err(ChangeError::Precondition(
                        format!(
                            "{server} holds {} keys of its own; only the first member of a cluster may bring data",
                            status.keys
                        ),
                        Code::FailedPrecondition,
                    ));
                }
            }
            Change::Leave(server) if next.is_empty() => match self.status_of(server).await {
                Ok(status) if status.keys > 0 => {
                    return Err(ChangeError::Precondition(
                        format!(
                            "{server} is the last member and holds {} keys: no server could take them \
                             (join another server first, or delete them)",
                            status.keys
                        ),
                        Code::FailedPrecondition,
                    ));
                }
                Ok(_) => {}
                // Removing a dead last member is allowed: its data is gone with it.
                Err(_) if self.is_gone(server).await => {}
                Err(status) => {
                    return Err(ChangeError::Precondition(
                        format!(
                            "cannot tell whether {server}, the last member, holds keys: {}",
                            status.message()
                        ),
                        Code::Unavailable,
                    ));
                }
            },
            Change::Leave(_) => {}
        }
        let next = Arc::new(next);
        let moves = before.moves_to(&next);
        info!(
            epoch = next.epoch(),
            members = next.len(),
            slots_moving = moves.len(),
            "configuration changed"
        );
        self.commit(&next);
        self.apply(&before, &next).await?;
        Ok(next)
    }

    /// Makes `next` the current configuration.
    fn commit(&self, next: &Arc<Config>) {
        match self.current.write() {
            Ok(mut current) => *current = Arc::clone(next),
            Err(poisoned) => *poisoned.into_inner() = Arc::clone(next),
        }
        let mut history = self.history.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        history.push_back(Arc::clone(next));
        while history.len() > Self::HISTORY {
            if let Some(dropped) = history.pop_front() {
                self.failovers
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .retain(|&epoch, _| epoch > dropped.epoch());
            }
        }
    }

    /// Watches the members, for as long as the shard master serves: pings each every
    /// [`Self::HEARTBEAT`], and fails one that has not answered for the failure timeout (see
    /// [`Membership::fail`]). Only with a replication factor of 2 or more: otherwise a member's
    /// slots have no other copy, and wait for it.
    pub async fn watch(self: Arc<Self>) {
        let mut last_seen: BTreeMap<String, Instant> = BTreeMap::new();
        loop {
            tokio::time::sleep(Self::HEARTBEAT).await;
            let config = self.current();
            let members: Vec<String> = config.members().map(|(_, a)| a.to_owned()).collect();
            last_seen.retain(|address, _| members.contains(address));
            let pings = members.iter().map(|address| self.ping(address));
            let now = Instant::now();
            let mut restarted = None;
            for (address, answer) in members.iter().zip(join_all(pings).await) {
                let seen = last_seen.entry(address.clone()).or_insert(now);
                match answer {
                    Some(incarnation) if self.restarted(address, incarnation) => {
                        restarted = Some(address.clone())
                    }
                    Some(_) => *seen = Instant::now(),
                    None => {}
                }
            }
            // A member that restarted lost what it held: fail its old self at once.
            if let Some(address) = restarted.filter(|_| config.replication().factor > 1 && members.len() > 1)
            {
                warn!(server = address, "a member restarted and lost its data: failing it over");
                match self.fail_member(&address, config.id_of(&address)).await {
                    Ok(config) => info!(server = address, epoch = config.epoch(), "failed over"),
                    Err(err) => warn!(server = address, cause = %err, "could not fail the member over"),
                }
                last_seen.remove(&address);
                continue;
            }
            if config.replication().factor < 2 || members.len() < 2 {
                continue;
            }
            let now = Instant::now();
            let alive = last_seen.values().filter(|&&seen| now - seen <= self.failure_timeout).count();
            // A shard master cut off from most members fails none: it may be the one cut off.
            if alive * 2 < members.len() {
                continue;
            }
            let failed = last_seen.iter().find(|(_, seen)| now - **seen > self.failure_timeout);
            if let Some((address, seen)) = failed {
                warn!(server = address, silent = ?now - *seen, "a member stopped answering: failing it over");
                let address = address.clone();
                match self.fail_member(&address, config.id_of(&address)).await {
                    Ok(config) => {
                        last_seen.remove(&address);
                        info!(server = address, epoch = config.epoch(), "failed over");
                    }
                    Err(err) => warn!(server = address, cause = %err, "could not fail the member over"),
                }
            }
        }
    }

    /// Returns once `server` has not answered a ping for the failure timeout.
    async fn until_silent(&self, server: &str) {
        let mut last_seen = Instant::now();
        loop {
            tokio::time::sleep(Self::HEARTBEAT).await;
            if self.ping(server).await.is_some() {
                last_seen = Instant::now();
            } else if last_seen.elapsed() > self.failure_timeout {
                return;
            }
        }
    }

    /// Whether at least half of `servers` answer a ping.
    async fn most_answer(&self, servers: &[&str]) -> bool {
        let answers = join_all(servers.iter().map(|server| self.ping(server))).await;
        answers.iter().filter(|answer| answer.is_some()).count() * 2 >= servers.len()
    }

    /// Returns once none of `servers` that answers has a copy still catching up, or at
    /// `deadline` (with a warning: the change is then over with copies still catching up).
    async fn until_caught_up(&self, servers: &[&str], deadline: Instant) {
        loop {
            let statuses = join_all(servers.iter().map(|server| self.status_of(server))).await;
            let syncing: u32 = statuses.iter().flatten().map(|status| status.syncing_slots).sum();
            if syncing == 0 {
                return;
            }
            if Instant::now() >= deadline {
                warn!(slots = syncing, "copies still catching up at the end of a change");
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Returns the first of `servers` not to answer pings for the failure timeout; never, if
    /// there are none.
    async fn until_any_silent<'s>(&self, servers: &[&'s str]) -> &'s str {
        if servers.is_empty() {
            return std::future::pending().await;
        }
        let watches = servers.iter().map(|&server| {
            Box::pin(async move {
                self.until_silent(server).await;
                server
            })
        });
        futures_util::future::select_all(watches).await.0
    }

    /// The incarnation `server` answers a ping with, if it answers in time.
    async fn ping(&self, server: &str) -> Option<u64> {
        let mut call = tonic::Request::new(v1::PingRequest {});
        call.set_timeout(Self::PING_TIMEOUT);
        let mut node = self.peers.node(server).ok()?;
        Some(node.ping(call).await.ok()?.into_inner().incarnation)
    }

    /// Removes failed member `server`: its slots go to their first secondaries, which serve
    /// them from their copies, and the replica sets refill (see `kv_replica`'s docs). Installs
    /// the new configuration at every other member.
    pub async fn fail(&self, server: &str) -> Result<Arc<Config>, ChangeError> {
        let _serialised = self.changes.lock().await;
        self.fail_locked(server).await
    }

    /// [`Membership::fail`], if `server` is still member `id` by then (it may have been failed
    /// and have joined again while this waited for the change lock).
    async fn fail_member(&self, server: &str, id: Option<ServerId>) -> Result<Arc<Config>, ChangeError> {
        let _serialised = self.changes.lock().await;
        let current = self.current();
        if id.is_none() || current.id_of(server) != id {
            return Ok(current);
        }
        self.fail_locked(server).await
    }

    /// [`Membership::fail`], with the change lock held.
    async fn fail_locked(&self, server: &str) -> Result<Arc<Config>, ChangeError> {
        let before = self.current();
        // Slots it was still handing off at the last change: a secondary sends its copy.
        let previous = {
            let history = self.history.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            history.len().checked_sub(2).and_then(|i| history.get(i).cloned())
        };
        // The last change's moves, by sender and receiver address.
        let moves: Vec<(&str, &str, Slot)> = previous
            .iter()
            .flat_map(|previous| {
                previous.moves_to(&before).into_iter().filter_map(|m| {
                    let from = m.from.and_then(|id| previous.address(id))?;
                    Some((from, m.to.and_then(|id| before.address(id))?, m.slot))
                })
            })
            .collect();
        if let Some(previous) = &previous {
            let mut owed: BTreeMap<&str, Vec<Slot>> = BTreeMap::new();
            for &(_, to, slot) in moves.iter().filter(|(from, _, _)| *from == server) {
                owed.entry(to).or_default().push(slot);
            }
            for (to, slots) in owed {
                if self.receiver_waits(to).await {
                    self.hand_off_copies(previous, &before, server, to, &slots).await;
                }
            }
        }
        // What the others hold: which of the failed member's slots they still owe it (a move to
        // it was not over), and which of their copies are up to date. A slow server is asked
        // again, longer: what it owes would otherwise be given away without its data.
        let others: Vec<String> = self.involved(&before).into_iter().filter(|a| a != server).collect();
        let statuses = join_all(others.iter().map(|a| self.status_for_failover(a))).await;
        let mut carried: BTreeMap<String, BTreeSet<Slot>> = BTreeMap::new();
        let mut owing = Vec::new();
        let mut unready: BTreeMap<&str, BTreeSet<Slot>> = BTreeMap::new();
        let mut retired: BTreeMap<&str, BTreeSet<Slot>> = BTreeMap::new();
        let wire_slots = |slots: &[u32]| -> Vec<Slot> {
            slots.iter().filter_map(|&s| kv_proto::convert::slot_from_wire(s)).collect()
        };
        for (address, status) in others.iter().zip(&statuses) {
            let Ok(status) = status else { continue };
            if !status.owed.is_empty() || status.epoch < before.epoch() {
                owing.push(address.clone());
            }
            for owed in status.owed.iter().filter(|owed| owed.server == server) {
                carried.entry(address.clone()).or_default().extend(wire_slots(&owed.slots));
            }
            if status.epoch < before.epoch() {
                // Not switched to the last change yet: it still holds what it has to send the
                // failed member, and will owe it once brought up to date.
                for &(_, _, slot) in moves.iter().filter(|(from, to, _)| from == address && *to == server) {
                    carried.entry(address.clone()).or_default().insert(slot);
                }
            }
            // Copies are judged only at the epoch being failed over.
            if status.epoch == before.epoch() {
                for copies in status.retired.iter().filter(|copies| copies.server == server) {
                    retired.entry(address.as_str()).or_default().extend(wire_slots(&copies.slots));
                }
                unready.insert(address.as_str(), wire_slots(&status.unready).into_iter().collect());
            }
        }
        let carried: BTreeMap<String, Vec<Slot>> =
            carried.into_iter().map(|(from, slots)| (from, slots.into_iter().collect())).collect();
        let mut heirs = kv_replica::heirs(&before, server, |address, slot| {
            unready.get(address).is_some_and(|unready| !unready.contains(&slot))
        });
        // Slots with no up-to-date secondary (the last change gave them new ones, still catching
        // up): a former secondary that kept its copy brings the first one up to date.
        let carried_set: BTreeSet<Slot> = carried.values().flatten().copied().collect();
        let mut behind: BTreeMap<&str, Vec<Slot>> = BTreeMap::new();
        for (slot, owner) in (0..).zip(before.slots()) {
            if *owner != before.id_of(server) || heirs.contains_key(&slot) || carried_set.contains(&slot) {
                continue;
            }
            if let Some(first) = kv_replica::secondaries(&before, slot).into_iter().next() {
                behind.entry(first).or_default().push(slot);
            }
        }
        for (to, slots) in behind {
            let Some(id) = before.id_of(to) else { continue };
            let mut left: BTreeSet<Slot> = slots.into_iter().collect();
            for (&holder, kept) in &retired {
                let from_here: Vec<Slot> = left.iter().copied().filter(|slot| kept.contains(slot)).collect();
                if !from_here.is_empty()
                    && self.snapshot_from_copy(&before, server, holder, to, &from_here).await
                {
                    heirs.extend(from_here.iter().map(|&slot| (slot, id)));
                    left.retain(|slot| !from_here.contains(slot));
                }
            }
        }
        let passed_over =
            heirs.iter().filter(|(slot, heir)| before.replicas_of_slot(**slot).get(1) != Some(*heir)).count();
        if passed_over > 0 {
            info!(
                server,
                slots = passed_over,
                "promoting up-to-date secondaries in place of first secondaries still catching up"
            );
        }
        let (next, promoted) = before.fail_to(server, &heirs)?;
        let next = Arc::new(next);
        let carried_slots: usize = carried.values().map(Vec::len).sum();
        self.failovers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(next.epoch(), Failover { promoted: promoted.clone(), carried });
        info!(
            epoch = next.epoch(),
            server,
            promoted = promoted.len(),
            carried = carried_slots,
            "configuration changed: member failed"
        );
        self.commit(&next);
        let started = Instant::now();
        let deadline = started + self.move_timeout;
        // The members, and every server that owes slots: it carries its hand-offs over.
        let mut targets: Vec<&str> = next.members().map(|(_, a)| a).collect();
        for address in &owing {
            if next.id_of(address).is_none() {
                targets.push(address);
                self.owing.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(address.clone());
            }
        }
        let installs = targets.iter().map(|addr| self.install(addr, &before, &next, &[], deadline));
        let mut problems = Vec::new();
        for (addr, result) in targets.iter().zip(join_all(installs).await) {
            if let Err(status) = result {
                problems.push(format!("{addr}: {}", status.message()));
            }
        }
        info!(epoch = next.epoch(), took = ?started.elapsed(), ok = problems.is_empty(), "failover installed");
        if problems.is_empty() {
            Ok(next)
        } else {
            Err(ChangeError::Incomplete { epoch: next.epoch(), reason: problems.join("; "), lost: false })
        }
    }

    /// Repairs what failures left behind, unless a change is in progress: brings every member
    /// that answers and is behind up to the current epoch, one epoch at a time; and where a member
    /// still waits for slots, installs the current epoch again everywhere, which makes their
    /// senders resume the hand-offs that failed. Returns how many installs it made.
    pub async fn reconcile(&self) -> usize {
        let current = self.current();
        let history: Vec<Arc<Config>> =
            self.history.lock().unwrap_or_else(std::sync::PoisonError::into_inner).iter().cloned().collect();
        let involved = self.involved(&current);
        let mut probes = Vec::new();
        for address in &involved {
            probes.push(self.status_of(address));
        }
        // Probed without the lock: a server that does not answer must not hold up a failover.
        let statuses = join_all(probes).await;
        let Ok(_serialised) = self.changes.try_lock() else { return 0 };
        if self.current().epoch() != current.epoch() {
            return 0;
        }
        let mut installs = 0;
        let mut waiting = false;
        let mut up_to_date = Vec::new();
        // A server outside the membership is watched until it answers that it owes nothing (or
        // answers as another process, which holds nothing).
        self.owing.lock().unwrap_or_else(std::sync::PoisonError::into_inner).retain(|address| {
            let status = involved.iter().zip(&statuses).find(|(a, _)| *a == address).map(|(_, s)| s);
            match status {
                Some(Ok(status)) => status.outgoing_slots > 0 && !self.restarted(address, status.incarnation),
                Some(Err(_)) | None => true,
            }
        });
        for (address, status) in involved.iter().zip(statuses) {
            let Ok(status) = status else { continue };
            // A restarted member holds nothing of what it held: never hand it that role again.
            if self.restarted(address, status.incarnation) {
                continue;
            }
            waiting |= status.incoming_slots > 0 || status.outgoing_slots > 0;
            if status.epoch == current.epoch() {
                up_to_date.push(address.clone());
            }
            // A leaver that missed its last epochs is brought up to date too: then it hands off.
            if status.epoch >= current.epoch() {
                continue;
            }
            let mut steps: Vec<(Arc<Config>, Arc<Config>)> = history
                .windows(2)
                .filter(|pair| pair[1].epoch() > status.epoch)
                .map(|pair| (Arc::clone(&pair[0]), Arc::clone(&pair[1])))
                .collect();
            // A server that never installed anything starts with the epoch it (last) joined at.
            if status.epoch == 0
                && let Some(joined) = steps
                    .iter()
                    .rposition(|(from, to)| from.id_of(address).is_none() && to.id_of(address).is_some())
            {
                steps.drain(..joined);
            }
            if steps.first().is_none_or(|(from, _)| from.epoch() > status.epoch && status.epoch > 0) {
                warn!(server = address, epoch = status.epoch, "too far behind to catch up step by step");
                continue;
            }
            for (previous, next) in steps {
                let deadline = Instant::now() + self.move_timeout;
                installs += 1;
                if let Err(status) = self.install(address, &previous, &next, &[], deadline).await {
                    warn!(server = address, cause = %status.message(), "could not bring a server up to date");
                    break;
                }
                info!(server = address, epoch = next.epoch(), "brought a lagging server up to date");
            }
        }
        if waiting && let Some(previous) = history.len().checked_sub(2).map(|i| &history[i]) {
            // Only at servers at the current epoch: the others are being brought up to date.
            let deadline = Instant::now() + self.move_timeout;
            let mut again = Vec::new();
            for address in &up_to_date {
                again.push(self.install(address, previous, &current, &[], deadline));
            }
            installs += join_all(again).await.len();
        }
        installs
    }

    /// Installs `next` everywhere: first at the servers that send nothing (so every receiver
    /// expects its slots), then at the servers that lose slots, which return once their slots are
    /// at the new owners.
    async fn apply(&self, before: &Config, next: &Config) -> Result<(), ChangeError> {
        let started = Instant::now();
        let deadline = started + self.move_timeout;
        let moves = before.moves_to(next);
        let senders: BTreeSet<&str> =
            moves.iter().filter_map(|m| m.from.and_then(|id| before.address(id))).collect();
        let receivers: Vec<&str> =
            next.members().map(|(_, addr)| addr).filter(|a| !senders.contains(a)).collect();
        // One that stops answering is not waited for: it is failed over once this change is done.
        let installs = receivers.iter().map(|addr| async move {
            tokio::select! {
                result = self.install(addr, before, next, &[], deadline) => result,
                () = self.until_silent(addr) => Err(Status::unavailable("it stopped answering")),
            }
        });
        for (addr, result) in receivers.iter().zip(join_all(installs).await) {
            if let Err(status) = result {
                warn!(server = addr, cause = %status.message(), "could not install the configuration");
            }
        }

        // The senders get a time of their own, however long the receivers took.
        let deadline = Instant::now() + self.move_timeout;
        // A sender that stops answering pings (it died during its hand-off) is not waited for;
        // nor is one while another member stops answering (a receiver, or a secondary the
        // receivers wait for): that member's failover carries the hand-off over to the new
        // owners, and must not wait for this change.
        let members: Vec<&str> =
            next.members().map(|(_, addr)| addr).filter(|a| !senders.contains(a)).collect();
        let installs = senders.iter().map(|&addr| {
            let others: Vec<&str> =
                members.iter().copied().chain(senders.iter().copied().filter(|&s| s != addr)).collect();
            async move {
                tokio::select! {
                    result = self.install(addr, before, next, &[], deadline) => SenderOutcome::Answered(result),
                    () = self.until_silent(addr) => SenderOutcome::Silent,
                    other = self.until_any_silent(&others) => SenderOutcome::OtherSilent(other.to_owned()),
                }
            }
        });
        let mut problems = Vec::new();
        let mut lost = false;
        let replicated = next.replication().factor > 1;
        for (&sender, outcome) in senders.iter().zip(join_all(installs).await) {
            let (status, silent) = match outcome {
                SenderOutcome::Answered(Ok(_)) => continue,
                SenderOutcome::Answered(Err(status)) => (status, false),
                SenderOutcome::Silent => (Status::unavailable("it stopped answering"), true),
                SenderOutcome::OtherSilent(other) => {
                    problems.push(format!(
                        "{sender} could not hand off its slots while {other} stopped answering \
                         ({sender} keeps them, and sends them on once {other} is back or failed over)"
                    ));
                    continue;
                }
            };
            // With copies elsewhere, a silent sender is failed at once; otherwise make sure.
            let gone = (silent && replicated) || self.is_gone(sender).await;
            if !gone {
                // The sender is there and keeps the data; installing this epoch again resumes.
                problems.push(format!("{sender} could not hand off its slots ({})", status.message()));
                continue;
            }
            // The sender is gone. Its slots' secondaries kept copies: one of them sends them.
            let mut abandoned: BTreeMap<&str, Vec<Slot>> = BTreeMap::new();
            for m in moves.iter().filter(|m| m.from.and_then(|id| before.address(id)) == Some(sender)) {
                if let Some(to) = m.to.and_then(|id| next.address(id)) {
                    abandoned.entry(to).or_default().push(m.slot);
                }
            }
            let mut recovered = Vec::new();
            for (&to, slots) in &abandoned {
                if self.hand_off_copies(before, next, sender, to, slots).await {
                    recovered.push(to);
                }
            }
            abandoned.retain(|to, _| !recovered.contains(to));
            if abandoned.is_empty() {
                continue;
            }
            // No copy either: let the receivers serve the slots empty.
            lost = true;
            let slots: usize = abandoned.values().map(Vec::len).sum();
            problems.push(format!(
                "{sender} is unreachable ({}): the data of its {slots} slots is lost",
                status.message()
            ));
            for (to, slots) in abandoned {
                let deadline = Instant::now() + self.move_timeout;
                if let Err(status) = self.install(to, before, next, &slots, deadline).await {
                    problems.push(format!("{to} did not take over the lost slots ({})", status.message()));
                }
            }
        }
        // The change is over once the copies it reset have caught up: until then, the copies
        // former secondaries kept (a leaver's among them: it stays up until its leave returns)
        // may be the only up-to-date ones besides the primaries'. A member that stops answering
        // meanwhile is failed over at once, while those copies are there.
        if replicated {
            let members: Vec<&str> = next.members().map(|(_, a)| a).collect();
            let deadline = Instant::now() + self.move_timeout;
            tokio::select! {
                () = self.until_caught_up(&members, deadline) => {}
                silent = self.until_any_silent(&members) => {
                    // Unless this shard master is the one cut off: then it fails no one.
                    if self.most_answer(&members).await {
                        warn!(server = silent, "a member stopped answering while copies caught up: failing it over");
                        if let Err(err) = self.fail_locked(silent).await {
                            problems.push(format!("the failover of {silent} did not finish ({err})"));
                        }
                    } else {
                        problems.push(format!("{silent} stopped answering while copies caught up"));
                    }
                }
            }
        }
        info!(epoch = next.epoch(), slots = moves.len(), took = ?started.elapsed(), ok = problems.is_empty(), "moves done");
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ChangeError::Incomplete { epoch: next.epoch(), reason: problems.join("; "), lost })
        }
    }

    /// Has a secondary of `slots` in `before` send the copy it kept of them to `to`, in place of
    /// their primary `sender`, which died during the move to `next`; returns whether one did.
    async fn hand_off_copies(
        &self,
        before: &Config,
        next: &Config,
        sender: &str,
        to: &str,
        slots: &[Slot],
    ) -> bool {
        let Some(&first) = slots.first() else { return true };
        let request = v1::HandOffCopyRequest {
            epoch: next.epoch(),
            sender: sender.to_owned(),
            to: to.to_owned(),
            slots: slots.iter().map(|&s| u32::from(s)).collect(),
            as_snapshot: false,
        };
        for holder in kv_replica::secondaries(before, first) {
            if next.id_of(holder).is_none() {
                continue;
            }
            match self.hand_off_copy(holder, &request).await {
                Ok(report) => {
                    warn!(
                        sender,
                        holder,
                        to,
                        slots = slots.len(),
                        keys = report.keys_sent,
                        "a dead sender's slots were handed off from a copy"
                    );
                    return true;
                }
                Err(status) => {
                    warn!(sender, holder, cause = %status.message(), "no copy of a dead sender's slots here")
                }
            }
        }
        false
    }

    /// Asks `holder` to send a copy it kept (`Node.HandOffCopy`), retrying while it is
    /// unreachable, for up to the move timeout.
    async fn hand_off_copy(
        &self,
        holder: &str,
        request: &v1::HandOffCopyRequest,
    ) -> Result<v1::InstallResponse, Status> {
        let deadline = Instant::now() + self.move_timeout;
        retry_until(deadline, self.move_timeout, |timeout| {
            let mut call = self.peers.request(request.clone());
            call.set_timeout(timeout);
            let node = self.peers.node(holder);
            async move { Ok(node?.hand_off_copy(call).await?.into_inner()) }
        })
        .await
    }

    /// Has `holder`, a former secondary of `slots` (whose primary `server` failed), send the
    /// copy it kept of them to `to`, a secondary of them in `config` still catching up, as the
    /// snapshot the primary would have sent; returns whether `to` is up to date now.
    async fn snapshot_from_copy(
        &self,
        config: &Config,
        server: &str,
        holder: &str,
        to: &str,
        slots: &[Slot],
    ) -> bool {
        let request = v1::HandOffCopyRequest {
            epoch: config.epoch(),
            sender: server.to_owned(),
            to: to.to_owned(),
            slots: slots.iter().map(|&s| u32::from(s)).collect(),
            as_snapshot: true,
        };
        match self.hand_off_copy(holder, &request).await {
            Ok(report) => {
                warn!(
                    server,
                    holder,
                    to,
                    slots = slots.len(),
                    keys = report.keys_sent,
                    "a former secondary's copy brought a failed primary's heir up to date"
                );
                true
            }
            Err(status) => {
                warn!(server, holder, to, cause = %status.message(), "could not bring the heir up to date from a kept copy");
                false
            }
        }
    }

    /// Installs `next` at `server`, retrying while it is unreachable or busy, until `deadline`.
    async fn install(
        &self,
        server: &str,
        before: &Config,
        next: &Config,
        abandoned: &[Slot],
        deadline: Instant,
    ) -> Result<v1::InstallResponse, Status> {
        let failover = self
            .failovers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&next.epoch())
            .cloned()
            .unwrap_or_default();
        let incarnation = self
            .incarnations
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(server)
            .copied()
            .unwrap_or(0);
        let request = v1::InstallRequest {
            config: Some(config_to_wire(next)),
            previous: Some(config_to_wire(before)),
            abandoned: abandoned.iter().map(|&s| u32::from(s)).collect(),
            promoted: failover.promoted.into_iter().map(u32::from).collect(),
            carried: failover
                .carried
                .into_iter()
                .map(|(server, slots)| v1::ServerSlots {
                    server,
                    slots: slots.into_iter().map(u32::from).collect(),
                })
                .collect(),
            incarnation,
        };
        // An install may hand off a lot of data: an attempt may take all the time left.
        retry_until(deadline, self.move_timeout, |timeout| {
            let mut call = self.peers.request(request.clone());
            call.set_timeout(timeout);
            let node = self.peers.node(server);
            async move { Ok(node?.install(call).await?.into_inner()) }
        })
        .await
    }

    /// Whether some server involved in the last change has not settled: a member behind the
    /// current epoch, or any server still waiting for slots or owing them. Servers that do not
    /// answer are not waited for (a dead one would block every change).
    async fn unsettled(&self, current: &Config) -> Option<String> {
        let involved = self.involved(current);
        let mut probes = Vec::new();
        for address in &involved {
            probes.push(self.status_of(address));
        }
        for (address, status) in involved.iter().zip(join_all(probes).await) {
            let Ok(status) = status else { continue };
            if current.id_of(address).is_some() && status.epoch < current.epoch() {
                return Some(format!("{address} is at epoch {}, behind {}", status.epoch, current.epoch()));
            }
            if status.incoming_slots > 0 || status.outgoing_slots > 0 {
                return Some(format!(
                    "{address} waits for {} slots and owes {}",
                    status.incoming_slots, status.outgoing_slots
                ));
            }
            if status.syncing_slots > 0 {
                return Some(format!("{address} has {} copies still catching up", status.syncing_slots));
            }
        }
        None
    }

    /// The members of `current` and of the configuration before it (a leaver is one of those).
    fn involved(&self, current: &Config) -> Vec<String> {
        let mut involved: Vec<String> = current.members().map(|(_, address)| address.to_owned()).collect();
        let history = self.history.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(previous) = history.iter().rev().find(|c| c.epoch() < current.epoch()) {
            involved.extend(previous.members().map(|(_, address)| address.to_owned()));
        }
        drop(history);
        involved.extend(self.owing.lock().unwrap_or_else(std::sync::PoisonError::into_inner).iter().cloned());
        involved.sort_unstable();
        involved.dedup();
        involved
    }

    /// Whether `server` fails every one of a few probes, a second apart: then it is presumed
    /// dead.
    async fn is_gone(&self, server: &str) -> bool {
        for attempt in 0..3 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            if self.status_of(server).await.is_ok() {
                return false;
            }
        }
        true
    }

    /// Whether `server` answers that it still waits for slots.
    async fn receiver_waits(&self, server: &str) -> bool {
        self.status_of(server).await.is_ok_and(|status| status.incoming_slots > 0)
    }

    /// Whether the process at member `server` is not the one that joined (`incarnation` is
    /// what it answers now).
    fn restarted(&self, server: &str, incarnation: u64) -> bool {
        self.incarnations
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(server)
            .is_some_and(|&joined| joined != incarnation)
    }

    /// What `server` holds, asked up to three times: the first call on a connection to a
    /// process that has since restarted may fail.
    async fn status_after_restart(&self, server: &str) -> Result<v1::StatusResponse, Status> {
        let mut last = Err(Status::unavailable("not asked"));
        for _ in 0..3 {
            last = self.status_of(server).await;
            if last.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        last
    }

    /// What `server` holds, if it answers within the probe timeout.
    pub async fn status_of(&self, server: &str) -> Result<v1::StatusResponse, Status> {
        self.status_within(server, Self::PROBE_TIMEOUT).await
    }

    /// What `server` holds, for a failover: asked three times, the last two with the probe
    /// timeout (a server busy switching configurations may take a while).
    async fn status_for_failover(&self, server: &str) -> Result<v1::StatusResponse, Status> {
        let mut answer = self.status_within(server, Self::PING_TIMEOUT * 2).await;
        for _ in 0..2 {
            if answer.is_ok() {
                break;
            }
            answer = self.status_of(server).await;
        }
        answer
    }

    /// What `server` holds, if it answers within `timeout`.
    async fn status_within(&self, server: &str, timeout: Duration) -> Result<v1::StatusResponse, Status> {
        let mut call = tonic::Request::new(v1::StatusRequest {});
        call.set_timeout(timeout);
        Ok(self.peers.node(server)?.status(call).await?.into_inner())
    }
}
