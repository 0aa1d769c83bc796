//! Stopping and overload: SIGTERM drains what is in flight, and a replica at
//! its limits sheds load instead of queueing it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sqlx::Connection;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use authgate::grpc::proto;

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_calls_in_flight_finish_and_exits_zero() {
    let db = TestDb::new(Backend::Postgres).await;
    let dir = tempfile::tempdir().unwrap();
    let server = ChildServer::spawn(
        dir.path(),
        &[],
        &[
            ("AUTHGATE_DATABASE__URL", db.url()),
            ("AUTHGATE_SERVER__LISTEN", "127.0.0.1:0"),
            ("AUTHGATE_ACCESS__ADMIN_USER_IDS", "[\"admin\"]"),
        ],
    );
    let mut alerts = watch(&mut server.admin().await).await;
    let client = server.access().await;
    let acked = Arc::new(AtomicU64::new(0));
    // Callers that keep failing logins until the server goes away.
    let workers: Vec<_> = (0..16)
        .map(|w| {
            let mut c = client.clone();
            let acked = acked.clone();
            tokio::spawn(async move {
                loop {
                    let r = c
                        .record_failure(proto::RecordFailureRequest {
                            context: "login".into(),
                            subject: subject(&format!("drain-{w}"), ""),
                            activity: String::new(),
                        })
                        .await;
                    match r {
                        Ok(_) => acked.fetch_add(1, Ordering::SeqCst),
                        Err(status) => return status,
                    };
                }
            })
        })
        .collect();
    while acked.load(Ordering::SeqCst) < 200 {
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (status, logs) = tokio::task::spawn_blocking(move || server.terminate())
        .await
        .unwrap();
    assert!(status.success(), "exit {status:?}\n{}", logs.join("\n"));
    let logs = logs.join("\n");
    assert!(logs.contains("draining calls in flight"), "{logs}");

    // The alert stream ended cleanly rather than breaking.
    let end = tokio::time::timeout(Duration::from_secs(5), alerts.message())
        .await
        .expect("the stream ends");
    assert!(matches!(end, Ok(None)), "{end:?}");

    // Each caller stopped at a call the closing server refused: how the
    // client reports a refused stream or closed connection varies
    // (UNAVAILABLE, or INTERNAL for an h2 GOAWAY), but it is never a
    // service's answer.
    for w in workers {
        let refused = w.await.unwrap();
        assert!(
            refused.code() == Code::Unavailable || std::error::Error::source(&refused).is_some(),
            "{refused:?}"
        );
    }
    // Every acknowledged failure is stored, and nothing more: the calls in
    // flight at SIGTERM finished and were answered.
    let acked = acked.load(Ordering::SeqCst) as i64;
    let stored = db
        .count("SELECT COALESCE(SUM(failures_total), 0)::bigint FROM key_state WHERE rule = 'user'")
        .await;
    assert_eq!(stored, acked);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_replica_sheds_load_and_cuts_off_stuck_calls() {
    let server = TestServer::spawn_with(
        Backend::Postgres,
        "[server]\nmax_concurrent_requests = 1\nrequest_timeout = \"1s\"",
    )
    .await;
    let mut c = server.access().await;
    let zoe = || subject("zoe", "192.0.2.9");
    fail(&mut c, "login", zoe()).await;

    // Another client holds zoe's rows, so her next failure waits on them
    // and occupies the only slot.
    let mut holder = sqlx::PgConnection::connect(server.db.url()).await.unwrap();
    let mut tx = holder.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM key_state FOR UPDATE")
        .execute(&mut *tx)
        .await
        .unwrap();
    let mut stuck_client = c.clone();
    let stuck = tokio::spawn(async move {
        stuck_client
            .record_failure(proto::RecordFailureRequest {
                context: "login".into(),
                subject: zoe(),
                activity: String::new(),
            })
            .await
    });

    // Until the stuck call waits on the lock inside Postgres, the test's own
    // calls could take the slot first.
    for _ in 0..100 {
        let waiting = server
            .db
            .count("SELECT COUNT(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'")
            .await;
        if waiting > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let shed = c
        .check_access(proto::CheckAccessRequest {
            context: "login".into(),
            subject: subject("yan", ""),
        })
        .await
        .expect_err("a second call is refused while the slot is taken");
    assert_eq!(shed.code(), Code::ResourceExhausted, "{shed:?}");
    use tonic_types::StatusExt;
    assert!(
        shed.get_details_retry_info()
            .is_some_and(|r| r.retry_delay.is_some()),
        "a shed call says when to retry"
    );
    let metrics = authgate::telemetry::metrics::handle().render();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("authgate_requests_shed_total ")),
        "{metrics}"
    );
    assert!(
        shed.message().contains("max_concurrent_requests"),
        "{shed:?}"
    );
    // Probes are never shed.
    let health = HealthClient::new(server.channel().await)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(health.status, ServingStatus::Serving as i32);

    let cut = stuck.await.unwrap().unwrap_err();
    assert_eq!(cut.code(), Code::DeadlineExceeded, "{cut:?}");
    tx.rollback().await.unwrap();

    // The timed-out call's work still holds the slot until it is done (so
    // abandoned work counts against the limit); once the row lock is gone
    // it finishes, and calls are served again.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let answer = c
            .check_access(proto::CheckAccessRequest {
                context: "login".into(),
                subject: subject("yan", ""),
            })
            .await;
        match answer {
            Ok(_) => break,
            Err(s) if s.code() == Code::ResourceExhausted => {
                assert!(std::time::Instant::now() < deadline, "the slot never freed");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(s) => panic!("CheckAccess: {s:?}"),
        }
    }
    server.stop().await;
}
