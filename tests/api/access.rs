use authgate::grpc::proto::{self, Decision};
use rstest::rstest;

use crate::helpers::*;

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tier_lockout_becomes_permanent(
    #[values(Backend::Sqlite, Backend::Postgres)] backend: Backend,
) {
    let server = TestServer::spawn(backend).await;
    let mut c = server.access().await;
    let who = || subject("alice", "203.0.113.5");

    let v = check(&mut c, "login", who()).await;
    assert_eq!((decision(&v), v.reason.as_str()), (Decision::Allow, "ok"));
    assert_eq!(v.remaining_attempts, Some(5));

    for remaining in (1..=4).rev() {
        let r = fail(&mut c, "login", who()).await;
        let v = r.verdict.unwrap();
        assert_eq!(decision(&v), Decision::Allow);
        assert_eq!(v.remaining_attempts, Some(remaining));
        assert!(!r.lockout_applied);
    }
    let r = fail(&mut c, "login", who()).await;
    assert!(r.lockout_applied);
    let v = r.verdict.unwrap();
    assert_eq!(decision(&v), Decision::Blocked);
    assert_eq!((v.reason.as_str(), v.rule.as_str()), ("locked", "user_ip"));
    let key = v.key.clone().unwrap();
    assert_eq!(
        (key.user_id.as_str(), key.ip.as_str()),
        ("alice", "203.0.113.5")
    );
    assert_eq!(key.kind, proto::KeyKind::UserIp as i32);
    assert_eq!(v.retry_after_seconds, 30 * 60);
    assert!(!v.permanent);
    let until = v.unblock_at.unwrap();
    assert_eq!(until.seconds * 1000, EPOCH.0 + 30 * 60 * 1000);

    assert_eq!(
        decision(&check(&mut c, "login", who()).await),
        Decision::Blocked
    );
    // The user from another address, and the same user in another context,
    // are not locked: a stranger cannot lock alice out of her own network.
    assert_eq!(
        decision(&check(&mut c, "login", subject("alice", "198.51.100.9")).await),
        Decision::Allow
    );
    assert_eq!(
        decision(&check(&mut c, "password_reset", who()).await),
        Decision::Allow
    );

    // Failures while locked do not lengthen the lock.
    server.clock.advance(10 * MINUTE);
    let v = fail(&mut c, "login", who()).await.verdict.unwrap();
    assert_eq!(
        v.unblock_at.unwrap().seconds * 1000,
        EPOCH.0 + 30 * 60 * 1000
    );

    server.clock.advance(20 * MINUTE);
    assert_eq!(
        decision(&check(&mut c, "login", who()).await),
        Decision::Allow
    );

    // A second lockout within 24 h is permanent.
    for _ in 0..5 {
        fail(&mut c, "login", who()).await;
    }
    let v = check(&mut c, "login", who()).await;
    assert_eq!(decision(&v), Decision::Blocked);
    assert!(v.permanent);
    assert_eq!(v.reason, "locked_permanently");
    assert!(v.unblock_at.is_none());
    assert_eq!(v.retry_after_seconds, 0);
    server.clock.advance(1000 * 60 * MINUTE);
    assert_eq!(
        decision(&check(&mut c, "login", who()).await),
        Decision::Blocked
    );

    let mut admin = server.admin().await;
    let lifted = admin
        .admin_unlock(proto::AdminUnlockRequest {
            actor_user_id: "admin".into(),
            scope: Some(proto::admin_unlock_request::Scope::Key(proto::KeyRef {
                context: "login".into(),
                key: Some(key),
            })),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(lifted.unlocked, 1);
    let v = check(&mut c, "login", who()).await;
    assert_eq!(decision(&v), Decision::Allow);
    assert_eq!(v.remaining_attempts, Some(5));
    server.stop().await;
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn success_clears_failures_not_locks(
    #[values(Backend::Sqlite, Backend::Postgres)] backend: Backend,
) {
    let server = TestServer::spawn(backend).await;
    let mut c = server.access().await;
    let who = || subject("bob", "203.0.113.6");
    for _ in 0..4 {
        fail(&mut c, "login", who()).await;
    }
    let ok = success(&mut c, "login", who()).await;
    assert_eq!(
        (decision(&ok), ok.remaining_attempts),
        (Decision::Allow, Some(5))
    );
    for _ in 0..4 {
        fail(&mut c, "login", who()).await;
    }
    assert_eq!(
        check(&mut c, "login", who()).await.remaining_attempts,
        Some(1)
    );
    fail(&mut c, "login", who()).await;
    let still = success(&mut c, "login", who()).await;
    assert_eq!(
        decision(&still),
        Decision::Blocked,
        "a success does not lift a lock"
    );
    server.stop().await;
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn captcha_then_progressive_blocks(
    #[values(Backend::Sqlite, Backend::Postgres)] backend: Backend,
) {
    let server = TestServer::spawn(backend).await;
    let mut c = server.access().await;
    let who = || subject("spammer", "");
    for _ in 0..2 {
        fail(&mut c, "bot", who()).await;
    }
    let v = fail(&mut c, "bot", who()).await.verdict.unwrap();
    assert_eq!(
        (decision(&v), v.reason.as_str()),
        (Decision::ChallengeCaptcha, "captcha_required")
    );
    assert_eq!(v.remaining_attempts, Some(2));
    fail(&mut c, "bot", who()).await;
    let v = fail(&mut c, "bot", who()).await.verdict.unwrap();
    assert_eq!(
        (decision(&v), v.retry_after_seconds),
        (Decision::Blocked, 60)
    );

    server.clock.advance(MINUTE);
    assert_eq!(
        decision(&check(&mut c, "bot", who()).await),
        Decision::Allow
    );
    for _ in 0..5 {
        fail(&mut c, "bot", who()).await;
    }
    let v = check(&mut c, "bot", who()).await;
    assert_eq!(
        (decision(&v), v.retry_after_seconds),
        (Decision::Blocked, 120)
    );
    server.stop().await;
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_are_denied_then_blocked(
    #[values(Backend::Sqlite, Backend::Postgres)] backend: Backend,
) {
    let server = TestServer::spawn_with(
        backend,
        "[access]\nallowed_user_ids = [\"alice\", \"admin\"]",
    )
    .await;
    let mut c = server.access().await;
    let stranger = || subject("mallory", "");
    for remaining in [2, 1] {
        let v = check(&mut c, "login", stranger()).await;
        assert_eq!(
            (decision(&v), v.reason.as_str()),
            (Decision::Deny, "not_on_allow_list")
        );
        assert_eq!(v.remaining_attempts, Some(remaining));
        assert_eq!(v.rule, "allow_list");
    }
    let v = check(&mut c, "login", stranger()).await;
    assert_eq!(decision(&v), Decision::Blocked);
    assert_eq!(v.retry_after_seconds, 3600);
    // RecordFailure reports the block without counting toward it again.
    let v = fail(&mut c, "bot", stranger()).await.verdict.unwrap();
    assert_eq!(decision(&v), Decision::Blocked);
    assert_eq!(
        decision(&check(&mut c, "login", subject("alice", "")).await),
        Decision::Allow
    );
    server.clock.advance(60 * MINUTE);
    assert_eq!(
        decision(&check(&mut c, "login", stranger()).await),
        Decision::Deny
    );
    server.stop().await;
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_state_survives_a_restart(
    #[values(Backend::Sqlite, Backend::Postgres)] backend: Backend,
) {
    let server = TestServer::spawn(backend).await;
    let mut c = server.access().await;
    for _ in 0..5 {
        fail(&mut c, "login", subject("carol", "192.0.2.1")).await;
    }
    let db = server.stop_keeping_db().await;
    let server = TestServer::spawn_on(db, "").await;
    let mut c = server.access().await;
    let v = check(&mut c, "login", subject("carol", "192.0.2.1")).await;
    assert_eq!(decision(&v), Decision::Blocked);
    server.stop().await;
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activities_count_only_where_configured(
    #[values(Backend::Sqlite, Backend::Postgres)] backend: Backend,
) {
    let extra = r#"
        [[contexts.chat.rules]]
        name = "spam"
        key = "session"
        activities = ["spam"]
        window = "10m"
        lock_after = 2
        lockout = ["5m"]
    "#;
    let server = TestServer::spawn_with(backend, extra).await;
    let mut c = server.access().await;
    let s = || {
        Some(proto::Subject {
            session_id: "chat-1".into(),
            ..Default::default()
        })
    };
    let record = |activity: &'static str| proto::RecordFailureRequest {
        context: "chat".into(),
        subject: s(),
        activity: activity.into(),
    };
    for _ in 0..3 {
        let v = c.record_failure(record("typo")).await.unwrap().into_inner();
        assert_eq!(decision(&v.verdict.unwrap()), Decision::Allow);
    }
    c.record_failure(record("spam")).await.unwrap();
    let v = c.record_failure(record("spam")).await.unwrap().into_inner();
    assert!(v.lockout_applied);
    assert_eq!(v.verdict.unwrap().rule, "spam");
    server.stop().await;
}
