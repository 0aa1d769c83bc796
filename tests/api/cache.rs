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

/// A write that Postgres committed but whose answer never came back (the
/// connection died in between) must not leave the writer's cache holding
/// the row from before: the writer ignores its own invalidations, so only
/// it can drop the key. Postgres holds a commit, durable locally, while it
/// waits for a synchronous standby; with one named that does not exist,
/// terminating the waiting backend ends the wait with the commit made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_whose_answer_is_lost_is_not_answered_from_the_cache() {
    // A cluster of its own: the standby trap holds every commit on it.
    let cluster = PgCluster::start();
    let db = cluster.database().await;
    let dir = tempfile::tempdir().unwrap();
    let writer = replica(dir.path(), db.url());
    trusted(&writer).await;
    let mut c = writer.access().await;
    let who = subject("unanswered", "198.51.100.200");
    for _ in 0..4 {
        fail(&mut c, "login", who.clone()).await;
    }
    assert_eq!(
        decision(&check(&mut c, "login", who.clone()).await),
        Decision::Allow
    );

    let mut su = sqlx::PgConnection::connect(db.url()).await.unwrap();
    // Only this database's commits wait: dropping it afterwards, from the
    // postgres database, must not, whatever happens to the test.
    for setting in [
        "CREATE TABLE probe (n int)",
        "ALTER DATABASE postgres SET synchronous_commit = local",
        "ALTER SYSTEM SET synchronous_standby_names = 'nobody'",
        "SELECT pg_reload_conf()",
    ] {
        sqlx::query(setting).execute(&mut su).await.unwrap();
    }
    // Commits wait once the reload has reached Postgres's shared state, a
    // moment after pg_reload_conf returns: probe with writes of our own
    // (a commit that wrote nothing never waits) until one is held, and let
    // it go.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut probe = sqlx::PgConnection::connect(db.url()).await.unwrap();
        let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&mut probe)
            .await
            .unwrap();
        let committing = tokio::spawn(async move {
            sqlx::query("INSERT INTO probe VALUES (1)")
                .execute(&mut probe)
                .await
        });
        if held_in_sync_rep(&mut su, pid).await {
            release(&mut su, pid).await;
            break;
        }
        committing.await.unwrap().unwrap();
        assert!(Instant::now() < deadline, "commits never waited");
    }
    let mut locking = c.clone();
    let fifth = tokio::spawn({
        let who = who.clone();
        async move {
            locking
                .record_failure(proto::RecordFailureRequest {
                    context: "login".into(),
                    subject: who,
                    activity: String::new(),
                })
                .await
        }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    let held: i32 = loop {
        let waiting: Option<i32> = sqlx::query_scalar(
            "SELECT pid FROM pg_stat_activity \
             WHERE wait_event = 'SyncRep' AND query LIKE '%key_state%' LIMIT 1",
        )
        .fetch_optional(&mut su)
        .await
        .unwrap();
        if let Some(pid) = waiting {
            break pid;
        }
        assert!(
            Instant::now() < deadline,
            "the fifth failure never committed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    release(&mut su, held).await;
    for setting in [
        "ALTER SYSTEM RESET synchronous_standby_names",
        "SELECT pg_reload_conf()",
    ] {
        sqlx::query(setting).execute(&mut su).await.unwrap();
    }
    assert!(
        fifth.await.unwrap().is_err(),
        "the fifth failure's answer was lost"
    );
    let locked: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM key_state WHERE user_id = 'unanswered' AND locked_at IS NOT NULL",
    )
    .fetch_one(&mut su)
    .await
    .unwrap();
    assert_eq!(locked, 1, "yet Postgres committed the lock");

    trusted(&writer).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let verdict = loop {
        // The lost connection marks the store down until a probe answers.
        match c
            .check_access(proto::CheckAccessRequest {
                context: "login".into(),
                subject: who.clone(),
            })
            .await
        {
            Ok(r) => break r.into_inner().verdict.unwrap(),
            Err(s) if s.code() == tonic::Code::Unavailable => {
                assert!(Instant::now() < deadline, "the store never came back");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(s) => panic!("CheckAccess: {s:?}"),
        }
    };
    assert_eq!(decision(&verdict), Decision::Blocked);
}

/// Whether the backend `pid` comes to wait for a synchronous standby
/// within 200 ms.
async fn held_in_sync_rep(su: &mut sqlx::PgConnection, pid: i32) -> bool {
    let until = Instant::now() + Duration::from_millis(200);
    while Instant::now() < until {
        let waiting: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1 AND wait_event = 'SyncRep')",
        )
        .bind(pid)
        .fetch_one(&mut *su)
        .await
        .unwrap();
        if waiting {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    false
}

/// Ends the backend `pid`'s wait, its commit already made, by ending it.
async fn release(su: &mut sqlx::PgConnection, pid: i32) {
    sqlx::query("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .execute(su)
        .await
        .unwrap();
}
