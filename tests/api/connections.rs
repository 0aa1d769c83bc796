//! One connection must not hold a replica's capacity: abusive HTTP/2 peers,
//! on raw frames (tests/python/h2_abuse.py, with Python's `h2`), against the
//! real binary, while a normal client on another connection is served.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use authgate::grpc::proto;
use authgate::grpc::proto::access_service_client::AccessServiceClient;
use serde_json::Value;
use tokio::sync::mpsc;
use tonic::transport::Channel;

use crate::helpers::*;

/// How long the abusive client may take to be in place.
const PATIENCE: Duration = Duration::from_secs(60);

/// tests/python/h2_abuse.py in one of its modes.
struct Abuse {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
}

impl Abuse {
    fn start(mode: &str, addr: SocketAddr, args: &[&str]) -> Abuse {
        use std::io::BufRead;
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/h2_abuse.py");
        let mut child = Command::new("python3")
            .arg(script)
            .arg(mode)
            .arg(addr.to_string())
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 must be installed to run the HTTP/2 abuse tests");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                let _ = tx.send(line);
            }
        });
        Abuse { child, lines }
    }

    /// Waits for the script's "ready": its calls are in place.
    async fn ready(&mut self) {
        let waiting = async {
            while let Some(line) = self.lines.recv().await {
                if line == "ready" {
                    return;
                }
            }
            panic!(
                "h2_abuse.py ended before it was ready; if h2 is missing: \
                 pip install -r tests/python/requirements.txt"
            );
        };
        tokio::time::timeout(PATIENCE, waiting)
            .await
            .expect("h2_abuse.py ready in time");
    }

    /// Closes its standard input (the end of a holding mode), and returns
    /// what it reports.
    async fn report(mut self) -> Value {
        drop(self.child.stdin.take());
        let mut last = None;
        let reading = async {
            while let Some(line) = self.lines.recv().await {
                last = Some(line);
            }
        };
        tokio::time::timeout(PATIENCE, reading)
            .await
            .expect("h2_abuse.py reports in time");
        let status = self.child.wait().expect("h2_abuse.py exits");
        assert!(status.success(), "h2_abuse.py failed: {status:?}");
        let last = last.expect("a report");
        serde_json::from_str(&last).unwrap_or_else(|e| panic!("{e}: {last}"))
    }

    /// Runs a mode that ends by itself, and returns what it reports.
    async fn run(mode: &str, addr: SocketAddr, args: &[&str]) -> Value {
        Abuse::start(mode, addr, args).report().await
    }
}

impl Drop for Abuse {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// authgate as it runs in production, on a fresh SQLite database, with the
/// test keys in its configuration file and `env` on top.
struct Replica {
    server: ChildServer,
    keys: TestKeys,
    db: TestDb,
    _dir: tempfile::TempDir,
}

impl Replica {
    async fn start(env: &[(&str, &str)]) -> Replica {
        let keys = TestKeys::new();
        let db = TestDb::new(Backend::Sqlite).await;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("authgate.toml"), &keys.toml).unwrap();
        let mut all = vec![
            ("AUTHGATE_DATABASE__URL", db.url()),
            ("AUTHGATE_SERVER__LISTEN", "127.0.0.1:0"),
        ];
        all.extend_from_slice(env);
        let server = ChildServer::spawn(dir.path(), &[], &all);
        Replica {
            server,
            keys,
            db,
            _dir: dir,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.server.addr
    }

    /// A client with the check key, on a connection of its own.
    async fn client(&self) -> AccessServiceClient<Keyed> {
        client(self.addr(), &self.keys.check).await
    }

