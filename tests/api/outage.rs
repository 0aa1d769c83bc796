//! Postgres going away: UNAVAILABLE, never a guessed decision, and recovery
//! without a restart.

use std::time::Duration;

use authgate::grpc::proto::{self, Decision};
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::helpers::*;

/// "login" fails closed (the default); "feed" and "hook" fail open. All
/// lock after a few failures, only listed users may act, and "hook" admits
/// only one network.
const CONTEXTS: &str = r#"
[database]
acquire_timeout = "500ms"
[access]
allowed_user_ids = ["dave", "erin", "admin"]
admin_user_ids = ["admin"]
[[contexts.login.rules]]
name = "user_ip"
key = "user+ip"
window = "30m"
lock_after = 5
lockout = ["30m", "permanent"]
[contexts.feed]
failure_mode = "fail_open"
[[contexts.feed.rules]]
name = "user"
key = "user"
window = "30m"
lock_after = 3
lockout = ["30m"]
[contexts.hook]
failure_mode = "fail_open"
allowed_networks = ["149.154.160.0/20"]
[[contexts.hook.rules]]
name = "ip"
key = "ip"
window = "30m"
lock_after = 3
lockout = ["30m"]
"#;

/// Waits (boundedly) until the health service reports `want` for `service`:
/// the store is probed once a second.
async fn health_becomes(channel: Channel, service: &str, want: ServingStatus) {
    let mut health = HealthClient::new(channel);
    for _ in 0..100 {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("health answers while the store is down")
            .into_inner()
            .status;
        if status == want as i32 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("health of {service:?} never became {want:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unavailable_while_postgres_is_down_then_recovers() {
    // Its own cluster: stopping the shared one would break other tests.
    let cluster = PgCluster::start();
    let server = TestServer::spawn_on(cluster.database().await, CONTEXTS).await;
    let mut c = server.access().await;
    let who = || subject("dave", "192.0.2.44");
    for _ in 0..2 {
        fail(&mut c, "login", who()).await;
    }
    fail(&mut c, "feed", subject("erin", "")).await;
    health_becomes(server.channel().await, "", ServingStatus::Serving).await;

    cluster.stop();
    health_becomes(server.channel().await, "", ServingStatus::NotServing).await;
    health_becomes(
        server.channel().await,
        "authgate.v1.AccessService",
        ServingStatus::NotServing,
    )
    .await;
    // Liveness stays up: an outage must not make Kubernetes restart us.
    health_becomes(server.channel().await, "liveness", ServingStatus::Serving).await;

    // fail_open: allowed, and told why; strangers are still denied, since
    // the allow list needs no store; recording still refuses, since nothing
    // may be acknowledged that was not stored.
    let open = check(&mut c, "feed", subject("erin", "")).await;
    assert_eq!(
        (decision(&open), open.reason.as_str()),
        (Decision::Allow, "store_unavailable")
    );
    assert!(
        authgate::telemetry::metrics::handle()
            .render()
            .contains("authgate_fail_open_decisions_total{context=\"feed\"}"),
        "fail-open decisions are counted"
    );
    let stranger = check(&mut c, "feed", subject("mallory", "")).await;
    assert_eq!(decision(&stranger), Decision::Deny);
    let sender = check(&mut c, "hook", subject("", "149.154.167.1")).await;
    assert_eq!(sender.reason, "store_unavailable", "{sender:?}");
    let outsider = check(&mut c, "hook", subject("", "198.51.100.7")).await;
    assert_eq!(
        (decision(&outsider), outsider.reason.as_str()),
        (Decision::Deny, "network_not_allowed"),
        "the network list needs no store"
    );
    let err = c
        .record_failure(proto::RecordFailureRequest {
            context: "feed".into(),
            subject: subject("erin", ""),
            activity: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);

    for _ in 0..3 {
        let err = c
            .check_access(proto::CheckAccessRequest {
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
        use tonic_types::StatusExt;
        assert!(
            err.get_details_retry_info()
                .is_some_and(|r| r.retry_delay.is_some()),
            "UNAVAILABLE says when to retry"
        );
        let err = c
            .record_failure(proto::RecordFailureRequest {
                context: "login".into(),
                subject: who(),
                activity: String::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unavailable);
    }

    cluster.restart();
    health_becomes(server.channel().await, "", ServingStatus::Serving).await;
    let closed_again = check(&mut c, "feed", subject("erin", "")).await;
    assert_eq!(closed_again.reason, "ok", "judged by the store again");
    let erin = report(&mut server.admin().await, subject("erin", "")).await;
    assert_eq!(
        erin.states[0].failures_total, 1,
        "only the acknowledged failure"
    );
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

/// With the store gone, a replica answers at once, under concurrency:
/// fail_open contexts ALLOW, the others UNAVAILABLE, each within the pool's
/// acquire timeout and a margin, never after queueing behind other callers'
/// waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_come_at_once_while_the_store_is_down() {
    let cluster = PgCluster::start();
    let contexts = CONTEXTS.replace("acquire_timeout = \"500ms\"", "acquire_timeout = \"1s\"");
    let server = TestServer::spawn_on(cluster.database().await, &contexts).await;
    let mut c = server.access().await;
    fail(&mut c, "login", subject("dave", "192.0.2.44")).await;
    cluster.stop();

    let calls = (0..12).map(|n| {
        let mut c = c.clone();
        tokio::spawn(async move {
            let mut slowest = Duration::ZERO;
            for _ in 0..5 {
                let (context, user) = if n % 2 == 0 {
                    ("feed", "erin")
                } else {
                    ("login", "dave")
                };
                let start = std::time::Instant::now();
                let answer = c
                    .check_access(proto::CheckAccessRequest {
                        context: context.into(),
                        subject: subject(user, "192.0.2.44"),
                    })
                    .await;
                slowest = slowest.max(start.elapsed());
                match (context, answer) {
                    ("feed", Ok(r)) => {
                        assert_eq!(r.into_inner().verdict.unwrap().reason, "store_unavailable")
                    }
                    ("login", Err(s)) => assert_eq!(s.code(), Code::Unavailable, "{s:?}"),
                    (context, other) => panic!("{context}: {other:?}"),
                }
            }
            slowest
        })
    });
    let mut slowest = Duration::ZERO;
    for call in calls.collect::<Vec<_>>() {
        slowest = slowest.max(call.await.unwrap());
    }
    assert!(
        slowest < Duration::from_millis(1500),
        "the slowest answer took {slowest:?}"
    );
    cluster.restart();
    health_becomes(server.channel().await, "", ServingStatus::Serving).await;
    check(&mut c, "login", subject("dave", "192.0.2.44")).await;
    server.stop().await;
}

/// Something that is not Postgres where Postgres was: a store that cannot
/// be reached, whatever the reason, is UNAVAILABLE (and fail_open fails
/// open), never INTERNAL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_speaking_another_protocol_is_an_unavailable_store() {
    let cluster = PgCluster::start();
    let server = TestServer::spawn_on(cluster.database().await, CONTEXTS).await;
    let mut c = server.access().await;
    fail(&mut c, "login", subject("dave", "192.0.2.44")).await;
    cluster.stop();
    let impostor = tokio::net::TcpListener::bind(("127.0.0.1", cluster.port))
        .await
        .expect("the port Postgres left");
    let answering = tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = impostor.accept().await else {
                return;
            };
            tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                let _ = socket
                    .write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                    .await;
            });
        }
    });
    health_becomes(server.channel().await, "", ServingStatus::NotServing).await;
    let open = check(&mut c, "feed", subject("erin", "")).await;
    assert_eq!(
        (decision(&open), open.reason.as_str()),
        (Decision::Allow, "store_unavailable")
    );
    let err = c
        .check_access(proto::CheckAccessRequest {
            context: "login".into(),
            subject: subject("dave", "192.0.2.44"),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    answering.abort();
    server.stop().await;
}
