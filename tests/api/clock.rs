//! One time for every replica. A replica whose wall clock is hours off
//! (moved with libfaketime, its monotonic clock untouched, as an NTP
//! mistake or a VM resume leaves it) decides as a correct one, its cleanup
//! pass purges only what expired, and it says its clock is off. On SQLite,
//! where the wall clock is the only clock, a step of it is seen.

use std::path::Path;
use std::time::{Duration, Instant};

use authgate::clock::{Clock, SystemClock};

use authgate::grpc::proto::Decision;
use tonic::transport::Channel;
use tonic_health::ServingStatus;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use crate::helpers::*;

/// libfaketime's offsets, ahead and behind.
const SHIFTS: [(&str, f64); 2] = [("+2h", 7200.0), ("-2h", -7200.0)];

/// The shipped login context's user+ip lock.
const LOCK_SECONDS: u64 = 1800;

/// What a caller sees of one failure.
#[derive(Debug, PartialEq)]
struct Seen {
    decision: Decision,
    lockout_applied: bool,
    /// Within a few seconds: calls are a few milliseconds apart.
    retry_after: u64,
}

/// `n` failures for one user and address, the i-th sent to replica
/// `i % replicas.len()`.
async fn attack(replicas: &[&ChildServer], user: &str, ip: &str, n: usize) -> Vec<Seen> {
    let mut clients = Vec::new();
    for r in replicas {
        clients.push(r.access().await);
    }
    let mut seen = Vec::new();
    for i in 0..n {
        let turn = i % clients.len();
        let c = &mut clients[turn];
        let answer = fail(c, "login", subject(user, ip)).await;
        let v = answer.verdict.expect("verdict");
        seen.push(Seen {
            decision: decision(&v),
            lockout_applied: answer.lockout_applied,
            retry_after: v.retry_after_seconds.div_ceil(5) * 5,
        });
    }
    seen
}

async fn health(replica: &ChildServer, service: &str) -> i32 {
    let channel = Channel::from_shared(format!("http://{}", replica.addr))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .expect("health")
        .into_inner()
        .status
}

