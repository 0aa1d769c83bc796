//! The audit trail: what happened, who did it, newest first.

use authgate::domain::UnixMillis;
use authgate::grpc::proto::{self, admin_unlock_request::Scope};
use rstest::rstest;
use tonic::transport::Channel;

use crate::helpers::*;
use authgate::store::Upkeep;

type Admin = proto::admin_service_client::AdminServiceClient<Channel>;

async fn events(
    a: &mut Admin,
    user: &str,
    kind: &str,
    page_size: u32,
    token: &str,
) -> proto::ListAuditEventsResponse {
    a.list_audit_events(proto::ListAuditEventsRequest {
        actor_user_id: "admin".into(),
        user_id: user.into(),
        kind: kind.into(),
        page_size,
        page_token: token.into(),
        ..Default::default()
    })
    .await
    .expect("ListAuditEvents")
    .into_inner()
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_trail(#[values(Backend::Sqlite, Backend::Postgres)] backend: Backend) {
    let server = TestServer::spawn(backend).await;
    let mut c = server.access().await;
    let mut a = server.admin().await;
    for _ in 0..5 {
        fail(&mut c, "login", subject("alice", "192.0.2.10")).await;
    }
    a.admin_unlock(proto::AdminUnlockRequest {
        actor_user_id: "admin".into(),
        scope: Some(Scope::Subject(proto::Subject {
            user_id: "alice".into(),
            ..Default::default()
        })),
    })
    .await
    .unwrap();

    let lockouts = events(&mut a, "alice", "lockout", 0, "").await.events;
    assert_eq!(lockouts.len(), 1);
    assert_eq!(
        (
            lockouts[0].context.as_str(),
            lockouts[0].rule.as_str(),
            lockouts[0].tier
        ),
        ("login", "user_ip", 1)
    );
    assert!(lockouts[0].unblock_at.is_some());
    let unlocks = events(&mut a, "alice", "unlocked", 0, "").await.events;
    assert_eq!(
        (unlocks[0].actor.as_str(), unlocks[0].detail.as_str()),
        ("admin", "scope=subject lifted=1")
    );
    assert_eq!(
        events(&mut a, "alice", "failure_recorded", 0, "")
            .await
            .events
            .len(),
        5
    );

    // Pages of two, newest first, until there are no more.
    let (mut ids, mut token, mut pages) = (Vec::new(), String::new(), 0);
    loop {
        let page = events(&mut a, "alice", "", 2, &token).await;
        ids.extend(page.events.iter().map(|e| e.id));
        pages += 1;
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!((ids.len(), pages), (7, 4));
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "{ids:?}");
    assert_eq!(
        events(&mut a, "alice", "", 0, "").await.events[0].kind,
        "unlocked"
    );
    let bad = a
        .list_audit_events(proto::ListAuditEventsRequest {
            actor_user_id: "admin".into(),
            page_token: "x".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(bad.message().contains("page_token"));

    // A lock that ends is recorded once, by the cleanup pass.
    for _ in 0..5 {
        fail(&mut c, "login", subject("bob", "192.0.2.11")).await;
    }
    let (config, _) = config("", &server.db);
    let store = authgate::app::open_store(&config).await.unwrap();
    let later = UnixMillis(EPOCH.0 + 31 * 60_000);
    let pass = store
        .upkeep()
        .purge_expired(later, RETENTION)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(pass.locks_expired, 1);
    assert_eq!(
        store
            .upkeep()
            .purge_expired(later, RETENTION)
            .await
            .unwrap()
            .unwrap()
            .locks_expired,
        0
    );
    let expired = events(&mut a, "bob", "lockout_expired", 0, "").await.events;
    assert_eq!(expired.len(), 1);
    assert_eq!(
        expired[0].at.as_ref().unwrap().seconds * 1000,
        EPOCH.0 + 30 * 60_000
    );

    // Retention.
    let far = UnixMillis(EPOCH.0 + 91 * 24 * 3600 * 1000);
    assert!(
        store
            .upkeep()
            .purge_expired(far, RETENTION)
            .await
            .unwrap()
            .unwrap()
            .events_deleted
            >= 14
    );
    assert!(events(&mut a, "", "", 0, "").await.events.is_empty());
    server.stop().await;
}
