//! `KVStore`: the course assignment's storage API, served for its clients.
//!
//! Its `uint32` keys are the native string keys of their decimal digits
//! ([`kv_proto::convert::compat_key`]), so both APIs see the same data.

use std::sync::Arc;

use kv_core::Mutation;
use kv_proto::compat::{self, kv_store_server::KvStore};
use kv_proto::convert::compat_key;
use tonic::{Request, Response, Status};
use tracing::instrument;

use super::to_status;
use kv_replica::Node;

/// Serves the course assignment's `KVStore` over a storage server's [`Node`] (so it serves the
/// same slots as the native API, and refuses the others the same way).
#[derive(Debug, Clone)]
pub struct CompatKvService {
    node: Arc<Node>,
}

impl CompatKvService {
    /// Serves `node`.
    pub fn new(node: Arc<Node>) -> Self {
        CompatKvService { node }
    }

    /// The tonic server for this service.
    pub fn into_server(self) -> compat::kv_store_server::KvStoreServer<Self> {
        compat::kv_store_server::KvStoreServer::new(self)
    }

    async fn pop(&self, mutation: Mutation) -> Result<Response<compat::GetResponse>, Status> {
        let output = self.node.write(None, mutation).await.map_err(to_status)?;
        Ok(Response::new(compat::GetResponse { value: output.into_popped() }))
    }
}

#[tonic::async_trait]
impl KvStore for CompatKvService {
    #[instrument(level = "debug", skip_all, fields(key = request.get_ref().key))]
    async fn get(
        &self,
        request: Request<compat::GetRequest>,
    ) -> Result<Response<compat::GetResponse>, Status> {
        let key = compat_key(request.get_ref().key);
        let value = self.node.get(&key).await.map_err(to_status)?;
        Ok(Response::new(compat::GetResponse { value }))
    }

    #[instrument(level = "debug", skip_all, fields(key = request.get_ref().key))]
    async fn l_pop(
        &self,
        request: Request<compat::GetRequest>,
    ) -> Result<Response<compat::GetResponse>, Status> {
        self.pop(Mutation::lpop(compat_key(request.get_ref().key))).await
    }

    #[instrument(level = "debug", skip_all, fields(key = request.get_ref().key))]
    async fn r_pop(
        &self,
        request: Request<compat::GetRequest>,
    ) -> Result<Response<compat::GetResponse>, Status> {
        self.pop(Mutation::rpop(compat_key(request.get_ref().key))).await
    }

    #[instrument(level = "debug", skip_all, fields(key = request.get_ref().key))]
    async fn put(&self, request: Request<compat::PutRequest>) -> Result<Response<()>, Status> {
        let compat::PutRequest { key, value } = request.into_inner();
        self.node.write(None, Mutation::put(compat_key(key), value)).await.map_err(to_status)?;
        Ok(Response::new(()))
    }

    #[instrument(level = "debug", skip_all, fields(key = request.get_ref().key))]
    async fn append(&self, request: Request<compat::AppendRequest>) -> Result<Response<()>, Status> {
        let compat::AppendRequest { key, value } = request.into_inner();
        self.node.write(None, Mutation::append(compat_key(key), value)).await.map_err(to_status)?;
        Ok(Response::new(()))
    }
}
