//! Rate rules through Envoy's rate-limit service (ShouldRateLimit) and
//! CheckAccess: a sliding window moved by the test's clock, hits_addend, the
//! penalty box and its unlock, concurrency, and bad input that records
//! nothing.

use std::time::Duration;

use authgate::grpc::proto::{self, Decision, admin_unlock_request::Scope};
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::{
    RateLimitDescriptor, rate_limit_descriptor::Entry,
};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{
    Code, DescriptorStatus, rate_limit::Unit,
};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf::UInt64Value;
use rstest::rstest;
use tonic::Code as Status;
use tonic::transport::Channel;

use crate::helpers::*;

/// An `api` context: 3 requests a minute per address, 2 per 90 s per user,
/// and a failure rule on the address beside them.
pub const API: &str = r#"
[[contexts.api.rules]]
name = "burst"
kind = "rate"
key = "ip"
limit = 3
window = "1m"

[[contexts.api.rules]]
name = "per_user"
kind = "rate"
key = "user"
limit = 2
window = "90s"

[[contexts.api.rules]]
name = "failures"
key = "ip"
window = "1h"
lock_after = 5
lockout = ["1h"]
"#;

/// The same limit with a penalty box: exceeding it locks for 10 minutes,
/// then for good.
const BOXED: &str = r#"
[[contexts.api.rules]]
name = "boxed"
kind = "rate"
key = "ip"
limit = 2
window = "1m"
lockout = ["10m", "permanent"]
"#;

const IP: &str = "198.51.100.7";

pub fn descriptor(entries: &[(&str, &str)]) -> RateLimitDescriptor {
    RateLimitDescriptor {
        entries: entries
            .iter()
            .map(|(k, v)| Entry {
                key: (*k).into(),
                value: (*v).into(),
            })
            .collect(),
        ..RateLimitDescriptor::default()
    }
}

fn request(domain: &str, descriptors: Vec<RateLimitDescriptor>) -> RateLimitRequest {
    RateLimitRequest {
        domain: domain.into(),
        descriptors,
        hits_addend: 0,
    }
}

async fn limiter(server: &TestServer) -> RateLimitServiceClient<Channel> {
    RateLimitServiceClient::new(server.channel().await)
}

async fn ask(c: &mut RateLimitServiceClient<Channel>, req: RateLimitRequest) -> RateLimitResponse {
    c.should_rate_limit(req)
        .await
        .expect("ShouldRateLimit")
        .into_inner()
}

/// One request from `IP`.
async fn from_ip(c: &mut RateLimitServiceClient<Channel>) -> RateLimitResponse {
    ask(
        c,
        request("api", vec![descriptor(&[("remote_address", IP)])]),
    )
    .await
}

fn header<'a>(r: &'a RateLimitResponse, name: &str) -> Option<&'a str> {
    r.response_headers_to_add
        .iter()
        .find(|h| h.key == name)
        .map(|h| h.value.as_str())
}

fn secs(s: &DescriptorStatus) -> i64 {
    s.duration_until_reset.as_ref().map_or(-1, |d| d.seconds)
}

