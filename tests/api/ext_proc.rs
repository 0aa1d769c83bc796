//! ExternalProcessor/Process as Envoy speaks it, through Envoy's own
//! generated client: the request phase judged, the response phase
//! recorded, and what a stream Envoy would never send is answered.

use std::collections::HashMap;

use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue};
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_client::ExternalProcessorClient;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    HeaderMutation, HttpBody, HttpHeaders, ProcessingRequest, ProcessingResponse,
    processing_request, processing_response,
};
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use rstest::rstest;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status, Streaming};

use crate::gateway_envoy::ip_rule;
use crate::helpers::*;

fn login() -> String {
    format!("{ROUTES}{}", ip_rule("web"))
}

/// "/login" records 401 as a failure and 200 as a success, in "web"
/// judged by its ip rule.
const ROUTES: &str = r#"
[gateway]
[[gateway.routes]]
path_prefix = "/login"
context = "web"
activity = "password"
success_statuses = [200]
"#;

/// One Process stream, sent to a message at a time as Envoy does.
struct Stream {
    to: mpsc::Sender<ProcessingRequest>,
    from: Streaming<ProcessingResponse>,
}

impl Stream {
    async fn open(server: &TestServer) -> Stream {
        let (to, rx) = mpsc::channel(4);
        let from = ExternalProcessorClient::new(server.channel().await)
            .process(ReceiverStream::new(rx))
            .await
            .expect("Process")
            .into_inner();
        Stream { to, from }
    }

    async fn ask(&mut self, message: ProcessingRequest) -> Result<ProcessingResponse, Status> {
        self.to.send(message).await.expect("stream open");
        self.from
            .message()
            .await?
            .ok_or_else(|| Status::unknown("the stream ended without an answer"))
    }
}

fn headers(pairs: &[(&str, &str)]) -> Option<HeaderMap> {
    Some(HeaderMap {
        headers: pairs
            .iter()
            .map(|(k, v)| HeaderValue {
                key: (*k).to_owned(),
                raw_value: v.as_bytes().to_vec(),
                ..HeaderValue::default()
            })
            .collect(),
    })
}

/// A POST to /login from `source` (Envoy's `source.address`), if any.
fn request_headers(source: Option<&str>) -> ProcessingRequest {
    let mut attributes = HashMap::new();
    if let Some(addr) = source {
        let value = Value {
            kind: Some(Kind::StringValue(addr.to_owned())),
        };
        attributes.insert(
            "envoy.filters.http.ext_proc".to_owned(),
            Struct {
                fields: HashMap::from([("source.address".to_owned(), value)]),
            },
        );
    }
    ProcessingRequest {
        attributes,
        request: Some(processing_request::Request::RequestHeaders(HttpHeaders {
            headers: headers(&[
                (":method", "POST"),
                (":path", "/login"),
                (":authority", "shop.example"),
                ("x-authgate-fail-open", "true"),
            ]),
            ..HttpHeaders::default()
        })),
        ..ProcessingRequest::default()
    }
}

fn response_headers(status: u16) -> ProcessingRequest {
    ProcessingRequest {
        request: Some(processing_request::Request::ResponseHeaders(HttpHeaders {
            headers: headers(&[(":status", &status.to_string())]),
            end_of_stream: true,
            ..HttpHeaders::default()
        })),
        ..ProcessingRequest::default()
    }
}

fn set(mutation: &HeaderMutation, name: &str) -> Option<String> {
    mutation
        .set_headers
        .iter()
        .filter_map(|h| h.header.as_ref())
        .find(|h| h.key == name)
        .map(|h| String::from_utf8_lossy(&h.raw_value).into_owned())
}

/// The header mutation of a request or response headers answer.
fn mutation_of(answer: ProcessingResponse) -> HeaderMutation {
    match answer.response {
        Some(
            processing_response::Response::RequestHeaders(h)
            | processing_response::Response::ResponseHeaders(h),
        ) => h
            .response
            .and_then(|r| r.header_mutation)
            .unwrap_or_default(),
        other => panic!("a headers answer, not {other:?}"),
    }
}

/// The status and body of an immediate response.
fn immediate(answer: ProcessingResponse) -> (u32, String) {
    match answer.response {
        Some(processing_response::Response::ImmediateResponse(i)) => (
            i.status.expect("status").code as u32,
            String::from_utf8_lossy(&i.body).into_owned(),
        ),
        other => panic!("an immediate response, not {other:?}"),
    }
}

/// One login through a stream: the request let through, the upstream
/// answering `status`; the response phase's header mutation.
async fn attempt(server: &TestServer, source: &str, status: u16) -> HeaderMutation {
    let mut stream = Stream::open(server).await;
    let request = mutation_of(stream.ask(request_headers(Some(source))).await.unwrap());
    assert_eq!(
        set(&request, "x-authgate-decision").as_deref(),
        Some("allow")
    );
    assert!(
        request
            .remove_headers
            .iter()
            .any(|h| h == "x-authgate-fail-open"),
        "{request:?}"
    );
    mutation_of(stream.ask(response_headers(status)).await.unwrap())
}

