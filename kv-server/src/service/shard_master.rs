//! `kv.v1.ShardMaster`: membership and placement, native API.

use kv_proto::convert::config_to_wire;
use kv_proto::status::status_from_shard_error;
use kv_proto::v1::{self, shard_master_server::ShardMaster as ShardMasterRpc};
use kv_shard::slot_of;
use tonic::{Request, Response, Status};
use tracing::instrument;

use kv_shard::ShardMaster;

/// Serves the native shard master API over the shared [`ShardMaster`].
#[derive(Debug, Clone)]
pub struct ShardMasterService {
    master: ShardMaster,
}

impl ShardMasterService {
    /// Serves `membership`.
    pub fn new(master: ShardMaster) -> Self {
        ShardMasterService { master }
    }

    /// The tonic server for this service.
    pub fn into_server(self) -> v1::shard_master_server::ShardMasterServer<Self> {
        v1::shard_master_server::ShardMasterServer::new(self)
    }
}

#[tonic::async_trait]
impl ShardMasterRpc for ShardMasterService {
    #[instrument(skip_all, fields(server = %request.get_ref().server))]
    async fn join(&self, request: Request<v1::JoinRequest>) -> Result<Response<v1::ClusterConfig>, Status> {
        let config = self.master.join(&request.get_ref().server).await;
        let config = config.map_err(|e| status_from_shard_error(&e))?;
        Ok(Response::new(config_to_wire(&config)))
    }

    #[instrument(skip_all, fields(server = %request.get_ref().server))]
    async fn leave(&self, request: Request<v1::LeaveRequest>) -> Result<Response<v1::ClusterConfig>, Status> {
        let config = self.master.leave(&request.get_ref().server).await;
        let config = config.map_err(|e| status_from_shard_error(&e))?;
        Ok(Response::new(config_to_wire(&config)))
    }

    #[instrument(level = "debug", skip_all, fields(key = %request.get_ref().key))]
    async fn query(&self, request: Request<v1::QueryRequest>) -> Result<Response<v1::QueryResponse>, Status> {
        let config = self.master.current();
        let key = &request.get_ref().key;
        let mut replicas = config.replicas(key).into_iter().map(|(_, address)| address.to_owned());
        let server = replicas.next().ok_or_else(no_member)?;
        Ok(Response::new(v1::QueryResponse {
            server,
            epoch: config.epoch(),
            slot: u32::from(slot_of(key)),
            secondaries: replicas.collect(),
        }))
    }

    #[instrument(level = "debug", skip_all)]
    async fn get_config(
        &self,
        _request: Request<v1::GetConfigRequest>,
    ) -> Result<Response<v1::ClusterConfig>, Status> {
        Ok(Response::new(config_to_wire(&self.master.current())))
    }
}

/// The status of a query when no storage server is a member: nothing serves the key.
pub(super) fn no_member() -> Status {
    Status::unavailable("no storage server is a member of the cluster")
}
