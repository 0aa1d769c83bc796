//! Envoy's ext_authz Check, called as Envoy calls it (its generated client
//! over gRPC), judged by the same rules and state as CheckAccess.

use std::collections::HashMap;

use envoy_types::pb::envoy::config::core::v3::{Address, SocketAddress, address};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Peer, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest, CheckResponse};
use rstest::rstest;
use tonic::Code;

use authgate::grpc::proto::Decision;

use crate::helpers::*;

pub const ROUTES: &str = r#"
[gateway]
user_header = "x-user"
session_cookie = "sid"
[[gateway.routes]]
path_prefix = "/login"
methods = ["POST"]
context = "login"
[[gateway.routes]]
path_prefix = "/signup"
context = "login"
captcha = "pass"
"#;

/// A request as Envoy describes it: from `ip`, with `headers`.
pub fn envoy_request(
    method: &str,
    path: &str,
    ip: &str,
    headers: &[(&str, &str)],
    extensions: &[(&str, &str)],
) -> CheckRequest {
    CheckRequest {
        attributes: Some(AttributeContext {
            source: (!ip.is_empty()).then(|| Peer {
                address: Some(Address {
                    address: Some(address::Address::SocketAddress(SocketAddress {
                        address: ip.into(),
                        port_specifier: Some(
                            envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier::PortValue(
                                40000,
                            ),
                        ),
                        ..SocketAddress::default()
                    })),
                }),
                ..Peer::default()
            }),
            request: Some(Request {
                http: Some(HttpRequest {
                    method: method.into(),
                    path: path.into(),
                    host: "app.example.com".into(),
                    headers: headers
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                        .collect::<HashMap<_, _>>(),
                    ..HttpRequest::default()
                }),
                ..Request::default()
            }),
            context_extensions: extensions
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            ..AttributeContext::default()
        }),
    }
}

/// The status Envoy would answer (`None`: let through) and the headers it
/// would add, to the client or to the upstream.
pub fn rendered(r: &CheckResponse) -> (Option<u32>, HashMap<String, String>, String) {
    let headers = |hs: &[envoy_types::pb::envoy::config::core::v3::HeaderValueOption]| {
        hs.iter()
            .filter_map(|h| h.header.as_ref())
            .map(|h| (h.key.clone(), h.value.clone()))
            .collect::<HashMap<_, _>>()
    };
    match r.http_response.as_ref().expect("an HTTP response") {
        HttpResponse::OkResponse(ok) => (None, headers(&ok.headers), String::new()),
        HttpResponse::DeniedResponse(d) => (
            d.status.as_ref().map(|s| s.code as u32),
            headers(&d.headers),
            d.body.clone(),
        ),
        HttpResponse::ErrorResponse(_) => panic!("authgate sends no error responses"),
    }
}

