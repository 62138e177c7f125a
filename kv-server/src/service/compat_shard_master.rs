//! `ShardMaster`: the course assignment's shard master API, served for its clients.
//!
//! Same state and rules as the native service; `uint32` keys are the native keys of their
//! decimal digits, and `Query` answers the owner's `host:port` as clients dial it.

use kv_proto::compat::{self, shard_master_server::ShardMaster as ShardMasterRpc};
use kv_proto::convert::compat_key;
use kv_proto::status::status_from_shard_error;
use tonic::{Request, Response, Status};
use tracing::instrument;

use super::shard_master::no_member;
use kv_shard::ShardMaster;

/// Serves the course assignment's `ShardMaster` over the shared [`ShardMaster`].
#[derive(Debug, Clone)]
pub struct CompatShardMasterService {
    master: ShardMaster,
}

impl CompatShardMasterService {
    /// Serves `membership`.
    pub fn new(master: ShardMaster) -> Self {
        CompatShardMasterService { master }
    }

    /// The tonic server for this service.
    pub fn into_server(self) -> compat::shard_master_server::ShardMasterServer<Self> {
        compat::shard_master_server::ShardMasterServer::new(self)
    }
}

#[tonic::async_trait]
impl ShardMasterRpc for CompatShardMasterService {
    #[instrument(skip_all, fields(server = %request.get_ref().server))]
    async fn join(&self, request: Request<compat::JoinRequest>) -> Result<Response<()>, Status> {
        self.master.join(&request.get_ref().server).await.map_err(|e| status_from_shard_error(&e))?;
        Ok(Response::new(()))
    }

    #[instrument(skip_all, fields(server = %request.get_ref().server))]
    async fn leave(&self, request: Request<compat::LeaveRequest>) -> Result<Response<()>, Status> {
        self.master.leave(&request.get_ref().server).await.map_err(|e| status_from_shard_error(&e))?;
        Ok(Response::new(()))
    }

    #[instrument(level = "debug", skip_all, fields(key = request.get_ref().key))]
    async fn query(
        &self,
        request: Request<compat::QueryRequest>,
    ) -> Result<Response<compat::QueryResponse>, Status> {
        let config = self.master.current();
        let (_, server) = config.owner(&compat_key(request.get_ref().key)).ok_or_else(no_member)?;
        Ok(Response::new(compat::QueryResponse { server: server.to_owned() }))
    }

    #[instrument(level = "debug", skip_all, fields(key = request.get_ref().key))]
    async fn query_replica(
        &self,
        request: Request<compat::QueryReplicaRequest>,
    ) -> Result<Response<compat::QueryResponse>, Status> {
        let request = request.into_inner();
        let operation = compat::Operation::try_from(request.operation)
            .map_err(|_| Status::invalid_argument(format!("unknown operation {}", request.operation)))?;
        let config = self.master.current();
        let replicas = config.replicas(&compat_key(request.key));
        let chosen = match operation {
            compat::Operation::Get => replicas.get(rand::random_range(0..replicas.len().max(1))),
            compat::Operation::Put
            | compat::Operation::Append
            | compat::Operation::LPop
            | compat::Operation::RPop => replicas.first(),
        };
        let (_, server) = chosen.ok_or_else(no_member)?;
        Ok(Response::new(compat::QueryResponse { server: (*server).to_owned() }))
    }

    #[instrument(skip_all, fields(server = %request.get_ref().server))]
    async fn join_replica(
        &self,
        request: Request<compat::JoinRequest>,
    ) -> Result<Response<compat::JoinReplicaResponse>, Status> {
        let server = &request.get_ref().server;
        let config = self.master.join(server).await.map_err(|e| status_from_shard_error(&e))?;
        let primary =
            config.id_of(server).is_some_and(|id| config.slot_counts().get(&id).is_some_and(|&n| n > 0));
        let role = if primary { compat::Role::Master } else { compat::Role::Replica };
        Ok(Response::new(compat::JoinReplicaResponse { role: role as i32 }))
    }
}
