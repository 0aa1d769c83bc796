//! Envoy's external processing (`envoy.service.ext_proc.v3.ExternalProcessor`):
//! one stream per proxied HTTP request. Its request headers are judged as
//! ext_authz judges them; its response headers say whether the upstream
//! refused the subject (a failure status: RecordFailure) or let it in (a
//! success status: RecordSuccess), so a login behind Envoy is locked out by
//! the upstream's own answers.
//!
//! authgate asks Envoy for request and response headers only
//! (`processing_mode`: headers SEND, bodies NONE, trailers SKIP) and for
//! the `source.address` attribute; any other message is a protocol error.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use envoy_types::pb::envoy::config::core::v3::{
    HeaderMap, HeaderValue, HeaderValueOption, header_value_option::HeaderAppendAction,
};
use envoy_types::pb::envoy::service::ext_proc::v3::{
    CommonResponse, HeaderMutation, HeadersResponse, HttpHeaders, ImmediateResponse,
    ProcessingRequest, ProcessingResponse, external_processor_server, processing_request,
    processing_response,
};
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use envoy_types::pb::google::protobuf::value::Kind;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::answer::FAIL_OPEN;
use super::{Answer, Gateway, Judged, Mapped, forwarded_address, path};
use crate::domain::{FieldError, Verdict};
use crate::grpc::{Refusal, caller};
use crate::service::ServiceError;
use crate::store::StoreError;
use crate::telemetry::metrics;

/// The key Envoy files the filter's `request_attributes` under.
const FILTER: &str = "envoy.filters.http.ext_proc";
/// The attribute holding the downstream peer's address (`ip:port`).
const SOURCE_ADDRESS: &str = "source.address";

/// `envoy.service.ext_proc.v3.ExternalProcessor` on authgate's gRPC port.
pub struct ExtProc {
    gateway: Arc<Gateway>,
}

impl ExtProc {
    pub fn new(gateway: Arc<Gateway>) -> Self {
        ExtProc { gateway }
    }
}

/// Where one stream stands.
enum Phase {
    /// Nothing seen yet: the first message must be the request headers.
    Start,
    /// The request was let through; its response is judged by this.
    Passed(Box<Mapped>),
}

/// What a message is answered, and whether the stream is done with.
struct Reply {
    message: ProcessingResponse,
    last: bool,
}

fn phase_response(response: processing_response::Response, last: bool) -> Reply {
    Reply {
        message: ProcessingResponse {
            response: Some(response),
            ..ProcessingResponse::default()
        },
        last,
    }
}

/// A header Envoy sets (or overwrites). ext_proc reads a mutation's value
/// from `raw_value` only: one in `value` arrives empty.
fn header(key: &str, value: &str) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.to_owned(),
            raw_value: value.as_bytes().to_vec(),
            ..HeaderValue::default()
        }),
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd.into(),
        ..HeaderValueOption::default()
    }
}

fn mutation(set: &[(&'static str, String)], remove: Vec<String>) -> HeadersResponse {
    HeadersResponse {
        response: Some(CommonResponse {
            header_mutation: Some(HeaderMutation {
                set_headers: set.iter().map(|(k, v)| header(k, v)).collect(),
                remove_headers: remove,
            }),
            ..CommonResponse::default()
        }),
    }
}

/// Envoy answers the client `answer` itself; the stream ends.
fn immediate(answer: &Answer) -> Reply {
    let mut set = answer.headers.clone();
    set.push(("content-type", "application/json".into()));
    phase_response(
        processing_response::Response::ImmediateResponse(ImmediateResponse {
            status: Some(HttpStatus {
                code: answer.status.unwrap_or(500).into(),
            }),
            headers: mutation(&set, Vec::new())
                .response
                .and_then(|r| r.header_mutation),
            body: answer.body.clone().into_bytes(),
            ..ImmediateResponse::default()
        }),
        true,
    )
}

/// A header of Envoy's map, pseudo-headers (`:path`, `:status`) included.
/// Envoy sends values as `raw_value` bytes; older versions as `value`.
fn value<'a>(headers: &'a Option<HeaderMap>, name: &str) -> Option<&'a str> {
    let h = headers
        .as_ref()?
        .headers
        .iter()
        .find(|h| h.key.eq_ignore_ascii_case(name))?;
    if h.raw_value.is_empty() {
        Some(h.value.as_str())
    } else {
        std::str::from_utf8(&h.raw_value).ok()
    }
}

