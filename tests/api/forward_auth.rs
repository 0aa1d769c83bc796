//! HTTP forward auth (`[gateway.http]`): through a real nginx with the
//! `auth_request` configuration README "Behind a gateway" gives, in front of an
//! upstream that records what reached it, and straight against the
//! endpoints as Traefik and Caddy call them.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::HeaderMap;
use rstest::rstest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::*;

/// "web" locks a client address after 3 failures; "/admin" is judged by
/// "strict", which locks after 1.
const CONFIG: &str = r#"
[gateway]
default_context = "web"
[[gateway.routes]]
path_prefix = "/admin"
context = "strict"
[gateway.http]
listen = "127.0.0.1:0"
[[contexts.web.rules]]
name = "client"
key = "ip"
window = "10m"
lock_after = 3
lockout = ["15m"]
[[contexts.strict.rules]]
name = "client"
key = "ip"
window = "10m"
lock_after = 1
lockout = ["15m"]
"#;

/// An HTTP answer as a client received it, header names in lower case.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {:?}", self.body))
    }
}

/// One HTTP/1.0 request from the loopback address `from` (any of
/// 127.0.0.0/8 is this host's), so that one test has many clients.
async fn send(from: &str, to: SocketAddr, target: &str, headers: &[(&str, &str)]) -> Reply {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    let local: IpAddr = from.parse().expect("address");
    socket.bind(SocketAddr::new(local, 0)).expect("bind");
    let mut conn = socket.connect(to).await.expect("connect");
    let mut request = format!("GET {target} HTTP/1.0\r\nHost: app.example\r\n");
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    conn.write_all(request.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut raw))
        .await
        .expect("answered in time")
        .expect("read");
    let raw = String::from_utf8(raw).expect("UTF-8 answer");
    let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP answer");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Reply {
        status,
        headers,
        body: body.to_owned(),
    }
}

/// The headers of a request as Traefik's ForwardAuth sends them.
fn traefik<'a>(uri: &'a str, client: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("X-Forwarded-Method", "GET"),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Host", "app.example"),
        ("X-Forwarded-Uri", uri),
        ("X-Forwarded-For", client),
    ]
}

fn keyed<'a>(mut headers: Vec<(&'a str, &'a str)>, bearer: &'a str) -> Vec<(&'a str, &'a str)> {
    headers.push(("Authorization", bearer));
    headers
}

/// The upstream nginx protects: answers 200 and keeps the headers of every
/// request that reached it.
struct Upstream {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<HeaderMap>>>,
}

