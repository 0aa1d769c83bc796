//! A database the release before the `token` column wrote
//! (migrations/postgres/0007_key_token.sql, migrations/sqlite/0005) keeps
//! its state across the upgrade: a password key's lock, stored where a
//! session id went, and its audit event, which named the key in its detail
//! text, read as they did; and the events it stored name the kind of key
//! they were shown with (migrations/postgres/0008_event_key_kind.sql,
//! migrations/sqlite/0006), now recorded rather than guessed.

use rstest::rstest;
use sqlx::Connection;
use sqlx::migrate::Migrator;

use authgate::grpc::proto;

use crate::helpers::*;

const PASSWORD_KEY: &str = "k1:abcd000000000000000000000000000000000000000000000000000000000000";

/// The schema as the release before wrote it, with one locked password key
/// and the event of its lock in it.
async fn written_by_the_release_before(db: &TestDb) {
    let until = EPOCH.0 + 3_600_000;
    let state = format!(
        "INSERT INTO key_state (context, rule, kind, session_id, failures_total, \
           last_failure_at, locked_at, locked_until, lock_tier, recent_lockouts, \
           last_lockout_at, lockouts_total, expires_at, version) \
         VALUES ('login', 'password', 'password', '{PASSWORD_KEY}', 30, {at}, {at}, {until}, \
           1, 1, {at}, 1, {until}, 1)",
        at = EPOCH.0
    );
    let event = format!(
        "INSERT INTO security_event (at, kind, context, rule, tier, until_at, detail) \
         VALUES ({}, 'lockout', 'login', 'password', 1, {until}, 'password k1:abcd')",
        EPOCH.0
    );
    let failure = format!(
        "INSERT INTO security_event (at, kind, context, user_id, ip, session_id, detail) \
         VALUES ({}, 'failure_recorded', 'login', 'alice', '10.0.0.1', 's1', 'password')",
        EPOCH.0
    );
    let before = |mut m: Migrator, last: i64| {
        m.migrations = m
            .migrations
            .iter()
            .filter(|m| m.version <= last)
            .cloned()
            .collect::<Vec<_>>()
            .into();
        m
    };
    // The same steps on either dialect's connection and migrations.
    macro_rules! seed {
        ($conn:expr, $migrations:literal, $last:expr) => {{
            let mut c = $conn.await.unwrap();
            before(sqlx::migrate!($migrations), $last)
                .run(&mut c)
                .await
                .unwrap();
            for sql in [&state, &event, &failure] {
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql.clone()))
                    .execute(&mut c)
                    .await
                    .unwrap();
            }
        }};
    }
    if db.url().starts_with("sqlite:") {
        let options: sqlx::sqlite::SqliteConnectOptions = db.url().parse().unwrap();
        let options = options.create_if_missing(true);
        seed!(
            sqlx::SqliteConnection::connect_with(&options),
            "migrations/sqlite",
            4
        );
    } else {
        seed!(
            sqlx::PgConnection::connect(db.url()),
            "migrations/postgres",
            6
        );
    }
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_keys_lock_and_its_event_survive_the_upgrade(
    #[values(Backend::Sqlite, Backend::Postgres)] backend: Backend,
) {
    let db = TestDb::new(backend).await;
    written_by_the_release_before(&db).await;
    let server = TestServer::spawn_on(db, "").await;

    assert_eq!(
        server
            .db
            .count("SELECT COUNT(*) FROM key_state WHERE kind = 'password' AND token <> ''")
            .await,
        1,
        "the key moved with its column"
    );
    let mut admin = server.admin().await;
    let locked = locked(&mut admin).await;
    let [lock] = &locked[..] else {
        panic!("one lock: {locked:?}");
    };
    let key = lock.key.as_ref().unwrap();
    assert_eq!(key.kind(), proto::KeyKind::Password);
    assert_eq!(key.password, "k1:abcd");
    assert!(key.session_id.is_empty(), "{key:?}");

    let events = audit_events(&mut admin, "").await;
    let of_kind = |kind: &str| {
        let event = events.iter().find(|e| e.kind == kind).expect(kind);
        (event, event.key.clone().unwrap())
    };
    let (event, key) = of_kind("lockout");
    assert_eq!(key.kind(), proto::KeyKind::Password, "{event:?}");
    assert_eq!(key.password, "k1:abcd");
    assert_eq!(event.detail, "", "the key left the detail text");
    let (failure, key) = of_kind("failure_recorded");
    assert_eq!(key.kind(), proto::KeyKind::UserIp, "{failure:?}");
    assert_eq!(
        (
            key.user_id.as_str(),
            key.ip.as_str(),
            key.session_id.as_str()
        ),
        ("alice", "10.0.0.1", "s1")
    );
    server.stop().await;
}
