//! The protocols' transport traits over the simulated network: what a storage server sends
//! another ([`PeerCalls`]), what the shard master sends the servers ([`ServerCalls`]), and what
//! a server asks the shard master ([`MasterCalls`]); each call reaches the real handler of the
//! process at the other end, as the gRPC binding's services do, with the same errors.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use kv_replica::Error as PeerError;
use kv_replica::messages::{LeaseGrant, LeaseRequest, Replicate, ReplicateAck};
use kv_replica::testing::{peer_error, shard_error};
use kv_replica::transport::PeerCalls;
use kv_shard::messages::{HandOffCopy, Install, InstallReport, Pong, ServerStatus, TransferBatch};
use kv_shard::transport::{MasterCalls, ServerCalls};
use kv_shard::{Config, Error as ShardError, Slot};

use super::net::{Endpoint, Failure, Handler, MASTER, Service};

fn peer_failure(to: &str, failure: Failure) -> PeerError {
    match failure {
        Failure::Refused => PeerError::Unavailable(format!("{to}: {failure}")),
        Failure::NoAnswer => PeerError::Interrupted(format!("{to}: {failure}")),
    }
}

fn not_a(what: &str, to: &str) -> PeerError {
    PeerError::Unavailable(format!("{to} is not a {what}"))
}

impl Endpoint {
    /// A call to the storage server at `to`; what it answers, or how the network failed it.
    async fn to_node<T, F, Fut>(
        &self,
        to: &str,
        limit: Duration,
        what: &str,
        handler: Handler,
        handle: F,
    ) -> Result<T, PeerError>
    where
        T: Send + 'static,
        F: FnOnce(Arc<kv_replica::Node>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<T, PeerError>> + Send + 'static,
    {
        let to_owned = to.to_owned();
        let answer = self
            .call(to, limit, what, handler, move |service| async move {
                match service {
                    Service::Node(node) => handle(node).await,
                    _ => Err(not_a("storage server", &to_owned)),
                }
            })
            .await;
        answer.unwrap_or_else(|failure| Err(peer_failure(to, failure)))
    }

    /// The configuration the shard master holds, as a client reads it.
    pub(crate) async fn config(&self, limit: Duration) -> Result<Arc<Config>, Failure> {
        self.call(MASTER, limit, "config?", Handler::WithCaller, |service| async move {
            match service {
                Service::Master(master) => Some(master.current()),
                _ => None,
            }
        })
        .await?
        .ok_or(Failure::Refused)
    }
}

#[async_trait]
impl PeerCalls for Endpoint {
    async fn replicate(
        &self,
        to: &str,
        batch: &Replicate,
        limit: Duration,
    ) -> Result<ReplicateAck, PeerError> {
        let batch = batch.clone();
        let what = format!("replicate {batch:?}");
        self.to_node(to, limit, &what, Handler::WithCaller, |node| async move { node.replicate(batch).await })
            .await
    }

    async fn lease(
        &self,
        to: &str,
        request: &LeaseRequest,
        limit: Duration,
    ) -> Result<LeaseGrant, PeerError> {
        let request = request.clone();
        let what = format!("lease {request:?}");
        self.to_node(to, limit, &what, Handler::WithCaller, |node| async move { node.grant_lease(&request) })
            .await
    }

    async fn read(&self, to: &str, key: &str, limit: Duration) -> Result<Option<String>, PeerError> {
        let key = key.to_owned();
        let what = format!("read {key:?}");
        self.to_node(to, limit, &what, Handler::WithCaller, |node| async move {
            node.get(&key).await.map_err(peer_error)
        })
        .await
    }

    async fn transfer(
        &self,
        to: &str,
        batch: &TransferBatch,
        limit: Duration,
    ) -> Result<Vec<Slot>, PeerError> {
        let batch = batch.clone();
        let what = format!("transfer {batch:?}");
        self.to_node(to, limit, &what, Handler::WithCaller, |node| async move { node.transfer(batch).await })
            .await
    }
}

#[async_trait]
impl ServerCalls for Endpoint {
    async fn install(
        &self,
        server: &str,
        install: &Install,
        limit: Duration,
    ) -> Result<InstallReport, ShardError> {
        let install = install.clone();
        let what = format!("install {install:?}");
        self.to_node(
            server,
            limit,
            &what,
            Handler::Detached,
            |node| async move { node.install(install).await },
        )
        .await
        .map_err(shard_error)
    }

    async fn hand_off_copy(
        &self,
        server: &str,
        request: &HandOffCopy,
        limit: Duration,
    ) -> Result<InstallReport, ShardError> {
        let request = request.clone();
        let what = format!("hand off copy {request:?}");
        self.to_node(server, limit, &what, Handler::Detached, |node| async move {
            node.hand_off_copy(request).await
        })
        .await
        .map_err(shard_error)
    }

    async fn status(&self, server: &str, limit: Duration) -> Result<ServerStatus, ShardError> {
        self.to_node(server, limit, "status?", Handler::WithCaller, |node| async move {
            node.status().await.map_err(|err| PeerError::Internal(err.to_string()))
        })
        .await
        .map_err(shard_error)
    }

    async fn ping(&self, server: &str, limit: Duration) -> Result<Pong, ShardError> {
        self.to_node(server, limit, "ping", Handler::WithCaller, |node| async move { Ok(node.ping()) })
            .await
            .map_err(shard_error)
    }
}

impl Endpoint {
    async fn change(&self, server: &str, join: bool, limit: Duration) -> Result<u64, ShardError> {
        let server = server.to_owned();
        let what = format!("{} {server}", if join { "join" } else { "leave" });
        let answer = self
            .call(MASTER, limit, &what, Handler::Detached, move |service| async move {
                let Service::Master(master) = service else {
                    return Err(ShardError::Unavailable("not the shard master".to_owned()));
                };
                let config = if join { master.join(&server).await } else { master.leave(&server).await };
                config.map(|config| config.epoch())
            })
            .await;
        match answer {
            Ok(answer) => answer,
            Err(Failure::Refused) => Err(ShardError::Unavailable(format!("{MASTER}: connection refused"))),
            Err(Failure::NoAnswer) => Err(ShardError::Interrupted(format!("{MASTER}: no answer"))),
        }
    }
}

#[async_trait]
impl MasterCalls for Endpoint {
    async fn join(&self, server: &str, limit: Duration) -> Result<u64, ShardError> {
        self.change(server, true, limit).await
    }

    async fn leave(&self, server: &str, limit: Duration) -> Result<u64, ShardError> {
        self.change(server, false, limit).await
    }
}
