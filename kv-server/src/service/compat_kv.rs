//! `KVStore`: the course assignment's storage API, served for its clients.
//!
//! Its `uint32` keys are the native string keys of their decimal digits
//! ([`kv_proto::convert::compat_key`]), so both APIs see the same data.

use std::sync::Arc;

use kv_core::{Mutation, Storage};
use kv_proto::compat::{self, kv_store_server::KvStore};
use kv_proto::convert::compat_key;
use tonic::{Request, Response, Status};
use tracing::instrument;

use super::to_status;

/// Serves the course assignment's `KVStore` over a storage engine.
#[derive(Clone)]
pub struct CompatKvService {
    storage: Arc<dyn Storage>,
}

impl CompatKvService {
    /// Serves `storage`.
    pub fn new(storage: Arc<dyn Storage>) -> Self {
        CompatKvService { storage }
    }

    /// The tonic server for this service.
    pub fn into_server(self) -> compat::kv_store_server::KvStoreServer<Self> {
        compat::kv_store_server::KvStoreServer::new(self)
    }

    async fn pop(&self, mutation: Mutation) -> Result<Response<compat::GetResponse>, Status> {
        let output = self.storage.apply(mutation).await.map_err(to_status)?;
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
        let value = self.storage.get(&key).await.map_err(to_status)?;
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
        self.storage.apply(Mutation::put(compat_key(key), value)).await.map_err(to_status)?;
        Ok(Response::new(()))
    }

    #[instrument(level = "debug", skip_all, fields(key = request.get_ref().key))]
    async fn append(&self, request: Request<compat::AppendRequest>) -> Result<Response<()>, Status> {
        let compat::AppendRequest { key, value } = request.into_inner();
        self.storage.apply(Mutation::append(compat_key(key), value)).await.map_err(to_status)?;
        Ok(Response::new(()))
    }
}
