//! `kv.v1.KeyValue`: the native API.

use std::sync::Arc;

use std::time::Instant;

use kv_core::session::Begin;
use kv_core::{Mutation, Output, RequestId, Sessions, Storage};
use kv_proto::convert::request_id;
use kv_proto::v1::{self, key_value_server::KeyValue};
use tonic::{Request, Response, Status};
use tracing::instrument;

use super::to_status;

/// Serves the native API over a storage engine, applying identified writes exactly once.
#[derive(Clone)]
pub struct KeyValueService {
    storage: Arc<dyn Storage>,
    sessions: Arc<Sessions>,
}

impl KeyValueService {
    /// Serves `storage`, remembering the answers of identified writes in `sessions`.
    pub fn new(storage: Arc<dyn Storage>, sessions: Arc<Sessions>) -> Self {
        KeyValueService { storage, sessions }
    }

    /// Applies `mutation`; if it carries an id, at most once (see [`kv_core::session`]).
    async fn write(&self, id: Option<RequestId>, mutation: Mutation) -> Result<Output, Status> {
        let Some(id) = id else {
            return self.storage.apply(mutation).await.map_err(to_status);
        };
        match self.sessions.begin(id, mutation.fingerprint(), 0, Instant::now()).map_err(to_status)? {
            Begin::Answered(output) => Ok(output),
            Begin::Apply(ticket) => {
                // No await point between the engine applying the write and the ticket recording
                // it: the in-memory engine completes `apply` without yielding.
                let output = self.storage.apply(mutation).await.map_err(to_status)?;
                ticket.finish(&output);
                Ok(output)
            }
        }
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
        let request = request.into_inner();
        self.write(request_id(request.id.as_ref()), request.into()).await?;
        Ok(Response::new(v1::PutResponse {}))
    }

    #[instrument(level = "debug", skip_all, fields(key = %request.get_ref().key))]
    async fn append(
        &self,
        request: Request<v1::AppendRequest>,
    ) -> Result<Response<v1::AppendResponse>, Status> {
        let request = request.into_inner();
        self.write(request_id(request.id.as_ref()), request.into()).await?;
        Ok(Response::new(v1::AppendResponse {}))
    }

    #[instrument(level = "debug", skip_all, fields(key = %request.get_ref().key))]
    async fn l_pop(&self, request: Request<v1::PopRequest>) -> Result<Response<v1::PopResponse>, Status> {
        let request = request.into_inner();
        let output = self.write(request_id(request.id.as_ref()), Mutation::lpop(request.key)).await?;
        Ok(Response::new(v1::PopResponse { value: output.into_popped() }))
    }

    #[instrument(level = "debug", skip_all, fields(key = %request.get_ref().key))]
    async fn r_pop(&self, request: Request<v1::PopRequest>) -> Result<Response<v1::PopResponse>, Status> {
        let request = request.into_inner();
        let output = self.write(request_id(request.id.as_ref()), Mutation::rpop(request.key)).await?;
        Ok(Response::new(v1::PopResponse { value: output.into_popped() }))
    }

    #[instrument(level = "debug", skip_all, fields(key = %request.get_ref().key))]
    async fn delete(
        &self,
        request: Request<v1::DeleteRequest>,
    ) -> Result<Response<v1::DeleteResponse>, Status> {
        let request = request.into_inner();
        let output = self.write(request_id(request.id.as_ref()), request.into()).await?;
        Ok(Response::new(v1::DeleteResponse { existed: output.deleted() }))
    }
}
