//! `kv.v1.Node`: a storage server's side of the cluster protocols (see [`kv_replica::Node`]).

use std::sync::Arc;

use kv_proto::convert::{
    hand_off_copy_from_wire, install_from_wire, install_report_to_wire, lease_grant_to_wire,
    lease_request_from_wire, pong_to_wire, replicate_ack_to_wire, replicate_from_wire, server_status_to_wire,
    transfer_from_wire, transfer_response_to_wire,
};
use kv_proto::status::status_from_replica_error;
use kv_proto::v1::{self, node_server::Node as NodeRpc};
use tonic::{Request, Response, Status};
use tracing::instrument;

use super::to_status;
use crate::transport::authorised;
use kv_replica::Node;

/// Serves the cluster RPCs of one storage server. With a cluster token, only callers that
/// present it are served, but `Status` and `Ping`, which are read-only and open.
#[derive(Debug, Clone)]
pub struct NodeService {
    node: Arc<Node>,
    token: Option<Arc<str>>,
}

impl NodeService {
    /// Serves `node`, to callers presenting `token` if given.
    pub fn new(node: Arc<Node>, token: Option<String>) -> Self {
        NodeService { node, token: token.map(Arc::from) }
    }

    /// The tonic server for this service.
    pub fn into_server(self) -> v1::node_server::NodeServer<Self> {
        v1::node_server::NodeServer::new(self)
    }
}

fn replica_status(err: kv_replica::Error) -> Status {
    status_from_replica_error(&err)
}

#[tonic::async_trait]
impl NodeRpc for NodeService {
    #[instrument(skip_all, fields(epoch = request.get_ref().config.as_ref().map(|c| c.epoch)))]
    async fn install(
        &self,
        request: Request<v1::InstallRequest>,
    ) -> Result<Response<v1::InstallResponse>, Status> {
        authorised(&request, self.token.as_deref())?;
        let install = install_from_wire(request.into_inner())?;
        // Run to the end even if the caller goes away: an install stopped half-way would leave
        // the new epoch in place without the hand-offs it owes (a retry finds it installed).
        let node = Arc::clone(&self.node);
        let install = tokio::spawn(async move { node.install(install).await });
        let report = install
            .await
            .map_err(|err| Status::internal(format!("the install failed: {err}")))?
            .map_err(replica_status)?;
        Ok(Response::new(install_report_to_wire(&report)))
    }

    #[instrument(skip_all, fields(from = %request.get_ref().from, epoch = request.get_ref().epoch))]
    async fn transfer(
        &self,
        request: Request<v1::TransferRequest>,
    ) -> Result<Response<v1::TransferResponse>, Status> {
        authorised(&request, self.token.as_deref())?;
        let batch = transfer_from_wire(request.into_inner())?;
        let verbatim = self.node.transfer(batch).await.map_err(replica_status)?;
        Ok(Response::new(transfer_response_to_wire(&verbatim)))
    }

    #[instrument(level = "debug", skip_all, fields(from = %request.get_ref().from, epoch = request.get_ref().epoch))]
    async fn replicate(
        &self,
        request: Request<v1::ReplicateRequest>,
    ) -> Result<Response<v1::ReplicateResponse>, Status> {
        authorised(&request, self.token.as_deref())?;
        let batch = replicate_from_wire(request.into_inner())?;
        let ack = self.node.replicate(batch).await.map_err(replica_status)?;
        Ok(Response::new(replicate_ack_to_wire(&ack)))
    }

    #[instrument(level = "debug", skip_all, fields(from = %request.get_ref().from))]
    async fn lease(&self, request: Request<v1::LeaseRequest>) -> Result<Response<v1::LeaseResponse>, Status> {
        authorised(&request, self.token.as_deref())?;
        let grant =
            self.node.grant_lease(&lease_request_from_wire(request.into_inner())).map_err(replica_status)?;
        Ok(Response::new(lease_grant_to_wire(grant)))
    }

    #[instrument(skip_all, fields(sender = %request.get_ref().sender, to = %request.get_ref().to))]
    async fn hand_off_copy(
        &self,
        request: Request<v1::HandOffCopyRequest>,
    ) -> Result<Response<v1::InstallResponse>, Status> {
        authorised(&request, self.token.as_deref())?;
        let request = hand_off_copy_from_wire(request.into_inner())?;
        let node = Arc::clone(&self.node);
        let hand_off = tokio::spawn(async move { node.hand_off_copy(request).await });
        let report = hand_off
            .await
            .map_err(|err| Status::internal(format!("the hand-off failed: {err}")))?
            .map_err(replica_status)?;
        Ok(Response::new(install_report_to_wire(&report)))
    }

    async fn ping(&self, _request: Request<v1::PingRequest>) -> Result<Response<v1::PingResponse>, Status> {
        Ok(Response::new(pong_to_wire(self.node.ping())))
    }

    #[instrument(level = "debug", skip_all)]
    async fn status(
        &self,
        _request: Request<v1::StatusRequest>,
    ) -> Result<Response<v1::StatusResponse>, Status> {
        Ok(Response::new(server_status_to_wire(&self.node.status().await.map_err(to_status)?)))
    }
}
