//! The key cache of Postgres replicas: checks on known keys answered
//! without Postgres, every replica's writes reaching every replica's
//! cached checks, and a replica that cannot hear them reading Postgres.
//! Real processes, so each has its own metrics to show what it did.

use std::time::{Duration, Instant};

use authgate::grpc::proto::{self, Decision};
use sqlx::Connection;

use crate::helpers::*;

/// The bound the cache promises when its channel fails silently, and well
/// above the delay of a notification on a working one.
const STALENESS: Duration = Duration::from_secs(1);

/// A metric's value in a Prometheus scrape (0 when absent).
fn metric(scrape: &str, series: &str) -> f64 {
    scrape
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

fn hits(replica: &ChildServer) -> f64 {
    metric(
        &http_get(&replica.metrics_url),
        "authgate_key_cache_lookups_total{result=\"hit\"}",
    )
}

/// Waits until the replica's cache is trusted: a heartbeat came back.
async fn trusted(replica: &ChildServer) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(
        &http_get(&replica.metrics_url),
        "authgate_key_cache_trusted",
    ) != 1.0
    {
        assert!(Instant::now() < deadline, "the cache never became trusted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn replica(dir: &std::path::Path, url: &str) -> ChildServer {
    ChildServer::spawn(
        dir,
        &[],
        &[
            ("AUTHGATE_DATABASE__URL", url),
            ("AUTHGATE_SERVER__LISTEN", "127.0.0.1:0"),
            ("AUTHGATE_ACCESS__ADMIN_USER_IDS", "[\"admin\"]"),
        ],
    )
}

/// How long after `since` the replica first answers `want` for `who`.
async fn until(
    c: &mut proto::access_service_client::AccessServiceClient<tonic::transport::Channel>,
    who: Option<proto::Subject>,
    want: Decision,
    since: Instant,
) -> Duration {
    loop {
        let v = check(c, "login", who.clone()).await;
        if decision(&v) == want {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < 2 * STALENESS,
            "still {:?} after {:?}",
            decision(&v),
            since.elapsed()
        );
    }
}

/// Five failures: the login context's user_ip rule locks the pair.
async fn lock(
    c: &mut proto::access_service_client::AccessServiceClient<tonic::transport::Channel>,
    who: Option<proto::Subject>,
) {
    for _ in 0..5 {
        fail(c, "login", who.clone()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_on_known_keys_are_answered_without_postgres() {
    let db = TestDb::new(Backend::Postgres).await;
    let dir = tempfile::tempdir().unwrap();
    let first = replica(dir.path(), db.url());
    let mut su = sqlx::PgConnection::connect(db.url()).await.unwrap();
    for grant in [
        "CREATE ROLE reader LOGIN",
        "GRANT ALL ON SCHEMA public TO reader",
        "GRANT ALL ON ALL TABLES IN SCHEMA public TO reader",
        "GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO reader",
    ] {
        sqlx::query(grant).execute(&mut su).await.unwrap();
    }
    let reader = replica(dir.path(), &db.url().replacen("postgres@", "reader@", 1));
    trusted(&reader).await;
    let mut c = reader.access().await;
    let known = subject("known", "192.0.2.10");
    assert_eq!(
        decision(&check(&mut c, "login", known.clone()).await),
        Decision::Allow
    );

    sqlx::query("REVOKE SELECT ON key_state FROM reader")
        .execute(&mut su)
        .await
        .unwrap();
    let before = hits(&reader);
    let v = check(&mut c, "login", known).await;
    assert_eq!(decision(&v), Decision::Allow);
    assert_eq!(
        hits(&reader) - before,
        3.0,
        "login's three rules, from the cache"
    );
    let unknown = c
        .check_access(proto::CheckAccessRequest {
            context: "login".into(),
            subject: subject("unknown", "192.0.2.11"),
        })
        .await;
    assert!(
        unknown.is_err(),
        "a key not cached needs Postgres: {unknown:?}"
    );
    drop(first);
}

/// A lock or an unlock on one replica reaches the other's cached checks
/// within the notification's delay; its p99 over 40 rounds is printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_on_one_replica_reach_the_cached_checks_of_another() {
    let db = TestDb::new(Backend::Postgres).await;
    let dir = tempfile::tempdir().unwrap();
    let [writer, checker] = [replica(dir.path(), db.url()), replica(dir.path(), db.url())];
    trusted(&checker).await;
    let mut w = writer.access().await;
    let mut a = writer.admin().await;
    let mut c = checker.access().await;
    let hits_before = hits(&checker);
    let mut delays = Vec::new();
    for round in 0..40 {
        let who = subject(&format!("stale{round}"), "192.0.2.20");
        for _ in 0..2 {
            let v = check(&mut c, "login", who.clone()).await;
            assert_eq!(decision(&v), Decision::Allow);
        }
        lock(&mut w, who.clone()).await;
        delays.push(until(&mut c, who.clone(), Decision::Blocked, Instant::now()).await);
        a.admin_unlock(proto::AdminUnlockRequest {
            actor_user_id: "admin".into(),
            scope: who.clone().map(proto::admin_unlock_request::Scope::Subject),
        })
        .await
        .expect("AdminUnlock");
        delays.push(until(&mut c, who, Decision::Allow, Instant::now()).await);
    }
    assert!(
        hits(&checker) - hits_before >= 40.0 * 3.0,
        "the second check of each round came from the cache"
    );
    delays.sort();
    let p = |q: f64| delays[((delays.len() - 1) as f64 * q) as usize];
    eprintln!(
        "staleness across replicas over {} writes: p50 {:?}, p99 {:?}, max {:?}",
        delays.len(),
        p(0.5),
        p(0.99),
        delays[delays.len() - 1]
    );
}

/// A replica whose invalidation channel is down reads Postgres, and starts
/// over with an empty cache once it listens again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_cannot_hear_invalidations_reads_postgres() {
    let db = TestDb::new(Backend::Postgres).await;
    let dir = tempfile::tempdir().unwrap();
    let writer = replica(dir.path(), db.url());
    let mut su = sqlx::PgConnection::connect(db.url()).await.unwrap();
    sqlx::query("CREATE ROLE deaf LOGIN SUPERUSER")
        .execute(&mut su)
        .await
        .unwrap();
    let deaf = replica(dir.path(), &db.url().replacen("postgres@", "deaf@", 1));
    trusted(&deaf).await;
    let mut w = writer.access().await;
    let mut c = deaf.access().await;
    let [before, during] = [
        subject("before", "192.0.2.30"),
        subject("during", "192.0.2.31"),
    ];
    for who in [&before, &during] {
        for _ in 0..2 {
            check(&mut c, "login", who.clone()).await;
        }
    }

    // Its listening connection goes, and cannot come back; its pooled
    // connections stay.
    sqlx::query("ALTER ROLE deaf NOLOGIN")
        .execute(&mut su)
        .await
        .unwrap();
    let cut: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE usename = 'deaf' AND query LIKE 'LISTEN%'",
    )
    .fetch_all(&mut su)
    .await
    .unwrap();
    assert_eq!(cut, vec![true], "one listening connection");
    lock(&mut w, during.clone()).await;
    let took = until(&mut c, during, Decision::Blocked, Instant::now()).await;
    assert!(took < STALENESS, "{took:?}");

    // Cached before the channel went down, locked while it was: only
    // starting over once it listens again forgets the stale answer.
    lock(&mut w, before.clone()).await;
    sqlx::query("ALTER ROLE deaf LOGIN")
        .execute(&mut su)
        .await
        .unwrap();
    trusted(&deaf).await;
    let v = check(&mut c, "login", before).await;
    assert_eq!(decision(&v), Decision::Blocked, "nothing cached survived");
}
