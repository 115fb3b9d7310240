//! What grpcurl and load balancers use: `grpc.health.v1` and gRPC server
//! reflection answer without a token, over the controller's TLS port; every
//! other call still needs one.

use fleet_proto::host_service_client::HostServiceClient;
use fleet_proto::ListHostsRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1::ServerReflectionRequest;

use crate::harness::Fleet;
use crate::limits::operator_channel;

/// The controller's `grpc.health.v1` answer for the whole server.
pub fn grpc_health(fleet: &Fleet) -> ServingStatus {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (channel, _) = operator_channel(fleet, &rt);
    rt.block_on(async {
        let status = HealthClient::new(channel)
            .check(HealthCheckRequest { service: String::new() })
            .await
            .expect("health check")
            .into_inner()
            .status;
        ServingStatus::try_from(status).expect("a known status")
    })
}

#[test]
fn health_and_reflection_answer_without_a_token_and_nothing_else_does() {
    let fleet = Fleet::controller_only(&[]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // The channel carries no authorization header.
    let (channel, _) = operator_channel(&fleet, &rt);
    rt.block_on(async {
        let status = HealthClient::new(channel.clone())
            .check(HealthCheckRequest { service: String::new() })
            .await
            .expect("health check")
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32);

        let ask = |m: MessageRequest| {
            let channel = channel.clone();
            async move {
                let req = ServerReflectionRequest {
                    host: String::new(),
                    message_request: Some(m),
                };
                let mut answers = ServerReflectionClient::new(channel)
                    .server_reflection_info(tokio_stream::iter(vec![req]))
                    .await
                    .expect("reflection")
                    .into_inner();
                answers
                    .message()
                    .await
                    .expect("an answer")
                    .expect("one message")
                    .message_response
            }
        };
        let services = match ask(MessageRequest::ListServices(String::new())).await {
            Some(MessageResponse::ListServicesResponse(l)) => l.service.into_iter().map(|s| s.name).collect::<Vec<_>>(),
            other => panic!("list services answered {other:?}"),
        };
        for s in [
            "fleet.v1.RolloutService",
            "fleet.v1.OperatorService",
            "grpc.health.v1.Health",
        ] {
            assert!(services.iter().any(|n| n == s), "{s} not listed: {services:?}");
        }
        match ask(MessageRequest::FileContainingSymbol("fleet.v1.RolloutService".into())).await {
            Some(MessageResponse::FileDescriptorResponse(f)) => {
                assert!(!f.file_descriptor_proto.is_empty(), "no descriptor");
                let bytes = String::from_utf8_lossy(&f.file_descriptor_proto[0]).into_owned();
                assert!(bytes.contains("StartRollout"), "the schema names the methods");
            }
            other => panic!("file containing symbol answered {other:?}"),
        }

        // Anything else without a token: refused.
        let refused = HostServiceClient::new(channel)
            .list_hosts(ListHostsRequest::default())
            .await
            .expect_err("no token");
        assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    });
}
