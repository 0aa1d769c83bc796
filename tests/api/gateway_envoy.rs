//! authgate behind a real Envoy: ext_authz and ext_proc as Envoy calls
//! them, driven by an HTTP client, judged against the upstream's view.

use std::net::IpAddr;

use crate::envoy::*;
use crate::helpers::*;

const PASSWORD: &str = "right horse battery staple";

/// Every request is judged in "web", whose ip rule locks after 5
/// failures for 30 minutes.
const WEB: &str = r#"
[gateway]
[[gateway.routes]]
path_prefix = "/"
context = "web"
activity = "password"
[[contexts.web.rules]]
name = "ip"
key = "ip"
window = "30m"
lock_after = 5
lockout = ["30m"]
"#;

fn ip(s: &str) -> IpAddr {
    s.parse().expect("IP")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ext_authz_blocks_a_locked_address_and_tells_the_upstream_of_the_rest() {
    let server = TestServer::spawn_with(Backend::Sqlite, WEB).await;
    let upstream = Upstream::start(PASSWORD).await;
    let envoy = Envoy::start(&Bootstrap::new(&[server.addr], upstream.addr).with(
        Filter::ExtAuthz {
            failure_mode_allow: false,
        },
    ))
    .await;
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
    let server = TestServer::spawn_with(Backend::Sqlite, &format!("{}{WEB}", keys.toml)).await;
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
