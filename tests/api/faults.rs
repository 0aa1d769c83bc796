//! Faults a caller or the network can cause: calls cancelled mid-flight
//! must never leave a transaction half-done, a connection dirty or an
//! acknowledged failure unstored.

use rstest::rstest;
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use authgate::grpc::proto;
use sqlx::Connection;
use tonic::Code;

use crate::helpers::*;

const CALLERS: usize = 16;
const CALLS_EACH: usize = 150;

/// How the callers of a storm give up.
#[derive(Clone, Copy)]
enum Deadlines {
    /// tonic's channel with a 10 ms timeout: it resets the stream when the
    /// time is up, cancelling the call on the server.
    Cancelling,
    /// 10 ms in `grpc-timeout`, and a client that waits for the server's
    /// answer however long it takes.
    Patient,
}

/// 16 callers, 150 RecordFailures each with a 10 ms deadline, every caller
/// its own user behind one shared address (so the shared `ip` key makes
/// calls contend and take the row-locking path). Returns, per user, how
/// many failures were acknowledged, and every status code seen.
async fn cancellation_storm(
    server: &TestServer,
    deadlines: Deadlines,
) -> (BTreeMap<String, u64>, Seen) {
    let channel = server.channel().await;
    let addr = server.addr;
    let callers = (0..CALLERS).map(|n| {
        let channel = channel.clone();
        tokio::spawn(async move {
            let user = format!("storm{n}");
            let mut cancelling = proto::access_service_client::AccessServiceClient::new(channel);
            let mut patient = patient_access(addr);
            let mut acked = 0u64;
            let mut codes = Seen::default();
            for _ in 0..CALLS_EACH {
                let message = proto::RecordFailureRequest {
                    context: "login".into(),
                    subject: subject(&user, "198.51.100.7"),
                    activity: String::new(),
                };
                let answer = match deadlines {
                    Deadlines::Cancelling => {
                        let mut request = tonic::Request::new(message);
                        request.set_timeout(Duration::from_millis(10));
                        cancelling.record_failure(request).await.map(drop)
                    }
                    Deadlines::Patient => patient
                        .record_failure(with_deadline(message, 10))
                        .await
                        .map(drop),
                };
                match answer {
                    Ok(()) => {
                        acked += 1;
                        codes.add(Code::Ok, 1, "");
                    }
                    Err(status) => codes.add(status.code(), 1, status.message()),
                }
            }
            (user, acked, codes)
        })
    });
    let mut acked = BTreeMap::new();
    let mut codes = Seen::default();
    for caller in callers.collect::<Vec<_>>() {
        let (user, n, seen) = caller.await.expect("caller task");
        acked.insert(user, n);
        for (code, (count, message)) in seen.0 {
            codes.add(code, count, &message);
        }
    }
    (acked, codes)
}

/// The status codes a storm's callers saw: how many of each, and the first
/// message of each, so that a failure naming an unexpected code says why.
#[derive(Debug, Default)]
struct Seen(HashMap<Code, (u64, String)>);

impl Seen {
    fn add(&mut self, code: Code, count: u64, message: &str) {
        self.0.entry(code).or_insert((0, message.to_owned())).0 += count;
    }
}

/// Sessions of authgate's left inside a transaction, on Postgres.
async fn idle_in_transaction(db: &TestDb) -> i64 {
    let TestDb::Postgres { url, name, .. } = db else {
        return 0;
    };
    let mut c = sqlx::PgConnection::connect(url).await.expect("connect");
    sqlx::query_scalar(
        "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = $1 \
         AND application_name = 'authgate' AND state LIKE 'idle in transaction%'",
    )
    .bind(name)
    .fetch_one(&mut c)
    .await
    .expect("pg_stat_activity")
}