/// The client's address from the filter's attributes, when Envoy sent it.
fn source(request: &ProcessingRequest) -> Option<IpAddr> {
    let field = request.attributes.get(FILTER)?.fields.get(SOURCE_ADDRESS)?;
    match field.kind.as_ref()? {
        Kind::StringValue(s) => forwarded_address(s),
        _ => None,
    }
}

fn protocol_error(problem: &str) -> Status {
    Refusal::InvalidArgument(FieldError::new("request", problem)).into()
}

/// One stream's work, in a task of its own: a phase that reached the store
/// runs to its end even when Envoy resets the stream meanwhile, so a
/// failure is recorded whole or not at all.
struct Stream {
    gateway: Arc<Gateway>,
    caller: String,
    answers: mpsc::Sender<Result<ProcessingResponse, Status>>,
}

impl Stream {
    async fn run(self, mut inbound: Streaming<ProcessingRequest>) {
        let mut phase = Phase::Start;
        loop {
            let message = match inbound.message().await {
                Ok(Some(m)) => m,
                Ok(None) => return,
                Err(status) => {
                    tracing::debug!(%status, "ext_proc stream ended by Envoy");
                    return;
                }
            };
            let start = Instant::now();
            let (name, answer) = self.answer(&mut phase, message).await;
            let (code, last) = match &answer {
                Ok(reply) => (tonic::Code::Ok, reply.last),
                Err(status) => (status.code(), true),
            };
            metrics::rpc_done(name, code, start.elapsed());
            let sent = self.answers.send(answer.map(|r| r.message)).await;
            if sent.is_err() || last {
                return;
            }
        }
    }

    /// The answer to `message`, and the name its metrics go under.
    async fn answer(
        &self,
        phase: &mut Phase,
        message: ProcessingRequest,
    ) -> (&'static str, Result<Reply, Status>) {
        let source = source(&message);
        match (std::mem::replace(phase, Phase::Start), message.request) {
            (Phase::Start, Some(processing_request::Request::RequestHeaders(h))) => (
                "ext_proc.RequestHeaders",
                self.request(phase, &h, source).await,
            ),
            (Phase::Passed(mapped), Some(processing_request::Request::ResponseHeaders(h))) => {
                ("ext_proc.ResponseHeaders", self.response(&mapped, &h).await)
            }
            (Phase::Start, _) => (
                "ext_proc.Process",
                Err(protocol_error(
                    "the first message of a stream must be the request headers",
                )),
            ),
            (Phase::Passed(_), _) => (
                "ext_proc.Process",
                Err(protocol_error(
                    "after the request headers authgate takes only the response headers: \
                     set processing_mode to headers SEND, bodies NONE, trailers SKIP",
                )),
            ),
        }
    }