async fn authz(server: &TestServer, req: CheckRequest) -> CheckResponse {
    AuthorizationClient::new(server.channel().await)
        .check(req)
        .await
        .expect("Check answers")
        .into_inner()
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_route_is_judged_and_locked_like_check_access(
    #[values(Backend::Sqlite, Backend::Postgres)] backend: Backend,
) {
    let server = TestServer::spawn_with(backend, ROUTES).await;
    let login = || {
        envoy_request(
            "POST",
            "/login?next=/",
            "203.0.113.5",
            &[("x-user", "alice")],
            &[],
        )
    };

    let r = authz(&server, login()).await;
    let (status, headers, _) = rendered(&r);
    assert_eq!(status, None);
    assert_eq!(r.status.as_ref().unwrap().code, Code::Ok as i32);
    assert_eq!(headers["x-authgate-decision"], "allow");
    assert_eq!(headers["x-authgate-reason"], "ok");
    assert_eq!(headers["x-authgate-remaining"], "5");

    // The same subject, as CheckAccess names it, is what ext_authz judges.
    let mut c = server.access().await;
    for _ in 0..5 {
        fail(&mut c, "login", subject("alice", "203.0.113.5")).await;
    }
    let r = authz(&server, login()).await;
    let (status, headers, body) = rendered(&r);
    assert_eq!(status, Some(429));
    assert_eq!(
        r.status.as_ref().unwrap().code,
        Code::PermissionDenied as i32
    );
    assert_eq!(headers["retry-after"], "1800");
    assert_eq!(headers["x-authgate-decision"], "blocked");
    assert_eq!(headers["ratelimit-policy"], "\"user_ip\";q=5;w=1800");
    assert_eq!(headers["ratelimit"], "\"user_ip\";r=0;t=1800");
    assert_eq!(headers["content-type"], "application/json");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["reason"], "locked");
    assert_eq!(body["retry_after"], 1800);

    // The path as Envoy's router would read it, however the client spells it.
    let spelled = envoy_request(
        "POST",
        "//%6Cogin/./",
        "203.0.113.5",
        &[("x-user", "alice")],
        &[],
    );
    assert_eq!(rendered(&authz(&server, spelled).await).0, Some(429));

    // Another address of the same user is not locked, as with CheckAccess.
    let other = envoy_request(
        "POST",
        "/login",
        "198.51.100.9",
        &[("x-user", "alice")],
        &[],
    );
    assert_eq!(rendered(&authz(&server, other).await).0, None);
    assert_eq!(
        decision(&check(&mut c, "login", subject("alice", "203.0.113.5")).await),
        Decision::Blocked
    );
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn captchas_are_denied_or_passed_by_route(
    #[values(Backend::Sqlite, Backend::Postgres)] backend: Backend,
) {
    let server = TestServer::spawn_with(backend, ROUTES).await;
    let mut c = server.access().await;
    // The shipped login context asks for a captcha after 10 failures from
    // one address.
    for i in 0..10 {
        fail(&mut c, "login", subject(&format!("user{i}"), "192.0.2.77")).await;
    }
    let (status, headers, body) = rendered(
        &authz(
            &server,
            envoy_request("POST", "/login", "192.0.2.77", &[], &[]),
        )
        .await,
    );
    assert_eq!(status, Some(403));
    assert_eq!(headers["x-authgate-challenge"], "captcha");
    assert!(body.contains(r#""challenge":"captcha""#), "{body}");

    let (status, headers, _) = rendered(
        &authz(
            &server,
            envoy_request("GET", "/signup", "192.0.2.77", &[], &[]),
        )
        .await,
    );
    assert_eq!(status, None, "the signup route renders its own captcha");
    assert_eq!(headers["x-authgate-challenge"], "captcha");
    assert_eq!(headers["x-authgate-decision"], "challenge_captcha");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn context_extensions_override_the_routes_and_forged_headers_are_removed() {
    let server = TestServer::spawn_with(Backend::Sqlite, ROUTES).await;
    // No route matches and there is no default: refused, not let through.
    let (status, _, body) = rendered(
        &authz(
            &server,
            envoy_request("GET", "/elsewhere", "192.0.2.1", &[], &[]),
        )
        .await,
    );
    assert_eq!(status, Some(403));
    assert!(body.contains(r#""reason":"no_route""#), "{body}");

    let req = envoy_request(
        "GET",
        "/elsewhere",
        "192.0.2.1",
        &[
            ("x-authgate-challenge", "none"),
            ("x-authgate-decision", "allow"),
        ],
        &[("authgate.context", "password_reset")],
    );
    let r = authz(&server, req).await;
    let Some(HttpResponse::OkResponse(ok)) = &r.http_response else {
        panic!("let through: {r:?}");
    };
    assert!(
        ok.headers_to_remove
            .contains(&"x-authgate-challenge".to_owned())
    );
    // What authgate sets overwrites the client's copy rather than joining it.
    let decision = ok
        .headers
        .iter()
        .find(|h| h.header.as_ref().unwrap().key == "x-authgate-decision")
        .unwrap();
    assert_eq!(decision.append_action, 2, "OVERWRITE_IF_EXISTS_OR_ADD");
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_what_authgate_needs_are_refused_and_record_nothing(
    #[values(Backend::Sqlite, Backend::Postgres)] backend: Backend,
) {
    let server = TestServer::spawn_with(backend, ROUTES).await;
    let cases = [
        (CheckRequest { attributes: None }, "request"),
        (envoy_request("POST", "/login", "", &[], &[]), "request"),
        (
            envoy_request(
                "POST",
                "/login",
                "192.0.2.1",
                &[],
                &[("authgate.context", "nope")],
            ),
            "context",
        ),
        (
            envoy_request("POST", "/login", "192.0.2.1", &[("x-user", "a\u{7}b")], &[]),
            "request.user_id",
        ),
        (
            envoy_request(
                "POST",
                "/login",
                "192.0.2.1",
                &[],
                &[("authgate.captcha", "maybe")],
            ),
            "authgate.captcha",
        ),
        (
            envoy_request("POST", "/../login", "192.0.2.1", &[], &[]),
            "attributes.request.http.path",
        ),
    ];
    for (req, field) in cases {
        let r = authz(&server, req).await;
        let (status, _, body) = rendered(&r);
        assert_eq!(status, Some(400), "{field}: {body}");
        assert_eq!(
            r.status.as_ref().unwrap().code,
            Code::InvalidArgument as i32
        );
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["reason"], "invalid_request");
        assert!(body["field"].as_str().unwrap().contains(field), "{body}");
    }
    assert_eq!(server.db.count("SELECT count(*) FROM key_state").await, 0);
    assert_eq!(
        server.db.count("SELECT count(*) FROM security_event").await,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_needs_the_check_role() {
    let keys = TestKeys::new();
    let server = TestServer::spawn_with(Backend::Sqlite, &format!("{}{ROUTES}", keys.toml)).await;
    let req = || envoy_request("POST", "/login", "192.0.2.1", &[], &[]);
    let anonymous = AuthorizationClient::new(server.channel().await)
        .check(req())
        .await
        .unwrap_err();
    assert_eq!(anonymous.code(), Code::Unauthenticated);
    let admin =
        AuthorizationClient::with_interceptor(server.channel().await, Bearer::new(&keys.admin))
            .check(req())
            .await
            .unwrap_err();
    assert_eq!(admin.code(), Code::PermissionDenied);
    let checked =
        AuthorizationClient::with_interceptor(server.channel().await, Bearer::new(&keys.check))
            .check(req())
            .await
            .unwrap()
            .into_inner();
    assert_eq!(rendered(&checked).0, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_proxy_network_may_check_without_a_key_and_do_nothing_else() {
    let keys = TestKeys::new();
    let trusted = format!("{}{ROUTES}", keys.toml).replacen(
        "[gateway]\n",
        "[gateway]\ntrusted_proxies = [\"127.0.0.0/8\"]\n",
        1,
    );
    let server = TestServer::spawn_with(Backend::Sqlite, &trusted).await;
    let checked = AuthorizationClient::new(server.channel().await)
        .check(envoy_request("POST", "/login", "192.0.2.1", &[], &[]))
        .await
        .expect("a trusted proxy needs no key")
        .into_inner();
    assert_eq!(rendered(&checked).0, None);
    // Only the gateway front doors: AccessService still wants a key.
    let refused = server
        .access()
        .await
        .check_access(authgate::grpc::proto::CheckAccessRequest {
            context: "login".into(),
            subject: subject("alice", "192.0.2.1"),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    // A key the proxy does send still decides.
    let wrong = AuthorizationClient::with_interceptor(server.channel().await, Bearer::new("nope"))
        .check(envoy_request("POST", "/login", "192.0.2.1", &[], &[]))
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), Code::Unauthenticated);

    // Outside the network, no key is no entry.
    let elsewhere = format!("{}{ROUTES}", keys.toml).replacen(
        "[gateway]\n",
        "[gateway]\ntrusted_proxies = [\"10.0.0.0/8\"]\n",
        1,
    );
    let server = TestServer::spawn_with(Backend::Sqlite, &elsewhere).await;
    let refused = AuthorizationClient::new(server.channel().await)
        .check(envoy_request("POST", "/login", "192.0.2.1", &[], &[]))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_with_more_headers_than_authgate_own_calls_carry_is_judged() {
    let server = TestServer::spawn_with(Backend::Sqlite, ROUTES).await;
    // Envoy's max_request_headers_kb is 60 by default and often raised: a
    // request of 100 KB of headers, past the 64 KiB authgate's own calls
    // may take.
    let names: Vec<String> = (0..100).map(|i| format!("x-filler-{i}")).collect();
    let value = "v".repeat(1000);
    let headers: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), value.as_str())).collect();
    let r = authz(
        &server,
        envoy_request("POST", "/login", "192.0.2.1", &headers, &[]),
    )
    .await;
    assert_eq!(rendered(&r).0, None);

    let huge = "v".repeat(200 * 1024);
    let refused = AuthorizationClient::new(server.channel().await)
        .check(envoy_request(
            "POST",
            "/login",
            "192.0.2.1",
            &[("x-huge", &huge)],
            &[],
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
}
