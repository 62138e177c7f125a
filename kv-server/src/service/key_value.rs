//! `kv.v1.KeyValue`: the native API.

use std::sync::Arc;

use kv_core::{Mutation, Storage};
use kv_proto::v1::{self, key_value_server::KeyValue};
use tonic::{Request, Response, Status};
use tracing::instrument;

use super::to_status;

/// Serves the native API over a storage engine.
#[derive(Clone)]
pub struct KeyValueService {
    storage: Arc<dyn Storage>,
}

impl KeyValueService {
    /// Serves `storage`.
    pub fn new(storage: Arc<dyn Storage>) -> Self {
        KeyValueService { storage }
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
        let value = self.storage.get(&request.get_ref().key).await.map_err(to_status)?;
        Ok(Response::new(v1::GetResponse { value }))
    }

    #[instrument(level = "debug", skip_all, fields(key = %request.get_ref().key))]
    async fn put(&self, request: Request<v1::PutRequest>) -> Result<Response<v1::PutResponse>, Status> {
        self.storage.apply(request.into_inner().into()).await.map_err(to_status)?;
        Ok(Response::new(v1::PutResponse {}))
    }

    #[instrument(level = "debug", skip_all, fields(key = %request.get_ref().key))]
    async fn append(
        &self,
        request: Request<v1::AppendRequest>,
    ) -> Result<Response<v1::AppendResponse>, Status> {
        self.storage.apply(request.into_inner().into()).await.map_err(to_status)?;
        Ok(Response::new(v1::AppendResponse {}))
    }

    #[instrument(level = "debug", skip_all, fields(key = %request.get_ref().key))]
    async fn l_pop(&self, request: Request<v1::PopRequest>) -> Result<Response<v1::PopResponse>, Status> {
        let output = self.storage.apply(Mutation::lpop(request.into_inner().key)).await;
        Ok(Response::new(v1::PopResponse { value: output.map_err(to_status)?.into_popped() }))
    }

    #[instrument(level = "debug", skip_all, fields(key = %request.get_ref().key))]
    async fn r_pop(&self, request: Request<v1::PopRequest>) -> Result<Response<v1::PopResponse>, Status> {
        let output = self.storage.apply(Mutation::rpop(request.into_inner().key)).await;
        Ok(Response::new(v1::PopResponse { value: output.map_err(to_status)?.into_popped() }))
    }

    #[instrument(level = "debug", skip_all, fields(key = %request.get_ref().key))]
    async fn delete(
        &self,
        request: Request<v1::DeleteRequest>,
    ) -> Result<Response<v1::DeleteResponse>, Status> {
        let output = self.storage.apply(request.into_inner().into()).await.map_err(to_status)?;
        Ok(Response::new(v1::DeleteResponse { existed: output.deleted() }))
    }
}