async fn remaining(server: &TestServer, ip: &str) -> Option<u32> {
    check(&mut server.access().await, "web", subject("", ip))
        .await
        .remaining_attempts
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstreams_answers_are_recorded_before_they_pass(
    #[values(Backend::Sqlite, Backend::Postgres)] backend: Backend,
) {
    let server = TestServer::spawn_with(backend, &login()).await;
    let source = "198.51.100.20:40000";

    let first = attempt(&server, source, 401).await;
    assert_eq!(set(&first, "x-authgate-remaining").as_deref(), Some("4"));
    // A status the route lists neither way changes nothing.
    let other = attempt(&server, source, 404).await;
    assert!(other.set_headers.is_empty(), "{other:?}");
    assert_eq!(remaining(&server, "198.51.100.20").await, Some(4));
    // A success forgives.
    let success = attempt(&server, source, 200).await;
    assert_eq!(
        set(&success, "x-authgate-decision").as_deref(),
        Some("allow")
    );
    assert_eq!(remaining(&server, "198.51.100.20").await, Some(5));

    for left in (1..=4).rev() {
        let failed = attempt(&server, source, 401).await;
        assert_eq!(set(&failed, "x-authgate-remaining"), Some(left.to_string()));
    }
    let locking = attempt(&server, source, 401).await;
    assert_eq!(
        set(&locking, "x-authgate-decision").as_deref(),
        Some("blocked")
    );
    assert_eq!(set(&locking, "retry-after").as_deref(), Some("1800"));

    let mut stream = Stream::open(&server).await;
    let (status, body) = immediate(stream.ask(request_headers(Some(source))).await.unwrap());
    assert_eq!(status, 429);
    assert!(body.contains(r#""reason":"locked""#), "{body}");
    // Envoy answers the client; the stream is over.
    assert!(stream.from.message().await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_envoy_would_never_send_is_answered_and_records_nothing() {
    let server = TestServer::spawn_with(Backend::Sqlite, &login()).await;
    let source = "198.51.100.30:40000";

    let mut first_not_headers = Stream::open(&server).await;
    let err = first_not_headers
        .ask(response_headers(401))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("request headers"), "{err:?}");

    let mut empty = Stream::open(&server).await;
    let err = empty.ask(ProcessingRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    let mut no_address = Stream::open(&server).await;
    let (status, body) = immediate(no_address.ask(request_headers(None)).await.unwrap());
    assert_eq!(status, 400);
    assert!(body.contains("source.address"), "{body}");

    let mut a_body = Stream::open(&server).await;
    mutation_of(a_body.ask(request_headers(Some(source))).await.unwrap());
    let err = a_body
        .ask(ProcessingRequest {
            request: Some(processing_request::Request::RequestBody(HttpBody {
                body: b"password=x".to_vec(),
                end_of_stream: true,
                ..HttpBody::default()
            })),
            ..ProcessingRequest::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("processing_mode"), "{err:?}");

    // Envoy gone between the phases: the request was judged, nothing more.
    let mut cancelled = Stream::open(&server).await;
    mutation_of(cancelled.ask(request_headers(Some(source))).await.unwrap());
    drop(cancelled);

    assert_eq!(remaining(&server, "198.51.100.30").await, Some(5));
    // The server goes on serving streams.
    let after = attempt(&server, source, 401).await;
    assert_eq!(set(&after, "x-authgate-remaining").as_deref(), Some("4"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_outlives_the_per_call_timeout_while_the_upstream_answers() {
    let server = TestServer::spawn_with(
        Backend::Sqlite,
        &format!("[server]\nrequest_timeout = \"200ms\"\n{}", login()),
    )
    .await;
    let mut stream = Stream::open(&server).await;
    mutation_of(
        stream
            .ask(request_headers(Some("198.51.100.40:1")))
            .await
            .unwrap(),
    );
    // An upstream slower than server.request_timeout: the stream lives as
    // long as the HTTP request it processes.
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    let failed = mutation_of(stream.ask(response_headers(401)).await.unwrap());
    assert_eq!(set(&failed, "x-authgate-remaining").as_deref(), Some("4"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_the_store_cannot_take_is_not_passed_on() {
    // Its own cluster: stopping the shared one would break other tests.
    let cluster = PgCluster::start();
    let server = TestServer::spawn_on(
        cluster.database().await,
        &format!("[database]\nacquire_timeout = \"500ms\"\n{}", login()),
    )
    .await;
    let mut stream = Stream::open(&server).await;
    mutation_of(
        stream
            .ask(request_headers(Some("198.51.100.50:1")))
            .await
            .unwrap(),
    );
    cluster.stop();
    let (status, body) = immediate(stream.ask(response_headers(401)).await.unwrap());
    assert_eq!(status, 503, "{body}");
    assert!(body.contains(r#""reason":"store_unavailable""#), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fail_open_context_passes_a_response_it_cannot_record_and_says_so() {
    let cluster = PgCluster::start();
    let server = TestServer::spawn_on(
        cluster.database().await,
        &format!(
            "[database]\nacquire_timeout = \"500ms\"\n{}[contexts.web]\nfailure_mode = \"fail_open\"\n",
            login()
        ),
    )
    .await;
    let mut stream = Stream::open(&server).await;
    mutation_of(
        stream
            .ask(request_headers(Some("198.51.100.51:1")))
            .await
            .unwrap(),
    );
    cluster.stop();
    let passed = mutation_of(stream.ask(response_headers(401)).await.unwrap());
    assert_eq!(
        set(&passed, "x-authgate-fail-open").as_deref(),
        Some("true")
    );
    cluster.restart();
    server.stop().await;
}
