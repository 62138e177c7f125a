//! The standard services the server carries for tools: gRPC health checking and server
//! reflection (v1 and v1alpha), against the real binary.

#![allow(clippy::unwrap_used)]

mod common;

use common::{ServerProcess, within};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

const SERVICES: [&str; 3] = ["kv.v1.KeyValue", "KVStore", "grpc.health.v1.Health"];

#[tokio::test]
async fn health_reports_serving_for_the_server_and_each_service() {
    let server = ServerProcess::start();
    within("health", async {
        let mut health = HealthClient::new(server.unary_channel().await);
        for service in ["", "kv.v1.KeyValue", "KVStore"] {
            let response = health
                .check(HealthCheckRequest { service: service.into() })
                .await
                .unwrap_or_else(|s| panic!("health check of {service:?} failed: {s:?}"));
            assert_eq!(response.into_inner().status(), ServingStatus::Serving, "service {service:?}");
        }
        let unknown = health.check(HealthCheckRequest { service: "no.such.Service".into() }).await;
        assert_eq!(unknown.expect_err("an unknown service was reported").code(), Code::NotFound);
    })
    .await;
}

mod v1 {
    use prost::Message;
    use prost_types::FileDescriptorProto;
    use tonic::transport::Channel;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::{ServerReflectionRequest, ServerReflectionResponse};

    async fn ask(channel: Channel, request: MessageRequest) -> ServerReflectionResponse {
        let request = ServerReflectionRequest { host: String::new(), message_request: Some(request) };
        let mut responses = ServerReflectionClient::new(channel)
            .server_reflection_info(tokio_stream::iter([request]))
            .await
            .expect("reflection call failed")
            .into_inner();
        responses.message().await.expect("reflection stream failed").expect("no reflection response")
    }

    pub(crate) async fn list_services(channel: Channel) -> Vec<String> {
        match ask(channel, MessageRequest::ListServices(String::new())).await.message_response {
            Some(MessageResponse::ListServicesResponse(list)) => {
                list.service.into_iter().map(|s| s.name).collect()
            }
            other => panic!("unexpected reflection response: {other:?}"),
        }
    }

    /// The descriptors a file request returns, decoded.
    async fn files(channel: Channel, request: MessageRequest) -> Vec<FileDescriptorProto> {
        match ask(channel, request.clone()).await.message_response {
            Some(MessageResponse::FileDescriptorResponse(files)) => files
                .file_descriptor_proto
                .iter()
                .map(|bytes| {
                    FileDescriptorProto::decode(bytes.as_slice()).expect("not a FileDescriptorProto")
                })
                .collect(),
            other => panic!("unexpected reflection response to {request:?}: {other:?}"),
        }
    }

    pub(crate) async fn file_containing_symbol(channel: Channel, symbol: &str) -> Vec<FileDescriptorProto> {
        files(channel, MessageRequest::FileContainingSymbol(symbol.into())).await
    }

    pub(crate) async fn file_by_filename(channel: Channel, name: &str) -> Vec<FileDescriptorProto> {
        files(channel, MessageRequest::FileByFilename(name.into())).await
    }
}

mod v1alpha {
    use tonic::transport::Channel;
    use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;

    pub(crate) async fn list_services(channel: Channel) -> Vec<String> {
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut responses = ServerReflectionClient::new(channel)
            .server_reflection_info(tokio_stream::iter([request]))
            .await
            .expect("reflection call failed")
            .into_inner();
        let response = responses.message().await.expect("reflection stream failed").expect("no response");
        match response.message_response {
            Some(MessageResponse::ListServicesResponse(list)) => {
                list.service.into_iter().map(|s| s.name).collect()
            }
            other => panic!("unexpected reflection response: {other:?}"),
        }
    }
}

#[tokio::test]
async fn reflection_v1_lists_the_services() {
    let server = ServerProcess::start();
    let services =
        within("reflection v1", async { v1::list_services(server.unary_channel().await).await }).await;
    for service in SERVICES {
        assert!(services.iter().any(|s| s == service), "{service} missing from {services:?}");
    }
}

#[tokio::test]
async fn reflection_v1alpha_lists_the_services() {
    let server = ServerProcess::start();
    let services =
        within("reflection v1alpha", async { v1alpha::list_services(server.unary_channel().await).await })
            .await;
    for service in SERVICES {
        assert!(services.iter().any(|s| s == service), "{service} missing from {services:?}");
    }
}

/// What `grpcurl describe KVStore` needs: the file that defines the service, with its methods,
/// and, by file name, every file it imports.
#[tokio::test]
async fn reflection_describes_the_services_and_their_imports() {
    let server = ServerProcess::start();
    within("reflection describe", async {
        let files = v1::file_containing_symbol(server.unary_channel().await, "KVStore").await;
        let kvstore = files.iter().find(|f| f.name() == "kvstore.proto").expect("kvstore.proto missing");
        assert_eq!(kvstore.package(), "", "the compatibility service must have no package");
        let service = kvstore.service.iter().find(|s| s.name() == "KVStore").expect("no KVStore service");
        let methods: Vec<&str> = service.method.iter().map(|m| m.name()).collect();
        assert_eq!(methods, ["Get", "LPop", "RPop", "Put", "Append"]);
        assert_eq!(kvstore.dependency, ["google/protobuf/empty.proto"]);
        for dependency in &kvstore.dependency {
            let files = v1::file_by_filename(server.unary_channel().await, dependency).await;
            assert!(files.iter().any(|f| f.name() == dependency), "{dependency} not served: {files:?}");
        }

        let files = v1::file_containing_symbol(server.unary_channel().await, "kv.v1.KeyValue").await;
        let kv = files.iter().find(|f| f.name() == "kv/v1/kv.proto").expect("kv/v1/kv.proto missing");
        assert_eq!(kv.package(), "kv.v1");
        let service = kv.service.iter().find(|s| s.name() == "KeyValue").expect("no KeyValue service");
        let methods: Vec<&str> = service.method.iter().map(|m| m.name()).collect();
        assert_eq!(methods, ["Get", "Put", "Append", "LPop", "RPop", "Delete"]);
    })
    .await;
}
