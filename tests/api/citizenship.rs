//! Standard gRPC services: health and reflection, as grpcurl and Kubernetes
//! probes use them.

use tokio_stream::StreamExt;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

use crate::helpers::*;

#[tokio::test]
async fn health_and_reflection_v1() {
    let server = TestServer::spawn(Backend::Sqlite).await;
    let mut health = HealthClient::new(server.channel().await);
    for service in ["", "authgate.v1.AccessService", "authgate.v1.AdminService"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "{service:?}");
    }

    let mut reflection = ServerReflectionClient::new(server.channel().await);
    let requests = tokio_stream::iter([
        MessageRequest::ListServices(String::new()),
        MessageRequest::FileContainingSymbol("grpc.health.v1.Health".into()),
        MessageRequest::FileContainingSymbol("authgate.v1.AdminService".into()),
    ])
    .map(|m| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(m),
    });
    let mut responses = reflection
        .server_reflection_info(requests)
        .await
        .unwrap()
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) =
        responses.next().await.unwrap().unwrap().message_response
    else {
        panic!("expected a service list");
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    for expected in [
        "authgate.v1.AccessService",
        "authgate.v1.AdminService",
        "grpc.health.v1.Health",
    ] {
        assert!(names.contains(&expected), "{names:?} lacks {expected}");
    }
    for _ in 0..2 {
        let response = responses.next().await.unwrap().unwrap().message_response;
        assert!(
            matches!(response, Some(MessageResponse::FileDescriptorResponse(ref f)) if !f.file_descriptor_proto.is_empty()),
            "{response:?}"
        );
    }
    server.stop().await;
}
