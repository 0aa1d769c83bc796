//! authgate behind a real Envoy: ext_authz, ext_proc and the rate-limit
//! service as Envoy calls them, driven by an HTTP client, judged against
//! the upstream's view.

use std::net::IpAddr;

use crate::envoy::*;
use crate::helpers::*;

const PASSWORD: &str = "right horse battery staple";

/// Context `name`'s rule "ip", locking an address for 30 minutes after 5
/// failures.
pub fn ip_rule(name: &str) -> String {
    format!(
        "[[contexts.{name}.rules]]\nname = \"ip\"\nkey = \"ip\"\nwindow = \"30m\"\n\
         lock_after = 5\nlockout = [\"30m\"]\n"
    )
}

/// Every request is judged in "web", by its ip rule.
fn web() -> String {
    let routes = "[gateway]\n[[gateway.routes]]\npath_prefix = \"/\"\ncontext = \"web\"\n";
    format!("{routes}{}", ip_rule("web"))
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("IP")
}

/// The upstream, behind an Envoy that asks `server` with ext_authz and
/// refuses requests when it cannot.
async fn behind_ext_authz(server: &TestServer) -> (Upstream, Envoy) {
    let upstream = Upstream::start(PASSWORD).await;
    let envoy = Envoy::start(&Bootstrap::new(&[server.addr], upstream.addr).with(
        Filter::ExtAuthz {
            failure_mode_allow: false,
        },
    ))
    .await;
    (upstream, envoy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ext_authz_blocks_a_locked_address_and_tells_the_upstream_of_the_rest() {
    let server = TestServer::spawn_with(Backend::Sqlite, &web()).await;
    let (upstream, envoy) = behind_ext_authz(&server).await;
    let mut access = server.access().await;
    for _ in 0..5 {
        fail(&mut access, "web", subject("", "127.0.0.2")).await;
    }

    let blocked = get(&plain_client(Some(ip("127.0.0.2"))), &envoy.url("/home"))
        .await
        .expect("envoy answers");
    assert_eq!(blocked.status, 429, "{blocked:?}\n{}", envoy.log());
    assert_eq!(blocked.header("retry-after"), Some("1800"));
    assert_eq!(
        blocked.header("ratelimit-policy"),
        Some("\"ip\";q=5;w=1800")
    );
    assert_eq!(blocked.header("ratelimit"), Some("\"ip\";r=0;t=1800"));
    assert!(
        blocked.body.contains(r#""reason":"locked""#),
        "{}",
        blocked.body
    );
    assert_eq!(upstream.requests(), 0);

    let allowed = send(
        &plain_client(Some(ip("127.0.0.3"))),
        "GET",
        &envoy.url("/home"),
        &[
            ("x-authgate-decision", "forged"),
            ("x-authgate-fail-open", "true"),
        ],
        "",
    )
    .await
    .expect("envoy answers");
    assert_eq!(allowed.status, 200, "{allowed:?}\n{}", envoy.log());
    assert_eq!(upstream.requests(), 1);
    assert_eq!(
        allowed.echoed("x-authgate-decision").as_deref(),
        Some("allow")
    );
    assert_eq!(allowed.echoed("x-authgate-reason").as_deref(), Some("ok"));
    assert_eq!(allowed.echoed("x-authgate-remaining").as_deref(), Some("5"));
    // A client's own copies are overwritten, or gone where authgate
    // wrote none.
    assert_eq!(
        allowed.echoed("x-authgate-fail-open"),
        None,
        "{}",
        allowed.body
    );
}

#[test]
fn every_bootstrap_the_harness_writes_is_one_envoy_accepts() {
    let at = "127.0.0.1:1".parse().expect("addr");
    let authz = Filter::ExtAuthz {
        failure_mode_allow: false,
    };
    let proc = Filter::ExtProc {
        failure_mode_allow: false,
    };
    let limit = Filter::RateLimit {
        domain: "web".into(),
        failure_mode_deny: true,
    };
    let plain = Bootstrap::new(&[at, at], at);
    for bootstrap in [
        plain.clone(),
        plain.clone().with(authz.clone()),
        plain.clone().with(proc.clone()),
        plain.clone().with(limit.clone()),
        plain.key("k").with(limit).with(authz).with(proc),
    ] {
        if let Err(said) = Envoy::validate(&bootstrap) {
            panic!("envoy refuses\n{}\n{said}", bootstrap.yaml());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ext_proc_locks_a_login_out_by_the_upstreams_own_answers() {
    let keys = TestKeys::new();
    let server = TestServer::spawn_with(Backend::Sqlite, &format!("{}{}", keys.toml, web())).await;
    let upstream = Upstream::start(PASSWORD).await;
    let envoy = Envoy::start(
        &Bootstrap::new(&[server.addr], upstream.addr)
            .key(&keys.check)
            .with(Filter::ExtProc {
                failure_mode_allow: false,
            }),
    )
    .await;
    let client = plain_client(Some(ip("127.0.0.4")));
    let url = envoy.url("/login");

    let first = login(&client, &url, "guess-1").await;
    assert_eq!(first.status, 401, "{first:?}\n{}", envoy.log());
    assert_eq!(first.header("x-authgate-remaining"), Some("4"));
    assert_eq!(first.header("retry-after"), None);
    for n in 2..=4 {
        let reply = login(&client, &url, &format!("guess-{n}")).await;
        assert_eq!(reply.status, 401);
    }
    // The fifth failure locks: its own 401 already says for how long.
    let fifth = login(&client, &url, "guess-5").await;
    assert_eq!(fifth.status, 401, "{fifth:?}");
    assert_eq!(fifth.header("x-authgate-decision"), Some("blocked"));
    assert_eq!(fifth.header("retry-after"), Some("1800"));

    let sixth = login(&client, &url, PASSWORD).await;
    assert_eq!(sixth.status, 429, "{sixth:?}\n{}", envoy.log());
    assert_eq!(sixth.header("retry-after"), Some("1800"));
    assert!(
        sixth.body.contains(r#""reason":"locked""#),
        "{}",
        sixth.body
    );
    assert_eq!(
        upstream.requests(),
        5,
        "the locked attempt never reached it"
    );

    let unlocked = keyed_admin(server.channel().await, &keys.admin)
        .admin_unlock(authgate::grpc::proto::AdminUnlockRequest {
            actor_user_id: "admin".into(),
            scope: Some(authgate::grpc::proto::admin_unlock_request::Scope::Subject(
                subject("", "127.0.0.4").expect("subject"),
            )),
        })
        .await
        .expect("AdminUnlock")
        .into_inner();
    assert_eq!(unlocked.unlocked, 1);
    let after = login(&client, &url, PASSWORD).await;
    assert_eq!(after.status, 200, "{after:?}\n{}", envoy.log());
    assert_eq!(
        after.echoed("x-authgate-decision").as_deref(),
        Some("allow")
    );
    assert_eq!(upstream.requests(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_authgate_gone_envoy_fails_as_configured() {
    let server = TestServer::spawn_with(Backend::Sqlite, &web()).await;
    let (upstream, envoy) = behind_ext_authz(&server).await;
    let client = plain_client(Some(ip("127.0.0.5")));
    let before = get(&client, &envoy.url("/home")).await.expect("answer");
    assert_eq!(before.status, 200, "{before:?}\n{}", envoy.log());

    server.stop().await;
    let after = get(&client, &envoy.url("/home")).await.expect("answer");
    // ext_authz's status_on_error, 403 unless configured otherwise.
    assert_eq!(after.status, 403, "{after:?}\n{}", envoy.log());
    assert_eq!(upstream.requests(), 1);
}

/// "feed" fails open, "web" (everything else) fails closed.
const FEED: &str = r#"
[database]
acquire_timeout = "500ms"
[gateway]
[[gateway.routes]]
path_prefix = "/feed"
context = "feed"
[[gateway.routes]]
path_prefix = "/"
context = "web"
[contexts.feed]
failure_mode = "fail_open"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_store_down_only_a_fail_open_context_passes_and_says_so() {
    // Its own cluster: stopping the shared one would break other tests.
    let cluster = PgCluster::start();
    let server = TestServer::spawn_on(
        cluster.database().await,
        &format!("{FEED}{}{}", ip_rule("feed"), ip_rule("web")),
    )
    .await;
    let (upstream, envoy) = behind_ext_authz(&server).await;
    let client = plain_client(Some(ip("127.0.0.6")));
    let up = get(&client, &envoy.url("/feed")).await.expect("answer");
    assert_eq!(up.status, 200, "{up:?}\n{}", envoy.log());
    assert_eq!(up.echoed("x-authgate-fail-open"), None);

    cluster.stop();
    let open = get(&client, &envoy.url("/feed")).await.expect("answer");
    assert_eq!(open.status, 200, "{open:?}\n{}", envoy.log());
    assert_eq!(open.echoed("x-authgate-fail-open").as_deref(), Some("true"));
    let closed = get(&client, &envoy.url("/home")).await.expect("answer");
    assert_eq!(closed.status, 503, "{closed:?}\n{}", envoy.log());
    assert!(
        closed.body.contains(r#""reason":"store_unavailable""#),
        "{}",
        closed.body
    );
    assert_eq!(upstream.requests(), 2);
}

/// The upstream behind an Envoy whose rate-limit filter asks `replicas`
/// about every request's address, in context "api".
async fn behind_rate_limit(replicas: &[std::net::SocketAddr]) -> (Upstream, Envoy) {
    let upstream = Upstream::start(PASSWORD).await;
    let envoy = Envoy::start(
        &Bootstrap::new(replicas, upstream.addr).with(Filter::RateLimit {
            domain: "api".into(),
            failure_mode_deny: true,
        }),
    )
    .await;
    (upstream, envoy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoys_rate_limit_filter_refuses_the_request_past_the_limit() {
    let server = TestServer::spawn_with(Backend::Sqlite, crate::rate_limit::API).await;
    let (upstream, envoy) = behind_rate_limit(&[server.addr]).await;
    let client = plain_client(Some(ip("127.0.0.7")));
    let mut answers = Vec::new();
    for _ in 0..4 {
        answers.push(get(&client, &envoy.url("/")).await.expect("envoy answers"));
    }
    let statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
    assert_eq!(statuses, [200, 200, 200, 429], "{}", envoy.log());
    assert_eq!(upstream.requests(), 3);
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
async fn two_replicas_behind_one_envoy_share_the_rate_count_exactly() {
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
    let (upstream, envoy) = behind_rate_limit(&[replicas[0].addr, replicas[1].addr]).await;
    let client = plain_client(Some(ip("127.0.0.8")));
    let mut statuses = Vec::new();
    for _ in 0..12 {
        statuses.push(
            get(&client, &envoy.url("/"))
                .await
                .expect("envoy answers")
                .status,
        );
    }
    if statuses[..7] != [200; 7] {
        let logs: Vec<_> = replicas.into_iter().map(|r| r.terminate().1).collect();
        panic!("{statuses:?}\n{logs:#?}\n{}", envoy.log());
    }
    assert_eq!(&statuses[7..], [429; 5], "{statuses:?}");
    assert_eq!(upstream.requests(), 7);
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