    fn metric(&self, series: &str) -> f64 {
        metric(&http_get(&self.server.metrics_url), series)
    }
}

/// A client with `key`, on a connection of its own.
async fn client(addr: SocketAddr, key: &str) -> AccessServiceClient<Keyed> {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .expect("connect");
    keyed_access(channel, key)
}

/// `n` CheckAccess calls one after another: how long each took, and the
/// codes of those that failed.
async fn served(
    c: &mut AccessServiceClient<Keyed>,
    n: usize,
) -> (Vec<Duration>, BTreeMap<String, usize>) {
    let mut took = Vec::new();
    let mut failed = BTreeMap::new();
    for i in 0..n {
        let start = Instant::now();
        let answer = c
            .check_access(proto::CheckAccessRequest {
                context: "login".into(),
                subject: subject(&format!("normal{i}"), "192.0.2.77"),
            })
            .await;
        took.push(start.elapsed());
        if let Err(s) = answer {
            *failed.entry(format!("{:?}", s.code())).or_default() += 1;
        }
    }
    took.sort();
    (took, failed)
}

/// The median of sorted durations.
fn median(sorted: &[Duration]) -> Duration {
    sorted[sorted.len() / 2]
}

/// The normal client's latency while under attack against its baseline,
/// measured in the same test: a generous bound, since the attacking client
/// shares the machine's cores with the server.
const LATENCY_RATIO: f64 = 8.0;

/// Asserts that `during` keeps close to `baseline`, and says what it was.
fn close_to_baseline(what: &str, baseline: &[Duration], during: &[Duration]) {
    let ratio = median(during).as_secs_f64() / median(baseline).as_secs_f64();
    eprintln!(
        "{what}: normal client's median {:?} against {:?} before (x{ratio:.2})",
        median(during),
        median(baseline)
    );
    assert!(
        ratio <= LATENCY_RATIO,
        "{what}: the normal client's median latency went from {:?} to {:?}",
        median(baseline),
        median(during)
    );
}

/// The measurement: one connection opens 1,000 calls that send
/// headers and never a body. It gets at most the advertised 100 streams,
/// and a normal client on another connection is served as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_of_bodiless_calls_leaves_other_clients_served() {
    let replica = Replica::start(&[]).await;
    let mut normal = replica.client().await;
    served(&mut normal, 100).await;
    let (baseline, failed) = served(&mut normal, 300).await;
    assert!(failed.is_empty(), "{failed:?}");

    let key = replica.keys.check.clone();
    let mut attack = Abuse::start(
        "bodiless",
        replica.addr(),
        &["--key", &key, "--calls", "1000"],
    );
    attack.ready().await;
    let (during, failed) = served(&mut normal, 300).await;
    let report = attack.report().await;
    eprintln!("bodiless attack: {report}");
    assert!(
        failed.is_empty(),
        "the normal client was refused while one connection held bodiless calls: {failed:?}"
    );
    close_to_baseline("1,000 bodiless calls on one connection", &baseline, &during);
    assert_eq!(report["max_concurrent_streams"], 100, "{report}");
    assert!(report["most_open"].as_u64().unwrap() <= 100, "{report}");
}

/// A replica of `permits` permits that one connection may take all of,
/// calls of at most `timeout`, and a keyed connection holding every permit
/// with bodiless calls.
async fn held_by_one_connection(permits: usize, timeout: &str) -> (Replica, Abuse) {
    let permits = permits.to_string();
    let replica = Replica::start(&[
        ("AUTHGATE_SERVER__MAX_CONCURRENT_REQUESTS", &permits),
        ("AUTHGATE_SERVER__MAX_CONNECTION_SHARE", "1.0"),
        ("AUTHGATE_SERVER__REQUEST_TIMEOUT", timeout),
    ])
    .await;
    let key = replica.keys.check.clone();
    let mut holder = Abuse::start(
        "bodiless",
        replica.addr(),
        &["--key", &key, "--calls", &permits],
    );
    holder.ready().await;
    (replica, holder)
}

/// A bodiless call gives its permit back at its deadline, though its
/// connection stays open: here one connection may take every permit
/// (share 1), and the replica serves again once their deadline passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodiless_calls_give_their_permits_back_at_their_deadline() {
    let (replica, attack) = held_by_one_connection(8, "1s").await;
    let mut normal = replica.client().await;
    let start = Instant::now();
    loop {
        let (_, failed) = served(&mut normal, 1).await;
        if failed.is_empty() {
            break;
        }
        assert_eq!(failed.keys().collect::<Vec<_>>(), ["ResourceExhausted"]);
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the permits of calls past their 1 s deadline never came back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let report = attack.report().await;
    assert_eq!(report["codes"]["4"], 8, "DEADLINE_EXCEEDED each: {report}");
    assert_eq!(report["closed"], 0, "the connection stayed open: {report}");
}