impl Upstream {
    async fn start() -> Upstream {
        let seen: Arc<Mutex<Vec<HeaderMap>>> = Arc::default();
        let record = seen.clone();
        let app = axum::Router::new().fallback(move |headers: HeaderMap| {
            record.lock().unwrap().push(headers);
            async { "upstream" }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Upstream { addr, seen }
    }

    fn requests(&self) -> Vec<HeaderMap> {
        self.seen.lock().unwrap().clone()
    }
}

/// nginx, configured as README "Behind a gateway" says, in the foreground; killed
/// when dropped.
struct Nginx {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

fn nginx_bin() -> PathBuf {
    ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .expect("nginx is installed (apt-get install nginx-light; scripts/test.sh does)")
}

impl Nginx {
    async fn start(authgate: SocketAddr, upstream: SocketAddr, key: &str) -> Nginx {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let d = dir.path().display();
        let config = format!(
            r#"
daemon off;
master_process off;
worker_processes 1;
user root;
error_log {d}/error.log info;
pid {d}/nginx.pid;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;

    server {{
        listen 127.0.0.1:{port};

        location / {{
            auth_request /authgate;
            auth_request_set $authgate_decision $upstream_http_x_authgate_decision;
            auth_request_set $authgate_reason $upstream_http_x_authgate_reason;
            auth_request_set $authgate_rule $upstream_http_x_authgate_rule;
            auth_request_set $authgate_remaining $upstream_http_x_authgate_remaining;
            auth_request_set $authgate_challenge $upstream_http_x_authgate_challenge;
            auth_request_set $authgate_fail_open $upstream_http_x_authgate_fail_open;
            auth_request_set $authgate_retry_after $upstream_http_retry_after;
            # Set, or removed when empty, whatever the client sent.
            proxy_set_header X-Authgate-Decision $authgate_decision;
            proxy_set_header X-Authgate-Reason $authgate_reason;
            proxy_set_header X-Authgate-Rule $authgate_rule;
            proxy_set_header X-Authgate-Remaining $authgate_remaining;
            proxy_set_header X-Authgate-Challenge $authgate_challenge;
            proxy_set_header X-Authgate-Fail-Open $authgate_fail_open;
            error_page 403 = @authgate_refused;
            proxy_pass http://{upstream};
        }}

        location = /authgate {{
            internal;
            proxy_pass http://{authgate}/nginx;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_set_header Authorization "Bearer {key}";
            proxy_set_header X-Original-Method $request_method;
            proxy_set_header X-Original-URI $request_uri;
            proxy_set_header X-Forwarded-Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        }}

        location @authgate_refused {{
            default_type application/json;
            if ($authgate_decision = blocked) {{
                add_header Retry-After $authgate_retry_after always;
                return 429 '{{"decision":"blocked","reason":"$authgate_reason"}}\n';
            }}
            return 403 '{{"decision":"$authgate_decision","reason":"$authgate_reason"}}\n';
        }}
    }}
}}
"#
        );
        let conf = dir.path().join("nginx.conf");
        std::fs::write(&conf, config).expect("write nginx.conf");
        let child = Command::new(nginx_bin())
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx starts");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut nginx = Nginx { child, addr, dir };
        // nginx is another process: its port is open once it has read its
        // configuration, or it has exited saying why.
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return nginx;
            }
            if let Ok(Some(status)) = nginx.child.try_wait() {
                panic!("nginx exited ({status}):\n{}", nginx.log());
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("nginx never listened:\n{}", nginx.log());
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// RecordFailure for the client address `ip`, as the service behind the
/// proxy would on a failed login.
async fn fail_from(
    c: &mut authgate::grpc::proto::access_service_client::AccessServiceClient<Keyed>,
    context: &str,
    ip: &str,
) {
    c.record_failure(authgate::grpc::proto::RecordFailureRequest {
        context: context.into(),
        subject: subject("", ip),
        activity: String::new(),
    })
    .await
    .expect("RecordFailure");
}

fn seen<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_lets_allowed_clients_through_and_refuses_blocked_ones_with_429(
    #[values(Backend::Sqlite, Backend::Postgres)] backend: Backend,
) {
    let keys = TestKeys::new();
    let server = TestServer::spawn_with(backend, &format!("{}{CONFIG}", keys.toml)).await;
    let upstream = Upstream::start().await;
    let nginx = Nginx::start(
        server.forward_auth.expect("gateway.http listens"),
        upstream.addr,
        &keys.check,
    )
    .await;

    // A client's own x-authgate-* headers never reach the upstream as sent.
    let r = send(
        "127.0.0.2",
        nginx.addr,
        "/app?x=1",
        &[
            ("X-Authgate-Decision", "blocked"),
            ("X-Authgate-Fail-Open", "true"),
        ],
    )
    .await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "upstream"),
        "{}",
        nginx.log()
    );
    let reached = upstream.requests();
    assert_eq!(reached.len(), 1);
    let h = &reached[0];
    assert_eq!(seen(h, "x-authgate-decision"), Some("allow"));
    assert_eq!(seen(h, "x-authgate-reason"), Some("ok"));
    assert_eq!(seen(h, "x-authgate-remaining"), Some("3"));
    assert_eq!(seen(h, "x-authgate-fail-open"), None);
    assert_eq!(h.get_all("x-authgate-decision").iter().count(), 1);

    // Locked by its address as nginx forwards it: refused with 429, never
    // reaching the upstream, even claiming to be allowed.
    let mut c = keyed_access(server.channel().await, &keys.check);
    for _ in 0..3 {
        fail_from(&mut c, "web", "127.0.0.3").await;
    }
    let r = send(
        "127.0.0.3",
        nginx.addr,
        "/app",
        &[("X-Authgate-Decision", "allow")],
    )
    .await;
    assert_eq!(r.status, 429, "{r:?}\n{}", nginx.log());
    assert_eq!(r.header("retry-after"), Some("900"));
    assert_eq!(r.json()["decision"], "blocked");
    assert_eq!(r.json()["reason"], "locked");
    assert_eq!(
        upstream.requests().len(),
        1,
        "the blocked client got nowhere"
    );

    // Its neighbour is not.
    let r = send("127.0.0.2", nginx.addr, "/app", &[]).await;
    assert_eq!(r.status, 200);
    assert!(
        !nginx.log().contains("auth request unexpected status"),
        "every answer was one auth_request understands:\n{}",
        nginx.log()
    );
    server.stop().await;
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_client_is_429_for_traefik_and_caddy_and_403_blocked_for_nginx(
    #[values(Backend::Sqlite, Backend::Postgres)] backend: Backend,
) {
    let keys = TestKeys::new();
    let server = TestServer::spawn_with(backend, &format!("{}{CONFIG}", keys.toml)).await;
    let at = server.forward_auth.expect("gateway.http listens");
    let bearer = format!("Bearer {}", keys.check);
    let with_key = |h| keyed(h, &bearer);
    let mut c = keyed_access(server.channel().await, &keys.check);
    fail_from(&mut c, "strict", "198.51.100.7").await;

    // The right-most X-Forwarded-For entry is the client by default.
    let locked = "203.0.113.1, 198.51.100.7";
    let r = send(
        "127.0.0.1",
        at,
        "/",
        &with_key(traefik("/admin/users", locked)),
    )
    .await;
    assert_eq!(r.status, 429, "{r:?}");
    assert_eq!(r.header("retry-after"), Some("900"));
    assert_eq!(r.header("x-authgate-decision"), Some("blocked"));
    assert_eq!(r.header("ratelimit-policy"), Some("\"client\";q=1;w=600"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.json()["retry_after"], 900);

    // The path as the proxy routed it, not as the client spelled it.
    for spelled in ["/%61dmin", "//admin/", "/public/../admin?x=1"] {
        let r = send("127.0.0.1", at, "/", &with_key(traefik(spelled, locked))).await;
        assert_eq!(r.status, 429, "{spelled}: {r:?}");
    }
    let r = send("127.0.0.1", at, "/", &with_key(traefik("/public", locked))).await;
    assert_eq!(
        (r.status, r.header("x-authgate-decision")),
        (200, Some("allow"))
    );
    assert!(r.body.is_empty());

    let nginx = |uri| {
        with_key(vec![
            ("X-Original-Method", "POST"),
            ("X-Original-URI", uri),
            ("X-Forwarded-Host", "app.example"),
            ("X-Forwarded-For", "198.51.100.7"),
        ])
    };
    let r = send("127.0.0.1", at, "/nginx", &nginx("/admin")).await;
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(r.header("x-authgate-decision"), Some("blocked"));
    assert_eq!(r.header("retry-after"), Some("900"));
    let r = send("127.0.0.1", at, "/nginx", &nginx("/")).await;
    assert_eq!(r.status, 200);

    // Each endpoint reads its own proxy's names only: nginx passes a
    // client's X-Forwarded-Uri on as it came.
    let mut spoofed = nginx("/admin");
    spoofed.retain(|(k, _)| *k != "X-Original-URI");
    spoofed.push(("X-Forwarded-Uri", "/public"));
    let r = send("127.0.0.1", at, "/nginx", &spoofed).await;
    assert_eq!(r.status, 400, "{r:?}");
    assert_eq!(r.json()["field"], "x-original-uri");

    let scrape = authgate::telemetry::metrics::handle().render();
    assert!(
        scrape.contains(
            "authgate_decisions_total{rpc=\"forward_auth\",context=\"strict\",decision=\"blocked\"}"
        ),
        "verdicts are counted"
    );
    assert!(
        metric(
            &scrape,
            "authgate_forward_auth_duration_seconds_count{endpoint=\"/nginx\",status=\"403\"}"
        ) >= 1.0,
        "answers are timed"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_what_is_needed_are_400_and_record_nothing() {
    let keys = TestKeys::new();
    let server = TestServer::spawn_with(Backend::Sqlite, &format!("{}{CONFIG}", keys.toml)).await;
    let at = server.forward_auth.expect("gateway.http listens");
    let bearer = format!("Bearer {}", keys.check);
    let client = "192.0.2.77";
    // Each names the header it is about.
    let cases = [
        ("x-forwarded-method", None),
        ("x-forwarded-method", Some(("X-Forwarded-Method", "GE T"))),
        ("x-forwarded-uri", None),
        ("x-forwarded-uri", Some(("X-Forwarded-Uri", "/%zz"))),
        ("x-forwarded-uri", Some(("X-Forwarded-Uri", "/../etc"))),
        ("x-forwarded-host", None),
        ("x-forwarded-for", None),
        (
            "x-forwarded-for",
            Some(("X-Forwarded-For", "10.0.0.1, not-an-ip")),
        ),
    ];
    for (field, replace) in cases {
        let mut h = traefik("/app", client);
        h.retain(|(k, _)| !k.eq_ignore_ascii_case(field));
        h.extend(replace);
        h.push(("Authorization", &bearer));
        let r = send("127.0.0.1", at, "/", &h).await;
        assert_eq!(r.status, 400, "{h:?}: {r:?}");
        assert_eq!(r.json()["reason"], "invalid_request", "{r:?}");
        assert_eq!(r.json()["field"], field, "{r:?}");
    }
    let mut admin = keyed_admin(server.channel().await, &keys.admin);
    let states = admin
        .get_subject(authgate::grpc::proto::GetSubjectRequest {
            actor_user_id: "admin".into(),
            subject: subject("", client),
        })
        .await
        .expect("GetSubject")
        .into_inner()
        .states;
    assert!(
        states.iter().all(|s| s.failures_total == 0),
        "nothing recorded: {states:?}"
    );
    let h = [traefik("/app", client), vec![("Authorization", &bearer)]].concat();
    let r = send("127.0.0.1", at, "/", &h).await;
    assert_eq!(
        (r.status, r.header("x-authgate-remaining")),
        (200, Some("3"))
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_need_a_check_key_or_a_trusted_network() {
    let keys = TestKeys::new();
    let toml = format!("{}{CONFIG}", keys.toml).replace(
        "default_context = \"web\"\n",
        "default_context = \"web\"\ntrusted_proxies = [\"127.0.0.2/32\"]\n",
    );
    let server = TestServer::spawn_with(Backend::Sqlite, &toml).await;
    let at = server.forward_auth.expect("gateway.http listens");
    let ask = |from: &'static str, authorization: Option<String>| async move {
        let mut h = traefik("/app", "192.0.2.8");
        let value = authorization.unwrap_or_default();
        if !value.is_empty() {
            h.push(("Authorization", &value));
        }
        send(from, at, "/", &h).await
    };

    let r = ask("127.0.0.1", None).await;
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(r.json()["reason"], "unauthenticated");
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"authgate\"")
    );
    let r = ask("127.0.0.1", Some("Bearer not-a-key".into())).await;
    assert_eq!(r.status, 401, "{r:?}");
    let r = ask("127.0.0.1", Some(format!("Bearer {}", keys.admin))).await;
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(r.json()["reason"], "missing_role");
    let r = ask("127.0.0.1", Some(format!("Bearer {}", keys.check))).await;
    assert_eq!(r.status, 200, "{r:?}");

    // A trusted proxy needs no key, and its client's own Authorization
    // header is not taken for one.
    let r = ask("127.0.0.2", None).await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = ask("127.0.0.2", Some("Bearer the-users-own-token".into())).await;
    assert_eq!(r.status, 200, "{r:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fail_open_context_lets_requests_through_while_postgres_is_down() {
    let cluster = PgCluster::start();
    // "web", the default context, fails open; "/admin"'s "strict" does not.
    let config = format!(
        "[database]\nacquire_timeout = \"500ms\"\n[contexts.web]\nfailure_mode = \"fail_open\"\n{CONFIG}"
    );
    let server = TestServer::spawn_on(cluster.database().await, &config).await;
    let at = server.forward_auth.expect("gateway.http listens");
    let r = send("127.0.0.1", at, "/", &traefik("/app", "192.0.2.9")).await;
    assert_eq!((r.status, r.header("x-authgate-fail-open")), (200, None));

    cluster.stop();
    let r = send("127.0.0.1", at, "/", &traefik("/app/latest", "192.0.2.9")).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("x-authgate-fail-open"), Some("true"));
    assert_eq!(r.header("x-authgate-reason"), Some("store_unavailable"));
    let r = send("127.0.0.1", at, "/", &traefik("/admin", "192.0.2.9")).await;
    assert_eq!(r.status, 503, "fail_closed: {r:?}");
    assert_eq!(r.json()["reason"], "store_unavailable");
    cluster.restart();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_hops_reach_past_a_load_balancer_in_front_of_the_proxy() {
    let config = CONFIG.replace(
        "listen = \"127.0.0.1:0\"\n",
        "listen = \"127.0.0.1:0\"\ntrusted_hops = 2\n",
    );
    let server = TestServer::spawn_with(Backend::Sqlite, &config).await;
    let at = server.forward_auth.expect("gateway.http listens");
    let mut c = server.access().await;
    fail(&mut c, "strict", subject("", "203.0.113.1")).await;
    // client, load balancer (as the proxy saw it): the client is judged.
    let forwarded = "198.51.100.99, 203.0.113.1, 10.0.0.5";
    let r = send("127.0.0.1", at, "/", &traefik("/admin", forwarded)).await;
    assert_eq!(r.status, 429, "{r:?}");
    // Fewer entries than hops: the nearest address known to be real.
    let r = send("127.0.0.1", at, "/", &traefik("/admin", "203.0.113.1")).await;
    assert_eq!(r.status, 429, "{r:?}");
    let r = send("127.0.0.1", at, "/", &traefik("/admin", "10.0.0.5")).await;
    assert_eq!(r.status, 200, "{r:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_banned_range_is_refused_at_the_proxy_with_its_end() {
    use authgate::grpc::proto;
    let keys = TestKeys::new();
    let server = TestServer::spawn_with(Backend::Sqlite, &format!("{}{CONFIG}", keys.toml)).await;
    let at = server.forward_auth.expect("gateway.http listens");
    let bearer = format!("Bearer {}", keys.check);
    keyed_admin(server.channel().await, &keys.admin)
        .ban(proto::BanRequest {
            actor_user_id: "admin".into(),
            ban: Some(proto::BanSpec {
                target: Some(proto::ban_spec::Target::Range("198.51.100.0/24".into())),
                lifetime: Some(proto::ban_spec::Lifetime::Duration(prost_types::Duration {
                    seconds: 600,
                    nanos: 0,
                })),
                reason: "scanner".into(),
                ..Default::default()
            }),
        })
        .await
        .expect("Ban");
    let r = send(
        "127.0.0.1",
        at,
        "/",
        &keyed(traefik("/public", "198.51.100.99"), &bearer),
    )
    .await;
    assert_eq!(r.status, 429, "{r:?}");
    assert_eq!(r.header("x-authgate-reason"), Some("banned"));
    assert_eq!(r.header("retry-after"), Some("600"));
    let r = send(
        "127.0.0.1",
        at,
        "/",
        &keyed(traefik("/public", "198.51.101.1"), &bearer),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    server.stop().await;
}