/// After a storm: a fresh key is recorded at once, nothing is left inside
/// a transaction, every acknowledged failure is stored and every stored
/// failure audited.
async fn store_is_whole(server: &TestServer, acked: &BTreeMap<String, u64>) {
    // Calls abandoned by their callers still hold their slots until their
    // work is done, so a fresh call may be shed for a moment; never timed
    // out on a wedged connection.
    let mut c = server.access().await;
    let start = Instant::now();
    loop {
        let mut request = tonic::Request::new(proto::RecordFailureRequest {
            context: "login".into(),
            subject: subject("fresh", "192.0.2.200"),
            activity: String::new(),
        });
        request.set_timeout(Duration::from_secs(2));
        match c.record_failure(request).await {
            Ok(_) => break,
            Err(s) if s.code() == Code::ResourceExhausted => {
                assert!(start.elapsed() < Duration::from_secs(3), "still shedding");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(s) => panic!("a fresh key after the storm: {s:?}"),
        }
    }
    assert!(start.elapsed() < Duration::from_secs(3));

    let deadline = Instant::now() + Duration::from_secs(10);
    while idle_in_transaction(&server.db).await > 0 {
        assert!(
            Instant::now() < deadline,
            "sessions left idle in transaction"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut admin = server.admin().await;
    for (user, n) in acked {
        let states = report(&mut admin, subject(user, "")).await.states;
        let stored = states
            .iter()
            .find(|s| s.rule == "user")
            .map_or(0, |s| s.failures_total);
        assert!(stored >= *n, "{user}: {n} acknowledged, {stored} stored");
    }
    let failures = server
        .db
        .count("SELECT CAST(COALESCE(SUM(failures_total), 0) AS BIGINT) FROM key_state WHERE rule = 'ip'")
        .await;
    let audited = server
        .db
        .count("SELECT COUNT(*) FROM security_event WHERE kind = 'failure_recorded'")
        .await;
    assert_eq!(audited, failures, "each stored failure is audited");
    let locks = server
        .db
        .count("SELECT CAST(COALESCE(SUM(lockouts_total), 0) AS BIGINT) FROM key_state")
        .await;
    let lock_events = server
        .db
        .count("SELECT COUNT(*) FROM security_event WHERE kind IN ('lockout', 'permanent_lockout')")
        .await;
    assert!(locks > 0, "the storm locked keys");
    assert_eq!(lock_events, locks, "exactly one lockout event per lock");
}

/// The storms' servers: a pool connection may take a while to come free on
/// a test machine busy with the rest of the suite, and one acquire past the
/// 2 s default would have the store judged down and every call after it
/// answered UNAVAILABLE, which is not what these tests are about.
const STORM: &str = "[database]\nacquire_timeout = \"30s\"\n";

/// Callers that give up after 10 ms cancel their calls on the server.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_calls_leave_the_store_whole(
    #[values(Backend::Sqlite, Backend::Postgres)] backend: Backend,
) {
    let server = TestServer::spawn_with(backend, STORM).await;
    let (acked, codes) = cancellation_storm(&server, Deadlines::Cancelling).await;
    assert!(
        codes.0.keys().all(|c| matches!(
            c,
            Code::Ok | Code::Cancelled | Code::DeadlineExceeded | Code::ResourceExhausted
        )),
        "no call may fail inside the server: {codes:?}"
    );
    store_is_whole(&server, &acked).await;
    server.stop().await;
}

/// Callers that wait for the answer to a 10 ms deadline: the server's
/// answer is DEADLINE_EXCEEDED (or, at its limit, RESOURCE_EXHAUSTED),
/// never an error of its own. tonic keeps a timer of its own for
/// grpc-timeout, which on a loaded machine now and then answers first, as
/// CANCELLED "Timeout expired" (one or two calls of a storm's 2,400 in
/// about half the runs on a two-core machine); past a handful it is a
/// deadline authgate no longer keeps.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timed_out_calls_leave_the_store_whole(
    #[values(Backend::Sqlite, Backend::Postgres)] backend: Backend,
) {
    let server = TestServer::spawn_with(backend, STORM).await;
    let (acked, codes) = cancellation_storm(&server, Deadlines::Patient).await;
    let tonics = |(n, message): &(u64, String)| *n <= 5 && message == "Timeout expired";
    assert!(
        codes.0.iter().all(|(c, seen)| match c {
            Code::Ok | Code::DeadlineExceeded | Code::ResourceExhausted => true,
            Code::Cancelled => tonics(seen),
            _ => false,
        }),
        "a call answers, runs out of time or is shed: {codes:?}"
    );
    assert!(codes.0.contains_key(&Code::DeadlineExceeded), "{codes:?}");
    store_is_whole(&server, &acked).await;
    server.stop().await;
}

/// Reads what the server sends until it closes the connection; false if it
/// is still open after `within`.
async fn closed_within(stream: &mut tokio::net::TcpStream, within: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 4096];
    let reading = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(within, reading).await.is_ok()
}

/// The client half of an HTTP/2 handshake, after which this peer never
/// reads, acknowledges or answers anything: a peer that vanished.
async fn silent_http2_peer(addr: std::net::SocketAddr) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    stream
}

