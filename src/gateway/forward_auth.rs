//! HTTP forward auth (`[gateway.http]`): nginx's `auth_request`, Traefik's
//! `ForwardAuth` and Caddy's `forward_auth` ask this listener about each
//! request they are sent, describing it in headers. The request is mapped
//! and judged as Envoy's are and answered as a status: 2xx lets it through
//! with the `x-authgate-*` headers the proxy copies onto it, anything else
//! is what the proxy answers its client.
//!
//! `/` reads the `X-Forwarded-Method` and `X-Forwarded-Uri` that Traefik
//! and Caddy send. `/nginx` reads the `X-Original-Method` and
//! `X-Original-URI` that nginx is told to send, and answers BLOCKED with 403
//! rather than 429: `auth_request` turns any status but 2xx, 401 and 403
//! into a 500, so the nginx configuration turns a 403 whose
//! `x-authgate-decision` is `blocked` back into a 429. Each endpoint reads
//! only its own proxy's names, since a proxy passes its client's other
//! headers on as they came.
//!
//! Callers: a proxy in `trusted_proxies`, or one presenting an API key of
//! the `check` role as `Authorization: Bearer <key>` (anonymous when no
//! keys are configured, as on gRPC). Others get 401 (no valid key) or 403
//! (a key without the role), which the proxy passes on to its client: a
//! misconfigured proxy fails closed.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use ipnet::IpNet;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use super::{Answer, Gateway, Judged, Request, forwarded_address, path};
use crate::domain::FieldError;
use crate::grpc::auth::{Callers, Role};
use crate::telemetry::metrics;
use crate::work;

/// The label forward-auth verdicts are counted under in
/// authgate_decisions_total.
const DOOR: &str = "forward_auth";

/// Which proxy's headers an endpoint reads, and how it answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flavor {
    /// Traefik and Caddy.
    Forwarded,
    Nginx,
}

impl Flavor {
    fn endpoint(self) -> &'static str {
        match self {
            Flavor::Forwarded => "/",
            Flavor::Nginx => "/nginx",
        }
    }

    fn method_header(self) -> &'static str {
        match self {
            Flavor::Forwarded => "x-forwarded-method",
            Flavor::Nginx => "x-original-method",
        }
    }

    fn uri_header(self) -> &'static str {
        match self {
            Flavor::Forwarded => "x-forwarded-uri",
            Flavor::Nginx => "x-original-uri",
        }
    }

    /// `answer` as this flavour's proxy can pass it on.
    fn render(self, mut answer: Answer) -> Answer {
        if self == Flavor::Nginx && answer.status == Some(429) {
            answer.status = Some(403);
        }
        answer
    }
}

/// The forward-auth endpoints and who may call them.
pub struct ForwardAuth {
    /// Maps with `gateway.http.trusted_hops`, not the Envoy-facing
    /// `gateway.trusted_hops`: this listener's peer is always a proxy.
    gateway: Arc<Gateway>,
    auth: Callers,
    trusted_proxies: Vec<IpNet>,
    /// server.request_timeout: past it the proxy is answered 503 while the
    /// work, once it has touched the store, runs on to its end.
    timeout: Duration,
}

/// What a proxy said about the request it asks about, owned so that the
/// judging can run in a task of its own.
struct Forwarded {
    method: String,
    host: String,
    path: String,
    /// The right-most `X-Forwarded-For` entry: the address the asking
    /// proxy was connected from.
    nearest: IpAddr,
    /// Every `X-Forwarded-For` line, joined: a second line must not hide
    /// the entries the proxy appended.
    forwarded_for: String,
    headers: HeaderMap,
}

fn text<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| std::str::from_utf8(v.as_bytes()).ok())
}

fn required<'a>(headers: &'a HeaderMap, name: &str) -> Result<&'a str, FieldError> {
    text(headers, name)
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| FieldError::new(name, "is required: the proxy must send it"))
}

impl Forwarded {
    fn read(flavor: Flavor, headers: HeaderMap) -> Result<Forwarded, FieldError> {
        let name = flavor.method_header();
        let method = required(&headers, name)?;
        if http::Method::from_bytes(method.as_bytes()).is_err() {
            return Err(FieldError::new(name, "is not an HTTP method"));
        }
        let name = flavor.uri_header();
        let path = path::normalized(required(&headers, name)?)
            .map_err(|e| FieldError::new(name, e.problem))?
            .into_owned();
        let host = required(&headers, "x-forwarded-host")?;
        let forwarded_for = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| std::str::from_utf8(v.as_bytes()).ok())
            .collect::<Vec<_>>()
            .join(",");
        let nearest = forwarded_for
            .rsplit(',')
            .map(str::trim)
            .find(|e| !e.is_empty())
            .ok_or_else(|| {
                FieldError::new("x-forwarded-for", "is required: the proxy must send it")
            })?;
        let nearest = forwarded_address(nearest).ok_or_else(|| {
            FieldError::new("x-forwarded-for", "the last entry is not an IP address")
        })?;
        Ok(Forwarded {
            method: method.to_owned(),
            host: host.to_owned(),
            path,
            nearest,
            forwarded_for,
            headers,
        })
    }

    async fn judged(self, gateway: &Gateway) -> Result<Judged, tonic::Status> {
        let header = |name: &str| match name {
            "x-forwarded-for" => Some(self.forwarded_for.as_str()),
            other => text(&self.headers, other),
        };
        let extension = |_: &str| None;
        gateway
            .check(
                DOOR,
                &Request {
                    method: &self.method,
                    host: &self.host,
                    path: &self.path,
                    source: Some(self.nearest),
                    header: &header,
                    extension: &extension,
                },
            )
            .await
    }
}

