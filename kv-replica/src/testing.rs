//! An in-memory network of storage servers and a shard master, for tests and simulations: the
//! protocols' calls go straight to the [`Node`]s of one process, through links a test can cut
//! and heal, with the timeouts the protocols give them read from the same [`Clock`].
//!
//! What a call sees, as over gRPC:
//! - a target that is not (or no longer) on the network refuses at once: *unavailable*;
//! - a link cut one way or both makes the call wait out its whole timeout: *interrupted* (a
//!   partition drops packets; it does not refuse them);
//! - otherwise the target's answer, or *interrupted* if it does not come within the timeout.
//!
//! With tokio's paused clock (`#[tokio::test(start_paused = true)]`) a whole cluster runs at
//! virtual time: seconds of leases, heartbeats and failovers take milliseconds.
//!
//! Behind the `testing` feature (and in this crate's own tests).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use async_trait::async_trait;
use kv_shard::clock::{Clock, timeout};
use kv_shard::messages::{HandOffCopy, Install, InstallReport, Pong, ServerStatus, TransferBatch};
use kv_shard::transport::ServerCalls;
use kv_shard::{Config, Slot};

use crate::messages::{LeaseGrant, LeaseRequest, Replicate, ReplicateAck};
use crate::transport::PeerCalls;
use crate::{Error, Node};

/// The in-memory network.
#[derive(Debug)]
pub struct MemoryNetwork {
    clock: Arc<dyn Clock>,
    nodes: Mutex<HashMap<String, Weak<Node>>>,
    /// Links cut, from caller to callee.
    cut: Mutex<HashSet<(String, String)>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The replication error for a storage server's refusal of a read, by the same rules as the
/// gRPC binding's status codes.
pub fn peer_error(err: kv_core::Error) -> Error {
    use kv_core::Error as E;
    let message = err.to_string();
    match err {
        E::KeyTooLarge { .. } | E::ValueTooLarge { .. } | E::InvalidArgument(_) => {
            Error::InvalidArgument(message)
        }
        E::Storage(_) | E::Moving { .. } | E::Replication(_) => Error::Unavailable(message),
        E::StaleRetry { .. } | E::WrongShard { .. } => Error::FailedPrecondition(message),
        E::InProgress { .. } => Error::Aborted(message),
    }
}

impl MemoryNetwork {
    /// An empty network whose calls time out by `clock`.
    pub fn new(clock: Arc<dyn Clock>) -> Arc<Self> {
        Arc::new(MemoryNetwork { clock, nodes: Mutex::new(HashMap::new()), cut: Mutex::new(HashSet::new()) })
    }

    /// The calls made by whoever is at `address` (a storage server, or the shard master).
    pub fn caller(self: &Arc<Self>, address: &str) -> Arc<Caller> {
        Arc::new(Caller { network: Arc::clone(self), from: address.to_owned() })
    }

    /// Puts `node` on the network at `address`.
    pub fn attach(&self, address: &str, node: &Arc<Node>) {
        lock(&self.nodes).insert(address.to_owned(), Arc::downgrade(node));
    }

    /// Takes the server at `address` off the network (it crashed): calls to it are refused.
    pub fn detach(&self, address: &str) {
        lock(&self.nodes).remove(address);
    }

    /// Cuts the link from `from` to `to`: calls along it get no answer.
    pub fn cut(&self, from: &str, to: &str) {
        lock(&self.cut).insert((from.to_owned(), to.to_owned()));
    }

    /// Cuts every link to and from `address` (the shard master's included).
    pub fn isolate(&self, address: &str) {
        let others: Vec<String> = lock(&self.nodes).keys().cloned().chain(["master".to_owned()]).collect();
        let mut cut = lock(&self.cut);
        for other in others.into_iter().filter(|other| other != address) {
            cut.insert((address.to_owned(), other.clone()));
            cut.insert((other, address.to_owned()));
        }
    }

    /// Heals every link.
    pub fn heal(&self) {
        lock(&self.cut).clear();
    }

