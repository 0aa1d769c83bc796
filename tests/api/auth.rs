//! Who may call: API keys with roles, checked before any service runs, and
//! both the caller and the acting admin in the audit trail.

use rstest::rstest;
use tonic::Code;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;

use authgate::grpc::proto::{self, Decision};

use crate::helpers::*;

fn check_request() -> proto::CheckAccessRequest {
    proto::CheckAccessRequest {
        context: "login".into(),
        subject: subject("alice", "192.0.2.10"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_but_health_needs_a_key_with_the_right_role() {
    let keys = TestKeys::new();
    let server = TestServer::spawn_with(Backend::Sqlite, &keys.toml).await;
    let channel = server.channel().await;

    let missing = server
        .access()
        .await
        .check_access(check_request())
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::Unauthenticated, "{missing:?}");
    assert!(missing.message().contains("Bearer"), "{missing:?}");

    let wrong_key = format!("{}x", keys.check);
    let wrong = keyed_access(channel.clone(), &wrong_key)
        .check_access(check_request())
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), Code::Unauthenticated);
    assert!(!wrong.message().contains(&wrong_key), "keys never echo");

    let mut basic = basic_auth(channel.clone());
    let malformed = basic.check_access(check_request()).await.unwrap_err();
    assert_eq!(malformed.code(), Code::Unauthenticated);

    let verdict = keyed_access(channel.clone(), &keys.check)
        .check_access(check_request())
        .await
        .expect("the check key may check")
        .into_inner()
        .verdict
        .unwrap();
    assert_eq!(decision(&verdict), Decision::Allow);

    let admin_on_access = keyed_access(channel.clone(), &keys.admin)
        .check_access(check_request())
        .await
        .unwrap_err();
    assert_eq!(admin_on_access.code(), Code::PermissionDenied);
    assert!(admin_on_access.message().contains("check role"));

    let stats = || proto::GetStatsRequest {
        actor_user_id: "admin".into(),
    };
    let check_on_admin = keyed_admin(channel.clone(), &keys.check)
        .get_stats(stats())
        .await
        .unwrap_err();
    assert_eq!(check_on_admin.code(), Code::PermissionDenied);
    assert!(check_on_admin.message().contains("admin role"));

    let mut admin = keyed_admin(channel.clone(), &keys.admin);
    admin.get_stats(stats()).await.expect("the admin key may");
    let not_an_admin = admin
        .get_stats(proto::GetStatsRequest {
            actor_user_id: "mallory".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(not_an_admin.code(), Code::PermissionDenied);
    assert!(not_an_admin.message().contains("actor_user_id"));

    // Kubernetes probes carry no credentials.
    let health = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health needs no key")
        .into_inner();
    assert_eq!(health.status, ServingStatus::Serving as i32);

    // Reflection describes the API, so it needs a key, of any role.
    let reflect = || {
        tokio_stream::iter([ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        }])
    };
    let anonymous = ServerReflectionClient::new(channel.clone())
        .server_reflection_info(reflect())
        .await
        .unwrap_err();
    assert_eq!(anonymous.code(), Code::Unauthenticated);
    ServerReflectionClient::with_interceptor(channel.clone(), Bearer::new(&keys.check))
        .server_reflection_info(reflect())
        .await
        .expect("any key may reflect");

    // Operators see refusals by reason (the recorder is shared by every
    // in-process server, so these are lower bounds).
    let metrics = authgate::telemetry::metrics::handle().render();
    for reason in ["missing", "malformed", "unknown_key", "role"] {
        let series = format!("authgate_auth_rejected_total{{reason=\"{reason}\"}}");
        assert!(metrics.contains(&series), "{series} missing:\n{metrics}");
    }
    server.stop().await;
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_trail_names_the_caller_and_the_acting_admin(
    #[values(Backend::Sqlite, Backend::Postgres)] backend: Backend,
) {
    let keys = TestKeys::new();
    let server = TestServer::spawn_with(backend, &keys.toml).await;
    let channel = server.channel().await;
    let mut bot = keyed_access(channel.clone(), &keys.check);
    for _ in 0..5 {
        bot.record_failure(proto::RecordFailureRequest {
            context: "login".into(),
            subject: subject("bob", "192.0.2.11"),
            activity: String::new(),
        })
        .await
        .unwrap();
    }
    let mut admin = keyed_admin(channel, &keys.admin);
    let lifted = admin
        .admin_unlock(proto::AdminUnlockRequest {
            actor_user_id: "admin".into(),
            scope: Some(proto::admin_unlock_request::Scope::Subject(
                subject("bob", "").unwrap(),
            )),
        })
        .await
        .unwrap()
        .into_inner()
        .unlocked;
    assert_eq!(lifted, 1);
    let events = admin
        .list_audit_events(proto::ListAuditEventsRequest {
            actor_user_id: "admin".into(),
            kind: "unlocked".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .events;
    assert_eq!(events.len(), 1);
    assert_eq!(
        (events[0].actor.as_str(), events[0].caller.as_str()),
        ("admin", "ops")
    );
    // Each failure's record names the service that reported it.
    let failures = admin
        .list_audit_events(proto::ListAuditEventsRequest {
            actor_user_id: "admin".into(),
            kind: "failure_recorded".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .events;
    assert_eq!(failures.len(), 5);
    assert!(
        failures.iter().all(|e| e.caller == "chat-bot"),
        "{failures:?}"
    );
    server.stop().await;
}

/// A client that sends credentials in a scheme authgate does not take.
fn basic_auth(
    channel: tonic::transport::Channel,
) -> proto::access_service_client::AccessServiceClient<
    tonic::service::interceptor::InterceptedService<
        tonic::transport::Channel,
        impl tonic::service::Interceptor,
    >,
> {
    proto::access_service_client::AccessServiceClient::with_interceptor(
        channel,
        |mut r: tonic::Request<()>| {
            r.metadata_mut()
                .insert("authorization", "Basic dXNlcjpwYXNz".parse().unwrap());
            Ok(r)
        },
    )
}
