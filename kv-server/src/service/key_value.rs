//! `kv.v1.KeyValue`: the native API.

use std::sync::Arc;

use kv_core::Mutation;
use kv_proto::convert::request_id;
use kv_proto::v1::{self, key_value_server::KeyValue};
use tonic::{Request, Response, Status};
use tracing::instrument;

use super::to_status;
use kv_replica::Node;

/// Serves the native API over a storage server's [`Node`], applying identified writes exactly
/// once.
#[derive(Debug, Clone)]
pub struct KeyValueService {
    node: Arc<Node>,
}

impl KeyValueService {
    /// Serves `node`.
    pub fn new(node: Arc<Node>) -> Self {
        KeyValueService { node }
    }

    /// The tonic server for this service.
    pub fn into_server(self) -> v1::key_value_server::KeyValueServer<Self> {
        v1::key_value_server::KeyValueServer::new(self)
    }
}

#[tonic::async_trait]
impl KeyValue for KeyValueService {
    #[instrument(level = "debug", skip_all, fields(key = %request.get_ref().key))]
    async fn get(&self, request: Request<v1::GetRequest>) -> Result<Response<v1::GetResponse>, Status> {
        let value = self.node.get(&request.get_ref().key).await.map_err(to_status)?;
        Ok(Response::new(v1::GetResponse { value }))
    }

    #[instrument(level = "debug", skip_all, fields(key = %request.get_ref().key))]
    async fn put(&self, request: Request<v1::PutRequest>) -> Result<Response<v1::PutResponse>, Status> {
        let request = request.into_inner();
        self.node.write(request_id(request.id.as_ref()), request.into()).await.map_err(to_status)?;
        Ok(Response::new(v1::PutResponse {}))
    }

    #[instrument(level = "debug", skip_all, fields(key = %request.get_ref().key))]
    async fn append(
        &self,
        request: Request<v1::AppendRequest>,
    ) -> Result<Response<v1::AppendResponse>, Status> {
        let request = request.into_inner();
        self.node.write(request_id(request.id.as_ref()), request.into()).await.map_err(to_status)?;
        Ok(Response::new(v1::AppendResponse {}))
    }

    #[instrument(level = "debug", skip_all, fields(key = %request.get_ref().key))]
    async fn l_pop(&self, request: Request<v1::PopRequest>) -> Result<Response<v1::PopResponse>, Status> {
        let request = request.into_inner();
        let output = self
            .node
            .write(request_id(request.id.as_ref()), Mutation::lpop(request.key))
            .await
            .map_err(to_status)?;
        Ok(Response::new(v1::PopResponse { value: output.into_popped() }))
    }

    #[instrument(level = "debug", skip_all, fields(key = %request.get_ref().key))]
    async fn r_pop(&self, request: Request<v1::PopRequest>) -> Result<Response<v1::PopResponse>, Status> {
        let request = request.into_inner();
        let output = self
            .node
            .write(request_id(request.id.as_ref()), Mutation::rpop(request.key))
            .await
            .map_err(to_status)?;
        Ok(Response::new(v1::PopResponse { value: output.into_popped() }))
    }

    #[instrument(level = "debug", skip_all, fields(key = %request.get_ref().key))]
    async fn delete(
        &self,
        request: Request<v1::DeleteRequest>,
    ) -> Result<Response<v1::DeleteResponse>, Status> {
        let request = request.into_inner();
        let output =
            self.node.write(request_id(request.id.as_ref()), request.into()).await.map_err(to_status)?;
        Ok(Response::new(v1::DeleteResponse { existed: output.deleted() }))
    }
}