async fn states(server: &TestServer) -> i64 {
    server.db.count("SELECT COUNT(*) FROM key_state").await
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_limit_goes_through_and_the_next_is_over_with_its_retry(
    #[values(Backend::Sqlite, Backend::Postgres)] backend: Backend,
) {
    let server = TestServer::spawn_with(backend, API).await;
    let mut c = limiter(&server).await;
    for remaining in [2, 1, 0] {
        let r = from_ip(&mut c).await;
        assert_eq!(r.overall_code, Code::Ok as i32);
        let s = &r.statuses[0];
        assert_eq!(s.limit_remaining, remaining);
        let limit = s.current_limit.clone().unwrap();
        assert_eq!(
            (limit.name.as_str(), limit.requests_per_unit, limit.unit),
            ("burst", 3, Unit::Minute as i32)
        );
        assert_eq!(secs(s), 60);
        assert_eq!(header(&r, "ratelimit-policy"), Some("\"burst\";q=3;w=60"));
        assert_eq!(
            header(&r, "ratelimit"),
            Some(format!("\"burst\";r={remaining};t=60").as_str())
        );
        assert_eq!(header(&r, "retry-after"), None);
    }
    server.clock.advance(Duration::from_secs(15));
    let over = from_ip(&mut c).await;
    assert_eq!(over.overall_code, Code::OverLimit as i32);
    assert_eq!(over.statuses[0].code, Code::OverLimit as i32);
    assert_eq!(over.statuses[0].limit_remaining, 0);
    assert_eq!(secs(&over.statuses[0]), 45);
    assert_eq!(header(&over, "retry-after"), Some("45"));
    assert_eq!(header(&over, "ratelimit"), Some("\"burst\";r=0;t=45"));

    // A window that is no whole unit is named in the limit instead.
    let user = ask(
        &mut c,
        request("api", vec![descriptor(&[("user", "alice")])]),
    )
    .await;
    let limit = user.statuses[0].current_limit.clone().unwrap();
    assert_eq!(limit.unit, Unit::Unknown as i32);
    assert_eq!(limit.name, "per_user per 1m 30s");
    // A key kind no rate rule counts on: OK, no limit.
    let session = ask(
        &mut c,
        request(
            "api",
            vec![descriptor(&[("remote_address", IP), ("user", "a")])],
        ),
    )
    .await;
    assert_eq!(session.overall_code, Code::Ok as i32);
    assert_eq!(session.statuses[0].current_limit, None);
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_window_slides_one_request_at_a_time(
    #[values(Backend::Sqlite, Backend::Postgres)] backend: Backend,
) {
    let server = TestServer::spawn_with(backend, API).await;
    let mut c = limiter(&server).await;
    for _ in 0..3 {
        assert_eq!(from_ip(&mut c).await.overall_code, Code::Ok as i32);
        server.clock.advance(Duration::from_secs(20));
    }
    // 60 s after the first: it has left, the other two have not.
    let r = from_ip(&mut c).await;
    assert_eq!(r.overall_code, Code::Ok as i32);
    assert_eq!(r.statuses[0].limit_remaining, 0);
    assert_eq!(secs(&r.statuses[0]), 20, "the second leaves next");
    server.clock.advance(Duration::from_secs(10));
    let over = from_ip(&mut c).await;
    assert_eq!(over.overall_code, Code::OverLimit as i32);
    assert_eq!(secs(&over.statuses[0]), 10);
    server.clock.advance(Duration::from_secs(10));
    assert_eq!(from_ip(&mut c).await.overall_code, Code::Ok as i32);
    assert_eq!(from_ip(&mut c).await.overall_code, Code::OverLimit as i32);
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hits_addend_counts_that_many(
    #[values(Backend::Sqlite, Backend::Postgres)] backend: Backend,
) {
    let server = TestServer::spawn_with(backend, API).await;
    let mut c = limiter(&server).await;
    let mut two = request("api", vec![descriptor(&[("remote_address", IP)])]);
    two.hits_addend = 2;
    let r = ask(&mut c, two.clone()).await;
    assert_eq!(
        (r.overall_code, r.statuses[0].limit_remaining),
        (Code::Ok as i32, 1)
    );
    // The descriptor's own addend wins over the request's.
    server.clock.advance(Duration::from_secs(30));
    let mut one = two.clone();
    one.descriptors[0].hits_addend = Some(UInt64Value { value: 1 });
    let r = ask(&mut c, one).await;
    assert_eq!(r.statuses[0].limit_remaining, 0);
    server.clock.advance(Duration::from_secs(30));
    // Both of the first request's hits left together: room for two, and
    // three fit once the last leaves too.
    let mut three = two.clone();
    three.hits_addend = 3;
    let over = ask(&mut c, three.clone()).await;
    assert_eq!(over.overall_code, Code::OverLimit as i32);
    assert_eq!(over.statuses[0].limit_remaining, 2);
    assert_eq!(secs(&over.statuses[0]), 30);
    let fits = ask(&mut c, two).await;
    assert_eq!(fits.statuses[0].limit_remaining, 0);
    // More than the whole limit never fits: refused with no retry time.
    server.clock.advance(Duration::from_secs(600));
    let mut four = three;
    four.hits_addend = 4;
    let never = ask(&mut c, four).await;
    assert_eq!(never.overall_code, Code::OverLimit as i32);
    assert_eq!(header(&never, "retry-after"), None);
    assert_eq!(from_ip(&mut c).await.statuses[0].limit_remaining, 2);
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requests_descriptors_count_together_or_not_at_all(
    #[values(Backend::Sqlite, Backend::Postgres)] backend: Backend,
) {
    let server = TestServer::spawn_with(backend, API).await;
    let mut c = limiter(&server).await;
    let both = || {
        request(
            "api",
            vec![
                descriptor(&[("remote_address", IP)]),
                descriptor(&[("user", "bob"), ("generic_key", "ignored")]),
            ],
        )
    };
    let r = ask(&mut c, both()).await;
    let left: Vec<u32> = r.statuses.iter().map(|s| s.limit_remaining).collect();
    assert_eq!((r.overall_code, left), (Code::Ok as i32, vec![2, 1]));
    ask(&mut c, both()).await;
    // bob's rule is used up: the request is over, and the address's rule,
    // which had room, does not count it.
    let r = ask(&mut c, both()).await;
    let codes: Vec<i32> = r.statuses.iter().map(|s| s.code).collect();
    assert_eq!(r.overall_code, Code::OverLimit as i32);
    assert_eq!(codes, [Code::Ok as i32, Code::OverLimit as i32]);
    assert_eq!(r.statuses[0].limit_remaining, 1);
    assert_eq!(
        header(&r, "ratelimit-policy"),
        Some("\"per_user\";q=2;w=90")
    );
    // One key named twice is one count of both hits.
    let twice = request(
        "api",
        vec![
            descriptor(&[("remote_address", IP)]),
            descriptor(&[("remote_address", IP)]),
        ],
    );
    let r = ask(&mut c, twice).await;
    assert_eq!(r.overall_code, Code::OverLimit as i32);
    assert_eq!(from_ip(&mut c).await.statuses[0].limit_remaining, 0);
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_penalty_box_locks_on_its_tiers_and_an_admin_lifts_it(
    #[values(Backend::Sqlite, Backend::Postgres)] backend: Backend,
) {
    let server = TestServer::spawn_with(backend, BOXED).await;
    let mut c = limiter(&server).await;
    let mut admin = server.admin().await;
    let mut alerts = watch(&mut admin).await;
    from_ip(&mut c).await;
    from_ip(&mut c).await;
    let boxed = from_ip(&mut c).await;
    assert_eq!(boxed.overall_code, Code::OverLimit as i32);
    assert_eq!(secs(&boxed.statuses[0]), 600);
    assert_eq!(header(&boxed, "retry-after"), Some("600"));
    let alert = alerts.message().await.unwrap().unwrap();
    assert_eq!(
        (alert.kind.as_str(), alert.rule.as_str(), alert.tier),
        ("lockout", "boxed", 1)
    );
    assert_eq!(alert.key.unwrap().ip, IP);
    let mut access = server.access().await;
    let v = check(&mut access, "api", subject("", IP)).await;
    assert_eq!(
        (decision(&v), v.reason.as_str()),
        (Decision::Blocked, "locked")
    );

    // Served out, then over again within the day: the permanent tier.
    server.clock.advance(Duration::from_secs(600));
    from_ip(&mut c).await;
    from_ip(&mut c).await;
    let permanent = from_ip(&mut c).await;
    assert_eq!(permanent.overall_code, Code::OverLimit as i32);
    assert_eq!(header(&permanent, "retry-after"), None);
    let v = check(&mut access, "api", subject("", IP)).await;
    assert_eq!(v.reason, "locked_permanently");

    let lifted = admin
        .admin_unlock(proto::AdminUnlockRequest {
            actor_user_id: "admin".into(),
            scope: Some(Scope::Subject(subject("", IP).unwrap())),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(lifted.unlocked, 1);
    let r = from_ip(&mut c).await;
    assert_eq!(
        (r.overall_code, r.statuses[0].limit_remaining),
        (Code::Ok as i32, 1)
    );
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_access_counts_on_rate_rules_and_record_failure_does_not(
    #[values(Backend::Sqlite, Backend::Postgres)] backend: Backend,
) {
    let server = TestServer::spawn_with(backend, API).await;
    let mut c = server.access().await;
    let v = check(&mut c, "api", subject("", IP)).await;
    assert_eq!((decision(&v), v.rule.as_str()), (Decision::Allow, "burst"));
    assert_eq!(v.remaining_attempts, Some(2));
    // A failure judges on the rate rule but is not a request to it.
    let r = fail(&mut c, "api", subject("", IP)).await;
    let v = r.verdict.unwrap();
    assert_eq!((v.rule.as_str(), v.remaining_attempts), ("burst", Some(2)));
    let mut admin = server.admin().await;
    let states = report(&mut admin, subject("", IP)).await.states;
    let of = |rule: &str| states.iter().find(|s| s.rule == rule).unwrap().clone();
    assert_eq!(
        (
            of("burst").failures_in_window,
            of("failures").failures_in_window
        ),
        (1, 1)
    );
    // Nor does a success forgive one.
    success(&mut c, "api", subject("", IP)).await;
    check(&mut c, "api", subject("", IP)).await;
    let v = check(&mut c, "api", subject("", IP)).await;
    assert_eq!(v.remaining_attempts, Some(0));
    server.clock.advance(Duration::from_secs(30));
    let v = check(&mut c, "api", subject("", IP)).await;
    assert_eq!(
        (decision(&v), v.reason.as_str(), v.retry_after_seconds),
        (Decision::Blocked, "rate_limited", 30)
    );
    // The same rules answer Envoy: its count is CheckAccess's.
    let over = from_ip(&mut limiter(&server).await).await;
    assert_eq!(over.overall_code, Code::OverLimit as i32);
}

/// Many tasks at once on Postgres, each its own connection: exactly the
/// limit gets through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_on_postgres_lose_no_hit() {
    let server = TestServer::spawn_with(Backend::Postgres, API).await;
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(limiter(&server).await);
    }
    let calls = (0..40).map(|i| {
        let mut c = clients[i % clients.len()].clone();
        tokio::spawn(async move { from_ip(&mut c).await.overall_code })
    });
    let codes = futures_join_all(calls).await;
    let ok = codes.iter().filter(|&&c| c == Code::Ok as i32).count();
    assert_eq!(ok, 3, "{codes:?}");
    let mut admin = server.admin().await;
    let states = report(&mut admin, subject("", IP)).await.states;
    assert_eq!(states[0].failures_total, 3, "counted exactly the admitted");
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_invalid_argument_and_records_nothing(
    #[values(Backend::Sqlite, Backend::Postgres)] backend: Backend,
) {
    let server = TestServer::spawn_with(backend, API).await;
    let mut c = limiter(&server).await;
    let good = || descriptor(&[("remote_address", IP)]);
    let mut negative = good();
    negative.is_negative_hits = true;
    for (req, field) in [
        (request("nope", vec![good()]), "domain"),
        (request("", vec![good()]), "domain"),
        (request("api", vec![]), "descriptors"),
        (
            request("api", vec![good(), descriptor(&[("path", "/x")])]),
            "descriptors[1]",
        ),
        (
            request("api", vec![descriptor(&[("remote_address", "not-an-ip")])]),
            "descriptors[0].entries[0].value",
        ),
        (
            request(
                "api",
                vec![descriptor(&[
                    ("remote_address", IP),
                    ("remote_address", IP),
                ])],
            ),
            "descriptors[0].entries[1]",
        ),
        (
            request("api", vec![negative]),
            "descriptors[0].is_negative_hits",
        ),
        (request("api", vec![good(); 33]), "descriptors"),
    ] {
        let err = c.should_rate_limit(req).await.unwrap_err();
        assert_eq!(err.code(), Status::InvalidArgument, "{field}: {err:?}");
        assert!(err.message().starts_with(&format!("{field}:")), "{err:?}");
    }
    assert_eq!(states(&server).await, 0);
    assert_eq!(
        server.db.count("SELECT COUNT(*) FROM security_event").await,
        0
    );
}

/// ext_authz judges through CheckAccess, so its answers carry the rate
/// rule's headers: what is left while allowed, Envoy's 429 once over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ext_authz_answers_with_the_rate_rules_headers() {
    use envoy_types::pb::envoy::config::core::v3::{Address, SocketAddress, address};
    use envoy_types::pb::envoy::service::auth::v3::attribute_context::{
        HttpRequest, Peer, Request as AttrRequest,
    };
    use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
    use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
    use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};

    let server = TestServer::spawn_with(
        Backend::Sqlite,
        &format!("{API}[gateway]\ndefault_context = \"api\"\n"),
    )
    .await;
    let mut c = AuthorizationClient::new(server.channel().await);
    let check = CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(Peer {
                address: Some(Address {
                    address: Some(address::Address::SocketAddress(SocketAddress {
                        address: IP.into(),
                        ..SocketAddress::default()
                    })),
                }),
                ..Peer::default()
            }),
            request: Some(AttrRequest {
                http: Some(HttpRequest {
                    method: "GET".into(),
                    host: "app.example.com".into(),
                    path: "/".into(),
                    ..HttpRequest::default()
                }),
                ..AttrRequest::default()
            }),
            ..AttributeContext::default()
        }),
    };
    let headers = |r: &HttpResponse| -> Vec<(String, String)> {
        let list = match r {
            HttpResponse::OkResponse(ok) => &ok.headers,
            HttpResponse::DeniedResponse(denied) => &denied.headers,
            HttpResponse::ErrorResponse(_) => unreachable!("no error answer here"),
        };
        list.iter()
            .filter_map(|h| h.header.as_ref())
            .map(|h| (h.key.clone(), h.value.clone()))
            .collect()
    };
    let find = |hs: &[(String, String)], name: &str| {
        hs.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    };
    for remaining in [2, 1, 0] {
        let r = c.check(check.clone()).await.unwrap().into_inner();
        let answer = r.http_response.unwrap();
        assert!(matches!(answer, HttpResponse::OkResponse(_)));
        let hs = headers(&answer);
        assert_eq!(
            find(&hs, "ratelimit"),
            Some(format!("\"burst\";r={remaining};t=60"))
        );
    }
    let r = c.check(check).await.unwrap().into_inner();
    let answer = r.http_response.unwrap();
    let HttpResponse::DeniedResponse(denied) = &answer else {
        panic!("refused: {answer:?}");
    };
    assert_eq!(denied.status.as_ref().unwrap().code, 429);
    assert!(denied.body.contains("rate_limited"), "{}", denied.body);
    let hs = headers(&answer);
    assert_eq!(find(&hs, "retry-after").as_deref(), Some("60"));
    assert_eq!(
        find(&hs, "ratelimit-policy").as_deref(),
        Some("\"burst\";q=3;w=60")
    );
}

/// The store gone: a fail_open context answers OK without a limit, so Envoy
/// lets its traffic through; any other answers UNAVAILABLE, for Envoy's
/// failure_mode_deny to decide.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_store_down_only_a_fail_open_context_lets_requests_through() {
    let cluster = PgCluster::start();
    let open = API.replace("[[contexts.api.rules]]", "[[contexts.open.rules]]");
    let config = format!(
        "[database]\nacquire_timeout = \"500ms\"\n{API}{open}[contexts.open]\nfailure_mode = \"fail_open\"\n"
    );
    let server = TestServer::spawn_on(cluster.database().await, &config).await;
    let mut c = limiter(&server).await;
    let from = |domain: &str| request(domain, vec![descriptor(&[("remote_address", IP)])]);
    assert!(
        ask(&mut c, from("open")).await.statuses[0]
            .current_limit
            .is_some()
    );

    cluster.stop();
    let passed = ask(&mut c, from("open")).await;
    assert_eq!(passed.overall_code, Code::Ok as i32);
    assert!(
        passed.statuses.iter().all(|s| s.current_limit.is_none()),
        "{passed:?}"
    );
    let refused = c.should_rate_limit(from("api")).await.unwrap_err();
    assert_eq!(refused.code(), Status::Unavailable, "{refused:?}");
    cluster.restart();
    server.stop().await;
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_network_is_never_limited_by_its_address(
    #[values(Backend::Sqlite, Backend::Postgres)] backend: Backend,
) {
    let server = TestServer::spawn_with(
        backend,
        &format!("[access]\ntrusted_networks = [\"198.51.100.0/24\"]\n{API}"),
    )
    .await;
    let mut c = limiter(&server).await;
    for _ in 0..10 {
        let r = from_ip(&mut c).await;
        assert_eq!(r.overall_code, Code::Ok as i32, "{r:?}");
        assert_eq!(r.statuses[0].current_limit, None, "no rule judged it");
    }
    assert_eq!(states(&server).await, 0, "nothing counted on the address");
    let outside = ask(
        &mut c,
        request(
            "api",
            vec![descriptor(&[("remote_address", "203.0.113.1")])],
        ),
    )
    .await;
    assert_eq!(outside.statuses[0].limit_remaining, 2, "{outside:?}");
    server.stop().await;
}
