//! The processes of a simulated cluster: storage servers (the real [`kv_replica::Node`] over an
//! in-memory engine) and a shard master (the real [`kv_shard::ShardMaster`]), each started,
//! crashed, restarted, paused and resumed as a process would be, with a clock of its own.
//!
//! A storage server does what `kv-server storage --shardmaster` does around the node: it joins
//! at start-up (patiently, `kv_shard::member::join`), joins again when a configuration shows it
//! was failed over, and a leaving one asks to leave and stops once it has. A crash takes its
//! process off the network and drops its memory; a restart is a new process (a new life and
//! incarnation) at the same address that joins again: empty, or in a durable run with the disk
//! its crashed predecessor left ([`super::disk`]), reading back its exactly-once records and its
//! membership first, as `kv-server storage --data-dir` does. The shard master runs its failure
//! detector and its repairs, as `kv-server shardmaster` does, and saves its state in a store that
//! outlives its crashes, as `kv-server shardmaster --data-dir` does on disk: a restarted shard
//! master goes on from what it saved. One that came back at an epoch behind one it had shown
//! (it forgot its cluster) is a problem of the run.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use kv_replica::{Node, NodeSettings};
use kv_shard::clock::Clock;
use kv_shard::{
    MasterSettings, MasterState, MasterStore, MemoryMasterStore, Replication, ShardMaster, member,
};
use tokio::task::JoinHandle;

use super::clock::{Gate, SimClock};
use super::disk::SimDisk;
use super::net::{Endpoint, MASTER, Net, Service};

/// How long a server keeps asking to join (the real server's default).
const JOIN_PATIENCE: Duration = Duration::from_secs(120);
/// How long a leaver keeps asking to leave.
const LEAVE_PATIENCE: Duration = Duration::from_secs(60);
/// How long a server whose join failed waits before it tries again.
const RESTART_DELAY: Duration = Duration::from_secs(1);

/// A server that should be a member, with its node.
pub(crate) type Member = (String, Arc<Node>);

/// The shard master's disk as one of its processes sees it: a crashed process writes nothing
/// more (its leftover tasks in the simulator, a change in progress say, would otherwise go on
/// saving over what its successor saved).
#[derive(Debug)]
struct MasterDisk {
    disk: Arc<MemoryMasterStore>,
    net: Arc<Net>,
    life: u64,
}

#[async_trait::async_trait]
impl MasterStore for MasterDisk {
    async fn load(&self) -> Result<Option<MasterState>, kv_shard::Error> {
        self.disk.load().await
    }

    async fn save(&self, state: &MasterState) -> Result<(), kv_shard::Error> {
        if !self.net.is_alive(MASTER, self.life) {
            return Err(kv_shard::Error::Unavailable("this process is dead".to_owned()));
        }
        self.disk.save(state).await
    }
}

/// A running storage server.
pub(crate) struct Server {
    pub(crate) node: Arc<Node>,
    pub(crate) storage: Arc<SimDisk>,
    endpoint: Endpoint,
    tasks: Vec<JoinHandle<()>>,
}

struct Master {
    master: ShardMaster,
    gate: Gate,
    tasks: Vec<JoinHandle<()>>,
}

/// Every process of the run.
pub(crate) struct World {
    pub(crate) net: Arc<Net>,
    settings: MasterSettings,
    servers: BTreeMap<String, Server>,
    master: Option<Master>,
    /// The shard master's saved state: its disk, which its crashes leave in place.
    master_disk: Arc<MemoryMasterStore>,
    /// The highest epoch a shard master of this run has shown.
    master_epoch: u64,
    /// What went wrong with the processes themselves (a shard master that forgot its cluster).
    pub(crate) problems: Vec<String>,
    next_life: u64,
    /// Each address's clock rate, drawn when the run's schedule was made.
    rates: BTreeMap<String, f64>,
    /// Servers that asked to leave: they need not be members.
    leavers: BTreeSet<String>,
    /// In a durable run, each address's disk, which outlives its processes.
    disks: Option<BTreeMap<String, Arc<SimDisk>>>,
}

/// What `future` gives if it is ready at its first poll (the simulated disk's calls are).
pub(crate) fn at_once<F: std::future::Future>(future: F) -> Option<F::Output> {
    use std::task::{Context, Poll, Waker};
    let mut future = std::pin::pin!(future);
    match future.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(output) => Some(output),
        Poll::Pending => None,
    }
}

fn abort_all(tasks: &[JoinHandle<()>]) {
    for task in tasks {
        task.abort();
    }
}

impl World {
    /// No process yet; servers will be started at these clock rates (1.0 for others), and keep
    /// their disks across crashes if `durable`.
    pub(crate) fn new(
        net: Arc<Net>,
        replication: Replication,
        rates: BTreeMap<String, f64>,
        durable: bool,
    ) -> Self {
        let settings = MasterSettings {
            move_timeout: Duration::from_secs(30),
            failure_timeout: Duration::from_millis(800),
            replication,
        };
        World {
            net,
            settings,
            servers: BTreeMap::new(),
            master: None,
            master_disk: Arc::new(MemoryMasterStore::new()),
            master_epoch: 0,
            problems: Vec::new(),
            next_life: 1,
            rates,
            leavers: BTreeSet::new(),
            disks: durable.then(BTreeMap::new),
        }
    }

