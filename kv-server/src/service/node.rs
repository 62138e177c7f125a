//! `kv.v1.Node`: the storage server's side of resharding (see [`crate::node`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use kv_proto::convert::{config_from_wire, slots_from_wire};
use kv_proto::v1::{self, node_server::Node as NodeRpc};
use tonic::{Request, Response, Status};
use tracing::instrument;

use super::to_status;
use crate::node::Node;
use crate::peers::authorised;

/// Serves the resharding RPCs of one storage server. `Install` and `Transfer` change what the
/// server holds, so with a cluster token only callers that present it are served; `Status` is
/// read-only and open.
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

#[tonic::async_trait]
impl NodeRpc for NodeService {
    #[instrument(skip_all, fields(epoch = request.get_ref().config.as_ref().map(|c| c.epoch)))]
    async fn install(
        &self,
        request: Request<v1::InstallRequest>,
    ) -> Result<Response<v1::InstallResponse>, Status> {
        authorised(&request, self.token.as_deref())?;
        let request = request.into_inner();
        let config = |wire: Option<v1::ClusterConfig>, what: &str| {
            let wire = wire.ok_or_else(|| Status::invalid_argument(format!("no {what} configuration")))?;
            config_from_wire(&wire).map_err(|err| Status::invalid_argument(format!("{what}: {err}")))
        };
        let next = config(request.config, "new")?;
        let previous = config(request.previous, "previous")?;
        let abandoned = slots_from_wire(request.abandoned)
            .map_err(|wire| Status::invalid_argument(format!("no slot {wire}")))?;
        if request.incarnation != 0 && request.incarnation != self.node.incarnation() {
            return Err(Status::failed_precondition(
                "this server restarted since it joined, and holds nothing of what it held",
            ));
        }
        let promoted = slots_from_wire(request.promoted)
            .map_err(|wire| Status::invalid_argument(format!("no slot {wire}")))?;
        let mut carried = BTreeMap::new();
        for source in request.carried {
            let slots = slots_from_wire(source.slots)
                .map_err(|wire| Status::invalid_argument(format!("no slot {wire}")))?;
            carried.extend(slots.into_iter().map(|slot| (slot, source.server.clone())));
        }
        // Run to the end even if the caller goes away: an install stopped half-way would leave
        // the new epoch in place without the hand-offs it owes (a retry finds it installed).
        let node = Arc::clone(&self.node);
        let install =
            tokio::spawn(async move { node.install(previous, next, abandoned, promoted, carried).await });
        let report =
            install.await.map_err(|err| Status::internal(format!("the install failed: {err}")))??;
        Ok(Response::new(v1::InstallResponse {
            slots_sent: report.slots_sent,
            keys_sent: report.keys_sent,
            never_arrived: report.never_arrived.into_iter().map(u32::from).collect(),
        }))
    }

    #[instrument(skip_all, fields(from = %request.get_ref().from, epoch = request.get_ref().epoch))]
    async fn transfer(
        &self,
        request: Request<v1::TransferRequest>,
    ) -> Result<Response<v1::TransferResponse>, Status> {
        authorised(&request, self.token.as_deref())?;
        let verbatim = self.node.transfer(request.into_inner()).await?;
        Ok(Response::new(v1::TransferResponse { verbatim: verbatim.into_iter().map(u32::from).collect() }))
    }

    #[instrument(level = "debug", skip_all, fields(from = %request.get_ref().from, epoch = request.get_ref().epoch))]
    async fn replicate(
        &self,
        request: Request<v1::ReplicateRequest>,
    ) -> Result<Response<v1::ReplicateResponse>, Status> {
        authorised(&request, self.token.as_deref())?;
        let refused = self.node.replicate(request.into_inner()).await?;
        Ok(Response::new(v1::ReplicateResponse { refused: refused.into_iter().map(u32::from).collect() }))
    }

    #[instrument(level = "debug", skip_all, fields(from = %request.get_ref().from))]
    async fn lease(&self, request: Request<v1::LeaseRequest>) -> Result<Response<v1::LeaseResponse>, Status> {
        authorised(&request, self.token.as_deref())?;
        Ok(Response::new(self.node.grant_lease(request.get_ref())?))
    }

    #[instrument(skip_all, fields(sender = %request.get_ref().sender, to = %request.get_ref().to))]
    async fn hand_off_copy(
        &self,
        request: Request<v1::HandOffCopyRequest>,
    ) -> Result<Response<v1::InstallResponse>, Status> {
        authorised(&request, self.token.as_deref())?;
        let request = request.into_inner();
        let slots = request.slots.len() as u64;
        let node = Arc::clone(&self.node);
        let hand_off = tokio::spawn(async move { node.hand_off_copy(request).await });
        let keys =
            hand_off.await.map_err(|err| Status::internal(format!("the hand-off failed: {err}")))??;
        Ok(Response::new(v1::InstallResponse {
            slots_sent: slots,
            keys_sent: keys,
            never_arrived: Vec::new(),
        }))
    }

    async fn ping(&self, _request: Request<v1::PingRequest>) -> Result<Response<v1::PingResponse>, Status> {
        Ok(Response::new(v1::PingResponse { epoch: self.node.epoch(), incarnation: self.node.incarnation() }))
    }

    #[instrument(level = "debug", skip_all)]
    async fn status(
        &self,
        _request: Request<v1::StatusRequest>,
    ) -> Result<Response<v1::StatusResponse>, Status> {
        Ok(Response::new(self.node.status().await.map_err(to_status)?))
    }
}