/// Clients that never read: their flow-control window is 0, so no answer
/// can be sent and every stream stays open. Each connection keeps at most
/// its 100 streams, memory stays put, and the normal client is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_never_read_pin_bounded_memory() {
    let replica = Replica::start(&[]).await;
    // Calls at once open every pooled database connection, each with a
    // thread and a page cache: memory of the server's, not of the attack.
    let warming: Vec<_> = (0..32)
        .map(|_| {
            let (addr, key) = (replica.addr(), replica.keys.check.clone());
            tokio::spawn(async move { served(&mut client(addr, &key).await, 20).await })
        })
        .collect();
    for warm in warming {
        warm.await.unwrap();
    }
    let mut normal = replica.client().await;
    let (baseline, _) = served(&mut normal, 300).await;
    let before = replica.server.rss_kib();

    let key = replica.keys.check.clone();
    let mut attack = Abuse::start(
        "stalled",
        replica.addr(),
        &["--key", &key, "--calls", "5000", "--connections", "4"],
    );
    attack.ready().await;
    let (during, failed) = served(&mut normal, 300).await;
    let held = replica.server.rss_kib();
    let report = attack.report().await;
    let growth = held.saturating_sub(before);
    eprintln!(
        "stalled attack: {report}; RSS {before} KiB before, {held} KiB with its streams open \
         (+{growth} KiB)"
    );
    assert!(
        growth < 8 * 1024,
        "unread answers grew the server by {growth} KiB ({before} -> {held})"
    );
    assert!(
        report["open_now"].as_u64().unwrap() <= 4 * 100,
        "at most 100 stalled streams a connection: {report}"
    );
    assert!(failed.is_empty(), "{failed:?}");
    close_to_baseline("4 connections that never read", &baseline, &during);
}

/// A call without a credential is answered before it could take a permit:
/// here a keyed connection holds every permit, and an unauthenticated
/// connection's 1,000 bodiless calls are still answered UNAUTHENTICATED
/// at once, not RESOURCE_EXHAUSTED nor at their deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unauthenticated_connection_holds_nothing() {
    let (replica, holder) = held_by_one_connection(4, "30s").await;

    let mut stranger = Abuse::start("bodiless", replica.addr(), &["--calls", "1000"]);
    stranger.ready().await;
    let report = stranger.report().await;
    let answers: BTreeMap<String, u64> = serde_json::from_value(report["codes"].clone()).unwrap();
    assert_eq!(
        answers,
        BTreeMap::from([("16".to_owned(), 1000)]),
        "every call UNAUTHENTICATED: {report}"
    );
    let slowest = report["answer_ms"]
        .as_array()
        .and_then(|a| a.last())
        .and_then(Value::as_f64)
        .unwrap();
    assert!(
        slowest < 5000.0,
        "answered at once, not at the deadline: {slowest} ms"
    );
    holder.report().await;

    // With the permits free again, an unauthenticated flood leaves the
    // normal client served.
    let mut normal = replica.client().await;
    let mut stranger = Abuse::start("bodiless", replica.addr(), &["--calls", "2000"]);
    let (_, failed) = served(&mut normal, 300).await;
    stranger.ready().await;
    stranger.report().await;
    assert!(failed.is_empty(), "{failed:?}");
}

/// SETTINGS_MAX_CONCURRENT_STREAMS is the configured value, and streams a
/// peer opens past it are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_limit_is_advertised_and_enforced() {
    let replica = Replica::start(&[("AUTHGATE_SERVER__MAX_CONCURRENT_STREAMS", "37")]).await;
    let key = replica.keys.check.clone();
    let report = Abuse::run(
        "settings",
        replica.addr(),
        &["--key", &key, "--reckless", "--calls", "100"],
    )
    .await;
    assert_eq!(report["settings"]["MAX_CONCURRENT_STREAMS"], 37, "{report}");
    assert_eq!(report["refused"], 100 - 37, "{report}");
}