    fn life(&mut self) -> u64 {
        let life = self.next_life;
        self.next_life += 1;
        life
    }

    /// An endpoint for a new process at `address`, with its clock.
    fn endpoint(&mut self, address: &str) -> Endpoint {
        let life = self.life();
        let gate = Gate::new();
        let rate = self.rates.get(address).copied().unwrap_or(1.0);
        let clock: Arc<dyn Clock> = Arc::new(SimClock::new(rate, gate.clone()));
        Endpoint { net: Arc::clone(&self.net), me: address.to_owned(), life, gate, clock }
    }

    /// A client process at `address`.
    pub(crate) fn client(&mut self, address: &str) -> Endpoint {
        let endpoint = self.endpoint(address);
        self.net.attach(address, endpoint.life, endpoint.gate.clone(), Service::Client);
        endpoint
    }

    /// Starts the shard master, from the state it saved, if it saved any (a no-op if it runs).
    pub(crate) fn start_master(&mut self) {
        if self.master.is_some() {
            return;
        }
        let endpoint = self.endpoint(MASTER);
        let master = match ShardMaster::with_store(
            self.settings,
            Arc::new(endpoint.clone()),
            Arc::clone(&endpoint.clock),
            Arc::new(MasterDisk {
                disk: Arc::clone(&self.master_disk),
                net: Arc::clone(&self.net),
                life: endpoint.life,
            }),
            self.master_disk.saved(),
        ) {
            Ok(master) => master,
            Err(err) => {
                self.problems.push(format!("the shard master could not start: {err}"));
                return;
            }
        };
        let epoch = master.current().epoch();
        if epoch < self.master_epoch {
            self.problems.push(format!(
                "the shard master restarted at epoch {epoch}, behind epoch {} it had made: it forgot its cluster",
                self.master_epoch
            ));
        }
        self.net.attach(MASTER, endpoint.life, endpoint.gate.clone(), Service::Master(master.clone()));
        let watcher = tokio::spawn({
            let master = master.clone();
            async move { master.watch().await }
        });
        let repairer = tokio::spawn({
            let master = master.clone();
            async move { master.repair().await }
        });
        self.net.trace(format_args!("the shard master starts at epoch {epoch} (life {})", endpoint.life));
        self.master = Some(Master { master, gate: endpoint.gate, tasks: vec![watcher, repairer] });
    }

    /// Crashes the shard master: what it did not save is gone.
    pub(crate) fn crash_master(&mut self) {
        if let Some(master) = self.master.take() {
            self.master_epoch = self.master_epoch.max(master.master.current().epoch());
            abort_all(&master.tasks);
            self.net.detach(MASTER);
            self.net.trace(format_args!("the shard master crashes"));
        }
    }

    /// The configuration the shard master holds, if it runs.
    pub(crate) fn config(&self) -> Option<Arc<kv_shard::Config>> {
        self.master.as_ref().map(|master| master.master.current())
    }

    /// Starts a storage server at `address` (a new process, empty) that joins the cluster.
    pub(crate) fn start_server(&mut self, address: &str) {
        let endpoint = self.endpoint(address);
        let storage = match &mut self.disks {
            Some(disks) => {
                Arc::clone(disks.entry(address.to_owned()).or_insert_with(|| Arc::new(SimDisk::new(true))))
            }
            None => Arc::new(SimDisk::new(false)),
        };
        let settings = NodeSettings {
            me: address.to_owned(),
            joining: true,
            handoff_timeout: Duration::from_secs(30),
            incarnation: endpoint.life,
        };
        let node = Node::new(
            Arc::clone(&storage) as Arc<dyn kv_core::Storage>,
            settings,
            Arc::new(endpoint.clone()),
            Arc::clone(&endpoint.clock),
        );
        // What it kept, read back before it serves (the simulated disk answers at once).
        let restored = at_once(async {
            node.restore_sessions().await?;
            node.restore_membership().await
        });
        let kept = match restored {
            Some(Ok(kept)) => kept,
            other => {
                self.problems.push(format!("{address} could not read back its disk: {other:?}"));
                None
            }
        };
        self.net.attach(address, endpoint.life, endpoint.gate.clone(), Service::Node(Arc::clone(&node)));
        match kept {
            Some(kept) => self.net.trace(format_args!(
                "{address} starts (life {}) with the data of member {} at epoch {} (whole: {})",
                endpoint.life, kept.member.0, kept.epoch, kept.whole
            )),
            None => self.net.trace(format_args!("{address} starts (life {})", endpoint.life)),
        }
        let joiner = tokio::spawn({
            let node = Arc::downgrade(&node);
            let endpoint = endpoint.clone();
            async move {
                loop {
                    let me = endpoint.me.clone();
                    let joined = member::join(&endpoint, endpoint.clock.as_ref(), &me, JOIN_PATIENCE).await;
                    endpoint.net.trace(format_args!("{me} joined: {joined:?}"));
                    if joined.is_err() {
                        // The real server exits, and its supervisor starts it again: a restart
                        // that came before the shard master noticed the crash is refused as a
                        // member already, until the failover.
                        endpoint.clock.sleep(RESTART_DELAY).await;
                        continue;
                    }
                    let Some(node) = node.upgrade() else { return };
                    // Failed over while out of reach: it comes back empty, as a new member.
                    node.evicted().notified().await;
                }
            }
        });
        self.servers.insert(address.to_owned(), Server { node, storage, endpoint, tasks: vec![joiner] });
    }