    /// Runs `call` against the node at `to`, as called by `from`, within `limit`.
    async fn call<T, F, Fut>(&self, from: &str, to: &str, limit: Duration, call: F) -> Result<T, Error>
    where
        F: FnOnce(Arc<Node>) -> Fut,
        Fut: std::future::Future<Output = Result<T, Error>>,
    {
        if lock(&self.cut).contains(&(from.to_owned(), to.to_owned())) {
            self.clock.sleep(limit).await;
            return Err(Error::Interrupted(format!("{from} → {to}: no answer (the link is cut)")));
        }
        let node = lock(&self.nodes).get(to).and_then(Weak::upgrade);
        let Some(node) = node else {
            return Err(Error::Unavailable(format!("{to}: connection refused")));
        };
        match timeout(self.clock.as_ref(), limit, call(node)).await {
            Ok(answer) => answer,
            Err(_) => Err(Error::Interrupted(format!("{from} → {to}: deadline exceeded"))),
        }
    }
}

/// The calls of one server (or of the shard master) over a [`MemoryNetwork`].
#[derive(Debug)]
pub struct Caller {
    network: Arc<MemoryNetwork>,
    from: String,
}

/// The shard master's error for a storage server's refusal, as the gRPC binding maps it.
pub fn shard_error(err: Error) -> kv_shard::Error {
    match err {
        Error::Unavailable(m) => kv_shard::Error::Unavailable(m),
        Error::Interrupted(m) => kv_shard::Error::Interrupted(m),
        Error::Aborted(m) => kv_shard::Error::Aborted(m),
        Error::FailedPrecondition(m) => kv_shard::Error::FailedPrecondition(m),
        Error::InvalidArgument(m) => kv_shard::Error::InvalidArgument(m),
        Error::PermissionDenied(m) => kv_shard::Error::PermissionDenied(m),
        Error::Internal(m) => kv_shard::Error::Internal(m),
    }
}

#[async_trait]
impl PeerCalls for Caller {
    async fn replicate(&self, to: &str, batch: &Replicate, limit: Duration) -> Result<ReplicateAck, Error> {
        self.network
            .call(&self.from, to, limit, |node| async move { node.replicate(batch.clone()).await })
            .await
    }

    async fn lease(&self, to: &str, request: &LeaseRequest, limit: Duration) -> Result<LeaseGrant, Error> {
        self.network.call(&self.from, to, limit, |node| async move { node.grant_lease(request) }).await
    }

    async fn read(&self, to: &str, key: &str, limit: Duration) -> Result<Option<String>, Error> {
        self.network
            .call(&self.from, to, limit, |node| async move { node.get(key).await.map_err(peer_error) })
            .await
    }

    async fn transfer(&self, to: &str, batch: &TransferBatch, limit: Duration) -> Result<Vec<Slot>, Error> {
        self.network
            .call(&self.from, to, limit, |node| async move { node.transfer(batch.clone()).await })
            .await
    }
}

#[async_trait]
impl ServerCalls for Caller {
    async fn install(
        &self,
        server: &str,
        install: &Install,
        limit: Duration,
    ) -> Result<InstallReport, kv_shard::Error> {
        // Run to the end even if the caller goes away, as the gRPC service does.
        let call = |node: Arc<Node>| {
            let install = install.clone();
            async move {
                tokio::spawn(async move { node.install(install).await })
                    .await
                    .unwrap_or_else(|err| Err(Error::Internal(format!("the install failed: {err}"))))
            }
        };
        self.network.call(&self.from, server, limit, call).await.map_err(shard_error)
    }

    async fn hand_off_copy(
        &self,
        server: &str,
        request: &HandOffCopy,
        limit: Duration,
    ) -> Result<InstallReport, kv_shard::Error> {
        let call = |node: Arc<Node>| {
            let request = request.clone();
            async move {
                tokio::spawn(async move { node.hand_off_copy(request).await })
                    .await
                    .unwrap_or_else(|err| Err(Error::Internal(format!("the hand-off failed: {err}"))))
            }
        };
        self.network.call(&self.from, server, limit, call).await.map_err(shard_error)
    }

    async fn status(&self, server: &str, limit: Duration) -> Result<ServerStatus, kv_shard::Error> {
        let call = |node: Arc<Node>| async move {
            node.status().await.map_err(|err| Error::Internal(err.to_string()))
        };
        self.network.call(&self.from, server, limit, call).await.map_err(shard_error)
    }

    async fn ping(&self, server: &str, limit: Duration) -> Result<Pong, kv_shard::Error> {
        self.network
            .call(&self.from, server, limit, |node| async move { Ok(node.ping()) })
            .await
            .map_err(shard_error)
    }
}

/// The configuration a cluster's shard master holds, for tests that route by it.
pub fn primary_of<'c>(config: &'c Config, key: &str) -> Option<&'c str> {
    config.owner(key).map(|(_, address)| address)
}