/// Connections cannot be held open for nothing: one that never speaks is
/// closed after the handshake timeout, one whose peer stops answering
/// after the keepalive timeout, and any after its age and grace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_half_open_connections_are_closed() {
    let silent =
        TestServer::spawn_with(Backend::Sqlite, "[server]\nhandshake_timeout = \"300ms\"").await;
    let mut never_speaks = tokio::net::TcpStream::connect(silent.addr).await.unwrap();
    assert!(closed_within(&mut never_speaks, Duration::from_secs(10)).await);
    // The server still serves those who do speak.
    check(
        &mut silent.access().await,
        "login",
        subject("ann", "192.0.2.3"),
    )
    .await;
    silent.stop().await;

    let pinging = TestServer::spawn_with(
        Backend::Sqlite,
        "[server]\nkeepalive_interval = \"200ms\"\nkeepalive_timeout = \"200ms\"",
    )
    .await;
    let mut vanished = silent_http2_peer(pinging.addr).await;
    assert!(closed_within(&mut vanished, Duration::from_secs(10)).await);
    pinging.stop().await;

    let ageing = TestServer::spawn_with(
        Backend::Sqlite,
        "[server]\nmax_connection_age = \"300ms\"\nmax_connection_age_grace = \"300ms\"",
    )
    .await;
    let mut old = silent_http2_peer(ageing.addr).await;
    assert!(closed_within(&mut old, Duration::from_secs(10)).await);
    ageing.stop().await;
}

/// kill -9 in the middle of a stream of failures that lock: every failure
/// acknowledged is stored, and every lock stored has exactly one lockout
/// event, whatever the moment the process died.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_nothing(
    #[values(Backend::Sqlite, Backend::Postgres)] backend: Backend,
) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    let db = TestDb::new(backend).await;
    let dir = tempfile::tempdir().unwrap();
    // Every failure locks its user: each call is a lock and its event.
    std::fs::write(
        dir.path().join("authgate.toml"),
        "[[contexts.login.rules]]\nname = \"user\"\nkey = \"user\"\nwindow = \"30m\"\n\
         lock_after = 1\nlockout = [\"30m\"]\n",
    )
    .unwrap();
    let server = ChildServer::spawn(
        dir.path(),
        &[],
        &[
            ("AUTHGATE_DATABASE__URL", db.url()),
            ("AUTHGATE_SERVER__LISTEN", "127.0.0.1:0"),
        ],
    );
    let acked_total = Arc::new(AtomicU64::new(0));
    let callers: Vec<_> = (0..16)
        .map(|n| {
            let addr = server.addr;
            let acked_total = acked_total.clone();
            tokio::spawn(async move {
                let mut c = proto::access_service_client::AccessServiceClient::connect(format!(
                    "http://{addr}"
                ))
                .await
                .unwrap();
                let mut acked: BTreeMap<String, u64> = BTreeMap::new();
                for i in 0.. {
                    let user = format!("k{n}x{i}");
                    let answer = c
                        .record_failure(proto::RecordFailureRequest {
                            context: "login".into(),
                            subject: subject(&user, &format!("203.0.113.{n}")),
                            activity: String::new(),
                        })
                        .await;
                    if answer.is_err() {
                        break;
                    }
                    *acked.entry(user).or_default() += 1;
                    acked_total.fetch_add(1, Ordering::SeqCst);
                }
                acked
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while acked_total.load(Ordering::SeqCst) < 300 {
        assert!(Instant::now() < deadline, "the load never got going");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.kill();
    let mut acked = BTreeMap::new();
    for caller in callers {
        acked.extend(caller.await.unwrap());
    }

    let stored: BTreeMap<String, i64> = db
        .pairs("SELECT user_id, failures_total FROM key_state WHERE rule = 'user'")
        .await
        .into_iter()
        .collect();
    for (user, n) in &acked {
        let kept = stored.get(user).copied().unwrap_or(0);
        assert!(kept >= *n as i64, "{user}: {n} acknowledged, {kept} stored");
    }
    let locks = db
        .count("SELECT CAST(COALESCE(SUM(lockouts_total), 0) AS BIGINT) FROM key_state")
        .await;
    let lock_events = db
        .count("SELECT COUNT(*) FROM security_event WHERE kind IN ('lockout', 'permanent_lockout')")
        .await;
    assert!(locks >= 300, "{locks} locks");
    assert_eq!(lock_events, locks, "exactly one lockout event per lock");
    let failures = db
        .count("SELECT CAST(COALESCE(SUM(failures_total), 0) AS BIGINT) FROM key_state WHERE rule = 'user'")
        .await;
    let audited = db
        .count("SELECT COUNT(*) FROM security_event WHERE kind = 'failure_recorded'")
        .await;
    assert_eq!(audited, failures, "each stored failure is audited");
}
