//! Envoy's external authorization (`envoy.service.auth.v3.Authorization`):
//! the request Envoy describes, mapped to a context and subject, judged as
//! CheckAccess judges it, answered as an HTTP status Envoy sends the client
//! or as headers it adds to the request it lets through.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::{
    Address, HeaderValue, HeaderValueOption, address, header_value_option::HeaderAppendAction,
};
use envoy_types::pb::envoy::service::auth::v3::{
    CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse, authorization_server,
    check_response::HttpResponse,
};
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use envoy_types::pb::google::rpc;
use tonic::{Request, Response, Status};

use super::{Answer, Gateway, Judged, path};
use crate::domain::FieldError;
use crate::grpc::observe;

/// `envoy.service.auth.v3.Authorization` on authgate's gRPC port.
pub struct ExtAuthz {
    gateway: Arc<Gateway>,
}

impl ExtAuthz {
    pub fn new(gateway: Arc<Gateway>) -> Self {
        ExtAuthz { gateway }
    }
}

/// The address of an Envoy peer, when it is an IP socket.
pub fn peer_ip(address: Option<&Address>) -> Option<IpAddr> {
    match address?.address.as_ref()? {
        address::Address::SocketAddress(s) => s.address.parse().ok(),
        _ => None,
    }
}

/// A header Envoy sets (or overwrites) on the request or response.
pub fn header(key: &str, value: String) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.to_owned(),
            value,
            ..HeaderValue::default()
        }),
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd.into(),
        ..HeaderValueOption::default()
    }
}

fn check_response(answer: Answer, status: tonic::Code) -> CheckResponse {
    let forged = super::forged(&answer.headers);
    let headers = answer
        .headers
        .into_iter()
        .map(|(k, v)| header(k, v))
        .collect();
    let http_response = match answer.status {
        None => HttpResponse::OkResponse(OkHttpResponse {
            headers,
            headers_to_remove: forged,
            ..OkHttpResponse::default()
        }),
        Some(code) => {
            let mut headers: Vec<_> = headers;
            headers.push(header("content-type", "application/json".into()));
            HttpResponse::DeniedResponse(DeniedHttpResponse {
                status: Some(HttpStatus { code: code.into() }),
                headers,
                body: answer.body,
            })
        }
    };
    CheckResponse {
        status: Some(rpc::Status {
            code: status as i32,
            ..rpc::Status::default()
        }),
        http_response: Some(http_response),
        ..CheckResponse::default()
    }
}

#[tonic::async_trait]
impl authorization_server::Authorization for ExtAuthz {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        observe("ext_authz.Check", async move {
            let req = request.into_inner();
            let attributes = req.attributes.unwrap_or_default();
            let http = attributes.request.and_then(|r| r.http).unwrap_or_default();
            // Envoy sends the header map as a map by default and as a list
            // with `encode_raw_headers`; both are read.
            let mut headers: HashMap<String, String> = http.headers;
            if let Some(map) = http.header_map {
                for h in map.headers {
                    let value = String::from_utf8(h.raw_value).unwrap_or(h.value);
                    headers.entry(h.key.to_ascii_lowercase()).or_insert(value);
                }
            }
            let source = attributes
                .source
                .as_ref()
                .and_then(|p| peer_ip(p.address.as_ref()));
            let extensions = attributes.context_extensions;
            // Envoy forwards the path as the client wrote it unless its
            // normalize_path is on, which it is not by default.
            let path = match path::normalized(&http.path) {
                Ok(p) => p,
                Err(e) => {
                    let e = FieldError::new("attributes.request.http.path", e.problem);
                    return Ok(Response::new(check_response(
                        Answer::invalid(&e),
                        tonic::Code::InvalidArgument,
                    )));
                }
            };
            let header = |name: &str| headers.get(name).map(String::as_str);
            let extension = |name: &str| extensions.get(name).map(String::as_str);
            let judged = self
                .gateway
                .check(
                    "ext_authz",
                    &super::Request {
                        method: &http.method,
                        host: &http.host,
                        path: &path,
                        source,
                        header: &header,
                        extension: &extension,
                    },
                )
                .await?;
            let code = match &judged {
                Judged::Answered(a) if a.status.is_none() => tonic::Code::Ok,
                Judged::Answered(_) => tonic::Code::PermissionDenied,
                Judged::Invalid(_) => tonic::Code::InvalidArgument,
                Judged::Unavailable(_) => tonic::Code::Unavailable,
            };
            Ok(Response::new(check_response(judged.into_answer(), code)))
        })
        .await
    }
}
