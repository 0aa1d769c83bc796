//! WatchSecurityEvents: alerts from any replica, one per attack.

use std::time::Duration;

use authgate::grpc::proto::{self, Decision};
use sqlx::Connection;
use tokio_stream::StreamExt;
use tonic::Streaming;

use crate::helpers::*;

type Alerts = Streaming<proto::SecurityAlert>;

async fn next(alerts: &mut Alerts) -> proto::SecurityAlert {
    tokio::time::timeout(Duration::from_secs(10), alerts.next())
        .await
        .expect("an alert within 10 s")
        .expect("the stream is open")
        .expect("an alert, not an error")
}

/// Nothing more arrives within a short, bounded wait.
async fn quiet(alerts: &mut Alerts) {
    let more = tokio::time::timeout(Duration::from_millis(700), alerts.next()).await;
    assert!(more.is_err(), "unexpected alert: {more:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_cross_replicas_once_per_attack() {
    let (_db, _dir, replicas) = two_replicas(&[(
        "AUTHGATE_ACCESS__ALLOWED_USER_IDS",
        "[\"admin\", \"alice\"]",
    )])
    .await;
    let mut alerts = watch(&mut replicas[1].admin().await).await;
    let mut c = replicas[0].access().await;

    for _ in 0..3 {
        check(&mut c, "login", subject("mallory", "203.0.113.66")).await;
    }
    let first = next(&mut alerts).await;
    assert_eq!((first.kind.as_str(), first.suppressed), ("not_allowed", 0));
    assert_eq!(first.key.unwrap().user_id, "mallory");
    // The third attempt blocked mallory: an alert of another kind.
    let block = next(&mut alerts).await;
    assert_eq!(
        (block.kind.as_str(), block.context.as_str()),
        ("lockout", "allow_list")
    );
    assert!(block.unblock_at.is_some() && !block.permanent);
    // The second and third attempts were held back.
    quiet(&mut alerts).await;

    let non_admin = replicas[1]
        .admin()
        .await
        .watch_security_events(proto::WatchSecurityEventsRequest {
            actor_user_id: "alice".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(non_admin.code(), tonic::Code::PermissionDenied);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_alert_after_the_window_counts_the_suppressed() {
    let server =
        TestServer::spawn_with(Backend::Sqlite, "[access]\nallowed_user_ids = [\"admin\"]").await;
    let mut alerts = watch(&mut server.admin().await).await;
    let mut c = server.access().await;
    let stranger = || subject("trudy", "");
    check(&mut c, "bot", stranger()).await;
    check(&mut c, "bot", stranger()).await;
    assert_eq!(next(&mut alerts).await.suppressed, 0);
    quiet(&mut alerts).await;

    server.clock.advance(5 * MINUTE);
    let v = check(&mut c, "bot", stranger()).await;
    assert_eq!(decision(&v), Decision::Blocked);
    let lockout = next(&mut alerts).await;
    assert_eq!(lockout.kind, "lockout");
    let again = next(&mut alerts).await;
    assert_eq!((again.kind.as_str(), again.suppressed), ("not_allowed", 1));

    // A TOTP block is an alert too.
    let mut a = server.admin().await;
    a.import_totp(proto::ImportTotpRequest {
        actor_user_id: "admin".into(),
        user_id: "admin".into(),
        secret_base32: "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    for _ in 0..5 {
        c.verify_totp(proto::VerifyTotpRequest {
            context: "admin".into(),
            subject: subject("admin", ""),
            code: "000000".into(),
            recovery_code: String::new(),
        })
        .await
        .unwrap();
    }
    let totp = next(&mut alerts).await;
    assert_eq!(
        (totp.kind.as_str(), totp.context.as_str()),
        ("totp_blocked", "totp")
    );
    // Shutting down ends the stream instead of waiting on it.
    server.stop().await;
    let end = tokio::time::timeout(Duration::from_secs(10), alerts.next())
        .await
        .expect("stream ends");
    assert!(end.is_none() || end.is_some_and(|r| r.is_err()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_falls_behind_is_told_what_it_lost() {
    let server = TestServer::spawn_with(
        Backend::Sqlite,
        "[access]\nallowed_user_ids = [\"admin\"]\n[alerts]\nbuffer = 8",
    )
    .await;
    // A subscriber on a slow link: a small HTTP/2 window fills after a few
    // alerts, and then the server must hold or drop the rest.
    let slow = tonic::transport::Endpoint::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .initial_stream_window_size(1024)
        .connect()
        .await
        .unwrap();
    let mut alerts = watch(&mut proto::admin_service_client::AdminServiceClient::new(
        slow,
    ))
    .await;
    let mut c = server.access().await;
    // More distinct strangers than the stream's buffers hold, while the
    // subscriber reads nothing: RPCs go on at full speed regardless.
    for i in 0..200 {
        check(&mut c, "bot", subject(&format!("stranger-{i}"), "")).await;
    }
    let mut dropped = 0;
    let mut seen = 0;
    while dropped == 0 {
        let alert = next(&mut alerts).await;
        dropped += alert.dropped;
        seen += 1;
        assert!(seen <= 200, "no alert ever reported a drop");
    }
    assert!(dropped > 0);
    server.stop().await;
}

/// Every failure locks: each fresh user raises one lockout alert.
const LOCK_AT_ONCE: &str = r#"
[[contexts.login.rules]]
name = "user"
key = "user"
window = "30m"
lock_after = 1
lockout = ["30m"]
"#;

/// Records a failure, retrying while the store is still coming back.
async fn fail_when_up(
    c: &mut proto::access_service_client::AccessServiceClient<tonic::transport::Channel>,
    user: &str,
) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let answer = c
            .record_failure(proto::RecordFailureRequest {
                context: "login".into(),
                subject: subject(user, ""),
                activity: String::new(),
            })
            .await;
        match answer {
            Ok(r) => {
                assert!(r.into_inner().lockout_applied, "{user} locked");
                return;
            }
            Err(s) if s.code() == tonic::Code::Unavailable => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the store never came back"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(s) => panic!("RecordFailure: {s:?}"),
        }
    }
}

/// A replica whose listening connection dies with Postgres still delivers
/// the alerts other replicas committed before it could listen again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_committed_while_a_replica_reconnects_are_delivered() {
    let cluster = PgCluster::start();
    let db = cluster.database().await;
    // The watching replica connects as a role of its own, so the test can
    // keep it from reconnecting for as long as it takes the other replica
    // to commit its alerts.
    let mut su = sqlx::PgConnection::connect(db.url()).await.unwrap();
    sqlx::query("CREATE ROLE watcher LOGIN SUPERUSER")
        .execute(&mut su)
        .await
        .unwrap();
    let watcher_url = db.url().replacen("postgres@", "watcher@", 1);
    let recording = TestServer::spawn_on(db, LOCK_AT_ONCE).await;
    let watching = TestServer::spawn_on(TestDb::Shared { url: watcher_url }, LOCK_AT_ONCE).await;
    let mut alerts = watch(&mut watching.admin().await).await;
    let mut c = recording.access().await;
    fail_when_up(&mut c, "before").await;
    assert_eq!(next(&mut alerts).await.key.unwrap().user_id, "before");

    sqlx::query("ALTER ROLE watcher NOLOGIN")
        .execute(&mut su)
        .await
        .unwrap();
    cluster.stop();
    cluster.restart();
    let users: Vec<String> = (0..50).map(|i| format!("during{i}")).collect();
    for user in &users {
        fail_when_up(&mut c, user).await;
    }
    let mut su = sqlx::PgConnection::connect(recording.db.url())
        .await
        .unwrap();
    sqlx::query("ALTER ROLE watcher LOGIN")
        .execute(&mut su)
        .await
        .unwrap();
    let mut seen: Vec<String> = Vec::new();
    for _ in &users {
        seen.push(next(&mut alerts).await.key.unwrap().user_id);
    }
    seen.sort();
    let mut want = users.clone();
    want.sort();
    assert_eq!(seen, want, "every alert, once");
    quiet(&mut alerts).await;
    watching.stop().await;
    recording.stop().await;
}

/// A replica hears of alerts from the moment it serves: a subscriber that
/// joins at once misses none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_delivers_alerts_from_its_first_call() {
    let db = TestDb::new(Backend::Postgres).await;
    let recording = TestServer::spawn_on(db, LOCK_AT_ONCE).await;
    let mut c = recording.access().await;
    for round in 0..5 {
        let watching = TestServer::spawn_on(recording.db.share(), LOCK_AT_ONCE).await;
        let mut alerts = watch(&mut watching.admin().await).await;
        let user = format!("first{round}");
        fail_when_up(&mut c, &user).await;
        assert_eq!(next(&mut alerts).await.key.unwrap().user_id, user);
        watching.stop().await;
    }
    recording.stop().await;
}
