use authgate::grpc::proto::{self, Decision, admin_unlock_request::Scope};
use rstest::rstest;
use tonic::Code;

use crate::helpers::*;
use authgate::store::Upkeep;

fn unlock(actor: &str, scope: Scope) -> proto::AdminUnlockRequest {
    proto::AdminUnlockRequest {
        actor_user_id: actor.into(),
        scope: Some(scope),
    }
}

async fn lock_out(
    c: &mut authgate::grpc::proto::access_service_client::AccessServiceClient<
        tonic::transport::Channel,
    >,
    user: &str,
    ip: &str,
) {
    for _ in 0..5 {
        fail(c, "login", subject(user, ip)).await;
    }
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_rpcs_need_an_admin(#[values(Backend::Sqlite, Backend::Postgres)] backend: Backend) {
    let server = TestServer::spawn(backend).await;
    let mut a = server.admin().await;
    let denied = a
        .admin_unlock(unlock("mallory", Scope::All(true)))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    let denied = a
        .list_locked(proto::ListLockedRequest {
            actor_user_id: "mallory".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    let denied = a
        .get_subject(proto::GetSubjectRequest {
            actor_user_id: "mallory".into(),
            subject: subject("x", ""),
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    let missing = a
        .admin_unlock(unlock("", Scope::All(true)))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::InvalidArgument);
    assert!(missing.message().contains("actor_user_id"));
    server.stop().await;
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlock_scopes_and_paging(#[values(Backend::Sqlite, Backend::Postgres)] backend: Backend) {
    let server = TestServer::spawn(backend).await;
    let mut c = server.access().await;
    let mut a = server.admin().await;
    for (user, ip) in [
        ("u1", "192.0.2.1"),
        ("u2", "192.0.2.2"),
        ("u3", "192.0.2.3"),
    ] {
        lock_out(&mut c, user, ip).await;
    }
    // u1 also locked from a second address.
    lock_out(&mut c, "u1", "192.0.2.9").await;

    let list = |token: String| proto::ListLockedRequest {
        actor_user_id: "admin".into(),
        context: "login".into(),
        page_size: 3,
        page_token: token,
    };
    let first = a
        .list_locked(list(String::new()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.locks.len(), 3);
    assert!(!first.next_page_token.is_empty());
    let second = a
        .list_locked(list(first.next_page_token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.locks.len(), 1);
    assert!(second.next_page_token.is_empty());
    let lock = &first.locks[0];
    assert_eq!(
        (lock.context.as_str(), lock.rule.as_str(), lock.tier),
        ("login", "user_ip", 1)
    );
    assert!(lock.unblock_at.is_some() && !lock.permanent);

    let found = report(&mut a, subject("u1", "")).await;
    assert!(found.allowed && !found.admin);
    // user_ip twice (two addresses) and the captcha-only user rule.
    assert_eq!(found.states.len(), 3);
    let user_rule = found.states.iter().find(|s| s.rule == "user").unwrap();
    assert_eq!(
        (user_rule.failures_total, user_rule.failures_in_window),
        (10, 10)
    );
    assert!(user_rule.lock.is_none());
    let pair = found.states.iter().find(|s| s.rule == "user_ip").unwrap();
    assert_eq!(
        (
            pair.failures_total,
            pair.lockouts_total,
            pair.recent_lockouts
        ),
        (5, 1, 1)
    );
    assert!(pair.lock.is_some());

    let lifted = a
        .admin_unlock(unlock(
            "admin",
            Scope::Subject(proto::Subject {
                user_id: "u1".into(),
                ..Default::default()
            }),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(lifted.unlocked, 2);
    // The unlock forgot u1's failures too: no captcha from the user rule.
    let v = check(&mut c, "login", subject("u1", "192.0.2.9")).await;
    assert_eq!(
        (decision(&v), v.remaining_attempts),
        (Decision::Allow, Some(5))
    );
    assert_eq!(
        decision(&check(&mut c, "login", subject("u2", "192.0.2.2")).await),
        Decision::Blocked
    );

    let again = a
        .admin_unlock(unlock("admin", Scope::Subject(subject("u1", "").unwrap())))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.unlocked, 0, "unlocking is idempotent");
    let all = a
        .admin_unlock(unlock("admin", Scope::All(true)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.unlocked, 2);
    let empty = a
        .list_locked(list(String::new()))
        .await
        .unwrap()
        .into_inner();
    assert!(empty.locks.is_empty());
    server.stop().await;
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_purges_only_what_expired(
    #[values(Backend::Sqlite, Backend::Postgres)] backend: Backend,
) {
    let server = TestServer::spawn(backend).await;
    let mut c = server.access().await;
    lock_out(&mut c, "temp", "192.0.2.1").await;
    lock_out(&mut c, "perm", "192.0.2.2").await;
    server.clock.advance(31 * MINUTE);
    lock_out(&mut c, "perm", "192.0.2.2").await;

    let (config, _) = config("", &server.db);
    let store = authgate::app::open_store(&config).await.unwrap();
    let now = authgate::domain::UnixMillis(EPOCH.0 + 26 * 3600 * 1000);
    let purged = store
        .upkeep()
        .purge_expired(now, RETENTION)
        .await
        .unwrap()
        .expect("no other replica purging");
    // temp's three rule rows and perm's two non-permanent ones.
    assert_eq!(purged.states, 5);
    let mut a = server.admin().await;
    let left = report(&mut a, subject("perm", "")).await;
    assert_eq!(left.states.len(), 1);
    assert!(left.states[0].lock.as_ref().unwrap().permanent);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_purges_at_a_time() {
    use sqlx::Connection;
    let db = TestDb::new(Backend::Postgres).await;
    let (config, _) = config("", &db);
    let store = authgate::app::open_store(&config).await.unwrap();
    let now = authgate::domain::UnixMillis(EPOCH.0);
    assert!(
        store
            .upkeep()
            .purge_expired(now, RETENTION)
            .await
            .unwrap()
            .is_some()
    );

    // Another replica mid-purge holds the lock.
    let mut other = sqlx::PgConnection::connect(db.url()).await.unwrap();
    let mut tx = other.begin().await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(authgate::store::CLEANUP_LOCK)
        .execute(&mut *tx)
        .await
        .unwrap();
    assert_eq!(
        store.upkeep().purge_expired(now, RETENTION).await.unwrap(),
        None
    );
    tx.rollback().await.unwrap();
    assert!(
        store
            .upkeep()
            .purge_expired(now, RETENTION)
            .await
            .unwrap()
            .is_some()
    );
}