/// Rapid reset with bodies: each call is sent whole and reset in the same
/// write. None of them was worth running: their work is dropped before it
/// touches the store, while calls that are not reset are all recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_reset_before_their_work_touched_the_store_do_not_run() {
    let replica = Replica::start(&[]).await;
    let key = replica.keys.check.clone();
    let abandoned_before = replica.metric("authgate_calls_abandoned_total");
    let report = Abuse::run(
        "reset",
        replica.addr(),
        &["--key", &key, "--calls", "200", "--kept", "50"],
    )
    .await;
    assert_eq!(report["kept_codes"]["0"], 50, "{report}");
    assert!(report["goaway"].is_null(), "{report}");
    let reset = replica
        .db
        .count("SELECT COUNT(*) FROM key_state WHERE rule = 'user' AND user_id LIKE 'reset-%'")
        .await;
    let kept = replica
        .db
        .count("SELECT COUNT(*) FROM key_state WHERE rule = 'user' AND user_id LIKE 'kept-%'")
        .await;
    let abandoned = replica.metric("authgate_calls_abandoned_total") - abandoned_before;
    eprintln!(
        "rapid reset: {reset} of 200 reset calls stored, {kept} of 50 kept; {abandoned} abandoned; \
         GOAWAY during the flood: {}",
        report["flood_goaway"]
    );
    assert_eq!(kept, 50);
    assert!(reset <= 20, "{reset} of 200 reset calls ran to the store");
    assert!(abandoned >= 180.0, "{abandoned} calls counted as abandoned");
}

/// Connections past server.max_connections are closed at once; those open
/// are served, and a place freed is taken again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_maximum_are_closed_at_once() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let replica = Replica::start(&[("AUTHGATE_SERVER__MAX_CONNECTIONS", "3")]).await;
    let mut open = Vec::new();
    for _ in 0..3 {
        let mut c = replica.client().await;
        let (_, failed) = served(&mut c, 1).await;
        assert!(failed.is_empty(), "{failed:?}");
        open.push(c);
    }
    let mut extra = tokio::net::TcpStream::connect(replica.addr())
        .await
        .unwrap();
    let _ = extra
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await;
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match extra.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "a fourth connection was served");
    for c in &mut open {
        let (_, failed) = served(c, 1).await;
        assert!(failed.is_empty(), "{failed:?}");
    }
    assert!(replica.metric("authgate_connections_refused_total") >= 1.0);
    drop(open.pop());
    let start = Instant::now();
    loop {
        let channel = Channel::from_shared(format!("http://{}", replica.addr()))
            .unwrap()
            .connect()
            .await;
        if let Ok(channel) = channel {
            let mut c = keyed_access(channel, &replica.keys.check);
            if served(&mut c, 1).await.1.is_empty() {
                break;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the place of a closed connection was never freed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// h2 warns each time it closes an abusive connection with GOAWAY: a peer
/// that reconnects and does it again gets the line into the log a bounded
/// number of times, the rest only counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http2_stacks_goaway_warnings_are_rate_limited() {
    let replica = Replica::start(&[]).await;
    let report = Abuse::run("goaway", replica.addr(), &["--connections", "30"]).await;
    assert_eq!(report["goaway"]["ENHANCE_YOUR_CALM"], 30, "{report}");
    let suppressed = replica.metric("authgate_http2_warnings_suppressed_total");
    let (_, log) = replica.server.terminate();
    let h2_lines = log
        .iter()
        .filter(|l| l.contains("\"target\":\"h2::"))
        .count();
    eprintln!("30 GOAWAYs: {h2_lines} h2 warnings logged, {suppressed} suppressed");
    assert!(
        h2_lines <= 10,
        "{h2_lines} h2 warnings logged for 30 GOAWAYs"
    );
    assert_eq!(h2_lines as f64 + suppressed, 30.0);
}
