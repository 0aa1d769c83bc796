//! Postgres going away: UNAVAILABLE, never a guessed decision, and recovery
//! without a restart.

use authgate::grpc::proto::Decision;
use tonic::Code;

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unavailable_while_postgres_is_down_then_recovers() {
    // Its own cluster: stopping the shared one would break other tests.
    let cluster = PgCluster::start();
    let server = TestServer::spawn_on(
        cluster.database().await,
        "[database]\nacquire_timeout = \"500ms\"",
    )
    .await;
    let mut c = server.access().await;
    let who = || subject("dave", "192.0.2.44");
    for _ in 0..2 {
        fail(&mut c, "login", who()).await;
    }

    cluster.stop();
    for _ in 0..3 {
        let err = c
            .check_access(authgate::grpc::proto::CheckAccessRequest {
                context: "login".into(),
                subject: who(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unavailable, "{err:?}");
        assert!(
            !err.message().contains("postgres://"),
            "no connection details leak"
        );
        let err = c
            .record_failure(authgate::grpc::proto::RecordFailureRequest {
                context: "login".into(),
                subject: who(),
                activity: String::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unavailable);
    }

    cluster.restart();
    // The pool reconnects by itself; the two failures acknowledged before
    // the outage still count, the three refused during it do not.
    let v = fail(&mut c, "login", who()).await.verdict.unwrap();
    assert_eq!(v.remaining_attempts, Some(2));
    fail(&mut c, "login", who()).await;
    let r = fail(&mut c, "login", who()).await;
    assert!(r.lockout_applied);
    assert_eq!(decision(&r.verdict.unwrap()), Decision::Blocked);
    server.stop().await;
}
