use authgate::grpc::proto::{self, admin_unlock_request::Scope};
use rstest::rstest;
use tonic::Code;

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
        ..proto::Subject::default()
    })
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_name_the_field_and_write_nothing(
    #[values(Backend::Sqlite, Backend::Postgres)] backend: Backend,
) {
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
        // The field travels as a google.rpc.BadRequest too, for clients
        // that read details rather than messages.
        use tonic_types::StatusExt;
        let violations = status
            .get_details_bad_request()
            .expect("BadRequest details")
            .field_violations;
        assert!(
            field.starts_with(&violations[0].field) || field.contains(&violations[0].field),
            "{field} vs {violations:?}"
        );
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
    // Too large is the caller's to fix: RESOURCE_EXHAUSTED, as gRPC's
    // status code guide prescribes.
    assert_eq!(huge.code(), Code::ResourceExhausted);

    // Nothing was written by any of it.
    let found = report(&mut a, full("u", "10.0.0.1", "")).await;
    assert!(found.states.is_empty(), "{:?}", found.states);
    server.stop().await;
}

/// Bytes that are not the request message: the caller's fault, named where
/// the field is known, and nothing written.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_bodies_are_invalid_arguments(
    #[values(Backend::Sqlite, Backend::Postgres)] backend: Backend,
) {
    let server = TestServer::spawn(backend).await;
    // CheckAccessRequest { context: "login", subject: { user_id: FF FE } }:
    // a string field that is not UTF-8.
    let mut not_utf8 = vec![0x0a, 5];
    not_utf8.extend_from_slice(b"login");
    not_utf8.extend_from_slice(&[0x12, 4, 0x0a, 2, 0xff, 0xfe]);
    for path in [
        "/authgate.v1.AccessService/CheckAccess",
        "/authgate.v1.AccessService/RecordFailure",
    ] {
        let status = raw_call(server.channel().await, path, not_utf8.clone())
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(
            status.message().starts_with("subject.user_id: "),
            "{status:?}"
        );
    }
    // Field 1 with wire type 7, which does not exist.
    let status = raw_call(
        server.channel().await,
        "/authgate.v1.AccessService/RecordFailure",
        vec![0x0f, 0x01],
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let written = server.db.count("SELECT COUNT(*) FROM key_state").await;
    assert_eq!(written, 0);
    server.stop().await;
}

/// ListAuditEvents' and ListLocked's filters are identifiers like any
/// other: written either way, an address finds its events; malformed ones
/// (NUL bytes included) are refused naming the field, on both stores.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_filters_are_parsed_like_every_identifier(
    #[values(Backend::Sqlite, Backend::Postgres)] backend: Backend,
) {
    let server = TestServer::spawn(backend).await;
    let mut c = server.access().await;
    c.record_failure(req("login", subject("v6", "2001:db8::1")))
        .await
        .unwrap();
    c.record_failure(req("login", subject("v4", "192.0.2.1")))
        .await
        .unwrap();
    let mut a = server.admin().await;
    let events = |f: proto::ListAuditEventsRequest| {
        let mut a = a.clone();
        async move {
            a.list_audit_events(proto::ListAuditEventsRequest {
                actor_user_id: "admin".into(),
                ..f
            })
            .await
        }
    };
    for (ip, user) in [
        ("2001:DB8::1", "v6"),
        ("2001:db8:0::0:1", "v6"),
        ("::ffff:192.0.2.1", "v4"),
    ] {
        let found = events(proto::ListAuditEventsRequest {
            ip: ip.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .events;
        assert_eq!(found.len(), 1, "{ip}");
        assert_eq!(found[0].key.as_ref().unwrap().user_id, user, "{ip}");
    }
    let long = "u".repeat(257);
    let bad = [
        (
            proto::ListAuditEventsRequest {
                ip: "1.2.3.4.5".into(),
                ..Default::default()
            },
            "ip",
        ),
        (
            proto::ListAuditEventsRequest {
                user_id: long,
                ..Default::default()
            },
            "user_id",
        ),
        (
            proto::ListAuditEventsRequest {
                from: Some(prost_types::Timestamp {
                    seconds: 0,
                    nanos: 2_000_000_000,
                }),
                ..Default::default()
            },
            "from.nanos",
        ),
        (
            proto::ListAuditEventsRequest {
                user_id: "a\0b".into(),
                ..Default::default()
            },
            "user_id",
        ),
        (
            proto::ListAuditEventsRequest {
                ip: "1.2.3.4\0".into(),
                ..Default::default()
            },
            "ip",
        ),
        (
            proto::ListAuditEventsRequest {
                session_id: "s\0".into(),
                ..Default::default()
            },
            "session_id",
        ),
        (
            proto::ListAuditEventsRequest {
                kind: "lockout\0".into(),
                ..Default::default()
            },
            "kind",
        ),
        (
            proto::ListAuditEventsRequest {
                context: "log\0in".into(),
                ..Default::default()
            },
            "context",
        ),
    ];
    for (filter, field) in bad {
        let status = events(filter.clone()).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{filter:?}");
        assert!(
            status.message().starts_with(&format!("{field}:")),
            "{field}: {status:?}"
        );
    }
    // A page token carrying a NUL inside its context.
    use base64::Engine;
    let token = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode("log\0in\u{1f}user_ip\u{1f}user+ip\u{1f}u\u{1f}10.0.0.1\u{1f}");
    let status = a
        .list_locked(proto::ListLockedRequest {
            actor_user_id: "admin".into(),
            page_token: token,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().starts_with("page_token:"), "{status:?}");

    // ImportTotp names its own field.
    let status = a
        .import_totp(proto::ImportTotpRequest {
            actor_user_id: "admin".into(),
            user_id: "w".into(),
            secret_base32: "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ".into(),
            period_seconds: 5,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().starts_with("period_seconds:"),
        "{status:?}"
    );
    server.stop().await;
}