impl ForwardAuth {
    pub fn new(
        gateway: Arc<Gateway>,
        auth: Callers,
        trusted_proxies: Vec<IpNet>,
        timeout: Duration,
    ) -> Self {
        ForwardAuth {
            gateway,
            auth,
            trusted_proxies,
            timeout,
        }
    }

    /// Whether `peer` may ask: refused with the answer to give it if not.
    fn admit(&self, peer: IpAddr, headers: &HeaderMap) -> Result<(), Answer> {
        // A proxy admitted by its address passes on its client's own
        // Authorization header, which is none of authgate's business.
        if self.trusted_proxies.iter().any(|n| n.contains(&peer)) {
            return Ok(());
        }
        let authorization = headers.get(header::AUTHORIZATION).map(|v| v.as_bytes());
        let caller = self
            .auth
            .load()
            .authenticate(authorization, &[])
            .map_err(|e| {
                metrics::auth_rejected(e.label());
                Answer::unauthenticated(&e.to_string())
            })?;
        if !caller.has(Role::Check) {
            metrics::auth_rejected("role");
            return Err(Answer::forbidden(&format!(
                "caller {:?} lacks the {} role",
                caller.name,
                Role::Check
            )));
        }
        Ok(())
    }

    async fn answer(self: Arc<Self>, flavor: Flavor, peer: IpAddr, headers: HeaderMap) -> Answer {
        if let Err(refused) = self.admit(peer.to_canonical(), &headers) {
            return refused;
        }
        let forwarded = match Forwarded::read(flavor, headers) {
            Ok(f) => f,
            Err(e) => {
                tracing::debug!(field = %e.field, problem = %e.problem, "forward-auth request refused");
                return Answer::invalid(&e);
            }
        };
        // In a task of its own, as gRPC calls are: a proxy that hangs up
        // never interrupts a store transaction, and work that has not
        // reached the store yet is dropped with it.
        let (_asker_here, gone) = oneshot::channel::<()>();
        let gateway = self.gateway.clone();
        let work = tokio::spawn(work::unless_abandoned(
            async move { forwarded.judged(&gateway).await },
            async move {
                let _ = gone.await;
            },
        ));
        match tokio::time::timeout(self.timeout, work).await {
            Ok(Ok(Some(Ok(judged)))) => judged.answer().clone(),
            Ok(Ok(Some(Err(status)))) => {
                tracing::error!(error = %status, "forward-auth request failed");
                Answer::internal()
            }
            Ok(Ok(None)) => Answer::internal(),
            Ok(Err(e)) => {
                tracing::error!(error = %e, "a forward-auth request's task failed");
                Answer::internal()
            }
            Err(_) => Answer::timed_out(),
        }
    }
}

fn response(answer: Answer) -> Response {
    let status = answer
        .status
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::OK);
    let mut headers = HeaderMap::new();
    for (name, value) in &answer.headers {
        if let Ok(v) = HeaderValue::from_str(value) {
            headers.insert(*name, v);
        }
    }
    if answer.status.is_some() {
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
    }
    (status, headers, answer.body).into_response()
}

async fn ask(
    flavor: Flavor,
    forward_auth: Arc<ForwardAuth>,
    peer: SocketAddr,
    headers: HeaderMap,
) -> Response {
    let start = Instant::now();
    let answer = flavor.render(forward_auth.answer(flavor, peer.ip(), headers).await);
    metrics::forward_auth_done(
        flavor.endpoint(),
        answer.status.unwrap_or(200),
        start.elapsed(),
    );
    response(answer)
}

impl ForwardAuth {
    /// Serves the endpoints on `listener` until `shutdown` resolves, then
    /// lets requests in flight finish.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let app = axum::Router::new()
            .route(
                Flavor::Forwarded.endpoint(),
                any(
                    |State(f): State<Arc<ForwardAuth>>,
                     ConnectInfo(peer): ConnectInfo<SocketAddr>,
                     headers: HeaderMap| {
                        ask(Flavor::Forwarded, f, peer, headers)
                    },
                ),
            )
            .route(
                Flavor::Nginx.endpoint(),
                any(
                    |State(f): State<Arc<ForwardAuth>>,
                     ConnectInfo(peer): ConnectInfo<SocketAddr>,
                     headers: HeaderMap| ask(Flavor::Nginx, f, peer, headers),
                ),
            )
            .with_state(self);
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown)
        .await
    }
}
