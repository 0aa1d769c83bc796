use authgate::grpc::proto::{self, admin_unlock_request::Scope};
use tonic::Code;

use crate::both_backends;
use crate::helpers::*;

fn req(context: &str, s: Option<proto::Subject>) -> proto::RecordFailureRequest {
    proto::RecordFailureRequest {
        context: context.into(),
        subject: s,
        activity: String::new(),
    }
}

fn full(user: &str, ip: &str, session: &str) -> Option<proto::Subject> {
    Some(proto::Subject {
        user_id: user.into(),
        ip: ip.into(),
        session_id: session.into(),
    })
}

async fn bad_requests_name_the_field_and_write_nothing(backend: Backend) {
    let server = TestServer::spawn(backend).await;
    let mut c = server.access().await;
    let long = "x".repeat(300);
    let cases: Vec<(proto::RecordFailureRequest, &str)> = vec![
        (req("", subject("u", "")), "context"),
        (req("nope", subject("u", "")), "unknown context"),
        (req("login", None), "subject"),
        (
            req("login", full("", "", "")),
            "subject: needs at least one",
        ),
        (req("login", full(&long, "10.0.0.1", "")), "subject.user_id"),
        (req("login", full("u", "10.0.0.300", "")), "subject.ip"),
        (req("login", full("u", "", "a\u{0}b")), "subject.session_id"),
        (
            proto::RecordFailureRequest {
                activity: long.clone(),
                ..req("login", subject("u", "10.0.0.1"))
            },
            "activity",
        ),
    ];
    for (request, field) in cases {
        let status = c.record_failure(request.clone()).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{request:?}");
        assert!(
            status.message().contains(field),
            "{:?} should name {field}",
            status.message()
        );
        let status = c
            .check_access(proto::CheckAccessRequest {
                context: request.context.clone(),
                subject: request.subject.clone(),
            })
            .await;
        if request.activity.is_empty() {
            assert_eq!(status.unwrap_err().code(), Code::InvalidArgument);
        }
    }

    let mut a = server.admin().await;
    let no_scope = a
        .admin_unlock(proto::AdminUnlockRequest {
            actor_user_id: "admin".into(),
            scope: None,
        })
        .await
        .unwrap_err();
    assert!(no_scope.message().contains("scope"));
    let wrong_parts = a
        .admin_unlock(proto::AdminUnlockRequest {
            actor_user_id: "admin".into(),
            scope: Some(Scope::Key(proto::KeyRef {
                context: "login".into(),
                key: Some(proto::Key {
                    kind: proto::KeyKind::Session.into(),
                    session_id: "s".into(),
                    ..Default::default()
                }),
            })),
        })
        .await
        .unwrap_err();
    assert_eq!(wrong_parts.code(), Code::InvalidArgument);
    assert!(wrong_parts.message().contains("key.key.kind"));
    let bad_token = a
        .list_locked(proto::ListLockedRequest {
            actor_user_id: "admin".into(),
            page_token: "garbage!".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(bad_token.message().contains("page_token"));

    let huge = c
        .check_access(proto::CheckAccessRequest {
            context: "login".into(),
            subject: full(&"y".repeat(100 * 1024), "", ""),
        })
        .await
        .unwrap_err();
    // tonic's code for a message over the decoding limit.
    assert_eq!(huge.code(), Code::OutOfRange);

    // Nothing was written by any of it.
    let found = report(&mut a, full("u", "10.0.0.1", "")).await;
    assert!(found.states.is_empty(), "{:?}", found.states);
    server.stop().await;
}
both_backends!(bad_requests_name_the_field_and_write_nothing);