/// The replica's `authgate_clock_skew_seconds`, once it has read the
/// database's clock.
async fn skew(replica: &ChildServer) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let scrape = http_get(&replica.metrics_url);
        if scrape.contains("\nauthgate_clock_skew_seconds ") {
            return metric(&scrape, "authgate_clock_skew_seconds");
        }
        assert!(Instant::now() < deadline, "no clock skew on /metrics");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn real_now_ms() -> i64 {
    SystemClock.now().0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_with_skewed_wall_clocks_decide_as_a_correct_one() {
    let dir = tempfile::tempdir().unwrap();
    let control_db = TestDb::new(Backend::Postgres).await;
    let control = replica(&control_db, dir.path(), Wall::True, &[]);
    let expected = attack(&[&control], "mallory", "203.0.113.7", 14).await;
    assert_eq!(
        expected
            .iter()
            .filter(|s| s.decision != Decision::Blocked)
            .count(),
        4,
        "{expected:?}"
    );
    for (shift, seconds) in SHIFTS {
        let db = TestDb::new(Backend::Postgres).await;
        let correct = replica(&db, dir.path(), Wall::True, &[]);
        let skewed = replica(&db, dir.path(), Wall::Shifted(shift), &[]);
        // The fifth failure, the one that locks, lands on the correct
        // replica for one attacker and on the skewed one for the other.
        let a = attack(&[&skewed, &correct], "mallory", "203.0.113.7", 14).await;
        let b = attack(&[&correct, &skewed], "trudy", "203.0.113.8", 14).await;
        assert_eq!(
            a, expected,
            "alternating, {shift}: locked on the correct replica"
        );
        assert_eq!(
            b, expected,
            "alternating, {shift}: locked on the skewed replica"
        );
        for user in ["mallory", "trudy"] {
            let ip = if user == "mallory" {
                "203.0.113.7"
            } else {
                "203.0.113.8"
            };
            for r in [&correct, &skewed] {
                let v = check(&mut r.access().await, "login", subject(user, ip)).await;
                assert_eq!(decision(&v), Decision::Blocked, "{user}, {shift}");
                assert!(
                    (LOCK_SECONDS - 5..=LOCK_SECONDS).contains(&v.retry_after_seconds),
                    "{user} on {shift}: {} s left",
                    v.retry_after_seconds
                );
            }
        }

        let off = skew(&skewed).await;
        assert!((off - seconds).abs() < 60.0, "{shift}: skew {off}");
        assert!(skew(&correct).await.abs() < 1.0, "the correct replica");
        let serving = ServingStatus::Serving as i32;
        let not_serving = ServingStatus::NotServing as i32;
        assert_eq!(health(&skewed, "").await, serving, "it keeps serving");
        assert_eq!(health(&skewed, "clock").await, not_serving);
        assert_eq!(health(&correct, "clock").await, serving);
        let (_, log) = skewed.terminate();
        let warned: Vec<&String> = log
            .iter()
            .filter(|l| l.contains("wall clock is off from the database's clock"))
            .collect();
        assert_eq!(warned.len(), 1, "one warning for a lasting skew: {log:#?}");
        assert!(warned[0].contains("skew_seconds"), "{}", warned[0]);
        let (_, log) = correct.terminate();
        assert!(
            !log.iter().any(|l| l.contains("wall clock is off")),
            "{log:#?}"
        );
    }
}

/// Waits for a cleanup pass to have marked where it stopped.
async fn a_cleanup_pass(db: &TestDb) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let marks = db
            .pairs("SELECT name, last_at FROM maintenance WHERE name = 'cleanup'")
            .await;
        if let Some((_, at)) = marks.first() {
            return *at;
        }
        assert!(Instant::now() < deadline, "no cleanup pass ran");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_skewed_replicas_cleanup_purges_only_what_expired() {
    let dir = tempfile::tempdir().unwrap();
    for (shift, _) in SHIFTS {
        let db = TestDb::new(Backend::Postgres).await;
        let correct = replica(&db, dir.path(), Wall::True, &[]);
        let mut c = correct.access().await;
        // Counts in their window, and a lock in force, for 30 minutes.
        for _ in 0..2 {
            fail(&mut c, "login", subject("alice", "198.51.100.1")).await;
        }
        attack(&[&correct], "mallory", "203.0.113.7", 5).await;
        let rows = db.count("SELECT COUNT(*) FROM key_state").await;
        let before = real_now_ms();
        let skewed = replica(
            &db,
            dir.path(),
            Wall::Shifted(shift),
            &[("AUTHGATE_CLEANUP__INTERVAL", "200ms")],
        );
        let mark = a_cleanup_pass(&db).await;
        assert!(
            (before - 60_000..=real_now_ms() + 60_000).contains(&mark),
            "{shift}: the cleanup mark is {} s from now",
            (mark - real_now_ms()) / 1000
        );
        assert_eq!(
            db.count("SELECT COUNT(*) FROM key_state").await,
            rows,
            "{shift}: live counts purged"
        );
        assert_eq!(
            db.count("SELECT COUNT(*) FROM security_event WHERE kind = 'lockout_expired'")
                .await,
            0,
            "{shift}: a lock in force reported expired"
        );
        let v = check(&mut c, "login", subject("alice", "198.51.100.1")).await;
        assert_eq!(v.remaining_attempts, Some(3), "{shift}: {v:?}");
        let v = check(&mut c, "login", subject("mallory", "203.0.113.7")).await;
        assert_eq!(decision(&v), Decision::Blocked, "{shift}");
        drop(skewed);
    }
}

fn step_to(file: &Path, offset: &str) {
    std::fs::write(file, offset).expect("write the faketime file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_of_the_wall_clock_is_seen_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("faketime");
    step_to(&file, "+0");
    let db = TestDb::new(Backend::Sqlite).await;
    let server = replica(
        &db,
        dir.path(),
        Wall::FromFile(&file),
        &[("AUTHGATE_CLOCK__SYNC_INTERVAL", "100ms")],
    );
    let locked = attack(&[&server], "mallory", "203.0.113.7", 5).await;
    assert_eq!(locked[4].decision, Decision::Blocked, "{locked:?}");
    let steps = || metric(&http_get(&server.metrics_url), "authgate_clock_steps_total");
    assert_eq!(steps(), 0.0);

    step_to(&file, "+2h");
    let deadline = Instant::now() + Duration::from_secs(10);
    while steps() < 1.0 {
        assert!(Instant::now() < deadline, "the step was not counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // What the README says a forward step does: the wall clock is the only
    // time there is, so a lock in flight ends by it.
    let v = check(
        &mut server.access().await,
        "login",
        subject("mallory", "203.0.113.7"),
    )
    .await;
    assert_eq!(decision(&v), Decision::Allow, "{v:?}");
    let (_, log) = server.terminate();
    let stepped: Vec<&String> = log.iter().filter(|l| l.contains("stepped")).collect();
    assert_eq!(stepped.len(), 1, "{log:#?}");
    assert!(
        stepped[0].contains("\"authority\":\"wall\""),
        "{}",
        stepped[0]
    );
}

/// The store going away and coming back: a skewed replica answers
/// UNAVAILABLE meanwhile (nothing is judged on its own clock), and after
/// the outage still decides by the database's time, carried across by its
/// monotonic clock and read again once the store answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_skewed_replica_keeps_the_databases_time_across_an_outage() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = PgCluster::start();
    let db = cluster.database().await;
    let skewed = replica(
        &db,
        dir.path(),
        Wall::Shifted("+2h"),
        &[("AUTHGATE_CLOCK__SYNC_INTERVAL", "100ms")],
    );
    attack(&[&skewed], "mallory", "203.0.113.7", 5).await;
    let mut c = skewed.access().await;

    cluster.stop();
    let refused = c
        .check_access(authgate::grpc::proto::CheckAccessRequest {
            context: "login".into(),
            subject: subject("mallory", "203.0.113.7"),
        })
        .await
        .expect_err("no store, no verdict");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    cluster.restart();

    let deadline = Instant::now() + Duration::from_secs(20);
    let verdict = loop {
        let answer = c
            .check_access(authgate::grpc::proto::CheckAccessRequest {
                context: "login".into(),
                subject: subject("mallory", "203.0.113.7"),
            })
            .await;
        if let Ok(r) = answer {
            break r.into_inner().verdict.expect("verdict");
        }
        assert!(Instant::now() < deadline, "the store did not come back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(decision(&verdict), Decision::Blocked, "{verdict:?}");
    assert!(
        (LOCK_SECONDS - 30..=LOCK_SECONDS).contains(&verdict.retry_after_seconds),
        "{} s left",
        verdict.retry_after_seconds
    );
    let again = fail(&mut c, "login", subject("mallory", "203.0.113.7")).await;
    assert!(!again.lockout_applied, "a locked key is not locked again");
    let off = skew(&skewed).await;
    assert!((off - 7200.0).abs() < 60.0, "skew {off}");
}

/// A replica's wall clock stepped while it runs, on Postgres: the skew is
/// reported and, once the clock is put right, reported gone; the decision
/// clock never moved, so no step of it is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wall_clock_put_right_is_reported_and_decisions_never_moved() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("faketime");
    step_to(&file, "+2h");
    let db = TestDb::new(Backend::Postgres).await;
    let server = replica(
        &db,
        dir.path(),
        Wall::FromFile(&file),
        &[("AUTHGATE_CLOCK__SYNC_INTERVAL", "100ms")],
    );
    let off = skew(&server).await;
    assert!((off - 7200.0).abs() < 60.0, "skew {off}");
    assert_eq!(
        health(&server, "clock").await,
        ServingStatus::NotServing as i32
    );
    attack(&[&server], "mallory", "203.0.113.7", 5).await;

    step_to(&file, "+0");
    let deadline = Instant::now() + Duration::from_secs(10);
    while health(&server, "clock").await != ServingStatus::Serving as i32 {
        assert!(Instant::now() < deadline, "the skew was not reported gone");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(skew(&server).await.abs() < 1.0);
    let scrape = http_get(&server.metrics_url);
    assert_eq!(
        metric(&scrape, "authgate_clock_steps_total"),
        0.0,
        "{scrape}"
    );
    let v = check(
        &mut server.access().await,
        "login",
        subject("mallory", "203.0.113.7"),
    )
    .await;
    assert_eq!(decision(&v), Decision::Blocked);
    assert!(
        (LOCK_SECONDS - 5..=LOCK_SECONDS).contains(&v.retry_after_seconds),
        "{} s left",
        v.retry_after_seconds
    );
    let (_, log) = server.terminate();
    assert!(
        log.iter()
            .any(|l| l.contains("within clock.skew_tolerance of the database's again")),
        "{log:#?}"
    );
}