    /// The request headers phase: judged as ext_authz judges a request.
    async fn request(
        &self,
        phase: &mut Phase,
        headers: &HttpHeaders,
        source: Option<IpAddr>,
    ) -> Result<Reply, Status> {
        let map = &headers.headers;
        if source.is_none() && !self.gateway.mapping().trusts_forwarded_for() {
            return Ok(immediate(
                super::invalid(&FieldError::new(
                    format!("attributes[{FILTER}][{SOURCE_ADDRESS}]"),
                    "Envoy sent no client address: list source.address in the filter's \
                     request_attributes, or set gateway.trusted_hops",
                ))
                .answer(),
            ));
        }
        // As for ext_authz: Envoy passes the path on as the client wrote it.
        let path = match path::normalized(value(map, ":path").unwrap_or("")) {
            Ok(p) => p,
            Err(e) => {
                let e = FieldError::new("request_headers[:path]", e.problem);
                return Ok(immediate(super::invalid(&e).answer()));
            }
        };
        let header = |name: &str| value(map, name);
        // ext_proc has no per-route context_extensions: the routes decide.
        let extension = |_: &str| None;
        let (judged, mapped) = self
            .gateway
            .check_mapped(
                "ext_proc",
                &super::Request {
                    method: value(map, ":method").unwrap_or(""),
                    host: value(map, ":authority").unwrap_or(""),
                    path: &path,
                    source,
                    header: &header,
                    extension: &extension,
                },
            )
            .await?;
        match (judged, mapped) {
            (Judged::Answered(answer), Some(mapped)) if answer.status.is_none() => {
                *phase = Phase::Passed(Box::new(mapped));
                Ok(phase_response(
                    processing_response::Response::RequestHeaders(mutation(
                        &answer.headers,
                        super::forged(&answer.headers),
                    )),
                    false,
                ))
            }
            (judged, _) => Ok(immediate(judged.answer())),
        }
    }

    /// The response headers phase: the upstream's status recorded as a
    /// failure or a success of the request's subject before Envoy may pass
    /// it on, with the resulting verdict's headers added.
    async fn response(&self, mapped: &Mapped, headers: &HttpHeaders) -> Result<Reply, Status> {
        let status = value(&headers.headers, ":status").and_then(|s| s.parse::<u16>().ok());
        let route = &mapped.route;
        let gate = self.gateway.gate();
        let recorded: Option<Result<Verdict, ServiceError>> = match status {
            Some(s) if route.failure_statuses.contains(&s) => Some(
                gate.record_failure(
                    &route.context,
                    &mapped.subject,
                    &route.activity,
                    &self.caller,
                )
                .await
                .map(|outcome| {
                    metrics::decided(
                        "ext_proc.RecordFailure",
                        &route.context,
                        outcome.verdict.decision,
                    );
                    outcome.verdict
                }),
            ),
            Some(s) if route.success_statuses.contains(&s) => Some(
                gate.record_success(&route.context, &mapped.subject)
                    .await
                    .inspect(|v| {
                        metrics::decided("ext_proc.RecordSuccess", &route.context, v.decision);
                    }),
            ),
            _ => None,
        };
        let set = match recorded {
            None => Vec::new(),
            Some(Ok(verdict)) => self.gateway.answer(mapped, &verdict).headers,
            // The response passes unrecorded only where the context says
            // an outage lets requests through; elsewhere the client does
            // not learn what the upstream said of an attempt that was not
            // counted.
            Some(Err(ServiceError::Store(StoreError::Unavailable(cause))))
                if gate
                    .policy()
                    .context("context", &route.context)
                    .is_ok_and(|c| c.fail_open) =>
            {
                tracing::warn!(error = %cause, context = %route.context, "store unavailable; response passed unrecorded");
                vec![(FAIL_OPEN, "true".to_owned())]
            }
            Some(Err(e)) => return Ok(immediate(self.gateway.refused(e)?.answer())),
        };
        Ok(phase_response(
            processing_response::Response::ResponseHeaders(mutation(&set, Vec::new())),
            true,
        ))
    }
}

#[tonic::async_trait]
impl external_processor_server::ExternalProcessor for ExtProc {
    type ProcessStream = ReceiverStream<Result<ProcessingResponse, Status>>;

    async fn process(
        &self,
        request: Request<Streaming<ProcessingRequest>>,
    ) -> Result<Response<Self::ProcessStream>, Status> {
        let caller = caller(&request)?.name.clone();
        // One answer at a time: Envoy waits for each before sending on.
        let (answers, out) = mpsc::channel(1);
        let stream = Stream {
            gateway: self.gateway.clone(),
            caller,
            answers,
        };
        tokio::spawn(stream.run(request.into_inner()));
        Ok(Response::new(ReceiverStream::new(out)))
    }
}