    /// Crashes the server at `address`: its memory is gone.
    pub(crate) fn crash(&mut self, address: &str) {
        // A leaver that crashes leaves no more: started again, it joins.
        self.leavers.remove(address);
        if let Some(server) = self.servers.remove(address) {
            abort_all(&server.tasks);
            self.net.detach(address);
            self.net.trace(format_args!("{address} crashes"));
        }
    }

    /// Has the server at `address` leave the cluster, and stop once it has (after a leave whose
    /// hand-offs did not all finish, once it has sent them on).
    pub(crate) fn leave(&mut self, address: &str) {
        let Some(server) = self.servers.get_mut(address) else { return };
        let net = Arc::clone(&self.net);
        let endpoint = server.endpoint.clone();
        self.leavers.insert(address.to_owned());
        self.net.trace(format_args!("{address} asks to leave"));
        let node = Arc::downgrade(&server.node);
        let leaver = tokio::spawn(async move {
            let me = endpoint.me.clone();
            let left = member::leave(&endpoint, endpoint.clock.as_ref(), &me, LEAVE_PATIENCE).await;
            net.trace(format_args!("{me} leave: {left:?}"));
            if matches!(left, Ok(_) | Err(kv_shard::Error::Incomplete { .. })) {
                // Not a member any more, but it may not have installed its leave yet, or still
                // owe slots it could not hand off (its leave was incomplete, or the shard master
                // restarted during it and the retry found it gone): it stays up until it has,
                // and owes nothing, as `kv-server` does.
                let Some(node) = node.upgrade() else { return };
                node.wait_until_left(LEAVE_PATIENCE).await;
            } else {
                return;
            }
            if net.is_alive(&me, endpoint.life) {
                net.detach(&me);
                net.trace(format_args!("{me} stops after leaving"));
            }
        });
        server.tasks.push(leaver);
    }

    /// Stops or resumes the process at `address` (the shard master's too).
    pub(crate) fn set_paused(&mut self, address: &str, paused: bool) {
        let gate = if address == MASTER {
            self.master.as_ref().map(|master| &master.gate)
        } else {
            self.servers.get(address).map(|server| &server.endpoint.gate)
        };
        if let Some(gate) = gate {
            gate.set_paused(paused);
            self.net.trace(format_args!("{address} {}", if paused { "paused" } else { "resumed" }));
        }
    }

    /// Resumes every paused process.
    pub(crate) fn resume_all(&mut self) {
        let paused: Vec<String> = self
            .servers
            .iter()
            .filter(|(_, server)| server.endpoint.gate.is_paused())
            .map(|(address, _)| address.clone())
            .chain(self.master.as_ref().filter(|m| m.gate.is_paused()).map(|_| MASTER.to_owned()))
            .collect();
        for address in paused {
            self.set_paused(&address, false);
        }
    }

    /// The servers running (leavers that have stopped excluded).
    pub(crate) fn running(&self) -> impl Iterator<Item = (&String, &Server)> {
        self.servers.iter().filter(|(address, server)| self.net.is_alive(address, server.endpoint.life))
    }

    /// The node of the server running at `address`.
    pub(crate) fn node(&self, address: &str) -> Option<Arc<Node>> {
        self.servers.get(address).filter(|_| self.is_running(address)).map(|server| Arc::clone(&server.node))
    }

    /// Whether a process runs at `address`.
    pub(crate) fn is_running(&self, address: &str) -> bool {
        self.servers.get(address).is_some_and(|server| self.net.is_alive(address, server.endpoint.life))
    }

    /// What the cluster's health depends on: the shard master's configuration, the servers
    /// that should be members (running, and not leaving) with their nodes, and the leavers still
    /// running (a leaver stops once its leave has returned, its slots handed off).
    pub(crate) fn health_inputs(&self) -> Option<(Arc<kv_shard::Config>, Vec<Member>, Vec<String>)> {
        let config = self.config()?;
        let (leaving, staying): (Vec<_>, Vec<_>) =
            self.running().partition(|(address, _)| self.leavers.contains(*address));
        let servers =
            staying.into_iter().map(|(address, server)| (address.clone(), Arc::clone(&server.node)));
        Some((config, servers.collect(), leaving.into_iter().map(|(address, _)| address.clone()).collect()))
    }

    /// Stops everything (the end of the run).
    pub(crate) fn shut_down(&mut self) {
        for server in self.servers.values() {
            abort_all(&server.tasks);
        }
        self.servers.clear();
        self.crash_master();
    }
}
