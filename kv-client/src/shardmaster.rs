//! The client of a shard master: membership changes and the cluster's configuration.

use std::time::Duration;

use kv_proto::convert::{config_from_wire, engine_stats_from_wire};
use kv_proto::v1::{self, shard_master_client::ShardMasterClient};
use kv_shard::Config;
use tonic::Code;
use tonic::transport::Channel;

use crate::channel::dial;
use crate::{Error, Result};

/// A connection to a shard master.
///
/// # Examples
///
/// ```no_run
/// # async fn example() -> Result<(), kv_client::Error> {
/// let master = kv_client::ShardMaster::connect("127.0.0.1:50050").await?;
/// master.join("127.0.0.1:50051").await?;
/// let config = master.config().await?;
/// println!("epoch {}, {} servers", config.epoch(), config.len());
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct ShardMaster {
    inner: ShardMasterClient<Channel>,
}

impl ShardMaster {
    /// Connects to the shard master at `endpoint` (`host:port`, or a `http://` URI).
    pub async fn connect(endpoint: impl Into<String>) -> Result<Self> {
        Self::connect_with(&endpoint.into(), Duration::from_secs(300), Duration::from_secs(5)).await
    }

    /// Connects with the given call and connect timeouts. (A join or leave waits for its data to
    /// move: [`ShardMaster::connect`] allows it five minutes.)
    pub(crate) async fn connect_with(
        endpoint: &str,
        timeout: Duration,
        connect_timeout: Duration,
    ) -> Result<Self> {
        let channel = dial(endpoint, timeout, connect_timeout).await?;
        Ok(ShardMaster { inner: ShardMasterClient::new(channel) })
    }

    /// The current configuration.
    pub async fn config(&self) -> Result<Config> {
        let wire = self.inner.clone().get_config(v1::GetConfigRequest {}).await?.into_inner();
        decode(&wire)
    }

    /// Adds the storage server `server` (`host:port`); returns the new configuration.
    pub async fn join(&self, server: impl Into<String>) -> Result<Config> {
        let answer = self.inner.clone().join(v1::JoinRequest { server: server.into() }).await;
        decode(&answer.map_err(refused)?.into_inner())
    }

    /// Removes the storage server `server`; returns the new configuration.
    pub async fn leave(&self, server: impl Into<String>) -> Result<Config> {
        let answer = self.inner.clone().leave(v1::LeaveRequest { server: server.into() }).await;
        decode(&answer.map_err(refused)?.into_inner())
    }

    /// The owner of `key` and the epoch of the answer.
    pub async fn query(&self, key: impl Into<String>) -> Result<(String, u64)> {
        let answer = self.inner.clone().query(v1::QueryRequest { key: key.into() }).await?.into_inner();
        Ok((answer.server, answer.epoch))
    }
}

/// A membership change the shard master refused (a member already, not a member, a malformed
/// address, a server holding data it cannot bring or keep) is [`Error::Rejected`]: it changed
/// nothing, and trying again will not help.
fn refused(status: tonic::Status) -> Error {
    match status.code() {
        Code::AlreadyExists | Code::NotFound | Code::InvalidArgument | Code::FailedPrecondition => {
            Error::Rejected(kv_core::Error::InvalidArgument(status.message().to_owned()))
        }
        _ => Error::from(status),
    }
}

fn decode(wire: &v1::ClusterConfig) -> Result<Config> {
    config_from_wire(wire).map_err(|err| Error::Rpc(tonic::Status::internal(err.to_string())))
}

/// What one storage server reports about itself (`kv.v1.Node/Status`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerStatus {
    /// The address it is known by in its cluster ("" if standalone).
    pub address: String,
    /// The epoch of the configuration it holds (0 if none).
    pub epoch: u64,
    /// Slots it serves.
    pub serving_slots: u32,
    /// Slots moving to it whose data has not all arrived.
    pub incoming_slots: u32,
    /// Keys it holds.
    pub keys: u64,
    /// Slots it stopped serving and has yet to hand off.
    pub outgoing_slots: u32,
    /// Whether it belongs to no cluster (and serves every key).
    pub standalone: bool,
    /// Slots it is an up-to-date secondary of.
    pub replica_slots: u32,
    /// Slots it is a secondary of, still catching up.
    pub syncing_slots: u32,
    /// Whether it keeps its values on disk, and what its engine has written since it started.
    pub engine: kv_core::EngineStats,
    /// What the catch-ups and hand-offs it sent came to, since it started.
    pub catch_up: kv_shard::messages::CatchUpStats,
}

/// Asks the storage server at `endpoint` what it holds, waiting at most `timeout`.
pub async fn server_status(endpoint: &str, timeout: Duration) -> Result<ServerStatus> {
    let channel = dial(endpoint, timeout, timeout).await?;
    let status = v1::node_client::NodeClient::new(channel).status(v1::StatusRequest {}).await?.into_inner();
    let engine = engine_stats_from_wire(&status);
    let catch_up = kv_proto::convert::server_status_from_wire(&status).catch_up;
    Ok(ServerStatus {
        address: status.address,
        epoch: status.epoch,
        serving_slots: status.serving_slots,
        incoming_slots: status.incoming_slots,
        keys: status.keys,
        outgoing_slots: status.outgoing_slots,
        standalone: status.standalone,
        replica_slots: status.replica_slots,
        syncing_slots: status.syncing_slots,
        engine,
        catch_up,
    })
}
